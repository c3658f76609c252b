//! `sv-bench-flood`: legitimate REGISTER goodput under a SIP flood, sipveil (XDP shield on)
//! against Kamailio 5.6 (pike + htable ban, `loadtest/kamailio/flood.cfg`).
//!
//! In the two-arm lab: a steady legitimate REGISTER load (open domain, native client) from sv-a
//! while sv-x floods the edge's SIP port at rising rates, from one source or from many sources of
//! 198.19.0.0/16. By default both shapes use the live-frames generator (BPF_PROG_TEST_RUN with
//! the lab's `sv_gen`: REGISTERs for random users, Mpps; for the many-source shape `sv_gen`
//! rotates the IPv4 source address through the range, `GEN_F_SRC_ROTATE`); `--one-generator
//! sockets` / `--many-generator sockets` use `sv-flood` instead (UDP sockets, the hostile mix:
//! garbage, OPTIONS, REGISTER, INVITE, wrong-password REGISTER; ~0.2-0.4 Mpps here). Per step:
//! goodput (the fraction of legitimate REGISTERs answered 200 within 500 ms), flood rate achieved,
//! whole-system CPU (/proc/stat) with and without the flood generator's own CPU, and packets
//! dropped (sipveil: the XDP shield counters and the userspace drops from `sipveil shield stats
//! --json`; Kamailio: the packets that reached the edge's sv-x interface, which Kamailio either
//! ignored (pike/ban) or answered — none of them is legitimate).
//! Writes `target/bench/flood/summary.json` and `goodput.svg`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};
use sipveil_loadtest::bench::{CpuTimes, parse_pid_cpu_ticks};
use sipveil_loadtest::kamailio::{KamailioAuth, KamailioRun};
use sipveil_loadtest::lab::{self, Daemon, Lab, Shape};
use sipveil_loadtest::procs::ChildGuard;
use sipveil_loadtest::register::{
    AUTH_DOMAIN, OPEN_DOMAIN, SipveilConfig, make_users, sipveil_users_file,
};
use sipveil_loadtest::register_client::{ClientUser, run_load};
use sipveil_loadtest::{flood, livegen};

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5060);
const INSTANCE: &str = "bench-flood";
const CONTROL_SOCKET: &str = "/run/sipveil/bench-flood.sock";
const CLIENT_BASE_PORT: u16 = 5070;
/// The edge's interface toward sv-x in the two-arm lab.
const EDGE_X_IFACE: &str = "ex0";

#[derive(Parser, Debug)]
#[command(
    name = "sv-bench-flood",
    about = "Legitimate REGISTER goodput under a SIP flood: sipveil (XDP shield) vs Kamailio (pike)"
)]
struct Opts {
    /// The benchmark to run; `flood` is the only one (so that `cargo xtask bench flood` can pass
    /// its arguments through unchanged).
    #[arg(value_parser = ["flood"])]
    which: Option<String>,
    /// A short run (fewer, shorter steps): under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// The sipveil binary (default: next to this one). Also used to bring the lab up.
    #[arg(long)]
    sipveil: Option<PathBuf>,
    /// The flood generator (default: `sv-flood` next to this one).
    #[arg(long)]
    sv_flood: Option<PathBuf>,
    #[arg(long, default_value = "kamailio")]
    kamailio: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/kamailio/flood.cfg"))]
    kamailio_config: PathBuf,
    #[arg(long, default_value = "target/bench/flood")]
    out: PathBuf,
    /// Servers to measure, in order: `kamailio`, `sipveil`, and two references with no SIP
    /// server: `baseline` (a trivial XDP drop program, the lab's `sv_sink`, on the edge's sv-x
    /// interface: the receive path no server can avoid, subtracted in `drop_cpu_ratio`) and
    /// `nolistener` (no XDP program, GRO on as for Kamailio, nothing bound to the SIP port: the
    /// kernel's IP/UDP receive path up to the missing socket).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,kamailio,sipveil"
    )]
    servers: Vec<String>,
    /// Flood shapes: `one` (one source address) and `many` (sources from 198.19.0.0/16).
    #[arg(long, value_delimiter = ',', default_value = "one,many")]
    shapes: Vec<String>,
    /// Offered flood rates (packets/s), in order; 0 = no flood (the baseline).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u64>,
    /// Seconds per step (default 4, 2 with --quick).
    #[arg(long)]
    step_secs: Option<f64>,
    /// Measure every flood step of Kamailio and sipveil this many times (the baseline once):
    /// goodput per rate is then pooled over the repeats (more legitimate samples per rate) and
    /// the spread between repeats is reported.
    #[arg(long, default_value_t = 2)]
    repeat: u32,
    /// After Kamailio's sweep of a shape, measure (--repeat times) the geometric midpoint of the
    /// two rates that bracket its halving, when there is such a bracket; sipveil gets the same
    /// extra rate.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    refine: bool,
    /// Before starting, wait up to this many seconds for the 1-minute load average to fall
    /// below --quiet-load (other work on the machine; the load is recorded either way).
    #[arg(long, default_value_t = 0.0)]
    quiet_wait: f64,
    #[arg(long, default_value_t = 1.0)]
    quiet_load: f64,
    /// A step whose machine was busier than this fraction (all CPUs) is not used to compare CPU
    /// per dropped packet: when the machine is saturated, drops are shed wherever the scheduler
    /// leaves work undone.
    #[arg(long, default_value_t = 0.9)]
    saturated_busy: f64,
    /// Legitimate REGISTER exchanges per second from sv-a.
    #[arg(long, default_value_t = 500.0)]
    legit_rate: f64,
    /// Source addresses of the many-source shape (198.19.0.1 onwards). Default: 65534 (all of
    /// 198.19.0.0/16 but .0.0 and .255.255) with the live generator — each source then sends
    /// under 15 requests/s (Kamailio's pike threshold in flood.cfg: 30 in 2 s) up to ~980 kpps,
    /// so per-source detection never fires; 1000 with `sockets` (sv-flood binds one socket each).
    #[arg(long)]
    many_sources: Option<u32>,
    /// Flood generator threads.
    #[arg(long, default_value_t = 2)]
    flood_threads: usize,
    /// Generator of the one-source shape: `live` (BPF_PROG_TEST_RUN live frames with the lab's
    /// sv_gen program: REGISTER frames for random users, Mpps) or `sockets` (sv-flood, the
    /// hostile mix, ~0.2-0.4 Mpps here).
    #[arg(long, default_value = "live", value_parser = ["live", "sockets"])]
    one_generator: String,
    /// Generator of the many-source shape: `live` (as above, with sv_gen rotating the source
    /// address over --many-sources addresses) or `sockets` (sv-flood, the hostile mix).
    #[arg(long, default_value = "live", value_parser = ["live", "sockets"])]
    many_generator: String,
    /// Threads of the live generator, pinned to the CPUs round robin, each sending its share of
    /// the rate. On veth the receiver's XDP/softirq work runs in the sender's context (and in
    /// ksoftirqd), scheduled fairly against the server's threads, where a NIC's interrupts would
    /// come first: 4 threads on 2 CPUs give the flood's reception a larger share (on a quiet
    /// machine Kamailio's many-source goodput sat at 0.66-0.83 with 2 threads, 0.46-0.58 with 4).
    #[arg(long, default_value_t = 4)]
    live_threads: usize,
    /// Distinct REGISTER payloads (random users, Call-IDs, tags; new ones every step) the live
    /// generator cycles through, one per BPF_PROG_TEST_RUN call (--live-chunk frames).
    #[arg(long, default_value_t = 256)]
    live_payloads: usize,
    /// Frames per BPF_PROG_TEST_RUN call of the live generator (kernel batches of 64 inside).
    /// Each call sets up its own page pool, so larger calls leave fewer gaps in the flood; sv_gen
    /// rewrites frames only incrementally, so recycled pages are harmless here.
    #[arg(long, default_value_t = 4096)]
    live_chunk: u64,
    /// How long a live generator thread sleeps when it is ahead of its rate (µs): the pacing
    /// granularity. Each BPF_PROG_TEST_RUN call reaches the server as one back-to-back burst,
    /// so at a given rate a longer tick means fewer, larger bursts.
    #[arg(long, default_value_t = 200)]
    live_tick_us: u64,
    /// Receive queues of the edge's veth toward sv-x (`ethtool -L ex0 rx N`, for both servers;
    /// default: --live-threads, at most the CPU count, which is veth's maximum). veth hands a
    /// frame pushed by XDP to the peer's queue of the sending CPU, so with one queue all flood
    /// reception runs in one NAPI instance, which under load defers to ksoftirqd and shares a
    /// CPU fairly with the server; one queue per generator thread lets the flood reach every
    /// CPU, as a multi-queue NIC would.
    #[arg(long)]
    edge_x_queues: Option<u32>,
    /// sipveil's `[sip] workers` and Kamailio's UDP children.
    #[arg(long, default_value_t = 2)]
    workers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Sipveil,
    Kamailio,
    /// No SIP server; a trivial XDP drop program (`sv_sink`) on the edge's sv-x interface.
    Baseline,
    /// No SIP server, no XDP program: the kernel stack up to a port nobody listens on.
    NoListener,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Sipveil => "sipveil",
            Server::Kamailio => "kamailio",
            Server::Baseline => "baseline",
            Server::NoListener => "nolistener",
        }
    }

    /// Whether a SIP server answers (the legitimate client runs only then).
    fn answers(self) -> bool {
        matches!(self, Server::Sipveil | Server::Kamailio)
    }
}

/// One measured step.
#[derive(Debug, Clone, Default, Serialize)]
struct Step {
    offered_pps: u64,
    /// Flood packets the generator sent per second.
    flood_pps: f64,
    flood_sent: u64,
    /// BPF_PROG_TEST_RUN calls of the live generator (each reaches the server as one burst);
    /// 0 with the sockets generator.
    flood_calls: u64,
    legit_offered: u64,
    legit_ok_in_time: u64,
    /// `legit_ok_in_time / legit_offered`.
    goodput: f64,
    /// Busy CPU-seconds of the whole machine over the step (/proc/stat).
    system_cpu_s: f64,
    /// The flood generator's own CPU-seconds (wait4 rusage).
    generator_cpu_s: f64,
    /// Packets dropped/absorbed by the server's defence (see the module documentation).
    dropped: u64,
    /// Packets that arrived on the edge's sv-x interface.
    edge_x_rx: u64,
    /// CPU-seconds of the processes in the edge namespace (the server's user and system time;
    /// XDP and softirq work is not in it).
    server_proc_cpu_s: f64,
    /// UDP datagrams delivered to sockets in the edge namespace, and datagrams dropped because
    /// a socket's receive buffer was full (/proc/net/snmp).
    udp_in_datagrams: u64,
    udp_rcvbuf_errors: u64,
    /// (whole-system busy CPU − the generator's own CPU) ns per dropped packet. Caveat: on veth
    /// the receiver's XDP/softirq work may run in the sender's context and be counted as the
    /// generator's.
    cpu_ns_per_drop: Option<f64>,
    /// `cpu_ns_per_drop` with the background load subtracted too: the series' no-flood step's
    /// busy CPU per second × this step's wall time (other work on the machine; noisy).
    cpu_ns_per_drop_net: Option<f64>,
    /// The server processes' CPU ns per dropped packet.
    server_proc_ns_per_drop: Option<f64>,
    /// sipveil: run time (ns) and runs of its XDP entry program over the step, from the kernel's
    /// BPF statistics (`kernel.bpf_stats_enabled`, switched on for the bench); 0 for Kamailio.
    xdp_run_ns: u64,
    xdp_runs: u64,
    /// Server-attributable CPU ns per dropped packet: (the server processes' CPU + its XDP
    /// program's run time) ÷ dropped. Not in it, for either server: the driver/veth receive path
    /// before XDP; for Kamailio also the kernel's IP/UDP delivery in softirq (its recvmsg is in
    /// its processes' system time). Both include the legitimate load's work. Unlike
    /// `cpu_ns_per_drop` it does not depend on where the scheduler ran the receive work.
    server_ns_per_drop: Option<f64>,
    /// Softirq CPU-seconds of the whole machine over the step (/proc/stat `softirq`, tick
    /// sampled; this kernel has no IRQ time accounting, so a tick that lands while a CPU serves
    /// softirqs — inline after local_bh_enable in the sender, or in ksoftirqd — counts here and
    /// not as the interrupted task's). Holds the veth NAPI receive of the flood, the XDP
    /// programs on it and, for Kamailio, the IP/UDP delivery and socket-buffer drops.
    softirq_s: f64,
    /// Whole-machine busy fraction (busy ÷ (time × CPUs)) while the live flood ran (over the
    /// whole step with the sockets generator or without a flood).
    busy_frac: f64,
    /// 1-minute load average when the step ended.
    loadavg: f64,
    /// Frames the edge's sv-x interface dropped before its receive path (ring full).
    edge_x_rx_dropped: u64,
    /// Receive-side CPU per flood packet: (the server processes' CPU + the machine's softirq
    /// time) ÷ packets that arrived on sv-x (all flood; each dropped or absorbed) — everything
    /// the flood costs on the receiving side, wherever the scheduler ran it, without the
    /// generator's process-context work.
    rx_ns_per_flood_packet: Option<f64>,
    /// Softirq ns per packet that arrived on the edge's sv-x interface (the baseline's figure:
    /// the receive path no server avoids).
    softirq_ns_per_rx: Option<f64>,
    /// Repeat number of this rate (0 = first).
    repeat: u32,
    wall_s: f64,
}

/// A series' steps at one offered rate, pooled over the repeats.
#[derive(Debug, Clone, Default, Serialize)]
struct RatePoint {
    offered_pps: u64,
    /// Mean flood rate achieved over the repeats.
    flood_pps: f64,
    repeats: u32,
    legit_offered: u64,
    legit_ok_in_time: u64,
    /// Pooled goodput: Σ ok ÷ Σ offered.
    goodput: f64,
    goodput_min: f64,
    goodput_max: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Series {
    server: String,
    shape: String,
    steps: Vec<Step>,
    /// Lowest flood rate achieved at which goodput fell 0.1 % (resp. 50 %) below the baseline.
    loses_0_1pct_at: Option<f64>,
    loses_50pct_at: Option<f64>,
    /// The highest flood rate achieved in this series.
    max_flood_pps: f64,
    /// The steps pooled per offered rate (sorted by rate).
    points: Vec<RatePoint>,
    /// Where pooled goodput first falls below half the baseline's (see [`halving`]).
    halving: Option<Halving>,
    errors: Vec<String>,
    /// Further no-flood steps (repeats 1.. of rate 0, `--repeat`), kept out of `steps` (the
    /// goodput baseline is the first): with the first, they give the legitimate load's CPU and
    /// the background softirq rate in `drop_cpu_ratio`, averaged over the repeats.
    legit_only: Vec<Step>,
}

/// The crossing of half the baseline's goodput between two pooled rate points.
#[derive(Debug, Clone, Serialize)]
struct Halving {
    /// The last rate point at or above half before the first one below it (None: the first flood
    /// point is already below, so the crossing lies between 0 and it).
    above_pps: Option<f64>,
    above_goodput: Option<f64>,
    below_pps: f64,
    below_goodput: f64,
    /// Linear in goodput between the two points on a log scale of the flood rate achieved; the
    /// below point itself when there is no point above.
    interpolated_pps: f64,
    /// Every repeat of the below point was under half too.
    all_repeats_below: bool,
    /// Every higher rate point is also below half (the curve does not come back).
    stays_below: bool,
    /// The geometric middle of the bracket's offered rates (rounded to 1000 pps; half the below
    /// point's when there is no point above), where a refinement step goes; None when the
    /// bracket is already narrower than 1.2×.
    midpoint: Option<u64>,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

fn proc_stat() -> Result<CpuTimes> {
    Ok(CpuTimes::parse_proc_stat(&fs::read_to_string(
        "/proc/stat",
    )?)?)
}

/// Packets received by the edge's interface toward sv-x, and frames it dropped.
fn edge_x_rx() -> Result<(u64, u64)> {
    let out = Command::new("ip")
        .args([
            "-n",
            lab::NS_EDGE,
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            EDGE_X_IFACE,
        ])
        .output()
        .context("running ip -s link")?;
    if !out.status.success() {
        bail!(
            "ip -s link show {EDGE_X_IFACE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let rx = v
        .get(0)
        .and_then(|l| l.get("stats64"))
        .and_then(|s| s.get("rx"));
    let get = |k: &str| {
        rx.and_then(|r| r.get(k))
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("no rx {k} count for {EDGE_X_IFACE}"))
    };
    Ok((get("packets")?, get("dropped")?))
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Waits up to `limit` for the 1-minute load average to fall below `below`; returns the last
/// value read.
fn quiet_wait(limit: Duration, below: f64) -> f64 {
    let start = Instant::now();
    loop {
        let l = loadavg();
        if l < below || start.elapsed() >= limit {
            return l;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Sum of the shield's drops (XDP counters `shield_drop_*` and userspace drops).
fn shield_drops(sipveil: &Path) -> Result<u64> {
    let out = Command::new(sipveil)
        .args(["shield", "stats", "--json", "--socket", CONTROL_SOCKET])
        .output()
        .context("running sipveil shield stats")?;
    if !out.status.success() {
        bail!(
            "sipveil shield stats: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("shield stats JSON")?;
    let mut sum = 0u64;
    if let Some(xdp) = v.get("xdp").and_then(Value::as_object) {
        for (k, n) in xdp {
            if k.starts_with("shield_drop_") {
                sum += n.as_u64().unwrap_or(0);
            }
        }
    }
    if let Some(us) = v.get("userspace_drops").and_then(Value::as_object) {
        sum += us.values().filter_map(Value::as_u64).sum::<u64>();
    }
    Ok(sum)
}

/// `kernel.bpf_stats_enabled` on for the bench's lifetime (the previous value back on drop), so
/// the kernel accounts each BPF program's run time.
struct BpfStats {
    previous: Option<String>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(BpfStats {
            previous: Some(previous),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(p) = self.previous.take()
            && let Err(e) = fs::write(BPF_STATS, &p)
        {
            eprintln!("restoring {BPF_STATS} to {p}: {e}");
        }
    }
}

/// Total run time (ns) and runs of the loaded `sipveil_entry` XDP programs (bpftool).
fn entry_prog_stats() -> Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool prog show")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    let mut ns = 0u64;
    let mut runs = 0u64;
    for p in v.as_array().into_iter().flatten() {
        if p.get("name").and_then(Value::as_str) == Some("sipveil_entry") {
            ns += p.get("run_time_ns").and_then(Value::as_u64).unwrap_or(0);
            runs += p.get("run_cnt").and_then(Value::as_u64).unwrap_or(0);
        }
    }
    Ok((ns, runs))
}

/// CPU-seconds (utime + stime, all threads) of the processes in network namespace `ns`.
fn netns_cpu_s(ns: &str) -> f64 {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ticks: u64 = pids
        .split_whitespace()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|t| parse_pid_cpu_ticks(&t).ok())
        .sum();
    ticks as f64 * tick_ns() / 1e9
}

fn sipveil_config(o: &Opts, tmp: &Path) -> Result<PathBuf> {
    let users = make_users(0, 1, AUTH_DOMAIN);
    let users_file = tmp.join("users.toml");
    fs::write(&users_file, sipveil_users_file(&users))?;
    let db = tmp.join("registrar.redb");
    let ifaces = Shape::TwoArm.edge_ifaces();
    let base = SipveilConfig {
        workers: o.workers,
        listen: SERVER,
        database: &db,
        users_file: &users_file,
        control_socket: Path::new(CONTROL_SOCKET),
        media_a: Shape::TwoArm.edge_toward_a(),
        media_b: Shape::TwoArm.edge_toward_b(),
        instance: INSTANCE,
        interfaces: &ifaces,
        digest: &[],
    }
    .to_toml();
    if !base.contains("xdp = \"off\"") {
        bail!("the register bench's configuration no longer has `xdp = \"off\"` to replace");
    }
    // XDP on (the shield in the driver) with the example configuration's default limits (all
    // classes, new-source bursts, the global ceiling and the per-class ceilings for sources
    // that are not allowlisted: REGISTER 200/s); sv-a is a configured peer with a multiplier
    // (its limits ×50, exempt from the ceilings), not an unlimited one.
    let text = base.replace("xdp = \"off\"", "xdp = \"auto\"")
        + "\n[shield]\n\
           enabled = true\n\
           peers = [{ address = \"198.18.1.0/24\", multiplier = 50 }]\n";
    let path = tmp.join("sipveil.toml");
    fs::write(&path, text)?;
    Ok(path)
}

enum Running {
    Sipveil(Daemon),
    Kamailio(ChildGuard),
    /// No SIP server; `sink`: the baseline's `sv_sink` is attached to the edge's sv-x interface.
    NoServer {
        sink: bool,
    },
}

impl Running {
    /// Stops the server; for sipveil also detaches its XDP programs and removes its pins (they
    /// outlive the daemon by design), so that the next server does not sit behind the shield.
    fn stop(self, sipveil: &Path) -> Result<()> {
        match self {
            Running::Sipveil(d) => {
                let _ = d.terminate(Duration::from_secs(10));
                let out = Command::new(sipveil)
                    .args(["unload", "--instance", INSTANCE, "--netns", lab::NS_EDGE])
                    .output()
                    .context("running sipveil unload")?;
                if !out.status.success() {
                    bail!(
                        "sipveil unload: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                ensure_no_edge_xdp()
            }
            Running::Kamailio(mut g) => {
                g.stop();
                Ok(())
            }
            Running::NoServer { sink } => {
                if sink {
                    let out = Command::new(sipveil)
                        .args([
                            "lab-xdp",
                            "detach",
                            "--netns",
                            lab::NS_EDGE,
                            "--iface",
                            EDGE_X_IFACE,
                        ])
                        .output()
                        .context("running sipveil lab-xdp detach")?;
                    if !out.status.success() {
                        bail!(
                            "sipveil lab-xdp detach: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
                ensure_no_edge_xdp()
            }
        }
    }
}

/// Fails when an XDP program is attached to one of the edge's interfaces.
fn ensure_no_edge_xdp() -> Result<()> {
    for iface in Shape::TwoArm.edge_ifaces() {
        let out = Command::new("ip")
            .args(["-n", lab::NS_EDGE, "-j", "link", "show", "dev", iface])
            .output()
            .context("running ip link")?;
        let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link output")?;
        if v.get(0).and_then(|l| l.get("xdp")).is_some() {
            bail!(
                "an XDP program is still attached to {iface} in {}",
                lab::NS_EDGE
            );
        }
    }
    Ok(())
}

/// UDP counters of the edge namespace: (InDatagrams, RcvbufErrors).
fn edge_udp() -> Result<(u64, u64)> {
    let out = Command::new("ip")
        .args(["netns", "exec", lab::NS_EDGE, "cat", "/proc/net/snmp"])
        .output()
        .context("reading /proc/net/snmp in the edge namespace")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let get = |name: &str| -> Result<u64> {
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .ok_or_else(|| anyhow!("no {name} in /proc/net/snmp"))?;
        values
            .split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("bad {name} value"))
    };
    Ok((get("InDatagrams")?, get("RcvbufErrors")?))
}

/// Sends OPTIONS from a thread in `ns` until any SIP answer comes back.
fn probe_sip(ns: &str, from: Ipv4Addr, timeout: Duration) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<()> {
        enter_netns(&path)?;
        let sock = UdpSocket::bind(SocketAddrV4::new(from, 0)).context("probe socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let local = sock.local_addr()?;
        let deadline = Instant::now() + timeout;
        let mut n = 0u32;
        while Instant::now() < deadline {
            n += 1;
            let msg = format!(
                "OPTIONS sip:{SERVER} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKfprobe{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@bench.lab>;tag=p{n}\r\nTo: <sip:{SERVER}>\r\n\
                 Call-ID: fprobe-{n}-{}@bench\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n",
                std::process::id()
            );
            let _ = sock.send_to(msg.as_bytes(), SERVER);
            let mut buf = [0u8; 4096];
            if let Ok(len) = sock.recv(&mut buf)
                && buf.get(..len).is_some_and(|b| b.starts_with(b"SIP/2.0 "))
            {
                return Ok(());
            }
        }
        bail!("no SIP answer from {SERVER} within {timeout:?}")
    })
    .join()
    .map_err(|_| anyhow!("probe thread panicked"))?
}

fn enter_netns(path: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on an open netns fd; CLONE_NEWNET changes only this thread's network
    // namespace, which is what the sockets created afterwards in this thread need.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The spare sv-x veths the live generator keeps sv_gen loaded on (generic mode): one plain
/// (the one-source shape), one rotating the source address (the many-source shape). Frames leave
/// through x0 either way; these only hold the programs.
const LIVE_IFACE: &str = "svgen0";
const LIVE_ROTATE_IFACE: &str = "svgen2";
/// The first address of the many-source shape.
const MANY_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Addresses from [`MANY_BASE`] that stay inside 198.19.0.0/16 without its broadcast address.
const MANY_MAX: u32 = 65_534;

/// The MAC address of `iface` in `ns`.
fn iface_mac(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", iface])
        .output()
        .context("running ip link")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link output")?;
    let text = v
        .get(0)
        .and_then(|l| l.get("address"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no MAC address for {iface} in {ns}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let part = parts.next().ok_or_else(|| anyhow!("bad MAC {text:?}"))?;
        *b = u8::from_str_radix(part, 16).map_err(|_| anyhow!("bad MAC {text:?}"))?;
    }
    Ok(mac)
}

/// Loads sv_gen (generic mode) on the spare veth `iface` (with peer `peer`) in sv-x, pinned
/// where the generator finds it; with `rotate`, as `--rotate-sources BASE/COUNT`.
fn prepare_live(
    sipveil: &Path,
    iface: &str,
    peer: &str,
    rotate: Option<(Ipv4Addr, u32)>,
) -> Result<()> {
    let _ = Command::new("ip")
        .args([
            "-n",
            lab::NS_X,
            "link",
            "add",
            iface,
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ])
        .output();
    let _ = Command::new(sipveil)
        .args(["lab-xdp", "detach", "--netns", lab::NS_X, "--iface", iface])
        .output();
    let mut cmd = Command::new(sipveil);
    cmd.args([
        "lab-xdp",
        "attach",
        "--netns",
        lab::NS_X,
        "--iface",
        iface,
        "--program",
        "sv_gen",
        "--mode",
        "generic",
    ]);
    if let Some((base, count)) = rotate {
        cmd.args(["--rotate-sources", &format!("{base}/{count}")]);
    }
    let out = cmd.output().context("running sipveil lab-xdp attach")?;
    if !out.status.success() {
        bail!(
            "sipveil lab-xdp attach sv_gen on {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Ethernet frames of `n` REGISTERs for random users (seeded by `seed`) from `src` to the server,
/// for the live generator.
fn register_frames(src: SocketAddrV4, n: usize, seed: u64) -> Result<Vec<Vec<u8>>> {
    let (src_mac, dst_mac) = (
        iface_mac(lab::NS_X, "x0")?,
        iface_mac(lab::NS_EDGE, EDGE_X_IFACE)?,
    );
    let mut rng = flood::Rng::new(seed);
    let mut payload = Vec::new();
    Ok((0..n.max(1))
        .map(|_| {
            flood::payload(
                flood::Kind::Register,
                &mut rng,
                std::net::SocketAddr::V4(src),
                OPEN_DOMAIN,
                &mut payload,
            );
            livegen::build_udp_frame(src_mac, dst_mac, src, SERVER, &payload)
        })
        .collect())
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET sets one bit inside it; pid 0 is the calling
    // thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity(cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A flood of REGISTER frames with live frames out of sv-x's x0, at `rate` for `secs`, from
/// `threads` threads (one per CPU, each a share of the rate): from X_ADDR, or with `many` from
/// the sources sv_gen rotates through, each thread sleeping `tick` when ahead. Returns (sent,
/// pps, generator CPU-seconds, BPF_PROG_TEST_RUN calls).
#[expect(
    clippy::too_many_arguments,
    reason = "the generator's knobs, passed through from the options"
)]
fn live_flood(
    rate: u64,
    secs: f64,
    many: bool,
    threads: usize,
    payloads: usize,
    chunk: u64,
    seed: u64,
    tick: Duration,
) -> Result<(u64, f64, f64, u64)> {
    let src = SocketAddrV4::new(if many { MANY_BASE } else { lab::X_ADDR }, 5099);
    let frames = std::sync::Arc::new(register_frames(src, payloads, seed)?);
    let iface = if many { LIVE_ROTATE_IFACE } else { LIVE_IFACE };
    let pin = format!("{}/{}-{iface}/link", lab::LAB_PIN_DIR, lab::NS_X);
    let path = format!("/var/run/netns/{}", lab::NS_X);
    let threads = threads.max(1);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (frames, pin, path) = (frames.clone(), pin.clone(), path.clone());
            // This thread's share of the packets and of the rate.
            let total =
                ((rate as f64 * secs).ceil() as u64 + (threads - 1 - i) as u64) / threads as u64;
            let share = rate as f64 / threads as f64;
            std::thread::spawn(move || -> Result<(livegen::PacedSent, f64)> {
                pin_thread(i % cpus)?;
                enter_netns(&path)?;
                let prog = livegen::prog_fd_from_pinned_link(&pin)
                    .with_context(|| format!("sv_gen program behind {pin}"))?;
                let name = std::ffi::CString::new("x0")?;
                // SAFETY: a valid NUL-terminated interface name.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                if ifindex == 0 {
                    bail!("no x0 in {}", lab::NS_X);
                }
                let c0 = thread_cpu_s();
                let sent = livegen::send_paced_frames_ticked(
                    &prog,
                    &frames,
                    ifindex,
                    total,
                    Some(share),
                    Duration::from_secs_f64(secs),
                    chunk,
                    tick,
                )?;
                Ok((sent, thread_cpu_s() - c0))
            })
        })
        .collect();
    let (mut sent, mut cpu, mut calls) = (0u64, 0.0f64, 0u64);
    for h in handles {
        let (s, c) = h
            .join()
            .map_err(|_| anyhow!("live generator thread panicked"))??;
        sent += s.sent;
        calls += s.calls;
        cpu += c;
    }
    let el = t0.elapsed().as_secs_f64();
    Ok((sent, sent as f64 / el.max(1e-9), cpu, calls))
}

/// Waits for `pid` (a child of this process) and returns its CPU seconds (user + system).
fn wait_cpu(pid: u32) -> Result<(i32, f64)> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| anyhow!("pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value that wait4 overwrites.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers to a status and a rusage.
    let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut ru) };
    if rc < 0 {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((status, secs(ru.ru_utime) + secs(ru.ru_stime)))
}

struct Bench {
    o: Opts,
    sipveil: PathBuf,
    sv_flood: PathBuf,
    step_secs: f64,
    step_no: u32,
}

/// How long [`settle`] waits at most for a server to go quiet.
const SETTLE_MAX: Duration = Duration::from_secs(15);
/// [`settle`]'s window, and the most the server processes may use in it to count as quiet
/// (one tick of `CLK_TCK` = 10 ms: under 2 % of a CPU).
const SETTLE_WINDOW: Duration = Duration::from_millis(500);
const SETTLE_QUIET_S: f64 = 0.0105;

/// Waits (up to [`SETTLE_MAX`]) until the processes in the edge namespace used at most
/// [`SETTLE_QUIET_S`] of CPU over a [`SETTLE_WINDOW`], so that a server's start-up tail (for
/// sipveil: opening its store, the main thread's start-up work, measured at 0.2–0.3 s after it
/// answered its first OPTIONS; and whatever the previous shape's flood left behind) is not
/// charged to the no-flood step, whose CPU is the legitimate load's in `drop_cpu_ratio`. The
/// same rule for every server. Returns the seconds waited and whether it went quiet.
///
/// The machine's softirq time must be as quiet (the no-flood step's softirq is the series'
/// background in `drop_cpu_ratio`: work the previous shape's flood left behind must not be in it).
fn settle() -> (f64, bool) {
    let softirq_s = || {
        proc_stat()
            .map(|c| c.softirq as f64 * tick_ns() / 1e9)
            .unwrap_or(0.0)
    };
    let t0 = Instant::now();
    let (mut last, mut last_si) = (netns_cpu_s(lab::NS_EDGE), softirq_s());
    while t0.elapsed() < SETTLE_MAX {
        std::thread::sleep(SETTLE_WINDOW);
        let (now, now_si) = (netns_cpu_s(lab::NS_EDGE), softirq_s());
        if now - last <= SETTLE_QUIET_S && now_si - last_si <= SETTLE_QUIET_S {
            return (t0.elapsed().as_secs_f64(), true);
        }
        (last, last_si) = (now, now_si);
    }
    (t0.elapsed().as_secs_f64(), false)
}

impl Bench {
    fn start(&self, s: Server, tmp: &Path) -> Result<Running> {
        match s {
            Server::NoListener => {
                ensure_no_edge_xdp()?;
                // As for Kamailio: GRO gives ex0 NAPI, which live frames need without XDP.
                edge_ethtool(&["-K", EDGE_X_IFACE, "gro", "on"])?;
                Ok(Running::NoServer { sink: false })
            }
            Server::Baseline => {
                ensure_no_edge_xdp()?;
                let out = Command::new(&self.sipveil)
                    .args([
                        "lab-xdp",
                        "attach",
                        "--netns",
                        lab::NS_EDGE,
                        "--iface",
                        EDGE_X_IFACE,
                        "--program",
                        "sv_sink",
                        "--mode",
                        "driver",
                        "--sink-ports",
                    ])
                    .arg(format!("{0}-{0}", SERVER.port()))
                    .output()
                    .context("running sipveil lab-xdp attach sv_sink")?;
                if !out.status.success() {
                    bail!(
                        "sipveil lab-xdp attach sv_sink on {EDGE_X_IFACE}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Ok(Running::NoServer { sink: true })
            }
            Server::Kamailio => {
                ensure_no_edge_xdp()?;
                if self.o.one_generator == "live" || self.o.many_generator == "live" {
                    // Live frames leave x0 by the veth's XDP transmit, which the peer (ex0)
                    // accepts only with an XDP program or NAPI; GRO on gives ex0 NAPI without
                    // putting an XDP program in front of Kamailio. (sipveil's run has its own
                    // program there.)
                    edge_ethtool(&["-K", EDGE_X_IFACE, "gro", "on"])?;
                }
                let run = KamailioRun {
                    binary: self.o.kamailio.clone(),
                    config: self.o.kamailio_config.clone(),
                    netns: lab::NS_EDGE.to_owned(),
                    listen: SERVER,
                    children: self.o.workers,
                    shm_mb: 512,
                    pkg_mb: 64,
                    db_dir: None,
                    auth: KamailioAuth::AuthDb,
                };
                let log = tmp.join("kamailio.log");
                let file = fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .with_context(|| format!("opening {}", log.display()))?;
                let mut cmd = run.command();
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
                let mut g = ChildGuard::spawn("kamailio", &mut cmd)?;
                if let Err(e) = probe_sip(lab::NS_A, lab::A_ADDR, Duration::from_secs(20)) {
                    let exited = g.try_wait().ok().flatten();
                    g.stop();
                    bail!(
                        "kamailio did not answer ({e:#}; exited: {exited:?}); log: {}",
                        log.display()
                    );
                }
                Ok(Running::Kamailio(g))
            }
            Server::Sipveil => {
                let config = sipveil_config(&self.o, tmp)?;
                let log = tmp.join("sipveil.log");
                let d = Daemon::start(
                    &self.sipveil,
                    &config,
                    &[],
                    Duration::from_secs(60),
                    Some(&log),
                )
                .map_err(|e| anyhow!("{e}; log: {}", log.display()))?;
                if let Err(e) = probe_sip(lab::NS_A, lab::A_ADDR, Duration::from_secs(20)) {
                    d.kill();
                    bail!(
                        "sipveil did not answer OPTIONS ({e:#}); log: {}",
                        log.display()
                    );
                }
                Ok(Running::Sipveil(d))
            }
        }
    }

    fn flood_command(&self, many: bool, rate: u64) -> Command {
        let mut cmd = Command::new("ip");
        let packets = ((rate as f64) * self.step_secs).ceil() as u64;
        cmd.args(["netns", "exec", lab::NS_X])
            .arg(&self.sv_flood)
            .args(["--target", &SERVER.to_string()])
            .args(["--domain", OPEN_DOMAIN])
            .args(["--threads", &self.o.flood_threads.to_string()])
            .args(["--packets", &packets.to_string()])
            .args(["--seconds", &format!("{:.3}", self.step_secs)])
            .args(["--rate", &rate.to_string()]);
        if many {
            let n = self.o.many_sources.unwrap_or(1000).clamp(1, MANY_MAX);
            for i in 0..n {
                let host = i + 1;
                let ip = Ipv4Addr::new(198, 19, (host >> 8) as u8, (host & 0xff) as u8);
                cmd.args(["--source", &ip.to_string()]);
            }
        } else {
            cmd.args(["--source", &lab::X_ADDR.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }

    fn step(&mut self, s: Server, many: bool, rate: u64, repeat: u32) -> Result<Step> {
        self.step_no += 1;
        let legit = (self.o.legit_rate * self.step_secs).round().max(1.0) as usize;
        let prefix = format!("f{}{}", self.step_no, std::process::id());
        let names: Vec<String> = (0..legit).map(|i| format!("{prefix}u{i}")).collect();
        let drops0 = match s {
            Server::Sipveil => shield_drops(&self.sipveil)?,
            _ => 0,
        };
        let xdp0 = match s {
            Server::Sipveil => entry_prog_stats()?,
            _ => (0, 0),
        };
        let rx0 = edge_x_rx()?;
        let udp0 = edge_udp()?;
        let proc0 = netns_cpu_s(lab::NS_EDGE);
        let cpu0 = proc_stat()?;
        let t0 = Instant::now();
        let live = if many {
            self.o.many_generator == "live"
        } else {
            self.o.one_generator == "live"
        };
        let secs = self.step_secs;
        let (threads, payloads, chunk) =
            (self.o.live_threads, self.o.live_payloads, self.o.live_chunk);
        // Different random users in every step.
        let seed = 0x5eed_0000 + u64::from(self.step_no);
        let tick = Duration::from_micros(self.o.live_tick_us);
        let live_thread = (rate > 0 && live).then(|| {
            std::thread::spawn(move || {
                let r = live_flood(rate, secs, many, threads, payloads, chunk, seed, tick);
                // The machine's CPU when the flood ended: the busy fraction is judged over the
                // flood, not over the client's wait for late answers after it.
                (r, proc_stat().ok(), Instant::now())
            })
        });
        let mut flood_end: Option<(CpuTimes, Instant)> = None;
        let flood = if rate > 0 && !live {
            let mut cmd = self.flood_command(many, rate);
            Some(cmd.spawn().context("starting sv-flood")?)
        } else {
            None
        };
        let legit_rate = self.o.legit_rate;
        let path = format!("/var/run/netns/{}", lab::NS_A);
        let answers = s.answers();
        let client = std::thread::spawn(move || -> Result<_> {
            if !answers {
                // No server: no legitimate load (its requests would only time out).
                return Ok(None);
            }
            enter_netns(&path)?;
            let mut socks = Vec::new();
            for p in 0..8u16 {
                let sock = UdpSocket::bind(SocketAddrV4::new(lab::A_ADDR, CLIENT_BASE_PORT + p))
                    .context("binding the client sockets")?;
                socks.push(sock);
            }
            let users: Vec<ClientUser<'_>> = names
                .iter()
                .map(|n| ClientUser {
                    name: n,
                    ha1_md5_hex: "",
                })
                .collect();
            Ok(Some(
                run_load(
                    &socks,
                    SERVER,
                    OPEN_DOMAIN,
                    &users,
                    legit_rate,
                    Duration::from_secs(2),
                    false,
                )?
                .0,
            ))
        });
        let totals = client
            .join()
            .map_err(|_| anyhow!("client thread panicked"))??;
        let (flood_sent, flood_pps, generator_cpu_s, flood_calls) = match flood {
            Some(mut child) => {
                let mut out = String::new();
                if let Some(mut so) = child.stdout.take() {
                    use std::io::Read;
                    so.read_to_string(&mut out).context("reading sv-flood")?;
                }
                let (status, cpu) = wait_cpu(child.id())?;
                if status != 0 {
                    bail!("sv-flood exited with status {status}");
                }
                let v: Value = serde_json::from_str(out.trim())
                    .with_context(|| format!("sv-flood output {out:?}"))?;
                (
                    v.get("sent").and_then(Value::as_u64).unwrap_or(0),
                    v.get("pps").and_then(Value::as_f64).unwrap_or(0.0),
                    cpu,
                    0,
                )
            }
            None => match live_thread {
                Some(h) => {
                    let (r, cpu, at) = h.join().map_err(|_| anyhow!("live generator panicked"))?;
                    flood_end = cpu.map(|c| (c, at));
                    r?
                }
                None => (0, 0.0, 0.0, 0),
            },
        };
        // Let queued packets drain before the counters are read.
        std::thread::sleep(Duration::from_millis(300));
        let wall_s = t0.elapsed().as_secs_f64();
        let cpu1 = proc_stat()?;
        let server_proc_cpu_s = (netns_cpu_s(lab::NS_EDGE) - proc0).max(0.0);
        let rx1 = edge_x_rx()?;
        let udp1 = edge_udp()?;
        let edge_x_rx = rx1.0.saturating_sub(rx0.0);
        let dropped = match s {
            Server::Sipveil => shield_drops(&self.sipveil)?.saturating_sub(drops0),
            // Kamailio: all of it is flood (ignored, answered or lost in the socket buffer);
            // the references: all of it dropped (XDP) or refused (no socket).
            _ => edge_x_rx,
        };
        let (xdp_run_ns, xdp_runs) = match s {
            Server::Sipveil => {
                let (ns, runs) = entry_prog_stats()?;
                (ns.saturating_sub(xdp0.0), runs.saturating_sub(xdp0.1))
            }
            _ => (0, 0),
        };
        let dcpu = cpu1.delta(&cpu0);
        let system_cpu_s = dcpu.busy() as f64 * tick_ns() / 1e9;
        let softirq_s = dcpu.softirq as f64 * tick_ns() / 1e9;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let (legit_offered, ok) = match &totals {
            Some(t) => (legit as u64, t.successful.saturating_sub(t.late)),
            None => (0, 0),
        };
        Ok(Step {
            offered_pps: rate,
            flood_pps,
            flood_sent,
            flood_calls,
            legit_offered,
            legit_ok_in_time: ok,
            goodput: if legit_offered > 0 {
                ok as f64 / legit_offered as f64
            } else {
                f64::NAN
            },
            system_cpu_s,
            generator_cpu_s,
            dropped,
            edge_x_rx,
            server_proc_cpu_s,
            udp_in_datagrams: udp1.0.saturating_sub(udp0.0),
            udp_rcvbuf_errors: udp1.1.saturating_sub(udp0.1),
            cpu_ns_per_drop: (dropped > 0)
                .then(|| (system_cpu_s - generator_cpu_s).max(0.0) * 1e9 / dropped as f64),
            cpu_ns_per_drop_net: None,
            server_proc_ns_per_drop: (dropped > 0)
                .then(|| server_proc_cpu_s * 1e9 / dropped as f64),
            xdp_run_ns,
            xdp_runs,
            server_ns_per_drop: (dropped > 0)
                .then(|| (server_proc_cpu_s * 1e9 + xdp_run_ns as f64) / dropped as f64),
            softirq_s,
            busy_frac: match &flood_end {
                Some((c, at)) => {
                    c.delta(&cpu0).busy() as f64 * tick_ns()
                        / 1e9
                        / (at.duration_since(t0).as_secs_f64() * cpus as f64).max(1e-9)
                }
                None => system_cpu_s / (wall_s * cpus as f64).max(1e-9),
            },
            loadavg: loadavg(),
            edge_x_rx_dropped: rx1.1.saturating_sub(rx0.1),
            rx_ns_per_flood_packet: (edge_x_rx > 0)
                .then(|| (server_proc_cpu_s + softirq_s) * 1e9 / edge_x_rx as f64),
            softirq_ns_per_rx: (edge_x_rx > 0).then(|| softirq_s * 1e9 / edge_x_rx as f64),
            repeat,
            wall_s,
        })
    }
}

/// `ethtool ARGS` in the edge namespace; an error with ethtool's own message when it fails.
fn edge_ethtool(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", lab::NS_EDGE, "ethtool"])
        .args(args)
        .output()
        .context("running ethtool")?;
    if !out.status.success() {
        bail!(
            "ethtool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn print_step(s: Server, sh: &str, st: &Step) {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    println!(
        "{:10} {:4} offered {:>8} pps #{}: flood {:>9.0} pps in {} bursts, goodput {:.4} ({}/{}), \
         system CPU {:.2} s (busy {:.0} %, softirq {:.2} s, generator {:.2} s, server \
         processes {:.2} s, load {:.2}), sv-x rx {} (ring drops {}), dropped {}, udp in {} \
         rcvbuf-err {}; receive side {} ns per flood packet (server processes + softirq); \
         ns per drop: server {} (XDP {} ns/run), system-generator {}; softirq {} ns per sv-x \
         packet",
        s.name(),
        sh,
        st.offered_pps,
        st.repeat,
        st.flood_pps,
        st.flood_calls,
        st.goodput,
        st.legit_ok_in_time,
        st.legit_offered,
        st.system_cpu_s,
        st.busy_frac * 100.0,
        st.softirq_s,
        st.generator_cpu_s,
        st.server_proc_cpu_s,
        st.loadavg,
        st.edge_x_rx,
        st.edge_x_rx_dropped,
        st.dropped,
        st.udp_in_datagrams,
        st.udp_rcvbuf_errors,
        opt(st.rx_ns_per_flood_packet),
        opt(st.server_ns_per_drop),
        st.xdp_run_ns.checked_div(st.xdp_runs).unwrap_or(0),
        opt(st.cpu_ns_per_drop),
        opt(st.softirq_ns_per_rx),
    );
}

/// The steps pooled per offered rate, sorted by rate: goodput = Σ ok ÷ Σ offered over the
/// repeats (steps without a legitimate load are left out of the goodput), flood rate = mean.
fn pool(steps: &[Step]) -> Vec<RatePoint> {
    let mut rates: Vec<u64> = steps.iter().map(|s| s.offered_pps).collect();
    rates.sort_unstable();
    rates.dedup();
    rates
        .into_iter()
        .map(|r| {
            let at: Vec<&Step> = steps.iter().filter(|s| s.offered_pps == r).collect();
            let n = at.len().max(1) as f64;
            let offered: u64 = at.iter().map(|s| s.legit_offered).sum();
            let ok: u64 = at.iter().map(|s| s.legit_ok_in_time).sum();
            let g: Vec<f64> = at
                .iter()
                .filter(|s| s.legit_offered > 0)
                .map(|s| s.goodput)
                .collect();
            RatePoint {
                offered_pps: r,
                flood_pps: at.iter().map(|s| s.flood_pps).sum::<f64>() / n,
                repeats: u32::try_from(at.len()).unwrap_or(u32::MAX),
                legit_offered: offered,
                legit_ok_in_time: ok,
                goodput: if offered > 0 {
                    ok as f64 / offered as f64
                } else {
                    f64::NAN
                },
                goodput_min: g.iter().copied().fold(f64::INFINITY, f64::min),
                goodput_max: g.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// Where the pooled goodput first falls below half the no-flood point's: the first flood point
/// below half and the point before it (at or above half by construction); the crossing is
/// interpolated linearly in goodput against the logarithm of the flood rate achieved (the rates
/// are spaced geometrically). None without a no-flood point or when no point falls below half.
fn halving(points: &[RatePoint], steps: &[Step]) -> Option<Halving> {
    let base = points
        .iter()
        .find(|p| p.offered_pps == 0 && p.legit_offered > 0)?;
    let half = base.goodput * 0.5;
    let flood: Vec<&RatePoint> = points
        .iter()
        .filter(|p| p.offered_pps > 0 && p.legit_offered > 0 && p.flood_pps > 0.0)
        .collect();
    let i = flood.iter().position(|p| p.goodput < half)?;
    let below = flood[i];
    let above = i.checked_sub(1).and_then(|j| flood.get(j)).copied();
    let interpolated_pps = match above {
        Some(a) if a.goodput > below.goodput => {
            let t = (a.goodput - half) / (a.goodput - below.goodput);
            (a.flood_pps.ln() + t * (below.flood_pps.ln() - a.flood_pps.ln())).exp()
        }
        _ => below.flood_pps,
    };
    let mid = match above {
        Some(a) => {
            ((a.offered_pps as f64 * below.offered_pps as f64).sqrt() / 1000.0).round() as u64
                * 1000
        }
        None => (below.offered_pps / 2000) * 1000,
    };
    let wide = match above {
        Some(a) => below.offered_pps as f64 > 1.2 * a.offered_pps as f64,
        None => true,
    };
    Some(Halving {
        above_pps: above.map(|a| a.flood_pps),
        above_goodput: above.map(|a| a.goodput),
        below_pps: below.flood_pps,
        below_goodput: below.goodput,
        interpolated_pps,
        all_repeats_below: steps
            .iter()
            .filter(|s| s.offered_pps == below.offered_pps && s.legit_offered > 0)
            .all(|s| s.goodput < half),
        stays_below: flood.iter().skip(i + 1).all(|p| p.goodput < half),
        midpoint: (wide && mid > 0).then_some(mid),
    })
}

/// The lowest flood rate achieved at which goodput is below `baseline * (1 - loss)`.
fn loss_rate(steps: &[Step], loss: f64) -> Option<f64> {
    let baseline = steps.first().map(|s| s.goodput)?;
    steps
        .iter()
        .skip(1)
        .filter(|s| s.goodput < baseline * (1.0 - loss))
        .map(|s| s.flood_pps)
        .reduce(f64::min)
}

/// The highest flood rate achieved below the lowest rate that lost more than `loss` of the
/// baseline's goodput: every step up to it held (all steps when none lost; None when the lowest
/// step already lost, or there is no flood step).
fn held_rate(steps: &[Step], loss: f64) -> Option<f64> {
    let first_loss = loss_rate(steps, loss).unwrap_or(f64::INFINITY);
    steps
        .iter()
        .skip(1)
        .map(|s| s.flood_pps)
        .filter(|r| *r < first_loss)
        .reduce(f64::max)
}

/// One server's receive-side CPU at one offered rate, over its repeats.
struct RxCpu {
    /// Σ (server processes' CPU + softirq), ns.
    cpu_ns: f64,
    dropped: u64,
    edge_x_rx: u64,
    busy_frac: f64,
    flood_pps: f64,
    /// The series' background softirq (its no-flood steps' softirq per second) × the steps'
    /// wall time, ns: other work on the machine (timers, RCU, other users' disk and network).
    background_ns: f64,
    /// The legitimate load's share of the server processes' CPU, ns: the series' no-flood
    /// steps' server-process CPU per legitimate REGISTER answered in time (pooled over the
    /// repeats) × those answered in the steps at this rate. Not the flood's work; charged to it in `raw` and `net`.
    legit_ns: f64,
}

fn rx_cpu(series: &Series, rate: u64) -> Option<RxCpu> {
    // Every no-flood step of the series (the goodput baseline and its repeats), pooled.
    let no_flood: Vec<&Step> = series
        .steps
        .iter()
        .chain(&series.legit_only)
        .filter(|s| s.offered_pps == 0 && s.wall_s > 0.0)
        .collect();
    let nf_wall: f64 = no_flood.iter().map(|s| s.wall_s).sum();
    let bg_per_s = if nf_wall > 0.0 {
        no_flood.iter().map(|s| s.softirq_s).sum::<f64>() / nf_wall
    } else {
        0.0
    };
    // Answered in time, not offered: a request lost in a full socket buffer cost the server's
    // processes nothing (Kamailio's loss), so this charges each server only for what it
    // served. Requests answered late also cost CPU and are left in the flood's share, which
    // is conservative against the server that answers late (Kamailio).
    let nf_ok: u64 = no_flood.iter().map(|s| s.legit_ok_in_time).sum();
    let legit_per_ok_ns = if nf_ok > 0 {
        no_flood.iter().map(|s| s.server_proc_cpu_s).sum::<f64>() * 1e9 / nf_ok as f64
    } else {
        0.0
    };
    let at: Vec<&Step> = series
        .steps
        .iter()
        .filter(|s| s.offered_pps == rate)
        .collect();
    if at.is_empty() {
        return None;
    }
    let n = at.len() as f64;
    Some(RxCpu {
        cpu_ns: at
            .iter()
            .map(|s| (s.server_proc_cpu_s + s.softirq_s) * 1e9)
            .sum(),
        dropped: at.iter().map(|s| s.dropped).sum(),
        edge_x_rx: at.iter().map(|s| s.edge_x_rx).sum(),
        busy_frac: at.iter().map(|s| s.busy_frac).sum::<f64>() / n,
        flood_pps: at.iter().map(|s| s.flood_pps).sum::<f64>() / n,
        background_ns: at.iter().map(|s| s.wall_s * bg_per_s * 1e9).sum(),
        legit_ns: at
            .iter()
            .map(|s| s.legit_ok_in_time as f64 * legit_per_ok_ns)
            .sum(),
    })
}

/// The receive-side CPU per dropped packet, sipveil ÷ Kamailio, at every flood rate all three
/// series measured: raw ((server processes + the machine's softirq time) ÷ dropped) and net:
/// minus each series' background softirq (its no-flood step's rate × wall time) and minus the
/// baseline's unavoidable receive path (the baseline's background-subtracted softirq ns per
/// packet that reached sv-x at that rate × the server's packets on sv-x). Rates where a
/// server's generator fell short (< 95 % of offered) or its machine was saturated (busy ≥
/// `saturated`) are listed but not compared. The headline is the highest compared rate
/// (`unsaturated: true`); when no rate qualifies, the lowest common rate, `unsaturated: false`.
/// `worst_*` over all compared rates.
fn rx_drop_cpu(b: &Series, sv: &Series, k: &Series, saturated: f64) -> Value {
    let mut rates: Vec<u64> = sv
        .steps
        .iter()
        .map(|s| s.offered_pps)
        .filter(|r| *r > 0)
        .collect();
    rates.sort_unstable();
    rates.dedup();
    let mut rows = Vec::new();
    let mut head: Option<Value> = None;
    let mut lowest: Option<Value> = None;
    let (mut worst_raw, mut worst_net, mut worst_flood): (Option<f64>, Option<f64>, Option<f64>) =
        (None, None, None);
    for r in rates {
        let (Some(bb), Some(a), Some(c)) = (rx_cpu(b, r), rx_cpu(sv, r), rx_cpu(k, r)) else {
            continue;
        };
        if bb.edge_x_rx == 0 || a.edge_x_rx == 0 || c.edge_x_rx == 0 {
            continue;
        }
        let base_ns = (bb.cpu_ns - bb.background_ns).max(0.0) / bb.edge_x_rx as f64;
        let side = |x: &RxCpu| {
            // Per flood packet that reached the server (sv-x carries nothing else), dropped or
            // absorbed: Kamailio's "dropped" is all of them already; sipveil's shield drops
            // leave out what its ceilings admit, whose processing is in the numerator.
            let raw = x.cpu_ns / x.edge_x_rx as f64;
            let net =
                (x.cpu_ns - x.background_ns - base_ns * x.edge_x_rx as f64) / x.edge_x_rx as f64;
            let flood_only = net - x.legit_ns / x.edge_x_rx as f64;
            let ok = x.flood_pps >= 0.95 * r as f64 && x.busy_frac < saturated;
            (raw, net, flood_only, ok)
        };
        let ((ar, an, af, aok), (cr, cn, cf, cok)) = (side(&a), side(&c));
        let compared = aok && cok && bb.flood_pps >= 0.95 * r as f64;
        let ratio_raw = (cr > 0.0).then(|| ar / cr);
        // A net figure at or below zero means the background estimate (the no-flood step's
        // softirq rate) exceeded what the step measured: noise larger than the flood's own
        // cost, not a measurement. No net ratio then; the headline falls back to the raw one.
        let ratio_net = (cn > 0.0 && an > 0.0).then(|| an / cn);
        let ratio_flood_only = (cf > 0.0 && af > 0.0).then(|| af / cf);
        let row = json!({
            "offered_pps": r,
            "compared": compared,
            "baseline_softirq_ns_per_packet": base_ns,
            "sipveil_background_softirq_s": a.background_ns / 1e9,
            "kamailio_background_softirq_s": c.background_ns / 1e9,
            "baseline_busy_frac": bb.busy_frac,
            "sipveil_ns": ar,
            "sipveil_ns_baseline_subtracted": an,
            "sipveil_busy_frac": a.busy_frac,
            "sipveil_flood_packets": a.edge_x_rx,
            "sipveil_dropped": a.dropped,
            "kamailio_flood_packets": c.edge_x_rx,
            "kamailio_dropped": c.dropped,
            "sipveil_flood_pps": a.flood_pps,
            "kamailio_ns": cr,
            "kamailio_ns_baseline_subtracted": cn,
            "kamailio_busy_frac": c.busy_frac,
            "kamailio_flood_pps": c.flood_pps,
            "ratio_raw": ratio_raw,
            "ratio_baseline_subtracted": ratio_net,
            "sipveil_legit_proc_s": a.legit_ns / 1e9,
            "kamailio_legit_proc_s": c.legit_ns / 1e9,
            "sipveil_ns_flood_only": af,
            "kamailio_ns_flood_only": cf,
            "ratio_flood_only": ratio_flood_only,
        });
        if compared {
            if let Some(v) = ratio_raw {
                worst_raw = Some(worst_raw.map_or(v, |w: f64| w.max(v)));
            }
            if let Some(v) = ratio_net {
                worst_net = Some(worst_net.map_or(v, |w: f64| w.max(v)));
            }
            if let Some(v) = ratio_flood_only {
                worst_flood = Some(worst_flood.map_or(v, |w: f64| w.max(v)));
            }
            head = Some(row.clone());
        }
        if lowest.is_none() {
            lowest = Some(row.clone());
        }
        rows.push(row);
    }
    let unsaturated = head.is_some();
    let head = head.or(lowest);
    // The headline: the flood-only ratio where there is one (the flood's own cost: net of the
    // background, the receive path every server pays and the legitimate load's work), else the
    // net one, else the raw one (which also charges the flood with all of those).
    let pick = |k: &str| head.as_ref().and_then(|h| h[k].as_f64());
    let (ratio, ratio_kind) = match (pick("ratio_flood_only"), pick("ratio_baseline_subtracted")) {
        (Some(v), _) => (Some(v), "flood only"),
        (None, Some(v)) => (Some(v), "net (no usable flood-only figure)"),
        (None, None) => (pick("ratio_raw"), "raw (no usable net figure)"),
    };
    json!({
        "offered_pps": head.as_ref().map(|h| h["offered_pps"].clone()),
        "unsaturated": unsaturated,
        "ratio": ratio,
        "ratio_kind": ratio_kind,
        "ratio_raw": head.as_ref().map(|h| h["ratio_raw"].clone()),
        "ratio_net": head.as_ref().map(|h| h["ratio_baseline_subtracted"].clone()),
        "ratio_flood_only": head.as_ref().map(|h| h["ratio_flood_only"].clone()),
        "worst_ratio_flood_only_compared": worst_flood,
        "worst_ratio_compared": worst_net,
        "worst_ratio_raw_compared": worst_raw,
        "saturated_busy_frac": saturated,
        "by_rate": rows,
    })
}

/// The issue's target for one shape: sipveil keeps ≥ 99.9 % of its goodput at ≥ 5× the flood
/// rate that halves Kamailio's. `ratio` = the highest rate up to which sipveil held ÷ the rate
/// at which Kamailio lost 50 % (null when Kamailio never did or sipveil held no step).
///
/// Kamailio's halving rate is the crossing of its goodput pooled over the repeats (see
/// [`halving`]), interpolated; `ratio_conservative` uses the first pooled point below half
/// instead, `ratio_first_step_below` the lowest single step below half (the definition before
/// repeats). sipveil's held rate counts every repeat (one step under 99.9 % ends it).
fn issue_target(sv: &Series, k: &Series) -> Value {
    let held = held_rate(&sv.steps, 0.001);
    let div = |d: Option<f64>| match (held, d) {
        (Some(h), Some(x)) if x > 0.0 => Some(h / x),
        _ => None,
    };
    let interp = k.halving.as_ref().map(|h| h.interpolated_pps);
    let ratio = div(interp);
    let conservative = div(k.halving.as_ref().map(|h| h.below_pps));
    json!({
        "kamailio_halves_at_pps": interp,
        "kamailio_halving": k.halving,
        "kamailio_first_step_below_half_pps": k.loses_50pct_at,
        "sipveil_holds_99_9pct_up_to_pps": held,
        "ratio": ratio,
        "met": ratio.map(|r| r >= 5.0),
        "ratio_conservative": conservative,
        "met_conservative": conservative.map(|r| r >= 5.0),
        "ratio_first_step_below": div(k.loses_50pct_at),
    })
}

/// sipveil ÷ Kamailio flood rate at a goodput-loss threshold. When a side never crossed it, its
/// highest flood rate stands in and the ratio is a bound: `lower` (only Kamailio crossed: sipveil
/// held at least this much more), `upper` (only sipveil crossed), `none` (neither crossed: no
/// ratio; the generator was the limit).
fn threshold_ratio(sv: Option<f64>, sv_max: f64, k: Option<f64>, k_max: f64) -> Value {
    let (ratio, bound) = match (sv, k) {
        (Some(a), Some(b)) if b > 0.0 => (Some(a / b), "exact"),
        (None, Some(b)) if b > 0.0 => (Some(sv_max / b), "lower"),
        (Some(a), None) if k_max > 0.0 => (Some(a / k_max), "upper"),
        _ => (None, "none"),
    };
    json!({
        "ratio": ratio,
        "bound": bound,
        "sipveil_pps": sv,
        "sipveil_max_flood_pps": sv_max,
        "kamailio_pps": k,
        "kamailio_max_flood_pps": k_max,
    })
}

fn plot(path: &Path, series: &[Series]) -> Result<()> {
    use plotters::prelude::*;
    let xmax = series
        .iter()
        .map(|s| s.max_flood_pps)
        .fold(1000.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Legitimate REGISTER goodput under a SIP flood",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..xmax, 0.0f64..1.05)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("flood rate achieved (packets/s)")
        .y_desc("goodput (fraction answered 200 in 500 ms)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // Pooled per rate and sorted (repeats and the refinement step would zigzag); the
        // reference series without a legitimate load have no goodput to draw.
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.goodput.is_finite())
            .map(|p| (p.flood_pps, p.goodput))
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{} / {} source(s)", s.server, s.shape))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn fmt_rate(r: Option<f64>, max: f64) -> String {
    match r {
        Some(r) => format!("{:.0} pps", r),
        None => format!("not reached up to {max:.0} pps"),
    }
}

fn main() -> Result<()> {
    let o = Opts::parse();
    let t_start = Instant::now();
    let quick = o.quick;
    let step_secs = o.step_secs.unwrap_or(if quick { 2.0 } else { 4.0 });
    if !(step_secs.is_finite() && step_secs > 0.0 && step_secs <= 30.0) {
        bail!("--step-secs must be in (0, 30]");
    }
    let mut rates = o.rates.clone();
    if rates.is_empty() {
        rates = if quick {
            vec![0, 50_000, 300_000, 1_200_000]
        } else {
            vec![
                0, 20_000, 50_000, 150_000, 300_000, 600_000, 1_200_000, 2_400_000, 3_600_000,
            ]
        };
    }
    let servers: Vec<Server> = o
        .servers
        .iter()
        .map(|s| match s.as_str() {
            "sipveil" => Ok(Server::Sipveil),
            "kamailio" => Ok(Server::Kamailio),
            "baseline" => Ok(Server::Baseline),
            "nolistener" => Ok(Server::NoListener),
            other => Err(anyhow!("unknown server {other:?}")),
        })
        .collect::<Result<_>>()?;
    for sh in &o.shapes {
        if sh != "one" && sh != "many" {
            bail!("unknown shape {sh:?} (one, many)");
        }
    }
    if o.live_threads == 0 || o.live_threads > 8 {
        bail!("--live-threads must be in 1..=8");
    }
    if o.live_payloads == 0 || o.live_payloads > 65_536 {
        bail!("--live-payloads must be in 1..=65536");
    }
    if o.edge_x_queues.is_some_and(|n| !(1..=8).contains(&n)) {
        bail!("--edge-x-queues must be in 1..=8");
    }
    if !(1..=1 << 20).contains(&o.live_chunk) {
        bail!("--live-chunk must be in 1..=1048576");
    }
    if o.many_sources.is_some_and(|n| !(1..=MANY_MAX).contains(&n)) {
        bail!("--many-sources must be in 1..={MANY_MAX}");
    }
    let sipveil = o.sipveil.clone().unwrap_or_else(|| sibling("sipveil"));
    let sv_flood = o.sv_flood.clone().unwrap_or_else(|| sibling("sv-flood"));
    fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let tmp = std::env::temp_dir().join(format!("sv-bench-flood-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;

    let load_start = quiet_wait(Duration::from_secs_f64(o.quiet_wait.max(0.0)), o.quiet_load);
    println!("load average at start: {load_start:.2}");
    let _session = Lab::session(Shape::TwoArm, &sipveil).map_err(|e| anyhow!("lab: {e}"))?;
    Lab::route_flood_range().map_err(|e| anyhow!("flood range: {e}"))?;
    // The kernel accounts XDP run time only with this on (a few ns per program run, for
    // sipveil's entry program and the generator's alike).
    let _bpf_stats = BpfStats::enable()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let edge_x_queues = o
        .edge_x_queues
        .unwrap_or(u32::try_from(o.live_threads.min(cpus)).unwrap_or(1));
    if edge_x_queues != 1 {
        edge_ethtool(&["-L", EDGE_X_IFACE, "rx", &edge_x_queues.to_string()])?;
    }
    if o.one_generator == "live" && o.shapes.iter().any(|s| s == "one") {
        prepare_live(&sipveil, LIVE_IFACE, "svgen1", None)?;
    }
    if o.many_generator == "live" && o.shapes.iter().any(|s| s == "many") {
        let n = o.many_sources.unwrap_or(MANY_MAX);
        prepare_live(&sipveil, LIVE_ROTATE_IFACE, "svgen3", Some((MANY_BASE, n)))?;
    }

    let shapes = o.shapes.clone();
    let mut bench = Bench {
        o,
        sipveil,
        sv_flood,
        step_secs,
        step_no: 0,
    };
    let mut all: Vec<Series> = Vec::new();
    let mut extra_rates: std::collections::HashMap<String, Vec<u64>> =
        std::collections::HashMap::new();
    for &s in &servers {
        let mut warmed = false;
        let running = match bench.start(s, &tmp) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e:#}", s.name());
                for sh in &shapes {
                    all.push(Series {
                        server: s.name().to_owned(),
                        shape: sh.clone(),
                        errors: vec![format!("{e:#}")],
                        ..Series::default()
                    });
                }
                continue;
            }
        };
        for sh in &shapes {
            let many = sh == "many";
            let mut series = Series {
                server: s.name().to_owned(),
                shape: sh.clone(),
                ..Series::default()
            };
            // Kamailio's halving brackets found in this run add a rate for sipveil too.
            let mut my_rates = rates.clone();
            if s == Server::Sipveil
                && let Some(extra) = extra_rates.get(sh.as_str())
            {
                my_rates.extend(extra.iter().copied());
                my_rates.sort_unstable();
                my_rates.dedup();
            }
            let (repeat, refine) = (bench.o.repeat.max(1), bench.o.refine);
            let reps = |_rate: u64| if s.answers() { repeat } else { 1 };
            let mut plan: Vec<(u64, u32)> = my_rates
                .iter()
                .flat_map(|&r| (0..reps(r)).map(move |i| (r, i)))
                .collect();
            let mut refined = false;
            let mut i = 0;
            while i < plan.len() {
                let (rate, repeat) = plan[i];
                i += 1;
                if rate == 0 && s.answers() && !warmed {
                    // The first legitimate load after a start costs a server 2-3x what later
                    // ones do (measured for sipveil: its store's first writes — file growth,
                    // 2 000+ block-device softirqs — and the workers' first allocations), and
                    // the no-flood step stands for the legitimate load's cost in
                    // `drop_cpu_ratio`: one unrecorded no-flood step first, for every server.
                    warmed = true;
                    match bench.step(s, many, 0, 0) {
                        Ok(st) => println!(
                            "{} {sh}: warm-up (not recorded): goodput {:.4}, server processes \
                             {:.2} s",
                            s.name(),
                            st.goodput,
                            st.server_proc_cpu_s
                        ),
                        Err(e) => eprintln!("{} {sh}: warm-up: {e:#}", s.name()),
                    }
                }
                if rate == 0 && s.answers() {
                    let (waited, quiet) = settle();
                    println!(
                        "{} {sh}: {} after {waited:.1} s before the no-flood step",
                        s.name(),
                        if quiet { "quiet" } else { "NOT quiet" }
                    );
                }
                match bench.step(s, many, rate, repeat) {
                    Ok(st) if rate == 0 && repeat > 0 => {
                        print_step(s, sh, &st);
                        series.legit_only.push(st);
                    }
                    Ok(st) => {
                        print_step(s, sh, &st);
                        series.steps.push(st);
                    }
                    Err(e) => {
                        eprintln!("{} {sh} {rate}: {e:#}", s.name());
                        series.errors.push(format!("{rate}: {e:#}"));
                    }
                }
                // Kamailio's sweep done: measure the middle of its halving bracket too.
                if i == plan.len() && s == Server::Kamailio && refine && !refined {
                    refined = true;
                    let points = pool(&series.steps);
                    if let Some(mid) = halving(&points, &series.steps).and_then(|h| h.midpoint)
                        && !my_rates.contains(&mid)
                    {
                        println!("kamailio {sh}: refining the halving bracket at {mid} pps");
                        plan.extend((0..reps(mid)).map(|r| (mid, r)));
                        extra_rates.entry(sh.clone()).or_default().push(mid);
                    }
                }
            }
            let background = series
                .steps
                .first()
                .filter(|b| b.offered_pps == 0 && b.wall_s > 0.0)
                .map(|b| b.system_cpu_s / b.wall_s);
            if let Some(bg) = background {
                for st in &mut series.steps {
                    if st.dropped > 0 {
                        let net = (st.system_cpu_s - st.generator_cpu_s - bg * st.wall_s).max(0.0);
                        st.cpu_ns_per_drop_net = Some(net * 1e9 / st.dropped as f64);
                    }
                }
            }
            series.max_flood_pps = series.steps.iter().map(|p| p.flood_pps).fold(0.0, f64::max);
            series.loses_0_1pct_at = loss_rate(&series.steps, 0.001);
            series.loses_50pct_at = loss_rate(&series.steps, 0.5);
            series.points = pool(&series.steps);
            series.halving = halving(&series.points, &series.steps);
            all.push(series);
        }
        if let Err(e) = running.stop(&bench.sipveil) {
            bail!("stopping {}: {e:#}", s.name());
        }
    }

    println!("\nflood rate at which legitimate goodput falls (vs the no-flood baseline):");
    for s in &all {
        println!(
            "  {:8} {:4} sources: -0.1 % at {}, -50 % at {}",
            s.server,
            s.shape,
            fmt_rate(s.loses_0_1pct_at, s.max_flood_pps),
            fmt_rate(s.loses_50pct_at, s.max_flood_pps)
        );
    }
    let find =
        |server: &str, shape: &str| all.iter().find(|s| s.server == server && s.shape == shape);
    // sipveil ÷ Kamailio flood rate at 0.1 % and 50 % goodput loss, per shape (see threshold_ratio).
    let mut goodput_ratio = serde_json::Map::new();
    let mut drop_cpu = serde_json::Map::new();
    let mut drop_cpu_sysgen = serde_json::Map::new();
    let mut server_drop_cpu = serde_json::Map::new();
    for sh in &shapes {
        if let (Some(sv), Some(k)) = (find("sipveil", sh), find("kamailio", sh)) {
            let mut per = serde_json::Map::new();
            for (key, a, b) in [
                ("loss_0_1pct", sv.loses_0_1pct_at, k.loses_0_1pct_at),
                ("loss_50pct", sv.loses_50pct_at, k.loses_50pct_at),
            ] {
                per.insert(
                    key.to_owned(),
                    threshold_ratio(a, sv.max_flood_pps, b, k.max_flood_pps),
                );
            }
            let target = issue_target(sv, k);
            println!(
                "  {sh:4} sources: sipveil held >= 99.9 % up to {} pps; Kamailio halved at {} pps; \
                 ratio {} (target >= 5)",
                target["sipveil_holds_99_9pct_up_to_pps"]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.0}")),
                target["kamailio_halves_at_pps"]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.0}")),
                target["ratio"]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.2}")),
            );
            per.insert("issue_target_5x_halving".to_owned(), target);
            goodput_ratio.insert(sh.clone(), Value::Object(per));
            // sipveil CPU/drop ÷ Kamailio CPU/drop (as the other benches: sipveil ÷ the peer;
            // target ≤ 0.1) at the highest step both measured.
            let best = |s: &Series| {
                s.steps
                    .iter()
                    .filter(|p| {
                        p.cpu_ns_per_drop.is_some()
                            && p.offered_pps > 0
                            && p.flood_pps >= 0.95 * p.offered_pps as f64
                    })
                    .map(|p| (p.offered_pps, p.cpu_ns_per_drop))
                    .collect::<Vec<_>>()
            };
            let (bs, bk) = (best(sv), best(k));
            let common = bs
                .iter()
                .filter_map(|(r, v)| {
                    bk.iter()
                        .find(|(rk, _)| rk == r)
                        .map(|(_, vk)| (*r, *v, *vk))
                })
                .max_by_key(|(r, _, _)| *r);
            drop_cpu_sysgen.insert(
                sh.clone(),
                match common {
                    Some((r, Some(v), Some(vk))) if vk > 0.0 => {
                        let net = |s: &Series| {
                            s.steps
                                .iter()
                                .find(|p| p.offered_pps == r)
                                .and_then(|p| p.cpu_ns_per_drop_net)
                        };
                        let (nv, nk) = (net(sv), net(k));
                        json!({
                            "offered_pps": r,
                            "ratio": v / vk,
                            "sipveil_ns": v,
                            "kamailio_ns": vk,
                            "ratio_background_subtracted": match (nv, nk) {
                                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                                _ => None,
                            },
                            "sipveil_ns_background_subtracted": nv,
                            "kamailio_ns_background_subtracted": nk,
                        })
                    }
                    _ => Value::Null,
                },
            );
            // Server-attributable CPU per drop at every rate both achieved (≥ 95 % of offered),
            // and the worst ratio for sipveil among them.
            let mut rows = Vec::new();
            let mut worst: Option<f64> = None;
            for p in sv
                .steps
                .iter()
                .filter(|p| p.offered_pps > 0 && p.flood_pps >= 0.95 * p.offered_pps as f64)
            {
                let Some(q) = k.steps.iter().find(|q| {
                    q.offered_pps == p.offered_pps && q.flood_pps >= 0.95 * q.offered_pps as f64
                }) else {
                    continue;
                };
                if let (Some(a), Some(b)) = (p.server_ns_per_drop, q.server_ns_per_drop)
                    && b > 0.0
                {
                    let ratio = a / b;
                    worst = Some(worst.map_or(ratio, |w: f64| w.max(ratio)));
                    rows.push(json!({
                        "offered_pps": p.offered_pps,
                        "sipveil_ns": a,
                        "kamailio_ns": b,
                        "ratio": ratio,
                    }));
                }
            }
            println!(
                "  {sh:4} sources: server-attributable CPU per drop, sipveil ÷ Kamailio: {} \
                 (worst {}; target <= 0.1)",
                rows.iter()
                    .map(|r| format!(
                        "{:.3} @ {}",
                        r["ratio"].as_f64().unwrap_or(f64::NAN),
                        r["offered_pps"]
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                worst.map_or("-".to_owned(), |w| format!("{w:.3}"))
            );
            server_drop_cpu.insert(sh.clone(), json!({ "worst_ratio": worst, "by_rate": rows }));
            // The receive-side measure (needs the baseline series of this shape).
            let rx = match find("baseline", sh) {
                Some(b) => rx_drop_cpu(b, sv, k, bench.o.saturated_busy),
                None => Value::Null,
            };
            println!(
                "  {sh:4} sources: receive-side CPU per drop (server processes + softirq), \
                 sipveil ÷ Kamailio: raw {} / net {} / headline {} ({}) at {} pps, \
                 unsaturated: {} (worst compared {}; target <= 0.1)",
                rx["ratio_raw"]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.3}")),
                rx["ratio_net"]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.3}")),
                rx["ratio"]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.3}")),
                rx["ratio_kind"].as_str().unwrap_or("-"),
                rx["offered_pps"],
                rx["unsaturated"],
                rx["worst_ratio_flood_only_compared"]
                    .as_f64()
                    .or(rx["worst_ratio_compared"].as_f64())
                    .map_or("-".to_owned(), |v| format!("{v:.3}")),
            );
            for row in rx["by_rate"].as_array().into_iter().flatten() {
                println!(
                    "        {:>8} pps: sipveil {:.0} / {:.0} ns, kamailio {:.0} / {:.0} ns (raw / \
                     baseline subtracted; baseline {:.0} ns per packet), flood only {:.0} / {:.0} \
                     ns (legitimate load {:.2} / {:.2} s), busy {:.0} % / {:.0} %, ratio {} / {} / \
                     {}{}",
                    row["offered_pps"],
                    row["sipveil_ns"].as_f64().unwrap_or(f64::NAN),
                    row["sipveil_ns_baseline_subtracted"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                    row["kamailio_ns"].as_f64().unwrap_or(f64::NAN),
                    row["kamailio_ns_baseline_subtracted"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                    row["baseline_softirq_ns_per_packet"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                    row["sipveil_ns_flood_only"].as_f64().unwrap_or(f64::NAN),
                    row["kamailio_ns_flood_only"].as_f64().unwrap_or(f64::NAN),
                    row["sipveil_legit_proc_s"].as_f64().unwrap_or(f64::NAN),
                    row["kamailio_legit_proc_s"].as_f64().unwrap_or(f64::NAN),
                    row["sipveil_busy_frac"].as_f64().unwrap_or(f64::NAN) * 100.0,
                    row["kamailio_busy_frac"].as_f64().unwrap_or(f64::NAN) * 100.0,
                    row["ratio_raw"]
                        .as_f64()
                        .map_or("-".to_owned(), |v| format!("{v:.3}")),
                    row["ratio_baseline_subtracted"]
                        .as_f64()
                        .map_or("-".to_owned(), |v| format!("{v:.3}")),
                    row["ratio_flood_only"]
                        .as_f64()
                        .map_or("-".to_owned(), |v| format!("{v:.3}")),
                    if row["compared"].as_bool() == Some(true) {
                        ""
                    } else {
                        " (not compared: saturated or short)"
                    }
                );
            }
            drop_cpu.insert(sh.clone(), rx);
        }
    }
    let summary = json!({
        "goodput_flood_rate_ratio": goodput_ratio,
        "drop_cpu_ratio": drop_cpu,
        "drop_cpu_ratio_system_minus_generator": drop_cpu_sysgen,
        "server_drop_cpu_ratio": server_drop_cpu,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "repeat": bench.o.repeat,
        "legit_rate": bench.o.legit_rate,
        "generators": {
            "one": bench.o.one_generator,
            "many": bench.o.many_generator,
            "many_sources": bench.o.many_sources.unwrap_or(if bench.o.many_generator == "live" {
                MANY_MAX
            } else {
                1000
            }),
            "live_threads": bench.o.live_threads,
            "live_payloads": bench.o.live_payloads,
            "live_chunk": bench.o.live_chunk,
            "live_tick_us": bench.o.live_tick_us,
            "edge_x_queues": edge_x_queues,
        },
        "step_secs": step_secs,
        "quick": quick,
        "wall_s": t_start.elapsed().as_secs_f64(),
        "series": all,
        "method": "goodput = legitimate REGISTERs answered 200 within 500 ms / offered (one \
                   send each, no retransmission); each flood step of kamailio and sipveil is \
                   measured `repeat` times and pooled per rate (sum ok / sum offered); \
                   kamailio's halving = the first pooled point below half the no-flood goodput \
                   and the point before it, the crossing interpolated linearly in goodput on a \
                   log scale of the achieved flood rate (refined by one extra rate, the \
                   bracket's geometric middle); goodput_flood_rate_ratio.*.\
                   issue_target_5x_halving.ratio = sipveil's highest achieved rate below its \
                   first step (any repeat) under 99.9 % / that crossing. dropped: sipveil = \
                   shield_drop_* XDP counters + userspace drops; kamailio = packets received on \
                   the edge's sv-x interface (all flood, absorbed by pike/htable ban, answered, \
                   or lost in its full socket buffer). drop_cpu_ratio (the headline): \
                   receive-side CPU per flood packet = (CPU of the processes in sv-edge + the \
                   whole machine's softirq time from /proc/stat over the step; with tick-based \
                   accounting the veth NAPI receive, XDP and the kernel's IP/UDP delivery are \
                   softirq, the generator's own BPF_PROG_TEST_RUN work is its system time) / \
                   packets that reached sv-x, sipveil / kamailio per offered rate; raw, and net \
                   = minus each series' background softirq (its no-flood step's rate x wall) \
                   and minus the baseline series (the same flood into a trivial XDP drop, \
                   sv_sink, no listener: its background-subtracted softirq per packet x the \
                   server's packets on sv-x); flood only = net minus the legitimate load's \
                   work (the series' no-flood steps' server-process CPU per legitimate \
                   REGISTER answered in time, pooled over `repeat` no-flood steps, x those \
                   answered in the step; the background softirq rate is pooled over them too; each server gets one \
                   unrecorded no-flood warm-up step after its start and is left to go quiet \
                   before each no-flood step, so its start-up costs are not in it); \
                   `ratio` is the flood-only one at the highest rate where both generators \
                   achieved >= 95 % and neither machine was busier than saturated_busy_frac \
                   (else the lowest common rate, unsaturated: false); where a figure is <= 0 \
                   (background noise above the flood's own cost) there is no such ratio and \
                   `ratio` falls back to net, then raw (`ratio_kind`). \
                   drop_cpu_ratio_system_minus_generator (the old headline) = (system busy CPU \
                   - the generator's rusage) / dropped at the highest offered rate both \
                   achieved within 5 %; server_drop_cpu_ratio = (CPU of the processes in \
                   sv-edge + sipveil's XDP entry program run time from kernel.bpf_stats) / \
                   dropped at every rate both achieved, and the worst (leaves out Kamailio's \
                   kernel receive path)",
    });
    let sum_path = bench.o.out.join("summary.json");
    fs::write(&sum_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", sum_path.display()))?;
    let svg = bench.o.out.join("goodput.svg");
    plot(&svg, &all)?;
    println!(
        "wrote {} and {} in {:.0} s",
        sum_path.display(),
        svg.display(),
        t_start.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(flood_pps: f64, goodput: f64) -> Step {
        Step {
            flood_pps,
            goodput,
            ..Step::default()
        }
    }

    #[test]
    fn loss_rates_are_relative_to_the_baseline_and_take_the_lowest_failing_rate() {
        let steps = [
            step(0.0, 1.0),
            step(5e4, 1.0),
            step(1.5e5, 0.99),
            step(1.2e5, 0.3),
            step(3e5, 1.0),
        ];
        assert_eq!(loss_rate(&steps, 0.001), Some(1.2e5));
        assert_eq!(loss_rate(&steps, 0.5), Some(1.2e5));
        let held = [step(0.0, 0.98), step(5e4, 0.98)];
        assert_eq!(loss_rate(&held, 0.001), None);
        assert_eq!(loss_rate(&[], 0.5), None);
    }

    #[test]
    fn held_rate_stops_below_the_first_loss() {
        let steps = [
            step(0.0, 1.0),
            step(5e4, 1.0),
            step(1.5e5, 1.0),
            step(3e5, 0.99),
            step(6e5, 1.0),
        ];
        assert_eq!(held_rate(&steps, 0.001), Some(1.5e5));
        assert_eq!(held_rate(&steps[..3], 0.001), Some(1.5e5));
        assert_eq!(held_rate(&[step(0.0, 1.0), step(5e4, 0.5)], 0.001), None);
        assert_eq!(held_rate(&[step(0.0, 1.0)], 0.001), None);
    }

    fn rstep(offered: u64, goodput: f64, repeat: u32) -> Step {
        Step {
            offered_pps: offered,
            flood_pps: offered as f64,
            legit_offered: 2000,
            legit_ok_in_time: (goodput * 2000.0).round() as u64,
            goodput,
            repeat,
            ..Step::default()
        }
    }

    #[test]
    fn pooling_sums_the_repeats_and_keeps_their_spread() {
        let steps = [
            rstep(0, 1.0, 0),
            rstep(1000, 0.6, 0),
            rstep(1000, 0.4, 1),
            rstep(10, 0.9, 0),
        ];
        let p = pool(&steps);
        assert_eq!(
            p.iter().map(|x| x.offered_pps).collect::<Vec<_>>(),
            [0, 10, 1000]
        );
        assert_eq!(p[2].repeats, 2);
        assert_eq!((p[2].legit_offered, p[2].legit_ok_in_time), (4000, 2000));
        assert!((p[2].goodput - 0.5).abs() < 1e-12);
        assert_eq!((p[2].goodput_min, p[2].goodput_max), (0.4, 0.6));
    }

    #[test]
    fn halving_interpolates_on_a_log_rate_scale_between_the_bracketing_points() {
        // 0.7 at 1 000 pps, 0.3 at 100 000 pps: half-way in goodput is half-way in log rate.
        let steps = [
            rstep(0, 1.0, 0),
            rstep(1_000, 0.7, 0),
            rstep(100_000, 0.3, 0),
            rstep(100_000, 0.3, 1),
            rstep(1_000_000, 0.6, 0),
        ];
        let h = halving(&pool(&steps), &steps).expect("a crossing");
        assert_eq!(h.above_pps, Some(1_000.0));
        assert_eq!(h.below_pps, 100_000.0);
        assert!((h.interpolated_pps - 10_000.0).abs() < 1e-6);
        assert!(h.all_repeats_below);
        // The curve comes back above half at 1 Mpps.
        assert!(!h.stays_below);
        assert_eq!(h.midpoint, Some(10_000));
    }

    #[test]
    fn halving_is_relative_to_the_no_flood_goodput_and_absent_when_never_crossed() {
        let steps = [
            rstep(0, 0.8, 0),
            rstep(1_000, 0.45, 0),
            rstep(2_000, 0.3, 0),
        ];
        // Half of 0.8 is 0.4: 0.45 is above, 0.3 below.
        let h = halving(&pool(&steps), &steps).expect("a crossing");
        assert_eq!(h.below_pps, 2_000.0);
        assert_eq!(h.midpoint, Some(1_000));
        let never = [rstep(0, 1.0, 0), rstep(1_000, 0.55, 0)];
        assert!(halving(&pool(&never), &never).is_none());
        // Below half at the first flood point: no point above, the crossing is that point.
        let first = [rstep(0, 1.0, 0), rstep(4_000, 0.2, 0), rstep(4_000, 0.6, 1)];
        let h = halving(&pool(&first), &first).expect("a crossing");
        assert_eq!((h.above_pps, h.interpolated_pps), (None, 4_000.0));
        assert!(!h.all_repeats_below);
        assert_eq!(h.midpoint, Some(2_000));
    }

    fn cpu_step(offered: u64, proc_s: f64, softirq_s: f64, dropped: u64, rx: u64) -> Step {
        Step {
            offered_pps: offered,
            flood_pps: offered as f64,
            server_proc_cpu_s: proc_s,
            softirq_s,
            dropped,
            edge_x_rx: rx,
            busy_frac: 0.5,
            wall_s: 1.0,
            ..Step::default()
        }
    }

    #[test]
    fn flood_only_cpu_leaves_out_the_legitimate_load_each_server_served() {
        let series = |steps: Vec<Step>| Series {
            steps,
            ..Series::default()
        };
        let with_ok = |mut st: Step, ok: u64| {
            st.legit_ok_in_time = ok;
            st
        };
        let b = series(vec![
            cpu_step(0, 0.0, 0.1, 0, 0),
            cpu_step(1_000_000, 0.0, 0.3, 1_000_000, 1_000_000),
        ]);
        // sipveil: 50 µs of process CPU per legitimate REGISTER without a flood; under the
        // flood it answers all 1 000 again, so 0.05 s of its 0.1 s is the legitimate load's:
        // flood only = net 200 ns − 50 ns.
        let sv = series(vec![
            with_ok(cpu_step(0, 0.05, 0.1, 0, 0), 1_000),
            with_ok(cpu_step(1_000_000, 0.1, 0.4, 800_000, 1_000_000), 1_000),
        ]);
        // Kamailio: 200 µs per legitimate REGISTER; under the flood it answers 500 in time, so
        // only 0.1 s is the legitimate load's: 1 800 − 100 ns.
        let k = series(vec![
            with_ok(cpu_step(0, 0.2, 0.1, 0, 0), 1_000),
            with_ok(cpu_step(1_000_000, 1.0, 1.1, 1_000_000, 1_000_000), 500),
        ]);
        let v = rx_drop_cpu(&b, &sv, &k, 0.9);
        let close = |x: &Value, want: f64| (x.as_f64().expect("a number") - want).abs() < 1e-6;
        let row = &v["by_rate"][0];
        assert!(close(&row["sipveil_legit_proc_s"], 0.05));
        assert!(close(&row["kamailio_legit_proc_s"], 0.1));
        assert!(close(&row["sipveil_ns_baseline_subtracted"], 200.0));
        assert!(close(&row["sipveil_ns_flood_only"], 150.0));
        assert!(close(&row["kamailio_ns_flood_only"], 1700.0));
        assert_eq!(v["ratio_kind"], "flood only");
        assert!(close(&v["ratio"], 150.0 / 1700.0));
        assert!(close(&v["ratio_net"], 200.0 / 1800.0));
        assert!(close(&v["ratio_raw"], 500.0 / 2100.0));
        // Repeats of the no-flood step are pooled: (0.05 + 0.15) s over 2 000 answered = 100 µs
        // per REGISTER, so 0.1 s of the flood step is the legitimate load's: 200 − 100 ns.
        let mut sv3 = sv.clone();
        sv3.legit_only = vec![with_ok(cpu_step(0, 0.15, 0.1, 0, 0), 1_000)];
        let v = rx_drop_cpu(&b, &sv3, &k, 0.9);
        assert!(close(&v["by_rate"][0]["sipveil_legit_proc_s"], 0.1));
        assert!(close(&v["by_rate"][0]["sipveil_ns_flood_only"], 100.0));
        // A legitimate load whose estimate exceeds what the flood step measured: no flood-only
        // ratio, the headline falls back to the net one.
        let mut sv2 = sv.clone();
        sv2.steps[0].server_proc_cpu_s = 0.5;
        let v = rx_drop_cpu(&b, &sv2, &k, 0.9);
        assert!(v["by_rate"][0]["ratio_flood_only"].is_null());
        assert_eq!(v["ratio_kind"], "net (no usable flood-only figure)");
        assert!(close(&v["ratio"], 200.0 / 1800.0));
    }

    #[test]
    fn receive_side_cpu_subtracts_the_background_and_the_baseline_path() {
        let series = |steps: Vec<Step>| Series {
            steps,
            ..Series::default()
        };
        // Background softirq 0.1 s per second everywhere. Baseline: 1 M packets, 0.2 s of
        // softirq over the background → 200 ns per packet.
        let b = series(vec![
            cpu_step(0, 0.0, 0.1, 0, 0),
            cpu_step(1_000_000, 0.0, 0.3, 1_000_000, 1_000_000),
        ]);
        // sipveil: 1 M flood packets, 800 k dropped in XDP and 200 k admitted by the ceiling
        // (their processing is in the 0.1 s of the processes), 0.4 s softirq: per flood packet
        // raw 500 ns, net (0.5 - 0.1 - 0.2) / 1 M = 200 ns.
        let sv = series(vec![
            cpu_step(0, 0.0, 0.1, 0, 0),
            cpu_step(1_000_000, 0.1, 0.4, 800_000, 1_000_000),
        ]);
        // Kamailio: raw (1.0 + 1.1) / 1 M = 2 100 ns, net (2.1 - 0.1 - 0.2) / 1 M = 1 800 ns.
        let k = series(vec![
            cpu_step(0, 0.2, 0.1, 0, 0),
            cpu_step(1_000_000, 1.0, 1.1, 1_000_000, 1_000_000),
        ]);
        let v = rx_drop_cpu(&b, &sv, &k, 0.9);
        let close = |x: &Value, want: f64| (x.as_f64().expect("a number") - want).abs() < 1e-6;
        assert_eq!(v["unsaturated"], true);
        assert!(close(
            &v["by_rate"][0]["baseline_softirq_ns_per_packet"],
            200.0
        ));
        assert!(close(&v["by_rate"][0]["sipveil_ns"], 500.0));
        assert!(close(
            &v["by_rate"][0]["kamailio_ns_baseline_subtracted"],
            1800.0
        ));
        assert!(close(&v["ratio_raw"], 500.0 / 2100.0));
        assert!(close(&v["ratio"], 200.0 / 1800.0));
        // A saturated Kamailio step is listed, not compared; the headline says so.
        let mut k2 = k.clone();
        k2.steps[1].busy_frac = 0.97;
        let v = rx_drop_cpu(&b, &sv, &k2, 0.9);
        assert_eq!(v["unsaturated"], false);
        assert_eq!(v["by_rate"][0]["compared"], false);
        assert!(v["worst_ratio_compared"].is_null());
        // A background estimate above what sipveil's step measured: no net ratio, and the
        // headline is the raw one, never a negative figure.
        let mut sv2 = sv.clone();
        sv2.steps[0].softirq_s = 0.5;
        let v = rx_drop_cpu(&b, &sv2, &k, 0.9);
        assert!(v["by_rate"][0]["ratio_baseline_subtracted"].is_null());
        assert_eq!(v["ratio_kind"], "raw (no usable net figure)");
        assert!(close(&v["ratio"], 500.0 / 2100.0));
    }

    #[test]
    fn threshold_ratio_marks_bounds() {
        let r = threshold_ratio(None, 2e5, Some(5e4), 1e5);
        assert_eq!(r["bound"], "lower");
        assert_eq!(r["ratio"].as_f64(), Some(4.0));
        let r = threshold_ratio(Some(1e5), 1e5, Some(5e4), 1e5);
        assert_eq!(
            (r["bound"].as_str(), r["ratio"].as_f64()),
            (Some("exact"), Some(2.0))
        );
        let r = threshold_ratio(None, 2e5, None, 1e5);
        assert_eq!(r["bound"], "none");
        assert!(r["ratio"].is_null());
    }
}
