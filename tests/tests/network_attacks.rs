//! A hostile tenant against the network boundary, from inside its instance, with the real
//! daemon and the real kernel programs: it tries to reach a neighbour's port directly, to
//! steal it at a crash or a wake, to exhaust `port_range`, to reach the management API, and
//! to get out past its egress policy. Each attack must fail while the neighbour keeps
//! answering through the proxy, never the attacker, and is never left `failed`.

mod api_support;

use std::{
    io::{Read, Write},
    net::{TcpListener, UdpSocket},
    os::linux::net::SocketAddrExt,
    os::unix::net::{SocketAddr as UnixAddr, UnixListener},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use api_support::{Daemon, APP, PATIENCE};
use tenement_tests::{http, privileged, workspace_root, Scratch};

const HOSTILE: &str = "tests/apps/hostile_app.py";
const INSTANCES: &str = "\n[instances]\nvictim = [\"alice\"]\nhostile = [\"mallory\"]\n";

fn hostile_app() -> String {
    workspace_root().join(HOSTILE).display().to_string()
}

/// `victim` (a plain app) and `hostile` (tests/apps/hostile_app.py), both at `isolation`.
fn services(scratch: &Scratch, isolation: &str, hostile_extra: &str) -> String {
    let app = scratch.write("victim.py", APP);
    format!(
        r#"
sandbox_platform = "ptrace"

[service.victim]
command = "/usr/bin/python3 {app}"
health = "/health"
isolation = "{isolation}"
startup_timeout = 60
env = {{ TENANT = "{{id}}" }}

[service.hostile]
command = "/usr/bin/python3 {hostile}"
isolation = "{isolation}"
startup_timeout = 60
env = {{ TENANT = "{{id}}" }}
{hostile_extra}
"#,
        app = app.display(),
        hostile = hostile_app(),
    )
}

/// What the attacker's app answers to `path` (asked through the proxy, like any client).
fn attacker(daemon: &Daemon, path: &str) -> String {
    let (status, body) = http::get(daemon.http_port, "mallory.hostile.localhost", path)
        .unwrap_or_else(|err| panic!("{path}: {err}\n{}", daemon.log_tail()));
    assert_eq!(status, 200, "{path}: {body}\n{}", daemon.log_tail());
    body.trim().to_string()
}

/// The neighbour through the proxy: its answer, or the proxy's status and body.
fn victim(daemon: &Daemon) -> (u16, String) {
    http::get(daemon.http_port, "alice.victim.localhost", "/")
        .map(|(status, body)| (status, body.trim().to_string()))
        .unwrap_or((0, String::new()))
}

fn port_of(daemon: &Daemon, name: &str) -> u16 {
    daemon.instance(name).expect(name)["port"]
        .as_u64()
        .expect("a port") as u16
}

/// Starts both tenants through the proxy and returns the victim's port.
fn start_both(daemon: &mut Daemon) -> u16 {
    daemon.wait_until("the victim answers through the proxy", |d| {
        victim(d) == (200, "hello from alice".to_string())
    });
    daemon.wait_until("the attacker answers through the proxy", |d| {
        http::get(d.http_port, "mallory.hostile.localhost", "/")
            .is_ok_and(|(status, body)| status == 200 && body.contains("mallory"))
    });
    port_of(daemon, "victim:alice")
}

fn neighbour_is_out_of_reach(label: &str, isolation: &str) {
    let scratch = Scratch::new(label);
    let services = services(&scratch, isolation, "") + INSTANCES;
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    let port = start_both(&mut daemon);

    for host in [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ] {
        assert_eq!(
            attacker(&daemon, &format!("/connect?host={host}&port={port}")),
            "EPERM",
            "{isolation}: connect to the neighbour via {host}"
        );
    }
    assert_eq!(
        attacker(&daemon, &format!("/udp?host=127.0.0.1&port={port}")),
        "EPERM"
    );
    assert_eq!(
        attacker(&daemon, &format!("/bind?host=127.0.0.1&port={port}")),
        "EPERM",
        "{isolation}: binding the neighbour's port"
    );
    assert_eq!(
        attacker(
            &daemon,
            &format!("/connect?host=127.0.0.1&port={}", daemon.api_port)
        ),
        "EPERM",
        "{isolation}: the management API's TCP listener"
    );
    // The public listener is open to tenants, and routes like for any client.
    assert_eq!(
        attacker(
            &daemon,
            &format!(
                "/fetch?port={}&host=alice.victim.localhost",
                daemon.http_port
            )
        ),
        "200 hello from alice"
    );
    assert_eq!(victim(&daemon), (200, "hello from alice".to_string()));
    daemon.stop();
}

#[test]
fn process_tenant_cannot_reach_its_neighbour() {
    if !privileged("process_tenant_cannot_reach_its_neighbour") {
        return;
    }
    neighbour_is_out_of_reach("net-process", "process");
}

#[test]
fn namespace_tenant_cannot_reach_its_neighbour() {
    if !privileged("namespace_tenant_cannot_reach_its_neighbour") {
        return;
    }
    neighbour_is_out_of_reach("net-namespace", "namespace");
}

/// gVisor with host networking: the sandbox's host-side processes live in the instance's
/// cgroup and make the host socket calls, so the same programs apply to them.
#[test]
fn sandbox_tenant_cannot_reach_its_neighbour() {
    if !privileged("sandbox_tenant_cannot_reach_its_neighbour") {
        return;
    }
    let scratch = Scratch::new("net-sandbox");
    let services = services(&scratch, "sandbox", "") + INSTANCES;
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    let port = start_both(&mut daemon);
    let view = daemon.instance("hostile:mallory").unwrap();
    let cgroup = view_cgroup(&daemon, "hostile:mallory");
    // The listening socket of the sandboxed app is held by a process of the instance's cgroup.
    let own_port = view["port"].as_u64().unwrap() as u16;
    let inode = listening_inode(own_port).expect("the sandboxed app listens");
    let procs = std::fs::read_to_string(Path::new(&cgroup).join("cgroup.procs")).unwrap();
    let holders: Vec<&str> = procs
        .lines()
        .filter(|pid| holds_socket(pid, inode))
        .collect();
    assert!(
        !holders.is_empty(),
        "no process of {cgroup} ({procs:?}) holds the sandbox's listening socket"
    );
    for host in ["127.0.0.1", "::1", "0.0.0.0"] {
        assert_eq!(
            attacker(&daemon, &format!("/connect?host={host}&port={port}")),
            "EPERM",
            "sandbox: connect to the neighbour via {host}"
        );
    }
    assert_eq!(
        attacker(&daemon, &format!("/bind?host=127.0.0.1&port={port}")),
        "EPERM"
    );
    assert_eq!(victim(&daemon), (200, "hello from alice".to_string()));
    daemon.stop();
}

/// The cgroup v2 directory of an instance's process, from its `/proc/PID/cgroup`.
fn view_cgroup(daemon: &Daemon, name: &str) -> String {
    let pid = daemon.instance(name).unwrap()["pid"]
        .as_u64()
        .expect("running");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let relative = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    // The mount is where this process's own v2 path is rooted.
    let mine = tenement_tests::cgroup::own_cgroup_dir();
    let self_relative = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let self_relative = self_relative
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let mount = mine
        .to_string_lossy()
        .strip_suffix(&self_relative)
        .unwrap()
        .to_string();
    format!("{}/{relative}", mount.trim_end_matches('/'))
}

fn listening_inode(port: u16) -> Option<u64> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit_once(':').map(|(_, p)| p);
            if fields[3] == "0A" && local_port == Some(&format!("{port:04X}")) {
                return fields[9].parse().ok();
            }
        }
    }
    None
}

fn holds_socket(pid: &str, inode: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == wanted)
    })
}

/// The crash race (a bind loop on the neighbour's port while it is killed), the wake race
/// (every free port held but one, the last grabbed at wake) and port exhaustion: the
/// neighbour answers every time, never the attacker, and never stays `failed`.
#[test]
fn crash_and_wake_races_never_reach_the_attacker() {
    if !privileged("crash_and_wake_races_never_reach_the_attacker") {
        return;
    }
    let scratch = Scratch::new("net-races");
    let services = services(&scratch, "process", "") + INSTANCES;
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    let port = start_both(&mut daemon);
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let (low, high) = port_range(&config);

    // Exhaustion: the attacker can hold no port of the range (its own is already its own).
    assert_eq!(
        attacker(&daemon, &format!("/hold?low={low}&high={high}")),
        "0"
    );

    // Crash race: the attacker keeps binding the neighbour's port while it is killed.
    assert_eq!(
        attacker(&daemon, &format!("/grab?port={port}&seconds=20")),
        "started"
    );
    for round in 0..3 {
        let pid = daemon.instance("victim:alice").unwrap()["pid"]
            .as_u64()
            .expect("running");
        // SAFETY: kill on a pid the daemon reported for its own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = victim(&daemon);
            assert_ne!(body, "stolen", "round {round}: the attacker answered");
            if status == 200 {
                assert_eq!(body, "hello from alice");
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_ne!(daemon.instance("victim:alice").unwrap()["state"], "failed");
    }
    // Wake race: the neighbour is down, the attacker holds what it can, a start brings it
    // back on a port the attacker could not take.
    daemon.ok(&["stop", "victim:alice"]);
    assert_eq!(
        attacker(&daemon, &format!("/hold?low={low}&high={high}")),
        "0"
    );
    daemon.ok(&["start", "victim:alice"]);
    assert_eq!(victim(&daemon), (200, "hello from alice".to_string()));
    assert_eq!(
        attacker(&daemon, "/grabbed"),
        "0 0",
        "binds won, requests stolen"
    );

    // And it shows: denials counted, the latest address, an event, /metrics.
    daemon.wait_until("the denials reach the instance's view", |d| {
        let view = d.instance("hostile:mallory").unwrap();
        view["network"]["last_denied"].is_string()
            && view["stats"]["totals"]["binds_denied"].as_u64() >= Some(100)
    });
    let view = daemon.instance("hostile:mallory").unwrap();
    assert_eq!(view["network"]["enforced"], true, "{view}");
    assert_eq!(view["network"]["egress"], "any", "{view}");
    assert_eq!(view["network"]["bind_port"], view["port"], "{view}");
    let last = view["network"]["last_denied"].as_str().unwrap();
    assert!(last.starts_with("bind 127.0.0.1:"), "{last}");
    let events = daemon.ok(&["events", "hostile:mallory"]);
    assert!(events.contains("network-denied"), "{events}");
    let metrics = daemon.ok(&["ps", "--json"]);
    assert!(metrics.contains("\"bind_port\""), "{metrics}");
    let (status, text) = api_support::request(&daemon.unix(), "GET", "/metrics", None, "").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "tenement_instance_network_denied_total{instance=\"hostile:mallory\",service=\"hostile\",operation=\"bind\"}"
        ),
        "{text}"
    );
    http::assert_promtool_accepts(&text);
    daemon.stop();
}

fn port_range(config: &str) -> (u16, u16) {
    let line = config
        .lines()
        .find(|l| l.starts_with("port_range"))
        .unwrap();
    let numbers: Vec<u16> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// A port taken by something outside the instance (here: the test itself, when the app
/// tells it its port): the listener check sees a socket the instance does not hold, and the
/// start moves to another port; the thief never gets a request.
#[test]
fn a_port_taken_by_someone_else_is_retried_on_another() {
    if !privileged("a_port_taken_by_someone_else_is_retried_on_another") {
        return;
    }
    let scratch = Scratch::new("net-taken");
    let name = format!("tenement-thief-{}", std::process::id());
    let app = scratch.write(
        "app.py",
        &format!(
            r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX)
s.connect("\0{name}")
s.sendall(os.environ["PORT"].encode())
if s.recv(16) == b"taken":
    time.sleep(3600)
{APP}
"#
        ),
    );
    let thief = UnixListener::bind_addr(&UnixAddr::from_abstract_name(&name).unwrap()).unwrap();
    let stolen_bytes = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (seen, bytes, stop) = (
        Arc::new(AtomicUsize::new(0)),
        stolen_bytes.clone(),
        done.clone(),
    );
    let seen_ports = seen.clone();
    let thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        for (index, stream) in thief.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut port = [0u8; 8];
            let n = stream.read(&mut port).unwrap();
            let port: u16 = std::str::from_utf8(&port[..n]).unwrap().parse().unwrap();
            if index == 0 {
                let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
                seen_ports.store(usize::from(port), Ordering::SeqCst);
                stream.write_all(b"taken").unwrap();
                let (bytes, stop) = (bytes.clone(), stop.clone());
                listener.set_nonblocking(true).unwrap();
                held.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok((mut conn, _)) = listener.accept() {
                            conn.set_read_timeout(Some(Duration::from_millis(500)))
                                .unwrap();
                            let mut buf = [0u8; 1024];
                            let n = conn.read(&mut buf).unwrap_or(0);
                            bytes.fetch_add(n, Ordering::SeqCst);
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }));
            } else {
                stream.write_all(b"go").unwrap();
                break;
            }
        }
        held
    });
    let services = format!(
        r#"
[service.victim]
command = "/usr/bin/python3 {app}"
health = "/health"
startup_timeout = 60
env = {{ TENANT = "{{id}}" }}

[instances]
victim = ["alice"]
"#,
        app = app.display()
    );
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.wait_until("the victim answers through the proxy", |d| {
        victim(d) == (200, "hello from alice".to_string())
    });
    let stolen = seen.load(Ordering::SeqCst) as u16;
    assert_ne!(
        port_of(&daemon, "victim:alice"),
        stolen,
        "moved to another port"
    );
    let events = daemon.ok(&["events", "victim:alice"]);
    assert!(events.contains("port-taken"), "{events}");
    assert!(
        events.contains(&format!(
            "port {stolen} is held by pid {}",
            std::process::id()
        )),
        "{events}"
    );
    assert_eq!(
        stolen_bytes.load(Ordering::SeqCst),
        0,
        "no request reached the thief"
    );
    done.store(true, Ordering::SeqCst);
    for held in thread.join().unwrap() {
        held.join().unwrap();
    }
    daemon.stop();
}

/// Ports held by something outside tenement (here: the test) leave a stopped instance
/// waiting, shown `failed` with the reason; once they free up it starts by itself.
#[test]
fn an_instance_without_a_port_recovers_when_one_frees_up() {
    if !privileged("an_instance_without_a_port_recovers_when_one_frees_up") {
        return;
    }
    let scratch = Scratch::new("net-noport");
    let services = services(&scratch, "process", "") + INSTANCES;
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    start_both(&mut daemon);
    daemon.ok(&["stop", "victim:alice"]);
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let (low, high) = port_range(&config);
    let held: Vec<TcpListener> = (low..=high)
        .filter_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .collect();
    assert!(!held.is_empty());
    // The start finds no port: it fails at once, with the reason.
    let out = daemon.cli(&["start", "victim:alice"]);
    assert!(!out.status.success());
    let (status, body) = victim(&daemon);
    assert_eq!(status, 503, "{body}");
    daemon.wait_until("the victim waits for a port", |d| {
        let view = d.instance("victim:alice").unwrap();
        view["state"] == "failed"
            && view["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no free port left") && e.contains("retrying"))
    });
    drop(held);
    daemon.wait_until("the victim starts by itself once ports are free", |d| {
        d.instance("victim:alice").unwrap()["state"] == "running"
    });
    assert_eq!(victim(&daemon), (200, "hello from alice".to_string()));
    daemon.stop();
}

/// `egress = "none"`: nothing but loopback to itself and the proxy; a list: only what it
/// names (and DNS to the system resolvers).
#[test]
fn egress_none_and_list_keep_a_tenant_in() {
    if !privileged("egress_none_and_list_keep_a_tenant_in") {
        return;
    }
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (outside, other, udp_port) = (
        outside.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let scratch = Scratch::new("net-egress");
    let mut services = services(&scratch, "process", "egress = \"none\"");
    services.push_str(&format!(
        r#"
[service.listed]
command = "/usr/bin/python3 {hostile}"
env = {{ TENANT = "{{id}}" }}
egress = ["127.0.0.1:{outside}", "127.0.0.0/8:{udp_port}"]

[instances]
victim = ["alice"]
hostile = ["mallory"]
listed = ["bob"]
"#,
        hostile = hostile_app()
    ));
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    start_both(&mut daemon);
    let none = |path: &str| attacker(&daemon, path);
    assert_eq!(
        none(&format!("/connect?host=127.0.0.1&port={outside}")),
        "EPERM"
    );
    assert_eq!(
        none(&format!("/udp?host=127.0.0.1&port={udp_port}")),
        "EPERM"
    );
    // The proxy listener stays reachable over loopback.
    assert_eq!(
        none(&format!(
            "/fetch?port={}&host=alice.victim.localhost",
            daemon.http_port
        )),
        "200 hello from alice"
    );
    let view = daemon.instance("hostile:mallory").unwrap();
    assert_eq!(view["network"]["egress"], "none", "{view}");

    daemon.wait_until("the listed tenant answers", |d| {
        http::get(d.http_port, "bob.listed.localhost", "/")
            .is_ok_and(|(status, body)| status == 200 && body.contains("bob"))
    });
    let listed = |path: &str| {
        let (status, body) = http::get(daemon.http_port, "bob.listed.localhost", path).unwrap();
        assert_eq!(status, 200, "{body}");
        body.trim().to_string()
    };
    assert_eq!(
        listed(&format!("/connect?host=127.0.0.1&port={outside}")),
        "ok"
    );
    assert_eq!(
        listed(&format!("/connect?host=127.0.0.1&port={other}")),
        "EPERM"
    );
    assert_eq!(
        listed(&format!("/udp?host=127.0.0.1&port={udp_port}")),
        "ok"
    );
    assert_eq!(
        listed(&format!("/udp?host=127.0.0.1&port={other}")),
        "EPERM"
    );
    let view = daemon.instance("listed:bob").unwrap();
    let egress = view["network"]["egress"]
        .as_array()
        .expect("a list")
        .clone();
    assert_eq!(egress[0], format!("127.0.0.1/32:{outside}"), "{view}");
    assert_eq!(egress[1], format!("127.0.0.0/8:{udp_port}"), "{view}");
    let mut datagram = [0u8; 16];
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (n, _) = udp
        .recv_from(&mut datagram)
        .expect("the listed datagram arrived");
    assert_eq!(&datagram[..n], b"probe");
    daemon.stop();
}

/// A network namespace of the test's own with an interface holding a documentation address
/// (192.0.2.10): the host's non-loopback address, without touching the machine's. The
/// interface is one end of a veth pair kept inside the namespace (this kernel has no
/// `dummy` driver).
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn create() -> TestNetns {
        let name = format!("tnm-net-{}", std::process::id());
        let ns = TestNetns { name };
        for args in [
            vec!["netns", "add", &ns.name],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
            vec![
                "-n", &ns.name, "link", "add", "host0", "type", "veth", "peer", "name", "peer0",
            ],
            vec![
                "-n",
                &ns.name,
                "addr",
                "add",
                "192.0.2.10/24",
                "dev",
                "host0",
            ],
            vec!["-n", &ns.name, "link", "set", "peer0", "up"],
            vec!["-n", &ns.name, "link", "set", "host0", "up"],
        ] {
            let status = std::process::Command::new("ip")
                .args(&args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        }
        ns
    }

    /// Runs a Python snippet inside the namespace (not in any instance) and returns its
    /// output.
    fn python(&self, script: &str) -> String {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "/usr/bin/python3",
                "-c",
                script,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn get(&self, port: u16, host: &str, path: &str) -> String {
        self.python(&format!(
            r#"
import socket
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
    s.sendall(b"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    print(head.split(b" ")[1].decode(), body.decode().strip())
except OSError as e:
    print("error", e)
"#
        ))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// An app that binds `0.0.0.0:$PORT` is reachable through the proxy and not on the host's
/// non-loopback address; a tenant cannot reach its neighbour through that address either.
#[test]
fn wildcard_bind_stays_on_loopback_and_host_addresses_are_closed() {
    if !privileged("wildcard_bind_stays_on_loopback_and_host_addresses_are_closed") {
        return;
    }
    let netns = TestNetns::create();
    let scratch = Scratch::new("net-netns");
    let app = scratch.write("victim.py", APP);
    let data = scratch.join("data");
    let config = scratch.write(
        "tenement.toml",
        &format!(
            r#"
[settings]
data_dir = "{data}"
listen = "127.0.0.1:8080"
domain = "localhost"
api = "127.0.0.1:8090"
port_range = [30000, 30099]

[service.victim]
command = "/usr/bin/python3 {app}"
health = "/health"
env = {{ TENANT = "{{id}}" }}

[service.hostile]
command = "/usr/bin/python3 {hostile}"
env = {{ TENANT = "{{id}}", BIND_HOST = "0.0.0.0" }}

[instances]
victim = ["alice"]
hostile = ["mallory"]
"#,
            data = data.display(),
            app = app.display(),
            hostile = hostile_app(),
        ),
    );
    let log = std::fs::File::create(scratch.join("daemon.log")).unwrap();
    // nsenter --net, not `ip netns exec`: the latter also remounts /sys for the namespace,
    // which hides the cgroup hierarchies tenement needs.
    let daemon = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", netns.name))
        .arg(tenement_tests::tenement_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Stopped at the end, or killed if an assertion fails first.
    let mut daemon = StopOnDrop(Some(daemon));
    let log_tail = || std::fs::read_to_string(scratch.join("daemon.log")).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    while !(netns.get(8080, "alice.victim.localhost", "/") == "200 hello from alice"
        && netns.get(8080, "mallory.hostile.localhost", "/") == "200 hello from mallory")
    {
        assert!(
            Instant::now() < deadline,
            "never served: {}\n{}",
            netns.get(8080, "mallory.hostile.localhost", "/"),
            log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ps = std::process::Command::new(tenement_tests::tenement_bin())
        .args(["--config"])
        .arg(&config)
        .args(["ps", "--json"])
        .output()
        .unwrap();
    let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let port_of = |name: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["port"]
            .as_u64()
            .unwrap()
    };
    let (victim_port, hostile_port) = (port_of("victim:alice"), port_of("hostile:mallory"));
    let probe = |port: u64| {
        netns.python(&format!(
            "import socket\ns = socket.socket()\ns.settimeout(5)\n\
             try:\n    s.connect(('192.0.2.10', {port}))\n    print('ok')\n\
             except OSError as e:\n    print(type(e).__name__)"
        ))
    };
    // The wildcard bind was put on loopback: not reachable on the namespace's address.
    assert_eq!(probe(hostile_port), "ConnectionRefusedError");
    // The attacker, from inside, through the host's own non-loopback address.
    assert_eq!(
        netns.get(
            8080,
            "mallory.hostile.localhost",
            &format!("/connect?host=192.0.2.10&port={victim_port}")
        ),
        "200 EPERM"
    );
    assert_eq!(
        netns.get(
            8080,
            "mallory.hostile.localhost",
            "/connect?host=192.0.2.10&port=8090"
        ),
        "200 EPERM",
        "the management API through the host's address"
    );
    assert_eq!(
        netns.get(8080, "alice.victim.localhost", "/"),
        "200 hello from alice"
    );
    let mut child = daemon.0.take().unwrap();
    let stopped = tenement_tests::terminate(&mut child, PATIENCE);
    assert!(
        stopped.is_some(),
        "tenement serve did not stop\n{}",
        log_tail()
    );
}

struct StopOnDrop(Option<std::process::Child>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            tenement_tests::terminate_or_kill(child, PATIENCE);
        }
    }
}
