//! Request methods: an open enum; unknown methods round-trip.

use core::fmt;

use bytes::Bytes;

use crate::text::all_token;

/// A SIP method. Method names are case-sensitive (RFC 3261 §7.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// INFO (RFC 6086)
    Info,
    /// PRACK (RFC 3262)
    Prack,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// PUBLISH (RFC 3903)
    Publish,
    /// REFER (RFC 3515)
    Refer,
    /// MESSAGE (RFC 3428)
    Message,
    /// UPDATE (RFC 3311)
    Update,
    /// Any other token, as written.
    Other(Bytes),
}

impl Method {
    /// Classify a method token (a slice of the message; no copy). The caller
    /// ensures it is a token; see [`Method::parse`] for a checked variant.
    pub fn from_bytes(b: Bytes) -> Method {
        match &b[..] {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"INFO" => Method::Info,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            _ => Method::Other(b),
        }
    }

    /// Checked: `None` unless `b` is a non-empty token.
    pub fn parse(b: Bytes) -> Option<Method> {
        all_token(&b).then(|| Method::from_bytes(b))
    }

    /// The method name as written on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Register => b"REGISTER",
            Method::Options => b"OPTIONS",
            Method::Info => b"INFO",
            Method::Prack => b"PRACK",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Notify => b"NOTIFY",
            Method::Publish => b"PUBLISH",
            Method::Refer => b"REFER",
            Method::Message => b"MESSAGE",
            Method::Update => b"UPDATE",
            Method::Other(b) => b,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown() {
        assert_eq!(
            Method::from_bytes(Bytes::from_static(b"INVITE")),
            Method::Invite
        );
        let m = Method::from_bytes(Bytes::from_static(b"invite"));
        assert_eq!(m.as_bytes(), b"invite");
        assert!(matches!(m, Method::Other(_)));
        assert!(Method::parse(Bytes::from_static(b"RE%47IST%45R")).is_some());
        assert!(Method::parse(Bytes::from_static(b"A B")).is_none());
    }
}
