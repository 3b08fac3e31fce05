//! The supervisor's API as the proxy and the management API use it, in-process against real
//! processes and cgroups: many concurrent wakes share one spawn, activity keeps an instance
//! awake, idle ones sleep and wake again, failed ones fail fast, stop removes the cgroup.

mod supervisor_common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use supervisor_common::{clean_cgroups, get, instance, python_app, PATIENCE};
use tenement::{
    config::Config,
    logs::LogHub,
    monitor::Monitor,
    proxy::ActivityGuard,
    store::{EventKind, Store},
    supervisor::{self, InstanceState, StartError, Supervisor},
};
use tenement_tests::{privileged, tenement_bin, Scratch};

/// Removes what the test created even when it fails.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        clean_cgroups(&self.0);
    }
}

async fn wait_state(supervisor: &Supervisor, name: &str, state: InstanceState) {
    let name = instance(name);
    let mut changes = supervisor.changes();
    let reached = tokio::time::timeout(PATIENCE, async {
        loop {
            if supervisor.info(&name).is_some_and(|i| i.state == state) {
                return;
            }
            let _ = changes.changed().await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{name} never became {state}: {:?}",
        supervisor.info(&name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervisor_api_end_to_end() {
    if !privileged("supervisor_api_end_to_end") {
        return;
    }
    // The namespace init and the guard come from the tenement binary, not this test binary.
    std::env::set_var("TENEMENT_HELPER_BIN", tenement_bin());
    let scratch = Scratch::new("api");
    let data_dir = scratch.join("data");
    let _cleanup = Cleanup(data_dir.clone());
    let app = scratch.write("app/app.py", &python_app(""));
    let port = tenement_tests::free_port_block(101);
    let text = format!(
        r#"
[settings]
data_dir = "{data}"
port_range = [{port}, {high}]
backoff_base_ms = 100

[service.web]
command = "/usr/bin/python3 {app}"
health = "/health"
idle_timeout = 2

[service.broken]
command = "/bin/false"
restart = "never"
"#,
        data = data_dir.display(),
        high = port + 100,
        app = app.display()
    );
    let config_path = scratch.write("tenement.toml", &text);
    let config = Arc::new(Config::load(&config_path).unwrap());
    let store = Store::open(&data_dir).unwrap();
    let logs = LogHub::new(tenement::datadir::logs_dir(&data_dir)).unwrap();
    let tree = supervisor::cgroup_tree(&config).unwrap();
    let monitor = Monitor::start(tree.unified_dir().unwrap());
    let supervisor = Supervisor::start(
        config.clone(),
        store.clone(),
        logs,
        Arc::new(Mutex::new(monitor)),
    )
    .await
    .unwrap();
    assert!(supervisor.instances().is_empty());

    // 500 concurrent wakes of a never-started instance: one spawn, one port for all.
    let zed = instance("web:zed");
    let wakes: Vec<_> = (0..500)
        .map(|_| {
            let supervisor = supervisor.clone();
            let zed = zed.clone();
            tokio::spawn(async move { supervisor.ensure_running(&zed).await })
        })
        .collect();
    let mut ports = Vec::new();
    for wake in wakes {
        ports.push(wake.await.unwrap().expect("woken").port().expect("a port"));
    }
    ports.dedup();
    assert_eq!(ports.len(), 1, "every caller got the same port");
    let spawned = store
        .events(&zed, 100)
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::Spawned)
        .count();
    assert_eq!(spawned, 1, "500 wakes, one spawn");
    let info = supervisor.info(&zed).unwrap();
    assert_eq!(info.state, InstanceState::Running);
    assert_eq!(info.port, Some(ports[0]));
    assert!(info.pid.is_some() && info.started_at.is_some());
    assert!(info.cgroup_id.is_some(), "a cgroup v2 id for the monitor");
    let cgroup = info.cgroup_path.clone().unwrap();
    assert!(cgroup.is_dir());
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["state"], "running");
    assert_eq!(get(ports[0], "/health").unwrap().0, 200);

    // An open connection keeps it awake past idle_timeout; closing it lets it sleep.
    let connection = ActivityGuard::open(supervisor.activity_meter(&zed).as_ref());
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Not put to sleep (on a busy machine a slow health check may have marked it degraded
    // meanwhile: that is not what this checks).
    let info = supervisor.info(&zed).unwrap();
    assert_ne!(info.state, InstanceState::Sleeping);
    assert!(info.pid.is_some());
    drop(connection);
    wait_state(&supervisor, "web:zed", InstanceState::Sleeping).await;
    // Its cgroup is gone, or already made again (empty) for the next wake (`ahead.rs`):
    // either way no process of it is left.
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.trim().is_empty(),
        "a sleeping instance runs nothing: {procs}"
    );
    assert_eq!(supervisor.info(&zed).unwrap().pid, None);
    // The next request wakes it.
    let port = supervisor
        .ensure_running(&zed)
        .await
        .unwrap()
        .port()
        .unwrap();
    assert_eq!(get(port, "/health").unwrap().0, 200);

    // Weights.
    let mut changes = supervisor.changes();
    changes.borrow_and_update();
    supervisor.set_weight(&zed, 30).unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(supervisor.info(&zed).unwrap().weight, 30);
    assert_eq!(store.weight(&zed).unwrap(), Some(30));
    assert!(supervisor.set_weight(&instance("nope:x"), 1).is_err());

    // Unknown services fail at once.
    match supervisor.ensure_running(&instance("nope:x")).await {
        Err(StartError::UnknownService(service)) => assert_eq!(service, "nope"),
        other => panic!("expected UnknownService, got {other:?}"),
    }

    // A failed instance fails fast; restart tries again (and fails again here).
    let broken = instance("broken:b");
    let first = supervisor.spawn(&broken).await.unwrap_err();
    assert!(
        matches!(
            first,
            StartError::Failed {
                state: InstanceState::Failed,
                ..
            }
        ),
        "{first:?}"
    );
    let fast = supervisor.ensure_running(&broken).await.unwrap_err();
    assert!(fast.to_string().contains("exit code 1"), "{fast}");
    assert!(supervisor.restart(&broken).await.is_err());
    let spawns = store
        .events(&broken, 100)
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::Spawned)
        .count();
    assert_eq!(spawns, 2, "ensure_running did not retry a failed instance");

    // Stop: desired stopped, processes and cgroup gone.
    let cgroup = supervisor.info(&zed).unwrap().cgroup_path.unwrap();
    supervisor.stop(&zed).await.unwrap();
    assert_eq!(supervisor.info(&zed).unwrap().state, InstanceState::Stopped);
    assert!(!cgroup.exists());
    assert!(!store.desired_running().unwrap().contains(&zed));
    let names: Vec<String> = supervisor
        .instances()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(names, ["broken:b", "web:zed"]);

    supervisor.spawn(&zed).await.unwrap();
    supervisor.shutdown().await;
    for dir in tree.dirs() {
        assert!(!dir.exists(), "{} survived the shutdown", dir.display());
    }
    assert!(
        store.desired_running().unwrap().contains(&zed),
        "still wanted"
    );
}
