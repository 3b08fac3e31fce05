//! This node's lease and registration, kept alive in the background; the re-listing of
//! nodes and placements that keeps the view current; and fencing.
//!
//! Fencing: when a renewal finds the lease gone (this node was stopped, or cut off, for
//! longer than `lease_ttl`), its placements are gone too and another node may run its
//! tenants already; so it first puts every instance to sleep, then takes a new lease and
//! serves again. Between the lease's certain end and that moment the proxy refuses to
//! serve (`Inner::is_fresh`). When no etcd member answers at all, nobody can place
//! anything, so the node keeps serving what it runs and refuses only new placements.

use std::{
    sync::{atomic::Ordering, Weak},
    time::Duration,
};

use super::{
    etcd::{EtcdError, KeyValue},
    keys::{self, NodeRecord},
    Inner,
};
use crate::config::InstanceName;

/// First registration: a lease, the node record, the first listing.
pub(super) async fn join(inner: &Inner) -> anyhow::Result<()> {
    let sent = inner.now_ms();
    let lease = inner.etcd.grant(inner.ttl.as_secs()).await?;
    inner.lease.store(lease, Ordering::SeqCst);
    register(inner).await?;
    relist(inner).await?;
    inner
        .fresh_until
        .store(sent + inner.ttl.as_millis() as u64, Ordering::Release);
    Ok(())
}

pub(super) async fn register(inner: &Inner) -> Result<(), EtcdError> {
    let record = inner.own_record();
    let value = serde_json::to_vec(&record).unwrap_or_default();
    inner
        .etcd
        .put(&keys::node(&inner.node), &value, record.lease)
        .await
        .map(drop)
}

/// Reads every node and placement: the view becomes what etcd holds, unless the watch has
/// already applied newer changes. Returns the revision of the first listing: every change
/// after it is in this listing or comes through the watch from the next revision on.
pub(super) async fn relist(inner: &Inner) -> Result<i64, EtcdError> {
    let (nodes, revision) = inner.etcd.list(keys::NODES).await?;
    let (placements, _) = inner.etcd.list(keys::PLACEMENTS).await?;
    let nodes = nodes
        .iter()
        .filter_map(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok())
        .map(|record| (record.name.clone(), record))
        .collect();
    let placements = placements.iter().filter_map(placement).collect();
    {
        let mut view = inner.view_mut();
        // Changes after `revision` are applied again by the watch (in order, so the last
        // one of each key wins); changes the watch applied after a listing older than them
        // must not be undone by it.
        if revision >= view.revision {
            view.nodes = nodes;
            view.placements = placements;
            view.revision = revision;
        }
    }
    super::shared::relist(inner).await?;
    Ok(revision)
}

fn placement(kv: &KeyValue) -> Option<(InstanceName, String)> {
    let name = kv.key.strip_prefix(keys::PLACEMENTS)?;
    let name = InstanceName::parse(name).ok()?;
    Some((name, String::from_utf8(kv.value.clone()).ok()?))
}

/// Renews, registers and re-lists about four times per lease, until the fleet is dropped.
pub(super) async fn run(inner: Weak<Inner>) {
    let tick = {
        let Some(inner) = inner.upgrade() else { return };
        (inner.ttl / 4).max(Duration::from_millis(250))
    };
    let mut etcd_was_down = false;
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else { return };
        match renew(&inner).await {
            Ok(()) => {
                if etcd_was_down {
                    tracing::info!("fleet: etcd answers again");
                }
                etcd_was_down = false;
            }
            Err(EtcdError::Unreachable(why)) => {
                if !etcd_was_down {
                    tracing::warn!(
                        "fleet: no etcd member answers ({why}); serving what runs here, \
                         refusing new placements"
                    );
                }
                etcd_was_down = true;
                inner.etcd_down.store(true, Ordering::Release);
                continue;
            }
            Err(error) => tracing::warn!("fleet: {error}"),
        }
        inner.etcd_down.store(false, Ordering::Release);
    }
}

async fn renew(inner: &Inner) -> Result<(), EtcdError> {
    let sent = inner.now_ms();
    let lease = inner.lease.load(Ordering::SeqCst);
    let left = inner.etcd.keep_alive(lease).await?;
    if left <= 0 {
        fence(inner).await;
        return rejoin(inner).await;
    }
    inner
        .fresh_until
        .store(sent + left as u64 * 1000, Ordering::Release);
    register(inner).await?;
    relist(inner).await.map(drop)
}

/// The lease is gone: so are this node's placements. Stop serving and stop every instance
/// before anything else.
async fn fence(inner: &Inner) {
    inner.fresh_until.store(0, Ordering::Release);
    tracing::warn!(
        "fleet: node {} lost its etcd lease (stopped or cut off for longer than lease_ttl): \
         stopping its instances before serving again",
        inner.node
    );
    let stopped = inner.supervisor.sleep_all().await;
    {
        let node = inner.node.clone();
        inner
            .view_mut()
            .placements
            .retain(|_, owner| owner != &node);
    }
    tracing::warn!(
        "fleet: fenced; stopped {} instance(s): {}",
        stopped.len(),
        stopped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
}

async fn rejoin(inner: &Inner) -> Result<(), EtcdError> {
    let sent = inner.now_ms();
    let lease = inner.etcd.grant(inner.ttl.as_secs()).await?;
    inner.lease.store(lease, Ordering::SeqCst);
    register(inner).await?;
    relist(inner).await?;
    inner
        .fresh_until
        .store(sent + inner.ttl.as_millis() as u64, Ordering::Release);
    tracing::info!("fleet: node {} rejoined with a new lease", inner.node);
    Ok(())
}

/// `MemAvailable` from /proc/meminfo, in bytes (0 when unreadable).
pub(super) fn memory_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}
