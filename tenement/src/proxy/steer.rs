//! Which workers take new connections: as few as the load needs.
//!
//! A worker that serves many connections handles each wake-up's events together; spread over
//! every worker, the same load wakes each of them more often, and a wake-up (a context
//! switch) costs more than the request's own work. So new connections go to the first
//! `active` workers only, one at first, and another joins when every active one is busy;
//! one leaves when the rest would do. The kernel does the steering: a classic BPF program on
//! each listener's `SO_REUSEPORT` group picks one of the first `active` sockets (spreading by
//! the connection's hash), so an inactive worker is not even woken. Connections stay with
//! the worker that took them.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicI32, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the libc crate has it for some
/// architectures only).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// How often the balance is looked at.
const PERIOD: Duration = Duration::from_millis(500);
/// An active worker this busy (its share of one CPU) is saturated: when all are, another
/// worker joins.
const SATURATED: f64 = 0.8;
/// When the active workers' total load would keep one fewer at most this busy, one leaves.
const RELAXED: f64 = 0.4;

/// The workers' CPU clocks and how many of them take new connections.
pub(crate) struct Steering {
    active: AtomicUsize,
    /// Each worker's CPU-time clock (`pthread_getcpuclockid`), set when its thread starts.
    clocks: Box<[AtomicI32]>,
    /// A copy of one socket of each listener's `SO_REUSEPORT` group (the program belongs to
    /// the group).
    groups: Vec<std::net::TcpListener>,
}

/// No clock yet (the worker's thread has not started).
const NO_CLOCK: i32 = i32::MIN;

impl Steering {
    /// Starts with one active worker. A listener without `SO_REUSEPORT` (one handed in that
    /// tenement did not bind) has no group: every worker accepts from it, and an inactive
    /// one hands what it accepts over (`workers.rs`); with no group at all, every worker is
    /// active.
    pub(crate) fn new(
        workers: usize,
        listeners: &[std::net::TcpListener],
    ) -> std::io::Result<Arc<Steering>> {
        let mut groups = Vec::new();
        for listener in listeners {
            if socket2::SockRef::from(listener).reuse_port()? {
                groups.push(listener.try_clone()?);
            }
        }
        // Left to the kernel's own spreading (no group, or it refused the program), every
        // worker takes its share: the balance cannot change.
        let steerable = workers > 1
            && !groups.is_empty()
            && groups
                .iter()
                .try_for_each(|group| attach(group, 1))
                .inspect_err(|error| {
                    tracing::warn!("new connections go to every proxy worker: {error}");
                })
                .is_ok();
        if !steerable {
            groups.clear();
        }
        let active = if steerable { 1 } else { workers };
        Ok(Arc::new(Steering {
            active: AtomicUsize::new(active),
            clocks: (0..workers).map(|_| AtomicI32::new(NO_CLOCK)).collect(),
            groups,
        }))
    }

    /// How many workers (the first ones) take new connections.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Called on worker `index`'s own thread when it starts.
    pub(crate) fn register_worker(&self, index: usize) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `pthread_self` is this live thread; `clock` is a valid out-pointer.
        if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
            self.clocks[index].store(clock, Ordering::Relaxed);
        }
    }

    /// Points every listener's group at the first `active` sockets.
    fn set_active(&self, active: usize) {
        if self.active.swap(active, Ordering::Relaxed) == active {
            return;
        }
        for group in &self.groups {
            if let Err(error) = attach(group, active) {
                tracing::warn!("cannot steer new connections to {active} worker(s): {error}");
            }
        }
        tracing::debug!("{active} proxy worker(s) take new connections");
    }

    /// Adjusts the active workers to the load, every `PERIOD`, for as long as the proxy
    /// serves (the task holds only a weak reference).
    pub(crate) async fn balance(steering: std::sync::Weak<Steering>) {
        if steering
            .upgrade()
            .is_none_or(|steering| steering.groups.is_empty())
        {
            // Nothing to steer: no group, or it refused the program.
            return;
        }
        let mut last: Option<(Instant, Vec<Duration>)> = None;
        loop {
            tokio::time::sleep(PERIOD).await;
            let Some(steering) = steering.upgrade() else {
                return;
            };
            let now = Instant::now();
            let times = steering.cpu_times();
            if let Some((then, before)) = last.replace((now, times.clone())) {
                let wall = now.duration_since(then).as_secs_f64();
                let busy: Vec<f64> = times
                    .iter()
                    .zip(&before)
                    .map(|(now, then)| now.saturating_sub(*then).as_secs_f64() / wall)
                    .collect();
                steering.set_active(next_active(steering.active(), &busy));
            }
        }
    }

    fn cpu_times(&self) -> Vec<Duration> {
        self.clocks
            .iter()
            .map(|clock| match clock.load(Ordering::Relaxed) {
                NO_CLOCK => Duration::ZERO,
                clock => cpu_time(clock),
            })
            .collect()
    }
}

/// The number of active workers the last period's load asks for. `busy`: each worker's
/// share of a CPU over the period.
fn next_active(active: usize, busy: &[f64]) -> usize {
    let active = active.min(busy.len());
    let load = &busy[..active];
    if active < busy.len() && load.iter().all(|&share| share >= SATURATED) {
        return active + 1;
    }
    // Every worker's load counts: connections stay where they were taken.
    let total: f64 = busy.iter().sum();
    if active > 1 && total <= RELAXED * (active - 1) as f64 {
        return active - 1;
    }
    active
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer; an invalid clock only makes the call fail.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Attaches to `group` a program choosing socket `hash % active` (the sockets joined the
/// group in worker order, see `workers::start`).
fn attach(group: &std::net::TcpListener, active: usize) -> std::io::Result<()> {
    let instruction = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        // The ancillary load of the packet's flow hash (SKF_AD_OFF + SKF_AD_RXHASH).
        instruction(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_RXHASH) as u32,
        ),
        instruction(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            u32::try_from(active).unwrap_or(1),
        ),
        instruction(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, alive for the call; the kernel copies it.
    let result = unsafe {
        libc::setsockopt(
            group.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::next_active;

    #[test]
    fn a_worker_joins_when_every_active_one_is_saturated() {
        assert_eq!(next_active(1, &[0.9, 0.0]), 2);
        assert_eq!(next_active(2, &[0.9, 0.5, 0.0]), 2);
        assert_eq!(next_active(2, &[0.9, 0.85, 0.0]), 3);
        assert_eq!(next_active(2, &[0.9, 0.85]), 2, "no more workers to add");
    }

    #[test]
    fn a_worker_leaves_when_the_rest_would_do() {
        assert_eq!(next_active(2, &[0.2, 0.1]), 1);
        assert_eq!(next_active(2, &[0.3, 0.3]), 2);
        assert_eq!(next_active(1, &[0.0, 0.0]), 1, "never fewer than one");
        assert_eq!(next_active(3, &[0.5, 0.2, 0.1, 0.0]), 2);
    }
}
