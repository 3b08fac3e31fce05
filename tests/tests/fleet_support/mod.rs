//! Three tenement nodes on 127.0.0.1 (own data dirs, proxy ports and port ranges), joined
//! through a real 3-member etcd cluster: what every fleet test starts from.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use tenement_tests::{
    daemon::{log_tail, serve_command, spawn_logging, wait_for_daemon},
    etcd::EtcdCluster,
    free_port, free_port_block, terminate_or_kill, workspace_root, Scratch,
};

pub struct Node {
    pub name: String,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct Fleet {
    pub etcd: EtcdCluster,
    pub nodes: Vec<Node>,
    pub scratch: Scratch,
}

/// Each start of an instance appends its pid here (one line per process, fleet-wide).
pub const STARTS: &str = "starts";

/// What a test changes in a node's configuration.
#[derive(Default)]
pub struct NodeSetup {
    /// The proxy's plain port (else a free one).
    pub port: Option<u16>,
    /// Lines appended to `[settings]` (e.g. a `[settings.tls]` table after it).
    pub settings: String,
}

impl Fleet {
    pub fn start(lease_ttl: u64) -> Fleet {
        Fleet::start_with(lease_ttl, |_| NodeSetup::default())
    }

    /// [`Fleet::start`] with node `i`'s configuration changed by `setup(i)`.
    pub fn start_with(lease_ttl: u64, setup: impl Fn(usize) -> NodeSetup) -> Fleet {
        let etcd = EtcdCluster::start(3);
        let scratch = Scratch::new("fleet");
        let app = workspace_root().join("tests/apps/echo_app.py");
        // Written by the tenants (dynamic uids), so writable by anyone.
        let starts = scratch.write(STARTS, "");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&starts, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let NodeSetup {
                port,
                settings: extra,
            } = setup(i);
            let port = port.unwrap_or_else(free_port);
            let low = free_port_block(20);
            let data = scratch.join(&name);
            let config = scratch.write(
                &format!("{name}.toml"),
                &format!(
                    "[settings]\ndata_dir = \"{data}\"\nlisten = \"127.0.0.1:{port}\"\n\
                     domain = \"example.com\"\nport_range = [{low}, {high}]\n{extra}\n\n\
                     [service.app]\n\
                     command = \"/bin/sh -c 'echo $$ >> {starts}; exec /usr/bin/python3 {app}'\"\n\
                     env = {{ INSTANCE = \"{{name}}:{{id}}\" }}\n\n\
                     [instances]\napp = [\"alice\", \"bob\", \"carol\"]\n\n\
                     [fleet]\netcd = {endpoints}\nnode = \"{name}\"\n\
                     advertise = \"127.0.0.1:{port}\"\nlease_ttl = {lease_ttl}\n",
                    data = data.display(),
                    high = low + 19,
                    starts = starts.display(),
                    app = app.display(),
                    endpoints = etcd.endpoints_toml(),
                ),
            );
            nodes.push(Node {
                log: scratch.join(&format!("{name}.log")),
                name,
                port,
                config,
                child: None,
            });
        }
        let mut fleet = Fleet {
            etcd,
            nodes,
            scratch,
        };
        for i in 0..3 {
            fleet.launch(i);
        }
        fleet
    }

    /// Starts node `i` and waits until its proxy answers.
    pub fn launch(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = spawn_logging(&mut serve_command(&node.config), &node.log);
        let port = node.port;
        // The listener is bound early in start-up; an answer comes once the node has
        // joined the fleet and the proxy serves.
        wait_for_daemon(
            &mut child,
            &node.log,
            "the proxy",
            Duration::from_secs(90),
            || get(port, "nobody.example.org", "/", "").is_ok_and(|r| r.status != 0),
        );
        node.child = Some(child);
    }

    pub fn starts(&self) -> usize {
        std::fs::read_to_string(self.scratch.join(STARTS))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Pids started so far, in start order.
    pub fn started_pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.scratch.join(STARTS))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    pub fn log(&self, i: usize) -> String {
        log_tail(&self.nodes[i].log)
    }

    /// `tenement fleet status` as node `i`'s configuration sees it.
    pub fn status(&self, i: usize, json: bool) -> (bool, String) {
        let mut command = std::process::Command::new(tenement_tests::tenement_bin());
        command
            .arg("--config")
            .arg(&self.nodes[i].config)
            .args(["fleet", "status"]);
        if json {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        let mut text = String::from_utf8_lossy(&output.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// `GET /metrics` of node `i`, over its management socket (admin without a token).
    pub fn metrics(&self, i: usize) -> String {
        let socket = self
            .scratch
            .join(&format!("{}/tenement.sock", self.nodes[i].name));
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: tenement\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    pub fn signal(&self, i: usize, signal: i32) {
        let pid = self.nodes[i].child.as_ref().unwrap().id() as i32;
        // SAFETY: kill has no memory preconditions; the pid is this test's own child.
        unsafe { libc::kill(pid, signal) };
    }

    /// SIGKILL to node `i` (its instances are killed by its guard).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SAFETY: as in `signal`; a stopped node must be resumed to hear SIGTERM.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                terminate_or_kill(&mut child, Duration::from_secs(15));
            }
        }
    }
}

/// One answer, read whole (`Connection: close`).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
    pub body_len: usize,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// `GET path` to node port `port` with `Host: host` and `extra` header lines.
pub fn get(port: u16, host: &str, path: &str, extra: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body_bytes = raw.get(split + 4..).unwrap_or_default();
    let body = String::from_utf8_lossy(body_bytes).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok(Reply {
        status,
        body_len: body_bytes.len(),
        head,
        body,
    })
}

/// Retries `attempt` until it gives `Some`, for up to `patience`.
pub fn until<T>(what: &str, patience: Duration, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
