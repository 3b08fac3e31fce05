//! The proxy's worker threads, one event loop each (as nginx's worker processes): a
//! connection is accepted, served, and forwarded to its instance on one thread, so a
//! request never changes threads and its upstream connection sits in that thread's pool.
//!
//! Every worker accepts on every listener (on a socket of its own, see `listen.rs`), but the
//! kernel hands new connections only to the workers the load needs (`steer.rs`). The one
//! that accepts keeps the connection unless another active worker serves clearly fewer,
//! which then gets it: keep-alive clients end up spread evenly over the active workers.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use super::{
    server::{spawn_connection, Client, Shared},
    steer::Steering,
    watch::{watch_here, watch_worker},
};

/// How many more connections than the least busy worker a worker may have before it hands
/// new ones over: short-lived connections are then rarely handed over (a hand-over costs a
/// wake-up of the other thread), and long-lived ones still end up within a few of even.
const HAND_OVER_MARGIN: usize = 4;

/// Open connections per worker, and the way to hand a connection to each.
pub(crate) struct Crew {
    loads: Box<[AtomicUsize]>,
    steering: Arc<Steering>,
    inboxes: Box<[mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>]>,
}

/// Starts `count` workers accepting on `listeners`. Each receiver completes when its
/// worker has drained its connections after shutdown.
pub(crate) fn start(
    shared: &Arc<Shared>,
    count: usize,
    listeners: &[std::net::TcpListener],
) -> anyhow::Result<Vec<oneshot::Receiver<()>>> {
    let (inboxes, receivers): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    // Each worker's sockets join their groups in worker order, which `steer.rs` relies on.
    let mut own_listeners = Vec::with_capacity(count);
    for index in 0..count {
        own_listeners.push(
            listeners
                .iter()
                .map(|listener| super::listen::for_worker(listener, index))
                .collect::<std::io::Result<Vec<_>>>()?,
        );
    }
    let steering = Steering::new(count, listeners)?;
    tokio::spawn(Steering::balance(Arc::downgrade(&steering)));
    let crew = Arc::new(Crew {
        loads: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        steering,
        inboxes: inboxes.into(),
    });
    let mut finished = Vec::with_capacity(count);
    for ((index, inbox), listeners) in receivers.into_iter().enumerate().zip(own_listeners) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, finished_rx) = oneshot::channel();
        let (shared, crew) = (shared.clone(), crew.clone());
        std::thread::Builder::new()
            .name(format!("proxy-{index}"))
            .spawn(move || {
                super::pool::set_worker(index);
                crew.steering.register_worker(index);
                runtime.block_on(work(shared, crew, index, listeners, inbox));
                // Dropping the runtime ends whatever outlived the grace period.
                drop(runtime);
                let _ = done.send(());
            })?;
        finished.push(finished_rx);
    }
    Ok(finished)
}

async fn work(
    shared: Arc<Shared>,
    crew: Arc<Crew>,
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    mut inbox: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
) {
    for listener in listeners {
        // SAFETY: the AsyncFd owns the listener, so its descriptor stays open for as long
        // as it is registered.
        match unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) } {
            Ok(listener) => {
                tokio::spawn(accept_loop(shared.clone(), crew.clone(), index, listener));
            }
            Err(error) => tracing::error!("proxy worker {index} cannot listen: {error}"),
        }
    }
    let watcher = tokio::spawn(watch_worker(shared.clone()));
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            handed = inbox.recv() => {
                let Some((stream, peer)) = handed else { break };
                serve(&shared, &crew, index, stream, peer);
            }
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
    }
    // Connections live on this thread: keep serving them until they are done.
    let _ = watcher.await;
}

/// Accepts with the plain socket calls, so that a connection handed to another worker is
/// registered with an event loop only once, there.
async fn accept_loop(
    shared: Arc<Shared>,
    crew: Arc<Crew>,
    index: usize,
    listener: AsyncFd<std::net::TcpListener>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let address = listener.get_ref().local_addr().ok();
    loop {
        let mut ready = tokio::select! {
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(error) => {
                    tracing::error!("proxy listener {address:?} failed: {error}");
                    return;
                }
            },
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        };
        let accepted = match ready.try_io(|listener| super::listen::accept(listener.get_ref())) {
            Ok(accepted) => accepted,
            Err(_would_block) => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                let target = crew.least_loaded(index);
                if target == index {
                    serve(&shared, &crew, index, stream, peer);
                } else if let Err(returned) = crew.inboxes[target].send((stream, peer)) {
                    // That worker is gone (shutting down): serve it here after all.
                    let (stream, peer) = returned.0;
                    serve(&shared, &crew, index, stream, peer);
                }
            }
            Err(error) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!("accepting on {address:?} failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn serve(
    shared: &Arc<Shared>,
    crew: &Arc<Crew>,
    index: usize,
    stream: std::net::TcpStream,
    peer: SocketAddr,
) {
    match TcpStream::from_std(stream) {
        Ok(stream) => {
            let load = Load::count(crew, index);
            let client = Client {
                peer,
                https: false,
                socket: Some(stream.as_raw_fd()),
            };
            watch_here(|unwatch| spawn_connection(shared, stream, client, (load, unwatch)));
        }
        Err(error) => {
            tracing::warn!("proxy worker {index} cannot take a connection from {peer}: {error}");
        }
    }
}

/// Counts one connection in its worker's load while it lives.
struct Load(Arc<Crew>, usize);

impl Load {
    fn count(crew: &Arc<Crew>, index: usize) -> Load {
        crew.loads[index].fetch_add(1, Ordering::Relaxed);
        Load(crew.clone(), index)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.loads[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Crew {
    /// `me`, unless another active worker has `HAND_OVER_MARGIN` fewer open connections
    /// (or `me` is not active: a connection that reached it while the active set changed).
    fn least_loaded(&self, me: usize) -> usize {
        let active = self.steering.active().min(self.loads.len());
        let (other, least) = self.loads[..active]
            .iter()
            .map(|load| load.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, load)| load)
            .unwrap_or((0, 0));
        if me >= active {
            return other;
        }
        if least + HAND_OVER_MARGIN <= self.loads[me].load(Ordering::Relaxed) {
            other
        } else {
            me
        }
    }
}
