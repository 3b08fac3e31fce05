//! `cargo xtask bench fleet`: what forwarding to another node costs. Two `tenement serve`
//! nodes on 127.0.0.1 joined through a 1-member etcd; wrk through node A for an instance
//! placed on A (served locally) and for one placed on B (forwarded once, over kept-alive
//! connections), in the same run, alternating. Reported: latency, and the CPU time both
//! daemons spent per request (read from /proc before and after each run).

use std::{
    fmt::Write as _,
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench::{self, Mode, Run, Scenario},
    bench_support::{self, free_port, median, wait_listening, Daemon, Processes, Scratch},
    util::{self, step},
};

const USAGE: &str = "usage: cargo xtask bench fleet [--seconds N] [--rounds N]";

const SCENARIO: Scenario = Scenario {
    mode: Mode::KeepAlive,
    connections: 32,
    large: false,
};

pub fn run(args: &[String]) -> Result<()> {
    let (seconds, rounds) = bench_support::seconds_and_rounds(args, (5, 3), USAGE)?;
    if !util::is_root() {
        bail!("bench fleet needs root (tenement serve with cgroups)");
    }
    bench::tools(&["wrk", "etcd"])?;
    let tenement = util::build_release_binary()?;
    let scratch = Scratch::new("fleet")?;
    let backend = scratch.backend()?;

    step("starting a 1-member etcd and 2 tenement nodes");
    let mut processes = Processes::default();
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    processes.start(
        "etcd",
        Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(scratch.path.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .args(["--log-level", "error"])
            .stderr(std::process::Stdio::null()),
    )?;
    wait_listening(client)?;
    let a = node(&tenement, &scratch.path, "a", &backend, &client_url)?;
    let b = node(&tenement, &scratch.path, "b", &backend, &client_url)?;
    // The first request decides the owner: the receiving node, which has room.
    place(&a, "one.bench.localhost")?;
    place(&b, "two.bench.localhost")?;

    step("warming up");
    bench::wrk_host(a.proxy_port, "one.bench.localhost", SCENARIO, 2)?;
    bench::wrk_host(a.proxy_port, "two.bench.localhost", SCENARIO, 2)?;
    let total = rounds * 2;
    step(&format!(
        "{total} runs of {seconds} s ({rounds} rounds x local, forwarded), alternating"
    ));
    // measured[0 = local, 1 = forwarded]: (wrk's run, CPU µs per request of both nodes)
    let mut measured: [Vec<(Run, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..2 {
            let target = (k + round) % 2;
            let host = ["one.bench.localhost", "two.bench.localhost"][target];
            let before = cpu_ticks(a.pid())? + cpu_ticks(b.pid())?;
            let run = bench::wrk_host(a.proxy_port, host, SCENARIO, seconds)?;
            let after = cpu_ticks(a.pid())? + cpu_ticks(b.pid())?;
            processes.check()?;
            let requests = run.requests_per_second * seconds as f64;
            let micros = (after - before) as f64 * 1e6 / ticks_per_second() / requests;
            measured[target].push((run, micros));
        }
    }
    let report = report(&measured, seconds, rounds)?;
    println!("\n{report}");
    drop((a, b));
    bench_support::write_section("fleet", "Fleet: forwarding to another node", &report)
}

/// A node of the fleet serving `bench:one` and `bench:two` (the backend).
fn node(tenement: &Path, scratch: &Path, name: &str, backend: &Path, etcd: &str) -> Result<Daemon> {
    let dir = scratch.join(name);
    let proxy_port = free_port()?;
    let low = free_port()?.clamp(20000, 60000);
    let config = format!(
        "{}[service.bench]\ncommand = \"/bin/sh -c 'exec {} \\\"$PORT\\\"'\"\n\
         isolation = \"process\"\n\n[instances]\nbench = [\"one\", \"two\"]\n\n\
         [fleet]\netcd = [\"{etcd}\"]\nnode = \"{name}\"\nadvertise = \"127.0.0.1:{proxy_port}\"\n",
        bench_support::settings(&dir, proxy_port, [low, low + 49]),
        backend.display(),
    );
    Daemon::start(tenement, name, &dir, proxy_port, &config, false)
}

/// Sends the first request for `host` to `node` (which places the instance there), until
/// it answers 200.
fn place(node: &Daemon, host: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = TcpStream::connect(("127.0.0.1", node.proxy_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        match bench_support::http_get(&mut stream, host, "/") {
            Ok(200) => return Ok(()),
            other if Instant::now() > deadline => {
                bail!(
                    "{host} through node {}: {other:?}\n{}",
                    node.label,
                    node.log()
                )
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("reading /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn ticks_per_second() -> f64 {
    util::output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

fn report(measured: &[Vec<(Run, f64)>; 2], seconds: u64, rounds: usize) -> Result<String> {
    let mut text = String::new();
    writeln!(
        text,
        "Measured with `cargo xtask bench fleet` on {}: two nodes and a 1-member etcd on \
         127.0.0.1, wrk ({}) through node A, {rounds} rounds of {seconds} s per target, \
         alternating, median of the rounds. CPU is the time both tenement daemons spent \
         (user + system, from /proc) divided by the requests answered; the backend and wrk \
         are not counted. Everything shares the machine's CPUs, so the forwarded figures \
         include node B competing with node A and wrk.\n",
        bench_support::machine(),
        SCENARIO.label(),
    )?;
    writeln!(
        text,
        "| request for | req/s | p50 (ms) | p99 (ms) | tenement CPU per request (µs) | errors |"
    )?;
    writeln!(text, "|---|---|---|---|---|---|")?;
    let labels = [
        "an instance on node A (served locally)",
        "an instance on node B (forwarded by A)",
    ];
    let mut medians = Vec::new();
    for (label, runs) in labels.iter().zip(measured) {
        let rps = median(runs.iter().map(|(r, _)| r.requests_per_second));
        let p50 = median(runs.iter().map(|(r, _)| r.p50_ms));
        let p99 = median(runs.iter().map(|(r, _)| r.p99_ms));
        let cpu = median(runs.iter().map(|(_, cpu)| *cpu));
        let errors: u64 = runs.iter().map(|(r, _)| r.errors).sum();
        writeln!(
            text,
            "| {label} | {rps:.0} | {p50:.2} | {p99:.2} | {cpu:.1} | {errors} |"
        )?;
        medians.push((p50, cpu));
    }
    let [(local_p50, local_cpu), (forwarded_p50, forwarded_cpu)] = medians[..] else {
        bail!("no runs");
    };
    writeln!(
        text,
        "\nForwarding adds {:.2} ms at the median and {:.1} µs of tenement CPU per request \
         ({:.1}x the local request's).\n",
        forwarded_p50 - local_p50,
        forwarded_cpu - local_cpu,
        forwarded_cpu / local_cpu
    )?;
    Ok(text)
}
