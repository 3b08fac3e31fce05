//! The fleet: several tenement nodes serving one set of tenants, coordinated through etcd
//! (docs/fleet.md). etcd does the hard part: a lease per node (membership, and the lifetime
//! of everything the node owns), a create-if-absent transaction per placement (exactly one
//! owner), and plain keys for what nodes share. This module only decides.
//!
//! - `etcd`: the client (etcd's JSON gateway over hyper);
//! - `keys`: the key layout and records;
//! - `rule`: which node takes a new instance;
//! - `membership`: the lease, the node record, the periodic re-listing, fencing;
//! - `watch`: changes applied as they happen (the re-listing stays the fallback);
//! - `shared`: API tokens and weights; `certs`: ACME certificates, their order locks and
//!   challenge answers;
//! - here: the `Placement` the proxy asks, and start-up.

mod certs;
pub mod etcd;
pub mod keys;
mod membership;
mod rule;
mod shared;
pub mod status;
mod watch;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures_util::future::BoxFuture;
use http::HeaderValue;

use crate::{
    config::{self, InstanceName},
    proxy::placement::{Place, Placed, Placement, Refusal},
    store::Store,
    supervisor::Supervisor,
};
use etcd::{Created, Etcd};
use keys::NodeRecord;

/// A node name: what `[fleet] node` may be (it is part of etcd keys and of headers).
pub fn check_node_name(name: &str) -> Result<(), String> {
    config::check_label("node", name)
}

/// This node's default name: the host name.
pub fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .map(|name| name.split('.').next().unwrap_or_default().to_lowercase())
        .filter(|name| check_node_name(name).is_ok())
        .unwrap_or_else(|| "node".to_string())
}

/// What [`Fleet::snapshot`] returns.
pub struct FleetView {
    /// The lease is certainly alive.
    pub fresh: bool,
    /// Live nodes, by name.
    pub nodes: Vec<String>,
    /// (instance, owner node), by instance.
    pub placements: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    node_header: HeaderValue,
    hop: HeaderValue,
    advertise: SocketAddr,
    ttl: Duration,
    max_instances: u32,
    etcd: Etcd,
    supervisor: Supervisor,
    /// This node's store: its copy of the fleet's tokens and weights.
    store: Store,
    /// One token change at a time on this node (issue, revoke, copy from etcd).
    tokens: tokio::sync::Mutex<()>,
    weights_seen: shared::WeightsSeen,
    /// Challenge answers pending on any node (key -> answer, see `keys::CHALLENGES`), and the etcd
    /// revision they were read at.
    challenges: RwLock<HashMap<String, String>>,
    challenges_seen: AtomicI64,
    /// `fresh_until` counts milliseconds from here (a monotonic clock: it runs on while the
    /// process is stopped, which is the point).
    epoch: Instant,
    /// Until when this node's lease is certainly alive in etcd: the send time of the last
    /// successful renewal plus the lease's TTL. 0 after a fence.
    fresh_until: AtomicU64,
    lease: AtomicI64,
    /// The last renewal found no etcd member at all: nobody can place anything meanwhile,
    /// so what runs here keeps being served past `fresh_until`.
    etcd_down: AtomicBool,
    view: RwLock<View>,
    /// One claim at a time per node: concurrent first requests for an instance wait for
    /// the first claim and read its result.
    claiming: tokio::sync::Mutex<()>,
}

/// What this node knows of the fleet, from the last listing and its own claims.
#[derive(Default)]
struct View {
    nodes: HashMap<String, NodeRecord>,
    placements: HashMap<InstanceName, String>,
    /// The etcd revision of the last listing or watched change applied.
    revision: i64,
}

impl Fleet {
    /// Joins the fleet of `[fleet]`: takes a lease, registers, and keeps both alive in the
    /// background. Fails when no etcd endpoint answers (a node does not start blind).
    pub async fn start(
        config: &config::Fleet,
        supervisor: Supervisor,
        store: Store,
    ) -> Result<Fleet> {
        let node = config.node.clone().unwrap_or_else(default_node_name);
        let etcd = Etcd::new(&config.etcd);
        let hop = hop_secret(&etcd)
            .await
            .context("joining the fleet (is etcd running at [fleet] etcd?)")?;
        let inner = Arc::new(Inner {
            node_header: HeaderValue::from_str(&node).context("the node name as a header")?,
            node,
            hop: HeaderValue::from_str(&hop).context("the hop secret as a header")?,
            advertise: config.advertise,
            ttl: Duration::from_secs(config.lease_ttl),
            max_instances: config.max_instances,
            etcd,
            supervisor,
            store,
            tokens: tokio::sync::Mutex::new(()),
            weights_seen: Default::default(),
            challenges: RwLock::default(),
            challenges_seen: AtomicI64::new(0),
            epoch: Instant::now(),
            fresh_until: AtomicU64::new(0),
            lease: AtomicI64::new(0),
            etcd_down: AtomicBool::new(false),
            view: RwLock::default(),
            claiming: tokio::sync::Mutex::new(()),
        });
        shared::seed_tokens(&inner)
            .await
            .context("sharing this node's API tokens with the fleet")?;
        membership::join(&inner).await?;
        inner
            .supervisor
            .set_weight_sink(shared::weight_sink(Arc::downgrade(&inner)));
        tokio::spawn(membership::run(Arc::downgrade(&inner)));
        tokio::spawn(watch::run(Arc::downgrade(&inner)));
        tracing::info!(
            "fleet: node {} joined (advertised at {}, lease {}s)",
            inner.node,
            inner.advertise,
            config.lease_ttl
        );
        Ok(Fleet { inner })
    }

    pub fn placement(&self) -> Arc<dyn Placement> {
        Arc::new(self.clone())
    }

    /// The fleet's ACME certificates, for the TLS manager.
    pub fn certificates(&self) -> Arc<dyn crate::tls::SharedCertificates> {
        Arc::new(self.clone())
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// This node's view of the fleet, for `/metrics`.
    pub fn snapshot(&self) -> FleetView {
        let view = self.inner.view();
        let mut nodes: Vec<String> = view.nodes.keys().cloned().collect();
        nodes.sort();
        let mut placements: Vec<(String, String)> = view
            .placements
            .iter()
            .map(|(name, node)| (name.to_string(), node.clone()))
            .collect();
        placements.sort();
        FleetView {
            fresh: self.inner.is_fresh(),
            nodes,
            placements,
        }
    }

    /// Leaves the fleet: revokes the lease, so this node's placements go at once.
    pub async fn leave(&self) {
        let lease = self.inner.lease.swap(0, Ordering::SeqCst);
        self.inner.fresh_until.store(0, Ordering::SeqCst);
        if lease != 0 {
            if let Err(error) = self.inner.etcd.revoke(lease).await {
                tracing::warn!("fleet: leaving: {error}");
            }
        }
    }
}

/// The shared hop secret, created by the first node that asks.
async fn hop_secret(etcd: &Etcd) -> Result<String> {
    use rand::Rng;
    let mine: String = hex::encode(rand::rng().random::<[u8; 16]>());
    Ok(
        match etcd.create(keys::HOP_SECRET, mine.as_bytes(), 0).await? {
            Created::Won => mine,
            Created::Taken(kv) => String::from_utf8(kv.value).context("the hop secret")?,
            Created::Vanished => anyhow::bail!("the hop secret vanished while read"),
        },
    )
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_fresh(&self) -> bool {
        self.now_ms() < self.fresh_until.load(Ordering::Acquire)
    }

    fn not_fresh(&self) -> Refusal {
        Refusal(format!(
            "node {} cannot renew its etcd lease, so it serves no tenant until it does \
             (another node may own them by now)",
            self.node
        ))
    }

    fn own_record(&self) -> NodeRecord {
        let running = self
            .supervisor
            .instances()
            .iter()
            .filter(|info| info.pid.is_some())
            .count();
        NodeRecord {
            name: self.node.clone(),
            advertise: self.advertise,
            lease: self.lease.load(Ordering::SeqCst),
            running,
            max_instances: self.max_instances,
            memory_available: membership::memory_available(),
            challenges_seen: self.challenges_seen.load(Ordering::Acquire),
        }
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn view_mut(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(&self, owner: &str) -> Option<Place> {
        if owner == self.node {
            return Some(Place::Local);
        }
        let view = self.view();
        view.nodes.get(owner).map(|record| Place::Peer {
            node: Arc::from(owner),
            address: record.advertise,
        })
    }

    async fn place(&self, name: &InstanceName) -> Placed {
        let _one_at_a_time = self.claiming.lock().await;
        if !self.is_fresh() {
            return Err(self.not_fresh());
        }
        if let Some(place) = self.known(name) {
            return place;
        }
        let key = keys::placement(&name.to_string());
        for _ in 0..3 {
            let owner = match self.etcd.get(&key).await {
                Ok(Some(kv)) => String::from_utf8_lossy(&kv.value).into_owned(),
                Ok(None) => match self.claim(name, &key).await? {
                    Some(owner) => owner,
                    None => continue,
                },
                Err(error) => return Err(unreachable(&error)),
            };
            self.view_mut()
                .placements
                .insert(name.clone(), owner.clone());
            if let Some(place) = self.resolve(&owner) {
                return Ok(place);
            }
            // Placed on a node this one has not listed yet: list the nodes now.
            membership::relist(self)
                .await
                .map_err(|e| unreachable(&e))?;
            return self.resolve(&owner).ok_or_else(|| {
                Refusal(format!(
                    "it is placed on node {owner}, which is not registered (its lease is \
                     ending)"
                ))
            });
        }
        Err(Refusal(
            "its placement kept changing while this node read it".to_string(),
        ))
    }

    /// Creates the placement for the node the rule picks. `Some(owner)`: who owns it now
    /// (the chosen node, or whoever won the race); `None`: try again.
    async fn claim(&self, name: &InstanceName, key: &str) -> Result<Option<String>, Refusal> {
        let me = self.own_record();
        let live: Vec<NodeRecord> = self.view().nodes.values().cloned().collect();
        let chosen = rule::choose(&me, &live).ok_or_else(|| {
            Refusal("no node of the fleet has room for it (max_instances)".to_string())
        })?;
        match self
            .etcd
            .create(key, chosen.name.as_bytes(), chosen.lease)
            .await
        {
            Ok(Created::Won) => {
                tracing::info!("fleet: placed {name} on node {}", chosen.name);
                Ok(Some(chosen.name.clone()))
            }
            Ok(Created::Taken(kv)) => Ok(Some(String::from_utf8_lossy(&kv.value).into_owned())),
            Ok(Created::Vanished) => Ok(None),
            Err(etcd::EtcdError::Refused { message, .. })
                if message.contains("lease not found") =>
            {
                // The chosen node's lease ended since the listing: list again, then retry.
                let _ = membership::relist(self).await;
                Ok(None)
            }
            Err(error) => Err(unreachable(&error)),
        }
    }

    fn known(&self, name: &InstanceName) -> Option<Placed> {
        let fresh = self.is_fresh();
        if !fresh && !self.etcd_down.load(Ordering::Acquire) {
            return Some(Err(self.not_fresh()));
        }
        let view = self.view();
        let Some(owner) = view.placements.get(name) else {
            // etcd is down for everyone: nothing new can be placed anywhere.
            return (!fresh).then(|| {
                Err(Refusal(format!(
                    "no new placement can be made while etcd is unreachable \
                     (node {} serves only the instances placed before)",
                    self.node
                )))
            });
        };
        if owner == &self.node {
            return Some(Ok(Place::Local));
        }
        let record = view.nodes.get(owner)?;
        Some(Ok(Place::Peer {
            node: Arc::from(owner.as_str()),
            address: record.advertise,
        }))
    }
}

fn unreachable(error: &etcd::EtcdError) -> Refusal {
    Refusal(format!(
        "no new placement can be made while etcd is unreachable ({error})"
    ))
}

impl Placement for Fleet {
    fn node(&self) -> &HeaderValue {
        &self.inner.node_header
    }

    fn hop(&self) -> &HeaderValue {
        &self.inner.hop
    }

    fn known(&self, name: &InstanceName) -> Option<Placed> {
        self.inner.known(name)
    }

    fn place(&self, name: &InstanceName) -> BoxFuture<'static, Placed> {
        let inner = self.inner.clone();
        let name = name.clone();
        Box::pin(async move { inner.place(&name).await })
    }

    fn is_live(&self, node: &str) -> bool {
        self.inner.view().nodes.contains_key(node)
    }

    fn unreachable(&self, name: &InstanceName, node: &str) {
        let mut view = self.inner.view_mut();
        if view.placements.get(name).is_some_and(|owner| owner == node) {
            view.placements.remove(name);
        }
    }
}
