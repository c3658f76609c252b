//! The SIP workers' userspace path for one REGISTER in the open domain, without sockets, the
//! store or the lab: datagram → parse → validate → received/rport → scanner check → server
//! transaction → registrar (decide, bindings, 200 OK) → answer through the transaction layer →
//! the bytes to send, plus the per-request metrics, as `edge/src/sip/service.rs` does them.
//!
//! `cargo bench -p sipveil-benches --bench register_path`
//!
//! Every REGISTER is from a new user (as `sv-bench-register` sends them: SIPp, unique users,
//! one Call-ID each), so the registrar and the transaction table grow over a round as in the
//! lab's fixed-rate window. The virtual clock advances 0.5 ms per REGISTER (2 000/s) and the
//! transaction timers run as they fall due. Prints ns per REGISTER for each round (a
//! benchmark: the figure varies with the machine's load; compare trees in one session).
//! `SV_REGISTER_PATH_N` sets the REGISTERs per round (default 40 000), `SV_REGISTER_PATH_ROUNDS`
//! the rounds (default 5).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant as Wall};

use bytes::Bytes;
use sipveil_edge::metrics::{Metrics, WorkerCounters};
use sipveil_edge::shield::ScannerPatterns;
use sipveil_registrar::{
    DomainConfig, ExpiresLimits, FlowInfo, Policy, Proto, RegisterOutcome, Registrar,
    RegistrarConfig,
};
use sipveil_sip::transaction::{Config as TxConfig, Incoming, Instant, Remote, TransactionLayer};
use sipveil_sip::{HeaderName, Limits, Message, parse_datagram};

/// Unix ms of the virtual clock's start.
const T0_MS: u64 = 1_700_000_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The REGISTER `bench_register_open.xml` sends, for user `i` (SIPp fills the same fields).
fn register(i: usize, peer: SocketAddr) -> Bytes {
    let ip = peer.ip();
    let port = peer.port();
    Bytes::from(format!(
        "REGISTER sip:open.lab SIP/2.0\r\n\
         Via: SIP/2.0/UDP {ip}:{port};rport;branch=z9hG4bK-{i}-1-0\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:user{i}@open.lab>;tag=4242b{i}\r\n\
         To: <sip:user{i}@open.lab>\r\n\
         Call-ID: {i}-4242@{ip}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:user{i}@{ip}:{port}>\r\n\
         Expires: 3600\r\n\
         User-Agent: sipp-bench\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn registrar() -> Registrar {
    let open = DomainConfig {
        name: "open.lab".into(),
        policy: Policy::Open,
        realm: "open.lab".into(),
        users: Vec::new(),
        anonymous_callers: true,
        refuse_anonymous: false,
        expires: ExpiresLimits {
            min: 60,
            max: 3600,
            default: 600,
        },
        max_contacts: 4,
        digest_algorithms: Vec::new(),
    };
    let mut r = Registrar::new(
        RegistrarConfig {
            domains: vec![open],
            nonce_ttl_secs: 300,
            max_bindings: 1_000_000,
        },
        [7; 32],
    );
    if let Err(e) = r.set_server(Some("sipveil")) {
        panic!("Server header refused: {e}");
    }
    r
}

/// One round: `datagrams` through the path; returns the bytes answered (so nothing is
/// optimised away) and the wall time.
fn round(datagrams: &[(Bytes, SocketAddr)], local: SocketAddr) -> (usize, Duration) {
    let limits = Limits::default();
    let scanner = ScannerPatterns::default();
    let metrics = Metrics::new();
    metrics.set_domains(&[("open.lab", "open")]);
    let mut counters = WorkerCounters::default();
    let mut reg = registrar();
    let mut layer: TransactionLayer<SocketAddr> =
        match TransactionLayer::new(TxConfig::default(), 1) {
            Ok(l) => l,
            Err(e) => panic!("transaction config: {e:?}"),
        };
    let mut answered = 0usize;
    let start = Wall::now();
    for (i, (d, peer)) in datagrams.iter().enumerate() {
        let offset_us = i as u64 * 500;
        let now = Instant::from_nanos(offset_us * 1000);
        let unix_ms = T0_MS + offset_us / 1000;
        let Ok(Message::Request(mut req)) = parse_datagram(d.clone(), &limits) else {
            panic!("REGISTER {i} does not parse");
        };
        metrics.request_in("REGISTER");
        if let Err(e) = req.validate(&limits) {
            panic!("REGISTER {i} invalid: {e}");
        }
        if let Err(e) = req.apply_received(*peer) {
            panic!("received/rport: {e}");
        }
        let ua = req
            .headers()
            .get_raw_value(&HeaderName::UserAgent)
            .unwrap_or_default();
        let from = req
            .headers()
            .get_raw_value(&HeaderName::From)
            .unwrap_or_default();
        assert!(!scanner.matches(&[ua, from]), "scanner false positive");
        let Incoming::Request { key, request, .. } =
            layer.handle_incoming(now, Remote::unreliable(*peer), Message::Request(req))
        else {
            panic!("REGISTER {i} did not start a transaction");
        };
        let flow = FlowInfo {
            proto: Proto::Udp,
            local,
            peer: *peer,
            worker: 0,
            conn: 0,
        };
        let RegisterOutcome::Commit {
            ops,
            response,
            report,
        } = reg.register(unix_ms, &request, &flow)
        else {
            panic!("REGISTER {i} was not a new binding");
        };
        black_box(ops);
        metrics.registration_cached(
            &mut counters,
            report.domain.as_deref().unwrap_or("other"),
            report.policy.map_or("none", Policy::as_str),
            report.result.as_str(),
        );
        let code = response.status().as_u16();
        if let Err(e) = layer.send_response(now, key, response) {
            panic!("answer refused: {e:?}");
        }
        while let Some(t) = layer.poll_transmit() {
            answered += t.payload.len();
        }
        metrics.response_out_cached(&mut counters, "REGISTER", code);
        metrics.transaction_latency(0, "REGISTER", Duration::from_micros(300));
        if layer.poll_timeout().is_some_and(|t| t <= now) {
            layer.handle_timeout(now);
            while layer.poll_transmit().is_some() {}
        }
    }
    (answered, start.elapsed())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n = env_usize("SV_REGISTER_PATH_N", 40_000);
    let rounds = env_usize("SV_REGISTER_PATH_ROUNDS", 5);
    let local: SocketAddr = "198.18.0.1:5060".parse().expect("literal address");
    // SIPp `-t un`: a socket (a source port) per call; the Via's sent-by is SIPp's address, so
    // the answer gets received= (the lab's SIPp sends from another address than it writes).
    let datagrams: Vec<(Bytes, SocketAddr)> = (0..n)
        .map(|i| {
            let peer = SocketAddr::from(([198, 18, 1, 2], 10_000 + (i % 50_000) as u16));
            let via_addr = SocketAddr::from(([198, 18, 1, 3], peer.port()));
            (register(i, via_addr), peer)
        })
        .collect();
    println!("register_path: {n} REGISTERs per round (new users), {rounds} rounds");
    let mut per = Vec::new();
    for r in 0..rounds {
        let (bytes, t) = round(&datagrams, local);
        let ns = t.as_nanos() as f64 / n as f64;
        per.push(ns);
        println!(
            "  round {r}: {ns:.0} ns/REGISTER ({:.1} ms, {} answer bytes)",
            t.as_secs_f64() * 1e3,
            bytes
        );
    }
    per.sort_by(f64::total_cmp);
    if let Some(median) = per.get(per.len() / 2) {
        println!("register_path: median {median:.0} ns/REGISTER");
    }
}
