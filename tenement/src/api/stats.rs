//! Daemon status, stats (a snapshot or a stream), and `/metrics`.

use std::{
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use hyper::{Response, StatusCode};

use super::{
    auth::Caller,
    body::{self, Body},
    error::{ApiError, ApiResult},
    handlers::lookup,
    metrics::{Exposition, Kind},
    query::Query,
    types::{StatsSnapshot, StatusView},
    view, Context,
};
use crate::{config::InstanceName, supervisor::InstanceState};

const STATES: [InstanceState; 9] = [
    InstanceState::Stopped,
    InstanceState::Sleeping,
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Frozen,
    InstanceState::Degraded,
    InstanceState::Unhealthy,
    InstanceState::Failed,
    InstanceState::Stopping,
];

pub fn status(context: &Context, caller: &Caller) -> ApiResult<Response<Body>> {
    caller.require_admin("the daemon status")?;
    let mut instances = std::collections::BTreeMap::new();
    for info in context.api.supervisor.instances() {
        *instances
            .entry(info.state.as_str().to_string())
            .or_insert(0) += 1;
    }
    // One lock of the monitor for both (a second lock in the same statement would wait on
    // the first guard forever).
    let (kernel_counters, network_isolation) = {
        let monitor = context.monitor();
        (
            view::kernel_counters(&monitor),
            view::network_isolation(&monitor),
        )
    };
    let status = StatusView {
        binary: super::types::BinaryView::current(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started_at_ms: view::unix_ms(context.started_at),
        uptime_secs: context.started.elapsed().as_secs(),
        api: context.addresses.iter().map(ToString::to_string).collect(),
        data_dir: context
            .api
            .config
            .get()
            .settings
            .data_dir
            .display()
            .to_string(),
        kernel_counters,
        network_isolation: Some(network_isolation),
        services: context.api.config.get().service.keys().cloned().collect(),
        instances,
        certificates: context
            .tls
            .get()
            .map(|manager| manager.certificates())
            .unwrap_or_default(),
    };
    Ok(body::json(StatusCode::OK, &status))
}

pub fn one(context: &Context, caller: &Caller, name: &InstanceName) -> ApiResult<Response<Body>> {
    let info = lookup(context, caller, name)?;
    let stats = context.api.supervisor.stats(&info.name);
    Ok(body::json(
        StatusCode::OK,
        &view::instance_stats(&info, stats),
    ))
}

/// Every instance the caller may read; with `follow=true`, a new snapshot every
/// `interval_ms` (default 1000) as an NDJSON stream.
pub fn all(context: &Arc<Context>, caller: &Caller, query: &Query) -> ApiResult<Response<Body>> {
    query.allow(&["follow", "interval_ms"])?;
    let follow = query.flag("follow")?;
    let interval_ms = query.number("interval_ms")?.unwrap_or(1000);
    if !(100..=60_000).contains(&interval_ms) {
        return Err(ApiError::bad_request(format!(
            "interval_ms={interval_ms} is out of range: 100-60000"
        )));
    }
    if !follow {
        return Ok(body::json(StatusCode::OK, &snapshot(context, caller)));
    }
    let (sender, response) = body::ndjson_stream();
    let context = context.clone();
    let caller = caller.clone();
    tokio::spawn(async move {
        let mut shutdown = context.shutdown.clone();
        let mut ticks = tokio::time::interval(Duration::from_millis(interval_ms));
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = sender.closed() => return,
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if !sender.send(&snapshot(&context, &caller)).await {
                return;
            }
        }
    });
    Ok(response)
}

fn snapshot(context: &Context, caller: &Caller) -> StatsSnapshot {
    let supervisor = &context.api.supervisor;
    StatsSnapshot {
        time_ms: view::unix_ms(SystemTime::now()),
        kernel_counters: view::kernel_counters(&context.monitor()),
        instances: supervisor
            .instances()
            .iter()
            .filter(|info| caller.may_read(&info.name))
            .map(|info| view::instance_stats(info, supervisor.stats(&info.name)))
            .collect(),
    }
}

pub fn metrics(context: &Context, caller: &Caller) -> ApiResult<Response<Body>> {
    caller.require_admin("/metrics")?;
    Ok(body::text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        context.metrics.render(),
    ))
}

/// The API's own collector: daemon, instances and kernel counters as the supervisor and the
/// monitor see them at scrape time.
pub fn register_metrics(context: &Arc<Context>) {
    // Weak: the registry lives inside the context; a strong reference would be a cycle.
    let context: Weak<Context> = Arc::downgrade(context);
    let registry = match context.upgrade() {
        Some(context) => context.metrics.clone(),
        None => return,
    };
    registry.register(move |out| {
        if let Some(context) = context.upgrade() {
            collect(&context, out);
        }
    });
}

fn collect(context: &Context, out: &mut Exposition) {
    let version = env!("CARGO_PKG_VERSION");
    out.family("tenement_up", Kind::Gauge, "1 while tenement serves.")
        .sample("tenement_up", &[], 1.0);
    out.family(
        "tenement_build_info",
        Kind::Gauge,
        "The running tenement's version.",
    )
    .sample("tenement_build_info", &[("version", version)], 1.0);
    out.family(
        "tenement_start_time_seconds",
        Kind::Gauge,
        "When the daemon started, unix seconds.",
    )
    .sample(
        "tenement_start_time_seconds",
        &[],
        view::unix_ms(context.started_at) as f64 / 1000.0,
    );
    let active = view::kernel_counters(&context.monitor()).active;
    out.family(
        "tenement_kernel_counters_active",
        Kind::Gauge,
        "1 when the eBPF programs count instance activity, 0 when they are off (see /v1/status).",
    )
    .sample(
        "tenement_kernel_counters_active",
        &[],
        f64::from(u8::from(active)),
    );

    let instances = context.api.supervisor.instances();
    out.family(
        "tenement_instance_up",
        Kind::Gauge,
        "1 while the instance runs and passes its health check.",
    );
    for info in &instances {
        let up = matches!(info.state, InstanceState::Running | InstanceState::Degraded);
        out.sample(
            "tenement_instance_up",
            &labels(&info.name.to_string(), &info.name.service),
            f64::from(u8::from(up)),
        );
    }
    out.family(
        "tenement_instance_state",
        Kind::Gauge,
        "1 for the state the instance is in, 0 for the others.",
    );
    for info in &instances {
        let name = info.name.to_string();
        for state in STATES {
            out.sample(
                "tenement_instance_state",
                &[
                    ("instance", &name),
                    ("service", &info.name.service),
                    ("state", state.as_str()),
                ],
                f64::from(u8::from(info.state == state)),
            );
        }
    }
    out.family(
        "tenement_instance_restarts_total",
        Kind::Counter,
        "Restarts of the instance since tenement started it.",
    );
    for info in &instances {
        out.sample(
            "tenement_instance_restarts_total",
            &labels(&info.name.to_string(), &info.name.service),
            f64::from(info.restarts),
        );
    }
    out.family(
        "tenement_instance_weight",
        Kind::Gauge,
        "Traffic weight of the instance within its service, 0-100.",
    );
    for info in &instances {
        out.sample(
            "tenement_instance_weight",
            &labels(&info.name.to_string(), &info.name.service),
            f64::from(info.weight),
        );
    }
}

fn labels<'a>(instance: &'a str, service: &'a str) -> [(&'static str, &'a str); 2] {
    [("instance", instance), ("service", service)]
}
