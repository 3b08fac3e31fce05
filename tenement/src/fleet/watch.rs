//! Changes to the fleet's keys applied as they happen: one etcd watch on everything under
//! `/tenement/v1/` (nodes, placements, tokens, weights, challenge answers). The periodic
//! re-listing (`membership`) stays: it is the fallback that bounds how stale a view can be
//! whatever happens to the watch.
//!
//! A watch that fails or ends is resumed from the revision after the last change applied,
//! so nothing is missed. When etcd has compacted that revision away (it answers with the
//! compaction revision and cancels), the changes in between are lost to a watch: the node
//! re-lists everything, then watches from the revision after the listing.

use std::{sync::Weak, time::Duration};

use super::{
    certs,
    etcd::{Event, WatchAnswer},
    keys::{self, NodeRecord},
    membership, shared, Inner,
};
use crate::config::InstanceName;

/// Everything the fleet keeps in etcd.
const ROOT: &str = "/tenement/v1/";
/// Pause before watching again after a failure (etcd down: not a busy loop).
const PAUSE: Duration = Duration::from_secs(1);

/// Where the next watch starts.
enum From {
    /// List everything first, then watch from the listing's next revision.
    Listing,
    /// Resume at this revision.
    Revision(i64),
}

pub(super) async fn run(inner: Weak<Inner>) {
    let mut from = From::Listing;
    loop {
        let watch = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let start = match from {
                From::Revision(revision) => Ok(revision),
                From::Listing => membership::relist(&strong)
                    .await
                    .map(|revision| revision + 1),
            };
            match start {
                Ok(start) => {
                    from = From::Revision(start);
                    strong.etcd.watch(ROOT, start).await.map(|w| (w, start))
                }
                Err(error) => Err(error),
            }
        };
        let (mut watch, start) = match watch {
            Ok(watch) => watch,
            Err(error) => {
                tracing::debug!("fleet: watching etcd: {error}");
                tokio::time::sleep(PAUSE).await;
                continue;
            }
        };
        let mut next = start;
        loop {
            let answer = watch.next().await;
            let Some(inner) = inner.upgrade() else { return };
            match answer {
                Ok(WatchAnswer::Created) => {}
                Ok(WatchAnswer::Events(events)) => {
                    if let Some(last) = apply(&inner, events).await {
                        next = next.max(last + 1);
                        from = From::Revision(next);
                    }
                }
                Ok(WatchAnswer::Canceled {
                    compacted: Some(kept_from),
                }) => {
                    tracing::warn!(
                        "fleet: etcd compacted the revisions this node's watch was to resume \
                         from ({next}; history kept from {kept_from}): re-listing"
                    );
                    from = From::Listing;
                    break;
                }
                Ok(WatchAnswer::Canceled { compacted: None }) => {
                    tracing::info!("fleet: etcd ended the watch; re-listing");
                    from = From::Listing;
                    break;
                }
                Err(error) => {
                    tracing::info!(
                        "fleet: the etcd watch failed ({error}); resuming from revision {next}"
                    );
                    tokio::time::sleep(PAUSE).await;
                    break;
                }
            }
        }
    }
}

/// Applies one answer's changes; returns the revision of its last change.
async fn apply(inner: &Inner, events: Vec<Event>) -> Option<i64> {
    let mut last = None;
    let (mut tokens, mut weights, mut answers) = (false, false, false);
    {
        let mut view = inner.view_mut();
        for event in events {
            let (key, revision, value) = match &event {
                Event::Put(kv) => (kv.key.as_str(), kv.mod_revision, Some(&kv.value)),
                Event::Delete { key, revision } => (key.as_str(), *revision, None),
            };
            last = Some(revision);
            if let Some(token) = key.strip_prefix(keys::CHALLENGES) {
                let answer = value.and_then(|v| String::from_utf8(v.clone()).ok());
                answers |= answer.is_some();
                certs::watched_challenge(inner, token, answer);
                continue;
            }
            if key.starts_with(keys::TOKENS) {
                tokens = true;
                continue;
            }
            if key.starts_with(keys::WEIGHTS) {
                weights = true;
                continue;
            }
            // A listing newer than this change is in the view already.
            if revision <= view.revision {
                continue;
            }
            if let Some(name) = key.strip_prefix(keys::NODES) {
                match value.and_then(|v| serde_json::from_slice::<NodeRecord>(v).ok()) {
                    Some(record) => view.nodes.insert(name.to_string(), record),
                    None => view.nodes.remove(name),
                };
            } else if let Some(name) = key.strip_prefix(keys::PLACEMENTS) {
                let Ok(name) = InstanceName::parse(name) else {
                    continue;
                };
                match value.and_then(|v| String::from_utf8(v.clone()).ok()) {
                    Some(owner) => view.placements.insert(name, owner),
                    None => view.placements.remove(&name),
                };
            } else {
                continue;
            }
            view.revision = revision;
        }
    }
    if let Some(last) = last {
        certs::watched_up_to(inner, last);
    }
    // Rare changes: copied whole, as the re-listing does.
    if tokens {
        let _ = shared::relist_tokens(inner).await;
    }
    if weights {
        let _ = shared::relist_weights(inner).await;
    }
    if answers {
        // The node that published an answer waits for every node's record to show it.
        let _ = membership::register(inner).await;
    }
    last
}
