//! Kernel-side observation of instances. With the `ebpf` feature and the privileges to load
//! programs, the kernel counts each instance's traffic, connections, TCP health and CPU time,
//! and reports the moment it starts listening; otherwise the monitor says plainly that kernel
//! counters are off, and why, instead of pretending. Memory always comes from cgroup files.
//!
//! Typical use by the supervisor: `Monitor::start(subtree)` once; per instance, subscribe
//! to `listen_events()` and `register(cgroup_id)` before its process starts, `sample()` it
//! every refresh through one `StatsTracker`, and `unregister` it when it stops.

mod cgroup_files;
#[cfg(feature = "ebpf")]
mod kernel;
#[cfg(feature = "ebpf")]
mod listen;
#[cfg(feature = "ebpf")]
mod network;
mod policy;
mod stats;

use std::{path::Path, time::Instant};

use serde::Serialize;
use tokio::sync::broadcast;

pub use cgroup_files::{cgroup_id, memory_usage};
pub use policy::{
    system_resolvers, Denial, Destination, Egress, HostPorts, NetworkDenials, NetworkIsolation,
    NetworkPolicy,
};
pub use stats::{monotonic_now_ns, InstanceStats, KernelStats, Rates, Sample, StatsTracker};
pub use tenement_common::TrafficCounters;

/// The names under which tenement's guard holds the kernel counter maps (traffic, cpu,
/// tcp), see [`Monitor::held_maps`].
pub const HELD_MAPS: [&str; 3] = ["map:traffic", "map:cpu", "map:tcp"];

/// Whether kernel counters are running, and if not, the reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum KernelCounters {
    Active,
    Off(String),
}

impl std::fmt::Display for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelCounters::Active => f.write_str("kernel counters active"),
            KernelCounters::Off(reason) => write!(f, "kernel counters off: {reason}"),
        }
    }
}

/// A process of an instance started listening: connections to `port` succeed from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ListenEvent {
    pub cgroup_id: u64,
    pub port: u16,
}

/// The next time a process of `cgroup_id` starts listening, skipping other instances' events.
/// `None` once the monitor is gone. A subscriber that fell too far behind may have missed the
/// event, so race this against a connect check rather than waiting on it alone.
pub async fn next_listen(
    events: &mut broadcast::Receiver<ListenEvent>,
    cgroup_id: u64,
) -> Option<ListenEvent> {
    loop {
        match events.recv().await {
            Ok(event) if event.cgroup_id == cgroup_id => return Some(event),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// Subscribers that fall this far behind lose the oldest events (and see `Lagged`).
const LISTEN_EVENT_BACKLOG: usize = 1024;

pub struct Monitor {
    #[cfg(feature = "ebpf")]
    kernel: Option<Kernel>,
    status: KernelCounters,
    network: NetworkIsolation,
    listen_events: broadcast::Sender<ListenEvent>,
}

/// The loaded programs and the thread that forwards their listen events.
#[cfg(feature = "ebpf")]
struct Kernel {
    programs: kernel::KernelPrograms,
    _listen_reader: listen::ListenReader,
}

impl Monitor {
    /// Loads and attaches the kernel programs: the cgroup ones to the cgroup v2 directory
    /// `subtree` (tenement's instance subtree), the tracing ones machine-wide. Never fails:
    /// when the programs cannot run, the monitor works without them and reports why.
    pub fn start(subtree: &Path) -> Self {
        let (listen_events, _) = broadcast::channel(LISTEN_EVENT_BACKLOG);
        #[cfg(feature = "ebpf")]
        {
            let started = kernel::KernelPrograms::attach(subtree).and_then(|(programs, output)| {
                let reader = listen::ListenReader::start(output, listen_events.clone())?;
                Ok(Kernel {
                    programs,
                    _listen_reader: reader,
                })
            });
            match started {
                // The caller logs the outcome once, whichever path turned the counters off.
                Ok(kernel) => Self {
                    network: kernel.programs.network_status().clone(),
                    kernel: Some(kernel),
                    status: KernelCounters::Active,
                    listen_events,
                },
                Err(err) => Self::off(off_reason(&err), listen_events),
            }
        }
        #[cfg(not(feature = "ebpf"))]
        {
            let _ = subtree;
            Self::off("built without the `ebpf` feature".into(), listen_events)
        }
    }

    /// A monitor with kernel counters off, for the given reason.
    pub fn without_kernel(reason: &str) -> Self {
        Self::off(
            reason.to_string(),
            broadcast::channel(LISTEN_EVENT_BACKLOG).0,
        )
    }

    fn off(reason: String, listen_events: broadcast::Sender<ListenEvent>) -> Self {
        Self {
            #[cfg(feature = "ebpf")]
            kernel: None,
            network: NetworkIsolation::Off(format!("kernel counters are off: {reason}")),
            status: KernelCounters::Off(reason),
            listen_events,
        }
    }

    pub fn kernel_counters(&self) -> &KernelCounters {
        &self.status
    }

    /// Whether the kernel keeps confined instances inside their network boundary.
    pub fn network_isolation(&self) -> &NetworkIsolation {
        &self.network
    }

    /// The ports every confined instance is kept away from: `port_range` (but for its own
    /// port) and tenement's own listeners. Set once, before the first instance starts.
    pub fn set_host_ports(&self, ports: &HostPorts) -> anyhow::Result<()> {
        #[cfg(feature = "ebpf")]
        if let (Some(kernel), true) = (&self.kernel, self.network.is_active()) {
            return kernel.programs.set_host_ports(ports);
        }
        let _ = ports;
        Ok(())
    }

    /// Puts a registered cgroup inside its network boundary (see [`NetworkPolicy`]), its
    /// denial counters from zero. Do it before the instance's process starts. Returns whether
    /// the kernel enforces it (false without network isolation).
    pub fn confine(&self, cgroup_id: u64, policy: &NetworkPolicy) -> anyhow::Result<bool> {
        #[cfg(feature = "ebpf")]
        if let (Some(kernel), true) = (&self.kernel, self.network.is_active()) {
            kernel.programs.confine(cgroup_id, policy)?;
            return Ok(true);
        }
        let _ = (cgroup_id, policy);
        Ok(false)
    }

    /// What the boundary refused a confined cgroup, the latest refusal included.
    pub fn denials(&self, cgroup_id: u64) -> Option<NetworkDenials> {
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = &self.kernel {
            return kernel.programs.denials(cgroup_id);
        }
        let _ = cgroup_id;
        None
    }

    /// Starts counting for an instance's cgroup (its cgroup v2 id, see [`cgroup_id`]), every
    /// counter from zero. Register before the instance's process starts: sockets it creates
    /// earlier are not attributed. Without kernel counters this does nothing.
    pub fn register(&self, cgroup_id: u64) -> anyhow::Result<()> {
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = &self.kernel {
            return kernel.programs.register(cgroup_id);
        }
        let _ = cgroup_id;
        Ok(())
    }

    /// The kernel counter maps' fds, by name (`map:traffic`, `map:cpu`, `map:tcp`), for
    /// tenement's guard to hold while no tenement runs. Empty without kernel counters.
    pub fn held_maps(&self) -> Vec<(&'static str, std::os::fd::BorrowedFd<'_>)> {
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = &self.kernel {
            return kernel.programs.map_fds().collect();
        }
        Vec::new()
    }

    /// An earlier tenement's counter maps, taken from `held` (as its guard handed them
    /// over), so that adopted instances keep their totals (see [`Monitor::carry_over`]).
    pub fn take_previous(&self, held: &crate::held::HeldFds) -> anyhow::Result<()> {
        let mut fds = HELD_MAPS.into_iter().map(|name| held.take(name));
        let (traffic, cpu, tcp) = (
            fds.next().flatten(),
            fds.next().flatten(),
            fds.next().flatten(),
        );
        #[cfg(feature = "ebpf")]
        if let (Some(kernel), Some(traffic), Some(cpu), Some(tcp)) =
            (&self.kernel, traffic, cpu, tcp)
        {
            return kernel.programs.set_previous(traffic, cpu, tcp);
        }
        #[cfg(not(feature = "ebpf"))]
        let _ = (traffic, cpu, tcp);
        Ok(())
    }

    /// A registered cgroup of an adopted instance continues from the totals the earlier
    /// tenement counted (see [`Monitor::take_previous`]); returns whether there were any.
    pub fn carry_over(&self, cgroup_id: u64) -> anyhow::Result<bool> {
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = &self.kernel {
            return kernel.programs.carry_over(cgroup_id);
        }
        let _ = cgroup_id;
        Ok(false)
    }

    /// Stops counting for a cgroup, lifts its network policy and forgets its counters.
    /// Idempotent.
    pub fn unregister(&self, cgroup_id: u64) {
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = &self.kernel {
            kernel.programs.unregister(cgroup_id);
        }
        let _ = cgroup_id;
    }

    /// Socket traffic alone (one map read: what an idle check needs); `None` when counters
    /// are off or the cgroup is not registered.
    pub fn traffic(&self, cgroup_id: u64) -> Option<TrafficCounters> {
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = &self.kernel {
            return kernel.programs.traffic(cgroup_id);
        }
        let _ = cgroup_id;
        None
    }

    /// Every kernel counter of a registered cgroup, summed over CPUs; `None` when counters
    /// are off or the cgroup is not registered.
    pub fn stats(&self, cgroup_id: u64) -> Option<KernelStats> {
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = &self.kernel {
            return kernel.programs.stats(cgroup_id);
        }
        let _ = cgroup_id;
        None
    }

    /// One reading of an instance now: its kernel counters and, if its memory cgroup
    /// directory is given (v2, or the v1 memory controller's on hybrid hosts), its memory.
    pub fn sample(&self, cgroup_id: u64, memory_cgroup: Option<&Path>) -> Sample {
        Sample {
            taken: Instant::now(),
            kernel: self.stats(cgroup_id),
            memory_bytes: memory_cgroup.and_then(|dir| memory_usage(dir).ok()),
        }
    }

    /// Listen events of registered instances, as they happen. Subscribe before the instance
    /// starts so its event cannot slip by. Without kernel counters nothing ever arrives, so
    /// wait on this together with a connect check.
    pub fn listen_events(&self) -> broadcast::Receiver<ListenEvent> {
        self.listen_events.subscribe()
    }
}

/// Loading fails for reasons a person can fix; say which one applies.
#[cfg(feature = "ebpf")]
fn off_reason(err: &anyhow::Error) -> String {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        format!(
            "not running as root (loading eBPF programs needs CAP_BPF, CAP_PERFMON and \
             CAP_NET_ADMIN): {err:#}"
        )
    } else {
        format!("{err:#}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_kernel_reports_why_and_still_works() {
        let monitor = Monitor::without_kernel("testing");
        assert_eq!(
            monitor.kernel_counters(),
            &KernelCounters::Off("testing".into())
        );
        assert_eq!(
            monitor.kernel_counters().to_string(),
            "kernel counters off: testing"
        );
        monitor.register(42).unwrap();
        assert_eq!(monitor.stats(42), None);
        assert_eq!(monitor.traffic(42), None);
        let sample = monitor.sample(42, None);
        assert_eq!(sample.kernel, None);
        let mut events = monitor.listen_events();
        assert!(matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        monitor.unregister(42);
    }

    #[test]
    fn can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Monitor>();
    }

    #[tokio::test]
    async fn next_listen_picks_the_instance_and_ends_with_the_monitor() {
        let (sender, mut events) = broadcast::channel(4);
        let other = ListenEvent {
            cgroup_id: 1,
            port: 80,
        };
        let mine = ListenEvent {
            cgroup_id: 2,
            port: 8080,
        };
        sender.send(other).unwrap();
        sender.send(mine).unwrap();
        assert_eq!(next_listen(&mut events, 2).await, Some(mine));
        drop(sender);
        assert_eq!(next_listen(&mut events, 2).await, None);
    }

    #[test]
    fn status_serializes_with_its_reason() {
        let off = serde_json::to_value(KernelCounters::Off("no BTF".into())).unwrap();
        assert_eq!(off, serde_json::json!({"state": "off", "reason": "no BTF"}));
        let on = serde_json::to_value(KernelCounters::Active).unwrap();
        assert_eq!(on, serde_json::json!({"state": "active"}));
    }
}
