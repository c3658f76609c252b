//! The kernel/user ABI of sipveil, shared by the XDP programs (`ebpf/`) and the daemon (`edge/`).
//!
//! Rules (house rule 5): `#[repr(C)]`, explicit padding, no `bool`/`usize`/`Option`, sizes asserted at
//! compile time, map names as constants, and an ABI version that the daemon checks before it adopts
//! pinned maps or attaches a program.
//!
//! Byte order: addresses and ports inside map keys and values are stored **as they are on the wire**
//! (network byte order), so the XDP program compares and copies them without conversion. Use the
//! constructors (`FlowKey::v4`, [`ip4`], [`port`]) from userspace. Fields in [`Config`] that are not
//! addresses are host byte order.
#![no_std]

/// Bumped whenever a key, a value, a map definition or a counter index changes meaning.
pub const ABI_VERSION: u32 = 1;

/// Names of the maps of the entry program, as they appear in the object and under the pin directory.
pub mod maps {
    /// `HashMap<FlowKey, Flow>`: media flows keyed by the edge's own (address, port).
    pub const FLOWS: &str = "SV_FLOWS";
    /// `PerCpuArray<u64>` indexed by [`crate::Counter`]: one counter per reason.
    pub const COUNTERS: &str = "SV_COUNTERS";
    /// `Array<Config>` with one entry: settings the daemon may change while the program runs.
    pub const CONFIG: &str = "SV_CONFIG";
    /// `DevMapHash` keyed by ifindex: the interfaces the relay may redirect to.
    pub const TX_PORTS: &str = "SV_TX_PORTS";
    /// Every map the daemon requires before it attaches or adopts.
    pub const REQUIRED: [&str; 4] = [FLOWS, COUNTERS, CONFIG, TX_PORTS];
}

/// Name of the XDP entry program inside the object.
pub const ENTRY_PROGRAM: &str = "sipveil_entry";

/// Capacity of [`maps::FLOWS`]. Two entries per media direction and port (RTP and RTCP unless muxed).
pub const MAX_FLOWS: u32 = 65_536;
/// Capacity of [`maps::TX_PORTS`].
pub const MAX_TX_PORTS: u32 = 64;

/// Address family tags used in [`FlowKey::family`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
/// IP protocol number of UDP, used in [`FlowKey::proto`].
pub const PROTO_UDP: u8 = 17;

/// Key of [`maps::FLOWS`]: the edge's own address and port that a packet was sent to.
///
/// IPv4 uses `addr[0]` (wire order) and leaves the other words zero; IPv6 uses all four.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub addr: [u32; 4],
    /// UDP port, wire order.
    pub port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Always [`PROTO_UDP`] today.
    pub proto: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 20);

impl FlowKey {
    /// A key for an IPv4 address given as its four octets and a port in host order.
    pub const fn v4(octets: [u8; 4], port_host: u16) -> Self {
        FlowKey {
            addr: [ip4(octets), 0, 0, 0],
            port: port(port_host),
            family: FAMILY_IPV4,
            proto: PROTO_UDP,
        }
    }
}

/// An IPv4 address as stored in maps (the four octets in wire order, read as a native `u32`).
pub const fn ip4(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an IPv4 address stored with [`ip4`].
pub const fn ip4_octets(stored: u32) -> [u8; 4] {
    stored.to_ne_bytes()
}

/// A port as stored in maps (wire order).
pub const fn port(host: u16) -> u16 {
    host.to_be()
}

/// A port stored with [`port`], back in host order.
pub const fn port_host(stored: u16) -> u16 {
    u16::from_be(stored)
}

/// Latch: the source of the first packet on this flow becomes the destination of the `reverse` flow
/// (symmetric RTP behind NAT). Once latched, the flow stays latched until the daemon clears
/// [`FLOW_F_LATCHED`] (for example after a re-INVITE).
pub const FLOW_F_LATCH: u16 = 1 << 0;
/// Strict source: only packets whose source address equals `expect_addr` (and `expect_port` when it is
/// non-zero) are relayed; others are dropped and counted ([`Counter::StrictDrop`]).
pub const FLOW_F_STRICT: u16 = 1 << 1;
/// Set by the program when it has latched; cleared by the daemon to learn again.
pub const FLOW_F_LATCHED: u16 = 1 << 2;
/// Informational: this flow carries RTCP (port + 1) rather than RTP; counted separately.
pub const FLOW_F_RTCP: u16 = 1 << 3;
/// Informational: RTP and RTCP share this port (rtcp-mux); RTCP packets are recognised by their
/// payload type (RFC 5761) and counted separately.
pub const FLOW_F_RTCP_MUX: u16 = 1 << 4;

/// Value of [`maps::FLOWS`].
///
/// The first block is written by the daemon. The second block is written by the program (with atomic
/// adds for the counters); the daemon preserves it when it updates a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// Where to send: the peer's address (wire order). Latching on the reverse flow rewrites it.
    pub dst_addr: [u32; 4],
    /// The edge address the relayed packet leaves from.
    pub src_addr: [u32; 4],
    /// The sender's address announced in SDP; checked in strict mode.
    pub expect_addr: [u32; 4],
    /// The flow whose destination this flow's latching updates (the other direction, same kind).
    pub reverse: FlowKey,
    /// Peer port (wire order).
    pub dst_port: u16,
    /// Edge port the relayed packet leaves from (wire order).
    pub src_port: u16,
    /// Announced sender port (wire order); 0 = any port.
    pub expect_port: u16,
    /// `FLOW_F_*` bits.
    pub flags: u16,
    /// Egress interface hint; 0 = the one `bpf_fib_lookup` returns.
    pub ifindex: u32,
    /// Daemon-side generation number (bumped on each update; lets the daemon detect stale entries).
    pub generation: u32,
    pub _pad1: [u8; 4],
    /// --- written by the program ---
    /// Packets relayed from this flow's port.
    pub packets: u64,
    /// Bytes (IP datagram length) relayed from this flow's port.
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at tick resolution, a few ms) of the last
    /// relayed packet: compare with `CLOCK_MONOTONIC` allowing one tick.
    pub last_seen_ns: u64,
    /// Source learned by latching (wire order).
    pub latched_addr: [u32; 4],
    pub latched_port: u16,
    pub _pad0: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Flow>() == 136);
const _: () = assert!(core::mem::align_of::<Flow>() == 8);

/// Settings in [`maps::CONFIG`] (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Must equal [`ABI_VERSION`]; otherwise the program passes everything (fail-open).
    pub abi_version: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Relay port range (host order, inclusive). Packets to other ports skip the flow lookup.
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    /// TTL (hop limit) written into relayed packets; 0 means 64.
    pub ttl: u8,
    pub _pad0: [u8; 3],
    /// Room for later settings without an ABI bump of the layout.
    pub reserved: [u32; 12],
}
const _: () = assert!(core::mem::size_of::<Config>() == 64);

/// The relay is on. Without it the program passes every packet.
pub const CONFIG_F_RELAY: u32 = 1 << 0;

/// Indices of [`maps::COUNTERS`]: one per outcome or drop reason. Append only.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Frames seen by the entry program.
    Rx = 0,
    /// Relayed out of the interface they came in on (XDP_TX).
    RelayedTx = 1,
    /// Relayed to another interface (XDP_REDIRECT through the devmap).
    RelayedRedirect = 2,
    /// Of the relayed packets, those that were RTCP (port + 1 flows, or RTCP on an rtcp-mux port).
    RelayedRtcp = 3,
    /// Bytes relayed (IP datagram length).
    RelayedBytes = 4,
    /// A flow learned its peer's source from this packet.
    Latched = 5,
    /// UDP to the relay port range but no flow: passed to the stack.
    NoFlowPass = 6,
    /// Strict mode: the source was not the announced one; dropped.
    StrictDrop = 7,
    /// `bpf_fib_lookup` found no route or no neighbour: passed (the userspace relay sends it).
    FibFailPass = 8,
    /// Truncated or inconsistent headers: passed.
    MalformedPass = 9,
    /// Not IPv4/UDP, or UDP outside the relay range: passed without lookup.
    NotOursPass = 10,
    /// IPv4 fragment to a relay port: passed (the stack reassembles; the userspace relay sends it).
    FragmentPass = 11,
    /// IPv4 with options to a relay port: passed (userspace sends it without the options).
    IpOptionsPass = 12,
    /// The config entry is missing or of another ABI version: passed.
    ConfigPass = 13,
    /// The devmap had no entry for the egress interface: passed.
    RedirectFailPass = 14,
    /// TTL would expire (<= 1): passed so the stack answers.
    TtlPass = 15,
}

impl Counter {
    /// Number of counters (size of the per-CPU array).
    pub const COUNT: u32 = 16;
    /// Every counter, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Rx,
        Counter::RelayedTx,
        Counter::RelayedRedirect,
        Counter::RelayedRtcp,
        Counter::RelayedBytes,
        Counter::Latched,
        Counter::NoFlowPass,
        Counter::StrictDrop,
        Counter::FibFailPass,
        Counter::MalformedPass,
        Counter::NotOursPass,
        Counter::FragmentPass,
        Counter::IpOptionsPass,
        Counter::ConfigPass,
        Counter::RedirectFailPass,
        Counter::TtlPass,
    ];

    /// A stable snake_case name (metrics and CLI).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Rx => "rx",
            Counter::RelayedTx => "relayed_tx",
            Counter::RelayedRedirect => "relayed_redirect",
            Counter::RelayedRtcp => "relayed_rtcp",
            Counter::RelayedBytes => "relayed_bytes",
            Counter::Latched => "latched",
            Counter::NoFlowPass => "no_flow_pass",
            Counter::StrictDrop => "strict_source_drop",
            Counter::FibFailPass => "fib_fail_pass",
            Counter::MalformedPass => "malformed_pass",
            Counter::NotOursPass => "not_ours_pass",
            Counter::FragmentPass => "fragment_pass",
            Counter::IpOptionsPass => "ip_options_pass",
            Counter::ConfigPass => "config_pass",
            Counter::RedirectFailPass => "redirect_fail_pass",
            Counter::TtlPass => "ttl_pass",
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

/// Names and load-time settings of the lab/bench helper programs (ebpf bin `sv-lab`). Not part of the
/// deployed data plane: nothing here is pinned or adopted, so it does not take part in [`ABI_VERSION`].
pub mod lab {
    /// XDP_PASS for every frame (attached to veth peers).
    pub const PASS_PROGRAM: &str = "sv_pass";
    /// Counts and drops UDP to the ports in [`SINK_PORTS_GLOBAL`]; passes everything else.
    pub const SINK_PROGRAM: &str = "sv_sink";
    /// The bench ceiling: one hard-wired flow from [`CEILING_FLOW_GLOBAL`], no map lookup, no FIB.
    pub const CEILING_PROGRAM: &str = "sv_ceiling";
    /// XDP_TX for every frame: a packet generator with BPF_PROG_TEST_RUN live frames.
    pub const GEN_PROGRAM: &str = "sv_gen";

    /// `PerCpuArray<u64>` of `sv_sink`: index [`SINK_PACKETS`] and [`SINK_BYTES`] (frame length).
    pub const SINK_MAP: &str = "SVL_SINK";
    pub const SINK_PACKETS: u32 = 0;
    pub const SINK_BYTES: u32 = 1;
    /// Read-only global of `sv_sink`, a [`SinkPorts`] (set with `EbpfLoader::override_global`).
    pub const SINK_PORTS_GLOBAL: &str = "SVL_SINK_PORTS";

    /// UDP destination port range counted by `sv_sink` (host order, inclusive). The default (0, 0)
    /// counts nothing.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct SinkPorts {
        pub min: u16,
        pub max: u16,
    }
    const _: () = assert!(core::mem::size_of::<SinkPorts>() == 4);

    /// Read-only global of `sv_ceiling`, a [`CeilingFlow`].
    pub const CEILING_FLOW_GLOBAL: &str = "SVL_CEILING_FLOW";
    /// `DevMapHash` keyed by ifindex (8 entries): where `sv_ceiling` may redirect.
    pub const CEILING_TX_MAP: &str = "SVL_TX";

    /// The one flow `sv_ceiling` forwards. Addresses and ports in wire order (use [`crate::ip4`] and
    /// [`crate::port`]). A packet to `match_addr:match_port` (IPv4/UDP, no options, not a fragment)
    /// gets `src_addr:src_port -> dst_addr:dst_port`, TTL `ttl`, the two MACs, and leaves with XDP_TX
    /// when `egress_ifindex` is 0, else through `SVL_TX[egress_ifindex]` (XDP_PASS when that entry is
    /// missing). Everything else passes.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct CeilingFlow {
        pub match_addr: u32,
        pub src_addr: u32,
        pub dst_addr: u32,
        pub egress_ifindex: u32,
        pub match_port: u16,
        pub src_port: u16,
        pub dst_port: u16,
        pub src_mac: [u8; 6],
        pub dst_mac: [u8; 6],
        pub ttl: u8,
        pub _pad0: u8,
    }
    const _: () = assert!(core::mem::size_of::<CeilingFlow>() == 36);

    /// `PerCpuArray<u64>` of `sv_gen` (one entry): frames it has transmitted.
    pub const GEN_COUNT_MAP: &str = "SVL_GEN_COUNT";
    /// Read-only global of `sv_gen`, a `u32` of `GEN_F_*` bits.
    pub const GEN_FLAGS_GLOBAL: &str = "SVL_GEN_FLAGS";
    /// `sv_gen` writes its per-CPU frame count (low 16 bits) into the RTP sequence number of
    /// IPv4/UDP frames (no options) and fixes the UDP checksum incrementally (0 stays 0), so the
    /// recycled live frames differ from one transmission to the next.
    pub const GEN_F_RTP_SEQ: u32 = 1 << 0;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::lab::SinkPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::lab::CeilingFlow {}
}
