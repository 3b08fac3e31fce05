//! Freezing an instance's processes in place: the cgroup v2 freezer (`cgroup.freeze`,
//! confirmed by `frozen 1` in `cgroup.events`) or, on hosts with cgroup v1 only, the v1
//! `freezer` controller (`freezer.state`). A frozen process keeps its memory and sockets
//! and gets no CPU time; thawing resumes it where it was.
//!
//! The two differ where it matters for tearing down: a process frozen by the v2 freezer
//! still dies of SIGKILL (and `cgroup.kill` works), one frozen by the v1 freezer does not
//! until it is thawed. Whoever stops an instance thaws it first either way, so that its
//! SIGTERM is delivered too.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

use super::files::{self, Version};

/// One instance's freezer: the group directory whose processes it freezes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freezer {
    dir: PathBuf,
    version: Version,
}

#[derive(Debug, Error)]
pub enum FreezeError {
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: &'static str,
        source: std::io::Error,
    },
    /// The kernel did not report the group frozen in time (a process in uninterruptible
    /// sleep, e.g. on a hung file system, holds a v1 freeze up): it was thawed again.
    #[error("{} was not frozen after {}ms; thawed again", dir.display(), after.as_millis())]
    NotFrozen { dir: PathBuf, after: Duration },
}

impl Freezer {
    /// The v2 freezer of `dir` when it has one (Linux 5.2+), else `None`.
    pub fn v2(dir: &Path) -> Option<Freezer> {
        dir.join("cgroup.freeze").exists().then(|| Freezer {
            dir: dir.to_path_buf(),
            version: Version::V2,
        })
    }

    /// The v1 `freezer` controller's group `dir`.
    pub fn v1(dir: &Path) -> Option<Freezer> {
        dir.join("freezer.state").exists().then(|| Freezer {
            dir: dir.to_path_buf(),
            version: Version::V1,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Asks the kernel to freeze the group; [`Freezer::wait_frozen`] confirms it.
    pub fn freeze(&self) -> Result<(), FreezeError> {
        match self.version {
            Version::V2 => self.write("cgroup.freeze", "1"),
            Version::V1 => self.write("freezer.state", "FROZEN"),
        }
    }

    /// Thaws the group. The processes run again as soon as the write returns; nothing needs
    /// to wait for it.
    pub fn thaw(&self) -> Result<(), FreezeError> {
        match self.version {
            Version::V2 => self.write("cgroup.freeze", "0"),
            Version::V1 => self.write("freezer.state", "THAWED"),
        }
    }

    /// Whether every process of the group is frozen now (v1: `FROZEN`, not `FREEZING`).
    pub fn is_frozen(&self) -> bool {
        match self.version {
            Version::V2 => files::keyed_value(&self.dir.join("cgroup.events"), "frozen") == 1,
            Version::V1 => std::fs::read_to_string(self.dir.join("freezer.state"))
                .is_ok_and(|state| state.trim() == "FROZEN"),
        }
    }

    /// Freezes the group and waits up to `timeout` until the kernel reports every process
    /// frozen. A group that does not get there is thawed again.
    pub async fn freeze_and_wait(&self, timeout: Duration) -> Result<(), FreezeError> {
        self.freeze()?;
        let began = Instant::now();
        let mut pause = Duration::from_micros(200);
        while !self.is_frozen() {
            if began.elapsed() >= timeout {
                let _ = self.thaw();
                return Err(FreezeError::NotFrozen {
                    dir: self.dir.clone(),
                    after: timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &'static str) -> Result<(), FreezeError> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).map_err(|source| FreezeError::Write {
            path,
            value,
            source,
        })
    }
}

/// Thaws whatever freezer `group` has (v2 `cgroup.freeze`, v1 `freezer.state`), ignoring
/// errors: for teardown paths that must not leave a process frozen (a v1-frozen process
/// does not die of SIGKILL).
pub fn thaw_any(group: &Path) {
    for freezer in [Freezer::v2(group), Freezer::v1(group)]
        .into_iter()
        .flatten()
    {
        let _ = freezer.thaw();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Freezes a real busy process in a group of its own below `parent`, checks that it gets
    /// no CPU time while frozen and runs again once thawed. Skipped without the hierarchy
    /// (not root, or no such mount).
    async fn freezes_a_busy_process(parent: &str, make: fn(&Path) -> Option<Freezer>) {
        let parent = Path::new(parent);
        if !parent.is_dir() || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: no {} or not root", parent.display());
            return;
        }
        let dir = parent.join(format!("tenement-freezer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let freezer = make(&dir).expect("a freezer in the new group");
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg("while :; do :; done")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let cpu_ticks = || -> u64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let after = stat.rsplit_once(')').unwrap().1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        };
        let result = async {
            freezer.freeze_and_wait(Duration::from_secs(5)).await?;
            assert!(freezer.is_frozen());
            let before = cpu_ticks();
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(cpu_ticks(), before, "a frozen process got CPU time");
            freezer.thaw()?;
            let thawed = cpu_ticks();
            let deadline = Instant::now() + Duration::from_secs(10);
            while cpu_ticks() == thawed && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(cpu_ticks() > thawed, "a thawed process did not run again");
            assert!(!freezer.is_frozen());
            Ok::<(), FreezeError>(())
        }
        .await;
        // A v1-frozen process ignores SIGKILL: thaw before killing, as teardown does.
        thaw_any(&dir);
        let _ = child.kill();
        let _ = child.wait();
        let _ = files::remove_dir(&dir);
        result.unwrap();
    }

    #[test]
    fn a_group_without_freezer_files_has_no_freezer_and_a_gone_group_fails_by_name() {
        let dir = std::env::temp_dir().join(format!("freezer-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Freezer::v2(&dir), None);
        assert_eq!(Freezer::v1(&dir), None);
        std::fs::write(dir.join("cgroup.freeze"), "0").unwrap();
        let freezer = Freezer::v2(&dir).expect("a v2 freezer file");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = freezer.freeze().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "writing \"1\" to {}",
                dir.join("cgroup.freeze").display()
            )),
            "{err}"
        );
        assert!(!freezer.is_frozen());
    }

    #[tokio::test]
    async fn v2_freezer_stops_and_resumes_a_process() {
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|dir| {
                Path::new(dir).join("cgroup.procs").exists()
                    && Path::new(dir).join("cgroup.subtree_control").exists()
            });
        match unified {
            Some(dir) => freezes_a_busy_process(dir, Freezer::v2).await,
            None => eprintln!("skipped: no cgroup v2 hierarchy"),
        }
    }

    #[tokio::test]
    async fn v1_freezer_stops_and_resumes_a_process() {
        freezes_a_busy_process("/sys/fs/cgroup/freezer", Freezer::v1).await;
    }
}
