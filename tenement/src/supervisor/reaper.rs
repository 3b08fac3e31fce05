//! Periodic housekeeping: puts idle instances to sleep, and measures data directories
//! (shown by the API and `ps --json`) against `storage_quota_mb`. Where the quota is a
//! mounted file system (`storage.rs`) the kernel enforces it and this only reads its usage;
//! elsewhere, going over is recorded as an event and a warning in the instance's log.

use std::{
    path::Path,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use super::{
    disk_usage::disk_usage, instance::StopKind, prepare, pressure, state::InstanceState, storage,
    Shared,
};
use crate::store::EventKind;

const IDLE_CHECK: Duration = Duration::from_secs(1);
const QUOTA_CHECK: Duration = Duration::from_secs(30);

pub async fn run(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(IDLE_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_quota_check: Option<Instant> = None;
    let subtree = match shared.upgrade() {
        Some(shared) => shared
            .cgroups
            .as_ref()
            .and_then(|tree| tree.unified_dir().map(Path::to_path_buf)),
        None => return,
    };
    // A memory-pressure stop in progress: the next waits for it.
    let mut relieving: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.is_shutting_down() {
            return;
        }
        // Pressure first: the instance it stops is `stopping` at once, so the idle stop
        // below does not pick it too.
        if relieving.as_ref().is_none_or(|stop| stop.is_finished()) {
            // Built each tick: a reload may have changed the thresholds.
            let gauge = pressure::Gauge::new(&shared.config().settings, subtree.clone());
            relieving = shared.relieve_pressure(&gauge).or(relieving);
        }
        put_idle_to_sleep(&shared);
        shared.freeze_idle();
        if last_quota_check.is_none_or(|at| at.elapsed() >= QUOTA_CHECK) {
            last_quota_check = Some(Instant::now());
            tokio::spawn(measure_storage(shared.clone()));
        }
    }
}

/// Puts to sleep every instance idle for its `idle_timeout` (what idle means: `idle.rs`).
fn put_idle_to_sleep(shared: &Arc<Shared>) {
    for instance in shared.snapshot() {
        let timeout = instance.service().idle_timeout;
        let state = instance.state();
        if timeout == 0 || !(state.serves() || state == InstanceState::Frozen) {
            continue;
        }
        let kernel = shared.kernel_traffic(&instance);
        let Some(idle_since) = instance.lock_activity().idle_since(kernel) else {
            continue;
        };
        if idle_since.elapsed() >= Duration::from_secs(timeout) {
            tracing::info!("{}: idle for {timeout}s, going to sleep", instance.name);
            shared
                .logs
                .system(&instance.name, &format!("idle for {timeout}s: sleeping"));
            if let Err(err) = shared.store.set_desired(&instance.name, false) {
                tracing::warn!("{err:#}");
            }
            let shared = shared.clone();
            tokio::spawn(async move { shared.stop_run(&instance, StopKind::Sleep).await });
        }
    }
}

async fn measure_storage(shared: Arc<Shared>) {
    for instance in shared.snapshot() {
        let dir = prepare::data_dir(&shared.config().settings.data_dir, &instance.name);
        // A quota file system reports its usage at once; a plain directory is walked.
        let measured = tokio::task::spawn_blocking(move || {
            storage::used_bytes(&dir).or_else(|| disk_usage(&dir))
        })
        .await;
        let Ok(Some(bytes)) = measured else {
            continue;
        };
        instance
            .disk_used
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        let Some(quota_mb) = instance.service().storage_quota_mb else {
            continue;
        };
        let over = bytes > quota_mb * 1024 * 1024;
        let was_over = instance.set_over_quota(over);
        if over && !was_over {
            let detail = format!(
                "data directory uses {} MB, over storage_quota_mb = {quota_mb}",
                bytes.div_ceil(1024 * 1024)
            );
            tracing::warn!("{}: {detail}", instance.name);
            shared
                .logs
                .system(&instance.name, &format!("warning: {detail}"));
            shared.record(&instance, EventKind::QuotaExceeded, &detail);
        }
    }
}
