//! The management API: JSON over HTTP on the management listeners only (always a unix
//! socket, plus `settings.api` when it is a TCP address), never on the public listeners.
//! `docs/api.md` documents every endpoint.
//!
//! The CLI (`cli/`) is its client and shares its types (`types`) and address syntax
//! (`address`).

pub mod address;
pub(crate) mod audit;
pub mod auth;
pub(crate) mod auth_limit;
pub(crate) mod body;
mod certificates;
mod deploy;
pub mod error;
pub(crate) mod handlers;
mod listener;
pub(crate) mod logs;
pub mod metrics;
mod metrics_fleet;
mod metrics_kernel;
mod metrics_proxy;
pub mod query;
mod reload;
pub(crate) mod routes;
mod stats;
pub mod types;
pub(crate) mod view;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Instant, SystemTime},
};

use anyhow::Result;
use tokio::{sync::watch, task::JoinHandle};

pub use address::ApiAddress;
pub use certificates::{expiry_reasons, EXPIRY_WARNING};
pub use metrics::{Exposition, Kind, Metrics};

use crate::{
    config::LiveConfig, logs::LogHub, monitor::Monitor, store::Store, supervisor::Supervisor,
    tls::TlsManager,
};

/// What the API serves from: the daemon's parts, shared with the rest of `serve`.
pub struct Api {
    /// The daemon's configuration, replaced by a reload.
    pub config: LiveConfig,
    pub supervisor: Supervisor,
    pub store: Store,
    pub logs: LogHub,
    pub monitor: Arc<Mutex<Monitor>>,
    /// `POST /v1/reload`; `None` where nothing can be reloaded (no file behind the config).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    /// `POST /v1/upgrade` goes to `serve` through it; `None` where nothing can upgrade.
    pub upgrade: Option<tokio::sync::mpsc::Sender<types::UpgradeAsk>>,
}

/// Everything a request handler reads.
pub(crate) struct Context {
    pub api: Api,
    pub addresses: Vec<ApiAddress>,
    pub metrics: Arc<Metrics>,
    pub started_at: SystemTime,
    pub started: Instant,
    /// The front door's certificates, once it has started with TLS on.
    pub tls: Arc<OnceLock<TlsManager>>,
    /// Turns true when the daemon shuts down: long streams end.
    pub shutdown: watch::Receiver<bool>,
    /// Refused tokens, counted and rate limited per address.
    pub auth_failures: auth_limit::AuthFailures,
    /// The web dashboard's sessions and history (`/dashboard`).
    pub dashboard: crate::dashboard::Dashboard,
    /// The fleet, with `[fleet]`: tokens are issued and revoked through it.
    pub fleet: OnceLock<crate::fleet::Fleet>,
}

impl Context {
    /// The monitor, locked for a moment (never across an await).
    pub fn monitor(&self) -> std::sync::MutexGuard<'_, Monitor> {
        self.api
            .monitor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running management listener.
pub struct ApiServer {
    context: Arc<Context>,
    addresses: Vec<ApiAddress>,
    metrics: Arc<Metrics>,
    tls: Arc<OnceLock<TlsManager>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The management listeners, bound before the daemon starts anything: an address in use
/// fails `serve` before a single instance is started.
pub struct ApiListeners {
    addresses: Vec<ApiAddress>,
    listeners: Vec<listener::Listener>,
}

impl ApiListeners {
    /// Binds the management listeners (see [`ApiAddress::listeners`]).
    /// Listeners held in `held` (handed over by the tenement this one replaces, or passed by
    /// systemd) are taken from there; the others are bound and held there.
    pub async fn bind(
        settings: &crate::config::Settings,
        held: &crate::held::HeldFds,
    ) -> Result<ApiListeners> {
        let addresses = ApiAddress::listeners(settings).map_err(|err| anyhow::anyhow!(err))?;
        let mut listeners = Vec::new();
        for address in &addresses {
            listeners.push(listener::Listener::bind(address, held).await?);
        }
        Ok(ApiListeners {
            addresses,
            listeners,
        })
    }
}

impl ApiServer {
    /// Serves the management API on `bound` in the background.
    pub async fn start(api: Api, bound: ApiListeners) -> Result<ApiServer> {
        let ApiListeners {
            addresses,
            listeners,
        } = bound;
        let metrics = Metrics::new();
        metrics_kernel::register(&metrics, api.supervisor.clone());
        let tls: Arc<OnceLock<TlsManager>> = Arc::default();
        let (stop, shutdown) = watch::channel(false);
        let context = Arc::new(Context {
            api,
            addresses: addresses.clone(),
            metrics: metrics.clone(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            tls: tls.clone(),
            shutdown: shutdown.clone(),
            auth_failures: auth_limit::AuthFailures::default(),
            dashboard: crate::dashboard::Dashboard::default(),
            fleet: OnceLock::new(),
        });
        stats::register_metrics(&context);
        auth_limit::register_metrics(&context);
        crate::dashboard::start(&context);
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let context = context.clone();
                tokio::spawn(listener.serve(
                    move |peer, request| routes::handle(context.clone(), peer, request),
                    shutdown.clone(),
                ))
            })
            .collect();
        for address in &addresses {
            tracing::info!("management API listening on {address}");
        }
        Ok(ApiServer {
            context,
            addresses,
            metrics,
            tls,
            stop,
            tasks,
        })
    }

    pub fn addresses(&self) -> &[ApiAddress] {
        &self.addresses
    }

    /// The `/metrics` registry: other parts add their collectors here.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Shows the front door's certificates in the status and on `/metrics`. The API starts
    /// before the front door (whose TLS manager needs the proxy), hence this late step.
    pub fn attach_tls(&self, manager: TlsManager) {
        if self.tls.set(manager.clone()).is_ok() {
            certificates::register_metrics(&self.metrics, manager);
        }
    }

    /// Shows the proxy's request counters on `/metrics`. The front door starts after the API.
    /// Adds the fleet's node and placements to `/metrics`.
    pub fn attach_fleet(&self, fleet: crate::fleet::Fleet) {
        let _ = self.context.fleet.set(fleet.clone());
        metrics_fleet::register(&self.metrics, fleet);
    }

    pub fn attach_proxy(&self, requests: Arc<crate::proxy::RequestMetrics>) {
        let _ = self
            .context
            .dashboard
            .history
            .requests
            .set(requests.clone());
        metrics_proxy::register(&self.metrics, requests);
    }

    /// Stops accepting, ends open connections and streams, removes the unix socket.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
