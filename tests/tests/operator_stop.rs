//! The one rule of stopping: an operator's `tenement stop` holds (requests get a 503 that
//! names the instance and how to start it, a restart of tenement keeps it stopped) until
//! `tenement start`; an idle stop is `sleeping` and the next request wakes it, also after a
//! restart of tenement.

mod api_support;
mod idle_support;
mod supervisor_common;

use std::time::Duration;

use idle_support::{cli, configure_api, http, pid, proxy_port, state, wait_state, IDLE_TIMEOUT};
use tenement_tests::{privileged, tenement_bin};

/// `tenement ps --json`: (name, state) of every instance.
fn ps_states(daemon: &supervisor_common::Daemon) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(&cli(daemon, &["--json", "ps"])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|view| {
            (
                view["name"].as_str().unwrap().to_string(),
                view["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_held_answer(port: u16) {
    let (status, body) = http(port, "alice.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body.trim(),
        "instance api:alice is stopped: an operator stopped it; `tenement start api:alice` \
         starts it again"
    );
}

#[test]
fn an_operator_stop_holds_until_start_and_an_idle_stop_wakes_across_restarts() {
    if !privileged("an_operator_stop_holds_until_start_and_an_idle_stop_wakes_across_restarts") {
        return;
    }
    let mut daemon = idle_support::daemon("operator-stop");
    // alice is configured in [instances]: the hold must win over the configuration too.
    configure_api(&daemon, &["alice", "bob"], "");
    daemon.start();
    let port = proxy_port(&daemon);
    daemon.wait_ready("api:alice", 1);
    daemon.wait_ready("api:bob", 1);

    assert_eq!(
        cli(&daemon, &["stop", "api:alice"]).trim(),
        "api:alice stopped"
    );
    assert_held_answer(port);
    // Requests never started it: still one spawn, no process.
    assert_eq!(pid(&daemon, "api:alice"), None);
    let events = cli(&daemon, &["events", "api:alice"]);
    assert!(
        events
            .contains("stopped by an operator; it stays stopped until `tenement start api:alice`"),
        "{events}"
    );
    // bob, left alone, falls asleep.
    wait_state(
        &daemon,
        "api:bob",
        "sleeping",
        Duration::from_secs(10 * IDLE_TIMEOUT),
    );
    let table = cli(&daemon, &["ps"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api:alice") && l.contains(" stopped ")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api:bob") && l.contains(" sleeping ")),
        "{table}"
    );

    // A restart of tenement keeps both kinds of stop apart.
    daemon.stop();
    daemon.start();
    assert_eq!(
        ps_states(&daemon),
        [
            ("api:alice".to_string(), "stopped".to_string()),
            ("api:bob".to_string(), "sleeping".to_string())
        ]
    );
    assert!(
        daemon
            .log()
            .contains("api:alice stays stopped, as an operator left it"),
        "{}",
        daemon.log()
    );
    assert_held_answer(port);
    // The sleeping one wakes on a request.
    let (status, body) = http(port, "bob.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&daemon, "api:bob"), "running");
    assert_eq!(state(&daemon, "api:alice"), "stopped");

    // `start` ends the hold; the next request is served.
    let started = cli(&daemon, &["start", "api:alice"]);
    assert!(
        started.starts_with("api:alice running on port "),
        "{started}"
    );
    let (status, body) = http(port, "alice.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 200, "{body}");

    // Stopping a sleeping instance holds it too; the API says so.
    wait_state(
        &daemon,
        "api:bob",
        "sleeping",
        Duration::from_secs(10 * IDLE_TIMEOUT),
    );
    cli(&daemon, &["stop", "api:bob"]);
    assert_eq!(state(&daemon, "api:bob"), "stopped");
    let (status, _) = http(port, "bob.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 503);
    daemon.stop();
}

#[test]
fn start_of_an_unknown_service_is_refused() {
    if !privileged("start_of_an_unknown_service_is_refused") {
        return;
    }
    let mut daemon = idle_support::daemon("operator-start-unknown");
    configure_api(&daemon, &[], "");
    daemon.start();
    let output = std::process::Command::new(tenement_bin())
        .arg("--server")
        .arg(format!(
            "unix:{}",
            daemon.data_dir.join("tenement.sock").display()
        ))
        .args(["start", "nope:alice"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no service \"nope\" in the configuration"),
        "{stderr}"
    );
    daemon.stop();
}
