//! The fast instance of `cargo xtask bench proxy`: answers every request at once with a
//! fixed body, 12 bytes, or 64 KiB under `/large`. Usage: `bench-backend PORT`.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

static LARGE: [u8; 64 * 1024] = [b'x'; 64 * 1024];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bench-backend PORT"))?
        .parse()?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                let body = if request.uri().path() == "/large" {
                    Bytes::from_static(&LARGE)
                } else {
                    Bytes::from_static(b"hello world\n")
                };
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
