//! The one shape every consumer reads (API, `tenement top`, `/metrics`, the idle reaper):
//! kernel totals of an instance, its memory, and per-second rates between two samples.
//! Pure userspace arithmetic; nothing here touches the kernel.

use std::{collections::HashMap, hash::Hash, time::Duration, time::Instant};

use serde::{Deserialize, Serialize};
use tenement_common::{CpuCounters, TcpCounters, TrafficCounters};

/// What the kernel counted for one instance since it was registered, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStats {
    /// IP packets and their bytes (headers included) of the instance's sockets.
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// CLOCK_MONOTONIC nanoseconds of the last packet in either direction; 0 = none yet.
    pub last_activity_ns: u64,
    /// Nanoseconds the instance's tasks spent on a CPU (credited when they are switched out).
    pub cpu_ns: u64,
    /// Connections accepted by the instance's listeners that reached ESTABLISHED.
    pub inbound_opened: u64,
    pub inbound_closed: u64,
    /// Connections the instance made that reached ESTABLISHED.
    pub outbound_opened: u64,
    pub outbound_closed: u64,
    /// Connections open right now, both directions.
    pub connections_open: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Socket operations the network boundary refused (0 when the instance is not confined).
    #[serde(default)]
    pub binds_denied: u64,
    #[serde(default)]
    pub connects_denied: u64,
    /// UDP datagrams refused at sendmsg.
    #[serde(default)]
    pub sends_denied: u64,
}

impl KernelStats {
    /// Folds the three per-instance map values into one record.
    pub fn from_counters(traffic: &TrafficCounters, cpu: &CpuCounters, tcp: &TcpCounters) -> Self {
        let opened = tcp.inbound_opened + tcp.outbound_opened;
        let closed = tcp.inbound_closed + tcp.outbound_closed;
        Self {
            rx_bytes: traffic.rx_bytes,
            rx_packets: traffic.rx_packets,
            tx_bytes: traffic.tx_bytes,
            tx_packets: traffic.tx_packets,
            last_activity_ns: traffic.last_activity_ns,
            cpu_ns: cpu.on_cpu_ns,
            inbound_opened: tcp.inbound_opened,
            inbound_closed: tcp.inbound_closed,
            outbound_opened: tcp.outbound_opened,
            outbound_closed: tcp.outbound_closed,
            // Closes are read after opens in the same map value, but a connection opened
            // before registration may close after it: never go below zero.
            connections_open: opened.saturating_sub(closed),
            retransmits: tcp.retransmits,
            resets_sent: tcp.resets_sent,
            resets_received: tcp.resets_received,
            binds_denied: 0,
            connects_denied: 0,
            sends_denied: 0,
        }
    }

    /// Every refused bind, connect and send.
    pub fn denied(&self) -> u64 {
        self.binds_denied + self.connects_denied + self.sends_denied
    }

    pub fn connections_opened(&self) -> u64 {
        self.inbound_opened + self.outbound_opened
    }

    pub fn resets(&self) -> u64 {
        self.resets_sent + self.resets_received
    }

    /// How long the instance's sockets have been silent; `None` if they never carried a packet.
    pub fn idle_for(&self) -> Option<Duration> {
        (self.last_activity_ns != 0)
            .then(|| Duration::from_nanos(monotonic_now_ns().saturating_sub(self.last_activity_ns)))
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// One reading of an instance at one moment: the raw material of [`InstanceStats`].
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub taken: Instant,
    /// `None` when kernel counters are off or the instance is not registered.
    pub kernel: Option<KernelStats>,
    /// `None` when no memory cgroup was given or its file could not be read.
    pub memory_bytes: Option<u64>,
}

/// Per-second rates over the interval between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub interval_secs: f64,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
    pub rx_packets_per_sec: f64,
    pub tx_packets_per_sec: f64,
    /// CPU time over wall time, in percent of one CPU (a busy two-thread instance shows 200).
    pub cpu_percent: f64,
    pub connections_opened_per_sec: f64,
    pub retransmits_per_sec: f64,
    pub resets_per_sec: f64,
}

/// Everything known about one instance's activity, as every consumer shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Totals since registration; `None` when kernel counters are off for this instance.
    pub totals: Option<KernelStats>,
    /// `None` for the first sample of an instance, or without kernel counters.
    pub rates: Option<Rates>,
    /// Memory charged to the instance's memory cgroup (`memory.current` or
    /// `memory.usage_in_bytes`).
    pub memory_bytes: Option<u64>,
    /// Seconds since the instance's sockets last carried a packet (the supervisor's sampler
    /// narrows it to the tenant's own activity, see supervisor/idle.rs); `None` if never, or
    /// without kernel counters.
    pub idle_for_secs: Option<f64>,
}

impl InstanceStats {
    /// Stats as of `current`, with rates against `previous` (an earlier sample of the same
    /// registration of the same instance).
    pub fn between(previous: Option<&Sample>, current: &Sample) -> Self {
        let rates = match (previous, current.kernel) {
            (Some(previous), Some(now)) => previous.kernel.and_then(|before| {
                let interval = current.taken.checked_duration_since(previous.taken)?;
                rates(&before, &now, interval)
            }),
            _ => None,
        };
        Self {
            totals: current.kernel,
            rates,
            memory_bytes: current.memory_bytes,
            idle_for_secs: current
                .kernel
                .and_then(|k| k.idle_for())
                .map(|d| d.as_secs_f64()),
        }
    }
}

fn rates(before: &KernelStats, now: &KernelStats, interval: Duration) -> Option<Rates> {
    let secs = interval.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    // Counters only grow within one registration; a smaller value means the instance was
    // registered again, and the rate restarts at zero rather than going negative.
    let per_sec = |before: u64, now: u64| now.saturating_sub(before) as f64 / secs;
    Some(Rates {
        interval_secs: secs,
        rx_bytes_per_sec: per_sec(before.rx_bytes, now.rx_bytes),
        tx_bytes_per_sec: per_sec(before.tx_bytes, now.tx_bytes),
        rx_packets_per_sec: per_sec(before.rx_packets, now.rx_packets),
        tx_packets_per_sec: per_sec(before.tx_packets, now.tx_packets),
        cpu_percent: per_sec(before.cpu_ns, now.cpu_ns) / 1e9 * 100.0,
        connections_opened_per_sec: per_sec(before.connections_opened(), now.connections_opened()),
        retransmits_per_sec: per_sec(before.retransmits, now.retransmits),
        resets_per_sec: per_sec(before.resets(), now.resets()),
    })
}

/// Remembers the previous sample of each instance so rates come out of one place. The
/// supervisor owns one, feeds it a sample per instance every refresh, and hands the resulting
/// [`InstanceStats`] to every reader.
#[derive(Debug)]
pub struct StatsTracker<K> {
    previous: HashMap<K, Sample>,
}

impl<K> Default for StatsTracker<K> {
    fn default() -> Self {
        Self {
            previous: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> StatsTracker<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stats of `key` as of `sample`, with rates since the previous update of `key`.
    pub fn update(&mut self, key: K, sample: Sample) -> InstanceStats {
        let stats = InstanceStats::between(self.previous.get(&key), &sample);
        self.previous.insert(key, sample);
        stats
    }

    /// Drops the history of an instance (stopped or removed); its next sample starts afresh.
    pub fn forget(&mut self, key: &K) {
        self.previous.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, kernel: Option<KernelStats>) -> Sample {
        Sample {
            taken: at,
            kernel,
            memory_bytes: Some(4096),
        }
    }

    #[test]
    fn folds_counters_and_derives_open_connections() {
        let traffic = TrafficCounters {
            rx_bytes: 10,
            rx_packets: 1,
            tx_bytes: 20,
            tx_packets: 2,
            last_activity_ns: 5,
        };
        let cpu = CpuCounters {
            on_cpu_ns: 7,
            slices: 1,
        };
        let tcp = TcpCounters {
            inbound_opened: 3,
            inbound_closed: 1,
            outbound_opened: 2,
            outbound_closed: 2,
            retransmits: 4,
            resets_sent: 1,
            resets_received: 2,
        };
        let stats = KernelStats::from_counters(&traffic, &cpu, &tcp);
        assert_eq!(stats.connections_open, 2);
        assert_eq!(stats.connections_opened(), 5);
        assert_eq!(stats.resets(), 3);
        assert_eq!(stats.cpu_ns, 7);
        assert_eq!(stats.tx_bytes, 20);
    }

    #[test]
    fn rates_come_from_two_samples() {
        let start = Instant::now();
        let before = KernelStats {
            rx_bytes: 1000,
            tx_bytes: 0,
            cpu_ns: 0,
            ..Default::default()
        };
        let after = KernelStats {
            rx_bytes: 3000,
            tx_bytes: 500,
            cpu_ns: 1_000_000_000,
            inbound_opened: 4,
            ..Default::default()
        };
        let first = sample(start, Some(before));
        let second = sample(start + Duration::from_secs(2), Some(after));
        let stats = InstanceStats::between(Some(&first), &second);
        let rates = stats.rates.unwrap();
        assert_eq!(rates.rx_bytes_per_sec, 1000.0);
        assert_eq!(rates.tx_bytes_per_sec, 250.0);
        assert_eq!(rates.cpu_percent, 50.0);
        assert_eq!(rates.connections_opened_per_sec, 2.0);
        assert_eq!(stats.memory_bytes, Some(4096));
        assert_eq!(stats.idle_for_secs, None, "no packet yet");
    }

    #[test]
    fn no_rates_without_history_or_kernel_counters() {
        let now = Instant::now();
        let only = sample(now, Some(KernelStats::default()));
        assert_eq!(InstanceStats::between(None, &only).rates, None);
        let off = sample(now, None);
        let stats = InstanceStats::between(Some(&only), &off);
        assert_eq!(stats.rates, None);
        assert_eq!(stats.totals, None);
        assert_eq!(stats.memory_bytes, Some(4096));
    }

    #[test]
    fn re_registration_restarts_rates_at_zero() {
        let start = Instant::now();
        let high = KernelStats {
            rx_bytes: 10_000,
            ..Default::default()
        };
        let fresh = KernelStats {
            rx_bytes: 10,
            ..Default::default()
        };
        let mut tracker = StatsTracker::new();
        tracker.update("a", sample(start, Some(high)));
        let stats = tracker.update("a", sample(start + Duration::from_secs(1), Some(fresh)));
        assert_eq!(stats.rates.unwrap().rx_bytes_per_sec, 0.0);
        tracker.forget(&"a");
        let stats = tracker.update("a", sample(start + Duration::from_secs(2), Some(fresh)));
        assert_eq!(stats.rates, None);
    }

    #[test]
    fn idle_time_counts_from_the_last_packet() {
        let stats = KernelStats {
            last_activity_ns: monotonic_now_ns() - 3_000_000_000,
            ..Default::default()
        };
        let idle = stats.idle_for().unwrap();
        assert!(idle >= Duration::from_secs(3), "{idle:?}");
    }

    #[test]
    fn serializes_for_the_api() {
        let stats = InstanceStats::between(None, &sample(Instant::now(), None));
        let json = serde_json::to_value(stats).unwrap();
        assert_eq!(json["memory_bytes"], 4096);
        assert!(json["totals"].is_null());
    }
}
