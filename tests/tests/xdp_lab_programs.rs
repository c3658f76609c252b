//! BPF_PROG_TEST_RUN basics of the lab/bench helpers in LAB_OBJECT: `sv_pass`, `sv_sink`,
//! `sv_ceiling`, `sv_gen` (each goes through the verifier here).
//!
//! Needs root and BPF (fails loudly otherwise).
//! Run: `cargo test -p sipveil-tests --test xdp_lab_programs -- --test-threads=1`

use aya::{
    Ebpf, EbpfLoader,
    maps::{DevMapHash, PerCpuArray},
    programs::Xdp,
};
use sipveil_abi::{
    ip4,
    lab::{self, CeilingFlow, GenSources, SinkPorts},
    port,
};
use sipveil_edge::dataplane::objects::LAB_OBJECT;
use sipveil_tests::xdp::*;

fn load(loader: &mut EbpfLoader<'_>, program: &str) -> Ebpf {
    require_root();
    let mut ebpf = loader
        .load(LAB_OBJECT)
        .unwrap_or_else(|e| panic!("loading LAB_OBJECT failed (is BPF available?): {e}"));
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .unwrap_or_else(|| panic!("{program} missing"))
        .try_into()
        .expect("XDP program");
    prog.load()
        .unwrap_or_else(|e| panic!("the verifier rejected {program}: {e:?}"));
    ebpf
}

fn prog<'a>(ebpf: &'a Ebpf, name: &str) -> &'a Xdp {
    ebpf.program(name)
        .expect("program")
        .try_into()
        .expect("xdp")
}

fn per_cpu_sum(ebpf: &Ebpf, map: &str, index: u32) -> u64 {
    let a: PerCpuArray<_, u64> = ebpf
        .map(map)
        .expect("map")
        .try_into()
        .expect("per-CPU array");
    a.get(&index, 0).expect("read").iter().sum()
}

#[test]
fn sv_pass_passes() {
    let _ns = Netns::two_arm();
    let ebpf = load(&mut EbpfLoader::new(), lab::PASS_PROGRAM);
    let frame = UdpFrame::rtp(A, 4000, EA, 20_000).build();
    let r = run_xdp(prog(&ebpf, lab::PASS_PROGRAM), &frame, 1);
    assert_eq!(r.action, XDP_PASS);
    assert_eq!(r.out, frame);
}

#[test]
fn sv_sink_counts_and_drops_its_ports_only() {
    let _ns = Netns::two_arm();
    let ports = SinkPorts {
        min: 30_000,
        max: 30_010,
    };
    let ebpf = load(
        EbpfLoader::new().override_global(lab::SINK_PORTS_GLOBAL, &ports, true),
        lab::SINK_PROGRAM,
    );
    let p = prog(&ebpf, lab::SINK_PROGRAM);
    let hit = UdpFrame::rtp(A, 4000, B, 30_005).build();
    for _ in 0..3 {
        assert_eq!(run_xdp(p, &hit, 1).action, XDP_DROP);
    }
    for port in [29_999, 30_011, 5060] {
        let miss = UdpFrame::rtp(A, 4000, B, port).build();
        let r = run_xdp(p, &miss, 1);
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(r.out, miss);
    }
    let mut tcp = hit.clone();
    tcp[23] = 6;
    assert_eq!(run_xdp(p, &tcp, 1).action, XDP_PASS);
    assert_eq!(run_xdp(p, &hit[..14 + 20 + 3], 1).action, XDP_PASS);
    assert_eq!(per_cpu_sum(&ebpf, lab::SINK_MAP, lab::SINK_PACKETS), 3);
    assert_eq!(
        per_cpu_sum(&ebpf, lab::SINK_MAP, lab::SINK_BYTES),
        3 * hit.len() as u64
    );
}

fn ceiling_flow(egress_ifindex: u32) -> CeilingFlow {
    CeilingFlow {
        match_addr: ip4(EA),
        match_port: port(20_000),
        src_addr: ip4(EB),
        src_port: port(20_002),
        dst_addr: ip4(B),
        dst_port: port(5_000),
        src_mac: MAC_EB,
        dst_mac: MAC_B,
        ttl: RELAY_TTL,
        egress_ifindex,
        ..Default::default()
    }
}

fn assert_ceiling_rewrite(input: &[u8], out: &[u8]) {
    assert_eq!(&out[0..6], &MAC_B);
    assert_eq!(&out[6..12], &MAC_EB);
    assert_eq!(out[22], RELAY_TTL);
    assert_eq!(&out[26..30], &EB);
    assert_eq!(&out[30..34], &B);
    assert_eq!(&out[34..36], &20_002u16.to_be_bytes());
    assert_eq!(&out[36..38], &5_000u16.to_be_bytes());
    assert_eq!(&out[42..], &input[42..]);
    assert_checksums(out);
}

#[test]
fn sv_ceiling_forwards_its_one_flow_with_tx() {
    let _ns = Netns::two_arm();
    let flow = ceiling_flow(0);
    let ebpf = load(
        EbpfLoader::new().override_global(lab::CEILING_FLOW_GLOBAL, &flow, true),
        lab::CEILING_PROGRAM,
    );
    let p = prog(&ebpf, lab::CEILING_PROGRAM);
    let frame = UdpFrame::rtp(A, 4000, EA, 20_000).build();
    let r = run_xdp(p, &frame, 1);
    assert_eq!(r.action, XDP_TX);
    assert_ceiling_rewrite(&frame, &r.out);
    for other in [
        UdpFrame::rtp(A, 4000, EA, 20_004).build(),
        UdpFrame::rtp(A, 4000, EB, 20_000).build(),
    ] {
        let r = run_xdp(p, &other, 1);
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(r.out, other);
    }
}

#[test]
fn sv_ceiling_redirects_through_its_devmap() {
    let ns = Netns::two_arm();
    let eb0 = ns.ifindex("eb0");
    let flow = ceiling_flow(eb0);
    let mut ebpf = load(
        EbpfLoader::new().override_global(lab::CEILING_FLOW_GLOBAL, &flow, true),
        lab::CEILING_PROGRAM,
    );
    let frame = UdpFrame::rtp(A, 4000, EA, 20_000).build();
    let ea0 = ns.ifindex("ea0");
    // Missing devmap entry: passes untouched.
    let r = run_xdp(prog(&ebpf, lab::CEILING_PROGRAM), &frame, ea0);
    assert_eq!(r.action, XDP_PASS);
    assert_eq!(r.out, frame);
    let mut tx: DevMapHash<_> = ebpf
        .map_mut(lab::CEILING_TX_MAP)
        .expect("SVL_TX")
        .try_into()
        .expect("devmap hash");
    tx.insert(eb0, eb0, None, 0).expect("insert");
    let r = run_xdp(prog(&ebpf, lab::CEILING_PROGRAM), &frame, ea0);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_ceiling_rewrite(&frame, &r.out);
}

/// Keeps the calling thread on CPU 0: sv_gen's stamps come from a per-CPU count.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one CPU set; pid 0 = the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn sv_gen_transmits_and_stamps_rtp_sequence() {
    let _ns = Netns::two_arm();
    pin_to_cpu0();
    let flags = lab::GEN_F_RTP_SEQ;
    let ebpf = load(
        EbpfLoader::new().override_global(lab::GEN_FLAGS_GLOBAL, &flags, true),
        lab::GEN_PROGRAM,
    );
    let p = prog(&ebpf, lab::GEN_PROGRAM);
    let frame = UdpFrame::rtp(A, 4000, B, 30_000).build();
    for expected_seq in 1u16..=3 {
        let r = run_xdp(p, &frame, 1);
        assert_eq!(r.action, XDP_TX);
        assert_eq!(&r.out[44..46], &expected_seq.to_be_bytes(), "RTP sequence");
        assert_eq!(
            &r.out[..44],
            &{
                let mut head = frame[..44].to_vec();
                head[40..42].copy_from_slice(&r.out[40..42]);
                head
            }[..]
        );
        assert_checksums(&r.out);
    }
    assert_eq!(per_cpu_sum(&ebpf, lab::GEN_COUNT_MAP, 0), 3);
    // Without the flag: frames leave unchanged.
    let ebpf = load(&mut EbpfLoader::new(), lab::GEN_PROGRAM);
    let r = run_xdp(prog(&ebpf, lab::GEN_PROGRAM), &frame, 1);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(r.out, frame);
}

fn load_gen(flags: u32, sources: GenSources) -> Ebpf {
    load(
        EbpfLoader::new()
            .override_global(lab::GEN_FLAGS_GLOBAL, &flags, true)
            .override_global(lab::GEN_SOURCES_GLOBAL, &sources, true),
        lab::GEN_PROGRAM,
    )
}

#[test]
fn sv_gen_rotates_the_source_address_with_valid_checksums() {
    let _ns = Netns::two_arm();
    pin_to_cpu0();
    const X: [u8; 4] = [198, 18, 3, 2];
    let base = [198, 19, 0, 254];
    let sources = GenSources {
        base: u32::from_be_bytes(base),
        count: 3,
    };
    let ebpf = load_gen(lab::GEN_F_SRC_ROTATE, sources);
    let p = prog(&ebpf, lab::GEN_PROGRAM);
    let register =
        b"REGISTER sip:open.lab SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.3.2:5099;branch=z9hG4bKx\r\n\
        From: <sip:u1@open.lab>;tag=1\r\nTo: <sip:u1@open.lab>\r\nCall-ID: c1\r\n\
        CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let frame = UdpFrame::sip(X, 5099, EA, 5060, register).build();
    // The n-th frame this CPU sends gets base + ((n - 1) mod 3); across the .255 boundary.
    let expected: [[u8; 4]; 7] = [
        [198, 19, 0, 254],
        [198, 19, 0, 255],
        [198, 19, 1, 0],
        [198, 19, 0, 254],
        [198, 19, 0, 255],
        [198, 19, 1, 0],
        [198, 19, 0, 254],
    ];
    for want in expected {
        let r = run_xdp(p, &frame, 1);
        assert_eq!(r.action, XDP_TX);
        assert_eq!(&r.out[26..30], &want, "source address");
        // Only the source address and the two checksums change.
        let mut same = frame.clone();
        same[26..30].copy_from_slice(&want);
        same[24..26].copy_from_slice(&r.out[24..26]);
        same[40..42].copy_from_slice(&r.out[40..42]);
        assert_eq!(r.out, same);
        assert_ne!(
            &r.out[40..42],
            &[0, 0],
            "the UDP checksum was kept, not zeroed"
        );
        assert_checksums(&r.out);
    }
    assert_eq!(per_cpu_sum(&ebpf, lab::GEN_COUNT_MAP, 0), 7);

    // The kernel may hand back its own earlier rewrite (recycled live frames): the fix-up reads
    // the old address from the frame, so a rewritten frame as input still verifies.
    let r1 = run_xdp(p, &frame, 1);
    let r2 = run_xdp(p, &r1.out, 1);
    assert_eq!(&r2.out[26..30], &[198, 19, 1, 0]);
    assert_checksums(&r2.out);

    // A frame without a UDP checksum keeps none; the IPv4 checksum is still fixed.
    let mut no_csum = UdpFrame::sip(X, 5099, EA, 5060, register);
    no_csum.udp_csum = false;
    let no_csum = no_csum.build();
    let r = run_xdp(p, &no_csum, 1);
    assert_eq!(&r.out[26..30], &[198, 19, 0, 254]);
    assert_eq!(&r.out[40..42], &[0, 0]);
    assert_checksums(&r.out);

    // Not IPv4/UDP (here TCP), or too short: left alone.
    let mut tcp = frame.clone();
    tcp[23] = 6;
    assert_eq!(run_xdp(p, &tcp, 1).out, tcp);
    assert_eq!(run_xdp(p, &frame[..40], 1).out, &frame[..40]);
}

#[test]
fn sv_gen_rotation_combines_with_rtp_seq_and_is_off_without_its_flag_or_count() {
    let _ns = Netns::two_arm();
    pin_to_cpu0();
    let sources = GenSources {
        base: u32::from_be_bytes([198, 19, 0, 1]),
        count: 4096,
    };
    let frame = UdpFrame::rtp(A, 4000, B, 30_000).build();
    let ebpf = load_gen(lab::GEN_F_SRC_ROTATE | lab::GEN_F_RTP_SEQ, sources);
    let p = prog(&ebpf, lab::GEN_PROGRAM);
    for n in 1u16..=3 {
        let r = run_xdp(p, &frame, 1);
        assert_eq!(&r.out[44..46], &n.to_be_bytes(), "RTP sequence");
        assert_eq!(&r.out[26..30], &[198, 19, 0, n as u8], "source address");
        assert_checksums(&r.out);
    }
    // Sources set but the flag clear, or the flag set with count 0: the frame is unchanged.
    for (flags, count) in [(0, 4096), (lab::GEN_F_SRC_ROTATE, 0)] {
        let ebpf = load_gen(flags, GenSources { count, ..sources });
        let r = run_xdp(prog(&ebpf, lab::GEN_PROGRAM), &frame, 1);
        assert_eq!(r.action, XDP_TX);
        assert_eq!(r.out, frame, "flags {flags:#x}, count {count}");
    }
}
