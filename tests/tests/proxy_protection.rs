//! Clients that are slow, oversized or ambiguous cannot hold or confuse the proxy.

mod proxy_support;

use std::time::Duration;

use proxy_support::*;
use tenement::proxy::Options;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn options() -> Options {
    Options {
        header_read_timeout: Duration::from_secs(1),
        ..Options::default()
    }
}

/// Reads until the proxy closes the connection; panics if it never does.
async fn closed_by_proxy(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off() {
    let stack = Stack::start_with(&config(""), &[running("api:alice", 100)], options()).await;

    // Half a request head, then nothing.
    let mut slow = TcpStream::connect(stack.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: alice.api.exa")
        .await
        .unwrap();
    let answer = closed_by_proxy(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");

    // Connected, never a byte.
    let mut silent = TcpStream::connect(stack.addr).await.unwrap();
    assert_eq!(closed_by_proxy(&mut silent).await, "");

    // One request, then idle on keep-alive.
    let mut idle = TcpStream::connect(stack.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: alice.api.example.com\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_by_proxy(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("api:alice"), "{answer}");

    // An HTTP/2 client that only sends its preface.
    let mut h2 = TcpStream::connect(stack.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    closed_by_proxy(&mut h2).await;

    // The proxy still serves everyone else.
    assert_eq!(
        stack.get("alice.api.example.com", "/").await.body,
        "api:alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: alice.api.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = raw(stack.addr, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    let many: String = (0..150).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: alice.api.example.com\r\n{many}\r\n");
    let answer = raw(stack.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Just under the limits passes.
    let fine: String = (0..90)
        .map(|i| format!("X-Header-{i}: {}\r\n", "v".repeat(200)))
        .collect();
    let request =
        format!("GET / HTTP/1.1\r\nHost: alice.api.example.com\r\nConnection: close\r\n{fine}\r\n");
    let answer = raw(stack.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_rejected_or_made_unambiguous() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    let head = "POST /upload HTTP/1.1\r\nHost: alice.api.example.com\r\nConnection: close\r\n";

    let rejected = [
        "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "Transfer-Encoding: identity\r\n\r\nhello",
        "Content-Length : 5\r\n\r\nhello",
        "Content-Length: 5\r\n folded: value\r\n\r\nhello",
        "Content-Length: -5\r\n\r\nhello",
    ];
    for framing in rejected {
        let answer = raw(stack.addr, format!("{head}{framing}").as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{framing:?} gave {answer:?}"
        );
    }

    // Content-Length next to chunked: the chunked framing wins, the length is dropped, and
    // the instance receives exactly the chunked body, nothing smuggled behind it.
    let smuggle = "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: alice.api.example.com\r\n\r\n";
    let answer = raw(stack.addr, format!("{head}{smuggle}").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""bytes": 5"#), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_hosts_get_400() {
    let stack = Stack::start(
        &config(""),
        &[running("api:alice", 100), running("api:bob", 100)],
    )
    .await;
    let ambiguous = [
        // Two Host headers: routed by one, forwarded with both, before this was refused.
        "GET / HTTP/1.1\r\nHost: alice.api.example.com\r\nHost: bob.api.example.com\r\nConnection: close\r\n\r\n",
        // The same host twice is still two headers.
        "GET / HTTP/1.1\r\nHost: alice.api.example.com\r\nhost: alice.api.example.com\r\nConnection: close\r\n\r\n",
        // An absolute-form target naming another host than the Host header.
        "GET http://bob.api.example.com/ HTTP/1.1\r\nHost: alice.api.example.com\r\nConnection: close\r\n\r\n",
    ];
    for request in ambiguous {
        let answer = raw(stack.addr, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{request:?} gave {answer:?}"
        );
        assert!(answer.contains("Host"), "{answer}");
        assert!(
            !answer.contains("api:alice") && !answer.contains("api:bob"),
            "{answer}"
        );
    }

    // Agreeing spellings pass: case, port and an absolute-form target naming the same host.
    let fine = "GET http://alice.api.example.com/ HTTP/1.1\r\nHost: Alice.API.example.com:80\r\nConnection: close\r\n\r\n";
    let answer = raw(stack.addr, fine.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("api:alice"), "{answer}");
}
