//! File descriptors tenement must not lose, by name: `log:SERVICE:ID:stdout` and
//! `log:SERVICE:ID:stderr` are the read ends of an instance's output pipes, handed over by
//! the guard of an earlier tenement (see `supervisor/guard.rs`). One registry for every such
//! fd, so a handover (guard, upgrade, systemd's `LISTEN_FDNAMES`) speaks of names.
//!
//! This is the smallest version `adopt` needs; the held sockets of socket activation are
//! meant to live here too.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    sync::{Mutex, MutexGuard},
};

#[derive(Default)]
pub struct HeldFds {
    fds: Mutex<BTreeMap<String, OwnedFd>>,
}

impl HeldFds {
    pub fn new() -> HeldFds {
        HeldFds::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, OwnedFd>> {
        self.fds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `fd` under `name`; an fd held under that name before is closed.
    pub fn insert(&self, name: &str, fd: OwnedFd) {
        self.lock().insert(name.to_string(), fd);
    }

    /// Takes `name` out of the registry (its user owns it from now on).
    pub fn take(&self, name: &str) -> Option<OwnedFd> {
        self.lock().remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// The name of the read end of `instance`'s stdout or stderr (`log:web:a:stdout`).
pub fn log_name(instance: &crate::config::InstanceName, stream: crate::logs::Stream) -> String {
    format!("log:{}:{}:{stream}", instance.service, instance.id)
}
