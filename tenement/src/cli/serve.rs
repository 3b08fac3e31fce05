//! `tenement serve`: the daemon. Loads the configuration, opens the store and the logs,
//! attaches the kernel monitor to tenement's cgroup subtree, starts the supervisor, and on
//! SIGTERM or SIGINT stops every instance cleanly (they start again with the next `serve`).

use std::{
    path::Path,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    api::{Api, ApiServer},
    config::{self, Config},
    logs::LogHub,
    monitor::Monitor,
    store::Store,
    supervisor::{self, Supervisor},
    systemd,
};

pub fn serve(explicit: Option<&Path>) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| LossyStderr)
        .init();
    let path = config::locate(explicit)?;
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(Arc::new(config)))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(config: Arc<Config>) -> Result<()> {
    let settings = &config.settings;
    let store = Store::open(&settings.data_dir)?;
    let logs = LogHub::new(settings.data_dir.join("logs"))?;
    let monitor = match supervisor::cgroup_tree(&config) {
        Ok(tree) => match tree.unified_dir() {
            Some(subtree) => Monitor::start(subtree),
            None => Monitor::without_kernel("this host has no cgroup v2 hierarchy"),
        },
        Err(err) => Monitor::without_kernel(&format!("no cgroup subtree: {err:#}")),
    };
    match monitor.kernel_counters() {
        crate::monitor::KernelCounters::Active => tracing::info!("kernel counters: active"),
        crate::monitor::KernelCounters::Off(reason) => {
            tracing::warn!("kernel counters: off ({reason})")
        }
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let monitor = Arc::new(Mutex::new(monitor));
    let supervisor =
        Supervisor::start(config.clone(), store.clone(), logs.clone(), monitor.clone()).await?;
    let api = ApiServer::start(Api {
        config: config.clone(),
        supervisor: supervisor.clone(),
        store,
        logs,
        monitor,
    })
    .await?;
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
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping every instance"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping every instance"),
    }
    let _ = systemd::notify::stopping();
    api.shutdown().await;
    supervisor.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// stderr that never fails: a daemon whose log reader went away keeps running (the default
/// writer's error path panics).
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
