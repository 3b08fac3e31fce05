//! A wake with nothing of ours left in it: while an instance sleeps, the next start is
//! prepared (data directory, uid, port, cgroup with its limits, kernel counters and network
//! policy for that cgroup, command line and environment), so that the wake only forks into
//! the ready cgroup and execs. One `Ahead` per instance, taken by its next attempt.
//!
//! Dropped, cgroup and kernel entries removed, port released, whenever it could go stale or
//! be left behind: the definition changes (a reload), any stop is asked of the instance
//! (an operator's stop, the service removed, tenement shutting down). Should tenement die
//! instead, the guard's sweep removes the (empty) cgroup like any other.

use std::sync::Arc;

use super::{
    instance::Instance,
    prepare::{self, Prepared},
    runner,
    state::InstanceNetwork,
    Shared,
};
use crate::config::{Isolation, Service};

/// The next start of a sleeping instance, ready but for the fork.
pub struct Ahead {
    pub prepared: Prepared,
    pub network: InstanceNetwork,
    /// The definition it was built from: a different one makes it stale.
    service: Arc<Service>,
}

/// Whether the next start of `service` can be prepared while it sleeps. Not with a quota
/// image (mounted from a start to the next stop), a sandbox (runsc's bundle is per start),
/// a held socket (its own life), a data directory removed at every stop, or an `env_file`
/// (read at each start, as documented: a secret changed on disk applies at the next wake).
fn preparable(shared: &Shared, service: &Service) -> bool {
    shared.cgroups.is_some()
        && matches!(service.isolation, Isolation::Process | Isolation::Namespace)
        && service.storage_quota_mb.is_none()
        && service.storage_persist
        && !service.socket_activation
        && service.env_file.is_none()
}

/// Prepares the next start of `instance`, which just went to sleep. A failure is only
/// logged: the wake prepares again and reports it where a caller sees it.
pub fn prepare(shared: &Shared, instance: &Instance) {
    let service = instance.service();
    if !preparable(shared, &service) || shared.is_shutting_down() {
        return;
    }
    discard(shared, instance);
    let name = &instance.name;
    let prepared = match prepare::prepare(shared, name, &service) {
        Ok(prepared) => prepared,
        Err(err) => {
            tracing::debug!("{name}: not prepared ahead: {err:#}");
            return;
        }
    };
    let cgroup_id = prepared.cgroup.as_ref().and_then(|c| c.id());
    let port = prepared.port.as_ref().map_or(0, |p| p.port());
    match runner::confine(shared, instance, cgroup_id, port) {
        Ok(network) => {
            *instance.lock_ahead() = Some(Ahead {
                prepared,
                network,
                service,
            });
        }
        Err(reason) => {
            tracing::debug!("{name}: not prepared ahead: {reason}");
            release(shared, prepared);
        }
    }
}

/// The prepared start, if there is one and it was built from the current definition.
pub fn take(shared: &Shared, instance: &Instance) -> Option<(Prepared, InstanceNetwork)> {
    let ahead = instance.lock_ahead().take()?;
    // A data directory removed while it slept (by hand) is made again by a fresh prepare.
    let data_dir = prepare::data_dir(&shared.config().settings.data_dir, &instance.name);
    if Arc::ptr_eq(&ahead.service, &instance.service()) && data_dir.is_dir() {
        return Some((ahead.prepared, ahead.network));
    }
    release(shared, ahead.prepared);
    None
}

/// Drops what was prepared: kernel entries, cgroup, port.
pub fn discard(shared: &Shared, instance: &Instance) {
    let ahead = instance.lock_ahead().take();
    if let Some(ahead) = ahead {
        release(shared, ahead.prepared);
    }
}

fn release(shared: &Shared, prepared: Prepared) {
    if let Some(cgroup) = &prepared.cgroup {
        if let Some(id) = cgroup.id() {
            shared.monitor_lock().unregister(id);
        }
        if let Err(err) = cgroup.remove() {
            tracing::warn!("removing a prepared cgroup: {err:#}");
        }
    }
    // The port lease goes with `prepared`.
}
