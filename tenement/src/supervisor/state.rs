//! What the rest of tenement sees of an instance.

use std::{
    fmt,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{config::InstanceName, monitor::NetworkPolicy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Stopped by an operator (`tenement stop`): stays stopped, also across restarts of
    /// tenement, until `start`, `spawn` or `restart`; requests get a 503 meanwhile.
    Stopped,
    /// No process, and the next request starts one: put to sleep after `idle_timeout`
    /// without traffic, exited with status 0, or not started yet.
    Sleeping,
    /// Started (or waiting for its next restart) and not ready yet.
    Starting,
    Running,
    /// Idle for `freeze_after`: its processes are frozen in their cgroup (memory kept, no
    /// CPU time); the next request thaws it and is served at once.
    Frozen,
    /// Running, but the last one or two health checks failed.
    Degraded,
    /// Three health checks failed in a row; it is being restarted.
    Unhealthy,
    /// Gave up: too many restarts, or it could not be started at all. Stays so until
    /// `spawn` or `restart`.
    Failed,
    Stopping,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Stopped => "stopped",
            InstanceState::Sleeping => "sleeping",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Frozen => "frozen",
            InstanceState::Degraded => "degraded",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Failed => "failed",
            InstanceState::Stopping => "stopping",
        }
    }

    /// Ready to take requests.
    pub fn serves(self) -> bool {
        matches!(self, InstanceState::Running | InstanceState::Degraded)
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub name: InstanceName,
    pub state: InstanceState,
    /// The process tenement started (for `namespace`, the init outside the namespace; for
    /// `sandbox`, runsc).
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// The unix socket it listens on (`listen = "unix"`), instead of a port.
    pub socket: Option<PathBuf>,
    /// Where it listens: `port` or `socket`, as the proxy connects.
    #[serde(skip)]
    pub endpoint: Option<crate::endpoint::Endpoint>,
    /// Routing weight, 0-100.
    pub weight: u8,
    /// Restarts since tenement started it (crashes, failed health, failed starts).
    pub restarts: u32,
    #[serde(with = "optional_unix_ms")]
    pub started_at: Option<SystemTime>,
    pub last_error: Option<String>,
    /// cgroup v2 id (what the eBPF programs key by), when there is a v2 hierarchy.
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<PathBuf>,
    /// The directory with the memory controller (`cgroup_path` on pure cgroup v2, the v1
    /// memory group on hybrid hosts), when the instance has one.
    pub memory_cgroup: Option<PathBuf>,
    /// The network boundary of the current process; `None` while no process runs.
    pub network: Option<InstanceNetwork>,
    /// Bytes its data directory used at the last measurement (every 30 s); `None` before
    /// the first one.
    pub disk_used_bytes: Option<u64>,
    /// Its service's `storage_quota_mb`.
    pub storage_quota_mb: Option<u64>,
}

/// The network boundary of one running instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceNetwork {
    /// The kernel enforces `policy` (false: tenement runs without network isolation).
    pub enforced: bool,
    pub policy: NetworkPolicy,
    /// The latest operation the kernel refused, e.g. `connect 127.0.0.1:30002`.
    pub last_denied: Option<String>,
}

/// Why an instance is not ready. The reasons name the instance; callers that want the name
/// in a `Timeout` message add it themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    /// No such service in the configuration (the service name).
    UnknownService(String),
    /// An operator stopped it: requests do not wake it until it is started again.
    Held(InstanceName),
    /// The instance is in `state`: failed, or stopped while it was starting.
    Failed {
        state: InstanceState,
        reason: String,
    },
    /// Still not ready after `after` (its `startup_timeout`) and the waiter's slack, with
    /// the last attempt's failure if there was one.
    Timeout {
        after: Duration,
        last_error: Option<String>,
    },
    /// An attempt ended before the process was ready (the reason names its exit status or
    /// the `startup_timeout`, its last output and what happens next); tenement may be
    /// restarting it.
    NotReady(String),
    /// It could not be started at all (missing program, permissions, runsc not installed).
    Spawn(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::UnknownService(service) => {
                write!(f, "no service {service:?} in the configuration")
            }
            StartError::Held(name) => write!(
                f,
                "an operator stopped it; `tenement start {name}` starts it again"
            ),
            StartError::Failed { state, reason } => write!(f, "{reason} (state: {state})"),
            StartError::Timeout { after, last_error } => {
                write!(
                    f,
                    "still not ready after startup_timeout ({}s)",
                    after.as_secs()
                )?;
                match last_error {
                    Some(last) => write!(f, "; last attempt: {last}"),
                    None => Ok(()),
                }
            }
            StartError::NotReady(reason) => f.write_str(reason),
            StartError::Spawn(reason) => write!(f, "{reason}"),
        }
    }
}

impl std::error::Error for StartError {}

mod optional_unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::Serializer;

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(since) => serializer.serialize_u64(since.as_millis() as u64),
            None => serializer.serialize_none(),
        }
    }
}
