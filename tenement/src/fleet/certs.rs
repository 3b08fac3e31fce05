//! ACME certificates shared through etcd (the TLS side is `tls::shared`): a certificate is
//! one key holding its PEM bundle, an order is guarded by a create-if-absent lock bound to
//! the ordering node's lease (a node that dies mid-order frees the lock with its lease),
//! and challenge answers (HTTP-01, TLS-ALPN-01) are keys every node mirrors (watch and
//! re-listing), because the CA's validation reaches whichever node DNS sends it to.
//!
//! The private keys in etcd are not encrypted: the only secret all nodes share is itself in
//! etcd. etcd must be protected (docs/fleet.md).

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;

use super::{
    etcd::{Created, EtcdError},
    keys::{self, NodeRecord},
    Fleet, Inner,
};
use crate::tls::{Holder, Lock, SharedCertificates};

/// How often the publisher of a challenge answer looks whether every node has read it.
const SEEN_STEP: Duration = Duration::from_millis(200);

/// Mirrors the pending challenge answers, and notes the revision read (published in this
/// node's record: the publisher of an answer waits until every node has read it). A
/// listing older than what the watch applied already is dropped.
pub(super) async fn relist_challenges(inner: &Inner) -> Result<(), EtcdError> {
    let (kvs, revision) = inner.etcd.list(keys::CHALLENGES).await?;
    let answers = kvs
        .into_iter()
        .filter_map(|kv| {
            let token = kv.key.strip_prefix(keys::CHALLENGES)?.to_string();
            Some((token, String::from_utf8(kv.value).ok()?))
        })
        .collect();
    let mut mirror = inner.challenges.write().unwrap_or_else(|p| p.into_inner());
    if revision >= inner.challenges_seen.load(Ordering::Acquire) {
        *mirror = answers;
        inner.challenges_seen.store(revision, Ordering::Release);
    }
    Ok(())
}

/// A watched change of a challenge answer (`None`: withdrawn), at `revision`.
pub(super) fn watched_challenge(inner: &Inner, token: &str, answer: Option<String>) {
    let mut mirror = inner.challenges.write().unwrap_or_else(|p| p.into_inner());
    match answer {
        Some(answer) => mirror.insert(token.to_string(), answer),
        None => mirror.remove(token),
    };
}

/// Every watched change up to `revision` is applied: so are the answers.
pub(super) fn watched_up_to(inner: &Inner, revision: i64) {
    let _mirror = inner.challenges.write().unwrap_or_else(|p| p.into_inner());
    inner.challenges_seen.fetch_max(revision, Ordering::AcqRel);
}

fn text(error: EtcdError) -> String {
    error.to_string()
}

impl Inner {
    async fn lock(&self, name: &str) -> Result<Lock, String> {
        let key = keys::cert_lock(name);
        for _ in 0..3 {
            let lease = self.lease.load(Ordering::SeqCst);
            match self
                .etcd
                .create(&key, self.node.as_bytes(), lease)
                .await
                .map_err(text)?
            {
                Created::Won => return Ok(Lock::Mine),
                Created::Taken(kv) => {
                    return Ok(Lock::Held(Holder {
                        node: String::from_utf8_lossy(&kv.value).into_owned(),
                        lease: kv.lease,
                    }))
                }
                // Its holder's lease ended between the two steps: try again.
                Created::Vanished => continue,
            }
        }
        Err(format!("the order lock of {name} kept changing hands"))
    }

    /// Waits until every other live node's record says it has read the answers up to
    /// `revision` (at most two of its re-listings), or gives up after three leases: a node
    /// that never confirms is stuck, and the CA's validation may still reach another one.
    async fn wait_until_seen(&self, revision: i64) {
        let deadline = Instant::now() + self.ttl * 3;
        loop {
            let behind: Vec<String> = match self.etcd.list(keys::NODES).await {
                Ok((nodes, _)) => nodes
                    .iter()
                    .filter_map(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok())
                    .filter(|record| record.name != self.node && record.challenges_seen < revision)
                    .map(|record| record.name)
                    .collect(),
                Err(error) => vec![error.to_string()],
            };
            if behind.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "tls: nodes {} have not read the challenge answer yet; validating anyway",
                    behind.join(", ")
                );
                return;
            }
            tokio::time::sleep(SEEN_STEP).await;
        }
    }
}

impl SharedCertificates for Fleet {
    fn fetch<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let kv = self.inner.etcd.get(&keys::cert(name)).await.map_err(text)?;
            Ok(kv.and_then(|kv| String::from_utf8(kv.value).ok()))
        })
    }

    fn publish<'a>(&'a self, name: &'a str, bundle: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.inner
                .etcd
                .put(&keys::cert(name), bundle.as_bytes(), 0)
                .await
                .map(drop)
                .map_err(text)
        })
    }

    fn lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lock, String>> {
        Box::pin(self.inner.lock(name))
    }

    fn unlock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            if let Err(error) = inner
                .etcd
                .delete_if(&keys::cert_lock(name), inner.node.as_bytes())
                .await
            {
                // It ends with this node's lease anyway.
                tracing::warn!("fleet: releasing the order lock of {name}: {error}");
            }
        })
    }

    fn holder_alive<'a>(&'a self, holder: &'a Holder) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.inner.etcd.get(&keys::node(&holder.node)).await {
                Ok(record) => record.is_some_and(|kv| kv.lease == holder.lease),
                // Cannot tell: assume alive, so that this node does not order beside it.
                Err(_) => true,
            }
        })
    }

    fn publish_challenge<'a>(
        &'a self,
        key: &'a str,
        answer: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let inner = &self.inner;
            let lease = inner.lease.load(Ordering::SeqCst);
            let revision = inner
                .etcd
                .put(&keys::challenge(key), answer.as_bytes(), lease)
                .await
                .map_err(text)?;
            inner.wait_until_seen(revision).await;
            Ok(())
        })
    }

    fn withdraw_challenge<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = self.inner.etcd.delete(&keys::challenge(key)).await {
                tracing::debug!("fleet: withdrawing a challenge answer: {error}");
            }
        })
    }

    fn answer(&self, key: &str) -> Option<String> {
        self.inner
            .challenges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}
