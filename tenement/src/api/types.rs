//! The JSON the management API speaks, shared with the CLI so both ends stay in step.
//! Requests refuse unknown fields: a typo (`"wieght"`) is an error, not a silent no-op.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::monitor::{InstanceStats, KernelStats, Rates};

/// One instance as `GET /v1/instances` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    /// `service:id`
    pub name: String,
    pub service: String,
    pub id: String,
    /// `stopped`, `sleeping`, `starting`, `running`, `degraded`, `unhealthy`, `failed`, `stopping`
    pub state: String,
    /// `healthy`, `degraded` or `unhealthy` while the instance runs; `null` otherwise.
    pub health: Option<String>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// The unix socket it listens on instead of a port (`listen = "unix"`), while it runs.
    #[serde(default)]
    pub socket: Option<String>,
    /// Share of its service's traffic, 0-100.
    pub weight: u8,
    pub restarts: u32,
    /// When the current process started, unix milliseconds.
    pub started_at_ms: Option<u64>,
    pub uptime_secs: Option<u64>,
    pub last_error: Option<String>,
    /// The sampler's latest stats of the current process (see [`InstanceStats`]); `null`
    /// while no process runs.
    pub stats: Option<InstanceStats>,
    /// The network boundary of the current process; `null` while no process runs.
    #[serde(default)]
    pub network: Option<NetworkView>,
    /// Bytes its data directory uses, measured every 30 s (also while it is stopped);
    /// `null` until the first measurement.
    #[serde(default)]
    pub disk_used_bytes: Option<u64>,
    /// Its service's `storage_quota_mb`; `null` for no quota.
    #[serde(default)]
    pub storage_quota_mb: Option<u64>,
}

/// An instance's network policy, as `ps --json` and the API show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkView {
    /// The kernel enforces this policy; `false` when tenement runs without network isolation.
    pub enforced: bool,
    /// The only port the instance may bind (on loopback).
    pub bind_port: u16,
    /// `"any"`, `"none"`, or the allowed `"cidr:port"` destinations (the system resolvers
    /// on port 53 included).
    pub egress: EgressView,
    /// The latest refused operation, e.g. `connect 127.0.0.1:30002`.
    pub last_denied: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EgressView {
    Mode(String),
    List(Vec<String>),
}

/// `GET /v1/stats`: one line of the stats stream, or the snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub time_ms: u64,
    pub kernel_counters: KernelCountersView,
    pub instances: Vec<InstanceStatsView>,
}

/// One instance in `GET /v1/stats`, and `GET /v1/instances/{name}/stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatsView {
    /// `service:id`
    pub name: String,
    pub service: String,
    pub state: String,
    pub restarts: u32,
    /// Why it is degraded, unhealthy or failed (a failing health check, `kernel: 140 TCP
    /// retransmits/s`, an exit status); `null` when all is well.
    pub last_error: Option<String>,
    /// Totals since the process started, per-second rates over the last second, memory and
    /// idle time; `null` while no process runs.
    pub stats: Option<InstanceStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelCountersView {
    pub active: bool,
    /// Why they are off, when they are.
    pub reason: Option<String>,
}

/// `GET /v1/status`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub pid: u32,
    pub started_at_ms: u64,
    pub uptime_secs: u64,
    /// The management listeners, as the CLI's `--server` accepts them.
    pub api: Vec<String>,
    pub data_dir: String,
    pub kernel_counters: KernelCountersView,
    /// Whether the kernel keeps tenants inside their network boundary.
    #[serde(default)]
    pub network_isolation: Option<KernelCountersView>,
    pub services: Vec<String>,
    /// Number of instances in each state.
    pub instances: BTreeMap<String, usize>,
    /// TLS certificates and names waiting for one (empty with TLS off).
    #[serde(default)]
    pub certificates: Vec<crate::tls::CertificateInfo>,
    /// The binary this daemon runs: after `tenement upgrade` (or SIGUSR2), the new one's.
    #[serde(default)]
    pub binary: Option<BinaryView>,
}

/// `POST /v1/upgrade`: the binary to run; default the path the daemon was started from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

/// `POST /v1/upgrade`: the new daemon took over the held sockets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeResponse {
    pub old_pid: u32,
    pub new_pid: u32,
    pub binary: String,
    /// How many held sockets it took over.
    pub sockets: usize,
}

/// How the API asks `serve` for an upgrade: the binary (or `None`), and where the answer
/// (or the reason of the rollback) goes.
pub type UpgradeAsk = (
    Option<std::path::PathBuf>,
    tokio::sync::oneshot::Sender<Result<UpgradeResponse, String>>,
);

/// Which file a daemon runs (the running file itself, even if replaced on disk since).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryView {
    pub path: String,
    pub size: u64,
    /// Modification time of the file, ms since the epoch.
    pub modified_ms: u64,
    /// The file's inode: a file replaced on disk (a new file renamed over the old path, as
    /// packages do) has another one, even with the same size and time.
    pub inode: u64,
}

impl BinaryView {
    /// The running binary, read through `/proc/self/exe`.
    pub fn current() -> Option<BinaryView> {
        let link = std::fs::read_link("/proc/self/exe").ok()?;
        let meta = std::fs::metadata("/proc/self/exe").ok()?;
        let modified_ms = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        Some(BinaryView {
            path: link.display().to_string(),
            size: meta.len(),
            modified_ms,
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

/// `POST /v1/instances`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// `service:id`
    pub instance: String,
}

/// `PUT /v1/instances/{name}/weight`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    /// Wide on purpose: `101` or `-1` gets a message about the range, not about integer types.
    pub weight: i64,
}

/// `POST /v1/services/{service}/deploy`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The new instance's id, e.g. `v2`: the deploy starts `service:v2`.
    pub version: String,
    /// Weight given once it is healthy; default 0 (started, but no traffic until `route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// How long it may take to become healthy; default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployResponse {
    pub instance: InstanceView,
    pub weights: Vec<WeightView>,
}

/// `POST /v1/reload`: what the reload changed, one sentence each, and what failed while
/// applying it (the new configuration is in force either way).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadResponse {
    pub changes: Vec<String>,
    pub failures: Vec<String>,
}

/// `POST /v1/services/{service}/route`: swaps the weights of two instances in one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// An id (`v1`) or a full name (`api:v1`) of the service.
    pub from: String,
    pub to: String,
}

/// The weights of a service after a change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteResponse {
    pub weights: Vec<WeightView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightView {
    pub instance: String,
    pub weight: u8,
}

/// `POST /v1/tokens`: an admin token, or with `tenant` one scoped to that instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What the token is for (`ci deploys`), shown in `token-list` and the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: i64,
    /// `admin` or `tenant:service:id`
    pub scope: String,
    #[serde(default)]
    pub description: String,
    pub created_ms: i64,
}

/// The answer to `POST /v1/tokens`, the only time the secret is ever shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: i64,
    pub scope: String,
    #[serde(default)]
    pub description: String,
    pub token: String,
}

/// `POST /v1/dashboard/links`: a one-time sign-in link, to append to the dashboard's address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DashboardLink {
    /// `/dashboard/sign-in?code=...`: opens a session for whoever asked for the link.
    pub path: String,
    pub expires_in_secs: u64,
}

/// Every error body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
