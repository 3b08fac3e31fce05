//! Memory pressure: when the host runs short of memory, frozen instances (idle, holding
//! memory they are not using) are stopped first, least recently used first, one per check
//! while the pressure lasts. Running instances are never stopped for it.
//!
//! Pressure is the kernel's pressure stall information (`some avg10` of
//! `/proc/pressure/memory` and of tenement's instance subtree, whichever is higher) above
//! `memory_pressure_psi`, or `MemAvailable` under `memory_pressure_available_mb`. Tests
//! replace both readings with a file (`TENEMENT_MEMORY_PRESSURE_FILE`) so that they can
//! switch pressure on and off at will.

use std::{path::PathBuf, sync::Arc, time::Instant};

use super::{instance::StopKind, state::InstanceState, Shared};
use crate::{config::Settings, store::EventKind};

/// The environment variable naming the test hook's file.
pub const HOOK_VAR: &str = "TENEMENT_MEMORY_PRESSURE_FILE";

/// Where the pressure is read, and the thresholds.
pub struct Gauge {
    /// The test hook: the host is under pressure while this file holds `1`.
    hook: Option<PathBuf>,
    psi_limit: f64,
    available_limit_mb: u64,
    /// `memory.pressure` of the instance subtree (cgroup v2).
    subtree: Option<PathBuf>,
}

impl Gauge {
    pub fn new(settings: &Settings, subtree: Option<PathBuf>) -> Gauge {
        Gauge {
            hook: std::env::var_os(HOOK_VAR)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            psi_limit: settings.memory_pressure_psi,
            available_limit_mb: settings.memory_pressure_available_mb,
            subtree: subtree.map(|dir| dir.join("memory.pressure")),
        }
    }

    /// Why the host is under memory pressure now; `None` when it is not.
    pub fn reading(&self) -> Option<String> {
        if let Some(hook) = &self.hook {
            let forced = std::fs::read_to_string(hook).is_ok_and(|text| text.trim() == "1");
            return forced.then(|| format!("forced by {}", hook.display()));
        }
        if self.psi_limit > 0.0 {
            let psi = ["/proc/pressure/memory".into()]
                .iter()
                .chain(self.subtree.iter())
                .filter_map(|path: &PathBuf| std::fs::read_to_string(path).ok())
                .filter_map(|text| some_avg10(&text))
                .fold(None, |max: Option<f64>, v| {
                    Some(max.map_or(v, |m| m.max(v)))
                });
            if let Some(psi) = psi.filter(|&psi| psi > self.psi_limit) {
                return Some(format!(
                    "memory PSI some avg10 {psi:.2}% above memory_pressure_psi ({})",
                    self.psi_limit
                ));
            }
        }
        if self.available_limit_mb > 0 {
            let available = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| mem_available_mb(&text));
            if let Some(mb) = available.filter(|&mb| mb < self.available_limit_mb) {
                return Some(format!(
                    "MemAvailable {mb} MiB under memory_pressure_available_mb ({})",
                    self.available_limit_mb
                ));
            }
        }
        None
    }
}

/// `some avg10=N` of a PSI file.
fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|line| line.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// `MemAvailable` of `/proc/meminfo`, in MiB.
fn mem_available_mb(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

impl Shared {
    /// Under pressure, stops the frozen instance whose last activity is the oldest, and
    /// returns its stop (the next check waits for it). `None` when nothing was stopped.
    pub(super) fn relieve_pressure(
        self: &Arc<Self>,
        gauge: &Gauge,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let reason = gauge.reading()?;
        let mut frozen: Vec<(Instant, _)> = Vec::new();
        for instance in self.snapshot() {
            if instance.state() != InstanceState::Frozen {
                continue;
            }
            let kernel = self.kernel_traffic(&instance);
            let mut activity = instance.lock_activity();
            let last = activity.idle_since(kernel).unwrap_or(activity.last);
            drop(activity);
            frozen.push((last, instance));
        }
        let (_, instance) = frozen.into_iter().min_by_key(|(last, _)| *last)?;
        let detail =
            format!("memory pressure ({reason}): stopped while frozen, least recently used first");
        tracing::warn!("{}: {detail}", instance.name);
        self.logs.system(&instance.name, &detail);
        self.record(&instance, EventKind::IdleStopped, &detail);
        if let Err(err) = self.store.set_desired(&instance.name, false) {
            tracing::warn!("{err:#}");
        }
        self.update(&instance, |s| s.state = InstanceState::Stopping);
        let shared = self.clone();
        Some(tokio::spawn(async move {
            shared.stop_run(&instance, StopKind::Pressure).await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_psi_and_meminfo() {
        let psi = "some avg10=12.50 avg60=3.00 avg300=0.10 total=123\n\
                   full avg10=40.00 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(some_avg10(psi), Some(12.5));
        assert_eq!(some_avg10("garbage"), None);
        let meminfo =
            "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(mem_available_mb(meminfo), Some(2048));
        assert_eq!(mem_available_mb("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn the_hook_file_replaces_the_readings() {
        let dir = std::env::temp_dir().join(format!("pressure-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hook = dir.join("pressure");
        let gauge = Gauge {
            hook: Some(hook.clone()),
            // Would always be under pressure without the hook.
            psi_limit: 0.0,
            available_limit_mb: u64::MAX,
            subtree: None,
        };
        assert_eq!(gauge.reading(), None, "no file: no pressure");
        std::fs::write(&hook, "1\n").unwrap();
        assert!(gauge.reading().unwrap().starts_with("forced by "));
        std::fs::write(&hook, "0").unwrap();
        assert_eq!(gauge.reading(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn thresholds_of_zero_are_off() {
        let gauge = Gauge {
            hook: None,
            psi_limit: 0.0,
            available_limit_mb: 0,
            subtree: None,
        };
        assert_eq!(gauge.reading(), None);
        let starved = Gauge {
            available_limit_mb: u64::MAX,
            ..gauge
        };
        assert!(starved.reading().unwrap().starts_with("MemAvailable "));
    }
}
