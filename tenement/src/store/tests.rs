use super::*;

use crate::test_support::TempDir;

fn name(text: &str) -> InstanceName {
    InstanceName::parse(text).unwrap()
}

const RANGE: [u32; 2] = [61000, 64999];

#[test]
fn reopen_keeps_desired_weights_uids_and_events() {
    let dir = TempDir::new("reopen");
    let (alice, bob, carol) = (name("api:alice"), name("api:bob"), name("web:carol"));
    let (alice_uid, bob_uid);
    {
        let store = Store::open(&dir.0.join("nested")).unwrap();
        store.set_desired(&alice, true).unwrap();
        store.set_desired(&bob, true).unwrap();
        store.set_desired(&carol, true).unwrap();
        store.set_desired(&carol, false).unwrap();
        store
            .set_weights(&[(alice.clone(), 30), (bob.clone(), 70)])
            .unwrap();
        alice_uid = store.uid_for(&alice, RANGE).unwrap();
        bob_uid = store.uid_for(&bob, RANGE).unwrap();
        store
            .record_event(&alice, EventKind::Spawned, "pid 42")
            .unwrap();
        store
            .record_event(&alice, EventKind::OomKilled, "memory.max 64 MiB")
            .unwrap();
    }
    let store = Store::open(&dir.0.join("nested")).unwrap();
    assert_eq!(
        store.desired_running().unwrap(),
        vec![alice.clone(), bob.clone()]
    );
    assert_eq!(store.weight(&alice).unwrap(), Some(30));
    assert_eq!(store.weight(&bob).unwrap(), Some(70));
    assert_eq!(store.weight(&carol).unwrap(), Some(DEFAULT_WEIGHT));
    assert_eq!(store.weight(&name("api:nobody")).unwrap(), None);
    assert_eq!(store.uid_for(&alice, RANGE).unwrap(), alice_uid);
    assert_eq!(store.uid_for(&bob, RANGE).unwrap(), bob_uid);
    let known = store.known_instances().unwrap();
    assert_eq!(
        known,
        vec![
            InstanceRecord {
                name: alice.clone(),
                desired_running: true,
                held: false,
                weight: 30,
                uid: Some(alice_uid)
            },
            InstanceRecord {
                name: bob.clone(),
                desired_running: true,
                held: false,
                weight: 70,
                uid: Some(bob_uid)
            },
            InstanceRecord {
                name: carol.clone(),
                desired_running: false,
                held: false,
                weight: 100,
                uid: None
            },
        ]
    );
    let events = store.events(&alice, 10).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind, e.detail.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::OomKilled, "memory.max 64 MiB"),
            (EventKind::Spawned, "pid 42")
        ]
    );
    assert!(events[0].time >= events[1].time);
    assert_eq!(store.events(&alice, 1).unwrap().len(), 1);
    assert!(store.events(&bob, 10).unwrap().is_empty());
}

#[test]
fn set_weights_is_all_or_nothing() {
    let dir = TempDir::new("weights");
    let store = Store::open(&dir.0).unwrap();
    let (blue, green) = (name("api:blue"), name("api:green"));
    store
        .set_weights(&[(blue.clone(), 100), (green.clone(), 0)])
        .unwrap();
    let err = store
        .set_weights(&[(blue.clone(), 0), (green.clone(), 101)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("api:green") && err.contains("101"), "{err}");
    assert_eq!(store.weight(&blue).unwrap(), Some(100));
    assert_eq!(store.weight(&green).unwrap(), Some(0));

    // A failure inside the transaction (here the CHECK constraint, bypassing the range check)
    // also leaves every weight as it was.
    let result = store.write(|tx| {
        tx.execute(
            "UPDATE instances SET weight = 0 WHERE name = 'api:blue'",
            [],
        )?;
        tx.execute(
            "UPDATE instances SET weight = 200 WHERE name = 'api:green'",
            [],
        )?;
        Ok(())
    });
    assert!(result.is_err());
    assert_eq!(store.weight(&blue).unwrap(), Some(100));
    assert_eq!(store.weight(&green).unwrap(), Some(0));

    store
        .set_weights(&[(blue.clone(), 10), (green.clone(), 90)])
        .unwrap();
    assert_eq!(store.weight(&blue).unwrap(), Some(10));
    assert_eq!(store.weight(&green).unwrap(), Some(90));
}

#[test]
fn uids_are_stable_unique_and_bounded() {
    let dir = TempDir::new("uids");
    let store = Store::open(&dir.0).unwrap();
    let range = [62000, 62002];
    let names = [name("a:one"), name("a:two"), name("b:one")];
    let uids: Vec<u32> = names
        .iter()
        .map(|n| store.uid_for(n, range).unwrap())
        .collect();
    let mut unique = uids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{uids:?}");
    assert!(uids.iter().all(|uid| (62000..=62002).contains(uid)));
    for (n, uid) in names.iter().zip(&uids) {
        assert_eq!(store.uid_for(n, range).unwrap(), *uid);
    }
    let err = store.uid_for(&name("c:four"), range).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("c:four") && err.contains("62000"), "{err}");

    // Forgetting keeps the uid reserved for the name; releasing frees it.
    store.set_desired(&names[0], true).unwrap();
    store.forget(&names[0]).unwrap();
    assert!(store.known_instances().unwrap().is_empty());
    assert!(store.uid_for(&name("c:four"), range).is_err());
    assert_eq!(store.uid_for(&names[0], range).unwrap(), uids[0]);
    store.release_uid(&names[0]).unwrap();
    assert_eq!(store.uid_for(&name("c:four"), range).unwrap(), uids[0]);
}

#[test]
fn uids_skip_system_accounts_and_root() {
    let dir = TempDir::new("sysuid");
    let store = Store::open(&dir.0).unwrap();
    // uid 0 is root, an account on every system.
    assert!(store.uid_for(&name("a:one"), [0, 0]).is_err());
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .map(|u| u.uid.as_raw());
    if let Some(nobody) = nobody {
        let err = store.uid_for(&name("a:one"), [nobody, nobody]).unwrap_err();
        assert!(format!("{err:#}").contains("no free uid"), "{err:#}");
    }
    // A group id alone is enough to skip it: the tenant's gid is the same number.
    let group_only = (1..60000u32).find(|id| {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*id))
            .ok()
            .flatten()
            .is_some()
            && nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*id))
                .ok()
                .flatten()
                .is_none()
    });
    if let Some(id) = group_only {
        assert!(
            store.uid_for(&name("a:one"), [id, id]).is_err(),
            "gid {id} handed out"
        );
    }
}

#[test]
fn forget_drops_instance_and_events() {
    let dir = TempDir::new("forget");
    let store = Store::open(&dir.0).unwrap();
    let alice = name("api:alice");
    store.set_desired(&alice, true).unwrap();
    store.record_event(&alice, EventKind::Stopped, "").unwrap();
    store.forget(&alice).unwrap();
    assert!(store.desired_running().unwrap().is_empty());
    assert!(store.events(&alice, 10).unwrap().is_empty());
    assert_eq!(store.weight(&alice).unwrap(), None);
}

#[test]
fn events_are_capped_per_instance() {
    let dir = TempDir::new("cap");
    let store = Store::open(&dir.0).unwrap();
    let alice = name("api:alice");
    let bob = name("api:bob");
    store.record_event(&bob, EventKind::Ready, "bob").unwrap();
    for n in 0..EVENTS_KEPT_PER_INSTANCE + 5 {
        store
            .record_event(&alice, EventKind::Crashed, &n.to_string())
            .unwrap();
    }
    let events = store.events(&alice, usize::MAX).unwrap();
    assert_eq!(events.len(), EVENTS_KEPT_PER_INSTANCE);
    assert_eq!(events[0].detail, (EVENTS_KEPT_PER_INSTANCE + 4).to_string());
    assert_eq!(events.last().unwrap().detail, "5");
    assert_eq!(store.events(&bob, 10).unwrap().len(), 1);
}

#[test]
fn event_kinds_round_trip() {
    for kind in EventKind::ALL {
        assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
    }
    let event = Event {
        time: events::from_ms(1_700_000_000_123),
        kind: EventKind::OomKilled,
        detail: "x".into(),
    };
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(
        json,
        r#"{"time":1700000000123,"kind":"oom-killed","detail":"x"}"#
    );
    assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
}

#[test]
fn schema_is_versioned_and_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("schema");
    let store = Store::open(&dir.0).unwrap();
    let version: u32 = store
        .lock()
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(version, migrations::latest());
    let mode: String = store
        .lock()
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let perms = std::fs::metadata(store.path()).unwrap().permissions();
    assert_eq!(perms.mode() & 0o777, 0o600);
    // A database from a newer tenement is refused with a clear message.
    store
        .lock()
        .execute("INSERT INTO schema_migrations VALUES (999, 0)", [])
        .unwrap();
    drop(store);
    let err = format!("{:#}", Store::open(&dir.0).err().unwrap());
    assert!(
        err.contains("newer") && err.contains("tenement.db"),
        "{err}"
    );
}

#[test]
fn tokens_store_only_hashes() {
    let dir = TempDir::new("tokens");
    let store = Store::open(&dir.0).unwrap();
    let (admin, secret) = store.issue_token("admin", "").unwrap();
    let (tenant, tenant_secret) = store.issue_token("instance:api:alice", "").unwrap();
    assert_ne!(secret, tenant_secret);
    assert_eq!(store.verify_token(&secret).unwrap(), Some(admin.clone()));
    assert_eq!(
        store.verify_token(&tenant_secret).unwrap(),
        Some(tenant.clone())
    );
    assert_eq!(store.verify_token("tnm_wrong").unwrap(), None);
    let needle = secret.as_bytes();
    for file in ["tenement.db", "tenement.db-wal"] {
        let raw = std::fs::read(dir.0.join(file)).unwrap_or_default();
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "secret in {file}"
        );
    }
    assert_eq!(store.tokens().unwrap(), vec![admin.clone(), tenant]);
    assert!(store.revoke_token(admin.id).unwrap());
    assert!(!store.revoke_token(admin.id).unwrap());
    assert_eq!(store.verify_token(&secret).unwrap(), None);
}

#[test]
fn audit_log_keeps_newest_first() {
    let dir = TempDir::new("audit");
    let store = Store::open(&dir.0).unwrap();
    let (token, _) = store.issue_token("admin", "ci deploys").unwrap();
    assert_eq!(
        store.token(token.id).unwrap().unwrap().description,
        "ci deploys"
    );
    for action in ["stop", "restart"] {
        store
            .audit(&NewAuditEntry {
                token_id: Some(token.id),
                who: "token 1 (ci deploys)",
                action,
                target: "api:alice",
                address: "127.0.0.1:5000",
                status: 200,
                detail: "",
            })
            .unwrap();
    }
    let log = store.audit_log(10).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].action, "restart");
    assert_eq!(log[1].action, "stop");
    assert_eq!(log[1].token_id, Some(token.id));
    assert_eq!(store.audit_log(1).unwrap().len(), 1);
    assert!(store.revoke_token(token.id).unwrap());
    assert_eq!(store.token(token.id).unwrap(), None);
}

#[test]
fn an_operator_stop_holds_across_reopen_until_wanted_running() {
    let dir = TempDir::new("hold");
    let (alice, bob) = (name("api:alice"), name("api:bob"));
    {
        let store = Store::open(&dir.0).unwrap();
        store.set_desired(&alice, true).unwrap();
        store.hold(&alice).unwrap();
        // Asleep: not wanted running, not held.
        store.set_desired(&bob, true).unwrap();
        store.set_desired(&bob, false).unwrap();
        // Going to sleep or exiting does not end a hold.
        store.set_desired(&alice, false).unwrap();
    }
    let store = Store::open(&dir.0).unwrap();
    let held = |store: &Store| {
        store
            .known_instances()
            .unwrap()
            .into_iter()
            .map(|r| (r.name.to_string(), r.desired_running, r.held))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        held(&store),
        vec![
            ("api:alice".to_string(), false, true),
            ("api:bob".to_string(), false, false)
        ]
    );
    assert!(store.held(&alice).unwrap());
    assert!(!store.want_running_unless_held(&alice).unwrap());
    assert!(store.want_running_unless_held(&bob).unwrap());
    assert!(store.want_running_unless_held(&name("api:dave")).unwrap());
    store.set_desired(&alice, true).unwrap();
    assert!(!store.held(&alice).unwrap());
    assert_eq!(held(&store)[0], ("api:alice".to_string(), true, false));
    assert_eq!(held(&store)[1], ("api:bob".to_string(), true, false));
    // A hold on a name the store never saw creates its row.
    store.hold(&name("api:carol")).unwrap();
    assert_eq!(held(&store)[2], ("api:carol".to_string(), false, true));
    assert!(!store.held(&name("api:nobody")).unwrap());
}

#[test]
fn shared_tokens_copy_exactly_and_their_secrets_verify() {
    use super::tokens::new_shared_token;
    let dir = TempDir::new("shared-tokens");
    let store = Store::open(&dir.0).unwrap();
    let (local, _) = store.issue_token("admin", "here").unwrap();
    assert_eq!(store.next_token_id().unwrap(), local.id + 1);
    let (remote, secret) = new_shared_token(7, "tenant:api:alice", "there");
    // The fleet's set replaces this store's: the local-only token goes.
    store.sync_tokens(std::slice::from_ref(&remote)).unwrap();
    assert_eq!(store.shared_tokens().unwrap(), vec![remote.clone()]);
    assert_eq!(store.verify_token(&secret).unwrap(), Some(remote.record));
    assert_eq!(store.token(local.id).unwrap(), None);
    // Ids never go back, even below a revoked one.
    assert!(store.revoke_token(7).unwrap());
    assert_eq!(store.next_token_id().unwrap(), 8);
    let (bad, _) = new_shared_token(9, "admin", "");
    let bad = tokens::SharedToken {
        sha256: "not hex".into(),
        ..bad
    };
    assert!(store.insert_shared_token(&bad).is_err());
}

#[test]
fn running_records_survive_a_reopen_until_cleared() {
    let dir = TempDir::new("running");
    let (web, ns) = (name("web:a"), name("ns:c"));
    let record = RunRecord {
        pid: 4242,
        start_ticks: 123_456,
        port: Some(31000),
        socket: None,
        uid: 61000,
        started_ms: 1_714_564_800_000,
    };
    {
        let store = Store::open(&dir.0).unwrap();
        store.set_running(&web, &record).unwrap();
        store
            .set_running(
                &ns,
                &RunRecord {
                    port: None,
                    socket: Some("/data/ns/c/app.sock".into()),
                    ..record.clone()
                },
            )
            .unwrap();
        // A later spawn replaces the record.
        store
            .set_running(
                &web,
                &RunRecord {
                    pid: 4343,
                    ..record.clone()
                },
            )
            .unwrap();
    }
    let store = Store::open(&dir.0).unwrap();
    let running = store.running().unwrap();
    assert_eq!(running.len(), 2);
    assert_eq!(running[1].0, web);
    assert_eq!(running[1].1.pid, 4343);
    assert_eq!(running[0].1.socket.as_deref(), Some("/data/ns/c/app.sock"));
    store.clear_running(&web).unwrap();
    store.clear_running(&web).unwrap();
    assert_eq!(store.running().unwrap().len(), 1);
}
