//! Call refusals and a daemon crash mid-call, through the real daemon in the lab (issue 5
//! item 6): the caller in sv-a, the callee in sv-b, the daemon in sv-edge with XDP.
//!
//! - 404 (unknown nickname on the open domain), 480 (a listed user of auth.lab without a
//!   binding), 433 (the callee's domain refuses anonymous callers): final answers to the
//!   caller, and the callee never sees a refused INVITE.
//! - An answered call whose daemon is killed with SIGKILL and restarted: the media keeps
//!   flowing both ways (the XDP flows outlive the process and are adopted), and an in-dialog
//!   request from either party then gets 481 (the dialog state was in the dead process).
//!
//! CANCEL, forking, re-INVITE and BYE either side are in `calls_leak_audit.rs`.
//!
//! Needs root (namespaces, XDP): fails with a clear message otherwise.

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use sip_support::call::{ALICE, BOB, Call, NICK, Party, establish, media, metric, xdp_relayed};
use sip_support::client::token;
use sip_support::ua::Msg;
use sip_support::{Edge, EdgeOptions};
use sipveil_loadtest::lab::{NS_A, NS_B};
use std::time::Duration;

/// A domain whose users refuse anonymous callers.
const PRIVATE_DOMAIN: &str = "\n[[domain]]\nname = \"private.lab\"\npolicy = \"open\"\n\
                              refuse_anonymous = true\n";

/// The caller's final answer to the INVITE it sent (provisionals skipped).
fn final_answer(alice: &mut Party) -> Msg {
    alice.ua.expect("a final answer to the INVITE", |m| {
        m.method() == "INVITE" && m.status().is_some_and(|code| code >= 200)
    })
}

/// The ACK for a non-2xx final answer (same branch as the INVITE).
fn ack_failure(alice: &Party, call: &Call, to: &str, from: &str, answer: &Msg) {
    alice.ua.send(&format!(
        "ACK sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}>;tag={tag}\r\nTo: {to_h}\r\n\
         Call-ID: {cid}@{host}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        host = ALICE.host,
        port = alice.sip_addr().port(),
        branch = call.branch,
        tag = call.tag,
        to_h = answer.header("To").unwrap_or_default(),
        cid = call.id,
    ));
}

#[test]
fn refusals_404_480_433_reach_the_caller_only() {
    let options = EdgeOptions {
        extra_config: PRIVATE_DOMAIN,
        ..EdgeOptions::default()
    };
    let edge = Edge::start_xdp("calls_refusals", &options);
    let mut alice = Party::new(&ALICE, NS_A, 5070, 40_000);
    let mut bob = Party::new(&BOB, NS_B, 5070, 40_100);
    bob.register("privbob", "private.lab", &token("reg"), 1);
    let from = format!("{}@{}", ALICE.from_user, ALICE.host);
    let cases = [
        (
            "nobody@open.lab",
            404,
            "unknown nickname on the open domain",
        ),
        (
            "bob@auth.lab",
            480,
            "a listed user of auth.lab without a binding",
        ),
        (
            "privbob@private.lab",
            433,
            "the callee's domain refuses anonymous callers",
        ),
    ];
    let mut failures = Vec::new();
    for (to, code, why) in cases {
        let call = Call::new("refused");
        alice.ua.send(&alice.invite(to, &from, &call, ""));
        let answer = final_answer(&mut alice);
        ack_failure(&alice, &call, to, &from, &answer);
        println!("{to}: {}", answer.start());
        if answer.status() != Some(code) {
            failures.push(format!("{to} ({why}): {}, expected {code}", answer.start()));
        }
    }
    // The callee never saw an INVITE.
    if let Some(invite) = bob.ua.try_expect(
        |m| m.method() == "INVITE" && m.status().is_none(),
        Duration::from_millis(500),
    ) {
        failures.push(format!(
            "a refused call reached the callee: {}",
            invite.start()
        ));
    }
    let refused = metric("sipveil_calls_total{result=\"refused\"}");
    println!("sipveil_calls_total{{result=\"refused\"}} = {refused}");
    if refused < cases.len() as f64 {
        failures.push(format!(
            "sipveil_calls_total{{result=\"refused\"}} is {refused}, expected {}",
            cases.len()
        ));
    }
    edge.assert_alive("the refused calls");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn media_survives_kill_9_and_the_dialog_then_gets_481() {
    let mut edge = Edge::start_xdp("calls_restart", &EdgeOptions::default());
    let mut alice = Party::new(&ALICE, NS_A, 5070, 40_000);
    let mut bob = Party::new(&BOB, NS_B, 5070, 40_100);
    bob.register(NICK, "open.lab", &token("reg"), 1);
    let to = format!("{NICK}@open.lab");
    let from = format!("{}@{}", ALICE.from_user, ALICE.host);
    let call = Call::new("crash");
    let invite = alice.invite(&to, &from, &call, "");
    let (a_dialog, b_dialog, edge_a, edge_b) = establish(&mut alice, &mut bob, &invite, 1, "bt");
    let before = media(&alice, edge_a, &bob, edge_b);
    println!("before the crash: {before:?}");
    assert!(
        before.rtp_a_to_b > 0 && before.rtp_b_to_a > 0,
        "RTP did not cross before the crash: {before:?}"
    );

    edge.kill();
    let xdp_while_down = xdp_relayed();
    let down = media(&alice, edge_a, &bob, edge_b);
    println!("while the daemon is dead: {down:?}");
    edge.start_daemon();
    let after = media(&alice, edge_a, &bob, edge_b);
    let xdp_after = xdp_relayed();
    println!(
        "after the restart: {after:?}; XDP relayed {} packets since the crash",
        xdp_after.saturating_sub(xdp_while_down)
    );
    let mut failures = Vec::new();
    if down.rtp_a_to_b == 0 || down.rtp_b_to_a == 0 {
        failures.push(format!("RTP stopped while the daemon was dead: {down:?}"));
    }
    if after.rtp_a_to_b == 0 || after.rtp_b_to_a == 0 {
        failures.push(format!("RTP stopped after the restart: {after:?}"));
    }
    if xdp_after <= xdp_while_down {
        failures.push("XDP relayed nothing after the crash".to_owned());
    }

    // In-dialog requests of the lost dialog: 481 to both parties.
    alice.ua.send(&alice.in_dialog(&a_dialog, "BYE", 2, None));
    let answer = alice.ua.expect("an answer to the caller's BYE", |m| {
        m.method() == "BYE" && m.status().is_some_and(|code| code >= 200)
    });
    if answer.status() != Some(481) {
        failures.push(format!(
            "caller's BYE after the restart: {}",
            answer.start()
        ));
    }
    bob.ua.send(&bob.in_dialog(&b_dialog, "INFO", 9, None));
    let answer = bob.ua.expect("an answer to the callee's INFO", |m| {
        m.method() == "INFO" && m.status().is_some_and(|code| code >= 200)
    });
    if answer.status() != Some(481) {
        failures.push(format!(
            "callee's INFO after the restart: {}",
            answer.start()
        ));
    }
    edge.assert_alive("the restart");
    assert!(
        failures.is_empty(),
        "{}\n--- daemon log:\n{}",
        failures.join("\n"),
        edge.log_tail()
    );
}
