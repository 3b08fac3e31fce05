//! `/metrics` after real traffic: requests sent through the proxy to two instances show up
//! exactly in the request counters and histograms, the kernel's per-instance counters are
//! non-zero for both, and promtool accepts the whole exposition. Wakes are counted with
//! their outcome.

mod api_support;
mod proxy_support;

use std::time::Instant;

use api_support::{request, Daemon, PATIENCE};
use tenement_tests::{privileged, Scratch};

/// Answers `/status/NNN` with that status and a body, everything else with 200.
const APP: &str = r#"
import http.server, os, re
port = int(os.environ["PORT"])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        wanted = re.fullmatch(r"/status/(\d{3})", self.path)
        status = int(wanted.group(1)) if wanted else 200
        body = (f"{status} from {os.environ['TENANT']}\n" * 20).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// One GET through the proxy with `Host: {host}`; returns the status.
fn through_proxy(port: u16, host: &str, path: &str) -> u16 {
    match tenement_tests::http::get(port, host, path) {
        Ok((status, _)) if status != 0 => status,
        answer => panic!("no status from the proxy: {answer:?}"),
    }
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

fn scrape(daemon: &Daemon) -> String {
    let (status, text) = request(&daemon.unix(), "GET", "/metrics", None, "").unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

#[test]
fn metrics_count_proxy_requests_and_kernel_activity_per_instance() {
    if !privileged("metrics_count_proxy_requests_and_kernel_activity_per_instance") {
        return;
    }
    let scratch = Scratch::new("metrics");
    let app = scratch.write("app.py", APP);
    let services = format!(
        r#"
[service.api]
command = "/usr/bin/python3 {app}"
health = "/health"
startup_timeout = 20
env = {{ TENANT = "{{id}}" }}
"#,
        app = app.display()
    );
    let daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.ok(&["spawn", "api:alice"]);
    daemon.ok(&["spawn", "api:bob"]);

    // (instance, path, how many times, the status the app answers).
    let plan = [
        ("alice", "/", 5, 200),
        ("alice", "/status/404", 3, 404),
        ("alice", "/status/500", 2, 500),
        ("bob", "/", 4, 200),
        ("bob", "/status/503", 1, 503),
        ("bob", "/status/302", 2, 302),
    ];
    for (id, path, times, status) in plan {
        for _ in 0..times {
            let host = format!("{id}.api.localhost");
            assert_eq!(through_proxy(daemon.http_port, &host, path), status);
        }
    }
    // Routed nowhere: counted apart from the instances.
    assert_eq!(
        through_proxy(daemon.http_port, "nobody.else.localhost", "/"),
        404
    );

    let expected = [
        ("api:alice", "2xx", 5.0),
        ("api:alice", "4xx", 3.0),
        ("api:alice", "5xx", 2.0),
        ("api:alice", "3xx", 0.0),
        ("api:bob", "2xx", 4.0),
        ("api:bob", "5xx", 1.0),
        ("api:bob", "3xx", 2.0),
        ("api:bob", "4xx", 0.0),
    ];
    let requests = |text: &str, instance: &str, class: &str| {
        value(
            text,
            &format!(
                "tenement_proxy_requests_total{{instance=\"{instance}\",service=\"api\",code_class=\"{class}\"}}"
            ),
        )
    };
    // A response reaches the client a moment before the proxy closes its books on it.
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = scrape(&daemon);
        let settled = expected
            .iter()
            .all(|(instance, class, count)| requests(&text, instance, class) == Some(*count))
            && value(
                &text,
                "tenement_proxy_request_duration_seconds_count{service=\"api\"}",
            ) == Some(17.0);
        if settled {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the request counters never matched the requests sent:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };

    for (instance, class, count) in expected {
        assert_eq!(requests(&text, instance, class), Some(count), "{text}");
    }
    assert_eq!(
        value(
            &text,
            "tenement_proxy_unrouted_requests_total{code_class=\"4xx\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tenement_proxy_request_duration_seconds_bucket{service=\"api\",le=\"+Inf\"}"
        ),
        Some(17.0),
        "{text}"
    );
    let sum = value(
        &text,
        "tenement_proxy_request_duration_seconds_sum{service=\"api\"}",
    )
    .unwrap();
    assert!(sum > 0.0, "{text}");

    assert_eq!(
        value(&text, "tenement_kernel_counters_active"),
        Some(1.0),
        "kernel counters are off as root:\n{text}"
    );
    // Kernel totals come from the supervisor's once-a-second sample: wait for the one that
    // includes the traffic above.
    let kernel_counted = |text: &str| -> Result<(), String> {
        for instance in ["api:alice", "api:bob"] {
            let labels = format!("{{instance=\"{instance}\",service=\"api\"}}");
            for family in [
                "tenement_instance_rx_bytes_total",
                "tenement_instance_tx_bytes_total",
                "tenement_instance_rx_packets_total",
                "tenement_instance_tx_packets_total",
                "tenement_instance_cpu_seconds_total",
                "tenement_instance_memory_bytes",
            ] {
                let counted = value(text, &format!("{family}{labels}"));
                if !counted.is_some_and(|v| v > 0.0) {
                    return Err(format!("{family} of {instance} is {counted:?}"));
                }
            }
            let inbound = value(
                text,
                &format!(
                    "tenement_instance_connections_opened_total{{instance=\"{instance}\",service=\"api\",direction=\"inbound\"}}"
                ),
            );
            if !inbound.is_some_and(|v| v >= 5.0) {
                return Err(format!("inbound connections of {instance}: {inbound:?}"));
            }
        }
        Ok(())
    };
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = scrape(&daemon);
        match kernel_counted(&text) {
            Ok(()) => break text,
            Err(missing) => assert!(Instant::now() < deadline, "{missing}:\n{text}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };

    tenement_tests::http::assert_promtool_accepts(&text);
}

/// Requests that had to wait for their instance count as wakes, ready or failed, and still
/// count once each as requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_are_counted_with_their_outcome() {
    use proxy_support::{config, sleeping, Stack};
    use std::sync::atomic::Ordering::Relaxed;
    use tenement::proxy::WakeError;

    let stack = Stack::start(
        &config(""),
        &[sleeping("api:alice", 100), sleeping("api:broken", 100)],
    )
    .await;
    stack.backends.slot("api:broken", |slot| {
        slot.wake_error = Some(WakeError::Failed {
            state: "failed".into(),
            reason: "exited with status 3 five times".into(),
        });
    });
    assert_eq!(stack.get("alice.api.example.com", "/").await.status, 200);
    assert_eq!(stack.get("broken.api.example.com", "/").await.status, 503);

    let metrics = stack.proxy.request_metrics();
    let slot = |name: &str| {
        metrics
            .instances()
            .into_iter()
            .find(|(instance, _)| instance.to_string() == name)
            .map(|(_, slot)| slot)
            .unwrap_or_else(|| panic!("no request counters for {name}"))
    };
    let class = |name: &str, class: &str| {
        slot(name)
            .outcomes
            .read()
            .into_iter()
            .find(|(c, _)| *c == class)
            .map_or(0, |(_, count)| count)
    };
    // A response reaches the client a moment before the proxy closes its books on it.
    let deadline = Instant::now() + PATIENCE;
    while class("api:alice", "2xx") + class("api:broken", "5xx") < 2 {
        assert!(Instant::now() < deadline, "the requests were never counted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(class("api:alice", "2xx"), 1);
    assert_eq!(class("api:broken", "5xx"), 1);
    assert_eq!(slot("api:alice").wakes_ready.load(Relaxed), 1);
    assert_eq!(slot("api:alice").wakes_failed.load(Relaxed), 0);
    assert_eq!(slot("api:broken").wakes_ready.load(Relaxed), 0);
    assert_eq!(slot("api:broken").wakes_failed.load(Relaxed), 1);
    let (service, histograms) = &metrics.services()[0];
    assert_eq!(service, "api");
    assert_eq!(histograms.wake_duration.read().count, 2);
    assert_eq!(histograms.duration.read().count, 2);
}
