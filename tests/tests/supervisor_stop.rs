//! Stopping leaves nothing behind: a command like `sh -c 'sleep 1000 & exec ./app'` loses
//! its background child too, also when that child escaped with `setsid`; the instance's
//! cgroups are removed; an idle instance is put to sleep the same way.

mod supervisor_common;

use std::path::Path;

use supervisor_common::{alive, eventually, python_app, Daemon};
use tenement::store::EventKind;
use tenement_tests::privileged;

/// A background child that records its pid and session, then sleeps.
const BACKGROUND: &str = r#"import os, sys, time
name = sys.argv[1]
with open(os.path.join(os.environ["DATA_DIR"], name + ".pid"), "w") as f:
    f.write("%d %d" % (os.getpid(), os.getsid(0)))
time.sleep(1000)
"#;

/// (pid, session) written by the background child of an instance.
fn background_child(daemon: &Daemon, instance_dir: &str, name: &str) -> (u32, u32) {
    let file = daemon
        .data_dir
        .join(instance_dir)
        .join(format!("{name}.pid"));
    eventually(&format!("{} to exist", file.display()), || {
        let text = std::fs::read_to_string(&file).ok()?;
        let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??))
    })
}

fn configure(daemon: &Daemon, extra: &str) {
    let app = daemon.app("app.py", &python_app(""));
    let bg = daemon.app("bg.py", BACKGROUND);
    let (app, bg) = (app.display(), bg.display());
    daemon.configure(&format!(
        r#"
[service.plain]
command = "sh -c '/usr/bin/python3 {bg} plain & exec /usr/bin/python3 {app}'"
stop_timeout = 2
{extra}

[service.escaped]
command = "sh -c 'setsid /usr/bin/python3 {bg} escaped & exec /usr/bin/python3 {app}'"
stop_timeout = 2
{extra}
"#
    ));
}

fn session_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[3].parse().unwrap()
}

#[test]
fn stop_kills_background_children_even_after_setsid() {
    if !privileged("stop_kills_background_children_even_after_setsid") {
        return;
    }
    let mut daemon = Daemon::new("stop", "");
    configure(&daemon, "");
    daemon.configure("[instances]\nplain = [\"a\"]\nescaped = [\"b\"]\n");
    daemon.start();
    daemon.wait_ready("plain:a", 1);
    daemon.wait_ready("escaped:b", 1);
    let (plain, _) = background_child(&daemon, "plain/a", "plain");
    let (escaped, escaped_session) = background_child(&daemon, "escaped/b", "escaped");
    assert!(alive(plain) && alive(escaped));
    let app_pid = eventually("the app of escaped:b", || {
        daemon.tenant_processes().into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains("app.py")
                && *pid != escaped
        })
    });
    assert_ne!(
        escaped_session,
        session_of(app_pid),
        "the setsid child left the app's session"
    );
    assert!(!daemon.instance_cgroups().is_empty());

    daemon.stop();
    for pid in [plain, escaped] {
        assert!(!alive(pid), "background child {pid} survived the stop");
    }
    assert_eq!(
        daemon.tenant_processes(),
        Vec::<u32>::new(),
        "processes survived"
    );
    for dir in daemon.cgroup_dirs() {
        assert!(!dir.exists(), "cgroup {} is still there", dir.display());
    }
    // Stopped by a shutdown: still wanted running at the next start.
    let desired = daemon.store().desired_running().unwrap();
    assert_eq!(desired.len(), 2, "{desired:?}");
}

#[test]
fn idle_instances_sleep_and_leave_nothing() {
    if !privileged("idle_instances_sleep_and_leave_nothing") {
        return;
    }
    let mut daemon = Daemon::new("idle", "");
    configure(&daemon, "idle_timeout = 3");
    let app = daemon.app_dir().join("app.py");
    daemon.configure(&format!(
        r#"
[service.ephemeral]
command = "/usr/bin/python3 {}"
idle_timeout = 3
storage_persist = false

[instances]
plain = ["c"]
escaped = ["d"]
ephemeral = ["e"]
"#,
        app.display()
    ));
    daemon.start();
    for name in ["plain:c", "escaped:d", "ephemeral:e"] {
        daemon.wait_events(name, "idle-stopped", |events| {
            events.iter().any(|e| e.kind == EventKind::IdleStopped)
        });
    }
    let (plain, _) = background_child(&daemon, "plain/c", "plain");
    let (escaped, _) = background_child(&daemon, "escaped/d", "escaped");
    eventually("the background children to be gone", || {
        (!alive(plain) && !alive(escaped)).then_some(())
    });
    eventually("every tenant process to be gone", || {
        daemon.tenant_processes().is_empty().then_some(())
    });
    // Only the groups prepared for the next wake stay, empty: one per persistent instance
    // (the ephemeral one's data directory goes with the stop, so nothing is prepared).
    eventually("no process left in an instance cgroup", || {
        daemon.populated_cgroups().is_empty().then_some(())
    });
    let prepared: Vec<String> = daemon
        .instance_cgroups()
        .iter()
        .map(|g| g.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(prepared.iter().all(|g| g != "ephemeral_e"), "{prepared:?}");
    assert!(
        !Path::new(&daemon.data_dir.join("ephemeral/e")).exists(),
        "storage_persist = false: the data directory is removed after the stop"
    );
    assert!(
        daemon.data_dir.join("plain/c").exists(),
        "persistent data stays"
    );
    // Sleeping instances are not started again with tenement.
    assert!(daemon.store().desired_running().unwrap().is_empty());
    daemon.stop();
    assert!(
        daemon.instance_cgroups().is_empty(),
        "the prepared groups go with tenement: {:?}",
        daemon.instance_cgroups()
    );
}
