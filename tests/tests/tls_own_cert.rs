//! The operator's own certificate: it wins for the names it covers (no ACME order for them),
//! ACME still serves the other names, a change of the files is picked up, and a broken
//! change keeps the previous certificate serving with the error visible.

use std::{sync::Arc, time::Duration};

use tenement::tls::{CertificateSource, TlsManager};
use tenement_tests::{
    logs,
    pebble::{Pebble, PebbleOptions},
    tls::{eventually, https_get, pebble_settings, test_tuning, Frontend, TestCa},
    Scratch,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_certificate_wins_for_its_names_and_is_reloaded() {
    let _logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-own");
    let first_ca = TestCa::new("tenement test own CA one");
    let (cert, key) = first_ca.issue(&["*.own.example.com"]);
    let cert_path = data.write("own/cert.pem", &cert);
    let key_path = data.write("own/key.pem", &key);
    let mut settings = pebble_settings(&pebble, &data.path);
    settings.tls.cert = Some(cert_path.clone());
    settings.tls.key = Some(key_path.clone());
    let everything_routes = |_: &str| true;
    let manager = TlsManager::start_with(&settings, Arc::new(everything_routes), test_tuning())
        .await
        .unwrap();
    let _frontend = Frontend::start(manager.clone(), pebble.http_port, pebble.tls_port).await;
    let port = pebble.tls_port;

    let own = https_get(port, "shop.own.example.com", &[&first_ca.pem])
        .await
        .expect("served with the own certificate");
    assert_eq!(own.status, 200);
    assert_eq!(own.alpn.as_deref(), Some("h2"));
    assert_eq!(
        manager.orders_started(),
        0,
        "no order for a name the own cert covers"
    );

    let acme = https_get(port, "alice.notes.example.com", &[&pebble.issuing_root()])
        .await
        .expect("a name outside the own certificate gets an ACME certificate");
    assert_eq!(acme.status, 200);
    assert_eq!(manager.orders_started(), 1);

    let listed = manager.certificates();
    let file = listed
        .iter()
        .find(|c| c.source == CertificateSource::File)
        .expect("the own certificate is listed");
    assert_eq!(file.names, ["*.own.example.com"]);
    assert!(
        file.issuer.as_deref().unwrap().contains("own CA one"),
        "{file:?}"
    );

    // The operator renews the files: the new certificate is served without a restart.
    let second_ca = TestCa::new("tenement test own CA two");
    let (cert, key) = second_ca.issue(&["*.own.example.com"]);
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while https_get(port, "shop.own.example.com", &[&second_ca.pem])
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new files not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken key: the error is shown and the last good certificate keeps serving.
    std::fs::write(&key_path, "not a key").unwrap();
    eventually(60, "the reload error in certificates()", || {
        manager.certificates().iter().any(|c| {
            c.source == CertificateSource::File
                && c.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains(&key_path.display().to_string()))
        })
    })
    .await;
    let still = https_get(port, "shop.own.example.com", &[&second_ca.pem]).await;
    assert_eq!(
        still.expect("the previous certificate still serves").status,
        200
    );
}

#[tokio::test]
async fn own_certificate_errors_name_the_file() {
    let data = Scratch::new("tls-own-errors");
    let mut settings = tenement::config::Settings {
        data_dir: data.path.clone(),
        ..Default::default()
    };
    settings.tls.acme_directory = String::new(); // own certificate only
    let routes = |_: &str| true;

    settings.tls.cert = Some(data.join("missing.pem"));
    let Err(err) = TlsManager::start(&settings, Arc::new(routes)).await else {
        panic!("a cert without a key is refused");
    };
    assert!(err.to_string().contains("`key` is not"), "{err:#}");

    settings.tls.key = Some(data.join("missing.key"));
    let Err(err) = TlsManager::start(&settings, Arc::new(routes)).await else {
        panic!("a missing file is refused");
    };
    assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");

    let ca = TestCa::new("tenement test own CA");
    let (cert, _) = ca.issue(&["own.example.com"]);
    let (_, other_key) = ca.issue(&["own.example.com"]);
    settings.tls.cert = Some(data.write("cert.pem", &cert));
    settings.tls.key = Some(data.write("key.pem", &other_key));
    let Err(err) = TlsManager::start(&settings, Arc::new(routes)).await else {
        panic!("a key of another certificate is refused");
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("cert.pem") && text.contains("do not fit together"),
        "{text}"
    );
}
