//! Which host a request is for, in the one spelling the routing table uses: lowercase,
//! without port, without the trailing dot of a fully qualified name.

use std::borrow::Cow;

use http::{HeaderValue, Uri};

/// The URI's authority when the request has one (HTTP/2, absolute-form HTTP/1.1), else the
/// `Host` header. `None` when neither is there or the header is not text.
pub(crate) fn request_host<'a>(
    uri: &'a Uri,
    host_header: Option<&'a HeaderValue>,
) -> Option<&'a str> {
    if let Some(authority) = uri.authority() {
        return Some(authority.as_str());
    }
    let host = host_header?.to_str().ok()?;
    (!host.is_empty()).then_some(host)
}

/// Why a request's host is ambiguous, if it is: two `Host` headers, or a `Host` header that
/// names another host than an absolute-form target (or HTTP/2 `:authority`). A proxy that
/// routes by one and forwards the other lets a client reach a host it was not routed to,
/// so both are answered 400 (RFC 9112 3.2, 3.2.2). Allocates nothing unless a name has
/// uppercase letters.
pub(crate) fn ambiguity(
    uri: &Uri,
    host_header: Option<&HeaderValue>,
    many_hosts: bool,
) -> Option<&'static str> {
    if many_hosts {
        return Some("the request has more than one Host header");
    }
    let (Some(authority), Some(header)) = (uri.authority(), host_header) else {
        return None;
    };
    let agrees = header
        .to_str()
        .is_ok_and(|header| normalize(header) == normalize(authority.host()));
    (!agrees).then_some("the request's Host header names another host than its target")
}

/// `Alice.Notes.Example.com.:8080` -> `alice.notes.example.com`. Borrows unless it must lowercase.
pub(crate) fn normalize(host: &str) -> Cow<'_, str> {
    let host = strip_port(host.trim());
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal keeps its brackets: `[::1]:8080` -> `[::1]`.
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_port_and_trailing_dot() {
        assert_eq!(
            normalize("Alice.Notes.Example.COM.:8080"),
            "alice.notes.example.com"
        );
        assert_eq!(normalize("example.com"), "example.com");
        assert!(matches!(normalize("example.com:80"), Cow::Borrowed(_)));
        assert_eq!(normalize("localhost:"), "localhost");
        assert_eq!(normalize("[::1]:8080"), "[::1]");
        assert_eq!(normalize("127.0.0.1:8080"), "127.0.0.1");
    }

    #[test]
    fn finds_ambiguous_hosts() {
        let header = HeaderValue::from_static("A.example.com:8080");
        let absolute: Uri = "http://a.example.com/x".parse().unwrap();
        let elsewhere: Uri = "http://b.example.com/x".parse().unwrap();
        let origin: Uri = "/x".parse().unwrap();
        assert_eq!(ambiguity(&absolute, Some(&header), false), None);
        assert_eq!(ambiguity(&origin, Some(&header), false), None);
        assert_eq!(ambiguity(&absolute, None, false), None);
        assert!(ambiguity(&origin, Some(&header), true).is_some());
        assert!(ambiguity(&elsewhere, Some(&header), false).is_some());
        let user: Uri = "http://u@b.example.com/x".parse().unwrap();
        assert!(ambiguity(&user, Some(&header), false).is_some());
    }

    #[test]
    fn prefers_the_uri_authority() {
        let header = HeaderValue::from_static("b.example.com");
        let absolute: Uri = "http://a.example.com/x".parse().unwrap();
        let origin: Uri = "/x".parse().unwrap();
        assert_eq!(
            request_host(&absolute, Some(&header)),
            Some("a.example.com")
        );
        assert_eq!(request_host(&origin, Some(&header)), Some("b.example.com"));
        assert_eq!(request_host(&origin, None), None);
        assert_eq!(
            request_host(&origin, Some(&HeaderValue::from_static(""))),
            None
        );
    }
}
