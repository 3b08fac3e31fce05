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
