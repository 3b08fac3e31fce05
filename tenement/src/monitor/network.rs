//! The network boundary's maps: tenement's protected ports (set once) and one policy per
//! confined instance, with its egress destinations in the LPM trie. The programs only read
//! them (and count denials in the policy value); userspace alone inserts and removes.

use std::{
    collections::HashMap as StdHashMap,
    fs::File,
    net::{Ipv6Addr, SocketAddr},
    path::Path,
};

use anyhow::{Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};
use tenement_common::{
    denial, egress, egress_key, host_port, maps, programs, EgressKey, NetPolicy, PortRange,
    EGRESS_FIXED_BITS,
};

use super::policy::{Denial, Destination, Egress, HostPorts, NetworkDenials, NetworkPolicy};

pub struct NetworkMaps {
    policies: HashMap<MapData, u64, NetPolicy>,
    range: Array<MapData, PortRange>,
    host_ports: HashMap<MapData, u32, u32>,
    allowed: LpmTrie<MapData, EgressKey, u8>,
    /// The trie keys of each confined cgroup, to remove them with it.
    keys: StdHashMap<u64, Vec<Key<EgressKey>>>,
}

/// Loads the six socket-address programs and attaches them to `subtree`.
pub fn attach(ebpf: &mut Ebpf, subtree: &Path, mode: CgroupAttachMode) -> Result<()> {
    let cgroup =
        File::open(subtree).with_context(|| format!("opening cgroup {}", subtree.display()))?;
    for name in programs::NETWORK {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach(&cgroup, mode)
            .with_context(|| format!("attaching {name} to {}", subtree.display()))?;
    }
    Ok(())
}

impl NetworkMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        Ok(Self {
            policies: HashMap::try_from(take(maps::NET_POLICY)?)?,
            range: Array::try_from(take(maps::PORT_RANGE)?)?,
            host_ports: HashMap::try_from(take(maps::HOST_PORTS)?)?,
            allowed: LpmTrie::try_from(take(maps::EGRESS_ALLOW)?)?,
            keys: StdHashMap::new(),
        })
    }

    /// Sets the ports every instance is kept away from. Replaces an earlier call's.
    pub fn set_host_ports(&mut self, ports: &HostPorts) -> Result<()> {
        let [low, high] = ports.port_range;
        self.range
            .set(
                0,
                PortRange {
                    low: low.into(),
                    high: high.into(),
                },
                0,
            )
            .context("writing port_range to the PORT_RANGE map")?;
        let old: Vec<u32> = self.host_ports.keys().filter_map(Result::ok).collect();
        for port in old {
            let _ = self.host_ports.remove(&port);
        }
        // A port both public and private (a misconfiguration) stays private.
        for (ports, kind) in [
            (&ports.proxy, host_port::PROXY),
            (&ports.private, host_port::PRIVATE),
        ] {
            for port in ports {
                self.host_ports
                    .insert(u32::from(*port), kind, 0)
                    .with_context(|| format!("writing port {port} to the HOST_PORTS map"))?;
            }
        }
        Ok(())
    }

    /// Confines a cgroup from now on (denials from zero); replaces an earlier policy.
    pub fn confine(&mut self, cgroup_id: u64, policy: &NetworkPolicy) -> Result<()> {
        self.release(cgroup_id);
        let (mode, destinations): (u32, Vec<Destination>) = match &policy.egress {
            Egress::Any => (egress::ANY, Vec::new()),
            Egress::None => (egress::NONE, Vec::new()),
            Egress::List(list) => (egress::LIST, list.clone()),
        };
        let mut keys = Vec::with_capacity(destinations.len());
        for destination in &destinations {
            let (address, prefix) = destination.mapped();
            let key = Key::new(
                EGRESS_FIXED_BITS + prefix,
                egress_key(cgroup_id, destination.port.unwrap_or(0), address.octets()),
            );
            if let Err(err) = self.allowed.insert(&key, 1, 0) {
                self.remove_keys(&keys);
                return Err(err).with_context(|| {
                    format!("writing egress {destination} of cgroup {cgroup_id}")
                });
            }
            keys.push(key);
        }
        self.keys.insert(cgroup_id, keys);
        let value = NetPolicy {
            port: u32::from(policy.port),
            egress: mode,
            ..NetPolicy::default()
        };
        if let Err(err) = self.policies.insert(cgroup_id, value, 0) {
            self.release(cgroup_id);
            return Err(err).with_context(|| format!("confining cgroup {cgroup_id}"));
        }
        Ok(())
    }

    /// The cgroup is no longer confined. Idempotent.
    pub fn release(&mut self, cgroup_id: u64) {
        let _ = self.policies.remove(&cgroup_id);
        if let Some(keys) = self.keys.remove(&cgroup_id) {
            self.remove_keys(&keys);
        }
    }

    fn remove_keys(&mut self, keys: &[Key<EgressKey>]) {
        for key in keys {
            let _ = self.allowed.remove(key);
        }
    }

    /// What the boundary refused this cgroup since it was confined.
    pub fn denials(&self, cgroup_id: u64) -> Option<NetworkDenials> {
        let value = self.policies.get(&cgroup_id, 0).ok()?;
        Some(decode(&value))
    }
}

fn decode(policy: &NetPolicy) -> NetworkDenials {
    let d = &policy.denials;
    let last = (d.last_ns != 0).then(|| Denial {
        operation: match d.last_kind {
            denial::BIND => "bind",
            denial::CONNECT => "connect",
            _ => "send",
        },
        address: SocketAddr::new(
            super::policy::unmapped(Ipv6Addr::from(d.last_addr)),
            d.last_port as u16,
        ),
    });
    NetworkDenials {
        binds: d.binds,
        connects: d.connects,
        sends: d.sends,
        last,
    }
}
