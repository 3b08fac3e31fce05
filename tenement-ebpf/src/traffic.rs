//! Socket traffic: every IP packet of an instance's sockets, in and out, at the cgroup skb
//! hooks of the instance subtree.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{counters::add, maps::TRAFFIC};

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
    let Some(counters) = TRAFFIC.get_ptr_mut(cgroup_id) else {
        return;
    };
    let len = u64::from(ctx.len());
    // SAFETY: `counters` points into this CPU's copy of the map value.
    unsafe {
        match direction {
            Direction::Ingress => {
                add(&raw mut (*counters).rx_bytes, len);
                add(&raw mut (*counters).rx_packets, 1);
            }
            Direction::Egress => {
                add(&raw mut (*counters).tx_bytes, len);
                add(&raw mut (*counters).tx_packets, 1);
            }
        }
        // A plain store: whichever nested writer wins, the value is a moment ago.
        (*counters).last_activity_ns = bpf_ktime_get_ns();
    }
}
