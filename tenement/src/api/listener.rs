//! The management listener: a unix socket (mode 0600) or a TCP address, serving HTTP/1.1.
//! Each connection is told apart by its peer: unix peers carry their uid (SO_PEERCRED),
//! which is how root is recognised without a token.

use std::{
    future::Future,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinSet,
};

use super::{address::ApiAddress, auth::Peer, body::Body};
use crate::sockpath::SocketPath;

/// Time a client has to send a complete request head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long requests in flight (the answer to `POST /v1/upgrade` among them) may take to
/// finish once the API stops; streams that never end (`logs --follow`) are cut after it.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    pub async fn bind(address: &ApiAddress, held: &crate::held::HeldFds) -> Result<Listener> {
        match address {
            ApiAddress::Unix(path) => bind_unix(path).await,
            ApiAddress::Tcp(host_port) => {
                // Handed over by the tenement this one replaces (or by systemd): keep it.
                let name = crate::held::listener_name("api", host_port);
                let resolved = host_port.parse::<std::net::SocketAddr>().ok();
                let inherited = match resolved {
                    Some(addr) => held.listener(&name, addr)?,
                    None => held.get(&name)?,
                };
                if let Some(fd) = inherited {
                    let listener = std::net::TcpListener::from(fd);
                    listener.set_nonblocking(true)?;
                    return Ok(Listener::Tcp(TcpListener::from_std(listener)?));
                }
                let listener = TcpListener::bind(host_port.as_str())
                    .await
                    .with_context(|| {
                        format!(
                            "listening for the management API on {host_port} (settings.api): is \
                         another process using it?"
                        )
                    })?;
                let copy = socket2::SockRef::from(&listener).try_clone()?;
                held.insert(&name, OwnedFd::from(copy))?;
                Ok(Listener::Tcp(listener))
            }
        }
    }

    /// Accepts connections until `shutdown` turns true, serving each with `handle`. Then
    /// idle connections close, and requests in flight get `SHUTDOWN_GRACE` to finish.
    pub async fn serve<H, F>(self, handle: H, mut shutdown: watch::Receiver<bool>)
    where
        H: Fn(Peer, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = self.accept() => accepted,
            };
            match accepted {
                Ok((io, peer)) => {
                    connections.spawn(serve_connection(io, peer, handle.clone(), shutdown.clone()));
                }
                Err(err) => {
                    // EMFILE and friends: wait a little instead of spinning on the error.
                    tracing::warn!("management API: accepting a connection: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        let drained = async { while connections.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
        connections.shutdown().await;
        if let Listener::Unix(_, path) = &self {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn accept(&self) -> std::io::Result<(Box<dyn Io>, Peer)> {
        match self {
            Listener::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                let uid = stream.peer_cred()?.uid();
                Ok((Box::new(stream), Peer::Unix { uid }))
            }
            Listener::Tcp(listener) => {
                let (stream, address) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Box::new(stream), Peer::Tcp { address }))
            }
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve_connection<H, F>(
    io: Box<dyn Io>,
    peer: Peer,
    handle: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Peer, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let service = service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(peer, request).await) }
    });
    // A client that never finishes its request head must not hold a connection forever.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
            // The request in flight is answered; then the connection closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = served {
        tracing::debug!("management API connection: {err}");
    }
}

/// Binds the socket under a temporary name, restricts it to 0600, then renames it into
/// place: there is no moment where the socket exists with looser permissions.
async fn bind_unix(path: &Path) -> Result<Listener> {
    let dir = path
        .parent()
        .with_context(|| format!("socket path {} has no directory", path.display()))?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {} for the API socket", dir.display()))?;
    if path.exists() {
        if tokio::net::UnixStream::connect(&*SocketPath::new(path)?)
            .await
            .is_ok()
        {
            bail!(
                "{} is in use: another tenement serves this data directory (stop it first, or \
                 set settings.api to another address)",
                path.display()
            );
        }
        // Left behind by a tenement that did not exit cleanly.
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let file_name = path
        .file_name()
        .with_context(|| format!("socket path {} has no file name", path.display()))?;
    let temporary = dir.join(format!(
        ".{}.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    let listener = SocketPath::new(&temporary)
        .and_then(|short| UnixListener::bind(&*short))
        .with_context(|| format!("creating the API socket {}", temporary.display()))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to mode 0600", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("moving the API socket into place at {}", path.display()))?;
    Ok(Listener::Unix(listener, path.to_path_buf()))
}
