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
///
/// 2: the flood shield's maps (`SV_SRC_BUCKETS`, `SV_GLOBAL_BKT`, `SV_ALLOW`, `SV_BLOCK`,
/// `SV_SHIELD_CFG`, `SV_SHIELD_EVT`) and counters 16.. (see [`shield`]).
/// 3: RTCP is passed up for scrubbing ([`Counter::RtcpPass`], `SV_COUNTERS` has 31 entries);
/// [`Counter::RelayedRtcp`] is no longer counted by the program.
/// 4: per-class global ceilings ([`shield::ShieldConfig::class_global_per_cpu`], 208 bytes;
/// `SV_GLOBAL_BKT` has [`shield::GLOBAL_BUCKETS`] entries) and counters
/// [`Counter::DropGlobalClass`], [`Counter::ShieldCacheHits`] (`SV_COUNTERS` has 33 entries).
pub const ABI_VERSION: u32 = 4;

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

    // --- the flood shield (see `crate::shield`); names stay within the kernel's 15 characters ---
    /// `LruHashMap<SourceKey, SourceBuckets>`: one token bucket per method class per source
    /// (IPv4 /32, IPv6 /64). Written by the program; the daemon may read, delete or reset entries.
    pub const SHIELD_BUCKETS: &str = "SV_SRC_BUCKETS";
    /// `PerCpuArray<TokenBucket>` with one entry: each CPU's share of the global ceiling.
    pub const SHIELD_GLOBAL: &str = "SV_GLOBAL_BKT";
    /// `LpmTrie<AllowData, AllowEntry>`: sources with higher limits, written by the daemon.
    pub const SHIELD_ALLOW: &str = "SV_ALLOW";
    /// `HashMap<SourceKey, BlockEntry>`: blocked sources with expiry and reason, written by the daemon.
    pub const SHIELD_BLOCK: &str = "SV_BLOCK";
    /// `Array<ShieldConfig>` with one entry: the shield's settings, reloadable while attached.
    pub const SHIELD_CONFIG: &str = "SV_SHIELD_CFG";
    /// `RingBuf` of [`crate::shield::ShieldEvent`]: sampled "source newly limited" events.
    pub const SHIELD_EVENTS: &str = "SV_SHIELD_EVT";

    /// Every map the daemon requires before it attaches or adopts (and pins under its instance).
    pub const REQUIRED: [&str; 10] = [
        FLOWS,
        COUNTERS,
        CONFIG,
        TX_PORTS,
        SHIELD_BUCKETS,
        SHIELD_GLOBAL,
        SHIELD_ALLOW,
        SHIELD_BLOCK,
        SHIELD_CONFIG,
        SHIELD_EVENTS,
    ];
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
/// This flow carries RTCP (port + 1) rather than RTP: the program passes its packets to the
/// userspace relay, which scrubs them (RTCP privacy, ABI 3); [`Counter::RtcpPass`].
pub const FLOW_F_RTCP: u16 = 1 << 3;
/// RTP and RTCP share this port (rtcp-mux); RTCP packets are recognised by their payload type
/// (RFC 5761) and passed to the userspace relay like those of [`FLOW_F_RTCP`] flows.
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

/// The relay is on. Without it, packets to the relay port range pass ([`Counter::ConfigPass`]);
/// the shield ([`shield::ShieldConfig`]) has its own switch.
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
    /// Of the relayed packets, those that were RTCP. Since ABI 3 the program relays no RTCP (see
    /// [`Counter::RtcpPass`]) and leaves this at 0; the index stays.
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
    /// Neither relayed nor shielded: not IPv4/IPv6, not UDP/TCP, UDP outside the relay range and
    /// not to a SIP port, TCP other than a SYN to a SIP TCP port, or the shield is off. Passed
    /// without lookup.
    NotOursPass = 10,
    /// IPv4 fragment to a relay port: passed (the stack reassembles; the userspace relay sends it).
    FragmentPass = 11,
    /// IPv4 with options to a relay port: passed (userspace sends it without the options).
    IpOptionsPass = 12,
    /// The config entry is missing or of another ABI version (every packet), or the relay is off
    /// (packets to the relay port range): passed.
    ConfigPass = 13,
    /// The devmap had no entry for the egress interface: passed.
    RedirectFailPass = 14,
    /// TTL would expire (<= 1): passed so the stack answers.
    TtlPass = 15,
    // --- the flood shield: one outcome per packet to a SIP port (UDP) or SYN to a SIP TCP port ---
    /// Within its source's limits (and the global ceiling): passed.
    ShieldPass = 16,
    /// From an allowlisted source, within its (higher) limits: passed.
    ShieldAllowPass = 17,
    /// REGISTER over its source's rate: dropped.
    DropRateRegister = 18,
    /// INVITE over its source's rate: dropped.
    DropRateInvite = 19,
    /// OPTIONS over its source's rate: dropped.
    DropRateOptions = 20,
    /// Another SIP method over its source's rate: dropped.
    DropRateOther = 21,
    /// A SIP response (`SIP/2.0 ...`) over its source's rate: dropped.
    DropRateResponse = 22,
    /// UDP to a SIP port that does not start like SIP, over its source's rate: dropped.
    DropNotSip = 23,
    /// The source is on the blocklist (unexpired): dropped.
    DropBlocked = 24,
    /// Within its source's limits but over the global ceiling: dropped.
    DropGlobal = 25,
    /// TCP SYN to a SIP TCP/TLS port over its source's rate: dropped.
    DropSynRate = 26,
    /// Fail-open: the source's bucket could not be created (map full or busy): passed.
    ShieldMapFailPass = 27,
    /// Not an outcome: "source newly limited" events written to the ring buffer.
    ShieldEvents = 28,
    /// Not an outcome: events lost because the ring buffer was full.
    ShieldEventsLost = 29,
    /// RTCP (a [`FLOW_F_RTCP`] flow, or RTCP on a [`FLOW_F_RTCP_MUX`] flow) from an accepted
    /// source: passed to the userspace relay, which removes what identifies the sender (SDES
    /// items, BYE reasons, APP) before sending it on. Strict-source drops happen first.
    RtcpPass = 30,
    /// Within its source's limits but over the global ceiling of its class
    /// ([`shield::ShieldConfig::class_global_per_cpu`]): dropped.
    DropGlobalClass = 31,
    /// Not an outcome: drops decided by the per-CPU cache of the last dropped source (counted
    /// under their reason as well; see `ebpf/src/shield.rs`).
    ShieldCacheHits = 32,
}

impl Counter {
    /// Number of counters (size of the per-CPU array).
    pub const COUNT: u32 = 33;
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
        Counter::ShieldPass,
        Counter::ShieldAllowPass,
        Counter::DropRateRegister,
        Counter::DropRateInvite,
        Counter::DropRateOptions,
        Counter::DropRateOther,
        Counter::DropRateResponse,
        Counter::DropNotSip,
        Counter::DropBlocked,
        Counter::DropGlobal,
        Counter::DropSynRate,
        Counter::ShieldMapFailPass,
        Counter::ShieldEvents,
        Counter::ShieldEventsLost,
        Counter::RtcpPass,
        Counter::DropGlobalClass,
        Counter::ShieldCacheHits,
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
            Counter::ShieldPass => "shield_pass",
            Counter::ShieldAllowPass => "shield_pass_allowlisted",
            Counter::DropRateRegister => "shield_drop_rate_register",
            Counter::DropRateInvite => "shield_drop_rate_invite",
            Counter::DropRateOptions => "shield_drop_rate_options",
            Counter::DropRateOther => "shield_drop_rate_other",
            Counter::DropRateResponse => "shield_drop_rate_response",
            Counter::DropNotSip => "shield_drop_not_sip",
            Counter::DropBlocked => "shield_drop_blocked",
            Counter::DropGlobal => "shield_drop_global",
            Counter::DropSynRate => "shield_drop_syn_rate",
            Counter::ShieldMapFailPass => "shield_map_fail_pass",
            Counter::ShieldEvents => "shield_events",
            Counter::ShieldEventsLost => "shield_events_lost",
            Counter::RtcpPass => "rtcp_pass",
            Counter::DropGlobalClass => "shield_drop_global_class",
            Counter::ShieldCacheHits => "shield_cache_hits",
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

/// The flood shield's part of the ABI: keys, values and settings of the `SV_SRC_BUCKETS`,
/// `SV_GLOBAL_BKT`, `SV_ALLOW`, `SV_BLOCK`, `SV_SHIELD_CFG` and `SV_SHIELD_EVT` maps.
///
/// What the program does with them (ebpf/src/shield.rs): a UDP packet to one of
/// [`ShieldConfig::udp_ports`], or a TCP SYN (without ACK) to one of [`ShieldConfig::tcp_ports`],
/// is checked against, in this order:
/// 1. the allowlist (a matching unexpired entry multiplies its limits, and exempts it from the
///    ceiling);
/// 2. for a source not allowlisted, the global ceiling: when this CPU's share has no token left
///    the packet is dropped here ([`crate::Counter::DropGlobal`]), before the blocklist and the
///    source's buckets are looked at (under a flood from many sources those are cold cache
///    lines, an LRU insert for a new source: the drop stays cheap);
/// 3. the blocklist (an unexpired entry for its source drops it, [`crate::Counter::DropBlocked`]);
/// 4. [`ALLOW_F_UNLIMITED`]: passes without any limit;
/// 5. its source's token bucket for its [`ShieldClass`] (over the rate: dropped, counted per class,
///    and at most one [`ShieldEvent`] per source per [`ShieldConfig::event_interval_ms`]);
/// 6. the ceiling's token is taken (a packet dropped by its source's rate costs the ceiling
///    nothing).
///
/// Besides the global ceiling, each class may have a ceiling of its own over all sources that
/// are not allowlisted ([`ShieldConfig::class_global_per_cpu`], `SV_GLOBAL_BKT` entry 1 + class):
/// checked and charged together with the global one (step 2, just before it: no token →
/// [`crate::Counter::DropGlobalClass`], whatever the global ceiling holds; step 6 takes one
/// token from each). So REGISTER and INVITE from unknown sources, the requests that cost the daemon
/// most, can be held far below the total while keep-alives keep their own share.
///
/// Before all of this, the program looks at a per-CPU cache of the last source it dropped (not
/// part of the ABI): a packet of the same source and class within the cached verdict's lifetime
/// is dropped with the same counter at once. A rate drop is cached until its bucket would hold a
/// token again (at most 1/rate s), a block for at most 20 ms; so a changed limit, a new allow
/// or block or an unblock takes effect for a source within that time.
///
/// The verdicts are those of "blocklist, allowlist, source, ceiling" (a blocked source is
/// dropped whatever its allowlisting); the counters differ in one case — a blocked source's
/// packets count as `DropGlobal` while the ceiling is exhausted — and while it is, a source's
/// packets are not charged to its own buckets: a source whose packets are all dropped by the
/// ceiling is neither counted nor reported per source (no event).
///
/// Sources are grouped as IPv4 /32 and IPv6 /64 ([`SourceKey`]). Time is
/// `bpf_ktime_get_coarse_ns()`: `CLOCK_MONOTONIC` at tick resolution (4 ms on this project's
/// kernels); the daemon writes expiries on the same clock (`CLOCK_MONOTONIC` plus the duration).
/// Token arithmetic is integer: a bucket holds `tokens` in units of 1/[`TOKEN`] packet, so a
/// refill is exactly `elapsed_ns * rate_per_s` with no division.
pub mod shield {
    use crate::Counter;

    /// One packet's worth of tokens ([`TokenBucket::tokens`] are nano-packets): `elapsed_ns *
    /// rate` (packets per second) adds exactly the right amount.
    pub const TOKEN: u64 = 1_000_000_000;
    /// Largest rate the program applies (packets per second); larger values are clamped.
    pub const MAX_RATE: u32 = 1_000_000;
    /// Largest burst the program applies (packets); larger values are clamped.
    pub const MAX_BURST: u32 = 1_000_000;
    /// Largest allowlist multiplier the program applies; larger values are clamped.
    pub const MAX_MULTIPLIER: u32 = 10_000;
    /// A bucket idle for this long (about 18 minutes) is simply full again. Keeps
    /// `elapsed * rate` below 2^60.
    pub const MAX_ELAPSED_NS: u64 = 1 << 40;
    /// Events per source at most once per this many milliseconds when the config says 0.
    pub const DEFAULT_EVENT_INTERVAL_MS: u32 = 1_000;

    /// Capacity of `SV_SRC_BUCKETS` (LRU: the least recently seen source is forgotten first, and
    /// comes back as a new source: see [`SHIELD_F_NEW_SOURCE`]).
    pub const MAX_SOURCES: u32 = 131_072;
    /// Capacity of `SV_BLOCK`.
    pub const MAX_BLOCKED: u32 = 65_536;
    /// Capacity of `SV_ALLOW`.
    pub const MAX_ALLOWED: u32 = 65_536;
    /// Size of `SV_SHIELD_EVT` in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 256 * 1024;
    /// Number of SIP UDP ports and of SIP TCP/TLS ports in [`ShieldConfig`].
    pub const MAX_PORTS: usize = 4;
    /// Entries of `SV_GLOBAL_BKT` (per CPU): 0 is the global ceiling, 1 + a class index that
    /// class's ceiling.
    pub const GLOBAL_BUCKETS: u32 = 1 + CLASSES as u32;

    /// What a packet is, for its limit: the first bytes of the UDP payload, or a TCP SYN.
    #[repr(u8)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ShieldClass {
        /// `REGISTER` request.
        Register = 0,
        /// `INVITE` request.
        Invite = 1,
        /// `OPTIONS` request.
        Options = 2,
        /// Any other request: 3 to 8 upper-case letters followed by a space (`ACK `, `BYE `,
        /// `CANCEL `, `NOTIFY `, ...) or 8 upper-case letters (`SUBSCRIBE`, `PUBLISH ` ...).
        Other = 3,
        /// A response: the payload starts with `SIP/2.0 `. Responses answer the edge's own
        /// requests, so their legitimate rate follows what the edge sends; they get their own
        /// bucket rather than sharing one with requests.
        Response = 4,
        /// Anything else to a SIP UDP port, including payloads shorter than 8 bytes (CRLF or
        /// STUN NAT keep-alives land here: keep this class's rate above the clients' keep-alive
        /// rate if they use them).
        NotSip = 5,
        /// TCP SYN (without ACK) to a SIP TCP/TLS port: new connections per source.
        Syn = 6,
    }

    /// Entries of [`ShieldConfig::limits`] and [`SourceBuckets::classes`] (one spare).
    pub const CLASSES: usize = 8;

    impl ShieldClass {
        /// Every class, in index order.
        pub const ALL: [ShieldClass; 7] = [
            ShieldClass::Register,
            ShieldClass::Invite,
            ShieldClass::Options,
            ShieldClass::Other,
            ShieldClass::Response,
            ShieldClass::NotSip,
            ShieldClass::Syn,
        ];

        /// The counter of packets of this class dropped by their source's rate.
        pub const fn drop_counter(self) -> Counter {
            match self {
                ShieldClass::Register => Counter::DropRateRegister,
                ShieldClass::Invite => Counter::DropRateInvite,
                ShieldClass::Options => Counter::DropRateOptions,
                ShieldClass::Other => Counter::DropRateOther,
                ShieldClass::Response => Counter::DropRateResponse,
                ShieldClass::NotSip => Counter::DropNotSip,
                ShieldClass::Syn => Counter::DropSynRate,
            }
        }

        /// A stable snake_case name (metrics, CLI, events).
        pub const fn name(self) -> &'static str {
            match self {
                ShieldClass::Register => "register",
                ShieldClass::Invite => "invite",
                ShieldClass::Options => "options",
                ShieldClass::Other => "other",
                ShieldClass::Response => "response",
                ShieldClass::NotSip => "not_sip",
                ShieldClass::Syn => "syn",
            }
        }

        /// The class with this index.
        pub const fn from_index(i: u8) -> Option<ShieldClass> {
            if (i as usize) < ShieldClass::ALL.len() {
                Some(ShieldClass::ALL[i as usize])
            } else {
                None
            }
        }
    }

    const _: () = {
        let mut i = 0;
        while i < ShieldClass::ALL.len() {
            assert!(ShieldClass::ALL[i] as usize == i);
            i += 1;
        }
        assert!(ShieldClass::ALL.len() <= CLASSES);
    };

    /// Key of `SV_SRC_BUCKETS` and `SV_BLOCK`: a source, grouped as the program limits it.
    ///
    /// IPv4: `prefix[0]` is the address (wire order, as [`crate::ip4`]), `prefix[1]` is 0.
    /// IPv6: the first 8 bytes of the address (its /64), wire order. Padding is zero.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct SourceKey {
        pub prefix: [u32; 2],
        /// [`crate::FAMILY_IPV4`] or [`crate::FAMILY_IPV6`].
        pub family: u8,
        pub _pad: [u8; 3],
    }
    const _: () = assert!(core::mem::size_of::<SourceKey>() == 12);

    impl SourceKey {
        /// The key of an IPv4 source.
        pub const fn v4(octets: [u8; 4]) -> SourceKey {
            SourceKey {
                prefix: [crate::ip4(octets), 0],
                family: crate::FAMILY_IPV4,
                _pad: [0; 3],
            }
        }

        /// The key of an IPv6 source: its /64.
        pub const fn v6(octets: [u8; 16]) -> SourceKey {
            SourceKey {
                prefix: [
                    u32::from_ne_bytes([octets[0], octets[1], octets[2], octets[3]]),
                    u32::from_ne_bytes([octets[4], octets[5], octets[6], octets[7]]),
                ],
                family: crate::FAMILY_IPV6,
                _pad: [0; 3],
            }
        }
    }

    /// A token bucket: `tokens` (in 1/[`TOKEN`] packets) as of `last_refill_ns`.
    ///
    /// On each packet: `tokens = min(burst * TOKEN, tokens + (now - last_refill_ns) * rate)`,
    /// `last_refill_ns = now`; the packet passes and takes [`TOKEN`] when `tokens >= TOKEN`.
    /// `last_refill_ns == 0` means "never used": the bucket is full. The program creates the
    /// buckets of a new source with `last_refill_ns == 0` when the source is allowlisted or
    /// [`SHIELD_F_NEW_SOURCE`] is clear, otherwise with `tokens = new_source_burst * TOKEN` as
    /// of its first packet.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct TokenBucket {
        pub tokens: u64,
        pub last_refill_ns: u64,
    }
    const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

    /// Value of `SV_SRC_BUCKETS`: a source's buckets, one per [`ShieldClass`], written by the
    /// program without atomics. Two CPUs updating the same source at the same instant can each
    /// pass a packet on the same token: the limit can be exceeded by at most one packet per CPU
    /// per race, never by a rate.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct SourceBuckets {
        /// Indexed by [`ShieldClass`].
        pub classes: [TokenBucket; CLASSES],
        /// When the last event for this source was written (0: never).
        pub last_event_ns: u64,
        /// Packets of this source dropped by its rate limits (approximate: plain adds).
        pub dropped: u64,
    }
    const _: () = assert!(core::mem::size_of::<SourceBuckets>() == 144);
    const _: () = assert!(core::mem::align_of::<SourceBuckets>() == 8);

    /// Bits of the LPM trie key of `SV_ALLOW` taken by [`AllowData::family`]: the key's
    /// `prefix_len` is this plus the address prefix length.
    pub const ALLOW_FAMILY_BITS: u32 = 32;

    /// The data part of the `SV_ALLOW` LPM trie key (`prefix_len: u32` comes first, as the kernel
    /// requires). The family is matched as the first 32 bits, so one trie holds both families.
    /// Build keys with [`AllowData::v4`]/[`AllowData::v6`] and [`AllowData::prefix_len`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct AllowData {
        /// [`crate::FAMILY_IPV4`] or [`crate::FAMILY_IPV6`], as a `u32` in network byte order
        /// (so the family byte is the last of the 32 matched bits and the rest are zero).
        pub family: u32,
        /// IPv4: `addr[0]` (wire order), the rest 0. IPv6: all four words, wire order.
        pub addr: [u32; 4],
    }
    const _: () = assert!(core::mem::size_of::<AllowData>() == 20);

    impl AllowData {
        pub const fn v4(octets: [u8; 4]) -> AllowData {
            AllowData {
                family: (crate::FAMILY_IPV4 as u32).to_be(),
                addr: [crate::ip4(octets), 0, 0, 0],
            }
        }

        pub const fn v6(octets: [u8; 16]) -> AllowData {
            let o = octets;
            AllowData {
                family: (crate::FAMILY_IPV6 as u32).to_be(),
                addr: [
                    u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
                    u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
                    u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
                    u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
                ],
            }
        }

        /// The trie key's `prefix_len` for an address prefix of `addr_bits` (0..=32 for IPv4,
        /// 0..=128 for IPv6).
        pub const fn prefix_len(addr_bits: u32) -> u32 {
            ALLOW_FAMILY_BITS + addr_bits
        }
    }

    /// [`AllowEntry::flags`]: the source is not limited at all (no bucket, no global ceiling).
    pub const ALLOW_F_UNLIMITED: u16 = 1 << 0;

    /// Why a source is allowlisted ([`AllowEntry::reason`]); informational for the daemon.
    pub const ALLOW_REASON_CONFIGURED: u16 = 1;
    pub const ALLOW_REASON_REGISTERED: u16 = 2;
    pub const ALLOW_REASON_AUTHENTICATED: u16 = 3;

    /// Value of `SV_ALLOW`, written by the daemon.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct AllowEntry {
        /// `bpf_ktime_get_coarse_ns` time after which the entry no longer counts; 0 = never.
        pub expires_ns: u64,
        /// Rates and bursts of this source are multiplied by this (clamped to
        /// [`MAX_MULTIPLIER`]); 0 = [`ShieldConfig::allow_multiplier`].
        pub multiplier: u32,
        /// `ALLOW_F_*` bits.
        pub flags: u16,
        /// `ALLOW_REASON_*` (or the daemon's own codes).
        pub reason: u16,
    }
    const _: () = assert!(core::mem::size_of::<AllowEntry>() == 16);

    /// Why a source is blocked ([`BlockEntry::reason`]); informational for the daemon and CLI.
    pub const BLOCK_REASON_MANUAL: u32 = 1;
    pub const BLOCK_REASON_AUTH_FAILURES: u32 = 2;
    pub const BLOCK_REASON_UNKNOWN_USERS: u32 = 3;
    pub const BLOCK_REASON_SCANNER: u32 = 4;
    pub const BLOCK_REASON_RATE: u32 = 5;

    /// Value of `SV_BLOCK`, written by the daemon. The program never deletes entries: the
    /// daemon removes expired ones (and logs the release).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct BlockEntry {
        /// `bpf_ktime_get_coarse_ns` time after which the block no longer applies; 0 = never.
        pub expires_ns: u64,
        /// `BLOCK_REASON_*` (or the daemon's own codes).
        pub reason: u32,
        pub _pad: u32,
    }
    const _: () = assert!(core::mem::size_of::<BlockEntry>() == 16);

    /// A rate limit: `rate` packets per second with bursts of `burst` packets.
    ///
    /// `rate == 0`: this class is not limited. `burst == 0` (with a rate): every packet of the
    /// class is dropped. The coarse clock advances in ticks (4 ms), so `burst` should be at least
    /// `rate * 0.004`, or the tick, not the rate, caps the throughput.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct RateLimit {
        pub rate: u32,
        pub burst: u32,
    }
    const _: () = assert!(core::mem::size_of::<RateLimit>() == 8);

    /// [`ShieldConfig::flags`]: the shield is on. Without it packets to the SIP ports pass
    /// ([`crate::Counter::NotOursPass`]).
    pub const SHIELD_F_ENABLED: u32 = 1 << 0;
    /// [`ShieldConfig::flags`]: a source the program has no bucket for and that is not
    /// allowlisted (a source never seen, or forgotten by the LRU) starts with
    /// [`ShieldConfig::new_source_burst`] tokens per class instead of a full bucket; its buckets
    /// then refill at the class rate up to the class burst. Without it (a config written before
    /// this flag existed, where the field was reserved and zero) fresh buckets start full.
    pub const SHIELD_F_NEW_SOURCE: u32 = 1 << 1;

    /// Value of `SV_SHIELD_CFG` (entry 0). Read on every shielded packet, so a write takes
    /// effect at once, without reattaching. Zeroed (never written): the shield is off.
    ///
    /// The program runs the shield only when `SV_CONFIG` holds this [`crate::ABI_VERSION`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct ShieldConfig {
        /// `SHIELD_F_*` bits.
        pub flags: u32,
        /// At most one event per source per this many milliseconds; 0 =
        /// [`DEFAULT_EVENT_INTERVAL_MS`].
        pub event_interval_ms: u32,
        /// SIP UDP ports (host order); 0 = unused slot.
        pub udp_ports: [u16; MAX_PORTS],
        /// SIP TCP and TLS ports (host order) whose SYNs are limited per source; 0 = unused.
        pub tcp_ports: [u16; MAX_PORTS],
        /// Per-source limits, indexed by [`ShieldClass`].
        pub limits: [RateLimit; CLASSES],
        /// The global ceiling **per receiving CPU** (each CPU keeps its own bucket, see
        /// `SV_GLOBAL_BKT`): the daemon divides the operator's total by the number of CPUs that
        /// receive. Allowlisted sources do not count against it. `rate == 0`: no ceiling.
        pub global_per_cpu: RateLimit,
        /// Multiplier of allowlisted sources' limits whose entry says 0; 0 here means 1.
        pub allow_multiplier: u32,
        pub _pad0: u32,
        /// With [`SHIELD_F_NEW_SOURCE`]: the packets of each class (indexed by [`ShieldClass`])
        /// a source may send at once when the program creates its buckets, i.e. the tokens a
        /// fresh bucket starts with (at most the class burst; 0 = the first packet of the class
        /// waits for one token of refill). Allowlisted sources get full buckets. Taken from
        /// what was `reserved` space: the layout and the size did not change, and a zeroed
        /// field with the flag clear means what it always meant, so [`crate::ABI_VERSION`]
        /// did not change either.
        pub new_source_burst: [u16; CLASSES],
        /// Room for later settings without an ABI bump of the layout.
        pub reserved: [u32; 6],
        /// Ceilings per class (indexed by [`ShieldClass`]) over all sources that are not
        /// allowlisted, **per receiving CPU** like [`ShieldConfig::global_per_cpu`] (ABI 4).
        /// `rate == 0`: that class has no ceiling of its own.
        pub class_global_per_cpu: [RateLimit; CLASSES],
    }
    const _: () = assert!(core::mem::size_of::<ShieldConfig>() == 208);

    /// [`ShieldEvent::reason`]: the source went over its rate for `class`.
    pub const EVENT_RATE_LIMITED: u16 = 1;

    /// One record of `SV_SHIELD_EVT`: a source was limited. Written at most once per source per
    /// [`ShieldConfig::event_interval_ms`] (tracked in [`SourceBuckets::last_event_ns`]), so a
    /// flood from one source costs one event per interval; when the ring is full, events are
    /// lost and counted ([`crate::Counter::ShieldEventsLost`]), packets are not affected.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct ShieldEvent {
        /// `bpf_ktime_get_coarse_ns` of the dropped packet.
        pub timestamp_ns: u64,
        /// The source's rate-limit drops so far ([`SourceBuckets::dropped`], this one included).
        pub dropped: u64,
        /// The full source address (not only its /64), wire order; IPv4 in `addr[0]`.
        pub addr: [u32; 4],
        /// [`crate::FAMILY_IPV4`] or [`crate::FAMILY_IPV6`].
        pub family: u8,
        /// [`ShieldClass`] of the dropped packet.
        pub class: u8,
        /// `EVENT_*`.
        pub reason: u16,
        /// Destination port of the dropped packet (host order).
        pub dport: u16,
        pub _pad: [u8; 2],
    }
    const _: () = assert!(core::mem::size_of::<ShieldEvent>() == 40);
    const _: () = assert!(core::mem::align_of::<ShieldEvent>() == 8);
}

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
    /// `sv_gen` rewrites the IPv4 source address of IPv4/UDP frames (no options) to
    /// `base + (per-CPU frame count mod count)` from [`GEN_SOURCES_GLOBAL`], fixing the IPv4 header
    /// checksum and the UDP checksum incrementally (a UDP checksum of 0 stays 0), so one live frame
    /// becomes a flood from `count` addresses. Ignored while `count` is 0.
    pub const GEN_F_SRC_ROTATE: u32 = 1 << 1;
    /// Read-only global of `sv_gen`, a [`GenSources`] (used with [`GEN_F_SRC_ROTATE`]).
    pub const GEN_SOURCES_GLOBAL: &str = "SVL_GEN_SOURCES";

    /// The source addresses `sv_gen` rotates through with [`GEN_F_SRC_ROTATE`]: `count` addresses
    /// from `base` upwards. Unlike the wire-order fields elsewhere in this crate, `base` is in host
    /// order (`u32::from(Ipv4Addr)`), because the program adds to it.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct GenSources {
        pub base: u32,
        pub count: u32,
    }
    const _: () = assert!(core::mem::size_of::<GenSources>() == 8);
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
    unsafe impl aya::Pod for super::shield::SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::shield::TokenBucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::shield::SourceBuckets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::shield::AllowData {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::shield::AllowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::shield::BlockEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::shield::ShieldConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::shield::ShieldEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::lab::SinkPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::lab::CeilingFlow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::lab::GenSources {}
}
