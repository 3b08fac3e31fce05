//! Idle stop and wake end to end, with the kernel counting: the bundled notes app with
//! `idle_timeout = 2` goes to sleep although tenement health-checks it every second, and the
//! next request wakes a new process that finds the tenant's data where it was.

mod api_support;
mod idle_support;
mod supervisor_common;

use std::time::Duration;

use idle_support::{
    assert_kernel_counters_active, cli, http, pid, proxy_port, state, wait_state, IDLE_TIMEOUT,
};
use supervisor_common::{alive, eventually};
use tenement_tests::{privileged, workspace_root};

#[test]
fn an_idle_tenant_sleeps_and_wakes_with_its_data() {
    if !privileged("an_idle_tenant_sleeps_and_wakes_with_its_data") {
        return;
    }
    let mut daemon = idle_support::daemon("idle-wake");
    let app = daemon.app(
        "app.py",
        &std::fs::read_to_string(workspace_root().join("examples/notes/app.py")).unwrap(),
    );
    daemon.configure(&format!(
        "[service.notes]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\
         idle_timeout = {IDLE_TIMEOUT}\n\n[instances]\nnotes = [\"alice\"]\n",
        app.display()
    ));
    daemon.start();
    assert_kernel_counters_active(&daemon);
    let port = proxy_port(&daemon);
    let alice = "alice.notes.localhost";

    let (status, body) = http(port, alice, "POST", "/notes", "buy milk");
    assert_eq!(status, 201, "{body}");
    let first = pid(&daemon, "notes:alice").expect("alice runs");

    // No request: asleep within 10x idle_timeout, though health checks hit it every second.
    wait_state(
        &daemon,
        "notes:alice",
        "sleeping",
        Duration::from_secs(10 * IDLE_TIMEOUT),
    );
    let events = cli(&daemon, &["events", "notes:alice"]);
    assert!(events.contains("idle-stopped"), "{events}");
    let logs = cli(&daemon, &["logs", "notes:alice"]);
    assert!(
        logs.contains(&format!("idle for {IDLE_TIMEOUT}s")),
        "{logs}"
    );
    assert_eq!(pid(&daemon, "notes:alice"), None);
    eventually("alice's process to be gone", || {
        (!alive(first)).then_some(())
    });
    eventually("no tenant process left", || {
        daemon.tenant_processes().is_empty().then_some(())
    });
    // Its next start is prepared while it sleeps: its cgroups (one per hierarchy) exist,
    // with nothing in them.
    let prepared = eventually("alice's cgroups prepared for the wake", || {
        let groups = daemon.instance_cgroups();
        (!groups.is_empty()).then_some(groups)
    });
    for group in &prepared {
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), "", "{} holds processes", group.display());
    }
    let prepared_inodes = inodes(&prepared);

    // The next request wakes a new process, which finds the note.
    let (status, notes) = http(port, alice, "GET", "/notes", "");
    assert_eq!(status, 200, "{notes}");
    assert!(notes.contains("buy milk"), "{notes}");
    assert_eq!(state(&daemon, "notes:alice"), "running");
    let second = pid(&daemon, "notes:alice").expect("alice runs again");
    assert_ne!(first, second, "a new process after the wake");
    // One group per cgroup hierarchy (several on hybrid hosts), holding the new process only.
    for group in daemon.instance_cgroups() {
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
        assert_eq!(
            procs.split_whitespace().collect::<Vec<_>>(),
            [second.to_string()],
            "{}",
            group.display()
        );
    }
    // The same groups, not new ones of the same name: the wake spawned into them.
    assert_eq!(daemon.instance_cgroups(), prepared);
    assert_eq!(
        inodes(&daemon.instance_cgroups()),
        prepared_inodes,
        "the wake spawned into the prepared cgroups"
    );
    // Sleeping again, then tenement stops: nothing prepared is left behind.
    wait_state(
        &daemon,
        "notes:alice",
        "sleeping",
        Duration::from_secs(10 * IDLE_TIMEOUT),
    );
    eventually("alice's cgroups prepared again", || {
        (!daemon.instance_cgroups().is_empty()).then_some(())
    });
    daemon.stop();
    assert!(
        daemon.instance_cgroups().is_empty(),
        "{:?}",
        daemon.instance_cgroups()
    );
}

/// A cgroup's inode is its id: a group removed and made again under the same name differs.
fn inodes(groups: &[std::path::PathBuf]) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    groups
        .iter()
        .map(|g| std::fs::metadata(g).unwrap().ino())
        .collect()
}

/// `pids.max` of the instance's group that has the pids controller.
fn pids_max(daemon: &supervisor_common::Daemon) -> Option<String> {
    daemon.instance_cgroups().iter().find_map(|g| {
        std::fs::read_to_string(g.join("pids.max"))
            .ok()
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn a_prepared_start_goes_with_a_reload_and_an_operator_stop() {
    if !privileged("a_prepared_start_goes_with_a_reload_and_an_operator_stop") {
        return;
    }
    let mut daemon = idle_support::daemon("idle-prepared");
    let app = daemon.app(
        "app.py",
        &std::fs::read_to_string(workspace_root().join("examples/notes/app.py")).unwrap(),
    );
    daemon.configure(&format!(
        "[service.notes]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\
         idle_timeout = {IDLE_TIMEOUT}\npids_max = 50\n\n[instances]\nnotes = [\"alice\"]\n",
        app.display()
    ));
    daemon.start();
    let port = proxy_port(&daemon);
    let alice = "alice.notes.localhost";
    assert_eq!(http(port, alice, "GET", "/health", "").0, 200);
    let asleep = Duration::from_secs(10 * IDLE_TIMEOUT);
    wait_state(&daemon, "notes:alice", "sleeping", asleep);
    // Prepared with the limits of the definition in force.
    let limit = eventually("alice's cgroups prepared", || pids_max(&daemon));
    assert_eq!(limit, "50");

    // A reload that changes the definition drops what was prepared from the old one.
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace("pids_max = 50", "pids_max = 60"),
    )
    .unwrap();
    cli(&daemon, &["reload"]);
    eventually("the stale prepared groups removed", || {
        daemon.instance_cgroups().is_empty().then_some(())
    });
    // The wake prepares from the new definition.
    assert_eq!(http(port, alice, "GET", "/health", "").0, 200);
    assert_eq!(pids_max(&daemon).as_deref(), Some("60"));
    wait_state(&daemon, "notes:alice", "sleeping", asleep);
    eventually("alice's cgroups prepared again", || pids_max(&daemon));

    // An operator's stop of the sleeping instance removes them too.
    cli(&daemon, &["stop", "notes:alice"]);
    assert_eq!(state(&daemon, "notes:alice"), "stopped");
    assert!(
        daemon.instance_cgroups().is_empty(),
        "{:?}",
        daemon.instance_cgroups()
    );
    daemon.stop();
}
