//! Shared by the `api_*` tests: a real `tenement serve` in a scratch directory, the real CLI
//! binary, and raw HTTP/1.1 requests to the management API (so the tests see exactly the
//! status codes and bodies a client sees).

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Output},
    time::Duration,
};

use tenement_tests::{
    daemon::{log_tail, serve_command, spawn_logging, wait_for_daemon},
    free_port, free_port_block, tenement_bin, Scratch,
};

/// A tenant: answers every path with its id; `/health` fails for ids starting with
/// `broken`, so such an instance starts but never gets healthy. Logs each request.
pub const APP: &str = r#"
import http.server, os
port = int(os.environ["PORT"])
tenant = os.environ.get("TENANT", "?")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = 500 if self.path == "/health" and tenant.startswith("broken") else 200
        body = f"hello from {tenant}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print(f"{tenant} served {self.path}", flush=True)

print(f"{tenant} listening on {port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// One service `api` running APP; `{id}` reaches the app as TENANT.
pub fn api_service(app: &std::path::Path) -> String {
    format!(
        r#"
[service.api]
command = "/usr/bin/python3 {app}"
health = "/health"
startup_timeout = 20
env = {{ TENANT = "{{id}}" }}
"#,
        app = app.display()
    )
}

pub struct Daemon {
    child: Option<Child>,
    pub scratch: Scratch,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The TCP management listener (`settings.api`).
    pub api_port: u16,
    /// The public HTTP listener.
    pub http_port: u16,
    log: PathBuf,
}

/// Generous: the machine is shared and slow; this is a deadline, not a timing.
pub const PATIENCE: Duration = Duration::from_secs(90);

impl Daemon {
    /// Starts `tenement serve` with the `api` service and waits until its API answers.
    pub fn start(label: &str) -> Daemon {
        let scratch = Scratch::new(label);
        let app = scratch.write("app.py", APP);
        let services = api_service(&app);
        Daemon::start_with(scratch, &services, &[])
    }

    /// Starts `tenement serve` with one service, `api`, whose instances are the raw-socket
    /// server `tenement_tests::raw_app` with `handler`, and spawns `api:alice`.
    pub fn start_raw_app(label: &str, handler: &str) -> Daemon {
        let scratch = Scratch::new(label);
        let app = scratch.write("app.py", &tenement_tests::raw_app::program(handler));
        let services = format!(
            "[service.api]\ncommand = \"/usr/bin/python3 {}\"\n",
            app.display()
        );
        let daemon = Daemon::start_with(scratch, &services, &[]);
        daemon.ok(&["spawn", "api:alice"]);
        daemon
    }

    /// Starts `tenement serve` with `services` and extra environment variables.
    pub fn start_with(scratch: Scratch, services: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_serving(scratch, services, env, &[])
    }

    /// Like `start_with`, with options for `tenement serve` (`--no-kernel-counters`).
    pub fn start_serving(
        scratch: Scratch,
        services: &str,
        env: &[(&str, &str)],
        serve_args: &[&str],
    ) -> Daemon {
        // Daemons running at the same time (these tests run in parallel, other tests too)
        // must not share instance ports: each gets its own block.
        let base = free_port_block(100);
        let api_port = free_port();
        let http_port = free_port();
        let data_dir = scratch.join("data");
        let config = scratch.write(
            "tenement.toml",
            &format!(
                r#"
[settings]
data_dir = "{data}"
listen = "127.0.0.1:{http_port}"
domain = "localhost"
api = "127.0.0.1:{api_port}"
port_range = [{base}, {high}]
health_check_interval = 1
{services}
"#,
                data = data_dir.display(),
                high = base + 99,
            ),
        );
        let log = scratch.join("daemon.log");
        let child = spawn_logging(
            serve_command(&config)
                .args(serve_args)
                .env("RUST_LOG", "info,tenement=debug")
                .envs(env.iter().copied()),
            &log,
        );
        let mut daemon = Daemon {
            child: Some(child),
            scratch,
            config,
            socket: data_dir.join("tenement.sock"),
            api_port,
            http_port,
            log,
        };
        daemon.wait_until("the management API answers /health", |daemon| {
            daemon.socket.exists()
                && request(
                    &Target::Unix(daemon.socket.clone()),
                    "GET",
                    "/health",
                    None,
                    "",
                )
                .is_ok_and(|(status, _)| status == 200)
        });
        daemon
    }

    pub fn unix(&self) -> Target {
        Target::Unix(self.socket.clone())
    }

    pub fn tcp(&self) -> Target {
        Target::Tcp(self.api_port)
    }

    /// The CLI as root on the unix socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(&format!("unix:{}", self.socket.display()), None, args)
    }

    /// The CLI on the TCP listener with a token.
    pub fn cli_tcp(&self, token: Option<&str>, args: &[&str]) -> Output {
        self.cli_with(&format!("http://127.0.0.1:{}", self.api_port), token, args)
    }

    pub fn cli_with(&self, server: &str, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(tenement_bin());
        command
            .arg("--server")
            .arg(server)
            .args(args)
            .env_remove("TENEMENT_TOKEN")
            .env_remove("TENEMENT_SERVER")
            .env_remove("TENEMENT_CONFIG")
            .current_dir(&self.scratch.path);
        if let Some(token) = token {
            command.arg("--token").arg(token);
        }
        command.output().expect("running the tenement CLI")
    }

    /// Runs the CLI and insists it succeeds; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "`tenement {}` failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `GET /v1/instances` as root, parsed.
    pub fn instances(&self) -> serde_json::Value {
        let (status, body) = request(&self.unix(), "GET", "/v1/instances", None, "").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn instance(&self, name: &str) -> Option<serde_json::Value> {
        self.instances()
            .as_array()
            .unwrap()
            .iter()
            .find(|view| view["name"] == name)
            .cloned()
    }

    /// Waits for `condition`; on the deadline, fails with the daemon's log.
    pub fn wait_until(&mut self, what: &str, mut condition: impl FnMut(&Daemon) -> bool) {
        let mut child = self.child.take().expect("the daemon is running");
        let this = &*self;
        wait_for_daemon(&mut child, &this.log, what, PATIENCE, || condition(this));
        self.child = Some(child);
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Stops the daemon (SIGTERM, as systemd does) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if tenement_tests::terminate(&mut child, PATIENCE).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tenement serve did not stop on SIGTERM\n{}",
                self.log_tail()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            tenement_tests::terminate_or_kill(&mut child, PATIENCE);
        }
    }
}

#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(u16),
}

/// One HTTP/1.1 request, `Connection: close`; returns the status and the (de-chunked) body.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: tenement\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    let mut raw = Vec::new();
    match target {
        Target::Unix(path) => {
            let mut stream = UnixStream::connect(path)?;
            stream.write_all(head.as_bytes())?;
            stream.read_to_end(&mut raw)?;
        }
        Target::Tcp(port) => {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", *port))?;
            stream.write_all(head.as_bytes())?;
            stream.read_to_end(&mut raw)?;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let chunked = head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked"));
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A GET to the instance's own port (what the proxy would forward to).
pub fn get_instance(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    tenement_tests::http::get(port, "127.0.0.1", path)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
