//! name-addr / addr-spec with parameters: From, To, Contact, Route,
//! Record-Route, P-Asserted-Identity, P-Preferred-Identity, Refer-To...

use std::borrow::Cow;

use bytes::Bytes;

use crate::error::ViewError;
use crate::params::Params;
use crate::text::{
    end_of_quoted, find_top_level, is_lws, is_token, parse_u32, skip_lws, trim_range, trimmed,
};
use crate::uri::Uri;

/// `[display-name] <URI> *(;param)` or `addr-spec *(;param)`.
#[derive(Clone, Debug)]
pub struct NameAddr {
    display: Option<Bytes>,
    quoted: bool,
    uri: Uri,
    bracketed: bool,
    params: Params,
}

impl NameAddr {
    /// Parse one value.
    pub fn parse(value: &Bytes) -> Result<NameAddr, ViewError> {
        let sp = scan(value)?;
        let uri = Uri::parse(value.slice(sp.uri)).map_err(ViewError::BadUri)?;
        Ok(NameAddr {
            display: sp.display.map(|r| value.slice(r)),
            quoted: sp.quoted,
            uri,
            bracketed: sp.bracketed,
            params: Params::new(value.slice(sp.params)),
        })
    }

    /// The `tag` parameter of a value [`NameAddr::parse`] accepts (`None` when it does not
    /// parse or has no tag), without building the URI: what `Request::from_tag` and friends
    /// need on every request.
    pub fn tag_of(value: &Bytes) -> Option<Bytes> {
        let sp = scan(value).ok()?;
        Uri::check(&value[sp.uri.clone()]).ok()?;
        Params::new(value.slice(sp.params)).value("tag")
    }

    /// Validate without building: the checks of [`NameAddr::parse`].
    pub fn check(value: &[u8]) -> Result<(), ViewError> {
        let sp = scan(value)?;
        Uri::check(&value[sp.uri]).map_err(ViewError::BadUri)
    }

    /// Display name as written (inside the quotes for a quoted string, escapes kept).
    pub fn display_name_raw(&self) -> Option<&Bytes> {
        self.display.as_ref()
    }

    /// Display name with quoted-pair escapes resolved (allocates only if escapes are present).
    pub fn display_name(&self) -> Option<Cow<'_, [u8]>> {
        let d = self.display.as_ref()?;
        if !self.quoted || !d.contains(&b'\\') {
            return Some(Cow::Borrowed(&d[..]));
        }
        let mut out = Vec::with_capacity(d.len());
        let mut it = d.iter();
        while let Some(&c) = it.next() {
            if c == b'\\' {
                if let Some(&n) = it.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        Some(Cow::Owned(out))
    }

    /// Whether the display name was a quoted string.
    pub fn is_display_quoted(&self) -> bool {
        self.quoted
    }

    /// The URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Whether the URI was enclosed in `<>`.
    pub fn is_bracketed(&self) -> bool {
        self.bracketed
    }

    /// Header parameters (after the URI).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// `tag` parameter (From/To).
    pub fn tag(&self) -> Option<Bytes> {
        self.params.value("tag")
    }

    /// Contact `expires` parameter.
    pub fn expires(&self) -> Option<u32> {
        self.params
            .value("expires")
            .and_then(|v| parse_delta_seconds(&v))
    }

    /// Contact `q` in thousandths (0..=1000).
    pub fn q_millis(&self) -> Option<u16> {
        parse_qvalue(&self.params.value("q")?)
    }

    /// Contact `+sip.instance` (RFC 5626), without quotes.
    pub fn sip_instance(&self) -> Option<Bytes> {
        self.params.value("+sip.instance")
    }

    /// Contact `reg-id` (RFC 5626).
    pub fn reg_id(&self) -> Option<u32> {
        self.params.value("reg-id").and_then(|v| parse_u32(&v))
    }
}

type Span = core::ops::Range<usize>;

/// Positions of the parts of a name-addr / addr-spec value.
struct Spans {
    display: Option<Span>,
    quoted: bool,
    uri: Span,
    bracketed: bool,
    params: Span,
}

/// Everything but the URI itself is checked here.
fn scan(value: &[u8]) -> Result<Spans, ViewError> {
    let (vs, ve) = trim_range(value);
    if vs == ve {
        return Err(ViewError::Empty);
    }
    let b = &value[..ve];
    let mut display = None;
    let mut quoted = false;
    let lt;
    if b[vs] == b'"' {
        let e = end_of_quoted(b, vs).ok_or(ViewError::UnterminatedQuote)?;
        display = Some(vs + 1..e - 1);
        quoted = true;
        let i = skip_lws(b, e);
        if b.get(i) != Some(&b'<') {
            return Err(ViewError::BadDisplayName);
        }
        lt = Some(i);
    } else {
        // A name-addr when '<' comes before any ';' (quotes skipped).
        lt = first_lt_before_semi(&b[vs..]).map(|p| p + vs);
        if let Some(p) = lt {
            let d = &b[vs..p];
            if !d.iter().all(|&c| is_token(c) || is_lws(c)) {
                return Err(ViewError::BadDisplayName);
            }
            let (ds, de) = trim_range(d);
            if ds < de {
                display = Some(vs + ds..vs + de);
            }
        }
    }
    let (uri, after, bracketed) = match lt {
        Some(p) => {
            let gt = crate::text::find_byte(&b[p..], b'>')
                .map(|x| x + p)
                .ok_or(ViewError::UnterminatedAngle)?;
            if b[p + 1..gt].iter().any(|&c| is_lws(c)) {
                return Err(ViewError::WhitespaceInAddrSpec);
            }
            (p + 1..gt, gt + 1, true)
        }
        None => {
            let end = find_top_level(b, vs, b';').unwrap_or(b.len());
            let (us, ue) = trim_range(&b[vs..end]);
            let u = &b[vs + us..vs + ue];
            if u.iter().any(|&c| is_lws(c)) {
                return Err(ViewError::WhitespaceInAddrSpec);
            }
            if u.iter().any(|&c| matches!(c, b'?' | b',')) {
                return Err(ViewError::UnbracketedUriWithHeaders);
            }
            (vs + us..vs + ue, end, false)
        }
    };
    let rest = skip_lws(b, after);
    if rest < b.len() && b[rest] != b';' {
        return Err(ViewError::TrailingGarbage);
    }
    if !crate::params::well_formed(&b[rest..]) {
        return Err(ViewError::BadParam);
    }
    Ok(Spans {
        display,
        quoted,
        uri,
        bracketed,
        params: rest..ve,
    })
}

/// Index of the first `<` outside quotes, if no `;` comes before it.
fn first_lt_before_semi(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'<' => return Some(i),
            b';' => return None,
            b'"' => i = end_of_quoted(b, i)?,
            _ => i += 1,
        }
    }
    None
}

/// delta-seconds; values too large for u32 saturate (RFC 3261 §20.19 leniency).
pub fn parse_delta_seconds(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(parse_u32(b).unwrap_or(u32::MAX))
}

/// qvalue `0[.ddd]` / `1[.000]` in thousandths.
pub fn parse_qvalue(b: &[u8]) -> Option<u16> {
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(p) => (&b[..p], &b[p + 1..]),
        None => (b, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f: u16 = 0;
    for i in 0..3 {
        f = f * 10 + frac.get(i).map_or(0, |&c| u16::from(c - b'0'));
    }
    match int[0] {
        b'0' => Some(f),
        b'1' if f == 0 => Some(1000),
        _ => None,
    }
}

/// One Contact value.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a view built on demand; boxing would allocate per value"
)]
pub enum Contact {
    /// `*` (REGISTER removal of all bindings).
    Wildcard,
    /// An address with parameters.
    Address(NameAddr),
}

impl Contact {
    /// Parse one Contact value.
    pub fn parse(v: &Bytes) -> Result<Contact, ViewError> {
        if trimmed(v)[..] == b"*"[..] {
            return Ok(Contact::Wildcard);
        }
        NameAddr::parse(v).map(Contact::Address)
    }

    /// Validate without building.
    pub fn check(v: &[u8]) -> Result<(), ViewError> {
        let (s, e) = trim_range(v);
        if &v[s..e] == b"*" {
            return Ok(());
        }
        NameAddr::check(v)
    }

    /// The address, unless wildcard.
    pub fn address(&self) -> Option<&NameAddr> {
        match self {
            Contact::Wildcard => None,
            Contact::Address(a) => Some(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_of_agrees_with_parse() {
        for v in [
            &b"<sip:a@b>;tag=1"[..],
            b"\"A\" <sip:a@b;tag=uri-param>;tag=x;foo",
            b"sip:a@b;tag=y",
            b"<sip:a@b>",
            b"<sip:a@b>;TAG=Up",
            b"<sip:a@b>;tag",
            b"<sip:a@[::1]:99999>;tag=bad-port",
            b"<sip:>;tag=bad-uri",
            b"<sip:a@b;tag=z",
            b"",
            b"tel:+1-555;tag=t",
        ] {
            let b = Bytes::copy_from_slice(v);
            let want = NameAddr::parse(&b).ok().and_then(|n| n.tag());
            assert_eq!(
                NameAddr::tag_of(&b),
                want,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    fn na(s: &[u8]) -> Result<NameAddr, ViewError> {
        NameAddr::parse(&Bytes::copy_from_slice(s))
    }

    #[test]
    fn forms() {
        let a = na(b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>;tag=98asjd8")
            .expect("ok");
        assert_eq!(a.display_name().as_deref(), Some(&b"J Rosenberg \\\""[..]));
        assert_eq!(a.tag().as_deref(), Some(&b"98asjd8"[..]));
        assert!(a.is_bracketed());

        let b = na(b"caller<sip:caller@example.com>;tag=323").expect("ok");
        assert_eq!(b.display_name().as_deref(), Some(&b"caller"[..]));

        let c = na(b"sip:user@example.com;tag=1").expect("ok");
        assert!(!c.is_bracketed());
        assert_eq!(c.tag().as_deref(), Some(&b"1"[..]));
        assert!(c.uri().params().is_empty());

        let d = na(b"Joe Bloggs <sip:j@b.example;transport=tcp>;expires=60;q=0.7;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1").expect("ok");
        assert_eq!(d.display_name().as_deref(), Some(&b"Joe Bloggs"[..]));
        assert_eq!(d.expires(), Some(60));
        assert_eq!(d.q_millis(), Some(700));
        assert_eq!(d.reg_id(), Some(1));
        assert_eq!(
            d.sip_instance().as_deref(),
            Some(&b"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"[..])
        );
        assert_eq!(
            d.uri().params().value("transport").as_deref(),
            Some(&b"tcp"[..])
        );
        let e = na(b"isbn:2983792873").expect("other scheme");
        assert!(e.display_name().is_none());
        assert!(matches!(
            Contact::parse(&Bytes::from_static(b" * ")),
            Ok(Contact::Wildcard)
        ));
    }

    #[test]
    fn invalid() {
        assert_eq!(
            na(b"\"Mr. J. User <sip:j.user@example.com>").err(),
            Some(ViewError::UnterminatedQuote)
        );
        assert_eq!(
            na(b"\"W\" < sip:t@example.org >").err(),
            Some(ViewError::WhitespaceInAddrSpec)
        );
        assert_eq!(
            na(b"Bell, Alexander <sip:a@example.com>").err(),
            Some(ViewError::BadDisplayName)
        );
        assert_eq!(
            na(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E").err(),
            Some(ViewError::UnbracketedUriWithHeaders)
        );
        assert_eq!(na(b"<sip:a@b").err(), Some(ViewError::UnterminatedAngle));
        assert_eq!(na(b"<sip:a@b>;;").err(), Some(ViewError::BadParam));
        assert_eq!(na(b"<sip:a@b> x").err(), Some(ViewError::TrailingGarbage));
        assert!(matches!(
            na(b"<sip:a@b:x>").err(),
            Some(ViewError::BadUri(_))
        ));
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"1.5"), None);
        assert_eq!(parse_qvalue(b"0.05"), Some(50));
        assert_eq!(parse_qvalue(b"0.0001"), None);
        assert_eq!(
            parse_delta_seconds(b"1000000000000000000000"),
            Some(u32::MAX)
        );
        assert_eq!(parse_delta_seconds(b"-1"), None);
    }
}
