//! A certificate close to its end shows: `GET /health` turns `degraded` (still 200) naming
//! it, `tenement status` says so, and the expiry gauge is on `/metrics`. Replacing it with
//! a certificate that has time left makes the daemon healthy again.

mod supervisor_common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::Command,
};

use supervisor_common::{eventually, Daemon};
use tenement_tests::{free_port, tenement_bin, tls::TestCa, Scratch};

/// A GET on the management API's unix socket: (status line, body).
fn unix_get(socket: &std::path::Path, path: &str) -> (String, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn health(socket: &std::path::Path) -> serde_json::Value {
    let (status, body) = unix_get(socket, "/health");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("{err}: {body}"))
}

/// `tenement status` against the daemon's socket: its output.
fn status(socket: &std::path::Path) -> String {
    let output = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!("unix:{}", socket.display()))
        .arg("status")
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

#[test]
fn a_certificate_within_seven_days_of_expiry_degrades_health() {
    let ca = TestCa::new("tenement test expiring CA");
    // Valid for less than three more days.
    let (cert, key) = ca.issue_expiring(&["*.shop.example.test"], 3);
    let files = Scratch::new("tls-expiry-own");
    let cert_path = files.write("cert.pem", &cert);
    let key_path = files.write("key.pem", &key);
    let mut daemon = Daemon::new(
        "tls-expiry",
        &format!(
            "[settings.tls]\nenabled = true\nlisten = \"127.0.0.1:{}\"\n\
             acme_directory = \"\"\ncert = {:?}\nkey = {:?}\n",
            free_port(),
            cert_path.display().to_string(),
            key_path.display().to_string(),
        ),
    );
    daemon.start();
    let socket = daemon.data_dir.join("tenement.sock");

    let degraded = health(&socket);
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    let reasons = degraded["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{degraded}");
    let reason = reasons[0].as_str().unwrap();
    assert!(
        reason.starts_with("certificate for *.shop.example.test expires in 2days"),
        "{reason}"
    );

    let text = status(&socket);
    assert!(
        text.contains(
            "health:          degraded: certificate for *.shop.example.test expires in 2days"
        ),
        "{text}"
    );

    let (_, metrics) = unix_get(&socket, "/metrics");
    assert!(
        metrics.contains(
            "tenement_tls_certificate_expiry_timestamp_seconds{name=\"*.shop.example.test\",source=\"file\"}"
        ),
        "{metrics}"
    );

    // The operator renews the files: healthy again once the new certificate is loaded.
    let (cert, key) = ca.issue_expiring(&["*.shop.example.test"], 60);
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    let healthy = eventually("the renewed certificate to be picked up", || {
        let answer = health(&socket);
        (answer["status"] == "ok").then_some(answer)
    });
    assert_eq!(healthy["reasons"], serde_json::json!([]), "{healthy}");
    let text = status(&socket);
    assert!(!text.contains("health:"), "{text}");
    daemon.stop();
}
