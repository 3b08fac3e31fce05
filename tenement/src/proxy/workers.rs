//! The proxy's worker threads, one event loop each (as nginx's worker processes): a
//! connection is accepted, served, and forwarded to its instance on one thread, so a
//! request never changes threads and its upstream connection sits in that thread's pool.
//!
//! Every worker accepts on every listener; the one that accepts keeps the connection
//! unless another worker serves fewer, which then gets it. Keep-alive clients thus end up
//! spread evenly, whichever worker happened to wake first.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use super::server::{drive, Shared};

/// Open connections per worker, and the way to hand a connection to each.
pub(crate) struct Crew {
    loads: Box<[AtomicUsize]>,
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
    let crew = Arc::new(Crew {
        loads: (0..count).map(|_| AtomicUsize::new(0)).collect(),
        inboxes: inboxes.into(),
    });
    let mut finished = Vec::with_capacity(count);
    for (index, inbox) in receivers.into_iter().enumerate() {
        let listeners = listeners
            .iter()
            .map(|listener| {
                let copy = listener.try_clone()?;
                copy.set_nonblocking(true)?;
                Ok(copy)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, finished_rx) = oneshot::channel();
        let (shared, crew) = (shared.clone(), crew.clone());
        std::thread::Builder::new()
            .name(format!("proxy-{index}"))
            .spawn(move || {
                super::pool::set_worker(index);
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
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                tokio::spawn(accept_loop(shared.clone(), crew.clone(), index, listener));
            }
            Err(error) => tracing::error!("proxy worker {index} cannot listen: {error}"),
        }
    }
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            handed = inbox.recv() => {
                let Some((stream, peer)) = handed else { break };
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve(&shared, &crew, index, stream, peer),
                    Err(error) => tracing::warn!("proxy worker {index} cannot take a connection: {error}"),
                }
            }
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
    }
    // Connections live on this thread: keep serving them until they are done.
    shared.drain(shared.options.shutdown_grace).await;
}

async fn accept_loop(shared: Arc<Shared>, crew: Arc<Crew>, index: usize, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    let address = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let target = crew.least_loaded(index);
                if target == index {
                    serve(&shared, &crew, index, stream, peer);
                } else if let Ok(stream) = stream.into_std() {
                    if let Err(returned) = crew.inboxes[target].send((stream, peer)) {
                        // That worker is gone (shutting down): serve it here after all.
                        if let Ok(stream) = TcpStream::from_std(returned.0 .0) {
                            serve(&shared, &crew, index, stream, peer);
                        }
                    }
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
    stream: TcpStream,
    peer: SocketAddr,
) {
    crew.loads[index].fetch_add(1, Ordering::Relaxed);
    let (shared, crew) = (shared.clone(), crew.clone());
    tokio::spawn(async move {
        drive(shared, stream, peer, false).await;
        crew.loads[index].fetch_sub(1, Ordering::Relaxed);
    });
}

impl Crew {
    /// `me`, unless another worker has fewer open connections.
    fn least_loaded(&self, me: usize) -> usize {
        let mine = self.loads[me].load(Ordering::Relaxed);
        let (other, least) = self
            .loads
            .iter()
            .map(|load| load.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, load)| load)
            .unwrap_or((me, mine));
        if least < mine {
            other
        } else {
            me
        }
    }
}
