//! Per-instance cgroups under the cgroup tenement runs in.

mod layout;

pub use layout::{CgroupLayout, ControllerHome, Hierarchy, LayoutKind, CONTROLLERS};
