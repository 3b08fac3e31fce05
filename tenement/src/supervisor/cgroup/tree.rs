//! tenement's own part of each cgroup hierarchy: a subtree `tenement-{hash of data_dir}`
//! inside the cgroup tenement runs in, holding one group per instance. Two tenements with
//! different data directories never touch each other's groups.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{
    files::{self, Version},
    instance::{Group, InstanceCgroup, Limits},
    layout::V1_FREEZER,
    CgroupLayout, ControllerHome, LayoutKind, CONTROLLERS,
};

/// The subtree in every hierarchy tenement uses.
#[derive(Clone, Debug)]
pub struct CgroupTree {
    roots: Vec<Group>,
    kind: LayoutKind,
}

impl CgroupTree {
    /// Finds the hierarchies and creates tenement's subtree in each.
    pub fn create(layout: &CgroupLayout, data_dir: &Path) -> Result<CgroupTree> {
        let tree = CgroupTree::plan(layout, data_dir);
        for root in &tree.roots {
            std::fs::create_dir_all(&root.dir)
                .with_context(|| format!("creating cgroup {}", root.dir.display()))?;
            if root.version == Version::V2 && !root.controllers.is_empty() {
                enable_v2_controllers(root)?;
            }
        }
        Ok(tree)
    }

    /// Where the subtree goes: in the cgroup v2 hierarchy (the eBPF attachment point, and
    /// home of every controller it offers), plus the v1 hierarchies of the controllers v2
    /// does not offer on this host.
    pub fn plan(layout: &CgroupLayout, data_dir: &Path) -> CgroupTree {
        let name = subtree_name(data_dir);
        let mut roots: Vec<Group> = Vec::new();
        if let Some(unified) = &layout.unified {
            let controllers = CONTROLLERS
                .iter()
                .filter(|c| matches!(layout.controller(c), Some(ControllerHome::Unified(_))))
                .map(|c| c.to_string())
                .collect();
            roots.push(Group {
                dir: unified.own_dir().join(&name),
                version: Version::V2,
                controllers,
            });
        }
        for controller in CONTROLLERS {
            let Some(ControllerHome::V1(hierarchy)) = layout.controller(controller) else {
                continue;
            };
            let dir = hierarchy.own_dir().join(&name);
            match roots.iter_mut().find(|root| root.dir == dir) {
                Some(root) => root.controllers.push(controller.to_string()),
                None => roots.push(Group {
                    dir,
                    version: Version::V1,
                    controllers: vec![controller.to_string()],
                }),
            }
        }
        // Freezing: the v2 group's own `cgroup.freeze` where there is a v2 hierarchy, else
        // the v1 freezer controller's hierarchy.
        if layout.unified.is_none() {
            if let Some(hierarchy) = layout.v1.get(V1_FREEZER) {
                let dir = hierarchy.own_dir().join(&name);
                match roots.iter_mut().find(|root| root.dir == dir) {
                    Some(root) => root.controllers.push(V1_FREEZER.to_string()),
                    None => roots.push(Group {
                        dir,
                        version: Version::V1,
                        controllers: vec![V1_FREEZER.to_string()],
                    }),
                }
            }
        }
        CgroupTree {
            roots,
            kind: layout.kind(),
        }
    }

    pub fn kind(&self) -> LayoutKind {
        self.kind
    }

    /// The cgroup v2 directory of the subtree: where the eBPF programs attach.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.roots
            .iter()
            .find(|root| root.version == Version::V2)
            .map(|root| root.dir.as_path())
    }

    /// Every subtree directory, one per hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(|root| root.dir.as_path())
    }

    /// Controllers among `memory`, `cpu`, `pids` that no hierarchy offers here.
    pub fn missing_controllers(&self) -> Vec<&'static str> {
        CONTROLLERS
            .into_iter()
            .filter(|c| {
                !self
                    .roots
                    .iter()
                    .any(|r| r.controllers.iter().any(|x| x == c))
            })
            .collect()
    }

    /// Creates the group of one instance (named `slug`) in every hierarchy and sets its
    /// limits. A group of the same name left from before is emptied and reused.
    pub fn instance(&self, slug: &str, limits: &Limits) -> Result<InstanceCgroup> {
        let groups = self
            .roots
            .iter()
            .map(|root| Group {
                dir: root.dir.join(slug),
                version: root.version,
                controllers: root.controllers.clone(),
            })
            .collect();
        InstanceCgroup::create(groups, limits)
    }

    /// Rewrites the limits of the existing groups of instance `slug` (a reload changed its
    /// service's limits). Returns the directories written; none when it has no group now.
    pub fn update_limits(&self, slug: &str, limits: &Limits) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for root in &self.roots {
            let group = Group {
                dir: root.dir.join(slug),
                version: root.version,
                controllers: root.controllers.clone(),
            };
            if group.dir.is_dir() {
                super::instance::rewrite_limits(&group, limits)?;
                written.push(group.dir);
            }
        }
        Ok(written)
    }

    /// The groups of an earlier run (tenement crashed, was killed, or is being upgraded),
    /// by name (`service-id`), in name order: candidates for adoption, or leftovers for
    /// [`CgroupTree::discard`].
    pub fn leftovers(&self) -> Result<Vec<(String, InstanceCgroup)>> {
        let mut names: Vec<String> = Vec::new();
        for root in &self.roots {
            for entry in std::fs::read_dir(&root.dir)
                .with_context(|| format!("listing cgroup {}", root.dir.display()))?
            {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let group = self.existing(&name);
                (name, group)
            })
            .collect())
    }

    /// The groups named `slug` found on disk.
    pub fn existing(&self, slug: &str) -> InstanceCgroup {
        InstanceCgroup::existing(
            self.roots
                .iter()
                .map(|root| Group {
                    dir: root.dir.join(slug),
                    version: root.version,
                    controllers: root.controllers.clone(),
                })
                .filter(|group| group.dir.is_dir())
                .collect(),
        )
    }

    /// Kills whatever is left in a group of an earlier run and removes it. Returns whether
    /// it held processes.
    pub async fn discard(leftover: &InstanceCgroup) -> Result<bool> {
        let occupied = !leftover.is_empty();
        leftover.kill_all();
        leftover.wait_empty(Duration::from_secs(10)).await?;
        leftover.remove()?;
        Ok(occupied)
    }

    /// Removes the subtree itself (every instance group must be gone already).
    pub fn remove(&self) -> Result<()> {
        for root in &self.roots {
            files::remove_dir(&root.dir)?;
        }
        Ok(())
    }
}

/// `tenement-` and 8 hex digits of the data directory's hash.
pub fn subtree_name(data_dir: &Path) -> String {
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    format!("tenement-{}", hex::encode(&digest[..4]))
}

/// Makes the v2 controllers available to instance groups: enabled in the subtree_control of
/// the cgroup tenement runs in and of the subtree. cgroup v2 allows controllers in a
/// cgroup's subtree_control only while it holds no processes itself (except at the root), so
/// when tenement sits in its own cgroup (systemd `Delegate=yes`) it first moves itself into
/// a leaf `daemon` beside the subtree.
fn enable_v2_controllers(root: &Group) -> Result<()> {
    let own = root.dir.parent().expect("the subtree has a parent");
    let wanted: String = root
        .controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let is_hierarchy_root = !own.join("cgroup.type").exists();
    if !is_hierarchy_root && !files::pids(own)?.is_empty() {
        let leaf = own.join("daemon");
        std::fs::create_dir_all(&leaf)
            .with_context(|| format!("creating cgroup {}", leaf.display()))?;
        files::write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
    }
    files::write(&own.join("cgroup.subtree_control"), &wanted).with_context(|| {
        format!(
            "enabling {wanted} for tenement's cgroups in {}: every process of that cgroup \
             must be tenement's own (run it as a systemd service with Delegate=yes)",
            own.display()
        )
    })?;
    files::write(&root.dir.join("cgroup.subtree_control"), &wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn subtree_names_differ_per_data_dir() {
        let a = subtree_name(Path::new("/nonexistent/a"));
        let b = subtree_name(Path::new("/nonexistent/b"));
        assert_ne!(a, b);
        assert!(a.starts_with("tenement-") && a.len() == "tenement-".len() + 8);
    }

    #[test]
    fn hybrid_host_uses_v2_for_ids_and_v1_for_limits() {
        let mounts = "\
cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0
";
        let membership = "4:memory:/session/x\n1:cpu,cpuacct:/\n2:pids:/\n0::/\n";
        let layout = CgroupLayout::from_proc(mounts, membership, |_| Some(String::new()));
        let data_dir = Path::new("/nonexistent/data");
        let name = subtree_name(data_dir);
        let tree = CgroupTree::plan(&layout, data_dir);
        let dirs: Vec<PathBuf> = tree.dirs().map(Path::to_path_buf).collect();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from(format!("/sys/fs/cgroup/unified/{name}")),
                PathBuf::from(format!("/sys/fs/cgroup/memory/session/x/{name}")),
                PathBuf::from(format!("/sys/fs/cgroup/cpu,cpuacct/{name}")),
                PathBuf::from(format!("/sys/fs/cgroup/pids/{name}")),
            ]
        );
        assert_eq!(
            tree.unified_dir(),
            Some(Path::new(&format!("/sys/fs/cgroup/unified/{name}")))
        );
        assert!(tree.missing_controllers().is_empty());
    }

    #[test]
    fn freezer_is_v2_where_there_is_v2_else_the_v1_controller() {
        let membership = "3:freezer:/\n4:memory:/\n0::/\n";
        let hybrid = CgroupLayout::from_proc(
            "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
             cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n\
             cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n",
            membership,
            |_| Some(String::new()),
        );
        let tree = CgroupTree::plan(&hybrid, Path::new("/nonexistent/data"));
        assert!(tree
            .dirs()
            .all(|dir| !dir.starts_with("/sys/fs/cgroup/freezer")));
        let legacy = CgroupLayout::from_proc(
            "cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n\
             cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n",
            membership,
            |_| None,
        );
        let tree = CgroupTree::plan(&legacy, Path::new("/nonexistent/data"));
        let name = subtree_name(Path::new("/nonexistent/data"));
        let dirs: Vec<PathBuf> = tree.dirs().map(Path::to_path_buf).collect();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from(format!("/sys/fs/cgroup/memory/{name}")),
                PathBuf::from(format!("/sys/fs/cgroup/freezer/{name}")),
            ]
        );
        assert_eq!(tree.roots[1].controllers, ["freezer"]);
    }

    #[test]
    fn unified_host_keeps_everything_in_one_hierarchy() {
        let layout = CgroupLayout::from_proc(
            "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
            "0::/system.slice/tenement.service\n",
            |_| Some("cpu memory pids".to_string()),
        );
        let tree = CgroupTree::plan(&layout, Path::new("/nonexistent/data"));
        assert_eq!(tree.dirs().count(), 1);
        assert_eq!(tree.roots[0].controllers, ["memory", "cpu", "pids"]);
    }
}
