//! Checks above the parser that still map to a stateless answer: option
//! tags the element does not support (420, RFC 3261 §8.2.2.3) and body
//! types it does not understand (415, §8.2.3).

use bytes::Bytes;

use crate::error::ErrorAnswer;
use crate::header_name::HeaderName;
use crate::message::Request;
use crate::method::Method;
use crate::views::MediaType;

/// Require (and optionally Proxy-Require) names option tags we do not support.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadExtension {
    unsupported: Vec<Bytes>,
}

impl BadExtension {
    /// The unsupported option tags, in request order.
    pub fn unsupported(&self) -> &[Bytes] {
        &self.unsupported
    }

    /// Value for the `Unsupported` header of the 420 response.
    pub fn unsupported_header(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, t) in self.unsupported.iter().enumerate() {
            if i > 0 {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(t);
        }
        v
    }

    /// `420 Bad Extension`.
    pub fn answer(&self) -> ErrorAnswer {
        ErrorAnswer::Respond {
            status: 420,
            reason: "Bad Extension",
        }
    }
}

/// Check Require (and Proxy-Require when `proxy_require` is set) against
/// `supported` (case-insensitive). ACK and CANCEL are never rejected (§8.2.2.3).
pub fn check_extensions(
    req: &Request,
    supported: &[&str],
    proxy_require: bool,
) -> Result<(), BadExtension> {
    if matches!(req.method(), Method::Ack | Method::Cancel) {
        return Ok(());
    }
    let mut unsupported = Vec::new();
    let names: &[HeaderName] = if proxy_require {
        &[HeaderName::Require, HeaderName::ProxyRequire]
    } else {
        &[HeaderName::Require]
    };
    for name in names {
        for tag in req.headers().values(name) {
            if tag.is_empty() {
                continue;
            }
            if !supported
                .iter()
                .any(|s| s.as_bytes().eq_ignore_ascii_case(&tag))
            {
                unsupported.push(tag);
            }
        }
    }
    if unsupported.is_empty() {
        Ok(())
    } else {
        Err(BadExtension { unsupported })
    }
}

/// The body's Content-Type is not one we accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedMediaType {
    content_type: Option<Bytes>,
}

impl UnsupportedMediaType {
    /// The offending Content-Type as written (`None` if a body came without one).
    pub fn content_type(&self) -> Option<&Bytes> {
        self.content_type.as_ref()
    }

    /// `415 Unsupported Media Type` (the response should carry Accept).
    pub fn answer(&self) -> ErrorAnswer {
        ErrorAnswer::Respond {
            status: 415,
            reason: "Unsupported Media Type",
        }
    }
}

/// Accept an empty body, or a body whose Content-Type is one of `accepted`
/// (`(type, subtype)`, case-insensitive). `multipart/*` must be listed explicitly.
pub fn check_content_type(
    req: &Request,
    accepted: &[(&str, &str)],
) -> Result<(), UnsupportedMediaType> {
    if req.body().is_empty() {
        return Ok(());
    }
    let raw = req.headers().get_value(&HeaderName::ContentType);
    let ok = raw
        .as_ref()
        .and_then(|v| MediaType::parse(v).ok())
        .is_some_and(|mt| accepted.iter().any(|(t, s)| mt.is(t, s)));
    if ok {
        Ok(())
    } else {
        Err(UnsupportedMediaType { content_type: raw })
    }
}
