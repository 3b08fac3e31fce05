//! Listening and connection lifetimes: accept loops, the HTTP/1.1 + HTTP/2 connection
//! driver (plain HTTP/1.1 requests first through `direct.rs`) with its time limits, and a
//! graceful shutdown that waits for what is in flight.

use std::{
    net::SocketAddr,
    os::fd::RawFd,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{watch, Notify},
    time::{sleep_until, Instant},
};

use super::{
    conn::ConnService,
    cork::Cork,
    direct::{self, Served},
    exchange::ConnTracker,
    router::Router,
    sniff::{sniff, Protocol},
    watch::Watched,
    Options,
};

pub(crate) struct Shared {
    pub(crate) router: Arc<Router>,
    /// The runtime the proxy was created on: `Backends` futures run there, not on the
    /// proxy's worker threads.
    pub(crate) main: tokio::runtime::Handle,
    pub(crate) options: Options,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Flips to `true` once: stop accepting, finish what is in flight.
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) connections: Arc<Connections>,
    /// Keep-alive connections to other fleet nodes' proxies.
    pub(crate) peers: super::fleet::PeerPools,
}

/// hyper's own default; setting any other value makes it allocate the header array per request.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

impl Shared {
    pub(crate) fn new(router: Arc<Router>, options: Options) -> Shared {
        let mut http1 = http1::Builder::new();
        http1
            // `watch.rs` enforces it instead, without a timer per request.
            .header_read_timeout(None)
            // Beyond it hyper answers 431.
            .max_header_size(options.max_header_bytes)
            .keep_alive(true);
        if options.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(options.max_headers);
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Shared {
            router,
            main: tokio::runtime::Handle::current(),
            options,
            http1,
            http2,
            shutdown: watch::channel(false).0,
            connections: Arc::default(),
            peers: Default::default(),
        }
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until every connection and tunnel has closed, or `grace` has passed.
    pub(crate) async fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            let closed = self.connections.all_closed.notified();
            let open = self.connections.open.load(Ordering::Acquire);
            if open == 0 {
                return;
            }
            tokio::select! {
                _ = closed => {}
                _ = sleep_until(deadline) => {
                    tracing::warn!("shutting down with {open} connection(s) still open after {grace:?}");
                    return;
                }
            }
        }
    }
}

/// Open client connections and tunnels, so that shutdown can wait for them.
#[derive(Default)]
pub(crate) struct Connections {
    open: AtomicUsize,
    all_closed: Notify,
}

impl Connections {
    pub(crate) fn enter(self: &Arc<Connections>) -> Counted {
        self.open.fetch_add(1, Ordering::AcqRel);
        Counted(self.clone())
    }
}

/// One open connection or tunnel; the last one out wakes a waiting shutdown.
pub(crate) struct Counted(Arc<Connections>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// The other end of a client connection, and what carries it.
#[derive(Clone, Copy)]
pub(crate) struct Client {
    pub peer: SocketAddr,
    pub https: bool,
    /// The TCP socket the connection is, when it is a plain one (its last answer is
    /// corked, `cork.rs`).
    pub socket: Option<RawFd>,
}

/// Starts serving one client connection in a task of its own and returns what watching it
/// takes (see `watch.rs`). `keep` lives as long as the connection.
pub(crate) fn spawn_connection<IO, K>(
    shared: &Arc<Shared>,
    io: IO,
    client: Client,
    keep: K,
) -> Watched
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    K: Send + 'static,
{
    let counted = shared.connections.enter();
    let tracker = Arc::new(ConnTracker::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        shared.clone(),
        io,
        client,
        tracker.clone(),
        stopped,
        (counted, keep),
    ));
    Watched::new(tracker, task.abort_handle(), stop, client.peer)
}

/// hyper serving one connection until it ends, or until `stop` asks for a graceful end.
async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    client: Client,
    tracker: Arc<ConnTracker>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    _keep: impl Send,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Client {
        peer,
        https,
        socket,
    } = client;
    let (protocol, mut io) = match sniff(io).await {
        Ok(sniffed) => sniffed,
        Err(error) => {
            tracing::debug!("connection from {peer} failed before its first request: {error}");
            return;
        }
    };
    // HTTP/2 multiplexes: no answer on it is the connection's last.
    let cork = socket
        .filter(|_| protocol == Protocol::Http1)
        .map(Cork::new);
    let mut service = ConnService::new(shared.clone(), peer.ip(), https, cork, tracker);
    if protocol == Protocol::Http1 && service.may_serve_directly() {
        let first = io.take_prefix();
        match direct::serve(&mut service, &mut io, first, &mut stop).await {
            Served::Closed => return,
            Served::HandOver(unanswered) => io.put_back(unanswered),
        }
    }
    let service = hyper::service::service_fn(move |request| service.call(request));
    let io = TokioIo::new(io);
    // The same dance for both protocols: serve, and on `stop` finish what is in flight.
    macro_rules! until_stopped {
        ($connection:expr) => {{
            // Boxed: hyper's connection is big, and would otherwise make this whole future
            // (copied around while it is spawned) as big.
            let mut connection = Box::pin($connection);
            tokio::select! {
                biased;
                result = connection.as_mut() => result,
                _ = &mut stop => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }};
    }
    let result = match protocol {
        Protocol::Http1 => {
            until_stopped!(shared.http1.serve_connection(io, service).with_upgrades())
        }
        Protocol::Http2 => until_stopped!(shared.http2.serve_connection(io, service)),
    };
    if let Err(error) = result {
        tracing::debug!("connection from {peer} ended: {error}");
    }
}
