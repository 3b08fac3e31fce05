//! Who a tenant runs as, and whether that user may execute its command.
//!
//! As root, a tenant never runs as root unless its service says `user = "root"`: by default
//! each instance gets its own uid (and gid of the same number) from `uid_range`, remembered
//! in the store so it stays the same across restarts. Not root, everything runs as
//! tenement's own user.

use std::{
    ffi::CString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use nix::unistd::{getgrouplist, Gid, User};

use crate::{config::InstanceName, store::Store};

/// The credentials a child switches to before exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (empty for dynamic users).
    pub groups: Vec<u32>,
}

impl RunAs {
    /// tenement's own credentials.
    pub fn current() -> RunAs {
        RunAs {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
                .unwrap_or_default(),
        }
    }
}

pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The credentials of `name`, for a service configured with `user`.
pub fn resolve(
    name: &InstanceName,
    user: Option<&str>,
    uid_range: [u32; 2],
    store: &Store,
) -> Result<RunAs> {
    if !running_as_root() {
        if let Some(user) = user {
            let me = RunAs::current();
            let wanted = match user.parse::<u32>() {
                Ok(uid) => Some(uid),
                Err(_) => User::from_name(user).ok().flatten().map(|u| u.uid.as_raw()),
            };
            if wanted != Some(me.uid) {
                bail!(
                    "the service of {name} sets user = {user:?}, but tenement does not run as \
                     root and cannot switch users: run tenement as root or remove `user`"
                );
            }
        }
        return Ok(RunAs::current());
    }
    match user {
        None => {
            let uid = store.uid_for(name, uid_range)?;
            Ok(RunAs {
                uid,
                gid: uid,
                groups: Vec::new(),
            })
        }
        Some(user) => {
            let account = match user.parse::<u32>() {
                // A bare uid need not have an account: its gid is then the same number.
                Ok(uid) => match User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                    Ok(Some(account)) => account,
                    _ => {
                        return Ok(RunAs {
                            uid,
                            gid: uid,
                            groups: Vec::new(),
                        })
                    }
                },
                Err(_) => User::from_name(user)
                    .with_context(|| format!("looking up user {user:?} for {name}"))?
                    .with_context(|| {
                        format!("user {user:?} of {name} does not exist on this system")
                    })?,
            };
            let user = account.name.as_str();
            let c_name = CString::new(user)?;
            let groups = getgrouplist(&c_name, account.gid)
                .with_context(|| format!("listing the groups of user {user:?}"))?
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            Ok(RunAs {
                uid: account.uid.as_raw(),
                gid: account.gid.as_raw(),
                groups,
            })
        }
    }
}

/// Finds `program` (a path, or a name searched in `search_path`) and checks that `run_as`
/// may execute it: every directory on the way searchable, the file executable.
pub fn resolve_program(
    program: &str,
    workdir: &Path,
    search_path: &str,
    run_as: &RunAs,
) -> Result<PathBuf> {
    let path = if program.contains('/') {
        workdir.join(program)
    } else {
        search_path
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| Path::new(dir).join(program))
            .find(|candidate| candidate.is_file())
            .with_context(|| format!("command {program:?} not found in PATH {search_path}"))?
    };
    may_execute(&path, run_as)?;
    Ok(path)
}

/// Whether `run_as` may execute `path`, following the kernel's permission rules closely
/// enough to explain a refusal before the child is started.
pub fn may_execute(path: &Path, run_as: &RunAs) -> Result<()> {
    let who = describe(run_as);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut dir = PathBuf::from("/");
    for part in absolute
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .skip(1)
    {
        dir.push(part);
        let meta = std::fs::metadata(&dir)
            .with_context(|| format!("cannot execute {}: {}", path.display(), dir.display()))?;
        if !allowed(&meta, run_as, 0o1) {
            bail!(
                "cannot execute {}: {who} may not enter directory {}",
                path.display(),
                dir.display()
            );
        }
    }
    let meta = std::fs::metadata(&absolute)
        .with_context(|| format!("cannot execute {}", path.display()))?;
    if !meta.is_file() {
        bail!("cannot execute {}: not a regular file", path.display());
    }
    let executable = if run_as.uid == 0 {
        meta.mode() & 0o111 != 0
    } else {
        allowed(&meta, run_as, 0o1)
    };
    if !executable {
        bail!(
            "cannot execute {}: {who} has no execute permission on it (mode {:o}, owner uid {})",
            path.display(),
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    Ok(())
}

/// The owner, group or other permission bit `bit` (1 = x, 2 = w, 4 = r) for `run_as`.
fn allowed(meta: &std::fs::Metadata, run_as: &RunAs, bit: u32) -> bool {
    if run_as.uid == 0 {
        return true;
    }
    let mode = meta.mode();
    if meta.uid() == run_as.uid {
        return mode & (bit << 6) != 0;
    }
    if meta.gid() == run_as.gid || run_as.groups.contains(&meta.gid()) {
        return mode & (bit << 3) != 0;
    }
    mode & bit != 0
}

pub fn describe(run_as: &RunAs) -> String {
    format!("uid {}", run_as.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_in_path_and_checks_permissions() {
        let root = RunAs {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        let found = resolve_program("sh", Path::new("/"), "/nonexistent:/bin:/usr/bin", &root)
            .expect("sh exists");
        assert!(found.ends_with("sh"));
        let missing = resolve_program("no-such-tool-x", Path::new("/"), "/bin", &root)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("no-such-tool-x") && missing.contains("/bin"),
            "{missing}"
        );

        let dir = std::env::temp_dir().join(format!("identity-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("app");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        let owner = std::fs::metadata(&script).unwrap().uid();
        let stranger = RunAs {
            uid: owner + 4242,
            gid: owner + 4242,
            groups: vec![],
        };
        let refused = may_execute(&script, &stranger).unwrap_err().to_string();
        assert!(
            refused.contains(&script.display().to_string())
                && refused.contains(&format!("uid {}", owner + 4242)),
            "{refused}"
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        may_execute(&script, &stranger).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
