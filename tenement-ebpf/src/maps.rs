//! Every map of the object. Per-instance maps are sized for MAX_INSTANCES and filled by
//! userspace only (register/unregister); the programs never insert into them. That is what
//! makes `BPF_F_NO_PREALLOC` safe for them (no allocation ever happens in program context),
//! and it keeps their memory proportional to the instances registered rather than to
//! MAX_INSTANCES times the number of CPUs.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_CLONE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf},
    helpers::generated::bpf_sk_storage_get,
    macros::btf_map,
};
use tenement_common::{
    CpuCounters, EgressKey, ListenEvent, NetPolicy, PortRange, SocketOwner, TcpCounters,
    TrafficCounters, LISTEN_EVENTS_BYTES, MAX_EGRESS_RULES, MAX_INSTANCES,
};

const INSTANCES: usize = MAX_INSTANCES as usize;
const ON_INSERT: usize = BPF_F_NO_PREALLOC as usize;

#[btf_map(name = "TRAFFIC")]
pub static TRAFFIC: PerCpuHashMap<u64, TrafficCounters, INSTANCES, ON_INSERT> =
    PerCpuHashMap::new();

#[btf_map(name = "CPU")]
pub static CPU: PerCpuHashMap<u64, CpuCounters, INSTANCES, ON_INSERT> = PerCpuHashMap::new();

#[btf_map(name = "TCP")]
pub static TCP: HashMap<u64, TcpCounters, INSTANCES, ON_INSERT> = HashMap::new();

#[btf_map(name = "SWITCHED_IN")]
pub static SWITCHED_IN: PerCpuArray<u64, 1> = PerCpuArray::new();

#[btf_map(name = "LISTEN_EVENTS")]
pub static LISTEN_EVENTS: RingBuf<ListenEvent, { LISTEN_EVENTS_BYTES as usize }> = RingBuf::new();

#[btf_map(name = "NET_POLICY")]
pub static NET_POLICY: HashMap<u64, NetPolicy, INSTANCES, ON_INSERT> = HashMap::new();

#[btf_map(name = "PORT_RANGE")]
pub static PORT_RANGE: Array<PortRange, 1> = Array::new();

/// tenement's own listeners: few, set once at start.
#[btf_map(name = "HOST_PORTS")]
pub static HOST_PORTS: HashMap<u32, u32, 64> = HashMap::new();

#[btf_map(name = "EGRESS_ALLOW")]
pub static EGRESS_ALLOW: LpmTrie<EgressKey, u8, { MAX_EGRESS_RULES as usize }> = LpmTrie::new();

#[btf_map(name = "SOCKET_OWNERS")]
pub static SOCKET_OWNERS: SocketStorage = SocketStorage::new();

/// A socket local storage map whose values are copied to accepted sockets (`BPF_F_CLONE`),
/// which aya-ebpf's own `SkStorage` does not offer. The layout is the BTF map definition the
/// loader reads: each field's type encodes one attribute.
#[repr(C)]
pub struct SocketStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SocketOwner,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: the fields are never dereferenced; they only carry BTF type information.
unsafe impl Sync for SocketStorage {}

impl SocketStorage {
    const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The owner record of `sk`, if the socket has one (`create`: make an empty one if not).
    /// `sk` is whatever the program type's helper accepts: a `bpf_sock`, the cgroup/sock
    /// context, or a BTF `struct sock` pointer in tracing programs.
    #[inline(always)]
    pub fn get(&self, sk: *mut c_void, create: bool) -> Option<*mut SocketOwner> {
        let flags = if create {
            aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE as u64
        } else {
            0
        };
        let map = ptr::from_ref(self).cast_mut().cast();
        // SAFETY: the helper checks `sk` (NULL and non-full sockets give NULL back).
        let owner = unsafe { bpf_sk_storage_get(map, sk, ptr::null_mut(), flags) };
        (!owner.is_null()).then_some(owner.cast())
    }
}
