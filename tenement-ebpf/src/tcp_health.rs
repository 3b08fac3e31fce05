//! TCP health: retransmissions and resets of instances' sockets, from the kernel's TCP
//! tracepoints. They fire machine-wide but rarely (only on retransmits and resets); a socket
//! without owner storage is not an instance's and is skipped after one helper call.

use core::ffi::c_void;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{counters::add, maps::SOCKET_OWNERS, maps::TCP};

enum Event {
    Retransmit,
    ResetSent,
    ResetReceived,
}

/// tcp_retransmit_skb(sk, skb, err): a segment (SYN included) was sent again, or failed to
/// be (err != 0, e.g. the original still queued in the device).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: BtfTracePointContext) -> i32 {
    if ctx.arg::<i32>(2) == 0 {
        count(ctx.arg(0), Event::Retransmit);
    }
    0
}

/// Kernels whose tcp_retransmit_skb(sk, skb) has no `err` fire it for sent segments only;
/// the verifier rejects `tcp_retransmit` there, and the loader takes this one instead.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_sent_only(ctx: BtfTracePointContext) -> i32 {
    count(ctx.arg(0), Event::Retransmit);
    0
}

/// tcp_retransmit_synack(listener, request): a listener of the instance repeated a SYN-ACK.
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_synack_retransmit(ctx: BtfTracePointContext) -> i32 {
    count(ctx.arg(0), Event::Retransmit);
    0
}

/// tcp_send_reset(sk, skb, reason): `sk` is NULL when no socket matched the segment; such
/// resets belong to nobody.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_reset_sent(ctx: BtfTracePointContext) -> i32 {
    count(ctx.arg(0), Event::ResetSent);
    0
}

/// tcp_receive_reset(sk): the socket got a valid RST (connection refused, peer aborted).
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_reset_received(ctx: BtfTracePointContext) -> i32 {
    count(ctx.arg(0), Event::ResetReceived);
    0
}

#[inline(always)]
fn count(sk: *mut c_void, event: Event) {
    let Some(owner) = SOCKET_OWNERS.get(sk, false) else {
        return;
    };
    // SAFETY: the socket's storage, read only.
    let cgroup_id = unsafe { (*owner).cgroup_id };
    let Some(counters) = TCP.get_ptr_mut(cgroup_id) else {
        return;
    };
    // SAFETY: `counters` points into the shared map value; updated atomically.
    unsafe {
        let counter = match event {
            Event::Retransmit => &raw mut (*counters).retransmits,
            Event::ResetSent => &raw mut (*counters).resets_sent,
            Event::ResetReceived => &raw mut (*counters).resets_received,
        };
        add(counter, 1);
    }
}
