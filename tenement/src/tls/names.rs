//! Host names: how they are compared, and which ones may be ordered from an ACME CA.

use anyhow::{bail, Result};

use crate::config::Settings;

/// The token of an HTTP-01 challenge request path, for the plain listener:
/// `/.well-known/acme-challenge/{token}` (tokens are base64url).
pub fn http01_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix("/.well-known/acme-challenge/")?;
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (!token.is_empty() && token.bytes().all(base64url)).then_some(token)
}

/// Host names as compared everywhere here: lower case, without the root's trailing dot.
pub(crate) fn normalize_host(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A name an ACME CA can issue for and that is safe as a file name: letters, digits and
/// hyphens in dot-separated labels, at least two labels, no wildcard, nothing under
/// `localhost`.
pub(crate) fn orderable(name: &str) -> bool {
    let labels_ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    labels_ok
        && name.len() <= 253
        && name.contains('.')
        && name != "localhost"
        && !name.ends_with(".localhost")
        && name.parse::<std::net::IpAddr>().is_err()
}

/// `[settings.tls] names` (which must be orderable) and the public `settings.domain`s: the
/// names kept certified from the start, whether they route or not.
pub(crate) fn configured_names(settings: &Settings) -> Result<Vec<String>> {
    let mut configured = std::collections::BTreeSet::new();
    for name in &settings.tls.names {
        let name = normalize_host(name);
        if !orderable(&name) {
            bail!(
                "settings.tls.names: {name:?} cannot get an ACME certificate (a public \
                 DNS name without wildcard is needed)"
            );
        }
        configured.insert(name);
    }
    for domain in &settings.domain {
        let domain = normalize_host(domain);
        if orderable(&domain) {
            configured.insert(domain);
        } else {
            tracing::info!("tls: no ACME certificate for the domain {domain}: not public");
        }
    }
    Ok(configured.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_paths() {
        assert_eq!(
            http01_token("/.well-known/acme-challenge/abc-DEF_123"),
            Some("abc-DEF_123")
        );
        assert_eq!(http01_token("/.well-known/acme-challenge/"), None);
        assert_eq!(http01_token("/.well-known/acme-challenge/../x"), None);
        assert_eq!(http01_token("/index.html"), None);
    }

    #[test]
    fn orderable_names() {
        assert!(orderable("alice.notes.example.com"));
        assert!(orderable("example.com"));
        assert!(!orderable("localhost"));
        assert!(!orderable("a.localhost"));
        assert!(!orderable("*.example.com"));
        assert!(!orderable("a..example.com"));
        assert!(!orderable("-a.example.com"));
        assert!(!orderable("a/b.example.com"));
        assert!(!orderable("Example.com"), "callers normalize first");
        assert_eq!(normalize_host("Alice.Example.COM."), "alice.example.com");
    }
}
