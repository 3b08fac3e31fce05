//! The front door of `tenement serve`: the plain HTTP listeners and, with TLS on, the TLS
//! listeners, both feeding the one proxy. Glue only: routing lives in `proxy`, certificates
//! in `tls`.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use socket2::SockRef;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::Config,
    held::{self, HeldFds},
    proxy::{self, AccessLog, Options, PreRouter, Proxy, Scheme},
    supervisor::Supervisor,
    tls::{http01_token, SharedCertificates, TlsManager},
};

pub struct FrontDoor {
    pub proxy: Proxy,
    pub tls: Option<TlsManager>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The front door's sockets, bound before anything else starts: an address in use fails
/// `serve` before a single instance is started.
pub struct Listeners {
    plain: Vec<TcpListener>,
    tls: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every listener, failing with the address that could not be bound.
    /// Listeners held in `held` (handed over by the tenement this one replaces, or passed by
    /// systemd) are taken from there; the others are bound and held there.
    pub async fn bind(config: &Config, held: &HeldFds) -> Result<Listeners> {
        let settings = &config.settings;
        let mut plain = Vec::new();
        for address in &settings.listen {
            let name = held::listener_name("proxy", &address.to_string());
            let listener = match held.listener(&name, *address)? {
                Some(fd) => from_held(fd)?,
                None => {
                    let bound = proxy::bind(std::slice::from_ref(address))?
                        .pop()
                        .context("binding the proxy listener")?;
                    held.insert(&name, SockRef::from(&bound).try_clone()?.into())?;
                    bound
                }
            };
            plain.push(listener);
        }
        let mut tls = Vec::new();
        if settings.tls.enabled {
            for address in &settings.tls.listen {
                let name = held::listener_name("https", &address.to_string());
                let listener = match held.listener(&name, *address)? {
                    Some(fd) => from_held(fd)?,
                    None => {
                        let bound = TcpListener::bind(address)
                            .await
                            .with_context(|| format!("binding the TLS listener {address}"))?;
                        held.insert(&name, SockRef::from(&bound).try_clone()?.into())?;
                        bound
                    }
                };
                tls.push(listener);
            }
        }
        Ok(Listeners { plain, tls })
    }
}

fn from_held(fd: std::os::fd::OwnedFd) -> Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

impl FrontDoor {
    /// Starts serving on `listeners`. Certificates are looked up or ordered in the
    /// background.
    pub async fn start(
        config: Arc<Config>,
        supervisor: Supervisor,
        listeners: Listeners,
        placement: Option<Arc<dyn proxy::placement::Placement>>,
        certificates: Option<Arc<dyn SharedCertificates>>,
    ) -> Result<FrontDoor> {
        let settings = &config.settings;
        let Listeners {
            plain,
            tls: tls_listeners,
        } = listeners;

        // The pre-router needs the TLS manager, and the manager asks the proxy which names
        // route: the manager is filled in once both exist.
        let tls_slot: Arc<std::sync::OnceLock<TlsManager>> = Arc::default();
        let mut options = Options {
            placement: placement.clone(),
            ..Options::default()
        };
        if settings.access_log {
            let path = crate::datadir::access_log(&settings.data_dir);
            let log = AccessLog::open(&path)
                .with_context(|| format!("opening the access log {}", path.display()))?;
            options.access_log = Some(log);
        }
        if settings.tls.enabled {
            // Redirects go to the first TLS listener's port (as bound, so `:0` works too).
            let https_port = tls_listeners
                .first()
                .and_then(|listener| listener.local_addr().ok())
                .map_or(443, |address| address.port());
            let hop = placement.as_ref().map(|placement| placement.hop().clone());
            options.pre_router = Some(acme_and_redirect(tls_slot.clone(), https_port, hop));
        }
        let proxy = Proxy::new(config.clone(), Arc::new(supervisor), options);
        let tls = if settings.tls.enabled {
            let routes = proxy.clone();
            let manager = TlsManager::start_for(
                &config,
                Arc::new(move |host: &str| routes.routes(host)),
                certificates,
            )
            .await?;
            let _ = tls_slot.set(manager.clone());
            Some(manager)
        } else {
            None
        };

        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        {
            let proxy = proxy.clone();
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(err) = proxy.serve(plain, shutdown).await {
                    tracing::error!("proxy: {err:#}");
                }
            }));
        }
        if let Some(manager) = &tls {
            for listener in tls_listeners {
                tasks.push(tokio::spawn(serve_tls(
                    listener,
                    manager.clone(),
                    proxy.clone(),
                    stopped.clone(),
                )));
            }
        }
        Ok(FrontDoor {
            proxy,
            tls,
            stop,
            tasks,
        })
    }

    /// Stops accepting and lets in-flight requests finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.proxy.shutdown().await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Accepts TLS connections; each handshake runs in its own task because a first certificate
/// for a name may take a while to arrive.
async fn serve_tls(
    listener: TcpListener,
    manager: TlsManager,
    proxy: Proxy,
    mut stopped: watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!("TLS listening on https://{address}");
    }
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("TLS accept: {err}");
                    continue;
                }
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let manager = manager.clone();
        let proxy = proxy.clone();
        tokio::spawn(async move {
            match manager.accept(tcp).await {
                Ok(Some(stream)) => proxy.serve_connection(stream, peer, Scheme::Https).await,
                Ok(None) => {} // an ACME validation handshake, answered by the manager
                Err(err) => tracing::info!("TLS handshake from {peer}: {err}"),
            }
        });
    }
}

/// On the plain listener with TLS on: ACME HTTP-01 challenges are answered here, everything
/// else is sent to HTTPS with a 308 (method and body kept), on `https_port` (left out of the
/// URL when it is 443). In a fleet, a request carrying the fleet's hop secret (`hop`) was
/// forwarded by another node, which terminated the client's TLS: it goes through.
fn acme_and_redirect(
    tls: Arc<std::sync::OnceLock<TlsManager>>,
    https_port: u16,
    hop: Option<http::HeaderValue>,
) -> PreRouter {
    let port_suffix = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    Arc::new(move |request| {
        let path = request.uri().path();
        if let Some(token) = http01_token(path) {
            let answer = tls.get().and_then(|manager| manager.http01_response(token));
            return Some(match answer {
                Some(key_authorization) => response(StatusCode::OK, key_authorization, None),
                None => response(StatusCode::NOT_FOUND, "no such challenge\n".into(), None),
            });
        }
        if let Some(hop) = &hop {
            if request.headers().get(proxy::placement::HOP_HEADER) == Some(hop) {
                return None;
            }
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())?;
        let host = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        Some(response(
            StatusCode::PERMANENT_REDIRECT,
            String::new(),
            Some(format!("https://{host}{port_suffix}{target}")),
        ))
    })
}

fn response(status: StatusCode, body: String, location: Option<String>) -> Response<Bytes> {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain");
    if let Some(location) = location {
        builder = builder.header(header::LOCATION, location);
    }
    builder.body(Bytes::from(body)).expect("valid response")
}
