//! `tenement doctor`: what this machine offers tenement, checked for real without a daemon
//! (a test cgroup is created and eBPF programs attached to it, namespaces are unshared in a
//! child, ports are bound). One line per check, `OK`, `WARN` or `FAIL`, with the fix.

mod cgroups;
mod host;
mod isolation;
mod kernel;

use std::{fmt, path::Path, process::ExitCode};

use crate::{
    config::{self, Config, Isolation},
    supervisor::cgroup::CgroupLayout,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// The result of one check.
#[derive(Debug)]
pub struct Check {
    pub status: Status,
    pub what: String,
    pub detail: String,
    pub fix: Option<String>,
    /// Extra lines printed under the check (e.g. each configuration error).
    pub notes: Vec<String>,
}

impl Check {
    fn new(status: Status, what: &str, detail: impl Into<String>, fix: Option<String>) -> Check {
        Check {
            status,
            what: what.to_string(),
            detail: detail.into(),
            fix,
            notes: Vec::new(),
        }
    }

    pub fn ok(what: &str, detail: impl Into<String>) -> Check {
        Check::new(Status::Ok, what, detail, None)
    }

    pub fn warn(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(Status::Warn, what, detail, Some(fix.into()))
    }

    pub fn fail(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(Status::Fail, what, detail, Some(fix.into()))
    }

    /// A WARN that becomes a FAIL when the configuration depends on the missing feature.
    pub fn missing(
        needed: bool,
        what: &str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        let status = if needed { Status::Fail } else { Status::Warn };
        Check::new(status, what, detail, Some(fix.into()))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "{status:<4} {}: {}", self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        for note in &self.notes {
            write!(f, "\n       {note}")?;
        }
        Ok(())
    }
}

/// What the configuration relies on, so a missing feature it uses is a FAIL, not a WARN.
#[derive(Default)]
pub struct Needs {
    pub namespaces: bool,
    pub sandbox: bool,
    /// Any memory, CPU or pids limit.
    pub limits: bool,
    /// Any `storage_quota_mb`.
    pub quotas: bool,
}

impl Needs {
    fn of(config: &Config) -> Needs {
        let services = config.service.values();
        let mut needs = Needs::default();
        for service in services {
            needs.namespaces |= service.isolation == Isolation::Namespace;
            needs.sandbox |= service.isolation == Isolation::Sandbox;
            needs.limits |= service.memory_limit_mb.is_some()
                || service.cpu_weight.is_some()
                || service.pids_max.is_some();
            needs.quotas |= service.storage_quota_mb.is_some();
        }
        needs
    }
}

/// Runs every check, prints them, and fails when any check failed.
pub fn run(explicit_config: Option<&Path>) -> ExitCode {
    let (config_check, config) = configuration(explicit_config);
    let needs = Needs::of(&config);
    let mut checks = vec![config_check, host::privileges()];
    checks.extend([kernel::version(), kernel::btf()]);
    match CgroupLayout::detect() {
        Ok(layout) => {
            checks.extend(kernel::ebpf(&layout));
            checks.extend(cgroups::checks(&layout, &needs));
        }
        Err(err) => checks.push(Check::fail(
            "cgroups",
            format!("cannot read /proc/self/mounts or /proc/self/cgroup: {err}"),
            "mount /proc",
        )),
    }
    checks.push(isolation::namespaces(&needs));
    checks.extend(isolation::runsc(&config.settings, &needs));
    checks.extend(host::listeners(&config.settings));
    checks.push(host::data_dir(&config.settings.data_dir));
    checks.push(host::storage_quotas(needs.quotas));

    for check in &checks {
        println!("{check}");
    }
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    println!(
        "\n{} checks: {} ok, {}, {}",
        checks.len(),
        count(Status::Ok),
        plural(warned, "warning"),
        plural(failed, "failure")
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn plural(count: usize, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

/// A path as people write it: `/sys/fs/cgroup/cpu`, not `/sys/fs/cgroup/cpu/`.
fn tidy(path: &Path) -> String {
    path.components()
        .collect::<std::path::PathBuf>()
        .display()
        .to_string()
}

/// The configuration the other checks use, and a check saying where it came from.
fn configuration(explicit: Option<&Path>) -> (Check, Config) {
    let path = match config::locate(explicit) {
        Ok(path) => path,
        Err(err) => {
            return (
                Check::warn(
                    "config",
                    format!("{err:#}; the checks below use the defaults"),
                    "pass --config FILE or create ./tenement.toml",
                ),
                Config::default(),
            )
        }
    };
    match Config::load(&path) {
        Ok(config) => (
            Check::ok("config", format!("{}: ok", path.display())),
            config,
        ),
        Err(err) => {
            let mut check = match err.downcast_ref::<config::ConfigErrors>() {
                Some(errors) => {
                    let mut check = Check::fail(
                        "config",
                        format!("{} has {} errors", path.display(), errors.len()),
                        "correct them (`tenement config check` lists them too)",
                    );
                    check.notes = errors.iter().map(ToString::to_string).collect();
                    check
                }
                None => Check::fail(
                    "config",
                    format!("{err:#}"),
                    "pass a readable --config FILE",
                ),
            };
            check.detail.push_str("; the checks below use the defaults");
            (check, Config::default())
        }
    }
}
