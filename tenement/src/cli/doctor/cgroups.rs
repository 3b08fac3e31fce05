//! The cgroup layout (v2, hybrid or v1) and where each resource controller can be used.

use nix::unistd::{access, AccessFlags};

use super::{tidy, Check, Needs};
use crate::supervisor::cgroup::{CgroupLayout, ControllerHome, LayoutKind, CONTROLLERS};

pub fn checks(layout: &CgroupLayout, needs: &Needs) -> Vec<Check> {
    let mut checks = vec![kind(layout, needs)];
    if layout.kind() != LayoutKind::None {
        for controller in CONTROLLERS {
            checks.push(self::controller(layout, controller, needs));
        }
    }
    checks
}

fn kind(layout: &CgroupLayout, needs: &Needs) -> Check {
    let kind = layout.kind();
    match (kind, &layout.unified) {
        (LayoutKind::Unified | LayoutKind::Hybrid, Some(unified)) => Check::ok(
            "cgroups",
            format!("{kind}; cgroup v2 at {}", tidy(&unified.mount)),
        ),
        (LayoutKind::Legacy, _) => Check::warn(
            "cgroups",
            format!("{kind}: no cgroup v2 hierarchy, so no eBPF cgroup programs"),
            "mount cgroup v2 beside v1: mount -t cgroup2 none /sys/fs/cgroup/unified",
        ),
        _ => Check::missing(
            needs.limits,
            "cgroups",
            format!("{kind}: no limits can be set"),
            "mount cgroup v2: mount -t cgroup2 none /sys/fs/cgroup",
        ),
    }
}

fn controller(layout: &CgroupLayout, name: &str, needs: &Needs) -> Check {
    let what = format!("cgroup {name}");
    let (version, hierarchy) = match layout.controller(name) {
        Some(ControllerHome::Unified(hierarchy)) => ("v2", hierarchy),
        Some(ControllerHome::V1(hierarchy)) => ("v1", hierarchy),
        None => {
            return Check::missing(
                needs.limits,
                &what,
                format!("the {name} controller is not available to tenement's cgroup"),
                format!(
                    "on cgroup v2, enable it in the parent's cgroup.subtree_control (systemd: Delegate=yes); \
                     on v1, mount it: mount -t cgroup -o {name} cgroup /sys/fs/cgroup/{name}"
                ),
            )
        }
    };
    let dir = hierarchy.own_dir();
    match access(&dir, AccessFlags::W_OK) {
        Ok(()) => Check::ok(&what, format!("{version} at {}", tidy(&dir))),
        Err(err) => Check::missing(
            needs.limits,
            &what,
            format!("{version} at {}, but not writable: {err}", tidy(&dir)),
            "run as root, or under systemd with Delegate=yes",
        ),
    }
}
