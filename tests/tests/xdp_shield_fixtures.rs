//! BPF_PROG_TEST_RUN packet fixtures for the flood shield in `sipveil_entry` (house rule 7):
//! input frame, map setup (shield config, blocklist, allowlist, bucket entries), expected action,
//! frame left byte-identical, counter deltas, and the events in the ring buffer.
//!
//! Time: BPF_PROG_TEST_RUN runs on the real clock (`bpf_ktime_get_coarse_ns`). Refill is
//! simulated deterministically by moving a bucket's `last_refill_ns` back in the map; the rates
//! used are 1 packet/s or less wherever a test counts exact passes, so the wall time a test takes
//! (milliseconds) cannot add a token.
//!
//! The program keeps a per-CPU cache of the last source it dropped (see `limit` in
//! ebpf/src/shield.rs): a repeated drop of the same source and class may be decided there,
//! counted as `shield_cache_hits` besides its reason. Which CPU a run lands on is up to the
//! scheduler, so [`Fixture::expect`] ignores that counter unless a test lists it (those tests
//! pin their CPU), and per-source drop counts are read with [`Fixture::source_dropped`] (the
//! map's count plus the cache's pending hits).
//!
//! Needs root and BPF (fails loudly otherwise). Each test enters its own throwaway network
//! namespace and private bpffs; no lab is used.
//! Run: `cargo test -p sipveil-tests --test xdp_shield_fixtures -- --test-threads=1`

use sipveil_abi::{
    ABI_VERSION, Counter, FAMILY_IPV4, FAMILY_IPV6,
    shield::{
        ALLOW_F_UNLIMITED, ALLOW_REASON_CONFIGURED, AllowData, AllowEntry, BLOCK_REASON_MANUAL,
        BlockEntry, CLASSES, EVENT_RATE_LIMITED, RateLimit, SHIELD_F_ENABLED, SHIELD_F_NEW_SOURCE,
        ShieldClass, ShieldConfig, ShieldEvent, SourceKey, TOKEN, TokenBucket,
    },
};
use sipveil_tests::xdp::*;

const SIP: u16 = 5060;
const SIPS: u16 = 5061;
const SPORT: u16 = 5062;
/// Another host on A's side, not in any list.
const C: [u8; 4] = [198, 18, 1, 7];

const REGISTER: &[u8] = b"REGISTER sip:open.lab SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.1.2:5062;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nTo: <sip:alice@open.lab>\r\nFrom: <sip:alice@open.lab>;tag=1\r\nCall-ID: a1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@198.18.1.2:5062>\r\nContent-Length: 0\r\n\r\n";
const INVITE: &[u8] = b"INVITE sip:bob@open.lab SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n";
const OPTIONS: &[u8] = b"OPTIONS sip:open.lab SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n";
const BYE: &[u8] = b"BYE sip:bob@open.lab SIP/2.0\r\nCSeq: 2 BYE\r\n\r\n";
const RESPONSE: &[u8] = b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n";
const JUNK: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not SIP at all";

/// Per-source limits of the fixtures: bursts small enough to drain, rates slow enough (1/s)
/// that no token comes back while a test runs.
fn shield_config() -> ShieldConfig {
    let mut limits = [RateLimit::default(); CLASSES];
    for (class, rate, burst) in [
        (ShieldClass::Register, 1, 5),
        (ShieldClass::Invite, 1, 4),
        (ShieldClass::Options, 1, 3),
        (ShieldClass::Other, 1, 6),
        (ShieldClass::Response, 1, 7),
        (ShieldClass::NotSip, 1, 2),
        (ShieldClass::Syn, 1, 3),
    ] {
        limits[class as usize] = RateLimit { rate, burst };
    }
    ShieldConfig {
        flags: SHIELD_F_ENABLED,
        event_interval_ms: 1_000,
        udp_ports: [SIP, 0, 0, 0],
        tcp_ports: [SIP, SIPS, 0, 0],
        limits,
        allow_multiplier: 4,
        ..Default::default()
    }
}

struct Fixture {
    _ns: Netns,
    entry: Entry,
    ea0: u32,
}

impl Fixture {
    fn new() -> Fixture {
        let ns = Netns::two_arm();
        let mut entry = Entry::load();
        entry.set_config(relay_config());
        entry.set_shield_config(shield_config());
        let ea0 = ns.ifindex("ea0");
        Fixture {
            _ns: ns,
            entry,
            ea0,
        }
    }

    /// Runs `frame`, checks the action, that the frame is untouched, and the counter deltas
    /// (`Rx` is added here).
    fn expect(&self, frame: &[u8], action: u32, deltas: &[(Counter, u64)]) {
        let before = self.entry.counters();
        let r = self.entry.run(frame, self.ea0);
        assert_eq!(
            r.action, action,
            "action for a frame expected to count {deltas:?}"
        );
        assert_eq!(r.out, frame, "the shield never rewrites a frame");
        let after = self.entry.counters();
        let mut all = vec![(Counter::Rx, 1)];
        all.extend_from_slice(deltas);
        if !deltas.iter().any(|(c, _)| *c == Counter::ShieldCacheHits) {
            let hits = Counter::ShieldCacheHits as usize;
            all.push((Counter::ShieldCacheHits, after[hits] - before[hits]));
        }
        assert_deltas(&before, &after, &all);
    }

    /// A source's rate drops: its buckets' count plus what the per-CPU cache decided for it and
    /// has not yet added there.
    fn source_dropped(&self, key: SourceKey) -> Option<u64> {
        let b = self.entry.buckets(key)?;
        Some(b.dropped + self.entry.last_drop_hits(key))
    }

    fn pass(&self, frame: &[u8]) {
        self.expect(frame, XDP_PASS, &[(Counter::ShieldPass, 1)]);
    }

    fn pass_as(&self, frame: &[u8], reason: Counter) {
        self.expect(frame, XDP_PASS, &[(reason, 1)]);
    }

    fn drop_as(&self, frame: &[u8], reason: Counter) {
        self.expect(frame, XDP_DROP, &[(reason, 1)]);
    }

    /// A rate-limit drop that writes the source's event (the first in its interval).
    fn drop_with_event(&self, frame: &[u8], reason: Counter) {
        self.expect(frame, XDP_DROP, &[(reason, 1), (Counter::ShieldEvents, 1)]);
    }

    /// Moves a source's bucket of `class` back in time by `ns` (simulated elapsed time).
    fn age_bucket(&mut self, key: SourceKey, class: ShieldClass, ns: u64) {
        let mut b = self.entry.buckets(key).expect("the source has buckets");
        b.classes[class as usize].last_refill_ns -= ns;
        self.entry.put_buckets(key, b);
    }
}

fn sip4(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    UdpFrame::sip(src, SPORT, EA, SIP, payload).build()
}

const V6_EDGE: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Two hosts in 2001:db8:1:2::/64 and one in 2001:db8:1:3::/64.
const V6_H1: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x11,
];
const V6_H2: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0x22,
];
const V6_OTHER64: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0x11,
];

fn sip6(src: [u8; 16], payload: &[u8]) -> Vec<u8> {
    ipv6_frame(src, V6_EDGE, 17, &udp_bytes(SPORT, SIP, payload))
}

#[test]
fn register_burst_drains_then_refills_with_elapsed_time() {
    let mut fx = Fixture::new();
    let frame = sip4(A, REGISTER);
    for _ in 0..5 {
        fx.pass(&frame);
    }
    fx.drop_with_event(&frame, Counter::DropRateRegister);
    fx.drop_as(&frame, Counter::DropRateRegister);
    let key = SourceKey::v4(A);
    let b = fx.entry.buckets(key).expect("A has buckets");
    let reg = b.classes[ShieldClass::Register as usize];
    assert!(reg.tokens < TOKEN, "drained: {} nano-tokens", reg.tokens);
    assert_ne!(reg.last_refill_ns, 0);
    assert_eq!(fx.source_dropped(key), Some(2));

    // 3 s at 1/s: three more REGISTERs, then drops again.
    fx.age_bucket(key, ShieldClass::Register, 3_000_000_000);
    for _ in 0..3 {
        fx.pass(&frame);
    }
    fx.drop_as(&frame, Counter::DropRateRegister);

    // A long pause refills to the burst, not beyond.
    fx.age_bucket(key, ShieldClass::Register, 3_600_000_000_000);
    for _ in 0..5 {
        fx.pass(&frame);
    }
    fx.drop_as(&frame, Counter::DropRateRegister);

    // Half a token stays half a token: the refill is exact, not rounded per packet.
    fx.age_bucket(key, ShieldClass::Register, 500_000_000);
    fx.drop_as(&frame, Counter::DropRateRegister);
    fx.age_bucket(key, ShieldClass::Register, 500_000_000);
    fx.pass(&frame);
}

#[test]
fn each_method_class_has_its_own_bucket() {
    let fx = Fixture::new();
    // REGISTER drained: A's OPTIONS, INVITE, BYE and responses still pass.
    for _ in 0..5 {
        fx.pass(&sip4(A, REGISTER));
    }
    fx.drop_with_event(&sip4(A, REGISTER), Counter::DropRateRegister);
    for (payload, burst, reason) in [
        (OPTIONS, 3, Counter::DropRateOptions),
        (INVITE, 4, Counter::DropRateInvite),
        (BYE, 6, Counter::DropRateOther),
        (RESPONSE, 7, Counter::DropRateResponse),
        (JUNK, 2, Counter::DropNotSip),
    ] {
        for _ in 0..burst {
            fx.pass(&sip4(A, payload));
        }
        // One event per source per interval: already written for the REGISTER drop.
        fx.drop_as(&sip4(A, payload), reason);
    }
    // Another source is not affected by A's buckets.
    fx.pass(&sip4(C, REGISTER));
    fx.pass(&sip4(C, OPTIONS));
    // Other methods share the "other" class.
    for m in [
        &b"ACK sip:b@x SIP/2.0\r\n\r\n"[..],
        b"CANCEL sip:b@x SIP/2.0\r\n\r\n",
    ] {
        fx.drop_as(&sip4(A, m), Counter::DropRateOther);
    }
}

#[test]
fn a_class_with_rate_zero_is_not_limited() {
    let mut fx = Fixture::new();
    let mut cfg = shield_config();
    cfg.limits[ShieldClass::Options as usize] = RateLimit { rate: 0, burst: 0 };
    fx.entry.set_shield_config(cfg);
    for _ in 0..50 {
        fx.pass(&sip4(A, OPTIONS));
    }
    // Burst 0 with a rate: every packet of the class is dropped.
    cfg.limits[ShieldClass::NotSip as usize] = RateLimit { rate: 5, burst: 0 };
    fx.entry.set_shield_config(cfg);
    fx.drop_with_event(&sip4(A, JUNK), Counter::DropNotSip);
}

#[test]
fn non_sip_junk_and_short_payloads_are_not_sip() {
    let fx = Fixture::new();
    // Junk, an empty payload, CRLF keep-alives and 7 bytes: the "not SIP" class (burst 2) for
    // each source.
    for (src, payload) in [
        ([198, 18, 1, 20], JUNK),
        ([198, 18, 1, 21], &b""[..]),
        ([198, 18, 1, 22], b"\r\n\r\n"),
        ([198, 18, 1, 23], b"INVITE "),
        ([198, 18, 1, 24], b"register sip:x SIP/2.0"),
    ] {
        fx.pass(&sip4(src, payload));
        fx.pass(&sip4(src, payload));
        fx.drop_with_event(&sip4(src, payload), Counter::DropNotSip);
        // The source's REGISTER bucket is untouched.
        fx.pass(&sip4(src, REGISTER));
    }
    // UDP to a port that is not a SIP port is not the shield's business.
    let other_port = UdpFrame::sip(A, SPORT, EA, 5070, JUNK).build();
    for _ in 0..5 {
        fx.pass_as(&other_port, Counter::NotOursPass);
    }
}

#[test]
fn allowlisted_sources_get_higher_limits() {
    let mut fx = Fixture::new();
    let now = monotonic_coarse_ns();
    // A: /32, the config's multiplier (4): REGISTER burst 5 -> 20.
    fx.entry.allow(
        AllowData::v4(A),
        32,
        AllowEntry {
            expires_ns: now + 60_000_000_000,
            multiplier: 0,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    for _ in 0..20 {
        fx.pass_as(&sip4(A, REGISTER), Counter::ShieldAllowPass);
    }
    fx.expect(
        &sip4(A, REGISTER),
        XDP_DROP,
        &[(Counter::DropRateRegister, 1), (Counter::ShieldEvents, 1)],
    );
    // A carrier's /24 with its own multiplier (2): OPTIONS burst 3 -> 6 for every host in it.
    let carrier = [198, 18, 2, 0];
    fx.entry.allow(
        AllowData::v4(carrier),
        24,
        AllowEntry {
            expires_ns: 0,
            multiplier: 2,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    for host in [B, B2] {
        for _ in 0..6 {
            fx.pass_as(&sip4(host, OPTIONS), Counter::ShieldAllowPass);
        }
        fx.drop_with_event(&sip4(host, OPTIONS), Counter::DropRateOptions);
    }
    // Unlimited: no bucket at all.
    let trunk = [198, 18, 1, 30];
    fx.entry.allow(
        AllowData::v4(trunk),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: ALLOW_F_UNLIMITED,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    for _ in 0..100 {
        fx.pass_as(&sip4(trunk, INVITE), Counter::ShieldAllowPass);
    }
    assert!(fx.entry.buckets(SourceKey::v4(trunk)).is_none());
    // An expired allow entry counts for nothing: the normal burst (5).
    let late = [198, 18, 1, 31];
    fx.entry.allow(
        AllowData::v4(late),
        32,
        AllowEntry {
            expires_ns: now - 1_000_000_000,
            multiplier: 100,
            flags: ALLOW_F_UNLIMITED,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    for _ in 0..5 {
        fx.pass(&sip4(late, REGISTER));
    }
    fx.drop_with_event(&sip4(late, REGISTER), Counter::DropRateRegister);
}

#[test]
fn blocklist_drops_until_expiry() {
    let mut fx = Fixture::new();
    let now = monotonic_coarse_ns();
    fx.entry.block(
        SourceKey::v4(A),
        BlockEntry {
            expires_ns: now + 60_000_000_000,
            reason: BLOCK_REASON_MANUAL,
            _pad: 0,
        },
    );
    for payload in [REGISTER, OPTIONS, JUNK] {
        fx.drop_as(&sip4(A, payload), Counter::DropBlocked);
    }
    let syn = ipv4_frame(A, EA, 6, &tcp_bytes(40_000, SIP, TCP_SYN));
    fx.drop_as(&syn, Counter::DropBlocked);
    assert!(
        fx.entry.buckets(SourceKey::v4(A)).is_none(),
        "a blocked source costs no bucket"
    );
    // Its neighbour is not blocked.
    fx.pass(&sip4(A2, REGISTER));
    // Expired: passes and is limited as usual.
    fx.entry.block(
        SourceKey::v4(A),
        BlockEntry {
            expires_ns: now - 1,
            reason: BLOCK_REASON_MANUAL,
            _pad: 0,
        },
    );
    fx.pass(&sip4(A, REGISTER));
    // expires_ns 0: blocked with no end.
    fx.entry.block(
        SourceKey::v4(C),
        BlockEntry {
            expires_ns: 0,
            reason: BLOCK_REASON_MANUAL,
            _pad: 0,
        },
    );
    fx.drop_as(&sip4(C, REGISTER), Counter::DropBlocked);
    // The blocklist wins over the allowlist (the daemon does not block what it allows).
    fx.entry.allow(
        AllowData::v4(C),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: ALLOW_F_UNLIMITED,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    fx.drop_as(&sip4(C, REGISTER), Counter::DropBlocked);
}

#[test]
fn ipv6_sources_are_grouped_by_64() {
    let mut fx = Fixture::new();
    // H1 and H2 share 2001:db8:1:2::/64: five REGISTERs between them drain the bucket.
    for i in 0..5 {
        fx.pass(&sip6(if i % 2 == 0 { V6_H1 } else { V6_H2 }, REGISTER));
    }
    fx.drop_with_event(&sip6(V6_H2, REGISTER), Counter::DropRateRegister);
    fx.drop_as(&sip6(V6_H1, REGISTER), Counter::DropRateRegister);
    // Another /64 has its own bucket.
    fx.pass(&sip6(V6_OTHER64, REGISTER));
    let shared = fx
        .entry
        .buckets(SourceKey::v6(V6_H1))
        .expect("the /64's buckets");
    assert_eq!(fx.source_dropped(SourceKey::v6(V6_H1)), Some(2));
    assert_eq!(fx.entry.buckets(SourceKey::v6(V6_H2)), Some(shared));
    assert!(fx.entry.buckets(SourceKey::v6(V6_OTHER64)).is_some());
    let key = SourceKey::v6(V6_H2);
    assert_eq!(key.family, FAMILY_IPV6);
    assert_eq!(&key.prefix[0].to_ne_bytes(), &V6_H1[0..4]);
    assert_eq!(&key.prefix[1].to_ne_bytes(), &V6_H1[4..8]);
    // A block of the /64 blocks both hosts.
    fx.entry.block(
        key,
        BlockEntry {
            expires_ns: 0,
            reason: BLOCK_REASON_MANUAL,
            _pad: 0,
        },
    );
    fx.drop_as(&sip6(V6_H1, OPTIONS), Counter::DropBlocked);
    fx.drop_as(&sip6(V6_H2, OPTIONS), Counter::DropBlocked);
    // The allowlist matches IPv6 prefixes (here the other /64's /48).
    let mut v6_48 = V6_OTHER64;
    v6_48[6..].fill(0);
    fx.entry.allow(
        AllowData::v6(v6_48),
        48,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    fx.pass_as(&sip6(V6_OTHER64, REGISTER), Counter::ShieldAllowPass);
}

#[test]
fn ipv6_extension_headers_do_not_get_around_the_shield() {
    let fx = Fixture::new();
    // Hop-by-hop (8 bytes of PadN) then destination options, then UDP.
    let udp = udp_bytes(SPORT, SIP, REGISTER);
    let mut chain = vec![60, 0, 1, 4, 0, 0, 0, 0]; // HBH -> dstopts, PadN 4
    chain.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // dstopts -> UDP
    chain.extend_from_slice(&udp);
    let frame = ipv6_frame(V6_H1, V6_EDGE, 0, &chain);
    for _ in 0..5 {
        fx.pass(&frame);
    }
    fx.drop_with_event(&frame, Counter::DropRateRegister);
    // An atomic fragment header (offset 0): still classified.
    let mut frag = vec![17, 0, 0, 0, 0, 0, 0, 1];
    frag.extend_from_slice(&udp);
    fx.drop_as(
        &ipv6_frame(V6_H1, V6_EDGE, 44, &frag),
        Counter::DropRateRegister,
    );
    // A later fragment has no UDP header: passed.
    let mut later = vec![17, 0, 0x05, 0xa8, 0, 0, 0, 1];
    later.extend_from_slice(b"rest of a large INVITE");
    fx.pass_as(
        &ipv6_frame(V6_H1, V6_EDGE, 44, &later),
        Counter::FragmentPass,
    );
    // Five extension headers: more than the shield walks, passed as malformed.
    let mut long = Vec::new();
    for _ in 0..4 {
        long.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    long.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    long.extend_from_slice(&udp);
    fx.pass_as(
        &ipv6_frame(V6_H1, V6_EDGE, 60, &long),
        Counter::MalformedPass,
    );
    // An unknown next header (ICMPv6) is not ours.
    fx.pass_as(
        &ipv6_frame(V6_H1, V6_EDGE, 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
        Counter::NotOursPass,
    );
}

#[test]
fn ipv4_options_and_first_fragments_are_shielded() {
    let fx = Fixture::new();
    let mut f = UdpFrame::sip(A, SPORT, EA, SIP, REGISTER);
    f.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let with_options = f.build();
    for _ in 0..5 {
        fx.pass(&with_options);
    }
    fx.drop_with_event(&with_options, Counter::DropRateRegister);
    // A first fragment (MF, offset 0) carries the UDP header and the method.
    let mut f = UdpFrame::sip(A, SPORT, EA, SIP, INVITE);
    f.frag_off = 0x2000;
    let mut first = f.build();
    // Its UDP length covers the whole datagram, longer than this fragment.
    first[38..40].copy_from_slice(&3000u16.to_be_bytes());
    for _ in 0..4 {
        fx.pass(&first);
    }
    fx.drop_as(&first, Counter::DropRateInvite);
    // Later fragments cannot be attributed to a port: passed.
    f.frag_off = 0x00b9;
    fx.pass_as(&f.build(), Counter::FragmentPass);
}

#[test]
fn truncated_and_inconsistent_frames_pass_as_malformed() {
    let fx = Fixture::new();
    let full = sip4(A, REGISTER);
    // IPv4 header cut, UDP header cut.
    for cut in [14 + 10, 14 + 19, 14 + 20, 14 + 20 + 4, 14 + 20 + 7] {
        fx.pass_as(&full[..cut], Counter::MalformedPass);
    }
    // Payload cut: the IPv4 total length is longer than the frame.
    for cut in [14 + 28, 14 + 28 + 5, full.len() - 1] {
        fx.pass_as(&full[..cut], Counter::MalformedPass);
    }
    // UDP length below 8, or beyond the IP payload.
    let mut f = full.clone();
    f[38..40].copy_from_slice(&7u16.to_be_bytes());
    fx.pass_as(&f, Counter::MalformedPass);
    let mut f = full.clone();
    f[38..40].copy_from_slice(&4000u16.to_be_bytes());
    fx.pass_as(&f, Counter::MalformedPass);
    // A UDP length that stops inside the first 8 payload bytes: classified as not SIP.
    let mut f = full.clone();
    f[38..40].copy_from_slice(&(8u16 + 7).to_be_bytes());
    fx.pass(&f);
    // IPv6: fixed header cut, payload length beyond the frame, UDP header cut, extension cut.
    let v6 = sip6(V6_H1, REGISTER);
    for cut in [14 + 20, 14 + 39, 14 + 40 + 4, v6.len() - 1] {
        fx.pass_as(&v6[..cut], Counter::MalformedPass);
    }
    let mut hbh_cut = ipv6_frame(V6_H1, V6_EDGE, 0, &[17]);
    fx.pass_as(&hbh_cut, Counter::MalformedPass);
    // Version 4 in an IPv6 frame.
    hbh_cut = v6.clone();
    hbh_cut[14] = 0x40;
    fx.pass_as(&hbh_cut, Counter::MalformedPass);
    // TCP header cut before the flags.
    let syn = ipv4_frame(A, EA, 6, &tcp_bytes(40_000, SIP, TCP_SYN)[..13]);
    fx.pass_as(&syn, Counter::MalformedPass);
    // None of these created a bucket except the one classified frame.
    assert_eq!(fx.entry.bucket_count(), 1);
}

#[test]
fn tcp_syns_to_sip_ports_are_limited_per_source() {
    let fx = Fixture::new();
    let syn = |src: [u8; 4], port: u16| ipv4_frame(src, EA, 6, &tcp_bytes(40_000, port, TCP_SYN));
    // Burst 3 across both SIP TCP ports.
    fx.pass(&syn(A, SIP));
    fx.pass(&syn(A, SIPS));
    fx.pass(&syn(A, SIP));
    fx.drop_with_event(&syn(A, SIPS), Counter::DropSynRate);
    // Established segments, SYN-ACKs, RSTs and other ports are not the shield's.
    for flags in [TCP_ACK, TCP_SYN | TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK] {
        fx.pass_as(
            &ipv4_frame(A, EA, 6, &tcp_bytes(40_000, SIP, flags)),
            Counter::NotOursPass,
        );
    }
    fx.pass_as(&syn(A, 443), Counter::NotOursPass);
    // The SYN bucket is not the UDP REGISTER bucket, and C has its own.
    fx.pass(&sip4(A, REGISTER));
    fx.pass(&syn(C, SIP));
    // IPv6 SYNs too, per /64.
    let syn6 = |src| ipv6_frame(src, V6_EDGE, 6, &tcp_bytes(40_000, SIPS, TCP_SYN));
    fx.pass(&syn6(V6_H1));
    fx.pass(&syn6(V6_H2));
    fx.pass(&syn6(V6_H1));
    fx.drop_with_event(&syn6(V6_H2), Counter::DropSynRate);
    // UDP to the TLS port is not a SIP UDP port here.
    fx.pass_as(
        &UdpFrame::sip(A, SPORT, EA, SIPS, REGISTER).build(),
        Counter::NotOursPass,
    );
}

#[test]
fn shield_off_passes_and_config_reloads_without_reattaching() {
    let ns = Netns::two_arm();
    let mut entry = Entry::load();
    entry.set_config(relay_config());
    let ea0 = ns.ifindex("ea0");
    let frame = sip4(A, REGISTER);
    let run = |entry: &Entry, action: u32, reason: Counter| {
        let before = entry.counters();
        let r = entry.run(&frame, ea0);
        assert_eq!(r.action, action, "expected {}", reason.name());
        assert_eq!(r.out, frame);
        assert_deltas(&before, &entry.counters(), &[(Counter::Rx, 1), (reason, 1)]);
    };
    // Never written: zeroed, off.
    for _ in 0..10 {
        run(&entry, XDP_PASS, Counter::NotOursPass);
    }
    // Written but without the enable flag.
    entry.set_shield_config(ShieldConfig {
        flags: 0,
        ..shield_config()
    });
    for _ in 0..10 {
        run(&entry, XDP_PASS, Counter::NotOursPass);
    }
    // Switched on in place: limits apply from the next packet.
    entry.set_shield_config(shield_config());
    for _ in 0..5 {
        run(&entry, XDP_PASS, Counter::ShieldPass);
    }
    let before = entry.counters();
    assert_eq!(entry.run(&frame, ea0).action, XDP_DROP);
    assert_deltas(
        &before,
        &entry.counters(),
        &[
            (Counter::Rx, 1),
            (Counter::DropRateRegister, 1),
            (Counter::ShieldEvents, 1),
        ],
    );
    // A rate of 0 written while running lifts the class's limit at once.
    let mut cfg = shield_config();
    cfg.limits[ShieldClass::Register as usize] = RateLimit { rate: 0, burst: 0 };
    entry.set_shield_config(cfg);
    run(&entry, XDP_PASS, Counter::ShieldPass);
    // SV_CONFIG of another ABI version: everything passes, the shield too (fail-open).
    entry.set_config(sipveil_abi::Config {
        abi_version: ABI_VERSION + 1,
        ..relay_config()
    });
    entry.set_shield_config(shield_config());
    for _ in 0..3 {
        run(&entry, XDP_PASS, Counter::ConfigPass);
    }
    // The relay off does not switch the shield off.
    entry.set_config(sipveil_abi::Config {
        flags: 0,
        ..relay_config()
    });
    run(&entry, XDP_DROP, Counter::DropRateRegister);
}

#[test]
fn relay_ports_never_reach_the_shield() {
    let fx = Fixture::new();
    // The SIP port list names a relay port (a misconfiguration): the relay range wins, and an
    // RTP packet there costs the relay path only (no flow: NoFlowPass), however many arrive.
    let mut cfg = shield_config();
    cfg.udp_ports = [SIP, PORT_MIN, 0, 0];
    let mut entry = fx.entry;
    entry.set_shield_config(cfg);
    let rtp = UdpFrame::rtp(A, 4000, EA, PORT_MIN).build();
    for _ in 0..20 {
        let before = entry.counters();
        assert_eq!(entry.run(&rtp, fx.ea0).action, XDP_PASS);
        assert_deltas(
            &before,
            &entry.counters(),
            &[(Counter::Rx, 1), (Counter::NoFlowPass, 1)],
        );
    }
    assert_eq!(entry.bucket_count(), 0);
}

#[test]
fn global_ceiling_applies_to_everyone_but_allowlisted_sources() {
    // The ceiling is per CPU: run every packet on CPU 0.
    let _pin = pin_to_cpu(0);
    let mut fx = Fixture::new();
    let mut cfg = shield_config();
    cfg.global_per_cpu = RateLimit { rate: 1, burst: 4 };
    fx.entry.set_shield_config(cfg);
    fx.entry.set_global_buckets(TokenBucket::default());
    // Four sources, one REGISTER each: within their own buckets, the fifth is over the ceiling.
    for host in 40..44u8 {
        fx.pass(&sip4([198, 18, 1, host], REGISTER));
    }
    fx.drop_as(&sip4([198, 18, 1, 44], REGISTER), Counter::DropGlobal);
    fx.drop_as(&sip4([198, 18, 1, 40], OPTIONS), Counter::DropGlobal);
    let g = fx.entry.global_buckets()[0];
    assert!(g.tokens < TOKEN);
    assert_ne!(g.last_refill_ns, 0);
    // An allowlisted source is not held back by it.
    fx.entry.allow(
        AllowData::v4(A),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 1,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    fx.pass_as(&sip4(A, REGISTER), Counter::ShieldAllowPass);
    // Two seconds later (simulated): two more.
    let mut g = fx.entry.global_buckets()[0];
    g.last_refill_ns -= 2_000_000_000;
    fx.entry.set_global_buckets(g);
    fx.pass(&sip4([198, 18, 1, 45], REGISTER));
    fx.pass(&sip4([198, 18, 1, 46], REGISTER));
    fx.drop_as(&sip4([198, 18, 1, 47], REGISTER), Counter::DropGlobal);
}

/// The ceiling of the fixtures below: 1/s with a burst of 2, on CPU 0 (it is per CPU).
fn exhaust_ceiling(fx: &mut Fixture) {
    let mut cfg = new_source_config();
    cfg.global_per_cpu = RateLimit { rate: 1, burst: 2 };
    fx.entry.set_shield_config(cfg);
    fx.entry.set_global_buckets(TokenBucket::default());
    fx.pass(&sip4([198, 18, 1, 40], REGISTER));
    fx.pass(&sip4([198, 18, 1, 41], REGISTER));
    let g = fx.entry.global_buckets()[0];
    assert!(
        g.tokens < TOKEN,
        "the ceiling is exhausted: {} nano-tokens",
        g.tokens
    );
}

#[test]
fn an_exhausted_ceiling_drops_a_new_source_without_creating_its_buckets() {
    let _pin = pin_to_cpu(0);
    let mut fx = Fixture::new();
    exhaust_ceiling(&mut fx);
    let buckets = fx.entry.bucket_count();
    for host in 50..60u8 {
        fx.drop_as(&sip4([198, 18, 1, host], REGISTER), Counter::DropGlobal);
        assert!(
            fx.entry
                .buckets(SourceKey::v4([198, 18, 1, host]))
                .is_none(),
            "a source only the ceiling dropped has no per-source state"
        );
    }
    assert_eq!(fx.entry.bucket_count(), buckets);
    assert!(fx.entry.drain_events().is_empty(), "no per-source event");
    // A known source's buckets are not touched either: its REGISTER token stays.
    let key = SourceKey::v4([198, 18, 1, 40]);
    let before = fx.entry.buckets(key).expect("40 has buckets");
    fx.drop_as(&sip4([198, 18, 1, 40], REGISTER), Counter::DropGlobal);
    assert_eq!(fx.entry.buckets(key), Some(before));
    // The ceiling refills (two seconds, simulated): the next new source gets its buckets again.
    let mut g = fx.entry.global_buckets()[0];
    g.last_refill_ns -= 2_000_000_000;
    fx.entry.set_global_buckets(g);
    fx.pass(&sip4([198, 18, 1, 50], REGISTER));
    let b = fx
        .entry
        .buckets(SourceKey::v4([198, 18, 1, 50]))
        .expect("created once the ceiling let it through");
    // Its new-source REGISTER burst (2) less this packet.
    assert_eq!(b.classes[ShieldClass::Register as usize].tokens, TOKEN);
}

#[test]
fn an_allowlisted_source_passes_with_the_ceiling_exhausted() {
    let _pin = pin_to_cpu(0);
    let mut fx = Fixture::new();
    exhaust_ceiling(&mut fx);
    fx.entry.allow(
        AllowData::v4(A),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 1,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    // A new allowlisted source: full buckets (5), its own limit still applies.
    for _ in 0..5 {
        fx.pass_as(&sip4(A, REGISTER), Counter::ShieldAllowPass);
    }
    fx.drop_with_event(&sip4(A, REGISTER), Counter::DropRateRegister);
    assert_eq!(fx.source_dropped(SourceKey::v4(A)), Some(1));
    // Everyone else is still held back by the ceiling.
    fx.drop_as(&sip4(C, REGISTER), Counter::DropGlobal);
}

#[test]
fn a_blocked_source_is_dropped_whatever_the_ceiling_says() {
    let _pin = pin_to_cpu(0);
    let mut fx = Fixture::new();
    let blocked = BlockEntry {
        expires_ns: 0,
        reason: BLOCK_REASON_MANUAL,
        _pad: 0,
    };
    fx.entry.block(SourceKey::v4(C), blocked);
    fx.entry.block(SourceKey::v4(A), blocked);
    fx.entry.allow(
        AllowData::v4(A),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: ALLOW_F_UNLIMITED,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    // With tokens in the ceiling: the blocklist's drop (and the ceiling keeps its tokens).
    let mut cfg = new_source_config();
    cfg.global_per_cpu = RateLimit { rate: 1, burst: 2 };
    fx.entry.set_shield_config(cfg);
    fx.entry.set_global_buckets(TokenBucket::default());
    fx.drop_as(&sip4(C, REGISTER), Counter::DropBlocked);
    fx.drop_as(&sip4(A, REGISTER), Counter::DropBlocked);
    // Exhausted: still dropped, counted as the ceiling's (it is looked at first, to keep cold
    // blocklist lookups out of a flood's drops); an allowlisted blocked source still by the
    // blocklist (the ceiling does not apply to it).
    fx.pass(&sip4([198, 18, 1, 40], REGISTER));
    fx.pass(&sip4([198, 18, 1, 41], REGISTER));
    fx.drop_as(&sip4(C, REGISTER), Counter::DropGlobal);
    fx.drop_as(&sip4(A, REGISTER), Counter::DropBlocked);
    assert!(fx.entry.buckets(SourceKey::v4(C)).is_none());
    assert!(fx.entry.buckets(SourceKey::v4(A)).is_none());
}

#[test]
fn a_source_over_its_own_rate_costs_the_ceiling_nothing_until_it_is_exhausted() {
    let _pin = pin_to_cpu(0);
    let mut fx = Fixture::new();
    let mut cfg = new_source_config();
    cfg.global_per_cpu = RateLimit { rate: 1, burst: 4 };
    fx.entry.set_shield_config(cfg);
    fx.entry.set_global_buckets(TokenBucket::default());
    // A's new-source REGISTER burst (2) passes and takes two of the ceiling's four tokens; its
    // rate drops that follow take none.
    fx.pass(&sip4(A, REGISTER));
    fx.pass(&sip4(A, REGISTER));
    fx.drop_with_event(&sip4(A, REGISTER), Counter::DropRateRegister);
    for _ in 0..20 {
        fx.drop_as(&sip4(A, REGISTER), Counter::DropRateRegister);
    }
    fx.pass(&sip4(C, REGISTER));
    fx.pass(&sip4(C, REGISTER));
    // Now the ceiling is empty: A's next packets are the ceiling's (no per-source count, no
    // event), whatever its own bucket says.
    // (A's rate drop is cached on this CPU until A's bucket holds a token again, 1 s here: only
    // after that does A meet the ceiling. Skip that second.)
    let key = SourceKey::v4(A);
    let dropped = fx.source_dropped(key);
    assert_eq!(dropped, Some(21));
    fx.entry.expire_last_drop();
    fx.drop_as(&sip4(A, REGISTER), Counter::DropGlobal);
    assert_eq!(fx.source_dropped(key), dropped);
}

#[test]
fn a_new_source_dropped_on_its_first_packet_keeps_the_drop_and_the_event() {
    let mut fx = Fixture::new();
    fx.entry.set_shield_config(new_source_config());
    // OPTIONS' new-source burst is 0: the first packet is a rate drop, decided on the fresh
    // value before it is inserted.
    fx.drop_with_event(&sip4(C, OPTIONS), Counter::DropRateOptions);
    let b = fx
        .entry
        .buckets(SourceKey::v4(C))
        .expect("C's buckets inserted");
    assert_eq!(fx.source_dropped(SourceKey::v4(C)), Some(1));
    assert_ne!(b.last_event_ns, 0);
    assert_eq!(b.classes[ShieldClass::Options as usize].tokens, 0);
    assert_eq!(b.classes[ShieldClass::Register as usize].tokens, 2 * TOKEN);
    let events = fx.entry.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].dropped, 1);
    assert_eq!(events[0].class, ShieldClass::Options as u8);
    // Within the interval, no second event; the count goes on in the map.
    fx.drop_as(&sip4(C, OPTIONS), Counter::DropRateOptions);
    assert_eq!(fx.source_dropped(SourceKey::v4(C)), Some(2));
    // Its REGISTERs use the tokens the fresh value was inserted with.
    fx.pass(&sip4(C, REGISTER));
    fx.pass(&sip4(C, REGISTER));
    fx.drop_as(&sip4(C, REGISTER), Counter::DropRateRegister);
}

#[test]
fn events_are_sampled_once_per_source_per_interval() {
    let mut fx = Fixture::new();
    assert!(fx.entry.drain_events().is_empty());
    let frame = sip4(A, REGISTER);
    for _ in 0..5 {
        fx.pass(&frame);
    }
    let t0 = monotonic_coarse_ns();
    fx.drop_with_event(&frame, Counter::DropRateRegister);
    for _ in 0..50 {
        fx.drop_as(&frame, Counter::DropRateRegister);
    }
    // Another source is limited: its own first event.
    let syn6 = ipv6_frame(V6_H1, V6_EDGE, 6, &tcp_bytes(40_000, SIPS, TCP_SYN));
    for _ in 0..3 {
        fx.pass(&syn6);
    }
    fx.drop_with_event(&syn6, Counter::DropSynRate);
    fx.drop_as(&syn6, Counter::DropSynRate);

    let events = fx.entry.drain_events();
    assert_eq!(events.len(), 2, "{events:?}");
    let e: ShieldEvent = events[0];
    assert_eq!(e.addr, [sipveil_abi::ip4(A), 0, 0, 0]);
    assert_eq!(e.family, FAMILY_IPV4);
    assert_eq!(e.class, ShieldClass::Register as u8);
    assert_eq!(e.reason, EVENT_RATE_LIMITED);
    assert_eq!(e.dport, SIP);
    assert_eq!(e.dropped, 1);
    // Same clock as CLOCK_MONOTONIC_COARSE (allowing a tick either side).
    assert!(e.timestamp_ns + 8_000_000 >= t0 && e.timestamp_ns <= t0 + 1_000_000_000);
    let e6 = events[1];
    let w = |i: usize| u32::from_ne_bytes([V6_H1[i], V6_H1[i + 1], V6_H1[i + 2], V6_H1[i + 3]]);
    assert_eq!(
        e6.addr,
        [w(0), w(4), w(8), w(12)],
        "the full source address"
    );
    assert_eq!(e6.family, FAMILY_IPV6);
    assert_eq!(ShieldClass::from_index(e6.class), Some(ShieldClass::Syn));
    assert_eq!(e6.dport, SIPS);

    // The interval passes (simulated): the next drop of A writes a new event with the count.
    let key = SourceKey::v4(A);
    assert_eq!(fx.source_dropped(key), Some(51));
    let mut b = fx.entry.buckets(key).expect("A's buckets");
    b.last_event_ns -= 1_000_000_000;
    fx.entry.put_buckets(key, b);
    fx.drop_with_event(&frame, Counter::DropRateRegister);
    let events = fx.entry.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].dropped, 52);
}

#[test]
fn a_full_ring_loses_events_not_verdicts() {
    let mut fx = Fixture::new();
    // Every junk packet is dropped at once (burst 0), each from a new source: one event each.
    let mut cfg = shield_config();
    cfg.limits[ShieldClass::NotSip as usize] = RateLimit { rate: 1, burst: 0 };
    fx.entry.set_shield_config(cfg);
    // 256 KiB of 48-byte records (8-byte header + 40) holds 5461: send more, read nothing.
    let sources = 6_000u32;
    let before = fx.entry.counters();
    for i in 0..sources {
        let src = [198, 19, (i >> 8) as u8, i as u8];
        let r = fx.entry.run(&sip4(src, JUNK), fx.ea0);
        assert_eq!(r.action, XDP_DROP);
    }
    let after = fx.entry.counters();
    let delta = |c: Counter| after[c as usize] - before[c as usize];
    assert_eq!(delta(Counter::DropNotSip), u64::from(sources));
    let written = delta(Counter::ShieldEvents);
    let lost = delta(Counter::ShieldEventsLost);
    assert_eq!(written + lost, u64::from(sources));
    assert!(lost > 0, "the ring should have filled ({written} written)");
    assert_eq!(fx.entry.drain_events().len() as u64, written);
    // Drained: events flow again.
    let r_before = fx.entry.counters();
    assert_eq!(fx.entry.run(&sip4(C, JUNK), fx.ea0).action, XDP_DROP);
    let r_after = fx.entry.counters();
    assert_eq!(
        r_after[Counter::ShieldEvents as usize] - r_before[Counter::ShieldEvents as usize],
        1
    );
}

/// The fixtures' limits with the new-source rule on: a fresh REGISTER bucket holds 2 (burst 5),
/// OPTIONS 0 (burst 3), not-SIP 1 (burst 2), the other classes their full bursts.
fn new_source_config() -> ShieldConfig {
    let mut cfg = shield_config();
    cfg.flags |= SHIELD_F_NEW_SOURCE;
    for (class, n) in [
        (ShieldClass::Register, 2),
        (ShieldClass::Invite, 4),
        (ShieldClass::Options, 0),
        (ShieldClass::Other, 6),
        (ShieldClass::Response, 7),
        (ShieldClass::NotSip, 1),
        (ShieldClass::Syn, 3),
    ] {
        cfg.new_source_burst[class as usize] = n;
    }
    cfg
}

#[test]
fn a_new_source_gets_the_new_source_burst_then_refills_to_the_full_burst() {
    let mut fx = Fixture::new();
    fx.entry.set_shield_config(new_source_config());
    let frame = sip4(A, REGISTER);
    // Two at once (not the burst of 5), then the rate.
    fx.pass(&frame);
    fx.pass(&frame);
    fx.drop_with_event(&frame, Counter::DropRateRegister);
    let key = SourceKey::v4(A);
    let b = fx.entry.buckets(key).expect("A has buckets");
    assert_eq!(b.dropped, 1);
    // Every class was created as of the first packet, with its new-source tokens.
    let created = b.classes[ShieldClass::Options as usize].last_refill_ns;
    assert_ne!(created, 0, "not the 'full' marker");
    assert_eq!(b.classes[ShieldClass::Options as usize].tokens, 0);
    assert_eq!(b.classes[ShieldClass::NotSip as usize].tokens, TOKEN);
    assert_eq!(b.classes[ShieldClass::Invite as usize].tokens, 4 * TOKEN);
    assert_eq!(
        b.classes[ShieldClass::Invite as usize].last_refill_ns,
        created
    );

    // 1 s at 1/s: one more.
    fx.age_bucket(key, ShieldClass::Register, 1_000_000_000);
    fx.pass(&frame);
    fx.drop_as(&frame, Counter::DropRateRegister);
    // Quiet for an hour: the full burst (5), not beyond.
    fx.age_bucket(key, ShieldClass::Register, 3_600_000_000_000);
    for _ in 0..5 {
        fx.pass(&frame);
    }
    fx.drop_as(&frame, Counter::DropRateRegister);

    // OPTIONS' new-source burst is 0: the first one waits for a token of refill.
    fx.drop_as(&sip4(A, OPTIONS), Counter::DropRateOptions);
    fx.age_bucket(key, ShieldClass::Options, 1_000_000_000);
    fx.pass(&sip4(A, OPTIONS));
    fx.drop_as(&sip4(A, OPTIONS), Counter::DropRateOptions);
    // Not-SIP: one.
    fx.pass(&sip4(A, JUNK));
    fx.drop_as(&sip4(A, JUNK), Counter::DropNotSip);

    // Another fresh source has its own new-source burst.
    fx.pass(&sip4(C, REGISTER));
    fx.pass(&sip4(C, REGISTER));
    fx.drop_with_event(&sip4(C, REGISTER), Counter::DropRateRegister);
}

#[test]
fn allowlisted_sources_start_with_full_limits_under_the_new_source_rule() {
    let mut fx = Fixture::new();
    fx.entry.set_shield_config(new_source_config());
    // Authenticated (or a peer): the config multiplier (4) on the full burst, 5 -> 20, from its
    // very first packet.
    fx.entry.allow(
        AllowData::v4(A2),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    for _ in 0..20 {
        fx.pass_as(&sip4(A2, REGISTER), Counter::ShieldAllowPass);
    }
    fx.drop_with_event(&sip4(A2, REGISTER), Counter::DropRateRegister);
    let b = fx.entry.buckets(SourceKey::v4(A2)).expect("A2 has buckets");
    assert_eq!(
        b.classes[ShieldClass::Options as usize],
        TokenBucket::default(),
        "an allowlisted source's fresh buckets are full (never used)"
    );
    // OPTIONS: the full 3 x 4, although a new source's OPTIONS burst is 0.
    for _ in 0..12 {
        fx.pass_as(&sip4(A2, OPTIONS), Counter::ShieldAllowPass);
    }
    fx.drop_as(&sip4(A2, OPTIONS), Counter::DropRateOptions);
    // Unlimited: still no bucket at all.
    let trunk = [198, 18, 1, 30];
    fx.entry.allow(
        AllowData::v4(trunk),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: ALLOW_F_UNLIMITED,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    for _ in 0..50 {
        fx.pass_as(&sip4(trunk, OPTIONS), Counter::ShieldAllowPass);
    }
    assert!(fx.entry.buckets(SourceKey::v4(trunk)).is_none());
    // A source that is not on the list, beside them: the new-source burst.
    fx.pass(&sip4(A, REGISTER));
    fx.pass(&sip4(A, REGISTER));
    fx.drop_with_event(&sip4(A, REGISTER), Counter::DropRateRegister);
}

#[test]
fn an_ipv6_64_is_one_new_source() {
    let mut fx = Fixture::new();
    fx.entry.set_shield_config(new_source_config());
    // H1 and H2 share 2001:db8:1:2::/64: two REGISTERs between them.
    fx.pass(&sip6(V6_H1, REGISTER));
    fx.pass(&sip6(V6_H2, REGISTER));
    fx.drop_with_event(&sip6(V6_H1, REGISTER), Counter::DropRateRegister);
    // Another /64 is another new source.
    fx.pass(&sip6(V6_OTHER64, REGISTER));
    fx.pass(&sip6(V6_OTHER64, REGISTER));
    fx.drop_with_event(&sip6(V6_OTHER64, REGISTER), Counter::DropRateRegister);
    // TCP SYNs to the TLS port from the first /64: its new-source 3.
    let syn6 = |src| ipv6_frame(src, V6_EDGE, 6, &tcp_bytes(40_000, SIPS, TCP_SYN));
    for _ in 0..3 {
        fx.pass(&syn6(V6_H2));
    }
    fx.drop_as(&syn6(V6_H1), Counter::DropSynRate);
    let shared = fx
        .entry
        .buckets(SourceKey::v6(V6_H1))
        .expect("the /64's buckets");
    assert_eq!(fx.source_dropped(SourceKey::v6(V6_H1)), Some(2));
    assert_eq!(
        shared,
        fx.entry.buckets(SourceKey::v6(V6_H2)).expect("same /64")
    );
}

#[test]
fn the_new_source_rule_needs_its_flag_and_reloads_without_reattaching() {
    let mut fx = Fixture::new();
    // The burst values without the flag (a config from before the flag): fresh buckets full.
    let mut cfg = new_source_config();
    cfg.flags &= !SHIELD_F_NEW_SOURCE;
    fx.entry.set_shield_config(cfg);
    for _ in 0..5 {
        fx.pass(&sip4(A, REGISTER));
    }
    fx.drop_with_event(&sip4(A, REGISTER), Counter::DropRateRegister);
    // Switched on by a config write: sources created from now on are new sources; A keeps the
    // state it has.
    fx.entry.set_shield_config(new_source_config());
    fx.pass(&sip4(C, REGISTER));
    fx.pass(&sip4(C, REGISTER));
    fx.drop_with_event(&sip4(C, REGISTER), Counter::DropRateRegister);
    fx.drop_as(&sip4(A, REGISTER), Counter::DropRateRegister);
    // Forgotten (deleted from the LRU, as eviction does): A comes back as a new source.
    {
        let mut m: aya::maps::HashMap<_, SourceKey, sipveil_abi::shield::SourceBuckets> = fx
            .entry
            .ebpf
            .map_mut(sipveil_abi::maps::SHIELD_BUCKETS)
            .expect("buckets map")
            .try_into()
            .expect("buckets is an LRU hash map");
        m.remove(&SourceKey::v4(A)).expect("forget A");
    }
    // (A CPU that dropped A last keeps that verdict until A's bucket would have refilled: skip
    // that time.)
    fx.entry.expire_last_drop();
    fx.pass(&sip4(A, REGISTER));
    fx.pass(&sip4(A, REGISTER));
    // Its event state went with its buckets: the first drop reports it again.
    fx.drop_with_event(&sip4(A, REGISTER), Counter::DropRateRegister);
}

#[test]
fn shield_map_definitions_match_the_abi() {
    let _ns = Netns::two_arm();
    let entry = Entry::load();
    use aya::maps::{Map, MapType};
    let info = |name: &str| {
        let m = entry.ebpf.map(name).unwrap_or_else(|| panic!("map {name}"));
        match m {
            Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::Array(d)
            | Map::PerCpuArray(d)
            | Map::LpmTrie(d)
            | Map::RingBuf(d) => d.info().expect("map info"),
            other => panic!("unexpected map type {other:?}"),
        }
    };
    use sipveil_abi::{maps, shield};
    for (name, ty, key, value, entries) in [
        (
            maps::SHIELD_BUCKETS,
            MapType::LruHash,
            size_of::<SourceKey>(),
            size_of::<shield::SourceBuckets>(),
            shield::MAX_SOURCES,
        ),
        (
            maps::SHIELD_GLOBAL,
            MapType::PerCpuArray,
            4,
            size_of::<TokenBucket>(),
            shield::GLOBAL_BUCKETS,
        ),
        (
            maps::SHIELD_ALLOW,
            MapType::LpmTrie,
            4 + size_of::<AllowData>(),
            size_of::<AllowEntry>(),
            shield::MAX_ALLOWED,
        ),
        (
            maps::SHIELD_BLOCK,
            MapType::Hash,
            size_of::<SourceKey>(),
            size_of::<BlockEntry>(),
            shield::MAX_BLOCKED,
        ),
        (
            maps::SHIELD_CONFIG,
            MapType::Array,
            4,
            size_of::<ShieldConfig>(),
            1,
        ),
        (
            maps::SHIELD_EVENTS,
            MapType::RingBuf,
            0,
            0,
            shield::EVENTS_BYTES,
        ),
    ] {
        let i = info(name);
        assert_eq!(i.map_type().expect("type"), ty, "{name}");
        assert_eq!(i.key_size() as usize, key, "{name} key");
        assert_eq!(i.value_size() as usize, value, "{name} value");
        assert_eq!(i.max_entries(), entries, "{name} entries");
        assert!(name.len() <= 15, "{name}: the kernel keeps 15 characters");
    }
    assert_eq!(maps::REQUIRED.len(), 10);
    for name in maps::REQUIRED {
        assert!(entry.ebpf.map(name).is_some(), "{name} in the object");
    }
}

#[test]
fn a_repeated_drop_of_the_same_source_is_decided_by_the_per_cpu_cache() {
    let _pin = pin_to_cpu(0);
    let mut fx = Fixture::new();
    let reg = sip4(A, REGISTER);
    for _ in 0..5 {
        fx.pass(&reg);
    }
    // The first drop takes the full path (its event), the next ones the cache (1 token/s: the
    // verdict holds for about a second, longer than this test).
    fx.expect(
        &reg,
        XDP_DROP,
        &[
            (Counter::DropRateRegister, 1),
            (Counter::ShieldEvents, 1),
            (Counter::ShieldCacheHits, 0),
        ],
    );
    for _ in 0..3 {
        fx.expect(
            &reg,
            XDP_DROP,
            &[
                (Counter::DropRateRegister, 1),
                (Counter::ShieldCacheHits, 1),
            ],
        );
    }
    let key = SourceKey::v4(A);
    assert_eq!(fx.entry.last_drop_hits(key), 3);
    assert_eq!(
        fx.entry.buckets(key).map(|b| b.dropped),
        Some(1),
        "cache hits touch no map but the cache"
    );
    assert_eq!(fx.source_dropped(key), Some(4));
    // Another class of the same source is not the cached verdict: it has its own bucket.
    fx.expect(
        &sip4(A, INVITE),
        XDP_PASS,
        &[(Counter::ShieldPass, 1), (Counter::ShieldCacheHits, 0)],
    );
    // The cache's lifetime passes (simulated): the full path again, the pending hits added to
    // the source's count.
    fx.entry.expire_last_drop();
    fx.expect(
        &reg,
        XDP_DROP,
        &[
            (Counter::DropRateRegister, 1),
            (Counter::ShieldCacheHits, 0),
        ],
    );
    assert_eq!(fx.entry.buckets(key).map(|b| b.dropped), Some(5));
    assert_eq!(fx.entry.last_drop_hits(key), 0);
    // One cache hit, then another source's drop replaces the entry: A's hit is added to A's
    // count then.
    fx.expect(
        &reg,
        XDP_DROP,
        &[
            (Counter::DropRateRegister, 1),
            (Counter::ShieldCacheHits, 1),
        ],
    );
    for _ in 0..3 {
        fx.pass(&sip4(C, OPTIONS));
    }
    fx.expect(
        &sip4(C, OPTIONS),
        XDP_DROP,
        &[
            (Counter::DropRateOptions, 1),
            (Counter::ShieldEvents, 1),
            (Counter::ShieldCacheHits, 0),
        ],
    );
    assert_eq!(fx.entry.buckets(key).map(|b| b.dropped), Some(6));
    // A block is cached too (without counting toward the source's rate drops).
    fx.entry.block(
        SourceKey::v4(C),
        BlockEntry {
            expires_ns: 0,
            reason: BLOCK_REASON_MANUAL,
            _pad: 0,
        },
    );
    fx.expect(
        &sip4(C, OPTIONS),
        XDP_DROP,
        &[(Counter::DropBlocked, 1), (Counter::ShieldCacheHits, 0)],
    );
    fx.expect(
        &sip4(C, OPTIONS),
        XDP_DROP,
        &[(Counter::DropBlocked, 1), (Counter::ShieldCacheHits, 1)],
    );
    assert_eq!(fx.entry.last_drop_hits(SourceKey::v4(C)), 0);
}

#[test]
fn a_class_ceiling_holds_unknown_sources_of_that_class_together() {
    let _pin = pin_to_cpu(0);
    let mut fx = Fixture::new();
    let mut cfg = shield_config();
    let reg = ShieldClass::Register as usize;
    // Per source 5 REGISTERs at once; for all unknown sources together 2, then 1/s.
    cfg.class_global_per_cpu[reg] = RateLimit { rate: 1, burst: 2 };
    cfg.global_per_cpu = RateLimit {
        rate: 1000,
        burst: 1000,
    };
    fx.entry.set_shield_config(cfg);
    fx.pass(&sip4(A, REGISTER));
    fx.pass(&sip4(C, REGISTER));
    fx.drop_as(&sip4(A2, REGISTER), Counter::DropGlobalClass);
    assert!(
        fx.entry.buckets(SourceKey::v4(A2)).is_none(),
        "a source only the ceiling dropped has no per-source state"
    );
    // Other classes are not held by it.
    fx.pass(&sip4(A2, OPTIONS));
    fx.pass(&sip4(A2, INVITE));
    // The class ceiling was charged for the two REGISTERs that passed.
    let class_bucket = fx.entry.ceiling_buckets(1 + reg as u32)[0];
    assert!(class_bucket.tokens < TOKEN, "{class_bucket:?}");
    // An allowlisted source is neither held by the class ceiling nor charged to it.
    fx.entry.allow(
        AllowData::v4(C),
        32,
        AllowEntry {
            expires_ns: 0,
            multiplier: 0,
            flags: 0,
            reason: ALLOW_REASON_CONFIGURED,
        },
    );
    fx.pass_as(&sip4(C, REGISTER), Counter::ShieldAllowPass);
    assert_eq!(fx.entry.ceiling_buckets(1 + reg as u32)[0], class_bucket);
    // A second of refill (simulated): one more unknown REGISTER.
    let mut cb = class_bucket;
    cb.last_refill_ns -= 1_000_000_000;
    fx.entry.set_ceiling_bucket(1 + reg as u32, cb);
    fx.pass(&sip4(A2, REGISTER));
    fx.drop_as(&sip4(A, REGISTER), Counter::DropGlobalClass);
    // Rate 0: no class ceiling (reloaded without reattaching).
    cfg.class_global_per_cpu[reg] = RateLimit::default();
    fx.entry.set_shield_config(cfg);
    fx.pass(&sip4(A, REGISTER));
}
