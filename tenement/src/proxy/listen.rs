//! Listening sockets for the worker threads. Each worker gets a socket of its own on every
//! address (`SO_REUSEPORT`), so the kernel spreads new connections evenly over the workers
//! instead of waking all of them for each one and letting the quickest take most.

use std::{
    io,
    net::{SocketAddr, TcpListener},
};

use anyhow::{Context, Result};
use socket2::{Domain, SockRef, Socket, Type};

const BACKLOG: i32 = 4096;

/// Binds every address of `settings.listen`, naming the one that fails. The sockets allow
/// one more socket per worker on the same address.
pub(crate) fn bind(addresses: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    addresses
        .iter()
        .map(|address| {
            open(*address).with_context(|| format!("cannot listen on {address} (settings.listen)"))
        })
        .collect()
}

fn open(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The socket worker `index` accepts on: a sibling on the same address when the listener
/// allows it (see `bind`), else a shared copy of the listener itself.
pub(crate) fn for_worker(listener: &TcpListener, index: usize) -> io::Result<TcpListener> {
    let shareable = SockRef::from(listener).reuse_port().unwrap_or(false);
    let socket = if index > 0 && shareable {
        open(listener.local_addr()?)?
    } else {
        listener.try_clone()?
    };
    socket.set_nonblocking(true)?;
    Ok(socket)
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
