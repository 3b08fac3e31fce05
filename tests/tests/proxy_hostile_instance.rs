//! An instance that answers in ways meant to hurt the proxy or its other clients: endless
//! `1xx` answers, a response framed two ways at once (response splitting), and a head sent a
//! byte at a time. Each is bounded or refused with a 502, and the proxy keeps serving.

mod api_support;

use api_support::Daemon;
use tenement_tests::http::get;

/// Raw answers by path: `/informational` sends twenty `100 Continue` heads first,
/// `/both` frames its body by length and chunking at once, `/trickle` sends its head one
/// byte per write, anything else is a plain 200.
const HANDLER: &str = r#"
def handle(conn, method, path, head, body):
    for piece in answer(path):
        conn.sendall(piece)

def answer(path):
    if path == "/informational":
        return [b"HTTP/1.1 100 Continue\r\n\r\n"] * 20 + [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    if path == "/both":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]
    if path == "/trickle":
        head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 2000 + b"\r\nContent-Length: 7\r\n\r\n"
        return [bytes([b]) for b in head] + [b"trickle"]
    return [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"]
"#;

const HOST: &str = "alice.api.localhost";

#[test]
fn a_hostile_instance_gets_bounded_answers() {
    let daemon = Daemon::start_raw_app("proxy-hostile", HANDLER);

    let through_proxy = |path| get(daemon.http_port, HOST, path).unwrap();
    let (status, body) = through_proxy("/informational");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("more than 8 informational (1xx) responses"),
        "{body}"
    );

    let (status, body) = through_proxy("/both");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("both transfer-encoding and content-length"),
        "{body}"
    );

    // Slow, but well-formed: served whole.
    assert_eq!(through_proxy("/trickle"), (200, "trickle".to_string()));

    // None of it hurt the instance's next request.
    assert_eq!(through_proxy("/"), (200, "plain".to_string()));
}
