//! Instances and tokens: list, show, spawn, start, stop, restart, weight, events; issue, list and
//! revoke tokens. Every input is checked before anything changes.

use hyper::{body::Incoming, Response, StatusCode};

use super::{
    auth::{Caller, Scope},
    body::{self, Body},
    certificates,
    error::{ApiError, ApiResult},
    query::Query,
    types::{InstanceView, SpawnRequest, TokenCreated, TokenRequest, TokenView, WeightRequest},
    view, Context,
};
use crate::{
    config::InstanceName,
    supervisor::{InstanceInfo, StartError},
};

/// `GET /health`: always 200 while the daemon serves (a load balancer must not take the
/// node out for a certificate that still works); `degraded` with its reasons when a served
/// certificate is within a week of expiry.
pub fn health(context: &Context) -> Response<Body> {
    let reasons = context
        .tls
        .get()
        .map(|manager| {
            certificates::expiry_reasons(&manager.certificates(), std::time::SystemTime::now())
        })
        .unwrap_or_default();
    let status = if reasons.is_empty() { "ok" } else { "degraded" };
    body::json(
        StatusCode::OK,
        &serde_json::json!({ "status": status, "reasons": reasons }),
    )
}

/// An instance name from the URL; malformed is 400 (the URL is wrong).
pub fn path_instance(text: &str) -> ApiResult<InstanceName> {
    InstanceName::parse(text).map_err(ApiError::bad_request)
}

/// An instance name from a JSON body; malformed is 422 (the JSON is fine, its value is not).
pub fn body_instance(text: &str) -> ApiResult<InstanceName> {
    InstanceName::parse(text).map_err(ApiError::unprocessable)
}

/// The service must be in the configuration.
pub fn known_service(context: &Context, service: &str) -> ApiResult<()> {
    let config = context.api.config.get();
    if config.service.contains_key(service) {
        return Ok(());
    }
    let known: Vec<&str> = config.service.keys().map(String::as_str).collect();
    Err(ApiError::not_found(format!(
        "no service {service:?} in the configuration; {}",
        if known.is_empty() {
            "it defines none".to_string()
        } else {
            format!("services: {}", known.join(", "))
        }
    )))
}

/// An instance the caller may read and the supervisor knows. Scope is checked first, so a
/// tenant learns nothing about instances that are not theirs.
pub fn lookup(context: &Context, caller: &Caller, name: &InstanceName) -> ApiResult<InstanceInfo> {
    caller.require_read(name)?;
    known_service(context, &name.service)?;
    context.api.supervisor.info(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no instance {name}: start it with `tenement spawn {name}`"
        ))
    })
}

pub fn instance_view(context: &Context, info: &InstanceInfo) -> InstanceView {
    view::instance(info, context.api.supervisor.stats(&info.name))
}

pub fn list(context: &Context, caller: &Caller, query: &Query) -> ApiResult<Response<Body>> {
    query.allow(&["service"])?;
    let service = query.text("service");
    if let Some(service) = service {
        caller.require_read_service(service)?;
        known_service(context, service)?;
    }
    let instances = context.api.supervisor.instances();
    let views: Vec<InstanceView> = instances
        .iter()
        .filter(|info| caller.may_read(&info.name))
        .filter(|info| service.is_none_or(|service| info.name.service == service))
        .map(|info| instance_view(context, info))
        .collect();
    Ok(body::json(StatusCode::OK, &views))
}

pub fn get(context: &Context, caller: &Caller, name: &InstanceName) -> ApiResult<Response<Body>> {
    let info = lookup(context, caller, name)?;
    Ok(body::json(StatusCode::OK, &instance_view(context, &info)))
}

pub async fn spawn(
    context: &Context,
    caller: &Caller,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    caller.require_admin("spawning an instance")?;
    let request: SpawnRequest = body::read_json(body, r#"{"instance": "api:alice"}"#).await?;
    let name = body_instance(&request.instance)?;
    let info = spawn_instance(context, caller, &name).await?;
    Ok(body::json(StatusCode::OK, &instance_view(context, &info)))
}

/// Starts `name` (the API's spawn and start, the dashboard's start) and waits until it is
/// ready. Ends an operator's stop.
pub async fn spawn_instance(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
) -> ApiResult<InstanceInfo> {
    caller.require_admin("spawning an instance")?;
    known_service(context, &name.service)?;
    context
        .api
        .supervisor
        .spawn(name)
        .await
        .map_err(|err| start_error(name, err))
}

/// `start`: like `spawn`, with the name in the path. Ends an operator's stop.
pub async fn start(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
) -> ApiResult<Response<Body>> {
    let info = spawn_instance(context, caller, name).await?;
    Ok(body::json(StatusCode::OK, &instance_view(context, &info)))
}

pub async fn stop(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
) -> ApiResult<Response<Body>> {
    let info = stop_instance(context, caller, name).await?;
    Ok(body::json(StatusCode::OK, &instance_view(context, &info)))
}

/// Stops `name` (it stays stopped until spawned again) and returns it as it is now.
pub async fn stop_instance(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
) -> ApiResult<InstanceInfo> {
    caller.require_admin("stopping an instance")?;
    lookup(context, caller, name)?;
    context
        .api
        .supervisor
        .stop(name)
        .await
        .map_err(|err| ApiError::internal(format!("stopping {name}: {err:#}")))?;
    lookup(context, caller, name)
}

pub async fn restart(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
) -> ApiResult<Response<Body>> {
    let info = restart_instance(context, caller, name).await?;
    Ok(body::json(StatusCode::OK, &instance_view(context, &info)))
}

pub async fn restart_instance(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
) -> ApiResult<InstanceInfo> {
    caller.require_admin("restarting an instance")?;
    lookup(context, caller, name)?;
    context
        .api
        .supervisor
        .restart(name)
        .await
        .map_err(|err| start_error(name, err))
}

pub async fn weight(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    caller.require_admin("setting a weight")?;
    let request: WeightRequest = body::read_json(body, r#"{"weight": 50}"#).await?;
    let info = set_weight(context, caller, name, request.weight)?;
    Ok(body::json(StatusCode::OK, &instance_view(context, &info)))
}

/// Sets the routing weight of `name` (0-100) and returns the instance as it is now.
pub fn set_weight(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
    weight: i64,
) -> ApiResult<InstanceInfo> {
    caller.require_admin("setting a weight")?;
    let weight = check_weight(weight)?;
    lookup(context, caller, name)?;
    context
        .api
        .supervisor
        .set_weight(name, weight)
        .map_err(|err| ApiError::internal(format!("setting the weight of {name}: {err:#}")))?;
    lookup(context, caller, name)
}

pub fn check_weight(weight: i64) -> ApiResult<u8> {
    u8::try_from(weight)
        .ok()
        .filter(|weight| *weight <= 100)
        .ok_or_else(|| {
            ApiError::unprocessable(format!(
                "weight {weight} is out of range: a weight is 0-100 (0 takes no traffic)"
            ))
        })
}

pub fn events(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
    query: &Query,
) -> ApiResult<Response<Body>> {
    query.allow(&["limit"])?;
    let limit = query.number("limit")?.unwrap_or(100).min(10_000) as usize;
    caller.require_read(name)?;
    known_service(context, &name.service)?;
    // Events outlive the instance's process: a stopped or forgotten instance still has them.
    let events = context.api.store.events(name, limit)?;
    Ok(body::json(StatusCode::OK, &events))
}

pub fn tokens(context: &Context, caller: &Caller) -> ApiResult<Response<Body>> {
    caller.require_admin("listing tokens")?;
    let tokens: Vec<TokenView> = context
        .api
        .store
        .tokens()?
        .into_iter()
        .map(|record| TokenView {
            id: record.id,
            scope: record.scope,
            description: record.description,
            created_ms: record.created_ms,
        })
        .collect();
    Ok(body::json(StatusCode::OK, &tokens))
}

pub async fn token_create(
    context: &Context,
    caller: &Caller,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    caller.require_admin("issuing tokens")?;
    // An empty body asks for an admin token.
    let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 64 * 1024))
        .await
        .map_err(|err| ApiError::bad_request(format!("reading the request body: {err}")))?
        .to_bytes();
    let request: TokenRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        body::parse_json(
            &bytes,
            r#"{} for an admin token, {"tenant": "api:alice"} for a tenant's, with an optional "description""#,
        )?
    };
    let scope = match request.tenant {
        None => Scope::Admin,
        Some(tenant) => {
            let name = body_instance(&tenant)?;
            known_service(context, &name.service)?;
            Scope::Tenant(name)
        }
    };
    let description = request.description.unwrap_or_default();
    if description.len() > 200 || description.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "description must be at most 200 bytes of text without control characters",
        ));
    }
    let (record, secret) = match context.fleet.get() {
        // In a fleet the token is the fleet's: issued through etcd, valid on every node.
        Some(fleet) => fleet
            .issue_token(&scope.to_string(), &description)
            .await
            .map_err(|err| ApiError::unavailable(format!("{err:#}")))?,
        None => context
            .api
            .store
            .issue_token(&scope.to_string(), &description)?,
    };
    tracing::info!("issued token {} ({})", record.id, record.scope);
    Ok(body::json(
        StatusCode::CREATED,
        &TokenCreated {
            id: record.id,
            scope: record.scope,
            description: record.description,
            token: secret,
        },
    ))
}

pub async fn token_revoke(
    context: &Context,
    caller: &Caller,
    id: &str,
) -> ApiResult<Response<Body>> {
    caller.require_admin("revoking tokens")?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "token id {id:?} is not a number; `tenement token-list` shows the ids"
        ))
    })?;
    let revoked = match context.fleet.get() {
        // Revoked on every node: deleted from etcd first.
        Some(fleet) => fleet
            .revoke_token(id)
            .await
            .map_err(|err| ApiError::unavailable(format!("{err:#}")))?,
        None => context.api.store.revoke_token(id)?,
    };
    if !revoked {
        return Err(ApiError::not_found(format!(
            "no token {id}; `tenement token-list` shows the live ones"
        )));
    }
    tracing::info!("revoked token {id}");
    Ok(body::json(
        StatusCode::OK,
        &serde_json::json!({ "revoked": id }),
    ))
}

/// Why a start did not happen, with the status that fits: an unknown service is the caller's
/// mistake (404), anything else is the instance's failure (503).
pub fn start_error(name: &InstanceName, err: StartError) -> ApiError {
    match err {
        StartError::UnknownService(service) => {
            ApiError::not_found(format!("no service {service:?} in the configuration"))
        }
        other => ApiError::unavailable(format!("{name} did not start: {other}")),
    }
}
