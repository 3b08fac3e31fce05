//! `tenement __init SPEC -- PROGRAM ARGS...`: the first program of a namespaced instance.
//!
//! tenement starts it (already in the instance's cgroups, in its own session, with a
//! parent-death signal) as root. It creates new PID, mount, IPC and UTS namespaces and forks
//! the namespace's PID 1, which makes the file system private (own /proc, empty /tmp, other
//! tenants' data hidden), drops to the tenant's user and forks the app as PID 2. PID 1 then
//! only reaps zombies and forwards signals; when the app exits, PID 1 exits with its status
//! and the kernel kills whatever is left in the namespace.
//!
//! The outer process (the one tenement started) stays in the host's PID namespace, forwards
//! signals to PID 1 and exits with its status, so tenement sees one child as with any other
//! isolation level.
//!
//! This runs single-threaded, before any runtime is started, so forking is safe.

use std::{
    ffi::CString,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    process::exit,
};

use nix::{
    mount::{mount, MsFlags},
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sched::{unshare, CloneFlags},
    sys::{
        prctl,
        signal::{kill, SigSet, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{fork, pipe, setgroups, setsid, ForkResult, Gid, Pid, Uid},
};
use serde::{Deserialize, Serialize};

use super::{identity::RunAs, privacy::Cover};

/// What the init sets up; passed as one JSON argument.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitSpec {
    pub hostname: String,
    pub covers: Vec<Cover>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub workdir: PathBuf,
}

impl InitSpec {
    pub fn new(hostname: String, covers: Vec<Cover>, run_as: &RunAs, workdir: PathBuf) -> Self {
        InitSpec {
            hostname,
            covers,
            uid: run_as.uid,
            gid: run_as.gid,
            groups: run_as.groups.clone(),
            workdir,
        }
    }
}

/// Exit status when the init itself fails before the app runs (as a shell's "cannot
/// execute").
const SETUP_FAILED: i32 = 126;

/// Signals passed on to the app.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Entry point of `tenement __init`. Never returns.
pub fn main(spec_json: &str, argv: &[String]) -> ! {
    // Run through /proc/self/exe, the kernel names this process `exe`: `ps -e`, `top` and
    // `pgrep` would show that instead of what it is.
    let _ = prctl::set_name(c"tenement-init");
    let spec: InitSpec = match serde_json::from_str(spec_json) {
        Ok(spec) => spec,
        Err(err) => fail(&format!("bad init spec: {err}")),
    };
    if argv.is_empty() {
        fail("no program to run");
    }
    let mut handled = SigSet::empty();
    for signal in FORWARDED {
        handled.add(signal);
    }
    handled.add(Signal::SIGCHLD);
    if let Err(err) = handled.thread_block() {
        fail(&format!("blocking signals: {err}"));
    }
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if let Err(err) = unshare(flags) {
        fail(&format!("creating namespaces: {err}"));
    }
    // Lets PID 1 notice if this process died before PID 1 armed its parent-death signal.
    let (alive_read, alive_write) = match pipe() {
        Ok(ends) => ends,
        Err(err) => fail(&format!("creating a pipe: {err}")),
    };
    // SAFETY: single-threaded; the child only calls async-signal-safe code before exec or exit.
    match unsafe { fork() } {
        Err(err) => fail(&format!("forking the namespace's init: {err}")),
        Ok(ForkResult::Child) => {
            drop(alive_write);
            namespace_init(&spec, argv, &handled, alive_read)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_read);
            outer(child, &handled, alive_write)
        }
    }
}

/// The process tenement started: forwards signals to PID 1, exits with its status.
fn outer(init: Pid, handled: &SigSet, _alive: OwnedFd) -> ! {
    loop {
        match handled.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => exit(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => exit(128 + signal as i32),
                _ => {}
            },
            Ok(signal) => {
                let _ = kill(init, signal);
            }
            Err(_) => {}
        }
    }
}

/// PID 1 of the new namespace.
fn namespace_init(spec: &InitSpec, argv: &[String], handled: &SigSet, alive: OwnedFd) -> ! {
    if prctl::set_pdeathsig(Signal::SIGKILL).is_err() || parent_gone(&alive) {
        exit(SETUP_FAILED);
    }
    drop(alive);
    // Its own session: tenement's signals to the outer process's group arrive once, through
    // the outer process, not a second time directly.
    let _ = setsid();
    if let Err(err) = private_file_system(&spec.covers) {
        fail(&err);
    }
    if let Err(err) = nix::unistd::sethostname(&spec.hostname) {
        fail(&format!("setting the hostname: {err}"));
    }
    // SAFETY: single-threaded; see `main`.
    let app = match unsafe { fork() } {
        Err(err) => fail(&format!("forking the app: {err}")),
        Ok(ForkResult::Child) => exec_app(spec, argv),
        Ok(ForkResult::Parent { child }) => child,
    };
    loop {
        match handled.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == app => exit(code),
                    Ok(WaitStatus::Signaled(pid, signal, _)) if pid == app => {
                        exit(128 + signal as i32)
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            // -1: every process of the namespace except PID 1 itself.
            Ok(signal) => {
                let _ = kill(Pid::from_raw(-1), signal);
            }
            Err(_) => {}
        }
    }
}

fn parent_gone(alive: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(alive.as_fd(), PollFlags::POLLIN)];
    // The write end is held by the outer process only: readable (EOF) means it is gone.
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// The app, PID 2: the tenant's credentials, its working directory, its program.
fn exec_app(spec: &InitSpec, argv: &[String]) -> ! {
    let _ = SigSet::empty().thread_set_mask();
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let dropped = setgroups(&groups)
        .and_then(|()| nix::unistd::setgid(Gid::from_raw(spec.gid)))
        .and_then(|()| nix::unistd::setuid(Uid::from_raw(spec.uid)));
    if let Err(err) = dropped {
        fail(&format!("switching to uid {}: {err}", spec.uid));
    }
    if let Err(err) = nix::unistd::chdir(&spec.workdir) {
        fail(&format!(
            "entering the working directory {} as uid {}: {err}",
            spec.workdir.display(),
            spec.uid
        ));
    }
    if std::env::var_os("LISTEN_FDS").is_some() {
        // Socket activation: the held socket is fd 3, and LISTEN_PID names the app itself
        // (its pid in the namespace), known only now.
        // SAFETY: the init is single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::set_var("LISTEN_PID", std::process::id().to_string()) };
    }
    let args: Vec<CString> = match argv.iter().map(|a| CString::new(a.as_str())).collect() {
        Ok(args) => args,
        Err(_) => fail("an argument contains a NUL byte"),
    };
    let err = nix::unistd::execv(&args[0], &args).unwrap_err();
    fail(&format!(
        "cannot execute {} as uid {}: {err}",
        argv[0], spec.uid
    ))
}

/// Runs in the new mount namespace, as root, before the app exists.
fn private_file_system(covers: &[Cover]) -> Result<(), String> {
    let none: Option<&str> = None;
    // Nothing done here may leak back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making mounts private: {e}"))?;
    // A proc of the new PID namespace: the app sees its own processes only.
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("mounting /proc: {e}"))?;
    for cover in covers {
        apply_cover(cover)?;
    }
    Ok(())
}

fn apply_cover(cover: &Cover) -> Result<(), String> {
    let none: Option<&str> = None;
    // Opened before the tmpfs hides them, bound back from the open handles.
    let kept: Vec<(PathBuf, OwnedFd)> = cover
        .keep
        .iter()
        .map(|path| {
            nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map(|fd| (path.clone(), fd))
            .map_err(|e| format!("opening {}: {e}", path.display()))
        })
        .collect::<Result<_, _>>()?;
    let mode = if cover.writable {
        "mode=1777"
    } else {
        "mode=0755"
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), &cover.dir, Some("tmpfs"), flags, Some(mode))
        .map_err(|e| format!("covering {}: {e}", cover.dir.display()))?;
    for (path, fd) in &kept {
        create_dirs(path)?;
        let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
        mount(
            Some(source.as_str()),
            path,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(|e| format!("binding {} back: {e}", path.display()))?;
    }
    if !cover.writable {
        mount(
            none,
            &cover.dir,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
            Some(mode),
        )
        .map_err(|e| format!("making {} read-only: {e}", cover.dir.display()))?;
    }
    Ok(())
}

fn create_dirs(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))
}

fn fail(message: &str) -> ! {
    eprintln!("tenement init: {message}");
    exit(SETUP_FAILED)
}
