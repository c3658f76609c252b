//! RFC 3261 §10.3 / RFC 5626 behaviour, store ops, restore, expiry, reconfigure.

mod common;

use std::collections::BTreeMap;

use common::*;
use sipveil_registrar::{Binding, DecodeError, Proto, Registrar, ReportResult, StoreOp};
use sipveil_sip::HeaderName;

fn reg() -> Registrar {
    Registrar::new(config(), SECRET)
}

/// A fake durable store: applies ops like the redb store would.
#[derive(Default)]
struct Store(BTreeMap<Vec<u8>, Vec<u8>>);

impl Store {
    fn apply(&mut self, ops: &[StoreOp]) {
        for op in ops {
            match op {
                StoreOp::Put { key, value } => {
                    self.0.insert(key.clone(), value.clone());
                }
                StoreOp::Delete { key } => {
                    self.0.remove(key);
                }
            }
        }
    }
}

#[test]
fn expires_limits_and_423() {
    let mut r = reg();
    let o = r.register(
        T0,
        &Reg::new("a", "open.lab", "c", 1).expires("7200").build(),
        &flow(),
    );
    assert_eq!(
        contacts(&o),
        vec!["<sip:a@198.18.1.2:5060>;expires=3600".to_string()]
    );
    let o = r.register(
        T0,
        &Reg::new("b", "open.lab", "c", 1)
            .contacts(&["<sip:b@198.18.1.2>;expires=120"])
            .expires("900")
            .build(),
        &flow(),
    );
    assert_eq!(
        contacts(&o),
        vec!["<sip:b@198.18.1.2>;expires=120".to_string()]
    );
    assert_eq!(r.lookup("b", "open.lab", T0)[0].expires_at_ms, T0 + 120_000);
    for bad in [
        Reg::new("c", "open.lab", "c", 1).expires("30"),
        Reg::new("c", "open.lab", "c", 1)
            .contacts(&["<sip:c@h>;expires=59"])
            .expires("600"),
    ] {
        let o = r.register(T0, &bad.build(), &flow());
        assert_eq!(
            (status(&o), result(&o)),
            (423, ReportResult::IntervalTooBrief)
        );
        assert_eq!(
            header_values(response(&o), HeaderName::MinExpires),
            vec!["60".to_string()]
        );
        assert!(ops(&o).is_empty());
    }
    assert!(r.lookup("c", "open.lab", T0).is_empty());
    // removing what does not exist: 200, nothing to store
    let o = r.register(
        T0,
        &Reg::new("d", "open.lab", "c", 1).expires("0").build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    assert!(ops(&o).is_empty());
    // unparsable Expires header
    let o = r.register(
        T0,
        &Reg::new("d", "open.lab", "c", 2).expires("soon").build(),
        &flow(),
    );
    assert_eq!((status(&o), reason(&o).as_str()), (400, "Bad Expires"));
}

#[test]
fn wildcard_rules() {
    let mut r = reg();
    assert_eq!(
        status(&r.register(T0, &Reg::new("w", "open.lab", "c", 1).build(), &flow())),
        200
    );
    for bad in [
        Reg::new("w", "open.lab", "c", 2).contacts(&["*"]),
        Reg::new("w", "open.lab", "c", 2)
            .contacts(&["*"])
            .expires("60"),
        Reg::new("w", "open.lab", "c", 2)
            .contacts(&["*", "<sip:w@h>"])
            .expires("0"),
        Reg::new("w", "open.lab", "c", 2)
            .contacts(&["*", "*"])
            .expires("0"),
    ] {
        let o = r.register(T0, &bad.build(), &flow());
        assert_eq!(status(&o), 400, "{}", bad.text());
        assert_eq!(r.len(), 1);
    }
}

#[test]
fn cseq_not_higher_on_the_same_call_id_is_500() {
    let mut r = reg();
    assert_eq!(
        status(&r.register(T0, &Reg::new("s", "open.lab", "c", 5).build(), &flow())),
        200
    );
    for n in [5, 4] {
        let o = r.register(T0 + 1, &Reg::new("s", "open.lab", "c", n).build(), &flow());
        assert_eq!(
            (status(&o), reason(&o).as_str(), result(&o)),
            (500, "CSeq Out Of Order", ReportResult::OutOfOrder)
        );
        let o = r.register(
            T0 + 1,
            &Reg::new("s", "open.lab", "c", n)
                .contacts(&["*"])
                .expires("0")
                .build(),
            &flow(),
        );
        assert_eq!(status(&o), 500);
    }
    assert_eq!(
        status(&r.register(T0 + 1, &Reg::new("s", "open.lab", "c", 6).build(), &flow())),
        200
    );
}

#[test]
fn several_contacts_q_order_and_max_contacts() {
    let mut r = reg();
    let o = r.register(
        T0,
        &Reg::new("q", "open.lab", "c", 1)
            .contacts(&[
                "<sip:q@10.0.0.1>;q=0.1",
                "<sip:q@10.0.0.2>",
                "<sip:q@10.0.0.3>;q=0.5",
            ])
            .build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    assert_eq!(ops(&o).len(), 3);
    let c = contacts(&o);
    assert!(
        c.contains(&"<sip:q@10.0.0.1>;expires=600;q=0.100".to_string()),
        "{c:?}"
    );
    let order: Vec<u16> = r.lookup("q", "open.lab", T0).iter().map(|b| b.q).collect();
    assert_eq!(order, vec![1000, 500, 100]);
    // 4 allowed; 2 more would make 5
    let o = r.register(
        T0,
        &Reg::new("q", "open.lab", "c", 2)
            .contacts(&["<sip:q@10.0.0.4>", "<sip:q@10.0.0.5>"])
            .build(),
        &flow(),
    );
    assert_eq!(
        (status(&o), reason(&o).as_str()),
        (403, "Too Many Contacts")
    );
    assert_eq!(r.len(), 3);
    // removing one and adding one in the same request is fine
    let o = r.register(
        T0,
        &Reg::new("q", "open.lab", "c", 3)
            .contacts(&[
                "<sip:q@10.0.0.1>;expires=0",
                "<sip:q@10.0.0.4>",
                "<sip:q@10.0.0.5>",
            ])
            .build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    assert_eq!(r.len(), 4);
    assert_eq!(
        ops(&o)
            .iter()
            .filter(|o| matches!(o, StoreOp::Delete { .. }))
            .count(),
        1
    );
    // a bad q
    let o = r.register(
        T0,
        &Reg::new("q", "open.lab", "c", 4)
            .contacts(&["<sip:q@x>;q=2"])
            .build(),
        &flow(),
    );
    assert_eq!((status(&o), reason(&o).as_str()), (400, "Bad q"));
}

#[test]
fn global_cap_refuses_new_bindings_but_not_refreshes() {
    let mut cfg = config();
    cfg.max_bindings = 2;
    let mut r = Registrar::new(cfg, SECRET);
    assert_eq!(
        status(&r.register(T0, &Reg::new("u1", "open.lab", "c1", 1).build(), &flow())),
        200
    );
    assert_eq!(
        status(&r.register(T0, &Reg::new("u2", "open.lab", "c2", 1).build(), &flow())),
        200
    );
    let o = r.register(T0, &Reg::new("u3", "open.lab", "c3", 1).build(), &flow());
    assert_eq!((status(&o), result(&o)), (503, ReportResult::Full));
    assert_eq!(
        header_values(response(&o), HeaderName::RetryAfter),
        vec!["60".to_string()]
    );
    assert_eq!(
        status(&r.register(
            T0 + 1,
            &Reg::new("u1", "open.lab", "c1", 2).build(),
            &flow()
        )),
        200
    );
    assert_eq!(
        status(&r.register(
            T0 + 1,
            &Reg::new("u2", "open.lab", "c2", 2).expires("0").build(),
            &flow()
        )),
        200
    );
    assert_eq!(
        status(&r.register(
            T0 + 2,
            &Reg::new("u3", "open.lab", "c3", 2).build(),
            &flow()
        )),
        200
    );
}

#[test]
fn outbound_instance_and_reg_id_key_the_binding() {
    let mut r = reg();
    let inst = "+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\"";
    let first = Reg::new("ob", "open.lab", "c", 1)
        .contacts(&[&format!(
            "<sip:ob@198.18.1.2:40001;transport=tcp>;{inst};reg-id=1"
        )])
        .header("Supported: path, outbound");
    let o = r.register(T0, &first.build(), &tcp_flow(1));
    assert_eq!(status(&o), 200);
    assert_eq!(
        header_values(response(&o), HeaderName::Require),
        vec!["outbound".to_string()]
    );
    let key1 = match ops(&o) {
        [StoreOp::Put { key, .. }] => key.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        contacts(&o)[0].ends_with(
            ";+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\";reg-id=1"
        )
    );
    // new connection, new port: the same (instance, reg-id) binding is replaced
    let second = Reg::new("ob", "open.lab", "c", 2).contacts(&[&format!(
        "<sip:ob@198.18.1.2:40002;transport=tcp>;{inst};reg-id=1"
    )]);
    let o = r.register(T0 + 10, &second.build(), &tcp_flow(2));
    assert_eq!(status(&o), 200);
    assert!(
        header_values(response(&o), HeaderName::Require).is_empty(),
        "no Supported: outbound"
    );
    match ops(&o) {
        [StoreOp::Put { key, .. }] => assert_eq!(key, &key1),
        other => panic!("{other:?}"),
    }
    let b = r.lookup("ob", "open.lab", T0 + 10);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].contact, "sip:ob@198.18.1.2:40002;transport=tcp");
    assert_eq!(
        (b[0].flow.proto, b[0].flow.conn, b[0].reg_id),
        (Proto::Tcp, 2, Some(1))
    );
    assert_eq!(
        b[0].instance.as_deref(),
        Some("<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>")
    );
    // a second flow (reg-id 2) adds a binding
    let third = Reg::new("ob", "open.lab", "c", 3).contacts(&[&format!(
        "<sip:ob@198.18.1.2:40003;transport=tcp>;{inst};reg-id=2"
    )]);
    assert_eq!(
        status(&r.register(T0 + 20, &third.build(), &tcp_flow(3))),
        200
    );
    assert_eq!(r.lookup("ob", "open.lab", T0 + 20).len(), 2);
}

#[test]
fn fetch_lists_own_bindings_without_store_ops() {
    let mut r = reg();
    assert_eq!(
        status(&r.register(T0, &Reg::new("f", "open.lab", "c", 1).build(), &flow())),
        200
    );
    let o = r.register(
        T0 + 100_500,
        &Reg::new("f", "open.lab", "c", 2).contacts(&[]).build(),
        &flow(),
    );
    assert_eq!((status(&o), result(&o)), (200, ReportResult::Fetched));
    assert!(matches!(
        o,
        sipveil_registrar::RegisterOutcome::Respond { .. }
    ));
    assert_eq!(
        contacts(&o),
        vec!["<sip:f@198.18.1.2:5060>;expires=500".to_string()]
    );
}

#[test]
fn restore_rebuilds_bindings_and_ownership_and_drops_expired() {
    let mut store = Store::default();
    let mut r = reg();
    for (user, exp) in [("keep", "3600"), ("short", "60")] {
        let o = r.register(
            T0,
            &Reg::new(user, "open.lab", &format!("cid-{user}"), 1)
                .expires(exp)
                .build(),
            &flow(),
        );
        store.apply(ops(&o));
    }
    let o = r.register(T0, &Reg::new("alice", "auth.lab", "x", 1).build(), &flow());
    assert_eq!(status(&o), 401);
    assert_eq!(store.0.len(), 2);

    // "restart" 2 minutes later with a new process
    let now = T0 + 120_000;
    let mut r2 = reg();
    for (k, v) in &store.0 {
        r2.restore(k, v, now).expect("decodes");
    }
    assert_eq!(r2.len(), 1, "the expired one is not loaded");
    assert_eq!(
        r2.lookup("keep", "open.lab", now),
        r.lookup("keep", "open.lab", now)
    );
    assert_eq!(
        r2.next_expiry(),
        Some(0),
        "a stored expired binding waits for deletion"
    );
    let dels = r2.expire(now);
    assert_eq!(dels.len(), 1);
    store.apply(&dels);
    assert_eq!(store.0.len(), 1);
    assert_eq!(r2.next_expiry(), Some(T0 + 3_600_000));
    // ownership survives the restart
    let o = r2.register(
        now,
        &Reg::new("keep", "open.lab", "thief", 1).build(),
        &flow(),
    );
    assert_eq!(status(&o), 403);
    let o = r2.register(
        now,
        &Reg::new("keep", "open.lab", "cid-keep", 2).build(),
        &flow(),
    );
    assert_eq!(status(&o), 200);
    // bad records
    let (k, v) = store
        .0
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("one");
    assert_eq!(
        r2.restore(b"other\0c:x", &v, now),
        Err(DecodeError("key does not match the binding"))
    );
    assert!(r2.restore(&k, &v[..v.len() - 1], now).is_err());
    assert_eq!(Binding::decode(&v).map(|b| b.key()), Ok(k));
}

#[test]
fn expire_returns_deletes_in_time_order() {
    let mut r = reg();
    for (u, e) in [("e1", "60"), ("e2", "120"), ("e3", "180")] {
        assert_eq!(
            status(&r.register(
                T0,
                &Reg::new(u, "open.lab", u, 1).expires(e).build(),
                &flow()
            )),
            200
        );
    }
    assert_eq!(r.next_expiry(), Some(T0 + 60_000));
    assert!(r.expire(T0 + 59_999).is_empty());
    assert!(
        r.lookup("e1", "open.lab", T0 + 60_000).is_empty(),
        "lookup hides expired at once"
    );
    let d = r.expire(T0 + 120_000);
    assert_eq!(d.len(), 2);
    assert!(matches!(&d[0], StoreOp::Delete { key } if key.starts_with(b"e1@open.lab\0")));
    assert_eq!(r.len(), 1);
    assert_eq!(r.next_expiry(), Some(T0 + 180_000));
    assert_eq!(r.expire(T0 + 999_999).len(), 1);
    assert_eq!(r.next_expiry(), None);
    assert!(r.is_empty());
}

#[test]
fn reconfigure_keeps_bindings_and_stops_serving_removed_domains() {
    let mut r = reg();
    assert_eq!(
        status(&r.register(T0, &Reg::new("k", "open.lab", "c", 1).build(), &flow())),
        200
    );
    let counts = r.counts();
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.domain.as_str(), c.bindings, c.aors))
            .collect::<Vec<_>>(),
        vec![("auth.lab", 0, 0), ("closed.lab", 0, 0), ("open.lab", 1, 1)]
    );
    let mut cfg = config();
    cfg.domains.retain(|d| d.name != "open.lab");
    r.reconfigure(cfg);
    assert!(r.domain("open.lab").is_none());
    assert_eq!(
        r.lookup("k", "open.lab", T0 + 1).len(),
        1,
        "binding kept until expiry"
    );
    let o = r.register(T0 + 2, &Reg::new("k", "open.lab", "c", 2).build(), &flow());
    assert_eq!(
        (status(&o), result(&o)),
        (403, ReportResult::DomainNotServed)
    );
    assert!(
        r.counts()
            .iter()
            .any(|c| c.domain == "open.lab" && c.bindings == 1)
    );
    r.reconfigure(config());
    assert_eq!(
        status(&r.register(T0 + 3, &Reg::new("k", "open.lab", "c", 3).build(), &flow())),
        200
    );
    assert_eq!(r.len(), 1);
}
