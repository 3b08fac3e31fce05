//! Blue-green end to end (issue 6): while a load loop sends requests through the proxy to
//! `api.localhost`, `deploy api --version v2` starts the new version without traffic and
//! `route api --from v1 --to v2` moves all of it. No request may fail during the swap.

mod api_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use api_support::{Daemon, PATIENCE};
use tenement_tests::privileged;

/// What one request through the proxy gave: the body of a 2xx, or why it failed.
type Outcome = Result<String, String>;

/// One `GET /` with `Host: api.localhost` through the public listener.
fn get_through_proxy(port: u16) -> Outcome {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: api.localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {raw:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    if (200..300).contains(&status) {
        Ok(body.trim().to_string())
    } else {
        Err(format!("status {status}: {}", body.trim()))
    }
}

/// Sequential requests until `stop` is set (or a safety bound), each outcome recorded.
struct LoadLoop {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LoadLoop {
    fn start(port: u16) -> LoadLoop {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (outcomes, stop) = (outcomes.clone(), stop.clone());
            thread::spawn(move || {
                // Bounded so that a test that loses track of it cannot spin forever.
                let deadline = Instant::now() + 4 * PATIENCE;
                for _ in 0..200_000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        break;
                    }
                    let outcome = get_through_proxy(port);
                    outcomes.lock().unwrap().push(outcome);
                }
            })
        };
        LoadLoop {
            outcomes,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Waits until `more` requests beyond `from` have completed.
    fn wait_for(&self, from: usize, more: usize, daemon: &Daemon) {
        let deadline = Instant::now() + PATIENCE;
        while self.count() < from + more {
            assert!(
                Instant::now() < deadline,
                "the load loop made no progress ({} requests)\n{}",
                self.count(),
                daemon.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

impl Drop for LoadLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn blue_green_swap_under_load_fails_no_request() {
    if !privileged("blue_green_swap_under_load_fails_no_request") {
        return;
    }
    let mut daemon = Daemon::start("api-bluegreen");
    daemon.ok(&["deploy", "api", "--version", "v1", "--weight", "100"]);
    let port = daemon.http_port;
    daemon.wait_until("api:v1 answers through the proxy", |_| {
        get_through_proxy(port).is_ok()
    });

    let load = LoadLoop::start(port);
    load.wait_for(0, 20, &daemon);

    let deployed = daemon.ok(&["deploy", "api", "--version", "v2"]);
    assert!(
        deployed.contains("weights: api:v1 100, api:v2 0"),
        "{deployed}"
    );
    // v2 runs with weight 0: the loop keeps getting v1 between deploy and route.
    let deployed_at = load.count();
    load.wait_for(deployed_at, 20, &daemon);

    let routing_at = load.count();
    let routed = daemon.ok(&["route", "api", "--from", "v1", "--to", "v2"]);
    assert_eq!(routed.trim(), "api weights: api:v1 0, api:v2 100");
    let routed_at = load.count();
    load.wait_for(routed_at, 50, &daemon);

    let outcomes = load.finish();
    let failures: Vec<(usize, &String)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(index, outcome)| outcome.as_ref().err().map(|error| (index, error)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the swap (deploy at #{deployed_at}, route \
         #{routing_at}..#{routed_at}): {:?}\n{}",
        failures.len(),
        outcomes.len(),
        &failures[..failures.len().min(10)],
        daemon.log_tail()
    );
    let bodies: Vec<&str> = outcomes.iter().map(|o| o.as_deref().unwrap()).collect();
    let not_v1: Vec<(usize, &str)> = bodies[..routing_at]
        .iter()
        .enumerate()
        .filter(|(_, body)| **body != "hello from v1")
        .map(|(index, body)| (index, *body))
        .collect();
    assert!(
        not_v1.is_empty(),
        "before the route every answer should come from v1: {not_v1:?}"
    );
    // The swap is one step: once v2 has answered, v1 never answers again.
    if let Some(first_v2) = bodies.iter().position(|body| *body == "hello from v2") {
        let back: Vec<usize> = (first_v2..bodies.len())
            .filter(|&index| bodies[index] != "hello from v2")
            .collect();
        assert!(
            back.is_empty(),
            "v2 first answered #{first_v2}, yet #{back:?} did not come from v2"
        );
    }
    let last = &bodies[bodies.len() - 30..];
    assert!(
        last.iter().all(|body| *body == "hello from v2"),
        "after the route the answers should come from v2, the last 30 were: {last:?}"
    );
    eprintln!(
        "{} requests, none failed; route between #{routing_at} and #{routed_at}",
        outcomes.len()
    );
}
