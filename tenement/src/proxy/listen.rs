//! Listening sockets and the open-file limit a proxy needs.
//!
//! Each worker thread accepts on a socket of its own (`SO_REUSEPORT`): a new connection
//! wakes one worker, not all of them to let one win. (How evenly the kernel spreads
//! connections matters less: `workers.rs` evens out the load itself.)

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use socket2::{Domain, SockRef, Socket, Type};

const BACKLOG: i32 = 4096;

/// Binds every address of `settings.listen`, naming the one that fails. An address some
/// other socket listens on is refused, even when that socket allows `SO_REUSEPORT` as ours
/// do (another tenement would otherwise share the port and take half of the requests).
pub(crate) fn bind(addresses: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    addresses
        .iter()
        .map(|&address| {
            refuse_if_taken(address)
                .and_then(|()| open(address))
                .map_err(|err| in_use_hint(address, err))
                .with_context(|| format!("cannot listen on {address} (settings.listen)"))
        })
        .collect()
}

/// Binds (and drops) a socket without `SO_REUSEPORT` to `address`: the kernel refuses it
/// while any socket listens there, whatever that socket's options.
fn refuse_if_taken(address: SocketAddr) -> std::io::Result<()> {
    let probe = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // Connections of an earlier run in TIME_WAIT do not count as in use.
    probe.set_reuse_address(true)?;
    probe.bind(&address.into())
}

fn in_use_hint(address: SocketAddr, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "address in use: another process (another tenement?) listens on {address}; \
             `ss -ltnp 'sport = :{}'` shows which",
            address.port()
        )
    } else {
        err.into()
    }
}

fn open(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The socket worker `index` accepts on: a sibling on the same address when the listener
/// allows it (made by `bind`), else a shared copy of the listener itself.
pub(crate) fn for_worker(listener: &TcpListener, index: usize) -> std::io::Result<TcpListener> {
    let own_socket = index > 0 && SockRef::from(listener).reuse_port().unwrap_or(false);
    let socket = if own_socket {
        open(listener.local_addr()?)?
    } else {
        listener.try_clone()?
    };
    socket.set_nonblocking(true)?;
    // Accepted connections inherit it (a listener handed in may not have it yet).
    SockRef::from(&socket).set_tcp_nodelay(true)?;
    Ok(socket)
}

/// Accepts one connection, already non-blocking and with Nagle's algorithm off (small
/// requests and responses must not wait for an acknowledgement): Linux copies `TCP_NODELAY`
/// from the listener (`open`, `for_worker`), which spares a system call per connection.
pub(crate) fn accept(listener: &TcpListener) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    let (socket, peer) =
        SockRef::from(listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| std::io::Error::other("a TCP connection without an IP address"))?;
    Ok((socket.into(), peer))
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
                    tracing::warn!("cannot raise the open file limit from {soft}: {error}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepted_connections_have_nagle_off() {
        let bound = super::bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let workers: Vec<_> = (0..2)
            .map(|index| super::for_worker(&bound[0], index).unwrap())
            .collect();
        let address = workers[0].local_addr().unwrap();
        for _ in 0..4 {
            let _client = std::net::TcpStream::connect(address).unwrap();
            // The kernel gives it to either worker's socket.
            let accepted = loop {
                if let Some(Ok((stream, _))) = workers
                    .iter()
                    .map(super::accept)
                    .find(|accepted| accepted.is_ok())
                {
                    break stream;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            assert!(accepted.nodelay().unwrap());
        }
    }
}
