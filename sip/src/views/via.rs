//! Via (RFC 3261 §20.42, RFC 3581 rport).

use bytes::Bytes;

use crate::error::ViewError;
use crate::params::Params;
use crate::text::{all_token, eq_ic, is_token, parse_u32, skip_lws, trim_range};
use crate::uri::{Host, HostSpan, parse_port, scan_host};

/// Via transport (open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP
    Udp,
    /// TCP
    Tcp,
    /// TLS
    Tls,
    /// SCTP
    Sctp,
    /// TLS-SCTP
    TlsSctp,
    /// WS (RFC 7118)
    Ws,
    /// WSS (RFC 7118)
    Wss,
    /// Anything else, as written.
    Other(Bytes),
}

impl Transport {
    /// Classify a transport token (case-insensitive).
    pub fn from_bytes(b: Bytes) -> Transport {
        let known: [(&[u8], Transport); 7] = [
            (b"UDP", Transport::Udp),
            (b"TCP", Transport::Tcp),
            (b"TLS", Transport::Tls),
            (b"SCTP", Transport::Sctp),
            (b"TLS-SCTP", Transport::TlsSctp),
            (b"WS", Transport::Ws),
            (b"WSS", Transport::Wss),
        ];
        for (k, t) in known {
            if eq_ic(&b, k) {
                return t;
            }
        }
        Transport::Other(b)
    }

    /// Canonical upper-case spelling (raw for `Other`).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Transport::Udp => b"UDP",
            Transport::Tcp => b"TCP",
            Transport::Tls => b"TLS",
            Transport::Sctp => b"SCTP",
            Transport::TlsSctp => b"TLS-SCTP",
            Transport::Ws => b"WS",
            Transport::Wss => b"WSS",
            Transport::Other(b) => b,
        }
    }

    /// Reliable (stream) transport.
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Clone, Debug)]
pub struct Via {
    protocol_name: Bytes,
    protocol_version: Bytes,
    transport: Transport,
    host: Host,
    host_raw: Bytes,
    port: Option<u16>,
    sent_by: Bytes,
    params: Params,
}

type Span = core::ops::Range<usize>;

/// Positions of the parts of one Via value (relative to the untrimmed value).
pub(crate) struct Spans {
    name: Span,
    version: Span,
    transport: Span,
    pub(crate) host: HostSpan,
    host_range: Span,
    port: Option<u16>,
    sent_by: Span,
    /// From the first `;` (or the value's end) to the trimmed end.
    pub(crate) params: Span,
}

fn token_end(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < b.len() && is_token(b[j]) {
        j += 1;
    }
    j
}

/// Scans one Via value: the checks of [`Via::parse`] (`strict`) or [`Via::parse_lenient`], and
/// where its parts are, without building a [`Via`].
pub(crate) fn scan(value: &[u8], strict: bool) -> Result<Spans, ViewError> {
    let (vs, ve) = trim_range(value);
    if vs == ve {
        return Err(ViewError::Empty);
    }
    let b = &value[..ve];
    let ne = token_end(b, vs);
    let i = skip_lws(b, ne);
    if ne == vs || b.get(i) != Some(&b'/') {
        return Err(ViewError::BadSentProtocol);
    }
    let ver_s = skip_lws(b, i + 1);
    let ver_e = token_end(b, ver_s);
    let i = skip_lws(b, ver_e);
    if ver_e == ver_s || b.get(i) != Some(&b'/') {
        return Err(ViewError::BadSentProtocol);
    }
    let tr_s = skip_lws(b, i + 1);
    let tr_e = token_end(b, tr_s);
    if tr_e == tr_s {
        return Err(ViewError::BadSentProtocol);
    }
    let hs = skip_lws(b, tr_e);
    if hs == tr_e {
        return Err(ViewError::BadSentProtocol);
    }
    let (host, mut k) = scan_host(b, hs).map_err(|_| ViewError::BadHost)?;
    let host_range = hs..k;
    let mut port = None;
    let k2 = skip_lws(b, k);
    if b.get(k2) == Some(&b':') {
        let k3 = skip_lws(b, k2 + 1);
        let (p, e) = parse_port(b, k3).map_err(|_| ViewError::BadPort)?;
        port = Some(p);
        k = e;
    }
    let sent_by = hs..k;
    let rest = skip_lws(b, k);
    if rest < b.len() && b[rest] != b';' {
        return Err(ViewError::TrailingGarbage);
    }
    let params = &b[rest..];
    if strict {
        // One pass over the parameters: shape of every one, and the values of
        // those with constrained values.
        let ok = crate::params::check_each(params, |name, value| match name.len() {
            3 if eq_ic(name, b"ttl") => value.and_then(parse_u32).is_some_and(|n| n <= 255),
            5 if eq_ic(name, b"rport") => {
                value.is_none_or(|x| parse_u32(x).is_some_and(|n| n <= 65535))
            }
            6 if eq_ic(name, b"branch") => value.is_some_and(all_token),
            _ => true,
        });
        if !ok {
            return Err(ViewError::BadParam);
        }
    }
    Ok(Spans {
        name: vs..ne,
        version: ver_s..ver_e,
        transport: tr_s..tr_e,
        host,
        host_range,
        port,
        sent_by,
        params: rest..ve,
    })
}

impl Via {
    /// Parse one Via value (one element of the comma list).
    pub fn parse(v: &Bytes) -> Result<Via, ViewError> {
        Self::build(v, scan(v, true)?)
    }

    /// Parse only what is needed to address a response (sent-protocol and
    /// sent-by), ignoring malformed parameters.
    pub fn parse_lenient(v: &Bytes) -> Result<Via, ViewError> {
        Self::build(v, scan(v, false)?)
    }

    /// Validate without building: the checks of [`Via::parse`].
    pub fn check(v: &[u8]) -> Result<(), ViewError> {
        scan(v, true).map(|_| ())
    }

    fn build(v: &Bytes, sp: Spans) -> Result<Via, ViewError> {
        let host = match sp.host {
            HostSpan::Domain => Host::Domain(v.slice(sp.host_range.clone())),
            HostSpan::Ipv4(a) => Host::Ipv4(a),
            HostSpan::Ipv6(a) => Host::Ipv6(a),
        };
        Ok(Via {
            protocol_name: v.slice(sp.name),
            protocol_version: v.slice(sp.version),
            transport: Transport::from_bytes(v.slice(sp.transport)),
            host,
            host_raw: v.slice(sp.host_range),
            port: sp.port,
            sent_by: v.slice(sp.sent_by),
            params: Params::new(v.slice(sp.params)),
        })
    }

    /// Protocol name (`SIP`).
    pub fn protocol_name(&self) -> &Bytes {
        &self.protocol_name
    }

    /// Protocol version (`2.0`).
    pub fn protocol_version(&self) -> &Bytes {
        &self.protocol_version
    }

    /// Transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// sent-by host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// sent-by host as written.
    pub fn host_raw(&self) -> &Bytes {
        &self.host_raw
    }

    /// sent-by port, if written.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// sent-by (`host[:port]`) as written.
    pub fn sent_by(&self) -> &Bytes {
        &self.sent_by
    }

    /// All parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// `branch` parameter.
    pub fn branch(&self) -> Option<Bytes> {
        self.params.value("branch")
    }

    /// Whether the branch carries the RFC 3261 magic cookie `z9hG4bK`.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(b"z9hG4bK"))
    }

    /// `received` parameter.
    pub fn received(&self) -> Option<Bytes> {
        self.params.value("received")
    }

    /// Whether `rport` is present (with or without value).
    pub fn has_rport(&self) -> bool {
        self.params.contains("rport")
    }

    /// `rport` value, when present with a port number.
    pub fn rport(&self) -> Option<u16> {
        self.params
            .value("rport")
            .and_then(|v| parse_u32(&v))
            .and_then(|n| u16::try_from(n).ok())
    }

    /// `maddr` parameter.
    pub fn maddr(&self) -> Option<Bytes> {
        self.params.value("maddr")
    }

    /// `ttl` parameter.
    pub fn ttl(&self) -> Option<u8> {
        self.params
            .value("ttl")
            .and_then(|v| parse_u32(&v))
            .and_then(|n| u8::try_from(n).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_and_spaced() {
        let v = Bytes::from_static(
            b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;received=192.0.2.1;branch=390skdjuw",
        );
        let via = Via::parse(&v).expect("valid");
        assert_eq!(via.transport(), &Transport::Udp);
        assert_eq!(via.host_raw(), &b"192.0.2.2"[..]);
        assert_eq!(via.received().as_deref(), Some(&b"192.0.2.1"[..]));
        assert_eq!(via.branch().as_deref(), Some(&b"390skdjuw"[..]));
        assert!(!via.has_rfc3261_branch());
    }

    #[test]
    fn params_and_port() {
        let v = Bytes::from_static(
            b"SIP/2.0/TLS [2001:db8::9]:5061 ; rport=1234;maddr=224.2.0.1;ttl=16;branch=z9hG4bKx;received=2001:db8::10",
        );
        let via = Via::parse(&v).expect("valid");
        assert_eq!(via.transport(), &Transport::Tls);
        assert_eq!(via.port(), Some(5061));
        assert_eq!(via.sent_by(), &b"[2001:db8::9]:5061"[..]);
        assert!(via.has_rport());
        assert_eq!(via.rport(), Some(1234));
        assert_eq!(via.ttl(), Some(16));
        assert_eq!(via.maddr().as_deref(), Some(&b"224.2.0.1"[..]));
        assert!(via.has_rfc3261_branch());
        let u =
            Via::parse(&Bytes::from_static(b"SIP/2.0/UNKNOWN h.example.com;rport")).expect("ok");
        assert!(matches!(u.transport(), Transport::Other(_)));
        assert!(u.has_rport() && u.rport().is_none());
    }

    #[test]
    fn invalid() {
        for s in [
            &b""[..],
            b"SIP/2.0 host",
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP 192.0.2.15;;,;,,",
            b"SIP/2.0/UDP h;ttl=300",
            b"SIP/2.0/UDP h:99999",
            b"SIP/2.0/UDP h;branch",
            b"SIP/2.0/UDP h x",
        ] {
            assert!(
                Via::parse(&Bytes::copy_from_slice(s)).is_err(),
                "{:?}",
                String::from_utf8_lossy(s)
            );
        }
        assert!(Via::parse_lenient(&Bytes::from_static(b"SIP/2.0/UDP 192.0.2.15;;")).is_ok());
    }
}
