//! Delivers listen events from the kernel's ring buffer to every subscriber, and the kernel
//! programs' log lines (aya-log) to tenement's log.
//!
//! A plain thread blocks in poll() on the ring buffer, so the kernel's wakeup reaches the
//! subscribers at once and the monitor needs no async runtime to exist. Stopping is a closed
//! pipe: dropping its write end wakes the thread, which then returns.

use std::{
    os::fd::{AsFd, OwnedFd},
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use nix::{
    fcntl::OFlag,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};
use tokio::sync::broadcast;

use super::{kernel::KernelOutput, ListenEvent};

pub struct ListenReader {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl ListenReader {
    pub fn start(output: KernelOutput, events: broadcast::Sender<ListenEvent>) -> Result<Self> {
        let (stop_rx, stop_tx) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).context("creating the listen reader's pipe")?;
        let thread = std::thread::Builder::new()
            .name("listen-events".into())
            .spawn(move || read_until_stopped(output, stop_rx, events))
            .context("starting the listen-event reader thread")?;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ListenReader {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_until_stopped(output: KernelOutput, stop: OwnedFd, events: broadcast::Sender<ListenEvent>) {
    let KernelOutput {
        listen_events: mut ring,
        mut logger,
    } = output;
    loop {
        forward(&mut ring, &events);
        if let Some(logger) = &mut logger {
            logger.flush();
        }
        let mut fds = vec![
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(ring.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(logger) = &logger {
            fds.push(PollFd::new(logger.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => {
                tracing::error!("listen events stop: polling the ring buffer failed: {err}");
                return;
            }
        }
    }
}

fn forward(ring: &mut RingBuf<MapData>, events: &broadcast::Sender<ListenEvent>) {
    while let Some(item) = ring.next() {
        if let Some(event) = decode(&item) {
            // No subscriber right now is fine: nobody is waiting for this port.
            let _ = events.send(event);
        }
    }
}

fn decode(bytes: &[u8]) -> Option<ListenEvent> {
    if bytes.len() < size_of::<tenement_common::ListenEvent>() {
        return None;
    }
    // SAFETY: length checked; the kernel wrote a `ListenEvent`; read_unaligned needs no alignment.
    let raw: tenement_common::ListenEvent =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some(ListenEvent {
        cgroup_id: raw.cgroup_id,
        port: raw.port as u16,
    })
}
