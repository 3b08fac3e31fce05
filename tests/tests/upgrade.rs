//! Binary upgrade (SIGUSR2): the new binary takes the listening sockets over `SCM_RIGHTS`,
//! the old one finishes its requests and exits; a client looping through the proxy meanwhile
//! sees no error. A new binary that fails to come up is rolled back: the old one serves on.

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use supervisor_common::{alive, eventually, python_app, Daemon, PATIENCE};
use tenement_tests::{
    daemon::{log_tail, serve_command_of, spawn_logging, wait_for_daemon},
    free_port, privileged, tenement_bin,
};

/// One request on a fresh connection through the proxy: (status, error).
fn request(port: u16) -> Result<u16, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: alice.api.example.test\r\nConnection: close\r\n\r\n",
        )
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {answer:?}"))
}

/// `tenement status` of the daemon on `socket`: (pid, binary line).
fn status(socket: &Path) -> Option<(u32, String)> {
    let output = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!("unix:{}", socket.display()))
        .arg("status")
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .env_remove("TENEMENT_CONFIG")
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let pid = text
        .split("(pid ")
        .nth(1)?
        .split(')')
        .next()?
        .parse()
        .ok()?;
    let binary = text.lines().find(|l| l.starts_with("binary:"))?.to_string();
    Some((pid, binary))
}

/// The pid of instance `api:alice` as `tenement ps --json` on `socket` shows it.
fn tenant_pid(socket: &Path) -> Option<u64> {
    let output = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!("unix:{}", socket.display()))
        .args(["ps", "--json"])
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .env_remove("TENEMENT_CONFIG")
        .output()
        .ok()?;
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    rows.as_array()?
        .iter()
        .find(|row| row["name"] == "api:alice")?["pid"]
        .as_u64()
}

/// Replaces the file at `path` by a fresh copy of `from` (a new file, as a package
/// upgrade would leave it).
fn replace(path: &Path, from: &Path) {
    let next = path.with_extension("next");
    std::fs::copy(from, &next).unwrap();
    std::fs::rename(&next, path).unwrap();
}

struct Setup {
    daemon: Daemon,
    proxy: u16,
    binary: PathBuf,
    child: Child,
    log: PathBuf,
}

fn start(label: &str) -> Setup {
    let proxy = free_port();
    let daemon = Daemon::new(
        label,
        &format!("listen = \"127.0.0.1:{proxy}\"\ndomain = \"example.test\""),
    );
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\n\
         [instances]\napi = [\"alice\"]\n",
        app.display()
    ));
    let binary = daemon.scratch.join("bin/tenement");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(tenement_bin(), &binary).unwrap();
    let log = daemon.scratch.join("upgrade.log");
    let mut child = spawn_logging(&mut serve_command_of(&binary, &daemon.config), &log);
    wait_for_daemon(&mut child, &log, "\" serving \"", PATIENCE, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" serving "))
    });
    eventually("alice to answer through the proxy", || {
        (request(proxy) == Ok(200)).then_some(())
    });
    Setup {
        daemon,
        proxy,
        binary,
        child,
        log,
    }
}

fn wait_exit(child: &mut Child, log: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the old tenement did not exit\n{}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_upgrade_under_load_loses_no_request_and_runs_the_new_binary() {
    if !privileged("an_upgrade_under_load_loses_no_request_and_runs_the_new_binary") {
        return;
    }
    let Setup {
        daemon,
        proxy,
        binary,
        mut child,
        log,
    } = start("upgrade");
    let socket = daemon.data_dir.join("tenement.sock");
    let (old_pid, old_binary) = status(&socket).expect("status of the old daemon");
    assert_eq!(old_pid, child.id());
    let tenant = tenant_pid(&socket).expect("the tenant's pid");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match request(proxy) {
                    Ok(200) => {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => errors.push(format!("status {other}")),
                    Err(err) => errors.push(err),
                }
            }
            errors
        })
    };
    eventually("the client loop to get answers", || {
        (answered.load(Ordering::SeqCst) > 20).then_some(())
    });

    // A new file at the same path, then the signal.
    replace(&binary, &tenement_bin());
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) };
    wait_exit(&mut child, &log);
    assert!(child.wait().unwrap().success(), "{}", log_tail(&log));
    let (new_pid, new_binary) = eventually("the new daemon's status", || {
        status(&socket).filter(|(pid, _)| *pid != old_pid)
    });
    let before = answered.load(Ordering::SeqCst);
    eventually("answers from the new daemon", || {
        (answered.load(Ordering::SeqCst) > before + 20).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let errors = load.join().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}\n{}",
        errors.len(),
        errors.first(),
        log_tail(&log)
    );
    assert!(answered.load(Ordering::SeqCst) > 40);
    assert!(
        new_binary.contains(&binary.display().to_string()),
        "{new_binary}"
    );
    assert_ne!(new_binary, old_binary, "status shows the new file");
    assert_eq!(
        tenant_pid(&socket),
        Some(tenant),
        "the tenant kept its process across the upgrade\n{}",
        log_tail(&log)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIGUSR2: upgrading to"), "{text}");
    assert!(text.contains("upgrade: took over"), "{text}");

    // The new daemon is not the test's child: stop it by its pid.
    // SAFETY: as above.
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + PATIENCE;
    while alive(new_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(new_pid), "the new daemon did not stop");
}

/// `tenement upgrade` through the management API: (success, stdout, stderr).
fn cli_upgrade(socket: &Path, binary: &Path) -> (bool, String, String) {
    let output = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!("unix:{}", socket.display()))
        .args(["upgrade", "--binary"])
        .arg(binary)
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn tenement_upgrade_runs_the_given_binary() {
    if !privileged("tenement_upgrade_runs_the_given_binary") {
        return;
    }
    let Setup {
        daemon,
        proxy,
        mut child,
        log,
        ..
    } = start("upgrade-cli");
    let socket = daemon.data_dir.join("tenement.sock");
    let copy = daemon.scratch.join("bin/tenement-copy");
    std::fs::copy(tenement_bin(), &copy).unwrap();
    let old_pid = child.id();
    let (ok, stdout, stderr) = cli_upgrade(&socket, &copy);
    assert!(ok, "{stderr}\n{}", log_tail(&log));
    assert!(
        stdout.starts_with(&format!("upgraded: pid {old_pid} handed ")),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("({})", copy.display())),
        "{stdout}"
    );
    wait_exit(&mut child, &log);
    let (new_pid, binary) = eventually("the new daemon's status", || {
        status(&socket).filter(|(pid, _)| *pid != old_pid)
    });
    assert!(binary.contains(&copy.display().to_string()), "{binary}");
    eventually("alice to answer through the new daemon", || {
        (request(proxy) == Ok(200)).then_some(())
    });
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + PATIENCE;
    while alive(new_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(new_pid), "the new daemon did not stop");
}

#[test]
fn a_new_binary_that_fails_to_come_up_is_rolled_back() {
    if !privileged("a_new_binary_that_fails_to_come_up_is_rolled_back") {
        return;
    }
    let Setup {
        daemon,
        proxy,
        mut child,
        log,
        ..
    } = start("upgrade-rollback");
    let socket = daemon.data_dir.join("tenement.sock");
    let broken = daemon
        .scratch
        .write("broken.sh", "#!/bin/sh\necho broken binary >&2\nexit 3\n");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, _, stderr) = cli_upgrade(&socket, &broken);
    assert!(!ok);
    assert!(
        stderr.contains("upgrade failed, still serving: the new binary (pid ")
            && stderr.contains("did not take over within 30s"),
        "{stderr}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("broken binary"),
        "its output reaches the daemon's log"
    );
    // A path that is no program at all.
    let (ok, _, stderr) = cli_upgrade(&socket, &daemon.scratch.join("missing"));
    assert!(!ok);
    assert!(stderr.contains("starting the new binary"), "{stderr}");
    assert!(child.try_wait().unwrap().is_none(), "{}", log_tail(&log));
    assert_eq!(request(proxy), Ok(200));
    assert_eq!(status(&socket).map(|s| s.0), Some(child.id()));
    tenement_tests::terminate_or_kill(&mut child, PATIENCE);
}
