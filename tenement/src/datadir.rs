//! Where tenement keeps its own files inside `data_dir`, apart from its tenants' rooms.
//!
//! Instances live in `{data_dir}/{service}/{id}`. Everything tenement keeps there for
//! itself has a name with a dot in it: `tenement.db` (and its `-wal`/`-shm`),
//! `tenement.sock`, `.sandbox/` and `.tenement/` (logs, TLS store). Service names are DNS
//! labels (`a-z`, `0-9`, `-`), so no service or instance name can ever reach one of them.
//! Before this layout, logs and the TLS store were `{data_dir}/logs` and `{data_dir}/tls`:
//! a service named `logs` or `tls` owned them. [`prepare`] moves such a layout into place.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// tenement's own directory in `data_dir`: root only (mode 0700).
pub const OWN_DIR: &str = ".tenement";

/// The directories of earlier versions that now live in [`OWN_DIR`].
const MOVED: [&str; 2] = ["logs", "tls"];

pub fn own_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(OWN_DIR)
}

/// Per-instance output: `{data_dir}/.tenement/logs/{service}/{id}.log`.
pub fn logs_dir(data_dir: &Path) -> PathBuf {
    own_dir(data_dir).join("logs")
}

/// The proxy's access log (`settings.access_log`): `{data_dir}/.tenement/access.log`.
pub fn access_log(data_dir: &Path) -> PathBuf {
    own_dir(data_dir).join("access.log")
}

/// The ACME accounts and certificates: `{data_dir}/.tenement/tls/`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    own_dir(data_dir).join("tls")
}

/// Where each guard listens for the next tenement: `{data_dir}/.tenement/adopt/`.
pub fn adopt_dir(data_dir: &Path) -> PathBuf {
    own_dir(data_dir).join("adopt")
}

/// What [`prepare`] did with a directory of the old layout.
#[derive(Debug, PartialEq, Eq)]
pub enum Migration {
    Moved {
        from: PathBuf,
        to: PathBuf,
    },
    /// Left where it is, with the reason.
    Kept {
        path: PathBuf,
        why: String,
    },
}

/// Creates `data_dir` and `{data_dir}/.tenement` (mode 0700), and moves `{data_dir}/logs`
/// and `{data_dir}/tls` of an earlier version into it. A directory of the old layout is
/// left in place when a configured service has its name (that service's instances have
/// their data in it too, so it cannot be told apart) or when the new one exists already.
pub fn prepare(data_dir: &Path, is_service: impl Fn(&str) -> bool) -> Result<Vec<Migration>> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let own = own_dir(data_dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&own)
        .or_else(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(err),
        })
        .with_context(|| format!("creating {}", own.display()))?;
    let meta = std::fs::symlink_metadata(&own)?;
    anyhow::ensure!(
        meta.is_dir(),
        "{} is not a directory (a symlink?): tenement keeps its own files there",
        own.display()
    );
    if meta.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", own.display()))?;
    }
    let mut done = Vec::new();
    for name in MOVED {
        let from = data_dir.join(name);
        let is_dir = std::fs::symlink_metadata(&from).is_ok_and(|meta| meta.is_dir());
        if !is_dir {
            continue;
        }
        let to = own.join(name);
        if is_service(name) {
            done.push(Migration::Kept {
                path: from,
                why: format!(
                    "a service is named `{name}`, so its instances' data may be in it too; \
                     move what belongs to tenement into {} by hand",
                    to.display()
                ),
            });
        } else if std::fs::symlink_metadata(&to).is_ok() {
            done.push(Migration::Kept {
                path: from,
                why: format!("{} exists already", to.display()),
            });
        } else {
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
            done.push(Migration::Moved { from, to });
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_the_old_layout_unless_a_service_has_the_name() {
        let dir = crate::test_support::TempDir::new("datadir-move");
        let data = dir.0.as_path();
        std::fs::create_dir_all(data.join("logs/notes")).unwrap();
        std::fs::write(data.join("logs/notes/alice.log"), "{}\n").unwrap();
        std::fs::create_dir_all(data.join("tls/acme")).unwrap();

        let done = prepare(data, |name| name == "tls").unwrap();
        assert_eq!(
            done[0],
            Migration::Moved {
                from: data.join("logs"),
                to: data.join(".tenement/logs")
            }
        );
        assert!(matches!(&done[1], Migration::Kept { why, .. } if why.contains("`tls`")));
        assert!(logs_dir(data).join("notes/alice.log").exists());
        assert!(!data.join("logs").exists());
        assert!(data.join("tls/acme").exists());
        let mode = std::fs::metadata(own_dir(data))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        // Nothing left to move: nothing done.
        std::fs::remove_dir_all(data.join("tls")).unwrap();
        assert_eq!(prepare(data, |_| false).unwrap(), vec![]);
    }

    #[test]
    fn refuses_a_symlinked_own_dir() {
        let dir = crate::test_support::TempDir::new("datadir-symlink");
        let elsewhere = dir.0.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let data = dir.0.join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.join(OWN_DIR)).unwrap();
        assert!(prepare(&data, |_| false).is_err());
    }
}
