//! Requests, responses and printing.
//!
//! A parsed message keeps the original bytes: printing an unchanged message
//! returns them as-is (a refcount bump, no allocation). Any mutation drops
//! that cache; printing then rebuilds from the start line, the raw header
//! lines (untouched lines stay byte-identical) and the body.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::error::{BuildError, ViewError};
use crate::header_name::HeaderName;
use crate::headers::{Header, Headers};
use crate::method::Method;
use crate::status::StatusCode;
use crate::uri::Uri;
use crate::views::{CSeq, Contact, NameAddr, Via, parse_call_id};

/// Errors from the convenience accessors for the core header fields.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The field is absent.
    Missing(HeaderName),
    /// The field is malformed.
    Invalid(HeaderName, ViewError),
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeaderError::Missing(h) => write!(f, "missing {h} header"),
            HeaderError::Invalid(h, e) => write!(f, "malformed {h} header: {e:?}"),
        }
    }
}

impl std::error::Error for HeaderError {}

macro_rules! common {
    ($t:ty) => {
        impl $t {
            /// Header fields in order.
            pub fn headers(&self) -> &Headers {
                &self.headers
            }

            /// Mutable header fields. Drops the byte-identical print cache.
            pub fn headers_mut(&mut self) -> &mut Headers {
                self.raw = None;
                &mut self.headers
            }

            /// The body (a slice of the original buffer for parsed messages).
            pub fn body(&self) -> &Bytes {
                &self.body
            }

            /// Replace the body; Content-Length is rewritten in place (or
            /// appended). With `content_type` the Content-Type is set too;
            /// an empty body without type removes Content-Type.
            pub fn set_body(
                &mut self,
                content_type: Option<&[u8]>,
                body: Bytes,
            ) -> Result<(), BuildError> {
                let mut n = [0u8; 20];
                let n = crate::text::decimal(body.len() as u64, &mut n);
                let cl = Header::new(HeaderName::ContentLength, n)?;
                let ct = match content_type {
                    Some(ct) => Some(Header::new(HeaderName::ContentType, ct)?),
                    None => None,
                };
                self.raw = None;
                if let Some(ct) = ct {
                    self.headers.set(ct);
                } else if body.is_empty() {
                    self.headers.remove_all(&HeaderName::ContentType);
                }
                self.headers.set(cl);
                self.body = body;
                Ok(())
            }

            /// The original bytes, if the message is unchanged since parsing/building.
            pub fn raw(&self) -> Option<&Bytes> {
                self.raw.as_ref()
            }

            /// The message on the wire. Unchanged messages: the original bytes
            /// (no allocation); otherwise one buffer is built.
            pub fn to_bytes(&self) -> Bytes {
                match &self.raw {
                    Some(r) => r.clone(),
                    None => {
                        let mut v = Vec::with_capacity(self.encoded_len());
                        self.write_to(&mut v);
                        Bytes::from(v)
                    }
                }
            }

            /// Append the wire form to `out`.
            pub fn write_to(&self, out: &mut Vec<u8>) {
                if let Some(r) = &self.raw {
                    out.extend_from_slice(r);
                    return;
                }
                out.extend_from_slice(&self.start_line);
                out.extend_from_slice(b"\r\n");
                self.headers.write_to(out);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.body);
            }

            /// Length of the wire form.
            pub fn encoded_len(&self) -> usize {
                match &self.raw {
                    Some(r) => r.len(),
                    None => {
                        self.start_line.len() + 2 + self.headers.encoded_len() + 2 + self.body.len()
                    }
                }
            }

            /// The start line as written (without CRLF).
            pub fn start_line(&self) -> &Bytes {
                &self.start_line
            }

            /// The full header checks that [`crate::parse_datagram`] leaves
            /// out (see the crate docs, "What the parse checks"): every Via
            /// value and their number, the From/To name-addrs, Max-Forwards,
            /// Route/Record-Route (and their number), Contact and
            /// Content-Type. An error maps to its answer like a parse error
            /// (`400` for a request other than ACK, a drop for a response).
            pub fn validate(&self, limits: &crate::Limits) -> Result<(), crate::ParseError> {
                // A request still holding the bytes it was parsed from is unmodified, and its
                // parse checked the top Via (`check_addressable`): not checked twice.
                let top_via_checked =
                    self.raw.is_some() && !matches!(self.origin(), crate::Origin::Response);
                crate::parse::validate_fields(&self.headers, limits, top_via_checked)
                    .map_err(|k| crate::ParseError::new(k, self.origin()))
            }

            /// Call-ID value.
            pub fn call_id(&self) -> Result<Bytes, HeaderError> {
                let v = self
                    .headers
                    .get_value(&HeaderName::CallId)
                    .ok_or(HeaderError::Missing(HeaderName::CallId))?;
                parse_call_id(&v).map_err(|e| HeaderError::Invalid(HeaderName::CallId, e))
            }

            /// CSeq.
            pub fn cseq(&self) -> Result<CSeq, HeaderError> {
                let v = self
                    .headers
                    .get_value(&HeaderName::CSeq)
                    .ok_or(HeaderError::Missing(HeaderName::CSeq))?;
                CSeq::parse(&v).map_err(|e| HeaderError::Invalid(HeaderName::CSeq, e))
            }

            /// From.
            pub fn from(&self) -> Result<NameAddr, HeaderError> {
                self.name_addr(HeaderName::From)
            }

            /// To.
            pub fn to(&self) -> Result<NameAddr, HeaderError> {
                self.name_addr(HeaderName::To)
            }

            /// From tag.
            pub fn from_tag(&self) -> Option<Bytes> {
                self.headers
                    .get_value(&HeaderName::From)
                    .and_then(|v| NameAddr::tag_of(&v))
            }

            /// To tag.
            pub fn to_tag(&self) -> Option<Bytes> {
                self.headers
                    .get_value(&HeaderName::To)
                    .and_then(|v| NameAddr::tag_of(&v))
            }

            fn name_addr(&self, name: HeaderName) -> Result<NameAddr, HeaderError> {
                match self.headers.get_value(&name) {
                    None => Err(HeaderError::Missing(name)),
                    Some(v) => NameAddr::parse(&v).map_err(|e| HeaderError::Invalid(name, e)),
                }
            }

            /// The topmost Via value.
            pub fn top_via(&self) -> Result<Via, HeaderError> {
                let v = self
                    .headers
                    .values(&HeaderName::Via)
                    .next()
                    .ok_or(HeaderError::Missing(HeaderName::Via))?;
                Via::parse(&v).map_err(|e| HeaderError::Invalid(HeaderName::Via, e))
            }

            /// All Via values, top first (malformed ones yield errors).
            pub fn vias(&self) -> impl Iterator<Item = Result<Via, ViewError>> + '_ {
                self.headers
                    .values(&HeaderName::Via)
                    .map(|v| Via::parse(&v))
            }

            /// Contact values in order (`*` or addresses).
            pub fn contacts(&self) -> impl Iterator<Item = Result<Contact, ViewError>> + '_ {
                self.headers
                    .values(&HeaderName::Contact)
                    .map(|v| Contact::parse(&v))
            }

            /// Expires header value, if present and valid.
            pub fn expires(&self) -> Option<u32> {
                self.headers
                    .get_raw_value(&HeaderName::Expires)
                    .and_then(|v| crate::views::parse_expires(v).ok())
            }

            /// Values of a name-addr list field (Route, Record-Route, Contact,
            /// P-Asserted-Identity...), in order.
            pub fn name_addrs<'a>(
                &'a self,
                name: &'a HeaderName,
            ) -> impl Iterator<Item = Result<NameAddr, ViewError>> + 'a {
                self.headers.values(name).map(|v| NameAddr::parse(&v))
            }
        }
    };
}

/// A SIP request.
#[derive(Clone, Debug)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) start_line: Bytes,
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
    pub(crate) raw: Option<Bytes>,
}

/// A SIP response.
#[derive(Clone, Debug)]
pub struct Response {
    pub(crate) status: StatusCode,
    pub(crate) reason: Bytes,
    pub(crate) start_line: Bytes,
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
    pub(crate) raw: Option<Bytes>,
}

common!(Request);
common!(Response);

impl Request {
    fn origin(&self) -> crate::Origin {
        if self.method == Method::Ack {
            crate::Origin::UnanswerableRequest
        } else {
            crate::Origin::AnswerableRequest
        }
    }

    /// Method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Request-URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Replace the Request-URI (rewrites the start line).
    pub fn set_uri(&mut self, uri: Uri) {
        let mut l = Vec::with_capacity(self.method.as_bytes().len() + uri.as_bytes().len() + 9);
        l.extend_from_slice(self.method.as_bytes());
        l.push(b' ');
        l.extend_from_slice(uri.as_bytes());
        l.extend_from_slice(b" SIP/2.0");
        self.start_line = Bytes::from(l);
        self.uri = uri;
        self.raw = None;
    }

    /// Max-Forwards, if present and valid.
    pub fn max_forwards(&self) -> Option<u8> {
        self.headers
            .get_raw_value(&HeaderName::MaxForwards)
            .and_then(|v| crate::views::parse_max_forwards(v).ok())
    }

    /// Decrement Max-Forwards for forwarding (inserting `Max-Forwards: 69`
    /// when absent, RFC 3261 §16.6 step 3). Returns the new value, or `None`
    /// when it was already 0 (answer 483 Too Many Hops instead of forwarding).
    pub fn decrement_max_forwards(&mut self) -> Option<u8> {
        let next = match self.max_forwards() {
            Some(0) => return None,
            Some(n) => n - 1,
            None => 69,
        };
        let mut v = [0u8; 20];
        let v = crate::text::decimal(u64::from(next), &mut v);
        if let Ok(h) = Header::new(HeaderName::MaxForwards, v) {
            self.raw = None;
            self.headers.set(h);
        }
        Some(next)
    }

    /// Record where the request came from in its top Via (RFC 3261 §18.2.1,
    /// RFC 3581): with `rport` present, fill in `rport=<port>` and always add
    /// `received`; otherwise add `received` when the sent-by host is not the
    /// source address. Other parameters keep their order; an existing
    /// `received`/`rport` is replaced. Returns whether the Via was rewritten.
    pub fn apply_received(&mut self, source: SocketAddr) -> Result<bool, HeaderError> {
        let Some(i) = self.headers.position(&HeaderName::Via) else {
            return Err(HeaderError::Missing(HeaderName::Via));
        };
        let Some(field) = self.headers.at(i) else {
            return Err(HeaderError::Missing(HeaderName::Via));
        };
        let mut values = field.values();
        let Some(top) = values.next() else {
            return Err(HeaderError::Missing(HeaderName::Via));
        };
        let via = crate::views::scan_via(&top, true)
            .map_err(|e| HeaderError::Invalid(HeaderName::Via, e))?;
        let same_host = match (&via.host, source.ip()) {
            (crate::uri::HostSpan::Ipv4(a), IpAddr::V4(b)) => *a == b,
            (crate::uri::HostSpan::Ipv6(a), IpAddr::V6(b)) => *a == b,
            _ => false,
        };
        // The parameters as written (the strict scan has checked their shape).
        let params = top.get(via.params.clone()).unwrap_or_default();
        let mut rport = false;
        crate::params::check_each(params, |name, _| {
            rport |= crate::text::eq_ic(name, b"rport");
            true
        });
        if same_host && !rport {
            return Ok(false);
        }
        // The new field's whole line, written once: `Via: ` + the value without parameters
        // (everything before the first ';') + the other parameters + received/rport + the
        // other values of the field.
        const NAME: &[u8] = b"Via: ";
        let head_end = top.iter().position(|&c| c == b';').unwrap_or(top.len());
        let (hs, he) = crate::text::trim_range(&top[..head_end]);
        let mut v = Vec::with_capacity(NAME.len() + top.len() + 48);
        v.extend_from_slice(NAME);
        v.extend_from_slice(&top[hs..he]);
        crate::params::check_each(params, |name, value| {
            if !crate::text::eq_ic(name, b"received") && !crate::text::eq_ic(name, b"rport") {
                v.push(b';');
                v.extend_from_slice(name);
                if let Some(val) = value {
                    v.push(b'=');
                    v.extend_from_slice(val);
                }
            }
            true
        });
        v.extend_from_slice(b";received=");
        // Written straight into `v` (no intermediate String, no `Display` for IPv4).
        crate::text::push_ip(&mut v, source.ip());
        if rport {
            v.extend_from_slice(b";rport=");
            crate::text::push_u64(&mut v, u64::from(source.port()));
        }
        for r in values {
            v.extend_from_slice(b", ");
            v.extend_from_slice(&r);
        }
        // The checks `Header::new` makes (the head may hold folding, never a bare CR or LF).
        let value = v.get(NAME.len()..).unwrap_or_default();
        if !crate::text::safe_header_value(value) {
            return Err(HeaderError::Invalid(HeaderName::Via, ViewError::BadParam));
        }
        let (value_start, _) = crate::text::trim_range(value);
        let value_start = u32::try_from(NAME.len() + value_start).unwrap_or(u32::MAX);
        self.raw = None;
        self.headers
            .replace_line(i, HeaderName::Via.id(), Bytes::from(v), value_start);
        Ok(true)
    }
}

impl Response {
    fn origin(&self) -> crate::Origin {
        crate::Origin::Response
    }

    /// Status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Reason phrase as written (may be empty, may be UTF-8).
    pub fn reason(&self) -> &Bytes {
        &self.reason
    }
}

/// A request or a response.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "boxing would cost an allocation per parsed message; messages are moved rarely"
)]
pub enum Message {
    /// Request.
    Request(Request),
    /// Response.
    Response(Response),
}

impl Message {
    /// The request, if this is one.
    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    /// The response, if this is one.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        }
    }

    /// Header fields.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => r.headers(),
            Message::Response(r) => r.headers(),
        }
    }

    /// Mutable header fields (drops the print cache).
    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => r.headers_mut(),
            Message::Response(r) => r.headers_mut(),
        }
    }

    /// Body.
    pub fn body(&self) -> &Bytes {
        match self {
            Message::Request(r) => r.body(),
            Message::Response(r) => r.body(),
        }
    }

    /// Wire form (no allocation when unchanged).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }

    /// Append the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Message::Request(r) => r.write_to(out),
            Message::Response(r) => r.write_to(out),
        }
    }

    /// The full header checks (see [`Request::validate`]).
    pub fn validate(&self, limits: &crate::Limits) -> Result<(), crate::ParseError> {
        match self {
            Message::Request(r) => r.validate(limits),
            Message::Response(r) => r.validate(limits),
        }
    }

    /// Call-ID.
    pub fn call_id(&self) -> Result<Bytes, HeaderError> {
        match self {
            Message::Request(r) => r.call_id(),
            Message::Response(r) => r.call_id(),
        }
    }

    /// CSeq.
    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        match self {
            Message::Request(r) => r.cseq(),
            Message::Response(r) => r.cseq(),
        }
    }

    /// Top Via.
    pub fn top_via(&self) -> Result<Via, HeaderError> {
        match self {
            Message::Request(r) => r.top_via(),
            Message::Response(r) => r.top_via(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, parse_datagram};

    fn request(via: &str) -> Request {
        let text = format!(
            "REGISTER sip:open.lab SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@open.lab>;tag=1\r\n\
             To: <sip:a@open.lab>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        match parse_datagram(Bytes::from(text), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("test request does not parse: {other:?}"),
        }
    }

    fn top_field(r: &Request) -> String {
        let v = r.headers().get_value(&HeaderName::Via).unwrap_or_default();
        String::from_utf8_lossy(&v).into_owned()
    }

    #[test]
    fn apply_received_rewrites_the_top_value_only() {
        let src: SocketAddr = "198.18.1.2:5070".parse().expect("addr");
        for (via, changed, expect) in [
            // rport asked for: received and rport filled in, other parameters keep their order.
            (
                "SIP/2.0/UDP 198.18.1.2:5070;rport;branch=z9hG4bK-1",
                true,
                "SIP/2.0/UDP 198.18.1.2:5070;branch=z9hG4bK-1;received=198.18.1.2;rport=5070",
            ),
            // Existing received/rport (any case) replaced; quoted and valueless params kept.
            (
                "SIP/2.0/UDP h.example ; RPORT=1 ;x=\"a;b\";received=1.2.3.4;lr;branch=z9hG4bK2",
                true,
                "SIP/2.0/UDP h.example;x=\"a;b\";lr;branch=z9hG4bK2;received=198.18.1.2;rport=5070",
            ),
            // A name as sent-by, no rport: received only; later values kept after the top.
            (
                "SIP/2.0/UDP client.lab;branch=z9hG4bK3, SIP/2.0/TCP p.lab;branch=z9hG4bK4",
                true,
                "SIP/2.0/UDP client.lab;branch=z9hG4bK3;received=198.18.1.2, SIP/2.0/TCP p.lab;branch=z9hG4bK4",
            ),
            // Same address and no rport: untouched.
            (
                "SIP/2.0/UDP 198.18.1.2;branch=z9hG4bK5",
                false,
                "SIP/2.0/UDP 198.18.1.2;branch=z9hG4bK5",
            ),
            // No parameters at all.
            (
                "SIP/2.0/UDP [2001:db8::1]:5060",
                true,
                "SIP/2.0/UDP [2001:db8::1]:5060;received=198.18.1.2",
            ),
        ] {
            let mut r = request(via);
            assert_eq!(r.apply_received(src), Ok(changed), "{via}");
            assert_eq!(top_field(&r), expect, "{via}");
            assert_eq!(r.raw().is_some(), !changed, "{via}");
            // The rewritten message still parses and validates, with the same Via.
            let again = match parse_datagram(r.to_bytes(), &Limits::default()) {
                Ok(Message::Request(a)) => a,
                other => panic!("rewritten request does not parse: {other:?}"),
            };
            assert_eq!(top_field(&again), expect);
            assert_eq!(r.validate(&Limits::default()), Ok(()));
            let top = r.top_via().expect("top via");
            if changed {
                assert_eq!(top.received().as_deref(), Some(&b"198.18.1.2"[..]));
            }
        }
    }

    #[test]
    fn apply_received_refuses_a_bad_top_via() {
        let mut r = request("SIP/2.0/UDP h.lab;branch=z9hG4bK1");
        r.headers_mut().remove_all(&HeaderName::Via);
        r.headers_mut()
            .push(Header::new(HeaderName::Via, b"SIP/2.0/UDP h.lab;=x").expect("header"));
        let src: SocketAddr = "198.18.1.2:5070".parse().expect("addr");
        assert!(matches!(
            r.apply_received(src),
            Err(HeaderError::Invalid(HeaderName::Via, _))
        ));
    }

    #[test]
    fn validate_still_checks_a_top_via_changed_after_the_parse() {
        let mut r = request("SIP/2.0/UDP h.lab;branch=z9hG4bK1");
        assert_eq!(r.validate(&Limits::default()), Ok(()));
        // Through `headers_mut` the parse's check no longer holds: validate checks it again.
        r.headers_mut().remove_all(&HeaderName::Via);
        r.headers_mut()
            .push(Header::new(HeaderName::Via, b"SIP/2.0/UDP h.lab;branch").expect("header"));
        assert!(r.raw().is_none());
        assert!(r.validate(&Limits::default()).is_err());
        // A later bad Via value is always checked.
        let r = request("SIP/2.0/UDP h.lab;branch=z9hG4bK1, SIP/2.0/UDP ;x");
        assert!(r.raw().is_some());
        assert!(r.validate(&Limits::default()).is_err());
    }
}
