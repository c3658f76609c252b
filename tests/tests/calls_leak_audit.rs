//! The leak audit of issue 5 (item 7): calls through the real daemon in the lab, media relayed
//! in XDP, and everything each party actually received, captured with `dumpcap` on its own
//! interface, searched for the other party's identifiers.
//!
//! The caller runs in sv-a (198.18.1.2), the callee in sv-b (198.18.2.2); the edge is the
//! daemon in sv-edge (`xdp = "auto"`, SIP on 198.18.1.1:5060). Each party is this crate's own
//! small UA (`sip_support::ua`), so every header is under the test's control, and gives itself
//! distinctive identifiers: its lab address, a private LAN address and a public-looking
//! server-reflexive address (SDP origin, ICE host/srflx candidates, an `X-` header, `Warning`,
//! `Subject`), a host name (Call-ID and Via), a User-Agent / Server, a display name, a contact
//! user part, an SDP origin username and session name, and an RTCP CNAME (SR + SDES sent on
//! the RTCP port next to its RTP port).
//!
//! Calls over UDP: an anonymous caller → an open-domain user (ringing, answer, media and RTCP
//! both ways, a re-INVITE, BYE from the callee); a CANCEL; forking to two contacts of the
//! callee (one answers, the other is cancelled); an authenticated caller (407, digest) → user.
//! Then the audit: every frame addressed to a party (the capture holds both directions; the
//! frames are split by IPv4 destination) must show none of the other party's identifiers and
//! no private address but its own, SIP and RTP/RTCP payloads alike. The negative control runs
//! the same check over each party's own egress from the same capture and requires that every
//! one of its identifiers is found there: the identifiers were on the wire and the search finds
//! them. The daemon's leak detector (`sipveil_privacy_leaks_total`) must stay 0.
//!
//! TLS: `calls_leak_audit_tls.rs` (the TLS party's decrypted reads stand for what it received). Not covered: TCP.
//!
//! Needs root (namespaces, XDP) and dumpcap: fails with a clear message otherwise.

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use sip_support::call::{
    ALICE, BOB, Call, Dialog, NICK, Party, establish, media, metric, xdp_relayed,
};
use sip_support::capture::{Capture, Frame};
use sip_support::client::{parse_response, token};
use sip_support::digest::{authorization, challenges};
use sip_support::{AUTH_USERS, Edge, EdgeOptions, on_path};
use sipveil_b2bua::{FindingKind, Identifier, audit};
use sipveil_loadtest::lab::{A_ADDR, B_ADDR, NS_A, NS_B};
use std::net::{IpAddr, Ipv4Addr};

/// The findings of the audit of `frames` (what `to` received) against `identifiers`, as
/// readable lines; `own` are the receiver's own addresses (not a leak when they appear).
fn audit_frames(
    frames: &[Frame],
    to: Ipv4Addr,
    identifiers: &[Identifier],
    own: &[IpAddr],
) -> (usize, Vec<String>) {
    let mut received = 0;
    let mut out = Vec::new();
    for frame in frames.iter().filter(|frame| frame.dst == to) {
        received += 1;
        for finding in audit(&frame.bytes, identifiers, own) {
            let what = match &finding.kind {
                FindingKind::Identifier(label) => label.clone(),
                FindingKind::PrivateAddress(ip) => format!("private address {ip}"),
            };
            let start = finding.offset.saturating_sub(60);
            let end = (finding.offset + 60).min(frame.bytes.len());
            out.push(format!(
                "{what} in a frame {} -> {}: ...{}...",
                frame.src,
                frame.dst,
                String::from_utf8_lossy(&frame.bytes[start..end])
            ));
        }
    }
    (received, out)
}

/// The labels of `identifiers` not found in the frames `from` sent.
fn missing_in_egress(frames: &[Frame], from: Ipv4Addr, identifiers: &[Identifier]) -> Vec<String> {
    let egress: Vec<&Frame> = frames.iter().filter(|frame| frame.src == from).collect();
    identifiers
        .iter()
        .filter(|identifier| {
            !egress.iter().any(|frame| {
                audit(&frame.bytes, std::slice::from_ref(identifier), &[])
                    .iter()
                    .any(|finding| matches!(finding.kind, FindingKind::Identifier(_)))
            })
        })
        .map(|identifier| identifier.label.clone())
        .collect()
}

#[test]
fn leak_audit_udp_calls_anonymous_authenticated_fork_reinvite_cancel() {
    let Some(_) = on_path("dumpcap") else {
        panic!(
            "dumpcap is not installed: the leak audit captures what each party receives with it \
             (Debian package wireshark-common, pulled in by tshark)"
        );
    };
    let edge = Edge::start_xdp("calls_leak_audit", &EdgeOptions::default());
    let mut alice = Party::new(&ALICE, NS_A, 5070, 40_000);
    let mut bob = Party::new(&BOB, NS_B, 5070, 40_100);
    let mut bob2 = Party::new(&BOB, NS_B, 5072, 40_200);
    let cap_a = Capture::start(NS_A, "a0", &edge.dir.join("caller.pcap"))
        .unwrap_or_else(|error| panic!("{error}"));
    let cap_b = Capture::start(NS_B, "b0", &edge.dir.join("callee.pcap"))
        .unwrap_or_else(|error| panic!("{error}"));
    let xdp_before = xdp_relayed();
    let mut failures = Vec::new();

    let registration = token("reg");
    bob.register(NICK, "open.lab", &registration, 1);
    let to = format!("{NICK}@open.lab");

    // 1. Anonymous caller → open-domain user: media and RTCP, re-INVITE, BYE from the callee.
    let call = Call::new("anon");
    let from = format!("{}@{}", ALICE.from_user, ALICE.host);
    let invite = alice.invite(&to, &from, &call, "");
    let (a_dialog, b_dialog, edge_a, edge_b) = establish(&mut alice, &mut bob, &invite, 1, "bt1");
    let counts = media(&alice, edge_a, &bob, edge_b);
    println!("anonymous call media: {counts:?}");
    if counts.rtp_a_to_b == 0 || counts.rtp_b_to_a == 0 {
        failures.push(format!(
            "anonymous call: RTP did not cross both ways: {counts:?}"
        ));
    }
    if counts.rtcp_a_to_b == 0 || counts.rtcp_b_to_a == 0 {
        failures.push(format!(
            "anonymous call: RTCP did not cross both ways: {counts:?}"
        ));
    }
    // Re-INVITE from the caller (new SDP version).
    let offer = ALICE.sdp(alice.rtp_port(), 2);
    alice
        .ua
        .send(&alice.in_dialog(&a_dialog, "INVITE", 2, Some(&offer)));
    let re = bob.ua.expect_request("INVITE");
    let answer = BOB.sdp(bob.rtp_port(), 2);
    bob.ua
        .answer(&re, 200, "bt1", &bob.answer_headers(), Some(&answer));
    let re_ok = alice.ua.expect_status("INVITE", 200);
    alice.ua.send(&alice.in_dialog(&a_dialog, "ACK", 2, None));
    bob.ua.expect_request("ACK");
    let edge_a2 = re_ok.media_addr().unwrap_or(edge_a);
    let edge_b2 = re.media_addr().unwrap_or(edge_b);
    let counts = media(&alice, edge_a2, &bob, edge_b2);
    println!("after the re-INVITE: {counts:?}");
    if counts.rtp_a_to_b == 0 || counts.rtp_b_to_a == 0 {
        failures.push(format!(
            "after the re-INVITE: RTP did not cross both ways: {counts:?}"
        ));
    }
    // BYE from the callee.
    bob.ua.send(&bob.in_dialog(&b_dialog, "BYE", 7, None));
    let bye = alice.ua.expect_request("BYE");
    alice.ua.answer(&bye, 200, "x", &alice.id.headers(), None);
    bob.ua.expect_status("BYE", 200);

    // 2. CANCEL before the answer.
    let call = Call::new("cancel");
    let invite = alice.invite(&to, &from, &call, "");
    alice.ua.send(&invite);
    let far = bob.ua.expect_request("INVITE");
    bob.ua.answer(&far, 180, "bt2", &bob.answer_headers(), None);
    alice.ua.expect_status("INVITE", 180);
    alice.ua.send(&format!(
        "CANCEL sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <sip:{from}>;tag={tag}\r\n\
         To: <sip:{to}>\r\nCall-ID: {cid}@{host}\r\nCSeq: 1 CANCEL\r\nUser-Agent: {agent}\r\n\
         {headers}Content-Length: 0\r\n\r\n",
        via = alice.via(&call.branch),
        display = ALICE.display,
        tag = call.tag,
        cid = call.id,
        host = ALICE.host,
        agent = ALICE.agent,
        headers = ALICE.headers(),
    ));
    alice.ua.expect_status("CANCEL", 200);
    let cancel = bob.ua.expect_request("CANCEL");
    bob.ua
        .answer(&cancel, 200, "bt2", &bob.answer_headers(), None);
    bob.ua.answer(&far, 487, "bt2", &bob.answer_headers(), None);
    let terminated = alice.ua.expect_status("INVITE", 487);
    alice.ua.send(&format!(
        "ACK sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <sip:{from}>;tag={tag}\r\n\
         To: {to_h}\r\nCall-ID: {cid}@{host}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        via = alice.via(&call.branch),
        display = ALICE.display,
        tag = call.tag,
        to_h = terminated.header("To").unwrap_or_default(),
        cid = call.id,
        host = ALICE.host,
    ));

    // 3. Forking: a second contact of the callee; the first answers, the second is cancelled.
    bob2.register(NICK, "open.lab", &registration, 2);
    let call = Call::new("fork");
    let invite = alice.invite(&to, &from, &call, "");
    alice.ua.send(&invite);
    let far1 = bob.ua.expect_request("INVITE");
    let far2 = bob2.ua.expect_request("INVITE");
    bob2.ua
        .answer(&far2, 180, "bt3b", &bob2.answer_headers(), None);
    bob.ua
        .answer(&far1, 180, "bt3a", &bob.answer_headers(), None);
    let answer = BOB.sdp(bob.rtp_port(), 1);
    bob.ua
        .answer(&far1, 200, "bt3a", &bob.answer_headers(), Some(&answer));
    let ok = alice.ua.expect_status("INVITE", 200);
    let a_dialog = Dialog::caller(&ok);
    alice.ua.send(&alice.in_dialog(&a_dialog, "ACK", 1, None));
    bob.ua.expect_request("ACK");
    let cancel2 = bob2.ua.expect_request("CANCEL");
    bob2.ua
        .answer(&cancel2, 200, "bt3b", &bob2.answer_headers(), None);
    bob2.ua
        .answer(&far2, 487, "bt3b", &bob2.answer_headers(), None);
    if let (Some(edge_a), Some(edge_b)) = (ok.media_addr(), far1.media_addr()) {
        let counts = media(&alice, edge_a, &bob, edge_b);
        println!("forked call media: {counts:?}");
        if counts.rtp_a_to_b == 0 || counts.rtp_b_to_a == 0 {
            failures.push(format!(
                "forked call: RTP did not cross both ways: {counts:?}"
            ));
        }
    }
    alice.ua.send(&alice.in_dialog(&a_dialog, "BYE", 2, None));
    let bye = bob.ua.expect_request("BYE");
    bob.ua
        .answer(&bye, 200, "bt3a", &bob.answer_headers(), None);
    alice.ua.expect_status("BYE", 200);

    // 4. Authenticated caller (auth.lab, digest after a 407) → the user.
    let (user, password) = AUTH_USERS[0];
    let auth_from = format!("{user}@auth.lab");
    let call = Call::new("auth");
    alice.ua.send(&alice.invite(&to, &auth_from, &call, ""));
    let challenge = alice.ua.expect_status("INVITE", 407);
    alice.ua.send(&format!(
        "ACK sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <sip:{auth_from}>;tag={tag}\r\n\
         To: {to_h}\r\nCall-ID: {cid}@{host}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        via = alice.via(&call.branch),
        display = ALICE.display,
        tag = call.tag,
        to_h = challenge.header("To").unwrap_or_default(),
        cid = call.id,
        host = ALICE.host,
    ));
    let as_401 = challenge
        .raw
        .replace("Proxy-Authenticate:", "WWW-Authenticate:");
    let parsed = parse_response(as_401.as_bytes()).unwrap_or_else(|error| panic!("{error}"));
    let offered = challenges(&parsed).unwrap_or_else(|error| panic!("{error}"));
    let chosen = offered.first().expect("at least one challenge");
    let credentials = authorization(
        chosen,
        user,
        password,
        "INVITE",
        &format!("sip:{to}"),
        1,
        "c0ffee",
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let call2 = Call {
        id: call.id.clone(),
        tag: call.tag.clone(),
        branch: token("b"),
    };
    let invite = alice
        .invite(
            &to,
            &auth_from,
            &call2,
            &format!("Proxy-Authorization: {credentials}\r\n"),
        )
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
    let (a_dialog, _, edge_a, edge_b) = establish(&mut alice, &mut bob, &invite, 2, "bt4");
    let counts = media(&alice, edge_a, &bob, edge_b);
    println!("authenticated call media: {counts:?}");
    alice.ua.send(&alice.in_dialog(&a_dialog, "BYE", 3, None));
    let bye = bob.ua.expect_request("BYE");
    bob.ua.answer(&bye, 200, "bt4", &bob.answer_headers(), None);
    alice.ua.expect_status("BYE", 200);

    // The audit.
    let frames_a = cap_a.finish().unwrap_or_else(|error| panic!("{error}"));
    let frames_b = cap_b.finish().unwrap_or_else(|error| panic!("{error}"));
    let own_a = [IpAddr::V4(ALICE.private)];
    let own_b = [IpAddr::V4(BOB.private)];
    let (to_a, leaks_to_a) = audit_frames(&frames_a, A_ADDR, &BOB.identifiers(), &own_a);
    let (to_b, leaks_to_b) = audit_frames(&frames_b, B_ADDR, &ALICE.identifiers(), &own_b);
    println!(
        "captured: caller received {to_a} frames, callee received {to_b}; findings {} / {}",
        leaks_to_a.len(),
        leaks_to_b.len()
    );
    failures.extend(leaks_to_a.iter().map(|l| format!("caller received {l}")));
    failures.extend(leaks_to_b.iter().map(|l| format!("callee received {l}")));
    // Negative control: the same search over each party's own egress finds all of its
    // identifiers.
    let missing_a = missing_in_egress(&frames_a, A_ADDR, &ALICE.identifiers());
    let missing_b = missing_in_egress(&frames_b, B_ADDR, &BOB.identifiers());
    if !missing_a.is_empty() || !missing_b.is_empty() {
        failures.push(format!(
            "negative control: identifiers not found in the parties' own egress (the audit \
             could not have seen them): caller {missing_a:?}, callee {missing_b:?}"
        ));
    }
    let leaks = metric("sipveil_privacy_leaks_total");
    if leaks != 0.0 {
        failures.push(format!("sipveil_privacy_leaks_total is {leaks}"));
    }
    let xdp = xdp_relayed().saturating_sub(xdp_before);
    println!("XDP relayed {xdp} packets during the calls");
    if xdp == 0 {
        failures.push("XDP relayed no packet of the calls".to_owned());
    }
    edge.assert_alive("the calls");
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n--- daemon log:\n{}",
        failures.len(),
        failures.join("\n"),
        edge.log_tail()
    );
}
