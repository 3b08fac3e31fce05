//! Keep-alive connections to one instance. A connection goes back to the pool when the
//! response body it carried has been read to the end, and the most recently used one is
//! taken first so that a quiet instance's extra connections age out.

use std::{
    collections::VecDeque,
    fmt,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{body::Incoming, client::conn::http1, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per instance; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused.
const IDLE_LIFETIME: Duration = Duration::from_secs(90);

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    port: u16,
    since: Instant,
}

/// A pooled connection lent to one response; `release` once its body has been read through.
pub(crate) struct Lease {
    sender: http1::SendRequest<Incoming>,
    port: u16,
    pool: Arc<Pool>,
}

impl Lease {
    pub(crate) fn release(self) {
        self.pool.put(self.sender, self.port);
    }
}

#[derive(Debug)]
pub(crate) enum UpstreamError {
    Refused { port: u16 },
    Connect { port: u16, error: std::io::Error },
    Http { port: u16, error: hyper::Error },
}

impl UpstreamError {
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, UpstreamError::Refused { .. })
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Refused { port } => {
                write!(f, "refused the connection on 127.0.0.1:{port}")
            }
            UpstreamError::Connect { port, error } => {
                write!(f, "could not be reached on 127.0.0.1:{port}: {error}")
            }
            UpstreamError::Http { port, error } => {
                write!(f, "failed to answer on 127.0.0.1:{port}: {error}")
            }
        }
    }
}

impl Pool {
    /// Sends on an idle connection to `port`, or on a new one. A request that an idle
    /// connection turned down before sending (the instance had closed it) goes to the next.
    /// On failure the request comes back too if it never left.
    pub(crate) async fn send(
        self: &Arc<Self>,
        port: u16,
        mut request: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Lease), (UpstreamError, Option<Request<Incoming>>)> {
        while let Some(mut sender) = self.take(port) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(sender, port))),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => {
                        let error = failed.into_error();
                        return Err((UpstreamError::Http { port, error }, None));
                    }
                },
            }
        }
        let mut sender = match connect(port, false).await {
            Ok(sender) => sender,
            Err(error) => return Err((error, Some(request))),
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response, self.lease(sender, port))),
            Err(mut failed) => {
                let unsent = failed.take_message();
                let error = failed.into_error();
                Err((UpstreamError::Http { port, error }, unsent))
            }
        }
    }

    fn lease(self: &Arc<Self>, sender: http1::SendRequest<Incoming>, port: u16) -> Lease {
        Lease {
            sender,
            port,
            pool: self.clone(),
        }
    }

    fn take(&self, port: u16) -> Option<http1::SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(candidate) = idle.pop_back() {
            if candidate.port == port
                && !candidate.sender.is_closed()
                && candidate.since.elapsed() < IDLE_LIFETIME
            {
                return Some(candidate.sender);
            }
        }
        None
    }

    fn put(&self, sender: http1::SendRequest<Incoming>, port: u16) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle.front().is_some_and(|oldest| {
            idle.len() >= MAX_IDLE
                || oldest.sender.is_closed()
                || now.duration_since(oldest.since) >= IDLE_LIFETIME
        }) {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            port,
            since: now,
        });
    }
}

/// A fresh connection to the instance on 127.0.0.1:`port`. With `upgrades`, the connection
/// can hand its socket over after a `101 Switching Protocols` (it is never pooled then).
pub(crate) async fn connect(
    port: u16,
    upgrades: bool,
) -> Result<http1::SendRequest<Incoming>, UpstreamError> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect(address).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::ConnectionRefused {
            UpstreamError::Refused { port }
        } else {
            UpstreamError::Connect { port, error }
        }
    })?;
    // Small requests and responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| UpstreamError::Http { port, error })?;
    if upgrades {
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!("upstream connection to port {port} ended: {error}");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("upstream connection to port {port} ended: {error}");
            }
        });
    }
    Ok(sender)
}
