//! Each tenant stays in its own room: no service or instance name reaches tenement's own
//! files, a symlink a tenant plants never makes tenement (root) write through it, and names
//! that differ only in where a '-' falls get separate cgroups.

mod supervisor_common;

use std::{os::unix::fs::PermissionsExt, process::Command};

use supervisor_common::{alive, eventually, get, python_app, Daemon};
use tenement_tests::{privileged, tenement_bin};

fn cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(tenement_bin())
        .arg("--config")
        .arg(&daemon.config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn services_named_like_tenements_files_reach_none_of_them() {
    if !privileged("services_named_like_tenements_files_reach_none_of_them") {
        return;
    }
    let mut daemon = Daemon::new("rooms-names", "");
    let app = daemon.app("app.py", &python_app(""));
    // A root-only file the hostile tenant wants tenement to append to.
    let secret = daemon.scratch.write("secret", "root only\n");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // `logs:notes` has `{data_dir}/logs/notes` as its data directory, which was the log
    // directory of service `notes` before tenement's files moved to `.tenement/`. It plants
    // links where notes:alice's log (and a TLS account) used to be written.
    let plant = format!(
        "sh -c 'ln -sf {secret} \"$DATA_DIR/alice.log\"; ln -sf {secret} \"$DATA_DIR/account.json\"; \
         exec /usr/bin/python3 {app}'",
        secret = secret.display(),
        app = app.display()
    );
    daemon.configure(&format!(
        r#"
[service.notes]
command = "/usr/bin/python3 {app}"

[service.logs]
command = "{plant}"

[service.tls]
command = "{plant}"

[instances]
logs = ["notes"]
tls = ["acme"]
"#,
        app = app.display(),
        plant = plant.replace('"', "\\\""),
    ));
    daemon.start();
    daemon.wait_ready("logs:notes", 1);
    daemon.wait_ready("tls:acme", 1);
    assert!(
        std::fs::symlink_metadata(daemon.data_dir.join("logs/notes/alice.log"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // notes:alice writes its output (a line on stdout and one on stderr at start).
    let out = cli(&daemon, &["spawn", "notes:alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_ready("notes:alice", 1);
    let own_log = tenement::datadir::logs_dir(&daemon.data_dir).join("notes/alice.log");
    eventually("notes:alice's log in .tenement", || {
        std::fs::read_to_string(&own_log)
            .ok()
            .filter(|text| text.contains("listening on"))
    });
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");

    // tenement's own directory: root's alone, and no tenant's data directory is in it.
    let own = std::fs::metadata(tenement::datadir::own_dir(&daemon.data_dir)).unwrap();
    assert_eq!(own.permissions().mode() & 0o777, 0o700);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&own), 0);
    daemon.stop();
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");
}

#[test]
fn a_data_directory_replaced_by_a_symlink_is_refused_not_followed() {
    if !privileged("a_data_directory_replaced_by_a_symlink_is_refused_not_followed") {
        return;
    }
    let mut daemon = Daemon::new("rooms-datalink", "");
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        "[service.web]\ncommand = \"/usr/bin/python3 {}\"\nrestart = \"never\"\n",
        app.display()
    ));
    // A directory the tenant must never be given: root's, with a root-only file.
    let target = daemon.scratch.join("root-dir");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(daemon.data_dir.join("web")).unwrap();
    std::os::unix::fs::symlink(&target, daemon.data_dir.join("web/alice")).unwrap();
    daemon.start();
    let out = cli(&daemon, &["spawn", "web:alice"]);
    assert!(!out.status.success());
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let log = daemon.log();
    assert!(log.contains("not a symlink"), "{log}");
}

#[test]
fn names_differing_only_in_a_dash_get_separate_cgroups() {
    if !privileged("names_differing_only_in_a_dash_get_separate_cgroups") {
        return;
    }
    let mut daemon = Daemon::new("rooms-cgroups", "");
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        r#"
[service.notes]
command = "/usr/bin/python3 {app}"

[service.notes-alice]
command = "/usr/bin/python3 {app}"

[instances]
notes = ["alice-x"]
notes-alice = ["x"]
"#,
        app = app.display()
    ));
    daemon.start();
    daemon.wait_ready("notes:alice-x", 1);
    let port = daemon.wait_ready("notes-alice:x", 1);
    let mut groups: Vec<String> = daemon
        .instance_cgroups()
        .iter()
        .map(|g| g.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    groups.sort();
    groups.dedup();
    assert!(groups.contains(&"notes_alice-x".to_string()), "{groups:?}");
    assert!(groups.contains(&"notes-alice_x".to_string()), "{groups:?}");
    let (status, body) = get(port, "/").unwrap();
    assert_eq!(status, 200);
    let pid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;

    let out = cli(&daemon, &["stop", "notes:alice-x"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_events("notes:alice-x", "stopped", |events| {
        events
            .iter()
            .any(|e| e.kind == tenement::store::EventKind::Stopped)
    });
    assert!(alive(pid), "stopping notes:alice-x killed notes-alice:x");
    let (status, _) = get(port, "/").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn an_old_layout_is_moved_into_place_at_start() {
    if !privileged("an_old_layout_is_moved_into_place_at_start") {
        return;
    }
    let mut daemon = Daemon::new("rooms-migrate", "");
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        "[service.notes]\ncommand = \"/usr/bin/python3 {}\"\n",
        app.display()
    ));
    // What an earlier version left: logs and a TLS store directly in data_dir.
    let line = r#"{"time_ms":1700000000000,"instance":"notes:alice","stream":"stdout","line":"from the old layout"}"#;
    daemon
        .scratch
        .write("data/logs/notes/alice.log", &format!("{line}\n"));
    daemon
        .scratch
        .write("data/tls/acme/example-0000/account.json", "{}");
    daemon.start();
    let logs = tenement::datadir::logs_dir(&daemon.data_dir);
    assert!(!daemon.data_dir.join("logs").exists());
    assert!(!daemon.data_dir.join("tls").exists());
    assert!(tenement::datadir::tls_dir(&daemon.data_dir)
        .join("acme/example-0000/account.json")
        .exists());
    let moved = std::fs::read_to_string(logs.join("notes/alice.log")).unwrap();
    assert!(moved.contains("from the old layout"));
    let out = cli(&daemon, &["logs", "notes:alice"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("from the old layout"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.log().contains("moved "), "{}", daemon.log());
}

#[test]
fn a_tenant_cannot_read_the_installed_configuration() {
    if !privileged("a_tenant_cannot_read_the_installed_configuration") {
        return;
    }
    let scratch = tenement_tests::Scratch::new("rooms-install");
    let root = scratch.join("root");
    let installed = Command::new(tenement_bin())
        .args(["install", "--root"])
        .arg(&root)
        .arg("--binary")
        .arg(tenement_bin())
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap();
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let config = root.join("etc/tenement/tenement.toml");
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A tenant: some other uid, as every instance runs under.
    use std::os::unix::process::CommandExt;
    let read = Command::new("/bin/cat")
        .arg(&config)
        .uid(61999)
        .gid(61999)
        .output()
        .unwrap();
    assert!(!read.status.success());
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(read.stdout.is_empty());

    // An existing configuration with secrets that others can read: install keeps it, and
    // says so.
    std::fs::write(
        &config,
        "[service.notes]\ncommand = \"/bin/true\"\nenv = { KEY = \"secret\" }\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let again = Command::new(tenement_bin())
        .args(["install", "--root"])
        .arg(&root)
        .arg("--binary")
        .arg(tenement_bin())
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap();
    assert!(again.status.success());
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("warning: ") && said.contains("other users may read it"),
        "{said}"
    );
}

/// `/` answers with the instance's environment (see `python_app`).
fn environment_of(port: u16) -> serde_json::Value {
    let (status, body) = get(port, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["env"].clone()
}

#[test]
fn env_file_secrets_reach_only_their_service() {
    if !privileged("env_file_secrets_reach_only_their_service") {
        return;
    }
    let mut daemon = Daemon::new("rooms-envfile", "");
    let app = daemon.app("app.py", &python_app(""));
    let secrets = daemon.scratch.write(
        "secrets/notes.env",
        "# notes' secrets\nDB_PASSWORD=s3cret=with \"quotes\" {id}\nSHARED=from the file\n",
    );
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    daemon.configure(&format!(
        r#"
[service.notes]
command = "/usr/bin/python3 {app}"
env_file = "{secrets}"
env = {{ SHARED = "from env", PLAIN = "x" }}

[service.other]
command = "/usr/bin/python3 {app}"
env = {{ PLAIN = "x" }}

[service.broken]
command = "/usr/bin/python3 {app}"
env_file = "secrets/missing.env"
restart = "never"

[instances]
notes = ["alice"]
other = ["bob"]
"#,
        app = app.display(),
        secrets = secrets.display(),
    ));
    daemon.start();
    // The configuration holds `env` values and the test wrote it 0644: serve says so.
    assert!(
        daemon.log().contains("other users may read it"),
        "{}",
        daemon.log()
    );
    let notes = environment_of(daemon.wait_ready("notes:alice", 1));
    assert_eq!(notes["DB_PASSWORD"], "s3cret=with \"quotes\" {id}");
    assert_eq!(notes["SHARED"], "from the file", "env_file wins over env");
    assert_eq!(notes["PLAIN"], "x");
    let other = environment_of(daemon.wait_ready("other:bob", 1));
    assert!(other.get("DB_PASSWORD").is_none(), "{other}");
    assert!(other.get("SHARED").is_none(), "{other}");

    // The tenant itself cannot read the file its secrets come from.
    use std::os::unix::process::CommandExt;
    let read = Command::new("/bin/cat")
        .arg(&secrets)
        .uid(61999)
        .gid(61999)
        .output()
        .unwrap();
    assert!(!read.status.success());

    // A missing file: the start fails and says which file.
    let out = cli(&daemon, &["spawn", "broken:carol"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = daemon.wait_events("broken:carol", "a failure", |events| {
        events.iter().any(|e| e.detail.contains("env_file"))
    });
    let detail = &events
        .iter()
        .find(|e| e.detail.contains("env_file"))
        .unwrap()
        .detail;
    let missing = daemon.config.parent().unwrap().join("secrets/missing.env");
    assert!(
        detail.contains(&format!(
            "reading env_file {}: No such file",
            missing.display()
        )),
        "{detail} / {said}"
    );
}
