//! The far leg, built from scratch (RFC 3323 §5, RFC 3325): what the edge
//! writes on a leg and the initial INVITE toward the callee.

use std::net::IpAddr;

use bytes::Bytes;
use sipveil_sip::{HeaderName, Method, Request, RequestBuilder, Uri};

use crate::ids::IdSource;
use crate::policy::{PrivacyPolicy, PrivacyRequest, Refusal};

/// The `From` of an anonymous request (RFC 3323 §4.1.1.3), without tag.
pub const ANONYMOUS_FROM: &str = "\"Anonymous\" <sip:anonymous@anonymous.invalid>";

/// Transport of the edge's side of a leg (written in Via and Contact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeTransport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS.
    Tls,
}

impl EdgeTransport {
    /// The Via transport token.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeTransport::Udp => "UDP",
            EdgeTransport::Tcp => "TCP",
            EdgeTransport::Tls => "TLS",
        }
    }
}

/// How the edge appears on one leg: the only host, port and media address
/// the party on that leg ever sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeAddress {
    /// Host (an IP literal, or a name of the edge) for Via and Contact.
    pub host: String,
    /// Port, when not the transport's default.
    pub port: Option<u16>,
    /// Transport.
    pub transport: EdgeTransport,
    /// Media address written into SDP when no stream is anchored (the
    /// anchor's own address wins otherwise).
    pub media_ip: IpAddr,
}

impl EdgeAddress {
    /// `host[:port]` for Via.
    pub fn sent_by(&self) -> String {
        let host = match self.host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]", self.host),
            Err(_) => self.host.clone(),
        };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// The edge's Contact on this leg: `<sip:host[:port][;transport=x]>`.
    /// No user part: nothing in it is per call or per party.
    pub fn contact(&self) -> Bytes {
        let t = match self.transport {
            EdgeTransport::Udp => "",
            EdgeTransport::Tcp => ";transport=tcp",
            EdgeTransport::Tls => ";transport=tls",
        };
        Bytes::from(format!("<sip:{}{t}>", self.sent_by()))
    }
}

/// Who the caller is, as the edge established it (digest authentication
/// of a local user, or a trusted peer's assertion). Never their contact.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per call setup, moved once; boxing the URI buys nothing"
)]
pub enum CallerIdentity {
    /// Not authenticated: always shown as anonymous.
    Anonymous,
    /// Authenticated: the address of record (e.g. `sip:alice@auth.lab`).
    Authenticated {
        /// The AOR.
        aor: Uri,
    },
}

/// One far-leg destination (a fork): a binding of the callee or a peer route.
#[derive(Clone, Debug)]
pub struct FarTarget<F> {
    /// Request-URI (the binding's contact, or the peer's URI).
    pub uri: Uri,
    /// Pre-loaded route set (outbound proxy / Path of the binding), in order.
    pub route: Vec<Uri>,
    /// The next hop is inside the trust domain (RFC 3325): it may receive
    /// `P-Asserted-Identity`. A registered user's device never is. A target
    /// whose next hop ([`FarTarget::next_hop_host`]) is in
    /// [`PrivacyPolicy::trust_domains`] counts as trusted too.
    pub trusted: bool,
    /// The transport flow to send on (the registration's flow, RFC 5626).
    pub flow: F,
}

impl<F> FarTarget<F> {
    /// The host the request goes to first: the first Route's, else the
    /// Request-URI's.
    pub fn next_hop_host(&self) -> String {
        let uri = self.route.first().unwrap_or(&self.uri);
        String::from_utf8_lossy(uri.host_raw()).into_owned()
    }

    /// Whether the next hop may receive an asserted identity.
    pub fn is_trusted(&self, policy: &PrivacyPolicy) -> bool {
        self.trusted || policy.is_trusted(&self.next_hop_host())
    }
}

/// The initial far-leg INVITE and the dialog identifiers it fixes.
#[derive(Clone, Debug)]
pub struct FarInvite {
    /// The request (top Via with a fresh RFC 3261 branch).
    pub request: Request,
    /// Its Call-ID (new, random).
    pub call_id: Bytes,
    /// The edge's From tag.
    pub local_tag: Bytes,
    /// The From value with tag.
    pub from_value: Bytes,
    /// The To value (no tag).
    pub to_value: Bytes,
    /// Its CSeq number (random start).
    pub cseq: u32,
    /// Whether From is anonymous.
    pub anonymous: bool,
}

/// The checks on a near-leg INVITE before anything is built: `Privacy:
/// critical` that cannot be honoured (500), `Max-Forwards: 0` (483),
/// required option tags that cannot cross (420), missing Contact (400).
pub fn check_invite(policy: &PrivacyPolicy, invite: &Request) -> Result<PrivacyRequest, Refusal> {
    if *invite.method() != Method::Invite {
        return Err(Refusal {
            status: 500,
            reason: "Server Internal Error",
            cause: crate::RefusalCause::NotAnInvite,
        });
    }
    let privacy = PrivacyRequest::of(invite);
    privacy.check_honourable()?;
    if invite.max_forwards() == Some(0) {
        return Err(Refusal::too_many_hops());
    }
    let bad = policy.unsupported_required(invite);
    if !bad.is_empty() {
        return Err(Refusal::bad_extension(bad));
    }
    if invite.from_tag().is_none() {
        return Err(Refusal::malformed("From tag"));
    }
    match invite.contacts().next() {
        Some(Ok(c)) if c.address().is_some() => {}
        _ => return Err(Refusal::malformed("Contact")),
    }
    Ok(privacy)
}

/// Whether the far leg shows the caller as anonymous.
pub fn anonymous_from(
    policy: &PrivacyPolicy,
    privacy: &PrivacyRequest,
    who: &CallerIdentity,
) -> bool {
    policy.force_anonymous
        || privacy.wants_anonymous_from()
        || matches!(who, CallerIdentity::Anonymous)
}

/// Build the far leg's INVITE from scratch. Nothing of `invite` is copied
/// except the allowlisted headers ([`PrivacyPolicy::crossing_headers`]);
/// `body` is the already rewritten body (SDP anchored for this fork) with
/// its Content-Type.
#[expect(
    clippy::too_many_arguments,
    reason = "each input is a distinct part of the new leg"
)]
pub fn build_far_invite<F>(
    policy: &PrivacyPolicy,
    ids: &mut dyn IdSource,
    invite: &Request,
    privacy: &PrivacyRequest,
    who: &CallerIdentity,
    callee: &Uri,
    target: &FarTarget<F>,
    edge: &EdgeAddress,
    body: Option<(Bytes, Bytes)>,
) -> Result<FarInvite, Refusal> {
    let anonymous = anonymous_from(policy, privacy, who);
    let local_tag = ids.tag();
    let from_base = match (anonymous, who) {
        (false, CallerIdentity::Authenticated { aor }) => {
            format!("<{}>", String::from_utf8_lossy(aor.as_bytes()))
        }
        _ => ANONYMOUS_FROM.to_owned(),
    };
    let from_value = Bytes::from(format!("{from_base};tag={local_tag}"));
    let to_value = Bytes::from(format!("<{}>", String::from_utf8_lossy(callee.as_bytes())));
    let call_id = Bytes::from(ids.call_id());
    let cseq = ids.cseq_start();
    let near_mf = invite.max_forwards().unwrap_or(70);
    let mf = near_mf.saturating_sub(1).min(policy.max_forwards);
    let mut b = RequestBuilder::new(Method::Invite, target.uri.clone())
        .via(edge.transport.as_str(), &edge.sent_by(), &ids.branch())
        .max_forwards(mf);
    for r in &target.route {
        b = b.header(
            HeaderName::Route,
            format!("<{}>", String::from_utf8_lossy(r.as_bytes())),
        );
    }
    b = b
        .header(HeaderName::From, from_value.clone())
        .header(HeaderName::To, to_value.clone())
        .header(HeaderName::CallId, call_id.clone())
        .cseq(cseq)
        .header(HeaderName::Contact, edge.contact());
    // RFC 3325 §5: the edge asserts only what it authenticated, and only to
    // a trusted next hop.
    if let CallerIdentity::Authenticated { aor } = who
        && target.is_trusted(policy)
        && (!privacy.id || policy.pai_to_trusted_with_privacy_id)
    {
        b = b.header(
            HeaderName::PAssertedIdentity,
            format!("<{}>", String::from_utf8_lossy(aor.as_bytes())),
        );
        if privacy.id || anonymous {
            b = b.header(HeaderName::Privacy, "id");
        }
    }
    for (n, v) in policy.crossing_headers(invite.headers()) {
        b = b.header(n, v);
    }
    if let Some(s) = &policy.server {
        b = b.header(HeaderName::UserAgent, s.clone());
    }
    if let Some((ct, body)) = body {
        b = b.body(ct, body);
    }
    let request = b
        .build()
        .map_err(|_| Refusal::malformed("far-leg INVITE"))?;
    Ok(FarInvite {
        request,
        call_id,
        local_tag: Bytes::from(local_tag),
        from_value,
        to_value,
        cseq,
        anonymous,
    })
}
