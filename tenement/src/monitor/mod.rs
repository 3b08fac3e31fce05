//! Kernel-side observation of instances. With the `ebpf` feature and the privileges to load
//! programs, the kernel counts each instance's traffic; otherwise the monitor says plainly
//! that kernel counters are off, and why, instead of pretending.

#[cfg(feature = "ebpf")]
mod kernel;

use std::path::Path;

pub use tenement_common::TrafficCounters;

/// Whether kernel counters are running, and if not, the reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelCounters {
    Active,
    Off(String),
}

pub struct Monitor {
    #[cfg(feature = "ebpf")]
    programs: Option<kernel::KernelPrograms>,
    status: KernelCounters,
}

impl Monitor {
    /// Attaches the kernel programs to the cgroup v2 directory `subtree`. Never fails: when
    /// the programs cannot run, the monitor works without them and reports why.
    pub fn start(subtree: &Path) -> Self {
        #[cfg(feature = "ebpf")]
        {
            match kernel::KernelPrograms::attach(subtree) {
                Ok(programs) => Self {
                    programs: Some(programs),
                    status: KernelCounters::Active,
                },
                Err(err) => Self {
                    programs: None,
                    status: KernelCounters::Off(format!("{err:#}")),
                },
            }
        }
        #[cfg(not(feature = "ebpf"))]
        {
            let _ = subtree;
            Self::without_kernel("built without the `ebpf` feature")
        }
    }

    /// A monitor with kernel counters off, for the given reason.
    pub fn without_kernel(reason: &str) -> Self {
        Self {
            #[cfg(feature = "ebpf")]
            programs: None,
            status: KernelCounters::Off(reason.to_string()),
        }
    }

    pub fn kernel_counters(&self) -> &KernelCounters {
        &self.status
    }

    /// Starts counting for an instance's cgroup (its cgroup v2 id).
    pub fn register(&mut self, cgroup_id: u64) -> anyhow::Result<()> {
        #[cfg(feature = "ebpf")]
        if let Some(programs) = self.programs.as_mut() {
            return programs.register(cgroup_id);
        }
        let _ = cgroup_id;
        Ok(())
    }

    pub fn unregister(&mut self, cgroup_id: u64) {
        #[cfg(feature = "ebpf")]
        if let Some(programs) = self.programs.as_mut() {
            programs.unregister(cgroup_id);
        }
        let _ = cgroup_id;
    }

    /// What the kernel counted for a registered cgroup; `None` when counters are off.
    pub fn traffic(&self, cgroup_id: u64) -> Option<TrafficCounters> {
        #[cfg(feature = "ebpf")]
        if let Some(programs) = self.programs.as_ref() {
            return programs.traffic(cgroup_id);
        }
        let _ = cgroup_id;
        None
    }
}
