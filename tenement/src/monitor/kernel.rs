//! The eBPF side of the monitor: loads tenement's embedded object, attaches its programs to
//! the instance cgroup subtree and reads the per-instance maps.
//!
//! Programs are attached through bpf links owned by this process, so the kernel detaches
//! them when tenement exits for any reason, a crash included: nothing is pinned, nothing can
//! be left behind.

use std::{fs::File, path::Path};

use anyhow::{Context, Result};
use aya::{
    maps::{MapData, PerCpuHashMap, PerCpuValues},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
    util::{nr_cpus, KernelVersion},
    Ebpf,
};
use tenement_common::{maps, programs, TrafficCounters};

/// The object built by build.rs from tenement-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tenement"));

pub struct KernelPrograms {
    // Owns the loaded programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    traffic: PerCpuHashMap<MapData, u64, TrafficCounters>,
    cpus: usize,
}

impl KernelPrograms {
    /// Loads the programs and attaches them to `subtree`, a directory of the cgroup v2
    /// hierarchy; they then see every socket of every cgroup below it.
    pub fn attach(subtree: &Path) -> Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading tenement's eBPF object")?;
        // Kernels from 5.7 attach through bpf links, which always coexist with other programs
        // and take no flags (the kernel rejects BPF_F_ALLOW_MULTI there); older ones use
        // prog_attach, where only ALLOW_MULTI leaves other users' programs in place.
        let mode = if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0)) {
            CgroupAttachMode::Single
        } else {
            CgroupAttachMode::AllowMultiple
        };
        let cgroup =
            File::open(subtree).with_context(|| format!("opening cgroup {}", subtree.display()))?;
        for (name, direction) in [
            (programs::TRAFFIC_INGRESS, CgroupSkbAttachType::Ingress),
            (programs::TRAFFIC_EGRESS, CgroupSkbAttachType::Egress),
        ] {
            let program: &mut CgroupSkb = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
            program
                .attach(&cgroup, direction, mode)
                .with_context(|| format!("attaching {name} to {}", subtree.display()))?;
        }
        let traffic = PerCpuHashMap::try_from(
            ebpf.take_map(maps::TRAFFIC)
                .with_context(|| format!("map {} missing from the object", maps::TRAFFIC))?,
        )?;
        let cpus = nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
        Ok(Self {
            _ebpf: ebpf,
            traffic,
            cpus,
        })
    }

    /// Starts counting for one cgroup (an instance's), from zero.
    pub fn register(&mut self, cgroup_id: u64) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); self.cpus])?;
        self.traffic
            .insert(cgroup_id, zeros, 0)
            .with_context(|| format!("registering cgroup {cgroup_id}"))
    }

    /// Stops counting for a cgroup; its counters are gone.
    pub fn unregister(&mut self, cgroup_id: u64) {
        // Absent already is fine: unregistering is idempotent.
        let _ = self.traffic.remove(&cgroup_id);
    }

    /// Sum over CPUs of what the kernel counted for this cgroup, if it is registered.
    pub fn traffic(&self, cgroup_id: u64) -> Option<TrafficCounters> {
        let per_cpu = self.traffic.get(&cgroup_id, 0).ok()?;
        let mut total = TrafficCounters::default();
        for counters in per_cpu.iter() {
            total.merge(counters);
        }
        Some(total)
    }
}
