//! Everything decided before an instance's process is forked: who it runs as, its data
//! directory, its port, its cgroup, its command line and environment, its isolation.

use std::{
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{
    cgroup::{InstanceCgroup, Limits},
    env_file,
    environment::{self, DEFAULT_PATH},
    identity::{self, RunAs},
    init::InitSpec,
    launch::{self, Launch, Wrapper},
    ports::PortLease,
    privacy, sandbox, storage, Shared,
};
use crate::{
    config::{InstanceName, Isolation, Listen, Placeholders, Service, SOCKET_FILE},
    endpoint::Endpoint,
};

/// A launch, and what it holds until the instance stops.
pub struct Prepared {
    pub launch: Launch,
    /// Where the instance will listen.
    pub endpoint: Endpoint,
    /// Its port, held until it stops (none with `listen = "unix"`).
    pub port: Option<PortLease>,
    pub cgroup: Option<InstanceCgroup>,
    pub run_as: RunAs,
    /// runsc's bundle and state, removed after the stop.
    pub sandbox_state: Option<PathBuf>,
}

pub fn data_dir(data_root: &Path, name: &InstanceName) -> PathBuf {
    data_root.join(&name.service).join(&name.id)
}

pub fn prepare(shared: &Shared, name: &InstanceName, service: &Service) -> Result<Prepared> {
    let config = shared.config();
    let settings = &config.settings;
    let root = identity::running_as_root();
    if service.isolation == Isolation::Namespace && !root {
        bail!(
            "{name}: isolation = \"namespace\" needs tenement to run as root (creating PID and \
             mount namespaces is a privileged operation); use \"process\" or \"sandbox\""
        );
    }
    let run_as = identity::resolve(
        name,
        service.user.as_deref(),
        settings.uid_range,
        &shared.store,
    )?;
    let data_dir = data_dir(&settings.data_dir, name);
    create_data_dir(&settings.data_dir, &data_dir, &run_as, root)?;
    if let (Some(quota_mb), storage::Enforcement::Filesystem) =
        (service.storage_quota_mb, storage::current())
    {
        // mkfs and mount take a moment: on the daemon's multi-threaded runtime, let its
        // other tasks go on meanwhile (a single-threaded runtime cannot hand them over).
        let mount = || storage::mount(&settings.data_dir, &data_dir, name, quota_mb, &run_as);
        let multi_threaded = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if multi_threaded {
            tokio::task::block_in_place(mount)?;
        } else {
            mount()?;
        }
        // The mounted file system's root becomes the data directory: the tenant's, 0700.
        create_data_dir(&settings.data_dir, &data_dir, &run_as, root)?;
    }
    let mut activation = None;
    let (endpoint, port) = match service.listen {
        Listen::Port if service.socket_activation => {
            // The port (and its lease) belongs to the held socket, not to this attempt.
            let (port, socket, _) = shared.activation.ensure(&shared.ports, name)?;
            activation = Some(socket);
            (Endpoint::Port(port), None)
        }
        Listen::Port => {
            let port = shared
                .ports
                .lease()
                .with_context(|| format!("{name}: no port"))?;
            (Endpoint::Port(port.port()), Some(port))
        }
        Listen::Unix => (socket_endpoint(name, &data_dir, &run_as)?, None),
    };
    // `{port}` is refused at config check with listen = "unix".
    let values = Placeholders::new(name, &data_dir, endpoint.port().unwrap_or(0));
    let workdir = service.workdir_for(&values);
    let mut argv = environment::argv(service, name, &values)?;
    let mut env = environment::variables(service, name, &data_dir, &endpoint, |key| {
        std::env::var(key).ok()
    });
    if let Some(path) = &service.env_file {
        let secrets = env_file::read(path).with_context(|| format!("{name}: its env_file"))?;
        environment::overlay(&mut env, secrets);
    }
    let search = environment::lookup(&env, "PATH").unwrap_or(DEFAULT_PATH);
    let program = identity::resolve_program(&argv[0], &workdir, search, &run_as)
        .with_context(|| format!("{name}: starting its command"))?;
    argv[0] = program.display().to_string();

    let cgroup = match &shared.cgroups {
        Some(tree) => Some(tree.instance(&name.slug(), &limits(service))?),
        None => None,
    };
    let needed = needed_paths(&data_dir, &workdir, &argv);
    let needed: Vec<&Path> = needed.iter().map(PathBuf::as_path).collect();
    let mut sandbox_state = None;
    let wrapper = match service.isolation {
        Isolation::Process => Wrapper::Direct,
        Isolation::Namespace => Wrapper::Init(InitSpec::new(
            name.hostname(),
            privacy::covers(&settings.data_dir, &needed),
            &run_as,
            workdir.clone(),
        )),
        Isolation::Sandbox => {
            let state_dir = sandbox::state_dir(&settings.data_dir, &name.slug());
            let covers = privacy::covers(&settings.data_dir, &needed);
            let launch = sandbox::prepare(&sandbox::SandboxSpec {
                slug: &name.slug(),
                hostname: &name.hostname(),
                argv: &argv,
                env: &env,
                workdir: &workdir,
                covers: &covers,
                run_as: &run_as,
                platform: &settings.sandbox_platform,
                state_dir: &state_dir,
            })
            .with_context(|| format!("{name}: preparing its sandbox"));
            let launch = match launch {
                Ok(launch) => launch,
                Err(err) => {
                    if let Some(cgroup) = &cgroup {
                        let _ = cgroup.remove();
                    }
                    return Err(err);
                }
            };
            sandbox_state = Some(state_dir);
            Wrapper::Sandbox(launch)
        }
    };
    Ok(Prepared {
        launch: Launch {
            argv,
            env,
            workdir,
            run_as: root.then(|| run_as.clone()),
            wrapper,
            die_with_tenement: shared.cgroups.is_none(),
            activation: activation.map(|socket| launch::Activation {
                socket,
                name: name.service.clone(),
            }),
        },
        endpoint,
        port,
        cgroup,
        run_as,
        sandbox_state,
    })
}

/// `{data_dir}/app.sock`, owned by the instance's uid once it listens. A socket left by the
/// instance's last run is removed first: most servers fail to bind over one. (Removing a
/// name never follows a symlink; the directory itself is the tenant's, below root's.)
fn socket_endpoint(name: &InstanceName, data_dir: &Path, run_as: &RunAs) -> Result<Endpoint> {
    let path = data_dir.join(SOCKET_FILE);
    // sun_path holds 108 bytes, the terminating NUL included.
    let len = path.as_os_str().len();
    if len > 107 {
        bail!(
            "{name}: its socket path {} is {len} bytes long, more than a unix socket \
             allows (107): use a shorter data_dir (or shorter service and instance names)",
            path.display()
        );
    }
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("{name}: removing the old {}", path.display()))
        }
        _ => {}
    }
    Ok(Endpoint::Unix {
        path: path.into(),
        owner: run_as.uid,
    })
}

/// What a namespaced or sandboxed instance must still see where everything else is hidden:
/// its data and working directories, and the directories of the program and of every
/// absolute path on its command line (`python3 /srv/app/main.py`).
fn needed_paths(data_dir: &Path, workdir: &Path, argv: &[String]) -> Vec<PathBuf> {
    let mut needed = vec![data_dir.to_path_buf(), workdir.to_path_buf()];
    for arg in argv.iter().map(Path::new).filter(|p| p.is_absolute()) {
        if arg.is_dir() {
            needed.push(arg.to_path_buf());
        } else if let (true, Some(parent)) = (arg.exists(), arg.parent()) {
            needed.push(parent.to_path_buf());
        }
    }
    needed
}

pub(super) fn limits(service: &Service) -> Limits {
    Limits {
        memory_bytes: service.memory_limit_mb.map(|mb| mb * 1024 * 1024),
        cpu_weight: service.cpu_weight,
        pids_max: service.pids_max,
    }
}

/// `{data_root}/{service}/{id}`: owned by the tenant, mode 0700, so no other tenant can
/// read it. The levels above are traversable but not listable by tenants (0711). Ownership
/// and mode are set through a descriptor opened with `O_NOFOLLOW`: were the directory ever
/// replaced by a symlink, root would refuse it rather than chown what the link names.
fn create_data_dir(data_root: &Path, dir: &Path, run_as: &RunAs, root: bool) -> Result<()> {
    let service_dir = dir.parent().expect("data dirs have a service level");
    for level in [data_root, service_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(level)
            .with_context(|| format!("creating {}", level.display()))?;
        if root {
            std::fs::set_permissions(level, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("setting the mode of {}", level.display()))?;
        }
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .or_else(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(err),
        })
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .with_context(|| format!("opening data directory {} (not a symlink)", dir.display()))?;
    let meta = handle.metadata()?;
    if root && (meta.uid() != run_as.uid || meta.gid() != run_as.gid) {
        std::os::unix::fs::fchown(&handle, Some(run_as.uid), Some(run_as.gid))
            .with_context(|| format!("giving {} to uid {}", dir.display(), run_as.uid))?;
    }
    if meta.mode() & 0o7777 != 0o700 {
        handle.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_too_long_for_a_unix_socket_is_refused() {
        let name = InstanceName::parse("web:alice").unwrap();
        let run_as = RunAs {
            uid: 61000,
            gid: 61000,
            groups: vec![],
        };
        let long = Path::new("/srv").join("d".repeat(100));
        let err = socket_endpoint(&name, &long, &run_as)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("more than a unix socket allows (107)"),
            "{err}"
        );
        let short = Path::new("/nonexistent/web/alice");
        let endpoint = socket_endpoint(&name, short, &run_as).unwrap();
        assert_eq!(
            endpoint,
            Endpoint::Unix {
                path: short.join("app.sock").into(),
                owner: 61000
            }
        );
    }
}
