//! Per-packet cost of `sipveil_entry` through BPF_PROG_TEST_RUN, against the `sv_ceiling` lab
//! program (one hard-wired flow, no map lookup, no FIB: the floor for this rewrite) and `sv_pass`
//! (an empty program: the cost of the test-run loop itself).
//!
//! The kernel runs the program `REPEAT` times on one buffer and reports the mean duration. It does
//! not reset the buffer between runs, so every relayed case is set up as a cycle whose rewrite
//! produces the next hit: flows (X, p) -> (Y, q) and (Y, q) -> (X, p), with X and Y neighbours on
//! the same interface (XDP_TX) or behind the other interface (XDP_REDIRECT). Each case checks its
//! action and its counter deltas after the run, so the figure is for the path it names.
//!
//! The flood shield's cases (after the relay's, with the shield switched on only for them): a
//! REGISTER that passes its source's bucket (plain and allowlisted, IPv4 and IPv6), a REGISTER
//! over its source's rate, a blocked source, and a relay hit with the shield on (the relay path
//! must not pay for the shield). A passing bucket would run dry over millions of repeats, so those
//! cases refill it before each measurement and use fewer repeats than the bucket holds.
//!
//! Needs root. Run: `cargo bench -p sipveil-benches --bench xdp_relay`

use aya::{EbpfLoader, programs::Xdp};
use sipveil_abi::{
    Counter, Flow, FlowKey, ip4,
    lab::{self, CeilingFlow},
    port,
    shield::{
        ALLOW_REASON_CONFIGURED, AllowData, AllowEntry, BLOCK_REASON_MANUAL, BlockEntry, CLASSES,
        MAX_BURST, MAX_RATE, RateLimit, SHIELD_F_ENABLED, ShieldClass, ShieldConfig, SourceBuckets,
        SourceKey,
    },
};
use sipveil_edge::dataplane::objects::LAB_OBJECT;
use sipveil_tests::xdp::*;

/// Runs per measurement (the kernel averages over them).
const REPEAT: u32 = 2_000_000;
/// Measurements per case; the median is reported.
const ROUNDS: usize = 7;

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    ingress: u32,
    action: u32,
    /// Counter that must move by exactly the number of runs.
    counter: Option<Counter>,
}

fn cycle(entry: &mut Entry, x: ([u8; 4], u16), y: ([u8; 4], u16)) {
    let kx = FlowKey::v4(x.0, x.1);
    let ky = FlowKey::v4(y.0, y.1);
    let flow = |dst: ([u8; 4], u16), reverse| Flow {
        dst_addr: [ip4(dst.0), 0, 0, 0],
        src_addr: [ip4(EA), 0, 0, 0],
        dst_port: port(dst.1),
        src_port: port(30_000),
        reverse,
        ..Default::default()
    };
    entry.put_flow(kx, flow(y, ky));
    entry.put_flow(ky, flow(x, kx));
}

/// Median ns/packet over `ROUNDS` runs of `REPEAT`, checking the action each time.
fn measure(prog: &Xdp, frame: &[u8], ingress: u32, action: u32) -> (f64, f64) {
    let mut ns: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let r = run_xdp_repeat(prog, frame, ingress, REPEAT);
            assert_eq!(r.action, action, "unexpected action");
            r.duration_ns as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    (ns[ROUNDS / 2], ns[0])
}

/// Runs per measurement for the shield's passing cases (fewer than a full bucket holds).
const SHIELD_REPEAT: u32 = 500_000;

const REGISTER: &[u8] = b"REGISTER sip:open.lab SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.1.2:5062;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nTo: <sip:alice@open.lab>\r\nFrom: <sip:alice@open.lab>;tag=1\r\nCall-ID: a1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@198.18.1.2:5062>\r\nContent-Length: 0\r\n\r\n";

/// The shield on, REGISTER limited to `register` (other classes generous), port 5060.
fn shield_config(register: RateLimit) -> ShieldConfig {
    let mut limits = [RateLimit {
        rate: MAX_RATE,
        burst: MAX_BURST,
    }; CLASSES];
    limits[ShieldClass::Register as usize] = register;
    ShieldConfig {
        flags: SHIELD_F_ENABLED,
        udp_ports: [5060, 0, 0, 0],
        tcp_ports: [5060, 5061, 0, 0],
        limits,
        allow_multiplier: 4,
        ..Default::default()
    }
}

struct ShieldCase {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    counter: Counter,
    /// The source whose bucket is refilled (reset to "full") before each measurement.
    refill: Option<SourceKey>,
    /// REGISTER limit while this case runs.
    register: RateLimit,
    repeat: u32,
}

/// Median (min) ns/packet of a shield case, checking its action and counter.
fn measure_shield(entry: &mut Entry, case: &ShieldCase, ingress: u32) -> (f64, f64) {
    entry.set_shield_config(shield_config(case.register));
    let mut ns = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        if let Some(key) = case.refill {
            entry.put_buckets(key, SourceBuckets::default());
        }
        let before = entry.counters();
        let r = run_xdp_repeat(entry.program(), &case.frame, ingress, case.repeat);
        let after = entry.counters();
        assert_eq!(r.action, case.action, "{}: unexpected action", case.name);
        let moved = after[case.counter as usize] - before[case.counter as usize];
        // A rate-limited source earns a token per second of its rate (1/s here): allow those.
        let slack = if case.action == XDP_DROP { 16 } else { 0 };
        assert!(
            moved + slack >= u64::from(case.repeat),
            "{}: counter {} moved {moved} times in {} runs",
            case.name,
            case.counter.name(),
            case.repeat
        );
        ns.push(r.duration_ns as f64);
    }
    ns.sort_by(f64::total_cmp);
    (ns[ROUNDS / 2], ns[0])
}

fn main() {
    require_root();
    let ns = Netns::two_arm();
    let ea0 = ns.ifindex("ea0");
    let eb0 = ns.ifindex("eb0");

    let mut entry = Entry::load();
    entry.set_config(relay_config());
    entry.add_tx_port(eb0);
    cycle(&mut entry, (A, 21_000), (A2, 21_002));
    cycle(&mut entry, (B, 22_000), (B2, 22_002));

    // An RTCP flow (port + 1): its packets are passed up for scrubbing (RTCP privacy).
    let rtcp_key = FlowKey::v4(EA, 21_101);
    entry.put_flow(
        rtcp_key,
        Flow {
            dst_addr: [ip4(B), 0, 0, 0],
            src_addr: [ip4(EB), 0, 0, 0],
            dst_port: port(5_001),
            src_port: port(22_101),
            flags: sipveil_abi::FLOW_F_RTCP,
            reverse: rtcp_key,
            ..Default::default()
        },
    );
    let mut rtcp = UdpFrame::rtp(A, 4001, EA, 21_101);
    rtcp.payload[1] = 200;

    let mut tcp = UdpFrame::rtp(A, 4000, EA, 5060).build();
    tcp[23] = 6;
    let cases = [
        Case {
            name: "entry: relay hit, XDP_TX",
            frame: UdpFrame::rtp(A2, 4000, A, 21_000).build(),
            ingress: ea0,
            action: XDP_TX,
            counter: Some(Counter::RelayedTx),
        },
        Case {
            name: "entry: relay hit, XDP_REDIRECT",
            frame: UdpFrame::rtp(A, 4000, B, 22_000).build(),
            ingress: ea0,
            action: XDP_REDIRECT,
            counter: Some(Counter::RelayedRedirect),
        },
        Case {
            name: "entry: relay port, no flow (miss)",
            frame: UdpFrame::rtp(A, 4000, EA, 20_100).build(),
            ingress: ea0,
            action: XDP_PASS,
            counter: Some(Counter::NoFlowPass),
        },
        Case {
            name: "entry: RTCP flow, passed up to scrub",
            frame: rtcp.build(),
            ingress: ea0,
            action: XDP_PASS,
            counter: Some(Counter::RtcpPass),
        },
        Case {
            name: "entry: UDP outside relay range (SIP)",
            frame: UdpFrame::rtp(A, 4000, EA, 5060).build(),
            ingress: ea0,
            action: XDP_PASS,
            counter: Some(Counter::NotOursPass),
        },
        Case {
            name: "entry: not UDP (TCP)",
            frame: tcp,
            ingress: ea0,
            action: XDP_PASS,
            counter: Some(Counter::NotOursPass),
        },
    ];

    println!(
        "BPF_PROG_TEST_RUN, repeat {REPEAT}, median (min) of {ROUNDS} runs, 214-byte RTP frame"
    );
    let mut results = Vec::new();
    for case in &cases {
        let before = entry.counters();
        let (median, min) = measure(entry.program(), &case.frame, case.ingress, case.action);
        let after = entry.counters();
        if let Some(c) = case.counter {
            let runs = u64::from(REPEAT) * ROUNDS as u64;
            assert_eq!(
                after[c as usize] - before[c as usize],
                runs,
                "{}: counter {} did not move once per run",
                case.name,
                c.name()
            );
        }
        println!("{:<44} {median:>6.1} ns/packet  (min {min:.1})", case.name);
        results.push((case.name, median));
    }

    // The ceiling: one hard-wired flow that maps onto itself, so every run is a hit.
    let ceiling = |egress: u32| CeilingFlow {
        match_addr: ip4(B),
        match_port: port(22_000),
        src_addr: ip4(EA),
        src_port: port(30_000),
        dst_addr: ip4(B),
        dst_port: port(22_000),
        src_mac: MAC_EB,
        dst_mac: MAC_B,
        ttl: RELAY_TTL,
        egress_ifindex: egress,
        ..Default::default()
    };
    let frame = UdpFrame::rtp(A, 4000, B, 22_000).build();
    let mut ceiling_ns = Vec::new();
    for (name, egress, action) in [
        ("ceiling: one flow, XDP_TX", 0, XDP_TX),
        ("ceiling: one flow, XDP_REDIRECT", eb0, XDP_REDIRECT),
    ] {
        let flow = ceiling(egress);
        let mut ebpf = EbpfLoader::new()
            .override_global(lab::CEILING_FLOW_GLOBAL, &flow, true)
            .load(LAB_OBJECT)
            .expect("load LAB_OBJECT");
        if egress != 0 {
            let mut tx: aya::maps::DevMapHash<_> = ebpf
                .map_mut(lab::CEILING_TX_MAP)
                .expect("SVL_TX")
                .try_into()
                .expect("devmap hash");
            tx.insert(egress, egress, None, 0).expect("insert");
        }
        let prog: &mut Xdp = ebpf
            .program_mut(lab::CEILING_PROGRAM)
            .expect("sv_ceiling")
            .try_into()
            .expect("xdp");
        prog.load().expect("verifier accepts sv_ceiling");
        let (median, min) = measure(prog, &frame, ea0, action);
        println!("{name:<44} {median:>6.1} ns/packet  (min {min:.1})");
        ceiling_ns.push(median);
    }

    let mut ebpf = EbpfLoader::new().load(LAB_OBJECT).expect("load LAB_OBJECT");
    let prog: &mut Xdp = ebpf
        .program_mut(lab::PASS_PROGRAM)
        .expect("sv_pass")
        .try_into()
        .expect("xdp");
    prog.load().expect("verifier accepts sv_pass");
    let (pass_ns, pass_min) = measure(prog, &frame, ea0, XDP_PASS);
    println!(
        "{:<44} {pass_ns:>6.1} ns/packet  (min {pass_min:.1})",
        "empty program (sv_pass)"
    );

    // --- the shield ---
    let c_host = [198, 18, 1, 7];
    let blocked = [198, 18, 1, 8];
    let v6_src = [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x11,
    ];
    let v6_edge = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // A few unrelated allowlist entries, so a miss walks a non-empty trie.
    for (net, bits) in [([198, 51, 100, 0], 24), ([203, 0, 113, 0], 24)] {
        entry.allow(
            AllowData::v4(net),
            bits,
            AllowEntry {
                expires_ns: 0,
                multiplier: 0,
                flags: 0,
                reason: ALLOW_REASON_CONFIGURED,
            },
        );
    }
    entry.allow(
        AllowData::v4(A2),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    entry.block(
        SourceKey::v4(blocked),
        BlockEntry {
            expires_ns: 0,
            reason: BLOCK_REASON_MANUAL,
            _pad: 0,
        },
    );
    let generous = RateLimit {
        rate: MAX_RATE,
        burst: MAX_BURST,
    };
    let slow = RateLimit { rate: 1, burst: 1 };
    let sip = |src: [u8; 4]| UdpFrame::sip(src, 5062, EA, 5060, REGISTER).build();
    let mut udp6 = Vec::new();
    udp6.extend_from_slice(&5062u16.to_be_bytes());
    udp6.extend_from_slice(&5060u16.to_be_bytes());
    udp6.extend_from_slice(&((8 + REGISTER.len()) as u16).to_be_bytes());
    udp6.extend_from_slice(&[0, 0]);
    udp6.extend_from_slice(REGISTER);
    let shield_cases = [
        ShieldCase {
            name: "shield: REGISTER pass (bucket)",
            frame: sip(A),
            action: XDP_PASS,
            counter: Counter::ShieldPass,
            refill: Some(SourceKey::v4(A)),
            register: generous,
            repeat: SHIELD_REPEAT,
        },
        ShieldCase {
            name: "shield: REGISTER pass, allowlisted",
            frame: sip(A2),
            action: XDP_PASS,
            counter: Counter::ShieldAllowPass,
            refill: Some(SourceKey::v4(A2)),
            register: generous,
            repeat: SHIELD_REPEAT,
        },
        ShieldCase {
            name: "shield: REGISTER pass, IPv6 /64",
            frame: ipv6_frame(v6_src, v6_edge, 17, &udp6),
            action: XDP_PASS,
            counter: Counter::ShieldPass,
            refill: Some(SourceKey::v6(v6_src)),
            register: generous,
            repeat: SHIELD_REPEAT,
        },
        ShieldCase {
            name: "shield: REGISTER rate drop",
            frame: sip(c_host),
            action: XDP_DROP,
            counter: Counter::DropRateRegister,
            refill: None,
            register: slow,
            repeat: REPEAT,
        },
        ShieldCase {
            name: "shield: blocklist drop",
            frame: sip(blocked),
            action: XDP_DROP,
            counter: Counter::DropBlocked,
            refill: None,
            register: generous,
            repeat: REPEAT,
        },
    ];
    // The drop case's source starts drained: one packet takes its only token.
    entry.set_shield_config(shield_config(slow));
    let _ = entry.run(&sip(c_host), ea0);
    let mut shield_ns = Vec::new();
    for case in &shield_cases {
        let (median, min) = measure_shield(&mut entry, case, ea0);
        println!("{:<44} {median:>6.1} ns/packet  (min {min:.1})", case.name);
        shield_ns.push((case.name, median));
    }
    // The relay with the shield on: the same path as before, same cost expected.
    entry.set_shield_config(shield_config(generous));
    let relay_tx = &cases[0];
    let before = entry.counters();
    let (relay_on_ns, relay_on_min) = measure(entry.program(), &relay_tx.frame, ea0, XDP_TX);
    let after = entry.counters();
    assert_eq!(
        after[Counter::RelayedTx as usize] - before[Counter::RelayedTx as usize],
        u64::from(REPEAT) * ROUNDS as u64,
        "relay hit with the shield on"
    );
    println!(
        "{:<44} {relay_on_ns:>6.1} ns/packet  (min {relay_on_min:.1})",
        "entry: relay hit, XDP_TX, shield on"
    );

    println!();
    for (i, kind) in ["XDP_TX", "XDP_REDIRECT"].iter().enumerate() {
        let entry_ns = results[i].1;
        println!(
            "relay hit {kind}: entry / ceiling = {:.2}  (entry {entry_ns:.1} ns, ceiling {:.1} ns, target <= 100 ns)",
            entry_ns / ceiling_ns[i],
            ceiling_ns[i]
        );
    }
    println!(
        "relay hit XDP_TX with the shield on / off = {:.2}",
        relay_on_ns / results[0].1
    );
    for (name, ns) in &shield_ns {
        println!(
            "{name}: {ns:.1} ns, {:.1} ns above the empty program",
            ns - pass_ns
        );
    }
}
