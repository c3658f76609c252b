//! Small typed views: CSeq, Call-ID, numbers, media types, token lists, Privacy.

use bytes::Bytes;

use crate::error::ViewError;
use crate::method::Method;
use crate::params::Params;
use crate::text::{CommaValues, all_token, is_token, parse_u32, skip_lws, trimmed};

/// `CSeq: 4711 INVITE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (< 2^31, RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parse a CSeq value.
    pub fn parse(value: &Bytes) -> Result<CSeq, ViewError> {
        let (seq, m) = Self::parse_parts(value)?;
        let method = Method::from_bytes(value.slice(m));
        Ok(CSeq { seq, method })
    }

    /// The checks of [`CSeq::parse`] on a borrowed value: the sequence
    /// number and where the method token is in `value`.
    pub(crate) fn parse_parts(value: &[u8]) -> Result<(u32, core::ops::Range<usize>), ViewError> {
        let (s, e) = crate::text::trim_range(value);
        let b = &value[s..e];
        if b.is_empty() {
            return Err(ViewError::Empty);
        }
        let mut i = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == 0 {
            return Err(ViewError::BadNumber);
        }
        let seq = parse_u32(&b[..i]).ok_or(ViewError::NumberOutOfRange)?;
        if seq >= 1 << 31 {
            return Err(ViewError::NumberOutOfRange);
        }
        let j = skip_lws(b, i);
        if j == i {
            return Err(ViewError::BadMethod);
        }
        if !all_token(&b[j..]) {
            return Err(ViewError::BadMethod);
        }
        Ok((seq, s + j..e))
    }
}

/// Validate a Call-ID value (`word ["@" word]`, no white space); returns it trimmed.
pub fn parse_call_id(value: &Bytes) -> Result<Bytes, ViewError> {
    let (s, e) = crate::text::trim_range(value);
    check_call_id(&value[s..e])?;
    Ok(value.slice(s..e))
}

/// The checks of [`parse_call_id`] on a trimmed, borrowed value.
pub(crate) fn check_call_id(v: &[u8]) -> Result<(), ViewError> {
    if v.is_empty() {
        return Err(ViewError::Empty);
    }
    let word = |c: u8| {
        is_token(c)
            || matches!(
                c,
                b'(' | b')'
                    | b'<'
                    | b'>'
                    | b':'
                    | b'\\'
                    | b'"'
                    | b'/'
                    | b'['
                    | b']'
                    | b'?'
                    | b'{'
                    | b'}'
            )
    };
    let mut at = 0;
    for &c in v.iter() {
        if c == b'@' {
            at += 1;
        } else if !word(c) {
            return Err(ViewError::BadToken);
        }
    }
    if at > 1 || v.first() == Some(&b'@') || v.last() == Some(&b'@') {
        return Err(ViewError::BadToken);
    }
    Ok(())
}

/// Max-Forwards: 0..=255.
pub fn parse_max_forwards(value: &[u8]) -> Result<u8, ViewError> {
    let (s, e) = crate::text::trim_range(value);
    let n = parse_u32(&value[s..e]).ok_or(ViewError::BadNumber)?;
    u8::try_from(n).map_err(|_| ViewError::NumberOutOfRange)
}

/// Content-Length: a non-negative decimal.
pub fn parse_content_length(value: &[u8]) -> Result<usize, ViewError> {
    let (s, e) = crate::text::trim_range(value);
    let n = crate::text::parse_u64(&value[s..e]).ok_or(ViewError::BadNumber)?;
    usize::try_from(n).map_err(|_| ViewError::NumberOutOfRange)
}

/// Expires / Min-Expires: delta-seconds (saturating at u32::MAX).
pub fn parse_expires(value: &[u8]) -> Result<u32, ViewError> {
    let (s, e) = crate::text::trim_range(value);
    crate::views::parse_delta_seconds(&value[s..e]).ok_or(ViewError::BadNumber)
}

/// `type/subtype;params` (Content-Type, Accept elements).
#[derive(Clone, Debug)]
pub struct MediaType {
    /// Type (`application`).
    pub ty: Bytes,
    /// Subtype (`sdp`).
    pub subtype: Bytes,
    /// Parameters (`;boundary=...`).
    pub params: Params,
}

impl MediaType {
    /// Parse a media type.
    pub fn parse(value: &Bytes) -> Result<MediaType, ViewError> {
        let v = trimmed(value);
        let b = &v[..];
        let mut i = 0;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        let ty = v.slice(..i);
        let j = skip_lws(b, i);
        if ty.is_empty() || b.get(j) != Some(&b'/') {
            return Err(ViewError::BadMediaType);
        }
        let k = skip_lws(b, j + 1);
        let mut e = k;
        while e < b.len() && is_token(b[e]) {
            e += 1;
        }
        let subtype = v.slice(k..e);
        if subtype.is_empty() {
            return Err(ViewError::BadMediaType);
        }
        let r = skip_lws(b, e);
        if r < b.len() && b[r] != b';' {
            return Err(ViewError::TrailingGarbage);
        }
        let params = Params::new(v.slice(r..));
        if !params.well_formed() {
            return Err(ViewError::BadParam);
        }
        Ok(MediaType {
            ty,
            subtype,
            params,
        })
    }

    /// Case-insensitive `type/subtype` match.
    pub fn is(&self, ty: &str, subtype: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty.as_bytes())
            && self.subtype.eq_ignore_ascii_case(subtype.as_bytes())
    }
}

/// Token list (Require, Supported, Unsupported, Proxy-Require, Allow elements):
/// validates each element is a token.
pub fn parse_token_list(value: &Bytes) -> Result<Vec<Bytes>, ViewError> {
    let mut out = Vec::new();
    for t in CommaValues::new(value.clone()) {
        if t.is_empty() {
            return Err(ViewError::EmptyListElement);
        }
        if !all_token(&t) {
            return Err(ViewError::BadToken);
        }
        out.push(t);
    }
    Ok(out)
}

/// Allow: list of methods.
pub fn parse_allow(value: &Bytes) -> Result<Vec<Method>, ViewError> {
    Ok(parse_token_list(value)?
        .into_iter()
        .map(Method::from_bytes)
        .collect())
}

/// Privacy (RFC 3323): `priv-value *(";" priv-value)`.
#[derive(Clone, Debug)]
pub struct Privacy {
    raw: Bytes,
}

impl Privacy {
    /// Parse; every value must be a token.
    pub fn parse(value: &Bytes) -> Result<Privacy, ViewError> {
        let v = trimmed(value);
        if v.is_empty() {
            return Err(ViewError::Empty);
        }
        let p = Privacy { raw: v };
        for t in p.values() {
            if !all_token(&t) {
                return Err(ViewError::BadToken);
            }
        }
        Ok(p)
    }

    /// Values in order (`header`, `session`, `user`, `none`, `critical`, `id`, `history`...).
    pub fn values(&self) -> impl Iterator<Item = Bytes> + '_ {
        let mut start = 0;
        let raw = &self.raw;
        core::iter::from_fn(move || {
            if start > raw.len() {
                return None;
            }
            let end = raw[start..]
                .iter()
                .position(|&c| c == b';')
                .map_or(raw.len(), |p| p + start);
            let piece = trimmed(&raw.slice(start..end));
            start = end + 1;
            Some(piece)
        })
    }

    /// Whether `value` is requested (case-insensitive).
    pub fn contains(&self, value: &str) -> bool {
        self.values()
            .any(|v| v.eq_ignore_ascii_case(value.as_bytes()))
    }
}

/// One element of User-Agent / Server (RFC 3261 §20.35, §20.41).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProductItem {
    /// `name[/version]`.
    Product {
        /// Product token.
        name: Bytes,
        /// Version token, if written.
        version: Option<Bytes>,
    },
    /// `( comment )`, parentheses excluded, nested comments kept raw.
    Comment(Bytes),
}

/// Parse a User-Agent or Server value into products and comments.
pub fn parse_products(value: &Bytes) -> Result<Vec<ProductItem>, ViewError> {
    let v = trimmed(value);
    let b = &v[..];
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'(' {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j) {
                    None => return Err(ViewError::UnterminatedQuote),
                    Some(b'\\') => j += 2,
                    Some(b'(') => {
                        depth += 1;
                        j += 1;
                    }
                    Some(b')') => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Some(_) => j += 1,
                }
            }
            out.push(ProductItem::Comment(v.slice(i + 1..j - 1)));
            i = j;
        } else {
            let s = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            if i == s {
                return Err(ViewError::BadToken);
            }
            let name = v.slice(s..i);
            let mut version = None;
            if b.get(i) == Some(&b'/') {
                let vs = i + 1;
                i = vs;
                while i < b.len() && is_token(b[i]) {
                    i += 1;
                }
                if i == vs {
                    return Err(ViewError::BadToken);
                }
                version = Some(v.slice(vs..i));
            }
            out.push(ProductItem::Product { name, version });
        }
        i = skip_lws(b, i);
    }
    if out.is_empty() {
        return Err(ViewError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq() {
        let c = CSeq::parse(&Bytes::from_static(b" 8\r\n  INVITE ")).expect("ok");
        assert_eq!(
            c,
            CSeq {
                seq: 8,
                method: Method::Invite
            }
        );
        assert_eq!(
            CSeq::parse(&Bytes::from_static(b"36893488147419103232 REGISTER")).err(),
            Some(ViewError::NumberOutOfRange)
        );
        assert_eq!(
            CSeq::parse(&Bytes::from_static(b"2147483648 A")).err(),
            Some(ViewError::NumberOutOfRange)
        );
        assert_eq!(
            CSeq::parse(&Bytes::from_static(b"1")).err(),
            Some(ViewError::BadMethod)
        );
        assert_eq!(
            CSeq::parse(&Bytes::from_static(b"1INVITE")).err(),
            Some(ViewError::BadMethod)
        );
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_max_forwards(b" 70 "), Ok(70));
        assert_eq!(parse_max_forwards(b"300"), Err(ViewError::NumberOutOfRange));
        assert_eq!(parse_content_length(b"-999"), Err(ViewError::BadNumber));
        assert_eq!(parse_content_length(b"0"), Ok(0));
        assert_eq!(
            parse_expires(b"1000000000000000000000000000000000000000"),
            Ok(u32::MAX)
        );
        assert_eq!(
            parse_call_id(&Bytes::from_static(b" a@b ")).as_deref(),
            Ok(&b"a@b"[..])
        );
        assert!(parse_call_id(&Bytes::from_static(b"a b")).is_err());
    }

    #[test]
    fn media_and_lists() {
        let m = MediaType::parse(&Bytes::from_static(
            b"multipart/mixed;boundary=7a9cbec02ceef655",
        ))
        .expect("ok");
        assert!(m.is("Multipart", "MIXED"));
        assert_eq!(
            m.params.value("boundary").as_deref(),
            Some(&b"7a9cbec02ceef655"[..])
        );
        assert!(MediaType::parse(&Bytes::from_static(b"application")).is_err());
        let l = parse_token_list(&Bytes::from_static(b"100rel, timer ,path")).expect("ok");
        assert_eq!(l.len(), 3);
        assert!(parse_token_list(&Bytes::from_static(b"a,,b")).is_err());
        let a = parse_allow(&Bytes::from_static(b"INVITE, ACK, FOO")).expect("ok");
        assert_eq!(a[2], Method::Other(Bytes::from_static(b"FOO")));
        let p = Privacy::parse(&Bytes::from_static(b"id; header ;user")).expect("ok");
        assert!(p.contains("header") && p.contains("ID") && !p.contains("none"));
        assert!(Privacy::parse(&Bytes::from_static(b"id;he der")).is_err());
        let p = parse_products(&Bytes::from_static(
            b"SIPimp.org/0.2.5 (curses (nested)) baresip",
        ))
        .expect("ok");
        assert_eq!(
            p,
            vec![
                ProductItem::Product {
                    name: Bytes::from_static(b"SIPimp.org"),
                    version: Some(Bytes::from_static(b"0.2.5"))
                },
                ProductItem::Comment(Bytes::from_static(b"curses (nested)")),
                ProductItem::Product {
                    name: Bytes::from_static(b"baresip"),
                    version: None
                },
            ]
        );
        assert!(parse_products(&Bytes::from_static(b"a (b")).is_err());
        assert!(parse_products(&Bytes::from_static(b"a/")).is_err());
    }
}
