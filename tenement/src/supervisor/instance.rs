//! One instance as the supervisor holds it: its service, its status (watched by anyone
//! waiting for it to become ready), the handle of its run loop, and its activity.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Instant, SystemTime},
};

use tokio::sync::{watch, Notify};

use super::{
    ahead::Ahead,
    freeze::Thaw,
    idle::Activity,
    state::{InstanceInfo, InstanceState},
    Shared,
};
use crate::{
    config::{InstanceName, Service},
    monitor::InstanceStats,
};

/// How a run loop is asked to end, and so what state the instance is left in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// `stop`: stopped by an operator, held so (no wake on request) until started again.
    Stop,
    /// Idle: sleeping until the next request.
    Sleep,
    /// tenement shuts down: stopped, still wanted running at the next start.
    Shutdown,
    /// `restart`: stopped for a moment, started again by the caller.
    Restart,
    /// Frozen and stopped to give memory back under memory pressure (`pressure.rs`):
    /// sleeping until the next request, like `Sleep`. The reason is the event's detail.
    Pressure,
}

#[derive(Clone, Debug)]
pub struct Status {
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// Where the current process listens (its port, or its unix socket).
    pub endpoint: Option<crate::endpoint::Endpoint>,
    pub weight: u8,
    pub restarts: u32,
    pub started_at: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Stopped by an operator: requests do not wake it, tenement does not start it, until
    /// `start`, `spawn` or `restart` (kept in the store across restarts of tenement).
    pub held: bool,
    /// The last failure happened before any process existed (bad command, missing runsc):
    /// waiters get `StartError::Spawn`.
    pub cannot_start: bool,
    /// Attempts that ended before the process was ready (exited, or not ready within
    /// `startup_timeout`): a waiter seeing it grow gets `last_error` at once instead of
    /// waiting out its deadline while restarts go on.
    pub start_failures: u64,
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<std::path::PathBuf>,
    /// The directory whose memory files count the instance's memory (the v2 group, or the
    /// v1 memory controller's on hybrid hosts).
    pub memory_cgroup: Option<std::path::PathBuf>,
    /// While the kernel's TCP counters show a storm: why (`kernel: 140 TCP retransmits/s`).
    /// Keeps the instance `degraded` even when its health checks pass.
    pub kernel_trouble: Option<String>,
    pub network: Option<super::state::InstanceNetwork>,
}

/// The run loop of a started instance.
pub struct RunHandle {
    pub stop: watch::Sender<Option<StopKind>>,
    pub done: watch::Receiver<bool>,
}

impl RunHandle {
    pub fn finished(&self) -> bool {
        *self.done.borrow()
    }

    pub fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }
}

pub struct Instance {
    pub name: InstanceName,
    /// Its service's definition: replaced by a reload (see `reconcile.rs`); a process runs
    /// with the definition it was started with.
    service: std::sync::RwLock<Arc<Service>>,
    pub status: watch::Sender<Status>,
    pub run: Mutex<Option<RunHandle>>,
    pub activity: Mutex<Activity>,
    /// Notified when the kernel sees the instance listen: readiness need not wait for the
    /// next connect poll.
    pub listening: Notify,
    /// Over `storage_quota_mb` at the last measurement (an event is recorded on crossing).
    pub over_quota: AtomicBool,
    /// Bytes its data directory used at the last measurement; `u64::MAX` before the first.
    pub disk_used: AtomicU64,
    /// The sampler's latest stats of the current process; `None` while none runs.
    pub stats: Mutex<Option<InstanceStats>>,
    /// Its next start, prepared while it sleeps (`ahead.rs`).
    ahead: Mutex<Option<Ahead>>,
}

impl Instance {
    /// The service definition the next start uses.
    pub fn service(&self) -> Arc<Service> {
        self.service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the definition (a reload): the running process keeps the old one until the
    /// next start.
    pub fn set_service(&self, service: Service) {
        *self.service.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(service);
    }

    /// A known instance without a process: `stopped` when an operator's stop holds it,
    /// else `sleeping` (the next request starts it).
    pub fn new(name: InstanceName, service: Service, weight: u8, held: bool) -> Instance {
        let status = Status {
            state: if held {
                InstanceState::Stopped
            } else {
                InstanceState::Sleeping
            },
            held,
            pid: None,
            port: None,
            endpoint: None,
            weight,
            restarts: 0,
            started_at: None,
            last_error: None,
            cannot_start: false,
            start_failures: 0,
            cgroup_id: None,
            cgroup_path: None,
            memory_cgroup: None,
            kernel_trouble: None,
            network: None,
        };
        Instance {
            name,
            service: std::sync::RwLock::new(Arc::new(service)),
            status: watch::channel(status).0,
            run: Mutex::new(None),
            activity: Mutex::new(Activity::new()),
            listening: Notify::new(),
            over_quota: AtomicBool::new(false),
            disk_used: AtomicU64::new(u64::MAX),
            stats: Mutex::new(None),
            ahead: Mutex::new(None),
        }
    }

    pub fn info(&self) -> InstanceInfo {
        let s = self.status.borrow();
        InstanceInfo {
            name: self.name.clone(),
            state: s.state,
            pid: s.pid,
            port: s.port,
            socket: s
                .endpoint
                .as_ref()
                .and_then(|e| e.socket_path())
                .map(|p| p.to_path_buf()),
            endpoint: s.endpoint.clone(),
            weight: s.weight,
            restarts: s.restarts,
            started_at: s.started_at,
            last_error: s.last_error.clone(),
            cgroup_id: s.cgroup_id,
            cgroup_path: s.cgroup_path.clone(),
            memory_cgroup: s.memory_cgroup.clone(),
            network: s.network.clone(),
            disk_used_bytes: Some(self.disk_used.load(Ordering::Relaxed))
                .filter(|&bytes| bytes != u64::MAX),
            storage_quota_mb: self.service().storage_quota_mb,
        }
    }

    pub fn state(&self) -> InstanceState {
        self.status.borrow().state
    }

    pub fn lock_run(&self) -> MutexGuard<'_, Option<RunHandle>> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lock_ahead(&self) -> MutexGuard<'_, Option<Ahead>> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lock_activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts as traffic for the idle reaper.
    pub fn touch(&self) {
        self.lock_activity().last = Instant::now();
    }

    pub fn stats(&self) -> Option<InstanceStats> {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_stats(&self, stats: Option<InstanceStats>) {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }

    pub fn set_over_quota(&self, over: bool) -> bool {
        self.over_quota.swap(over, Ordering::Relaxed)
    }
}

/// An instance's activity as the proxy counts it: each open connection or request, from
/// before the proxy connects until it ends. Opening and closing count as activity; without
/// kernel counters, the instance is never idle while any is open (with them, only traffic
/// counts: see `idle.rs`).
pub(super) struct Meter {
    pub(super) shared: Arc<Shared>,
    pub(super) instance: Arc<Instance>,
}

impl crate::proxy::ActivityMeter for Meter {
    /// Also thaws a frozen instance: the proxy opens before it connects, so a request never
    /// meets a frozen process (`freeze.rs`).
    fn open(&self) {
        let mut activity = self.instance.lock_activity();
        activity.open += 1;
        activity.last = Instant::now();
        self.shared
            .thaw_locked(&self.instance, &mut activity, Thaw::Request);
    }

    fn upgraded(&self) {
        self.instance.lock_activity().tunnels += 1;
    }

    fn close(&self, tunnel: bool) {
        let mut activity = self.instance.lock_activity();
        activity.open = activity.open.saturating_sub(1);
        if tunnel {
            activity.tunnels = activity.tunnels.saturating_sub(1);
        }
        activity.last = Instant::now();
    }
}
