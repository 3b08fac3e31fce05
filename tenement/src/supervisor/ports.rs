//! Ports for instances, from `port_range`: each one checked free by binding it, and never
//! handed out again while its lease lives.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, TcpListener},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};

/// Every port of `port_range` is leased or in use on the host. Not a configuration problem:
/// the run loop waits for a port to free up.
#[derive(Debug, thiserror::Error)]
#[error(
    "no free port left in port_range [{low}, {high}]: {leased} are held by instances, the \
     rest are in use on this host"
)]
pub struct NoFreePort {
    pub low: u16,
    pub high: u16,
    pub leased: usize,
}

#[derive(Clone)]
pub struct PortAllocator {
    inner: Arc<Mutex<State>>,
}

struct State {
    low: u16,
    high: u16,
    /// Where the next search starts: ports are handed out round-robin, so a port just
    /// released (its old owner's connections still closing) is the last to be reused.
    next: u16,
    leased: HashSet<u16>,
}

/// A port held by one instance; released on drop.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    allocator: PortAllocator,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Debug for PortAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortAllocator")
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.allocator.lock().leased.remove(&self.port);
    }
}

impl PortAllocator {
    pub fn new(range: [u16; 2]) -> PortAllocator {
        let [low, high] = range;
        PortAllocator {
            inner: Arc::new(Mutex::new(State {
                low,
                high,
                next: low,
                leased: HashSet::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A port of the range that no lease holds and nothing on the host listens on.
    pub fn lease(&self) -> Result<PortLease> {
        let mut state = self.lock();
        let (low, high) = (state.low, state.high);
        if low == 0 || low > high {
            bail!("port_range [{low}, {high}] is empty or starts at 0");
        }
        let size = u32::from(high - low) + 1;
        for step in 0..size {
            let port = (u32::from(state.next - low) + step) % size + u32::from(low);
            let port = port as u16;
            if state.leased.contains(&port) || !is_free(port) {
                continue;
            }
            state.leased.insert(port);
            state.next = if port == high { low } else { port + 1 };
            return Ok(PortLease {
                port,
                allocator: self.clone(),
            });
        }
        Err(NoFreePort {
            low,
            high,
            leased: state.leased.len(),
        }
        .into())
    }

    /// A lease of a free port together with what `bind` made of it (a socket listening on
    /// it). The port was free when checked, but any process of the host can take it before
    /// `bind` runs: then the next free port is tried, a few times, instead of failing.
    pub fn lease_bound<T>(
        &self,
        mut bind: impl FnMut(u16) -> std::io::Result<T>,
    ) -> Result<(PortLease, T)> {
        const TRIES: usize = 8;
        let mut taken = 0;
        loop {
            let lease = self.lease()?;
            match bind(lease.port()) {
                Ok(bound) => return Ok((lease, bound)),
                Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && taken + 1 < TRIES => {
                    taken += 1;
                    tracing::debug!("port {} was taken meanwhile: {err}", lease.port());
                }
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("listening on 127.0.0.1:{}", lease.port()))
                }
            }
        }
    }

    /// A lease of exactly `port` (a held socket handed over by the previous tenement, or an
    /// adopted instance, is already bound to it, so it is not checked free); `None` if it is
    /// leased already.
    pub fn claim(&self, port: u16) -> Option<PortLease> {
        let mut state = self.lock();
        if !state.leased.insert(port) {
            return None;
        }
        Some(PortLease {
            port,
            allocator: self.clone(),
        })
    }
}

/// Nothing listens on 127.0.0.1:port nor on the wildcard address.
fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_range(size: u16) -> [u16; 2] {
        // A range whose ports are all free right now.
        loop {
            let base = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if base > 60000 {
                continue;
            }
            if (base..base + size).all(is_free) {
                return [base, base + size - 1];
            }
        }
    }

    #[test]
    fn a_port_taken_before_it_is_bound_is_passed_over() {
        let ports = PortAllocator::new(free_range(3));
        let mut seen = Vec::new();
        let (lease, bound) = ports
            .lease_bound(|port| {
                seen.push(port);
                if seen.len() == 1 {
                    Err(std::io::ErrorKind::AddrInUse.into())
                } else {
                    Ok(port)
                }
            })
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert_ne!(seen[0], seen[1]);
        assert_eq!((lease.port(), bound), (seen[1], seen[1]));

        // Anything else is an error at once, naming the port.
        let err = ports
            .lease_bound(|_| Err::<(), _>(std::io::ErrorKind::PermissionDenied.into()))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("listening on 127.0.0.1:"),
            "{err:#}"
        );
    }

    #[test]
    fn never_hands_out_a_port_twice() {
        let range = free_range(3);
        let ports = PortAllocator::new(range);
        let a = ports.lease().unwrap();
        let b = ports.lease().unwrap();
        let c = ports.lease().unwrap();
        let mut all = vec![a.port(), b.port(), c.port()];
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3);
        assert!(ports.lease().is_err(), "the range is exhausted");
        let released = b.port();
        drop(b);
        assert_eq!(ports.lease().unwrap().port(), released);
    }

    #[test]
    fn skips_ports_in_use_on_the_host() {
        let range = free_range(2);
        let _taken = TcpListener::bind(("127.0.0.1", range[0])).unwrap();
        let ports = PortAllocator::new(range);
        assert_eq!(ports.lease().unwrap().port(), range[1]);
    }
}
