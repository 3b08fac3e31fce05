//! What the nodes share besides placements: API tokens and the routing weights set at run
//! time (certificates: `certs`). Each node's store stays the copy it reads on every
//! request; a change made on any node goes to etcd first (tokens) or right after (weights), and every node copies etcd's
//! state into its store at each re-listing (`membership::relist`), so a change made on one
//! node applies on the others within about `lease_ttl`/4.

use std::{collections::HashMap, sync::Weak};

use anyhow::{bail, Context, Result};

use super::{
    etcd::{Created, EtcdError},
    keys, Fleet, Inner,
};
use crate::{
    config::InstanceName,
    store::tokens::{new_shared_token, SharedToken, TokenRecord},
    supervisor::WeightSink,
};

/// The first node to join makes its existing tokens the fleet's; later nodes take the
/// fleet's (theirs are replaced at the first listing).
pub(super) async fn seed_tokens(inner: &Inner) -> Result<()> {
    let _one = inner.tokens.lock().await;
    if let Created::Won = inner.etcd.create(keys::TOKENS_SEEDED, b"1", 0).await? {
        for token in inner.store.shared_tokens()? {
            let value = serde_json::to_vec(&token)?;
            inner
                .etcd
                .create(&keys::token(token.record.id), &value, 0)
                .await?;
        }
        tracing::info!("fleet: this node's API tokens are now the fleet's");
    }
    Ok(())
}

/// Copies etcd's tokens, weights and pending challenge answers into this node.
pub(super) async fn relist(inner: &Inner) -> Result<(), EtcdError> {
    relist_tokens(inner).await?;
    relist_weights(inner).await?;
    super::certs::relist_challenges(inner).await
}

pub(super) async fn relist_tokens(inner: &Inner) -> Result<(), EtcdError> {
    // Held across the listing and the copy, so a token issued here meanwhile is not taken
    // for one revoked elsewhere.
    let _one = inner.tokens.lock().await;
    let (kvs, _) = inner.etcd.list(keys::TOKENS).await?;
    let mut fleet: Vec<SharedToken> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    fleet.sort_by_key(|token| token.record.id);
    match inner.store.shared_tokens() {
        Ok(local) if local == fleet => {}
        _ => {
            if let Err(error) = inner.store.sync_tokens(&fleet) {
                tracing::warn!("fleet: {error:#}");
            }
        }
    }
    Ok(())
}

pub(super) async fn relist_weights(inner: &Inner) -> Result<(), EtcdError> {
    let (kvs, _) = inner.etcd.list(keys::WEIGHTS).await?;
    let mut seen = inner.weights_seen.lock().unwrap_or_else(|p| p.into_inner());
    for kv in kvs {
        // Only a weight changed in etcd since the last listing is applied: a listing read
        // just before this node's own write landed must not undo that write.
        if seen.get(&kv.key) == Some(&kv.mod_revision) {
            continue;
        }
        seen.insert(kv.key.clone(), kv.mod_revision);
        let Some(name) = kv
            .key
            .strip_prefix(keys::WEIGHTS)
            .and_then(|name| InstanceName::parse(name).ok())
        else {
            continue;
        };
        let Some(weight) = std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|text| text.parse::<u8>().ok())
            .filter(|weight| *weight <= 100)
        else {
            continue;
        };
        if inner.store.weight(&name).ok().flatten() == Some(weight) {
            continue;
        }
        match inner.supervisor.apply_weights(&[(name.clone(), weight)]) {
            Ok(()) => tracing::info!("fleet: weight of {name} set to {weight} on another node"),
            Err(error) => tracing::debug!("fleet: weight of {name}: {error:#}"),
        }
    }
    Ok(())
}

/// Sends every weight set on this node to etcd.
pub(super) fn weight_sink(inner: Weak<Inner>) -> WeightSink {
    std::sync::Arc::new(move |weights: &[(InstanceName, u8)]| {
        let Some(inner) = inner.upgrade() else { return };
        let weights = weights.to_vec();
        tokio::spawn(async move {
            for (name, weight) in weights {
                let key = keys::weight(&name.to_string());
                if let Err(error) = inner.etcd.put(&key, weight.to_string().as_bytes(), 0).await {
                    tracing::warn!(
                        "fleet: the weight of {name} was set on this node only: {error}"
                    );
                }
            }
        });
    })
}

impl Fleet {
    /// Issues a token for the whole fleet: created in etcd first (under an id no node
    /// used), then in this node's store. Returns its record and its secret.
    pub async fn issue_token(
        &self,
        scope: &str,
        description: &str,
    ) -> Result<(TokenRecord, String)> {
        let inner = &self.inner;
        let _one = inner.tokens.lock().await;
        for _ in 0..5 {
            let id = inner.store.next_token_id()?;
            let (token, secret) = new_shared_token(id, scope, description);
            let value = serde_json::to_vec(&token)?;
            match inner
                .etcd
                .create(&keys::token(id), &value, 0)
                .await
                .context("issuing a token for the fleet")?
            {
                Created::Won => {
                    inner.store.insert_shared_token(&token)?;
                    return Ok((token.record, secret));
                }
                // Another node used this id a moment ago: copy its token, take the next id.
                Created::Taken(kv) => {
                    if let Ok(theirs) = serde_json::from_slice::<SharedToken>(&kv.value) {
                        inner.store.insert_shared_token(&theirs)?;
                    } else {
                        bail!("the fleet's token {id} in etcd is not readable");
                    }
                }
                Created::Vanished => {}
            }
        }
        bail!("issuing a token for the fleet: other nodes kept taking the next id")
    }

    /// Revokes token `id` on every node: deleted from etcd first, then from this store.
    pub async fn revoke_token(&self, id: i64) -> Result<bool> {
        let inner = &self.inner;
        let _one = inner.tokens.lock().await;
        inner
            .etcd
            .delete(&keys::token(id))
            .await
            .context("revoking the token in the fleet")?;
        inner.store.revoke_token(id)
    }
}

/// What the re-listing remembers of weights: etcd's mod revision per key.
pub(super) type WeightsSeen = std::sync::Mutex<HashMap<String, i64>>;
