//! The background tasks. They hold the manager weakly, so they end with its last clone.

use std::sync::PoisonError;
use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use super::{
    own_cert::{OwnCertFiles, Stamp},
    Inner,
};

/// Orders missing configured names and renews certificates, at start and then every
/// `interval`. Failed names wait out their backoff inside the order book.
pub(super) async fn keep_certified(inner: Weak<Inner>, interval: Duration) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.maintain();
        drop(inner);
        tokio::time::sleep(interval).await;
    }
}

/// Reloads the own certificate when its files change. A failed reload (a half-written
/// file, a key that does not match) keeps the previous certificate serving.
pub(super) async fn watch_own_cert(
    inner: Weak<Inner>,
    files: OwnCertFiles,
    mut stamp: Stamp,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let current = files.stamp();
        if current == stamp {
            continue;
        }
        stamp = current;
        match files.load() {
            Ok(cert) => {
                tracing::info!(
                    "tls: reloaded {} for {}",
                    files.cert.display(),
                    cert.names.join(", ")
                );
                inner.store.set_own(Arc::new(cert));
                *inner
                    .own_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
            }
            Err(err) => {
                let error = format!("{err:#}");
                tracing::error!("tls: keeping the previous own certificate: {error}");
                *inner
                    .own_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(error);
            }
        }
    }
}
