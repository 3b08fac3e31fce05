//! `tenement logs SERVICE`: every instance of a service, interleaved by time and tagged with
//! the instance, with `--stream` and `--level` filters; the same through the API.

mod api_support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use api_support::{request, stderr, stdout, Daemon};
use tenement_tests::{tenement_bin, Scratch};

/// Says who it is at four levels, on both streams, then serves.
const APP: &str = r#"
import http.server, os, sys
port = int(os.environ["PORT"])
tenant = os.environ["TENANT"]
print(f"INFO {tenant} started", flush=True)
print(f"debug {tenant} details", flush=True)
print(f"[warning] {tenant} is slow", file=sys.stderr, flush=True)
print(f"ERROR {tenant} broke something", file=sys.stderr, flush=True)
print(f"{tenant} ready", flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

fn services(app: &std::path::Path) -> String {
    format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nenv = {{ TENANT = \"{{id}}\" }}\n\n\
         [service.other]\ncommand = \"/usr/bin/python3 {}\"\nenv = {{ TENANT = \"{{id}}\" }}\n",
        app.display(),
        app.display()
    )
}

/// The lines of `tenement logs ARGS` as (instance, stream, text), checking each is
/// `TIME INSTANCE STREAM TEXT` and that times never go back.
fn tagged_lines(daemon: &Daemon, args: &[&str]) -> Vec<(String, String, String)> {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = daemon.ok(&all);
    let mut previous = String::new();
    out.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next().unwrap().to_string();
            let instance = parts.next().unwrap().to_string();
            let rest = line[time.len() + instance.len() + 2..].to_string();
            let (stream, text) = rest.split_once(' ').unwrap();
            assert!(time >= previous, "out of order:\n{out}");
            previous = time;
            (instance, stream.to_string(), text.trim_start().to_string())
        })
        .collect()
}

#[test]
fn a_service_log_interleaves_its_instances_and_filters() {
    let scratch = Scratch::new("logs-service");
    let app = scratch.write("app.py", APP);
    let mut daemon = Daemon::start_with(scratch, &services(&app), &[]);
    for name in ["api:alice", "api:bob", "other:carol"] {
        daemon.ok(&["spawn", name]);
    }
    daemon.wait_until("both api instances ready in their logs", |daemon| {
        let out = daemon.ok(&["logs", "api"]);
        out.contains("alice ready") && out.contains("bob ready")
    });

    let lines = tagged_lines(&daemon, &["api", "--stream", "stdout"]);
    for who in ["alice", "bob"] {
        for text in [
            format!("INFO {who} started"),
            format!("debug {who} details"),
            format!("{who} ready"),
        ] {
            assert!(
                lines.contains(&(format!("api:{who}"), "stdout".into(), text.clone())),
                "{text} missing: {lines:?}"
            );
        }
    }
    assert!(lines
        .iter()
        .all(|(instance, stream, _)| { instance.starts_with("api:") && stream == "stdout" }));

    let errors = tagged_lines(&daemon, &["api", "--stream", "stderr"]);
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors.iter().all(|(_, stream, _)| stream == "stderr"));

    // --level warn: the lines whose first level word is warn or error.
    let mut warned: Vec<String> = tagged_lines(&daemon, &["api", "--level", "warn"])
        .into_iter()
        .map(|(instance, _, text)| format!("{instance} {text}"))
        .collect();
    warned.sort();
    assert_eq!(
        warned,
        [
            "api:alice ERROR alice broke something",
            "api:alice [warning] alice is slow",
            "api:bob ERROR bob broke something",
            "api:bob [warning] bob is slow",
        ]
    );

    // One instance: the same filters, lines untagged as before.
    let alice = daemon.ok(&["logs", "api:alice", "--level", "error"]);
    assert_eq!(alice.lines().count(), 1, "{alice}");
    assert!(
        alice.contains(" stderr ERROR alice broke something"),
        "{alice}"
    );

    // Through the API.
    let (status, body) = request(
        &daemon.unix(),
        "GET",
        "/v1/services/api/logs?level=error&n=10",
        None,
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let lines: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let mut found: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["instance"].as_str().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("api:alice", "ERROR alice broke something"),
            ("api:bob", "ERROR bob broke something")
        ]
    );
    let (status, body) = request(
        &daemon.unix(),
        "GET",
        "/v1/services/api/logs?level=loud",
        None,
        "",
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(
        body.contains("level=\\\"loud\\\": expected one of debug, info, warn, error"),
        "{body}"
    );
    let (status, body) = request(
        &daemon.unix(),
        "GET",
        "/v1/services/api/logs?stream=err",
        None,
        "",
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("expected stdout, stderr or system"), "{body}");
    let (status, body) =
        request(&daemon.unix(), "GET", "/v1/services/nosuch/logs", None, "").unwrap();
    assert_eq!(status, 404, "{body}");

    // The CLI refuses what is neither a service nor an instance name.
    let out = daemon.cli(&["logs", "Not_A_Service"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("may contain only a-z, 0-9 and '-'"),
        "{}",
        stderr(&out)
    );
    let out = daemon.cli(&["logs", "api", "--level", "loud"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));

    daemon.stop();
}

#[test]
fn following_a_service_shows_instances_started_later() {
    let scratch = Scratch::new("logs-service-follow");
    let app = scratch.write("app.py", APP);
    let mut daemon = Daemon::start_with(scratch, &services(&app), &[]);
    daemon.ok(&["spawn", "api:alice"]);
    daemon.wait_until("alice ready", |daemon| {
        daemon.ok(&["logs", "api:alice"]).contains("alice ready")
    });
    let mut follow = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!("unix:{}", daemon.socket.display()))
        .args(["logs", "api", "-f", "--stream", "stderr", "-n", "10"])
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = BufReader::new(follow.stdout.take().unwrap());
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |text: &str, seen: &mut Vec<String>| {
        while !seen.iter().any(|l: &String| l.contains(text)) {
            let line = received
                .recv_timeout(api_support::PATIENCE)
                .unwrap_or_else(|_| panic!("no {text:?}; saw {seen:?}"));
            seen.push(line);
        }
    };
    // The history comes after the subscription: once alice's lines are here, the follower
    // is listening.
    wait_for("ERROR alice broke", &mut seen);
    daemon.ok(&["spawn", "other:carol"]);
    daemon.ok(&["spawn", "api:bob"]);
    wait_for("ERROR bob broke", &mut seen);
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.iter()
            .all(|l| l.contains(" api:alice stderr ") || l.contains(" api:bob stderr ")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("[warning] bob is slow")),
        "{seen:?}"
    );
    daemon.stop();
}
