//! Listening sockets and the open-file limit a proxy needs.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use socket2::{Domain, Socket, Type};

const BACKLOG: i32 = 4096;

/// Binds every address of `settings.listen`, naming the one that fails.
pub(crate) fn bind(addresses: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    addresses
        .iter()
        .map(|&address| {
            let open = || -> std::io::Result<TcpListener> {
                let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_nonblocking(true)?;
                socket.bind(&address.into())?;
                socket.listen(BACKLOG)?;
                Ok(socket.into())
            };
            open().with_context(|| format!("cannot listen on {address} (settings.listen)"))
        })
        .collect()
}

/// A proxy holds two sockets per proxied connection; the usual soft limit of 1024 open files
/// is far too low, and raising it to the hard limit needs no privilege.
pub(crate) fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!("open file limit raised from {soft} to {hard}"),
                Err(error) => {
                    tracing::warn!("cannot raise the open file limit from {soft}: {error}")
                }
            }
        }
    }
}
