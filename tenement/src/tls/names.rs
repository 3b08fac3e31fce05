//! Host names: how they are compared, and which ones may be ordered from an ACME CA.

use anyhow::{bail, Result};

use super::certificate::name_matches;
use crate::config::{Settings, Wildcard};

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

/// `*.{service}.{domain}` for every service `[settings.tls] wildcard` names (all of
/// `services` for `true`) and every public domain. Each is ordered together with its base
/// name `{service}.{domain}`.
pub(crate) fn wildcard_names(settings: &Settings, services: &[String]) -> Vec<String> {
    let chosen: Vec<&str> = match &settings.tls.wildcard {
        Wildcard::All(false) => Vec::new(),
        Wildcard::All(true) => services.iter().map(String::as_str).collect(),
        Wildcard::Services(list) => list.iter().map(String::as_str).collect(),
    };
    let mut names = std::collections::BTreeSet::new();
    for domain in &settings.domain {
        let domain = normalize_host(domain);
        for service in &chosen {
            let base = format!("{service}.{domain}");
            if orderable(&base) {
                names.insert(format!("*.{base}"));
            }
        }
    }
    names.into_iter().collect()
}

/// The name whose certificate serves `host`: the first of `wildcards` covering it (the
/// tenant or the bare service name), else `host` itself.
pub(crate) fn certificate_name(host: &str, wildcards: &[String]) -> String {
    wildcards
        .iter()
        .find(|wildcard| {
            let base = &wildcard[2..];
            host == base || name_matches(wildcard, host)
        })
        .cloned()
        .unwrap_or_else(|| host.to_string())
}

/// The identifiers of the order for `name`: a wildcard comes with its base name.
pub(crate) fn order_identifiers(name: &str) -> Vec<String> {
    match name.strip_prefix("*.") {
        Some(base) => vec![name.to_string(), base.to_string()],
        None => vec![name.to_string()],
    }
}

/// File names of stored certificates: `*` is no character for a file name, and `_` never
/// starts an orderable name, so `*.notes.example.com` is stored as `_wildcard.notes...`.
const WILDCARD_STEM: &str = "_wildcard.";

pub(crate) fn file_stem(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(base) => format!("{WILDCARD_STEM}{base}"),
        None => name.to_string(),
    }
}

pub(crate) fn from_file_stem(stem: &str) -> String {
    match stem.strip_prefix(WILDCARD_STEM) {
        Some(base) => format!("*.{base}"),
        None => stem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_per_service_and_domain() {
        let mut settings = Settings {
            domain: vec!["example.com".into(), "localhost".into()],
            ..Settings::default()
        };
        let services = ["notes".to_string(), "wiki".to_string()];
        assert!(wildcard_names(&settings, &services).is_empty());
        settings.tls.wildcard = Wildcard::All(true);
        assert_eq!(
            wildcard_names(&settings, &services),
            ["*.notes.example.com", "*.wiki.example.com"]
        );
        settings.tls.wildcard = Wildcard::Services(vec!["wiki".into()]);
        let wildcards = wildcard_names(&settings, &services);
        assert_eq!(wildcards, ["*.wiki.example.com"]);
        assert_eq!(
            certificate_name("alice.wiki.example.com", &wildcards),
            "*.wiki.example.com"
        );
        assert_eq!(
            certificate_name("wiki.example.com", &wildcards),
            "*.wiki.example.com"
        );
        assert_eq!(
            certificate_name("alice.notes.example.com", &wildcards),
            "alice.notes.example.com"
        );
        assert_eq!(
            certificate_name("a.b.wiki.example.com", &wildcards),
            "a.b.wiki.example.com"
        );
        assert_eq!(
            order_identifiers("*.wiki.example.com"),
            ["*.wiki.example.com", "wiki.example.com"]
        );
        assert_eq!(
            file_stem("*.wiki.example.com"),
            "_wildcard.wiki.example.com"
        );
        assert_eq!(
            from_file_stem("_wildcard.wiki.example.com"),
            "*.wiki.example.com"
        );
        assert_eq!(from_file_stem("wiki.example.com"), "wiki.example.com");
    }

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
