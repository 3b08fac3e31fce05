//! The frozen row of `cargo xtask bench wake`: what a request to a frozen instance
//! (`freeze_after`) costs above the same request to a running one, through `tenement serve`.
//!
//! One daemon (process isolation, kernel counters) runs two services of the same small app:
//! `frozen` with `freeze_after = 1`, `warm` without. Each run waits until the API reports
//! the `frozen` instance frozen (the reaper's doing, as in production), then times one
//! `GET /health` to each instance on its own already open connection to the proxy, in
//! alternating order: first byte sent to last byte received. The thaw's added latency is
//! the difference of the two.

use std::{
    fmt::Write as _,
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    bench_support::{self, free_port, median, percentile, Daemon},
    util::step,
};

/// The issue's targets for the thaw: added latency, median and p99.
const TARGET_MEDIAN_MS: f64 = 1.0;
const TARGET_P99_MS: f64 = 2.0;

/// A minimal app: answers at once, in one write, with TCP_NODELAY (the notes example's
/// own keep-alive delay would drown the thaw in its 40 ms).
const APP: &str = r#"
import http.server, os, socket, socketserver

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// Milliseconds per run.
#[derive(Default)]
pub struct ThawSamples {
    frozen: Vec<f64>,
    running: Vec<f64>,
}

/// Runs the frozen-vs-running measurement `runs` times with the release binary `tenement`,
/// in `scratch`.
pub fn measure(tenement: &Path, scratch: &Path, runs: usize) -> Result<ThawSamples> {
    let app = scratch.join("thaw_app.py");
    std::fs::write(&app, APP)?;
    crate::util::run(std::process::Command::new("chmod").arg("644").arg(&app))?;
    step("starting a daemon with a frozen and a running instance");
    let dir = scratch.join("daemon-thaw");
    let proxy_port = free_port()?;
    let low = free_port()?.clamp(20000, 60000);
    let command = format!("/usr/bin/python3 {}", app.display());
    let config = format!(
        "{}[service.frozen]\ncommand = \"{command}\"\nhealth = \"/health\"\nfreeze_after = 1\n\n\
         [service.warm]\ncommand = \"{command}\"\nhealth = \"/health\"\n\n\
         [instances]\nfrozen = [\"f\"]\nwarm = [\"w\"]\n",
        bench_support::settings(&dir, proxy_port, [low, low + 49]),
    );
    let daemon = Daemon::start(tenement, "thaw", &dir, proxy_port, &config, true)?;
    daemon.wait_state("warm:w", "running", Duration::from_secs(60))?;
    let mut frozen = connect(proxy_port)?;
    let mut running = connect(proxy_port)?;
    // Unmeasured: both connections (client and the proxy's pooled ones) in use once.
    get(&daemon, &mut running, "w.warm.localhost")?;
    daemon.wait_state("frozen:f", "frozen", Duration::from_secs(60))?;
    get(&daemon, &mut frozen, "f.frozen.localhost")?;

    step(&format!("{runs} runs, frozen and running alternating"));
    let mut samples = ThawSamples::default();
    for round in 0..runs {
        daemon.wait_state("frozen:f", "frozen", Duration::from_secs(60))?;
        if round % 2 == 0 {
            samples
                .frozen
                .push(get(&daemon, &mut frozen, "f.frozen.localhost")?);
            samples
                .running
                .push(get(&daemon, &mut running, "w.warm.localhost")?);
        } else {
            samples
                .running
                .push(get(&daemon, &mut running, "w.warm.localhost")?);
            samples
                .frozen
                .push(get(&daemon, &mut frozen, "f.frozen.localhost")?);
        }
        eprint!("\r    {}/{runs}", round + 1);
    }
    eprintln!();
    Ok(samples)
}

fn connect(port: u16) -> Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(stream)
}

/// One timed `GET /health` on `stream`, in milliseconds.
fn get(daemon: &Daemon, stream: &mut TcpStream, host: &str) -> Result<f64> {
    let began = Instant::now();
    let status = bench_support::http_get(stream, host, "/health")?;
    let took = began.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        bail!("GET /health on {host} answered {status}:\n{}", daemon.log());
    }
    Ok(took)
}

/// The rows and the closing note, as markdown.
pub fn report(samples: &ThawSamples, runs: usize) -> Result<String> {
    let median_of = |v: &[f64]| median(v.iter().copied());
    let p99_of = |v: &[f64]| percentile(v.iter().copied(), 99.0);
    let added = (
        median_of(&samples.frozen) - median_of(&samples.running),
        p99_of(&samples.frozen) - p99_of(&samples.running),
    );
    let mut text = String::new();
    writeln!(
        text,
        "Measured with `cargo xtask bench wake` (or `cargo xtask bench wake --thaw-only`) on \
         {}: one daemon, isolation `process`, kernel counters on, a minimal Python app \
         (one write per answer, `TCP_NODELAY`) as two services, `frozen` with \
         `freeze_after = 1` and `warm` without; {runs} runs, alternating which goes first. \
         Each run waits until the API reports the `frozen` instance `frozen`, then times one \
         `GET /health` to each through the proxy, each on its own open connection, first byte \
         sent to last byte received.\n",
        bench_support::machine(),
    )?;
    writeln!(text, "| measured | median (ms) | p99 (ms) |")?;
    writeln!(text, "|---|---:|---:|")?;
    for (label, values) in [
        ("running → served", &samples.running),
        ("frozen → served (thaw included)", &samples.frozen),
    ] {
        writeln!(
            text,
            "| {label} | {:.2} | {:.2} |",
            median_of(values),
            p99_of(values)
        )?;
    }
    writeln!(
        text,
        "| thaw added (frozen minus running) | {:+.2} | {:+.2} |",
        added.0, added.1
    )?;
    let verdict = |value: f64, target: f64| if value < target { "met" } else { "MISSED" };
    writeln!(
        text,
        "\nTarget (thaw adds < {TARGET_MEDIAN_MS} ms median, < {TARGET_P99_MS} ms p99): \
         median {} ({:+.2} ms), p99 {} ({:+.2} ms).",
        verdict(added.0, TARGET_MEDIAN_MS),
        added.0,
        verdict(added.1, TARGET_P99_MS),
        added.1,
    )?;
    Ok(text)
}

/// `cargo xtask bench wake --thaw-only [--runs N]`: the frozen rows alone.
pub fn run_only(tenement: &Path, scratch: &Path, runs: usize) -> Result<()> {
    let samples = measure(tenement, scratch, runs)?;
    let text = report(&samples, runs)?;
    println!("\n{text}");
    bench_support::write_section("wake-thaw", "Thaw of a frozen instance", &text)
}
