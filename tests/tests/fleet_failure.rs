//! A fleet losing nodes and etcd members: tenants move to live nodes, a node cut off for
//! longer than its lease fences itself, and etcd outages keep what runs served.

mod fleet_support;

use std::time::Duration;

use fleet_support::{get, until, Fleet};
use tenement_tests::privileged;

const HOST_ALICE: &str = "alice.app.example.com";
const HOST_BOB: &str = "bob.app.example.com";

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// How many of the tenant processes started so far still run.
fn running(fleet: &Fleet) -> usize {
    fleet
        .started_pids()
        .into_iter()
        .filter(|p| alive(*p))
        .count()
}

#[test]
fn a_killed_owner_is_replaced_and_a_stopped_owner_fences_itself() {
    if !privileged("a_killed_owner_is_replaced_and_a_stopped_owner_fences_itself") {
        return;
    }
    let mut fleet = Fleet::start(3);

    // alice is first asked on n1, so n1 owns it.
    let reply = get(fleet.nodes[0].port, HOST_ALICE, "/headers", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("tenement-node").unwrap(), "n1");
    assert_eq!(fleet.starts(), 1);

    // kill -9 of the owner: within lease_ttl plus one cold start, n2 answers from a live
    // node, and at no sampled moment do two alice processes run.
    fleet.kill(0);
    let reply = until("alice served again", Duration::from_secs(60), || {
        assert!(running(&fleet) <= 1, "two alice processes at once");
        get(fleet.nodes[1].port, HOST_ALICE, "/headers", "")
            .ok()
            .filter(|r| r.status == 200)
    });
    let new_owner = reply.header("tenement-node").unwrap();
    assert_ne!(new_owner, "n1");
    assert_eq!(fleet.starts(), 2, "one cold start on the new owner");
    let (_, status) = fleet.status(1, false);
    assert!(!status.contains("n1 "), "{status}");

    // bob is first asked on n2; n2 is then stopped (SIGSTOP) for longer than its lease.
    let reply = get(fleet.nodes[1].port, HOST_BOB, "/headers", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("tenement-node").unwrap(), "n2");
    let bob_on_n2 = *fleet.started_pids().last().unwrap();
    fleet.signal(1, libc::SIGSTOP);
    let reply = until("bob placed on n3", Duration::from_secs(60), || {
        get(fleet.nodes[2].port, HOST_BOB, "/headers", "")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(reply.header("tenement-node").unwrap(), "n3");
    // Resumed, n2 finds its lease gone: it stops its bob before serving anything, and
    // from then on forwards bob's requests to n3.
    fleet.signal(1, libc::SIGCONT);
    until("n2 stops its bob", Duration::from_secs(30), || {
        (!alive(bob_on_n2)).then_some(())
    });
    let reply = until("n2 answers again", Duration::from_secs(30), || {
        get(fleet.nodes[1].port, HOST_BOB, "/headers", "")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(reply.header("tenement-node").unwrap(), "n3");
    assert!(
        fleet.log(1).contains("lost its etcd lease"),
        "{}",
        fleet.log(1)
    );
}

#[test]
fn etcd_outages_keep_what_runs_served_and_refuse_new_placements() {
    if !privileged("etcd_outages_keep_what_runs_served_and_refuse_new_placements") {
        return;
    }
    let mut fleet = Fleet::start(3);
    let reply = get(fleet.nodes[0].port, HOST_ALICE, "/", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");

    // One member down: the fleet keeps working, new placements included.
    fleet.etcd.kill(0);
    let reply = get(fleet.nodes[1].port, HOST_BOB, "/", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("tenement-node").unwrap(), "n2");

    // A compaction of etcd's history changes nothing: a watch that lost its revision re-lists.
    fleet.etcd.compact(1);
    let reply = get(fleet.nodes[2].port, HOST_ALICE, "/", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("tenement-node").unwrap(), "n1");

    // All members down: what runs is still served, new placements are refused clearly.
    fleet.etcd.kill(1);
    fleet.etcd.kill(2);
    std::thread::sleep(Duration::from_secs(8));
    let reply = get(fleet.nodes[0].port, HOST_ALICE, "/", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = get(fleet.nodes[1].port, "carol.app.example.com", "/", "").unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        reply
            .body
            .contains("no new placement can be made while etcd is unreachable"),
        "{reply:?}"
    );
    assert_eq!(reply.header("retry-after").unwrap(), "5", "{reply:?}");

    // etcd back: placements work again.
    for i in 0..3 {
        fleet.etcd.restart(i);
    }
    fleet.etcd.wait_healthy(0);
    let reply = until("carol placed", Duration::from_secs(60), || {
        get(fleet.nodes[1].port, "carol.app.example.com", "/", "")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(reply.header("tenement-node").unwrap(), "n2");
}
