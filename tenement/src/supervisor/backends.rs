//! The supervisor as the proxy's backend: the proxy routes and forwards, the supervisor
//! starts, wakes and counts activity.

use futures_util::{future::BoxFuture, FutureExt};
use tokio::sync::watch;

use super::{InstanceState, StartError, Supervisor};
use crate::{
    config::InstanceName,
    proxy::{ActivityGuard, BackendInstance, BackendState, Backends, Endpoint, WakeError},
};

impl Backends for Supervisor {
    fn instances(&self) -> Vec<BackendInstance> {
        Supervisor::instances(self)
            .into_iter()
            .map(|info| BackendInstance {
                state: backend_state(info.state),
                endpoint: info.state.serves().then_some(info.endpoint).flatten(),
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
        async move {
            supervisor
                .ensure_running(&name)
                .await
                .map_err(|err| match err {
                    StartError::UnknownService(_) => WakeError::Unknown,
                    StartError::Failed { state, reason } => WakeError::Failed {
                        state: state.to_string(),
                        reason,
                    },
                    StartError::Timeout { after } => WakeError::Timeout { after },
                    StartError::Spawn(reason) => WakeError::Failed {
                        state: InstanceState::Failed.to_string(),
                        reason,
                    },
                })
        }
        .boxed()
    }

    fn activity(&self, name: &InstanceName) -> ActivityGuard {
        ActivityGuard::new(Supervisor::activity(self, name))
    }
}

fn backend_state(state: InstanceState) -> BackendState {
    match state {
        InstanceState::Stopped | InstanceState::Stopping => BackendState::Stopped,
        InstanceState::Sleeping => BackendState::Sleeping,
        InstanceState::Starting => BackendState::Starting,
        InstanceState::Running => BackendState::Running,
        InstanceState::Degraded => BackendState::Degraded,
        InstanceState::Unhealthy => BackendState::Unhealthy,
        InstanceState::Failed => BackendState::Failed,
    }
}
