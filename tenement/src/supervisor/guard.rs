//! `tenement __guard PARENT --adopt-timeout S --socket PATH SUBTREE...`: keeps the tenants of
//! a tenement that died for the next one, and stops them if none comes.
//!
//! Tenants outlive tenement: a crash, a `kill -9` or an upgrade leaves them running in their
//! cgroups. The guard is a small process started by tenement, in its own session and outside
//! the instance cgroups. Its stdin is a seqpacket socket to tenement, over which tenement
//! hands it a copy of the read end of every instance's stdout and stderr pipe (`hold NAME`
//! with the fd, `release NAME`). While tenement is away the guard holds those ends open,
//! without reading: a tenant never gets SIGPIPE, and what it writes waits in the pipe (once
//! the pipe buffer is full, its writes block) until the next tenement reads it.
//!
//! When tenement ends (its end of the socket closes):
//! - after `bye` (a clean shutdown, which stopped every instance itself): the guard exits;
//! - without `bye` (a crash, `kill -9`) and with no instance group holding a process: it
//!   removes the (empty) instance groups and the subtrees, unless a new tenement already
//!   serves the data directory (it holds the data directory's lock, `--lock`, and may have
//!   made groups of its own there), and exits: a tenement killed while nothing ran leaves
//!   no empty cgroup behind;
//! - otherwise, while instance cgroups still hold processes, it waits up to `adopt_timeout`
//!   seconds for a new tenement to connect to `--socket`, hands it every held fd with its
//!   name (`HeldFds::send`), and exits once the new tenement answers `ok`;
//! - if none comes in time, it stops the orphans (SIGTERM, up to `STOP_GRACE`, then
//!   SIGKILL), removes their cgroups and the subtrees, and exits: nothing runs unsupervised
//!   for longer than `adopt_timeout`.
//!
//! Terminal and service-manager signals (SIGINT, SIGTERM, SIGHUP) are ignored: a graceful
//! shutdown of tenement must not be cut short by the guard.

use std::{
    os::fd::{AsFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::exit,
    time::{Duration, Instant},
};

use nix::sys::signal::{signal, SigHandler, Signal};

use super::fdpass;
use crate::held::HeldFds;

/// How long the orphans get between SIGTERM and SIGKILL when no tenement came back.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a connected tenement may take to confirm a handover.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

pub fn main(
    parent: i32,
    adopt_timeout: u64,
    socket: &Path,
    lock: Option<&Path>,
    subtrees: &[PathBuf],
) -> ! {
    // As for `tenement-init`: not `exe` in `ps -e`, `top` and `pgrep`.
    let _ = nix::sys::prctl::set_name(c"tenement-guard");
    for ignored in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(ignored, SigHandler::SigIgn) };
    }
    // SAFETY: tenement starts the guard with the control socket as its stdin, which nothing
    // else in this process owns.
    let control = unsafe { OwnedFd::from_raw_fd(0) };
    // Bound now, while tenement lives: a new tenement that connects early waits in the
    // backlog instead of finding no socket.
    let listener = match fdpass::listen(socket) {
        Ok(listener) => Some(listener),
        Err(err) => {
            say(&format!(
                "cannot listen on {}: {err}; no later tenement can adopt the instances of \
                 tenement {parent}",
                socket.display()
            ));
            None
        }
    };
    let held = HeldFds::new();
    let mut clean = false;
    while let Ok(Some((text, fd))) = fdpass::recv(control.as_fd()) {
        match (text.split_once(' '), fd) {
            (Some(("hold", name)), Some(fd)) => {
                let _ = held.insert(name, fd);
            }
            (Some(("release", name)), _) => {
                held.remove(name);
            }
            _ if text == "bye" => clean = true,
            _ => {}
        }
    }
    drop(control);
    if clean {
        finish(socket, 0);
    }
    if !occupied(subtrees) {
        // Nothing to keep for a next tenement: only empty cgroups are left.
        wait_until_gone(parent);
        if let Some(_free) = lock.and_then(unlocked) {
            stop_all(subtrees);
        }
        finish(socket, 0);
    }
    if let Some(listener) = &listener {
        say(&format!(
            "tenement {parent} ended without stopping its instances: waiting up to \
             adopt_timeout ({adopt_timeout}s) for a new tenement to adopt them"
        ));
        let deadline = Instant::now() + Duration::from_secs(adopt_timeout);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !fdpass::readable(listener.as_fd(), left) {
                break;
            }
            let Ok(connection) = fdpass::accept(listener.as_fd()) else {
                continue;
            };
            if hand_over(&connection, &held) {
                finish(socket, 0);
            }
        }
    }
    say(&format!(
        "no tenement adopted the instances of tenement {parent} within adopt_timeout \
         ({adopt_timeout}s): stopping them"
    ));
    drop(held);
    stop_all(subtrees);
    finish(socket, 0)
}

/// Waits (up to 10 s) until tenement `pid` has exited (gone, or a zombie: its files are
/// closed, its lock released).
fn wait_until_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next().map(str::to_string)
            });
        match state.as_deref() {
            None | Some("Z") | Some("X") => return,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The data directory's lock, taken when no tenement holds it (a missing file: none can);
/// `None` when a tenement serves the directory. The dying tenement closes its files one
/// after another: the control socket may close (waking the guard) before the lock file
/// does, so a held lock is tried again for a moment before it counts as a new tenement's.
fn unlocked(path: &Path) -> Option<Option<nix::fcntl::Flock<std::fs::File>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Some(None),
            Err(_) => return None,
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => return None,
        }
    }
}

fn say(text: &str) {
    eprintln!("tenement-guard: {text}");
}

fn finish(socket: &Path, code: i32) -> ! {
    let _ = std::fs::remove_file(socket);
    exit(code)
}

/// Sends every held fd to a new tenement; true once it confirmed (it holds them, and has
/// handed them to its own guard).
fn hand_over(connection: &OwnedFd, held: &HeldFds) -> bool {
    if held.send(connection.as_fd()).is_err() {
        return false;
    }
    fdpass::readable(connection.as_fd(), HANDOVER_WAIT)
        && matches!(fdpass::recv(connection.as_fd()), Ok(Some((text, _))) if text == "ok")
}

/// Instance groups under `subtrees`.
fn groups(subtrees: &[PathBuf]) -> Vec<PathBuf> {
    subtrees
        .iter()
        .filter_map(|subtree| std::fs::read_dir(subtree).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect()
}

fn pids(group: &Path) -> Vec<i32> {
    std::fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn occupied(subtrees: &[PathBuf]) -> bool {
    groups(subtrees).iter().any(|g| !pids(g).is_empty())
}

/// SIGTERM to every process of every instance group, up to `STOP_GRACE` for them to exit,
/// then SIGKILL to what is left; removes the groups and the subtrees.
fn stop_all(subtrees: &[PathBuf]) {
    let groups = groups(subtrees);
    for group in &groups {
        for pid in pids(group) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && groups.iter().any(|g| !pids(g).is_empty()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for group in &groups {
        empty(group);
        let _ = std::fs::remove_dir(group);
    }
    for subtree in subtrees {
        // The next start creates it again; until then nothing stays behind.
        let _ = std::fs::remove_dir(subtree);
    }
}

fn empty(group: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pids = pids(group);
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
