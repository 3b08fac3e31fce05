//! The pages (overview, instance, audit) and the forms: sign in, sign out, and the instance
//! actions, which call the API's handlers and are audited like the API's.

use std::sync::Arc;

use hyper::{body::Incoming, header::HeaderValue, Response, StatusCode};

use crate::{
    api::{
        audit, auth_limit,
        body::Body,
        error::{ApiError, ApiResult},
        handlers, logs,
        query::Query,
        view, Context,
    },
    config::InstanceName,
};

use super::{
    pages::{self, InstancePage, Summary, Viewer},
    request::{check_csrf, html, read_form, redirect, Auth, Page},
    rows::{self, Selection, SELECTION_KEYS},
    session::{self, random_secret, SESSION_COOKIE, SESSION_LIFETIME, SIGN_IN_COOKIE},
};

/// Certificates that expire within this many days are counted in the header.
const EXPIRING_WITHIN: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

pub fn summary(context: &Context, viewer: &Viewer<'_>, rows: &[rows::Row]) -> Summary {
    let host = context.dashboard.history.host();
    let kernel = view::kernel_counters(&context.monitor());
    let admin = viewer.caller.require_admin("").is_ok();
    let expiring = admin.then(|| {
        let soon = std::time::SystemTime::now() + EXPIRING_WITHIN;
        context
            .tls
            .get()
            .map(|manager| manager.certificates())
            .unwrap_or_default()
            .into_iter()
            .filter(|cert| cert.not_after.is_some_and(|not_after| not_after <= soon))
            .map(|cert| cert.names.join(" "))
            .collect()
    });
    Summary {
        host_cpu_percent: host.cpu_percent,
        memory_used: host.memory_used,
        memory_total: host.memory_total,
        running: rows.iter().filter(|row| row.view.pid.is_some()).count(),
        total: rows.len(),
        kernel_counters: kernel.active,
        kernel_reason: kernel.reason,
        expiring,
    }
}

pub fn selection(query: &Query, extra: &[&str]) -> ApiResult<Selection> {
    let mut keys: Vec<&str> = SELECTION_KEYS.to_vec();
    keys.extend_from_slice(extra);
    query.allow(&keys)?;
    Selection::parse(query).map_err(ApiError::bad_request)
}

pub fn overview(
    context: &Context,
    viewer: &Viewer<'_>,
    query: &Query,
) -> ApiResult<Response<Body>> {
    let selection = selection(query, &[])?;
    let all = rows::all(context, viewer.caller);
    let summary = summary(context, viewer, &all);
    let mut services: Vec<String> = all.iter().map(|row| row.view.service.clone()).collect();
    services.dedup();
    let (rows, matched) = rows::select(all, &selection);
    Ok(html(
        StatusCode::OK,
        pages::overview(viewer, &summary, &services, &selection, &rows, matched),
    ))
}

fn instance_name(text: &str) -> ApiResult<InstanceName> {
    handlers::path_instance(text)
}

pub fn instance(
    context: &Context,
    viewer: &Viewer<'_>,
    name: &str,
    query: &Query,
) -> ApiResult<Response<Body>> {
    query.allow(&["grep"])?;
    let name = instance_name(name)?;
    let info = handlers::lookup(context, viewer.caller, &name)?;
    let row = rows::one(context, &info);
    let track = context.dashboard.history.track(&name);
    let events = context.api.store.events(&name, 20)?;
    let grep = query.text("grep").filter(|grep| !grep.is_empty());
    let mut log_query = vec!["n=100".to_string()];
    if let Some(grep) = grep {
        log_query.push(format!("grep={}", crate::api::query::encode(grep)));
    }
    let feed = logs::open(
        context,
        viewer.caller,
        &name,
        &Query::parse(Some(&log_query.join("&")))?,
    )?;
    let page = InstancePage {
        row: &row,
        track: track.as_ref(),
        events: &events,
        grep,
        log_lines: &feed.history,
    };
    Ok(html(StatusCode::OK, pages::instance(viewer, &page)))
}

pub fn audit(context: &Context, viewer: &Viewer<'_>, query: &Query) -> ApiResult<Response<Body>> {
    viewer.caller.require_admin("reading the audit log")?;
    query.allow(&["limit"])?;
    let limit = query.number("limit")?.unwrap_or(200).min(10_000) as usize;
    let entries = context.api.store.audit_log(limit)?;
    Ok(html(StatusCode::OK, pages::audit(viewer, &entries)))
}

/// The sign-in form, or with `?code=` a one-time link from `tenement dashboard`.
pub fn sign_in_page(context: &Context, page: &Page, query: &Query) -> ApiResult<Response<Body>> {
    query.allow(&["code"])?;
    if let Some(code) = query.text("code") {
        auth_limit::check(context, page.peer)?;
        return match context.dashboard.sessions.redeem_link(code) {
            Some(caller) => Ok(signed_in(context, page, caller, "sign-in link")),
            None => {
                auth_limit::refused(context, page.peer);
                Ok(sign_in_form(
                    page,
                    StatusCode::UNAUTHORIZED,
                    Some("This sign-in link was already used or has expired: run `tenement dashboard` again, or sign in with a token."),
                ))
            }
        };
    }
    Ok(sign_in_form(page, StatusCode::OK, None))
}

fn sign_in_form(page: &Page, status: StatusCode, error: Option<&str>) -> Response<Body> {
    let csrf = random_secret();
    let mut response = html(status, pages::sign_in(&csrf, error));
    let cookie = session::set_cookie(SIGN_IN_COOKIE, &csrf, session::LINK_LIFETIME, page.secure());
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response
            .headers_mut()
            .append(hyper::header::SET_COOKIE, value);
    }
    response
}

pub async fn sign_in(
    context: &Arc<Context>,
    page: &Page,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    let form = read_form(body).await?;
    form.allow(&["csrf", "token"])?;
    let expected = page.cookie(SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty() || !session::same_secret(form.text("csrf").unwrap_or(""), expected) {
        return Err(ApiError::forbidden(
            "missing or wrong CSRF token on the sign-in form: open /dashboard/sign-in and try again",
        ));
    }
    let token = form.text("token").unwrap_or("").trim();
    let header = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    match auth_limit::identify(context, page.peer, Some(&header)) {
        Ok(caller) => Ok(signed_in(context, page, caller, "token")),
        Err(err) if err.status == StatusCode::UNAUTHORIZED => Ok(sign_in_form(
            page,
            StatusCode::UNAUTHORIZED,
            Some("That token was refused: it was never issued here, or it was revoked."),
        )),
        Err(err) => Err(err),
    }
}

fn signed_in(
    context: &Context,
    page: &Page,
    caller: crate::api::auth::Caller,
    how: &str,
) -> Response<Body> {
    audit::record(
        context,
        &caller,
        &page.origin(),
        "sign-in",
        "dashboard",
        StatusCode::OK,
        how,
    );
    let (id, _) = context.dashboard.sessions.create(caller);
    let secure = page.secure();
    redirect(
        "/dashboard",
        &[
            session::set_cookie(SESSION_COOKIE, &id, SESSION_LIFETIME, secure),
            session::set_cookie(SIGN_IN_COOKIE, "", std::time::Duration::ZERO, secure),
        ],
    )
}

pub async fn sign_out(
    context: &Context,
    page: &Page,
    auth: &Auth,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    let form = read_form(body).await?;
    check_csrf(auth, &form)?;
    if let Auth::Session { id, .. } = auth {
        context.dashboard.sessions.end(id);
    }
    Ok(redirect(
        "/dashboard/sign-in",
        &[session::set_cookie(
            SESSION_COOKIE,
            "",
            std::time::Duration::ZERO,
            page.secure(),
        )],
    ))
}

/// start / stop / restart / weight on one instance, through the API's handlers; audited
/// whether it succeeds or not.
pub async fn act(
    context: &Arc<Context>,
    page: &Page,
    auth: &Auth,
    name: &str,
    action: &str,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    let form = read_form(body).await?;
    check_csrf(auth, &form)?;
    let caller = match auth {
        Auth::Session { session, .. } => session.caller.clone(),
        Auth::Bearer(caller) => caller.clone(),
        Auth::None => return Err(ApiError::unauthorized("not signed in")),
    };
    let name = instance_name(name)?;
    let (audited, detail) = match action {
        "start" => ("start", String::new()),
        "stop" => ("stop", String::new()),
        "restart" => ("restart", String::new()),
        "weight" => ("weight", form.text("weight").unwrap_or("").to_string()),
        other => {
            return Err(ApiError::not_found(format!(
                "no action {other:?}: start, stop, restart or weight"
            )))
        }
    };
    let result = match action {
        "start" => handlers::spawn_instance(context, &caller, &name)
            .await
            .map(drop),
        "stop" => handlers::stop_instance(context, &caller, &name)
            .await
            .map(drop),
        "restart" => handlers::restart_instance(context, &caller, &name)
            .await
            .map(drop),
        _ => parse_weight(&form)
            .and_then(|weight| handlers::set_weight(context, &caller, &name, weight))
            .map(drop),
    };
    let (status, detail) = match &result {
        Ok(()) => (StatusCode::OK, detail),
        Err(err) => (err.status, err.message.clone()),
    };
    audit::record(
        context,
        &caller,
        &page.origin(),
        audited,
        &name.to_string(),
        status,
        &detail,
    );
    result?;
    // Only back into the dashboard: never an open redirect.
    let back = form
        .text("return")
        .filter(|back| {
            (*back == "/dashboard"
                || back.starts_with("/dashboard/")
                || back.starts_with("/dashboard?"))
                && !back.starts_with("/dashboard//")
        })
        .unwrap_or("/dashboard");
    Ok(redirect(back, &[]))
}

fn parse_weight(form: &Query) -> ApiResult<i64> {
    let text = form.text("weight").unwrap_or("").trim();
    text.parse().map_err(|_| {
        ApiError::unprocessable(format!("weight {text:?} is not a number from 0 to 100"))
    })
}
