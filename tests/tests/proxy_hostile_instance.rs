//! An instance that answers in ways meant to hurt the proxy or its other clients: endless
//! `1xx` answers, a response framed two ways at once (response splitting), and a head sent a
//! byte at a time. Each is bounded or refused with a 502, and the proxy keeps serving.

mod api_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use api_support::{Daemon, PATIENCE};
use tenement_tests::Scratch;

/// Raw answers by path: `/informational` sends twenty `100 Continue` heads first,
/// `/both` frames its body by length and chunking at once, `/trickle` sends its head one
/// byte per write, anything else is a plain 200.
const APP: &str = r#"
import os, socket, threading

def answer(path):
    if path == "/informational":
        return [b"HTTP/1.1 100 Continue\r\n\r\n"] * 20 + [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    if path == "/both":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]
    if path == "/trickle":
        head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 2000 + b"\r\nContent-Length: 7\r\n\r\n"
        return [bytes([b]) for b in head] + [b"trickle"]
    return [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"]

def serve(conn):
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                conn.close()
                return
            data += more
        head, data = data.split(b"\r\n\r\n", 1)
        path = head.split(b" ")[1].decode()
        for piece in answer(path):
            conn.sendall(piece)

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(os.environ["PORT"])))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

fn through_proxy(daemon: &Daemon, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.http_port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: alice.api.localhost\r\nConnection: close\r\n\r\n"
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
fn a_hostile_instance_gets_bounded_answers() {
    let scratch = Scratch::new("proxy-hostile");
    let app = scratch.write("app.py", APP);
    let services = format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\n",
        app.display()
    );
    let daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.ok(&["spawn", "api:alice"]);

    let answer = through_proxy(&daemon, "/informational");
    assert_eq!(status(&answer), Some("502"), "{answer}");
    assert!(
        answer.contains("more than 8 informational (1xx) responses"),
        "{answer}"
    );

    let answer = through_proxy(&daemon, "/both");
    assert_eq!(status(&answer), Some("502"), "{answer}");
    assert!(
        answer.contains("both transfer-encoding and content-length"),
        "{answer}"
    );

    // Slow, but well-formed: served whole.
    let answer = through_proxy(&daemon, "/trickle");
    assert_eq!(status(&answer), Some("200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntrickle"), "{answer}");

    // None of it hurt the instance's next request.
    let answer = through_proxy(&daemon, "/");
    assert_eq!(status(&answer), Some("200"), "{answer}");
    assert!(answer.ends_with("plain"), "{answer}");
}
