//! `cargo xtask`: the project's own tasks, so that a fresh machine needs nothing by hand.
#![warn(clippy::unwrap_used)]

mod bench;
mod bench_adopt;
mod bench_dashboard;
mod bench_ebpf;
mod bench_fleet;
mod bench_proxy;
mod bench_spawn;
mod bench_support;
mod bench_thaw;
mod bench_wake;
mod setup;
mod util;

use std::process::ExitCode;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup [--apt]        install nightly with rust-src and bpf-linker (with --apt: the Debian
                       packages the tests use); idempotent
  build-ebpf           build the eBPF object and list its programs and maps
  test [ARGS...]       setup, then run the whole test suite (ARGS go to `cargo test`)
  run                  setup, build, and serve the bundled example (examples/notes)
  bench [NAME]         benchmarks: proxy, spawn, wake, adopt, ebpf, fleet, dashboard (no NAME:
                       list them); results go to docs/benchmarks.md (spawn: docs/isolation.md)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => {
            eprint!("{USAGE}");
            bail!("no task given");
        }
    };
    match task {
        "setup" => setup::setup(rest.iter().any(|a| a == "--apt")),
        "build-ebpf" => setup::build_ebpf(),
        "test" => test(rest),
        "run" => run_example(),
        "bench" => bench::bench(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown task {other:?}")
        }
    }
}

/// The README's test command: everything a fresh machine needs, then every test.
fn test(args: &[String]) -> Result<()> {
    // Root can install the Debian packages the end-to-end tests start (pebble, runsc, ...).
    setup::setup(util::is_root())?;
    util::step("building tenement");
    util::cargo(&["build", "--package", "tenement", "--bin", "tenement"])?;
    util::step("running the test suite");
    // tenement-ebpf builds only for the BPF target (tenement/build.rs does that).
    let mut cargo_args = vec!["test", "--workspace", "--exclude", "tenement-ebpf"];
    cargo_args.extend(args.iter().map(String::as_str));
    // The end-to-end tests run this binary instead of building their own copy.
    std::env::set_var(
        "TENEMENT_BIN",
        std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| util::workspace_root().join("target"))
            .join("debug/tenement"),
    );
    util::cargo(&cargo_args)
}

/// The README's first command: serve the bundled notes example on 127.0.0.1:8080.
fn run_example() -> Result<()> {
    setup::setup(false)?;
    let tenement = util::build_release_binary()?;
    // Tenants run under their own uids and cannot read a checkout under /root (mode 0700),
    // so the example is served from a world-readable copy.
    let staged = std::path::Path::new("/tmp/tenement-example/app");
    std::fs::create_dir_all(staged)?;
    for file in ["app.py", "tenement.toml"] {
        std::fs::copy(
            util::workspace_root().join("examples/notes").join(file),
            staged.join(file),
        )?;
    }
    util::run(std::process::Command::new("chmod").args(["-R", "a+rX", "/tmp/tenement-example"]))?;
    println!(
        "\ntenement serves the notes example on http://127.0.0.1:8080 . Try:\n\
         \n  curl -H 'Host: alice.notes.localhost' -d 'first note' http://127.0.0.1:8080/notes\
         \n  curl -H 'Host: alice.notes.localhost' http://127.0.0.1:8080/notes\
         \n  curl -H 'Host: bob.notes.localhost' http://127.0.0.1:8080/notes   # bob has his own notes\n"
    );
    let status = std::process::Command::new(tenement)
        .arg("serve")
        .arg("--config")
        .arg(staged.join("tenement.toml"))
        .status()?;
    if !status.success() {
        bail!("tenement serve exited with {status}");
    }
    Ok(())
}
