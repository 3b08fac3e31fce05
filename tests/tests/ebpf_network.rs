//! The network boundary programs alone, on a real cgroup: a Python process confined to its
//! port tries what a hostile tenant would, and the kernel refuses (EPERM) and counts it.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, UdpSocket},
    process::{Command, Stdio},
};

use tenement::monitor::{
    Destination, Egress, HostPorts, KernelCounters, Monitor, NetworkIsolation, NetworkPolicy,
};
use tenement_tests::{cgroup::TestCgroup, free_port, free_port_block, privileged};

/// Runs `probes` (Python statements, each printing one line) in a confined cgroup and
/// returns its lines.
fn run_confined(policy: &NetworkPolicy, host: &HostPorts, probes: &str) -> (Vec<String>, Monitor) {
    let subtree = TestCgroup::create("netpolicy");
    let instance = subtree.child("instance");
    let monitor = Monitor::start(&subtree.path);
    assert_eq!(monitor.kernel_counters(), &KernelCounters::Active);
    assert_eq!(monitor.network_isolation(), &NetworkIsolation::Active);
    monitor.set_host_ports(host).unwrap();
    monitor.register(instance.id()).unwrap();
    assert!(monitor.confine(instance.id(), policy).unwrap());
    let script = format!("{PRELUDE}\n{probes}\n");
    let mut child = instance.spawn(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::piped()),
    );
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines = out.lines().map(Result::unwrap).collect();
    let denials = monitor.denials(instance.id());
    assert!(denials.is_some());
    (lines, monitor)
}

const PRELUDE: &str = r#"
import socket, errno
def tcp(family, host, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
def udp(family, host, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (host, port))
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
def bind(family, host, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen(1)
        return "ok " + str(s.getsockname()[0])
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
V4, V6 = socket.AF_INET, socket.AF_INET6
"#;

#[test]
fn binds_only_its_own_port_and_on_loopback() {
    if !privileged("binds_only_its_own_port_and_on_loopback") {
        return;
    }
    let low = free_port_block(10);
    let own = low + 3;
    let policy = NetworkPolicy {
        port: own,
        egress: Egress::Any,
    };
    let host = HostPorts {
        port_range: [low, low + 9],
        private: vec![],
        proxy: vec![],
    };
    let other = free_port();
    let probes = format!(
        "print(bind(V4, '127.0.0.1', {own}))\n\
         print(bind(V4, '0.0.0.0', {own}))\n\
         print(bind(V6, '::', {own}))\n\
         print(bind(V6, '::ffff:0.0.0.0', {own}))\n\
         print(bind(V6, '::ffff:10.1.2.3', {own}))\n\
         print(bind(V4, '127.0.0.1', {neighbour}))\n\
         print(bind(V6, '::1', {neighbour}))\n\
         print(bind(V4, '127.0.0.1', {other}))\n\
         print(bind(V4, '127.0.0.1', 0).split()[0])",
        neighbour = low + 4
    );
    let (lines, _monitor) = run_confined(&policy, &host, &probes);
    assert_eq!(
        lines,
        [
            "ok 127.0.0.1",
            "ok 127.0.0.1",
            "ok ::ffff:127.0.0.1",
            // The v4-mapped any address would listen on every IPv4 interface.
            "ok ::ffff:127.0.0.1",
            "ok ::ffff:127.0.0.1",
            "EPERM",
            "EPERM",
            "EPERM",
            "ok"
        ]
    );
}

#[test]
fn connects_never_reach_a_neighbour_nor_a_private_listener() {
    if !privileged("connects_never_reach_a_neighbour_nor_a_private_listener") {
        return;
    }
    let low = free_port_block(10);
    let neighbour = TcpListener::bind(("127.0.0.1", low + 5)).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let (api, proxy, outside) = (
        api.local_addr().unwrap().port(),
        proxy.local_addr().unwrap().port(),
        outside.local_addr().unwrap().port(),
    );
    let n = low + 5;
    let policy = NetworkPolicy {
        port: low,
        egress: Egress::Any,
    };
    let host = HostPorts {
        port_range: [low, low + 9],
        private: vec![api],
        proxy: vec![proxy],
    };
    let probes = format!(
        "for h in ['127.0.0.1', '127.0.0.2', '0.0.0.0']: print(tcp(V4, h, {n}))\n\
         for h in ['::1', '::ffff:127.0.0.1', '::']: print(tcp(V6, h, {n}))\n\
         print(udp(V4, '127.0.0.1', {n}))\n\
         print(tcp(V4, '127.0.0.1', {api}))\n\
         print(tcp(V4, '127.0.0.1', {proxy}))\n\
         print(tcp(V4, '127.0.0.1', {outside}))"
    );
    let (lines, monitor) = run_confined(&policy, &host, &probes);
    assert_eq!(
        lines,
        ["EPERM", "EPERM", "EPERM", "EPERM", "EPERM", "EPERM", "EPERM", "EPERM", "ok", "ok"]
    );
    drop(neighbour);
    let _ = monitor;
}

#[test]
fn egress_none_and_list() {
    if !privileged("egress_none_and_list") {
        return;
    }
    let low = free_port_block(10);
    let listed = TcpListener::bind("127.0.0.1:0").unwrap();
    let unlisted = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (listed, unlisted, udp_port) = (
        listed.local_addr().unwrap().port(),
        unlisted.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let host = HostPorts {
        port_range: [low, low + 9],
        private: vec![],
        proxy: vec![],
    };
    let probes = format!(
        "print(tcp(V4, '127.0.0.1', {listed}))\n\
         print(tcp(V4, '127.0.0.1', {unlisted}))\n\
         print(udp(V4, '127.0.0.1', {udp_port}))\n\
         print(udp(V4, '127.0.0.2', {udp_port}))"
    );
    let none = NetworkPolicy {
        port: low,
        egress: Egress::None,
    };
    let (lines, _m) = run_confined(&none, &host, &probes);
    assert_eq!(lines, ["EPERM", "EPERM", "EPERM", "EPERM"]);
    let list = NetworkPolicy {
        port: low,
        egress: Egress::List(vec![
            Destination {
                address: "127.0.0.1".parse().unwrap(),
                prefix: 32,
                port: Some(listed),
            },
            Destination {
                address: "127.0.0.0".parse().unwrap(),
                prefix: 31,
                port: Some(udp_port),
            },
        ]),
    };
    let (lines, m) = run_confined(&list, &host, &probes);
    assert_eq!(lines, ["ok", "EPERM", "ok", "EPERM"]);
    let _ = m;
}
