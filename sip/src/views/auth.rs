//! Authorization, Proxy-Authorization, WWW-Authenticate, Proxy-Authenticate
//! (RFC 3261 §20.7, §20.27, §20.28, §20.44; RFC 7616 digest).

use bytes::Bytes;

use crate::error::ViewError;
use crate::params::unquote;
use crate::text::{end_of_quoted, eq_ic, is_lws, is_token, skip_lws, trimmed};

/// `scheme auth-param *(, auth-param)` or `scheme token68`. The same shape
/// serves credentials and challenges.
#[derive(Clone, Debug)]
pub struct Auth {
    scheme: Bytes,
    rest: Bytes,
}

impl Auth {
    /// Parse a credentials or challenge value.
    pub fn parse(value: &Bytes) -> Result<Auth, ViewError> {
        let v = trimmed(value);
        let b = &v[..];
        let mut i = 0;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == 0 {
            return Err(ViewError::BadToken);
        }
        let scheme = v.slice(..i);
        if i < b.len() && !is_lws(b[i]) {
            return Err(ViewError::BadToken);
        }
        let rest = v.slice(skip_lws(b, i)..);
        let a = Auth { scheme, rest };
        if a.token68().is_none() {
            for p in a.params() {
                let (n, _) = p?;
                if n.is_empty() {
                    return Err(ViewError::BadAuthParam);
                }
            }
        }
        Ok(a)
    }

    /// Scheme (`Digest`, `Basic`, or any other token).
    pub fn scheme(&self) -> &Bytes {
        &self.scheme
    }

    /// Whether the scheme is Digest (case-insensitive).
    pub fn is_digest(&self) -> bool {
        eq_ic(&self.scheme, b"digest")
    }

    /// The single token68 credential (`Basic dXNlcg==`), if that form was used.
    pub fn token68(&self) -> Option<Bytes> {
        let r = &self.rest[..];
        if r.is_empty() || r.contains(&b',') || r.contains(&b'"') {
            return None;
        }
        let eq = r.iter().position(|&c| c == b'=');
        match eq {
            // token68 may end in '=' padding only
            Some(p) if r[p..].iter().all(|&c| c == b'=') => Some(self.rest.clone()),
            None if r.iter().all(|&c| is_token(c) || c == b'/') => Some(self.rest.clone()),
            _ => None,
        }
    }

    /// Iterate `name=value` auth-params; values are returned with quotes removed.
    pub fn params(&self) -> AuthParams {
        AuthParams {
            raw: self.rest.clone(),
            pos: 0,
        }
    }

    /// Value of the auth-param `name` (case-insensitive), unquoted.
    pub fn param(&self, name: &str) -> Option<Bytes> {
        self.params()
            .filter_map(Result::ok)
            .find(|(n, _)| eq_ic(n, name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// Iterator over auth-params: `(name, unquoted value)`, or an error for a malformed element.
#[derive(Clone, Debug)]
pub struct AuthParams {
    raw: Bytes,
    pos: usize,
}

impl Iterator for AuthParams {
    type Item = Result<(Bytes, Bytes), ViewError>;
    fn next(&mut self) -> Option<Self::Item> {
        let b = &self.raw[..];
        let mut i = skip_lws(b, self.pos);
        if i >= b.len() {
            return None;
        }
        let ns = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        let name = self.raw.slice(ns..i);
        let j = skip_lws(b, i);
        if name.is_empty() || b.get(j) != Some(&b'=') {
            self.pos = b.len();
            return Some(Err(ViewError::BadAuthParam));
        }
        let vs = skip_lws(b, j + 1);
        let ve = if b.get(vs) == Some(&b'"') {
            match end_of_quoted(b, vs) {
                Some(e) => e,
                None => {
                    self.pos = b.len();
                    return Some(Err(ViewError::UnterminatedQuote));
                }
            }
        } else {
            let mut e = vs;
            while e < b.len() && b[e] != b',' && !is_lws(b[e]) {
                e += 1;
            }
            e
        };
        let value = unquote(&self.raw.slice(vs..ve));
        let k = skip_lws(b, ve);
        if k < b.len() && b[k] != b',' {
            self.pos = b.len();
            return Some(Err(ViewError::BadAuthParam));
        }
        self.pos = k + 1;
        Some(Ok((name, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_and_others() {
        let a = Auth::parse(&Bytes::from_static(
            b"Digest username=\"bob\", realm=\"biloxi.com\",nonce=\"dcd98b, 7102\",uri=\"sip:bob@biloxi.com\", qop=auth, nc=00000001, response=\"6629fae49393a05397450978507c4ef1\"",
        ))
        .expect("ok");
        assert!(a.is_digest());
        assert_eq!(a.param("USERNAME").as_deref(), Some(&b"bob"[..]));
        assert_eq!(a.param("nonce").as_deref(), Some(&b"dcd98b, 7102"[..]));
        assert_eq!(a.param("qop").as_deref(), Some(&b"auth"[..]));
        assert_eq!(a.param("nc").as_deref(), Some(&b"00000001"[..]));
        let o = Auth::parse(&Bytes::from_static(
            b"NoOneKnowsThisScheme opaque-data=here",
        ))
        .expect("ok");
        assert_eq!(o.scheme(), &b"NoOneKnowsThisScheme"[..]);
        assert_eq!(o.param("opaque-data").as_deref(), Some(&b"here"[..]));
        let b = Auth::parse(&Bytes::from_static(b"Basic dXNlcjpwYXNz==")).expect("ok");
        assert_eq!(b.token68().as_deref(), Some(&b"dXNlcjpwYXNz=="[..]));
        assert!(Auth::parse(&Bytes::from_static(b"Digest realm=\"x")).is_err());
        assert!(Auth::parse(&Bytes::from_static(b"Digest a=1 b=2")).is_err());
    }
}
