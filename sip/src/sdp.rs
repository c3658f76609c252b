//! SDP (RFC 4566 / RFC 8866) session descriptions: parse, inspect, rewrite, print.
//!
//! The parser keeps every line as a slice of the original [`Bytes`] together with the line
//! ending it had (CRLF, LF or none for an unterminated last line). An unmodified description
//! prints back byte-identical (it hands out the original buffer); a rewritten one regenerates
//! only the lines that were changed and copies the rest verbatim.
//!
//! Lines the parser does not know (`z=`, `k=`, `r=`, `u=`, `e=`, `p=`, or any other letter) are
//! kept in order and printed unchanged. The lines whose structure the rewrite API relies on
//! (`v=`, `o=`, `c=`, `t=`, `b=`, `m=` and `a=rtcp`) are validated while parsing, so a parsed
//! description never hands out a half-understood origin, connection or media line.
//!
//! The rewrite API is what the privacy layer needs: replace the origin, the session name, the
//! connection addresses and the media ports; drop attributes by name or name prefix (ICE
//! candidates and credentials, ...); rewrite the port and address of `a=rtcp`.
//!
//! ```
//! use bytes::Bytes;
//! use sipveil_sip::sdp::{AttributePattern, SessionDescription, ICE_ATTRIBUTES};
//!
//! let offer = Bytes::from_static(
//!     b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n\
//!       c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\n\
//!       a=candidate:1 1 UDP 2130706431 192.0.2.10 49170 typ host\r\na=sendrecv\r\n",
//! );
//! let mut sdp = SessionDescription::parse(offer.clone()).unwrap();
//! assert_eq!(sdp.to_bytes(), offer); // untouched: byte-identical
//!
//! sdp.set_all_connection_addresses("198.18.1.1".parse().unwrap());
//! for media in sdp.media_mut() {
//!     media.set_port(40000);
//! }
//! sdp.drop_attributes(ICE_ATTRIBUTES);
//! let printed = sdp.to_bytes();
//! assert!(!printed.windows(9).any(|w| w == b"candidate"));
//! ```

use std::fmt;
use std::net::IpAddr;

use bytes::{BufMut, Bytes};

/// Why an SDP body was rejected. Line numbers are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is empty.
    Empty,
    /// The first line is not a `v=` line.
    MissingVersion,
    /// `v=` carries something other than `0`.
    UnsupportedVersion,
    /// A second `v=` line appeared.
    DuplicateVersion {
        /// 1-based line number.
        line: usize,
    },
    /// A line is not of the form `<letter>=<value>`.
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
    /// An empty line appeared before the end of the body.
    EmptyLine {
        /// 1-based line number.
        line: usize,
    },
    /// A carriage return that does not end a line.
    BareCarriageReturn {
        /// 1-based line number.
        line: usize,
    },
    /// `o=` does not have the six fields `username sess-id sess-version nettype addrtype address`.
    MalformedOrigin {
        /// 1-based line number.
        line: usize,
    },
    /// `c=` does not have the three fields `nettype addrtype address`.
    MalformedConnection {
        /// 1-based line number.
        line: usize,
    },
    /// `t=` is not two decimal numbers.
    MalformedTiming {
        /// 1-based line number.
        line: usize,
    },
    /// `b=` is not `<bwtype>:<bandwidth>`.
    MalformedBandwidth {
        /// 1-based line number.
        line: usize,
    },
    /// `m=` is not `media port[/count] proto fmt...`.
    MalformedMedia {
        /// 1-based line number.
        line: usize,
    },
    /// A port (`m=` port or port count) is not a decimal number in 0..=65535.
    InvalidPort {
        /// 1-based line number.
        line: usize,
    },
    /// `a=rtcp` is not `port [nettype addrtype address]`.
    MalformedRtcp {
        /// 1-based line number.
        line: usize,
    },
    /// A value handed to the rewrite API would produce an invalid line (empty, or containing
    /// a space, CR, LF or NUL where a token is required).
    InvalidRewriteValue {
        /// Which value.
        field: &'static str,
    },
}

impl fmt::Display for SdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdpError::Empty => f.write_str("empty SDP body"),
            SdpError::MissingVersion => f.write_str("SDP does not start with a v= line"),
            SdpError::UnsupportedVersion => f.write_str("SDP version is not 0"),
            SdpError::DuplicateVersion { line } => write!(f, "second v= line at line {line}"),
            SdpError::MalformedLine { line } => {
                write!(f, "line {line} is not of the form <letter>=<value>")
            }
            SdpError::EmptyLine { line } => write!(f, "empty line {line} inside the SDP body"),
            SdpError::BareCarriageReturn { line } => {
                write!(f, "carriage return inside line {line}")
            }
            SdpError::MalformedOrigin { line } => write!(f, "malformed o= line {line}"),
            SdpError::MalformedConnection { line } => write!(f, "malformed c= line {line}"),
            SdpError::MalformedTiming { line } => write!(f, "malformed t= line {line}"),
            SdpError::MalformedBandwidth { line } => write!(f, "malformed b= line {line}"),
            SdpError::MalformedMedia { line } => write!(f, "malformed m= line {line}"),
            SdpError::InvalidPort { line } => write!(f, "invalid port on line {line}"),
            SdpError::MalformedRtcp { line } => write!(f, "malformed a=rtcp line {line}"),
            SdpError::InvalidRewriteValue { field } => {
                write!(f, "invalid value for {field} in SDP rewrite")
            }
        }
    }
}

impl std::error::Error for SdpError {}

/// How a line was terminated in the original body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `\r\n`, what RFC 4566 prescribes.
    CrLf,
    /// `\n` alone, which RFC 4566 asks receivers to accept.
    Lf,
    /// The last line of a body that does not end with a line terminator.
    None,
}

impl LineEnding {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnding::CrLf => b"\r\n",
            LineEnding::Lf => b"\n",
            LineEnding::None => b"",
        }
    }
}

/// One `<type>=<value>` line, without its terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The whole line `x=value`; always at least two bytes with `=` second.
    text: Bytes,
    ending: LineEnding,
}

impl Line {
    /// The type letter (`v`, `o`, `m`, `a`, ...).
    pub fn kind(&self) -> u8 {
        self.text.first().copied().unwrap_or(0)
    }

    /// Everything after `x=`.
    pub fn value(&self) -> &[u8] {
        self.text.get(2..).unwrap_or_default()
    }

    /// The whole line without its terminator.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// The terminator the line had (or was given when rewritten).
    pub fn ending(&self) -> LineEnding {
        self.ending
    }

    /// This line as an attribute, when it is an `a=` line.
    pub fn attribute(&self) -> Option<Attribute<'_>> {
        (self.kind() == b'a').then(|| Attribute::parse(self.value()))
    }

    fn encoded_len(&self) -> usize {
        self.text.len() + self.ending.as_bytes().len()
    }

    fn write_to<B: BufMut>(&self, out: &mut B) {
        out.put_slice(&self.text);
        // Constant-length copies, so the two-byte terminator needs no `memcpy` call.
        match self.ending {
            LineEnding::CrLf => out.put_slice(b"\r\n"),
            LineEnding::Lf => out.put_slice(b"\n"),
            LineEnding::None => {}
        }
    }
}

/// A media direction attribute (RFC 3264).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    fn from_attribute_name(name: &[u8]) -> Option<Self> {
        match name {
            b"sendrecv" => Some(Direction::SendRecv),
            b"sendonly" => Some(Direction::SendOnly),
            b"recvonly" => Some(Direction::RecvOnly),
            b"inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The attribute name (`sendrecv`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// A borrowed view of `a=<name>[:<value>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// The name, before any colon.
    pub name: &'a [u8],
    /// `None` for a property attribute (`a=rtcp-mux`), `Some` (possibly empty) after a colon.
    pub value: Option<&'a [u8]>,
}

impl<'a> Attribute<'a> {
    fn parse(value: &'a [u8]) -> Self {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => Attribute {
                name: &value[..colon],
                value: Some(&value[colon + 1..]),
            },
            None => Attribute {
                name: value,
                value: None,
            },
        }
    }
}

/// Which attributes [`SessionDescription::drop_attributes`] removes. Names compare ASCII
/// case-insensitively, so a differently cased `a=Candidate` cannot slip through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributePattern<'a> {
    /// The attribute name equals this.
    Exact(&'a str),
    /// The attribute name starts with this.
    Prefix(&'a str),
}

impl AttributePattern<'_> {
    /// Whether an attribute with this name matches.
    pub fn matches(&self, name: &[u8]) -> bool {
        match self {
            AttributePattern::Exact(p) => name.eq_ignore_ascii_case(p.as_bytes()),
            AttributePattern::Prefix(p) => name
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
        }
    }
}

/// ICE (RFC 8445 / RFC 8839) attributes, which reveal the addresses of the endpoint:
/// `candidate`, `remote-candidates`, `end-of-candidates` and every `ice-*`.
pub const ICE_ATTRIBUTES: &[AttributePattern<'static>] = &[
    AttributePattern::Exact("candidate"),
    AttributePattern::Exact("remote-candidates"),
    AttributePattern::Exact("end-of-candidates"),
    AttributePattern::Prefix("ice-"),
];

/// A borrowed view of `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// `<username>` (`-` when the user is not named).
    pub username: &'a [u8],
    /// `<sess-id>`.
    pub session_id: &'a [u8],
    /// `<sess-version>`.
    pub session_version: &'a [u8],
    /// `<nettype>`, normally `IN`.
    pub net_type: &'a [u8],
    /// `<addrtype>`: `IP4` or `IP6`.
    pub addr_type: &'a [u8],
    /// `<unicast-address>`.
    pub address: &'a [u8],
}

impl<'a> Origin<'a> {
    fn parse(value: &'a [u8]) -> Option<Self> {
        let mut tokens = Tokens::new(value);
        let origin = Origin {
            username: tokens.next()?,
            session_id: tokens.next()?,
            session_version: tokens.next()?,
            net_type: tokens.next()?,
            addr_type: tokens.next()?,
            address: tokens.next()?,
        };
        tokens.next().is_none().then_some(origin)
    }
}

/// A borrowed view of `c=<nettype> <addrtype> <connection-address>` (also the optional
/// address part of `a=rtcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    /// `<nettype>`, normally `IN`.
    pub net_type: &'a [u8],
    /// `<addrtype>`: `IP4` or `IP6`.
    pub addr_type: &'a [u8],
    /// The address as written, including a multicast `/ttl[/count]` suffix when present.
    pub address: &'a [u8],
}

impl<'a> Connection<'a> {
    fn parse(value: &'a [u8]) -> Option<Self> {
        let mut tokens = Tokens::new(value);
        let connection = Connection {
            net_type: tokens.next()?,
            addr_type: tokens.next()?,
            address: tokens.next()?,
        };
        tokens.next().is_none().then_some(connection)
    }

    /// The address as an IP address, when it is a literal (without a multicast suffix).
    pub fn ip(&self) -> Option<IpAddr> {
        let base = self.address.split(|&b| b == b'/').next()?;
        std::str::from_utf8(base).ok()?.parse().ok()
    }
}

/// A borrowed view of `a=rtcp:<port> [<nettype> <addrtype> <address>]` (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtcp<'a> {
    /// The RTCP port.
    pub port: u16,
    /// The RTCP address, when given.
    pub connection: Option<Connection<'a>>,
}

impl<'a> Rtcp<'a> {
    fn parse(value: &'a [u8]) -> Option<Self> {
        let mut tokens = Tokens::new(value);
        let port = parse_u16(tokens.next()?)?;
        let rest = tokens.rest();
        let connection = if rest.is_empty() {
            None
        } else {
            Some(Connection::parse(rest)?)
        };
        Some(Rtcp { port, connection })
    }
}

/// A new origin for [`SessionDescription::rewrite_origin`]. Net type is always `IN`; the
/// address type follows the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginRewrite<'a> {
    /// New `<username>` (`-` hides it).
    pub username: &'a [u8],
    /// New `<sess-id>`.
    pub session_id: &'a [u8],
    /// `None` keeps the version the description already has (or `0` when it had no `o=`).
    pub session_version: Option<&'a [u8]>,
    /// New address; the address type follows it.
    pub address: IpAddr,
}

/// The parsed `m=` line of a media section.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MediaLine {
    media: Bytes,
    port: u16,
    port_count: Option<u16>,
    proto: Bytes,
    /// Everything after the protocol, as written (usually `0 8 101`); may be empty.
    formats: Bytes,
}

impl MediaLine {
    fn parse(text: &Bytes, line: usize) -> Result<Self, SdpError> {
        let malformed = SdpError::MalformedMedia { line };
        // `text` starts with `m=`; offsets below are into `text`.
        let value = text.get(2..).ok_or(malformed.clone())?;
        let mut tokens = Tokens::new(value);
        let media = tokens.next_range().ok_or(malformed.clone())?;
        let port_field = tokens.next().ok_or(malformed.clone())?;
        let proto = tokens.next_range().ok_or(malformed)?;
        let formats_start = value.len() - tokens.rest().len();
        let (port, port_count) = match port_field.iter().position(|&b| b == b'/') {
            Some(slash) => (
                parse_u16(&port_field[..slash]),
                parse_u16(&port_field[slash + 1..]).map(Some),
            ),
            None => (parse_u16(port_field), Some(None)),
        };
        let (Some(port), Some(port_count)) = (port, port_count) else {
            return Err(SdpError::InvalidPort { line });
        };
        Ok(MediaLine {
            media: text.slice(2 + media.0..2 + media.1),
            port,
            port_count,
            proto: text.slice(2 + proto.0..2 + proto.1),
            formats: text.slice(2 + formats_start..),
        })
    }

    fn encode(&self) -> Bytes {
        let port = StackText::decimal(u64::from(self.port));
        let count = self.port_count.map(|c| StackText::decimal(u64::from(c)));
        let (slash, count): (&[u8], &[u8]) = match &count {
            Some(c) => (b"/", c.as_bytes()),
            None => (b"", b""),
        };
        let space: &[u8] = if self.formats.is_empty() { b"" } else { b" " };
        concat(&[
            b"m=",
            &self.media,
            b" ",
            port.as_bytes(),
            slash,
            count,
            b" ",
            &self.proto,
            space,
            &self.formats,
        ])
    }
}

/// One media section: its `m=` line and every line up to the next `m=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    media_line: MediaLine,
    /// `lines[0]` is the `m=` line.
    lines: Vec<Line>,
    modified: bool,
}

impl MediaSection {
    /// The media type (`audio`, `video`, `application`, ...).
    pub fn media_type(&self) -> &[u8] {
        &self.media_line.media
    }

    /// The transport port (0 for a rejected or disabled stream).
    pub fn port(&self) -> u16 {
        self.media_line.port
    }

    /// The `/count` after the port, when present.
    pub fn port_count(&self) -> Option<u16> {
        self.media_line.port_count
    }

    /// The transport protocol (`RTP/AVP`, `UDP/TLS/RTP/SAVPF`, ...).
    pub fn proto(&self) -> &[u8] {
        &self.media_line.proto
    }

    /// The format list as written after the protocol.
    pub fn formats_raw(&self) -> &[u8] {
        &self.media_line.formats
    }

    /// The formats (payload types for RTP) one by one.
    pub fn formats(&self) -> impl Iterator<Item = &[u8]> {
        Tokens::new(&self.media_line.formats)
    }

    /// All lines of the section, the `m=` line first.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// The section's attributes in order.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'_>> {
        self.lines.iter().filter_map(Line::attribute)
    }

    /// The first attribute with this name (exact, case-sensitive as RFC 4566 defines).
    pub fn attribute(&self, name: &str) -> Option<Attribute<'_>> {
        self.attributes().find(|a| a.name == name.as_bytes())
    }

    /// Whether `a=rtcp-mux` is present (RFC 5761).
    pub fn rtcp_mux(&self) -> bool {
        self.attribute("rtcp-mux").is_some()
    }

    /// The direction attribute of this section, if it has one (see also
    /// [`MediaSection::effective_direction`]).
    pub fn direction(&self) -> Option<Direction> {
        self.attributes()
            .filter(|a| a.value.is_none())
            .find_map(|a| Direction::from_attribute_name(a.name))
    }

    /// The direction in force for this section: its own attribute, else the session's, else
    /// `sendrecv` (RFC 3264 section 5.1).
    pub fn effective_direction(&self, session: &SessionDescription) -> Direction {
        self.direction()
            .or_else(|| session.direction())
            .unwrap_or(Direction::SendRecv)
    }

    /// The first media-level `c=` line.
    pub fn connection(&self) -> Option<Connection<'_>> {
        self.lines
            .iter()
            .filter(|l| l.kind() == b'c')
            .find_map(|l| Connection::parse(l.value()))
    }

    /// The `a=rtcp` attribute, when present.
    pub fn rtcp(&self) -> Option<Rtcp<'_>> {
        self.attribute("rtcp")
            .and_then(|a| a.value)
            .and_then(Rtcp::parse)
    }

    /// Bandwidth lines `b=<bwtype>:<bandwidth>` of this section.
    pub fn bandwidths(&self) -> impl Iterator<Item = (&[u8], u64)> {
        bandwidths(&self.lines)
    }

    /// Replace the transport port, keeping a `/count` when present.
    pub fn set_port(&mut self, port: u16) {
        self.media_line.port = port;
        self.regenerate_media_line();
    }

    /// Replace or remove the `/count` after the port.
    pub fn set_port_count(&mut self, count: Option<u16>) {
        self.media_line.port_count = count;
        self.regenerate_media_line();
    }

    fn regenerate_media_line(&mut self) {
        let text = self.media_line.encode();
        if let Some(first) = self.lines.first_mut() {
            first.text = text;
        }
        self.modified = true;
    }

    /// Replace the address of every media-level `c=` line (`IN IP4|IP6 <address>`).
    /// Returns how many lines were rewritten (0 when the section relies on the session `c=`).
    pub fn set_connection_address(&mut self, address: IpAddr) -> usize {
        let count = rewrite_connections(&mut self.lines, address);
        self.modified |= count > 0;
        count
    }

    /// Remove every media-level `c=` line (so the session-level one applies). Returns how
    /// many were removed.
    pub fn remove_connections(&mut self) -> usize {
        let before = self.lines.len();
        // Keep index 0, the m= line, whatever happens.
        let mut index = 0;
        self.lines.retain(|l| {
            index += 1;
            index == 1 || l.kind() != b'c'
        });
        let removed = before - self.lines.len();
        self.modified |= removed > 0;
        removed
    }

    /// Rewrite every `a=rtcp` line to `a=rtcp:<port>` followed, when `address` is given, by
    /// `IN IP4|IP6 <address>`. Returns how many lines were rewritten.
    pub fn rewrite_rtcp(&mut self, port: u16, address: Option<IpAddr>) -> usize {
        let mut count = 0;
        let port = StackText::decimal(u64::from(port));
        for line in &mut self.lines {
            // `a=rtcp:...`, tested without splitting every attribute at its colon.
            if !line.text.starts_with(b"a=rtcp:") {
                continue;
            }
            line.text = match address {
                Some(address) => {
                    let ip = StackText::ip(address);
                    concat(&[
                        b"a=rtcp:",
                        port.as_bytes(),
                        b" ",
                        connection_prefix(address),
                        ip.as_bytes(),
                    ])
                }
                None => concat(&[b"a=rtcp:", port.as_bytes()]),
            };
            count += 1;
        }
        self.modified |= count > 0;
        count
    }

    /// Keep only the attributes for which `keep` returns true. Returns how many were dropped.
    pub fn retain_attributes(&mut self, mut keep: impl FnMut(Attribute<'_>) -> bool) -> usize {
        let before = self.lines.len();
        self.lines.retain(|l| l.attribute().is_none_or(&mut keep));
        let removed = before - self.lines.len();
        self.modified |= removed > 0;
        removed
    }

    /// Drop every attribute whose name matches one of the patterns. Returns how many were dropped.
    pub fn drop_attributes(&mut self, patterns: &[AttributePattern<'_>]) -> usize {
        self.retain_attributes(|a| !patterns.iter().any(|p| p.matches(a.name)))
    }

    fn is_modified(&self) -> bool {
        self.modified
    }
}

/// A parsed SDP body. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct SessionDescription {
    raw: Bytes,
    /// Session-level lines, `v=` first.
    session: Vec<Line>,
    media: Vec<MediaSection>,
    /// Blank lines after the last line (some agents add one); printed verbatim.
    trailer: Bytes,
    modified: bool,
}

impl PartialEq for SessionDescription {
    /// Two descriptions are equal when they print the same lines with the same endings.
    fn eq(&self, other: &Self) -> bool {
        self.session == other.session && self.trailer == other.trailer && {
            self.media.len() == other.media.len()
                && self
                    .media
                    .iter()
                    .zip(&other.media)
                    .all(|(a, b)| a.media_line == b.media_line && a.lines == b.lines)
        }
    }
}

impl Eq for SessionDescription {}

impl SessionDescription {
    /// Parse an SDP body. Lines keep pointing into `body`; nothing is copied.
    pub fn parse(body: Bytes) -> Result<Self, SdpError> {
        if body.is_empty() {
            return Err(SdpError::Empty);
        }
        let mut session: Vec<Line> = Vec::with_capacity(8);
        let mut media: Vec<MediaSection> = Vec::new();
        let mut trailer = Bytes::new();
        let mut pos = 0;
        let mut line_no = 0;
        while pos < body.len() {
            let rest = &body[pos..];
            line_no += 1;
            if matches!(rest.first(), Some(b'\r' | b'\n')) {
                if rest.iter().all(|&b| b == b'\r' || b == b'\n') && line_no > 1 {
                    trailer = body.slice(pos..);
                    break;
                }
                return Err(SdpError::EmptyLine { line: line_no });
            }
            // One scan finds the end of the line and any carriage return inside it.
            let content_len = find_cr_or_lf(rest);
            let (ending, consumed) = match rest.get(content_len..content_len + 2) {
                Some(b"\r\n") => (LineEnding::CrLf, content_len + 2),
                _ => match rest.get(content_len) {
                    Some(b'\n') => (LineEnding::Lf, content_len + 1),
                    Some(_) => return Err(SdpError::BareCarriageReturn { line: line_no }),
                    None => (LineEnding::None, content_len),
                },
            };
            let content = rest.get(..content_len).unwrap_or_default();
            let [kind, b'=', value @ ..] = content else {
                return Err(SdpError::MalformedLine { line: line_no });
            };
            if !kind.is_ascii_alphabetic() {
                return Err(SdpError::MalformedLine { line: line_no });
            }
            let line = Line {
                text: body.slice(pos..pos + content_len),
                ending,
            };
            pos += consumed;
            validate_line(*kind, value, line_no)?;
            if *kind == b'm' {
                let media_line = MediaLine::parse(&line.text, line_no)?;
                let mut lines = Vec::with_capacity(8);
                lines.push(line);
                media.push(MediaSection {
                    media_line,
                    lines,
                    modified: false,
                });
            } else if let Some(section) = media.last_mut() {
                section.lines.push(line);
            } else {
                session.push(line);
            }
        }
        Ok(SessionDescription {
            raw: body,
            session,
            media,
            trailer,
            modified: false,
        })
    }

    /// The session-level lines, `v=` first.
    pub fn session_lines(&self) -> &[Line] {
        &self.session
    }

    /// The media sections in order.
    pub fn media(&self) -> impl ExactSizeIterator<Item = &MediaSection> {
        self.media.iter()
    }

    /// The media sections in order, for rewriting.
    pub fn media_mut(&mut self) -> impl ExactSizeIterator<Item = &mut MediaSection> {
        self.media.iter_mut()
    }

    /// The `o=` line.
    pub fn origin(&self) -> Option<Origin<'_>> {
        self.session_line(b'o')
            .and_then(|l| Origin::parse(l.value()))
    }

    /// The `s=` value.
    pub fn session_name(&self) -> Option<&[u8]> {
        self.session_line(b's').map(Line::value)
    }

    /// The session-level `i=` value.
    pub fn information(&self) -> Option<&[u8]> {
        self.session_line(b'i').map(Line::value)
    }

    /// The session-level `c=` line.
    pub fn connection(&self) -> Option<Connection<'_>> {
        self.session_line(b'c')
            .and_then(|l| Connection::parse(l.value()))
    }

    /// The `t=` lines as `(start, stop)`.
    pub fn timings(&self) -> impl Iterator<Item = (u64, u64)> {
        self.session
            .iter()
            .filter(|l| l.kind() == b't')
            .filter_map(|l| parse_timing(l.value()))
    }

    /// Session-level bandwidth lines `b=<bwtype>:<bandwidth>`.
    pub fn bandwidths(&self) -> impl Iterator<Item = (&[u8], u64)> {
        bandwidths(&self.session)
    }

    /// The session-level attributes in order.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'_>> {
        self.session.iter().filter_map(Line::attribute)
    }

    /// The session-level direction attribute, if any.
    pub fn direction(&self) -> Option<Direction> {
        self.attributes()
            .filter(|a| a.value.is_none())
            .find_map(|a| Direction::from_attribute_name(a.name))
    }

    fn session_line(&self, kind: u8) -> Option<&Line> {
        self.session.iter().find(|l| l.kind() == kind)
    }

    /// The line ending used for lines this API inserts: that of the `v=` line, CRLF when the
    /// body was a single unterminated line.
    fn default_ending(&self) -> LineEnding {
        match self.session.first().map(Line::ending) {
            Some(LineEnding::Lf) => LineEnding::Lf,
            _ => LineEnding::CrLf,
        }
    }

    /// Insert a session-level line after the last line whose kind is in `after`.
    fn insert_session_line(&mut self, text: Bytes, after: &[u8]) {
        let index = self
            .session
            .iter()
            .rposition(|l| after.contains(&l.kind()))
            .map_or(0, |i| i + 1);
        let ending = self.default_ending();
        // A line inserted after an unterminated last line makes that line non-last.
        if let Some(previous) = index.checked_sub(1).and_then(|i| self.session.get_mut(i))
            && previous.ending == LineEnding::None
        {
            previous.ending = ending;
        }
        self.session.insert(index, Line { text, ending });
        self.modified = true;
    }

    /// Replace the origin's username, session id, address (and version when given) on every
    /// session-level `o=` line (RFC 4566 allows one; a second one must not leak either).
    /// Inserts an `o=` line after `v=` when there is none.
    pub fn rewrite_origin(&mut self, new: &OriginRewrite<'_>) -> Result<(), SdpError> {
        check_token(new.username, "origin username")?;
        check_token(new.session_id, "origin session id")?;
        if let Some(version) = new.session_version {
            check_token(version, "origin session version")?;
        }
        let ip = StackText::ip(new.address);
        let encode = |version: &[u8]| {
            concat(&[
                b"o=",
                new.username,
                b" ",
                new.session_id,
                b" ",
                version,
                b" ",
                connection_prefix(new.address),
                ip.as_bytes(),
            ])
        };
        let mut rewritten = 0;
        for line in self.session.iter_mut().filter(|l| l.kind() == b'o') {
            // The third token; every `o=` line was checked to have six when parsed.
            let old_version = Tokens::new(line.value()).nth(2);
            line.text = encode(new.session_version.or(old_version).unwrap_or(b"0"));
            rewritten += 1;
        }
        if rewritten == 0 {
            let text = encode(new.session_version.unwrap_or(b"0"));
            self.insert_session_line(text, b"v");
        }
        self.modified = true;
        Ok(())
    }

    /// Replace the `s=` value on every session-level `s=` line (inserting one after `o=` when
    /// missing). RFC 4566 wants a non-empty name; `-` is the customary anonymous one.
    pub fn set_session_name(&mut self, name: &[u8]) -> Result<(), SdpError> {
        if name.is_empty() || name.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(SdpError::InvalidRewriteValue {
                field: "session name",
            });
        }
        let text = concat(&[b"s=", name]);
        let mut rewritten = 0;
        for line in self.session.iter_mut().filter(|l| l.kind() == b's') {
            line.text = text.clone();
            rewritten += 1;
        }
        if rewritten == 0 {
            self.insert_session_line(text, b"vo");
        }
        self.modified = true;
        Ok(())
    }

    /// Keep only the lines (session and media level) for which `keep` returns true: the
    /// allowlist tool of the privacy layer (e.g. keep `v o s c t b m a`, dropping the `i=`,
    /// `u=`, `e=`, `p=`, `k=` and unknown lines that can identify the caller). The `v=` line
    /// and the `m=` lines always stay. Returns how many lines were dropped.
    pub fn retain_lines(&mut self, mut keep: impl FnMut(&Line) -> bool) -> usize {
        let before = self.session.len();
        let mut index = 0;
        self.session.retain(|l| {
            index += 1;
            index == 1 || keep(l)
        });
        let mut removed = before - self.session.len();
        self.modified |= removed > 0;
        for media in &mut self.media {
            let before = media.lines.len();
            let mut index = 0;
            media.lines.retain(|l| {
                index += 1;
                index == 1 || keep(l)
            });
            let dropped = before - media.lines.len();
            media.modified |= dropped > 0;
            removed += dropped;
        }
        removed
    }

    /// Replace the address of every session-level `c=` line. Returns how many were rewritten.
    pub fn set_connection_address(&mut self, address: IpAddr) -> usize {
        let count = rewrite_connections(&mut self.session, address);
        self.modified |= count > 0;
        count
    }

    /// Replace the address of every `c=` line, session and media level. Returns how many
    /// were rewritten.
    pub fn set_all_connection_addresses(&mut self, address: IpAddr) -> usize {
        let mut count = self.set_connection_address(address);
        for media in &mut self.media {
            count += media.set_connection_address(address);
        }
        count
    }

    /// Keep only the attributes (session and media level) for which `keep` returns true.
    /// Returns how many were dropped.
    pub fn retain_attributes(&mut self, mut keep: impl FnMut(Attribute<'_>) -> bool) -> usize {
        let before = self.session.len();
        self.session.retain(|l| l.attribute().is_none_or(&mut keep));
        let mut removed = before - self.session.len();
        self.modified |= removed > 0;
        for media in &mut self.media {
            removed += media.retain_attributes(&mut keep);
        }
        removed
    }

    /// Drop every attribute (session and media level) whose name matches one of the patterns,
    /// e.g. [`ICE_ATTRIBUTES`]. Returns how many were dropped.
    pub fn drop_attributes(&mut self, patterns: &[AttributePattern<'_>]) -> usize {
        self.retain_attributes(|a| !patterns.iter().any(|p| p.matches(a.name)))
    }

    /// Whether any rewrite touched the description.
    pub fn is_modified(&self) -> bool {
        self.modified || self.media.iter().any(MediaSection::is_modified)
    }

    /// The printed length in bytes.
    pub fn encoded_len(&self) -> usize {
        if !self.is_modified() {
            return self.raw.len();
        }
        self.all_lines().map(Line::encoded_len).sum::<usize>() + self.trailer.len()
    }

    fn all_lines(&self) -> impl Iterator<Item = &Line> {
        self.session
            .iter()
            .chain(self.media.iter().flat_map(|m| m.lines.iter()))
    }

    /// Print into `out`.
    pub fn write_to<B: BufMut>(&self, out: &mut B) {
        if !self.is_modified() {
            out.put_slice(&self.raw);
            return;
        }
        for line in self.all_lines() {
            line.write_to(out);
        }
        out.put_slice(&self.trailer);
    }

    /// Print. An unmodified description returns the buffer it was parsed from.
    pub fn to_bytes(&self) -> Bytes {
        if !self.is_modified() {
            return self.raw.clone();
        }
        // Exactly sized, so the `Bytes` takes the vector over without a second allocation.
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        Bytes::from(out)
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Validate the lines whose structure the API depends on.
fn validate_line(kind: u8, value: &[u8], line: usize) -> Result<(), SdpError> {
    match kind {
        b'v' if line == 1 && value == b"0" => {}
        b'v' if line == 1 => return Err(SdpError::UnsupportedVersion),
        b'v' => return Err(SdpError::DuplicateVersion { line }),
        _ if line == 1 => return Err(SdpError::MissingVersion),
        // Exactly what `Origin::parse` / `Connection::parse` accept, counted without
        // building the views.
        b'o' if count_tokens(value) != 6 => return Err(SdpError::MalformedOrigin { line }),
        b'c' if count_tokens(value) != 3 => return Err(SdpError::MalformedConnection { line }),
        b't' => {
            parse_timing(value).ok_or(SdpError::MalformedTiming { line })?;
        }
        b'b' => {
            parse_bandwidth(value).ok_or(SdpError::MalformedBandwidth { line })?;
        }
        b'a' => {
            // Only `a=rtcp` is validated: test for that name without splitting every attribute.
            if let Some(after) = value.strip_prefix(b"rtcp")
                && matches!(after.first(), None | Some(b':'))
            {
                after
                    .get(1..)
                    .and_then(Rtcp::parse)
                    .ok_or(SdpError::MalformedRtcp { line })?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The index of the first CR or LF in `bytes`, or its length: eight bytes per step.
fn find_cr_or_lf(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LF: u64 = u64::from_ne_bytes([b'\n'; 8]);
    const CR: u64 = u64::from_ne_bytes([b'\r'; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let (lf, cr) = (word ^ LF, word ^ CR);
        // A zero byte in `lf` or `cr` is a match. The lowest flagged byte is always a true
        // match (borrows only create false flags above a real one), so counting trailing
        // zeros of the little-endian word gives the first match.
        let found = ((lf.wrapping_sub(ONES) & !lf) | (cr.wrapping_sub(ONES) & !cr)) & HIGHS;
        if found != 0 {
            return offset + (found.trailing_zeros() / 8) as usize;
        }
        offset += 8;
    }
    offset
        + chunks
            .remainder()
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(chunks.remainder().len())
}

fn parse_timing(value: &[u8]) -> Option<(u64, u64)> {
    let mut tokens = Tokens::new(value);
    let start = parse_u64(tokens.next()?)?;
    let stop = parse_u64(tokens.next()?)?;
    tokens.next().is_none().then_some((start, stop))
}

fn parse_bandwidth(value: &[u8]) -> Option<(&[u8], u64)> {
    let colon = value.iter().position(|&b| b == b':')?;
    let (kind, amount) = (&value[..colon], &value[colon + 1..]);
    if kind.is_empty() || kind.contains(&b' ') {
        return None;
    }
    Some((kind, parse_u64(amount)?))
}

fn bandwidths(lines: &[Line]) -> impl Iterator<Item = (&[u8], u64)> {
    lines
        .iter()
        .filter(|l| l.kind() == b'b')
        .filter_map(|l| parse_bandwidth(l.value()))
}

fn rewrite_connections(lines: &mut [Line], address: IpAddr) -> usize {
    let ip = StackText::ip(address);
    let mut count = 0;
    for line in lines.iter_mut().filter(|l| l.kind() == b'c') {
        line.text = concat(&[b"c=", connection_prefix(address), ip.as_bytes()]);
        count += 1;
    }
    count
}

/// `IN IP4 ` or `IN IP6 `, the part of `c=`, `o=` and `a=rtcp` before the address.
fn connection_prefix(address: IpAddr) -> &'static [u8] {
    match address {
        IpAddr::V4(_) => b"IN IP4 ",
        IpAddr::V6(_) => b"IN IP6 ",
    }
}

/// The concatenation of `parts` in one exactly sized allocation (a `Vec` whose length equals
/// its capacity becomes a `Bytes` without the extra shared header a partly filled one needs).
fn concat(parts: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

/// Short text formatted on the stack: a decimal number or an IP address (at most 45 bytes).
struct StackText {
    buf: [u8; 48],
    len: usize,
}

impl StackText {
    fn decimal(mut value: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        let mut text = StackText {
            buf: [0; 48],
            len: 0,
        };
        text.push(&digits[start..]);
        text
    }

    fn ip(address: IpAddr) -> Self {
        let mut text = StackText {
            buf: [0; 48],
            len: 0,
        };
        match address {
            // Dotted quad written directly: the `Display` machinery costs ~900 instructions.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b".");
                    }
                    text.push_u8(octet);
                }
            }
            IpAddr::V6(_) => {
                // Cannot fail: the longest IPv6 text form is 45 bytes. IPv6 keeps `Display`
                // for its zero-run compression rules (RFC 5952).
                let _ = fmt::Write::write_fmt(&mut text, format_args!("{address}"));
            }
        }
        text
    }

    /// Append a decimal `u8` (1 to 3 digits).
    fn push_u8(&mut self, value: u8) {
        let (hundreds, tens, ones) = (value / 100, value / 10 % 10, value % 10);
        if hundreds > 0 {
            self.push(&[b'0' + hundreds, b'0' + tens, b'0' + ones]);
        } else if tens > 0 {
            self.push(&[b'0' + tens, b'0' + ones]);
        } else {
            self.push(&[b'0' + ones]);
        }
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
                true
            }
            None => false,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.push(s.as_bytes()) {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

fn check_token(value: &[u8], field: &'static str) -> Result<(), SdpError> {
    if value.is_empty() || value.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n' | 0)) {
        return Err(SdpError::InvalidRewriteValue { field });
    }
    Ok(())
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn parse_u16(digits: &[u8]) -> Option<u16> {
    parse_u64(digits).and_then(|v| u16::try_from(v).ok())
}

/// How many space-separated tokens `value` has (what [`Tokens`] would yield).
fn count_tokens(value: &[u8]) -> usize {
    let mut count = 0;
    let mut previous = b' ';
    for &b in value {
        count += usize::from(previous == b' ' && b != b' ');
        previous = b;
    }
    count
}

/// Space-separated tokens; runs of spaces count as one separator.
struct Tokens<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(input: &'a [u8]) -> Self {
        Tokens { input, pos: 0 }
    }

    fn skip_spaces(&mut self) {
        let (input, mut pos) = (self.input, self.pos);
        while pos < input.len() && input[pos] == b' ' {
            pos += 1;
        }
        self.pos = pos;
    }

    /// The next token as a range into the input.
    fn next_range(&mut self) -> Option<(usize, usize)> {
        // A local cursor: the loops stay in registers.
        let (input, mut pos) = (self.input, self.pos);
        while pos < input.len() && input[pos] == b' ' {
            pos += 1;
        }
        let start = pos;
        while pos < input.len() && input[pos] != b' ' {
            pos += 1;
        }
        self.pos = pos;
        (pos > start).then_some((start, pos))
    }

    /// What follows the last token, leading spaces skipped.
    fn rest(&mut self) -> &'a [u8] {
        self.skip_spaces();
        self.input.get(self.pos..).unwrap_or_default()
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (start, end) = self.next_range()?;
        self.input.get(start..end)
    }
}
