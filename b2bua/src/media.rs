//! SDP on offer and answer: the description one leg receives is rebuilt
//! around the edge's relay ports, never the other party's.
//!
//! What the rewrite does to every SDP body that crosses (in INVITE, 1xx/2xx,
//! ACK, re-INVITE, UPDATE and their answers):
//!
//! - Lines by allowlist: `v o s c t b m a` stay; `i=` (free text), `u=`,
//!   `e=`, `p=` (URI, e-mail, phone of the sender), `k=`, `r=`, `z=` and
//!   unknown letters are dropped.
//! - `o=` becomes `- <sess-id> <version> IN IP4|IP6 <edge>`: the session id
//!   is the edge's own per leg ([`SdpOrigin`]), the version starts at 1 and
//!   increases by one exactly when the description sent on that leg changes
//!   (RFC 3264 §8), so re-INVITEs stay valid offers.
//! - `s=-`; `t=0 0` (NTP start/stop times would tell the sender's clock).
//! - Every `c=` carries the edge's media address (an unspecified address
//!   such as `0.0.0.0`, the old hold form, stays unspecified).
//! - Each `m=` port becomes the relay port the [`MediaAnchor`] allocated for
//!   that stream; a port of 0 (a refused stream) stays 0. `a=rtcp` becomes
//!   the relay's RTCP port (RTP + 1, or the RTP port with `rtcp-mux`),
//!   without an address.
//! - Attributes by allowlist ([`ALLOWED_ATTRIBUTES`], plus `crypto` and the
//!   DTLS attributes as [`crate::SdpPolicy`] says). Among what is dropped:
//!   ICE (`candidate`, `ice-ufrag`, `ice-pwd`, `ice-options`,
//!   `remote-candidates`, `end-of-candidates`): host, server-reflexive and
//!   relay candidates are the party's LAN and NAT addresses, and the edge
//!   anchors media anyway, so its relay port is the only path; offering one
//!   relay candidate instead would need the relay to answer ICE
//!   connectivity checks (STUN with the right credentials), which the XDP
//!   relay does not. An answer without ICE attributes tells an ICE agent
//!   that the peer does not do ICE, and it uses the `c=`/`m=` address
//!   (RFC 8839, ICE offer/answer). `ssrc`, `ssrc-group`, `msid`, `msid-semantic`: `a=ssrc:… cname:`
//!   often carries `user@host`, and the SSRC/msid values are stable
//!   per-device ids in several clients; RTP works without them (RFC 5576 is
//!   optional). `group`, `mid`, `bundle-only`, `extmap`, `label`,
//!   `content`, `sdplang`, `tool` (names the software), and everything
//!   unknown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use sipveil_sip::sdp::{OriginRewrite, SdpError, SessionDescription};

/// Which side of a call a message belongs to: `A` is the caller's leg (the
/// edge is its UAS), `B` the callee's (the edge is its UAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller's leg.
    A,
    /// The callee's leg.
    B,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// A call in the dialog map (stable for the call's life; never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallRef(pub u64);

/// Attributes that pass (names compare case-insensitively). Each is a codec
/// or transport parameter, not a party's property.
pub const ALLOWED_ATTRIBUTES: &[&str] = &[
    "rtpmap",
    "fmtp",
    "ptime",
    "maxptime",
    "sendrecv",
    "sendonly",
    "recvonly",
    "inactive",
    "rtcp",
    "rtcp-mux",
    "rtcp-rsize",
    "rtcp-fb",
    "framerate",
    "silenceSupp",
    "T38FaxVersion",
    "T38MaxBitRate",
    "T38FaxFillBitRemoval",
    "T38FaxTranscodingMMR",
    "T38FaxTranscodingJBIG",
    "T38FaxRateManagement",
    "T38FaxMaxBuffer",
    "T38FaxMaxDatagram",
    "T38FaxUdpEC",
];

/// Attributes of DTLS-SRTP (passed only with `SdpPolicy::dtls_fingerprint`).
pub const DTLS_ATTRIBUTES: &[&str] = &["fingerprint", "setup", "tls-id"];

/// One stream the edge must anchor: the peer's media address as the SDP
/// states it, and where the stream sits in the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRequest {
    /// The call.
    pub call: CallRef,
    /// Which fork of the far leg (0 when not forked). A-side offers are
    /// anchored once per fork (each fork may answer from elsewhere).
    pub fork: u16,
    /// The leg whose SDP this is (the peer lives there); the returned edge
    /// address is shown to the *other* leg.
    pub from: Side,
    /// Index of the `m=` section.
    pub index: usize,
    /// `audio`, `video`, ...
    pub media_type: Bytes,
    /// The peer's RTP address, when the SDP gives a literal specified
    /// address (`None` for hold with `0.0.0.0`, or a host name).
    pub peer: Option<SocketAddr>,
    /// The peer's RTCP address (`a=rtcp`, else RTP port + 1), `None` with
    /// rtcp-mux or without a peer address.
    pub rtcp_peer: Option<SocketAddr>,
    /// `a=rtcp-mux` present.
    pub rtcp_mux: bool,
}

/// Allocates relay ports. The daemon backs it with `MediaRelay`.
///
/// Contract: a second `allocate` for the same `(call, fork, from, index)`
/// (a re-INVITE or UPDATE: hold, resume, new port, codec change) returns the
/// same edge address and updates the peer in place, so media has no gap.
/// Ports are even; RTCP is at port + 1 (see `docs/contracts.md`, flows).
///
/// One relay per `(call, fork, index)` serves both directions; a natural
/// mapping onto `MediaRelay` (A = caller side, B = callee side):
///
/// - `from: Side::A` (the caller's offer, or its later SDP): the first time,
///   `open(a_peer = peer, b_peer = <unspecified, same family>, latch)` and
///   return the relay's **B-side** edge address (the callee sends there);
///   later, `update(a_peer = peer, ..)` and return the same B-side address.
/// - `from: Side::B` (the callee's answer or offer): `update(b_peer = peer,
///   ..)` (open first if needed) and return the **A-side** edge address.
/// - `peer: None` (hold with `0.0.0.0`, or a host name): keep the relay,
///   rely on latching.
/// - `MediaRelay` cannot switch rtcp-mux on an open relay: when a request's
///   `rtcp_mux` differs from the relay's (offer with mux, answer without),
///   the daemon opens a new one (a short gap is unavoidable there).
/// - [`MediaAnchor::release`] with `Some(fork)` closes a losing fork's
///   relays, with `None` all of the call's.
pub trait MediaAnchor {
    /// The edge address and RTP port the other leg should send this stream to.
    fn allocate(&mut self, req: &MediaRequest) -> Result<SocketAddr, MediaError>;
    /// Release the streams of `call` (of one fork only with `Some`).
    fn release(&mut self, call: CallRef, fork: Option<u16>);
}

/// Why an SDP body could not be anchored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaError {
    /// The body is not valid SDP.
    Sdp(SdpError),
    /// An active stream has no `c=` line at session or media level.
    NoConnection {
        /// Index of the `m=` section.
        index: usize,
    },
    /// The anchor returned different edge IP addresses for streams of one
    /// description (the rewrite writes one address).
    AddressMismatch,
    /// The anchor has no ports left.
    Exhausted,
    /// The anchor failed for another reason.
    Anchor(String),
}

impl MediaError {
    /// Whether the offer itself is at fault (488) rather than the edge (500).
    pub fn is_offer_fault(&self) -> bool {
        matches!(self, MediaError::Sdp(_) | MediaError::NoConnection { .. })
    }
}

impl std::fmt::Display for MediaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaError::Sdp(e) => write!(f, "SDP: {e}"),
            MediaError::NoConnection { index } => write!(f, "m= section {index} has no c= line"),
            MediaError::AddressMismatch => f.write_str("relay returned several edge addresses"),
            MediaError::Exhausted => f.write_str("no relay ports left"),
            MediaError::Anchor(s) => write!(f, "relay: {s}"),
        }
    }
}

impl std::error::Error for MediaError {}

/// The edge's SDP origin on one leg: its session id and the version of the
/// last description it sent there, so versions rise monotonically and only
/// when the description changes (RFC 3264 §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdpOrigin {
    session_id: u64,
    version: u64,
    last: Option<Bytes>,
}

impl SdpOrigin {
    /// A new origin with the edge's session id for this leg.
    pub fn new(session_id: u64) -> Self {
        SdpOrigin {
            session_id,
            version: 1,
            last: None,
        }
    }

    /// The version of the last description sent (1 before any).
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// Where a description is going and what to anchor it as.
#[derive(Clone, Copy, Debug)]
pub struct MediaContext {
    /// The call.
    pub call: CallRef,
    /// The fork of the far leg.
    pub fork: u16,
    /// The leg the description comes from.
    pub from: Side,
    /// The edge's media address toward the receiving leg, used when the
    /// description has no active stream (nothing allocated).
    pub edge_ip: IpAddr,
}

fn attribute_allowed(name: &[u8], policy: &crate::SdpPolicy) -> bool {
    let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    ALLOWED_ATTRIBUTES.iter().any(|a| eq(a))
        || (policy.sdes_srtp && eq("crypto"))
        || (policy.dtls_fingerprint && DTLS_ATTRIBUTES.iter().any(|a| eq(a)))
        || policy.extra_attributes.iter().any(|a| eq(a))
}

fn unspecified(ip: IpAddr) -> bool {
    ip.is_unspecified()
}

/// Rewrite one SDP body for the other leg (see the module docs). `origin`
/// is the edge's origin on the *receiving* leg.
pub fn rewrite_sdp(
    body: Bytes,
    policy: &crate::SdpPolicy,
    origin: &mut SdpOrigin,
    anchor: &mut dyn MediaAnchor,
    ctx: MediaContext,
) -> Result<Bytes, MediaError> {
    let mut sdp = SessionDescription::parse(body).map_err(MediaError::Sdp)?;
    let session_ip = sdp.connection().and_then(|c| c.ip());
    let session_has_c = sdp.connection().is_some();
    // What each stream is, read before anything changes.
    struct Stream {
        port: u16,
        ip: Option<IpAddr>,
        has_c: bool,
        rtcp: Option<(u16, Option<IpAddr>)>,
        mux: bool,
        media_type: Bytes,
    }
    let streams: Vec<Stream> = sdp
        .media()
        .map(|m| Stream {
            port: m.port(),
            ip: m
                .connection()
                .and_then(|c| c.ip())
                .or(if m.connection().is_some() {
                    None
                } else {
                    session_ip
                }),
            has_c: m.connection().is_some() || session_has_c,
            rtcp: m
                .rtcp()
                .map(|r| (r.port, r.connection.and_then(|c| c.ip()))),
            mux: m.rtcp_mux(),
            media_type: Bytes::copy_from_slice(m.media_type()),
        })
        .collect();

    let mut edge_ip: Option<IpAddr> = None;
    let mut any_specified = false;
    let mut allocated: Vec<Option<SocketAddr>> = Vec::with_capacity(streams.len());
    for (index, s) in streams.iter().enumerate() {
        if s.port == 0 {
            allocated.push(None);
            continue;
        }
        if !s.has_c {
            return Err(MediaError::NoConnection { index });
        }
        let peer_ip = s.ip.filter(|ip| !unspecified(*ip));
        any_specified |= peer_ip.is_some();
        let peer = peer_ip.map(|ip| SocketAddr::new(ip, s.port));
        let rtcp_peer = if s.mux {
            None
        } else {
            match s.rtcp {
                Some((port, ip)) => ip.or(peer_ip).map(|ip| SocketAddr::new(ip, port)),
                None => peer_ip.map(|ip| SocketAddr::new(ip, s.port.wrapping_add(1))),
            }
        };
        let req = MediaRequest {
            call: ctx.call,
            fork: ctx.fork,
            from: ctx.from,
            index,
            media_type: s.media_type.clone(),
            peer,
            rtcp_peer,
            rtcp_mux: s.mux,
        };
        let edge = anchor.allocate(&req)?;
        match edge_ip {
            None => edge_ip = Some(edge.ip()),
            Some(ip) if ip != edge.ip() => return Err(MediaError::AddressMismatch),
            Some(_) => {}
        }
        allocated.push(Some(edge));
    }
    let edge_ip = edge_ip.unwrap_or(ctx.edge_ip);

    // Lines and attributes by allowlist.
    sdp.retain_lines(|l| {
        matches!(
            l.kind(),
            b'v' | b'o' | b's' | b'c' | b't' | b'b' | b'm' | b'a'
        )
    });
    sdp.retain_attributes(|a| attribute_allowed(a.name, policy));

    // Every stream on hold with an unspecified address stays on hold.
    let all_hold = !any_specified && streams.iter().any(|s| s.port != 0);
    let c_ip = if all_hold {
        match edge_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    } else {
        edge_ip
    };
    sdp.set_all_connection_addresses(c_ip);
    for (m, edge) in sdp.media_mut().zip(&allocated) {
        if let Some(edge) = edge {
            let mux = m.rtcp_mux();
            m.set_port(edge.port());
            if m.port_count().is_some() {
                m.set_port_count(None);
            }
            let rtcp = if mux {
                edge.port()
            } else {
                edge.port().wrapping_add(1)
            };
            m.rewrite_rtcp(rtcp, None);
        }
    }
    sdp.set_session_name(b"-").map_err(MediaError::Sdp)?;

    let sid = origin.session_id.to_string();
    let mut version = origin.version;
    let mut out = with_origin(&mut sdp, &sid, version, edge_ip)?;
    if let Some(last) = &origin.last
        && strip_origin(last) != strip_origin(&out)
    {
        version += 1;
        out = with_origin(&mut sdp, &sid, version, edge_ip)?;
    }
    origin.version = version;
    origin.last = Some(out.clone());
    Ok(out)
}

fn with_origin(
    sdp: &mut SessionDescription,
    sid: &str,
    version: u64,
    ip: IpAddr,
) -> Result<Bytes, MediaError> {
    let v = version.to_string();
    sdp.rewrite_origin(&OriginRewrite {
        username: b"-",
        session_id: sid.as_bytes(),
        session_version: Some(v.as_bytes()),
        address: ip,
    })
    .map_err(MediaError::Sdp)?;
    Ok(zero_timing(sdp.to_bytes()))
}

/// `t=<start> <stop>` with NTP times tells the other party the sender's
/// clock (a device fingerprint); calls are unbounded sessions, `t=0 0`.
fn zero_timing(b: Bytes) -> Bytes {
    let needs = b
        .split(|&c| c == b'\n')
        .any(|l| l.starts_with(b"t=") && !l.starts_with(b"t=0 0"));
    if !needs {
        return b;
    }
    let mut out = Vec::with_capacity(b.len());
    for line in b.split_inclusive(|&c| c == b'\n') {
        if line.starts_with(b"t=") {
            out.extend_from_slice(b"t=0 0");
            let ending: &[u8] = if line.ends_with(b"\r\n") {
                b"\r\n"
            } else if line.ends_with(b"\n") {
                b"\n"
            } else {
                b""
            };
            out.extend_from_slice(ending);
        } else {
            out.extend_from_slice(line);
        }
    }
    Bytes::from(out)
}

/// The description without its `o=` line, for change detection.
fn strip_origin(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for line in b.split_inclusive(|&c| c == b'\n') {
        if !line.starts_with(b"o=") {
            out.extend_from_slice(line);
        }
    }
    out
}

/// A simple in-memory [`MediaAnchor`] for tests and examples: ports from a
/// counter, one per `(call, fork, from, index)`.
#[derive(Clone, Debug)]
pub struct CountingAnchor {
    /// Edge address toward A (shown to A, so used for SDP coming from B).
    pub edge_a: IpAddr,
    /// Edge address toward B.
    pub edge_b: IpAddr,
    next_port: u16,
    /// Every allocation: request and the answer given.
    pub allocations: Vec<(MediaRequest, SocketAddr)>,
    /// Released `(call, fork)` pairs.
    pub released: Vec<(CallRef, Option<u16>)>,
}

impl CountingAnchor {
    /// Ports start at `first_port` (even) and step by 2.
    pub fn new(edge_a: IpAddr, edge_b: IpAddr, first_port: u16) -> Self {
        CountingAnchor {
            edge_a,
            edge_b,
            next_port: first_port & !1,
            allocations: Vec::new(),
            released: Vec::new(),
        }
    }
}

impl MediaAnchor for CountingAnchor {
    fn allocate(&mut self, req: &MediaRequest) -> Result<SocketAddr, MediaError> {
        let same = |r: &MediaRequest| {
            r.call == req.call && r.fork == req.fork && r.from == req.from && r.index == req.index
        };
        if let Some((_, a)) = self.allocations.iter().rev().find(|(r, _)| same(r)) {
            let a = *a;
            self.allocations.push((req.clone(), a));
            return Ok(a);
        }
        let ip = match req.from {
            Side::A => self.edge_b,
            Side::B => self.edge_a,
        };
        let port = self.next_port;
        self.next_port = self.next_port.checked_add(2).ok_or(MediaError::Exhausted)?;
        let a = SocketAddr::new(ip, port);
        self.allocations.push((req.clone(), a));
        Ok(a)
    }

    fn release(&mut self, call: CallRef, fork: Option<u16>) {
        self.released.push((call, fork));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 123 456 IN IP4 192.168.7.20\r\ns=Alice's phone\r\n\
        i=call from alice\r\ne=alice@example.com\r\nc=IN IP4 192.168.7.20\r\nt=0 0\r\n\
        a=tool:AlicePhone 1.2\r\na=group:BUNDLE 0\r\n\
        m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\na=rtcp:4001 IN IP4 192.168.7.20\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecret\r\n\
        a=candidate:1 1 UDP 2130706431 192.168.7.20 4000 typ host\r\n\
        a=candidate:2 1 UDP 1694498815 203.0.113.77 51000 typ srflx raddr 192.168.7.20 rport 4000\r\n\
        a=ssrc:1111 cname:alice@alicebox.lan\r\na=mid:0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
        a=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\na=sendrecv\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";

    fn ctx() -> MediaContext {
        MediaContext {
            call: CallRef(1),
            fork: 0,
            from: Side::A,
            edge_ip: "198.18.2.1".parse().unwrap(),
        }
    }

    fn anchor() -> CountingAnchor {
        CountingAnchor::new(
            "198.18.1.1".parse().unwrap(),
            "198.18.2.1".parse().unwrap(),
            30000,
        )
    }

    #[test]
    fn offer_is_rebuilt_around_the_relay() {
        let mut a = anchor();
        let mut origin = SdpOrigin::new(99);
        let out = rewrite_sdp(
            Bytes::from_static(OFFER.as_bytes()),
            &crate::SdpPolicy::default(),
            &mut origin,
            &mut a,
            ctx(),
        )
        .unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            text,
            "v=0\r\no=- 99 1 IN IP4 198.18.2.1\r\ns=-\r\nc=IN IP4 198.18.2.1\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-15\r\na=rtcp:30001\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
             a=sendrecv\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        );
        assert_eq!(a.allocations.len(), 1);
        let (req, _) = &a.allocations[0];
        assert_eq!(req.peer, Some("192.168.7.20:4000".parse().unwrap()));
        assert_eq!(req.rtcp_peer, Some("192.168.7.20:4001".parse().unwrap()));
    }

    #[test]
    fn version_rises_only_when_the_description_changes() {
        let mut a = anchor();
        let mut origin = SdpOrigin::new(5);
        let p = crate::SdpPolicy::default();
        let body = Bytes::from_static(b"v=0\r\no=x 1 1 IN IP4 10.1.1.1\r\ns=x\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n");
        let one = rewrite_sdp(body.clone(), &p, &mut origin, &mut a, ctx()).unwrap();
        let two = rewrite_sdp(body, &p, &mut origin, &mut a, ctx()).unwrap();
        assert_eq!(one, two);
        assert_eq!(origin.version(), 1);
        let hold = Bytes::from_static(b"v=0\r\no=x 1 2 IN IP4 10.1.1.1\r\ns=x\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=sendonly\r\n");
        let three = rewrite_sdp(hold, &p, &mut origin, &mut a, ctx()).unwrap();
        assert_eq!(origin.version(), 2);
        assert!(three.starts_with(b"v=0\r\no=- 5 2 IN IP4 198.18.2.1\r\n"));
        // The same stream keeps its relay port across the re-offer.
        assert!(three.windows(10).any(|w| w == b"audio 3000"));
    }

    #[test]
    fn hold_with_unspecified_address_stays_on_hold() {
        let mut a = anchor();
        let mut origin = SdpOrigin::new(5);
        let body = Bytes::from_static(b"v=0\r\no=x 1 1 IN IP4 10.1.1.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n");
        let out = rewrite_sdp(
            body,
            &crate::SdpPolicy::default(),
            &mut origin,
            &mut a,
            ctx(),
        )
        .unwrap();
        assert!(out.windows(17).any(|w| w == b"c=IN IP4 0.0.0.0\r"));
        assert_eq!(a.allocations[0].0.peer, None);
    }

    #[test]
    fn missing_connection_is_an_offer_fault() {
        let mut a = anchor();
        let mut origin = SdpOrigin::new(5);
        let body = Bytes::from_static(
            b"v=0\r\no=x 1 1 IN IP4 10.1.1.1\r\ns=x\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n",
        );
        let e = rewrite_sdp(
            body,
            &crate::SdpPolicy::default(),
            &mut origin,
            &mut a,
            ctx(),
        )
        .unwrap_err();
        assert_eq!(e, MediaError::NoConnection { index: 0 });
        assert!(e.is_offer_fault());
    }

    #[test]
    fn srtp_attributes_follow_the_policy() {
        let mut a = anchor();
        let body = Bytes::from_static(OFFER.as_bytes());
        let strict = crate::SdpPolicy {
            sdes_srtp: false,
            dtls_fingerprint: false,
            extra_attributes: Vec::new(),
        };
        let out =
            rewrite_sdp(body.clone(), &strict, &mut SdpOrigin::new(1), &mut a, ctx()).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            !text.contains("crypto") && !text.contains("fingerprint") && !text.contains("setup")
        );
        let dtls = crate::SdpPolicy {
            sdes_srtp: false,
            dtls_fingerprint: true,
            extra_attributes: vec!["label".into()],
        };
        let out = rewrite_sdp(body, &dtls, &mut SdpOrigin::new(1), &mut a, ctx()).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("a=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\n"));
        assert!(!text.contains("crypto"));
    }

    #[test]
    fn ipv6_edge_and_rtcp_mux() {
        let mut a = CountingAnchor::new(
            "2001:db8::a".parse().unwrap(),
            "2001:db8::b".parse().unwrap(),
            50000,
        );
        let body = Bytes::from_static(
            b"v=0\r\no=x 1 1 IN IP6 fd00::5\r\ns=x\r\nc=IN IP6 fd00::5\r\nt=0 0\r\n\
              m=audio 6000 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:6000\r\n",
        );
        let c = MediaContext {
            call: CallRef(1),
            fork: 0,
            from: Side::A,
            edge_ip: "2001:db8::b".parse().unwrap(),
        };
        let out = rewrite_sdp(
            body,
            &crate::SdpPolicy::default(),
            &mut SdpOrigin::new(3),
            &mut a,
            c,
        )
        .unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            text,
            "v=0\r\no=- 3 1 IN IP6 2001:db8::b\r\ns=-\r\nc=IN IP6 2001:db8::b\r\nt=0 0\r\n\
             m=audio 50000 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:50000\r\n"
        );
        let req = &a.allocations[0].0;
        assert!(req.rtcp_mux && req.rtcp_peer.is_none());
        assert_eq!(req.peer, Some("[fd00::5]:6000".parse().unwrap()));
    }

    #[test]
    fn timing_is_zeroed() {
        let mut a = anchor();
        let body = Bytes::from_static(b"v=0\r\no=x 1 1 IN IP4 10.1.1.1\r\ns=x\r\nc=IN IP4 10.1.1.1\r\nt=3034423619 3042462419\r\nr=7d 1h 0 25h\r\nm=audio 5000 RTP/AVP 0\r\n");
        let out = rewrite_sdp(
            body,
            &crate::SdpPolicy::default(),
            &mut SdpOrigin::new(1),
            &mut a,
            ctx(),
        )
        .unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("\r\nt=0 0\r\nm=audio"), "{text}");
        assert!(!text.contains("3034423619") && !text.contains("r="));
    }
}
