//! One certificate with its key, parsed once: what rustls serves and what the status shows.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use rustls::{crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use x509_parser::{extensions::GeneralName, parse_x509_certificate};

/// The crypto provider for every TLS config and key in tenement: ring, the only one the
/// dependency tree builds (instant-acme and rcgen use it too), which keeps the binary small.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A certificate chain and its private key, ready to serve.
#[derive(Debug)]
pub(crate) struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (lower case; may contain wildcards like `*.example.com`).
    pub names: Vec<String>,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and a PEM private key, and checks that they belong
    /// together. Both may come from the same bundle.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Certificate> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| anyhow!("reading the PEM certificate chain: {err}"))?;
        if chain.is_empty() {
            bail!("no PEM certificate found");
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|err| anyhow!("reading the PEM private key: {err}"))?;
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|err| anyhow!("certificate and private key do not fit together: {err}"))?;
        Certificate::from_certified(Arc::new(certified))
    }

    pub fn from_certified(key: Arc<CertifiedKey>) -> Result<Certificate> {
        let leaf = key.end_entity_cert().context("empty certificate chain")?;
        let (_, parsed) = parse_x509_certificate(leaf.as_ref())
            .map_err(|err| anyhow!("parsing the X.509 leaf certificate: {err}"))?;
        let mut names = Vec::new();
        if let Some(san) = parsed
            .subject_alternative_name()
            .map_err(|err| anyhow!("reading subjectAltName: {err}"))?
        {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            // Old-style certificates name their host in the subject's CN only.
            for cn in parsed.subject().iter_common_name() {
                if let Ok(cn) = cn.as_str() {
                    names.push(cn.to_ascii_lowercase());
                }
            }
        }
        let validity = parsed.validity();
        Ok(Certificate {
            names,
            issuer: parsed.issuer().to_string(),
            not_before: unix_time(validity.not_before.timestamp()),
            not_after: unix_time(validity.not_after.timestamp()),
            key,
        })
    }

    /// True when this certificate is valid for `name` (exactly, or through a wildcard
    /// covering one label, as browsers match them).
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|pattern| name_matches(pattern, name))
    }

    /// Two thirds into the lifetime, less up to a fifteenth of it (day 54 to 60 of 90):
    /// late enough not to waste certificates, early enough to leave a third of the
    /// lifetime for retries. The spread comes from the certificate's own bytes, so it is
    /// the same at every look (and in the status), while certificates issued together are
    /// not all renewed in the same minute.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        let leaf = self.key.cert.first().map_or(&[][..], |der| der.as_ref());
        let digest = sha2::Sha256::digest(leaf);
        let spread = u32::from(u16::from_be_bytes([digest[0], digest[1]]));
        let jitter = (lifetime / 15).mul_f64(f64::from(spread) / f64::from(u16::MAX));
        self.not_before + lifetime * 2 / 3 - jitter
    }
}

fn unix_time(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

/// `pattern` is a certificate name (`a.example.com` or `*.example.com`), `name` a host.
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// Where a served certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateSource {
    /// Issued by the ACME server and stored under `{data_dir}/.tenement/tls/`.
    Acme,
    /// The operator's own `cert` / `key` files from `[settings.tls]`.
    File,
}

/// What `tenement status`, the API and the metrics show about one certificate, or about a
/// name whose certificate could not be obtained yet (then only `names` and `last_error`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertificateInfo {
    pub names: Vec<String>,
    pub source: CertificateSource,
    pub issuer: Option<String>,
    #[serde(with = "rfc3339")]
    pub not_before: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    pub not_after: Option<SystemTime>,
    /// When tenement starts renewing it (ACME certificates only).
    #[serde(with = "rfc3339")]
    pub renew_at: Option<SystemTime>,
    /// The last failure to obtain, renew or reload it; cleared by the next success.
    pub last_error: Option<String>,
}

impl CertificateInfo {
    pub(crate) fn of(cert: &Certificate, source: CertificateSource) -> CertificateInfo {
        CertificateInfo {
            names: cert.names.clone(),
            source,
            issuer: Some(cert.issuer.clone()),
            not_before: Some(cert.not_before),
            not_after: Some(cert.not_after),
            renew_at: (source == CertificateSource::Acme).then(|| cert.renew_at()),
            last_error: None,
        }
    }

    pub(crate) fn missing(name: &str, last_error: String) -> CertificateInfo {
        CertificateInfo {
            names: vec![name.to_string()],
            source: CertificateSource::Acme,
            issuer: None,
            not_before: None,
            not_after: None,
            renew_at: None,
            last_error: Some(last_error),
        }
    }
}

/// Times as RFC 3339 strings in JSON (`2025-01-31T12:00:00Z`), `null` when unknown.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => s.collect_str(&humantime::format_rfc3339_seconds(*time)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("a.example.com", "a.example.com"));
        assert!(!name_matches("a.example.com", "b.example.com"));
    }

    #[test]
    fn parses_a_bundle_and_rejects_a_foreign_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.example.com".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let bundle = format!("{}{}", key.serialize_pem(), cert.pem());
        let parsed = Certificate::from_pem(bundle.as_bytes(), bundle.as_bytes()).unwrap();
        assert_eq!(parsed.names, vec!["a.example.com"]);
        assert!(parsed.covers("a.example.com"));
        assert!(parsed.not_before < parsed.renew_at() && parsed.renew_at() < parsed.not_after);
        // Between 60% and two thirds of the lifetime, the same at every look.
        let lifetime = parsed.not_after.duration_since(parsed.not_before).unwrap();
        let at = parsed.renew_at().duration_since(parsed.not_before).unwrap();
        assert!(
            at >= lifetime * 3 / 5 && at <= lifetime * 2 / 3,
            "{at:?} of {lifetime:?}"
        );
        assert_eq!(parsed.renew_at(), parsed.renew_at());

        let other = rcgen::KeyPair::generate().unwrap();
        let err = Certificate::from_pem(cert.pem().as_bytes(), other.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(err.to_string().contains("do not fit together"), "{err}");
    }

    #[test]
    fn info_serializes_times_as_rfc3339() {
        let info = CertificateInfo::missing("a.example.com", "connection refused".into());
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains(r#""not_after":null"#), "{json}");
        let mut info = info;
        info.not_after = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("2023-11-14T22:13:20Z"), "{json}");
        assert_eq!(
            serde_json::from_str::<CertificateInfo>(&json).unwrap(),
            info
        );
    }
}
