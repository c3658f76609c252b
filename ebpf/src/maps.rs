//! The entry program's maps, with the names and sizes of `sipveil_abi::maps`. All are pinned by
//! name: the daemon chooses the directory (`/sys/fs/bpf/sipveil/<instance>/`), and the flows keep
//! forwarding while it restarts.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sipveil_abi::{
    Config, Counter, Flow, FlowKey, MAX_FLOWS, MAX_TX_PORTS,
    shield::{
        AllowData, AllowEntry, BlockEntry, EVENTS_BYTES, GLOBAL_BUCKETS, MAX_ALLOWED, MAX_BLOCKED,
        MAX_SOURCES, ShieldConfig, SourceBuckets, SourceKey, TokenBucket,
    },
};

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

// --- the flood shield (`shield`) ---

/// Per-source token buckets (IPv4 /32, IPv6 /64), one per method class. LRU: under a flood of
/// many sources the least recently seen ones are forgotten and come back with a full bucket.
#[map]
pub static SV_SRC_BUCKETS: LruHashMap<SourceKey, SourceBuckets> =
    LruHashMap::pinned(MAX_SOURCES, 0);

/// The global ceiling, one bucket per CPU (entry 0), and the ceilings per class (entry 1 + the
/// class index, `ShieldConfig::class_global_per_cpu`). Per CPU rather than one shared entry: under
/// a flood every CPU would write the same cache line for every packet, exactly when the shield
/// must be cheapest, and unlocked updates from several CPUs would lose tokens anyway. The daemon
/// sets each CPU's share (`ShieldConfig::global_per_cpu`).
#[map]
pub static SV_GLOBAL_BKT: PerCpuArray<TokenBucket> = PerCpuArray::pinned(GLOBAL_BUCKETS, 0);

/// Allowlisted prefixes (configured peers, recently authenticated sources), written by the daemon.
/// An LPM trie so a carrier's whole range is one entry; single sources are /32 or /128 entries.
#[map]
pub static SV_ALLOW: LpmTrie<AllowData, AllowEntry> = LpmTrie::pinned(MAX_ALLOWED, 0);

/// Blocked sources with expiry and reason, written (and expired) by the daemon.
#[map]
pub static SV_BLOCK: HashMap<SourceKey, BlockEntry> = HashMap::pinned(MAX_BLOCKED, 0);

/// The shield's settings, entry 0. Zeroed (never written): the shield is off.
#[map]
pub static SV_SHIELD_CFG: Array<ShieldConfig> = Array::pinned(1, 0);

/// Sampled "source newly limited" events for the daemon.
#[map]
pub static SV_SHIELD_EVT: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// Internal, not pinned, not part of the ABI: one `SourceBuckets` per CPU where the shield
/// builds a new source's buckets and charges its first packet before inserting them into
/// [`SV_SRC_BUCKETS`] (the value is 144 bytes: on the stack it would take the shield's frame
/// past the 512 bytes the verifier allows for the entry program's call chain).
#[map]
pub static SV_SHIELD_NEW: PerCpuArray<SourceBuckets> = PerCpuArray::with_max_entries(1, 0);

/// The last source this CPU's shield dropped, and until when that verdict holds (see
/// `shield::limit`). `until_ns == 0`: empty.
#[repr(C)]
pub struct LastDrop {
    pub key: SourceKey,
    /// `ShieldClass` index of the dropped packet: the verdict holds for this class only.
    pub class: u8,
    pub _pad: [u8; 3],
    /// The `Counter` index the drop was counted under.
    pub counter: u32,
    pub _pad1: u32,
    /// `bpf_ktime_get_coarse_ns` time from which the verdict no longer holds.
    pub until_ns: u64,
    /// Rate drops decided by this entry, added to the source's `SourceBuckets::dropped` when
    /// its buckets are next charged with a drop or when the entry is replaced.
    pub hits: u64,
}

/// Internal, not pinned, not part of the ABI: one [`LastDrop`] per CPU. A flood from one source
/// (or a few, each landing on its own receive queue) then costs one per-CPU array lookup per
/// packet instead of the allowlist trie, the ceiling, the blocklist and the LRU. Each program
/// load starts empty.
#[map]
pub static SV_SHIELD_LAST: PerCpuArray<LastDrop> = PerCpuArray::with_max_entries(1, 0);

/// Slots of [`SV_FIB_CACHE`] (a power of two).
pub const FIB_CACHE_SLOTS: u32 = 256;

/// A remembered `bpf_fib_lookup` answer: where (src, dst) received on `ingress` leaves, and the MACs.
#[repr(C)]
pub struct FibCacheEntry {
    pub daddr: u32,
    pub saddr: u32,
    pub ingress: u32,
    pub egress: u32,
    /// `bpf_ktime_get_coarse_ns` after which the entry is stale.
    pub expires_ns: u64,
    /// The IP length the lookup's MTU check passed for; larger packets look up again.
    pub max_len: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Internal, not pinned, not part of the ABI: a per-CPU direct-mapped cache of FIB answers.
/// `bpf_fib_lookup` (route + neighbour) costs about 100 ns here, more than the rest of the relay;
/// media flows send 50 packets/s to the same next hop, so each CPU remembers the answer for
/// `relay::FIB_CACHE_TTL_NS`. Each program load gets a fresh, empty cache.
#[map]
pub static SV_FIB_CACHE: PerCpuArray<FibCacheEntry> =
    PerCpuArray::with_max_entries(FIB_CACHE_SLOTS, 0);

/// Adds one to a counter of this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    add(counter, 1);
}

/// Adds one to the counter with index `index` of this CPU (nothing when out of range).
#[inline(always)]
pub fn count_index(index: u32) {
    if let Some(slot) = SV_COUNTERS.get_ptr_mut(index) {
        // SAFETY: as in `add`.
        unsafe { *slot += 1 };
    }
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
