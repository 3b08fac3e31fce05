//! The life of a started instance: one run loop per instance, made of attempts. An attempt
//! forks the process, waits until it is ready, health-checks it, and always ends with a full
//! teardown (process group, then everything in its cgroup, cgroup removed, port released).
//! Between attempts the restart policy and the backoff decide.

use std::{
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle, time::timeout};

use super::{
    failure, health,
    instance::{Instance, StopKind},
    launch,
    prepare::{self, Prepared},
    restart::{Decision, Ending, RestartTracker},
    spawner::{self, Child},
    state::InstanceState,
    storage, Shared,
};
use crate::{logs::Stream, store::EventKind};

/// Health checks failing in a row before the instance counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 3;
/// How long the processes of an instance may take to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long output still in the pipes may take to reach the logs after the processes ended.
const LOG_DRAIN: Duration = Duration::from_secs(2);

enum AttemptEnd {
    Stopped(StopKind),
    Exited {
        status: ExitStatus,
        ready_for: Option<Duration>,
        oom_killed: bool,
    },
    Unhealthy {
        ready_for: Duration,
    },
    NeverReady {
        reason: String,
    },
    /// Nothing was started: the reason is a configuration or host problem.
    CannotStart(String),
}

/// Runs attempts until the instance is stopped, stays down by policy, or fails.
pub async fn run(
    shared: Arc<Shared>,
    instance: Arc<Instance>,
    mut stop: watch::Receiver<Option<StopKind>>,
    done: watch::Sender<bool>,
) {
    let mut tracker = RestartTracker::new(&shared.config.settings);
    let name = &instance.name;
    loop {
        let began_ms = failure::unix_ms(SystemTime::now());
        let end = attempt(&shared, &instance, &mut stop).await;
        // Ended before it was ready: what it said counts, and waiters are told at once.
        let start_failed = matches!(
            end,
            AttemptEnd::NeverReady { .. }
                | AttemptEnd::Exited {
                    ready_for: None,
                    ..
                }
        );
        let output = || failure::last_output(&shared.logs, name, began_ms);
        let (ending, ready_for, what) = match end {
            AttemptEnd::Stopped(kind) => {
                finish(&shared, &instance, kind);
                break;
            }
            AttemptEnd::CannotStart(reason) => {
                shared.record(&instance, EventKind::Failed, &reason);
                shared
                    .logs
                    .system(&instance.name, &format!("cannot start: {reason}"));
                tracing::error!("{reason}");
                shared.update(&instance, |s| {
                    s.state = InstanceState::Failed;
                    s.cannot_start = true;
                    s.last_error = Some(reason);
                    clear_process(s);
                });
                break;
            }
            AttemptEnd::Exited {
                status,
                ready_for,
                oom_killed,
            } => {
                let how = spawner::describe(status);
                let what = if oom_killed {
                    let limit = instance.service.memory_limit_mb.unwrap_or_default();
                    let what = format!(
                        "killed by the kernel's OOM killer ({how}, memory_limit_mb = {limit})"
                    );
                    shared.record(&instance, EventKind::OomKilled, &what);
                    what
                } else if status.success() {
                    let what = format!("the program exited ({how})");
                    shared.record(&instance, EventKind::Stopped, &what);
                    what
                } else if ready_for.is_none() {
                    let what = format!("it exited ({how}) before it was ready{}", output());
                    shared.record(&instance, EventKind::Crashed, &what);
                    what
                } else {
                    let what = format!("crashed ({how})");
                    shared.record(&instance, EventKind::Crashed, &what);
                    what
                };
                shared.logs.system(&instance.name, &what);
                let ending = if status.success() {
                    Ending::CleanExit
                } else {
                    Ending::Failure
                };
                (ending, ready_for, what)
            }
            AttemptEnd::Unhealthy { ready_for } => {
                (Ending::Failure, Some(ready_for), "unhealthy".to_string())
            }
            AttemptEnd::NeverReady { reason } => {
                let what = format!(
                    "not ready within startup_timeout ({}s): {reason}{}",
                    instance.service.startup_timeout,
                    output()
                );
                shared.record(&instance, EventKind::Crashed, &what);
                shared.logs.system(&instance.name, &what);
                (Ending::Failure, None, what)
            }
        };

        match tracker.decide(instance.service.restart, ending, ready_for, Instant::now()) {
            Decision::Stay => {
                let (state, reason) = if ending == Ending::CleanExit {
                    // Done by its own choice: not restarted at the next start of tenement,
                    // but, like an idle stop, woken by the next request.
                    let _ = shared.store.set_desired(&instance.name, false);
                    (InstanceState::Sleeping, None)
                } else {
                    let reason =
                        format!("{what}; restart = \"never\": {}", failure::given_up(name));
                    shared.record(&instance, EventKind::Failed, &reason);
                    (InstanceState::Failed, Some(reason))
                };
                shared.update(&instance, |s| {
                    s.state = state;
                    s.last_error = reason;
                    s.start_failures += u64::from(start_failed);
                    clear_process(s);
                });
                break;
            }
            Decision::GiveUp { restarts, window } => {
                let reason = format!(
                    "{name} failed: {restarts} restarts within restart_window ({}s) reached \
                     max_restarts; last: {what}; {}",
                    window.as_secs(),
                    failure::given_up(name)
                );
                shared.record(&instance, EventKind::Failed, &reason);
                shared.logs.system(&instance.name, &reason);
                tracing::warn!("{reason}");
                shared.update(&instance, |s| {
                    s.state = InstanceState::Failed;
                    s.last_error = Some(reason);
                    s.start_failures += u64::from(start_failed);
                    clear_process(s);
                });
                break;
            }
            Decision::Restart { delay } => {
                let detail = format!("backoff {}ms after: {what}", delay.as_millis());
                shared.record(&instance, EventKind::Restarted, &detail);
                shared.logs.system(
                    &instance.name,
                    &format!("restarting in {}ms", delay.as_millis()),
                );
                tracing::info!("{}: {detail}", instance.name);
                let reason = format!("{what}; {}", failure::retrying(name, delay.as_millis()));
                shared.update(&instance, |s| {
                    s.state = InstanceState::Starting;
                    s.restarts += 1;
                    s.last_error = Some(reason);
                    s.start_failures += u64::from(start_failed);
                    clear_process(s);
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    kind = stopped(&mut stop) => {
                        finish(&shared, &instance, kind);
                        break;
                    }
                }
            }
        }
    }
    let _ = done.send(true);
}

/// The state after a requested stop; the event and the data directory's fate.
fn finish(shared: &Shared, instance: &Instance, kind: StopKind) {
    let state = match kind {
        StopKind::Sleep => InstanceState::Sleeping,
        StopKind::Stop | StopKind::Shutdown | StopKind::Restart => InstanceState::Stopped,
    };
    // An operator's stop is recorded by `Supervisor::stop`, which holds it.
    match kind {
        StopKind::Stop | StopKind::Restart => {}
        StopKind::Shutdown => shared.record(instance, EventKind::Stopped, "tenement shut down"),
        StopKind::Sleep => shared.record(
            instance,
            EventKind::IdleStopped,
            &format!(
                "no traffic for idle_timeout ({}s)",
                instance.service.idle_timeout
            ),
        ),
    }
    let data_root = &shared.config.settings.data_dir;
    if kind != StopKind::Restart && instance.service.storage_quota_mb.is_some() {
        // The quota image is mounted from a start to the next stop (`storage.rs`).
        let dir = prepare::data_dir(data_root, &instance.name);
        if let Err(err) = storage::unmount(&dir) {
            tracing::warn!("{}: {err:#}", instance.name);
        }
        if !instance.service.storage_persist {
            if let Err(err) = storage::remove_image(data_root, &instance.name) {
                tracing::warn!("{}: removing its storage image: {err:#}", instance.name);
            }
        }
    }
    if !instance.service.storage_persist && kind != StopKind::Restart {
        let dir = prepare::data_dir(data_root, &instance.name);
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "{}: removing data directory {}: {err}",
                    instance.name,
                    dir.display()
                );
            }
        }
    }
    shared.update(instance, |s| {
        s.state = state;
        clear_process(s);
    });
}

fn clear_process(status: &mut super::instance::Status) {
    status.pid = None;
    status.port = None;
    status.cgroup_id = None;
    status.cgroup_path = None;
    status.memory_cgroup = None;
    status.kernel_trouble = None;
}

/// Resolves once a stop is requested, with its kind.
async fn stopped(stop: &mut watch::Receiver<Option<StopKind>>) -> StopKind {
    match stop.wait_for(Option::is_some).await {
        Ok(kind) => kind.expect("waited for Some"),
        // The handle is gone: the supervisor itself is gone.
        Err(_) => StopKind::Shutdown,
    }
}

async fn attempt(
    shared: &Arc<Shared>,
    instance: &Arc<Instance>,
    stop: &mut watch::Receiver<Option<StopKind>>,
) -> AttemptEnd {
    if let Some(kind) = *stop.borrow() {
        return AttemptEnd::Stopped(kind);
    }
    let name = &instance.name;
    let began = Instant::now();
    let prepared = match prepare::prepare(shared, name, &instance.service) {
        Ok(prepared) => prepared,
        Err(err) => return AttemptEnd::CannotStart(format!("{err:#}")),
    };
    let Prepared {
        launch,
        port,
        cgroup,
        run_as,
        sandbox_state,
    } = prepared;
    let spawned = async {
        let join = match &cgroup {
            Some(cgroup) => cgroup.join_files()?,
            None => Vec::new(),
        };
        let (command, what) = launch::command(&launch, join)?;
        let child = shared
            .spawner
            .spawn(command)
            .await
            .map_err(|err| anyhow::anyhow!("{name}: starting {what}: {err}"))?;
        anyhow::Ok(child)
    }
    .await;
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            if let Some(cgroup) = &cgroup {
                let _ = cgroup.remove();
            }
            return AttemptEnd::CannotStart(format!("{err:#}"));
        }
    };
    let mut captures: Vec<JoinHandle<()>> = Vec::new();
    if let Some(out) = child.stdout.take() {
        if let Ok(out) = tokio::process::ChildStdout::from_std(out) {
            captures.push(shared.logs.capture(name, Stream::Stdout, out));
        }
    }
    if let Some(err) = child.stderr.take() {
        if let Ok(err) = tokio::process::ChildStderr::from_std(err) {
            captures.push(shared.logs.capture(name, Stream::Stderr, err));
        }
    }
    let pid = child.id();
    let mut child = match Child::watch(child) {
        Ok(child) => child,
        Err(err) => {
            // Cannot happen on a kernel with pidfd (5.3+); kill what was started.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            return AttemptEnd::CannotStart(format!("{name}: watching pid {pid}: {err}"));
        }
    };
    let cgroup_id = cgroup.as_ref().and_then(|c| c.id());
    if let Some(id) = cgroup_id {
        if let Err(err) = shared.monitor_lock().register(id) {
            tracing::warn!("{name}: kernel counters for cgroup {id}: {err:#}");
        }
    }
    shared.update(instance, |s| {
        s.state = InstanceState::Starting;
        s.pid = Some(pid);
        s.port = Some(port.port());
        s.started_at = Some(SystemTime::now());
        s.cannot_start = false;
        s.cgroup_id = cgroup_id;
        s.cgroup_path = cgroup
            .as_ref()
            .and_then(|c| c.path())
            .map(|p| p.to_path_buf());
        s.memory_cgroup = cgroup
            .as_ref()
            .and_then(|c| c.memory_dir())
            .map(|p| p.to_path_buf());
    });
    shared.record(
        instance,
        EventKind::Spawned,
        &format!(
            "pid {pid}, port {}, uid {}, isolation {:?}",
            port.port(),
            run_as.uid,
            instance.service.isolation
        )
        .to_lowercase(),
    );

    let end = supervise(
        shared,
        instance,
        &mut child,
        port.port(),
        cgroup.as_ref(),
        stop,
        began,
    )
    .await;

    // Teardown, whatever happened. A stop gets the grace period; after a crash the orphans
    // of a dead app are killed at once.
    let graceful = matches!(end, AttemptEnd::Stopped(_));
    let grace = Duration::from_secs(instance.service.stop_timeout);
    terminate(&mut child, cgroup.as_ref(), graceful.then_some(grace)).await;
    let mut oom_killed = false;
    if let Some(cgroup) = &cgroup {
        if let Err(err) = cgroup.wait_empty(KILL_WAIT).await {
            tracing::error!("{name}: {err:#}");
        }
        oom_killed = cgroup.oom_kills() > 0;
        if let Err(err) = cgroup.remove() {
            tracing::error!("{name}: {err:#}");
        }
    }
    if let Some(id) = cgroup_id {
        shared.monitor_lock().unregister(id);
    }
    if let Some(state) = sandbox_state {
        let _ = std::fs::remove_dir_all(state);
    }
    for capture in captures {
        let _ = timeout(LOG_DRAIN, capture).await;
    }
    drop(port);
    match end {
        AttemptEnd::Exited {
            status, ready_for, ..
        } => AttemptEnd::Exited {
            status,
            ready_for,
            oom_killed,
        },
        other => other,
    }
}

/// Waits for readiness, then health-checks until the process ends, turns unhealthy, or a
/// stop is requested.
async fn supervise(
    shared: &Shared,
    instance: &Instance,
    child: &mut Child,
    port: u16,
    cgroup: Option<&super::cgroup::InstanceCgroup>,
    stop: &mut watch::Receiver<Option<StopKind>>,
    began: Instant,
) -> AttemptEnd {
    let service = &instance.service;
    let startup = Duration::from_secs(service.startup_timeout);
    let ready = tokio::select! {
        ready = timeout(startup, wait_ready(instance, port)) => ready,
        status = child.wait() => return exited(status, None),
        kind = stopped(stop) => return AttemptEnd::Stopped(kind),
    };
    if let Err(_elapsed) = ready {
        let reason = match service.health.as_deref() {
            Some(path) => match health::check(port, Some(path), Duration::from_secs(1)).await {
                Ok(()) => "it became healthy just too late".to_string(),
                Err(reason) => reason,
            },
            None => format!("nothing accepted connections on port {port}"),
        };
        return AttemptEnd::NeverReady { reason };
    }
    let ready_at = Instant::now();
    instance.touch();
    shared.update(instance, |s| {
        s.state = InstanceState::Running;
        s.last_error = None;
    });
    // From the decision to start (cgroup, data directory, fork included) to the first
    // successful check.
    let took = began.elapsed().as_millis();
    tracing::info!("{}: ready in {took}ms on port {port}", instance.name);
    shared.record(
        instance,
        EventKind::Ready,
        &format!("ready after {took}ms on port {port}"),
    );

    let interval = Duration::from_secs(shared.config.settings.health_check_interval.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A slow check delays the next one instead of causing a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    let mut oom_seen = 0;
    loop {
        tokio::select! {
            status = child.wait() => return exited(status, Some(ready_at.elapsed())),
            kind = stopped(stop) => return AttemptEnd::Stopped(kind),
            _ = ticks.tick() => {}
        }
        if let Some(cgroup) = cgroup {
            let kills = cgroup.oom_kills();
            if kills > oom_seen {
                oom_seen = kills;
                let detail = "the OOM killer killed a process of the instance (memory limit)";
                shared.record(instance, EventKind::OomKilled, detail);
                shared.logs.system(&instance.name, detail);
            }
        }
        let check = health::check(port, service.health.as_deref(), interval);
        match shared.probe(instance, check).await {
            Ok(()) if failures > 0 => {
                failures = 0;
                shared.logs.system(&instance.name, "healthy again");
                // A TCP storm the kernel still sees keeps it degraded (see sampler.rs).
                shared.update(instance, |s| {
                    s.state = match s.kernel_trouble {
                        Some(_) => InstanceState::Degraded,
                        None => InstanceState::Running,
                    };
                    s.last_error = s.kernel_trouble.clone();
                });
            }
            Ok(()) => {}
            Err(reason) => {
                failures += 1;
                let detail = format!("health check {failures}/{UNHEALTHY_AFTER} failed: {reason}");
                shared.logs.system(&instance.name, &detail);
                let state = if failures >= UNHEALTHY_AFTER {
                    shared.record(instance, EventKind::Unhealthy, &detail);
                    InstanceState::Unhealthy
                } else {
                    shared.record(instance, EventKind::Degraded, &detail);
                    InstanceState::Degraded
                };
                shared.update(instance, |s| {
                    s.state = state;
                    s.last_error = Some(detail.clone());
                });
                if state == InstanceState::Unhealthy {
                    return AttemptEnd::Unhealthy {
                        ready_for: ready_at.elapsed(),
                    };
                }
            }
        }
    }
}

fn exited(status: std::io::Result<ExitStatus>, ready_for: Option<Duration>) -> AttemptEnd {
    match status {
        Ok(status) => AttemptEnd::Exited {
            status,
            ready_for,
            oom_killed: false,
        },
        Err(err) => AttemptEnd::NeverReady {
            reason: format!("waiting for the process failed: {err}"),
        },
    }
}

/// Listening, then (if the service has a health path) answering it with 2xx.
async fn wait_ready(instance: &Instance, port: u16) {
    health::wait_listening(port, &instance.listening).await;
    if let Some(path) = instance.service.health.as_deref() {
        while health::check(port, Some(path), Duration::from_secs(2))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Ends every process of the attempt. With a grace period: SIGTERM to the process group,
/// then up to `grace` for everything to exit. Then SIGKILL to whatever is left in the
/// cgroup (processes that left the group with setsid included), and the child is reaped.
async fn terminate(
    child: &mut Child,
    cgroup: Option<&super::cgroup::InstanceCgroup>,
    grace: Option<Duration>,
) {
    if let Some(grace) = grace {
        child.signal_group(libc::SIGTERM);
        let all_gone = async {
            let _ = child.wait().await;
            if let Some(cgroup) = cgroup {
                while !cgroup.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let _ = timeout(grace, all_gone).await;
    }
    child.signal_group(libc::SIGKILL);
    if let Some(cgroup) = cgroup {
        cgroup.kill_all();
    }
    let _ = child.wait().await;
}
