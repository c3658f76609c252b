//! Message-level leak audit (issue 5, item 6 at the SIP-core level): each
//! party has distinctive identifiers; none may appear anywhere in the bytes
//! the other party receives, in every call flow.

mod common;

use common::*;
use sipveil_b2bua::{CallerIdentity, PrivacyPolicy};
use sipveil_sip::{HeaderName, Method, Uri};

fn established(identity: CallerIdentity, privacy: Option<&str>) -> World {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(caller_invite(privacy), identity, vec![target(1, "b1")]);
    assert!(call.is_some(), "call bridged");
    let inv = w.last_to_b(0, "INVITE");
    w.b_responds(0, callee_response(1, &inv, 180, None));
    w.b_responds(
        0,
        callee_response(1, &inv, 183, Some(callee_sdp(1, 1, 20000))),
    );
    w.b_responds(
        0,
        callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000))),
    );
    let ok = w.last_response_a();
    assert_eq!(ok.status().as_u16(), 200);
    let tag = String::from_utf8(ok.to_tag().expect("edge tag").to_vec()).expect("utf8");
    w.caller_sends(caller_in_dialog("ACK", &tag, 31337, None));
    assert_eq!(w.acks_b.len(), 1, "ACK crossed");
    w
}

fn edge_tag_a(w: &World) -> String {
    let ok = w
        .responses_a
        .iter()
        .find(|(_, r)| r.status().as_u16() == 200)
        .map(|(_, r)| r.clone())
        .expect("200");
    String::from_utf8(ok.to_tag().expect("tag").to_vec()).expect("utf8")
}

fn callee_inbox(w: &World, fork: u16) -> Vec<bytes::Bytes> {
    w.inbox
        .b
        .iter()
        .filter(|(f, _)| *f == fork)
        .map(|(_, b)| b.clone())
        .collect()
}

#[test]
fn anonymous_caller_to_user() {
    let w = established(CallerIdentity::Anonymous, None);
    let inv = w.last_to_b(0, "INVITE");
    let from = inv.headers().get_value(&HeaderName::From).expect("From");
    assert!(from.starts_with(b"\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag="));
    assert!(inv.headers().get(&HeaderName::PAssertedIdentity).is_none());
    assert_clean(
        "callee inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers_with_aor(),
        &[B1_LAN],
    );
    assert_clean("caller inbox", &w.inbox.a, &callee_identifiers(1), &[A_LAN]);
}

#[test]
fn identified_caller_shows_only_the_aor() {
    let aor = Uri::parse_str(A_AOR).expect("aor");
    let w = established(CallerIdentity::Authenticated { aor }, None);
    let inv = w.last_to_b(0, "INVITE");
    let from = inv.headers().get_value(&HeaderName::From).expect("From");
    assert!(
        from.starts_with(format!("<{A_AOR}>;tag=").as_bytes()),
        "{from:?}"
    );
    // The AOR may appear; the contact, display name, addresses... may not.
    assert_clean(
        "callee inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers(),
        &[B1_LAN],
    );
    assert_clean("caller inbox", &w.inbox.a, &callee_identifiers(1), &[A_LAN]);
}

#[test]
fn identified_caller_asking_privacy_is_anonymous() {
    let aor = Uri::parse_str(A_AOR).expect("aor");
    for p in ["id", "user", "header", "header;user;critical"] {
        let w = established(CallerIdentity::Authenticated { aor: aor.clone() }, Some(p));
        assert_clean(
            p,
            &callee_inbox(&w, 0),
            &caller_identifiers_with_aor(),
            &[B1_LAN],
        );
    }
}

#[test]
fn forking_to_two_contacts() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(
        caller_invite(None),
        CallerIdentity::Anonymous,
        vec![target(1, "b1"), target(2, "b2")],
    );
    let call = call.expect("bridged");
    let inv1 = w.last_to_b(0, "INVITE");
    let inv2 = w.last_to_b(1, "INVITE");
    // The forks share nothing either.
    assert_ne!(inv1.call_id().expect("cid"), inv2.call_id().expect("cid"));
    w.b_responds(0, callee_response(1, &inv1, 180, None));
    w.b_responds(
        1,
        callee_response(2, &inv2, 183, Some(callee_sdp(2, 1, 22000))),
    );
    w.b_responds(
        1,
        callee_response(2, &inv2, 200, Some(callee_sdp(2, 1, 22000))),
    );
    assert!(w.map.is_confirmed(call));
    // The losing fork was ringing: it gets a CANCEL saying why.
    let cancel = w.last_to_b(0, "CANCEL");
    let reason = cancel
        .headers()
        .get_value(&HeaderName::Reason)
        .expect("Reason");
    assert!(reason.windows(9).any(|x| x == b"elsewhere"));
    w.b_responds(0, callee_response(1, &cancel, 200, None));
    w.b_responds(0, callee_response(1, &inv1, 487, None));
    // The loser answers anyway (race): ACK + BYE it.
    let tag = edge_tag_a(&w);
    w.caller_sends(caller_in_dialog("ACK", &tag, 31337, None));
    assert_eq!(w.acks_b.iter().filter(|(f, _)| *f == 1).count(), 1);

    let mut callee_ids = callee_identifiers(1);
    callee_ids.extend(callee_identifiers(2));
    assert_clean("caller inbox", &w.inbox.a, &callee_ids, &[A_LAN]);
    assert_clean(
        "fork 1 inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers_with_aor(),
        &[B1_LAN],
    );
    assert_clean(
        "fork 2 inbox",
        &callee_inbox(&w, 1),
        &caller_identifiers_with_aor(),
        &[B2_LAN],
    );
    // Nothing of one callee device reaches the other.
    assert_clean(
        "fork 1 inbox vs device 2",
        &callee_inbox(&w, 0),
        &callee_identifiers(2),
        &[B1_LAN],
    );
    assert_clean(
        "fork 2 inbox vs device 1",
        &callee_inbox(&w, 1),
        &callee_identifiers(1),
        &[B2_LAN],
    );
}

#[test]
fn forking_late_2xx_from_loser_is_acked_and_ended() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(
        caller_invite(None),
        CallerIdentity::Anonymous,
        vec![target(1, "b1"), target(2, "b2")],
    );
    let call = call.expect("bridged");
    let inv1 = w.last_to_b(0, "INVITE");
    let inv2 = w.last_to_b(1, "INVITE");
    // Fork 1 has said nothing yet when fork 2 answers: its CANCEL waits for a provisional (§9.1).
    w.b_responds(
        1,
        callee_response(2, &inv2, 200, Some(callee_sdp(2, 1, 22000))),
    );
    assert!(
        w.sent_b
            .iter()
            .all(|(f, r)| !(*f == 0 && *r.method() == Method::Cancel))
    );
    // Fork 1 answers 200 before any provisional: ACK it and BYE it.
    w.b_responds(
        0,
        callee_response(1, &inv1, 200, Some(callee_sdp(1, 1, 20000))),
    );
    assert_eq!(w.acks_b.iter().filter(|(f, _)| *f == 0).count(), 1);
    let bye = w.last_to_b(0, "BYE");
    w.b_responds(0, callee_response(1, &bye, 200, None));
    // Only one 200 reached the caller.
    assert_eq!(
        w.responses_a
            .iter()
            .filter(|(_, r)| r.status().as_u16() == 200)
            .count(),
        1
    );
    assert!(w.map.contains(call));
    let mut callee_ids = callee_identifiers(1);
    callee_ids.extend(callee_identifiers(2));
    assert_clean("caller inbox", &w.inbox.a, &callee_ids, &[A_LAN]);
    assert_clean(
        "fork 1 inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers_with_aor(),
        &[B1_LAN],
    );
}

#[test]
fn re_invite_both_ways() {
    let mut w = established(CallerIdentity::Anonymous, None);
    let tag = edge_tag_a(&w);
    // Caller puts the call on hold with a new port and fresh candidates.
    let sdp = caller_sdp(2, 16002, "a=ssrc:99 cname:other@alicebox\r\n")
        .replace("a=sendrecv", "a=sendonly");
    w.caller_sends(caller_in_dialog("INVITE", &tag, 31338, Some(sdp)));
    let re = w.last_to_b(0, "INVITE");
    assert_eq!(
        w.sent_b
            .iter()
            .filter(|(_, r)| *r.method() == Method::Invite)
            .count(),
        2
    );
    w.b_responds(
        0,
        callee_response(
            1,
            &re,
            200,
            Some(callee_sdp(1, 2, 20002).replace("a=sendrecv", "a=recvonly")),
        ),
    );
    w.caller_sends(caller_in_dialog("ACK", &tag, 31338, None));
    assert_eq!(w.acks_b.len(), 2);
    // The callee re-INVITEs back (resume).
    let first = w.last_to_b(0, "INVITE");
    let edge_from = String::from_utf8(
        first
            .headers()
            .get_value(&HeaderName::From)
            .expect("from")
            .to_vec(),
    )
    .expect("utf8");
    let cid = String::from_utf8(first.call_id().expect("cid").to_vec()).expect("utf8");
    let mut r = callee_in_dialog(1, "INVITE", &edge_from, &cid, 7000);
    r.set_body(
        Some(b"application/sdp"),
        bytes::Bytes::from(callee_sdp(1, 3, 20004)),
    )
    .expect("body");
    w.callee_sends(0, r);
    let to_a = w.last_to_a("INVITE");
    w.a_responds(caller_response(&to_a, 200, Some(caller_sdp(3, 16004, ""))));
    let ok_b = w.responses_b.last().expect("200 to callee").1.clone();
    assert_eq!(ok_b.status().as_u16(), 200);
    let mut ack = callee_in_dialog(1, "ACK", &edge_from, &cid, 7000);
    ack.headers_mut().remove_all(&HeaderName::Contact);
    w.callee_sends(0, ack);
    assert_eq!(w.acks_a.len(), 1);
    assert_clean(
        "callee inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers_with_aor(),
        &[B1_LAN],
    );
    assert_clean("caller inbox", &w.inbox.a, &callee_identifiers(1), &[A_LAN]);
}

#[test]
fn cancel_before_answer() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, invite_tx) = w.start(
        caller_invite(None),
        CallerIdentity::Anonymous,
        vec![target(1, "b1")],
    );
    let call = call.expect("bridged");
    let inv = w.last_to_b(0, "INVITE");
    w.b_responds(0, callee_response(1, &inv, 180, None));
    let cancel = caller_invite(None).cancel().expect("cancel");
    let cancel_tx = w.caller_sends(cancel);
    let codes: Vec<(u32, u16)> = w
        .responses_a
        .iter()
        .map(|(t, r)| (*t, r.status().as_u16()))
        .collect();
    assert!(codes.contains(&(cancel_tx, 200)), "{codes:?}");
    assert!(codes.contains(&(invite_tx, 487)), "{codes:?}");
    let c = w.last_to_b(0, "CANCEL");
    w.b_responds(0, callee_response(1, &c, 200, None));
    w.b_responds(0, callee_response(1, &inv, 487, None));
    assert!(!w.map.contains(call), "call removed");
    assert_eq!(w.ended, vec![call]);
    assert!(
        w.anchor
            .released
            .iter()
            .any(|(c, f)| *c == call && f.is_none())
    );
    assert_clean(
        "callee inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers_with_aor(),
        &[B1_LAN],
    );
    assert_clean("caller inbox", &w.inbox.a, &callee_identifiers(1), &[A_LAN]);
}

#[test]
fn bye_from_the_callee() {
    let mut w = established(CallerIdentity::Anonymous, None);
    let inv = w.last_to_b(0, "INVITE");
    let edge_from = String::from_utf8(
        inv.headers()
            .get_value(&HeaderName::From)
            .expect("from")
            .to_vec(),
    )
    .expect("utf8");
    let cid = String::from_utf8(inv.call_id().expect("cid").to_vec()).expect("utf8");
    w.callee_sends(0, callee_in_dialog(1, "BYE", &edge_from, &cid, 9000));
    let bye = w.last_to_a("BYE");
    assert_eq!(bye.call_id().expect("cid").as_ref(), A_CALL_ID.as_bytes());
    // The request goes to the caller's contact through its Record-Route.
    assert_eq!(
        bye.uri().as_bytes().as_ref(),
        format!("sip:{A_CONTACT_USER}@{A_LAN}:5060;ob").as_bytes()
    );
    w.a_responds(caller_response(&bye, 200, None));
    assert_eq!(w.responses_b.last().expect("200").1.status().as_u16(), 200);
    assert_eq!(w.map.stats().calls, 0);
    assert_clean(
        "callee inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers_with_aor(),
        &[B1_LAN],
    );
    assert_clean("caller inbox", &w.inbox.a, &callee_identifiers(1), &[A_LAN]);
}

#[test]
fn bye_from_the_caller_and_in_dialog_info_options() {
    let mut w = established(CallerIdentity::Anonymous, None);
    let tag = edge_tag_a(&w);
    let mut info = caller_in_dialog("INFO", &tag, 31338, None);
    info.set_body(
        Some(b"application/dtmf-relay"),
        bytes::Bytes::from_static(b"Signal=5\r\nDuration=160\r\n"),
    )
    .expect("body");
    w.caller_sends(info);
    let to_b = w.last_to_b(0, "INFO");
    assert_eq!(to_b.body().as_ref(), b"Signal=5\r\nDuration=160\r\n");
    w.b_responds(0, callee_response(1, &to_b, 200, None));
    w.caller_sends(caller_in_dialog("OPTIONS", &tag, 31339, None));
    let to_b = w.last_to_b(0, "OPTIONS");
    w.b_responds(0, callee_response(1, &to_b, 200, None));
    w.caller_sends(caller_in_dialog("BYE", &tag, 31340, None));
    let bye = w.last_to_b(0, "BYE");
    w.b_responds(0, callee_response(1, &bye, 200, None));
    assert_eq!(w.map.stats().calls, 0);
    assert_clean(
        "callee inbox",
        &callee_inbox(&w, 0),
        &caller_identifiers_with_aor(),
        &[B1_LAN],
    );
    assert_clean("caller inbox", &w.inbox.a, &callee_identifiers(1), &[A_LAN]);
}

/// The daemon's detector: identifiers extracted from what the caller sent
/// (not a hand-written list) are absent from everything the callee got.
#[test]
fn extracted_identifiers_catch_the_raw_message_and_not_the_bridged_one() {
    let edge: Vec<std::net::IpAddr> = [EDGE_A, EDGE_B]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    let invite = caller_invite(None);
    let ids =
        sipveil_b2bua::identifiers_of(&sipveil_sip::Message::Request(invite.clone()), &edge, &[]);
    // (Values are collected once: the Contact host, the X- header and the SDP
    // addresses are all the LAN address, already found in Via.)
    let values: Vec<&[u8]> = ids.iter().map(|i| i.value.as_slice()).collect();
    for want in [
        A_LAN,
        A_PUBLIC,
        A_HOST,
        A_DISPLAY,
        A_CONTACT_USER,
        A_TAG,
        A_CALL_ID,
        A_BRANCH,
        A_UA,
        A_SDP_USER,
        A_SDP_SESSION,
        A_SDP_NAME,
        A_CNAME,
        "aliceufrag",
    ] {
        assert!(
            values.contains(&want.as_bytes()),
            "{want} not extracted: {ids:?}"
        );
    }
    // Non-vacuous: the caller's own INVITE is full of them...
    assert!(sipveil_b2bua::leak_scan(&invite.to_bytes(), &ids).len() > 10);
    // ...and the bridged call carries none.
    let w = established(CallerIdentity::Anonymous, None);
    assert_clean("callee inbox", &callee_inbox(&w, 0), &ids, &[B1_LAN]);
    // An identified caller's AOR is shown on purpose: pass it as `shown`.
    let ids = sipveil_b2bua::identifiers_of(
        &sipveil_sip::Message::Request(invite),
        &edge,
        &[A_AOR.as_bytes()],
    );
    let w = established(
        CallerIdentity::Authenticated {
            aor: Uri::parse_str(A_AOR).expect("aor"),
        },
        None,
    );
    assert_clean(
        "callee inbox (identified)",
        &callee_inbox(&w, 0),
        &ids,
        &[B1_LAN],
    );
}

#[test]
fn extracted_callee_identifiers_never_reach_the_caller() {
    let edge: Vec<std::net::IpAddr> = [EDGE_A, EDGE_B]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    let w = established(CallerIdentity::Anonymous, None);
    let inv = w.last_to_b(0, "INVITE");
    let answer = callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000)));
    // What the callee reveals, minus what the edge itself wrote into its
    // response (Via, From, To, Call-ID are the edge's own on this leg).
    let edge_values: Vec<Vec<u8>> = [HeaderName::Via, HeaderName::From, HeaderName::CallId]
        .iter()
        .flat_map(|h| {
            inv.headers()
                .values(h)
                .map(|v| v.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    let shown: Vec<&[u8]> = edge_values.iter().map(|v| v.as_slice()).collect();
    let ids = sipveil_b2bua::identifiers_of(
        &sipveil_sip::Message::Response(answer.clone()),
        &edge,
        &shown,
    );
    let values: Vec<&[u8]> = ids.iter().map(|i| i.value.as_slice()).collect();
    for want in [
        b_lan(1),
        b_public(1),
        b_contact_user(1),
        b_ua(1),
        B_SDP_USER.to_owned(),
        "bobufrag".to_owned(),
    ] {
        assert!(
            values
                .iter()
                .any(|v| v.windows(want.len()).any(|w| w == want.as_bytes())),
            "{want}: {ids:?}"
        );
    }
    assert!(!sipveil_b2bua::leak_scan(&answer.to_bytes(), &ids).is_empty());
    assert_clean("caller inbox", &w.inbox.a, &ids, &[A_LAN]);
}
