//! The registrar's own cost of one authenticated REGISTER exchange, in process (no sockets, no
//! SIP parsing of the requests: they are parsed before the clock starts): `register()` for the
//! first REGISTER (→ 401 challenge) and for the second (MD5 digest, qop=auth → 200 OK), with
//! as many distinct users as exchanges, as in `sv-bench-register`'s authenticated domain.
//!
//! `cargo run --release -p sipveil-registrar --example auth_cost [exchanges] [rounds]`
//! Prints ns per leg for each round (each round: a fresh registrar). A measurement, not a test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use sipveil_registrar::{Registrar, UserEntry, ha1_md5, ha1_sha256};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let mut cfg = config();
    cfg.max_bindings = n + 16;
    if let Some(d) = cfg.domains.iter_mut().find(|d| d.name == "auth.lab") {
        d.users = names
            .iter()
            .map(|u| UserEntry {
                name: u.clone(),
                ha1_sha256: ha1_sha256(u, "auth.lab", "pw"),
                ha1_md5: Some(ha1_md5(u, "auth.lab", "pw")),
                refuse_anonymous: None,
            })
            .collect();
    }
    let firsts: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, u)| Reg::new(u, "auth.lab", &format!("c{i}"), 1).build())
        .collect();
    for round in 0..rounds {
        let mut r = Registrar::new(cfg.clone(), SECRET);
        let (mut t401, mut t200) = (Duration::ZERO, Duration::ZERO);
        let mut ok = 0usize;
        for (i, (u, first)) in names.iter().zip(&firsts).enumerate() {
            let now = T0 + (i as u64) / 10;
            let t = Instant::now();
            let o = r.register(now, first, &flow());
            t401 += t.elapsed();
            if status(&o) != 401 {
                eprintln!("exchange {i}: first answer {} (expected 401)", status(&o));
                std::process::exit(1);
            }
            let (nonce, opaque, _) = challenge(&o, "MD5");
            let second = Reg::new(u, "auth.lab", &format!("c{i}"), 2)
                .header(&authorization(
                    u,
                    "auth.lab",
                    "pw",
                    "MD5",
                    &nonce,
                    &opaque,
                    1,
                    "sip:auth.lab",
                ))
                .build();
            let t = Instant::now();
            let o = r.register(now + 1, &second, &flow());
            t200 += t.elapsed();
            if status(&o) == 200 {
                ok += 1;
            }
        }
        let per = |d: Duration| d.as_nanos() as f64 / n as f64;
        println!(
            "round {round}: {n} exchanges, {ok} x 200; register() ns per leg: 401 {:.0}, 200 {:.0}, both {:.0}",
            per(t401),
            per(t200),
            per(t401 + t200)
        );
    }
}
