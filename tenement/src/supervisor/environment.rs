//! A tenant's command line and environment. Tenants get a clean environment, as systemd
//! services do: a default PATH, their own variables, and only those of tenement's own
//! variables their service lists in `env_inherit` (tenement's environment may hold secrets).

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{InstanceName, Service};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `{...}` placeholders in `command`, `args` and `env` stand for.
pub struct Placeholders<'a> {
    pub name: &'a InstanceName,
    pub data_dir: &'a Path,
    pub port: u16,
}

impl Placeholders<'_> {
    /// Replaces `{service}`, `{name}` (the service), `{id}`, `{instance}` (`service:id`),
    /// `{data_dir}` and `{port}`; anything else in braces is left as written.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[open..]);
                return out;
            };
            match self.value(&after[..close]) {
                Some(value) => out.push_str(&value),
                None => out.push_str(&rest[open..open + close + 2]),
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }

    fn value(&self, key: &str) -> Option<String> {
        Some(match key {
            "service" | "name" => self.name.service.clone(),
            "id" => self.name.id.clone(),
            "instance" => self.name.to_string(),
            "data_dir" => self.data_dir.display().to_string(),
            "port" => self.port.to_string(),
            _ => return None,
        })
    }
}

/// Program and arguments: `command` shell-split, or `command` alone followed by `args`.
pub fn argv(service: &Service, placeholders: &Placeholders) -> Result<Vec<String>> {
    let words = match &service.args {
        Some(args) => std::iter::once(service.command.clone())
            .chain(args.iter().cloned())
            .collect(),
        None => shell_words::split(&service.command)
            .with_context(|| format!("splitting command {:?}", service.command))?,
    };
    let words: Vec<String> = words.iter().map(|w| placeholders.apply(w)).collect();
    if words.first().is_none_or(|program| program.is_empty()) {
        anyhow::bail!("the service of {} has an empty command", placeholders.name);
    }
    Ok(words)
}

/// The environment, in order of precedence (later wins): PATH, inherited variables, PORT,
/// DATA_DIR, TENEMENT_INSTANCE, then the service's `env`.
pub fn variables(
    service: &Service,
    placeholders: &Placeholders,
    inherited: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: String| {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value));
    };
    set("PATH", DEFAULT_PATH.to_string());
    for key in &service.env_inherit {
        if let Some(value) = inherited(key) {
            set(key, value);
        }
    }
    set("PORT", placeholders.port.to_string());
    set("DATA_DIR", placeholders.data_dir.display().to_string());
    set("TENEMENT_INSTANCE", placeholders.name.to_string());
    for (key, value) in &service.env {
        set(key, placeholders.apply(value));
    }
    env
}

/// The value of `key` in `env`.
pub fn lookup<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> InstanceName {
        InstanceName::parse("api:alice").unwrap()
    }

    #[test]
    fn placeholders_are_replaced_and_unknown_ones_kept() {
        let name = name();
        let p = Placeholders {
            name: &name,
            data_dir: Path::new("/d/api/alice"),
            port: 31000,
        };
        assert_eq!(
            p.apply("{instance} {id}@{port} {data_dir}/db {other} {"),
            "api:alice alice@31000 /d/api/alice/db {other} {"
        );
    }

    #[test]
    fn clean_environment_with_opt_in_inheritance() {
        let name = name();
        let p = Placeholders {
            name: &name,
            data_dir: Path::new("/d/api/alice"),
            port: 31000,
        };
        let mut service = Service {
            command: "app".into(),
            env_inherit: vec!["LANG".into(), "MISSING".into()],
            ..Service::default()
        };
        service.env.insert("DB".into(), "{data_dir}/db".into());
        service.env.insert("PORT".into(), "1{port}".into());
        let env = variables(&service, &p, |key| {
            (key == "LANG" || key == "SECRET").then(|| format!("host-{key}"))
        });
        assert_eq!(lookup(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(lookup(&env, "LANG"), Some("host-LANG"));
        assert_eq!(lookup(&env, "SECRET"), None);
        assert_eq!(lookup(&env, "MISSING"), None);
        assert_eq!(lookup(&env, "DB"), Some("/d/api/alice/db"));
        assert_eq!(lookup(&env, "PORT"), Some("131000"), "service env wins");
        assert_eq!(lookup(&env, "TENEMENT_INSTANCE"), Some("api:alice"));
    }

    #[test]
    fn command_is_split_unless_args_are_given() {
        let name = name();
        let p = Placeholders {
            name: &name,
            data_dir: Path::new("/d"),
            port: 1,
        };
        let split = Service {
            command: "sh -c 'sleep 1000 & exec ./app {port}'".into(),
            ..Service::default()
        };
        assert_eq!(
            argv(&split, &p).unwrap(),
            ["sh", "-c", "sleep 1000 & exec ./app 1"]
        );
        let explicit = Service {
            command: "/opt/my app".into(),
            args: Some(vec!["--id={id}".into()]),
            ..Service::default()
        };
        assert_eq!(argv(&explicit, &p).unwrap(), ["/opt/my app", "--id=alice"]);
    }
}
