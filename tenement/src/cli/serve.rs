//! `tenement serve`: the daemon. Loads the configuration, opens the store and the logs,
//! attaches the kernel monitor to tenement's cgroup subtree, starts the supervisor, and on
//! SIGTERM or SIGINT stops every instance cleanly (they start again with the next `serve`).
//! SIGUSR2 hands the daemon's sockets over to a new binary (see `upgrade.rs`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use super::{
    daemon_log::{self, LogFormat},
    front::{FrontDoor, Listeners},
    upgrade,
};
use crate::{
    api::{Api, ApiListeners, ApiServer},
    config::{self, Config},
    datadir,
    held::HeldFds,
    logs::LogHub,
    monitor::Monitor,
    reload::{self, Overrides, Reloader},
    store::{DataDirLock, Store},
    supervisor::{self, KernelTraffic, Supervisor},
    systemd,
};

/// `--tls` / `--email` on the command line: the common case without editing the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeOptions {
    /// Terminate TLS with ACME certificates (same as `[settings.tls] enabled = true`)
    #[arg(long)]
    pub tls: bool,
    /// Contact email for the ACME account (`[settings.tls] acme_email`)
    #[arg(long, requires = "tls")]
    pub email: Option<String>,
    /// Run without the eBPF programs: activity from the proxy only, readiness by connect
    /// polling (an escape hatch, and the baseline of `cargo xtask bench wake|ebpf`)
    #[arg(long)]
    pub no_kernel_counters: bool,
    /// The daemon's log on stderr: `text` (coloured only on a terminal, never with
    /// NO_COLOR) or `json` (one object per line, for log shippers)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub fn serve(explicit: Option<&Path>, options: &ServeOptions) -> Result<ExitCode> {
    daemon_log::init(options.log_format);
    let path = config::locate(explicit)?;
    let overrides = Overrides {
        tls: options.tls,
        email: options.email.clone(),
    };
    let config = reload::load(&path, &overrides)?;
    // The binary as started: an upgrade runs the file now at this path (replaced or not).
    let exe = std::env::current_exe()
        .map(|path| strip_deleted(&path))
        .context("finding tenement's own binary")?;
    // Before any thread exists: the sockets of the tenement this one replaces, or of
    // systemd's socket activation.
    let held = match upgrade::Incoming::from_env() {
        Some(incoming) => {
            let held = HeldFds::new();
            let count = incoming.take(&held)?;
            tracing::info!(
                "upgrade: took over {count} held sockets; waiting for the previous tenement \
                 to finish its requests and exit"
            );
            incoming.wait_old_gone();
            held
        }
        None => HeldFds::inherit()?,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(
        Arc::new(config),
        (path, overrides),
        options.no_kernel_counters,
        Arc::new(held),
        exe,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `/usr/bin/tenement (deleted)`, as the kernel names a replaced binary: its path.
fn strip_deleted(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(original) => PathBuf::from(original),
        None => path.to_path_buf(),
    }
}

async fn run(
    config: Arc<Config>,
    (path, overrides): (PathBuf, Overrides),
    no_kernel_counters: bool,
    held: Arc<HeldFds>,
    exe: PathBuf,
) -> Result<()> {
    let settings = &config.settings;
    // Before anything else in the data directory: a second daemon on it must leave the
    // first one's store, sockets and tenants alone.
    let lock = DataDirLock::acquire(&settings.data_dir)?;
    for step in datadir::prepare(&settings.data_dir, |name| config.service.contains_key(name))? {
        match step {
            datadir::Migration::Moved { from, to } => {
                tracing::info!("moved {} to {}", from.display(), to.display());
            }
            datadir::Migration::Kept { path, why } => {
                tracing::warn!(
                    "left {} of an earlier version in place: {why}",
                    path.display()
                );
            }
        }
    }
    let listeners = Listeners::bind(&config, &held).await?;
    let api_listeners = ApiListeners::bind(settings, &held).await?;
    let store = Store::open(&settings.data_dir)?;
    let logs = LogHub::new(datadir::logs_dir(&settings.data_dir))?;
    let monitor = if no_kernel_counters {
        Monitor::without_kernel("disabled with --no-kernel-counters")
    } else {
        start_monitor(&config)
    };
    match monitor.kernel_counters() {
        crate::monitor::KernelCounters::Active => tracing::info!("kernel counters: active"),
        crate::monitor::KernelCounters::Off(reason) => {
            tracing::warn!("kernel counters: off ({reason})");
        }
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Without a handler, SIGHUP would end the daemon (and so every tenant): it reloads.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut upgrade_signal = signal(SignalKind::user_defined2())?;
    let (upgrade_asks, mut upgrade_requests) = tokio::sync::mpsc::channel(4);
    let monitor = Arc::new(Mutex::new(monitor));
    let supervisor = Supervisor::start_with(
        config.clone(),
        store.clone(),
        logs.clone(),
        monitor.clone(),
        held.clone(),
    )
    .await?;
    watch_kernel(&supervisor, &monitor);
    let reloader = Arc::new(Reloader::new(path, overrides, supervisor.clone()));
    let api = ApiServer::start(
        Api {
            config: supervisor.live_config(),
            supervisor: supervisor.clone(),
            store: store.clone(),
            logs,
            monitor,
            reloader: Some(reloader.clone()),
            upgrade: Some(upgrade_asks),
        },
        api_listeners,
    )
    .await?;
    let fleet = match &config.fleet {
        Some(fleet) => {
            Some(crate::fleet::Fleet::start(fleet, supervisor.clone(), store.clone()).await?)
        }
        None => None,
    };
    let front = FrontDoor::start(
        config.clone(),
        supervisor.clone(),
        listeners,
        fleet.as_ref().map(|fleet| fleet.placement()),
        fleet.as_ref().map(|fleet| fleet.certificates()),
    )
    .await?;
    api.attach_proxy(front.proxy.request_metrics());
    reloader.attach_proxy(front.proxy.clone());
    if let Some(fleet) = &fleet {
        api.attach_fleet(fleet.clone());
    }
    if let Some(manager) = &front.tls {
        api.attach_tls(manager.clone());
    }
    tracing::info!(
        "tenement {} serving {} (data in {})",
        env!("CARGO_PKG_VERSION"),
        config
            .service
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        settings.data_dir.display()
    );
    // Listeners are bound: systemd (Type=notify) may now consider tenement started.
    if let Err(err) = systemd::notify::ready("serving") {
        tracing::warn!("{err:#}");
    }
    let handover = loop {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping every instance");
                break None;
            }
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping every instance");
                break None;
            }
            _ = upgrade_signal.recv() => {
                tracing::info!("SIGUSR2: upgrading to {}", exe.display());
                if let Ok(handover) = upgrade(&exe, &held).await {
                    break Some(handover);
                }
            }
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading {}", reloader.path().display());
                let _ = systemd::notify::reloading();
                // The outcome is logged by the reload itself.
                let _ = reloader.reload().await;
                let _ = systemd::notify::ready("serving");
            }
            Some((binary, answer)) = upgrade_requests.recv() => {
                let binary = binary.unwrap_or_else(|| exe.clone());
                tracing::info!("upgrade requested through the API: upgrading to {}", binary.display());
                match upgrade(&binary, &held).await {
                    Ok(handover) => {
                        let _ = answer.send(Ok(crate::api::types::UpgradeResponse {
                            old_pid: std::process::id(),
                            new_pid: handover.pid,
                            binary: handover.binary.display().to_string(),
                            sockets: handover.count,
                        }));
                        break Some(handover);
                    }
                    Err(reason) => {
                        let _ = answer.send(Err(reason));
                    }
                }
            }
        }
    };
    match &handover {
        Some(handover) => {
            tracing::info!(
                "upgrade: pid {} ({}) took over {} sockets; finishing in-flight requests",
                handover.pid,
                handover.binary.display(),
                handover.count
            );
            upgrade::migrate_queued_connections();
            // systemd follows the new process as the service's main one.
            let _ = systemd::notify::notify(&format!("MAINPID={}", handover.pid));
        }
        None => {
            let _ = systemd::notify::stopping();
        }
    }
    front.shutdown().await;
    if let Some(fleet) = &fleet {
        fleet.leave().await;
    }
    api.shutdown().await;
    if handover.is_some() {
        // The tenants stay: the new tenement adopts them once this one has exited.
        supervisor.detach();
    } else {
        supervisor.shutdown().await;
    }
    // The new tenement takes the data directory once this one let go of it, then serves.
    drop(lock);
    drop(handover);
    tracing::info!("stopped");
    Ok(())
}

/// Hands over to `binary`; on failure this tenement goes on serving and says why.
async fn upgrade(binary: &Path, held: &Arc<HeldFds>) -> Result<upgrade::Handover, String> {
    let (binary, held) = (binary.to_path_buf(), held.clone());
    let outcome = tokio::task::spawn_blocking(move || upgrade::hand_over(&binary, &held))
        .await
        .map_err(|err| err.to_string())
        .and_then(|result| result.map_err(|err| err.to_string()));
    if let Err(reason) = &outcome {
        tracing::error!("upgrade failed, still serving: {reason}");
    }
    outcome
}

/// The kernel monitor on tenement's cgroup subtree; without one, a monitor that says why
/// kernel counters are off in words a person can act on.
fn start_monitor(config: &Config) -> Monitor {
    match supervisor::cgroup_tree(config) {
        Ok(tree) => match tree.unified_dir() {
            Some(subtree) => Monitor::start(subtree),
            None => Monitor::without_kernel("this host has no cgroup v2 hierarchy"),
        },
        // Without root, a missing subtree is the lesser problem: say what it takes.
        Err(err) if !nix::unistd::geteuid().is_root() => Monitor::without_kernel(&format!(
            "not running as root (loading eBPF programs needs CAP_BPF, CAP_PERFMON and \
             CAP_NET_ADMIN, and a cgroup subtree tenement may write, e.g. systemd's \
             Delegate=yes): {err:#}"
        )),
        Err(err) => Monitor::without_kernel(&format!("no cgroup subtree: {err:#}")),
    }
}

/// Feeds the kernel's view to the supervisor: traffic on an instance's sockets is what the
/// idle reaper goes by (open but silent connections do not keep it awake), and a listen
/// event ends a start's wait at once.
fn watch_kernel(supervisor: &Supervisor, monitor: &Arc<Mutex<Monitor>>) {
    let kernel = monitor.clone();
    supervisor.set_activity_source(Arc::new(move |cgroup_id| {
        let stats = kernel.lock().ok()?.stats(cgroup_id)?;
        Some(KernelTraffic {
            last_packet: stats
                .idle_for()
                .and_then(|idle| std::time::Instant::now().checked_sub(idle)),
        })
    }));
    let mut events = match monitor.lock() {
        Ok(monitor) => monitor.listen_events(),
        Err(_) => return,
    };
    let supervisor = supervisor.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => supervisor.notify_listening(event.cgroup_id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
