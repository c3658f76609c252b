//! Parse errors and the answer each one maps to.

use core::fmt;

use crate::header_name::HeaderName;

/// What to do with a message that failed to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAnswer {
    /// Answer the request statelessly with this status and reason phrase.
    Respond {
        /// Status code (400, 413, 414, 416, 420, 505, 513).
        status: u16,
        /// Reason phrase naming the problem.
        reason: &'static str,
    },
    /// No answer can be addressed (a response, an ACK, no usable Via, or noise): drop.
    Drop,
}

/// What kind of message the failed input looked like; decides whether it can be answered.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A request (not ACK) whose top Via has a usable sent-protocol and sent-by.
    AnswerableRequest,
    /// A request that cannot be answered: ACK, or no usable top Via.
    UnanswerableRequest,
    /// A response: never answered.
    Response,
    /// Not recognisable as either.
    Unknown,
}

/// Syntax errors in URIs (RFC 3261 §19.1, RFC 3966).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriError {
    /// Empty input.
    Empty,
    /// Missing or malformed scheme.
    BadScheme,
    /// Illegal character in the user part.
    BadUser,
    /// Illegal character in the password.
    BadPassword,
    /// No host.
    MissingHost,
    /// Malformed host name or IP literal.
    BadHost,
    /// Port not a number in 0..=65535.
    BadPort,
    /// Malformed `%HH` escape.
    BadEscape,
    /// Malformed or empty URI parameter.
    BadParam,
    /// Malformed `?headers` part.
    BadHeaders,
    /// Malformed telephone number (tel URI).
    BadTelNumber,
    /// Characters left over after a complete URI (white space, `>`...).
    TrailingGarbage,
}

/// Syntax errors in typed header views.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// The value is empty.
    Empty,
    /// A quoted string is not terminated.
    UnterminatedQuote,
    /// `<` without matching `>`.
    UnterminatedAngle,
    /// Display name has characters outside token / quoted-string.
    BadDisplayName,
    /// White space inside `<...>` or inside an addr-spec.
    WhitespaceInAddrSpec,
    /// An addr-spec without `<>` carries URI parameters or headers.
    UnbracketedUriWithHeaders,
    /// The URI inside the value is malformed.
    BadUri(UriError),
    /// Via sent-protocol is not `name/version/transport`.
    BadSentProtocol,
    /// Via sent-by host is malformed.
    BadHost,
    /// A port is not a number in 0..=65535.
    BadPort,
    /// A parameter is empty (`;;`) or malformed.
    BadParam,
    /// A number is malformed.
    BadNumber,
    /// A number is out of its allowed range.
    NumberOutOfRange,
    /// A method token is missing or malformed.
    BadMethod,
    /// A token is malformed.
    BadToken,
    /// Extra characters after a complete value.
    TrailingGarbage,
    /// Media type is not `type/subtype`.
    BadMediaType,
    /// Authentication parameter list is malformed.
    BadAuthParam,
    /// A comma-separated list has an empty element.
    EmptyListElement,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed URI: {self:?}")
    }
}

impl std::error::Error for UriError {}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed header value: {self:?}")
    }
}

impl std::error::Error for ViewError {}

/// Granular cause of a parse failure.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Only CR/LF or nothing at all.
    Empty,
    /// No empty line ends the header section.
    UnterminatedHeaders,
    /// The message exceeds [`crate::Limits::max_message_size`].
    MessageTooLarge {
        /// The limit.
        limit: usize,
    },
    /// More header fields than [`crate::Limits::max_headers`].
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// A header field longer than [`crate::Limits::max_header_len`].
    HeaderTooLong {
        /// The limit.
        limit: usize,
    },
    /// More Via values than [`crate::Limits::max_vias`].
    TooManyVias {
        /// The limit.
        limit: usize,
    },
    /// More Route or Record-Route values than [`crate::Limits::max_routes`].
    TooManyRoutes {
        /// The limit.
        limit: usize,
    },
    /// Body larger than [`crate::Limits::max_body_size`].
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Request-URI longer than [`crate::Limits::max_uri_len`].
    UriTooLong {
        /// The limit.
        limit: usize,
    },
    /// Request line is not `Method SP Request-URI SP SIP-Version`.
    BadRequestLine,
    /// Method is not a token.
    BadMethod,
    /// Status line is not `SIP-Version SP Status-Code SP Reason-Phrase`.
    BadStatusLine,
    /// Status code not three digits in 100..=699.
    BadStatusCode,
    /// SIP version other than 2.0.
    UnsupportedVersion,
    /// The Request-URI is malformed.
    BadRequestUri(UriError),
    /// The Request-URI scheme is not sip, sips or tel.
    UnsupportedUriScheme,
    /// The Request-URI carries `?headers` (RFC 3261 §19.1.5 forbids it).
    HeadersInRequestUri,
    /// A header line has no colon, a bad name, or a stray continuation line.
    BadHeaderLine,
    /// A mandatory header field is absent.
    MissingHeader(HeaderName),
    /// A single-valued header field appears more than once.
    DuplicateHeader(HeaderName),
    /// A header field checked at parse time is malformed.
    InvalidHeader(HeaderName, ViewError),
    /// CSeq method differs from the request method.
    CSeqMethodMismatch,
    /// A stream message has no Content-Length (RFC 3261 §18.3).
    ContentLengthRequired,
    /// Content-Length promises more bytes than the datagram holds.
    ContentLengthExceedsBody {
        /// Declared length.
        declared: usize,
        /// Bytes actually available after the header section.
        available: usize,
    },
}

fn header_reason(prefix: u8, name: &HeaderName) -> &'static str {
    use HeaderName as H;
    // prefix: 0 = missing, 1 = duplicate, 2 = malformed
    match (prefix, name) {
        (0, H::Via) => "Missing Via Header",
        (0, H::From) => "Missing From Header",
        (0, H::To) => "Missing To Header",
        (0, H::CallId) => "Missing Call-ID Header",
        (0, H::CSeq) => "Missing CSeq Header",
        (0, H::MaxForwards) => "Missing Max-Forwards Header",
        (0, _) => "Missing Mandatory Header",
        (1, H::From) => "Multiple From Headers",
        (1, H::To) => "Multiple To Headers",
        (1, H::CallId) => "Multiple Call-ID Headers",
        (1, H::CSeq) => "Multiple CSeq Headers",
        (1, H::MaxForwards) => "Multiple Max-Forwards Headers",
        (1, H::ContentLength) => "Multiple Content-Length Values",
        (1, H::ContentType) => "Multiple Content-Type Headers",
        (1, _) => "Multiple Single-Valued Headers",
        (_, H::Via) => "Malformed Via Header",
        (_, H::From) => "Malformed From Header",
        (_, H::To) => "Malformed To Header",
        (_, H::CallId) => "Malformed Call-ID Header",
        (_, H::CSeq) => "Malformed CSeq Header",
        (_, H::MaxForwards) => "Malformed Max-Forwards Header",
        (_, H::ContentLength) => "Malformed Content-Length Header",
        (_, H::ContentType) => "Malformed Content-Type Header",
        (_, H::Contact) => "Malformed Contact Header",
        (_, H::Route) => "Malformed Route Header",
        (_, H::RecordRoute) => "Malformed Record-Route Header",
        (_, _) => "Malformed Header",
    }
}

impl ParseErrorKind {
    /// Status code and reason phrase for this cause, if the request could be answered.
    pub fn status(&self) -> (u16, &'static str) {
        use ParseErrorKind as K;
        match self {
            K::Empty => (400, "Empty Message"),
            K::UnterminatedHeaders => (400, "Unterminated Header Section"),
            K::MessageTooLarge { .. } => (513, "Message Too Large"),
            K::TooManyHeaders { .. } => (400, "Too Many Header Fields"),
            K::HeaderTooLong { .. } => (400, "Header Field Too Long"),
            K::TooManyVias { .. } => (400, "Too Many Via Values"),
            K::TooManyRoutes { .. } => (400, "Too Many Route Values"),
            K::BodyTooLarge { .. } => (413, "Request Entity Too Large"),
            K::UriTooLong { .. } => (414, "Request-URI Too Long"),
            K::BadRequestLine => (400, "Malformed Request Line"),
            K::BadMethod => (400, "Malformed Method"),
            K::BadStatusLine => (400, "Malformed Status Line"),
            K::BadStatusCode => (400, "Malformed Status Code"),
            K::UnsupportedVersion => (505, "Version Not Supported"),
            K::BadRequestUri(_) => (400, "Malformed Request-URI"),
            K::UnsupportedUriScheme => (416, "Unsupported URI Scheme"),
            K::HeadersInRequestUri => (400, "Headers Not Allowed In Request-URI"),
            K::BadHeaderLine => (400, "Malformed Header Line"),
            K::MissingHeader(h) => (400, header_reason(0, h)),
            K::DuplicateHeader(h) => (400, header_reason(1, h)),
            K::InvalidHeader(h, _) => (400, header_reason(2, h)),
            K::CSeqMethodMismatch => (400, "CSeq Method Mismatch"),
            K::ContentLengthRequired => (400, "Content-Length Required"),
            K::ContentLengthExceedsBody { .. } => (400, "Content-Length Exceeds Body"),
        }
    }

    /// Whether a stream connection can no longer be framed after this error.
    /// These are the errors [`crate::StreamFramer`] reports before stopping
    /// (its `is_failed()` turns true); answer if [`ParseError::answer`] says
    /// so, then close the connection. Other errors concern one framed message
    /// and the stream goes on.
    pub fn is_fatal_for_stream(&self) -> bool {
        use ParseErrorKind as K;
        matches!(
            self,
            K::MessageTooLarge { .. }
                | K::ContentLengthRequired
                | K::BodyTooLarge { .. }
                | K::DuplicateHeader(HeaderName::ContentLength)
                | K::InvalidHeader(HeaderName::ContentLength, _)
        )
    }
}

/// A parse failure: its cause and what the input looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    kind: ParseErrorKind,
    origin: Origin,
}

impl ParseError {
    /// Build an error (used by the parser and the framer).
    pub fn new(kind: ParseErrorKind, origin: Origin) -> Self {
        ParseError { kind, origin }
    }

    /// The cause.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }

    /// What the input looked like.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The answer: a stateless response for answerable requests, otherwise drop.
    pub fn answer(&self) -> ErrorAnswer {
        match self.origin {
            Origin::AnswerableRequest => {
                let (status, reason) = self.kind.status();
                ErrorAnswer::Respond { status, reason }
            }
            _ => ErrorAnswer::Drop,
        }
    }
}

/// An error whose origin is not known yet (answered by a drop until the
/// parser classifies the input).
impl From<ParseErrorKind> for ParseError {
    fn from(kind: ParseErrorKind) -> Self {
        ParseError::new(kind, Origin::Unknown)
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, reason) = self.kind.status();
        write!(f, "SIP parse error ({code} {reason}): {:?}", self.kind)
    }
}

impl std::error::Error for ParseError {}

/// Errors from the builders and mutators.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// A header value contains CR or LF (header injection) or is not valid for the field.
    InvalidHeaderValue(HeaderName),
    /// A header name is not a token.
    InvalidHeaderName,
    /// A reason phrase contains CR or LF.
    InvalidReason,
    /// The request to derive from lacks a field the derived message needs.
    MissingHeader(HeaderName),
    /// The assembled message does not parse (it would be rejected by peers).
    Parse(ParseErrorKind),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP build error: {self:?}")
    }
}

impl std::error::Error for BuildError {}
