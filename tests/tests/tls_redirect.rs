//! TLS with the operator's own certificate and ACME turned off (`acme_directory = ""`), on
//! ports other than 80 and 443: the plain listener redirects to the HTTPS listener's port.

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use supervisor_common::{eventually, python_app, Daemon};
use tenement_tests::{
    free_port, privileged,
    tls::{https_get, TestCa},
};

/// A plain HTTP/1.1 GET; returns the response head.
fn plain_head(port: u16, host: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(head, _)| head.to_string())
}

#[test]
fn redirect_keeps_the_https_port_and_acme_can_be_off() {
    if !privileged("redirect_keeps_the_https_port_and_acme_can_be_off") {
        return;
    }
    let ca = TestCa::new("tenement test redirect CA");
    let (cert, key) = ca.issue(&["*.notes.example.test"]);
    let (http, https) = (free_port(), free_port());
    let probe = Daemon::new("tls-redirect-files", "");
    let cert_path = probe.scratch.write("cert.pem", &cert);
    let key_path = probe.scratch.write("key.pem", &key);
    let mut daemon = Daemon::new(
        "tls-redirect",
        &format!(
            "listen = \"127.0.0.1:{http}\"\ndomain = \"example.test\"\n\n\
             [settings.tls]\nenabled = true\nlisten = \"127.0.0.1:{https}\"\n\
             acme_directory = \"\"\ncert = {cert:?}\nkey = {key:?}",
            cert = cert_path.display().to_string(),
            key = key_path.display().to_string(),
        ),
    );
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        "[service.notes]\ncommand = \"/usr/bin/python3 {}\"\n\n[instances]\nnotes = [\"alice\"]\n",
        app.display()
    ));
    daemon.start();

    let head = plain_head(http, "alice.notes.example.test", "/notes?x=1");
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    let location = head.lines().find_map(|line| {
        line.to_ascii_lowercase()
            .strip_prefix("location: ")
            .map(str::to_string)
    });
    assert_eq!(
        location.as_deref(),
        Some(format!("https://alice.notes.example.test:{https}/notes?x=1").as_str()),
        "{head}"
    );

    // The own certificate serves; no ACME account was ever opened.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = eventually("alice over HTTPS", || {
        runtime
            .block_on(https_get(https, "alice.notes.example.test", &[&ca.pem]))
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(answer.body.contains("notes:alice"), "{}", answer.body);
    assert!(daemon.log().contains("ACME is off"), "{}", daemon.log());
    daemon.stop();
}
