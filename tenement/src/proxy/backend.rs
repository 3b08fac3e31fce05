//! The seam between the proxy and whoever runs the instances (the supervisor). The proxy
//! only routes and forwards; starting, readiness and idle accounting belong to the other side.

use std::{fmt, sync::Arc, time::Duration};

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
    /// Like `ensure_running`, after a connection to `stale` was refused or ended unanswered:
    /// waits until the instance no longer claims to serve there (it crashed, restarts or is
    /// being stopped), at most `within` (`None`: its `startup_timeout`), then starts it if
    /// needed; `StillServing` if it stayed. The default asks `ensure_running` at once.
    fn ensure_running_instead_of(
        &self,
        name: &InstanceName,
        stale: &Endpoint,
        within: Option<Duration>,
    ) -> BoxFuture<'static, Result<Endpoint, WakeError>> {
        let _ = (stale, within);
        self.ensure_running(name)
    }
    /// Where proxied activity on `name` is counted. Asked once per routing-table build, so
    /// that a request counts itself without looking the instance up; `None` when the backend
    /// keeps no count.
    fn activity_meter(&self, name: &InstanceName) -> Option<Arc<dyn ActivityMeter>>;
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
    /// It still serves on the endpoint that just failed the request: that failure is the
    /// answer (a 502).
    StillServing,
}

impl fmt::Display for WakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WakeError::Unknown => f.write_str("no such instance"),
            WakeError::Failed { state, reason } if reason.is_empty() => write!(f, "is {state}"),
            WakeError::Failed { state, reason } => write!(f, "is {state}: {reason}"),
            WakeError::NotStarted(reason) => write!(f, "did not start: {reason}"),
            WakeError::StillServing => f.write_str("still serves where it failed"),
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

/// A backend's count of open requests and tunnels to one instance, the idle reaper's input.
pub trait ActivityMeter: Send + Sync {
    /// A request opens. Called before the proxy connects: a frozen instance is thawed here.
    fn open(&self);
    /// An open request switched protocols (WebSocket and others) and is now a tunnel: its
    /// traffic, not its being open, says whether it is active.
    fn upgraded(&self);
    /// A request (`tunnel`: one that was `upgraded`) ended.
    fn close(&self, tunnel: bool);
}

/// One open request or tunnel, counted by its instance's meter until dropped.
pub struct ActivityGuard {
    meter: Option<Arc<dyn ActivityMeter>>,
    tunnel: bool,
}

impl ActivityGuard {
    /// Counts a request on `meter` (nothing without one).
    pub fn open(meter: Option<&Arc<dyn ActivityMeter>>) -> ActivityGuard {
        if let Some(meter) = meter {
            meter.open();
        }
        ActivityGuard {
            meter: meter.cloned(),
            tunnel: false,
        }
    }

    /// A guard that counts nothing.
    pub fn none() -> ActivityGuard {
        ActivityGuard::open(None)
    }

    /// See [`ActivityMeter::upgraded`].
    pub fn upgraded(&mut self) {
        if let (Some(meter), false) = (&self.meter, self.tunnel) {
            self.tunnel = true;
            meter.upgraded();
        }
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if let Some(meter) = &self.meter {
            meter.close(self.tunnel);
        }
    }
}

impl fmt::Debug for ActivityGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.meter.is_some() {
            "ActivityGuard(active)"
        } else {
            "ActivityGuard(none)"
        })
    }
}
