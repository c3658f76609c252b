//! Property: any sequence of requests and responses from either party —
//! right or wrong tags, out-of-order CSeqs, any status code, good or bad
//! SDP — leaves the map consistent: nothing panics, everything the edge
//! emits parses and validates, and nothing of one party reaches the other.

#[expect(
    dead_code,
    reason = "this file drives the harness with random events only"
)]
mod common;

use common::*;
use proptest::prelude::*;
use sipveil_b2bua::{CallerIdentity, PrivacyPolicy};
use sipveil_sip::{HeaderName, Method};

#[derive(Clone, Debug)]
enum Event {
    CallerRequest {
        method: usize,
        good_tag: bool,
        cseq_step: i8,
        sdp: u8,
    },
    CalleeResponds {
        fork: u16,
        status: u16,
        sdp: u8,
    },
    CalleeRequest {
        fork: u16,
        method: usize,
        cseq: u16,
    },
    CallerResponds {
        status: u16,
        sdp: u8,
    },
    CallerCancels,
}

const METHODS: &[&str] = &[
    "INVITE", "ACK", "BYE", "INFO", "OPTIONS", "UPDATE", "NOTIFY", "REFER", "PRACK",
];

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..METHODS.len(), any::<bool>(), -2i8..3, 0u8..3).prop_map(
            |(method, good_tag, cseq_step, sdp)| {
                Event::CallerRequest {
                    method,
                    good_tag,
                    cseq_step,
                    sdp,
                }
            }
        ),
        (
            0u16..2,
            prop_oneof![Just(100u16), 180..184u16, 200..203u16, 300..700u16],
            0u8..3
        )
            .prop_map(|(fork, status, sdp)| Event::CalleeResponds { fork, status, sdp }),
        (0u16..2, 0..METHODS.len(), 1u16..2000)
            .prop_map(|(fork, method, cseq)| Event::CalleeRequest { fork, method, cseq }),
        (prop_oneof![200..203u16, 400..700u16], 0u8..3)
            .prop_map(|(status, sdp)| Event::CallerResponds { status, sdp }),
        Just(Event::CallerCancels),
    ]
}

fn sdp_for(kind: u8, caller: bool, n: u8) -> Option<String> {
    match kind {
        0 => None,
        1 if caller => Some(caller_sdp(u32::from(n), 16000 + u16::from(n) * 2, "")),
        1 => Some(callee_sdp(1, u32::from(n), 20000 + u16::from(n) * 2)),
        _ => Some("v=0\r\no=broken\r\nm=audio x\r\n".to_owned()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_flows_stay_consistent_and_private(events in proptest::collection::vec(event(), 1..25)) {
        let mut w = World::new(PrivacyPolicy::default());
        let (call, _) = w.start(caller_invite(None), CallerIdentity::Anonymous, vec![target(1, "b1"), target(2, "b2")]);
        prop_assert!(call.is_some());
        let mut a_cseq: i64 = 31337;
        let mut n = 1u8;
        for e in events {
            n = n.wrapping_add(1);
            match e {
                Event::CallerRequest { method, good_tag, cseq_step, sdp } => {
                    let tag = w
                        .responses_a
                        .iter()
                        .find_map(|(_, r)| r.to_tag())
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .filter(|_| good_tag)
                        .unwrap_or_else(|| "wrongtag".to_owned());
                    a_cseq = (a_cseq + i64::from(cseq_step)).max(1);
                    let m = METHODS[method];
                    let r = caller_in_dialog(m, &tag, a_cseq as u32, sdp_for(sdp, true, n));
                    w.caller_sends(r);
                }
                Event::CalleeResponds { fork, status, sdp } => {
                    let Some((_, r)) = w.sent_b.iter().rev().find(|(f, r)| *f == fork && *r.method() != Method::Ack).cloned() else { continue };
                    let resp = callee_response(fork as u8 + 1, &r, status, sdp_for(sdp, false, n));
                    w.b_responds(fork, resp);
                }
                Event::CalleeRequest { fork, method, cseq } => {
                    let Some((_, inv)) = w.sent_b.iter().find(|(f, _)| *f == fork).cloned() else { continue };
                    let from = String::from_utf8_lossy(&inv.headers().get_value(&HeaderName::From).expect("from")).into_owned();
                    let cid = String::from_utf8_lossy(&inv.call_id().expect("cid")).into_owned();
                    let r = callee_in_dialog(fork as u8 + 1, METHODS[method], &from, &cid, u32::from(cseq));
                    w.callee_sends(fork, r);
                }
                Event::CallerResponds { status, sdp } => {
                    let Some(r) = w.sent_a.last().cloned() else { continue };
                    w.a_responds(caller_response(&r, status, sdp_for(sdp, true, n)));
                }
                Event::CallerCancels => {
                    let cancel = caller_invite(None).cancel().expect("cancel");
                    w.caller_sends(cancel);
                }
            }
        }
        let mut callee_ids = callee_identifiers(1);
        callee_ids.extend(callee_identifiers(2));
        let own_a: Vec<std::net::IpAddr> = vec![A_LAN.parse().expect("ip")];
        for m in &w.inbox.a {
            let f = sipveil_b2bua::audit(m, &callee_ids, &own_a);
            prop_assert!(f.is_empty(), "caller got {:?} in\n{}", f, String::from_utf8_lossy(m));
        }
        for (fork, m) in &w.inbox.b {
            let own: Vec<std::net::IpAddr> = vec![b_lan(*fork as u8 + 1).parse().expect("ip")];
            let mut ids = caller_identifiers_with_aor();
            // The other device's identifiers, minus what both devices share
            // (the user's display name).
            let mine = callee_identifiers(*fork as u8 + 1);
            ids.extend(
                callee_identifiers(if *fork == 0 { 2 } else { 1 })
                    .into_iter()
                    .filter(|i| !mine.iter().any(|m| m.value == i.value)),
            );
            let f = sipveil_b2bua::audit(m, &ids, &own);
            prop_assert!(f.is_empty(), "fork {} got {:?} in\n{}", fork, f, String::from_utf8_lossy(m));
        }
    }
}
