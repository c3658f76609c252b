//! Configurable caps applied while parsing and framing.

/// Caps on what the parser accepts. Exceeding one is a [`crate::ParseError`]
/// that maps to an answer (413/414/513/400) or to a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole message (start line + headers + body), bytes. Exceeding: 513.
    pub max_message_size: usize,
    /// Number of header fields (lines, after unfolding). Exceeding: 400.
    pub max_headers: usize,
    /// Length of one header field including its name and folding. Exceeding: 400.
    pub max_header_len: usize,
    /// Number of Via values over all Via fields. Exceeding: 400.
    pub max_vias: usize,
    /// Number of Route values, and separately of Record-Route values. Exceeding: 400.
    pub max_routes: usize,
    /// Body size in bytes. Exceeding: 413.
    pub max_body_size: usize,
    /// Request-URI length in bytes. Exceeding: 414.
    pub max_uri_len: usize,
}

impl Limits {
    /// No practical limit; used for messages we build ourselves.
    pub const UNLIMITED: Limits = Limits {
        max_message_size: usize::MAX,
        max_headers: usize::MAX,
        max_header_len: usize::MAX,
        max_vias: usize::MAX,
        max_routes: usize::MAX,
        max_body_size: usize::MAX,
        max_uri_len: usize::MAX,
    };
}

impl Default for Limits {
    /// Defaults sized for an edge: 64 KiB messages, 128 fields of up to 8 KiB,
    /// 70 Via / Route values (the RFC 3261 Max-Forwards default), 32 KiB bodies,
    /// 4 KiB Request-URIs.
    fn default() -> Self {
        Limits {
            max_message_size: 65_535,
            max_headers: 128,
            max_header_len: 8192,
            max_vias: 70,
            max_routes: 70,
            max_body_size: 32_768,
            max_uri_len: 4096,
        }
    }
}
