//! From the supervisor's and the monitor's state to the API's JSON views.

use std::time::{SystemTime, UNIX_EPOCH};

use super::types::{EgressView, InstanceStatsView, InstanceView, KernelCountersView, NetworkView};
use crate::{
    monitor::{Egress, InstanceStats, KernelCounters, Monitor, NetworkIsolation},
    supervisor::{InstanceInfo, InstanceNetwork, InstanceState},
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
            | InstanceState::Frozen
            | InstanceState::Degraded
            | InstanceState::Unhealthy
    )
}

pub fn instance(info: &InstanceInfo, stats: Option<InstanceStats>) -> InstanceView {
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
        socket: info.socket.as_ref().map(|p| p.display().to_string()),
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
        stats: stats.filter(|_| running),
        network: info.network.as_ref().filter(|_| running).map(network),
        disk_used_bytes: info.disk_used_bytes,
        storage_quota_mb: info.storage_quota_mb,
    }
}

fn network(network: &InstanceNetwork) -> NetworkView {
    NetworkView {
        enforced: network.enforced,
        bind_port: network.policy.port,
        egress: match &network.policy.egress {
            Egress::Any => EgressView::Mode("any".into()),
            Egress::None => EgressView::Mode("none".into()),
            Egress::List(list) => EgressView::List(list.iter().map(|d| d.to_string()).collect()),
        },
        last_denied: network.last_denied.clone(),
    }
}

pub fn network_isolation(monitor: &Monitor) -> KernelCountersView {
    match monitor.network_isolation() {
        NetworkIsolation::Active => KernelCountersView {
            active: true,
            reason: None,
        },
        NetworkIsolation::Off(reason) => KernelCountersView {
            active: false,
            reason: Some(reason.clone()),
        },
    }
}

/// The stats endpoints' view of an instance: its state and the sampler's latest stats.
pub fn instance_stats(info: &InstanceInfo, stats: Option<InstanceStats>) -> InstanceStatsView {
    InstanceStatsView {
        name: info.name.to_string(),
        service: info.name.service.clone(),
        state: info.state.as_str().to_string(),
        restarts: info.restarts,
        last_error: info.last_error.clone(),
        // A stopped instance shows nothing, even for the moment before the next sample.
        stats: stats.filter(|_| info.pid.is_some()),
    }
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
