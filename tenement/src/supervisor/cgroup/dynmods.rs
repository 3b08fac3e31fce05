//! The cgroup v2 mount option `favordynmods` (Linux 6.0+).
//!
//! Every start and every wake moves a new process into its cgroups. Without the option, the
//! first such move after a quiet moment waits for an RCU grace period inside the kernel
//! (measured here: 3-11 ms per move, paid again by each hierarchy on hybrid hosts); with it,
//! a move takes about 0.2 ms. The price is paid elsewhere: forks and exits on the whole host
//! take a slightly slower path. A scale-to-zero hypervisor moves processes on the request
//! path, so it asks for the option (`[settings] cgroup_favordynmods`, on by default).

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

const OPTION: &str = "favordynmods";

/// Per-mount flags as /proc/self/mounts spells them. A remount must repeat them, or it
/// would clear them.
const MOUNT_FLAGS: [(&str, MsFlags); 8] = [
    ("ro", MsFlags::MS_RDONLY),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noexec", MsFlags::MS_NOEXEC),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("strictatime", MsFlags::MS_STRICTATIME),
];

/// Remounts the cgroup v2 hierarchy at `mount_point` with `favordynmods`, keeping its other
/// options. `Ok(false)` when it already had it.
pub fn favor_dynamic_moves(mount_point: &Path) -> Result<bool> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    // The last mount at that path is the one in effect.
    let options = mounts
        .lines()
        .rev()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 4 && fields[2] == "cgroup2" && Path::new(fields[1]) == mount_point)
                .then(|| fields[3].to_string())
        })
        .with_context(|| format!("no cgroup2 mount at {}", mount_point.display()))?;
    let Some((flags, data)) = remount_arguments(&options) else {
        return Ok(false);
    };
    mount(
        None::<&str>,
        mount_point,
        Some("cgroup2"),
        flags | MsFlags::MS_REMOUNT,
        Some(data.as_str()),
    )
    .with_context(|| {
        format!(
            "remounting {} with {OPTION} (Linux 6.0 or later)",
            mount_point.display()
        )
    })?;
    Ok(true)
}

/// The flags and data of a remount that adds `favordynmods` to a mount with `options`;
/// `None` when it is there already.
fn remount_arguments(options: &str) -> Option<(MsFlags, String)> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.split(',') {
        if option == OPTION {
            return None;
        }
        match MOUNT_FLAGS.iter().find(|(name, _)| *name == option) {
            Some((_, flag)) => flags |= *flag,
            None if option == "rw" => {}
            None => data.push(option),
        }
    }
    data.push(OPTION);
    Some((flags, data.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_mount_flags_and_filesystem_options() {
        let (flags, data) =
            remount_arguments("rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot")
                .unwrap();
        assert_eq!(
            flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME
        );
        assert_eq!(data, "nsdelegate,memory_recursiveprot,favordynmods");
    }

    #[test]
    fn nothing_to_do_when_already_set() {
        assert_eq!(remount_arguments("rw,relatime,favordynmods"), None);
    }
}
