//! The CLI's side of the management API: one HTTP/1.1 request per connection, over the unix
//! socket or TCP, with the caller's token.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    client::conn::http1,
    header::{self, HeaderValue},
    Method, Request, Response,
};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    api::{
        address::{ApiAddress, DEFAULT_SOCKET},
        types::ErrorBody,
    },
    config::{self, Config},
    sockpath::SocketPath,
};

pub struct Client {
    address: ApiAddress,
    token: Option<String>,
}

impl Client {
    pub fn new(address: ApiAddress, token: Option<String>) -> Client {
        Client { address, token }
    }

    /// `--server`/`TENEMENT_SERVER` if given. Else from the configuration (`--config`,
    /// `TENEMENT_CONFIG`, ./tenement.toml, /etc/tenement/tenement.toml): with a token its
    /// `settings.api`; without one the daemon's unix socket, where root needs none (the
    /// daemon always listens there, also when `settings.api` is TCP). Else the default socket.
    pub fn resolve_address(
        server: Option<&str>,
        config: Option<&Path>,
        has_token: bool,
    ) -> Result<ApiAddress> {
        if let Some(server) = server {
            return ApiAddress::parse(server).map_err(|err| anyhow!("--server: {err}"));
        }
        let Ok(path) = config::locate(config) else {
            return Ok(ApiAddress::Unix(DEFAULT_SOCKET.into()));
        };
        let config = Config::load(&path).with_context(|| {
            format!(
                "reading the server address from {} (pass --server to skip it)",
                path.display()
            )
        })?;
        let listeners = ApiAddress::listeners(&config.settings)
            .map_err(|err| anyhow!("{}: {err}", path.display()))?;
        let preferred = if has_token {
            listeners.last()
        } else {
            listeners.first()
        };
        preferred
            .cloned()
            .ok_or_else(|| anyhow!("{}: no management listener", path.display()))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// A request with a JSON body (or none), answered with JSON.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let response = self.send(method, path, body).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of {}", self.address))?
            .to_bytes();
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "unexpected answer from {}: {}",
                self.address,
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// A request whose answer is read as it arrives (NDJSON streams): `on_line` gets each
    /// line until the server ends the stream, or until it returns false.
    pub async fn stream(&self, path: &str, mut on_line: impl FnMut(&str) -> bool) -> Result<()> {
        let mut body = self.send(Method::GET, path, None::<&()>).await?.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("reading from {}", self.address))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !on_line(String::from_utf8_lossy(&line[..end]).trim_end()) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Sends a request; answers other than 2xx become errors carrying the API's message.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response<Incoming>> {
        let body = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "tenement")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token contains characters that cannot go in a header")?;
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("talking to tenement at {}", self.address))?;
        if response.status().is_success() {
            return Ok(response);
        }
        // The API's message is made to be read as is: it becomes the whole error line.
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => anyhow!(body.error),
            Err(_) => anyhow!(
                "tenement at {} answered {status}: {}",
                self.address,
                String::from_utf8_lossy(&bytes).trim()
            ),
        })
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>> {
        let unreachable = |err: std::io::Error| {
            let hint = match err.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "permission denied ({err}): the socket is only for root and tenement's \
                     user; run as root, or use --server http://HOST:PORT with a --token"
                ),
                _ => "is `tenement serve` running?".to_string(),
            };
            anyhow!("cannot reach tenement at {}: {hint}", self.address)
        };
        match &self.address {
            ApiAddress::Unix(path) => {
                let path = SocketPath::new(path).map_err(unreachable)?;
                let stream = tokio::net::UnixStream::connect(&*path)
                    .await
                    .map_err(unreachable)?;
                handshake(stream).await
            }
            ApiAddress::Tcp(host_port) => {
                let stream = tokio::net::TcpStream::connect(host_port.as_str())
                    .await
                    .map_err(unreachable)?;
                handshake(stream).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
