//! The per-packet decision of the userspace relay: the same semantics as the XDP program
//! (strict source check, latching, counters by reason), on whichever `FlowTable` is in use.
use std::net::SocketAddr;

use sipveil_abi::{
    FLOW_F_LATCH, FLOW_F_LATCHED, FLOW_F_RTCP, FLOW_F_RTCP_MUX, FLOW_F_STRICT, FlowKey,
};

use super::counters::{UserCounter, UserCounters};
use super::flows::{addr_words, flow_dst, is_muxed_rtcp, strict_source_ok};
use super::table::FlowTable;

/// What to do with a datagram received on a relay socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the payload to `dst` from the edge socket `from`.
    Relay {
        from: FlowKey,
        dst: SocketAddr,
        rtcp: bool,
        /// IP datagram length, for the byte counters.
        ip_len: u64,
    },
    NoFlow,
    StrictDrop,
}

/// IP + UDP header bytes for the family of `src`.
fn header_len(src: &SocketAddr) -> u64 {
    if src.is_ipv4() { 28 } else { 48 }
}

/// Decides about one datagram that arrived on the edge socket `local` from `src`, latching when the
/// flow asks for it. Counts `rx`, `no_flow_drop`, `strict_source_drop`, `latched`; the caller
/// counts `relayed*` when the send completes.
pub fn decide(
    table: &dyn FlowTable,
    counters: &UserCounters,
    local: &FlowKey,
    src: SocketAddr,
    payload: &[u8],
    now_ns: u64,
) -> Verdict {
    counters.inc(UserCounter::Rx);
    let flow = match table.get(local) {
        Ok(Some(f)) => f,
        Ok(None) => {
            counters.inc(UserCounter::NoFlowDrop);
            return Verdict::NoFlow;
        }
        Err(e) => {
            tracing::debug!("flow lookup failed: {e}");
            counters.inc(UserCounter::NoFlowDrop);
            return Verdict::NoFlow;
        }
    };
    if flow.flags & FLOW_F_STRICT != 0 && !strict_source_ok(&flow, local, src) {
        counters.inc(UserCounter::StrictDrop);
        return Verdict::StrictDrop;
    }
    let dst = flow_dst(&flow, local);
    if flow.flags & FLOW_F_LATCH != 0 && flow.flags & FLOW_F_LATCHED == 0 {
        let mut latched = flow;
        latched.flags |= FLOW_F_LATCHED;
        latched.latched_addr = addr_words(src.ip());
        latched.latched_port = src.port().to_be();
        let reverse = flow.reverse;
        let ok = table.put(local, &latched).is_ok();
        if ok {
            if let Ok(Some(mut rev)) = table.get(&reverse) {
                rev.dst_addr = addr_words(src.ip());
                rev.dst_port = src.port().to_be();
                let _ = table.put(&reverse, &rev);
            }
            counters.inc(UserCounter::Latched);
        }
    }
    let ip_len = payload.len() as u64 + header_len(&src);
    let rtcp = flow.flags & FLOW_F_RTCP != 0
        || (flow.flags & FLOW_F_RTCP_MUX != 0 && is_muxed_rtcp(payload));
    if rtcp {
        // RTCP always comes through here (it is scrubbed in userspace), RTP only on the program's
        // rare pass paths: do not rewrite a flow entry the program is busy with.
        table.account_volatile(local, ip_len, now_ns);
    } else {
        table.account(local, ip_len, now_ns);
    }
    let from = super::flows::key_of(super::flows::flow_src(&flow, local));
    Verdict::Relay {
        from,
        dst,
        rtcp,
        ip_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::flows::{RelayOptions, RelaySpec, build_flows, flow_latched, key_of};
    use crate::media::table::UserFlowTable;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn setup(opts: RelayOptions) -> UserFlowTable {
        let t = UserFlowTable::new();
        let spec = RelaySpec {
            a_edge: sa("198.18.1.1:30000"),
            a_peer: sa("198.18.1.2:4000"),
            b_edge: sa("198.18.2.1:30000"),
            b_peer: sa("198.18.2.2:5000"),
            opts,
        };
        for (_, k, f) in build_flows(&spec, 0, 1) {
            t.put(&k, &f).expect("put");
        }
        t
    }

    #[test]
    fn relays_a_to_b_and_counts() {
        let t = setup(RelayOptions::default());
        let c = UserCounters::default();
        let a_key = key_of(sa("198.18.1.1:30000"));
        let v = decide(&t, &c, &a_key, sa("198.18.1.2:4000"), &[0x80, 0, 0, 1], 10);
        assert_eq!(
            v,
            Verdict::Relay {
                from: key_of(sa("198.18.2.1:30000")),
                dst: sa("198.18.2.2:5000"),
                rtcp: false,
                ip_len: 32,
            }
        );
        let f = t.get(&a_key).expect("get").expect("flow");
        assert_eq!((f.packets, f.bytes, f.last_seen_ns), (1, 32, 10));
        assert_eq!(c.get(UserCounter::Rx), 1);
        let v = decide(
            &t,
            &c,
            &key_of(sa("198.18.1.1:30001")),
            sa("198.18.1.2:4001"),
            &[0x80, 200],
            11,
        );
        assert!(matches!(v, Verdict::Relay { rtcp: true, .. }), "{v:?}");
        let v = decide(
            &t,
            &c,
            &key_of(sa("198.18.1.1:30004")),
            sa("198.18.1.2:4000"),
            &[],
            12,
        );
        assert_eq!(v, Verdict::NoFlow);
        assert_eq!(c.get(UserCounter::NoFlowDrop), 1);
    }

    #[test]
    fn latching_rewrites_the_reverse_destination_once() {
        let t = setup(RelayOptions {
            latch: true,
            ..RelayOptions::default()
        });
        let c = UserCounters::default();
        let a_key = key_of(sa("198.18.1.1:30000"));
        let b_key = key_of(sa("198.18.2.1:30000"));
        // A is behind NAT: it really sends from 198.18.3.9:6000.
        let v = decide(&t, &c, &a_key, sa("198.18.3.9:6000"), &[0x80, 0], 10);
        assert!(matches!(v, Verdict::Relay { dst, .. } if dst == sa("198.18.2.2:5000")));
        assert_eq!(c.get(UserCounter::Latched), 1);
        let a = t.get(&a_key).expect("get").expect("a");
        assert_eq!(flow_latched(&a, &a_key), Some(sa("198.18.3.9:6000")));
        // B's packets now go to the latched source.
        let v = decide(&t, &c, &b_key, sa("198.18.2.2:5000"), &[0x80, 0], 11);
        assert!(
            matches!(v, Verdict::Relay { dst, .. } if dst == sa("198.18.3.9:6000")),
            "{v:?}"
        );
        // A second source does not re-latch.
        decide(&t, &c, &a_key, sa("198.18.3.10:7000"), &[0x80, 0], 12);
        assert_eq!(
            c.get(UserCounter::Latched),
            2,
            "B latched too, A did not re-latch"
        );
        let a = t.get(&a_key).expect("get").expect("a");
        assert_eq!(flow_latched(&a, &a_key), Some(sa("198.18.3.9:6000")));
    }

    #[test]
    fn strict_drops_other_sources() {
        let t = setup(RelayOptions {
            strict: true,
            ..RelayOptions::default()
        });
        let c = UserCounters::default();
        let a_key = key_of(sa("198.18.1.1:30000"));
        assert_eq!(
            decide(&t, &c, &a_key, sa("198.18.3.2:4000"), &[0x80, 0], 1),
            Verdict::StrictDrop
        );
        assert_eq!(c.get(UserCounter::StrictDrop), 1);
        assert!(matches!(
            decide(&t, &c, &a_key, sa("198.18.1.2:4000"), &[0x80, 0], 2),
            Verdict::Relay { .. }
        ));
        let f = t.get(&a_key).expect("get").expect("a");
        assert_eq!(f.packets, 1, "dropped packets are not relayed packets");
    }
}
