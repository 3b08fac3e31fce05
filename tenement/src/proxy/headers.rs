//! Header rules at the hop between client and instance: hop-by-hop headers stay behind,
//! everything else passes unchanged. (The `X-Forwarded-*` headers tenement adds are written
//! with the request head, see `http1::encode_request_head`.)

use http::{
    header::{CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE},
    HeaderMap, HeaderName, HeaderValue,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// What the proxy needs to know of a request's headers, gathered in one pass: a request has
/// a handful, and comparing each name once costs less than a hashed lookup per question.
/// `V` is how a value is held: a `HeaderValue` when hyper parsed the request, the raw bytes
/// when the proxy did (`direct.rs`).
pub(crate) struct RequestFacts<'h, V: ?Sized = HeaderValue> {
    /// The first `Host` header.
    pub host: Option<&'h V>,
    /// More than one `Host` header: ambiguous, so answered 400 (RFC 9112 3.2).
    pub many_hosts: bool,
    /// The client's `Accept` prefers `application/json` to `text/plain` (error bodies
    /// follow suit).
    pub wants_json: bool,
    /// `Upgrade` plus a `Connection` that says `upgrade`.
    pub upgrade: bool,
    /// Has a `Connection` header (which may name more headers to drop).
    pub connection: bool,
    /// `Connection` names a header to drop (a token other than close, keep-alive, upgrade).
    pub names_headers: bool,
    /// `Connection` says `close`.
    pub close: bool,
    /// `Connection` says `keep-alive` (what an HTTP/1.0 client needs to keep it).
    pub keep_alive: bool,
    /// Has a `Content-Length` or `Transfer-Encoding`: the request may have a body.
    pub framed: bool,
    /// Has an `Expect` header (`100-continue`).
    pub expect: bool,
    /// `TE` says `trailers`: the client takes trailer fields after a chunked body.
    pub trailers: bool,
}

impl<V: ?Sized> Default for RequestFacts<'_, V> {
    fn default() -> Self {
        RequestFacts {
            host: None,
            many_hosts: false,
            wants_json: false,
            upgrade: false,
            connection: false,
            names_headers: false,
            close: false,
            keep_alive: false,
            framed: false,
            expect: false,
            trailers: false,
        }
    }
}

impl<'h> RequestFacts<'h> {
    pub(crate) fn of(headers: &'h HeaderMap) -> RequestFacts<'h> {
        RequestFacts::of_fields(
            headers
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value)),
        )
    }
}

impl<'h, V: AsRef<[u8]> + ?Sized> RequestFacts<'h, V> {
    /// From `(name, value)` pairs; names in any case.
    pub(crate) fn of_fields<'n>(
        fields: impl IntoIterator<Item = (&'n [u8], &'h V)>,
    ) -> RequestFacts<'h, V> {
        let mut facts = RequestFacts::default();
        let mut upgrade_header = false;
        let mut upgrade_token = false;
        let mut accept = Accept::default();
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"host") {
                facts.many_hosts |= facts.host.is_some();
                facts.host.get_or_insert(value);
            } else if name.eq_ignore_ascii_case(b"accept") {
                accept.read(value.as_ref());
            } else if name.eq_ignore_ascii_case(b"connection") {
                facts.connection = true;
                for token in value.as_ref().split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    let upgrade = token.eq_ignore_ascii_case(b"upgrade");
                    let close = token.eq_ignore_ascii_case(b"close");
                    let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                    upgrade_token |= upgrade;
                    facts.close |= close;
                    facts.keep_alive |= keep_alive;
                    facts.names_headers |= !(token.is_empty() || upgrade || close || keep_alive);
                }
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade_header = true;
            } else if name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding")
            {
                facts.framed = true;
            } else if name.eq_ignore_ascii_case(b"expect") {
                facts.expect = true;
            } else if name.eq_ignore_ascii_case(b"te") {
                facts.trailers |= value
                    .as_ref()
                    .split(|&b| b == b',')
                    .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            }
        }
        facts.upgrade = upgrade_header && upgrade_token;
        facts.wants_json = accept.prefers_json();
        facts
    }
}

/// Content negotiation between the proxy's two ways to spell an error, `text/plain` and
/// `application/json` (RFC 9110 12.5.1): each gets the quality of the most specific media
/// range that matches it. JSON wins with a higher quality, or with the same one from a
/// more specific range (`application/json, */*`); plain text is the default, and an
/// `Accept` that names only `text/html` gets plain text, never HTML.
#[derive(Default)]
struct Accept {
    json: Match,
    text: Match,
}

/// How well one representation matched: specificity (0 none, 1 `*/*`, 2 `type/*`, 3 the
/// exact type) and quality in thousandths.
#[derive(Default, Clone, Copy)]
struct Match {
    specificity: u8,
    quality: u16,
}

impl Match {
    fn offer(&mut self, specificity: u8, quality: u16) {
        if specificity > self.specificity {
            *self = Match {
                specificity,
                quality,
            };
        } else if specificity == self.specificity {
            self.quality = self.quality.max(quality);
        }
    }
}

impl Accept {
    fn read(&mut self, value: &[u8]) {
        for range in value.split(|&b| b == b',') {
            let mut parts = range.split(|&b| b == b';');
            let media = parts.next().unwrap_or_default().trim_ascii();
            let quality = parts
                .filter_map(|param| {
                    let param = param.trim_ascii();
                    let q = param.strip_prefix(b"q=").or(param.strip_prefix(b"Q="))?;
                    Some(parse_quality(q))
                })
                .next_back()
                .unwrap_or(1000);
            let Some(slash) = media.iter().position(|&b| b == b'/') else {
                continue;
            };
            let (kind, sub) = (&media[..slash], &media[slash + 1..]);
            let specificity = |want_kind: &[u8], want_sub: &[u8]| -> u8 {
                if kind == b"*" && sub == b"*" {
                    1
                } else if kind.eq_ignore_ascii_case(want_kind) && sub == b"*" {
                    2
                } else if kind.eq_ignore_ascii_case(want_kind) && sub.eq_ignore_ascii_case(want_sub)
                {
                    3
                } else {
                    0
                }
            };
            let json = specificity(b"application", b"json");
            if json > 0 {
                self.json.offer(json, quality);
            }
            let text = specificity(b"text", b"plain");
            if text > 0 {
                self.text.offer(text, quality);
            }
        }
    }

    fn prefers_json(&self) -> bool {
        let (json, text) = (self.json, self.text);
        json.quality > 0
            && (json.quality > text.quality
                || (json.quality == text.quality && json.specificity > text.specificity))
    }
}

/// `q=0.25` in thousandths; anything unreadable counts as 0 (not acceptable).
fn parse_quality(q: &[u8]) -> u16 {
    let Ok(text) = std::str::from_utf8(q) else {
        return 0;
    };
    match text.trim().parse::<f32>() {
        Ok(q) if (0.0..=1.0).contains(&q) => (q * 1000.0).round() as u16,
        _ => 0,
    }
}

/// True for a header (named in any case) that describes the hop, not the message. With
/// `upgrade`, `Upgrade` is kept so that the switch reaches the other side.
pub(crate) fn is_hop_by_hop(name: &[u8], upgrade: bool) -> bool {
    let named = |header: &HeaderName| name.eq_ignore_ascii_case(header.as_str().as_bytes());
    (named(&CONNECTION) || HOP_BY_HOP.iter().any(named)) && !(upgrade && named(&UPGRADE))
}

/// The headers (named in any case) tenement writes itself, whatever the client claims.
pub(crate) fn is_forwarded(name: &[u8]) -> bool {
    [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST]
        .iter()
        .any(|header| name.eq_ignore_ascii_case(header.as_str().as_bytes()))
}

/// Removes the headers the `Connection` header names (RFC 9110 7.6.1), except `Upgrade`
/// when the request asks to switch protocols.
pub(crate) fn remove_connection_named(headers: &mut HeaderMap) {
    // Usually there is no `Connection` header, or it says only `close` or `keep-alive`:
    // one look, and nothing to collect or remove.
    if connection_tokens(headers).all(is_usual_token) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|token| !is_usual_token(token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// The tokens of `Connection` that name no header.
fn is_usual_token(token: &str) -> bool {
    ["close", "keep-alive", "upgrade"]
        .iter()
        .any(|usual| token.eq_ignore_ascii_case(usual))
}

/// Removes the hop-by-hop headers and those the `Connection` header names. With `upgrade`,
/// the `Upgrade` header stays and `Connection: upgrade` is set.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one look at each name costs less than a removal per name.
    if headers
        .keys()
        .any(|name| is_hop_by_hop(name.as_str().as_bytes(), false))
    {
        remove_connection_named(headers);
        headers.remove(CONNECTION);
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
    fn facts_in_one_pass() {
        let map = headers(&[
            ("host", "a.example.com"),
            ("accept", "text/html, Application/JSON;q=0.9"),
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let facts = RequestFacts::of(&map);
        assert_eq!(facts.host.unwrap(), "a.example.com");
        assert!(facts.wants_json && facts.upgrade && facts.connection);
        let empty = HeaderMap::new();
        let plain = RequestFacts::of(&empty);
        assert!(plain.host.is_none() && !plain.wants_json && !plain.upgrade && !plain.connection);
    }

    fn json_for(accept: &[&str]) -> bool {
        let pairs: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        RequestFacts::of(&headers(&pairs)).wants_json
    }

    #[test]
    fn json_only_when_preferred() {
        assert!(json_for(&["application/json"]));
        assert!(json_for(&["Application/JSON; charset=utf-8"]));
        assert!(json_for(&["application/json, */*;q=0.8"]));
        assert!(json_for(&["application/*"]));
        assert!(json_for(&["text/plain;q=0.5, application/json"]));
        assert!(json_for(&["text/html", "application/json"]));
        // A browser, a plain client, and clients preferring text.
        assert!(!json_for(&[
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ]));
        assert!(!json_for(&[]));
        assert!(!json_for(&["*/*"]));
        assert!(!json_for(&["text/plain, application/json;q=0.5"]));
        assert!(!json_for(&["application/json;q=0, */*"]));
        assert!(!json_for(&["application/json, text/plain"]));
        assert!(!json_for(&["application/json;q=bogus"]));
    }

    #[test]
    fn upgrade_survives_when_asked_for() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "5"),
        ]);
        assert!(RequestFacts::of(&map).upgrade);
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map[UPGRADE], "websocket");
        assert_eq!(map[CONNECTION], "upgrade");
        assert!(!map.contains_key(KEEP_ALIVE));
        assert!(!RequestFacts::of(&headers(&[("upgrade", "websocket")])).upgrade);
        assert!(!RequestFacts::of(&headers(&[("connection", "upgrade")])).upgrade);
    }
}
