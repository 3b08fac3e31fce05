//! Instances: spawn, isolation, cgroups, health checks, restarts, idle stop, stop.
//!
//! [`Supervisor`] is the handle the rest of tenement uses. Each started instance has one run
//! loop (`runner.rs`); everything that wants it running (a request waking it, `spawn`, the
//! start of tenement) shares that loop and waits on the instance's status, so a thousand
//! concurrent requests to a sleeping tenant cause exactly one spawn.

mod activation;
mod adopt;
mod ahead;
mod backends;
pub mod cgroup;
mod disk_usage;
mod env_file;
mod environment;
mod failure;
mod fdpass;
mod freeze;
pub mod guard;
mod guard_link;
mod health;
mod identity;
mod idle;
pub mod init;
mod instance;
mod launch;
mod listener;
mod network;
mod ports;
mod prepare;
mod pressure;
mod privacy;
mod reaper;
mod reconcile;
mod restart;
mod runner;
mod sampler;
mod sandbox;
mod spawner;
mod state;
pub mod storage;
mod wake_steps;

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::{
    config::{Config, InstanceName, LiveConfig},
    endpoint::Endpoint,
    logs::LogHub,
    monitor::{InstanceStats, Monitor},
    proxy::ActivityMeter,
    store::{EventKind, Store, DEFAULT_WEIGHT},
};

use adopt::Adoption;
use cgroup::{CgroupLayout, CgroupTree};
use guard_link::GuardLink;
use instance::{Instance, RunHandle, Status, StopKind};
use ports::PortAllocator;
use spawner::Spawner;

pub use environment::DEFAULT_PATH;
pub use health::{
    CALM_SAMPLES, RESETS_PER_SEC_DEGRADED, RETRANSMITS_PER_SEC_DEGRADED, STORM_SAMPLES,
};
pub use idle::KernelTraffic;
pub use reconcile::Reconciled;
pub use sandbox::find_runsc;
pub use state::{InstanceInfo, InstanceNetwork, InstanceState, StartError};

/// Who wants an instance running: an operator's start ends a hold, a request does not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waker {
    Operator,
    Request,
}

/// Extra time a waiter gives a start beyond the service's `startup_timeout` (spawning,
/// backoff of a restart in progress).
const START_WAIT_SLACK: Duration = Duration::from_secs(5);

/// The kernel's view of the sockets of the cgroup with this v2 id (the eBPF monitor's);
/// `None` when the kernel does not count that cgroup. With it, the idle reaper goes by
/// traffic rather than open connections (see `idle.rs`).
pub type ActivitySource = Arc<dyn Fn(u64) -> Option<KernelTraffic> + Send + Sync>;

/// Told every routing weight an operator sets (the fleet shares them through etcd).
pub type WeightSink = Arc<dyn Fn(&[(InstanceName, u8)]) + Send + Sync>;

#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

/// State shared by the supervisor handle, the run loops and the reaper.
pub(crate) struct Shared {
    /// Replaced by a reload; read a snapshot with `config()`.
    config: LiveConfig,
    store: Store,
    logs: LogHub,
    monitor: Arc<Mutex<Monitor>>,
    cgroups: Option<CgroupTree>,
    /// The guard that keeps the instances for the next tenement (with cgroups only).
    guard: Option<GuardLink>,
    ports: PortAllocator,
    /// Held sockets of `socket_activation` services (in tenement's `HeldFds` registry).
    activation: activation::Activation,
    spawner: Spawner,
    instances: Mutex<BTreeMap<InstanceName, Arc<Instance>>>,
    changes: watch::Sender<u64>,
    activity_source: RwLock<Option<ActivitySource>>,
    weight_sink: RwLock<Option<WeightSink>>,
    shutting_down: std::sync::atomic::AtomicBool,
}

/// Creates (or finds) tenement's cgroup subtree for `config`: what `tenement serve` attaches
/// the eBPF monitor to before starting the supervisor.
pub fn cgroup_tree(config: &Config) -> Result<CgroupTree> {
    let layout = CgroupLayout::detect().context("reading the cgroup layout from /proc")?;
    CgroupTree::create(&layout, &config.settings.data_dir)
}

/// Asks the kernel for fast moves into cgroups (see `cgroup/dynmods.rs`): every start and
/// wake makes one. Failing that, starts are only slower, so it is a warning.
fn favor_dynamic_moves() {
    let layout = match CgroupLayout::detect() {
        Ok(layout) => layout,
        Err(err) => return tracing::warn!("reading the cgroup layout: {err}"),
    };
    let Some(unified) = &layout.unified else {
        return;
    };
    match cgroup::favor_dynamic_moves(&unified.mount) {
        Ok(true) => tracing::info!(
            "remounted {} with favordynmods: a starting instance joins its cgroups without \
             waiting for an RCU grace period (cgroup_favordynmods = false leaves the mount \
             alone)",
            unified.mount.display()
        ),
        Ok(false) => {}
        Err(err) => tracing::warn!(
            "{err:#}: each start waits a few milliseconds longer to join its cgroups"
        ),
    }
}

impl Supervisor {
    /// Creates the cgroup subtree and starts the guard; adopts the instances an earlier
    /// tenement left running (a crash, `kill -9`, an upgrade: see `adopt.rs`) and cleans
    /// what cannot be adopted (kills its processes by cgroup, removes the groups); then
    /// starts `[instances]` and every instance that was running when tenement last
    /// stopped. Returns without waiting for them to be ready.
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        logs: LogHub,
        monitor: Arc<Mutex<Monitor>>,
    ) -> Result<Supervisor> {
        let held = Arc::new(crate::held::HeldFds::new());
        Supervisor::start_with(config, store, logs, monitor, held).await
    }

    /// `start`, keeping the held sockets of `socket_activation` instances in `held` (the
    /// daemon's registry, which may hold sockets handed over by a previous tenement).
    pub async fn start_with(
        config: Arc<Config>,
        store: Store,
        logs: LogHub,
        monitor: Arc<Mutex<Monitor>>,
        held: Arc<crate::held::HeldFds>,
    ) -> Result<Supervisor> {
        let settings = &config.settings;
        let root = identity::running_as_root();
        let cgroups = match cgroup_tree(&config) {
            Ok(tree) => Some(tree),
            Err(err) if !root => {
                tracing::warn!(
                    "cgroups unavailable ({err:#}): no memory/cpu/pids limits, no OOM \
                     detection, and stopping kills by process group only"
                );
                None
            }
            Err(err) => return Err(err),
        };
        if root && settings.cgroup_favordynmods && cgroups.is_some() {
            favor_dynamic_moves();
        }
        if let Some(tree) = &cgroups {
            let missing = tree.missing_controllers();
            if !missing.is_empty() {
                tracing::warn!(
                    "cgroup controllers unavailable here: {} (their limits are not applied)",
                    missing.join(", ")
                );
            }
            tracing::info!(
                "cgroups: {}, instance groups under {}",
                tree.kind(),
                tree.dirs()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
        }
        if cgroups.is_none() && config.service.values().any(|s| s.freeze_after > 0) {
            tracing::warn!("freeze_after is ignored: freezing an instance needs its cgroup");
        }
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
        if root {
            // Tenants must reach their own directory below, never list the others.
            std::fs::set_permissions(&settings.data_dir, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("setting the mode of {}", settings.data_dir.display()))?;
        }
        let spawner = Spawner::start()?;
        let guard = match &cgroups {
            Some(tree) => Some(
                GuardLink::start(&spawner, tree, &settings.data_dir, settings.adopt_timeout)
                    .await?,
            ),
            None => None,
        };
        // Instances an earlier tenement left running are adopted; what cannot be is killed.
        let mut adoptions = BTreeMap::new();
        if let (Some(tree), Some(guard)) = (&cgroups, &guard) {
            let held = crate::held::HeldFds::new();
            guard.take_over(&settings.data_dir, &held);
            {
                // Adopted instances keep their kernel counters; this tenement's maps are
                // held from now on (replacing the earlier ones in the guard).
                let monitor = monitor.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(err) = monitor.take_previous(&held) {
                    tracing::warn!("kernel counters of adopted instances start from zero: {err:#}");
                }
                for (name, fd) in monitor.held_maps() {
                    guard.hold(name, fd);
                }
            }
            let sorted = adopt::sort(tree, &store, &config, &held).await?;
            if !sorted.killed.is_empty() {
                tracing::warn!(
                    "killed processes left by an earlier run of tenement in cgroups {}",
                    sorted.killed.join("; ")
                );
            }
            adoptions = sorted.adopted;
        } else {
            // Without cgroups instances died with the earlier tenement: nothing to adopt.
            for (name, _) in store.running()? {
                store.clear_running(&name)?;
            }
        }
        // Sandbox state of the earlier run: its processes are gone with their cgroups,
        // except those of adopted instances.
        if let Ok(entries) = std::fs::read_dir(settings.data_dir.join(".sandbox")) {
            for entry in entries.flatten() {
                let slug = entry.file_name().to_string_lossy().into_owned();
                if !adoptions.keys().any(|name| name.slug() == slug) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }

        {
            let monitor = monitor.lock().unwrap_or_else(|p| p.into_inner());
            let isolation = monitor.network_isolation();
            if isolation.is_active() {
                monitor
                    .set_host_ports(&network::host_ports(&config))
                    .context("protecting port_range and tenement's listeners")?;
                tracing::info!(
                    "network isolation: active (each instance binds only its own port, on \
                     loopback; port_range and the management API are closed to tenants)"
                );
            } else if cgroups.is_some() {
                tracing::warn!("{isolation}");
            } else {
                tracing::warn!(
                    "network isolation off: tenants are NOT network-isolated (no cgroup v2 \
                     group per instance to attach the policy to)"
                );
            }
        }
        let shared = Arc::new(Shared {
            ports: PortAllocator::new(settings.port_range),
            activation: activation::Activation::new(held),
            spawner,
            cgroups,
            guard,
            instances: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            activity_source: RwLock::new(None),
            weight_sink: RwLock::new(None),
            shutting_down: false.into(),
            config: LiveConfig::new(config.clone()),
            store,
            logs,
            monitor,
        });

        // Every known instance: configured ones, and those the store remembers. A
        // configured instance starts unless it was asleep or held by an operator's stop when
        // tenement last ran: those stay so.
        let records = shared.store.known_instances()?;
        let resting = |name: &InstanceName| {
            records
                .iter()
                .find(|r| &r.name == name && !r.desired_running)
        };
        let mut wanted: Vec<InstanceName> = Vec::new();
        for (service, ids) in &config.instances {
            for id in ids {
                let name = InstanceName::new(service, id)
                    .map_err(|err| anyhow::anyhow!("[instances] {service}: {err}"))?;
                if config.fleet.is_some() {
                    // In a fleet every node knows the instance, and the node the first
                    // request places it on starts it (docs/fleet.md).
                    shared.entry(&name)?;
                    continue;
                }
                match resting(&name) {
                    Some(record) if record.held => tracing::info!(
                        "{name} stays stopped, as an operator left it: `tenement start {name}` \
                         starts it"
                    ),
                    Some(_) => tracing::info!("{name} stays asleep until a request wakes it"),
                    None => {
                        shared.store.set_desired(&name, true)?;
                        wanted.push(name);
                    }
                }
            }
        }
        for record in records {
            if !config.service.contains_key(&record.name.service) {
                tracing::warn!(
                    "{} is in the store, but service {:?} is not configured: ignored",
                    record.name,
                    record.name.service
                );
                continue;
            }
            shared.entry(&record.name)?;
            if config.fleet.is_none() && record.desired_running && !wanted.contains(&record.name) {
                wanted.push(record.name);
            }
        }
        // A socket-activated instance's port is held from the start, asleep or not.
        for instance in shared.snapshot() {
            if instance.service().socket_activation {
                activation::hold(&shared, &instance)?;
            }
        }
        let supervisor = Supervisor { shared };
        for (name, adoption) in adoptions {
            if !config.service.contains_key(&name.service) {
                continue;
            }
            let instance = supervisor.shared.entry(&name)?;
            supervisor
                .shared
                .start_run_with(&instance, Some(adoption))
                .await;
        }
        for name in &wanted {
            let instance = supervisor.shared.entry(name)?;
            supervisor.shared.start_run(&instance).await;
        }
        tokio::spawn(reaper::run(Arc::downgrade(&supervisor.shared)));
        tokio::spawn(sampler::run(Arc::downgrade(&supervisor.shared)));
        Ok(supervisor)
    }

    /// Every known instance (configured in `[instances]`, or spawned and not forgotten),
    /// stopped and sleeping ones included, in name order.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.shared.snapshot().iter().map(|i| i.info()).collect()
    }

    /// The configuration the daemon runs with; shared with the API, replaced by a reload.
    pub fn live_config(&self) -> LiveConfig {
        self.shared.config.clone()
    }

    pub fn info(&self, name: &InstanceName) -> Option<InstanceInfo> {
        self.shared.get(name).map(|i| i.info())
    }

    /// The latest stats of `name`'s current process (sampled every second: kernel totals,
    /// per-second rates, memory, idle time); `None` while no process runs or before its
    /// first sample. Every reader shows these, never its own reading of the monitor.
    pub fn stats(&self, name: &InstanceName) -> Option<InstanceStats> {
        self.shared.get(name).and_then(|i| i.stats())
    }

    /// Bumps on any change of state, weight or the set of instances.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Wants `name` running (also after a restart of tenement), starts it if needed (a
    /// failed instance gets a fresh start, an operator's stop ends) and waits until it is
    /// ready. What `tenement start` and `tenement spawn` do.
    pub async fn spawn(&self, name: &InstanceName) -> Result<InstanceInfo, StartError> {
        let instance = self.shared.known_service(name)?;
        if instance.state() == InstanceState::Failed {
            self.shared.stop_run(&instance, StopKind::Restart).await;
        }
        self.wake(&instance, Waker::Operator).await?;
        Ok(instance.info())
    }

    /// Where `name` listens once it is ready, starting it if it is sleeping. All concurrent
    /// callers share one start. Fails at once for an unknown service, a failed instance,
    /// or one an operator stopped.
    pub async fn ensure_running(&self, name: &InstanceName) -> Result<Endpoint, StartError> {
        let instance = self.shared.known_service(name)?;
        if self.shared.thaw(&instance, freeze::Thaw::Request) {
            if let Some(endpoint) = instance.status.borrow().endpoint.clone() {
                return Ok(endpoint);
            }
        }
        {
            let status = instance.status.borrow();
            if status.state.serves() {
                if let Some(endpoint) = &status.endpoint {
                    return Ok(endpoint.clone());
                }
            }
            if status.held {
                return Err(StartError::Held(instance.name.clone()));
            }
            if status.state == InstanceState::Failed {
                return Err(failed(&instance, &status));
            }
        }
        self.wake(&instance, Waker::Request).await
    }

    /// Like `ensure_running`, for a caller that just found `stale` dead (the connection was
    /// refused, or ended unanswered): the process behind it may be crashing, restarting or
    /// being stopped while the state still says it serves there. Waits until the instance
    /// has moved on from `stale` (at most `within`, by default its `startup_timeout`), then
    /// wakes it as usual, so that the request is answered by the next process instead of
    /// failing with the last one. `StillServing` if it did not move on in time.
    pub async fn ensure_running_instead_of(
        &self,
        name: &InstanceName,
        stale: &Endpoint,
        within: Option<Duration>,
    ) -> Result<Endpoint, StartError> {
        let instance = self.shared.known_service(name)?;
        let startup = Duration::from_secs(instance.service().startup_timeout);
        let mut status = instance.status.subscribe();
        let moved_on = tokio::time::timeout(
            within.unwrap_or(startup + START_WAIT_SLACK),
            status.wait_for(|s| !(s.state.serves() && s.endpoint.as_ref() == Some(stale))),
        )
        .await
        .map(|waited| waited.map(drop));
        match moved_on {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(StartError::Failed {
                    state: instance.state(),
                    reason: format!("{}: the supervisor is gone", instance.name),
                })
            }
            Err(_) => return Err(StartError::StillServing(stale.clone())),
        }
        self.ensure_running(name).await
    }

    async fn wake(&self, instance: &Arc<Instance>, by: Waker) -> Result<Endpoint, StartError> {
        if self.shared.is_shutting_down() {
            return Err(StartError::Failed {
                state: instance.state(),
                reason: format!("{}: tenement is shutting down", instance.name),
            });
        }
        let held = StartError::Held(instance.name.clone());
        match by {
            Waker::Operator => {
                if let Err(err) = self.shared.store.set_desired(&instance.name, true) {
                    tracing::warn!("{err:#}");
                }
                self.shared.update(instance, |s| s.held = false);
            }
            Waker::Request => match self.shared.store.want_running_unless_held(&instance.name) {
                Ok(true) => {}
                Ok(false) => return Err(held),
                Err(err) => tracing::warn!("{err:#}"),
            },
        }
        let failures_before = instance.status.borrow().start_failures;
        let thaw = match by {
            Waker::Operator => freeze::Thaw::Operator,
            Waker::Request => freeze::Thaw::Request,
        };
        self.shared.thaw(instance, thaw);
        self.shared.start_run(instance).await;
        if by == Waker::Request && instance.status.borrow().held {
            // An operator's stop came in between: it wins.
            self.shared.stop_run(instance, StopKind::Stop).await;
            return Err(held);
        }
        let startup = Duration::from_secs(instance.service().startup_timeout);
        let mut status = instance.status.subscribe();
        let waited = tokio::time::timeout(
            startup + START_WAIT_SLACK,
            status.wait_for(|s| {
                s.state.serves()
                    || s.start_failures > failures_before
                    || matches!(
                        s.state,
                        InstanceState::Failed | InstanceState::Stopped | InstanceState::Sleeping
                    )
            }),
        )
        .await;
        let status = match waited {
            Err(_) => {
                return Err(StartError::Timeout {
                    after: startup,
                    last_error: instance.status.borrow().last_error.clone(),
                })
            }
            Ok(Err(_)) => {
                return Err(StartError::Failed {
                    state: instance.state(),
                    reason: format!("{}: the supervisor is gone", instance.name),
                })
            }
            Ok(Ok(status)) => status.clone(),
        };
        match (status.state.serves(), status.endpoint.clone()) {
            (true, Some(endpoint)) => Ok(endpoint),
            // A failed attempt, restarted in the background: its reason, now.
            _ if status.state == InstanceState::Starting => Err(StartError::NotReady(
                status
                    .last_error
                    .clone()
                    .unwrap_or_else(|| format!("{} did not become ready", instance.name)),
            )),
            _ => Err(failed(instance, &status)),
        }
    }

    /// An operator's stop: stops `name` and holds it stopped (requests get a 503, tenement
    /// does not start it) until `start`, `spawn` or `restart`. Returns when its processes
    /// are gone and its cgroup removed.
    pub async fn stop(&self, name: &InstanceName) -> Result<()> {
        let instance = self
            .shared
            .get(name)
            .with_context(|| format!("no instance {name}"))?;
        self.shared.store.hold(name)?;
        self.shared.update(&instance, |s| s.held = true);
        self.shared.stop_run(&instance, StopKind::Stop).await;
        // Also when it had no process (asleep, failed): now it is held.
        self.shared
            .update(&instance, |s| s.state = InstanceState::Stopped);
        self.shared.record(
            &instance,
            EventKind::Stopped,
            &format!("stopped by an operator; it stays stopped until `tenement start {name}`"),
        );
        Ok(())
    }

    /// Puts every instance with a process to sleep, as the idle reaper does (the next
    /// request may start it again). A fleet node that lost its etcd lease does this: another
    /// node may be placing its tenants by now. Returns the names it stopped.
    pub async fn sleep_all(&self) -> Vec<InstanceName> {
        let running: Vec<Arc<Instance>> = self
            .shared
            .snapshot()
            .into_iter()
            .filter(|instance| instance.info().pid.is_some())
            .collect();
        for instance in &running {
            self.shared.stop_run(instance, StopKind::Sleep).await;
        }
        running.iter().map(|i| i.name.clone()).collect()
    }

    /// Stops `name` (if running), clears a `failed` state and its restart history, starts
    /// it and waits until it is ready.
    pub async fn restart(&self, name: &InstanceName) -> Result<InstanceInfo, StartError> {
        let instance = self.shared.known_service(name)?;
        self.shared.stop_run(&instance, StopKind::Restart).await;
        self.shared
            .record(&instance, EventKind::Restarted, "restart requested");
        self.wake(&instance, Waker::Operator).await?;
        Ok(instance.info())
    }

    /// Stops `name` and forgets it: its desired state, weight, events and logs. Its data
    /// directory (and so its uid) is kept.
    pub async fn forget(&self, name: &InstanceName) -> Result<()> {
        if let Some(instance) = self.shared.get(name) {
            self.shared.stop_run(&instance, StopKind::Stop).await;
        }
        self.shared.store.forget(name)?;
        self.shared.logs.forget(name)?;
        self.shared.lock_instances().remove(name);
        self.shared.activation.release(name);
        self.shared.bump();
        Ok(())
    }

    pub fn set_weight(&self, name: &InstanceName, weight: u8) -> Result<()> {
        self.set_weights(&[(name.clone(), weight)])
    }

    /// Sets several routing weights at once (all or none).
    pub fn set_weights(&self, weights: &[(InstanceName, u8)]) -> Result<()> {
        self.apply_weights(weights)?;
        let sink = self
            .shared
            .weight_sink
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sink) = sink {
            sink(weights);
        }
        Ok(())
    }

    /// Where set weights are also told (once, by the fleet).
    pub fn set_weight_sink(&self, sink: WeightSink) {
        *self
            .shared
            .weight_sink
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Sets weights without telling the sink: weights that came from the fleet.
    pub fn apply_weights(&self, weights: &[(InstanceName, u8)]) -> Result<()> {
        for (name, _) in weights {
            if !self.shared.config().service.contains_key(&name.service) {
                anyhow::bail!("{name}: no service {:?} in the configuration", name.service);
            }
        }
        self.shared.store.set_weights(weights)?;
        for (name, weight) in weights {
            let instance = self.shared.entry(name)?;
            instance.status.send_modify(|s| s.weight = *weight);
        }
        self.shared.bump();
        Ok(())
    }

    /// Where the proxy counts open connections and requests to `name`.
    pub fn activity_meter(&self, name: &InstanceName) -> Option<Arc<dyn ActivityMeter>> {
        let instance = self.shared.get(name)?;
        Some(Arc::new(instance::Meter {
            shared: self.shared.clone(),
            instance,
        }))
    }

    /// Lets the idle reaper also count the kernel's view of each instance's traffic.
    pub fn set_activity_source(&self, source: ActivitySource) {
        *self
            .shared
            .activity_source
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// The kernel saw the instance in cgroup `cgroup_id` start listening: a start in progress
    /// checks readiness at once instead of at its next connect poll.
    pub fn notify_listening(&self, cgroup_id: u64) {
        for instance in self.shared.snapshot() {
            if instance.status.borrow().cgroup_id == Some(cgroup_id) {
                // Only a wait in progress is woken. A stored permit (`notify_one`) would
                // outlive a start that its connect poll had already ended, and cut the
                // next start's wait short before the new process listens.
                instance.listening.notify_waiters();
            }
        }
    }

    /// Stops every instance (their desired state stays "running" for the next start) and
    /// removes every cgroup, the subtree included.
    /// Lets go of every instance without stopping it, for an upgrade: no `bye` to the guard,
    /// which keeps their output pipes and counters until the new tenement adopts them, as
    /// after a crash (`adopt.rs`). Their processes, cgroups and store records stay as they are.
    pub fn detach(&self) {
        self.shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // A prepared start is no tenant: its empty groups are not left for the next one.
        for instance in self.shared.snapshot() {
            ahead::discard(&self.shared, &instance);
        }
        self.shared.logs.flush();
    }

    pub async fn shutdown(&self) {
        self.shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let stops = self
            .shared
            .snapshot()
            .into_iter()
            .map(|instance| {
                let shared = self.shared.clone();
                tokio::spawn(async move { shared.stop_run(&instance, StopKind::Shutdown).await })
            })
            .collect::<Vec<_>>();
        for stop in stops {
            let _ = stop.await;
        }
        // A sleep that ended just as the shutdown began may have prepared a start.
        for instance in self.shared.snapshot() {
            ahead::discard(&self.shared, &instance);
        }
        storage::unmount_all(&self.shared.config().settings.data_dir);
        if let Some(tree) = &self.shared.cgroups {
            if let Err(err) = tree.remove() {
                tracing::error!("removing tenement's cgroups: {err:#}");
            }
        }
        self.shared.logs.flush();
        // Everything is stopped: the guard has nothing to keep for a next tenement.
        if let Some(guard) = &self.shared.guard {
            guard.bye();
        }
    }
}

fn failed(instance: &Instance, status: &Status) -> StartError {
    let reason = status
        .last_error
        .clone()
        .unwrap_or_else(|| format!("{} is {}", instance.name, status.state));
    if status.cannot_start {
        StartError::Spawn(reason)
    } else {
        StartError::Failed {
            state: status.state,
            reason,
        }
    }
}

impl Shared {
    /// The configuration as of now (a reload replaces it).
    fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    fn lock_instances(&self) -> MutexGuard<'_, BTreeMap<InstanceName, Arc<Instance>>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn monitor_lock(&self) -> MutexGuard<'_, Monitor> {
        self.monitor.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> Vec<Arc<Instance>> {
        self.lock_instances().values().cloned().collect()
    }

    fn get(&self, name: &InstanceName) -> Option<Arc<Instance>> {
        self.lock_instances().get(name).cloned()
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The instance `name`, created on first use when its service is configured.
    fn known_service(&self, name: &InstanceName) -> Result<Arc<Instance>, StartError> {
        if !self.config().service.contains_key(&name.service) {
            return Err(StartError::UnknownService(name.service.clone()));
        }
        self.entry(name)
            .map_err(|err| StartError::Spawn(format!("{name}: {err:#}")))
    }

    fn entry(&self, name: &InstanceName) -> Result<Arc<Instance>> {
        let config = self.config();
        let service = config.service.get(&name.service).with_context(|| {
            format!("{name}: no service {:?} in the configuration", name.service)
        })?;
        let created = {
            let mut instances = self.lock_instances();
            if let Some(instance) = instances.get(name) {
                return Ok(instance.clone());
            }
            let weight = self.store.weight(name)?.unwrap_or(DEFAULT_WEIGHT);
            let held = self.store.held(name)?;
            let instance = Arc::new(Instance::new(name.clone(), service.clone(), weight, held));
            instances.insert(name.clone(), instance.clone());
            instance
        };
        self.bump();
        Ok(created)
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes an instance's status and tells whoever watches.
    fn update(&self, instance: &Instance, change: impl FnOnce(&mut Status)) {
        instance.status.send_modify(change);
        self.bump();
    }

    fn record(&self, instance: &Instance, kind: EventKind, detail: &str) {
        if let Err(err) = self.store.record_event(&instance.name, kind, detail) {
            tracing::warn!("{err:#}");
        }
    }

    /// Starts the run loop of `instance` unless one is running; waits for one that is
    /// being stopped to finish first.
    async fn start_run(self: &Arc<Self>, instance: &Arc<Instance>) {
        self.start_run_with(instance, None).await;
    }

    /// [`Shared::start_run`], whose first attempt adopts a running process if given.
    async fn start_run_with(
        self: &Arc<Self>,
        instance: &Arc<Instance>,
        adoption: Option<Adoption>,
    ) {
        let mut adoption = adoption;
        loop {
            let stopping = {
                let mut run = instance.lock_run();
                match run.as_ref() {
                    Some(handle) if !handle.finished() && handle.stopping() => handle.done.clone(),
                    Some(handle) if !handle.finished() => return,
                    _ => {
                        let (stop, stop_rx) = watch::channel(None);
                        let (done_tx, done) = watch::channel(false);
                        *run = Some(RunHandle { stop, done });
                        self.update(instance, |s| {
                            s.state = InstanceState::Starting;
                            s.last_error = None;
                            s.cannot_start = false;
                        });
                        tokio::spawn(runner::run(
                            self.clone(),
                            instance.clone(),
                            stop_rx,
                            done_tx,
                            adoption.take(),
                        ));
                        return;
                    }
                }
            };
            let mut stopping = stopping;
            let _ = stopping.wait_for(|done| *done).await;
        }
    }

    /// Asks the run loop of `instance` to end as `kind`, and waits until it has. A loop
    /// that ended by itself (failed, exited) is left as it is, except that `Restart` and
    /// `Stop` clear a `failed` state.
    async fn stop_run(&self, instance: &Instance, kind: StopKind) {
        // Whatever the stop, a start prepared ahead goes (an idle stop prepares anew).
        ahead::discard(self, instance);
        let done = {
            let run = instance.lock_run();
            match run.as_ref() {
                Some(handle) if !handle.finished() => {
                    if handle.stop.borrow().is_none() {
                        let _ = handle.stop.send(Some(kind));
                        // A restart is a wake to come: requests wait for the new process
                        // (`starting`) instead of meeting the old one as it goes.
                        let state = if kind == StopKind::Restart {
                            InstanceState::Starting
                        } else {
                            InstanceState::Stopping
                        };
                        self.update(instance, |s| s.state = state);
                    }
                    Some(handle.done.clone())
                }
                _ => None,
            }
        };
        match done {
            Some(mut done) => {
                let _ = done.wait_for(|done| *done).await;
            }
            None => {
                if matches!(kind, StopKind::Stop | StopKind::Restart)
                    && instance.state() == InstanceState::Failed
                {
                    self.update(instance, |s| {
                        s.state = InstanceState::Stopped;
                    });
                }
            }
        }
    }
}
