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
    /// `HashMap<u64 cgroup id, NetPolicy>`: the network boundary of each confined instance,
    /// and its denial counters. No entry: the cgroup is not confined.
    pub const NET_POLICY: &str = "NET_POLICY";
    /// `Array<PortRange>` of one slot: tenement's `port_range`, closed to every instance but
    /// for its own port.
    pub const PORT_RANGE: &str = "PORT_RANGE";
    /// `HashMap<u32 port, u32 HostPort kind>`: ports tenement itself listens on.
    pub const HOST_PORTS: &str = "HOST_PORTS";
    /// `LpmTrie<EgressKey, u8>`: the destinations an instance with a list egress may reach.
    pub const EGRESS_ALLOW: &str = "EGRESS_ALLOW";
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
    /// cgroup/bind4 and cgroup/bind6 on the instance subtree: an instance binds its own
    /// port only, and on loopback.
    pub const BIND4: &str = "net_bind4";
    pub const BIND6: &str = "net_bind6";
    /// cgroup/connect4, connect6, sendmsg4, sendmsg6 on the instance subtree: no way to a
    /// neighbour's port nor to tenement's private listeners; egress by policy.
    pub const CONNECT4: &str = "net_connect4";
    pub const CONNECT6: &str = "net_connect6";
    pub const SENDMSG4: &str = "net_sendmsg4";
    pub const SENDMSG6: &str = "net_sendmsg6";
    /// Every network boundary program with the hook it attaches to, in attach order.
    pub const NETWORK: [&str; 6] = [BIND4, BIND6, CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
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

/// What an instance may do with the network beyond its own port, in `NetPolicy::egress`.
pub mod egress {
    /// Any destination but the guarded ports.
    pub const ANY: u32 = 0;
    /// Loopback to its own port and the proxy's ports only.
    pub const NONE: u32 = 1;
    /// As `NONE`, plus the destinations in `EGRESS_ALLOW` for its cgroup.
    pub const LIST: u32 = 2;
}

/// What a denied operation was, in `NetDenials::last_kind`.
pub mod denial {
    pub const BIND: u32 = 1;
    pub const CONNECT: u32 = 2;
    pub const SEND: u32 = 3;
}

/// Kinds of `HOST_PORTS` entries.
pub mod host_port {
    /// A listener of tenement's own that tenants must not reach (the management API).
    pub const PRIVATE: u32 = 1;
    /// A public proxy listener: reachable over loopback like by any client.
    pub const PROXY: u32 = 2;
}

/// tenement's instance port range, inclusive, host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub low: u32,
    pub high: u32,
}

/// Denied socket operations of one instance. Updated by the programs with atomic adds; the
/// `last_*` fields are plain stores (the latest denial wins a race, which is all they say).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetDenials {
    pub binds: u64,
    pub connects: u64,
    /// Datagrams refused at sendmsg (UDP to an address given per call).
    pub sends: u64,
    /// `bpf_ktime_get_ns()` of the latest denial; 0: none yet.
    pub last_ns: u64,
    /// When a denial was last logged from the kernel (rate limit of the kernel log).
    pub last_logged_ns: u64,
    /// Address of the latest denial: IPv6, or IPv4 mapped (`::ffff:a.b.c.d`), network order.
    pub last_addr: [u8; 16],
    /// Port of the latest denial, host byte order.
    pub last_port: u32,
    /// One of [`denial`].
    pub last_kind: u32,
}

/// The network boundary of one instance (value of `NET_POLICY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetPolicy {
    /// The instance's own port, host byte order: the one it may bind.
    pub port: u32,
    /// One of [`egress`].
    pub egress: u32,
    pub denials: NetDenials,
}

/// Data of an `EGRESS_ALLOW` key: the instance, the destination port (big endian; 0 for
/// any port) and the destination address (IPv6, or IPv4 mapped). A CIDR `a.b.c.d/n` is the
/// prefix `EGRESS_FIXED_BITS + 96 + n` bits long.
pub type EgressKey = [u8; 26];

/// Bits of an `EGRESS_ALLOW` key before the address: cgroup id and port always match whole.
pub const EGRESS_FIXED_BITS: u32 = 80;

/// Upper bound on egress rules over all instances (each list entry of each running instance,
/// plus the resolvers).
pub const MAX_EGRESS_RULES: u32 = 65536;

/// Builds the `EGRESS_ALLOW` key data for one destination.
pub fn egress_key(cgroup_id: u64, port: u16, address: [u8; 16]) -> EgressKey {
    let mut key = [0u8; 26];
    let id = cgroup_id.to_ne_bytes();
    let port = port.to_be_bytes();
    let mut i = 0;
    while i < 8 {
        key[i] = id[i];
        i += 1;
    }
    key[8] = port[0];
    key[9] = port[1];
    let mut j = 0;
    while j < 16 {
        key[10 + j] = address[j];
        j += 1;
    }
    key
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CpuCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetPolicy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortRange {}
}
