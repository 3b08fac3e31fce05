//! `cargo xtask bench wake`: how long the first request to a sleeping instance of the notes
//! app (examples/notes/app.py) takes through `tenement serve`, beside the app's own time
//! from exec to listening when started by hand.
//!
//! Four daemons run side by side, one per isolation level (process, namespace) and
//! readiness signal (the kernel's listen event, or connect polling with
//! `--no-kernel-counters`), each with one instance whose `idle_timeout` is 1 s. Every round
//! starts the app by hand once, then, for each daemon in rotating order, waits until the API
//! reports the instance `sleeping` (put there by the idle reaper, as in production) and
//! times one `GET /health` through the proxy on an already open connection, from the first
//! byte sent to the last byte of the answer.

use std::{
    fmt::Write as _,
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench_support::{self, free_port, median, percentile, Daemon, Scratch},
    bench_thaw,
    util::{self, step},
};

const USAGE: &str = "usage: cargo xtask bench wake [--thaw-only] [--runs N]";
/// How often the hand-started app's port is tried: fine enough to resolve well under the
/// 5 ms target, coarse enough to leave the app a core.
const DIRECT_POLL: Duration = Duration::from_micros(200);
/// The targets: wake time minus the app's own exec-to-listening time, median.
fn target_ms(isolation: &str) -> f64 {
    if isolation == "process" {
        0.5
    } else {
        2.0
    }
}
/// tenement's PATH for instances (supervisor::DEFAULT_PATH).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const HOST: &str = "b.notes.localhost";
const INSTANCE: &str = "notes:b";

struct Setup {
    isolation: &'static str,
    kernel_counters: bool,
}

impl Setup {
    fn label(&self) -> String {
        format!(
            "wake through tenement, isolation {}, {}",
            self.isolation,
            if self.kernel_counters {
                "listen events"
            } else {
                "connect polling (`--no-kernel-counters`)"
            }
        )
    }
}

const SETUPS: [Setup; 4] = [
    Setup {
        isolation: "process",
        kernel_counters: true,
    },
    Setup {
        isolation: "process",
        kernel_counters: false,
    },
    Setup {
        isolation: "namespace",
        kernel_counters: true,
    },
    Setup {
        isolation: "namespace",
        kernel_counters: false,
    },
];

/// Milliseconds per run.
#[derive(Default)]
struct Samples {
    direct_listening: Vec<f64>,
    direct_answer: Vec<f64>,
    wake: Vec<Vec<f64>>,
}

pub fn run(args: &[String]) -> Result<()> {
    let thaw_only = args.first().is_some_and(|a| a == "--thaw-only");
    let runs = parse(&args[usize::from(thaw_only)..])?;
    if !util::is_root() {
        bail!("bench wake needs root (cgroups, eBPF, namespaces, tenant uids)");
    }
    let tenement = util::build_release_binary()?;
    let load_before = load_average();
    let scratch = Scratch::new("wake")?;
    if thaw_only {
        return bench_thaw::run_only(&tenement, &scratch.path, runs);
    }
    let socket_activation = socket_activation_available(&tenement, &scratch.path);
    let app = scratch.path.join("app.py");
    std::fs::copy(util::workspace_root().join("examples/notes/app.py"), &app)?;
    util::run(Command::new("chmod").arg("644").arg(&app))?;

    step("starting four tenement daemons (process/namespace x listen events/polling)");
    let base = free_port()?.clamp(20000, 60000);
    let mut daemons = Vec::new();
    for (k, setup) in SETUPS.iter().enumerate() {
        let dir = scratch.path.join(format!("daemon-{k}"));
        let proxy_port = free_port()?;
        let low = base + 50 * k as u16;
        let config = format!(
            "{}[service.notes]\ncommand = \"/usr/bin/python3 {app}\"\nhealth = \"/health\"\n\
             isolation = \"{isolation}\"\nidle_timeout = 1\n\n[instances]\nnotes = [\"b\"]\n",
            bench_support::settings(&dir, proxy_port, [low, low + 49]),
            app = app.display(),
            isolation = setup.isolation,
        );
        daemons.push(Daemon::start(
            &tenement,
            &setup.label(),
            &dir,
            proxy_port,
            &config,
            setup.kernel_counters,
        )?);
    }

    step("one unmeasured start of each, so that none pays for a cold page cache");
    direct(&app, &scratch.path)?;
    for daemon in &daemons {
        wake(daemon)?;
    }

    step(&format!("{runs} rounds, interleaved"));
    let mut samples = Samples {
        wake: vec![Vec::new(); SETUPS.len()],
        ..Samples::default()
    };
    for round in 0..runs {
        let (listening, answer) = direct(&app, &scratch.path)?;
        samples.direct_listening.push(listening);
        samples.direct_answer.push(answer);
        for k in 0..daemons.len() {
            let d = (k + round) % daemons.len();
            samples.wake[d].push(wake(&daemons[d])?);
        }
        eprint!("\r    {}/{runs}", round + 1);
    }
    eprintln!();
    let steps = steps_table(&daemons)?;
    drop(daemons);
    let mut report = report(&samples, runs, &load_before)?;
    report.push_str(&socket_activation_rows(socket_activation.as_ref()));
    report.push_str(&steps);
    println!("\n{report}");
    bench_support::write_section("wake", "Cold wake", &report)?;
    // The frozen rows: their own daemon, their own section.
    bench_thaw::run_only(&tenement, &scratch.path, runs)
}

fn parse(args: &[String]) -> Result<usize> {
    match args {
        [] => Ok(20),
        [flag, n] if flag == "--runs" => {
            let runs: usize = n.parse().context("--runs")?;
            if runs == 0 {
                bail!("--runs must be at least 1");
            }
            Ok(runs)
        }
        _ => bail!("{USAGE}"),
    }
}

/// The app started by hand with the environment tenement gives it (PATH, PORT, DATA_DIR,
/// TENEMENT_INSTANCE), as root: milliseconds from
/// just before the spawn until a connect succeeds, and until its first answer to
/// `GET /health` (on a new connection, right after).
fn direct(app: &Path, scratch: &Path) -> Result<(f64, f64)> {
    let port = free_port()?;
    let data = scratch.join("direct-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let began = Instant::now();
    let mut child = Command::new("/usr/bin/python3")
        .arg(app)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("PORT", port.to_string())
        .env("DATA_DIR", &data)
        .env("TENEMENT_INSTANCE", "notes:direct")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting /usr/bin/python3 app.py")?;
    let measured = (|| {
        let deadline = began + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("the notes app never listened on port {port}");
            }
            std::thread::sleep(DIRECT_POLL);
        }
        let listening = began.elapsed();
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        let status = bench_support::http_get(&mut stream, "127.0.0.1", "/health")?;
        let answered = began.elapsed();
        if status != 200 {
            bail!("the notes app answered GET /health with {status}");
        }
        Ok((ms(listening), ms(answered)))
    })();
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// Once the idle reaper has put the instance to sleep: the time of one `GET /health`
/// through the proxy, on a connection opened before.
fn wake(daemon: &Daemon) -> Result<f64> {
    daemon.wait_state(INSTANCE, "sleeping", Duration::from_secs(60))?;
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.proxy_port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let began = Instant::now();
    let status = bench_support::http_get(&mut stream, HOST, "/health")?;
    let wake = began.elapsed();
    if status != 200 {
        bail!(
            "{}: GET /health answered {status}:\n{}",
            daemon.label,
            daemon.log()
        );
    }
    Ok(ms(wake))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(samples: &Samples, runs: usize, load_before: &str) -> Result<String> {
    let mut text = String::new();
    let p99_note = if runs < 100 {
        format!(" (with {runs} runs the nearest-rank p99 is the slowest run)")
    } else {
        String::new()
    };
    writeln!(
        text,
        "Measured with `cargo xtask bench wake` on {}: the notes app (examples/notes/app.py, \
         /usr/bin/python3, `health = \"/health\"`), {runs} runs each, interleaved; median and \
         p99{p99_note}. Load average at the start: {load_before} (the machine is shared: \
         numbers from a loaded machine spread wider and run higher than on a quiet one).\n\n\
         - *App alone*: spawned by hand with `PORT` set, timed from just before the spawn \
         until a connect succeeds (tried every {} ms), and until it answered a first \
         `GET /health`.\n\
         - *Wake*: four daemons side by side, one per isolation level and readiness signal, \
         one instance each with `idle_timeout = 1`. Each run waits until the API reports \
         the instance `sleeping` (the idle reaper's doing), then times one `GET /health` \
         through the proxy on an open connection, first byte sent to last byte received. \
         That covers routing, the cgroup, fork and exec, the app's start-up, readiness \
         (listening, then tenement's own `GET /health`) and the proxied request.\n\
         - *Above app alone*: wake median minus the app's own exec-to-listening median \
         (p99 likewise); the issue's targets are under {} ms for `process` and under {} ms \
         for `namespace`.\n",
        bench_support::machine(),
        DIRECT_POLL.as_secs_f64() * 1000.0,
        target_ms("process"),
        target_ms("namespace"),
    )?;
    writeln!(
        text,
        "| measured | median (ms) | p99 (ms) | above app alone, median / p99 (ms) |"
    )?;
    writeln!(text, "|---|---:|---:|---:|")?;
    let median_of = |v: &[f64]| median(v.iter().copied());
    let p99_of = |v: &[f64]| percentile(v.iter().copied(), 99.0);
    let alone = (
        median_of(&samples.direct_listening),
        p99_of(&samples.direct_listening),
    );
    let mut row = |label: &str, values: &[f64], compare: bool| {
        let above = if compare {
            format!(
                "{:+.1} / {:+.1}",
                median_of(values) - alone.0,
                p99_of(values) - alone.1
            )
        } else {
            String::new()
        };
        writeln!(
            text,
            "| {label} | {:.1} | {:.1} | {above} |",
            median_of(values),
            p99_of(values)
        )
    };
    row(
        "app alone: exec to listening",
        &samples.direct_listening,
        false,
    )?;
    row(
        "app alone: exec to first answer",
        &samples.direct_answer,
        true,
    )?;
    for (setup, values) in SETUPS.iter().zip(&samples.wake) {
        row(&setup.label(), values, true)?;
    }
    writeln!(
        text,
        "\nTargets (wake above the app's own exec to listening, median):"
    )?;
    for (setup, values) in SETUPS.iter().zip(&samples.wake) {
        let above = median_of(values) - alone.0;
        let target = target_ms(setup.isolation);
        writeln!(
            text,
            "- {} (< {target} ms): {} ({above:+.1} ms)",
            setup.label(),
            if above < target { "met" } else { "MISSED" }
        )?;
    }
    Ok(text)
}

/// The first field of /proc/loadavg (1-minute load average).
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_string()
}

/// Whether this build knows `socket_activation` (added by the socket-activation work):
/// `tenement config check` on a configuration that sets it. `Err` says why not.
fn socket_activation_available(tenement: &Path, scratch: &Path) -> Result<(), String> {
    let dir = scratch.join("socket-activation-check");
    std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
    let config = dir.join("tenement.toml");
    let text = format!(
        "[settings]\ndata_dir = {:?}\n\n[service.notes]\ncommand = \"/bin/true\"\n\
         socket_activation = true\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&config, text).map_err(|err| err.to_string())?;
    let output = Command::new(tenement)
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .map_err(|err| err.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        let said = [&output.stdout[..], &output.stderr[..]].concat();
        Err(String::from_utf8_lossy(&said)
            .lines()
            .find(|line| line.contains("socket_activation"))
            .unwrap_or("rejected")
            .trim()
            .to_string())
    }
}

/// The rows for a wake with `socket_activation = true`. Measuring them needs the
/// socket-activation work in this build; until then they say so.
fn socket_activation_rows(available: Result<&(), &String>) -> String {
    match available {
        Ok(()) => "\nWake with `socket_activation = true` (process, namespace): not measured \
                   yet by this bench.\n"
            .to_string(),
        Err(why) => format!(
            "\nWake with `socket_activation = true` (process, namespace): not available in \
             this build (`tenement config check`: {why}).\n"
        ),
    }
}

/// Where the milliseconds of each setup's measured wakes went, from the daemon's
/// `wake steps` debug lines (supervisor/wake_steps.rs): medians per step. The first two
/// starts of every daemon (at boot, and the unmeasured warm-up) are left out.
fn steps_table(daemons: &[Daemon]) -> Result<String> {
    const STEPS: [&str; 5] = ["prepare", "confine", "spawn", "app until ready", "total"];
    let mut text = String::new();
    writeln!(
        text,
        "\nWhere a wake's milliseconds go inside tenement (median per step, from the \
         `wake steps` debug line of each start): *prepare* (data directory, uid, port \
         lease, cgroup created, launch command), *confine* (the cgroup registered with the \
         kernel counters and its network policy written), *spawn* (fork and exec, in the \
         cgroup and namespaces), *app until ready* (from exec until tenement saw it \
         listening: the app's own start-up plus the readiness signal), *total*. The request \
         then still goes through the proxy (routing, connect, forwarding). An idle stop \
         prepares the next start at once (supervisor/ahead.rs): at the wake, *prepare* and \
         *confine* only take what is ready, and their work is done while the instance \
         sleeps.\n"
    )?;
    writeln!(text, "| setup | {} |", STEPS.join(" (ms) | ") + " (ms)")?;
    writeln!(text, "|---|{}", "---:|".repeat(STEPS.len()))?;
    for daemon in daemons {
        let lines: Vec<Vec<f64>> = daemon
            .log()
            .lines()
            .filter_map(|line| line.split_once("wake steps: ").map(|(_, rest)| rest))
            .map(|rest| {
                STEPS
                    .iter()
                    .filter_map(|step| {
                        let at = rest.find(&format!("{step} "))? + step.len() + 1;
                        rest[at..].split_whitespace().next()?.parse().ok()
                    })
                    .collect()
            })
            .filter(|values: &Vec<f64>| values.len() == STEPS.len())
            .skip(2)
            .collect();
        let medians: Vec<String> = (0..STEPS.len())
            .map(|k| format!("{:.2}", median(lines.iter().map(|v| v[k]))))
            .collect();
        writeln!(text, "| {} | {} |", daemon.label, medians.join(" | "))?;
    }
    Ok(text)
}
