//! Challenge answers while an order is pending: HTTP-01 key authorizations for the plain
//! listener, and TLS-ALPN-01 certificates (RFC 8737) for handshakes offering `acme-tls/1`.

use std::sync::PoisonError;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{
    certificate::provider,
    shared::{tls_alpn01_key, SharedCertificates},
};

/// The ALPN protocol of a TLS-ALPN-01 validation handshake.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, Default)]
pub(crate) struct Challenges {
    /// HTTP-01: token -> key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: host name -> self-signed certificate carrying the acmeIdentifier.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Answers HTTP-01 for `token` until the guard is dropped.
    pub fn add_http01(self: &Arc<Self>, token: &str, key_authorization: &str) -> ChallengeGuard {
        self.http
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_string(), key_authorization.to_string());
        ChallengeGuard {
            challenges: self.clone(),
            answer: Answer::Http01(token.to_string()),
        }
    }

    /// Answers TLS-ALPN-01 for `name` until the guard is dropped. `digest` is the SHA-256
    /// of the key authorization.
    pub fn add_tls_alpn01(self: &Arc<Self>, name: &str, digest: &[u8]) -> Result<ChallengeGuard> {
        let certificate = validation_certificate(name, digest)
            .with_context(|| format!("making the TLS-ALPN-01 certificate for {name}"))?;
        self.alpn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), Arc::new(certificate));
        Ok(ChallengeGuard {
            challenges: self.clone(),
            answer: Answer::TlsAlpn01(name.to_string()),
        })
    }
}

/// RFC 8737 section 3: a certificate for exactly `name`, with the critical acmeIdentifier
/// extension holding the key authorization digest. Nobody trusts it; the CA only reads it.
fn validation_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki,
    // which rejects the critical acmeIdentifier extension that is the point of it.
    let signing_key = provider().key_provider.load_private_key(key_der)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

enum Answer {
    Http01(String),
    TlsAlpn01(String),
}

/// Removes its challenge answer when the order is over, however it ended.
pub(crate) struct ChallengeGuard {
    challenges: Arc<Challenges>,
    answer: Answer,
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        match &self.answer {
            Answer::Http01(token) => {
                self.challenges
                    .http
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(token);
            }
            Answer::TlsAlpn01(name) => {
                self.challenges
                    .alpn
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(name);
            }
        }
    }
}

/// Certificate choice for `acme-tls/1` handshakes: only pending validation certificates,
/// this server's own or, in a fleet, those another server published (the CA's validation
/// may reach any of them).
pub(crate) struct ChallengeResolver {
    pub challenges: Arc<Challenges>,
    pub shared: Option<Arc<dyn SharedCertificates>>,
}

impl std::fmt::Debug for ChallengeResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeResolver")
            .field("challenges", &self.challenges)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = super::names::normalize_host(hello.server_name()?);
        if let Some(own) = self.challenges.tls_alpn01(&name) {
            return Some(own);
        }
        let digest = self.shared.as_ref()?.answer(&tls_alpn01_key(&name))?;
        let digest = hex::decode(digest).ok()?;
        // Made per validation handshake: they are few, and only while an order is pending.
        validation_certificate(&name, &digest).ok().map(Arc::new)
    }
}
