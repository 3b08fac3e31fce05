//! The daemon's side of operations: readiness and stop notifications to systemd
//! (`Type=notify`), `/metrics` as valid Prometheus text, the stats snapshot and stream.

mod api_support;

use std::{
    io::{Read, Write},
    os::unix::net::{UnixDatagram, UnixStream},
    time::Duration,
};

use api_support::{api_service, get_instance, request, Daemon, APP, PATIENCE};
use tenement_tests::{privileged, Scratch};

#[test]
fn serve_notifies_systemd_when_ready_and_when_stopping() {
    if !privileged("serve_notifies_systemd_when_ready_and_when_stopping") {
        return;
    }
    let scratch = Scratch::new("api-notify");
    let app = scratch.write("app.py", APP);
    let notify_path = scratch.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let services = api_service(&app);
    let mut daemon = Daemon::start_with(
        scratch,
        &services,
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let mut buffer = [0u8; 512];
    let length = notify
        .recv(&mut buffer)
        .expect("no READY=1 from tenement serve");
    let ready = String::from_utf8_lossy(&buffer[..length]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    // READY means the management API answers already.
    assert_eq!(
        request(&daemon.unix(), "GET", "/health", None, "")
            .unwrap()
            .0,
        200
    );

    daemon.stop();
    let length = notify
        .recv(&mut buffer)
        .expect("no STOPPING=1 from tenement serve");
    assert_eq!(&buffer[..length], b"STOPPING=1");
    assert!(
        !daemon.socket.exists(),
        "the API socket outlived the daemon"
    );
}

#[test]
fn metrics_are_valid_prometheus_text() {
    if !privileged("metrics_are_valid_prometheus_text") {
        return;
    }
    let daemon = Daemon::start("api-metrics");
    daemon.ok(&["spawn", "api:alice"]);
    daemon.ok(&["weight", "api:alice", "30"]);
    let (status, text) = request(&daemon.unix(), "GET", "/metrics", None, "").unwrap();
    assert_eq!(status, 200, "{text}");
    for line in [
        "tenement_up 1",
        "tenement_instance_up{instance=\"api:alice\",service=\"api\"} 1",
        "tenement_instance_state{instance=\"api:alice\",service=\"api\",state=\"running\"} 1",
        "tenement_instance_state{instance=\"api:alice\",service=\"api\",state=\"failed\"} 0",
        "tenement_instance_weight{instance=\"api:alice\",service=\"api\"} 30",
        "tenement_instance_restarts_total{instance=\"api:alice\",service=\"api\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    tenement_tests::http::assert_promtool_accepts(&text);
}

#[test]
fn stats_snapshot_and_stream() {
    if !privileged("stats_snapshot_and_stream") {
        return;
    }
    let mut daemon = Daemon::start("api-stats");
    daemon.ok(&["spawn", "api:alice"]);
    let port = daemon.instance("api:alice").unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    for _ in 0..5 {
        get_instance(port, "/traffic").unwrap();
    }
    let (status, body) = request(&daemon.unix(), "GET", "/v1/stats", None, "").unwrap();
    assert_eq!(status, 200, "{body}");
    let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
    let alice = &snapshot["instances"][0];
    assert_eq!(alice["name"], "api:alice");
    if snapshot["kernel_counters"]["active"] == true {
        // The kernel counted the requests above (the sampler reads every second): real
        // numbers, not placeholders.
        let mut alice = alice.clone();
        daemon.wait_until("alice's traffic in the sampled stats", |daemon| {
            let (_, body) = request(&daemon.unix(), "GET", "/v1/stats", None, "").unwrap();
            let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
            alice = snapshot["instances"][0].clone();
            alice["stats"]["totals"]["rx_bytes"].as_u64() > Some(0)
        });
        assert!(
            alice["stats"]["totals"]["tx_bytes"].as_u64().unwrap() > 0,
            "{alice}"
        );
        assert!(alice["stats"]["memory_bytes"].as_u64().is_some(), "{alice}");
        assert_eq!(alice["restarts"], 0, "{alice}");
    } else {
        assert!(
            alice["stats"].is_null() || alice["stats"]["totals"].is_null(),
            "kernel totals without kernel counters: {snapshot}"
        );
        assert!(snapshot["kernel_counters"]["reason"].is_string());
    }

    // The stream: one snapshot per line, as long as the client reads.
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /v1/stats?follow=true&interval_ms=200 HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut received = String::new();
    let mut buffer = [0u8; 4096];
    while received.matches("\"time_ms\"").count() < 3 {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the stats stream ended early: {received}");
        received.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(received.contains("application/x-ndjson"), "{received}");
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    // The daemon still answers after the client went away mid-stream.
    assert_eq!(
        request(&daemon.unix(), "GET", "/health", None, "")
            .unwrap()
            .0,
        200
    );
}
