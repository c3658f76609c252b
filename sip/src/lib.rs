//! sans-IO SIP core: messages, URIs, SDP, transactions. No sockets, clocks or
//! randomness; depends on `bytes` only.
//!
//! # Modules
//!
//! - [`message`]: [`Request`], [`Response`], [`Message`]; printing (`to_bytes`,
//!   `write_to`); mutation (`headers_mut`, `set_body`, `set_uri`).
//! - [`parse`]: [`parse_datagram`] (UDP): framing, start line, header index
//!   and the checks that address an answer; [`Message::validate`] runs the
//!   full header checks (see below).
//! - [`framer`]: [`StreamFramer`] (TCP/TLS), incremental, with RFC 5626 keep-alives.
//! - [`headers`], [`header_name`]: raw ordered header fields (compact inline
//!   records, `Bytes` views on demand); open name table with compact forms.
//! - [`views`]: typed views on demand (Via, NameAddr for From/To/Contact/Route/PAI,
//!   CSeq, Call-ID, Max-Forwards, Content-Length, Content-Type, Expires, auth, Privacy, token lists).
//!   `Via::check`, `NameAddr::check`, `Contact::check` and `Uri::check` validate
//!   without building a view (what the parser itself uses).
//! - [`uri`]: sip/sips/tel URIs, RFC 3261 §19.1.4 comparison.
//! - [`params`]: raw `;name=value` lists.
//! - [`method`], [`status`]: open enums.
//! - [`builder`]: [`RequestBuilder`], [`ResponseBuilder`], CANCEL/ACK derivation.
//! - [`validate`]: checks above the parser that map to answers (420 Bad Extension, 415).
//! - [`answer`]: [`error_response`], the stateless answer to a request that failed to parse.
//! - [`error`], [`limits`]: [`ParseError`] → [`ErrorAnswer`], configurable [`Limits`].
//! - [`sdp`], [`transaction`]: SDP and RFC 3261 §17 transactions.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use sipveil_sip::{HeaderName, Limits, Message, StatusCode, parse_datagram};
//!
//! let wire = Bytes::from_static(
//!     b"OPTIONS sip:edge.example.com SIP/2.0\r\n\
//!       v: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK74bf9;rport\r\n\
//!       f: <sip:alice@example.com>;tag=9fxced76sl\r\n\
//!       t: <sip:edge.example.com>\r\n\
//!       i: 3848276298220188511@198.18.1.2\r\n\
//!       CSeq: 1 OPTIONS\r\n\
//!       Max-Forwards: 70\r\n\
//!       l: 0\r\n\r\n",
//! );
//! let msg = parse_datagram(wire.clone(), &Limits::default()).expect("valid");
//! assert_eq!(msg.to_bytes(), wire); // unchanged: byte-identical, no copy
//! let Message::Request(req) = msg else { unreachable!() };
//! assert_eq!(req.top_via().unwrap().branch().as_deref(), Some(&b"z9hG4bK74bf9"[..]));
//! assert_eq!(req.from_tag().as_deref(), Some(&b"9fxced76sl"[..]));
//!
//! let ok = req.response(StatusCode::OK).to_tag("e1").build().expect("response");
//! assert_eq!(ok.to_tag().as_deref(), Some(&b"e1"[..]));
//! assert!(ok.headers().get(&HeaderName::Via).is_some());
//!
//! // Failures map to an answer (or to a silent drop).
//! let bad = parse_datagram(Bytes::from_static(b"OPTIONS sip:x SIP/3.0\r\nVia: SIP/2.0/UDP h\r\n\r\n"), &Limits::default());
//! assert_eq!(
//!     bad.unwrap_err().answer(),
//!     sipveil_sip::ErrorAnswer::Respond { status: 505, reason: "Version Not Supported" }
//! );
//! ```
//!
//! # What the parse checks, and what `validate` adds
//!
//! Headers stay raw until someone asks (house rule 2), so [`parse_datagram`]
//! (and [`StreamFramer`]) check only what is needed to frame the message and
//! to match or answer it: the start line (method, Request-URI, version, or
//! status), the header section's shape (colons, names, folding, limits on
//! size and count), Content-Length, a Via (in a request: the **top** Via
//! value parses, since it addresses the answer), CSeq (single,
//! parses, names the request method), Call-ID (single, well formed), and
//! that From and To are present once. A failure there maps to its answer at
//! once ([`ParseError::answer`]).
//!
//! [`Message::validate`] (also on [`Request`] and [`Response`]) runs the rest
//! of the RFC 3261 header checks an element relies on: every Via value
//! and their number ([`Limits::max_vias`]), the From and To name-addrs and
//! their URIs, Max-Forwards, Route / Record-Route and their number, Contact
//! and Content-Type. Its errors are [`ParseError`]s with the same answers.
//! The core calls it on every request it handles itself or forwards; a
//! relay that only needs the transaction key can skip it. Typed views
//! (`from()`, `contacts()`...) check the value they read either way.
//!
//! Why the split: about a third of an eager parse went into validating
//! values that a stateless forwarder or a retransmission match never reads
//! (see BENCHMARKS.md, "SIP parser").
//!
//! # What allocates
//!
//! - Parsing a datagram into a [`Message`]: nothing for up to
//!   [`headers::INLINE_FIELDS`] (32) header fields. The header index is an
//!   inline array of compact records (name id, offsets into the message's
//!   one `Bytes`); more fields spill to one heap vector. The start line, the
//!   Request-URI's parts and the body are `Bytes` slices of the input
//!   (reference-count increments); header fields become `Bytes` slices only
//!   when asked for ([`Headers::iter`], [`Headers::get`], typed views). If the
//!   input `Bytes` was made from a `Vec`, the `bytes` crate allocates its
//!   shared header once on the first slice (a receive path that already
//!   shares its buffer avoids that). Known header names need no storage.
//! - [`Message::validate`] allocates nothing.
//! - Printing an unchanged message: nothing (`to_bytes` returns the original
//!   `Bytes`; `write_to` copies into the caller's buffer).
//! - Typed views: nothing (slices), except `display_name` with escapes
//!   (`Cow::Owned`), `Uri::user_unescaped`, and list helpers returning `Vec`.
//! - Mutation: the new header line / start line (the first added header
//!   line also allocates the small list that holds added lines); printing a
//!   mutated message allocates one output buffer.
//! - [`StreamFramer`]: its receive buffer grows as needed; complete messages
//!   are split off without copying.
//! - Error paths only: a framing error in [`StreamFramer`] copies the buffered
//!   prefix to classify it; [`error_response`] builds its answer in a new `Vec`.

#[warn(missing_docs)]
pub mod answer;
#[warn(missing_docs)]
pub mod builder;
#[warn(missing_docs)]
pub mod error;
#[warn(missing_docs)]
pub mod framer;
#[warn(missing_docs)]
pub mod header_name;
#[warn(missing_docs)]
pub mod headers;
#[warn(missing_docs)]
pub mod limits;
#[warn(missing_docs)]
pub mod message;
#[warn(missing_docs)]
pub mod method;
#[warn(missing_docs)]
pub mod params;
#[warn(missing_docs)]
pub mod parse;
pub mod sdp;
#[warn(missing_docs)]
pub mod status;
mod text;
pub mod transaction;
#[warn(missing_docs)]
pub mod uri;
#[warn(missing_docs)]
pub mod validate;
#[warn(missing_docs)]
pub mod views;

pub use answer::error_response;
pub use builder::{RequestBuilder, ResponseBuilder, ResponseWriter};
pub use error::{BuildError, ErrorAnswer, Origin, ParseError, ParseErrorKind, UriError, ViewError};
pub use framer::{PONG, StreamEvent, StreamFramer};
pub use header_name::HeaderName;
pub use headers::{Header, Headers};
pub use limits::Limits;
pub use message::{HeaderError, Message, Request, Response};
pub use method::Method;
pub use params::{Param, Params};
pub use parse::parse_datagram;
pub use status::StatusCode;
pub use text::CommaValues;
pub use text::decimal;
pub use uri::{Host, Scheme, Uri};
pub use views::{Auth, CSeq, Contact, MediaType, NameAddr, Privacy, Transport, Via};
