//! What the monitor reads from cgroup directories the supervisor made: an instance's cgroup
//! id (the key of every kernel map) and its memory usage.

use std::{io, os::unix::fs::MetadataExt, path::Path};

/// The id the kernel gives a cgroup v2 directory (`bpf_get_current_cgroup_id()` and
/// `bpf_skb_cgroup_id()` return it): the directory's inode number on cgroup2fs.
pub fn cgroup_id(cgroup_v2_dir: &Path) -> io::Result<u64> {
    std::fs::metadata(cgroup_v2_dir)
        .map(|m| m.ino())
        .map_err(|err| named(err, cgroup_v2_dir))
}

/// Bytes charged to a memory cgroup: `memory.current` in a cgroup v2 directory, or
/// `memory.usage_in_bytes` in a cgroup v1 memory controller directory (hybrid hosts).
pub fn memory_usage(memory_cgroup_dir: &Path) -> io::Result<u64> {
    let v2 = memory_cgroup_dir.join("memory.current");
    let file = if v2.exists() {
        v2
    } else {
        memory_cgroup_dir.join("memory.usage_in_bytes")
    };
    let text = std::fs::read_to_string(&file).map_err(|err| named(err, &file))?;
    text.trim().parse().map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a byte count ({err}): {text:?}", file.display()),
        )
    })
}

fn named(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v2_then_v1_memory_files() {
        let dir = std::env::temp_dir().join(format!("tenement-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.usage_in_bytes"), "8192\n").unwrap();
        assert_eq!(memory_usage(&dir).unwrap(), 8192);
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        assert_eq!(memory_usage(&dir).unwrap(), 4096);
        std::fs::write(dir.join("memory.current"), "max\n").unwrap();
        let err = memory_usage(&dir).unwrap_err().to_string();
        assert!(err.contains("memory.current"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = memory_usage(&dir).unwrap_err().to_string();
        assert!(err.contains("memory.usage_in_bytes"), "{err}");
    }
}
