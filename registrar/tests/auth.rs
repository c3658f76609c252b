//! Authenticated domains: RFC 7616 digest, stale nonces, replays, enumeration.

mod common;

use common::*;
use sipveil_registrar::{AuthFailure, DigestAlgorithm, Registrar, ReportResult};
use sipveil_sip::HeaderName;

fn reg() -> Registrar {
    Registrar::new(config(), SECRET)
}

const URI: &str = "sip:auth.lab";

fn first_challenge(r: &mut Registrar, now: u64, user: &str, call_id: &str) -> (String, String) {
    let o = r.register(
        now,
        &Reg::new(user, "auth.lab", call_id, 1).build(),
        &flow(),
    );
    assert_eq!((status(&o), result(&o)), (401, ReportResult::Challenged));
    let (n, op, stale) = challenge(&o, "SHA-256");
    assert!(!stale);
    (n, op)
}

#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the digest fields one to one"
)]
fn with_auth(
    user: &str,
    call_id: &str,
    cseq: u32,
    password: &str,
    alg: &str,
    nonce: &str,
    opaque: &str,
    nc: u32,
) -> Reg {
    Reg::new(user, "auth.lab", call_id, cseq).header(&authorization(
        user, "auth.lab", password, alg, nonce, opaque, nc, URI,
    ))
}

#[test]
fn challenge_has_sha256_then_md5() {
    let mut r = reg();
    let o = r.register(T0, &Reg::new("alice", "auth.lab", "c1", 1).build(), &flow());
    assert_eq!((status(&o), reason(&o).as_str()), (401, "Unauthorized"));
    let ch = header_values(response(&o), HeaderName::WwwAuthenticate);
    assert_eq!(ch.len(), 2);
    assert!(
        ch[0].starts_with("Digest realm=\"auth.lab\", qop=\"auth\", algorithm=SHA-256, nonce=\""),
        "{}",
        ch[0]
    );
    assert!(ch[1].contains("algorithm=MD5"), "{}", ch[1]);
    let (n1, o1, _) = challenge(&o, "SHA-256");
    let (n2, o2, _) = challenge(&o, "MD5");
    assert_eq!((n1.len(), &n1, &o1), (32, &n2, &o2));
    assert!(ops(&o).is_empty());
    assert!(r.is_empty());
}

#[test]
fn sha256_and_md5_succeed_md5_needs_an_md5_ha1() {
    let mut r = reg();
    let (nonce, opaque) = first_challenge(&mut r, T0, "alice", "c1");
    let o = r.register(
        T0 + 50,
        &with_auth(
            "alice",
            "c1",
            2,
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            1,
        )
        .build(),
        &flow(),
    );
    assert_eq!((status(&o), result(&o)), (200, ReportResult::Registered));
    assert_eq!(ops(&o).len(), 1);
    // refresh on the same nonce with a higher nc
    let o = r.register(
        T0 + 60,
        &with_auth(
            "alice",
            "c1",
            3,
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            2,
        )
        .build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    // MD5 for alice (has an MD5 HA1), another device
    let o = r.register(
        T0 + 70,
        &with_auth("alice", "c2", 1, "wonderland", "MD5", &nonce, &opaque, 3)
            .contacts(&["<sip:alice@198.18.1.3:5060>"])
            .build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    // the 200 lists only the requester's own binding, not the other device's
    assert_eq!(
        contacts(&o),
        vec!["<sip:alice@198.18.1.3:5060>;expires=600".to_string()]
    );
    assert_eq!(r.lookup("alice", "auth.lab", T0 + 70).len(), 2);
    // bob has no MD5 HA1: MD5 with the right password fails like a wrong password
    let o = r.register(
        T0 + 80,
        &with_auth("bob", "b1", 1, "builder", "MD5", &nonce, &opaque, 1).build(),
        &flow(),
    );
    assert_eq!(
        (status(&o), result(&o)),
        (401, ReportResult::AuthFailed(AuthFailure::WrongPassword))
    );
    let o = r.register(
        T0 + 90,
        &with_auth("bob", "b1", 2, "builder", "SHA-256", &nonce, &opaque, 1).build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
}

#[test]
fn unknown_user_and_wrong_password_are_indistinguishable() {
    let mut r = reg();
    let (nonce, opaque) = first_challenge(&mut r, T0, "alice", "c1");
    // Same Call-ID, tags and time: the whole answers must be byte-identical.
    let wrong = with_auth("alice", "probe", 2, "guess", "SHA-256", &nonce, &opaque, 1);
    let unknown = Reg {
        to: "<sip:alice@auth.lab>".into(),
        ..with_auth(
            "mallory", "probe", 2, "guess", "SHA-256", &nonce, &opaque, 1,
        )
    };
    // The username must match To, so probe an unknown user with To = that user,
    // and compare with a known user's wrong password on the same request shape.
    let unknown = Reg {
        to: "<sip:mallory@auth.lab>".into(),
        ..unknown
    };
    let wrong_mallory_shape = Reg {
        to: "<sip:alice@auth.lab>".into(),
        ..wrong
    };
    let a = r.register(T0 + 100, &wrong_mallory_shape.build(), &flow());
    let b = r.register(T0 + 100, &unknown.build(), &flow());
    assert_eq!(
        result(&a),
        ReportResult::AuthFailed(AuthFailure::WrongPassword)
    );
    assert_eq!(
        result(&b),
        ReportResult::AuthFailed(AuthFailure::UnknownUser)
    );
    let (ra, rb) = (response(&a), response(&b));
    assert_eq!((ra.status(), ra.reason()), (rb.status(), rb.reason()));
    let names = |r: &sipveil_sip::Response| {
        r.headers()
            .iter()
            .map(|h| h.name().as_bytes().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(ra), names(rb));
    assert_eq!(
        header_values(ra, HeaderName::WwwAuthenticate),
        header_values(rb, HeaderName::WwwAuthenticate)
    );
    // Byte-identical when the only difference is the name in To/From/username:
    let strip = |r: &sipveil_sip::Response| {
        String::from_utf8_lossy(&r.to_bytes()).replace("mallory", "alice")
    };
    assert_eq!(strip(ra), strip(rb));
    // MD5 too
    let a = r.register(
        T0 + 100,
        &with_auth("alice", "p", 2, "guess", "MD5", &nonce, &opaque, 5).build(),
        &flow(),
    );
    let b = r.register(
        T0 + 100,
        &with_auth("mallory", "p", 2, "guess", "MD5", &nonce, &opaque, 5).build(),
        &flow(),
    );
    assert_eq!(strip(response(&a)), strip(response(&b)));
    assert_eq!(status(&a), 401);
}

#[test]
fn replayed_nonce_count_is_refused() {
    let mut r = reg();
    let (nonce, opaque) = first_challenge(&mut r, T0, "alice", "c1");
    let req = with_auth(
        "alice",
        "c1",
        2,
        "wonderland",
        "SHA-256",
        &nonce,
        &opaque,
        1,
    );
    assert_eq!(status(&r.register(T0 + 1, &req.build(), &flow())), 200);
    // the identical credentials again (a captured request replayed with a new CSeq)
    let replay = Reg {
        cseq: 3,
        ..req.clone()
    };
    let o = r.register(T0 + 2, &replay.build(), &flow());
    assert_eq!(
        (status(&o), result(&o)),
        (401, ReportResult::AuthFailed(AuthFailure::Replayed))
    );
    let (fresh, _, stale) = challenge(&o, "SHA-256");
    assert!(!stale);
    assert_ne!(fresh, nonce);
    assert!(ops(&o).is_empty());
    // a lower count too
    let o = r.register(
        T0 + 3,
        &with_auth(
            "alice",
            "c1",
            4,
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            1,
        )
        .build(),
        &flow(),
    );
    assert_eq!(result(&o), ReportResult::AuthFailed(AuthFailure::Replayed));
    // a higher count works
    let o = r.register(
        T0 + 4,
        &with_auth(
            "alice",
            "c1",
            5,
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            7,
        )
        .build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
}

/// The edge answers 401 statelessly (no transaction kept for the challenge): a retransmitted
/// REGISTER reaches the registrar again. It is challenged again and nothing changes; either
/// challenge's nonce authenticates once, and a replay of an accepted nonce count is refused.
#[test]
fn retransmission_after_a_stateless_challenge_is_challenged_again_and_replays_stay_refused() {
    let mut r = reg();
    let (first, opaque) = first_challenge(&mut r, T0, "alice", "c1");
    let retransmission = r.register(
        T0 + 500,
        &Reg::new("alice", "auth.lab", "c1", 1).build(),
        &flow(),
    );
    assert_eq!(
        (status(&retransmission), result(&retransmission)),
        (401, ReportResult::Challenged)
    );
    assert!(ops(&retransmission).is_empty());
    assert!(r.is_empty(), "a challenge registers nothing");
    let (second, _, stale) = challenge(&retransmission, "SHA-256");
    assert!(!stale);
    assert_ne!(first, second, "nonces carry their issue time");

    let answer = |nonce: &str, cseq: u32, nc: u32| {
        with_auth(
            "alice",
            "c1",
            cseq,
            "wonderland",
            "SHA-256",
            nonce,
            &opaque,
            nc,
        )
        .build()
    };
    assert_eq!(
        status(&r.register(T0 + 600, &answer(&first, 2, 1), &flow())),
        200
    );
    assert_eq!(
        status(&r.register(T0 + 700, &answer(&second, 3, 1), &flow())),
        200
    );
    for (nonce, cseq) in [(&first, 4), (&second, 5)] {
        let o = r.register(T0 + 800, &answer(nonce, cseq, 1), &flow());
        assert_eq!(
            (status(&o), result(&o)),
            (401, ReportResult::AuthFailed(AuthFailure::Replayed))
        );
        assert!(ops(&o).is_empty());
    }
}

#[test]
fn stale_nonce_gets_stale_true_only_with_the_right_password() {
    let mut r = reg();
    let (nonce, opaque) = first_challenge(&mut r, T0, "alice", "c1");
    let later = T0 + 301_000; // nonce_ttl_secs = 300
    let o = r.register(
        later,
        &with_auth(
            "alice",
            "c1",
            2,
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            1,
        )
        .build(),
        &flow(),
    );
    assert_eq!(
        (status(&o), result(&o)),
        (401, ReportResult::AuthFailed(AuthFailure::Stale))
    );
    let (fresh, _, stale) = challenge(&o, "SHA-256");
    assert!(stale);
    assert!(challenge(&o, "MD5").2);
    // wrong password on a stale nonce: an ordinary fresh challenge
    let o = r.register(
        later,
        &with_auth("alice", "c1", 3, "nope", "SHA-256", &nonce, &opaque, 1).build(),
        &flow(),
    );
    assert_eq!(
        result(&o),
        ReportResult::AuthFailed(AuthFailure::WrongPassword)
    );
    assert!(!challenge(&o, "SHA-256").2);
    // the client retries on the fresh nonce
    let o = r.register(
        later + 1,
        &with_auth(
            "alice",
            "c1",
            4,
            "wonderland",
            "SHA-256",
            &fresh,
            &opaque,
            1,
        )
        .build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    // nonce counts of expired nonces are forgotten by expire()
    let _ = r.expire(later + 400_000);
}

#[test]
fn malformed_forged_and_mismatched_credentials() {
    let mut r = reg();
    let (nonce, opaque) = first_challenge(&mut r, T0, "alice", "c1");
    // username differs from the To user: 403
    let o = r.register(
        T0 + 1,
        &Reg::new("alice", "auth.lab", "c1", 2)
            .header(&authorization(
                "bob", "auth.lab", "builder", "SHA-256", &nonce, &opaque, 1, URI,
            ))
            .build(),
        &flow(),
    );
    assert_eq!(
        (status(&o), reason(&o).as_str(), result(&o)),
        (403, "Username Does Not Match To", ReportResult::Forbidden)
    );
    // forged nonce
    let mut forged = nonce.clone().into_bytes();
    forged[31] = if forged[31] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let o = r.register(
        T0 + 2,
        &with_auth(
            "alice",
            "c1",
            3,
            "wonderland",
            "SHA-256",
            &forged,
            &opaque,
            1,
        )
        .build(),
        &flow(),
    );
    assert_eq!(
        (status(&o), result(&o)),
        (401, ReportResult::AuthFailed(AuthFailure::Malformed))
    );
    // wrong opaque, unknown algorithm, wrong uri host, missing fields, nc=0
    let bad_headers = [
        authorization(
            "alice",
            "auth.lab",
            "wonderland",
            "SHA-256",
            &nonce,
            "other",
            1,
            URI,
        ),
        authorization(
            "alice",
            "auth.lab",
            "wonderland",
            "SHA-512",
            &nonce,
            &opaque,
            1,
            URI,
        ),
        authorization(
            "alice",
            "auth.lab",
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            1,
            "sip:open.lab",
        ),
        authorization(
            "alice",
            "auth.lab",
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            0,
            URI,
        ),
        "Authorization: Digest username=\"alice\", realm=\"auth.lab\"".to_string(),
    ];
    for (i, h) in bad_headers.iter().enumerate() {
        let o = r.register(
            T0 + 3,
            &Reg::new("alice", "auth.lab", "c1", 10 + i as u32)
                .header(h)
                .build(),
            &flow(),
        );
        assert_eq!(
            (status(&o), result(&o)),
            (401, ReportResult::AuthFailed(AuthFailure::Malformed)),
            "{h}"
        );
    }
    // credentials for another realm are ignored: plain challenge
    let o = r.register(
        T0 + 4,
        &Reg::new("alice", "auth.lab", "c1", 20)
            .header(&authorization(
                "alice",
                "other.realm",
                "wonderland",
                "SHA-256",
                &nonce,
                &opaque,
                1,
                URI,
            ))
            .build(),
        &flow(),
    );
    assert_eq!(result(&o), ReportResult::Challenged);
    assert!(r.is_empty());
}

/// A domain's `digest_algorithms` orders the challenges (MD5 first for clients that answer only
/// the first one) and limits what credentials may use.
#[test]
fn domain_algorithm_order_and_refusal() {
    let mut cfg = config();
    for d in &mut cfg.domains {
        if d.name == "auth.lab" {
            d.digest_algorithms = vec![DigestAlgorithm::Md5];
        }
    }
    let mut r = Registrar::new(cfg, SECRET);
    let o = r.register(T0, &Reg::new("alice", "auth.lab", "c1", 1).build(), &flow());
    let ch = header_values(response(&o), HeaderName::WwwAuthenticate);
    assert_eq!(ch.len(), 1, "{ch:?}");
    assert!(ch[0].contains("algorithm=MD5"), "{}", ch[0]);
    let (nonce, opaque, _) = challenge(&o, "MD5");
    // SHA-256 credentials for an MD5-only domain are refused, with a fresh challenge.
    let o = r.register(
        T0 + 10,
        &with_auth(
            "alice",
            "c1",
            2,
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            1,
        )
        .build(),
        &flow(),
    );
    assert_eq!(
        (status(&o), result(&o)),
        (401, ReportResult::AuthFailed(AuthFailure::Malformed))
    );
    let o = r.register(
        T0 + 20,
        &with_auth("alice", "c1", 3, "wonderland", "MD5", &nonce, &opaque, 2).build(),
        &flow(),
    );
    assert_eq!((status(&o), result(&o)), (200, ReportResult::Registered));

    // MD5 first, SHA-256 second: both answered in that order.
    let mut cfg = config();
    for d in &mut cfg.domains {
        d.digest_algorithms = vec![DigestAlgorithm::Md5, DigestAlgorithm::Sha256];
    }
    let mut r = Registrar::new(cfg, SECRET);
    let o = r.register(T0, &Reg::new("alice", "auth.lab", "c1", 1).build(), &flow());
    let ch = header_values(response(&o), HeaderName::WwwAuthenticate);
    assert_eq!(ch.len(), 2, "{ch:?}");
    assert!(
        ch[0].contains("algorithm=MD5") && ch[1].contains("algorithm=SHA-256"),
        "{ch:?}"
    );
}

/// Credentials are checked before the contacts (RFC 3261 §10.3, step 3 before steps 6-7): a
/// REGISTER without credentials gets the challenge whatever its Contact says, and only an
/// authenticated one has its contacts judged.
#[test]
fn challenge_comes_before_contact_checks() {
    let mut r = reg();
    let bad = Reg::new("alice", "auth.lab", "c9", 1).contacts(&["<sip:alice@198.18.1.3:5060", "*"]);
    let o = r.register(T0, &bad.build(), &flow());
    assert_eq!((status(&o), result(&o)), (401, ReportResult::Challenged));
    let (nonce, opaque, _) = challenge(&o, "SHA-256");
    let o = r.register(
        T0 + 10,
        &with_auth(
            "alice",
            "c9",
            2,
            "wonderland",
            "SHA-256",
            &nonce,
            &opaque,
            1,
        )
        .contacts(&["<sip:alice@198.18.1.3:5060", "*"])
        .build(),
        &flow(),
    );
    assert_eq!((status(&o), result(&o)), (400, ReportResult::BadRequest));
    // A wrong password with the same bad contacts is still an auth failure, not a 400.
    let o = r.register(
        T0 + 20,
        &with_auth("alice", "c9", 3, "nope", "SHA-256", &nonce, &opaque, 2)
            .contacts(&["<sip:alice@198.18.1.3:5060", "*"])
            .build(),
        &flow(),
    );
    assert_eq!(
        (status(&o), result(&o)),
        (401, ReportResult::AuthFailed(AuthFailure::WrongPassword))
    );
    assert!(r.is_empty());
}
