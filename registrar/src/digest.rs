//! RFC 7616 digest for REGISTER: stateless nonces, challenges, verification.
//!
//! Nonce = base64url(issue_ms (8 bytes, big endian) || HMAC-SHA256(secret,
//! "nonce" || issue_ms || realm)[..16]), 32 characters. `userhash` is not
//! supported (never offered in a challenge, so clients do not use it).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use sipveil_sip::Auth;

use crate::users::HEX;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Raw decoded nonce length.
pub(crate) const NONCE_RAW: usize = 24;

/// A digest algorithm (RFC 7616 §3.3): what a domain offers, in its order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// `SHA-256`.
    Sha256,
    /// `MD5` (RFC 2617 clients).
    Md5,
}

/// What a domain offers when it names no algorithms: SHA-256 first, then MD5 (RFC 7616 §3.7).
pub(crate) const DEFAULT_ALGORITHMS: [Alg; 2] = [Alg::Sha256, Alg::Md5];

/// Keyed MAC state (cloned per use: the key schedule is done once).
#[derive(Clone)]
pub(crate) struct Keys {
    mac: HmacSha256,
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub(crate) fn new(secret: &[u8; 32]) -> Keys {
        // HMAC zero-pads a short key to the block size (64 bytes): the same MAC
        // as keying with the 32-byte secret, through the infallible constructor.
        let mut k = [0u8; 64];
        k[..32].copy_from_slice(secret);
        let mac = <HmacSha256 as hmac::digest::KeyInit>::new(&k.into());
        Keys { mac }
    }

    pub(crate) fn tag(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(label);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// The nonce issued at `issue_ms` for `realm`.
    pub(crate) fn nonce(&self, issue_ms: u64, realm: &str) -> String {
        let mut raw = [0u8; NONCE_RAW];
        raw[..8].copy_from_slice(&issue_ms.to_be_bytes());
        let t = self.tag(b"nonce", &[&issue_ms.to_be_bytes(), realm.as_bytes()]);
        raw[8..].copy_from_slice(&t[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `Some(issue_ms)` if `nonce` is one we issued for `realm`.
    pub(crate) fn check_nonce(&self, nonce: &[u8], realm: &str) -> Option<(u64, [u8; NONCE_RAW])> {
        if nonce.len() != 32 {
            return None;
        }
        let mut raw = [0u8; NONCE_RAW];
        let n = URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw).ok()?;
        if n != NONCE_RAW {
            return None;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[..8]);
        let t = self.tag(b"nonce", &[&ts, realm.as_bytes()]);
        if ct_eq(&t[..16], &raw[8..]) {
            Some((u64::from_be_bytes(ts), raw))
        } else {
            None
        }
    }

    /// The opaque value for `realm` (constant per secret and realm).
    pub(crate) fn opaque(&self, realm: &str) -> String {
        let t = self.tag(b"opaque", &[realm.as_bytes()]);
        URL_SAFE_NO_PAD.encode(&t[..12])
    }
}

/// Constant-time equality (length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut d = 0u8;
    for (x, y) in a.iter().zip(b) {
        d |= x ^ y;
    }
    std::hint::black_box(d) == 0
}

/// A WWW-Authenticate / Proxy-Authenticate value:
/// `Digest realm="…", qop="auth", algorithm=…, nonce="…", opaque="…"[, stale=true]`.
/// Written piece by piece into one exactly sized string (no formatting machinery: this runs
/// for every challenge, once per offered algorithm).
pub(crate) fn challenge(realm: &str, nonce: &str, opaque: &str, alg: Alg, stale: bool) -> String {
    let alg = match alg {
        Alg::Sha256 => "SHA-256",
        Alg::Md5 => "MD5",
    };
    let stale = if stale { ", stale=true" } else { "" };
    let parts: [&str; 10] = [
        "Digest realm=\"",
        realm,
        "\", qop=\"auth\", algorithm=",
        alg,
        ", nonce=\"",
        nonce,
        "\", opaque=\"",
        opaque,
        "\"",
        stale,
    ];
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// The parameters of one set of digest credentials, gathered in one pass over the
/// auth-params (the first occurrence of a name wins and a malformed element ends the list,
/// exactly as [`Auth::param`] reads them, without scanning the list once per name).
#[derive(Debug, Default)]
pub(crate) struct Creds {
    pub realm: Option<Bytes>,
    pub username: Option<Bytes>,
    pub algorithm: Option<Bytes>,
    pub nonce: Option<Bytes>,
    pub uri: Option<Bytes>,
    pub response: Option<Bytes>,
    pub cnonce: Option<Bytes>,
    pub nc: Option<Bytes>,
    pub qop: Option<Bytes>,
    pub opaque: Option<Bytes>,
}

impl Creds {
    pub(crate) fn gather(a: &Auth) -> Creds {
        let mut c = Creds::default();
        for p in a.params() {
            let Ok((name, value)) = p else {
                break;
            };
            let slot = match name.len() {
                2 if name.eq_ignore_ascii_case(b"nc") => &mut c.nc,
                3 if name.eq_ignore_ascii_case(b"uri") => &mut c.uri,
                3 if name.eq_ignore_ascii_case(b"qop") => &mut c.qop,
                5 if name.eq_ignore_ascii_case(b"realm") => &mut c.realm,
                5 if name.eq_ignore_ascii_case(b"nonce") => &mut c.nonce,
                6 if name.eq_ignore_ascii_case(b"cnonce") => &mut c.cnonce,
                6 if name.eq_ignore_ascii_case(b"opaque") => &mut c.opaque,
                8 if name.eq_ignore_ascii_case(b"username") => &mut c.username,
                8 if name.eq_ignore_ascii_case(b"response") => &mut c.response,
                9 if name.eq_ignore_ascii_case(b"algorithm") => &mut c.algorithm,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        c
    }
}

fn hex_into(out: &mut Vec<u8>, b: &[u8]) {
    for &x in b {
        out.push(HEX[usize::from(x >> 4)]);
        out.push(HEX[usize::from(x & 15)]);
    }
}

/// The lower-case hex `response` for qop=auth (RFC 7616 §3.4.1):
/// H(HA1hex ":" nonce ":" nc ":" cnonce ":" "auth" ":" H(method ":" uri)).
pub(crate) struct Inputs<'a> {
    pub method: &'a [u8],
    pub uri: &'a [u8],
    pub nonce: &'a [u8],
    pub nc: &'a [u8],
    pub cnonce: &'a [u8],
}

pub(crate) fn expected_response(alg: Alg, ha1: &[u8], i: &Inputs<'_>) -> Vec<u8> {
    fn run<D: Digest>(ha1: &[u8], i: &Inputs<'_>) -> Vec<u8> {
        let mut h2 = D::new();
        h2.update(i.method);
        h2.update(b":");
        h2.update(i.uri);
        let ha2 = h2.finalize();
        let mut buf = Vec::with_capacity(256);
        hex_into(&mut buf, ha1);
        buf.push(b':');
        buf.extend_from_slice(i.nonce);
        buf.push(b':');
        buf.extend_from_slice(i.nc);
        buf.push(b':');
        buf.extend_from_slice(i.cnonce);
        buf.extend_from_slice(b":auth:");
        hex_into(&mut buf, &ha2);
        let r = D::digest(&buf);
        let mut out = Vec::with_capacity(64);
        hex_into(&mut out, &r);
        out
    }
    match alg {
        Alg::Sha256 => run::<Sha256>(ha1, i),
        Alg::Md5 => run::<Md5>(ha1, i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{ha1_md5, ha1_sha256};

    /// RFC 7616 §3.9.1 (qop=auth, GET /dir/index.html).
    #[test]
    fn rfc7616_response_vectors() {
        let i = Inputs {
            method: b"GET",
            uri: b"/dir/index.html",
            nonce: b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            nc: b"00000001",
            cnonce: b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        };
        let md5 = ha1_md5("Mufasa", "http-auth@example.org", "Circle of Life");
        assert_eq!(
            expected_response(Alg::Md5, &md5, &i),
            b"8ca523f5e9506fed4657c9700eebdbec".to_vec()
        );
        let sha = ha1_sha256("Mufasa", "http-auth@example.org", "Circle of Life");
        assert_eq!(
            expected_response(Alg::Sha256, &sha, &i),
            b"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1".to_vec()
        );
    }

    #[test]
    fn nonce_round_trip_and_forgery() {
        let k = Keys::new(&[9; 32]);
        let n = k.nonce(1_700_000_000_123, "auth.lab");
        assert_eq!(n.len(), 32);
        assert_eq!(
            k.check_nonce(n.as_bytes(), "auth.lab").map(|x| x.0),
            Some(1_700_000_000_123)
        );
        assert_eq!(k.check_nonce(n.as_bytes(), "other.lab"), None);
        assert_eq!(
            Keys::new(&[8; 32]).check_nonce(n.as_bytes(), "auth.lab"),
            None
        );
        let mut forged = n.clone().into_bytes();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(k.check_nonce(&forged, "auth.lab"), None);
        assert_eq!(k.check_nonce(b"", "auth.lab"), None);
        assert_eq!(k.check_nonce(&[b'!'; 32], "auth.lab"), None);
    }

    #[test]
    fn padded_key_equals_slice_key() {
        let mut a = Keys::new(&[5; 32]).mac;
        let mut b = <HmacSha256 as Mac>::new_from_slice(&[5; 32]).expect("any length");
        a.update(b"x");
        b.update(b"x");
        assert_eq!(a.finalize().into_bytes(), b.finalize().into_bytes());
    }

    /// The challenge text, byte for byte as the `format!` it replaced wrote it.
    #[test]
    fn challenge_text() {
        assert_eq!(
            challenge("auth.lab", "N0nce", "0paque", Alg::Sha256, false),
            "Digest realm=\"auth.lab\", qop=\"auth\", algorithm=SHA-256, nonce=\"N0nce\", opaque=\"0paque\""
        );
        let c = challenge("r", "n", "o", Alg::Md5, true);
        assert_eq!(
            c,
            "Digest realm=\"r\", qop=\"auth\", algorithm=MD5, nonce=\"n\", opaque=\"o\", stale=true"
        );
        assert_eq!(c.capacity(), c.len());
    }

    /// One pass gives what `Auth::param` gives per name: first occurrence, case-insensitive
    /// names. (A malformed list never gets here: `Auth::parse` refuses it.)
    #[test]
    fn creds_gather_matches_param() {
        let values = [
            "Digest username=\"alice\", REALM=\"auth.lab\", nonce=\"abc\", uri=\"sip:auth.lab\", \
             response=\"0123\", algorithm=MD5, cnonce=\"c1\", opaque=\"op\", qop=auth, nc=00000001",
            "Digest username=\"bob\", username=\"mallory\", Nc=2, x=\"y\", QOP=auth",
            "Digest",
        ];
        for v in values {
            let a = Auth::parse(&Bytes::from(v)).expect("parses");
            let c = Creds::gather(&a);
            let pairs = [
                ("realm", &c.realm),
                ("username", &c.username),
                ("algorithm", &c.algorithm),
                ("nonce", &c.nonce),
                ("uri", &c.uri),
                ("response", &c.response),
                ("cnonce", &c.cnonce),
                ("nc", &c.nc),
                ("qop", &c.qop),
                ("opaque", &c.opaque),
            ];
            for (name, got) in pairs {
                assert_eq!(got, &a.param(name), "{v}: {name}");
            }
        }
        let a = Auth::parse(&Bytes::from_static(
            b"Digest username=\"bob\", username=\"m\"",
        ))
        .expect("parses");
        assert_eq!(Creds::gather(&a).username.as_deref(), Some(&b"bob"[..]));
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
