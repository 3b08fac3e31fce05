//! tenement's side of its guard (see `guard.rs`): starting it, handing it the read ends of
//! the output pipes, telling it about a clean shutdown; and, at start, taking over the held
//! fds of the guard of an earlier tenement.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{cgroup::CgroupTree, fdpass, launch, spawner, spawner::Spawner};
use crate::{config::InstanceName, datadir, held::HeldFds, logs::Stream};

/// How long an earlier guard may take to answer (it notices tenement's end at once).
const OLD_GUARD_WAIT: Duration = Duration::from_secs(5);

pub struct GuardLink {
    control: Mutex<OwnedFd>,
    /// Where this guard listens once tenement is gone.
    socket: PathBuf,
}

impl GuardLink {
    /// Starts `tenement __guard`, in its own session so that a terminal's Ctrl-C reaches
    /// tenement's graceful shutdown first.
    pub async fn start(
        spawner: &Spawner,
        tree: &CgroupTree,
        data_dir: &Path,
        adopt_timeout: u64,
    ) -> Result<GuardLink> {
        use std::os::unix::process::CommandExt;
        let dir = datadir::adopt_dir(data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The pid alone could be that of a dead tenement whose guard still waits here; a
        // short suffix tells them apart (a unix socket path holds 107 bytes).
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_micros());
        let socket = dir.join(format!("{}-{suffix}.sock", std::process::id()));
        let (ours, theirs) = fdpass::pair().context("creating the guard's control socket")?;
        let mut command = std::process::Command::new(launch::helper_binary());
        command
            .arg0("tenement-guard")
            .arg("__guard")
            .arg(std::process::id().to_string())
            .arg("--adopt-timeout")
            .arg(adopt_timeout.to_string())
            .arg("--socket")
            .arg(&socket)
            .arg("--lock")
            .arg(data_dir.join(crate::store::LOCK_FILE))
            .args(tree.dirs())
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawner
            .spawn(command)
            .await
            .context("starting tenement's guard process")?;
        let mut child = spawner::Child::watch(child)?;
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                tracing::warn!(
                    "tenement's guard process ended ({}): a crash of tenement now stops its \
                     tenants' output, and nothing stops them if no tenement comes back",
                    spawner::describe_exit(status)
                );
            }
        });
        Ok(GuardLink {
            control: Mutex::new(ours),
            socket,
        })
    }

    fn lock(&self) -> MutexGuard<'_, OwnedFd> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guard keeps a copy of `fd` (an output pipe's read end) under `name`.
    pub fn hold(&self, name: &str, fd: BorrowedFd) {
        let control = self.lock();
        if let Err(err) = fdpass::send(control.as_fd(), &format!("hold {name}"), Some(fd)) {
            tracing::warn!("handing {name} to tenement's guard: {err}");
        }
    }

    /// The guard closes its copy of `name`.
    pub fn release(&self, name: &str) {
        let control = self.lock();
        let _ = fdpass::send(control.as_fd(), &format!("release {name}"), None);
    }

    /// A clean shutdown: every instance is stopped, the guard has nothing to keep.
    pub fn bye(&self) {
        let control = self.lock();
        let _ = fdpass::send(control.as_fd(), "bye", None);
    }

    /// Takes over what the guards of earlier tenements hold (there is one per tenement that
    /// died without a clean shutdown and is still waiting): each fd goes to this tenement's
    /// guard first, then into `held`, then the old guard is told `ok` and exits. Sockets
    /// nobody listens on any more are removed.
    pub fn take_over(&self, data_dir: &Path, held: &HeldFds) {
        let Ok(entries) = std::fs::read_dir(datadir::adopt_dir(data_dir)) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path == self.socket || path.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            let connection = match fdpass::connect(&path) {
                Ok(connection) => connection,
                Err(_) => {
                    // Its guard is gone (it handed over, stopped everything, or was killed).
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            match self.receive(&connection, held) {
                Ok(count) => tracing::info!(
                    "took over {count} output pipes held by the guard at {}",
                    path.display()
                ),
                Err(err) => tracing::warn!(
                    "taking over what the guard at {} holds: {err}",
                    path.display()
                ),
            }
        }
    }

    fn receive(&self, connection: &OwnedFd, held: &HeldFds) -> Result<usize> {
        if !fdpass::readable(connection.as_fd(), OLD_GUARD_WAIT) {
            anyhow::bail!("no answer within {}s", OLD_GUARD_WAIT.as_secs());
        }
        let received = HeldFds::new();
        let count = received.receive(connection.as_fd())?;
        // This tenement's guard holds them before the earlier one lets go of its copies.
        for name in received.names() {
            if let Some(fd) = received.take(&name) {
                self.hold(&name, fd.as_fd());
                held.insert(&name, fd)?;
            }
        }
        fdpass::send(connection.as_fd(), "ok", None)?;
        Ok(count)
    }
}

/// The name under which the read end of `instance`'s stdout or stderr pipe is held
/// (`log:web:a:stdout`).
pub fn log_name(instance: &InstanceName, stream: Stream) -> String {
    format!("log:{}:{}:{stream}", instance.service, instance.id)
}
