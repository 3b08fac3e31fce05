//! Without root, `tenement serve` still serves: the proxy answers, instances run without
//! cgroups, and every place that shows stats says that kernel counters are off and why (the
//! daemon log, `/v1/status`, `tenement status`, `/metrics`). `storage_quota_mb` cannot be a
//! file system of its own there: it is measured, and going over it is recorded and warned
//! about (the tenant's writes go on).
//!
//! The test itself needs root, to start the daemon as the unprivileged user `nobody`.

mod api_support;

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::PathBuf,
    process::{Child, Command},
};

use api_support::{request, Target, PATIENCE};
use tenement_tests::{
    daemon::{serve_command_of, spawn_logging, wait_for_daemon},
    free_port, privileged, tenement_bin, Scratch,
};

/// `nobody`/`nogroup` on Debian and Ubuntu (and the overflow ids everywhere else).
const NOBODY: u32 = 65534;

/// Writes 3 MB into its data directory at start: over its 1 MB quota.
const APP: &str = r#"
import http.server, os
port = int(os.environ["PORT"])
open(os.path.join(os.environ["DATA_DIR"], "blob"), "wb").write(b"x" * (3 << 20))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {os.environ['TENANT']} as uid {os.getuid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// `tenement serve` running as `nobody`, stopped (and waited for) when dropped.
struct UnprivilegedDaemon {
    /// Taken out only while [`UnprivilegedDaemon::wait_until`] waits on it.
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    http_port: u16,
    bin: PathBuf,
    // Last: removed after the daemon has stopped.
    _scratch: Scratch,
}

impl UnprivilegedDaemon {
    fn start() -> UnprivilegedDaemon {
        let scratch = Scratch::new("unprivileged");
        // The binary may sit where `nobody` cannot reach it (under /root): use a copy.
        let bin = scratch.join("tenement");
        std::fs::copy(tenement_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let app = scratch.write("app.py", APP);
        let data = scratch.join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
        let http_port = free_port();
        let base = tenement_tests::free_port_block(20);
        let config = scratch.write(
            "tenement.toml",
            &format!(
                r#"
[settings]
data_dir = "{data}"
listen = "127.0.0.1:{http_port}"
domain = "localhost"
port_range = [{base}, {high}]

[service.api]
command = "/usr/bin/python3 {app}"
startup_timeout = 30
storage_quota_mb = 1
env = {{ TENANT = "{{id}}" }}

[instances]
api = ["alice"]
"#,
                data = data.display(),
                high = base + 19,
                app = app.display(),
            ),
        );
        let log = scratch.join("daemon.log");
        let child = spawn_logging(
            serve_command_of(&bin, &config)
                // std drops the supplementary groups too when it switches from root.
                .uid(NOBODY)
                .gid(NOBODY)
                .env("HOME", &scratch.path)
                .current_dir(&scratch.path),
            &log,
        );
        let mut daemon = UnprivilegedDaemon {
            child: Some(child),
            socket: data.join("tenement.sock"),
            log,
            http_port,
            bin,
            _scratch: scratch,
        };
        daemon.wait_until("the management API answers /health", |daemon| {
            request(&daemon.api(), "GET", "/health", None, "")
                .is_ok_and(|(status, _)| status == 200)
        });
        daemon
    }

    fn api(&self) -> Target {
        Target::Unix(self.socket.clone())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until(&mut self, what: &str, mut condition: impl FnMut(&Self) -> bool) {
        let mut child = self.child.take().expect("the daemon is running");
        let this = &*self;
        wait_for_daemon(&mut child, &this.log, what, PATIENCE, || condition(this));
        self.child = Some(child);
    }
}

impl Drop for UnprivilegedDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
        if let Some(child) = self.child.as_mut() {
            tenement_tests::terminate_or_kill(child, PATIENCE);
        }
    }
}

/// One GET through the proxy; returns the status and the body.
fn through_proxy(port: u16, host: &str) -> std::io::Result<(u16, String)> {
    tenement_tests::http::get(port, host, "/")
}

#[test]
fn serves_without_root_and_says_kernel_counters_are_off() {
    if !privileged("serves_without_root_and_says_kernel_counters_are_off") {
        return;
    }
    let mut daemon = UnprivilegedDaemon::start();

    // The instance started at boot answers through the proxy, running as nobody too.
    daemon.wait_until("api:alice answers through the proxy", |daemon| {
        through_proxy(daemon.http_port, "alice.api.localhost")
            .is_ok_and(|(status, _)| status == 200)
    });
    let (_, body) = through_proxy(daemon.http_port, "alice.api.localhost").unwrap();
    assert_eq!(body, format!("hello from alice as uid {NOBODY}\n"));

    // Over its quota (measured at start, then every 30 s): an event and a warning in its
    // log, and it keeps running.
    let events_of_alice = |daemon: &UnprivilegedDaemon| {
        let (status, body) = request(
            &daemon.api(),
            "GET",
            "/v1/instances/api:alice/events",
            None,
            "",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
    };
    daemon.wait_until("a quota-exceeded event", |daemon| {
        events_of_alice(daemon)
            .iter()
            .any(|event| event["kind"] == "quota-exceeded")
    });
    let over = events_of_alice(&daemon)
        .into_iter()
        .find(|event| event["kind"] == "quota-exceeded")
        .unwrap();
    let detail = over["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("MB, over storage_quota_mb = 1"), "{over}");
    let (_, logs) = request(
        &daemon.api(),
        "GET",
        "/v1/instances/api:alice/logs?stream=system",
        None,
        "",
    )
    .unwrap();
    assert!(
        logs.contains("warning: data directory uses") && logs.contains("over storage_quota_mb = 1"),
        "{logs}"
    );
    let (status, _) = through_proxy(daemon.http_port, "alice.api.localhost").unwrap();
    assert_eq!(status, 200);

    // /v1/status: off, with a reason a person can act on.
    let (status, body) = request(&daemon.api(), "GET", "/v1/status", None, "").unwrap();
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["kernel_counters"]["active"], false, "{view}");
    let reason = view["kernel_counters"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("not running as root") && reason.contains("CAP_BPF"),
        "{reason}"
    );

    // The daemon log says so at start.
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|line| line.contains("kernel counters: off") && line.contains("CAP_BPF")),
        "{log}"
    );
    // ... and that tenants are not network-isolated.
    assert!(
        log.lines()
            .any(|line| line.contains("network isolation off: tenants are NOT network-isolated")),
        "{log}"
    );

    // `tenement status` shows it.
    let output = Command::new(&daemon.bin)
        .arg("--server")
        .arg(format!("unix:{}", daemon.socket.display()))
        .arg("status")
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        shown
            .lines()
            .any(|line| line.starts_with("kernel counters: off: not running as root")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|line| line.starts_with("network:         OFF, tenants are not network-isolated")),
        "{shown}"
    );

    // /metrics: the gauge is 0, no kernel series, but the proxy's counters carry on.
    let (status, text) = request(&daemon.api(), "GET", "/metrics", None, "").unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.lines()
            .any(|l| l == "tenement_kernel_counters_active 0"),
        "{text}"
    );
    assert!(
        !text.contains("tenement_instance_rx_bytes_total{"),
        "kernel series without kernel counters:\n{text}"
    );
    let served = text.lines().find_map(|line| {
        line.strip_prefix(
            "tenement_proxy_requests_total{instance=\"api:alice\",service=\"api\",code_class=\"2xx\"} ",
        )
    });
    assert!(
        served
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 2),
        "{text}"
    );
}
