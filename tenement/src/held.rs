//! Every file descriptor tenement must not lose, by name.
//!
//! Public listeners (`listen:proxy:0.0.0.0:8080`), the held sockets of `socket_activation`
//! services (`instance:api:alice`) and whatever else must outlive one tenement process live
//! here. One registry, so that one hand-over moves all of them: a new tenement receives them
//! from the old one over `SCM_RIGHTS` (`send`/`receive`), or from systemd's socket activation
//! (`inherit`, `LISTEN_FDS` + `LISTEN_FDNAMES`), under the same names.
//!
//! The registry owns one descriptor per name; users get duplicates (`get`), which share the
//! open socket: a listener handed to tokio and dropped later does not close the held one.

use std::{
    collections::BTreeMap,
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::Mutex,
};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The first fd systemd (and a tenement handing over) passes: 0-2 are stdio.
pub const LISTEN_FDS_START: RawFd = 3;

/// Descriptors per `SCM_RIGHTS` message: the kernel accepts at most 253 (`SCM_MAX_FD`).
const FDS_PER_MESSAGE: usize = 200;

/// The longest message of names: 200 names of at most a few hundred bytes each.
const MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error("no held descriptor is named {0:?}")]
    Missing(String),
    #[error("a held descriptor name must be non-empty, without newline or NUL: {0:?}")]
    BadName(String),
    #[error("LISTEN_FDS={fds} but LISTEN_FDNAMES names {names} descriptors")]
    NameCount { fds: usize, names: usize },
    #[error("socket activation environment: {0}")]
    BadEnvironment(String),
    #[error("hand-over of held descriptors: {0}")]
    Transfer(#[from] io::Error),
    #[error("hand-over of held descriptors: the peer sent {fds} descriptors for {names} names")]
    Mismatch { fds: usize, names: usize },
}

#[derive(Default)]
pub struct HeldFds {
    fds: Mutex<BTreeMap<String, OwnedFd>>,
}

impl HeldFds {
    pub fn new() -> HeldFds {
        HeldFds::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, OwnedFd>> {
        self.fds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `fd` under `name`, replacing (and closing) any descriptor held under it.
    pub fn insert(&self, name: &str, fd: OwnedFd) -> Result<(), HeldError> {
        check_name(name)?;
        self.map().insert(name.to_string(), fd);
        Ok(())
    }

    /// A duplicate of the descriptor held under `name` (the registry keeps its own).
    pub fn get(&self, name: &str) -> Result<Option<OwnedFd>, HeldError> {
        match self.map().get(name) {
            Some(fd) => Ok(Some(fd.try_clone()?)),
            None => Ok(None),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    /// Stops holding `name` and gives its descriptor to the caller.
    pub fn take(&self, name: &str) -> Option<OwnedFd> {
        self.map().remove(name)
    }

    /// Stops holding `name`; the descriptor is closed unless someone holds a duplicate.
    pub fn remove(&self, name: &str) -> bool {
        self.map().remove(name).is_some()
    }

    pub fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// A duplicate of the listening socket held as `name`; else of one passed by systemd
    /// under another name (its `FileDescriptorName=` cannot hold our `:`) that is bound to
    /// `address`, which is held as `name` from now on. `None`: nothing holds it, bind it.
    pub fn listener(
        &self,
        name: &str,
        address: std::net::SocketAddr,
    ) -> Result<Option<OwnedFd>, HeldError> {
        if let Some(fd) = self.get(name)? {
            return Ok(Some(fd));
        }
        let mut map = self.map();
        let found = map.iter().find_map(|(held_name, fd)| {
            let ours = held_name.starts_with("listen:") || held_name.starts_with("instance:");
            let bound = socket2::SockRef::from(fd)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket());
            (!ours && bound == Some(address)).then(|| held_name.clone())
        });
        let Some(old_name) = found else {
            return Ok(None);
        };
        let Some(fd) = map.remove(&old_name) else {
            return Ok(None);
        };
        let copy = fd.try_clone()?;
        map.insert(name.to_string(), fd);
        Ok(Some(copy))
    }

    /// Duplicates of every held descriptor with its name, in name order.
    pub fn snapshot(&self) -> Result<Vec<(String, OwnedFd)>, HeldError> {
        let map = self.map();
        let mut out = Vec::with_capacity(map.len());
        for (name, fd) in map.iter() {
            out.push((name.clone(), fd.try_clone()?));
        }
        Ok(out)
    }

    /// Takes over the descriptors passed the systemd way (`LISTEN_PID` must be this process;
    /// a name missing from `LISTEN_FDNAMES` becomes `fd:<number>`). The variables are removed
    /// so that children do not see them, and the descriptors are marked close-on-exec.
    pub fn inherit() -> Result<HeldFds, HeldError> {
        let pid = std::env::var("LISTEN_PID").ok();
        let fds = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        let held = HeldFds::new();
        let Some(parsed) = parse_listen_env(
            pid.as_deref(),
            fds.as_deref(),
            names.as_deref(),
            std::process::id(),
        )?
        else {
            return Ok(held);
        };
        // SAFETY: called at start-up, before tenement starts any thread that reads the
        // environment (the daemon inherits before building its runtime).
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        for (offset, name) in parsed.into_iter().enumerate() {
            let raw = LISTEN_FDS_START + offset as RawFd;
            // SAFETY: the passing process promised fds 3..3+LISTEN_FDS to this pid (it
            // checked LISTEN_PID); nothing in this process has claimed them before.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            set_cloexec(fd.as_fd())?;
            held.insert(&name, fd)?;
        }
        Ok(held)
    }

    /// Sends every held descriptor with its name over `socket` (a `SOCK_SEQPACKET` socket:
    /// each message is one batch of names, newline-separated, with their fds attached), then
    /// an empty message as the end. The registry keeps its own descriptors.
    pub fn send(&self, socket: BorrowedFd<'_>) -> Result<usize, HeldError> {
        let all = self.snapshot()?;
        for batch in all.chunks(FDS_PER_MESSAGE) {
            let names: Vec<&str> = batch.iter().map(|(name, _)| name.as_str()).collect();
            let payload = names.join("\n");
            let raw: Vec<RawFd> = batch.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
            let iov = [IoSlice::new(payload.as_bytes())];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(io::Error::from)?;
        }
        let end = [IoSlice::new(b"")];
        sendmsg::<()>(socket.as_raw_fd(), &end, &[], MsgFlags::empty(), None)
            .map_err(io::Error::from)?;
        Ok(all.len())
    }

    /// Receives what `send` sent into this registry (names already held are replaced).
    /// Returns how many descriptors came.
    pub fn receive(&self, socket: BorrowedFd<'_>) -> Result<usize, HeldError> {
        let mut count = 0;
        let mut buf = vec![0u8; MESSAGE_BYTES];
        loop {
            let mut cmsg_space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
            let (bytes, fds) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg_space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        // SAFETY: the kernel just installed these fds in this process for us.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                (msg.bytes, fds)
            };
            if bytes == 0 && fds.is_empty() {
                return Ok(count);
            }
            let text = String::from_utf8_lossy(&buf[..bytes]);
            let names: Vec<&str> = text.split('\n').collect();
            if names.len() != fds.len() {
                return Err(HeldError::Mismatch {
                    fds: fds.len(),
                    names: names.len(),
                });
            }
            for (name, fd) in names.into_iter().zip(fds) {
                self.insert(name, fd)?;
                count += 1;
            }
        }
    }
}

/// The names of the descriptors passed by `LISTEN_*`, or `None` when nothing was passed to
/// this process (`own_pid`). Pure, for tests.
pub fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
) -> Result<Option<Vec<String>>, HeldError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| HeldError::BadEnvironment(format!("LISTEN_PID={pid:?} is not a pid")))?;
    if pid != own_pid {
        return Ok(None);
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| HeldError::BadEnvironment(format!("LISTEN_FDS={fds:?} is not a number")))?;
    let mut out: Vec<String> = match names {
        Some(names) if !names.is_empty() => names.split(':').map(str::to_string).collect(),
        _ => Vec::new(),
    };
    if !out.is_empty() && out.len() != count {
        return Err(HeldError::NameCount {
            fds: count,
            names: out.len(),
        });
    }
    out.resize(count, String::new());
    for (offset, name) in out.iter_mut().enumerate() {
        if name.is_empty() {
            *name = format!("fd:{}", LISTEN_FDS_START + offset as RawFd);
        }
    }
    Ok(Some(out))
}

fn check_name(name: &str) -> Result<(), HeldError> {
    if name.is_empty() || name.contains(['\n', '\0']) {
        return Err(HeldError::BadName(name.to_string()));
    }
    Ok(())
}

fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(())
}

/// The name of a public listener: `listen:proxy:0.0.0.0:8080`, `listen:api:unix:/run/x.sock`.
pub fn listener_name(role: &str, address: &str) -> String {
    format!("listen:{role}:{address}")
}

/// The name of the held socket of a `socket_activation` instance: `instance:api:alice`.
pub fn instance_name(service: &str, instance: &str) -> String {
    format!("instance:{service}:{instance}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::net::TcpListener;

    fn port_of(fd: &OwnedFd) -> u16 {
        let listener = TcpListener::from(fd.try_clone().unwrap());
        listener.local_addr().unwrap().port()
    }

    #[test]
    fn get_duplicates_and_take_removes() {
        let held = HeldFds::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        held.insert("listen:proxy:x", listener.into()).unwrap();
        let copy = held.get("listen:proxy:x").unwrap().unwrap();
        drop(copy);
        // The held one is still open: a client can connect.
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(held.names(), vec!["listen:proxy:x".to_string()]);
        let taken = held.take("listen:proxy:x").unwrap();
        assert_eq!(port_of(&taken), port);
        assert!(held.is_empty());
        assert!(held.get("listen:proxy:x").unwrap().is_none());
    }

    #[test]
    fn bad_names_are_refused() {
        let held = HeldFds::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            held.insert("a\nb", listener.into()),
            Err(HeldError::BadName(_))
        ));
    }

    #[test]
    fn send_and_receive_keep_names_across_batches() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let held = HeldFds::new();
        let mut ports = BTreeMap::new();
        // More than one SCM_RIGHTS message's worth.
        for i in 0..(FDS_PER_MESSAGE + 5) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let name = instance_name("svc", &format!("i{i}"));
            ports.insert(name.clone(), listener.local_addr().unwrap().port());
            held.insert(&name, listener.into()).unwrap();
        }
        let sender = std::thread::spawn(move || held.send(a.as_fd()).unwrap());
        let received = HeldFds::new();
        let count = received.receive(b.as_fd()).unwrap();
        assert_eq!(sender.join().unwrap(), FDS_PER_MESSAGE + 5);
        assert_eq!(count, FDS_PER_MESSAGE + 5);
        for (name, port) in ports {
            let fd = received.get(&name).unwrap().unwrap();
            assert_eq!(port_of(&fd), port, "{name}");
        }
    }

    #[test]
    fn listen_env_is_read_only_for_this_pid() {
        assert_eq!(parse_listen_env(None, None, None, 7).unwrap(), None);
        assert_eq!(
            parse_listen_env(Some("8"), Some("1"), None, 7).unwrap(),
            None
        );
        assert_eq!(
            parse_listen_env(Some("7"), Some("2"), Some("a:b"), 7).unwrap(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            parse_listen_env(Some("7"), Some("2"), None, 7).unwrap(),
            Some(vec!["fd:3".to_string(), "fd:4".to_string()])
        );
        assert!(matches!(
            parse_listen_env(Some("7"), Some("2"), Some("a"), 7),
            Err(HeldError::NameCount { fds: 2, names: 1 })
        ));
        assert!(matches!(
            parse_listen_env(Some("7"), Some("x"), None, 7),
            Err(HeldError::BadEnvironment(_))
        ));
    }
}
