//! Rough cost of the privacy core per call: N calls through the dialog map
//! (INVITE with SDP, 180, 200 with SDP, ACK, BYE, 200), every message built,
//! printed and re-parsed as a peer would. Prints time per call and per
//! message. `cargo run --release -p sipveil-b2bua --example call_cost [N]`.

use std::time::Instant;

use bytes::Bytes;
use sipveil_b2bua::{
    Action, CallSetup, CallerIdentity, CountingAnchor, DialogMap, EdgeAddress, EdgeTransport,
    FarTarget, Outcome, PrivacyPolicy, SeededIds,
};
use sipveil_sip::{
    HeaderName, Limits, Message, Request, Response, StatusCode, Uri, parse_datagram,
};

const SDP_A: &str = "v=0\r\no=alice 1 1 IN IP4 192.168.1.20\r\ns=Talk\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\n\
    m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
    a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n\
    a=candidate:1 1 UDP 2130706431 192.168.1.20 4000 typ host\r\na=ice-ufrag:abcd\r\n\
    a=ice-pwd:abcdabcdabcdabcdabcdabcd\r\na=sendrecv\r\n";
const SDP_B: &str = "v=0\r\no=bob 7 7 IN IP4 10.0.0.7\r\ns=Talk\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
    m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
    a=sendrecv\r\n";

fn wire(msg: Bytes) -> Message {
    parse_datagram(msg, &Limits::default()).expect("parses")
}

fn request(a: &Action<&'static str, u64>) -> Option<Request> {
    match a {
        Action::Send { request, .. } | Action::SendAck { request, .. } => {
            match wire(request.to_bytes()) {
                Message::Request(r) => Some(r),
                Message::Response(_) => None,
            }
        }
        _ => None,
    }
}

fn response(a: &Action<&'static str, u64>) -> Option<Response> {
    match a {
        Action::Respond { response, .. } => match wire(response.to_bytes()) {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        },
        _ => None,
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut map: DialogMap<&'static str, u64> = DialogMap::new(PrivacyPolicy::default());
    let mut ids = SeededIds::new(1);
    let mut anchor = CountingAnchor::new(
        "198.18.1.1".parse().unwrap(),
        "198.18.2.1".parse().unwrap(),
        0,
    );
    let edge = |ip: &str| EdgeAddress {
        host: ip.into(),
        port: Some(5060),
        transport: EdgeTransport::Udp,
        media_ip: ip.parse().unwrap(),
    };
    let callee = Uri::parse_str("sip:bob@open.lab").unwrap();
    let contact = Uri::parse_str("sip:bob@10.0.0.7:5062").unwrap();
    let mut messages = 0u64;
    let start = Instant::now();
    for i in 0..n {
        // The anchor keeps every allocation for inspection; start afresh now and then.
        if i % 50 == 0 {
            anchor = CountingAnchor::new(
                "198.18.1.1".parse().unwrap(),
                "198.18.2.1".parse().unwrap(),
                0,
            );
        }
        let text = format!(
            "INVITE sip:bob@open.lab SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK{i}a;rport\r\n\
             Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@auth.lab>;tag=a{i}\r\nTo: <sip:bob@open.lab>\r\n\
             Call-ID: call{i}@alice-laptop\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.168.1.20:5060>\r\n\
             User-Agent: Phone/1.0\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\nSupported: timer\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
            SDP_A.len()
        );
        let Message::Request(invite) = wire(Bytes::from(text)) else {
            unreachable!()
        };
        let setup = CallSetup {
            identity: CallerIdentity::Anonymous,
            callee: callee.clone(),
            targets: vec![FarTarget {
                uri: contact.clone(),
                route: vec![],
                trusted: false,
                flow: "b",
            }],
            a_flow: "a",
            edge_a: edge("198.18.1.1"),
            edge_b: edge("198.18.2.1"),
        };
        let (_, actions) = map.start_call(&mut ids, &mut anchor, 2 * i, invite, setup);
        let inv_b = request(&actions[0]).expect("far INVITE");
        let ringing = inv_b
            .response(StatusCode::RINGING)
            .to_tag("b1")
            .build()
            .unwrap();
        let _ = response(&map.handle_response(&mut ids, &mut anchor, "b", ringing)[0]);
        let ok = inv_b
            .response(StatusCode::OK)
            .to_tag("b1")
            .header(HeaderName::Contact, "<sip:bob@10.0.0.7:5062>")
            .body("application/sdp", Bytes::from_static(SDP_B.as_bytes()))
            .build()
            .unwrap();
        let ok_a = response(&map.handle_response(&mut ids, &mut anchor, "b", ok)[0]).expect("200");
        let tag = String::from_utf8(ok_a.to_tag().unwrap().to_vec()).unwrap();
        let in_dialog = |m: &str, seq: u32| {
            let t = format!(
                "{m} sip:198.18.1.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK{i}{m};rport\r\n\
                 Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@auth.lab>;tag=a{i}\r\nTo: <sip:bob@open.lab>;tag={tag}\r\n\
                 Call-ID: call{i}@alice-laptop\r\nCSeq: {seq} {m}\r\nContent-Length: 0\r\n\r\n"
            );
            let Message::Request(r) = wire(Bytes::from(t)) else {
                unreachable!()
            };
            r
        };
        let _ = request(&map.handle_ack(&mut ids, &mut anchor, "a", &in_dialog("ACK", 1))[0]);
        let Outcome::Handled(acts) =
            map.handle_request(&mut ids, &mut anchor, "a", 2 * i + 1, in_dialog("BYE", 2))
        else {
            unreachable!()
        };
        let bye_b = request(&acts[0]).expect("BYE");
        let ok = bye_b.response(StatusCode::OK).build().unwrap();
        let _ = response(&map.handle_response(&mut ids, &mut anchor, "b", ok)[0]);
        messages += 12; // 6 in, 6 out
    }
    let el = start.elapsed();
    assert_eq!(map.stats().calls, 0);
    println!(
        "{n} calls, {messages} messages in {:.3} s: {:.1} µs per call, {:.2} µs per message (parse of inputs and re-parse of outputs included)",
        el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / n as f64,
        el.as_secs_f64() * 1e6 / messages as f64
    );
}
