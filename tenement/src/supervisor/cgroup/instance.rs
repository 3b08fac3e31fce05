//! One instance's cgroup: a directory in each hierarchy tenement uses, its limits, the way a
//! child joins it before exec, and the end of it (kill everything inside, wait, remove).

use std::{
    fs::OpenOptions,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    files::{self, Version},
    freezer::{self, Freezer},
    layout::V1_FREEZER,
};

/// Resource limits of one instance, as configured for its service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// cgroup v2 scale: 1-10000, 100 is the default share.
    pub cpu_weight: Option<u64>,
    pub pids_max: Option<u64>,
}

/// A cgroup directory and the controllers tenement uses through it.
#[derive(Clone, Debug)]
pub struct Group {
    pub dir: PathBuf,
    pub version: Version,
    pub controllers: Vec<String>,
}

impl Group {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

#[derive(Debug)]
pub struct InstanceCgroup {
    groups: Vec<Group>,
}

impl InstanceCgroup {
    /// Creates the directories (emptying and reusing any of the same name) and writes the
    /// limits. On error nothing is left behind.
    pub(super) fn create(groups: Vec<Group>, limits: &Limits) -> Result<InstanceCgroup> {
        let cgroup = InstanceCgroup { groups };
        let made = cgroup.make(limits);
        if made.is_err() {
            cgroup.kill_all();
            let _ = cgroup.remove();
        }
        made.map(|()| cgroup)
    }

    /// Groups found on disk (a crashed run's leftovers).
    pub(super) fn existing(groups: Vec<Group>) -> InstanceCgroup {
        InstanceCgroup { groups }
    }

    fn make(&self, limits: &Limits) -> Result<()> {
        for group in &self.groups {
            if group.dir.is_dir() && !files::pids(&group.dir)?.is_empty() {
                bail!(
                    "cgroup {} still holds processes of an earlier start",
                    group.dir.display()
                );
            }
            std::fs::create_dir_all(&group.dir)
                .with_context(|| format!("creating cgroup {}", group.dir.display()))?;
            set_limits(group, limits)?;
        }
        Ok(())
    }

    /// The cgroup v2 id (the directory's inode): what the eBPF programs key by.
    pub fn id(&self) -> Option<u64> {
        let group = self.groups.iter().find(|g| g.version == Version::V2)?;
        std::fs::metadata(&group.dir).ok().map(|m| m.ino())
    }

    /// The main directory: the v2 group when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.groups.first().map(|g| g.dir.as_path())
    }

    /// The group whose memory files count the instance's memory: the one with the memory
    /// controller (v1 on hybrid hosts), else the v2 group.
    pub fn memory_dir(&self) -> Option<&Path> {
        self.groups
            .iter()
            .find(|g| g.has("memory"))
            .or_else(|| self.groups.iter().find(|g| g.version == Version::V2))
            .map(|g| g.dir.as_path())
    }

    /// `cgroup.procs` of every group, opened for writing before the child is forked: the
    /// child writes "0" to each (which moves the writer) before it execs, so it never runs a
    /// single instruction of the tenant's program outside its cgroup.
    pub fn join_files(&self) -> Result<Vec<OwnedFd>> {
        self.groups
            .iter()
            .map(|group| {
                let path = group.dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .with_context(|| format!("opening {}", path.display()))
            })
            .collect()
    }

    /// What freezes the instance: the v2 group's `cgroup.freeze`, else the v1 freezer
    /// controller's group; `None` when neither exists.
    pub fn freezer(&self) -> Option<Freezer> {
        let v2 = self
            .groups
            .iter()
            .filter(|g| g.version == Version::V2)
            .find_map(|g| Freezer::v2(&g.dir));
        v2.or_else(|| {
            self.groups
                .iter()
                .filter(|g| g.version == Version::V1 && g.has(V1_FREEZER))
                .find_map(|g| Freezer::v1(&g.dir))
        })
    }

    /// Every process in any of the groups.
    pub fn pids(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self
            .groups
            .iter()
            .flat_map(|g| files::pids(&g.dir).unwrap_or_default())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// SIGKILL to every process inside, those that left the process group or session too.
    pub fn kill_all(&self) {
        for group in &self.groups {
            if group.version == Version::V1 && group.has(V1_FREEZER) {
                // A process frozen by the v1 freezer ignores SIGKILL until thawed.
                freezer::thaw_any(&group.dir);
            }
            let kill = group.dir.join("cgroup.kill");
            if group.version == Version::V2 && kill.exists() && files::write(&kill, "1").is_ok() {
                continue;
            }
            for pid in files::pids(&group.dir).unwrap_or_default() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Waits until no process is left, killing again what appears meanwhile (a fork racing
    /// the first kill). Fails, naming the survivors, after `timeout`.
    pub async fn wait_empty(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.pids();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "cgroup {} still holds processes {left:?} after {}s",
                    self.path()
                        .map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    timeout.as_secs()
                );
            }
            self.kill_all();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes every directory; they must be empty.
    pub fn remove(&self) -> Result<()> {
        let mut first_error = None;
        for group in &self.groups {
            if let Err(err) = files::remove_dir(&group.dir) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// How many times the kernel's OOM killer killed a process of this instance.
    pub fn oom_kills(&self) -> u64 {
        let Some(group) = self.groups.iter().find(|g| g.has("memory")) else {
            return 0;
        };
        let file = match group.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        files::keyed_value(&group.dir.join(file), "oom_kill")
    }
}

/// Writes the limits a group's controllers are responsible for. A missing limit leaves the
/// kernel default (unlimited, the default CPU share).
fn set_limits(group: &Group, limits: &Limits) -> Result<()> {
    let dir = &group.dir;
    if let (true, Some(bytes)) = (group.has("memory"), limits.memory_bytes) {
        match group.version {
            Version::V2 => {
                files::write(&dir.join("memory.max"), &bytes.to_string())?;
                // Without this the limit could be dodged by swapping.
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    files::write(&swap, "0")?;
                }
            }
            Version::V1 => {
                files::write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                let swap = dir.join("memory.memsw.limit_in_bytes");
                if swap.exists() {
                    files::write(&swap, &bytes.to_string())?;
                }
            }
        }
    }
    if let (true, Some(weight)) = (group.has("cpu"), limits.cpu_weight) {
        match group.version {
            Version::V2 => files::write(
                &dir.join("cpu.weight"),
                &weight.clamp(1, 10_000).to_string(),
            )?,
            Version::V1 => files::write(&dir.join("cpu.shares"), &v1_shares(weight).to_string())?,
        }
    }
    if let (true, Some(max)) = (group.has("pids"), limits.pids_max) {
        files::write(&dir.join("pids.max"), &max.to_string())?;
    }
    Ok(())
}

/// Rewrites the limits of a group that exists (a reload changed them): a limit no longer
/// configured goes back to the kernel's default, so the group ends up as a new start would
/// make it. Lowering `memory.max` below the usage makes the kernel reclaim (or OOM-kill).
pub(super) fn rewrite_limits(group: &Group, limits: &Limits) -> Result<()> {
    let defaults = |version: Version| match version {
        Version::V2 => ("max", "100"),
        Version::V1 => ("-1", "1024"),
    };
    let (unlimited, default_share) = defaults(group.version);
    let dir = &group.dir;
    if group.has("memory") {
        match group.version {
            Version::V2 if limits.memory_bytes.is_none() => {
                files::write(&dir.join("memory.max"), unlimited)?;
            }
            Version::V2 => {}
            Version::V1 => {
                // memsw must stay >= the memory limit: lift it first, `set_limits` lowers
                // it again to the new limit.
                let swap = dir.join("memory.memsw.limit_in_bytes");
                if swap.exists() {
                    files::write(&swap, unlimited)?;
                }
                files::write(&dir.join("memory.limit_in_bytes"), unlimited)?;
            }
        }
    }
    if group.has("cpu") && limits.cpu_weight.is_none() {
        let file = match group.version {
            Version::V2 => "cpu.weight",
            Version::V1 => "cpu.shares",
        };
        files::write(&dir.join(file), default_share)?;
    }
    if group.has("pids") && limits.pids_max.is_none() {
        files::write(&dir.join("pids.max"), "max")?;
    }
    set_limits(group, limits)
}

/// cgroup v1 `cpu.shares` for a v2 weight: 100 (the v2 default) is 1024 (the v1 default).
fn v1_shares(weight: u64) -> u64 {
    (weight.clamp(1, 10_000) * 1024 / 100).clamp(2, 262_144)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_weight_scales_to_v1_shares() {
        assert_eq!(v1_shares(100), 1024);
        assert_eq!(v1_shares(50), 512);
        assert_eq!(v1_shares(1), 10);
        assert_eq!(v1_shares(10_000), 102_400);
        assert_eq!(v1_shares(0), 10);
    }

    /// A group directory of plain files: what `rewrite_limits` writes, without a kernel.
    fn fake_group(dir: &Path, version: Version) -> Group {
        std::fs::create_dir_all(dir).unwrap();
        if version == Version::V1 {
            std::fs::write(dir.join("memory.memsw.limit_in_bytes"), "67108864").unwrap();
        }
        Group {
            dir: dir.to_path_buf(),
            version,
            controllers: vec!["memory".into(), "cpu".into(), "pids".into()],
        }
    }

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap()
    }

    #[test]
    fn rewritten_limits_set_new_values_and_reset_removed_ones() {
        let temp = crate::test_support::TempDir::new("limits");
        let v2 = fake_group(&temp.0.join("v2"), Version::V2);
        let limits = Limits {
            memory_bytes: Some(128 << 20),
            cpu_weight: None,
            pids_max: Some(64),
        };
        rewrite_limits(&v2, &limits).unwrap();
        assert_eq!(read(&v2.dir, "memory.max"), "134217728");
        assert_eq!(read(&v2.dir, "cpu.weight"), "100");
        assert_eq!(read(&v2.dir, "pids.max"), "64");
        rewrite_limits(&v2, &Limits::default()).unwrap();
        assert_eq!(read(&v2.dir, "memory.max"), "max");
        assert_eq!(read(&v2.dir, "pids.max"), "max");

        let v1 = fake_group(&temp.0.join("v1"), Version::V1);
        rewrite_limits(&v1, &limits).unwrap();
        assert_eq!(read(&v1.dir, "memory.limit_in_bytes"), "134217728");
        assert_eq!(read(&v1.dir, "memory.memsw.limit_in_bytes"), "134217728");
        assert_eq!(read(&v1.dir, "cpu.shares"), "1024");
        rewrite_limits(&v1, &Limits::default()).unwrap();
        assert_eq!(read(&v1.dir, "memory.limit_in_bytes"), "-1");
        assert_eq!(read(&v1.dir, "memory.memsw.limit_in_bytes"), "-1");
    }
}
