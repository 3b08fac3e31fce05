//! Forking children, and waiting for them (or for adopted processes) without a thread each.
//!
//! Every child is forked by one dedicated thread that lives as long as tenement. The
//! parent-death signal (`PR_SET_PDEATHSIG`) fires when the *thread* that forked the child
//! ends, not the process; tokio's blocking pool retires idle threads, which would kill
//! tenants at random.

use std::{
    io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    process::{Command, ExitStatus},
    sync::{mpsc, Mutex},
};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, sync::oneshot};

type Job = Box<dyn FnOnce() + Send>;

pub struct Spawner {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    pub fn start() -> Result<Spawner> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tenement-spawner".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })
            .context("starting the spawner thread")?;
        Ok(Spawner {
            jobs: Mutex::new(jobs),
        })
    }

    /// Runs `command.spawn()` on the spawner thread.
    pub async fn spawn(&self, mut command: Command) -> io::Result<std::process::Child> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(command.spawn());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| io::Error::other("the spawner thread has stopped"))?;
        result
            .await
            .map_err(|_| io::Error::other("the spawner thread has stopped"))?
    }
}

/// An instance's first process, waited for through a pidfd (readable once it has exited):
/// a child tenement forked, or a process an earlier tenement forked and this one adopted.
/// An adopted process is not our child: its exit is seen, its exit status is not.
pub struct Child {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    own: bool,
    /// `Some` once it has exited: its status, `None` inside when unknown (adopted).
    exit: Option<Option<ExitStatus>>,
}

impl Child {
    /// Takes over waiting for `child` (its stdio must have been taken already).
    pub fn watch(child: std::process::Child) -> io::Result<Child> {
        // The child is not reaped yet (only this type waits for it), so its pid cannot
        // have been reused.
        Child::open(child.id() as i32, true)
    }

    /// Watches `pid`, a process an earlier tenement started, if it is still the process
    /// that started at `start_ticks` (see [`start_ticks`]): checked after the pidfd is
    /// open, so a pid reused meanwhile is never taken for it.
    pub fn adopt(pid: u32, start_ticks: u64) -> io::Result<Child> {
        let child = Child::open(pid as i32, false)?;
        if start_ticks == 0 || self::start_ticks(pid) != Some(start_ticks) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {pid} is not the one tenement started"),
            ));
        }
        Ok(child)
    }

    fn open(pid: i32, own: bool) -> io::Result<Child> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the fd is valid and owned by the AsyncFd for its whole life.
        let pidfd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Child {
            pid,
            pidfd,
            own,
            exit: None,
        })
    }

    /// Once it has exited: its exit status (`None` for an adopted process, whose status
    /// only its parent could read). Cancel-safe: it can be polled again after a `select!`.
    pub async fn wait(&mut self) -> io::Result<Option<ExitStatus>> {
        loop {
            if let Some(exit) = self.exit {
                return Ok(exit);
            }
            let mut ready = self.pidfd.readable().await?;
            if !self.own {
                // Readable: the process has exited.
                self.exit = Some(None);
            } else if let Some(status) = self.try_reap()? {
                self.exit = Some(Some(status));
            } else {
                ready.clear_ready();
            }
        }
    }

    fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        let mut raw = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let reaped = unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
        match reaped {
            0 => Ok(None),
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(Some(ExitStatus::from_raw(raw))),
        }
    }

    /// Sends `signal` to the child's process group (it leads its own session and group).
    pub fn signal_group(&self, signal: i32) {
        if self.exit.is_none() {
            // SAFETY: kill has no memory-safety preconditions; a negative pid names a group.
            unsafe { libc::kill(-self.pid, signal) };
        }
    }
}

/// Field 22 of `/proc/PID/stat`: when `pid` started, in clock ticks after boot; `None`
/// when there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// "exit code 3", "killed by SIGKILL", or for an adopted process "exited (exit status
/// unknown: ...)".
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => describe(status),
        None => "exited while adopted (its exit status is unknown: an earlier tenement \
                 started it)"
            .to_string(),
    }
}

/// "exit code 3", "killed by SIGKILL".
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {signal}"));
            format!("killed by {name}")
        }
        None => format!("{status}"),
    }
}
