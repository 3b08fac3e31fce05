//! `isolation = "sandbox"`: the app runs inside gVisor, Debian's `runsc`, driven directly
//! with an OCI bundle (no Docker). runsc runs rootless as the tenant's own uid, so even the
//! sandbox's host-side processes hold no privilege; it uses the host network (the app
//! listens on 127.0.0.1:$PORT as any other) and lives in the instance's cgroups like any
//! other child, so the limits apply to the whole sandbox.
//!
//! Inside, the root file system is the host's, read-only; `/tmp` is private and the data
//! root shows only the instance's own directory (the same covers as `namespace`). The app
//! runs as uid 0 of the sandbox's user namespace, which is the tenant's unprivileged uid on
//! the host: files it writes in its data directory belong to the tenant's uid.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{environment::DEFAULT_PATH, identity::RunAs, privacy::Cover};

/// Where runsc keeps one instance's bundle and state; removed when the instance stops.
pub fn state_dir(data_root: &Path, slug: &str) -> PathBuf {
    data_root.join(".sandbox").join(slug)
}

/// The runsc binary, or an error that says how to install it.
pub fn find_runsc() -> Result<PathBuf> {
    DEFAULT_PATH
        .split(':')
        .map(|dir| Path::new(dir).join("runsc"))
        .find(|path| path.is_file())
        .context(
            "isolation = \"sandbox\" needs gVisor's runsc, which is not installed: \
             install it with `apt-get install runsc` (Debian/Ubuntu)",
        )
}

/// Everything to start one sandboxed instance.
pub struct SandboxLaunch {
    pub runsc: PathBuf,
    pub args: Vec<String>,
    /// runsc's working directory (its state lives there).
    pub state_dir: PathBuf,
}

pub struct SandboxSpec<'a> {
    pub slug: &'a str,
    /// The host name inside (`service-id`).
    pub hostname: &'a str,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub workdir: &'a Path,
    pub covers: &'a [Cover],
    pub run_as: &'a RunAs,
    pub platform: &'a str,
    pub state_dir: &'a Path,
}

/// Writes the bundle (fresh: state of an earlier run is discarded) and returns the runsc
/// command line.
pub fn prepare(spec: &SandboxSpec) -> Result<SandboxLaunch> {
    let runsc = find_runsc()?;
    if spec.state_dir.exists() {
        std::fs::remove_dir_all(spec.state_dir)
            .with_context(|| format!("removing old sandbox state {}", spec.state_dir.display()))?;
    }
    // The parent is shared by every sandboxed instance: traversable, not listable.
    if let Some(parent) = spec.state_dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
    }
    // Built while root's alone, then given to the tenant deepest first and `<slug>` last:
    // once a directory is the tenant's, a process of its uid could swap what lies below for
    // a symlink, so root does nothing below it any more.
    let bundle = spec.state_dir.join("bundle");
    let state = spec.state_dir.join("state");
    for dir in [spec.state_dir, bundle.as_path(), state.as_path()] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let config = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&oci_config(spec))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&config)
        .and_then(|mut file| file.write_all(&json))
        .with_context(|| format!("writing {}", config.display()))?;
    for path in [
        config.as_path(),
        bundle.as_path(),
        state.as_path(),
        spec.state_dir,
    ] {
        chown(path, spec.run_as)?;
    }
    let args = vec![
        format!("--root={}", state.display()),
        "--rootless".to_string(),
        "--network=host".to_string(),
        format!("--platform={}", spec.platform),
        "run".to_string(),
        format!("--bundle={}", bundle.display()),
        spec.slug.to_string(),
    ];
    Ok(SandboxLaunch {
        runsc,
        args,
        state_dir: spec.state_dir.to_path_buf(),
    })
}

fn chown(path: &Path, run_as: &RunAs) -> Result<()> {
    std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid))
        .with_context(|| format!("giving {} to uid {}", path.display(), run_as.uid))
}

/// The OCI runtime spec runsc reads.
fn oci_config(spec: &SandboxSpec) -> Value {
    let mut mounts = vec![json!({"destination": "/proc", "type": "proc", "source": "proc"})];
    for cover in spec.covers {
        let mode = if cover.writable {
            "mode=1777"
        } else {
            "mode=0755"
        };
        mounts.push(json!({
            "destination": cover.dir, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", mode],
        }));
        for keep in &cover.keep {
            mounts.push(json!({
                "destination": keep, "type": "bind", "source": keep,
                "options": ["rbind", "rw"],
            }));
        }
    }
    let no_capabilities: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": spec.argv,
            "env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": spec.workdir,
            "terminal": false,
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": no_capabilities, "effective": no_capabilities,
                "inheritable": no_capabilities, "permitted": no_capabilities,
            },
        },
        "root": {"path": "/", "readonly": true},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_hides_like_namespace_and_keeps_the_instance_paths() {
        let covers = vec![Cover {
            dir: "/tmp".into(),
            keep: vec!["/tmp/app".into(), "/tmp/data/api/alice".into()],
            writable: true,
        }];
        let argv = vec!["/usr/bin/python3".to_string(), "app.py".to_string()];
        let env = vec![("PORT".to_string(), "31000".to_string())];
        let run_as = RunAs {
            uid: 61000,
            gid: 61000,
            groups: vec![],
        };
        let spec = SandboxSpec {
            slug: "api_alice",
            hostname: "api-alice",
            argv: &argv,
            env: &env,
            workdir: Path::new("/tmp/app"),
            covers: &covers,
            run_as: &run_as,
            platform: "ptrace",
            state_dir: Path::new("/nonexistent"),
        };
        let config = oci_config(&spec);
        assert_eq!(config["process"]["env"][0], "PORT=31000");
        assert_eq!(config["root"]["readonly"], true);
        let mounts = config["mounts"].as_array().unwrap();
        let destinations: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            destinations,
            ["/proc", "/tmp", "/tmp/app", "/tmp/data/api/alice"]
        );
        assert!(!config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ns| ns["type"] == "network"));
    }
}
