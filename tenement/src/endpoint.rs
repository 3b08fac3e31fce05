//! Where an instance takes connections: a port of 127.0.0.1, or a unix socket in its own
//! data directory (`listen = "unix"`). The proxy, readiness and health checks all connect
//! through [`Endpoint::connect`].
//!
//! A unix socket lives in a directory its tenant owns, so the tenant could replace it with
//! a symlink to another tenant's socket, and tenement (root) would follow it. So the path
//! is opened with `O_PATH | O_NOFOLLOW` first, the inode checked (a socket, owned by the
//! instance's uid), and the connection made through that very inode
//! (`/proc/self/fd/N`), leaving no window to swap it.

use std::{
    fmt, io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `127.0.0.1:PORT`.
    Port(u16),
    /// A unix socket, which must be a socket owned by `owner`.
    Unix { path: Arc<Path>, owner: u32 },
    /// Another fleet node's proxy (`[fleet] advertise`): only the proxy forwards there,
    /// no instance ever listens on one.
    Peer(std::net::SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Port(port) => write!(f, "127.0.0.1:{port}"),
            Endpoint::Unix { path, .. } => write!(f, "unix:{}", path.display()),
            Endpoint::Peer(address) => write!(f, "{address}"),
        }
    }
}

impl Endpoint {
    pub fn port(&self) -> Option<u16> {
        match self {
            Endpoint::Port(port) => Some(*port),
            Endpoint::Unix { .. } | Endpoint::Peer(_) => None,
        }
    }

    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            Endpoint::Port(_) | Endpoint::Peer(_) => None,
            Endpoint::Unix { path, .. } => Some(path),
        }
    }

    /// A connection. `ConnectionRefused` means nothing listens there (for a unix socket
    /// also: no socket file yet), so callers may treat both kinds alike.
    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Port(port) => {
                let stream = TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, *port)).await?;
                Ok(Stream::Tcp(stream))
            }
            Endpoint::Unix { path, owner } => connect_unix(path, *owner).await.map(Stream::Unix),
            Endpoint::Peer(address) => {
                let stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
        }
    }
}

async fn connect_unix(path: &Path, owner: u32) -> io::Result<UnixStream> {
    use std::os::unix::fs::OpenOptionsExt;
    let inode = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => {
                io::Error::new(io::ErrorKind::ConnectionRefused, "no socket there yet")
            }
            _ => err,
        })?;
    let meta = inode.metadata()?;
    let is_socket = meta.mode() & libc::S_IFMT == libc::S_IFSOCK;
    if !is_socket || meta.uid() != owner {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a socket of uid {owner} (a symlink or someone else's file)",
                path.display()
            ),
        ));
    }
    let through = format!("/proc/self/fd/{}", inode.as_raw_fd());
    let stream = UnixStream::connect(through).await;
    drop(inode);
    stream
}

/// A connection to an [`Endpoint`].
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// False when the peer has closed the idle connection or sent something unasked.
    /// Costs no system call while the socket is quiet.
    pub fn is_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = match self {
            Stream::Tcp(stream) => stream.poll_read_ready(&mut cx),
            Stream::Unix(stream) => stream.poll_read_ready(&mut cx),
        };
        match ready {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                let read = match self {
                    Stream::Tcp(stream) => stream.try_read(&mut probe),
                    Stream::Unix(stream) => stream.try_read(&mut probe),
                };
                matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(stream) => stream.is_write_vectored(),
            Stream::Unix(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_uid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    #[tokio::test]
    async fn connects_to_an_owned_socket_never_through_a_symlink() {
        let dir = crate::test_support::TempDir::new("endpoint");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let endpoint = Endpoint::Unix {
            path: path.clone().into(),
            owner: own_uid(),
        };
        let accepted = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        endpoint.connect().await.unwrap();
        accepted.await.unwrap().unwrap();

        let link = dir.0.join("link.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let through_link = Endpoint::Unix {
            path: link.into(),
            owner: own_uid(),
        };
        let err = through_link.connect().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");

        let someone_else = Endpoint::Unix {
            path: path.into(),
            owner: own_uid() + 1,
        };
        let err = someone_else.connect().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");

        let missing = Endpoint::Unix {
            path: dir.0.join("none.sock").into(),
            owner: own_uid(),
        };
        let err = missing.connect().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }
}
