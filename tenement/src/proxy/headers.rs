//! Header rules at the hop between client and instance: hop-by-hop headers stay behind,
//! everything else passes unchanged, and the instance learns who asked through
//! `X-Forwarded-For`, `-Proto` and `-Host`.

use http::{
    header::{CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE},
    HeaderMap, HeaderName, HeaderValue,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, never the message (RFC 9110 7.6.1), plus the
/// proxy credentials meant for a proxy, which tenement does not use.
const HOP_BY_HOP: [HeaderName; 7] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
];

/// True for an HTTP/1.1 request asking to switch protocols (`Connection: upgrade` + `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Removes the hop-by-hop headers and those the `Connection` header names. With `upgrade`,
/// the `Upgrade` header stays and `Connection: upgrade` is set, so the switch reaches the
/// other side.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of them: one look at each name costs less than a removal
    // per hop-by-hop name.
    if headers
        .keys()
        .any(|name| name == CONNECTION || HOP_BY_HOP.contains(name))
    {
        if headers.contains_key(CONNECTION) {
            // Custom names are rare; skipping the usual tokens keeps this allocation-free.
            let named: Vec<HeaderName> = connection_tokens(headers)
                .filter(|t| {
                    !["close", "keep-alive", "upgrade"]
                        .iter()
                        .any(|u| t.eq_ignore_ascii_case(u))
                })
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
            headers.remove(CONNECTION);
        }
        for name in HOP_BY_HOP {
            if !(upgrade && name == UPGRADE) {
                headers.remove(name);
            }
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Tells the instance who asked. tenement is the edge, so the client's own `X-Forwarded-*`
/// claims are replaced, not extended: an instance can trust what it reads there.
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    peer_ip: &HeaderValue,
    https: bool,
    host: Option<HeaderValue>,
) {
    headers.insert(X_FORWARDED_FOR, peer_ip.clone());
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AUTHORIZATION, COOKIE, HOST};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut map = headers(&[
            ("host", "a.example.com"),
            ("connection", "close, X-Private"),
            ("connection", "keep-alive"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("authorization", "Bearer t"),
            ("cookie", "a=1"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut map, false);
        let mut left: Vec<_> = map.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "cookie", "host"]);
        assert_eq!(map[AUTHORIZATION], "Bearer t");
        assert_eq!(map[COOKIE], "a=1");
        assert_eq!(map[HOST], "a.example.com");
    }

    #[test]
    fn upgrade_survives_when_asked_for() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "5"),
        ]);
        assert!(wants_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map[UPGRADE], "websocket");
        assert_eq!(map[CONNECTION], "upgrade");
        assert!(!map.contains_key(KEEP_ALIVE));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn forwarded_headers_replace_client_claims() {
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut map,
            &HeaderValue::from_static("10.0.0.1"),
            false,
            Some(HeaderValue::from_static("a.example.com")),
        );
        assert_eq!(map[X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(map.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(map[X_FORWARDED_PROTO], "http");
        assert_eq!(map[X_FORWARDED_HOST], "a.example.com");
    }
}
