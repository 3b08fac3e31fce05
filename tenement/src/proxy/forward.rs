//! A routed request on its way to its instance: wake it if needed, rewrite the hop-level
//! headers, send it over a pooled connection (or a dedicated one for an `Upgrade`), and
//! turn every failure into an answer that names the instance.

use bytes::Bytes;
use http::{
    header::{COOKIE, HOST},
    HeaderValue, Request, Response, StatusCode, Version,
};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::{
    backend::{ActivityGuard, BackendState, WakeError},
    body::ProxyBody,
    conn::ConnContext,
    exchange::Exchange,
    fleet, headers,
    http1::Forwarded,
    placement::{Place, Placement},
    reply::{self, Format},
    table::Entry,
    upstream::{self, UpstreamBody, UpstreamError},
};
use crate::endpoint::Endpoint;
use std::{future::Future, sync::Arc, time::Duration};

/// What the request asks of the proxy, read from its headers before routing.
#[derive(Clone, Copy)]
pub(crate) struct Asked {
    pub format: Format,
    /// Switch protocols (HTTP/1.1 `Upgrade`).
    pub upgrade: bool,
    /// Has a `Connection` header, which may name headers to drop.
    pub connection_header: bool,
}

/// Never fails: every failure becomes an answer that names the instance.
pub(crate) async fn forward(
    conn: Arc<ConnContext>,
    entry: Arc<Entry>,
    mut request: Request<Incoming>,
    exchange: Exchange,
    asked: Asked,
) -> Response<ProxyBody> {
    let forwarded = prepare_request(&mut request, &conn, asked.connection_header);
    match conn.placement() {
        None => forward_here(conn, entry, request, forwarded, exchange, asked).await,
        Some(placement) => {
            let placement = placement.clone();
            Box::pin(through_fleet(
                conn, placement, entry, request, forwarded, exchange, asked,
            ))
            .await
        }
    }
}

/// With a fleet: the owner node serves the request, this one or another.
async fn through_fleet(
    conn: Arc<ConnContext>,
    placement: Arc<dyn Placement>,
    entry: Arc<Entry>,
    mut request: Request<Incoming>,
    mut forwarded: Forwarded,
    mut exchange: Exchange,
    asked: Asked,
) -> Response<ProxyBody> {
    let decided = fleet::decide(
        &conn,
        &placement,
        &entry,
        &mut request,
        &mut forwarded,
        asked,
    )
    .await;
    let mut response = match decided {
        Ok(Place::Local) => forward_here(conn, entry, request, forwarded, exchange, asked).await,
        Ok(Place::Peer { node, address }) => {
            // Counted under the instance here too, but the activity is the owner's.
            exchange.set_instance(entry.clone(), ActivityGuard::none());
            fleet::to_peer(
                conn,
                placement.clone(),
                entry,
                node,
                address,
                request,
                forwarded,
                exchange,
                asked,
            )
            .await
        }
        Err(refusal) => {
            exchange.set_instance(entry.clone(), ActivityGuard::none());
            answer(refusal, exchange)
        }
    };
    fleet::name_node(&mut response, placement.node());
    response
}

/// This node's instance serves the request: wake it if needed, forward to it.
async fn forward_here(
    conn: Arc<ConnContext>,
    entry: Arc<Entry>,
    request: Request<Incoming>,
    forwarded: Forwarded,
    mut exchange: Exchange,
    asked: Asked,
) -> Response<ProxyBody> {
    let format = asked.format;
    if entry.state == BackendState::Failed {
        // Named in the access log and counted under the instance, but not activity.
        exchange.set_instance(entry.clone(), ActivityGuard::none());
        let message = format!("instance {} is failed", entry.label);
        return answer(
            reply::retry_later(&message, reply::RETRY_FAILED, format),
            exchange,
        );
    }
    exchange.set_instance(entry.clone(), ActivityGuard::open(entry.activity.as_ref()));
    let upgrade = asked.upgrade;

    let known = entry.endpoint.as_ref().filter(|_| entry.state.is_serving());
    let woken;
    let endpoint = match known {
        Some(endpoint) => endpoint,
        None => match Box::pin(wake(&conn, &entry, None, format)).await {
            Ok(endpoint) => {
                woken = endpoint;
                &woken
            }
            Err(response) => return answer(response, exchange),
        },
    };
    if upgrade {
        let target = Target {
            endpoint: endpoint.clone(),
        };
        // Boxed, like the other rare paths below: the future of every request is as big as
        // its biggest path, and hyper and the runtime copy it around whole.
        return Box::pin(tunnel(
            conn, entry, target, request, forwarded, exchange, format,
        ))
        .await;
    }
    let limit = entry.request_timeout;
    // Read the clock for the access log's `upstream_ms` only when there is a log.
    let upstream_started = exchange.times_upstream().then(std::time::Instant::now);
    let sent = match in_time(
        limit,
        upstream::send(&entry.pool, endpoint, request, &forwarded),
    )
    .await
    {
        Some(Err((error, Some(request)))) => {
            // Nobody listens there any more (or twice nobody answered a request that may be
            // repeated): the instance crashed, is restarting or was stopped since the table
            // (or the wake) said where it runs. The request waits for the next process,
            // once, as for a wake.
            let stale = Stale {
                endpoint,
                error: &error,
            };
            match Box::pin(wake(&conn, &entry, Some(stale), format)).await {
                Ok(endpoint) => {
                    let again = upstream::send(&entry.pool, &endpoint, request, &forwarded);
                    Box::pin(in_time(limit, again)).await
                }
                Err(response) => return answer(response, exchange),
            }
        }
        sent => sent,
    };
    if let (Some(started), Some(Ok(_))) = (upstream_started, &sent) {
        exchange.set_upstream_time(started.elapsed());
    }
    match sent {
        Some(Ok(response)) => relay(response, exchange),
        Some(Err((error, _))) => answer(bad_gateway(&entry, &error, format), exchange),
        None => answer(gateway_timeout(&entry, format), exchange),
    }
}

/// `request_timeout`: the instance has that long to send its response head, from when the
/// proxy starts sending it the request. The timer is part of the request's own future (no
/// allocation, no task); once the head is here the body streams for as long as it takes.
/// `None` when the time ran out; the connection to the instance is then dropped (closed).
pub(crate) async fn in_time<T>(
    limit: Option<Duration>,
    sending: impl Future<Output = T>,
) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, sending).await.ok(),
        None => Some(sending.await),
    }
}

pub(crate) fn gateway_timeout(entry: &Entry, format: Format) -> Response<Bytes> {
    entry.requests.timed_out();
    let seconds = entry.request_timeout.map_or(0, |limit| limit.as_secs());
    let message = format!(
        "instance {} sent no response within {seconds}s (request_timeout)",
        entry.label
    );
    tracing::warn!("{message}");
    reply::error(StatusCode::GATEWAY_TIMEOUT, &message, format)
}

/// An answer the proxy wrote itself, as a response with the request's bookkeeping attached.
pub(crate) fn answer(response: Response<Bytes>, mut exchange: Exchange) -> Response<ProxyBody> {
    exchange.set_status(response.status().as_u16());
    let (parts, bytes) = response.into_parts();
    Response::from_parts(parts, ProxyBody::local(bytes, exchange))
}

/// The instance's answer, streamed back with its hop-by-hop headers left behind.
pub(crate) fn relay(
    response: Response<UpstreamBody>,
    mut exchange: Exchange,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    exchange.set_status(parts.status.as_u16());
    Response::from_parts(parts, ProxyBody::upstream(body, exchange))
}

/// How long a request that twice met a connection ending unanswered waits for its instance
/// to be seen gone (a dying process is seen within milliseconds) before the failure counts
/// as the instance's own answer, a 502.
const GONE_PATIENCE: Duration = Duration::from_secs(1);

/// An endpoint that just failed a request which never reached the app (or may be
/// repeated), and how.
struct Stale<'a> {
    endpoint: &'a Endpoint,
    error: &'a UpstreamError,
}

/// With `stale`, the instance must have left that endpoint behind before the request goes
/// again: at once for a refused connection (bounded by its `startup_timeout`), within
/// `GONE_PATIENCE` for one that ended unanswered; otherwise that failure is the answer.
async fn wake(
    conn: &ConnContext,
    entry: &Entry,
    stale: Option<Stale<'_>>,
    format: Format,
) -> Result<Endpoint, Response<Bytes>> {
    let started = std::time::Instant::now();
    let asked = stale.as_ref().map(|stale| {
        let within = (!stale.error.is_refused()).then_some(GONE_PATIENCE);
        (stale.endpoint, within)
    });
    let woken = conn.ensure_running(&entry.name, asked).await;
    if let (Err(WakeError::StillServing), Some(stale)) = (&woken, &stale) {
        return Err(bad_gateway(entry, stale.error, format));
    }
    entry.requests.woke(started.elapsed(), woken.is_ok());
    woken.map_err(|error| {
        let message = format!("instance {} {error}", entry.label);
        tracing::warn!("{message}");
        match error {
            WakeError::Unknown => reply::error(StatusCode::NOT_FOUND, &message, format),
            WakeError::Failed { .. } => reply::retry_later(&message, reply::RETRY_FAILED, format),
            WakeError::NotStarted(_) | WakeError::StillServing => {
                reply::retry_later(&message, reply::RETRY_RESTARTING, format)
            }
            WakeError::Timeout { after } => reply::retry_later(&message, after, format),
        }
    })
}

pub(crate) fn bad_gateway(entry: &Entry, error: &UpstreamError, format: Format) -> Response<Bytes> {
    let message = format!("instance {} {error}", entry.label);
    tracing::warn!("{message}");
    reply::error(StatusCode::BAD_GATEWAY, &message, format)
}

/// Readies the client's request for the instance: a `Host` header (HTTP/2 and absolute-form
/// requests carry it in the URI, which outranks any Host header, RFC 9112 3.2.2), cookies
/// in one header, no headers that `Connection` names. The rest of the hop-level rewriting
/// (hop-by-hop headers out, `X-Forwarded-*` in, origin-form path) happens as the head is
/// written, see `http1::encode_request_head`.
fn prepare_request(
    request: &mut Request<Incoming>,
    conn: &ConnContext,
    connection_header: bool,
) -> Forwarded {
    let host = match request.uri().authority() {
        Some(authority) => {
            let host = HeaderValue::from_str(authority.as_str()).ok();
            if let Some(host) = &host {
                request.headers_mut().insert(HOST, host.clone());
            }
            host
        }
        None => request.headers().get(HOST).cloned(),
    };
    if request.version() == Version::HTTP_2 {
        join_cookies(request.headers_mut());
    }
    if connection_header {
        headers::remove_connection_named(request.headers_mut());
    }
    Forwarded {
        client_ip: conn.peer_ip().clone(),
        https: conn.is_https(),
        host,
    }
}

/// HTTP/2 may split `Cookie` into one header per pair; HTTP/1.1 wants one (RFC 9113 8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut cookies = headers.get_all(COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(COOKIE, value);
    }
}

/// Where a tunnel goes.
pub(crate) struct Target {
    pub endpoint: Endpoint,
}

/// `Upgrade` (WebSocket and others): a dedicated connection to the instance; once both
/// sides agreed to switch, the two sockets are spliced until either closes. The activity
/// guard lives as long as the tunnel, marked as one: with kernel counters only its traffic
/// keeps the instance awake, without them its being open does.
pub(crate) async fn tunnel(
    conn: Arc<ConnContext>,
    entry: Arc<Entry>,
    target: Target,
    mut request: Request<Incoming>,
    forwarded: Forwarded,
    mut exchange: Exchange,
    format: Format,
) -> Response<ProxyBody> {
    let client_side = hyper::upgrade::on(&mut request);
    let limit = entry.request_timeout;
    let sent = match in_time(
        limit,
        upstream::send_upgrade(&target.endpoint, request, &forwarded),
    )
    .await
    {
        Some(Err((error, Some(request)))) if error.is_refused() => {
            let stale = Stale {
                endpoint: &target.endpoint,
                error: &error,
            };
            match wake(&conn, &entry, Some(stale), format).await {
                Ok(endpoint) => {
                    in_time(
                        limit,
                        upstream::send_upgrade(&endpoint, request, &forwarded),
                    )
                    .await
                }
                Err(response) => return answer(response, exchange),
            }
        }
        sent => sent,
    };
    let (head, switched) = match sent {
        Some(Ok(sent)) => sent,
        Some(Err((error, _))) => return answer(bad_gateway(&entry, &error, format), exchange),
        None => return answer(gateway_timeout(&entry, format), exchange),
    };
    let (mut parts, ()) = head.into_parts();
    let (mut instance, early) = match switched {
        Ok(socket) => socket,
        // The instance declined to switch; its answer goes back as it is.
        Err(body) => return relay(Response::from_parts(parts, body), exchange),
    };
    headers::strip_hop_by_hop(&mut parts.headers, true);
    exchange.set_status(parts.status.as_u16());
    let mut activity = exchange.take_activity();
    activity.upgraded();
    let counted = conn.track_tunnel();
    let mut shutdown = conn.shutdown_signal();
    let label = entry.label.clone();
    tokio::spawn(async move {
        let _activity = activity;
        let _counted = counted;
        let mut client = match client_side.await {
            Ok(client) => TokioIo::new(client),
            Err(error) => {
                tracing::debug!("upgrade to instance {label} did not complete: {error}");
                return;
            }
        };
        let splice = async {
            // Whatever the instance sent right behind its 101 goes first.
            client.write_all(&early).await?;
            tokio::io::copy_bidirectional(&mut client, &mut instance).await
        };
        tokio::select! {
            copied = splice => {
                if let Err(error) = copied {
                    tracing::debug!("tunnel to instance {label} ended: {error}");
                }
            }
            _ = shutdown.wait_for(|stopping| *stopping) => {}
        }
    });
    Response::from_parts(parts, ProxyBody::local(Bytes::new(), exchange))
}
