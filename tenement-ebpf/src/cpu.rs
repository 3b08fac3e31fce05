//! On-CPU time. At every context switch the task leaving the CPU is still `current`, and it
//! ran since the previous switch on this CPU: that slice is credited to its cgroup. No
//! per-task state, one per-CPU timestamp.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::{
    counters::add,
    maps::{CPU, SWITCHED_IN},
};

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn on_cpu(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: helpers without arguments, valid in tracing programs.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(switched_in) = SWITCHED_IN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; a context switch does not nest on its own CPU.
    let since = unsafe { core::mem::replace(&mut *switched_in, now) };
    if since == 0 {
        return 0; // first switch seen on this CPU: the slice started before we were loaded
    }
    // SAFETY: as above.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if let Some(counters) = CPU.get_ptr_mut(cgroup_id) {
        // SAFETY: `counters` points into this CPU's copy of the map value.
        unsafe {
            add(&raw mut (*counters).on_cpu_ns, now.saturating_sub(since));
            add(&raw mut (*counters).slices, 1);
        }
    }
    0
}
