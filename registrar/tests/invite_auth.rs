//! `Registrar::authenticate_request`: digest of requests the edge bridges (INVITE, issue 5),
//! with 407 / Proxy-Authenticate / Proxy-Authorization and the From user.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use sipveil_registrar::{AuthFailure, Registrar, RequestAuth};
use sipveil_sip::{Auth, HeaderName, Response};

const URI: &str = "sip:bob@open.lab";

fn invite(from: &str, cseq: u32, extra: &str) -> sipveil_sip::Request {
    parse(&format!(
        "INVITE {URI} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKinv{cseq}\r\n\
         From: <sip:{from}>;tag=f1\r\nTo: <{URI}>\r\nCall-ID: inv-1\r\nCSeq: {cseq} INVITE\r\n\
         Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ))
}

fn proxy_challenge(r: &Response) -> (String, String) {
    for v in r.headers().get_all(&HeaderName::ProxyAuthenticate) {
        let a = Auth::parse(v.value()).expect("challenge parses");
        if a.param("algorithm")
            .is_some_and(|x| x[..] == b"SHA-256"[..])
        {
            let s = |n: &str| String::from_utf8_lossy(&a.param(n).expect(n)).into_owned();
            return (s("nonce"), s("opaque"));
        }
    }
    panic!("no SHA-256 Proxy-Authenticate")
}

/// Client side, written independently: SHA-256, qop=auth, method INVITE.
fn proxy_authorization(user: &str, password: &str, nonce: &str, opaque: &str, nc: u32) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let h = |s: String| hex(&Sha256::digest(s.as_bytes()));
    let nc = format!("{nc:08x}");
    let ha1 = h(format!("{user}:auth.lab:{password}"));
    let ha2 = h(format!("INVITE:{URI}"));
    let response = h(format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}"));
    format!(
        "Proxy-Authorization: Digest username=\"{user}\", realm=\"auth.lab\", nonce=\"{nonce}\", \
         uri=\"{URI}\", response=\"{response}\", algorithm=SHA-256, cnonce=\"c0ffee\", \
         opaque=\"{opaque}\", qop=auth, nc={nc}\r\n"
    )
}

fn refused(a: RequestAuth) -> (Response, Option<AuthFailure>) {
    match a {
        RequestAuth::Refused { response, failure } => (response, failure),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn caller_of_an_open_or_unserved_domain_is_not_challenged() {
    let mut r = Registrar::new(config(), SECRET);
    assert!(matches!(
        r.authenticate_request(T0, &invite("nick@open.lab", 1, "")),
        RequestAuth::NotRequired
    ));
    assert!(matches!(
        r.authenticate_request(T0, &invite("x@elsewhere.example", 1, "")),
        RequestAuth::NotRequired
    ));
}

#[test]
fn challenge_407_then_credentials_then_replay_refused() {
    let mut r = Registrar::new(config(), SECRET);
    let (resp, failure) = refused(r.authenticate_request(T0, &invite("alice@auth.lab", 1, "")));
    assert_eq!(resp.status().as_u16(), 407);
    assert_eq!(failure, None);
    assert!(
        resp.headers()
            .get_all(&HeaderName::WwwAuthenticate)
            .next()
            .is_none()
    );
    let (nonce, opaque) = proxy_challenge(&resp);
    let creds = proxy_authorization("alice", "wonderland", &nonce, &opaque, 1);
    match r.authenticate_request(T0 + 10, &invite("alice@auth.lab", 2, &creds)) {
        RequestAuth::Authenticated { aor } => assert_eq!(aor, "alice@auth.lab"),
        other => panic!("not authenticated: {other:?}"),
    }
    // The same nonce count again is a replay: a fresh challenge.
    let (resp, failure) =
        refused(r.authenticate_request(T0 + 20, &invite("alice@auth.lab", 3, &creds)));
    assert_eq!(resp.status().as_u16(), 407);
    assert_eq!(failure, Some(AuthFailure::Replayed));
    // REGISTER's header does not count for a bridged request.
    let www = creds.replacen("Proxy-Authorization", "Authorization", 1);
    let (resp, failure) =
        refused(r.authenticate_request(T0 + 30, &invite("alice@auth.lab", 4, &www)));
    assert_eq!((resp.status().as_u16(), failure), (407, None));
}

#[test]
fn wrong_password_and_other_users_name_are_refused() {
    let mut r = Registrar::new(config(), SECRET);
    let (resp, _) = refused(r.authenticate_request(T0, &invite("alice@auth.lab", 1, "")));
    let (nonce, opaque) = proxy_challenge(&resp);
    let bad = proxy_authorization("alice", "guess", &nonce, &opaque, 1);
    let (resp, failure) =
        refused(r.authenticate_request(T0 + 1, &invite("alice@auth.lab", 2, &bad)));
    assert_eq!(
        (resp.status().as_u16(), failure),
        (407, Some(AuthFailure::WrongPassword))
    );
    // Bob's valid credentials do not make a request From alice.
    let bobs = proxy_authorization("bob", "builder", &nonce, &opaque, 1);
    let (resp, _) = refused(r.authenticate_request(T0 + 2, &invite("alice@auth.lab", 3, &bobs)));
    assert_eq!(resp.status().as_u16(), 403);
}
