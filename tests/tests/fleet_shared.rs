//! What a fleet shares through etcd besides placements: API tokens (issued on one node,
//! valid on every node; revoked on one, refused on every node) and routing weights set at
//! run time (set on one node, applied on the others); changes made while etcd compacts the
//! history a node's watch was to resume from still reach every node.

mod fleet_support;

use std::{process::Command, time::Duration};

use fleet_support::{get, until, Fleet};
use tenement_tests::{privileged, tenement_bin};

/// `tenement --config <node i> [--token T] ARGS`: (success, stdout, stderr).
fn cli(fleet: &Fleet, i: usize, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(tenement_bin());
    command.arg("--config").arg(&fleet.nodes[i].config);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let output = command.args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn a_token_issued_on_one_node_works_on_another_and_a_revoke_on_that_one_ends_it_everywhere() {
    if !privileged("a_token_issued_on_one_node_works_on_another") {
        return;
    }
    let fleet = Fleet::start(2);
    let (ok, secret, err) = cli(&fleet, 0, None, &["token-gen", "--description", "ci"]);
    assert!(ok, "{err}\n{}", fleet.log(0));
    let secret = secret.trim().to_string();
    let id = err
        .split_whitespace()
        .nth(1)
        .expect("token-gen names the token id")
        .to_string();

    // On node 3, the token appears in its list (copied at its next re-listing) and works.
    until("node 3 to know the token", Duration::from_secs(30), || {
        let (_, list, _) = cli(&fleet, 2, None, &["token-list"]);
        list.lines()
            .any(|line| line.starts_with(&format!("{id} ")) && line.contains("ci"))
            .then_some(())
    });
    let (ok, ps, err) = cli(&fleet, 2, Some(&secret), &["ps"]);
    assert!(ok, "the token on node 3: {err}\n{}", fleet.log(2));
    assert!(ps.contains("app:alice"), "{ps}");

    // Revoked on node 3: refused on node 1 (and on node 3 at once).
    let (ok, out, err) = cli(&fleet, 2, None, &["token-revoke", &id]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(&fleet, 2, Some(&secret), &["ps"]);
    assert!(!ok && err.contains("invalid token"), "{err}");
    until(
        "node 1 to forget the token",
        Duration::from_secs(30),
        || {
            let (_, list, _) = cli(&fleet, 0, None, &["token-list"]);
            (!list.lines().any(|line| line.starts_with(&format!("{id} ")))).then_some(())
        },
    );
    let (ok, _, err) = cli(&fleet, 0, Some(&secret), &["ps"]);
    assert!(!ok && err.contains("invalid token"), "{err}");

    // `ps --fleet` from any node's configuration: each instance with its node.
    let reply = get(fleet.nodes[0].port, "alice.app.example.com", "/", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let owner = reply.header("tenement-node").unwrap();
    let (ok, table, err) = cli(&fleet, 1, None, &["ps", "--fleet"]);
    assert!(ok, "{err}");
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let owner_port = fleet.nodes.iter().find(|n| n.name == owner).unwrap().port;
    assert_eq!(
        row("app:alice"),
        [
            "app:alice".to_string(),
            owner.clone(),
            format!("127.0.0.1:{owner_port}"),
            "yes".into()
        ],
        "{table}"
    );
    assert_eq!(row("app:carol"), ["app:carol", "-", "-", "-"], "{table}");
    assert!(table.starts_with("INSTANCE"), "{table}");
    let (ok, json, err) = cli(&fleet, 2, None, &["--json", "ps", "--fleet", "app"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let alice = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "app:alice")
        .unwrap();
    assert_eq!(alice["node"], owner.as_str(), "{json}");
    assert_eq!(alice["node_live"], true, "{json}");
    let (ok, json, _) = cli(&fleet, 2, None, &["--json", "ps", "--fleet", "other"]);
    assert!(ok && json.trim() == "[]", "{json}");
    let single = fleet
        .scratch
        .write("single.toml", "[service.app]\ncommand = \"/bin/true\"\n");
    let output = Command::new(tenement_bin())
        .arg("--config")
        .arg(&single)
        .args(["ps", "--fleet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("[fleet]"), "{err}");

    // Tokens issued on two nodes get different ids.
    let (ok, _, first) = cli(&fleet, 0, None, &["token-gen"]);
    assert!(ok, "{first}");
    let (ok, _, second) = cli(&fleet, 1, None, &["token-gen"]);
    assert!(ok, "{second}");
    let id_of = |text: &str| text.split_whitespace().nth(1).unwrap().to_string();
    assert_ne!(id_of(&first), id_of(&second), "{first}{second}");
}

#[test]
fn a_weight_set_on_one_node_applies_on_the_others() {
    if !privileged("a_weight_set_on_one_node_applies_on_the_others") {
        return;
    }
    let mut fleet = Fleet::start(2);
    let (ok, out, err) = cli(&fleet, 1, None, &["weight", "app:bob", "30"]);
    assert!(ok, "{out}{err}");
    for i in [0, 2] {
        until(
            &format!("node {} to apply the weight", i + 1),
            Duration::from_secs(30),
            || {
                let (_, json, _) = cli(&fleet, i, None, &["ps", "--json"]);
                let list: serde_json::Value = serde_json::from_str(&json).ok()?;
                list.as_array()?
                    .iter()
                    .any(|info| info["name"] == "app:bob" && info["weight"] == 30)
                    .then_some(())
            },
        );
    }
    // And back, set on another node.
    let (ok, out, err) = cli(&fleet, 2, None, &["weight", "app:bob", "100"]);
    assert!(ok, "{out}{err}");
    until(
        "node 2 to apply the new weight",
        Duration::from_secs(30),
        || {
            let (_, json, _) = cli(&fleet, 1, None, &["ps", "--json"]);
            let list: serde_json::Value = serde_json::from_str(&json).ok()?;
            list.as_array()?
                .iter()
                .any(|info| info["name"] == "app:bob" && info["weight"] == 100)
                .then_some(())
        },
    );

    // etcd gone: a token can be neither issued nor revoked (on one node only would split
    // the fleet); a weight still applies on the node where it is set.
    let (ok, _, before) = cli(&fleet, 0, None, &["token-gen"]);
    assert!(ok, "{before}");
    let id = before.split_whitespace().nth(1).unwrap().to_string();
    for i in 0..3 {
        fleet.etcd.kill(i);
    }
    let (ok, out, err) = cli(&fleet, 0, None, &["token-gen"]);
    assert!(!ok && out.is_empty(), "{out}{err}");
    assert!(err.contains("etcd"), "{err}");
    let (ok, _, err) = cli(&fleet, 0, None, &["token-revoke", &id]);
    assert!(!ok && err.contains("etcd"), "{err}");
    let (_, list, _) = cli(&fleet, 0, None, &["token-list"]);
    assert!(
        list.lines().any(|line| line.starts_with(&format!("{id} "))),
        "{list}"
    );
    let (ok, out, err) = cli(&fleet, 0, None, &["weight", "app:bob", "40"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&fleet, 0, None, &["ps", "--fleet"]);
    assert!(!ok && err.contains("etcd"), "{out}{err}");
}

/// The id `token-gen` printed (on stderr: `token ID ...`).
fn token_id(stderr: &str) -> String {
    stderr
        .split_whitespace()
        .nth(1)
        .expect("token-gen names the token id")
        .to_string()
}

fn knows_token(fleet: &Fleet, i: usize, id: &str) -> bool {
    let (_, list, _) = cli(fleet, i, None, &["token-list"]);
    list.lines().any(|line| line.starts_with(&format!("{id} ")))
}

fn weight_of(fleet: &Fleet, i: usize, instance: &str) -> Option<u64> {
    let (_, json, _) = cli(fleet, i, None, &["ps", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&json).ok()?;
    list.as_array()?
        .iter()
        .find(|info| info["name"] == instance)?["weight"]
        .as_u64()
}

#[test]
fn changes_made_while_etcd_compacts_past_a_watch_reach_every_node() {
    if !privileged("changes_made_while_etcd_compacts_past_a_watch_reach_every_node") {
        return;
    }
    let mut fleet = Fleet::start(10);
    // Node 1 is stopped while etcd restarts: its watch connection is gone, but it cannot
    // notice until it runs again.
    fleet.signal(0, libc::SIGSTOP);
    for i in 0..3 {
        fleet.etcd.kill(i);
    }
    for i in 0..3 {
        fleet.etcd.restart(i);
    }
    for i in 0..3 {
        fleet.etcd.wait_healthy(i);
    }
    // Changes on the other nodes, then etcd forgets the history up to now: the revision
    // node 1's watch would resume from is compacted.
    let (ok, secret, err) = until("node 2 to issue a token", Duration::from_secs(30), || {
        let answer = cli(&fleet, 1, None, &["token-gen", "--description", "early"]);
        answer.0.then_some(answer)
    });
    assert!(ok, "{err}");
    let early = token_id(&err);
    let (ok, out, err) = cli(&fleet, 2, None, &["weight", "app:carol", "20"]);
    assert!(ok, "{out}{err}");
    fleet.etcd.compact(0);
    fleet.signal(0, libc::SIGCONT);

    let relisted = || {
        std::fs::read_to_string(&fleet.nodes[0].log)
            .unwrap_or_default()
            .contains("etcd compacted the revisions this node's watch was to resume from")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !relisted() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(relisted(), "node 1 did not re-list:\n{}", fleet.log(0));
    // Nothing was missed: the token works on node 1, the weight applies there.
    until(
        "node 1 to know the early token",
        Duration::from_secs(30),
        || knows_token(&fleet, 0, &early).then_some(()),
    );
    let (ok, ps, err) = cli(&fleet, 0, Some(secret.trim()), &["ps"]);
    assert!(ok && ps.contains("app:carol"), "{ps}{err}");
    until(
        "node 1 to apply carol's weight",
        Duration::from_secs(30),
        || (weight_of(&fleet, 0, "app:carol") == Some(20)).then_some(()),
    );
    // And its watch carries on: a token issued on node 3 now reaches nodes 1 and 2.
    let (ok, _, err) = cli(&fleet, 2, None, &["token-gen", "--description", "late"]);
    assert!(ok, "{err}");
    let late = token_id(&err);
    for i in [0, 1] {
        until(
            &format!("node {} to know the late token", i + 1),
            Duration::from_secs(30),
            || knows_token(&fleet, i, &late).then_some(()),
        );
    }
}
