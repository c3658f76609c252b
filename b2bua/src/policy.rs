//! What crosses the edge: the privacy policy (header allowlist, option
//! tags, the edge's product string, trust domains, forced anonymity), the
//! caller's privacy request (RFC 3323 `Privacy`), and the refusals that
//! follow from them.

use bytes::Bytes;
use sipveil_sip::views::{MediaType, parse_token_list};
use sipveil_sip::{HeaderName, Headers, Method, Privacy, Request};

/// The methods the dialog map translates inside a dialog. An `Allow` never
/// crosses: the edge writes this list instead, so a peer is never invited
/// to use a method (REFER, SUBSCRIBE, PRACK, MESSAGE) the edge would refuse,
/// and the other party's method set (a software fingerprint) stays hidden.
pub const TRANSLATED_METHODS: &[Method] = &[
    Method::Invite,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Options,
    Method::Info,
    Method::Update,
    Method::Notify,
];

/// Header fields the edge writes itself on every message and that therefore
/// never pass from one leg to the other, whatever the configured allowlist
/// says. Each names the sender, its network or its software, or is
/// meaningful only on its own leg:
///
/// - `Via`, `Route`, `Record-Route`, `Contact`, `Path`, `Service-Route`:
///   addresses and host names of the sender and its proxies; the edge's own
///   are written per leg.
/// - `Call-ID`, `CSeq`, `From`, `To`, `Max-Forwards`: dialog state, minted
///   per leg (RFC 3323 §5.3 asks a privacy service to replace Call-ID).
/// - `Content-Length`, `Content-Type`: recomputed for the rewritten body.
/// - `User-Agent`, `Server`: replaced by [`PrivacyPolicy::server`].
/// - `P-Asserted-Identity`, `P-Preferred-Identity`, `Privacy`: identity is
///   asserted by the edge from authentication only (RFC 3325 §5).
/// - `Authorization`, `Proxy-Authorization`, `WWW-Authenticate`,
///   `Proxy-Authenticate`, `Authentication-Info`: hop-by-hop credentials.
/// - `Supported`, `Require`, `Unsupported`, `Allow`: rebuilt from the
///   filtered option tags and methods ([`PrivacyPolicy::option_tags`],
///   [`TRANSLATED_METHODS`]).
pub const EDGE_WRITTEN: &[HeaderName] = &[
    HeaderName::Via,
    HeaderName::Route,
    HeaderName::RecordRoute,
    HeaderName::Contact,
    HeaderName::Path,
    HeaderName::ServiceRoute,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::From,
    HeaderName::To,
    HeaderName::MaxForwards,
    HeaderName::ContentLength,
    HeaderName::ContentType,
    HeaderName::UserAgent,
    HeaderName::Server,
    HeaderName::PAssertedIdentity,
    HeaderName::PPreferredIdentity,
    HeaderName::Privacy,
    HeaderName::Authorization,
    HeaderName::ProxyAuthorization,
    HeaderName::WwwAuthenticate,
    HeaderName::ProxyAuthenticate,
    HeaderName::AuthenticationInfo,
    HeaderName::Supported,
    HeaderName::Require,
    HeaderName::Unsupported,
    HeaderName::Allow,
];

/// The default pass-through allowlist. Every entry is a token, a number or
/// a list of registered names that describes the *session*, not a party:
///
/// - `Accept`: body types the peer takes (needed for 415 negotiation).
/// - `Session-Expires`, `Min-SE`: RFC 4028 session timers work end to end
///   (refreshes are re-INVITE/UPDATE, which the map translates; the
///   `refresher=uac|uas` roles are the same on both legs because the edge is
///   the UAC on the far leg exactly when the caller is on the near one).
/// - `Expires`: how long an INVITE may ring.
/// - `Event`, `Subscription-State`: make an in-dialog NOTIFY meaningful.
/// - `Priority`: one of four tokens (RFC 3261 §20.26).
/// - `Info-Package`, `Recv-Info`: RFC 6086 INFO packages (DTMF).
/// - `RSeq` / `RAck` are *not* here: reliable provisionals are not offered
///   across the edge (see [`PrivacyPolicy::option_tags`]).
///
/// Deliberately absent: `Subject`, `Warning`, `Organization`, `Reason`
/// and `Retry-After` (free text), `Date` and `Timestamp` (clock skew
/// fingerprints a device), `Accept-Language` (locale), `Call-Info`,
/// `Alert-Info`, `Error-Info`, `History-Info`, `Diversion`,
/// `Remote-Party-ID`, `Referred-By`, `Replaces` (URIs of parties or
/// dialogs), `P-*` network headers, and every unknown (`X-...`) header.
pub fn default_pass_headers() -> Vec<HeaderName> {
    vec![
        HeaderName::Accept,
        HeaderName::SessionExpires,
        HeaderName::MinSe,
        HeaderName::Expires,
        HeaderName::Event,
        HeaderName::SubscriptionState,
        HeaderName::Priority,
        HeaderName::from_static("Info-Package"),
        HeaderName::from_static("Recv-Info"),
    ]
}

/// SDP handling knobs (see [`crate::media`] for the model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdpPolicy {
    /// Pass `a=crypto` (SDES-SRTP keys, RFC 4568) so SRTP works end to end
    /// through the relay, which forwards SRTP without decrypting. The keys
    /// are per-session random, not identifiers; they are visible to the edge,
    /// so signalling should use TLS. Default: `true`.
    pub sdes_srtp: bool,
    /// Pass `a=fingerprint`, `a=setup` and `a=tls-id` (DTLS-SRTP, RFC 5763).
    /// The fingerprint is the hash of the endpoint's certificate, which many
    /// clients keep for months: a stable device identifier that would let the
    /// callee link calls. Default: `false` (DTLS-SRTP offers then fail
    /// negotiation instead of leaking).
    pub dtls_fingerprint: bool,
    /// Further attribute names to pass (exact, case-insensitive).
    pub extra_attributes: Vec<String>,
}

impl Default for SdpPolicy {
    fn default() -> Self {
        SdpPolicy {
            sdes_srtp: true,
            dtls_fingerprint: false,
            extra_attributes: Vec::new(),
        }
    }
}

/// How the edge treats what crosses it. `Default` is the documented
/// conservative policy.
#[derive(Clone, Debug)]
pub struct PrivacyPolicy {
    /// Header fields copied from one leg to the other (names compare
    /// case-insensitively, compact forms included). Entries in
    /// [`EDGE_WRITTEN`] are ignored. Default: [`default_pass_headers`].
    pub pass_headers: Vec<HeaderName>,
    /// Option tags that may cross in `Supported` / `Require` /
    /// `Unsupported`. Default `["timer"]`: session timers work end to end;
    /// `100rel` does not (RAck names the far leg's CSeq and RSeq spaces,
    /// which would need per-fork translation), nor `replaces`, `gruu`,
    /// `outbound`, `path` (they name dialogs or hop-specific state). A
    /// request that *requires* another tag is answered 420 (RFC 3261
    /// §8.2.2.3, the edge is the UAS of the near leg).
    pub option_tags: Vec<String>,
    /// The `User-Agent` (requests) / `Server` (responses) value the edge
    /// writes; `None` writes neither. Default `Some("sipveil")`.
    pub server: Option<String>,
    /// Hosts of next hops inside the trust domain (RFC 3325 Spec(T)): a
    /// far-leg INVITE carries `P-Asserted-Identity` only when its next hop
    /// (first Route, else Request-URI host) is listed here or the
    /// [`crate::FarTarget`] is marked trusted. Compared as written,
    /// case-insensitively (no DNS).
    pub trust_domains: Vec<String>,
    /// The domain forces anonymity: `From` is anonymous whatever the caller asked.
    pub force_anonymous: bool,
    /// With `Privacy: id`, still send `P-Asserted-Identity` (with
    /// `Privacy: id`) to a *trusted* next hop, as RFC 3325 §9.1 allows, so
    /// the trust domain's own boundary strips it. Default `false`: the
    /// identity is removed here, which is stricter than the RFC.
    pub pai_to_trusted_with_privacy_id: bool,
    /// `Max-Forwards` of requests the edge starts (RFC 3261 recommends 70).
    /// The far leg's initial INVITE carries `min(near - 1, this)` so a loop
    /// through the edge still ends (it reveals only how many hops below 70
    /// the caller was).
    pub max_forwards: u8,
    /// Body types besides SDP that pass unchanged (type, subtype). Default:
    /// `application/dtmf-relay` and `application/dtmf` (INFO DTMF; a digit
    /// and a duration). Any other body is dropped.
    pub pass_bodies: Vec<(String, String)>,
    /// SDP handling.
    pub sdp: SdpPolicy,
}

impl Default for PrivacyPolicy {
    fn default() -> Self {
        PrivacyPolicy {
            pass_headers: default_pass_headers(),
            option_tags: vec!["timer".to_owned()],
            server: Some("sipveil".to_owned()),
            trust_domains: Vec::new(),
            force_anonymous: false,
            pai_to_trusted_with_privacy_id: false,
            max_forwards: 70,
            pass_bodies: vec![
                ("application".to_owned(), "dtmf-relay".to_owned()),
                ("application".to_owned(), "dtmf".to_owned()),
            ],
            sdp: SdpPolicy::default(),
        }
    }
}

impl PrivacyPolicy {
    /// Whether `host` is a trust-domain next hop (case-insensitive).
    pub fn is_trusted(&self, host: &str) -> bool {
        self.trust_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(host))
    }

    fn passes(&self, name: &HeaderName) -> bool {
        !EDGE_WRITTEN.contains(name) && self.pass_headers.contains(name)
    }

    fn tag_allowed(&self, tag: &[u8]) -> bool {
        self.option_tags
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(tag))
    }

    /// The header fields of `src` that may cross, rebuilt: the allowlisted
    /// fields as written, then `Supported` / `Require` / `Unsupported`
    /// filtered to [`Self::option_tags`] (dropped when nothing is left), and
    /// `Allow` replaced by the edge's own [`TRANSLATED_METHODS`].
    pub fn crossing_headers(&self, src: &Headers) -> Vec<(HeaderName, Bytes)> {
        let mut out = Vec::new();
        for h in src {
            if self.passes(h.name()) {
                out.push((h.name().clone(), h.value().clone()));
            }
        }
        for name in [
            HeaderName::Supported,
            HeaderName::Require,
            HeaderName::Unsupported,
        ] {
            let mut tags: Vec<Bytes> = Vec::new();
            for v in src.values(&name) {
                if let Ok(list) = parse_token_list(&v) {
                    for t in list {
                        if self.tag_allowed(&t) && !tags.iter().any(|x| x.eq_ignore_ascii_case(&t))
                        {
                            tags.push(t);
                        }
                    }
                }
            }
            if !tags.is_empty() {
                out.push((name, join(&tags)));
            }
        }
        // The peer's method list is a software fingerprint; the edge
        // announces its own (what it translates on every leg) instead. A
        // method the far party lacks is answered 405/501 there and that
        // answer crosses back.
        if src.get(&HeaderName::Allow).is_some() {
            out.push((HeaderName::Allow, Self::allow_value()));
        }
        out
    }

    /// Whether a non-SDP body of this Content-Type may cross unchanged.
    pub fn body_passes(&self, content_type: &Bytes) -> bool {
        MediaType::parse(content_type).is_ok_and(|mt| {
            self.pass_bodies
                .iter()
                .any(|(t, s)| mt.is(t.as_str(), s.as_str()))
        })
    }

    /// The `Allow` value the edge writes itself (405/501, OPTIONS).
    pub fn allow_value() -> Bytes {
        let names: Vec<Bytes> = TRANSLATED_METHODS
            .iter()
            .map(|m| Bytes::copy_from_slice(m.as_bytes()))
            .collect();
        join(&names)
    }

    /// Option tags a request requires that the edge cannot pass (for 420).
    pub fn unsupported_required(&self, req: &Request) -> Vec<Bytes> {
        let mut out = Vec::new();
        if matches!(req.method(), Method::Ack | Method::Cancel) {
            return out;
        }
        for name in [HeaderName::Require, HeaderName::ProxyRequire] {
            for v in req.headers().values(&name) {
                match parse_token_list(&v) {
                    Ok(list) => {
                        out.extend(list.into_iter().filter(|t| !self.tag_allowed(t)));
                    }
                    Err(_) => out.push(v),
                }
            }
        }
        out
    }
}

fn join(items: &[Bytes]) -> Bytes {
    let mut v = Vec::new();
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(t);
    }
    Bytes::from(v)
}

/// The caller's RFC 3323 / 3325 privacy request, read from its `Privacy`
/// header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrivacyRequest {
    /// `header`: hide headers that reveal the sender's network (always
    /// done by the edge anyway).
    pub header: bool,
    /// `session`: anonymise the media (always done: media is anchored).
    pub session: bool,
    /// `user`: user-level privacy: anonymous `From`.
    pub user: bool,
    /// `id` (RFC 3325): no network-asserted identity.
    pub id: bool,
    /// `history` (RFC 7044): History-Info never crosses, so always honoured.
    pub history: bool,
    /// `critical`: refuse the call rather than weaken any of the above.
    pub critical: bool,
    /// `none`: no privacy asked.
    pub none: bool,
    /// The header was present but did not parse; treated as asking for
    /// everything (fail closed).
    pub malformed: bool,
    /// priv-values the edge does not know (cannot promise to honour).
    pub unknown: Vec<Bytes>,
}

impl PrivacyRequest {
    /// Read every `Privacy` field of `req`.
    pub fn of(req: &Request) -> PrivacyRequest {
        let mut p = PrivacyRequest::default();
        for v in req.headers().values(&HeaderName::Privacy) {
            match Privacy::parse(&v) {
                Ok(priv_) => {
                    for value in priv_.values() {
                        match value.to_ascii_lowercase().as_slice() {
                            b"header" => p.header = true,
                            b"session" => p.session = true,
                            b"user" => p.user = true,
                            b"id" => p.id = true,
                            b"history" => p.history = true,
                            b"critical" => p.critical = true,
                            b"none" => p.none = true,
                            _ => p.unknown.push(value),
                        }
                    }
                }
                Err(_) => p.malformed = true,
            }
        }
        p
    }

    /// Whether the `From` must be anonymous: the caller asked for `id`,
    /// `header` or `user` privacy (or sent an unreadable `Privacy`).
    pub fn wants_anonymous_from(&self) -> bool {
        self.id || self.header || self.user || self.malformed
    }

    /// `Err` when `critical` was asked together with something the edge
    /// cannot promise: a priv-value it does not know (RFC 3323 §4.2: with
    /// `critical`, a request whose privacy cannot be provided is rejected,
    /// not forwarded with less privacy).
    pub fn check_honourable(&self) -> Result<(), Refusal> {
        if self.critical && !self.unknown.is_empty() {
            return Err(Refusal::privacy_unavailable(self.unknown.clone()));
        }
        Ok(())
    }
}

/// Why the edge answers a request itself instead of bridging it. Each cause
/// maps to one status code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCause {
    /// `Privacy: critical` with a priv-value the edge cannot honour.
    PrivacyUnavailable(Vec<Bytes>),
    /// `Max-Forwards: 0` (483).
    TooManyHops,
    /// `Require` names option tags that cannot cross (420).
    BadExtension(Vec<Bytes>),
    /// A header the edge needs is missing or malformed (400).
    Malformed(&'static str),
    /// The SDP could not be anchored (488 for bad SDP, 500 for relay errors).
    Media(crate::media::MediaError),
    /// Not a request the edge bridges this way (e.g. not an INVITE).
    NotAnInvite,
}

/// A refusal: the status to answer with and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Status code.
    pub status: u16,
    /// Reason phrase the edge writes.
    pub reason: &'static str,
    /// The cause.
    pub cause: RefusalCause,
}

impl Refusal {
    /// 500 "Privacy Unavailable". RFC 3323 (privacy service behaviour,
    /// §5) has a privacy service reject a `critical` request whose privacy
    /// it cannot provide rather than forward it with less; our reading is
    /// that it names 500 with this reason phrase (the exact wording was not
    /// re-checked against the RFC text while writing this). A 4xx would be
    /// wrong anyway: the request is fine, the service is what is missing.
    pub fn privacy_unavailable(values: Vec<Bytes>) -> Refusal {
        Refusal {
            status: 500,
            reason: "Privacy Unavailable",
            cause: RefusalCause::PrivacyUnavailable(values),
        }
    }

    pub(crate) fn too_many_hops() -> Refusal {
        Refusal {
            status: 483,
            reason: "Too Many Hops",
            cause: RefusalCause::TooManyHops,
        }
    }

    pub(crate) fn bad_extension(tags: Vec<Bytes>) -> Refusal {
        Refusal {
            status: 420,
            reason: "Bad Extension",
            cause: RefusalCause::BadExtension(tags),
        }
    }

    pub(crate) fn malformed(what: &'static str) -> Refusal {
        Refusal {
            status: 400,
            reason: "Bad Request",
            cause: RefusalCause::Malformed(what),
        }
    }

    pub(crate) fn media(e: crate::media::MediaError) -> Refusal {
        let (status, reason) = if e.is_offer_fault() {
            (488, "Not Acceptable Here")
        } else {
            (500, "Server Internal Error")
        };
        Refusal {
            status,
            reason,
            cause: RefusalCause::Media(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipveil_sip::{Limits, Message, parse_datagram};

    fn req(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:bob@open.lab SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKx\r\n\
             From: <sip:a@b>;tag=1\r\nTo: <sip:bob@open.lab>\r\nCall-ID: c@host\r\n\
             CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse_datagram(Bytes::from(text), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn privacy_values_are_read() {
        let p = PrivacyRequest::of(&req("Privacy: id;critical\r\n"));
        assert!(p.id && p.critical && p.wants_anonymous_from());
        assert!(p.check_honourable().is_ok());
        let p = PrivacyRequest::of(&req("Privacy: none\r\n"));
        assert!(p.none && !p.wants_anonymous_from());
        let p = PrivacyRequest::of(&req("Privacy: session\r\n"));
        assert!(!p.wants_anonymous_from());
    }

    #[test]
    fn critical_with_unknown_value_is_refused_with_500() {
        let p = PrivacyRequest::of(&req("Privacy: user;critical;teleport\r\n"));
        let r = p.check_honourable().unwrap_err();
        assert_eq!((r.status, r.reason), (500, "Privacy Unavailable"));
        // Without critical the unknown value is ignored, the rest honoured.
        let p = PrivacyRequest::of(&req("Privacy: user;teleport\r\n"));
        assert!(p.check_honourable().is_ok() && p.wants_anonymous_from());
    }

    #[test]
    fn crossing_headers_filter_tags_methods_and_unknowns() {
        let r = req("Supported: 100rel, timer, replaces\r\nRequire: timer\r\n\
             Allow: INVITE, REFER, BYE, SUBSCRIBE\r\nSession-Expires: 1800;refresher=uac\r\n\
             X-Secret: 10.0.0.9\r\nSubject: hi from 10.0.0.9\r\nUser-Agent: Phone/1\r\n");
        let p = PrivacyPolicy::default();
        let h = p.crossing_headers(r.headers());
        let names: Vec<String> = h
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
            .collect();
        assert_eq!(
            names,
            vec![
                "Session-Expires: 1800;refresher=uac",
                "Supported: timer",
                "Require: timer",
                "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY"
            ]
        );
    }

    #[test]
    fn edge_written_headers_never_pass_even_if_configured() {
        let r = req("Contact: <sip:a@10.0.0.9>\r\nX-Ok: fine\r\n");
        let p = PrivacyPolicy {
            pass_headers: vec![
                HeaderName::Contact,
                HeaderName::Via,
                HeaderName::from_static("X-Ok"),
            ],
            ..PrivacyPolicy::default()
        };
        let h = p.crossing_headers(r.headers());
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].1.as_ref(), b"fine");
    }

    #[test]
    fn unsupported_required_tags() {
        let p = PrivacyPolicy::default();
        assert_eq!(
            p.unsupported_required(&req("Require: 100rel, timer\r\n")),
            vec![Bytes::from_static(b"100rel")]
        );
        assert!(
            p.unsupported_required(&req("Require: timer\r\n"))
                .is_empty()
        );
    }
}
