//! Binary upgrade without a refused connection: `SIGUSR2` starts the new binary and hands
//! it every held descriptor (`HeldFds`: the public listeners, the API's TCP listeners, the
//! held sockets of `socket_activation` instances) over a `SOCK_SEQPACKET` socket pair with
//! `SCM_RIGHTS`, by name.
//!
//! The steps, old (O) and new (N):
//! 1. O forks N with its own command line and `TENEMENT_HANDOVER_FD` naming N's end.
//! 2. O sends the descriptors; N reads its configuration, receives them and answers
//!    `received`. Until then, anything going wrong (a missing binary, a bad configuration,
//!    a crash) rolls back: O kills N and goes on serving as before.
//! 3. O stops accepting (the sockets stay open in N: new connections wait in the kernel's
//!    accept queues), finishes its in-flight requests, stops (today) its instances and
//!    exits; N sees its end of the pair close.
//! 4. N takes the data directory, starts, and serves on the sockets it received, binding
//!    nothing it was handed.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
};

use crate::held::{HeldError, HeldFds};

/// The variable naming the new process's end of the hand-over socket.
pub const HANDOVER_ENV: &str = "TENEMENT_HANDOVER_FD";

/// How long the new binary has to read its configuration and take the descriptors.
const TAKE_OVER_WITHIN: Duration = Duration::from_secs(30);

const RECEIVED: &[u8] = b"received";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("starting the new binary {binary}: {err}")]
    Spawn {
        binary: PathBuf,
        err: std::io::Error,
    },
    #[error("handing the held sockets to the new binary: {0}")]
    Send(#[from] HeldError),
    #[error(
        "the new binary (pid {pid}) did not take over within {secs}s ({why}); it was \
         stopped and this tenement goes on serving",
        secs = TAKE_OVER_WITHIN.as_secs()
    )]
    NotTaken { pid: u32, why: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The old side after a successful hand-over: dropping it tells the new one to go on.
pub struct Handover {
    pub pid: u32,
    pub binary: PathBuf,
    pub count: usize,
    _socket: OwnedFd,
}

/// Starts `binary` with this process's arguments and hands it everything in `held`.
/// Blocking: run it off the async runtime.
pub fn hand_over(binary: &Path, held: &HeldFds) -> Result<Handover, UpgradeError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new(binary);
    command
        .args(std::env::args_os().skip(1))
        .env(HANDOVER_ENV, their_fd.to_string())
        .stdin(Stdio::null());
    // SAFETY: fcntl on an fd number known before the fork: async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|err| UpgradeError::Spawn {
        binary: binary.to_path_buf(),
        err,
    })?;
    drop(theirs);
    let pid = child.id();
    let outcome = held
        .send(ours.as_fd())
        .map_err(|err| err.to_string())
        .and_then(|count| wait_received(&ours).map(|()| count));
    match outcome {
        Ok(count) => Ok(Handover {
            pid,
            binary: binary.to_path_buf(),
            count,
            _socket: ours,
        }),
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(UpgradeError::NotTaken { pid, why })
        }
    }
}

fn wait_received(socket: &OwnedFd) -> Result<(), String> {
    let timeout = nix::sys::time::TimeVal::new(TAKE_OVER_WITHIN.as_secs() as _, 0);
    setsockopt(socket, sockopt::ReceiveTimeout, &timeout).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg =
        recvmsg::<()>(socket.as_raw_fd(), &mut iov, None, MsgFlags::empty()).map_err(|err| {
            match err {
                nix::errno::Errno::EAGAIN => "no answer".to_string(),
                err => err.to_string(),
            }
        })?;
    let bytes = msg.bytes;
    if &buf[..bytes] == RECEIVED {
        Ok(())
    } else if bytes == 0 {
        Err("it exited first; its log says why".to_string())
    } else {
        Err(format!(
            "it answered {:?}",
            String::from_utf8_lossy(&buf[..bytes])
        ))
    }
}

/// The new side: the hand-over socket named by `TENEMENT_HANDOVER_FD`, if this process was
/// started by an upgrade.
pub struct Incoming {
    socket: OwnedFd,
}

impl Incoming {
    /// Takes the hand-over socket from the environment (and removes the variable, so that
    /// a later upgrade's child does not see it). Call before any thread starts.
    pub fn from_env() -> Option<Incoming> {
        let raw: RawFd = std::env::var(HANDOVER_ENV).ok()?.parse().ok()?;
        // SAFETY: single-threaded start-up; nothing reads the environment concurrently.
        unsafe { std::env::remove_var(HANDOVER_ENV) };
        // SAFETY: the old tenement passed this fd to this process for this purpose only.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = nix::fcntl::fcntl(
            &socket,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Some(Incoming { socket })
    }

    /// Receives every descriptor into `held` and confirms: from now on the old tenement
    /// stops serving.
    pub fn take(&self, held: &HeldFds) -> Result<usize, HeldError> {
        let count = held.receive(self.socket.as_fd())?;
        let iov = [IoSlice::new(RECEIVED)];
        sendmsg::<()>(self.socket.as_raw_fd(), &iov, &[], MsgFlags::empty(), None)
            .map_err(std::io::Error::from)?;
        Ok(count)
    }

    /// Waits until the old tenement has finished and exited (its end closes).
    pub fn wait_old_gone(&self) {
        let mut buf = [0u8; 16];
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
                Ok(msg) if msg.bytes > 0 => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                _ => return,
            }
        }
    }
}

/// Connections queued on a listener the old tenement closes move to the new one's sockets
/// of the same `SO_REUSEPORT` group instead of being reset (Linux 5.14+,
/// `net.ipv4.tcp_migrate_req`). Best effort: without it, the old one's extra per-worker
/// sockets may reset a connection that arrived in their queue during the hand-over.
pub fn migrate_queued_connections() {
    const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    if let Err(err) = std::fs::write(KNOB, "1") {
        tracing::warn!("upgrade: setting {KNOB}: {err} (queued connections may be reset)");
    }
}
