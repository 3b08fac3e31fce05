//! `cargo xtask bench ebpf`: what the kernel programs cost the traffic they count. wrk
//! (keep-alive, 32 connections, 12 B and 64 KiB answers; and a connect-heavy run with
//! `Connection: close`, a new connection per request) through tenement's proxy to an
//! instance whose sockets sit in a counted and network-confined cgroup, with the programs
//! attached and with `--no-kernel-counters`.
//!
//! One daemon at a time: some programs (sched_switch, TCP tracepoints) are machine-wide,
//! so a second daemon with counters on would tax the "detached" runs too. Each round starts
//! a fresh daemon per setting, in alternating order, runs every scenario against it and
//! stops it; each figure is the median over the rounds, the ratio the median of the
//! per-round ratios.

use std::{fmt::Write as _, net::TcpStream, path::Path, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{
    bench::{self, Mode, Run, Scenario},
    bench_support::{self, free_port, median, Daemon, Scratch},
    util::{self, step},
};

const USAGE: &str = "usage: cargo xtask bench ebpf [--seconds N] [--rounds N]";

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        mode: Mode::KeepAlive,
        connections: 32,
        large: false,
    },
    Scenario {
        mode: Mode::KeepAlive,
        connections: 32,
        large: true,
    },
    // Connect-heavy: every request a new connection, so socket creation, the sock_ops
    // callbacks and the network boundary's hooks weigh as much as they ever do.
    Scenario {
        mode: Mode::Close,
        connections: 32,
        large: false,
    },
];

pub fn run(args: &[String]) -> Result<()> {
    let (seconds, rounds) = bench_support::seconds_and_rounds(args, (5, 5), USAGE)?;
    if !util::is_root() {
        bail!("bench ebpf needs root (eBPF programs, cgroups)");
    }
    bench::tools(&["wrk"])?;
    let tenement = util::build_release_binary()?;
    let scratch = Scratch::new("ebpf")?;
    let backend = scratch.backend()?;

    let total = rounds * 2 * SCENARIOS.len();
    step(&format!(
        "{total} runs of {seconds} s ({rounds} rounds x 2 settings x {} scenarios)",
        SCENARIOS.len()
    ));
    // runs[scenario][0 = attached, 1 = detached]
    let mut runs = vec![vec![Vec::new(), Vec::new()]; SCENARIOS.len()];
    let mut counted_bytes = 0;
    let mut done = 0;
    for round in 0..rounds {
        for k in 0..2 {
            let attached = (k + round) % 2 == 0;
            let daemon = start(&tenement, &scratch.path, &backend, attached)?;
            for (s, scenario) in SCENARIOS.iter().enumerate() {
                let run = bench::wrk(daemon.proxy_port, *scenario, seconds)?;
                runs[s][usize::from(!attached)].push(run);
                done += 1;
                eprint!("\r    {done}/{total}");
            }
            if attached {
                counted_bytes = counted_tx_bytes(&daemon)?;
            }
        }
    }
    eprintln!();
    let report = report(&runs, seconds, rounds, counted_bytes)?;
    println!("\n{report}");
    bench_support::write_section("ebpf", "Cost of the eBPF programs", &report)
}

/// A fresh daemon serving `bench:one` (the backend, process isolation), woken and warmed.
fn start(tenement: &Path, scratch: &Path, backend: &Path, attached: bool) -> Result<Daemon> {
    let label = if attached {
        "eBPF programs attached"
    } else {
        "--no-kernel-counters"
    };
    let dir = scratch.join(if attached { "attached" } else { "detached" });
    let proxy_port = free_port()?;
    let low = free_port()?.clamp(20000, 60000);
    let config = format!(
        "{}[service.bench]\ncommand = \"/bin/sh -c 'exec {} \\\"$PORT\\\"'\"\n\
         isolation = \"process\"\n\n[instances]\nbench = [\"one\"]\n",
        bench_support::settings(&dir, proxy_port, [low, low + 49]),
        backend.display(),
    );
    let daemon = Daemon::start(tenement, label, &dir, proxy_port, &config, attached)?;
    daemon.wait_state("bench:one", "running", Duration::from_secs(60))?;
    let mut stream = TcpStream::connect(("127.0.0.1", proxy_port))?;
    let status = bench_support::http_get(&mut stream, "one.bench.localhost", "/")?;
    if status != 200 {
        bail!("{label}: GET / through the proxy answered {status}");
    }
    bench::wrk(proxy_port, SCENARIOS[0], 1)?;
    Ok(daemon)
}

/// The bytes the kernel counted leaving the instance: proof that the programs were on the
/// measured path.
fn counted_tx_bytes(daemon: &Daemon) -> Result<u64> {
    let body = daemon.api_get("/v1/instances/bench:one/stats")?;
    let bytes = bench_support::json_field(&body, "tx_bytes")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no kernel tx_bytes for bench:one in {body}"))?;
    if bytes == 0 {
        bail!("the kernel counted no traffic of bench:one: {body}");
    }
    Ok(bytes)
}

fn report(runs: &[Vec<Vec<Run>>], seconds: u64, rounds: usize, counted: u64) -> Result<String> {
    let mut text = String::new();
    writeln!(
        text,
        "Measured with `cargo xtask bench ebpf` on {}: wrk (2 threads, {seconds} s per run) \
         through tenement's proxy to a tenement instance (tests/src/bin/bench-backend, \
         isolation \"process\") whose sockets are in a counted cgroup. *Attached*: \
         `tenement serve` with its kernel programs (traffic, connections, listen, TCP \
         health, CPU, the network boundary on bind/connect/sendmsg); *detached*: \
         `tenement serve --no-kernel-counters`. One daemon at a \
         time, {rounds} rounds in alternating order, median of the rounds; the ratio is the \
         median of the per-round ratios. The kernel counted {:.0} MB sent by the instance \
         during the last attached round.\n",
        bench_support::machine(),
        counted as f64 / 1e6,
    )?;
    writeln!(
        text,
        "| scenario | attached req/s | detached req/s | attached / detached (rounds' range) | \
         p99 attached / detached (ms) | errors |"
    )?;
    writeln!(text, "|---|---:|---:|---:|---:|---:|")?;
    for (scenario, runs) in SCENARIOS.iter().zip(runs) {
        let rps = |t: usize| median(runs[t].iter().map(|r| r.requests_per_second));
        let p99 = |t: usize| median(runs[t].iter().map(|r| r.p99_ms));
        let ratios: Vec<f64> = runs[0]
            .iter()
            .zip(&runs[1])
            .map(|(on, off)| on.requests_per_second / off.requests_per_second)
            .collect();
        let ratio = median(ratios.iter().copied());
        let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = ratios.iter().copied().fold(0.0, f64::max);
        let errors: u64 = runs.iter().flatten().map(|r| r.errors).sum();
        writeln!(
            text,
            "| {} | {:.0} | {:.0} | {ratio:.2} ({lowest:.2}-{highest:.2}) | {:.2} / {:.2} | {errors} |",
            scenario.label(),
            rps(0),
            rps(1),
            p99(0),
            p99(1)
        )?;
    }
    Ok(text)
}
