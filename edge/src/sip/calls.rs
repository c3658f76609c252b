//! The privacy B2BUA in the daemon (issue 5): the call hub that drives
//! [`sipveil_b2bua::DialogMap`] on top of a worker's transaction layer, and the
//! [`MediaAnchor`] backed by the daemon's [`MediaRelay`].
//!
//! # Threads: one call worker
//!
//! Every call lives on **worker 0 (the call worker)**: its `TransactionLayer` holds all server
//! and client transactions of every call, and its [`CallHub`] owns the dialog map (no lock).
//! The other workers keep REGISTER and out-of-dialog OPTIONS (the registrar scales across
//! workers); any other request they receive, and any response their own transaction layer
//! does not match (a far leg's answer: SO_REUSEPORT hashes the callee's 4-tuple to any
//! socket), is handed to the call worker unchanged through the per-worker command queue and
//! [`super::transport::PoolHandle::wake`]. The call worker parses nothing twice: the message
//! travels as the parsed `Message` with the flow it arrived on, and answers go back down that
//! flow (`Io::send` hands a send to the flow's owning worker).
//!
//! Why not partition calls across workers with the owner's index encoded in the Call-ID,
//! tags and branches: every identifier the edge mints comes from the dialog map's
//! [`sipveil_b2bua::IdSource`] so that it says nothing about either party, and a single owner
//! needs no routing tag at all; call signalling is a few messages per call, far below what one
//! worker handles, while the registrar (the heavy load) stays spread. A shared `Mutex`'d map
//! was rejected because client transactions must be matched by the layer that sent them.
//!
//! # Media
//!
//! [`RelayAnchor`] maps each `(call, fork, m-line)` onto one `MediaRelay` relay: the caller
//! (A) talks to the relay's A address (`[media] addresses.a`), the callee (B) to its B
//! address, as the [`MediaAnchor`] docs describe. Relays are closed when the call ends; after a
//! daemon restart the hub knows no call, so it closes no relay it did not open (the relay
//! rebuilt from pinned flows keeps forwarding until idle expiry) and in-dialog requests get 481.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use bytes::Bytes;
use sipveil_b2bua::{
    CallRef, DialogMap, Identifier, MediaAnchor, MediaError as AnchorError, MediaRequest,
    PrivacyPolicy, SeededIds, Side, audit_each, identifiers_of, private_addresses,
};
use sipveil_sip::transaction::TransactionId;
use sipveil_sip::{HeaderName, Message};

use super::transport::FlowId;
use crate::config::CallSettings;
use crate::media::flows::RelayOptions;
use crate::media::{MediaRelay, RelayId};
use crate::metrics::Metrics;

/// The worker that owns every call.
pub const CALL_WORKER: usize = 0;

/// One anchored stream.
#[derive(Clone, Copy, Debug)]
struct Stream {
    id: RelayId,
    a_peer: SocketAddr,
    b_peer: SocketAddr,
    mux: bool,
    a_edge: SocketAddr,
    b_edge: SocketAddr,
}

fn unspecified_like(ip: IpAddr) -> SocketAddr {
    match ip {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// [`MediaAnchor`] over the daemon's [`MediaRelay`]: one relay per `(call, fork, m-line)`.
pub struct RelayAnchor {
    relay: Arc<Mutex<MediaRelay>>,
    addr_a: IpAddr,
    streams: BTreeMap<(CallRef, u16, usize), Stream>,
    /// Bumped whenever a stream is opened, moved or closed (the `sipveil calls` listing shows
    /// relay ports: [`CallHub::publish`] rebuilds it only when something it shows changed).
    changes: u64,
}

impl RelayAnchor {
    /// An anchor opening relays in `relay`; `addr_a` is the relay's A-side address (used for
    /// the address family of a not-yet-known peer).
    pub fn new(relay: Arc<Mutex<MediaRelay>>, addr_a: IpAddr) -> RelayAnchor {
        RelayAnchor {
            relay,
            addr_a,
            streams: BTreeMap::new(),
            changes: 0,
        }
    }

    /// The relays of `call` (their ids: the A-side edge address).
    pub fn relays_of(&self, call: CallRef) -> Vec<(RelayId, SocketAddr)> {
        self.streams
            .range((call, 0, 0)..=(call, u16::MAX, usize::MAX))
            .map(|(_, s)| (s.id, s.b_edge))
            .collect()
    }

    /// Monotonic ns of the last packet any of `call`'s relays forwarded (0: none yet).
    pub fn last_media_ns(&self, call: CallRef) -> u64 {
        let Ok(relay) = self.relay.lock() else {
            return 0;
        };
        let mut last = 0;
        for (id, _) in self.relays_of(call) {
            if let Ok(info) = relay.info(id, true)
                && let Some(st) = info.stats
            {
                for f in [st.a_rtp, st.a_rtcp, st.b_rtp, st.b_rtcp]
                    .into_iter()
                    .flatten()
                {
                    if f.packets > 0 {
                        last = last.max(f.last_seen_ns);
                    }
                }
            }
        }
        last
    }

    fn open(
        &self,
        a_peer: SocketAddr,
        b_peer: SocketAddr,
        mux: bool,
    ) -> Result<Stream, AnchorError> {
        let mut relay = self
            .relay
            .lock()
            .map_err(|_| AnchorError::Anchor("relay lock poisoned".to_owned()))?;
        let opts = RelayOptions {
            latch: true,
            strict: false,
            rtcp_mux: mux,
        };
        let info = relay.open(a_peer, b_peer, opts).map_err(|e| match e {
            crate::media::MediaError::PortsExhausted { .. } | crate::media::MediaError::MapFull => {
                AnchorError::Exhausted
            }
            other => AnchorError::Anchor(other.to_string()),
        })?;
        Ok(Stream {
            id: info.id,
            a_peer,
            b_peer,
            mux,
            a_edge: info.a.edge,
            b_edge: info.b.edge,
        })
    }
}

impl MediaAnchor for RelayAnchor {
    fn allocate(&mut self, req: &MediaRequest) -> Result<SocketAddr, AnchorError> {
        let key = (req.call, req.fork, req.index);
        let family = req.peer.map_or(self.addr_a, |p| p.ip());
        let unspec = unspecified_like(family);
        let existing = self.streams.get(&key).copied();
        let stream = match existing {
            Some(mut s) if s.mux == req.rtcp_mux => {
                let (mut a, mut b) = (s.a_peer, s.b_peer);
                match (req.from, req.peer) {
                    (Side::A, Some(p)) => a = p,
                    (Side::B, Some(p)) => b = p,
                    // Hold with 0.0.0.0 or a host name: keep the relay, rely on latching.
                    (_, None) => {}
                }
                if (a, b) != (s.a_peer, s.b_peer) {
                    let mut relay = self
                        .relay
                        .lock()
                        .map_err(|_| AnchorError::Anchor("relay lock poisoned".to_owned()))?;
                    let opts = RelayOptions {
                        latch: true,
                        strict: false,
                        rtcp_mux: s.mux,
                    };
                    // The flows only: the anchor needs no counters back (saves a map lookup per
                    // flow on every answer).
                    relay
                        .update_flows(s.id, a, b, opts, false)
                        .map_err(|e| AnchorError::Anchor(e.to_string()))?;
                    s.a_peer = a;
                    s.b_peer = b;
                }
                s
            }
            other => {
                // New stream, or rtcp-mux changed: (re)open (a short gap is unavoidable then).
                let (a, b) = match (req.from, req.peer) {
                    (Side::A, p) => (
                        p.unwrap_or(unspec),
                        other.map_or(unspecified_like(family), |s| s.b_peer),
                    ),
                    (Side::B, p) => (
                        other.map_or(unspecified_like(family), |s| s.a_peer),
                        p.unwrap_or(unspec),
                    ),
                };
                if let Some(old) = other
                    && let Ok(mut relay) = self.relay.lock()
                {
                    let _ = relay.close(old.id);
                }
                self.open(a, b, req.rtcp_mux)?
            }
        };
        self.streams.insert(key, stream);
        self.changes = self.changes.wrapping_add(1);
        Ok(match req.from {
            Side::A => stream.b_edge,
            Side::B => stream.a_edge,
        })
    }

    fn release(&mut self, call: CallRef, fork: Option<u16>) {
        let keys: Vec<(CallRef, u16, usize)> = self
            .streams
            .range((call, 0, 0)..=(call, u16::MAX, usize::MAX))
            .map(|(k, _)| *k)
            .filter(|(_, f, _)| fork.is_none_or(|want| want == *f))
            .collect();
        if keys.is_empty() {
            return;
        }
        self.changes = self.changes.wrapping_add(1);
        let Ok(mut relay) = self.relay.lock() else {
            return;
        };
        for k in keys {
            if let Some(s) = self.streams.remove(&k)
                && let Err(e) = relay.close(s.id)
            {
                tracing::debug!("closing relay {}: {e}", s.id);
            }
        }
    }
}

/// What the hub knows about a call besides the dialog map.
pub(crate) struct CallMeta {
    pub started: StdInstant,
    pub answered: Option<StdInstant>,
    /// The caller leg's Call-ID (a message with it is A's or goes to A).
    pub a_call_id: Bytes,
    /// What each side revealed about itself (for the leak detector on the other side).
    pub a_ids: Vec<Identifier>,
    pub b_ids: Vec<Identifier>,
    /// Private-range addresses each side itself sent (its own, not a leak when echoed to it).
    pub a_own: Vec<IpAddr>,
    pub b_own: Vec<IpAddr>,
    /// What the edge shows on purpose about A (the authenticated AOR) and B (the callee's AOR):
    /// not a leak when it appears on the other leg.
    pub a_shown: Option<Bytes>,
    pub b_shown: Bytes,
    pub ending: bool,
    /// Media timeout bookkeeping: no flow counter is read before this instant, for the
    /// `media_timeout_secs` it was computed with (the call cannot have been silent long enough
    /// before then). `None`: check at the next housekeeping tick.
    pub media_check: Option<(StdInstant, u64)>,
}

/// What the `sipveil calls` listing was last built from (see [`CallHub::publish`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ViewStamp {
    anchor_changes: u64,
    calls: usize,
    /// Wrapping sums over the calls of their ids and of their states (0 ringing, 1 answered,
    /// 2 ending) weighted by id: a call replaced by another or changing state changes them.
    ids: u64,
    states: u64,
}

/// One line of `sipveil calls` (no party addresses).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CallView {
    /// The call's number in this daemon's life.
    pub id: u64,
    /// `ringing`, `answered` or `ending`.
    pub state: &'static str,
    /// Seconds since the INVITE.
    pub age_secs: u64,
    /// The relays' ports: (A side, B side) per stream.
    pub relay_ports: Vec<(u16, u16)>,
}

/// The call worker's B2BUA state.
pub struct CallHub {
    pub(crate) map: DialogMap<FlowId, TransactionId>,
    pub(crate) ids: SeededIds,
    pub(crate) anchor: RelayAnchor,
    /// Client transactions the map started: their call and where they went.
    pub(crate) client: HashMap<TransactionId, (CallRef, FlowId)>,
    pub(crate) calls: HashMap<CallRef, CallMeta>,
    /// Every Call-ID of a call's legs (A's and each far leg's).
    pub(crate) call_ids: HashMap<Bytes, CallRef>,
    pub(crate) settings: Arc<CallSettings>,
    /// The edge's own addresses (listen and media): never a leak.
    pub(crate) edge_ips: Vec<IpAddr>,
    pub(crate) media_a: IpAddr,
    pub(crate) media_b: IpAddr,
    /// The listing last published and when (rebuilt when it changed or once a second for the
    /// ages).
    published: Option<(ViewStamp, StdInstant)>,
}

/// The dialog map's policy for `settings`.
pub fn policy_of(settings: &CallSettings) -> PrivacyPolicy {
    let mut p = PrivacyPolicy {
        server: settings.server.clone(),
        trust_domains: settings.trusted_hosts.clone(),
        ..PrivacyPolicy::default()
    };
    for h in &settings.pass_headers {
        let name = HeaderName::from_bytes(Bytes::from(h.clone()));
        if !p.pass_headers.contains(&name) {
            p.pass_headers.push(name);
        }
    }
    p
}

impl CallHub {
    /// A hub opening relays in `relay`.
    pub fn new(
        relay: Arc<Mutex<MediaRelay>>,
        media_a: IpAddr,
        media_b: IpAddr,
        settings: Arc<CallSettings>,
        edge_ips: Vec<IpAddr>,
    ) -> CallHub {
        let mut seed = [0u8; 8];
        if getrandom::getrandom(&mut seed).is_err() {
            // The identifiers stay unique; only their unpredictability depends on the seed.
            seed = (std::process::id() as u64 ^ crate::sys::monotonic_ns()).to_le_bytes();
        }
        let mut edge_ips = edge_ips;
        edge_ips.extend([media_a, media_b]);
        CallHub {
            map: DialogMap::new(policy_of(&settings)),
            ids: SeededIds::new(u64::from_le_bytes(seed)),
            anchor: RelayAnchor::new(relay, media_a),
            client: HashMap::new(),
            calls: HashMap::new(),
            call_ids: HashMap::new(),
            settings,
            edge_ips,
            media_a,
            media_b,
            published: None,
        }
    }

    /// Applies reloaded settings.
    pub fn reconfigure(&mut self, settings: Arc<CallSettings>) {
        if !Arc::ptr_eq(&settings, &self.settings) {
            self.map.set_policy(policy_of(&settings));
            self.settings = settings;
        }
    }

    /// The call a message belongs to, by Call-ID.
    pub(crate) fn call_of(&self, msg: &Message) -> Option<CallRef> {
        let id = match msg {
            Message::Request(r) => r.call_id().ok()?,
            Message::Response(r) => r.call_id().ok()?,
        };
        self.call_ids.get(&id).copied()
    }

    /// Whether `msg` (of `call`) is on the caller's leg.
    fn on_a_leg(&self, call: CallRef, msg: &Message) -> bool {
        let id = match msg {
            Message::Request(r) => r.call_id().ok(),
            Message::Response(r) => r.call_id().ok(),
        };
        self.calls
            .get(&call)
            .is_some_and(|m| id.is_some_and(|i| i == m.a_call_id))
    }

    /// Records what an incoming message reveals about its sender.
    pub(crate) fn observe(&mut self, msg: &Message) {
        let Some(call) = self.call_of(msg) else {
            return;
        };
        let a = self.on_a_leg(call, msg);
        let shown: Vec<&[u8]> = match self.calls.get(&call) {
            Some(m) if a => m.a_shown.iter().map(|b| &b[..]).collect(),
            Some(m) => vec![&m.b_shown[..]],
            None => Vec::new(),
        };
        let ids = identifiers_of(msg, &self.edge_ips, &shown);
        let own: Vec<IpAddr> = private_addresses(&msg.to_bytes())
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        if let Some(m) = self.calls.get_mut(&call) {
            let (list, own_list) = if a {
                (&mut m.a_ids, &mut m.a_own)
            } else {
                (&mut m.b_ids, &mut m.b_own)
            };
            for id in ids {
                if !list.contains(&id) {
                    list.push(id);
                }
            }
            for ip in own {
                if !own_list.contains(&ip) {
                    own_list.push(ip);
                }
            }
        }
    }

    /// The leak detector: checks an egress message of `call` going to `recipient` (its flow's
    /// peer) against the other side's identifiers and foreign private addresses. Returns the
    /// findings' kinds and header names (never the values).
    pub(crate) fn audit_egress(
        &self,
        call: CallRef,
        msg: &Message,
        recipient: IpAddr,
    ) -> Vec<(&'static str, String, String)> {
        let Some(m) = self.calls.get(&call) else {
            return Vec::new();
        };
        let to_a = self.on_a_leg(call, msg);
        let (other_ids, own_ids, own) = if to_a {
            (&m.b_ids, &m.a_ids, &m.a_own)
        } else {
            (&m.a_ids, &m.b_ids, &m.b_own)
        };
        // A value the recipient itself sent (its tag, its Contact user...) is echoed back to it
        // legitimately even when it happens to contain one of the other party's values.
        let other_ids = other_ids
            .iter()
            .filter(|id| !own_ids.iter().any(|o| contains_ci(&o.value, &id.value)));
        let mut own: Vec<IpAddr> = own.clone();
        own.push(recipient);
        own.extend(self.edge_ips.iter().copied());
        let bytes = msg.to_bytes();
        audit_each(&bytes, other_ids, &own)
            .into_iter()
            .map(|f| {
                // What kind of value it was (its label, or "address"), never the value itself.
                let (kind, what) = match f.kind {
                    sipveil_b2bua::FindingKind::Identifier(label) => ("identifier", label),
                    sipveil_b2bua::FindingKind::PrivateAddress(_) => {
                        ("private_address", "address".to_owned())
                    }
                };
                (kind, header_at(&bytes, f.offset), what)
            })
            .collect()
    }

    /// The listing for `sipveil calls`.
    pub(crate) fn views(&self) -> Vec<CallView> {
        let now = StdInstant::now();
        let mut v: Vec<CallView> = self
            .calls
            .iter()
            .map(|(call, m)| CallView {
                id: call.0,
                state: if m.ending {
                    "ending"
                } else if m.answered.is_some() {
                    "answered"
                } else {
                    "ringing"
                },
                age_secs: now.saturating_duration_since(m.started).as_secs(),
                relay_ports: self
                    .anchor
                    .relays_of(*call)
                    .into_iter()
                    .map(|(a, b)| (a.port(), b.port()))
                    .collect(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// What the listing shows, in a few integers (no allocation).
    fn view_stamp(&self) -> ViewStamp {
        let mut stamp = ViewStamp {
            anchor_changes: self.anchor.changes,
            calls: self.calls.len(),
            ids: 0,
            states: 0,
        };
        for (call, m) in &self.calls {
            let state = if m.ending {
                2
            } else if m.answered.is_some() {
                1
            } else {
                0
            };
            stamp.ids = stamp.ids.wrapping_add(call.0);
            stamp.states = stamp
                .states
                .wrapping_add(call.0.wrapping_mul(state).wrapping_add(state));
        }
        stamp
    }

    /// Publishes the gauge, and the listing when what it shows changed (a call came or went,
    /// changed state, or a relay opened, moved or closed) or its ages are a second old. The
    /// call worker publishes after every call message: rebuilding every call's line each time
    /// cost more than the message itself with a few dozen calls up.
    pub(crate) fn publish(&mut self, metrics: &Metrics, view: &Mutex<Vec<CallView>>) {
        metrics.set_calls_active(self.calls.len());
        let now = StdInstant::now();
        let stamp = self.view_stamp();
        let fresh = self.published.is_some_and(|(last, at)| {
            last == stamp && now.saturating_duration_since(at) < VIEW_AGE_REFRESH
        });
        if fresh {
            return;
        }
        if let Ok(mut v) = view.lock() {
            *v = self.views();
            self.published = Some((stamp, now));
        }
    }

    /// Calls to end now: over `max_duration_secs`, or answered without media either way for
    /// `media_timeout_secs`.
    ///
    /// The flows' counters (one BPF map lookup per flow) are read only once a call could have
    /// been silent for the timeout: after a look at the counters the call is not looked at again
    /// before `timeout - silence` has passed, so a call shorter than the timeout costs no
    /// lookup at all, and a silent call still ends at the first tick after its timeout. The
    /// silence is counted from the answer at the earliest: a call with early media that then
    /// fell silent ends `media_timeout_secs` after the answer, not after the last early packet.
    pub(crate) fn due(&mut self, now: StdInstant) -> Vec<(CallRef, &'static str)> {
        let s = &self.settings;
        let anchor = &self.anchor;
        let now_ns = crate::sys::monotonic_ns();
        let mut out = Vec::new();
        for (call, m) in &mut self.calls {
            if m.ending {
                continue;
            }
            if s.max_duration_secs > 0
                && now.saturating_duration_since(m.started).as_secs() >= s.max_duration_secs
            {
                out.push((*call, "max_duration"));
                continue;
            }
            if s.media_timeout_secs > 0
                && let Some(answered) = m.answered
            {
                let timeout = std::time::Duration::from_secs(s.media_timeout_secs);
                let next = match m.media_check {
                    Some((at, secs)) if secs == s.media_timeout_secs => Some(at),
                    // Not silent longer than it has been answered: nothing to read before
                    // `answered + timeout`.
                    _ => answered.checked_add(timeout),
                };
                if let Some(at) = next
                    && now < at
                {
                    m.media_check = Some((at, s.media_timeout_secs));
                    continue;
                }
                let timeout_ns = s.media_timeout_secs.saturating_mul(1_000_000_000);
                let last = anchor.last_media_ns(*call);
                let silent = if last == 0 {
                    u64::try_from(now.saturating_duration_since(answered).as_nanos())
                        .unwrap_or(u64::MAX)
                } else {
                    now_ns.saturating_sub(last)
                };
                if silent >= timeout_ns {
                    out.push((*call, "media_timeout"));
                } else {
                    let wait = std::time::Duration::from_nanos(timeout_ns - silent);
                    m.media_check = now.checked_add(wait).map(|at| (at, s.media_timeout_secs));
                }
            }
        }
        out
    }
}

/// How stale the `sipveil calls` ages may get before the listing is rebuilt anyway.
const VIEW_AGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `needle` occurs in `hay`, ASCII case-insensitively.
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The header name of the line holding byte `offset` (`body` past the header block).
fn header_at(bytes: &[u8], offset: usize) -> String {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    if offset >= head_end {
        return "body".to_owned();
    }
    let start = bytes
        .get(..offset)
        .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
        .map_or(0, |p| p + 1);
    let line = bytes.get(start..head_end).unwrap_or_default();
    match line.iter().position(|&c| c == b':') {
        Some(colon) if start > 0 => String::from_utf8_lossy(line.get(..colon).unwrap_or_default())
            .trim()
            .to_owned(),
        _ => "start-line".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MediaConfig;
    use crate::media::HoldSockets;
    use crate::media::counters::UserCounters;
    use crate::media::table::{FlowTable, UserFlowTable};

    fn anchor(min: u16) -> (RelayAnchor, Arc<Mutex<MediaRelay>>) {
        let cfg = MediaConfig {
            port_min: min,
            port_max: min + 40,
            idle_timeout_secs: 10,
            addr_a: IpAddr::V4(Ipv4Addr::LOCALHOST),
            addr_b: IpAddr::V4(Ipv4Addr::LOCALHOST),
            workers: 1,
        };
        let table: Arc<dyn FlowTable> = Arc::new(UserFlowTable::new());
        let relay = MediaRelay::new(
            cfg,
            table,
            Arc::new(HoldSockets::default()),
            Arc::new(UserCounters::default()),
        )
        .expect("relay");
        let relay = Arc::new(Mutex::new(relay));
        (
            RelayAnchor::new(relay.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST)),
            relay,
        )
    }

    fn req(call: u64, fork: u16, from: Side, peer: Option<&str>, mux: bool) -> MediaRequest {
        let peer: Option<SocketAddr> = peer.map(|p| p.parse().expect("addr"));
        MediaRequest {
            call: CallRef(call),
            fork,
            from,
            index: 0,
            media_type: Bytes::from_static(b"audio"),
            peer,
            rtcp_peer: None,
            rtcp_mux: mux,
        }
    }

    fn count(relay: &Arc<Mutex<MediaRelay>>) -> usize {
        relay.lock().expect("relay").len()
    }

    #[test]
    fn offer_answer_reoffer_use_one_relay_per_stream() {
        let (mut a, relay) = anchor(47_100);
        // The caller's offer: the callee is shown the B side.
        let b_side = a
            .allocate(&req(1, 0, Side::A, Some("127.0.0.1:4000"), false))
            .expect("offer");
        // The callee's answer: the caller is shown the A side of the same relay.
        let a_side = a
            .allocate(&req(1, 0, Side::B, Some("127.0.0.1:5000"), false))
            .expect("answer");
        assert_eq!(count(&relay), 1);
        let (id, b_edge) = a.relays_of(CallRef(1))[0];
        assert_eq!((id, b_edge), (a_side, b_side));
        let info = relay.lock().expect("relay").info(id, false).expect("info");
        assert_eq!(info.a.peer, "127.0.0.1:4000".parse().expect("addr"));
        assert_eq!(info.b.peer, "127.0.0.1:5000".parse().expect("addr"));
        // A re-offer moving the caller, and a hold (no address): same ports.
        let again = a
            .allocate(&req(1, 0, Side::A, Some("127.0.0.1:4100"), false))
            .expect("re-offer");
        assert_eq!(again, b_side);
        assert_eq!(
            a.allocate(&req(1, 0, Side::A, None, false)).expect("hold"),
            b_side
        );
        let info = relay.lock().expect("relay").info(id, false).expect("info");
        assert_eq!(info.a.peer, "127.0.0.1:4100".parse().expect("addr"));
        assert_eq!(count(&relay), 1);
        // rtcp-mux switched on: a new relay replaces the old one.
        let mux = a
            .allocate(&req(1, 0, Side::A, Some("127.0.0.1:4100"), true))
            .expect("mux");
        assert_ne!(mux, b_side);
        assert_eq!(count(&relay), 1);
    }

    #[test]
    fn release_of_a_fork_then_of_the_call() {
        let (mut a, relay) = anchor(47_200);
        for fork in 0..2 {
            a.allocate(&req(7, fork, Side::A, Some("127.0.0.1:4000"), false))
                .expect("offer");
        }
        a.allocate(&req(8, 0, Side::A, Some("127.0.0.1:4002"), false))
            .expect("other call");
        assert_eq!(count(&relay), 3);
        a.release(CallRef(7), Some(1));
        assert_eq!((count(&relay), a.relays_of(CallRef(7)).len()), (2, 1));
        a.release(CallRef(7), None);
        assert_eq!((count(&relay), a.relays_of(CallRef(7)).len()), (1, 0));
        assert_eq!(
            a.relays_of(CallRef(8)).len(),
            1,
            "another call's relay stays"
        );
        assert_eq!(a.last_media_ns(CallRef(8)), 0, "no packet yet");
    }

    #[test]
    fn exhausted_ports_are_reported_as_such() {
        let (mut a, _relay) = anchor(47_300);
        let mut last = Ok(unspecified_like(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        for call in 0..30 {
            last = a.allocate(&req(call, 0, Side::A, Some("127.0.0.1:4000"), false));
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(AnchorError::Exhausted));
    }

    #[test]
    fn contains_ci_ignores_ascii_case() {
        assert!(contains_ci(b"16318SIPpTag0120", b"sipp"));
        assert!(!contains_ci(b"abc", b"abcd"));
        assert!(!contains_ci(b"abc", b""));
    }

    #[test]
    fn header_at_names_the_line() {
        let m = b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\nX-Home: 10.0.0.1\r\n\r\nv=0\r\n";
        assert_eq!(header_at(m, 3), "start-line");
        let off = m.windows(8).position(|w| w == b"10.0.0.1").unwrap();
        assert_eq!(header_at(m, off), "X-Home");
        let body = m.windows(3).position(|w| w == b"v=0").unwrap();
        assert_eq!(header_at(m, body), "body");
    }

    /// A flow table counting counter reads (`get_with_stats`: a BPF map lookup each with XDP).
    struct CountingTable {
        inner: UserFlowTable,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl FlowTable for CountingTable {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn get(
            &self,
            key: &sipveil_abi::FlowKey,
        ) -> Result<Option<sipveil_abi::Flow>, crate::media::MediaError> {
            self.inner.get(key)
        }
        fn put(
            &self,
            key: &sipveil_abi::FlowKey,
            flow: &sipveil_abi::Flow,
        ) -> Result<(), crate::media::MediaError> {
            self.inner.put(key, flow)
        }
        fn remove(&self, key: &sipveil_abi::FlowKey) -> Result<(), crate::media::MediaError> {
            self.inner.remove(key)
        }
        fn entries(
            &self,
        ) -> Result<Vec<(sipveil_abi::FlowKey, sipveil_abi::Flow)>, crate::media::MediaError>
        {
            self.inner.entries()
        }
        fn account(&self, key: &sipveil_abi::FlowKey, bytes: u64, now_ns: u64) {
            self.inner.account(key, bytes, now_ns)
        }
        fn get_with_stats(
            &self,
            key: &sipveil_abi::FlowKey,
        ) -> Result<Option<sipveil_abi::Flow>, crate::media::MediaError> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get_with_stats(key)
        }
    }

    fn hub(min: u16, media_timeout_secs: u64) -> (CallHub, Arc<CountingTable>) {
        let cfg = MediaConfig {
            port_min: min,
            port_max: min + 40,
            idle_timeout_secs: 10,
            addr_a: IpAddr::V4(Ipv4Addr::LOCALHOST),
            addr_b: IpAddr::V4(Ipv4Addr::LOCALHOST),
            workers: 1,
        };
        let table = Arc::new(CountingTable {
            inner: UserFlowTable::new(),
            reads: std::sync::atomic::AtomicUsize::new(0),
        });
        let dyn_table: Arc<dyn FlowTable> = table.clone();
        let relay = MediaRelay::new(
            cfg,
            dyn_table,
            Arc::new(HoldSockets::default()),
            Arc::new(UserCounters::default()),
        )
        .expect("relay");
        let settings = CallSettings {
            media_timeout_secs,
            max_duration_secs: 0,
            ..CallSettings::default()
        };
        let hub = CallHub::new(
            Arc::new(Mutex::new(relay)),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Arc::new(settings),
            Vec::new(),
        );
        (hub, table)
    }

    fn meta(started: StdInstant, answered: Option<StdInstant>) -> CallMeta {
        CallMeta {
            started,
            answered,
            a_call_id: Bytes::from_static(b"a-call"),
            a_ids: Vec::new(),
            b_ids: Vec::new(),
            a_own: Vec::new(),
            b_own: Vec::new(),
            a_shown: None,
            b_shown: Bytes::from_static(b"bob@open.lab"),
            ending: false,
            media_check: None,
        }
    }

    /// Call 1, answered at `t0`, with its media offered (side A at 127.0.0.1:4000).
    fn answered_call(hub: &mut CallHub, t0: StdInstant) {
        hub.calls.insert(CallRef(1), meta(t0, Some(t0)));
        hub.anchor
            .allocate(&req(1, 0, Side::A, Some("127.0.0.1:4000"), false))
            .expect("offer");
    }

    fn reads(t: &CountingTable) -> usize {
        t.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn media_timeout_reads_counters_only_when_a_call_could_be_silent() {
        let (mut hub, table) = hub(47_400, 10);
        let t0 = StdInstant::now();
        let secs = std::time::Duration::from_secs;
        answered_call(&mut hub, t0);
        // An unanswered call is never looked at for media.
        hub.calls.insert(CallRef(2), meta(t0, None));
        // Answered at t0: it cannot have been silent for 10 s before t0 + 10 s, so no counter
        // is read before then.
        assert!(hub.due(t0 + secs(1)).is_empty());
        assert!(hub.due(t0 + secs(5)).is_empty());
        assert!(hub.due(t0 + secs(9)).is_empty());
        assert_eq!(reads(&table), 0, "no lookup before the call could time out");
        // Silent since the answer: due at 10 s (one read of its 4 flows).
        assert_eq!(
            hub.due(t0 + secs(10) + std::time::Duration::from_millis(1)),
            vec![(CallRef(1), "media_timeout")]
        );
        assert_eq!(reads(&table), 4);
    }

    #[test]
    fn a_shorter_media_timeout_after_reload_is_applied_at_once() {
        let (mut hub, table) = hub(47_450, 60);
        let t0 = StdInstant::now();
        let secs = std::time::Duration::from_secs;
        answered_call(&mut hub, t0);
        assert!(hub.due(t0 + secs(1)).is_empty());
        assert_eq!(reads(&table), 0);
        let shorter = CallSettings {
            media_timeout_secs: 3,
            ..(*hub.settings).clone()
        };
        hub.reconfigure(Arc::new(shorter));
        assert_eq!(hub.due(t0 + secs(4)), vec![(CallRef(1), "media_timeout")]);
    }

    #[test]
    fn media_seen_pushes_the_next_look_past_its_timeout() {
        let (mut hub, table) = hub(47_500, 10);
        let t0 = StdInstant::now();
        let secs = std::time::Duration::from_secs;
        answered_call(&mut hub, t0);
        let (id, _) = hub.anchor.relays_of(CallRef(1))[0];
        // A packet relayed just now (what the XDP program writes into the flow).
        let key = crate::media::flows::key_of(id);
        let mut f = table.get(&key).expect("get").expect("flow");
        f.packets = 1;
        f.last_seen_ns = crate::sys::monotonic_ns();
        table.put(&key, &f).expect("put");
        let seen = StdInstant::now();
        // At the answer's timeout the counters are read: media flowed just now, not due, and
        // the next look is put off to about 10 s after that packet.
        assert!(hub.due(seen + secs(1)).is_empty());
        assert_eq!(reads(&table), 0);
        let at_timeout = t0 + secs(10) + std::time::Duration::from_millis(1);
        assert!(hub.due(at_timeout).is_empty());
        assert_eq!(reads(&table), 4);
        assert!(hub.due(at_timeout + secs(8)).is_empty());
        assert_eq!(reads(&table), 4);
    }

    #[test]
    fn the_calls_listing_is_rebuilt_only_when_it_changed() {
        let (mut hub, _table) = hub(47_550, 0);
        let metrics = Metrics::new();
        let view = Mutex::new(Vec::new());
        let t0 = StdInstant::now();
        hub.calls.insert(CallRef(1), meta(t0, None));
        hub.publish(&metrics, &view);
        assert_eq!(view.lock().expect("view").len(), 1);
        // Marker: a rebuild would overwrite it.
        view.lock().expect("view").clear();
        hub.publish(&metrics, &view);
        assert!(view.lock().expect("view").is_empty(), "nothing changed");
        // A relay opened: rebuilt, with its ports.
        hub.anchor
            .allocate(&req(1, 0, Side::A, Some("127.0.0.1:4000"), false))
            .expect("offer");
        hub.publish(&metrics, &view);
        let ports = view.lock().expect("view")[0].relay_ports.len();
        assert_eq!(ports, 1);
        // Answered: rebuilt with the new state.
        view.lock().expect("view").clear();
        if let Some(m) = hub.calls.get_mut(&CallRef(1)) {
            m.answered = Some(t0);
        }
        hub.publish(&metrics, &view);
        assert_eq!(view.lock().expect("view")[0].state, "answered");
        // One call replaced by another (same count, no relay change): rebuilt.
        hub.calls.clear();
        hub.calls.insert(CallRef(2), meta(t0, Some(t0)));
        view.lock().expect("view").clear();
        hub.publish(&metrics, &view);
        assert_eq!(view.lock().expect("view")[0].id, 2);
        // Ending: rebuilt.
        if let Some(m) = hub.calls.get_mut(&CallRef(2)) {
            m.ending = true;
        }
        hub.publish(&metrics, &view);
        assert_eq!(view.lock().expect("view")[0].state, "ending");
        // Ages: rebuilt once the listing is a second old even when nothing else changed.
        view.lock().expect("view").clear();
        if let Some((_, at)) = hub.published.as_mut() {
            *at -= std::time::Duration::from_secs(2);
        }
        hub.publish(&metrics, &view);
        assert_eq!(view.lock().expect("view").len(), 1);
    }
}
