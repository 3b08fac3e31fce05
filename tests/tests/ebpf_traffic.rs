//! The foundation's kernel program, end to end: a child process in a fresh cgroup exchanges a
//! known number of bytes over 127.0.0.1 and the cgroup_skb counters report them.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Command, Stdio},
};

use tenement::monitor::{KernelCounters, Monitor};
use tenement_tests::privileged;

/// A cgroup v2 directory made for this test, removed (after its processes end) on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create(name: &str) -> TestCgroup {
        let root = cgroup2_mount();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("process has a cgroup v2 path")
            .trim_start_matches('/')
            .to_string();
        let path = root
            .join(own)
            .join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TestCgroup(path)
    }
    fn id(&self) -> u64 {
        std::fs::metadata(&self.0).unwrap().ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount")
}

#[test]
fn cgroup_skb_counts_a_known_exchange() {
    if !privileged("cgroup_skb_counts_a_known_exchange") {
        return;
    }
    let subtree = TestCgroup::create("tenement-test-skb");
    let instance = TestCgroup(subtree.0.join("instance"));
    std::fs::create_dir(&instance.0).unwrap();
    let mut monitor = Monitor::start(&subtree.0);
    assert_eq!(
        monitor.kernel_counters(),
        &KernelCounters::Active,
        "eBPF programs must load and attach as root"
    );
    monitor.register(instance.id()).unwrap();

    // The host side of the exchange stays outside the instance cgroup.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    const SENT: usize = 200_000;
    const RECEIVED: usize = 50_000;

    // The child joins the cgroup before exec, so every packet of its socket is its own.
    let client = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"x" * {SENT})
s.shutdown(socket.SHUT_WR)
got = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    got += len(b)
assert got == {RECEIVED}, got
"#
    );
    let script = format!(
        "echo $$ > {procs} && exec /usr/bin/python3 -c \"$0\"",
        procs = instance.0.join("cgroup.procs").display()
    );
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(client)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len(), SENT);
    conn.write_all(&vec![b'y'; RECEIVED]).unwrap();
    drop(conn);
    assert!(child.wait().unwrap().success());

    let counted = monitor
        .traffic(instance.id())
        .expect("instance is registered");
    // Counted at the IP layer: payload plus IPv4 + TCP headers (52 bytes a segment with
    // timestamps), plus the handshake and teardown segments.
    let tx_overhead = counted.tx_bytes as i64 - SENT as i64;
    let rx_overhead = counted.rx_bytes as i64 - RECEIVED as i64;
    assert!(
        tx_overhead >= 0 && tx_overhead <= counted.tx_packets as i64 * 60,
        "tx {} for {SENT} bytes sent in {} packets",
        counted.tx_bytes,
        counted.tx_packets
    );
    assert!(
        rx_overhead >= 0 && rx_overhead <= counted.rx_packets as i64 * 60,
        "rx {} for {RECEIVED} bytes received in {} packets",
        counted.rx_bytes,
        counted.rx_packets
    );
    assert!(counted.last_activity_ns > 0);

    // Traffic of the host (this test process, outside the cgroup) is not attributed to it.
    let before = monitor.traffic(instance.id()).unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = TcpStream::connect(other.local_addr().unwrap()).unwrap();
    s.write_all(&[0; 10_000]).unwrap();
    drop(s);
    assert_eq!(monitor.traffic(instance.id()).unwrap(), before);

    monitor.unregister(instance.id());
    assert!(monitor.traffic(instance.id()).is_none());
    drop(monitor);
    drop(instance);
}
