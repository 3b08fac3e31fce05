//! On-CPU time. At every context switch the task leaving the CPU is still `current`, and it
//! has run since the previous switch on this CPU: that slice is credited to its cgroup. No
//! per-task state, one per-CPU timestamp.
//!
//! A task that keeps a CPU to itself may not be switched out for seconds, which would turn
//! its CPU rate into lumps; a slow per-CPU clock event credits the running slice so far and
//! restarts it, so the time shows up within one tick period. Both run with interrupts off
//! (the switch) or in the timer interrupt (the tick), so they never interleave on one CPU.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{perf_event, raw_tracepoint},
    programs::{PerfEventContext, RawTracePointContext},
};

use crate::{
    counters::add,
    maps::{CPU, SWITCHED_IN},
};

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn on_cpu(_ctx: RawTracePointContext) -> i32 {
    credit_running_slice(1);
    0
}

#[perf_event]
pub fn on_cpu_tick(_ctx: PerfEventContext) -> u32 {
    credit_running_slice(0);
    0
}

/// Credits the time since the last switch (or tick) on this CPU to the running task's cgroup.
#[inline(always)]
fn credit_running_slice(switches: u64) {
    // SAFETY: helpers without arguments, valid in tracing and perf event programs.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(switched_in) = SWITCHED_IN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, and the two writers never interleave on one CPU.
    let since = unsafe { core::mem::replace(&mut *switched_in, now) };
    if since == 0 {
        return; // first event on this CPU: the slice started before we were loaded
    }
    // SAFETY: as above.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if let Some(counters) = CPU.get_ptr_mut(cgroup_id) {
        // SAFETY: `counters` points into this CPU's copy of the map value.
        unsafe {
            add(&raw mut (*counters).on_cpu_ns, now.saturating_sub(since));
            add(&raw mut (*counters).slices, switches);
        }
    }
}
