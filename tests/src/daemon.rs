//! How every end-to-end test starts `tenement serve`: one command line, one log file, one way
//! to wait for it. The test files keep only what is theirs (config, ports, assertions).

use std::{
    fs::File,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::tenement_bin;

/// `tenement --config CONFIG serve`, as a test runs it: stdin closed, `RUST_LOG=info`, and
/// not under the test runner's systemd (`NOTIFY_SOCKET` removed). Add arguments, environment
/// or credentials to it, then [`spawn_logging`] it.
pub fn serve_command(config: &Path) -> Command {
    serve_command_of(&tenement_bin(), config)
}

/// [`serve_command`] with another copy of the binary (one a test's unprivileged user can run).
pub fn serve_command_of(bin: &Path, config: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    command
}

/// Starts `command` with stdout and stderr both appended to `log`, the daemon's whole output.
pub fn spawn_logging(command: &mut Command, log: &Path) -> Child {
    let file = File::create(log).unwrap();
    command.stdout(file.try_clone().unwrap()).stderr(file);
    // A binary a test has just copied may still be open for writing in a child another test
    // thread forked meanwhile (until that child's exec closes it): the kernel then refuses
    // to run it (ETXTBSY) for a moment.
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            spawned => return spawned.expect("starting tenement serve"),
        }
    }
}

/// Waits until `condition` holds; panics with the daemon's last log lines if the daemon exits
/// first or `patience` runs out.
pub fn wait_for_daemon(
    child: &mut Child,
    log: &Path,
    what: &str,
    patience: Duration,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + patience;
    loop {
        if condition() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "tenement serve exited ({status}) while waiting for {what}\n{}",
                log_tail(log)
            );
        }
        if Instant::now() > deadline {
            panic!("gave up waiting for {what}\n{}", log_tail(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last 60 lines of a daemon's log, headed for a panic message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- daemon log (last 60 lines) ---\n{}",
        lines[lines.len().saturating_sub(60)..].join("\n")
    )
}
