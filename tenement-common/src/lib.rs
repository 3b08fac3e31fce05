//! Types shared by the eBPF programs (`tenement-ebpf`) and userspace (`tenement::monitor`).
//!
//! Every value here crosses the kernel boundary as raw bytes, so each struct is `#[repr(C)]`,
//! made of fixed-size fields only, and padded explicitly.
#![no_std]

/// Map names, shared so the loader and the programs cannot drift apart.
pub mod maps {
    /// `PerCpuHashMap<u64 cgroup id, TrafficCounters>`: one entry per registered instance.
    pub const TRAFFIC: &str = "TRAFFIC";
    /// `PerCpuHashMap<u64 cgroup id, CpuCounters>`: one entry per registered instance.
    pub const CPU: &str = "CPU";
    /// `HashMap<u64 cgroup id, TcpCounters>`: one entry per registered instance.
    pub const TCP: &str = "TCP";
    /// `PerCpuArray<u64>` of one slot: when the running task of each CPU was switched in.
    pub const SWITCHED_IN: &str = "SWITCHED_IN";
    /// Socket local storage (`SocketOwner`) of each TCP socket an instance creates.
    pub const SOCKET_OWNERS: &str = "SOCKET_OWNERS";
    /// Ring buffer of `ListenEvent`s.
    pub const LISTEN_EVENTS: &str = "LISTEN_EVENTS";
}

/// Program names as they appear in the object file.
pub mod programs {
    /// cgroup_skb ingress on the instance subtree.
    pub const TRAFFIC_INGRESS: &str = "traffic_ingress";
    /// cgroup_skb egress on the instance subtree.
    pub const TRAFFIC_EGRESS: &str = "traffic_egress";
    /// cgroup/sock_create on the instance subtree: tags each new TCP socket with its owner.
    pub const SOCKET_OWNER: &str = "socket_owner";
    /// sock_ops on the instance subtree: listen, connection opened, connection closed.
    pub const TCP_LIFECYCLE: &str = "tcp_lifecycle";
    /// raw tracepoint `sched_switch`: on-CPU time.
    pub const ON_CPU: &str = "on_cpu";
    /// perf event (software CPU clock, every CPU): credits long-running slices as they go.
    pub const ON_CPU_TICK: &str = "on_cpu_tick";
    pub const TCP_RETRANSMIT: &str = "tcp_retransmit";
    /// Stands in for `TCP_RETRANSMIT` on kernels whose tracepoint has no `err` argument.
    pub const TCP_RETRANSMIT_SENT_ONLY: &str = "tcp_retransmit_sent_only";
    /// BTF tracepoints of TCP health, each with the kernel tracepoint it attaches to.
    pub const TCP_HEALTH: [(&str, &str); 4] = [
        (TCP_RETRANSMIT, "tcp_retransmit_skb"),
        ("tcp_synack_retransmit", "tcp_retransmit_synack"),
        ("tcp_reset_sent", "tcp_send_reset"),
        ("tcp_reset_received", "tcp_receive_reset"),
    ];
}

/// Upper bound on instances watched at once; sizes every per-instance map.
pub const MAX_INSTANCES: u32 = 16384;

/// Period of the CPU clock event that credits running slices (10 Hz): a task that is never
/// switched out still shows its CPU time within this long.
pub const CPU_TICK_NS: u64 = 100_000_000;

/// Bytes of the listen-event ring buffer: room for thousands of events between two reads.
pub const LISTEN_EVENTS_BYTES: u32 = 64 * 1024;

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

/// Time the tasks of one instance spent on a CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// Nanoseconds on CPU, credited when a task is switched out.
    pub on_cpu_ns: u64,
    /// How many times a task of the instance was switched out (ticks do not count).
    pub slices: u64,
}

impl CpuCounters {
    pub fn merge(&mut self, other: &CpuCounters) {
        self.on_cpu_ns += other.on_cpu_ns;
        self.slices += other.slices;
    }
}

/// TCP connections and TCP health of one instance. Shared by all CPUs (events are rare), so
/// the programs update it with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Connections accepted by a listener of the instance that reached ESTABLISHED.
    pub inbound_opened: u64,
    pub inbound_closed: u64,
    /// Connections the instance made (connect) that reached ESTABLISHED.
    pub outbound_opened: u64,
    pub outbound_closed: u64,
    /// Segments retransmitted by the instance's sockets, SYN-ACKs of its listeners included.
    pub retransmits: u64,
    /// RSTs the kernel sent on behalf of the instance's sockets.
    pub resets_sent: u64,
    /// RSTs received by the instance's sockets.
    pub resets_received: u64,
}

/// Which way a socket's connection was opened, remembered so its close is counted once and on
/// the right side.
pub mod direction {
    pub const NOT_OPEN: u32 = 0;
    pub const INBOUND: u32 = 1;
    pub const OUTBOUND: u32 = 2;
}

/// Per-socket storage: the instance (cgroup id) that created the socket. Accepted sockets
/// inherit their listener's copy, so a connection is attributed to the listening instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    pub cgroup_id: u64,
    /// One of [`direction`]: set when the connection is counted as opened.
    pub open: u32,
    pub _pad: u32,
}

/// A process of an instance started listening on a TCP port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenEvent {
    pub cgroup_id: u64,
    /// Local port, host byte order.
    pub port: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CpuCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpCounters {}
}
