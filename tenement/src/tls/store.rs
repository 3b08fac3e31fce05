//! The certificates being served, and the choice among them by SNI.
//!
//! Swapping a certificate is replacing an `Arc` under a short lock: handshakes in progress
//! keep the one they picked, the next handshake gets the new one.

use std::sync::PoisonError;
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::certificate::Certificate;

#[derive(Debug, Default)]
pub(crate) struct CertStore {
    /// The operator's own certificate; it wins for every name it covers.
    own: RwLock<Option<Arc<Certificate>>>,
    /// ACME certificates by the name they were ordered for.
    acme: RwLock<HashMap<String, Arc<Certificate>>>,
}

impl CertStore {
    /// The certificate for a handshake: the own one, else the one ordered for `name`, else
    /// a wildcard covering it (`*.{parent}` for a tenant, `*.{name}` for its base name).
    pub fn lookup(&self, name: &str) -> Option<Arc<Certificate>> {
        if let Some(own) = self.own_covering(name) {
            return Some(own);
        }
        let acme = self.acme.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(cert) = acme.get(name) {
            return Some(cert.clone());
        }
        let parent = name.split_once('.').map(|(_, parent)| parent);
        [parent.map(|p| format!("*.{p}")), Some(format!("*.{name}"))]
            .into_iter()
            .flatten()
            .find_map(|wildcard| acme.get(&wildcard).filter(|c| c.covers(name)).cloned())
    }

    pub fn own_covering(&self, name: &str) -> Option<Arc<Certificate>> {
        self.own
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|own| own.covers(name))
            .cloned()
    }

    pub fn own(&self) -> Option<Arc<Certificate>> {
        self.own
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_own(&self, cert: Arc<Certificate>) {
        *self.own.write().unwrap_or_else(PoisonError::into_inner) = Some(cert);
    }

    pub fn acme(&self, name: &str) -> Option<Arc<Certificate>> {
        self.acme
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub fn insert_acme(&self, name: &str, cert: Arc<Certificate>) {
        self.acme
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), cert);
    }

    /// ACME certificates sorted by name.
    pub fn acme_all(&self) -> Vec<(String, Arc<Certificate>)> {
        let mut all: Vec<_> = self
            .acme
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, cert)| (name.clone(), cert.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Certificate choice for ordinary handshakes. Without SNI (a client that dialed an IP
/// address) only the operator's own certificate can be offered.
#[derive(Debug)]
pub(crate) struct StoreResolver(pub Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = match hello.server_name() {
            Some(name) => self.0.lookup(&super::names::normalize_host(name)),
            None => self.0.own(),
        };
        cert.map(|cert| cert.key.clone())
    }
}
