//! Users files (`name sha256:<hex> [md5:<hex>] [refuse-anonymous|accept-anonymous]`)
//! and HA1 helpers for `sipveil ha1`.

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::{UserEntry, UsersError};

/// Longest nickname / user name.
pub const MAX_NAME: usize = 64;

/// Names nobody may register or hold.
pub const RESERVED: &[&str] = &["anonymous"];

/// Why a nickname is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Empty, too long, or a character outside `[a-z0-9._-]`.
    Syntax,
    /// In [`RESERVED`].
    Reserved,
}

/// Fold `raw` to lower case and check the strict nickname syntax: 1–64
/// characters of `[a-z0-9._-]` (upper case folded), not reserved.
pub fn normalize_name(raw: &[u8]) -> Result<String, NameError> {
    if raw.is_empty() || raw.len() > MAX_NAME {
        return Err(NameError::Syntax);
    }
    let mut s = String::with_capacity(raw.len());
    for &c in raw {
        let c = c.to_ascii_lowercase();
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'_' || c == b'-') {
            return Err(NameError::Syntax);
        }
        s.push(char::from(c));
    }
    if RESERVED.contains(&s.as_str()) {
        return Err(NameError::Reserved);
    }
    Ok(s)
}

/// SHA-256 HA1 = SHA-256(user ":" realm ":" password).
pub fn ha1_sha256(user: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// MD5 HA1 = MD5(user ":" realm ":" password).
pub fn ha1_md5(user: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// One users-file line for `sipveil ha1`: `name sha256:<hex>[ md5:<hex>]`.
/// The name is written lower-case (user names are case-folded).
pub fn format_user_line(user: &str, realm: &str, password: &str, with_md5: bool) -> String {
    let name = user.to_ascii_lowercase();
    let mut s = format!("{name} sha256:{}", hex(&ha1_sha256(&name, realm, password)));
    if with_md5 {
        s.push_str(" md5:");
        s.push_str(&hex(&ha1_md5(&name, realm, password)));
    }
    s
}

pub(crate) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 15)]));
    }
    s
}

pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = char::from(b[2 * i]).to_digit(16)?;
        let lo = char::from(b[2 * i + 1]).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Parse a users file: one user per line,
/// `name sha256:<64 hex> [md5:<32 hex>] [refuse-anonymous|accept-anonymous]`;
/// `#` starts a comment; blank lines are ignored. Names follow the nickname
/// syntax (1–64 of `[a-z0-9._-]`, folded to lower case, not `anonymous`) and
/// appear once.
pub fn parse_users(text: &str) -> Result<Vec<UserEntry>, UsersError> {
    let mut out: Vec<UserEntry> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| UsersError { line, message };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut fields = content.split_ascii_whitespace();
        let Some(name_raw) = fields.next() else {
            continue;
        };
        let name = match normalize_name(name_raw.as_bytes()) {
            Ok(n) => n,
            Err(NameError::Syntax) => {
                return Err(err(format!(
                    "name {name_raw:?}: must be 1-64 characters of a-z 0-9 . _ - (upper case is folded)"
                )));
            }
            Err(NameError::Reserved) => {
                return Err(err(format!("name {name_raw:?}: reserved, choose another")));
            }
        };
        if let Some(prev) = seen.insert(name.clone(), line) {
            return Err(err(format!(
                "name {name:?}: already defined on line {prev}; each user appears once"
            )));
        }
        let Some(sha) = fields.next() else {
            return Err(err(format!(
                "user {name:?}: missing sha256:<64 hex digits> (HA1 = SHA-256(name:realm:password); `sipveil ha1` prints it)"
            )));
        };
        let ha1_sha256 = sha
            .strip_prefix("sha256:")
            .and_then(unhex::<32>)
            .ok_or_else(|| {
                err(format!(
                    "user {name:?}: second field {sha:?} must be sha256:<64 hex digits>"
                ))
            })?;
        let mut ha1_md5 = None;
        let mut refuse_anonymous = None;
        for f in fields {
            if let Some(h) = f.strip_prefix("md5:") {
                if ha1_md5.is_some() {
                    return Err(err(format!("user {name:?}: md5 given twice")));
                }
                ha1_md5 = Some(unhex::<16>(h).ok_or_else(|| {
                    err(format!(
                        "user {name:?}: field {f:?} must be md5:<32 hex digits>"
                    ))
                })?);
            } else if f == "refuse-anonymous" || f == "accept-anonymous" {
                if refuse_anonymous.is_some() {
                    return Err(err(format!(
                        "user {name:?}: refuse-anonymous/accept-anonymous given twice"
                    )));
                }
                refuse_anonymous = Some(f == "refuse-anonymous");
            } else {
                return Err(err(format!(
                    "user {name:?}: unknown field {f:?}; valid after sha256: md5:<32 hex>, refuse-anonymous, accept-anonymous"
                )));
            }
        }
        out.push(UserEntry {
            name,
            ha1_sha256,
            ha1_md5,
            refuse_anonymous,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7616_ha1_vectors() {
        // RFC 7616 §3.9.1 credentials (Mufasa / http-auth@example.org /
        // "Circle of Life"); expected values from coreutils md5sum/sha256sum.
        // The RFC's own response values are checked in digest.rs.
        assert_eq!(
            hex(&ha1_md5(
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life"
            )),
            "3d78807defe7de2157e2b0b6573a855f"
        );
        assert_eq!(
            hex(&ha1_sha256(
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life"
            )),
            "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
        );
    }

    #[test]
    fn parses_a_file() {
        let line = format_user_line("Alice", "auth.lab", "pw", true);
        let text = format!(
            "# users\n\n{line}  # comment\nbob sha256:{} refuse-anonymous\n",
            hex(&[7; 32])
        );
        let users = parse_users(&text).expect("valid");
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].name, "alice");
        assert_eq!(users[0].ha1_sha256, ha1_sha256("alice", "auth.lab", "pw"));
        assert_eq!(users[0].ha1_md5, Some(ha1_md5("alice", "auth.lab", "pw")));
        assert_eq!(users[0].refuse_anonymous, None);
        assert_eq!(users[1].ha1_sha256, [7; 32]);
        assert_eq!(users[1].ha1_md5, None);
        assert_eq!(users[1].refuse_anonymous, Some(true));
    }

    #[test]
    fn errors_name_line_and_field() {
        let good = format!("sha256:{}", hex(&[1; 32]));
        let cases: Vec<(String, usize, &str)> = vec![
            ("bad!name sha256:00".into(), 1, "must be 1-64"),
            (format!("# c\nanonymous {good}"), 2, "reserved"),
            ("carol".into(), 1, "missing sha256"),
            ("carol sha256:abc".into(), 1, "64 hex"),
            (format!("carol {good} md5:zz"), 1, "32 hex"),
            (
                format!("carol {good} frobnicate"),
                1,
                "unknown field \"frobnicate\"",
            ),
            (
                format!("carol {good}\n\nCAROL {good}"),
                3,
                "already defined on line 1",
            ),
            (
                format!("carol {good} refuse-anonymous accept-anonymous"),
                1,
                "twice",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse_users(&text).expect_err(&text);
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn nickname_syntax() {
        assert_eq!(normalize_name(b"Alice.B-1_x").as_deref(), Ok("alice.b-1_x"));
        assert_eq!(normalize_name(b""), Err(NameError::Syntax));
        assert_eq!(normalize_name(&[b'a'; 65]), Err(NameError::Syntax));
        assert!(normalize_name(&[b'a'; 64]).is_ok());
        assert_eq!(normalize_name(b"al%20ice"), Err(NameError::Syntax));
        assert_eq!(normalize_name(b"ANONYMOUS"), Err(NameError::Reserved));
    }
}
