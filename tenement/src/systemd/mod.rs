//! Running under systemd: the unit `tenement install` writes, and the readiness notification
//! `tenement serve` sends once it listens.

pub mod install;
pub mod notify;
pub mod unit;
