//! tenement's proxy for `cargo xtask bench proxy`, in front of one instance that is already
//! running (`bench:one` on BACKEND_PORT, weight 100), reached as `one.bench.localhost` or
//! `bench.localhost`. Usage: `bench-proxy LISTEN_PORT BACKEND_PORT`.
//!
//! Until the supervisor serves real instances, this is the proxy exactly as `tenement serve`
//! runs it, with the supervisor's side reduced to a fixed answer.

use std::{net::SocketAddr, sync::Arc};

use futures_util::{future::BoxFuture, FutureExt};
use tenement::{
    config::{Config, InstanceName},
    proxy::{
        ActivityGuard, BackendInstance, BackendState, Backends, Endpoint, Options, Proxy, WakeError,
    },
};
use tokio::sync::watch;

struct OneInstance {
    port: u16,
    changes: watch::Sender<u64>,
}

impl Backends for OneInstance {
    fn instances(&self) -> Vec<BackendInstance> {
        vec![BackendInstance {
            name: InstanceName::parse("bench:one").expect("valid name"),
            weight: 100,
            state: BackendState::Running,
            endpoint: Some(Endpoint::Port(self.port)),
        }]
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn ensure_running(
        &self,
        _name: &InstanceName,
    ) -> BoxFuture<'static, Result<Endpoint, WakeError>> {
        futures_util::future::ready(Ok(Endpoint::Port(self.port))).boxed()
    }

    fn activity(&self, _name: &InstanceName) -> ActivityGuard {
        ActivityGuard::none()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let usage = || anyhow::anyhow!("usage: bench-proxy LISTEN_PORT BACKEND_PORT");
    let listen: u16 = args.next().ok_or_else(usage)?.parse()?;
    let backend: u16 = args.next().ok_or_else(usage)?.parse()?;
    let config = Arc::new(Config::parse(
        "[settings]\ndomain = \"localhost\"\n[service.bench]\ncommand = \"bench-backend\"\n",
        "bench-proxy",
    )?);
    let backends = Arc::new(OneInstance {
        port: backend,
        changes: watch::channel(0).0,
    });
    let listeners = tenement::proxy::bind(&[SocketAddr::from(([127, 0, 0, 1], listen))])?;
    let proxy = Proxy::new(config, backends, Options::default());
    proxy
        .serve(listeners, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
