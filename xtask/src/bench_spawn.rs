//! `cargo xtask bench spawn`: how long an instance takes from tenement's decision to start it
//! until its port accepts connections, for each isolation level, against the reference of
//! the same program started directly (fork, exec, connect polling at the same 15 ms).
//!
//! Each sample is one fresh `tenement serve` (release build) with one instance; the time is
//! the one tenement logs ("ready in N ms"): cgroup creation, data directory, fork, namespace
//! or sandbox setup and the app's own start-up included. Run as root.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::util;

const SAMPLES: usize = 9;

/// A program that only listens: isolates tenement's own cost from an app's start-up.
const LISTENER: &str = "import os, socket, time\n\
s = socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', int(os.environ['PORT'])))\n\
s.listen()\n\
time.sleep(1e6)\n";

/// A small real app: Python's HTTP server.
const HTTP: &str = "import http.server, os\n\
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), \
http.server.SimpleHTTPRequestHandler).serve_forever()\n";

pub fn run() -> Result<()> {
    if !util::is_root() {
        bail!("bench spawn needs root (cgroups, namespaces, tenant uids)");
    }
    let tenement = util::build_release_binary()?;
    let scratch = PathBuf::from(format!("/tmp/tenement-bench-spawn-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = measure_all(&tenement, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn measure_all(tenement: &Path, scratch: &Path) -> Result<()> {
    let runsc = Path::new("/usr/bin/runsc").exists();
    let mut rows = Vec::new();
    for (app_name, source) in [("listener", LISTENER), ("python http.server", HTTP)] {
        let app = scratch.join(format!("{}.py", app_name.replace(' ', "_")));
        std::fs::write(&app, source)?;
        util::step(&format!("{app_name}: direct"));
        // One unmeasured run first, so that no level pays for a cold page cache.
        direct(&app)?;
        let direct = median((0..SAMPLES).map(|_| direct(&app)).collect::<Result<_>>()?);
        rows.push((app_name, "direct (reference)", direct));
        for level in ["process", "namespace", "sandbox"] {
            if level == "sandbox" && !runsc {
                eprintln!("runsc is not installed: skipping the sandbox level");
                continue;
            }
            util::step(&format!("{app_name}: isolation = {level}"));
            through_tenement(tenement, scratch, &app, level, SAMPLES)?;
            let samples = (0..SAMPLES)
                .map(|n| through_tenement(tenement, scratch, &app, level, n))
                .collect::<Result<_>>()?;
            rows.push((app_name, level, median(samples)));
        }
    }
    println!("\n| app | isolation | median spawn-to-ready | vs direct |");
    println!("|---|---|---|---|");
    let mut reference = Duration::ZERO;
    for (app, level, time) in rows {
        if level.starts_with("direct") {
            reference = time;
        }
        println!(
            "| {app} | {level} | {} ms | {:.1}x |",
            time.as_millis(),
            time.as_secs_f64() / reference.as_secs_f64().max(1e-6)
        );
    }
    println!("\n({SAMPLES} samples each, median; see docs/isolation.md)");
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The app started by hand: fork/exec, then connect polling until the port answers.
fn direct(app: &Path) -> Result<Duration> {
    let port = free_port()?;
    let began = Instant::now();
    let mut child = Command::new("/usr/bin/python3")
        .arg(app)
        .env_clear()
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .spawn()?;
    let ready = wait_port(port, &mut child).map(|()| began.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    ready
}

fn wait_port(port: u16, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("the app never listened on port {port}");
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    Ok(())
}

fn through_tenement(
    tenement: &Path,
    scratch: &Path,
    app: &Path,
    level: &str,
    sample: usize,
) -> Result<Duration> {
    let dir = scratch.join(format!("{level}-{sample}"));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?.min(60000);
    let config = dir.join("tenement.toml");
    std::fs::write(
        &config,
        format!(
            "[settings]\ndata_dir = \"{data}\"\nport_range = [{port}, {high}]\n\n\
             [service.bench]\ncommand = \"/usr/bin/python3 {app}\"\nisolation = \"{level}\"\n\n\
             [instances]\nbench = [\"b{sample}\"]\n",
            data = dir.join("data").display(),
            high = port + 50,
            app = app.display(),
        ),
    )?;
    let mut daemon = Command::new(tenement)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tenement serve")?;
    // Read on a thread to the end: the daemon must never see its log pipe closed.
    let stderr = daemon.stderr.take().expect("piped");
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut ready = None;
    let mut log = String::new();
    while let Ok(line) = received.recv_timeout(Duration::from_secs(60)) {
        log.push_str(&line);
        log.push('\n');
        if let Some(ms) = line
            .split(" ready in ")
            .nth(1)
            .and_then(|rest| rest.split("ms").next())
            .and_then(|ms| ms.trim().parse::<u64>().ok())
        {
            ready = Some(Duration::from_millis(ms));
            break;
        }
        if line.contains("ERROR") || line.contains("backoff") {
            break;
        }
    }
    util::run(Command::new("kill").args(["-TERM", &daemon.id().to_string()]))?;
    let status = daemon.wait()?;
    let _ = reader.join();
    if !status.success() {
        bail!("tenement serve exited with {status}:\n{log}");
    }
    ready.with_context(|| format!("no \"ready in\" line from tenement:\n{log}"))
}
