//! sans-IO privacy B2BUA core (issue 5): the far leg built from scratch,
//! the header allowlist, SDP anchored on the edge's relay, and the dialog
//! map that translates every later message both ways. No sockets, clocks or
//! RNG: randomness comes in through [`IdSource`], relay ports through
//! [`MediaAnchor`], and the driver carries out the returned [`Action`]s.
//!
//! # The model
//!
//! A SIP proxy cannot hide a caller (RFC 3323 §3.3): Via, Contact, Call-ID
//! and SDP all name the sender's host, and a proxy must pass them. The edge
//! is therefore a back-to-back user agent (RFC 7092): it is the UAS of the
//! caller's leg (A) and the UAC of each callee leg (B, one per fork), and
//! **every message it sends is built, not forwarded**.
//!
//! **Rebuilt per leg, from the edge's own state** (never copied across):
//!
//! | field | on the far leg |
//! |---|---|
//! | Request-URI | the target's contact (B) / the caller's contact (A) |
//! | `Via` | one, the edge's, with a fresh branch |
//! | `Route` | the leg's own route set (pre-loaded or from its Record-Route) |
//! | `Record-Route` | none (the edge is the endpoint of each leg) |
//! | `Contact` | the edge ([`EdgeAddress::contact`], no user part) |
//! | `Call-ID`, tags | new random values ([`IdSource`]), RFC 3323 §5.3 |
//! | `CSeq` | a per-leg space starting at a random number |
//! | `Max-Forwards` | 70 in dialog; `min(near − 1, 70)` on the initial INVITE |
//! | `From` (B) | `"Anonymous" <sip:anonymous@anonymous.invalid>` when the caller asks (`Privacy: id`, `header`, `user`), the domain forces it, or the caller is not authenticated; else the authenticated AOR, without display name, never the contact |
//! | `To` (B) | the callee's AOR |
//! | `P-Asserted-Identity` | only to a trusted next hop, only the authenticated AOR, not with `Privacy: id` (RFC 3325 §5, §9.1) |
//! | `User-Agent` / `Server` | [`PrivacyPolicy::server`] or nothing |
//! | reason phrase | the standard phrase for the code (a peer's phrase is free text) |
//! | SDP | rewritten around the relay ([`media`]) |
//!
//! **Passed by allowlist** ([`PrivacyPolicy::pass_headers`], default in
//! [`policy::default_pass_headers`]): `Accept`, `Session-Expires`,
//! `Min-SE`, `Expires`, `Event`, `Subscription-State`, `Priority`,
//! `Info-Package`, `Recv-Info`; `Supported` / `Require` / `Unsupported`
//! filtered to the option tags that work end to end (`timer`); `Allow`
//! replaced by the edge's own list of the methods the map translates. Everything else —
//! `Subject`, `Warning`, `Date`, `Call-Info`, `History-Info`, `X-...`,
//! any unknown name — is dropped: an unknown header carrying an address
//! cannot leak, because nothing unknown crosses. Bodies: SDP is rewritten;
//! `application/dtmf-relay` and `application/dtmf` pass; any other body is
//! dropped.
//!
//! **Refused rather than weakened**: `Privacy: critical` with a priv-value
//! the edge cannot honour (500 "Privacy Unavailable"), `Require` of an
//! option tag that cannot cross (420), `Max-Forwards: 0` (483).
//!
//! **Far-leg outcomes the caller may not see as they are**: 3xx becomes 480
//! (a redirect's Contact names the callee's other addresses), 401/407
//! become 403; `100 Trying` never crosses; with several forks the first 2xx
//! wins, the others are cancelled (`Reason: SIP;cause=200`, RFC 3326) or,
//! if they answer anyway, ACKed and ended with BYE.
//!
//! The leak detector ([`leak`]) checks bytes on egress for the other
//! party's identifiers and for private-range addresses.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use sipveil_b2bua::*;
//! use sipveil_sip::{parse_datagram, HeaderName, Limits, Message, Uri};
//!
//! let sdp = "v=0\r\no=alice 1 1 IN IP4 192.168.1.20\r\ns=Alice\r\nc=IN IP4 192.168.1.20\r\n\
//!            t=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=candidate:1 1 UDP 1 192.168.1.20 4000 typ host\r\n";
//! let invite = format!(
//!     "INVITE sip:bob@open.lab SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20;branch=z9hG4bK1\r\n\
//!      From: \"Alice\" <sip:alice@auth.lab>;tag=a1\r\nTo: <sip:bob@open.lab>\r\n\
//!      Call-ID: 42@alice-laptop\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
//!      Contact: <sip:alice@192.168.1.20>\r\nPrivacy: id\r\nX-Home: 192.168.1.20\r\n\
//!      Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
//!     sdp.len()
//! );
//! let Ok(Message::Request(invite)) = parse_datagram(Bytes::from(invite), &Limits::default()) else {
//!     unreachable!()
//! };
//! let edge = |ip: &str| EdgeAddress {
//!     host: ip.into(), port: None, transport: EdgeTransport::Udp, media_ip: ip.parse().unwrap(),
//! };
//! let mut map: DialogMap<&str, u32> = DialogMap::new(PrivacyPolicy::default());
//! let mut ids = SeededIds::new(7); // production: seeded from the OS RNG
//! let mut relay = CountingAnchor::new("198.18.1.1".parse().unwrap(), "198.18.2.1".parse().unwrap(), 40000);
//! let setup = CallSetup {
//!     identity: CallerIdentity::Authenticated { aor: Uri::parse_str("sip:alice@auth.lab").unwrap() },
//!     callee: Uri::parse_str("sip:bob@open.lab").unwrap(),
//!     targets: vec![FarTarget {
//!         uri: Uri::parse_str("sip:bob@10.0.0.7:5062").unwrap(),
//!         route: vec![],
//!         trusted: false,
//!         flow: "bob-flow",
//!     }],
//!     a_flow: "alice-flow",
//!     edge_a: edge("198.18.1.1"),
//!     edge_b: edge("198.18.2.1"),
//! };
//! let (call, actions) = map.start_call(&mut ids, &mut relay, 1, invite, setup);
//! assert!(call.is_some());
//! let Action::Send { request, flow, .. } = &actions[0] else { unreachable!() };
//! assert_eq!(*flow, "bob-flow");
//! let wire = request.to_bytes();
//! // Privacy: id → anonymous From; nothing of Alice's host or network crosses.
//! assert!(wire.starts_with(b"INVITE sip:bob@10.0.0.7:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.2.1;"));
//! assert!(request.headers().get_value(&HeaderName::From).unwrap()
//!     .starts_with(b"\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag="));
//! let alice = [Identifier::new("LAN", "192.168.1.20"), Identifier::new("host", "alice-laptop")];
//! // (Bob's own LAN address in the Request-URI is his, not a leak.)
//! assert!(audit(&wire, &alice, &["10.0.0.7".parse().unwrap()]).is_empty());
//! ```
#![warn(missing_docs)]

pub mod dialog;
pub mod ids;
pub mod leak;
pub mod leg;
pub mod media;
pub mod policy;

pub use dialog::{Action, CallSetup, DialogMap, LegRef, MapStats, Outcome};
pub use ids::{IdSource, SeededIds};
pub use leak::{
    Finding, FindingKind, Identifier, MIN_IDENTIFIER_LEN, audit, audit_each,
    foreign_private_addresses, identifiers_of, is_non_public, leak_scan, leak_scan_each,
    private_addresses,
};
pub use leg::{
    ANONYMOUS_FROM, CallerIdentity, EdgeAddress, EdgeTransport, FarInvite, FarTarget,
    build_far_invite, check_invite,
};
pub use media::{
    CallRef, CountingAnchor, MediaAnchor, MediaContext, MediaError, MediaRequest, SdpOrigin, Side,
    rewrite_sdp,
};
pub use policy::{PrivacyPolicy, PrivacyRequest, Refusal, RefusalCause, SdpPolicy};
