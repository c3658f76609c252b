//! Media relay control: port allocation, flow installation, counters and idle expiry, on top of a
//! `FlowTable` (the BPF map in XDP mode, a userspace table otherwise) and a `SocketHost` (the
//! userspace relay workers, which own one UDP socket per relay port).
//!
//! `MediaRelay` is the API the call logic uses. It never panics on input: a full port range or a full
//! flow map is a typed `MediaError`, a counter and a log line.
pub mod alloc;
pub mod counters;
pub mod datapath;
pub mod flows;
pub mod rtcp;
pub mod table;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use serde::Serialize;
use sipveil_abi::{FLOW_F_RTCP, Flow, FlowKey};

use alloc::PortAllocator;
use counters::{UserCounter, UserCounters};
use flows::{
    FlowRole, RelayOptions, RelaySpec, build_flows, flow_dst, flow_latched, is_side_b, key_addr,
    key_of, preserve_program_state, spec_from_flows,
};
use table::FlowTable;

use crate::config::MediaConfig;

/// Errors of the media relay API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("no free relay port pair left on {addr}")]
    PortsExhausted { addr: IpAddr },
    #[error("the flow map is full")]
    MapFull,
    #[error("no relay {0}")]
    NotFound(String),
    #[error("peer {peer} is not of the address family of the edge address {edge}")]
    AddressFamily { peer: SocketAddr, edge: IpAddr },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("flow map: {0}")]
    Map(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl MediaError {
    /// The `kind` of the control protocol.
    pub fn kind(&self) -> &'static str {
        match self {
            MediaError::PortsExhausted { .. } => "ports_exhausted",
            MediaError::MapFull => "map_full",
            MediaError::NotFound(_) => "not_found",
            MediaError::AddressFamily { .. } | MediaError::BadRequest(_) => "bad_request",
            MediaError::Map(_) => "map",
            MediaError::Io { .. } => "io",
        }
    }
}

/// Receives the sockets of relay ports: the userspace relay workers, or nothing in unit tests.
pub trait SocketHost: Send + Sync {
    /// Starts receiving on `socket`, which is bound to the edge address of `key`.
    fn add(&self, key: FlowKey, socket: UdpSocket);
    /// Stops receiving on and closes the socket of `key`.
    fn remove(&self, key: &FlowKey);
}

/// A `SocketHost` that just keeps the sockets open (ports stay reserved, nothing is received).
#[derive(Default)]
pub struct HoldSockets {
    sockets: std::sync::Mutex<std::collections::HashMap<FlowKey, UdpSocket>>,
}

impl SocketHost for HoldSockets {
    fn add(&self, key: FlowKey, socket: UdpSocket) {
        if let Ok(mut s) = self.sockets.lock() {
            s.insert(key, socket);
        }
    }
    fn remove(&self, key: &FlowKey) {
        if let Ok(mut s) = self.sockets.lock() {
            s.remove(key);
        }
    }
}

/// Identifies a relay: its A-side edge RTP address (stable across restarts).
pub type RelayId = SocketAddr;

/// One side of a relay as reported to clients.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LegInfo {
    /// Where this side's peer sends RTP to.
    pub edge: SocketAddr,
    pub edge_rtcp: Option<SocketAddr>,
    /// The announced peer address.
    pub peer: SocketAddr,
}

/// Counters of one flow (program and userspace summed).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_ns: u64,
    pub latched: Option<SocketAddr>,
    pub dst: SocketAddr,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RelayStats {
    pub a_rtp: Option<FlowStats>,
    pub a_rtcp: Option<FlowStats>,
    pub b_rtp: Option<FlowStats>,
    pub b_rtcp: Option<FlowStats>,
}

/// Media seen on a relay, per direction (A = packets from the A peer, sent to B).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MediaActivity {
    /// Packets received from A and relayed (RTP and RTCP, XDP and userspace).
    pub a_packets: u64,
    /// Packets received from B and relayed.
    pub b_packets: u64,
    /// Monotonic ns of the newest packet from A; `None` before the first.
    pub a_last_ns: Option<u64>,
    /// Monotonic ns of the newest packet from B; `None` before the first.
    pub b_last_ns: Option<u64>,
}

impl MediaActivity {
    /// The newest packet in either direction.
    pub fn last_ns(&self) -> Option<u64> {
        match (self.a_last_ns, self.b_last_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A relay as reported to clients.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RelayInfo {
    pub id: RelayId,
    pub a: LegInfo,
    pub b: LegInfo,
    pub latch: bool,
    pub strict: bool,
    pub rtcp_mux: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<RelayStats>,
}

struct Relay {
    spec: RelaySpec,
    generation: u32,
    /// Idle expiry reads no counter of this relay before this time (monotonic ns, the flows'
    /// clock): its newest `last_seen_ns` seen so far plus the idle timeout. `last_seen_ns` only
    /// grows, so the relay cannot be idle earlier. 0: not known yet (check at the next pass).
    idle_check_ns: u64,
}

impl Relay {
    fn keys(&self) -> Vec<(FlowRole, FlowKey)> {
        build_flows(&self.spec, 0, 0)
            .into_iter()
            .map(|(r, k, _)| (r, k))
            .collect()
    }

    fn info(&self) -> RelayInfo {
        let s = &self.spec;
        let rtcp = |a: SocketAddr| {
            (!s.opts.rtcp_mux).then(|| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
        };
        RelayInfo {
            id: s.a_edge,
            a: LegInfo {
                edge: s.a_edge,
                edge_rtcp: rtcp(s.a_edge),
                peer: s.a_peer,
            },
            b: LegInfo {
                edge: s.b_edge,
                edge_rtcp: rtcp(s.b_edge),
                peer: s.b_peer,
            },
            latch: s.opts.latch,
            strict: s.opts.strict,
            rtcp_mux: s.opts.rtcp_mux,
            stats: None,
        }
    }
}

/// The media relay control API.
pub struct MediaRelay {
    cfg: MediaConfig,
    allocators: Vec<(IpAddr, PortAllocator)>,
    table: Arc<dyn FlowTable>,
    host: Arc<dyn SocketHost>,
    counters: Arc<UserCounters>,
    relays: BTreeMap<RelayId, Relay>,
    now: fn() -> u64,
}

impl MediaRelay {
    /// Creates the relay and rebuilds its state from the flows already in `table` (after a
    /// restart the pinned SV_FLOWS): ports are reserved, sockets bound and handed to `host`.
    /// Flows that do not form a relay are removed with a warning.
    pub fn new(
        cfg: MediaConfig,
        table: Arc<dyn FlowTable>,
        host: Arc<dyn SocketHost>,
        counters: Arc<UserCounters>,
    ) -> Result<MediaRelay, MediaError> {
        let mut allocators = vec![(cfg.addr_a, PortAllocator::new(cfg.port_min, cfg.port_max))];
        if cfg.addr_b != cfg.addr_a {
            allocators.push((cfg.addr_b, PortAllocator::new(cfg.port_min, cfg.port_max)));
        }
        let mut relay = MediaRelay {
            cfg,
            allocators,
            table,
            host,
            counters,
            relays: BTreeMap::new(),
            now: crate::sys::monotonic_ns,
        };
        relay.rebuild()?;
        Ok(relay)
    }

    /// Number of relays.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// "xdp" or "userspace".
    pub fn mode(&self) -> &'static str {
        self.table.kind()
    }

    pub fn counters(&self) -> &Arc<UserCounters> {
        &self.counters
    }

    pub fn table(&self) -> &Arc<dyn FlowTable> {
        &self.table
    }

    fn rebuild(&mut self) -> Result<(), MediaError> {
        let entries = self.table.entries()?;
        let by_key: std::collections::HashMap<FlowKey, Flow> = entries.iter().copied().collect();
        let mut used: HashSet<FlowKey> = HashSet::new();
        let mut found = Vec::new();
        for (k, f) in &entries {
            if is_side_b(f) || f.flags & FLOW_F_RTCP != 0 {
                continue;
            }
            let Some(b) = by_key.get(&f.reverse) else {
                continue;
            };
            let spec = spec_from_flows(k, f, &f.reverse, b);
            let relay = Relay {
                spec,
                generation: flows::generation_count(f),
                idle_check_ns: 0,
            };
            let keys = relay.keys();
            if keys.iter().any(|(_, key)| !by_key.contains_key(key)) {
                continue;
            }
            used.extend(keys.iter().map(|(_, key)| *key));
            found.push(relay);
        }
        for (k, _) in &entries {
            if !used.contains(k) {
                tracing::warn!(edge = %key_addr(k), "removing a flow that belongs to no relay");
                self.table.remove(k)?;
            }
        }
        let n = found.len();
        for relay in found {
            let s = relay.spec;
            for edge in [s.a_edge, s.b_edge] {
                if let Some(a) = self.allocator(edge.ip())
                    && !a.reserve(edge.port())
                {
                    tracing::warn!(%edge, "adopted relay port outside the range or twice");
                }
            }
            for (_, key) in relay.keys() {
                match bind(key_addr(&key)) {
                    Ok(sock) => self.host.add(key, sock),
                    Err(e) => tracing::warn!(
                        edge = %key_addr(&key),
                        "cannot bind the socket of an adopted flow (XDP keeps relaying): {e}"
                    ),
                }
            }
            self.relays.insert(s.a_edge, relay);
        }
        if n > 0 {
            tracing::info!(
                relays = n,
                flows = used.len(),
                "adopted flows from the table"
            );
        }
        Ok(())
    }

    fn allocator(&mut self, ip: IpAddr) -> Option<&mut PortAllocator> {
        self.allocators
            .iter_mut()
            .find(|(a, _)| *a == ip)
            .map(|(_, p)| p)
    }

    /// Allocates a pair on `ip` and binds its sockets (RTP, and RTCP unless muxed). Ports that
    /// something else holds are skipped.
    fn allocate_pair(
        &mut self,
        ip: IpAddr,
        rtcp_mux: bool,
    ) -> Result<(u16, Vec<(FlowKey, UdpSocket)>), MediaError> {
        let exhausted = MediaError::PortsExhausted { addr: ip };
        let attempts = self.allocator(ip).map_or(0, |a| a.capacity());
        for _ in 0..attempts {
            let Some(port) = self.allocator(ip).and_then(|a| a.allocate()) else {
                break;
            };
            let rtp = SocketAddr::new(ip, port);
            let rtcp = SocketAddr::new(ip, port.wrapping_add(1));
            let mut socks = Vec::new();
            let mut ok = true;
            for addr in std::iter::once(rtp).chain((!rtcp_mux).then_some(rtcp)) {
                match bind(addr) {
                    Ok(s) => socks.push((key_of(addr), s)),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                        // Someone else (or a socket of ours still closing) holds it: give the
                        // pair back and try the next one; round-robin moves past it.
                        tracing::warn!(%addr, "relay port in use by another socket, skipping it");
                        if let Some(a) = self.allocator(ip) {
                            a.release(port);
                        }
                        ok = false;
                        break;
                    }
                    Err(e) => {
                        if let Some(a) = self.allocator(ip) {
                            a.release(port);
                        }
                        return Err(MediaError::Io {
                            what: format!("binding {addr}"),
                            source: e,
                        });
                    }
                }
            }
            if ok {
                return Ok((port, socks));
            }
        }
        self.counters.inc(UserCounter::PortsExhausted);
        tracing::warn!(addr = %ip, "relay port range exhausted");
        Err(exhausted)
    }

    fn idle_timeout_ns(&self) -> u64 {
        self.cfg.idle_timeout_secs.saturating_mul(1_000_000_000)
    }

    fn release_port(&mut self, ip: IpAddr, port: u16) {
        if let Some(a) = self.allocator(ip) {
            a.release(port);
        }
    }

    fn check_family(&self, peer: SocketAddr, edge: IpAddr) -> Result<(), MediaError> {
        if peer.is_ipv4() != edge.is_ipv4() {
            return Err(MediaError::AddressFamily { peer, edge });
        }
        Ok(())
    }

    /// Opens a relay between peers A and B: allocates an edge port pair toward each and installs
    /// the flows.
    pub fn open(
        &mut self,
        a_peer: SocketAddr,
        b_peer: SocketAddr,
        opts: RelayOptions,
    ) -> Result<RelayInfo, MediaError> {
        let (ea, eb) = (self.cfg.addr_a, self.cfg.addr_b);
        self.check_family(a_peer, ea)?;
        self.check_family(b_peer, eb)?;
        let (pa, socks_a) = self.allocate_pair(ea, opts.rtcp_mux)?;
        let (pb, socks_b) = match self.allocate_pair(eb, opts.rtcp_mux) {
            Ok(x) => x,
            Err(e) => {
                self.release_port(ea, pa);
                return Err(e);
            }
        };
        let spec = RelaySpec {
            a_edge: SocketAddr::new(ea, pa),
            a_peer,
            b_edge: SocketAddr::new(eb, pb),
            b_peer,
            opts,
        };
        let now = (self.now)();
        let built = build_flows(&spec, 0, now);
        let mut installed = Vec::new();
        for (_, k, f) in &built {
            if let Err(e) = self.table.put(k, f) {
                for k in installed {
                    let _ = self.table.remove(&k);
                }
                self.release_port(ea, pa);
                self.release_port(eb, pb);
                if matches!(e, MediaError::MapFull) {
                    self.counters.inc(UserCounter::MapFull);
                    tracing::warn!("flow map full: cannot open a relay");
                }
                return Err(e);
            }
            installed.push(*k);
        }
        for (k, s) in socks_a.into_iter().chain(socks_b) {
            self.host.add(k, s);
        }
        // The flows were installed with `last_seen_ns = now`.
        let relay = Relay {
            spec,
            generation: 0,
            idle_check_ns: now.saturating_add(self.idle_timeout_ns()),
        };
        let info = relay.info();
        tracing::debug!(id = %spec.a_edge, %a_peer, %b_peer, "relay opened");
        self.relays.insert(spec.a_edge, relay);
        Ok(info)
    }

    /// Changes the peers and options of a relay (re-INVITE). Program-written counters are kept;
    /// with `relatch` the flows learn their sources again, otherwise latched sources stay.
    /// Switching rtcp-mux on or off is not supported (open a new relay).
    pub fn update(
        &mut self,
        id: RelayId,
        a_peer: SocketAddr,
        b_peer: SocketAddr,
        opts: RelayOptions,
        relatch: bool,
    ) -> Result<RelayInfo, MediaError> {
        self.update_flows(id, a_peer, b_peer, opts, relatch)?;
        self.info(id, true)
    }

    /// [`Self::update`] without reading the counters back (the call path needs none: one map
    /// lookup per flow saved on every answer).
    pub fn update_flows(
        &mut self,
        id: RelayId,
        a_peer: SocketAddr,
        b_peer: SocketAddr,
        opts: RelayOptions,
        relatch: bool,
    ) -> Result<(), MediaError> {
        let Some(relay) = self.relays.get(&id) else {
            return Err(MediaError::NotFound(id.to_string()));
        };
        if relay.spec.opts.rtcp_mux != opts.rtcp_mux {
            return Err(MediaError::BadRequest(
                "rtcp-mux cannot change on an open relay".to_owned(),
            ));
        }
        self.check_family(a_peer, relay.spec.a_edge.ip())?;
        self.check_family(b_peer, relay.spec.b_edge.ip())?;
        let spec = RelaySpec {
            a_peer,
            b_peer,
            opts,
            ..relay.spec
        };
        let generation = relay.generation.wrapping_add(1);
        let mut built = build_flows(&spec, generation, (self.now)());
        let old: Vec<Option<Flow>> = built
            .iter()
            .map(|(_, k, _)| self.table.get(k))
            .collect::<Result<_, _>>()?;
        for ((_, _, new), old) in built.iter_mut().zip(&old) {
            if let Some(old) = old {
                preserve_program_state(new, old, !relatch);
            }
        }
        if !relatch {
            // A latched source keeps receiving: the reverse flow's destination stays the learned
            // one.
            let learned: Vec<(FlowKey, Flow)> = built.iter().map(|(_, k, f)| (*k, *f)).collect();
            for (k, f) in &learned {
                if let Some(src) = flow_latched(f, k)
                    && let Some((_, _, rev)) = built.iter_mut().find(|(_, rk, _)| *rk == f.reverse)
                {
                    rev.dst_addr = flows::addr_words(src.ip());
                    rev.dst_port = src.port().to_be();
                }
            }
        }
        for (_, k, f) in &built {
            self.table.put(k, f)?;
        }
        if let Some(r) = self.relays.get_mut(&id) {
            r.spec = spec;
            r.generation = generation;
        }
        Ok(())
    }

    /// Closes a relay: removes its flows, closes its sockets, releases its ports.
    pub fn close(&mut self, id: RelayId) -> Result<(), MediaError> {
        let Some(relay) = self.relays.remove(&id) else {
            return Err(MediaError::NotFound(id.to_string()));
        };
        let mut first_err = None;
        for (_, k) in relay.keys() {
            if let Err(e) = self.table.remove(&k) {
                first_err.get_or_insert(e);
            }
            self.host.remove(&k);
        }
        let s = relay.spec;
        self.release_port(s.a_edge.ip(), s.a_edge.port());
        self.release_port(s.b_edge.ip(), s.b_edge.port());
        tracing::debug!(%id, "relay closed");
        first_err.map_or(Ok(()), Err)
    }

    /// Closes every relay; returns how many.
    pub fn close_all(&mut self) -> Result<usize, MediaError> {
        let ids: Vec<RelayId> = self.relays.keys().copied().collect();
        let n = ids.len();
        for id in ids {
            self.close(id)?;
        }
        Ok(n)
    }

    fn flow_stats(&self, key: &FlowKey) -> Result<Option<FlowStats>, MediaError> {
        Ok(self.table.get_with_stats(key)?.map(|f| FlowStats {
            packets: f.packets,
            bytes: f.bytes,
            last_seen_ns: f.last_seen_ns,
            latched: flow_latched(&f, key),
            dst: flow_dst(&f, key),
        }))
    }

    /// A relay with or without its counters.
    pub fn info(&self, id: RelayId, with_stats: bool) -> Result<RelayInfo, MediaError> {
        let relay = self
            .relays
            .get(&id)
            .ok_or_else(|| MediaError::NotFound(id.to_string()))?;
        let mut info = relay.info();
        if with_stats {
            let mut stats = RelayStats {
                a_rtp: None,
                a_rtcp: None,
                b_rtp: None,
                b_rtcp: None,
            };
            for (role, key) in relay.keys() {
                let s = self.flow_stats(&key)?;
                match role {
                    FlowRole::ARtp => stats.a_rtp = s,
                    FlowRole::ARtcp => stats.a_rtcp = s,
                    FlowRole::BRtp => stats.b_rtp = s,
                    FlowRole::BRtcp => stats.b_rtcp = s,
                }
            }
            info.stats = Some(stats);
        }
        Ok(info)
    }

    /// Media activity of a relay, per direction, from the flows' counters (packets relayed in
    /// XDP and in userspace, RTCP included). One map lookup per flow (2 with rtcp-mux, else 4).
    pub fn activity(&self, id: RelayId) -> Result<MediaActivity, MediaError> {
        let relay = self
            .relays
            .get(&id)
            .ok_or_else(|| MediaError::NotFound(id.to_string()))?;
        let mut act = MediaActivity::default();
        for (role, key) in relay.keys() {
            let Some(f) = self.table.get_with_stats(&key)? else {
                continue;
            };
            let (packets, last) = match role {
                FlowRole::ARtp | FlowRole::ARtcp => (&mut act.a_packets, &mut act.a_last_ns),
                FlowRole::BRtp | FlowRole::BRtcp => (&mut act.b_packets, &mut act.b_last_ns),
            };
            *packets = packets.saturating_add(f.packets);
            // A flow starts with `last_seen_ns` = install time: only a flow that has carried a
            // packet says when media was last seen.
            if f.packets > 0 {
                *last = Some(last.map_or(f.last_seen_ns, |l: u64| l.max(f.last_seen_ns)));
            }
        }
        Ok(act)
    }

    /// Monotonic time (`CLOCK_MONOTONIC` ns, the clock of `crate::sys::monotonic_ns`; XDP stamps
    /// at tick resolution, a few ms) of the newest packet relayed in either direction, or `None`
    /// when the relay has not carried a packet yet. The call side ends calls whose media stopped
    /// by comparing it with the clock.
    pub fn last_activity(&self, id: RelayId) -> Result<Option<u64>, MediaError> {
        Ok(self.activity(id)?.last_ns())
    }

    /// Every relay, with counters.
    pub fn list(&self) -> Result<Vec<RelayInfo>, MediaError> {
        self.relays.keys().map(|id| self.info(*id, true)).collect()
    }

    /// Closes relays whose flows have all been idle for longer than the configured time (by
    /// `last_seen_ns`, CLOCK_MONOTONIC). Returns the closed ids.
    ///
    /// Runs every second over every relay: a relay is looked at (one map lookup per flow) only
    /// once it could be idle, i.e. after its newest `last_seen_ns` seen so far plus the
    /// timeout; with calls shorter than the timeout this reads no counter at all.
    pub fn expire_idle(&mut self, now_ns: u64) -> Vec<RelayId> {
        let timeout = self.idle_timeout_ns();
        let mut idle = Vec::new();
        let table = &self.table;
        for (id, relay) in &mut self.relays {
            if now_ns <= relay.idle_check_ns {
                continue;
            }
            let mut last = 0u64;
            for (_, key) in relay.keys() {
                if let Ok(Some(f)) = table.get_with_stats(&key) {
                    last = last.max(f.last_seen_ns);
                }
            }
            if now_ns.saturating_sub(last) > timeout {
                idle.push(*id);
            } else {
                relay.idle_check_ns = last.saturating_add(timeout);
            }
        }
        for id in &idle {
            if let Err(e) = self.close(*id) {
                tracing::warn!(%id, "closing an idle relay: {e}");
            }
            self.counters.inc(UserCounter::Expired);
            tracing::info!(%id, "relay expired (idle)");
        }
        idle
    }
}

/// Receive buffer of a relay socket: room for a burst of about 2000 RTP packets while the relay
/// thread is descheduled (capped by net.core.rmem_max).
const RELAY_RCVBUF: usize = 1 << 20;

/// Binds a relay socket.
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    if let Err(e) =
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &RELAY_RCVBUF)
    {
        tracing::debug!(%addr, "SO_RCVBUF: {e}");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::table::UserFlowTable;
    use std::net::Ipv4Addr;

    fn cfg(min: u16, max: u16) -> MediaConfig {
        MediaConfig {
            port_min: min,
            port_max: max,
            idle_timeout_secs: 10,
            addr_a: IpAddr::V4(Ipv4Addr::LOCALHOST),
            addr_b: IpAddr::V4(Ipv4Addr::LOCALHOST),
            workers: 1,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn relay(min: u16, max: u16, table: Arc<dyn FlowTable>) -> MediaRelay {
        MediaRelay::new(
            cfg(min, max),
            table,
            Arc::new(HoldSockets::default()),
            Arc::new(UserCounters::default()),
        )
        .expect("relay")
    }

    #[test]
    fn open_close_and_exhaustion_on_loopback() {
        let table: Arc<dyn FlowTable> = Arc::new(UserFlowTable::new());
        // Two pairs on one address: one relay uses both (A and B side).
        let mut r = relay(47000, 47003, table.clone());
        let info = r
            .open(
                sa("127.0.0.1:4000"),
                sa("127.0.0.1:5000"),
                RelayOptions::default(),
            )
            .expect("open");
        assert_eq!(table.entries().expect("entries").len(), 4);
        assert_ne!(info.a.edge, info.b.edge);
        let err = r
            .open(
                sa("127.0.0.1:4002"),
                sa("127.0.0.1:5002"),
                RelayOptions::default(),
            )
            .expect_err("exhausted");
        assert!(matches!(err, MediaError::PortsExhausted { .. }), "{err}");
        assert_eq!(err.kind(), "ports_exhausted");
        assert_eq!(r.counters().get(UserCounter::PortsExhausted), 1);
        assert_eq!(
            table.entries().expect("entries").len(),
            4,
            "nothing half-installed"
        );
        r.close(info.id).expect("close");
        assert!(table.entries().expect("entries").is_empty());
        assert!(matches!(r.close(info.id), Err(MediaError::NotFound(_))));
        r.open(
            sa("127.0.0.1:4002"),
            sa("127.0.0.1:5002"),
            RelayOptions::default(),
        )
        .expect("ports are free again");
    }

    #[test]
    fn activity_per_direction_and_newest_packet() {
        let table: Arc<dyn FlowTable> = Arc::new(UserFlowTable::new());
        let mut r = relay(47300, 47319, table.clone());
        let info = r
            .open(
                sa("127.0.0.1:4000"),
                sa("127.0.0.1:5000"),
                RelayOptions::default(),
            )
            .expect("open");
        // Freshly opened: flows carry their install time but no packet.
        assert_eq!(r.last_activity(info.id).expect("activity"), None);
        assert_eq!(
            r.activity(info.id).expect("activity"),
            MediaActivity::default()
        );
        // Packet times after the install time (the real clock).
        let t0 = crate::sys::monotonic_ns() + 1_000_000_000;
        let a_rtp = key_of(info.a.edge);
        let b_rtcp = key_of(info.b.edge_rtcp.expect("rtcp port"));
        table.account(&a_rtp, 200, t0 + 5_000);
        table.account(&a_rtp, 200, t0 + 7_000);
        let act = r.activity(info.id).expect("activity");
        assert_eq!((act.a_packets, act.a_last_ns), (2, Some(t0 + 7_000)));
        assert_eq!((act.b_packets, act.b_last_ns), (0, None));
        assert_eq!(r.last_activity(info.id).expect("last"), Some(t0 + 7_000));
        // RTCP from B counts as B's media, the newest packet wins.
        table.account_volatile(&b_rtcp, 80, t0 + 9_000);
        let act = r.activity(info.id).expect("activity");
        assert_eq!((act.b_packets, act.b_last_ns), (1, Some(t0 + 9_000)));
        assert_eq!(r.last_activity(info.id).expect("last"), Some(t0 + 9_000));
        r.close(info.id).expect("close");
        assert!(matches!(
            r.last_activity(info.id),
            Err(MediaError::NotFound(_))
        ));
    }

    #[test]
    fn map_full_is_typed_and_rolled_back() {
        let table: Arc<dyn FlowTable> = Arc::new(UserFlowTable::with_capacity(5));
        let mut r = relay(47100, 47119, table.clone());
        r.open(
            sa("127.0.0.1:4000"),
            sa("127.0.0.1:5000"),
            RelayOptions::default(),
        )
        .expect("first fits");
        let err = r
            .open(
                sa("127.0.0.1:4002"),
                sa("127.0.0.1:5002"),
                RelayOptions::default(),
            )
            .expect_err("map full");
        assert!(matches!(err, MediaError::MapFull));
        assert_eq!(r.counters().get(UserCounter::MapFull), 1);
        assert_eq!(table.entries().expect("entries").len(), 4);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn rebuild_after_restart_and_expiry() {
        let table: Arc<dyn FlowTable> = Arc::new(UserFlowTable::new());
        let (id, a_key) = {
            let mut r = relay(47200, 47219, table.clone());
            let info = r
                .open(
                    sa("127.0.0.1:4000"),
                    sa("127.0.0.1:5000"),
                    RelayOptions {
                        latch: true,
                        strict: true,
                        rtcp_mux: true,
                    },
                )
                .expect("open");
            (info.id, key_of(info.a.edge))
        };
        // Program activity on the A flow.
        let mut f = table.get(&a_key).expect("get").expect("flow");
        f.packets = 5;
        table.put(&a_key, &f).expect("put");
        // An orphan flow (no partner) is dropped on rebuild.
        let orphan = key_of(sa("127.0.0.1:47218"));
        table.put(&orphan, &Flow::default()).expect("put orphan");

        let mut r = relay(47200, 47219, table.clone());
        assert_eq!(r.len(), 1);
        assert!(table.get(&orphan).expect("get").is_none());
        let info = r.info(id, true).expect("info");
        assert!(info.latch && info.strict && info.rtcp_mux);
        assert_eq!(info.a.peer, sa("127.0.0.1:4000"));
        assert_eq!(info.b.peer, sa("127.0.0.1:5000"));
        assert_eq!(
            info.stats
                .as_ref()
                .and_then(|s| s.a_rtp.as_ref())
                .map(|s| s.packets),
            Some(5)
        );
        // The adopted ports are reserved: 10 pairs - 2 in use = 8 more relays of 2 pairs... 4.
        let mut opened = 0;
        while r
            .open(
                sa("127.0.0.1:4000"),
                sa("127.0.0.1:5000"),
                RelayOptions::default(),
            )
            .is_ok()
        {
            opened += 1;
        }
        assert_eq!(opened, 4);
        // Update keeps the counters.
        let updated = r
            .update(
                id,
                sa("127.0.0.1:4100"),
                sa("127.0.0.1:5100"),
                RelayOptions {
                    latch: true,
                    strict: false,
                    rtcp_mux: true,
                },
                false,
            )
            .expect("update");
        let stats = updated.stats.expect("stats");
        assert_eq!(
            stats.a_rtp.map(|s| (s.packets, s.dst)),
            Some((5, sa("127.0.0.1:5100")))
        );
        // Expiry: everything idle for more than 10 s at now + 11 s.
        let last = f.last_seen_ns;
        assert!(r.expire_idle(last + 1_000_000_000).is_empty());
        let expired = r.expire_idle(last + 3_600_000_000_000);
        assert_eq!(expired.len(), 5);
        assert!(r.is_empty());
        assert!(table.entries().expect("entries").is_empty());
        assert_eq!(r.counters().get(UserCounter::Expired), 5);
    }

    /// A table that counts the counter reads (`get_with_stats`: one BPF map lookup each in XDP
    /// mode).
    struct CountingTable {
        inner: UserFlowTable,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl FlowTable for CountingTable {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn get(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError> {
            self.inner.get(key)
        }
        fn put(&self, key: &FlowKey, flow: &Flow) -> Result<(), MediaError> {
            self.inner.put(key, flow)
        }
        fn remove(&self, key: &FlowKey) -> Result<(), MediaError> {
            self.inner.remove(key)
        }
        fn entries(&self) -> Result<Vec<(FlowKey, Flow)>, MediaError> {
            self.inner.entries()
        }
        fn account(&self, key: &FlowKey, bytes: u64, now_ns: u64) {
            self.inner.account(key, bytes, now_ns)
        }
        fn get_with_stats(&self, key: &FlowKey) -> Result<Option<Flow>, MediaError> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get_with_stats(key)
        }
    }

    #[test]
    fn idle_expiry_reads_counters_only_once_a_relay_could_be_idle() {
        let table = Arc::new(CountingTable {
            inner: UserFlowTable::new(),
            reads: std::sync::atomic::AtomicUsize::new(0),
        });
        let reads = |t: &CountingTable| t.reads.load(std::sync::atomic::Ordering::Relaxed);
        let dyn_table: Arc<dyn FlowTable> = table.clone();
        let mut r = relay(47400, 47419, dyn_table);
        let before = crate::sys::monotonic_ns();
        let info = r
            .open(
                sa("127.0.0.1:4000"),
                sa("127.0.0.1:5000"),
                RelayOptions::default(),
            )
            .expect("open");
        let timeout = 10_000_000_000u64;
        // Within the timeout of the install: no counter is read.
        assert!(r.expire_idle(before + timeout / 2).is_empty());
        assert!(r.expire_idle(before).is_empty());
        assert_eq!(reads(&table), 0);
        // Media at `before + 8 s` (what the program writes).
        let a_key = key_of(info.a.edge);
        let mut f = table.get(&a_key).expect("get").expect("flow");
        f.packets = 1;
        f.last_seen_ns = before + 8_000_000_000;
        table.put(&a_key, &f).expect("put");
        // Past the install's timeout: the counters are read (4 flows), the media seen, no expiry.
        let after_install = crate::sys::monotonic_ns() + timeout + 1;
        assert!(r.expire_idle(after_install).is_empty());
        assert_eq!(reads(&table), 4);
        // Not read again before the newest packet's timeout...
        assert!(r.expire_idle(before + 8_000_000_000 + timeout).is_empty());
        assert_eq!(reads(&table), 4);
        // ...and expired right after it.
        assert_eq!(
            r.expire_idle(before + 8_000_000_000 + timeout + 1),
            vec![info.id]
        );
        assert_eq!(reads(&table), 8);
        assert!(r.is_empty());
        assert!(
            table.entries().expect("entries").is_empty(),
            "flows removed"
        );
    }

    #[test]
    fn update_flows_moves_the_peers_and_keeps_the_counters() {
        let table: Arc<dyn FlowTable> = Arc::new(UserFlowTable::new());
        let mut r = relay(47420, 47439, table.clone());
        let info = r
            .open(
                sa("127.0.0.1:4000"),
                sa("0.0.0.0:0"),
                RelayOptions::default(),
            )
            .expect("open");
        let a_key = key_of(info.a.edge);
        let mut f = table.get(&a_key).expect("get").expect("flow");
        f.packets = 3;
        table.put(&a_key, &f).expect("put");
        r.update_flows(
            info.id,
            sa("127.0.0.1:4000"),
            sa("127.0.0.1:5000"),
            RelayOptions::default(),
            false,
        )
        .expect("update");
        let after = r.info(info.id, true).expect("info");
        assert_eq!(after.b.peer, sa("127.0.0.1:5000"));
        assert_eq!(
            after
                .stats
                .and_then(|s| s.a_rtp)
                .map(|s| (s.packets, s.dst)),
            Some((3, sa("127.0.0.1:5000")))
        );
    }
}
