//! tenement's kernel side. Every program is attached once, to tenement's instance cgroup
//! subtree, and keys what it sees by the cgroup id of the instance that owns the socket.
//! Only cgroups registered by userspace (present in the map) are counted, so traffic of the
//! host or of unrelated cgroups costs one failed lookup and is never recorded.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::{cgroup_skb, map},
    maps::PerCpuHashMap,
    programs::SkBuffContext,
};
use tenement_common::{TrafficCounters, MAX_INSTANCES};

#[map(name = "TRAFFIC")]
static TRAFFIC: PerCpuHashMap<u64, TrafficCounters> =
    PerCpuHashMap::with_max_entries(MAX_INSTANCES, 0);

#[cgroup_skb]
pub fn traffic_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, Direction::Ingress);
    1 // let the packet through: tenement watches, it does not filter here
}

#[cgroup_skb]
pub fn traffic_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, Direction::Egress);
    1
}

enum Direction {
    Ingress,
    Egress,
}

#[inline(always)]
fn count(ctx: &SkBuffContext, direction: Direction) {
    // SAFETY: the helper only reads the skb's socket cgroup; valid in cgroup_skb programs.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let Some(counters) = TRAFFIC.get_ptr_mut(&cgroup_id) else {
        return;
    };
    let len = ctx.len() as u64;
    // SAFETY: per-CPU value, so no other CPU writes it; preemption is off in this context.
    let counters = unsafe { &mut *counters };
    match direction {
        Direction::Ingress => {
            counters.rx_bytes += len;
            counters.rx_packets += 1;
        }
        Direction::Egress => {
            counters.tx_bytes += len;
            counters.tx_packets += 1;
        }
    }
    counters.last_activity_ns = unsafe { bpf_ktime_get_ns() };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
