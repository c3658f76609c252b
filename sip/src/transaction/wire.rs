//! The only place the transaction layer touches the message model: it
//! extracts the matching facts and builds the few messages the layer
//! generates itself (ACK for non-2xx, CANCEL, 100 Trying).

use core::fmt;

use bytes::Bytes;

use super::key::{RequestFacts, ResponseFacts, is_rfc3261_branch, normalize_sent_by};
use crate::header_name::HeaderName;
use crate::message::HeaderError;
use crate::{BuildError, Message, Request, Response, StatusCode};

/// Why a message cannot be matched to (or start) a transaction, or why a
/// message the layer derives could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FactsError {
    /// A header needed for matching is missing or malformed (Via, CSeq,
    /// Call-ID, From, To).
    Header(HeaderError),
    /// The CSeq method differs from the request method (§8.1.1.5).
    CSeqMethodMismatch,
    /// The status code is outside 100–699.
    InvalidStatus,
    /// A derived message (ACK, CANCEL, response) could not be built.
    Build(BuildError),
}

impl fmt::Display for FactsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FactsError::Header(HeaderError::Missing(name)) => write!(f, "missing {name} header"),
            FactsError::Header(HeaderError::Invalid(name, e)) => {
                write!(f, "malformed {name} header: {e:?}")
            }
            FactsError::CSeqMethodMismatch => {
                f.write_str("CSeq method differs from the request method")
            }
            FactsError::InvalidStatus => f.write_str("status code outside 100-699"),
            FactsError::Build(e) => write!(f, "cannot build message: {e:?}"),
        }
    }
}

impl std::error::Error for FactsError {}

impl From<HeaderError> for FactsError {
    fn from(e: HeaderError) -> Self {
        FactsError::Header(e)
    }
}

impl From<BuildError> for FactsError {
    fn from(e: BuildError) -> Self {
        FactsError::Build(e)
    }
}

/// How much of a request [`request_facts`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    /// What matching this request needs: the dialog fields (Call-ID, tags)
    /// only for RFC 2543 requests and ACKs, which match on them; an RFC 3261
    /// request matches on its Via branch alone, so its From/To are not parsed.
    Match,
    /// Everything (to register the dialog key of an ACK for a 2xx).
    Dialog,
}

pub(crate) fn request_facts(r: &Request, depth: Depth) -> Result<RequestFacts, FactsError> {
    let via = r.top_via()?;
    let cseq = r.cseq()?;
    // An ACK or CANCEL carries its own method in CSeq too (§17.1.1.3, §9.1).
    if cseq.method != *r.method() {
        return Err(FactsError::CSeqMethodMismatch);
    }
    let top_via = r
        .headers()
        .values(&HeaderName::Via)
        .next()
        .map(|v| crate::text::trimmed(&v))
        .unwrap_or_default();
    let branch = via.branch();
    let dialog = depth == Depth::Dialog
        || r.method().as_bytes() == b"ACK"
        || !branch.as_deref().is_some_and(is_rfc3261_branch);
    let (call_id, from_tag, to_tag) = if dialog {
        (r.call_id()?, r.from()?.tag(), r.to()?.tag())
    } else {
        (Bytes::new(), None, None)
    };
    Ok(RequestFacts {
        method: Bytes::copy_from_slice(r.method().as_bytes()),
        request_uri: r.uri().as_bytes().clone(),
        cseq: cseq.seq,
        branch,
        sent_by: normalize_sent_by(via.sent_by()),
        top_via,
        call_id,
        from_tag,
        to_tag,
    })
}

pub(crate) fn response_facts(r: &Response) -> Result<ResponseFacts, FactsError> {
    let via = r.top_via()?;
    let cseq = r.cseq()?;
    Ok(ResponseFacts {
        status: r.status().as_u16(),
        branch: via.branch(),
        cseq_method: Bytes::copy_from_slice(cseq.method.as_bytes()),
        to_tag: r.to_tag(),
    })
}

/// Whether `resp` answers `req`: same top Via (as written) and CSeq.
pub(crate) fn response_answers(req: &Request, resp: &Response) -> bool {
    let top_via = |h: &crate::Headers| {
        h.values(&HeaderName::Via)
            .next()
            .map(|v| crate::text::trimmed(&v))
    };
    top_via(req.headers()) == top_via(resp.headers())
        && matches!((req.cseq(), resp.cseq()), (Ok(a), Ok(b)) if a == b)
}

pub(crate) fn status_code(r: &Response) -> u16 {
    r.status().as_u16()
}

pub(crate) fn to_tag(r: &Response) -> Option<Bytes> {
    r.to_tag()
}

pub(crate) fn encode_request(r: &Request) -> Bytes {
    r.to_bytes()
}

pub(crate) fn encode_response(r: &Response) -> Bytes {
    r.to_bytes()
}

pub(crate) fn encode(m: &Message) -> Bytes {
    m.to_bytes()
}

/// The ACK for a non-2xx final `response` to INVITE `original` (§17.1.1.3).
pub fn build_ack(original: &Request, response: &Response) -> Result<Request, FactsError> {
    Ok(original.ack_for(response)?)
}

/// The CANCEL for `original` (§9.1).
pub fn build_cancel(original: &Request) -> Result<Request, FactsError> {
    Ok(original.cancel()?)
}

/// `100 Trying` for `request` (§8.2.6.1: no To tag, Timestamp copied).
pub fn build_trying(request: &Request) -> Result<Response, FactsError> {
    Ok(request.response(StatusCode::TRYING).build()?)
}

/// A response to `request` with `status`, the default reason phrase and,
/// when given, `to_tag` added to To (§8.2.6.2). A convenience for TUs and
/// tests; [`Request::response`] offers the full builder.
pub fn response_to(
    request: &Request,
    status: u16,
    to_tag: Option<&str>,
) -> Result<Response, FactsError> {
    let code = StatusCode::new(status).ok_or(FactsError::InvalidStatus)?;
    let mut builder = request.response(code);
    if let Some(tag) = to_tag {
        builder = builder.to_tag(Bytes::copy_from_slice(tag.as_bytes()));
    }
    Ok(builder.build()?)
}
