//! The whole daemon end to end: `tenement serve` on the bundled notes example, requests by
//! Host header through its proxy to real tenant processes.

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use supervisor_common::{eventually, Daemon};
use tenement_tests::{free_port, privileged, workspace_root};

/// One HTTP/1.1 request through the proxy; returns (status, body).
fn request(port: u16, host: Option<&str>, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let host_line = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\n{host_line}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

#[test]
fn notes_tenants_keep_separate_data_through_the_proxy() {
    if !privileged("notes_tenants_keep_separate_data_through_the_proxy") {
        return;
    }
    let port = free_port();
    let mut daemon = Daemon::new(
        "serve-notes",
        &format!("listen = \"127.0.0.1:{port}\"\ndomain = \"example.test\""),
    );
    let app = daemon.app(
        "app.py",
        &std::fs::read_to_string(workspace_root().join("examples/notes/app.py")).unwrap(),
    );
    daemon.configure(&format!(
        "[service.notes]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\n\
         [instances]\nnotes = [\"alice\", \"bob\"]\n",
        app.display()
    ));
    daemon.start();

    let (status, _) = eventually("alice answers through the proxy", || {
        let reply = request(
            port,
            Some("alice.notes.example.test"),
            "POST",
            "/notes",
            "buy milk",
        );
        (reply.0 == 201).then_some(reply)
    });
    assert_eq!(status, 201);
    request(
        port,
        Some("bob.notes.example.test"),
        "POST",
        "/notes",
        "call mom",
    );

    let (status, alice) = request(
        port,
        Some("ALICE.notes.example.test:443"),
        "GET",
        "/notes",
        "",
    );
    assert_eq!(status, 200);
    assert!(
        alice.contains("buy milk") && !alice.contains("call mom"),
        "{alice}"
    );
    let (_, bob) = request(port, Some("bob.notes.example.test."), "GET", "/notes", "");
    assert!(
        bob.contains("call mom") && !bob.contains("buy milk"),
        "{bob}"
    );

    // Failure paths a user meets: unknown tenant, foreign host, no Host at all.
    let (status, body) = request(port, Some("carol.notes.example.test"), "GET", "/notes", "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("carol.notes.example.test"), "{body}");
    let (status, _) = request(port, Some("elsewhere.org"), "GET", "/", "");
    assert_eq!(status, 404);
    let (status, _) = request(port, None, "GET", "/", "");
    assert_eq!(status, 400);
    daemon.stop();
}
