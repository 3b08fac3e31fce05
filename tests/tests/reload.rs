//! `tenement reload` and SIGHUP on a real daemon under load: a file that adds a service,
//! removes another, changes one service's env and another's memory limit is applied without
//! an error or a new process on the untouched instances; a bad file, or one that changes a
//! key only a restart applies, changes nothing and says why.

mod api_support;
mod idle_support;
mod supervisor_common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use idle_support::{http, pid, proxy_port, state};
use supervisor_common::{Daemon, PATIENCE};
use tenement_tests::{privileged, tenement_bin};

/// Answers `GET /who` with its pid and `$MODE`, `GET /health` with 200.
const APP: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = ("%d %s" % (os.getpid(), os.environ.get("MODE", "-"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// The services of the test, as TOML; `alt_mode` is alt's env, `web_mb` web's memory limit.
fn services(app: &Path, alt_mode: &str, web_mb: u64, old: bool, fresh: bool) -> String {
    let command = format!("/usr/bin/python3 {}", app.display());
    let mut text = format!(
        "[service.web]\ncommand = \"{command}\"\nhealth = \"/health\"\nmemory_limit_mb = {web_mb}\n\n\
         [service.alt]\ncommand = \"{command}\"\nhealth = \"/health\"\nenv = {{ MODE = \"{alt_mode}\" }}\n\n"
    );
    if old {
        text.push_str(&format!("[service.old]\ncommand = \"{command}\"\n\n"));
    }
    if fresh {
        text.push_str(&format!(
            "[service.fresh]\ncommand = \"{command}\"\nenv = {{ MODE = \"new\" }}\n\n"
        ));
    }
    text.push_str("[instances]\nweb = [\"a\", \"b\"]\nalt = [\"x\"]\n");
    if old {
        text.push_str("old = [\"gone\"]\n");
    }
    if fresh {
        text.push_str("fresh = [\"y\"]\n");
    }
    text
}

/// Replaces everything after `[settings]` with `services`.
fn rewrite(daemon: &Daemon, settings_extra: &str, services: &str) {
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    let settings = text.split("\n\n").next().unwrap();
    std::fs::write(
        &daemon.config,
        format!("{settings}\n{settings_extra}\n\n{services}"),
    )
    .unwrap();
}

/// `tenement reload` on the daemon's socket: (success, stdout, stderr).
fn reload(daemon: &Daemon) -> (bool, String, String) {
    let output = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!(
            "unix:{}",
            daemon.data_dir.join("tenement.sock").display()
        ))
        .arg("reload")
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .output()
        .expect("running tenement reload");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// wrk through the proxy at one instance, until it ends by itself (`seconds`).
fn wrk(port: u16, host: &str, seconds: u64) -> Child {
    Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{seconds}s"), "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://127.0.0.1:{port}/who"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running wrk (installed by `cargo xtask setup --apt`)")
}

/// wrk's summary: (requests, non-2xx responses, socket errors).
fn wrk_result(child: Child) -> (u64, u64, u64, String) {
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "wrk failed: {text}");
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no request count in {text}"));
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    (requests, non_2xx, socket_errors, text)
}

/// `GET /who` through the proxy: the answering process's pid and MODE.
fn who(port: u16, host: &str) -> (u32, String) {
    let (status, body) = http(port, host, "GET", "/who", "");
    assert_eq!(status, 200, "{host}: {body}");
    let (pid, mode) = body.trim().split_once(' ').unwrap();
    (pid.parse().unwrap(), mode.to_string())
}

/// The instance's group directories (one per hierarchy) that exist now.
fn instance_groups(daemon: &Daemon, slug: &str) -> Vec<PathBuf> {
    daemon
        .cgroup_dirs()
        .into_iter()
        .map(|dir| dir.join(slug))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The memory limit of the instance's cgroup (v2 `memory.max` or v1 `memory.limit_in_bytes`).
fn memory_limit(daemon: &Daemon, slug: &str) -> u64 {
    for dir in instance_groups(daemon, slug) {
        for file in ["memory.max", "memory.limit_in_bytes"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                return text.trim().parse().unwrap();
            }
        }
    }
    panic!("no memory limit file for {slug}");
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_until(what: &str, daemon: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reload_applies_a_diff_under_load_and_refuses_bad_files() {
    if !privileged("reload_applies_a_diff_under_load_and_refuses_bad_files") {
        return;
    }
    let mut daemon = Daemon::new(
        "reload",
        "domain = \"localhost\"\nhealth_check_interval = 1",
    );
    let app = daemon.app("who.py", APP);
    rewrite(&daemon, "", &services(&app, "a", 64, true, false));
    daemon.start();
    for name in ["web:a", "web:b", "alt:x", "old:gone"] {
        daemon.wait_ready(name, 1);
    }
    let port = proxy_port(&daemon);
    let web_a = pid(&daemon, "web:a").unwrap();
    let web_b = pid(&daemon, "web:b").unwrap();
    let alt_before = pid(&daemon, "alt:x").unwrap();
    let gone = pid(&daemon, "old:gone").unwrap();
    assert_eq!(who(port, "x.alt.localhost").1, "a");
    assert_eq!(memory_limit(&daemon, "web_a"), 64 << 20);

    // Load on the two untouched instances and the changed one while the reload runs.
    let load: Vec<(&str, Child)> = ["a.web.localhost", "b.web.localhost", "x.alt.localhost"]
        .into_iter()
        .map(|host| (host, wrk(port, host, 8)))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    rewrite(&daemon, "", &services(&app, "b", 128, false, true));
    let (ok, out, err) = reload(&daemon);
    assert!(ok, "reload failed: {out}{err}\n{}", daemon.log());
    for line in [
        "old:gone: stopped and removed",
        "service old: removed",
        "service web: memory_limit_mb applied in place",
        "web:a: limits rewritten in its cgroup",
        "service fresh: added",
        "fresh:y: started",
        "service alt: env changed",
        "alt:x: replaced (pid ",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    for (host, child) in load {
        let (requests, non_2xx, socket_errors, text) = wrk_result(child);
        assert!(requests > 0, "{host}: {text}");
        // Printed for docs/production.md: the replaced instance's errors, if any.
        eprintln!("{host}: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors");
        if host.ends_with(".web.localhost") {
            assert_eq!((non_2xx, socket_errors), (0, 0), "{host}: {text}");
        }
    }

    // Untouched: same processes. Limit changed in place.
    assert_eq!(pid(&daemon, "web:a"), Some(web_a));
    assert_eq!(pid(&daemon, "web:b"), Some(web_b));
    assert_eq!(who(port, "a.web.localhost").0, web_a);
    assert_eq!(memory_limit(&daemon, "web_a"), 128 << 20);
    assert_eq!(memory_limit(&daemon, "web_b"), 128 << 20);
    // Changed: a new process with the new env.
    let (alt_after, mode) = who(port, "x.alt.localhost");
    assert_eq!(mode, "b");
    assert_ne!(alt_after, alt_before);
    assert!(!alive(alt_before));
    // Removed: process and cgroup gone, unknown to ps and the proxy.
    assert!(!alive(gone), "old:gone's process {gone} still runs");
    assert!(instance_groups(&daemon, "old_gone").is_empty());
    let ps = idle_support::cli(&daemon, &["ps"]);
    assert!(!ps.contains("old:gone"), "{ps}");
    let (status, _) = http(port, "gone.old.localhost", "GET", "/who", "");
    assert_ne!(status, 200);
    // Added: serves.
    assert_eq!(who(port, "y.fresh.localhost").1, "new");
    assert_eq!(state(&daemon, "fresh:y"), "running");

    // The same file again: nothing to do.
    let (ok, out, _) = reload(&daemon);
    assert!(ok);
    assert_eq!(out.trim(), "reloaded: no changes");

    // A file with an error: refused with its file:line, nothing changes.
    let good = std::fs::read_to_string(&daemon.config).unwrap();
    let bad = good.replace("memory_limit_mb = 128", "memory_limit_mb = \"lots\"");
    let bad_line = bad
        .lines()
        .position(|l| l.contains("\"lots\""))
        .map(|i| i + 1)
        .unwrap();
    let bad = bad.replace("MODE = \"b\"", "MODE = \"never\"");
    std::fs::write(&daemon.config, &bad).unwrap();
    let (ok, out, err) = reload(&daemon);
    assert!(!ok, "a bad file was accepted: {out}");
    let location = format!("{}:{bad_line}:", daemon.config.display());
    assert!(err.contains(&location), "{location:?} not in: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        daemon.log().contains(&location),
        "the refusal is not logged:\n{}",
        daemon.log()
    );
    assert_eq!(who(port, "x.alt.localhost"), (alt_after, "b".to_string()));
    assert_eq!(pid(&daemon, "web:a"), Some(web_a));

    // A key only a restart applies: refused, naming it.
    let other_listen = tenement_tests::free_port();
    let moved = good.replace(
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"127.0.0.1:{other_listen}\""),
    );
    std::fs::write(
        &daemon.config,
        moved.replace("MODE = \"b\"", "MODE = \"never\""),
    )
    .unwrap();
    let (ok, _, err) = reload(&daemon);
    assert!(!ok);
    assert!(err.contains("settings.listen"), "{err}");
    assert!(err.contains("restart"), "{err}");
    assert_eq!(who(port, "x.alt.localhost"), (alt_after, "b".to_string()));

    // A file that cannot be read: refused, nothing changes.
    std::fs::remove_file(&daemon.config).unwrap();
    let (ok, _, err) = reload(&daemon);
    assert!(!ok);
    assert!(err.contains("reading "), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");

    // A replacement that never becomes ready: applied, reported as failed, exit status 1;
    // the other services are not touched.
    std::fs::write(
        &daemon.config,
        good.replace(
            &format!(
                "command = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\nenv = {{ MODE = \"b\" }}",
                app.display()
            ),
            "command = \"/bin/false\"\nhealth = \"/health\"\nenv = { MODE = \"b\" }",
        ),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&daemon.config)
        .unwrap()
        .contains("/bin/false"));
    let (ok, out, err) = reload(&daemon);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAILED: alt:x: replaced, but the new process is not ready"),
        "{out}"
    );
    assert!(err.contains("1 change failed"), "{err}");
    assert_eq!(pid(&daemon, "web:a"), Some(web_a));

    // SIGHUP reloads too (and does not end the daemon or any tenant).
    std::fs::write(&daemon.config, good.replace("MODE = \"b\"", "MODE = \"c\"")).unwrap();
    // SAFETY: a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) }, 0);
    wait_until("alt:x with MODE=c after SIGHUP", &daemon, || {
        let (status, body) = http(port, "x.alt.localhost", "GET", "/who", "");
        status == 200 && body.ends_with(" c")
    });
    assert!(
        daemon.log().contains("SIGHUP: reloading"),
        "{}",
        daemon.log()
    );
    assert_eq!(pid(&daemon, "web:a"), Some(web_a));
    assert_eq!(pid(&daemon, "web:b"), Some(web_b));
    assert_eq!(who(port, "y.fresh.localhost").1, "new");
    daemon.stop();
}
