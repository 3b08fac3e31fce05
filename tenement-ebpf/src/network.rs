//! The network boundary of confined instances, at the socket-address hooks of the instance
//! subtree (bind, connect, sendmsg; IPv4 and IPv6).
//!
//! - bind: an instance binds its own port (or port 0, for outgoing sockets) and nothing
//!   else; its own port on any address but loopback is bound on loopback instead, so the app
//!   is reachable through the proxy only.
//! - connect and sendmsg: a destination port in `port_range` (other than its own, over
//!   loopback) or a private listener of tenement is refused whatever the address: 127/8,
//!   `::1`, `::ffff:127.x`, `0.0.0.0` and the host's own addresses all land on this host, and
//!   matching on the port alone needs no list of them. Everything else follows the egress
//!   policy.
//!
//! The cgroup is the calling task's: these hooks run in the process that binds, connects or
//! sends. A cgroup without a `NET_POLICY` entry is not confined and costs one lookup.
//! Refusing returns 0 from the program, which the kernel turns into `EPERM`.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    btf_maps::lpm_trie::Key,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use tenement_common::{denial, egress, egress_key, host_port, NetPolicy, EGRESS_FIXED_BITS};

use crate::{
    counters::add,
    maps::{EGRESS_ALLOW, HOST_PORTS, NET_POLICY, PORT_RANGE},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
/// 127.0.0.1 as the kernel stores it in `user_ip4` (network order in memory).
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// A kernel log line about denials at most this often per instance.
const LOG_EVERY_NS: u64 = 1_000_000_000;

#[cgroup_sock_addr(bind4)]
pub fn net_bind4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(policy) = confined() else {
        return ALLOW;
    };
    // SAFETY (block): reads and writes of the bind4 context fields the verifier allows.
    unsafe {
        let port = port_of(sa);
        if port == 0 {
            return ALLOW;
        }
        let ip = read_volatile(&raw const (*sa).user_ip4);
        if port != (*policy).port {
            refuse(&ctx, policy, denial::BIND, mapped(ip), port);
            return DENY;
        }
        if ip.to_ne_bytes()[0] != 127 {
            write_volatile(&raw mut (*sa).user_ip4, LOOPBACK4);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn net_bind6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(policy) = confined() else {
        return ALLOW;
    };
    // SAFETY (block): as in `net_bind4`.
    unsafe {
        let port = port_of(sa);
        if port == 0 {
            return ALLOW;
        }
        let address = ip6_of(sa);
        if port != (*policy).port {
            refuse(&ctx, policy, denial::BIND, address, port);
            return DENY;
        }
        if is_loopback(&address) {
            return ALLOW;
        }
        // `::` (and any v4-mapped address) becomes `::ffff:127.0.0.1`, which a dual-stack
        // socket (the default) accepts on 127.0.0.1, where the proxy connects; any other
        // IPv6 address becomes `::1`.
        let v4_mapped = address[10] == 0xff && address[11] == 0xff;
        let words: [u32; 4] = if is_unspecified(&address) || v4_mapped {
            [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), LOOPBACK4]
        } else {
            [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
        };
        let ip6 = &raw mut (*sa).user_ip6;
        write_volatile(&raw mut (*ip6)[0], words[0]);
        write_volatile(&raw mut (*ip6)[1], words[1]);
        write_volatile(&raw mut (*ip6)[2], words[2]);
        write_volatile(&raw mut (*ip6)[3], words[3]);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn net_connect4(ctx: SockAddrContext) -> i32 {
    outbound4(&ctx, denial::CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn net_connect6(ctx: SockAddrContext) -> i32 {
    outbound6(&ctx, denial::CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn net_sendmsg4(ctx: SockAddrContext) -> i32 {
    outbound4(&ctx, denial::SEND)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn net_sendmsg6(ctx: SockAddrContext) -> i32 {
    outbound6(&ctx, denial::SEND)
}

#[inline(always)]
fn outbound4(ctx: &SockAddrContext, kind: u32) -> i32 {
    let sa = ctx.sock_addr;
    let Some(policy) = confined() else {
        return ALLOW;
    };
    // SAFETY: reads of context fields valid in connect4/sendmsg4.
    let (address, port) = unsafe {
        (
            mapped(read_volatile(&raw const (*sa).user_ip4)),
            port_of(sa),
        )
    };
    decide(ctx, policy, kind, address, port)
}

#[inline(always)]
fn outbound6(ctx: &SockAddrContext, kind: u32) -> i32 {
    let sa = ctx.sock_addr;
    let Some(policy) = confined() else {
        return ALLOW;
    };
    // SAFETY: reads of context fields valid in connect6/sendmsg6.
    let (address, port) = unsafe { (ip6_of(sa), port_of(sa)) };
    decide(ctx, policy, kind, address, port)
}

#[inline(always)]
fn decide(
    ctx: &SockAddrContext,
    policy: *mut NetPolicy,
    kind: u32,
    address: [u8; 16],
    port: u32,
) -> i32 {
    if allowed(policy, &address, port) {
        ALLOW
    } else {
        refuse(ctx, policy, kind, address, port);
        DENY
    }
}

#[inline(always)]
fn allowed(policy: *mut NetPolicy, address: &[u8; 16], port: u32) -> bool {
    // SAFETY: `policy` points into this instance's NET_POLICY value.
    let (own_port, egress) = unsafe { ((*policy).port, (*policy).egress) };
    let local = is_local(address);
    if port == own_port && local {
        return true;
    }
    if guarded(port) {
        return false;
    }
    let host = match HOST_PORTS.get_ptr(port) {
        // SAFETY: a value of the map, read once.
        Some(kind) => unsafe { *kind },
        None => 0,
    };
    if host == host_port::PRIVATE {
        return false;
    }
    match egress {
        egress::ANY => true,
        _ if local && host == host_port::PROXY => true,
        egress::LIST => listed(port, address),
        _ => false,
    }
}

/// In `port_range`: some instance's port, now or later.
#[inline(always)]
fn guarded(port: u32) -> bool {
    match PORT_RANGE.get(0) {
        Some(range) => port >= range.low && port <= range.high,
        None => false,
    }
}

/// The destination is in the instance's egress list, for this port or for any port.
#[inline(always)]
fn listed(port: u32, address: &[u8; 16]) -> bool {
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let bits = EGRESS_FIXED_BITS + 128;
    let exact = Key::new(bits, egress_key(cgroup_id, port as u16, *address));
    if EGRESS_ALLOW.get(&exact).is_some() {
        return true;
    }
    let any_port = Key::new(bits, egress_key(cgroup_id, 0, *address));
    EGRESS_ALLOW.get(&any_port).is_some()
}

/// The calling task's policy, if its cgroup is a confined instance.
#[inline(always)]
fn confined() -> Option<*mut NetPolicy> {
    // SAFETY: helper without arguments, valid in cgroup sock_addr programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    NET_POLICY.get_ptr_mut(cgroup_id)
}

/// Counts the denial and remembers it as the latest.
#[inline(always)]
fn refuse(ctx: &SockAddrContext, policy: *mut NetPolicy, kind: u32, address: [u8; 16], port: u32) {
    // SAFETY: `policy` points into the shared map value; counters are added atomically, the
    // `last_*` fields are plain stores (see NetDenials).
    unsafe {
        let denials = &raw mut (*policy).denials;
        let counter = match kind {
            denial::BIND => &raw mut (*denials).binds,
            denial::CONNECT => &raw mut (*denials).connects,
            _ => &raw mut (*denials).sends,
        };
        add(counter, 1);
        let now = bpf_ktime_get_ns();
        (*denials).last_ns = now;
        (*denials).last_addr = address;
        (*denials).last_port = port;
        (*denials).last_kind = kind;
        if now.wrapping_sub((*denials).last_logged_ns) >= LOG_EVERY_NS {
            (*denials).last_logged_ns = now;
            crate::log::denial(ctx, kind, &address, port);
        }
    }
}

/// The port of the context's address, host byte order.
///
/// # Safety
/// `sa` is the program's context.
#[inline(always)]
unsafe fn port_of(sa: *mut bpf_sock_addr) -> u32 {
    // SAFETY: the caller's; `user_port` holds the port in network order in its low 16 bits.
    let raw = unsafe { read_volatile(&raw const (*sa).user_port) };
    u32::from(u16::from_be(raw as u16))
}

/// The context's IPv6 address as bytes, read one 32-bit word at a time (the verifier's rule).
///
/// # Safety
/// `sa` is the program's context, of an IPv6 hook.
#[inline(always)]
unsafe fn ip6_of(sa: *mut bpf_sock_addr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let ip6 = unsafe { &raw const (*sa).user_ip6 };
    let mut i = 0;
    while i < 4 {
        // SAFETY: the caller's.
        let word = unsafe { read_volatile(&raw const (*ip6)[i]) }.to_ne_bytes();
        bytes[i * 4] = word[0];
        bytes[i * 4 + 1] = word[1];
        bytes[i * 4 + 2] = word[2];
        bytes[i * 4 + 3] = word[3];
        i += 1;
    }
    bytes
}

/// An IPv4 address (as in `user_ip4`) mapped into IPv6: `::ffff:a.b.c.d`.
#[inline(always)]
fn mapped(ip: u32) -> [u8; 16] {
    let v4 = ip.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Loopback or unspecified (which connect treats as loopback), in either family.
#[inline(always)]
fn is_local(a: &[u8; 16]) -> bool {
    let zero_prefix = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0;
    if !zero_prefix {
        return false;
    }
    if a[10] == 0xff && a[11] == 0xff {
        return a[12] == 127 || (a[12] | a[13] | a[14] | a[15]) == 0;
    }
    a[10] | a[11] | a[12] | a[13] | a[14] == 0 && a[15] <= 1
}

/// `::1` or `::ffff:127.x.y.z`: the only addresses an instance may listen on as given. Not
/// `::ffff:0.0.0.0`, which binds every IPv4 interface.
#[inline(always)]
fn is_loopback(a: &[u8; 16]) -> bool {
    is_local(a) && !is_unspecified(a) && !(a[10] == 0xff && (a[12] | a[13] | a[14] | a[15]) == 0)
}

#[inline(always)]
fn is_unspecified(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}
