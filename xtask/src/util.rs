//! Small helpers shared by the tasks: running commands loudly and finding the workspace.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

pub fn step(what: &str) {
    eprintln!("==> {what}");
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs cargo in the workspace root, output shown, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_bin())
        .args(args)
        .current_dir(workspace_root()))
}

/// Builds the release `tenement` binary and returns its path.
/// `TENEMENT_RELEASE_BIN` names an already built one instead (a shared, loaded machine can
/// take many minutes to rebuild it).
pub fn build_release_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TENEMENT_RELEASE_BIN") {
        step("using TENEMENT_RELEASE_BIN instead of building tenement");
        return Ok(PathBuf::from(path));
    }
    step("building tenement (release)");
    cargo(&[
        "build",
        "--release",
        "--package",
        "tenement",
        "--bin",
        "tenement",
    ])?;
    Ok(workspace_root().join("target/release/tenement"))
}

pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Output of a command that is expected to succeed, or `None`.
pub fn output(command: &mut Command) -> Option<String> {
    let out = command.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Sends SIGTERM to one process we started.
pub fn terminate(pid: u32) {
    // SAFETY: kill has no memory preconditions; the PID is a child of ours.
    unsafe {
        libc_kill(pid as i32, 15);
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
