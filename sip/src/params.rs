//! `;name=value` parameter lists, kept raw and iterated on demand.

use bytes::Bytes;

use crate::text::{end_of_quoted, eq_ic, is_lws, trimmed};

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
        self.iter().find(|p| eq_ic(&p.name, name.as_bytes()))
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
        self.iter().all(|p| {
            crate::text::all_token(&p.name)
                && match &p.value {
                    None => true,
                    Some(v) => {
                        if v.first() == Some(&b'"') {
                            end_of_quoted(v, 0) == Some(v.len())
                        } else {
                            !v.is_empty()
                                && v.iter().all(|&c| {
                                    crate::text::is_token(c) || matches!(c, b':' | b'[' | b']')
                                })
                        }
                    }
                }
        })
    }
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
        let b = &self.raw[..];
        let mut i = self.pos;
        while i < b.len() && is_lws(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            self.pos = b.len();
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
        self.pos = i;
        let (name, value) = match eq {
            Some(e) => (
                trimmed(&self.raw.slice(start..e)),
                Some(trimmed(&self.raw.slice(e + 1..i))),
            ),
            None => (trimmed(&self.raw.slice(start..i)), None),
        };
        Some(Param { name, value })
    }
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
}
