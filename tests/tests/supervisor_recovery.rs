//! tenement killed with `kill -9`: its tenants keep running, the next start adopts the same
//! instances (those of `[instances]` and those that were running besides) with the same
//! processes and still finds the logs of the earlier run; what cannot be adopted (its guard
//! gone too) is cleaned at start. See also adopt.rs.

mod supervisor_common;

use supervisor_common::{alive, eventually, get, python_app, Daemon};
use tenement::{
    logs::{LogHub, LogQuery, Stream},
    store::EventKind,
};
use tenement_tests::privileged;

#[test]
fn kill_9_then_start_again_adopts_the_same_instances() {
    if !privileged("kill_9_then_start_again_adopts_the_same_instances") {
        return;
    }
    let mut daemon = Daemon::new("recovery", "");
    let app = daemon.app("app.py", &python_app(""));
    let bg = daemon.app("bg.py", "import time\ntime.sleep(1000)\n");
    let (app, bg) = (app.display().to_string(), bg.display().to_string());
    let services = format!(
        r#"
[service.web]
command = "sh -c '/usr/bin/python3 {bg} & exec /usr/bin/python3 {app}'"

[service.ns]
command = "/usr/bin/python3 {app}"
isolation = "namespace"
"#
    );
    daemon.configure(&services);
    let config_without_instances = std::fs::read_to_string(&daemon.config).unwrap();
    daemon.configure("[instances]\nweb = [\"a\", \"b\"]\nns = [\"c\"]\n");
    daemon.start();
    let names = ["web:a", "web:b", "ns:c"];
    for name in names {
        daemon.wait_ready(name, 1);
    }
    let before = daemon.tenant_processes();
    assert!(
        before.len() >= 7,
        "apps, background children, inits: {before:?}"
    );

    daemon.kill9();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for pid in &before {
        assert!(alive(*pid), "process {pid} died with tenement");
    }

    // web:b is no longer in [instances]; it is adopted because it was running.
    std::fs::write(
        &daemon.config,
        format!("{config_without_instances}\n[instances]\nweb = [\"a\"]\nns = [\"c\"]\n"),
    )
    .unwrap();
    daemon.start();
    for name in names {
        let port = daemon.wait_ready(name, 2);
        let (status, body) = get(port, "/").unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert!(daemon.kinds(name).contains(&EventKind::Adopted), "{name}");
        assert_eq!(
            daemon
                .kinds(name)
                .iter()
                .filter(|k| **k == EventKind::Spawned)
                .count(),
            1,
            "{name} was not started again"
        );
    }
    for pid in &before {
        assert!(alive(*pid), "process {pid} of the first run is gone");
    }
    daemon.stop();
    for pid in &before {
        assert!(!alive(*pid), "process {pid} outlived a clean stop");
    }

    // Both streams of the first run are still searchable, once (nothing started twice).
    let logs = LogHub::new(tenement::datadir::logs_dir(&daemon.data_dir)).unwrap();
    for (stream, text) in [
        (Stream::Stdout, "listening on"),
        (Stream::Stderr, "stderr says hello from web:a"),
    ] {
        let found = logs
            .search(&LogQuery {
                instance: Some(supervisor_common::instance("web:a")),
                contains: Some(text.to_string()),
                ..LogQuery::default()
            })
            .unwrap();
        let found: Vec<_> = found.into_iter().filter(|l| l.stream == stream).collect();
        assert_eq!(found.len(), 1, "{text:?} once: {found:?}");
    }
}

#[test]
fn leftovers_of_a_killed_run_are_cleaned_at_start() {
    if !privileged("leftovers_of_a_killed_run_are_cleaned_at_start") {
        return;
    }
    let mut daemon = Daemon::new("leftovers", "");
    let app = daemon.app("app.py", &python_app(""));
    let bg = daemon.app("bg.py", "import time\ntime.sleep(1000)\n");
    daemon.configure(&format!(
        "[service.web]\ncommand = \"sh -c 'setsid /usr/bin/python3 {} & exec /usr/bin/python3 {}'\"\n\n\
         [instances]\nweb = [\"d\"]\n",
        bg.display(),
        app.display()
    ));
    daemon.start();
    daemon.wait_ready("web:d", 1);
    let bg_pid = eventually("the background child", || {
        daemon.tenant_processes().into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains("bg.py")
        })
    });
    // Without its guard (killed first, as an operator's `kill -9` of everything might),
    // the instance outlives tenement in its cgroup, but its output pipes are gone with
    // the guard: it cannot be adopted...
    let guard = supervisor_common::processes_mentioning("__guard")
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains(&format!("__guard\0{}", daemon.pid()))
        })
        .expect("tenement's guard process");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(guard as i32, libc::SIGKILL) };
    daemon.kill9();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(alive(bg_pid), "nothing killed the orphan yet");
    assert!(!daemon.instance_cgroups().is_empty());
    // ...until the next start finds and kills it.
    daemon.start();
    assert!(!alive(bg_pid), "the leftover was not cleaned at start");
    assert!(daemon
        .log()
        .contains("killed processes left by an earlier run"));
    daemon.wait_ready("web:d", 2);
    daemon.stop();
}
