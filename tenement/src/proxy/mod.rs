//! The HTTP front door. Every request is routed by its `Host` (and, on the bare domain, its
//! path) to one instance, which is woken if it sleeps, then forwarded over a keep-alive
//! connection from that instance's pool, bodies streamed both ways.
//!
//! ```text
//! listener -> (TLS) -> hyper (HTTP/1.1, h2c) -> conn: route by table -> forward:
//!     Backends::ensure_running when not running -> pool -> 127.0.0.1:{port} or the instance's unix socket
//! ```
//!
//! Files, by concern:
//! - accepting: `workers` (worker threads, one event loop each), `listen` (sockets),
//!   `sniff` (HTTP/1 or h2c), `server` (hyper per connection, shutdown), `watch` (time
//!   limits on connections);
//! - routing: `conn` (the per-connection service), `router` + `table` + `weights` + `host`
//!   (the routing table and how it is kept current);
//! - forwarding: `forward` (wake, forward, tunnel), `headers` (hop-by-hop rules),
//!   `upstream` + `http1` + `pool` (HTTP/1.1 to the instance, from the request's own task,
//!   over kept-alive connections), `body` (the streamed response body);
//! - answers and bookkeeping: `reply` (errors the proxy writes itself), `exchange`
//!   (per-request accounting), `access_log` (the line per request, buffered per thread),
//!   `metrics` (request counters for `/metrics`);
//! - `backend`: the seam to the supervisor.

mod access_log;
mod backend;
mod body;
mod conn;
mod cork;
mod direct;
mod exchange;
mod fleet;
mod forward;
mod headers;
mod host;
mod http1;
mod listen;
pub mod metrics;
mod outbox;
pub mod placement;
mod pool;
mod reply;
mod router;
mod server;
mod sniff;
mod steer;
mod table;
mod upstream;
mod watch;
mod weights;
mod workers;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};

pub use access_log::AccessLog;
pub use backend::{
    ActivityGuard, ActivityMeter, BackendInstance, BackendState, Backends, Endpoint, WakeError,
};
pub use body::ProxyBody;
pub use metrics::RequestMetrics;

use crate::config::Config;

/// Answers requests before routing, e.g. ACME HTTP-01 challenges: `Some` answers, `None` lets
/// the request through to the instances. Asked on plain (non-TLS) connections only.
pub type PreRouter = Arc<dyn Fn(&Request<Incoming>) -> Option<Response<Bytes>> + Send + Sync>;

/// Limits that protect the proxy from slow or oversized clients, and its optional hook.
#[derive(Clone)]
pub struct Options {
    /// A connection with no request in flight must bring a complete new request head within
    /// this, counted from connecting or from its last response; otherwise it is closed.
    /// This bounds slow clients and idle keep-alive connections (HTTP/2 too). Enforced
    /// within a quarter of itself.
    pub header_read_timeout: Duration,
    /// Largest request head; beyond it the client gets 431 (HTTP/1.1) or a stream error (HTTP/2).
    pub max_header_bytes: usize,
    /// Most header fields in one request; beyond it the client gets 431.
    pub max_headers: usize,
    /// On shutdown, how long in-flight requests and tunnels may take to finish.
    pub shutdown_grace: Duration,
    /// Worker threads, each with its own event loop accepting on every listener (as nginx's
    /// worker processes do); 0 means one per CPU.
    pub workers: usize,
    pub pre_router: Option<PreRouter>,
    /// With `[fleet]`: asked where each request's instance is served before waking it here.
    pub placement: Option<Arc<dyn placement::Placement>>,
    /// Where a line per request goes (`settings.access_log`); `None` logs nothing.
    pub access_log: Option<Arc<AccessLog>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            header_read_timeout: Duration::from_secs(20),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            shutdown_grace: Duration::from_secs(10),
            workers: 0,
            pre_router: None,
            placement: None,
            access_log: None,
        }
    }
}

/// Whether a connection came in over TLS (told to instances in `X-Forwarded-Proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// The proxy: cheap to clone, every clone serves the same table and pools.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<server::Shared>,
}

impl Proxy {
    /// Builds the routing table and follows `backends.changes()`. Call inside a tokio runtime.
    pub fn new(config: Arc<Config>, backends: Arc<dyn Backends>, options: Options) -> Proxy {
        let router = router::Router::new(config, backends, RequestMetrics::new());
        Proxy {
            shared: Arc::new(server::Shared::new(router, options)),
        }
    }

    /// Whether requests for `host` (lower case, no port, no trailing dot) reach a service or
    /// instance: what the TLS layer asks before ordering a certificate for a name.
    pub fn routes(&self, host: &str) -> bool {
        self.shared.router.routes(host)
    }

    /// What the proxy counts per instance and service, for `/metrics`.
    pub fn request_metrics(&self) -> Arc<RequestMetrics> {
        self.shared.router.requests().clone()
    }

    /// Routes by a new configuration (domains, `[routing]`, services) from now on.
    pub fn set_config(&self, config: Arc<Config>) {
        self.shared.router.set_config(config);
    }

    /// Accepts on every listener until `shutdown` completes, then lets in-flight requests
    /// finish (up to `Options::shutdown_grace`). Connections are served by the proxy's own
    /// worker threads (`Options::workers`): each runs one event loop that accepts, serves
    /// the client and talks to the instance, so a request never changes threads.
    pub async fn serve(&self, listeners: Vec<TcpListener>, shutdown: impl Future) -> Result<()> {
        if listeners.is_empty() {
            bail!("the proxy has no address to listen on (settings.listen is empty)");
        }
        listen::raise_open_file_limit();
        for listener in &listeners {
            if let Ok(address) = listener.local_addr() {
                tracing::info!("proxy listening on http://{address}");
            }
        }
        let listeners = listeners
            .into_iter()
            .map(|listener| listener.into_std())
            .collect::<std::io::Result<Vec<_>>>()
            .context("taking over the listening sockets")?;
        let workers = match self.shared.options.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Workers stop when this future ends, even when it is dropped instead of finishing.
        let _stop_workers = StopOnDrop(self.shared.clone());
        let finished = workers::start(&self.shared, workers, &listeners)?;
        drop(listeners);
        shutdown.await;
        self.shutdown().await;
        for worker in finished {
            let _ = worker.await;
        }
        Ok(())
    }

    /// Serves one already accepted connection, e.g. one the TLS layer has decrypted.
    pub async fn serve_connection<IO>(&self, io: IO, peer: SocketAddr, scheme: Scheme)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let https = scheme == Scheme::Https;
        let client = server::Client {
            peer,
            https,
            socket: None,
        };
        let watched = server::spawn_connection(&self.shared, io, client, ());
        watch::watch_one(self.shared.clone(), watched).await;
    }

    /// Stops accepting, closes idle connections, and waits for in-flight ones to finish.
    pub async fn shutdown(&self) {
        self.shared.begin_shutdown();
        self.shared.drain(self.shared.options.shutdown_grace).await;
        if let Some(log) = &self.shared.options.access_log {
            log.flush();
        }
    }
}

struct StopOnDrop(Arc<server::Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.begin_shutdown();
    }
}

/// Serves `listeners` with default limits until `shutdown` completes.
pub async fn serve(
    listeners: Vec<TcpListener>,
    config: Arc<Config>,
    backends: Arc<dyn Backends>,
    shutdown: impl Future,
) -> Result<()> {
    Proxy::new(config, backends, Options::default())
        .serve(listeners, shutdown)
        .await
}

/// Binds every address of `settings.listen`, naming the one that fails. Listeners made here
/// are ready for `Proxy::serve`.
pub fn bind(addresses: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    listen::bind(addresses)?
        .into_iter()
        .map(|listener| TcpListener::from_std(listener).context("registering a listener"))
        .collect()
}
