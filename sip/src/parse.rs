//! Message parser shared by the datagram entry point and the stream framer.
//!
//! Allocation: none for up to [`crate::headers::INLINE_FIELDS`] header
//! fields (the index is an inline array of compact records). The start line,
//! Request-URI parts and the body are `Bytes` slices of the input (a `Bytes`
//! made from a `Vec` is promoted to a shared buffer on its first slice,
//! which is one small allocation inside `bytes`).

use bytes::Bytes;

use crate::error::{Origin, ParseError, ParseErrorKind as K};
use crate::header_name::HeaderName;
use crate::header_name::{KnownId, OTHER_ID};
use crate::headers::{Field, Fields, Headers};
use crate::limits::Limits;
use crate::message::{Message, Request, Response};
use crate::method::Method;
use crate::status::StatusCode;
use crate::text::{CommaValues, eq_ic, find_top_level, is_token, list_elements, trim_range};
use crate::uri::{Scheme, Uri};
use crate::views::{
    CSeq, Contact, MediaType, NameAddr, Via, check_call_id, parse_content_length,
    parse_max_forwards,
};

/// Parse one UDP datagram. Leading CRLFs are skipped; when Content-Length is
/// present, octets after the body are ignored (RFC 3261 §18.3); when absent,
/// the body runs to the end of the datagram.
pub fn parse_datagram(buf: Bytes, limits: &Limits) -> Result<Message, ParseError> {
    parse_message(buf, limits, false)
}

/// Parse one complete message framed by a stream transport (Content-Length required).
pub(crate) fn parse_message(
    buf: Bytes,
    limits: &Limits,
    stream: bool,
) -> Result<Message, ParseError> {
    let b = &buf[..];
    let mut start = 0;
    while start < b.len() && (b[start] == b'\r' || b[start] == b'\n') {
        start += 1;
    }
    if start == b.len() {
        return Err(ParseError::new(K::Empty, Origin::Unknown));
    }
    // Errors come back with an unknown origin; classify the input only then
    // (the message itself is returned as is, without re-wrapping).
    let mut result = parse_inner(&buf, start, limits, stream);
    if let Err(e) = &mut result {
        *e = ParseError::new(e.kind().clone(), classify(&buf.slice(start..)));
    }
    result
}

/// Find the end of the line starting at `i`: `(content_end, next_line_start)`.
fn line_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let lf = crate::text::find_byte(&b[i..], b'\n')? + i;
    let end = if lf > i && b[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((end, lf + 1))
}

fn parse_inner(
    buf: &Bytes,
    start: usize,
    limits: &Limits,
    stream: bool,
) -> Result<Message, ParseError> {
    let b = &buf[..];
    if b.len() - start > limits.max_message_size {
        return Err((K::MessageTooLarge {
            limit: limits.max_message_size,
        })
        .into());
    }
    let (sl_end, hdr_start) = line_at(b, start).ok_or(K::UnterminatedHeaders)?;

    // Start line first: its errors (505, 414, 416...) take precedence.
    let sl = &b[start..sl_end];
    let start_line = buf.slice(start..sl_end);
    let kind = if sl.len() >= 4 && eq_ic(&sl[..4], b"SIP/") {
        StartLine::Response(parse_status_line(&start_line)?)
    } else {
        StartLine::Request(parse_request_line(&start_line, limits)?)
    };

    // One pass over the header section: each logical field (continuation
    // lines folded into the field before them) becomes a compact record as
    // soon as the next field starts.
    if b.len() > u32::MAX as usize {
        return Err((K::MessageTooLarge {
            limit: u32::MAX as usize,
        })
        .into());
    }
    // Built in place: the records go straight into the message's index.
    let mut headers = Headers::from_parsed(buf.clone(), Fields::default());
    let mut count = 0usize;
    let mut cur: Option<(usize, usize)> = None; // (line start, content end)
    let mut i = hdr_start;
    let body_start;
    loop {
        let (end, next) = line_at(b, i).ok_or(K::UnterminatedHeaders)?;
        if end == i {
            body_start = next;
            break;
        }
        if b[i] == b' ' || b[i] == b'\t' {
            match cur.as_mut() {
                Some(c) => c.1 = end,
                None => return Err(K::BadHeaderLine.into()),
            }
        } else {
            if let Some((s, e)) = cur.take() {
                headers.push_field(make_field(b, s, e, limits)?);
            }
            count += 1;
            if count > limits.max_headers {
                return Err((K::TooManyHeaders {
                    limit: limits.max_headers,
                })
                .into());
            }
            cur = Some((i, end));
        }
        i = next;
    }
    if let Some((s, e)) = cur {
        headers.push_field(make_field(b, s, e, limits)?);
    }

    // Body.
    let mut cl: Option<usize> = None;
    for f in headers
        .fields()
        .iter()
        .filter(|f| f.id() == HeaderName::ContentLength.id())
    {
        let v = f.value_in(b);
        if cl.is_some() || v.contains(&b',') {
            return Err(K::DuplicateHeader(HeaderName::ContentLength).into());
        }
        cl = Some(
            parse_content_length(v).map_err(|e| K::InvalidHeader(HeaderName::ContentLength, e))?,
        );
    }
    let available = b.len() - body_start;
    let body_len = match (cl, stream) {
        (Some(n), _) => n,
        (None, true) => return Err(K::ContentLengthRequired.into()),
        (None, false) => available,
    };
    if body_len > limits.max_body_size {
        return Err((K::BodyTooLarge {
            limit: limits.max_body_size,
        })
        .into());
    }
    if body_len > available {
        return Err((K::ContentLengthExceedsBody {
            declared: body_len,
            available,
        })
        .into());
    }
    let end = body_start + body_len;
    let body = buf.slice(body_start..end);
    let raw = Some(buf.slice(start..end));

    match kind {
        StartLine::Response((status, reason)) => {
            check_addressable(&headers, None)?;
            Ok(Message::Response(Response {
                status,
                reason,
                start_line,
                headers,
                body,
                raw,
            }))
        }
        StartLine::Request((method, uri)) => {
            check_addressable(&headers, Some(&method))?;
            Ok(Message::Request(Request {
                method,
                uri,
                start_line,
                headers,
                body,
                raw,
            }))
        }
    }
}

/// The parsed start line.
#[expect(
    clippy::large_enum_variant,
    reason = "a local moved once into the message; boxing would allocate per parse"
)]
enum StartLine {
    Request((Method, Uri)),
    Response((StatusCode, Bytes)),
}

fn make_field(b: &[u8], s: usize, e: usize, limits: &Limits) -> Result<Field, K> {
    if e - s > limits.max_header_len {
        return Err(K::HeaderTooLong {
            limit: limits.max_header_len,
        });
    }
    let line = &b[s..e];
    let colon = crate::text::find_byte(line, b':').ok_or(K::BadHeaderLine)?;
    let mut ne = colon;
    while ne > 0 && (line[ne - 1] == b' ' || line[ne - 1] == b'\t') {
        ne -= 1;
    }
    let name_raw = &line[..ne];
    let id = HeaderName::known_id(name_raw);
    if id == OTHER_ID && (name_raw.is_empty() || !name_raw.iter().all(|&c| is_token(c))) {
        return Err(K::BadHeaderLine);
    }
    // The value starts after the colon and leading LWS; it ends where the
    // line ends without trailing LWS, which the record recomputes on access.
    let vs = crate::text::skip_lws(line, colon + 1);
    // Offsets fit in u32: the caller checked the buffer length.
    let at = |x: usize| x as u32;
    Ok(Field::parsed(id, (at(s), at(e)), at(s + vs)))
}

fn parse_version(v: &[u8]) -> Result<(), K> {
    if eq_ic(v, b"SIP/2.0") {
        return Ok(());
    }
    // SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT
    let ok_shape = v.len() > 4
        && eq_ic(&v[..4], b"SIP/")
        && v[4..].iter().filter(|&&c| c == b'.').count() == 1
        && v[4..].iter().all(|&c| c.is_ascii_digit() || c == b'.')
        && v[4] != b'.'
        && v.last() != Some(&b'.');
    if ok_shape {
        Err(K::UnsupportedVersion)
    } else {
        Err(K::BadRequestLine)
    }
}

fn parse_request_line(sl: &Bytes, limits: &Limits) -> Result<(Method, Uri), K> {
    let b = &sl[..];
    let p1 = b.iter().position(|&c| c == b' ').ok_or(K::BadRequestLine)?;
    let p2 = b[p1 + 1..]
        .iter()
        .position(|&c| c == b' ')
        .map(|p| p + p1 + 1)
        .ok_or(K::BadRequestLine)?;
    let version = &b[p2 + 1..];
    if p2 == p1 + 1 || version.is_empty() || version.iter().any(|&c| c == b' ' || c == b'\t') {
        return Err(K::BadRequestLine);
    }
    let method = Method::parse(sl.slice(..p1)).ok_or(K::BadMethod)?;
    parse_version(version)?;
    if p2 - p1 - 1 > limits.max_uri_len {
        return Err(K::UriTooLong {
            limit: limits.max_uri_len,
        });
    }
    let uri = Uri::parse(sl.slice(p1 + 1..p2)).map_err(K::BadRequestUri)?;
    match uri.scheme() {
        Scheme::Sip | Scheme::Sips | Scheme::Tel => {}
        Scheme::Other(_) => return Err(K::UnsupportedUriScheme),
    }
    if uri.headers().is_some() {
        return Err(K::HeadersInRequestUri);
    }
    Ok((method, uri))
}

fn parse_status_line(sl: &Bytes) -> Result<(StatusCode, Bytes), K> {
    let b = &sl[..];
    let p1 = b.iter().position(|&c| c == b' ').ok_or(K::BadStatusLine)?;
    if !eq_ic(&b[..p1], b"SIP/2.0") {
        return match parse_version(&b[..p1]) {
            Err(K::UnsupportedVersion) => Err(K::UnsupportedVersion),
            _ => Err(K::BadStatusLine),
        };
    }
    let cs = p1 + 1;
    let mut ce = cs;
    while ce < b.len() && b[ce].is_ascii_digit() {
        ce += 1;
    }
    if ce - cs != 3 {
        return Err(K::BadStatusCode);
    }
    let code = crate::text::parse_u32(&b[cs..ce]).ok_or(K::BadStatusCode)?;
    let status = u16::try_from(code)
        .ok()
        .and_then(StatusCode::new)
        .ok_or(K::BadStatusCode)?;
    let reason = match b.get(ce) {
        None => sl.slice(ce..),
        Some(b' ') => sl.slice(ce + 1..),
        Some(_) => return Err(K::BadStatusCode),
    };
    if reason.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0) {
        return Err(K::BadStatusLine);
    }
    Ok((status, reason))
}

/// The checks a datagram parse makes on header fields: what an element
/// needs to match the message to a transaction and to address an answer
/// (RFC 3261 §8.1.1, §8.2.6, §17.2.3). A Via is present and, in a
/// request, the top Via value parses; CSeq is
/// single, parses and names the request method; Call-ID is single and well
/// formed; From and To are single. Their values stay unchecked beyond that
/// until [`validate_fields`] (or a typed view) looks at them.
pub(crate) fn check_addressable(headers: &Headers, method: Option<&Method>) -> Result<(), K> {
    // One pass: the first (non-blank) Via and the single-valued fields.
    let (via_id, cseq_id, call_id_id, from_id, to_id) = (
        HeaderName::Via.id(),
        HeaderName::CSeq.id(),
        HeaderName::CallId.id(),
        HeaderName::From.id(),
        HeaderName::To.id(),
    );
    let mut via: Option<&[u8]> = None;
    // (value of the first, how many) for CSeq, Call-ID, From, To.
    let mut seen: [(&[u8], u8); 4] = [(&[], 0); 4];
    for f in headers.fields() {
        let id = f.id();
        let k = if id == via_id {
            if via.is_none() {
                let v = headers.value_of(f);
                if !v.is_empty() {
                    via = Some(v);
                }
            }
            continue;
        } else if id == cseq_id {
            0
        } else if id == call_id_id {
            1
        } else if id == from_id {
            2
        } else if id == to_id {
            3
        } else {
            continue;
        };
        let slot = &mut seen[k];
        if slot.1 == 0 {
            slot.0 = headers.value_of(f);
        }
        slot.1 = slot.1.saturating_add(1);
    }
    let via = via.ok_or(K::MissingHeader(HeaderName::Via))?;
    // A request's top Via addresses its answer, so it must parse now. A
    // response is never answered; whoever matches it to a transaction reads
    // its top Via through `top_via()`, which checks it (as does `validate`).
    if method.is_some() {
        let top = match find_top_level(via, 0, b',') {
            Some(c) => &via[..c],
            None => via,
        };
        let (ts, te) = trim_range(top);
        Via::check(&top[ts..te]).map_err(|e| K::InvalidHeader(HeaderName::Via, e))?;
    }
    let single = |k: usize, name: HeaderName| match seen[k] {
        (_, 0) => Err(K::MissingHeader(name)),
        (v, 1) => Ok(v),
        _ => Err(K::DuplicateHeader(name)),
    };
    let cseq = single(0, HeaderName::CSeq)?;
    let (_, m) = CSeq::parse_parts(cseq).map_err(|e| K::InvalidHeader(HeaderName::CSeq, e))?;
    if let Some(method) = method
        && method.as_bytes() != &cseq[m]
    {
        return Err(K::CSeqMethodMismatch);
    }
    let call_id = single(1, HeaderName::CallId)?;
    let (cs, ce) = trim_range(call_id);
    check_call_id(&call_id[cs..ce]).map_err(|e| K::InvalidHeader(HeaderName::CallId, e))?;
    single(2, HeaderName::From)?;
    single(3, HeaderName::To)?;
    Ok(())
}

/// The full checks on the fields every element relies on (RFC 3261 §8.2.2,
/// §20), beyond [`check_addressable`]: every Via value, the top one included
/// (and their number),
/// the From and To name-addrs, Max-Forwards, Route / Record-Route (and their
/// number), Contact and Content-Type.
///
/// `top_via_checked`: the top Via value has passed [`check_addressable`] and no field changed
/// since (a parsed request that was not modified), so its check is not repeated. The first
/// element the Via loop meets is that value: blank fields yield no element, and the top value
/// is the first element of the first non-blank field in both functions.
pub(crate) fn validate_fields(
    headers: &Headers,
    limits: &Limits,
    top_via_checked: bool,
) -> Result<(), K> {
    // Records are matched by name id and read as borrowed slices (no `Bytes`
    // is taken); each category is one scan of the records, in the order the
    // checks have always been reported.
    let fields = headers.fields();
    let mut nvia = 0usize;
    for f in fields.iter().filter(|f| f.id() == KnownId::Via as u8) {
        for v in list_elements(headers.value_of(f)) {
            nvia += 1;
            if nvia > limits.max_vias {
                return Err(K::TooManyVias {
                    limit: limits.max_vias,
                });
            }
            if nvia == 1 && top_via_checked {
                continue;
            }
            Via::check(v).map_err(|e| K::InvalidHeader(HeaderName::Via, e))?;
        }
    }
    if nvia == 0 {
        return Err(K::MissingHeader(HeaderName::Via));
    }
    // At most one field with this id: its value, or Duplicate.
    let at_most_one = |id: KnownId, name: fn() -> HeaderName| {
        let id = id as u8;
        let mut found = None;
        for f in fields.iter().filter(|f| f.id() == id) {
            if found.is_some() {
                return Err(K::DuplicateHeader(name()));
            }
            found = Some(headers.value_of(f));
        }
        Ok(found)
    };
    for (id, name) in [
        (KnownId::From, (|| HeaderName::From) as fn() -> HeaderName),
        (KnownId::To, || HeaderName::To),
    ] {
        let v = at_most_one(id, name)?.ok_or_else(|| K::MissingHeader(name()))?;
        NameAddr::check(v).map_err(|e| K::InvalidHeader(name(), e))?;
    }
    if let Some(v) = at_most_one(KnownId::MaxForwards, || HeaderName::MaxForwards)? {
        parse_max_forwards(v).map_err(|e| K::InvalidHeader(HeaderName::MaxForwards, e))?;
    }
    for (id, name) in [
        (KnownId::Route, HeaderName::Route),
        (KnownId::RecordRoute, HeaderName::RecordRoute),
    ] {
        let mut n = 0usize;
        for f in fields.iter().filter(|f| f.id() == id as u8) {
            for v in list_elements(headers.value_of(f)) {
                n += 1;
                if n > limits.max_routes {
                    return Err(K::TooManyRoutes {
                        limit: limits.max_routes,
                    });
                }
                NameAddr::check(v).map_err(|e| K::InvalidHeader(name.clone(), e))?;
            }
        }
    }
    for f in fields.iter().filter(|f| f.id() == KnownId::Contact as u8) {
        for v in list_elements(headers.value_of(f)) {
            Contact::check(v).map_err(|e| K::InvalidHeader(HeaderName::Contact, e))?;
        }
    }
    if at_most_one(KnownId::ContentType, || HeaderName::ContentType)?.is_some() {
        let v = headers
            .get_value(&HeaderName::ContentType)
            .unwrap_or_default();
        MediaType::parse(&v).map_err(|e| K::InvalidHeader(HeaderName::ContentType, e))?;
    }
    Ok(())
}

/// After a failure: does the input look like a request we can answer?
pub(crate) fn classify(buf: &Bytes) -> Origin {
    let b = &buf[..];
    if b.len() >= 4 && eq_ic(&b[..4], b"SIP/") {
        return Origin::Response;
    }
    let Some((sl_end, mut i)) = line_at(b, 0) else {
        return Origin::Unknown;
    };
    let sl = &b[..sl_end];
    let Some(sp) = sl.iter().position(|&c| c == b' ') else {
        return Origin::Unknown;
    };
    if sp == 0 || !sl[..sp].iter().all(|&c| is_token(c)) {
        return Origin::Unknown;
    }
    if &sl[..sp] == b"ACK" {
        return Origin::UnanswerableRequest;
    }
    while let Some((end, next)) = line_at(b, i) {
        if end == i {
            break;
        }
        let line = &b[i..end];
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            let (ns, ne) = trim_range(&line[..colon]);
            if HeaderName::Via.matches(&line[ns..ne]) {
                let value = buf.slice(i + colon + 1..end);
                let usable = CommaValues::new(value)
                    .next()
                    .is_some_and(|first| Via::parse_lenient(&first).is_ok());
                return if usable {
                    Origin::AnswerableRequest
                } else {
                    Origin::UnanswerableRequest
                };
            }
        }
        i = next;
    }
    Origin::UnanswerableRequest
}
