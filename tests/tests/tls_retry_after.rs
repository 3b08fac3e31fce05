//! A CA that refuses with `429 Too Many Requests` and `Retry-After`: tenement waits at
//! least that long before ordering again, and says so in the certificate's last error.
//!
//! pebble 2.4 never sends `Retry-After`, so the CA here is a small real HTTPS server that
//! plays an ACME directory whose newOrder endpoint is rate limited.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tenement::tls::TlsManager;
use tenement_tests::{
    logs,
    tls::{eventually, test_tuning, TestCa},
    Scratch,
};
use tokio::net::TcpListener;

/// What the fake CA answers to newOrder.
#[derive(Clone, Copy)]
enum Refusal {
    /// 429 rateLimited with `Retry-After: 3600`.
    RateLimited,
    /// 500 serverInternal without `Retry-After`.
    Broken,
}

struct FakeCa {
    base: String,
    orders: Arc<AtomicUsize>,
}

async fn start_fake_ca(ca: &TestCa, refusal: Refusal) -> FakeCa {
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let orders = Arc::new(AtomicUsize::new(0));
    let (served_base, served_orders) = (base.clone(), orders.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, base, orders) =
                (acceptor.clone(), served_base.clone(), served_orders.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let (base, orders) = (base.clone(), orders.clone());
                    async move { Ok::<_, Infallible>(answer(&request, &base, &orders, refusal)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeCa { base, orders }
}

/// The few ACME endpoints an order reaches before newOrder refuses it.
fn answer(
    request: &Request<Incoming>,
    base: &str,
    orders: &AtomicUsize,
    refusal: Refusal,
) -> Response<Full<Bytes>> {
    let response = Response::builder().header("replay-nonce", "bm9uY2U");
    let json = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("replay-nonce", "bm9uY2U")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
    };
    match request.uri().path() {
        "/dir" => json(
            200,
            format!(
                r#"{{"newNonce": "{base}/nonce", "newAccount": "{base}/account", "newOrder": "{base}/order"}}"#
            ),
        )
        .unwrap(),
        "/nonce" => response.status(200).body(Full::default()).unwrap(),
        "/account" => Response::builder()
            .status(201)
            .header("replay-nonce", "bm9uY2U")
            .header("location", format!("{base}/account/1"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(r#"{"status": "valid"}"#)))
            .unwrap(),
        "/order" => {
            orders.fetch_add(1, Ordering::SeqCst);
            let problem = |status: u16, kind: &str, detail: &str| {
                Response::builder()
                    .status(status)
                    .header("replay-nonce", "bm9uY2U")
                    .header("content-type", "application/problem+json")
                    .body(Full::new(Bytes::from(format!(
                        r#"{{"type": "urn:ietf:params:acme:error:{kind}", "detail": "{detail}", "status": {status}}}"#
                    ))))
            };
            match refusal {
                Refusal::RateLimited => {
                    let mut limited =
                        problem(429, "rateLimited", "too many new orders recently").unwrap();
                    limited
                        .headers_mut()
                        .insert("retry-after", "3600".parse().unwrap());
                    limited
                }
                Refusal::Broken => problem(500, "serverInternal", "the CA is broken").unwrap(),
            }
        }
        _ => response.status(404).body(Full::default()).unwrap(),
    }
}

/// A manager ordering `shop.example.test` (the domain, kept certified) from `fake`, with
/// the test schedules: 1 s backoff after the first failure, maintenance every 300 ms.
async fn manager_for(fake: &FakeCa, ca: &TestCa, data: &Scratch) -> TlsManager {
    let mut settings = tenement::config::Settings {
        data_dir: data.path.clone(),
        domain: vec!["shop.example.test".into()],
        ..Default::default()
    };
    settings.tls.enabled = true;
    settings.tls.acme_directory = format!("{}/dir", fake.base);
    settings.tls.acme_root = Some(data.write("ca.pem", &ca.pem));
    let nothing_routes = |_: &str| false;
    TlsManager::start_with(&settings, Arc::new(nothing_routes), test_tuning())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_order_waits_for_retry_after() {
    let _logs = logs::capture();
    let ca = TestCa::new("tenement test fake ACME CA");
    let fake = start_fake_ca(&ca, Refusal::RateLimited).await;
    let data = Scratch::new("tls-retry-after");
    let manager = manager_for(&fake, &ca, &data).await;

    eventually(30, "the first order to be refused", || {
        manager
            .certificates()
            .iter()
            .any(|info| info.last_error.is_some())
    })
    .await;
    let error = manager.certificates()[0].last_error.clone().unwrap();
    assert!(
        error.starts_with(
            "creating the order: API error: too many new orders recently \
             (urn:ietf:params:acme:error:rateLimited); the CA asked not to retry before "
        ),
        "{error}"
    );
    assert!(
        error.contains("the CA asked not to retry before"),
        "{error}"
    );
    assert!(error.contains("(Retry-After)"), "{error}");
    // Without the Retry-After the backoff (1 s, then 2 s) would have ordered again by now:
    // 8 s is several backoffs and some twenty maintenance passes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(fake.orders.load(Ordering::SeqCst), 1);
    assert_eq!(manager.orders_started(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_failures_back_off_exponentially() {
    let _logs = logs::capture();
    let ca = TestCa::new("tenement test fake ACME CA");
    let fake = start_fake_ca(&ca, Refusal::Broken).await;
    let data = Scratch::new("tls-retry-broken");
    let manager = manager_for(&fake, &ca, &data).await;

    // 1 s, 2 s, 4 s between attempts: a third order comes within a few seconds.
    let orders = fake.orders.clone();
    eventually(30, "three orders", || orders.load(Ordering::SeqCst) >= 3).await;
    let error = manager.certificates()[0].last_error.clone().unwrap();
    assert!(error.contains("the CA is broken"), "{error}");
    assert!(!error.contains("Retry-After"), "{error}");
}
