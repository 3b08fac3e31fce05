//! Counter updates that stay exact when programs nest on one CPU (a softirq interrupting a
//! program that runs in process context) or run on several CPUs at once.
//!
//! The BPF target has no compare-and-swap, so core's atomics offer no `fetch_add`; the
//! instruction itself (`lock add`, in every BPF CPU version) is written out instead.

/// Adds `n` to the counter with one atomic instruction.
///
/// # Safety
/// `counter` must point to a live, 8-byte aligned `u64`: in practice a field of a map value
/// the caller just looked up, which stays valid for the whole program run.
#[inline(always)]
pub unsafe fn add(counter: *mut u64, n: u64) {
    // SAFETY: the caller guarantees `counter` as above; the instruction reads and writes only
    // those 8 bytes.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({counter} + 0) += {n}",
            counter = in(reg) counter,
            n = in(reg) n,
            options(nostack),
        );
    }
}
