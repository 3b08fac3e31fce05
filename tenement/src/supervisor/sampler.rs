//! The one place instance stats come from: every second, one sample of each instance that
//! has a process (kernel counters and cgroup memory), turned into `InstanceStats` by one
//! `StatsTracker` and kept on the instance for every reader (API, `tenement top`,
//! `/metrics`). The same rates feed the kernel side of health: a TCP storm makes a running
//! instance `degraded` until it passes.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use super::{health::KernelHealth, instance::Instance, state::InstanceState, Shared};
use crate::{
    config::InstanceName,
    monitor::{Sample, StatsTracker},
    store::EventKind,
};

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the sampler remembers of one process of an instance.
struct Watched {
    cgroup_id: Option<u64>,
    pid: u32,
    health: KernelHealth,
    /// Network denials already reported as events.
    denied: u64,
}

pub async fn run(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tracker = StatsTracker::<InstanceName>::new();
    let mut watched: HashMap<InstanceName, Watched> = HashMap::new();
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.is_shutting_down() {
            return;
        }
        let instances = shared.snapshot();
        for instance in &instances {
            sample(&shared, instance, &mut tracker, &mut watched);
        }
        // Forgotten instances: drop their history too.
        watched.retain(|name, _| {
            let known = instances.iter().any(|i| &i.name == name);
            if !known {
                tracker.forget(name);
            }
            known
        });
    }
}

fn sample(
    shared: &Shared,
    instance: &Arc<Instance>,
    tracker: &mut StatsTracker<InstanceName>,
    watched: &mut HashMap<InstanceName, Watched>,
) {
    let name = &instance.name;
    let (pid, cgroup_id, memory_cgroup) = {
        let status = instance.status.borrow();
        (status.pid, status.cgroup_id, status.memory_cgroup.clone())
    };
    let Some(pid) = pid else {
        // No process: its history ends here, the next one starts afresh.
        if watched.remove(name).is_some() {
            tracker.forget(name);
        }
        instance.set_stats(None);
        return;
    };
    let same_process = watched
        .get(name)
        .is_some_and(|w| w.pid == pid && w.cgroup_id == cgroup_id);
    if !same_process {
        tracker.forget(name);
        watched.insert(
            name.clone(),
            Watched {
                cgroup_id,
                pid,
                health: KernelHealth::default(),
                denied: 0,
            },
        );
    }
    let sample = match cgroup_id {
        Some(id) => shared.monitor_lock().sample(id, memory_cgroup.as_deref()),
        // No cgroup v2 group (cgroups unavailable): nothing to read but nothing to hide.
        None => Sample {
            taken: Instant::now(),
            kernel: None,
            memory_bytes: None,
        },
    };
    let mut stats = tracker.update(name.clone(), sample);
    if stats.totals.is_some() {
        // Idle time as the idle reaper sees it: the tenant's own packets and requests, not
        // tenement's health probes (see idle.rs). Busy (a request in flight) shows as 0.
        let kernel = shared.kernel_traffic(instance);
        let since = instance.lock_activity().idle_since(kernel);
        stats.idle_for_secs = Some(since.map_or(0.0, |at| at.elapsed().as_secs_f64()));
    }
    instance.set_stats(Some(stats));
    if let (Some(totals), Some(watch), Some(id)) = (stats.totals, watched.get_mut(name), cgroup_id)
    {
        if totals.denied() > watch.denied {
            watch.denied = totals.denied();
            report_denials(shared, instance, id);
        }
    }
    if let (Some(rates), Some(watch)) = (stats.rates, watched.get_mut(name)) {
        let trouble = watch.health.observe(&rates).map(str::to_string);
        apply_kernel_health(shared, instance, trouble);
    }
}

/// An event per second at most (the sampler's pace) while a tenant keeps knocking: the
/// latest refused address and the totals so far.
fn report_denials(shared: &Shared, instance: &Instance, cgroup_id: u64) {
    let Some(denials) = shared.monitor_lock().denials(cgroup_id) else {
        return;
    };
    let Some(last) = &denials.last else {
        return;
    };
    let detail = format!(
        "refused {last} ({} binds, {} connects, {} sends refused so far)",
        denials.binds, denials.connects, denials.sends
    );
    shared.record(instance, EventKind::NetworkDenied, &detail);
    let last = last.to_string();
    shared.update(instance, |s| {
        if let Some(network) = &mut s.network {
            network.last_denied = Some(last);
        }
    });
}

/// Puts a serving instance into `degraded` while the kernel sees a storm, and back to
/// `running` when it passed, unless its health checks failed meanwhile (their reason then
/// stands, and the run loop decides).
fn apply_kernel_health(shared: &Shared, instance: &Instance, trouble: Option<String>) {
    let mut began = None;
    let mut ended = false;
    let mut state_changed = false;
    instance.status.send_if_modified(|s| {
        if s.kernel_trouble == trouble {
            return false;
        }
        let previous = std::mem::replace(&mut s.kernel_trouble, trouble.clone());
        let shown = s.last_error.is_some() && s.last_error == previous;
        match (&trouble, s.state) {
            (Some(reason), InstanceState::Running) => {
                s.state = InstanceState::Degraded;
                s.last_error = Some(reason.clone());
                state_changed = true;
                began = Some(reason.clone());
            }
            // Degraded by the storm already: the reason follows its latest value.
            (Some(reason), InstanceState::Degraded) if shown || previous.is_none() => {
                if previous.is_none() {
                    began = Some(reason.clone());
                }
                if shown {
                    s.last_error = Some(reason.clone());
                }
            }
            (None, InstanceState::Degraded) if shown => {
                s.state = InstanceState::Running;
                s.last_error = None;
                state_changed = true;
                ended = true;
            }
            (None, _) => ended = previous.is_some(),
            _ => {}
        }
        true
    });
    if state_changed {
        shared.bump();
    }
    if let Some(reason) = began {
        tracing::warn!("{}: degraded: {reason}", instance.name);
        shared
            .logs
            .system(&instance.name, &format!("degraded: {reason}"));
        shared.record(instance, EventKind::Degraded, &reason);
    }
    if ended {
        tracing::info!("{}: the kernel's TCP storm is over", instance.name);
        shared
            .logs
            .system(&instance.name, "kernel: the TCP storm is over");
    }
}
