//! `tenement serve` with TLS on, end to end: the real daemon gets certificates from a real
//! pebble for its tenants on demand, serves them over HTTP/2, answers HTTP-01 and redirects
//! everything else on its plain listener, and orders nothing for names that route nowhere.

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    process::Command,
};

use supervisor_common::{eventually, Daemon};
use tenement_tests::{
    pebble::{Pebble, PebbleOptions},
    privileged, tenement_bin,
    tls::https_get,
};

/// Answers every GET with the instance it is and the scheme the proxy says the client used.
const APP: &str = r#"import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        proto = self.headers.get("X-Forwarded-Proto", "none")
        body = f"{os.environ['TENEMENT_INSTANCE']} proto={proto}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// A plain HTTP/1.1 GET; returns the response head.
fn plain_get(port: u16, host: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(head, _)| head.to_string())
}

/// A GET on the management API's unix socket; returns the body.
fn unix_get(socket: &std::path::Path, path: &str) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[test]
fn serve_gets_certificates_for_its_tenants_from_pebble() {
    if !privileged("serve_gets_certificates_for_its_tenants_from_pebble") {
        return;
    }
    let pebble = Pebble::start(PebbleOptions::default());
    // Pebble validates HTTP-01 on its httpPort and TLS-ALPN-01 on its tlsPort: the daemon's
    // plain and TLS listeners sit exactly there.
    let mut daemon = Daemon::new(
        "tls-serve",
        &format!(
            "listen = \"127.0.0.1:{http}\"\ndomain = \"example.test\"\n\n\
             [settings.tls]\nenabled = true\nlisten = \"127.0.0.1:{tls}\"\n\
             acme_directory = {directory:?}\nacme_root = {root:?}\n\
             acme_email = \"ops@example.test\"",
            http = pebble.http_port,
            tls = pebble.tls_port,
            directory = pebble.directory_url,
            root = pebble.acme_root.display().to_string(),
        ),
    );
    let app = daemon.app("app.py", APP);
    daemon.configure(&format!(
        "[service.notes]\ncommand = \"/usr/bin/python3 {}\"\n\n\
         [instances]\nnotes = [\"alice\", \"bob\"]\n",
        app.display()
    ));
    daemon.start();
    let root = pebble.issuing_root();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let get = |host: &str| runtime.block_on(https_get(pebble.tls_port, host, &[&root]));

    let alice = eventually("alice answers over HTTPS", || {
        get("alice.notes.example.test")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(alice.alpn.as_deref(), Some("h2"), "HTTP/2 negotiated");
    assert_eq!(alice.version, http::Version::HTTP_2);
    assert_eq!(alice.body, "notes:alice proto=https", "{}", daemon.log());

    let bob = get("bob.notes.example.test").expect("bob over HTTPS");
    assert_eq!(bob.status, 200);
    assert_eq!(bob.body, "notes:bob proto=https");
    assert_ne!(bob.leaf, alice.leaf, "bob has a certificate of his own");
    // One order each for alice and bob, and one for the domain itself, which tenement keeps
    // certified from the start.
    eventually("the domain's own order", || {
        (pebble.orders_created() >= 3).then_some(())
    });
    assert_eq!(pebble.orders_created(), 3, "{}", pebble.log());

    // The plain listener sends users to HTTPS, keeping the path and query.
    let head = plain_get(pebble.http_port, "alice.notes.example.test", "/notes?x=1");
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://alice.notes.example.test:{}/notes?x=1",
            pebble.tls_port
        )),
        "{head}"
    );

    // Names that route nowhere get no certificate, and pebble never hears of them.
    for name in ["carol.notes.example.test", "mallory.elsewhere.org"] {
        let err = get(name).expect_err("no certificate for a name that routes nowhere");
        assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    }
    assert_eq!(pebble.orders_created(), 3, "{}", pebble.log());
    for name in ["carol", "mallory"] {
        assert!(!pebble.log().contains(name), "{}", pebble.log());
        assert!(!daemon.log().contains(&format!("certificate for {name}")));
    }

    // The operator sees the certificates: `tenement status` and an expiry gauge on /metrics.
    let socket = daemon.data_dir.join("tenement.sock");
    let status = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!("unix:{}", socket.display()))
        .arg("status")
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for name in [
        "example.test",
        "alice.notes.example.test",
        "bob.notes.example.test",
    ] {
        assert!(
            text.contains(&format!("{name} (acme), valid until ")),
            "{name} missing from `tenement status`:\n{text}"
        );
    }
    let metrics = unix_get(&socket, "/metrics");
    let gauge = "tenement_tls_certificate_expiry_timestamp_seconds";
    assert!(
        metrics.contains(&format!(
            "{gauge}{{name=\"alice.notes.example.test\",source=\"acme\"}}"
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tenement_tls_certificate_errors{"),
        "{metrics}"
    );
    daemon.stop();
}
