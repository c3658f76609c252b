//! sans-IO anonymous registrar (issue 4): per-domain policy (open /
//! authenticated / closed), bindings, RFC 7616 digest. No sockets, clocks or
//! randomness inside: time (`now_ms`, wall-clock milliseconds since the UNIX
//! epoch) and secrets are parameters.
//!
//! Work in progress: public types only; the bodies follow.

use std::net::SocketAddr;

use sipveil_sip::Response;

mod binding;
mod digest;
mod registrar;
mod users;

pub use registrar::Registrar;
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
