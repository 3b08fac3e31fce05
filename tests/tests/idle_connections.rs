//! What keeps an instance awake. With the kernel counting its sockets: traffic does (a
//! WebSocket exchanging messages, the tenant's own outbound requests), an open but silent
//! connection does not. Without kernel counters, the proxy's view decides: an open proxied
//! connection keeps the instance awake.

mod api_support;
mod idle_support;
mod supervisor_common;

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use idle_support::{
    assert_kernel_counters_active, assert_stays_running, configure_api, http, pid, proxy_port,
    wait_state, Http, WebSocket, IDLE_TIMEOUT,
};
use tenement_tests::privileged;

const AWAKE_FOR: Duration = Duration::from_secs(3 * IDLE_TIMEOUT);
const ASLEEP_WITHIN: Duration = Duration::from_secs(10 * IDLE_TIMEOUT);
/// How often the clients and the tenant send something.
const EVERY: Duration = Duration::from_millis(300);

#[test]
fn a_streaming_websocket_keeps_its_instance_awake() {
    if !privileged("a_streaming_websocket_keeps_its_instance_awake") {
        return;
    }
    let mut daemon = idle_support::daemon("idle-ws-stream");
    configure_api(&daemon, &["alice"], "");
    daemon.start();
    assert_kernel_counters_active(&daemon);
    let port = proxy_port(&daemon);

    let mut socket = WebSocket::open(port, "alice.api.localhost");
    let pid = pid(&daemon, "api:alice").expect("alice runs");
    let until = Instant::now() + AWAKE_FOR;
    let mut sent = 0;
    while Instant::now() < until {
        sent += 1;
        assert_eq!(socket.echo(&format!("tick {sent}")), format!("tick {sent}"));
        assert_stays_running(&daemon, "api:alice", pid, EVERY);
    }
    drop(socket);
    // Once the stream ends, the instance sleeps as usual.
    wait_state(&daemon, "api:alice", "sleeping", ASLEEP_WITHIN);
    daemon.stop();
}

#[test]
fn silent_open_connections_do_not_keep_an_instance_awake() {
    if !privileged("silent_open_connections_do_not_keep_an_instance_awake") {
        return;
    }
    let mut daemon = idle_support::daemon("idle-silent");
    configure_api(&daemon, &["bob", "carol"], "");
    daemon.start();
    assert_kernel_counters_active(&daemon);
    let port = proxy_port(&daemon);

    // bob: one request, then the keep-alive connection stays open and quiet.
    let mut keep_alive = Http::connect(port, "bob.api.localhost");
    let (status, bob_pid) = keep_alive.send("GET", "/pid", "").unwrap();
    assert_eq!(status, 200);
    // carol: a WebSocket that says hello once, then nothing.
    let mut quiet = WebSocket::open(port, "carol.api.localhost");
    assert_eq!(quiet.echo("hello"), "hello");

    wait_state(&daemon, "api:bob", "sleeping", ASLEEP_WITHIN);
    wait_state(&daemon, "api:carol", "sleeping", ASLEEP_WITHIN);
    // The WebSocket ends with its instance, it does not hang.
    assert!(quiet.closed(), "the quiet WebSocket is still open");
    // The held keep-alive connection is still usable: the next request wakes bob.
    let (status, woken_pid) = keep_alive
        .send("GET", "/pid", "")
        .expect("the kept-alive connection still works");
    assert_eq!(status, 200, "{woken_pid}");
    assert_ne!(woken_pid, bob_pid, "a new process answers");
    daemon.stop();
}

#[test]
fn a_request_still_being_answered_keeps_its_instance_awake() {
    if !privileged("a_request_still_being_answered_keeps_its_instance_awake") {
        return;
    }
    let mut daemon = idle_support::daemon("idle-long-poll");
    configure_api(&daemon, &["dave"], "");
    daemon.start();
    assert_kernel_counters_active(&daemon);
    let port = proxy_port(&daemon);

    let (status, before) = http(port, "dave.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 200, "{before}");
    // A long poll: nothing crosses the sockets for three idle timeouts, then the answer.
    let slow = format!("/slow/{}", AWAKE_FOR.as_secs());
    let (status, answered_by) = http(port, "dave.api.localhost", "GET", &slow, "");
    assert_eq!(status, 200, "{answered_by}");
    assert_eq!(
        answered_by, before,
        "the process answering the long poll was replaced"
    );
    // Answered, the instance sleeps as usual.
    wait_state(&daemon, "api:dave", "sleeping", ASLEEP_WITHIN);
    daemon.stop();
}

#[test]
fn the_idle_time_shown_leaves_out_tenements_own_probes() {
    if !privileged("the_idle_time_shown_leaves_out_tenements_own_probes") {
        return;
    }
    // No idle_timeout: the instance never sleeps, but its idle time is still shown.
    let mut daemon = idle_support::daemon("idle-shown");
    let app = daemon.app("idle_app.py", idle_support::IDLE_APP);
    daemon.configure(&format!(
        "[service.api]\ncommand = \"/usr/bin/python3 {}\"\nhealth = \"/health\"\n\n\
         [instances]\napi = [\"gina\"]\n",
        app.display()
    ));
    daemon.start();
    assert_kernel_counters_active(&daemon);
    let port = proxy_port(&daemon);

    // Probed every second and nothing else: the idle time grows past the probes.
    let before = wait_idle_for(&daemon, "api:gina", |idle| idle >= 3.0);
    let (status, _) = http(port, "gina.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 200);
    // A request is the tenant's activity: the count starts again.
    wait_idle_for(&daemon, "api:gina", |idle| idle < before);
    daemon.stop();
}

/// Waits until the API shows an idle time of `name` that `wanted` accepts; returns it.
fn wait_idle_for(
    daemon: &supervisor_common::Daemon,
    name: &str,
    wanted: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + supervisor_common::PATIENCE;
    loop {
        let view = idle_support::view(daemon, name);
        if let Some(idle) = view["stats"]["idle_for_secs"].as_f64() {
            if wanted(idle) {
                return idle;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the idle time of {name} never got there: {view}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bare_connect_probes_do_not_keep_an_instance_awake() {
    if !privileged("bare_connect_probes_do_not_keep_an_instance_awake") {
        return;
    }
    // No `health` path: tenement's probe is a bare connect, which the app closes on its
    // own schedule, a moment after the probe returned.
    let mut daemon = idle_support::daemon("idle-bare");
    let app = daemon.app("idle_app.py", idle_support::IDLE_APP);
    daemon.configure(&format!(
        "[service.bare]\ncommand = \"/usr/bin/python3 {}\"\nidle_timeout = {IDLE_TIMEOUT}\n\n\
         [instances]\nbare = [\"frank\"]\n",
        app.display()
    ));
    daemon.start();
    assert_kernel_counters_active(&daemon);
    wait_state(
        &daemon,
        "bare:frank",
        "running",
        supervisor_common::PATIENCE,
    );
    wait_state(&daemon, "bare:frank", "sleeping", ASLEEP_WITHIN);
    daemon.stop();
}

#[test]
fn outbound_requests_keep_the_tenant_awake() {
    if !privileged("outbound_requests_keep_the_tenant_awake") {
        return;
    }
    let upstream = CountingServer::start();
    let mut daemon = idle_support::daemon("idle-outbound");
    configure_api(
        &daemon,
        &["dave"],
        &format!(
            "env = {{ OUTBOUND_URL = \"http://127.0.0.1:{}/\" }}",
            upstream.port
        ),
    );
    daemon.start();
    assert_kernel_counters_active(&daemon);

    // Started with tenement, never asked anything: only its own calls out.
    wait_state(&daemon, "api:dave", "running", supervisor_common::PATIENCE);
    let pid = pid(&daemon, "api:dave").expect("dave runs");
    supervisor_common::eventually("dave's first outbound request", || {
        (upstream.requests() > 0).then_some(())
    });
    let before = upstream.requests();
    assert_stays_running(&daemon, "api:dave", pid, AWAKE_FOR);
    assert!(
        upstream.requests() > before,
        "dave kept calling out meanwhile"
    );
    daemon.stop();
}

#[test]
fn without_kernel_counters_an_open_websocket_keeps_it_awake() {
    if !privileged("without_kernel_counters_an_open_websocket_keeps_it_awake") {
        return;
    }
    let mut daemon = idle_support::daemon("idle-no-kernel");
    daemon.serve_arg("--no-kernel-counters");
    configure_api(&daemon, &["erin"], "");
    daemon.start();
    assert!(
        daemon
            .log()
            .contains("kernel counters: off (disabled with --no-kernel-counters)"),
        "{}",
        daemon.log()
    );
    let port = proxy_port(&daemon);

    let mut quiet = WebSocket::open(port, "erin.api.localhost");
    assert_eq!(quiet.echo("hello"), "hello");
    let pid = pid(&daemon, "api:erin").expect("erin runs");
    assert_stays_running(&daemon, "api:erin", pid, AWAKE_FOR);
    drop(quiet);
    wait_state(&daemon, "api:erin", "sleeping", ASLEEP_WITHIN);
    // And a plain request wakes it again.
    let (status, _) = http(port, "erin.api.localhost", "GET", "/pid", "");
    assert_eq!(status, 200);
    daemon.stop();
}

/// A local HTTP server for the tenant to call: answers everything with 200, counts requests.
struct CountingServer {
    port: u16,
    count: Arc<AtomicUsize>,
}

impl CountingServer {
    fn start() -> CountingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        // The thread ends with the test process; it holds no child process or cgroup.
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        CountingServer { port, count }
    }

    fn requests(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}
