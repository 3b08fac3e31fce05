//! Tenants outlive tenement: after a `kill -9` of the daemon its instances keep running
//! (their guard holds their output pipes), a new `tenement serve` on the same data directory
//! adopts the very same processes (pidfd, cgroup, store), reads what they wrote meanwhile,
//! notices when one dies and restarts it; with no new daemon, the guard stops them all after
//! `adopt_timeout`; a clean SIGTERM still stops everything.

mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use supervisor_common::{alive, eventually, get, processes_mentioning, python_app, Daemon};
use tenement::store::EventKind;
use tenement_tests::{privileged, tenement_bin};

/// An app that also prints `/say/WORDS` to its stdout.
fn app(daemon: &Daemon) -> String {
    let app = python_app(
        r#"        elif self.path.startswith("/say/"):
            print("said", self.path[5:], flush=True)
            self.answer(200, "said")"#,
    );
    daemon.app("app.py", &app).display().to_string()
}

/// The pid in the detail of the last event of `kind` (`pid 1234, ...`).
fn pid_of(daemon: &Daemon, name: &str, kind: EventKind) -> u32 {
    let events = daemon.events(name);
    let event = events
        .iter()
        .rev()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("{name}: no {kind} event"));
    event
        .detail
        .strip_prefix("pid ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", event.detail))
}

/// The proxy's address from the configuration the harness wrote.
fn proxy_port(daemon: &Daemon) -> u16 {
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    config
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|rest| rest.trim_end_matches('"').parse().ok())
        .expect("the proxy's listen line")
}

/// `GET /` through the proxy for `host`: its status.
fn through_proxy(port: u16, host: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// `tenement logs NAME` as an operator runs it.
fn logs(daemon: &Daemon, name: &str) -> String {
    let output = Command::new(tenement_bin())
        .arg("--config")
        .arg(&daemon.config)
        .args(["logs", name, "-n", "1000"])
        .output()
        .unwrap();
    assert!(output.status.success(), "tenement logs {name}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `inbound_opened` of web:a's kernel counters, as `tenement top --once --json web` shows
/// them (`None` before the first sample).
fn connections_counted(daemon: &Daemon) -> Option<u64> {
    let output = Command::new(tenement_bin())
        .arg("--config")
        .arg(&daemon.config)
        .args(["top", "--once", "--json", "web"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    fn find(value: &serde_json::Value) -> Option<u64> {
        match value {
            serde_json::Value::Object(map) => map
                .get("inbound_opened")
                .and_then(serde_json::Value::as_u64)
                .or_else(|| map.values().find_map(find)),
            serde_json::Value::Array(items) => items.iter().find_map(find),
            _ => None,
        }
    }
    find(&json)
}

fn guards_of(pid: u32) -> Vec<u32> {
    processes_mentioning("__guard")
        .into_iter()
        .filter(|guard| {
            std::fs::read_to_string(format!("/proc/{guard}/cmdline"))
                .unwrap_or_default()
                .contains(&format!("__guard\0{pid}\0"))
        })
        .collect()
}

#[test]
fn kill_9_then_a_new_tenement_adopts_the_same_processes() {
    if !privileged("kill_9_then_a_new_tenement_adopts_the_same_processes") {
        return;
    }
    // A data directory deeper than a unix socket path may be (107 bytes, with the guard's
    // socket in it): the guard, the API and `tenement` reach their sockets all the same.
    let mut daemon = Daemon::new("adopt-in-a-data-directory-deeper-than-sun-path", "");
    assert!(
        daemon
            .data_dir
            .join(".tenement/adopt/1234567-123456.sock")
            .as_os_str()
            .len()
            > 107
    );
    let app = app(&daemon);
    daemon.configure(&format!(
        r#"
[service.web]
command = "/usr/bin/python3 {app}"
health = "/health"

[service.ns]
command = "/usr/bin/python3 {app}"
isolation = "namespace"

[instances]
web = ["a"]
ns = ["c"]
"#
    ));
    daemon.start();
    let names = ["web:a", "ns:c"];
    let mut pids = Vec::new();
    let mut ports = Vec::new();
    for name in names {
        ports.push(daemon.wait_ready(name, 1));
        pids.push(pid_of(&daemon, name, EventKind::Spawned));
    }
    let first = daemon.pid();
    // Kernel counters before the crash: they do not go back to zero after the adoption.
    for _ in 0..20 {
        assert_eq!(get(ports[0], "/health").unwrap().0, 200);
    }
    let counted = eventually("web:a's 20 connections in its kernel counters", || {
        connections_counted(&daemon).filter(|n| *n >= 20)
    });

    daemon.kill9();
    // The instances keep running and serving, unsupervised for now.
    std::thread::sleep(Duration::from_millis(300));
    for (pid, port) in pids.iter().zip(&ports) {
        assert!(alive(*pid), "pid {pid} died with tenement");
        let (status, _) = get(*port, "/").unwrap();
        assert_eq!(status, 200);
    }
    // Written while no tenement reads: it waits in the pipe the guard holds.
    assert_eq!(get(ports[0], "/say/while-away").unwrap().0, 200);
    assert_eq!(
        guards_of(first).len(),
        1,
        "the first tenement's guard waits"
    );
    // Both helpers go by their names in `ps -e`, `top` and `pgrep`, not `exe`.
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm(guards_of(first)[0]), "tenement-guard\n");
    assert_eq!(
        comm(pids[1]),
        "tenement-init\n",
        "ns:c runs under its namespace's init"
    );

    daemon.start();
    // Requests through the new daemon's proxy succeed at once (the instances never stopped).
    let listening = Instant::now();
    let proxy = proxy_port(&daemon);
    while through_proxy(proxy, "a.web.localhost") != Some(200) {
        assert!(
            listening.elapsed() < Duration::from_secs(1),
            "no 200 through the proxy within 1s of the new daemon listening:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for (name, pid) in names.iter().zip(&pids) {
        daemon.wait_events(name, "adopted", |events| {
            events.iter().any(|e| e.kind == EventKind::Adopted)
        });
        assert_eq!(pid_of(&daemon, name, EventKind::Adopted), *pid, "{name}");
        assert!(alive(*pid));
        daemon.wait_ready(name, 2);
    }
    assert!(
        !daemon
            .log()
            .contains("killed processes left by an earlier run"),
        "{}",
        daemon.log()
    );
    eventually("the first tenement's guard to hand over and exit", || {
        guards_of(first).is_empty().then_some(())
    });
    let now = eventually("web:a's kernel counters after the adoption", || {
        connections_counted(&daemon)
    });
    assert!(
        now >= counted,
        "the kernel counters went back: {counted} connections before, {now} after"
    );

    // Logs continue: what was written while tenement was away, and after.
    assert_eq!(get(ports[0], "/say/after-adoption").unwrap().0, 200);
    eventually("both lines in `tenement logs web:a`", || {
        let text = logs(&daemon, "web:a");
        (text.contains("said while-away") && text.contains("said after-adoption")).then_some(())
    });

    // An adopted process that dies is noticed and restarted.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    daemon.wait_events("web:a", "a crash of the adopted process", |events| {
        events
            .iter()
            .any(|e| e.kind == EventKind::Crashed && e.detail.contains("exited while adopted"))
    });
    let port = daemon.wait_ready("web:a", 3);
    let new_pid = pid_of(&daemon, "web:a", EventKind::Spawned);
    assert_ne!(new_pid, pids[0]);
    assert_eq!(get(port, "/").unwrap().0, 200);

    // A clean stop still stops everything, adopted instances included.
    daemon.stop();
    for pid in [pids[1], new_pid] {
        eventually("the instances to stop with tenement", || {
            (!alive(pid)).then_some(())
        });
    }
    assert!(daemon.instance_cgroups().is_empty());
}

#[test]
fn with_no_new_tenement_the_guard_stops_everything_after_adopt_timeout() {
    if !privileged("with_no_new_tenement_the_guard_stops_everything_after_adopt_timeout") {
        return;
    }
    let mut daemon = Daemon::new("adopt-timeout", "adopt_timeout = 2");
    let app = app(&daemon);
    let bg = daemon.app("bg.py", "import time\ntime.sleep(1000)\n");
    daemon.configure(&format!(
        r#"
[service.web]
command = "sh -c '/usr/bin/python3 {bg} & exec /usr/bin/python3 {app}'"

[service.ns]
command = "/usr/bin/python3 {app}"
isolation = "namespace"

[instances]
web = ["a", "b"]
ns = ["c"]
"#,
        bg = bg.display()
    ));
    daemon.start();
    for name in ["web:a", "web:b", "ns:c"] {
        daemon.wait_ready(name, 1);
    }
    let tenants = daemon.tenant_processes();
    assert!(
        tenants.len() >= 6,
        "apps, background children, init: {tenants:?}"
    );
    let first = daemon.pid();

    daemon.kill9();
    eventually("the guard to stop every instance", || {
        tenants.iter().all(|pid| !alive(*pid)).then_some(())
    });
    eventually("the guard to remove every cgroup", || {
        daemon
            .cgroup_dirs()
            .iter()
            .all(|dir| !dir.exists())
            .then_some(())
    });
    eventually("the guard to exit", || {
        guards_of(first).is_empty().then_some(())
    });
    assert!(
        daemon
            .log()
            .contains("no tenement adopted the instances of tenement"),
        "{}",
        daemon.log()
    );

    // The next tenement starts them afresh.
    daemon.start();
    let port = daemon.wait_ready("web:a", 2);
    assert_eq!(get(port, "/").unwrap().0, 200);
    assert!(!daemon.kinds("web:a").contains(&EventKind::Adopted));
    daemon.stop();
}

#[test]
fn a_kill_9_with_nothing_running_leaves_no_cgroup_behind() {
    if !privileged("a_kill_9_with_nothing_running_leaves_no_cgroup_behind") {
        return;
    }
    let mut daemon = Daemon::new("adopt-nothing", "");
    let app = app(&daemon);
    // A service without instances: nothing runs, but the subtree exists.
    daemon.configure(&format!(
        "[service.web]\ncommand = \"/usr/bin/python3 {app}\"\n"
    ));
    daemon.start();
    assert!(
        daemon.cgroup_dirs().iter().all(|dir| dir.exists()),
        "{}",
        daemon.log()
    );
    let first = daemon.pid();
    daemon.kill9();
    eventually("the guard to remove the empty subtree", || {
        daemon
            .cgroup_dirs()
            .iter()
            .all(|dir| !dir.exists())
            .then_some(())
    });
    eventually("the guard to exit", || {
        guards_of(first).is_empty().then_some(())
    });
    // The next tenement starts as usual.
    daemon.start();
    assert!(daemon.cgroup_dirs().iter().all(|dir| dir.exists()));
    daemon.stop();
    assert!(daemon.cgroup_dirs().iter().all(|dir| !dir.exists()));
}

#[test]
fn a_clean_sigterm_still_stops_every_tenant() {
    if !privileged("a_clean_sigterm_still_stops_every_tenant") {
        return;
    }
    let mut daemon = Daemon::new("adopt-clean", "");
    let app = app(&daemon);
    daemon.configure(&format!(
        "[service.web]\ncommand = \"/usr/bin/python3 {app}\"\n\n[instances]\nweb = [\"a\"]\n"
    ));
    daemon.start();
    daemon.wait_ready("web:a", 1);
    let tenants = daemon.tenant_processes();
    assert!(!tenants.is_empty());
    let pid = daemon.pid();
    daemon.stop();
    for tenant in &tenants {
        assert!(!alive(*tenant), "tenant {tenant} outlived a clean stop");
    }
    assert!(daemon.cgroup_dirs().iter().all(|dir| !dir.exists()));
    eventually("the guard to exit after a clean stop", || {
        guards_of(pid).is_empty().then_some(())
    });
    // Nothing is left to adopt: the next start spawns afresh.
    daemon.start();
    daemon.wait_ready("web:a", 2);
    assert!(!daemon.kinds("web:a").contains(&EventKind::Adopted));
    daemon.stop();
}

#[test]
fn a_sandboxed_instance_is_adopted_too() {
    if !privileged("a_sandboxed_instance_is_adopted_too") {
        return;
    }
    assert!(
        tenement::supervisor::find_runsc().is_ok(),
        "runsc is missing: `cargo xtask setup --apt` installs it"
    );
    let mut daemon = Daemon::new("adopt-sandbox", "sandbox_platform = \"ptrace\"");
    let app = app(&daemon);
    daemon.configure(&format!(
        r#"
[service.boxed]
command = "/usr/bin/python3 {app}"
isolation = "sandbox"
health = "/health"
startup_timeout = 60

[instances]
boxed = ["erin"]
"#
    ));
    daemon.start();
    let port = daemon.wait_ready("boxed:erin", 1);
    // runsc itself: the outer process tenement watches.
    let pid = pid_of(&daemon, "boxed:erin", EventKind::Spawned);
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "runsc died with tenement");
    assert_eq!(get(port, "/say/while-away").unwrap().0, 200);

    daemon.start();
    daemon.wait_ready("boxed:erin", 2);
    assert_eq!(pid_of(&daemon, "boxed:erin", EventKind::Adopted), pid);
    assert_eq!(get(port, "/").unwrap().0, 200);
    eventually("the sandbox's output in `tenement logs`", || {
        logs(&daemon, "boxed:erin")
            .contains("said while-away")
            .then_some(())
    });
    daemon.stop();
    assert!(!alive(pid), "runsc outlived a clean stop");
    assert!(daemon.instance_cgroups().is_empty());
}
