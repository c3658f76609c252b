//! The flood shield: per-source, per-method token buckets for SIP over UDP and for TCP SYNs to
//! the SIP TCP/TLS ports, with a blocklist, an allowlist and a global ceiling. Settings, state and
//! events are described in `sipveil_abi::shield`.
//!
//! The relay (`relay::try_relay`) parses Ethernet/IPv4 once and calls [`ipv4`] for UDP outside
//! the relay port range and for TCP, and [`ipv6`] for IPv6; relay ports never reach the shield.
//! Packets to other ports leave as `NotOursPass` after one config read and a port compare.
//!
//! Fail-open rules (every pass is counted):
//! - `SV_CONFIG` of another ABI version: everything passes (`ConfigPass`, in the relay);
//! - shield off (`SHIELD_F_ENABLED` clear), or not a SIP port: `NotOursPass`;
//! - truncated or inconsistent headers: `MalformedPass` (the stack drops those cheaply);
//! - later fragments (no ports to look at): `FragmentPass`;
//! - the source's bucket cannot be created (LRU insert failed): `ShieldMapFailPass`;
//!   (a source whose buckets are created gets a full burst when allowlisted, otherwise only
//!   `ShieldConfig::new_source_burst` with `SHIELD_F_NEW_SOURCE`: see `source_bucket`)
//! - a class whose rate is 0: not limited per source.
//!
//! The only drops are the shield's own: blocked source, per-source rate (per class), global
//! ceiling. Nothing is logged here; the daemon reads counters and sampled events.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    cty::c_long,
    helpers::bpf_ktime_get_coarse_ns,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use sipveil_abi::{
    Counter, FAMILY_IPV4, FAMILY_IPV6,
    shield::{
        ALLOW_F_UNLIMITED, ALLOW_FAMILY_BITS, AllowData, CLASSES, DEFAULT_EVENT_INTERVAL_MS,
        EVENT_RATE_LIMITED, MAX_BURST, MAX_ELAPSED_NS, MAX_MULTIPLIER, MAX_PORTS, MAX_RATE,
        SHIELD_F_ENABLED, SHIELD_F_NEW_SOURCE, ShieldClass, ShieldConfig, ShieldEvent,
        SourceBuckets, SourceKey, TOKEN, TokenBucket,
    },
};
use sipveil_ebpf::{
    packet::{
        ETH_HLEN, IP_MF, IP_OFFSET, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_DSTOPTS,
        IPV6_FRAGMENT, IPV6_HLEN, IPV6_HOPOPTS, IPV6_ROUTING, Ipv4Hdr, Ipv6Hdr, TCP_ACK,
        TCP_MIN_READ, TCP_SYN, UDP_HLEN, UdpHdr, be16, ne32, ptr_at,
    },
    sipclass::{CLASSIFY_BYTES, classify},
};

use core::num::NonZeroU64;

use crate::maps::{
    self, LastDrop, SV_ALLOW, SV_BLOCK, SV_GLOBAL_BKT, SV_SHIELD_CFG, SV_SHIELD_EVT,
    SV_SHIELD_LAST, SV_SHIELD_NEW, SV_SRC_BUCKETS,
};

/// `EEXIST`: the insert's answer when another CPU created the entry first.
const EEXIST: c_long = 17;
/// IPv6 extension headers walked before giving up (`MalformedPass`).
const MAX_IPV6_EXT: usize = 4;
/// Transport headers further into the frame than this are not looked for (`MalformedPass`);
/// also the bound the verifier needs for the variable offsets.
const MAX_L4_OFF: usize = 512;
/// IPv6 fragment header: the offset bits of its third and fourth bytes (host order).
const IPV6_FRAG_OFFSET: u16 = 0xfff8;
/// How long a blocked source's drop is remembered in this CPU's [`LastDrop`]: an unblock (or
/// a block's expiry) takes effect within this time.
const BLOCK_CACHE_NS: u64 = 20_000_000;

/// What the limiter needs to know about one packet.
#[repr(C)]
struct Source {
    key: SourceKey,
    /// The full source address (wire order), for events.
    addr: [u32; 4],
    /// Destination port, host order.
    dport: u16,
    /// `ShieldClass` as its index.
    class: u8,
    _pad: u8,
}

/// The shield's settings, or `NotOursPass` when it is off.
#[inline(always)]
fn enabled_config() -> Result<&'static ShieldConfig, Counter> {
    let cfg = SV_SHIELD_CFG.get(0).ok_or(Counter::NotOursPass)?;
    if cfg.flags & SHIELD_F_ENABLED == 0 {
        return Err(Counter::NotOursPass);
    }
    Ok(cfg)
}

#[inline(always)]
fn port_in(ports: &[u16; MAX_PORTS], port: u16) -> bool {
    port != 0 && (ports[0] == port || ports[1] == port || ports[2] == port || ports[3] == port)
}

/// IPv4 (UDP outside the relay range, or TCP): limits packets to the SIP ports.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<u32, Counter> {
    let cfg = enabled_config()?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Counter::MalformedPass)?;
    // SAFETY: ptr_at checked that the header lies inside the frame (as for every read below).
    let (vihl, proto, frag, tot_len, saddr) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            be16((*ip).frag_off),
            be16((*ip).tot_len) as usize,
            ne32((*ip).saddr),
        )
    };
    let ihl = (vihl & 0x0f) as usize * 4;
    let frame_len = ctx.data_end() - ctx.data();
    if ihl < IPV4_HLEN || tot_len < ihl || ETH_HLEN + tot_len > frame_len {
        return Err(Counter::MalformedPass);
    }
    if frag & IP_OFFSET != 0 {
        return Err(Counter::FragmentPass);
    }
    let l4 = ETH_HLEN + ihl;
    let (class, dport) = if proto == IPPROTO_UDP {
        udp_class(ctx, cfg, l4, tot_len - ihl, frag & IP_MF != 0)?
    } else if proto == IPPROTO_TCP {
        syn_class(ctx, cfg, l4)?
    } else {
        return Err(Counter::NotOursPass);
    };
    let src = Source {
        key: SourceKey {
            prefix: [saddr, 0],
            family: FAMILY_IPV4,
            _pad: [0; 3],
        },
        addr: [saddr, 0, 0, 0],
        dport,
        class: class as u8,
        _pad: 0,
    };
    Ok(limit(cfg, &src))
}

/// IPv6: walks up to [`MAX_IPV6_EXT`] extension headers to UDP or TCP, then as [`ipv4`].
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Result<u32, Counter> {
    let cfg = enabled_config()?;
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Counter::MalformedPass)?;
    // SAFETY: bounds-checked by ptr_at.
    let (version, payload_len, mut next, s) = unsafe {
        (
            (*ip).vtcfl[0] >> 4,
            be16((*ip).payload_len) as usize,
            (*ip).next_hdr,
            (*ip).saddr,
        )
    };
    let end = ETH_HLEN + IPV6_HLEN + payload_len;
    if version != 6 || end > ctx.data_end() - ctx.data() {
        return Err(Counter::MalformedPass);
    }
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut fragmented = false;
    for _ in 0..MAX_IPV6_EXT {
        if next == IPPROTO_UDP || next == IPPROTO_TCP {
            break;
        }
        if next == IPV6_HOPOPTS || next == IPV6_ROUTING || next == IPV6_DSTOPTS {
            let h: *const [u8; 2] = ptr_at(ctx, off).ok_or(Counter::MalformedPass)?;
            // SAFETY: bounds-checked by ptr_at.
            let (nh, len) = unsafe { ((*h)[0], (*h)[1]) };
            next = nh;
            off += (len as usize + 1) * 8;
        } else if next == IPV6_FRAGMENT {
            let h: *const [u8; 4] = ptr_at(ctx, off).ok_or(Counter::MalformedPass)?;
            // SAFETY: bounds-checked by ptr_at.
            let (nh, offset) = unsafe { ((*h)[0], be16([(*h)[2], (*h)[3]])) };
            if offset & IPV6_FRAG_OFFSET != 0 {
                return Err(Counter::FragmentPass);
            }
            fragmented = true;
            next = nh;
            off += 8;
        } else {
            return Err(Counter::NotOursPass);
        }
        if off > MAX_L4_OFF {
            return Err(Counter::MalformedPass);
        }
    }
    if off > end {
        return Err(Counter::MalformedPass);
    }
    let (class, dport) = if next == IPPROTO_UDP {
        udp_class(ctx, cfg, off, end - off, fragmented)?
    } else if next == IPPROTO_TCP {
        syn_class(ctx, cfg, off)?
    } else {
        // More extension headers than we walk.
        return Err(Counter::MalformedPass);
    };
    let w = |i: usize| u32::from_ne_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let addr = [w(0), w(4), w(8), w(12)];
    let src = Source {
        key: SourceKey {
            prefix: [addr[0], addr[1]],
            family: FAMILY_IPV6,
            _pad: [0; 3],
        },
        addr,
        dport,
        class: class as u8,
        _pad: 0,
    };
    Ok(limit(cfg, &src))
}

/// UDP at `l4` with `l4_len` bytes of IP payload: a SIP port? Then the class of its payload.
/// `fragmented`: a first fragment, whose UDP length covers more than this packet.
#[inline(always)]
fn udp_class(
    ctx: &XdpContext,
    cfg: &ShieldConfig,
    l4: usize,
    l4_len: usize,
    fragmented: bool,
) -> Result<(ShieldClass, u16), Counter> {
    if l4 > MAX_L4_OFF {
        return Err(Counter::MalformedPass);
    }
    let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(Counter::MalformedPass)?;
    // SAFETY: bounds-checked by ptr_at.
    let (dport, udp_len) = unsafe { (be16((*udp).dest), be16((*udp).len) as usize) };
    if !port_in(&cfg.udp_ports, dport) {
        return Err(Counter::NotOursPass);
    }
    if udp_len < UDP_HLEN || l4_len < UDP_HLEN || (!fragmented && udp_len > l4_len) {
        return Err(Counter::MalformedPass);
    }
    let payload = if udp_len < l4_len { udp_len } else { l4_len } - UDP_HLEN;
    if payload < CLASSIFY_BYTES {
        return Ok((ShieldClass::NotSip, dport));
    }
    let first: *const [u8; CLASSIFY_BYTES] =
        ptr_at(ctx, l4 + UDP_HLEN).ok_or(Counter::MalformedPass)?;
    // SAFETY: bounds-checked by ptr_at.
    Ok((classify(unsafe { *first }), dport))
}

/// TCP at `l4`: a SYN (without ACK) to a SIP TCP/TLS port is [`ShieldClass::Syn`]; any other
/// segment is not the shield's business (connections are limited by the daemon).
#[inline(always)]
fn syn_class(
    ctx: &XdpContext,
    cfg: &ShieldConfig,
    l4: usize,
) -> Result<(ShieldClass, u16), Counter> {
    if l4 > MAX_L4_OFF {
        return Err(Counter::MalformedPass);
    }
    let tcp: *const [u8; TCP_MIN_READ] = ptr_at(ctx, l4).ok_or(Counter::MalformedPass)?;
    // SAFETY: bounds-checked by ptr_at.
    let (dport, flags) = unsafe { (be16([(*tcp)[2], (*tcp)[3]]), (*tcp)[13]) };
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN || !port_in(&cfg.tcp_ports, dport) {
        return Err(Counter::NotOursPass);
    }
    Ok((ShieldClass::Syn, dport))
}

/// The per-CPU cache of the last dropped source, allowlist, the ceilings' refill, blocklist, the
/// source's bucket for its class, the ceilings' tokens: the verdict, with its counter counted.
/// A BPF-to-BPF call (not inlined): the shield's body exists once for the IPv4/IPv6 and UDP/TCP
/// callers, and the relay's code is not enlarged by it.
///
/// First, this CPU's [`LastDrop`]: a packet of the source and class this CPU dropped last, while
/// that verdict holds, is dropped under the same counter after one per-CPU array lookup (a
/// single-source flood then touches neither the allowlist trie nor the hash maps). The verdict
/// holds exactly as long as the full path would give it — a rate drop until the source's bucket
/// holds a token again — unless the daemon changes something meanwhile: a new limit, allow or
/// block applies to that source up to 1/rate s later, an unblock up to [`BLOCK_CACHE_NS`]
/// later. Ceiling drops are not cached (the ceilings are not the source's).
///
/// Ordered for the cost of a drop under a flood from many sources, where every source's entries
/// are cold cache lines (a blocklist hash bucket, an `SV_SRC_BUCKETS` entry — or an LRU insert
/// to create it): when this CPU's share of the global ceiling, or of its class's ceiling, has no
/// token left, a source that is not allowlisted is dropped (`DropGlobal`, `DropGlobalClass`)
/// before either is looked at. The verdicts are those of the order blocklist → allowlist →
/// source → ceilings: a blocked source is dropped whatever its allowlisting (only the counter
/// differs while a ceiling is exhausted), and the ceilings' tokens are taken only once the
/// source's own bucket let the packet through, so a packet over its source's rate costs the
/// ceilings nothing. What the order gives up: while a ceiling is exhausted, a source's packets
/// are not charged to its own buckets, so a source whose packets are all dropped by a ceiling is
/// not counted or reported per source (no `ShieldEvent`); its packets that pass are.
#[inline(never)]
fn limit(cfg: &ShieldConfig, src: &Source) -> u32 {
    // CLOCK_MONOTONIC at tick resolution: ~25 ns cheaper than the precise clock, and exact
    // token arithmetic over ticks (see `RateLimit` for the burst this asks for).
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    let last = SV_SHIELD_LAST.get_ptr_mut(0);
    // Drops of this source the cache decided since its buckets last counted one.
    let mut carried = 0;
    if let Some(l) = last {
        // SAFETY: this CPU's slot of a per-CPU array, live for the run; XDP does not nest on a
        // CPU.
        unsafe {
            if same_source(&(*l).key, &src.key) {
                if (*l).class == src.class && now < (*l).until_ns {
                    if (*l).counter != Counter::DropBlocked as u32 {
                        (*l).hits += 1;
                    }
                    maps::count_index((*l).counter);
                    maps::count(Counter::ShieldCacheHits);
                    return xdp_action::XDP_DROP;
                }
                carried = (*l).hits;
            }
        }
    }

    let mut allowed = false;
    let mut unlimited = false;
    let mut mult: u64 = 1;
    let allow_key = Key::new(
        ALLOW_FAMILY_BITS
            + if src.key.family == FAMILY_IPV4 {
                32
            } else {
                128
            },
        AllowData {
            family: (src.key.family as u32).to_be(),
            addr: src.addr,
        },
    );
    if let Some(a) = SV_ALLOW.get(&allow_key)
        && (a.expires_ns == 0 || now < a.expires_ns)
    {
        allowed = true;
        unlimited = a.flags & ALLOW_F_UNLIMITED != 0;
        let m = if a.multiplier != 0 {
            a.multiplier
        } else {
            cfg.allow_multiplier
        };
        mult = m.clamp(1, MAX_MULTIPLIER) as u64;
    }

    // This CPU's share of the global ceiling and of the class's ceiling, refilled; `None` when
    // they do not apply.
    let idx = src.class as usize & (CLASSES - 1);
    let global = cfg.global_per_cpu;
    let class_global = cfg.class_global_per_cpu[idx];
    // The class's ceiling first: it is the lower one under a flood of one kind (REGISTERs), so
    // such a flood's drops refill one bucket, not two. The two checks are written out, each map
    // pointer taken right before its check: an arrangement sharing one pointer variable for both
    // was rejected by the verifier ("R8 !read_ok").
    let class_ceiling = if allowed || class_global.rate == 0 {
        None
    } else {
        SV_GLOBAL_BKT.get_ptr_mut(1 + idx as u32)
    };
    if let Some(g) = class_ceiling
        && !refill(
            g,
            class_global.rate.min(MAX_RATE) as u64,
            class_global.burst.min(MAX_BURST) as u64,
            now,
        )
    {
        maps::count(Counter::DropGlobalClass);
        return xdp_action::XDP_DROP;
    }
    let ceiling = if allowed || global.rate == 0 {
        None
    } else {
        SV_GLOBAL_BKT.get_ptr_mut(0)
    };
    if let Some(g) = ceiling
        && !refill(
            g,
            global.rate.min(MAX_RATE) as u64,
            global.burst.min(MAX_BURST) as u64,
            now,
        )
    {
        maps::count(Counter::DropGlobal);
        return xdp_action::XDP_DROP;
    }

    if let Some(b) = SV_BLOCK.get_ptr(&src.key) {
        // SAFETY: a live map value for this run (RCU); the daemon may rewrite it concurrently,
        // which at worst mixes an old and a new field for one packet.
        let expires = unsafe { (*b).expires_ns };
        if expires == 0 || now < expires {
            maps::count(Counter::DropBlocked);
            let soon = now + BLOCK_CACHE_NS;
            let until = if expires != 0 && expires < soon {
                expires
            } else {
                soon
            };
            remember(last, src, Counter::DropBlocked, until, false);
            return xdp_action::XDP_DROP;
        }
    }
    if unlimited {
        maps::count(Counter::ShieldAllowPass);
        return xdp_action::XDP_PASS;
    }

    let lim = cfg.limits[idx];
    if lim.rate != 0 {
        let rate = (lim.rate.min(MAX_RATE) as u64 * mult).min(MAX_RATE as u64);
        let burst = (lim.burst.min(MAX_BURST) as u64 * mult).min(MAX_BURST as u64);
        match source_bucket(cfg, src, idx, allowed, rate, burst, now, carried) {
            Bucket::Passed => {}
            Bucket::Limited { until_ns } => {
                let counter = drop_counter(idx);
                maps::count(counter);
                remember(last, src, counter, until_ns, true);
                return xdp_action::XDP_DROP;
            }
            Bucket::MapFailed => {
                maps::count(Counter::ShieldMapFailPass);
                return xdp_action::XDP_PASS;
            }
        }
    }

    // The refills above found a token in each, and nothing else ran on this CPU's buckets since
    // (XDP does not nest on a CPU); saturating all the same, so that a BPF_PROG_TEST_RUN
    // interrupted by a real packet cannot wrap the count.
    if let Some(g) = ceiling {
        // SAFETY: this CPU's slot of a per-CPU array value, live for the run.
        unsafe { (*g).tokens = (*g).tokens.saturating_sub(TOKEN) };
    }
    if let Some(g) = class_ceiling {
        // SAFETY: as above.
        unsafe { (*g).tokens = (*g).tokens.saturating_sub(TOKEN) };
    }

    maps::count(if allowed {
        Counter::ShieldAllowPass
    } else {
        Counter::ShieldPass
    });
    xdp_action::XDP_PASS
}

/// Whether two source keys are the same source.
#[inline(always)]
fn same_source(a: &SourceKey, b: &SourceKey) -> bool {
    a.prefix[0] == b.prefix[0] && a.prefix[1] == b.prefix[1] && a.family == b.family
}

/// Makes `src` (its class, under `counter`) this CPU's last dropped source until `until_ns`.
///
/// The rate drops the entry decided so far are added to its source's `SourceBuckets::dropped`
/// — by the caller when `consumed` and the source is the same (`carried`), else here (one
/// lookup, only when there are any: under a flood from many sources an entry is replaced before
/// it is hit, so this costs nothing there).
#[inline(always)]
fn remember(
    last: Option<*mut LastDrop>,
    src: &Source,
    counter: Counter,
    until_ns: u64,
    consumed: bool,
) {
    if let Some(l) = last {
        // SAFETY: this CPU's slot of a per-CPU array, live for the run; a map value from the
        // lookup is live for the run too (plain adds: `dropped` is approximate anyway).
        unsafe {
            let hits = (*l).hits;
            if hits != 0
                && !(consumed && same_source(&(*l).key, &src.key))
                && let Some(b) = SV_SRC_BUCKETS.get_ptr_mut(&(*l).key)
            {
                (*b).dropped += hits;
            }
            (*l).key = src.key;
            (*l).class = src.class;
            (*l).counter = counter as u32;
            (*l).until_ns = until_ns;
            (*l).hits = 0;
        }
    }
}

/// What the source's bucket for the packet's class said.
enum Bucket {
    /// A token was taken.
    Passed,
    /// Over the rate: counted on the source (and sampled as an event). The bucket holds a token
    /// again from `until_ns` on.
    Limited { until_ns: u64 },
    /// The source had no buckets and the LRU map refused them (fail-open).
    MapFailed,
}

/// Takes a token from the source's bucket of class `idx`, creating the source's buckets on its
/// first packet: full when the source is allowlisted or the new-source burst is off, otherwise
/// holding `new_source_burst` tokens per class as of `now` (so a fresh source gets only that many
/// packets at once, then its class rates).
///
/// A known source costs one lookup. A new one costs a lookup (the miss) and an insert: the fresh
/// value is built in this CPU's `SV_SHIELD_NEW` slot, charged there (token taken, or the drop
/// counted and its event written) and inserted as it ends up, so the entry is not looked up
/// again. Only when another CPU inserted the same source
/// in between (EEXIST) is it looked up again, and the packet charged to that entry.
///
/// `carried`: drops of this source decided by the [`LastDrop`] cache, added to its count if this
/// packet is dropped too.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the verifier sees no calls"
)]
#[inline(always)]
fn source_bucket(
    cfg: &ShieldConfig,
    src: &Source,
    idx: usize,
    allowed: bool,
    rate: u64,
    burst: u64,
    now: u64,
    carried: u64,
) -> Bucket {
    let charge = |b| charge(cfg, src, b, idx, rate, burst, now, carried);
    if let Some(b) = SV_SRC_BUCKETS.get_ptr_mut(&src.key) {
        return charge(b);
    }
    let Some(fresh) = SV_SHIELD_NEW.get_ptr_mut(0) else {
        return Bucket::MapFailed;
    };
    // `last_refill_ns == 0` reads as a full bucket: so for an allowlisted source, or without
    // the new-source rule. `now` is never 0 on a running system; 1 in its place keeps "0 = full"
    // unambiguous anyway. Tokens above a class's burst are clamped by `take`.
    let (tokens_of, at) = if !allowed && cfg.flags & SHIELD_F_NEW_SOURCE != 0 {
        (true, if now == 0 { 1 } else { now })
    } else {
        (false, 0)
    };
    // SAFETY: this CPU's slot of a per-CPU array, live for the run; XDP does not nest on a CPU,
    // so nothing else uses it until the insert below copied it.
    unsafe {
        for i in 0..CLASSES {
            (*fresh).classes[i] = TokenBucket {
                tokens: if tokens_of {
                    cfg.new_source_burst[i] as u64 * TOKEN
                } else {
                    0
                },
                last_refill_ns: at,
            };
        }
        (*fresh).last_event_ns = 0;
        (*fresh).dropped = 0;
    }
    let verdict = charge(fresh);
    // SAFETY: as above.
    match SV_SRC_BUCKETS.insert(&src.key, unsafe { &*fresh }, BPF_NOEXIST as u64) {
        Ok(()) => verdict,
        // Another CPU created it meanwhile: the packet counts against theirs. (An event this
        // packet may have written above stands; at most one extra event per race.)
        Err(e) if e == -EEXIST => match SV_SRC_BUCKETS.get_ptr_mut(&src.key) {
            Some(b) => charge(b),
            None => Bucket::MapFailed,
        },
        Err(_) => Bucket::MapFailed,
    }
}

/// One packet against the buckets at `b` (a map value, or this CPU's `SV_SHIELD_NEW` slot).
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the verifier sees no calls"
)]
#[inline(always)]
fn charge(
    cfg: &ShieldConfig,
    src: &Source,
    b: *mut SourceBuckets,
    idx: usize,
    rate: u64,
    burst: u64,
    now: u64,
    carried: u64,
) -> Bucket {
    // SAFETY: `b` is live for the run (a map value, or this CPU's `SV_SHIELD_NEW` slot); `idx` <
    // CLASSES.
    let bucket = unsafe { &raw mut (*b).classes[idx] };
    if take(bucket, rate, burst, now) {
        return Bucket::Passed;
    }
    limited(cfg, src, b, now, carried);
    // The bucket holds less than a token as of its last refill (`now`, or later when another
    // CPU refilled it meanwhile); at `rate` tokens/s it holds one again this many ns later.
    // SAFETY: as above.
    let (tokens, at) = unsafe { ((*bucket).tokens, (*bucket).last_refill_ns) };
    let missing = TOKEN.saturating_sub(tokens);
    let per_ns = NonZeroU64::new(rate).unwrap_or(NonZeroU64::MIN);
    Bucket::Limited {
        until_ns: at.saturating_add(((missing + per_ns.get() - 1) / per_ns).max(1)),
    }
}

/// Takes one packet's token from `b` if there is one, after [`refill`].
#[inline(always)]
fn take(b: *mut TokenBucket, rate: u64, burst: u64, now: u64) -> bool {
    if !refill(b, rate, burst, now) {
        return false;
    }
    // SAFETY: as in `refill`.
    unsafe { (*b).tokens -= TOKEN };
    true
}

/// Refills `b` for the time since its last refill (up to `burst`) and says whether it holds a
/// packet's token; takes nothing.
///
/// `rate` <= MAX_RATE and `burst` <= MAX_BURST, elapsed < MAX_ELAPSED_NS: no product overflows.
#[inline(always)]
fn refill(b: *mut TokenBucket, rate: u64, burst: u64, now: u64) -> bool {
    let cap = burst * TOKEN;
    // SAFETY: `b` points into a live map value (this CPU's slot for per-CPU maps, such as the
    // `SV_SHIELD_NEW` slot a new source's buckets are built in).
    unsafe {
        let last = (*b).last_refill_ns;
        let mut tokens = (*b).tokens;
        if tokens > cap {
            // The limit was lowered (or the daemon reset the entry to a large value).
            tokens = cap;
        }
        if last == 0 {
            tokens = cap;
            (*b).last_refill_ns = now;
        } else if now > last {
            let elapsed = now - last;
            tokens = if elapsed >= MAX_ELAPSED_NS {
                cap
            } else {
                let t = tokens + elapsed * rate;
                if t > cap { cap } else { t }
            };
            (*b).last_refill_ns = now;
        }
        (*b).tokens = tokens;
        tokens >= TOKEN
    }
}

/// A rate-limit drop: counts it on the source and, at most once per event interval per source,
/// writes a `ShieldEvent` to the ring buffer.
#[inline(always)]
fn limited(cfg: &ShieldConfig, src: &Source, buckets: *mut SourceBuckets, now: u64, carried: u64) {
    let interval_ms = if cfg.event_interval_ms == 0 {
        DEFAULT_EVENT_INTERVAL_MS
    } else {
        cfg.event_interval_ms
    };
    // SAFETY: a live map value; plain (racy) updates are fine for a drop count and a sampling
    // time: a race costs at most one extra event.
    let dropped = unsafe {
        let d = (*buckets).dropped + carried + 1;
        (*buckets).dropped = d;
        let last = (*buckets).last_event_ns;
        if last != 0 && now.wrapping_sub(last) < interval_ms as u64 * 1_000_000 {
            return;
        }
        (*buckets).last_event_ns = now;
        d
    };
    match SV_SHIELD_EVT.reserve::<ShieldEvent>(0) {
        Some(mut entry) => {
            entry.write(ShieldEvent {
                timestamp_ns: now,
                dropped,
                addr: src.addr,
                family: src.key.family,
                class: src.class,
                reason: EVENT_RATE_LIMITED,
                dport: src.dport,
                _pad: [0; 2],
            });
            entry.submit(0);
            maps::count(Counter::ShieldEvents);
        }
        None => maps::count(Counter::ShieldEventsLost),
    }
}

/// The rate-drop counter of a class index.
#[inline(always)]
fn drop_counter(idx: usize) -> Counter {
    match idx {
        0 => ShieldClass::Register.drop_counter(),
        1 => ShieldClass::Invite.drop_counter(),
        2 => ShieldClass::Options.drop_counter(),
        4 => ShieldClass::Response.drop_counter(),
        5 => ShieldClass::NotSip.drop_counter(),
        6 => ShieldClass::Syn.drop_counter(),
        _ => ShieldClass::Other.drop_counter(),
    }
}
