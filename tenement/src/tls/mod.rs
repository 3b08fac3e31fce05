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
//! - certificates and the ACME account live under `{data_dir}/.tenement/tls/` (keys 0600)
//!   and are served at start without contacting the ACME server;
//! - renewal at 60% to two thirds of the lifetime (spread per certificate), retried with
//!   backoff while the old one serves;
//! - DNS-01 through a TXT record publisher (`dns01/`), and wildcard certificates per service;
//! - the operator's own `cert` / `key` win for the names they cover and are reloaded when
//!   the files change;
//! - in a fleet, certificates are shared: one server orders a name under a fleet-wide lock,
//!   the others install what it stored (`shared`).

mod acme;
mod certificate;
mod challenges;
mod disk;
mod dns01;
mod handshake;
mod issuance;
mod maintenance;
mod names;
mod on_demand;
mod orders;
mod own_cert;
mod retry_after;
mod shared;
mod store;

use std::sync::PoisonError;
use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub use certificate::{CertificateInfo, CertificateSource};
pub use names::http01_token;
pub use on_demand::Refusal;
pub use shared::{Holder, Lock, SharedCertificates};

use crate::config::{Config, Settings, Tls};
use acme::Acme;
use challenges::{ChallengeResolver, Challenges, ACME_TLS_ALPN};
use handshake::server_config;
use orders::OrderBook;
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

/// Certificates, ACME and handshakes for the TLS listeners. Cheap to clone; the background
/// tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct TlsManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TlsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsManager")
            .field(
                "acme_directory",
                &self.inner.acme.as_ref().map(|acme| &acme.directory),
            )
            .field("certificates", &self.inner.store.acme_all().len())
            .field("own_certificate", &self.inner.store.own().is_some())
            .finish()
    }
}

struct Inner {
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    /// `None` when `acme_directory` is empty or no challenge is enabled: own certificate only.
    acme: Option<Acme>,
    orders: OrderBook,
    orders_started: AtomicU64,
    on_demand: on_demand::OnDemandGate,
    names: Arc<dyn NamePolicy>,
    /// `settings.domain`, `[settings.tls] names` and the wildcards: kept certified whether
    /// they route or not.
    configured: Vec<String>,
    /// `*.{service}.{domain}` for the services of `[settings.tls] wildcard`: a name they
    /// cover waits for the wildcard's order instead of starting one of its own.
    wildcards: Vec<String>,
    own_error: Mutex<Option<String>>,
    /// In a fleet: the fleet's certificates, order locks and challenge answers.
    shared: Option<Arc<dyn SharedCertificates>>,
    server_config: Arc<ServerConfig>,
    challenge_config: Arc<ServerConfig>,
    tuning: Tuning,
}

impl TlsManager {
    /// [`TlsManager::start_with`] with the default [`Tuning`] (no services: see there).
    pub async fn start(settings: &Settings, names: Arc<dyn NamePolicy>) -> Result<TlsManager> {
        Self::start_with(settings, names, Tuning::default()).await
    }

    /// What `tenement serve` starts: [`TlsManager::start_with_services`] for `config`'s
    /// settings and services, with the default [`Tuning`].
    /// `shared`: the fleet's certificates (with `[fleet]`), `None` on a single server.
    pub async fn start_for(
        config: &Config,
        names: Arc<dyn NamePolicy>,
        shared: Option<Arc<dyn SharedCertificates>>,
    ) -> Result<TlsManager> {
        let services: Vec<String> = config.service.keys().cloned().collect();
        Self::start_shared(
            &config.settings,
            &services,
            names,
            Tuning::default(),
            shared,
        )
        .await
    }

    /// [`TlsManager::start_with_services`] without services: `wildcard = true` then has no
    /// service to order a wildcard for.
    pub async fn start_with(
        settings: &Settings,
        names: Arc<dyn NamePolicy>,
        tuning: Tuning,
    ) -> Result<TlsManager> {
        Self::start_with_services(settings, &[], names, tuning).await
    }

    /// Loads the own certificate (errors here are configuration errors), the stored ACME
    /// certificates, starts the DNS-01 responder when `dns_listen` is set, and starts the
    /// background work. Never contacts the ACME server: a CA that is down delays new
    /// certificates, never the start. `services` are the configured service names, for
    /// `[settings.tls] wildcard`.
    pub async fn start_with_services(
        settings: &Settings,
        services: &[String],
        names: Arc<dyn NamePolicy>,
        tuning: Tuning,
    ) -> Result<TlsManager> {
        Self::start_shared(settings, services, names, tuning, None).await
    }

    /// [`TlsManager::start_with_services`], sharing certificates through `shared` when set:
    /// a name missing or due for renewal is first looked for there, and ordered under its
    /// lock by one server only.
    pub async fn start_shared(
        settings: &Settings,
        services: &[String],
        names: Arc<dyn NamePolicy>,
        tuning: Tuning,
        shared: Option<Arc<dyn SharedCertificates>>,
    ) -> Result<TlsManager> {
        let store = Arc::new(CertStore::default());
        let own_files = own_certificate_files(&settings.tls)?;
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
        let acme = open_acme(settings, &store, shared.clone()).await?;
        let wildcards = names::wildcard_names(settings, services);
        let mut configured = names::configured_names(settings)?;
        configured.extend(wildcards.iter().cloned());

        let challenges = Arc::new(Challenges::default());
        let inner = Arc::new(Inner {
            server_config: server_config(
                Arc::new(StoreResolver(store.clone())),
                &[b"h2", b"http/1.1"],
            )?,
            challenge_config: server_config(
                Arc::new(ChallengeResolver {
                    challenges: challenges.clone(),
                    shared: shared.clone(),
                }),
                &[ACME_TLS_ALPN],
            )?,
            store,
            challenges,
            acme,
            orders: OrderBook::new(&tuning),
            orders_started: AtomicU64::new(0),
            on_demand: on_demand::OnDemandGate::new(&settings.tls)?,
            names,
            configured,
            wildcards,
            own_error: Mutex::new(None),
            shared,
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
        self.inner.accept(tcp).await
    }

    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with, while
    /// an HTTP-01 validation for it is pending. See [`http01_token`].
    /// In a fleet, the answers other servers published are known here too.
    pub fn http01_response(&self, token: &str) -> Option<String> {
        self.inner.challenges.http01(token).or_else(|| {
            self.inner
                .shared
                .as_ref()
                .and_then(|shared| shared.answer(&shared::http01_key(token)))
        })
    }

    /// Every certificate served, plus names whose certificate could not be obtained yet,
    /// each with its last error.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let inner = &self.inner;
        let mut failures = inner.orders.failures();
        let mut list = Vec::new();
        if let Some(own) = inner.store.own() {
            let mut info = CertificateInfo::of(&own, CertificateSource::File);
            info.last_error = inner
                .own_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
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

    /// On-demand orders refused since `start`, by reason (every reason listed, zeros too).
    pub fn on_demand_refusals(&self) -> Vec<(Refusal, u64)> {
        self.inner.on_demand.refusals()
    }

    /// ACME orders started since `start` (on demand, configured names and renewals).
    pub fn orders_started(&self) -> u64 {
        self.inner.orders_started.load(Ordering::Relaxed)
    }
}

fn own_certificate_files(tls: &Tls) -> Result<Option<OwnCertFiles>> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Ok(Some(OwnCertFiles {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("settings.tls: `cert` is set but `key` is not"),
        (None, Some(_)) => bail!("settings.tls: `key` is set but `cert` is not"),
    }
}

/// The ACME client, with the certificates stored for its directory loaded into `store`;
/// `None` when ACME is off. Nothing here talks to the ACME server.
async fn open_acme(
    settings: &Settings,
    store: &CertStore,
    shared: Option<Arc<dyn SharedCertificates>>,
) -> Result<Option<Acme>> {
    let tls = &settings.tls;
    if tls.acme_directory.trim().is_empty() || tls.challenges.is_empty() {
        tracing::info!("tls: ACME is off (no acme_directory or no challenges)");
        return Ok(None);
    }
    if let Some(email) = &tls.acme_email {
        if !email.contains('@') || email.contains(char::is_whitespace) {
            bail!("settings.tls.acme_email {email:?} is not an e-mail address");
        }
    }
    if let Some(root) = &tls.acme_root {
        std::fs::metadata(root)
            .with_context(|| format!("settings.tls.acme_root {}", root.display()))?;
    }
    let disk = disk::Disk::open(
        &crate::datadir::tls_dir(&settings.data_dir),
        &tls.acme_directory,
    )?;
    for (name, loaded) in disk.load_certificates() {
        match loaded {
            Ok(cert) => store.insert_acme(&name, Arc::new(cert)),
            Err(err) => tracing::error!("tls: {err:#}"),
        }
    }
    let dns = dns01::publisher(tls).await?;
    Ok(Some(Acme::new(
        tls.acme_directory.clone(),
        tls.acme_email.clone(),
        tls.acme_root.clone(),
        tls.challenges.clone(),
        dns.map(|publisher| acme::DnsChallenge {
            publisher,
            propagation_timeout: Duration::from_secs(tls.dns_propagation_timeout),
        }),
        disk,
        shared,
    )))
}
