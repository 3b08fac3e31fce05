//! What crosses the proxy: headers (end-to-end ones unchanged, hop-by-hop ones not,
//! X-Forwarded-* added), WebSocket upgrades, HTTP/2 clients, and instances that break off.

mod proxy_support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use proxy_support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_headers_pass_hop_by_hop_headers_stay() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    let request = Request::get("/headers?x=1&y=%20")
        .header("authorization", "Bearer secret-token")
        .header("cookie", "session=abc; theme=dark")
        .header("x-custom", "kept")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-private")
        .header("x-private", "hop only")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic cHJveHk6cHc=")
        .body(Full::default())
        .unwrap();
    let reply = send(stack.addr, "Alice.api.example.com:8080", request).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let echo = reply.json();
    assert_eq!(echo["path"], "/headers?x=1&y=%20");
    assert_eq!(header(&echo, "authorization"), ["Bearer secret-token"]);
    assert_eq!(header(&echo, "cookie"), ["session=abc; theme=dark"]);
    assert_eq!(header(&echo, "x-custom"), ["kept"]);
    assert_eq!(header(&echo, "host"), ["Alice.api.example.com:8080"]);
    assert_eq!(header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        header(&echo, "x-forwarded-host"),
        ["Alice.api.example.com:8080"]
    );
    for gone in ["x-private", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            header(&echo, gone).is_empty(),
            "{gone} was forwarded: {echo}"
        );
    }
    // The instance's own headers come back.
    assert_eq!(
        stack.get("alice.api.example.com", "/").await.headers["x-instance"],
        "api:alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_with_prior_knowledge() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    // HTTP/2 names the host in the URI (:authority), not in a Host header.
    let stream = TcpStream::connect(stack.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::get("http://alice.api.example.com/headers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.expect("h2c request");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["instance"], "api:alice");
    assert_eq!(header(&echo, "host"), ["alice.api.example.com"]);
    assert_eq!(header(&echo, "x-forwarded-host"), ["alice.api.example.com"]);
    // Cookies split over several HTTP/2 fields arrive as one HTTP/1.1 header.
    assert_eq!(header(&echo, "cookie"), ["a=1; b=2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_and_head_requests() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    // A body of unknown length goes out chunked and arrives whole.
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..100)
        .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 1000]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let mut sender = handshake(stack.addr).await;
    let request = Request::post("/upload")
        .header("host", "alice.api.example.com")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["bytes"], 100_000);

    let reply = send(
        stack.addr,
        "alice.api.example.com",
        Request::head("/").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-length"], "9");
    assert_eq!(reply.body, "");
}

async fn handshake<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    let mut stream = TcpStream::connect(stack.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: alice.api.example.com\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");

    for message in ["hello through tenement", &"x".repeat(70_000)] {
        stream
            .write_all(&masked_frame(0x1, message.as_bytes()))
            .await
            .unwrap();
        let (opcode, payload) = read_frame(&mut stream).await;
        assert_eq!(opcode, 0x1);
        assert_eq!(payload, message.as_bytes());
    }
    stream.write_all(&masked_frame(0x8, b"")).await.unwrap();
    assert_eq!(read_frame(&mut stream).await.0, 0x8);
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.unwrap();
        let length = match head[1] & 0x7f {
            126 => stream.read_u16().await.unwrap() as usize,
            127 => stream.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0; length];
        stream.read_exact(&mut payload).await.unwrap();
        (head[0] & 0x0f, payload)
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a frame arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_response_does_not_hang_the_client() {
    let stack = Stack::start(
        &config(""),
        &[running("api:alice", 100), running("api:bob", 100)],
    )
    .await;
    let mut sender = handshake::<Full<Bytes>>(stack.addr).await;
    let request = Request::get("/partial")
        .header("host", "alice.api.example.com")
        .body(Full::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0;
    while received < 1024 * 1024 {
        let frame = body.frame().await.unwrap().unwrap();
        received += frame.data_ref().map_or(0, |d| d.len());
    }
    stack.kill("api:alice");
    let rest = tokio::time::timeout(PATIENCE, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the response ends instead of hanging");
    assert!(rest.is_err(), "a cut-off response must not look complete");
    // The proxy itself carries on.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(stack.get("bob.api.example.com", "/").await.body, "api:bob");
}
