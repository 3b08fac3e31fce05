//! What the idle tests share: a real `tenement serve` with short health-check intervals
//! (so its own probes are frequent), the instance's state as the API shows it, raw HTTP
//! and a hand-written WebSocket client through the daemon's proxy.

#![allow(dead_code)]

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::{
    api_support::{request, Target},
    supervisor_common::{Daemon, PATIENCE},
};
use tenement_tests::tenement_bin;

/// The idle timeout every test uses, in seconds.
pub const IDLE_TIMEOUT: u64 = 2;

/// The test app (`tests/apps/idle_app.py`), copied where tenants can read it.
pub const IDLE_APP: &str = include_str!("../../apps/idle_app.py");

/// A daemon whose proxy answers `*.localhost` and that probes instance health every second:
/// an idle rule that counted tenement's own probes would never let anything sleep.
pub fn daemon(label: &str) -> Daemon {
    Daemon::new(label, "domain = \"localhost\"\nhealth_check_interval = 1")
}

/// Service `api` running the idle app with `idle_timeout = IDLE_TIMEOUT` and `extra` lines,
/// and its instances `ids` (the proxy routes to known instances only).
pub fn configure_api(daemon: &Daemon, ids: &[&str], extra: &str) {
    let app = daemon.app("idle_app.py", IDLE_APP);
    daemon.configure(&format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\
         idle_timeout = {IDLE_TIMEOUT}\n{extra}\n\n[instances]\napi = {ids:?}\n",
        app.display()
    ));
}

/// The port of the daemon's proxy, from its configuration file.
pub fn proxy_port(daemon: &Daemon) -> u16 {
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    config
        .lines()
        .find_map(|line| line.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|rest| rest.trim_end_matches('"').parse().ok())
        .expect("a listen line in the test configuration")
}

/// Insists the daemon counts with eBPF: without it these tests would prove the fallback.
pub fn assert_kernel_counters_active(daemon: &Daemon) {
    assert!(
        daemon.log().contains("kernel counters: active"),
        "the kernel counters are off:\n{}",
        daemon.log()
    );
}

/// `GET /v1/instances/NAME` on the management socket: the instance as a user sees it.
pub fn view(daemon: &Daemon, name: &str) -> serde_json::Value {
    let socket = Target::Unix(daemon.data_dir.join("tenement.sock"));
    let (status, body) = request(&socket, "GET", &format!("/v1/instances/{name}"), None, "")
        .unwrap_or_else(|err| panic!("asking the API about {name}: {err}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub fn state(daemon: &Daemon, name: &str) -> String {
    view(daemon, name)["state"].as_str().unwrap().to_string()
}

pub fn pid(daemon: &Daemon, name: &str) -> Option<u32> {
    view(daemon, name)["pid"].as_u64().map(|pid| pid as u32)
}

/// Waits until `name` is in `state`, at most `within`; panics with the daemon log.
pub fn wait_state(daemon: &Daemon, name: &str, wanted: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = state(daemon, name);
        if now == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is still {now}, not {wanted}, after {within:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Watches `name` for `period` and insists it stays running with the same process.
pub fn assert_stays_running(daemon: &Daemon, name: &str, pid: u32, period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        let view = view(daemon, name);
        assert_eq!(
            (view["state"].as_str(), view["pid"].as_u64()),
            (Some("running"), Some(u64::from(pid))),
            "{name} did not stay running:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The tenement CLI on the daemon's socket; returns its standard output.
pub fn cli(daemon: &Daemon, args: &[&str]) -> String {
    let output = std::process::Command::new(tenement_bin())
        .arg("--server")
        .arg(format!(
            "unix:{}",
            daemon.data_dir.join("tenement.sock").display()
        ))
        .args(args)
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .output()
        .expect("running the tenement CLI");
    assert!(
        output.status.success(),
        "`tenement {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// An HTTP/1.1 connection to the proxy, kept alive between requests.
pub struct Http {
    stream: TcpStream,
    host: String,
}

impl Http {
    pub fn connect(port: u16, host: &str) -> Http {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Http {
            stream,
            host: host.to_string(),
        }
    }

    /// One request on this connection: (status, body). Bodies need a Content-Length (the
    /// apps here always send one).
    pub fn send(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        write!(
            self.stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("closed after {:?}", String::from_utf8_lossy(&head)),
                ));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One request on a fresh connection through the proxy.
pub fn http(port: u16, host: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    Http::connect(port, host)
        .send(method, path, body)
        .unwrap_or_else(|err| panic!("{method} {path} to {host}: {err}"))
}

/// A WebSocket client, handshake and frames by hand.
pub struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    /// Opens `GET /ws` on `host` through the proxy and completes the handshake.
    pub fn open(port: u16, host: &str) -> WebSocket {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
            stream,
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut byte).expect("the handshake answer");
            assert!(read > 0, "closed during the handshake: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        WebSocket { stream }
    }

    /// Sends a masked text frame and reads its echo.
    pub fn echo(&mut self, text: &str) -> String {
        assert!(text.len() < 126, "short messages only");
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).expect("an echo frame");
        let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
        self.stream.read_exact(&mut payload).unwrap();
        String::from_utf8(payload).unwrap()
    }

    /// Waits (up to `PATIENCE`) for the other side to close: true on a clean end of stream
    /// or a reset, false if the connection is still open then.
    pub fn closed(&mut self) -> bool {
        let mut buffer = [0u8; 64];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }
}
