//! The frozen state between running and stopped (`freeze_after`), end to end with a real
//! `tenement serve`, real cgroups and the kernel counters: an idle instance is frozen, then
//! stopped on its `idle_timeout`; a request to a frozen instance is answered by the same
//! process, which runs again; a frozen instance gets no CPU time and no failed health
//! checks; a stop thaws it first so its SIGTERM arrives; under memory pressure (forced with
//! the documented test hook) frozen instances are stopped least recently used first while a
//! running instance is left alone.

mod api_support;
mod idle_support;
mod supervisor_common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use api_support::{request, Target};
use idle_support::{assert_kernel_counters_active, cli, http, pid, proxy_port, state, wait_state};
use supervisor_common::{describe, eventually, Daemon};
use tenement::store::EventKind;
use tenement_tests::privileged;

/// The test app: a little CPU work every 10 ms, a SIGTERM marker.
const FREEZE_APP: &str = include_str!("../apps/freeze_app.py");
/// Generous against a loaded machine: the reaper checks once a second.
const WITHIN: Duration = Duration::from_secs(120);

/// A daemon with one-second health checks (every one of them would fail on a frozen
/// process) and service `api` running the freeze app with `extra` lines.
fn daemon(label: &str, ids: &[&str], extra: &str) -> Daemon {
    let mut daemon = idle_support::daemon(label);
    let app = daemon.app("freeze_app.py", FREEZE_APP);
    daemon.configure(&format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n{extra}\n\n\
         [instances]\napi = {ids:?}\n",
        app.display()
    ));
    daemon.start();
    assert_kernel_counters_active(&daemon);
    daemon
}

/// The instance's cgroup v2 directory (the one with `cgroup.freeze`).
fn cgroup(daemon: &Daemon, name: &str) -> PathBuf {
    let slug = name.replace(':', "_");
    daemon
        .instance_cgroups()
        .into_iter()
        .find(|group| group.ends_with(&slug) && group.join("cgroup.freeze").exists())
        .unwrap_or_else(|| panic!("no cgroup v2 group of {name}:\n{}", daemon.log()))
}

/// `usage_usec` of the group's `cpu.stat`: CPU time of all its processes.
fn cpu_usage(group: &Path) -> u64 {
    let stat = std::fs::read_to_string(group.join("cpu.stat")).unwrap();
    stat.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
        .expect("usage_usec in cpu.stat")
}

fn kernel_says_frozen(group: &Path) -> bool {
    std::fs::read_to_string(group.join("cgroup.events"))
        .unwrap()
        .lines()
        .any(|line| line == "frozen 1")
}

#[test]
fn an_idle_instance_is_frozen_then_stopped_and_a_request_thaws_it() {
    if !privileged("an_idle_instance_is_frozen_then_stopped_and_a_request_thaws_it") {
        return;
    }
    let daemon = daemon(
        "freeze-timers",
        &["alice"],
        "freeze_after = 1\nidle_timeout = 6",
    );
    let port = proxy_port(&daemon);
    let host = "alice.api.localhost";
    let (status, first) = http(port, host, "GET", "/pid", "");
    assert_eq!(status, 200, "{first}");

    wait_state(&daemon, "api:alice", "frozen", WITHIN);
    let group = cgroup(&daemon, "api:alice");
    assert!(kernel_says_frozen(&group), "cgroup.events of {group:?}");
    // Shown frozen everywhere: ps, ps --json, events, the log, /metrics.
    let ps = cli(&daemon, &["ps"]);
    assert!(
        ps.lines()
            .any(|line| line.contains("api:alice") && line.contains("frozen")),
        "{ps}"
    );
    let json: serde_json::Value = serde_json::from_str(&cli(&daemon, &["ps", "--json"])).unwrap();
    assert!(json.to_string().contains("\"state\":\"frozen\""), "{json}");
    let events = daemon.wait_events("api:alice", "frozen", |events| {
        events.iter().any(|e| e.kind == EventKind::Frozen)
    });
    assert!(
        events
            .iter()
            .any(|e| e.detail.contains("freeze_after (1s)")),
        "{}",
        describe(&events)
    );
    assert!(cli(&daemon, &["logs", "api:alice"]).contains("idle for 1s: frozen"));
    let socket = Target::Unix(daemon.data_dir.join("tenement.sock"));
    let (_, metrics) = request(&socket, "GET", "/metrics", None, "").unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tenement_instance_state{")
                && line.contains("instance=\"api:alice\"")
                && line.contains("state=\"frozen\"")
                && line.ends_with(" 1")),
        "{metrics}"
    );

    // Health checks every second skip it: it stays frozen, never degraded.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(state(&daemon, "api:alice"), "frozen");
    }

    // A request is answered by the same process, running again.
    let (status, second) = http(port, host, "GET", "/pid", "");
    assert_eq!((status, &second), (200, &first), "the same process answers");
    assert!(!kernel_says_frozen(&group));
    daemon.wait_events("api:alice", "thawed", |events| {
        events
            .iter()
            .any(|e| e.kind == EventKind::Thawed && e.detail == "thawed by a request")
    });

    // Then frozen again, and stopped on idle_timeout, counted from that request.
    wait_state(&daemon, "api:alice", "frozen", WITHIN);
    wait_state(&daemon, "api:alice", "sleeping", WITHIN);
    assert_eq!(pid(&daemon, "api:alice"), None);
    let kinds = daemon.kinds("api:alice");
    assert!(kinds.contains(&EventKind::IdleStopped), "{kinds:?}");
    assert!(
        !kinds.contains(&EventKind::Degraded) && !kinds.contains(&EventKind::Unhealthy),
        "a frozen instance failed health checks: {}",
        describe(&daemon.events("api:alice"))
    );
    // Stopping it thawed it first: it got its SIGTERM.
    let marker = daemon.data_dir.join("api/alice/sigterm");
    assert!(marker.exists(), "no SIGTERM marker at {}", marker.display());
    eventually("no instance cgroup left", || {
        daemon.instance_cgroups().is_empty().then_some(())
    });
}

#[test]
fn a_frozen_instance_uses_no_cpu() {
    if !privileged("a_frozen_instance_uses_no_cpu") {
        return;
    }
    let daemon = daemon("freeze-cpu", &["alice"], "freeze_after = 1");
    let port = proxy_port(&daemon);
    wait_state(&daemon, "api:alice", "running", WITHIN);
    let group = cgroup(&daemon, "api:alice");
    // Awake, the app burns some CPU all the time.
    let awake = cpu_usage(&group);
    eventually("the awake app to use CPU", || {
        (cpu_usage(&group) > awake).then_some(())
    });

    wait_state(&daemon, "api:alice", "frozen", WITHIN);
    eventually("the kernel to report the group frozen", || {
        kernel_says_frozen(&group).then_some(())
    });
    let before = cpu_usage(&group);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cpu_usage(&group), before, "a frozen instance used CPU");

    let (status, _) = http(port, "alice.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 200);
    eventually("the thawed app to use CPU again", || {
        (cpu_usage(&group) > before).then_some(())
    });
}

#[test]
fn stopping_a_frozen_instance_delivers_sigterm() {
    if !privileged("stopping_a_frozen_instance_delivers_sigterm") {
        return;
    }
    // A long stop_timeout: a SIGTERM the frozen process never saw would end in SIGKILL
    // 60 s later, and no marker.
    let daemon = daemon(
        "freeze-stop",
        &["alice"],
        "freeze_after = 1\nstop_timeout = 60",
    );
    wait_state(&daemon, "api:alice", "frozen", WITHIN);
    cli(&daemon, &["stop", "api:alice"]);
    assert_eq!(state(&daemon, "api:alice"), "stopped");
    let marker = daemon.data_dir.join("api/alice/sigterm");
    assert!(marker.exists(), "no SIGTERM marker at {}", marker.display());
    let events = daemon.events("api:alice");
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Thawed && e.detail == "thawed to be stopped"),
        "{}",
        describe(&events)
    );
    eventually("no instance cgroup left", || {
        daemon.instance_cgroups().is_empty().then_some(())
    });
}

#[test]
fn memory_pressure_stops_frozen_instances_least_recently_used_first() {
    if !privileged("memory_pressure_stops_frozen_instances_least_recently_used_first") {
        return;
    }
    let mut daemon = idle_support::daemon("freeze-pressure");
    let hook = daemon.scratch.join("pressure");
    daemon.env(
        "TENEMENT_MEMORY_PRESSURE_FILE",
        hook.to_str().expect("a UTF-8 path"),
    );
    let app = daemon.app("freeze_app.py", FREEZE_APP);
    daemon.configure(&format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {app}\"\nhealth = \"/health\"\n\
         freeze_after = 2\n\n\
         [service.busy]\ncommand = \"/usr/bin/python3 {app}\"\nhealth = \"/health\"\n\n\
         [instances]\napi = [\"a\", \"b\", \"c\"]\nbusy = [\"x\"]\n",
        app = app.display()
    ));
    daemon.start();
    assert_kernel_counters_active(&daemon);
    let port = proxy_port(&daemon);
    for id in ["a", "b", "c"] {
        wait_state(&daemon, &format!("api:{id}"), "running", WITHIN);
    }
    wait_state(&daemon, "busy:x", "running", WITHIN);
    // Used in the order c, a, b: c is the least recently used, b the most.
    for id in ["c", "a", "b"] {
        let (status, _) = http(port, &format!("{id}.api.localhost"), "GET", "/pid", "");
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    for id in ["a", "b", "c"] {
        wait_state(&daemon, &format!("api:{id}"), "frozen", WITHIN);
    }

    std::fs::write(&hook, "1\n").unwrap();
    for id in ["a", "b", "c"] {
        wait_state(&daemon, &format!("api:{id}"), "sleeping", WITHIN);
    }
    let stopped_at = |id: &str| {
        let events = daemon.events(&format!("api:{id}"));
        events
            .iter()
            .find(|e| e.kind == EventKind::IdleStopped && e.detail.starts_with("memory pressure"))
            .unwrap_or_else(|| panic!("api:{id}: {}", describe(&events)))
            .time
    };
    let (c, a, b) = (stopped_at("c"), stopped_at("a"), stopped_at("b"));
    assert!(
        c <= a && a <= b,
        "stopped out of LRU order: c {c:?}, a {a:?}, b {b:?}"
    );
    // The running instance is not touched by it.
    assert_eq!(state(&daemon, "busy:x"), "running");
    assert!(cli(&daemon, &["logs", "api:c"]).contains("memory pressure (forced by"));
    std::fs::write(&hook, "0\n").unwrap();

    // A stopped instance wakes as usual on the next request.
    let (status, _) = http(port, "c.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 200);
    assert_eq!(state(&daemon, "api:c"), "running");
}

#[test]
fn a_frozen_instance_is_adopted_thawed_by_the_next_tenement() {
    if !privileged("a_frozen_instance_is_adopted_thawed_by_the_next_tenement") {
        return;
    }
    let mut daemon = daemon("freeze-adopt", &["alice"], "freeze_after = 1");
    wait_state(&daemon, "api:alice", "frozen", WITHIN);
    let group = cgroup(&daemon, "api:alice");
    eventually("the kernel to report the group frozen", || {
        kernel_says_frozen(&group).then_some(())
    });
    let tenant = pid(&daemon, "api:alice").expect("a frozen instance keeps its process");
    // A crash while it is frozen: the process stays (tenants outlive tenement), frozen.
    daemon.kill9();
    assert!(supervisor_common::alive(tenant), "the frozen tenant died");
    daemon.start();
    // The next tenement adopts it thawed: the same process answers through the proxy.
    let (status, body) = http(
        proxy_port(&daemon),
        "alice.api.localhost",
        "GET",
        "/pid",
        "",
    );
    assert_eq!(status, 200, "{body}\n{}", daemon.log());
    assert_eq!(
        body.trim(),
        tenant.to_string(),
        "answered by the adopted process"
    );
    // A clean stop ends it, frozen again or not, and leaves no cgroup.
    daemon.stop();
    eventually("the tenant to be gone", || {
        (!supervisor_common::alive(tenant)).then_some(())
    });
    eventually("no instance cgroup left", || {
        daemon.instance_cgroups().is_empty().then_some(())
    });
}
