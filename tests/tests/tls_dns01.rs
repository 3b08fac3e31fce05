//! DNS-01 and wildcard certificates against a real pebble: validated through tenement's
//! own DNS responder (`dns_listen`), and through a real bind9 taking RFC 2136 updates
//! signed with TSIG (`dns_update`). One wildcard certificate serves every tenant of a
//! service; names outside it still get their own on demand; the TXT records are gone
//! afterwards; failures name the record.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tenement::{
    config::{Challenge, DnsUpdate, Settings, Wildcard},
    tls::{CertificateInfo, TlsManager},
};
use tenement_tests::{
    bind::{self, Named},
    free_port, logs,
    pebble::{Pebble, PebbleOptions},
    tls::{eventually, https_get, https_get_offering, pebble_settings, test_tuning, Frontend},
    Scratch,
};
use x509_parser::{extensions::GeneralName, parse_x509_certificate};

const WILDCARD: &str = "*.notes.example.test";
const CHALLENGE_NAME: &str = "_acme-challenge.notes.example.test";

fn routes(host: &str) -> bool {
    host.ends_with(".notes.example.test") || host.ends_with(".wiki.example.test")
}

fn services() -> Vec<String> {
    vec!["notes".into(), "wiki".into()]
}

/// DNS-01 only, with a wildcard for the `notes` service of `example.test`.
fn dns01_settings(pebble: &Pebble, data: &Scratch) -> Settings {
    let mut settings = pebble_settings(pebble, &data.path);
    settings.domain = vec!["example.test".into()];
    settings.tls.challenges = vec![Challenge::Dns01];
    settings.tls.wildcard = Wildcard::Services(vec!["notes".into()]);
    settings
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn find<'a>(certificates: &'a [CertificateInfo], name: &str) -> Option<&'a CertificateInfo> {
    certificates
        .iter()
        .find(|c| c.names.first().map(String::as_str) == Some(name))
}

fn leaf_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_over_the_built_in_responder_serves_every_tenant() {
    let _logs = logs::capture();
    let dns = local(free_port());
    let pebble = Pebble::start(PebbleOptions {
        dns_server: Some(dns),
        ..Default::default()
    });
    let data = Scratch::new("tls-dns01-responder");
    let mut settings = dns01_settings(&pebble, &data);
    settings.tls.dns_listen = Some(dns);
    let manager =
        TlsManager::start_with_services(&settings, &services(), Arc::new(routes), test_tuning())
            .await
            .unwrap();
    // No HTTP-01 or TLS-ALPN-01 answers anywhere: only DNS can validate.
    let frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;
    let root = pebble.issuing_root();

    eventually(
        120,
        "the wildcard and the domain certified at start",
        || {
            let certificates = manager.certificates();
            [WILDCARD, "example.test"]
                .iter()
                .all(|name| find(&certificates, name).is_some_and(|c| c.not_after.is_some()))
        },
    )
    .await;
    let at_start = pebble.orders_created();
    assert_eq!(at_start, 2, "the domain and the wildcard: {}", pebble.log());

    let mut leaves = Vec::new();
    for (host, alpn, version) in [
        ("alice.notes.example.test", "h2", "HTTP/2.0"),
        ("bob.notes.example.test", "h2", "HTTP/2.0"),
        ("alice.notes.example.test", "http/1.1", "HTTP/1.1"),
        ("bob.notes.example.test", "http/1.1", "HTTP/1.1"),
    ] {
        let response = https_get_offering(pebble.tls_port, host, &[&root], &[alpn])
            .await
            .unwrap_or_else(|err| panic!("HTTPS to {host} over {alpn}: {err:#}"));
        assert_eq!(response.status, 200);
        assert_eq!(response.alpn.as_deref(), Some(alpn));
        assert_eq!(response.body, format!("hello from {host} over {version}"));
        leaves.push(response.leaf);
    }
    assert!(
        leaves.iter().all(|leaf| *leaf == leaves[0]),
        "one certificate"
    );
    assert_eq!(leaf_names(&leaves[0]), [WILDCARD, "notes.example.test"]);
    assert_eq!(
        pebble.orders_created(),
        at_start,
        "tenants under the wildcard order nothing"
    );
    assert_eq!(
        frontend.http01_answers() + frontend.tls_alpn01_validations(),
        0
    );

    // A tenant of a service without a wildcard gets its own certificate on demand, over
    // DNS-01 too.
    let wiki = https_get(pebble.tls_port, "alice.wiki.example.test", &[&root])
        .await
        .unwrap_or_else(|err| panic!("HTTPS to alice.wiki: {err:#}\n{}", pebble.log()));
    assert_eq!(wiki.status, 200);
    assert_eq!(leaf_names(&wiki.leaf), ["alice.wiki.example.test"]);
    assert_eq!(pebble.orders_created(), at_start + 1);

    // The challenges are over: the responder holds nothing and refuses the name again.
    let answer = bind::dig_full(dns, &["TXT", CHALLENGE_NAME]);
    assert!(answer.contains("status: REFUSED"), "{answer}");
    let stored = std::fs::read_dir(tenement::datadir::tls_dir(&data.path).join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("certs/_wildcard.notes.example.test.pem");
    assert!(stored.is_file(), "{} missing", stored.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_refuses_other_names_recursion_and_garbage() {
    let _logs = logs::capture();
    let dns = local(free_port());
    let data = Scratch::new("tls-dns01-refuse");
    let mut settings = Settings {
        data_dir: data.path.clone(),
        ..Default::default()
    };
    settings.tls.enabled = true;
    settings.tls.challenges = vec![Challenge::Dns01];
    settings.tls.dns_listen = Some(dns);
    // No configured public name: nothing is ordered, the ACME server is never asked.
    let _manager = TlsManager::start_with_services(&settings, &[], Arc::new(routes), test_tuning())
        .await
        .unwrap();

    let not_held = bind::dig_full(dns, &["TXT", CHALLENGE_NAME]);
    assert!(not_held.contains("status: REFUSED"), "{not_held}");
    assert!(!not_held.contains("ANSWER: 1"), "{not_held}");
    // A recursion request for someone else's name: refused, and recursion not offered.
    let recursion = bind::dig_full(dns, &["+rec", "A", "www.example.com"]);
    assert!(recursion.contains("status: REFUSED"), "{recursion}");
    let flags = recursion
        .lines()
        .find(|line| line.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("{recursion}"));
    assert!(!flags.split(';').nth(2).unwrap().contains(" ra"), "{flags}");
    let over_tcp = bind::dig_full(dns, &["+tcp", "ANY", "example.com"]);
    assert!(over_tcp.contains("status: REFUSED"), "{over_tcp}");

    // Malformed packets: no reply larger than what was sent, and the responder lives on.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut header_then_junk = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    header_then_junk.extend_from_slice(&[0xff; 60]);
    let packets: [&[u8]; 4] = [
        b"",
        &[0xde, 0xad, 0xbe, 0xef],
        &header_then_junk,
        &[0u8; 12],
    ];
    for packet in packets {
        socket.send_to(packet, dns).unwrap();
        let mut buffer = [0u8; 4096];
        if let Ok((length, _)) = socket.recv_from(&mut buffer) {
            assert!(
                length <= packet.len(),
                "{length} bytes back for {} sent",
                packet.len()
            );
        }
    }
    let still_there = bind::dig_full(dns, &["TXT", "example.com"]);
    assert!(still_there.contains("status: REFUSED"), "{still_there}");
}

fn dns_update(named: &Named) -> DnsUpdate {
    DnsUpdate {
        server: named.address,
        zone: named.zone.clone(),
        key_name: bind::KEY_NAME.into(),
        key_secret_file: named.key_file.clone(),
        algorithm: "hmac-sha256".into(),
        check_servers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_updates_to_bind_issue_and_renew_the_wildcard_and_remove_the_record() {
    let logs = logs::capture();
    let named = Named::start("example.test");
    let pebble = Pebble::start(PebbleOptions {
        dns_server: Some(named.address),
        certificate_validity: Some(Duration::from_secs(40)),
        ..Default::default()
    });
    let data = Scratch::new("tls-dns01-bind");
    let mut settings = dns01_settings(&pebble, &data);
    settings.tls.dns_update = Some(dns_update(&named));
    let manager =
        TlsManager::start_with_services(&settings, &services(), Arc::new(routes), test_tuning())
            .await
            .unwrap();
    let _frontend = Frontend::start(manager.clone(), free_port(), pebble.tls_port).await;
    let root = pebble.issuing_root();

    eventually(120, "the wildcard certified through bind9", || {
        find(&manager.certificates(), WILDCARD).is_some_and(|c| c.not_after.is_some())
    })
    .await;
    let first = find(&manager.certificates(), WILDCARD).unwrap().clone();
    assert!(first.last_error.is_none(), "{first:?}");
    assert_eq!(
        named.txt(CHALLENGE_NAME),
        Vec::<String>::new(),
        "the TXT records are deleted once the order is over"
    );

    let alice = https_get(pebble.tls_port, "alice.notes.example.test", &[&root])
        .await
        .unwrap();
    let bob = https_get(pebble.tls_port, "bob.notes.example.test", &[&root])
        .await
        .unwrap();
    assert_eq!(alice.leaf, bob.leaf);
    assert_eq!(leaf_names(&alice.leaf), [WILDCARD, "notes.example.test"]);

    // Two thirds into its 40 s lifetime the wildcard is renewed the same way.
    eventually(150, "the wildcard renewed", || {
        find(&manager.certificates(), WILDCARD)
            .is_some_and(|c| c.not_after > first.not_after && c.last_error.is_none())
    })
    .await;
    assert!(logs.text().contains("*.notes.example.test (renewal)"));
    let renewed = https_get(pebble.tls_port, "alice.notes.example.test", &[&root])
        .await
        .unwrap();
    assert_ne!(
        renewed.leaf, alice.leaf,
        "the renewed certificate is served"
    );
    assert_eq!(named.txt(CHALLENGE_NAME), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_secret_is_reported_with_the_record_and_the_server() {
    let _logs = logs::capture();
    let named = Named::start("example.test");
    let pebble = Pebble::start(PebbleOptions {
        dns_server: Some(named.address),
        ..Default::default()
    });
    let data = Scratch::new("tls-dns01-badsig");
    let mut settings = dns01_settings(&pebble, &data);
    let mut update = dns_update(&named);
    update.key_secret_file = named.write("wrong.secret", "d3Jvbmcgc2VjcmV0IGZvciB0aGUga2V5Cg==\n");
    settings.tls.dns_update = Some(update);
    let manager =
        TlsManager::start_with_services(&settings, &services(), Arc::new(routes), test_tuning())
            .await
            .unwrap();

    let mut error = String::new();
    eventually(120, "the failed update reported", || {
        error = find(&manager.certificates(), WILDCARD)
            .and_then(|c| c.last_error.clone())
            .unwrap_or_default();
        !error.is_empty()
    })
    .await;
    assert!(
        error.contains(&format!(
            "DNS update of the TXT record {CHALLENGE_NAME} at {} was refused: NOTAUTH (TSIG BADSIG)",
            named.address
        )),
        "{error}"
    );
    assert!(find(&manager.certificates(), WILDCARD)
        .unwrap()
        .not_after
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_not_visible_in_time_fails_naming_it_and_is_removed() {
    let _logs = logs::capture();
    let named = Named::start("example.test");
    let pebble = Pebble::start(PebbleOptions {
        dns_server: Some(named.address),
        ..Default::default()
    });
    let data = Scratch::new("tls-dns01-invisible");
    let mut settings = dns01_settings(&pebble, &data);
    // The update reaches bind9, but the server checked for propagation never answers.
    let silent = local(free_port());
    let mut update = dns_update(&named);
    update.check_servers = vec![silent];
    settings.tls.dns_update = Some(update);
    settings.tls.dns_propagation_timeout = 2;
    let tuning = tenement::tls::Tuning {
        failure_backoff_base: Duration::from_secs(600),
        failure_backoff_max: Duration::from_secs(600),
        ..test_tuning()
    };
    let manager = TlsManager::start_with_services(&settings, &services(), Arc::new(routes), tuning)
        .await
        .unwrap();

    let mut error = String::new();
    eventually(120, "the propagation timeout reported", || {
        error = find(&manager.certificates(), WILDCARD)
            .and_then(|c| c.last_error.clone())
            .unwrap_or_default();
        !error.is_empty()
    })
    .await;
    assert!(
        error.contains(&format!(
            "the TXT record {CHALLENGE_NAME} is not visible at {silent} after 2s"
        )),
        "{error}"
    );
    // What was published for the failed order was deleted before the failure was recorded
    // (and no retry has published anything since: the pause after a failure is long).
    assert_eq!(named.txt(CHALLENGE_NAME), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_dns_port_fails_the_start_naming_the_address() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let data = Scratch::new("tls-dns01-taken");
    let mut settings = Settings {
        data_dir: data.path.clone(),
        ..Default::default()
    };
    settings.tls.enabled = true;
    settings.tls.challenges = vec![Challenge::Dns01];
    settings.tls.dns_listen = Some(address);
    let error = TlsManager::start_with_services(&settings, &[], Arc::new(routes), test_tuning())
        .await
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!(
            "settings.tls.dns_listen: binding the DNS-01 responder to {address} (udp)"
        )),
        "{error}"
    );
}
