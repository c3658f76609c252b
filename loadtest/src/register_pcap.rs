//! REGISTER response times from a packet capture (classic pcap, Ethernet or Linux cooked
//! link type, µs or ns timestamps), taken at the client's interface: per Call-ID, the time from
//! the first transmission of the first REGISTER to the first 200 OK to a REGISTER. For the
//! authenticated domain that is the whole REGISTER / 401 / REGISTER / 200 exchange. SIPp's own
//! response times tick in 4 ms steps on this kernel; these have the capture's precision.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use thiserror::Error;

use crate::stats::new_total_histogram;

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PcapError {
    #[error("not a pcap file (magic {0:#010x})")]
    Magic(u32),
    #[error("pcap file truncated in its global header")]
    Header,
    #[error("unsupported pcap link type {0} (Ethernet 1 and Linux cooked 113 are)")]
    LinkType(u32),
}

/// What a capture yielded.
#[derive(Debug, Clone)]
pub struct CaptureLatency {
    /// Response times in ns.
    pub histogram: Histogram<u64>,
    /// The server's share of each answered exchange, ns: summed over its requests, the time from
    /// a request's first transmission to the next response on that Call-ID. For the
    /// authenticated domain that leaves out the client's 401 → second REGISTER turn-around.
    pub server_histogram: Histogram<u64>,
    /// Per answered exchange, the first request's leg (first transmission → first final
    /// response: for the authenticated domain the REGISTER → 401 leg, which never waits for the
    /// store), ns.
    pub first_leg_histogram: Histogram<u64>,
    /// Per answered exchange, the last request's leg (→ its 200; the leg that waits for the
    /// store), ns.
    pub last_leg_histogram: Histogram<u64>,
    /// Call-IDs with a REGISTER but no 200 OK in the capture.
    pub unanswered: u64,
    /// SIP datagrams seen.
    pub datagrams: u64,
    /// The capture ended inside a record.
    pub truncated: bool,
}

/// The value of the first header named `long` (or its compact form `short`) in a SIP message
/// head, trimmed.
fn header<'a>(msg: &'a str, long: &str, short: Option<&str>) -> Option<&'a str> {
    for line in msg.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case(long) || short.is_some_and(|s| name.eq_ignore_ascii_case(s)) {
            return Some(value.trim());
        }
    }
    None
}

/// The UDP payload of one captured frame (IPv4 only, unfragmented).
fn udp_payload(link: u32, frame: &[u8]) -> Option<&[u8]> {
    let ip = match link {
        1 => {
            let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
            if ethertype != 0x0800 {
                return None;
            }
            frame.get(14..)?
        }
        113 => {
            let proto = u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]);
            if proto != 0x0800 {
                return None;
            }
            frame.get(16..)?
        }
        _ => return None,
    };
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if *ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    // The capture may be cut at the snap length: take what is there.
    let end = len.min(udp.len());
    udp.get(8..end)
}

/// Reads a capture and pairs REGISTERs with their 200 OKs by Call-ID.
pub fn register_latency(pcap: &[u8]) -> Result<CaptureLatency, PcapError> {
    request_latency(pcap, "REGISTER")
}

/// Reads a capture and pairs the first `method` request of each Call-ID with the first 200 OK
/// whose CSeq names `method` (for INVITE: the call setup time at the capture point).
pub fn request_latency(pcap: &[u8], method: &str) -> Result<CaptureLatency, PcapError> {
    let magic_bytes: [u8; 4] = pcap
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(PcapError::Header)?;
    let (big, nanos) = match u32::from_le_bytes(magic_bytes) {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        m => return Err(PcapError::Magic(m)),
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    };
    let link = u32_at(pcap, 20).ok_or(PcapError::Header)?;
    if link != 1 && link != 113 {
        return Err(PcapError::LinkType(link));
    }
    let mut started: HashMap<String, Exchange> = HashMap::new();
    let mut histogram = new_total_histogram();
    let mut server_histogram = new_total_histogram();
    let mut first_leg_histogram = new_total_histogram();
    let mut last_leg_histogram = new_total_histogram();
    let mut datagrams = 0u64;
    let mut truncated = false;
    let mut at = 24usize;
    while at < pcap.len() {
        let (Some(sec), Some(frac), Some(incl)) =
            (u32_at(pcap, at), u32_at(pcap, at + 4), u32_at(pcap, at + 8))
        else {
            truncated = true;
            break;
        };
        let start = at + 16;
        let Some(frame) = pcap.get(start..start + incl as usize) else {
            truncated = true;
            break;
        };
        at = start + incl as usize;
        let t_ns = u64::from(sec) * 1_000_000_000
            + if nanos {
                u64::from(frac)
            } else {
                u64::from(frac) * 1000
            };
        let Some(payload) = udp_payload(link, frame) else {
            continue;
        };
        // A snap length may cut a multi-byte character: use the valid prefix.
        let text = match std::str::from_utf8(payload) {
            Ok(t) => t,
            Err(e) => payload
                .get(..e.valid_up_to())
                .and_then(|p| std::str::from_utf8(p).ok())
                .unwrap_or(""),
        };
        handle(
            text,
            method,
            t_ns,
            &mut started,
            &mut Histograms {
                total: &mut histogram,
                server: &mut server_histogram,
                first_leg: &mut first_leg_histogram,
                last_leg: &mut last_leg_histogram,
            },
            &mut datagrams,
        );
    }
    let unanswered = started.values().filter(|x| !x.answered).count() as u64;
    Ok(CaptureLatency {
        histogram,
        server_histogram,
        first_leg_histogram,
        last_leg_histogram,
        unanswered,
        datagrams,
        truncated,
    })
}

/// One Call-ID's exchange so far.
struct Exchange {
    /// First transmission of its first request.
    first: u64,
    /// First transmission of the request now waiting for a response, if one waits.
    waiting: Option<u64>,
    /// Server time so far: request → next response, summed.
    server_ns: u64,
    /// The first request's leg, once answered.
    first_leg: Option<u64>,
    answered: bool,
}

struct Histograms<'a> {
    total: &'a mut Histogram<u64>,
    server: &'a mut Histogram<u64>,
    first_leg: &'a mut Histogram<u64>,
    last_leg: &'a mut Histogram<u64>,
}

fn handle(
    text: &str,
    method: &str,
    t_ns: u64,
    started: &mut HashMap<String, Exchange>,
    h: &mut Histograms<'_>,
    datagrams: &mut u64,
) {
    let Some(call_id) = header(text, "Call-ID", Some("i")) else {
        return;
    };
    *datagrams += 1;
    let cseq_is_method = || header(text, "CSeq", None).is_some_and(|c| c.ends_with(method));
    if text
        .strip_prefix(method)
        .is_some_and(|rest| rest.starts_with(' '))
    {
        let x = started.entry(call_id.to_owned()).or_insert(Exchange {
            first: t_ns,
            waiting: None,
            server_ns: 0,
            first_leg: None,
            answered: false,
        });
        // A retransmission keeps the first transmission's time.
        x.waiting.get_or_insert(t_ns);
    } else if text.starts_with("SIP/2.0 ")
        // Final responses only: a provisional one does not end the server's turn.
        && !text.starts_with("SIP/2.0 1")
        && cseq_is_method()
        && let Some(x) = started.get_mut(call_id)
        && !x.answered
    {
        let mut leg = 0;
        if let Some(t) = x.waiting.take() {
            leg = t_ns.saturating_sub(t);
            x.server_ns += leg;
        }
        x.first_leg.get_or_insert(leg);
        if text.starts_with("SIP/2.0 200") {
            h.total
                .saturating_record(t_ns.saturating_sub(x.first).max(1));
            h.server.saturating_record(x.server_ns.max(1));
            h.first_leg
                .saturating_record(x.first_leg.unwrap_or(leg).max(1));
            h.last_leg.saturating_record(leg.max(1));
            // Answered: later retransmitted 200s are not counted again.
            x.answered = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &str) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        let mut ip = vec![
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ];
        ip.extend_from_slice(&[198, 18, 1, 2, 198, 18, 1, 1]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[
            0x13,
            0xc4,
            0x13,
            0xce,
            (udp_len >> 8) as u8,
            udp_len as u8,
            0,
            0,
        ]);
        f.extend_from_slice(payload.as_bytes());
        f
    }

    fn pcap(records: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&4u16.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&65535u32.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        for (s, us, f) in records {
            p.extend_from_slice(&s.to_le_bytes());
            p.extend_from_slice(&us.to_le_bytes());
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(f);
        }
        p
    }

    const REG1: &str = "REGISTER sip:auth.lab SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n\r\n";
    const R401: &str = "SIP/2.0 401 Unauthorized\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n\r\n";
    const REG2: &str = "REGISTER sip:auth.lab SIP/2.0\r\ni: c1\r\nCSeq: 2 REGISTER\r\n\r\n";
    const OK: &str = "SIP/2.0 200 OK\r\ncall-id: c1\r\nCSeq: 2 REGISTER\r\n\r\n";

    #[test]
    fn whole_exchange_is_timed() {
        let cap = pcap(&[
            (10, 100, frame(REG1)),
            (10, 300, frame(R401)),
            (10, 400, frame(REG2)),
            (10, 900, frame(OK)),
            (11, 0, frame(OK)),
            (11, 5, frame(&REG1.replace("c1", "c2"))),
        ]);
        let l = register_latency(&cap).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.histogram.len(), 1);
        assert!(l.histogram.value_at_quantile(0.5).abs_diff(800_000) < 1000);
        // The server's share: REGISTER → 401 (200 µs) + REGISTER → 200 (500 µs); the client's
        // 100 µs turn-around between the 401 and the second REGISTER is left out.
        assert_eq!(l.server_histogram.len(), 1);
        assert!(l.server_histogram.value_at_quantile(0.5).abs_diff(700_000) < 1000);
        assert!(
            l.first_leg_histogram
                .value_at_quantile(0.5)
                .abs_diff(200_000)
                < 1000
        );
        assert!(
            l.last_leg_histogram
                .value_at_quantile(0.5)
                .abs_diff(500_000)
                < 1000
        );
        assert_eq!(l.unanswered, 1);
        assert_eq!(l.datagrams, 6);
        assert!(!l.truncated);
    }

    #[test]
    fn bad_files_are_refused_and_truncation_noticed() {
        assert_eq!(register_latency(&[1, 2]).err(), Some(PcapError::Header));
        assert!(matches!(
            register_latency(&[0u8; 24]).err(),
            Some(PcapError::Magic(0))
        ));
        let mut cap = pcap(&[(1, 0, frame(REG1))]);
        cap.truncate(cap.len() - 3);
        let l = register_latency(&cap).unwrap_or_else(|e| panic!("{e}"));
        assert!(l.truncated);
    }

    #[test]
    fn invite_setup_is_timed_to_its_200_not_to_the_bye_200() {
        let inv = "INVITE sip:bench@open.lab SIP/2.0\r\nCall-ID: k1\r\nCSeq: 1 INVITE\r\n\r\n";
        let ok_inv = "SIP/2.0 200 OK\r\nCall-ID: k1\r\nCSeq: 1 INVITE\r\n\r\n";
        let ok_bye = "SIP/2.0 200 OK\r\nCall-ID: k1\r\nCSeq: 2 BYE\r\n\r\n";
        let cap = pcap(&[
            (5, 0, frame(inv)),
            (
                5,
                100,
                frame("SIP/2.0 100 Trying\r\nCall-ID: k1\r\nCSeq: 1 INVITE\r\n\r\n"),
            ),
            (5, 2500, frame(ok_inv)),
            (7, 0, frame(ok_bye)),
            (7, 5, frame(REG1)),
        ]);
        let l = request_latency(&cap, "INVITE").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.histogram.len(), 1);
        assert!(l.histogram.value_at_quantile(0.5).abs_diff(2_500_000) < 5000);
        assert_eq!(l.unanswered, 0);
    }
}
