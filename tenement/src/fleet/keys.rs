//! Where the fleet keeps its state in etcd, and the records it writes there.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub const NODES: &str = "/tenement/v1/nodes/";
pub const PLACEMENTS: &str = "/tenement/v1/placements/";
/// The value of the hop header: created once by the first node, read by the others.
pub const HOP_SECRET: &str = "/tenement/v1/hop-secret";

pub fn node(name: &str) -> String {
    format!("{NODES}{name}")
}

pub fn placement(instance: &str) -> String {
    format!("{PLACEMENTS}{instance}")
}

/// A node's registration, bound to its lease: gone when the node is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub advertise: SocketAddr,
    pub lease: i64,
    /// Instances with a process on this node.
    pub running: usize,
    /// `[fleet] max_instances` (0: no limit).
    pub max_instances: u32,
    /// `MemAvailable` of the node, in bytes.
    pub memory_available: u64,
    /// The etcd revision up to which this node has read the pending challenge answers
    /// ([`CHALLENGES`]): an answer published at or before it is answered by this node.
    #[serde(default)]
    pub challenges_seen: i64,
}

impl NodeRecord {
    /// Whether this node can take one more instance.
    pub fn has_room(&self) -> bool {
        self.max_instances == 0 || self.running < self.max_instances as usize
    }
}

/// A placement's value: the owner node's name. Its lease is the owner's.
pub type Owner = String;

/// API tokens, one key per token id: a [`crate::store::tokens::SharedToken`] (JSON).
pub const TOKENS: &str = "/tenement/v1/tokens/";
/// Created by the first node that joins: that node's existing tokens become the fleet's.
pub const TOKENS_SEEDED: &str = "/tenement/v1/tokens-seeded";
/// Routing weights set at run time, one key per instance: the weight as decimal text.
pub const WEIGHTS: &str = "/tenement/v1/weights/";

pub fn token(id: i64) -> String {
    format!("{TOKENS}{id}")
}

pub fn weight(instance: &str) -> String {
    format!("{WEIGHTS}{instance}")
}

/// ACME certificates, one key per certificate name: its private key and chain (one PEM
/// bundle). Written by the node that ordered it; never bound to a lease.
pub const CERTS: &str = "/tenement/v1/certs/";
/// Order locks, one key per certificate name: the holder's node name, bound to its lease.
pub const CERT_LOCKS: &str = "/tenement/v1/locks/cert/";
/// Pending challenge answers, bound to the lease of the node whose order it is: per HTTP-01
/// token (`TOKEN`: the key authorization) and per TLS-ALPN-01 name (`tls-alpn-01:NAME`: the
/// key authorization's SHA-256 in hex).
pub const CHALLENGES: &str = "/tenement/v1/acme-challenges/";

pub fn cert(name: &str) -> String {
    format!("{CERTS}{name}")
}

pub fn cert_lock(name: &str) -> String {
    format!("{CERT_LOCKS}{name}")
}

pub fn challenge(key: &str) -> String {
    format!("{CHALLENGES}{key}")
}
