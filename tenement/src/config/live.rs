//! The configuration the daemon runs with, replaced whole by `tenement reload`. Readers take
//! a snapshot (`get`) and keep it for the operation at hand, so one request or one start
//! never sees half of an old file and half of a new one.

use std::sync::{Arc, RwLock};

use super::Config;

#[derive(Clone, Debug)]
pub struct LiveConfig(Arc<RwLock<Arc<Config>>>);

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> LiveConfig {
        LiveConfig(Arc::new(RwLock::new(config)))
    }

    /// The current configuration.
    pub fn get(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `config` the current one for every later `get`.
    pub fn set(&self, config: Arc<Config>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}
