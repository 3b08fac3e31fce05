//! tenement's kernel side. The cgroup programs are attached once, to tenement's instance
//! cgroup subtree; the tracepoint programs see the whole machine. Everything is keyed by the
//! cgroup v2 id of the instance, and only cgroups registered by userspace (present in the
//! per-instance maps) are counted: anything else costs one failed lookup and is never recorded.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod counters;
mod cpu;
mod log;
mod maps;
mod network;
mod sockets;
mod tcp_health;
mod traffic;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
