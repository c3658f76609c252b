//! The entry program's maps, with the names and sizes of `sipveil_abi::maps`. All are pinned by
//! name: the daemon chooses the directory (`/sys/fs/bpf/sipveil/<instance>/`), and the flows keep
//! forwarding while it restarts.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use sipveil_abi::{Config, Counter, Flow, FlowKey, MAX_FLOWS, MAX_TX_PORTS};

/// Media flows keyed by the edge's own (address, port); written by the daemon, statistics and
/// latching written here.
#[map]
pub static SV_FLOWS: HashMap<FlowKey, Flow> = HashMap::pinned(MAX_FLOWS, 0);

/// One per-CPU counter per outcome (`Counter`); the daemon sums the CPUs.
#[map]
pub static SV_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// The daemon's settings, entry 0. Missing or of another ABI version: everything passes.
#[map]
pub static SV_CONFIG: Array<Config> = Array::pinned(1, 0);

/// Interfaces the relay may redirect to, keyed by ifindex.
#[map]
pub static SV_TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_TX_PORTS, 0);

/// Adds one to a counter of this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    add(counter, 1);
}

/// Adds `n` to a counter of this CPU (per-CPU: no atomics needed).
#[inline(always)]
pub fn add(counter: Counter, n: u64) {
    if let Some(slot) = SV_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array value, valid for the program's
        // run; XDP programs do not preempt each other on one CPU.
        unsafe { *slot += n };
    }
}
