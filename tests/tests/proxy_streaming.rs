//! 100 MB each way through the proxy with flat memory: bodies are streamed, never collected.
//! One test in this file, so that no other test's memory shows up in the measurement.

mod proxy_support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use proxy_support::*;
use tokio::net::TcpStream;

const SIZE: usize = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
static BLOCK: [u8; CHUNK] = [7; CHUNK];
/// The whole process (proxy and test client) may grow this much while 200 MB pass through.
const MEMORY_BUDGET: u64 = 32 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_in_flat_memory() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    // Warm up every buffer the path uses, then measure from here.
    assert_eq!(upload(&stack, 1024 * 1024).await, 1024 * 1024);
    assert_eq!(download(&stack, 1024 * 1024).await, 1024 * 1024);
    let before = reset_peak_memory();

    assert_eq!(upload(&stack, SIZE).await, SIZE);
    let after_upload = peak_memory();
    assert_eq!(download(&stack, SIZE).await, SIZE);
    let after_download = peak_memory();

    let growth = after_download.saturating_sub(before);
    eprintln!(
        "peak resident memory: {} KiB before, {} KiB after upload, {} KiB after download",
        before / 1024,
        after_upload / 1024,
        after_download / 1024
    );
    assert!(
        growth < MEMORY_BUDGET,
        "memory grew by {} MiB while streaming 2 x 100 MiB",
        growth / 1024 / 1024
    );
}

/// Sends `size` bytes, chunked in 64 KiB pieces, and returns how many the instance counted.
async fn upload(stack: &Stack, size: usize) -> usize {
    let pieces = (0..size / CHUNK)
        .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&BLOCK))));
    let body = StreamBody::new(futures_util::stream::iter(pieces));
    let mut sender = connect(stack).await;
    let request = Request::post("/upload")
        .header("host", "alice.api.example.com")
        .header("content-length", size.to_string())
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("the upload finishes")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    echo["bytes"].as_u64().unwrap() as usize
}

/// Asks for `size` bytes and counts them as they arrive, keeping none.
async fn download(stack: &Stack, size: usize) -> usize {
    let mut sender = connect(stack).await;
    let request = Request::get(format!("/download?bytes={size}"))
        .header("host", "alice.api.example.com")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0;
    let counting = async {
        while let Some(frame) = body.frame().await {
            received += frame.unwrap().data_ref().map_or(0, |d| d.len());
        }
    };
    tokio::time::timeout(PATIENCE, counting)
        .await
        .expect("the download finishes");
    received
}

async fn connect<B>(stack: &Stack) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(stack.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Resets the kernel's peak-RSS mark for this process and returns the current RSS.
fn reset_peak_memory() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
    status_kib("VmRSS") * 1024
}

fn peak_memory() -> u64 {
    status_kib("VmHWM") * 1024
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}
