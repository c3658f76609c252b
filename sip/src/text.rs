//! Small lexical helpers shared by the parsers (RFC 3261 §25 character classes).
//! Everything here works on byte slices and never allocates.

use bytes::Bytes;

const fn class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let token = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        let lws = matches!(b, b' ' | b'\t' | b'\r' | b'\n');
        let special = matches!(b, b',' | b';' | b'"' | b'<' | b'>' | b'=' | b'\\');
        t[c] = (token as u8) | ((lws as u8) << 1) | ((special as u8) << 2);
        c += 1;
    }
    t
}

static CLASS: [u8; 256] = class_table();

/// `token` characters (RFC 3261 §25.1).
#[inline]
pub(crate) fn is_token(c: u8) -> bool {
    CLASS[c as usize] & 1 != 0
}

/// Linear white space, including the CR/LF of a folded line.
#[inline]
pub(crate) fn is_lws(c: u8) -> bool {
    CLASS[c as usize] & 2 != 0
}

/// A non-empty run of token characters.
pub(crate) fn all_token(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| is_token(c))
}

/// Index of the first `needle` in `hay`, sixteen bytes at a time (two
/// SWAR words per step, so a typical header line takes two or three steps).
#[inline]
pub(crate) fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pat = LO.wrapping_mul(u64::from(needle));
    let hits = |w: [u8; 8]| {
        let x = u64::from_le_bytes(w) ^ pat;
        x.wrapping_sub(LO) & !x & HI
    };
    let mut chunks = hay.chunks_exact(16);
    let mut base = 0;
    for c in &mut chunks {
        let (a, b) = c.split_at(8);
        let (mut wa, mut wb) = ([0u8; 8], [0u8; 8]);
        wa.copy_from_slice(a);
        wb.copy_from_slice(b);
        let (ha, hb) = (hits(wa), hits(wb));
        if ha | hb != 0 {
            return Some(if ha != 0 {
                base + (ha.trailing_zeros() / 8) as usize
            } else {
                base + 8 + (hb.trailing_zeros() / 8) as usize
            });
        }
        base += 16;
    }
    let rest = chunks.remainder();
    if rest.len() >= 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&rest[..8]);
        let h = hits(w);
        if h != 0 {
            return Some(base + (h.trailing_zeros() / 8) as usize);
        }
        base += 8;
        return rest[8..]
            .iter()
            .position(|&c| c == needle)
            .map(|p| base + p);
    }
    rest.iter().position(|&c| c == needle).map(|p| base + p)
}

/// Range of `b` without leading/trailing LWS.
pub(crate) fn trim_range(b: &[u8]) -> (usize, usize) {
    let mut s = 0;
    let mut e = b.len();
    while s < e && is_lws(b[s]) {
        s += 1;
    }
    while e > s && is_lws(b[e - 1]) {
        e -= 1;
    }
    (s, e)
}

/// `b` without leading/trailing LWS, as a slice of the same buffer.
pub(crate) fn trimmed(b: &Bytes) -> Bytes {
    let (s, e) = trim_range(b);
    b.slice(s..e)
}

/// Index of the first non-LWS byte at or after `i`.
pub(crate) fn skip_lws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_lws(b[i]) {
        i += 1;
    }
    i
}

/// Strict `1*DIGIT` as u64; `None` on empty, non-digit or overflow.
pub(crate) fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// Strict `1*DIGIT` as u32.
pub(crate) fn parse_u32(b: &[u8]) -> Option<u32> {
    parse_u64(b).and_then(|n| u32::try_from(n).ok())
}

/// Given `b[i] == '"'`, the index just past the closing quote
/// (quoted-pair aware), or `None` if unterminated.
pub(crate) fn end_of_quoted(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// First index `>= from` of `needle` outside quoted strings and `<...>`.
pub(crate) fn find_top_level(b: &[u8], from: usize, needle: u8) -> Option<usize> {
    // Most values hold no `needle` at all: one SWAR scan settles that.
    find_byte(b.get(from..)?, needle)?;
    let mut i = from;
    let mut angle = false;
    while i < b.len() {
        let c = b[i];
        if CLASS[c as usize] & 4 == 0 && c != needle {
            i += 1;
            continue;
        }
        if c == needle && !angle {
            return Some(i);
        }
        match c {
            b'"' if !angle => match end_of_quoted(b, i) {
                Some(e) => {
                    i = e;
                    continue;
                }
                None => return None,
            },
            b'<' => angle = true,
            b'>' => angle = false,
            _ => {}
        }
        i += 1;
    }
    None
}

/// ASCII case-insensitive equality. Equal bytes cost one compare; only a
/// pair that differs in the case bit alone is checked for being a letter.
#[inline]
pub(crate) fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(&x, &y)| x == y || (x ^ y == 0x20 && (x | 0x20).is_ascii_lowercase()))
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether every `%` in `b` starts a valid `%HH` escape.
pub(crate) fn escapes_valid(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1).copied(), b.get(i + 2).copied()) {
                (Some(h), Some(l)) if hex_val(h).is_some() && hex_val(l).is_some() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// Iterator over the bytes of `b` with `%HH` escapes decoded (invalid escapes pass through).
pub(crate) struct Unescape<'a> {
    b: &'a [u8],
    i: usize,
}

impl Iterator for Unescape<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        if c == b'%'
            && let (Some(h), Some(l)) = (
                self.b.get(self.i + 1).and_then(|&x| hex_val(x)),
                self.b.get(self.i + 2).and_then(|&x| hex_val(x)),
            )
        {
            self.i += 3;
            return Some(h * 16 + l);
        }
        self.i += 1;
        Some(c)
    }
}

/// Decode `%HH` escapes lazily.
pub(crate) fn unescape(b: &[u8]) -> Unescape<'_> {
    Unescape { b, i: 0 }
}

/// Compare two escaped strings after unescaping; optionally ASCII case-insensitive.
pub(crate) fn eq_unescaped(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    let mut x = unescape(a);
    let mut y = unescape(b);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) => {
                let same = if ignore_case {
                    p.eq_ignore_ascii_case(&q)
                } else {
                    p == q
                };
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Append the decimal form of `n`.
pub(crate) fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(decimal(n, &mut buf));
}

/// Appends `ip` in its usual text form: dotted decimal for IPv4 (written by hand, no
/// formatting machinery), RFC 5952 for IPv6 (through `Display`: rare on the answer path).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(a) => {
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(o));
            }
        }
        // Writing to a Vec cannot fail.
        std::net::IpAddr::V6(a) => {
            let _ = std::io::Write::write_fmt(out, format_args!("{a}"));
        }
    }
}

/// The decimal form of `n`, written into `buf` (no allocation).
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Splits a header value at top-level commas (outside quotes and `<>`),
/// yielding each element trimmed. A blank value yields nothing.
#[derive(Clone, Debug)]
pub struct CommaValues {
    src: Bytes,
    pos: usize,
    done: bool,
    single: bool,
}

impl CommaValues {
    /// Split `src`.
    pub fn new(src: Bytes) -> Self {
        let (s, e) = trim_range(&src);
        let done = s == e;
        CommaValues {
            src,
            pos: 0,
            done,
            single: false,
        }
    }
}

impl CommaValues {
    /// Yield `src` (trimmed) once, unsplit; nothing if blank.
    pub fn whole(src: Bytes) -> Self {
        CommaValues {
            single: true,
            ..Self::new(src)
        }
    }
}

impl Iterator for CommaValues {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let found = if self.single {
            None
        } else {
            find_top_level(&self.src, self.pos, b',')
        };
        let end = match found {
            Some(c) => c,
            None => {
                self.done = true;
                self.src.len()
            }
        };
        let (a, z) = trim_range(&self.src[self.pos..end]);
        let piece = self.src.slice(self.pos + a..self.pos + z);
        self.pos = end + 1;
        Some(piece)
    }
}

/// The elements of a list-valued header value as borrowed slices, with the
/// splitting of [`CommaValues::new`]: top-level commas, each element
/// trimmed, nothing for a blank value.
pub(crate) fn list_elements(src: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let (s, e) = trim_range(src);
    let mut done = s == e;
    let mut pos = 0usize;
    core::iter::from_fn(move || {
        if done {
            return None;
        }
        let end = match find_top_level(src, pos, b',') {
            Some(c) => c,
            None => {
                done = true;
                src.len()
            }
        };
        let (a, z) = trim_range(&src[pos..end]);
        let piece = &src[pos + a..pos + z];
        pos = end + 1;
        Some(piece)
    })
}

/// Whether `v` holds a CR, LF or NUL (no early exit, so the loop vectorises).
pub(crate) fn has_ctl_break(v: &[u8]) -> bool {
    v.iter().fold(false, |acc, &c| {
        acc | (c == b'\r') | (c == b'\n') | (c == 0)
    })
}

/// A header value is safe to emit: no NUL, and CR/LF only as folding
/// (`CRLF` followed by SP or HT), so it cannot inject a header or end the section.
pub(crate) fn safe_header_value(v: &[u8]) -> bool {
    // The common case, no CR, LF or NUL at all, in one branch-free pass (vectorised).
    if !has_ctl_break(v) {
        return true;
    }
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            0 => return false,
            b'\r' => {
                if v.get(i + 1) != Some(&b'\n') || !matches!(v.get(i + 2), Some(b' ' | b'\t')) {
                    return false;
                }
                i += 3;
            }
            b'\n' => return false,
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ip_writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "198.18.0.7",
            "255.255.255.255",
            "10.200.3.40",
            "::1",
            "2001:db8::5",
            "::ffff:198.18.0.7",
        ] {
            let a: std::net::IpAddr = ip.parse().expect("address");
            let mut out = b"x=".to_vec();
            push_ip(&mut out, a);
            assert_eq!(out, format!("x={a}").into_bytes());
        }
    }

    #[test]
    fn comma_split_respects_quotes_and_angles() {
        let v = Bytes::from_static(b"\"a, b\" <sip:x@y;p=1,2>;q=1 , <sip:z@w>,,");
        let parts: Vec<Bytes> = CommaValues::new(v).collect();
        assert_eq!(
            parts,
            vec![
                Bytes::from_static(b"\"a, b\" <sip:x@y;p=1,2>;q=1"),
                Bytes::from_static(b"<sip:z@w>"),
                Bytes::new(),
                Bytes::new(),
            ]
        );
        assert_eq!(CommaValues::new(Bytes::from_static(b"  ")).count(), 0);
    }

    #[test]
    fn list_elements_split_like_comma_values() {
        for v in [
            &b"\"a, b\" <sip:x@y;p=1,2>;q=1 , <sip:z@w>,,"[..],
            b"  ",
            b"",
            b"a",
            b" a , b ",
            b",",
            b"\"unterminated, x",
        ] {
            let want: Vec<Bytes> = CommaValues::new(Bytes::copy_from_slice(v)).collect();
            let got: Vec<&[u8]> = list_elements(v).collect();
            assert_eq!(got.len(), want.len(), "{v:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(*g, &w[..]);
            }
        }
    }

    #[test]
    fn unescape_compare() {
        assert!(eq_unescaped(b"%61lice", b"alice", false));
        assert!(!eq_unescaped(b"%41lice", b"alice", false));
        assert!(eq_unescaped(b"%41lice", b"alice", true));
        assert!(escapes_valid(b"a%00b"));
        assert!(!escapes_valid(b"a%0"));
        assert!(!escapes_valid(b"%zz"));
    }

    #[test]
    fn find_byte_matches_position() {
        let hay: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..=255u8 {
            for start in 0..20 {
                assert_eq!(
                    find_byte(&hay[start..], n),
                    hay[start..].iter().position(|&c| c == n),
                    "{n} {start}"
                );
            }
        }
        assert_eq!(find_byte(b"abc\r\n", b'\n'), Some(4));
        assert_eq!(find_byte(b"", b'\n'), None);
        assert_eq!(find_byte(&[0x80, 0x0a], 0x0a), Some(1));
    }

    #[test]
    fn case_insensitive_equality_is_ascii_only() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(eq_ic(&[a], &[b]), [a].eq_ignore_ascii_case(&[b]), "{a} {b}");
            }
        }
        assert!(eq_ic(b"SIP/2.0", b"sip/2.0"));
        assert!(!eq_ic(b"SIP/2.0", b"SIP/2.00"));
    }

    #[test]
    fn find_top_level_skips_quotes_and_angles() {
        let v = b"\"a,b\" <sip:x;y,z> , w;q";
        assert_eq!(find_top_level(v, 0, b','), Some(18));
        assert_eq!(find_top_level(v, 0, b';'), Some(21));
        assert_eq!(find_top_level(v, 20, b','), None);
        assert_eq!(find_top_level(v, 100, b','), None);
        assert_eq!(find_top_level(b"\"a,b\"", 0, b','), None);
        assert_eq!(find_top_level(b"<a,b", 0, b','), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b""), None);
        let mut v = Vec::new();
        push_u64(&mut v, 0);
        push_u64(&mut v, 1234);
        assert_eq!(v, b"01234");
    }
}
