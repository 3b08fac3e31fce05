//! `tenement serve --no-kernel-counters`: the daemon runs without its eBPF programs, says
//! so, and still starts and serves instances (readiness by connect polling).

mod api_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use api_support::{api_service, Daemon, APP, PATIENCE};
use tenement_tests::Scratch;

#[test]
fn no_kernel_counters_serves_and_says_why() {
    let scratch = Scratch::new("serve-no-kernel-counters");
    let app = scratch.write("app.py", APP);
    let mut daemon =
        Daemon::start_serving(scratch, &api_service(&app), &[], &["--no-kernel-counters"]);

    let status = daemon.ok(&["status"]);
    assert!(
        status.contains("kernel counters: off: disabled with --no-kernel-counters"),
        "{status}"
    );

    // Without listen events only the connect poll can see the instance become ready.
    daemon.ok(&["spawn", "api:alice"]);
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.http_port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: alice.api.localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.split_whitespace().nth(1), Some("200"), "{answer}");
    assert!(answer.ends_with("hello from alice\n"), "{answer}");
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "running");
    daemon.stop();
}

/// `cgroup_favordynmods` (on by default): a root daemon leaves the cgroup v2 hierarchy
/// mounted with `favordynmods`, so joining a cgroup does not wait on the request path.
#[test]
fn a_root_daemon_asks_for_fast_cgroup_moves() {
    if !tenement_tests::privileged("a_root_daemon_asks_for_fast_cgroup_moves") {
        return;
    }
    let scratch = Scratch::new("serve-favordynmods");
    let app = scratch.write("app.py", APP);
    let mut daemon = Daemon::start_serving(scratch, &api_service(&app), &[], &[]);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let cgroup2 = mounts
        .lines()
        .find(|line| line.split_whitespace().nth(2) == Some("cgroup2"))
        .expect("a cgroup v2 hierarchy");
    assert!(
        cgroup2
            .split_whitespace()
            .nth(3)
            .is_some_and(|options| options.split(',').any(|o| o == "favordynmods")),
        "{cgroup2}"
    );
    daemon.stop();
}
