//! The operator's own certificate (`cert` / `key` in `[settings.tls]`), reloaded when
//! either file changes. Renewing it is the operator's business (certbot, a corporate CA...);
//! tenement only notices the new files.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result};

use super::certificate::Certificate;

pub(crate) struct OwnCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What identifies one version of the two files. Size as well as mtime, because a rewrite
/// within the file system's timestamp granularity keeps the mtime.
pub(crate) type Stamp = [Option<(SystemTime, u64)>; 2];

impl OwnCertFiles {
    pub fn stamp(&self) -> Stamp {
        [file_stamp(&self.cert), file_stamp(&self.key)]
    }

    pub fn load(&self) -> Result<Certificate> {
        let chain = fs::read(&self.cert)
            .with_context(|| format!("settings.tls.cert {}", self.cert.display()))?;
        let key = fs::read(&self.key)
            .with_context(|| format!("settings.tls.key {}", self.key.display()))?;
        let cert = Certificate::from_pem(&chain, &key).with_context(|| {
            format!(
                "settings.tls.cert {} with settings.tls.key {}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        if cert.names.is_empty() {
            anyhow::bail!(
                "settings.tls.cert {}: the certificate names no DNS host",
                self.cert.display()
            );
        }
        Ok(cert)
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
