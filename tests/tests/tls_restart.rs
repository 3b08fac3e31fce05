//! Certificates survive a restart without the ACME server, and an ACME server that is down
//! delays new certificates but never the start: the problem is logged and retried.

use std::sync::Arc;

use tenement::tls::TlsManager;
use tenement_tests::{
    logs,
    pebble::{Pebble, PebbleOptions},
    tls::{eventually, https_get, pebble_settings, test_tuning, Frontend},
    Scratch,
};

fn routes_tenants(host: &str) -> bool {
    host.ends_with(".notes.example.com")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_stored_certificates_with_pebble_stopped() {
    let logs = logs::capture();
    let mut pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-restart");
    let settings = pebble_settings(&pebble, &data.path);
    let alice = "alice.notes.example.com";

    let first_root = pebble.issuing_root();
    let before = {
        let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
            .await
            .unwrap();
        let _frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
        https_get(pebble.tls_port, alice, &[&first_root])
            .await
            .unwrap()
    };

    pebble.stop();
    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
        .await
        .expect("starts with the ACME server down");
    let frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
    let after = https_get(pebble.tls_port, alice, &[&first_root])
        .await
        .expect("the stored certificate is served");
    assert_eq!(after.status, 200);
    assert_eq!(after.leaf, before.leaf, "the same certificate, from disk");
    assert_eq!(
        manager.orders_started(),
        0,
        "nothing to order, nothing contacted"
    );

    // Pebble comes back having forgotten everything, the account included: a new tenant
    // still gets its certificate (tenement makes a new account).
    pebble.run();
    let second_root = pebble.issuing_root();
    let bob = "bob.notes.example.com";
    let response = https_get(pebble.tls_port, bob, &[&second_root])
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", logs.text()));
    assert_eq!(response.status, 200);
    assert!(logs
        .text()
        .contains("does not know the stored ACME account"));
    drop(frontend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_server_down_at_start_is_logged_and_retried() {
    let logs = logs::capture();
    let mut pebble = Pebble::prepare(PebbleOptions::default());
    let data = Scratch::new("tls-down");
    let mut settings = pebble_settings(&pebble, &data.path);
    let name = "www.down.example.com";
    settings.tls.names = vec![name.into()];

    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
        .await
        .expect("starts with the ACME server down");
    let _frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;

    // The failure is visible with the server's address and the cause, and retried.
    eventually(60, "a logged retry of the failed order", || {
        manager.orders_started() >= 2
    })
    .await;
    let text = logs.text();
    let logged = format!("no certificate for {name} from {}", pebble.directory_url);
    assert!(text.contains(&logged), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    let info = manager
        .certificates()
        .into_iter()
        .find(|c| c.names == [name])
        .expect("the missing certificate is listed");
    assert!(info.last_error.unwrap().contains("Connection refused"));

    pebble.run();
    eventually(120, "the certificate once pebble answers", || {
        manager
            .certificates()
            .iter()
            .any(|c| c.names == [name] && c.not_after.is_some())
    })
    .await;
    let response = https_get(pebble.tls_port, name, &[&pebble.issuing_root()])
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let info = manager
        .certificates()
        .into_iter()
        .find(|c| c.names == [name])
        .unwrap();
    assert!(
        info.last_error.is_none(),
        "success clears the error: {info:?}"
    );
}
