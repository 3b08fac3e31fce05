//! One client connection as hyper sees it: a service that routes each request by host and
//! path, then hands it to `forward`.

use std::{convert::Infallible, future::Future, sync::Arc};

use futures_util::{future::Either, FutureExt};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{
    backend::Backends,
    body::ProxyBody,
    cork::{self, Cork},
    exchange::{ConnTracker, Exchange, InFlight},
    forward::{answer, forward, Asked},
    headers::RequestFacts,
    host,
    reply::{self, Format},
    router::TableReader,
    server::{Counted, Shared},
    table::Miss,
};

/// What every request on one connection shares.
pub(crate) struct ConnContext {
    shared: Arc<Shared>,
    /// The client's address, formatted once per connection for `X-Forwarded-For`.
    peer_ip: HeaderValue,
    https: bool,
    /// The socket of a plain HTTP/1 connection, corked for its last answer.
    cork: Option<Cork>,
}

impl ConnContext {
    pub(crate) fn backends(&self) -> &Arc<dyn Backends> {
        self.shared.router.backends()
    }

    /// Asks the backends for a running instance, on the runtime they live on; with
    /// `stale`, one that has moved on from that failed endpoint (waiting at most `within`).
    pub(crate) async fn ensure_running(
        &self,
        name: &crate::config::InstanceName,
        stale: Option<(&crate::endpoint::Endpoint, Option<std::time::Duration>)>,
    ) -> Result<crate::endpoint::Endpoint, super::backend::WakeError> {
        let waking = match stale {
            Some((stale, within)) => self
                .backends()
                .ensure_running_instead_of(name, stale, within),
            None => self.backends().ensure_running(name),
        };
        match self.shared.main.spawn(waking).await {
            Ok(result) => result,
            Err(error) => Err(super::backend::WakeError::Failed {
                state: "unknown".into(),
                reason: format!("waking it failed: {error}"),
            }),
        }
    }

    /// Runs `work` on the runtime the proxy was created on (where etcd's client lives).
    pub(crate) async fn on_main(
        &self,
        work: futures_util::future::BoxFuture<'static, super::placement::Placed>,
    ) -> super::placement::Placed {
        match self.shared.main.spawn(work).await {
            Ok(result) => result,
            Err(error) => Err(super::placement::Refusal(format!(
                "placing it failed: {error}"
            ))),
        }
    }

    /// The fleet's placement, when this node is part of one.
    pub(crate) fn placement(&self) -> Option<&Arc<dyn super::placement::Placement>> {
        self.shared.options.placement.as_ref()
    }

    pub(crate) fn peer_pools(&self) -> &super::fleet::PeerPools {
        &self.shared.peers
    }

    pub(crate) fn peer_ip(&self) -> &HeaderValue {
        &self.peer_ip
    }

    pub(crate) fn access_log(&self) -> Option<&super::AccessLog> {
        self.shared.options.access_log.as_deref()
    }

    pub(crate) fn is_https(&self) -> bool {
        self.https
    }

    /// The socket of a plain HTTP/1 connection, to cork for its last answer.
    pub(crate) fn cork(&self) -> Option<Cork> {
        self.cork
    }

    /// The largest request head a client may send.
    pub(crate) fn max_header_bytes(&self) -> usize {
        self.shared.options.max_header_bytes
    }

    /// Whether `direct.rs` may serve this connection's plain requests. Not in a fleet
    /// (placement decides per request), and not where a plain request may be redirected
    /// or answered before routing (`pre_router`).
    fn may_serve_directly(&self) -> bool {
        let options = &self.shared.options;
        options.placement.is_none() && (self.https || options.pre_router.is_none())
    }

    /// Counts an upgraded tunnel among the connections a shutdown waits for.
    pub(crate) fn track_tunnel(&self) -> Counted {
        self.shared.connections.enter()
    }

    pub(crate) fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }
}

pub(crate) struct ConnService {
    context: Arc<ConnContext>,
    table: TableReader,
    tracker: Arc<ConnTracker>,
}

impl ConnService {
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: std::net::IpAddr,
        https: bool,
        cork: Option<Cork>,
        tracker: Arc<ConnTracker>,
    ) -> ConnService {
        let peer_ip = ip_header(peer);
        ConnService {
            table: shared.router.reader(),
            context: Arc::new(ConnContext {
                shared,
                peer_ip,
                https,
                cork,
            }),
            tracker,
        }
    }

    pub(crate) fn context(&self) -> &Arc<ConnContext> {
        &self.context
    }

    pub(crate) fn table(&self) -> &TableReader {
        &self.table
    }

    pub(crate) fn tracker(&self) -> &Arc<ConnTracker> {
        &self.tracker
    }

    /// See `ConnContext::may_serve_directly`.
    pub(crate) fn may_serve_directly(&self) -> bool {
        self.context.may_serve_directly()
    }

    /// An answer to a request that reaches no instance, counted as such for `/metrics`.
    fn unrouted<F>(
        &self,
        response: Response<bytes::Bytes>,
        exchange: Exchange,
    ) -> Either<std::future::Ready<Result<Response<ProxyBody>, Infallible>>, F> {
        let requests = self.context.shared.router.requests();
        requests.count_unrouted(response.status().as_u16());
        ready(answer(response, exchange))
    }
}

impl ConnService {
    /// Answers one request. The future is a concrete type (hyper keeps it in a slot it
    /// allocated once per connection), not a boxed one: no allocation per request.
    /// Use through `hyper::service::service_fn`.
    pub(crate) fn call(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        let logged = self.context.access_log().is_some().then_some(&self.context);
        let mut exchange = Exchange::begin(&request, Some(InFlight::new(&self.tracker)), logged);
        // Plain connections only: over TLS there is nothing left to redirect or validate.
        let pre_router = (!self.context.https)
            .then_some(self.context.shared.options.pre_router.as_ref())
            .flatten();
        if let Some(pre_router) = pre_router {
            if let Some(response) = pre_router(&request) {
                return self.unrouted(response, exchange);
            }
        }
        let facts = RequestFacts::of(request.headers());
        if let Some(cork) = self.context.cork {
            if cork::ends_connection(request.version(), &facts) {
                exchange.set_closing(cork);
            }
        }
        let asked = Asked {
            format: if facts.wants_json {
                Format::Json
            } else {
                Format::Text
            },
            upgrade: facts.upgrade && request.version() == http::Version::HTTP_11,
            connection_header: facts.connection,
        };
        let format = asked.format;
        if let Some(message) = host::ambiguity(request.uri(), facts.host, facts.many_hosts) {
            return self.unrouted(
                reply::error(StatusCode::BAD_REQUEST, message, format),
                exchange,
            );
        }
        let Some(host) = host::request_host(request.uri(), facts.host) else {
            let message = "the request has no Host header (or it is not text)";
            return self.unrouted(
                reply::error(StatusCode::BAD_REQUEST, message, format),
                exchange,
            );
        };
        let host = host::normalize(host);
        let routed = self
            .table
            .with(|table| table.resolve(&host, request.uri().path()).cloned());
        match routed {
            Ok(entry) => {
                // `map` rather than an async block around it: one state machine, not two.
                let forwarding = forward(self.context.clone(), entry, request, exchange, asked);
                Either::Right(forwarding.map(Ok))
            }
            Err(Miss::NoRoute) => {
                let message = format!("no route for host {host}");
                self.unrouted(
                    reply::error(StatusCode::NOT_FOUND, &message, format),
                    exchange,
                )
            }
            Err(Miss::NoWeightedInstance { service }) => {
                let message = format!(
                    "service {service} has no instance taking traffic (none has a weight above 0 and has not failed)"
                );
                let response = reply::retry_later(&message, reply::RETRY_FAILED, format);
                self.unrouted(response, exchange)
            }
        }
    }
}

/// An answer known at once, as the same future type as a forwarded one.
fn ready<F>(
    response: Response<ProxyBody>,
) -> Either<std::future::Ready<Result<Response<ProxyBody>, Infallible>>, F> {
    Either::Left(std::future::ready(Ok(response)))
}

/// The client's address as a header value. IPv4 is spelled out by hand: `Display` goes
/// through the formatting machinery, which costs more than the rest of accepting.
fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string())
            .expect("an IP address is a valid header value");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for digit in &digits[skip..] {
            text[len] = b'0' + digit;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots are a valid header value")
}

#[cfg(test)]
mod tests {
    #[test]
    fn spells_addresses() {
        for text in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.100",
            "::1",
            "2001:db8::7",
        ] {
            assert_eq!(super::ip_header(text.parse().unwrap()), text);
        }
    }
}
