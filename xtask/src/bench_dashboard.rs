//! `cargo xtask bench dashboard`: how long `tenement serve` takes to answer the web
//! dashboard's overview with 1000 configured instances, 100 of them running (real processes
//! with kernel counters on) and 900 stopped.
//!
//! The 900 stopped instances are written into the store before the daemon starts (as if an
//! operator had stopped them), so that the run does not spend minutes spawning and stopping
//! them first. Each request is timed on 127.0.0.1 from the first byte sent to the last byte
//! of the answer, on a fresh connection, with an admin token: the default page (100 rows)
//! and the whole table on one page (`per_page=1000`).

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench_support::{self, json_field, median, percentile, Daemon, Scratch},
    util::{self, step},
};

const USAGE: &str = "usage: cargo xtask bench dashboard [--requests N]";
const RUNNING: usize = 100;
const STOPPED: usize = 900;

const APP: &str = r#"
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn parse(args: &[String]) -> Result<usize> {
    let mut requests = 50;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => {
                requests = args
                    .next()
                    .with_context(|| format!("--requests needs a value; {USAGE}"))?
                    .parse()
                    .context("--requests")?;
            }
            other => bail!("unknown option {other:?}; {USAGE}"),
        }
    }
    if requests == 0 {
        bail!("--requests must be at least 1");
    }
    Ok(requests)
}

pub fn run(args: &[String]) -> Result<()> {
    let requests = parse(args)?;
    if !util::is_root() {
        bail!("bench dashboard needs root (cgroups, eBPF, tenant uids)");
    }
    let tenement = util::build_release_binary()?;
    let scratch = Scratch::new("dashboard")?;
    let app = scratch.path.join("app.py");
    std::fs::write(&app, APP)?;
    util::run(Command::new("chmod").arg("644").arg(&app))?;
    let dir = scratch.path.join("daemon");
    // Below the ephemeral range (32768-), where no outgoing connection takes them.
    let low = 20000 + (std::process::id() % 30) as u16 * 400;
    let (proxy_port, api_port) = (low + 300, low + 301);
    for port in [proxy_port, api_port] {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            bail!("127.0.0.1:{port} is in use; run the benchmark again");
        }
    }
    let settings = format!(
        "{}api = \"127.0.0.1:{api_port}\"\n",
        bench_support::settings(&dir, proxy_port, [low, low + 299])
    )
    .replacen("\n\n", "\n", 1);
    let service = format!(
        "[service.web]\ncommand = \"/usr/bin/python3 {}\"\nstartup_timeout = 120\n\n",
        app.display()
    );

    step("creating the store, then 900 stopped instances in it");
    drop(Daemon::start(
        &tenement,
        "store",
        &dir,
        proxy_port,
        &format!("{settings}\n{service}"),
        true,
    )?);
    let database = dir.join("data/tenement.db");
    let insert = format!(
        "import sqlite3\ndb = sqlite3.connect({:?})\n\
         db.executemany('INSERT INTO instances (name, desired_running, held) VALUES (?, 0, 1)', \
         [('web:stopped-%04d' % i,) for i in range({STOPPED})])\ndb.commit()\n",
        database.display().to_string()
    );
    util::run(Command::new("/usr/bin/python3").arg("-c").arg(insert))?;

    step("starting tenement with 100 running instances");
    let ids: Vec<String> = (0..RUNNING).map(|i| format!("\"run-{i:03}\"")).collect();
    let config = format!(
        "{settings}\n{service}[instances]\nweb = [{}]\n",
        ids.join(", ")
    );
    let daemon = Daemon::start(&tenement, "dashboard", &dir, proxy_port, &config, true)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = daemon.api_get("/v1/status")?;
        let running: usize = json_field(&status, "running")
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        if running == RUNNING {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {running} of {RUNNING} instances run after 10 minutes:\n{}",
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let token = util::output(
        Command::new(&tenement)
            .arg("--server")
            .arg(format!("unix:{}", dir.join("data/tenement.sock").display()))
            .arg("token-gen"),
    )
    .context("creating an admin token")?;
    let token = token.trim().to_string();
    // A few seconds of samples, so that rates and the request counters are filled in.
    std::thread::sleep(Duration::from_secs(3));

    let mut report = String::new();
    writeln!(
        report,
        "`cargo xtask bench dashboard`: `GET /dashboard` on the TCP management listener with \
         {} configured instances ({RUNNING} running, {STOPPED} stopped), kernel counters on, \
         {requests} requests each, timed from the first byte sent to the last byte received \
         on 127.0.0.1. Machine: {}. The machine was shared with other work during the run.\n",
        RUNNING + STOPPED,
        bench_support::machine()
    )?;
    writeln!(report, "| page | bytes | median | p90 |\n|---|---|---|---|")?;
    for (label, path) in [
        ("overview, 100 rows (default page)", "/dashboard"),
        (
            "overview, 1000 rows (`per_page=1000`)",
            "/dashboard?per_page=1000",
        ),
    ] {
        step(&format!("{requests} requests: {label}"));
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..requests {
            let (elapsed, size) = timed_get(api_port, path, &token)?;
            times.push(elapsed.as_secs_f64() * 1000.0);
            bytes = size;
        }
        let line = format!(
            "| {label} | {bytes} | {:.1} ms | {:.1} ms |",
            median(times.iter().copied()),
            percentile(times.iter().copied(), 90.0)
        );
        println!("{line}");
        writeln!(report, "{line}")?;
    }
    drop(daemon);
    bench_support::write_section("dashboard", "Dashboard overview", &report)
}

/// One `GET path` with the token on a fresh connection: the time to the last byte and the
/// size of the body.
fn timed_get(port: u16, path: &str, token: &str) -> Result<(Duration, usize)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    let started = Instant::now();
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", text.lines().next().unwrap_or_default());
    }
    let body = text
        .split_once("\r\n\r\n")
        .map_or(0, |(_, body)| body.len());
    Ok((elapsed, body))
}
