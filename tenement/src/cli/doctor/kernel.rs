//! The kernel: its version, BTF, and whether tenement's eBPF programs load and attach here.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{tidy, Check};
use crate::{
    monitor::{KernelCounters, Monitor, NetworkIsolation},
    supervisor::cgroup::CgroupLayout,
};

/// cgroup programs attach through bpf links from here on; older kernels fall back to
/// prog_attach, which works but leaves programs behind if tenement is killed.
const LINKS_SINCE: (u32, u32) = (5, 7);
const BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn version() -> Check {
    let release = match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => release.trim().to_string(),
        Err(err) => {
            return Check::warn(
                "kernel",
                format!("cannot read /proc/sys/kernel/osrelease: {err}"),
                "mount /proc",
            )
        }
    };
    match major_minor(&release) {
        Some(version) if version >= LINKS_SINCE => Check::ok("kernel", format!("Linux {release}")),
        _ => Check::warn(
            "kernel",
            format!(
                "Linux {release} is older than {}.{}: eBPF programs attach without bpf links",
                LINKS_SINCE.0, LINKS_SINCE.1
            ),
            "use a kernel 5.7 or newer",
        ),
    }
}

fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn btf() -> Check {
    if Path::new(BTF).exists() {
        Check::ok("btf", format!("{BTF} present"))
    } else {
        Check::warn(
            "btf",
            format!("{BTF} is missing: BTF-typed tracing programs cannot load"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

/// Loads and attaches tenement's programs on a throwaway cgroup below our own, registers
/// that cgroup in the counters map, then removes everything. Two checks: the counters, and
/// the network boundary (which says plainly when tenants are not network-isolated).
pub fn ebpf(layout: &CgroupLayout) -> Vec<Check> {
    let (counters, network) = counters_and_network(layout);
    let network = match network {
        Ok(()) => Check::ok(
            "network",
            "bind/connect/sendmsg programs attached: each tenant binds only its own port (on \
             loopback) and cannot reach port_range or the management API",
        ),
        Err(reason) => Check::warn(
            "network",
            format!("tenants are NOT network-isolated: {reason}"),
            "run as root on a kernel with eBPF cgroup programs (see docs/isolation.md)",
        ),
    };
    vec![counters, network]
}

fn counters_and_network(layout: &CgroupLayout) -> (Check, Result<(), String>) {
    let Some(unified) = &layout.unified else {
        let reason =
            "no cgroup v2 hierarchy is mounted, and eBPF cgroup programs attach only there";
        return (
            Check::warn(
                "ebpf",
                reason,
                "mount one: mount -t cgroup2 none /sys/fs/cgroup/unified",
            ),
            Err(reason.to_string()),
        );
    };
    let dir = unified
        .own_dir()
        .join(format!("tenement-doctor-{}", std::process::id()));
    let cgroup = match ScratchCgroup::create(dir.clone()) {
        Ok(cgroup) => cgroup,
        Err(err) => {
            let reason = format!("cannot create the test cgroup {}: {err}", dir.display());
            return (
                Check::warn(
                    "ebpf",
                    reason.clone(),
                    "run as root (loading eBPF programs needs CAP_BPF and CAP_NET_ADMIN, cgroups need write access)",
                ),
                Err(reason),
            );
        }
    };
    let monitor = Monitor::start(&cgroup.0);
    let network = match monitor.network_isolation() {
        NetworkIsolation::Active => Ok(()),
        NetworkIsolation::Off(reason) => Err(reason.clone()),
    };
    let status = monitor.kernel_counters().clone();
    let check = match status {
        KernelCounters::Active => match cgroup_id(&cgroup.0).and_then(|id| {
            monitor.register(id)?;
            monitor.traffic(id).ok_or_else(|| {
                anyhow::anyhow!("the counters map does not hold the registered cgroup")
            })
        }) {
            Ok(_) => Check::ok(
                "ebpf",
                format!(
                    "cgroup_skb programs loaded, attached to a test cgroup under {} and counting",
                    tidy(&unified.own_dir())
                ),
            ),
            Err(err) => Check::warn(
                "ebpf",
                format!("programs attached but the counters map failed: {err:#}"),
                "report this with the output of `bpftool map list`",
            ),
        },
        KernelCounters::Off(reason) => Check::warn(
            "ebpf",
            format!("kernel counters are off: {reason}; tenement works without them"),
            fix_for(&reason),
        ),
    };
    drop(monitor);
    drop(cgroup);
    (check, network)
}

fn fix_for(reason: &str) -> &'static str {
    if reason.contains("without the `ebpf` feature") {
        "build with the default features (cargo xtask setup && cargo build --release)"
    } else if !nix::unistd::geteuid().is_root() {
        "run as root (or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
    } else {
        "use a kernel with CONFIG_BPF_SYSCALL=y and CONFIG_CGROUP_BPF=y"
    }
}

fn cgroup_id(dir: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// A cgroup made for the check, removed on drop (it never holds a process).
struct ScratchCgroup(PathBuf);

impl ScratchCgroup {
    fn create(dir: PathBuf) -> std::io::Result<ScratchCgroup> {
        std::fs::create_dir(&dir)?;
        Ok(ScratchCgroup(dir))
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions() {
        assert_eq!(super::major_minor("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(super::major_minor("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(super::major_minor("nonsense"), None);
    }
}
