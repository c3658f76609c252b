//! RTCP privacy: what one party's RTCP may tell the other.
//!
//! RTCP SDES carries a person's or a device's identity (CNAME is usually `user@host` or an address;
//! NAME, EMAIL, PHONE, LOC, TOOL, NOTE and PRIV say the rest), BYE may carry a free-text reason,
//! APP anything at all. The relay forwards RTP untouched (in XDP) but every RTCP packet goes
//! through [`RtcpScrubber::scrub`], which rebuilds the compound packet from an allowlist:
//!
//! | packet | what leaves the edge |
//! |---|---|
//! | SR (200), RR (201) | header, sender SSRC, sender info (SR) and the report blocks; profile extensions removed |
//! | SDES (202) | per chunk: the SSRC and one CNAME, a pseudonym (below); every other item removed |
//! | BYE (203) | the SSRC/CSRC list; the reason text removed |
//! | RTPFB (205), PSFB (206), XR (207) | unchanged (NACK, PLI, FIR, REMB, report metrics: no identity) |
//! | APP (204), anything else | removed |
//!
//! Padding is removed (the P bit cleared, lengths rewritten). A packet whose framing cannot be
//! followed (version not 2, a length beyond the datagram, bad padding) ends the walk: what came
//! before it is forwarded, the rest is not. When nothing is left the datagram is dropped. Encrypted
//! RTCP (SRTCP, RFC 3711) cannot be scrubbed: everything after its first 8 bytes is ciphertext, so
//! at most the first packet's (encrypted) body goes on and the index and authentication tag that
//! follow the compound packet never do; the receiver discards what arrives. SRTP calls through the
//! edge therefore have no working RTCP (their RTP is unaffected).
//!
//! The CNAME pseudonym (RFC 7022 style: 96 bits, here 24 hex digits) is a keyed hash of a secret
//! drawn when the daemon starts, the relay side the packet arrived on (its even edge port: RTP and
//! RTCP of one side agree) and the party's own CNAME. So one party keeps one CNAME for every SSRC
//! it sends on a relay side (RFC 3550 §6.5.1: the CNAME binds a participant's streams), two parties
//! behind a mixer keep two, and nothing links the pseudonym to the party or to its other calls.
//! It changes when the daemon restarts.
use sha2::{Digest, Sha256};
use sipveil_abi::FlowKey;

/// RTCP packet types (RFC 3550, 4585, 3611).
pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
pub const PT_RTPFB: u8 = 205;
pub const PT_PSFB: u8 = 206;
pub const PT_XR: u8 = 207;

/// SDES item types (RFC 3550 §6.5).
pub const SDES_END: u8 = 0;
pub const SDES_CNAME: u8 = 1;

/// Length of the pseudonymous CNAME (24 hex digits = 96 bits, RFC 7022 §4.1's size).
pub const CNAME_LEN: usize = 24;

/// Largest output for an input of `n` bytes: each SDES chunk (at least 8 bytes in) can grow to
/// 4 + 2 + [`CNAME_LEN`] + 1 + padding = 32 bytes out.
pub const fn max_output_len(n: usize) -> usize {
    n * 4 + 32
}

/// Why nothing of a datagram is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScrubError {
    #[error("shorter than an RTCP header")]
    TooShort,
    #[error("the first packet's framing is broken (version, length or padding)")]
    Malformed,
    #[error("no packet of an allowed type")]
    NothingAllowed,
}

/// What the scrubber did to one datagram (for counters and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// RTCP packets in the output.
    pub packets: u16,
    /// SDES chunks written (each with the pseudonymous CNAME).
    pub sdes_chunks: u16,
    /// SDES items removed or replaced (the original CNAME included).
    pub sdes_items: u16,
    /// Packets removed entirely (APP, unknown types, unreadable SR/RR/BYE bodies).
    pub packets_removed: u16,
    /// Bytes of something else removed: BYE reasons, SR/RR extensions, padding.
    pub trimmed: bool,
    /// The walk stopped at a packet whose framing was broken; the rest was not forwarded.
    pub truncated: bool,
}

impl ScrubReport {
    /// Whether the input lost anything besides its SDES items.
    pub fn stripped(&self) -> bool {
        self.packets_removed > 0 || self.trimmed || self.truncated
    }
}

/// Rewrites RTCP so that it carries no identity (see the module documentation).
#[derive(Clone)]
pub struct RtcpScrubber {
    secret: [u8; 32],
}

impl std::fmt::Debug for RtcpScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RtcpScrubber { .. }")
    }
}

impl RtcpScrubber {
    /// A scrubber with a given secret (tests, or a secret kept elsewhere).
    pub fn with_secret(secret: [u8; 32]) -> RtcpScrubber {
        RtcpScrubber { secret }
    }

    /// A scrubber with a fresh random secret.
    pub fn random() -> Result<RtcpScrubber, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)?;
        Ok(RtcpScrubber { secret })
    }

    /// The pseudonymous CNAME for a party's own CNAME `original` on the relay side `side` (the
    /// edge address the packet arrived on; its port is taken without the RTCP bit).
    pub fn cname(&self, side: &FlowKey, original: &[u8]) -> [u8; CNAME_LEN] {
        let mut h = Sha256::new();
        h.update(self.secret);
        for w in side.addr {
            h.update(w.to_ne_bytes());
        }
        h.update((u16::from_be(side.port) & !1).to_be_bytes());
        h.update([side.family, side.proto]);
        h.update([original.len().min(255) as u8]);
        h.update(original);
        let digest = h.finalize();
        let mut out = [0u8; CNAME_LEN];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in digest.iter().take(CNAME_LEN / 2).enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        out
    }

    /// Writes the scrubbed form of the compound packet `input`, received on `side`, into `out`
    /// (cleared first; at most [`max_output_len`] bytes). `Err` means: forward nothing.
    pub fn scrub(
        &self,
        side: &FlowKey,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<ScrubReport, ScrubError> {
        out.clear();
        if input.len() < 4 {
            return Err(ScrubError::TooShort);
        }
        let mut report = ScrubReport::default();
        let mut off = 0usize;
        while off < input.len() {
            let Some(pkt) = frame(&input[off..]) else {
                report.truncated = true;
                break;
            };
            off += pkt.wire_len;
            if pkt.padded {
                report.trimmed = true;
            }
            let written = match pkt.pt {
                PT_SR => copy_report(out, &pkt, 24, &mut report),
                PT_RR => copy_report(out, &pkt, 4, &mut report),
                PT_SDES => self.rewrite_sdes(side, out, &pkt, &mut report),
                PT_BYE => copy_bye(out, &pkt, &mut report),
                PT_RTPFB | PT_PSFB | PT_XR => {
                    put_packet(out, pkt.count, pkt.pt, &pkt.body[4..]);
                    true
                }
                _ => false,
            };
            if written {
                report.packets += 1;
            } else {
                report.packets_removed += 1;
            }
        }
        if report.packets == 0 {
            out.clear();
            return Err(if report.truncated && report.packets_removed == 0 {
                ScrubError::Malformed
            } else {
                ScrubError::NothingAllowed
            });
        }
        Ok(report)
    }

    /// SDES: one chunk per readable SSRC, carrying only the pseudonymous CNAME.
    fn rewrite_sdes(
        &self,
        side: &FlowKey,
        out: &mut Vec<u8>,
        pkt: &Packet<'_>,
        report: &mut ScrubReport,
    ) -> bool {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let body = pkt.body;
        let mut pos = 4usize;
        let mut chunks = 0u8;
        for _ in 0..pkt.count {
            let Some(ssrc) = body.get(pos..pos + 4) else {
                report.truncated = true;
                break;
            };
            pos += 4;
            let mut original: &[u8] = &[];
            let mut complete = false;
            while let Some(&kind) = body.get(pos) {
                if kind == SDES_END {
                    // The chunk ends at the next 32-bit boundary (of the packet).
                    pos = (pos + 4) & !3;
                    complete = true;
                    break;
                }
                let Some(&len) = body.get(pos + 1) else {
                    break;
                };
                let Some(text) = body.get(pos + 2..pos + 2 + usize::from(len)) else {
                    break;
                };
                if kind == SDES_CNAME {
                    original = text;
                }
                report.sdes_items = report.sdes_items.saturating_add(1);
                pos += 2 + usize::from(len);
            }
            let cname = self.cname(side, original);
            out.extend_from_slice(ssrc);
            out.extend_from_slice(&[SDES_CNAME, CNAME_LEN as u8]);
            out.extend_from_slice(&cname);
            // END, then zeros to the next 32-bit boundary (4 + 2 + 24 + 1 = 31: one byte).
            out.push(SDES_END);
            while !(out.len() - start).is_multiple_of(4) {
                out.push(0);
            }
            chunks += 1;
            if !complete {
                // The rest of this packet cannot be followed.
                report.truncated = true;
                break;
            }
        }
        report.sdes_chunks = report.sdes_chunks.saturating_add(u16::from(chunks));
        if chunks == 0 {
            out.truncate(start);
            return false;
        }
        finish_header(out, start, chunks, PT_SDES);
        true
    }
}

/// One framed RTCP packet: its header fields and its bytes without padding.
struct Packet<'a> {
    count: u8,
    pt: u8,
    padded: bool,
    /// Header included, padding excluded; a multiple of 4 bytes.
    body: &'a [u8],
    /// Bytes the packet takes in the compound packet.
    wire_len: usize,
}

/// Frames the packet at the start of `data`: version 2, a length inside `data`, sane padding.
fn frame(data: &[u8]) -> Option<Packet<'_>> {
    let hdr = data.get(..4)?;
    if hdr[0] >> 6 != 2 {
        return None;
    }
    let padded = hdr[0] & 0x20 != 0;
    let wire_len = (usize::from(u16::from_be_bytes([hdr[2], hdr[3]])) + 1) * 4;
    let packet = data.get(..wire_len)?;
    let mut body_len = wire_len;
    if padded {
        let pad = usize::from(*packet.last()?);
        if pad == 0 || pad > wire_len - 4 || !(wire_len - pad).is_multiple_of(4) {
            return None;
        }
        body_len -= pad;
    }
    Some(Packet {
        count: hdr[0] & 0x1f,
        pt: hdr[1],
        padded,
        body: &packet[..body_len],
        wire_len,
    })
}

/// Appends a packet of type `pt` with count `count` and `payload` (after the 4-byte header).
fn put_packet(out: &mut Vec<u8>, count: u8, pt: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    finish_header(out, start, count, pt);
}

/// Writes the header of the packet that starts at `start` and ends at the end of `out`.
fn finish_header(out: &mut [u8], start: usize, count: u8, pt: u8) {
    let words = ((out.len() - start) / 4).saturating_sub(1);
    let len = u16::try_from(words).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(h) = out.get_mut(start..start + 4) {
        h.copy_from_slice(&[0x80 | (count & 0x1f), pt, len[0], len[1]]);
    }
}

/// SR/RR: the `fixed` bytes after the header (SR: SSRC and sender info, 24; RR: SSRC, 4) and the
/// report blocks; anything after them (profile extensions) is removed.
fn copy_report(
    out: &mut Vec<u8>,
    pkt: &Packet<'_>,
    fixed: usize,
    report: &mut ScrubReport,
) -> bool {
    let need = 4 + fixed + usize::from(pkt.count) * 24;
    let Some(keep) = pkt.body.get(4..need) else {
        return false;
    };
    if pkt.body.len() > need {
        report.trimmed = true;
    }
    put_packet(out, pkt.count, pkt.pt, keep);
    true
}

/// BYE: the SSRC/CSRC list; the reason for leaving is free text and is removed.
fn copy_bye(out: &mut Vec<u8>, pkt: &Packet<'_>, report: &mut ScrubReport) -> bool {
    let need = 4 + usize::from(pkt.count) * 4;
    let Some(keep) = pkt.body.get(4..need) else {
        return false;
    };
    if pkt.body.len() > need {
        report.trimmed = true;
    }
    put_packet(out, pkt.count, pkt.pt, keep);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipveil_abi::FlowKey;

    const SIDE: FlowKey = FlowKey::v4([198, 18, 1, 1], 30000);
    const SECRET: [u8; 32] = [7; 32];

    /// A packet: header (V=2, P as given, count, pt, length) around `payload`, with `pad` bytes
    /// of padding (the last one holding the count).
    fn packet(count: u8, pt: u8, payload: &[u8], pad: usize) -> Vec<u8> {
        let total = 4 + payload.len() + pad;
        assert_eq!(total % 4, 0, "test packet must be word aligned");
        let words = (total / 4 - 1) as u16;
        let p = if pad > 0 { 0x20 } else { 0 };
        let mut v = vec![0x80 | p | count, pt];
        v.extend_from_slice(&words.to_be_bytes());
        v.extend_from_slice(payload);
        if pad > 0 {
            v.extend(std::iter::repeat_n(0u8, pad - 1));
            v.push(pad as u8);
        }
        v
    }

    /// An SDES chunk: SSRC, items, END and zero padding to 32 bits.
    fn chunk(ssrc: u32, items: &[(u8, &[u8])]) -> Vec<u8> {
        let mut v = ssrc.to_be_bytes().to_vec();
        for (t, text) in items {
            v.push(*t);
            v.push(text.len() as u8);
            v.extend_from_slice(text);
        }
        v.push(SDES_END);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn sr(ssrc: u32, blocks: u8) -> Vec<u8> {
        let mut p = ssrc.to_be_bytes().to_vec();
        p.extend_from_slice(&[0x11; 20]);
        for i in 0..blocks {
            p.extend_from_slice(&[0x20 + i; 24]);
        }
        packet(blocks, PT_SR, &p, 0)
    }

    fn rr(ssrc: u32, blocks: u8) -> Vec<u8> {
        let mut p = ssrc.to_be_bytes().to_vec();
        for i in 0..blocks {
            p.extend_from_slice(&[0x30 + i; 24]);
        }
        packet(blocks, PT_RR, &p, 0)
    }

    fn scrub(input: &[u8]) -> (Result<ScrubReport, ScrubError>, Vec<u8>) {
        let s = RtcpScrubber::with_secret(SECRET);
        let mut out = Vec::new();
        let r = s.scrub(&SIDE, input, &mut out);
        assert!(out.len() <= max_output_len(input.len()));
        (r, out)
    }

    /// Splits a compound packet into (count, pt, payload) and checks its framing.
    fn walk(data: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let p = frame(&data[off..]).expect("output is well framed");
            assert!(!p.padded, "output has no padding");
            out.push((p.count, p.pt, p.body[4..].to_vec()));
            off += p.wire_len;
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    const IDENTIFIERS: [&[u8]; 8] = [
        b"alice@198.51.100.7",
        b"Alice Example",
        b"alice@example.com",
        b"+1 555 0100",
        b"Room 12, Berlin",
        b"Linphone/5.2 (Pixel 7)",
        b"on my way",
        b"\x05x-privsecret",
    ];

    fn all_items() -> Vec<(u8, &'static [u8])> {
        // CNAME, NAME, EMAIL, PHONE, LOC, TOOL, NOTE, PRIV (RFC 3550 item types 1..=8).
        IDENTIFIERS
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u8 + 1, *t))
            .collect()
    }

    #[test]
    fn compound_sr_sdes_bye_keeps_reports_and_replaces_identity() {
        let s = RtcpScrubber::with_secret(SECRET);
        let mut bye_payload = 0x1234_5678u32.to_be_bytes().to_vec();
        bye_payload.extend_from_slice(&[
            9, b'g', b'o', b'n', b'e', b' ', b'h', b'o', b'm', b'e', 0, 0,
        ]);
        let mut input = sr(0x1234_5678, 2);
        input.extend(packet(1, PT_SDES, &chunk(0x1234_5678, &all_items()), 0));
        input.extend(packet(1, PT_BYE, &bye_payload, 0));
        let (r, out) = scrub(&input);
        let r = r.expect("forwarded");
        assert_eq!(r.packets, 3);
        assert_eq!((r.sdes_chunks, r.sdes_items), (1, 8));
        assert!(r.trimmed, "the BYE reason went");
        for id in IDENTIFIERS {
            assert!(
                !contains(&out, id),
                "{:?} leaked",
                String::from_utf8_lossy(id)
            );
        }
        assert!(!contains(&out, b"gone home"));
        let pkts = walk(&out);
        assert_eq!(
            pkts[0],
            (2, PT_SR, input[4..input.len().min(4 + 24 + 48)].to_vec())
        );
        let cname = s.cname(&SIDE, IDENTIFIERS[0]);
        let mut want = 0x1234_5678u32.to_be_bytes().to_vec();
        want.extend_from_slice(&[SDES_CNAME, CNAME_LEN as u8]);
        want.extend_from_slice(&cname);
        want.extend_from_slice(&[SDES_END, 0]);
        assert_eq!(pkts[1], (1, PT_SDES, want));
        assert_eq!(pkts[2], (1, PT_BYE, 0x1234_5678u32.to_be_bytes().to_vec()));
        assert!(cname.iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn rr_only_passes_unchanged() {
        let input = rr(0xdead_beef, 3);
        let (r, out) = scrub(&input);
        assert_eq!(
            r,
            Ok(ScrubReport {
                packets: 1,
                ..ScrubReport::default()
            })
        );
        assert_eq!(out, input);
        let empty_rr = rr(1, 0);
        assert_eq!(scrub(&empty_rr).1, empty_rr);
    }

    #[test]
    fn several_chunks_keep_their_ssrcs_and_distinct_parties() {
        let mut p = chunk(1, &[(1, b"alice@10.0.0.1"), (2, b"Alice")]);
        p.extend(chunk(2, &[(1, b"bob@10.0.0.2")]));
        p.extend(chunk(3, &[(6, b"tool only")]));
        let mut input = rr(1, 0);
        input.extend(packet(3, PT_SDES, &p, 0));
        let (r, out) = scrub(&input);
        let r = r.expect("forwarded");
        assert_eq!((r.sdes_chunks, r.sdes_items), (3, 4));
        let pkts = walk(&out);
        assert_eq!(pkts.len(), 2);
        let (count, pt, body) = &pkts[1];
        assert_eq!((*count, *pt, body.len()), (3, PT_SDES, 3 * 32));
        let s = RtcpScrubber::with_secret(SECRET);
        for (i, (ssrc, orig)) in [
            (1u32, &b"alice@10.0.0.1"[..]),
            (2, b"bob@10.0.0.2"),
            (3, b""),
        ]
        .iter()
        .enumerate()
        {
            let c = &body[i * 32..(i + 1) * 32];
            assert_eq!(&c[..4], &ssrc.to_be_bytes());
            assert_eq!(&c[4..6], &[SDES_CNAME, CNAME_LEN as u8]);
            assert_eq!(&c[6..30], &s.cname(&SIDE, orig));
            assert_eq!(&c[30..], &[0, 0]);
        }
        assert_ne!(&body[6..30], &body[38..62], "two parties, two pseudonyms");
        for id in [
            &b"alice@10.0.0.1"[..],
            b"Alice",
            b"bob@10.0.0.2",
            b"tool only",
        ] {
            assert!(!contains(&out, id));
        }
    }

    #[test]
    fn pseudonym_is_stable_per_side_and_secret() {
        let a = RtcpScrubber::with_secret(SECRET);
        let b = RtcpScrubber::with_secret([8; 32]);
        let rtcp_port = FlowKey::v4([198, 18, 1, 1], 30001);
        let other_side = FlowKey::v4([198, 18, 2, 1], 30000);
        let c = a.cname(&SIDE, b"x@y");
        assert_eq!(c, a.cname(&SIDE, b"x@y"), "stable");
        assert_eq!(
            c,
            a.cname(&rtcp_port, b"x@y"),
            "RTP and RTCP port of one side agree"
        );
        assert_ne!(c, a.cname(&other_side, b"x@y"), "per relay side");
        assert_ne!(c, b.cname(&SIDE, b"x@y"), "per secret (daemon run)");
        assert_ne!(c, a.cname(&SIDE, b"x@z"), "per party");
    }

    #[test]
    fn every_item_type_and_unknown_ones_are_removed() {
        for t in 2u8..=255 {
            let text = b"identifying text";
            let input = packet(1, PT_SDES, &chunk(9, &[(1, b"c@h"), (t, text)]), 0);
            let (r, out) = scrub(&input);
            assert_eq!(r.map(|r| r.sdes_items), Ok(2), "item type {t}");
            assert!(!contains(&out, text), "item type {t} leaked");
            assert!(!contains(&out, b"c@h"));
        }
    }

    #[test]
    fn app_and_unknown_types_are_removed() {
        let mut input = rr(5, 1);
        input.extend(packet(3, PT_APP, b"NAMEalice@example.com...", 0));
        input.extend(packet(0, 210, &[1, 2, 3, 4], 0));
        input.extend(packet(1, PT_PSFB, &[0, 0, 0, 5, 0, 0, 0, 6], 0));
        let (r, out) = scrub(&input);
        let r = r.expect("forwarded");
        assert_eq!((r.packets, r.packets_removed), (2, 2));
        assert!(r.stripped());
        assert!(!contains(&out, b"alice"));
        let pkts = walk(&out);
        assert_eq!(pkts[1], (1, PT_PSFB, vec![0, 0, 0, 5, 0, 0, 0, 6]));
        // Only disallowed packets: nothing to forward.
        let app = packet(3, PT_APP, b"NAMEdata", 0);
        assert_eq!(scrub(&app).0, Err(ScrubError::NothingAllowed));
        assert!(scrub(&app).1.is_empty());
    }

    #[test]
    fn padding_is_removed() {
        // RR with 8 bytes of padding (P bit), then nothing else.
        let input = packet(0, PT_RR, &7u32.to_be_bytes(), 8);
        let (r, out) = scrub(&input);
        let r = r.expect("forwarded");
        assert!(r.trimmed);
        assert_eq!(out, rr(7, 0));
        // SDES with padding whose chunk carries a NAME.
        let input = packet(1, PT_SDES, &chunk(7, &[(2, b"Carol")]), 4);
        let (r, out) = scrub(&input);
        assert_eq!(r.map(|r| r.sdes_chunks), Ok(1));
        assert!(!contains(&out, b"Carol"));
        // Padding count 0, larger than the packet, or not leaving whole words: broken framing.
        for pad_byte in [0u8, 200, 3] {
            let mut bad = packet(0, PT_RR, &7u32.to_be_bytes(), 4);
            let last = bad.len() - 1;
            bad[last] = pad_byte;
            assert_eq!(scrub(&bad).0, Err(ScrubError::Malformed), "pad {pad_byte}");
        }
    }

    #[test]
    fn truncated_and_garbage_lengths_forward_nothing_identifying() {
        let mut sdes = packet(
            1,
            PT_SDES,
            &chunk(4, &[(1, b"dave@10.9.9.9"), (3, b"d@x.org")]),
            0,
        );
        // Too short, wrong version, length beyond the datagram.
        assert_eq!(scrub(&[0x80, 201]).0, Err(ScrubError::TooShort));
        assert_eq!(
            scrub(&[0x40, 201, 0, 1, 0, 0, 0, 1]).0,
            Err(ScrubError::Malformed)
        );
        let mut long = sdes.clone();
        long[3] = 0x40;
        assert_eq!(scrub(&long).0, Err(ScrubError::Malformed));
        // A good RR followed by a truncated SDES: the RR goes, the SDES does not.
        let mut input = rr(4, 1);
        let cut = sdes.len() - 6;
        input.extend_from_slice(&sdes[..cut]);
        let (r, out) = scrub(&input);
        let r = r.expect("the RR is forwarded");
        assert!(r.truncated && r.stripped());
        assert_eq!(out, rr(4, 1));
        // Item length pointing past the SDES packet's end (framing intact): the chunk keeps its
        // SSRC with the pseudonym, the item text is not copied.
        let item_len_at = 4 + 4 + 1;
        sdes[item_len_at] = 250;
        let (r, out) = scrub(&sdes);
        let r = r.expect("forwarded");
        assert!(r.truncated);
        assert_eq!(r.sdes_chunks, 1);
        assert!(!contains(&out, b"dave") && !contains(&out, b"d@x.org"));
        // A count larger than the chunks present.
        let mut many = packet(1, PT_SDES, &chunk(4, &[(1, b"e@f")]), 0);
        many[0] = 0x80 | 5;
        let (r, out) = scrub(&many);
        assert_eq!(r.map(|r| (r.sdes_chunks, r.truncated)), Ok((1, true)));
        assert!(!contains(&out, b"e@f"));
        // SR/RR/BYE whose count does not fit their length: removed.
        let mut bad_rr = rr(4, 1);
        bad_rr[0] = 0x80 | 3;
        assert_eq!(scrub(&bad_rr).0, Err(ScrubError::NothingAllowed));
        let mut bad_bye = packet(1, PT_BYE, &4u32.to_be_bytes(), 0);
        bad_bye[0] = 0x80 | 2;
        assert_eq!(scrub(&bad_bye).0, Err(ScrubError::NothingAllowed));
    }

    #[test]
    fn sr_extensions_are_removed() {
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&[0x11; 20]);
        p.extend_from_slice(b"ext:alice@host.lan..");
        let input = packet(0, PT_SR, &p, 0);
        let (r, out) = scrub(&input);
        assert!(r.expect("forwarded").trimmed);
        assert_eq!(out, sr(1, 0));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_always_frame_well() {
        // A deterministic walk over many inputs built from a small alphabet of RTCP-ish bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let s = RtcpScrubber::with_secret(SECRET);
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let n = (next() % 96) as usize;
            let mut v: Vec<u8> = (0..n)
                .map(|_| match next() % 6 {
                    0 => 0x80 | (next() % 4) as u8,
                    1 => 200 + (next() % 8) as u8,
                    2 => 0,
                    3 => (next() % 8) as u8,
                    4 => b'Z',
                    _ => next() as u8,
                })
                .collect();
            if v.len() > 4 && next() % 2 == 0 {
                v[0] = 0x81;
                v[1] = PT_SDES;
            }
            let _ = s.scrub(&SIDE, &v, &mut out);
            assert!(out.len() <= max_output_len(v.len()));
            if !out.is_empty() {
                walk(&out);
            }
        }
    }
}
