//! What the benchmarks share: scratch directories, the processes they start (stopped by PID
//! whatever happens), `tenement serve` daemons, tiny HTTP clients, and the sections they
//! write into docs/benchmarks.md.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::util;

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The nearest-rank percentile: with 20 samples, p99 is the largest one.
pub fn percentile(values: impl Iterator<Item = f64>, p: f64) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Where the numbers come from: CPUs, kernel, and the load average as the report is
/// written (other work on the machine moves every figure).
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = util::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("unknown");
    format!(
        "{cpus} CPU(s), Linux {}, load average {load} at the end",
        kernel.trim()
    )
}

/// Replaces the section `name` of docs/benchmarks.md (between its markers), keeping
/// everything around it; a missing section is appended under `heading`.
pub fn write_section(name: &str, heading: &str, report: &str) -> Result<()> {
    let path = util::workspace_root().join("docs/benchmarks.md");
    let begin = format!("<!-- cargo xtask bench {name}: begin -->");
    let end = format!("<!-- cargo xtask bench {name}: end -->");
    let existing = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| "# Benchmarks\n\nRegenerate with `cargo xtask bench NAME`.\n".into());
    let section = format!("{begin}\n{report}{end}");
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(start), Some(stop)) if start < stop => format!(
            "{}{}{}",
            &existing[..start],
            section,
            &existing[stop + end.len()..]
        ),
        _ => format!("{}\n\n## {heading}\n\n{section}\n", existing.trim_end()),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

/// The processes a benchmark started, stopped by PID when it ends, whatever happens.
#[derive(Default)]
pub struct Processes(Vec<(&'static str, Child)>);

impl Processes {
    /// Starts `command`; returns its PID.
    pub fn start(&mut self, name: &'static str, command: &mut Command) -> Result<u32> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let pid = child.id();
        self.0.push((name, child));
        Ok(pid)
    }

    /// Fails if one of them died.
    pub fn check(&mut self) -> Result<()> {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited during the benchmark ({status})");
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            // SIGTERM: nginx's master stops its workers; the others just exit.
            util::terminate(child.id());
        }
        for (name, child) in &mut self.0 {
            stop_child(name, child, Duration::from_secs(10));
        }
    }
}

/// Waits for a child sent SIGTERM; SIGKILL when it takes longer than `grace`.
fn stop_child(name: &str, child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(child.try_wait(), Ok(None)) {
        eprintln!("{name} did not stop on SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A world-readable directory under /tmp (tenants run as their own uids), removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(what: &str) -> Result<Scratch> {
        let path = PathBuf::from(format!("/tmp/tenement-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        util::run(Command::new("chmod").arg("755").arg(&path))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Scratch {
    /// Builds the benchmark backend (tests/src/bin/bench-backend, release) and copies it
    /// here: an instance runs as its own uid and needs a copy it can read and execute.
    pub fn backend(&self) -> Result<PathBuf> {
        util::step("building the benchmark backend (release)");
        util::cargo(&[
            "build",
            "--release",
            "--package",
            "tenement-tests",
            "--bin",
            "bench-backend",
        ])?;
        let backend = self.path.join("bench-backend");
        std::fs::copy(
            util::workspace_root().join("target/release/bench-backend"),
            &backend,
        )?;
        util::run(Command::new("chmod").arg("755").arg(&backend))?;
        Ok(backend)
    }
}

/// One `tenement serve` with its own directory (configuration, data, log), stopped with
/// SIGTERM when dropped so that it stops its instances and removes its cgroups.
pub struct Daemon {
    pub label: String,
    pub proxy_port: u16,
    dir: PathBuf,
    child: Child,
}

/// The `[settings]` of a benchmark daemon: its own data directory, proxy port and
/// instance ports, `*.localhost` hosts.
pub fn settings(dir: &Path, proxy_port: u16, port_range: [u16; 2]) -> String {
    format!(
        "[settings]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{proxy_port}\"\n\
         domain = \"localhost\"\nport_range = [{}, {}]\n\n",
        dir.join("data").display(),
        port_range[0],
        port_range[1],
    )
}

impl Daemon {
    /// Writes `config` to `dir/tenement.toml` and serves it, with kernel counters or with
    /// `--no-kernel-counters`; returns once the proxy listens and the counters are known
    /// to be in the state asked for.
    pub fn start(
        tenement: &Path,
        label: &str,
        dir: &Path,
        proxy_port: u16,
        config: &str,
        kernel_counters: bool,
    ) -> Result<Daemon> {
        let mut command = Command::new(tenement);
        // One debug line per start: where its milliseconds went (`bench wake` reads it).
        command
            .env("RUST_LOG", "info,tenement::supervisor::wake_steps=debug")
            .env("NO_COLOR", "1");
        Daemon::start_with(command, label, dir, proxy_port, config, kernel_counters)
    }

    /// `tenement serve` as a user runs it: no `RUST_LOG` (the default, `info`), kernel
    /// counters on, its log on stderr into a file.
    pub fn start_as_shipped(
        tenement: &Path,
        label: &str,
        dir: &Path,
        proxy_port: u16,
        config: &str,
    ) -> Result<Daemon> {
        let mut command = Command::new(tenement);
        command.env_remove("RUST_LOG");
        Daemon::start_with(command, label, dir, proxy_port, config, true)
    }

    fn start_with(
        mut command: Command,
        label: &str,
        dir: &Path,
        proxy_port: u16,
        config: &str,
        kernel_counters: bool,
    ) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("tenement.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("serve.log"))?;
        command.arg("serve").arg("--config").arg(&config_path);
        if !kernel_counters {
            command.arg("--no-kernel-counters");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut daemon = Daemon {
            label: label.to_string(),
            proxy_port,
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", proxy_port)).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "{label}: tenement serve exited ({status}):\n{}",
                    daemon.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{label}: the proxy does not listen after 60 s:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let expected = if kernel_counters {
            "kernel counters: active"
        } else {
            "kernel counters: off (disabled with --no-kernel-counters)"
        };
        // The listeners may be bound before the line is logged: give it the same minute.
        while !daemon.log().contains(expected) {
            if Instant::now() > deadline {
                bail!(
                    "{label}: expected \"{expected}\" in tenement's log:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// `GET path` on the management API (its unix socket); the body of a 2xx answer.
    pub fn api_get(&self, path: &str) -> Result<String> {
        let socket = self.dir.join("data/tenement.sock");
        let mut stream = UnixStream::connect(&socket)
            .with_context(|| format!("{}: connecting to {}", self.label, socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        if !head.starts_with("HTTP/1.1 2") {
            bail!("{}: GET {path}: {answer}", self.label);
        }
        Ok(body.to_string())
    }

    /// The state of `instance` as the API reports it (`running`, `sleeping`, ...).
    pub fn state(&self, instance: &str) -> Result<String> {
        let body = self.api_get(&format!("/v1/instances/{instance}"))?;
        json_field(&body, "state").with_context(|| format!("{}: no state in {body}", self.label))
    }

    pub fn wait_state(&self, instance: &str, wanted: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.state(instance)?;
            if state == wanted {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {instance} is {state}, not {wanted}, after {limit:?}:\n{}",
                    self.label,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        util::terminate(self.child.id());
        // Its instances get their stop_timeout; the guard cleans up after a kill.
        stop_child(&self.label, &mut self.child, Duration::from_secs(30));
    }
}

/// The value of `"key":` in a JSON text, as text (strings without their quotes); enough
/// for the flat fields the benchmarks read.
pub fn json_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = json[start..].trim_start();
    if let Some(string) = rest.strip_prefix('"') {
        return string.split('"').next().map(str::to_string);
    }
    let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// One HTTP/1.1 request on an open connection; returns the status code once the whole
/// answer (by `Content-Length`) is read.
pub fn http_get(stream: &mut TcpStream, host: &str, path: &str) -> Result<u16> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xtask-bench\r\n\r\n"
    )?;
    let mut received = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            bail!(
                "GET {path} (Host: {host}): connection closed after {:?}",
                String::from_utf8_lossy(&received)
            );
        }
        received.extend_from_slice(&buffer[..read]);
        let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("GET {path}: no Content-Length in {head:?}"))?;
        if received.len() >= head_end + 4 + length {
            return head
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .with_context(|| format!("GET {path}: not an HTTP answer: {head:?}"));
        }
    }
}

/// `--seconds N --rounds N` of a bench, each at least 1; `defaults` when not given.
pub fn seconds_and_rounds(
    args: &[String],
    defaults: (u64, usize),
    usage: &str,
) -> Result<(u64, usize)> {
    let (mut seconds, mut rounds) = defaults;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value; {usage}"))?;
        match arg.as_str() {
            "--seconds" => seconds = value.parse().context("--seconds")?,
            "--rounds" => rounds = value.parse().context("--rounds")?,
            other => bail!("unknown option {other:?}; {usage}"),
        }
    }
    if seconds == 0 || rounds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    Ok((seconds, rounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let twenty = (1..=20).map(f64::from);
        assert_eq!(percentile(twenty.clone(), 99.0), 20.0);
        assert_eq!(median(twenty), 10.5);
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
    }

    #[test]
    fn reads_flat_json_fields() {
        let json = r#"{"name":"a:b","state":"sleeping","rx_bytes":1234,"x":null}"#;
        assert_eq!(json_field(json, "state").as_deref(), Some("sleeping"));
        assert_eq!(json_field(json, "rx_bytes").as_deref(), Some("1234"));
        assert_eq!(json_field(json, "missing"), None);
    }
}
