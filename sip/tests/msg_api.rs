//! Message API: limits and their answers, stream framing, builders, mutation.

use bytes::Bytes;
use sipveil_sip::{
    ErrorAnswer, Header, HeaderName, Limits, Message, Method, Origin, ParseErrorKind,
    RequestBuilder, StatusCode, StreamEvent, StreamFramer, Uri, parse_datagram,
};

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKnashds8;received=192.0.2.8\r\n\
Max-Forwards: 70\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

fn invite() -> sipveil_sip::Request {
    match parse_datagram(Bytes::from_static(INVITE.as_bytes()), &Limits::default()) {
        Ok(Message::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn kind_of(input: &str, limits: &Limits) -> (ParseErrorKind, ErrorAnswer) {
    // What an element does with a datagram: parse, then the full header checks.
    let e = parse_datagram(Bytes::copy_from_slice(input.as_bytes()), limits)
        .and_then(|m| m.validate(limits))
        .expect_err("must fail");
    (e.kind().clone(), e.answer())
}

#[test]
fn core_accessors() {
    let r = invite();
    assert_eq!(r.method(), &Method::Invite);
    assert_eq!(
        r.call_id().expect("cid"),
        "a84b4c76e66710@pc33.atlanta.example.com"
    );
    assert_eq!(r.cseq().expect("cseq").seq, 314159);
    assert_eq!(r.from_tag().as_deref(), Some(&b"1928301774"[..]));
    assert!(r.to_tag().is_none());
    let v = r.top_via().expect("via");
    assert_eq!(v.branch().as_deref(), Some(&b"z9hG4bK776asdhds"[..]));
    assert_eq!(v.sent_by(), "pc33.atlanta.example.com");
    assert_eq!(r.vias().count(), 2);
    assert_eq!(r.name_addrs(&HeaderName::Route).count(), 2);
    assert_eq!(r.body(), "v=0\n");
    assert_eq!(r.max_forwards(), Some(70));
}

#[test]
fn each_limit_maps_to_its_answer() {
    let base = Limits::default();
    let cases: Vec<(Limits, ParseErrorKind, u16)> = vec![
        (
            Limits {
                max_message_size: 100,
                ..base
            },
            ParseErrorKind::MessageTooLarge { limit: 100 },
            513,
        ),
        (
            Limits {
                max_headers: 5,
                ..base
            },
            ParseErrorKind::TooManyHeaders { limit: 5 },
            400,
        ),
        (
            Limits {
                max_header_len: 40,
                ..base
            },
            ParseErrorKind::HeaderTooLong { limit: 40 },
            400,
        ),
        (
            Limits {
                max_vias: 1,
                ..base
            },
            ParseErrorKind::TooManyVias { limit: 1 },
            400,
        ),
        (
            Limits {
                max_routes: 1,
                ..base
            },
            ParseErrorKind::TooManyRoutes { limit: 1 },
            400,
        ),
        (
            Limits {
                max_body_size: 3,
                ..base
            },
            ParseErrorKind::BodyTooLarge { limit: 3 },
            413,
        ),
        (
            Limits {
                max_uri_len: 10,
                ..base
            },
            ParseErrorKind::UriTooLong { limit: 10 },
            414,
        ),
    ];
    for (limits, kind, status) in cases {
        let (k, a) = kind_of(INVITE, &limits);
        assert_eq!(k, kind);
        match a {
            ErrorAnswer::Respond { status: s, reason } => {
                assert_eq!(s, status, "{kind:?}");
                assert!(!reason.is_empty());
            }
            ErrorAnswer::Drop => panic!("{kind:?} should be answered"),
        }
    }
}

#[test]
fn unanswerable_failures_are_dropped() {
    // A response is never answered.
    let (_, a) = kind_of(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n",
        &Limits::default(),
    );
    assert_eq!(a, ErrorAnswer::Drop);
    // No Via at all.
    let e = parse_datagram(
        Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n"),
        &Limits::default(),
    )
    .expect_err("no via");
    assert_eq!(e.kind(), &ParseErrorKind::MissingHeader(HeaderName::Via));
    assert_eq!(e.origin(), Origin::UnanswerableRequest);
    assert_eq!(e.answer(), ErrorAnswer::Drop);
    // Unusable Via.
    let (_, a) = kind_of(
        "OPTIONS sip:a@b SIP/2.0\r\nVia: garbage\r\n\r\n",
        &Limits::default(),
    );
    assert_eq!(a, ErrorAnswer::Drop);
    // ACK is never answered.
    let (_, a) = kind_of(
        "ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        &Limits::default(),
    );
    assert_eq!(a, ErrorAnswer::Drop);
    // Noise.
    let (k, a) = kind_of("\r\n\r\n", &Limits::default());
    assert_eq!((k, a), (ParseErrorKind::Empty, ErrorAnswer::Drop));
    let (k, _) = kind_of("hello", &Limits::default());
    assert_eq!(k, ParseErrorKind::UnterminatedHeaders);
}

#[test]
fn header_line_errors() {
    let head = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n";
    for (extra, kind) in [
        (" continuation-first\r\n", ParseErrorKind::BadHeaderLine),
        ("No colon here\r\n", ParseErrorKind::BadHeaderLine),
        ("Bad Name: x\r\n", ParseErrorKind::BadHeaderLine),
    ] {
        // continuation right after the start line is a stray continuation
        let input = if extra.starts_with(' ') {
            format!("OPTIONS sip:a@b SIP/2.0\r\n{extra}\r\n")
        } else {
            format!("{head}{extra}\r\n")
        };
        let e = parse_datagram(Bytes::from(input), &Limits::default()).expect_err("bad");
        assert_eq!(e.kind(), &kind);
    }
}

#[test]
fn bare_lf_line_endings_are_tolerated_and_preserved() {
    let lf = INVITE.replace("\r\n", "\n");
    let m = parse_datagram(Bytes::from(lf.clone()), &Limits::default()).expect("lf");
    assert_eq!(m.to_bytes(), lf.as_bytes());
    assert_eq!(m.headers().len(), 11);
}

#[test]
fn framer_keepalives_split_reads_and_pipelining() {
    let mut f = StreamFramer::new(Limits::default());
    f.push(b"\r\n");
    assert!(f.poll().is_none(), "half a ping is held");
    f.push(b"\r\n");
    assert!(matches!(f.poll(), Some(Ok(StreamEvent::Ping))));
    let two = format!("{INVITE}{INVITE}");
    let (a, b) = two.as_bytes().split_at(7);
    f.push(a);
    assert!(f.poll().is_none());
    f.push(b);
    for _ in 0..2 {
        match f.poll() {
            Some(Ok(StreamEvent::Message(m))) => assert_eq!(m.to_bytes(), INVITE.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
    assert!(f.poll().is_none());
    assert_eq!(f.buffered(), 0);

    let mut c = StreamFramer::for_client(Limits::default());
    c.push(b"\r\n");
    assert!(matches!(c.poll(), Some(Ok(StreamEvent::Pong))));
}

#[test]
fn framer_requires_content_length_and_stops() {
    let mut f = StreamFramer::new(Limits::default());
    f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n");
    let e = match f.poll() {
        Some(Err(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.kind(), &ParseErrorKind::ContentLengthRequired);
    assert!(e.kind().is_fatal_for_stream());
    assert!(matches!(
        e.answer(),
        ErrorAnswer::Respond { status: 400, .. }
    ));
    assert!(f.is_failed());
    f.push(INVITE.as_bytes());
    assert!(f.poll().is_none());
}

#[test]
fn framer_caps_unterminated_headers() {
    let mut f = StreamFramer::new(Limits {
        max_message_size: 64,
        ..Limits::default()
    });
    f.push(&[b'a'; 65]);
    match f.poll() {
        Some(Err(e)) => assert_eq!(e.kind(), &ParseErrorKind::MessageTooLarge { limit: 64 }),
        other => panic!("{other:?}"),
    }
}

#[test]
fn framer_parse_error_is_not_fatal() {
    let mut f = StreamFramer::new(Limits::default());
    let bad = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    f.push(bad.as_bytes());
    f.push(INVITE.as_bytes());
    assert!(matches!(f.poll(), Some(Err(_))));
    assert!(!f.is_failed());
    assert!(matches!(f.poll(), Some(Ok(StreamEvent::Message(_)))));
}

#[test]
fn build_request_from_scratch() {
    let uri = Uri::sip(Some("bob"), "biloxi.example.com", None).expect("uri");
    let r = RequestBuilder::new(Method::Invite, uri)
        .via("UDP", "198.18.2.1:5060", "z9hG4bKedge1")
        .max_forwards(70)
        .header(HeaderName::From, "<sip:anonymous@anonymous.invalid>;tag=e1")
        .header(HeaderName::To, "<sip:bob@biloxi.example.com>")
        .header(HeaderName::CallId, "leg-b-1@edge")
        .cseq(1)
        .header(HeaderName::ContentLength, "999")
        .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
        .build()
        .expect("build");
    let wire = r.to_bytes();
    let text = std::str::from_utf8(&wire).expect("utf8");
    assert!(text.starts_with("INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.2.1:5060;branch=z9hG4bKedge1;rport\r\n"));
    assert!(text.contains("\r\nContent-Length: 5\r\n\r\nv=0\r\n"));
    assert!(!text.contains("999"));
    assert_eq!(r.cseq().expect("cseq").method, Method::Invite);
    // Header injection is refused.
    let bad = RequestBuilder::new(Method::Options, Uri::parse_str("sip:a@b").expect("uri"))
        .header(HeaderName::Subject, "x\r\nVia: SIP/2.0/UDP evil")
        .build();
    assert!(bad.is_err());
    // Missing mandatory fields are refused.
    let incomplete =
        RequestBuilder::new(Method::Options, Uri::parse_str("sip:a@b").expect("uri")).build();
    assert!(incomplete.is_err());
}

#[test]
fn response_cancel_and_ack_from_request() {
    let r = invite();
    let resp = r
        .response(StatusCode::BUSY_HERE)
        .to_tag("as83kd9bs")
        .build()
        .expect("response");
    assert_eq!(resp.status(), StatusCode::BUSY_HERE);
    assert_eq!(resp.reason(), "Busy Here");
    let vias: Vec<Bytes> = resp.headers().values(&HeaderName::Via).collect();
    let orig: Vec<Bytes> = r.headers().values(&HeaderName::Via).collect();
    assert_eq!(vias, orig);
    assert_eq!(resp.to_tag().as_deref(), Some(&b"as83kd9bs"[..]));
    assert_eq!(resp.from_tag(), r.from_tag());
    assert_eq!(resp.call_id(), r.call_id());
    assert_eq!(resp.cseq(), r.cseq());
    assert!(resp.headers().get(&HeaderName::Route).is_none());
    assert_eq!(
        resp.headers().get_raw_value(&HeaderName::ContentLength),
        Some(&b"0"[..])
    );

    let cancel = r.cancel().expect("cancel");
    assert_eq!(cancel.method(), &Method::Cancel);
    assert!(cancel.uri().equivalent(r.uri()));
    assert_eq!(cancel.cseq().expect("c").seq, 314159);
    assert_eq!(cancel.cseq().expect("c").method, Method::Cancel);
    assert_eq!(cancel.vias().count(), 1);
    assert_eq!(
        cancel.top_via().expect("v").branch(),
        r.top_via().expect("v").branch()
    );
    assert_eq!(cancel.name_addrs(&HeaderName::Route).count(), 2);
    assert!(cancel.to_tag().is_none());

    let ack = r.ack_for(&resp).expect("ack");
    assert_eq!(ack.method(), &Method::Ack);
    assert_eq!(ack.to_tag().as_deref(), Some(&b"as83kd9bs"[..]));
    assert_eq!(ack.cseq().expect("c").method, Method::Ack);
    assert_eq!(ack.cseq().expect("c").seq, 314159);
}

#[test]
fn mutation_rewrites_only_what_changed() {
    let mut r = invite();
    assert!(r.raw().is_some());
    r.set_body(
        Some(b"application/sdp"),
        Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 198.18.1.1\r\n"),
    )
    .expect("body");
    assert!(r.raw().is_none());
    let out = r.to_bytes();
    let text = std::str::from_utf8(&out).expect("utf8");
    assert!(text.contains("\r\nContent-Length: 32\r\n"));
    assert_eq!(text.matches("Content-Length").count(), 1);
    assert!(text.ends_with("\r\n\r\nv=0\r\no=- 1 1 IN IP4 198.18.1.1\r\n"));
    // Untouched lines are byte-identical and in place.
    assert!(text.contains("\r\nRoute: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"));
    let again = parse_datagram(out.clone(), &Limits::default()).expect("reparse");
    assert_eq!(again.body().len(), 32);

    r.headers_mut().pop_top_via();
    r.headers_mut()
        .push_top_via(b"SIP/2.0/UDP 198.18.1.1;branch=z9hG4bKnew")
        .expect("via");
    r.set_uri(Uri::parse_str("sip:bob@198.18.2.2:5060").expect("uri"));
    r.headers_mut()
        .push(Header::new(HeaderName::from_static("X-Edge"), b"1").expect("h"));
    let out = r.to_bytes();
    let m = parse_datagram(out, &Limits::default()).expect("reparse");
    let req = m.as_request().expect("req");
    assert_eq!(req.uri().port(), Some(5060));
    assert_eq!(
        req.top_via().expect("v").branch().as_deref(),
        Some(&b"z9hG4bKnew"[..])
    );
    assert_eq!(req.vias().count(), 2);
    assert!(
        req.headers()
            .get(&HeaderName::from_static("x-edge"))
            .is_some()
    );

    // Removing the body drops Content-Type and zeroes Content-Length.
    r.set_body(None, Bytes::new()).expect("empty");
    assert!(r.headers().get(&HeaderName::ContentType).is_none());
    assert_eq!(
        r.headers().get_raw_value(&HeaderName::ContentLength),
        Some(&b"0"[..])
    );
}

#[test]
fn response_copies_record_route_on_request() {
    let with_rr = INVITE.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRecord-Route: <sip:p2.example.com;lr>\r\nRecord-Route: <sip:p1.example.com;lr>\r\n",
    );
    let Ok(Message::Request(r)) = parse_datagram(Bytes::from(with_rr), &Limits::default()) else {
        panic!("parse");
    };
    let resp = r
        .response(StatusCode::RINGING)
        .record_route_from(&r)
        .to_tag("x1")
        .build()
        .expect("180");
    let rr: Vec<Bytes> = resp.headers().values(&HeaderName::RecordRoute).collect();
    assert_eq!(
        rr,
        vec![
            Bytes::from_static(b"<sip:p2.example.com;lr>"),
            Bytes::from_static(b"<sip:p1.example.com;lr>")
        ]
    );
    let plain = r.response(StatusCode::RINGING).build().expect("180");
    assert!(plain.headers().get(&HeaderName::RecordRoute).is_none());
}

#[test]
fn fatal_stream_errors_are_the_framers() {
    assert!(ParseErrorKind::ContentLengthRequired.is_fatal_for_stream());
    assert!(ParseErrorKind::MessageTooLarge { limit: 1 }.is_fatal_for_stream());
    assert!(!ParseErrorKind::CSeqMethodMismatch.is_fatal_for_stream());
    assert!(!ParseErrorKind::TooManyHeaders { limit: 1 }.is_fatal_for_stream());
    // A message over the header cap on a stream is framed, rejected, and the stream goes on.
    let mut f = StreamFramer::new(Limits {
        max_headers: 3,
        ..Limits::default()
    });
    f.push(INVITE.as_bytes());
    f.push(b"\r\n\r\n");
    match f.poll() {
        Some(Err(e)) => assert_eq!(e.kind(), &ParseErrorKind::TooManyHeaders { limit: 3 }),
        other => panic!("{other:?}"),
    }
    assert!(!f.is_failed());
    assert!(matches!(f.poll(), Some(Ok(StreamEvent::Ping))));
}

#[test]
fn start_line_errors_take_precedence() {
    // Bad version and missing headers: the version wins (505).
    let (k, a) = kind_of(
        "OPTIONS sip:a@b SIP/3.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
        &Limits::default(),
    );
    assert_eq!(k, ParseErrorKind::UnsupportedVersion);
    assert_eq!(
        a,
        ErrorAnswer::Respond {
            status: 505,
            reason: "Version Not Supported"
        }
    );
    let (k, _) = kind_of(
        "OPTIONS mailto:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
        &Limits::default(),
    );
    assert_eq!(k, ParseErrorKind::UnsupportedUriScheme);
}

#[test]
fn received_and_rport_and_max_forwards() {
    let mut r = invite();
    // sent-by is a name: received is added; no rport requested.
    assert_eq!(
        r.apply_received("198.18.1.2:5099".parse().expect("addr")),
        Ok(true)
    );
    let v = r.top_via().expect("via");
    assert_eq!(v.received().as_deref(), Some(&b"198.18.1.2"[..]));
    assert!(!v.has_rport());
    assert_eq!(v.branch().as_deref(), Some(&b"z9hG4bK776asdhds"[..]));
    assert_eq!(r.vias().count(), 2);

    let mut r = parse_datagram(
        Bytes::from_static(
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.1.2:5060;rport;branch=z9hG4bK1, SIP/2.0/UDP x\r\nFrom: <sip:c@d>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n",
        ),
        &Limits::default(),
    )
    .ok()
    .and_then(|m| m.as_request().cloned())
    .expect("request");
    assert_eq!(
        r.apply_received("198.18.1.2:40000".parse().expect("addr")),
        Ok(true)
    );
    let out = r.to_bytes();
    let text = std::str::from_utf8(&out).expect("utf8");
    assert!(text.contains("\r\nVia: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK1;received=198.18.1.2;rport=40000, SIP/2.0/UDP x\r\n"), "{text}");
    let v = r.top_via().expect("via");
    assert_eq!(v.rport(), Some(40000));

    // Same host, no rport: unchanged.
    let mut r2 = parse_datagram(
        Bytes::from_static(
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.1.2;branch=z9hG4bK1\r\nFrom: <sip:c@d>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 1\r\n\r\n",
        ),
        &Limits::default(),
    )
    .ok()
    .and_then(|m| m.as_request().cloned())
    .expect("request");
    assert_eq!(
        r2.apply_received("198.18.1.2:5060".parse().expect("addr")),
        Ok(false)
    );
    assert!(r2.raw().is_some());
    assert_eq!(r2.decrement_max_forwards(), Some(0));
    assert_eq!(r2.decrement_max_forwards(), None);
    r2.headers_mut().remove_all(&HeaderName::MaxForwards);
    assert_eq!(r2.decrement_max_forwards(), Some(69));
}

#[test]
fn many_headers_with_folding_beyond_the_inline_index() {
    let mut s = String::from(INVITE);
    let cut = s.find("Content-Type").expect("ct");
    let mut extra = String::new();
    for i in 0..90 {
        extra.push_str(&format!("X-H{i}: value {i}\r\n continued {i}\r\n"));
    }
    s.insert_str(cut, &extra);
    let m = parse_datagram(Bytes::from(s.clone()), &Limits::default()).expect("parse");
    assert_eq!(m.headers().len(), 11 + 90);
    assert_eq!(m.to_bytes(), s.as_bytes());
    let h = m
        .headers()
        .get(&HeaderName::from_static("x-h89"))
        .expect("last");
    assert_eq!(h.value(), "value 89\r\n continued 89");
    let mut copy = m.clone();
    let _ = copy.headers_mut();
    assert_eq!(copy.to_bytes(), s.as_bytes());
}

#[test]
fn datagram_parse_checks_what_addresses_an_answer_and_validate_the_rest() {
    // A malformed Contact (and a malformed second Via) pass the datagram parse,
    // which only needs what addresses an answer; validate() finds them.
    let bad_contact = INVITE.replace(
        "Contact: <sip:alice@pc33.atlanta.example.com>",
        "Contact: <sip:alice@pc33 atlanta>",
    );
    let m = parse_datagram(Bytes::from(bad_contact), &Limits::default()).expect("parses");
    let e = m.validate(&Limits::default()).expect_err("bad Contact");
    assert!(
        matches!(
            e.kind(),
            ParseErrorKind::InvalidHeader(HeaderName::Contact, _)
        ),
        "{:?}",
        e.kind()
    );
    assert!(matches!(
        e.answer(),
        ErrorAnswer::Respond { status: 400, .. }
    ));
    let bad_via = INVITE.replace(
        "Via: SIP/2.0/UDP 192.0.2.7:5062",
        "Via: SIP/2.0 192.0.2.7:5062",
    );
    let m = parse_datagram(Bytes::from(bad_via), &Limits::default()).expect("parses");
    assert!(matches!(
        m.validate(&Limits::default()).map_err(|e| e.kind().clone()),
        Err(ParseErrorKind::InvalidHeader(HeaderName::Via, _))
    ));
    // The top Via, CSeq and Call-ID are checked by the parse itself.
    let bad_top = INVITE.replacen("Via: SIP/2.0/UDP pc33", "Via: SIP/2.0 pc33", 1);
    let (k, _) = kind_of(&bad_top, &Limits::default());
    assert!(
        matches!(k, ParseErrorKind::InvalidHeader(HeaderName::Via, _)),
        "{k:?}"
    );
    assert!(
        parse_datagram(Bytes::from(bad_top), &Limits::default()).is_err(),
        "top Via checked at parse"
    );
    let no_cseq = INVITE.replace("CSeq: 314159 INVITE\r\n", "");
    assert!(matches!(
        parse_datagram(Bytes::from(no_cseq), &Limits::default()).map_err(|e| e.kind().clone()),
        Err(ParseErrorKind::MissingHeader(HeaderName::CSeq))
    ));
    // A response is never answered: its top Via is checked by validate() (and
    // by top_via(), which transaction matching reads), not by the parse.
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0 pc33\r\nTo: <sip:b@h>;tag=1\r\nFrom: <sip:a@h>;tag=2\r\nCall-ID: c@h\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let m =
        parse_datagram(Bytes::from_static(resp.as_bytes()), &Limits::default()).expect("parses");
    assert!(m.top_via().is_err());
    let e = m.validate(&Limits::default()).expect_err("bad Via");
    assert_eq!(e.answer(), ErrorAnswer::Drop);
    // A valid message validates.
    invite().validate(&Limits::default()).expect("valid");
}

#[test]
fn header_mutation_matches_a_line_model_below_and_above_the_inline_capacity() {
    for extra in [0usize, 20, 21, 22, 23, 30, 40] {
        let mut lines: Vec<String> = INVITE
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let cl = lines.pop().expect("Content-Length last");
        for i in 0..extra {
            lines.push(format!("X-Extra-{i}: {i}"));
        }
        lines.push(cl);
        let wire = format!(
            "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n{}\r\n\r\nv=0\n",
            lines.join("\r\n")
        );
        let Ok(Message::Request(mut r)) = parse_datagram(Bytes::from(wire), &Limits::default())
        else {
            panic!("{extra}: parse");
        };
        assert_eq!(r.headers().len(), lines.len());
        let h = r.headers_mut();
        // remove_all, set (replaces the first in place), push, insert, retain, Via ops.
        assert_eq!(h.remove_all(&HeaderName::MaxForwards), 1);
        lines.retain(|l| !l.starts_with("Max-Forwards:"));
        h.set(Header::new(HeaderName::CallId, b"new@edge").expect("ok"));
        for l in lines.iter_mut() {
            if l.starts_with("Call-ID:") {
                *l = "Call-ID: new@edge".into();
            }
        }
        h.push(Header::new(HeaderName::from_static("X-Tail"), b"t").expect("ok"));
        lines.push("X-Tail: t".into());
        h.insert(2, Header::new(HeaderName::Subject, b"s").expect("ok"));
        lines.insert(2, "Subject: s".into());
        h.retain(|f| f.name() != &HeaderName::from_static("x-extra-3"));
        lines.retain(|l| !l.starts_with("X-Extra-3:"));
        h.push_top_via(b"SIP/2.0/UDP edge;branch=z9hG4bKe")
            .expect("ok");
        lines.insert(0, "Via: SIP/2.0/UDP edge;branch=z9hG4bKe".into());
        assert_eq!(
            h.pop_top_via().as_deref(),
            Some(&b"SIP/2.0/UDP edge;branch=z9hG4bKe"[..])
        );
        lines.remove(0);
        assert_eq!(h.remove(1).map(|x| x.name().clone()), Some(HeaderName::Via));
        lines.remove(1);
        assert_eq!(h.len(), lines.len(), "{extra}");
        let got: Vec<String> = h
            .iter()
            .map(|x| String::from_utf8_lossy(x.raw_line()).into_owned())
            .collect();
        assert_eq!(got, lines, "{extra}");
        assert_eq!(
            h.get_value(&HeaderName::from_static("X-TAIL")).as_deref(),
            Some(&b"t"[..])
        );
        let printed = r.to_bytes();
        let expect = format!(
            "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n{}\r\n\r\nv=0\n",
            lines.join("\r\n")
        );
        assert_eq!(printed, expect, "{extra}");
        let again = parse_datagram(printed, &Limits::default()).expect("reparse");
        again.validate(&Limits::default()).expect("valid");
    }
}

#[test]
fn many_added_fields_stay_addressable() {
    // More added fields than the records can name buffers for (u16): the
    // added lines are merged into one buffer on the way, nothing is lost.
    let mut r = invite();
    let base = r.headers().len();
    let h = r.headers_mut();
    for i in 0..70_000u32 {
        let name = if i % 2 == 0 {
            HeaderName::from_static("X-Many")
        } else {
            HeaderName::Subject
        };
        h.push(Header::new(name, format!("v{i}  ").as_bytes()).expect("ok"));
    }
    assert_eq!(h.len(), base + 70_000);
    assert_eq!(h.count(&HeaderName::from_static("x-many")), 35_000);
    let last = h.at(base + 69_999).expect("last");
    assert_eq!(last.name(), &HeaderName::Subject);
    assert_eq!(last.value(), "v69999");
    assert_eq!(last.raw_line(), "Subject: v69999  ");
    let first = h.at(base).expect("first added");
    assert_eq!(first.name(), &HeaderName::from_static("X-Many"));
    assert_eq!(first.value(), "v0");
    assert_eq!(
        h.get_value(&HeaderName::CSeq).as_deref(),
        Some(&b"314159 INVITE"[..])
    );
    let printed = r.to_bytes();
    let again = parse_datagram(printed, &Limits::UNLIMITED).expect("reparse");
    assert_eq!(again.headers().len(), base + 70_000);
}
