//! How much an instance's data directory uses on disk, measured as root in a tree the
//! tenant owns. The tenant may swap any directory for a symlink while it is walked, so no
//! path below the top is ever resolved by name: each directory is opened `O_NOFOLLOW`
//! through its parent's descriptor (`/proc/self/fd/N/NAME`). The walk stays on the tree's
//! filesystem and gives up past a depth and a number of entries, so it always ends.

use std::{
    collections::HashSet,
    fs::{File, ReadDir},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

/// Directories open at once at most (two descriptors each).
const MAX_DEPTH: usize = 256;
/// Entries looked at per measurement at most.
const MAX_ENTRIES: u64 = 1_000_000;

/// Bytes allocated on disk under `dir` (like `du`), hard links counted once; `None` when
/// `dir` is not a directory.
pub fn disk_usage(dir: &Path) -> Option<u64> {
    let top = open_dir(dir)?;
    let top_meta = top.metadata().ok()?;
    let device = top_meta.dev();
    let mut total = top_meta.blocks() * 512;
    let mut seen = HashSet::new();
    let mut entries = 0u64;
    let mut stack: Vec<(File, ReadDir)> = Vec::new();
    stack.extend(listed(top));
    while let Some((dir, list)) = stack.last_mut() {
        let Some(entry) = list.next() else {
            stack.pop();
            continue;
        };
        let Ok(entry) = entry else { continue };
        entries += 1;
        if entries > MAX_ENTRIES {
            break;
        }
        let path = through(dir).join(entry.file_name());
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != device {
            continue;
        }
        if meta.is_dir() {
            total += meta.blocks() * 512;
            if stack.len() < MAX_DEPTH {
                if let Some(sub) = open_dir(&path).filter(|sub| on_device(sub, device)) {
                    stack.extend(listed(sub));
                }
            }
        } else if meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
    }
    Some(total)
}

/// Opens a directory, never through a symlink in its last component.
fn open_dir(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .ok()
}

/// The open directory as a path that resolves to it and nothing else.
fn through(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

fn listed(dir: File) -> Option<(File, ReadDir)> {
    let list = std::fs::read_dir(through(&dir)).ok()?;
    Some((dir, list))
}

fn on_device(dir: &File, device: u64) -> bool {
    dir.metadata().is_ok_and(|meta| meta.dev() == device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("du-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn counts_allocated_bytes_and_hard_links_once() {
        let dir = scratch("bytes");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), vec![1u8; 300_000]).unwrap();
        std::fs::hard_link(dir.join("sub/a"), dir.join("b")).unwrap();
        let used = disk_usage(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!((300_000..400_000).contains(&used), "{used}");
        assert_eq!(disk_usage(&dir), None);
    }

    #[test]
    fn never_follows_a_symlink() {
        let dir = scratch("links");
        let outside = scratch("outside");
        std::fs::write(outside.join("big"), vec![1u8; 1_000_000]).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        let used = disk_usage(&dir).unwrap();
        // The top itself a symlink: not measured at all.
        let top_link = std::env::temp_dir().join(format!("du-top-{}", std::process::id()));
        let _ = std::fs::remove_file(&top_link);
        std::os::unix::fs::symlink(&outside, &top_link).unwrap();
        let through_link = disk_usage(&top_link);
        for path in [&dir, &outside] {
            std::fs::remove_dir_all(path).unwrap();
        }
        std::fs::remove_file(&top_link).unwrap();
        assert!(used < 100_000, "{used}");
        assert_eq!(through_link, None);
    }

    #[test]
    fn a_deep_tree_ends() {
        let dir = scratch("deep");
        let mut path = dir.clone();
        for _ in 0..(MAX_DEPTH + 10) {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        let used = disk_usage(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(used > 0);
    }
}
