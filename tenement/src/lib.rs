//! tenement: a process hypervisor for many single-tenant services on one Linux server.
//! `main.rs` is only the entry point; each concern lives in its own module.
// A panic in the daemon takes every tenant's proxy with it: errors are handled, not unwrapped
// (tests may unwrap: clippy.toml allows it there).
#![warn(clippy::unwrap_used)]

pub mod api;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod datadir;
pub mod endpoint;
pub mod fleet;
pub mod held;
pub mod logs;
pub mod monitor;
pub mod proxy;
pub mod reload;
pub mod sockpath;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod tls;

#[cfg(test)]
mod test_support;
