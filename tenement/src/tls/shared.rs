//! Certificates shared by several tenement servers (a fleet, docs/fleet.md): one server
//! orders a name's certificate under a fleet-wide lock, the others install the one it
//! stored. The store and the lock are the fleet's (etcd); this file only holds the part
//! that is about certificates: when to install, when to order, how long to wait.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures_util::future::BoxFuture;

use super::{certificate::Certificate, Inner};

/// Where the fleet keeps certificates, their order locks and pending challenge answers.
pub trait SharedCertificates: Send + Sync + 'static {
    /// The certificate stored for `name`: its key and chain, one PEM bundle.
    fn fetch<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<String>, String>>;
    /// Stores `bundle` as `name`'s certificate for every server.
    fn publish<'a>(&'a self, name: &'a str, bundle: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Takes `name`'s order lock if nobody holds it. The lock ends with its holder (its
    /// lease), so a holder that dies never blocks the others for longer than that.
    fn lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lock, String>>;
    /// Releases `name`'s lock if this server holds it.
    fn unlock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;
    /// Whether the holder of a lock seen earlier is still alive (a released lock and a
    /// lock that ended with its dead holder look the same otherwise).
    fn holder_alive<'a>(&'a self, holder: &'a Holder) -> BoxFuture<'a, bool>;
    /// Makes a challenge answer known to every server; returns once each live server can
    /// answer it (or after a bounded wait). `key`: see [`http01_key`] and
    /// [`tls_alpn01_key`].
    fn publish_challenge<'a>(
        &'a self,
        key: &'a str,
        answer: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
    fn withdraw_challenge<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
    /// A challenge answer another server published (this server's view; no I/O).
    fn answer(&self, key: &str) -> Option<String>;
}

/// Where an HTTP-01 answer is published: the token itself (base64url, never a `:`); the
/// answer is the key authorization.
pub fn http01_key(token: &str) -> String {
    token.to_string()
}

/// Where a TLS-ALPN-01 answer is published: `tls-alpn-01:NAME`; the answer is the SHA-256
/// of the key authorization, in hex.
pub fn tls_alpn01_key(name: &str) -> String {
    format!("tls-alpn-01:{name}")
}

/// The answer of [`SharedCertificates::lock`].
pub enum Lock {
    Mine,
    Held(Holder),
}

/// Who holds a lock: a server, by the lease its lock is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub lease: i64,
}

/// How often a server waiting for another's order looks again.
const WAIT_STEP: Duration = Duration::from_millis(500);

impl Inner {
    /// One order for `name` fleet-wide: install the stored certificate when it is good
    /// (not due for renewal), else take the lock and order it from the ACME server (the
    /// caller's `order`), else wait for the holder's result.
    pub(super) async fn order_shared(
        self: &Arc<Self>,
        shared: &Arc<dyn SharedCertificates>,
        name: &str,
        mut order: impl FnMut() -> BoxFuture<'static, Result<String, String>>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.tuning.order_timeout;
        loop {
            if self.install_shared(shared, name).await? {
                return Ok(());
            }
            match shared.lock(name).await? {
                Lock::Mine => {
                    // The previous holder may have stored a certificate just before it
                    // released the lock.
                    let result = match self.install_shared(shared, name).await {
                        Ok(true) => Ok(()),
                        _ => match order().await {
                            Ok(bundle) => {
                                if let Err(error) = shared.publish(name, &bundle).await {
                                    tracing::warn!(
                                        "tls: the certificate for {name} serves on this node \
                                         only, storing it for the fleet failed: {error}"
                                    );
                                }
                                Ok(())
                            }
                            Err(error) => Err(error),
                        },
                    };
                    shared.unlock(name).await;
                    return result;
                }
                Lock::Held(holder) => {
                    tracing::info!(
                        "tls: node {} is ordering the certificate for {name}; waiting for it",
                        holder.node
                    );
                    loop {
                        if Instant::now() > deadline {
                            return Err(format!(
                                "node {} has been ordering it for longer than {}",
                                holder.node,
                                humantime::format_duration(self.tuning.order_timeout)
                            ));
                        }
                        tokio::time::sleep(WAIT_STEP).await;
                        if self.install_shared(shared, name).await? {
                            return Ok(());
                        }
                        match shared.lock(name).await? {
                            Lock::Held(now) if now == holder => continue,
                            Lock::Mine => {
                                // Taken by this node on the way; give it back and decide.
                                shared.unlock(name).await;
                            }
                            Lock::Held(_) => {}
                        }
                        if shared.holder_alive(&holder).await {
                            return Err(format!(
                                "node {} ordered it and got no certificate (see that node's \
                                 log); retrying later",
                                holder.node
                            ));
                        }
                        // The holder died mid-order: its lock went with its lease.
                        tracing::warn!(
                            "tls: node {} died while ordering the certificate for {name}",
                            holder.node
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Installs the fleet's certificate for `name` when it is usable and not due for
    /// renewal; `Ok(false)` when there is none such.
    async fn install_shared(
        &self,
        shared: &Arc<dyn SharedCertificates>,
        name: &str,
    ) -> Result<bool, String> {
        let Some(bundle) = shared.fetch(name).await? else {
            return Ok(false);
        };
        let cert = match Certificate::from_pem(bundle.as_bytes(), bundle.as_bytes()) {
            Ok(cert) => cert,
            Err(error) => {
                tracing::warn!("tls: the fleet's certificate for {name} is unusable: {error:#}");
                return Ok(false);
            }
        };
        if SystemTime::now() >= cert.renew_at() {
            return Ok(false);
        }
        let same = self
            .store
            .acme(name)
            .is_some_and(|current| current.key.cert == cert.key.cert);
        if !same {
            if let Some(acme) = &self.acme {
                if let Err(error) = acme.keep(name, &bundle) {
                    tracing::warn!("tls: {error:#}");
                }
            }
            tracing::info!(
                "tls: installed the fleet's certificate for {name} (issued by {}, valid until {})",
                cert.issuer,
                humantime::format_rfc3339_seconds(cert.not_after)
            );
            self.store.insert_acme(name, Arc::new(cert));
        }
        Ok(true)
    }
}
