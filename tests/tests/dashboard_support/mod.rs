//! Shared by the `dashboard_*` tests: raw HTTP/1.1 to the dashboard with headers (cookies,
//! CSRF), signing in as a browser does, reading server-sent events.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The value a `Set-Cookie` header gives cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().iter().find_map(|cookie| {
            let (pair, _) = cookie.split_once(';').unwrap_or((cookie, ""));
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.to_string())
        })
    }
}

/// One request to 127.0.0.1:`port`, `Connection: close`.
pub fn fetch(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the dashboard");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(key, _)| key.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (key, value) in headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(key, value)| {
        key.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the hidden `csrf` field in a page.
pub fn csrf_field(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a csrf field") + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// Signs in with `token` as a browser does; returns the session cookie (`name=value`) and the
/// session's CSRF token.
pub fn sign_in(port: u16, token: &str) -> (String, String) {
    let page = fetch(port, "GET", "/dashboard/sign-in", &[], "");
    assert_eq!(page.status, 200, "{}", page.body);
    let pre = page.cookie("tenement_sign_in").expect("a sign-in cookie");
    let csrf = csrf_field(&page.body);
    let answer = fetch(
        port,
        "POST",
        "/dashboard/sign-in",
        &[("Cookie", &format!("tenement_sign_in={pre}"))],
        &format!("csrf={csrf}&token={token}"),
    );
    assert_eq!(answer.status, 303, "{}", answer.body);
    let session = answer.cookie("tenement_session").expect("a session cookie");
    let cookie = format!("tenement_session={session}");
    let overview = fetch(port, "GET", "/dashboard", &[("Cookie", &cookie)], "");
    assert_eq!(overview.status, 200, "{}", overview.body);
    (cookie, csrf_field(&overview.body))
}

/// Reads a server-sent-events stream until `enough` says so (or `patience` runs out);
/// returns every `(event, data)` read.
pub fn events(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    patience: Duration,
    mut enough: impl FnMut(&[(String, String)]) -> bool,
) -> (Answer, Vec<(String, String)>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut head =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
    for (key, value) in headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut head_lines = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        head_lines.push(line.trim().to_string());
    }
    let answer = parse(format!("{}\r\n\r\n", head_lines.join("\r\n")).as_bytes());
    let mut events = Vec::new();
    let deadline = Instant::now() + patience;
    let (mut event, mut data) = (String::new(), String::new());
    let mut pending = String::new();
    while Instant::now() < deadline && !enough(&events) {
        let mut chunk = String::new();
        match reader.read_line(&mut chunk) {
            Ok(0) => break,
            Ok(_) => pending.push_str(&chunk),
            Err(_) => continue,
        }
        if !pending.ends_with('\n') {
            continue;
        }
        let line = std::mem::take(&mut pending);
        let line = line.trim_end_matches(['\r', '\n']);
        // Chunk-size lines of the chunked encoding are hex numbers alone on a line.
        if !line.is_empty() && line.chars().all(|c| c.is_ascii_hexdigit()) && !line.contains(':') {
            continue;
        }
        if let Some(value) = line.strip_prefix("event: ") {
            event = value.to_string();
        } else if let Some(value) = line.strip_prefix("data: ") {
            data = value.to_string();
        } else if line.is_empty() && !data.is_empty() {
            events.push((std::mem::take(&mut event), std::mem::take(&mut data)));
        }
    }
    (answer, events)
}

/// `tenement dashboard` against a daemon's unix socket: its link and its local port.
pub struct Forwarder {
    child: std::process::Child,
    pub link: String,
    pub port: u16,
}

impl Forwarder {
    pub fn start(daemon: &super::api_support::Daemon) -> Forwarder {
        let mut child = std::process::Command::new(tenement_tests::tenement_bin())
            .arg("--server")
            .arg(format!("unix:{}", daemon.socket.display()))
            .arg("dashboard")
            .env_remove("TENEMENT_TOKEN")
            .env_remove("TENEMENT_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting tenement dashboard");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut link = String::new();
        stdout.read_line(&mut link).unwrap();
        let link = link.trim().to_string();
        assert!(link.starts_with("http://127.0.0.1:"), "{link:?}");
        let port = link["http://127.0.0.1:".len()..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Forwarder { child, link, port }
    }

    pub fn stop(&mut self) {
        let status = tenement_tests::terminate(&mut self.child, Duration::from_secs(30))
            .expect("tenement dashboard stops on SIGTERM");
        assert!(status.success(), "{status}");
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        tenement_tests::terminate_or_kill(&mut self.child, Duration::from_secs(10));
    }
}
