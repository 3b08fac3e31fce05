//! `socket_activation = true`: tenement holds the instance's port while it sleeps, and the
//! app receives the socket the systemd way (fd 3, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use supervisor_common::{eventually, Daemon};
use tenement::store::EventKind;
use tenement_tests::{free_port, privileged};

/// Serves only the held socket: without one it exits, so an answer proves the socket
/// came from tenement. Answers with what it was given.
const APP: &str = r#"import http.server, json, os, socket, sys

if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("no socket passed: LISTEN_FDS=%r LISTEN_PID=%r pid=%d" % (
        os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID"), os.getpid()))
held = socket.socket(fileno=3)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({
            "pid": os.getpid(),
            "listen_pid": os.environ.get("LISTEN_PID"),
            "listen_fds": os.environ.get("LISTEN_FDS"),
            "names": os.environ.get("LISTEN_FDNAMES"),
            "port": held.getsockname()[1],
        }).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass

server = http.server.ThreadingHTTPServer(held.getsockname(), Handler, bind_and_activate=False)
server.socket.close()
server.socket = held
server.serve_forever()
"#;

/// One request on a fresh connection; the connection itself must not be refused.
fn request(port: u16, host: &str) -> (u16, serde_json::Value) {
    request_path(port, host, "/")
}

fn request_path(port: u16, host: &str, path: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|err| panic!("connecting to 127.0.0.1:{port}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    assert_eq!(status, 200, "{answer}");
    (status, json)
}

fn held_socket_wakes_and_is_passed(isolation: &str) {
    let proxy = free_port();
    let mut daemon = Daemon::new(
        &format!("socket-activation-{isolation}"),
        &format!("listen = \"127.0.0.1:{proxy}\"\ndomain = \"example.test\""),
    );
    let app = daemon.app("held.py", APP);
    daemon.configure(&format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nisolation = \"{isolation}\"\n\
         socket_activation = true\nidle_timeout = 2\n\n[instances]\napi = [\"alice\"]\n",
        app.display()
    ));
    daemon.start();

    // Started on the socket tenement holds for it.
    let (_, first) = request(proxy, "alice.api.example.test");
    assert_eq!(first["listen_fds"], "1", "{first}");
    assert_eq!(first["names"], "api", "{first}");
    assert_eq!(
        first["listen_pid"],
        first["pid"].to_string(),
        "LISTEN_PID is the app's own pid: {first}"
    );
    let port = first["port"].as_u64().unwrap() as u16;

    // Asleep: the port stays held by tenement.
    daemon.wait_events("api:alice", "an idle stop", |events| {
        events.iter().any(|e| e.kind == EventKind::IdleStopped)
    });
    eventually("the instance process to be gone", || {
        daemon.tenant_processes().is_empty().then_some(())
    });

    // A local client straight to the held port: not refused, answered by a new process.
    let (_, direct) = request(port, "127.0.0.1");
    assert_eq!(direct["port"].as_u64(), Some(u64::from(port)));
    let spawned = daemon
        .kinds("api:alice")
        .iter()
        .filter(|k| **k == EventKind::Spawned)
        .count();
    assert_eq!(spawned, 2, "{:?}", daemon.kinds("api:alice"));

    // Through the proxy again after the next sleep: same held port, a third process.
    daemon.wait_events("api:alice", "a second idle stop", |events| {
        events
            .iter()
            .filter(|e| e.kind == EventKind::IdleStopped)
            .count()
            >= 2
    });
    let (_, third) = request(proxy, "alice.api.example.test");
    assert_eq!(third["port"].as_u64(), Some(u64::from(port)));
    let spawned = daemon
        .kinds("api:alice")
        .iter()
        .filter(|k| **k == EventKind::Spawned)
        .count();
    assert_eq!(spawned, 3, "{:?}", daemon.kinds("api:alice"));
    daemon.stop();
}

#[test]
fn a_held_socket_wakes_and_is_passed_with_process_isolation() {
    if !privileged("a_held_socket_wakes_and_is_passed_with_process_isolation") {
        return;
    }
    held_socket_wakes_and_is_passed("process");
}

#[test]
fn a_held_socket_wakes_and_is_passed_with_namespace_isolation() {
    if !privileged("a_held_socket_wakes_and_is_passed_with_namespace_isolation") {
        return;
    }
    held_socket_wakes_and_is_passed("namespace");
}

#[test]
fn sandbox_with_socket_activation_is_refused_at_config_check() {
    let proxy = free_port();
    let daemon = Daemon::new(
        "socket-activation-sandbox",
        &format!("listen = \"127.0.0.1:{proxy}\""),
    );
    daemon.configure("[service.api]\ncommand = \"/bin/true\"\nisolation = \"sandbox\"\nsocket_activation = true\n");
    let out = std::process::Command::new(tenement_tests::tenement_bin())
        .arg("--config")
        .arg(&daemon.config)
        .args(["config", "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tenement.toml:") && stderr.contains("`socket_activation` in [service.api]: cannot be combined with isolation = \"sandbox\""),
        "{stderr}"
    );
}

/// The bundled examples take the held socket: the Node one (examples/held-node) and notes.
#[test]
fn the_examples_serve_the_held_socket() {
    if !privileged("the_examples_serve_the_held_socket") {
        return;
    }
    let proxy = free_port();
    let mut daemon = Daemon::new(
        "socket-activation-examples",
        &format!("listen = \"127.0.0.1:{proxy}\"\ndomain = \"example.test\""),
    );
    let root = tenement_tests::workspace_root().join("examples");
    let node = daemon.app(
        "app.js",
        &std::fs::read_to_string(root.join("held-node/app.js")).unwrap(),
    );
    let notes = daemon.app(
        "notes.py",
        &std::fs::read_to_string(root.join("notes/app.py")).unwrap(),
    );
    daemon.configure(&format!(
        "[service.hello]\ncommand = \"/usr/bin/node {}\"\nsocket_activation = true\n\n\
         [service.notes]\ncommand = \"/usr/bin/python3 {}\"\nsocket_activation = true\n\n\
         [instances]\nhello = [\"alice\"]\nnotes = [\"bob\"]\n",
        node.display(),
        notes.display()
    ));
    daemon.start();
    // PORT is tenement's held port: an app binding it itself would fail (EADDRINUSE), so
    // an answer means it took fd 3.
    let (_, hello) = request(proxy, "alice.hello.example.test");
    assert_eq!(hello["tenant"], "hello:alice", "{hello}");
    let (_, notes) = request_path(proxy, "bob.notes.example.test", "/notes");
    assert_eq!(notes["tenant"], "notes:bob", "{notes}");
    daemon.stop();
}
