//! `GET /v1/instances/{name}/logs` and `GET /v1/services/{service}/logs`: the tail, a search
//! (`grep`, `since_ms`, `until_ms`, `stream`, `level`), or with `follow=true` those lines and
//! then every new one, as an NDJSON stream.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{
    auth::Caller,
    body::{self, Body},
    error::{ApiError, ApiResult},
    handlers::known_service,
    query::Query,
    Context,
};
use crate::{
    config::InstanceName,
    logs::{Level, LogLine, LogQuery, Stream},
};

const DEFAULT_LINES: u64 = 100;
const MAX_LINES: u64 = 100_000;

/// What a log request asks for, checked: the lines before now and, when following, the
/// subscription to new ones. The API streams it as NDJSON, the dashboard as server-sent events.
pub struct LogFeed {
    pub history: Vec<LogLine>,
    pub live: Option<broadcast::Receiver<LogLine>>,
    pub search: LogQuery,
}

/// One instance's feed, as `GET /v1/instances/{name}/logs` with `query` would answer it.
pub fn open(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
    query: &Query,
) -> ApiResult<LogFeed> {
    let (mut search, follow) = parse(query)?;
    search.instance = Some(name.clone());
    caller.require_read(name)?;
    known_service(context, &name.service)?;
    // Subscribed before reading the history, so no line falls between the two.
    let live = follow.then(|| context.api.logs.follow(name));
    let history = history(context, &search)?;
    Ok(LogFeed {
        history,
        live,
        search,
    })
}

/// `GET /v1/instances/{name}/logs`.
pub fn logs(
    context: &Arc<Context>,
    caller: &Caller,
    name: &InstanceName,
    query: &Query,
) -> ApiResult<Response<Body>> {
    let (mut search, follow) = parse(query)?;
    search.instance = Some(name.clone());
    caller.require_read(name)?;
    known_service(context, &name.service)?;
    // Subscribed before reading the history, so no line falls between the two.
    let live = follow.then(|| context.api.logs.follow(name));
    answer(context, search, live)
}

/// `GET /v1/services/{service}/logs`: every instance of the service, interleaved by time.
/// A tenant token sees only its own instance's lines.
pub fn service_logs(
    context: &Arc<Context>,
    caller: &Caller,
    service: &str,
    query: &Query,
) -> ApiResult<Response<Body>> {
    let (mut search, follow) = parse(query)?;
    // The scope first: a tenant learns nothing about other services, not even if they exist.
    caller.require_read_service(service)?;
    known_service(context, service)?;
    if let Caller::Tenant { instance, .. } = caller {
        search.instance = Some(instance.clone());
    }
    search.service = Some(service.to_string());
    let live = follow.then(|| context.api.logs.follow_all());
    answer(context, search, live)
}

/// The query parameters both endpoints take: the search, and whether to follow.
fn parse(query: &Query) -> ApiResult<(LogQuery, bool)> {
    query.allow(&[
        "n", "grep", "since_ms", "until_ms", "follow", "stream", "level",
    ])?;
    let limit = query.number("n")?.unwrap_or(DEFAULT_LINES);
    if limit > MAX_LINES {
        return Err(ApiError::bad_request(format!(
            "n={limit} is too many lines: at most {MAX_LINES} per request"
        )));
    }
    let regex = query
        .text("grep")
        .map(|pattern| {
            regex::Regex::new(pattern).map_err(|err| {
                ApiError::bad_request(format!(
                    "grep={pattern:?} is not a valid regular expression: {err}"
                ))
            })
        })
        .transpose()?;
    let stream = query
        .text("stream")
        .map(|text| match text {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            "system" => Ok(Stream::System),
            _ => Err(ApiError::bad_request(format!(
                "stream={text:?}: expected stdout, stderr or system"
            ))),
        })
        .transpose()?;
    let level = query
        .text("level")
        .map(|text| {
            Level::parse(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "level={text:?}: expected one of {}",
                    Level::NAMES.join(", ")
                ))
            })
        })
        .transpose()?;
    let search = LogQuery {
        regex,
        stream,
        level,
        since_ms: query.number("since_ms")?,
        until_ms: query.number("until_ms")?,
        limit: limit as usize,
        ..LogQuery::default()
    };
    Ok((search, query.flag("follow")?))
}

/// The history as a JSON array, or with `live` the history and then every new line that
/// matches, as NDJSON.
fn answer(
    context: &Arc<Context>,
    search: LogQuery,
    live: Option<broadcast::Receiver<LogLine>>,
) -> ApiResult<Response<Body>> {
    let history = history(context, &search)?;
    let Some(mut live) = live else {
        return Ok(body::json(StatusCode::OK, &history));
    };
    let (sender, response) = body::ndjson_stream();
    let context = context.clone();
    tokio::spawn(async move {
        let mut shutdown = context.shutdown.clone();
        let mut last_sent_ms = 0;
        for line in &history {
            if !sender.send(line).await {
                return;
            }
            last_sent_ms = line.time_ms;
        }
        loop {
            let line = tokio::select! {
                received = live.recv() => match received {
                    Ok(line) => line,
                    // A slow reader skips ahead; the files still hold what it missed.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
                _ = sender.closed() => return,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            // Lines already sent as history came in again through the subscription.
            if line.time_ms < last_sent_ms || !search.matches(&line) {
                continue;
            }
            if !sender.send(&line).await {
                return;
            }
        }
    });
    Ok(response)
}

/// The lines before now: one instance's in-memory tail, or a search of the files when
/// filtered or for a whole service.
fn history(context: &Context, search: &LogQuery) -> ApiResult<Vec<LogLine>> {
    let filtered = search.regex.is_some()
        || search.since_ms.is_some()
        || search.until_ms.is_some()
        || search.stream.is_some()
        || search.level.is_some();
    if let (Some(name), false) = (&search.instance, filtered) {
        return Ok(context.api.logs.tail(name, search.limit));
    }
    // The search reads files; keep the runtime's other tasks going meanwhile.
    tokio::task::block_in_place(|| context.api.logs.search(search)).map_err(|err| {
        let scope = match (&search.instance, &search.service) {
            (Some(name), _) => name.to_string(),
            (None, Some(service)) => format!("service {service}"),
            (None, None) => "every instance".to_string(),
        };
        ApiError::internal(format!("searching the logs of {scope}: {err:#}"))
    })
}
