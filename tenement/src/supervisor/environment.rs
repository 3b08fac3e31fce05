//! A tenant's command line and environment. Tenants get a clean environment, as systemd
//! services do: a default PATH, their own variables, and only those of tenement's own
//! variables their service lists in `env_inherit` (tenement's environment may hold secrets).

use std::path::Path;

use anyhow::Result;

use crate::{
    config::{InstanceName, Placeholders, Service},
    endpoint::Endpoint,
};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Program and arguments, as configured, placeholders filled (see `Service::argv_for`).
pub fn argv(service: &Service, name: &InstanceName, values: &Placeholders) -> Result<Vec<String>> {
    service
        .argv_for(values)
        .map_err(|err| anyhow::anyhow!("the service of {name}: {err}"))
}

/// The environment, in order of precedence (later wins): PATH, inherited variables, PORT
/// (or SOCKET_PATH), DATA_DIR, TENEMENT_INSTANCE, then the service's `env` with its
/// placeholders filled.
pub fn variables(
    service: &Service,
    name: &InstanceName,
    data_dir: &Path,
    endpoint: &Endpoint,
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
    match endpoint {
        Endpoint::Port(port) => set("PORT", port.to_string()),
        Endpoint::Unix { path, .. } => set("SOCKET_PATH", path.display().to_string()),
        // Instances listen on their own port or socket, never on another node.
        Endpoint::Peer(_) => {}
    }
    // `{port}` is refused at config check with listen = "unix".
    let port = endpoint.port().unwrap_or(0);
    set("DATA_DIR", data_dir.display().to_string());
    set("TENEMENT_INSTANCE", name.to_string());
    for (key, value) in service.render_env(&Placeholders::new(name, data_dir, port)) {
        set(&key, value);
    }
    env
}

/// Sets each of `variables` in `env`, replacing a variable of the same name.
pub fn overlay(env: &mut Vec<(String, String)>, variables: Vec<(String, String)>) {
    for (key, value) in variables {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
}

/// The value of `key` in `env`.
pub fn lookup<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_environment_with_opt_in_inheritance() {
        let name = InstanceName::parse("api:alice").unwrap();
        let mut service = Service {
            command: "app".into(),
            env_inherit: vec!["LANG".into(), "MISSING".into()],
            ..Service::default()
        };
        service.env.insert("DB".into(), "{data_dir}/db".into());
        service.env.insert("PORT".into(), "1{port}".into());
        let env = variables(
            &service,
            &name,
            Path::new("/d/api/alice"),
            &Endpoint::Port(31000),
            |key| (key == "LANG" || key == "SECRET").then(|| format!("host-{key}")),
        );
        assert_eq!(lookup(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(lookup(&env, "LANG"), Some("host-LANG"));
        assert_eq!(lookup(&env, "SECRET"), None);
        assert_eq!(lookup(&env, "MISSING"), None);
        assert_eq!(lookup(&env, "DB"), Some("/d/api/alice/db"));
        assert_eq!(lookup(&env, "PORT"), Some("131000"), "service env wins");
        assert_eq!(lookup(&env, "TENEMENT_INSTANCE"), Some("api:alice"));
        assert_eq!(lookup(&env, "DATA_DIR"), Some("/d/api/alice"));
        assert_eq!(lookup(&env, "SOCKET_PATH"), None);

        let socket = Endpoint::Unix {
            path: Path::new("/d/api/alice/app.sock").into(),
            owner: 61000,
        };
        let env = variables(&service, &name, Path::new("/d/api/alice"), &socket, |_| {
            None
        });
        assert_eq!(lookup(&env, "SOCKET_PATH"), Some("/d/api/alice/app.sock"));
        assert_eq!(
            lookup(&env, "PORT"),
            Some("10"),
            "no port: only the service's own PORT"
        );
    }
}
