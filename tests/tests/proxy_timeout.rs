//! `request_timeout`: an instance that sends no response headers in time gets its client a
//! 504 with a short body, counted on `/metrics`; a response whose headers came in time
//! streams for as long as it takes, an upgraded connection stays open however quiet, and
//! `request_timeout = 0` waits forever.

mod api_support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use api_support::{request, Daemon, PATIENCE};
use tenement_tests::{http::assert_promtool_accepts, Scratch};

/// `/slow`: headers after 8 s. `/stream`: headers at once, then one chunk a second for 5 s.
/// `/tunnel`: 101, then echoes what it receives. `/health`: 200.
const APP: &str = r#"
import http.server, os, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(8)
            self.reply(b"finally\n")
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                time.sleep(1)
                chunk = f"part {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/tunnel":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(1024)
                if not data:
                    return
                self.connection.sendall(data)
        else:
            self.reply(b"ok\n")

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn services(app: &std::path::Path) -> String {
    format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {app}\"\nrequest_timeout = 2\n\n\
         [service.patient]\ncommand = \"/usr/bin/python3 {app}\"\nrequest_timeout = 0\n",
        app = app.display()
    )
}

/// A request through the proxy: the whole raw answer.
fn through_proxy(daemon: &Daemon, host: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.http_port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn status(answer: &str) -> Option<&str> {
    answer.split_whitespace().nth(1)
}

#[test]
fn a_silent_instance_gets_504_but_streams_and_tunnels_are_not_cut() {
    let scratch = Scratch::new("proxy-timeout");
    let app = scratch.write("app.py", APP);
    let mut daemon = Daemon::start_with(scratch, &services(&app), &[]);
    daemon.ok(&["spawn", "api:alice"]);
    daemon.ok(&["spawn", "patient:bob"]);

    let answer = through_proxy(&daemon, "alice.api.localhost", "/slow");
    assert_eq!(status(&answer), Some("504"), "{answer}");
    assert!(
        answer
            .ends_with("\r\n\r\ninstance api:alice sent no response within 2s (request_timeout)\n"),
        "{answer}"
    );
    // The instance itself is fine: the next request is answered.
    let answer = through_proxy(&daemon, "alice.api.localhost", "/");
    assert_eq!(status(&answer), Some("200"), "{answer}");

    // Headers in time, then a body that takes longer than request_timeout: all of it.
    let answer = through_proxy(&daemon, "alice.api.localhost", "/stream");
    assert_eq!(status(&answer), Some("200"), "{answer}");
    for part in 0..5 {
        assert!(answer.contains(&format!("part {part}\n")), "{answer}");
    }

    // An upgraded connection, quiet for longer than request_timeout, still carries data.
    let mut tunnel = TcpStream::connect(("127.0.0.1", daemon.http_port)).unwrap();
    tunnel.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        tunnel,
        "GET /tunnel HTTP/1.1\r\nHost: alice.api.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(tunnel.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    tunnel.write_all(b"still here\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "still here\n");
    drop(reader);
    drop(tunnel);

    // request_timeout = 0: no limit.
    let answer = through_proxy(&daemon, "bob.patient.localhost", "/slow");
    assert_eq!(status(&answer), Some("200"), "{answer}");
    assert!(answer.ends_with("finally\n"), "{answer}");

    let (code, metrics) = request(&daemon.unix(), "GET", "/metrics", None, "").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "tenement_proxy_request_timeouts_total{instance=\"api:alice\",service=\"api\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "tenement_proxy_request_timeouts_total{instance=\"patient:bob\",service=\"patient\"} 0\n"
        ),
        "{metrics}"
    );
    assert_promtool_accepts(&metrics);
    daemon.stop();
}

/// One answer read off a keep-alive connection: its status and body.
fn next_answer(reader: &mut BufReader<TcpStream>) -> (String, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let status = status(&status_line).unwrap_or_default().to_string();
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn the_limit_applies_to_every_request_of_a_keep_alive_connection() {
    let scratch = Scratch::new("proxy-timeout-keep-alive");
    let app = scratch.write("app.py", APP);
    let mut daemon = Daemon::start_with(scratch, &services(&app), &[]);
    daemon.ok(&["spawn", "api:alice"]);

    let stream = TcpStream::connect(("127.0.0.1", daemon.http_port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ask = |path: &str| {
        write!(
            &stream,
            "GET {path} HTTP/1.1\r\nHost: alice.api.localhost\r\n\r\n"
        )
        .unwrap();
        next_answer(&mut reader)
    };
    // Quick answers, a silent one, and again: each request gets the whole limit (the
    // instance's /slow takes 8 s; the limit is 2 s), after a quick request and after a
    // request that ran out of time alike.
    for _ in 0..2 {
        assert_eq!(ask("/"), ("200".to_string(), "ok\n".to_string()));
        let (status, body) = ask("/slow");
        assert_eq!(status, "504", "{body}");
        assert_eq!(
            body,
            "instance api:alice sent no response within 2s (request_timeout)\n"
        );
    }
    assert_eq!(ask("/"), ("200".to_string(), "ok\n".to_string()));
    daemon.stop();
}

#[test]
fn a_limit_too_long_to_count_to_is_no_limit() {
    let scratch = Scratch::new("proxy-timeout-huge");
    let app = scratch.write("app.py", APP);
    // The largest number TOML has: as seconds, past the end of the system's clock.
    let services = format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nrequest_timeout = {}\n",
        app.display(),
        i64::MAX
    );
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.ok(&["spawn", "api:alice"]);
    // Twice: right after `spawn` the first request can still take the path that waits for
    // an instance; the second is served on the proxy's direct path.
    for _ in 0..2 {
        let answer = through_proxy(&daemon, "alice.api.localhost", "/");
        assert_eq!(status(&answer), Some("200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    }
    daemon.stop();
}
