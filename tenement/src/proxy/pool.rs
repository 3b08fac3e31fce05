//! Keep-alive connections to one instance. A connection comes back when the response it
//! carried has been read to the end; the most recently used one is taken first, so that a
//! quiet instance's extra connections age out.
//!
//! Each proxy worker thread has its own shelf: a connection is registered with the event
//! loop of the thread that opened it, and stays with that thread.

use std::{
    cell::Cell,
    collections::VecDeque,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use super::upstream::Upstream;
use crate::endpoint::Endpoint;

/// Idle connections kept per instance; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused.
const IDLE_LIFETIME: Duration = Duration::from_secs(60);

type Shelf = Mutex<VecDeque<(Box<Upstream>, Instant)>>;

/// A shelf on cache lines of its own: every request locks its worker's shelf twice (take,
/// put), and shelves packed side by side would make the workers' cores trade the line.
#[repr(align(128))]
#[derive(Default)]
struct Padded(Shelf);

pub(crate) struct Pool {
    shelves: Box<[Padded]>,
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as proxy worker `index` (threads that are not use shelf 0).
pub(crate) fn set_worker(index: usize) {
    WORKER.set(index);
}

/// The proxy worker the current thread is (0 for threads that are not one).
pub(crate) fn worker() -> usize {
    WORKER.get()
}

/// One slot per CPU: what per-worker state (shelves, counters) is split into.
pub(crate) fn shelf_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            shelves: (0..shelf_count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl Pool {
    fn shelf(&self) -> &Shelf {
        &self.shelves[WORKER.get() % self.shelves.len()].0
    }

    /// An idle connection to `endpoint` that the instance has not closed meanwhile.
    pub(crate) fn take(&self, endpoint: &Endpoint) -> Option<Box<Upstream>> {
        let mut idle = self.shelf().lock().unwrap_or_else(|p| p.into_inner());
        while let Some((connection, since)) = idle.pop_back() {
            if connection.endpoint() == endpoint
                && since.elapsed() < IDLE_LIFETIME
                && connection.is_usable()
            {
                return Some(connection);
            }
        }
        None
    }

    pub(crate) fn put(&self, connection: Box<Upstream>) {
        let now = Instant::now();
        let mut idle = self.shelf().lock().unwrap_or_else(|p| p.into_inner());
        while idle.front().is_some_and(|(_, since)| {
            idle.len() >= MAX_IDLE || now.duration_since(*since) >= IDLE_LIFETIME
        }) {
            idle.pop_front();
        }
        idle.push_back((connection, now));
    }
}
