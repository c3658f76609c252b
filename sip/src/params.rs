//! `;name=value` parameter lists, kept raw and iterated on demand.

use bytes::Bytes;

use crate::text::{end_of_quoted, eq_ic, is_lws, is_token, trim_range};

/// One parameter: name and optional value, both slices of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Name as written.
    pub name: Bytes,
    /// Value as written (quotes included for quoted strings), if `=` was present.
    pub value: Option<Bytes>,
}

impl Param {
    /// The value without surrounding double quotes (escapes are left as written).
    pub fn unquoted_value(&self) -> Option<Bytes> {
        self.value.as_ref().map(unquote)
    }
}

/// Strip one level of surrounding double quotes, if present.
pub(crate) fn unquote(v: &Bytes) -> Bytes {
    if v.len() >= 2 && v.first() == Some(&b'"') && v.last() == Some(&b'"') {
        v.slice(1..v.len() - 1)
    } else {
        v.clone()
    }
}

/// A raw parameter list: empty, or starting with `;`. Iteration allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    raw: Bytes,
}

impl Params {
    /// Wrap a raw list (must be empty or start with `;` after optional LWS).
    pub fn new(raw: Bytes) -> Self {
        Params { raw }
    }

    /// The list as written.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.raw.iter().all(|&c| is_lws(c))
    }

    /// Iterate over the parameters in order.
    pub fn iter(&self) -> ParamIter {
        ParamIter {
            raw: self.raw.clone(),
            pos: 0,
        }
    }

    /// First parameter named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<Param> {
        raw_params(&self.raw)
            .find(|(n, _)| eq_ic(&self.raw[n.clone()], name.as_bytes()))
            .map(|(n, v)| Param {
                name: self.raw.slice(n),
                value: v.map(|v| self.raw.slice(v)),
            })
    }

    /// Whether a parameter named `name` is present (with or without value).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The (unquoted) value of `name`, if present with a value.
    pub fn value(&self, name: &str) -> Option<Bytes> {
        self.get(name).and_then(|p| p.unquoted_value())
    }

    /// Whether every parameter has a non-empty token name and a well-formed value.
    pub(crate) fn well_formed(&self) -> bool {
        well_formed(&self.raw)
    }
}

/// Whether every parameter of the raw list `b` has a non-empty token name
/// and a well-formed value (token, host-ish, or a complete quoted string).
/// One pass ([`check_each`], which a test compares with iterating
/// [`raw_params`] and checking each with [`param_well_formed`]).
pub(crate) fn well_formed(b: &[u8]) -> bool {
    check_each(b, |_, _| true)
}

/// One parameter: a non-empty token name; a value, when present, that is a
/// token / host-ish run or one complete quoted string. (The reference that
/// [`check_each`] is tested against.)
#[cfg(test)]
fn param_well_formed(name: &[u8], value: Option<&[u8]>) -> bool {
    crate::text::all_token(name)
        && match value {
            None => true,
            Some(v) => {
                if v.first() == Some(&b'"') {
                    end_of_quoted(v, 0) == Some(v.len())
                } else {
                    !v.is_empty()
                        && v.iter()
                            .all(|&c| crate::text::is_token(c) || matches!(c, b':' | b'[' | b']'))
                }
            }
        }
}

/// One pass over `;name[=value]` parameters with the checks of
/// [`raw_params`] + [`param_well_formed`], calling `each(name, value)` for
/// every parameter; `false` at the first malformed one or when `each`
/// returns `false`. (What the parser runs on a request's top Via.)
pub(crate) fn check_each(b: &[u8], mut each: impl FnMut(&[u8], Option<&[u8]>) -> bool) -> bool {
    let n = b.len();
    let mut i = crate::text::skip_lws(b, 0);
    while i < n {
        if b[i] == b';' {
            i = crate::text::skip_lws(b, i + 1);
        }
        let ns = i;
        while i < n && is_token(b[i]) {
            i += 1;
        }
        if i == ns {
            return false;
        }
        let name = &b[ns..i];
        i = crate::text::skip_lws(b, i);
        let mut value = None;
        if i < n && b[i] == b'=' {
            i = crate::text::skip_lws(b, i + 1);
            let vs = i;
            if i < n && b[i] == b'"' {
                match end_of_quoted(b, i) {
                    Some(e) => i = e,
                    None => return false,
                }
            } else {
                while i < n && (is_token(b[i]) || matches!(b[i], b':' | b'[' | b']')) {
                    i += 1;
                }
                if i == vs {
                    return false;
                }
            }
            value = Some(&b[vs..i]);
            i = crate::text::skip_lws(b, i);
        }
        if i < n && b[i] != b';' {
            return false;
        }
        if !each(name, value) {
            return false;
        }
    }
    true
}

type Span = core::ops::Range<usize>;

/// Borrowed iteration: trimmed `(name, value)` ranges into `b`.
pub(crate) fn raw_params(b: &[u8]) -> impl Iterator<Item = (Span, Option<Span>)> + '_ {
    let mut pos = 0usize;
    core::iter::from_fn(move || {
        let mut i = pos;
        while i < b.len() && is_lws(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            pos = b.len();
            return None;
        }
        if b[i] == b';' {
            i += 1;
        }
        let start = i;
        let mut eq = None;
        while i < b.len() && b[i] != b';' {
            match b[i] {
                b'"' => i = end_of_quoted(b, i).unwrap_or(b.len()),
                b'=' if eq.is_none() => {
                    eq = Some(i);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        pos = i;
        let trim = |s: usize, e: usize| {
            let (a, z) = trim_range(&b[s..e]);
            s + a..s + z
        };
        Some(match eq {
            Some(e) => (trim(start, e), Some(trim(e + 1, i))),
            None => (trim(start, i), None),
        })
    })
}

/// Iterator over [`Params`].
#[derive(Clone, Debug)]
pub struct ParamIter {
    raw: Bytes,
    pos: usize,
}

impl Iterator for ParamIter {
    type Item = Param;
    fn next(&mut self) -> Option<Param> {
        let rest = &self.raw[self.pos..];
        let mut it = raw_params(rest);
        let (n, v) = it.next()?;
        let base = self.pos;
        // Advance past this element: the next ';' at or after the name/value end.
        let end = v.as_ref().map_or(n.end, |v| v.end);
        let skip = raw_end(rest, end);
        self.pos = base + skip;
        Some(Param {
            name: self.raw.slice(base + n.start..base + n.end),
            value: v.map(|v| self.raw.slice(base + v.start..base + v.end)),
        })
    }
}

/// Index of the `;` ending the element whose content ends at `from` (or the end).
fn raw_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < b.len() && b[i] != b';' {
        if b[i] == b'"' {
            i = end_of_quoted(b, i).unwrap_or(b.len());
        } else {
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterate_and_lookup() {
        let p = Params::new(Bytes::from_static(
            b" ; tag = abc ;lr;+sip.instance=\"<urn:uuid:1;2>\";Q=0.5",
        ));
        let v: Vec<Param> = p.iter().collect();
        assert_eq!(v.len(), 4);
        assert_eq!(p.value("TAG").as_deref(), Some(&b"abc"[..]));
        assert!(p.contains("lr"));
        assert_eq!(p.get("lr").and_then(|x| x.value), None);
        assert_eq!(
            p.value("+sip.instance").as_deref(),
            Some(&b"<urn:uuid:1;2>"[..])
        );
        assert_eq!(p.value("q").as_deref(), Some(&b"0.5"[..]));
        assert!(p.well_formed());
        assert!(!Params::new(Bytes::from_static(b";;a")).well_formed());
        assert!(Params::new(Bytes::new()).is_empty());
    }

    /// The one-pass checker agrees with iterate-then-check on every short
    /// string over the characters that matter.
    #[test]
    fn check_each_agrees_with_raw_params() {
        let alphabet = b";= \"a:\\,";
        let k = alphabet.len();
        for len in 0..=6u32 {
            for mut code in 0..k.pow(len) {
                let mut s = Vec::new();
                for _ in 0..len {
                    s.push(alphabet[code % k]);
                    code /= k;
                }
                let mut seen_old = Vec::new();
                let old = raw_params(&s).all(|(n, v)| {
                    let (name, value) = (&s[n], v.map(|v| &s[v]));
                    seen_old.push((name.to_vec(), value.map(<[u8]>::to_vec)));
                    param_well_formed(name, value)
                });
                let mut seen_new = Vec::new();
                let new = check_each(&s, |name, value| {
                    seen_new.push((name.to_vec(), value.map(<[u8]>::to_vec)));
                    true
                });
                assert_eq!(old, new, "{:?}", String::from_utf8_lossy(&s));
                if old {
                    assert_eq!(seen_old, seen_new, "{:?}", String::from_utf8_lossy(&s));
                }
            }
        }
    }
}
