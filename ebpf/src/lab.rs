//! Lab and benchmark helper programs (bin `sv-lab`); names and settings in `sipveil_abi::lab`.
//!
//! - `sv_pass`: XDP_PASS for everything (veth peers must run an XDP program to receive frames
//!   pushed by XDP_TX/REDIRECT).
//! - `sv_sink`: counts (per CPU) and drops UDP to the port range in `SVL_SINK_PORTS`; passes the
//!   rest.
//! - `sv_ceiling`: the bench ceiling, a forwarder for exactly one flow given as read-only globals
//!   (`SVL_CEILING_FLOW`): no map lookup, no FIB, no counters. Passes everything else.
//! - `sv_gen`: XDP_TX for every frame, a packet generator under BPF_PROG_TEST_RUN live frames;
//!   counts what it sends and, with `GEN_F_RTP_SEQ`, stamps its count into the RTP sequence number;
//!   with `GEN_F_SRC_ROTATE`, rotates the IPv4 source address through `SVL_GEN_SOURCES`.
//!
//! The read-only globals are set at load time with `EbpfLoader::override_global`; the maps are not
//! pinned (whoever loads a lab program owns its maps; pin them explicitly if another process must
//! read them).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{DevMapHash, PerCpuArray},
    programs::XdpContext,
};
use sipveil_abi::lab::{
    CeilingFlow, GEN_F_RTP_SEQ, GEN_F_SRC_ROTATE, GenSources, SINK_BYTES, SINK_PACKETS, SinkPorts,
};
use sipveil_ebpf::{
    csum,
    packet::{
        ETH_HLEN, ETH_P_IP, EthHdr, IP_MF, IP_OFFSET, IPPROTO_UDP, Ipv4Hdr, UDP_OFF, UdpHdr, be16,
        ne16, ne32, ptr_at, write_mac,
    },
};

/// `sv_sink`: UDP destination ports to count and drop (host order, inclusive).
#[unsafe(no_mangle)]
static SVL_SINK_PORTS: SinkPorts = SinkPorts { min: 0, max: 0 };

/// `sv_ceiling`: the one flow it forwards.
#[unsafe(no_mangle)]
static SVL_CEILING_FLOW: CeilingFlow = CeilingFlow {
    match_addr: 0,
    src_addr: 0,
    dst_addr: 0,
    egress_ifindex: 0,
    match_port: 0,
    src_port: 0,
    dst_port: 0,
    src_mac: [0; 6],
    dst_mac: [0; 6],
    ttl: 0,
    _pad0: 0,
};

/// `sv_gen`: `GEN_F_*` bits.
#[unsafe(no_mangle)]
static SVL_GEN_FLAGS: u32 = 0;

/// `sv_gen`: the source addresses of `GEN_F_SRC_ROTATE`.
#[unsafe(no_mangle)]
static SVL_GEN_SOURCES: GenSources = GenSources { base: 0, count: 0 };

/// `sv_sink`: packets (index 0) and frame bytes (index 1) per CPU.
#[map]
static SVL_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// `sv_ceiling`: interfaces it may redirect to, keyed by ifindex.
#[map]
static SVL_TX: DevMapHash = DevMapHash::with_max_entries(8, 0);

/// `sv_gen`: frames transmitted per CPU.
#[map]
static SVL_GEN_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Passes everything: attached to veth peers so frames pushed by XDP_TX/REDIRECT are received.
#[xdp]
pub fn sv_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Counts and drops UDP to the configured ports. Fail-open: everything else passes.
#[xdp]
pub fn sv_sink(ctx: XdpContext) -> u32 {
    match try_sink(&ctx) {
        Some(action) => action,
        None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn try_sink(ctx: &XdpContext) -> Option<u32> {
    // SAFETY: a read-only global; volatile so the load-time value is read, not the default.
    let ports = unsafe { core::ptr::read_volatile(&raw const SVL_SINK_PORTS) };
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that each header lies inside the frame.
    if unsafe { (*eth).proto } != ETH_P_IP {
        return None;
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: as above.
    let (vihl, proto) = unsafe { ((*ip).vihl, (*ip).proto) };
    if proto != IPPROTO_UDP || vihl >> 4 != 4 {
        return None;
    }
    let udp: *mut UdpHdr = ptr_at(ctx, ETH_HLEN + (vihl & 0x0f) as usize * 4)?;
    // SAFETY: as above.
    let dport = be16(unsafe { (*udp).dest });
    if dport < ports.min || dport > ports.max {
        return None;
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    for (index, n) in [(SINK_PACKETS, 1), (SINK_BYTES, len)] {
        if let Some(slot) = SVL_SINK.get_ptr_mut(index) {
            // SAFETY: this CPU's slot of a per-CPU array value.
            unsafe { *slot += n };
        }
    }
    Some(xdp_action::XDP_DROP)
}

/// The fastest possible relay of one flow, for comparison with `sipveil_entry`. Fail-open:
/// everything but that flow passes.
#[xdp]
pub fn sv_ceiling(ctx: XdpContext) -> u32 {
    match try_ceiling(&ctx) {
        Some(action) => action,
        None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn try_ceiling(ctx: &XdpContext) -> Option<u32> {
    let flow = &raw const SVL_CEILING_FLOW;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
    let udp: *mut UdpHdr = ptr_at(ctx, UDP_OFF)?;
    // SAFETY: ptr_at checked all three headers; `flow` is a read-only global, read volatile so the
    // values set at load time are used.
    unsafe {
        if (*eth).proto != ETH_P_IP
            || (*ip).vihl != 0x45
            || (*ip).proto != IPPROTO_UDP
            || be16((*ip).frag_off) & (IP_MF | IP_OFFSET) != 0
            || ne32((*ip).daddr) != core::ptr::read_volatile(&raw const (*flow).match_addr)
            || ne16((*udp).dest) != core::ptr::read_volatile(&raw const (*flow).match_port)
        {
            return None;
        }
        let new_saddr = core::ptr::read_volatile(&raw const (*flow).src_addr);
        let new_daddr = core::ptr::read_volatile(&raw const (*flow).dst_addr);
        let new_sport = core::ptr::read_volatile(&raw const (*flow).src_port);
        let new_dport = core::ptr::read_volatile(&raw const (*flow).dst_port);
        let new_ttl = core::ptr::read_volatile(&raw const (*flow).ttl);
        let egress = core::ptr::read_volatile(&raw const (*flow).egress_ifindex);
        let action = if egress == 0 {
            xdp_action::XDP_TX
        } else {
            SVL_TX.redirect(egress, xdp_action::XDP_PASS as u64).ok()?
        };
        let (saddr, daddr) = (ne32((*ip).saddr), ne32((*ip).daddr));
        let (sport, dport) = (ne16((*udp).source), ne16((*udp).dest));
        let (ttl, proto) = ((*ip).ttl, (*ip).proto);
        let addr_diff = csum::diff32(saddr, new_saddr) + csum::diff32(daddr, new_daddr);
        let ttl_diff = csum::diff16(ne16([ttl, proto]), ne16([new_ttl, proto]));
        write_mac(
            &raw mut (*eth).dst,
            core::ptr::read_volatile(&raw const (*flow).dst_mac),
        );
        write_mac(
            &raw mut (*eth).src,
            core::ptr::read_volatile(&raw const (*flow).src_mac),
        );
        (*ip).check = csum::update(ne16((*ip).check), addr_diff + ttl_diff).to_ne_bytes();
        (*ip).ttl = new_ttl;
        (*ip).saddr = new_saddr.to_ne_bytes();
        (*ip).daddr = new_daddr.to_ne_bytes();
        let port_diff = csum::diff16(sport, new_sport) + csum::diff16(dport, new_dport);
        (*udp).check = csum::update_udp(ne16((*udp).check), addr_diff + port_diff).to_ne_bytes();
        (*udp).source = new_sport.to_ne_bytes();
        (*udp).dest = new_dport.to_ne_bytes();
        Some(action)
    }
}

/// Sends every frame back out (XDP_TX): under BPF_PROG_TEST_RUN with live frames this is a packet
/// generator. Counts per CPU; with `GEN_F_RTP_SEQ` writes the low 16 bits of this CPU's count into
/// the RTP sequence number of IPv4/UDP frames (no options) and fixes the UDP checksum, because live
/// frames are recycled without being reset and would otherwise all be identical. With
/// `GEN_F_SRC_ROTATE` also rotates the IPv4 source address (see [`rotate_source`]).
#[xdp]
pub fn sv_gen(ctx: XdpContext) -> u32 {
    let Some(slot) = SVL_GEN_COUNT.get_ptr_mut(0) else {
        return xdp_action::XDP_TX;
    };
    // SAFETY: this CPU's slot of a per-CPU array value.
    let sent = unsafe {
        *slot += 1;
        *slot
    };
    // SAFETY: a read-only global set at load time.
    let flags = unsafe { core::ptr::read_volatile(&raw const SVL_GEN_FLAGS) };
    if flags & GEN_F_RTP_SEQ != 0 {
        stamp_rtp_seq(&ctx, sent as u16);
    }
    if flags & GEN_F_SRC_ROTATE != 0 {
        rotate_source(&ctx, sent.wrapping_sub(1));
    }
    xdp_action::XDP_TX
}

/// Ethernet + IPv4 (no options) + UDP, checked with one bounds test.
#[repr(C)]
struct UdpHead {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
}

/// Sets the IPv4 source to `base + (before mod count)` (`before`: frames this CPU sent before this
/// one) and fixes both checksums incrementally. The old address is read from the frame, so this is
/// right whether the kernel hands us a fresh copy or our own rewrite of a recycled live frame.
#[inline(always)]
fn rotate_source(ctx: &XdpContext, before: u64) {
    // SAFETY: a read-only global set at load time, read volatile so the load-time value is used.
    let sources = unsafe { core::ptr::read_volatile(&raw const SVL_GEN_SOURCES) };
    if sources.count == 0 {
        return;
    }
    let Some(f) = ptr_at::<UdpHead>(ctx, 0) else {
        return;
    };
    let offset = (before % u64::from(sources.count)) as u32;
    let new = sources.base.wrapping_add(offset).to_be_bytes();
    // SAFETY: ptr_at checked the whole head.
    unsafe {
        if (*f).eth.proto != ETH_P_IP || (*f).ip.vihl != 0x45 || (*f).ip.proto != IPPROTO_UDP {
            return;
        }
        let diff = csum::diff32(ne32((*f).ip.saddr), ne32(new));
        (*f).ip.check = csum::update(ne16((*f).ip.check), diff).to_ne_bytes();
        // The source address is in the UDP pseudo header.
        (*f).udp.check = csum::update_udp(ne16((*f).udp.check), diff).to_ne_bytes();
        (*f).ip.saddr = new;
    }
}

/// Ethernet + IPv4 (no options) + UDP + the first 4 bytes of RTP, checked with one bounds test.
#[repr(C)]
struct RtpHead {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
    rtp: [u8; 4],
}

#[inline(always)]
fn stamp_rtp_seq(ctx: &XdpContext, seq: u16) {
    let Some(f) = ptr_at::<RtpHead>(ctx, 0) else {
        return;
    };
    // SAFETY: ptr_at checked the whole head.
    unsafe {
        if (*f).eth.proto != ETH_P_IP || (*f).ip.vihl != 0x45 || (*f).ip.proto != IPPROTO_UDP {
            return;
        }
        let old = ne16([(*f).rtp[2], (*f).rtp[3]]);
        let new = seq.to_be_bytes();
        let diff = csum::diff16(old, ne16(new));
        (*f).udp.check = csum::update_udp(ne16((*f).udp.check), diff).to_ne_bytes();
        (*f).rtp[2] = new[0];
        (*f).rtp[3] = new[1];
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
