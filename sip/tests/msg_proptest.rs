//! Property tests: parse∘print is the identity on generated messages; the
//! parser, framer and typed views never panic on arbitrary or mutated input.

use bytes::Bytes;
use proptest::prelude::*;
use sipveil_sip::{
    Auth, CSeq, Contact, HeaderName, Limits, MediaType, Message, NameAddr, StreamEvent,
    StreamFramer, Uri, Via, parse_datagram,
};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,11}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]([a-z0-9-]{0,7}[a-z0-9])?(\\.[a-z][a-z0-9]{0,6}){0,3}",
        (1u8..=254, any::<u8>(), any::<u8>(), 1u8..=254)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        Just("[2001:db8::1]".to_string()),
    ]
}

fn uri() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("sip"), Just("sips")],
        proptest::option::of("[a-zA-Z0-9._~-]{1,10}(%[0-9A-F]{2})?"),
        host(),
        proptest::option::of(1u16..),
        proptest::collection::vec(
            ("[a-z][a-z0-9-]{0,6}", proptest::option::of("[a-z0-9]{1,6}")),
            0..3,
        ),
    )
        .prop_map(|(s, user, host, port, params)| {
            let mut u = format!("{s}:");
            if let Some(x) = user {
                u.push_str(&x);
                u.push('@');
            }
            u.push_str(&host);
            if let Some(p) = port {
                u.push_str(&format!(":{p}"));
            }
            for (n, v) in params {
                u.push(';');
                u.push_str(&n);
                if let Some(v) = v {
                    u.push('=');
                    u.push_str(&v);
                }
            }
            u
        })
}

/// A free-form header value: printable, no CR/LF, optionally folded.
fn free_value() -> impl Strategy<Value = String> {
    ("[ -~]{0,40}", any::<bool>()).prop_map(|(v, fold)| {
        let v = v.trim().to_string();
        if fold && v.len() > 2 {
            format!(
                "{}\r\n {}",
                &v[..v.len() / 2].trim_end(),
                v[v.len() / 2..].trim_start()
            )
        } else {
            v
        }
    })
}

fn name_addr() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[A-Za-z ]{1,12}"),
        uri(),
        proptest::option::of("[a-z0-9]{1,10}"),
        any::<bool>(),
    )
        .prop_map(|(display, uri, tag, quoted)| {
            let mut s = String::new();
            match display
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty())
            {
                Some(d) if quoted => s.push_str(&format!("\"{d}\" <{uri}>")),
                Some(d) => s.push_str(&format!("{d} <{uri}>")),
                None => s.push_str(&format!("<{uri}>")),
            }
            if let Some(t) = tag {
                s.push_str(";tag=");
                s.push_str(&t);
            }
            s
        })
}

#[derive(Debug, Clone)]
struct Gen {
    bytes: Vec<u8>,
}

fn message() -> impl Strategy<Value = Gen> {
    (
        any::<bool>(),
        prop_oneof![
            Just("INVITE".to_string()),
            Just("OPTIONS".to_string()),
            Just("REGISTER".to_string()),
            Just("BYE".to_string()),
            token(),
        ],
        uri(),
        (100u16..=699, "[ -~]{0,20}"),
        proptest::collection::vec(
            (
                prop_oneof![Just("v"), Just("Via"), Just("VIA")],
                prop_oneof![Just("UDP"), Just("TCP"), Just("TLS"), Just("WSS")],
                host(),
                "[a-zA-Z0-9]{1,12}",
            ),
            1..4,
        ),
        (
            name_addr(),
            name_addr(),
            "[a-zA-Z0-9.-]{1,20}(@[a-z.]{1,10})?",
            0u32..(1 << 31),
        ),
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("X-Custom".to_string()),
                    Just("Subject".to_string()),
                    Just("s".to_string()),
                    "X-[A-Za-z0-9-]{1,10}"
                ],
                free_value(),
            ),
            0..6,
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(
            |(
                is_req,
                method,
                ruri,
                (code, reason),
                vias,
                (from, to, callid, seq),
                extra,
                body,
                compact,
            )| {
                let mut s = String::new();
                if is_req {
                    s.push_str(&format!("{method} {ruri} SIP/2.0\r\n"));
                } else {
                    s.push_str(&format!("SIP/2.0 {code} {}\r\n", reason.trim()));
                }
                for (name, tr, h, br) in vias {
                    s.push_str(&format!("{name}: SIP/2.0/{tr} {h};branch=z9hG4bK{br}\r\n"));
                }
                s.push_str(&format!(
                    "{}: {from}\r\n",
                    if compact { "f" } else { "From" }
                ));
                s.push_str(&format!("{}: {to}\r\n", if compact { "t" } else { "To" }));
                s.push_str(&format!(
                    "{}: {callid}\r\n",
                    if compact { "i" } else { "Call-ID" }
                ));
                s.push_str(&format!(
                    "CSeq: {seq} {}\r\n",
                    if is_req { method.as_str() } else { "INVITE" }
                ));
                s.push_str("Max-Forwards: 70\r\n");
                for (n, v) in extra {
                    s.push_str(&format!("{n}: {v}\r\n"));
                }
                s.push_str(&format!(
                    "{}: {}\r\n\r\n",
                    if compact { "l" } else { "Content-Length" },
                    body.len()
                ));
                let mut bytes = s.into_bytes();
                bytes.extend_from_slice(&body);
                Gen { bytes }
            },
        )
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

fn fixtures() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rfc4475");
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sip"))
        .map(|e| std::fs::read(e.path()).expect("read"))
        .collect();
    v.sort();
    assert!(v.len() >= 40, "fixtures present");
    v
}

fn exercise_views(m: &Message) {
    // Every accessor must return, never panic.
    let _ = m.call_id();
    let _ = m.cseq();
    let _ = m.top_via();
    for h in m.headers() {
        let v = h.value();
        let _ = Via::parse(v);
        let _ = NameAddr::parse(v).map(|n| {
            (
                n.display_name().map(|d| d.len()),
                n.tag(),
                n.q_millis(),
                n.expires(),
            )
        });
        let _ = Contact::parse(v);
        let _ = CSeq::parse(v);
        let _ = MediaType::parse(v);
        let _ = Auth::parse(v).map(|a| a.params().count());
        let _ = sipveil_sip::views::parse_products(v);
        let _ = sipveil_sip::views::Privacy::parse(v).map(|p| p.values().count());
        for x in h.values() {
            let _ = Via::parse_lenient(&x);
        }
    }
    if let Some(r) = m.as_request() {
        let _ = r.contacts().count();
        let _ = r.expires();
        let _ = r.response(sipveil_sip::StatusCode::OK).to_tag("x").build();
        let _ = r.uri().equivalent(r.uri());
        let _ = r.max_forwards();
        let _ = r.cancel();
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_print_identity(g in message()) {
        let input = Bytes::from(g.bytes.clone());
        let m = parse_datagram(input.clone(), &Limits::default())
            .map_err(|e| TestCaseError::fail(format!("{e} in {:?}", String::from_utf8_lossy(&g.bytes))))?;
        prop_assert_eq!(m.to_bytes(), input.clone());
        let mut copy = m.clone();
        let _ = copy.headers_mut();
        let rebuilt = copy.to_bytes();
        prop_assert_eq!(&rebuilt, &input);
        let again = parse_datagram(rebuilt, &Limits::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again.headers().len(), m.headers().len());
        prop_assert_eq!(again.body(), m.body());
        prop_assert_eq!(again.cseq().ok(), m.cseq().ok());
        prop_assert_eq!(again.call_id().ok(), m.call_id().ok());
        exercise_views(&m);
    }

    #[test]
    fn stream_framing_matches_datagram(g in message(), cuts in proptest::collection::vec(1usize..40, 0..8)) {
        let mut f = StreamFramer::new(Limits::default());
        let mut pos: usize = 0;
        let mut got = Vec::new();
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(&g.bytes);
        for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = pos.saturating_add(*c).min(all.len());
            f.push(&all[pos..end]);
            pos = end;
            while let Some(ev) = f.poll() {
                got.push(ev);
            }
        }
        prop_assert_eq!(got.len(), 2);
        prop_assert!(matches!(got[0], Ok(StreamEvent::Ping)));
        match &got[1] {
            Ok(StreamEvent::Message(m)) => prop_assert_eq!(&m.to_bytes()[..], &g.bytes[..]),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let b = Bytes::from(data.clone());
        if let Ok(m) = parse_datagram(b.clone(), &Limits::default()) {
            exercise_views(&m);
        }
        let _ = Uri::parse(b.clone());
        let _ = Via::parse(&b);
        let _ = NameAddr::parse(&b);
        let _ = Auth::parse(&b).map(|a| a.params().count());
        let mut f = StreamFramer::new(Limits::default());
        f.push(&data);
        for _ in 0..64 {
            if f.poll().is_none() { break; }
        }
    }

    #[test]
    fn never_panics_on_sip_like_bytes(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("INVITE sip:a@b SIP/2.0".to_string()),
                Just("SIP/2.0 200 OK".to_string()),
                Just("Via: SIP/2.0/UDP h;branch=z9hG4bK1".to_string()),
                Just("Content-Length: 5".to_string()),
                Just("l: 99999999999999999999".to_string()),
                Just(" folded".to_string()),
                Just("".to_string()),
                "[ -~]{0,30}",
                "[A-Za-z-]{1,10}: [ -~\"<>;,=]{0,30}",
            ],
            0..12,
        ),
        lf_only in any::<bool>(),
    ) {
        let sep = if lf_only { "\n" } else { "\r\n" };
        let s = lines.join(sep);
        if let Ok(m) = parse_datagram(Bytes::from(s.into_bytes()), &Limits::default()) {
            exercise_views(&m);
        }
    }

    #[test]
    fn never_panics_on_mutated_valid_messages(
        g in message(),
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut v = g.bytes.clone();
        for (idx, byte, op) in muts {
            if v.is_empty() { break; }
            let i = idx.index(v.len());
            match op {
                0 => v[i] = byte,
                1 => v.insert(i, byte),
                2 => { v.remove(i); }
                _ => v.truncate(i),
            }
        }
        let input = Bytes::from(v);
        match parse_datagram(input.clone(), &Limits::default()) {
            Ok(m) => {
                // Whatever parses prints as a slice of the input.
                let out = m.to_bytes();
                prop_assert!(input.windows(out.len().max(1)).any(|w| w == &out[..]) || out.is_empty());
                exercise_views(&m);
            }
            Err(e) => { let _ = e.answer(); }
        }
    }

    #[test]
    fn never_panics_on_mutated_rfc4475_messages(
        pick in any::<prop::sample::Index>(),
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let all = fixtures();
        let mut v = all[pick.index(all.len())].clone();
        for (idx, byte, op) in muts {
            if v.is_empty() { break; }
            let i = idx.index(v.len());
            match op {
                0 => v[i] = byte,
                1 => v.insert(i, byte),
                2 => { v.remove(i); }
                _ => v.truncate(i),
            }
        }
        match parse_datagram(Bytes::from(v.clone()), &Limits::default()) {
            Ok(m) => exercise_views(&m),
            Err(e) => { let _ = sipveil_sip::error_response(&v, e.answer(), b"t"); }
        }
        let mut f = StreamFramer::new(Limits::default());
        f.push(&v);
        for _ in 0..8 {
            if f.poll().is_none() { break; }
        }
    }

    #[test]
    fn check_agrees_with_parse(
        v in prop_oneof![
            name_addr(),
            (host(), "[a-zA-Z0-9;=.:-]{0,20}").prop_map(|(h, p)| format!("SIP/2.0/UDP {h};{p}")),
            uri(),
            "[ -~]{0,40}",
            (name_addr(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(s, i, c)| {
                let mut b = s.into_bytes();
                let k = i.index(b.len().max(1)).min(b.len().saturating_sub(1));
                if !b.is_empty() { b[k] = c; }
                String::from_utf8_lossy(&b).into_owned()
            }),
        ],
    ) {
        let b = Bytes::from(v.clone().into_bytes());
        prop_assert_eq!(NameAddr::check(&b), NameAddr::parse(&b).map(|_| ()), "{}", v);
        prop_assert_eq!(Contact::check(&b), Contact::parse(&b).map(|_| ()), "{}", v);
        prop_assert_eq!(Uri::check(&b), Uri::parse(b.clone()).map(|_| ()), "{}", v);
        prop_assert_eq!(Via::check(&b), Via::parse(&b).map(|_| ()), "{}", v);
    }

    #[test]
    fn uri_equivalence_is_reflexive_and_symmetric(a in uri(), b in uri()) {
        let ua = Uri::parse_str(&a).map_err(|e| TestCaseError::fail(format!("{a}: {e:?}")))?;
        let ub = Uri::parse_str(&b).map_err(|e| TestCaseError::fail(format!("{b}: {e:?}")))?;
        prop_assert!(ua.equivalent(&ua));
        prop_assert_eq!(ua.equivalent(&ub), ub.equivalent(&ua));
    }
}

#[test]
fn header_name_lookup_is_case_insensitive_for_all_compact_forms() {
    for c in b'a'..=b'z' {
        let lower = HeaderName::from_bytes(Bytes::copy_from_slice(&[c]));
        let upper = HeaderName::from_bytes(Bytes::copy_from_slice(&[c.to_ascii_uppercase()]));
        assert_eq!(lower, upper);
        if !matches!(lower, HeaderName::Other(_)) {
            assert_eq!(lower.compact(), Some(c));
        }
    }
}
