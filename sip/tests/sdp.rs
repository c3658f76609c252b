//! SDP parse / inspect / rewrite / print tests, with proptest round trips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use proptest::prelude::*;
use sipveil_sip::sdp::{
    AttributePattern, Direction, ICE_ATTRIBUTES, LineEnding, OriginRewrite, SdpError,
    SessionDescription,
};

const AUDIO_OFFER: &[u8] = b"v=0\r\n\
o=alice 2890844526 2890844527 IN IP4 192.0.2.10\r\n\
s=Talk\r\n\
i=A call\r\n\
c=IN IP4 192.0.2.10\r\n\
b=AS:64\r\n\
t=0 0\r\n\
a=sendrecv\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp:49171 IN IP4 192.0.2.10\r\n\
a=ptime:20\r\n";

const WEBRTC_OFFER: &[u8] = b"v=0\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\n\
s=-\n\
t=0 0\n\
a=group:BUNDLE 0 1\n\
a=ice-options:trickle\n\
a=msid-semantic: WMS\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\n\
c=IN IP4 203.0.113.7\n\
a=rtcp:9 IN IP4 0.0.0.0\n\
a=candidate:842163049 1 udp 1677729535 203.0.113.7 50000 typ srflx raddr 10.0.0.2 rport 50000\n\
a=candidate:1 1 udp 2122260223 10.0.0.2 50000 typ host\n\
a=end-of-candidates\n\
a=ice-ufrag:EsAw\n\
a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\n\
a=ICE-Lite\n\
a=fingerprint:sha-256 12:DF:3E\n\
a=setup:actpass\n\
a=mid:0\n\
a=recvonly\n\
a=rtcp-mux\n\
a=rtpmap:111 opus/48000/2\n\
m=video 9/2 UDP/TLS/RTP/SAVPF 96\n\
c=IN IP6 2001:db8::7\n\
a=remote-candidates:1 2001:db8::7 50002\n\
a=mid:1\n\
a=sendonly";

fn parse(input: &[u8]) -> SessionDescription {
    match SessionDescription::parse(Bytes::copy_from_slice(input)) {
        Ok(sdp) => sdp,
        Err(e) => panic!("fixture must parse: {e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

#[test]
fn unmodified_round_trip_is_byte_identical_and_shares_the_buffer() {
    for input in [AUDIO_OFFER, WEBRTC_OFFER] {
        let body = Bytes::copy_from_slice(input);
        let sdp = SessionDescription::parse(body.clone()).expect("parses");
        let printed = sdp.to_bytes();
        assert_eq!(printed, body);
        assert_eq!(
            printed.as_ptr(),
            body.as_ptr(),
            "unmodified print must not copy"
        );
        assert_eq!(sdp.encoded_len(), input.len());
        let mut out = Vec::new();
        sdp.write_to(&mut out);
        assert_eq!(out, input);
        assert!(!sdp.is_modified());
    }
}

#[test]
fn inspects_session_level_fields() {
    let sdp = parse(AUDIO_OFFER);
    let origin = sdp.origin().expect("origin");
    assert_eq!(origin.username, b"alice");
    assert_eq!(origin.session_id, b"2890844526");
    assert_eq!(origin.session_version, b"2890844527");
    assert_eq!(origin.net_type, b"IN");
    assert_eq!(origin.addr_type, b"IP4");
    assert_eq!(origin.address, b"192.0.2.10");
    assert_eq!(sdp.session_name(), Some(&b"Talk"[..]));
    assert_eq!(sdp.information(), Some(&b"A call"[..]));
    let connection = sdp.connection().expect("session c=");
    assert_eq!(connection.ip(), Some(ip("192.0.2.10")));
    assert_eq!(sdp.timings().collect::<Vec<_>>(), vec![(0, 0)]);
    assert_eq!(
        sdp.bandwidths().collect::<Vec<_>>(),
        vec![(&b"AS"[..], 64u64)]
    );
    assert_eq!(sdp.direction(), Some(Direction::SendRecv));
    assert_eq!(sdp.session_lines()[0].text(), b"v=0");
    assert_eq!(sdp.session_lines()[0].ending(), LineEnding::CrLf);
}

#[test]
fn iterates_media_sections() {
    let sdp = parse(AUDIO_OFFER);
    assert_eq!(sdp.media().len(), 1);
    let audio = sdp.media().next().expect("one section");
    assert_eq!(audio.media_type(), b"audio");
    assert_eq!(audio.port(), 49170);
    assert_eq!(audio.port_count(), None);
    assert_eq!(audio.proto(), b"RTP/AVP");
    assert_eq!(
        audio.formats().collect::<Vec<_>>(),
        vec![&b"0"[..], b"8", b"101"]
    );
    assert!(!audio.rtcp_mux());
    assert_eq!(audio.direction(), None);
    assert_eq!(audio.effective_direction(&sdp), Direction::SendRecv);
    assert!(audio.connection().is_none());
    let rtcp = audio.rtcp().expect("a=rtcp");
    assert_eq!(rtcp.port, 49171);
    assert_eq!(rtcp.connection.and_then(|c| c.ip()), Some(ip("192.0.2.10")));
    let rtpmap = audio.attribute("rtpmap").expect("rtpmap");
    assert_eq!(rtpmap.value, Some(&b"0 PCMU/8000"[..]));
    assert_eq!(audio.attributes().count(), 5);

    let sdp = parse(WEBRTC_OFFER);
    let sections: Vec<_> = sdp.media().collect();
    assert_eq!(sections.len(), 2);
    assert!(sections[0].rtcp_mux());
    assert_eq!(sections[0].direction(), Some(Direction::RecvOnly));
    assert_eq!(sections[0].port(), 9);
    assert_eq!(sections[0].rtcp().map(|r| r.port), Some(9));
    assert_eq!(sections[1].media_type(), b"video");
    assert_eq!(sections[1].port_count(), Some(2));
    assert_eq!(sections[1].direction(), Some(Direction::SendOnly));
    assert_eq!(
        sections[1].connection().and_then(|c| c.ip()),
        Some(ip("2001:db8::7"))
    );
    // Last line without terminator is kept as such.
    let last = sections[1].lines().last().expect("lines");
    assert_eq!(last.ending(), LineEnding::None);
    assert_eq!(last.ending(), LineEnding::None);
    assert_eq!(sections[0].lines()[0].ending(), LineEnding::Lf);
}

#[test]
fn privacy_rewrite_of_an_audio_offer() {
    let mut sdp = parse(AUDIO_OFFER);
    sdp.rewrite_origin(&OriginRewrite {
        username: b"-",
        session_id: b"1234",
        session_version: None,
        address: ip("198.18.1.1"),
    })
    .expect("valid origin");
    sdp.set_session_name(b"-").expect("valid name");
    assert_eq!(sdp.set_all_connection_addresses(ip("198.18.1.1")), 1);
    for media in sdp.media_mut() {
        media.set_port(40000);
        assert_eq!(media.rewrite_rtcp(40001, Some(ip("198.18.1.1"))), 1);
    }
    assert!(sdp.is_modified());
    let printed = sdp.to_bytes();
    let expected: &[u8] = b"v=0\r\n\
o=- 1234 2890844527 IN IP4 198.18.1.1\r\n\
s=-\r\n\
i=A call\r\n\
c=IN IP4 198.18.1.1\r\n\
b=AS:64\r\n\
t=0 0\r\n\
a=sendrecv\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=rtcp:40001 IN IP4 198.18.1.1\r\n\
a=ptime:20\r\n";
    assert_eq!(
        printed,
        expected,
        "got:\n{}",
        String::from_utf8_lossy(&printed)
    );
    assert_eq!(sdp.encoded_len(), expected.len());
    assert_eq!(SessionDescription::parse(printed).expect("reparses"), sdp);
}

#[test]
fn privacy_rewrite_of_a_webrtc_offer_drops_ice_and_keeps_lf_endings() {
    let mut sdp = parse(WEBRTC_OFFER);
    let dropped = sdp.drop_attributes(ICE_ATTRIBUTES);
    // ice-options, 2 candidates, end-of-candidates, ice-ufrag, ice-pwd, ICE-Lite, remote-candidates
    assert_eq!(dropped, 8);
    sdp.rewrite_origin(&OriginRewrite {
        username: b"-",
        session_id: b"99",
        session_version: Some(b"1"),
        address: ip("2001:db8:ffff::1"),
    })
    .expect("valid origin");
    assert_eq!(sdp.set_all_connection_addresses(ip("198.18.2.1")), 2);
    let mut ports = [30000u16, 30002];
    for (media, port) in sdp.media_mut().zip(&mut ports) {
        media.set_port(*port);
        media.rewrite_rtcp(*port, None);
    }
    let printed = sdp.to_bytes();
    let text = String::from_utf8_lossy(&printed);
    assert!(!text.contains("\r\n"), "LF endings kept:\n{text}");
    assert!(!text.to_ascii_lowercase().contains("candidate"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("ice-"), "{text}");
    assert!(
        !text.contains("203.0.113.7") && !text.contains("10.0.0.2"),
        "{text}"
    );
    assert!(
        text.contains("o=- 99 1 IN IP6 2001:db8:ffff::1\n"),
        "{text}"
    );
    assert!(
        text.contains("m=audio 30000 UDP/TLS/RTP/SAVPF 111 0\n"),
        "{text}"
    );
    assert!(text.contains("a=rtcp:30000\n"), "{text}");
    assert!(
        text.contains("m=video 30002/2 UDP/TLS/RTP/SAVPF 96\n"),
        "{text}"
    );
    assert!(text.contains("c=IN IP4 198.18.2.1\n"), "{text}");
    assert!(
        text.ends_with("a=sendonly"),
        "unterminated last line kept: {text}"
    );
    // Untouched lines are unchanged, including the odd spacing of msid-semantic.
    assert!(text.contains("a=msid-semantic: WMS\n"), "{text}");
    let reparsed = SessionDescription::parse(printed.clone()).expect("reparses");
    assert_eq!(reparsed, sdp);
    assert_eq!(reparsed.to_bytes(), printed);
}

#[test]
fn attribute_patterns_and_retain() {
    let mut sdp = parse(WEBRTC_OFFER);
    let removed = sdp.drop_attributes(&[
        AttributePattern::Exact("fingerprint"),
        AttributePattern::Prefix("set"),
    ]);
    assert_eq!(removed, 2);
    assert!(sdp.media().all(|m| m.attribute("setup").is_none()));
    let removed = sdp
        .media_mut()
        .next()
        .expect("audio")
        .retain_attributes(|a| a.name == b"mid");
    assert!(removed > 0);
    let audio = sdp.media().next().expect("audio");
    assert_eq!(
        audio.attributes().map(|a| a.name).collect::<Vec<_>>(),
        vec![&b"mid"[..]]
    );
    // Non-attribute lines survive retain.
    assert!(audio.connection().is_some());
    assert!(AttributePattern::Prefix("ice-").matches(b"ICE-PWD"));
    assert!(!AttributePattern::Prefix("ice-").matches(b"ice"));
    assert!(AttributePattern::Exact("candidate").matches(b"Candidate"));
    assert!(!AttributePattern::Exact("candidate").matches(b"candidates"));
}

#[test]
fn unknown_lines_and_trailers_round_trip() {
    let inputs: &[&[u8]] = &[
        b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns= \r\nu=http://example.com\r\ne=a@b.c\r\np=+1 555\r\n\
z=2882844526 -1h\r\nk=prompt\r\nt=0 0\r\nr=7d 1h 0 25h\r\nx=whatever goes\r\n\
m=text 0 RTP/AVP\r\ny=\r\n",
        b"v=0\r\n\r\n",
        b"v=0\n\n\n",
        b"v=0",
        b"v=0\r\ns=mixed\nt=0 0\r\nm=audio 1 RTP/AVP 0\n",
        b"v=0\r\nm=audio  1   RTP/AVP  0  8 \r\na=rtcp:5\r\n",
    ];
    for input in inputs {
        let sdp = parse(input);
        assert_eq!(sdp.to_bytes(), Bytes::copy_from_slice(input));
        // A rewrite that changes nothing textually still prints every line the same way.
        let mut rewritten = sdp.clone();
        rewritten.drop_attributes(&[AttributePattern::Exact("no-such-attribute")]);
        for media in rewritten.media_mut() {
            let port = media.port();
            media.set_port(port);
        }
        let printed = rewritten.to_bytes();
        let reparsed = SessionDescription::parse(printed.clone()).expect("reparses");
        assert_eq!(reparsed.to_bytes(), printed);
    }
    let spaced = parse(b"v=0\r\nm=audio  1   RTP/AVP  0  8 \r\n");
    let media = spaced.media().next().expect("section");
    assert_eq!(media.formats().collect::<Vec<_>>(), vec![&b"0"[..], b"8"]);
    assert_eq!(media.proto(), b"RTP/AVP");
}

#[test]
fn inserts_missing_origin_and_session_name() {
    let mut sdp = parse(b"v=0\nt=0 0\nm=audio 5004 RTP/AVP 0\n");
    sdp.set_session_name(b"-").expect("valid");
    sdp.rewrite_origin(&OriginRewrite {
        username: b"-",
        session_id: b"7",
        session_version: None,
        address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    })
    .expect("valid");
    assert_eq!(
        sdp.to_bytes(),
        Bytes::from_static(b"v=0\no=- 7 0 IN IP4 198.18.0.1\ns=-\nt=0 0\nm=audio 5004 RTP/AVP 0\n")
    );
    let mut bare = parse(b"v=0");
    bare.set_session_name(b"x").expect("valid");
    assert_eq!(bare.to_bytes(), Bytes::from_static(b"v=0\r\ns=x\r\n"));
}

#[test]
fn every_origin_and_session_name_line_is_rewritten() {
    let mut sdp = parse(
        b"v=0\r\no=alice 1 7 IN IP4 192.0.2.1\r\no=alice 2 8 IN IP4 192.0.2.1\r\n\
s=Alice's phone\r\ns=Alice again\r\nt=0 0\r\n",
    );
    sdp.rewrite_origin(&OriginRewrite {
        username: b"-",
        session_id: b"9",
        session_version: None,
        address: ip("198.18.1.1"),
    })
    .expect("valid");
    sdp.set_session_name(b"-").expect("valid");
    let printed = sdp.to_bytes();
    assert_eq!(
        printed,
        Bytes::from_static(
            b"v=0\r\no=- 9 7 IN IP4 198.18.1.1\r\no=- 9 8 IN IP4 198.18.1.1\r\n\
s=-\r\ns=-\r\nt=0 0\r\n"
        )
    );
}

#[test]
fn retain_lines_is_an_allowlist_that_keeps_v_and_m() {
    let mut sdp = parse(
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\ni=Alice's desk\r\nu=http://alice.example\r\n\
e=alice@example.com\r\np=+1 555 0100\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\ni=mic\r\n\
k=clear:secret\r\na=sendrecv\r\n",
    );
    let dropped = sdp.retain_lines(|l| b"vosctbma".contains(&l.kind()));
    assert_eq!(dropped, 6);
    assert_eq!(
        sdp.to_bytes(),
        Bytes::from_static(
            b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\na=sendrecv\r\n"
        )
    );
    // Even a predicate that keeps nothing leaves a parseable description.
    let dropped = sdp.retain_lines(|_| false);
    assert_eq!(dropped, 4);
    assert_eq!(
        sdp.to_bytes(),
        Bytes::from_static(b"v=0\r\nm=audio 5004 RTP/AVP 0\r\n")
    );
    let reparsed = SessionDescription::parse(sdp.to_bytes()).expect("reparses");
    assert_eq!(reparsed, sdp);
}

#[test]
fn media_connection_removal_and_port_count() {
    let mut sdp = parse(WEBRTC_OFFER);
    let mut sections = sdp.media_mut();
    let audio = sections.next().expect("audio");
    assert_eq!(audio.remove_connections(), 1);
    assert!(audio.connection().is_none());
    assert_eq!(audio.lines()[0].kind(), b'm');
    let video = sections.next().expect("video");
    video.set_port_count(None);
    video.set_connection_address(IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(video.lines()[0].text(), b"m=video 9 UDP/TLS/RTP/SAVPF 96");
    assert_eq!(video.connection().map(|c| c.address), Some(&b"::1"[..]));
}

#[test]
fn the_longest_ipv6_text_form_is_written_whole() {
    let widest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let mut sdp = parse(AUDIO_OFFER);
    assert_eq!(sdp.set_all_connection_addresses(ip(widest)), 1);
    let audio = sdp.media_mut().next().expect("audio");
    assert_eq!(audio.rewrite_rtcp(65535, Some(ip(widest))), 1);
    let rtcp = audio.rtcp().expect("a=rtcp");
    assert_eq!(rtcp.port, 65535);
    assert_eq!(rtcp.connection.map(|c| c.address), Some(widest.as_bytes()));
    assert_eq!(rtcp.connection.map(|c| c.addr_type), Some(&b"IP6"[..]));
    assert_eq!(sdp.connection().map(|c| c.address), Some(widest.as_bytes()));
}

#[test]
fn rejects_malformed_bodies_with_named_causes() {
    let cases: &[(&[u8], SdpError)] = &[
        (b"", SdpError::Empty),
        (b"o=- 1 1 IN IP4 0.0.0.0\r\n", SdpError::MissingVersion),
        (b"v=1\r\n", SdpError::UnsupportedVersion),
        (b"v=0\r\nv=0\r\n", SdpError::DuplicateVersion { line: 2 }),
        (b"v=0\r\nhello\r\n", SdpError::MalformedLine { line: 2 }),
        (b"v=0\r\n1=x\r\n", SdpError::MalformedLine { line: 2 }),
        (b"v=0\r\n\r\ns=x\r\n", SdpError::EmptyLine { line: 2 }),
        (b"\r\nv=0\r\n", SdpError::EmptyLine { line: 1 }),
        (
            b"v=0\r\ns=a\rb\r\n",
            SdpError::BareCarriageReturn { line: 2 },
        ),
        (
            b"v=0\r\no=- 1 IN IP4 x\r\n",
            SdpError::MalformedOrigin { line: 2 },
        ),
        (
            b"v=0\r\nc=IN IP4\r\n",
            SdpError::MalformedConnection { line: 2 },
        ),
        (
            b"v=0\r\nc=IN IP4 a b\r\n",
            SdpError::MalformedConnection { line: 2 },
        ),
        (b"v=0\r\nt=0\r\n", SdpError::MalformedTiming { line: 2 }),
        (b"v=0\r\nt=0 x\r\n", SdpError::MalformedTiming { line: 2 }),
        (b"v=0\r\nb=AS\r\n", SdpError::MalformedBandwidth { line: 2 }),
        (
            b"v=0\r\nm=audio 5\r\n",
            SdpError::MalformedMedia { line: 2 },
        ),
        (
            b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
            SdpError::InvalidPort { line: 2 },
        ),
        (
            b"v=0\r\nm=audio 5/x RTP/AVP 0\r\n",
            SdpError::InvalidPort { line: 2 },
        ),
        (
            b"v=0\r\nm=audio 5 RTP/AVP 0\r\na=rtcp:\r\n",
            SdpError::MalformedRtcp { line: 3 },
        ),
        (
            b"v=0\r\nm=audio 5 RTP/AVP 0\r\na=rtcp:9 IN\r\n",
            SdpError::MalformedRtcp { line: 3 },
        ),
    ];
    for (input, expected) in cases {
        let got = SessionDescription::parse(Bytes::copy_from_slice(input));
        assert_eq!(
            got.as_ref().err(),
            Some(expected),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        assert!(!expected.to_string().is_empty());
    }
}

#[test]
fn rewrite_values_are_validated() {
    let mut sdp = parse(AUDIO_OFFER);
    let bad = OriginRewrite {
        username: b"a b",
        session_id: b"1",
        session_version: None,
        address: ip("198.18.1.1"),
    };
    assert_eq!(
        sdp.rewrite_origin(&bad),
        Err(SdpError::InvalidRewriteValue {
            field: "origin username"
        })
    );
    assert_eq!(
        sdp.set_session_name(b"a\r\nm=audio 1 RTP/AVP 0"),
        Err(SdpError::InvalidRewriteValue {
            field: "session name"
        })
    );
    assert_eq!(
        sdp.set_session_name(b""),
        Err(SdpError::InvalidRewriteValue {
            field: "session name"
        })
    );
    assert!(!sdp.is_modified(), "a rejected rewrite changes nothing");
}

// ---- property tests ----------------------------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+./_-]{1,12}"
}

fn ipv4() -> impl Strategy<Value = String> {
    any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string())
}

fn text_value() -> impl Strategy<Value = String> {
    // Free text: anything printable, spaces included (leading/trailing too).
    "[ -~]{0,30}"
}

fn attribute_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (token(), proptest::option::of(text_value())).prop_map(|(n, v)| match v {
            Some(v) => format!("a={n}:{v}"),
            None => format!("a={n}"),
        }),
        (any::<u16>(), proptest::option::of(ipv4())).prop_map(|(p, a)| match a {
            Some(a) => format!("a=rtcp:{p} IN IP4 {a}"),
            None => format!("a=rtcp:{p}"),
        }),
        Just("a=rtcp-mux".to_owned()),
        Just("a=sendonly".to_owned()),
        text_value().prop_map(|v| format!("a=candidate:{v}")),
        (token(), text_value()).prop_map(|(n, v)| format!("a=ice-{n}:{v}")),
    ]
}

fn session_extra_line() -> impl Strategy<Value = String> {
    prop_oneof![
        text_value().prop_map(|v| format!("s={v}")),
        text_value().prop_map(|v| format!("i={v}")),
        ipv4().prop_map(|a| format!("c=IN IP4 {a}")),
        (token(), any::<u32>()).prop_map(|(t, n)| format!("b={t}:{n}")),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("t={a} {b}")),
        ("[a-z]", text_value()).prop_map(|(k, v)| match k.as_str() {
            // keep validated kinds valid, others are free-form
            "o" | "c" | "t" | "b" | "m" | "v" | "a" => format!("z={v}"),
            _ => format!("{k}={v}"),
        }),
        attribute_line(),
    ]
}

fn media_section() -> impl Strategy<Value = Vec<String>> {
    (
        "(audio|video|application|text)",
        any::<u16>(),
        proptest::option::of(1u16..8),
        "(RTP/AVP|RTP/SAVPF|UDP/TLS/RTP/SAVPF|udp)",
        proptest::collection::vec(0u8..128, 0..5),
        proptest::collection::vec(
            prop_oneof![
                attribute_line(),
                ipv4().prop_map(|a| format!("c=IN IP4 {a}")),
                text_value().prop_map(|v| format!("i={v}")),
            ],
            0..8,
        ),
    )
        .prop_map(|(media, port, count, proto, formats, rest)| {
            let port = match count {
                Some(c) => format!("{port}/{c}"),
                None => port.to_string(),
            };
            let mut line = format!("m={media} {port} {proto}");
            for f in formats {
                line.push_str(&format!(" {f}"));
            }
            let mut lines = vec![line];
            lines.extend(rest);
            lines
        })
}

fn sdp_body() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::option::of((token(), any::<u64>(), any::<u64>(), ipv4())),
        proptest::collection::vec(session_extra_line(), 0..8),
        proptest::collection::vec(media_section(), 0..4),
        proptest::collection::vec(any::<bool>(), 64),
        prop_oneof![Just(""), Just("crlf"), Just("lf"), Just("none")],
        "(\r\n|\n){0,2}",
    )
        .prop_map(|(origin, extras, media, crlf, last, trailer)| {
            let mut lines = vec!["v=0".to_owned()];
            if let Some((user, id, version, address)) = origin {
                lines.push(format!("o={user} {id} {version} IN IP4 {address}"));
            }
            lines.extend(extras);
            lines.extend(media.into_iter().flatten());
            let mut out = Vec::new();
            let count = lines.len();
            for (i, line) in lines.iter().enumerate() {
                out.extend_from_slice(line.as_bytes());
                let ending: &[u8] = if crlf[i % crlf.len()] { b"\r\n" } else { b"\n" };
                if i + 1 == count {
                    match last {
                        "crlf" => out.extend_from_slice(b"\r\n"),
                        "lf" => out.extend_from_slice(b"\n"),
                        "none" => return out,
                        _ => out.extend_from_slice(ending),
                    }
                } else {
                    out.extend_from_slice(ending);
                }
            }
            out.extend_from_slice(trailer.as_bytes());
            out
        })
}

/// 512 cases unless PROPTEST_CASES says otherwise (for longer local runs).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

#[test]
fn line_ends_and_bare_carriage_returns_are_found_at_every_offset() {
    // Line lengths around and beyond the eight-byte scan step, every terminator kind.
    for len in 1..40 {
        let value = "x".repeat(len);
        for ending in ["\r\n", "\n", ""] {
            let body = format!("v=0\r\ns={value}{ending}");
            let sdp = parse(body.as_bytes());
            assert_eq!(sdp.session_name(), Some(value.as_bytes()), "{body:?}");
            assert_eq!(&sdp.to_bytes()[..], body.as_bytes());
        }
        for cr_at in 0..len {
            let mut bad = value.clone().into_bytes();
            bad[cr_at] = b'\r';
            let mut body = b"v=0\r\ns=".to_vec();
            body.extend_from_slice(&bad);
            body.extend_from_slice(b"\r\nt=0 0\r\n");
            assert_eq!(
                SessionDescription::parse(Bytes::from(body.clone())),
                Err(SdpError::BareCarriageReturn { line: 2 }),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_sdp_round_trips_byte_identical(body in sdp_body()) {
        let parsed = SessionDescription::parse(Bytes::from(body.clone()));
        let sdp = match parsed {
            Ok(sdp) => sdp,
            Err(e) => return Err(TestCaseError::fail(format!(
                "{e} for {:?}", String::from_utf8_lossy(&body)))),
        };
        prop_assert_eq!(&sdp.to_bytes()[..], &body[..]);
        prop_assert_eq!(sdp.encoded_len(), body.len());
    }

    #[test]
    fn rewritten_sdp_reparses_to_the_same_description(
        body in sdp_body(),
        address in ipv4(),
        port in any::<u16>(),
    ) {
        let mut sdp = SessionDescription::parse(Bytes::from(body))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let address: IpAddr = address.parse().map_err(|_| TestCaseError::fail("ip"))?;
        sdp.rewrite_origin(&OriginRewrite {
            username: b"-", session_id: b"42", session_version: None, address,
        }).map_err(|e| TestCaseError::fail(e.to_string()))?;
        sdp.set_all_connection_addresses(address);
        sdp.drop_attributes(ICE_ATTRIBUTES);
        for media in sdp.media_mut() {
            media.set_port(port);
            media.rewrite_rtcp(port.wrapping_add(1), Some(address));
        }
        let printed = sdp.to_bytes();
        prop_assert_eq!(sdp.encoded_len(), printed.len());
        let reparsed = SessionDescription::parse(printed.clone())
            .map_err(|e| TestCaseError::fail(format!(
                "{e} for {:?}", String::from_utf8_lossy(&printed))))?;
        prop_assert_eq!(&reparsed, &sdp);
        prop_assert_eq!(reparsed.to_bytes(), printed);
        prop_assert!(reparsed.attributes().chain(reparsed.media().flat_map(|m| m.attributes()))
            .all(|a| !ICE_ATTRIBUTES.iter().any(|p| p.matches(a.name))));
        prop_assert!(reparsed.media().all(|m| m.port() == port));
        prop_assert_eq!(reparsed.origin().map(|o| o.session_id), Some(&b"42"[..]));
    }

    #[test]
    fn rewritten_ipv4_addresses_are_written_as_dotted_quads(bits in any::<u32>(), port in any::<u16>()) {
        let address = Ipv4Addr::from(bits);
        let expected = address.to_string();
        let mut sdp = parse(b"v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n\
            t=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4001 IN IP4 192.0.2.1\r\n");
        sdp.rewrite_origin(&OriginRewrite {
            username: b"-", session_id: b"7", session_version: None, address: IpAddr::V4(address),
        }).map_err(|e| TestCaseError::fail(e.to_string()))?;
        sdp.set_all_connection_addresses(IpAddr::V4(address));
        for media in sdp.media_mut() {
            media.rewrite_rtcp(port, Some(IpAddr::V4(address)));
        }
        let printed = String::from_utf8(sdp.to_bytes().to_vec())
            .map_err(|_| TestCaseError::fail("not UTF-8"))?;
        let wanted = format!(
            "v=0\r\no=- 7 1 IN IP4 {expected}\r\ns=-\r\nc=IN IP4 {expected}\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0\r\na=rtcp:{port} IN IP4 {expected}\r\n"
        );
        prop_assert_eq!(printed, wanted);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_input_round_trips(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(sdp) = SessionDescription::parse(Bytes::from(body.clone())) {
            prop_assert_eq!(&sdp.to_bytes()[..], &body[..]);
        }
    }

    #[test]
    fn mutated_valid_sdp_never_panics(body in sdp_body(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut body = body;
        for (at, byte) in flips {
            if !body.is_empty() {
                let len = body.len();
                body[at % len] = byte;
            }
        }
        if let Ok(mut sdp) = SessionDescription::parse(Bytes::from(body.clone())) {
            prop_assert_eq!(&sdp.to_bytes()[..], &body[..]);
            sdp.drop_attributes(ICE_ATTRIBUTES);
            for media in sdp.media_mut() {
                media.set_port(1);
                media.rewrite_rtcp(2, None);
            }
            let printed = sdp.to_bytes();
            let reparsed = SessionDescription::parse(printed.clone())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(reparsed, sdp);
        }
    }
}
