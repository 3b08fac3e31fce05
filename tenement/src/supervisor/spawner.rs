//! Forking children, and waiting for them without a thread each.
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

/// A child of tenement, waited for through a pidfd: readable once the child has exited.
pub struct Child {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Takes over waiting for `child` (its stdio must have been taken already).
    pub fn watch(child: std::process::Child) -> io::Result<Child> {
        let pid = child.id() as i32;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1. The child is
        // not reaped yet (only this type waits for it), so the pid cannot have been reused.
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
            status: None,
        })
    }

    /// The exit status, once. Cancel-safe: it can be polled again after a `select!`.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut ready = self.pidfd.readable().await?;
            if let Some(status) = self.try_reap()? {
                self.status = Some(status);
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
        if self.status.is_none() {
            // SAFETY: kill has no memory-safety preconditions; a negative pid names a group.
            unsafe { libc::kill(-self.pid, signal) };
        }
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
