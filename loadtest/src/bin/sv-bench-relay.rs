//! `sv-bench-relay`: the relay benchmark. In the two-arm lab, the same offered load through
//! (a) sipveil XDP, (b) sipveil's userspace fallback, (c) rtpengine (userspace, no kernel table),
//! (d) the ceiling (`sv_ceiling`, a minimal one-flow XDP forwarder). For each: the highest rate
//! without loss (counted by `sv_sink` on the receiver's veth), CPU time per relayed packet, and the
//! one-way latency distribution at a moderate load. See loadtest/README.md ("sv-bench-relay").

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value as Json, json};
use sipveil_loadtest::bench::{
    CpuTimes, CpuWindow, RateSearch, parse_pid_cpu_ticks, plot_latency_svg, ratio,
};
use sipveil_loadtest::hlog::read_intervals;
use sipveil_loadtest::lab::{self, Lab, Shape};
use sipveil_loadtest::livegen;
use sipveil_loadtest::procs::ChildGuard;
use sipveil_loadtest::report::RunReport;
use sipveil_loadtest::rtpengine::{NgClient, audio_sdp, media_endpoint};
use sipveil_loadtest::stats::{LatencySummary, new_total_histogram};

const A_PORT: u16 = 30_000;
const B_PORT: u16 = 30_000;
const EDGE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const EDGE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const INSTANCE: &str = lab::LAB_INSTANCE;
const CONTROL_SOCKET: &str = "/run/sipveil/bench-relay.sock";
const NG_PORT: u16 = 2223;
/// The ceiling's one flow: A sends to EDGE_A:CEILING_PORT.
const CEILING_PORT: u16 = 20_000;
/// Interface in sv-a (one end of an unused, down veth pair; this kernel has no dummy driver) that
/// keeps sv_gen loaded for live-frames generation.
const LIVE_IFACE: &str = "svgen0";

#[derive(Parser, Debug)]
#[command(
    name = "sv-bench-relay",
    about = "Relay benchmark: sipveil XDP / userspace fallback / rtpengine / XDP ceiling"
)]
struct Opts {
    /// The benchmark to run; `relay` is the only one (accepted so that `cargo xtask bench relay`
    /// can pass its arguments through unchanged).
    #[arg(value_parser = ["relay"])]
    which: Option<String>,
    /// The sipveil binary (default: next to this one).
    #[arg(long)]
    sipveil: Option<PathBuf>,
    /// The sv-rtp binary (default: next to this one).
    #[arg(long)]
    sv_rtp: Option<PathBuf>,
    #[arg(long, default_value = "rtpengine")]
    rtpengine: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "target/bench/relay")]
    out: PathBuf,
    /// Systems to measure, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "xdp,fallback,rtpengine,ceiling"
    )]
    systems: Vec<String>,
    /// Streams (relays / calls) in the zero-loss search and CPU windows.
    #[arg(long, default_value_t = 4)]
    search_streams: u32,
    /// Seconds per search trial (including a 1 s linear ramp).
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 20_000.0)]
    search_start: f64,
    #[arg(long, default_value_t = 2_000.0)]
    search_min: f64,
    #[arg(long, default_value_t = 4_000_000.0)]
    search_max: f64,
    /// Trials per system at most.
    #[arg(long, default_value_t = 12)]
    search_steps: u32,
    /// Bisection stops when the lossy and lossless rates are this close (relative).
    #[arg(long, default_value_t = 0.05)]
    resolution: f64,
    /// Generator threads (sendmmsg).
    #[arg(long, default_value_t = 1)]
    gen_threads: usize,
    /// The common offered rate (pps) of the CPU-per-packet window.
    #[arg(long, default_value_t = 20_000.0)]
    cpu_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    cpu_secs: f64,
    /// Idle baseline measurement (s) before the systems run.
    #[arg(long, default_value_t = 3.0)]
    baseline_secs: f64,
    /// The whole-system CPU figure is used for the ratios only when the idle baseline is at most
    /// this many busy CPUs (other load varies during the run by about as much as it is large).
    #[arg(long, default_value_t = 0.15)]
    quiet_baseline: f64,
    #[arg(long, default_value_t = 100)]
    latency_streams: u32,
    #[arg(long, default_value_t = 50.0)]
    latency_pps: f64,
    #[arg(long, default_value_t = 10.0)]
    latency_secs: f64,
    /// Map of sv_sink holding the packet count (default: the one whose name contains SINK).
    #[arg(long)]
    sink_map: Option<String>,
    #[arg(long, default_value_t = 0)]
    sink_index: usize,
    /// How relayed packets are counted: `sink` (sv_sink on b0, any rate) or `userspace`
    /// (sv-rtp recv in sv-b; only trustworthy up to the receiver's own limit, ~100-200 kpps here).
    #[arg(long, default_value = "sink", value_parser = ["sink", "userspace"])]
    counter: String,
    /// Use the lab as it is (brought up by someone else) and leave it up.
    #[arg(long)]
    external_lab: bool,
    /// Packet generator for the XDP systems (xdp, ceiling): `sendmmsg` (sv-rtp send, paced,
    /// ramped), `live` (BPF_PROG_TEST_RUN live frames with sv_gen, one flow, one 64-frame batch
    /// per call) or `auto` (live above --live-above pps). The userspace relays (fallback,
    /// rtpengine) always get sendmmsg.
    #[arg(long, default_value = "auto", value_parser = ["auto", "sendmmsg", "live"])]
    generator: String,
    #[arg(long, default_value_t = 100_000.0)]
    live_above: f64,
    /// Live frames per BPF_PROG_TEST_RUN call. 64 (one kernel batch) is right; larger values
    /// reproduce the loss of reused, relay-rewritten pages (see loadtest/README.md).
    #[arg(long, default_value_t = livegen::LIVE_CHUNK)]
    live_chunk: u64,
    /// With --external-lab: only run the live-frames generator self-test at these rates (pps).
    #[arg(long, value_delimiter = ',')]
    live_selftest: Vec<f64>,
    /// Skip the live generator's capacity run (flat out, sv_sink on ea0, no relay) that the
    /// relay-only figures are derived from.
    #[arg(long)]
    no_live_capacity: bool,
    /// Only bring the two-arm lab up (or down) and exit (for debugging with --external-lab).
    #[arg(long, value_parser = ["up", "down"])]
    lab_only: Option<String>,
}

/// Runs a command to completion within `limit`, returning stdout; fails on a non-zero exit.
fn run_cmd(what: &str, cmd: &mut Command, limit: Duration) -> Result<String> {
    let mut g = ChildGuard::spawn(
        what,
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let mut out = String::new();
    let mut err = String::new();
    let child = g.child_mut().ok_or_else(|| anyhow!("{what}: no child"))?;
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = so.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        let _ = tx.send((0, s));
    });
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = se.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        let _ = tx2.send((1, s));
    });
    let status = g.wait_bounded(limit)?;
    for _ in 0..2 {
        if let Ok((k, s)) = rx.recv_timeout(Duration::from_secs(2)) {
            if k == 0 {
                out = s;
            } else {
                err = s;
            }
        }
    }
    if !status.success() {
        bail!("{what} failed ({status}): {}", err.trim());
    }
    Ok(out)
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn read_cpu() -> Result<CpuTimes> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(CpuTimes::parse_proc_stat(&text)?)
}

fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

fn pid_cpu_ns(pid: Option<u32>) -> f64 {
    pid.and_then(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .and_then(|t| parse_pid_cpu_ticks(&t).ok())
        .map_or(0.0, |t| t as f64 * tick_ns())
}

fn children_cpu_ns() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage for the duration of the call.
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `f` on a thread that has entered network namespace `ns` (setns affects that thread only).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open netns fd; CLONE_NEWNET changes only this thread's network
        // namespace, which is what we want for sockets created below.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| anyhow!("bad MAC {text:?}"))?;
    }
    Ok(mac)
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage for the duration of the call.
    unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn iface_mac(ns: &str, iface: &str) -> Result<String> {
    let out = run_cmd(
        "ip link show",
        Command::new("ip").args(["-n", ns, "-j", "link", "show", iface]),
        Duration::from_secs(10),
    )?;
    let v: Json = serde_json::from_str(&out).context("ip -j link output")?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no MAC for {ns}/{iface}"))
}

struct Bench {
    o: Opts,
    sipveil: PathBuf,
    sv_rtp: PathBuf,
    baseline_busy_ns_per_s: f64,
    tag: u32,
    /// The system being measured (the live generator is used only for the XDP systems).
    current: String,
    /// The generator alone at the CPU-window rate (sv_sink on ea0, no relay).
    reference: Option<CpuWindow>,
    /// sv-rtp send paces with --batch-pacing (CPU windows).
    batch_pacing: bool,
}

/// The live generator with no relay in the path: flat out, sv_sink on ea0.
#[derive(Debug, Clone, Copy, Serialize)]
struct LiveCapacity {
    offered_pps: f64,
    achieved_pps: f64,
    sent: u64,
    arrived_at_edge: u64,
}

/// Everything measured for one system.
#[derive(Debug, Default, Serialize)]
struct SystemResult {
    name: String,
    /// Highest lossless rate (achieved pps of that trial).
    zero_loss_pps: Option<f64>,
    /// The generator could not reach the offered rate: the system's limit lies higher.
    generator_limited: bool,
    /// The generator of the trial that set `zero_loss_pps` (`sendmmsg` or `live`).
    zero_loss_generator: Option<String>,
    /// Live generator, saturated: the relay's own cost per packet, 1/zero_loss_pps minus the
    /// generator's and sink's cost per frame without a relay (the capacity run), ns.
    relay_only_ns_per_packet: Option<f64>,
    /// 1e9 / relay_only_ns_per_packet: what one CPU could relay if it did nothing else.
    relay_only_pps: Option<f64>,
    trials: Vec<Json>,
    cpu: Option<CpuWindow>,
    cpu_window_lossless: Option<bool>,
    cpu_ns_per_packet: Option<f64>,
    cpu_attributed_ns_per_packet: Option<f64>,
    /// Precise task runtimes (generator via getrusage, relay process via /proc), ÷ packets, minus
    /// the same for the generator-only reference window: the relay's cost including the work the
    /// kernel does for it inline in the generator's context (XDP, veth and UDP receive paths).
    cpu_tasks_ns_per_packet: Option<f64>,
    /// The generator-only window measured right before this system.
    reference_cpu: Option<CpuWindow>,
    /// Whole-system busy time (/proc/stat) of the window minus that of the reference window
    /// (scaled to the same length), ÷ packets: the idle baseline and the generator cancel out.
    /// Tick-sampled, needs a quiet machine.
    cpu_whole_vs_reference_ns_per_packet: Option<f64>,
    latency: Option<LatencySummary>,
    latency_lost: Option<u64>,
    latency_hlog: Option<String>,
    errors: Vec<String>,
}

/// A started system: the relay process (if any), the A-side destinations, how to tear it down.
struct Running {
    process: Option<ChildGuard>,
    dsts: Vec<SocketAddrV4>,
    /// rtpengine: generation of the current set of calls (see [`rtpengine_calls`]).
    rtpengine_generation: Option<u32>,
    teardown: Vec<Vec<String>>,
    sipveil: PathBuf,
}

impl Running {
    fn relay_pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildGuard::pid)
    }

    fn shutdown(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        for args in std::mem::take(&mut self.teardown) {
            let _ = run_cmd(
                "teardown",
                Command::new(&self.sipveil).args(&args),
                Duration::from_secs(20),
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sets up `n` rtpengine calls of generation `generation` (A = 198.18.1.2:30000 on interface a,
/// B = 198.18.2.2:30000 on interface b) and deletes the calls of `previous`, if any; returns where A
/// sends each call's RTP. Runs the ng client inside sv-edge (rtpengine listens on its loopback).
///
/// Fresh calls per trial: once a port's receive queue has overflowed a few times, rtpengine keeps
/// discarding on that port ("UDP receive queue exceeded 5 times: discarding packet"), so a trial
/// after an overloaded one would measure nothing on the old calls.
fn rtpengine_calls(
    n: u32,
    generation: u32,
    previous: Option<(u32, usize)>,
) -> Result<Vec<SocketAddrV4>> {
    in_netns(lab::NS_EDGE, move || {
        let mut ng = NgClient::new(SocketAddr::from((Ipv4Addr::LOCALHOST, NG_PORT)))?;
        let start = Instant::now();
        while ng.ping().is_err() {
            if start.elapsed() > Duration::from_secs(15) {
                bail!("rtpengine does not answer ng ping");
            }
        }
        if let Some((p, count)) = previous {
            for i in 0..count {
                // a call that is already gone is fine
                let _ = ng.delete(&format!("bench-{p}-{i}"), &format!("a-{i}"));
            }
        }
        let mut dsts = Vec::new();
        for i in 0..n {
            let call = format!("bench-{generation}-{i}");
            let from = format!("a-{i}");
            let session = u64::from(generation) << 32 | u64::from(i);
            let to_b = ng.offer(
                &call,
                &from,
                &audio_sdp(lab::A_ADDR, A_PORT, session),
                Some(["a", "b"]),
            )?;
            let b_side = media_endpoint(&to_b)?;
            if *b_side.ip() != EDGE_B {
                bail!("rtpengine offered {b_side} to B, expected {EDGE_B}");
            }
            let to_a = ng.answer(
                &call,
                &from,
                &format!("b-{i}"),
                &audio_sdp(lab::B_ADDR, B_PORT, session | 1 << 63),
            )?;
            dsts.push(media_endpoint(&to_a)?);
        }
        Ok(dsts)
    })
}

/// One sipveil control-socket request.
fn control(req: &Json) -> Result<Json> {
    let mut s = UnixStream::connect(CONTROL_SOCKET)
        .with_context(|| format!("connecting {CONTROL_SOCKET}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    let v: Json = serde_json::from_str(&answer).context("control answer")?;
    if v.get("ok") != Some(&Json::Bool(true)) {
        bail!("control request {req} refused: {answer}");
    }
    Ok(v)
}

impl Bench {
    fn lab_xdp(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["lab-xdp"];
        full.extend_from_slice(args);
        run_cmd(
            &format!("sipveil {}", full.join(" ")),
            Command::new(&self.sipveil).args(&full),
            Duration::from_secs(30),
        )
    }

    /// Replaces the program on the receiver's veth (b0): sv_sink for counting, sv_pass otherwise.
    fn b0_program(&self, program: &str) -> Result<()> {
        let _ = self.lab_xdp(&["detach", "--netns", lab::NS_B, "--iface", "b0"]);
        let ports = format!("{B_PORT}-{B_PORT}");
        let mut args = vec![
            "attach",
            "--netns",
            lab::NS_B,
            "--iface",
            "b0",
            "--program",
            program,
        ];
        if program == "sv_sink" {
            // count and drop only what is addressed to B's receive port
            args.extend(["--sink-ports", ports.as_str()]);
        }
        self.lab_xdp(&args)?;
        Ok(())
    }

    fn read_sink(&self) -> Result<u64> {
        self.read_sink_at(lab::NS_B, "b0")
    }

    fn read_sink_at(&self, ns: &str, iface: &str) -> Result<u64> {
        let out = self.lab_xdp(&["read-sink", "--netns", ns, "--iface", iface, "--json"])?;
        let v: Json = serde_json::from_str(out.trim()).context("read-sink output")?;
        let maps = v
            .get("maps")
            .and_then(Json::as_object)
            .ok_or_else(|| anyhow!("read-sink: no maps in {out}"))?;
        let arr = match &self.o.sink_map {
            Some(name) => maps.get(name),
            None => maps
                .iter()
                .find(|(k, _)| k.to_uppercase().contains("SINK"))
                .map(|(_, v)| v)
                .or_else(|| (maps.len() == 1).then(|| maps.values().next()).flatten()),
        }
        .and_then(Json::as_array)
        .ok_or_else(|| anyhow!("read-sink: cannot pick the packet counter map in {out}"))?;
        arr.get(self.o.sink_index)
            .and_then(Json::as_u64)
            .ok_or_else(|| anyhow!("read-sink: no index {} in {out}", self.o.sink_index))
    }

    fn measure_baseline(&mut self) -> Result<()> {
        let c0 = read_cpu()?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(self.o.baseline_secs));
        let busy = read_cpu()?.delta(&c0).busy() as f64 * tick_ns();
        self.baseline_busy_ns_per_s = busy / t0.elapsed().as_secs_f64();
        eprintln!(
            "idle baseline: {:.3} CPUs busy (other load on the machine)",
            self.baseline_busy_ns_per_s / 1e9
        );
        Ok(())
    }

    fn start_sipveil(&self, xdp: bool, n: u32) -> Result<Running> {
        fs::create_dir_all(&self.o.out)?;
        let config = self.o.out.join(if xdp {
            "sipveil-xdp.toml"
        } else {
            "sipveil-fallback.toml"
        });
        fs::write(
            &config,
            format!(
                "[dataplane]\ninterfaces = [\"ea0\", \"eb0\"]\nxdp = \"{}\"\ninstance = \"{INSTANCE}\"\n\n[media]\nport_min = 20000\nport_max = 29999\nidle_timeout_secs = 600\naddresses = {{ a = \"{EDGE_A}\", b = \"{EDGE_B}\" }}\nworkers = 1\n\n[control]\nsocket = \"{CONTROL_SOCKET}\"\n",
                if xdp { "driver" } else { "off" }
            ),
        )?;
        let mut cmd = Command::new(&self.sipveil);
        cmd.args(["run", "--config"]).arg(&config).args([
            "--netns",
            lab::NS_EDGE,
            "--instance",
            INSTANCE,
        ]);
        if !xdp {
            cmd.arg("--no-xdp");
        }
        let log = fs::File::create(self.o.out.join(if xdp {
            "sipveil-xdp.log"
        } else {
            "sipveil-fallback.log"
        }))?;
        let mut guard = ChildGuard::spawn(
            "sipveil run",
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log),
        )?;
        let mut running = Running {
            process: None,
            dsts: Vec::new(),
            rtpengine_generation: None,
            teardown: vec![vec![
                "unload".into(),
                "--instance".into(),
                INSTANCE.into(),
                "--netns".into(),
                lab::NS_EDGE.into(),
            ]],
            sipveil: self.sipveil.clone(),
        };
        let stdout = guard
            .child_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| anyhow!("sipveil: no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        running.process = Some(guard);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| anyhow!("sipveil did not report ready within 30 s"))?;
            if let Ok(v) = serde_json::from_str::<Json>(&line)
                && v.get("ready") == Some(&Json::Bool(true))
            {
                let mode = v.get("mode").and_then(Json::as_str).unwrap_or("?");
                let want = if xdp { "xdp" } else { "userspace" };
                if mode != want {
                    bail!("sipveil runs in mode {mode}, wanted {want}");
                }
                break;
            }
        }
        for _ in 0..n {
            let v = control(&json!({
                "cmd": "relay-open",
                "a_peer": SocketAddrV4::new(lab::A_ADDR, A_PORT).to_string(),
                "b_peer": SocketAddrV4::new(lab::B_ADDR, B_PORT).to_string(),
                "latch": true, "strict": false, "rtcp_mux": false, "count": 1,
            }))?;
            let edge = v
                .pointer("/relays/0/a/edge")
                .and_then(Json::as_str)
                .and_then(|s| s.parse::<SocketAddrV4>().ok())
                .ok_or_else(|| anyhow!("relay-open answer without a.edge: {v}"))?;
            running.dsts.push(edge);
        }
        Ok(running)
    }

    fn spawn_rtpengine(&self) -> Result<ChildGuard> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.o.out.join("rtpengine.log"))?;
        Ok(ChildGuard::spawn(
            "rtpengine",
            Command::new("ip")
                .args(["netns", "exec", lab::NS_EDGE])
                .arg(&self.o.rtpengine)
                .args([
                    format!("--interface=a/{EDGE_A}"),
                    format!("--interface=b/{EDGE_B}"),
                    format!("--listen-ng=127.0.0.1:{NG_PORT}"),
                    "--table=-1".into(),
                    "--foreground".into(),
                    "--log-stderr".into(),
                    "--port-min=20000".into(),
                    "--port-max=29999".into(),
                    "--timeout=600".into(),
                    "--num-threads=2".into(),
                    "-L".into(),
                    "4".into(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )?)
    }

    fn start_rtpengine(&self, n: u32) -> Result<Running> {
        let _ = fs::remove_file(self.o.out.join("rtpengine.log"));
        let guard = self.spawn_rtpengine()?;
        let mut running = Running {
            process: Some(guard),
            dsts: Vec::new(),
            rtpengine_generation: None,
            teardown: Vec::new(),
            sipveil: self.sipveil.clone(),
        };
        running.dsts = rtpengine_calls(n, 0, None)?;
        running.rtpengine_generation = Some(0);
        Ok(running)
    }

    fn start_ceiling(&self, n: u32) -> Result<Running> {
        let b0_mac = iface_mac(lab::NS_B, "b0")?;
        let eb0_mac = iface_mac(lab::NS_EDGE, "eb0")?;
        let running = Running {
            process: None,
            dsts: vec![SocketAddrV4::new(EDGE_A, CEILING_PORT); n as usize],
            rtpengine_generation: None,
            teardown: vec![
                [
                    "lab-xdp",
                    "detach",
                    "--netns",
                    lab::NS_EDGE,
                    "--iface",
                    "ea0",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ],
            sipveil: self.sipveil.clone(),
        };
        // The same rewrite a relay does (A -> edge:P becomes edge:P -> B), redirected to eb0.
        let matched = SocketAddrV4::new(EDGE_A, CEILING_PORT).to_string();
        let new_src = SocketAddrV4::new(EDGE_B, CEILING_PORT).to_string();
        let new_dst = SocketAddrV4::new(lab::B_ADDR, B_PORT).to_string();
        self.lab_xdp(&[
            "attach",
            "--netns",
            lab::NS_EDGE,
            "--iface",
            "ea0",
            "--program",
            "sv_ceiling",
            "--match",
            &matched,
            "--new-src",
            &new_src,
            "--new-dst",
            &new_dst,
            "--src-mac",
            &eb0_mac,
            "--dst-mac",
            &b0_mac,
            "--egress",
            "eb0",
        ])?;
        Ok(running)
    }

    /// The generator alone at the CPU-window rate and streams: sv_sink on ea0 counts and drops
    /// what a relay would get. What the generator's process costs here (including the kernel
    /// work done in its context up to ea0's XDP) is subtracted from every system's task figure.
    fn reference_window(&mut self) -> Result<CpuWindow> {
        let _ = self.lab_xdp(&["detach", "--netns", lab::NS_EDGE, "--iface", "ea0"]);
        self.lab_xdp(&[
            "attach",
            "--netns",
            lab::NS_EDGE,
            "--iface",
            "ea0",
            "--program",
            "sv_sink",
            "--sink-ports",
            "20000-29999",
        ])?;
        let streams = self.o.search_streams as usize;
        let run = Running {
            process: None,
            dsts: (0..streams)
                .map(|i| {
                    let port = u16::try_from(20_000 + 2 * i).unwrap_or(20_000);
                    SocketAddrV4::new(EDGE_A, port)
                })
                .collect(),
            rtpengine_generation: None,
            teardown: vec![
                [
                    "lab-xdp",
                    "detach",
                    "--netns",
                    lab::NS_EDGE,
                    "--iface",
                    "ea0",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ],
            sipveil: self.sipveil.clone(),
        };
        let previous = std::mem::replace(&mut self.current, "reference".into());
        self.tag = self.tag.wrapping_add(1);
        let result = (|| -> Result<CpuWindow> {
            let before = self.read_sink_at(lab::NS_EDGE, "ea0")?;
            self.batch_pacing = true;
            let window = self.offer_load(&run, streams, self.o.cpu_rate, self.o.cpu_secs, 0);
            self.batch_pacing = false;
            let (sent, _, mut cpu) = window?;
            let got = self
                .read_sink_at(lab::NS_EDGE, "ea0")?
                .saturating_sub(before);
            cpu.packets = got;
            eprintln!(
                "generator-only reference at {:.0} pps: sent {sent}, at ea0 {got}, generator {:.0} ns/packet",
                self.o.cpu_rate,
                cpu.generator_ns / got.max(1) as f64
            );
            Ok(cpu)
        })();
        self.current = previous;
        drop(run);
        result
    }

    /// Generator self-test (lab up, nothing on ea0): counts with sv_sink on ea0 what the
    /// live-frames generator delivers to the edge at each rate, with no relay in the path.
    fn live_selftest(&mut self, rates: &[f64], secs: f64) -> Result<Vec<LiveCapacity>> {
        self.prepare_live()?;
        let previous = std::mem::replace(&mut self.current, "selftest".into());
        let _ = self.lab_xdp(&["detach", "--netns", lab::NS_EDGE, "--iface", "ea0"]);
        let ports = format!("{CEILING_PORT}-{CEILING_PORT}");
        self.lab_xdp(&[
            "attach",
            "--netns",
            lab::NS_EDGE,
            "--iface",
            "ea0",
            "--program",
            "sv_sink",
            "--sink-ports",
            &ports,
        ])?;
        let run = Running {
            process: None,
            dsts: vec![SocketAddrV4::new(EDGE_A, CEILING_PORT)],
            rtpengine_generation: None,
            teardown: vec![
                [
                    "lab-xdp",
                    "detach",
                    "--netns",
                    lab::NS_EDGE,
                    "--iface",
                    "ea0",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ],
            sipveil: self.sipveil.clone(),
        };
        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            for &rate in rates {
                let before = self.read_sink_at(lab::NS_EDGE, "ea0")?;
                let (sent, achieved, _) = self.offer_live(&run, rate, secs)?;
                let got = self
                    .read_sink_at(lab::NS_EDGE, "ea0")?
                    .saturating_sub(before);
                eprintln!(
                    "live generator self-test: offered {rate:.0} pps (achieved {achieved:.0}): sent {sent}, arrived at ea0 {got} ({:.3} %)",
                    100.0 * got as f64 / sent.max(1) as f64
                );
                out.push(LiveCapacity {
                    offered_pps: rate,
                    achieved_pps: achieved,
                    sent,
                    arrived_at_edge: got,
                });
            }
            Ok(())
        })();
        self.current = previous;
        drop(run);
        result.map(|()| out)
    }

    fn use_live(&self, rate: f64) -> bool {
        if !matches!(self.current.as_str(), "xdp" | "ceiling" | "selftest") {
            return false;
        }
        match self.o.generator.as_str() {
            "live" => true,
            "sendmmsg" => false,
            _ => rate > self.o.live_above,
        }
    }

    /// Attaches sv_gen (generic mode) to an unused interface in sv-a, so the program stays loaded
    /// and its link is pinned where [`livegen::prog_fd_from_pinned_link`] finds it.
    fn prepare_live(&self) -> Result<()> {
        let _ = run_cmd(
            "ip link add svgen0",
            Command::new("ip").args([
                "-n",
                lab::NS_A,
                "link",
                "add",
                LIVE_IFACE,
                "type",
                "veth",
                "peer",
                "name",
                "svgen1",
            ]),
            Duration::from_secs(10),
        );
        let _ = self.lab_xdp(&["detach", "--netns", lab::NS_A, "--iface", LIVE_IFACE]);
        self.lab_xdp(&[
            "attach",
            "--netns",
            lab::NS_A,
            "--iface",
            LIVE_IFACE,
            "--program",
            "sv_gen",
            "--mode",
            "generic",
            "--rtp-seq",
        ])?;
        Ok(())
    }

    /// One live-frames window: a single flow to the first destination, out of a0.
    fn offer_live(&self, run: &Running, rate: f64, secs: f64) -> Result<(u64, f64, CpuWindow)> {
        let dst = *run.dsts.first().ok_or_else(|| anyhow!("no destination"))?;
        let src_mac = parse_mac(&iface_mac(lab::NS_A, "a0")?)?;
        let dst_mac = parse_mac(&iface_mac(lab::NS_EDGE, "ea0")?)?;
        let frame = livegen::build_frame(
            src_mac,
            dst_mac,
            SocketAddrV4::new(lab::A_ADDR, A_PORT),
            dst,
            self.tag,
            0,
        );
        let total = (rate * secs).ceil() as u64;
        let pin = format!("{}/{}-{LIVE_IFACE}/link", lab::LAB_PIN_DIR, lab::NS_A);
        let chunk = self.o.live_chunk;
        let relay0 = pid_cpu_ns(run.relay_pid());
        let cpu0 = read_cpu()?;
        let t0 = Instant::now();
        let (sent, gen_ns) = in_netns(lab::NS_A, move || {
            let prog = livegen::prog_fd_from_pinned_link(&pin)
                .with_context(|| format!("sv_gen program behind {pin}"))?;
            let name = std::ffi::CString::new("a0")?;
            // SAFETY: a valid NUL-terminated interface name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                bail!("no a0 in {}", lab::NS_A);
            }
            let c0 = thread_cpu_ns();
            let sent = livegen::send_paced(
                &prog,
                &frame,
                ifindex,
                total,
                Some(rate),
                Duration::from_secs_f64(secs + 0.2),
                chunk,
            )?;
            Ok((sent, thread_cpu_ns() - c0))
        })?;
        let elapsed = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        let cpu = read_cpu()?.delta(&cpu0);
        let window_s = t0.elapsed().as_secs_f64();
        let tn = tick_ns();
        Ok((
            sent,
            sent as f64 / elapsed.max(1e-9),
            CpuWindow {
                window_s,
                system_busy_ns: cpu.busy() as f64 * tn,
                softirq_ns: cpu.softirq as f64 * tn,
                generator_ns: gen_ns,
                relay_process_ns: (pid_cpu_ns(run.relay_pid()) - relay0).max(0.0),
                baseline_ns: self.baseline_busy_ns_per_s * window_s,
                packets: 0,
            },
        ))
    }

    /// The linear ramp at the start of every offered-load window.
    fn ramp_secs(secs: f64) -> f64 {
        (secs / 3.0).min(1.0)
    }

    /// Packets a window of `secs` at `rate` (after its ramp) should send.
    fn expected_packets(rate: f64, secs: f64) -> f64 {
        rate * (secs - Self::ramp_secs(secs) / 2.0)
    }

    fn dst_list(dsts: &[SocketAddrV4]) -> String {
        dsts.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One generator run at `rate` for `secs`; returns (sender report, cpu window sans packets).
    fn offer_load(
        &self,
        run: &Running,
        streams: usize,
        rate: f64,
        secs: f64,
        end_packets: u32,
    ) -> Result<(u64, f64, CpuWindow)> {
        if self.use_live(rate) {
            return self.offer_live(run, rate, secs);
        }
        let dsts = &run.dsts[..streams.min(run.dsts.len())];
        let max_packets = (rate * secs).ceil() as u64;
        let ramp = Self::ramp_secs(secs);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lab::NS_A])
            .arg(&self.sv_rtp)
            .args(["send", "--bind"])
            .arg(SocketAddrV4::new(lab::A_ADDR, A_PORT).to_string())
            .arg("--dst")
            .arg(Self::dst_list(dsts))
            .arg("--rate")
            .arg(format!("{rate:.0}"))
            .arg("--threads")
            .arg(self.o.gen_threads.to_string())
            .args(["--batch", "64", "--end-packets", &end_packets.to_string()])
            .arg("--duration")
            .arg(format!("{secs}"))
            .arg("--ramp")
            .arg(format!("{ramp}"))
            .arg("--max-packets")
            .arg(max_packets.to_string())
            .arg("--tag")
            .arg(self.tag.to_string());
        if self.batch_pacing {
            // CPU windows: no spinning between slots, so the generator's CPU time is its sending
            // work only, which the task figure subtracts (a spinning pacer would hide relay work
            // done inline in its context, and fill the whole-system figure with spin)
            cmd.arg("--batch-pacing");
        }
        let relay0 = pid_cpu_ns(run.relay_pid());
        let kids0 = children_cpu_ns();
        let cpu0 = read_cpu()?;
        let t0 = Instant::now();
        let out = run_cmd(
            "sv-rtp send",
            &mut cmd,
            Duration::from_secs_f64(secs + 20.0),
        )?;
        std::thread::sleep(Duration::from_millis(300)); // in-flight packets drain
        let cpu = read_cpu()?.delta(&cpu0);
        let window_s = t0.elapsed().as_secs_f64();
        let generator_ns = children_cpu_ns() - kids0;
        let relay_ns = (pid_cpu_ns(run.relay_pid()) - relay0).max(0.0);
        let report: RunReport = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| anyhow!("sv-rtp send printed no report: {out}"))?;
        let sender = report
            .sender
            .ok_or_else(|| anyhow!("report without sender"))?;
        let tn = tick_ns();
        Ok((
            sender.sent,
            sender.achieved_pps,
            CpuWindow {
                window_s,
                system_busy_ns: cpu.busy() as f64 * tn,
                softirq_ns: cpu.softirq as f64 * tn,
                generator_ns,
                relay_process_ns: relay_ns,
                baseline_ns: self.baseline_busy_ns_per_s * window_s,
                packets: 0,
            },
        ))
    }

    /// Offered load, counted at the receiver: (lossless, achieved pps, sent, relayed, cpu window).
    fn trial(
        &mut self,
        run: &mut Running,
        streams: usize,
        rate: f64,
        secs: f64,
    ) -> Result<(bool, f64, u64, u64, CpuWindow)> {
        // A fresh tag per trial: stragglers of an earlier trial are not counted.
        self.tag = self.tag.wrapping_add(1);
        if let Some(g) = run.rtpengine_generation {
            // A fresh rtpengine per trial: once a port's receive queue overflowed a few times,
            // rtpengine keeps discarding there, and deleted calls linger (delete-delay), so
            // new calls in the same process did not reliably relay again.
            if let Some(mut old) = run.process.take() {
                old.stop();
            }
            run.process = Some(self.spawn_rtpengine()?);
            let n = u32::try_from(streams).unwrap_or(u32::MAX);
            run.dsts = rtpengine_calls(n, g + 1, None)?;
            run.rtpengine_generation = Some(g + 1);
        }
        if self.o.counter == "userspace" {
            let json_path = self.o.out.join("trial-recv.json");
            let _ = fs::remove_file(&json_path);
            let mut recv = ChildGuard::spawn(
                "sv-rtp recv (trial)",
                Command::new("ip")
                    .args(["netns", "exec", lab::NS_B])
                    .arg(&self.sv_rtp)
                    .args(["recv", "--bind"])
                    .arg(SocketAddrV4::new(lab::B_ADDR, B_PORT).to_string())
                    .args(["--expect-streams", &streams.to_string()])
                    .args(["--expect-tag", &self.tag.to_string()])
                    .args(["--recv-duration", &format!("{}", secs + 5.0)])
                    .args(["--grace-ms", "300", "--idle-exit-ms", "1500"])
                    .arg("--json")
                    .arg(&json_path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            std::thread::sleep(Duration::from_millis(300));
            let (sent, achieved, mut cpu) = self.offer_load(run, streams, rate, secs, 3)?;
            let st = recv.wait_bounded(Duration::from_secs(10))?;
            if !st.success() {
                bail!("sv-rtp recv failed ({st})");
            }
            let report: RunReport = serde_json::from_str(&fs::read_to_string(&json_path)?)?;
            let r = report
                .receiver
                .ok_or_else(|| anyhow!("no receiver report"))?;
            // The receiver is reaped after the window closes, so its CPU is not subtracted: with
            // this counter the whole-system figure includes the userspace receiver.
            cpu.packets = r.totals.received;
            let ok = r.totals.lost == 0
                && r.totals.duplicated == 0
                && r.totals.streams_missing == 0
                && r.totals.received == sent
                && sent > 0;
            return Ok((ok, achieved, sent, r.totals.received, cpu));
        }
        let before = self.read_sink()?;
        let (sent, achieved, mut cpu) = self.offer_load(run, streams, rate, secs, 0)?;
        let after = self.read_sink()?;
        let got = after.saturating_sub(before);
        cpu.packets = got;
        Ok((got == sent && sent > 0, achieved, sent, got, cpu))
    }

    fn measure(&mut self, name: &str, res: &mut SystemResult) -> Result<()> {
        // The generator alone, right before this system (other load drifts during a run).
        match self.reference_window() {
            Ok(r) => self.reference = Some(r),
            Err(e) => {
                self.reference = None;
                res.errors.push(format!("generator-only reference: {e:#}"));
            }
        }
        res.reference_cpu = self.reference;
        self.current = name.to_owned();
        let n = self.o.latency_streams.max(self.o.search_streams);
        let mut run = match name {
            "xdp" => self.start_sipveil(true, n)?,
            "fallback" => self.start_sipveil(false, n)?,
            "rtpengine" => self.start_rtpengine(n)?,
            "ceiling" => self.start_ceiling(n)?,
            other => bail!("unknown system {other}"),
        };
        // Latency first (userspace receiver, sv_pass on b0), then the sink-counted runs.
        if let Err(e) = self.latency(name, &run, res) {
            res.errors.push(format!("latency: {e:#}"));
        }
        let sink = self.o.counter == "sink";
        if sink {
            self.b0_program("sv_sink")?;
        }
        let streams = self.o.search_streams as usize;
        let result = (|| -> Result<()> {
            let this = &mut *self;
            // CPU per packet at the common rate
            let (cpu_rate, cpu_secs) = (this.o.cpu_rate, this.o.cpu_secs);
            this.batch_pacing = true;
            let window = this.trial(&mut run, streams, cpu_rate, cpu_secs);
            this.batch_pacing = false;
            let (ok, _ach, sent, got, cpu) = window?;
            eprintln!(
                "  [{name}] cpu window at {:.0} pps: sent {sent}, relayed {got}, {:.0} ns/packet (attributed {:.0})",
                cpu_rate,
                cpu.ns_per_packet().unwrap_or(f64::NAN),
                cpu.attributed_ns_per_packet().unwrap_or(f64::NAN)
            );
            res.cpu_window_lossless = Some(ok);
            res.cpu_ns_per_packet = cpu.ns_per_packet();
            res.cpu_attributed_ns_per_packet = cpu.attributed_ns_per_packet();
            res.cpu_tasks_ns_per_packet = this.reference.and_then(|r| {
                let own = (cpu.generator_ns + cpu.relay_process_ns) / cpu.packets.max(1) as f64;
                (r.packets > 0 && cpu.packets > 0).then(|| own - r.generator_ns / r.packets as f64)
            });
            res.cpu_whole_vs_reference_ns_per_packet = this.reference.and_then(|r| {
                let scale = cpu.window_s / r.window_s.max(1e-9);
                let net = cpu.system_busy_ns - r.system_busy_ns * scale;
                (cpu.packets > 0).then(|| net / cpu.packets as f64)
            });
            res.cpu = Some(cpu);

            let mut search = RateSearch::new(
                this.o.search_start,
                this.o.search_min,
                this.o.search_max,
                this.o.resolution,
                this.o.search_steps,
            );
            let step_secs = this.o.step_secs;
            let mut limited_strikes = 0u32;
            while let Some(rate) = search.next_rate() {
                let (ok, achieved, sent, got, cpu) =
                    this.trial(&mut run, streams, rate, step_secs)?;
                let expected = if this.use_live(rate) {
                    rate * step_secs
                } else {
                    Self::expected_packets(rate, step_secs)
                };
                let limited = (sent as f64) < expected * 0.97
                    || achieved < rate * 0.97 && this.use_live(rate);
                eprintln!(
                    "  [{name}] offered {rate:.0} pps (achieved {achieved:.0}): sent {sent}, relayed {got} => {}{}",
                    if ok { "lossless" } else { "LOSS" },
                    if limited { " (generator-limited)" } else { "" }
                );
                let generator = if this.use_live(rate) {
                    "live"
                } else {
                    "sendmmsg"
                };
                res.trials.push(json!({
                    "generator": generator,
                    "offered_pps": rate, "achieved_pps": achieved, "sent": sent,
                    "relayed": got, "lossless": ok, "generator_limited": limited,
                    "cpu_ns_per_packet": cpu.ns_per_packet(),
                    "cpu_attributed_ns_per_packet": cpu.attributed_ns_per_packet(),
                }));
                if ok {
                    // the steady rate after the ramp; when the generator fell short, what it
                    // actually sustained
                    let steady = if limited && this.use_live(rate) {
                        achieved
                    } else if limited {
                        sent as f64 / (step_secs - Self::ramp_secs(step_secs) / 2.0)
                    } else {
                        rate
                    };
                    if res.zero_loss_pps.is_none_or(|z| steady > z) {
                        res.zero_loss_pps = Some(steady);
                        res.zero_loss_generator = Some(generator.to_owned());
                    }
                }
                if limited && ok {
                    // The generator fell short (other load on the machine can do that for a
                    // trial); twice in a row means it is the bottleneck and higher offers measure
                    // nothing new. A saturated live trial is the capacity figure itself (the
                    // best of three is kept).
                    limited_strikes += 1;
                    if limited_strikes >= if generator == "live" { 3 } else { 2 } {
                        res.generator_limited = true;
                        break;
                    }
                    if generator == "live" {
                        // saturated: repeat at this rate (not recorded, so the search cannot end
                        // at its maximum before the third saturated trial)
                        continue;
                    }
                } else {
                    limited_strikes = 0;
                }
                search.record(rate, ok);
            }
            Ok(())
        })();
        let restore = if sink {
            self.b0_program(lab::PEER_PROGRAM)
        } else {
            Ok(())
        };
        run.shutdown();
        result?;
        restore?;
        Ok(())
    }

    fn latency(&self, name: &str, run: &Running, res: &mut SystemResult) -> Result<()> {
        let hlog = self.o.out.join(format!("latency-{name}.hlog"));
        let json_path = self.o.out.join(format!("latency-{name}.json"));
        let n = self.o.latency_streams as usize;
        let secs = self.o.latency_secs;
        let mut recv = ChildGuard::spawn(
            "sv-rtp recv",
            Command::new("ip")
                .args(["netns", "exec", lab::NS_B])
                .arg(&self.sv_rtp)
                .args(["recv", "--bind"])
                .arg(SocketAddrV4::new(lab::B_ADDR, B_PORT).to_string())
                .args(["--expect-streams", &n.to_string()])
                .args(["--expect-tag", &self.tag.to_string()])
                .args(["--recv-duration", &format!("{}", secs + 5.0)])
                .args(["--grace-ms", "500", "--hlog-tag", name])
                .arg("--hlog")
                .arg(&hlog)
                .arg("--json")
                .arg(&json_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let dsts = &run.dsts[..n.min(run.dsts.len())];
        run_cmd(
            "sv-rtp send (latency)",
            Command::new("ip")
                .args(["netns", "exec", lab::NS_A])
                .arg(&self.sv_rtp)
                .args(["send", "--bind"])
                .arg(SocketAddrV4::new(lab::A_ADDR, A_PORT).to_string())
                .arg("--dst")
                .arg(Self::dst_list(dsts))
                .args(["--pps", &format!("{}", self.o.latency_pps)])
                .args(["--duration", &format!("{secs}")])
                .args(["--tag", &self.tag.to_string()]),
            Duration::from_secs_f64(secs + 20.0),
        )?;
        let st = recv.wait_bounded(Duration::from_secs_f64(10.0))?;
        if !st.success() {
            bail!("sv-rtp recv failed ({st})");
        }
        let report: RunReport = serde_json::from_str(&fs::read_to_string(&json_path)?)?;
        let r = report
            .receiver
            .ok_or_else(|| anyhow!("no receiver report"))?;
        eprintln!(
            "  [{name}] latency at {n} x {} pps: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, lost {}",
            self.o.latency_pps,
            r.totals.latency.p50_ns as f64 / 1e3,
            r.totals.latency.p99_ns as f64 / 1e3,
            r.totals.latency.p999_ns as f64 / 1e3,
            r.totals.lost
        );
        res.latency = Some(r.totals.latency);
        res.latency_lost = Some(r.totals.lost);
        res.latency_hlog = Some(hlog.display().to_string());
        Ok(())
    }
}

fn load_hlog_total(path: &Path) -> Option<Histogram<u64>> {
    let bytes = fs::read(path).ok()?;
    let mut total = new_total_histogram();
    for (_, i) in read_intervals(&bytes).ok()? {
        let _ = total.add(&i.histogram);
    }
    Some(total)
}

fn run() -> Result<bool> {
    let o = Opts::parse();
    let sipveil = o.sipveil.clone().unwrap_or_else(|| sibling("sipveil"));
    let sv_rtp = o.sv_rtp.clone().unwrap_or_else(|| sibling("sv-rtp"));
    match o.lab_only.as_deref() {
        Some("up") => {
            Lab::up(Shape::TwoArm, &sipveil).map_err(|e| anyhow!("lab up: {e}"))?;
            return Ok(true);
        }
        Some(_) => {
            Lab::down().map_err(|e| anyhow!("lab down: {e}"))?;
            return Ok(true);
        }
        None => {}
    }
    fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut bench = Bench {
        o,
        sipveil,
        sv_rtp,
        baseline_busy_ns_per_s: 0.0,
        tag: 0x5256,
        current: String::new(),
        reference: None,
        batch_pacing: false,
    };
    let session = if bench.o.external_lab {
        eprintln!("lab: using the lab as it is (--external-lab)");
        None
    } else {
        eprintln!("lab: bringing up two-arm (torn down at the end)");
        Some(Lab::session(Shape::TwoArm, &bench.sipveil).map_err(|e| anyhow!("lab up: {e}"))?)
    };
    if !bench.o.live_selftest.is_empty() {
        let rates = bench.o.live_selftest.clone();
        let secs = bench.o.step_secs;
        for c in bench.live_selftest(&rates, secs)? {
            println!("{}", serde_json::to_string(&c)?);
        }
        drop(session);
        return Ok(true);
    }
    bench.measure_baseline()?;
    let live_ready = if bench.o.generator == "sendmmsg" {
        Ok(())
    } else {
        bench.prepare_live()
    };
    if let Err(e) = &live_ready {
        eprintln!("live-frames generator unavailable ({e:#}); using sendmmsg only");
        bench.o.generator = "sendmmsg".into();
    }
    // What the live generator (and sv_sink) cost per frame without a relay: flat out at the
    // search maximum into sv_sink on ea0. Live frames are processed to completion inside the
    // generator's syscall (the veth NAPI runs as softirq when the call re-enables bottom halves),
    // so a saturated live trial measures generator + relay + sink on one CPU; this run measures
    // generator + sink, and the difference is the relay's own cost per packet.
    let mut live_capacity: Option<LiveCapacity> = None;
    let capacity_run = |bench: &mut Bench, best: &mut Option<LiveCapacity>| {
        if bench.o.generator == "sendmmsg" || bench.o.no_live_capacity {
            return;
        }
        let (max, secs) = (bench.o.search_max, bench.o.step_secs);
        match bench.live_selftest(&[max], secs) {
            Ok(c) => {
                if let Some(c) = c.first().copied()
                    && best.is_none_or(|b| c.achieved_pps > b.achieved_pps)
                {
                    *best = Some(c);
                }
            }
            Err(e) => eprintln!("live generator capacity run failed: {e:#}"),
        }
    };
    capacity_run(&mut bench, &mut live_capacity);
    let mut results: BTreeMap<String, SystemResult> = BTreeMap::new();
    for name in bench.o.systems.clone() {
        eprintln!("== {name}");
        let mut res = SystemResult {
            name: name.clone(),
            ..SystemResult::default()
        };
        if let Err(e) = bench.measure(&name, &mut res) {
            eprintln!("  [{name}] FAILED: {e:#}");
            res.errors.push(format!("{e:#}"));
        }
        results.insert(name, res);
    }
    // once more at the end (the best of the two is kept, as for the systems' saturated trials)
    capacity_run(&mut bench, &mut live_capacity);
    drop(session);

    if let Some(cap) = live_capacity.filter(|c| c.achieved_pps > 0.0) {
        for r in results.values_mut() {
            if r.generator_limited
                && r.zero_loss_generator.as_deref() == Some("live")
                && let Some(z) = r.zero_loss_pps.filter(|z| *z > 0.0)
            {
                let ns = 1e9 / z - 1e9 / cap.achieved_pps;
                if ns > 0.0 {
                    r.relay_only_ns_per_packet = Some(ns);
                    r.relay_only_pps = Some(1e9 / ns);
                }
            }
        }
    }
    let get = |n: &str| results.get(n);
    let cpu = |n: &str| get(n).and_then(|r| r.cpu_ns_per_packet);
    let acpu = |n: &str| get(n).and_then(|r| r.cpu_attributed_ns_per_packet);
    let zl = |n: &str| get(n).and_then(|r| r.zero_loss_pps);
    // The whole-system figure needs an idle-enough machine: when other load keeps every CPU busy,
    // our load displaces it instead of adding busy time and the difference is meaningless. Then
    // the ratios use the attributed figure and say so.
    let tcpu = |n: &str| get(n).and_then(|r| r.cpu_tasks_ns_per_packet);
    let tasks_ok = ["xdp", "fallback", "rtpengine"]
        .iter()
        .all(|n| get(n).is_none_or(|r| r.cpu_tasks_ns_per_packet.is_some()));
    let whole_ok = bench.baseline_busy_ns_per_s / 1e9 <= bench.o.quiet_baseline
        && ["xdp", "fallback", "rtpengine"]
            .iter()
            .all(|n| get(n).is_none_or(|r| r.cpu_ns_per_packet.is_some()));
    let cpu_method = if tasks_ok {
        "tasks (precise runtime of generator + relay process, minus the generator-only reference window)".to_owned()
    } else if whole_ok {
        "whole-system (/proc/stat busy - generator CPU - idle baseline)".to_owned()
    } else {
        format!(
            "attributed (softirq + relay process CPU): the whole-system figure is unusable, the idle baseline had {:.2} CPUs busy with other work (more than --quiet-baseline)",
            bench.baseline_busy_ns_per_s / 1e9
        )
    };
    let wref = |n: &str| get(n).and_then(|r| r.cpu_whole_vs_reference_ns_per_packet);
    let whole_xdp = ratio(wref("xdp"), wref("rtpengine"));
    let whole_fb = ratio(wref("fallback"), wref("rtpengine"));
    let cpu = |n: &str| {
        if tasks_ok {
            tcpu(n)
        } else if whole_ok {
            cpu(n)
        } else {
            acpu(n)
        }
    };
    let xdp_cpu = ratio(cpu("xdp"), cpu("rtpengine"));
    let xdp_pps = ratio(zl("xdp"), zl("rtpengine"));
    let fb_cpu = ratio(cpu("fallback"), cpu("rtpengine"));
    let xdp_ceil = ratio(zl("xdp"), zl("ceiling"));
    let ronly = |n: &str| get(n).and_then(|r| r.relay_only_pps);
    let xdp_ceil_relay_only = ratio(ronly("xdp"), ronly("ceiling"));
    let summary = json!({
        "command": "cargo xtask bench relay",
        "xdp_vs_rtpengine_cpu_per_packet": xdp_cpu,
        "xdp_vs_rtpengine_zero_loss_pps": xdp_pps,
        "fallback_vs_rtpengine_cpu_per_packet": fb_cpu,
        "xdp_vs_ceiling": xdp_ceil,
        "xdp_vs_ceiling_relay_only": xdp_ceil_relay_only,
        "live_generator_capacity": live_capacity,
        "cpu_method": cpu_method,
        "whole_system_cpu": {
            "method": "(/proc/stat busy of the window - busy of the generator-only reference window) / packets",
            "usable": bench.baseline_busy_ns_per_s / 1e9 <= bench.o.quiet_baseline,
            "xdp_vs_rtpengine_cpu_per_packet": whole_xdp,
            "fallback_vs_rtpengine_cpu_per_packet": whole_fb,
        },
        "tasks_cpu": {
            "xdp_vs_rtpengine_cpu_per_packet": ratio(tcpu("xdp"), tcpu("rtpengine")),
            "fallback_vs_rtpengine_cpu_per_packet": ratio(tcpu("fallback"), tcpu("rtpengine")),
        },
        "attributed_cpu": {
            "xdp_vs_rtpengine_cpu_per_packet": ratio(acpu("xdp"), acpu("rtpengine")),
            "fallback_vs_rtpengine_cpu_per_packet": ratio(acpu("fallback"), acpu("rtpengine")),
        },
        "targets": {
            "cpu_per_packet_le_0.1": xdp_cpu.map(|r| r <= 0.1),
            "zero_loss_pps_ge_10x": xdp_pps.map(|r| r >= 10.0),
            "ceiling_ge_0.9": xdp_ceil.map(|r| r >= 0.9),
            "ceiling_relay_only_ge_0.9": xdp_ceil_relay_only.map(|r| r >= 0.9),
        },
        "baseline_busy_cpus": bench.baseline_busy_ns_per_s / 1e9,
        "config": {
            "search_streams": bench.o.search_streams, "step_secs": bench.o.step_secs,
            "cpu_rate": bench.o.cpu_rate, "cpu_secs": bench.o.cpu_secs,
            "latency_streams": bench.o.latency_streams, "latency_pps": bench.o.latency_pps,
            "latency_secs": bench.o.latency_secs, "gen_threads": bench.o.gen_threads,
            "generator": bench.o.generator,
            "live_above_pps": bench.o.live_above,
            "live_chunk": bench.o.live_chunk,
            "counter": bench.o.counter,
        },
        "systems": results,
    });
    let path = bench.o.out.join("summary.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    let series: Vec<(String, Histogram<u64>)> = results
        .values()
        .filter_map(|r| {
            let h = load_hlog_total(Path::new(r.latency_hlog.as_deref()?))?;
            Some((r.name.clone(), h))
        })
        .collect();
    if !series.is_empty() {
        plot_latency_svg(
            &bench.o.out.join("latency.svg"),
            &format!(
                "one-way latency, {} streams x {} pps",
                bench.o.latency_streams, bench.o.latency_pps
            ),
            &series,
        )?;
    }
    let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
    println!("relay benchmark ({})", path.display());
    for r in results.values() {
        println!(
            "  {:<10} zero-loss {:>10} pps{}  cpu tasks {:>8} ns/pkt (whole-vs-ref {:>8}, whole {:>8}, attributed {:>8})  p50/p99/p99.9 {}{}",
            r.name,
            r.zero_loss_pps.map_or("n/a".into(), |v| format!("{v:.0}")),
            if r.generator_limited { "+" } else { " " },
            show(r.cpu_tasks_ns_per_packet),
            show(r.cpu_whole_vs_reference_ns_per_packet),
            show(r.cpu_ns_per_packet),
            show(r.cpu_attributed_ns_per_packet),
            r.latency.map_or("n/a".into(), |l| format!(
                "{:.1}/{:.1}/{:.1} us",
                l.p50_ns as f64 / 1e3,
                l.p99_ns as f64 / 1e3,
                l.p999_ns as f64 / 1e3
            )),
            if r.errors.is_empty() {
                String::new()
            } else {
                format!("  ERRORS: {}", r.errors.join("; "))
            }
        );
    }
    println!("  cpu per packet method: {cpu_method}");
    println!("  xdp / rtpengine cpu per packet:      {}", show(xdp_cpu));
    println!("  xdp / rtpengine zero-loss pps:       {}", show(xdp_pps));
    println!("  fallback / rtpengine cpu per packet: {}", show(fb_cpu));
    println!("  xdp / ceiling zero-loss pps:         {}", show(xdp_ceil));
    println!(
        "  xdp / ceiling relay-only pps:        {}",
        show(xdp_ceil_relay_only)
    );
    if let Some(c) = live_capacity {
        println!(
            "  live generator + sink alone:         {:.0} pps ({} of {} frames at the edge)",
            c.achieved_pps, c.arrived_at_edge, c.sent
        );
    }
    for r in results.values() {
        if let (Some(ns), Some(pps)) = (r.relay_only_ns_per_packet, r.relay_only_pps) {
            println!(
                "  {:<10} relay-only {ns:.0} ns/packet = {pps:.0} pps per CPU",
                r.name
            );
        }
    }
    Ok(results.values().all(|r| r.errors.is_empty()))
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sv-bench-relay: {e:#}");
            ExitCode::from(2)
        }
    }
}
