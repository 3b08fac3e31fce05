//! The HTML, as maud templates (escaped by default: a `<script>` in a name or a log line is
//! shown as text). Every page works without JavaScript; `app.js` only keeps it live.

use maud::{html, Markup, DOCTYPE};

use crate::{
    api::{auth::Caller, types::InstanceView},
    store::{AuditEntry, Event},
};

use super::{
    format::{self, NONE},
    history::Track,
    rows::{Row, Selection, COLUMNS},
    sparkline::sparkline,
};

/// What every signed-in page knows about its viewer.
pub struct Viewer<'a> {
    pub caller: &'a Caller,
    /// The session's CSRF token; `None` for `Authorization: Bearer` callers (no forms needed:
    /// a browser never adds that header by itself).
    pub csrf: Option<&'a str>,
}

impl Viewer<'_> {
    fn may_change(&self) -> bool {
        self.caller.require_admin("").is_ok()
    }

    fn describe(&self) -> String {
        match self.caller {
            Caller::Operator { uid } => format!("operator (uid {uid})"),
            Caller::Admin { token } => format!("admin token {token}"),
            Caller::Tenant { token, instance } => format!("token {token} for {instance}"),
        }
    }
}

fn layout(title: &str, viewer: Option<&Viewer<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tenement" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/dashboard/assets/app.css";
                script src="/dashboard/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/dashboard" { "tenement" }
                    @if let Some(viewer) = viewer {
                        nav {
                            a href="/dashboard" { "Instances" }
                            @if viewer.may_change() { a href="/dashboard/audit" { "Audit log" } }
                        }
                        span.who { (viewer.describe()) }
                        @if let Some(csrf) = viewer.csrf {
                            form.inline method="post" action="/dashboard/sign-out" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.sign-in method="post" action="/dashboard/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required
                    placeholder="tnm_…";
                button type="submit" { "Sign in" }
            }
            p.hint {
                "An admin creates tokens with " code { "tenement token-gen" }
                " (admin: every instance; " code { "--tenant SERVICE:ID" } ": one instance, read-only). "
                "As root, " code { "tenement dashboard" } " prints a one-time sign-in link."
            }
        },
    )
}

pub fn error(viewer: Option<&Viewer<'_>>, status: u16, message: &str) -> Markup {
    layout(
        "Error",
        viewer,
        html! {
            h1 { "Error " (status) }
            p.error role="alert" { (message) }
            p { a href="/dashboard" { "Back to the instances" } }
        },
    )
}

/// The header numbers: host, instances, kernel counters, certificates.
pub struct Summary {
    pub host_cpu_percent: Option<f64>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub running: usize,
    pub total: usize,
    pub kernel_counters: bool,
    pub kernel_reason: Option<String>,
    /// Names of certificates that expire within 14 days (admins only).
    pub expiring: Option<Vec<String>>,
}

pub fn summary(summary: &Summary) -> Markup {
    html! {
        dl.summary {
            div { dt { "Host CPU" } dd #host-cpu { (format::number(summary.host_cpu_percent, 0)) "%" } }
            div {
                dt { "Memory" }
                dd #host-memory {
                    @match (summary.memory_used, summary.memory_total) {
                        (Some(used), Some(total)) => { (format::bytes(used)) " / " (format::bytes(total)) },
                        _ => { (NONE) },
                    }
                }
            }
            div { dt { "Running" } dd #running { (summary.running) " / " (summary.total) } }
            div {
                dt { "eBPF counters" }
                dd #ebpf title=[summary.kernel_reason.as_deref()] {
                    @if summary.kernel_counters { "on" } @else { "off" }
                }
            }
            @if let Some(expiring) = &summary.expiring {
                div {
                    dt { "Certificates expiring ≤ 14 d" }
                    dd #expiring title=(expiring.join(", ")) { (expiring.len()) }
                }
            }
        }
    }
}

pub fn overview(
    viewer: &Viewer<'_>,
    summary_view: &Summary,
    services: &[String],
    selection: &Selection,
    rows: &[Row],
    matched: usize,
) -> Markup {
    let pages = matched.div_ceil(selection.per_page).max(1);
    layout(
        "Instances",
        Some(viewer),
        html! {
            section #summary { (summary(summary_view)) }
            form.filter #filter method="get" action="/dashboard" {
                label { "Service "
                    select name="service" {
                        option value="" { "all" }
                        @for service in services {
                            option value=(service) selected[selection.service.as_deref() == Some(service)] { (service) }
                        }
                    }
                }
                label { "Search "
                    input type="search" name="q" value=[selection.text.as_deref()] placeholder="name, state, reason";
                }
                input type="hidden" name="sort" value=(selection.sort);
                @if selection.descending { input type="hidden" name="order" value="desc"; }
                button type="submit" { "Filter" }
                a href="/dashboard" { "Reset" }
            }
            p.count #count { (count(matched, selection, rows.len())) }
            table.instances #instances data-events={ "/dashboard/events" (selection.href(None, None, None)) } {
                thead { tr {
                    @for (key, label) in COLUMNS {
                        @let active = selection.sort == key;
                        @let descending = active && !selection.descending;
                        th aria-sort=(if active { if selection.descending { "descending" } else { "ascending" } } else { "none" }) {
                            a href={ "/dashboard" (selection.href(Some(key), Some(descending), Some(1))) } {
                                (label)
                                @if active { @if selection.descending { " ▾" } @else { " ▴" } }
                            }
                        }
                    }
                    @if viewer.may_change() { th { "Actions" } }
                } }
                tbody #rows { (table_rows(viewer, rows)) }
            }
            @if pages > 1 {
                nav.pager {
                    @if selection.page > 1 {
                        a rel="prev" href={ "/dashboard" (selection.href(None, None, Some(selection.page - 1))) } { "← previous" }
                    }
                    span { "page " (selection.page) " of " (pages) }
                    @if selection.page < pages {
                        a rel="next" href={ "/dashboard" (selection.href(None, None, Some(selection.page + 1))) } { "next →" }
                    }
                }
            }
            noscript { p.hint { "Without JavaScript this page does not update itself: reload it for fresh numbers." } }
        },
    )
}

pub fn count(matched: usize, selection: &Selection, shown: usize) -> String {
    let first = (selection.page - 1) * selection.per_page + 1;
    if shown == 0 {
        format!("{matched} instances match; none on this page")
    } else {
        format!(
            "{matched} instance{} · showing {first}–{}",
            if matched == 1 { "" } else { "s" },
            first + shown - 1
        )
    }
}

/// The table's body: also what the live stream sends, so both paths render the same rows.
pub fn table_rows(viewer: &Viewer<'_>, rows: &[Row]) -> Markup {
    html! {
        @for row in rows {
            @let view = &row.view;
            tr data-name=(view.name) data-state=(view.state) {
                td { (view.service) }
                td { a href={ "/dashboard/instances/" (crate::api::query::encode(&view.name)) } { (view.id) } }
                td.state {
                    span class={ "badge " (state_class(&view.state)) } { (view.state) }
                    @if let Some(reason) = &view.last_error { " " small.reason title=(reason) { (reason) } }
                }
                td {
                    @if let Some(up) = view.uptime_secs { (format::duration(up)) }
                    @else if let Some(asleep) = row.asleep_secs { "asleep " (format::duration(asleep)) }
                    @else { (NONE) }
                }
                td { (row.idle_stop_in_secs.map_or(NONE.to_string(), format::duration)) }
                td { (row.last_wake_ms.map_or(NONE.to_string(), format::time_ms)) }
                td {
                    (format::number(row.cpu_percent, 1)) @if row.cpu_percent.is_some() { "%" }
                    @if let Some(weight) = row.cpu_weight { small { " w" (weight) } }
                }
                td {
                    @match (row.memory_bytes, row.memory_limit_bytes) {
                        (Some(used), Some(limit)) => {
                            meter min="0" max=(limit) value=(used) {}
                            " " (format::bytes(used)) " / " (format::bytes(limit))
                        },
                        (Some(used), None) => { (format::bytes(used)) },
                        _ => { (NONE) },
                    }
                }
                td.requests { (format::number(row.requests_per_sec, 1)) }
                td.rx { (format::rate_bytes(row.rx_per_sec)) }
                td.tx { (format::rate_bytes(row.tx_per_sec)) }
                td { (row.connections_open.map_or(NONE.to_string(), |open| open.to_string())) }
                td.restarts { (view.restarts) }
                td.weight { (view.weight) }
                td.port { (view.port.map_or(NONE.to_string(), |port| port.to_string())) }
                td.pid { (view.pid.map_or(NONE.to_string(), |pid| pid.to_string())) }
                @if viewer.may_change() { td.actions { (actions(viewer, view, false)) } }
            }
        }
    }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "running" => "ok",
        "starting" | "stopping" | "degraded" => "warn",
        "failed" | "unhealthy" => "bad",
        _ => "idle",
    }
}

/// Start / stop / restart buttons (and the weight form on the instance page), each a form
/// with the session's CSRF token.
fn actions(viewer: &Viewer<'_>, view: &InstanceView, with_weight: bool) -> Markup {
    let base = format!(
        "/dashboard/instances/{}",
        crate::api::query::encode(&view.name)
    );
    let csrf = viewer.csrf.unwrap_or("");
    let running = view.pid.is_some();
    // One form per row (the overview has up to 1000): restart posts it elsewhere. An action
    // returns to the overview unless the form says otherwise.
    let back = with_weight.then(|| base.clone());
    html! {
        form.act method="post" action={ (base) (if running { "/stop" } else { "/start" }) } {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some(back) = &back { input type="hidden" name="return" value=(back); }
            @if running {
                button.stop type="submit" { "stop" }
                " "
                button.restart type="submit" formaction={ (base) "/restart" } { "restart" }
            } @else {
                button.start type="submit" { "start" }
            }
        }
        @if with_weight {
            form.act method="post" action={ (base) "/weight" } {
                @if let Some(back) = &back { input type="hidden" name="return" value=(back); }
                input type="hidden" name="csrf" value=(csrf);
                label { "weight " input type="number" name="weight" min="0" max="100" value=(view.weight); }
                button type="submit" { "set" }
            }
        }
    }
}

pub struct InstancePage<'a> {
    pub row: &'a Row,
    pub track: Option<&'a Track>,
    pub events: &'a [Event],
    pub grep: Option<&'a str>,
    pub log_lines: &'a [crate::logs::LogLine],
}

pub fn instance(viewer: &Viewer<'_>, page: &InstancePage<'_>) -> Markup {
    let view = &page.row.view;
    let encoded = crate::api::query::encode(&view.name);
    layout(
        &view.name,
        Some(viewer),
        html! {
            h1 { (view.name) }
            section #instance-live data-events={ "/dashboard/events?instance=" (encoded) } {
                (instance_live(viewer, page.row, page.track))
            }
            h2 { "Recent events" }
            @if page.events.is_empty() { p.hint { "No events yet." } }
            @else {
                table.events { thead { tr { th { "Time" } th { "Event" } th { "Detail" } } }
                    tbody { @for event in page.events { tr {
                        td { (format::time_ms(crate::api::view::unix_ms(event.time))) }
                        td { (event.kind.as_str()) }
                        td { (event.detail) }
                    } } }
                }
            }
            h2 { "Log" }
            form.filter method="get" action={ "/dashboard/instances/" (encoded) } {
                label { "Search (regular expression) "
                    input type="search" name="grep" value=[page.grep];
                }
                button type="submit" { "Search" }
            }
            pre.log #log data-events={ "/dashboard/instances/" (encoded) "/logs"
                @if let Some(grep) = page.grep { "?grep=" (crate::api::query::encode(grep)) } } {
                @for line in page.log_lines { (log_line(line)) "\n" }
            }
        },
    )
}

pub fn log_line(line: &crate::logs::LogLine) -> String {
    format!("{} {}", format::time_ms(line.time_ms), line.line)
}

/// The instance page's numbers and sparklines: also what its live stream sends.
pub fn instance_live(viewer: &Viewer<'_>, row: &Row, track: Option<&Track>) -> Markup {
    let view = &row.view;
    let points: Vec<_> = track
        .map(|track| track.points.iter().copied().collect())
        .unwrap_or_default();
    let series =
        |pick: fn(&super::history::Point) -> f32| -> Vec<f32> { points.iter().map(pick).collect() };
    html! {
        dl.summary {
            div { dt { "State" } dd.state { span class={ "badge " (state_class(&view.state)) } { (view.state) } } }
            div { dt { "Health" } dd.health { (view.health.as_deref().unwrap_or(NONE)) } }
            div { dt { "Last result" } dd.reason { (view.last_error.as_deref().unwrap_or("ok")) } }
            div { dt { "Restarts" } dd.restarts { (view.restarts) } }
            div { dt { "Weight" } dd.weight { (view.weight) } }
            div { dt { "Port" } dd.port { (view.port.map_or(NONE.to_string(), |port| port.to_string())) } }
            div { dt { "PID" } dd.pid { (view.pid.map_or(NONE.to_string(), |pid| pid.to_string())) } }
            div { dt { "Up" } dd { (view.uptime_secs.map_or(NONE.to_string(), format::duration)) } }
        }
        @if viewer.may_change() { div.actions { (actions(viewer, view, true)) } }
        h2 { "Last hour" }
        div.sparks {
            (sparkline(&series(|p| p.cpu_percent), "CPU %", &format::number(row.cpu_percent, 1)))
            (sparkline(&series(|p| p.memory_bytes), "Memory", &row.memory_bytes.map_or(NONE.to_string(), format::bytes)))
            (sparkline(&series(|p| p.requests_per_sec), "Req/s", &format::number(row.requests_per_sec, 1)))
            (sparkline(&series(|p| p.rx_per_sec), "Rx/s", &format::rate_bytes(row.rx_per_sec)))
            (sparkline(&series(|p| p.tx_per_sec), "Tx/s", &format::rate_bytes(row.tx_per_sec)))
        }
    }
}

pub fn audit(viewer: &Viewer<'_>, entries: &[AuditEntry]) -> Markup {
    layout(
        "Audit log",
        Some(viewer),
        html! {
            h1 { "Audit log" }
            p.hint { "Every change made through the API or this dashboard, newest first. Also at " code { "GET /v1/audit" } "." }
            table.audit #audit {
                thead { tr { th { "Time" } th { "Who" } th { "Action" } th { "Target" } th { "From" } th { "Status" } th { "Detail" } } }
                tbody { @for entry in entries { tr {
                    td { (format::time_ms(entry.time_ms.max(0) as u64)) }
                    td.who { (entry.who) }
                    td.action { (entry.action) }
                    td.target { (entry.target) }
                    td { (entry.address) }
                    td.status { (entry.status) }
                    td { (entry.detail) }
                } } }
            }
        },
    )
}
