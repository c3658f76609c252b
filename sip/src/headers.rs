//! Raw, ordered header fields with typed views on demand.

use bytes::Bytes;

use crate::error::BuildError;
use crate::header_name::HeaderName;
use crate::text::{CommaValues, all_token, trimmed};

/// One header field as received (or built): its name, the whole raw line
/// (name, colon, value, folding; without the final CRLF) and the value slice.
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
    line: Bytes,
    value: Bytes,
}

impl Header {
    pub(crate) fn from_parts(name: HeaderName, line: Bytes, value: Bytes) -> Self {
        Header { name, line, value }
    }

    /// Build `Name: value` with the canonical name spelling. Allocates one buffer.
    /// Fails if the value contains CR or LF (header injection).
    pub fn new(name: HeaderName, value: &[u8]) -> Result<Header, BuildError> {
        if !crate::text::safe_header_value(value) {
            return Err(BuildError::InvalidHeaderValue(name));
        }
        let n = name.as_bytes();
        if !all_token(n) {
            return Err(BuildError::InvalidHeaderName);
        }
        let mut line = Vec::with_capacity(n.len() + 2 + value.len());
        line.extend_from_slice(n);
        line.extend_from_slice(b": ");
        line.extend_from_slice(value);
        let line = Bytes::from(line);
        let value = trimmed(&line.slice(n.len() + 2..));
        Ok(Header { name, line, value })
    }

    /// The name (compact forms already mapped to the full name).
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The value: after the colon, LWS-trimmed; may contain folding (CRLF + WSP).
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The raw line as it will be printed (without CRLF).
    pub fn raw_line(&self) -> &Bytes {
        &self.line
    }

    /// The values of this field: split at top-level commas for list-valued
    /// names ([`HeaderName::is_list`]), otherwise the whole value once.
    pub fn values(&self) -> CommaValues {
        if self.name.is_list() {
            CommaValues::new(self.value.clone())
        } else {
            CommaValues::whole(self.value.clone())
        }
    }
}

/// Header fields in message order.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    list: Vec<Header>,
}

impl Headers {
    pub(crate) fn from_vec(list: Vec<Header>) -> Self {
        Headers { list }
    }

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No header fields.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// All fields in order.
    pub fn iter(&self) -> core::slice::Iter<'_, Header> {
        self.list.iter()
    }

    /// The field at `index`.
    pub fn at(&self, index: usize) -> Option<&Header> {
        self.list.get(index)
    }

    /// First field named `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&Header> {
        self.list.iter().find(|h| &h.name == name)
    }

    /// Value of the first field named `name`.
    pub fn get_value(&self, name: &HeaderName) -> Option<&Bytes> {
        self.get(name).map(|h| &h.value)
    }

    /// All fields named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a Header> + 'a {
        let name = name.clone();
        self.list.iter().filter(move |h| h.name == name)
    }

    /// Every value of `name`: list-valued fields are split at top-level commas,
    /// others yield their whole value. In message order.
    pub fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = Bytes> + 'a {
        self.get_all(name).flat_map(|h| h.values())
    }

    /// Number of fields named `name`.
    pub fn count(&self, name: &HeaderName) -> usize {
        self.get_all(name).count()
    }

    /// Index of the first field named `name`.
    pub fn position(&self, name: &HeaderName) -> Option<usize> {
        self.list.iter().position(|h| &h.name == name)
    }

    /// Append a field.
    pub fn push(&mut self, h: Header) {
        self.list.push(h);
    }

    /// Insert a field at `index` (clamped to the end).
    pub fn insert(&mut self, index: usize, h: Header) {
        let i = index.min(self.list.len());
        self.list.insert(i, h);
    }

    /// Remove the field at `index`.
    pub fn remove(&mut self, index: usize) -> Option<Header> {
        (index < self.list.len()).then(|| self.list.remove(index))
    }

    /// Remove all fields named `name`; returns how many.
    pub fn remove_all(&mut self, name: &HeaderName) -> usize {
        let before = self.list.len();
        self.list.retain(|h| &h.name != name);
        before - self.list.len()
    }

    /// Keep only fields for which `f` is true.
    pub fn retain(&mut self, f: impl FnMut(&Header) -> bool) {
        self.list.retain(f);
    }

    /// Replace the first field with `h.name()` in place (dropping later ones),
    /// or append when absent.
    pub fn set(&mut self, h: Header) {
        match self.position(&h.name) {
            Some(i) => {
                let name = h.name.clone();
                self.list[i] = h;
                let mut seen = 0usize;
                self.list.retain(|x| {
                    if x.name == name {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => self.list.push(h),
        }
    }

    /// Insert a Via value above all others (a new first Via field).
    pub fn push_top_via(&mut self, value: &[u8]) -> Result<(), BuildError> {
        let h = Header::new(HeaderName::Via, value)?;
        let i = self.position(&HeaderName::Via).unwrap_or(0);
        self.list.insert(i, h);
        Ok(())
    }

    /// Remove the topmost Via value (rewriting the first Via field if it holds
    /// several); returns the removed value.
    pub fn pop_top_via(&mut self) -> Option<Bytes> {
        let i = self.position(&HeaderName::Via)?;
        let mut vals = self.list[i].values();
        let first = vals.next()?;
        let rest: Vec<Bytes> = vals.collect();
        if rest.is_empty() {
            self.list.remove(i);
        } else {
            let mut v = Vec::new();
            for (k, r) in rest.iter().enumerate() {
                if k > 0 {
                    v.extend_from_slice(b", ");
                }
                v.extend_from_slice(r);
            }
            // The remaining values came from a valid field, so they carry no CR/LF
            // except folding; fold-free rewrite keeps them on one line.
            let v: Vec<u8> = v
                .into_iter()
                .map(|c| if c == b'\r' || c == b'\n' { b' ' } else { c })
                .collect();
            if let Ok(h) = Header::new(HeaderName::Via, &v) {
                self.list[i] = h;
            }
        }
        Some(first)
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.list.iter().map(|h| h.line.len() + 2).sum()
    }

    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        for h in &self.list {
            out.extend_from_slice(&h.line);
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = core::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_mutate() {
        let mut h = Headers::new();
        h.push(
            Header::new(
                HeaderName::Via,
                b"SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b",
            )
            .expect("ok"),
        );
        h.push(Header::new(HeaderName::from_static("X-A"), b"1").expect("ok"));
        assert_eq!(h.values(&HeaderName::Via).count(), 2);
        h.push_top_via(b"SIP/2.0/TCP c;branch=z9hG4bK2")
            .expect("ok");
        assert_eq!(h.values(&HeaderName::Via).count(), 3);
        assert_eq!(
            h.pop_top_via().as_deref(),
            Some(&b"SIP/2.0/TCP c;branch=z9hG4bK2"[..])
        );
        assert_eq!(
            h.pop_top_via().as_deref(),
            Some(&b"SIP/2.0/UDP a;branch=z9hG4bK1"[..])
        );
        assert_eq!(
            h.at(0).map(|x| &x.raw_line()[..]),
            Some(&b"Via: SIP/2.0/UDP b"[..])
        );
        h.set(Header::new(HeaderName::from_static("x-a"), b"2").expect("ok"));
        assert_eq!(
            h.get_value(&HeaderName::from_static("X-A")).map(|b| &b[..]),
            Some(&b"2"[..])
        );
        assert_eq!(h.remove_all(&HeaderName::Via), 1);
        assert_eq!(h.len(), 1);
        assert!(Header::new(HeaderName::Subject, b"a\r\nVia: x").is_err());
    }
}
