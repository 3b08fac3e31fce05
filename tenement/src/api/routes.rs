//! Which handler answers which method and path. Every request but `/health` is
//! authenticated first, so an anonymous caller learns nothing about what exists.

use std::sync::Arc;

use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};

use super::{
    auth::{Caller, Peer},
    body::{self, Body},
    deploy,
    error::{ApiError, ApiResult},
    handlers, logs,
    query::{decode, Query},
    stats, Context,
};

pub async fn handle(
    context: Arc<Context>,
    peer: Peer,
    request: Request<Incoming>,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
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
    let caller = Caller::identify(
        peer,
        request.headers().get(header::AUTHORIZATION),
        &context.api.store,
    )?;
    let query = Query::parse(request.uri().query())?;
    let method = request.method().clone();
    let is = |allowed: &'static str| {
        if method.as_str() == allowed {
            Ok(())
        } else {
            Err(method_not_allowed(allowed))
        }
    };
    match segments.as_slice() {
        ["metrics"] => {
            is("GET")?;
            query.allow(&[])?;
            stats::metrics(context, &caller)
        }
        ["v1", "status"] => {
            is("GET")?;
            query.allow(&[])?;
            stats::status(context, &caller)
        }
        ["v1", "stats"] => {
            is("GET")?;
            stats::all(context, &caller, &query)
        }
        ["v1", "instances"] => match method {
            Method::GET => handlers::list(context, &caller, &query),
            Method::POST => {
                query.allow(&[])?;
                handlers::spawn(context, &caller, request.into_body()).await
            }
            _ => Err(method_not_allowed("GET, POST")),
        },
        ["v1", "instances", name] => {
            let name = handlers::path_instance(name)?;
            is("GET")?;
            query.allow(&[])?;
            handlers::get(context, &caller, &name)
        }
        ["v1", "instances", name, action] => {
            let name = &handlers::path_instance(name)?;
            match *action {
                "start" => {
                    is("POST")?;
                    query.allow(&[])?;
                    handlers::start(context, &caller, name).await
                }
                "stop" => {
                    is("POST")?;
                    query.allow(&[])?;
                    handlers::stop(context, &caller, name).await
                }
                "restart" => {
                    is("POST")?;
                    query.allow(&[])?;
                    handlers::restart(context, &caller, name).await
                }
                "weight" => {
                    is("PUT")?;
                    query.allow(&[])?;
                    handlers::weight(context, &caller, name, request.into_body()).await
                }
                "logs" => {
                    is("GET")?;
                    logs::logs(context, &caller, name, &query)
                }
                "events" => {
                    is("GET")?;
                    handlers::events(context, &caller, name, &query)
                }
                "stats" => {
                    is("GET")?;
                    query.allow(&[])?;
                    stats::one(context, &caller, name)
                }
                _ => Err(unknown_path(&segments)),
            }
        }
        ["v1", "services", service, "logs"] => {
            is("GET")?;
            logs::service_logs(context, &caller, service, &query)
        }
        ["v1", "services", service, "deploy"] => {
            is("POST")?;
            query.allow(&[])?;
            deploy::deploy(context, &caller, service, request.into_body()).await
        }
        ["v1", "services", service, "route"] => {
            is("POST")?;
            query.allow(&[])?;
            deploy::route(context, &caller, service, request.into_body()).await
        }
        ["v1", "tokens"] => match method {
            Method::GET => {
                query.allow(&[])?;
                handlers::tokens(context, &caller)
            }
            Method::POST => {
                query.allow(&[])?;
                handlers::token_create(context, &caller, request.into_body()).await
            }
            _ => Err(method_not_allowed("GET, POST")),
        },
        ["v1", "tokens", id] => {
            is("DELETE")?;
            query.allow(&[])?;
            handlers::token_revoke(context, &caller, id)
        }
        _ => Err(unknown_path(&segments)),
    }
}

/// Path segments, percent-decoded: `/v1/instances/api%3Aalice` names `api:alice`.
fn segments(path: &str) -> ApiResult<Vec<String>> {
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
