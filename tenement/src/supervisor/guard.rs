//! `tenement __guard PARENT DIR...`: makes sure no tenant outlives tenement.
//!
//! Each instance's first process dies with tenement (parent-death signal), and a namespaced
//! instance's whole PID namespace with it; but a `process` instance's own children (a
//! `sleep 1000 &` in its shell command) would not. The guard is a small process started at
//! boot, outside the instance cgroups and in its own session: when tenement ends for any
//! reason (`kill -9` included), the kernel signals the guard, which kills everything left in
//! tenement's instance cgroups, removes those cgroups (and the subtree) and exits. On a clean shutdown it
//! finds nothing to do.
//!
//! Terminal and service-manager signals (SIGINT, SIGTERM, SIGHUP) are ignored: a graceful
//! shutdown of tenement must not be cut short by the guard.

use std::{
    path::{Path, PathBuf},
    process::exit,
    time::{Duration, Instant},
};

use nix::sys::{
    prctl,
    signal::{signal, SigHandler, SigSet, Signal},
};

/// The parent-death signal the guard waits for.
pub const WAKE: Signal = Signal::SIGUSR1;

pub fn main(parent: i32, subtrees: &[PathBuf]) -> ! {
    for ignored in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(ignored, SigHandler::SigIgn) };
    }
    let mut wake = SigSet::empty();
    wake.add(WAKE);
    let _ = wake.thread_block();
    let _ = prctl::set_pdeathsig(WAKE);
    // tenement may have died before the parent-death signal was armed.
    if nix::unistd::getppid().as_raw() == parent {
        let _ = wake.wait();
    }
    sweep(subtrees);
    exit(0)
}

/// Kills every process in the instance groups below `subtrees` and removes the groups and
/// the subtrees.
fn sweep(subtrees: &[PathBuf]) {
    for subtree in subtrees {
        let Ok(entries) = std::fs::read_dir(subtree) else {
            continue;
        };
        for group in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            empty(&group);
            let _ = std::fs::remove_dir(&group);
        }
        // The next start creates it again; until then nothing stays behind.
        let _ = std::fs::remove_dir(subtree);
    }
}

fn empty(group: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        // A frozen instance: the v2 freezer lets SIGKILL through, the v1 freezer does not
        // (and SIGTERM-free kills are all the guard sends, so thawing first costs nothing).
        crate::supervisor::cgroup::thaw_any(group);
        if std::fs::write(group.join("cgroup.kill"), "1").is_err() {
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
