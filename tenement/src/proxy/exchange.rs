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

use http::{HeaderValue, Method, Request, Uri, Version};

use super::{
    access_log::Record, backend::ActivityGuard, conn::ConnContext, cork::Cork, table::Entry,
};

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
    /// From sending the request to the instance until its response head arrived.
    upstream: Option<std::time::Duration>,
    instance: Option<Arc<Entry>>,
    activity: ActivityGuard,
    _in_flight: Option<InFlight>,
    status: u16,
    bytes: u64,
    complete: bool,
    /// The connection ends after this answer: its socket, to cork once the answer is all
    /// in hand (`cork.rs`).
    closing: Option<Cork>,
}

/// What the access log line says of the request.
pub(crate) struct Logged {
    /// The connection's context (its log and client address): a per-connection `Arc`, so
    /// holding it touches no reference count shared with other cores.
    pub conn: Arc<ConnContext>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

impl Exchange {
    /// `logged_on`: the connection, when its proxy keeps an access log (`None`: the
    /// request is not logged).
    pub(crate) fn begin<B>(
        request: &Request<B>,
        in_flight: Option<InFlight>,
        logged_on: Option<&Arc<ConnContext>>,
    ) -> Exchange {
        let logged = logged_on.map(|conn| {
            let headers = request.headers();
            Box::new(Logged {
                conn: conn.clone(),
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                host: headers.get(http::header::HOST).cloned(),
                user_agent: headers.get(http::header::USER_AGENT).cloned(),
            })
        });
        Exchange::started_at(Instant::now(), in_flight, logged)
    }

    /// A request that arrived at `start`, logged as `logged` says (`None`: not logged).
    pub(crate) fn started_at(
        start: Instant,
        in_flight: Option<InFlight>,
        logged: Option<Box<Logged>>,
    ) -> Exchange {
        Exchange {
            start,
            logged,
            upstream: None,
            instance: None,
            activity: ActivityGuard::none(),
            _in_flight: in_flight,
            status: 0,
            bytes: 0,
            complete: false,
            closing: None,
        }
    }

    /// The connection ends after this answer (its socket is `cork`).
    pub(crate) fn set_closing(&mut self, cork: Cork) {
        self.closing = Some(cork);
    }

    /// The answer is all in hand: on a closing connection, it leaves with the FIN.
    pub(crate) fn answer_in_hand(&mut self) {
        if let Some(cork) = self.closing.take() {
            cork.hold();
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

    /// Whether the access log wants the upstream time (else nobody reads the clock for it).
    pub(crate) fn times_upstream(&self) -> bool {
        self.logged.is_some()
    }

    pub(crate) fn set_upstream_time(&mut self, upstream: std::time::Duration) {
        self.upstream = Some(upstream);
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
        let Some(log) = logged.conn.access_log() else {
            return;
        };
        let host = match logged.uri.host() {
            Some(host) => host.as_bytes(),
            None => logged.host.as_ref().map_or(&b"-"[..], |h| h.as_bytes()),
        };
        log.record(&Record {
            started: self.start,
            duration: elapsed,
            upstream: self.upstream,
            client: logged.conn.peer_ip().as_bytes(),
            host,
            method: logged.method.as_str(),
            path: logged.uri.path_and_query().map_or("/", |p| p.as_str()),
            protocol: match logged.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            },
            status: self.status,
            bytes: self.bytes,
            instance: self.instance.as_ref().map(|i| &*i.label),
            complete: self.complete,
            user_agent: logged.user_agent.as_ref().map(HeaderValue::as_bytes),
        });
    }
}
