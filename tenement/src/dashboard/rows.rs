//! The overview's rows: every instance the caller may read, with the API's view of it
//! (state, health, weight, restarts, stats) and what the dashboard adds (request rate, time
//! asleep, time until idle stop); then filtered, sorted and cut into pages.

use std::{cmp::Ordering, time::SystemTime};

use crate::api::{auth::Caller, query::Query, types::InstanceView, view, Context};

use super::history::Track;

/// Rows per page unless `per_page` says otherwise.
pub const PER_PAGE: usize = 100;
pub const MAX_PER_PAGE: usize = 1000;

#[derive(Clone, Debug)]
pub struct Row {
    pub view: InstanceView,
    pub cpu_percent: Option<f64>,
    /// `cpu_weight` of the service, when it sets one.
    pub cpu_weight: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub requests_per_sec: Option<f64>,
    pub rx_per_sec: Option<f64>,
    pub tx_per_sec: Option<f64>,
    pub connections_open: Option<u64>,
    pub asleep_secs: Option<u64>,
    /// Seconds until the idle reaper stops it, for running instances of services with an
    /// `idle_timeout`.
    pub idle_stop_in_secs: Option<u64>,
    pub last_wake_ms: Option<u64>,
}

/// Every column the table sorts by, by its name in `?sort=`.
pub const COLUMNS: [(&str, &str); 16] = [
    ("service", "Service"),
    ("id", "Id"),
    ("state", "State"),
    ("uptime", "Up / asleep"),
    ("idle", "Idle stop in"),
    ("wake", "Last wake"),
    ("cpu", "CPU"),
    ("memory", "Memory"),
    ("requests", "Req/s"),
    ("rx", "Rx/s"),
    ("tx", "Tx/s"),
    ("connections", "Conns"),
    ("restarts", "Restarts"),
    ("weight", "Weight"),
    ("port", "Port"),
    ("pid", "PID"),
];

/// What the overview shows: `service`, `q` (text in the name, state or reason), `sort`,
/// `order` (`asc`/`desc`), `page` (from 1), `per_page`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub service: Option<String>,
    pub text: Option<String>,
    pub sort: &'static str,
    pub descending: bool,
    pub page: usize,
    pub per_page: usize,
}

pub const SELECTION_KEYS: [&str; 6] = ["service", "q", "sort", "order", "page", "per_page"];

impl Selection {
    pub fn parse(query: &Query) -> Result<Selection, String> {
        let sort = match query.text("sort").filter(|sort| !sort.is_empty()) {
            None => "service",
            Some(sort) => COLUMNS
                .iter()
                .map(|(key, _)| *key)
                .find(|key| *key == sort)
                .ok_or_else(|| {
                    format!(
                        "sort={sort:?} is not a column; columns: {}",
                        COLUMNS.map(|(key, _)| key).join(", ")
                    )
                })?,
        };
        let descending = match query.text("order") {
            None | Some("") | Some("asc") => false,
            Some("desc") => true,
            Some(other) => return Err(format!("order={other:?}: expected asc or desc")),
        };
        let number = |key: &str, default: usize| -> Result<usize, String> {
            match query.text(key).filter(|value| !value.is_empty()) {
                None => Ok(default),
                Some(value) => value
                    .parse::<usize>()
                    .ok()
                    .filter(|value| *value > 0)
                    .ok_or_else(|| format!("{key}={value:?}: expected a number from 1")),
            }
        };
        let nonempty = |key: &str| {
            query
                .text(key)
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_string)
        };
        Ok(Selection {
            service: nonempty("service"),
            text: nonempty("q"),
            sort,
            descending,
            page: number("page", 1)?,
            per_page: number("per_page", PER_PAGE)?.min(MAX_PER_PAGE),
        })
    }

    /// The query string for this selection with some parts changed (for links).
    pub fn href(
        &self,
        sort: Option<&'static str>,
        descending: Option<bool>,
        page: Option<usize>,
    ) -> String {
        let mut parts = Vec::new();
        let encode = crate::api::query::encode;
        if let Some(service) = &self.service {
            parts.push(format!("service={}", encode(service)));
        }
        if let Some(text) = &self.text {
            parts.push(format!("q={}", encode(text)));
        }
        parts.push(format!("sort={}", sort.unwrap_or(self.sort)));
        if descending.unwrap_or(self.descending) {
            parts.push("order=desc".to_string());
        }
        let page = page.unwrap_or(self.page);
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        if self.per_page != PER_PAGE {
            parts.push(format!("per_page={}", self.per_page));
        }
        format!("?{}", parts.join("&"))
    }
}

/// Every instance `caller` may read, as rows.
pub fn all(context: &Context, caller: &Caller) -> Vec<Row> {
    let supervisor = &context.api.supervisor;
    let config = context.api.config.get();
    let now = SystemTime::now();
    context.dashboard.history.with_tracks(|tracks| {
        supervisor
            .instances()
            .iter()
            .filter(|info| caller.may_read(&info.name))
            .map(|info| {
                let view = view::instance(info, supervisor.stats(&info.name));
                let service = config.service.get(&info.name.service);
                row(view, tracks.get(&info.name), service, now)
            })
            .collect()
    })
}

/// One instance as a row (the instance page's numbers).
pub fn one(context: &Context, info: &crate::supervisor::InstanceInfo) -> Row {
    let view = view::instance(info, context.api.supervisor.stats(&info.name));
    let track = context.dashboard.history.track(&info.name);
    let config = context.api.config.get();
    let service = config.service.get(&info.name.service);
    row(view, track.as_ref(), service, SystemTime::now())
}

fn row(
    view: InstanceView,
    track: Option<&Track>,
    service: Option<&crate::config::Service>,
    now: SystemTime,
) -> Row {
    let stats = view.stats;
    let rates = stats.as_ref().and_then(|stats| stats.rates);
    let running = view.pid.is_some();
    let idle_timeout = service.map_or(0, |service| service.idle_timeout);
    let idle_stop_in_secs = (running && idle_timeout > 0).then(|| {
        let idle = stats
            .as_ref()
            .and_then(|stats| stats.idle_for_secs)
            .unwrap_or(0.0);
        (idle_timeout as f64 - idle).max(0.0) as u64
    });
    Row {
        cpu_percent: rates.as_ref().map(|rates| rates.cpu_percent),
        cpu_weight: service.and_then(|service| service.cpu_weight),
        memory_bytes: stats.as_ref().and_then(|stats| stats.memory_bytes),
        memory_limit_bytes: service
            .and_then(|service| service.memory_limit_mb)
            .map(|mb| mb * 1024 * 1024),
        requests_per_sec: track
            .and_then(|track| track.requests_per_sec)
            .filter(|_| running),
        rx_per_sec: rates.as_ref().map(|rates| rates.rx_bytes_per_sec),
        tx_per_sec: rates.as_ref().map(|rates| rates.tx_bytes_per_sec),
        connections_open: stats
            .as_ref()
            .and_then(|stats| stats.totals.as_ref())
            .map(|totals| totals.connections_open),
        asleep_secs: (!running)
            .then(|| track.and_then(|track| track.asleep_since))
            .flatten()
            .and_then(|since| now.duration_since(since).ok())
            .map(|asleep| asleep.as_secs()),
        idle_stop_in_secs,
        last_wake_ms: track.and_then(|track| track.last_wake).map(view::unix_ms),
        view,
    }
}

/// The rows `selection` picks, sorted, and how many matched before paging.
pub fn select(mut rows: Vec<Row>, selection: &Selection) -> (Vec<Row>, usize) {
    rows.retain(|row| {
        selection
            .service
            .as_ref()
            .is_none_or(|service| &row.view.service == service)
            && selection
                .text
                .as_ref()
                .is_none_or(|text| matches_text(row, text))
    });
    rows.sort_by(|a, b| {
        let order = compare(a, b, selection.sort).then_with(|| a.view.name.cmp(&b.view.name));
        if selection.descending {
            order.reverse()
        } else {
            order
        }
    });
    let matched = rows.len();
    let start = (selection.page - 1).saturating_mul(selection.per_page);
    let page = rows
        .into_iter()
        .skip(start)
        .take(selection.per_page)
        .collect();
    (page, matched)
}

fn matches_text(row: &Row, text: &str) -> bool {
    let text = text.to_lowercase();
    [
        Some(row.view.name.as_str()),
        Some(row.view.state.as_str()),
        row.view.last_error.as_deref(),
        row.view.health.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|field| field.to_lowercase().contains(&text))
}

/// Missing numbers sort below every present one.
fn compare(a: &Row, b: &Row, column: &str) -> Ordering {
    fn float(a: Option<f64>, b: Option<f64>) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            (a, b) => a.is_some().cmp(&b.is_some()),
        }
    }
    let int = |f: fn(&Row) -> Option<u64>| float(f(a).map(|v| v as f64), f(b).map(|v| v as f64));
    match column {
        "service" => a.view.service.cmp(&b.view.service),
        "id" => a.view.id.cmp(&b.view.id),
        "state" => a.view.state.cmp(&b.view.state),
        "uptime" => int(|row| row.view.uptime_secs.or(row.asleep_secs)),
        "idle" => int(|row| row.idle_stop_in_secs),
        "wake" => int(|row| row.last_wake_ms),
        "cpu" => float(a.cpu_percent, b.cpu_percent),
        "memory" => int(|row| row.memory_bytes),
        "requests" => float(a.requests_per_sec, b.requests_per_sec),
        "rx" => float(a.rx_per_sec, b.rx_per_sec),
        "tx" => float(a.tx_per_sec, b.tx_per_sec),
        "connections" => int(|row| row.connections_open),
        "restarts" => int(|row| Some(u64::from(row.view.restarts))),
        "weight" => int(|row| Some(u64::from(row.view.weight))),
        "port" => int(|row| row.view.port.map(u64::from)),
        "pid" => int(|row| row.view.pid.map(u64::from)),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse_and_link() {
        let query = Query::parse(Some("service=api&q=ali&sort=cpu&order=desc&page=2")).unwrap();
        let selection = Selection::parse(&query).unwrap();
        assert_eq!(selection.service.as_deref(), Some("api"));
        assert_eq!(selection.sort, "cpu");
        assert!(selection.descending);
        assert_eq!(selection.page, 2);
        assert_eq!(selection.per_page, PER_PAGE);
        assert_eq!(
            selection.href(Some("id"), Some(false), Some(1)),
            "?service=api&q=ali&sort=id"
        );
        let huge = Query::parse(Some("per_page=100000")).unwrap();
        assert_eq!(Selection::parse(&huge).unwrap().per_page, MAX_PER_PAGE);
        for bad in ["sort=colour", "order=up", "page=0", "page=x"] {
            let query = Query::parse(Some(bad)).unwrap();
            assert!(Selection::parse(&query).is_err(), "{bad}");
        }
    }
}
