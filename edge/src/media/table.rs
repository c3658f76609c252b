//! Where flows live: the pinned BPF hash map (XDP mode) or a userspace table (fallback). Both offer
//! the same operations, so `MediaRelay` and the userspace relay do not care which is in use.
use std::collections::HashMap;
use std::sync::Mutex;

use aya::maps::{MapData, MapError};
use sipveil_abi::{Flow, FlowKey, MAX_FLOWS};

use super::MediaError;

/// A flow table shared by the control thread and the relay workers.
pub trait FlowTable: Send + Sync {
    /// "xdp" or "userspace".
    fn kind(&self) -> &'static str;
    fn get(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError>;
    /// Inserts or replaces. `MediaError::MapFull` when a new key does not fit.
    fn put(&self, key: &FlowKey, flow: &Flow) -> Result<(), MediaError>;
    /// Removes; absent keys are not an error.
    fn remove(&self, key: &FlowKey) -> Result<(), MediaError>;
    fn entries(&self) -> Result<Vec<(FlowKey, Flow)>, MediaError>;
    /// Records a packet relayed by userspace (bytes = IP datagram length).
    fn account(&self, key: &FlowKey, bytes: u64, now_ns: u64);
    /// Records a packet that userspace relays as a matter of course (RTCP, which is scrubbed in
    /// userspace) without writing the flow entry: on a busy flow (rtcp-mux: RTP relayed by the
    /// program on the same entry) a read-modify-write of the map could undo what the program
    /// wrote meanwhile (its counters, or the destination latched from the reverse flow). Counted
    /// in process memory and merged by `get_with_stats`; lost on restart.
    fn account_volatile(&self, key: &FlowKey, bytes: u64, now_ns: u64) {
        self.account(key, bytes, now_ns);
    }
    /// The flow with its counters (program and userspace relayed).
    fn get_with_stats(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError>;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked while holding the lock left consistent plain data behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fallback table: flows and their counters in process memory, capacity `MAX_FLOWS` like the
/// map.
#[derive(Default)]
pub struct UserFlowTable {
    flows: Mutex<HashMap<FlowKey, Flow>>,
    capacity: usize,
}

impl UserFlowTable {
    pub fn new() -> UserFlowTable {
        UserFlowTable::with_capacity(MAX_FLOWS as usize)
    }

    pub fn with_capacity(capacity: usize) -> UserFlowTable {
        UserFlowTable {
            flows: Mutex::new(HashMap::new()),
            capacity,
        }
    }
}

impl FlowTable for UserFlowTable {
    fn kind(&self) -> &'static str {
        "userspace"
    }

    fn get(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError> {
        Ok(lock(&self.flows).get(key).copied())
    }

    fn put(&self, key: &FlowKey, flow: &Flow) -> Result<(), MediaError> {
        let mut flows = lock(&self.flows);
        if !flows.contains_key(key) && flows.len() >= self.capacity {
            return Err(MediaError::MapFull);
        }
        flows.insert(*key, *flow);
        Ok(())
    }

    fn remove(&self, key: &FlowKey) -> Result<(), MediaError> {
        lock(&self.flows).remove(key);
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(FlowKey, Flow)>, MediaError> {
        Ok(lock(&self.flows).iter().map(|(k, f)| (*k, *f)).collect())
    }

    fn account(&self, key: &FlowKey, bytes: u64, now_ns: u64) {
        if let Some(f) = lock(&self.flows).get_mut(key) {
            f.packets = f.packets.wrapping_add(1);
            f.bytes = f.bytes.wrapping_add(bytes);
            f.last_seen_ns = f.last_seen_ns.max(now_ns);
        }
    }

    fn get_with_stats(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError> {
        self.get(key)
    }
}

/// The pinned `SV_FLOWS`. Packets relayed in userspace (passed up by the program) are added to the
/// flow's counters in the map with a read-modify-write, so they survive a restart and idle expiry
/// sees them. The program adds atomically in place; an increment it makes between our read and
/// our write is lost. That window is a few microseconds on a path (FIB miss, fragments, IP
/// options) the program does not take for the same packet, so at most a count or two.
pub struct BpfFlowTable {
    map: Mutex<aya::maps::HashMap<MapData, FlowKey, Flow>>,
    /// `account_volatile` counts: (packets, bytes, last seen) per flow, removed with the flow.
    volatile: Mutex<HashMap<FlowKey, (u64, u64, u64)>>,
}

/// `BPF_EXIST`: update only an existing element.
const BPF_EXIST: u64 = 2;

impl BpfFlowTable {
    pub fn new(map: aya::maps::HashMap<MapData, FlowKey, Flow>) -> BpfFlowTable {
        BpfFlowTable {
            map: Mutex::new(map),
            volatile: Mutex::new(HashMap::new()),
        }
    }
}

fn map_error(e: MapError) -> MediaError {
    if let MapError::SyscallError(s) = &e
        && matches!(
            s.io_error.raw_os_error(),
            Some(libc::E2BIG) | Some(libc::ENOSPC)
        )
    {
        return MediaError::MapFull;
    }
    MediaError::Map(e.to_string())
}

impl FlowTable for BpfFlowTable {
    fn kind(&self) -> &'static str {
        "xdp"
    }

    fn get(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError> {
        match lock(&self.map).get(key, 0) {
            Ok(f) => Ok(Some(f)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error(e)),
        }
    }

    fn put(&self, key: &FlowKey, flow: &Flow) -> Result<(), MediaError> {
        lock(&self.map).insert(key, flow, 0).map_err(map_error)
    }

    fn remove(&self, key: &FlowKey) -> Result<(), MediaError> {
        lock(&self.volatile).remove(key);
        match lock(&self.map).remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_error(e)),
        }
    }

    fn entries(&self) -> Result<Vec<(FlowKey, Flow)>, MediaError> {
        let map = lock(&self.map);
        let mut out = Vec::new();
        for item in map.iter() {
            match item {
                Ok((k, f)) => out.push((k, f)),
                // A key deleted by someone else between the key walk and the lookup.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(e)),
            }
        }
        Ok(out)
    }

    fn account(&self, key: &FlowKey, bytes: u64, now_ns: u64) {
        let mut map = lock(&self.map);
        if let Ok(mut f) = map.get(key, 0) {
            f.packets = f.packets.wrapping_add(1);
            f.bytes = f.bytes.wrapping_add(bytes);
            f.last_seen_ns = f.last_seen_ns.max(now_ns);
            // The flow may have been removed meanwhile: BPF_EXIST keeps it removed.
            let _ = map.insert(key, f, BPF_EXIST);
        }
    }

    fn account_volatile(&self, key: &FlowKey, bytes: u64, now_ns: u64) {
        let mut v = lock(&self.volatile);
        let e = v.entry(*key).or_default();
        e.0 = e.0.wrapping_add(1);
        e.1 = e.1.wrapping_add(bytes);
        e.2 = e.2.max(now_ns);
    }

    fn get_with_stats(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError> {
        let Some(mut f) = self.get(key)? else {
            return Ok(None);
        };
        if let Some((packets, bytes, last)) = lock(&self.volatile).get(key).copied() {
            f.packets = f.packets.wrapping_add(packets);
            f.bytes = f.bytes.wrapping_add(bytes);
            f.last_seen_ns = f.last_seen_ns.max(last);
        }
        Ok(Some(f))
    }
}
