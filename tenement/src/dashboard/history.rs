//! What the dashboard remembers between pages: one sample per instance every second (request
//! rate, since when it sleeps, when it last woke) and one point every
//! [`POINT_EVERY`] for the last hour's sparklines. The numbers themselves are the
//! supervisor's [`InstanceStats`](crate::monitor::InstanceStats) and the proxy's request
//! counters, the same ones the API and `/metrics` show.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, SystemTime},
};

use crate::{api::Context, config::InstanceName, proxy::RequestMetrics};

use super::host;

pub const TICK: Duration = Duration::from_secs(1);
/// One sparkline point per this many ticks: 360 points make the last hour.
pub const POINT_EVERY: u32 = 10;
pub const POINTS_KEPT: usize = 360;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    pub time_ms: u64,
    pub cpu_percent: f32,
    pub memory_bytes: f32,
    pub requests_per_sec: f32,
    pub rx_per_sec: f32,
    pub tx_per_sec: f32,
}

#[derive(Clone, Debug, Default)]
pub struct Track {
    /// Whether it had a process at the last sample: an instance already asleep when this
    /// daemon first saw it has no known bedtime.
    was_running: bool,
    requests_total: Option<u64>,
    pub requests_per_sec: Option<f64>,
    /// When the instance last stopped having a process (as this daemon saw it).
    pub asleep_since: Option<SystemTime>,
    /// When a process last started for it.
    pub last_wake: Option<SystemTime>,
    pub points: VecDeque<Point>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Host {
    pub cpu_percent: Option<f64>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
}

#[derive(Default)]
pub struct History {
    tracks: Mutex<HashMap<InstanceName, Track>>,
    host: Mutex<Host>,
    /// The proxy's request counters, once the front door has started.
    pub requests: OnceLock<Arc<RequestMetrics>>,
}

impl History {
    pub fn track(&self, name: &InstanceName) -> Option<Track> {
        self.tracks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Calls `read` with every instance's track, under one lock (for the overview's rows).
    pub fn with_tracks<T>(&self, read: impl FnOnce(&HashMap<InstanceName, Track>) -> T) -> T {
        read(&self.tracks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn host(&self) -> Host {
        *self.host.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Samples every [`TICK`] until the daemon shuts down.
pub async fn run(context: Weak<Context>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = match context.upgrade() {
        Some(context) => context.shutdown.clone(),
        None => return,
    };
    let mut count: u32 = 0;
    let mut cpu_before = host::cpu_ticks();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(context) = context.upgrade() else {
            return;
        };
        let cpu_now = host::cpu_ticks();
        let memory = host::memory();
        *context
            .dashboard
            .history
            .host
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Host {
            cpu_percent: cpu_before
                .zip(cpu_now)
                .and_then(|(a, b)| host::cpu_percent(a, b)),
            memory_used: memory.map(|(used, _)| used),
            memory_total: memory.map(|(_, total)| total),
        };
        cpu_before = cpu_now;
        sample(&context, count.is_multiple_of(POINT_EVERY));
        count = count.wrapping_add(1);
    }
}

fn sample(context: &Context, take_point: bool) {
    let history = &context.dashboard.history;
    let requests: HashMap<InstanceName, u64> = history
        .requests
        .get()
        .map(|metrics| {
            metrics
                .instances()
                .into_iter()
                .map(|(name, slot)| {
                    let total = slot.outcomes.read().iter().map(|(_, count)| count).sum();
                    (name, total)
                })
                .collect()
        })
        .unwrap_or_default();
    let now = SystemTime::now();
    let now_ms = crate::api::view::unix_ms(now);
    let supervisor = &context.api.supervisor;
    let instances = supervisor.instances();
    let mut tracks = history.tracks.lock().unwrap_or_else(|p| p.into_inner());
    tracks.retain(|name, _| instances.iter().any(|info| &info.name == name));
    for info in &instances {
        let track = tracks.entry(info.name.clone()).or_default();
        let total = requests.get(&info.name).copied();
        track.requests_per_sec = match (track.requests_total, total) {
            (Some(before), Some(now)) => {
                Some(now.saturating_sub(before) as f64 / TICK.as_secs_f64())
            }
            _ => None,
        };
        track.requests_total = total;
        if info.pid.is_some() {
            track.asleep_since = None;
            if info.started_at.is_some() {
                track.last_wake = info.started_at;
            }
        } else if track.was_running {
            track.asleep_since = Some(now);
        }
        track.was_running = info.pid.is_some();
        if take_point && info.pid.is_some() {
            let stats = supervisor.stats(&info.name);
            let rates = stats.as_ref().and_then(|stats| stats.rates.as_ref());
            track.points.push_back(Point {
                time_ms: now_ms,
                cpu_percent: rates.map_or(0.0, |rates| rates.cpu_percent as f32),
                memory_bytes: stats
                    .as_ref()
                    .and_then(|stats| stats.memory_bytes)
                    .unwrap_or(0) as f32,
                requests_per_sec: track.requests_per_sec.unwrap_or(0.0) as f32,
                rx_per_sec: rates.map_or(0.0, |rates| rates.rx_bytes_per_sec as f32),
                tx_per_sec: rates.map_or(0.0, |rates| rates.tx_bytes_per_sec as f32),
            });
            while track.points.len() > POINTS_KEPT {
                track.points.pop_front();
            }
        }
    }
}
