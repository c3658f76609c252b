//! `[shield]`: the flood shield's settings (issue 6). Absent or `enabled = false`: off (the XDP
//! `ShieldConfig` stays zeroed, the userspace limiter passes everything, the policy still keeps
//! manual blocks).
use std::net::IpAddr;
use std::ops::Range;

use serde::Deserialize;
use sipveil_abi::shield::{CLASSES, MAX_BURST, MAX_MULTIPLIER, MAX_RATE, RateLimit, ShieldClass};
use toml::Spanned;

use super::{ConfigError, Ctx};
use crate::shield::{Limits, Peer, PolicyConfig, Threshold, policy::DEFAULT_SCANNER_PATTERNS};

const NS_PER_S: u64 = 1_000_000_000;

/// `rate`/`burst` of one class (`{ rate = 20, burst = 40 }`), optionally with the burst of a
/// source never seen before (`new_source_burst = 4`; not for `global`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSection {
    pub rate: u32,
    pub burst: u32,
    #[serde(default)]
    pub new_source_burst: Option<u32>,
}

/// A ceiling over all sources that are not allowlisted (`register_ceiling = { rate = 200,
/// burst = 100 }`); `rate = 0`: none.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingSection {
    pub rate: u32,
    pub burst: u32,
}

/// `count` events within `window_secs`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSection {
    pub count: u32,
    pub window_secs: u64,
}

/// A configured peer: `{ address = "198.18.0.0/24", unlimited = true }` or `multiplier = 50`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub address: Spanned<String>,
    #[serde(default)]
    pub multiplier: u32,
    #[serde(default)]
    pub unlimited: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShieldSection {
    #[serde(default)]
    pub enabled: bool,
    pub register: Option<Spanned<LimitSection>>,
    pub invite: Option<Spanned<LimitSection>>,
    pub options: Option<Spanned<LimitSection>>,
    pub other: Option<Spanned<LimitSection>>,
    pub response: Option<Spanned<LimitSection>>,
    pub not_sip: Option<Spanned<LimitSection>>,
    pub syn: Option<Spanned<LimitSection>>,
    pub global: Option<Spanned<LimitSection>>,
    pub register_ceiling: Option<Spanned<CeilingSection>>,
    pub invite_ceiling: Option<Spanned<CeilingSection>>,
    pub options_ceiling: Option<Spanned<CeilingSection>>,
    pub other_ceiling: Option<Spanned<CeilingSection>>,
    pub response_ceiling: Option<Spanned<CeilingSection>>,
    pub not_sip_ceiling: Option<Spanned<CeilingSection>>,
    pub syn_ceiling: Option<Spanned<CeilingSection>>,
    pub allow_multiplier: Option<Spanned<u32>>,
    pub allow_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub peers: Vec<PeerSection>,
    pub auth_failures: Option<ThresholdSection>,
    pub unknown_users: Option<ThresholdSection>,
    pub rate_events: Option<ThresholdSection>,
    pub block_secs: Option<Spanned<u64>>,
    pub block_max_secs: Option<Spanned<u64>>,
    pub strike_memory_secs: Option<u64>,
    pub event_interval_ms: Option<u32>,
    pub scanner_patterns: Option<Vec<String>>,
}

/// The validated `[shield]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShieldSettings {
    pub limits: Limits,
    pub peers: Vec<Peer>,
    pub policy: PolicyConfig,
    pub event_interval_ms: u32,
    pub scanner_patterns: Vec<String>,
}

impl Default for ShieldSettings {
    fn default() -> Self {
        ShieldSettings {
            limits: Limits::default(),
            peers: Vec::new(),
            policy: PolicyConfig::default(),
            event_interval_ms: 0,
            scanner_patterns: DEFAULT_SCANNER_PATTERNS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl ShieldSettings {
    /// One line for `check-config`.
    pub fn summary(&self) -> String {
        if !self.limits.enabled {
            return "shield        off".to_owned();
        }
        let r = self.limits.per_class[ShieldClass::Register as usize];
        let new = self
            .limits
            .new_source_burst
            .map_or(r.burst, |n| u32::from(n[ShieldClass::Register as usize]));
        let p = &self.policy;
        let rc = self.limits.class_global[ShieldClass::Register as usize];
        let ic = self.limits.class_global[ShieldClass::Invite as usize];
        format!(
            "shield        on; register {}/s burst {} ({} for a new source); global {}/s \
             (register {}/s, invite {}/s); {} peer(s); block after {} auth failures / {} \
             unknown users / {} rate events, {}s doubling to {}s",
            r.rate,
            r.burst,
            new,
            self.limits.global.rate,
            rc.rate,
            ic.rate,
            self.peers.len(),
            p.auth_failures.count,
            p.unknown_users.count,
            p.rate_events.count,
            p.block_ns / NS_PER_S,
            p.block_max_ns / NS_PER_S
        )
    }
}

/// Default per-source limits (packets/s, burst, new-source burst): generous for a client, tight
/// for a flood.
///
/// The new-source burst is what a source the shield has no state for (never seen, or forgotten)
/// may send at once before its class rate applies; the bucket then refills at the rate up to the
/// full burst. What a legitimate client sends in its first second: REGISTER → 401, REGISTER
/// with credentials → 200 (2; 4 covers a phone with two accounts on one address or a client that
/// re-REGISTERs at once), INVITE → 407, INVITE with credentials (2; 4 for two calls), an OPTIONS
/// ping or two, ACK/SUBSCRIBE/PUBLISH/NOTIFY/BYE as "other" (a desk phone subscribes to
/// message-waiting and presence at boot: 8), responses to the edge's own requests (100/180/200
/// of a call, 200 to NOTIFY/OPTIONS: 8), a CRLF or STUN keep-alive (2), and a TCP/TLS connection
/// or two (2). The rates add a token every 1/rate s (50 ms for REGISTER), which is less than
/// a challenge's round trip, so a client waiting for each answer never notices; what is lost in a
/// larger instant burst (a phone with dozens of busy-lamp SUBSCRIBEs) is retransmitted by the
/// SIP timers (500 ms), by which time the bucket holds ~50 more. Sources on the allowlist
/// (configured peers, recently authenticated) always start with their full limits.
const DEFAULTS: [(ShieldClass, u32, u32, u16); 7] = [
    (ShieldClass::Register, 20, 40, 4),
    (ShieldClass::Invite, 20, 40, 4),
    (ShieldClass::Options, 20, 40, 2),
    (ShieldClass::Other, 100, 200, 8),
    (ShieldClass::Response, 200, 400, 8),
    (ShieldClass::NotSip, 20, 40, 2),
    (ShieldClass::Syn, 10, 20, 2),
];

/// Default ceilings per class over all sources that are not allowlisted (packets/s, burst).
/// An authenticated domain's clients are normally allowlisted (a verified REGISTER allowlists
/// its source for `allow_secs`, longer than a refresh interval) and meet these ceilings only
/// after a restart of the machine or a change of address; an open domain's clients are never
/// allowlisted (a registration there proves nothing), so their refreshes and keep-alives always
/// count here, alongside new clients and floods. REGISTER and INVITE, the requests that cost
/// the daemon most (a registration, a challenge and failure accounting, a call attempt), get
/// far less than the global ceiling; keep-alives (OPTIONS, CRLF/STUN as `not_sip`) more. Sized
/// for 50 000 open-domain clients refreshing every 600 s and pinging every 30 s (~83
/// REGISTER/s, ~1 667 CRLF pings/s; OPTIONS pings fit ~30 000 such clients), and for a cold
/// start of an authenticated domain of that size (~170 REGISTER/s: challenge + credentials).
/// Responses have no ceiling of their own (they answer the edge's requests; the global
/// ceiling still applies).
const CEILING_DEFAULTS: [(ShieldClass, u32, u32); 7] = [
    (ShieldClass::Register, 200, 100),
    (ShieldClass::Invite, 100, 50),
    (ShieldClass::Options, 1_000, 200),
    (ShieldClass::Other, 1_000, 200),
    (ShieldClass::Response, 0, 0),
    (ShieldClass::NotSip, 2_000, 400),
    (ShieldClass::Syn, 200, 100),
];

/// A class's ceiling; `default` when the section does not say.
fn ceiling(
    ctx: &Ctx<'_>,
    key: &str,
    s: Option<&Spanned<CeilingSection>>,
    default: RateLimit,
) -> Result<RateLimit, ConfigError> {
    let Some(s) = s else { return Ok(default) };
    let v = s.get_ref();
    if v.rate > MAX_RATE || v.burst > MAX_BURST {
        return Err(ctx.at(
            s.span(),
            key,
            format!("rate must be at most {MAX_RATE} and burst at most {MAX_BURST}"),
        ));
    }
    if v.rate != 0 && v.burst == 0 {
        return Err(ctx.at(
            s.span(),
            key,
            "burst 0 with a rate drops every packet of the class: give a burst, or rate = 0 for \
             no ceiling"
                .to_owned(),
        ));
    }
    Ok(RateLimit {
        rate: v.rate,
        burst: v.burst,
    })
}

/// A class's limit and its new-source burst; `default_new` (capped at the burst) when the
/// section does not say.
fn limit(
    ctx: &Ctx<'_>,
    key: &str,
    s: Option<&Spanned<LimitSection>>,
    default: RateLimit,
    default_new: u16,
) -> Result<(RateLimit, u16), ConfigError> {
    let Some(s) = s else {
        return Ok((default, capped(default_new, default.burst)));
    };
    let v = s.get_ref();
    if v.rate > MAX_RATE || v.burst > MAX_BURST {
        return Err(ctx.at(
            s.span(),
            key,
            format!("rate must be at most {MAX_RATE} and burst at most {MAX_BURST}"),
        ));
    }
    let new = match v.new_source_burst {
        None => capped(default_new, v.burst),
        Some(n) => match u16::try_from(n) {
            Ok(n) if u32::from(n) <= v.burst => n,
            _ => {
                return Err(ctx.at(
                    s.span(),
                    &format!("{key}.new_source_burst"),
                    format!(
                        "must be at most the class's burst ({}) and at most {}",
                        v.burst,
                        u16::MAX
                    ),
                ));
            }
        },
    };
    Ok((
        RateLimit {
            rate: v.rate,
            burst: v.burst,
        },
        new,
    ))
}

/// `new` but no more than `burst`.
fn capped(new: u16, burst: u32) -> u16 {
    u16::try_from(burst).map_or(new, |b| new.min(b))
}

fn threshold(t: Option<ThresholdSection>, default: Threshold) -> Threshold {
    t.map_or(default, |t| Threshold {
        count: t.count,
        window_ns: t.window_secs.saturating_mul(NS_PER_S),
    })
}

fn secs(
    ctx: &Ctx<'_>,
    key: &str,
    v: Option<&Spanned<u64>>,
    default_ns: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default_ns) };
    if *v.get_ref() == 0 {
        return Err(ctx.at(v.span(), key, "must be at least 1".to_owned()));
    }
    Ok(v.get_ref().saturating_mul(NS_PER_S))
}

fn peer(ctx: &Ctx<'_>, p: &PeerSection) -> Result<Peer, ConfigError> {
    let text = p.address.get_ref();
    let bad = |why: &str| ctx.at(p.address.span(), "shield.peers.address", why.to_owned());
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text.as_str(), None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| bad("must be an IP address or prefix (198.18.0.0/24, 2001:db8::/48)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| bad("the prefix length is out of range"))?,
    };
    if p.multiplier > MAX_MULTIPLIER {
        return Err(bad("multiplier must be at most 10000"));
    }
    Ok(Peer {
        addr,
        prefix_len,
        multiplier: p.multiplier,
        unlimited: p.unlimited,
    })
}

/// Validates `[shield]` (absent: the defaults, off).
pub(crate) fn build(
    ctx: &Ctx<'_>,
    s: Option<&ShieldSection>,
) -> Result<ShieldSettings, ConfigError> {
    let mut out = ShieldSettings::default();
    let mut new_source = [0u16; CLASSES];
    for (class, rate, burst, new) in DEFAULTS {
        out.limits.per_class[class as usize] = RateLimit { rate, burst };
        new_source[class as usize] = new;
    }
    out.limits.new_source_burst = Some(new_source);
    // The burst stays below what the daemon's SIP sockets can queue (4 MiB each: a few thousand
    // datagrams): a ceiling burst larger than that overflows them in milliseconds under a
    // many-source flood, and the legitimate datagrams queued behind it are lost with it.
    out.limits.global = RateLimit {
        rate: 5_000,
        burst: 1_000,
    };
    for (class, rate, burst) in CEILING_DEFAULTS {
        out.limits.class_global[class as usize] = RateLimit { rate, burst };
    }
    out.limits.allow_multiplier = 10;
    let Some(s) = s else {
        return Ok(out);
    };
    out.limits.enabled = s.enabled;
    let sections: [(ShieldClass, &str, Option<&Spanned<LimitSection>>); 7] = [
        (
            ShieldClass::Register,
            "shield.register",
            s.register.as_ref(),
        ),
        (ShieldClass::Invite, "shield.invite", s.invite.as_ref()),
        (ShieldClass::Options, "shield.options", s.options.as_ref()),
        (ShieldClass::Other, "shield.other", s.other.as_ref()),
        (
            ShieldClass::Response,
            "shield.response",
            s.response.as_ref(),
        ),
        (ShieldClass::NotSip, "shield.not_sip", s.not_sip.as_ref()),
        (ShieldClass::Syn, "shield.syn", s.syn.as_ref()),
    ];
    for (class, key, sec) in sections {
        let i = class as usize;
        debug_assert!(i < CLASSES);
        (out.limits.per_class[i], new_source[i]) =
            limit(ctx, key, sec, out.limits.per_class[i], new_source[i])?;
    }
    out.limits.new_source_burst = Some(new_source);
    if let Some(g) = &s.global
        && g.get_ref().new_source_burst.is_some()
    {
        return Err(ctx.at(
            g.span(),
            "shield.global.new_source_burst",
            "the global ceiling is shared by all sources: it has no new-source burst".to_owned(),
        ));
    }
    (out.limits.global, _) = limit(
        ctx,
        "shield.global",
        s.global.as_ref(),
        out.limits.global,
        0,
    )?;
    let ceilings: [(ShieldClass, &str, Option<&Spanned<CeilingSection>>); 7] = [
        (
            ShieldClass::Register,
            "shield.register_ceiling",
            s.register_ceiling.as_ref(),
        ),
        (
            ShieldClass::Invite,
            "shield.invite_ceiling",
            s.invite_ceiling.as_ref(),
        ),
        (
            ShieldClass::Options,
            "shield.options_ceiling",
            s.options_ceiling.as_ref(),
        ),
        (
            ShieldClass::Other,
            "shield.other_ceiling",
            s.other_ceiling.as_ref(),
        ),
        (
            ShieldClass::Response,
            "shield.response_ceiling",
            s.response_ceiling.as_ref(),
        ),
        (
            ShieldClass::NotSip,
            "shield.not_sip_ceiling",
            s.not_sip_ceiling.as_ref(),
        ),
        (
            ShieldClass::Syn,
            "shield.syn_ceiling",
            s.syn_ceiling.as_ref(),
        ),
    ];
    for (class, key, sec) in ceilings {
        let i = class as usize;
        out.limits.class_global[i] = ceiling(ctx, key, sec, out.limits.class_global[i])?;
    }
    if let Some(m) = &s.allow_multiplier {
        if *m.get_ref() == 0 || *m.get_ref() > MAX_MULTIPLIER {
            return Err(ctx.at(
                m.span(),
                "shield.allow_multiplier",
                format!("must be 1..={MAX_MULTIPLIER}"),
            ));
        }
        out.limits.allow_multiplier = *m.get_ref();
    }
    out.peers = s
        .peers
        .iter()
        .map(|p| peer(ctx, p))
        .collect::<Result<_, _>>()?;
    let d = PolicyConfig::default();
    out.policy = PolicyConfig {
        auth_failures: threshold(s.auth_failures, d.auth_failures),
        unknown_users: threshold(s.unknown_users, d.unknown_users),
        rate_events: threshold(s.rate_events, d.rate_events),
        scanner: d.scanner,
        block_ns: secs(ctx, "shield.block_secs", s.block_secs.as_ref(), d.block_ns)?,
        block_max_ns: secs(
            ctx,
            "shield.block_max_secs",
            s.block_max_secs.as_ref(),
            d.block_max_ns,
        )?,
        strike_memory_ns: s
            .strike_memory_secs
            .map_or(d.strike_memory_ns, |v| v.saturating_mul(NS_PER_S)),
        allow_multiplier: 0,
        allow_ns: secs(ctx, "shield.allow_secs", s.allow_secs.as_ref(), d.allow_ns)?,
        max_tracked: d.max_tracked,
    };
    if out.policy.block_max_ns < out.policy.block_ns {
        let span: Range<usize> = s.block_max_secs.as_ref().map_or(0..0, |v| v.span());
        return Err(ctx.at(
            span,
            "shield.block_max_secs",
            "must be at least block_secs".to_owned(),
        ));
    }
    out.event_interval_ms = s.event_interval_ms.unwrap_or(0);
    out.limits.event_interval_ms = out.event_interval_ms;
    if let Some(p) = &s.scanner_patterns {
        out.scanner_patterns = p.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    const BASE: &str = "[media]\nport_min = 40000\nport_max = 40099\n\
                        addresses = { a = \"198.18.1.1\", b = \"198.18.2.1\" }\n\n";

    fn parse(shield: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), &format!("{BASE}{shield}"))
    }

    #[test]
    fn absent_is_off_with_defaults() {
        let c = parse("").expect("config");
        assert!(!c.shield.limits.enabled);
        assert_eq!(
            c.shield.limits.per_class[ShieldClass::Register as usize],
            RateLimit {
                rate: 20,
                burst: 40
            }
        );
        assert_eq!(c.shield.summary(), "shield        off");
        let n = c
            .shield
            .limits
            .new_source_burst
            .expect("a new-source burst");
        assert_eq!(n[ShieldClass::Register as usize], 4);
        assert_eq!(n[ShieldClass::Invite as usize], 4);
        assert_eq!(n[ShieldClass::Options as usize], 2);
        assert_eq!(n[ShieldClass::Other as usize], 8);
        assert_eq!(n[ShieldClass::Response as usize], 8);
        assert_eq!(n[ShieldClass::NotSip as usize], 2);
        assert_eq!(n[ShieldClass::Syn as usize], 2);
    }

    #[test]
    fn new_source_burst_defaults_are_capped_at_a_smaller_burst() {
        let c = parse(
            "[shield]\nenabled = true\nregister = { rate = 5, burst = 3 }\n\
             invite = { rate = 5, burst = 30, new_source_burst = 30 }\n\
             options = { rate = 5, burst = 30, new_source_burst = 0 }\n",
        )
        .expect("config");
        let n = c
            .shield
            .limits
            .new_source_burst
            .expect("a new-source burst");
        assert_eq!(n[ShieldClass::Register as usize], 3, "default 4, burst 3");
        assert_eq!(n[ShieldClass::Invite as usize], 30, "the full burst");
        assert_eq!(n[ShieldClass::Options as usize], 0);
        assert_eq!(
            n[ShieldClass::Other as usize],
            8,
            "untouched classes keep theirs"
        );
        assert!(
            c.shield.summary().contains("burst 3 (3 for a new source)"),
            "{}",
            c.shield.summary()
        );
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            "[shield]\nenabled = true\nregister = { rate = 5, burst = 9, new_source_burst = 1 }\n\
             syn = { rate = 0, burst = 0 }\nglobal = { rate = 100, burst = 200 }\n\
             allow_multiplier = 7\nallow_secs = 60\n\
             peers = [{ address = \"198.18.1.0/24\", unlimited = true }, { address = \"2001:db8::1\", multiplier = 3 }]\n\
             auth_failures = { count = 3, window_secs = 30 }\n\
             unknown_users = { count = 4, window_secs = 40 }\n\
             rate_events = { count = 2, window_secs = 20 }\n\
             block_secs = 10\nblock_max_secs = 80\nstrike_memory_secs = 1000\n\
             event_interval_ms = 250\nscanner_patterns = [\"evil\"]\n",
        )
        .expect("config");
        let s = &c.shield;
        assert!(s.limits.enabled);
        assert_eq!(
            s.limits.per_class[ShieldClass::Register as usize],
            RateLimit { rate: 5, burst: 9 }
        );
        assert_eq!(s.limits.per_class[ShieldClass::Syn as usize].rate, 0);
        let n = s.limits.new_source_burst.expect("a new-source burst");
        assert_eq!(n[ShieldClass::Register as usize], 1);
        assert_eq!(
            n[ShieldClass::Syn as usize],
            0,
            "default 2 capped at burst 0"
        );
        assert_eq!(
            s.limits.global,
            RateLimit {
                rate: 100,
                burst: 200
            }
        );
        assert_eq!(s.limits.allow_multiplier, 7);
        assert_eq!(s.limits.event_interval_ms, 250);
        assert_eq!(s.policy.allow_ns, 60 * NS_PER_S);
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].prefix_len, 24);
        assert!(s.peers[0].unlimited);
        assert_eq!(s.peers[1].prefix_len, 128);
        assert_eq!(s.peers[1].multiplier, 3);
        assert_eq!(s.policy.auth_failures.count, 3);
        assert_eq!(s.policy.unknown_users.window_ns, 40 * NS_PER_S);
        assert_eq!(s.policy.rate_events.count, 2);
        assert_eq!(s.policy.block_ns, 10 * NS_PER_S);
        assert_eq!(s.policy.block_max_ns, 80 * NS_PER_S);
        assert_eq!(s.policy.strike_memory_ns, 1000 * NS_PER_S);
        assert_eq!(s.scanner_patterns, vec!["evil".to_owned()]);
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let e = parse("[shield]\nenabled = true\nregister = { rate = 2000000, burst = 1 }\n")
            .expect_err("rate too high")
            .to_string();
        assert!(e.contains("shield.register") && e.contains("line 8"), "{e}");
        let e = parse("[shield]\npeers = [{ address = \"198.18.1.0/33\" }]\n")
            .expect_err("bad prefix")
            .to_string();
        assert!(e.contains("shield.peers.address"), "{e}");
        let e = parse("[shield]\nblock_secs = 100\nblock_max_secs = 10\n")
            .expect_err("max below base")
            .to_string();
        assert!(e.contains("shield.block_max_secs"), "{e}");
        let e = parse(
            "[shield]\nenabled = true\n\ninvite = { rate = 2, burst = 5, new_source_burst = 6 }\n",
        )
        .expect_err("new-source burst above the burst")
        .to_string();
        assert!(
            e.contains("shield.invite.new_source_burst") && e.contains("line 9"),
            "{e}"
        );
        let e = parse("[shield]\nglobal = { rate = 2, burst = 5, new_source_burst = 1 }\n")
            .expect_err("global has no new-source burst")
            .to_string();
        assert!(
            e.contains("shield.global.new_source_burst") && e.contains("line 7"),
            "{e}"
        );
        let e = parse("[shield]\nenable = true\n")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("enable"), "{e}");
        let e =
            parse("[shield]\nenabled = true\n\ninvite_ceiling = { rate = 2000001, burst = 5 }\n")
                .expect_err("ceiling rate too high")
                .to_string();
        assert!(
            e.contains("shield.invite_ceiling") && e.contains("line 9"),
            "{e}"
        );
        let e = parse("[shield]\nregister_ceiling = { rate = 20, burst = 0 }\n")
            .expect_err("a ceiling that drops everything")
            .to_string();
        assert!(
            e.contains("shield.register_ceiling") && e.contains("line 7"),
            "{e}"
        );
        let e =
            parse("[shield]\nregister_ceiling = { rate = 20, burst = 5, new_source_burst = 1 }\n")
                .expect_err("a ceiling has no new-source burst")
                .to_string();
        assert!(e.contains("new_source_burst"), "{e}");
    }

    #[test]
    fn the_example_config_shows_the_default_limits() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sipveil.example.toml");
        let ex = Config::load(&path).expect("the example config");
        let d = parse("[shield]\nenabled = true\n").expect("defaults");
        let (e, d) = (ex.shield.limits, d.shield.limits);
        assert_eq!(e.per_class, d.per_class);
        assert_eq!(e.new_source_burst, d.new_source_burst);
        assert_eq!(e.global, d.global);
        assert_eq!(e.class_global, d.class_global);
        assert_eq!(e.allow_multiplier, d.allow_multiplier);
    }

    #[test]
    fn class_ceilings_default_and_are_read() {
        let c = parse("").expect("config");
        let g = c.shield.limits.class_global;
        assert_eq!(
            g[ShieldClass::Register as usize],
            RateLimit {
                rate: 200,
                burst: 100
            }
        );
        assert_eq!(g[ShieldClass::Invite as usize].rate, 100);
        assert_eq!(g[ShieldClass::NotSip as usize].rate, 2_000);
        assert_eq!(
            g[ShieldClass::Response as usize].rate,
            0,
            "no response ceiling"
        );
        let c = parse(
            "[shield]\nenabled = true\nregister_ceiling = { rate = 50, burst = 25 }\n\
             invite_ceiling = { rate = 0, burst = 0 }\noptions_ceiling = { rate = 7, burst = 8 }\n\
             other_ceiling = { rate = 9, burst = 10 }\nresponse_ceiling = { rate = 11, burst = 12 }\n\
             not_sip_ceiling = { rate = 13, burst = 14 }\nsyn_ceiling = { rate = 15, burst = 16 }\n",
        )
        .expect("config");
        let g = c.shield.limits.class_global;
        let got: Vec<(u32, u32)> = ShieldClass::ALL
            .iter()
            .map(|c| (g[*c as usize].rate, g[*c as usize].burst))
            .collect();
        assert_eq!(
            got,
            vec![
                (50, 25),
                (0, 0),
                (7, 8),
                (9, 10),
                (11, 12),
                (13, 14),
                (15, 16)
            ]
        );
        assert!(
            c.shield.summary().contains("(register 50/s, invite 0/s)"),
            "{}",
            c.shield.summary()
        );
    }
}
