//! Header names: an open table of known names with their compact forms.
//!
//! Known names compare by identity (case-insensitive on the wire); unknown
//! names are kept as written and compare case-insensitively.

use core::fmt;
use core::hash::{Hash, Hasher};

use bytes::Bytes;

macro_rules! header_names {
    ($( $(#[$m:meta])* $variant:ident => $canon:literal, $lower:literal $(| $compact:literal)?, $list:literal; )*) => {
        /// A header field name. Parsing maps compact forms to the full name
        /// (the original spelling stays in the raw line).
        #[non_exhaustive]
        #[derive(Clone, Debug)]
        pub enum HeaderName {
            $( $(#[$m])* #[doc = concat!("`", $canon, "`")] $variant, )*
            /// Any other name, as written.
            Other(Bytes),
        }

        impl HeaderName {
            /// The canonical spelling (the raw spelling for `Other`).
            pub fn as_bytes(&self) -> &[u8] {
                match self {
                    $( HeaderName::$variant => $canon.as_bytes(), )*
                    HeaderName::Other(b) => b,
                }
            }

            /// The compact form (RFC 3261 §7.3.3 and extensions), if any.
            pub fn compact(&self) -> Option<u8> {
                match self {
                    $( HeaderName::$variant => None $( .or(Some($compact[0])) )?, )*
                    HeaderName::Other(_) => None,
                }
            }

            /// Whether the field's grammar is a comma-separated list, so that
            /// values may be split at top-level commas.
            pub fn is_list(&self) -> bool {
                match self {
                    $( HeaderName::$variant => $list, )*
                    HeaderName::Other(_) => false,
                }
            }

            fn lookup_lower(l: &[u8]) -> Option<HeaderName> {
                match l {
                    $( $lower $(| $compact)? => Some(HeaderName::$variant), )*
                    _ => None,
                }
            }

            /// Compact identity of a known name (its index in the table),
            /// [`OTHER_ID`] for `Other`.
            pub(crate) fn id(&self) -> u8 {
                match self {
                    $( HeaderName::$variant => KnownId::$variant as u8, )*
                    HeaderName::Other(_) => OTHER_ID,
                }
            }

            /// Known name and compact-form index of a lowercase name, or [`OTHER_ID`].
            fn lookup_lower_id(l: &[u8]) -> u8 {
                match l {
                    $( $lower $(| $compact)? => KnownId::$variant as u8, )*
                    _ => OTHER_ID,
                }
            }
        }

        #[repr(u8)]
        enum KnownId {
            $( $variant, )*
        }

        /// Known names by id.
        static KNOWN: &[HeaderName] = &[ $( HeaderName::$variant, )* ];
    };
}

header_names! {
    Via => "Via", b"via" | b"v", true;
    From => "From", b"from" | b"f", false;
    To => "To", b"to" | b"t", false;
    CallId => "Call-ID", b"call-id" | b"i", false;
    CSeq => "CSeq", b"cseq", false;
    Contact => "Contact", b"contact" | b"m", true;
    MaxForwards => "Max-Forwards", b"max-forwards", false;
    ContentLength => "Content-Length", b"content-length" | b"l", false;
    ContentType => "Content-Type", b"content-type" | b"c", false;
    ContentEncoding => "Content-Encoding", b"content-encoding" | b"e", true;
    ContentDisposition => "Content-Disposition", b"content-disposition", false;
    ContentLanguage => "Content-Language", b"content-language", true;
    Route => "Route", b"route", true;
    RecordRoute => "Record-Route", b"record-route", true;
    Path => "Path", b"path", true;
    ServiceRoute => "Service-Route", b"service-route", true;
    Expires => "Expires", b"expires", false;
    MinExpires => "Min-Expires", b"min-expires", false;
    Authorization => "Authorization", b"authorization", false;
    WwwAuthenticate => "WWW-Authenticate", b"www-authenticate", false;
    ProxyAuthenticate => "Proxy-Authenticate", b"proxy-authenticate", false;
    ProxyAuthorization => "Proxy-Authorization", b"proxy-authorization", false;
    AuthenticationInfo => "Authentication-Info", b"authentication-info", false;
    Privacy => "Privacy", b"privacy", false;
    PAssertedIdentity => "P-Asserted-Identity", b"p-asserted-identity", true;
    PPreferredIdentity => "P-Preferred-Identity", b"p-preferred-identity", true;
    Require => "Require", b"require", true;
    ProxyRequire => "Proxy-Require", b"proxy-require", true;
    Supported => "Supported", b"supported" | b"k", true;
    Unsupported => "Unsupported", b"unsupported", true;
    Allow => "Allow", b"allow", true;
    AllowEvents => "Allow-Events", b"allow-events" | b"u", true;
    UserAgent => "User-Agent", b"user-agent", false;
    Server => "Server", b"server", false;
    Accept => "Accept", b"accept", true;
    AcceptEncoding => "Accept-Encoding", b"accept-encoding", true;
    AcceptLanguage => "Accept-Language", b"accept-language", true;
    AcceptContact => "Accept-Contact", b"accept-contact" | b"a", true;
    RejectContact => "Reject-Contact", b"reject-contact" | b"j", true;
    RequestDisposition => "Request-Disposition", b"request-disposition" | b"d", true;
    ReferTo => "Refer-To", b"refer-to" | b"r", false;
    ReferredBy => "Referred-By", b"referred-by" | b"b", false;
    Event => "Event", b"event" | b"o", false;
    SubscriptionState => "Subscription-State", b"subscription-state", false;
    SessionExpires => "Session-Expires", b"session-expires" | b"x", false;
    MinSe => "Min-SE", b"min-se", false;
    Subject => "Subject", b"subject" | b"s", false;
    Identity => "Identity", b"identity" | b"y", false;
    IdentityInfo => "Identity-Info", b"identity-info" | b"n", false;
    Date => "Date", b"date", false;
    Timestamp => "Timestamp", b"timestamp", false;
    Warning => "Warning", b"warning", true;
    RetryAfter => "Retry-After", b"retry-after", false;
    ReplyTo => "Reply-To", b"reply-to", false;
    InReplyTo => "In-Reply-To", b"in-reply-to", true;
    Organization => "Organization", b"organization", false;
    Priority => "Priority", b"priority", false;
    AlertInfo => "Alert-Info", b"alert-info", true;
    CallInfo => "Call-Info", b"call-info", true;
    ErrorInfo => "Error-Info", b"error-info", true;
    MimeVersion => "MIME-Version", b"mime-version", false;
    RSeq => "RSeq", b"rseq", false;
    RAck => "RAck", b"rack", false;
    Reason => "Reason", b"reason", true;
    Replaces => "Replaces", b"replaces", false;
    HistoryInfo => "History-Info", b"history-info", true;
    Diversion => "Diversion", b"diversion", true;
    RemotePartyId => "Remote-Party-ID", b"remote-party-id", true;
    PChargingVector => "P-Charging-Vector", b"p-charging-vector", false;
    PAccessNetworkInfo => "P-Access-Network-Info", b"p-access-network-info", true;
    PVisitedNetworkId => "P-Visited-Network-ID", b"p-visited-network-id", true;
    SipETag => "SIP-ETag", b"sip-etag", false;
    SipIfMatch => "SIP-If-Match", b"sip-if-match", false;
    Flowtimer => "Flow-Timer", b"flow-timer", false;
}

/// The id of names that are not in the table.
pub(crate) const OTHER_ID: u8 = u8::MAX;

impl HeaderName {
    /// The known name with this id (`None` for [`OTHER_ID`]).
    pub(crate) fn from_id(id: u8) -> Option<HeaderName> {
        KNOWN.get(usize::from(id)).cloned()
    }

    /// The id of a raw name as written (case-insensitive, compact forms
    /// mapped), or [`OTHER_ID`].
    pub(crate) fn known_id(raw: &[u8]) -> u8 {
        let mut buf = [0u8; 32];
        if raw.len() > buf.len() {
            return OTHER_ID;
        }
        let l = &mut buf[..raw.len()];
        l.copy_from_slice(raw);
        l.make_ascii_lowercase();
        Self::lookup_lower_id(l)
    }

    /// Classify a raw name as written (case-insensitive; compact forms map to
    /// the full name). `Other` keeps the given bytes.
    pub fn from_bytes(raw: Bytes) -> HeaderName {
        match Self::known(&raw) {
            Some(h) => h,
            None => HeaderName::Other(raw),
        }
    }

    /// Look up a known name without needing an owned buffer.
    pub fn known(raw: &[u8]) -> Option<HeaderName> {
        let mut buf = [0u8; 32];
        if raw.len() > buf.len() {
            return None;
        }
        let l = &mut buf[..raw.len()];
        l.copy_from_slice(raw);
        l.make_ascii_lowercase();
        Self::lookup_lower(l)
    }

    /// A name from a static string (known names are recognised).
    pub fn from_static(s: &'static str) -> HeaderName {
        Self::from_bytes(Bytes::from_static(s.as_bytes()))
    }

    /// Whether `raw` (as written on the wire) names this header.
    pub fn matches(&self, raw: &[u8]) -> bool {
        match self {
            HeaderName::Other(b) => b.eq_ignore_ascii_case(raw),
            _ => Self::known(raw).as_ref() == Some(self),
        }
    }
}

impl PartialEq for HeaderName {
    fn eq(&self, other: &HeaderName) -> bool {
        match (self, other) {
            (HeaderName::Other(a), HeaderName::Other(b)) => a.eq_ignore_ascii_case(b),
            (HeaderName::Other(_), _) | (_, HeaderName::Other(_)) => false,
            _ => core::mem::discriminant(self) == core::mem::discriminant(other),
        }
    }
}

impl Eq for HeaderName {}

impl Hash for HeaderName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            HeaderName::Other(b) => {
                1u8.hash(state);
                for c in b.iter() {
                    c.to_ascii_lowercase().hash(state);
                }
            }
            _ => {
                0u8.hash(state);
                core::mem::discriminant(self).hash(state);
            }
        }
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms_and_case() {
        for (raw, want) in [
            (&b"v"[..], HeaderName::Via),
            (b"VIA", HeaderName::Via),
            (b"f", HeaderName::From),
            (b"t", HeaderName::To),
            (b"i", HeaderName::CallId),
            (b"m", HeaderName::Contact),
            (b"l", HeaderName::ContentLength),
            (b"c", HeaderName::ContentType),
            (b"k", HeaderName::Supported),
            (b"s", HeaderName::Subject),
            (b"e", HeaderName::ContentEncoding),
            (b"o", HeaderName::Event),
            (b"r", HeaderName::ReferTo),
            (b"u", HeaderName::AllowEvents),
            (b"b", HeaderName::ReferredBy),
            (b"x", HeaderName::SessionExpires),
            (b"y", HeaderName::Identity),
            (b"a", HeaderName::AcceptContact),
            (b"j", HeaderName::RejectContact),
            (b"d", HeaderName::RequestDisposition),
            (b"call-ID", HeaderName::CallId),
        ] {
            assert_eq!(HeaderName::from_bytes(Bytes::copy_from_slice(raw)), want);
        }
        assert_eq!(HeaderName::Via.compact(), Some(b'v'));
        assert_eq!(HeaderName::CSeq.compact(), None);
        let o = HeaderName::from_static("X-Foo");
        assert_eq!(o, HeaderName::from_static("x-foo"));
        assert_ne!(o, HeaderName::Via);
        assert_eq!(o.as_bytes(), b"X-Foo");
        assert!(HeaderName::Via.matches(b"V"));
        assert!(!HeaderName::Via.matches(b"Vi"));
    }

    #[test]
    fn ids_round_trip() {
        for raw in [&b"Via"[..], b"v", b"CSEQ", b"flow-timer", b"Content-Length"] {
            let id = HeaderName::known_id(raw);
            assert_ne!(id, OTHER_ID);
            let name = HeaderName::from_id(id).expect("known");
            assert_eq!(Some(name.clone()), HeaderName::known(raw));
            assert_eq!(name.id(), id);
        }
        assert_eq!(HeaderName::known_id(b"X-Foo"), OTHER_ID);
        assert_eq!(HeaderName::from_static("X-Foo").id(), OTHER_ID);
        assert!(HeaderName::from_id(OTHER_ID).is_none());
    }
}
