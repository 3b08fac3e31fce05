//! TLS helpers for the end-to-end tests: a throwaway CA, an HTTPS client that reports what
//! was negotiated, and a `Frontend` (plain + TLS listeners) driving a `TlsManager` the way
//! the proxy does.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use tenement::tls::{http01_token, TlsManager};
use tokio::{net::TcpListener, task::JoinHandle};

/// A certificate authority made for one test.
pub struct TestCa {
    pub pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa {
            pem: AsRef::<rcgen::Certificate>::as_ref(&issuer).pem(),
            issuer,
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses): (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Like [`TestCa::issue`], valid until midnight UTC `days` days from today (so between
    /// `days - 1` and `days` days from now).
    pub fn issue_expiring(&self, names: &[&str], days: u64) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400;
        let (year, month, day) = civil_date(today + days);
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Year, month, day of `days` since 1970-01-01 (proleptic Gregorian, H. Hinnant's method).
fn civil_date(days: u64) -> (i32, u8, u8) {
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_date(0), (1970, 1, 1));
        assert_eq!(super::civil_date(19_782), (2024, 2, 29));
        assert_eq!(super::civil_date(20_818), (2026, 12, 31));
    }
}

/// What an HTTPS request saw.
#[derive(Debug)]
pub struct HttpsResponse {
    pub status: StatusCode,
    pub body: String,
    /// Negotiated ALPN protocol, e.g. `h2`.
    pub alpn: Option<String>,
    pub version: http::Version,
    /// DER of the certificate the server presented.
    pub leaf: Vec<u8>,
}

/// `GET https://{host}/` sent to 127.0.0.1:`port`, trusting only `roots` (PEM), offering
/// `h2` and `http/1.1`.
pub async fn https_get(port: u16, host: &str, roots: &[&str]) -> Result<HttpsResponse> {
    https_get_offering(port, host, roots, &["h2", "http/1.1"]).await
}

/// [`https_get`] offering only the ALPN protocols in `alpn`.
pub async fn https_get_offering(
    port: u16,
    host: &str,
    roots: &[&str],
    alpn: &[&str],
) -> Result<HttpsResponse> {
    KeptConnection::open(port, host, roots, alpn)
        .await?
        .get()
        .await
}

/// One HTTPS connection kept open (HTTP/1.1 keep-alive or HTTP/2) for several requests.
pub struct KeptConnection {
    host: String,
    alpn: Option<String>,
    /// DER of the certificate the server presented in this connection's handshake.
    pub leaf: Vec<u8>,
    sender: Sender,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl KeptConnection {
    /// Connects to 127.0.0.1:`port` for `host`, trusting only `roots` (PEM), offering the
    /// ALPN protocols `alpn`.
    pub async fn open(
        port: u16,
        host: &str,
        roots: &[&str],
        alpn: &[&str],
    ) -> Result<KeptConnection> {
        let mut store = rustls::RootCertStore::empty();
        for pem in roots {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                store.add(cert?)?;
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        let tls = tokio::time::timeout(
            Duration::from_secs(60),
            connector.connect(ServerName::try_from(host.to_string())?, tcp),
        )
        .await
        .with_context(|| format!("TLS handshake for {host}: no answer"))?
        .with_context(|| format!("TLS handshake for {host}"))?;
        let (_, connection) = tls.get_ref();
        let alpn = connection
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("no server certificate")?
            .to_vec();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some("h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            Sender::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            Sender::Http1(sender)
        };
        Ok(KeptConnection {
            host: host.to_string(),
            alpn,
            leaf,
            sender,
        })
    }

    /// `GET https://{host}/` on this connection.
    pub async fn get(&mut self) -> Result<HttpsResponse> {
        let host = &self.host;
        let request = Request::get(format!("https://{host}/"))
            .header(hyper::header::HOST, host)
            .body(Full::new(Bytes::new()))?;
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let version = response.version();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(HttpsResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            alpn: self.alpn.clone(),
            version,
            leaf: self.leaf.clone(),
        })
    }
}

/// The proxy's side of TLS, in miniature: a plain listener answering HTTP-01 challenges,
/// and a TLS listener that hands each connection to `TlsManager::accept` and then answers
/// `hello from {host} over {version}`. Listeners close on drop.
pub struct Frontend {
    tasks: Vec<JoinHandle<()>>,
    validations: Arc<AtomicUsize>,
    challenges_answered: Arc<AtomicUsize>,
}

impl Frontend {
    pub async fn start(manager: TlsManager, http_port: u16, https_port: u16) -> Frontend {
        let plain = bind(http_port).await;
        let secure = bind(https_port).await;
        let challenge_manager = manager.clone();
        let validations = Arc::new(AtomicUsize::new(0));
        let challenges_answered = Arc::new(AtomicUsize::new(0));
        let answered = challenges_answered.clone();
        let plain_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = plain.accept().await else {
                    continue;
                };
                let manager = challenge_manager.clone();
                let answered = answered.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let answer = http01_token(request.uri().path())
                            .and_then(|token| manager.http01_response(token));
                        if answer.is_some() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        async move { Ok::<_, Infallible>(challenge_response(answer)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        let validated = validations.clone();
        let tls_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = secure.accept().await else {
                    continue;
                };
                let manager = manager.clone();
                let validated = validated.clone();
                tokio::spawn(async move {
                    let tls = match manager.accept(tcp).await {
                        Ok(Some(tls)) => tls,
                        Ok(None) => {
                            validated.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(err) => {
                            eprintln!("frontend: {err}");
                            return;
                        }
                    };
                    let host = tls.get_ref().1.server_name().unwrap_or("").to_string();
                    let service = service_fn(move |request: Request<Incoming>| {
                        let body = format!("hello from {host} over {:?}", request.version());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Frontend {
            tasks: vec![plain_task, tls_task],
            validations,
            challenges_answered,
        }
    }

    /// TLS-ALPN-01 validation handshakes answered (`accept` returned `Ok(None)`).
    pub fn tls_alpn01_validations(&self) -> usize {
        self.validations.load(Ordering::Relaxed)
    }

    /// HTTP-01 challenge requests answered with a key authorization.
    pub fn http01_answers(&self) -> usize {
        self.challenges_answered.load(Ordering::Relaxed)
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn challenge_response(answer: Option<String>) -> Response<Full<Bytes>> {
    match answer {
        Some(key_authorization) => Response::new(Full::new(Bytes::from(key_authorization))),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"no such challenge")))
            .unwrap(),
    }
}

/// Binds 127.0.0.1:`port`, retrying while a just-closed listener still holds it.
async fn bind(port: u16) -> TcpListener {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut attempts = 0;
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(_) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("binding {address}: {err}"),
        }
    }
}

/// `[settings]` for a TlsManager using `pebble`, storing under `data_dir`.
pub fn pebble_settings(
    pebble: &crate::pebble::Pebble,
    data_dir: &std::path::Path,
) -> tenement::config::Settings {
    let mut settings = tenement::config::Settings {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    settings.tls.enabled = true;
    settings.tls.acme_directory = pebble.directory_url.clone();
    settings.tls.acme_root = Some(pebble.acme_root.clone());
    settings.tls.acme_email = Some("ops@example.com".into());
    settings
}

/// Schedules short enough for a test against pebble; the limits stay generous.
pub fn test_tuning() -> tenement::tls::Tuning {
    tenement::tls::Tuning {
        handshake_wait: Duration::from_secs(90),
        failure_backoff_base: Duration::from_secs(1),
        failure_backoff_max: Duration::from_secs(4),
        maintenance_interval: Duration::from_millis(300),
        own_cert_poll: Duration::from_millis(200),
        ..Default::default()
    }
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after `seconds`.
pub async fn eventually(seconds: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
