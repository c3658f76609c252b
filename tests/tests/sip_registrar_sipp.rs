//! The daemon's registrar under SIPp, and its durability (issue 4):
//!
//! - SIPp REGISTER scenarios (`loadtest/sipp/test_register_*.xml`) with unique users injected
//!   from CSV: open.lab over UDP, TCP and TLS, auth.lab (SIPp's MD5 digest) over UDP and TCP;
//!   every run ends with 0 failed calls and every registration is visible in
//!   `sipveil registrations --json` (the TLS ones as TLS flows). Debian's SIPp has no TLS: the
//!   TLS run goes through a socat TCP→TLS bridge in sv-a (see `sip_support::sipp`).
//! - Durability: 300 acknowledged bindings survive `kill -9` and a clean restart (SIGTERM) with
//!   the same database, with their expiry times kept (not reset).
//!
//! Needs root (namespaces): fails with a clear message otherwise; without SIPp the SIPp test
//! prints `SKIPPED:`. Run one at a time (`--test-threads=1`).

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use sip_support::client::{Register, Transport, token};
use sip_support::sipp::{SippRun, TlsBridge};
use sip_support::{BindingView, Edge, EdgeOptions, SIPP_AUTH_USERS, on_path, register_ok};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::Path;

#[test]
fn sipp_register_over_udp_tcp_tls_open_and_auth() {
    const CALLS: usize = 100;
    let Some(sipp) = on_path("sipp") else {
        println!(
            "SKIPPED: sipp is not installed (Debian package sip-tester; `cargo xtask setup` \
             installs it)"
        );
        return;
    };
    let Some(socat) = on_path("socat") else {
        panic!(
            "socat is not installed: the SIPp TLS run needs it as a TCP->TLS bridge (Debian's \
             SIPp has no TLS); `cargo xtask setup` installs it"
        );
    };
    let edge = Edge::start("sipp", &EdgeOptions::default());
    let udp_tcp = SocketAddrV4::new(
        sip_support::client::EDGE_ADDR,
        sip_support::client::SIP_PORT,
    );
    let bridge = TlsBridge::start(&socat, &edge.ca_pem, &edge.dir.join("socat.log"))
        .unwrap_or_else(|error| panic!("{error}"));
    let tag = token("s");
    let open_scenario = sip_support::sipp::scenario("test_register_open.xml");
    let auth_scenario = sip_support::sipp::scenario("test_register_auth.xml");

    // (name, scenario, transport, target, users (user, domain, password), expected proto)
    let mut runs: Vec<(
        String,
        &Path,
        &str,
        SocketAddrV4,
        Vec<(String, String, String)>,
        &str,
    )> = Vec::new();
    for (name, transport, target, proto) in [
        ("open-udp", "u1", udp_tcp, "udp"),
        ("open-tcp", "t1", udp_tcp, "tcp"),
        ("open-tls", "t1", bridge.addr(), "tls"),
    ] {
        let users = (0..CALLS)
            .map(|i| {
                (
                    format!("{tag}{name}{i}"),
                    "open.lab".to_owned(),
                    String::new(),
                )
            })
            .collect();
        runs.push((
            name.to_owned(),
            &open_scenario,
            transport,
            target,
            users,
            proto,
        ));
    }
    for (index, (name, transport, proto)) in [("auth-udp", "u1", "udp"), ("auth-tcp", "t1", "tcp")]
        .into_iter()
        .enumerate()
    {
        let first = index * CALLS;
        assert!(first + CALLS <= SIPP_AUTH_USERS, "not enough SIPp users");
        let users = (first..first + CALLS)
            .map(|i| {
                let (user, password) = sip_support::sipp_auth_user(i);
                (user, "auth.lab".to_owned(), password)
            })
            .collect();
        runs.push((
            name.to_owned(),
            &auth_scenario,
            transport,
            udp_tcp,
            users,
            proto,
        ));
    }

    let mut failures = Vec::new();
    for (name, scenario, transport, target, users, proto) in &runs {
        let mut csv = String::from("SEQUENTIAL\n");
        for (user, domain, password) in users {
            csv.push_str(&format!("{user};{domain};{password}\n"));
        }
        let run = SippRun {
            sipp: &sipp,
            scenario: scenario.to_path_buf(),
            csv,
            transport,
            target: *target,
            calls: CALLS as u32,
            rate: 100,
            dir: &edge.dir,
            name,
        };
        let counts = match run.run() {
            Ok(counts) => counts,
            Err(error) => {
                failures.push(error);
                continue;
            }
        };
        println!("SIPp {name}: {counts:?}");
        if counts.failed != 0 || counts.successful != CALLS as u64 {
            failures.push(format!(
                "SIPp {name}: {counts:?}, expected {CALLS} successful and 0 failed"
            ));
            continue;
        }
        let bindings: BTreeMap<String, BindingView> = edge
            .bindings()
            .into_iter()
            .map(|binding| (binding.aor.clone(), binding))
            .collect();
        let mut missing = Vec::new();
        let mut wrong_proto = Vec::new();
        for (user, domain, _) in users {
            let aor = format!("{user}@{domain}");
            match bindings.get(&aor) {
                None => missing.push(aor),
                Some(binding) if binding.proto.as_deref() != Some(*proto) => {
                    wrong_proto.push(format!("{aor}: {:?}", binding.proto));
                }
                Some(_) => {}
            }
        }
        if !missing.is_empty() || !wrong_proto.is_empty() {
            failures.push(format!(
                "SIPp {name}: {} registrations missing from `sipveil registrations` (first: \
                 {:?}); {} with a flow other than {proto} (first: {:?})",
                missing.len(),
                missing.first(),
                wrong_proto.len(),
                wrong_proto.first()
            ));
        }
    }
    edge.assert_alive("the SIPp runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The bindings of `aors` as the daemon lists them, keyed by AOR.
fn snapshot(edge: &Edge, aors: &BTreeMap<String, String>) -> BTreeMap<String, BindingView> {
    let all: BTreeMap<String, BindingView> = edge
        .bindings()
        .into_iter()
        .filter(|binding| aors.contains_key(&binding.aor))
        .map(|binding| (binding.aor.clone(), binding))
        .collect();
    all
}

/// Every acknowledged binding is there with its contact, and its expiry was not reset.
fn assert_kept(
    when: &str,
    acknowledged: &BTreeMap<String, String>,
    before: &BTreeMap<String, BindingView>,
    after: &BTreeMap<String, BindingView>,
) {
    let missing: Vec<&String> = acknowledged
        .keys()
        .filter(|aor| !after.contains_key(*aor))
        .collect();
    assert!(
        missing.is_empty(),
        "{when}: {} of {} acknowledged bindings are gone (first: {:?})",
        missing.len(),
        acknowledged.len(),
        missing.first()
    );
    for (aor, contact) in acknowledged {
        let (old, new) = (&before[aor], &after[aor]);
        assert_eq!(&new.contact, contact, "{when}: {aor}: {:?}", new.raw);
        match (
            old.expires_at_ms,
            new.expires_at_ms,
            old.expires_in,
            new.expires_in,
        ) {
            (Some(old_at), Some(new_at), _, _) => assert_eq!(
                old_at, new_at,
                "{when}: {aor}: the absolute expiry changed: {:?} -> {:?}",
                old.raw, new.raw
            ),
            (_, _, Some(old_in), Some(new_in)) => assert!(
                new_in <= old_in && new_in > 0,
                "{when}: {aor}: the expiry was reset or lost: {old_in} s left before, {new_in} \
                 s after ({:?} -> {:?})",
                old.raw,
                new.raw
            ),
            _ => panic!(
                "{when}: {aor}: `sipveil registrations --json` shows no expiry: {:?}",
                new.raw
            ),
        }
    }
}

#[test]
fn sip_registrations_survive_kill9_and_clean_restart() {
    const BINDINGS: usize = 300;
    let mut edge = Edge::start("durability", &EdgeOptions::default());
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let tag = token("d");
    let register = |edge: &Edge,
                    range: std::ops::Range<usize>,
                    acknowledged: &mut BTreeMap<String, String>| {
        let mut client = edge.client(Transport::Udp);
        for i in range {
            let nick = format!("{tag}n{i}");
            let contact = client.contact_uri(&nick);
            // Distinct lifetimes, so a reset to one value would show.
            let expires = 900 + i as u32 * 7;
            register_ok(
                &mut client,
                &Register::new(&nick, "open.lab")
                    .contact(&contact)
                    .expires(expires),
            );
            acknowledged.insert(format!("{nick}@open.lab"), contact);
        }
    };
    register(&edge, 0..BINDINGS, &mut acknowledged);
    let before = snapshot(&edge, &acknowledged);
    assert_eq!(
        before.len(),
        BINDINGS,
        "registered {BINDINGS}, listed {}",
        before.len()
    );

    edge.kill();
    edge.start_daemon();
    let after_kill = snapshot(&edge, &acknowledged);
    assert_kept("after kill -9", &acknowledged, &before, &after_kill);

    // The restarted daemon registers more; everything survives a clean stop too.
    register(&edge, BINDINGS..BINDINGS + 20, &mut acknowledged);
    let before = snapshot(&edge, &acknowledged);
    assert!(
        edge.terminate(),
        "the daemon did not exit cleanly on SIGTERM"
    );
    edge.start_daemon();
    let after_term = snapshot(&edge, &acknowledged);
    assert_kept("after SIGTERM", &acknowledged, &before, &after_term);
    edge.assert_alive("the restarts");
}
