//! Dialog-map behaviour: refusals, identity, CSeq spaces, 481/491/500,
//! forking outcomes, late offers, SDP versions, edge-initiated teardown.

#[expect(
    dead_code,
    reason = "the leak-audit part of the harness is used by leak_audit.rs"
)]
mod common;

use bytes::Bytes;
use common::*;
use sipveil_b2bua::{CallerIdentity, Outcome, PrivacyPolicy};
use sipveil_sip::{HeaderName, Method, StatusCode, Uri};

fn alice() -> CallerIdentity {
    CallerIdentity::Authenticated {
        aor: Uri::parse_str(A_AOR).expect("aor"),
    }
}

fn header(r: &sipveil_sip::Request, name: HeaderName) -> Option<String> {
    r.headers()
        .get_value(&name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[test]
fn critical_privacy_that_cannot_be_honoured_is_refused_with_500() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, tx) = w.start(
        caller_invite(Some("id;critical;teleport")),
        alice(),
        vec![target(1, "b1")],
    );
    assert!(call.is_none());
    assert!(w.sent_b.is_empty(), "nothing reaches the callee");
    let (t, r) = w.responses_a.last().expect("refusal");
    assert_eq!(*t, tx);
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(r.reason().as_ref(), b"Privacy Unavailable");
    assert!(r.to_tag().is_some());
    assert_eq!(w.map.stats().calls, 0);
}

#[test]
fn critical_privacy_that_can_be_honoured_proceeds() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(
        caller_invite(Some("header;session;user;id;history;critical")),
        alice(),
        vec![target(1, "b1")],
    );
    assert!(call.is_some());
    let inv = w.last_to_b(0, "INVITE");
    assert!(
        header(&inv, HeaderName::From)
            .expect("from")
            .starts_with("\"Anonymous\"")
    );
}

#[test]
fn required_extension_that_cannot_cross_is_420() {
    let mut w = World::new(PrivacyPolicy::default());
    let invite = caller_invite_with(None, "Require: 100rel\r\n", Some(caller_sdp(1, 16000, "")));
    let (call, _) = w.start(invite, alice(), vec![target(1, "b1")]);
    assert!(call.is_none());
    let r = w.last_response_a();
    assert_eq!(r.status().as_u16(), 420);
    assert_eq!(
        r.headers().get_value(&HeaderName::Unsupported).as_deref(),
        Some(&b"100rel"[..])
    );
}

#[test]
fn max_forwards_zero_is_483_and_far_leg_decrements() {
    let mut w = World::new(PrivacyPolicy::default());
    let text = caller_invite(None).to_bytes();
    let text = String::from_utf8(text.to_vec())
        .expect("utf8")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    let (call, _) = w.start(req(&text), alice(), vec![target(1, "b1")]);
    assert!(call.is_none());
    assert_eq!(w.last_response_a().status().as_u16(), 483);

    let mut w = World::new(PrivacyPolicy::default());
    let text = String::from_utf8(caller_invite(None).to_bytes().to_vec())
        .expect("utf8")
        .replace("Max-Forwards: 70", "Max-Forwards: 5");
    w.start(req(&text), alice(), vec![target(1, "b1")]);
    assert_eq!(w.last_to_b(0, "INVITE").max_forwards(), Some(4));
}

#[test]
fn forced_anonymity_hides_an_authenticated_caller() {
    let policy = PrivacyPolicy {
        force_anonymous: true,
        ..PrivacyPolicy::default()
    };
    let mut w = World::new(policy);
    w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let inv = w.last_to_b(0, "INVITE");
    assert!(
        header(&inv, HeaderName::From)
            .expect("from")
            .starts_with("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=")
    );
}

#[test]
fn asserted_identity_only_to_trusted_next_hops() {
    // Untrusted target (a user's device): never a PAI, whatever came in.
    let mut w = World::new(PrivacyPolicy::default());
    w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let inv = w.last_to_b(0, "INVITE");
    assert!(inv.headers().get(&HeaderName::PAssertedIdentity).is_none());
    assert!(inv.headers().get(&HeaderName::Privacy).is_none());

    // Trusted peer: the edge asserts the authenticated AOR (not the incoming PAI).
    let mut t = target(1, "b1");
    t.trusted = true;
    let mut w = World::new(PrivacyPolicy::default());
    w.start(caller_invite(None), alice(), vec![t.clone()]);
    let inv = w.last_to_b(0, "INVITE");
    assert_eq!(
        header(&inv, HeaderName::PAssertedIdentity).as_deref(),
        Some("<sip:alice@auth.lab>")
    );

    // Privacy: id removes it (default policy)...
    let mut w = World::new(PrivacyPolicy::default());
    w.start(caller_invite(Some("id")), alice(), vec![t.clone()]);
    let inv = w.last_to_b(0, "INVITE");
    assert!(inv.headers().get(&HeaderName::PAssertedIdentity).is_none());

    // ...or, as RFC 3325 §9.1 allows, keeps it with `Privacy: id` for the trust domain.
    let policy = PrivacyPolicy {
        pai_to_trusted_with_privacy_id: true,
        ..PrivacyPolicy::default()
    };
    let mut w = World::new(policy);
    w.start(caller_invite(Some("id")), alice(), vec![t.clone()]);
    let inv = w.last_to_b(0, "INVITE");
    assert_eq!(
        header(&inv, HeaderName::PAssertedIdentity).as_deref(),
        Some("<sip:alice@auth.lab>")
    );
    assert_eq!(header(&inv, HeaderName::Privacy).as_deref(), Some("id"));

    // An anonymous caller has nothing to assert, even to a trusted hop.
    let mut w = World::new(PrivacyPolicy::default());
    w.start(caller_invite(None), CallerIdentity::Anonymous, vec![t]);
    let inv = w.last_to_b(0, "INVITE");
    assert!(inv.headers().get(&HeaderName::PAssertedIdentity).is_none());
}

fn establish(w: &mut World) -> String {
    let (call, _) = w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    assert!(call.is_some());
    let inv = w.last_to_b(0, "INVITE");
    w.b_responds(
        0,
        callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000))),
    );
    let tag = String::from_utf8(w.last_response_a().to_tag().expect("tag").to_vec()).expect("utf8");
    w.caller_sends(caller_in_dialog("ACK", &tag, 31337, None));
    tag
}

#[test]
fn each_leg_has_its_own_identifiers_and_cseq_space() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    let inv = w.last_to_b(0, "INVITE");
    let b_cseq = inv.cseq().expect("cseq").seq;
    assert_ne!(b_cseq, 31337);
    assert!((1..(1 << 31)).contains(&b_cseq));
    assert_ne!(inv.call_id().expect("cid").as_ref(), A_CALL_ID.as_bytes());
    assert_ne!(inv.from_tag().expect("tag").as_ref(), A_TAG.as_bytes());
    assert_ne!(
        tag.as_bytes(),
        inv.from_tag().expect("tag").as_ref(),
        "A and B tags differ"
    );
    let branch = inv.top_via().expect("via").branch().expect("branch");
    assert!(branch.starts_with(b"z9hG4bK") && branch.as_ref() != A_BRANCH.as_bytes());
    assert_eq!(inv.vias().count(), 1, "only the edge's Via");
    assert!(inv.headers().get(&HeaderName::RecordRoute).is_none());
    assert!(inv.headers().get(&HeaderName::Route).is_none());
    // The ACK on B carries the B INVITE's CSeq number.
    let (_, ack) = w.acks_b.last().expect("ack");
    assert_eq!(ack.cseq().expect("cseq").seq, b_cseq);
    assert_eq!(ack.to_tag().as_deref(), Some(b_tag(1).as_bytes()));
    // In-dialog requests on B continue B's space.
    w.caller_sends(caller_in_dialog("OPTIONS", &tag, 31338, None));
    assert_eq!(
        w.last_to_b(0, "OPTIONS").cseq().expect("cseq").seq,
        b_cseq + 1
    );
    w.caller_sends(caller_in_dialog("INFO", &tag, 31339, None));
    assert_eq!(w.last_to_b(0, "INFO").cseq().expect("cseq").seq, b_cseq + 2);
    // Requests toward A use A's dialog: its Call-ID, the edge's A tag, and a new space.
    let cid = String::from_utf8(inv.call_id().expect("cid").to_vec()).expect("utf8");
    let from = header(&inv, HeaderName::From).expect("from");
    w.callee_sends(0, callee_in_dialog(1, "OPTIONS", &from, &cid, 100));
    let to_a = w.last_to_a("OPTIONS");
    assert_eq!(to_a.call_id().expect("cid").as_ref(), A_CALL_ID.as_bytes());
    assert_eq!(to_a.from_tag().as_deref(), Some(tag.as_bytes()));
    assert_eq!(to_a.to_tag().as_deref(), Some(A_TAG.as_bytes()));
    // Routed through the caller's Record-Route, to its Contact.
    assert_eq!(
        header(&to_a, HeaderName::Route).as_deref(),
        Some(format!("<sip:{A_LAN}:5080;lr>").as_str())
    );
}

#[test]
fn unknown_dialogs_get_481_and_stray_acks_are_dropped() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    let tx = w.a_tx();
    let bye = caller_in_dialog("BYE", "not-our-tag", 31340, None);
    let Outcome::Handled(actions) = w
        .map
        .handle_request(&mut w.ids, &mut w.anchor, "a", tx, bye)
    else {
        panic!("in dialog");
    };
    assert_eq!(actions.len(), 1);
    match &actions[0] {
        sipveil_b2bua::Action::Respond { response, .. } => {
            assert_eq!(response.status().as_u16(), 481)
        }
        other => panic!("{other:?}"),
    }
    let ack = caller_in_dialog("ACK", "not-our-tag", 31340, None);
    let Outcome::Handled(actions) = w
        .map
        .handle_request(&mut w.ids, &mut w.anchor, "a", tx, ack)
    else {
        panic!("in dialog");
    };
    assert!(actions.is_empty());
    // A CANCEL that matches no INVITE.
    let cancel = caller_invite_with(None, "", None);
    let cancel = String::from_utf8(cancel.cancel().expect("cancel").to_bytes().to_vec())
        .expect("utf8")
        .replace(A_CALL_ID, "other-call");
    let Outcome::Handled(actions) =
        w.map
            .handle_request(&mut w.ids, &mut w.anchor, "a", tx, req(&cancel))
    else {
        panic!("cancel");
    };
    assert!(
        matches!(&actions[0], sipveil_b2bua::Action::Respond { response, .. } if response.status().as_u16() == 481)
    );
    assert_eq!(w.map.stats().unknown_dialog, 2);
    // A request without To tag is not the map's.
    let tx2 = w.a_tx();
    let options = caller_invite_with(None, "", None);
    let text = String::from_utf8(options.to_bytes().to_vec())
        .expect("utf8")
        .replace("INVITE", "OPTIONS");
    assert!(matches!(
        w.map
            .handle_request(&mut w.ids, &mut w.anchor, "a", tx2, req(&text)),
        Outcome::NotInDialog { .. }
    ));
    // The real dialog still works.
    w.caller_sends(caller_in_dialog("OPTIONS", &tag, 31341, None));
    assert!(w.sent_b.iter().any(|(_, r)| *r.method() == Method::Options));
}

#[test]
fn reinvite_glare_is_491_and_lower_cseq_is_500() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    w.caller_sends(caller_in_dialog(
        "INVITE",
        &tag,
        31338,
        Some(caller_sdp(2, 16000, "")),
    ));
    // The callee re-INVITEs while ours is pending.
    let inv = w.last_to_b(0, "INVITE");
    let first = &w.sent_b[0].1;
    let cid = String::from_utf8(first.call_id().expect("cid").to_vec()).expect("utf8");
    let from = header(first, HeaderName::From).expect("from");
    w.callee_sends(0, callee_in_dialog(1, "INVITE", &from, &cid, 500));
    assert_eq!(w.responses_b.last().expect("491").1.status().as_u16(), 491);
    w.b_responds(
        0,
        callee_response(1, &inv, 200, Some(callee_sdp(1, 2, 20000))),
    );
    // An out-of-order CSeq from the caller.
    w.caller_sends(caller_in_dialog("OPTIONS", &tag, 30000, None));
    assert_eq!(w.last_response_a().status().as_u16(), 500);
}

#[test]
fn unsupported_in_dialog_method_is_501_with_allow() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    w.caller_sends(caller_in_dialog("REFER", &tag, 31338, None));
    let r = w.last_response_a();
    assert_eq!(r.status().as_u16(), 501);
    let allow = r.headers().get_value(&HeaderName::Allow).expect("Allow");
    assert!(!allow.windows(5).any(|x| x == b"REFER"));
}

#[test]
fn sdp_versions_rise_per_leg_and_relay_ports_stay() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    let first = w.last_to_b(0, "INVITE");
    let o1 = sipveil_sip::sdp::SessionDescription::parse(first.body().clone()).expect("sdp");
    let (sid, v1) = {
        let o = o1.origin().expect("o=");
        (o.session_id.to_vec(), o.session_version.to_vec())
    };
    let port1 = o1.media().next().expect("m=").port();
    // Same offer again (a session refresh): same version.
    w.caller_sends(caller_in_dialog(
        "INVITE",
        &tag,
        31338,
        Some(caller_sdp(1, 16000, "")),
    ));
    let re = w.last_to_b(0, "INVITE");
    let o2 = sipveil_sip::sdp::SessionDescription::parse(re.body().clone()).expect("sdp");
    assert_eq!(o2.origin().expect("o").session_id, &sid[..]);
    assert_eq!(o2.origin().expect("o").session_version, &v1[..]);
    w.b_responds(
        0,
        callee_response(1, &re, 200, Some(callee_sdp(1, 1, 20000))),
    );
    w.caller_sends(caller_in_dialog("ACK", &tag, 31338, None));
    // Hold with a new caller port: version + 1, the callee still sends to the same relay port.
    let hold = caller_sdp(2, 16010, "").replace("a=sendrecv", "a=sendonly");
    w.caller_sends(caller_in_dialog("INVITE", &tag, 31339, Some(hold)));
    let re = w.last_to_b(0, "INVITE");
    let o3 = sipveil_sip::sdp::SessionDescription::parse(re.body().clone()).expect("sdp");
    let v3: u64 = std::str::from_utf8(o3.origin().expect("o").session_version)
        .expect("utf8")
        .parse()
        .expect("num");
    let v1: u64 = std::str::from_utf8(&v1)
        .expect("utf8")
        .parse()
        .expect("num");
    assert_eq!(v3, v1 + 1);
    assert_eq!(o3.media().next().expect("m").port(), port1);
    assert!(re.body().windows(10).any(|x| x == b"a=sendonly"));
    // The anchor saw the new peer port for the same stream.
    let last = &w.anchor.allocations.last().expect("alloc").0;
    assert_eq!(
        last.peer,
        Some(format!("{A_LAN}:16010").parse().expect("addr"))
    );
}

#[test]
fn late_offer_answer_in_ack() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(
        caller_invite_with(None, "", None),
        alice(),
        vec![target(1, "b1")],
    );
    assert!(call.is_some());
    let inv = w.last_to_b(0, "INVITE");
    assert!(inv.body().is_empty());
    w.b_responds(
        0,
        callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000))),
    );
    let ok = w.last_response_a();
    assert!(ok.body().windows(14).any(|x| x == b"c=IN IP4 198.1"));
    let tag = String::from_utf8(ok.to_tag().expect("tag").to_vec()).expect("utf8");
    w.caller_sends(caller_in_dialog(
        "ACK",
        &tag,
        31337,
        Some(caller_sdp(1, 16000, "")),
    ));
    let (_, ack) = w.acks_b.last().expect("ack");
    let sdp = String::from_utf8(ack.body().to_vec()).expect("utf8");
    assert!(sdp.contains("c=IN IP4 198.18.2.1"), "{sdp}");
    assert!(!sdp.contains(A_LAN));
}

#[test]
fn far_leg_failures_map_and_select() {
    // A redirect becomes 480 (no Contact crosses); the reason phrase is the standard one.
    let mut w = World::new(PrivacyPolicy::default());
    w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let inv = w.last_to_b(0, "INVITE");
    w.b_responds(0, callee_response(1, &inv, 302, None));
    let r = w.last_response_a();
    assert_eq!(r.status().as_u16(), 480);
    assert!(r.headers().get(&HeaderName::Contact).is_none());
    assert_eq!(r.reason().as_ref(), b"Temporarily Unavailable");

    // Two forks fail: the caller gets one final response after both.
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(
        caller_invite(None),
        alice(),
        vec![target(1, "b1"), target(2, "b2")],
    );
    let (inv1, inv2) = (w.last_to_b(0, "INVITE"), w.last_to_b(1, "INVITE"));
    w.b_responds(0, callee_response(1, &inv1, 503, None));
    assert!(w.responses_a.is_empty());
    w.b_responds(1, callee_response(2, &inv2, 486, None));
    let r = w.last_response_a();
    assert_eq!(r.status().as_u16(), 486, "4xx preferred over 5xx");
    assert_eq!(r.reason().as_ref(), b"Busy Here");
    assert!(!w.map.contains(call.expect("call")));

    // A 6xx ends the search at once and cancels the others.
    let mut w = World::new(PrivacyPolicy::default());
    w.start(
        caller_invite(None),
        alice(),
        vec![target(1, "b1"), target(2, "b2")],
    );
    let (inv1, inv2) = (w.last_to_b(0, "INVITE"), w.last_to_b(1, "INVITE"));
    w.b_responds(0, callee_response(1, &inv1, 180, None));
    w.b_responds(1, callee_response(2, &inv2, 603, None));
    assert_eq!(w.last_response_a().status().as_u16(), 603);
    assert!(
        w.sent_b
            .iter()
            .any(|(f, r)| *f == 0 && *r.method() == Method::Cancel)
    );

    // A timed-out fork (the driver synthesises 408) is a failure like any other.
    let mut w = World::new(PrivacyPolicy::default());
    w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let inv = w.last_to_b(0, "INVITE");
    let timeout = inv
        .response(StatusCode::new(408).expect("408"))
        .build()
        .expect("408");
    w.b_responds(0, timeout);
    assert_eq!(w.last_response_a().status().as_u16(), 408);
}

#[test]
fn trying_is_hop_by_hop() {
    let mut w = World::new(PrivacyPolicy::default());
    w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let inv = w.last_to_b(0, "INVITE");
    let trying = inv.response(StatusCode::TRYING).build().expect("100");
    w.b_responds(0, trying);
    assert!(w.responses_a.is_empty());
}

#[test]
fn end_call_byes_both_legs() {
    let mut w = World::new(PrivacyPolicy::default());
    establish(&mut w);
    let call = sipveil_b2bua::CallRef(1);
    let actions = w.map.end_call(&mut w.ids, &mut w.anchor, call);
    let byes = actions
        .iter()
        .filter(|a| matches!(a, sipveil_b2bua::Action::Send { request, .. } if *request.method() == Method::Bye))
        .count();
    assert_eq!(byes, 2);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, sipveil_b2bua::Action::CallEnded { .. }))
    );
    for a in actions {
        if let sipveil_b2bua::Action::Send { request, leg, .. } = a {
            let resp = request.response(StatusCode::OK).build().expect("200");
            match leg {
                sipveil_b2bua::LegRef::A => w.a_responds(resp),
                sipveil_b2bua::LegRef::B(f) => w.b_responds(f, resp),
            }
        }
    }
    assert!(!w.map.contains(call));
}

#[test]
fn early_bye_from_the_caller_cancels() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, invite_tx) = w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let inv = w.last_to_b(0, "INVITE");
    w.b_responds(0, callee_response(1, &inv, 180, None));
    let tag = String::from_utf8(w.last_response_a().to_tag().expect("tag").to_vec()).expect("utf8");
    w.caller_sends(caller_in_dialog("BYE", &tag, 31338, None));
    assert!(
        w.responses_a
            .iter()
            .any(|(t, r)| *t == invite_tx && r.status().as_u16() == 487)
    );
    let cancel = w.last_to_b(0, "CANCEL");
    assert!(cancel.headers().get(&HeaderName::Reason).is_none());
    w.b_responds(0, callee_response(1, &cancel, 200, None));
    w.b_responds(0, callee_response(1, &inv, 487, None));
    assert!(!w.map.contains(call.expect("call")));
}

#[test]
fn bodies_other_than_sdp_pass_only_by_allowlist() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    let mut info = caller_in_dialog("INFO", &tag, 31338, None);
    info.set_body(
        Some(b"application/vnd.alice+xml"),
        Bytes::from_static(b"<alice host='192.168.77.10'/>"),
    )
    .expect("body");
    w.caller_sends(info);
    let to_b = w.last_to_b(0, "INFO");
    assert!(to_b.body().is_empty());
    assert!(to_b.headers().get(&HeaderName::ContentType).is_none());
}

#[test]
fn downstream_forking_two_early_dialogs_in_one_fork() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let call = call.expect("call");
    let inv = w.last_to_b(0, "INVITE");
    // A forking proxy behind the target: two devices answer with different tags.
    w.b_responds(0, callee_response(1, &inv, 180, None));
    w.b_responds(0, callee_response(2, &inv, 180, None));
    // The caller sees one early dialog: the same edge tag on both.
    let tags: Vec<_> = w.responses_a.iter().map(|(_, r)| r.to_tag()).collect();
    assert_eq!(tags.len(), 2);
    assert_eq!(tags[0], tags[1]);
    w.b_responds(
        0,
        callee_response(2, &inv, 200, Some(callee_sdp(2, 1, 22000))),
    );
    w.b_responds(
        0,
        callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000))),
    );
    assert_eq!(
        w.responses_a
            .iter()
            .filter(|(_, r)| r.status().as_u16() == 200)
            .count(),
        1
    );
    // The second answer (tag of device 1) is ACKed and ended.
    let bye = w.last_to_b(0, "BYE");
    assert_eq!(bye.to_tag().as_deref(), Some(b_tag(1).as_bytes()));
    let (_, ack) = w.acks_b.last().expect("ack");
    assert_eq!(ack.to_tag().as_deref(), Some(b_tag(1).as_bytes()));
    w.b_responds(0, callee_response(1, &bye, 200, None));
    // The caller's ACK goes to the winner (device 2).
    let tag = String::from_utf8(w.last_response_a().to_tag().expect("tag").to_vec()).expect("utf8");
    w.caller_sends(caller_in_dialog("ACK", &tag, 31337, None));
    let (_, ack) = w.acks_b.last().expect("ack");
    assert_eq!(ack.to_tag().as_deref(), Some(b_tag(2).as_bytes()));
    assert!(w.map.is_confirmed(call));
    // A retransmitted 2xx of the winner is ACKed again, not shown to the caller.
    let before = w.responses_a.len();
    w.b_responds(
        0,
        callee_response(2, &inv, 200, Some(callee_sdp(2, 1, 22000))),
    );
    assert_eq!(w.responses_a.len(), before);
    assert_eq!(
        w.acks_b.last().expect("ack").1.to_tag().as_deref(),
        Some(b_tag(2).as_bytes())
    );
}

#[test]
fn early_update_goes_to_the_latest_early_dialog() {
    let mut w = World::new(PrivacyPolicy::default());
    w.start(
        caller_invite(None),
        alice(),
        vec![target(1, "b1"), target(2, "b2")],
    );
    let (inv1, inv2) = (w.last_to_b(0, "INVITE"), w.last_to_b(1, "INVITE"));
    w.b_responds(0, callee_response(1, &inv1, 180, None));
    w.b_responds(
        1,
        callee_response(2, &inv2, 183, Some(callee_sdp(2, 1, 22000))),
    );
    let tag = String::from_utf8(w.last_response_a().to_tag().expect("tag").to_vec()).expect("utf8");
    w.caller_sends(caller_in_dialog(
        "UPDATE",
        &tag,
        31338,
        Some(caller_sdp(2, 16000, "")),
    ));
    let up = w.last_to_b(1, "UPDATE");
    assert_eq!(up.to_tag().as_deref(), Some(b_tag(2).as_bytes()));
    assert_eq!(up.call_id().expect("cid"), inv2.call_id().expect("cid"));
}

#[test]
fn callers_sdp_version_rises_across_forks() {
    let mut w = World::new(PrivacyPolicy::default());
    w.start(
        caller_invite(None),
        alice(),
        vec![target(1, "b1"), target(2, "b2")],
    );
    let (inv1, inv2) = (w.last_to_b(0, "INVITE"), w.last_to_b(1, "INVITE"));
    w.b_responds(
        0,
        callee_response(1, &inv1, 183, Some(callee_sdp(1, 1, 20000))),
    );
    w.b_responds(
        1,
        callee_response(2, &inv2, 200, Some(callee_sdp(2, 1, 22000))),
    );
    let origins: Vec<(Vec<u8>, u64)> = w
        .responses_a
        .iter()
        .map(|(_, r)| {
            let sdp = sipveil_sip::sdp::SessionDescription::parse(r.body().clone()).expect("sdp");
            let o = sdp.origin().expect("o=");
            let v = std::str::from_utf8(o.session_version)
                .expect("utf8")
                .parse()
                .expect("num");
            (o.session_id.to_vec(), v)
        })
        .collect();
    assert_eq!(origins.len(), 2);
    assert_eq!(
        origins[0].0, origins[1].0,
        "one session id on the caller's leg"
    );
    assert_eq!(origins[1].1, origins[0].1 + 1);
}

#[test]
fn unanchorable_late_answer_ends_the_call() {
    let mut w = World::new(PrivacyPolicy::default());
    w.start(
        caller_invite_with(None, "", None),
        alice(),
        vec![target(1, "b1")],
    );
    let inv = w.last_to_b(0, "INVITE");
    w.b_responds(
        0,
        callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000))),
    );
    let tag = String::from_utf8(w.last_response_a().to_tag().expect("tag").to_vec()).expect("utf8");
    let no_c = "v=0\r\no=x 1 1 IN IP4 192.168.77.10\r\ns=x\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
    w.caller_sends(caller_in_dialog("ACK", &tag, 31337, Some(no_c.to_owned())));
    let (_, ack) = w.acks_b.last().expect("ack");
    assert!(ack.body().is_empty());
    assert!(w.sent_a.iter().any(|r| *r.method() == Method::Bye));
    assert!(w.sent_b.iter().any(|(_, r)| *r.method() == Method::Bye));
    assert_eq!(w.ended.len(), 1);
}

#[test]
fn unanchorable_reinvite_answer_fails_and_ends() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    w.caller_sends(caller_in_dialog(
        "INVITE",
        &tag,
        31338,
        Some(caller_sdp(2, 16000, "")),
    ));
    let re = w.last_to_b(0, "INVITE");
    let no_c = "v=0\r\no=x 1 2 IN IP4 10.20.30.41\r\ns=x\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
    w.b_responds(0, callee_response(1, &re, 200, Some(no_c.to_owned())));
    assert_eq!(w.last_response_a().status().as_u16(), 500);
    let (_, ack) = w.acks_b.last().expect("ack");
    assert_eq!(ack.cseq().expect("cseq").seq, re.cseq().expect("cseq").seq);
    assert!(w.sent_a.iter().any(|r| *r.method() == Method::Bye));
    assert_eq!(
        w.sent_b
            .iter()
            .filter(|(_, r)| *r.method() == Method::Bye)
            .count(),
        1
    );
}

#[test]
fn offers_that_cannot_be_anchored_are_refused() {
    // Bad SDP: 488.
    let mut w = World::new(PrivacyPolicy::default());
    let no_c = "v=0\r\no=x 1 1 IN IP4 192.168.77.10\r\ns=x\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
    let (call, _) = w.start(
        caller_invite_with(None, "", Some(no_c.to_owned())),
        alice(),
        vec![target(1, "b1")],
    );
    assert!(call.is_none());
    assert_eq!(w.last_response_a().status().as_u16(), 488);
    assert!(w.sent_b.is_empty());

    // The relay is out of ports: 500, and nothing stays allocated.
    struct Full;
    impl sipveil_b2bua::MediaAnchor for Full {
        fn allocate(
            &mut self,
            _: &sipveil_b2bua::MediaRequest,
        ) -> Result<std::net::SocketAddr, sipveil_b2bua::MediaError> {
            Err(sipveil_b2bua::MediaError::Exhausted)
        }
        fn release(&mut self, _: sipveil_b2bua::CallRef, _: Option<u16>) {}
    }
    let mut map: sipveil_b2bua::DialogMap<&str, u32> =
        sipveil_b2bua::DialogMap::new(PrivacyPolicy::default());
    let mut ids = sipveil_b2bua::SeededIds::new(1);
    let setup = sipveil_b2bua::CallSetup {
        identity: alice(),
        callee: Uri::parse_str(B_AOR).expect("uri"),
        targets: vec![target(1, "b1")],
        a_flow: "a",
        edge_a: edge_a(),
        edge_b: edge_b(),
    };
    let (call, actions) = map.start_call(&mut ids, &mut Full, 7, caller_invite(None), setup);
    assert!(call.is_none());
    assert!(
        matches!(&actions[..], [sipveil_b2bua::Action::Respond { tx: 7, response }] if response.status().as_u16() == 500)
    );
    assert_eq!(map.stats().calls, 0);
}

#[test]
fn trust_domain_next_hop_and_server_value() {
    // The next hop named in the policy's trust domains receives the PAI.
    let policy = PrivacyPolicy {
        trust_domains: vec!["peer.lab".to_owned()],
        server: None,
        ..PrivacyPolicy::default()
    };
    let mut w = World::new(policy);
    let mut t = target(1, "b1");
    t.route = vec![Uri::parse_str("sip:peer.lab;lr").expect("uri")];
    w.start(caller_invite(None), alice(), vec![t]);
    let inv = w.last_to_b(0, "INVITE");
    assert_eq!(
        header(&inv, HeaderName::PAssertedIdentity).as_deref(),
        Some("<sip:alice@auth.lab>")
    );
    assert_eq!(
        header(&inv, HeaderName::Route).as_deref(),
        Some("<sip:peer.lab;lr>")
    );
    // `server: None`: neither User-Agent nor Server is written.
    assert!(inv.headers().get(&HeaderName::UserAgent).is_none());
    w.b_responds(
        0,
        callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000))),
    );
    let ok = w.last_response_a();
    assert!(ok.headers().get(&HeaderName::Server).is_none());
    assert!(ok.headers().get(&HeaderName::UserAgent).is_none());
}

#[test]
fn trying_lets_a_pending_cancel_go() {
    let mut w = World::new(PrivacyPolicy::default());
    let (call, _) = w.start(caller_invite(None), alice(), vec![target(1, "b1")]);
    let inv = w.last_to_b(0, "INVITE");
    let cancel = caller_invite(None).cancel().expect("cancel");
    w.caller_sends(cancel);
    // Nothing heard from the callee yet: the CANCEL waits (§9.1).
    assert!(w.sent_b.iter().all(|(_, r)| *r.method() != Method::Cancel));
    w.b_responds(0, inv.response(StatusCode::TRYING).build().expect("100"));
    let c = w.last_to_b(0, "CANCEL");
    assert_eq!(c.cseq().expect("cseq").seq, inv.cseq().expect("cseq").seq);
    assert_eq!(
        c.top_via().expect("via").branch(),
        inv.top_via().expect("via").branch()
    );
    w.b_responds(0, callee_response(1, &c, 200, None));
    w.b_responds(0, callee_response(1, &inv, 487, None));
    assert!(!w.map.contains(call.expect("call")));
}

#[test]
fn target_refresh_only_when_accepted() {
    let mut w = World::new(PrivacyPolicy::default());
    let tag = establish(&mut w);
    let moved = |cseq: u32, host: &str| {
        let r = caller_in_dialog("INVITE", &tag, cseq, Some(caller_sdp(2, 16000, "")));
        let text = String::from_utf8(r.to_bytes().to_vec())
            .expect("utf8")
            .replace(
                &format!("<sip:{A_CONTACT_USER}@{A_LAN}:5060>"),
                &format!("<sip:{A_CONTACT_USER}@{host}:5060>"),
            );
        req(&text)
    };
    // A refused re-INVITE does not move the caller's target...
    w.caller_sends(moved(31338, "192.168.77.11"));
    let re = w.last_to_b(0, "INVITE");
    w.b_responds(0, callee_response(1, &re, 488, None));
    let first = w.sent_b[0].1.clone();
    let from = header(&first, HeaderName::From).expect("from");
    let cid = String::from_utf8(first.call_id().expect("cid").to_vec()).expect("utf8");
    w.callee_sends(0, callee_in_dialog(1, "OPTIONS", &from, &cid, 600));
    assert!(
        w.last_to_a("OPTIONS")
            .uri()
            .as_bytes()
            .windows(13)
            .any(|x| x == b"192.168.77.10")
    );
    // ...an accepted one does.
    w.caller_sends(moved(31339, "192.168.77.12"));
    let re = w.last_to_b(0, "INVITE");
    w.b_responds(
        0,
        callee_response(1, &re, 200, Some(callee_sdp(1, 2, 20000))),
    );
    w.callee_sends(0, callee_in_dialog(1, "OPTIONS", &from, &cid, 601));
    assert!(
        w.last_to_a("OPTIONS")
            .uri()
            .as_bytes()
            .windows(13)
            .any(|x| x == b"192.168.77.12")
    );
}
