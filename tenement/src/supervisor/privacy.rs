//! What a namespaced or sandboxed instance sees of the file system: `/tmp` and `/dev/shm`
//! are empty and private, and under the data root only its own data directory exists.
//! Each hidden directory is covered by an empty tmpfs, and the paths this instance needs
//! from under it (its data directory, its working directory, its program's directory) are
//! bound back at the same place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cover {
    pub dir: PathBuf,
    /// Paths under `dir` bound back in place, outermost first.
    pub keep: Vec<PathBuf>,
    /// `/tmp` stays writable (by everyone, sticky); the data root's cover is read-only.
    pub writable: bool,
}

/// The covers for an instance. Paths are made canonical, so a data root reached through a
/// symlink is still hidden.
pub fn covers(data_root: &Path, needed: &[&Path]) -> Vec<Cover> {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let needed: Vec<PathBuf> = needed.iter().map(|p| canonical(p)).collect();
    let mut candidates = vec![(PathBuf::from("/tmp"), true)];
    if Path::new("/dev/shm").is_dir() {
        candidates.push((PathBuf::from("/dev/shm"), true));
    }
    candidates.push((canonical(data_root), false));

    let mut covers: Vec<Cover> = Vec::new();
    for (dir, writable) in candidates {
        // Everything under an earlier cover is hidden already (a data root inside /tmp).
        if covers.iter().any(|c| dir.starts_with(&c.dir)) {
            continue;
        }
        let mut keep: Vec<PathBuf> = needed
            .iter()
            .filter(|p| p.starts_with(&dir) && **p != dir && p.is_dir())
            .cloned()
            .collect();
        keep.sort();
        keep.dedup();
        // A path inside another kept one comes along with it.
        let outer = keep.clone();
        keep.retain(|p| !outer.iter().any(|o| o != p && p.starts_with(o)));
        covers.push(Cover {
            dir,
            keep,
            writable,
        });
    }
    covers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_root_inside_tmp_is_hidden_by_the_tmp_cover() {
        let base = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(format!("privacy-test-{}", std::process::id()));
        let data_root = base.join("data");
        let own = data_root.join("api/alice");
        let app = base.join("app");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(&app).unwrap();
        let covers = covers(&data_root, &[&own, &app, &app.join("bin")]);
        std::fs::remove_dir_all(&base).unwrap();
        let tmp = covers.iter().find(|c| c.dir == Path::new("/tmp")).unwrap();
        assert!(tmp.writable);
        assert_eq!(tmp.keep, vec![app, own]);
        assert!(
            !covers.iter().any(|c| c.dir == data_root),
            "the data root lies inside /tmp: {covers:?}"
        );
    }

    #[test]
    fn data_root_elsewhere_gets_its_own_read_only_cover() {
        // /proc/self is a directory outside /tmp that always exists.
        let covers = covers(Path::new("/proc/self"), &[Path::new("/proc/self/fd")]);
        let data = covers.last().unwrap();
        assert!(!data.writable);
        assert!(data.keep.iter().all(|k| k.starts_with(&data.dir)));
    }
}
