//! `cargo xtask bench`: measured side by side against a named reference, as ratios. The
//! benchmarks live beside this file (`bench_proxy.rs`, ...); here are what they share:
//! wrk runs and their reading.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{self, output, step};

pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("proxy") => crate::bench_proxy::run(&args[1..]),
        Some("spawn") => crate::bench_spawn::run(),
        Some("wake") => crate::bench_wake::run(&args[1..]),
        Some("ebpf") => crate::bench_ebpf::run(&args[1..]),
        Some("dashboard") => crate::bench_dashboard::run(&args[1..]),
        Some("fleet") => crate::bench_fleet::run(&args[1..]),
        Some("adopt") => crate::bench_adopt::run(&args[1..]),
        Some(other) => bail!("unknown benchmark {other:?}; {AVAILABLE}"),
        None => {
            print!("{AVAILABLE}");
            Ok(())
        }
    }
}

const AVAILABLE: &str = "\
benchmarks (run as root; results go to docs/benchmarks.md unless noted):
  proxy  wrk through `tenement serve` vs nginx vs HAProxy, in front of the same origin
  spawn  spawn-to-ready per isolation level (printed; see docs/isolation.md)
  wake   cold wake of the notes app through tenement vs the app's own start-up
  ebpf   proxy throughput to an instance with the eBPF programs attached vs detached
  dashboard  server time of the web dashboard's overview with 1000 instances (100 running)
  fleet  latency and CPU per request forwarded to another node vs served locally (2 nodes, etcd)
  adopt  start-to-serving with N = 10, 100 instances: adopted after kill -9 vs cold start
";

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

#[derive(Clone, Copy, Default)]
pub(crate) struct Run {
    pub requests_per_second: f64,
    /// Requests completed during the run.
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
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
            [count, "requests", "in", ..] => run.requests = count.parse()?,
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
        assert_eq!(run.requests, 152000);
    }
}
