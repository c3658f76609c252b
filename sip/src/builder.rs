//! Building requests and responses from scratch, and the messages derived
//! from a request (responses, CANCEL, ACK for non-2xx).
//!
//! A builder assembles the wire form in one buffer, always computes
//! Content-Length itself (any given Content-Length is discarded), rejects
//! header values containing CR/LF, and re-parses the result so the built
//! message is exactly what a peer will see (its print is the built buffer).

use bytes::Bytes;

use crate::error::BuildError;
use crate::header_name::HeaderName;
use crate::limits::Limits;
use crate::message::{Message, Request, Response};
use crate::method::Method;
use crate::parse::parse_message;
use crate::status::StatusCode;
use crate::text::{all_token, push_u64, safe_header_value};
use crate::uri::Uri;

#[derive(Clone, Debug, Default)]
struct Parts {
    headers: Vec<(HeaderName, Bytes)>,
    body: Bytes,
    content_type: Option<Bytes>,
}

impl Parts {
    fn add(&mut self, name: HeaderName, value: Bytes) {
        self.headers.push((name, value));
    }

    fn check(&self) -> Result<(), BuildError> {
        for (n, v) in &self.headers {
            if !all_token(n.as_bytes()) {
                return Err(BuildError::InvalidHeaderName);
            }
            if !safe_header_value(v) {
                return Err(BuildError::InvalidHeaderValue(n.clone()));
            }
        }
        if let Some(ct) = &self.content_type
            && !safe_header_value(ct)
        {
            return Err(BuildError::InvalidHeaderValue(HeaderName::ContentType));
        }
        Ok(())
    }

    fn len_hint(&self) -> usize {
        self.headers
            .iter()
            .map(|(n, v)| n.as_bytes().len() + v.len() + 4)
            .sum::<usize>()
            + self.body.len()
            + 64
    }

    fn write(&self, out: &mut Vec<u8>) {
        for (n, v) in &self.headers {
            if matches!(n, HeaderName::ContentLength)
                || (self.content_type.is_some() && matches!(n, HeaderName::ContentType))
            {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(ct) = &self.content_type {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(ct);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        push_u64(out, self.body.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
    }
}

/// Builds a request. Header order is the order of calls.
#[derive(Clone, Debug)]
pub struct RequestBuilder {
    method: Method,
    uri: Uri,
    parts: Parts,
}

impl RequestBuilder {
    /// Start a request.
    pub fn new(method: Method, uri: Uri) -> Self {
        RequestBuilder {
            method,
            uri,
            parts: Parts::default(),
        }
    }

    /// Append a header field (value as it should appear after `Name: `).
    pub fn header(mut self, name: HeaderName, value: impl Into<Bytes>) -> Self {
        self.parts.add(name, value.into());
        self
    }

    /// Append `Via: SIP/2.0/<transport> <sent_by>;branch=<branch>;rport`.
    pub fn via(self, transport: &str, sent_by: &str, branch: &str) -> Self {
        let mut v = Vec::with_capacity(32 + sent_by.len() + branch.len());
        v.extend_from_slice(b"SIP/2.0/");
        v.extend_from_slice(transport.as_bytes());
        v.push(b' ');
        v.extend_from_slice(sent_by.as_bytes());
        v.extend_from_slice(b";branch=");
        v.extend_from_slice(branch.as_bytes());
        v.extend_from_slice(b";rport");
        self.header(HeaderName::Via, v)
    }

    /// Append `CSeq: <seq> <method of this request>`.
    pub fn cseq(self, seq: u32) -> Self {
        let mut v = Vec::with_capacity(24);
        push_u64(&mut v, u64::from(seq));
        v.push(b' ');
        v.extend_from_slice(self.method.as_bytes());
        self.header(HeaderName::CSeq, v)
    }

    /// Append `Max-Forwards`.
    pub fn max_forwards(self, n: u8) -> Self {
        let mut v = Vec::with_capacity(3);
        push_u64(&mut v, u64::from(n));
        self.header(HeaderName::MaxForwards, v)
    }

    /// Set the body and its Content-Type (Content-Length is computed).
    pub fn body(mut self, content_type: impl Into<Bytes>, body: Bytes) -> Self {
        self.parts.content_type = Some(content_type.into());
        self.parts.body = body;
        self
    }

    /// Assemble and validate. Fails on CR/LF in values or if the result does
    /// not parse (e.g. a mandatory field is missing).
    pub fn build(self) -> Result<Request, BuildError> {
        self.parts.check()?;
        let mut out = Vec::with_capacity(self.parts.len_hint() + self.uri.as_bytes().len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.uri.as_bytes());
        out.extend_from_slice(b" SIP/2.0\r\n");
        self.parts.write(&mut out);
        match parse_message(Bytes::from(out), &Limits::UNLIMITED, false) {
            Ok(Message::Request(r)) => match r.validate(&Limits::UNLIMITED) {
                Ok(()) => Ok(r),
                Err(e) => Err(BuildError::Parse(e.kind().clone())),
            },
            Ok(Message::Response(_)) => Err(BuildError::Parse(
                crate::error::ParseErrorKind::BadRequestLine,
            )),
            Err(e) => Err(BuildError::Parse(e.kind().clone())),
        }
    }
}

/// Builds a response.
#[derive(Clone, Debug)]
pub struct ResponseBuilder {
    status: StatusCode,
    reason: Bytes,
    parts: Parts,
    to_tag: Option<Bytes>,
}

impl ResponseBuilder {
    /// Start a response with the default reason phrase.
    pub fn new(status: StatusCode) -> Self {
        ResponseBuilder {
            status,
            reason: Bytes::from_static(status.default_reason().as_bytes()),
            parts: Parts::default(),
            to_tag: None,
        }
    }

    /// Start a response to `req` (RFC 3261 §8.2.6.2): copies every Via (in
    /// order), From, To, Call-ID and CSeq as written, and Timestamp for 100.
    pub fn for_request(req: &Request, status: StatusCode) -> Self {
        let mut b = Self::new(status);
        for h in req.headers() {
            let copy = match h.name() {
                HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq => true,
                HeaderName::Timestamp => status == StatusCode::TRYING,
                _ => false,
            };
            if copy {
                b.parts.add(h.name().clone(), h.value().clone());
            }
        }
        b
    }

    /// Copy the request's Record-Route fields in order (RFC 3261 §12.1.1, for
    /// 101-299 responses to dialog-creating requests).
    pub fn record_route_from(mut self, req: &Request) -> Self {
        for h in req.headers().get_all(&HeaderName::RecordRoute) {
            self.parts.add(HeaderName::RecordRoute, h.value().clone());
        }
        self
    }

    /// Reason phrase (default: the status code's standard phrase).
    pub fn reason(mut self, reason: impl Into<Bytes>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Add `;tag=<tag>` to the To field unless it already has a tag.
    pub fn to_tag(mut self, tag: impl Into<Bytes>) -> Self {
        self.to_tag = Some(tag.into());
        self
    }

    /// Append a header field.
    pub fn header(mut self, name: HeaderName, value: impl Into<Bytes>) -> Self {
        self.parts.add(name, value.into());
        self
    }

    /// Set the body and its Content-Type.
    pub fn body(mut self, content_type: impl Into<Bytes>, body: Bytes) -> Self {
        self.parts.content_type = Some(content_type.into());
        self.parts.body = body;
        self
    }

    /// Assemble and validate.
    pub fn build(mut self) -> Result<Response, BuildError> {
        if crate::text::has_ctl_break(&self.reason) {
            return Err(BuildError::InvalidReason);
        }
        if let Some(tag) = self.to_tag.take() {
            if !all_token(&tag) {
                return Err(BuildError::InvalidHeaderValue(HeaderName::To));
            }
            for (n, v) in self.parts.headers.iter_mut() {
                if matches!(n, HeaderName::To) {
                    let has = crate::views::NameAddr::parse(v)
                        .ok()
                        .and_then(|x| x.tag())
                        .is_some();
                    if !has {
                        let mut nv = Vec::with_capacity(v.len() + 5 + tag.len());
                        nv.extend_from_slice(v);
                        nv.extend_from_slice(b";tag=");
                        nv.extend_from_slice(&tag);
                        *v = Bytes::from(nv);
                    }
                    break;
                }
            }
        }
        self.parts.check()?;
        let mut out = Vec::with_capacity(self.parts.len_hint() + self.reason.len());
        out.extend_from_slice(b"SIP/2.0 ");
        push_u64(&mut out, u64::from(self.status.as_u16()));
        out.push(b' ');
        out.extend_from_slice(&self.reason);
        out.extend_from_slice(b"\r\n");
        self.parts.write(&mut out);
        match parse_message(Bytes::from(out), &Limits::UNLIMITED, false) {
            Ok(Message::Response(r)) => match r.validate(&Limits::UNLIMITED) {
                Ok(()) => Ok(r),
                Err(e) => Err(BuildError::Parse(e.kind().clone())),
            },
            Ok(Message::Request(_)) => Err(BuildError::Parse(
                crate::error::ParseErrorKind::BadStatusLine,
            )),
            Err(e) => Err(BuildError::Parse(e.kind().clone())),
        }
    }
}

fn first_value(req: &Request, name: HeaderName) -> Result<Bytes, BuildError> {
    req.headers()
        .get_value(&name)
        .ok_or(BuildError::MissingHeader(name))
}

impl Request {
    /// A builder for a response to this request (see [`ResponseBuilder::for_request`]).
    pub fn response(&self, status: StatusCode) -> ResponseBuilder {
        ResponseBuilder::for_request(self, status)
    }

    /// The CANCEL for this request (RFC 3261 §9.1): same Request-URI, Call-ID,
    /// From, To, CSeq number and top Via; Route fields copied.
    pub fn cancel(&self) -> Result<Request, BuildError> {
        self.derive(Method::Cancel, None)
    }

    /// The ACK for a non-2xx final response to this INVITE (RFC 3261
    /// §17.1.1.3): To from the response, the rest as for CANCEL.
    pub fn ack_for(&self, response: &Response) -> Result<Request, BuildError> {
        self.derive(Method::Ack, Some(response))
    }

    fn derive(&self, method: Method, response: Option<&Response>) -> Result<Request, BuildError> {
        let seq = self
            .cseq()
            .map_err(|_| BuildError::MissingHeader(HeaderName::CSeq))?
            .seq;
        let top_via = self
            .headers()
            .values(&HeaderName::Via)
            .next()
            .ok_or(BuildError::MissingHeader(HeaderName::Via))?;
        let to = match response {
            Some(r) => r
                .headers()
                .get_value(&HeaderName::To)
                .ok_or(BuildError::MissingHeader(HeaderName::To))?,
            None => first_value(self, HeaderName::To)?,
        };
        let mut b = RequestBuilder::new(method, self.uri().clone())
            .header(HeaderName::Via, top_via)
            .max_forwards(70)
            .header(HeaderName::From, first_value(self, HeaderName::From)?)
            .header(HeaderName::To, to)
            .header(HeaderName::CallId, first_value(self, HeaderName::CallId)?)
            .cseq(seq);
        for r in self.headers().get_all(&HeaderName::Route) {
            b = b.header(HeaderName::Route, r.value().clone());
        }
        b.build()
    }
}

/// Writes a response without a body straight into its wire buffer, recording each header
/// field's offsets as it goes, so that the finished [`Response`] is ready without parsing its
/// own text again (what [`ResponseBuilder::build`] does). Meant for answers assembled from the
/// fields of a parsed request plus the element's own fields (a registrar's 200 OK).
///
/// Every value is checked as [`ResponseBuilder`] checks it (no CR/LF except folding, no NUL;
/// names are tokens); `Content-Length: 0` and the blank line are written by
/// [`ResponseWriter::finish`], which also makes the checks a datagram parse makes on a
/// response (a Via, CSeq that parses, one well-formed Call-ID, one From and one To). The
/// records are the ones the parser would make from the same bytes.
#[derive(Debug)]
pub struct ResponseWriter {
    buf: Vec<u8>,
    fields: crate::headers::Fields,
    status: StatusCode,
    /// End of the start line (before its CRLF).
    start_line_end: usize,
    /// Where the reason phrase starts in the start line.
    reason_start: usize,
}

impl ResponseWriter {
    /// Starts `SIP/2.0 <status> <reason>` in a buffer of `capacity` bytes (it grows if needed).
    pub fn new(status: StatusCode, reason: &[u8], capacity: usize) -> Result<Self, BuildError> {
        if crate::text::has_ctl_break(reason) {
            return Err(BuildError::InvalidReason);
        }
        let mut buf = Vec::with_capacity(capacity.max(64));
        buf.extend_from_slice(b"SIP/2.0 ");
        push_u64(&mut buf, u64::from(status.as_u16()));
        buf.push(b' ');
        let reason_start = buf.len();
        buf.extend_from_slice(reason);
        let start_line_end = buf.len();
        buf.extend_from_slice(b"\r\n");
        Ok(ResponseWriter {
            buf,
            fields: crate::headers::Fields::default(),
            status,
            start_line_end,
            reason_start,
        })
    }

    /// Appends `name: value`, the value being the concatenation of `parts`.
    pub fn header(&mut self, name: &HeaderName, parts: &[&[u8]]) -> Result<(), BuildError> {
        let n = name.as_bytes();
        // Known names are spelled as tokens; the parser's id of an `Other` name is looked up
        // (an `Other("Via")` is recorded as a Via, as a parse of the bytes would).
        let id = match name.id() {
            crate::header_name::OTHER_ID => {
                if !all_token(n) {
                    return Err(BuildError::InvalidHeaderName);
                }
                HeaderName::known_id(n)
            }
            id => id,
        };
        // Parts without CR, LF or NUL concatenate to a safe value; otherwise the concatenation
        // is checked as one value (a CRLF split over two parts must still be refused).
        let whole_ok = match parts {
            [one] => safe_header_value(one),
            _ if !parts.iter().any(|p| crate::text::has_ctl_break(p)) => true,
            _ => {
                let start = self.buf.len();
                for p in parts {
                    self.buf.extend_from_slice(p);
                }
                let ok = self.buf.get(start..).is_some_and(safe_header_value);
                self.buf.truncate(start);
                ok
            }
        };
        if !whole_ok {
            return Err(BuildError::InvalidHeaderValue(name.clone()));
        }
        let line_start = self.buf.len();
        self.buf.extend_from_slice(n);
        self.buf.extend_from_slice(b": ");
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        let line_end = self.buf.len();
        self.buf.extend_from_slice(b"\r\n");
        // As the parser records it: the value starts after the colon and leading LWS.
        let value_start = crate::text::skip_lws(&self.buf[..line_end], line_start + n.len() + 1);
        let (Ok(ls), Ok(le), Ok(vs)) = (
            u32::try_from(line_start),
            u32::try_from(line_end),
            u32::try_from(value_start),
        ) else {
            return Err(BuildError::InvalidHeaderValue(name.clone()));
        };
        self.fields
            .push(crate::headers::Field::parsed(id, (ls, le), vs));
        Ok(())
    }

    /// Appends `Content-Length: 0` and the blank line; checks what a datagram parse checks.
    pub fn finish(mut self) -> Result<Response, BuildError> {
        self.header(&HeaderName::ContentLength, &[b"0"])?;
        self.buf.extend_from_slice(b"\r\n");
        let buf = Bytes::from(self.buf);
        let headers = crate::headers::Headers::from_parsed(buf.clone(), self.fields);
        crate::parse::check_addressable(&headers, None).map_err(BuildError::Parse)?;
        Ok(Response {
            status: self.status,
            reason: buf.slice(self.reason_start..self.start_line_end),
            start_line: buf.slice(..self.start_line_end),
            headers,
            body: Bytes::new(),
            raw: Some(buf),
        })
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use crate::parse::parse_datagram;

    const REQ: &[u8] = b"REGISTER sip:open.lab SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.18.0.7:5060;branch=z9hG4bK-1;rport=5060;received=198.18.0.7\r\n\
Via: SIP/2.0/UDP 198.18.0.9:5060;branch=z9hG4bK-0\r\n\
From: <sip:alice@open.lab>;tag=42\r\n\
To: <sip:alice@open.lab>\r\n\
Call-ID: c1@198.18.0.7\r\n\
CSeq: 7 REGISTER\r\n\
Contact: <sip:alice@198.18.0.7:5060>\r\n\
Content-Length: 0\r\n\r\n";

    fn request() -> Request {
        match parse_datagram(Bytes::from_static(REQ), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("test request does not parse: {other:?}"),
        }
    }

    /// Writes the answer the registrar writes: the request's Via/From/To/Call-ID/CSeq, a tag,
    /// own fields.
    fn write(req: &Request, extra: &[(HeaderName, &[u8])]) -> Result<Response, BuildError> {
        let mut w = ResponseWriter::new(StatusCode::OK, b"OK", 256)?;
        for h in req.headers() {
            if *h.name() == HeaderName::To {
                w.header(h.name(), &[h.value(), b";tag=", b"abc"])?;
            } else if matches!(
                h.name(),
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq
            ) {
                w.header(h.name(), &[h.value()])?;
            }
        }
        for (n, v) in extra {
            w.header(n, &[v])?;
        }
        w.finish()
    }

    #[test]
    fn written_response_is_what_parsing_its_bytes_gives() {
        let req = request();
        let extra: &[(HeaderName, &[u8])] = &[
            (
                HeaderName::Contact,
                b"<sip:alice@198.18.0.7:5060>;expires=3600",
            ),
            (HeaderName::Server, b"sipveil"),
            (
                HeaderName::Other(Bytes::from_static(b"X-Thing")),
                b"  padded",
            ),
            (HeaderName::Other(Bytes::from_static(b"x-empty")), b""),
        ];
        let w = write(&req, extra).expect("writes");
        let parsed = match parse_datagram(w.to_bytes(), &Limits::default()) {
            Ok(Message::Response(r)) => r,
            other => panic!("written bytes do not parse: {other:?}"),
        };
        // Same records, same offsets, same status line, same everything.
        assert_eq!(format!("{w:?}"), format!("{parsed:?}"));
        assert_eq!(w.status(), StatusCode::OK);
        assert_eq!(&w.reason()[..], b"OK");
        assert_eq!(
            w.headers().get_value(&HeaderName::To).as_deref(),
            Some(&b"<sip:alice@open.lab>;tag=abc"[..])
        );
        assert_eq!(w.headers().values(&HeaderName::Via).count(), 2);
        assert!(w.validate(&Limits::default()).is_ok());
        assert!(w.to_bytes().ends_with(b"Content-Length: 0\r\n\r\n"));
    }

    /// The writer records a known name by its own id: the id a parse of its spelling gives.
    #[test]
    fn known_names_spell_their_own_id() {
        let mut seen = 0;
        for id in 0..crate::header_name::OTHER_ID {
            if let Some(name) = HeaderName::from_id(id) {
                assert_eq!(HeaderName::known_id(name.as_bytes()), id, "{name:?}");
                seen += 1;
            }
        }
        assert!(seen > 30, "only {seen} known names");
    }

    #[test]
    fn writer_refuses_injection_and_unaddressable_answers() {
        let req = request();
        // CR LF inside one part, or split across two parts.
        let mut w = ResponseWriter::new(StatusCode::OK, b"OK", 0).expect("new");
        assert!(w.header(&HeaderName::Server, &[b"a\r\nX: y"]).is_err());
        assert!(w.header(&HeaderName::Server, &[b"a\r", b"\nX: y"]).is_err());
        assert!(w.header(&HeaderName::Server, &[b"a\0"]).is_err());
        assert!(
            w.header(&HeaderName::Other(Bytes::from_static(b"bad name")), &[b"v"])
                .is_err()
        );
        assert!(ResponseWriter::new(StatusCode::OK, b"O\r\nK", 0).is_err());
        // CR LF across parts whose pieces are each harmless alone.
        assert!(w.header(&HeaderName::Server, &[b"a\r\n", b"X: y"]).is_err());
        assert!(
            w.header(&HeaderName::Server, &[b"a\r\n", b" folded"])
                .is_ok()
        );
        // Nothing refused was written: the writer is still usable.
        assert!(w.header(&HeaderName::Server, &[b"ok"]).is_ok());
        // No Via / CSeq / Call-ID / From / To: not a response anyone could match.
        assert!(matches!(w.finish(), Err(BuildError::Parse(_))));
        // A folded value is kept as one field, as the parser keeps it.
        let folded = write(&req, &[(HeaderName::Subject, b"one\r\n two")]).expect("folded");
        let parsed = match parse_datagram(folded.to_bytes(), &Limits::default()) {
            Ok(Message::Response(r)) => r,
            other => panic!("folded answer does not parse: {other:?}"),
        };
        assert_eq!(format!("{folded:?}"), format!("{parsed:?}"));
    }
}
