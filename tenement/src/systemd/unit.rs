//! The systemd unit for `tenement serve`, and the configuration written when none exists.
//!
//! tenement runs as root: it creates namespaces, loads eBPF programs, manages cgroups and
//! switches to each tenant's uid. The hardening below is what leaves all of that working:
//! no `ProtectControlGroups`/`ProtectKernelTunables` (they make /sys/fs/cgroup read-only), no
//! `RestrictNamespaces`, no `PrivateDevices`/`ProtectClock` (device rules on tenement's cgroup
//! reach every tenant below it), no `MemoryDenyWriteExecute` or `SystemCallFilter` (seccomp
//! filters are inherited by tenants and would break JITs and gVisor). docs/production.md
//! explains each line.

use std::path::Path;

pub const UNIT_NAME: &str = "tenement.service";

pub fn unit(binary: &Path, config: &Path) -> String {
    format!(
        "\
# Written by `tenement install`; `tenement install` overwrites it.
# Local changes belong in a drop-in: `systemctl edit tenement`.
[Unit]
Description=tenement process hypervisor
After=network-online.target
Wants=network-online.target

[Service]
# tenement tells systemd when its listeners are up (sd_notify READY=1).
Type=notify
NotifyAccess=main
ExecStart={binary} serve --config {config}
# `systemctl reload tenement`: applies the changed file without restarting unchanged
# tenants, and fails (changing nothing) when the file has an error.
ExecReload={binary} reload --config {config}
Restart=on-failure
RestartSec=2s
# Signals go to tenement alone: on stop, SIGTERM makes it stop every instance within its
# stop_timeout. When tenement crashes or is killed, systemd leaves the instances running
# (Restart= brings tenement back, and it adopts them); if no tenement comes back within
# adopt_timeout, tenement's guard stops them.
KillMode=process
TimeoutStopSec=120s
# tenement owns the cgroup subtree below its own and creates one cgroup per instance there.
Delegate=yes
# Many tenants and connections; eBPF maps count against memlock on kernels before 5.11.
LimitNOFILE=1048576
LimitMEMLOCK=infinity
TasksMax=infinity

# Hardening that keeps namespaces, eBPF and cgroups working (see docs/production.md).
ProtectSystem=full
ProtectKernelModules=yes
NoNewPrivileges=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
CapabilityBoundingSet=~CAP_SYS_MODULE CAP_SYS_BOOT CAP_SYS_TIME CAP_WAKE_ALARM CAP_SYS_RAWIO \
CAP_SYSLOG CAP_LINUX_IMMUTABLE CAP_BLOCK_SUSPEND CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_AUDIT_CONTROL

[Install]
WantedBy=multi-user.target
",
        binary = binary.display(),
        config = config.display(),
    )
}

/// A configuration that parses and serves nothing yet: the operator adds services.
pub fn default_config(data_dir: &Path) -> String {
    format!(
        r#"# tenement configuration; every key is described in docs/configuration.md.
# After a change: `tenement config check`, then `systemctl reload tenement` (applies
# the changes without restarting unchanged instances; see docs/production.md).

[settings]
data_dir = "{data_dir}"
# Public HTTP listener(s), and the domain(s) whose subdomains name instances:
# alice.notes.example.com reaches instance notes:alice.
listen = "127.0.0.1:8080"
domain = "localhost"
# Management API (the CLI talks to it): always the unix socket
# {data_dir}/tenement.sock (root only, no token needed). A TCP address adds a
# listener where every request needs a token (`tenement token-gen`):
# api = "127.0.0.1:8090"

# [service.notes]
# command = "/usr/bin/python3 app.py"
# workdir = "/srv/notes"
# health = "/health"
# idle_timeout = 300
# memory_limit_mb = 128

# [instances]
# notes = ["alice", "bob"]
"#,
        data_dir = data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn default_config_parses() {
        let text = default_config(Path::new("/var/lib/tenement"));
        let config = Config::parse(&text, "default").unwrap();
        assert_eq!(config.settings.data_dir, Path::new("/var/lib/tenement"));
        assert!(config.service.is_empty());
    }

    #[test]
    fn unit_runs_serve_with_the_config() {
        let unit = unit(
            Path::new("/usr/local/bin/tenement"),
            Path::new("/etc/t.toml"),
        );
        assert!(unit.contains("ExecStart=/usr/local/bin/tenement serve --config /etc/t.toml\n"));
        assert!(unit.contains("ExecReload=/usr/local/bin/tenement reload --config /etc/t.toml\n"));
        assert!(unit.contains("Delegate=yes\n"));
        // A crash or restart of tenement must not take its tenants with it.
        assert!(unit.contains("KillMode=process\n"));
        assert!(unit.contains("Type=notify\n"));
    }
}
