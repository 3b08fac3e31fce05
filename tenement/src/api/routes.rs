//! Which handler answers which method and path. Every request but `/health` is
//! authenticated first, so an anonymous caller learns nothing about what exists.

use std::sync::Arc;

use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};

use super::{
    audit,
    auth::{Caller, Peer},
    auth_limit,
    body::{self, Body},
    deploy,
    error::{ApiError, ApiResult},
    handlers, logs,
    query::{decode, Query},
    reload, stats, Context,
};

pub async fn handle(
    context: Arc<Context>,
    peer: Peer,
    request: Request<Incoming>,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // The dashboard has its own sign-in (a cookie) but the same callers and handlers.
    if crate::dashboard::owns(&path) {
        let response = crate::dashboard::handle(context, peer, request).await;
        tracing::debug!("dashboard {method} {path} -> {}", response.status());
        return response;
    }
    let response = match route(&context, peer, request).await {
        Ok(response) => response,
        Err(err) => body::error(&err),
    };
    tracing::debug!("api {method} {path} -> {}", response.status());
    response
}

async fn route(
    context: &Arc<Context>,
    peer: Peer,
    request: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let segments = segments(request.uri().path())?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if segments == ["health"] {
        return match *request.method() {
            Method::GET => Ok(handlers::health(context)),
            _ => Err(method_not_allowed("GET")),
        };
    }
    let caller = auth_limit::identify(context, peer, request.headers().get(header::AUTHORIZATION))?;
    let query = Query::parse(request.uri().query())?;
    let method = request.method().clone();
    let Some((action, target)) = audited(&method, &segments) else {
        return dispatch(context, &caller, &query, &segments, request).await;
    };
    let origin = audit::origin(peer, request.headers());
    let result = dispatch(context, &caller, &query, &segments, request).await;
    let (status, detail) = match &result {
        Ok(response) => (response.status(), String::new()),
        Err(err) => (err.status, err.message.clone()),
    };
    audit::record(context, &caller, &origin, action, &target, status, &detail);
    result
}

/// The changes the audit log records: the action's name and what it acts on.
fn audited(method: &Method, segments: &[&str]) -> Option<(&'static str, String)> {
    if method == Method::GET {
        return None;
    }
    let action = match segments {
        ["v1", "instances"] => ("spawn", String::new()),
        ["v1", "instances", name, "start"] => ("start", name.to_string()),
        ["v1", "instances", name, "stop"] => ("stop", name.to_string()),
        ["v1", "instances", name, "restart"] => ("restart", name.to_string()),
        ["v1", "instances", name, "weight"] => ("weight", name.to_string()),
        ["v1", "services", service, "deploy"] => ("deploy", service.to_string()),
        ["v1", "services", service, "route"] => ("route", service.to_string()),
        ["v1", "reload"] => ("reload", String::new()),
        ["v1", "tokens"] => ("token-gen", String::new()),
        ["v1", "upgrade"] => ("upgrade", String::new()),
        ["v1", "dashboard", "links"] => ("dashboard-link", String::new()),
        ["v1", "tokens", id] => ("token-revoke", id.to_string()),
        _ => return None,
    };
    Some(action)
}

async fn dispatch(
    context: &Arc<Context>,
    caller: &Caller,
    query: &Query,
    segments: &[&str],
    request: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let method = request.method().clone();
    let is = |allowed: &'static str| {
        if method.as_str() == allowed {
            Ok(())
        } else {
            Err(method_not_allowed(allowed))
        }
    };
    match segments {
        ["metrics"] => {
            is("GET")?;
            query.allow(&[])?;
            stats::metrics(context, caller)
        }
        ["v1", "reload"] => {
            is("POST")?;
            query.allow(&[])?;
            reload::reload(context, caller).await
        }
        ["v1", "status"] => {
            is("GET")?;
            query.allow(&[])?;
            stats::status(context, caller)
        }
        ["v1", "upgrade"] => {
            is("POST")?;
            query.allow(&[])?;
            upgrade(context, caller, request.into_body()).await
        }
        ["v1", "stats"] => {
            is("GET")?;
            stats::all(context, caller, query)
        }
        ["v1", "instances"] => match method {
            Method::GET => handlers::list(context, caller, query),
            Method::POST => {
                query.allow(&[])?;
                handlers::spawn(context, caller, request.into_body()).await
            }
            _ => Err(method_not_allowed("GET, POST")),
        },
        ["v1", "instances", name] => {
            let name = handlers::path_instance(name)?;
            is("GET")?;
            query.allow(&[])?;
            handlers::get(context, caller, &name)
        }
        ["v1", "instances", name, action] => {
            let name = &handlers::path_instance(name)?;
            match *action {
                "start" => {
                    is("POST")?;
                    query.allow(&[])?;
                    handlers::start(context, caller, name).await
                }
                "stop" => {
                    is("POST")?;
                    query.allow(&[])?;
                    handlers::stop(context, caller, name).await
                }
                "restart" => {
                    is("POST")?;
                    query.allow(&[])?;
                    handlers::restart(context, caller, name).await
                }
                "weight" => {
                    is("PUT")?;
                    query.allow(&[])?;
                    handlers::weight(context, caller, name, request.into_body()).await
                }
                "logs" => {
                    is("GET")?;
                    logs::logs(context, caller, name, query)
                }
                "events" => {
                    is("GET")?;
                    handlers::events(context, caller, name, query)
                }
                "stats" => {
                    is("GET")?;
                    query.allow(&[])?;
                    stats::one(context, caller, name)
                }
                _ => Err(unknown_path(segments)),
            }
        }
        ["v1", "services", service, "logs"] => {
            is("GET")?;
            logs::service_logs(context, caller, service, query)
        }
        ["v1", "services", service, "deploy"] => {
            is("POST")?;
            query.allow(&[])?;
            deploy::deploy(context, caller, service, request.into_body()).await
        }
        ["v1", "services", service, "route"] => {
            is("POST")?;
            query.allow(&[])?;
            deploy::route(context, caller, service, request.into_body()).await
        }
        ["v1", "dashboard", "links"] => {
            is("POST")?;
            query.allow(&[])?;
            dashboard_link(context, caller)
        }
        ["v1", "audit"] => {
            is("GET")?;
            audit::list(context, caller, query)
        }
        ["v1", "tokens"] => match method {
            Method::GET => {
                query.allow(&[])?;
                handlers::tokens(context, caller)
            }
            Method::POST => {
                query.allow(&[])?;
                handlers::token_create(context, caller, request.into_body()).await
            }
            _ => Err(method_not_allowed("GET, POST")),
        },
        ["v1", "tokens", id] => {
            is("DELETE")?;
            query.allow(&[])?;
            handlers::token_revoke(context, caller, id).await
        }
        _ => Err(unknown_path(segments)),
    }
}

/// `POST /v1/dashboard/links`: a one-time sign-in link for the caller (what `tenement
/// dashboard` prints).
fn dashboard_link(context: &Context, caller: &Caller) -> ApiResult<Response<Body>> {
    caller.require_admin("creating a dashboard sign-in link")?;
    let code = context.dashboard.create_link(caller.clone());
    Ok(body::json(
        StatusCode::CREATED,
        &super::types::DashboardLink {
            path: format!("/dashboard/sign-in?code={code}"),
            expires_in_secs: crate::dashboard::LINK_LIFETIME.as_secs(),
        },
    ))
}

/// Path segments, percent-decoded: `/v1/instances/api%3Aalice` names `api:alice`.
pub(crate) fn segments(path: &str) -> ApiResult<Vec<String>> {
    path.split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            decode(segment, false).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "path segment {segment:?} is not valid percent-encoded UTF-8"
                ))
            })
        })
        .collect()
}

fn method_not_allowed(allowed: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; use {allowed} (docs/api.md lists every endpoint)"),
    )
}

fn unknown_path(segments: &[&str]) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint /{}; docs/api.md lists every endpoint",
        segments.join("/")
    ))
}

/// `POST /v1/upgrade`: hands the daemon's sockets to a new binary (see `cli/upgrade.rs`).
/// Answers once the new one has taken them, or with the reason it was rolled back.
async fn upgrade(
    context: &Arc<Context>,
    caller: &Caller,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    caller.require_admin("upgrade")?;
    let request: super::types::UpgradeRequest =
        body::read_json(body, r#"{"binary": "/usr/local/bin/tenement"}"#).await?;
    let Some(asks) = &context.api.upgrade else {
        return Err(ApiError::unavailable("this daemon cannot upgrade itself"));
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    asks.send((request.binary.map(std::path::PathBuf::from), answer))
        .await
        .map_err(|_| ApiError::unavailable("tenement is shutting down"))?;
    match answered.await {
        Ok(Ok(done)) => Ok(body::json(StatusCode::OK, &done)),
        Ok(Err(reason)) => Err(ApiError::internal(format!(
            "upgrade failed, still serving: {reason}"
        ))),
        Err(_) => Err(ApiError::unavailable("tenement is shutting down")),
    }
}
