//! `GET /v1/instances/{name}/logs`: the tail, a search (`grep`, `since_ms`, `until_ms`), or
//! with `follow=true` those lines and then every new one, as an NDJSON stream.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use tokio::sync::broadcast::error::RecvError;

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
    logs::{LogLine, LogQuery},
};

const DEFAULT_LINES: u64 = 100;
const MAX_LINES: u64 = 100_000;

/// What a log request asks for, checked: the lines before now and, when following, the
/// subscription to new ones. The API streams it as NDJSON, the dashboard as server-sent events.
pub struct LogFeed {
    pub history: Vec<LogLine>,
    pub live: Option<tokio::sync::broadcast::Receiver<LogLine>>,
    pub search: LogQuery,
}

/// Opens the feed `query` asks for (`n`, `grep`, `since_ms`, `until_ms`, `follow`).
pub fn open(
    context: &Context,
    caller: &Caller,
    name: &InstanceName,
    query: &Query,
) -> ApiResult<LogFeed> {
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
    let search = LogQuery {
        instance: Some(name.clone()),
        contains: None,
        regex,
        since_ms: query.number("since_ms")?,
        until_ms: query.number("until_ms")?,
        limit: limit as usize,
    };
    let follow = query.flag("follow")?;
    caller.require_read(name)?;
    known_service(context, &name.service)?;

    // Subscribed before reading the history, so no line falls between the two.
    let live = follow.then(|| context.api.logs.follow(name));
    let history = history(context, name, &search)?;
    Ok(LogFeed {
        history,
        live,
        search,
    })
}

pub fn logs(
    context: &Arc<Context>,
    caller: &Caller,
    name: &InstanceName,
    query: &Query,
) -> ApiResult<Response<Body>> {
    query.allow(&["n", "grep", "since_ms", "until_ms", "follow"])?;
    let LogFeed {
        history,
        live,
        search,
    } = open(context, caller, name, query)?;
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
            if line.time_ms < last_sent_ms || !live_match(&search, &line) {
                continue;
            }
            if !sender.send(&line).await {
                return;
            }
        }
    });
    Ok(response)
}

/// The lines before now: the in-memory tail, or a search of the files when filtered.
fn history(context: &Context, name: &InstanceName, search: &LogQuery) -> ApiResult<Vec<LogLine>> {
    let filtered = search.regex.is_some() || search.since_ms.is_some() || search.until_ms.is_some();
    if !filtered {
        return Ok(context.api.logs.tail(name, search.limit));
    }
    // The search reads files; keep the runtime's other tasks going meanwhile.
    tokio::task::block_in_place(|| context.api.logs.search(search))
        .map_err(|err| ApiError::internal(format!("searching the logs of {name}: {err:#}")))
}

/// The filters that still apply to new lines (`until_ms` ends nothing: new lines are later).
pub fn live_match(search: &LogQuery, line: &LogLine) -> bool {
    search.since_ms.is_none_or(|since| line.time_ms >= since)
        && search.until_ms.is_none_or(|until| line.time_ms <= until)
        && search
            .regex
            .as_ref()
            .is_none_or(|regex| regex.is_match(&line.line))
}
