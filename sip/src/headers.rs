//! Raw, ordered header fields with typed views on demand.
//!
//! A parsed message keeps its header fields as compact records: the name's
//! id and byte offsets into the message's one buffer, in an inline array of
//! [`INLINE_FIELDS`] records (more spill to the heap). No `Bytes` slice is
//! taken until someone asks for a field ([`Headers::iter`], [`Headers::get`],
//! [`Headers::values`]...), so parsing and forwarding an unchanged message
//! neither allocates nor touches the buffer's reference count per field.
//! A field added by mutation keeps its own buffer next to the message's.

use bytes::Bytes;

use crate::error::BuildError;
use crate::header_name::{HeaderName, OTHER_ID};
use crate::text::{CommaValues, all_token, trim_range};

/// How many header fields a message holds without a heap allocation.
pub const INLINE_FIELDS: usize = 32;

/// One header field as received (or built): its name, the whole raw line
/// (name, colon, value, folding; without the final CRLF) and the value slice.
///
/// A `Header` is an owned view: [`Headers`] hands them out on demand (slices
/// of the message buffer, reference-count increments only).
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
    line: Bytes,
    value: Bytes,
    /// Where `value` starts inside `line` (it ends at the line's end
    /// without trailing white space).
    value_start: u32,
}

impl Header {
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
        let (vs, ve) = trim_range(&line[n.len() + 2..]);
        let (vs, ve) = (n.len() + 2 + vs, n.len() + 2 + ve);
        let Ok(value_start) = u32::try_from(vs) else {
            return Err(BuildError::InvalidHeaderValue(name));
        };
        let line = Bytes::from(line);
        let value = line.slice(vs..ve);
        Ok(Header {
            name,
            line,
            value,
            value_start,
        })
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

/// A compact header record (16 bytes): offsets into one of the buffers of
/// [`Headers`]. The value runs from `value_start` to the end of the line
/// without trailing white space (how both the parser and [`Header::new`]
/// trim it); the raw name of an `Other` field is found again from the colon
/// when someone asks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Field {
    line: (u32, u32),
    value_start: u32,
    /// 0: the message buffer; `k > 0`: `extra[k - 1]`.
    src: u16,
    /// [`HeaderName`] id, [`OTHER_ID`] for unknown names.
    id: u8,
}

impl Field {
    /// A field of the message buffer. Offsets are absolute; the caller
    /// guarantees `line.0 <= value_start <= line.1`, that the value ends at
    /// the line's end without trailing LWS, and that the buffer is at most
    /// `u32::MAX` bytes long.
    pub(crate) fn parsed(id: u8, line: (u32, u32), value_start: u32) -> Self {
        Field {
            line,
            value_start,
            src: 0,
            id,
        }
    }

    /// The name id.
    pub(crate) fn id(&self) -> u8 {
        self.id
    }

    /// Value range (absolute) in the record's buffer `b`.
    fn value_range(&self, b: &[u8]) -> (usize, usize) {
        let s = self.value_start as usize;
        let mut e = (self.line.1 as usize).min(b.len());
        while e > s && crate::text::is_lws(b[e - 1]) {
            e -= 1;
        }
        (s.min(e), e)
    }

    /// The value, for a record of the message buffer `b`.
    pub(crate) fn value_in<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        let (s, e) = self.value_range(b);
        &b[s..e]
    }
}

/// Length of the raw name at the start of `line` (before the colon, without
/// trailing SP/HT).
fn raw_name_len(line: &[u8]) -> usize {
    let mut ne = crate::text::find_byte(line, b':').unwrap_or(line.len());
    while ne > 0 && matches!(line[ne - 1], b' ' | b'\t') {
        ne -= 1;
    }
    ne
}

/// A name to look for, resolved once: the id of a known name, or the
/// spelling of an `Other` one.
struct Matcher {
    id: u8,
    other: Option<Bytes>,
}

impl Matcher {
    fn new(name: &HeaderName) -> Self {
        match name {
            HeaderName::Other(n) => Matcher {
                id: OTHER_ID,
                other: Some(n.clone()),
            },
            known => Matcher {
                id: known.id(),
                other: None,
            },
        }
    }
}

/// The records: inline up to [`INLINE_FIELDS`], then all on the heap.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    len: usize,
    inline: [Field; INLINE_FIELDS],
    /// Used instead of `inline` once more than `INLINE_FIELDS` were stored.
    heap: Option<Vec<Field>>,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            len: 0,
            inline: [Field::default(); INLINE_FIELDS],
            heap: None,
        }
    }
}

impl Fields {
    pub(crate) fn as_slice(&self) -> &[Field] {
        match &self.heap {
            Some(v) => v,
            None => &self.inline[..self.len],
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, f: Field) {
        match &mut self.heap {
            Some(v) => v.push(f),
            None => match self.inline.get_mut(self.len) {
                Some(slot) => {
                    *slot = f;
                    self.len += 1;
                }
                None => self.insert(self.len, f),
            },
        }
    }

    fn insert(&mut self, index: usize, f: Field) {
        if let Some(v) = &mut self.heap {
            let i = index.min(v.len());
            v.insert(i, f);
            return;
        }
        let i = index.min(self.len);
        if self.len < INLINE_FIELDS {
            self.inline.copy_within(i..self.len, i + 1);
            self.inline[i] = f;
            self.len += 1;
        } else {
            let mut v = Vec::with_capacity(INLINE_FIELDS * 2);
            v.extend_from_slice(&self.inline[..self.len]);
            v.insert(i, f);
            self.heap = Some(v);
            self.len = 0;
        }
    }

    fn remove(&mut self, index: usize) -> Option<Field> {
        if let Some(v) = &mut self.heap {
            return (index < v.len()).then(|| v.remove(index));
        }
        if index >= self.len {
            return None;
        }
        let f = self.inline[index];
        self.inline.copy_within(index + 1..self.len, index);
        self.len -= 1;
        Some(f)
    }

    fn set(&mut self, index: usize, f: Field) {
        let slot = match &mut self.heap {
            Some(v) => v.get_mut(index),
            None => self.inline[..self.len].get_mut(index),
        };
        if let Some(slot) = slot {
            *slot = f;
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Field) -> bool) {
        if let Some(v) = &mut self.heap {
            v.retain(keep);
            return;
        }
        let mut w = 0;
        for r in 0..self.len {
            let f = self.inline[r];
            if keep(&f) {
                self.inline[w] = f;
                w += 1;
            }
        }
        self.len = w;
    }
}

/// Header fields in message order.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    store: Store,
    fields: Fields,
}

/// The buffers records point into.
#[derive(Clone, Debug, Default)]
struct Store {
    /// The message buffer the parsed records point into.
    buf: Bytes,
    /// Buffers of fields added by mutation (one line each).
    extra: Vec<Bytes>,
}

impl Headers {
    pub(crate) fn from_parsed(buf: Bytes, fields: Fields) -> Self {
        Headers {
            store: Store {
                buf,
                extra: Vec::new(),
            },
            fields,
        }
    }

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of a record, without taking a `Bytes` slice.
    pub(crate) fn value_of(&self, f: &Field) -> &[u8] {
        self.store.value_of(f)
    }

    fn line_of(&self, f: &Field) -> &[u8] {
        self.store.line_of(f)
    }

    fn is(&self, f: &Field, name: &Matcher) -> bool {
        self.store.is(f, name)
    }

    fn header(&self, f: &Field) -> Header {
        self.store.header(f)
    }

    fn field_for(&mut self, h: Header) -> Field {
        self.store.field_for(h, &mut self.fields)
    }
}

impl Store {
    fn source(&self, f: &Field) -> &[u8] {
        match f.src {
            0 => &self.buf,
            k => self
                .extra
                .get(usize::from(k) - 1)
                .map_or(&[][..], |b| &b[..]),
        }
    }

    fn source_bytes(&self, f: &Field) -> Bytes {
        match f.src {
            0 => self.buf.clone(),
            k => self
                .extra
                .get(usize::from(k) - 1)
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn slice(b: &[u8], r: (u32, u32)) -> &[u8] {
        b.get(r.0 as usize..r.1 as usize).unwrap_or(&[])
    }

    fn value_of(&self, f: &Field) -> &[u8] {
        f.value_in(self.source(f))
    }

    fn line_of(&self, f: &Field) -> &[u8] {
        Self::slice(self.source(f), f.line)
    }

    fn is(&self, f: &Field, name: &Matcher) -> bool {
        match &name.other {
            None => f.id == name.id,
            Some(n) => {
                if f.id != OTHER_ID {
                    return false;
                }
                let line = self.line_of(f);
                line[..raw_name_len(line)].eq_ignore_ascii_case(n)
            }
        }
    }

    fn header(&self, f: &Field) -> Header {
        let src = self.source_bytes(f);
        let len = src.len();
        let le = (f.line.1 as usize).min(len);
        let ls = (f.line.0 as usize).min(le);
        let (vs, ve) = f.value_range(&src);
        let (vs, ve) = (vs.clamp(ls, le), ve.clamp(ls, le));
        let name = match HeaderName::from_id(f.id) {
            Some(n) => n,
            None => HeaderName::Other(src.slice(ls..ls + raw_name_len(&src[ls..le]))),
        };
        Header {
            name,
            line: src.slice(ls..le),
            value: src.slice(vs..ve),
            value_start: u32::try_from(vs - ls).unwrap_or(0),
        }
    }

    /// Store `h`'s buffer and make its record. `fields` are re-pointed when
    /// the buffers have to be merged (after `u16::MAX` added fields).
    fn field_for(&mut self, h: Header, fields: &mut Fields) -> Field {
        let id = h.name.id();
        self.field_for_line(h.line, h.value_start, id, fields)
    }

    /// [`Store::field_for`] from a whole line (`Name: value`) whose value starts at
    /// `value_start`.
    fn field_for_line(
        &mut self,
        line: Bytes,
        value_start: u32,
        id: u8,
        fields: &mut Fields,
    ) -> Field {
        if self.extra.len() >= usize::from(u16::MAX) {
            self.merge_extra(fields);
        }
        let len = u32::try_from(line.len()).unwrap_or(u32::MAX);
        self.extra.push(line);
        Field {
            line: (0, len),
            value_start: value_start.min(len),
            src: u16::try_from(self.extra.len()).unwrap_or(u16::MAX),
            id,
        }
    }

    /// Copy the lines of every live added field into one buffer (the only
    /// `extra` afterwards) and re-point their records.
    fn merge_extra(&mut self, fields: &mut Fields) {
        let mut merged = Vec::new();
        let mut moved = Vec::new();
        for f in fields.as_slice() {
            if f.src == 0 {
                moved.push(*f);
                continue;
            }
            let line = self.line_of(f);
            let base = merged.len();
            merged.extend_from_slice(line);
            let start = f.value_start.saturating_sub(f.line.0) as usize;
            let at = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
            moved.push(Field {
                line: (at(base), at(merged.len())),
                value_start: at(base + start.min(line.len())),
                src: 1,
                id: f.id,
            });
        }
        self.extra = vec![Bytes::from(merged)];
        for (i, f) in moved.into_iter().enumerate() {
            fields.set(i, f);
        }
    }
}

impl Headers {
    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.fields.as_slice().len()
    }

    /// No header fields.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All fields in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            headers: self,
            inner: self.fields.as_slice().iter(),
        }
    }

    /// The field at `index`.
    pub fn at(&self, index: usize) -> Option<Header> {
        self.fields.as_slice().get(index).map(|f| self.header(f))
    }

    /// First field named `name`.
    pub fn get(&self, name: &HeaderName) -> Option<Header> {
        let name = &Matcher::new(name);
        self.fields
            .as_slice()
            .iter()
            .find(|f| self.is(f, name))
            .map(|f| self.header(f))
    }

    /// Value of the first field named `name`.
    pub fn get_value(&self, name: &HeaderName) -> Option<Bytes> {
        self.get(name).map(|h| h.value)
    }

    /// Value of the first field named `name`, borrowed (no `Bytes` slice taken).
    pub fn get_raw_value(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = &Matcher::new(name);
        self.fields
            .as_slice()
            .iter()
            .find(|f| self.is(f, name))
            .map(|f| self.value_of(f))
    }

    /// The fields named one of `names` (known names only: an `Other` name never matches), in
    /// message order, with their values borrowed: no `Bytes` slice is taken, unlike
    /// [`Headers::iter`], which makes an owned [`Header`] of every field.
    pub fn select<'a>(
        &'a self,
        names: &'a [HeaderName],
    ) -> impl Iterator<Item = (&'a HeaderName, &'a [u8])> + 'a {
        self.fields.as_slice().iter().filter_map(move |f| {
            if f.id == OTHER_ID {
                return None;
            }
            names
                .iter()
                .find(|n| n.id() == f.id)
                .map(|n| (n, self.value_of(f)))
        })
    }

    /// Append a record of the message buffer (the parser).
    #[inline]
    pub(crate) fn push_field(&mut self, f: Field) {
        self.fields.push(f);
    }

    /// All records, in order.
    pub(crate) fn fields(&self) -> &[Field] {
        self.fields.as_slice()
    }

    /// All fields named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = Header> + 'a {
        let name = Matcher::new(name);
        self.fields
            .as_slice()
            .iter()
            .filter(move |f| self.is(f, &name))
            .map(|f| self.header(f))
    }

    /// Every value of `name`: list-valued fields are split at top-level commas,
    /// others yield their whole value. In message order.
    pub fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = Bytes> + 'a {
        self.get_all(name).flat_map(|h| h.values())
    }

    /// Number of fields named `name`.
    pub fn count(&self, name: &HeaderName) -> usize {
        let name = &Matcher::new(name);
        self.fields
            .as_slice()
            .iter()
            .filter(|f| self.is(f, name))
            .count()
    }

    /// Index of the first field named `name`.
    pub fn position(&self, name: &HeaderName) -> Option<usize> {
        let name = &Matcher::new(name);
        self.fields.as_slice().iter().position(|f| self.is(f, name))
    }

    /// Append a field.
    pub fn push(&mut self, h: Header) {
        let f = self.field_for(h);
        self.fields.push(f);
    }

    /// Insert a field at `index` (clamped to the end).
    pub fn insert(&mut self, index: usize, h: Header) {
        let f = self.field_for(h);
        self.fields.insert(index, f);
    }

    /// Replaces the field at `index` (nothing happens beyond its end) with `line`, a whole
    /// `Name: value` line the caller has built and checked as [`Header::new`] does, whose value
    /// starts at `value_start`; `id` is the name's [`HeaderName::id`]. One buffer, no [`Header`].
    pub(crate) fn replace_line(&mut self, index: usize, id: u8, line: Bytes, value_start: u32) {
        if index >= self.len() {
            return;
        }
        let f = self
            .store
            .field_for_line(line, value_start, id, &mut self.fields);
        self.fields.set(index, f);
    }

    /// Remove the field at `index`.
    pub fn remove(&mut self, index: usize) -> Option<Header> {
        let f = self.fields.remove(index)?;
        Some(self.header(&f))
    }

    /// Remove all fields named `name`; returns how many.
    pub fn remove_all(&mut self, name: &HeaderName) -> usize {
        let before = self.len();
        let name = &Matcher::new(name);
        let store = &self.store;
        self.fields.retain(|f| !store.is(f, name));
        before - self.len()
    }

    /// Keep only fields for which `f` is true.
    pub fn retain(&mut self, mut f: impl FnMut(&Header) -> bool) {
        let store = &self.store;
        self.fields.retain(|r| f(&store.header(r)));
    }

    /// Replace the first field with `h.name()` in place (dropping later ones),
    /// or append when absent.
    pub fn set(&mut self, h: Header) {
        match self.position(&h.name) {
            Some(i) => {
                let name = Matcher::new(&h.name);
                let f = self.field_for(h);
                self.fields.set(i, f);
                let store = &self.store;
                let mut k = 0usize;
                self.fields.retain(|r| {
                    k += 1;
                    k <= i + 1 || !store.is(r, &name)
                });
            }
            None => self.push(h),
        }
    }

    /// Insert a Via value above all others (a new first Via field).
    pub fn push_top_via(&mut self, value: &[u8]) -> Result<(), BuildError> {
        let h = Header::new(HeaderName::Via, value)?;
        let i = self.position(&HeaderName::Via).unwrap_or(0);
        self.insert(i, h);
        Ok(())
    }

    /// Remove the topmost Via value (rewriting the first Via field if it holds
    /// several); returns the removed value.
    pub fn pop_top_via(&mut self) -> Option<Bytes> {
        let i = self.position(&HeaderName::Via)?;
        let field = self.at(i)?;
        let mut vals = field.values();
        let first = vals.next()?;
        let rest: Vec<Bytes> = vals.collect();
        if rest.is_empty() {
            self.fields.remove(i);
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
                let f = self.field_for(h);
                self.fields.set(i, f);
            }
        }
        Some(first)
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.fields
            .as_slice()
            .iter()
            .map(|f| self.line_of(f).len() + 2)
            .sum()
    }

    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        for f in self.fields.as_slice() {
            out.extend_from_slice(self.line_of(f));
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Iterator over the fields of [`Headers`], in order.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    headers: &'a Headers,
    inner: core::slice::Iter<'a, Field>,
}

impl Iterator for Iter<'_> {
    type Item = Header;
    fn next(&mut self) -> Option<Header> {
        self.inner.next().map(|f| self.headers.header(f))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = Header;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
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
            h.at(0).map(|x| x.raw_line().clone()),
            Some(Bytes::from_static(b"Via: SIP/2.0/UDP b"))
        );
        h.set(Header::new(HeaderName::from_static("x-a"), b"2").expect("ok"));
        assert_eq!(
            h.get_value(&HeaderName::from_static("X-A")),
            Some(Bytes::from_static(b"2"))
        );
        assert_eq!(h.remove_all(&HeaderName::Via), 1);
        assert_eq!(h.len(), 1);
        assert!(Header::new(HeaderName::Subject, b"a\r\nVia: x").is_err());
    }
}
