//! Sockets held by tenement for `socket_activation = true` services.
//!
//! tenement binds and listens on the instance's port (127.0.0.1) itself, before its first
//! start, and keeps the socket (in the `HeldFds` registry, as `instance:SERVICE:ID`) for as
//! long as tenement knows the instance: while it sleeps, connections wait in the kernel's
//! accept queue instead of being refused. Each process of the instance receives the socket
//! the systemd way (fd 3, `LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES=SERVICE`; see
//! `launch.rs` and `init.rs`).
//!
//! While the instance sleeps, a watcher waits for the held socket to become readable (a
//! connection queued by a client that did not come through the proxy) and wakes it, as a
//! systemd socket unit does.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use socket2::{Domain, Socket, Type};
use tokio::io::{unix::AsyncFd, Interest};

use super::{
    instance::Instance,
    ports::{PortAllocator, PortLease},
    state::InstanceState,
    Shared, Supervisor,
};
use crate::{
    config::InstanceName,
    held::{self, HeldFds},
};

/// The accept queue of a held socket: room for a storm of connections during one wake.
const BACKLOG: i32 = 4096;

pub struct Activation {
    pub held: Arc<HeldFds>,
    /// The port of each held socket, leased for as long as the socket is held.
    leases: Mutex<HashMap<InstanceName, PortLease>>,
}

impl Activation {
    pub fn new(held: Arc<HeldFds>) -> Activation {
        Activation {
            held,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// The port and a duplicate of the held socket of `name`, bound now if not held yet
    /// (or taken over from a previous tenement, which handed it over under its name).
    /// Returns `true` as third value when the socket was bound or adopted by this call.
    pub fn ensure(
        &self,
        ports: &PortAllocator,
        name: &InstanceName,
    ) -> Result<(u16, OwnedFd, bool)> {
        let key = held::instance_name(&name.service, &name.id);
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(lease), Some(fd)) = (leases.get(name), self.held.get(&key)?) {
            return Ok((lease.port(), fd, false));
        }
        if let Some(fd) = self.held.get(&key)? {
            // Handed over by the tenement this one replaced: keep its port.
            let port = local_port(&fd)?;
            let lease = ports
                .claim(port)
                .with_context(|| format!("{name}: its held port {port} is leased twice"))?;
            leases.insert(name.clone(), lease);
            return Ok((port, fd, true));
        }
        let (lease, socket) = ports
            .lease_bound(listen)
            .with_context(|| format!("{name}: holding its port"))?;
        let port = lease.port();
        self.held.insert(&key, socket.into())?;
        leases.insert(name.clone(), lease);
        let fd = self
            .held
            .get(&key)?
            .context("the held socket vanished while being created")?;
        Ok((port, fd, true))
    }

    /// Closes the held socket of `name` (the instance is forgotten) and frees its port.
    pub fn release(&self, name: &InstanceName) {
        self.held
            .remove(&held::instance_name(&name.service, &name.id));
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// A blocking listening socket on 127.0.0.1:port (the app gets it as it would have made
/// it; close-on-exec in tenement, cleared for the app on fd 3).
fn listen(port: u16) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

fn local_port(fd: &OwnedFd) -> Result<u16> {
    let socket = Socket::from(fd.try_clone()?);
    let addr = socket.local_addr()?;
    let port = addr
        .as_socket()
        .map(|a| a.port())
        .context("a held instance socket is not a TCP socket")?;
    // `socket` is a duplicate: dropping it leaves the held one open.
    Ok(port)
}

/// Holds the socket of `instance` from now on and watches it for direct connections.
pub(super) fn hold(shared: &Arc<Shared>, instance: &Arc<Instance>) -> Result<u16> {
    let (port, fd, new) = shared.activation.ensure(&shared.ports, &instance.name)?;
    if new {
        let supervisor = Supervisor {
            shared: shared.clone(),
        };
        let instance = instance.clone();
        tokio::spawn(async move {
            if let Err(err) = watch(supervisor, instance.clone(), fd).await {
                tracing::warn!("{}: watching its held socket: {err:#}", instance.name);
            }
        });
    }
    Ok(port)
}

/// A connection waits in the accept queue of `socket` right now.
fn waiting(socket: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & libc::POLLIN != 0
}

/// Wakes `instance` whenever a connection waits on its held socket while it sleeps. Ends
/// when the instance is forgotten (its held socket released).
async fn watch(supervisor: Supervisor, instance: Arc<Instance>, fd: OwnedFd) -> Result<()> {
    // Readiness only: tenement never accepts on the socket (that is the app's), so its
    // blocking mode, shared with the app, is left alone.
    // SAFETY: the fd is a duplicate owned by the AsyncFd for its whole life.
    let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    let key = held::instance_name(&instance.name.service, &instance.name.id);
    let mut status = instance.status.subscribe();
    loop {
        if !supervisor.shared.activation.held.contains(&key) {
            return Ok(());
        }
        let sleeping = status.borrow_and_update().state == InstanceState::Sleeping;
        if !sleeping {
            if status.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            ready = socket.readable() => {
                let mut ready = ready?;
                // The readiness may be stale (a connection the app accepted while it ran):
                // only a connection waiting now wakes the instance.
                if !waiting(socket.get_ref()) {
                    ready.clear_ready();
                    continue;
                }
                tracing::info!("{}: a connection waits on its held socket: waking it", instance.name);
                if let Err(err) = supervisor.ensure_running(&instance.name).await {
                    tracing::warn!("{}: woken by a direct connection: {err}", instance.name);
                }
                ready.clear_ready();
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
