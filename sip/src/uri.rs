//! sip:, sips: and tel: URIs (RFC 3261 §19.1, RFC 3966); other schemes are kept opaque.
//!
//! A [`Uri`] keeps its raw text and slices of it; nothing is unescaped or
//! copied. [`Uri::equivalent`] implements the comparison rules of §19.1.4.

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::Bytes;

use crate::error::UriError;
use crate::params::Params;
use crate::text::{eq_ic, eq_unescaped, escapes_valid};

/// URI scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `sip`
    Sip,
    /// `sips`
    Sips,
    /// `tel`
    Tel,
    /// Anything else, as written.
    Other(Bytes),
}

/// A host: domain name or IP literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A domain name as written (compare case-insensitively).
    Domain(Bytes),
    /// IPv4 dotted quad.
    Ipv4(Ipv4Addr),
    /// IPv6 reference (written in brackets).
    Ipv6(Ipv6Addr),
}

impl Host {
    /// Host equality: domains ASCII case-insensitive, addresses by value.
    pub fn equivalent(&self, other: &Host) -> bool {
        match (self, other) {
            (Host::Domain(a), Host::Domain(b)) => eq_ic(a, b),
            (Host::Ipv4(a), Host::Ipv4(b)) => a == b,
            (Host::Ipv6(a), Host::Ipv6(b)) => a == b,
            _ => false,
        }
    }
}

#[inline]
fn is_host_char(c: u8) -> bool {
    URI_CLASS[c as usize] & 16 != 0
}

/// A host found by [`scan_host`]; a domain is the scanned range.
#[derive(Clone, Copy)]
pub(crate) enum HostSpan {
    Domain,
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

/// Scan a host starting at `b[start]`; returns its kind and the index after it.
pub(crate) fn scan_host(b: &[u8], start: usize) -> Result<(HostSpan, usize), UriError> {
    if b.get(start) == Some(&b'[') {
        let close = crate::text::find_byte(&b[start..], b']')
            .map(|p| p + start)
            .ok_or(UriError::BadHost)?;
        let txt = core::str::from_utf8(&b[start + 1..close]).map_err(|_| UriError::BadHost)?;
        let ip: Ipv6Addr = txt.parse().map_err(|_| UriError::BadHost)?;
        return Ok((HostSpan::Ipv6(ip), close + 1));
    }
    // One pass: extent, digits-and-dots only, and label shape.
    let mut numeric = true;
    let mut label_len = 0usize;
    let mut prev = b'.';
    let mut bad_label = false;
    let mut n = 0usize;
    for &c in &b[start..] {
        if !is_host_char(c) {
            break;
        }
        if c == b'.' {
            bad_label |= label_len == 0 || prev == b'-';
            label_len = 0;
        } else {
            bad_label |= label_len == 0 && c == b'-';
            label_len += 1;
            numeric &= c.is_ascii_digit();
        }
        prev = c;
        n += 1;
    }
    let i = start + n;
    if i == start {
        return Err(UriError::MissingHost);
    }
    if numeric {
        let ip = parse_ipv4(&b[start..i]).ok_or(UriError::BadHost)?;
        return Ok((HostSpan::Ipv4(ip), i));
    }
    // Domain: non-empty labels not starting/ending with '-'; a trailing dot is allowed.
    if bad_label || prev == b'-' || (prev == b'.' && i - start == 1) {
        return Err(UriError::BadHost);
    }
    Ok((HostSpan::Domain, i))
}

/// A dotted-quad IPv4 address, with the acceptance of `Ipv4Addr::from_str`: four decimal octets
/// of one to three digits, each at most 255, no leading zero (`01` is refused). Every host with
/// a numeric first label goes through here (each Via and URI host of a REGISTER): a direct
/// loop instead of the generic text parser.
pub(crate) fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut k = 0usize;
    for part in b.split(|&c| c == b'.') {
        let slot = octets.get_mut(k)?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut v = 0u16;
        for &c in part {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u16::from(c - b'0');
        }
        *slot = u8::try_from(v).ok()?;
        k += 1;
    }
    (k == 4).then_some(Ipv4Addr::from(octets))
}

fn host_from_span(raw: &Bytes, h: HostSpan, start: usize, end: usize) -> Host {
    match h {
        HostSpan::Domain => Host::Domain(raw.slice(start..end)),
        HostSpan::Ipv4(a) => Host::Ipv4(a),
        HostSpan::Ipv6(a) => Host::Ipv6(a),
    }
}

/// Parse `port` digits at `b[i..]`; returns the port and the index after it.
pub(crate) fn parse_port(b: &[u8], i: usize) -> Result<(u16, usize), UriError> {
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    let n = crate::text::parse_u32(&b[i..j]).ok_or(UriError::BadPort)?;
    let p = u16::try_from(n).map_err(|_| UriError::BadPort)?;
    Ok((p, j))
}

const fn uri_table() -> [u8; 256] {
    // bit 0: user, 1: password, 2: param, 3: header, 4: host
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let unres = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
            || b == b'%';
        let user = unres || matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/');
        let pw = unres || matches!(b, b'&' | b'=' | b'+' | b'$' | b',');
        let param = unres
            || matches!(
                b,
                b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$' | b'=' | b';'
            );
        let header = unres
            || matches!(
                b,
                b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' | b'=' | b'&'
            );
        let host = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        t[c] = (user as u8)
            | ((pw as u8) << 1)
            | ((param as u8) << 2)
            | ((header as u8) << 3)
            | ((host as u8) << 4);
        c += 1;
    }
    t
}

static URI_CLASS: [u8; 256] = uri_table();

#[inline]
fn is_user_char(c: u8) -> bool {
    URI_CLASS[c as usize] & 1 != 0
}

#[inline]
fn is_password_char(c: u8) -> bool {
    URI_CLASS[c as usize] & 2 != 0
}

#[inline]
fn is_param_char(c: u8) -> bool {
    URI_CLASS[c as usize] & 4 != 0
}

#[inline]
fn is_header_char(c: u8) -> bool {
    URI_CLASS[c as usize] & 8 != 0
}

/// A parsed URI. Fields are slices of [`Uri::as_bytes`].
#[derive(Clone, Debug)]
pub struct Uri {
    raw: Bytes,
    scheme: Scheme,
    user: Option<Bytes>,
    password: Option<Bytes>,
    host: Option<Host>,
    host_raw: Bytes,
    port: Option<u16>,
    params: Params,
    headers: Option<Bytes>,
}

impl Uri {
    /// Parse a URI (the whole input must be the URI).
    pub fn parse(raw: Bytes) -> Result<Uri, UriError> {
        let (kind, colon) = scan_scheme(&raw)?;
        match kind {
            SchemeKind::Sip => Self::parse_sip(raw, Scheme::Sip, colon + 1),
            SchemeKind::Sips => Self::parse_sip(raw, Scheme::Sips, colon + 1),
            SchemeKind::Tel => Self::parse_tel(raw, colon + 1),
            SchemeKind::Other => {
                scan_opaque(&raw, colon + 1)?;
                Ok(Uri {
                    scheme: Scheme::Other(raw.slice(..colon)),
                    user: None,
                    password: None,
                    host: None,
                    host_raw: raw.slice(colon + 1..),
                    port: None,
                    params: Params::default(),
                    headers: None,
                    raw,
                })
            }
        }
    }

    /// Validate without building (no slices taken): the checks of [`Uri::parse`].
    pub fn check(b: &[u8]) -> Result<(), UriError> {
        let (kind, colon) = scan_scheme(b)?;
        match kind {
            SchemeKind::Sip | SchemeKind::Sips => scan_sip(b, colon + 1).map(|_| ()),
            SchemeKind::Tel => scan_tel(b, colon + 1).map(|_| ()),
            SchemeKind::Other => scan_opaque(b, colon + 1),
        }
    }

    /// Parse from a string (copies it).
    pub fn parse_str(s: &str) -> Result<Uri, UriError> {
        Self::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn parse_sip(raw: Bytes, scheme: Scheme, s: usize) -> Result<Uri, UriError> {
        let sp = scan_sip(&raw, s)?;
        Ok(Uri {
            scheme,
            user: sp.user.map(|r| raw.slice(r)),
            password: sp.password.map(|r| raw.slice(r)),
            host: Some(host_from_span(
                &raw,
                sp.host,
                sp.host_range.start,
                sp.host_range.end,
            )),
            host_raw: raw.slice(sp.host_range),
            port: sp.port,
            params: Params::new(raw.slice(sp.params)),
            headers: sp.headers.map(|r| raw.slice(r)),
            raw,
        })
    }

    fn parse_tel(raw: Bytes, s: usize) -> Result<Uri, UriError> {
        let ps = scan_tel(&raw, s)?;
        Ok(Uri {
            scheme: Scheme::Tel,
            user: Some(raw.slice(s..ps)),
            password: None,
            host: None,
            host_raw: Bytes::new(),
            port: None,
            params: Params::new(raw.slice(ps..)),
            headers: None,
            raw,
        })
    }

    /// The URI as written.
    pub fn as_bytes(&self) -> &Bytes {
        &self.raw
    }

    /// Scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// User part as written (escaped). For tel URIs: the telephone number.
    pub fn user(&self) -> Option<&Bytes> {
        self.user.as_ref()
    }

    /// Password as written.
    pub fn password(&self) -> Option<&Bytes> {
        self.password.as_ref()
    }

    /// Host (sip/sips only).
    pub fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    /// Host as written (brackets included for IPv6); for other schemes the opaque part.
    pub fn host_raw(&self) -> &Bytes {
        &self.host_raw
    }

    /// Explicit port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// URI parameters (`;transport=tcp;lr`).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The `?headers` part without `?`.
    pub fn headers(&self) -> Option<&Bytes> {
        self.headers.as_ref()
    }

    /// The user part with `%HH` escapes decoded (allocates).
    pub fn user_unescaped(&self) -> Option<Vec<u8>> {
        self.user
            .as_ref()
            .map(|u| crate::text::unescape(u).collect())
    }

    /// Comparison per RFC 3261 §19.1.4 (sip/sips), RFC 3966 §4 (tel, simplified:
    /// visual separators ignored), and exact opaque comparison for other schemes.
    ///
    /// `transport` is treated like `user`, `ttl`, `method` and `maddr`: present in
    /// one URI only means different (matching the RFC's examples).
    pub fn equivalent(&self, other: &Uri) -> bool {
        match (&self.scheme, &other.scheme) {
            (Scheme::Sip, Scheme::Sip) | (Scheme::Sips, Scheme::Sips) => self.sip_equivalent(other),
            (Scheme::Tel, Scheme::Tel) => {
                let strip = |u: &Option<Bytes>| -> Vec<u8> {
                    u.as_deref()
                        .unwrap_or(&[])
                        .iter()
                        .filter(|c| !matches!(c, b'-' | b'.' | b'(' | b')'))
                        .map(|c| c.to_ascii_lowercase())
                        .collect()
                };
                strip(&self.user) == strip(&other.user)
                    && params_match_all(&self.params, &other.params)
                    && params_match_all(&other.params, &self.params)
            }
            (Scheme::Other(a), Scheme::Other(b)) => eq_ic(a, b) && self.host_raw == other.host_raw,
            _ => false,
        }
    }

    fn sip_equivalent(&self, o: &Uri) -> bool {
        let opt_eq = |a: &Option<Bytes>, b: &Option<Bytes>| match (a, b) {
            (None, None) => true,
            (Some(x), Some(y)) => eq_unescaped(x, y, false),
            _ => false,
        };
        if !opt_eq(&self.user, &o.user) || !opt_eq(&self.password, &o.password) {
            return false;
        }
        match (&self.host, &o.host) {
            (Some(a), Some(b)) if a.equivalent(b) => {}
            _ => return false,
        }
        if self.port != o.port {
            return false;
        }
        const MUST: [&[u8]; 5] = [b"user", b"ttl", b"method", b"maddr", b"transport"];
        for (a, b) in [(&self.params, &o.params), (&o.params, &self.params)] {
            for (i, p) in a.iter().enumerate() {
                // Only the first occurrence of a name counts (duplicates are ignored).
                if a.iter()
                    .take(i)
                    .any(|x| eq_unescaped(&x.name, &p.name, true))
                {
                    continue;
                }
                match b.iter().find(|q| eq_unescaped(&q.name, &p.name, true)) {
                    Some(q) => {
                        let same = match (&p.value, &q.value) {
                            (None, None) => true,
                            (Some(x), Some(y)) => eq_unescaped(x, y, true),
                            _ => false,
                        };
                        if !same {
                            return false;
                        }
                    }
                    None => {
                        if MUST.iter().any(|m| eq_unescaped(&p.name, m, true)) {
                            return false;
                        }
                    }
                }
            }
        }
        let hs = |h: &Option<Bytes>| -> Vec<Bytes> {
            match h {
                None => Vec::new(),
                Some(h) => {
                    let mut v = Vec::new();
                    let mut s = 0;
                    for (i, &c) in h.iter().enumerate() {
                        if c == b'&' {
                            v.push(h.slice(s..i));
                            s = i + 1;
                        }
                    }
                    v.push(h.slice(s..));
                    v
                }
            }
        };
        let (ha, hb) = (hs(&self.headers), hs(&o.headers));
        if ha.len() != hb.len() {
            return false;
        }
        ha.iter().all(|x| hb.iter().any(|y| header_eq(x, y)))
    }

    /// Build `sip:[user@]host[:port]` (copies; validates).
    pub fn sip(user: Option<&str>, host: &str, port: Option<u16>) -> Result<Uri, UriError> {
        let mut v = Vec::with_capacity(8 + host.len() + user.map_or(0, str::len));
        v.extend_from_slice(b"sip:");
        if let Some(u) = user {
            v.extend_from_slice(u.as_bytes());
            v.push(b'@');
        }
        v.extend_from_slice(host.as_bytes());
        if let Some(p) = port {
            v.push(b':');
            crate::text::push_u64(&mut v, u64::from(p));
        }
        Uri::parse(Bytes::from(v))
    }
}

#[derive(Clone, Copy)]
enum SchemeKind {
    Sip,
    Sips,
    Tel,
    Other,
}

/// The scheme and the index of its colon.
fn scan_scheme(b: &[u8]) -> Result<(SchemeKind, usize), UriError> {
    if b.is_empty() {
        return Err(UriError::Empty);
    }
    let colon = crate::text::find_byte(b, b':').ok_or(UriError::BadScheme)?;
    let sch = &b[..colon];
    let scheme_ok = sch.first().is_some_and(|c| c.is_ascii_alphabetic())
        && sch
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(UriError::BadScheme);
    }
    let kind = if eq_ic(sch, b"sip") {
        SchemeKind::Sip
    } else if eq_ic(sch, b"sips") {
        SchemeKind::Sips
    } else if eq_ic(sch, b"tel") {
        SchemeKind::Tel
    } else {
        SchemeKind::Other
    };
    Ok((kind, colon))
}

/// Opaque part of another scheme: non-empty, no white space, controls, `<>"`.
fn scan_opaque(b: &[u8], s: usize) -> Result<(), UriError> {
    let rest = &b[s..];
    if rest.is_empty() {
        return Err(UriError::Empty);
    }
    if rest
        .iter()
        .any(|&c| c <= b' ' || c == 0x7f || matches!(c, b'<' | b'>' | b'"'))
    {
        return Err(UriError::TrailingGarbage);
    }
    Ok(())
}

/// A tel URI after `tel:`; returns where the parameters start.
fn scan_tel(b: &[u8], s: usize) -> Result<usize, UriError> {
    let mut i = s;
    while i < b.len()
        && (b[i].is_ascii_hexdigit()
            || matches!(b[i], b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#'))
    {
        i += 1;
    }
    let num = &b[s..i];
    let has_digit = num
        .iter()
        .any(|c| c.is_ascii_hexdigit() || *c == b'*' || *c == b'#');
    if !has_digit || num[1..].contains(&b'+') {
        return Err(UriError::BadTelNumber);
    }
    let ps = i;
    while i < b.len() && is_param_char(b[i]) {
        i += 1;
    }
    if i != b.len() {
        return Err(UriError::TrailingGarbage);
    }
    if ps < i && b[ps] != b';' {
        return Err(UriError::BadTelNumber);
    }
    if !escapes_valid(&b[ps..i]) {
        return Err(UriError::BadEscape);
    }
    Ok(ps)
}

type Span = core::ops::Range<usize>;

/// Positions of the parts of a sip/sips URI.
struct SipSpans {
    user: Option<Span>,
    password: Option<Span>,
    host: HostSpan,
    host_range: Span,
    port: Option<u16>,
    params: Span,
    headers: Option<Span>,
}

/// Scan the part of a sip/sips URI after `scheme:` (starting at `s`).
fn scan_sip(b: &[u8], s: usize) -> Result<SipSpans, UriError> {
    let mut user = None;
    let mut password = None;
    let mut host_start = s;
    if let Some(at) = crate::text::find_byte(&b[s..], b'@').map(|p| p + s) {
        let ui = &b[s..at];
        if ui.iter().all(|&c| is_user_char(c) || c == b':') {
            let (u_end, pw) = match crate::text::find_byte(ui, b':') {
                Some(p) => (s + p, Some(s + p + 1..at)),
                None => (at, None),
            };
            if u_end == s {
                return Err(UriError::BadUser);
            }
            if !escapes_valid(&b[s..u_end]) {
                return Err(UriError::BadEscape);
            }
            user = Some(s..u_end);
            if let Some(pr) = pw {
                let pwb = &b[pr.clone()];
                if !pwb.iter().all(|&c| is_password_char(c)) {
                    return Err(UriError::BadPassword);
                }
                if !escapes_valid(pwb) {
                    return Err(UriError::BadEscape);
                }
                password = Some(pr);
            }
            host_start = at + 1;
        } else if ui.iter().any(|&c| c == b'>' || c <= b' ') {
            return Err(UriError::TrailingGarbage);
        } else {
            return Err(UriError::BadUser);
        }
    }
    let (host, mut i) = scan_host(b, host_start)?;
    let host_range = host_start..i;
    let mut port = None;
    if b.get(i) == Some(&b':') {
        let (p, j) = parse_port(b, i + 1)?;
        port = Some(p);
        i = j;
    }
    let params_start = i;
    if b.get(i) == Some(&b';') {
        while i < b.len() && b[i] != b'?' && is_param_char(b[i]) {
            i += 1;
        }
        let pr = &b[params_start..i];
        if !escapes_valid(pr) {
            return Err(UriError::BadEscape);
        }
        // every ;-separated piece needs a non-empty name
        for piece in pr[1..].split(|&c| c == b';') {
            if piece.is_empty() || piece[0] == b'=' {
                return Err(UriError::BadParam);
            }
        }
    }
    let params = params_start..i;
    let mut headers = None;
    if b.get(i) == Some(&b'?') {
        let hs = i + 1;
        i = hs;
        while i < b.len() && is_header_char(b[i]) {
            i += 1;
        }
        if i == hs || !escapes_valid(&b[hs..i]) {
            return Err(UriError::BadHeaders);
        }
        headers = Some(hs..i);
    }
    if i != b.len() {
        return Err(UriError::TrailingGarbage);
    }
    Ok(SipSpans {
        user,
        password,
        host,
        host_range,
        port,
        params,
        headers,
    })
}

fn header_eq(x: &Bytes, y: &Bytes) -> bool {
    let split = |h: &Bytes| -> (Bytes, Bytes) {
        match h.iter().position(|&c| c == b'=') {
            Some(p) => (h.slice(..p), h.slice(p + 1..)),
            None => (h.clone(), Bytes::new()),
        }
    };
    let ((xn, xv), (yn, yv)) = (split(x), split(y));
    eq_unescaped(&xn, &yn, true) && eq_unescaped(&xv, &yv, false)
}

fn params_match_all(a: &Params, b: &Params) -> bool {
    a.iter().all(|p| {
        b.iter().any(|q| {
            eq_ic(&p.name, &q.name)
                && match (&p.value, &q.value) {
                    (None, None) => true,
                    (Some(x), Some(y)) => eq_unescaped(x, y, true),
                    _ => false,
                }
        })
    })
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Uri {
        Uri::parse_str(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn parse_ipv4_accepts_what_std_accepts() {
        let mut cases: Vec<String> = [
            "0.0.0.0",
            "255.255.255.255",
            "198.18.1.2",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.00",
            "1..2.3",
            ".1.2.3",
            "1.2.3.4.",
            "1234.1.1.1",
            "",
            ".",
            "1.2.3.4a",
            "999.999.999.999",
            "0.00.0.0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Every octet spelling from 0 to 999 with up to two zeros in front, in each position.
        for n in 0..1000u32 {
            for o in [format!("{n}"), format!("0{n}"), format!("00{n}")] {
                cases.push(format!("{o}.1.2.3"));
                cases.push(format!("10.{o}.2.3"));
                cases.push(format!("10.1.2.{o}"));
            }
        }
        for c in &cases {
            let ours = parse_ipv4(c.as_bytes());
            let std = c.parse::<Ipv4Addr>().ok();
            assert_eq!(ours, std, "{c:?}");
        }
    }

    #[test]
    fn parts() {
        let x = u("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=y");
        assert_eq!(x.scheme(), &Scheme::Sips);
        assert_eq!(x.user().map(|b| &b[..]), Some(&b"alice"[..]));
        assert_eq!(x.password().map(|b| &b[..]), Some(&b"secret"[..]));
        assert!(matches!(x.host(), Some(Host::Ipv6(_))));
        assert_eq!(x.host_raw(), &b"[2001:db8::1]"[..]);
        assert_eq!(x.port(), Some(5061));
        assert_eq!(x.params().value("transport").as_deref(), Some(&b"tcp"[..]));
        assert!(x.params().contains("lr"));
        assert_eq!(x.headers().map(|b| &b[..]), Some(&b"subject=hi&x=y"[..]));

        let s = u("sip:user;par=u%40example.net@example.com");
        assert_eq!(
            s.user().map(|b| &b[..]),
            Some(&b"user;par=u%40example.net"[..])
        );
        assert!(s.params().is_empty());

        let n = u("sip:null-%00-null@example.com");
        assert_eq!(n.user_unescaped(), Some(b"null-\0-null".to_vec()));

        let t = u("tel:+1-201-555-0123;phone-context=example.com");
        assert_eq!(t.scheme(), &Scheme::Tel);
        assert_eq!(t.user().map(|b| &b[..]), Some(&b"+1-201-555-0123"[..]));
        assert_eq!(
            t.params().value("phone-context").as_deref(),
            Some(&b"example.com"[..])
        );

        let h = u("sip:192.0.2.1");
        assert_eq!(h.host(), Some(&Host::Ipv4(Ipv4Addr::new(192, 0, 2, 1))));
        assert!(u("sip:example.com.").host().is_some());
        let o = u("soap.beep://192.0.2.103:3002");
        assert!(matches!(o.scheme(), Scheme::Other(_)));
    }

    #[test]
    fn errors() {
        for (s, e) in [
            ("", UriError::Empty),
            ("<sip:a@b>", UriError::BadScheme),
            ("sip:", UriError::MissingHost),
            ("sip:a@b:99999", UriError::BadPort),
            ("sip:a@b:", UriError::BadPort),
            ("sip:a@[::1", UriError::BadHost),
            ("sip:a@192.0.2.300", UriError::BadHost),
            ("sip:a%zz@b", UriError::BadEscape),
            ("sip:a@b;;x", UriError::BadParam),
            ("sip:a@b; lr", UriError::BadParam),
            ("sip:a@b;lr x", UriError::TrailingGarbage),
            ("sip:a@b>", UriError::TrailingGarbage),
            ("sip:@b", UriError::BadUser),
            ("sip:a@b?", UriError::BadHeaders),
            ("tel:zz", UriError::BadTelNumber),
        ] {
            assert_eq!(Uri::parse_str(s).err(), Some(e), "{s}");
        }
    }

    #[test]
    fn rfc3261_19_1_4_equivalent() {
        for (a, b) in [
            (
                "sip:%61lice@atlanta.com;transport=TCP",
                "sip:alice@AtLanTa.CoM;Transport=tcp",
            ),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
            (
                "sip:carol@chicago.com;newparam=5",
                "sip:carol@chicago.com;security=on",
            ),
            (
                "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
                "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            ),
            (
                "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
                "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            ),
            ("tel:+1-201-555-0123", "tel:+1.201.555.0123"),
        ] {
            assert!(u(a).equivalent(&u(b)), "{a} == {b}");
            assert!(u(b).equivalent(&u(a)), "{b} == {a}");
        }
    }

    #[test]
    fn rfc3261_19_1_4_not_equivalent() {
        for (a, b) in [
            (
                "SIP:ALICE@AtLanTa.CoM;Transport=udp",
                "sip:alice@AtLanTa.CoM;Transport=UDP",
            ),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
            (
                "sip:bob@biloxi.com",
                "sip:bob@biloxi.com:6000;transport=tcp",
            ),
            (
                "sip:carol@chicago.com",
                "sip:carol@chicago.com?Subject=next%20meeting",
            ),
            ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
            ("sip:a@b", "sips:a@b"),
            ("sip:a@b;maddr=x", "sip:a@b"),
            ("sip:b", "sip:a@b"),
            ("sip:a:pw@b", "sip:a@b"),
        ] {
            assert!(!u(a).equivalent(&u(b)), "{a} != {b}");
            assert!(!u(b).equivalent(&u(a)), "{b} != {a}");
        }
    }
}
