//! Deploys and traffic shifts.
//!
//! `deploy` starts `service:version` with weight 0, waits until it is healthy, then gives it
//! its weight. If it never gets healthy it is stopped and no other weight was touched: the
//! running version keeps all its traffic. `route` swaps the weights of two instances of a
//! service in one store transaction, so the proxy never sees a state in between.

use std::time::Duration;

use hyper::{body::Incoming, Response, StatusCode};

use super::{
    auth::Caller,
    body::{self, Body},
    error::{ApiError, ApiResult},
    handlers::{body_instance, check_weight, instance_view, known_service},
    types::{DeployRequest, DeployResponse, RouteRequest, RouteResponse, WeightView},
    view, Context,
};
use crate::{
    config::{check_label, InstanceName},
    supervisor::{InstanceInfo, InstanceState},
};

const DEFAULT_TIMEOUT_SECS: i64 = 60;
const MAX_TIMEOUT_SECS: i64 = 3600;

pub async fn deploy(
    context: &Context,
    caller: &Caller,
    service: &str,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    caller.require_admin("deploying")?;
    check_label("service", service).map_err(ApiError::bad_request)?;
    let request: DeployRequest = body::read_json(
        body,
        r#"{"version": "v2", "weight": 0, "timeout_secs": 60}"#,
    )
    .await?;
    check_label("version", &request.version).map_err(ApiError::unprocessable)?;
    let weight = check_weight(request.weight.unwrap_or(0))?;
    let timeout_secs = request.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
        return Err(ApiError::unprocessable(format!(
            "timeout_secs {timeout_secs} is out of range: 1-{MAX_TIMEOUT_SECS}"
        )));
    }
    known_service(context, service)?;
    let name = InstanceName::new(service, &request.version).map_err(ApiError::unprocessable)?;
    let supervisor = &context.api.supervisor;
    if let Some(existing) = supervisor.info(&name) {
        if view::is_live(existing.state) {
            return Err(ApiError::conflict(format!(
                "{name} is already {}: deploy a new version, or `tenement restart {name}`",
                existing.state.as_str()
            )));
        }
    }

    // No traffic while it starts: the proxy must not send requests to a version that may
    // never get healthy.
    supervisor
        .set_weight(&name, 0)
        .map_err(|err| ApiError::internal(format!("setting the weight of {name} to 0: {err:#}")))?;
    let timeout = Duration::from_secs(timeout_secs as u64);
    match tokio::time::timeout(timeout, start_healthy(context, &name)).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Err(abandon(context, &name, reason).await),
        Err(_) => {
            let info = supervisor.info(&name);
            let state = info.as_ref().map_or("unknown", |info| info.state.as_str());
            let check = match &context.api.config.get().service[service].health {
                Some(path) => format!("its health check GET {path} did not pass"),
                None => "it did not listen on its port".to_string(),
            };
            let reason = format!(
                "it was still {state} after {timeout_secs}s: {check}{} (`tenement logs {name}` \
                 shows its output)",
                last_words(info)
            );
            return Err(abandon(context, &name, reason).await);
        }
    }
    supervisor.set_weight(&name, weight).map_err(|err| {
        ApiError::internal(format!(
            "{name} is healthy, but setting its weight failed: {err:#}"
        ))
    })?;
    let info = supervisor.info(&name).ok_or_else(|| {
        ApiError::internal(format!(
            "{name} vanished from the supervisor right after its deploy"
        ))
    })?;
    tracing::info!("deployed {name} with weight {weight}");
    Ok(body::json(
        StatusCode::OK,
        &DeployResponse {
            instance: instance_view(context, &info),
            weights: service_weights(context, service),
        },
    ))
}

/// Spawns and waits for `running` (started, listening and passing its health check).
async fn start_healthy(context: &Context, name: &InstanceName) -> Result<(), String> {
    let supervisor = &context.api.supervisor;
    let mut changes = supervisor.changes();
    supervisor
        .spawn(name)
        .await
        .map_err(|err| err.to_string())?;
    loop {
        let info = supervisor
            .info(name)
            .ok_or_else(|| "the supervisor no longer knows it".to_string())?;
        match info.state {
            InstanceState::Running => return Ok(()),
            InstanceState::Starting | InstanceState::Degraded | InstanceState::Unhealthy => {}
            other => {
                return Err(format!(
                    "it is {}{}",
                    other.as_str(),
                    last_words(Some(info))
                ))
            }
        }
        if changes.changed().await.is_err() {
            return Err("the supervisor is shutting down".to_string());
        }
    }
}

/// Stops the new version and says why the deploy failed, and that nothing else changed.
async fn abandon(context: &Context, name: &InstanceName, reason: String) -> ApiError {
    let stopped = match context.api.supervisor.stop(name).await {
        Ok(()) => "it was stopped".to_string(),
        Err(err) => format!("stopping it failed too ({err:#})"),
    };
    let weights = service_weights(context, &name.service)
        .into_iter()
        .filter(|view| view.instance != name.to_string())
        .map(|view| format!("{} {}", view.instance, view.weight))
        .collect::<Vec<_>>();
    tracing::warn!("deploy of {name} failed: {reason}");
    ApiError::unavailable(format!(
        "deploy of {name} failed: {reason}; {stopped} and traffic is unchanged ({})",
        if weights.is_empty() {
            "no other instance".to_string()
        } else {
            weights.join(", ")
        }
    ))
}

fn last_words(info: Option<InstanceInfo>) -> String {
    match info.and_then(|info| info.last_error) {
        Some(error) => format!(" (last error: {error})"),
        None => String::new(),
    }
}

pub async fn route(
    context: &Context,
    caller: &Caller,
    service: &str,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    caller.require_admin("routing traffic")?;
    check_label("service", service).map_err(ApiError::bad_request)?;
    let request: RouteRequest = body::read_json(body, r#"{"from": "v1", "to": "v2"}"#).await?;
    let from = member(service, &request.from)?;
    let to = member(service, &request.to)?;
    if from == to {
        return Err(ApiError::unprocessable(format!(
            "from and to are both {from}: name two different instances"
        )));
    }
    known_service(context, service)?;
    let supervisor = &context.api.supervisor;
    let unknown = |name: &InstanceName| {
        ApiError::not_found(format!(
            "no instance {name}: deploy it first with `tenement deploy`"
        ))
    };
    let from_info = supervisor.info(&from).ok_or_else(|| unknown(&from))?;
    let to_info = supervisor.info(&to).ok_or_else(|| unknown(&to))?;
    if !matches!(
        to_info.state,
        InstanceState::Running
            | InstanceState::Degraded
            | InstanceState::Sleeping
            | InstanceState::Frozen
    ) {
        return Err(ApiError::conflict(format!(
            "{to} is {}: only a running instance can take traffic (see `tenement logs {to}`)",
            to_info.state.as_str()
        )));
    }
    supervisor
        .set_weights(&[
            (from.clone(), to_info.weight),
            (to.clone(), from_info.weight),
        ])
        .map_err(|err| {
            ApiError::internal(format!("swapping the weights of {from} and {to}: {err:#}"))
        })?;
    tracing::info!(
        "routed {service}: {from} {} -> {}, {to} {} -> {}",
        from_info.weight,
        to_info.weight,
        to_info.weight,
        from_info.weight
    );
    Ok(body::json(
        StatusCode::OK,
        &RouteResponse {
            weights: service_weights(context, service),
        },
    ))
}

/// `v1` or `api:v1`, as an instance of `service`.
fn member(service: &str, text: &str) -> ApiResult<InstanceName> {
    let name = if text.contains(':') {
        body_instance(text)?
    } else {
        InstanceName::new(service, text).map_err(ApiError::unprocessable)?
    };
    if name.service != service {
        return Err(ApiError::unprocessable(format!(
            "{name} is not an instance of {service}: route moves traffic within one service"
        )));
    }
    Ok(name)
}

fn service_weights(context: &Context, service: &str) -> Vec<WeightView> {
    context
        .api
        .supervisor
        .instances()
        .into_iter()
        .filter(|info| info.name.service == service)
        .map(|info| WeightView {
            instance: info.name.to_string(),
            weight: info.weight,
        })
        .collect()
}
