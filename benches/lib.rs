//! Micro benchmarks live in `benches/benches`; this library holds the inputs they share.

/// The messages the SIP parser benchmarks run on: typical UA traffic, CRLF line endings.
pub mod messages {
    /// A REGISTER with digest credentials.
    pub const REGISTER: &[u8] = b"REGISTER sip:registrar.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7;rport\r\n\
Max-Forwards: 70\r\n\
To: \"Bob\" <sip:bob@example.com>\r\n\
From: \"Bob\" <sip:bob@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.10:5060;transport=udp>;expires=3600\r\n\
Authorization: Digest username=\"bob\", realm=\"example.com\", nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\", uri=\"sip:registrar.example.com\", response=\"dfe56131d1958046689d83306477ecc\", algorithm=MD5\r\n\
User-Agent: Example-UA/1.0\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\
\r\n";

    /// An INVITE carrying an audio offer.
    pub const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: \"Bob\" <sip:bob@biloxi.example.com>\r\n\
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.101:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n\
Supported: replaces, timer\r\n\
User-Agent: Example-UA/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 273\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=rtcp:49171 IN IP4 192.0.2.101\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

    /// The 200 OK answering [`INVITE`], with an audio answer.
    pub const OK_200: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.101\r\n\
To: \"Bob\" <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\n\
Supported: replaces\r\n\
Server: Example-UA/2.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 197\r\n\
\r\n\
v=0\r\n\
o=bob 2808844564 2808844564 IN IP4 192.0.2.4\r\n\
s=-\r\n\
c=IN IP4 192.0.2.4\r\n\
t=0 0\r\n\
m=audio 3456 RTP/AVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=sendrecv\r\n";

    /// All three, named for benchmark ids.
    pub const ALL: &[(&str, &[u8])] = &[
        ("register", REGISTER),
        ("invite_sdp", INVITE),
        ("ok_200", OK_200),
    ];
}

#[cfg(test)]
mod tests {
    use super::messages::ALL;

    /// The declared Content-Length must match the body, or the parsers would reject or truncate.
    #[test]
    fn content_length_matches_body() {
        for (name, message) in ALL {
            let split = message
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("header/body separator");
            let head = std::str::from_utf8(&message[..split]).expect("ascii head");
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length")
                .parse()
                .expect("number");
            assert_eq!(declared, message.len() - split - 4, "{name}");
        }
    }
}
