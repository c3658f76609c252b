//! The leak detector: does a message about to leave on one leg carry
//! anything of the other party? Two checks, both on raw bytes so nothing a
//! parser might skip (a folded line, a body, a parameter) escapes them:
//!
//! - known identifiers of the other leg (its addresses, host names, tags,
//!   user agent, display name...), matched ASCII case-insensitively;
//! - any literal IP address in a private, shared, link-local, loopback or
//!   unique-local range (RFC 1918, RFC 6598, RFC 3927, RFC 4193, RFC 4291):
//!   the edge itself never writes one (its own addresses are public or, in
//!   the lab, 198.18.0.0/15), so one on the wire means a party's LAN leaked.
//!
//! The daemon counts findings as its "leak detector" metric (expected: 0).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sipveil_sip::sdp::SessionDescription;
use sipveil_sip::{HeaderName, Message};

/// Something that identifies a party and must not reach the other one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identifier {
    /// What it is (for reports): `"caller IP"`, `"callee User-Agent"`...
    pub label: String,
    /// The bytes to look for (ASCII case-insensitive). Empty never matches.
    pub value: Vec<u8>,
}

impl Identifier {
    /// An identifier from a label and a value.
    pub fn new(label: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        Identifier {
            label: label.into(),
            value: value.as_ref().to_vec(),
        }
    }
}

/// What was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// A known identifier (its label).
    Identifier(String),
    /// A literal address in a non-public range.
    PrivateAddress(IpAddr),
}

/// One finding: what and where (byte offset into the scanned message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// Byte offset.
    pub offset: usize,
}

/// Every occurrence of an identifier in `bytes` (overlapping ones too), ASCII
/// case-insensitively. Combine with [`foreign_private_addresses`] for the full
/// check ([`audit`]).
///
/// Cost: the message is lowercased once and each identifier is searched with
/// a SIMD substring finder (`memchr::memmem`) instead of comparing every
/// window of the message case-insensitively with every identifier.
pub fn leak_scan(bytes: &[u8], identifiers: &[Identifier]) -> Vec<Finding> {
    leak_scan_each(bytes, identifiers)
}

/// [`leak_scan`] over any sequence of borrowed identifiers (the daemon filters
/// a call's list per recipient without copying it).
pub fn leak_scan_each<'a>(
    bytes: &[u8],
    identifiers: impl IntoIterator<Item = &'a Identifier>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut hay: Option<Vec<u8>> = None;
    let mut needle = Vec::new();
    for id in identifiers {
        let n = id.value.len();
        if n == 0 || n > bytes.len() {
            continue;
        }
        let hay = hay.get_or_insert_with(|| bytes.to_ascii_lowercase());
        needle.clear();
        needle.extend(id.value.iter().map(u8::to_ascii_lowercase));
        let finder = memchr::memmem::Finder::new(&needle);
        let mut start = 0;
        while let Some(found) = hay.get(start..).and_then(|h| finder.find(h)) {
            let offset = start + found;
            out.push(Finding {
                kind: FindingKind::Identifier(id.label.clone()),
                offset,
            });
            // Overlapping occurrences count too (as a window-by-window scan finds them).
            start = offset + 1;
        }
    }
    out
}

/// Non-public literal addresses in `bytes` other than the receiving
/// party's own (`own`): a NATed client's own contact legitimately comes
/// back to it in the Request-URI and its own Via in responses.
pub fn foreign_private_addresses(bytes: &[u8], own: &[IpAddr]) -> Vec<Finding> {
    private_addresses(bytes)
        .into_iter()
        .filter(|(_, ip)| !own.contains(ip))
        .map(|(offset, ip)| Finding {
            kind: FindingKind::PrivateAddress(ip),
            offset,
        })
        .collect()
}

/// Both checks: identifiers of the other party and non-public addresses
/// that are not the receiver's own. The daemon's leak metric counts
/// messages for which this is non-empty.
pub fn audit(bytes: &[u8], identifiers: &[Identifier], own: &[IpAddr]) -> Vec<Finding> {
    audit_each(bytes, identifiers, own)
}

/// [`audit`] over any sequence of borrowed identifiers.
pub fn audit_each<'a>(
    bytes: &[u8],
    identifiers: impl IntoIterator<Item = &'a Identifier>,
    own: &[IpAddr],
) -> Vec<Finding> {
    let mut out = leak_scan_each(bytes, identifiers);
    out.extend(foreign_private_addresses(bytes, own));
    out
}

/// Whether `ip` is in a range that names a private network rather than a
/// reachable host: RFC 1918, 100.64/10 (CGNAT), 169.254/16, 127/8, 0/8,
/// fc00::/7, fe80::/10, ::1, and IPv4-mapped forms of those.
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_non_public(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_non_public(v4);
            }
            let s = v6.segments()[0];
            v6.is_loopback() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

fn v4_non_public(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || (a == 100 && (64..128).contains(&b))
        || (a == 0 && !v4.is_unspecified())
}

/// Literal IPv4 (dotted quad) and IPv6 addresses in non-public ranges, with
/// their offsets. `0.0.0.0` (SDP hold) is not reported.
pub fn private_addresses(bytes: &[u8]) -> Vec<(usize, IpAddr)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let starts_token = i == 0 || !is_addr_byte(bytes[i - 1]);
        if starts_token && (c.is_ascii_hexdigit() || c == b':') {
            let mut j = i;
            while j < bytes.len() && is_addr_byte(bytes[j]) {
                j += 1;
            }
            let token = &bytes[i..j];
            // Most tokens are words or numbers: only one with a '.' or ':' can hold an address
            // (the cheap test first; the parsers below allocate nothing but are not free).
            if !token.iter().any(|&c| c == b'.' || c == b':') {
                i = j.max(i + 1);
                continue;
            }
            // A dotted quad may end a longer token ("1.2.3.4." or a port after ':').
            if let Some(ip) = parse_token(token) {
                if is_non_public(ip) {
                    out.push((i, ip));
                }
            } else {
                for (k, ip) in embedded_v4(token) {
                    if is_non_public(IpAddr::V4(ip)) {
                        out.push((i + k, IpAddr::V4(ip)));
                    }
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn is_addr_byte(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b'.' || c == b':'
}

fn parse_token(token: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(token).ok()?;
    let s = s.trim_end_matches('.');
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    if (s.contains("::") || s.matches(':').count() >= 2)
        && let Ok(v6) = s.parse::<Ipv6Addr>()
    {
        return Some(IpAddr::V6(v6));
    }
    None
}

/// Dotted quads inside a token that is not itself an address
/// (`192.168.1.2:5060`, `a:10.0.0.1`).
fn embedded_v4(token: &[u8]) -> Vec<(usize, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in token.split(|&c| c == b':') {
        if let Ok(s) = std::str::from_utf8(piece)
            && let Ok(ip) = s.trim_end_matches('.').parse::<Ipv4Addr>()
        {
            out.push((start, ip));
        }
        start += piece.len() + 1;
    }
    out
}

/// `value` without a leading `sip:` / `sips:` (any case).
fn strip_sip_scheme(value: &[u8]) -> &[u8] {
    for scheme in [&b"sips:"[..], &b"sip:"[..]] {
        if value.len() > scheme.len()
            && value
                .get(..scheme.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        {
            return value.get(scheme.len()..).unwrap_or(value);
        }
    }
    value
}

/// Identifiers shorter than this are not collected: a short value (`-`,
/// `0`, a port) would match everywhere.
pub const MIN_IDENTIFIER_LEN: usize = 4;

/// The identifiers a message reveals about its sender, for scanning what
/// the *other* leg receives: Via sent-by hosts and branches, Contact users
/// and hosts, the sender's display name and tag (From in a request, To in
/// a response), Call-ID, User-Agent, Server,
/// SDP origin username / session id / address, `c=` addresses, ICE
/// candidate addresses and credentials, `a=ssrc` CNAMEs, and the values of
/// `Subject`, `Organization` and unknown (`X-`) headers.
///
/// Left out: the Request-URI and To (they name the callee and often the
/// edge), the From URI (the caller's AOR, which the edge may show on
/// purpose), addresses in `exclude` (the edge's own), values shorter than
/// [`MIN_IDENTIFIER_LEN`], and any value contained in one of `shown`
/// (what the edge deliberately shows, e.g. the authenticated AOR; a value
/// with a `sip:` scheme counts as shown when the rest is).
pub fn identifiers_of(msg: &Message, exclude: &[IpAddr], shown: &[&[u8]]) -> Vec<Identifier> {
    let mut out: Vec<Identifier> = Vec::new();
    let mut add = |label: &str, value: &[u8]| {
        let value = value.trim_ascii();
        if value.len() < MIN_IDENTIFIER_LEN {
            return;
        }
        if let Ok(text) = std::str::from_utf8(value)
            && let Ok(ip) = text
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
            && (exclude.contains(&ip) || ip.is_unspecified())
        {
            return;
        }
        // A value that is only something the edge shows on purpose (the callee's address of
        // record, say), with or without its URI scheme, is not an identifier of this party:
        // baresip, for one, uses its AOR `sip:user@domain` as RTCP CNAME.
        let bare = strip_sip_scheme(value);
        if shown.iter().any(|s| {
            s.len() >= bare.len() && s.windows(bare.len()).any(|w| w.eq_ignore_ascii_case(bare))
        }) {
            return;
        }
        if !out.iter().any(|i| i.value.eq_ignore_ascii_case(value)) {
            out.push(Identifier::new(label, value));
        }
    };
    let headers = msg.headers();
    for v in headers.values(&HeaderName::Via) {
        if let Ok(via) = sipveil_sip::Via::parse(&v) {
            add("Via host", via.host_raw());
            if let Some(b) = via.branch() {
                add("Via branch", &b);
            }
        }
    }
    for v in headers.values(&HeaderName::Contact) {
        if let Ok(c) = sipveil_sip::Contact::parse(&v)
            && let Some(a) = c.address()
        {
            if let Some(u) = a.uri().user() {
                add("Contact user", u);
            }
            add("Contact host", a.uri().host_raw());
            if let Some(d) = a.display_name() {
                add("Contact display name", &d);
            }
        }
    }
    // The sender's own name-addr: From in a request, To in a response.
    let own = match msg {
        Message::Request(_) => HeaderName::From,
        Message::Response(_) => HeaderName::To,
    };
    if let Some(v) = headers.get_value(&own)
        && let Ok(f) = sipveil_sip::NameAddr::parse(&v)
    {
        if let Some(d) = f.display_name() {
            add("sender display name", &d);
        }
        if let Some(t) = f.tag() {
            add("sender tag", &t);
        }
    }
    if let Some(v) = headers.get_value(&HeaderName::CallId) {
        add("Call-ID", &v);
    }
    for name in [
        HeaderName::UserAgent,
        HeaderName::Server,
        HeaderName::Subject,
        HeaderName::Organization,
    ] {
        for v in headers.values(&name) {
            add(&name.to_string(), &v);
        }
    }
    for h in headers {
        if let HeaderName::Other(n) = h.name()
            && n.len() > 2
            && n[..2].eq_ignore_ascii_case(b"x-")
        {
            add("X- header", h.value());
        }
    }
    if let Ok(sdp) = SessionDescription::parse(msg.body().clone()) {
        if let Some(o) = sdp.origin() {
            add("SDP origin user", o.username);
            add("SDP session id", o.session_id);
            add("SDP origin address", o.address);
        }
        if let Some(name) = sdp.session_name() {
            add("SDP session name", name);
        }
        let lines = sdp
            .session_lines()
            .iter()
            .chain(sdp.media().flat_map(|m| m.lines().iter()));
        for line in lines {
            match line.kind() {
                b'c' => {
                    if let Some(addr) = line.value().split(|&c| c == b' ').nth(2) {
                        let base = addr.split(|&c| c == b'/').next().unwrap_or(addr);
                        add("SDP connection address", base);
                    }
                }
                b'a' => {
                    let Some(a) = line.attribute() else { continue };
                    let value = a.value.unwrap_or_default();
                    match a.name {
                        b"candidate" => {
                            // foundation component transport priority address port typ ...
                            for (i, tok) in value.split(|&c| c == b' ').enumerate() {
                                if i == 4
                                    || (i > 7 && tok.contains(&b'.'))
                                    || (i > 7 && tok.contains(&b':'))
                                {
                                    add("ICE candidate address", tok);
                                }
                            }
                        }
                        b"ice-ufrag" | b"ice-pwd" => add("ICE credential", value),
                        b"ssrc" => {
                            if let Some(pos) = value.windows(6).position(|w| w == b"cname:") {
                                add("SSRC CNAME", &value[pos + 6..]);
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cname_that_is_only_the_shown_aor_is_not_an_identifier() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 198.18.2.2\r\ns=-\r\nc=IN IP4 198.18.2.2\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 0\r\na=ssrc:7 cname:sip:bob@open.lab\r\n\
                   a=ssrc:8 cname:bob-laptop-42\r\n";
        let text = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.18.2.1;branch=z9hG4bKe1\r\n\
             From: <sip:anonymous@anonymous.invalid>;tag=e1\r\nTo: <sip:bob@open.lab>;tag=b1\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        let msg =
            sipveil_sip::parse_datagram(bytes::Bytes::from(text), &sipveil_sip::Limits::default())
                .expect("parses");
        let ids = identifiers_of(&msg, &[], &[b"bob@open.lab"]);
        let values: Vec<&[u8]> = ids.iter().map(|i| i.value.as_ref()).collect();
        assert!(
            !values
                .iter()
                .any(|v| v.eq_ignore_ascii_case(b"sip:bob@open.lab")),
            "{ids:?}"
        );
        assert!(values.contains(&&b"bob-laptop-42"[..]), "{ids:?}");
    }

    #[test]
    fn finds_identifiers_case_insensitively() {
        let f = leak_scan(
            b"Via: SIP/2.0/UDP AliceBox.lan",
            &[Identifier::new("host", "alicebox.LAN")],
        );
        assert_eq!(
            f,
            vec![Finding {
                kind: FindingKind::Identifier("host".into()),
                offset: 17
            }]
        );
    }

    #[test]
    fn finds_private_addresses_in_any_form() {
        let text =
            b"c=IN IP4 192.168.7.20\r\nVia: SIP/2.0/UDP 10.1.2.3:5060;received=100.64.1.1\r\n\
            a=candidate:1 1 udp 1 fd00::1 4000 typ host\r\nContact: <sip:a@[fe80::2]>\r\n\
            edge 198.18.1.1 and 203.0.113.5, hold 0.0.0.0, version 1.2.3.4.5";
        let found: Vec<IpAddr> = private_addresses(text)
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        let want: Vec<IpAddr> = [
            "192.168.7.20",
            "10.1.2.3",
            "100.64.1.1",
            "fd00::1",
            "fe80::2",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn public_and_lab_addresses_are_not_findings() {
        assert!(
            audit(
                b"c=IN IP4 198.18.2.1\r\no=- 1 1 IN IP6 2001:db8::1\r\n",
                &[],
                &[]
            )
            .is_empty()
        );
    }

    #[test]
    fn own_addresses_are_not_findings() {
        let own: IpAddr = "10.0.0.7".parse().unwrap();
        let msg = b"INVITE sip:bob@10.0.0.7 SIP/2.0\r\nX: 10.0.0.8\r\n";
        let f = audit(msg, &[], &[own]);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].kind,
            FindingKind::PrivateAddress("10.0.0.8".parse().unwrap())
        );
    }

    /// The scan before it used memmem: every window compared case-insensitively with every
    /// identifier. The fast scan must find exactly what this finds.
    fn window_scan(bytes: &[u8], identifiers: &[Identifier]) -> Vec<Finding> {
        let mut out = Vec::new();
        for id in identifiers {
            let n = id.value.len();
            if n == 0 || n > bytes.len() {
                continue;
            }
            for (i, w) in bytes.windows(n).enumerate() {
                if w.eq_ignore_ascii_case(&id.value) {
                    out.push(Finding {
                        kind: FindingKind::Identifier(id.label.clone()),
                        offset: i,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn overlapping_and_repeated_occurrences_are_all_found() {
        let ids = [
            Identifier::new("aa", "AAA"),
            Identifier::new("empty", ""),
            Identifier::new("long", "aaaaaaaaaaaa"),
            Identifier::new("tag", "x-Y"),
        ];
        let hay = b"aAaAa X-y x-yx-Y";
        let found = leak_scan(hay, &ids);
        assert_eq!(found, window_scan(hay, &ids));
        let offsets: Vec<usize> = found.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2, 6, 10, 13]);
    }

    #[test]
    fn tokens_without_dot_or_colon_are_never_addresses() {
        // Hex-looking words and numbers are skipped before parsing; addresses next to them are
        // still found.
        let text = b"deadbeef 10 c0ffee 1234;branch=z9hG4bK10.0.0.1 abc:10.0.0.2";
        let found: Vec<IpAddr> = private_addresses(text)
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        // "z9hG4bK10.0.0.1": the token starts after the non-hex 'K'.
        let want: Vec<IpAddr> = vec![
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        ];
        assert_eq!(found, want);
    }

    proptest::proptest! {
        #[test]
        fn fast_scan_equals_the_window_scan(
            hay in proptest::collection::vec(proptest::sample::select(b"aAbB.:-1 \xc3\xa9".to_vec()), 0..200),
            values in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(b"aAbB.:-1\xc3".to_vec()), 0..6),
                0..5,
            ),
        ) {
            let ids: Vec<Identifier> = values
                .iter()
                .enumerate()
                .map(|(i, v)| Identifier::new(format!("id{i}"), v))
                .collect();
            proptest::prop_assert_eq!(leak_scan(&hay, &ids), window_scan(&hay, &ids));
            proptest::prop_assert_eq!(
                leak_scan_each(&hay, ids.iter().rev()),
                window_scan(&hay, &ids.iter().rev().cloned().collect::<Vec<_>>())
            );
        }
    }
}
