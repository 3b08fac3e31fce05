//! Files under `{data_dir}/.tenement/tls/`: the ACME account and the issued certificates.
//!
//! Each ACME directory gets its own folder (`acme/{host}-{hash}`), so switching from a staging
//! server to production never serves a staging certificate, and switching back reuses the old
//! account. Each certificate is one file, private key first and then the chain, written
//! atomically with mode 0600: a crash never leaves a key without its certificate.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use instant_acme::AccountCredentials;
use sha2::{Digest, Sha256};

use super::certificate::Certificate;

pub(crate) struct Disk {
    root: PathBuf,
}

impl Disk {
    /// Creates `{tls_dir}/acme/{directory id}/` (mode 0700) if needed.
    pub fn open(tls_dir: &Path, directory_url: &str) -> Result<Disk> {
        let root = tls_dir.join("acme").join(directory_id(directory_url));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join("certs"))
            .with_context(|| format!("creating the TLS store {}", root.display()))?;
        Ok(Disk { root })
    }

    pub fn account_path(&self) -> PathBuf {
        self.root.join("account.json")
    }

    pub fn read_account(&self) -> Result<Option<AccountCredentials>> {
        let path = self.account_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading the ACME account {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write_account(&self, credentials: &AccountCredentials) -> Result<()> {
        let json = serde_json::to_vec_pretty(credentials)?;
        write_private(&self.account_path(), &json)
    }

    pub fn certificate_path(&self, name: &str) -> PathBuf {
        self.root
            .join("certs")
            .join(format!("{}.pem", super::names::file_stem(name)))
    }

    /// Writes `name`'s certificate: its private key PEM followed by its chain PEM.
    pub fn write_bundle(&self, name: &str, bundle: &str) -> Result<()> {
        write_private(&self.certificate_path(name), bundle.as_bytes())
    }

    /// Every stored certificate with the name its file is stored under. A file that cannot
    /// be read is reported with its path and skipped: one damaged file must not stop the
    /// others from being served.
    pub fn load_certificates(&self) -> Vec<(String, Result<Certificate>)> {
        let dir = self.root.join("certs");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut loaded = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            let result = fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bundle| Certificate::from_pem(&bundle, &bundle))
                .with_context(|| format!("loading the stored certificate {}", path.display()));
            loaded.push((super::names::from_file_stem(name), result));
        }
        loaded
    }
}

/// `acme-v02.api.letsencrypt.org-1a2b3c4d`: readable, and distinct per directory URL.
fn directory_id(url: &str) -> String {
    let host: String = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = Sha256::digest(url.as_bytes());
    format!("{host}-{}", hex::encode(&hash[..4]))
}

/// Writes through a temporary file and a rename, mode 0600 from the first byte on.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_ids_are_readable_and_distinct() {
        let production = directory_id("https://acme-v02.api.letsencrypt.org/directory");
        assert!(
            production.starts_with("acme-v02.api.letsencrypt.org-"),
            "{production}"
        );
        let pebble = directory_id("https://127.0.0.1:14000/dir");
        assert!(pebble.starts_with("127.0.0.1_14000-"), "{pebble}");
        assert_ne!(pebble, directory_id("https://127.0.0.1:14001/dir"));
    }
}
