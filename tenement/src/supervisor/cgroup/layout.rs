//! Which cgroup hierarchies this host has, where tenement sits in each, and which resource
//! controllers it can use there. Pure cgroup v2 is the main target; hybrid hosts (v2 for eBPF,
//! v1 for memory/cpu/pids) and pure v1 are recognised too.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

/// The controllers tenement sets limits with.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The cgroup v1 controller that freezes instances on hosts without cgroup v2 (where v2 is
/// mounted, its built-in `cgroup.freeze` does it).
pub const V1_FREEZER: &str = "freezer";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The cgroup v2 hierarchy, if mounted: where eBPF programs attach.
    pub unified: Option<Hierarchy>,
    /// cgroup v1 hierarchies by controller name (only the ones in `CONTROLLERS`).
    pub v1: BTreeMap<String, Hierarchy>,
}

/// One mounted hierarchy and the cgroup this process is in there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// This process's cgroup, relative to the mount (`""` is the root).
    pub own: PathBuf,
    /// Controllers usable in this hierarchy (for v2: listed in `cgroup.controllers` of ours).
    pub controllers: Vec<String>,
}

impl Hierarchy {
    /// Absolute path of this process's own cgroup.
    pub fn own_dir(&self) -> PathBuf {
        self.mount.join(&self.own)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// Only cgroup v2.
    Unified,
    /// cgroup v2 mounted beside v1 controller hierarchies.
    Hybrid,
    /// Only cgroup v1: no eBPF cgroup attachment point.
    Legacy,
    None,
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutKind::Unified => "cgroup v2 (unified)",
            LayoutKind::Hybrid => "hybrid (cgroup v2 + v1 controllers)",
            LayoutKind::Legacy => "cgroup v1 (legacy)",
            LayoutKind::None => "no cgroup filesystem",
        })
    }
}

impl CgroupLayout {
    /// Reads /proc/self/mounts and /proc/self/cgroup.
    pub fn detect() -> std::io::Result<CgroupLayout> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let membership = std::fs::read_to_string("/proc/self/cgroup")?;
        Ok(Self::from_proc(&mounts, &membership, |dir| {
            std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
        }))
    }

    /// The parsing behind `detect`, with the file reads passed in so it can be tested.
    pub fn from_proc(
        mounts: &str,
        membership: &str,
        v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> CgroupLayout {
        // /proc/self/cgroup: "0::/path" for v2, "N:ctrl,ctrl:/path" for v1.
        let mut v2_own = None;
        let mut v1_own: BTreeMap<String, PathBuf> = BTreeMap::new();
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let relative = PathBuf::from(path.trim_start_matches('/'));
            if controllers.is_empty() {
                v2_own = Some(relative);
            } else {
                for controller in controllers.split(',') {
                    v1_own.insert(controller.to_string(), relative.clone());
                }
            }
        }

        let mut layout = CgroupLayout {
            unified: None,
            v1: BTreeMap::new(),
        };
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 {
                continue;
            }
            let (mount, fstype, options) = (PathBuf::from(fields[1]), fields[2], fields[3]);
            match fstype {
                "cgroup2" if layout.unified.is_none() => {
                    let own = v2_own.clone().unwrap_or_default();
                    let controllers = v2_controllers(&mount.join(&own))
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter(|c| CONTROLLERS.contains(c))
                        .map(str::to_string)
                        .collect();
                    layout.unified = Some(Hierarchy {
                        mount,
                        own,
                        controllers,
                    });
                }
                "cgroup" => {
                    for option in options.split(',') {
                        let wanted = CONTROLLERS.contains(&option) || option == V1_FREEZER;
                        if wanted && !layout.v1.contains_key(option) {
                            layout.v1.insert(
                                option.to_string(),
                                Hierarchy {
                                    mount: mount.clone(),
                                    own: v1_own.get(option).cloned().unwrap_or_default(),
                                    controllers: vec![option.to_string()],
                                },
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        layout
    }

    pub fn kind(&self) -> LayoutKind {
        match (&self.unified, self.v1.is_empty()) {
            (Some(_), true) => LayoutKind::Unified,
            (Some(_), false) => LayoutKind::Hybrid,
            (None, false) => LayoutKind::Legacy,
            (None, true) => LayoutKind::None,
        }
    }

    /// Where a controller can be used: v2 when the unified hierarchy offers it, else v1.
    pub fn controller(&self, name: &str) -> Option<ControllerHome<'_>> {
        if let Some(unified) = &self.unified {
            if unified.controllers.iter().any(|c| c == name) {
                return Some(ControllerHome::Unified(unified));
            }
        }
        self.v1.get(name).map(ControllerHome::V1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerHome<'a> {
    Unified(&'a Hierarchy),
    V1(&'a Hierarchy),
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,nosuid,nodev,noexec,relatime,cpu 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
";
    const HYBRID_MEMBERSHIP: &str = "\
8:pids:/
4:memory:/process_api/abc
1:cpu:/
0::/
";

    #[test]
    fn hybrid_host() {
        let layout =
            CgroupLayout::from_proc(HYBRID_MOUNTS, HYBRID_MEMBERSHIP, |_| Some(String::new()));
        assert_eq!(layout.kind(), LayoutKind::Hybrid);
        let Some(ControllerHome::V1(memory)) = layout.controller("memory") else {
            panic!("memory should be on v1");
        };
        assert_eq!(
            memory.own_dir(),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            layout.unified.as_ref().unwrap().own_dir(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn unified_host_under_systemd() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        let membership = "0::/system.slice/tenement.service\n";
        let layout = CgroupLayout::from_proc(mounts, membership, |dir| {
            assert_eq!(
                dir,
                Path::new("/sys/fs/cgroup/system.slice/tenement.service")
            );
            Some("cpuset cpu io memory pids".to_string())
        });
        assert_eq!(layout.kind(), LayoutKind::Unified);
        assert!(matches!(
            layout.controller("memory"),
            Some(ControllerHome::Unified(_))
        ));
        assert!(matches!(
            layout.controller("pids"),
            Some(ControllerHome::Unified(_))
        ));
    }
}
