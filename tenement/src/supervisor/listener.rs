//! Whose socket listens on an instance's port? Checked once per start, before the instance
//! counts as ready (and so before the proxy forwards a request to it): every TCP socket
//! listening on the port (loopback or wildcard, either family) must be held open by a
//! process of the instance's cgroup. Anything else listening there took the port first, and
//! would receive the tenant's requests: the start is retried on another port instead.
//!
//! The kernel's own tables are the source: `/proc/net/tcp{,6}` (the listening sockets and
//! their inodes, in tenement's network namespace, which instances share) and the
//! `socket:[inode]` links in `/proc/PID/fd` of the instance's processes. Sandboxed
//! instances count too: with host networking, gVisor's host-side processes (in the
//! instance's cgroup) hold the host sockets.

use std::{collections::HashSet, path::Path};

/// What listens on a port.
#[derive(Debug, PartialEq, Eq)]
pub enum Listening {
    /// Only sockets of the instance's processes.
    Owned,
    /// Nothing listens (yet, or any more).
    Nobody,
    /// A socket that no process of the instance holds; its holder, if it could be found.
    Foreign { holder: Option<String> },
}

const LISTEN: &str = "0A";

/// Who listens on `port`, given the instance's processes.
pub fn check(port: u16, instance_pids: &[i32]) -> Listening {
    check_in(Path::new("/proc"), port, instance_pids)
}

fn check_in(proc: &Path, port: u16, instance_pids: &[i32]) -> Listening {
    let mut inodes = HashSet::new();
    for table in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc.join(table)) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Listening::Nobody;
    }
    for pid in instance_pids {
        remove_held(proc, *pid, &mut inodes);
        if inodes.is_empty() {
            return Listening::Owned;
        }
    }
    Listening::Foreign {
        holder: holder(proc, &inodes),
    }
}

/// Inodes of the sockets in LISTEN state on `port` in one `/proc/net/tcp*` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (*state == LISTEN && local_port == port)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .filter(|inode| *inode != 0)
        .collect()
}

/// Removes from `inodes` those that `pid` holds open.
fn remove_held(proc: &Path, pid: i32, inodes: &mut HashSet<u64>) {
    let Ok(fds) = std::fs::read_dir(proc.join(pid.to_string()).join("fd")) else {
        return;
    };
    for fd in fds.flatten() {
        if let Some(inode) = socket_inode(&fd.path()) {
            inodes.remove(&inode);
        }
    }
}

fn socket_inode(fd: &Path) -> Option<u64> {
    let target = std::fs::read_link(fd).ok()?;
    let target = target.to_str()?;
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// "pid 4242 (python3)": the first process found holding one of `inodes`. Only on the
/// failure path, so a walk of every process is affordable.
fn holder(proc: &Path, inodes: &HashSet<u64>) -> Option<String> {
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| socket_inode(&fd.path()).is_some_and(|i| inodes.contains(&i)));
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("pid {pid} ({})", comm.trim()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:7531 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:7531 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 100 0 0 10 0
   2: 00000000:7532 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_of_the_port_count() {
        assert_eq!(listening_inodes(TABLE, 30001), [4242]);
        assert_eq!(listening_inodes(TABLE, 30002), [4444]);
        assert!(listening_inodes(TABLE, 30003).is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_owned_by_it_and_foreign_to_others() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert_eq!(check(port, &[me]), Listening::Owned);
        match check(port, &[]) {
            Listening::Foreign { holder } => {
                let holder = holder.expect("this process holds it");
                assert!(holder.starts_with(&format!("pid {me} ")), "{holder}");
            }
            other => panic!("{other:?}"),
        }
        drop(listener);
        assert_eq!(check(port, &[me]), Listening::Nobody);
    }
}
