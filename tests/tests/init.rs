//! `tenement init`: a starter configuration that passes `config check`, written only where
//! nothing exists yet.

use std::process::{Command, Output};

use tenement_tests::{tenement_bin, Scratch};

fn tenement(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(tenement_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn init_writes_a_starter_that_passes_check_and_never_overwrites() {
    let scratch = Scratch::new("init");
    let out = tenement(&scratch.path, &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "wrote tenement.toml; check it with `tenement --config tenement.toml config check`, \
         run it with `tenement --config tenement.toml serve`\n"
    );
    let written = std::fs::read_to_string(scratch.join("tenement.toml")).unwrap();
    assert!(written.starts_with("# tenement configuration"), "{written}");
    assert!(written.contains("[service.hello]"), "{written}");

    // Found by the lookup order and valid as it is.
    let out = tenement(&scratch.path, &["config", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tenement.toml: ok\n");

    // A second init changes nothing.
    std::fs::write(scratch.join("tenement.toml"), "# mine\n").unwrap();
    let out = tenement(&scratch.path, &["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: tenement.toml exists already; not overwriting it (remove it first, or write \
         elsewhere with `tenement --config OTHER.toml init`)\n"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("tenement.toml")).unwrap(),
        "# mine\n"
    );

    // Nor through a symbolic link, even a dangling one.
    std::os::unix::fs::symlink(scratch.join("elsewhere.toml"), scratch.join("link.toml")).unwrap();
    let out = tenement(&scratch.path, &["--config", "link.toml", "init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!scratch.join("elsewhere.toml").exists());

    // --config picks the path.
    let out = tenement(&scratch.path, &["--config", "other.toml", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tenement(
        &scratch.path,
        &["--config", "other.toml", "config", "check"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
