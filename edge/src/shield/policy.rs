//! The shield's policy engine: observations per source → blocks and allowlist entries.
//!
//! Pure: no clock, no IO. Every call takes `now_ns` (the caller passes `CLOCK_MONOTONIC`, the
//! clock of the XDP program's expiries), and returns the [`Event`]s it caused for the caller to
//! log and to apply to the maps (or to the userspace limiter).
//!
//! Sources are grouped as the XDP program groups them: IPv4 /32, IPv6 /64 ([`Source`]).
use std::collections::HashMap;
use std::net::IpAddr;

use sipveil_abi::shield::{
    BLOCK_REASON_AUTH_FAILURES, BLOCK_REASON_MANUAL, BLOCK_REASON_RATE, BLOCK_REASON_SCANNER,
    BLOCK_REASON_UNKNOWN_USERS, SourceKey,
};

const NS_PER_S: u64 = 1_000_000_000;

/// A source as the shield counts it: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Source {
    /// The source of a peer address (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = a.octets();
                    Source::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }

    /// The source of a `SV_SRC_BUCKETS` / `SV_BLOCK` key (None for an unknown family).
    pub fn from_key(key: &SourceKey) -> Option<Source> {
        let a = key.prefix[0].to_ne_bytes();
        let b = key.prefix[1].to_ne_bytes();
        match key.family {
            sipveil_abi::FAMILY_IPV4 => Some(Source::V4(a)),
            sipveil_abi::FAMILY_IPV6 => {
                Some(Source::V6([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]))
            }
            _ => None,
        }
    }

    /// The key of `SV_SRC_BUCKETS` and `SV_BLOCK`.
    pub fn key(self) -> SourceKey {
        match self {
            Source::V4(o) => SourceKey::v4(o),
            Source::V6(p) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(&p);
                SourceKey::v6(o)
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            Source::V6(p) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(o))
            }
        }
    }
}

/// What the SIP side (or the XDP event ring) saw a source do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A request with wrong credentials (a digest that did not verify).
    AuthFailure,
    /// A request for a user the registrar does not know.
    UnknownUser,
    /// A request whose User-Agent or From matched a scanner pattern.
    Scanner,
    /// The source went over a rate limit (an XDP `ShieldEvent`, or the userspace limiter).
    RateLimited,
    /// A successful authentication or registration.
    Authenticated,
}

/// Why a source is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockReason {
    Manual,
    AuthFailures,
    UnknownUsers,
    Scanner,
    Rate,
}

impl BlockReason {
    /// The `BLOCK_REASON_*` code of `SV_BLOCK`.
    pub const fn code(self) -> u32 {
        match self {
            BlockReason::Manual => BLOCK_REASON_MANUAL,
            BlockReason::AuthFailures => BLOCK_REASON_AUTH_FAILURES,
            BlockReason::UnknownUsers => BLOCK_REASON_UNKNOWN_USERS,
            BlockReason::Scanner => BLOCK_REASON_SCANNER,
            BlockReason::Rate => BLOCK_REASON_RATE,
        }
    }

    /// The reason of a `BLOCK_REASON_*` code (entries written by this daemon).
    pub const fn from_code(code: u32) -> Option<BlockReason> {
        match code {
            BLOCK_REASON_MANUAL => Some(BlockReason::Manual),
            BLOCK_REASON_AUTH_FAILURES => Some(BlockReason::AuthFailures),
            BLOCK_REASON_UNKNOWN_USERS => Some(BlockReason::UnknownUsers),
            BLOCK_REASON_SCANNER => Some(BlockReason::Scanner),
            BLOCK_REASON_RATE => Some(BlockReason::Rate),
            _ => None,
        }
    }

    /// A stable kebab-case name (logs, CLI, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            BlockReason::Manual => "manual",
            BlockReason::AuthFailures => "auth-failures",
            BlockReason::UnknownUsers => "unknown-users",
            BlockReason::Scanner => "scanner",
            BlockReason::Rate => "rate",
        }
    }
}

/// `count` observations within `window_ns` trigger a block; `count == 0` disables the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub count: u32,
    pub window_ns: u64,
}

/// The policy's settings (from `[shield]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    pub auth_failures: Threshold,
    pub unknown_users: Threshold,
    /// XDP/userspace "source newly limited" events (at most one per source per event interval).
    pub rate_events: Threshold,
    /// Scanner matches (1: the first match blocks).
    pub scanner: Threshold,
    /// A first block lasts this long; each repeat within [`PolicyConfig::strike_memory_ns`]
    /// doubles it, up to [`PolicyConfig::block_max_ns`].
    pub block_ns: u64,
    pub block_max_ns: u64,
    /// How long a source's earlier blocks count for escalation.
    pub strike_memory_ns: u64,
    /// Allowlist entry on success: its limit multiplier (0: the config's default) and lifetime.
    pub allow_multiplier: u32,
    pub allow_ns: u64,
    /// Sources tracked at most (observations of new sources beyond this are ignored until
    /// idle ones are pruned).
    pub max_tracked: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            auth_failures: Threshold {
                count: 10,
                window_ns: 60 * NS_PER_S,
            },
            unknown_users: Threshold {
                count: 10,
                window_ns: 60 * NS_PER_S,
            },
            rate_events: Threshold {
                count: 5,
                window_ns: 60 * NS_PER_S,
            },
            scanner: Threshold {
                count: 1,
                window_ns: 60 * NS_PER_S,
            },
            block_ns: 300 * NS_PER_S,
            block_max_ns: 86_400 * NS_PER_S,
            strike_memory_ns: 86_400 * NS_PER_S,
            allow_multiplier: 0,
            allow_ns: 3_600 * NS_PER_S,
            max_tracked: 65_536,
        }
    }
}

/// A block in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub reason: BlockReason,
    pub since_ns: u64,
    /// Every block ends.
    pub until_ns: u64,
    /// This source's blocks within the strike memory, this one included.
    pub strike: u32,
}

/// An allowlist entry earned by a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allow {
    pub since_ns: u64,
    pub until_ns: u64,
    /// 0: the configured default multiplier.
    pub multiplier: u32,
}

/// What a call changed: one log line each; apply to the maps / the userspace limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Blocked {
        source: Source,
        block: Block,
    },
    Released {
        source: Source,
        reason: BlockReason,
        manual: bool,
    },
    Allowed {
        source: Source,
        allow: Allow,
    },
    AllowExpired {
        source: Source,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Blocked { source, block } => write!(
                f,
                "shield: blocked {source} reason={} for={}s strike={}",
                block.reason.name(),
                block.until_ns.saturating_sub(block.since_ns) / NS_PER_S,
                block.strike
            ),
            Event::Released {
                source,
                reason,
                manual,
            } => write!(
                f,
                "shield: released {source} reason={} by={}",
                reason.name(),
                if *manual { "operator" } else { "expiry" }
            ),
            Event::Allowed { source, allow } => write!(
                f,
                "shield: allowlisted {source} for={}s",
                allow.until_ns.saturating_sub(allow.since_ns) / NS_PER_S
            ),
            Event::AllowExpired { source } => write!(f, "shield: allowlist expired {source}"),
        }
    }
}

/// A fixed window counter.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start_ns: u64,
    count: u32,
}

impl Window {
    /// Counts one at `now`; true when the threshold is reached.
    fn hit(&mut self, t: Threshold, now: u64) -> bool {
        if t.count == 0 {
            return false;
        }
        if self.count == 0 || now.saturating_sub(self.start_ns) > t.window_ns {
            self.start_ns = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count >= t.count
    }

    fn idle(&self, t: Threshold, now: u64) -> bool {
        self.count == 0 || now.saturating_sub(self.start_ns) > t.window_ns
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Tracked {
    auth: Window,
    unknown: Window,
    rate: Window,
    scanner: Window,
    /// Blocks within the strike memory, and when the last one ended.
    strikes: u32,
    last_block_end_ns: u64,
}

/// The policy engine. See the module docs.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    tracked: HashMap<Source, Tracked>,
    blocks: HashMap<Source, Block>,
    allows: HashMap<Source, Allow>,
}

/// Errors of the operator's commands.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{0} is not blocked")]
    NotBlocked(Source),
    #[error("a block needs a duration greater than 0")]
    ZeroDuration,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Policy {
        Policy {
            cfg,
            tracked: HashMap::new(),
            blocks: HashMap::new(),
            allows: HashMap::new(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// New settings (reload): blocks and allowlist entries in force stay as they are.
    pub fn set_config(&mut self, cfg: PolicyConfig) {
        self.cfg = cfg;
    }

    /// The block in force for `source` at `now`.
    pub fn blocked(&self, source: Source, now_ns: u64) -> Option<&Block> {
        self.blocks.get(&source).filter(|b| now_ns < b.until_ns)
    }

    /// The allowlist entry in force for `source` at `now`.
    pub fn allowed(&self, source: Source, now_ns: u64) -> Option<&Allow> {
        self.allows.get(&source).filter(|a| now_ns < a.until_ns)
    }

    /// Blocks, sorted by source.
    pub fn blocks(&self) -> Vec<(Source, Block)> {
        let mut v: Vec<_> = self.blocks.iter().map(|(s, b)| (*s, *b)).collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    /// Allowlist entries, sorted by source.
    pub fn allows(&self) -> Vec<(Source, Allow)> {
        let mut v: Vec<_> = self.allows.iter().map(|(s, a)| (*s, *a)).collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    /// Counts one observation of `source` at `now`.
    pub fn observe(&mut self, source: Source, obs: Observation, now_ns: u64) -> Option<Event> {
        if self.blocked(source, now_ns).is_some() {
            // Already blocked (e.g. requests in flight when the block was written).
            return None;
        }
        if obs == Observation::Authenticated {
            if let Some(t) = self.tracked.get_mut(&source) {
                t.auth = Window::default();
                t.unknown = Window::default();
            }
            let allow = Allow {
                since_ns: now_ns,
                until_ns: now_ns.saturating_add(self.cfg.allow_ns),
                multiplier: self.cfg.allow_multiplier,
            };
            // Also on a refresh: the maps need the new expiry.
            self.allows.insert(source, allow);
            return Some(Event::Allowed { source, allow });
        }
        if !self.tracked.contains_key(&source) && self.tracked.len() >= self.cfg.max_tracked {
            self.prune(now_ns);
            if self.tracked.len() >= self.cfg.max_tracked {
                return None;
            }
        }
        let cfg = &self.cfg;
        let t = self.tracked.entry(source).or_default();
        let reason = match obs {
            Observation::AuthFailure => t
                .auth
                .hit(cfg.auth_failures, now_ns)
                .then_some(BlockReason::AuthFailures),
            Observation::UnknownUser => t
                .unknown
                .hit(cfg.unknown_users, now_ns)
                .then_some(BlockReason::UnknownUsers),
            Observation::Scanner => t
                .scanner
                .hit(cfg.scanner, now_ns)
                .then_some(BlockReason::Scanner),
            Observation::RateLimited => {
                // An allowlisted source over its (raised) limit is not escalated to a block.
                if self
                    .allows
                    .get(&source)
                    .is_some_and(|a| now_ns < a.until_ns)
                {
                    return None;
                }
                let t = self.tracked.entry(source).or_default();
                t.rate
                    .hit(cfg.rate_events, now_ns)
                    .then_some(BlockReason::Rate)
            }
            Observation::Authenticated => None,
        }?;
        Some(self.impose(source, reason, None, now_ns))
    }

    /// Blocks `source` (escalating duration unless `duration_ns` is given).
    fn impose(
        &mut self,
        source: Source,
        reason: BlockReason,
        duration_ns: Option<u64>,
        now_ns: u64,
    ) -> Event {
        let memory = self.cfg.strike_memory_ns;
        let t = self.tracked.entry(source).or_default();
        if t.strikes > 0 && now_ns.saturating_sub(t.last_block_end_ns) > memory {
            t.strikes = 0;
        }
        t.strikes = t.strikes.saturating_add(1);
        let strike = t.strikes;
        let dur = duration_ns.unwrap_or_else(|| {
            let shift = (strike - 1).min(40);
            self.cfg
                .block_ns
                .saturating_mul(1u64 << shift)
                .min(self.cfg.block_max_ns.max(self.cfg.block_ns))
        });
        let until_ns = now_ns.saturating_add(dur.max(1));
        t.last_block_end_ns = until_ns;
        t.auth = Window::default();
        t.unknown = Window::default();
        t.rate = Window::default();
        t.scanner = Window::default();
        let block = Block {
            reason,
            since_ns: now_ns,
            until_ns,
            strike,
        };
        // A blocked source loses its allowlist entry.
        self.allows.remove(&source);
        self.blocks.insert(source, block);
        Event::Blocked { source, block }
    }

    /// Takes over a block found in `SV_BLOCK` at start (a restart adopting pinned maps), so it
    /// is listed, released and logged like the others. No event: it is in the map already.
    pub fn restore(&mut self, source: Source, reason: BlockReason, until_ns: u64, now_ns: u64) {
        if until_ns > now_ns {
            self.blocks.insert(
                source,
                Block {
                    reason,
                    since_ns: now_ns,
                    until_ns,
                    strike: 1,
                },
            );
        }
    }

    /// The operator blocks `source` for `duration_ns`.
    pub fn block(
        &mut self,
        source: Source,
        duration_ns: u64,
        now_ns: u64,
    ) -> Result<Event, PolicyError> {
        if duration_ns == 0 {
            return Err(PolicyError::ZeroDuration);
        }
        Ok(self.impose(source, BlockReason::Manual, Some(duration_ns), now_ns))
    }

    /// The operator lifts the block of `source`; its escalation history is forgotten too.
    pub fn unblock(&mut self, source: Source, now_ns: u64) -> Result<Event, PolicyError> {
        let b = self
            .blocks
            .remove(&source)
            .filter(|b| now_ns < b.until_ns)
            .ok_or(PolicyError::NotBlocked(source))?;
        if let Some(t) = self.tracked.get_mut(&source) {
            t.strikes = 0;
        }
        Ok(Event::Released {
            source,
            reason: b.reason,
            manual: true,
        })
    }

    /// Ends expired blocks and allowlist entries, forgets idle sources.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Event> {
        let mut out = Vec::new();
        self.blocks.retain(|s, b| {
            let live = now_ns < b.until_ns;
            if !live {
                out.push(Event::Released {
                    source: *s,
                    reason: b.reason,
                    manual: false,
                });
            }
            live
        });
        self.allows.retain(|s, a| {
            let live = now_ns < a.until_ns;
            if !live {
                out.push(Event::AllowExpired { source: *s });
            }
            live
        });
        self.prune(now_ns);
        out.sort_by_key(|e| match e {
            Event::Blocked { source, .. }
            | Event::Released { source, .. }
            | Event::Allowed { source, .. }
            | Event::AllowExpired { source } => *source,
        });
        out
    }

    fn prune(&mut self, now_ns: u64) {
        let cfg = &self.cfg;
        let blocks = &self.blocks;
        self.tracked.retain(|s, t| {
            blocks.contains_key(s)
                || !t.auth.idle(cfg.auth_failures, now_ns)
                || !t.unknown.idle(cfg.unknown_users, now_ns)
                || !t.rate.idle(cfg.rate_events, now_ns)
                || !t.scanner.idle(cfg.scanner, now_ns)
                || (t.strikes > 0
                    && now_ns.saturating_sub(t.last_block_end_ns) <= cfg.strike_memory_ns)
        });
    }
}

/// Scanner fingerprints: case-insensitive substrings of User-Agent or From.
///
/// Matched in one pass over each value: a rolling window of the last four bytes (ASCII
/// lower-cased) is hashed into a 4 096-bit filter of the patterns' first four bytes; only where
/// the filter hits are the patterns with that exact prefix compared in full. Patterns shorter
/// than four bytes (none by default) are searched directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerPatterns {
    /// Lower-case, non-empty.
    patterns: Vec<Vec<u8>>,
    /// Patterns of four bytes or more: (their first four bytes as a big-endian word, index).
    long: Vec<(u32, usize)>,
    /// Indices of the patterns shorter than four bytes.
    short: Vec<usize>,
    /// Bit `prefix_hash(w)` set for the first word `w` of every long pattern.
    filter: [u64; FILTER_WORDS],
}

/// The default patterns: well-known SIP scanners' User-Agent and From values.
pub const DEFAULT_SCANNER_PATTERNS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sipsak",
    "sip-scan",
    "sundayddr",
    "iwar",
    "pplsip",
    "sippy",
];

/// 64 × 64 = 4 096 filter bits.
const FILTER_WORDS: usize = 64;

/// A 12-bit hash of a four-byte window (multiplicative; the top bits of the product).
fn prefix_hash(w: u32) -> usize {
    (w.wrapping_mul(0x9E37_79B1) >> 20) as usize
}

impl ScannerPatterns {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> ScannerPatterns {
        let patterns: Vec<Vec<u8>> = patterns
            .iter()
            .map(|p| p.as_ref().trim().to_ascii_lowercase().into_bytes())
            .filter(|p| !p.is_empty())
            .collect();
        let mut long = Vec::new();
        let mut short = Vec::new();
        let mut filter = [0u64; FILTER_WORDS];
        for (i, p) in patterns.iter().enumerate() {
            match p.first_chunk::<4>() {
                Some(head) => {
                    let w = u32::from_be_bytes(*head);
                    let h = prefix_hash(w);
                    if let Some(word) = filter.get_mut(h / 64) {
                        *word |= 1 << (h % 64);
                    }
                    long.push((w, i));
                }
                None => short.push(i),
            }
        }
        ScannerPatterns {
            patterns,
            long,
            short,
            filter,
        }
    }

    /// True when any pattern occurs (ASCII case-insensitively) in any of `values`. No allocation.
    pub fn matches(&self, values: &[&[u8]]) -> bool {
        values.iter().any(|v| self.matches_one(v))
    }

    fn matches_one(&self, v: &[u8]) -> bool {
        for &i in &self.short {
            if let Some(p) = self.patterns.get(i)
                && v.len() >= p.len()
                && v.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p))
            {
                return true;
            }
        }
        if self.long.is_empty() {
            return false;
        }
        let mut w = 0u32;
        for (end, &c) in v.iter().enumerate() {
            w = (w << 8) | u32::from(c.to_ascii_lowercase());
            if end < 3 {
                continue;
            }
            let h = prefix_hash(w);
            let hit = self
                .filter
                .get(h / 64)
                .is_some_and(|word| word & (1 << (h % 64)) != 0);
            if !hit {
                continue;
            }
            let start = end - 3;
            let rest = v.get(start..).unwrap_or_default();
            for &(head, i) in &self.long {
                if head == w
                    && let Some(p) = self.patterns.get(i)
                    && rest
                        .get(..p.len())
                        .is_some_and(|s| s.eq_ignore_ascii_case(p))
                {
                    return true;
                }
            }
        }
        false
    }
}

impl Default for ScannerPatterns {
    fn default() -> Self {
        ScannerPatterns::new(DEFAULT_SCANNER_PATTERNS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_S;
    const A: Source = Source::V4([198, 18, 0, 7]);
    const B: Source = Source::V4([198, 18, 0, 8]);

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            auth_failures: Threshold {
                count: 3,
                window_ns: 10 * S,
            },
            block_ns: 60 * S,
            block_max_ns: 200 * S,
            strike_memory_ns: 1000 * S,
            allow_ns: 100 * S,
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn auth_failures_within_the_window_block_with_their_reason() {
        let mut p = Policy::new(cfg());
        assert_eq!(p.observe(A, Observation::AuthFailure, S), None);
        assert_eq!(p.observe(A, Observation::AuthFailure, 2 * S), None);
        let ev = p.observe(A, Observation::AuthFailure, 3 * S);
        let Some(Event::Blocked { source, block }) = ev else {
            panic!("expected a block, got {ev:?}");
        };
        assert_eq!(source, A);
        assert_eq!(block.reason, BlockReason::AuthFailures);
        assert_eq!(block.until_ns, 63 * S);
        assert!(p.blocked(A, 62 * S).is_some());
        assert!(p.blocked(B, 62 * S).is_none());
        assert_eq!(p.blocks().len(), 1);
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_block() {
        let mut p = Policy::new(cfg());
        for i in 0..10 {
            assert_eq!(p.observe(A, Observation::AuthFailure, i * 11 * S), None);
        }
        assert!(p.blocks().is_empty());
    }

    #[test]
    fn blocks_expire_with_one_release_event_and_repeats_double_up_to_the_max() {
        let mut p = Policy::new(cfg());
        let mut now = 0;
        let mut durations = Vec::new();
        for _ in 0..4 {
            let mut ev = None;
            for _ in 0..3 {
                now += S;
                ev = p.observe(A, Observation::AuthFailure, now);
            }
            let Some(Event::Blocked { block, .. }) = ev else {
                panic!("expected a block, got {ev:?}");
            };
            durations.push((block.until_ns - block.since_ns) / S);
            assert!(p.expire(block.until_ns - 1).is_empty());
            let released = p.expire(block.until_ns);
            assert_eq!(
                released,
                vec![Event::Released {
                    source: A,
                    reason: BlockReason::AuthFailures,
                    manual: false
                }]
            );
            now = block.until_ns;
        }
        assert_eq!(durations, vec![60, 120, 200, 200]);
    }

    #[test]
    fn strikes_are_forgotten_after_the_strike_memory() {
        let mut p = Policy::new(cfg());
        let ev = p.block(A, 10 * S, 0).expect("block");
        assert!(matches!(ev, Event::Blocked { .. }));
        p.expire(10 * S);
        let mut ev = None;
        for i in 0..3 {
            ev = p.observe(A, Observation::AuthFailure, 2000 * S + i);
        }
        let Some(Event::Blocked { block, .. }) = ev else {
            panic!("expected a block, got {ev:?}");
        };
        assert_eq!(block.strike, 1);
        assert_eq!(block.until_ns - block.since_ns, 60 * S);
    }

    #[test]
    fn success_allowlists_and_resets_failures() {
        let mut p = Policy::new(cfg());
        p.observe(A, Observation::AuthFailure, S);
        p.observe(A, Observation::AuthFailure, 2 * S);
        let ev = p.observe(A, Observation::Authenticated, 3 * S);
        assert!(matches!(ev, Some(Event::Allowed { source: A, .. })));
        assert!(p.allowed(A, 102 * S).is_some());
        assert!(p.allowed(A, 103 * S).is_none());
        // The two earlier failures no longer count.
        assert_eq!(p.observe(A, Observation::AuthFailure, 4 * S), None);
        assert_eq!(p.observe(A, Observation::AuthFailure, 5 * S), None);
        assert!(p.blocked(A, 5 * S).is_none());
        assert_eq!(p.expire(103 * S), vec![Event::AllowExpired { source: A }]);
    }

    #[test]
    fn rate_events_of_an_allowlisted_source_do_not_block() {
        let mut c = cfg();
        c.rate_events = Threshold {
            count: 2,
            window_ns: 10 * S,
        };
        let mut p = Policy::new(c);
        p.observe(A, Observation::Authenticated, 0);
        for i in 1..10 {
            assert_eq!(p.observe(A, Observation::RateLimited, i * S), None);
        }
        assert_eq!(p.observe(B, Observation::RateLimited, S), None);
        let ev = p.observe(B, Observation::RateLimited, 2 * S);
        assert!(matches!(
            ev,
            Some(Event::Blocked { source: B, block }) if block.reason == BlockReason::Rate
        ));
    }

    #[test]
    fn scanner_blocks_at_once_and_a_block_drops_the_allowlist_entry() {
        let mut p = Policy::new(cfg());
        p.observe(A, Observation::Authenticated, 0);
        let ev = p.observe(A, Observation::Scanner, S);
        assert!(matches!(
            ev,
            Some(Event::Blocked { block, .. }) if block.reason == BlockReason::Scanner
        ));
        assert!(p.allowed(A, 2 * S).is_none());
    }

    #[test]
    fn manual_block_and_unblock() {
        let mut p = Policy::new(cfg());
        assert_eq!(p.block(A, 0, 0), Err(PolicyError::ZeroDuration));
        let Ok(Event::Blocked { block, .. }) = p.block(A, 30 * S, 5 * S) else {
            panic!("manual block refused");
        };
        assert_eq!(block.reason, BlockReason::Manual);
        assert_eq!(block.until_ns, 35 * S);
        assert_eq!(p.unblock(B, 6 * S), Err(PolicyError::NotBlocked(B)));
        assert_eq!(
            p.unblock(A, 6 * S),
            Ok(Event::Released {
                source: A,
                reason: BlockReason::Manual,
                manual: true
            })
        );
        assert!(p.blocked(A, 6 * S).is_none());
        assert!(p.expire(100 * S).is_empty());
    }

    #[test]
    fn restored_blocks_are_listed_and_released() {
        let mut p = Policy::new(cfg());
        p.restore(A, BlockReason::Scanner, 50 * S, 10 * S);
        p.restore(B, BlockReason::Manual, 5 * S, 10 * S);
        assert_eq!(p.blocks().len(), 1);
        assert!(p.blocked(A, 20 * S).is_some());
        assert_eq!(
            p.expire(50 * S),
            vec![Event::Released {
                source: A,
                reason: BlockReason::Scanner,
                manual: false
            }]
        );
    }

    #[test]
    fn tracking_is_bounded() {
        let mut c = cfg();
        c.max_tracked = 2;
        let mut p = Policy::new(c);
        p.observe(A, Observation::AuthFailure, 0);
        p.observe(B, Observation::AuthFailure, 0);
        let third = Source::V4([198, 18, 0, 9]);
        for _ in 0..5 {
            assert_eq!(p.observe(third, Observation::AuthFailure, S), None);
        }
        // Once A and B are idle, the third source is tracked (and blocked).
        let mut ev = None;
        for i in 0..3 {
            ev = p.observe(third, Observation::AuthFailure, 20 * S + i);
        }
        assert!(matches!(ev, Some(Event::Blocked { .. })));
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("addr");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("addr");
        assert_eq!(Source::of(a), Source::of(b));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let m: IpAddr = "::ffff:198.18.0.7".parse().expect("addr");
        assert_eq!(Source::of(m), A);
        assert_eq!(A.key(), SourceKey::v4([198, 18, 0, 7]));
        assert_eq!(Source::from_key(&A.key()), Some(A));
        assert_eq!(Source::from_key(&Source::of(a).key()), Some(Source::of(a)));
    }

    #[test]
    fn scanner_patterns_match_case_insensitively() {
        let p = ScannerPatterns::default();
        assert!(p.matches(&[b"Friendly-Scanner"]));
        assert!(p.matches(&[b"pjsip", b"\"sipvicious\" <sip:100@1.1.1.1>"]));
        assert!(p.matches(&[b"VaxSIPUserAgent/3.1"]));
        assert!(!p.matches(&[b"baresip v3.0", b"<sip:alice@open.lab>"]));
        assert!(!ScannerPatterns::new(&["", "  "]).matches(&[b"anything"]));
    }

    /// The single-pass matcher against the plain definition (any window equal ignoring ASCII
    /// case), over every position of a pattern in a longer value.
    #[test]
    fn scanner_matcher_agrees_with_a_plain_search_at_every_position() {
        let pats = ScannerPatterns::new(&["SIPVicious", "iwar", "ab", "x"]);
        let naive = |v: &[u8]| {
            ["sipvicious", "iwar", "ab", "x"].iter().any(|p| {
                v.len() >= p.len()
                    && v.windows(p.len())
                        .any(|w| w.eq_ignore_ascii_case(p.as_bytes()))
            })
        };
        for pat in ["sIpViCiOuS", "IWAR", "aB", "X"] {
            for pre in 0..12 {
                for post in 0..6 {
                    let mut v = vec![b'-'; pre];
                    v.extend_from_slice(pat.as_bytes());
                    v.extend(std::iter::repeat_n(b'.', post));
                    assert!(pats.matches(&[&v]), "{:?}", String::from_utf8_lossy(&v));
                    assert!(naive(&v));
                }
            }
        }
        // Near misses: a pattern cut at its end, at the end of the value, or broken in the middle.
        for v in [
            &b"sipviciou"[..],
            b"<sip:sipviciou>",
            b"sipv icious",
            b"iwa",
            b"i-w-a-r",
            b"",
        ] {
            assert!(!ScannerPatterns::new(&["sipvicious", "iwar"]).matches(&[v]));
        }
        assert!(!pats.matches(&[b"<sip:alice@open.net>;tag=1"]));
        assert!(pats.matches(&[b"<sip:alice@open.net>;tag=1", b"Ab"]));
    }

    #[test]
    fn scanner_patterns_match_anywhere_in_long_values() {
        let p = ScannerPatterns::default();
        let mut v = b"\"Display\" <sip:".to_vec();
        v.extend(std::iter::repeat_n(b'a', 500));
        v.extend_from_slice(b"@open.lab>;tag=");
        assert!(!p.matches(&[&v]));
        let mut at_end = v.clone();
        at_end.extend_from_slice(b"SundayDDR");
        assert!(p.matches(&[&at_end]));
        let mut at_start = b"friendly-SCANNER".to_vec();
        at_start.extend_from_slice(&v);
        assert!(p.matches(&[b"", &at_start]));
        // Every default pattern, upper-cased, in the middle of a From.
        for pat in DEFAULT_SCANNER_PATTERNS {
            let from = format!("<sip:{}@198.18.0.1>;tag=9", pat.to_ascii_uppercase());
            assert!(p.matches(&[b"", from.as_bytes()]), "{from}");
        }
        // The old default SIPp user agent string "sipp" must not match "sippy".
        assert!(!p.matches(&[b"SIPp/3.7", b"<sip:sipp@198.18.0.1>;tag=1"]));
    }
}
