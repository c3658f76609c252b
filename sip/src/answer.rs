//! Stateless answers to requests that failed to parse (RFC 3261 §8.2.6).
//!
//! A request that does not parse cannot go through the builders (they
//! re-parse what they build). [`error_response`] therefore assembles the
//! answer directly from the raw input: the status line of the
//! [`ErrorAnswer`], then every Via, From, To, Call-ID and CSeq field copied
//! as written (a To tag is added when the To field has none), then
//! `Content-Length: 0`.

use bytes::Bytes;

use crate::error::ErrorAnswer;
use crate::header_name::HeaderName;
use crate::text::{all_token, push_u64, trim_range};
use crate::views::NameAddr;

/// Wire bytes of the stateless response for `answer`, or `None` for
/// [`ErrorAnswer::Drop`]. `to_tag` (a token; ignored otherwise) is appended to
/// a To field without tag. Fields that are missing in the input are missing
/// in the answer; header lines are scanned only up to the first empty line.
pub fn error_response(input: &[u8], answer: ErrorAnswer, to_tag: &[u8]) -> Option<Vec<u8>> {
    let ErrorAnswer::Respond { status, reason } = answer else {
        return None;
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"SIP/2.0 ");
    push_u64(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");

    // Skip leading CRLFs and the start line.
    let mut i = input
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(input.len());
    i = match input[i..].iter().position(|&c| c == b'\n') {
        Some(p) => i + p + 1,
        None => input.len(),
    };
    // Logical header fields: (start, end) with continuation lines included.
    let mut fields: Vec<(usize, usize)> = Vec::new();
    while i < input.len() {
        let lf = input[i..].iter().position(|&c| c == b'\n').map(|p| p + i);
        let line_end = lf.unwrap_or(input.len());
        let content_end = if line_end > i && input[line_end - 1] == b'\r' {
            line_end - 1
        } else {
            line_end
        };
        if content_end == i {
            break;
        }
        if matches!(input[i], b' ' | b'\t') {
            if let Some(last) = fields.last_mut() {
                last.1 = content_end;
            }
        } else {
            fields.push((i, content_end));
        }
        i = line_end + 1;
    }
    let mut tagged = false;
    for (s, e) in fields {
        let line = &input[s..e];
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let (ns, ne) = trim_range(&line[..colon]);
        let Some(name) = HeaderName::known(&line[ns..ne]) else {
            continue;
        };
        if !matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) || line.contains(&0)
        {
            continue;
        }
        out.extend_from_slice(line);
        if matches!(name, HeaderName::To) && !tagged && all_token(to_tag) {
            tagged = true;
            let value = Bytes::copy_from_slice(&line[colon + 1..]);
            if NameAddr::parse(&value).is_ok_and(|n| n.tag().is_none()) {
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(to_tag);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_core_fields_and_tags_to() {
        let input = b"INVITE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP g\r\nTo: <sip:a@b>\r\nf: <sip:c@d>;tag=1\r\ni: x@y\r\nCSeq: 1 OPTIONS\r\nSubject: no\r\n\r\n";
        let out = error_response(
            input,
            ErrorAnswer::Respond {
                status: 400,
                reason: "CSeq Method Mismatch",
            },
            b"srv1",
        )
        .expect("respond");
        assert_eq!(
            out,
            b"SIP/2.0 400 CSeq Method Mismatch\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP g\r\nTo: <sip:a@b>;tag=srv1\r\nf: <sip:c@d>;tag=1\r\ni: x@y\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        assert!(error_response(input, ErrorAnswer::Drop, b"x").is_none());
    }
}
