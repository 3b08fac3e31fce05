//! ACME certificates in a fleet: 3 tenement nodes with TLS on, a 3-member etcd and a real
//! pebble. A certificate is ordered once fleet-wide (under a lock in etcd) and served by
//! every node; the CA's HTTP-01 validation reaches one node (pebble validates on one port)
//! whichever node ordered; a node killed mid-order leaves the order to another node once
//! its lease has expired, and a live holder whose order fails is reported, not repeated.

mod fleet_support;

use std::time::Duration;

use fleet_support::{until, Fleet, NodeSetup};
use tenement_tests::{
    free_port,
    pebble::{Pebble, PebbleOptions},
    privileged,
    tls::https_get,
};

/// A fleet whose node 1 sits on pebble's HTTP-01 and TLS-ALPN-01 ports: every validation,
/// whichever node ordered, reaches node 1. Returns the fleet and each node's TLS port.
fn pebble() -> Pebble {
    Pebble::start(PebbleOptions {
        reject_nonces: false,
        ..PebbleOptions::default()
    })
}

/// Three nodes with TLS through `pebble`, HTTP-01, once the configured domain's certificate
/// (ordered by one node for all three) is in etcd; with their TLS ports and pebble's root.
fn fleet_with_tls(pebble: &Pebble) -> (Fleet, Vec<u16>, String) {
    fleet_validated_by(pebble, "http-01")
}

fn fleet_validated_by(pebble: &Pebble, challenge: &str) -> (Fleet, Vec<u16>, String) {
    let tls_ports = vec![pebble.tls_port, free_port(), free_port()];
    let fleet = Fleet::start_with(2, |i| NodeSetup {
        port: (i == 0).then_some(pebble.http_port),
        settings: format!(
            "\n[settings.tls]\nenabled = true\nlisten = \"127.0.0.1:{tls}\"\n\
             acme_directory = {directory:?}\nacme_root = {root:?}\n\
             challenges = [{challenge:?}]\n",
            tls = tls_ports[i],
            directory = pebble.directory_url,
            root = pebble.acme_root.display().to_string(),
        ),
    });
    until(
        "the domain's certificate in etcd",
        Duration::from_secs(90),
        || fleet.etcd.get("/tenement/v1/certs/example.com"),
    );
    (fleet, tls_ports, pebble.issuing_root())
}

/// How many times node `i` ordered a certificate for `name` from the ACME server.
fn orders_by(fleet: &Fleet, i: usize, name: &str) -> usize {
    std::fs::read_to_string(&fleet.nodes[i].log)
        .unwrap_or_default()
        .matches(&format!("ordering a certificate for {name} "))
        .count()
}

/// Node `i`'s whole log.
fn full_log(fleet: &Fleet, i: usize) -> String {
    std::fs::read_to_string(&fleet.nodes[i].log).unwrap_or_default()
}

fn orders_fleetwide(fleet: &Fleet, name: &str) -> usize {
    (0..3).map(|i| orders_by(fleet, i, name)).sum()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn concurrent_first_handshakes_on_every_node_order_one_certificate_that_all_serve() {
    if !privileged("concurrent_first_handshakes_on_every_node_order_one_certificate") {
        return;
    }
    let pebble = pebble();
    let (mut fleet, tls_ports, root) = fleet_with_tls(&pebble);

    let host = "alice.app.example.com";
    let runtime = runtime();
    let roots = [root.as_str()];
    let answers = runtime.block_on(async {
        let handshakes = tls_ports
            .iter()
            .map(|port| https_get(*port, host, &roots))
            .collect::<Vec<_>>();
        futures_util::future::join_all(handshakes).await
    });
    let mut leaves = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap_or_else(|e| panic!("node {}: {e:#}\n{}", i + 1, fleet.log(i)));
        assert_eq!(answer.status, 200, "node {}: {}", i + 1, answer.body);
        leaves.push(answer.leaf);
    }
    assert!(
        leaves.iter().all(|leaf| *leaf == leaves[0]),
        "every node serves the same certificate (same serial)"
    );
    assert_eq!(
        orders_fleetwide(&fleet, host),
        1,
        "{}\n{}\n{}",
        fleet.log(0),
        fleet.log(1),
        fleet.log(2)
    );
    assert_eq!(orders_fleetwide(&fleet, "example.com"), 1);
    // Pebble agrees: one order for the domain, one for alice.
    assert_eq!(pebble.orders_created(), 2, "{}", pebble.log());
    // Nodes that did not order installed the fleet's certificate, and say so.
    let installed = (0..3)
        .filter(|i| {
            full_log(&fleet, *i).contains(&format!("installed the fleet's certificate for {host}"))
        })
        .count();
    assert_eq!(installed, 2);
    // And it is stored for the fleet, lock released.
    assert!(fleet
        .etcd
        .get(&format!("/tenement/v1/certs/{host}"))
        .is_some_and(|bundle| bundle.contains("PRIVATE KEY") && bundle.contains("CERTIFICATE")));
    assert_eq!(
        fleet.etcd.get(&format!("/tenement/v1/locks/cert/{host}")),
        None
    );

    // etcd gone: the installed certificate keeps serving; a name without one cannot be
    // ordered (nobody could take its lock), and the node says why.
    for i in 0..3 {
        fleet.etcd.kill(i);
    }
    let again = runtime
        .block_on(https_get(tls_ports[1], host, &roots))
        .expect("alice is still served over TLS");
    assert_eq!(again.status, 200, "{}", again.body);
    let carol = "carol.app.example.com";
    let refused = runtime.block_on(https_get(tls_ports[1], carol, &roots));
    assert!(refused.is_err(), "no certificate for carol without etcd");
    let status = std::process::Command::new(tenement_tests::tenement_bin())
        .arg("--config")
        .arg(&fleet.nodes[1].config)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let line = text
        .lines()
        .find(|line| line.contains(carol))
        .unwrap_or_else(|| panic!("no {carol} in `tenement status`:\n{text}"));
    assert!(line.contains("no etcd endpoint answered"), "{text}");
    assert_eq!(orders_fleetwide(&fleet, carol), 0);
}

#[test]
fn a_node_killed_while_ordering_leaves_the_order_to_another_after_its_lease() {
    if !privileged("a_node_killed_while_ordering_leaves_the_order_to_another") {
        return;
    }
    let mut pebble = pebble();
    let (mut fleet, tls_ports, root) = fleet_with_tls(&pebble);

    // Node 2 starts bob's order while the ACME server hangs: it holds the lock.
    let host = "bob.app.example.com";
    let lock = format!("/tenement/v1/locks/cert/{host}");
    pebble.pause();
    let port2 = tls_ports[1];
    let root2 = root.clone();
    let first = std::thread::spawn(move || runtime().block_on(https_get(port2, host, &[&root2])));
    until("node 2 to hold bob's lock", Duration::from_secs(30), || {
        (fleet.etcd.get(&lock).as_deref() == Some("n2")).then_some(())
    });
    // Node 3 asks too: it waits for node 2, ordering nothing.
    let port3 = tls_ports[2];
    let root3 = root.clone();
    let waiting = std::thread::spawn(move || runtime().block_on(https_get(port3, host, &[&root3])));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(orders_by(&fleet, 2, host), 0, "{}", fleet.log(2));
    assert!(
        full_log(&fleet, 2).contains(&format!("node n2 is ordering the certificate for {host}"))
    );

    // Node 2 dies mid-order; the ACME server comes back.
    fleet.kill(1);
    pebble.resume();
    let _ = first.join();
    let _ = waiting.join();

    // After node 2's lease (2 s) has expired, another node orders, and every live node
    // serves that certificate.
    let runtime = runtime();
    let served = until(
        "bob's certificate on node 3",
        Duration::from_secs(90),
        || {
            runtime
                .block_on(https_get(tls_ports[2], host, &[&root]))
                .ok()
                .filter(|answer| answer.status == 200)
        },
    );
    let other = runtime
        .block_on(https_get(tls_ports[0], host, &[&root]))
        .expect("node 1 serves bob");
    assert_eq!(
        other.leaf, served.leaf,
        "one certificate for both live nodes"
    );
    assert_eq!(
        orders_by(&fleet, 0, host) + orders_by(&fleet, 2, host),
        1,
        "{}\n{}",
        fleet.log(0),
        fleet.log(2)
    );
    assert!(
        full_log(&fleet, 0).contains(&format!(
            "node n2 died while ordering the certificate for {host}"
        )) || full_log(&fleet, 2).contains(&format!(
            "node n2 died while ordering the certificate for {host}"
        )),
        "{}\n{}",
        fleet.log(0),
        fleet.log(2)
    );
    assert_eq!(fleet.etcd.get(&lock), None);

    // A holder that lives but gets no certificate (the ACME server dies under its order)
    // releases the lock; the node waiting for it orders nothing and reports that node's
    // failure.
    let carol = "carol.app.example.com";
    let carol_lock = format!("/tenement/v1/locks/cert/{carol}");
    pebble.pause();
    let port3 = tls_ports[2];
    let root3 = root.clone();
    let holder =
        std::thread::spawn(move || self::runtime().block_on(https_get(port3, carol, &[&root3])));
    until(
        "node 3 to hold carol's lock",
        Duration::from_secs(30),
        || (fleet.etcd.get(&carol_lock).as_deref() == Some("n3")).then_some(()),
    );
    let port1 = tls_ports[0];
    let root1 = root.clone();
    let waiter =
        std::thread::spawn(move || self::runtime().block_on(https_get(port1, carol, &[&root1])));
    until("node 1 to wait for node 3", Duration::from_secs(30), || {
        full_log(&fleet, 0)
            .contains(&format!("node n3 is ordering the certificate for {carol}"))
            .then_some(())
    });
    pebble.stop();
    assert!(holder.join().unwrap().is_err());
    assert!(waiter.join().unwrap().is_err());
    let status = until(
        "node 1 to report carol's failure",
        Duration::from_secs(60),
        || {
            let output = std::process::Command::new(tenement_tests::tenement_bin())
                .arg("--config")
                .arg(&fleet.nodes[0].config)
                .arg("status")
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            text.lines()
                .any(|line| {
                    line.contains(carol)
                        && line.contains("node n3 ordered it and got no certificate")
                })
                .then_some(text)
        },
    );
    assert_eq!(orders_by(&fleet, 0, carol), 0, "{status}");
    assert_eq!(orders_by(&fleet, 2, carol), 1, "{}", fleet.log(2));
    assert_eq!(fleet.etcd.get(&carol_lock), None);
}

#[test]
fn tls_alpn01_answers_are_known_to_every_node() {
    if !privileged("tls_alpn01_answers_are_known_to_every_node") {
        return;
    }
    let pebble = pebble();
    let (fleet, tls_ports, root) = fleet_validated_by(&pebble, "tls-alpn-01");
    // Node 3 orders alice's certificate; pebble validates on node 1's TLS listener, which
    // answers with the validation certificate node 3 published.
    let host = "alice.app.example.com";
    let answer = runtime()
        .block_on(https_get(tls_ports[2], host, &[&root]))
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", fleet.log(2), pebble.log()));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(orders_by(&fleet, 2, host), 1, "{}", fleet.log(2));
    assert_eq!(orders_fleetwide(&fleet, host), 1);
    assert_eq!(pebble.orders_created(), 2, "{}", pebble.log());
    // The answers are withdrawn once the order is over.
    assert!(fleet
        .etcd
        .get(&format!("/tenement/v1/acme-challenges/tls-alpn-01:{host}"))
        .is_none());
}
