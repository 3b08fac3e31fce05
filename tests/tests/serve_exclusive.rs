//! One daemon per data directory and per listener: a second `tenement serve` is refused
//! before it changes anything, and the first one goes on serving its tenants undisturbed.

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use supervisor_common::{python_app, Daemon, PATIENCE};
use tenement::store::EventKind;
use tenement_tests::{privileged, tenement_bin};

/// `tenement serve --config CONFIG` run to its end (it must end by itself: refused).
fn serve_refused(config: &std::path::Path) -> Output {
    let mut child = Command::new(tenement_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            tenement_tests::terminate_or_kill(&mut child, Duration::from_secs(30));
            panic!("the second tenement serve kept running: it was not refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `GET /` through the proxy on `port` for `host`: (status, body).
fn proxied(port: u16, host: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn listen_port(daemon: &Daemon) -> u16 {
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let line = config
        .lines()
        .find(|line| line.starts_with("listen = "))
        .unwrap();
    line.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn web_service(daemon: &Daemon) {
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        "[service.web]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\n\
         [instances]\nweb = [\"a\"]\n",
        app.display()
    ));
}

#[test]
fn second_serve_on_the_same_data_dir_is_refused_and_leaves_the_tenants_alone() {
    if !privileged("second_serve_on_the_same_data_dir_is_refused_and_leaves_the_tenants_alone") {
        return;
    }
    let mut daemon = Daemon::new("exclusive-dir", "");
    web_service(&daemon);
    daemon.start();
    daemon.wait_ready("web:a", 1);
    let tenants = daemon.tenant_processes();
    assert!(!tenants.is_empty());
    let port = listen_port(&daemon);
    assert_eq!(proxied(port, "a.web.localhost").0, 200);

    let refused = serve_refused(&daemon.config);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another tenement (pid {}) is serving data directory {}",
            daemon.pid(),
            daemon.data_dir.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("killed processes left"), "{stderr}");

    // Same processes, still serving, nothing recorded against them.
    let mut after = daemon.tenant_processes();
    let mut before = tenants.clone();
    after.sort_unstable();
    before.sort_unstable();
    assert_eq!(after, before);
    let (status, body) = proxied(port, "a.web.localhost");
    assert_eq!(status, 200, "{body}");
    let kinds = daemon.kinds("web:a");
    assert_eq!(kinds, [EventKind::Spawned, EventKind::Ready], "{kinds:?}");
    daemon.stop();
}

#[test]
fn second_serve_on_the_same_listen_address_is_refused_before_starting_anything() {
    if !privileged("second_serve_on_the_same_listen_address_is_refused_before_starting_anything") {
        return;
    }
    let mut first = Daemon::new("exclusive-listen-1", "");
    web_service(&first);
    first.start();
    first.wait_ready("web:a", 1);
    let port = listen_port(&first);

    // Another data directory, the same listener; its own instance must never start.
    let second = Daemon::new(
        "exclusive-listen-2",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    web_service(&second);
    let refused = serve_refused(&second.config);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (settings.listen)"
        )) && stderr.contains("address in use"),
        "{stderr}"
    );
    assert!(second.tenant_processes().is_empty(), "{stderr}");
    // Refused before it opened its store, let alone started an instance.
    assert!(!second.data_dir.join("tenement.db").exists(), "{stderr}");
    assert!(!second.data_dir.join("web").exists(), "{stderr}");

    // Every request still reaches the first daemon's tenant.
    for _ in 0..20 {
        let (status, body) = proxied(port, "a.web.localhost");
        assert_eq!(status, 200, "{body}");
    }
    first.stop();
}

#[test]
fn second_serve_on_the_same_api_address_is_refused_before_starting_anything() {
    if !privileged("second_serve_on_the_same_api_address_is_refused_before_starting_anything") {
        return;
    }
    let api = tenement_tests::free_port();
    let mut first = Daemon::new("exclusive-api-1", &format!("api = \"127.0.0.1:{api}\""));
    web_service(&first);
    first.start();
    first.wait_ready("web:a", 1);

    // Another data directory and listener, the same management address.
    let second = Daemon::new("exclusive-api-2", &format!("api = \"127.0.0.1:{api}\""));
    web_service(&second);
    let refused = serve_refused(&second.config);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "listening for the management API on 127.0.0.1:{api} (settings.api)"
        )),
        "{stderr}"
    );
    assert!(second.tenant_processes().is_empty(), "{stderr}");
    // Refused before it opened its store, let alone started an instance.
    assert!(!second.data_dir.join("tenement.db").exists(), "{stderr}");
    assert!(!second.data_dir.join("web").exists(), "{stderr}");
    first.stop();
}
