//! The `tenement.toml` model: every key, its type and its default. Parsing and validation
//! live beside it (see `mod.rs`); every other module only reads these types.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use super::egress::{EgressConfig, EgressRule};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub settings: Settings,
    /// `[service.NAME]`, ordered by name.
    pub service: BTreeMap<String, Service>,
    /// `[instances]`: service name -> ids started at boot.
    pub instances: BTreeMap<String, Vec<String>>,
    pub routing: Routing,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Public HTTP listeners.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Domains served: `{id}.{service}.{domain}`.
    #[serde(deserialize_with = "one_or_many")]
    pub domain: Vec<String>,
    /// Management listener: `unix:/path` or `host:port`. Default: `unix:{data_dir}/tenement.sock`.
    pub api: Option<String>,
    /// Inclusive port range for instances, as `[low, high]`.
    pub port_range: [u16; 2],
    /// Seconds between health checks of a running instance.
    pub health_check_interval: u64,
    /// More restarts than this within `restart_window` seconds: the instance is `failed`.
    pub max_restarts: u32,
    pub restart_window: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Dynamic uids/gids for tenants when running as root, as `[low, high]`.
    pub uid_range: [u32; 2],
    /// gVisor platform for `isolation = "sandbox"` (`ptrace`, `kvm`, `systrap`).
    pub sandbox_platform: String,
    /// Remount the cgroup v2 hierarchy with `favordynmods` so that moving a starting
    /// process into its cgroups does not wait for an RCU grace period (root only).
    pub cgroup_favordynmods: bool,
    pub tls: Tls,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/tenement"),
            listen: vec!["127.0.0.1:8080".parse().expect("valid address")],
            domain: vec!["localhost".to_string()],
            api: None,
            port_range: [30000, 39999],
            health_check_interval: 10,
            max_restarts: 5,
            restart_window: 300,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            uid_range: [61000, 64999],
            sandbox_platform: "ptrace".to_string(),
            cgroup_favordynmods: true,
            tls: Tls::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub enabled: bool,
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    pub acme_directory: String,
    pub acme_email: Option<String>,
    /// PEM file of an extra root to trust for the ACME server (pebble, a private CA).
    pub acme_root: Option<PathBuf>,
    pub challenges: Vec<Challenge>,
    /// Extra names to get certificates for at start.
    pub names: Vec<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: vec!["0.0.0.0:443".parse().expect("valid address")],
            acme_directory: "https://acme-v02.api.letsencrypt.org/directory".to_string(),
            acme_email: None,
            acme_root: None,
            challenges: vec![Challenge::Http01, Challenge::TlsAlpn01],
            names: Vec::new(),
            cert: None,
            key: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Challenge {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    /// Program and arguments. A string is shell-split (quotes respected); with `args`, the
    /// string is the program alone.
    pub command: String,
    pub args: Option<Vec<String>>,
    pub workdir: Option<PathBuf>,
    /// Health check path, e.g. `/health`: must answer 2xx.
    pub health: Option<String>,
    pub isolation: Isolation,
    /// Seconds without traffic before the instance is stopped; 0 = never.
    pub idle_timeout: u64,
    /// Seconds to become ready (listening, healthy) before the start counts as failed.
    pub startup_timeout: u64,
    /// Seconds between SIGTERM and SIGKILL.
    pub stop_timeout: u64,
    pub restart: RestartPolicy,
    /// Keep the data directory after the instance stops.
    pub storage_persist: bool,
    pub storage_quota_mb: Option<u64>,
    pub memory_limit_mb: Option<u64>,
    /// Relative CPU weight 1-10000 (cgroup v2 scale; default 100).
    #[serde(alias = "cpu_shares")]
    pub cpu_weight: Option<u64>,
    pub pids_max: Option<u64>,
    /// System user to run as; default: a dynamic uid per instance when tenement is root.
    pub user: Option<String>,
    /// Variables of tenement's own environment passed to the tenant.
    pub env_inherit: Vec<String>,
    /// Extra environment; values may use `{name}`, `{id}`, `{data_dir}`, `{port}`.
    pub env: BTreeMap<String, String>,
    /// Where instances may connect and send beyond their own port: `"any"`, `"none"` or a
    /// list of `"cidr:port"` entries (enforced by the kernel when eBPF is available).
    pub egress: EgressConfig,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            command: String::new(),
            args: None,
            workdir: None,
            health: None,
            isolation: Isolation::Process,
            idle_timeout: 0,
            startup_timeout: 10,
            stop_timeout: 10,
            restart: RestartPolicy::OnFailure,
            storage_persist: true,
            storage_quota_mb: None,
            memory_limit_mb: None,
            cpu_weight: None,
            pids_max: None,
            user: None,
            env_inherit: Vec::new(),
            env: BTreeMap::new(),
            egress: EgressConfig::Any,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Process,
    Namespace,
    Sandbox,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// Target of the bare domain: a service (`api`) or an instance (`api:alice`).
    pub default: Option<String>,
    /// Subdomain label -> target (service or instance).
    pub subdomain: BTreeMap<String, String>,
    /// Path prefix -> target; the longest matching prefix wins.
    pub path: BTreeMap<String, String>,
}

/// Accepts `key = "x"` as well as `key = ["x", "y"]`. Written as a visitor rather than an
/// untagged enum so a bad value gets the element type's own message ("invalid socket address
/// syntax"), not "did not match any variant".
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or an array of strings")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<T>, E> {
            use serde::de::IntoDeserializer;
            T::deserialize(text.into_deserializer())
                .map(|one| vec![one])
                .map_err(|err: E| E::custom(format!("{text:?}: {err}")))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut many = Vec::new();
            while let Some(one) = seq.next_element()? {
                many.push(one);
            }
            Ok(many)
        }
    }

    deserializer.deserialize_any(OneOrMany(std::marker::PhantomData))
}
