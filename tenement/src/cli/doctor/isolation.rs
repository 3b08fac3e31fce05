//! What `isolation = "namespace"` and `isolation = "sandbox"` need: namespaces tenement can
//! create, and gVisor's `runsc`.

use std::{path::Path, process::Command};

use nix::{
    errno::Errno,
    sched::{unshare, CloneFlags},
    sys::wait::{waitpid, WaitStatus},
    unistd::{fork, ForkResult},
};

use super::{Check, Needs};
use crate::{
    config::Settings,
    supervisor::{find_runsc, DEFAULT_PATH},
};

const NAMESPACES: [(&str, CloneFlags); 5] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mount", CloneFlags::CLONE_NEWNS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// Unshares each namespace type in a child process. Without root, each together with a
/// user namespace, the only way an unprivileged process gets the others.
pub fn namespaces(needs: &Needs) -> Check {
    let root = nix::unistd::geteuid().is_root();
    let mut failures = Vec::new();
    for (name, flag) in NAMESPACES {
        let flags = if root {
            flag
        } else {
            flag | CloneFlags::CLONE_NEWUSER
        };
        if let Err(err) = try_unshare(flags) {
            failures.push(format!("{name} ({err})"));
        }
    }
    let all = NAMESPACES.map(|(name, _)| name).join(", ");
    if failures.is_empty() {
        let how = if root {
            ""
        } else {
            " (inside a user namespace)"
        };
        return Check::ok("namespaces", format!("{all} can be created{how}"));
    }
    let fix = if root {
        "the kernel lacks them: use one built with CONFIG_USER_NS, CONFIG_PID_NS, CONFIG_IPC_NS, \
         CONFIG_UTS_NS; check sysctl user.max_user_namespaces > 0"
    } else {
        "run tenement as root, or allow unprivileged user namespaces \
         (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)"
    };
    Check::missing(
        needs.namespaces,
        "namespaces",
        format!(
            "cannot create {}; isolation = \"namespace\" is unavailable",
            failures.join(", ")
        ),
        fix,
    )
}

/// unshare(2) in a forked child, so this process keeps its own namespaces (and an unshared
/// user namespace does not require this process to be single-threaded).
fn try_unshare(flag: CloneFlags) -> Result<(), Errno> {
    // SAFETY: the child only calls unshare(2) and _exit(2), both async-signal-safe.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = match unshare(flag) {
                Ok(()) => 0,
                Err(errno) => errno as i32,
            };
            // SAFETY: _exit ends the child without running the parent's exit handlers or
            // flushing its copied stdio buffers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, 0) => Ok(()),
            WaitStatus::Exited(_, code) => Err(Errno::from_raw(code)),
            _ => Err(Errno::ECHILD),
        },
    }
}

/// `runsc` where a start looks for it (not the caller's PATH: the daemon's may differ) and
/// its version, and the configured platform's prerequisites.
pub fn runsc(settings: &Settings, needs: &Needs) -> Vec<Check> {
    let Ok(path) = find_runsc() else {
        return vec![Check::missing(
            needs.sandbox,
            "runsc",
            format!(
                "gVisor's runsc is not in {DEFAULT_PATH}, where starts look for it; \
                 isolation = \"sandbox\" is unavailable"
            ),
            "apt-get install runsc",
        )];
    };
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string)
        });
    let mut checks = vec![match version {
        Some(version) => Check::ok("runsc", format!("{} ({version})", path.display())),
        None => Check::missing(
            needs.sandbox,
            "runsc",
            format!("{} does not run (`runsc --version` failed)", path.display()),
            "reinstall it: apt-get install --reinstall runsc",
        ),
    }];
    if settings.sandbox_platform == "kvm" && !Path::new("/dev/kvm").exists() {
        checks.push(Check::missing(
            needs.sandbox,
            "runsc platform",
            "sandbox_platform = \"kvm\" but /dev/kvm does not exist",
            "set sandbox_platform = \"ptrace\", or enable KVM on this machine",
        ));
    }
    checks
}
