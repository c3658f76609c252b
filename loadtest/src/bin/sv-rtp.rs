//! `sv-rtp`: RTP load generator and receiver. See loadtest/README.md.

use std::fs;
use std::net::{SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use sipveil_loadtest::hlog::HlogLog;
use sipveil_loadtest::net;
use sipveil_loadtest::receiver::{RecvConfig, RecvReport, run_receiver};
use sipveil_loadtest::report::{DirectionCheck, RunReport, check_direction};
use sipveil_loadtest::sender::{
    Pacing, SendConfig, SendReport, SendTuning, run_sender, run_sender_with,
};

#[derive(Parser)]
#[command(
    name = "sv-rtp",
    about = "RTP load generator and receiver (one-way latency, loss)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send N RTP streams.
    Send {
        #[command(flatten)]
        send: SendArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Receive streams and report loss, reordering, duplicates and latency.
    Recv {
        /// Local address to listen on.
        #[arg(long)]
        bind: SocketAddrV4,
        #[command(flatten)]
        recv: RecvArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Send streams to the edge and receive the streams relayed back, on one socket.
    Peer {
        #[command(flatten)]
        send: SendArgs,
        #[command(flatten)]
        recv: RecvArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Join reports: a sender's counts with a receiver's observations. Exit 1 on any loss,
    /// duplicate or missing stream.
    Check {
        /// Report with a `sender` (send or peer mode).
        #[arg(long, requires = "recv", conflicts_with = "pair")]
        send: Option<PathBuf>,
        /// Report with a `receiver` (recv or peer mode).
        #[arg(long)]
        recv: Option<PathBuf>,
        /// Two peer reports A B: checks A's streams at B and B's streams at A.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        pair: Option<Vec<PathBuf>>,
    },
}

#[derive(Args)]
struct SendArgs {
    /// Destinations, comma separated; stream i goes to entry i mod len.
    #[arg(long, value_delimiter = ',', conflicts_with = "dst_base")]
    dst: Vec<SocketAddrV4>,
    /// First destination; stream i goes to port base + i*port-step (one relay pair per stream).
    #[arg(long)]
    dst_base: Option<SocketAddrV4>,
    #[arg(long, default_value_t = 2)]
    port_step: u16,
    /// Number of streams (default: number of --dst entries, or 1).
    #[arg(long)]
    streams: Option<u32>,
    /// Local address to send from (peer mode: also receives here).
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddrV4,
    /// Packets per second per stream (50 = 20 ms PCMU).
    #[arg(long, default_value_t = 50.0, conflicts_with_all = ["rate", "flat_out"])]
    pps: f64,
    /// Total packets per second over all streams (overrides --pps).
    #[arg(long, conflicts_with = "flat_out")]
    rate: Option<f64>,
    /// Send as fast as possible.
    #[arg(long)]
    flat_out: bool,
    /// Sending threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Packets per sendmmsg call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Paced: sleep (never spin) until a whole --batch is due, so the sender's CPU time is only
    /// its sending work (for CPU benchmarks that subtract it); packets leave in bursts of --batch.
    #[arg(long)]
    batch_pacing: bool,
    /// Run time in seconds (always bounded).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Media packets over all streams, at most.
    #[arg(long, default_value_t = 5_000_000)]
    max_packets: u64,
    /// Run tag carried in every packet (receivers can filter on it).
    #[arg(long, default_value_t = 0x5356)]
    tag: u32,
    /// End-of-stream packets per stream, carrying the stream's sent count.
    #[arg(long, default_value_t = 3)]
    end_packets: u32,
    /// Ramp the rate up linearly over this many seconds (paced modes).
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
}

#[derive(Args)]
struct RecvArgs {
    /// Streams expected to arrive (enables missing-stream detection and early exit).
    #[arg(long, default_value_t = 0)]
    expect_streams: u32,
    /// Accept only this run tag.
    #[arg(long)]
    expect_tag: Option<u32>,
    /// Receive window in seconds (recv mode; peer mode uses the send duration).
    #[arg(long = "recv-duration", default_value_t = 10.0)]
    recv_duration: f64,
    /// Keep listening this long after the senders are done (ms).
    #[arg(long, default_value_t = 1000)]
    grace_ms: u64,
    /// Stop when nothing arrived for this long (ms) after the first packet.
    #[arg(long)]
    idle_exit_ms: Option<u64>,
    /// Datagrams to receive at most.
    #[arg(long = "recv-max-packets", default_value_t = 20_000_000)]
    recv_max_packets: u64,
    /// Highest sequence number tracked per stream.
    #[arg(long, default_value_t = 1 << 22)]
    seq_window: u64,
    /// Write the latency interval log here.
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// Tag of the interval log's histograms.
    #[arg(long, default_value = "rtp")]
    hlog_tag: String,
    #[arg(long, default_value_t = 1000)]
    hlog_interval_ms: u64,
    /// Print per-stream lines in the human summary.
    #[arg(long)]
    per_stream: bool,
}

#[derive(Args)]
struct OutArgs {
    /// Also write the JSON report to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn secs(s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
        bail!("duration must be in (0, 86400] seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

fn send_config(a: &SendArgs) -> Result<SendConfig> {
    let streams = a
        .streams
        .unwrap_or_else(|| u32::try_from(a.dst.len().max(1)).unwrap_or(1));
    if streams == 0 {
        bail!("--streams must be at least 1");
    }
    let dsts: Vec<SocketAddrV4> = if let Some(base) = a.dst_base {
        (0..streams)
            .map(|i| {
                let off = u32::from(a.port_step)
                    .checked_mul(i)
                    .and_then(|o| o.checked_add(u32::from(base.port())))
                    .and_then(|p| u16::try_from(p).ok())
                    .with_context(|| format!("stream {i}: port beyond 65535"))?;
                Ok(SocketAddrV4::new(*base.ip(), off))
            })
            .collect::<Result<_>>()?
    } else if a.dst.is_empty() {
        bail!("give --dst or --dst-base");
    } else {
        (0..streams as usize)
            .map(|i| a.dst[i % a.dst.len()])
            .collect()
    };
    let pacing = if a.flat_out {
        Pacing::FlatOut
    } else if let Some(r) = a.rate {
        Pacing::Total(r)
    } else {
        Pacing::PerStream(a.pps)
    };
    Ok(SendConfig {
        dsts,
        pacing,
        threads: a.threads.max(1),
        duration: secs(a.duration)?,
        max_packets: a.max_packets,
        batch: a.batch.clamp(1, 1024),
        tag: a.tag,
        end_packets: a.end_packets,
        ramp: if a.ramp > 0.0 {
            secs(a.ramp)?
        } else {
            Duration::ZERO
        },
    })
}

fn recv_config(a: &RecvArgs, duration: Duration) -> RecvConfig {
    RecvConfig {
        tag: a.expect_tag,
        expect_streams: a.expect_streams,
        duration,
        max_packets: a.recv_max_packets,
        grace: Duration::from_millis(a.grace_ms),
        idle_exit: a.idle_exit_ms.map(Duration::from_millis),
        hlog_interval: Duration::from_millis(a.hlog_interval_ms.max(1)),
        seq_window: a.seq_window.clamp(64, 1 << 30),
        batch: 64,
    }
}

fn print_send(r: &SendReport) {
    eprintln!(
        "sent {} packets in {} streams over {:.2} s ({:.0} pps, offered {:.0}), {} send errors, ended by {}",
        r.sent, r.streams, r.elapsed_s, r.achieved_pps, r.offered_pps, r.send_errors, r.ended_by
    );
}

fn print_recv(r: &RecvReport, per_stream: bool) {
    let t = &r.totals;
    if per_stream {
        eprintln!("stream       sent   received     lost  reord    dup   p50(us)   p99(us)");
        for s in &r.streams {
            eprintln!(
                "{:>6} {:>10} {:>10} {:>8} {:>6} {:>6} {:>9.1} {:>9.1}",
                s.stream,
                s.sent,
                s.received,
                s.lost,
                s.reordered,
                s.duplicated,
                s.latency.p50_ns as f64 / 1e3,
                s.latency.p99_ns as f64 / 1e3
            );
        }
    }
    eprintln!(
        "received {} of {} packets: lost {}, reordered {}, duplicated {}; streams seen {} (expected {}, missing {}, sender count unknown {}); foreign {}; ended by {}",
        t.received,
        t.sent,
        t.lost,
        t.reordered,
        t.duplicated,
        t.streams_seen,
        t.streams_expected,
        t.streams_missing,
        t.streams_sent_unknown,
        t.foreign,
        r.ended_by
    );
    eprint!("{}", t.latency.table());
}

fn write_hlog(path: &PathBuf, log: &HlogLog, tag: &str) -> Result<()> {
    let mut buf = Vec::new();
    log.write(&mut buf, "sv-rtp one-way latency", Some(tag))?;
    fs::write(path, buf).with_context(|| format!("writing {}", path.display()))
}

fn emit(report: &RunReport, out: &OutArgs) -> Result<()> {
    let line = serde_json::to_string(report)?;
    if let Some(p) = &out.json {
        fs::write(p, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{line}");
    Ok(())
}

fn bind(addr: SocketAddrV4) -> Result<UdpSocket> {
    net::bind(addr, 16 << 20).with_context(|| format!("binding {addr}"))
}

fn read_report(p: &PathBuf) -> Result<RunReport> {
    let text = fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn print_check(name: &str, c: &DirectionCheck) {
    eprintln!(
        "{name}: {} streams, sent {}, delivered {}, lost {}, missing streams {}, duplicated {}, reordered {} => {}",
        c.streams,
        c.sent,
        c.delivered,
        c.lost,
        c.streams_missing,
        c.duplicated,
        c.reordered,
        if c.is_lossless() { "LOSSLESS" } else { "LOSS" }
    );
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let stop = AtomicBool::new(false);
    match cli.cmd {
        Cmd::Send { send, out } => {
            let cfg = send_config(&send)?;
            let sock = bind(send.bind)?;
            let tuning = SendTuning {
                batch_pacing: send.batch_pacing,
            };
            let r = run_sender_with(&sock, &cfg, &stop, tuning)?;
            print_send(&r);
            emit(
                &RunReport {
                    mode: "send".into(),
                    sender: Some(r),
                    receiver: None,
                    hlog: None,
                },
                &out,
            )?;
        }
        Cmd::Recv {
            bind: addr,
            recv,
            out,
        } => {
            let cfg = recv_config(&recv, secs(recv.recv_duration)?);
            let sock = bind(addr)?;
            let (r, log) = run_receiver(&sock, &cfg, None, &stop, None)?;
            print_recv(&r, recv.per_stream);
            if let Some(p) = &recv.hlog {
                write_hlog(p, &log, &recv.hlog_tag)?;
            }
            emit(
                &RunReport {
                    mode: "recv".into(),
                    sender: None,
                    receiver: Some(r),
                    hlog: recv.hlog.as_ref().map(|p| p.display().to_string()),
                },
                &out,
            )?;
        }
        Cmd::Peer { send, recv, out } => {
            if send.bind.port() == 0 {
                bail!("peer mode needs --bind IP:PORT with a fixed port (the edge relays to it)");
            }
            let cfg = send_config(&send)?;
            let rcfg = recv_config(&recv, cfg.duration);
            let sock = bind(send.bind)?;
            let done = AtomicBool::new(false);
            let (sr, rr) = std::thread::scope(|s| {
                let h = s.spawn(|| {
                    let r = run_sender(&sock, &cfg, &stop);
                    done.store(true, Ordering::Relaxed);
                    r
                });
                let rr = run_receiver(&sock, &rcfg, Some(&done), &stop, None);
                if rr.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                let sr = h.join();
                (sr, rr)
            });
            let sr = sr.map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
            let (rr, log) = rr?;
            print_send(&sr);
            print_recv(&rr, recv.per_stream);
            if let Some(p) = &recv.hlog {
                write_hlog(p, &log, &recv.hlog_tag)?;
            }
            emit(
                &RunReport {
                    mode: "peer".into(),
                    sender: Some(sr),
                    receiver: Some(rr),
                    hlog: recv.hlog.as_ref().map(|p| p.display().to_string()),
                },
                &out,
            )?;
        }
        Cmd::Check { send, recv, pair } => {
            let mut checks = Vec::new();
            if let Some(p) = pair {
                let (Some(a), Some(b)) = (p.first(), p.get(1)) else {
                    bail!("--pair needs two files");
                };
                let (ra, rb) = (read_report(a)?, read_report(b)?);
                for (name, s, r) in [("A->B", &ra, &rb), ("B->A", &rb, &ra)] {
                    let sender = s.sender.as_ref().context("report has no sender part")?;
                    let receiver = r.receiver.as_ref().context("report has no receiver part")?;
                    checks.push((name, check_direction(sender, receiver)));
                }
            } else if let (Some(s), Some(r)) = (send, recv) {
                let (rs, rr) = (read_report(&s)?, read_report(&r)?);
                let sender = rs
                    .sender
                    .as_ref()
                    .context("--send report has no sender part")?;
                let receiver = rr
                    .receiver
                    .as_ref()
                    .context("--recv report has no receiver part")?;
                checks.push(("send->recv", check_direction(sender, receiver)));
            } else {
                bail!("give --send S --recv R, or --pair A B");
            }
            let all_ok = checks.iter().all(|(_, c)| c.is_lossless());
            for (name, c) in &checks {
                print_check(name, c);
            }
            let json: serde_json::Map<String, serde_json::Value> = checks
                .iter()
                .map(|(n, c)| Ok(((*n).to_owned(), serde_json::to_value(c)?)))
                .collect::<Result<_>>()?;
            println!("{}", serde_json::Value::Object(json));
            return Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sv-rtp: {e:#}");
            ExitCode::from(2)
        }
    }
}
