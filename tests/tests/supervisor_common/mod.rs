//! Helpers for the supervisor's end-to-end tests: a real `tenement serve` with its own data
//! directory, and guards that leave no process and no cgroup behind, even when a test fails.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use tenement::{
    config::InstanceName,
    store::{Event, EventKind, Store},
    supervisor::cgroup::{CgroupLayout, CgroupTree},
};
use tenement_tests::{
    daemon::{serve_command, spawn_logging, wait_for_daemon},
    free_port, free_port_block, terminate, terminate_or_kill, Scratch,
};

/// Generous: the machine is slow and shared.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A scratch directory with a `tenement.toml`, and the daemon serving it.
pub struct Daemon {
    pub scratch: Scratch,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    child: Option<Child>,
    runs: u32,
    envs: Vec<(String, String)>,
    serve_args: Vec<String>,
}

impl Daemon {
    /// Writes the configuration's `[settings]`: this scratch's data directory, a fresh port
    /// range, and `settings` (TOML lines). Services follow with [`Daemon::configure`].
    pub fn new(label: &str, settings: &str) -> Daemon {
        let scratch = Scratch::new(label);
        let data_dir = scratch.join("data");
        let base = free_port_block(201);
        // The proxy listens too: each daemon on its own port, outside the instance range.
        let listen = free_port();
        let listen_line = if settings.contains("listen") {
            String::new()
        } else {
            format!("listen = \"127.0.0.1:{listen}\"\n")
        };
        let text = format!(
            "[settings]\ndata_dir = {data:?}\nport_range = [{base}, {}]\n{listen_line}{settings}\n\n",
            base + 200,
            data = data_dir.display().to_string(),
        );
        let config = scratch.write("tenement.toml", &text);
        Daemon {
            scratch,
            config,
            data_dir,
            child: None,
            runs: 0,
            envs: Vec::new(),
            serve_args: Vec::new(),
        }
    }

    /// Appends to the configuration file.
    pub fn configure(&self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(text);
        config.push('\n');
        std::fs::write(&self.config, config).unwrap();
    }

    /// An extra variable in the daemon's own environment.
    pub fn env(&mut self, key: &str, value: &str) {
        self.envs.push((key.to_string(), value.to_string()));
    }

    /// Writes a file of the test's apps (world-readable: tenants run under their own uids).
    /// An extra argument to `tenement serve` (e.g. `--no-kernel-counters`).
    pub fn serve_arg(&mut self, arg: &str) {
        self.serve_args.push(arg.to_string());
    }

    pub fn app(&self, name: &str, text: &str) -> PathBuf {
        self.scratch.write(&format!("app/{name}"), text)
    }

    pub fn app_dir(&self) -> PathBuf {
        self.scratch.join("app")
    }

    /// Starts `tenement serve`; its log goes to `daemon-N.log` in the scratch directory.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the daemon is running already");
        self.runs += 1;
        let log = self.log_path(self.runs);
        let mut child = spawn_logging(
            serve_command(&self.config)
                .args(&self.serve_args)
                .envs(self.envs.iter().map(|(k, v)| (k, v))),
            &log,
        );
        // Ready once it says so; the store is then open (opening it from the test at the
        // same moment would race its schema setup).
        wait_for_daemon(
            &mut child,
            &log,
            "\" serving \" in its log",
            PATIENCE,
            || std::fs::read_to_string(&log).is_ok_and(|text| text.contains(" serving ")),
        );
        self.child = Some(child);
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.scratch.join(&format!("daemon-{run}.log"))
    }

    /// Everything the daemon(s) logged so far.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| std::fs::read_to_string(self.log_path(run)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let status = terminate(&mut child, PATIENCE).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("tenement did not stop within {PATIENCE:?}:\n{}", self.log())
        });
        assert!(
            status.success(),
            "tenement exited with {status}:\n{}",
            self.log()
        );
        // The guard's socket is as deep as a data directory goes (scratch directories are
        // deep): it must still be bound, or no later tenement could adopt.
        assert!(
            !self.log().contains("tenement-guard: cannot listen"),
            "{}",
            self.log()
        );
    }

    /// `kill -9` of the daemon.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn store(&self) -> Store {
        Store::open(&self.data_dir).unwrap()
    }

    /// The events of `name`, oldest first.
    pub fn events(&self, name: &str) -> Vec<Event> {
        let mut events = self.store().events(&instance(name), 1000).unwrap();
        events.reverse();
        events
    }

    pub fn kinds(&self, name: &str) -> Vec<EventKind> {
        self.events(name).iter().map(|e| e.kind).collect()
    }

    /// Waits until `done` holds for the events of `name`; panics with them (and the log)
    /// after `PATIENCE`.
    pub fn wait_events(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events(name);
            if done(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: waited {PATIENCE:?} for {what}; events:\n{}\n--- log:\n{}",
                    describe(&events),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `name` has been ready `times` times; returns its current port.
    pub fn wait_ready(&self, name: &str, times: usize) -> u16 {
        let events = self.wait_events(name, &format!("ready #{times}"), |events| {
            events.iter().filter(|e| e.kind == EventKind::Ready).count() >= times
        });
        let ready = events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Ready)
            .unwrap();
        ready
            .detail
            .rsplit("port ")
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {:?}", ready.detail))
    }

    /// The cgroup subtree directories of this daemon, one per hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let layout = CgroupLayout::detect().unwrap();
        CgroupTree::plan(&layout, &self.data_dir)
            .dirs()
            .map(Path::to_path_buf)
            .collect()
    }

    /// Instance groups (`service-id`) present under the subtree, in any hierarchy.
    pub fn instance_cgroups(&self) -> Vec<PathBuf> {
        let mut groups = Vec::new();
        for dir in self.cgroup_dirs() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                groups.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path()),
                );
            }
        }
        groups
    }

    /// The instance cgroups holding processes. A sleeping instance's group stays, empty:
    /// its next start is prepared in it.
    pub fn populated_cgroups(&self) -> Vec<PathBuf> {
        self.instance_cgroups()
            .into_iter()
            .filter(|group| {
                std::fs::read_to_string(group.join("cgroup.procs"))
                    .is_ok_and(|procs| !procs.trim().is_empty())
            })
            .collect()
    }

    /// Processes other than the daemon and its guards whose command line mentions this
    /// test's scratch directory.
    pub fn tenant_processes(&self) -> Vec<u32> {
        let daemon = self.child.as_ref().map(Child::id);
        processes_mentioning(&self.scratch.path.display().to_string())
            .into_iter()
            .filter(|pid| Some(*pid) != daemon)
            .filter(|pid| {
                !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .contains("\0__guard\0")
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- tenement log:\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            terminate_or_kill(&mut child, PATIENCE);
        }
        // Whatever is left (a failed test, a killed daemon): kill it by cgroup, remove the
        // groups.
        clean_cgroups(&self.data_dir);
        for pid in self.tenant_processes() {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Kills every process in the cgroups of the tenement using `data_dir` and removes them.
pub fn clean_cgroups(data_dir: &Path) {
    let layout = CgroupLayout::detect().unwrap();
    for dir in CgroupTree::plan(&layout, data_dir).dirs() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for group in entries.flatten().filter(|e| e.path().is_dir()) {
                kill_cgroup(&group.path());
            }
        }
        kill_cgroup(dir);
    }
}

fn kill_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(dir);
}

pub fn instance(name: &str) -> InstanceName {
    InstanceName::parse(name).unwrap()
}

pub fn describe(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| format!("  {} {}", e.kind, e.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pids of live processes whose command line contains `text`.
pub fn processes_mentioning(text: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(text) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Running or sleeping, not a zombie waiting to be reaped.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `GET path` on 127.0.0.1:port: (status, body).
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until `check` returns `Some`, or panics naming `what` after `PATIENCE`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("waited {PATIENCE:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small HTTP app for tests: answers `GET /` with a JSON of what it sees, `/health` with
/// 200, and extra routes given as Python `elif` branches on `self.path`.
pub fn python_app(extra_routes: &str) -> String {
    format!(
        r#"import http.server, json, os, sys

def report():
    info = {{"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
            "env": dict(os.environ), "hostname": os.uname().nodename}}
    info["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return info

class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/":
            self.answer(200, report())
        elif self.path == "/health":
            self.answer(200, "ok")
{extra_routes}
        else:
            self.answer(404, "not found")

    def log_message(self, format, *args):
        pass

print("listening on", os.environ["PORT"], flush=True)
print("stderr says hello from", os.environ["TENEMENT_INSTANCE"], file=sys.stderr, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#
    )
}
