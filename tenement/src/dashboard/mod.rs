//! The web dashboard at `/dashboard` on the management listener (never on the public one):
//! every instance at a glance, live over server-sent events, with actions for admins.
//!
//! It is a client of the API's own parts, not a second copy of them: callers are identified
//! by `api::auth` (a signed-in session only stores the [`Caller`] a token proved), rows are
//! `api::view`'s instance views, actions call `api::handlers` and are written to the same
//! audit log. Only the unix socket's peer credentials are *not* honoured here: `tenement
//! dashboard` forwards browsers to that socket as root, so every dashboard request must sign
//! in with a token or a one-time link. `docs/dashboard.md` is the user's description.

mod actions;
mod assets;
mod events;
mod format;
pub(crate) mod history;
mod host;
mod pages;
mod request;
mod rows;
mod session;
mod sparkline;

use std::sync::{Arc, Weak};

use hyper::{body::Incoming, Method, Request, Response, StatusCode};

use crate::api::{
    auth::{Caller, Peer},
    body::Body,
    error::ApiError,
    query::Query,
    Context,
};

pub use session::LINK_LIFETIME;

use request::{Auth, Page};

/// The dashboard's state inside the API's context.
#[derive(Default)]
pub struct Dashboard {
    sessions: session::Sessions,
    pub(crate) history: history::History,
}

impl Dashboard {
    /// A one-time sign-in link's code for `caller` (`POST /v1/dashboard/links`).
    pub fn create_link(&self, caller: Caller) -> String {
        self.sessions.create_link(caller)
    }
}

/// Starts the sampler that feeds the request rates and sparklines.
pub(crate) fn start(context: &Arc<Context>) {
    let weak: Weak<Context> = Arc::downgrade(context);
    tokio::spawn(history::run(weak));
}

/// Whether `path` is the dashboard's.
pub fn owns(path: &str) -> bool {
    path == "/dashboard" || path.starts_with("/dashboard/")
}

pub(crate) async fn handle(
    context: Arc<Context>,
    peer: Peer,
    request: Request<Incoming>,
) -> Response<Body> {
    let page = Page::of(&request, peer);
    match route(&context, &page, request).await {
        Ok(response) => response,
        Err(err) => request::error_page(&context, &page, &err),
    }
}

async fn route(
    context: &Arc<Context>,
    page: &Page,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let segments = page.segments()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query = Query::parse(request.uri().query())?;
    let method = request.method().clone();
    // Reachable without signing in: the stylesheet and script, and signing in.
    match (&method, &segments[1..]) {
        (&Method::GET, ["assets", file]) => return assets::serve(file),
        (&Method::GET, ["sign-in"]) => return actions::sign_in_page(context, page, &query),
        (&Method::POST, ["sign-in"]) => {
            return actions::sign_in(context, page, request.into_body()).await
        }
        _ => {}
    }
    let auth = request::authenticate(context, page)?;
    let Some((caller, csrf)) = auth.caller() else {
        return Ok(match method {
            Method::GET if !matches!(segments[1..], ["events"] | [.., "logs"]) => {
                request::redirect("/dashboard/sign-in", &[])
            }
            _ => {
                return Err(ApiError::unauthorized(
                    "not signed in: sign in at /dashboard/sign-in, or send `Authorization: \
                     Bearer TOKEN`",
                ))
            }
        });
    };
    let viewer = pages::Viewer {
        caller: &caller,
        csrf: csrf.as_deref(),
    };
    match (&method, &segments[1..]) {
        (&Method::GET, []) => actions::overview(context, &viewer, &query),
        (&Method::GET, ["events"]) => events::overview(context, page, &auth, &query),
        (&Method::GET, ["audit"]) => actions::audit(context, &viewer, &query),
        (&Method::GET, ["instances", name]) => actions::instance(context, &viewer, name, &query),
        (&Method::GET, ["instances", name, "logs"]) => {
            events::logs(context, page, &auth, name, &query)
        }
        (&Method::POST, ["sign-out"]) => {
            actions::sign_out(context, page, &auth, request.into_body()).await
        }
        (&Method::POST, ["instances", name, action]) => {
            actions::act(context, page, &auth, name, action, request.into_body()).await
        }
        (_, [] | ["events"] | ["audit"] | ["instances", _] | ["instances", _, "logs"]) => {
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here: use GET",
            ))
        }
        _ => Err(ApiError::not_found(format!(
            "no page {}; docs/dashboard.md lists them",
            page.path
        ))),
    }
}

impl Auth {
    /// The caller, and the CSRF token its forms must carry (none for bearer callers).
    fn caller(&self) -> Option<(Caller, Option<String>)> {
        match self {
            Auth::Session { session, .. } => {
                Some((session.caller.clone(), Some(session.csrf.clone())))
            }
            Auth::Bearer(caller) => Some((caller.clone(), None)),
            Auth::None => None,
        }
    }
}
