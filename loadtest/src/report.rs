//! The JSON report of an `sv-rtp` run, and the check that joins a sender's counts with a receiver's
//! observations (so a test can assert zero loss in both directions of a bidirectional call).

use serde::{Deserialize, Serialize};

use crate::receiver::RecvReport;
use crate::sender::SendReport;

/// What `sv-rtp send|recv|peer` prints (one JSON line on stdout) and writes with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// "send", "recv" or "peer".
    pub mode: String,
    /// The local sender (send, peer).
    pub sender: Option<SendReport>,
    /// The local receiver (recv, peer): the streams that arrived here.
    pub receiver: Option<RecvReport>,
    /// Interval log written, if any.
    pub hlog: Option<String>,
}

/// One direction's verdict: a sender's counts against what the far receiver saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionCheck {
    pub streams: u64,
    /// Streams of the sender of which nothing arrived.
    pub streams_missing: u64,
    pub sent: u64,
    /// Unique packets delivered (numbered below the sender's count).
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Streams where the receiver counted more unique packets than the sender sent (a bug).
    pub streams_over_delivered: u64,
}

impl DirectionCheck {
    /// True when everything sent arrived exactly once.
    #[must_use]
    pub fn is_lossless(&self) -> bool {
        self.streams_missing == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.streams_over_delivered == 0
    }
}

/// Joins `sender` (authoritative counts) with `receiver` (what arrived).
#[must_use]
pub fn check_direction(sender: &SendReport, receiver: &RecvReport) -> DirectionCheck {
    let mut c = DirectionCheck {
        streams: sender.sent_per_stream.len() as u64,
        ..DirectionCheck::default()
    };
    for (s, &sent) in sender.sent_per_stream.iter().enumerate() {
        c.sent += sent;
        let seen = receiver.streams.iter().find(|r| r.stream as usize == s);
        let Some(r) = seen.filter(|r| r.received > 0) else {
            if sent > 0 {
                c.streams_missing += 1;
            }
            c.lost += sent;
            continue;
        };
        // The receiver's own expectation is either this sender's count (end packet arrived) or
        // highest-seen + 1 <= sent; either way `received - beyond_sent` are unique packets below it.
        let delivered = r.received.saturating_sub(r.beyond_sent);
        if delivered > sent || r.sent > sent {
            c.streams_over_delivered += 1;
        }
        c.delivered += delivered.min(sent);
        c.lost += sent.saturating_sub(delivered);
        c.duplicated += r.duplicated;
        c.reordered += r.reordered;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LatencySummary, StreamSummary, Totals};

    fn sender(counts: &[u64]) -> SendReport {
        SendReport {
            tag: 1,
            streams: counts.len() as u32,
            sent: counts.iter().sum(),
            sent_per_stream: counts.to_vec(),
            send_errors: 0,
            offered_pps: 0.0,
            achieved_pps: 0.0,
            elapsed_s: 1.0,
            ended_by: "duration".into(),
        }
    }

    fn stream(s: u32, sent: u64, received: u64, dup: u64) -> StreamSummary {
        StreamSummary {
            stream: s,
            sent,
            sent_known: false,
            received,
            lost: sent - received,
            reordered: 0,
            duplicated: dup,
            beyond_sent: 0,
            out_of_range: 0,
            latency: LatencySummary::default(),
        }
    }

    fn receiver(streams: Vec<StreamSummary>) -> RecvReport {
        RecvReport {
            totals: Totals::default(),
            streams,
            elapsed_s: 1.0,
            ended_by: "duration".into(),
        }
    }

    #[test]
    fn lossless_direction() {
        let c = check_direction(
            &sender(&[5, 5]),
            &receiver(vec![stream(0, 5, 5, 0), stream(1, 5, 5, 0)]),
        );
        assert!(c.is_lossless(), "{c:?}");
        assert_eq!((c.sent, c.delivered), (10, 10));
    }

    #[test]
    fn tail_loss_and_missing_streams_are_caught() {
        // receiver saw 0..=2 of stream 0 (so it inferred sent = 3), nothing of stream 1
        let c = check_direction(&sender(&[5, 4]), &receiver(vec![stream(0, 3, 3, 0)]));
        assert!(!c.is_lossless());
        assert_eq!(c.lost, 2 + 4);
        assert_eq!(c.streams_missing, 1);
    }

    #[test]
    fn duplicates_fail_the_check() {
        let c = check_direction(&sender(&[2]), &receiver(vec![stream(0, 2, 2, 1)]));
        assert_eq!(c.lost, 0);
        assert!(!c.is_lossless());
    }
}
