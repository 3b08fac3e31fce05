//! Renewal against a real pebble issuing short-lived certificates: the certificate is
//! replaced two thirds into its lifetime while requests keep succeeding, and connections
//! opened before the swap keep working on it.

use std::{sync::Arc, time::Duration};

use tenement::tls::TlsManager;
use tenement_tests::{
    logs,
    pebble::{Pebble, PebbleOptions},
    tls::{https_get, pebble_settings, test_tuning, Frontend, KeptConnection},
    Scratch,
};

const NAME: &str = "frank.notes.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_without_a_failed_request() {
    let logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions {
        certificate_validity: Some(Duration::from_secs(45)),
        ..Default::default()
    });
    let data = Scratch::new("tls-renewal");
    let settings = pebble_settings(&pebble, &data.path);
    let routes = |host: &str| host == NAME;
    let manager = TlsManager::start_with(&settings, Arc::new(routes), test_tuning())
        .await
        .unwrap();
    let _frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
    let root = pebble.issuing_root();

    let first = https_get(pebble.tls_port, NAME, &[&root]).await.unwrap();
    let first_expiry = manager.certificates()[0].not_after.unwrap();

    // Keep asking until a new certificate shows up; every single request must succeed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut requests = 1;
    let renewed = loop {
        let response = https_get(pebble.tls_port, NAME, &[&root])
            .await
            .unwrap_or_else(|err| panic!("request {requests} failed: {err:#}"));
        assert_eq!(response.status, 200);
        requests += 1;
        if response.leaf != first.leaf {
            break response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal after {requests} requests:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(renewed.alpn.as_deref(), Some("h2"));

    let info = &manager.certificates()[0];
    assert!(info.not_after.unwrap() > first_expiry, "{info:?}");
    assert!(info.last_error.is_none(), "{info:?}");
    assert_eq!(manager.orders_started(), 2, "one issuance, one renewal");
    assert!(logs.text().contains("(renewal)"), "the renewal is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_across_a_renewal_keep_working() {
    let logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions {
        certificate_validity: Some(Duration::from_secs(45)),
        ..Default::default()
    });
    let data = Scratch::new("tls-renewal-kept");
    let settings = pebble_settings(&pebble, &data.path);
    let routes = |host: &str| host == NAME;
    let manager = TlsManager::start_with(&settings, Arc::new(routes), test_tuning())
        .await
        .unwrap();
    let _frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
    let root = pebble.issuing_root();
    let port = pebble.tls_port;

    // One HTTP/2 and one HTTP/1.1 keep-alive connection, opened before the renewal.
    let mut h2 = KeptConnection::open(port, NAME, &[&root], &["h2"])
        .await
        .unwrap();
    let mut h1 = KeptConnection::open(port, NAME, &[&root], &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(h2.leaf, h1.leaf);
    let first = h2.leaf.clone();
    for connection in [&mut h2, &mut h1] {
        assert_eq!(connection.get().await.unwrap().status, 200);
    }

    // Wait for a new connection to get the renewed certificate, using the kept connections
    // all along.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let renewed = loop {
        for connection in [&mut h2, &mut h1] {
            let response = connection
                .get()
                .await
                .unwrap_or_else(|err| panic!("a kept connection failed: {err:#}"));
            assert_eq!(response.status, 200);
        }
        let fresh = https_get(port, NAME, &[&root]).await.unwrap();
        if fresh.leaf != first {
            break fresh;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(renewed.status, 200);

    // The connections from before the swap still answer, on the certificate they began with.
    let over_h2 = h2.get().await.unwrap();
    assert_eq!(over_h2.status, 200);
    assert_eq!(over_h2.version, http::Version::HTTP_2);
    assert_eq!(over_h2.body, format!("hello from {NAME} over HTTP/2.0"));
    let over_h1 = h1.get().await.unwrap();
    assert_eq!(over_h1.status, 200);
    assert_eq!(over_h1.version, http::Version::HTTP_11);
    assert_eq!(h2.leaf, first);
    assert_eq!(h1.leaf, first);
    assert_eq!(manager.orders_started(), 2, "one issuance, one renewal");
}
