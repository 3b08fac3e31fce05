//! `storage_quota_mb` enforced by the file system: an instance with a quota gets its own
//! ext4 image (`{data_dir}/.storage/SERVICE_ID.img`, sparse, exactly the quota in size),
//! loop-mounted on its data directory while it runs. A tenant writing past it gets ENOSPC
//! from the kernel, at once. This works on any host file system, needs root, `mkfs.ext4`
//! (e2fsprogs) and loop devices; [`enforcement`] says whether this host has them, and
//! without them the quota is only measured (see `reaper.rs`).
//!
//! The image lives as long as the instance's data does: it is unmounted when the instance
//! stops (and at shutdown), mounted again at its next start, and deleted with the data
//! (`storage_persist = false`).

use std::{
    io::ErrorKind,
    os::unix::{
        fs::{DirBuilderExt, OpenOptionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::identity::RunAs;
use crate::config::InstanceName;

/// How `storage_quota_mb` is applied on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// A loop-mounted ext4 image per instance: writes past the quota fail with ENOSPC.
    Filesystem,
    /// Usage is measured every 30 s; going over records a `quota-exceeded` event and a
    /// warning in the instance's log, nothing more. The reason says why.
    Measured(String),
}

/// How quotas are applied in this run of tenement (the host does not change under it).
pub fn current() -> &'static Enforcement {
    static CURRENT: std::sync::OnceLock<Enforcement> = std::sync::OnceLock::new();
    CURRENT.get_or_init(enforcement)
}

/// Whether this host can give instances their own file system.
pub fn enforcement() -> Enforcement {
    if !nix::unistd::geteuid().is_root() {
        return Enforcement::Measured("not running as root (mounting needs it)".into());
    }
    if find_program("mkfs.ext4").is_none() {
        return Enforcement::Measured("mkfs.ext4 not found (install e2fsprogs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Enforcement::Measured(
            "no loop devices (/dev/loop-control is missing; modprobe loop)".into(),
        );
    }
    Enforcement::Filesystem
}

fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
}

/// `{data_root}/.storage`: root's alone (0700), tenants never see the images.
fn images_dir(data_root: &Path) -> PathBuf {
    data_root.join(".storage")
}

pub fn image_path(data_root: &Path, name: &InstanceName) -> PathBuf {
    images_dir(data_root).join(format!("{}.img", name.slug()))
}

/// Mounts the instance's image on `data_dir` (an existing directory), creating the image
/// at its first start. Files already in `data_dir` (from before it had a quota) are moved
/// into the new image. Does nothing when it is mounted already (a restart, or an instance
/// adopted after a restart of tenement).
pub fn mount(
    data_root: &Path,
    data_dir: &Path,
    name: &InstanceName,
    quota_mb: u64,
    run_as: &RunAs,
) -> Result<()> {
    if is_mountpoint(data_dir)? {
        return Ok(());
    }
    let image = image_path(data_root, name);
    let fresh = create_image(data_root, &image, quota_mb)
        .with_context(|| format!("{name}: creating its storage image {}", image.display()))?;
    if fresh && has_entries(data_dir)? {
        move_into_image(&image, data_dir, run_as)
            .with_context(|| format!("{name}: moving its existing data into its quota image"))?;
    }
    mount_image(&image, data_dir).with_context(|| {
        format!(
            "{name}: mounting its storage image on {}",
            data_dir.display()
        )
    })
}

/// Unmounts the instance's image from `data_dir`, if mounted. Lazily when something still
/// holds it (the mount then goes once the last holder does).
pub fn unmount(data_dir: &Path) -> Result<()> {
    if !is_mountpoint(data_dir)? {
        return Ok(());
    }
    if run(Command::new("umount").arg(data_dir)).is_err() {
        run(Command::new("umount").arg("-l").arg(data_dir))
            .with_context(|| format!("unmounting {}", data_dir.display()))?;
    }
    Ok(())
}

/// Deletes the image (with `storage_persist = false`, after [`unmount`]).
pub fn remove_image(data_root: &Path, name: &InstanceName) -> Result<()> {
    match std::fs::remove_file(image_path(data_root, name)) {
        Err(err) if err.kind() != ErrorKind::NotFound => Err(err.into()),
        _ => Ok(()),
    }
}

/// Unmounts every instance image mounted under `data_root` (at shutdown: instances that
/// ended on their own, failed ones, keep theirs until then).
pub fn unmount_all(data_root: &Path) {
    let Ok(mounts) = mount_points() else { return };
    let Ok(root) = data_root.canonicalize() else {
        return;
    };
    for point in mounts {
        let inside = point
            .strip_prefix(&root)
            .is_ok_and(|rest| rest.components().count() == 2 && !rest.starts_with(".storage"));
        if inside {
            if let Err(err) = unmount(&point) {
                tracing::warn!("{err:#}");
            }
        }
    }
}

/// Bytes used on the file system mounted at `dir` (its statvfs), when `dir` is a mount
/// point: cheap, unlike walking the tree.
pub fn used_bytes(dir: &Path) -> Option<u64> {
    if !is_mountpoint(dir).ok()? {
        return None;
    }
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    let blocks = stat.blocks().saturating_sub(stat.blocks_free());
    Some(blocks * stat.fragment_size())
}

/// A sparse file of exactly `quota_mb` MiB with an ext4 file system on it (no blocks
/// reserved for root: the tenant gets all of it). False when it existed already.
fn create_image(data_root: &Path, image: &Path, quota_mb: u64) -> Result<bool> {
    let dir = images_dir(data_root);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .or_else(|err| match err.kind() {
            ErrorKind::AlreadyExists => Ok(()),
            _ => Err(err),
        })?;
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(image)
    {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(err) => return Err(err.into()),
    };
    let made = file
        .set_len(quota_mb * 1024 * 1024)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            run(
                Command::new(find_program("mkfs.ext4").unwrap_or("mkfs.ext4".into()))
                    .args(["-q", "-F", "-m", "0", "-L", "tenement"])
                    .arg(image),
            )
        });
    if let Err(err) = made {
        let _ = std::fs::remove_file(image);
        return Err(err);
    }
    Ok(true)
}

fn mount_image(image: &Path, target: &Path) -> Result<()> {
    // `-o loop` lets mount(8) pick a free loop device and mark it autoclear: the device is
    // released by the unmount, nothing to detach afterwards.
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
        .arg(image)
        .arg(target))
}

/// Moves what `data_dir` holds into the freshly made image. The copy runs as the tenant:
/// the tree is the tenant's, and a process of its uid could swap a directory in it for a
/// symlink mid-walk, which a copy as root would follow to files the tenant may not read.
/// The image is mounted for it beside `data_dir` (`.ID.staging` in the service's directory:
/// root's, which the tenant may cross but not write; no instance id starts with a dot).
fn move_into_image(image: &Path, data_dir: &Path, run_as: &RunAs) -> Result<()> {
    let id = data_dir
        .file_name()
        .context("the data directory has no name")?
        .to_string_lossy();
    let staging = data_dir.with_file_name(format!(".{id}.staging"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .or_else(|err| match err.kind() {
            ErrorKind::AlreadyExists => Ok(()),
            _ => Err(err),
        })?;
    mount_image(image, &staging)?;
    // The fresh file system's root, in a directory only root writes: safe to give by path.
    std::os::unix::fs::chown(&staging, Some(run_as.uid), Some(run_as.gid))?;
    let mut source = data_dir.as_os_str().to_owned();
    source.push("/.");
    // Not `-a`: ownership cannot be kept by the tenant and need not be (the copies are
    // its own); symlinks are copied as symlinks (`-P`).
    let copied = run(Command::new("cp")
        .args(["-RP", "--preserve=mode,timestamps,links"])
        .arg(&source)
        .arg(&staging)
        .uid(run_as.uid)
        .gid(run_as.gid));
    let unmounted = run(Command::new("umount").arg(&staging));
    let _ = std::fs::remove_dir(&staging);
    copied?;
    unmounted?;
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        let removed = if path.symlink_metadata()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {} after copying it", path.display()))?;
    }
    Ok(())
}

fn has_entries(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_some())
}

fn is_mountpoint(dir: &Path) -> Result<bool> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(false);
    };
    Ok(mount_points()?.contains(&dir))
}

/// Mount points of this mount namespace, from /proc/self/mountinfo (field 5, with its
/// octal escapes for spaces and the like undone).
fn mount_points() -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStringExt;
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(std::ffi::OsString::from_vec(unescape(escaped))))
        .collect())
}

fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[at], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                at += 4;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    out
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command.get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/srv/my\040data"), b"/srv/my data");
        assert_eq!(unescape(r"/a\134b"), b"/a\\b");
        assert_eq!(unescape(r"/plain\"), b"/plain\\");
    }
}
