//! Kernel-side log lines (aya-log), read by tenement and written to its own log. Callers
//! rate-limit: a tenant hammering a closed port must not flood the ring or the log.

use core::net::Ipv6Addr;

use aya_ebpf::programs::SockAddrContext;
use aya_log_ebpf::warn;
use tenement_common::denial;

/// One denied bind, connect or send of a confined instance.
#[inline(always)]
pub fn denial(ctx: &SockAddrContext, kind: u32, address: &[u8; 16], port: u32) {
    let what = match kind {
        denial::BIND => "bind",
        denial::CONNECT => "connect",
        _ => "send",
    };
    warn!(
        ctx,
        "network policy: denied {} to [{}]:{}",
        what,
        Ipv6Addr::from(*address),
        port
    );
}
