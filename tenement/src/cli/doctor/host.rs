//! The machine around tenement: who it runs as, its listen addresses, its data directory.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener},
    path::Path,
};

use nix::unistd::{access, geteuid, AccessFlags};

use super::Check;
use crate::config::Settings;

pub fn privileges() -> Check {
    let uid = geteuid();
    if uid.is_root() {
        Check::ok("privileges", "running as root")
    } else {
        Check::warn(
            "privileges",
            format!("running as uid {uid}: per-instance cgroups, eBPF and tenant uids need root"),
            "run tenement as root (the systemd unit from `tenement install` does)",
        )
    }
}

/// Binds each address tenement will listen on, and lets go at once.
pub fn listeners(settings: &Settings) -> Vec<Check> {
    let mut addresses: Vec<(&str, SocketAddr)> = settings
        .listen
        .iter()
        .map(|a| ("settings.listen", *a))
        .collect();
    if settings.tls.enabled {
        addresses.extend(
            settings
                .tls
                .listen
                .iter()
                .map(|a| ("settings.tls.listen", *a)),
        );
    }
    if let Ok(api) = settings
        .api_endpoint()
        .trim_start_matches("http://")
        .parse()
    {
        addresses.push(("settings.api", api));
    }
    addresses
        .into_iter()
        .map(|(key, address)| listen(key, address))
        .collect()
}

fn listen(key: &str, address: SocketAddr) -> Check {
    let what = format!("listen {address}");
    match TcpListener::bind(address) {
        Ok(_) => Check::ok(&what, format!("free ({key})")),
        Err(err) => {
            let fix = match err.kind() {
                ErrorKind::AddrInUse => format!(
                    "stop what listens there (`ss -ltnp 'sport = :{}'` names it) or change {key}",
                    address.port()
                ),
                ErrorKind::PermissionDenied => {
                    format!("ports below 1024 need root or CAP_NET_BIND_SERVICE; or change {key}")
                }
                _ => format!("use an address of this machine in {key}"),
            };
            Check::fail(&what, format!("cannot bind: {err}"), fix)
        }
    }
}

/// Writes and removes a file in the data directory, or, if it does not exist yet, checks
/// that tenement can create it.
pub fn data_dir(dir: &Path) -> Check {
    let what = "data dir";
    if dir.is_dir() {
        let probe = dir.join(format!(".tenement-doctor-{}", std::process::id()));
        return match std::fs::write(&probe, b"") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                Check::ok(what, format!("{} is writable", dir.display()))
            }
            Err(err) => Check::fail(
                what,
                format!("{} is not writable: {err}", dir.display()),
                "run as root, or give tenement's user the directory (chown)",
            ),
        };
    }
    if dir.exists() {
        return Check::fail(
            what,
            format!("{} exists but is not a directory", dir.display()),
            "point settings.data_dir at a directory",
        );
    }
    let Some(parent) = dir.ancestors().skip(1).find(|a| a.is_dir()) else {
        return Check::fail(
            what,
            format!("{} has no existing parent", dir.display()),
            "use an absolute settings.data_dir",
        );
    };
    match access(parent, AccessFlags::W_OK) {
        Ok(()) => Check::ok(
            what,
            format!(
                "{} will be created (in {}, writable)",
                dir.display(),
                parent.display()
            ),
        ),
        Err(err) => Check::fail(
            what,
            format!(
                "{} does not exist and {} is not writable: {err}",
                dir.display(),
                parent.display()
            ),
            format!(
                "create it: mkdir -p {} (and chown it to tenement's user)",
                dir.display()
            ),
        ),
    }
}

/// How `storage_quota_mb` would be applied by a daemon on this host (`supervisor::storage`).
/// Measured-only is a FAIL when the configuration sets a quota, a WARN otherwise.
pub fn storage_quotas(needed: bool) -> Check {
    use crate::supervisor::storage::{enforcement, Enforcement};
    let what = "storage quotas";
    match enforcement() {
        Enforcement::Filesystem => Check::ok(
            what,
            "enforced: a loop-mounted ext4 image per instance with storage_quota_mb \
             (writes past it fail with ENOSPC)",
        ),
        Enforcement::Measured(reason) => Check::missing(
            needed,
            what,
            format!(
                "measured only, every 30 s (going over records a quota-exceeded event and a \
                 log warning; writes are not stopped): {reason}"
            ),
            "run tenement as root, with e2fsprogs (mkfs.ext4) installed and loop devices \
             available",
        ),
    }
}
