//! Property tests: random and mutated REGISTERs never panic; random
//! sequences keep the invariants (ownership, counts, store equivalence).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use sipveil_registrar::{Binding, RegisterOutcome, Registrar, StoreOp};
use sipveil_sip::{Limits, Message, parse_datagram};

fn fixtures() -> Vec<String> {
    let auth = authorization(
        "alice",
        "auth.lab",
        "wonderland",
        "SHA-256",
        "AAAAAYvO1AAAAAAAAAAAAAAAAAAAAAAA",
        "opq",
        1,
        "sip:auth.lab",
    );
    vec![
        Reg::new("neo", "open.lab", "c1", 1).text(),
        Reg::new("neo", "open.lab", "c1", 2)
            .contacts(&["<sip:neo@198.18.1.2:40001;transport=tcp>;+sip.instance=\"<urn:uuid:1>\";reg-id=1;q=0.7;expires=300"])
            .header("Supported: outbound")
            .text(),
        Reg::new("neo", "open.lab", "c1", 3).contacts(&["*"]).expires("0").text(),
        Reg::new("alice", "auth.lab", "c2", 1).header(&auth).text(),
        Reg::new("x", "closed.lab", "c3", 1).contacts(&[]).text(),
    ]
}

const HEADERS: &[&str] = &[
    "Contact",
    "Expires",
    "Authorization",
    "To",
    "Supported",
    "Require",
    "CSeq",
    "Call-ID",
    "m",
    "t",
];

fn outcome_ok(o: &RegisterOutcome) {
    match o {
        RegisterOutcome::Respond { response, .. } => {
            assert!((200..700).contains(&response.status().as_u16()));
        }
        RegisterOutcome::Commit { ops, response, .. } => {
            assert!(!ops.is_empty());
            assert_eq!(response.status().as_u16(), 200);
        }
        RegisterOutcome::Drop { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn mutated_registers_never_panic(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        extra in proptest::collection::vec((0usize..HEADERS.len(), "[ -~]{0,60}"), 0..3),
        now_off in 0u64..10_000_000,
    ) {
        let mut r = Registrar::new(config(), SECRET);
        let mut text = fixtures()[which].clone();
        // headers appended before the blank line
        let end = text.len() - 2;
        let mut add = String::new();
        for (h, v) in &extra {
            add.push_str(&format!("{}: {}\r\n", HEADERS[*h], v));
        }
        text.insert_str(end, &add);
        let mut bytes = text.into_bytes();
        for (i, b) in &flips {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        if let Ok(Message::Request(req)) = parse_datagram(Bytes::from(bytes), &Limits::default()) {
            // once as-is (the TU may skip validate), twice to exercise state
            let o = r.register(T0 + now_off, &req, &flow());
            outcome_ok(&o);
            let o = r.register(T0 + now_off + 1, &req, &flow());
            outcome_ok(&o);
            prop_assert_eq!(r.len(), r.bindings().count());
        }
    }

    #[test]
    fn random_sequences_keep_invariants(
        steps in proptest::collection::vec(
            (0usize..3, 0usize..3, 0usize..4, 0usize..6, 0u64..400_000),
            1..40,
        ),
    ) {
        let users = ["a", "b", "c"];
        let calls = ["k1", "k2", "k3"];
        let contact_sets: [&[&str]; 4] = [
            &["<sip:x@10.0.0.1>"],
            &["<sip:x@10.0.0.2>;q=0.3", "<sip:x@10.0.0.1>;expires=0"],
            &["<sip:x@10.0.0.3>;+sip.instance=\"<urn:uuid:9>\";reg-id=1"],
            &[],
        ];
        let expires = [None, Some("0"), Some("60"), Some("3600"), Some("30"), Some("*")];
        let mut r = Registrar::new(config(), SECRET);
        let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut now = T0;
        let mut cseq = 1u32;
        for (u, c, cs, e, dt) in steps {
            now += dt;
            cseq += 1;
            let mut req = Reg::new(users[u], "open.lab", calls[c], cseq).contacts(contact_sets[cs]);
            match expires[e] {
                Some("*") => req = req.contacts(&["*"]).expires("0"),
                Some(v) => req = req.expires(v),
                None => {}
            }
            let o = r.register(now, &req.build(), &flow());
            outcome_ok(&o);
            if let RegisterOutcome::Commit { ops, .. } = &o {
                apply(&mut store, ops);
            }
            if now.is_multiple_of(3) {
                apply(&mut store, &r.expire(now));
            }
            prop_assert_eq!(r.len(), r.bindings().count());
            // ownership: the live bindings of an open nickname share one claim
            for user in users {
                let live = r.lookup(user, "open.lab", now);
                let claims: BTreeSet<_> = live.iter().map(|b| (&b.call_id, &b.instance)).collect();
                prop_assert!(claims.len() <= 1, "{user}: {claims:?}");
                prop_assert!(live.windows(2).all(|w| w[0].q >= w[1].q));
                prop_assert!(live.len() <= 4);
            }
            // the store holds exactly what a restart would restore
            let mut r2 = Registrar::new(config(), SECRET);
            for (k, v) in &store {
                prop_assert!(r2.restore(k, v, now).is_ok());
            }
            let live = |r: &Registrar| -> BTreeSet<Vec<u8>> {
                r.bindings().filter(|b| b.expires_at_ms > now).map(Binding::encode).collect()
            };
            prop_assert_eq!(live(&r), live(&r2));
        }
    }
}

fn apply(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: &[StoreOp]) {
    for op in ops {
        match op {
            StoreOp::Put { key, value } => {
                store.insert(key.clone(), value.clone());
            }
            StoreOp::Delete { key } => {
                store.remove(key);
            }
        }
    }
}
