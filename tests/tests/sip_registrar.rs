//! The daemon's SIP side end to end (issue 4), with the tests' own SIP client in sv-a:
//!
//! - open domain: registration, fetch, 423 Min-Expires, hijack attempts (another Call-ID and
//!   flow: new contact, refresh, `Expires: 0`, `*`) refused with 403 while the owner's binding
//!   stays, the owner's refresh and removal, the name free again after expiry; closed domain and
//!   an unserved domain 403; OPTIONS to the edge 200;
//! - authenticated domain: RFC 7616 digest computed here (SHA-256 and MD5, qop=auth), wrong
//!   password, replayed nonce count, stale nonce, unknown user vs wrong password identical
//!   modulo nonce/opaque/to-tag, a 200 OK lists only the requester's own bindings;
//! - TLS: a REGISTER over TLS (rustls, trusting the test CA) and its binding's flow is TLS;
//! - bad input on UDP, TCP and TLS (malformed, oversized, truncated, garbage): answered or
//!   dropped as the SIP core (`sipveil-sip`) decides, the daemon stays up and serves the next
//!   client;
//! - configuration errors: `sipveil check-config` exits 2 naming file, line and key, and
//!   `sipveil run` refuses to start.
//!
//! Needs root (namespaces): fails with a clear message otherwise. Run one at a time
//! (`--test-threads=1`, as `cargo xtask test` does); every lab test holds the lab lock.

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use bytes::Bytes;
use sip_support::client::{
    ANSWER_TIMEOUT, Received, Register, Response, SipClient, Transport, contact_uris, token,
};
use sip_support::digest::{self, Algorithm, Challenge};
use sip_support::{AUTH_USERS, Edge, EdgeOptions, register_ok, transact};
use sipveil_sip::{ErrorAnswer, Limits, StreamEvent, StreamFramer};
use std::time::{Duration, Instant};

/// Waits until `aor` has no binding left (at most `limit`); true when it is gone.
fn wait_unbound(edge: &Edge, aor: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if edge.bindings_of(aor).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The contacts `registrations --json` shows for `aor`, sorted.
fn contacts_of(edge: &Edge, aor: &str) -> Vec<String> {
    let mut contacts: Vec<String> = edge
        .bindings_of(aor)
        .into_iter()
        .map(|binding| binding.contact)
        .collect();
    contacts.sort();
    contacts
}

fn assert_status(response: &Response, status: u16, what: &str, request: &str) {
    assert_eq!(
        response.status, status,
        "{what}: expected {status}; request:\n{request}\nanswer:\n{response}"
    );
}

#[test]
fn sip_open_domain_registration_hijack_and_expiry() {
    let options = EdgeOptions {
        min_expires: 2,
        ..EdgeOptions::default()
    };
    let edge = Edge::start("open_domain", &options);

    // OPTIONS to the edge itself, by name and by address.
    let mut owner = edge.client(Transport::Udp);
    for uri in ["sip:edge.lab", "sip:198.18.1.1"] {
        let request = owner.options(uri);
        let response = transact(&mut owner, &request);
        assert_status(&response, 200, "OPTIONS to the edge", &request);
    }

    // Registration and fetch.
    let nick = token("nick");
    let aor = format!("{nick}@open.lab");
    let owner_contact = owner.contact_uri(&nick);
    let reg = Register::new(&nick, "open.lab")
        .contact(&owner_contact)
        .expires(120);
    let response = register_ok(&mut owner, &reg);
    assert_eq!(
        contact_uris(&response),
        std::slice::from_ref(&owner_contact),
        "{response}"
    );
    let fetch = reg.next();
    let fetch = Register {
        contacts: Vec::new(),
        expires: None,
        ..fetch
    };
    let response = register_ok(&mut owner, &fetch);
    assert_eq!(
        contact_uris(&response),
        std::slice::from_ref(&owner_contact),
        "fetch: {response}"
    );
    assert_eq!(
        contacts_of(&edge, &aor),
        std::slice::from_ref(&owner_contact)
    );
    let proto = edge.bindings_of(&aor)[0].proto.clone();
    assert_eq!(
        proto.as_deref(),
        Some("udp"),
        "{:?}",
        edge.bindings_of(&aor)
    );

    // 423 with Min-Expires below the minimum.
    let brief = Register::new(&token("brief"), "open.lab")
        .contact(&owner.contact_uri("brief"))
        .expires(1);
    let request = owner.register(&brief);
    let response = transact(&mut owner, &request);
    assert_status(&response, 423, "Expires below min_expires", &request);
    assert_eq!(
        response.header("min-expires"),
        Some("2"),
        "423 without Min-Expires: 2:\n{response}"
    );

    // Hijack attempts from another flow (TCP, another port) with another Call-ID.
    let mut thief = edge.client(Transport::Tcp);
    let thief_contact = thief.contact_uri(&nick);
    let attempts: Vec<(&str, Register)> = vec![
        (
            "a new contact",
            Register::new(&nick, "open.lab")
                .contact(&thief_contact)
                .expires(120),
        ),
        (
            "a refresh of the owner's contact",
            Register::new(&nick, "open.lab")
                .contact(&owner_contact)
                .expires(120),
        ),
        (
            "removal of the owner's contact (Expires: 0)",
            Register::new(&nick, "open.lab")
                .contact(&owner_contact)
                .expires(0),
        ),
        ("removal of everything (Contact: *)", {
            let mut all = Register::new(&nick, "open.lab").expires(0);
            all.contacts.push("*".to_owned());
            all
        }),
    ];
    for (what, attempt) in &attempts {
        let request = thief.register(attempt);
        let response = transact(&mut thief, &request);
        assert_status(&response, 403, &format!("hijack by {what}"), &request);
        assert_eq!(
            contacts_of(&edge, &aor),
            std::slice::from_ref(&owner_contact),
            "the owner's binding after the hijack attempt by {what}"
        );
    }

    // The owner refreshes; then removes the binding, which frees the name at once.
    let refresh = fetch.next().contact(&owner_contact).expires(120);
    register_ok(&mut owner, &refresh);
    let remove = refresh.next();
    let remove = Register {
        expires: Some(0),
        ..remove
    };
    let response = register_ok(&mut owner, &remove);
    assert!(
        contact_uris(&response).is_empty(),
        "the 200 to a removal lists no binding: {response}"
    );
    assert!(contacts_of(&edge, &aor).is_empty());
    register_ok(
        &mut thief,
        &Register::new(&nick, "open.lab")
            .contact(&thief_contact)
            .expires(120),
    );
    assert_eq!(
        contacts_of(&edge, &aor),
        std::slice::from_ref(&thief_contact)
    );

    // A name held with a short expiry: refused to others while live, free once it expired.
    let short = token("short");
    let short_aor = format!("{short}@open.lab");
    let short_reg = Register::new(&short, "open.lab")
        .contact(&owner.contact_uri(&short))
        .expires(2);
    register_ok(&mut owner, &short_reg);
    let taken = Register::new(&short, "open.lab")
        .contact(&thief.contact_uri(&short))
        .expires(120);
    let request = thief.register(&taken);
    let response = transact(&mut thief, &request);
    assert_status(&response, 403, "a live nickname", &request);
    assert!(
        wait_unbound(&edge, &short_aor, Duration::from_secs(20)),
        "{short_aor} did not expire: {:?}",
        edge.bindings_of(&short_aor)
    );
    let response = register_ok(&mut thief, &taken);
    assert_eq!(
        contact_uris(&response),
        [thief.contact_uri(&short)],
        "{response}"
    );

    // Closed domain, and a domain the edge does not serve: 403, never forwarded.
    for domain in ["closed.lab", "example.com"] {
        let reg = Register::new("someone", domain)
            .contact(&owner.contact_uri("someone"))
            .expires(120);
        let request = owner.register(&reg);
        let response = transact(&mut owner, &request);
        assert_status(&response, 403, &format!("REGISTER for {domain}"), &request);
    }
    edge.assert_alive("the open-domain test");
}

/// REGISTERs `user` with digest over `client` using `algorithm`; returns the 200, the
/// challenge answered and the authorized request.
fn register_digest(
    client: &mut SipClient,
    reg: &Register,
    password: &str,
    algorithm: Algorithm,
) -> (Response, Challenge, Register) {
    let request = client.register(reg);
    let challenge_response = transact(client, &request);
    assert_status(
        &challenge_response,
        401,
        "REGISTER without credentials",
        &request,
    );
    let challenge = digest::challenge_for(&challenge_response, algorithm)
        .unwrap_or_else(|error| panic!("{error}"));
    let mut authorized = reg.next();
    authorized.authorization = Some(
        digest::authorization(
            &challenge,
            &reg.user,
            password,
            "REGISTER",
            &format!("sip:{}", reg.domain),
            1,
            &token("cn"),
        )
        .unwrap_or_else(|error| panic!("{error}")),
    );
    let request = client.register(&authorized);
    let response = transact(client, &request);
    assert_status(
        &response,
        200,
        &format!("digest {} for {}", algorithm.name(), reg.user),
        &request,
    );
    (response, challenge, authorized)
}

/// The parts of a response that must not depend on whether the user exists: status line, header
/// names and values, with `user` replaced and nonce, opaque, the To tag and the Via branch
/// masked.
fn masked(response: &Response, user: &str) -> Vec<String> {
    let mask_param = |value: &str, name: &str| -> String {
        let mut out = String::new();
        for (i, part) in value.split([';', ',']).enumerate() {
            let trimmed = part.trim();
            let key = trimmed
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let key = key.rsplit(' ').next().unwrap_or("").to_owned();
            if i > 0 {
                out.push('|');
            }
            if key == name {
                out.push_str(&format!("{name}=<masked>"));
            } else {
                out.push_str(trimmed);
            }
        }
        out
    };
    let mut lines = vec![format!("SIP/2.0 {} {}", response.status, response.reason)];
    for (name, value) in &response.headers {
        let mut value = value.replace(user, "<user>");
        match name.as_str() {
            "www-authenticate" => {
                value = mask_param(&value, "nonce");
                value = mask_param(&value, "opaque");
            }
            "to" => value = mask_param(&value, "tag"),
            "via" => value = mask_param(&value, "branch"),
            "date" => value = "<date>".to_owned(),
            _ => {}
        }
        lines.push(format!("{name}: {value}"));
    }
    lines
}

#[test]
fn sip_digest_authentication() {
    const NONCE_TTL: u64 = 3;
    let options = EdgeOptions {
        nonce_ttl_secs: NONCE_TTL,
        ..EdgeOptions::default()
    };
    let edge = Edge::start("digest", &options);
    let [(alice, alice_pw), (bob, bob_pw), (carol, _)] = AUTH_USERS;

    // The challenge offers SHA-256 and MD5 with qop=auth.
    let mut udp = edge.client(Transport::Udp);
    let reg = Register::new(alice, "auth.lab")
        .contact(&udp.contact_uri(alice))
        .expires(300);
    let request = udp.register(&reg);
    let response = transact(&mut udp, &request);
    assert_status(&response, 401, "REGISTER without credentials", &request);
    let offered = digest::challenges(&response).unwrap_or_else(|error| panic!("{error}"));
    for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
        let challenge = offered
            .iter()
            .find(|challenge| challenge.algorithm() == Some(algorithm))
            .unwrap_or_else(|| panic!("no {} challenge:\n{response}", algorithm.name()));
        assert_eq!(challenge.realm, "auth.lab", "{response}");
        assert!(challenge.qop.iter().any(|qop| qop == "auth"), "{response}");
        assert!(
            !challenge.stale,
            "a first challenge is not stale: {response}"
        );
    }

    // SHA-256 over UDP, MD5 over TCP.
    let (ok, alice_challenge, alice_request) =
        register_digest(&mut udp, &reg, alice_pw, Algorithm::Sha256);
    assert_eq!(contact_uris(&ok), [udp.contact_uri(alice)], "{ok}");
    let mut tcp = edge.client(Transport::Tcp);
    let bob_reg = Register::new(bob, "auth.lab")
        .contact(&tcp.contact_uri(bob))
        .expires(300);
    register_digest(&mut tcp, &bob_reg, bob_pw, Algorithm::Md5);
    assert_eq!(
        edge.bindings_of("bob@auth.lab").len(),
        1,
        "{:?}",
        edge.bindings()
    );

    // The same nonce with the same nonce count again: a replay, refused.
    let mut replay = alice_request.next();
    replay.authorization = alice_request.authorization.clone();
    let request = udp.register(&replay);
    let response = transact(&mut udp, &request);
    assert!(
        matches!(response.status, 401 | 403),
        "a replayed nonce count must be refused (401/403); request:\n{request}\nanswer:\n{response}"
    );
    // The same nonce with the next count: accepted (within the nonce's lifetime).
    let mut counted = replay.next();
    counted.authorization = Some(
        digest::authorization(
            &alice_challenge,
            alice,
            alice_pw,
            "REGISTER",
            "sip:auth.lab",
            2,
            &token("cn"),
        )
        .unwrap_or_else(|error| panic!("{error}")),
    );
    let request = udp.register(&counted);
    let response = transact(&mut udp, &request);
    if response.status == 401 {
        // Only acceptable when the nonce expired meanwhile (a slow machine): stale=true.
        let stale = digest::challenges(&response)
            .map(|all| all.iter().any(|challenge| challenge.stale))
            .unwrap_or(false);
        assert!(
            stale,
            "nc=2 on a live nonce refused; request:\n{request}\nanswer:\n{response}"
        );
    } else {
        assert_status(&response, 200, "nc=2 on the same nonce", &request);
    }

    // Wrong password: refused, and alice's binding stays.
    let mut wrong = edge.client(Transport::Udp);
    let wrong_reg = Register::new(alice, "auth.lab")
        .contact(&wrong.contact_uri(alice))
        .expires(300);
    let request = wrong.register(&wrong_reg);
    let challenge_response = transact(&mut wrong, &request);
    let challenge = digest::challenge_for(&challenge_response, Algorithm::Sha256)
        .unwrap_or_else(|error| panic!("{error}"));
    let mut bad = wrong_reg.next();
    bad.authorization = Some(
        digest::authorization(
            &challenge,
            alice,
            "not alice's password",
            "REGISTER",
            "sip:auth.lab",
            1,
            &token("cn"),
        )
        .unwrap_or_else(|error| panic!("{error}")),
    );
    let request = wrong.register(&bad);
    let response = transact(&mut wrong, &request);
    assert!(
        matches!(response.status, 401 | 403),
        "wrong password; request:\n{request}\nanswer:\n{response}"
    );
    assert_eq!(
        contacts_of(&edge, "alice@auth.lab"),
        [udp.contact_uri(alice)],
        "alice's bindings after a wrong password"
    );

    // A stale nonce: 401 with stale=true.
    let stale_reg = Register::new(bob, "auth.lab")
        .contact(&tcp.contact_uri(bob))
        .expires(300);
    let request = tcp.register(&stale_reg);
    let response = transact(&mut tcp, &request);
    let challenge = digest::challenge_for(&response, Algorithm::Sha256)
        .unwrap_or_else(|error| panic!("{error}"));
    std::thread::sleep(Duration::from_millis(NONCE_TTL * 1000 + 1500));
    let mut late = stale_reg.next();
    late.authorization = Some(
        digest::authorization(
            &challenge,
            bob,
            bob_pw,
            "REGISTER",
            "sip:auth.lab",
            1,
            &token("cn"),
        )
        .unwrap_or_else(|error| panic!("{error}")),
    );
    let request = tcp.register(&late);
    let response = transact(&mut tcp, &request);
    assert_status(&response, 401, "an expired nonce", &request);
    let stale = digest::challenges(&response).unwrap_or_else(|error| panic!("{error}"));
    assert!(
        stale.iter().any(|challenge| challenge.stale),
        "no stale=true in the answer to an expired nonce:\n{response}"
    );

    // Unknown user vs wrong password: the same answers, modulo nonce, opaque and To tag.
    let mut probe = edge.client(Transport::Udp);
    let call_id = token("enum");
    let from_tag = token("t");
    let mut stages: Vec<Vec<Vec<String>>> = vec![Vec::new(), Vec::new()];
    for user in [carol, "mallory"] {
        let mut reg = Register::new(user, "auth.lab")
            .contact(&probe.contact_uri("probe"))
            .expires(300);
        reg.call_id = call_id.clone();
        reg.from_tag = from_tag.clone();
        let request = probe.register(&reg);
        let first = transact(&mut probe, &request);
        assert_status(&first, 401, &format!("REGISTER of {user}"), &request);
        let challenge = digest::challenge_for(&first, Algorithm::Sha256)
            .unwrap_or_else(|error| panic!("{error}"));
        let mut answer = reg.next();
        answer.authorization = Some(
            digest::authorization(
                &challenge,
                user,
                "a wrong password",
                "REGISTER",
                "sip:auth.lab",
                1,
                "fixedcnonce",
            )
            .unwrap_or_else(|error| panic!("{error}")),
        );
        let request = probe.register(&answer);
        let second = transact(&mut probe, &request);
        stages[0].push(masked(&first, user));
        stages[1].push(masked(&second, user));
    }
    for (stage, answers) in ["challenge", "answer to wrong credentials"]
        .iter()
        .zip(&stages)
    {
        assert_eq!(
            answers[0], answers[1],
            "{stage}: a known user with a wrong password (left) and an unknown user (right) \
             must be indistinguishable"
        );
    }

    // A 200 OK lists only the requester's own bindings: alice's second device.
    let mut second = edge.client(Transport::Tcp);
    let second_reg = Register::new(alice, "auth.lab")
        .contact(&second.contact_uri(alice))
        .expires(300);
    let (ok, _, _) = register_digest(&mut second, &second_reg, alice_pw, Algorithm::Sha256);
    assert_eq!(
        contact_uris(&ok),
        [second.contact_uri(alice)],
        "the second device's 200 OK must list only its own binding:\n{ok}"
    );
    let mut both = vec![udp.contact_uri(alice), second.contact_uri(alice)];
    both.sort();
    assert_eq!(contacts_of(&edge, "alice@auth.lab"), both);
    edge.assert_alive("the digest test");
}

#[test]
fn sip_tls_registration_is_a_tls_flow() {
    let edge = Edge::start("tls", &EdgeOptions::default());
    let mut tls = edge.client(Transport::Tls);
    let nick = token("tls");
    let aor = format!("{nick}@open.lab");
    let contact = tls.contact_uri(&nick);
    let response = register_ok(
        &mut tls,
        &Register::new(&nick, "open.lab")
            .contact(&contact)
            .expires(300),
    );
    assert_eq!(
        contact_uris(&response),
        std::slice::from_ref(&contact),
        "{response}"
    );
    let via = response.header("via").unwrap_or_default().to_owned();
    assert!(via.starts_with("SIP/2.0/TLS"), "the Via echoed: {via}");
    let bindings = edge.bindings_of(&aor);
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(
        bindings[0].proto.as_deref(),
        Some("tls"),
        "the binding's flow: {:?}",
        bindings[0].raw
    );
    // Digest over TLS too.
    let (user, password) = AUTH_USERS[2];
    let reg = Register::new(user, "auth.lab")
        .contact(&tls.contact_uri(user))
        .expires(300);
    register_digest(&mut tls, &reg, password, Algorithm::Sha256);
    let bindings = edge.bindings_of(&format!("{user}@auth.lab"));
    assert_eq!(
        bindings
            .iter()
            .map(|b| b.proto.as_deref())
            .collect::<Vec<_>>(),
        [Some("tls")]
    );
    edge.assert_alive("the TLS test");
}

/// What the SIP core does with `input` on `transport` with messages up to `max` bytes.
struct Decision {
    /// `Some(status)` = answer, `None` = drop or wait for more.
    answer: Option<u16>,
    /// Streams: the connection can no longer be framed (the edge closes it after answering).
    fatal: bool,
}

fn core_decision(input: &[u8], transport: Transport, max: usize) -> Decision {
    let limits = Limits {
        max_message_size: max,
        ..Limits::default()
    };
    let (error, fatal) = if transport.is_stream() {
        let mut framer = StreamFramer::new(limits);
        framer.push(input);
        match framer.poll() {
            Some(Err(error)) => {
                let fatal = framer.is_failed();
                (error, fatal)
            }
            Some(Ok(StreamEvent::Message(_))) => panic!("test input is a valid message"),
            Some(Ok(_)) | None => {
                return Decision {
                    answer: None,
                    fatal: false,
                };
            }
        }
    } else {
        match sipveil_sip::parse_datagram(Bytes::copy_from_slice(input), &limits) {
            Err(error) => (error, false),
            Ok(_) => panic!("test input is a valid message"),
        }
    };
    let answer = match error.answer() {
        ErrorAnswer::Respond { status, .. } => Some(status),
        _ => None,
    };
    Decision { answer, fatal }
}

/// A REGISTER from `client` with `headers` spliced in and `body` (Content-Length as given).
fn raw_register(client: &SipClient, cseq: &str, extra: &str, length: usize, body: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:open.lab SIP/2.0\r\n\
         Via: {via}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bad@open.lab>;tag={tag}\r\n\
         To: <sip:bad@open.lab>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq}\r\n\
         Contact: <{contact}>\r\n\
         {extra}\
         Content-Length: {length}\r\n\r\n{body}",
        via = client.via(),
        tag = token("t"),
        call_id = token("bad"),
        contact = client.contact_uri("bad"),
    )
    .into_bytes()
}

/// One kind of bad input: its name, how to build it for a client, and whether the client
/// closes its sending side after it (stream transports).
type BadCase<'a> = (&'static str, Box<dyn Fn(&SipClient) -> Vec<u8> + 'a>, bool);

#[test]
fn sip_bad_input_on_each_transport() {
    const MAX: usize = 4096;
    let options = EdgeOptions {
        max_message_bytes: MAX,
        ..EdgeOptions::default()
    };
    let edge = Edge::start("bad_input", &options);
    let garbage: Vec<u8> = (0..1500u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .chain(*b"\r\n\r\n")
        .collect();
    for transport in Transport::ALL {
        let cases: Vec<BadCase<'_>> = vec![
            (
                "malformed (CSeq without a number)",
                Box::new(|c: &SipClient| raw_register(c, "x REGISTER", "", 0, "")),
                false,
            ),
            (
                "oversized (beyond max_message_bytes)",
                Box::new(|c: &SipClient| {
                    let pad = format!("X-Pad: {}\r\n", "p".repeat(MAX + 1000));
                    raw_register(c, "1 REGISTER", &pad, 0, "")
                }),
                false,
            ),
            (
                "truncated (Content-Length beyond the body)",
                Box::new(|c: &SipClient| {
                    raw_register(
                        c,
                        "1 REGISTER",
                        "Content-Type: application/sdp\r\n",
                        400,
                        "v=0\r\n",
                    )
                }),
                true,
            ),
            (
                "garbage bytes",
                Box::new(|_: &SipClient| garbage.clone()),
                true,
            ),
        ];
        for (what, build, close_after) in &cases {
            let mut client = edge.client(transport);
            let input = build(&client);
            let decision = core_decision(&input, transport, MAX);
            let expected = decision.answer;
            client
                .send_raw(&input)
                .unwrap_or_else(|error| panic!("{transport} {what}: sending: {error}"));
            if *close_after {
                client
                    .shutdown_write()
                    .unwrap_or_else(|error| panic!("{transport} {what}: shutdown: {error}"));
            }
            let wait = match expected {
                Some(_) => ANSWER_TIMEOUT,
                None => Duration::from_secs(1),
            };
            let got = client
                .recv(wait)
                .unwrap_or_else(|error| panic!("{transport} {what}: reading: {error}"));
            let got_status = match &got {
                Received::Response(response) => Some(response.status),
                Received::Timeout | Received::Closed => None,
            };
            let did = match &got {
                Received::Response(response) => {
                    format!("answered {} {}", response.status, response.reason)
                }
                Received::Timeout => "stayed silent".to_owned(),
                Received::Closed => "closed the connection without answering".to_owned(),
            };
            let says = match expected {
                Some(status) => format!("answer {status}"),
                None => "no answer (drop, or wait for more)".to_owned(),
            };
            println!("{transport} {what}: the SIP core says {says}; the edge {did}");
            assert_eq!(
                got_status,
                expected,
                "{transport} {what}: the SIP core says {says}, the edge {did}; input starts {:?}",
                String::from_utf8_lossy(&input[..input.len().min(300)])
            );
            edge.assert_alive(&format!("{transport} {what}"));
            // A stream whose error the core does not call fatal goes on: the same connection
            // registers next.
            if transport.is_stream() && !*close_after && !decision.fatal {
                let nick = token("same");
                let reg = Register::new(&nick, "open.lab")
                    .contact(&client.contact_uri(&nick))
                    .expires(300);
                let request = client.register(&reg);
                match client.transact(&request) {
                    Ok(response) => assert_status(
                        &response,
                        200,
                        &format!("{transport}: a REGISTER on the connection after {what}"),
                        &request,
                    ),
                    Err(error) => panic!(
                        "{transport}: the connection must stay usable after {what} (the SIP \
                         core does not call it fatal): {error}"
                    ),
                }
            }
            // The next client is served.
            let mut next = edge.client(transport);
            let nick = token("after");
            let reg = Register::new(&nick, "open.lab")
                .contact(&next.contact_uri(&nick))
                .expires(300);
            register_ok(&mut next, &reg);
        }
    }
    edge.assert_alive("the bad-input test");
}

/// One broken configuration: what to break, and the line and key the error must name.
struct Broken {
    what: &'static str,
    config: String,
    users: Option<String>,
    /// The file the message must name (the config or the users file).
    file: &'static str,
    /// The line the message must name (0: the line containing `needle`).
    line: usize,
    needle: &'static str,
    key: &'static str,
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the configuration"))
}

#[test]
fn sip_config_errors_are_named_and_refused() {
    let sipveil = sip_support::sipveil();
    let dir = sip_support::test_dir("config_errors");
    let good = sip_support::config_text(&EdgeOptions::default());
    let replace = |from: &str, to: &str| -> String {
        assert!(good.contains(from), "{from:?} not in the configuration");
        good.replacen(from, to, 1)
    };
    let mut cases = vec![
        Broken {
            what: "an unknown key in [sip]",
            config: replace("workers = 2\n", "wrokers = 2\n"),
            users: None,
            file: "sipveil.toml",
            line: 0,
            needle: "wrokers",
            key: "wrokers",
        },
        Broken {
            what: "an unknown domain policy",
            config: replace("policy = \"closed\"", "policy = \"shut\""),
            users: None,
            file: "sipveil.toml",
            line: 0,
            needle: "\"shut\"",
            key: "policy",
        },
        Broken {
            what: "a string where a number belongs",
            config: replace("max_contacts = 8", "max_contacts = \"eight\""),
            users: None,
            file: "sipveil.toml",
            line: 0,
            needle: "\"eight\"",
            key: "max_contacts",
        },
        Broken {
            what: "a users file line with a bad hash",
            config: good.clone(),
            users: Some("# users\nalice sha256:0123 md5:00\n".to_owned()),
            file: "auth.lab.users",
            line: 2,
            needle: "",
            key: "sha256",
        },
    ];
    for case in &mut cases {
        if case.line == 0 {
            case.line = line_of(&case.config, case.needle);
        }
    }
    for case in &cases {
        let case_dir = dir.join(case.what.replace(' ', "_"));
        std::fs::create_dir_all(case_dir.join("certs")).expect("case dir");
        let bundle =
            sip_support::certs::generate(&sip_support::certs::EDGE_SANS).expect("certificates");
        sip_support::certs::write(&bundle, &case_dir.join("certs")).expect("certificates");
        let users = case.users.clone().unwrap_or_else(sip_support::users_text);
        std::fs::write(case_dir.join("auth.lab.users"), users).expect("users file");
        let config = case_dir.join("sipveil.toml");
        std::fs::write(&config, &case.config).expect("config");

        let out = std::process::Command::new(sipveil)
            .arg("check-config")
            .arg(&config)
            .output()
            .expect("running sipveil check-config");
        let message = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("check-config, {}: {}", case.what, message.trim());
        assert_eq!(
            out.status.code(),
            Some(2),
            "check-config on {}: exit {} ({message})",
            case.what,
            out.status
        );
        let line = case.line.to_string();
        let names_line =
            message.contains(&format!(":{line}")) || message.contains(&format!("line {line}"));
        assert!(
            message.contains(case.file) && names_line && message.contains(case.key),
            "check-config on {} must name {} line {} and {:?}: {message}",
            case.what,
            case.file,
            case.line,
            case.key
        );
    }

    // `sipveil run` refuses the first broken configuration (no namespace needed: it must stop
    // at the configuration).
    let config = dir
        .join(cases[0].what.replace(' ', "_"))
        .join("sipveil.toml");
    let mut child = std::process::Command::new(sipveil)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--no-xdp")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting sipveil run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for sipveil run") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("sipveil run output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(status, Some(status) if !status.success()),
        "sipveil run with a broken configuration must exit with an error (status {status:?}); \
         stdout {stdout} stderr {stderr}"
    );
    assert!(
        !stdout.contains("\"ready\":true") && stderr.contains(cases[0].key),
        "sipveil run must refuse, naming {:?}: stdout {stdout} stderr {stderr}",
        cases[0].key
    );
}

/// REGISTER with digest (SHA-256); the final answer, whatever it is.
fn try_register_digest(
    client: &mut SipClient,
    reg: &Register,
    password: &str,
) -> Result<Response, String> {
    let request = client.register(reg);
    let first = client.transact(&request)?;
    if first.status != 401 {
        return Ok(first);
    }
    let challenge = digest::challenge_for(&first, Algorithm::Sha256)?;
    let mut authorized = reg.next();
    authorized.authorization = Some(digest::authorization(
        &challenge,
        &reg.user,
        password,
        "REGISTER",
        &format!("sip:{}", reg.domain),
        1,
        &token("cn"),
    )?);
    client.transact(&client.register(&authorized))
}

/// `sipveil reload --socket S`: (exit code, output).
fn reload() -> (Option<i32>, String) {
    let out = std::process::Command::new(sip_support::sipveil())
        .args([
            "reload",
            "--socket",
            sipveil_loadtest::lab::LAB_CONTROL_SOCKET,
        ])
        .output()
        .expect("running sipveil reload");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn sip_reload_applies_users_and_keeps_registrations() {
    let edge = Edge::start("reload", &EdgeOptions::default());
    let users_path = edge.dir.join("auth.lab.users");
    let mut client = edge.client(Transport::Udp);
    let nick = token("keep");
    let nick_aor = format!("{nick}@open.lab");
    let reg = Register::new(&nick, "open.lab")
        .contact(&client.contact_uri(&nick))
        .expires(600);
    register_ok(&mut client, &reg);
    let (alice, alice_pw) = AUTH_USERS[0];
    let alice_reg = Register::new(alice, "auth.lab")
        .contact(&client.contact_uri(alice))
        .expires(600);
    register_digest(&mut client, &alice_reg, alice_pw, Algorithm::Sha256);
    let before = (
        contacts_of(&edge, &nick_aor),
        contacts_of(&edge, "alice@auth.lab"),
    );

    // A new user, `sipveil reload`: dave registers, nobody's binding is dropped.
    let mut users = sip_support::users_text();
    users.push_str(&digest::users_line("dave", "auth.lab", "dave-pw"));
    users.push('\n');
    std::fs::write(&users_path, &users).expect("users file");
    let (code, output) = reload();
    assert_eq!(code, Some(0), "sipveil reload: {output}");
    let dave_reg = Register::new("dave", "auth.lab")
        .contact(&client.contact_uri("dave"))
        .expires(600);
    let response = try_register_digest(&mut client, &dave_reg, "dave-pw")
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(response.status, 200, "dave after the reload:\n{response}");
    let after = (
        contacts_of(&edge, &nick_aor),
        contacts_of(&edge, "alice@auth.lab"),
    );
    assert_eq!(before, after, "bindings changed across the reload");

    // SIGHUP does the same: erin appears (the daemon reloads asynchronously: retry a while).
    users.push_str(&digest::users_line("erin", "auth.lab", "erin-pw"));
    users.push('\n');
    std::fs::write(&users_path, &users).expect("users file");
    let pid = edge.daemon.as_ref().expect("daemon").pid().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(status.success(), "kill -HUP {pid}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    let erin_ok = loop {
        let erin_reg = Register::new("erin", "auth.lab")
            .contact(&client.contact_uri("erin"))
            .expires(600);
        match try_register_digest(&mut client, &erin_reg, "erin-pw") {
            Ok(response) if response.status == 200 => break true,
            Ok(response) => last = response.text(),
            Err(error) => last = error,
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        erin_ok,
        "erin cannot register after SIGHUP; last answer:\n{last}"
    );
    edge.assert_alive("SIGHUP");

    // A broken configuration: the reload is refused, naming the key; the old one stays.
    let good = std::fs::read_to_string(&edge.config).expect("config");
    let broken = good.replacen("policy = \"closed\"", "policy = \"shut\"", 1);
    assert_ne!(good, broken);
    std::fs::write(&edge.config, &broken).expect("config");
    let (code, output) = reload();
    std::fs::write(&edge.config, &good).expect("config");
    assert_eq!(code, Some(1), "reload of a broken config: {output}");
    assert!(
        output.contains("policy"),
        "the refused reload must name the key: {output}"
    );
    let (bob, bob_pw) = AUTH_USERS[1];
    let bob_reg = Register::new(bob, "auth.lab")
        .contact(&client.contact_uri(bob))
        .expires(600);
    register_digest(&mut client, &bob_reg, bob_pw, Algorithm::Sha256);
    assert_eq!(
        contacts_of(&edge, &nick_aor),
        before.0,
        "after a refused reload"
    );
    edge.assert_alive("the reloads");
}

/// The repository's lab configuration (edge/lab.toml, its users file, the lab certificates in
/// /run/sipveil-lab/certs) serves clients over UDP, TCP and TLS: the "done" check.
#[test]
fn sip_lab_config_serves_udp_tcp_tls() {
    use sip_support::certs;
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge/lab.toml");
    let dir = std::path::Path::new(certs::DEFAULT_CERT_DIR);
    sip_support::require_root();
    if !["ca.pem", "edge.pem", "edge.key"]
        .iter()
        .all(|name| dir.join(name).is_file())
    {
        // What `cargo xtask setup` / `cargo xtask certs` make.
        let bundle = certs::generate(&certs::EDGE_SANS).expect("certificates");
        certs::write(&bundle, dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    }
    let out = std::process::Command::new(sip_support::sipveil())
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("sipveil check-config");
    assert!(
        out.status.success(),
        "check-config {}: {}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let edge = Edge::start_with_config("lab_config", &config, &dir.join("ca.pem"));
    // The lab users file's documented passwords.
    let (alice, alice_pw) = ("alice", "alice-secret");
    let mut registered: Vec<(Transport, Register)> = Vec::new();
    for transport in Transport::ALL {
        let mut client = edge.client(transport);
        let nick = token("lab");
        let reg = Register::new(&nick, "open.lab")
            .contact(&client.contact_uri(&nick))
            .expires(60);
        register_ok(&mut client, &reg);
        let alice_reg = Register::new(alice, "auth.lab")
            .contact(&client.contact_uri(alice))
            .expires(60);
        let (_, _, authorized) =
            register_digest(&mut client, &alice_reg, alice_pw, Algorithm::Sha256);
        let aor = format!("{nick}@open.lab");
        let bindings = edge.bindings_of(&aor);
        assert_eq!(bindings.len(), 1, "{aor}: {bindings:?}");
        let proto = transport.via().to_ascii_lowercase();
        assert_eq!(bindings[0].proto.as_deref(), Some(proto.as_str()));
        // Leave the lab's database as it was: remove both bindings again.
        let mut remove = reg.next();
        remove.expires = Some(0);
        register_ok(&mut client, &remove);
        let mut remove_alice = authorized.next();
        remove_alice.expires = Some(0);
        let response = try_register_digest(&mut client, &remove_alice, alice_pw)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(response.status, 200, "removing alice:\n{response}");
        registered.push((transport, reg));
    }
    for (transport, reg) in &registered {
        let aor = format!("{}@open.lab", reg.user);
        assert!(
            edge.bindings_of(&aor).is_empty(),
            "{transport}: {aor} was removed"
        );
    }
    edge.assert_alive("the lab configuration test");
}
