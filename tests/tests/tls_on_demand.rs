//! On-demand issuance against a real pebble: names that route nowhere never cause an order,
//! a storm of handshakes for a new tenant causes one, and a name whose validation fails
//! waits out its backoff instead of ordering again at every handshake.

use std::sync::Arc;

use tenement::{config::Challenge, tls::TlsManager};
use tenement_tests::{
    free_port, logs,
    pebble::{Pebble, PebbleOptions},
    tls::{https_get, pebble_settings, test_tuning, Frontend},
    Scratch,
};

fn routes_tenants(host: &str) -> bool {
    host.ends_with(".notes.example.com")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_route_nowhere_cause_no_order() {
    let logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-nowhere");
    let settings = pebble_settings(&pebble, &data.path);
    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
        .await
        .unwrap();
    let _frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
    let root = pebble.issuing_root();

    for name in [
        "mallory.example.com",
        "notes.example.org",
        "x.y.notes.example.net",
    ] {
        let err = https_get(pebble.tls_port, name, &[&root])
            .await
            .expect_err("no certificate for a name that routes nowhere");
        assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    }
    // A name that does route still works on the same listener.
    let response = https_get(pebble.tls_port, "carol.notes.example.com", &[&root])
        .await
        .unwrap();
    assert_eq!(response.status, 200);

    assert_eq!(manager.orders_started(), 1, "only carol's order");
    assert_eq!(pebble.orders_created(), 1, "pebble saw only carol's order");
    assert!(!pebble.log().contains("mallory"), "{}", pebble.log());
    assert_eq!(manager.certificates().len(), 1);
    assert!(!logs.text().contains("ordering a certificate for mallory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_handshakes_for_a_new_tenant_makes_one_order() {
    let _logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-storm");
    let settings = pebble_settings(&pebble, &data.path);
    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
        .await
        .unwrap();
    let _frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
    let root = pebble.issuing_root();

    let mut clients = Vec::new();
    for _ in 0..20 {
        let root = root.clone();
        let port = pebble.tls_port;
        clients.push(tokio::spawn(async move {
            https_get(port, "dave.notes.example.com", &[&root]).await
        }));
    }
    let mut leaves = Vec::new();
    for client in clients {
        let response = client
            .await
            .unwrap()
            .expect("every waiting handshake completes");
        assert_eq!(response.status, 200);
        leaves.push(response.leaf);
    }
    leaves.dedup();
    assert_eq!(leaves.len(), 1, "all got the one certificate");
    assert_eq!(manager.orders_started(), 1);
    assert_eq!(pebble.orders_created(), 1, "{}", pebble.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_backs_off_and_is_reported() {
    let _logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-backoff");
    let mut settings = pebble_settings(&pebble, &data.path);
    settings.tls.challenges = vec![Challenge::Http01];
    let mut tuning = test_tuning();
    // Long enough that the second handshake below surely falls inside it.
    tuning.failure_backoff_base = std::time::Duration::from_secs(3600);
    tuning.failure_backoff_max = std::time::Duration::from_secs(3600);
    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), tuning)
        .await
        .unwrap();
    // Nothing answers HTTP-01 where pebble looks: validation must fail.
    let _frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;
    let root = pebble.issuing_root();

    let name = "erin.notes.example.com";
    let first = https_get(pebble.tls_port, name, &[&root]).await;
    assert!(first.is_err(), "no certificate could be issued");
    // The handshake's wait is bounded: on a busy machine it can end before pebble has given
    // up on the challenge. The order's outcome is recorded when it ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (info, error) = loop {
        let info = manager
            .certificates()
            .into_iter()
            .find(|c| c.names == [name])
            .expect("the failing name is listed");
        if let Some(error) = info.last_error.clone() {
            break (info, error);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed order was never reported: {info:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // Pebble's own words, naming the URL it could not reach.
    assert!(error.contains("validate the challenge"), "{error}");
    assert!(error.contains("/.well-known/acme-challenge/"), "{error}");
    assert!(info.not_after.is_none());

    let second = https_get(pebble.tls_port, name, &[&root]).await;
    assert!(second.is_err());
    assert_eq!(
        manager.orders_started(),
        1,
        "the second handshake waited out the backoff"
    );
    assert_eq!(pebble.orders_created(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_http_port_falls_back_to_tls_alpn01() {
    let _logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-fallback");
    let mut settings = pebble_settings(&pebble, &data.path);
    let name = "www.fallback.example.com";
    settings.tls.names = vec![name.into()];
    // Both challenges (the default), HTTP-01 preferred, but nothing listens where pebble
    // checks it, as with a firewall closing port 80.
    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
        .await
        .unwrap();
    let frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;

    tenement_tests::tls::eventually(120, "a certificate over TLS-ALPN-01", || {
        manager
            .certificates()
            .iter()
            .any(|c| c.names == [name] && c.not_after.is_some())
    })
    .await;
    assert_eq!(
        manager.orders_started(),
        2,
        "HTTP-01 failed, TLS-ALPN-01 worked"
    );
    assert!(frontend.tls_alpn01_validations() > 0);
    let response = https_get(pebble.tls_port, name, &[&pebble.issuing_root()])
        .await
        .unwrap();
    assert_eq!(response.status, 200);
}
