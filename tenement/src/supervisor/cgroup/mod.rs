//! Per-instance cgroups under the cgroup tenement runs in.

mod dynmods;
mod files;
mod freezer;
mod instance;
mod layout;
mod tree;

pub use dynmods::favor_dynamic_moves;
pub use files::Version;
pub use freezer::{thaw_any, FreezeError, Freezer};
pub use instance::{InstanceCgroup, Limits};
pub use layout::{CgroupLayout, ControllerHome, Hierarchy, LayoutKind, CONTROLLERS};
pub use tree::{subtree_name, CgroupTree};
