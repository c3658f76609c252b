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
        if self
            .reason
            .iter()
            .any(|&c| c == b'\r' || c == b'\n' || c == 0)
        {
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
