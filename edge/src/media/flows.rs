//! Building the flow map entries of a relay (pure logic, see docs/contracts.md "Flow semantics").
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sipveil_abi::{
    FAMILY_IPV4, FAMILY_IPV6, FLOW_F_LATCH, FLOW_F_LATCHED, FLOW_F_RTCP, FLOW_F_RTCP_MUX,
    FLOW_F_STRICT, Flow, FlowKey, PROTO_UDP, port, port_host,
};

/// Daemon-side convention in `Flow::generation`: this bit marks the B-side flows of a relay.
pub const GEN_SIDE_B: u32 = 1 << 31;
const GEN_MASK: u32 = GEN_SIDE_B - 1;

/// Per-relay behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// Learn each peer's real source from its first packet (symmetric RTP behind NAT).
    pub latch: bool,
    /// Drop packets whose source is not the announced peer.
    pub strict: bool,
    /// RTP and RTCP share one port; no RTCP flows.
    pub rtcp_mux: bool,
}

/// The four addresses of a relay. A talks to `a_edge`, B talks to `b_edge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelaySpec {
    pub a_edge: SocketAddr,
    pub a_peer: SocketAddr,
    pub b_edge: SocketAddr,
    pub b_peer: SocketAddr,
    pub opts: RelayOptions,
}

/// Which flow of a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowRole {
    /// Keyed by the A-side edge port: packets from A, sent to B.
    ARtp,
    ARtcp,
    BRtp,
    BRtcp,
}

/// Stored (wire-order) address words.
pub fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            for (i, word) in w.iter_mut().enumerate() {
                *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            w
        }
    }
}

/// The address back from stored words.
pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_IPV6 {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    }
}

/// The flow key of an edge address.
pub fn key_of(addr: SocketAddr) -> FlowKey {
    FlowKey {
        addr: addr_words(addr.ip()),
        port: port(addr.port()),
        family: if addr.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        proto: PROTO_UDP,
    }
}

/// The edge address of a flow key.
pub fn key_addr(key: &FlowKey) -> SocketAddr {
    SocketAddr::new(words_addr(key.addr, key.family), port_host(key.port))
}

fn family_of(key: &FlowKey) -> u8 {
    key.family
}

/// Where a flow sends to.
pub fn flow_dst(flow: &Flow, key: &FlowKey) -> SocketAddr {
    SocketAddr::new(
        words_addr(flow.dst_addr, family_of(key)),
        port_host(flow.dst_port),
    )
}

/// The edge address a flow's packets leave from.
pub fn flow_src(flow: &Flow, key: &FlowKey) -> SocketAddr {
    SocketAddr::new(
        words_addr(flow.src_addr, family_of(key)),
        port_host(flow.src_port),
    )
}

/// The announced sender of a flow.
pub fn flow_expect(flow: &Flow, key: &FlowKey) -> SocketAddr {
    SocketAddr::new(
        words_addr(flow.expect_addr, family_of(key)),
        port_host(flow.expect_port),
    )
}

/// The source learned by latching, if any.
pub fn flow_latched(flow: &Flow, key: &FlowKey) -> Option<SocketAddr> {
    (flow.flags & FLOW_F_LATCHED != 0).then(|| {
        SocketAddr::new(
            words_addr(flow.latched_addr, family_of(key)),
            port_host(flow.latched_port),
        )
    })
}

fn plus_one(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port().wrapping_add(1))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one flow is fully described by these"
)]
fn one(
    key_edge: SocketAddr,
    dst: SocketAddr,
    src_edge: SocketAddr,
    expect: SocketAddr,
    reverse_edge: SocketAddr,
    flags: u16,
    generation: u32,
    now_ns: u64,
) -> (FlowKey, Flow) {
    (
        key_of(key_edge),
        Flow {
            dst_addr: addr_words(dst.ip()),
            src_addr: addr_words(src_edge.ip()),
            expect_addr: addr_words(expect.ip()),
            reverse: key_of(reverse_edge),
            dst_port: port(dst.port()),
            src_port: port(src_edge.port()),
            expect_port: port(expect.port()),
            flags,
            ifindex: 0,
            generation,
            last_seen_ns: now_ns,
            ..Flow::default()
        },
    )
}

/// The map entries of a relay: A RTP, B RTP, and unless rtcp-mux, A RTCP and B RTCP (edge and peer
/// ports + 1). `generation` is the update count (31 bits); `now_ns` seeds `last_seen_ns` so idle
/// expiry counts from the install.
pub fn build_flows(
    spec: &RelaySpec,
    generation: u32,
    now_ns: u64,
) -> Vec<(FlowRole, FlowKey, Flow)> {
    let mut base = 0u16;
    if spec.opts.latch {
        base |= FLOW_F_LATCH;
    }
    if spec.opts.strict {
        base |= FLOW_F_STRICT;
    }
    let gen_a = generation & GEN_MASK;
    let gen_b = gen_a | GEN_SIDE_B;
    let rtp_flags = if spec.opts.rtcp_mux {
        base | FLOW_F_RTCP_MUX
    } else {
        base
    };
    let mut out = Vec::with_capacity(4);
    let (k, f) = one(
        spec.a_edge,
        spec.b_peer,
        spec.b_edge,
        spec.a_peer,
        spec.b_edge,
        rtp_flags,
        gen_a,
        now_ns,
    );
    out.push((FlowRole::ARtp, k, f));
    let (k, f) = one(
        spec.b_edge,
        spec.a_peer,
        spec.a_edge,
        spec.b_peer,
        spec.a_edge,
        rtp_flags,
        gen_b,
        now_ns,
    );
    out.push((FlowRole::BRtp, k, f));
    if !spec.opts.rtcp_mux {
        let rtcp = base | FLOW_F_RTCP;
        let (k, f) = one(
            plus_one(spec.a_edge),
            plus_one(spec.b_peer),
            plus_one(spec.b_edge),
            plus_one(spec.a_peer),
            plus_one(spec.b_edge),
            rtcp,
            gen_a,
            now_ns,
        );
        out.push((FlowRole::ARtcp, k, f));
        let (k, f) = one(
            plus_one(spec.b_edge),
            plus_one(spec.a_peer),
            plus_one(spec.a_edge),
            plus_one(spec.b_peer),
            plus_one(spec.a_edge),
            rtcp,
            gen_b,
            now_ns,
        );
        out.push((FlowRole::BRtcp, k, f));
    }
    out
}

/// Carries the program-written block (counters, last seen, latched source) of `old` into `new`.
/// With `keep_latch`, a latched flow stays latched.
pub fn preserve_program_state(new: &mut Flow, old: &Flow, keep_latch: bool) {
    new.packets = old.packets;
    new.bytes = old.bytes;
    if old.last_seen_ns != 0 {
        new.last_seen_ns = old.last_seen_ns;
    }
    if keep_latch && old.flags & FLOW_F_LATCHED != 0 && new.flags & FLOW_F_LATCH != 0 {
        new.flags |= FLOW_F_LATCHED;
        new.latched_addr = old.latched_addr;
        new.latched_port = old.latched_port;
    }
}

/// Whether a flow is the B side of its relay.
pub fn is_side_b(flow: &Flow) -> bool {
    flow.generation & GEN_SIDE_B != 0
}

/// The update count in `generation`.
pub fn generation_count(flow: &Flow) -> u32 {
    flow.generation & GEN_MASK
}

/// Whether `src` passes a strict flow's source check.
pub fn strict_source_ok(flow: &Flow, key: &FlowKey, src: SocketAddr) -> bool {
    let expect = flow_expect(flow, key);
    expect.ip() == src.ip() && (flow.expect_port == 0 || expect.port() == src.port())
}

/// Whether an rtcp-mux payload is RTCP (RFC 5761 §4: packet types 192..=223 in the second byte).
pub fn is_muxed_rtcp(payload: &[u8]) -> bool {
    matches!(payload.get(1), Some(192..=223))
}

/// The spec of a relay from its A-side RTP flow and its B-side RTP flow (restart rebuild).
pub fn spec_from_flows(a_key: &FlowKey, a: &Flow, b_key: &FlowKey, b: &Flow) -> RelaySpec {
    RelaySpec {
        a_edge: key_addr(a_key),
        a_peer: flow_expect(a, a_key),
        b_edge: key_addr(b_key),
        b_peer: flow_expect(b, b_key),
        opts: RelayOptions {
            latch: a.flags & FLOW_F_LATCH != 0,
            strict: a.flags & FLOW_F_STRICT != 0,
            rtcp_mux: a.flags & FLOW_F_RTCP_MUX != 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipveil_abi::ip4;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn spec(opts: RelayOptions) -> RelaySpec {
        RelaySpec {
            a_edge: sa("198.18.1.1:30000"),
            a_peer: sa("198.18.1.2:4000"),
            b_edge: sa("198.18.2.1:30002"),
            b_peer: sa("198.18.2.2:5000"),
            opts,
        }
    }

    #[test]
    fn four_flows_follow_the_contract() {
        let flows = build_flows(
            &spec(RelayOptions {
                latch: true,
                strict: true,
                rtcp_mux: false,
            }),
            3,
            77,
        );
        assert_eq!(flows.len(), 4);
        let (role, k, f) = &flows[0];
        assert_eq!(*role, FlowRole::ARtp);
        assert_eq!(*k, FlowKey::v4([198, 18, 1, 1], 30000));
        assert_eq!(f.dst_addr[0], ip4([198, 18, 2, 2]));
        assert_eq!(f.dst_port, port(5000));
        assert_eq!(f.src_addr[0], ip4([198, 18, 2, 1]));
        assert_eq!(f.src_port, port(30002));
        assert_eq!(f.expect_addr[0], ip4([198, 18, 1, 2]));
        assert_eq!(f.expect_port, port(4000));
        assert_eq!(f.reverse, FlowKey::v4([198, 18, 2, 1], 30002));
        assert_eq!(f.flags, FLOW_F_LATCH | FLOW_F_STRICT);
        assert_eq!(f.generation, 3);
        assert_eq!(f.last_seen_ns, 77);
        assert_eq!(f.packets, 0);

        let (role, k, f) = &flows[1];
        assert_eq!(*role, FlowRole::BRtp);
        assert_eq!(*k, FlowKey::v4([198, 18, 2, 1], 30002));
        assert_eq!(flow_dst(f, k), sa("198.18.1.2:4000"));
        assert_eq!(flow_src(f, k), sa("198.18.1.1:30000"));
        assert_eq!(f.reverse, FlowKey::v4([198, 18, 1, 1], 30000));
        assert!(is_side_b(f));
        assert_eq!(generation_count(f), 3);

        let (role, k, f) = &flows[2];
        assert_eq!(*role, FlowRole::ARtcp);
        assert_eq!(*k, FlowKey::v4([198, 18, 1, 1], 30001));
        assert_eq!(flow_dst(f, k), sa("198.18.2.2:5001"));
        assert_eq!(flow_src(f, k), sa("198.18.2.1:30003"));
        assert_eq!(f.reverse, FlowKey::v4([198, 18, 2, 1], 30003));
        assert_eq!(f.flags, FLOW_F_LATCH | FLOW_F_STRICT | FLOW_F_RTCP);

        let (role, k, f) = &flows[3];
        assert_eq!(*role, FlowRole::BRtcp);
        assert_eq!(flow_dst(f, k), sa("198.18.1.2:4001"));
        assert_eq!(f.reverse, FlowKey::v4([198, 18, 1, 1], 30001));
    }

    #[test]
    fn rtcp_mux_has_two_flows() {
        let flows = build_flows(
            &spec(RelayOptions {
                rtcp_mux: true,
                ..RelayOptions::default()
            }),
            0,
            0,
        );
        assert_eq!(flows.len(), 2);
        assert!(flows.iter().all(|(_, _, f)| f.flags == FLOW_F_RTCP_MUX));
    }

    #[test]
    fn spec_round_trips_through_flows() {
        let s = spec(RelayOptions {
            latch: true,
            strict: false,
            rtcp_mux: true,
        });
        let flows = build_flows(&s, 9, 1);
        let back = spec_from_flows(&flows[0].1, &flows[0].2, &flows[1].1, &flows[1].2);
        assert_eq!(back, s);
    }

    #[test]
    fn preserving_program_state() {
        let mut old = build_flows(&spec(RelayOptions::default()), 0, 5)[0].2;
        old.packets = 10;
        old.bytes = 2000;
        old.last_seen_ns = 99;
        old.flags |= FLOW_F_LATCH | FLOW_F_LATCHED;
        old.latched_addr = [ip4([10, 0, 0, 1]), 0, 0, 0];
        old.latched_port = port(1234);
        let mut new = build_flows(
            &spec(RelayOptions {
                latch: true,
                ..RelayOptions::default()
            }),
            1,
            500,
        )[0]
        .2;
        preserve_program_state(&mut new, &old, true);
        assert_eq!((new.packets, new.bytes, new.last_seen_ns), (10, 2000, 99));
        assert_eq!(
            flow_latched(&new, &FlowKey::default()),
            Some(sa("10.0.0.1:1234"))
        );
        let mut relearn = new;
        relearn.flags &= !FLOW_F_LATCHED;
        preserve_program_state(&mut relearn, &old, false);
        assert_eq!(relearn.flags & FLOW_F_LATCHED, 0);
        assert_eq!(relearn.packets, 10);
    }

    #[test]
    fn strict_and_mux_checks() {
        let flows = build_flows(
            &spec(RelayOptions {
                strict: true,
                ..RelayOptions::default()
            }),
            0,
            0,
        );
        let (_, k, f) = &flows[0];
        assert!(strict_source_ok(f, k, sa("198.18.1.2:4000")));
        assert!(!strict_source_ok(f, k, sa("198.18.1.2:4002")));
        assert!(!strict_source_ok(f, k, sa("198.18.3.2:4000")));
        let mut any_port = *f;
        any_port.expect_port = 0;
        assert!(strict_source_ok(&any_port, k, sa("198.18.1.2:9")));
        assert!(is_muxed_rtcp(&[0x80, 200, 0, 6]));
        assert!(!is_muxed_rtcp(&[0x80, 0, 0, 1]));
        assert!(!is_muxed_rtcp(&[0x80]));
    }

    #[test]
    fn v6_keys_round_trip() {
        let a = sa("[2001:db8::1]:30000");
        let k = key_of(a);
        assert_eq!(k.family, FAMILY_IPV6);
        assert_eq!(key_addr(&k), a);
    }
}
