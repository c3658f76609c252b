//! The userspace enforcement when XDP is off: the XDP shield's semantics (blocklist, allowlist
//! with multiplier or unlimited, a token bucket per source and class, the global ceiling and the
//! ceilings per class), applied
//! by the io_uring transport before parsing. Same integer token arithmetic as
//! `ebpf/src/shield.rs` (`sipveil_abi::shield::TOKEN`). Pure: time is passed in.
//!
//! A source seen for the first time that is not allowlisted starts with
//! [`Limits::new_source_burst`] tokens per class (when set), as the XDP program creates its
//! buckets with `SHIELD_F_NEW_SOURCE`; allowlisted sources start full.
//!
//! No allocation per packet: the source table is allocated once with its capacity; when it is
//! full it is cleared (every source comes back as a new source, as after the XDP LRU forgets
//! it), which costs one new-source burst per source at most.
use std::collections::HashMap;

use sipveil_abi::shield::{
    CLASSES, DEFAULT_EVENT_INTERVAL_MS, MAX_BURST, MAX_ELAPSED_NS, MAX_MULTIPLIER, MAX_RATE,
    RateLimit, ShieldClass, SourceBuckets, SourceKey, TOKEN, TokenBucket,
};

use super::policy::{BlockReason, Source};

/// Bytes of payload [`classify`] looks at.
pub const CLASSIFY_BYTES: usize = 8;

/// The class of a UDP payload, exactly as `ebpf/src/sipclass.rs` classifies it (from the first
/// 8 bytes; shorter payloads are [`ShieldClass::NotSip`]).
pub fn classify(payload: &[u8]) -> ShieldClass {
    let Some(b) = payload.get(..CLASSIFY_BYTES) else {
        return ShieldClass::NotSip;
    };
    if b == b"REGISTER" {
        return ShieldClass::Register;
    }
    if &b[..7] == b"INVITE " {
        return ShieldClass::Invite;
    }
    if b == b"OPTIONS " {
        return ShieldClass::Options;
    }
    if b == b"SIP/2.0 " {
        return ShieldClass::Response;
    }
    for (i, &c) in b.iter().enumerate() {
        if c == b' ' {
            return if i >= 3 {
                ShieldClass::Other
            } else {
                ShieldClass::NotSip
            };
        }
        if !c.is_ascii_uppercase() {
            return ShieldClass::NotSip;
        }
    }
    ShieldClass::Other
}

/// The limits the userspace limiter applies (the XDP `ShieldConfig`'s, with the global ceiling
/// as a total rather than per CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    pub enabled: bool,
    /// Indexed by [`ShieldClass`]; `rate == 0`: not limited.
    pub per_class: [RateLimit; CLASSES],
    /// `rate == 0`: no ceiling.
    pub global: RateLimit,
    /// Ceilings per class (indexed by [`ShieldClass`]) over all sources that are not
    /// allowlisted, as totals (XDP: `ShieldConfig::class_global_per_cpu`, divided over the
    /// CPUs); `rate == 0`: that class has no ceiling of its own.
    pub class_global: [RateLimit; CLASSES],
    /// Default multiplier of allowlisted sources (0 means 1).
    pub allow_multiplier: u32,
    /// A rate drop reports its source at most once per this many ms (0: the XDP default,
    /// `DEFAULT_EVENT_INTERVAL_MS`), as the XDP program writes its events.
    pub event_interval_ms: u32,
    /// Packets per class (indexed by [`ShieldClass`]) a source without buckets that is not
    /// allowlisted may send at once: its fresh buckets start with this many tokens and refill
    /// at the class rate up to the class burst. `None`: fresh buckets start full. The XDP
    /// `ShieldConfig::new_source_burst` with `SHIELD_F_NEW_SOURCE`.
    pub new_source_burst: Option<[u16; CLASSES]>,
}

/// The buckets a source gets on its first limited packet at `now`: full (`last_refill_ns == 0`)
/// when `new_source` is `None`, else `new_source[class]` tokens each, as the XDP program's
/// `source_buckets` creates them.
fn fresh_buckets(new_source: Option<&[u16; CLASSES]>, now: u64) -> SourceBuckets {
    let mut b = SourceBuckets::default();
    if let Some(burst) = new_source {
        for (bucket, n) in b.classes.iter_mut().zip(burst) {
            *bucket = TokenBucket {
                tokens: u64::from(*n) * TOKEN,
                last_refill_ns: now.max(1),
            };
        }
    }
    b
}

/// The verdict on one packet (or accepted connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    PassAllowlisted,
    DropBlocked,
    /// `event`: the first drop of this source within the event interval (report it).
    DropRate {
        class: ShieldClass,
        event: bool,
    },
    DropGlobal,
    /// Over the ceiling of its class (all sources that are not allowlisted together).
    DropGlobalClass {
        class: ShieldClass,
    },
}

/// Userspace drop counters, by the names of the XDP counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub blocked: u64,
    pub global: u64,
    /// Over the ceiling of their class (`global_class`).
    pub global_class: u64,
    pub rate: [u64; CLASSES],
    pub passed: u64,
    pub passed_allowlisted: u64,
}

impl Drops {
    /// `(reason, count)` with the XDP counter names' reasons (`blocked`, `global`,
    /// `rate_register`, ..., `not_sip`, `syn_rate`).
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("blocked", self.blocked),
            ("global", self.global),
            ("global_class", self.global_class),
        ];
        for c in ShieldClass::ALL {
            let name = match c {
                ShieldClass::Register => "rate_register",
                ShieldClass::Invite => "rate_invite",
                ShieldClass::Options => "rate_options",
                ShieldClass::Other => "rate_other",
                ShieldClass::Response => "rate_response",
                ShieldClass::NotSip => "not_sip",
                ShieldClass::Syn => "syn_rate",
            };
            v.push((name, self.rate[c as usize]));
        }
        v
    }
}

#[derive(Clone, Copy, Debug)]
struct AllowRule {
    until_ns: u64,
    multiplier: u32,
    unlimited: bool,
}

/// A configured peer prefix (always allowlisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
    /// 0: the default multiplier.
    pub multiplier: u32,
    pub unlimited: bool,
}

impl Peer {
    fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The userspace shield. One per transport worker, or shared behind a lock.
#[derive(Debug)]
pub struct UserShield {
    limits: Limits,
    capacity: usize,
    buckets: HashMap<SourceKey, SourceBuckets>,
    global: TokenBucket,
    /// The class ceilings' buckets, indexed by [`ShieldClass`].
    class_global: [TokenBucket; CLASSES],
    blocks: HashMap<SourceKey, (u64, BlockReason)>,
    allows: HashMap<SourceKey, AllowRule>,
    peers: Vec<Peer>,
    drops: Drops,
}

/// Refill up to the burst and say whether a token is there, taking none: the XDP program's
/// `refill`.
fn refill(b: &mut TokenBucket, rate: u64, burst: u64, now: u64) -> bool {
    let cap = burst * TOKEN;
    let mut tokens = b.tokens.min(cap);
    if b.last_refill_ns == 0 {
        tokens = cap;
        b.last_refill_ns = now;
    } else if now > b.last_refill_ns {
        let elapsed = now - b.last_refill_ns;
        tokens = if elapsed >= MAX_ELAPSED_NS {
            cap
        } else {
            (tokens + elapsed * rate).min(cap)
        };
        b.last_refill_ns = now;
    }
    b.tokens = tokens;
    tokens >= TOKEN
}

/// Refill, then take one token: the XDP program's `take`.
fn take(b: &mut TokenBucket, rate: u64, burst: u64, now: u64) -> bool {
    if refill(b, rate, burst, now) {
        b.tokens -= TOKEN;
        true
    } else {
        false
    }
}

impl UserShield {
    /// A shield for at most `capacity` tracked sources (allocated now).
    pub fn new(limits: Limits, peers: Vec<Peer>, capacity: usize) -> UserShield {
        let capacity = capacity.max(1);
        UserShield {
            limits,
            capacity,
            buckets: HashMap::with_capacity(capacity),
            global: TokenBucket::default(),
            class_global: [TokenBucket::default(); CLASSES],
            blocks: HashMap::with_capacity(1024),
            allows: HashMap::with_capacity(1024),
            peers,
            drops: Drops::default(),
        }
    }

    /// New limits and peers (reload); buckets keep their tokens (clamped to the new bursts).
    pub fn set_limits(&mut self, limits: Limits, peers: Vec<Peer>) {
        self.limits = limits;
        self.peers = peers;
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn drops(&self) -> Drops {
        self.drops
    }

    pub fn block(&mut self, source: Source, until_ns: u64, reason: BlockReason) {
        self.blocks.insert(source.key(), (until_ns, reason));
    }

    pub fn unblock(&mut self, source: Source) {
        self.blocks.remove(&source.key());
    }

    pub fn allow(&mut self, source: Source, until_ns: u64, multiplier: u32) {
        self.allows.insert(
            source.key(),
            AllowRule {
                until_ns,
                multiplier,
                unlimited: false,
            },
        );
    }

    pub fn disallow(&mut self, source: Source) {
        self.allows.remove(&source.key());
    }

    /// The verdict on a UDP datagram from `ip` with `payload` (classified like XDP does).
    pub fn check_datagram(&mut self, ip: std::net::IpAddr, payload: &[u8], now_ns: u64) -> Verdict {
        self.check(ip, classify(payload), now_ns)
    }

    /// The verdict on a packet of `class` from `ip` (a TCP/TLS accept is [`ShieldClass::Syn`]).
    pub fn check(&mut self, ip: std::net::IpAddr, class: ShieldClass, now_ns: u64) -> Verdict {
        let v = self.verdict(ip, class, now_ns);
        match v {
            Verdict::Pass => self.drops.passed += 1,
            Verdict::PassAllowlisted => self.drops.passed_allowlisted += 1,
            Verdict::DropBlocked => self.drops.blocked += 1,
            Verdict::DropGlobal => self.drops.global += 1,
            Verdict::DropGlobalClass { .. } => self.drops.global_class += 1,
            Verdict::DropRate { class, .. } => self.drops.rate[class as usize] += 1,
        }
        v
    }

    /// The XDP program's order (see `limit` in ebpf/src/shield.rs): allowlist, the ceilings'
    /// refill (the class's, then the global one: a source that is not allowlisted is dropped there while
    /// one is exhausted, before its own buckets are charged), blocklist, the source's bucket, the
    /// ceilings' tokens. (The XDP program's per-CPU cache of its last dropped source only saves
    /// work: its verdicts are these, give or take the cache's lifetime after a change.)
    fn verdict(&mut self, ip: std::net::IpAddr, class: ShieldClass, now: u64) -> Verdict {
        if !self.limits.enabled {
            return Verdict::Pass;
        }
        let key = Source::of(ip).key();
        let mut rule = self.allows.get(&key).filter(|a| now < a.until_ns).copied();
        if let Some(p) = self.peers.iter().find(|p| p.contains(ip)) {
            rule = Some(AllowRule {
                until_ns: u64::MAX,
                multiplier: p.multiplier,
                unlimited: p.unlimited,
            });
        }
        // The class's ceiling, then the global one (the XDP program's order).
        let idx = class as usize;
        let cg = self.limits.class_global[idx];
        let class_ceiling = rule.is_none() && cg.rate != 0;
        if class_ceiling
            && !refill(
                &mut self.class_global[idx],
                u64::from(cg.rate.min(MAX_RATE)),
                u64::from(cg.burst.min(MAX_BURST)),
                now,
            )
        {
            return Verdict::DropGlobalClass { class };
        }
        let g = self.limits.global;
        let ceiling = rule.is_none() && g.rate != 0;
        if ceiling
            && !refill(
                &mut self.global,
                u64::from(g.rate.min(MAX_RATE)),
                u64::from(g.burst.min(MAX_BURST)),
                now,
            )
        {
            return Verdict::DropGlobal;
        }
        if let Some((until, _)) = self.blocks.get(&key)
            && now < *until
        {
            return Verdict::DropBlocked;
        }
        let mut mult = 1u64;
        if let Some(a) = rule {
            if a.unlimited {
                return Verdict::PassAllowlisted;
            }
            let m = if a.multiplier != 0 {
                a.multiplier
            } else {
                self.limits.allow_multiplier
            };
            mult = u64::from(m.clamp(1, MAX_MULTIPLIER));
        }
        let lim = self.limits.per_class[idx];
        if lim.rate != 0 {
            let rate = (u64::from(lim.rate.min(MAX_RATE)) * mult).min(u64::from(MAX_RATE));
            let burst = (u64::from(lim.burst.min(MAX_BURST)) * mult).min(u64::from(MAX_BURST));
            if !self.buckets.contains_key(&key) && self.buckets.len() >= self.capacity {
                // Keeps the allocation: `clear` retains the capacity.
                self.buckets.clear();
            }
            let new_source = if rule.is_none() {
                self.limits.new_source_burst.as_ref()
            } else {
                None
            };
            let b = self
                .buckets
                .entry(key)
                .or_insert_with(|| fresh_buckets(new_source, now));
            if !take(&mut b.classes[idx], rate, burst, now) {
                b.dropped += 1;
                let interval_ms = match self.limits.event_interval_ms {
                    0 => DEFAULT_EVENT_INTERVAL_MS,
                    ms => ms,
                };
                let event = b.last_event_ns == 0
                    || now.saturating_sub(b.last_event_ns) >= u64::from(interval_ms) * 1_000_000;
                if event {
                    b.last_event_ns = now;
                }
                return Verdict::DropRate { class, event };
            }
        }
        if ceiling {
            // The refill above found a token.
            self.global.tokens = self.global.tokens.saturating_sub(TOKEN);
        }
        if class_ceiling {
            // As above.
            self.class_global[idx].tokens = self.class_global[idx].tokens.saturating_sub(TOKEN);
        }
        if rule.is_some() {
            Verdict::PassAllowlisted
        } else {
            Verdict::Pass
        }
    }

    /// Drops expired blocks and allowlist entries (the policy logs them).
    pub fn expire(&mut self, now_ns: u64) {
        self.blocks.retain(|_, (until, _)| now_ns < *until);
        self.allows.retain(|_, a| now_ns < a.until_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn limits() -> Limits {
        let mut l = Limits {
            enabled: true,
            allow_multiplier: 4,
            ..Limits::default()
        };
        l.per_class[ShieldClass::Register as usize] = RateLimit { rate: 10, burst: 5 };
        l
    }

    #[test]
    fn classify_matches_the_xdp_classes() {
        assert_eq!(classify(b"REGISTER sip:a SIP/2.0"), ShieldClass::Register);
        assert_eq!(classify(b"INVITE sip:a SIP/2.0"), ShieldClass::Invite);
        assert_eq!(classify(b"OPTIONS sip:a SIP/2.0"), ShieldClass::Options);
        assert_eq!(classify(b"SIP/2.0 200 OK"), ShieldClass::Response);
        assert_eq!(classify(b"ACK sip:a SIP/2.0"), ShieldClass::Other);
        assert_eq!(classify(b"SUBSCRIBE sip:a"), ShieldClass::Other);
        assert_eq!(classify(b"AB sip:a SIP/2.0"), ShieldClass::NotSip);
        assert_eq!(classify(b"\r\n\r\n"), ShieldClass::NotSip);
        assert_eq!(classify(b"register sip:a"), ShieldClass::NotSip);
    }

    #[test]
    fn class_ceiling_caps_unknown_sources_together_but_not_allowlisted_ones() {
        let mut l = limits();
        // Per source: plenty. Per class over all unknown sources: 10/s, burst 3.
        l.per_class[ShieldClass::Register as usize] = RateLimit {
            rate: 100,
            burst: 100,
        };
        l.class_global[ShieldClass::Register as usize] = RateLimit { rate: 10, burst: 3 };
        l.global = RateLimit {
            rate: 1000,
            burst: 1000,
        };
        let mut s = UserShield::new(l, Vec::new(), 64);
        let t0 = 10 * S;
        for i in 0..3 {
            let a = ip(&format!("198.19.0.{}", i + 1));
            assert_eq!(s.check(a, ShieldClass::Register, t0), Verdict::Pass);
        }
        let fresh = ip("198.19.0.99");
        assert_eq!(
            s.check(fresh, ShieldClass::Register, t0),
            Verdict::DropGlobalClass {
                class: ShieldClass::Register
            }
        );
        // Other classes are not held by the REGISTER ceiling.
        assert_eq!(s.check(fresh, ShieldClass::Options, t0), Verdict::Pass);
        // An allowlisted source does not count against it, nor is it held by it.
        let known = ip("198.18.1.5");
        s.allow(Source::of(known), 100 * S, 0);
        assert_eq!(
            s.check(known, ShieldClass::Register, t0),
            Verdict::PassAllowlisted
        );
        // 10/s: one more unknown REGISTER 100 ms later.
        assert_eq!(
            s.check(fresh, ShieldClass::Register, t0 + 100 * MS),
            Verdict::Pass
        );
        assert_eq!(
            s.check(fresh, ShieldClass::Register, t0 + 100 * MS),
            Verdict::DropGlobalClass {
                class: ShieldClass::Register
            }
        );
        assert_eq!(s.drops().global_class, 2);
        assert!(s.drops().by_reason().contains(&("global_class", 2)));
        // A packet over its source's own rate costs the class ceiling nothing.
        let mut l2 = limits();
        l2.class_global[ShieldClass::Register as usize] = RateLimit { rate: 1, burst: 6 };
        let mut s2 = UserShield::new(l2, Vec::new(), 64);
        let a = ip("198.19.1.1");
        for _ in 0..5 {
            assert_eq!(s2.check(a, ShieldClass::Register, t0), Verdict::Pass);
        }
        assert!(matches!(
            s2.check(a, ShieldClass::Register, t0),
            Verdict::DropRate { .. }
        ));
        assert_eq!(
            s2.check(ip("198.19.1.2"), ShieldClass::Register, t0),
            Verdict::Pass
        );
    }

    #[test]
    fn burst_then_rate_per_source_and_class() {
        let mut s = UserShield::new(limits(), Vec::new(), 16);
        let a = ip("198.18.0.7");
        let t0 = 10 * S;
        for _ in 0..5 {
            assert_eq!(s.check(a, ShieldClass::Register, t0), Verdict::Pass);
        }
        assert_eq!(
            s.check(a, ShieldClass::Register, t0),
            Verdict::DropRate {
                class: ShieldClass::Register,
                event: true
            }
        );
        // Other classes and other sources have their own buckets / no limit.
        assert_eq!(s.check(a, ShieldClass::Invite, t0), Verdict::Pass);
        assert_eq!(
            s.check(ip("198.18.0.8"), ShieldClass::Register, t0),
            Verdict::Pass
        );
        // 10/s: one token per 100 ms.
        // The second drop within the event interval is not reported again.
        assert_eq!(
            s.check(a, ShieldClass::Register, t0 + 99 * MS),
            Verdict::DropRate {
                class: ShieldClass::Register,
                event: false
            }
        );
        assert_eq!(
            s.check(a, ShieldClass::Register, t0 + 100 * MS),
            Verdict::Pass
        );
        assert_eq!(s.drops().rate[ShieldClass::Register as usize], 2);
        assert_eq!(s.drops().passed, 8);
    }

    #[test]
    fn blocklist_first_then_allowlist_multiplies() {
        let mut s = UserShield::new(limits(), Vec::new(), 16);
        let a = ip("198.18.0.7");
        s.block(Source::of(a), 20 * S, BlockReason::Manual);
        assert_eq!(s.check(a, ShieldClass::Register, S), Verdict::DropBlocked);
        s.unblock(Source::of(a));
        s.allow(Source::of(a), 100 * S, 0);
        for _ in 0..20 {
            assert_eq!(
                s.check(a, ShieldClass::Register, 2 * S),
                Verdict::PassAllowlisted
            );
        }
        assert!(matches!(
            s.check(a, ShieldClass::Register, 2 * S),
            Verdict::DropRate { .. }
        ));
        // Expired blocks no longer apply even before `expire` runs.
        s.block(Source::of(a), 3 * S, BlockReason::Manual);
        assert_eq!(
            s.check(a, ShieldClass::Invite, 3 * S),
            Verdict::PassAllowlisted
        );
        assert_eq!(s.drops().blocked, 1);
    }

    #[test]
    fn configured_peers_can_be_unlimited_and_skip_the_global_ceiling() {
        let mut l = limits();
        l.global = RateLimit { rate: 1, burst: 2 };
        let peers = vec![Peer {
            addr: ip("198.18.1.0"),
            prefix_len: 24,
            multiplier: 0,
            unlimited: true,
        }];
        let mut s = UserShield::new(l, peers, 16);
        for _ in 0..100 {
            assert_eq!(
                s.check(ip("198.18.1.9"), ShieldClass::Register, S),
                Verdict::PassAllowlisted
            );
        }
        assert_eq!(
            s.check(ip("198.18.0.1"), ShieldClass::Invite, S),
            Verdict::Pass
        );
        assert_eq!(
            s.check(ip("198.18.0.2"), ShieldClass::Invite, S),
            Verdict::Pass
        );
        assert_eq!(
            s.check(ip("198.18.0.3"), ShieldClass::Invite, S),
            Verdict::DropGlobal
        );
    }

    #[test]
    fn an_exhausted_ceiling_drops_before_the_source_is_charged() {
        let mut l = limits();
        l.global = RateLimit { rate: 1, burst: 2 };
        let mut s = UserShield::new(l, Vec::new(), 16);
        let (a, b, c) = (ip("198.18.2.1"), ip("198.18.2.2"), ip("198.18.2.3"));
        assert_eq!(s.check(a, ShieldClass::Register, S), Verdict::Pass);
        assert_eq!(s.check(b, ShieldClass::Register, S), Verdict::Pass);
        // Exhausted: new sources get no buckets, known ones keep theirs untouched.
        let tracked = s.buckets.len();
        let a_before = s.buckets.get(&Source::of(a).key()).copied();
        for who in [c, a, c] {
            assert_eq!(s.check(who, ShieldClass::Register, S), Verdict::DropGlobal);
        }
        assert_eq!(s.buckets.len(), tracked);
        assert_eq!(s.buckets.get(&Source::of(a).key()).copied(), a_before);
        // A blocked source under the exhausted ceiling: dropped, counted as the ceiling's.
        s.block(Source::of(c), S + 3600 * S, BlockReason::Manual);
        assert_eq!(s.check(c, ShieldClass::Register, S), Verdict::DropGlobal);
        // A second later one token: c is blocked (the ceiling keeps the token), a passes.
        assert_eq!(
            s.check(c, ShieldClass::Register, 2 * S),
            Verdict::DropBlocked
        );
        assert_eq!(s.check(a, ShieldClass::Register, 2 * S), Verdict::Pass);
        assert_eq!(
            s.check(b, ShieldClass::Register, 2 * S),
            Verdict::DropGlobal
        );
        // A source over its own rate does not use up the ceiling.
        let mut l = limits();
        l.global = RateLimit { rate: 1, burst: 7 };
        let mut s = UserShield::new(l, Vec::new(), 16);
        for _ in 0..5 {
            assert_eq!(s.check(a, ShieldClass::Register, S), Verdict::Pass);
        }
        for _ in 0..10 {
            assert!(matches!(
                s.check(a, ShieldClass::Register, S),
                Verdict::DropRate { .. }
            ));
        }
        assert_eq!(s.check(b, ShieldClass::Register, S), Verdict::Pass);
        assert_eq!(s.check(c, ShieldClass::Register, S), Verdict::Pass);
        assert_eq!(s.check(c, ShieldClass::Register, S), Verdict::DropGlobal);
    }

    fn new_source_limits() -> Limits {
        let mut l = limits();
        let mut n = [0u16; CLASSES];
        n[ShieldClass::Register as usize] = 2;
        l.new_source_burst = Some(n);
        l
    }

    fn rate_drop(class: ShieldClass) -> impl Fn(Verdict) -> bool {
        move |v| matches!(v, Verdict::DropRate { class: c, .. } if c == class)
    }

    #[test]
    fn a_new_source_gets_its_new_source_burst_then_refills_to_the_full_burst() {
        let mut s = UserShield::new(new_source_limits(), Vec::new(), 16);
        let a = ip("198.18.0.7");
        let t0 = 10 * S;
        let reg = rate_drop(ShieldClass::Register);
        // 2 at once, not the burst of 5.
        for _ in 0..2 {
            assert_eq!(s.check(a, ShieldClass::Register, t0), Verdict::Pass);
        }
        assert!(reg(s.check(a, ShieldClass::Register, t0)));
        // Then the class rate (10/s): one token per 100 ms.
        assert!(reg(s.check(a, ShieldClass::Register, t0 + 99 * MS)));
        assert_eq!(
            s.check(a, ShieldClass::Register, t0 + 100 * MS),
            Verdict::Pass
        );
        assert!(reg(s.check(a, ShieldClass::Register, t0 + 100 * MS)));
        // After a quiet second the bucket holds the full burst (5), not the new-source one.
        let t1 = t0 + 100 * MS + S;
        for _ in 0..5 {
            assert_eq!(s.check(a, ShieldClass::Register, t1), Verdict::Pass);
        }
        assert!(reg(s.check(a, ShieldClass::Register, t1)));
        // A class without a rate is not limited, new source or not.
        assert_eq!(s.check(a, ShieldClass::Invite, t1), Verdict::Pass);
        // Another fresh source has its own new-source burst.
        let b = ip("198.18.0.8");
        for _ in 0..2 {
            assert_eq!(s.check(b, ShieldClass::Register, t1), Verdict::Pass);
        }
        assert!(reg(s.check(b, ShieldClass::Register, t1)));
    }

    #[test]
    fn a_zero_new_source_burst_waits_for_the_rate() {
        let mut l = new_source_limits();
        l.per_class[ShieldClass::Options as usize] = RateLimit { rate: 2, burst: 4 };
        let mut s = UserShield::new(l, Vec::new(), 16);
        let a = ip("198.18.0.7");
        let opt = rate_drop(ShieldClass::Options);
        assert!(opt(s.check(a, ShieldClass::Options, S)));
        assert!(opt(s.check(a, ShieldClass::Options, S + 499 * MS)));
        assert_eq!(
            s.check(a, ShieldClass::Options, S + 500 * MS),
            Verdict::Pass
        );
    }

    #[test]
    fn allowlisted_and_peer_sources_keep_their_full_limits() {
        let peers = vec![Peer {
            addr: ip("198.18.1.0"),
            prefix_len: 24,
            multiplier: 2,
            unlimited: false,
        }];
        let mut s = UserShield::new(new_source_limits(), peers, 16);
        let t = 5 * S;
        // A configured peer: burst 5 x 2, from its first packet.
        let p = ip("198.18.1.9");
        for _ in 0..10 {
            assert_eq!(
                s.check(p, ShieldClass::Register, t),
                Verdict::PassAllowlisted
            );
        }
        assert!(rate_drop(ShieldClass::Register)(s.check(
            p,
            ShieldClass::Register,
            t
        )));
        // An authenticated source (allowlisted by the policy, default multiplier 4): 20.
        let a = ip("198.18.0.7");
        s.allow(Source::of(a), 100 * S, 0);
        for _ in 0..20 {
            assert_eq!(
                s.check(a, ShieldClass::Register, t),
                Verdict::PassAllowlisted
            );
        }
        assert!(rate_drop(ShieldClass::Register)(s.check(
            a,
            ShieldClass::Register,
            t
        )));
    }

    #[test]
    fn an_ipv6_64_shares_one_new_source_burst() {
        let mut s = UserShield::new(new_source_limits(), Vec::new(), 16);
        let t = 5 * S;
        assert_eq!(
            s.check(ip("2001:db8:1:2::11"), ShieldClass::Register, t),
            Verdict::Pass
        );
        assert_eq!(
            s.check(ip("2001:db8:1:2:aabb::22"), ShieldClass::Register, t),
            Verdict::Pass
        );
        assert!(rate_drop(ShieldClass::Register)(s.check(
            ip("2001:db8:1:2::33"),
            ShieldClass::Register,
            t
        )));
        // Another /64 is another new source.
        assert_eq!(
            s.check(ip("2001:db8:1:3::11"), ShieldClass::Register, t),
            Verdict::Pass
        );
    }

    #[test]
    fn a_cleared_table_brings_sources_back_as_new_sources() {
        let mut s = UserShield::new(new_source_limits(), Vec::new(), 1);
        let a = ip("198.18.0.7");
        let t = 5 * S;
        // A known source whose bucket refilled to the full burst ...
        assert_eq!(s.check(a, ShieldClass::Register, t), Verdict::Pass);
        // ... is forgotten when another source needs the only slot,
        assert_eq!(
            s.check(ip("198.18.0.8"), ShieldClass::Register, t + 10 * S),
            Verdict::Pass
        );
        // and comes back with the new-source burst (2), not the full one (5).
        for _ in 0..2 {
            assert_eq!(s.check(a, ShieldClass::Register, t + 10 * S), Verdict::Pass);
        }
        assert!(rate_drop(ShieldClass::Register)(s.check(
            a,
            ShieldClass::Register,
            t + 10 * S
        )));
    }

    #[test]
    fn disabled_passes_everything_and_a_full_table_starts_over() {
        let mut s = UserShield::new(Limits::default(), Vec::new(), 2);
        s.block(Source::of(ip("198.18.0.7")), u64::MAX, BlockReason::Manual);
        assert_eq!(
            s.check(ip("198.18.0.7"), ShieldClass::Register, S),
            Verdict::Pass
        );
        let mut s = UserShield::new(limits(), Vec::new(), 2);
        for i in 0..10u8 {
            let a = IpAddr::from([198, 18, 0, i]);
            assert_eq!(s.check(a, ShieldClass::Register, S), Verdict::Pass);
            assert!(s.buckets.len() <= 2);
        }
    }
}
