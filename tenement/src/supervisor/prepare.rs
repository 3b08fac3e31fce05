//! Everything decided before an instance's process is forked: who it runs as, its data
//! directory, its port, its cgroup, its command line and environment, its isolation.

use std::{
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{
    cgroup::{InstanceCgroup, Limits},
    environment::{self, DEFAULT_PATH},
    identity::{self, RunAs},
    init::InitSpec,
    launch::{Launch, Wrapper},
    ports::PortLease,
    privacy, sandbox, storage, Shared,
};
use crate::config::{InstanceName, Isolation, Placeholders, Service};

/// A launch, and what it holds until the instance stops.
pub struct Prepared {
    pub launch: Launch,
    pub port: PortLease,
    pub cgroup: Option<InstanceCgroup>,
    pub run_as: RunAs,
    /// runsc's bundle and state, removed after the stop.
    pub sandbox_state: Option<PathBuf>,
}

pub fn data_dir(data_root: &Path, name: &InstanceName) -> PathBuf {
    data_root.join(&name.service).join(&name.id)
}

pub fn prepare(shared: &Shared, name: &InstanceName, service: &Service) -> Result<Prepared> {
    let settings = &shared.config.settings;
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
        let mount = || storage::mount(&settings.data_dir, &data_dir, name, quota_mb);
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
    let port = shared
        .ports
        .lease()
        .with_context(|| format!("{name}: no port"))?;
    let values = Placeholders::new(name, &data_dir, port.port());
    let workdir = service.workdir_for(&values);
    let mut argv = environment::argv(service, name, &values)?;
    let env = environment::variables(service, name, &data_dir, port.port(), |key| {
        std::env::var(key).ok()
    });
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
            name.slug(),
            privacy::covers(&settings.data_dir, &needed),
            &run_as,
            workdir.clone(),
        )),
        Isolation::Sandbox => {
            let state_dir = sandbox::state_dir(&settings.data_dir, &name.slug());
            let covers = privacy::covers(&settings.data_dir, &needed);
            let launch = sandbox::prepare(&sandbox::SandboxSpec {
                slug: &name.slug(),
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
        },
        port,
        cgroup,
        run_as,
        sandbox_state,
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

pub fn limits(service: &Service) -> Limits {
    Limits {
        memory_bytes: service.memory_limit_mb.map(|mb| mb * 1024 * 1024),
        cpu_weight: service.cpu_weight,
        pids_max: service.pids_max,
    }
}

/// `{data_root}/{service}/{id}`: owned by the tenant, mode 0700, so no other tenant can
/// read it. The levels above are traversable but not listable by tenants (0711).
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
    let meta = std::fs::metadata(dir)?;
    if root && (meta.uid() != run_as.uid || meta.gid() != run_as.gid) {
        std::os::unix::fs::chown(dir, Some(run_as.uid), Some(run_as.gid))
            .with_context(|| format!("giving {} to uid {}", dir.display(), run_as.uid))?;
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
