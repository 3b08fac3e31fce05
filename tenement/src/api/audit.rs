//! Writing changes to the audit log (the store keeps it) and `GET /v1/audit`. The API's
//! routes and the dashboard's actions both record through [`record`], so an action looks the
//! same in the log whichever way it was made.

use hyper::{header::HeaderMap, Response, StatusCode};

use super::{
    auth::{Caller, Peer},
    body::{self, Body},
    error::ApiResult,
    query::Query,
    Context,
};
use crate::store::NewAuditEntry;

/// Header `tenement dashboard` adds when it forwards a browser's request to the unix socket:
/// the browser's own address. Believed only from trusted unix peers (root or the daemon's
/// user), who could do anything anyway.
pub const FORWARDED_FOR: &str = "x-tenement-forwarded-for";

/// Where a request came from, as the audit log shows it.
pub fn origin(peer: Peer, headers: &HeaderMap) -> String {
    match peer {
        Peer::Tcp { address } => address.to_string(),
        Peer::Unix { uid } => {
            let forwarded = headers
                .get(FORWARDED_FOR)
                .and_then(|value| value.to_str().ok())
                .filter(|_| super::auth::trusted_uid(uid));
            match forwarded {
                Some(address) => format!("{address} (via tenement dashboard)"),
                None => format!("unix uid {uid}"),
            }
        }
    }
}

/// The caller as the audit log names it: `token 3 (ci deploys)`, `operator uid 0`.
pub fn who(context: &Context, caller: &Caller) -> (Option<i64>, String) {
    match caller {
        Caller::Operator { uid } => (None, format!("operator uid {uid}")),
        Caller::Admin { token } | Caller::Tenant { token, .. } => {
            let description = context
                .api
                .store
                .token(*token)
                .ok()
                .flatten()
                .map(|record| record.description)
                .unwrap_or_default();
            let who = if description.is_empty() {
                format!("token {token}")
            } else {
                format!("token {token} ({description})")
            };
            (Some(*token), who)
        }
    }
}

/// One change and its outcome. A failure to write the log is logged, not returned: the
/// change has already happened (or been refused) by then.
pub fn record(
    context: &Context,
    caller: &Caller,
    origin: &str,
    action: &str,
    target: &str,
    status: StatusCode,
    detail: &str,
) {
    let (token_id, who) = who(context, caller);
    let entry = NewAuditEntry {
        token_id,
        who: &who,
        action,
        target,
        address: origin,
        status: status.as_u16(),
        detail,
    };
    if let Err(err) = context.api.store.audit(&entry) {
        tracing::warn!("audit log: {err:#}");
    }
}

/// `GET /v1/audit?limit=N`: the newest entries first (default 100, at most 10000).
pub fn list(context: &Context, caller: &Caller, query: &Query) -> ApiResult<Response<Body>> {
    caller.require_admin("reading the audit log")?;
    query.allow(&["limit"])?;
    let limit = query.number("limit")?.unwrap_or(100).min(10_000) as usize;
    let entries = context.api.store.audit_log(limit)?;
    Ok(body::json(StatusCode::OK, &entries))
}
