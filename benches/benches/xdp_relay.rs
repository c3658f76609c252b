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
//! Needs root. Run: `cargo bench -p sipveil-benches --bench xdp_relay`

use aya::{EbpfLoader, programs::Xdp};
use sipveil_abi::{
    Counter, Flow, FlowKey, ip4,
    lab::{self, CeilingFlow},
    port,
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

    println!();
    for (i, kind) in ["XDP_TX", "XDP_REDIRECT"].iter().enumerate() {
        let entry_ns = results[i].1;
        println!(
            "relay hit {kind}: entry / ceiling = {:.2}  (entry {entry_ns:.1} ns, ceiling {:.1} ns, target <= 100 ns)",
            entry_ns / ceiling_ns[i],
            ceiling_ns[i]
        );
    }
}
