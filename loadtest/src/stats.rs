//! Per-stream accounting of what a receiver saw: unique packets, loss, reordering, duplicates,
//! one-way latency. Pure data structures, no I/O, so the rules are unit tested.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track (60 s in ns); larger values are clamped.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// What [`StreamTracker::on_media`] concluded about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New, in order.
    InOrder,
    /// New, but a higher sequence number had already arrived.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Sequence number beyond the tracking window (garbage or a run far longer than configured).
    OutOfRange,
}

/// Accounting for one stream.
#[derive(Debug, Clone)]
pub struct StreamTracker {
    seen: Vec<u64>,
    window: u64,
    highest: Option<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    out_of_range: u64,
    /// Sent count announced by the stream's end packet, if one arrived.
    announced_sent: Option<u64>,
    latency: Histogram<u32>,
}

impl StreamTracker {
    /// `window`: highest sequence number (exclusive) that is tracked; bounds memory at window/8 bytes.
    #[must_use]
    pub fn new(window: u64) -> Self {
        Self {
            seen: Vec::new(),
            window,
            highest: None,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            out_of_range: 0,
            announced_sent: None,
            latency: new_stream_histogram(),
        }
    }

    /// Records a media packet with extended sequence `seq` and one-way latency `latency_ns`.
    pub fn on_media(&mut self, seq: u64, latency_ns: u64) -> Arrival {
        if seq >= self.window {
            self.out_of_range += 1;
            return Arrival::OutOfRange;
        }
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        if word >= self.seen.len() {
            let want = word
                .saturating_add(1)
                .max(self.seen.len().saturating_mul(2));
            let cap = usize::try_from(self.window.div_ceil(64)).unwrap_or(usize::MAX);
            self.seen.resize(want.min(cap).max(word + 1), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        // Saturate instead of failing: a value above the histogram's range is still a (huge) sample.
        self.latency.saturating_record(latency_ns.max(1));
        match self.highest {
            Some(h) if seq < h => {
                self.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                self.highest = Some(seq);
                Arrival::InOrder
            }
        }
    }

    /// Records the stream's end packet announcing `sent` media packets.
    pub fn on_end(&mut self, sent: u64) {
        self.announced_sent = Some(sent);
    }

    /// Packets this stream is known to have sent: the sender's count when known (argument, or the
    /// end packet), else highest sequence + 1 (which cannot see losses at the tail).
    #[must_use]
    pub fn expected(&self, sender_count: Option<u64>) -> u64 {
        sender_count
            .or(self.announced_sent)
            .unwrap_or_else(|| self.highest.map_or(0, |h| h + 1))
    }

    /// Unique packets received with a sequence number below `limit`.
    fn unique_below(&self, limit: u64) -> u64 {
        if limit >= self.highest.map_or(0, |h| h + 1) {
            return self.unique;
        }
        let full = usize::try_from(limit / 64).unwrap_or(usize::MAX);
        let mut n: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if let Some(w) = self.seen.get(full) {
            let rem = limit % 64;
            if rem > 0 {
                n += u64::from((w & ((1u64 << rem) - 1)).count_ones());
            }
        }
        n
    }

    /// The stream's summary; `sender_count` overrides what the receiver inferred.
    #[must_use]
    pub fn summary(&self, stream: u32, sender_count: Option<u64>) -> StreamSummary {
        let expected = self.expected(sender_count);
        let counted = self.unique_below(expected);
        StreamSummary {
            stream,
            sent: expected,
            sent_known: sender_count.is_some() || self.announced_sent.is_some(),
            received: self.unique,
            lost: expected.saturating_sub(counted),
            reordered: self.reordered,
            duplicated: self.duplicates,
            beyond_sent: self.unique - counted,
            out_of_range: self.out_of_range,
            latency: LatencySummary::from_histogram(&self.latency),
        }
    }

    /// The stream's latency histogram.
    #[must_use]
    pub fn latency(&self) -> &Histogram<u32> {
        &self.latency
    }
}

fn new_stream_histogram() -> Histogram<u32> {
    // Two significant digits per stream keep a thousand streams in tens of MB.
    match Histogram::new_with_bounds(1, LATENCY_MAX_NS, 2) {
        Ok(h) => h,
        Err(_) => Histogram::new(2).unwrap_or_else(|_| unreachable_histogram()),
    }
}

/// A histogram for totals: three significant digits, 1 ns .. 60 s.
#[must_use]
pub fn new_total_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3) {
        Ok(h) => h,
        Err(_) => Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()),
    }
}

#[cold]
fn unreachable_histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
    // The bounds above are constants that hdrhistogram accepts; this path cannot be reached.
    // Fall back to the smallest valid configuration rather than panicking.
    Histogram::new_with_max(2, 1).unwrap_or_else(|_| std::process::abort())
}

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    #[must_use]
    pub fn from_histogram<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_ns: h.min(),
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }

    /// The percentile table in microseconds, one line per percentile.
    #[must_use]
    pub fn table(&self) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "  percentile   latency (us)\n  p50        {:>12.1}\n  p90        {:>12.1}\n  p99        {:>12.1}\n  p99.9      {:>12.1}\n  max        {:>12.1}\n  ({} samples, min {:.1} us, mean {:.1} us)\n",
            us(self.p50_ns),
            us(self.p90_ns),
            us(self.p99_ns),
            us(self.p999_ns),
            us(self.max_ns),
            self.count,
            us(self.min_ns),
            self.mean_ns / 1000.0
        )
    }
}

/// One stream as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub stream: u32,
    /// Packets the stream sent (see `sent_known`).
    pub sent: u64,
    /// True when `sent` is the sender's own count (end packet or a sender report), false when it
    /// was inferred from the highest sequence number seen.
    pub sent_known: bool,
    /// Unique packets received.
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicated: u64,
    /// Unique packets numbered at or above `sent` (a sender report that undercounts).
    pub beyond_sent: u64,
    pub out_of_range: u64,
    pub latency: LatencySummary,
}

/// Totals over all streams.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub streams_expected: u64,
    pub streams_seen: u64,
    /// Expected streams from which nothing arrived.
    pub streams_missing: u64,
    /// Streams whose sender count is not known (no end packet, no sender report).
    pub streams_sent_unknown: u64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub out_of_range: u64,
    /// Datagrams that were not sv-rtp packets of this run.
    pub foreign: u64,
    pub latency: LatencySummary,
}

impl Totals {
    /// Sums stream summaries; `foreign` and `latency` are filled by the caller.
    #[must_use]
    pub fn from_streams(streams: &[StreamSummary], streams_expected: u64) -> Self {
        let mut t = Self {
            streams_expected,
            streams_seen: streams.iter().filter(|s| s.received > 0).count() as u64,
            ..Self::default()
        };
        for s in streams {
            t.sent += s.sent;
            t.received += s.received;
            t.lost += s.lost;
            t.reordered += s.reordered;
            t.duplicated += s.duplicated;
            t.out_of_range += s.out_of_range;
            if !s.sent_known {
                t.streams_sent_unknown += 1;
            }
        }
        t.streams_missing = streams_expected.saturating_sub(t.streams_seen);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut t = StreamTracker::new(1 << 20);
        for seq in 0..100 {
            assert_eq!(t.on_media(seq, 1000 + seq), Arrival::InOrder);
        }
        t.on_end(100);
        let s = t.summary(0, None);
        assert_eq!((s.sent, s.received, s.lost), (100, 100, 0));
        assert_eq!((s.reordered, s.duplicated), (0, 0));
        assert!(s.sent_known);
        assert_eq!(s.latency.count, 100);
    }

    #[test]
    fn gaps_count_as_loss_and_late_arrivals_as_reordered() {
        let mut t = StreamTracker::new(1 << 20);
        for seq in [0, 1, 3, 4, 2, 6] {
            t.on_media(seq, 10);
        }
        // 5 missing, 2 arrived after 4
        let s = t.summary(0, None);
        assert_eq!(s.sent, 7);
        assert!(!s.sent_known);
        assert_eq!(s.received, 6);
        assert_eq!(s.lost, 1);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.duplicated, 0);
    }

    #[test]
    fn tail_loss_needs_the_sender_count() {
        let mut t = StreamTracker::new(1 << 20);
        for seq in 0..10 {
            t.on_media(seq, 10);
        }
        assert_eq!(t.summary(0, None).lost, 0);
        assert_eq!(t.summary(0, Some(15)).lost, 5);
        t.on_end(12);
        assert_eq!(t.summary(0, None).lost, 2);
        // an explicit sender count wins over the end packet
        assert_eq!(t.summary(0, Some(10)).lost, 0);
    }

    #[test]
    fn duplicates_are_counted_once() {
        let mut t = StreamTracker::new(1 << 20);
        assert_eq!(t.on_media(0, 1), Arrival::InOrder);
        assert_eq!(t.on_media(0, 1), Arrival::Duplicate);
        assert_eq!(t.on_media(1, 1), Arrival::InOrder);
        assert_eq!(t.on_media(1, 1), Arrival::Duplicate);
        let s = t.summary(0, Some(2));
        assert_eq!(
            (s.received, s.duplicated, s.lost, s.reordered),
            (2, 2, 0, 0)
        );
        assert_eq!(s.latency.count, 2, "duplicates are not latency samples");
    }

    #[test]
    fn window_bounds_memory_and_counts_out_of_range() {
        let mut t = StreamTracker::new(128);
        assert_eq!(t.on_media(127, 1), Arrival::InOrder);
        assert_eq!(t.on_media(128, 1), Arrival::OutOfRange);
        assert_eq!(t.on_media(u64::MAX, 1), Arrival::OutOfRange);
        let s = t.summary(0, None);
        assert_eq!(s.out_of_range, 2);
        assert_eq!(s.lost, 127);
        assert!(t.seen.len() <= 2);
    }

    #[test]
    fn sender_undercount_is_visible() {
        let mut t = StreamTracker::new(1 << 20);
        for seq in 0..70 {
            t.on_media(seq, 1);
        }
        let s = t.summary(0, Some(65));
        assert_eq!(s.lost, 0);
        assert_eq!(s.beyond_sent, 5);
    }

    #[test]
    fn totals_sum_streams_and_count_missing() {
        let mut a = StreamTracker::new(1 << 10);
        let mut b = StreamTracker::new(1 << 10);
        for seq in 0..5 {
            a.on_media(seq, 1);
        }
        b.on_media(1, 1);
        b.on_media(1, 1);
        b.on_end(3);
        let streams = [a.summary(0, None), b.summary(1, None)];
        let t = Totals::from_streams(&streams, 3);
        assert_eq!(t.streams_seen, 2);
        assert_eq!(t.streams_missing, 1);
        assert_eq!(t.streams_sent_unknown, 1);
        assert_eq!(t.sent, 8);
        assert_eq!(t.received, 6);
        assert_eq!(t.lost, 2);
        assert_eq!(t.duplicated, 1);
    }

    #[test]
    fn latency_summary_percentiles() {
        let mut h = new_total_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap_or(());
        }
        let l = LatencySummary::from_histogram(&h);
        assert_eq!(l.count, 1000);
        assert!((499_000..=501_000).contains(&l.p50_ns), "{}", l.p50_ns);
        assert!((989_000..=991_000).contains(&l.p99_ns), "{}", l.p99_ns);
        assert!(l.max_ns >= 999_000);
        assert!(l.table().contains("p99.9"));
    }
}
