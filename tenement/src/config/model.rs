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
    /// `[fleet]`: several nodes share one set of tenants through etcd. Absent: one server,
    /// no etcd anywhere.
    pub fleet: Option<Fleet>,
}

/// `[fleet]`: this node's part in a fleet coordinated through etcd (see docs/fleet.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// etcd client endpoints, `http://host:port`; tried in turn until one answers.
    #[serde(deserialize_with = "one_or_many")]
    pub etcd: Vec<String>,
    /// This node's name, unique in the fleet. Default: the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Where the other nodes reach this node's proxy (`host:port` of a `settings.listen`).
    pub advertise: SocketAddr,
    /// Seconds this node's lease lives without a renewal: how long a dead node's tenants
    /// stay unreachable, and how long a cut-off node serves before it fences itself.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: u64,
    /// Most instances this node runs (room for placement); 0: no limit.
    #[serde(default)]
    pub max_instances: u32,
}

fn default_lease_ttl() -> u64 {
    5
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
    /// Seconds the instances of a tenement that died without stopping them (a crash, a
    /// `kill -9`, an upgrade in progress) wait for a new tenement to adopt them before its
    /// guard stops them.
    pub adopt_timeout: u64,
    /// Memory pressure (see `supervisor/pressure.rs`): PSI `some avg10` (percent) above
    /// which frozen instances are stopped, least recently used first; 0 = not looked at.
    pub memory_pressure_psi: f64,
    /// MemAvailable (MiB) under which frozen instances are stopped; 0 = not looked at.
    pub memory_pressure_available_mb: u64,
    /// A JSON line per proxied request in `{data_dir}/.tenement/access.log`.
    pub access_log: bool,
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
            adopt_timeout: 60,
            memory_pressure_psi: 20.0,
            memory_pressure_available_mb: 0,
            access_log: true,
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
    /// Wildcard certificates (`*.{service}.{domain}` and `{service}.{domain}`) over DNS-01:
    /// `true` for every service, or a list of service names.
    pub wildcard: Wildcard,
    /// Address of the built-in DNS responder that publishes DNS-01 TXT records.
    pub dns_listen: Option<SocketAddr>,
    /// RFC 2136 dynamic updates (with TSIG) to the operator's DNS server for DNS-01.
    pub dns_update: Option<DnsUpdate>,
    /// Seconds to wait for a published TXT record to be visible before the CA is told.
    pub dns_propagation_timeout: u64,
    /// Budget of on-demand orders, e.g. `"10/h"` (also `/m`, `/d`); unset: no budget.
    pub on_demand_rate: Option<String>,
    /// `http://` URL asked `GET {ask}?domain=NAME` before an on-demand order; 200 allows.
    pub ask: Option<String>,
}

impl Tls {
    /// `on_demand_rate` as (orders, window); `Err` says what is wrong with the text.
    pub fn on_demand_budget(&self) -> Result<Option<(u32, std::time::Duration)>, String> {
        let Some(text) = &self.on_demand_rate else {
            return Ok(None);
        };
        let bad = || {
            format!("{text:?} is not a rate like \"10/h\" (orders per `m`inute, `h`our or `d`ay)")
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let window = match unit.trim() {
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        Ok(Some((count, std::time::Duration::from_secs(window))))
    }
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
            wildcard: Wildcard::default(),
            dns_listen: None,
            dns_update: None,
            dns_propagation_timeout: 120,
            on_demand_rate: None,
            ask: None,
        }
    }
}

/// `wildcard = true | false | ["service", ...]`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Wildcard {
    All(bool),
    Services(Vec<String>),
}

impl Default for Wildcard {
    fn default() -> Self {
        Wildcard::All(false)
    }
}

impl Wildcard {
    /// Whether `service` gets a wildcard certificate.
    pub fn covers(&self, service: &str) -> bool {
        match self {
            Wildcard::All(all) => *all,
            Wildcard::Services(services) => services.iter().any(|s| s == service),
        }
    }

    pub fn is_off(&self) -> bool {
        matches!(self, Wildcard::All(false))
            || matches!(self, Wildcard::Services(s) if s.is_empty())
    }
}

/// A visitor rather than `#[serde(untagged)]`, so that a wrong value gets a message saying
/// what is expected instead of "did not match any variant".
impl<'de> Deserialize<'de> for Wildcard {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Wildcard;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a list of service names")
            }

            fn visit_bool<E: serde::de::Error>(self, all: bool) -> Result<Wildcard, E> {
                Ok(Wildcard::All(all))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Wildcard, A::Error> {
                let mut services = Vec::new();
                while let Some(service) = seq.next_element::<String>()? {
                    services.push(service);
                }
                Ok(Wildcard::Services(services))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// `[settings.tls] dns_update = { server, zone, key_name, key_secret_file, algorithm }`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsUpdate {
    /// The primary server that accepts updates, as `ip:port`.
    pub server: SocketAddr,
    /// The zone the `_acme-challenge` records are added to, e.g. `example.com`.
    pub zone: String,
    /// Name of the TSIG key as the server knows it.
    pub key_name: String,
    /// File with the key's base64 secret (alone, or the `key { ... };` block of tsig-keygen).
    pub key_secret_file: PathBuf,
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: String,
    /// Servers that must show the record before the CA is told; default: `server`.
    #[serde(default)]
    pub check_servers: Vec<SocketAddr>,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".to_string()
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Challenge {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "dns-01")]
    Dns01,
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
    /// Seconds without traffic before the instance is stopped; 0 = never. Counted from the
    /// last activity, frozen or not.
    pub idle_timeout: u64,
    /// Seconds without traffic before the instance's cgroup is frozen (kept in memory,
    /// thawed by the next request); 0 = never.
    pub freeze_after: u64,
    /// Seconds to become ready (listening, healthy) before the start counts as failed.
    pub startup_timeout: u64,
    /// Seconds between SIGTERM and SIGKILL.
    pub stop_timeout: u64,
    /// Seconds the instance has to send a response's headers once the proxy sent it the
    /// request; 0 = no limit.
    pub request_timeout: u64,
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
    /// A file of `KEY=VALUE` lines read by tenement (root) at each start of an instance:
    /// secrets kept out of the shared configuration. Its values win over `env`.
    pub env_file: Option<PathBuf>,
    /// How the instance is reached: a port of 127.0.0.1 (`PORT`), or a unix socket in its
    /// own data directory (`SOCKET_PATH`).
    pub listen: Listen,
    /// tenement listens on the instance's port itself, keeps the socket while the instance
    /// sleeps, and passes it to the app the systemd way (fd 3, `LISTEN_FDS`, `LISTEN_PID`,
    /// `LISTEN_FDNAMES`): no connection is refused during a wake.
    pub socket_activation: bool,
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
            freeze_after: 0,
            startup_timeout: 10,
            stop_timeout: 10,
            request_timeout: 60,
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
            env_file: None,
            listen: Listen::Port,
            socket_activation: false,
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
#[serde(rename_all = "lowercase")]
pub enum Listen {
    /// A port of `port_range` on 127.0.0.1, given as `PORT`.
    Port,
    /// A socket at `{data_dir}/app.sock`, given as `SOCKET_PATH`: no port at all.
    Unix,
}

/// The socket's file name in the instance's data directory with `listen = "unix"`.
pub const SOCKET_FILE: &str = "app.sock";

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
