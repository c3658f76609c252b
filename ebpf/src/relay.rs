//! The media relay: parse Ethernet/IPv4/UDP once, look the destination up in `SV_FLOWS`, apply
//! strict source checks and latching, rewrite addresses/ports/TTL/MACs, and send the frame back
//! out (XDP_TX) or to another interface (XDP_REDIRECT).
//!
//! The same single parse hands the frames the relay does not own to the flood shield (`shield`):
//! UDP outside the relay port range, TCP, and IPv6. The relay's own path is unchanged by it.
//!
//! RTCP (on `FLOW_F_RTCP` flows, or muxed on `FLOW_F_RTCP_MUX` flows) is not relayed here: after
//! the strict source check it is passed to the userspace relay, which scrubs it (RTCP privacy).
//!
//! Every frame that is not relayed returns `Err(reason)`; the entry point counts the reason and
//! passes the frame. Nothing is written to the frame before the last possible pass (the FIB lookup
//! and the devmap check come first), so a passed frame reaches the stack byte-identical.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, bpf_fib_lookup__bindgen_ty_1,
        bpf_fib_lookup__bindgen_ty_2, bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4,
        bpf_fib_lookup__bindgen_ty_5, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use sipveil_abi::{
    ABI_VERSION, CONFIG_F_RELAY, Counter, FAMILY_IPV4, FLOW_F_LATCH, FLOW_F_LATCHED, FLOW_F_RTCP,
    FLOW_F_RTCP_MUX, FLOW_F_STRICT, Flow, FlowKey, PROTO_UDP,
};
use sipveil_ebpf::{
    csum,
    packet::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_MF, IP_OFFSET, IPPROTO_TCP, IPPROTO_UDP,
        IPV4_HLEN, Ipv4Hdr, PAYLOAD_OFF, UDP_HLEN, UDP_OFF, UdpHdr, be16, ne16, ne32, ptr_at,
        write_mac,
    },
};

use crate::{
    maps::{self, FIB_CACHE_SLOTS, SV_CONFIG, SV_FIB_CACHE, SV_FLOWS, SV_TX_PORTS},
    shield,
};

/// `AF_INET` for `bpf_fib_lookup`.
const AF_INET: u8 = 2;
/// TTL written when the config leaves it 0.
const DEFAULT_TTL: u8 = 64;
/// How long a CPU reuses a `bpf_fib_lookup` answer (route, egress, neighbour MAC). A neighbour or
/// route change reaches the relay within this time.
pub const FIB_CACHE_TTL_NS: u64 = 100_000_000;
/// RFC 5761 §4: on a muxed port, a second byte of 192..=223 (payload type 64..=95 with the marker
/// bit) is RTCP (SR 200, RR 201, SDES 202, BYE 203, APP 204, RTPFB 205, PSFB 206, ...).
const RTCP_MUX_FIRST: u8 = 192;
const RTCP_MUX_LAST: u8 = 223;

/// Relays the frame, drops it (strict mode), hands it to the shield, or says why it passes.
#[inline(always)]
pub fn try_relay(ctx: &XdpContext) -> Result<u32, Counter> {
    let cfg = SV_CONFIG.get(0).ok_or(Counter::ConfigPass)?;
    if cfg.abi_version != ABI_VERSION {
        return Err(Counter::ConfigPass);
    }
    let relay_on = cfg.flags & CONFIG_F_RELAY != 0;
    let (port_min, port_max) = (cfg.relay_port_min, cfg.relay_port_max);
    let new_ttl = if cfg.ttl == 0 { DEFAULT_TTL } else { cfg.ttl };

    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Counter::MalformedPass)?;
    // SAFETY: ptr_at checked that the header lies inside the frame (as for every header below).
    let eth_proto = unsafe { (*eth).proto };
    if eth_proto != ETH_P_IP {
        if eth_proto == ETH_P_IPV6 {
            return shield::ipv6(ctx);
        }
        return Err(Counter::NotOursPass);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Counter::MalformedPass)?;
    // SAFETY: see above.
    let (vihl, proto, frag) = unsafe { ((*ip).vihl, (*ip).proto, be16((*ip).frag_off)) };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(Counter::MalformedPass);
    }
    if proto != IPPROTO_UDP {
        if proto == IPPROTO_TCP {
            return shield::ipv4(ctx);
        }
        return Err(Counter::NotOursPass);
    }
    if frag & IP_OFFSET != 0 {
        // A later fragment has no UDP header: it may be ours, the stack reassembles it.
        return Err(Counter::FragmentPass);
    }
    if vihl != 0x45 {
        return classify_with_options(ctx, vihl, port_min, port_max);
    }
    let udp: *mut UdpHdr = ptr_at(ctx, UDP_OFF).ok_or(Counter::MalformedPass)?;
    // SAFETY: see above.
    let (sport, dport, udp_len) = unsafe { (ne16((*udp).source), (*udp).dest, be16((*udp).len)) };
    let dport_host = be16(dport);
    if dport_host < port_min || dport_host > port_max {
        return shield::ipv4(ctx);
    }
    if !relay_on {
        return Err(Counter::ConfigPass);
    }
    if frag & IP_MF != 0 {
        return Err(Counter::FragmentPass);
    }
    // SAFETY: see above.
    let (tot_len, ttl, tos, saddr, daddr) = unsafe {
        (
            be16((*ip).tot_len),
            (*ip).ttl,
            (*ip).tos,
            ne32((*ip).saddr),
            ne32((*ip).daddr),
        )
    };
    let frame_len = ctx.data_end() - ctx.data();
    if (tot_len as usize) < IPV4_HLEN + UDP_HLEN
        || ETH_HLEN + tot_len as usize > frame_len
        || (udp_len as usize) < UDP_HLEN
        || udp_len as usize > tot_len as usize - IPV4_HLEN
    {
        return Err(Counter::MalformedPass);
    }

    let key = FlowKey {
        addr: [daddr, 0, 0, 0],
        port: ne16(dport),
        family: FAMILY_IPV4,
        proto: PROTO_UDP,
    };
    let flow = SV_FLOWS.get_ptr_mut(&key).ok_or(Counter::NoFlowPass)?;
    // SAFETY: `flow` points to a live map value for the whole run (RCU); the daemon may update it
    // concurrently, which at worst mixes an old and a new field for one packet.
    let flags = unsafe { (*flow).flags };
    if flags & FLOW_F_STRICT != 0 {
        // SAFETY: as above.
        let (expect_addr, expect_port) = unsafe { ((*flow).expect_addr[0], (*flow).expect_port) };
        if saddr != expect_addr || (expect_port != 0 && sport != expect_port) {
            maps::count(Counter::StrictDrop);
            return Ok(xdp_action::XDP_DROP);
        }
    }
    if flags & FLOW_F_RTCP != 0 || (flags & FLOW_F_RTCP_MUX != 0 && is_rtcp_mux(ctx)) {
        // RTCP privacy: SDES (CNAME, NAME, EMAIL, ...) identifies the sender. The userspace relay
        // holds a socket on every relay port and rewrites RTCP before sending it on (it also
        // latches and counts it); RTP stays here. RTCP is ~1 packet per second per stream.
        return Err(Counter::RtcpPass);
    }
    if ttl <= 1 {
        return Err(Counter::TtlPass);
    }
    if flags & (FLOW_F_LATCH | FLOW_F_LATCHED) == FLOW_F_LATCH {
        latch(flow, saddr, sport);
    }

    // SAFETY: as above.
    let (new_saddr, new_daddr, new_sport, new_dport, ifindex_hint) = unsafe {
        (
            (*flow).src_addr[0],
            (*flow).dst_addr[0],
            (*flow).src_port,
            (*flow).dst_port,
            (*flow).ifindex,
        )
    };
    // SAFETY: ctx.ctx is the xdp_md the kernel handed to this run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };

    // The route and the neighbour's MACs, before touching the frame: a failure passes it intact.
    // CLOCK_MONOTONIC at tick resolution: the precise clock costs ~25 ns per call here, and
    // `last_seen_ns` (idle timeouts) and the cache expiry need no better.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let hop = next_hop(ctx, ingress, new_saddr, new_daddr, tot_len, tos, now)?;
    let egress = hop.egress;
    if ifindex_hint != 0 && ifindex_hint != egress {
        // The daemon pinned an egress the routing table disagrees with: let userspace decide.
        return Err(Counter::FibFailPass);
    }
    let (action, sent) = if egress == ingress {
        (xdp_action::XDP_TX, Counter::RelayedTx)
    } else {
        // The redirect target is recorded now and used when the program returns; on a miss the
        // helper returns XDP_PASS (the low bits of the flags) and nothing has been rewritten.
        match SV_TX_PORTS.redirect(egress, xdp_action::XDP_PASS as u64) {
            Ok(action) => (action, Counter::RelayedRedirect),
            Err(_) => return Err(Counter::RedirectFailPass),
        }
    };

    // --- from here on the frame is relayed: rewrite it ---
    let addr_diff = csum::diff32(saddr, new_saddr) + csum::diff32(daddr, new_daddr);
    let ttl_diff = csum::diff16(ne16([ttl, proto]), ne16([new_ttl, proto]));
    // SAFETY: eth/ip/udp were bounds-checked above, and no helper since changes the packet layout.
    unsafe {
        write_mac(&raw mut (*eth).dst, hop.dmac);
        write_mac(&raw mut (*eth).src, hop.smac);
        let ip_check = csum::update(ne16((*ip).check), addr_diff + ttl_diff);
        (*ip).check = ip_check.to_ne_bytes();
        (*ip).ttl = new_ttl;
        (*ip).saddr = new_saddr.to_ne_bytes();
        (*ip).daddr = new_daddr.to_ne_bytes();
        let udp_check = csum::update_udp(
            ne16((*udp).check),
            addr_diff + csum::diff16(sport, new_sport) + csum::diff16(ne16(dport), new_dport),
        );
        (*udp).check = udp_check.to_ne_bytes();
        (*udp).source = new_sport.to_ne_bytes();
        (*udp).dest = new_dport.to_ne_bytes();
    }

    let bytes = tot_len as u64;
    maps::count(sent);
    maps::add(Counter::RelayedBytes, bytes);
    // SAFETY: map values are 8-byte aligned and `Flow` keeps its u64 fields 8-byte aligned (ABI
    // asserts). The bpfel target has no `AtomicU64::fetch_add` (no CAS), but an atomic add whose
    // result is unused compiles to the BPF `lock +=` instruction, which is what other CPUs need.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*flow).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*flow).bytes, bytes);
        (*flow).last_seen_ns = now;
    }
    Ok(action)
}

/// Where a relayed packet leaves and with which MACs.
struct NextHop {
    egress: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The FIB answer for (saddr -> daddr) received on `ingress`: from this CPU's cache when fresh,
/// else from `bpf_fib_lookup` (and remembered). Any lookup failure is `FibFailPass`.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    ingress: u32,
    saddr: u32,
    daddr: u32,
    tot_len: u16,
    tos: u8,
    now: u64,
) -> Result<NextHop, Counter> {
    let mix = daddr ^ saddr;
    let slot = (mix ^ (mix >> 8) ^ (mix >> 16) ^ (mix >> 24)) & (FIB_CACHE_SLOTS - 1);
    let cached = SV_FIB_CACHE.get_ptr_mut(slot);
    if let Some(c) = cached {
        // SAFETY: this CPU's slot of a per-CPU array value; nothing else runs on this CPU now.
        unsafe {
            if (*c).daddr == daddr
                && (*c).saddr == saddr
                && (*c).ingress == ingress
                && tot_len <= (*c).max_len
                && now < (*c).expires_ns
            {
                return Ok(NextHop {
                    egress: (*c).egress,
                    smac: (*c).smac,
                    dmac: (*c).dmac,
                });
            }
        }
    }
    // Every byte initialised by the literal (the verifier reads the whole struct), without the
    // out-of-line memset that `mem::zeroed` would become.
    let mut fib = FibParams {
        family: AF_INET,
        l4_protocol: IPPROTO_UDP,
        sport: 0,
        dport: 0,
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 { tot_len },
        ifindex: ingress,
        // `tos` is the first byte of this union: widen it so the other three are zero too.
        __bindgen_anon_2: bpf_fib_lookup__bindgen_ty_2 {
            flowinfo: u32::from_ne_bytes([tos, 0, 0, 0]),
        },
        __bindgen_anon_3: bpf_fib_lookup__bindgen_ty_3 {
            ipv6_src: [saddr, 0, 0, 0],
        },
        __bindgen_anon_4: bpf_fib_lookup__bindgen_ty_4 {
            ipv6_dst: [daddr, 0, 0, 0],
        },
        __bindgen_anon_5: bpf_fib_lookup__bindgen_ty_5 { tbid: 0 },
        smac: [0; 6],
        dmac: [0; 6],
    };
    // SAFETY: `fib` is a stack struct of the size passed; the helper only reads/writes it.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Counter::FibFailPass);
    }
    if let Some(c) = cached {
        // SAFETY: as above.
        unsafe {
            (*c).daddr = daddr;
            (*c).saddr = saddr;
            (*c).ingress = ingress;
            (*c).egress = fib.ifindex;
            (*c).max_len = tot_len;
            (*c).smac = fib.smac;
            (*c).dmac = fib.dmac;
            (*c).expires_ns = now + FIB_CACHE_TTL_NS;
        }
    }
    Ok(NextHop {
        egress: fib.ifindex,
        smac: fib.smac,
        dmac: fib.dmac,
    })
}

/// Records the peer's real source on `flow` and makes it the destination of the reverse flow.
#[inline(always)]
fn latch(flow: *mut Flow, saddr: u32, sport: u16) {
    // SAFETY: `flow` and the reverse value are live map values; concurrent first packets on two
    // CPUs both write the same source, so the race is benign.
    unsafe {
        (*flow).latched_addr = [saddr, 0, 0, 0];
        (*flow).latched_port = sport;
        (*flow).flags |= FLOW_F_LATCHED;
        let reverse = (*flow).reverse;
        if let Some(rev) = SV_FLOWS.get_ptr_mut(&reverse) {
            (*rev).dst_addr = [saddr, 0, 0, 0];
            (*rev).dst_port = sport;
        }
    }
    maps::count(Counter::Latched);
}

/// On an rtcp-mux port: is this RTCP rather than RTP (RFC 5761 §4)?
#[inline(always)]
fn is_rtcp_mux(ctx: &XdpContext) -> bool {
    match ptr_at::<[u8; 2]>(ctx, PAYLOAD_OFF) {
        // SAFETY: bounds-checked by ptr_at.
        Some(p) => matches!(unsafe { (*p)[1] }, RTCP_MUX_FIRST..=RTCP_MUX_LAST),
        None => false,
    }
}

/// IPv4 with options (rare): to a relay port only classified (the userspace relay sends it
/// without them); anything else goes to the shield, which reads past the options, so options do
/// not get a flood around it.
#[inline(always)]
fn classify_with_options(
    ctx: &XdpContext,
    vihl: u8,
    port_min: u16,
    port_max: u16,
) -> Result<u32, Counter> {
    let offset = ETH_HLEN + (vihl & 0x0f) as usize * 4;
    match ptr_at::<UdpHdr>(ctx, offset) {
        Some(udp) => {
            // SAFETY: bounds-checked by ptr_at.
            let dport = be16(unsafe { (*udp).dest });
            if dport >= port_min && dport <= port_max {
                Err(Counter::IpOptionsPass)
            } else {
                shield::ipv4(ctx)
            }
        }
        None => Err(Counter::MalformedPass),
    }
}
