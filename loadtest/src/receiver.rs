//! The receiver: counts every stream of a run and measures one-way latency.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::clock::monotonic_ns;
use crate::hlog::{HlogLog, HlogRecorder};
use crate::net::{self, RecvBatch};
use crate::rtp::{self, ProbeKind};
use crate::stats::{LatencySummary, StreamSummary, StreamTracker, Totals, new_total_histogram};

/// Most distinct stream indices a receiver tracks (bounds memory against garbage input).
pub const MAX_TRACKED_STREAMS: usize = 65_536;

#[derive(Debug, Clone)]
pub struct RecvConfig {
    /// Accept only packets of this run tag (None: any).
    pub tag: Option<u32>,
    /// Streams that should arrive (0: unknown). Missing ones are reported; when all of them have
    /// delivered their end packets the receiver stops after `grace`.
    pub expect_streams: u32,
    /// Listening window (the sender's duration); the receiver stops at `duration + grace`.
    pub duration: Duration,
    /// Stop after this many datagrams.
    pub max_packets: u64,
    /// How long to keep listening for in-flight packets after the senders are done.
    pub grace: Duration,
    /// Stop when nothing arrived for this long after the first packet (None: never).
    pub idle_exit: Option<Duration>,
    pub hlog_interval: Duration,
    /// Highest sequence number tracked per stream (bounds memory: window/8 bytes per stream).
    pub seq_window: u64,
    pub batch: usize,
}

/// What the receiver saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecvReport {
    pub totals: Totals,
    pub streams: Vec<StreamSummary>,
    pub elapsed_s: f64,
    /// Why the receiver stopped: "all_streams_ended", "duration", "max_packets", "idle", "stopped".
    pub ended_by: String,
}

/// Receiver state; feed it datagrams with [`Receiver::on_datagram`] (pure, testable) or run it on
/// a socket with [`run_receiver`].
pub struct Receiver {
    tag: Option<u32>,
    expect_streams: u32,
    seq_window: u64,
    streams: BTreeMap<u32, StreamTracker>,
    ended: BTreeSet<u32>,
    total: Histogram<u64>,
    hlog: HlogRecorder,
    foreign: u64,
    datagrams: u64,
}

impl Receiver {
    #[must_use]
    pub fn new(cfg: &RecvConfig, mono_now_ns: u64) -> Self {
        Self {
            tag: cfg.tag,
            expect_streams: cfg.expect_streams,
            seq_window: cfg.seq_window.max(1),
            streams: BTreeMap::new(),
            ended: BTreeSet::new(),
            total: new_total_histogram(),
            hlog: HlogRecorder::new(mono_now_ns, cfg.hlog_interval),
            foreign: 0,
            datagrams: 0,
        }
    }

    /// Accounts one datagram received at `now_ns`.
    pub fn on_datagram(&mut self, data: &[u8], now_ns: u64) {
        self.datagrams += 1;
        let Ok(pkt) = rtp::decode(data) else {
            self.foreign += 1;
            return;
        };
        if self.tag.is_some_and(|t| t != pkt.probe.tag) {
            self.foreign += 1;
            return;
        }
        let stream = pkt.probe.stream;
        if !self.streams.contains_key(&stream) && self.streams.len() >= MAX_TRACKED_STREAMS {
            self.foreign += 1;
            return;
        }
        let window = self.seq_window;
        let tracker = self
            .streams
            .entry(stream)
            .or_insert_with(|| StreamTracker::new(window));
        match pkt.probe.kind {
            ProbeKind::Media => {
                let latency = now_ns.saturating_sub(pkt.probe.send_ns);
                let arrival = tracker.on_media(pkt.probe.value, latency);
                if matches!(
                    arrival,
                    crate::stats::Arrival::InOrder | crate::stats::Arrival::Reordered
                ) {
                    self.total.saturating_record(latency.max(1));
                    self.hlog.record(now_ns, latency);
                }
            }
            ProbeKind::End => {
                tracker.on_end(pkt.probe.value);
                self.ended.insert(stream);
            }
        }
    }

    /// Datagrams seen, ours or not.
    #[must_use]
    pub fn datagrams(&self) -> u64 {
        self.datagrams
    }

    /// True when every expected stream has sent its end packet.
    #[must_use]
    pub fn all_streams_ended(&self) -> bool {
        self.expect_streams > 0 && (0..self.expect_streams).all(|s| self.ended.contains(&s))
    }

    /// The report; `sender_counts[s]` (when given) overrides what stream `s` announced.
    #[must_use]
    pub fn report(
        &self,
        sender_counts: Option<&[u64]>,
        elapsed_s: f64,
        ended_by: &str,
    ) -> RecvReport {
        let mut ids: BTreeSet<u32> = self.streams.keys().copied().collect();
        ids.extend(0..self.expect_streams);
        if let Some(c) = sender_counts {
            ids.extend((0..c.len()).filter_map(|s| u32::try_from(s).ok()));
        }
        let empty = StreamTracker::new(1);
        let streams: Vec<StreamSummary> = ids
            .into_iter()
            .map(|s| {
                let count = sender_counts.and_then(|c| c.get(s as usize).copied());
                self.streams.get(&s).unwrap_or(&empty).summary(s, count)
            })
            .collect();
        let expected =
            u64::from(self.expect_streams).max(sender_counts.map_or(0, |c| c.len() as u64));
        let mut totals = Totals::from_streams(&streams, expected);
        totals.foreign = self.foreign;
        totals.latency = LatencySummary::from_histogram(&self.total);
        RecvReport {
            totals,
            streams,
            elapsed_s,
            ended_by: ended_by.to_owned(),
        }
    }

    /// The total latency histogram.
    #[must_use]
    pub fn latency(&self) -> &Histogram<u64> {
        &self.total
    }

    /// Finishes the interval log at `now_ns`.
    #[must_use]
    pub fn finish_hlog(&self, now_ns: u64) -> HlogLog {
        self.hlog.clone().finish(now_ns)
    }
}

/// Runs a receiver on `sock`. `senders_done`, when given, says the local sender finished (peer
/// mode): from then on the grace and idle timers apply. `stop` ends the run early.
pub fn run_receiver(
    sock: &UdpSocket,
    cfg: &RecvConfig,
    senders_done: Option<&AtomicBool>,
    stop: &AtomicBool,
    sender_counts: Option<&[u64]>,
) -> io::Result<(RecvReport, HlogLog)> {
    net::set_recv_timeout(sock, Duration::from_millis(20))?;
    let start = monotonic_ns();
    let mut rx = Receiver::new(cfg, start);
    let mut batch = RecvBatch::with_capacity(cfg.batch.max(1));
    let dur_ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let deadline = start
        .saturating_add(dur_ns(cfg.duration))
        .saturating_add(dur_ns(cfg.grace));
    let mut last_rx: Option<u64> = None;
    let mut ended_at: Option<u64> = None;
    let mut done_at: Option<u64> = None;
    let ended_by = loop {
        let got = batch.recv(sock)?;
        let now = monotonic_ns();
        for i in 0..got {
            let len = batch.meta[i].len;
            rx.on_datagram(&batch.bufs[i][..len], now);
        }
        if got > 0 {
            last_rx = Some(now);
        }
        if stop.load(Ordering::Relaxed) {
            break "stopped";
        }
        if rx.datagrams() >= cfg.max_packets {
            break "max_packets";
        }
        if now >= deadline {
            break "duration";
        }
        let local_done = senders_done.is_none_or(|d| d.load(Ordering::Relaxed));
        if local_done && done_at.is_none() {
            done_at = Some(now);
        }
        if local_done && rx.all_streams_ended() {
            let t = *ended_at.get_or_insert(now);
            if now.saturating_sub(t) >= dur_ns(cfg.grace) {
                break "all_streams_ended";
            }
        }
        if let (Some(idle), Some(last), Some(done)) = (cfg.idle_exit, last_rx, done_at) {
            // idle counts from the later of last packet and local sender completion
            if now.saturating_sub(last.max(done)) >= dur_ns(idle) {
                break "idle";
            }
        }
    };
    let end = monotonic_ns();
    let elapsed = end.saturating_sub(start) as f64 / 1e9;
    Ok((
        rx.report(sender_counts, elapsed, ended_by),
        rx.finish_hlog(end),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{PACKET_LEN, Packet, Probe};

    fn cfg(expect: u32) -> RecvConfig {
        RecvConfig {
            tag: Some(9),
            expect_streams: expect,
            duration: Duration::from_secs(1),
            max_packets: 1_000_000,
            grace: Duration::from_millis(10),
            idle_exit: None,
            hlog_interval: Duration::from_secs(1),
            seq_window: 1 << 16,
            batch: 8,
        }
    }

    fn pkt(tag: u32, stream: u32, kind: ProbeKind, value: u64, send_ns: u64) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        rtp::encode(
            &Packet {
                header: rtp::header_for(tag, stream, value),
                probe: Probe {
                    kind,
                    tag,
                    stream,
                    value,
                    send_ns,
                },
            },
            &mut b,
        );
        b
    }

    #[test]
    fn counts_streams_loss_and_latency() {
        let mut rx = Receiver::new(&cfg(3), 0);
        for seq in 0..10 {
            rx.on_datagram(&pkt(9, 0, ProbeKind::Media, seq, 1_000), 51_000);
            if seq != 4 {
                rx.on_datagram(&pkt(9, 1, ProbeKind::Media, seq, 1_000), 21_000);
            }
        }
        rx.on_datagram(&pkt(9, 1, ProbeKind::Media, 9, 1_000), 21_000); // duplicate
        rx.on_datagram(&pkt(8, 0, ProbeKind::Media, 10, 1_000), 21_000); // other run
        rx.on_datagram(b"not rtp", 21_000);
        rx.on_datagram(&pkt(9, 0, ProbeKind::End, 10, 0), 60_000);
        rx.on_datagram(&pkt(9, 1, ProbeKind::End, 12, 0), 60_000);
        assert!(!rx.all_streams_ended());
        let r = rx.report(None, 1.0, "test");
        assert_eq!(r.streams.len(), 3);
        assert_eq!(r.totals.streams_missing, 1);
        assert_eq!(r.totals.foreign, 2);
        assert_eq!(r.streams[0].lost, 0);
        assert_eq!(r.streams[1].lost, 3, "seq 4 and the tail 10, 11");
        assert_eq!(r.streams[1].duplicated, 1);
        assert_eq!(r.totals.received, 19);
        assert_eq!(r.totals.latency.count, 19);
        assert!(r.totals.latency.max_ns >= 49_900 && r.totals.latency.max_ns <= 50_100);
        assert!(r.totals.latency.min_ns >= 19_900 && r.totals.latency.min_ns <= 20_100);
        rx.on_datagram(&pkt(9, 2, ProbeKind::End, 0, 0), 60_000);
        assert!(rx.all_streams_ended());
    }

    #[test]
    fn sender_counts_reveal_streams_that_never_arrived() {
        let mut c = cfg(0);
        c.tag = None;
        let mut rx = Receiver::new(&c, 0);
        rx.on_datagram(&pkt(1, 0, ProbeKind::Media, 0, 0), 5);
        let r = rx.report(Some(&[1, 7]), 1.0, "test");
        assert_eq!(r.totals.streams_expected, 2);
        assert_eq!(r.totals.streams_missing, 1);
        assert_eq!(r.totals.lost, 7);
        assert_eq!(r.totals.sent, 8);
    }
}
