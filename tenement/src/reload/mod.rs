//! `tenement reload` and SIGHUP: read the configuration file again, check it completely,
//! and apply what changed without touching what did not.
//!
//! The file goes through the same loading as `tenement serve` (and `tenement config
//! check`); a file with any error changes nothing. The comparison is `plan.rs`; the
//! supervisor applies it (`supervisor/reconcile.rs`); the proxy gets the new routing table.

pub mod plan;

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use crate::{
    config::{Config, ConfigErrors},
    proxy::Proxy,
    supervisor::Supervisor,
};

/// Command-line options of `serve` that change the loaded configuration: a reload applies
/// them again, so they do not show up as changes.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub tls: bool,
    pub email: Option<String>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if self.tls {
            config.settings.tls.enabled = true;
        }
        if let Some(email) = &self.email {
            config.settings.tls.acme_email = Some(email.clone());
        }
    }
}

/// Loads the configuration file as `serve` does: checked completely, relative paths
/// resolved, the command-line overrides applied.
pub fn load(path: &Path, overrides: &Overrides) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if let Some(warning) = crate::config::readable_secrets(path, &config) {
        tracing::warn!("{warning}");
    }
    overrides.apply(&mut config);
    Ok(config)
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has mistakes: every one, as `file:line:column: ...`.
    #[error("{path}: the new configuration has {count} error{s}; nothing was changed\n{errors}", count = .errors.len(), s = if .errors.len() == 1 { "" } else { "s" })]
    Invalid { path: String, errors: ConfigErrors },
    /// It could not be read at all.
    #[error("{0:#}; nothing was changed")]
    Unreadable(anyhow::Error),
    /// It changes keys only a restart of tenement can apply.
    #[error(
        "{path}: {} change{} only a restart of tenement applies ({}); nothing was changed: \
         undo {}, or restart tenement (`systemctl restart tenement`) to apply the whole file",
        .keys.len(),
        if .keys.len() == 1 { "s a key" } else { "s keys" },
        .keys.join(", "),
        if .keys.len() == 1 { "it" } else { "them" }
    )]
    NeedsRestart { path: String, keys: Vec<String> },
}

/// What a reload did: one line per change, and what failed while applying (the new file is
/// in force even then).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub changes: Vec<String>,
    pub failures: Vec<String>,
}

/// Reloads the daemon's configuration file; one reload at a time.
pub struct Reloader {
    path: PathBuf,
    overrides: Overrides,
    supervisor: Supervisor,
    proxy: OnceLock<Proxy>,
    /// Hash of each `env_file`'s contents when the running configuration was loaded.
    env_files: Mutex<BTreeMap<PathBuf, Option<u64>>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(path: PathBuf, overrides: Overrides, supervisor: Supervisor) -> Reloader {
        let env_files = env_file_hashes(&supervisor.live_config().get());
        Reloader {
            path,
            overrides,
            supervisor,
            proxy: OnceLock::new(),
            env_files: Mutex::new(env_files),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// The proxy whose routing table a reload replaces (it starts after the API).
    pub fn attach_proxy(&self, proxy: Proxy) {
        let _ = self.proxy.set(proxy);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, checks, compares and applies the file. Logs the result either way.
    pub async fn reload(&self) -> Result<Outcome, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let result = self.reload_now().await;
        match &result {
            Ok(outcome) if outcome.changes.is_empty() && outcome.failures.is_empty() => {
                tracing::info!("reload of {}: no changes", self.path.display());
            }
            Ok(outcome) => {
                for change in &outcome.changes {
                    tracing::info!("reload: {change}");
                }
                for failure in &outcome.failures {
                    tracing::error!("reload: {failure}");
                }
            }
            Err(err) => tracing::error!("reload refused: {err}"),
        }
        result
    }

    async fn reload_now(&self) -> Result<Outcome, ReloadError> {
        let path = self.path.display().to_string();
        let new = load(&self.path, &self.overrides).map_err(|err| {
            match err.downcast::<ConfigErrors>() {
                Ok(errors) => ReloadError::Invalid {
                    path: path.clone(),
                    errors,
                },
                Err(err) => ReloadError::Unreadable(err),
            }
        })?;
        let old = self.supervisor.live_config().get();
        let hashes = env_file_hashes(&new);
        let changed_files: BTreeSet<PathBuf> = {
            let before = self.env_files.lock().unwrap_or_else(|p| p.into_inner());
            hashes
                .iter()
                .filter(|(file, hash)| before.get(*file).is_some_and(|old| old != *hash))
                .map(|(file, _)| file.clone())
                .collect()
        };
        let plan = plan::plan(&old, &new, &changed_files);
        if !plan.needs_restart.is_empty() {
            return Err(ReloadError::NeedsRestart {
                path,
                keys: plan.needs_restart,
            });
        }
        *self.env_files.lock().unwrap_or_else(|p| p.into_inner()) = hashes;
        if plan.is_empty() {
            return Ok(Outcome::default());
        }
        let new = Arc::new(new);
        // Routes first: a removed service's routes are gone before its instances stop, and
        // an added one routes (and wakes on request) at once.
        if let Some(proxy) = self.proxy.get() {
            proxy.set_config(new.clone());
        }
        let done = self.supervisor.reconcile(new, &plan).await;
        if let Some(proxy) = self.proxy.get() {
            // The instance set changed too (removed services forgotten).
            proxy.set_config(self.supervisor.live_config().get());
        }
        Ok(Outcome {
            changes: done.changes,
            failures: done.failures,
        })
    }
}

/// A hash of each `env_file`'s contents (`None`: unreadable now); a change between loads
/// replaces the instances of its service.
fn env_file_hashes(config: &Config) -> BTreeMap<PathBuf, Option<u64>> {
    config
        .service
        .values()
        .filter_map(|service| service.env_file.clone())
        .map(|file| {
            let hash = std::fs::read(&file).ok().map(|bytes| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut hasher);
                hasher.finish()
            });
            (file, hash)
        })
        .collect()
}
