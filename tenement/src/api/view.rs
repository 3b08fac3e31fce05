//! From the supervisor's and the monitor's state to the API's JSON views.

use std::time::{SystemTime, UNIX_EPOCH};

use super::types::{InstanceView, KernelCountersView, StatsView};
use crate::{
    monitor::{KernelCounters, Monitor},
    supervisor::{InstanceInfo, InstanceState},
};

/// Health only means something while a process is up.
fn health(state: InstanceState) -> Option<&'static str> {
    match state {
        InstanceState::Running => Some("healthy"),
        InstanceState::Degraded => Some("degraded"),
        InstanceState::Unhealthy => Some("unhealthy"),
        _ => None,
    }
}

/// Whether the instance holds (or is getting) a process: it takes traffic or will soon.
pub fn is_live(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Starting
            | InstanceState::Running
            | InstanceState::Degraded
            | InstanceState::Unhealthy
    )
}

pub fn instance(info: &InstanceInfo, monitor: &Monitor) -> InstanceView {
    let now = SystemTime::now();
    let running = info.pid.is_some();
    InstanceView {
        name: info.name.to_string(),
        service: info.name.service.clone(),
        id: info.name.id.clone(),
        state: info.state.as_str().to_string(),
        health: health(info.state).map(str::to_string),
        pid: info.pid,
        port: info.port,
        weight: info.weight,
        restarts: info.restarts,
        // Only while a process runs: a stopped instance has no uptime.
        started_at_ms: info.started_at.filter(|_| running).map(unix_ms),
        uptime_secs: info
            .started_at
            .filter(|_| running)
            .and_then(|started| now.duration_since(started).ok())
            .map(|up| up.as_secs()),
        last_error: info.last_error.clone(),
        stats: stats(info, monitor),
    }
}

/// What the kernel counted for the instance's cgroup. `None` when there is nothing real to
/// show: no cgroup, kernel counters off, or the cgroup not registered with the monitor.
pub fn stats(info: &InstanceInfo, monitor: &Monitor) -> Option<StatsView> {
    let traffic = monitor.traffic(info.cgroup_id?)?;
    let idle_secs = (traffic.last_activity_ns != 0).then(|| {
        let now = monotonic_ns();
        now.saturating_sub(traffic.last_activity_ns) as f64 / 1e9
    });
    Some(StatsView {
        rx_bytes: traffic.rx_bytes,
        tx_bytes: traffic.tx_bytes,
        rx_packets: traffic.rx_packets,
        tx_packets: traffic.tx_packets,
        idle_secs,
    })
}

pub fn kernel_counters(monitor: &Monitor) -> KernelCountersView {
    match monitor.kernel_counters() {
        KernelCounters::Active => KernelCountersView {
            active: true,
            reason: None,
        },
        KernelCounters::Off(reason) => KernelCountersView {
            active: false,
            reason: Some(reason.clone()),
        },
    }
}

pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

/// The clock `bpf_ktime_get_ns()` reads, so kernel timestamps compare with it.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
