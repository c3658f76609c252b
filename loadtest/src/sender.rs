//! The paced (or flat-out) RTP sender.
//!
//! Stream `s` sends packet `k` at `t0 + k·T + s·T/N` (T = 1/pps per stream, N streams): the streams
//! are spread evenly across each packet interval instead of bursting together. Equivalently slot
//! `j` of the whole run goes at `t0 + j/R` (R = total rate) to stream `j mod N`. Slots that are due
//! go out together in one `sendmmsg`; flat-out mode ignores the schedule. Every run is bounded by
//! a duration and a packet count.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::monotonic_ns;
use crate::net::SendBatch;
use crate::rtp::{self, PACKET_LEN, Packet, Probe, ProbeKind};

/// How fast to send.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Pacing {
    /// Packets per second of every stream (50 = 20 ms PCMU).
    PerStream(f64),
    /// Packets per second of all streams together.
    Total(f64),
    /// As fast as `sendmmsg` goes.
    FlatOut,
}

#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Destination of each stream (length = number of streams).
    pub dsts: Vec<SocketAddrV4>,
    pub pacing: Pacing,
    /// Sending threads (streams are split among them).
    pub threads: usize,
    pub duration: Duration,
    /// Media packets over all streams, at most.
    pub max_packets: u64,
    /// Packets per `sendmmsg`.
    pub batch: usize,
    /// Run tag written into every packet.
    pub tag: u32,
    /// End-of-stream packets per stream after the run (carrying the sent count), 0 for none.
    pub end_packets: u32,
    /// Linear ramp from 0 to the full rate over this time (paced modes), so a relay that drops
    /// bursts (rtpengine) is not hit by a step.
    pub ramp: Duration,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("no destinations")]
    NoStreams,
    #[error("rate must be a positive finite number, got {0}")]
    BadRate(f64),
    #[error("cloning the socket for a sender thread: {0}")]
    Clone(io::Error),
    #[error("a sender thread panicked")]
    ThreadPanicked,
}

/// What the sender did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendReport {
    pub tag: u32,
    pub streams: u32,
    /// Media packets sent (accepted by the kernel).
    pub sent: u64,
    /// Media packets per stream.
    pub sent_per_stream: Vec<u64>,
    /// Failed `sendmmsg` calls (e.g. ENOBUFS); their packets were not counted and are re-sent.
    pub send_errors: u64,
    /// Target rate over all streams (0 for flat out).
    pub offered_pps: f64,
    /// Media packets sent ÷ elapsed.
    pub achieved_pps: f64,
    pub elapsed_s: f64,
    /// Why the run ended: "duration", "max_packets" or "stopped".
    pub ended_by: String,
}

struct ThreadResult {
    sent_per_stream: Vec<(u32, u64)>,
    errors: u64,
    ended_by: &'static str,
}

/// Options of [`run_sender_with`] beyond [`SendConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendTuning {
    /// Paced modes: wait (sleeping, never spinning) until a whole `batch` of slots is due, so the
    /// sender's CPU time is its sending work only and a CPU benchmark can subtract it. Packets
    /// then leave in bursts of `batch`, slightly later than their slots.
    pub batch_pacing: bool,
}

/// Runs the sender on `sock` (cloned once per thread). `stop` ends the run early.
pub fn run_sender(
    sock: &UdpSocket,
    cfg: &SendConfig,
    stop: &AtomicBool,
) -> Result<SendReport, SendError> {
    run_sender_with(sock, cfg, stop, SendTuning::default())
}

/// [`run_sender`] with [`SendTuning`].
pub fn run_sender_with(
    sock: &UdpSocket,
    cfg: &SendConfig,
    stop: &AtomicBool,
    tuning: SendTuning,
) -> Result<SendReport, SendError> {
    let n = cfg.dsts.len();
    if n == 0 {
        return Err(SendError::NoStreams);
    }
    let total_rate = match cfg.pacing {
        Pacing::PerStream(r) | Pacing::Total(r) if !(r.is_finite() && r > 0.0) => {
            return Err(SendError::BadRate(r));
        }
        Pacing::PerStream(r) => Some(r * n as f64),
        Pacing::Total(r) => Some(r),
        Pacing::FlatOut => None,
    };
    let threads = cfg.threads.clamp(1, n);
    let t0 = monotonic_ns();
    let deadline = t0.saturating_add(u64::try_from(cfg.duration.as_nanos()).unwrap_or(u64::MAX));

    let mut results = Vec::with_capacity(threads);
    std::thread::scope(|scope| -> Result<(), SendError> {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let streams: Vec<u32> = (0..n)
                .filter(|s| s % threads == t)
                .filter_map(|s| u32::try_from(s).ok())
                .collect();
            let share = streams.len() as f64 / n as f64;
            let budget = (cfg.max_packets as f64 * share).floor() as u64
                + if t == 0 {
                    // hand the rounding remainder to the first thread
                    let given: u64 = (0..threads)
                        .map(|u| {
                            let cnt = (0..n).filter(|s| s % threads == u).count();
                            (cfg.max_packets as f64 * cnt as f64 / n as f64).floor() as u64
                        })
                        .sum();
                    cfg.max_packets.saturating_sub(given)
                } else {
                    0
                };
            let rate = total_rate.map(|r| r * share);
            let sock = sock.try_clone().map_err(SendError::Clone)?;
            let dsts = &cfg.dsts;
            let batch = cfg.batch.max(1);
            let tag = cfg.tag;
            let ramp_ns = cfg.ramp.as_nanos() as f64;
            // Offset each thread's schedule so threads interleave instead of sending together.
            let start = t0 + total_rate.map_or(0, |r| (t as f64 * 1e9 / r) as u64);
            handles.push(scope.spawn(move || {
                send_thread(
                    &sock, &streams, dsts, rate, ramp_ns, start, deadline, budget, batch, tag,
                    stop, tuning,
                )
            }));
        }
        for h in handles {
            results.push(h.join().map_err(|_| SendError::ThreadPanicked)?);
        }
        Ok(())
    })?;
    let elapsed_ns = monotonic_ns().saturating_sub(t0).max(1);

    let mut sent_per_stream = vec![0u64; n];
    let mut errors = 0;
    let mut ended_by = "duration";
    for r in &results {
        errors += r.errors;
        for &(s, c) in &r.sent_per_stream {
            if let Some(slot) = sent_per_stream.get_mut(s as usize) {
                *slot = c;
            }
        }
        if r.ended_by != "duration" {
            ended_by = r.ended_by;
        }
    }
    if cfg.end_packets > 0 {
        errors += send_end_packets(sock, cfg, &sent_per_stream);
    }
    let sent: u64 = sent_per_stream.iter().sum();
    Ok(SendReport {
        tag: cfg.tag,
        streams: u32::try_from(n).unwrap_or(u32::MAX),
        sent,
        sent_per_stream,
        send_errors: errors,
        offered_pps: total_rate.unwrap_or(0.0),
        achieved_pps: sent as f64 * 1e9 / elapsed_ns as f64,
        elapsed_s: elapsed_ns as f64 / 1e9,
        ended_by: ended_by.to_owned(),
    })
}

#[expect(clippy::too_many_arguments, reason = "one call site, all plain values")]
fn send_thread(
    sock: &UdpSocket,
    streams: &[u32],
    dsts: &[SocketAddrV4],
    rate: Option<f64>,
    ramp_ns: f64,
    start: u64,
    deadline: u64,
    budget: u64,
    batch_len: usize,
    tag: u32,
    stop: &AtomicBool,
    tuning: SendTuning,
) -> ThreadResult {
    let mut next_seq = vec![0u64; streams.len()];
    let mut batch = SendBatch::with_capacity(batch_len);
    let mut slot: u64 = 0; // packets sent by this thread
    let mut errors = 0u64;
    let schedule = rate.map(|r| Schedule {
        per_ns: r / 1e9,
        ramp_ns,
    });
    let ended_by = loop {
        if slot >= budget {
            break "max_packets";
        }
        if stop.load(Ordering::Relaxed) {
            break "stopped";
        }
        let now = monotonic_ns();
        if now >= deadline {
            break "duration";
        }
        let due = match &schedule {
            Some(sch) if now >= start => sch.due((now - start) as f64),
            Some(_) => 0,
            None => u64::MAX,
        }
        .min(budget);
        // Batch pacing: a whole batch (or what is left of the budget) must be due.
        let want = if tuning.batch_pacing && schedule.is_some() {
            (batch_len as u64).min(budget - slot).max(1)
        } else {
            1
        };
        if due < slot + want
            && want > 1
            && let Some(sch) = &schedule
        {
            let next_at = start.saturating_add(sch.time_of(slot + want - 1) as u64);
            let wait = next_at
                .saturating_sub(now)
                .min(deadline.saturating_sub(now));
            std::thread::sleep(Duration::from_nanos(wait.max(1_000)));
            continue;
        }
        if due <= slot {
            // Sleep until the next slot (coarse sleep, then spin the last stretch).
            if let Some(sch) = &schedule {
                let next_at = start.saturating_add(sch.time_of(slot) as u64);
                let wait = next_at
                    .saturating_sub(now)
                    .min(deadline.saturating_sub(now));
                if wait > 200_000 {
                    std::thread::sleep(Duration::from_nanos(wait - 100_000));
                } else {
                    std::hint::spin_loop();
                }
            }
            continue;
        }
        let count = usize::try_from(due - slot)
            .unwrap_or(usize::MAX)
            .min(batch_len);
        batch.clear();
        let stamp = monotonic_ns();
        for i in 0..count {
            let idx = ((slot + i as u64) % streams.len() as u64) as usize;
            let stream = streams[idx];
            let seq = next_seq[idx];
            next_seq[idx] += 1;
            let mut buf = [0u8; PACKET_LEN];
            rtp::encode(
                &Packet {
                    header: rtp::header_for(tag, stream, seq),
                    probe: Probe {
                        kind: ProbeKind::Media,
                        tag,
                        stream,
                        value: seq,
                        send_ns: stamp,
                    },
                },
                &mut buf,
            );
            batch.packets.push(buf);
            batch.dsts.push(dsts[stream as usize]);
        }
        let sent = match batch.send(sock) {
            Ok(k) => k,
            Err(_) => {
                errors += 1;
                std::thread::sleep(Duration::from_micros(50));
                0
            }
        };
        // Give back the sequence numbers of packets the kernel did not take, newest first, so
        // every stream's sequence stays gap-free.
        for i in (sent..count).rev() {
            let idx = ((slot + i as u64) % streams.len() as u64) as usize;
            next_seq[idx] -= 1;
        }
        slot += sent as u64;
    };
    ThreadResult {
        sent_per_stream: streams.iter().copied().zip(next_seq).collect(),
        errors,
        ended_by,
    }
}

/// When slots are due: `per_ns` packets per ns at full rate, reached linearly over `ramp_ns`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    per_ns: f64,
    ramp_ns: f64,
}

impl Schedule {
    /// Slots due by `t` ns after the start (slot 0 is due at 0).
    fn due(&self, t: f64) -> u64 {
        let n = if self.ramp_ns > 0.0 && t < self.ramp_ns {
            self.per_ns * t * t / (2.0 * self.ramp_ns)
        } else {
            self.per_ns * (t - self.ramp_ns / 2.0)
        };
        n.max(0.0) as u64 + 1
    }

    /// When slot `j` is due, in ns after the start.
    fn time_of(&self, j: u64) -> f64 {
        let j = j as f64;
        let ramp_slots = self.per_ns * self.ramp_ns / 2.0;
        if self.ramp_ns > 0.0 && j < ramp_slots {
            (2.0 * self.ramp_ns * j / self.per_ns).sqrt()
        } else {
            j / self.per_ns + self.ramp_ns / 2.0
        }
    }
}

/// Sends `cfg.end_packets` rounds of end-of-stream packets, 2 ms apart; returns failed calls.
fn send_end_packets(sock: &UdpSocket, cfg: &SendConfig, sent: &[u64]) -> u64 {
    let batch_len = cfg.batch.max(1);
    let mut batch = SendBatch::with_capacity(batch_len);
    let mut errors = 0;
    for round in 0..cfg.end_packets {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for (chunk_start, chunk) in sent.chunks(batch_len).enumerate() {
            batch.clear();
            let stamp = monotonic_ns();
            for (i, &count) in chunk.iter().enumerate() {
                let stream = u32::try_from(chunk_start * batch_len + i).unwrap_or(u32::MAX);
                let mut buf = [0u8; PACKET_LEN];
                rtp::encode(
                    &Packet {
                        header: rtp::header_for(cfg.tag, stream, count),
                        probe: Probe {
                            kind: ProbeKind::End,
                            tag: cfg.tag,
                            stream,
                            value: count,
                            send_ns: stamp,
                        },
                    },
                    &mut buf,
                );
                batch.packets.push(buf);
                batch.dsts.push(cfg.dsts[stream as usize]);
            }
            // A short send only loses end markers; the receiver falls back to sequence numbers.
            if batch.send(sock).is_err() {
                errors += 1;
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_pacing_sends_every_packet_including_the_last_partial_batch() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let dst = match rx.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => a,
            other => panic!("local addr: {other:?}"),
        };
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let cfg = SendConfig {
            dsts: vec![dst],
            pacing: Pacing::Total(20_000.0),
            threads: 1,
            duration: Duration::from_secs(10),
            max_packets: 150, // two full batches of 64 and one of 22
            batch: 64,
            tag: 7,
            end_packets: 0,
            ramp: Duration::ZERO,
        };
        let stop = AtomicBool::new(false);
        let tuning = SendTuning { batch_pacing: true };
        let r = run_sender_with(&tx, &cfg, &stop, tuning).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.sent, 150);
        assert_eq!(r.ended_by, "max_packets");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while got < 150 && rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        assert_eq!(got, 150);
    }

    #[test]
    fn flat_schedule_spaces_slots_evenly() {
        let s = Schedule {
            per_ns: 1000.0 / 1e9,
            ramp_ns: 0.0,
        };
        assert_eq!(s.due(0.0), 1);
        assert_eq!(s.due(999_999.0), 1);
        assert_eq!(s.due(1_000_000.0), 2);
        assert_eq!(s.due(1e9), 1001);
        assert!((s.time_of(500) - 5e8).abs() < 1.0);
    }

    #[test]
    fn ramp_sends_half_the_packets_of_the_ramp_time_then_full_rate() {
        let s = Schedule {
            per_ns: 1000.0 / 1e9,
            ramp_ns: 2e9,
        };
        // after the 2 s ramp: 1000 pps * 2 s / 2 = 1000 packets (+ slot 0)
        assert_eq!(s.due(2e9), 1001);
        // one more second at full rate
        assert_eq!(s.due(3e9), 2001);
        // a quarter of the ramp area after half the ramp time
        assert_eq!(s.due(1e9), 251);
        // time_of inverts due
        for j in [1u64, 10, 250, 999, 1000, 1500, 5000] {
            let t = s.time_of(j);
            assert_eq!(s.due(t + 1.0), j + 1, "slot {j} at {t}");
        }
    }
}
