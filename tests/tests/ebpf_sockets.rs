//! TCP sockets of an instance as the kernel programs see them: connections opened and closed
//! in both directions, the listen event, resets and retransmissions. Each test runs a real
//! Python process in a real cgroup against sockets of the test process (the "host").

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};
use tenement::monitor::{next_listen, KernelCounters, KernelStats, Monitor};
use tenement_tests::{
    cgroup::{TestCgroup, TestChild},
    free_port, privileged,
};

/// A monitor on a fresh subtree with one registered instance cgroup.
struct Setup {
    monitor: Monitor,
    instance: TestCgroup,
    _subtree: TestCgroup,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let subtree = TestCgroup::create(label);
        let instance = subtree.child("instance");
        let monitor = Monitor::start(&subtree.path);
        assert_eq!(
            monitor.kernel_counters(),
            &KernelCounters::Active,
            "eBPF programs must load and attach as root"
        );
        monitor.register(instance.id()).unwrap();
        Setup {
            monitor,
            instance,
            _subtree: subtree,
        }
    }

    fn python(&self, script: &str) -> TestChild {
        self.instance.spawn(
            Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )
    }

    fn stats(&self) -> KernelStats {
        self.monitor
            .stats(self.instance.id())
            .expect("instance is registered")
    }

    /// Waits (generously: the machine is slow and shared) until the counters satisfy `done`.
    fn wait_for(&self, what: &str, done: impl Fn(&KernelStats) -> bool) -> KernelStats {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never happened; {stats:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_line(out: &mut BufReader<ChildStdout>, expected: &str) {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), expected, "child said {line:?}");
}

#[test]
fn connections_are_counted_exactly_both_ways() {
    if !privileged("connections_are_counted_exactly_both_ways") {
        return;
    }
    const K: usize = 7;
    let setup = Setup::new("conns");
    let instance_port = free_port();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let script = format!(
        r#"
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", {instance_port}))
srv.listen(64)
print("listening", flush=True)
accepted = [srv.accept()[0] for _ in range({K})]
outgoing = [socket.create_connection(("127.0.0.1", {host_port})) for _ in range({K})]
print("open", flush=True)
sys.stdin.readline()
for s in accepted + outgoing:
    s.close()
srv.close()
print("closed", flush=True)
sys.stdin.readline()
"#
    );
    let mut child = setup.python(&script);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_line(&mut out, "listening");
    let to_instance: Vec<TcpStream> = (0..K)
        .map(|_| TcpStream::connect(("127.0.0.1", instance_port)).unwrap())
        .collect();
    let from_instance: Vec<TcpStream> = (0..K).map(|_| host.accept().unwrap().0).collect();
    read_line(&mut out, "open");

    let open = setup.wait_for("all connections open", |s| {
        s.inbound_opened == K as u64 && s.outbound_opened == K as u64
    });
    assert_eq!(open.connections_open, 2 * K as u64, "{open:#?}");
    assert_eq!(open.inbound_closed + open.outbound_closed, 0, "{open:#?}");

    // The instance closes its ends; the host closes its own after reading EOF, which
    // completes each teardown (the instance's sockets leave FIN_WAIT2 then).
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    read_line(&mut out, "closed");
    for mut stream in to_instance.into_iter().chain(from_instance) {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
    }
    let closed = setup.wait_for("all connections closed", |s| {
        s.inbound_closed == K as u64 && s.outbound_closed == K as u64
    });
    assert_eq!(closed.inbound_opened, K as u64, "{closed:#?}");
    assert_eq!(closed.outbound_opened, K as u64, "{closed:#?}");
    assert_eq!(closed.connections_open, 0, "{closed:#?}");
    assert_eq!(
        closed.resets(),
        0,
        "an orderly close sends no reset: {closed:#?}"
    );
}

#[test]
fn listening_produces_an_event_with_the_port() {
    if !privileged("listening_produces_an_event_with_the_port") {
        return;
    }
    let setup = Setup::new("listen");
    // Subscribed before the instance starts, as the supervisor does.
    let mut events = setup.monitor.listen_events();
    // The host listening is nobody's event.
    let _host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let _child = setup.python(&format!(
        r#"
import socket, sys
srv = socket.socket()
srv.bind(("127.0.0.1", {port}))
srv.listen(16)
sys.stdin.readline()
"#
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let instance = setup.instance.id();
    let waiting = async {
        tokio::time::timeout(Duration::from_secs(20), next_listen(&mut events, instance)).await
    };
    let event = runtime
        .block_on(waiting)
        .unwrap_or_else(|_| panic!("no listen event for port {port}"))
        .expect("the monitor is running");
    assert_eq!(event.cgroup_id, setup.instance.id());
    assert_eq!(event.port, port);
}

#[test]
fn refused_connect_counts_a_received_reset() {
    if !privileged("refused_connect_counts_a_received_reset") {
        return;
    }
    let setup = Setup::new("rst-in");
    let closed_port = free_port();
    let mut child = setup.python(&format!(
        r#"
import socket
try:
    socket.create_connection(("127.0.0.1", {closed_port}))
except ConnectionRefusedError:
    print("refused", flush=True)
"#
    ));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_line(&mut out, "refused");
    let stats = setup.wait_for("reset received", |s| s.resets_received >= 1);
    assert_eq!(stats.resets_sent, 0, "{stats:#?}");
    assert_eq!(
        stats.connections_opened(),
        0,
        "never established: {stats:#?}"
    );
}

#[test]
fn abortive_close_counts_a_sent_reset() {
    if !privileged("abortive_close_counts_a_sent_reset") {
        return;
    }
    let setup = Setup::new("rst-out");
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let mut child = setup.python(&format!(
        r#"
import socket, struct
s = socket.create_connection(("127.0.0.1", {host_port}))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print("aborted", flush=True)
"#
    ));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_line(&mut out, "aborted");
    let stats = setup.wait_for("reset sent", |s| s.resets_sent >= 1);
    assert_eq!(stats.outbound_opened, 1, "{stats:#?}");
    // A reset is a close too.
    let stats = setup.wait_for("aborted connection closed", |s| s.outbound_closed == 1);
    assert_eq!(stats.connections_open, 0, "{stats:#?}");
    drop(host);
}

#[test]
fn dropped_syn_counts_a_retransmit() {
    if !privileged("dropped_syn_counts_a_retransmit") {
        return;
    }
    let setup = Setup::new("retrans");
    // A host listener with a zero backlog and one unaccepted connection: its accept queue is
    // full, so the kernel drops further SYNs and the instance has to send its SYN again.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let address: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&address.into()).unwrap();
    listener.listen(0).unwrap();
    let address = listener.local_addr().unwrap().as_socket().unwrap();
    let _filler = TcpStream::connect(address).unwrap();
    let _child = setup.python(&format!(
        r#"
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=60)
except OSError:
    pass
"#,
        port = address.port()
    ));
    let stats = setup.wait_for("SYN retransmitted", |s| s.retransmits >= 1);
    assert_eq!(stats.resets(), 0, "{stats:#?}");
}
