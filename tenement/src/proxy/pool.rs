//! Keep-alive connections to one instance. A connection comes back when the response it
//! carried has been read to the end; the most recently used one is taken first, so that a
//! quiet instance's extra connections age out.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::upstream::Upstream;

/// Idle connections kept per instance; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused.
const IDLE_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<VecDeque<(Upstream, Instant)>>,
}

impl Pool {
    /// An idle connection to `port` that the instance has not closed meanwhile.
    pub(crate) fn take(&self, port: u16) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((connection, since)) = idle.pop_back() {
            if connection.port() == port
                && since.elapsed() < IDLE_LIFETIME
                && connection.is_usable()
            {
                return Some(connection);
            }
        }
        None
    }

    pub(crate) fn put(&self, connection: Upstream) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle.front().is_some_and(|(_, since)| {
            idle.len() >= MAX_IDLE || now.duration_since(*since) >= IDLE_LIFETIME
        }) {
            idle.pop_front();
        }
        idle.push_back((connection, now));
    }
}
