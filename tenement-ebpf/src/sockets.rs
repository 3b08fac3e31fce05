//! TCP sockets of instances: who owns each one, when it listens, when its connections open
//! and close.
//!
//! Much of a socket's life happens in softirq context, where `current` is whoever was
//! interrupted, so the owner is recorded once, in process context, when the socket is created
//! (cgroup/sock_create), and read back from socket storage afterwards. Accepted sockets get a
//! copy of their listener's record when the kernel clones them.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB,
        BPF_TCP_CLOSE,
    },
    helpers::bpf_get_current_cgroup_id,
    macros::{cgroup_sock, sock_ops},
    programs::{SockContext, SockOpsContext},
};
use tenement_common::{direction, ListenEvent, SocketOwner};

use crate::{
    counters::add,
    maps::{LISTEN_EVENTS, SOCKET_OWNERS, TCP},
};

const IPPROTO_TCP: u32 = 6;

#[cgroup_sock(sock_create)]
pub fn socket_owner(ctx: SockContext) -> i32 {
    // SAFETY: `sock` is the program's context; reading `protocol` is allowed here.
    if unsafe { (*ctx.sock).protocol } != IPPROTO_TCP {
        return 1;
    }
    // SAFETY: sock_create runs in the creating process's context.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if TCP.get_ptr(cgroup_id).is_none() {
        return 1; // not a registered instance: no storage, no cost later
    }
    if let Some(owner) = SOCKET_OWNERS.get(ctx.sock.cast(), true) {
        // SAFETY: fresh storage of this socket, nobody else sees it yet.
        unsafe { (*owner).cgroup_id = cgroup_id };
    }
    1 // allow the socket: tenement only watches here
}

/// What a sock_ops callback means for the counters.
enum Lifecycle {
    Listening,
    Opened(u32),
    Closed,
}

#[sock_ops]
pub fn tcp_lifecycle(ctx: SockOpsContext) -> u32 {
    let event = match ctx.op() {
        BPF_SOCK_OPS_TCP_LISTEN_CB => Lifecycle::Listening,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => Lifecycle::Opened(direction::OUTBOUND),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => Lifecycle::Opened(direction::INBOUND),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => Lifecycle::Closed,
        _ => return 1,
    };
    // SAFETY: reading the context's socket pointer; the verifier knows it may be NULL.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    let Some(owner) = SOCKET_OWNERS.get(sk.cast(), false) else {
        return 1; // not an instance's socket
    };
    // SAFETY: the socket's storage; the callbacks of one socket run under its lock.
    let owner = unsafe { &mut *owner };
    match event {
        Lifecycle::Listening => listening(&ctx, owner),
        Lifecycle::Opened(way) => opened(&ctx, owner, way),
        Lifecycle::Closed => closed(owner),
    }
    1
}

/// listen() just put the socket in the listening hash: connections to it succeed from now on.
#[inline(always)]
fn listening(ctx: &SockOpsContext, owner: &SocketOwner) {
    if TCP.get_ptr(owner.cgroup_id).is_none() {
        return;
    }
    let event = ListenEvent {
        cgroup_id: owner.cgroup_id,
        port: ctx.local_port(),
        family: ctx.family(),
    };
    // A full ring only loses the event; userspace falls back to a connect check.
    let _ = LISTEN_EVENTS.output(event, 0);
}

#[inline(always)]
fn opened(ctx: &SockOpsContext, owner: &mut SocketOwner, way: u32) {
    let Some(counters) = TCP.get_ptr_mut(owner.cgroup_id) else {
        return;
    };
    // Ask for the state callback on this socket, to see it close.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    owner.open = way;
    // SAFETY: `counters` points into the shared map value; updated atomically.
    unsafe {
        if way == direction::INBOUND {
            add(&raw mut (*counters).inbound_opened, 1);
        } else {
            add(&raw mut (*counters).outbound_opened, 1);
        }
    }
}

/// Every full TCP socket ends in TCP_CLOSE (after TIME_WAIT hand-off, LAST_ACK, or a reset).
#[inline(always)]
fn closed(owner: &mut SocketOwner) {
    let way = owner.open;
    if way == direction::NOT_OPEN {
        return; // never established (a failed connect): it was not counted as opened either
    }
    owner.open = direction::NOT_OPEN;
    let Some(counters) = TCP.get_ptr_mut(owner.cgroup_id) else {
        return;
    };
    // SAFETY: as in `opened`.
    unsafe {
        if way == direction::INBOUND {
            add(&raw mut (*counters).inbound_closed, 1);
        } else {
            add(&raw mut (*counters).outbound_closed, 1);
        }
    }
}
