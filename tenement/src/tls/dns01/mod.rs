//! DNS-01 (RFC 8555 section 8.4): publishing `_acme-challenge` TXT records while an order
//! waits for validation. The ACME flow sees one [`TxtPublisher`]; what stands behind it is
//! the operator's choice in `[settings.tls]`:
//!
//! - `dns_listen`: tenement's own authoritative responder ([`responder`]), for a
//!   `_acme-challenge` name delegated to this server;
//! - `dns_update`: RFC 2136 dynamic updates signed with TSIG ([`update`]) to the operator's
//!   own primary server, followed by a check that the record is visible there
//!   ([`propagation`]) before the CA is told to look.

mod propagation;
mod responder;
mod update;
mod wire;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use futures_util::future::BoxFuture;

use crate::config::Tls;

pub(crate) use propagation::wait_until_visible;

/// One TXT record of a DNS-01 validation: `name` is lower case, without the final dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxtRecord {
    pub name: String,
    pub value: String,
}

impl TxtRecord {
    /// The record for `identifier` (a host name, or its base name for a wildcard).
    pub fn for_identifier(identifier: &str, value: String) -> TxtRecord {
        TxtRecord {
            name: challenge_name(identifier),
            value,
        }
    }
}

/// `_acme-challenge.{name}`: where the CA looks, for `name` and for `*.name` alike.
pub(crate) fn challenge_name(identifier: &str) -> String {
    let base = identifier.strip_prefix("*.").unwrap_or(identifier);
    format!(
        "_acme-challenge.{}",
        super::names::normalize_host(base).as_str()
    )
}

/// Why a TXT record could not be published, removed or seen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Dns01Error {
    #[error("DNS update of the TXT record {record} at {server} was refused: {rcode}{detail}")]
    UpdateRefused {
        record: String,
        server: SocketAddr,
        rcode: String,
        detail: String,
    },
    #[error("DNS update of the TXT record {record} at {server} failed: {reason}")]
    UpdateFailed {
        record: String,
        server: SocketAddr,
        reason: String,
    },
    #[error(
        "the TXT record {record} is not visible at {servers} after {}: {last}",
        humantime::format_duration(*waited)
    )]
    NotVisible {
        record: String,
        servers: String,
        waited: Duration,
        last: String,
    },
    #[error("the record {record} is not inside the zone {zone} of settings.tls.dns_update")]
    OutsideZone { record: String, zone: String },
}

/// Publishes and removes DNS-01 TXT records. Several values may stand at one name at once
/// (a wildcard and its base name share `_acme-challenge.{base}`).
pub(crate) trait TxtPublisher: Send + Sync + 'static {
    fn publish<'a>(&'a self, record: &'a TxtRecord) -> BoxFuture<'a, Result<(), Dns01Error>>;
    fn remove<'a>(&'a self, record: &'a TxtRecord) -> BoxFuture<'a, Result<(), Dns01Error>>;
    /// Servers that must show a published record before the CA is told to look; empty
    /// when publishing is immediate (the built-in responder answers from memory).
    fn check_servers(&self) -> &[SocketAddr];
}

/// The publisher `[settings.tls]` asks for, if any. The built-in responder binds its
/// sockets here, so a taken port is an error at start that names the address.
pub(crate) async fn publisher(tls: &Tls) -> Result<Option<Arc<dyn TxtPublisher>>> {
    if let Some(address) = tls.dns_listen {
        let responder = responder::Responder::start(address).await?;
        tracing::info!("tls: DNS-01 responder listening on {address} (udp and tcp)");
        return Ok(Some(Arc::new(responder)));
    }
    if let Some(settings) = &tls.dns_update {
        let updater = update::Rfc2136::new(settings)?;
        tracing::info!(
            "tls: DNS-01 records go to {} (zone {}) by RFC 2136 update",
            settings.server,
            settings.zone
        );
        return Ok(Some(Arc::new(updater)));
    }
    Ok(None)
}

/// A published record; removed by [`Published::remove`], or in the background when
/// dropped without it (an order cancelled by its timeout).
pub(crate) struct Published {
    publisher: Arc<dyn TxtPublisher>,
    record: TxtRecord,
    removed: bool,
}

impl Published {
    pub async fn publish(
        publisher: &Arc<dyn TxtPublisher>,
        record: TxtRecord,
    ) -> Result<Published, Dns01Error> {
        publisher.publish(&record).await?;
        Ok(Published {
            publisher: publisher.clone(),
            record,
            removed: false,
        })
    }

    pub fn record(&self) -> &TxtRecord {
        &self.record
    }

    pub async fn remove(mut self) {
        self.removed = true;
        remove_logged(self.publisher.as_ref(), &self.record).await;
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let publisher = self.publisher.clone();
        let record = self.record.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { remove_logged(publisher.as_ref(), &record).await });
        }
    }
}

async fn remove_logged(publisher: &dyn TxtPublisher, record: &TxtRecord) {
    match publisher.remove(record).await {
        Ok(()) => tracing::debug!("tls: removed the TXT record {}", record.name),
        Err(err) => tracing::warn!("tls: {err}; remove it by hand"),
    }
}
