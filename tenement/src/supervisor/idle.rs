//! When an instance counts as idle.
//!
//! With kernel counters, the kernel's view decides: the instance is idle once no packet of
//! its sockets, in or out, was seen for `idle_timeout`, and the proxy routed no request to
//! it for as long. A WebSocket exchanging messages or the tenant calling some API keeps it
//! awake; a connection that is open but silent (a client's keep-alive, a quiet WebSocket,
//! the proxy's pooled upstream connections) sends nothing and so does not. A request still
//! being answered does keep it awake, silent or not: a long poll or a slow report must not
//! lose its process halfway.
//!
//! tenement's own health probes do reach the instance's socket, every
//! `health_check_interval`: counted as traffic, they would keep every instance awake
//! forever. Skipping probes of quiet instances would leave a hung tenant undetected, so the
//! probes go on and their packets are told apart instead: each probe's time span is
//! remembered, and a last packet that falls inside it (or just after, for the closing
//! handshake) is the probe's, not the tenant's. The kernel keeps one "last packet" time per
//! instance, so the tenant's own last packet is read before each probe begins.
//!
//! Without kernel counters, the proxy's view is all there is: the last request, and any
//! open proxied connection (a WebSocket, a request still being answered) keeps the
//! instance awake.

use std::time::{Duration, Instant};

use super::{cgroup::Freezer, instance::Instance, state::InstanceState, Shared};

/// A probe's closing packets (the instance closing its side, the last ACKs) may come a
/// little after the probe returned.
const PROBE_TAIL: Duration = Duration::from_millis(500);

/// The kernel's view of one instance's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelTraffic {
    /// The last packet in or out; `None` if none since the instance started.
    pub last_packet: Option<Instant>,
}

/// What the idle reaper knows of one instance.
pub struct Activity {
    /// Open proxied requests and tunnels.
    pub open: usize,
    /// Of those, the tunnels (upgraded connections such as WebSockets).
    pub tunnels: usize,
    /// The last time the proxy began or finished a request (or the instance became ready).
    pub last: Instant,
    /// The latest of tenement's health probes.
    probe: Option<ProbeSpan>,
    /// The kernel's last packet of the instance that was not a probe's.
    tenant_packet: Option<Instant>,
    /// What freezes the current process's cgroup; `None` while no process runs (or
    /// without cgroups). Kept here, under the same lock as `open`, so that a freeze and a
    /// request arriving can never miss each other (see `freeze.rs`).
    pub freezer: Option<Freezer>,
    /// Set while the instance is frozen: the state it had before.
    pub frozen: Option<InstanceState>,
    /// The latest thaw: packets right after it (a timer that fired while frozen) are the
    /// thaw's, not the tenant's activity.
    thawed: Option<Instant>,
}

struct ProbeSpan {
    began: Instant,
    /// `None` while the probe runs.
    ended: Option<Instant>,
}

impl ProbeSpan {
    fn covers(&self, at: Instant) -> bool {
        at >= self.began && self.ended.is_none_or(|ended| at <= ended + PROBE_TAIL)
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            open: 0,
            tunnels: 0,
            last: Instant::now(),
            probe: None,
            tenant_packet: None,
            freezer: None,
            frozen: None,
            thawed: None,
        }
    }

    /// Since when the instance has been idle; `None` while it is busy. `kernel` is `None`
    /// when the kernel does not count this instance.
    pub fn idle_since(&mut self, kernel: Option<KernelTraffic>) -> Option<Instant> {
        // Mid-probe, every packet looks like the probe's (a slow answer can take seconds):
        // decide once it is over.
        if self
            .probe
            .as_ref()
            .is_some_and(|probe| probe.ended.is_none())
        {
            return None;
        }
        match kernel {
            None => (self.open == 0).then_some(self.last),
            Some(_) if self.open > self.tunnels => None,
            Some(traffic) => Some(match self.tenant_packet(traffic.last_packet) {
                Some(packet) => packet.max(self.last),
                None => self.last,
            }),
        }
    }

    /// A health probe begins; `kernel` is the kernel's view just before it.
    pub fn probe_began(&mut self, kernel: Option<KernelTraffic>) {
        if let Some(traffic) = kernel {
            self.tenant_packet(traffic.last_packet);
        }
        self.probe = Some(ProbeSpan {
            began: Instant::now(),
            ended: None,
        });
    }

    /// The instance was thawed now.
    pub fn thawed(&mut self) {
        self.thawed = Some(Instant::now());
    }

    pub fn probe_ended(&mut self) {
        if let Some(probe) = &mut self.probe {
            probe.ended = Some(Instant::now());
        }
    }

    /// The kernel's last packet unless the latest probe sent it; then the tenant's last one
    /// before.
    fn tenant_packet(&mut self, last_packet: Option<Instant>) -> Option<Instant> {
        if let Some(at) = last_packet {
            let thaws = self
                .thawed
                .is_some_and(|thawed| at >= thawed && at <= thawed + PROBE_TAIL);
            if !thaws && !self.probe.as_ref().is_some_and(|probe| probe.covers(at)) {
                self.tenant_packet = Some(self.tenant_packet.map_or(at, |seen| seen.max(at)));
            }
        }
        self.tenant_packet
    }
}

impl Shared {
    /// The kernel's view of `instance`, or `None` when the kernel does not count it.
    pub(super) fn kernel_traffic(&self, instance: &Instance) -> Option<KernelTraffic> {
        // The kernel programs count IP packets: traffic on a unix socket is invisible to
        // them, so for such an instance the proxy's view decides (an open tunnel included).
        if instance.service().listen == crate::config::Listen::Unix {
            return None;
        }
        let cgroup_id = instance.status.borrow().cgroup_id?;
        let source = self
            .activity_source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        source(cgroup_id)
    }

    /// Runs one of tenement's own health probes of `instance`, marked so that its packets
    /// do not count as the tenant's activity. `None`, without probing, while the instance
    /// is frozen: a frozen process cannot answer, and a probe must not thaw it.
    pub(super) async fn probe<T>(
        &self,
        instance: &Instance,
        probe: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        /// Ends the span however the probe ends, cancelled included: a span left open
        /// would keep the instance awake for good.
        struct Span<'a>(&'a Instance);
        impl Drop for Span<'_> {
            fn drop(&mut self) {
                self.0.lock_activity().probe_ended();
            }
        }
        let kernel = self.kernel_traffic(instance);
        {
            // Checked and marked under one lock: the freezer does not freeze mid-probe.
            let mut activity = instance.lock_activity();
            if activity.frozen.is_some() {
                return None;
            }
            activity.probe_began(kernel);
        }
        let _span = Span(instance);
        Some(probe.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(at: Instant) -> Option<KernelTraffic> {
        Some(KernelTraffic {
            last_packet: Some(at),
        })
    }

    #[test]
    fn without_kernel_counters_open_connections_keep_it_busy() {
        let mut activity = Activity::new();
        let since = activity.last;
        activity.open = 1;
        assert_eq!(activity.idle_since(None), None);
        activity.open = 0;
        assert_eq!(activity.idle_since(None), Some(since));
    }

    #[test]
    fn with_kernel_counters_only_packets_and_requests_count() {
        let mut activity = Activity::new();
        let ready = activity.last;
        // A request being answered keeps it busy, however silent.
        activity.open = 1;
        let quiet = Some(KernelTraffic { last_packet: None });
        assert_eq!(activity.idle_since(quiet), None);
        // An open but silent tunnel does not.
        activity.tunnels = 1;
        let quiet = Some(KernelTraffic { last_packet: None });
        assert_eq!(activity.idle_since(quiet), Some(ready));
        let later = ready + Duration::from_secs(5);
        assert_eq!(activity.idle_since(seen(later)), Some(later));
        // An older packet never moves the moment back.
        assert_eq!(activity.idle_since(seen(ready)), Some(later));
    }

    #[test]
    fn packets_of_health_probes_are_not_the_tenants() {
        let mut activity = Activity::new();
        let before = Instant::now();
        activity.probe_began(seen(before));
        let during = Instant::now();
        assert_eq!(
            activity.idle_since(seen(during)),
            None,
            "not decided mid-probe"
        );
        activity.probe_ended();
        let tail = activity.probe.as_ref().unwrap().ended.unwrap() + PROBE_TAIL / 2;
        assert_eq!(
            activity.idle_since(seen(during)),
            Some(before.max(activity.last))
        );
        assert_eq!(
            activity.idle_since(seen(tail)),
            Some(before.max(activity.last))
        );
        // Traffic after the probe is the tenant's again.
        let after = tail + PROBE_TAIL;
        assert_eq!(activity.idle_since(seen(after)), Some(after));
    }

    #[test]
    fn packets_right_after_a_thaw_are_not_the_tenants() {
        let mut activity = Activity::new();
        let ready = activity.last;
        activity.thawed();
        let thawed = activity.thawed.unwrap();
        assert_eq!(activity.idle_since(seen(thawed)), Some(ready));
        let later = thawed + PROBE_TAIL * 2;
        assert_eq!(activity.idle_since(seen(later)), Some(later));
    }
}
