//! A start that fails says why, as a user sees it: `tenement spawn`, the proxy, `ps`, the
//! API and the events name the exit status (or the real `startup_timeout`), the last lines
//! of the program's output and the next step; after `max_restarts` the instance is `failed`
//! with that reason.

mod api_support;

use api_support::{stderr, Daemon};
use tenement_tests::{privileged, Scratch};

/// Exits at once, after saying why on both streams.
const QUITS: &str = "import sys\nprint('reading /srv/app.conf', flush=True)\n\
print('fatal: /srv/app.conf is missing', file=sys.stderr, flush=True)\nsys.exit(3)\n";

/// Runs, says it warms up, and never listens.
const SILENT: &str = "import time\nprint('warming up the cache', flush=True)\ntime.sleep(1000)\n";

fn daemon(label: &str) -> Daemon {
    let scratch = Scratch::new(label);
    let quits = scratch.write("quits.py", QUITS);
    let silent = scratch.write("silent.py", SILENT);
    // The first lines land in [settings].
    let services = format!(
        r#"max_restarts = 2
backoff_base_ms = 100
backoff_max_ms = 200

[service.quits]
command = "/usr/bin/python3 {quits}"
startup_timeout = 7

[service.silent]
command = "/usr/bin/python3 {silent}"
startup_timeout = 2
restart = "never"
"#,
        quits = quits.display(),
        silent = silent.display()
    );
    Daemon::start_with(scratch, &services, &[])
}

#[test]
fn an_app_that_exits_at_once_is_named_with_its_status_and_output_then_failed() {
    if !privileged("an_app_that_exits_at_once_is_named_with_its_status_and_output_then_failed") {
        return;
    }
    let mut daemon = daemon("start-exits");
    let output = daemon.cli(&["spawn", "quits:a"]);
    assert!(!output.status.success());
    let error = stderr(&output);
    for wanted in [
        "error: quits:a did not start: it exited (exit code 3) before it was ready",
        "fatal: /srv/app.conf is missing",
        "reading /srv/app.conf",
        "`tenement logs quits:a`",
    ] {
        assert!(error.contains(wanted), "{wanted:?} missing in: {error}");
    }
    // Not the waiter's own deadline (startup_timeout + slack), and not a bare timeout.
    assert!(!error.contains("within 12s"), "{error}");
    assert!(!error.contains("did not become ready within"), "{error}");

    // After max_restarts it is failed, and says so everywhere with the reason.
    daemon.wait_until("quits:a to be failed", |daemon| {
        daemon
            .instance("quits:a")
            .is_some_and(|view| view["state"] == "failed")
    });
    let view = daemon.instance("quits:a").unwrap();
    let reason = view["last_error"].as_str().unwrap().to_string();
    for wanted in [
        "max_restarts",
        "exit code 3",
        "fatal: /srv/app.conf is missing",
        "`tenement restart quits:a`",
    ] {
        assert!(reason.contains(wanted), "{wanted:?} missing in: {reason}");
    }
    let ps = daemon.ok(&["ps"]);
    let row = ps.lines().find(|l| l.starts_with("quits:a")).unwrap();
    assert!(
        row.contains(" failed ") && row.contains("max_restarts"),
        "{ps}"
    );
    let events = daemon.ok(&["events", "quits:a"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains(" failed ") && l.contains("fatal: /srv/app.conf is missing")),
        "{events}"
    );
    // Through the proxy: a 503 with the same reason, at once.
    let (status, body) =
        tenement_tests::http::get(daemon.http_port, "a.quits.localhost", "/").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("instance quits:a is failed"), "{body}");
    daemon.stop();
}

#[test]
fn an_app_that_never_listens_is_named_with_the_real_startup_timeout() {
    if !privileged("an_app_that_never_listens_is_named_with_the_real_startup_timeout") {
        return;
    }
    let mut daemon = daemon("start-silent");
    let output = daemon.cli(&["spawn", "silent:a"]);
    assert!(!output.status.success());
    let error = stderr(&output);
    for wanted in [
        "error: silent:a did not start: not ready within startup_timeout (2s)",
        "nothing accepted connections on port",
        "warming up the cache",
        "`tenement logs silent:a`",
    ] {
        assert!(error.contains(wanted), "{wanted:?} missing in: {error}");
    }
    assert!(!error.contains("within 7s"), "{error}");
    // restart = "never": failed at once, with the same reason.
    let view = daemon.instance("silent:a").unwrap();
    assert_eq!(view["state"], "failed", "{view}");
    let reason = view["last_error"].as_str().unwrap();
    assert!(
        reason.contains("startup_timeout (2s)") && reason.contains("warming up the cache"),
        "{reason}"
    );
    daemon.stop();
}
