//! The life of a started instance: one run loop per instance, made of attempts. An attempt
//! forks the process, waits until it is ready, health-checks it, and always ends with a full
//! teardown (process group, then everything in its cgroup, cgroup removed, port released).
//! Between attempts the restart policy and the backoff decide.

use std::{
    os::fd::{AsFd, OwnedFd},
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle, time::timeout};

use super::{
    adopt::Adoption,
    cgroup::InstanceCgroup,
    failure,
    guard_link::log_name,
    health,
    instance::{Instance, StopKind},
    launch::{self, Launch},
    listener::{self, Listening},
    network,
    ports::NoFreePort,
    prepare::{self, Prepared},
    restart::{Decision, Ending, RestartTracker},
    spawner::{self, Child},
    state::InstanceNetwork,
    state::InstanceState,
    storage,
    wake_steps::WakeSteps,
    Shared,
};
use crate::{
    config::{InstanceName, Isolation},
    endpoint::Endpoint,
    logs::Stream,
    store::{EventKind, RunRecord},
};

/// Health checks failing in a row before the instance counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 3;
/// How long the processes of an instance may take to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long output still in the pipes may take to reach the logs after the processes ended.
const LOG_DRAIN: Duration = Duration::from_secs(2);

enum AttemptEnd {
    Stopped(StopKind),
    Exited {
        /// `None`: an adopted process, whose exit status only its parent could read.
        status: Option<ExitStatus>,
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
    /// Every port of `port_range` is taken: nothing was started, the next try waits.
    NoPort(String),
    /// Something other than the instance listened on its port: tried again on another.
    PortTaken {
        port: u16,
        holder: Option<String>,
    },
}

/// How long an instance without a port waits before trying again: ports free up when
/// instances stop or whatever held them lets go.
const NO_PORT_RETRY: Duration = Duration::from_secs(1);
/// After this many port takeovers in a row, later retries wait `NO_PORT_RETRY` in between.
const QUICK_PORT_RETRIES: u32 = 5;

/// Runs attempts until the instance is stopped, stays down by policy, or fails.
pub async fn run(
    shared: Arc<Shared>,
    instance: Arc<Instance>,
    mut stop: watch::Receiver<Option<StopKind>>,
    done: watch::Sender<bool>,
    adoption: Option<Adoption>,
) {
    let mut adoption = adoption;
    let mut tracker = RestartTracker::new(&shared.config().settings);
    let mut takeovers = 0u32;
    let name = &instance.name;
    loop {
        let began_ms = failure::unix_ms(SystemTime::now());
        let end = match adoption.take() {
            Some(adoption) => adopted(&shared, &instance, &mut stop, adoption).await,
            None => attempt(&shared, &instance, &mut stop).await,
        };
        if !matches!(end, AttemptEnd::PortTaken { .. }) {
            takeovers = 0;
        }
        // Not the tenant's failure: no restart is counted, and it never gives up.
        let retry_after = match &end {
            AttemptEnd::NoPort(reason) => Some(no_port(&shared, &instance, reason)),
            AttemptEnd::PortTaken { port, holder } => {
                takeovers += 1;
                Some(port_taken(
                    &shared,
                    &instance,
                    *port,
                    holder.as_deref(),
                    takeovers,
                ))
            }
            _ => None,
        };
        if let Some(delay) = retry_after {
            tokio::select! {
                () = tokio::time::sleep(delay) => continue,
                kind = stopped(&mut stop) => {
                    finish(&shared, &instance, kind);
                    break;
                }
            }
        }
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
            // Handled above.
            AttemptEnd::NoPort(_) | AttemptEnd::PortTaken { .. } => continue,
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
            } => exit_ending(&shared, &instance, status, ready_for, oom_killed, output),
            AttemptEnd::Unhealthy { ready_for } => {
                (Ending::Failure, Some(ready_for), "unhealthy".to_string())
            }
            AttemptEnd::NeverReady { reason } => {
                let what = format!(
                    "not ready within startup_timeout ({}s): {reason}{}",
                    instance.service().startup_timeout,
                    output()
                );
                shared.record(&instance, EventKind::Crashed, &what);
                shared.logs.system(&instance.name, &what);
                (Ending::Failure, None, what)
            }
        };

        let decision = tracker.decide(
            instance.service().restart,
            ending,
            ready_for,
            Instant::now(),
        );
        if !follow(
            &shared,
            &instance,
            decision,
            ending,
            &what,
            start_failed,
            &mut stop,
        )
        .await
        {
            break;
        }
    }
    let _ = done.send(true);
}

/// What a process's exit means for the restart policy: its ending, how long it had been
/// ready, and what happened in words (recorded as the matching event).
fn exit_ending(
    shared: &Shared,
    instance: &Instance,
    status: Option<ExitStatus>,
    ready_for: Option<Duration>,
    oom_killed: bool,
    output: impl Fn() -> String,
) -> (Ending, Option<Duration>, String) {
    let how = spawner::describe_exit(status);
    let success = status.is_some_and(|s| s.success());
    let what = if oom_killed {
        let limit = instance.service().memory_limit_mb.unwrap_or_default();
        let what = format!("killed by the kernel's OOM killer ({how}, memory_limit_mb = {limit})");
        shared.record(instance, EventKind::OomKilled, &what);
        what
    } else if success {
        let what = format!("the program exited ({how})");
        shared.record(instance, EventKind::Stopped, &what);
        what
    } else if ready_for.is_none() {
        let what = format!("it exited ({how}) before it was ready{}", output());
        shared.record(instance, EventKind::Crashed, &what);
        what
    } else {
        let what = format!("crashed ({how})");
        shared.record(instance, EventKind::Crashed, &what);
        what
    };
    shared.logs.system(&instance.name, &what);
    let ending = if success {
        Ending::CleanExit
    } else {
        Ending::Failure
    };
    (ending, ready_for, what)
}

/// Carries out the restart policy's decision after an attempt ended. Returns whether the
/// instance runs another attempt.
async fn follow(
    shared: &Shared,
    instance: &Instance,
    decision: Decision,
    ending: Ending,
    what: &str,
    start_failed: bool,
    stop: &mut watch::Receiver<Option<StopKind>>,
) -> bool {
    let name = &instance.name;
    match decision {
        Decision::Stay => {
            let (state, reason) = if ending == Ending::CleanExit {
                // Done by its own choice: not restarted at the next start of tenement,
                // but, like an idle stop, woken by the next request.
                let _ = shared.store.set_desired(&instance.name, false);
                (InstanceState::Sleeping, None)
            } else {
                let reason = format!("{what}; restart = \"never\": {}", failure::given_up(name));
                shared.record(instance, EventKind::Failed, &reason);
                (InstanceState::Failed, Some(reason))
            };
            shared.update(instance, |s| {
                s.state = state;
                s.last_error = reason;
                s.start_failures += u64::from(start_failed);
                clear_process(s);
            });
            return false;
        }
        Decision::GiveUp { restarts, window } => {
            let reason = format!(
                "{name} failed: {restarts} restarts within restart_window ({}s) reached \
                 max_restarts; last: {what}; {}",
                window.as_secs(),
                failure::given_up(name)
            );
            shared.record(instance, EventKind::Failed, &reason);
            shared.logs.system(&instance.name, &reason);
            tracing::warn!("{reason}");
            shared.update(instance, |s| {
                s.state = InstanceState::Failed;
                s.last_error = Some(reason);
                s.start_failures += u64::from(start_failed);
                clear_process(s);
            });
            return false;
        }
        Decision::Restart { delay } => {
            let detail = format!("backoff {}ms after: {what}", delay.as_millis());
            shared.record(instance, EventKind::Restarted, &detail);
            shared.logs.system(
                &instance.name,
                &format!("restarting in {}ms", delay.as_millis()),
            );
            tracing::info!("{}: {detail}", instance.name);
            let reason = format!("{what}; {}", failure::retrying(name, delay.as_millis()));
            shared.update(instance, |s| {
                s.state = InstanceState::Starting;
                s.restarts += 1;
                s.last_error = Some(reason);
                s.start_failures += u64::from(start_failed);
                clear_process(s);
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                kind = stopped(stop) => {
                    finish(shared, instance, kind);
                    return false;
                }
            }
        }
    }
    true
}

/// The instance waits for a port, shown `failed` with the reason (requests get it at once
/// instead of waiting), and tries again by itself.
fn no_port(shared: &Shared, instance: &Instance, reason: &str) -> Duration {
    let reason = format!(
        "{reason}; retrying every {}s until a port frees up",
        NO_PORT_RETRY.as_secs()
    );
    let first = instance.status.borrow().last_error.as_deref() != Some(reason.as_str());
    if first {
        shared.record(instance, EventKind::Failed, &reason);
        shared.logs.system(&instance.name, &reason);
        tracing::warn!("{}: {reason}", instance.name);
    }
    shared.update(instance, |s| {
        s.state = InstanceState::Failed;
        s.cannot_start = false;
        s.last_error = Some(reason.clone());
        clear_process(s);
    });
    NO_PORT_RETRY
}

/// Someone else listened on the port the instance was given: the next attempt leases
/// another port (the allocator goes round-robin and skips ports in use).
fn port_taken(
    shared: &Shared,
    instance: &Instance,
    port: u16,
    holder: Option<&str>,
    takeovers: u32,
) -> Duration {
    let holder = holder.unwrap_or("a process outside the instance");
    let detail = format!(
        "port {port} is held by {holder}, not by the instance: starting again on another port"
    );
    shared.record(instance, EventKind::PortTaken, &detail);
    shared.logs.system(&instance.name, &detail);
    tracing::warn!("{}: {detail}", instance.name);
    shared.update(instance, |s| {
        s.state = InstanceState::Starting;
        s.last_error = Some(detail.clone());
        clear_process(s);
    });
    if takeovers > QUICK_PORT_RETRIES {
        NO_PORT_RETRY
    } else {
        Duration::ZERO
    }
}

/// The state after a requested stop; the event and the data directory's fate.
fn finish(shared: &Shared, instance: &Instance, kind: StopKind) {
    let state = match kind {
        StopKind::Sleep | StopKind::Pressure => InstanceState::Sleeping,
        StopKind::Stop | StopKind::Shutdown | StopKind::Restart => InstanceState::Stopped,
    };
    // An operator's stop is recorded by `Supervisor::stop`, which holds it.
    // A memory-pressure stop is recorded by `pressure.rs`, which knows the reading.
    match kind {
        StopKind::Stop | StopKind::Restart | StopKind::Pressure => {}
        StopKind::Shutdown => shared.record(instance, EventKind::Stopped, "tenement shut down"),
        StopKind::Sleep => shared.record(
            instance,
            EventKind::IdleStopped,
            &format!(
                "no traffic for idle_timeout ({}s)",
                instance.service().idle_timeout
            ),
        ),
    }
    let config = shared.config();
    let data_root = &config.settings.data_dir;
    if kind != StopKind::Restart && instance.service().storage_quota_mb.is_some() {
        // The quota image is mounted from a start to the next stop (`storage.rs`).
        let dir = prepare::data_dir(data_root, &instance.name);
        if let Err(err) = storage::unmount(&dir) {
            tracing::warn!("{}: {err:#}", instance.name);
        }
        if !instance.service().storage_persist {
            if let Err(err) = storage::remove_image(data_root, &instance.name) {
                tracing::warn!("{}: removing its storage image: {err:#}", instance.name);
            }
        }
    }
    if !instance.service().storage_persist && kind != StopKind::Restart {
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
    status.endpoint = None;
    status.cgroup_id = None;
    status.cgroup_path = None;
    status.memory_cgroup = None;
    status.kernel_trouble = None;
    status.network = None;
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
    let mut steps = WakeSteps::begin();
    if instance.service().socket_activation {
        if let Err(err) = super::activation::hold(shared, instance) {
            if err.downcast_ref::<NoFreePort>().is_some() {
                return AttemptEnd::NoPort(format!("{err:#}"));
            }
            return AttemptEnd::CannotStart(format!("{err:#}"));
        }
    }
    let prepared = match prepare::prepare(shared, name, &instance.service()) {
        Ok(prepared) => prepared,
        Err(err) if err.downcast_ref::<NoFreePort>().is_some() => {
            return AttemptEnd::NoPort(format!("{err:#}"))
        }
        Err(err) => return AttemptEnd::CannotStart(format!("{err:#}")),
    };
    let Prepared {
        launch,
        endpoint,
        port,
        cgroup,
        run_as,
        sandbox_state,
    } = prepared;
    steps.prepared();
    // Counted and confined before the first instruction of the tenant runs.
    let cgroup_id = cgroup.as_ref().and_then(|c| c.id());
    let network = match confine(
        shared,
        instance,
        cgroup_id,
        port.as_ref().map_or(0, |p| p.port()),
    ) {
        Ok(network) => network,
        Err(reason) => {
            if let Some(cgroup) = &cgroup {
                let _ = cgroup.remove();
            }
            return AttemptEnd::CannotStart(reason);
        }
    };
    steps.confined();
    let mut child = match spawn_in(shared, name, &launch, cgroup.as_ref()).await {
        Ok(child) => child,
        Err(err) => {
            if let Some(id) = cgroup_id {
                shared.monitor_lock().unregister(id);
            }
            if let Some(cgroup) = &cgroup {
                let _ = cgroup.remove();
            }
            return AttemptEnd::CannotStart(format!("{err:#}"));
        }
    };
    steps.spawned();
    let captures = capture_output(shared, name, &mut child);
    let pid = child.id();
    let start_ticks = spawner::start_ticks(pid).unwrap_or(0);
    let mut child = match Child::watch(child) {
        Ok(child) => child,
        Err(err) => {
            // Cannot happen on a kernel with pidfd (5.3+); kill what was started.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            return AttemptEnd::CannotStart(format!("{name}: watching pid {pid}: {err}"));
        }
    };
    let record = RunRecord {
        pid,
        start_ticks,
        port: endpoint.port(),
        socket: match &endpoint {
            Endpoint::Unix { path, .. } => Some(path.display().to_string()),
            Endpoint::Port(_) | Endpoint::Peer(_) => None,
        },
        uid: run_as.uid,
        started_ms: failure::unix_ms(SystemTime::now()),
    };
    mark_started(
        shared,
        instance,
        &record,
        &endpoint,
        cgroup.as_ref(),
        network,
    );
    shared.record(
        instance,
        EventKind::Spawned,
        &format!(
            "pid {pid}, {}, uid {}, isolation {}",
            listens_on(&endpoint),
            run_as.uid,
            format!("{:?}", instance.service().isolation).to_lowercase()
        ),
    );

    let end = supervise(
        shared,
        instance,
        &mut child,
        &endpoint,
        cgroup.as_ref(),
        stop,
        Begun {
            steps: &steps,
            serving: false,
        },
    )
    .await;

    // A frozen process gets its SIGTERM only once thawed; nothing freezes it from here on.
    shared.release_freezer(instance);
    let end = end_attempt(
        shared,
        instance,
        end,
        &mut child,
        cgroup.as_ref(),
        sandbox_state,
        captures,
    )
    .await;
    drop(port);
    end
}

/// Teardown, whatever ended the attempt. A stop gets the grace period; after a crash the
/// orphans of a dead app are killed at once. An exit's end learns whether the OOM killer
/// was involved.
async fn end_attempt(
    shared: &Shared,
    instance: &Instance,
    end: AttemptEnd,
    child: &mut Child,
    cgroup: Option<&InstanceCgroup>,
    sandbox_state: Option<std::path::PathBuf>,
    captures: Vec<JoinHandle<()>>,
) -> AttemptEnd {
    let graceful = matches!(end, AttemptEnd::Stopped(_));
    if !graceful {
        // Out of the proxy's rotation before the teardown (which may take a while): a
        // request from now on waits for what comes next instead of meeting a dead port.
        shared.update(instance, |s| {
            if s.state.serves() || s.state == InstanceState::Unhealthy {
                s.state = InstanceState::Starting;
            }
        });
    }
    let oom_killed = tear_down(
        shared,
        instance,
        child,
        cgroup,
        sandbox_state,
        captures,
        graceful,
    )
    .await;
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

/// The first attempt of an instance an earlier tenement started: nothing is forked. Its
/// process (by pidfd), cgroup, port, kernel counters, network boundary and output pipes are
/// taken over, then it is supervised (readiness, health, exit) like one this tenement
/// started.
async fn adopted(
    shared: &Arc<Shared>,
    instance: &Arc<Instance>,
    stop: &mut watch::Receiver<Option<StopKind>>,
    adoption: Adoption,
) -> AttemptEnd {
    let name = &instance.name;
    let steps = WakeSteps::begin();
    let Adoption {
        record,
        cgroup,
        mut child,
        stdout,
        stderr,
    } = adoption;
    let endpoint = match (&record.socket, record.port) {
        (Some(path), _) => Endpoint::Unix {
            path: std::path::Path::new(path).into(),
            owner: record.uid,
        },
        (None, Some(port)) => Endpoint::Port(port),
        (None, None) => Endpoint::Port(0),
    };
    let port = match endpoint.port() {
        Some(port) => shared.ports.claim(port),
        None => None,
    };
    let captures: Vec<JoinHandle<()>> = [(Stream::Stdout, stdout), (Stream::Stderr, stderr)]
        .into_iter()
        .filter_map(|(stream, pipe)| capture(shared, name, stream, pipe))
        .collect();
    let cgroup_id = cgroup.id();
    let network = confine(shared, instance, cgroup_id, endpoint.port().unwrap_or(0));
    let sandbox_state = (instance.service().isolation == Isolation::Sandbox)
        .then(|| super::sandbox::state_dir(&shared.config().settings.data_dir, &name.slug()));
    let network = match network {
        Ok(network) => network,
        Err(reason) => {
            // Never left running outside its boundary: stopped, and started afresh.
            tear_down(
                shared,
                instance,
                &mut child,
                Some(&cgroup),
                sandbox_state,
                captures,
                true,
            )
            .await;
            return AttemptEnd::CannotStart(reason);
        }
    };
    if let Some(id) = cgroup_id {
        if let Err(err) = shared.monitor_lock().carry_over(id) {
            tracing::warn!("{name}: its kernel counters start from zero: {err:#}");
        }
    }
    // Frozen when the previous tenement ended: this one starts with it thawed, as it
    // counts an adopted instance as running.
    if let Some(freezer) = cgroup.freezer() {
        if let Err(err) = freezer.thaw() {
            tracing::warn!("{name}: thawing the adopted instance: {err}");
        }
    }
    mark_started(shared, instance, &record, &endpoint, Some(&cgroup), network);
    let pid = record.pid;
    shared.record(
        instance,
        EventKind::Adopted,
        &format!(
            "pid {pid}, {}, uid {}: still running after tenement restarted",
            listens_on(&endpoint),
            record.uid
        ),
    );
    shared
        .logs
        .system(name, &format!("adopted pid {pid} after tenement restarted"));
    // Listening on its own port: it serves at once, as it did before; otherwise (a unix
    // socket, or caught mid-start) it goes through the readiness checks.
    let serving = endpoint
        .port()
        .is_some_and(|port| matches!(listener::check(port, &cgroup.pids()), Listening::Owned));
    let end = supervise(
        shared,
        instance,
        &mut child,
        &endpoint,
        Some(&cgroup),
        stop,
        Begun {
            steps: &steps,
            serving,
        },
    )
    .await;
    let end = end_attempt(
        shared,
        instance,
        end,
        &mut child,
        Some(&cgroup),
        sandbox_state,
        captures,
    )
    .await;
    drop(port);
    end
}

/// Forks the instance's process, in its cgroup before it execs.
async fn spawn_in(
    shared: &Shared,
    name: &InstanceName,
    launch: &Launch,
    cgroup: Option<&InstanceCgroup>,
) -> anyhow::Result<std::process::Child> {
    let join = match cgroup {
        Some(cgroup) => cgroup.join_files()?,
        None => Vec::new(),
    };
    let (command, what) = launch::command(launch, join)?;
    shared
        .spawner
        .spawn(command)
        .await
        .map_err(|err| anyhow::anyhow!("{name}: starting {what}: {err}"))
}

/// Sends the process's stdout and stderr to its logs; the tasks end when the pipes close.
fn capture_output(
    shared: &Shared,
    name: &InstanceName,
    child: &mut std::process::Child,
) -> Vec<JoinHandle<()>> {
    let pipes = [
        (Stream::Stdout, child.stdout.take().map(OwnedFd::from)),
        (Stream::Stderr, child.stderr.take().map(OwnedFd::from)),
    ];
    pipes
        .into_iter()
        .filter_map(|(stream, pipe)| capture(shared, name, stream, pipe?))
        .collect()
}

/// Reads one output pipe of the instance into its logs; the guard keeps a copy of the read
/// end, so that the instance's writes neither fail nor get lost while no tenement reads.
fn capture(
    shared: &Shared,
    name: &InstanceName,
    stream: Stream,
    pipe: OwnedFd,
) -> Option<JoinHandle<()>> {
    if let Some(guard) = &shared.guard {
        guard.hold(&log_name(name, stream), pipe.as_fd());
    }
    match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(reader) => Some(shared.logs.capture(name, stream, reader)),
        Err(err) => {
            tracing::warn!("{name}: reading its {stream}: {err}");
            None
        }
    }
}

/// The instance is `starting`: its process, endpoint, cgroup and network policy are known.
/// Its process is recorded in the store, for a later tenement to adopt.
fn mark_started(
    shared: &Shared,
    instance: &Instance,
    record: &RunRecord,
    endpoint: &Endpoint,
    cgroup: Option<&InstanceCgroup>,
    network: InstanceNetwork,
) {
    if let Err(err) = shared.store.set_running(&instance.name, record) {
        tracing::warn!("{err:#}");
    }
    let cgroup_id = cgroup.and_then(InstanceCgroup::id);
    let started_at = SystemTime::UNIX_EPOCH + Duration::from_millis(record.started_ms);
    instance.lock_activity().freezer = cgroup.and_then(InstanceCgroup::freezer);
    shared.update(instance, |s| {
        s.state = InstanceState::Starting;
        s.pid = Some(record.pid);
        s.port = endpoint.port();
        s.endpoint = Some(endpoint.clone());
        s.started_at = Some(started_at);
        s.cannot_start = false;
        s.cgroup_id = cgroup_id;
        s.cgroup_path = cgroup.and_then(|c| c.path()).map(|p| p.to_path_buf());
        s.memory_cgroup = cgroup.and_then(|c| c.memory_dir()).map(|p| p.to_path_buf());
        s.network = Some(network);
    });
}

/// Ends every process of the attempt (gracefully for a stop), removes its cgroup, kernel
/// registration and sandbox state, and lets its last output reach the logs. Returns whether
/// the kernel's OOM killer ended it.
async fn tear_down(
    shared: &Shared,
    instance: &Instance,
    child: &mut Child,
    cgroup: Option<&InstanceCgroup>,
    sandbox_state: Option<std::path::PathBuf>,
    captures: Vec<JoinHandle<()>>,
    graceful: bool,
) -> bool {
    let name = &instance.name;
    let grace = Duration::from_secs(instance.service().stop_timeout);
    terminate(child, cgroup, graceful.then_some(grace)).await;
    let mut oom_killed = false;
    if let Some(cgroup) = cgroup {
        if let Err(err) = cgroup.wait_empty(KILL_WAIT).await {
            tracing::error!("{name}: {err:#}");
        }
        oom_killed = cgroup.oom_kills() > 0;
        if let Err(err) = cgroup.remove() {
            tracing::error!("{name}: {err:#}");
        }
    }
    if let Some(id) = cgroup.and_then(InstanceCgroup::id) {
        shared.monitor_lock().unregister(id);
    }
    if let Some(state) = sandbox_state {
        let _ = std::fs::remove_dir_all(state);
    }
    if let Err(err) = shared.store.clear_running(name) {
        tracing::warn!("{err:#}");
    }
    for capture in captures {
        let _ = timeout(LOG_DRAIN, capture).await;
    }
    if let Some(guard) = &shared.guard {
        guard.release(&log_name(name, Stream::Stdout));
        guard.release(&log_name(name, Stream::Stderr));
    }
    oom_killed
}

/// Registers the instance's cgroup with the kernel counters and puts it inside its network
/// boundary. A boundary the kernel could not take is an error (the instance would run
/// unconfined while shown confined); without network isolation at all, it runs unconfined
/// and says so.
fn confine(
    shared: &Shared,
    instance: &Instance,
    cgroup_id: Option<u64>,
    port: u16,
) -> Result<InstanceNetwork, String> {
    let name = &instance.name;
    let policy = network::policy(&instance.service(), port);
    let Some(id) = cgroup_id else {
        return Ok(InstanceNetwork {
            enforced: false,
            policy,
            last_denied: None,
        });
    };
    let monitor = shared.monitor_lock();
    if let Err(err) = monitor.register(id) {
        tracing::warn!("{name}: kernel counters for cgroup {id}: {err:#}");
    }
    match monitor.confine(id, &policy) {
        Ok(enforced) => Ok(InstanceNetwork {
            enforced,
            policy,
            last_denied: None,
        }),
        Err(err) => {
            monitor.unregister(id);
            Err(format!("{name}: applying its network policy: {err:#}"))
        }
    }
}

/// How an attempt began: where its milliseconds went, and whether its process serves
/// already (an adopted process found listening on its own port).
struct Begun<'a> {
    steps: &'a WakeSteps,
    serving: bool,
}

/// Waits for readiness (unless `serving`: an adopted process found listening on its own
/// port is ready as it was), then health-checks until the process ends, turns unhealthy,
/// or a stop is requested.
async fn supervise(
    shared: &Shared,
    instance: &Instance,
    child: &mut Child,
    endpoint: &Endpoint,
    cgroup: Option<&InstanceCgroup>,
    stop: &mut watch::Receiver<Option<StopKind>>,
    begun: Begun<'_>,
) -> AttemptEnd {
    let Begun { steps, serving } = begun;
    let service = &instance.service();
    let startup = Duration::from_secs(service.startup_timeout);
    let ready = if serving {
        Ok(Ok(()))
    } else {
        tokio::select! {
            ready = timeout(startup, wait_ready(instance, endpoint, cgroup)) => ready,
            status = child.wait() => {
                // An app that died because its port was taken (EADDRINUSE) gets another port.
                // (A held port is tenement's own: nobody else can take it.)
                let held = service.socket_activation;
                if let Some(taken) = endpoint
                    .port()
                    .filter(|_| !held)
                    .and_then(|port| taken(port, cgroup))
                {
                    return taken;
                }
                return exited(status, None);
            }
            kind = stopped(stop) => return AttemptEnd::Stopped(kind),
        }
    };
    if let Ok(Err(taken)) = ready {
        return taken;
    }
    if let Err(_elapsed) = ready {
        let reason = match service.health.as_deref() {
            Some(path) => match health::check(endpoint, Some(path), Duration::from_secs(1)).await {
                Ok(()) => "it became healthy just too late".to_string(),
                Err(reason) => reason,
            },
            None => format!("nothing accepted connections on {}", listens_on(endpoint)),
        };
        return AttemptEnd::NeverReady { reason };
    }
    let ready_at = Instant::now();
    instance.touch();
    shared.update(instance, |s| {
        s.state = InstanceState::Running;
        s.last_error = None;
    });
    steps.log(&instance.name, ready_at);
    let began = steps.began();
    // From the decision to start (cgroup, data directory, fork included) to the first
    // successful check.
    let took = began.elapsed().as_millis();
    let on = listens_on(endpoint);
    tracing::info!("{}: ready in {took}ms on {on}", instance.name);
    shared.record(
        instance,
        EventKind::Ready,
        &format!("ready after {took}ms on {on}"),
    );

    let interval = Duration::from_secs(shared.config().settings.health_check_interval.max(1));
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
        let check = health::check(endpoint, service.health.as_deref(), interval);
        let Some(checked) = shared.probe(instance, check).await else {
            // Frozen: not checked, neither failed nor woken.
            continue;
        };
        match checked {
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

fn exited(status: std::io::Result<Option<ExitStatus>>, ready_for: Option<Duration>) -> AttemptEnd {
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

/// Listening (on a port: on a socket of the instance's own, anything else is `PortTaken`),
/// then (if the service has a health path) answering it with 2xx.
async fn wait_ready(
    instance: &Instance,
    endpoint: &Endpoint,
    cgroup: Option<&InstanceCgroup>,
) -> Result<(), AttemptEnd> {
    // A held socket listens already: connections wait in its accept queue until the app
    // accepts them, so requests are forwarded at once, without waiting for readiness.
    if instance.service().socket_activation {
        return Ok(());
    }
    loop {
        health::wait_listening(endpoint, &instance.listening).await;
        // A unix socket in its own 0700 directory cannot be taken; without a cgroup there
        // is no way to tell whose socket it is.
        let (Some(port), Some(cgroup)) = (endpoint.port(), cgroup) else {
            break;
        };
        match listener::check(port, &cgroup.pids()) {
            Listening::Owned => break,
            Listening::Foreign { holder } => return Err(AttemptEnd::PortTaken { port, holder }),
            // Seen listening a moment ago, closed since: wait for it again.
            Listening::Nobody => tokio::time::sleep(Duration::from_millis(15)).await,
        }
    }
    if let Some(path) = instance.service().health.as_deref() {
        while health::check(endpoint, Some(path), Duration::from_secs(2))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// `PortTaken` when something outside the instance listens on its port.
fn taken(port: u16, cgroup: Option<&InstanceCgroup>) -> Option<AttemptEnd> {
    let cgroup = cgroup?;
    match listener::check(port, &cgroup.pids()) {
        Listening::Foreign { holder } => Some(AttemptEnd::PortTaken { port, holder }),
        Listening::Owned | Listening::Nobody => None,
    }
}

/// `port 31000` or `socket /var/lib/tenement/notes/alice/app.sock`, for events and logs.
fn listens_on(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Port(port) => format!("port {port}"),
        Endpoint::Unix { path, .. } => format!("socket {}", path.display()),
        Endpoint::Peer(address) => format!("node {address}"),
    }
}

/// Ends every process of the attempt. With a grace period: SIGTERM to the process group,
/// then up to `grace` for everything to exit. Then SIGKILL to whatever is left in the
/// cgroup (processes that left the group with setsid included), and the child is reaped.
async fn terminate(child: &mut Child, cgroup: Option<&InstanceCgroup>, grace: Option<Duration>) {
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
