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

            /// Compact identity of a known name (its index in the table),
            /// [`OTHER_ID`] for `Other`.
            pub(crate) fn id(&self) -> u8 {
                match self {
                    $( HeaderName::$variant => KnownId::$variant as u8, )*
                    HeaderName::Other(_) => OTHER_ID,
                }
            }
        }

        /// Ids of the known names (`KnownId::Via as u8`), for matching
        /// header records without building a [`HeaderName`].
        #[derive(Clone, Copy)]
        #[repr(u8)]
        pub(crate) enum KnownId {
            $( $variant, )*
        }

        /// Known names by id.
        static KNOWN: &[HeaderName] = &[ $( HeaderName::$variant, )* ];

        /// Every lowercase spelling (full and compact) with its id.
        const SPELLINGS: &[(&[u8], u8)] = &[
            $( ($lower, KnownId::$variant as u8), $( ($compact, KnownId::$variant as u8), )? )*
        ];
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

/// Slots of the open-addressed spelling table (a power of two, well above
/// the number of spellings so that probes stay short).
const NAME_SLOTS: usize = 512;

/// Slot of a non-empty name: length, first, middle and last byte with the
/// ASCII case bit set (the identity on the lowercase spellings).
const fn name_hash(raw: &[u8]) -> usize {
    let n = raw.len();
    let f = (raw[0] | 0x20) as usize;
    let m = (raw[n / 2] | 0x20) as usize;
    let l = (raw[n - 1] | 0x20) as usize;
    (n.wrapping_mul(97) ^ f.wrapping_mul(31) ^ m.wrapping_mul(7) ^ l.wrapping_mul(131)) % NAME_SLOTS
}

/// `raw` (same length as `lower`) equals the lowercase spelling `lower`
/// (letters, digits, `-`) ignoring ASCII case, eight bytes at a time.
/// Setting bit 0x20 lowercases letters and leaves digits and `-` alone; it
/// would also turn control bytes 0x0D / 0x1X into `-` / digits, so a word
/// with any byte below 0x20 never matches.
#[inline]
fn eq_lower(raw: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let word = |b: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let same = |a: u64, b: u64| (a | CASE) == b && (a.wrapping_sub(LO * 0x20) & !a & HI) == 0;
    let n = raw.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return raw
            .iter()
            .zip(lower)
            .all(|(&a, &b)| a >= 0x20 && (a | 0x20) == b);
    }
    let mut i = 0;
    while i + 8 <= n {
        if !same(word(raw, i), word(lower, i)) {
            return false;
        }
        i += 8;
    }
    // The last, overlapping word.
    i == n || same(word(raw, n - 8), word(lower, n - 8))
}

/// Open-addressed table: slot -> index + 1 into `SPELLINGS` (0 = empty),
/// built at compile time with linear probing.
static NAME_TABLE: [u16; NAME_SLOTS] = {
    let mut t = [0u16; NAME_SLOTS];
    let mut i = 0;
    while i < SPELLINGS.len() {
        let mut slot = name_hash(SPELLINGS[i].0);
        while t[slot] != 0 {
            slot = (slot + 1) % NAME_SLOTS;
        }
        t[slot] = (i + 1) as u16;
        i += 1;
    }
    t
};

impl HeaderName {
    /// The known name with this id (`None` for [`OTHER_ID`]).
    pub(crate) fn from_id(id: u8) -> Option<HeaderName> {
        KNOWN.get(usize::from(id)).cloned()
    }

    /// The id of a raw name as written (case-insensitive, compact forms
    /// mapped), or [`OTHER_ID`]: one hash of length, first, middle and last
    /// byte, then one case-insensitive comparison per probe.
    pub(crate) fn known_id(raw: &[u8]) -> u8 {
        if raw.is_empty() {
            return OTHER_ID;
        }
        let mut slot = name_hash(raw);
        for _ in 0..NAME_SLOTS {
            let entry = NAME_TABLE[slot];
            if entry == 0 {
                return OTHER_ID;
            }
            if let Some(&(spelling, id)) = SPELLINGS.get(usize::from(entry) - 1)
                && eq_lower(raw, spelling)
            {
                return id;
            }
            slot = (slot + 1) % NAME_SLOTS;
        }
        OTHER_ID
    }

    /// Look up a known name without needing an owned buffer.
    pub fn known(raw: &[u8]) -> Option<HeaderName> {
        Self::from_id(Self::known_id(raw))
    }

    /// Classify a raw name as written (case-insensitive; compact forms map to
    /// the full name). `Other` keeps the given bytes.
    pub fn from_bytes(raw: Bytes) -> HeaderName {
        match Self::known(&raw) {
            Some(h) => h,
            None => HeaderName::Other(raw),
        }
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
        // Every spelling is found, in any case, and near misses are not.
        for &(spelling, id) in SPELLINGS {
            assert_eq!(HeaderName::known_id(spelling), id);
            let upper = spelling.to_ascii_uppercase();
            assert_eq!(HeaderName::known_id(&upper), id);
            let mut longer = spelling.to_vec();
            longer.push(b'x');
            assert_ne!(HeaderName::known_id(&longer), id);
        }
        assert_eq!(HeaderName::known_id(b""), OTHER_ID);
        // Control bytes that turn into `-` or digits with the case bit set.
        assert_eq!(HeaderName::known_id(b"Call\rID"), OTHER_ID);
        assert_eq!(HeaderName::known_id(b"Content\rLength"), OTHER_ID);
        assert_eq!(
            HeaderName::known_id(b"content-LENGTH"),
            HeaderName::ContentLength.id()
        );
        assert_eq!(HeaderName::known_id(b"Via\x80"), OTHER_ID);
        for name in [
            &b"content-lengtH"[..],
            b"CONTENT-LENGTH",
            b"p-access-network-info",
            b"Min-SE",
        ] {
            assert_eq!(
                HeaderName::known(name),
                SPELLINGS
                    .iter()
                    .find(|(s, _)| s.eq_ignore_ascii_case(name))
                    .and_then(|&(_, id)| HeaderName::from_id(id))
            );
        }
        assert_eq!(HeaderName::known_id(&[b'a'; 100]), OTHER_ID);
    }
}
