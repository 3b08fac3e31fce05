//! The seam between the proxy and a fleet (DESIGN.md: "the proxy asks 'local or where?'
//! through one trait"). Without a fleet the proxy has no `Placement` and never asks.

use std::{net::SocketAddr, sync::Arc};

use futures_util::future::BoxFuture;
use http::HeaderValue;

use crate::config::InstanceName;

/// The header a node puts on a request it forwards to the owner; its value is a secret the
/// nodes share, so a client cannot pass a request off as already forwarded.
pub const HOP_HEADER: &str = "tenement-fleet-hop";
/// The response header naming the node whose instance answered.
pub const NODE_HEADER: &str = "tenement-node";

/// Where an instance is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Here: the proxy wakes and forwards to it as without a fleet.
    Local,
    /// On another node, reached through its proxy.
    Peer { node: Arc<str>, address: SocketAddr },
}

/// Why no node can take the request now (answered 503 with this text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

pub type Placed = Result<Place, Refusal>;

pub trait Placement: Send + Sync + 'static {
    /// This node's name, as a header value for [`NODE_HEADER`].
    fn node(&self) -> &HeaderValue;
    /// The value of [`HOP_HEADER`] on requests this node forwards.
    fn hop(&self) -> &HeaderValue;
    /// The answer for `name` when this node knows it without asking etcd (the hot path);
    /// `None` sends the request to [`Placement::place`].
    fn known(&self, name: &InstanceName) -> Option<Result<Place, Refusal>>;
    /// Finds or claims the owner of `name`, asking etcd.
    fn place(&self, name: &InstanceName) -> BoxFuture<'static, Result<Place, Refusal>>;
    /// Whether `node` is still a live member (its lease held, as last listed).
    fn is_live(&self, node: &str) -> bool;
    /// `node` did not take a connection for `name`: forget what this node knew of it.
    fn unreachable(&self, name: &InstanceName, node: &str);
}
