//! `tenement doctor` on this machine, checked against what the machine itself says: the cgroup
//! layout from /proc/self/mounts and /proc/self/cgroup (read here independently of
//! tenement's own detection), eBPF really loading, ports really taken.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tenement_tests::{free_port, privileged, tenement_bin, Scratch};

fn doctor(config: &Path) -> Output {
    Command::new(tenement_bin())
        .args(["doctor", "--config"])
        .arg(config)
        .env_remove("TENEMENT_CONFIG")
        .output()
        .expect("running tenement doctor")
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.get(5..).is_some_and(|rest| rest.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{}", lines.join("\n")))
}

/// A configuration whose port and data directory are free on any machine.
fn healthy_config(scratch: &Scratch) -> PathBuf {
    scratch.write(
        "tenement.toml",
        &format!(
            "[settings]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\n\n\
             [service.api]\ncommand = \"/usr/bin/python3 -m http.server\"\n",
            scratch.join("data").display(),
            free_port()
        ),
    )
}

/// What this host's cgroups look like, from the kernel's own files.
struct HostCgroups {
    /// cgroup v2 mount point and this process's path in it.
    unified: Option<(PathBuf, String)>,
    /// (controller, mount point, this process's path) for v1 memory/cpu/pids hierarchies.
    v1: Vec<(String, PathBuf, String)>,
}

fn host_cgroups() -> HostCgroups {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = |wanted: &str| {
        membership.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = if wanted.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == wanted)
            };
            matches.then(|| path.trim_start_matches('/').to_string())
        })
    };
    let mut host = HostCgroups {
        unified: None,
        v1: Vec::new(),
    };
    for mount in mounts.lines() {
        let fields: Vec<&str> = mount.split_whitespace().collect();
        match fields[2] {
            "cgroup2" if host.unified.is_none() => {
                host.unified = Some((PathBuf::from(fields[1]), own("").unwrap_or_default()));
            }
            "cgroup" => {
                for controller in fields[3].split(',') {
                    if ["memory", "cpu", "pids"].contains(&controller) {
                        host.v1.push((
                            controller.to_string(),
                            PathBuf::from(fields[1]),
                            own(controller).unwrap_or_default(),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    host
}

/// `mount/own` written without a trailing slash.
fn joined(mount: &Path, own: &str) -> String {
    if own.is_empty() {
        mount.display().to_string()
    } else {
        mount.join(own).display().to_string()
    }
}

#[test]
fn reports_this_hosts_cgroup_layout_and_working_ebpf() {
    if !privileged("reports_this_hosts_cgroup_layout_and_working_ebpf") {
        return;
    }
    let scratch = Scratch::new("doctor");
    let out = doctor(&healthy_config(&scratch));
    let lines = lines(&out);
    let report = lines.join("\n");
    let host = host_cgroups();

    let layout = line(&lines, "cgroups:");
    match (&host.unified, host.v1.is_empty()) {
        (Some((mount, _)), false) => assert_eq!(
            layout,
            format!(
                "OK   cgroups: hybrid (cgroup v2 + v1 controllers); cgroup v2 at {}",
                mount.display()
            )
        ),
        (Some((mount, _)), true) => assert_eq!(
            layout,
            format!(
                "OK   cgroups: cgroup v2 (unified); cgroup v2 at {}",
                mount.display()
            )
        ),
        (None, _) => assert!(
            layout.starts_with("WARN cgroups: cgroup v1 (legacy)"),
            "{layout}"
        ),
    }

    // Each controller where the kernel says it is: v2 when our v2 cgroup offers it, else v1.
    for controller in ["memory", "cpu", "pids"] {
        let on_v2 = host.unified.as_ref().and_then(|(mount, own)| {
            let offered =
                std::fs::read_to_string(mount.join(own).join("cgroup.controllers")).ok()?;
            offered
                .split_whitespace()
                .any(|c| c == controller)
                .then(|| format!("v2 at {}", joined(mount, own)))
        });
        let on_v1 = host
            .v1
            .iter()
            .find(|(name, _, _)| name == controller)
            .map(|(_, mount, own)| format!("v1 at {}", joined(mount, own)));
        let expected = on_v2
            .or(on_v1)
            .expect("this host has the controller somewhere");
        assert_eq!(
            line(&lines, &format!("cgroup {controller}:")),
            format!("OK   cgroup {controller}: {expected}")
        );
    }

    if let Some((mount, own)) = &host.unified {
        let ebpf = line(&lines, "ebpf:");
        assert!(
            ebpf.starts_with("OK   ebpf: cgroup_skb programs loaded, attached to a test cgroup"),
            "{report}"
        );
        assert!(
            line(&lines, "network:")
                .starts_with("OK   network: bind/connect/sendmsg programs attached"),
            "{report}"
        );
        // The test cgroup is gone again.
        let leftovers: Vec<_> = std::fs::read_dir(mount.join(own))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("tenement-doctor-")
            })
            .collect();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    }

    assert!(line(&lines, "privileges:").starts_with("OK   privileges: running as root"));
    assert!(line(&lines, "namespaces:").starts_with("OK   namespaces: user, pid, mount, ipc, uts"));
    assert!(line(&lines, "kernel:").starts_with("OK   kernel: Linux "));
    assert!(
        line(&lines, "data dir:").starts_with("OK   data dir:"),
        "{report}"
    );
    assert!(
        out.status.success(),
        "doctor failed on a healthy configuration:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines.last().unwrap().ends_with(", 0 failures"), "{report}");
}

#[test]
fn a_taken_listen_port_fails_with_the_fix() {
    let scratch = Scratch::new("doctor-port");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = scratch.write(
        "tenement.toml",
        &format!(
            "[settings]\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n",
            scratch.join("data").display()
        ),
    );
    let out = doctor(&config);
    let lines = lines(&out);
    assert_eq!(out.status.code(), Some(1), "{}", lines.join("\n"));
    let listen = line(&lines, &format!("listen 127.0.0.1:{port}:"));
    assert!(
        listen.starts_with(&format!(
            "FAIL listen 127.0.0.1:{port}: cannot bind: Address already in use"
        )),
        "{listen}"
    );
    assert!(
        listen.ends_with(&format!(
            "fix: stop what listens there (`ss -ltnp 'sport = :{port}'` names it) or change settings.listen"
        )),
        "{listen}"
    );
    drop(taken);
}

#[test]
fn a_bad_configuration_fails_and_lists_its_errors() {
    let scratch = Scratch::new("doctor-config");
    let config = scratch.write(
        "tenement.toml",
        "[settings]\nport_range = [2, 1]\n\n[service.api]\ncommand = \"app\"\nidel_timeout = 3\n",
    );
    let out = doctor(&config);
    let lines = lines(&out);
    assert_eq!(out.status.code(), Some(1));
    let file = config.display();
    assert_eq!(
        lines[..3],
        [
            format!(
                "FAIL config: {file} has 2 errors; the checks below use the defaults; \
                 fix: correct them (`tenement config check` lists them too)"
            ),
            format!("       {file}:2:1: `port_range` in [settings]: the low port 2 is above the high port 1"),
            format!(
                "       {file}:6:1: unknown key `idel_timeout` in [service.api]; did you mean `idle_timeout`?"
            ),
        ]
    );
}
