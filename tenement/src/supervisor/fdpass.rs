//! Messages with at most one file descriptor each, over a unix seqpacket socket
//! (`SCM_RIGHTS`): how tenement hands the read ends of its tenants' output pipes to its
//! guard, and how a guard hands them to the next tenement. A seqpacket socket keeps message
//! boundaries, so a message is one short line of text and never needs framing.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    time::Duration,
};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::sockpath::SocketPath;

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

/// Longest message text (names are short: `log:SERVICE:ID:stdout`).
const MAX_MESSAGE: usize = 1024;

/// A connected pair, both ends close-on-exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// A listening socket at `path` (replacing a stale one), readable by its owner only.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Held until bound: a long path goes through the directory it keeps open.
    let short = SocketPath::new(path)?;
    let addr = UnixAddr::new(&*short)?;
    // The umask of a root daemon may leave it group- or world-connectable: only root may
    // take a tenant's output.
    socket::bind(fd.as_raw_fd(), &addr)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    socket::listen(&fd, socket::Backlog::new(8).map_err(io::Error::from)?)?;
    Ok(fd)
}

pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let short = SocketPath::new(path)?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(&*short)?)?;
    Ok(fd)
}

pub fn accept(listener: BorrowedFd) -> io::Result<OwnedFd> {
    let fd = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `text`, with `fd` attached if given.
pub fn send(sock: BorrowedFd, text: &str, fd: Option<BorrowedFd>) -> io::Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let fds: Vec<RawFd> = fd.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// The next message, `None` once the peer has closed its end.
pub fn recv(sock: BorrowedFd) -> io::Result<Option<(String, Option<OwnedFd>)>> {
    let mut buffer = [0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (len, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel installed these fds in this process for this message.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (message.bytes, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
    // More than one fd is never sent: extra ones are closed here.
    let fd = if fds.is_empty() {
        None
    } else {
        Some(fds.swap_remove(0))
    };
    Ok(Some((text, fd)))
}

/// Whether `fd` becomes readable (or hung up) within `wait`.
pub fn readable(fd: BorrowedFd, wait: Duration) -> bool {
    let millis = wait.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::fd::AsFd,
    };

    use super::*;

    #[test]
    fn a_named_pipe_end_crosses_the_socket() {
        let (a, b) = pair().unwrap();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), "hold log:web:a:stdout", Some(reader.as_fd())).unwrap();
        drop(reader);
        send(a.as_fd(), "bye", None).unwrap();
        let (text, fd) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(text, "hold log:web:a:stdout");
        let mut received = std::fs::File::from(fd.expect("an fd"));
        std::fs::File::from(writer).write_all(b"line\n").unwrap();
        let mut line = String::new();
        received.read_to_string(&mut line).unwrap();
        assert_eq!(line, "line\n");
        let (text, fd) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!((text.as_str(), fd.is_none()), ("bye", true));
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none());
    }
}
