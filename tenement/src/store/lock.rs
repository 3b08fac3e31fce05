//! One daemon per data directory: `tenement serve` takes an exclusive `flock` on
//! `{data_dir}/tenement.lock` before it touches anything else there (store, sockets, cgroups,
//! leftovers of an earlier run). A second daemon on the same directory is refused while the
//! first one lives, and never mistakes the first one's tenants for leftovers.
//!
//! The kernel drops the lock when its holder dies, however it dies (`kill -9` included), so a
//! stale file never blocks the next start. The file holds the holder's pid, for the message.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// The name of the lock file in the data directory.
pub const LOCK_FILE: &str = "tenement.lock";

/// Held for the life of the daemon; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and locks it, or fails naming the daemon that holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join(LOCK_FILE);
        // Not following a symlink: whoever could plant one must not make root open (and
        // truncate) another file. Close-on-exec, so tenants never inherit the lock.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = holder_pid(&mut file)
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "another tenement{holder} is serving data directory {}: it holds {}; \
                     stop it first, or give this one another settings.data_dir. Nothing was \
                     changed.",
                    data_dir.display(),
                    path.display()
                );
            }
            Err((_, errno)) => {
                return Err(anyhow::anyhow!("locking {}: {errno}", path.display()));
            }
        };
        let write_pid = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_data()
        };
        write_pid(&mut file).with_context(|| format!("writing {}", path.display()))?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("lock-test-{}", std::process::id()));
        let first = DataDirLock::acquire(&dir).unwrap();
        let refused = DataDirLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("another tenement (pid {})", std::process::id())),
            "{refused}"
        );
        drop(first);
        let again = DataDirLock::acquire(&dir).unwrap();
        assert_eq!(again.path(), dir.join(LOCK_FILE));
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("lock-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(LOCK_FILE)).unwrap();
        assert!(DataDirLock::acquire(&dir).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
