//! Is an instance up? Its port accepts connections and, when the service has a `health`
//! path, `GET {health}` answers 2xx. And does the kernel see it in trouble? A storm of TCP
//! retransmits or resets on its sockets makes it `degraded` until the storm passes.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Notify,
    time::timeout,
};

use crate::{endpoint::Endpoint, monitor::Rates};

/// How often a starting instance's port is tried: short, so a fast app is seen ready fast.
const CONNECT_POLL: Duration = Duration::from_millis(15);
/// One health request may take this long at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a health answer read before giving up on its end...
const MAX_ANSWER: usize = 1024 * 1024;
/// ...or how long it may pause (a server that ignores `Connection: close`).
const ANSWER_PAUSE: Duration = Duration::from_millis(200);

/// Returns once the endpoint accepts a connection, or once `listening` is notified (the
/// kernel saw the instance start listening on TCP; a unix socket is only ever polled, so
/// that another TCP listener of the app cannot make it look ready). Runs until cancelled.
pub async fn wait_listening(endpoint: &Endpoint, listening: &Notify) {
    let polling = async {
        loop {
            if accepts(endpoint).await {
                return;
            }
            tokio::time::sleep(CONNECT_POLL).await;
        }
    };
    let kernel_says = async {
        match endpoint {
            Endpoint::Port(_) => listening.notified().await,
            Endpoint::Unix { .. } | Endpoint::Peer(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = polling => {}
        () = kernel_says => {}
    }
}

async fn accepts(endpoint: &Endpoint) -> bool {
    matches!(
        timeout(CONNECT_POLL * 10, endpoint.connect()).await,
        Ok(Ok(_))
    )
}

/// One check: the endpoint accepts, and `GET path` (if any) answers 2xx. The error says
/// what failed, for the instance's log.
pub async fn check(endpoint: &Endpoint, path: Option<&str>, wait: Duration) -> Result<(), String> {
    let wait = wait.min(PROBE_TIMEOUT);
    let at = Place(endpoint);
    match path {
        None => match timeout(wait, endpoint.connect()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!("{at} refused a connection: {err}")),
            Err(_) => Err(format!("{at} did not accept within {wait:?}")),
        },
        Some(path) => match timeout(wait, get_status(endpoint, path)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(format!("GET {path} answered {status}")),
            Ok(Err(err)) => Err(format!("GET {path} on {at} failed: {err}")),
            Err(_) => Err(format!("GET {path} on {at} gave no answer within {wait:?}")),
        },
    }
}

/// `port 31000` or `socket /path`, in check failures.
struct Place<'a>(&'a Endpoint);

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Endpoint::Port(port) => write!(f, "port {port}"),
            Endpoint::Unix { path, .. } => write!(f, "socket {}", path.display()),
            Endpoint::Peer(address) => write!(f, "node {address}"),
        }
    }
}

/// The status code of `GET path` at the endpoint (HTTP/1.1, connection closed after).
async fn get_status(endpoint: &Endpoint, path: &str) -> std::io::Result<u16> {
    let mut stream = endpoint.connect().await?;
    let host = match endpoint {
        Endpoint::Port(port) => format!("127.0.0.1:{port}"),
        Endpoint::Unix { .. } => "localhost".to_string(),
        Endpoint::Peer(address) => address.to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tenement-health\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all that matters, but the rest of the answer is read too (bounded,
    // until the server closes or pauses): closing early would make the app fail writing it
    // and log a broken pipe.
    let mut head = Vec::with_capacity(256);
    let mut buffer = [0u8; 4096];
    let mut total = 0usize;
    loop {
        let read = if head.contains(&b'\n') {
            match timeout(ANSWER_PAUSE, stream.read(&mut buffer)).await {
                Ok(read) => read?,
                Err(_) => break,
            }
        } else {
            stream.read(&mut buffer).await?
        };
        if read == 0 || total > MAX_ANSWER {
            break;
        }
        total += read;
        if head.len() < 1024 {
            head.extend_from_slice(&buffer[..read.min(1024 - head.len())]);
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {line:?}"),
            )
        })
}

/// TCP retransmits per second, sustained, from which an instance counts as degraded. A
/// healthy server on a sound network retransmits a handful of segments a second at most;
/// dozens mean packet loss, an overloaded peer or a stalled reader.
pub const RETRANSMITS_PER_SEC_DEGRADED: f64 = 20.0;
/// TCP resets (sent plus received) per second, sustained, from which an instance counts as
/// degraded: connections refused or aborted in bulk (a dependency down, a crash loop behind
/// it, a client flood it cannot take). Browsers aborting the odd connection stay far below.
pub const RESETS_PER_SEC_DEGRADED: f64 = 50.0;
/// Samples in a row over a threshold before it counts as a storm: one burst is not.
pub const STORM_SAMPLES: u32 = 2;
/// Samples in a row under every threshold before a storm counts as over.
pub const CALM_SAMPLES: u32 = 5;

/// What the kernel's TCP counters say about one process of an instance, fed one sample of
/// rates at a time. Hysteresis on both edges keeps a borderline rate from flapping the state.
#[derive(Debug, Default)]
pub struct KernelHealth {
    stormy: u32,
    calm: u32,
    reason: Option<String>,
}

impl KernelHealth {
    /// Takes the rates of the last interval; returns the reason while the instance is in a
    /// storm (`kernel: 140 TCP retransmits/s`), `None` otherwise.
    pub fn observe(&mut self, rates: &Rates) -> Option<&str> {
        match storm(rates) {
            Some(reason) => {
                self.calm = 0;
                self.stormy = self.stormy.saturating_add(1);
                if self.stormy >= STORM_SAMPLES {
                    // The latest value: what `ps` shows follows the storm.
                    self.reason = Some(reason);
                }
            }
            None => {
                self.stormy = 0;
                self.calm = self.calm.saturating_add(1);
                if self.calm >= CALM_SAMPLES {
                    self.reason = None;
                }
            }
        }
        self.reason.as_deref()
    }
}

/// The counters over their thresholds in these rates, named with their values.
fn storm(rates: &Rates) -> Option<String> {
    let mut over = Vec::new();
    if rates.retransmits_per_sec >= RETRANSMITS_PER_SEC_DEGRADED {
        over.push(format!(
            "{:.0} TCP retransmits/s",
            rates.retransmits_per_sec
        ));
    }
    if rates.resets_per_sec >= RESETS_PER_SEC_DEGRADED {
        over.push(format!("{:.0} TCP resets/s", rates.resets_per_sec));
    }
    (!over.is_empty()).then(|| format!("kernel: {}", over.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static str) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = Endpoint::Port(listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    fn rates(retransmits: f64, resets: f64) -> Rates {
        Rates {
            interval_secs: 1.0,
            retransmits_per_sec: retransmits,
            resets_per_sec: resets,
            ..Default::default()
        }
    }

    #[test]
    fn a_sustained_storm_degrades_until_it_passes() {
        let mut health = KernelHealth::default();
        assert_eq!(health.observe(&rates(0.0, 0.0)), None);
        assert_eq!(
            health.observe(&rates(140.0, 0.0)),
            None,
            "one burst is no storm"
        );
        assert_eq!(
            health.observe(&rates(140.0, 0.0)),
            Some("kernel: 140 TCP retransmits/s")
        );
        assert_eq!(
            health.observe(&rates(30.0, 400.0)),
            Some("kernel: 30 TCP retransmits/s, 400 TCP resets/s")
        );
        for _ in 1..CALM_SAMPLES {
            assert!(health.observe(&rates(1.0, 2.0)).is_some(), "not calm yet");
        }
        assert_eq!(health.observe(&rates(1.0, 2.0)), None);
    }

    #[test]
    fn a_calm_sample_interrupts_the_count_towards_a_storm() {
        let mut health = KernelHealth::default();
        for _ in 0..5 {
            assert_eq!(health.observe(&rates(0.0, 60.0)), None);
            assert_eq!(health.observe(&rates(0.0, 0.0)), None);
        }
        assert_eq!(
            health.observe(&rates(0.0, 49.0)),
            None,
            "under the threshold"
        );
    }

    #[tokio::test]
    async fn health_needs_a_2xx_answer() {
        let ok = server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = server("HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let garbage = server("hello\n").await;
        let wait = Duration::from_secs(2);
        assert_eq!(check(&ok, Some("/health"), wait).await, Ok(()));
        assert!(check(&bad, Some("/health"), wait)
            .await
            .unwrap_err()
            .contains("503"));
        assert!(check(&garbage, Some("/h"), wait).await.is_err());
        assert_eq!(check(&ok, None, wait).await, Ok(()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            Endpoint::Port(l.local_addr().unwrap().port())
        };
        assert!(check(&closed, None, wait).await.is_err());
    }

    #[tokio::test]
    async fn health_over_a_unix_socket() {
        let dir = crate::test_support::TempDir::new("health-unix");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("app.sock");
        let endpoint = Endpoint::Unix {
            path: path.clone().into(),
            // SAFETY: geteuid has no preconditions.
            owner: unsafe { libc::geteuid() },
        };
        let wait = Duration::from_secs(2);
        let err = check(&endpoint, Some("/health"), wait).await.unwrap_err();
        assert!(err.contains(&format!("socket {}", path.display())), "{err}");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let asked = String::from_utf8_lossy(&request[..n]).into_owned();
                let answer = if asked.contains("Host: localhost\r\n") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 400 Bad\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        wait_listening(&endpoint, &Notify::new()).await;
        assert_eq!(check(&endpoint, Some("/health"), wait).await, Ok(()));
        assert_eq!(check(&endpoint, None, wait).await, Ok(()));
    }
}
