//! Time limits on client connections, enforced from outside the connections' own tasks:
//! those are woken for every request, and a timer polled with each wake-up would cost on
//! every request. Each worker thread keeps a list of its connections and looks at them a
//! few times per `header_read_timeout`; a connection with no request in flight that did not
//! bring a new request head within that time (counted from connecting or from its last
//! request) is closed. That bounds slow and silent clients and idle keep-alive connections
//! alike, HTTP/2 included.

use std::{cell::RefCell, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::oneshot, task::AbortHandle, time::Instant};

use super::{exchange::ConnTracker, server::Shared};

/// One connection as its watcher sees it.
pub(crate) struct Watched {
    tracker: Arc<ConnTracker>,
    task: AbortHandle,
    stop: Option<oneshot::Sender<()>>,
    peer: SocketAddr,
    quiet_since: Instant,
    requests_seen: u64,
}

impl Watched {
    pub(crate) fn new(
        tracker: Arc<ConnTracker>,
        task: AbortHandle,
        stop: oneshot::Sender<()>,
        peer: SocketAddr,
    ) -> Watched {
        Watched {
            tracker,
            task,
            stop: Some(stop),
            peer,
            quiet_since: Instant::now(),
            requests_seen: 0,
        }
    }

    /// False once the connection is over (it ended, or was closed now for idling).
    fn check(&mut self, now: Instant, limit: Duration) -> bool {
        if self.task.is_finished() {
            return false;
        }
        let requests = self.tracker.requests();
        if requests != self.requests_seen || self.tracker.in_flight() > 0 {
            self.requests_seen = requests;
            self.quiet_since = now;
        } else if now.duration_since(self.quiet_since) >= limit {
            tracing::debug!(
                "closing connection from {}: no request within {limit:?}",
                self.peer
            );
            self.task.abort();
            return false;
        }
        true
    }

    /// Asks for a graceful end: requests in flight finish, then the connection closes.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How often connections are looked at.
fn tick(limit: Duration) -> Duration {
    (limit / 4).max(Duration::from_millis(10))
}

/// A worker's connections, each in a slot of its own that the connection empties itself
/// when it ends: a finished connection's task and buffers are freed at once, not at the
/// next look, which keeps memory small and warm when connections come and go quickly.
#[derive(Default)]
struct List {
    slots: Vec<Option<(u64, Watched)>>,
    vacant: Vec<usize>,
    /// Tells a slot's occupants apart, so that a guard never empties a reused slot.
    next_token: u64,
}

impl List {
    fn reserve(&mut self) -> (usize, u64) {
        self.next_token += 1;
        let slot = self.vacant.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        (slot, self.next_token)
    }

    fn live(&mut self) -> impl Iterator<Item = &mut Watched> {
        self.slots.iter_mut().flatten().map(|(_, watched)| watched)
    }

    /// Keeps the connections `keep` says yes to.
    fn retain(&mut self, mut keep: impl FnMut(&mut Watched) -> bool) {
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if entry.as_mut().is_some_and(|(_, watched)| !keep(watched)) {
                *entry = None;
                self.vacant.push(slot);
            }
        }
    }
}

thread_local! {
    /// The connections of the worker thread this runs on (empty elsewhere).
    static WATCHED: RefCell<List> = RefCell::default();
}

/// Held by a connection's task: takes the connection off its worker's list when dropped.
pub(crate) struct Unwatch {
    slot: usize,
    token: u64,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        // `try_`: the thread may be ending, or (never on the request path) the list busy.
        let _ = WATCHED.try_with(|list| {
            let Ok(mut list) = list.try_borrow_mut() else {
                return;
            };
            let Some(entry) = list.slots.get_mut(self.slot) else {
                return;
            };
            if entry
                .as_ref()
                .is_some_and(|(token, _)| *token == self.token)
            {
                *entry = None;
                list.vacant.push(self.slot);
            }
        });
    }
}

/// Adds a connection to this worker's list: `start` spawns it, holding the `Unwatch` it is
/// given for as long as it runs.
pub(crate) fn watch_here(start: impl FnOnce(Unwatch) -> Watched) {
    let (slot, token) = WATCHED.with_borrow_mut(List::reserve);
    let watched = start(Unwatch { slot, token });
    WATCHED.with_borrow_mut(|list| list.slots[slot] = Some((token, watched)));
}

/// The worker's watcher: runs until shutdown, then asks every connection to finish and
/// waits for them (up to `shutdown_grace`).
pub(crate) async fn watch_worker(shared: Arc<Shared>) {
    let limit = shared.options.header_read_timeout;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick(limit)) => {
                let now = Instant::now();
                WATCHED.with_borrow_mut(|list| list.retain(|watched| watched.check(now, limit)));
            }
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
    }
    WATCHED.with_borrow_mut(|list| list.live().for_each(Watched::stop));
    shared.drain(shared.options.shutdown_grace).await;
    WATCHED.with_borrow_mut(|list| {
        list.live().for_each(|watched| watched.task.abort());
        list.retain(|_| false);
    });
}

/// The same watch for one connection served outside the workers (`Proxy::serve_connection`).
pub(crate) async fn watch_one(shared: Arc<Shared>, mut watched: Watched) {
    let limit = shared.options.header_read_timeout;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick(limit)) => {
                if !watched.check(Instant::now(), limit) {
                    return;
                }
            }
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
    }
    watched.stop();
    let deadline = Instant::now() + shared.options.shutdown_grace;
    while !watched.task.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watched.task.abort();
}
