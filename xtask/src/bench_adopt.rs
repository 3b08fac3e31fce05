//! `cargo xtask bench adopt [--rounds N]`: how long a tenement takes from its start to serving
//! every one of N instances (N = 10, 100) when it adopts them (the daemon before it was
//! killed with SIGKILL; the instances kept running), beside a cold start of the same N
//! (fresh data directory: every instance is spawned). "Serving" is: the proxy listens and
//! the API shows all N `running`. Run as root; writes docs/benchmarks.md.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench_support::{self, free_port, median, Scratch},
    util::{self, step},
};

const SIZES: [usize; 2] = [10, 100];

/// A small HTTP app: Python's standard server, answering `/` with its directory listing.
const APP: &str = "import http.server, os\n\
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), \
http.server.SimpleHTTPRequestHandler).serve_forever()\n";

pub fn run(args: &[String]) -> Result<()> {
    let rounds = match args {
        [] => 3,
        [flag, n] if flag == "--rounds" => n.parse().context("--rounds N")?,
        _ => bail!("usage: cargo xtask bench adopt [--rounds N]"),
    };
    if !util::is_root() {
        bail!("bench adopt needs root (cgroups, eBPF, tenant uids)");
    }
    let tenement = util::build_release_binary()?;
    let scratch = Scratch::new("adopt")?;
    let app = scratch.path.join("app.py");
    std::fs::write(&app, APP)?;
    let mut rows = Vec::new();
    for n in SIZES {
        let (mut cold, mut adopted) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            step(&format!("{n} instances, round {}/{rounds}", round + 1));
            let dir = scratch.path.join(format!("n{n}-r{round}"));
            let config = write_config(&dir, &app, n)?;
            let (first, took) = Serve::start(&tenement, &config, &dir, n, "cold")?;
            cold.push(took);
            let killed = first.kill9();
            let (second, took) = Serve::start(&tenement, &config, &dir, n, "adopt")?;
            adopted.push(took);
            second.check_adopted(n, killed)?;
            drop(second);
            let _ = std::fs::remove_dir_all(&dir);
        }
        rows.push((n, median(cold.into_iter()), median(adopted.into_iter())));
    }
    let mut report = format!(
        "Measured with `cargo xtask bench adopt` on {} (the machine was shared with other \
         work: figures move with its load): Python's http.server per instance, \
         `isolation = \"process\"`, kernel counters on; median of {rounds} rounds. From the \
         start of `tenement serve` until its proxy listens and the API shows every instance \
         `running`.\n\n\
         | instances | cold start (all spawned) | adopted after `kill -9` | ratio |\n\
         |---|---|---|---|\n",
        bench_support::machine()
    );
    for (n, cold, adopted) in rows {
        report.push_str(&format!(
            "| {n} | {cold:.0} ms | {adopted:.0} ms | {:.2}x |\n",
            adopted / cold
        ));
    }
    println!("\n{report}");
    bench_support::write_section(
        "adopt",
        "Restart with running instances (adoption)",
        &report,
    )
}

fn write_config(dir: &Path, app: &Path, n: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let low = free_port()?.clamp(20000, 50000);
    let ids: Vec<String> = (0..n).map(|i| format!("\"i{i}\"")).collect();
    let config = format!(
        "{}adopt_timeout = 30\n\n[service.app]\ncommand = \"/usr/bin/python3 {app}\"\n\n\
         [instances]\napp = [{}]\n",
        bench_support::settings(dir, free_port()?, [low, low + 2 * n as u16 + 20]),
        ids.join(", "),
        app = app.display(),
    );
    let path = dir.join("tenement.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// One `tenement serve`, stopped with SIGTERM on drop (it then stops its instances).
struct Serve {
    child: Option<Child>,
    dir: PathBuf,
}

impl Serve {
    /// Starts it and waits until it serves all `n` instances; returns the time that took.
    fn start(
        tenement: &Path,
        config: &Path,
        dir: &Path,
        n: usize,
        label: &str,
    ) -> Result<(Serve, f64)> {
        let log = std::fs::File::create(dir.join(format!("serve-{label}.log")))?;
        let began = Instant::now();
        let child = Command::new(tenement)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tenement serve")?;
        let serve = Serve {
            child: Some(child),
            dir: dir.to_path_buf(),
        };
        let proxy = proxy_port(config)?;
        let deadline = began + Duration::from_secs(300);
        loop {
            if TcpStream::connect(("127.0.0.1", proxy)).is_ok() && serve.running()? >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{label}: not serving {n} instances after 300 s:\n{}",
                    serve.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((serve, began.elapsed().as_secs_f64() * 1000.0))
    }

    fn log(&self) -> String {
        let mut text = String::new();
        for label in ["cold", "adopt"] {
            text.push_str(
                &std::fs::read_to_string(self.dir.join(format!("serve-{label}.log")))
                    .unwrap_or_default(),
            );
        }
        text
    }

    /// `GET /v1/instances` on the management socket, whitespace removed (curl decodes the
    /// HTTP framing); empty while the API does not answer yet.
    fn instances(&self) -> String {
        let socket = self.dir.join("data/tenement.sock");
        util::output(
            Command::new("curl")
                .args(["-sf", "--max-time", "30", "--unix-socket"])
                .arg(&socket)
                .arg("http://localhost/v1/instances"),
        )
        .unwrap_or_default()
        .split_whitespace()
        .collect()
    }

    /// How many instances the API shows `running`.
    fn running(&self) -> Result<usize> {
        Ok(self.instances().matches("\"state\":\"running\"").count())
    }

    /// SIGKILL: its instances keep running. Returns the pids it supervised.
    fn kill9(mut self) -> Vec<u32> {
        let pids = self.pids();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        pids
    }

    /// Instance pids as the API shows them.
    fn pids(&self) -> Vec<u32> {
        self.instances()
            .split("\"pid\":")
            .skip(1)
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse().ok())
            })
            .collect()
    }

    /// The adopting daemon serves the very processes the killed one started.
    fn check_adopted(&self, n: usize, before: Vec<u32>) -> Result<()> {
        let mut now = self.pids();
        let mut before = before;
        now.sort_unstable();
        before.sort_unstable();
        if before.len() != n || now != before {
            bail!(
                "expected the {n} processes of the killed daemon to be adopted: before \
                 {before:?}, now {now:?}:\n{}",
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            util::terminate(child.id());
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn proxy_port(config: &Path) -> Result<u16> {
    let text = std::fs::read_to_string(config)?;
    text.lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|rest| rest.trim_end_matches('"').parse().ok())
        .context("the proxy's listen line")
}
