//! Open domains: nickname claims, hijack attempts, domains, nickname syntax.

mod common;

use common::*;
use sipveil_registrar::{Registrar, ReportResult, StoreOp};
use sipveil_sip::HeaderName;

fn reg() -> Registrar {
    Registrar::new(config(), SECRET)
}

#[test]
fn first_registrant_owns_a_nickname_until_it_expires() {
    let mut r = reg();
    let o = r.register(
        T0,
        &Reg::new("neo", "open.lab", "owner-1", 1).build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    assert_eq!(result(&o), ReportResult::Registered);
    assert_eq!(ops(&o).len(), 1);
    assert!(matches!(ops(&o)[0], StoreOp::Put { .. }));
    assert_eq!(
        contacts(&o),
        vec!["<sip:neo@198.18.1.2:5060>;expires=600".to_string()]
    );
    assert_eq!(r.lookup("NEO", "Open.Lab", T0 + 1).len(), 1);

    // Someone else, with another Call-ID: refused while live.
    let other = Reg::new("neo", "open.lab", "intruder", 1).contacts(&["<sip:neo@198.18.9.9:5060>"]);
    let o = r.register(T0 + 1_000, &other.build(), &flow());
    assert_eq!((status(&o), reason(&o).as_str()), (403, "Nickname In Use"));
    assert_eq!(result(&o), ReportResult::NicknameInUse);
    assert!(ops(&o).is_empty());

    // The owner refreshes with the same Call-ID.
    let o = r.register(
        T0 + 300_000,
        &Reg::new("neo", "open.lab", "owner-1", 2).build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    let b = r.lookup("neo", "open.lab", T0 + 300_000);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].expires_at_ms, T0 + 900_000);
    assert_eq!(
        b[0].registered_at_ms, T0,
        "registered_at survives a refresh"
    );

    // After expiry the nickname is free: the next claimant gets it.
    assert_eq!(r.next_expiry(), Some(T0 + 900_000));
    let o = r.register(T0 + 900_000, &other.build(), &flow());
    assert_eq!(
        status(&o),
        200,
        "expired binding no longer owns the nickname"
    );
    // the old binding was deleted in the same commit
    assert!(
        ops(&o)
            .iter()
            .any(|op| matches!(op, StoreOp::Delete { .. }))
    );
    let b = r.lookup("neo", "open.lab", T0 + 900_001);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].contact, "sip:neo@198.18.9.9:5060");
    assert_eq!(b[0].call_id, "intruder");
}

#[test]
fn hijack_attempts_change_nothing() {
    let mut r = reg();
    let claim = Reg::new("trinity", "open.lab", "secret-call-id", 10).contacts(&[
        "<sip:trinity@198.18.1.2:5060;transport=tcp>;+sip.instance=\"<urn:uuid:aaaa>\";reg-id=1",
    ]);
    assert_eq!(status(&r.register(T0, &claim.build(), &tcp_flow(7))), 200);
    let before: Vec<_> = r.bindings().cloned().collect();

    let attempts = [
        // refresh / replace from another Call-ID
        claim.clone().cseq(11),
        Reg {
            call_id: "guess".into(),
            ..claim.clone()
        },
        // remove with Expires: 0 from another Call-ID
        Reg {
            call_id: "guess".into(),
            ..claim.clone().expires("0")
        },
        // `*` from another Call-ID
        Reg::new("trinity", "open.lab", "guess", 99)
            .contacts(&["*"])
            .expires("0"),
        // same Call-ID, another instance
        Reg {
            cseq: 12,
            ..claim.clone()
        }
        .contacts(&["<sip:trinity@198.18.6.6:5060>;+sip.instance=\"<urn:uuid:bbbb>\";reg-id=1"]),
        // same Call-ID, no instance (the claim carried one)
        Reg {
            cseq: 13,
            ..claim.clone()
        }
        .contacts(&["<sip:trinity@198.18.6.6:5060>"]),
        // another Call-ID with the owner's instance
        Reg {
            call_id: "guess2".into(),
            cseq: 1,
            ..claim.clone()
        },
        // fetch from another Call-ID
        Reg::new("trinity", "open.lab", "guess", 5).contacts(&[]),
    ];
    for (i, a) in attempts.iter().enumerate().skip(1) {
        let o = r.register(T0 + 1_000 * i as u64, &a.build(), &flow());
        assert_eq!(
            (status(&o), reason(&o).as_str()),
            (403, "Nickname In Use"),
            "attempt {i}: {}",
            a.text()
        );
        assert!(ops(&o).is_empty(), "attempt {i}");
        let now: Vec<_> = r.bindings().cloned().collect();
        assert_eq!(now, before, "attempt {i} changed the bindings");
    }
    // The owner can still refresh (attempt 0 is the owner's own refresh).
    let o = r.register(T0 + 20_000, &attempts[0].build(), &tcp_flow(7));
    assert_eq!(status(&o), 200);
    assert_eq!(
        response(&o).headers().get_value(&HeaderName::Require),
        None,
        "no Supported: outbound, no Require"
    );
    // and remove everything with `*`
    let o = r.register(
        T0 + 21_000,
        &Reg::new("trinity", "open.lab", "secret-call-id", 12)
            .contacts(&["*"])
            .expires("0")
            .build(),
        &flow(),
    );
    assert_eq!((status(&o), result(&o)), (200, ReportResult::Removed));
    assert_eq!(ops(&o).len(), 1);
    assert!(r.lookup("trinity", "open.lab", T0 + 21_000).is_empty());
    assert!(r.is_empty());
    // now free
    let o = r.register(T0 + 22_000, &attempts[1].build(), &flow());
    assert_eq!(status(&o), 200);
}

#[test]
fn owner_removal_with_expires_zero_frees_the_nickname() {
    let mut r = reg();
    let claim = Reg::new("morpheus", "open.lab", "c1", 1);
    assert_eq!(status(&r.register(T0, &claim.build(), &flow())), 200);
    let o = r.register(T0 + 5, &claim.clone().cseq(2).expires("0").build(), &flow());
    assert_eq!((status(&o), result(&o)), (200, ReportResult::Removed));
    assert!(matches!(ops(&o), [StoreOp::Delete { .. }]));
    assert!(contacts(&o).is_empty());
    let o = r.register(
        T0 + 6,
        &Reg::new("morpheus", "open.lab", "c2", 1).build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
}

#[test]
fn domains_closed_unserved_mismatch_and_case() {
    let mut r = reg();
    let cases: Vec<(Reg, u16, &str, ReportResult)> = vec![
        (
            Reg::new("x", "nowhere.lab", "c", 1),
            403,
            "Domain Not Served",
            ReportResult::DomainNotServed,
        ),
        (
            Reg::new("x", "closed.lab", "c", 1),
            403,
            "Registration Closed",
            ReportResult::Closed,
        ),
        (
            Reg {
                to: "<sip:x@auth.lab>".into(),
                ..Reg::new("x", "open.lab", "c", 1)
            },
            403,
            "To Domain Mismatch",
            ReportResult::Forbidden,
        ),
        (
            Reg::new("anonymous", "open.lab", "c", 1),
            403,
            "Nickname Reserved",
            ReportResult::BadNickname,
        ),
        (
            Reg::new("Anonymous", "open.lab", "c", 1),
            403,
            "Nickname Reserved",
            ReportResult::BadNickname,
        ),
        (
            Reg::new("bad%20name", "open.lab", "c", 1),
            400,
            "Invalid Nickname (1-64 of a-z 0-9 . _ -)",
            ReportResult::BadNickname,
        ),
        (
            Reg::new(&"a".repeat(65), "open.lab", "c", 1),
            400,
            "Invalid Nickname (1-64 of a-z 0-9 . _ -)",
            ReportResult::BadNickname,
        ),
        (
            Reg {
                to: "<sip:open.lab>".into(),
                ..Reg::new("x", "open.lab", "c", 1)
            },
            400,
            "Missing User In To",
            ReportResult::BadNickname,
        ),
    ];
    for (req, code, why, res) in cases {
        let o = r.register(T0, &req.build(), &flow());
        assert_eq!(
            (status(&o), reason(&o).as_str(), result(&o)),
            (code, why, res),
            "{}",
            req.text()
        );
        assert!(ops(&o).is_empty());
    }
    assert!(r.is_empty());
    // Host and user are case-insensitive; the AOR is stored folded.
    let req = Reg {
        ruri_host: "OPEN.lab".into(),
        to: "<sip:Neo.One@Open.LAB>".into(),
        ..Reg::new("x", "open.lab", "c", 1)
    };
    let o = r.register(T0, &req.build(), &flow());
    assert_eq!(status(&o), 200);
    match &o {
        sipveil_registrar::RegisterOutcome::Commit { report, .. } => {
            assert_eq!(report.domain.as_deref(), Some("open.lab"));
            assert_eq!(report.policy, Some(sipveil_registrar::Policy::Open));
        }
        _ => panic!("expected a commit"),
    }
    assert_eq!(
        r.bindings().next().map(|b| b.aor.as_str()),
        Some("neo.one@open.lab")
    );
}

#[test]
fn to_tag_is_deterministic_so_retransmissions_get_identical_answers() {
    let mut r = reg();
    let req = Reg::new("x", "nowhere.lab", "c", 1).build();
    let a = r.register(T0, &req, &flow());
    let b = r.register(T0 + 10, &req, &flow());
    assert_eq!(response(&a).to_bytes(), response(&b).to_bytes());
    assert!(response(&a).to_tag().is_some_and(|t| t.len() == 16));
    let other = Reg::new("x", "nowhere.lab", "c2", 1).build();
    let c = r.register(T0, &other, &flow());
    assert_ne!(response(&a).to_tag(), response(&c).to_tag());
    // and no Date header
    assert!(
        response(&a)
            .headers()
            .get(&HeaderName::Other("Date".into()))
            .is_none()
    );
}

#[test]
fn refuses_anonymous_user_overrides_domain() {
    let r = reg();
    assert!(
        !r.refuses_anonymous("alice", "auth.lab"),
        "user says accept"
    );
    assert!(r.refuses_anonymous("bob", "AUTH.lab"), "domain default");
    assert!(r.refuses_anonymous("nobody", "auth.lab"), "domain default");
    assert!(!r.refuses_anonymous("neo", "open.lab"));
    assert!(!r.refuses_anonymous("neo", "nowhere.lab"));
    assert_eq!(
        r.domain("Open.Lab").map(|d| d.name.as_str()),
        Some("open.lab")
    );
    assert!(r.domain("nowhere.lab").is_none());
}

/// `set_server`: the registrar writes the `Server` header into its answers (200 and refusals
/// alike), so the edge sends them as built; a value that would inject headers is refused.
#[test]
fn server_header_is_written_into_every_answer() {
    let mut r = reg();
    let o = r.register(T0, &Reg::new("neo", "open.lab", "c-1", 1).build(), &flow());
    assert!(header_values(response(&o), HeaderName::Server).is_empty());

    r.set_server(Some("sipveil-test"))
        .expect("a plain value is accepted");
    let o = r.register(T0, &Reg::new("trin", "open.lab", "c-2", 1).build(), &flow());
    assert_eq!(status(&o), 200);
    assert_eq!(
        header_values(response(&o), HeaderName::Server),
        vec!["sipveil-test".to_string()]
    );
    let refused = r.register(T0, &Reg::new("trin", "open.lab", "c-3", 1).build(), &flow());
    assert_eq!(status(&refused), 403);
    assert_eq!(
        header_values(response(&refused), HeaderName::Server),
        vec!["sipveil-test".to_string()]
    );
    // The wire form is the built text: one Server line, before Content-Length.
    let wire = String::from_utf8(response(&o).to_bytes().to_vec()).expect("ASCII answer");
    assert_eq!(wire.matches("Server: ").count(), 1);
    assert!(wire.ends_with("Server: sipveil-test\r\nContent-Length: 0\r\n\r\n"));

    assert!(r.set_server(Some("x\r\nEvil: 1")).is_err());
    let o = r.register(
        T0,
        &Reg::new("morpheus", "open.lab", "c-4", 1).build(),
        &flow(),
    );
    assert_eq!(
        header_values(response(&o), HeaderName::Server),
        vec!["sipveil-test".to_string()],
        "a refused value leaves the previous one in force"
    );
    r.set_server(None).expect("clearing is always accepted");
    let o = r.register(T0, &Reg::new("tank", "open.lab", "c-5", 1).build(), &flow());
    assert!(header_values(response(&o), HeaderName::Server).is_empty());
}
