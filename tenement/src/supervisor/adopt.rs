//! At start: which instances of an earlier tenement are still running and can be adopted
//! (same process, same cgroup, output pipes handed over by its guard), and which groups are
//! leftovers to clean. An instance is found by its cgroup (the group named after it) and the
//! store's record of its process (pid and start time); it is watched through a pidfd.

use std::{collections::BTreeMap, os::fd::OwnedFd};

use anyhow::Result;

use super::{
    cgroup::{CgroupTree, InstanceCgroup},
    guard_link::log_name,
    spawner::Child,
};
use crate::{
    config::{Config, InstanceName},
    held::HeldFds,
    logs::Stream,
    store::{RunRecord, Store},
};

/// A running instance this tenement takes over.
pub struct Adoption {
    pub record: RunRecord,
    pub cgroup: InstanceCgroup,
    pub child: Child,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What [`sort`] found.
#[derive(Default)]
pub struct Sorted {
    pub adopted: BTreeMap<InstanceName, Adoption>,
    /// Groups that held processes and were not adopted (now killed and removed), each with
    /// the reason.
    pub killed: Vec<String>,
}

/// Sorts the instance groups of an earlier run: adoptable ones are taken (with their output
/// pipes out of `held`), the others are killed and removed. Records of processes that are
/// gone are dropped from the store.
pub async fn sort(
    tree: &CgroupTree,
    store: &Store,
    config: &Config,
    held: &HeldFds,
) -> Result<Sorted> {
    let mut records: BTreeMap<String, (InstanceName, RunRecord)> = store
        .running()?
        .into_iter()
        .map(|(name, record)| (name.slug(), (name, record)))
        .collect();
    let mut sorted = Sorted::default();
    for (slug, cgroup) in tree.leftovers()? {
        let found = records.remove(&slug);
        let reason = match found {
            Some((name, record)) => match adoptable(&name, &record, &cgroup, config, held) {
                Ok((child, stdout, stderr)) => {
                    sorted.adopted.insert(
                        name,
                        Adoption {
                            record,
                            cgroup,
                            child,
                            stdout,
                            stderr,
                        },
                    );
                    continue;
                }
                Err(reason) => {
                    let _ = store.clear_running(&name);
                    format!("{name}: {reason}")
                }
            },
            None => format!("{slug}: no record of its process"),
        };
        if CgroupTree::discard(&cgroup).await? {
            sorted.killed.push(reason);
        }
    }
    for (name, _) in records.into_values() {
        let _ = store.clear_running(&name);
    }
    Ok(sorted)
}

fn adoptable(
    name: &InstanceName,
    record: &RunRecord,
    cgroup: &InstanceCgroup,
    config: &Config,
    held: &HeldFds,
) -> Result<(Child, OwnedFd, OwnedFd), String> {
    if !config.service.contains_key(&name.service) {
        return Err(format!("service {:?} is not configured", name.service));
    }
    if !cgroup.pids().contains(&(record.pid as i32)) {
        return Err(format!("its process {} has ended", record.pid));
    }
    let (out, err) = (
        log_name(name, Stream::Stdout),
        log_name(name, Stream::Stderr),
    );
    if !held.contains(&out) || !held.contains(&err) {
        return Err(
            "its output pipes were not handed over (the earlier tenement's guard is gone)"
                .to_string(),
        );
    }
    let child = Child::adopt(record.pid, record.start_ticks)
        .map_err(|e| format!("watching process {}: {e}", record.pid))?;
    match (held.take(&out), held.take(&err)) {
        (Some(stdout), Some(stderr)) => Ok((child, stdout, stderr)),
        _ => Err("its output pipes were taken".to_string()),
    }
}
