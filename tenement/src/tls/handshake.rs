//! The TLS handshake: read the ClientHello, answer TLS-ALPN-01 validations, wait (bounded)
//! for a first certificate, then let rustls finish with the certificate chosen by SNI.

use std::{io, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use rustls::{
    server::{Acceptor, ResolvesServerCert},
    ServerConfig,
};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::timeout};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

use super::{certificate::provider, challenges::ACME_TLS_ALPN, names::normalize_host, Inner};

/// A client that sends no ClientHello within this time is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Rest of the handshake, once a certificate is chosen.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Inner {
    pub(super) async fn accept(
        self: &Arc<Self>,
        tcp: TcpStream,
    ) -> io::Result<Option<TlsStream<TcpStream>>> {
        let start = timeout(
            HELLO_TIMEOUT,
            LazyConfigAcceptor::new(Acceptor::default(), tcp),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS: no ClientHello within {HELLO_TIMEOUT:?}"),
            )
        })??;
        let hello = start.client_hello();
        let name = hello.server_name().map(normalize_host);
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let shown = name.as_deref().unwrap_or("(no SNI)").to_string();

        if validation {
            let config = self.challenge_config.clone();
            let mut stream = finish_handshake(start.into_stream(config), &shown, None).await?;
            // RFC 8737: the validation ends with the handshake.
            let _ = stream.shutdown().await;
            return Ok(None);
        }

        let missing = match &name {
            Some(name) => self.wait_for_certificate(name).await.err(),
            None => None,
        };
        let config = self.server_config.clone();
        let stream = finish_handshake(start.into_stream(config), &shown, missing).await?;
        Ok(Some(stream))
    }
}

async fn finish_handshake(
    handshake: tokio_rustls::Accept<TcpStream>,
    name: &str,
    missing: Option<String>,
) -> io::Result<TlsStream<TcpStream>> {
    let because = missing
        .map(|why| format!(" (no certificate: {why})"))
        .unwrap_or_default();
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(io::Error::new(
            err.kind(),
            format!("TLS handshake for {name} failed: {err}{because}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake for {name} did not finish within {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

pub(super) fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    // rustls' safe defaults: TLS 1.2 and 1.3, AEAD suites with forward secrecy only.
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
