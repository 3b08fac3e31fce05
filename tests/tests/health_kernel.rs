//! Health from the kernel's TCP counters: an instance whose sockets are reset in bulk (it
//! connects, in a loop, to a local port nobody listens on, and the kernel answers each SYN
//! with a RST) turns `degraded` with a reason naming the counter and its rate, shows it in
//! `tenement ps` and the API, and is `running` again once the storm is over.

mod api_support;

use api_support::{get_instance, Daemon};
use tenement_tests::{privileged, Scratch};

/// A tenant that starts a reset storm on `GET /storm` and ends it on `GET /calm`. The
/// refused port stays bound (never listening), so no other process can take it meanwhile.
const STORM_APP: &str = r#"
import http.server, os, socket, threading, time
port = int(os.environ["PORT"])
closed = socket.socket()
closed.bind(("127.0.0.1", 0))
target = closed.getsockname()
storming = threading.Event()

def storm():
    while True:
        storming.wait()
        s = socket.socket()
        try:
            s.connect(target)
        except ConnectionRefusedError:
            pass
        finally:
            s.close()
        time.sleep(0.002)

threading.Thread(target=storm, daemon=True).start()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/storm":
            storming.set()
        elif self.path == "/calm":
            storming.clear()
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

#[test]
fn a_reset_storm_degrades_until_it_passes() {
    if !privileged("a_reset_storm_degrades_until_it_passes") {
        return;
    }
    let scratch = Scratch::new("health-kernel");
    let app = scratch.write("storm.py", STORM_APP);
    let services = format!(
        r#"
[service.api]
command = "/usr/bin/python3 {app}"
health = "/health"
startup_timeout = 20
"#,
        app = app.display()
    );
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.ok(&["spawn", "api:alice"]);
    let status: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "--json"])).unwrap();
    assert_eq!(
        status["kernel_counters"]["active"], true,
        "kernel health needs the kernel counters: {status}"
    );
    let port = daemon.instance("api:alice").unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "running");

    assert_eq!(get_instance(port, "/storm").unwrap().0, 200);
    daemon.wait_until("api:alice degraded by the reset storm", |daemon| {
        let view = daemon.instance("api:alice").unwrap();
        view["state"] == "degraded"
            && view["last_error"].as_str().is_some_and(|reason| {
                reason.starts_with("kernel: ") && reason.contains("TCP resets/s")
            })
    });
    let view = daemon.instance("api:alice").unwrap();
    assert_eq!(view["health"], "degraded", "{view}");
    // The resets are real kernel counts, in the same stats every reader gets.
    let received = view["stats"]["totals"]["resets_received"].as_u64().unwrap();
    assert!(received > 50, "{view}");

    // `tenement ps` says why.
    let ps = daemon.ok(&["ps"]);
    let row = ps
        .lines()
        .find(|line| line.starts_with("api:alice"))
        .unwrap_or_else(|| panic!("api:alice missing from ps:\n{ps}"));
    assert!(row.contains("degraded"), "{ps}");
    assert!(
        row.contains("kernel: ") && row.contains("TCP resets/s"),
        "{ps}"
    );
    // And its history keeps it.
    let events = daemon.ok(&["events", "api:alice"]);
    assert!(
        events
            .lines()
            .any(|line| line.contains("degraded") && line.contains("TCP resets/s")),
        "{events}"
    );

    assert_eq!(get_instance(port, "/calm").unwrap().0, 200);
    daemon.wait_until("api:alice running again after the storm", |daemon| {
        let view = daemon.instance("api:alice").unwrap();
        view["state"] == "running" && view["last_error"].is_null()
    });
    daemon.stop();
}
