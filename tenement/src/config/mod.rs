//! Configuration: the `tenement.toml` model, where it is found, and its validation.
//!
//! Reading a file goes: TOML syntax (`source`), unknown keys against the model's own field
//! names (`schema`), value types through serde (`typecheck`), then meaning (`validate`).
//! Each stage reports everything it finds, so one run lists every mistake with its
//! `file:line:column`.

mod egress;
mod errors;
mod live;
mod model;
mod names;
mod schema;
mod secrets;
mod service;
mod settings;
mod source;
mod template;
mod tree;
mod typecheck;
mod validate;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use errors::{ConfigError, ConfigErrors};
pub use live::LiveConfig;
pub use model::*;
pub use names::{check_hostname, check_label, InstanceName};
pub use secrets::readable_secrets;
pub use service::Placeholders;
pub use settings::API_SOCKET_FILE;
pub use template::PLACEHOLDERS;
pub use validate::MIN_PORTS;

impl Config {
    /// Reads and checks a configuration file. Relative paths in it (`data_dir`, `workdir`,
    /// TLS files) are taken relative to the file's directory. A bad file gives
    /// [`ConfigErrors`] (inside the anyhow error), listing every mistake.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let file =
            std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        config.resolve_paths(file.parent().unwrap_or(Path::new("/")));
        Ok(config)
    }

    /// Parses and checks configuration text; `origin` names it in errors. Paths stay as
    /// written.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let source = source::Source::parse(text, origin).map_err(|err| ConfigErrors(vec![err]))?;
        let mut errors = Vec::new();

        let mut table = source.root().clone();
        // Keys whose values are already reported: validation must not report the defaults
        // standing in for them (`comand = ...` must not also give "command is empty").
        let mut reported = Vec::new();
        for problem in schema::key_problems(&schema::Shape::config(), &table) {
            let path: Vec<&str> = problem.path.iter().map(String::as_str).collect();
            let (key, parent) = path.split_last().expect("a key path");
            let section = source::section(parent);
            let message = match problem.kind {
                schema::Problem::Unknown { suggestion } => {
                    let hint = suggestion
                        .map(|known| format!("; did you mean `{known}`?"))
                        .unwrap_or_default();
                    if let Some(known) = suggestion {
                        let mut meant = problem.path.clone();
                        *meant.last_mut().expect("a key path") = known.to_string();
                        reported.push(meant);
                    }
                    format!("unknown key `{key}` in {section}{hint}")
                }
                schema::Problem::NotATable { named } => format!(
                    "`{key}` in {section}: must be a table, written [{}{}]",
                    path.join("."),
                    if named { ".NAME" } else { "" }
                ),
                schema::Problem::AliasOf(field) => format!(
                    "`{key}` in {section}: is another name for `{field}`, which is set too; keep one"
                ),
            };
            errors.push(source.error(source.key_span(&path), &path, message));
            tree::remove(&mut table, &problem.path);
            reported.push(problem.path);
        }

        let (config, rejected) = typecheck::deserialize(table, &source, &mut errors);
        reported.extend(rejected);
        if let Some(config) = &config {
            validate::validate(config, &source, &reported, &mut errors);
        }
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => {
                errors.sort_by_key(|err| (err.line, err.column));
                Err(ConfigErrors(errors))
            }
        }
    }

    /// The configuration as TOML, every default written out and `api` resolved: what
    /// `tenement config show` prints. It parses back to the same configuration.
    pub fn to_resolved_toml(&self) -> Result<String, toml::ser::Error> {
        let mut resolved = self.clone();
        resolved.settings.api = Some(self.settings.api_endpoint());
        toml::to_string(&resolved)
    }

    /// Anchors relative paths at `base`, the directory of the configuration file.
    fn resolve_paths(&mut self, base: &Path) {
        let anchor = |path: &mut PathBuf| {
            if path.is_relative() {
                // components() drops the `.` of `workdir = "."`.
                *path = base.join(&*path).components().collect();
            }
        };
        anchor(&mut self.settings.data_dir);
        let tls = &mut self.settings.tls;
        for path in [&mut tls.acme_root, &mut tls.cert, &mut tls.key]
            .into_iter()
            .flatten()
        {
            anchor(path);
        }
        if let Some(update) = &mut tls.dns_update {
            anchor(&mut update.key_secret_file);
        }
        for service in self.service.values_mut() {
            if let Some(workdir) = &mut service.workdir {
                // `{data_dir}` becomes an absolute path when the instance starts.
                if !workdir.starts_with("{data_dir}") {
                    anchor(workdir);
                }
            }
            if let Some(env_file) = &mut service.env_file {
                anchor(env_file);
            }
        }
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

#[cfg(test)]
mod tests;
