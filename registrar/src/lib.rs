//! sans-IO anonymous registrar (issue 4): domains as virtual hosts with a
//! per-domain policy (open / authenticated / closed), bindings (RFC 3261
//! §10.3, RFC 5626), RFC 7616 digest. No sockets, clocks or randomness
//! inside: time (`now_ms`, wall-clock milliseconds since the UNIX epoch, so
//! expiry survives restarts) and the 32-byte secret are parameters.
//!
//! # Domains
//!
//! A REGISTER is served by the domain whose name equals the Request-URI
//! host (ASCII case-insensitive). No such domain: 403 "Domain Not Served"
//! (never forwarded). `closed`: 403 "Registration Closed". The To URI's host
//! must be the same domain (else 403 "To Domain Mismatch"); its user is the
//! nickname / user name: 1–64 characters of `[a-z0-9._-]`, upper case
//! folded to lower case (else 400 "Invalid Nickname ..."); `anonymous` is
//! reserved (403 "Nickname Reserved").
//!
//! # Ownership of open nicknames
//!
//! In an `open` domain anyone may register any free nickname, without an
//! account. **A live nickname is owned by the claim that created it: the
//! Call-ID of the REGISTER that created its first binding, plus that
//! REGISTER's `+sip.instance` if it carried one.** While the nickname has at
//! least one live binding, only REGISTERs with the same Call-ID may refresh
//! it, add or remove contacts, remove everything with `*`, or fetch its
//! bindings; when the claim carried a `+sip.instance`, every REGISTER that
//! carries contacts must carry the same instance (and a claim made without
//! one only accepts contacts without one). Anyone else gets 403 "Nickname
//! In Use" and nothing changes. When every binding has expired or been
//! removed, the nickname is free for the next claimant.
//!
//! The Call-ID acts as a bearer secret (RFC 3261 §8.1.1.4 recommends it be
//! cryptographically random),
//! and only the owner and the edge ever see it: sipveil is a B2BUA, it
//! never forwards a REGISTER and never copies a Call-ID from one leg to the
//! other, so callers and callees of the owner learn nothing that would let
//! them take the nickname. A client that loses its Call-ID (restart without
//! saved state) waits for its old bindings to expire. Over UDP without TLS
//! an on-path attacker can read the Call-ID; use TLS for a claim that must
//! withstand that.
//!
//! In `authenticated` domains the digest credentials authorize every
//! change to the user's bindings (RFC 3261 §10.3); there is no claim.
//!
//! # REGISTER processing (RFC 3261 §10.3)
//!
//! - Several contacts per address of record, up to the domain's
//!   `max_contacts` (beyond: 403 "Too Many Contacts"); at most 64 Contact
//!   values per request.
//! - Lifetime: the contact's `expires` parameter, else the Expires header,
//!   else the domain default; above `max` it is lowered to `max`; non-zero
//!   below `min`: 423 with Min-Expires. `0` removes that binding.
//! - `*` only alone and with `Expires: 0` (else 400); removes every binding
//!   of the AOR.
//! - Same Call-ID as a live binding with a CSeq not higher: 500 "CSeq Out
//!   Of Order" (§10.3 step 7; retransmissions are absorbed by the TU's
//!   server transaction before they get here).
//! - A binding is identified by (`+sip.instance`, `reg-id`) when both are
//!   present (RFC 5626: a re-registration from a new flow replaces it),
//!   else by its Contact URI as written (byte comparison).
//! - No Contact: a fetch, 200 listing the requester's bindings, no store ops.
//! - The 200 OK lists **only the requester's own bindings** (same Call-ID,
//!   or same `+sip.instance`) with their remaining `expires`; never other
//!   people's or other devices'. With `Supported: outbound` and a `reg-id`
//!   it carries `Require: outbound`.
//! - The global `max_bindings` cap: a REGISTER that would add a binding
//!   beyond it gets 503 with Retry-After; refreshes and removals still work.
//! - The To-tag is an HMAC of the secret over Call-ID and From-tag, so a
//!   retransmitted REGISTER gets an identical answer. Responses carry no Date.
//!
//! # Digest (RFC 7616)
//!
//! 401 carries two challenges, `algorithm=SHA-256` first, then `MD5`, both
//! `qop="auth"` with realm, nonce and opaque. Nonces are stateless:
//! base64url(issue_ms ‖ HMAC-SHA256(secret, issue_ms ‖ realm)[..16]). An
//! authentic, correct response on an expired nonce gets 401 `stale=true`.
//! The highest nonce-count per (nonce, username, cnonce) is kept in a
//! bounded table (two clients challenged in the same millisecond share a
//! nonce; a replay repeats the cnonce, a new cnonce needs the password); a
//! count not higher is a replay (401 with a fresh challenge). Evicting an
//! entry raises a floor: unknown nonces issued before it count as stale. MD5 succeeds only
//! for users with an MD5 HA1. The `username` must equal the To user (else
//! 403). `userhash` is not supported (never offered). Unknown user and wrong
//! password give byte-identical answers (same status, reason, headers,
//! fresh challenge) after the same work against a dummy HA1, with a
//! constant-time comparison; only [`Report`] tells them apart, for metrics.
//! Credentials are checked before the Contact values (RFC 3261 §10.3: step 3
//! before steps 6-7): a REGISTER without them gets the challenge whatever its
//! contacts say, and only an authenticated one has them judged.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use sipveil_registrar::*;
//! use sipveil_sip::{Limits, Message, parse_datagram};
//!
//! let cfg = RegistrarConfig {
//!     domains: vec![DomainConfig {
//!         name: "open.lab".into(),
//!         policy: Policy::Open,
//!         realm: "open.lab".into(),
//!         users: Vec::new(),
//!         anonymous_callers: true,
//!         refuse_anonymous: false,
//!         expires: ExpiresLimits { min: 60, max: 3600, default: 600 },
//!         max_contacts: 8,
//!         digest_algorithms: Vec::new(),
//!     }],
//!     nonce_ttl_secs: 300,
//!     max_bindings: 100_000,
//! };
//! let mut reg = Registrar::new(cfg, [7; 32]); // the secret comes from the daemon
//! let wire = Bytes::from_static(
//!     b"REGISTER sip:open.lab SIP/2.0\r\n\
//!       Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK1\r\n\
//!       From: <sip:neo@open.lab>;tag=a1\r\n\
//!       To: <sip:neo@open.lab>\r\n\
//!       Call-ID: 8f2c1d@198.18.1.2\r\n\
//!       CSeq: 1 REGISTER\r\n\
//!       Contact: <sip:neo@198.18.1.2:5060>\r\n\
//!       Content-Length: 0\r\n\r\n",
//! );
//! let Ok(Message::Request(req)) = parse_datagram(wire, &Limits::default()) else { panic!() };
//! let flow = FlowInfo {
//!     proto: Proto::Udp,
//!     local: "198.18.1.1:5060".parse().unwrap(),
//!     peer: "198.18.1.2:5060".parse().unwrap(),
//!     worker: 0,
//!     conn: 0,
//! };
//! let now_ms = 1_700_000_000_000; // the driver's wall clock
//! match reg.register(now_ms, &req, &flow) {
//!     RegisterOutcome::Commit { ops, response, report } => {
//!         // persist `ops`, and only then send `response`
//!         assert_eq!(ops.len(), 1);
//!         assert_eq!(response.status().as_u16(), 200);
//!         assert_eq!(report.result, ReportResult::Registered);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(reg.lookup("neo", "open.lab", now_ms)[0].contact, "sip:neo@198.18.1.2:5060");
//! ```
//!
//! # State and durability
//!
//! [`Registrar::register`] changes the in-memory state at once; with
//! [`RegisterOutcome::Commit`] the TU sends the response only after `ops`
//! are durable. [`Binding::encode`] / [`Binding::decode`] are a versioned
//! binary format; keys are AOR bytes ‖ 0x00 ‖ binding id.

#![warn(missing_docs)]

use std::net::SocketAddr;

use sipveil_sip::Response;

mod aormap;
mod binding;
mod digest;
mod registrar;
mod users;

pub use digest::Alg as DigestAlgorithm;
pub use registrar::{Registrar, RequestAuth};
pub use users::{
    MAX_NAME, NameError, RESERVED, format_user_line, ha1_md5, ha1_sha256, normalize_name,
    parse_users,
};

/// Registration policy of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Anyone may register any free nickname.
    Open,
    /// RFC 7616 digest against the domain's users file.
    Authenticated,
    /// No registration (403).
    Closed,
}

impl Policy {
    /// Lower-case label (`open`, `authenticated`, `closed`) for config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Open => "open",
            Policy::Authenticated => "authenticated",
            Policy::Closed => "closed",
        }
    }
}

/// Expires limits in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiresLimits {
    /// Below: 423 Interval Too Brief with Min-Expires.
    pub min: u32,
    /// Above: lowered to this.
    pub max: u32,
    /// No Expires anywhere in the request.
    pub default: u32,
}

/// One line of a users file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    /// User name (lower case, the nickname syntax).
    pub name: String,
    /// SHA-256(name ":" realm ":" password).
    pub ha1_sha256: [u8; 32],
    /// MD5(name ":" realm ":" password), for old clients.
    pub ha1_md5: Option<[u8; 16]>,
    /// Per-user override of the domain's `refuse_anonymous`.
    pub refuse_anonymous: Option<bool>,
}

/// One virtual host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Host name, matched case-insensitively against the Request-URI host.
    pub name: String,
    /// Registration policy.
    pub policy: Policy,
    /// Digest realm (authenticated).
    pub realm: String,
    /// Users (authenticated).
    pub users: Vec<UserEntry>,
    /// Whether anonymous callers may reach users registered here.
    pub anonymous_callers: bool,
    /// Default for users here: refuse anonymous calls (433).
    pub refuse_anonymous: bool,
    /// Expires limits.
    pub expires: ExpiresLimits,
    /// Bindings per address of record.
    pub max_contacts: usize,
    /// Digest challenges offered, in this order (one `WWW-Authenticate` each); credentials with
    /// an algorithm not listed are refused. Empty: SHA-256 then MD5 (RFC 7616 order). Some
    /// clients (SIPp 3.6) answer only the first challenge and only with MD5: list MD5 first for
    /// them.
    pub digest_algorithms: Vec<DigestAlgorithm>,
}

impl DomainConfig {
    /// The digest algorithms offered, in order.
    pub fn offered_algorithms(&self) -> &[DigestAlgorithm] {
        if self.digest_algorithms.is_empty() {
            &digest::DEFAULT_ALGORITHMS
        } else {
            &self.digest_algorithms
        }
    }
}

/// Whole registrar configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Served domains.
    pub domains: Vec<DomainConfig>,
    /// Lifetime of a digest nonce.
    pub nonce_ttl_secs: u64,
    /// Global cap on live bindings: beyond it new bindings get 503 with
    /// Retry-After; refreshes of existing bindings still work.
    pub max_bindings: usize,
}

/// A users-file error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsersError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl core::fmt::Display for UsersError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for UsersError {}

/// Transport of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

/// The flow a REGISTER arrived on (RFC 5626).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowInfo {
    /// Transport.
    pub proto: Proto,
    /// Local address.
    pub local: SocketAddr,
    /// Peer address.
    pub peer: SocketAddr,
    /// Worker that owns the flow.
    pub worker: u16,
    /// Connection id (0 = UDP).
    pub conn: u64,
}

/// A store operation to persist before the response is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace.
    Put {
        /// Key (aor ++ 0x00 ++ binding id).
        key: Vec<u8>,
        /// Encoded [`Binding`].
        value: Vec<u8>,
    },
    /// Remove.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
}

/// Why an authentication failed (for metrics; never visible on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No such user (answered exactly like a wrong password).
    UnknownUser,
    /// Wrong password.
    WrongPassword,
    /// Authentic but expired nonce (401 stale=true).
    Stale,
    /// Nonce count not higher than before.
    Replayed,
    /// Credentials that do not parse or do not fit the challenge.
    Malformed,
}

impl AuthFailure {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::WrongPassword => "wrong_password",
            AuthFailure::Stale => "stale",
            AuthFailure::Replayed => "replayed",
            AuthFailure::Malformed => "malformed",
        }
    }
}

/// What happened to a REGISTER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportResult {
    /// Bindings added or refreshed (200).
    Registered,
    /// Bindings removed (200).
    Removed,
    /// No Contact: bindings listed (200).
    Fetched,
    /// No credentials: challenged (401).
    Challenged,
    /// Credentials rejected (401 / 403 for a user mismatch).
    AuthFailed(AuthFailure),
    /// Request-URI host not served (403).
    DomainNotServed,
    /// Domain policy is closed (403).
    Closed,
    /// To host differs from the Request-URI domain, or the Authorization
    /// user differs from the To user (403).
    Forbidden,
    /// Reserved or invalid nickname (403 / 400).
    BadNickname,
    /// Nickname owned by another claim (403).
    NicknameInUse,
    /// Expires below the minimum (423).
    IntervalTooBrief,
    /// More than max_contacts bindings (403).
    TooManyContacts,
    /// Global binding cap reached (503).
    Full,
    /// Same Call-ID with a CSeq not higher (500).
    OutOfOrder,
    /// Malformed REGISTER (400).
    BadRequest,
    /// Internal failure building a response (500).
    Internal,
}

impl ReportResult {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportResult::Registered => "registered",
            ReportResult::Removed => "removed",
            ReportResult::Fetched => "fetched",
            ReportResult::Challenged => "challenged",
            ReportResult::AuthFailed(_) => "auth_failed",
            ReportResult::DomainNotServed => "domain_not_served",
            ReportResult::Closed => "closed",
            ReportResult::Forbidden => "forbidden",
            ReportResult::BadNickname => "bad_nickname",
            ReportResult::NicknameInUse => "nickname_in_use",
            ReportResult::IntervalTooBrief => "interval_too_brief",
            ReportResult::TooManyContacts => "too_many_contacts",
            ReportResult::Full => "full",
            ReportResult::OutOfOrder => "out_of_order",
            ReportResult::BadRequest => "bad_request",
            ReportResult::Internal => "internal",
        }
    }
}

/// For metrics and the shield.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Matched domain (its configured name), if any.
    pub domain: Option<String>,
    /// Its policy.
    pub policy: Option<Policy>,
    /// Outcome.
    pub result: ReportResult,
}

/// What the TU does with a REGISTER.
#[derive(Debug)]
pub enum RegisterOutcome {
    /// Answer now.
    Respond {
        /// The answer.
        response: Response,
        /// For metrics.
        report: Report,
    },
    /// The request's own header fields do not allow any response to be
    /// built (for example a malformed lower Via the TU did not validate):
    /// drop it. No state changed.
    Drop {
        /// For metrics.
        report: Report,
    },
    /// Persist `ops` durably, then send `response`.
    Commit {
        /// Store operations.
        ops: Vec<StoreOp>,
        /// The answer.
        response: Response,
        /// For metrics.
        report: Report,
    },
}

/// One registered contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// `user@domain` (lower case, domain as configured).
    pub aor: String,
    /// Contact URI as written.
    pub contact: String,
    /// q in thousandths (default 1000).
    pub q: u16,
    /// Absolute expiry, ms since the UNIX epoch.
    pub expires_at_ms: u64,
    /// Call-ID of the REGISTER that last refreshed it.
    pub call_id: String,
    /// Its CSeq.
    pub cseq: u32,
    /// `+sip.instance`, without quotes.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626).
    pub reg_id: Option<u32>,
    /// Flow it registered on.
    pub flow: FlowInfo,
    /// First registration, ms since the UNIX epoch.
    pub registered_at_ms: u64,
}

/// A stored binding that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "stored binding does not decode: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Live bindings of one domain (metrics gauge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainCount {
    /// Domain name as configured (or as stored, for a domain no longer configured).
    pub domain: String,
    /// Bindings.
    pub bindings: usize,
    /// Distinct addresses of record.
    pub aors: usize,
}
