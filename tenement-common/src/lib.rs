//! Types shared by the eBPF programs (`tenement-ebpf`) and userspace (`tenement::monitor`).
//!
//! Every value here crosses the kernel boundary as raw bytes, so each struct is `#[repr(C)]`,
//! made of fixed-size fields only, and padded explicitly.
#![no_std]

/// Map names, shared so the loader and the programs cannot drift apart.
pub mod maps {
    /// `PerCpuHashMap<u64 cgroup id, TrafficCounters>`: one entry per registered instance.
    pub const TRAFFIC: &str = "TRAFFIC";
}

/// Program names as they appear in the object file.
pub mod programs {
    pub const TRAFFIC_INGRESS: &str = "traffic_ingress";
    pub const TRAFFIC_EGRESS: &str = "traffic_egress";
}

/// Upper bound on instances watched at once; sizes every per-instance map.
pub const MAX_INSTANCES: u32 = 16384;

/// Socket traffic of one instance as seen at its cgroup's skb hooks (IP packets, headers included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet in either direction.
    pub last_activity_ns: u64,
}

impl TrafficCounters {
    /// Per-CPU copies are summed; the last activity is the latest of them.
    pub fn merge(&mut self, other: &TrafficCounters) {
        self.rx_bytes += other.rx_bytes;
        self.rx_packets += other.rx_packets;
        self.tx_bytes += other.tx_bytes;
        self.tx_packets += other.tx_packets;
        if other.last_activity_ns > self.last_activity_ns {
            self.last_activity_ns = other.last_activity_ns;
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::TrafficCounters {}
}
