//! BPF_PROG_TEST_RUN packet fixtures for `sipveil_entry` (house rule 7): input frame, map setup,
//! expected action, expected output bytes, counter deltas.
//!
//! Needs root and BPF (fails loudly otherwise). Each test enters its own throwaway network
//! namespace (routes and permanent neighbours for `bpf_fib_lookup`) with setns on the test thread.
//! Run: `cargo test -p sipveil-tests --test xdp_relay_fixtures -- --test-threads=1`

use sipveil_abi::{
    ABI_VERSION, Config, Counter, FLOW_F_LATCH, FLOW_F_LATCHED, FLOW_F_RTCP, FLOW_F_RTCP_MUX,
    FLOW_F_STRICT, FlowKey, ip4, port,
};
use sipveil_tests::xdp::*;

/// A namespace, the loaded program, the relay config and the A<->B flow pair
/// EA:20000 <-> EB:20002 (plus A -> A2 hairpin EA:20010 -> EA:20012), TX port eb0 registered.
struct Fixture {
    ns: Netns,
    entry: Entry,
    ea0: u32,
}

const PA: u16 = 20_000;
const PB: u16 = 20_002;
const A_PORT: u16 = 4_000;
const B_PORT: u16 = 5_000;

impl Fixture {
    fn new(flags: u16) -> Fixture {
        let ns = Netns::two_arm();
        let mut entry = Entry::load();
        entry.set_config(relay_config());
        for (k, f) in flow_pair((EA, PA), (A, A_PORT), (EB, PB), (B, B_PORT), flags) {
            entry.put_flow(k, f);
        }
        let eb0 = ns.ifindex("eb0");
        entry.add_tx_port(eb0);
        let ea0 = ns.ifindex("ea0");
        Fixture { ns, entry, ea0 }
    }

    /// A's RTP packet to EA:PA.
    fn a_to_edge(&self) -> UdpFrame {
        UdpFrame::rtp(A, A_PORT, EA, PA)
    }

    /// Runs `frame` on ea0 and returns (run, counter deltas base).
    fn run(&self, frame: &[u8]) -> (Run, [u64; Counter::COUNT as usize]) {
        let before = self.entry.counters();
        let r = self.entry.run(frame, self.ea0);
        (r, before)
    }

    fn assert_deltas(&self, before: &[u64; Counter::COUNT as usize], expected: &[(Counter, u64)]) {
        assert_deltas(before, &self.entry.counters(), expected);
    }

    /// The frame passed unchanged with exactly `reason` (and Rx) counted.
    fn assert_pass(&self, frame: &[u8], reason: Counter) {
        let (r, before) = self.run(frame);
        assert_eq!(
            r.action,
            XDP_PASS,
            "expected XDP_PASS for {}",
            reason.name()
        );
        assert_eq!(r.out, frame, "a passed frame must be byte-identical");
        self.assert_deltas(&before, &[(Counter::Rx, 1), (reason, 1)]);
    }
}

/// Checks a relayed frame against the input: new MACs, addresses, ports, TTL; everything else
/// (tos, id, DF, payload) unchanged; both checksums valid from scratch.
fn assert_rewritten(
    input: &[u8],
    out: &[u8],
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
) {
    assert_eq!(out.len(), input.len());
    assert_eq!(&out[0..6], &macs.1, "dst MAC");
    assert_eq!(&out[6..12], &macs.0, "src MAC");
    assert_eq!(
        &out[12..22],
        &input[12..22],
        "ethertype, version, tos, len, id, frag"
    );
    assert_eq!(out[22], RELAY_TTL, "TTL");
    assert_eq!(out[23], 17, "protocol");
    assert_eq!(&out[26..30], &src.0, "source address");
    assert_eq!(&out[30..34], &dst.0, "destination address");
    assert_eq!(&out[34..36], &src.1.to_be_bytes(), "source port");
    assert_eq!(&out[36..38], &dst.1.to_be_bytes(), "destination port");
    assert_eq!(&out[38..40], &input[38..40], "UDP length");
    assert_eq!(&out[42..], &input[42..], "payload");
    assert_checksums(out);
}

fn ip_len(frame: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([frame[16], frame[17]]))
}

#[test]
fn hit_redirect_to_other_interface() {
    let fx = Fixture::new(0);
    let frame = fx.a_to_edge().build();
    assert_checksums(&frame);
    let (r, before) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B), (EB, PB), (B, B_PORT));
    let bytes = ip_len(&frame);
    fx.assert_deltas(
        &before,
        &[
            (Counter::Rx, 1),
            (Counter::RelayedRedirect, 1),
            (Counter::RelayedBytes, bytes),
        ],
    );
    let flow = fx.entry.flow(FlowKey::v4(EA, PA));
    assert_eq!(flow.packets, 1);
    assert_eq!(flow.bytes, bytes);
    assert_ne!(flow.last_seen_ns, 0);
    assert_eq!(
        flow.flags & FLOW_F_LATCHED,
        0,
        "no latching without FLOW_F_LATCH"
    );
    // The reverse direction, received on eb0, goes back out of ea0 the same way.
    let ea0 = fx.ea0;
    let mut fx = fx;
    fx.entry.add_tx_port(ea0);
    let back = UdpFrame {
        src_mac: MAC_B,
        dst_mac: MAC_EB,
        ..UdpFrame::rtp(B, B_PORT, EB, PB)
    }
    .build();
    let before = fx.entry.counters();
    let r = fx.entry.run(&back, fx.ns.ifindex("eb0"));
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&back, &r.out, (MAC_EA, MAC_A), (EA, PA), (A, A_PORT));
    assert_deltas(
        &before,
        &fx.entry.counters(),
        &[
            (Counter::Rx, 1),
            (Counter::RelayedRedirect, 1),
            (Counter::RelayedBytes, ip_len(&back)),
        ],
    );
}

#[test]
fn hit_tx_same_interface() {
    let mut fx = Fixture::new(0);
    // A -> A2 hairpin: EA:20010 -> A2:6000 from EA:20012, out of ea0 again.
    for (k, f) in flow_pair((EA, 20_010), (A, A_PORT), (EA, 20_012), (A2, 6_000), 0) {
        fx.entry.put_flow(k, f);
    }
    let frame = UdpFrame::rtp(A, A_PORT, EA, 20_010).build();
    let (r, before) = fx.run(&frame);
    assert_eq!(r.action, XDP_TX);
    assert_rewritten(&frame, &r.out, (MAC_EA, MAC_A2), (EA, 20_012), (A2, 6_000));
    fx.assert_deltas(
        &before,
        &[
            (Counter::Rx, 1),
            (Counter::RelayedTx, 1),
            (Counter::RelayedBytes, ip_len(&frame)),
        ],
    );
}

#[test]
fn hit_without_udp_checksum_keeps_zero() {
    let fx = Fixture::new(0);
    let frame = UdpFrame {
        udp_csum: false,
        ..fx.a_to_edge()
    }
    .build();
    let (r, _) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_eq!(&r.out[40..42], &[0, 0], "UDP checksum 0 (none) must stay 0");
    assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B), (EB, PB), (B, B_PORT));
}

#[test]
fn checksums_stay_valid_across_many_inputs() {
    // Incremental updates against from-scratch recomputation over varied headers and payloads.
    let fx = Fixture::new(0);
    for i in 0u16..64 {
        let mut f = fx.a_to_edge();
        f.id = i.wrapping_mul(7919);
        f.tos = (i as u8) << 2;
        f.ttl = 2 + (i as u8) * 3;
        f.payload[0] = i as u8;
        f.payload[1] = (i as u8).wrapping_mul(37);
        f.payload.truncate(12 + usize::from(i) * 3);
        let frame = f.build();
        let (r, _) = fx.run(&frame);
        assert_eq!(r.action, XDP_REDIRECT, "input {i}");
        assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B), (EB, PB), (B, B_PORT));
    }
}

#[test]
fn miss_in_relay_range_passes() {
    let fx = Fixture::new(0);
    let frame = UdpFrame::rtp(A, A_PORT, EA, 20_100).build();
    fx.assert_pass(&frame, Counter::NoFlowPass);
}

#[test]
fn udp_outside_relay_range_skips_lookup() {
    let fx = Fixture::new(0);
    let frame = UdpFrame::rtp(A, A_PORT, EA, 5060).build();
    fx.assert_pass(&frame, Counter::NotOursPass);
    let frame = UdpFrame::rtp(A, A_PORT, EA, PORT_MAX + 1).build();
    fx.assert_pass(&frame, Counter::NotOursPass);
}

#[test]
fn latch_learns_source_and_updates_reverse_flow() {
    let fx = Fixture::new(FLOW_F_LATCH);
    // A is behind a NAT: its packets arrive from 198.18.1.2:40000, not the announced :4000.
    let frame = UdpFrame::rtp(A, 40_000, EA, PA).build();
    let (r, before) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B), (EB, PB), (B, B_PORT));
    fx.assert_deltas(
        &before,
        &[
            (Counter::Rx, 1),
            (Counter::Latched, 1),
            (Counter::RelayedRedirect, 1),
            (Counter::RelayedBytes, ip_len(&frame)),
        ],
    );
    let flow = fx.entry.flow(FlowKey::v4(EA, PA));
    assert_ne!(flow.flags & FLOW_F_LATCHED, 0);
    assert_eq!(flow.latched_addr, [ip4(A), 0, 0, 0]);
    assert_eq!(flow.latched_port, port(40_000));
    let reverse = fx.entry.flow(FlowKey::v4(EB, PB));
    assert_eq!(reverse.dst_addr, [ip4(A), 0, 0, 0]);
    assert_eq!(
        reverse.dst_port,
        port(40_000),
        "reverse flow now sends to the NAT port"
    );
    assert_eq!(reverse.flags & FLOW_F_LATCHED, 0);

    // Latched once: a packet from elsewhere does not move it again.
    let other = UdpFrame::rtp(A, 40_002, EA, PA).build();
    let (r, before) = fx.run(&other);
    assert_eq!(r.action, XDP_REDIRECT);
    fx.assert_deltas(
        &before,
        &[
            (Counter::Rx, 1),
            (Counter::RelayedRedirect, 1),
            (Counter::RelayedBytes, ip_len(&other)),
        ],
    );
    assert_eq!(fx.entry.flow(FlowKey::v4(EB, PB)).dst_port, port(40_000));

    // B's answer goes to the latched NAT port.
    let mut fx = fx;
    let ea0 = fx.ea0;
    fx.entry.add_tx_port(ea0);
    let back = UdpFrame {
        src_mac: MAC_B,
        dst_mac: MAC_EB,
        ..UdpFrame::rtp(B, B_PORT, EB, PB)
    }
    .build();
    let r = fx.entry.run(&back, fx.ns.ifindex("eb0"));
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&back, &r.out, (MAC_EA, MAC_A), (EA, PA), (A, 40_000));
}

#[test]
fn strict_source_mismatch_drops() {
    let fx = Fixture::new(FLOW_F_STRICT);
    for frame in [
        UdpFrame::rtp([198, 18, 1, 9], A_PORT, EA, PA).build(), // wrong address
        UdpFrame::rtp(A, A_PORT + 2, EA, PA).build(),           // wrong port
    ] {
        let (r, before) = fx.run(&frame);
        assert_eq!(r.action, XDP_DROP);
        assert_eq!(r.out, frame, "a dropped frame is not rewritten");
        fx.assert_deltas(&before, &[(Counter::Rx, 1), (Counter::StrictDrop, 1)]);
    }
    assert_eq!(fx.entry.flow(FlowKey::v4(EA, PA)).packets, 0);
}

#[test]
fn strict_source_match_relays() {
    let fx = Fixture::new(FLOW_F_STRICT | FLOW_F_LATCH);
    let frame = fx.a_to_edge().build();
    let (r, before) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B), (EB, PB), (B, B_PORT));
    fx.assert_deltas(
        &before,
        &[
            (Counter::Rx, 1),
            (Counter::Latched, 1),
            (Counter::RelayedRedirect, 1),
            (Counter::RelayedBytes, ip_len(&frame)),
        ],
    );
}

#[test]
fn strict_with_any_port_checks_address_only() {
    let mut fx = Fixture::new(FLOW_F_STRICT);
    let key = FlowKey::v4(EA, PA);
    let mut flow = fx.entry.flow(key);
    flow.expect_port = 0;
    fx.entry.put_flow(key, flow);
    let frame = UdpFrame::rtp(A, 40_000, EA, PA).build();
    let (r, _) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    let frame = UdpFrame::rtp([198, 18, 1, 9], 40_000, EA, PA).build();
    let (r, _) = fx.run(&frame);
    assert_eq!(r.action, XDP_DROP);
}

/// Installs the RTCP flow pair EA:PA+1 <-> EB:PB+1 with `extra` flags besides `FLOW_F_RTCP`.
fn add_rtcp_pair(fx: &mut Fixture, extra: u16) {
    for (k, f) in flow_pair(
        (EA, PA + 1),
        (A, A_PORT + 1),
        (EB, PB + 1),
        (B, B_PORT + 1),
        FLOW_F_RTCP | extra,
    ) {
        fx.entry.put_flow(k, f);
    }
}

#[test]
fn rtcp_flow_on_port_plus_one_passes_to_userspace() {
    // RTCP privacy (ABI 3): the userspace relay scrubs SDES, so the program hands RTCP up
    // untouched, does not latch or count it on the flow, and RTP on the RTP port stays in XDP.
    let mut fx = Fixture::new(0);
    add_rtcp_pair(&mut fx, FLOW_F_LATCH);
    for pt in [200u8, 201, 202, 203, 204, 205, 206] {
        let mut f = UdpFrame::rtp(A, A_PORT + 1, EA, PA + 1);
        f.payload[1] = pt;
        fx.assert_pass(&f.build(), Counter::RtcpPass);
    }
    // Whatever arrives on an RTCP port is RTCP: even a payload that looks like RTP.
    fx.assert_pass(
        &UdpFrame::rtp(A, A_PORT + 1, EA, PA + 1).build(),
        Counter::RtcpPass,
    );
    let flow = fx.entry.flow(FlowKey::v4(EA, PA + 1));
    assert_eq!(flow.packets, 0, "userspace counts what it relays");
    assert_eq!(
        flow.flags & FLOW_F_LATCHED,
        0,
        "userspace latches RTCP flows"
    );
    // RTP on the RTP port of the same relay is still relayed in XDP.
    let frame = fx.a_to_edge().build();
    let (r, before) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B), (EB, PB), (B, B_PORT));
    fx.assert_deltas(
        &before,
        &[
            (Counter::Rx, 1),
            (Counter::RelayedRedirect, 1),
            (Counter::RelayedBytes, ip_len(&frame)),
        ],
    );
}

#[test]
fn strict_rtcp_from_another_source_is_dropped_in_xdp() {
    let mut fx = Fixture::new(0);
    add_rtcp_pair(&mut fx, FLOW_F_STRICT);
    let mut f = UdpFrame::rtp([198, 18, 1, 9], A_PORT + 1, EA, PA + 1);
    f.payload[1] = 201;
    let (r, before) = fx.run(&f.build());
    assert_eq!(
        r.action, XDP_DROP,
        "a spoofed RTCP flood never reaches userspace"
    );
    fx.assert_deltas(&before, &[(Counter::Rx, 1), (Counter::StrictDrop, 1)]);
    let mut f = UdpFrame::rtp(A, A_PORT + 1, EA, PA + 1);
    f.payload[1] = 201;
    fx.assert_pass(&f.build(), Counter::RtcpPass);
}

#[test]
fn rtcp_mux_passes_rtcp_and_relays_rtp() {
    let fx = Fixture::new(FLOW_F_RTCP_MUX);
    // Second byte: 192..=223 is RTCP (RFC 5761); 0 (PCMU), 96/0xe0 (PT 96 with marker) are RTP.
    for (second_byte, rtcp) in [
        (0u8, false),
        (96, false),
        (0x80, false), // PCMU with the marker bit
        (191, false),
        (192, true),
        (200, true), // SR
        (201, true), // RR
        (202, true), // SDES
        (223, true),
        (224, false), // PT 96 + marker
    ] {
        let mut f = fx.a_to_edge();
        f.payload[1] = second_byte;
        let frame = f.build();
        if rtcp {
            fx.assert_pass(&frame, Counter::RtcpPass);
            continue;
        }
        let (r, before) = fx.run(&frame);
        assert_eq!(r.action, XDP_REDIRECT, "second byte {second_byte}");
        fx.assert_deltas(
            &before,
            &[
                (Counter::Rx, 1),
                (Counter::RelayedRedirect, 1),
                (Counter::RelayedBytes, ip_len(&frame)),
            ],
        );
    }
    let flow = fx.entry.flow(FlowKey::v4(EA, PA));
    assert_eq!(
        flow.packets, 5,
        "only the RTP packets were relayed on the muxed flow"
    );
    // A muxed packet too short to carry an RTP header is relayed as non-RTCP.
    let mut f = fx.a_to_edge();
    f.payload.truncate(1);
    let frame = f.build();
    let (r, before) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    fx.assert_deltas(
        &before,
        &[
            (Counter::Rx, 1),
            (Counter::RelayedRedirect, 1),
            (Counter::RelayedBytes, ip_len(&frame)),
        ],
    );
}

#[test]
fn truncated_frames_pass_as_malformed() {
    let fx = Fixture::new(0);
    let full = fx.a_to_edge().build();
    // Ethernet header only, IPv4 header cut, UDP header cut.
    for cut in [14, 14 + 10, 14 + 19, 14 + 20, 14 + 20 + 4, 14 + 20 + 7] {
        fx.assert_pass(&full[..cut], Counter::MalformedPass);
    }
    // IPv4 total length longer than the frame.
    let mut f = full.clone();
    f.truncate(full.len() - 10);
    fx.assert_pass(&f, Counter::MalformedPass);
    // UDP length longer than the IP payload.
    let mut f = full.clone();
    f[38..40].copy_from_slice(&2000u16.to_be_bytes());
    fx.assert_pass(&f, Counter::MalformedPass);
    // UDP length below 8, IPv4 total length below 28, IHL below 5, version 6 in an IPv4 frame.
    let mut f = full.clone();
    f[38..40].copy_from_slice(&7u16.to_be_bytes());
    fx.assert_pass(&f, Counter::MalformedPass);
    let mut f = full.clone();
    f[16..18].copy_from_slice(&27u16.to_be_bytes());
    fx.assert_pass(&f, Counter::MalformedPass);
    let mut f = full.clone();
    f[14] = 0x44;
    fx.assert_pass(&f, Counter::MalformedPass);
    let mut f = full.clone();
    f[14] = 0x65;
    fx.assert_pass(&f, Counter::MalformedPass);
    // Ethernet padding after the datagram is fine.
    let mut f = full.clone();
    f.extend_from_slice(&[0; 6]);
    let (r, _) = fx.run(&f);
    assert_eq!(r.action, XDP_REDIRECT);
    // Frames shorter than an Ethernet header cannot be fed to BPF_PROG_TEST_RUN at all (the
    // kernel refuses them with EINVAL), so the program's "eth truncated" branch is only reachable
    // from a driver; it returns MalformedPass like the others.
}

#[test]
fn ip_options_pass() {
    let fx = Fixture::new(0);
    let mut f = fx.a_to_edge();
    f.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    fx.assert_pass(&f.build(), Counter::IpOptionsPass);
    f.dport = 5060;
    fx.assert_pass(&f.build(), Counter::NotOursPass);
    // Options but the UDP header is cut: malformed.
    let frame = f.build();
    fx.assert_pass(&frame[..14 + 24 + 4], Counter::MalformedPass);
}

#[test]
fn fragments_pass() {
    let fx = Fixture::new(0);
    let mut f = fx.a_to_edge();
    f.frag_off = 0x2000; // MF, offset 0: the first fragment
    fx.assert_pass(&f.build(), Counter::FragmentPass);
    f.frag_off = 0x0010; // offset 128 bytes, last fragment
    fx.assert_pass(&f.build(), Counter::FragmentPass);
    f.frag_off = 0x2010; // middle fragment
    fx.assert_pass(&f.build(), Counter::FragmentPass);
    // A first fragment to a port outside the range is simply not ours.
    f.frag_off = 0x2000;
    f.dport = 5060;
    fx.assert_pass(&f.build(), Counter::NotOursPass);
}

#[test]
fn non_udp_passes() {
    let fx = Fixture::new(0);
    for proto in [1u8, 6, 47, 132] {
        let mut frame = fx.a_to_edge().build();
        frame[23] = proto;
        let c = ipv4_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
        fx.assert_pass(&frame, Counter::NotOursPass);
    }
}

#[test]
fn non_ipv4_passes() {
    let fx = Fixture::new(0);
    // ARP request who-has 198.18.1.1 tell 198.18.1.2.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&A);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&EA);
    arp.resize(60, 0);
    fx.assert_pass(&arp, Counter::NotOursPass);
    // IPv6/UDP to a relay port.
    let mut v6 = Vec::new();
    v6.extend_from_slice(&MAC_EA);
    v6.extend_from_slice(&MAC_A);
    v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 17, 64]);
    v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&A_PORT.to_be_bytes());
    v6.extend_from_slice(&PA.to_be_bytes());
    v6.extend_from_slice(&[0, 16, 0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0]);
    fx.assert_pass(&v6, Counter::NotOursPass);
    // An 802.1Q-tagged frame (VLAN is not handled).
    let mut tagged = fx.a_to_edge().build();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    fx.assert_pass(&tagged, Counter::NotOursPass);
}

#[test]
fn ttl_one_passes_so_the_stack_answers() {
    let fx = Fixture::new(FLOW_F_LATCH);
    let mut f = fx.a_to_edge();
    f.ttl = 1;
    fx.assert_pass(&f.build(), Counter::TtlPass);
    f.ttl = 0;
    fx.assert_pass(&f.build(), Counter::TtlPass);
    let flow = fx.entry.flow(FlowKey::v4(EA, PA));
    assert_eq!(
        flow.flags & FLOW_F_LATCHED,
        0,
        "a passed packet does not latch"
    );
    assert_eq!(flow.packets, 0);
}

#[test]
fn config_missing_or_wrong_passes_everything() {
    let ns = Netns::two_arm();
    let mut entry = Entry::load();
    for (k, f) in flow_pair((EA, PA), (A, A_PORT), (EB, PB), (B, B_PORT), 0) {
        entry.put_flow(k, f);
    }
    entry.add_tx_port(ns.ifindex("eb0"));
    let ea0 = ns.ifindex("ea0");
    let frame = UdpFrame::rtp(A, A_PORT, EA, PA).build();
    let check = |entry: &Entry| {
        let before = entry.counters();
        let r = entry.run(&frame, ea0);
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(r.out, frame);
        assert_deltas(
            &before,
            &entry.counters(),
            &[(Counter::Rx, 1), (Counter::ConfigPass, 1)],
        );
    };
    // Never written: the array entry is all zero (abi_version 0).
    check(&entry);
    entry.set_config(Config {
        abi_version: ABI_VERSION + 1,
        ..relay_config()
    });
    check(&entry);
    entry.set_config(Config {
        flags: 0,
        ..relay_config()
    });
    check(&entry);
    // And with the right config it relays.
    entry.set_config(relay_config());
    assert_eq!(entry.run(&frame, ea0).action, XDP_REDIRECT);
}

#[test]
fn fib_failure_passes_unchanged() {
    let mut fx = Fixture::new(0);
    // Destination on eb0's subnet without a neighbour entry.
    let key = FlowKey::v4(EA, PA);
    let mut flow = fx.entry.flow(key);
    flow.dst_addr = [ip4(B_NO_NEIGH), 0, 0, 0];
    fx.entry.put_flow(key, flow);
    fx.assert_pass(&fx.a_to_edge().build(), Counter::FibFailPass);
    // No route at all.
    flow.dst_addr = [ip4([198, 51, 100, 7]), 0, 0, 0];
    fx.entry.put_flow(key, flow);
    fx.assert_pass(&fx.a_to_edge().build(), Counter::FibFailPass);
    // The neighbour goes away after setup.
    flow.dst_addr = [ip4(B), 0, 0, 0];
    fx.entry.put_flow(key, flow);
    assert_eq!(fx.run(&fx.a_to_edge().build()).0.action, XDP_REDIRECT);
    // Each CPU reuses a FIB answer for FIB_CACHE_TTL_NS (100 ms): the change shows after that.
    fx.ns.del_neigh(B, "eb0");
    std::thread::sleep(std::time::Duration::from_millis(250));
    fx.assert_pass(&fx.a_to_edge().build(), Counter::FibFailPass);
    assert_eq!(
        fx.entry.flow(key).packets,
        1,
        "passed packets are not counted on the flow"
    );
}

#[test]
fn egress_hint_disagreeing_with_fib_passes() {
    let mut fx = Fixture::new(0);
    let key = FlowKey::v4(EA, PA);
    let mut flow = fx.entry.flow(key);
    flow.ifindex = fx.ea0; // the FIB says eb0
    fx.entry.put_flow(key, flow);
    fx.assert_pass(&fx.a_to_edge().build(), Counter::FibFailPass);
    flow.ifindex = fx.ns.ifindex("eb0");
    fx.entry.put_flow(key, flow);
    assert_eq!(fx.run(&fx.a_to_edge().build()).0.action, XDP_REDIRECT);
}

#[test]
fn redirect_map_miss_passes_unchanged() {
    let ns = Netns::two_arm();
    let mut entry = Entry::load();
    entry.set_config(relay_config());
    for (k, f) in flow_pair((EA, PA), (A, A_PORT), (EB, PB), (B, B_PORT), 0) {
        entry.put_flow(k, f);
    }
    // eb0 is not in SV_TX_PORTS.
    let frame = UdpFrame::rtp(A, A_PORT, EA, PA).build();
    let before = entry.counters();
    let r = entry.run(&frame, ns.ifindex("ea0"));
    assert_eq!(r.action, XDP_PASS);
    assert_eq!(r.out, frame);
    assert_deltas(
        &before,
        &entry.counters(),
        &[(Counter::Rx, 1), (Counter::RedirectFailPass, 1)],
    );
}

#[test]
fn map_definitions_match_the_abi() {
    let _ns = Netns::two_arm();
    let entry = Entry::load();
    use aya::maps::Map;
    let flows = entry.ebpf.map(sipveil_abi::maps::FLOWS).expect("flows");
    assert!(matches!(flows, Map::HashMap(_)));
    let info = |m: &Map| match m {
        Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::DevMapHash(d) => {
            d.info().expect("map info")
        }
        other => panic!("unexpected map type {other:?}"),
    };
    let f = info(flows);
    assert_eq!(f.max_entries(), sipveil_abi::MAX_FLOWS);
    assert_eq!(f.key_size() as usize, size_of::<FlowKey>());
    assert_eq!(f.value_size() as usize, size_of::<sipveil_abi::Flow>());
    let c = info(
        entry
            .ebpf
            .map(sipveil_abi::maps::COUNTERS)
            .expect("counters"),
    );
    assert_eq!(c.max_entries(), Counter::COUNT);
    assert_eq!(c.value_size(), 8);
    let cfg = info(entry.ebpf.map(sipveil_abi::maps::CONFIG).expect("config"));
    assert_eq!(cfg.max_entries(), 1);
    assert_eq!(cfg.value_size() as usize, size_of::<Config>());
    let tx = info(
        entry
            .ebpf
            .map(sipveil_abi::maps::TX_PORTS)
            .expect("tx ports"),
    );
    assert_eq!(tx.max_entries(), sipveil_abi::MAX_TX_PORTS);
}

#[test]
fn fib_answers_follow_flow_changes() {
    // The relay keeps FIB answers per CPU keyed by (source, destination, ingress): a flow that is
    // re-pointed (re-INVITE, latching) must use the new next hop at once, not a remembered one.
    let mut fx = Fixture::new(0);
    let frame = fx.a_to_edge().build();
    let (r, _) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B), (EB, PB), (B, B_PORT));
    let key = FlowKey::v4(EA, PA);
    let mut flow = fx.entry.flow(key);
    flow.dst_addr = [ip4(A2), 0, 0, 0];
    flow.src_addr = [ip4(EA), 0, 0, 0];
    fx.entry.put_flow(key, flow);
    let (r, _) = fx.run(&frame);
    assert_eq!(r.action, XDP_TX);
    assert_rewritten(&frame, &r.out, (MAC_EA, MAC_A2), (EA, PB), (A2, B_PORT));
    flow.dst_addr = [ip4(B2), 0, 0, 0];
    flow.src_addr = [ip4(EB), 0, 0, 0];
    fx.entry.put_flow(key, flow);
    let (r, _) = fx.run(&frame);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&frame, &r.out, (MAC_EB, MAC_B2), (EB, PB), (B2, B_PORT));
    // A larger packet than the remembered MTU check was made for is looked up again (and fits).
    let mut big = fx.a_to_edge();
    big.payload.resize(1400, 0x55);
    let big = big.build();
    let (r, _) = fx.run(&big);
    assert_eq!(r.action, XDP_REDIRECT);
    assert_rewritten(&big, &r.out, (MAC_EB, MAC_B2), (EB, PB), (B2, B_PORT));
    // Larger than eb0's MTU (1500): the FIB answers FRAG_NEEDED, the packet passes unchanged.
    let mut huge = fx.a_to_edge();
    huge.payload.resize(1600, 0x55);
    fx.assert_pass(&huge.build(), Counter::FibFailPass);
}
