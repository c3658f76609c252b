//! The operations both SIP benchmarks run, for sipveil and for rsip.
//!
//! The privacy rewrite is the same for both parsers: new Call-ID, User-Agent and Server
//! removed, and for a message with an SDP body the origin, connection addresses, media ports
//! and `a=rtcp` rewritten. rsip has no SDP parser, so its body goes through sipveil's SDP
//! module too: the SDP part costs the same on both sides and the difference is SIP parsing
//! and printing.

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use sipveil_sip::sdp::{OriginRewrite, SessionDescription};

pub const NEW_CALL_ID: &str = "b2bua-5f3c9a1b7e@198.18.1.1";
pub const EDGE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
pub const RELAY_PORT: u16 = 40_000;

/// A received datagram: a reference-counted buffer, as the io_uring driver hands it over.
pub fn datagram(message: &[u8]) -> Bytes {
    let buf = Bytes::copy_from_slice(message);
    // The first clone of a Vec-backed `Bytes` moves it to a shared allocation; do it here so
    // the measured clones are reference-count increments like in the daemon.
    drop(buf.clone());
    buf
}

/// The SDP part of the privacy rewrite.
pub fn rewrite_sdp(body: Bytes) -> Bytes {
    let mut sdp = SessionDescription::parse(body).expect("benchmark SDP parses");
    sdp.rewrite_origin(&OriginRewrite {
        username: b"-",
        session_id: b"8172635",
        session_version: None,
        address: EDGE,
    })
    .expect("valid origin");
    sdp.set_all_connection_addresses(EDGE);
    for media in sdp.media_mut() {
        media.set_port(RELAY_PORT);
        media.rewrite_rtcp(RELAY_PORT + 1, Some(EDGE));
    }
    sdp.to_bytes()
}

pub mod sipveil {
    use bytes::Bytes;
    use sipveil_sip::{Header, HeaderName, Limits, Message, parse_datagram};

    pub fn parse(buf: &Bytes) -> Message {
        parse_datagram(buf.clone(), &Limits::default()).expect("benchmark message parses")
    }

    /// Parse and print an unmodified message (what forwarding does).
    pub fn parse_print(buf: &Bytes) -> Bytes {
        parse(buf).to_bytes()
    }

    /// Parse, apply the privacy rewrite, print.
    pub fn parse_rewrite_print(buf: &Bytes) -> Bytes {
        let mut message = parse(buf);
        let headers = message.headers_mut();
        headers.set(
            Header::new(HeaderName::CallId, super::NEW_CALL_ID.as_bytes()).expect("valid Call-ID"),
        );
        headers.remove_all(&HeaderName::UserAgent);
        headers.remove_all(&HeaderName::Server);
        let body = message.body().clone();
        if !body.is_empty() {
            let sdp = super::rewrite_sdp(body);
            let content_type = Some(&b"application/sdp"[..]);
            match &mut message {
                Message::Request(request) => request.set_body(content_type, sdp),
                Message::Response(response) => response.set_body(content_type, sdp),
            }
            .expect("valid body");
        }
        message.to_bytes()
    }
}

pub mod rsip {
    use bytes::Bytes;
    use rsip::headers::{CallId, ContentLength, UntypedHeader};
    use rsip::message::HasHeaders;
    use rsip::{Header, SipMessage};

    pub fn parse(buf: &Bytes) -> SipMessage {
        SipMessage::try_from(buf.clone()).expect("benchmark message parses with rsip")
    }

    pub fn parse_print(buf: &Bytes) -> Bytes {
        Bytes::from(parse(buf))
    }

    pub fn parse_rewrite_print(buf: &Bytes) -> Bytes {
        let mut message = parse(buf);
        let headers = message.headers_mut();
        headers.unique_push(Header::CallId(CallId::new(super::NEW_CALL_ID)));
        headers.retain(|h| !matches!(h, Header::UserAgent(_) | Header::Server(_)));
        if !message.body().is_empty() {
            let body = Bytes::from(std::mem::take(message.body_mut()));
            let sdp = super::rewrite_sdp(body);
            let length = u32::try_from(sdp.len()).expect("small body");
            *message.body_mut() = sdp.to_vec();
            message
                .headers_mut()
                .unique_push(Header::ContentLength(ContentLength::from(length)));
        }
        Bytes::from(message)
    }
}
