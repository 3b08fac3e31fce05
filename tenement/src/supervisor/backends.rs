//! The supervisor as the proxy's backend: the proxy routes and forwards, the supervisor
//! starts, wakes and counts activity.

use std::sync::Arc;

use futures_util::{future::BoxFuture, FutureExt};
use tokio::sync::watch;

use super::{InstanceState, StartError, Supervisor};
use crate::{
    config::InstanceName,
    proxy::{ActivityMeter, BackendInstance, BackendState, Backends, Endpoint, WakeError},
};

impl Backends for Supervisor {
    fn instances(&self) -> Vec<BackendInstance> {
        Supervisor::instances(self)
            .into_iter()
            .map(|info| BackendInstance {
                state: backend_state(info.state),
                // A frozen instance is thawed by the request's activity guard, which the
                // proxy takes before it connects: its endpoint is good to use.
                endpoint: (info.state.serves() || info.state == InstanceState::Frozen)
                    .then_some(info.endpoint)
                    .flatten(),
                weight: info.weight,
                name: info.name,
            })
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        Supervisor::changes(self)
    }

    fn ensure_running(
        &self,
        name: &InstanceName,
    ) -> BoxFuture<'static, Result<Endpoint, WakeError>> {
        let supervisor = self.clone();
        let name = name.clone();
        async move { supervisor.ensure_running(&name).await.map_err(wake_error) }.boxed()
    }

    fn ensure_running_instead_of(
        &self,
        name: &InstanceName,
        stale: &Endpoint,
        within: Option<std::time::Duration>,
    ) -> BoxFuture<'static, Result<Endpoint, WakeError>> {
        let supervisor = self.clone();
        let name = name.clone();
        let stale = stale.clone();
        async move {
            supervisor
                .ensure_running_instead_of(&name, &stale, within)
                .await
                .map_err(wake_error)
        }
        .boxed()
    }

    fn activity_meter(&self, name: &InstanceName) -> Option<Arc<dyn ActivityMeter>> {
        Supervisor::activity_meter(self, name)
    }
}

fn wake_error(err: StartError) -> WakeError {
    match err {
        StartError::UnknownService(_) => WakeError::Unknown,
        held @ StartError::Held(_) => WakeError::Failed {
            state: InstanceState::Stopped.to_string(),
            reason: held.to_string(),
        },
        StartError::Failed { state, reason } => WakeError::Failed {
            state: state.to_string(),
            reason,
        },
        StartError::Timeout { after, .. } => WakeError::Timeout { after },
        StartError::NotReady(reason) => WakeError::NotStarted(reason),
        StartError::Spawn(reason) => WakeError::Failed {
            state: InstanceState::Failed.to_string(),
            reason,
        },
        StartError::StillServing(_) => WakeError::StillServing,
    }
}

fn backend_state(state: InstanceState) -> BackendState {
    match state {
        // Held by an operator's stop: a request gets a 503 naming how to start it.
        InstanceState::Stopped => BackendState::Stopped,
        // On its way down (asleep or held): a request asks `ensure_running`, which knows.
        InstanceState::Sleeping | InstanceState::Stopping => BackendState::Sleeping,
        InstanceState::Starting => BackendState::Starting,
        InstanceState::Running => BackendState::Running,
        InstanceState::Frozen => BackendState::Frozen,
        InstanceState::Degraded => BackendState::Degraded,
        InstanceState::Unhealthy => BackendState::Unhealthy,
        InstanceState::Failed => BackendState::Failed,
    }
}
