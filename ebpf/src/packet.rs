//! Header views over packet memory and the one bounds-checked way to reach them.
//!
//! The views hold only byte arrays (alignment 1): XDP gives no alignment guarantee for `data`, and
//! the IPv4 header usually sits 2 bytes off a 4-byte boundary, so no field is read through a wider
//! reference. Multi-byte fields are read and written as native integers holding the wire bytes.

use aya_ebpf::programs::XdpContext;

pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4, as the two wire bytes.
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// EtherType of IPv6, as the two wire bytes.
pub const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
/// The part of a TCP header the shield reads: ports, sequence, acknowledgement, offset, flags.
pub const TCP_MIN_READ: usize = 14;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers the shield walks past (RFC 8200 §4): hop-by-hop options, routing,
/// fragment, destination options.
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DSTOPTS: u8 = 60;
/// TCP flags (byte 13 of the header).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
/// Offset of the UDP header when the IPv4 header has no options.
pub const UDP_OFF: usize = ETH_HLEN + IPV4_HLEN;
/// Offset of the UDP payload (RTP/RTCP header) when the IPv4 header has no options.
pub const PAYLOAD_OFF: usize = UDP_OFF + UDP_HLEN;
/// `frag_off` bits, host order: more fragments, and the fragment offset.
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
pub struct UdpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class, flow label.
    pub vtcfl: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_HLEN);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_HLEN);

/// A pointer to a `T` at `offset` bytes into the frame, or `None` when the frame is shorter.
///
/// The comparison against `data_end` is what lets the verifier accept the access; every packet
/// read and write in the programs goes through here.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads two wire bytes as a native `u16` (no byte swap).
#[inline(always)]
pub const fn ne16(b: [u8; 2]) -> u16 {
    u16::from_ne_bytes(b)
}

/// Reads four wire bytes as a native `u32` (no byte swap).
#[inline(always)]
pub const fn ne32(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// Reads a big-endian field in host order.
#[inline(always)]
pub const fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Writes a MAC address as one 4-byte and one 2-byte store (a `[u8; 6]` assignment becomes six
/// byte stores).
///
/// # Safety
/// `dst` must be valid for writing 6 bytes (a bounds-checked header field).
#[inline(always)]
pub unsafe fn write_mac(dst: *mut [u8; 6], mac: [u8; 6]) {
    let head = u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let tail = u16::from_ne_bytes([mac[4], mac[5]]);
    // SAFETY: the caller guarantees 6 writable bytes; unaligned writes need no alignment.
    unsafe {
        dst.cast::<u32>().write_unaligned(head);
        dst.cast::<u8>().add(4).cast::<u16>().write_unaligned(tail);
    }
}
