//! The eBPF side of the monitor: loads tenement's embedded object, attaches its programs and
//! reads the per-instance maps.
//!
//! Every program is attached through a bpf link owned by this process, so the kernel detaches
//! it when tenement exits for any reason, a crash included: nothing is pinned, nothing can be
//! left behind, and the next start simply loads afresh. The per-instance counter maps are
//! also held by tenement's guard (see `supervisor/guard.rs`, by fd, not pinned): a tenement
//! that adopts instances after a crash reads their totals from them and counts on from there.

use std::{
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::Mutex,
};

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, PerfEvent,
        RawTracePoint, SockOps,
    },
    util::{nr_cpus, online_cpus, KernelVersion},
    Btf, Ebpf,
};
use tenement_common::{maps, programs, CpuCounters, TcpCounters, TrafficCounters, CPU_TICK_NS};

use super::{
    network::{self, NetworkMaps},
    policy::{HostPorts, NetworkDenials, NetworkIsolation, NetworkPolicy},
    stats::KernelStats,
};

/// Reads the kernel programs' log lines (aya-log) into tenement's log.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The object built by build.rs from tenement-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tenement"));

pub struct KernelPrograms {
    // Owns the loaded programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    maps: Mutex<InstanceMaps>,
    network: Mutex<NetworkMaps>,
    network_status: NetworkIsolation,
    cpus: usize,
    /// Copies of the counter maps' fds, by name (`map:traffic`, ...), for the guard.
    map_fds: Vec<(&'static str, OwnedFd)>,
    /// The counter maps of an earlier tenement, to carry adopted instances' totals over.
    previous: Mutex<Option<InstanceMaps>>,
}

/// What `attach` hands to the reader thread: listen events and the kernel's log lines.
pub struct KernelOutput {
    pub listen_events: RingBuf<MapData>,
    pub logger: Option<KernelLogger>,
}

/// The maps keyed by instance cgroup id. Userspace alone inserts and removes their entries;
/// presence is what "registered" means to the programs.
struct InstanceMaps {
    traffic: PerCpuHashMap<MapData, u64, TrafficCounters>,
    cpu: PerCpuHashMap<MapData, u64, CpuCounters>,
    tcp: HashMap<MapData, u64, TcpCounters>,
}

impl KernelPrograms {
    /// Loads the programs, attaches the cgroup ones to `subtree` (a directory of the cgroup
    /// v2 hierarchy; they then see every socket of every cgroup below it) and the tracing ones
    /// to their tracepoints. Also hands back the listen-event ring buffer and the kernel
    /// log for their reader. The network boundary programs may fail alone (an older
    /// kernel's verifier): the counters still run, and the status says why tenants are not
    /// network-isolated.
    pub fn attach(subtree: &Path) -> Result<(Self, KernelOutput)> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading tenement's eBPF object")?;
        attach_to_subtree(&mut ebpf, subtree)?;
        let network_status = match network::attach(&mut ebpf, subtree, cgroup_attach_mode()) {
            Ok(()) => NetworkIsolation::Active,
            Err(err) => NetworkIsolation::Off(format!("{err:#}")),
        };
        let network = NetworkMaps::take(&mut ebpf)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::warn!("kernel log lines (aya-log) unavailable: {err}");
                None
            }
        };
        attach_cpu_time(&mut ebpf)?;
        attach_tcp_health(&mut ebpf)?;

        let taken = [maps::TRAFFIC, maps::CPU, maps::TCP]
            .into_iter()
            .map(|name| take_map(&mut ebpf, name))
            .collect::<Result<Vec<_>>>()?;
        let map_fds = super::HELD_MAPS
            .into_iter()
            .zip(&taken)
            .map(|(name, map)| Ok((name, map_data(map)?.fd().as_fd().try_clone_to_owned()?)))
            .collect::<Result<Vec<_>>>()?;
        let [traffic, cpu, tcp]: [aya::maps::Map; 3] = taken
            .try_into()
            .map_err(|_| anyhow::anyhow!("three counter maps"))?;
        let maps = InstanceMaps {
            traffic: PerCpuHashMap::try_from(traffic)?,
            cpu: PerCpuHashMap::try_from(cpu)?,
            tcp: HashMap::try_from(tcp)?,
        };
        let listen_events = RingBuf::try_from(take_map(&mut ebpf, maps::LISTEN_EVENTS)?)?;
        let cpus = nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
        Ok((
            Self {
                _ebpf: ebpf,
                maps: Mutex::new(maps),
                network: Mutex::new(network),
                network_status,
                cpus,
                map_fds,
                previous: Mutex::new(None),
            },
            KernelOutput {
                listen_events,
                logger,
            },
        ))
    }

    pub fn network_status(&self) -> &NetworkIsolation {
        &self.network_status
    }

    pub fn set_host_ports(&self, ports: &HostPorts) -> Result<()> {
        self.network().set_host_ports(ports)
    }

    pub fn confine(&self, cgroup_id: u64, policy: &NetworkPolicy) -> Result<()> {
        self.network().confine(cgroup_id, policy)
    }

    pub fn denials(&self, cgroup_id: u64) -> Option<NetworkDenials> {
        self.network().denials(cgroup_id)
    }

    fn network(&self) -> std::sync::MutexGuard<'_, NetworkMaps> {
        // As `maps`: each kernel update is atomic, a poisoned lock is still usable.
        self.network
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts counting for one cgroup (an instance's), every counter from zero.
    pub fn register(&self, cgroup_id: u64) -> Result<()> {
        let mut maps = self.maps();
        let context = || format!("registering cgroup {cgroup_id} with the eBPF maps");
        maps.traffic
            .insert(cgroup_id, self.zeros()?, 0)
            .with_context(context)?;
        maps.cpu
            .insert(cgroup_id, self.zeros()?, 0)
            .with_context(context)?;
        maps.tcp
            .insert(cgroup_id, TcpCounters::default(), 0)
            .with_context(context)
    }

    /// The counter maps' fds, by name, for tenement's guard to hold.
    pub fn map_fds(&self) -> impl Iterator<Item = (&'static str, std::os::fd::BorrowedFd<'_>)> {
        self.map_fds.iter().map(|(name, fd)| (*name, fd.as_fd()))
    }

    /// Keeps an earlier tenement's counter maps (`traffic`, `cpu`, `tcp`, as held by its
    /// guard), for [`KernelPrograms::carry_over`].
    pub fn set_previous(&self, traffic: OwnedFd, cpu: OwnedFd, tcp: OwnedFd) -> Result<()> {
        let open = |fd| MapData::from_fd(fd).context("an earlier tenement's counter map");
        let previous = InstanceMaps {
            traffic: PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(open(traffic)?))?,
            cpu: PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(open(cpu)?))?,
            tcp: HashMap::try_from(aya::maps::Map::HashMap(open(tcp)?))?,
        };
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(previous);
        Ok(())
    }

    /// A registered cgroup continues from the totals the earlier tenement's maps hold for
    /// it (nothing happens when they hold none). Traffic while no tenement ran is not
    /// counted: the programs were detached meanwhile.
    pub fn carry_over(&self, cgroup_id: u64) -> Result<bool> {
        let previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        let Some(previous) = previous.as_ref() else {
            return Ok(false);
        };
        let (Ok(traffic), Ok(cpu), Ok(tcp)) = (
            previous.traffic.get(&cgroup_id, 0),
            previous.cpu.get(&cgroup_id, 0),
            previous.tcp.get(&cgroup_id, 0),
        ) else {
            return Ok(false);
        };
        let mut maps = self.maps();
        let context = || format!("carrying the counters of cgroup {cgroup_id} over");
        maps.traffic
            .insert(cgroup_id, traffic, 0)
            .with_context(context)?;
        maps.cpu.insert(cgroup_id, cpu, 0).with_context(context)?;
        maps.tcp.insert(cgroup_id, tcp, 0).with_context(context)?;
        Ok(true)
    }

    /// Stops counting for a cgroup, and lifts its network policy; its counters are gone.
    /// Idempotent.
    pub fn unregister(&self, cgroup_id: u64) {
        self.network().release(cgroup_id);
        let mut maps = self.maps();
        // Absent already is fine.
        let _ = maps.traffic.remove(&cgroup_id);
        let _ = maps.cpu.remove(&cgroup_id);
        let _ = maps.tcp.remove(&cgroup_id);
    }

    /// Traffic alone (what the idle check needs), summed over CPUs.
    pub fn traffic(&self, cgroup_id: u64) -> Option<TrafficCounters> {
        let per_cpu = self.maps().traffic.get(&cgroup_id, 0).ok()?;
        let mut total = TrafficCounters::default();
        per_cpu.iter().for_each(|c| total.merge(c));
        Some(total)
    }

    /// Every counter of a registered cgroup, summed over CPUs.
    pub fn stats(&self, cgroup_id: u64) -> Option<KernelStats> {
        let maps = self.maps();
        let mut traffic = TrafficCounters::default();
        maps.traffic
            .get(&cgroup_id, 0)
            .ok()?
            .iter()
            .for_each(|c| traffic.merge(c));
        let mut cpu = CpuCounters::default();
        maps.cpu
            .get(&cgroup_id, 0)
            .ok()?
            .iter()
            .for_each(|c| cpu.merge(c));
        let tcp = maps.tcp.get(&cgroup_id, 0).ok()?;
        drop(maps);
        let mut stats = KernelStats::from_counters(&traffic, &cpu, &tcp);
        if let Some(denials) = self.denials(cgroup_id) {
            stats.binds_denied = denials.binds;
            stats.connects_denied = denials.connects;
            stats.sends_denied = denials.sends;
        }
        Some(stats)
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, InstanceMaps> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters (each kernel update is atomic), so a poisoned lock is still usable.
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn zeros<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>> {
        Ok(PerCpuValues::try_from(vec![T::default(); self.cpus])?)
    }
}

/// Socket programs, on the instance subtree: they run for sockets of cgroups below it only.
fn attach_to_subtree(ebpf: &mut Ebpf, subtree: &Path) -> Result<()> {
    let cgroup =
        File::open(subtree).with_context(|| format!("opening cgroup {}", subtree.display()))?;
    let mode = cgroup_attach_mode();
    let on_subtree = |what: &str| format!("attaching {what} to {}", subtree.display());
    for (name, direction) in [
        (programs::TRAFFIC_INGRESS, CgroupSkbAttachType::Ingress),
        (programs::TRAFFIC_EGRESS, CgroupSkbAttachType::Egress),
    ] {
        let program: &mut CgroupSkb = program_named(ebpf, name)?.try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach(&cgroup, direction, mode)
            .with_context(|| on_subtree(name))?;
    }
    let name = programs::SOCKET_OWNER;
    let program: &mut CgroupSock = program_named(ebpf, name)?.try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    program
        .attach(&cgroup, mode)
        .with_context(|| on_subtree(name))?;
    let name = programs::TCP_LIFECYCLE;
    let program: &mut SockOps = program_named(ebpf, name)?.try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    program
        .attach(&cgroup, mode)
        .with_context(|| on_subtree(name))?;
    Ok(())
}

/// The context-switch tracepoint (machine-wide) and the slow per-CPU clock.
fn attach_cpu_time(ebpf: &mut Ebpf) -> Result<()> {
    let name = programs::ON_CPU;
    let program: &mut RawTracePoint = program_named(ebpf, name)?.try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    program
        .attach("sched_switch")
        .with_context(|| format!("attaching {name} to tracepoint sched_switch"))?;
    if let Err(err) = attach_cpu_tick(ebpf) {
        // Context switches still credit all CPU time, only in bigger lumps.
        tracing::warn!("{err:#}; CPU time is credited at context switches only");
    }
    Ok(())
}

/// TCP tracepoints (machine-wide, typed through the kernel's BTF).
fn attach_tcp_health(ebpf: &mut Ebpf) -> Result<()> {
    let btf = Btf::from_sys_fs()
        .context("reading the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)")?;
    for (name, tracepoint) in programs::TCP_HEALTH {
        let name = match load_btf_tracepoint(ebpf, name, tracepoint, &btf) {
            Err(err) if name == programs::TCP_RETRANSMIT => {
                let fallback = programs::TCP_RETRANSMIT_SENT_ONLY;
                tracing::debug!("{err:#}; trying {fallback} (older tracepoint, no err)");
                load_btf_tracepoint(ebpf, fallback, tracepoint, &btf)?;
                fallback
            }
            loaded => loaded.map(|()| name)?,
        };
        let program: &mut BtfTracePoint = program_named(ebpf, name)?.try_into()?;
        program
            .attach()
            .with_context(|| format!("attaching {name} to tracepoint {tracepoint}"))?;
    }
    Ok(())
}

/// Kernels from 5.7 attach through bpf links, which always coexist with other programs and
/// take no flags (the kernel rejects BPF_F_ALLOW_MULTI there); older ones use prog_attach,
/// where only ALLOW_MULTI leaves other users' programs in place.
fn cgroup_attach_mode() -> CgroupAttachMode {
    if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0)) {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}

fn program_named<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// The slow clock on every online CPU that credits slices of tasks that keep their CPU.
fn attach_cpu_tick(ebpf: &mut Ebpf) -> Result<()> {
    let name = programs::ON_CPU_TICK;
    let program: &mut PerfEvent = program_named(ebpf, name)?.try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    let cpus = online_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
    for cpu in cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(CPU_TICK_NS),
                false,
            )
            .with_context(|| format!("attaching {name} to the CPU clock of CPU {cpu}"))?;
    }
    Ok(())
}

fn load_btf_tracepoint(ebpf: &mut Ebpf, name: &str, tracepoint: &str, btf: &Btf) -> Result<()> {
    let program: &mut BtfTracePoint = program_named(ebpf, name)?.try_into()?;
    program
        .load(tracepoint, btf)
        .with_context(|| format!("loading {name} for tracepoint {tracepoint}"))
}

fn map_data(map: &aya::maps::Map) -> Result<&MapData> {
    match map {
        aya::maps::Map::PerCpuHashMap(data) | aya::maps::Map::HashMap(data) => Ok(data),
        other => anyhow::bail!("unexpected counter map type {other:?}"),
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))
}
