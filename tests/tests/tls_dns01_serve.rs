//! `tenement serve` with `wildcard = true` and the built-in DNS-01 responder, end to end:
//! the real daemon answers pebble's DNS queries itself, gets one `*.notes.example.test`
//! certificate, and serves it to every tenant over HTTP/2 and HTTP/1.1.

mod supervisor_common;

use std::{net::SocketAddr, process::Command};

use supervisor_common::{eventually, Daemon};
use tenement_tests::{
    bind, free_port,
    pebble::{Pebble, PebbleOptions},
    privileged, tenement_bin,
    tls::https_get_offering,
};

const APP: &str = r#"import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ['TENEMENT_INSTANCE'].encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[test]
fn serve_answers_dns01_itself_and_serves_one_wildcard_to_every_tenant() {
    if !privileged("serve_answers_dns01_itself_and_serves_one_wildcard_to_every_tenant") {
        return;
    }
    let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pebble = Pebble::start(PebbleOptions {
        dns_server: Some(dns),
        ..Default::default()
    });
    let mut daemon = Daemon::new(
        "tls-dns01-serve",
        &format!(
            "listen = \"127.0.0.1:{http}\"\ndomain = \"example.test\"\n\n\
             [settings.tls]\nenabled = true\nlisten = \"127.0.0.1:{tls}\"\n\
             acme_directory = {directory:?}\nacme_root = {root:?}\n\
             challenges = [\"dns-01\"]\nwildcard = true\ndns_listen = \"{dns}\"",
            http = free_port(),
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
    let get = |host: &str, alpn: &str| {
        runtime.block_on(https_get_offering(pebble.tls_port, host, &[&root], &[alpn]))
    };

    let alice = eventually("alice answers over HTTPS", || {
        get("alice.notes.example.test", "h2")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(alice.body, "notes:alice", "{}", daemon.log());
    assert_eq!(alice.alpn.as_deref(), Some("h2"));
    assert_eq!(alice.version, http::Version::HTTP_2);
    let bob = get("bob.notes.example.test", "http/1.1").expect("bob over HTTP/1.1");
    assert_eq!((bob.status.as_u16(), bob.body.as_str()), (200, "notes:bob"));
    assert_eq!(bob.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(bob.leaf, alice.leaf, "one certificate for every tenant");

    // The domain's own certificate and the wildcard: two orders, none per tenant.
    eventually("the domain's own order", || {
        (pebble.orders_created() >= 2).then_some(())
    });
    assert_eq!(pebble.orders_created(), 2, "{}", pebble.log());

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
    assert!(text.contains("*.notes.example.test"), "{text}");

    // The responder holds nothing once the orders are over, and refuses strangers.
    let challenge = bind::dig_full(dns, &["TXT", "_acme-challenge.notes.example.test"]);
    assert!(challenge.contains("status: REFUSED"), "{challenge}");
    let recursion = bind::dig_full(dns, &["+rec", "A", "example.com"]);
    assert!(recursion.contains("status: REFUSED"), "{recursion}");
    assert!(daemon.log().contains("DNS-01 responder listening on"));
    daemon.stop();
}
