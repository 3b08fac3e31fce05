//! TLS termination (rustls) and certificates from an ACME server (instant-acme).
//!
//! The proxy's listeners use one [`TlsManager`]: the TLS listener hands every accepted TCP
//! connection to [`TlsManager::accept`], the plain listener answers HTTP-01 challenges with
//! [`TlsManager::http01_response`]. Everything else happens inside:
//!
//! - certificates for `settings.domain` and `[settings.tls] names` are ordered at start, in
//!   the background; others on demand, at the first handshake for a name the proxy routes
//!   ([`NamePolicy`]), so a stranger cannot make tenement order certificates for made-up names;
//! - one order per name at a time, a growing pause after a name's failures, a global rate
//!   limit; a handshake waits a bounded time for its name's first certificate;
//! - certificates and the ACME account live under `{data_dir}/tls/` (keys 0600) and are
//!   served at start without contacting the ACME server;
//! - renewal at two thirds of the lifetime, retried with backoff while the old one serves;
//! - the operator's own `cert` / `key` win for the names they cover and are reloaded when
//!   the files change.

mod acme;
mod certificate;
mod challenges;
mod disk;
mod maintenance;
mod orders;
mod own_cert;
mod store;

use std::{
    collections::BTreeSet,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};
use rustls::{
    server::{Acceptor, ResolvesServerCert},
    ServerConfig,
};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::timeout};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

pub use certificate::{CertificateInfo, CertificateSource};

use crate::config::Settings;
use acme::Acme;
use certificate::provider;
use challenges::{ChallengeResolver, Challenges, ACME_TLS_ALPN};
use orders::{Admission, OrderBook, Outcome};
use own_cert::OwnCertFiles;
use store::{CertStore, StoreResolver};

/// Which host names exist. Only these get certificates ordered on demand.
pub trait NamePolicy: Send + Sync + 'static {
    /// True when a request for `host` (lower case, no port) would reach a service or an
    /// instance.
    fn routes(&self, host: &str) -> bool;
}

impl<F: Fn(&str) -> bool + Send + Sync + 'static> NamePolicy for F {
    fn routes(&self, host: &str) -> bool {
        self(host)
    }
}

/// Timings and limits. The defaults suit a public ACME CA such as Let's Encrypt; tests
/// shorten them to run against pebble in seconds.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// How long a handshake for a name without a certificate waits for its first one.
    pub handshake_wait: Duration,
    /// Pause after a name's failed order, doubling with each further failure up to the max.
    pub failure_backoff_base: Duration,
    pub failure_backoff_max: Duration,
    /// Global order rate: `order_burst` orders at once, then one per `order_interval`.
    pub order_burst: u32,
    pub order_interval: Duration,
    /// How often certificates due for renewal and missing configured names are looked for.
    pub maintenance_interval: Duration,
    /// How often the own `cert` / `key` files are checked for changes.
    pub own_cert_poll: Duration,
    /// Longest time one order may take, all its steps included.
    pub order_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            handshake_wait: Duration::from_secs(20),
            // Let's Encrypt allows 5 failed validations per name and hour: 2, 4, 8, 16,
            // 32 minutes between attempts stays below that.
            failure_backoff_base: Duration::from_secs(120),
            failure_backoff_max: Duration::from_secs(3600),
            // 100 orders an hour, a third of Let's Encrypt's 300 new orders per 3 hours.
            order_burst: 20,
            order_interval: Duration::from_secs(36),
            maintenance_interval: Duration::from_secs(60),
            own_cert_poll: Duration::from_secs(5),
            order_timeout: Duration::from_secs(180),
        }
    }
}

/// A client that sends no ClientHello within this time is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Rest of the handshake, once a certificate is chosen.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Certificates, ACME and handshakes for the TLS listeners. Cheap to clone; the background
/// tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct TlsManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    /// `None` when `acme_directory` is empty or no challenge is enabled: own certificate only.
    acme: Option<Acme>,
    orders: OrderBook,
    orders_started: AtomicU64,
    names: Arc<dyn NamePolicy>,
    /// `settings.domain` and `[settings.tls] names`: kept certified whether they route or not.
    configured: Vec<String>,
    own_error: Mutex<Option<String>>,
    server_config: Arc<ServerConfig>,
    challenge_config: Arc<ServerConfig>,
    tuning: Tuning,
}

/// Why an order starts; for the logs.
#[derive(Clone, Copy, Debug)]
enum Reason {
    OnDemand,
    Configured,
    Renewal,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::OnDemand => "first handshake",
            Reason::Configured => "configured name",
            Reason::Renewal => "renewal",
        })
    }
}

impl TlsManager {
    /// [`TlsManager::start_with`] with the default [`Tuning`].
    pub async fn start(settings: &Settings, names: Arc<dyn NamePolicy>) -> Result<TlsManager> {
        Self::start_with(settings, names, Tuning::default()).await
    }

    /// Loads the own certificate (errors here are configuration errors), the stored ACME
    /// certificates, and starts the background work. Never contacts the ACME server: a CA
    /// that is down delays new certificates, never the start.
    pub async fn start_with(
        settings: &Settings,
        names: Arc<dyn NamePolicy>,
        tuning: Tuning,
    ) -> Result<TlsManager> {
        let tls = &settings.tls;
        let store = Arc::new(CertStore::default());

        let own_files = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(OwnCertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => bail!("settings.tls: `cert` is set but `key` is not"),
            (None, Some(_)) => bail!("settings.tls: `key` is set but `cert` is not"),
        };
        let own_stamp = own_files.as_ref().map(OwnCertFiles::stamp);
        if let Some(files) = &own_files {
            let own = files.load()?;
            tracing::info!(
                "tls: serving {} for {}",
                files.cert.display(),
                own.names.join(", ")
            );
            store.set_own(Arc::new(own));
        }

        let acme = if tls.acme_directory.trim().is_empty() || tls.challenges.is_empty() {
            tracing::info!("tls: ACME is off (no acme_directory or no challenges)");
            None
        } else {
            if let Some(email) = &tls.acme_email {
                if !email.contains('@') || email.contains(char::is_whitespace) {
                    bail!("settings.tls.acme_email {email:?} is not an e-mail address");
                }
            }
            if let Some(root) = &tls.acme_root {
                std::fs::metadata(root)
                    .with_context(|| format!("settings.tls.acme_root {}", root.display()))?;
            }
            let disk = disk::Disk::open(&settings.data_dir, &tls.acme_directory)?;
            for (name, loaded) in disk.load_certificates() {
                match loaded {
                    Ok(cert) => store.insert_acme(&name, Arc::new(cert)),
                    Err(err) => tracing::error!("tls: {err:#}"),
                }
            }
            Some(Acme::new(
                tls.acme_directory.clone(),
                tls.acme_email.clone(),
                tls.acme_root.clone(),
                tls.challenges.clone(),
                disk,
            ))
        };

        let mut configured = BTreeSet::new();
        for name in &tls.names {
            let name = normalize_host(name);
            if !orderable(&name) {
                bail!(
                    "settings.tls.names: {name:?} cannot get an ACME certificate (a public \
                     DNS name without wildcard is needed)"
                );
            }
            configured.insert(name);
        }
        for domain in &settings.domain {
            let domain = normalize_host(domain);
            if orderable(&domain) {
                configured.insert(domain);
            } else {
                tracing::info!("tls: no ACME certificate for the domain {domain}: not public");
            }
        }

        let challenges = Arc::new(Challenges::default());
        let inner = Arc::new(Inner {
            server_config: server_config(
                Arc::new(StoreResolver(store.clone())),
                &[b"h2", b"http/1.1"],
            )?,
            challenge_config: server_config(
                Arc::new(ChallengeResolver(challenges.clone())),
                &[ACME_TLS_ALPN],
            )?,
            store,
            challenges,
            acme,
            orders: OrderBook::new(&tuning),
            orders_started: AtomicU64::new(0),
            names,
            configured: configured.into_iter().collect(),
            own_error: Mutex::new(None),
            tuning,
        });

        if inner.acme.is_some() {
            tokio::spawn(maintenance::keep_certified(
                Arc::downgrade(&inner),
                inner.tuning.maintenance_interval,
            ));
        }
        if let (Some(files), Some(stamp)) = (own_files, own_stamp) {
            tokio::spawn(maintenance::watch_own_cert(
                Arc::downgrade(&inner),
                files,
                stamp,
                inner.tuning.own_cert_poll,
            ));
        }
        Ok(TlsManager { inner })
    }

    /// Completes the TLS handshake of an accepted connection.
    ///
    /// `Ok(None)`: it was an ACME TLS-ALPN-01 validation, answered and closed here.
    /// For a name without a certificate that routes somewhere, the handshake waits (at most
    /// `Tuning::handshake_wait`) for its first certificate; other handshakes go on meanwhile.
    /// The negotiated ALPN protocol (`h2` or `http/1.1`) is in the stream's connection.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Option<TlsStream<TcpStream>>> {
        let inner = &self.inner;
        let start = timeout(
            HELLO_TIMEOUT,
            LazyConfigAcceptor::new(Acceptor::default(), tcp),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS: no ClientHello within {HELLO_TIMEOUT:?}"),
            )
        })??;
        let hello = start.client_hello();
        let name = hello.server_name().map(normalize_host);
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let shown = name.as_deref().unwrap_or("(no SNI)").to_string();

        if validation {
            let config = inner.challenge_config.clone();
            let mut stream = finish_handshake(start.into_stream(config), &shown, None).await?;
            // RFC 8737: the validation ends with the handshake.
            let _ = stream.shutdown().await;
            return Ok(None);
        }

        let missing = match &name {
            Some(name) => inner.wait_for_certificate(name).await.err(),
            None => None,
        };
        let config = inner.server_config.clone();
        let stream = finish_handshake(start.into_stream(config), &shown, missing).await?;
        Ok(Some(stream))
    }

    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with, while
    /// an HTTP-01 validation for it is pending. See [`http01_token`].
    pub fn http01_response(&self, token: &str) -> Option<String> {
        self.inner.challenges.http01(token)
    }

    /// Every certificate served, plus names whose certificate could not be obtained yet,
    /// each with its last error.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let inner = &self.inner;
        let mut failures = inner.orders.failures();
        let mut list = Vec::new();
        if let Some(own) = inner.store.own() {
            let mut info = CertificateInfo::of(&own, CertificateSource::File);
            info.last_error = inner.own_error.lock().unwrap().clone();
            list.push(info);
        }
        for (name, cert) in inner.store.acme_all() {
            let mut info = CertificateInfo::of(&cert, CertificateSource::Acme);
            if let Some(i) = failures.iter().position(|(failed, _)| *failed == name) {
                info.last_error = Some(failures.remove(i).1);
            }
            list.push(info);
        }
        for (name, error) in failures {
            list.push(CertificateInfo::missing(&name, error));
        }
        list
    }

    /// ACME orders started since `start` (on demand, configured names and renewals).
    pub fn orders_started(&self) -> u64 {
        self.inner.orders_started.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Ok when a certificate for `name` is there (now or after waiting for its order);
    /// otherwise why not.
    async fn wait_for_certificate(self: &Arc<Self>, name: &str) -> Result<(), String> {
        if self.store.lookup(name).is_some() {
            return Ok(());
        }
        if self.acme.is_none() {
            return Err("no certificate covers it, and ACME is off".into());
        }
        if !orderable(name) || !self.names.routes(name) {
            return Err("it routes nowhere, so no certificate is ordered for it".into());
        }
        let mut outcome = self.request(name, Reason::OnDemand)?;
        let wait = self.tuning.handshake_wait;
        // Bound to a local so that the channel's read guard is gone before `outcome` is.
        let waited = match timeout(wait, outcome.wait_for(Option::is_some)).await {
            Ok(Ok(result)) => result.clone().unwrap_or(Ok(())),
            Ok(Err(_)) => Err("the order ended without a result".into()),
            Err(_) => Err(format!(
                "its certificate is still being issued after {}",
                humantime::format_duration(wait)
            )),
        };
        waited
    }

    /// Starts an order for `name` in the background, or joins the running one.
    fn request(
        self: &Arc<Self>,
        name: &str,
        reason: Reason,
    ) -> Result<tokio::sync::watch::Receiver<Outcome>, String> {
        let Some(acme) = &self.acme else {
            return Err("ACME is off".into());
        };
        let (done, outcome, failed_before) = match self.orders.admit(name) {
            Admission::Join(outcome) => return Ok(outcome),
            Admission::Refused(why) => {
                tracing::debug!("tls: not ordering a certificate for {name} now: {why}");
                return Err(why);
            }
            Admission::Start {
                done,
                outcome,
                failed_before,
            } => (done, outcome, failed_before),
        };
        self.orders_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "tls: ordering a certificate for {name} ({reason}) from {}",
            acme.directory
        );
        let inner = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let result = inner.order(&name, failed_before).await;
            if let Some(pause) = inner.orders.finish(&name, &result) {
                let error = result.as_ref().err().map(String::as_str).unwrap_or("");
                let serving = match inner.store.lookup(&name) {
                    Some(_) => "the current certificate keeps serving; ",
                    None => "",
                };
                tracing::error!(
                    "tls: no certificate for {name} from {}: {error}; {serving}retrying in {}",
                    inner
                        .acme
                        .as_ref()
                        .map_or("", |acme| acme.directory.as_str()),
                    humantime::format_duration(pause)
                );
            }
            let _ = done.send(Some(result));
        });
        Ok(outcome)
    }

    async fn order(&self, name: &str, failed_before: u32) -> Result<(), String> {
        let acme = self.acme.as_ref().ok_or("ACME is off")?;
        let issue = acme.issue(name, &self.challenges, failed_before);
        let issued = timeout(self.tuning.order_timeout, issue).await;
        match issued {
            Ok(Ok(cert)) => {
                tracing::info!(
                    "tls: certificate for {name} issued by {}, valid until {}, renewal from {}",
                    cert.issuer,
                    humantime::format_rfc3339_seconds(cert.not_after),
                    humantime::format_rfc3339_seconds(cert.renew_at())
                );
                self.store.insert_acme(name, Arc::new(cert));
                Ok(())
            }
            Ok(Err(err)) => Err(acme::describe(&err)),
            Err(_) => Err(format!(
                "the order took longer than {}",
                humantime::format_duration(self.tuning.order_timeout)
            )),
        }
    }

    /// One pass of the background work: configured names without a certificate, and
    /// certificates due for renewal.
    fn maintain(self: &Arc<Self>) {
        let now = SystemTime::now();
        let mut due: Vec<(String, Reason)> = Vec::new();
        for name in &self.configured {
            if self.store.own_covering(name).is_none() && self.store.acme(name).is_none() {
                due.push((name.clone(), Reason::Configured));
            }
        }
        for (name, cert) in self.store.acme_all() {
            if now < cert.renew_at() || self.store.own_covering(&name).is_some() {
                continue;
            }
            // A certificate of a tenant that no longer exists is left to expire.
            if self.configured.contains(&name) || self.names.routes(&name) {
                due.push((name, Reason::Renewal));
            }
        }
        for (name, reason) in due {
            let _ = self.request(&name, reason);
        }
    }
}

async fn finish_handshake(
    handshake: tokio_rustls::Accept<TcpStream>,
    name: &str,
    missing: Option<String>,
) -> io::Result<TlsStream<TcpStream>> {
    let because = missing
        .map(|why| format!(" (no certificate: {why})"))
        .unwrap_or_default();
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(io::Error::new(
            err.kind(),
            format!("TLS handshake for {name} failed: {err}{because}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake for {name} did not finish within {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    // rustls' safe defaults: TLS 1.2 and 1.3, AEAD suites with forward secrecy only.
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The token of an HTTP-01 challenge request path, for the plain listener:
/// `/.well-known/acme-challenge/{token}` (tokens are base64url).
pub fn http01_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix("/.well-known/acme-challenge/")?;
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (!token.is_empty() && token.bytes().all(base64url)).then_some(token)
}

/// Host names as compared everywhere here: lower case, without the root's trailing dot.
pub(crate) fn normalize_host(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A name an ACME CA can issue for and that is safe as a file name: letters, digits and
/// hyphens in dot-separated labels, at least two labels, no wildcard, nothing under
/// `localhost`.
fn orderable(name: &str) -> bool {
    let labels_ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    labels_ok
        && name.len() <= 253
        && name.contains('.')
        && name != "localhost"
        && !name.ends_with(".localhost")
        && name.parse::<std::net::IpAddr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_paths() {
        assert_eq!(
            http01_token("/.well-known/acme-challenge/abc-DEF_123"),
            Some("abc-DEF_123")
        );
        assert_eq!(http01_token("/.well-known/acme-challenge/"), None);
        assert_eq!(http01_token("/.well-known/acme-challenge/../x"), None);
        assert_eq!(http01_token("/index.html"), None);
    }

    #[test]
    fn orderable_names() {
        assert!(orderable("alice.notes.example.com"));
        assert!(orderable("example.com"));
        assert!(!orderable("localhost"));
        assert!(!orderable("a.localhost"));
        assert!(!orderable("*.example.com"));
        assert!(!orderable("a..example.com"));
        assert!(!orderable("-a.example.com"));
        assert!(!orderable("a/b.example.com"));
        assert!(!orderable("Example.com"), "callers normalize first");
        assert_eq!(normalize_host("Alice.Example.COM."), "alice.example.com");
    }
}
