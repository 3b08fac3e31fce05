//! Keeps the routing table current. Writers (a backends change, a new configuration) build
//! a whole new table and publish it with a generation number; each client connection keeps
//! its own copy and only looks at the lock when the generation moved, so the request path
//! reads one atomic and never waits.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock, Weak,
    },
};

use super::{
    backend::Backends,
    metrics::RequestMetrics,
    table::{Pools, Table},
};
use crate::config::Config;

pub(crate) struct Router {
    backends: Arc<dyn Backends>,
    config: Mutex<Arc<Config>>,
    pools: Pools,
    requests: Arc<RequestMetrics>,
    current: RwLock<Arc<Table>>,
    generation: AtomicU64,
    /// One rebuild at a time, so an older instance list never overwrites a newer one.
    rebuilding: Mutex<()>,
}

impl Router {
    /// Builds the first table and, inside a tokio runtime, follows the backends' changes
    /// for as long as the router lives.
    pub(crate) fn new(
        config: Arc<Config>,
        backends: Arc<dyn Backends>,
        requests: Arc<RequestMetrics>,
    ) -> Arc<Router> {
        // Subscribe before the first build so that no change falls between the two.
        let changes = backends.changes();
        let router = Arc::new(Router {
            backends,
            config: Mutex::new(config),
            pools: Pools::default(),
            requests,
            current: RwLock::new(Arc::new(Table::default())),
            generation: AtomicU64::new(0),
            rebuilding: Mutex::new(()),
        });
        router.rebuild();
        tokio::spawn(follow_changes(Arc::downgrade(&router), changes));
        router
    }

    pub(crate) fn set_config(&self, config: Arc<Config>) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.rebuild();
    }

    pub(crate) fn rebuild(&self) {
        let _one_at_a_time = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let config = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let table = Table::build(
            &config,
            self.backends.instances(),
            &self.pools,
            &self.requests,
            |name| self.backends.activity_meter(name),
        );
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn backends(&self) -> &Arc<dyn Backends> {
        &self.backends
    }

    pub(crate) fn requests(&self) -> &Arc<RequestMetrics> {
        &self.requests
    }

    /// A reader for one connection.
    pub(crate) fn reader(self: &Arc<Self>) -> TableReader {
        let generation = self.generation.load(Ordering::Acquire);
        TableReader {
            cached: RefCell::new((generation, self.load())),
            router: self.clone(),
        }
    }

    /// Whether `host` resolves to anything in the current table.
    pub(crate) fn routes(&self, host: &str) -> bool {
        self.load().resolve(host, "/").is_ok()
    }

    fn load(&self) -> Arc<Table> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn follow_changes(router: Weak<Router>, mut changes: tokio::sync::watch::Receiver<u64>) {
    while changes.changed().await.is_ok() {
        let Some(router) = router.upgrade() else {
            return;
        };
        router.rebuild();
    }
}

/// One connection's view of the current table.
pub(crate) struct TableReader {
    router: Arc<Router>,
    cached: RefCell<(u64, Arc<Table>)>,
}

impl TableReader {
    pub(crate) fn with<R>(&self, read: impl FnOnce(&Table) -> R) -> R {
        let generation = self.router.generation.load(Ordering::Acquire);
        let mut cached = self.cached.borrow_mut();
        if cached.0 != generation {
            // Read the number before the table: at worst the table is newer than its number
            // and gets fetched once more.
            *cached = (generation, self.router.load());
        }
        read(&cached.1)
    }
}
