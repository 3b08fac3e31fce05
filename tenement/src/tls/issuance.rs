//! Getting certificates: on demand for a handshake, in the background for configured names
//! and renewals. The order book decides whether an order may start; this file starts it,
//! records its end and logs it.

use std::{
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use tokio::{sync::watch, time::timeout};

use super::{
    acme,
    names::{certificate_name, orderable},
    on_demand::Refusal,
    orders::{Admission, Outcome},
    retry_after, Inner,
};

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

impl Inner {
    /// Ok when a certificate for `name` is there (now or after waiting for its order);
    /// otherwise why not.
    pub(super) async fn wait_for_certificate(self: &Arc<Self>, name: &str) -> Result<(), String> {
        if self.store.lookup(name).is_some() {
            return Ok(());
        }
        if self.acme.is_none() {
            return Err("no certificate covers it, and ACME is off".into());
        }
        if !orderable(name) || !self.names.routes(name) {
            self.on_demand.count(Refusal::Unrouted);
            return Err("it routes nowhere, so no certificate is ordered for it".into());
        }
        // A tenant under a wildcard waits for the wildcard's order, never starts its own.
        let order_name = certificate_name(name, &self.wildcards);
        let mut outcome = if order_name != name
            || self.configured.contains(&order_name)
            || self.orders.is_running(&order_name)
        {
            // Not a new on-demand order: the gate does not apply.
            self.request(&order_name, Reason::OnDemand)?
        } else {
            self.pass_on_demand_gate(name).await?;
            self.request(name, Reason::OnDemand).inspect_err(|_| {
                // Refused by the order book (a name pausing after failures): nothing
                // was ordered, so nothing is spent.
                self.on_demand.give_back();
            })?
        };
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

    /// The `ask` URL, then the `on_demand_rate` budget; each refusal is counted and logged.
    async fn pass_on_demand_gate(&self, name: &str) -> Result<(), String> {
        if let Err(why) = self.on_demand.ask(name).await {
            self.on_demand.count(Refusal::Ask);
            tracing::warn!("tls: no certificate ordered for {name}: {why}");
            return Err(why);
        }
        if let Err(why) = self.on_demand.take() {
            self.on_demand.count(Refusal::Rate);
            tracing::warn!("tls: no certificate ordered for {name}: {why}");
            return Err(why);
        }
        Ok(())
    }

    /// Starts an order for `name` in the background, or joins the running one.
    fn request(
        self: &Arc<Self>,
        name: &str,
        reason: Reason,
    ) -> Result<watch::Receiver<Outcome>, String> {
        if self.acme.is_none() {
            return Err("ACME is off".into());
        }
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
        let inner = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let (result, retry_after) =
                retry_after::noting(inner.order(&name, failed_before, reason)).await;
            let result = match (result, retry_after) {
                (Err(error), Some(until)) => Err(format!(
                    "{error}; the CA asked not to retry before {} (Retry-After)",
                    humantime::format_rfc3339_seconds(until)
                )),
                (result, _) => result,
            };
            if let Some(pause) = inner.orders.finish(&name, &result, retry_after) {
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

    /// Gets `name`'s certificate: from the ACME server, or in a fleet from whichever
    /// server orders it (see `shared`).
    async fn order(
        self: &Arc<Self>,
        name: &str,
        failed_before: u32,
        reason: Reason,
    ) -> Result<(), String> {
        let Some(shared) = self.shared.clone() else {
            return self
                .order_from_acme(name, failed_before, reason)
                .await
                .map(drop);
        };
        let inner = self.clone();
        let owned = name.to_string();
        self.order_shared(&shared, name, move || {
            let inner = inner.clone();
            let name = owned.clone();
            Box::pin(async move { inner.order_from_acme(&name, failed_before, reason).await })
        })
        .await
    }

    /// One order with the ACME server; the certificate serves at once. Returns its PEM
    /// bundle (key, then chain).
    async fn order_from_acme(
        &self,
        name: &str,
        failed_before: u32,
        reason: Reason,
    ) -> Result<String, String> {
        let acme = self.acme.as_ref().ok_or("ACME is off")?;
        self.orders_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "tls: ordering a certificate for {name} ({reason}) from {}",
            acme.directory
        );
        let issue = acme.issue(name, &self.challenges, failed_before);
        let issued = timeout(self.tuning.order_timeout, issue).await;
        match issued {
            Ok(Ok((cert, bundle))) => {
                tracing::info!(
                    "tls: certificate for {name} issued by {}, valid until {}, renewal from {}",
                    cert.issuer,
                    humantime::format_rfc3339_seconds(cert.not_after),
                    humantime::format_rfc3339_seconds(cert.renew_at())
                );
                self.store.insert_acme(name, Arc::new(cert));
                Ok(bundle)
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
    pub(super) fn maintain(self: &Arc<Self>) {
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
