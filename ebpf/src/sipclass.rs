//! The shield's method class of a UDP payload, from its first 8 bytes only.
//!
//! Eight bytes are one bounded, fixed-size packet read (one 64-bit word), and enough: every SIP
//! request starts with its method and a space (`INVITE `, `ACK `), the longest common methods
//! (`REGISTER`, `SUBSCRIBE`) fill the word, and every response starts with `SIP/2.0 `. Only the
//! shape is checked, not the rest of the request line: a payload that starts like a request but
//! is not one is still limited, only in another class's bucket, so a wrong guess moves a packet
//! between limits and never past them.

use sipveil_abi::shield::ShieldClass;

/// Bytes of payload [`classify`] looks at. Shorter payloads are [`ShieldClass::NotSip`].
pub const CLASSIFY_BYTES: usize = 8;

const fn word(s: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*s)
}

const REGISTER: u64 = word(b"REGISTER");
const OPTIONS: u64 = word(b"OPTIONS ");
const RESPONSE: u64 = word(b"SIP/2.0 ");
/// `INVITE ` is 7 bytes: compare under a mask of the first 7 (little-endian: the low 56 bits).
const INVITE: u64 = word(b"INVITE \0");
const MASK7: u64 = (1 << 56) - 1;
/// Shortest SIP method (`ACK`, `BYE`).
const MIN_METHOD: usize = 3;

/// The class of a UDP payload whose first 8 bytes are `b`.
#[inline(always)]
pub fn classify(b: [u8; CLASSIFY_BYTES]) -> ShieldClass {
    let w = u64::from_le_bytes(b);
    if w == REGISTER {
        return ShieldClass::Register;
    }
    if w & MASK7 == INVITE {
        return ShieldClass::Invite;
    }
    if w == OPTIONS {
        return ShieldClass::Options;
    }
    if w == RESPONSE {
        return ShieldClass::Response;
    }
    // Another method: upper-case letters, then a space after at least three of them (or eight
    // letters: a longer method such as SUBSCRIBE).
    let mut i = 0;
    while i < CLASSIFY_BYTES {
        let c = b[i];
        if c == b' ' {
            return if i >= MIN_METHOD {
                ShieldClass::Other
            } else {
                ShieldClass::NotSip
            };
        }
        if !c.is_ascii_uppercase() {
            return ShieldClass::NotSip;
        }
        i += 1;
    }
    ShieldClass::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &[u8]) -> ShieldClass {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[..8]);
        classify(b)
    }

    #[test]
    fn the_limited_methods_have_their_own_class() {
        assert_eq!(
            class(b"REGISTER sip:open.lab SIP/2.0"),
            ShieldClass::Register
        );
        assert_eq!(
            class(b"INVITE sip:bob@open.lab SIP/2.0"),
            ShieldClass::Invite
        );
        assert_eq!(class(b"OPTIONS sip:open.lab SIP/2.0"), ShieldClass::Options);
        assert_eq!(class(b"SIP/2.0 200 OK\r\n"), ShieldClass::Response);
        assert_eq!(class(b"SIP/2.0 401 Unauthorized"), ShieldClass::Response);
    }

    #[test]
    fn other_methods_are_other() {
        for m in [
            &b"ACK sip:b@x SIP/2.0"[..],
            b"BYE sip:b@x SIP/2.0",
            b"CANCEL sip:b@x SIP/2.0",
            b"PRACK sip:b@x SIP/2.0",
            b"UPDATE sip:b@x SIP/2.0",
            b"INFO sip:b@x SIP/2.0",
            b"MESSAGE sip:b@x SIP/2.0",
            b"NOTIFY sip:b@x SIP/2.0",
            b"SUBSCRIBE sip:b@x SIP/2.0",
            b"PUBLISH sip:b@x SIP/2.0",
            b"REFER sip:b@x SIP/2.0",
        ] {
            assert_eq!(
                class(m),
                ShieldClass::Other,
                "{}",
                core::str::from_utf8(m).unwrap_or("?")
            );
        }
    }

    #[test]
    fn near_misses_do_not_take_a_named_class() {
        // Case matters (RFC 3261 methods are case-sensitive), and the space after INVITE.
        assert_eq!(class(b"register sip:x"), ShieldClass::NotSip);
        assert_eq!(class(b"INVITEX sip:x"), ShieldClass::Other);
        assert_eq!(class(b"OPTIONSX sip:x"), ShieldClass::Other);
        assert_eq!(class(b"SIP/2.1 200 OK"), ShieldClass::NotSip);
        assert_eq!(class(b"SIP/2.0\r\n\r\n"), ShieldClass::NotSip);
    }

    #[test]
    fn junk_is_not_sip() {
        for j in [
            &b"\r\n\r\n\r\n\r\n"[..],
            b"\0\0\0\0\0\0\0\0",
            b"\x00\x01\x00\x00\x21\x12\xa4\x42", // STUN binding request
            b"AB sip:x",                         // two letters: no SIP method is that short
            b" INVITE ",
            b"\x80\x00\x04\xd2\x00\x02\x71\x00", // RTP
        ] {
            assert_eq!(class(j), ShieldClass::NotSip, "{j:?}");
        }
        // Upper-case words with a space are shaped like a method: limited as "other".
        assert_eq!(class(b"HELLO world"), ShieldClass::Other);
        assert_eq!(class(b"GET / HTTP/1.1"), ShieldClass::Other);
    }
}
