//! The fleet step of a request, before the local wake path: ask the `Placement` where the
//! instance is served, and forward the request once to the owner node's proxy when that is
//! not here. A request that arrives forwarded (a valid hop header) is never forwarded again,
//! so a stale view on two nodes cannot bounce it between them.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, sync::Mutex};

use bytes::Bytes;
use http::{header::HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{
    conn::ConnContext,
    exchange::Exchange,
    forward::{answer, in_time, relay, tunnel, Asked, Target},
    http1::Forwarded,
    placement::{Place, Placement, HOP_HEADER},
    pool::Pool,
    reply,
    table::Entry,
    upstream,
};
use crate::endpoint::Endpoint;
use crate::proxy::body::ProxyBody;

/// `Retry-After` of a refused placement: etcd back within a few seconds, or a node freed.
const PLACEMENT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keep-alive connections to each peer node's proxy.
#[derive(Default)]
pub(crate) struct PeerPools(Mutex<HashMap<SocketAddr, Arc<Pool>>>);

impl PeerPools {
    fn of(&self, address: SocketAddr) -> Arc<Pool> {
        let mut pools = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pools.entry(address).or_default().clone()
    }
}

fn hop_header() -> HeaderName {
    HeaderName::from_static(HOP_HEADER)
}

/// Takes the hop header off `request`. `true` when it was genuine (sent by a node of the
/// fleet): the request's `X-Forwarded-For`/`-Proto` are then the real client's, kept.
fn arrived_forwarded(
    request: &mut Request<Incoming>,
    placement: &dyn Placement,
    forwarded: &mut Forwarded,
) -> bool {
    let Some(hop) = request.headers_mut().remove(hop_header()) else {
        return false;
    };
    if hop != placement.hop() {
        // Forged: treated as any client's request.
        return false;
    }
    if let Some(client) = request.headers().get("x-forwarded-for") {
        forwarded.client_ip = client.clone();
    }
    if let Some(proto) = request.headers().get("x-forwarded-proto") {
        forwarded.https = proto.as_bytes() == b"https";
    }
    true
}

/// Where this request goes: `Local` continues on the local wake path; an `Err` is the answer.
pub(crate) async fn decide(
    conn: &Arc<ConnContext>,
    placement: &Arc<dyn Placement>,
    entry: &Arc<Entry>,
    request: &mut Request<Incoming>,
    forwarded: &mut Forwarded,
    asked: Asked,
) -> Result<Place, Response<Bytes>> {
    let was_forwarded = arrived_forwarded(request, placement.as_ref(), forwarded);
    let place = match placement.known(&entry.name) {
        Some(place) => place,
        None => conn.on_main(placement.place(&entry.name)).await,
    };
    match place {
        Ok(Place::Local) => Ok(Place::Local),
        Ok(Place::Peer { node, .. }) if was_forwarded => {
            let message = format!(
                "instance {} belongs to node {node}, and this request was forwarded to this node \
                 already: it is not forwarded twice",
                entry.label
            );
            tracing::warn!("{message}");
            Err(reply::error(
                StatusCode::LOOP_DETECTED,
                &message,
                asked.format,
            ))
        }
        Ok(peer) => Ok(peer),
        Err(refusal) => {
            // etcd out of reach or no node with room: both pass, as every 503 here says.
            let message = format!("instance {}: {}", entry.label, refusal.0);
            Err(reply::retry_later(&message, PLACEMENT_RETRY, asked.format))
        }
    }
}

/// Sends the request to the owner node's proxy, once, and relays its answer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn to_peer(
    conn: Arc<ConnContext>,
    placement: Arc<dyn Placement>,
    entry: Arc<Entry>,
    node: Arc<str>,
    address: SocketAddr,
    mut request: Request<Incoming>,
    forwarded: Forwarded,
    exchange: Exchange,
    asked: Asked,
) -> Response<ProxyBody> {
    request
        .headers_mut()
        .insert(hop_header(), placement.hop().clone());
    let endpoint = Endpoint::Peer(address);
    if asked.upgrade {
        let target = Target { endpoint };
        return tunnel(
            conn,
            entry,
            target,
            request,
            forwarded,
            exchange,
            asked.format,
        )
        .await;
    }
    let pool = conn.peer_pools().of(address);
    let sending = in_time(
        entry.request_timeout,
        upstream::send(&pool, &endpoint, request, &forwarded),
    );
    // A stopped or cut-off owner may take the connection and never answer: once it has
    // left the fleet (its lease ended), the request is given up.
    let sent = tokio::select! {
        sent = sending => sent,
        () = left_fleet(placement.as_ref(), &node) => {
            placement.unreachable(&entry.name, &node);
            let message = format!(
                "instance {} was placed on node {node}, which left the fleet before answering",
                entry.label
            );
            tracing::warn!("{message}");
            return answer(
                reply::error(StatusCode::BAD_GATEWAY, &message, asked.format),
                exchange,
            );
        }
    };
    let message = match sent {
        Some(Ok(response)) => return relay(response, exchange),
        Some(Err((error, _))) => {
            if error.is_refused() {
                placement.unreachable(&entry.name, &node);
            }
            format!(
                "instance {} is placed on node {node}, which {error}",
                entry.label
            )
        }
        None => format!(
            "instance {} is placed on node {node}, which sent no response in time",
            entry.label
        ),
    };
    tracing::warn!("{message}");
    answer(
        reply::error(StatusCode::BAD_GATEWAY, &message, asked.format),
        exchange,
    )
}

/// Returns once `node` is no longer a live member of the fleet.
async fn left_fleet(placement: &dyn Placement, node: &str) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if !placement.is_live(node) {
            return;
        }
    }
}

/// Names the serving node on a response, unless the owner node already did.
pub(crate) fn name_node(response: &mut Response<ProxyBody>, node: &HeaderValue) {
    response
        .headers_mut()
        .entry(super::placement::NODE_HEADER)
        .or_insert_with(|| node.clone());
}
