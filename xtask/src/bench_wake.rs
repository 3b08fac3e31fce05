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
/// The target: wake time minus the app's own exec-to-listening time.
const TARGET_MS: f64 = 5.0;
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
    let scratch = Scratch::new("wake")?;
    if thaw_only {
        return bench_thaw::run_only(&tenement, &scratch.path, runs);
    }
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
    drop(daemons);
    let report = report(&samples, runs)?;
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

fn report(samples: &Samples, runs: usize) -> Result<String> {
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
         p99{p99_note}.\n\n\
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
         (p99 likewise); the issue's target is under {TARGET_MS} ms.\n",
        bench_support::machine(),
        DIRECT_POLL.as_secs_f64() * 1000.0,
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
        "\nTarget (wake < {TARGET_MS} ms above the app's own exec to listening, median):"
    )?;
    for (setup, values) in SETUPS.iter().zip(&samples.wake) {
        let above = median_of(values) - alone.0;
        writeln!(
            text,
            "- {}: {} ({above:+.1} ms)",
            setup.label(),
            if above < TARGET_MS { "met" } else { "MISSED" }
        )?;
    }
    Ok(text)
}
