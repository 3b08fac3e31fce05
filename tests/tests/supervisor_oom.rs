//! `memory_limit_mb` is enforced by the instance's cgroup: an app that allocates past it is
//! killed by the kernel's OOM killer, tenement records it and restarts it with backoff, and
//! the neighbour keeps running untouched.

mod supervisor_common;

use supervisor_common::{describe, get, python_app, Daemon};
use tenement::store::EventKind;
use tenement_tests::privileged;

const EAT: &str = r#"
        elif self.path == "/eat":
            hog = []
            while True:
                hog.append(bytearray(8 * 1024 * 1024))"#;

#[test]
fn out_of_memory_is_killed_recorded_and_restarted() {
    if !privileged("out_of_memory_is_killed_recorded_and_restarted") {
        return;
    }
    let mut daemon = Daemon::new("oom", "backoff_base_ms = 300\nmax_restarts = 5");
    let app = daemon.app("hungry.py", &python_app(EAT));
    daemon.configure(&format!(
        "[service.hungry]\ncommand = \"/usr/bin/python3 {}\"\nmemory_limit_mb = 64\nhealth = \"/health\"\n\n\
         [instances]\nhungry = [\"glutton\", \"neighbour\"]\n",
        app.display()
    ));
    daemon.start();
    let glutton = daemon.wait_ready("hungry:glutton", 1);
    let neighbour = daemon.wait_ready("hungry:neighbour", 1);
    let neighbour_pid = get(neighbour, "/").unwrap().1;

    // The request dies with the process.
    let _ = get(glutton, "/eat");
    let events = daemon.wait_events("hungry:glutton", "a restart after the OOM kill", |events| {
        let oom = events.iter().position(|e| e.kind == EventKind::OomKilled);
        oom.is_some_and(|at| events[at..].iter().any(|e| e.kind == EventKind::Ready))
    });
    let oom = events
        .iter()
        .find(|e| e.kind == EventKind::OomKilled)
        .unwrap();
    assert!(
        oom.detail.contains("OOM") && oom.detail.contains("memory_limit_mb = 64"),
        "{}",
        oom.detail
    );
    let restart = events
        .iter()
        .find(|e| e.kind == EventKind::Restarted)
        .unwrap_or_else(|| panic!("no restart:\n{}", describe(&events)));
    assert!(
        restart.detail.starts_with("backoff 300ms"),
        "{}",
        restart.detail
    );
    let glutton = daemon.wait_ready("hungry:glutton", 2);
    assert_eq!(get(glutton, "/health").unwrap().0, 200, "it serves again");

    // The neighbour: same process, never restarted, still answering.
    let (status, now) = get(neighbour, "/").unwrap();
    assert_eq!(status, 200);
    let pid =
        |report: &str| serde_json::from_str::<serde_json::Value>(report).unwrap()["pid"].clone();
    assert_eq!(
        pid(&now),
        pid(&neighbour_pid),
        "the neighbour was restarted"
    );
    assert_eq!(
        daemon.kinds("hungry:neighbour"),
        [EventKind::Spawned, EventKind::Ready],
        "the neighbour was touched"
    );
    daemon.stop();
}
