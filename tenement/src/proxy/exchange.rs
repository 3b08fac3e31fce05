//! One request's bookkeeping, from arrival until its response body is done: the activity
//! guard the idle reaper counts, the connection's in-flight count, the request counters of
//! `/metrics`, and the access log line.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use http::{HeaderValue, Method, Request, Uri};

use super::{backend::ActivityGuard, table::Entry};

/// The tracing target of the per-request access log (`RUST_LOG=tenement::access=off` silences it).
pub const ACCESS_LOG: &str = "tenement::access";

/// Requests seen and in flight on one client connection, for its idle timeout.
#[derive(Default)]
pub(crate) struct ConnTracker {
    requests: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnTracker {
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one request in flight on its connection until dropped.
pub(crate) struct InFlight(Arc<ConnTracker>);

impl InFlight {
    pub(crate) fn new(tracker: &Arc<ConnTracker>) -> InFlight {
        tracker.requests.fetch_add(1, Ordering::Relaxed);
        tracker.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(tracker.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Exchange {
    start: Instant,
    /// What the access log line names; not collected when that log is off.
    logged: Option<Box<Logged>>,
    instance: Option<Arc<Entry>>,
    activity: ActivityGuard,
    _in_flight: Option<InFlight>,
    status: u16,
    bytes: u64,
    complete: bool,
}

struct Logged {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
}

impl Exchange {
    pub(crate) fn begin<B>(request: &Request<B>, in_flight: Option<InFlight>) -> Exchange {
        let logged = tracing::enabled!(target: ACCESS_LOG, tracing::Level::INFO).then(|| {
            Box::new(Logged {
                method: request.method().clone(),
                uri: request.uri().clone(),
                host: request.headers().get(http::header::HOST).cloned(),
            })
        });
        Exchange {
            start: Instant::now(),
            logged,
            instance: None,
            activity: ActivityGuard::none(),
            _in_flight: in_flight,
            status: 0,
            bytes: 0,
            complete: false,
        }
    }

    pub(crate) fn set_instance(&mut self, instance: Arc<Entry>, activity: ActivityGuard) {
        self.instance = Some(instance);
        self.activity = activity;
    }

    /// Hands the activity guard to whoever keeps the instance busy longer (an upgraded tunnel).
    pub(crate) fn take_activity(&mut self) -> ActivityGuard {
        std::mem::replace(&mut self.activity, ActivityGuard::none())
    }

    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub(crate) fn add_bytes(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    pub(crate) fn set_complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        // Requests answered before routing are counted where they are answered (`conn`).
        if let Some(instance) = &self.instance {
            instance.requests.finished(self.status, elapsed);
        }
        let Some(logged) = &self.logged else { return };
        let host = logged
            .uri
            .host()
            .or_else(|| logged.host.as_ref().and_then(|h| h.to_str().ok()))
            .unwrap_or("-");
        let instance = self.instance.as_ref().map_or("-", |i| &i.label);
        let path = logged.uri.path_and_query().map_or("/", |p| p.as_str());
        tracing::info!(
            target: ACCESS_LOG,
            host,
            instance,
            method = logged.method.as_str(),
            path,
            status = self.status,
            bytes = self.bytes,
            ms = format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
            complete = self.complete,
        );
    }
}
