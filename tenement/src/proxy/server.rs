//! Listening and connection lifetimes: accept loops, the HTTP/1.1 + HTTP/2 connection
//! driver with its time limits, and a graceful shutdown that waits for what is in flight.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{watch, Notify},
    time::{sleep_until, Instant},
};

use super::{conn::ConnService, exchange::ConnTracker, router::Router, Options};

pub(crate) struct Shared {
    pub(crate) router: Arc<Router>,
    /// The runtime the proxy was created on: `Backends` futures run there, not on the
    /// proxy's worker threads.
    pub(crate) main: tokio::runtime::Handle,
    pub(crate) options: Options,
    http: auto::Builder<TokioExecutor>,
    /// Flips to `true` once: stop accepting, finish what is in flight.
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) connections: Arc<Connections>,
}

/// hyper's own default; setting any other value makes it allocate the header array per request.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

impl Shared {
    pub(crate) fn new(router: Arc<Router>, options: Options) -> Shared {
        let mut http = auto::Builder::new(TokioExecutor::new());
        let mut http1 = http.http1();
        http1
            .timer(TokioTimer::new())
            // `drive` enforces it instead, without a timer per request.
            .header_read_timeout(None)
            // hyper answers 431 when the request head outgrows its buffer.
            .max_buf_size(options.max_header_bytes.max(8192))
            .keep_alive(true);
        if options.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(options.max_headers);
        }
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Shared {
            router,
            main: tokio::runtime::Handle::current(),
            options,
            http,
            shutdown: watch::channel(false).0,
            connections: Arc::default(),
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

/// Serves one client connection to its end. Besides hyper's own limits: a connection with
/// no request in flight that does not get a complete new request head within
/// `header_read_timeout` (counted from connecting or from its last response) is closed,
/// which bounds slow and silent clients and idle keep-alive connections alike.
///
/// The connection runs in a task of its own; this one watches it. Watching from outside
/// keeps timers out of the connection's task, which is woken for every request.
pub(crate) async fn drive<IO>(shared: Arc<Shared>, io: IO, peer: SocketAddr, https: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _counted = shared.connections.enter();
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return;
    }
    let tracker = Arc::new(ConnTracker::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut connection = tokio::spawn(serve(
        shared.clone(),
        io,
        peer,
        https,
        tracker.clone(),
        stopped,
    ));

    let options = &shared.options;
    let limit = options.header_read_timeout;
    let tick = (limit / 4).max(Duration::from_millis(10));
    let mut quiet_since = Instant::now();
    let mut requests_seen = 0;
    loop {
        tokio::select! {
            _ = &mut connection => return,
            _ = sleep_until(Instant::now() + tick) => {
                let now = Instant::now();
                let requests = tracker.requests();
                if requests != requests_seen || tracker.in_flight() > 0 {
                    requests_seen = requests;
                    quiet_since = now;
                } else if now.duration_since(quiet_since) >= limit {
                    tracing::debug!("closing connection from {peer}: no request within {limit:?}");
                    connection.abort();
                    return;
                }
            }
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
    }
    let _ = stop.send(());
    if tokio::time::timeout(options.shutdown_grace, &mut connection)
        .await
        .is_err()
    {
        tracing::debug!(
            "connection from {peer} did not finish within {:?}",
            options.shutdown_grace
        );
        connection.abort();
    }
}

/// hyper serving one connection until it ends, or until `stop` asks for a graceful end.
async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    peer: SocketAddr,
    https: bool,
    tracker: Arc<ConnTracker>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = ConnService::new(shared.clone(), peer.ip(), https, tracker);
    let connection = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        _ = &mut stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!("connection from {peer} ended: {error}");
    }
}
