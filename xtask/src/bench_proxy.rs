//! `cargo xtask bench proxy`: the proxy as users run it. `tenement serve` (the release
//! binary, a config file with default settings: its access log on, kernel counters on, the
//! daemon's log at `info`) in front of an origin that is itself a tenement instance (nginx
//! serving two static files), beside nginx and HAProxy set up as the equivalent reverse
//! proxy to the same origin (upstream keep-alive pools, one worker per core), and nginx
//! once more with its access log on.
//!
//! wrk drives each proxy in turn. Rounds are interleaved: every round visits every scenario
//! and every proxy, in an order rotated from round to round, so a busy moment on the
//! (shared) machine does not land on one contender. Each figure is the median over the
//! rounds; ratios are medians of per-round ratios (neighbours in time). Besides req/s and
//! wrk's latency percentiles, the CPU time each proxy's own processes used (utime + stime
//! from /proc, not the origin's, not wrk's) per request answered: the steadier figure on a
//! shared machine.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    bench::{self, Mode, Run, Scenario},
    bench_support::{self, free_port, median, wait_listening, Daemon, Processes, Scratch},
    util::{self, output, step},
};

const USAGE: &str =
    "usage: cargo xtask bench proxy [--seconds N] [--rounds N] [--compare TENEMENT_BINARY]";

/// The four scenarios of issue 15.
const SCENARIOS: [Scenario; 4] = [
    Scenario {
        mode: Mode::KeepAlive,
        connections: 32,
        large: false,
    },
    Scenario {
        mode: Mode::KeepAlive,
        connections: 256,
        large: false,
    },
    Scenario {
        mode: Mode::KeepAlive,
        connections: 32,
        large: true,
    },
    Scenario {
        mode: Mode::Close,
        connections: 32,
        large: false,
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Tenement,
    Nginx,
    Haproxy,
    NginxLogged,
    /// `--compare`: another tenement binary (an earlier build), set up the same way.
    Compared,
}

const TARGETS: [Target; 5] = [
    Target::Tenement,
    Target::Nginx,
    Target::Haproxy,
    Target::NginxLogged,
    Target::Compared,
];

impl Target {
    fn index(self) -> usize {
        TARGETS.iter().position(|t| *t == self).unwrap_or(0)
    }
}

struct Settings {
    seconds: u64,
    rounds: usize,
    compare: Option<PathBuf>,
}

/// One wrk run and the CPU the proxy's processes spent during it.
#[derive(Clone, Copy)]
struct Measured {
    run: Run,
    cpu_us_per_request: f64,
}

pub fn run(args: &[String]) -> Result<()> {
    let Settings {
        seconds,
        rounds,
        compare,
    } = parse(args)?;
    if !util::is_root() {
        bail!("bench proxy needs root (tenement serve with its kernel counters)");
    }
    bench::tools(&["wrk", "nginx", "haproxy"])?;
    let tenement = util::build_release_binary()?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scratch = Scratch::new("proxy")?;
    let site = write_site(&scratch.path)?;

    step("starting tenement serve with the origin (nginx) as its instance bench:one");
    let daemon = start_tenement(&tenement, &scratch.path.join("tenement"), &site)?;
    let origin = origin_port(&daemon)?;
    let compared = match &compare {
        Some(binary) => {
            step(&format!("starting {} the same way", binary.display()));
            Some(start_tenement(
                binary,
                &scratch.path.join("compared"),
                &site,
            )?)
        }
        None => None,
    };
    let targets: Vec<Target> = TARGETS
        .into_iter()
        .filter(|t| *t != Target::Compared || compared.is_some())
        .collect();
    let mut processes = Processes::default();
    step(&format!(
        "starting nginx and HAProxy in front of the same origin (127.0.0.1:{origin}), \
         {workers} workers each"
    ));
    let nginx_port = free_port()?;
    let logged_port = free_port()?;
    let haproxy_port = free_port()?;
    let nginx = start_nginx(
        &mut processes,
        &scratch.path.join("nginx"),
        nginx_port,
        origin,
        workers,
        false,
    )?;
    let logged = start_nginx(
        &mut processes,
        &scratch.path.join("nginx-logged"),
        logged_port,
        origin,
        workers,
        true,
    )?;
    let haproxy = start_haproxy(
        &mut processes,
        &scratch.path.join("haproxy"),
        haproxy_port,
        origin,
        workers,
    )?;
    for port in [nginx_port, logged_port, haproxy_port] {
        wait_listening(port)?;
    }
    let daemon_pid = daemon.pid();
    let compared_pid = compared.as_ref().map_or(0, Daemon::pid);
    let compared_port = compared.as_ref().map_or(0, |d| d.proxy_port);
    let port_of = |target: Target| match target {
        Target::Tenement => daemon.proxy_port,
        Target::Compared => compared_port,
        Target::Nginx => nginx_port,
        Target::Haproxy => haproxy_port,
        Target::NginxLogged => logged_port,
    };
    // The proxy's own processes: the daemon (all its threads; its instances are other
    // processes), nginx's master and workers, HAProxy's one process.
    let pids_of = |target: Target| -> Vec<u32> {
        match target {
            Target::Tenement => vec![daemon_pid],
            Target::Compared => vec![compared_pid],
            Target::Nginx => with_children(nginx),
            Target::NginxLogged => with_children(logged),
            Target::Haproxy => with_children(haproxy),
        }
    };

    step("warming up");
    for &target in &targets {
        for scenario in SCENARIOS {
            bench::wrk(port_of(target), scenario, 1)?;
        }
    }
    let total = rounds * SCENARIOS.len() * targets.len();
    step(&format!(
        "{total} runs of {seconds} s ({rounds} rounds x {} scenarios x {} proxies), interleaved",
        SCENARIOS.len(),
        targets.len()
    ));
    // runs[scenario][target]
    let mut runs = vec![vec![Vec::new(); TARGETS.len()]; SCENARIOS.len()];
    let mut done = 0;
    for round in 0..rounds {
        for (s, scenario) in SCENARIOS.iter().enumerate() {
            for k in 0..targets.len() {
                let target = targets[(k + round + s) % targets.len()];
                let pids = pids_of(target);
                let before = cpu_ticks(&pids)?;
                let run = bench::wrk(port_of(target), *scenario, seconds)?;
                let after = cpu_ticks(&pids)?;
                processes.check()?;
                let cpu_us = (after.saturating_sub(before)) as f64 * 1e6 / ticks_per_second();
                runs[s][target.index()].push(Measured {
                    run,
                    cpu_us_per_request: cpu_us / run.requests.max(1) as f64,
                });
                done += 1;
                eprint!("\r    {done}/{total}");
            }
        }
    }
    eprintln!();
    let access_lines =
        std::fs::read_to_string(scratch.path.join("tenement/data/.tenement/access.log"))
            .map(|text| text.lines().count())
            .unwrap_or(0);
    drop(processes);
    drop(compared);
    drop(daemon);
    let mut report = report(&runs, seconds, rounds, workers, access_lines)?;
    if let Some(binary) = &compare {
        // A comparison between builds is printed, not written into the docs' section.
        println!("\n{report}");
        println!("{}", comparison(&runs, binary)?);
        return Ok(());
    }
    report.truncate(report.trim_end().len());
    report.push('\n');
    println!("\n{report}");
    bench_support::write_section("proxy", "Proxy", &report)
}

fn parse(args: &[String]) -> Result<Settings> {
    let mut settings = Settings {
        seconds: 5,
        rounds: 3,
        compare: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value; {USAGE}"))?;
        match arg.as_str() {
            "--seconds" => settings.seconds = value.parse().context("--seconds")?,
            "--rounds" => settings.rounds = value.parse().context("--rounds")?,
            "--compare" => {
                let binary = PathBuf::from(value);
                if !binary.is_file() {
                    bail!("--compare {}: no such file", binary.display());
                }
                settings.compare = Some(binary);
            }
            other => bail!("unknown option {other:?}; {USAGE}"),
        }
    }
    if settings.seconds == 0 || settings.rounds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    Ok(settings)
}

/// This build against `--compare`'s, paired per round: what a change saved.
fn comparison(runs: &[Vec<Vec<Measured>>], binary: &Path) -> Result<String> {
    let mut text = String::new();
    writeln!(
        text,
        "This build against {} (both `tenement serve`, same config, same round):\n",
        binary.display()
    )?;
    writeln!(
        text,
        "| scenario | CPU µs/req this / compared | CPU ratio (paired) | req/s this / compared | req/s ratio (paired) |"
    )?;
    writeln!(text, "|---|---:|---:|---:|---:|")?;
    for (scenario, runs) in SCENARIOS.iter().zip(runs) {
        let ours = &runs[Target::Tenement.index()];
        let theirs = &runs[Target::Compared.index()];
        let med = |runs: &[Measured], f: fn(&Measured) -> f64| median(runs.iter().map(f));
        let cpu = |m: &Measured| m.cpu_us_per_request;
        let rps = |m: &Measured| m.run.requests_per_second;
        let paired =
            |f: fn(&Measured) -> f64| median(ours.iter().zip(theirs).map(|(a, b)| f(a) / f(b)));
        writeln!(
            text,
            "| {} | {:.1} / {:.1} | {:.2} | {:.0} / {:.0} | {:.2} |",
            scenario.label(),
            med(ours, cpu),
            med(theirs, cpu),
            paired(cpu),
            med(ours, rps),
            med(theirs, rps),
            paired(rps),
        )?;
    }
    Ok(text)
}

/// The origin's files: `index.html` (12 bytes, `/`) and `large` (64 KiB, `/large`), and a
/// directory the origin (running as its tenant uid) may write its pid file and temporary
/// files to.
fn write_site(scratch: &Path) -> Result<PathBuf> {
    let site = scratch.join("site");
    std::fs::create_dir_all(site.join("run"))?;
    std::fs::write(site.join("index.html"), "hello world\n")?;
    std::fs::write(site.join("large"), vec![b'x'; 64 * 1024])?;
    std::fs::write(
        site.join("origin.conf.in"),
        "daemon off;
master_process on;
worker_processes 1;
pid RUN/origin-PORT.pid;
error_log stderr warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path RUN/body-PORT;
    proxy_temp_path RUN/proxy-PORT;
    fastcgi_temp_path RUN/fastcgi-PORT;
    uwsgi_temp_path RUN/uwsgi-PORT;
    scgi_temp_path RUN/scgi-PORT;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:PORT;
        root SITE;
        location = /large { default_type application/octet-stream; }
    }
}
",
    )?;
    util::run(Command::new("chmod").args(["-R", "a+rX"]).arg(&site))?;
    util::run(Command::new("chmod").arg("1777").arg(site.join("run")))?;
    Ok(site)
}

/// `tenement serve` as shipped: a config file with nothing but where to listen and keep
/// data, and the one service; the origin nginx is started by tenement on `$PORT`.
fn start_tenement(tenement: &Path, dir: &Path, site: &Path) -> Result<Daemon> {
    let proxy_port = free_port()?;
    let low = free_port()?.clamp(20000, 60000);
    let s = site.display();
    let config = format!(
        "{}[service.bench]\n\
         command = \"/bin/sh -c 'sed -e s:PORT:$PORT:g -e s:RUN:{s}/run:g -e s:SITE:{s}:g \
         {s}/origin.conf.in > {s}/run/origin-$PORT.conf && exec /usr/sbin/nginx -e stderr \
         -c {s}/run/origin-$PORT.conf'\"\n\
         isolation = \"process\"\n\n[instances]\nbench = [\"one\"]\n",
        bench_support::settings(dir, proxy_port, [low, low + 49]),
    );
    let daemon = Daemon::start_as_shipped(tenement, "tenement serve", dir, proxy_port, &config)?;
    daemon.wait_state("bench:one", "running", Duration::from_secs(60))?;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", proxy_port))?;
    let status = bench_support::http_get(&mut stream, "one.bench.localhost", "/")?;
    if status != 200 {
        bail!(
            "GET / through tenement answered {status}:\n{}",
            daemon.log()
        );
    }
    Ok(daemon)
}

fn origin_port(daemon: &Daemon) -> Result<u16> {
    let body = daemon.api_get("/v1/instances/bench:one")?;
    bench_support::json_field(&body, "port")
        .and_then(|port| port.parse().ok())
        .with_context(|| format!("no port for bench:one in {body}"))
}

/// nginx as the same reverse proxy: a worker per core, upstream keep-alive, the same
/// forwarded headers; no access log, or (`logged`) the combined log written through a
/// 32 KiB buffer flushed every second, as tenement writes its own.
fn start_nginx(
    processes: &mut Processes,
    dir: &Path,
    port: u16,
    origin: u16,
    workers: usize,
    logged: bool,
) -> Result<u32> {
    std::fs::create_dir_all(dir)?;
    let d = dir.display();
    let access_log = if logged {
        format!("access_log {d}/access.log combined buffer=32k flush=1s;")
    } else {
        "access_log off;".to_string()
    };
    let config = format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    {access_log}
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
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
    let name = if logged {
        "nginx (access log)"
    } else {
        "nginx"
    };
    processes.start(
        name,
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("error.log")),
    )
}

/// HAProxy in HTTP mode, a thread per core, connections to the origin kept and shared
/// between requests (`http-reuse always`), `X-Forwarded-For` added; no log.
fn start_haproxy(
    processes: &mut Processes,
    dir: &Path,
    port: u16,
    origin: u16,
    workers: usize,
) -> Result<u32> {
    std::fs::create_dir_all(dir)?;
    let config = format!(
        "global
    nbthread {workers}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend proxy
    bind 127.0.0.1:{port}
    http-request set-header X-Forwarded-Proto http
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin} maxconn 1024
"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    // -db: in the foreground, one process (no master), stopped with SIGTERM.
    processes.start(
        "haproxy",
        Command::new("haproxy").arg("-db").arg("-f").arg(&path),
    )
}

/// `pid` and its children (nginx's workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

/// utime + stime of every process in `pids` (all their threads), in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name is in parentheses and may hold spaces: count fields after it.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `after` starts at field 3.
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        total += utime + stime;
    }
    Ok(total)
}

fn ticks_per_second() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

fn report(
    runs: &[Vec<Vec<Measured>>],
    seconds: u64,
    rounds: usize,
    workers: usize,
    access_lines: usize,
) -> Result<String> {
    let mut text = String::new();
    let version = |command: &str| {
        output(Command::new("sh").args(["-c", command]))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    };
    writeln!(
        text,
        "Measured with `cargo xtask bench proxy --rounds {rounds} --seconds {seconds}` on {}; \
         {}, {}, {}. wrk (2 threads) on 127.0.0.1 through each proxy to the same origin: \
         nginx serving a static file (12 B at `/`, 64 KiB at `/large`), run by tenement as \
         its instance `bench:one` (isolation \"process\"). *tenement*: `tenement serve` \
         (release build) from a config file with default settings: access log on \
         ({access_lines} lines in its current file at the end: it rotates every 10 MiB), kernel counters on, the daemon's log \
         at `info`. *nginx* and *HAProxy*: the same reverse proxy, {workers} workers \
         (threads for HAProxy), keep-alive upstream pools, no access log; *nginx + log*: \
         nginx with its `combined` access log through a 32 KiB buffer flushed every second. \
         {rounds} interleaved rounds of {seconds} s per run, order rotated every round; \
         each figure is the median of the rounds, ratios the median of per-round ratios. \
         CPU µs/req: utime + stime (from /proc) of the proxy's own processes only (not the \
         origin, not wrk) over the requests wrk completed. Everything shares the machine's \
         CPUs (proxy, origin and wrk).\n",
        bench_support::machine(),
        version("nginx -v 2>&1"),
        version("haproxy -v 2>&1"),
        // wrk -v exits with a failure status after printing its version.
        version("wrk -v 2>&1; true"),
    )?;
    writeln!(
        text,
        "| scenario | req/s tenement / nginx / HAProxy / nginx + log | tenement / nginx req/s | \
         tenement / HAProxy req/s | p50 ms tenement / nginx / HAProxy | p99 ms tenement / \
         nginx / HAProxy | CPU µs/req tenement / nginx / HAProxy / nginx + log | \
         tenement / nginx CPU | errors |"
    )?;
    writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut verdicts = Vec::new();
    for (scenario, runs) in SCENARIOS.iter().zip(runs) {
        let of = |target: Target| &runs[target.index()];
        let med = |target: Target, f: &dyn Fn(&Measured) -> f64| median(of(target).iter().map(f));
        let rps = |t: Target| med(t, &|m| m.run.requests_per_second);
        let p50 = |t: Target| med(t, &|m| m.run.p50_ms);
        let p99 = |t: Target| med(t, &|m| m.run.p99_ms);
        let cpu = |t: Target| med(t, &|m| m.cpu_us_per_request);
        let paired = |other: Target, f: &dyn Fn(&Measured) -> f64| {
            median(
                of(Target::Tenement)
                    .iter()
                    .zip(of(other))
                    .map(|(ours, theirs)| f(ours) / f(theirs)),
            )
        };
        let rps_nginx = paired(Target::Nginx, &|m| m.run.requests_per_second);
        let rps_haproxy = paired(Target::Haproxy, &|m| m.run.requests_per_second);
        let cpu_nginx = paired(Target::Nginx, &|m| m.cpu_us_per_request);
        let errors: u64 = runs.iter().flatten().map(|m| m.run.errors).sum();
        writeln!(
            text,
            "| {} | {:.0} / {:.0} / {:.0} / {:.0} | {rps_nginx:.2} | {rps_haproxy:.2} | \
             {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.1} / {:.1} / {:.1} / {:.1} | \
             {cpu_nginx:.2} | {errors} |",
            scenario.label(),
            rps(Target::Tenement),
            rps(Target::Nginx),
            rps(Target::Haproxy),
            rps(Target::NginxLogged),
            p50(Target::Tenement),
            p50(Target::Nginx),
            p50(Target::Haproxy),
            p99(Target::Tenement),
            p99(Target::Nginx),
            p99(Target::Haproxy),
            cpu(Target::Tenement),
            cpu(Target::Nginx),
            cpu(Target::Haproxy),
            cpu(Target::NginxLogged),
        )?;
        let rps_goal = if scenario.mode == Mode::Close {
            0.95
        } else {
            1.0
        };
        let met = cpu_nginx <= 1.0 && rps_nginx >= rps_goal;
        verdicts.push(format!(
            "- {}: {} (CPU µs/req at or below nginx's: {cpu_nginx:.2}; req/s at least \
             {rps_goal:.2}x nginx's: {rps_nginx:.2})",
            scenario.label(),
            if met { "met" } else { "MISSED" },
        ));
    }
    writeln!(
        text,
        "\nTargets (tenement with its access log against nginx without one):\n{}",
        verdicts.join("\n")
    )?;
    Ok(text)
}
