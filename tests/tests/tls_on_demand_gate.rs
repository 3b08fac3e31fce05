//! On-demand issuance beyond "the name routes": the `on_demand_rate` budget and the `ask`
//! URL, against a real pebble. Refusals are counted by reason.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::Arc,
};

use tenement::{
    config::Challenge,
    tls::{Refusal, TlsManager},
};
use tenement_tests::{
    free_port, logs,
    pebble::{Pebble, PebbleOptions},
    tls::{https_get, pebble_settings, test_tuning, Frontend},
    Scratch,
};

fn routes(host: &str) -> bool {
    host.ends_with(".notes.example.com")
}

fn refused(manager: &TlsManager, reason: Refusal) -> u64 {
    manager
        .on_demand_refusals()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, count)| count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_on_demand_name_within_the_hour_is_refused_and_counted() {
    let logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-on-demand-rate");
    let mut settings = pebble_settings(&pebble, &data.path);
    settings.tls.challenges = vec![Challenge::TlsAlpn01];
    settings.tls.on_demand_rate = Some("10/h".into());
    let manager = TlsManager::start_with(&settings, Arc::new(routes), test_tuning())
        .await
        .unwrap();
    let _frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;
    let root = pebble.issuing_root();

    for n in 1..=10 {
        let host = format!("t{n}.notes.example.com");
        let response = https_get(pebble.tls_port, &host, &[&root])
            .await
            .unwrap_or_else(|err| panic!("{host}: {err:#}"));
        assert_eq!(response.status, 200);
    }
    let err = https_get(pebble.tls_port, "t11.notes.example.com", &[&root])
        .await
        .expect_err("the budget is spent");
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    assert_eq!(refused(&manager, Refusal::Rate), 1);
    assert_eq!(pebble.orders_created(), 10, "no order for the 11th name");
    assert!(logs.text().contains(
        "no certificate ordered for t11.notes.example.com: the on-demand budget of 10 orders per 1h is spent"
    ));
    // Names that already have their certificate are served as before.
    let again = https_get(pebble.tls_port, "t3.notes.example.com", &[&root]).await;
    assert_eq!(again.unwrap().status, 200);
}

/// A one-thread HTTP server answering 200 when the query names an allowed domain, 403
/// otherwise; records each request line.
fn ask_server(allowed: &'static str) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Read the rest of the head before answering.
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let status = if line.contains(&format!("domain={allowed} ")) {
                "200 OK"
            } else {
                "403 Forbidden"
            };
            record.lock().unwrap().push(line.trim().to_string());
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ask_url_decides_which_names_get_certificates() {
    let logs = logs::capture();
    let pebble = Pebble::start(PebbleOptions::default());
    let data = Scratch::new("tls-on-demand-ask");
    let (port, seen) = ask_server("alice.notes.example.com");
    let mut settings = pebble_settings(&pebble, &data.path);
    settings.tls.challenges = vec![Challenge::TlsAlpn01];
    settings.tls.ask = Some(format!("http://127.0.0.1:{port}/allowed?service=notes"));
    let manager = TlsManager::start_with(&settings, Arc::new(routes), test_tuning())
        .await
        .unwrap();
    let frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;
    let root = pebble.issuing_root();

    let alice = https_get(pebble.tls_port, "alice.notes.example.com", &[&root])
        .await
        .unwrap();
    assert_eq!(alice.status, 200);
    assert!(
        https_get(pebble.tls_port, "bob.notes.example.com", &[&root])
            .await
            .is_err()
    );
    assert_eq!(refused(&manager, Refusal::Ask), 1);
    assert_eq!(refused(&manager, Refusal::Rate), 0);
    assert_eq!(pebble.orders_created(), 1);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /allowed?service=notes&domain=alice.notes.example.com HTTP/1.1",
            "GET /allowed?service=notes&domain=bob.notes.example.com HTTP/1.1",
        ]
    );
    assert!(logs.text().contains(&format!(
        "no certificate ordered for bob.notes.example.com: the ask URL http://127.0.0.1:{port}/allowed?service=notes answered 403 for bob.notes.example.com"
    )));
    drop(frontend);
    drop(manager);

    // An ask URL that cannot be reached refuses (fails closed).
    let data = Scratch::new("tls-on-demand-ask-down");
    let mut settings = pebble_settings(&pebble, &data.path);
    settings.tls.challenges = vec![Challenge::TlsAlpn01];
    settings.tls.ask = Some(format!("http://127.0.0.1:{}/allowed", free_port()));
    let manager = TlsManager::start_with(&settings, Arc::new(routes), test_tuning())
        .await
        .unwrap();
    let _frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;
    assert!(
        https_get(pebble.tls_port, "carol.notes.example.com", &[&root])
            .await
            .is_err()
    );
    assert_eq!(refused(&manager, Refusal::Ask), 1);
    assert_eq!(pebble.orders_created(), 1);
}
