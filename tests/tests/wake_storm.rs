//! No request lost around a start, end to end with the real daemon: a thousand concurrent
//! requests (GETs and 1 MiB uploads) to a sleeping instance are all answered by the app with
//! the right body after exactly one start, at `process` and `namespace` isolation; clients
//! of an instance that crashes or is restarted under steady traffic see no error; a start
//! that fails is a 503 with `Retry-After`, spelled as the client's `Accept` prefers.

mod api_support;
mod idle_support;
mod supervisor_common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use idle_support::{cli, pid, proxy_port, state, view, wait_state, Http};
use supervisor_common::{eventually, Daemon, PATIENCE};
use tenement::store::EventKind;
use tenement_tests::privileged;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STORM_APP: &str = include_str!("../apps/storm_app.py");
const HOST: &str = "alice.api.localhost";
const STORM: usize = 1000;
/// Every fourth request of the storm uploads this much.
const UPLOAD: usize = 1024 * 1024;

/// A daemon with service `api` (the storm app) at `isolation`, instance `alice`, restarts
/// after 100 ms, and `extra` service lines.
fn storm_daemon(label: &str, isolation: &str, extra: &str) -> Daemon {
    let mut daemon = Daemon::new(
        label,
        "domain = \"localhost\"\nbackoff_base_ms = 100\nbackoff_max_ms = 1000",
    );
    let app = daemon.app("storm_app.py", STORM_APP);
    daemon.configure(&format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\
         isolation = \"{isolation}\"\n{extra}\n\n[instances]\napi = [\"alice\"]\n",
        app.display()
    ));
    daemon.start();
    daemon
}

fn spawns(daemon: &Daemon) -> usize {
    daemon
        .kinds("api:alice")
        .into_iter()
        .filter(|kind| *kind == EventKind::Spawned)
        .count()
}

/// The body of upload `i`: a megabyte no other request sends.
fn upload(i: usize) -> Vec<u8> {
    let seed = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut state = seed;
    (0..UPLOAD)
        .map(|_| {
            // xorshift: cheap, and different for every seed.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One request on its own connection (`Connection: close`): status and body.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The storm: `STORM` concurrent requests to the sleeping `api:alice`; every fourth uploads
/// a distinct megabyte and expects its digest back, the others expect their item.
fn storm_at(isolation: &str) {
    let mut daemon = storm_daemon(&format!("storm-{isolation}"), isolation, "idle_timeout = 1");
    let port = proxy_port(&daemon);
    wait_state(&daemon, "api:alice", "sleeping", PATIENCE);
    let before = spawns(&daemon);

    let uploads: Vec<(usize, Arc<Vec<u8>>, String)> = (0..STORM)
        .step_by(4)
        .map(|i| {
            let body = upload(i);
            let digest = sha256_hex(&body);
            (i, Arc::new(body), digest)
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wrong: Vec<String> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..STORM {
            let upload = uploads.get(i / 4).filter(|_| i % 4 == 0).cloned();
            tasks.push(tokio::spawn(async move {
                let (method, path, body, expected) = match &upload {
                    Some((_, body, digest)) => {
                        ("POST", "/digest".to_string(), &body[..], digest.clone())
                    }
                    None => (
                        "GET",
                        format!("/item/{i}"),
                        &[][..],
                        format!("item {i} from "),
                    ),
                };
                let answer =
                    tokio::time::timeout(PATIENCE * 2, request(port, method, &path, body)).await;
                match answer {
                    Ok(Ok((200, text))) if text.starts_with(&expected) => None,
                    other => Some(format!("request {i} ({method} {path}): {other:?}")),
                }
            }));
        }
        let mut wrong = Vec::new();
        for task in tasks {
            if let Some(problem) = task.await.unwrap() {
                wrong.push(problem);
            }
        }
        wrong
    });
    assert!(
        wrong.is_empty(),
        "{} of {STORM} requests went wrong, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(spawns(&daemon) - before, 1, "one start for the whole storm");
    daemon.stop();
}

#[test]
fn a_storm_on_a_sleeping_instance_is_served_whole_by_one_start_process() {
    if !privileged("a_storm_on_a_sleeping_instance_is_served_whole_by_one_start_process") {
        return;
    }
    storm_at("process");
}

#[test]
fn a_storm_on_a_sleeping_instance_is_served_whole_by_one_start_namespace() {
    if !privileged("a_storm_on_a_sleeping_instance_is_served_whole_by_one_start_namespace") {
        return;
    }
    storm_at("namespace");
}

/// Client loops sending `GET /slow/N` (answered after 20 ms) one after the other on kept-alive connections (a new
/// one after an error), counting answers and everything that was not a 2xx.
struct SteadyTraffic {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    problems: Arc<std::sync::Mutex<Vec<String>>>,
    loops: Vec<thread::JoinHandle<()>>,
}

impl SteadyTraffic {
    fn start(port: u16, clients: usize) -> SteadyTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let problems = Arc::new(std::sync::Mutex::new(Vec::new()));
        let loops = (0..clients)
            .map(|client| {
                let (stop, answered, problems) = (stop.clone(), answered.clone(), problems.clone());
                thread::spawn(move || {
                    let mut http = Http::connect(port, HOST);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let path = format!("/slow/{client}-{n}");
                        match http.send("GET", &path, "") {
                            Ok((200, body)) if body.starts_with(&format!("item {client}-{n} ")) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, body)) => {
                                problems
                                    .lock()
                                    .unwrap()
                                    .push(format!("{path}: {status} {body}"));
                            }
                            Err(error) => {
                                problems.lock().unwrap().push(format!("{path}: {error}"));
                                http = Http::connect(port, HOST);
                            }
                        }
                    }
                })
            })
            .collect();
        SteadyTraffic {
            stop,
            answered,
            problems,
            loops,
        }
    }

    /// Waits until `more` further requests have been answered.
    fn wait_answers(&self, more: usize) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        eventually("the clients to be answered", || {
            (self.answered.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops the loops; returns how many were answered and what went wrong.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.loops {
            client.join().unwrap();
        }
        let problems = self.problems.lock().unwrap().clone();
        (self.answered.load(Ordering::Relaxed), problems)
    }
}

/// Waits until `api:alice` runs a process other than `old`; returns it.
fn new_process(daemon: &Daemon, old: u32) -> u32 {
    eventually("a new process of api:alice", || {
        let view = view(daemon, "api:alice");
        let pid = view["pid"].as_u64()? as u32;
        (view["state"] == "running" && pid != old).then_some(pid)
    })
}

#[test]
fn crashes_under_steady_traffic_cost_no_client_an_error() {
    if !privileged("crashes_under_steady_traffic_cost_no_client_an_error") {
        return;
    }
    let mut daemon = storm_daemon("storm-crash", "process", "restart = \"always\"");
    let port = proxy_port(&daemon);
    let traffic = SteadyTraffic::start(port, 8);
    traffic.wait_answers(20);
    let mut current = pid(&daemon, "api:alice").expect("alice runs");
    for _ in 0..4 {
        // SAFETY: kill has no memory-safety preconditions; the pid is the app's.
        unsafe { libc::kill(current as i32, libc::SIGKILL) };
        current = new_process(&daemon, current);
        traffic.wait_answers(50);
    }
    let (answered, problems) = traffic.finish();
    assert!(
        problems.is_empty(),
        "{} of {} requests failed across 4 crashes: {:?}",
        problems.len(),
        answered + problems.len(),
        &problems[..problems.len().min(5)]
    );
    let crashes = daemon
        .kinds("api:alice")
        .into_iter()
        .filter(|kind| *kind == EventKind::Crashed)
        .count();
    assert_eq!(crashes, 4, "every kill is seen as a crash");
    daemon.stop();
}

#[test]
fn restarts_under_steady_traffic_cost_no_client_an_error() {
    if !privileged("restarts_under_steady_traffic_cost_no_client_an_error") {
        return;
    }
    let mut daemon = storm_daemon("storm-restart", "process", "");
    let port = proxy_port(&daemon);
    let traffic = SteadyTraffic::start(port, 8);
    traffic.wait_answers(20);
    let mut current = pid(&daemon, "api:alice").expect("alice runs");
    for _ in 0..3 {
        cli(&daemon, &["restart", "api:alice"]);
        current = new_process(&daemon, current);
        traffic.wait_answers(50);
    }
    let (answered, problems) = traffic.finish();
    assert!(
        problems.is_empty(),
        "{} of {} requests failed across 3 restarts: {:?}",
        problems.len(),
        answered + problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert_eq!(state(&daemon, "api:alice"), "running");
    daemon.stop();
}

/// One request with `accept` (if any): status, headers (lowercase names) and body.
fn get_with_accept(port: u16, host: &str, accept: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE * 2)).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_string())
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
fn a_start_that_fails_is_a_503_with_retry_after_in_the_clients_format() {
    if !privileged("a_start_that_fails_is_a_503_with_retry_after_in_the_clients_format") {
        return;
    }
    let mut daemon = Daemon::new(
        "storm-broken",
        "domain = \"localhost\"\nbackoff_base_ms = 100\nbackoff_max_ms = 200\nmax_restarts = 2",
    );
    daemon.configure(
        "[service.broken]\ncommand = \"/bin/sh -c 'echo cannot open the database; exit 3'\"\n\n\
         [instances]\nbroken = [\"alice\"]\n",
    );
    daemon.start();
    let port = proxy_port(&daemon);
    let host = "alice.broken.localhost";
    // Asked while it is being restarted, then once it has given up (`failed`).
    let mut seen_failed = false;
    for round in 0..20 {
        for (accept, json) in [
            (Some("application/json"), true),
            (Some("text/plain;q=0.5, application/json"), true),
            (Some("text/html,application/xhtml+xml,*/*;q=0.8"), false),
            (None, false),
        ] {
            let (status, head, body) = get_with_accept(port, host, accept);
            assert_eq!(
                status, 503,
                "round {round}, Accept {accept:?}: {head}\n{body}"
            );
            let retry: u64 = header(&head, "retry-after")
                .unwrap_or_else(|| panic!("no Retry-After: {head}"))
                .parse()
                .unwrap();
            assert!(retry >= 1, "{head}");
            let content_type = header(&head, "content-type").unwrap();
            if json {
                assert_eq!(content_type, "application/json", "{accept:?}");
                let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(value["status"], 503);
                let error = value["error"].as_str().unwrap();
                assert!(error.starts_with("instance broken:alice "), "{error}");
            } else {
                assert_eq!(content_type, "text/plain; charset=utf-8", "{accept:?}");
                assert!(body.starts_with("instance broken:alice "), "{body}");
                assert!(!body.contains('<'), "no HTML: {body}");
            }
        }
        if seen_failed {
            break;
        }
        seen_failed = state(&daemon, "broken:alice") == "failed";
        thread::sleep(Duration::from_millis(200));
    }
    assert!(seen_failed, "broken:alice never gave up:\n{}", daemon.log());
    daemon.stop();
}

#[test]
fn a_live_instance_that_hangs_up_unanswered_is_a_502() {
    if !privileged("a_live_instance_that_hangs_up_unanswered_is_a_502") {
        return;
    }
    let mut daemon = storm_daemon("storm-hangup", "process", "");
    let port = proxy_port(&daemon);
    wait_state(&daemon, "api:alice", "running", PATIENCE);
    let before = pid(&daemon, "api:alice").expect("alice runs");
    // Sent twice (a GET may be repeated), then, the process being alive, its hang-up is
    // the answer: no endless wait for a restart that is not coming.
    let (status, body) = idle_support::http(port, HOST, "GET", "/hangup", "");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.starts_with("instance api:alice closed the connection on 127.0.0.1:")
            && body.ends_with("without answering\n"),
        "{body}"
    );
    assert_eq!(pid(&daemon, "api:alice"), Some(before));
    daemon.stop();
}
