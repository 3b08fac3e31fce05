//! `listen = "unix"`: instances serve on a unix socket in their own data directory
//! (`SOCKET_PATH`), with no port at all; the proxy, readiness and health checks connect
//! there, at `process` and `namespace` isolation; idle stop and wake work the same.

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::{MetadataExt, PermissionsExt},
    process::Command,
    time::Duration,
};

use supervisor_common::{eventually, Daemon};
use tenement::store::EventKind;
use tenement_tests::{free_port, privileged, tenement_bin};

/// An HTTP server on `$SOCKET_PATH`: `/` reports who it is, `/health` is 200, `/stream`
/// sends three chunks, `GET /echo` with `Upgrade: echo` switches to echoing lines, and
/// `/plant` replaces the socket with a symlink to web:bob's.
const UNIX_APP: &str = r#"import http.server, json, os, socketserver, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/":
            self.answer(200, {"instance": os.environ["TENEMENT_INSTANCE"], "uid": os.getuid(),
                              "socket": os.environ.get("SOCKET_PATH"),
                              "port": os.environ.get("PORT")})
        elif self.path == "/health":
            self.answer(200, "ok")
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(3):
                part = ("part %d\n" % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/plant":
            # Hostile: swap the own socket for a link to the neighbour's (web:bob's).
            mine = os.environ["SOCKET_PATH"]
            bob = os.path.join(os.path.dirname(os.path.dirname(mine)), "bob", "app.sock")
            os.unlink(mine)
            os.symlink(bob, mine)
            self.close_connection = True
            data = b"planted"
            self.send_response(200)
            self.send_header("connection", "close")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/echo" and self.headers.get("upgrade") == "echo":
            self.send_response(101)
            self.send_header("upgrade", "echo")
            self.send_header("connection", "upgrade")
            self.end_headers()
            self.wfile.flush()
            for line in self.rfile:
                self.wfile.write(b"echo " + line)
                self.wfile.flush()
            self.close_connection = True
        else:
            self.answer(404, "not found")

    def address_string(self):
        return "unix"

    def log_message(self, format, *args):
        pass

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

print("serving on", os.environ["SOCKET_PATH"], flush=True)
Server(os.environ["SOCKET_PATH"], Handler).serve_forever()
"#;

/// One request through the proxy: (status, head, body).
fn through_proxy(port: u16, host: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn report(port: u16, host: &str) -> serde_json::Value {
    let (status, _, body) = through_proxy(port, host, "/");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn daemon(label: &str) -> (Daemon, u16) {
    let http = free_port();
    let mut daemon = Daemon::new(
        label,
        &format!("listen = \"127.0.0.1:{http}\"\nhealth_check_interval = 1"),
    );
    let app = daemon.app("unix_app.py", UNIX_APP);
    daemon.configure(&format!(
        r#"
[service.web]
command = "/usr/bin/python3 {app}"
listen = "unix"
health = "/health"
idle_timeout = 3

[service.ns]
command = "/usr/bin/python3 {app}"
listen = "unix"
isolation = "namespace"

[instances]
web = ["alice", "bob"]
ns = ["carol"]
"#,
        app = app.display()
    ));
    daemon.start();
    (daemon, http)
}

#[test]
fn instances_serve_on_their_own_socket_through_the_proxy() {
    if !privileged("instances_serve_on_their_own_socket_through_the_proxy") {
        return;
    }
    let (daemon, http) = daemon("unix-serve");
    for name in ["web:alice", "web:bob", "ns:carol"] {
        daemon.wait_events(name, "ready", |events| {
            events
                .iter()
                .any(|e| e.kind == EventKind::Ready && e.detail.contains("on socket "))
        });
    }
    let alice = report(http, "alice.web.localhost");
    let bob = report(http, "bob.web.localhost");
    let carol = report(http, "carol.ns.localhost");
    assert_eq!(alice["instance"], "web:alice");
    assert_eq!(bob["instance"], "web:bob");
    assert_eq!(carol["instance"], "ns:carol");
    let alice_socket = daemon.data_dir.join("web/alice/app.sock");
    assert_eq!(alice["socket"], alice_socket.display().to_string());
    assert!(
        alice["port"].is_null(),
        "no PORT with listen = unix: {alice}"
    );

    // Each socket is in its tenant's own 0700 directory, owned by its uid; two tenants
    // have two uids, so neither can reach the other's socket.
    let alice_uid = alice["uid"].as_u64().unwrap() as u32;
    let bob_uid = bob["uid"].as_u64().unwrap() as u32;
    assert_ne!(alice_uid, bob_uid);
    let dir = std::fs::metadata(daemon.data_dir.join("web/alice")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    assert_eq!(dir.uid(), alice_uid);
    assert_eq!(std::fs::metadata(&alice_socket).unwrap().uid(), alice_uid);
    use std::os::unix::process::CommandExt;
    let reach = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
        ])
        .arg(&alice_socket)
        .uid(bob_uid)
        .gid(bob_uid)
        .output()
        .unwrap();
    assert!(!reach.status.success());
    assert!(
        String::from_utf8_lossy(&reach.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&reach.stderr)
    );

    // Streaming, and a switch of protocols spliced over the socket.
    let (status, head, body) = through_proxy(http, "alice.web.localhost", "/stream");
    assert_eq!(status, 200, "{head}");
    for i in 0..3 {
        assert!(body.contains(&format!("part {i}")), "{body}");
    }
    let mut tunnel = TcpStream::connect(("127.0.0.1", http)).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        tunnel,
        "GET /echo HTTP/1.1\r\nHost: alice.web.localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        tunnel.read_exact(&mut byte).unwrap();
        seen.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&seen);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tunnel.write_all(b"hello over a socket\n").unwrap();
    let mut echoed = [0u8; 25];
    tunnel.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"echo hello over a socket\n");
    drop(tunnel);

    // ps shows the socket instead of a port.
    let ps = Command::new(tenement_bin())
        .arg("--config")
        .arg(&daemon.config)
        .args(["ps", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ps.stdout);
    let views: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
    let view = views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web:alice")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(view["socket"], alice_socket.display().to_string());
    assert!(view["port"].is_null(), "{view}");
}

#[test]
fn an_idle_socket_instance_sleeps_and_wakes() {
    if !privileged("an_idle_socket_instance_sleeps_and_wakes") {
        return;
    }
    let (daemon, http) = daemon("unix-idle");
    daemon.wait_events("web:alice", "ready", |events| {
        events.iter().any(|e| e.kind == EventKind::Ready)
    });
    assert_eq!(report(http, "alice.web.localhost")["instance"], "web:alice");
    daemon.wait_events("web:alice", "idle stop", |events| {
        events.iter().any(|e| e.kind == EventKind::IdleStopped)
    });
    let socket = daemon.data_dir.join("web/alice/app.sock");
    // Woken by a request: the socket left by the last run is replaced by a new one.
    let (status, _, body) = through_proxy(http, "alice.web.localhost", "/");
    assert_eq!(status, 200, "{body}");
    let woken: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(woken["instance"], "web:alice");
    let events = daemon.events("web:alice");
    let readies = events.iter().filter(|e| e.kind == EventKind::Ready).count();
    assert_eq!(readies, 2, "{events:?}");
    eventually("the new socket", || socket.exists().then_some(()));
}

#[test]
fn a_socket_swapped_for_a_symlink_is_not_followed() {
    if !privileged("a_socket_swapped_for_a_symlink_is_not_followed") {
        return;
    }
    let (daemon, http) = daemon("unix-symlink");
    for name in ["web:alice", "web:bob"] {
        daemon.wait_events(name, "ready", |events| {
            events.iter().any(|e| e.kind == EventKind::Ready)
        });
    }
    let (status, _, body) = through_proxy(http, "alice.web.localhost", "/plant");
    assert_eq!((status, body.as_str()), (200, "planted"));
    let socket = daemon.data_dir.join("web/alice/app.sock");
    assert!(std::fs::symlink_metadata(&socket)
        .unwrap()
        .file_type()
        .is_symlink());
    // A new connection to alice's path finds a link to bob's socket: refused, never bob.
    let (status, _, body) = through_proxy(http, "alice.web.localhost", "/");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("is not a socket of uid"), "{body}");
    assert!(!body.contains("web:bob"), "{body}");
    assert_eq!(report(http, "bob.web.localhost")["instance"], "web:bob");
}
