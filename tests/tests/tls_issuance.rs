//! Certificates issued by a real pebble: over HTTP-01 and over TLS-ALPN-01, for the
//! configured domain at start and for tenants at their first handshake; served by SNI with
//! HTTP/2 negotiated; stored with private modes.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use tenement::{
    config::Challenge,
    tls::{CertificateSource, TlsManager},
};
use tenement_tests::{
    free_port, logs,
    pebble::{Pebble, PebbleOptions},
    tls::{eventually, https_get, pebble_settings, test_tuning, Frontend},
    Scratch,
};

const ALICE: &str = "alice.notes.example.com";
const BOB: &str = "bob.notes.example.com";

fn routes_tenants(host: &str) -> bool {
    host.ends_with(".notes.example.com")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_get_distinct_certificates_over_http01() {
    let logs = logs::capture();
    // Pebble's default nonce rejection stays on: every request may need a retry.
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-http01");
    let mut settings = pebble_settings(&pebble, &data.path);
    settings.domain = vec!["notes.example.com".into()];
    settings.tls.challenges = vec![Challenge::Http01];
    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
        .await
        .unwrap();
    // HTTP-01 is answered by the plain listener on the port pebble checks.
    let frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
    let https_port = pebble.tls_port;
    let root = pebble.issuing_root();

    // The configured domain is certified at start, without any handshake.
    eventually(120, "certificate for the configured domain", || {
        manager
            .certificates()
            .iter()
            .any(|c| c.names == ["notes.example.com"])
    })
    .await;

    let mut leaves = Vec::new();
    for name in [ALICE, BOB] {
        let response = https_get(https_port, name, &[&root])
            .await
            .unwrap_or_else(|err| panic!("HTTPS to {name}: {err:#}\n{}", pebble.log()));
        assert_eq!(response.status, 200);
        assert_eq!(response.alpn.as_deref(), Some("h2"));
        assert_eq!(response.version, http::Version::HTTP_2);
        assert_eq!(response.body, format!("hello from {name} over HTTP/2.0"));
        leaves.push(response.leaf);
    }
    assert_ne!(leaves[0], leaves[1], "each tenant has its own certificate");

    let certificates = manager.certificates();
    for name in [ALICE, BOB] {
        let info = certificates
            .iter()
            .find(|c| c.names == [name])
            .unwrap_or_else(|| panic!("{name} missing from {certificates:?}"));
        assert_eq!(info.source, CertificateSource::Acme);
        assert!(
            info.issuer.as_deref().unwrap_or("").contains("Pebble"),
            "{info:?}"
        );
        assert!(
            info.not_after.is_some() && info.last_error.is_none(),
            "{info:?}"
        );
    }
    assert!(
        frontend.http01_answers() >= 3,
        "pebble validated over HTTP-01"
    );
    assert_eq!(frontend.tls_alpn01_validations(), 0);
    assert_eq!(manager.orders_started(), 3);
    assert_eq!(pebble.orders_created(), 3, "{}", pebble.log());
    assert!(logs.text().contains("created ACME account"));

    let store = only_store_dir(&data.path);
    assert_private(&store.join("account.json"));
    for name in [ALICE, BOB, "notes.example.com"] {
        assert_private(&store.join("certs").join(format!("{name}.pem")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_gets_a_certificate_over_tls_alpn01() {
    let _logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-alpn01");
    let mut settings = pebble_settings(&pebble, &data.path);
    settings.tls.challenges = vec![Challenge::TlsAlpn01];
    let manager = TlsManager::start_with(&settings, Arc::new(routes_tenants), test_tuning())
        .await
        .unwrap();
    // No plain listener where pebble could check HTTP-01: only the TLS handshake can answer.
    let frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;
    let root = pebble.issuing_root();

    let response = https_get(pebble.tls_port, ALICE, &[&root])
        .await
        .unwrap_or_else(|err| panic!("HTTPS to {ALICE}: {err:#}\n{}", pebble.log()));
    assert_eq!(response.status, 200);
    assert_eq!(response.alpn.as_deref(), Some("h2"));
    assert_eq!(response.body, format!("hello from {ALICE} over HTTP/2.0"));
    assert_eq!(manager.orders_started(), 1);
    assert_eq!(pebble.orders_created(), 1);
    assert!(
        frontend.tls_alpn01_validations() > 0,
        "pebble validated in the handshake"
    );
    assert_eq!(frontend.http01_answers(), 0);
}

/// `{data_dir}/.tenement/tls/acme/{directory}/`: there is one directory per ACME server.
fn only_store_dir(data_dir: &Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(tenement::datadir::tls_dir(data_dir).join("acme"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn assert_private(path: &Path) {
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{} has mode {mode:o}", path.display());
}
