//! Server-sent events: one stream per page. The overview's stream sends the header and the
//! table body of the page's selection every second; the instance page's sends its numbers
//! and sparklines; the log stream sends each new line that matches the page's search.
//! Each message is one JSON object on one `data:` line, with HTML rendered (and escaped) by
//! the same templates as the page.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::{body::Frame, header, Response, StatusCode};
use serde::Serialize;
use tokio::sync::{broadcast::error::RecvError, mpsc};

use crate::api::{
    auth::Caller,
    body::Body,
    error::{ApiError, ApiResult},
    handlers, logs,
    query::{encode, Query},
    Context,
};

use super::{
    actions::{selection, summary},
    history::TICK,
    pages::{self, Viewer},
    request::{self, token_live, Auth, Page},
    rows,
};

/// Sent first: how long a browser waits before reconnecting after the stream breaks.
const RETRY_MS: u64 = 2000;

#[derive(Serialize)]
struct Overview {
    summary: String,
    rows: String,
    count: String,
}

#[derive(Serialize)]
struct Instance {
    live: String,
}

#[derive(Serialize)]
struct LogEvent {
    line: String,
}

struct Sender(mpsc::Sender<Bytes>);

impl Sender {
    /// Sends one `update` event; false once the browser has gone.
    async fn send<T: Serialize>(&self, event: &str, value: &T) -> bool {
        let Ok(json) = serde_json::to_string(value) else {
            return false;
        };
        let message = format!("event: {event}\ndata: {json}\n\n");
        self.0.send(Bytes::from(message)).await.is_ok()
    }
}

fn stream() -> (Sender, Response<Body>) {
    let (sender, receiver) = mpsc::channel::<Bytes>(16);
    let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let bytes = receiver.recv().await?;
        Some((Ok::<_, std::io::Error>(Frame::data(bytes)), receiver))
    });
    let first = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!("retry: {RETRY_MS}\n\n"))))
    });
    let body = BodyExt::boxed_unsync(StreamBody::new(first.chain(frames).boxed()));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    (Sender(sender), request::with_headers(response))
}

fn caller_and_csrf(auth: &Auth) -> ApiResult<(Caller, Option<String>)> {
    match auth {
        Auth::Session { session, .. } => Ok((session.caller.clone(), Some(session.csrf.clone()))),
        Auth::Bearer(caller) => Ok((caller.clone(), None)),
        Auth::None => Err(ApiError::unauthorized("not signed in")),
    }
}

/// `GET /dashboard/events`: the overview (with the overview's query) or, with
/// `instance=SERVICE:ID`, one instance's numbers.
pub fn overview(
    context: &Arc<Context>,
    _page: &Page,
    auth: &Auth,
    query: &Query,
) -> ApiResult<Response<Body>> {
    let (caller, csrf) = caller_and_csrf(auth)?;
    let selection = selection(query, &["instance"])?;
    let instance = query
        .text("instance")
        .map(handlers::path_instance)
        .transpose()?;
    if let Some(name) = &instance {
        handlers::lookup(context, &caller, name)?;
    }
    let (sender, response) = stream();
    let context = context.clone();
    tokio::spawn(async move {
        let mut shutdown = context.shutdown.clone();
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = sender.0.closed() => return,
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            // A revoked token ends its streams too.
            if !token_live(&context, &caller) {
                return;
            }
            let viewer = Viewer {
                caller: &caller,
                csrf: csrf.as_deref(),
            };
            let sent = match &instance {
                Some(name) => {
                    let Ok(info) = handlers::lookup(&context, &caller, name) else {
                        return;
                    };
                    let row = rows::one(&context, &info);
                    let track = context.dashboard.history.track(name);
                    let live = pages::instance_live(&viewer, &row, track.as_ref()).into_string();
                    sender.send("update", &Instance { live }).await
                }
                None => {
                    let all = rows::all(&context, &caller);
                    let summary = pages::summary(&summary(&context, &viewer, &all)).into_string();
                    let (page_rows, matched) = rows::select(all, &selection);
                    let message = Overview {
                        summary,
                        rows: pages::table_rows(&viewer, &page_rows).into_string(),
                        count: pages::count(matched, &selection, page_rows.len()),
                    };
                    sender.send("update", &message).await
                }
            };
            if !sent {
                return;
            }
        }
    });
    Ok(response)
}

/// `GET /dashboard/instances/{name}/logs?grep=`: new log lines, searched as `tenement logs
/// --grep` does (the page itself shows the lines before).
pub fn logs(
    context: &Arc<Context>,
    _page: &Page,
    auth: &Auth,
    name: &str,
    query: &Query,
) -> ApiResult<Response<Body>> {
    let (caller, _) = caller_and_csrf(auth)?;
    query.allow(&["grep"])?;
    let name = handlers::path_instance(name)?;
    let mut log_query = vec!["n=0".to_string(), "follow=true".to_string()];
    if let Some(grep) = query.text("grep").filter(|grep| !grep.is_empty()) {
        log_query.push(format!("grep={}", encode(grep)));
    }
    let feed = logs::open(
        context,
        &caller,
        &name,
        &Query::parse(Some(&log_query.join("&")))?,
    )?;
    let Some(mut live) = feed.live else {
        return Err(ApiError::internal("the log feed did not subscribe"));
    };
    let search = feed.search;
    let (sender, response) = stream();
    let context = context.clone();
    tokio::spawn(async move {
        let mut shutdown = context.shutdown.clone();
        // Checks now and then that the token is still live, also when no line comes.
        let mut checks = tokio::time::interval(Duration::from_secs(5));
        loop {
            let line = tokio::select! {
                received = live.recv() => match received {
                    Ok(line) => line,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
                _ = checks.tick() => {
                    if token_live(&context, &caller) { continue } else { return }
                }
                _ = sender.0.closed() => return,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            if !search.matches(&line) {
                continue;
            }
            let event = LogEvent {
                line: pages::log_line(&line),
            };
            if !sender.send("line", &event).await {
                return;
            }
        }
    });
    Ok(response)
}
