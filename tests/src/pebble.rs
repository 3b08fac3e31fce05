//! Debian's `pebble` ACME test server, really started for a test, with `pebble-challtestsrv`
//! as its DNS server so that every name resolves to 127.0.0.1: validation requests for any
//! name reach the test's own listeners on `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01).
//!
//! Both processes are killed by PID when the `Pebble` is dropped, even when the test fails.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    thread::sleep,
    time::{Duration, Instant},
};

use crate::{free_port, tls::TestCa, Scratch};

#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// Pebble's default: reject 5% of valid nonces, so that clients must retry. `false` sets
    /// `PEBBLE_WFE_NONCEREJECT=0`.
    pub reject_nonces: bool,
    /// Lifetime of issued certificates (pebble's default is five years).
    pub certificate_validity: Option<Duration>,
    /// The DNS server pebble validates against (`-dnsserver`) instead of
    /// pebble-challtestsrv: tenement's own DNS-01 responder, or a test's bind9.
    pub dns_server: Option<std::net::SocketAddr>,
}

impl Default for PebbleOptions {
    fn default() -> Self {
        PebbleOptions {
            reject_nonces: true,
            certificate_validity: None,
            dns_server: None,
        }
    }
}

pub struct Pebble {
    /// `https://127.0.0.1:{port}/dir`
    pub directory_url: String,
    /// CA of pebble's own HTTPS listener: what `settings.tls.acme_root` points at.
    pub acme_root: PathBuf,
    /// Port on 127.0.0.1 where pebble checks HTTP-01 answers: the test's plain listener.
    pub http_port: u16,
    /// Port on 127.0.0.1 where pebble checks TLS-ALPN-01 answers: the test's TLS listener.
    pub tls_port: u16,
    listen_port: u16,
    management_port: u16,
    dns_port: u16,
    challtestsrv_port: u16,
    options: PebbleOptions,
    config: PathBuf,
    log: PathBuf,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
    scratch: Scratch,
}

impl Pebble {
    /// Starts pebble and its DNS server. A start that never comes up (seen once in many
    /// runs on a loaded machine: neither process printed anything within a minute) is
    /// retried once from scratch, on new ports, before the test fails.
    pub fn start(options: PebbleOptions) -> Pebble {
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut pebble = Pebble::prepare(options.clone());
            pebble.run();
            pebble
        }));
        first.unwrap_or_else(|_| {
            eprintln!("pebble did not come up; starting it again on new ports");
            let mut pebble = Pebble::prepare(options);
            pebble.run();
            pebble
        })
    }

    /// Writes the configuration and picks the ports, without starting anything yet (for a
    /// test that starts tenement while the ACME server is down).
    pub fn prepare(options: PebbleOptions) -> Pebble {
        ensure_installed();
        let scratch = Scratch::new("pebble");
        let ca = TestCa::new("tenement test CA for pebble's listener");
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        let acme_root = scratch.write("listener-ca.pem", &ca.pem);
        let cert_path = scratch.write("listener.pem", &cert);
        let key_path = scratch.write("listener.key", &key);

        let (listen_port, management_port) = (free_port(), free_port());
        let (http_port, tls_port) = (free_port(), free_port());
        let validity = options
            .certificate_validity
            .map(|v| format!(",\n    \"certificateValidityPeriod\": {}", v.as_secs()))
            .unwrap_or_default();
        let config = scratch.write(
            "pebble-config.json",
            &format!(
                r#"{{
  "pebble": {{
    "listenAddress": "127.0.0.1:{listen_port}",
    "managementListenAddress": "127.0.0.1:{management_port}",
    "certificate": "{}",
    "privateKey": "{}",
    "httpPort": {http_port},
    "tlsPort": {tls_port},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false{validity}
  }}
}}
"#,
                cert_path.display(),
                key_path.display()
            ),
        );
        Pebble {
            directory_url: format!("https://127.0.0.1:{listen_port}/dir"),
            acme_root,
            http_port,
            tls_port,
            listen_port,
            management_port,
            dns_port: free_port(),
            challtestsrv_port: free_port(),
            options,
            log: scratch.join("pebble.log"),
            config,
            pebble: None,
            challtestsrv: None,
            scratch,
        }
    }

    /// Starts whatever is not running; returns when both answer.
    pub fn run(&mut self) {
        if self.challtestsrv.is_none() {
            let child = Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{}", self.dns_port)])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args([
                    "-management",
                    &format!("127.0.0.1:{}", self.challtestsrv_port),
                ])
                .stdout(self.log_file())
                .stderr(self.log_file())
                .spawn()
                .expect("starting pebble-challtestsrv");
            self.challtestsrv = Some(child);
            self.wait_for_port(self.challtestsrv_port, "pebble-challtestsrv");
        }
        if self.pebble.is_none() {
            let dns_server = match self.options.dns_server {
                Some(server) => server.to_string(),
                None => format!("127.0.0.1:{}", self.dns_port),
            };
            let mut command = Command::new("pebble");
            command
                .arg("-config")
                .arg(&self.config)
                .args(["-dnsserver", &dns_server])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .stdout(self.log_file())
                .stderr(self.log_file());
            if !self.options.reject_nonces {
                command.env("PEBBLE_WFE_NONCEREJECT", "0");
            }
            self.pebble = Some(command.spawn().expect("starting pebble"));
            self.wait_for_port(self.listen_port, "pebble");
            self.wait_for_port(self.management_port, "pebble's management API");
        }
    }

    /// Stops pebble (the ACME server goes down); its DNS server keeps running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP to pebble: requests to the ACME server hang until [`Pebble::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.pebble {
            // SAFETY: kill has no memory preconditions; the pid is this test's own child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// PEM of the root that issues this run's certificates. Pebble makes a new one at every
    /// start, so fetch it again after `run`.
    pub fn issuing_root(&self) -> String {
        let pem = self.management_get("/roots/0");
        assert!(
            pem.contains("BEGIN CERTIFICATE"),
            "no root from pebble: {pem}"
        );
        pem
    }

    /// Orders pebble created, in every run so far (counted from its log).
    pub fn orders_created(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// Everything pebble and pebble-challtestsrv printed.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_file(&self) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening pebble's log")
    }

    fn wait_for_port(&mut self, port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = [&mut self.pebble, &mut self.challtestsrv]
                .into_iter()
                .flatten()
                .find_map(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "a process exited ({status}) while waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{what} does not listen on 127.0.0.1:{port}; log:\n{}",
                    self.log()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// A GET on pebble's management API over HTTPS, trusting the listener's CA.
    fn management_get(&self, path: &str) -> String {
        let ca = fs::read(&self.acme_root).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let socket = TcpStream::connect(("127.0.0.1", self.management_port))
            .expect("connecting to pebble's management API");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(connection, socket);
        write!(tls, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = Vec::new();
        if let Err(err) = tls.read_to_end(&mut response) {
            // Go servers may close without close_notify; what arrived is complete (HTTP/1.0).
            assert!(!response.is_empty(), "reading {path} from pebble: {err}");
        }
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    }

    /// Scratch directory of this pebble (configuration, certificates, log).
    pub fn dir(&self) -> &std::path::Path {
        &self.scratch.path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // A paused pebble dies of SIGKILL as well; resumed, it leaves no stopped zombie.
        self.resume();
        for child in [self.pebble.take(), self.challtestsrv.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Installs Debian's pebble package when it is missing (CI does it through
/// `cargo xtask setup --apt`).
fn ensure_installed() {
    let present = |bin: &str| {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
            .unwrap_or(false)
    };
    if present("pebble") && present("pebble-challtestsrv") {
        return;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "pebble"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()) && present("pebble"),
        "pebble is not installed and `apt-get install pebble` failed ({status:?}); \
         run `cargo xtask setup --apt` as root"
    );
}
