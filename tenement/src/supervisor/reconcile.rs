//! A reload applied to the instances: the new configuration becomes the supervisor's, then
//! the plan (`reload/plan.rs`) is carried out with the supervisor's ordinary stop and start
//! steps. Instances the plan does not name are not looked at, so their processes go on.

use std::sync::Arc;

use super::{
    instance::{Instance, StopKind},
    prepare, InstanceState, Supervisor, Waker,
};
use crate::{config::Config, reload::plan::Plan, store::EventKind};

/// What applying a plan did, one line per change, and what went wrong on the way (the new
/// configuration is in force either way).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub changes: Vec<String>,
    pub failures: Vec<String>,
}

impl Supervisor {
    /// Makes `new` the configuration and applies `plan` (computed from the current one to
    /// `new`): removed services' instances stop gracefully and are forgotten by the
    /// supervisor, new `[instances]` start, changed definitions are given to their instances
    /// (limits rewritten in running cgroups), and running instances whose process definition
    /// changed are restarted one at a time, each ready before the next one stops.
    pub async fn reconcile(&self, new: Arc<Config>, plan: &Plan) -> Reconciled {
        let shared = &self.shared;
        let mut out = Reconciled::default();
        shared.config.set(new.clone());
        shared.bump();

        self.remove_services(plan, &mut out).await;
        self.give_definitions(&new, plan, &mut out);
        self.put_to_sleep(plan, &mut out).await;
        for service in &plan.services_added {
            out.changes.push(format!("service {service}: added"));
        }
        self.start_added(plan, &mut out).await;
        self.replace_running(plan, &mut out).await;
        for key in &plan.settings_updated {
            out.changes.push(format!("{key}: applied"));
        }
        shared.bump();
        out
    }

    /// Every instance of a removed service stops (all at once, each with its
    /// `stop_timeout`); its cgroup, kernel entries and port go with its process.
    async fn remove_services(&self, plan: &Plan, out: &mut Reconciled) {
        let shared = &self.shared;
        let doomed: Vec<Arc<Instance>> = shared
            .snapshot()
            .into_iter()
            .filter(|i| plan.services_removed.contains(&i.name.service))
            .collect();
        let stops: Vec<_> = doomed
            .iter()
            .map(|instance| {
                let (shared, instance) = (shared.clone(), instance.clone());
                tokio::spawn(async move { shared.stop_run(&instance, StopKind::Stop).await })
            })
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
        for instance in &doomed {
            let name = &instance.name;
            // Not wanted running should the service come back in a later file.
            if let Err(err) = shared.store.set_desired(name, false) {
                tracing::warn!("{err:#}");
            }
            shared.record(
                instance,
                EventKind::Stopped,
                &format!(
                    "service {} removed from the configuration by a reload",
                    name.service
                ),
            );
            shared.lock_instances().remove(name);
            out.changes.push(format!("{name}: stopped and removed"));
        }
        for service in &plan.services_removed {
            out.changes.push(format!("service {service}: removed"));
        }
        shared.bump();
    }

    /// Known instances of changed services get the new definition (the next start uses
    /// it); running ones get changed limits written to their cgroups at once.
    fn give_definitions(&self, new: &Config, plan: &Plan, out: &mut Reconciled) {
        let shared = &self.shared;
        let changed = plan.services_updated.iter().chain(&plan.services_replaced);
        for (service, keys) in changed {
            let Some(definition) = new.service.get(service) else {
                continue;
            };
            let instances: Vec<Arc<Instance>> = shared
                .snapshot()
                .into_iter()
                .filter(|i| &i.name.service == service)
                .collect();
            for instance in &instances {
                instance.set_service(definition.clone());
            }
            if plan.services_updated.contains_key(service) {
                out.changes.push(format!(
                    "service {service}: {} applied in place",
                    keys.join(", ")
                ));
            }
            if !plan.limits_changed(service) {
                continue;
            }
            let Some(tree) = &shared.cgroups else {
                continue;
            };
            let limits = prepare::limits(definition);
            for instance in instances.iter().filter(|i| i.status.borrow().pid.is_some()) {
                match tree.update_limits(&instance.name.slug(), &limits) {
                    Ok(dirs) if !dirs.is_empty() => out
                        .changes
                        .push(format!("{}: limits rewritten in its cgroup", instance.name)),
                    Ok(_) => {}
                    Err(err) => out.failures.push(format!(
                        "{}: rewriting its limits: {err:#} (the next start applies them)",
                        instance.name
                    )),
                }
            }
        }
    }

    /// Instances no longer in `[instances]` stop and sleep: a request still wakes them, as
    /// for any instance of a configured service.
    async fn put_to_sleep(&self, plan: &Plan, out: &mut Reconciled) {
        let shared = &self.shared;
        for name in &plan.instances_removed {
            if let Err(err) = shared.store.set_desired(name, false) {
                tracing::warn!("{err:#}");
            }
            let Some(instance) = shared.get(name) else {
                continue;
            };
            if instance.state() == InstanceState::Stopped {
                continue;
            }
            shared.stop_run(&instance, StopKind::Sleep).await;
            out.changes.push(format!(
                "{name}: no longer in [instances]; stopped, a request wakes it"
            ));
        }
    }

    /// New `[instances]` entries start, together, and are waited for, so the caller learns
    /// whether they came up. One held by an operator's stop stays stopped, as at boot.
    async fn start_added(&self, plan: &Plan, out: &mut Reconciled) {
        let mut starts = Vec::new();
        for name in &plan.instances_added {
            match self.shared.store.held(name) {
                Ok(true) => {
                    out.changes.push(format!(
                        "{name}: stays stopped, as an operator left it (`tenement start {name}`)"
                    ));
                    continue;
                }
                Ok(false) => {}
                Err(err) => tracing::warn!("{err:#}"),
            }
            let instance = match self.shared.known_service(name) {
                Ok(instance) => instance,
                Err(err) => {
                    out.failures.push(format!("{name}: {err}"));
                    continue;
                }
            };
            let supervisor = self.clone();
            let name = name.clone();
            starts.push(tokio::spawn(async move {
                let result = supervisor.wake(&instance, Waker::Operator).await;
                (name, result)
            }));
        }
        for start in starts {
            match start.await {
                Ok((name, Ok(_))) => out.changes.push(format!("{name}: started")),
                Ok((name, Err(err))) => out.failures.push(format!("{name}: {err}")),
                Err(err) => out.failures.push(format!("a start failed: {err}")),
            }
        }
    }

    /// Running (or failed) instances of services whose process definition changed are
    /// restarted with it, one at a time: the next one is only touched once this one is ready again, so a
    /// bad new definition costs one instance, not the service. Instances without a process
    /// simply start with the new definition next time.
    async fn replace_running(&self, plan: &Plan, out: &mut Reconciled) {
        let shared = &self.shared;
        for (service, keys) in &plan.services_replaced {
            let instances: Vec<Arc<Instance>> = shared
                .snapshot()
                .into_iter()
                .filter(|i| &i.name.service == service)
                .collect();
            let what = keys.join(", ");
            out.changes
                .push(format!("service {service}: {what} changed"));
            for instance in instances {
                let name = &instance.name;
                let state = instance.state();
                // A failed one gets a fresh start too: the new definition may be the fix.
                let live = matches!(
                    state,
                    InstanceState::Starting
                        | InstanceState::Running
                        | InstanceState::Degraded
                        | InstanceState::Unhealthy
                        | InstanceState::Failed
                );
                if !live {
                    out.changes.push(format!(
                        "{name}: {state}, starts with the new definition next time"
                    ));
                    continue;
                }
                let before = instance.status.borrow().pid;
                // Off the proxy's table while the old process ends: a request that comes
                // now waits for the new process (as for a wake) instead of being sent to
                // a port about to close.
                shared.update(&instance, |s| {
                    if s.state.serves() {
                        s.state = InstanceState::Stopping;
                    }
                });
                shared.stop_run(&instance, StopKind::Restart).await;
                shared.record(
                    &instance,
                    EventKind::Restarted,
                    &format!("replaced by a reload ({what} changed)"),
                );
                match self.wake(&instance, Waker::Operator).await {
                    Ok(_) => {
                        let after = instance.status.borrow().pid;
                        out.changes.push(format!(
                            "{name}: replaced (pid {} -> {})",
                            pid_text(before),
                            pid_text(after)
                        ));
                    }
                    Err(err) => {
                        out.failures.push(format!(
                            "{name}: replaced, but the new process is not ready: {err} (the \
                             other running instances of {service} were left as they were)"
                        ));
                        break;
                    }
                }
            }
        }
    }
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "none".to_string(), |pid| pid.to_string())
}
