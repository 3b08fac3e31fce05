//! Debian's bind9 `named`, really started for a test: the primary of one zone on
//! 127.0.0.1, taking RFC 2136 updates signed with a TSIG key made by `tsig-keygen`. `dig`
//! reads what it serves. Killed by PID when dropped.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::{free_port, Scratch};

pub const KEY_NAME: &str = "tenement-acme";

pub struct Named {
    pub address: SocketAddr,
    pub zone: String,
    /// The `key "tenement-acme" { ... };` block tsig-keygen printed (what named includes).
    pub key_file: PathBuf,
    /// The key's base64 secret alone.
    pub secret: String,
    child: Option<Child>,
    log: PathBuf,
    scratch: Scratch,
}

impl Named {
    /// Starts named as the primary of `zone`; returns once it answers for the zone.
    pub fn start(zone: &str) -> Named {
        ensure_installed();
        let scratch = Scratch::new("named");
        let dir = scratch.path.display().to_string();
        let keygen = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", KEY_NAME])
            .output()
            .expect("running tsig-keygen");
        assert!(keygen.status.success(), "tsig-keygen failed: {keygen:?}");
        let key_block = String::from_utf8(keygen.stdout).unwrap();
        let secret = key_block
            .split_once("secret")
            .and_then(|(_, rest)| rest.split('"').nth(1))
            .expect("a secret in tsig-keygen's output")
            .to_string();
        let key_file = scratch.write("tenement-acme.key", &key_block);
        scratch.write(
            &format!("{zone}.zone"),
            &format!(
                "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n\
                 @ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        );
        let port = free_port();
        // `controls {}`: no rndc channel on port 953, which parallel tests would share.
        let config = scratch.write(
            "named.conf",
            &format!(
                r#"options {{
    directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    dnssec-validation no;
}};
controls {{ }};
include "{key}";
zone "{zone}" {{
    type master;
    file "{dir}/{zone}.zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#,
                key = key_file.display()
            ),
        );
        let log = scratch.join("named.log");
        let child = Command::new("named")
            .arg("-c")
            .arg(&config)
            .args(["-g", "-u", "root"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting named");
        let mut named = Named {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            zone: zone.to_string(),
            key_file,
            secret,
            child: Some(child),
            log,
            scratch,
        };
        named.wait_until_serving();
        named
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.dig(&["SOA", &self.zone.clone()]).contains("ns.") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("named exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "named does not serve {}; log:\n{}",
                self.zone,
                self.log()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// `dig +short +norec @named ARGS`: what a resolver asking it would see.
    pub fn dig(&self, args: &[&str]) -> String {
        dig(self.address, args)
    }

    /// The TXT values at `name` (quotes removed), as named serves them now.
    pub fn txt(&self, name: &str) -> Vec<String> {
        self.dig(&["TXT", name])
            .lines()
            .map(|line| line.trim_matches('"').to_string())
            .filter(|line| !line.is_empty())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A file with these contents, next to named's own (for a wrong secret).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        self.scratch.write(name, contents)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `dig +short +norec -p PORT @IP ARGS` with short timeouts; its standard output.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("dig")
        .args(["+short", "+norec", "+time=2", "+tries=1"])
        .arg(format!("-p{}", server.port()))
        .arg(format!("@{}", server.ip()))
        .args(args)
        .output()
        .expect("running dig (package bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Installs Debian's bind9 packages when missing (CI does it through
/// `cargo xtask setup --apt`).
fn ensure_installed() {
    let present = |bin: &str| {
        ["/usr/sbin", "/usr/bin"]
            .iter()
            .any(|dir| std::path::Path::new(dir).join(bin).is_file())
    };
    if present("named") && present("tsig-keygen") && present("dig") {
        return;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(["bind9", "bind9-utils", "bind9-dnsutils"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()) && present("named"),
        "bind9 is not installed and `apt-get install bind9` failed ({status:?}); \
         run `cargo xtask setup --apt` as root"
    );
}

/// `dig +norec -p PORT @IP ARGS` with its whole output (header flags and `status:`).
pub fn dig_full(server: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("dig")
        .args(["+norec", "+time=2", "+tries=1"])
        .arg(format!("-p{}", server.port()))
        .arg(format!("@{}", server.ip()))
        .args(args)
        .output()
        .expect("running dig (package bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
