//! One dashboard request: who sent it (a session cookie or a bearer token, never the unix
//! socket's peer credentials), its form, and the responses the dashboard sends.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderValue},
    Request, Response, StatusCode,
};
use maud::Markup;

use crate::api::{
    audit,
    auth::{Caller, Peer},
    auth_limit,
    body::Body,
    error::{ApiError, ApiResult},
    query::Query,
    Context,
};

use super::{
    pages,
    session::{self, Session, SESSION_COOKIE},
};

/// Forms are a few fields; anything bigger is not one of ours.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the handlers need to know about the request, taken before its body is consumed.
pub struct Page {
    pub path: String,
    pub peer: Peer,
    pub headers: HeaderMap,
}

pub enum Auth {
    Session { id: String, session: Session },
    Bearer(Caller),
    None,
}

impl Page {
    pub fn of(request: &Request<Incoming>, peer: Peer) -> Page {
        Page {
            path: request.uri().path().to_string(),
            peer,
            headers: request.headers().clone(),
        }
    }

    pub fn segments(&self) -> ApiResult<Vec<String>> {
        crate::api::routes::segments(&self.path)
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(|header| session::cookie(header, name))
    }

    /// Cookies get `Secure` when the browser reached us over HTTPS (through a TLS-terminating
    /// proxy in front of the management listener, which itself speaks plain HTTP).
    pub fn secure(&self) -> bool {
        self.headers
            .get("x-forwarded-proto")
            .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
    }

    /// Where the request came from, for the audit log.
    pub fn origin(&self) -> String {
        audit::origin(self.peer, &self.headers)
    }
}

/// A bearer token decides when one is sent (refusals counted and limited as on the API);
/// otherwise the session cookie, as long as the token it was made with is still live.
pub fn authenticate(context: &Context, page: &Page) -> ApiResult<Auth> {
    if let Some(authorization) = page.headers.get(header::AUTHORIZATION) {
        return auth_limit::identify(context, page.peer, Some(authorization)).map(Auth::Bearer);
    }
    let Some(id) = page.cookie(SESSION_COOKIE) else {
        return Ok(Auth::None);
    };
    let Some(session) = context.dashboard.sessions.get(id) else {
        return Ok(Auth::None);
    };
    if !token_live(context, &session.caller) {
        context.dashboard.sessions.end(id);
        return Ok(Auth::None);
    }
    Ok(Auth::Session {
        id: id.to_string(),
        session,
    })
}

/// Revoking a token ends the sessions signed in with it.
pub fn token_live(context: &Context, caller: &Caller) -> bool {
    match caller {
        Caller::Operator { .. } => true,
        Caller::Admin { token } | Caller::Tenant { token, .. } => {
            matches!(context.api.store.token(*token), Ok(Some(_)))
        }
    }
}

/// The fields of a form post.
pub async fn read_form(body: Incoming) -> ApiResult<Query> {
    let bytes = Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|err| ApiError::bad_request(format!("reading the form: {err}")))?
        .to_bytes();
    let text =
        std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the form is not UTF-8"))?;
    Query::parse(Some(text))
}

/// A state-changing request from a signed-in browser must carry its session's CSRF token.
/// Bearer callers need none: no browser adds their `Authorization` header on its own.
pub fn check_csrf(auth: &Auth, form: &Query) -> ApiResult<()> {
    match auth {
        Auth::Session { session, .. } => {
            let sent = form.text("csrf").unwrap_or("");
            if session::same_secret(sent, &session.csrf) {
                Ok(())
            } else {
                Err(ApiError::forbidden(
                    "missing or wrong CSRF token: reload the page and try again",
                ))
            }
        }
        Auth::Bearer(_) => Ok(()),
        Auth::None => Err(ApiError::unauthorized("not signed in")),
    }
}

/// What every dashboard response carries, event streams included: no caching, no framing,
/// no script or style from anywhere else.
pub fn with_headers(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

pub fn bytes(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Body> {
    let body = Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    with_headers(response)
}

pub fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    bytes(
        status,
        "text/html; charset=utf-8",
        Bytes::from(markup.into_string()),
    )
}

/// A 303 to `location` (after a form post: reloading the next page does not post again).
pub fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
    let mut response = bytes(
        StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        Bytes::new(),
    );
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Errors as a page a person reads (streams and scripts get the same status code).
pub fn error_page(context: &Context, page: &Page, err: &ApiError) -> Response<Body> {
    // Only the session: a bearer token was already checked (and a bad one counted) once.
    let session = page
        .cookie(SESSION_COOKIE)
        .and_then(|id| context.dashboard.sessions.get(id));
    let viewer = session.as_ref().map(|session| pages::Viewer {
        caller: &session.caller,
        csrf: Some(session.csrf.as_str()),
    });
    let mut response = html(
        err.status,
        pages::error(viewer.as_ref(), err.status.as_u16(), &err.message),
    );
    if err.status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}
