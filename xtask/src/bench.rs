//! `cargo xtask bench`: measured side by side against a named reference, as ratios.
//!
//! `bench proxy`: wrk against one fast backend, directly, through tenement's proxy and
//! through nginx set up as the equivalent reverse proxy. Runs are interleaved (every round
//! visits every scenario and every target, in rotating order) so that a busy moment on the
//! machine does not land on one contender; each figure is the median over the rounds.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench_support::{free_port, median, wait_listening, write_section, Processes, Scratch},
    util::{self, output, step},
};

pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("proxy") => proxy(&args[1..]),
        Some("spawn") => crate::bench_spawn::run(),
        Some("wake") => crate::bench_wake::run(&args[1..]),
        Some("ebpf") => crate::bench_ebpf::run(&args[1..]),
        Some("dashboard") => crate::bench_dashboard::run(&args[1..]),
        Some("fleet") => crate::bench_fleet::run(&args[1..]),
        Some(other) => bail!("unknown benchmark {other:?}; {AVAILABLE}"),
        None => {
            print!("{AVAILABLE}");
            Ok(())
        }
    }
}

const AVAILABLE: &str = "\
benchmarks (run as root; results go to docs/benchmarks.md unless noted):
  proxy  wrk through tenement's proxy vs nginx vs the backend directly
  spawn  spawn-to-ready per isolation level (printed; see docs/isolation.md)
  wake   cold wake of the notes app through tenement vs the app's own start-up
  ebpf   proxy throughput to an instance with the eBPF programs attached vs detached
  dashboard  server time of the web dashboard's overview with 1000 instances (100 running)
  fleet  latency and CPU per request forwarded to another node vs served locally (2 nodes, etcd)
";

const USAGE: &str =
    "usage: cargo xtask bench proxy [--seconds N] [--rounds N] [--only KEEPALIVE|CLOSE]";

struct Settings {
    seconds: u64,
    rounds: usize,
    only: Option<Mode>,
}

fn parse(args: &[String]) -> Result<Settings> {
    let mut settings = Settings {
        seconds: 5,
        rounds: 3,
        only: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--seconds" => settings.seconds = value()?.parse().context("--seconds")?,
            "--rounds" => settings.rounds = value()?.parse().context("--rounds")?,
            "--only" => {
                settings.only = Some(match value()?.as_str() {
                    "keepalive" | "keep-alive" => Mode::KeepAlive,
                    "close" => Mode::Close,
                    other => bail!("--only {other:?}: expected keepalive or close"),
                });
            }
            other => bail!("unknown option {other:?}; {USAGE}"),
        }
    }
    if settings.rounds == 0 || settings.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    Ok(settings)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    KeepAlive,
    Close,
}

#[derive(Clone, Copy)]
pub(crate) struct Scenario {
    pub mode: Mode,
    pub connections: u32,
    pub large: bool,
}

impl Scenario {
    pub fn label(&self) -> String {
        format!(
            "{}, {} conns, {}",
            match self.mode {
                Mode::KeepAlive => "keep-alive",
                Mode::Close => "Connection: close",
            },
            self.connections,
            if self.large { "64 KiB" } else { "12 B" }
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Tenement,
    Nginx,
}

const TARGETS: [Target; 3] = [Target::Direct, Target::Tenement, Target::Nginx];

#[derive(Clone, Copy, Default)]
pub(crate) struct Run {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn proxy(args: &[String]) -> Result<()> {
    let settings = parse(args)?;
    tools(&["wrk", "nginx"])?;
    step("building the benchmark backend and tenement's proxy (release)");
    util::cargo(&[
        "build",
        "--release",
        "--package",
        "tenement-tests",
        "--bin",
        "bench-backend",
        "--bin",
        "bench-proxy",
    ])?;
    let release = util::workspace_root().join("target/release");
    let scratch = Scratch::new("proxy")?;

    let backend_port = free_port()?;
    let tenement_port = free_port()?;
    let nginx_port = free_port()?;
    let mut processes = Processes::default();
    step("starting the backend, tenement and nginx");
    processes.start(
        "backend",
        Command::new(release.join("bench-backend")).arg(backend_port.to_string()),
    )?;
    processes.start(
        "tenement",
        Command::new(release.join("bench-proxy"))
            .arg(tenement_port.to_string())
            .arg(backend_port.to_string())
            // The access log is off for both proxies: this measures forwarding.
            .env("RUST_LOG", "warn"),
    )?;
    let nginx_config = write_nginx_config(&scratch.path, nginx_port, backend_port)?;
    processes.start(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&scratch.path)
            .arg("-c")
            .arg(&nginx_config)
            .arg("-e")
            .arg(scratch.path.join("error.log")),
    )?;
    for port in [backend_port, tenement_port, nginx_port] {
        wait_listening(port)?;
    }
    let port_of = |target: Target| match target {
        Target::Direct => backend_port,
        Target::Tenement => tenement_port,
        Target::Nginx => nginx_port,
    };

    let mut scenarios = Vec::new();
    for mode in [Mode::KeepAlive, Mode::Close] {
        for connections in [32, 256] {
            for large in [false, true] {
                if settings.only.is_none_or(|only| only == mode) {
                    scenarios.push(Scenario {
                        mode,
                        connections,
                        large,
                    });
                }
            }
        }
    }
    step("warming up");
    for target in TARGETS {
        let warm = Scenario {
            mode: Mode::KeepAlive,
            connections: 32,
            large: false,
        };
        wrk(port_of(target), warm, 2)?;
    }
    let total = settings.rounds * scenarios.len() * TARGETS.len();
    step(&format!(
        "{total} runs of {} s ({} rounds x {} scenarios x 3 targets), interleaved",
        settings.seconds,
        settings.rounds,
        scenarios.len()
    ));
    let mut runs = vec![vec![Vec::new(); TARGETS.len()]; scenarios.len()];
    let mut done = 0;
    for round in 0..settings.rounds {
        for (s, scenario) in scenarios.iter().enumerate() {
            for k in 0..TARGETS.len() {
                let t = (k + round + s) % TARGETS.len();
                let run = wrk(port_of(TARGETS[t]), *scenario, settings.seconds)?;
                processes.check()?;
                runs[s][t].push(run);
                done += 1;
                eprint!("\r    {done}/{total}");
            }
        }
    }
    eprintln!();

    let report = report(&scenarios, &runs, &settings)?;
    println!("\n{report}");
    write_section("proxy", "Proxy", &report)
}

/// Tools from Debian (wrk, nginx), installed when missing (as root).
pub(crate) fn tools(needed: &[&'static str]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|tool| {
            output(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_none()
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "this benchmark needs {}: apt-get install {}",
            missing.join(" and "),
            missing.join(" ")
        );
    }
    step(&format!("installing {}", missing.join(" ")));
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// nginx as the same reverse proxy tenement is: two workers (one per core here), upstream
/// keep-alive, the same forwarded headers, no access log.
fn write_nginx_config(dir: &Path, port: u16, backend: u16) -> Result<PathBuf> {
    let d = dir.display();
    let config = format!(
        "daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            # Hold a whole 64 KiB answer in memory, never in a temporary file.
            proxy_buffers 16 8k;
            proxy_busy_buffers_size 16k;
        }}
    }}
}}
"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// wrk against 127.0.0.1:port with `Host: one.bench.localhost` (instance `bench:one`).
pub(crate) fn wrk(port: u16, scenario: Scenario, seconds: u64) -> Result<Run> {
    wrk_host(port, "one.bench.localhost", scenario, seconds)
}

/// wrk against 127.0.0.1:port with `Host: host`.
pub(crate) fn wrk_host(port: u16, host: &str, scenario: Scenario, seconds: u64) -> Result<Run> {
    let mut command = Command::new("wrk");
    command
        .args(["-t2", "--latency"])
        .arg(format!("-c{}", scenario.connections))
        .arg(format!("-d{seconds}s"))
        .args(["-H", &format!("Host: {host}")]);
    if scenario.mode == Mode::Close {
        command.args(["-H", "Connection: close"]);
    }
    let path = if scenario.large { "/large" } else { "/" };
    command.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> Result<Run> {
    let mut run = Run::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => run.requests_per_second = value.parse()?,
            ["50%", value] => run.p50_ms = milliseconds(value)?,
            ["99%", value] => run.p99_ms = milliseconds(value)?,
            ["Non-2xx", "or", "3xx", "responses:", count] => run.errors += count.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                run.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if run.requests_per_second == 0.0 {
        bail!("could not read wrk's output:\n{text}");
    }
    Ok(run)
}

/// wrk prints `812.00us`, `1.23ms`, `2.01s`.
fn milliseconds(value: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unexpected latency {value:?}")
    };
    Ok(number.parse::<f64>()? * scale)
}

fn report(scenarios: &[Scenario], runs: &[Vec<Vec<Run>>], settings: &Settings) -> Result<String> {
    let mut text = String::new();
    let machine = format!(
        "{} CPU(s), Linux {}, {}, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        output(Command::new("uname").arg("-r"))
            .unwrap_or_default()
            .trim(),
        output(Command::new("sh").args(["-c", "nginx -v 2>&1"]))
            .unwrap_or_default()
            .trim(),
        output(Command::new("sh").args(["-c", "wrk -v 2>&1 | head -1"]))
            .unwrap_or_default()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    );
    writeln!(
        text,
        "Measured with `cargo xtask bench proxy` on {machine}: {} rounds of {} s per run, \
         wrk with 2 threads, median of the rounds. All on 127.0.0.1, sharing the CPUs with \
         wrk and the backend.\n",
        settings.rounds, settings.seconds
    )?;
    writeln!(
        text,
        "| scenario | direct req/s | tenement req/s | nginx req/s | tenement / nginx (paired) | \
         p50 tenement / nginx (ms) | p99 tenement / nginx (ms) | errors |"
    )?;
    writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut verdicts = Vec::new();
    for (scenario, runs) in scenarios.iter().zip(runs) {
        let rps = |t: usize| median(runs[t].iter().map(|r| r.requests_per_second));
        let p50 = |t: usize| median(runs[t].iter().map(|r| r.p50_ms));
        let p99 = |t: usize| median(runs[t].iter().map(|r| r.p99_ms));
        let errors: u64 = runs.iter().flatten().map(|r| r.errors).sum();
        // Each round's tenement and nginx runs are neighbours in time: the median of their
        // ratios is steadier than the ratio of medians when the machine's load drifts.
        let ratio = median(
            runs[1]
                .iter()
                .zip(&runs[2])
                .map(|(tenement, nginx)| tenement.requests_per_second / nginx.requests_per_second),
        );
        writeln!(
            text,
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
            scenario.label(),
            rps(0),
            rps(1),
            rps(2),
            ratio,
            p50(1),
            p50(2),
            p99(1),
            p99(2),
            errors
        )?;
        // The targets of the proxy issue.
        let target = match (scenario.mode, scenario.connections, scenario.large) {
            (Mode::KeepAlive, 32, false) => Some((
                "keep-alive, 12 B, 32 conns: req/s >= nginx and p99 <= nginx",
                ratio >= 1.0 && p99(1) <= p99(2),
            )),
            (Mode::Close, _, _) => Some(("Connection: close: req/s >= 90% of nginx", ratio >= 0.9)),
            (_, _, true) => Some(("64 KiB: req/s >= nginx", ratio >= 1.0)),
            _ => None,
        };
        if let Some((goal, met)) = target {
            verdicts.push(format!(
                "- {}: {} ({})",
                scenario.label(),
                if met { "met" } else { "MISSED" },
                goal
            ));
        }
    }
    writeln!(text, "\nTargets:\n{}", verdicts.join("\n"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/
  2 threads and 32 connections
  Latency Distribution
     50%  512.00us
     75%    1.01ms
     90%    2.00ms
     99%    3.50ms
  152000 requests in 5.00s, 12.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  30400.12
";
        let run = parse_wrk(text).unwrap();
        assert_eq!(run.requests_per_second, 30400.12);
        assert!((run.p50_ms - 0.512).abs() < 1e-9);
        assert_eq!(run.p99_ms, 3.5);
        assert_eq!(run.errors, 7);
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
    }
}
