//! Renewal against a real pebble issuing short-lived certificates: the certificate is
//! replaced two thirds into its lifetime while requests keep succeeding.

use std::{sync::Arc, time::Duration};

use tenement::tls::TlsManager;
use tenement_tests::{
    logs,
    pebble::{Pebble, PebbleOptions},
    tls::{https_get, pebble_settings, test_tuning, Frontend},
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
