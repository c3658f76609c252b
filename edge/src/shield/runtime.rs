//! The running shield: the policy engine, the userspace limiter and (with XDP) the pinned maps,
//! behind one lock. The SIP side feeds it ([`Shield::observe`], [`Shield::is_scanner`]), the
//! transport asks it before parsing ([`Shield::check_datagram`], [`Shield::check_accept`]) when
//! XDP is off, the daemon ticks it once a second ([`Shield::tick`]: expiries, XDP events), the
//! control socket lists/blocks/unblocks.
use std::net::IpAddr;
use std::sync::Mutex;

use serde_json::{Value, json};
use sipveil_abi::shield::{
    ALLOW_F_UNLIMITED, ALLOW_REASON_AUTHENTICATED, ALLOW_REASON_CONFIGURED, AllowData, AllowEntry,
    BlockEntry, MAX_PORTS, SHIELD_F_ENABLED, SHIELD_F_NEW_SOURCE, ShieldClass, ShieldConfig,
    ShieldEvent,
};

use super::limiter::{Peer, UserShield, Verdict};
use super::policy::{
    BlockReason, Event, Observation, Policy, PolicyError, ScannerPatterns, Source,
};
use crate::config::ShieldSettings;
use crate::dataplane::ShieldMaps;

/// Sources the userspace limiter tracks at most.
const USER_CAPACITY: usize = 65_536;
/// XDP events read per tick at most.
const EVENTS_PER_TICK: usize = 4096;

/// SIP ports the XDP shield covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShieldPorts {
    pub udp: Vec<u16>,
    pub tcp: Vec<u16>,
}

struct Inner {
    settings: ShieldSettings,
    policy: Policy,
    scanner: ScannerPatterns,
    user: UserShield,
    maps: Option<ShieldMaps>,
    ports: ShieldPorts,
    events: Vec<ShieldEvent>,
    map_errors: u64,
}

/// See the module docs.
pub struct Shield {
    inner: Mutex<Inner>,
    /// XDP enforces (the userspace checks pass everything but count nothing).
    xdp: bool,
}

/// The XDP settings of `s` (zeroed flags when disabled).
pub fn xdp_config(s: &ShieldSettings, ports: &ShieldPorts, cpus: u32) -> ShieldConfig {
    let mut c = ShieldConfig::default();
    if s.limits.enabled {
        c.flags = SHIELD_F_ENABLED;
    }
    if let Some(n) = s.limits.new_source_burst {
        c.flags |= SHIELD_F_NEW_SOURCE;
        c.new_source_burst = n;
    }
    c.event_interval_ms = s.event_interval_ms;
    for (slot, p) in c.udp_ports.iter_mut().zip(ports.udp.iter().take(MAX_PORTS)) {
        *slot = *p;
    }
    for (slot, p) in c.tcp_ports.iter_mut().zip(ports.tcp.iter().take(MAX_PORTS)) {
        *slot = *p;
    }
    c.limits = s.limits.per_class;
    let cpus = cpus.max(1);
    c.global_per_cpu = sipveil_abi::shield::RateLimit {
        rate: s.limits.global.rate.div_ceil(cpus),
        burst: s.limits.global.burst.div_ceil(cpus),
    };
    for (slot, l) in c
        .class_global_per_cpu
        .iter_mut()
        .zip(s.limits.class_global.iter())
    {
        *slot = sipveil_abi::shield::RateLimit {
            rate: l.rate.div_ceil(cpus),
            burst: l.burst.div_ceil(cpus),
        };
    }
    c.allow_multiplier = s.limits.allow_multiplier;
    c
}

fn source_ip(s: Source) -> String {
    s.to_string()
}

fn allow_data(s: Source) -> (AllowData, u32) {
    match s {
        Source::V4(o) => (AllowData::v4(o), 32),
        Source::V6(p) => {
            let mut o = [0u8; 16];
            o[..8].copy_from_slice(&p);
            (AllowData::v6(o), 64)
        }
    }
}

fn peer_data(p: &Peer) -> (AllowData, u32) {
    match p.addr {
        IpAddr::V4(a) => (AllowData::v4(a.octets()), u32::from(p.prefix_len.min(32))),
        IpAddr::V6(a) => (AllowData::v6(a.octets()), u32::from(p.prefix_len.min(128))),
    }
}

impl Inner {
    fn map_result(&mut self, what: &str, r: Result<(), crate::dataplane::DataplaneError>) {
        if let Err(e) = r {
            self.map_errors += 1;
            tracing::warn!("shield: {what}: {e}");
        }
    }

    /// Applies one policy event to the limiter and the maps, and logs it.
    fn apply(&mut self, ev: Event) {
        match ev {
            Event::Blocked { source, block } => {
                tracing::warn!("{ev}");
                self.user.block(source, block.until_ns, block.reason);
                if let Some(m) = self.maps.as_mut() {
                    let r = m.set_block(
                        source.key(),
                        BlockEntry {
                            expires_ns: block.until_ns,
                            reason: block.reason.code(),
                            _pad: 0,
                        },
                    );
                    self.map_result("writing SV_BLOCK", r);
                }
            }
            Event::Released { source, .. } => {
                tracing::warn!("{ev}");
                self.user.unblock(source);
                if let Some(m) = self.maps.as_mut() {
                    let r = m.remove_block(&source.key());
                    self.map_result("deleting from SV_BLOCK", r);
                }
            }
            Event::Allowed { source, allow } => {
                tracing::debug!("{ev}");
                self.user.allow(source, allow.until_ns, allow.multiplier);
                if let Some(m) = self.maps.as_mut() {
                    let (data, bits) = allow_data(source);
                    let r = m.set_allow(
                        data,
                        bits,
                        AllowEntry {
                            expires_ns: allow.until_ns,
                            multiplier: allow.multiplier,
                            flags: 0,
                            reason: ALLOW_REASON_AUTHENTICATED,
                        },
                    );
                    self.map_result("writing SV_ALLOW", r);
                }
            }
            Event::AllowExpired { source } => {
                tracing::debug!("{ev}");
                self.user.disallow(source);
                if let Some(m) = self.maps.as_mut() {
                    let (data, bits) = allow_data(source);
                    let r = m.remove_allow(data, bits);
                    self.map_result("deleting from SV_ALLOW", r);
                }
            }
        }
    }

    /// Writes the XDP settings and the configured peers.
    fn write_maps(&mut self, old_peers: &[Peer]) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let cfg = xdp_config(&self.settings, &self.ports, cpus);
        let peers = self.settings.peers.clone();
        let Some(m) = self.maps.as_mut() else { return };
        let mut results = vec![("writing SV_SHIELD_CFG", m.write_config(&cfg))];
        for p in old_peers {
            let (data, bits) = peer_data(p);
            results.push(("deleting a peer from SV_ALLOW", m.remove_allow(data, bits)));
        }
        for p in &peers {
            let (data, bits) = peer_data(p);
            let entry = AllowEntry {
                expires_ns: 0,
                multiplier: p.multiplier,
                flags: if p.unlimited { ALLOW_F_UNLIMITED } else { 0 },
                reason: ALLOW_REASON_CONFIGURED,
            };
            results.push(("writing a peer to SV_ALLOW", m.set_allow(data, bits, entry)));
        }
        for (what, r) in results {
            self.map_result(what, r);
        }
    }
}

impl Shield {
    /// Starts the shield; with `maps` (XDP on) writes the settings and the configured peers.
    pub fn new(settings: &ShieldSettings, ports: ShieldPorts, maps: Option<ShieldMaps>) -> Shield {
        let xdp = maps.is_some();
        let mut inner = Inner {
            policy: Policy::new(settings.policy.clone()),
            scanner: ScannerPatterns::new(&settings.scanner_patterns),
            user: UserShield::new(settings.limits, settings.peers.clone(), USER_CAPACITY),
            settings: settings.clone(),
            maps,
            ports,
            events: Vec::with_capacity(EVENTS_PER_TICK),
            map_errors: 0,
        };
        inner.write_maps(&[]);
        // Blocks of an earlier daemon (adopted pins): listed, released and logged from now on.
        let now = crate::sys::monotonic_ns();
        let found = inner.maps.as_ref().map(|m| m.blocks()).unwrap_or_default();
        for (key, entry) in found {
            let reason = BlockReason::from_code(entry.reason).unwrap_or(BlockReason::Manual);
            if let Some(source) = Source::from_key(&key) {
                if entry.expires_ns == 0 || entry.expires_ns > now {
                    // A never-expiring entry (not written by this daemon) gets the longest block.
                    let until = if entry.expires_ns == 0 {
                        now.saturating_add(settings.policy.block_max_ns)
                    } else {
                        entry.expires_ns
                    };
                    inner.policy.restore(source, reason, until, now);
                } else {
                    let r = inner.maps.as_mut().map_or(Ok(()), |m| m.remove_block(&key));
                    inner.map_result("deleting an expired SV_BLOCK entry", r);
                }
            }
        }
        tracing::info!(
            enabled = settings.limits.enabled,
            enforcement = if xdp { "xdp" } else { "userspace" },
            "shield started"
        );
        Shield {
            inner: Mutex::new(inner),
            xdp,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough state (counters and maps);
        // keep serving rather than failing every packet.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New settings (reload): limits, peers, thresholds, patterns; blocks and allowlist
    /// entries in force stay.
    pub fn reload(&self, settings: &ShieldSettings) {
        let mut g = self.lock();
        let old_peers = g.settings.peers.clone();
        g.settings = settings.clone();
        g.policy.set_config(settings.policy.clone());
        g.scanner = ScannerPatterns::new(&settings.scanner_patterns);
        g.user.set_limits(settings.limits, settings.peers.clone());
        g.write_maps(&old_peers);
    }

    /// An observation from the SIP side (or the event ring).
    pub fn observe(&self, ip: IpAddr, obs: Observation) {
        let now = crate::sys::monotonic_ns();
        let mut g = self.lock();
        if let Some(ev) = g.policy.observe(Source::of(ip), obs, now) {
            g.apply(ev);
        }
    }

    /// True when a User-Agent or From value matches a scanner pattern.
    pub fn is_scanner(&self, values: &[&[u8]]) -> bool {
        self.lock().scanner.matches(values)
    }

    /// The userspace verdict on a UDP datagram (XDP off): true = process it.
    pub fn check_datagram(&self, ip: IpAddr, payload: &[u8]) -> bool {
        if self.xdp {
            return true;
        }
        let now = crate::sys::monotonic_ns();
        let v = self.lock().user.check_datagram(ip, payload, now);
        self.after(ip, v)
    }

    /// The userspace verdict on an accepted TCP/TLS connection (XDP off): true = keep it.
    pub fn check_accept(&self, ip: IpAddr) -> bool {
        if self.xdp {
            return true;
        }
        let now = crate::sys::monotonic_ns();
        let v = self.lock().user.check(ip, ShieldClass::Syn, now);
        self.after(ip, v)
    }

    fn after(&self, ip: IpAddr, v: Verdict) -> bool {
        match v {
            Verdict::Pass | Verdict::PassAllowlisted => true,
            Verdict::DropRate { event, .. } => {
                if event {
                    self.observe(ip, Observation::RateLimited);
                }
                false
            }
            Verdict::DropBlocked | Verdict::DropGlobal | Verdict::DropGlobalClass { .. } => false,
        }
    }

    /// Once a second: expiries (logged, maps cleaned) and the XDP events.
    pub fn tick(&self) {
        let now = crate::sys::monotonic_ns();
        let mut g = self.lock();
        for ev in g.policy.expire(now) {
            g.apply(ev);
        }
        g.user.expire(now);
        let mut events = std::mem::take(&mut g.events);
        events.clear();
        if let Some(m) = g.maps.as_mut() {
            m.drain_events(EVENTS_PER_TICK, &mut events);
        }
        for e in &events {
            let ip = if e.family == sipveil_abi::FAMILY_IPV4 {
                IpAddr::from(e.addr[0].to_ne_bytes())
            } else {
                let mut o = [0u8; 16];
                for (chunk, w) in o.chunks_exact_mut(4).zip(e.addr) {
                    chunk.copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::from(o)
            };
            if let Some(ev) = g
                .policy
                .observe(Source::of(ip), Observation::RateLimited, now)
            {
                g.apply(ev);
            }
        }
        g.events = events;
    }

    /// The operator blocks `ip` for `secs`.
    pub fn block(&self, ip: IpAddr, secs: u64) -> Result<Value, PolicyError> {
        let now = crate::sys::monotonic_ns();
        let mut g = self.lock();
        let ev = g
            .policy
            .block(Source::of(ip), secs.saturating_mul(1_000_000_000), now)?;
        g.apply(ev);
        Ok(json!({"ok": true, "source": source_ip(Source::of(ip)), "for_secs": secs}))
    }

    /// The operator lifts the block of `ip`.
    pub fn unblock(&self, ip: IpAddr) -> Result<Value, PolicyError> {
        let now = crate::sys::monotonic_ns();
        let mut g = self.lock();
        let ev = g.policy.unblock(Source::of(ip), now)?;
        g.apply(ev);
        Ok(json!({"ok": true, "source": source_ip(Source::of(ip))}))
    }

    /// Blocks and allowlist entries; times as seconds ago / from now.
    pub fn list(&self) -> Value {
        let now = crate::sys::monotonic_ns();
        let g = self.lock();
        let secs = |ns: u64| ns / 1_000_000_000;
        let blocked: Vec<Value> = g
            .policy
            .blocks()
            .into_iter()
            .filter(|(_, b)| now < b.until_ns)
            .map(|(s, b)| {
                json!({
                    "source": source_ip(s),
                    "reason": b.reason.name(),
                    "since_secs_ago": secs(now.saturating_sub(b.since_ns)),
                    "until_secs": secs(b.until_ns.saturating_sub(now)),
                    "strike": b.strike,
                })
            })
            .collect();
        let allowed: Vec<Value> = g
            .policy
            .allows()
            .into_iter()
            .filter(|(_, a)| now < a.until_ns)
            .map(|(s, a)| {
                json!({
                    "source": source_ip(s),
                    "since_secs_ago": secs(now.saturating_sub(a.since_ns)),
                    "until_secs": secs(a.until_ns.saturating_sub(now)),
                })
            })
            .collect();
        let peers: Vec<Value> = g
            .settings
            .peers
            .iter()
            .map(|p| json!({"prefix": format!("{}/{}", p.addr, p.prefix_len), "unlimited": p.unlimited, "multiplier": p.multiplier}))
            .collect();
        json!({"ok": true, "enabled": g.settings.limits.enabled, "blocked": blocked, "allowed": allowed, "peers": peers})
    }

    /// Sources blocked now.
    pub fn blocked_sources(&self) -> usize {
        let now = crate::sys::monotonic_ns();
        let g = self.lock();
        g.policy
            .blocks()
            .iter()
            .filter(|(_, b)| now < b.until_ns)
            .count()
    }

    /// Userspace drops by reason (`blocked`, `global`, `rate_register`, ...).
    pub fn user_drops(&self) -> Vec<(&'static str, u64)> {
        self.lock().user.drops().by_reason()
    }

    /// Appends `sipveil_shield_drops_total{reason,path}` (path `xdp` from the XDP counters
    /// `shield_drop_*`, `userspace` from the limiter) and `sipveil_shield_blocked_sources` as
    /// OpenMetrics text.
    pub fn render_metrics(&self, out: &mut String, xdp: Option<Vec<(&'static str, u64)>>) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE sipveil_shield_drops counter");
        let _ = writeln!(
            out,
            "# HELP sipveil_shield_drops Packets (or TCP connections) the flood shield dropped, by reason and by where (xdp, userspace)."
        );
        for (name, v) in xdp.unwrap_or_default() {
            if let Some(reason) = name.strip_prefix("shield_drop_") {
                let _ = writeln!(
                    out,
                    "sipveil_shield_drops_total{{reason=\"{reason}\",path=\"xdp\"}} {v}"
                );
            }
        }
        for (reason, v) in self.user_drops() {
            let _ = writeln!(
                out,
                "sipveil_shield_drops_total{{reason=\"{reason}\",path=\"userspace\"}} {v}"
            );
        }
        let _ = writeln!(out, "# TYPE sipveil_shield_blocked_sources gauge");
        let _ = writeln!(
            out,
            "# HELP sipveil_shield_blocked_sources Sources (IPv4 /32, IPv6 /64) blocked now."
        );
        let _ = writeln!(
            out,
            "sipveil_shield_blocked_sources {}",
            self.blocked_sources()
        );
    }

    /// `enforcement`, userspace drops and map write errors.
    pub fn stats(&self) -> Value {
        let g = self.lock();
        let drops: serde_json::Map<String, Value> = g
            .user
            .drops()
            .by_reason()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        json!({
            "enabled": g.settings.limits.enabled,
            "enforcement": if self.xdp { "xdp" } else { "userspace" },
            "userspace_drops": drops,
            "map_errors": g.map_errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipveil_abi::shield::RateLimit;

    #[test]
    fn xdp_config_divides_the_global_ceiling_and_fills_ports() {
        let mut s = ShieldSettings::default();
        s.limits.enabled = true;
        s.limits.global = RateLimit {
            rate: 1001,
            burst: 10,
        };
        let ports = ShieldPorts {
            udp: vec![5060, 5062, 1, 2, 3],
            tcp: vec![5061],
        };
        let c = xdp_config(&s, &ports, 2);
        assert_eq!(c.flags, SHIELD_F_ENABLED);
        assert_eq!(c.udp_ports, [5060, 5062, 1, 2]);
        assert_eq!(c.tcp_ports, [5061, 0, 0, 0]);
        assert_eq!(
            c.global_per_cpu,
            RateLimit {
                rate: 501,
                burst: 5
            }
        );
        let reg = ShieldClass::Register as usize;
        assert_eq!(c.class_global_per_cpu[reg], RateLimit::default());
        s.limits.class_global[reg] = RateLimit { rate: 7, burst: 3 };
        assert_eq!(
            xdp_config(&s, &ports, 2).class_global_per_cpu[reg],
            RateLimit { rate: 4, burst: 2 }
        );
        s.limits.enabled = false;
        assert_eq!(xdp_config(&s, &ports, 2).flags, 0);
    }

    #[test]
    fn xdp_config_carries_the_new_source_burst() {
        let mut s = ShieldSettings::default();
        s.limits.enabled = true;
        let c = xdp_config(&s, &ShieldPorts::default(), 1);
        assert_eq!(
            c.flags, SHIELD_F_ENABLED,
            "no new-source burst: fresh buckets full"
        );
        assert_eq!(c.new_source_burst, [0; 8]);
        let mut n = [0u16; 8];
        n[ShieldClass::Register as usize] = 3;
        n[ShieldClass::NotSip as usize] = 1;
        s.limits.new_source_burst = Some(n);
        let c = xdp_config(&s, &ShieldPorts::default(), 1);
        assert_eq!(c.flags, SHIELD_F_ENABLED | SHIELD_F_NEW_SOURCE);
        assert_eq!(c.new_source_burst, n);
    }

    #[test]
    fn userspace_block_and_unblock_through_the_runtime() {
        let mut s = ShieldSettings::default();
        s.limits.enabled = true;
        let shield = Shield::new(&s, ShieldPorts::default(), None);
        let ip: IpAddr = "198.18.0.7".parse().expect("addr");
        assert!(shield.check_datagram(ip, b"OPTIONS sip:x SIP/2.0"));
        shield.block(ip, 60).expect("block");
        assert!(!shield.check_datagram(ip, b"OPTIONS sip:x SIP/2.0"));
        assert_eq!(shield.blocked_sources(), 1);
        assert_eq!(shield.list()["blocked"][0]["reason"], "manual");
        shield.unblock(ip).expect("unblock");
        assert!(shield.check_datagram(ip, b"OPTIONS sip:x SIP/2.0"));
        assert!(shield.unblock(ip).is_err());
    }
}
