//! Plain `GET` and `HEAD` requests are served by the proxy's own HTTP/1.1 path, everything
//! else by hyper, on the same connection when a client mixes them. What a client and an
//! instance see must not tell the two apart: hop-by-hop headers stay behind in any case,
//! spoofed `X-Forwarded-*` are replaced, pipelined requests are answered in order, chunked
//! and length-framed answers arrive whole, `HEAD` gets no body, `Connection: close` ends the
//! connection, and a client that hangs up cancels its request at the instance.

mod api_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use api_support::Daemon;
use tenement_tests::http::get;

/// `/echo` answers with the request head it received (length-framed); `/chunked` answers
/// `hello world` in two chunks; `/slow` waits up to 10 s for the client's next byte and
/// counts the requests whose connection the proxy closed meanwhile; `/cancelled` tells
/// that count. Requests with a body get their body echoed.
const HANDLER: &str = r#"
cancelled = 0

def respond(conn, body, extra=b"", head_only=False):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra)
    conn.sendall(head if head_only else head + body)

def handle(conn, method, path, head, body):
    global cancelled
    if path == "/chunked":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
    elif path == "/slow":
        conn.settimeout(10)
        try:
            gone = conn.recv(1) == b""
        except socket.timeout:
            gone = False
        if gone:
            cancelled += 1
            return False
        respond(conn, b"slow")
    elif path == "/cancelled":
        respond(conn, str(cancelled).encode())
    elif body:
        respond(conn, body)
    else:
        extra = b"X-Hop: kept\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n"
        respond(conn, head + b"\r\n", extra, method == "HEAD")
"#;

const HOST: &str = "alice.api.localhost";

/// One answer read off a kept-alive connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines as sent, names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection that reads answers one at a time, by their framing.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(self.fill(), "connection ended mid-line");
        }
    }

    fn take(&mut self, n: usize) -> String {
        while self.buf.len() < n {
            assert!(self.fill(), "connection ended mid-body");
        }
        String::from_utf8(self.buf.drain(..n).collect()).unwrap()
    }

    /// The next answer; `head_only` for the answer to a `HEAD`.
    fn answer(&mut self, head_only: bool) -> Answer {
        let status_line = self.line();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut answer = Answer {
            status,
            headers,
            body: String::new(),
        };
        if head_only {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line(), 16).unwrap();
                if size == 0 {
                    assert_eq!(self.line(), "", "no trailers were asked for");
                    break;
                }
                answer.body += &self.take(size);
                assert_eq!(self.take(2), "\r\n");
            }
        } else {
            let length = answer.header("content-length").unwrap().parse().unwrap();
            answer.body = self.take(length);
        }
        answer
    }

    /// `HEAD /echo`: a 200 that names its length and has no body.
    fn head_echo(&mut self) {
        self.send(&format!("HEAD /echo HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
        let head = self.answer(true);
        assert_eq!(head.status, 200);
        assert!(head.header("content-length").is_some(), "{head:?}");
    }

    /// `GET path` with `Connection: close`: its answer says so, and the connection ends.
    fn last_get(&mut self, path: &str) -> Answer {
        self.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        ));
        let last = self.answer(false);
        assert_eq!(last.header("connection"), Some("close"));
        assert!(self.at_end(), "the connection ends after Connection: close");
        last
    }

    fn at_end(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

#[test]
fn plain_requests_and_the_rest_share_a_connection() {
    let daemon = Daemon::start_raw_app("proxy-direct", HANDLER);
    assert_eq!(get(daemon.http_port, HOST, "/cancelled").unwrap().0, 200);

    let mut client = Client::connect(daemon.http_port);
    // Two requests in one write, headers in odd cases.
    client.send(&format!(
        "GET /echo?x=1 HTTP/1.1\r\nHOST: {HOST}\r\nX-FORWARDED-FOR: 6.6.6.6\r\n\
         x-Forwarded-Host: evil.example\r\nKEEP-ALIVE: 5\r\nTE: deflate\r\nUser-Agent: t/1\r\n\r\n\
         GET /chunked HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    ));
    let echo = client.answer(false);
    assert_eq!(echo.status, 200, "{echo:?}");
    let seen = echo.body.to_ascii_lowercase();
    assert!(seen.starts_with("get /echo?x=1 http/1.1\r\n"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\r\n"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: {HOST}\r\n")),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\r\n"), "{seen}");
    assert!(seen.contains("user-agent: t/1\r\n"), "{seen}");
    for gone in ["6.6.6.6", "evil.example", "keep-alive", "te:"] {
        assert!(!seen.contains(gone), "{gone} reached the instance: {seen}");
    }
    // The instance's own hop-by-hop headers stay behind; the rest passes, with a date.
    assert_eq!(echo.header("x-hop"), Some("kept"), "{echo:?}");
    assert_eq!(echo.header("keep-alive"), None, "{echo:?}");
    assert_eq!(echo.header("connection"), None, "{echo:?}");
    assert!(echo.header("date").is_some(), "{echo:?}");

    let chunked = client.answer(false);
    assert_eq!(
        (chunked.status, chunked.body.as_str()),
        (200, "hello world")
    );
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));

    // A body, then a plain request again: both answered on the same connection.
    client.send(&format!(
        "POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 7\r\n\r\npayload"
    ));
    let posted = client.answer(false);
    assert_eq!((posted.status, posted.body.as_str()), (200, "payload"));
    client.head_echo();
    let last = client.last_get("/chunked");
    assert_eq!(last.body, "hello world");

    // A plain request on a fresh connection, then a HEAD, and `Connection: close`.
    let mut client = Client::connect(daemon.http_port);
    client.head_echo();
    assert_eq!(client.last_get("/echo").status, 200);

    // A request for no route and one with a bad head are hyper's to answer.
    let mut client = Client::connect(daemon.http_port);
    client.send("GET / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n");
    assert_eq!(client.answer(false).status, 404);
    let mut client = Client::connect(daemon.http_port);
    client.send("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(client.answer(false).status, 400);

    // A client that hangs up while its request is at the instance cancels it there.
    let mut client = Client::connect(daemon.http_port);
    client.send(&format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
    std::thread::sleep(Duration::from_millis(500));
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (status, count) = get(daemon.http_port, HOST, "/cancelled").unwrap();
        assert_eq!(status, 200);
        if count == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instance still has the request of a client that left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
