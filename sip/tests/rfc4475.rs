//! RFC 4475 torture messages (sip/fixtures/rfc4475/*.sip, written from the
//! RFC's text by fixtures/rfc4475/generate.py). Valid messages parse, print
//! byte-identically (cached and rebuilt) and round-trip; invalid ones get the
//! answer the RFC describes.

use std::path::Path;

use bytes::Bytes;
use sipveil_sip::{
    Auth, ErrorAnswer, HeaderName, Limits, MediaType, Message, Method, Scheme, Transport,
    error_response, parse_datagram, validate,
};

fn load(name: &str) -> Bytes {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/rfc4475")
        .join(format!("{name}.sip"));
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
}

enum Expect {
    /// §3.1.1: parses, prints byte-identically, round-trips; extra checks.
    Valid(fn(&Message)),
    /// Parses; the RFC's expected behaviour is above the parser (checked by the fn).
    Accept(fn(&Message)),
    /// The parser rejects it with this answer.
    Respond(u16, &'static str),
    /// The parser rejects it and nobody can be answered.
    Drop,
}

/// What an element does with a datagram: parse, then the full header checks.
fn parse_and_validate(input: Bytes) -> Result<Message, sipveil_sip::ParseError> {
    let m = parse_datagram(input, &Limits::default())?;
    m.validate(&Limits::default())?;
    Ok(m)
}

fn req(m: &Message) -> &sipveil_sip::Request {
    m.as_request().expect("request")
}

fn table() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    vec![
        // §3.1.1 valid
        (
            "wsinv",
            Valid(|m| {
                let r = req(m);
                assert_eq!(r.method(), &Method::Invite);
                assert_eq!(
                    r.to().expect("to").tag().as_deref(),
                    Some(&b"1918181833n"[..])
                );
                let from = r.from().expect("from");
                assert_eq!(
                    from.display_name().as_deref(),
                    Some(&b"J Rosenberg \\\""[..])
                );
                assert_eq!(from.tag().as_deref(), Some(&b"98asjd8"[..]));
                assert_eq!(r.max_forwards(), Some(68));
                assert_eq!(r.cseq().expect("cseq").seq, 9);
                let vias: Vec<_> = r.vias().map(|v| v.expect("via")).collect();
                assert_eq!(vias.len(), 3);
                assert_eq!(vias[0].branch().as_deref(), Some(&b"390skdjuw"[..]));
                assert!(vias[0].has_rport());
                assert_eq!(vias[1].transport(), &Transport::Tcp);
                assert_eq!(vias[2].branch().as_deref(), Some(&b"z9hG4bK30239"[..]));
                let c = r
                    .name_addrs(&HeaderName::Contact)
                    .next()
                    .expect("contact")
                    .expect("ok");
                assert_eq!(c.q_millis(), Some(330));
                assert_eq!(
                    c.params().value("newparam").as_deref(),
                    Some(&b"newvalue"[..])
                );
                assert_eq!(
                    r.headers().get_value(&HeaderName::Subject).map(|v| v.len()),
                    Some(0)
                );
                assert_eq!(r.body().len(), 150);
            }),
        ),
        (
            "intmeth",
            Valid(|m| {
                let r = req(m);
                assert!(matches!(r.method(), Method::Other(_)));
                assert_eq!(&r.cseq().expect("cseq").method, r.method());
                let u = r.uri();
                assert_eq!(
                    u.password().map(|p| &p[..]),
                    Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
                );
                let to = r.to().expect("to");
                assert_eq!(
                    to.display_name().as_deref(),
                    Some(&b"BEL:\x07 NUL:\x00 DEL:\x7f"[..])
                );
                assert!(r.from().expect("from").tag().is_some());
            }),
        ),
        (
            "esc01",
            Valid(|m| {
                let r = req(m);
                assert_eq!(
                    r.uri().user_unescaped(),
                    Some(b"sips:user@example.com".to_vec())
                );
                assert_eq!(
                    r.to().expect("to").uri().user_unescaped(),
                    Some(b"user".to_vec())
                );
                let c = r
                    .name_addrs(&HeaderName::Contact)
                    .next()
                    .expect("c")
                    .expect("ok");
                assert!(
                    c.uri().equivalent(
                        &sipveil_sip::Uri::parse_str(
                            "sip:caller@host5.example.net;lr;name=value%25%34%31"
                        )
                        .expect("uri")
                    )
                );
            }),
        ),
        (
            "escnull",
            Valid(|m| {
                let r = req(m);
                assert_eq!(
                    r.to().expect("to").uri().user_unescaped(),
                    Some(b"null-\0-null".to_vec())
                );
                assert_eq!(r.name_addrs(&HeaderName::Contact).count(), 2);
            }),
        ),
        (
            "esc02",
            Valid(|m| {
                let r = req(m);
                assert_eq!(
                    r.method(),
                    &Method::Other(Bytes::from_static(b"RE%47IST%45R"))
                );
                assert_eq!(r.headers().count(&HeaderName::Contact), 2);
                assert_eq!(r.headers().count(&HeaderName::from_static("C%6Fntact")), 1);
                assert_eq!(
                    r.to().expect("to").display_name().as_deref(),
                    Some(&b"%Z%45"[..])
                );
            }),
        ),
        (
            "lwsdisp",
            Valid(|m| {
                assert_eq!(
                    req(m).from().expect("from").display_name().as_deref(),
                    Some(&b"caller"[..])
                );
            }),
        ),
        (
            "longreq",
            Valid(|m| {
                let r = req(m);
                assert_eq!(r.vias().count(), 34);
                assert!(r.vias().all(|v| v.is_ok()));
                assert_eq!(r.to().expect("to").uri().port(), Some(6000));
                assert!(
                    r.from()
                        .expect("from")
                        .params()
                        .contains("unknownValueless")
                );
            }),
        ),
        (
            "dblreq",
            Valid(|m| {
                let r = req(m);
                assert_eq!(r.method(), &Method::Register);
                assert!(r.body().is_empty());
            }),
        ),
        (
            "semiuri",
            Valid(|m| {
                let r = req(m);
                assert_eq!(
                    r.uri().user().map(|u| &u[..]),
                    Some(&b"user;par=u%40example.net"[..])
                );
                assert!(r.uri().params().is_empty());
                assert_eq!(r.headers().values(&HeaderName::Accept).count(), 6);
            }),
        ),
        (
            "transports",
            Valid(|m| {
                let t: Vec<Transport> = req(m)
                    .vias()
                    .map(|v| v.expect("via").transport().clone())
                    .collect();
                assert_eq!(t[..3], [Transport::Udp, Transport::Sctp, Transport::Tls]);
                assert_eq!(t[3], Transport::Other(Bytes::from_static(b"UNKNOWN")));
            }),
        ),
        (
            "mpart01",
            Valid(|m| {
                let r = req(m);
                let ct =
                    MediaType::parse(&r.headers().get_value(&HeaderName::ContentType).expect("ct"))
                        .expect("ok");
                assert!(ct.is("multipart", "signed"));
                assert_eq!(
                    ct.params.value("boundary").as_deref(),
                    Some(&b"7a9cbec02ceef655"[..])
                );
                assert!(r.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
            }),
        ),
        (
            "unreason",
            Valid(|m| {
                let r = m.as_response().expect("response");
                assert_eq!(r.status().as_u16(), 200);
                assert!(
                    std::str::from_utf8(r.reason())
                        .expect("utf8")
                        .ends_with("простое")
                );
            }),
        ),
        (
            "noreason",
            Valid(|m| {
                let r = m.as_response().expect("response");
                assert_eq!(r.status().as_u16(), 100);
                assert!(r.reason().is_empty());
            }),
        ),
        // §3.1.2 invalid
        ("badinv01", Respond(400, "Malformed Via Header")),
        ("clerr", Respond(400, "Content-Length Exceeds Body")),
        ("ncl", Respond(400, "Malformed Content-Length Header")),
        ("scalar02", Respond(400, "Malformed CSeq Header")),
        ("scalarlg", Drop),
        ("quotbal", Respond(400, "Malformed To Header")),
        ("ltgtruri", Respond(400, "Malformed Request-URI")),
        ("lwsruri", Respond(400, "Malformed Request Line")),
        ("lwsstart", Respond(400, "Malformed Request Line")),
        ("trws", Respond(400, "Malformed Request Line")),
        (
            "escruri",
            Respond(400, "Headers Not Allowed In Request-URI"),
        ),
        // The RFC lets an element ignore a Date it cannot read; we keep it raw.
        (
            "baddate",
            Accept(|m| {
                assert!(req(m).headers().get_value(&HeaderName::Date).is_some());
            }),
        ),
        ("regbadct", Respond(400, "Malformed Contact Header")),
        ("badaspec", Respond(400, "Malformed To Header")),
        ("baddn", Respond(400, "Malformed From Header")),
        ("badvers", Respond(505, "Version Not Supported")),
        ("mismatch01", Respond(400, "CSeq Method Mismatch")),
        ("mismatch02", Respond(400, "CSeq Method Mismatch")),
        ("bigcode", Drop),
        // §3.2: a branch that is only the magic cookie is the transaction layer's concern.
        (
            "badbranch",
            Accept(|m| {
                assert_eq!(
                    req(m).top_via().expect("via").branch().as_deref(),
                    Some(&b"z9hG4bK"[..])
                );
            }),
        ),
        // §3.3 application layer
        ("insuf", Respond(400, "Missing Call-ID Header")),
        ("unkscm", Respond(416, "Unsupported URI Scheme")),
        ("novelsc", Respond(416, "Unsupported URI Scheme")),
        (
            "unksm2",
            Accept(|m| {
                let r = req(m);
                assert!(matches!(
                    r.to().expect("to").uri().scheme(),
                    Scheme::Other(_)
                ));
                assert!(matches!(
                    r.from().expect("from").uri().scheme(),
                    Scheme::Other(_)
                ));
            }),
        ),
        (
            "bext01",
            Accept(|m| {
                let r = req(m);
                let e = validate::check_extensions(r, &["100rel", "timer"], true)
                    .expect_err("unsupported");
                assert_eq!(
                    e.answer(),
                    ErrorAnswer::Respond {
                        status: 420,
                        reason: "Bad Extension"
                    }
                );
                assert_eq!(e.unsupported().len(), 4);
                assert_eq!(e.unsupported_header(), b"nothingSupportsThis, nothingSupportsThisEither, noProxiesSupportThis, norDoAnyProxiesSupportThis");
            }),
        ),
        (
            "invut",
            Accept(|m| {
                let r = req(m);
                let e =
                    validate::check_content_type(r, &[("application", "sdp")]).expect_err("415");
                assert_eq!(
                    e.answer(),
                    ErrorAnswer::Respond {
                        status: 415,
                        reason: "Unsupported Media Type"
                    }
                );
            }),
        ),
        (
            "regaut01",
            Accept(|m| {
                let a = Auth::parse(
                    &req(m)
                        .headers()
                        .get_value(&HeaderName::Authorization)
                        .expect("auth"),
                )
                .expect("ok");
                assert_eq!(a.scheme(), &b"NoOneKnowsThisScheme"[..]);
                assert!(!a.is_digest());
            }),
        ),
        ("multi01", Respond(400, "Multiple CSeq Headers")),
        ("mcl01", Respond(400, "Multiple Content-Length Values")),
        (
            "bcast",
            Accept(|m| {
                let r = m.as_response().expect("response");
                assert_eq!(r.vias().count(), 2);
            }),
        ),
        (
            "zeromf",
            Accept(|m| assert_eq!(req(m).max_forwards(), Some(0))),
        ),
        (
            "cparam01",
            Accept(|m| {
                let c = req(m)
                    .name_addrs(&HeaderName::Contact)
                    .next()
                    .expect("c")
                    .expect("ok");
                assert!(c.params().contains("unknownparam"));
                assert!(c.uri().params().is_empty());
            }),
        ),
        (
            "cparam02",
            Accept(|m| {
                let c = req(m)
                    .name_addrs(&HeaderName::Contact)
                    .next()
                    .expect("c")
                    .expect("ok");
                assert!(c.params().is_empty());
                assert!(c.uri().params().contains("unknownparam"));
            }),
        ),
        (
            "regescrt",
            Accept(|m| {
                let c = req(m)
                    .name_addrs(&HeaderName::Contact)
                    .next()
                    .expect("c")
                    .expect("ok");
                assert!(c.uri().headers().is_some());
            }),
        ),
        (
            "sdp01",
            Accept(|m| assert_eq!(req(m).headers().values(&HeaderName::Accept).count(), 1)),
        ),
        (
            "inv2543",
            Accept(|m| {
                let r = req(m);
                assert!(r.from_tag().is_none());
                assert!(r.top_via().expect("via").branch().is_none());
            }),
        ),
    ]
}

fn check_valid(name: &str, input: &Bytes, m: &Message) {
    // Cached print: the very same bytes, no copy.
    let printed = m.to_bytes();
    let expect = if name == "dblreq" {
        // Only the first message of the datagram is the message (RFC 3261 §18.3).
        let end = input
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end")
            + 4;
        input.slice(..end)
    } else {
        input.clone()
    };
    assert_eq!(printed, expect, "{name}: cached print");
    // Rebuilt print (as after a mutation) is byte-identical too.
    let mut copy = m.clone();
    let _ = copy.headers_mut();
    let mut out = Vec::new();
    copy.write_to(&mut out);
    assert_eq!(out, &expect[..], "{name}: rebuilt print");
    // Round trip.
    let again = parse_and_validate(Bytes::from(out)).expect("reparse");
    assert_eq!(again.headers().len(), m.headers().len(), "{name}");
    assert_eq!(again.body(), m.body(), "{name}");
    for (a, b) in again.headers().iter().zip(m.headers().iter()) {
        assert_eq!(a.name(), b.name());
        assert_eq!(a.raw_line(), b.raw_line());
    }
}

#[test]
fn rfc4475_every_fixture_has_the_expected_outcome() {
    let table = table();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rfc4475");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|s| s.strip_suffix(".sip"))
                .map(String::from)
        })
        .collect();
    on_disk.sort();
    let mut named: Vec<String> = table.iter().map(|(n, _)| n.to_string()).collect();
    named.sort();
    assert_eq!(on_disk, named, "every fixture has exactly one expectation");

    for (name, expect) in &table {
        let input = load(name);
        let res = parse_and_validate(input.clone());
        match expect {
            Expect::Valid(f) => {
                let m = res.unwrap_or_else(|e| panic!("{name}: {e}"));
                check_valid(name, &input, &m);
                f(&m);
            }
            Expect::Accept(f) => {
                let m = res.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(m.to_bytes(), input, "{name}: print");
                f(&m);
            }
            Expect::Respond(status, reason) => {
                let e = res
                    .err()
                    .unwrap_or_else(|| panic!("{name}: parsed but should fail"));
                assert_eq!(
                    e.answer(),
                    ErrorAnswer::Respond {
                        status: *status,
                        reason
                    },
                    "{name}: {:?}",
                    e.kind()
                );
                // The stateless answer carries the status line and the request's Via.
                let out = error_response(&input, e.answer(), b"edge1").expect("answer");
                let text = String::from_utf8_lossy(&out);
                assert!(
                    text.starts_with(&format!("SIP/2.0 {status} {reason}\r\n")),
                    "{name}"
                );
                let via = input
                    .split(|&c| c == b'\n')
                    .find(|l| l.starts_with(b"Via:") || l.starts_with(b"v:"))
                    .expect("via line");
                assert!(
                    out.windows(via.len()).any(|w| w == via),
                    "{name}: Via copied"
                );
                assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{name}");
            }
            Expect::Drop => {
                let e = res
                    .err()
                    .unwrap_or_else(|| panic!("{name}: parsed but should fail"));
                assert_eq!(e.answer(), ErrorAnswer::Drop, "{name}: {:?}", e.kind());
            }
        }
    }
}

#[test]
fn rfc4475_valid_messages_frame_on_a_stream_byte_by_byte() {
    for name in [
        "wsinv", "intmeth", "esc01", "longreq", "mpart01", "unreason", "noreason",
    ] {
        let input = load(name);
        let mut f = sipveil_sip::StreamFramer::new(Limits::default());
        let mut got = None;
        for b in input.iter() {
            f.push(&[*b]);
            if let Some(ev) = f.poll() {
                got = Some(ev);
            }
        }
        match got {
            Some(Ok(sipveil_sip::StreamEvent::Message(m))) => {
                assert_eq!(m.to_bytes(), input, "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(f.buffered(), 0);
    }
}
