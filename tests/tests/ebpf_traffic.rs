//! Socket traffic counted by the kernel: a child process in an instance cgroup exchanges a
//! known number of bytes over 127.0.0.1 and the cgroup_skb counters report them, and only
//! them: another instance's exchange and the host's own traffic are not attributed to it.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
};

use tenement::monitor::{KernelCounters, Monitor};
use tenement_tests::{cgroup::TestCgroup, privileged};

/// Counted at the IP layer: every segment carries an IPv4 header (20 bytes) and a TCP header
/// with timestamps (32 bytes); SYNs carry 40 bytes of options. 60 bytes a packet bounds it.
const HEADER_BYTES_PER_PACKET: u64 = 60;

/// The instance sends `sent` bytes to a listener of the test process (outside any instance)
/// and reads `received` bytes back.
fn exchange(instance: &TestCgroup, sent: usize, received: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"x" * {sent})
s.shutdown(socket.SHUT_WR)
got = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    got += len(b)
assert got == {received}, got
"#
    );
    let mut child = instance.spawn(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(client)
            .stdin(Stdio::null()),
    );
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len(), sent);
    conn.write_all(&vec![b'y'; received]).unwrap();
    drop(conn);
    assert!(child.wait().unwrap().success());
}

fn assert_counted(what: &str, bytes: u64, packets: u64, payload: usize) {
    let payload = payload as u64;
    let most = payload + payload / 20 + packets * HEADER_BYTES_PER_PACKET;
    assert!(
        bytes >= payload && bytes <= most,
        "{what}: {bytes} bytes in {packets} packets for {payload} bytes of payload \
         (expected {payload}..={most})"
    );
}

#[test]
fn traffic_is_counted_per_instance() {
    if !privileged("traffic_is_counted_per_instance") {
        return;
    }
    let subtree = TestCgroup::create("traffic");
    let alice = subtree.child("alice");
    let bob = subtree.child("bob");
    let monitor = Monitor::start(&subtree.path);
    assert_eq!(
        monitor.kernel_counters(),
        &KernelCounters::Active,
        "eBPF programs must load and attach as root"
    );
    monitor.register(alice.id()).unwrap();
    monitor.register(bob.id()).unwrap();

    const SENT: usize = 200_000;
    const RECEIVED: usize = 50_000;
    exchange(&alice, SENT, RECEIVED);
    let counted = monitor.stats(alice.id()).expect("alice is registered");
    assert_counted("alice tx", counted.tx_bytes, counted.tx_packets, SENT);
    assert_counted("alice rx", counted.rx_bytes, counted.rx_packets, RECEIVED);
    assert!(counted.last_activity_ns > 0);
    assert!(counted.idle_for().is_some());
    assert_eq!(
        monitor.traffic(alice.id()).unwrap().tx_bytes,
        counted.tx_bytes
    );

    // Another instance's exchange shows up there, not in alice's counters.
    exchange(&bob, 30_000, 70_000);
    assert_eq!(monitor.stats(alice.id()).unwrap(), counted);
    let bob_counted = monitor.stats(bob.id()).unwrap();
    assert_counted(
        "bob tx",
        bob_counted.tx_bytes,
        bob_counted.tx_packets,
        30_000,
    );
    assert_counted(
        "bob rx",
        bob_counted.rx_bytes,
        bob_counted.rx_packets,
        70_000,
    );

    // Traffic of the host (this test process, outside every instance) is nobody's.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = TcpStream::connect(other.local_addr().unwrap()).unwrap();
    s.write_all(&[0; 10_000]).unwrap();
    drop(s);
    assert_eq!(monitor.stats(alice.id()).unwrap(), counted);
    assert_eq!(monitor.stats(bob.id()).unwrap(), bob_counted);

    // Unregistered: counters gone, and registering again starts from zero.
    monitor.unregister(alice.id());
    assert!(monitor.stats(alice.id()).is_none());
    monitor.register(alice.id()).unwrap();
    assert_eq!(monitor.stats(alice.id()).unwrap().rx_bytes, 0);
}
