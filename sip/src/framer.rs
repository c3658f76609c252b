//! Incremental framing for stream transports (TCP/TLS), RFC 3261 §18.3 and
//! RFC 5626 §4.4.1 keep-alives.
//!
//! Bytes are appended with [`StreamFramer::push`] (or read straight into
//! [`StreamFramer::buffer_mut`]); [`StreamFramer::poll`] yields complete
//! messages, keep-alives and errors. Scanning resumes where the previous call
//! stopped, so a message arriving one byte at a time is scanned once.
//! A complete message is split off the buffer without copying.

use bytes::{Bytes, BytesMut};

use crate::error::{Origin, ParseError, ParseErrorKind};
use crate::header_name::HeaderName;
use crate::limits::Limits;
use crate::message::Message;
use crate::parse::parse_message;
use crate::views::parse_content_length;

/// What the framer found.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "boxing would cost an allocation per framed message"
)]
pub enum StreamEvent {
    /// A complete message.
    Message(Message),
    /// `CRLFCRLF` between messages: an RFC 5626 keep-alive ping (answer with [`PONG`]).
    Ping,
    /// A single `CRLF` between messages: an RFC 5626 pong (on a server-side
    /// framer: a CRLF followed by something other than CRLF).
    Pong,
}

/// The single CRLF to send in answer to a [`StreamEvent::Ping`].
pub const PONG: &[u8] = b"\r\n";

/// Incremental stream parser.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    limits: Limits,
    /// Bytes of the current message already scanned for the end of headers.
    scanned: usize,
    /// `(body_start, total_len)` once the header section is complete.
    frame: Option<(usize, usize)>,
    failed: bool,
    client: bool,
}

impl StreamFramer {
    /// Framer for a connection we accepted (we receive pings): a lone CRLF at
    /// the end of the buffer is held until the next bytes show whether it
    /// starts a `CRLFCRLF` ping.
    pub fn new(limits: Limits) -> Self {
        StreamFramer {
            buf: BytesMut::new(),
            limits,
            scanned: 0,
            frame: None,
            failed: false,
            client: false,
        }
    }

    /// Framer for a connection we opened (we send pings, receive pongs): a
    /// lone CRLF is reported as [`StreamEvent::Pong`] at once.
    pub fn for_client(limits: Limits) -> Self {
        StreamFramer {
            client: true,
            ..Self::new(limits)
        }
    }

    /// Append received bytes (copies them into the framer's buffer).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, for reading directly into it (append only).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether framing failed; the connection must be closed (after answering
    /// the error returned by [`StreamFramer::poll`], if any).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    fn fail(&mut self, kind: ParseErrorKind) -> Option<Result<StreamEvent, ParseError>> {
        self.failed = true;
        let origin = classify_prefix(&self.buf);
        Some(Err(ParseError::new(kind, origin)))
    }

    /// Next event, or `None` when more bytes are needed (or after a fatal error).
    pub fn poll(&mut self) -> Option<Result<StreamEvent, ParseError>> {
        if self.failed {
            return None;
        }
        if self.frame.is_none() {
            // Keep-alives between messages.
            if self.buf.starts_with(b"\r\n\r\n") {
                let _ = self.buf.split_to(4);
                self.scanned = 0;
                return Some(Ok(StreamEvent::Ping));
            }
            if self.buf.starts_with(b"\r\n") {
                let maybe_ping = !self.client
                    && (self.buf.len() == 2 || (self.buf.len() == 3 && self.buf[2] == b'\r'));
                if maybe_ping {
                    return None;
                }
                let _ = self.buf.split_to(2);
                self.scanned = 0;
                return Some(Ok(StreamEvent::Pong));
            }
            if self.buf.first() == Some(&b'\n') {
                // stray LF between messages: tolerate silently
                let _ = self.buf.split_to(1);
                self.scanned = 0;
                return self.poll();
            }
            let b = &self.buf[..];
            let from = self.scanned.saturating_sub(3);
            let mut found = None;
            let mut i = from;
            while i < b.len() {
                if b[i] == b'\n' {
                    if b.get(i + 1) == Some(&b'\n') {
                        found = Some(i + 2);
                        break;
                    }
                    if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                        found = Some(i + 3);
                        break;
                    }
                }
                i += 1;
            }
            let Some(body_start) = found else {
                self.scanned = b.len();
                if b.len() > self.limits.max_message_size {
                    return self.fail(ParseErrorKind::MessageTooLarge {
                        limit: self.limits.max_message_size,
                    });
                }
                return None;
            };
            let cl = match content_length(&b[..body_start]) {
                Ok(Some(n)) => n,
                Ok(None) => return self.fail(ParseErrorKind::ContentLengthRequired),
                Err(k) => return self.fail(k),
            };
            if cl > self.limits.max_body_size {
                return self.fail(ParseErrorKind::BodyTooLarge {
                    limit: self.limits.max_body_size,
                });
            }
            let total = body_start.saturating_add(cl);
            if total > self.limits.max_message_size {
                return self.fail(ParseErrorKind::MessageTooLarge {
                    limit: self.limits.max_message_size,
                });
            }
            self.frame = Some((body_start, total));
        }
        let (_, total) = self.frame?;
        if self.buf.len() < total {
            return None;
        }
        let bytes: Bytes = self.buf.split_to(total).freeze();
        self.frame = None;
        self.scanned = 0;
        Some(parse_message(bytes, &self.limits, true).map(StreamEvent::Message))
    }
}

/// Content-Length from a raw header section (first line is the start line).
fn content_length(head: &[u8]) -> Result<Option<usize>, ParseErrorKind> {
    let mut found = None;
    for line in head.split(|&c| c == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            continue;
        }
        let (s, e) = crate::text::trim_range(&line[..colon]);
        if !HeaderName::ContentLength.matches(&line[s..e]) {
            continue;
        }
        if found.is_some() {
            return Err(ParseErrorKind::DuplicateHeader(HeaderName::ContentLength));
        }
        let n = parse_content_length(&line[colon + 1..])
            .map_err(|e| ParseErrorKind::InvalidHeader(HeaderName::ContentLength, e))?;
        found = Some(n);
    }
    Ok(found)
}

fn classify_prefix(b: &[u8]) -> Origin {
    let start = b
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(b.len());
    // Error path only: copy the buffered prefix so the classifier can slice it.
    crate::parse::classify(&Bytes::copy_from_slice(&b[start..]))
}
