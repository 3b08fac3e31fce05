//! Shared helpers for the end-to-end tests: the real binary, privilege checks, scratch
//! directories outside /root (tenants run under their own uid and must be able to read them),
//! free ports on 127.0.0.1.

pub mod bind;
pub mod cgroup;
pub mod daemon;
pub mod etcd;
pub mod http;
pub mod logs;
pub mod pebble;
pub mod raw_app;
pub mod tls;
pub mod webdriver;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
};

/// True when the test may use root-only features. Without root, the test is skipped with a
/// message, unless `TENEMENT_REQUIRE_PRIVILEGED` is set (as in CI), where it fails instead.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("TENEMENT_REQUIRE_PRIVILEGED").is_some() {
        panic!("{test} needs root, and TENEMENT_REQUIRE_PRIVILEGED is set");
    }
    eprintln!(
        "SKIPPED {test}: needs root (set TENEMENT_REQUIRE_PRIVILEGED=1 to make this an error)"
    );
    false
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `tenement` binary, built once per test run if needed.
pub fn tenement_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("TENEMENT_BIN") {
            return PathBuf::from(path);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--package", "tenement", "--bin", "tenement"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building tenement failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug/tenement")
    })
    .clone()
}

/// A scratch directory under /tmp, world-readable, removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let unique = format!(
            "tenement-test-{label}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { path }
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for a server a test is about to start.
///
/// Not from the kernel's ephemeral range (what binding port 0 gives): outgoing connections
/// of every test running in parallel take their local ports from there, and one may grab the
/// port before the server binds it. Single ports come from 15000-22499 and blocks (for a
/// daemon's instances, [`free_port_block`]) from 22500-29999, below instances' default
/// `port_range`; never the same twice in a process, starting at an offset of the pid so that
/// test binaries run one after another do not retrace each other's steps.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    take_port(&NEXT, 15_000, 7_500, 1)
}

/// The first of `len` consecutive ports (at most 250) that no other caller in this process
/// gets, the first of them free a moment ago: a `port_range` for a test daemon's instances
/// (which still check each port before using it).
pub fn free_port_block(len: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    assert!(len <= 250, "blocks are 250 ports at most");
    take_port(&NEXT, 22_500, 7_500, 250)
}

fn take_port(next: &AtomicU32, low: u32, span: u32, step: u32) -> u16 {
    let _ = next.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % (span / step),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span / step {
        let port = (low + next.fetch_add(1, Ordering::Relaxed) % (span / step) * step) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port on 127.0.0.1 between {low} and {}",
        low + span - 1
    )
}

/// SIGTERM to `child` (as systemd stops a daemon), then up to `patience` for it to exit: its
/// status, or `None` if it is still running (the caller decides what that means).
pub fn terminate(
    child: &mut std::process::Child,
    patience: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    // SAFETY: kill has no memory-safety preconditions; the pid is the caller's own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// [`terminate`], then SIGKILL if it did not exit in time: for cleanup that must not hang.
pub fn terminate_or_kill(child: &mut std::process::Child, patience: std::time::Duration) {
    if terminate(child, patience).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
