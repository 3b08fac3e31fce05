//! Counter updates that stay exact when programs nest on one CPU (a softirq interrupting a
//! program that runs in process context) or run on several CPUs at once.
//!
//! The BPF target has no compare-and-swap, so core's atomics offer no `fetch_add`; the
//! instruction itself (`lock add`, in every BPF CPU version) is written out instead.

/// Adds `n` to the counter with one atomic instruction.
#[inline(always)]
pub fn add(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points into a map value, which is 8-byte aligned and lives for the
    // whole program run; the instruction reads and writes only those 8 bytes.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({counter} + 0) += {n}",
            counter = in(reg) counter,
            n = in(reg) n,
            options(nostack),
        );
    }
}
