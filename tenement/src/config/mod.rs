//! Configuration: the `tenement.toml` model, where it is found, and its validation.

mod model;
mod names;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use model::*;
pub use names::{check_label, InstanceName};

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|err| anyhow::anyhow!("{origin}: {err}"))
    }
}

/// Where the configuration comes from: `--config`, `TENEMENT_CONFIG`, `./tenement.toml`,
/// `/etc/tenement/tenement.toml`, in that order.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("TENEMENT_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    for candidate in ["tenement.toml", "/etc/tenement/tenement.toml"] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return Ok(path);
        }
    }
    anyhow::bail!(
        "no configuration found: pass --config FILE, set TENEMENT_CONFIG, \
         or create ./tenement.toml or /etc/tenement/tenement.toml"
    )
}
