//! Unix socket paths of any length. The kernel takes at most 107 bytes for a socket's path
//! (`sun_path`), and a data directory can be deeper than that leaves room for: a longer
//! path is reached through its directory, opened first, as `/proc/self/fd/N/NAME`.

use std::{
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
};

/// The longest path `bind` and `connect` take as it is (`sun_path` less its closing NUL).
const LONGEST: usize = 107;

/// A path to bind or connect a unix socket to. A long one is valid only while this value
/// lives (it holds the directory open): keep it until `bind` or `connect` has returned.
pub struct SocketPath {
    path: PathBuf,
    _dir: Option<OwnedFd>,
}

impl SocketPath {
    pub fn new(path: &Path) -> io::Result<SocketPath> {
        if path.as_os_str().len() <= LONGEST {
            return Ok(SocketPath {
                path: path.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a path to a socket", path.display()),
            ));
        };
        // Resolved as the whole path would be (symlinks among the directories followed), and
        // needing no more than the whole path would: search permission, not read (`O_PATH`).
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?
            .into();
        let mut short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        short.push(name);
        if short.as_os_str().len() > LONGEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the socket name {name:?} is too long"),
            ));
        }
        Ok(SocketPath {
            path: short,
            _dir: Some(dir),
        })
    }
}

impl std::ops::Deref for SocketPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    #[test]
    fn a_socket_deeper_than_sun_path_is_bound_and_reached() {
        let base = crate::test_support::TempDir::new("sockpath");
        let deep = base.0.join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("api.sock");
        assert!(path.as_os_str().len() > LONGEST);

        let listener = UnixListener::bind(&*SocketPath::new(&path).unwrap()).unwrap();
        assert!(path.exists(), "bound at the long path itself");
        let _client = UnixStream::connect(&*SocketPath::new(&path).unwrap()).unwrap();
        listener.accept().unwrap();

        let short = base.0.join("short.sock");
        assert_eq!(&*SocketPath::new(&short).unwrap(), short.as_path());
    }
}
