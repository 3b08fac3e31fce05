//! The seam between the proxy and whoever runs the instances (the supervisor). The proxy
//! only routes and forwards; starting, readiness and idle accounting belong to the other side.

use std::{fmt, time::Duration};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::config::InstanceName;
pub use crate::endpoint::Endpoint;

pub trait Backends: Send + Sync + 'static {
    /// Every known instance with its routing-relevant facts. Called when `changes()` fires.
    fn instances(&self) -> Vec<BackendInstance>;
    /// Bumps whenever instances, states or weights change; the proxy rebuilds its table then.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Starts the instance if it is not running (one shared start for all concurrent callers),
    /// waits until ready, returns where it listens. Fails fast for unknown/failed instances.
    fn ensure_running(
        &self,
        name: &InstanceName,
    ) -> BoxFuture<'static, Result<Endpoint, WakeError>>;
    /// Marks proxied activity: the guard counts an open connection/request until dropped.
    /// Called before the proxy connects to the instance: a frozen instance is thawed here.
    fn activity(&self, name: &InstanceName) -> ActivityGuard;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInstance {
    pub name: InstanceName,
    /// 0-100: its share of the service-level traffic. 0 keeps it reachable by its own name only.
    pub weight: u8,
    pub state: BackendState,
    /// Where it listens while it serves (`Running`, `Degraded`, `Unhealthy`): a port, or a
    /// unix socket. With it the proxy forwards without asking `ensure_running` on every
    /// request; a refused connection to a stale one falls back to `ensure_running` once.
    pub endpoint: Option<Endpoint>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    Running,
    Starting,
    Sleeping,
    /// Stopped by an operator: not woken by requests, and out of the service's rotation.
    Stopped,
    /// Out of restarts: the proxy answers 503 naming this state instead of waking it.
    Failed,
    Degraded,
    Unhealthy,
    /// Idle and frozen in place: counting the request (`Backends::activity`) thaws it, so
    /// the proxy forwards to its endpoint at once, like to a running one.
    Frozen,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Running => "running",
            BackendState::Starting => "starting",
            BackendState::Sleeping => "sleeping",
            BackendState::Stopped => "stopped",
            BackendState::Failed => "failed",
            BackendState::Degraded => "degraded",
            BackendState::Unhealthy => "unhealthy",
            BackendState::Frozen => "frozen",
        }
    }

    /// States in which the process is up and its port can take requests.
    pub fn is_serving(self) -> bool {
        matches!(
            self,
            BackendState::Running
                | BackendState::Degraded
                | BackendState::Unhealthy
                | BackendState::Frozen
        )
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `ensure_running` could not hand out an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WakeError {
    /// No such instance (answered 404).
    Unknown,
    /// The instance cannot run now, e.g. it is `failed` (answered 503 naming the state).
    Failed { state: String, reason: String },
    /// Not ready within its `startup_timeout` (answered 503 with `Retry-After`).
    Timeout { after: Duration },
    /// Its start failed (it exited, or was not ready in time), with the reason (answered
    /// 503).
    NotStarted(String),
}

impl fmt::Display for WakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WakeError::Unknown => f.write_str("no such instance"),
            WakeError::Failed { state, reason } if reason.is_empty() => write!(f, "is {state}"),
            WakeError::Failed { state, reason } => write!(f, "is {state}: {reason}"),
            WakeError::NotStarted(reason) => write!(f, "did not start: {reason}"),
            WakeError::Timeout { after } => {
                write!(
                    f,
                    "was not ready within {}",
                    humantime::format_duration(*after)
                )
            }
        }
    }
}

impl std::error::Error for WakeError {}

/// What a backend keeps inside an [`ActivityGuard`]: it counts one proxied request until
/// dropped.
pub trait ProxiedActivity: Send + Sync {
    /// The request switched protocols (WebSocket and others) and is now a tunnel: its
    /// traffic, not its being open, says whether it is active.
    fn upgraded(&mut self);
}

/// Proof of proxied activity for the idle reaper: whatever the backend puts inside counts
/// one open request or tunnel until this guard is dropped.
pub struct ActivityGuard(Option<Box<dyn ProxiedActivity>>);

impl ActivityGuard {
    pub fn new(inner: impl ProxiedActivity + 'static) -> ActivityGuard {
        ActivityGuard(Some(Box::new(inner)))
    }

    /// See [`ProxiedActivity::upgraded`].
    pub fn upgraded(&mut self) {
        if let Some(inner) = &mut self.0 {
            inner.upgraded();
        }
    }

    /// A guard that counts nothing (for backends without idle accounting, and tests).
    pub fn none() -> ActivityGuard {
        ActivityGuard(None)
    }
}

impl fmt::Debug for ActivityGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ActivityGuard(active)"
        } else {
            "ActivityGuard(none)"
        })
    }
}
