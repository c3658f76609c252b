//! sans-IO SIP core: messages, URIs, SDP, transactions. No sockets, clocks or
//! randomness; depends on `bytes` only.
//!
//! # Modules
//!
//! - [`message`]: [`Request`], [`Response`], [`Message`]; printing (`to_bytes`,
//!   `write_to`); mutation (`headers_mut`, `set_body`, `set_uri`).
//! - [`parse`]: [`parse_datagram`] (UDP).
//! - [`framer`]: [`StreamFramer`] (TCP/TLS), incremental, with RFC 5626 keep-alives.
//! - [`headers`], [`header_name`]: raw ordered header fields; open name table with compact forms.
//! - [`views`]: typed views on demand (Via, NameAddr for From/To/Contact/Route/PAI,
//!   CSeq, Call-ID, Max-Forwards, Content-Length, Content-Type, Expires, auth, Privacy, token lists).
//! - [`uri`]: sip/sips/tel URIs, RFC 3261 §19.1.4 comparison.
//! - [`params`]: raw `;name=value` lists.
//! - [`method`], [`status`]: open enums.
//! - [`builder`]: [`RequestBuilder`], [`ResponseBuilder`], CANCEL/ACK derivation.
//! - [`validate`]: checks above the parser that map to answers (420 Bad Extension, 415).
//! - [`answer`]: [`error_response`], the stateless answer to a request that failed to parse.
//! - [`error`], [`limits`]: [`ParseError`] → [`ErrorAnswer`], configurable [`Limits`].
//! - [`sdp`], [`transaction`]: SDP and RFC 3261 §17 transactions.
//!
//! # What allocates
//!
//! - Parsing a datagram into a [`Message`]: one `Vec<Header>` of exactly the
//!   number of header fields. All names, values, the start line, the URI and
//!   the body are `Bytes` slices of the input (refcount increments). If the
//!   input `Bytes` was made from a `Vec`, the `bytes` crate allocates its
//!   shared header once on the first slice. Known header names need no storage.
//! - Printing an unchanged message: nothing (`to_bytes` returns the original
//!   `Bytes`; `write_to` copies into the caller's buffer).
//! - Typed views: nothing (slices), except `display_name` with escapes
//!   (`Cow::Owned`), `Uri::user_unescaped`, and list helpers returning `Vec`.
//! - Mutation: the new header line / start line; printing a mutated message
//!   allocates one output buffer.
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
pub use builder::{RequestBuilder, ResponseBuilder};
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
pub use uri::{Host, Scheme, Uri};
pub use views::{Auth, CSeq, Contact, MediaType, NameAddr, Privacy, Transport, Via};
