//! Restarts: a crash loop backs off exponentially and ends `failed` after `max_restarts`; an
//! app that never becomes healthy is restarted, then failed; one that turns unhealthy while
//! running goes degraded, unhealthy, and is restarted. Everything is read from the events
//! tenement records, never from wall-clock measurements of the test.

mod supervisor_common;

use std::time::Duration;

use supervisor_common::{describe, python_app, Daemon};
use tenement::store::{Event, EventKind};
use tenement_tests::privileged;

fn backoff_ms(event: &Event) -> u64 {
    event
        .detail
        .strip_prefix("backoff ")
        .and_then(|rest| rest.split("ms").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no backoff in {:?}", event.detail))
}

fn count(events: &[Event], kind: EventKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

#[test]
fn crash_loop_backs_off_then_fails() {
    if !privileged("crash_loop_backs_off_then_fails") {
        return;
    }
    let mut daemon = Daemon::new(
        "crashloop",
        "max_restarts = 3\nrestart_window = 300\nbackoff_base_ms = 200\nbackoff_max_ms = 10000",
    );
    let app = daemon.app(
        "crash.py",
        "import sys\nprint('about to crash', flush=True)\nsys.exit(3)\n",
    );
    daemon.configure(&format!(
        "[service.crashy]\ncommand = \"/usr/bin/python3 {}\"\n\n[instances]\ncrashy = [\"g\"]\n",
        app.display()
    ));
    daemon.start();
    let events = daemon.wait_events("crashy:g", "failed", |events| {
        events.last().is_some_and(|e| e.kind == EventKind::Failed)
    });
    let restarts: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Restarted)
        .collect();
    assert_eq!(
        restarts.len(),
        3,
        "max_restarts = 3:\n{}",
        describe(&events)
    );
    let delays: Vec<u64> = restarts.iter().map(|e| backoff_ms(e)).collect();
    assert_eq!(
        delays,
        [200, 400, 800],
        "exponential backoff:\n{}",
        describe(&events)
    );
    assert_eq!(count(&events, EventKind::Spawned), 4);
    assert_eq!(count(&events, EventKind::Crashed), 4);
    assert!(events
        .iter()
        .filter(|e| e.kind == EventKind::Crashed)
        .all(|e| e.detail.contains("exit code 3")));
    // Each new attempt started no earlier than its backoff after the restart decision.
    for (index, restart) in events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EventKind::Restarted)
    {
        let next_spawn = events[index..]
            .iter()
            .find(|e| e.kind == EventKind::Spawned)
            .expect("a spawn follows each restart");
        let waited = next_spawn
            .time
            .duration_since(restart.time)
            .unwrap_or_default();
        assert!(
            waited >= Duration::from_millis(backoff_ms(restart)),
            "respawned after {waited:?}, before its backoff:\n{}",
            describe(&events)
        );
    }
    let failed = events.last().unwrap();
    assert!(failed.detail.contains("max_restarts"), "{}", failed.detail);
    // Failed stays failed: no more attempts.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.events("crashy:g").len(), events.len());
    daemon.stop();
}

#[test]
fn never_healthy_app_is_restarted_then_failed() {
    if !privileged("never_healthy_app_is_restarted_then_failed") {
        return;
    }
    let mut daemon = Daemon::new(
        "unready",
        "max_restarts = 2\nbackoff_base_ms = 100\nbackoff_max_ms = 1000",
    );
    let app = daemon.app(
        "sick.py",
        &python_app(
            r#"
        elif self.path == "/ready":
            self.answer(500, "never")"#,
        ),
    );
    daemon.configure(&format!(
        "[service.sick]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/ready\"\nstartup_timeout = 2\n\n\
         [instances]\nsick = [\"h\"]\n",
        app.display()
    ));
    daemon.start();
    let events = daemon.wait_events("sick:h", "failed", |events| {
        events.last().is_some_and(|e| e.kind == EventKind::Failed)
    });
    assert_eq!(count(&events, EventKind::Ready), 0, "{}", describe(&events));
    assert_eq!(
        count(&events, EventKind::Restarted),
        2,
        "{}",
        describe(&events)
    );
    let failed_starts: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Crashed)
        .collect();
    assert_eq!(failed_starts.len(), 3, "{}", describe(&events));
    assert!(
        failed_starts
            .iter()
            .all(|e| e.detail.contains("startup_timeout") && e.detail.contains("500")),
        "{}",
        describe(&events)
    );
    assert!(
        daemon.tenant_processes().is_empty(),
        "nothing runs once failed"
    );
    daemon.stop();
}

#[test]
fn app_turning_unhealthy_is_degraded_then_restarted() {
    if !privileged("app_turning_unhealthy_is_degraded_then_restarted") {
        return;
    }
    let mut daemon = Daemon::new(
        "unhealthy",
        "health_check_interval = 1\nbackoff_base_ms = 100\nmax_restarts = 10",
    );
    // Healthy for its first two checks (readiness included), then failing.
    let app = daemon.app(
        "tiring.py",
        &python_app(
            r#"
        elif self.path == "/tired":
            Handler.checks = getattr(Handler, "checks", 0) + 1
            self.answer(200 if Handler.checks <= 2 else 503, Handler.checks)"#,
        ),
    );
    daemon.configure(&format!(
        "[service.tiring]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/tired\"\n\n\
         [instances]\ntiring = [\"i\"]\n",
        app.display()
    ));
    daemon.start();
    let events = daemon.wait_events("tiring:i", "a second ready", |events| {
        count(events, EventKind::Ready) >= 2
    });
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    let first_restart = kinds
        .iter()
        .position(|k| *k == EventKind::Restarted)
        .unwrap();
    assert_eq!(
        kinds[..=first_restart],
        [
            EventKind::Spawned,
            EventKind::Ready,
            EventKind::Degraded,
            EventKind::Degraded,
            EventKind::Unhealthy,
            EventKind::Restarted,
        ],
        "{}",
        describe(&events)
    );
    daemon.stop();
}
