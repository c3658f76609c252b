//! `sv-bench-register`: the registrar benchmark. In the two-arm lab, SIPp REGISTER load with
//! unique users (one REGISTER exchange per user, users from an injection file) against sipveil
//! and against Kamailio 5.6 (in-memory usrloc, as many UDP worker processes as sipveil has
//! workers), for an open domain and an authenticated (digest MD5) domain. For each server and
//! domain: the highest offered rate with < 0.1 % failures, the response time at half of
//! Kamailio's highest rate, and the server's CPU time per REGISTER at one fixed load.
//! Every trial restarts the server with an empty registrar, so each REGISTER of a trial is the
//! first binding of a distinct user. Writes `target/bench/register/summary.json` and `latency.svg`; BENCHMARKS.md
//! ("Registrar") records the figures and the method's caveats.
//!
//! A third "server", `floor` (`sv-sip-floor`, see `sipveil_loadtest::floor`), answers in the
//! server's place with canned responses and no work of its own. Its rate, response time and CPU
//! per REGISTER are the lab's own limits, and bound the ratios any registrar can show here (the
//! `bounds` of summary.json).

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use sipveil_loadtest::bench::{CpuTimes, RateSearch, parse_pid_cpu_ticks, ratio};
use sipveil_loadtest::kamailio::{
    KamailioAuth, KamailioRun, Subscriber, config_for, db_text_tables,
};
use sipveil_loadtest::lab::{self, Daemon, Lab, Shape};
use sipveil_loadtest::procs::ChildGuard;
use sipveil_loadtest::register::{
    AUTH_DOMAIN, BenchUser, OPEN_DOMAIN, Percentiles, SipveilConfig, SyncFloor, Trial,
    cpu_us_per_register, judge, make_users, plot_response_svg, sipveil_users_file,
    store_group_rate,
};
use sipveil_loadtest::register_client::{ClientTotals, ClientUser, run_load};
use sipveil_loadtest::register_pcap::register_latency;
use sipveil_loadtest::sipp::{
    CsvUser, SippJob, SippTotals, injection_csv, parse_rtt_csv, parse_stat_csv,
};

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5060);
const INSTANCE: &str = "bench-register";
const CONTROL_SOCKET: &str = "/run/sipveil/bench-register.sock";
const SIPP_BASE_PORT: u16 = 5070;

/// A trial, SIPp's response times (ms), the capture file, the native client's histogram (ns).
type TrialOutput = (Trial, Vec<f64>, Option<PathBuf>, Option<Histogram<u64>>);

/// Larger socket buffers for the load client (best effort; needs root for beyond rmem_max).
fn set_buffers(sock: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt on an open socket with a pointer to a c_int of the right length.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const bytes).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "sv-bench-register",
    about = "Registrar benchmark: sipveil vs Kamailio 5.6, SIPp REGISTER load, open and digest domains"
)]
struct Opts {
    /// The benchmark to run; `register` is the only one (so that `cargo xtask bench register`
    /// can pass its arguments through unchanged).
    #[arg(value_parser = ["register"])]
    which: Option<String>,
    /// The sipveil binary (default: next to this one). Also used to bring the lab up.
    #[arg(long)]
    sipveil: Option<PathBuf>,
    #[arg(long, default_value = "kamailio")]
    kamailio: PathBuf,
    #[arg(long, default_value = "sipp")]
    sipp: PathBuf,
    #[arg(long, default_value = "dumpcap")]
    dumpcap: PathBuf,
    /// Kamailio configurations (open.cfg, auth.cfg).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/kamailio"))]
    kamailio_dir: PathBuf,
    /// SIPp scenarios (bench_register_open.xml, bench_register_auth.xml).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/sipp"))]
    sipp_dir: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "target/bench/register")]
    out: PathBuf,
    /// Servers to measure, in order: `kamailio`, `sipveil`, and `floor` (a stateless responder
    /// with canned answers: the lab's own limits, which bound the ratios).
    #[arg(long, value_delimiter = ',', default_value = "kamailio,sipveil,floor")]
    servers: Vec<String>,
    /// Domains to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "open,auth")]
    domains: Vec<String>,
    /// sipveil's `[sip] workers` and Kamailio's UDP children.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// How Kamailio finds HA1s: `derived` (password derived from the user name in the script,
    /// HA1 computed per REGISTER), `htable` (db_text table loaded once into a hash table; slow
    /// start with many users) or `auth_db` (a db_text query per REGISTER; db_text scans rows).
    #[arg(long, default_value = "derived")]
    kamailio_auth: KamailioAuth,
    #[arg(long, default_value_t = 1024)]
    kamailio_shm_mb: u32,
    /// Private memory per process; the htable variant loads the whole db_text table into it once.
    #[arg(long, default_value_t = 256)]
    kamailio_pkg_mb: u32,
    /// Seconds of load per search trial.
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 4000.0)]
    search_start: f64,
    #[arg(long, default_value_t = 250.0)]
    search_min: f64,
    #[arg(long, default_value_t = 64_000.0)]
    search_max: f64,
    /// Trials per server and domain at most.
    #[arg(long, default_value_t = 8)]
    search_steps: u32,
    /// Bisection stops when the failing and passing rates are this close (relative).
    #[arg(long, default_value_t = 0.06)]
    resolution: f64,
    /// A trial passes below this failure ratio (failed + unstarted calls + retransmissions).
    #[arg(long, default_value_t = 0.001)]
    max_failure: f64,
    /// A trial passes only if SIPp finished within this factor of the planned duration (+1 s).
    #[arg(long, default_value_t = 1.15)]
    slack: f64,
    /// Calls per second one SIPp process is given at most; above it, several run (alternately in
    /// sv-a and sv-x), each with its own users.
    #[arg(long, default_value_t = 7000.0)]
    sipp_max_rate: f64,
    /// Response times at this rate instead of half of Kamailio's highest rate for the domain.
    #[arg(long)]
    latency_rate: Option<f64>,
    #[arg(long, default_value_t = 8.0)]
    latency_secs: f64,
    /// The fixed offered load of the CPU-per-REGISTER window.
    #[arg(long, default_value_t = 2000.0)]
    cpu_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    cpu_secs: f64,
    /// Load client of the authenticated domain: `native` (this harness's digest client, which
    /// answers the MD5 challenge among several) or `sipp` (SIPp 3.6.1 handles only a single/first
    /// MD5 challenge, so it cannot register with sipveil, which offers SHA-256 first).
    #[arg(long, default_value = "native", value_parser = ["native", "sipp"])]
    auth_client: String,
    /// Write `digest = [..]` (algorithms in the order offered) into sipveil's authenticated
    /// domain, e.g. `MD5,SHA-256` so that SIPp (`--auth-client sipp`) can answer; default: not
    /// written (sipveil offers SHA-256 first).
    #[arg(long, value_delimiter = ',')]
    sipveil_digest: Vec<String>,
    /// Source ports of the native client (calls round-robin over them: several clients).
    #[arg(long, default_value_t = 32)]
    client_ports: u16,
    /// SIPp's UDP mode: `un` (a socket, so a source port, per call: distinct clients) or `u1`
    /// (every call from one port: a server that spreads load over SO_REUSEPORT sockets by
    /// source address then uses one worker).
    #[arg(long, default_value = "un", value_parser = ["un", "u1"])]
    sipp_transport: String,
    /// No packet capture in the latency runs (SIPp's own 4-ms-step figures only).
    #[arg(long)]
    no_capture: bool,
    /// Keep the temporary directory (configs, databases, SIPp files, captures).
    #[arg(long)]
    keep_tmp: bool,
    /// Before starting, wait up to this many seconds for the machine to be quiet (other work
    /// busy on at most --quiet-cpus CPUs over a 2 s window); the run starts anyway after it.
    #[arg(long, default_value_t = 0)]
    wait_quiet_secs: u64,
    #[arg(long, default_value_t = 0.3)]
    quiet_cpus: f64,
    /// Seconds of the sync-floor probe per domain (durable 4 KiB `O_DIRECT|O_DSYNC` writes on the
    /// database's file system at the store's group rate for the latency run); 0 skips it.
    #[arg(long, default_value_t = 5.0)]
    sync_floor_secs: f64,
    /// Write `commit_interval_ms = N` into sipveil's `[registrar]` section (default: not written,
    /// sipveil's default applies).
    #[arg(long)]
    sipveil_commit_interval_ms: Option<u64>,
    /// Write `commit_group = N` into sipveil's `[registrar]` section (default: not written).
    #[arg(long)]
    sipveil_commit_group: Option<u64>,
}

/// sipveil's `[registrar] commit_interval_ms` and `commit_group` defaults (the bench's generated
/// config does not set them), which set the group rate the sync floor is probed at.
const COMMIT_INTERVAL_MS: f64 = 5.0;
const COMMIT_GROUP: f64 = 20.0;
/// Bounds of the sync-floor probe whatever the options say.
const SYNC_FLOOR_MAX_WRITES: u64 = 20_000;
const SYNC_FLOOR_MAX_SECS: f64 = 30.0;

/// Durable writes the way sipveil's store writes a group: one 4 KiB record `pwrite` into a
/// preallocated, zero-filled 4 MiB file opened `O_DIRECT | O_DSYNC` (plain `O_DSYNC` where the
/// file system refuses direct I/O), sequentially (wrapping), paced open-loop
/// at `per_sec`, for at most `secs` (and [`SYNC_FLOOR_MAX_WRITES`]). Latency of each write in ns.
/// The file lives in `dir` and is removed afterwards.
fn probe_sync_floor(dir: &Path, per_sec: f64, secs: f64) -> Result<Histogram<u64>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const RECORD: usize = 4096;
    const FILE: u64 = 4 << 20;
    let path = dir.join("sync-floor.probe");
    let result = (|| -> Result<Histogram<u64>> {
        {
            let f =
                fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < FILE {
                f.write_all_at(&zeros, at)?;
                at += zeros.len() as u64;
            }
            f.sync_all()?;
        }
        let open = |flags| {
            fs::OpenOptions::new()
                .write(true)
                .custom_flags(flags)
                .open(&path)
        };
        let f = match open(libc::O_DSYNC | libc::O_DIRECT) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(libc::O_DSYNC),
            other => other,
        }
        .with_context(|| format!("opening {} O_DSYNC", path.display()))?;
        let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?;
        // Direct I/O needs an aligned buffer: the aligned 4 KiB inside 8 KiB.
        let mut raw = vec![0x5au8; 2 * RECORD];
        let start = raw.as_ptr().align_offset(RECORD).min(RECORD);
        let record = &mut raw[start..start + RECORD];
        let secs = secs.clamp(0.0, SYNC_FLOOR_MAX_SECS);
        let period = Duration::from_secs_f64(1.0 / per_sec.max(1.0));
        let started = Instant::now();
        let mut next = started;
        let mut offset = 0u64;
        let mut n = 0u64;
        while n < SYNC_FLOOR_MAX_WRITES && started.elapsed().as_secs_f64() < secs {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += period;
            record[..8].copy_from_slice(&n.to_le_bytes());
            let t = Instant::now();
            f.write_all_at(record, offset)?;
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            h.saturating_record(ns.max(1_000));
            offset = (offset + RECORD as u64) % FILE;
            n += 1;
        }
        Ok(h)
    })();
    let _ = fs::remove_file(&path);
    result
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// CPUs kept busy by everything on the machine over `window` (from /proc/stat).
fn busy_cpus(window: Duration) -> Result<f64> {
    let read = || -> Result<CpuTimes> {
        Ok(CpuTimes::parse_proc_stat(&fs::read_to_string(
            "/proc/stat",
        )?)?)
    };
    let a = read()?;
    std::thread::sleep(window);
    let b = read()?;
    Ok(b.delta(&a).busy() as f64 * tick_ns() / 1e9 / window.as_secs_f64())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// The processes in a network namespace (the server under test: Kamailio's forks, sipveil).
fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// schedstat run time (ns) by thread name over `pids`' threads.
fn cpu_by_thread(pids: &[u32]) -> BTreeMap<String, f64> {
    sched_by_thread(pids, 0)
}

/// schedstat run-queue wait (ns: runnable but not running) by thread name over `pids`' threads.
fn wait_by_thread(pids: &[u32]) -> BTreeMap<String, f64> {
    sched_by_thread(pids, 1)
}

/// Field `field` of /proc/PID/task/TID/schedstat (0 run time, 1 run-queue wait, ns) by thread name.
fn sched_by_thread(pids: &[u32], field: usize) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for pid in pids {
        if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
            for task in dir.flatten() {
                let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if let Some(ns) = fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|t| {
                        t.split_whitespace()
                            .nth(field)
                            .and_then(|v| v.parse::<f64>().ok())
                    })
                {
                    *out.entry(comm.trim().to_owned()).or_insert(0.0) += ns;
                }
            }
        }
    }
    out
}

fn thread_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// (utime+stime in ns, schedstat run time in ns) summed over `pids` and their threads.
fn cpu_of(pids: &[u32]) -> (f64, f64) {
    let mut ticks = 0.0;
    let mut sched = 0.0;
    for pid in pids {
        if let Some(t) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_pid_cpu_ticks(&t).ok())
        {
            ticks += t as f64 * tick_ns();
        }
        if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
            for task in dir.flatten() {
                if let Some(ns) = fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|t| {
                        t.split_whitespace()
                            .next()
                            .and_then(|v| v.parse::<f64>().ok())
                    })
                {
                    sched += ns;
                }
            }
        }
    }
    (ticks, sched)
}

/// Sends OPTIONS to the server from a thread inside `ns` until any SIP answer comes back.
fn probe_sip(ns: &str, from: Ipv4Addr, timeout: Duration) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<()> {
        let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open netns fd; CLONE_NEWNET changes only this thread's network
        // namespace, which is what the socket below needs.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        let sock = UdpSocket::bind(SocketAddrV4::new(from, 0)).context("probe socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let local = sock.local_addr()?;
        let deadline = Instant::now() + timeout;
        let mut n = 0u32;
        while Instant::now() < deadline {
            n += 1;
            let msg = format!(
                "OPTIONS sip:{SERVER} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKprobe{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@bench.lab>;tag=p{n}\r\nTo: <sip:{SERVER}>\r\n\
                 Call-ID: probe-{n}-{}@bench\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n",
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

/// `g` once it answers SIP OPTIONS from sv-a; stopped, with an error naming `what`, if it does
/// not within 20 s.
fn answering(mut g: ChildGuard, what: &str) -> Result<ChildGuard> {
    if let Err(e) = probe_sip(lab::NS_A, lab::A_ADDR, Duration::from_secs(20)) {
        let exited = g.try_wait().ok().flatten();
        g.stop();
        bail!("{what} did not answer ({e:#}; exited: {exited:?})");
    }
    Ok(g)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Kamailio,
    Sipveil,
    Floor,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Kamailio => "kamailio",
            Server::Sipveil => "sipveil",
            Server::Floor => "floor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Domain {
    Open,
    Auth,
}

impl Domain {
    fn name(self) -> &'static str {
        match self {
            Domain::Open => "open",
            Domain::Auth => "auth",
        }
    }
    fn host(self) -> &'static str {
        match self {
            Domain::Open => OPEN_DOMAIN,
            Domain::Auth => AUTH_DOMAIN,
        }
    }
}

/// A server under test, running.
enum Running {
    Kamailio(ChildGuard),
    Sipveil(Daemon),
    Floor(ChildGuard),
}

impl Running {
    fn stop(self) {
        match self {
            Running::Kamailio(mut g) | Running::Floor(mut g) => g.stop(),
            Running::Sipveil(d) => {
                let _ = d.terminate(Duration::from_secs(5));
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
struct Latency {
    rate: f64,
    trial: Trial,
    /// SIPp's own response times (rtd 1; 4 ms steps on this kernel).
    sipp: Option<Percentiles>,
    /// From a capture on the client's interface (µs precision).
    wire: Option<Percentiles>,
    /// The native client's own timing (first send to the 200, µs precision).
    client: Option<Percentiles>,
    wire_unanswered: u64,
    /// From the capture, the server's share of each exchange (request → next final response,
    /// summed; for auth without the client's 401 → REGISTER turn-around).
    wire_server: Option<Percentiles>,
    /// From the capture: the first request's leg (auth: REGISTER → 401) and the last one's
    /// (→ 200, the leg that waits for the store).
    wire_first_leg: Option<Percentiles>,
    wire_last_leg: Option<Percentiles>,
    #[serde(skip)]
    wire_histogram: Option<Histogram<u64>>,
    #[serde(skip)]
    client_histogram: Option<Histogram<u64>>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Cpu {
    rate: f64,
    trial: Trial,
    /// utime+stime of the server's processes ÷ successful REGISTER exchanges.
    us_per_register: Option<f64>,
    /// The same from schedstat (ns precision), as a cross-check.
    us_per_register_schedstat: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Result1 {
    server: String,
    domain: String,
    /// Highest offered rate (REGISTER exchanges/s) that passed.
    max_rate: Option<f64>,
    /// Lowest offered rate that failed.
    lowest_failing_rate: Option<f64>,
    trials: Vec<Trial>,
    latency: Option<Latency>,
    cpu: Option<Cpu>,
    errors: Vec<String>,
}

struct Bench {
    o: Opts,
    sipveil: PathBuf,
    tmp: PathBuf,
    users: Vec<BenchUser>,
    sipveil_config: PathBuf,
    sipveil_db: PathBuf,
    kamailio_db: PathBuf,
    trial_no: u32,
}

impl Bench {
    fn scenario(&self, d: Domain) -> PathBuf {
        self.o.sipp_dir.join(match d {
            Domain::Open => "bench_register_open.xml",
            Domain::Auth => "bench_register_auth.xml",
        })
    }

    fn start(&self, s: Server, d: Domain) -> Result<Running> {
        match s {
            Server::Kamailio => {
                let run = KamailioRun {
                    binary: self.o.kamailio.clone(),
                    config: config_for(&self.o.kamailio_dir, d == Domain::Auth),
                    netns: lab::NS_EDGE.to_owned(),
                    listen: SERVER,
                    children: self.o.workers,
                    shm_mb: self.o.kamailio_shm_mb,
                    pkg_mb: self.o.kamailio_pkg_mb,
                    db_dir: (d == Domain::Auth).then(|| self.kamailio_db.clone()),
                    auth: self.o.kamailio_auth,
                };
                let log = self.tmp.join(format!("kamailio-{}.log", d.name()));
                let file = fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .with_context(|| format!("opening {}", log.display()))?;
                let mut cmd = run.command();
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
                let g = ChildGuard::spawn("kamailio", &mut cmd)?;
                answering(g, &format!("kamailio (log: {})", log.display())).map(Running::Kamailio)
            }
            Server::Sipveil => {
                // A fresh database for every trial: every trial starts from an empty registrar.
                // The binding log's files too: a new database must not start from another
                // trial's log (the store would only drop its records, with a warning).
                lab::remove_registrar_files(&self.sipveil_db)?;
                let log = self.tmp.join("sipveil.log");
                let d = Daemon::start(
                    &self.sipveil,
                    &self.sipveil_config,
                    &["--no-xdp"],
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
            Server::Floor => {
                let floor = sibling("sv-sip-floor");
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", lab::NS_EDGE])
                    .arg(&floor)
                    .arg("--listen")
                    .arg(SERVER.to_string())
                    .arg("--threads")
                    .arg(self.o.workers.to_string())
                    .arg("--auth-domain")
                    .arg(AUTH_DOMAIN)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                let g = ChildGuard::spawn("sv-sip-floor", &mut cmd)?;
                answering(g, &floor.display().to_string()).map(Running::Floor)
            }
        }
    }

    /// One trial: a fresh server, `rate` REGISTER exchanges/s for `secs` from unique users.
    fn offer(
        &mut self,
        s: Server,
        d: Domain,
        rate: f64,
        secs: f64,
        capture: bool,
        rtt: bool,
    ) -> Result<TrialOutput> {
        self.trial_no += 1;
        let dir = self.tmp.join(format!(
            "t{:03}-{}-{}-{rate:.0}",
            self.trial_no,
            s.name(),
            d.name()
        ));
        fs::create_dir_all(&dir)?;
        let calls = (rate * secs).round().max(1.0) as u64;
        if calls > self.users.len() as u64 {
            bail!(
                "{calls} calls need more users than the {} generated",
                self.users.len()
            );
        }
        if d == Domain::Auth && self.o.auth_client == "native" {
            return self.offer_native(s, d, rate, secs, capture, dir, calls);
        }
        let n = ((rate / self.o.sipp_max_rate).ceil() as usize).max(1);
        let server = self.start(s, d)?;
        let mut jobs = Vec::new();
        let mut first = 0u64;
        for i in 0..n {
            let share = calls / n as u64 + u64::from((i as u64) < calls % n as u64);
            // Captured runs keep every SIPp in sv-a (the capture is on a0).
            let (ns, addr) = if i % 2 == 1 && !capture {
                (lab::NS_X, lab::X_ADDR)
            } else {
                (lab::NS_A, lab::A_ADDR)
            };
            let wd = dir.join(format!("sipp{i}"));
            fs::create_dir_all(&wd)?;
            let inf = wd.join("users.csv");
            let slice = self
                .users
                .get(first as usize..(first + share) as usize)
                .ok_or_else(|| anyhow!("user slice out of range"))?;
            fs::write(
                &inf,
                injection_csv(slice.iter().map(|u| CsvUser {
                    name: &u.name,
                    domain: d.host(),
                    password: &u.password,
                })),
            )?;
            first += share;
            let r = rate / n as f64;
            let job = SippJob {
                netns: ns.to_owned(),
                local: SocketAddrV4::new(addr, SIPP_BASE_PORT + i as u16),
                target: SERVER,
                scenario: self.scenario(d),
                injection: inf,
                rate: r,
                calls: share,
                max_open: ((r * 2.0) as u64).max(200),
                timeout_s: (secs * 3.0) as u64 + 10,
                stat_file: wd.join("stat.csv"),
                trace_rtt: rtt,
                trace_err: true,
                transport: self.o.sipp_transport.clone(),
            };
            jobs.push((job, wd));
        }
        let dump = if capture {
            Some(self.start_capture(&dir, secs)?)
        } else {
            None
        };
        let pcap = dump.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        let pids = netns_pids(lab::NS_EDGE);
        let threads0 = cpu_by_thread(&pids);
        let waits0 = wait_by_thread(&pids);
        let (ticks0, sched0) = cpu_of(&pids);
        let t0 = Instant::now();
        let mut guards = Vec::new();
        for (job, wd) in &jobs {
            let mut cmd = job.command(&self.o.sipp, wd);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(wd.join("sipp.stderr"))?);
            guards.push(ChildGuard::spawn("sipp", &mut cmd)?);
        }
        let limit = Duration::from_secs_f64(secs * 3.0 + 20.0);
        let mut wall = 0.0f64;
        let mut problems = Vec::new();
        for g in &mut guards {
            let left = limit.saturating_sub(t0.elapsed());
            match g.wait_bounded(left) {
                // SIPp exits 0 (all calls succeeded) or 1 (some failed): both are results.
                Ok(st) if matches!(st.code(), Some(0 | 1)) => {}
                Ok(st) => problems.push(format!("sipp exited with {st}")),
                Err(e) => problems.push(format!("{e}")),
            }
            wall = wall.max(t0.elapsed().as_secs_f64());
        }
        let (ticks1, sched1) = cpu_of(&pids);
        let threads = thread_delta(&threads0, &cpu_by_thread(&pids));
        let waits = thread_delta(&waits0, &wait_by_thread(&pids));
        if let Some((mut g, _)) = dump {
            std::thread::sleep(Duration::from_millis(300));
            g.stop();
        }
        server.stop();
        let mut totals = SippTotals::default();
        let mut rtts = Vec::new();
        for (_, wd) in &jobs {
            let stat = wd.join("stat.csv");
            let text = fs::read_to_string(&stat).with_context(|| {
                format!(
                    "reading {} ({})",
                    stat.display(),
                    fs::read_to_string(wd.join("sipp.stderr"))
                        .unwrap_or_default()
                        .trim()
                )
            })?;
            totals.add(&parse_stat_csv(&text).with_context(|| stat.display().to_string())?);
            if rtt {
                for e in fs::read_dir(wd)?.flatten() {
                    let p = e.path();
                    if p.to_string_lossy().ends_with("_rtt.csv") {
                        rtts.extend(parse_rtt_csv(&fs::read_to_string(&p)?, "1")?);
                    }
                }
            }
        }
        let failures = totals.failures(calls);
        let (mut passed, mut note) = judge(
            calls,
            failures,
            wall,
            secs,
            self.o.max_failure,
            self.o.slack,
        );
        if !problems.is_empty() {
            passed = false;
            note = format!("{note}; {}", problems.join("; "));
        }
        let trial = Trial {
            client: "sipp".to_owned(),
            offered_rate: rate,
            calls,
            sipp_processes: n,
            failures,
            wall_s: wall,
            achieved_rate: if wall > 0.0 { calls as f64 / wall } else { 0.0 },
            server_cpu_ticks_ns: ticks1 - ticks0,
            server_cpu_sched_ns: sched1 - sched0,
            server_threads_ns: threads,
            server_threads_wait_ns: waits,
            passed,
            note,
            totals,
        };
        eprintln!(
            "  [{} {}] {rate:>7.0}/s x {secs} s ({n} sipp): {} ok, {} failed, {} retrans, {:.2} s, cpu {:.0} ms -> {}",
            s.name(),
            d.name(),
            trial.totals.successful,
            trial.totals.failed,
            trial.totals.retransmissions,
            wall,
            trial.server_cpu_ticks_ns / 1e6,
            if trial.passed { "pass" } else { "FAIL" },
        );
        if !trial.passed {
            eprintln!("      {}", trial.note);
        }
        Ok((trial, rtts, capture.then_some(pcap), None))
    }

    fn start_capture(&self, dir: &Path, secs: f64) -> Result<(ChildGuard, PathBuf)> {
        let pcap = dir.join("a0.pcap");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lab::NS_A])
            .arg(&self.o.dumpcap)
            .args(["-i", "a0", "-P", "-q", "-s", "800", "-B", "64"])
            .args(["-f", &format!("udp port {}", SERVER.port())])
            .args(["-a", &format!("duration:{}", (secs * 3.0) as u64 + 20)])
            .arg("-w")
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("dumpcap.log"))?);
        let g = ChildGuard::spawn("dumpcap", &mut cmd)?;
        let t = Instant::now();
        while !pcap.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok((g, pcap))
    }

    /// A trial with the native digest client ([`register_client`]) from a thread in sv-a.
    #[expect(
        clippy::too_many_arguments,
        reason = "one trial's parameters, used once"
    )]
    fn offer_native(
        &mut self,
        s: Server,
        d: Domain,
        rate: f64,
        secs: f64,
        capture: bool,
        dir: PathBuf,
        calls: u64,
    ) -> Result<TrialOutput> {
        let server = self.start(s, d)?;
        let dump = if capture {
            Some(self.start_capture(&dir, secs)?)
        } else {
            None
        };
        let users: Vec<(String, String)> = self
            .users
            .get(..calls as usize)
            .ok_or_else(|| anyhow!("user slice out of range"))?
            .iter()
            .map(|u| (u.name.clone(), u.ha1_md5_hex.clone()))
            .collect();
        let pids = netns_pids(lab::NS_EDGE);
        let threads0 = cpu_by_thread(&pids);
        let waits0 = wait_by_thread(&pids);
        let (ticks0, sched0) = cpu_of(&pids);
        let host = d.host();
        let sockets = self.o.client_ports;
        let timeout = Duration::from_secs(4);
        let path = format!("/var/run/netns/{}", lab::NS_A);
        let run = std::thread::spawn(move || -> Result<(ClientTotals, Histogram<u64>)> {
            let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on an open netns fd; CLONE_NEWNET changes only this thread's network
            // namespace, which is what the client's socket needs.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            let mut socks = Vec::new();
            for p in 0..sockets {
                let sock = UdpSocket::bind(SocketAddrV4::new(lab::A_ADDR, SIPP_BASE_PORT + p))
                    .context("binding the client sockets")?;
                set_buffers(&sock, 4 << 20);
                socks.push(sock);
            }
            let cu: Vec<ClientUser<'_>> = users
                .iter()
                .map(|(n, h)| ClientUser {
                    name: n,
                    ha1_md5_hex: h,
                })
                .collect();
            Ok(run_load(&socks, SERVER, host, &cu, rate, timeout, true)?)
        });
        let out = run.join().map_err(|_| anyhow!("client thread panicked"));
        let (ticks1, sched1) = cpu_of(&pids);
        let threads = thread_delta(&threads0, &cpu_by_thread(&pids));
        let waits = thread_delta(&waits0, &wait_by_thread(&pids));
        let pcap = dump.map(|(mut g, p)| {
            std::thread::sleep(Duration::from_millis(300));
            g.stop();
            p
        });
        server.stop();
        let (ct, hist) = out??;
        let mut totals = SippTotals {
            created: ct.started,
            successful: ct.successful,
            failed: ct.failed,
            ..SippTotals::default()
        };
        if ct.timeouts > 0 {
            totals.failed_by.insert("Timeout".to_owned(), ct.timeouts);
        }
        if ct.late > 0 {
            totals.failed_by.insert("LateOver500ms".to_owned(), ct.late);
        }
        for (code, n) in &ct.unexpected {
            totals.failed_by.insert(format!("Unexpected{code}"), *n);
        }
        let failures = (ct.failed + calls.saturating_sub(ct.started) + ct.late).min(calls);
        let (passed, note) = judge(
            calls,
            failures,
            ct.wall_s,
            secs,
            self.o.max_failure,
            self.o.slack,
        );
        let trial = Trial {
            client: "native".to_owned(),
            offered_rate: rate,
            calls,
            sipp_processes: 0,
            failures,
            wall_s: ct.wall_s,
            achieved_rate: if ct.wall_s > 0.0 {
                calls as f64 / ct.wall_s
            } else {
                0.0
            },
            server_cpu_ticks_ns: ticks1 - ticks0,
            server_cpu_sched_ns: sched1 - sched0,
            server_threads_ns: threads,
            server_threads_wait_ns: waits,
            passed,
            note,
            totals,
        };
        eprintln!(
            "  [{} {}] {rate:>7.0}/s x {secs} s (native): {} ok, {} failed, {} late, {:.2} s, cpu {:.0} ms, client cpu {:.0} ms ({:.0} % of the wall time) -> {}",
            s.name(),
            d.name(),
            trial.totals.successful,
            trial.totals.failed,
            ct.late,
            ct.wall_s,
            trial.server_cpu_ticks_ns / 1e6,
            ct.cpu_s * 1e3,
            if ct.wall_s > 0.0 {
                100.0 * ct.cpu_s / ct.wall_s
            } else {
                0.0
            },
            if trial.passed { "pass" } else { "FAIL" },
        );
        if !trial.passed {
            eprintln!("      {}", trial.note);
        }
        Ok((trial, Vec::new(), pcap, Some(hist)))
    }

    fn search(&mut self, s: Server, d: Domain, res: &mut Result1) -> Result<()> {
        let mut rs = RateSearch::new(
            self.o.search_start,
            self.o.search_min,
            self.o.search_max,
            self.o.resolution,
            self.o.search_steps,
        );
        while let Some(rate) = rs.next_rate() {
            let rate = rate.round();
            let (trial, _, _, _) = self.offer(s, d, rate, self.o.step_secs, false, false)?;
            rs.record(rate, trial.passed);
            res.trials.push(trial);
        }
        res.max_rate = rs.best_ok;
        res.lowest_failing_rate = rs.lowest_bad;
        Ok(())
    }

    fn latency(&mut self, s: Server, d: Domain, rate: f64) -> Result<Latency> {
        let capture = !self.o.no_capture;
        let (trial, rtts, pcap, client) =
            self.offer(s, d, rate, self.o.latency_secs, capture, true)?;
        let mut lat = Latency {
            rate,
            sipp: Percentiles::of_ms(&rtts),
            client: client.as_ref().and_then(Percentiles::of_ns),
            client_histogram: client,
            trial,
            ..Latency::default()
        };
        if let Some(p) = pcap {
            match fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| register_latency(&b).map_err(anyhow::Error::from))
            {
                Ok(c) => {
                    lat.wire = Percentiles::of_ns(&c.histogram);
                    lat.wire_unanswered = c.unanswered;
                    lat.wire_server = Percentiles::of_ns(&c.server_histogram);
                    lat.wire_first_leg = Percentiles::of_ns(&c.first_leg_histogram);
                    lat.wire_last_leg = Percentiles::of_ns(&c.last_leg_histogram);
                    lat.wire_histogram = Some(c.histogram);
                }
                Err(e) => eprintln!("  capture {}: {e:#}", p.display()),
            }
        }
        Ok(lat)
    }

    fn cpu(&mut self, s: Server, d: Domain) -> Result<Cpu> {
        let (trial, _, _, _) = self.offer(s, d, self.o.cpu_rate, self.o.cpu_secs, false, false)?;
        Ok(Cpu {
            rate: self.o.cpu_rate,
            us_per_register: cpu_us_per_register(
                trial.server_cpu_ticks_ns,
                trial.totals.successful,
            ),
            us_per_register_schedstat: cpu_us_per_register(
                trial.server_cpu_sched_ns,
                trial.totals.successful,
            ),
            trial,
        })
    }
}

/// Removes the temporary directory when dropped (unless kept).
struct TmpDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("temporary files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn parse_list<T>(items: &[String], f: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    items
        .iter()
        .map(|i| f(i.trim()).ok_or_else(|| anyhow!("unknown item {i:?}")))
        .collect()
}

fn run() -> Result<bool> {
    let o = Opts::parse();
    let sipveil = o.sipveil.clone().unwrap_or_else(|| sibling("sipveil"));
    let servers = parse_list(&o.servers, |s| match s {
        "kamailio" => Some(Server::Kamailio),
        "sipveil" => Some(Server::Sipveil),
        "floor" => Some(Server::Floor),
        _ => None,
    })
    .context("--servers (kamailio, sipveil, floor)")?;
    let domains = parse_list(&o.domains, |s| match s {
        "open" => Some(Domain::Open),
        "auth" => Some(Domain::Auth),
        _ => None,
    })
    .context("--domains (open, auth)")?;
    fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let tmp = TmpDir {
        path: std::env::temp_dir().join(format!("sv-bench-register-{}", std::process::id())),
        keep: o.keep_tmp,
    };
    fs::create_dir_all(&tmp.path)?;

    // Users: enough for the largest trial.
    let biggest = [
        o.search_max * o.step_secs,
        o.latency_rate.unwrap_or(o.search_max / 2.0) * o.latency_secs,
        o.cpu_rate * o.cpu_secs,
    ]
    .into_iter()
    .fold(0.0f64, f64::max);
    let n_users = biggest.ceil() as u64 + 16;
    let t = Instant::now();
    let users = make_users(0, n_users, AUTH_DOMAIN);
    let users_file = tmp.path.join("auth.lab.users");
    fs::write(&users_file, sipveil_users_file(&users))?;
    let kamailio_db = tmp.path.join("kamailio-db");
    fs::create_dir_all(&kamailio_db)?;
    let tables = if o.kamailio_auth == KamailioAuth::Derived {
        Vec::new()
    } else {
        db_text_tables(users.iter().map(|u| Subscriber {
            name: &u.name,
            domain: AUTH_DOMAIN,
            password: &u.password,
            ha1_md5_hex: &u.ha1_md5_hex,
        }))
    };
    for (name, text) in tables {
        fs::write(kamailio_db.join(name), text)?;
    }
    let sipveil_db = tmp.path.join("registrar.redb");
    let sipveil_config = tmp.path.join("sipveil.toml");
    fs::write(
        &sipveil_config,
        SipveilConfig {
            workers: o.workers,
            listen: SERVER,
            database: &sipveil_db,
            users_file: &users_file,
            control_socket: Path::new(CONTROL_SOCKET),
            media_a: Ipv4Addr::new(198, 18, 1, 1),
            media_b: Ipv4Addr::new(198, 18, 2, 1),
            instance: INSTANCE,
            interfaces: &["ea0", "eb0"],
            digest: &o.sipveil_digest,
        }
        .to_toml()
        .replace(
            "\n[registrar]\n",
            &format!(
                // Every user of the run may hold a binding at once (Kamailio's usrloc has no
                // cap): the default max_bindings (100 000) would refuse new bindings with 503
                // in trials above 33 333/s.
                "\n[registrar]\nmax_bindings = {}\n{}{}",
                users.len().max(100_000),
                o.sipveil_commit_interval_ms
                    .map_or_else(String::new, |n| format!("commit_interval_ms = {n}\n")),
                o.sipveil_commit_group
                    .map_or_else(String::new, |n| format!("commit_group = {n}\n")),
            ),
        ),
    )?;
    eprintln!(
        "{n_users} users with HA1s in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        tmp.path.display()
    );
    let mut bench = Bench {
        o,
        sipveil,
        tmp: tmp.path.clone(),
        users,
        sipveil_config,
        sipveil_db,
        kamailio_db,
        trial_no: 0,
    };

    eprintln!(
        "lab: bringing up two-arm (holding {}, torn down at the end)",
        lab::LOCK_PATH
    );
    let session =
        Lab::session(Shape::TwoArm, &bench.sipveil).map_err(|e| anyhow!("lab up: {e}"))?;
    let started = chrono_like_now();
    let wait_start = Instant::now();
    let mut other_busy = busy_cpus(Duration::from_secs(2))?;
    while other_busy > bench.o.quiet_cpus
        && wait_start.elapsed() < Duration::from_secs(bench.o.wait_quiet_secs)
    {
        eprintln!("machine busy with other work ({other_busy:.2} CPUs); waiting for quiet");
        other_busy = busy_cpus(Duration::from_secs(2))?;
    }
    eprintln!(
        "other load before the run: {other_busy:.2} CPUs busy, loadavg {}",
        loadavg()
    );
    let loadavg_start = loadavg();
    let mut results: BTreeMap<(Domain, Server), Result1> = BTreeMap::new();
    for &d in &domains {
        for &s in &servers {
            eprintln!("== {} {}: rate search", s.name(), d.name());
            let mut res = Result1 {
                server: s.name().to_owned(),
                domain: d.name().to_owned(),
                ..Result1::default()
            };
            if let Err(e) = bench.search(s, d, &mut res) {
                eprintln!("  [{} {}] FAILED: {e:#}", s.name(), d.name());
                res.errors.push(format!("rate search: {e:#}"));
            }
            results.insert((d, s), res);
        }
    }
    let mut lat_rates: BTreeMap<Domain, f64> = BTreeMap::new();
    for &d in &domains {
        let kam_max = results.get(&(d, Server::Kamailio)).and_then(|r| r.max_rate);
        let rate = bench
            .o
            .latency_rate
            .or(kam_max.map(|m| (m / 2.0).round()))
            .unwrap_or(1000.0);
        lat_rates.insert(d, rate);
        for &s in &servers {
            eprintln!("== {} {}: response time at {rate:.0}/s", s.name(), d.name());
            match bench.latency(s, d, rate) {
                Ok(l) => {
                    if let Some(r) = results.get_mut(&(d, s)) {
                        r.latency = Some(l);
                    }
                }
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    if let Some(r) = results.get_mut(&(d, s)) {
                        r.errors.push(format!("latency: {e:#}"));
                    }
                }
            }
        }
    }
    // The sync floor, per domain, right after its latency runs (no server running).
    let mut sync_floors: Vec<SyncFloor> = Vec::new();
    for (&d, &rate) in &lat_rates {
        if bench.o.sync_floor_secs <= 0.0 {
            break;
        }
        let group_rate = store_group_rate(
            rate,
            bench
                .o
                .sipveil_commit_interval_ms
                .map_or(COMMIT_INTERVAL_MS, |n| n as f64),
            bench
                .o
                .sipveil_commit_group
                .map_or(COMMIT_GROUP, |n| n as f64),
        );
        let dir = bench
            .sipveil_db
            .parent()
            .map_or_else(|| bench.tmp.clone(), Path::to_path_buf);
        eprintln!(
            "== sync floor {}: durable 4 KiB O_DIRECT|O_DSYNC writes at {group_rate:.0}/s (the store's group rate at {rate:.0} REGISTER/s) for {:.0} s in {}",
            d.name(),
            bench.o.sync_floor_secs,
            dir.display()
        );
        let kam_p99 = results
            .get(&(d, Server::Kamailio))
            .and_then(|r| r.latency.as_ref())
            .and_then(|l| l.wire.or(l.client))
            .map(|p| p.p99_us);
        match probe_sync_floor(&dir, group_rate, bench.o.sync_floor_secs) {
            Ok(h) => {
                let latency = Percentiles::of_ns(&h);
                let target = kam_p99.map(|p| p / 2.0);
                sync_floors.push(SyncFloor {
                    domain: d.name().to_owned(),
                    register_rate: rate,
                    group_rate,
                    writes: h.len(),
                    latency,
                    p99_target_us: target,
                    floor_p99_within_target: latency.zip(target).map(|(l, t)| l.p99_us <= t),
                    dir: dir.display().to_string(),
                });
            }
            Err(e) => eprintln!("  sync floor FAILED: {e:#}"),
        }
    }
    for &d in &domains {
        for &s in &servers {
            eprintln!(
                "== {} {}: CPU per REGISTER at {:.0}/s",
                s.name(),
                d.name(),
                bench.o.cpu_rate
            );
            match bench.cpu(s, d) {
                Ok(c) => {
                    if let Some(r) = results.get_mut(&(d, s)) {
                        r.cpu = Some(c);
                    }
                }
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    if let Some(r) = results.get_mut(&(d, s)) {
                        r.errors.push(format!("cpu: {e:#}"));
                    }
                }
            }
        }
    }
    let other_busy_after = busy_cpus(Duration::from_secs(2))?;
    let loadavg_end = loadavg();
    drop(session);

    let get = |d: Domain, s: Server| results.get(&(d, s));
    let rate_ratio = |d| {
        ratio(
            get(d, Server::Sipveil).and_then(|r| r.max_rate),
            get(d, Server::Kamailio).and_then(|r| r.max_rate),
        )
    };
    let wire_p99 = |d, s| {
        get(d, s)
            .and_then(|r| r.latency.as_ref())
            .and_then(|l| l.wire)
            .map(|p| p.p99_us)
    };
    let sipp_p99 = |d, s| {
        get(d, s)
            .and_then(|r| r.latency.as_ref())
            .and_then(|l| l.sipp)
            .map(|p| p.p99_us)
    };
    let client_p99 = |d, s| {
        get(d, s)
            .and_then(|r| r.latency.as_ref())
            .and_then(|l| l.client)
            .map(|p| p.p99_us)
    };
    // The capture when both servers have one; else the native client's timing; else SIPp's.
    let p99_ratio = |d| {
        ratio(wire_p99(d, Server::Sipveil), wire_p99(d, Server::Kamailio))
            .or_else(|| {
                ratio(
                    client_p99(d, Server::Sipveil),
                    client_p99(d, Server::Kamailio),
                )
            })
            .or_else(|| ratio(sipp_p99(d, Server::Sipveil), sipp_p99(d, Server::Kamailio)))
    };
    let cpu_of_r = |d, s| {
        get(d, s)
            .and_then(|r| r.cpu.as_ref())
            .and_then(|c| c.us_per_register)
    };
    let cpu_ratio = |d| ratio(cpu_of_r(d, Server::Sipveil), cpu_of_r(d, Server::Kamailio));
    // What the lab allows any server: the floor's figures over Kamailio's.
    let bound = |d, f: &dyn Fn(Domain, Server) -> Option<f64>| {
        ratio(f(d, Server::Floor), f(d, Server::Kamailio))
    };
    let max_rate_of = |d, s| get(d, s).and_then(|r| r.max_rate);
    let p99_of = |d, s| wire_p99(d, s).or_else(|| client_p99(d, s));
    let bounds = json!({
        "open_rate_ratio_max": bound(Domain::Open, &max_rate_of),
        "auth_rate_ratio_max": bound(Domain::Auth, &max_rate_of),
        "p99_ratio_at_half_load_min": bound(Domain::Open, &p99_of),
        "auth_p99_ratio_at_half_load_min": bound(Domain::Auth, &p99_of),
        "cpu_per_register_ratio_min": bound(Domain::Open, &cpu_of_r),
        "auth_cpu_per_register_ratio_min": bound(Domain::Auth, &cpu_of_r),
        "method": "the floor (sv-sip-floor: canned answers, no parsing, registrar, digest check or storage; blocking recvfrom/sendto on one SO_REUSEPORT socket per thread, as many threads as the servers' workers) measured like the servers; each figure is the floor's over Kamailio's: the highest rate ratio the load generators let any server show on this box, and the lowest p99 and CPU ratios a server that did no work at all would get",
    });
    let cpu_sched_ratio = |d| {
        let f = |s| {
            get(d, s)
                .and_then(|r| r.cpu.as_ref())
                .and_then(|c| c.us_per_register_schedstat)
        };
        ratio(f(Server::Sipveil), f(Server::Kamailio))
    };
    let summary = json!({
        "command": "cargo xtask bench register",
        "started": started,
        "other_load": {
            "busy_cpus_before": other_busy,
            "busy_cpus_after": other_busy_after,
            "loadavg_start": loadavg_start,
            "loadavg_end": loadavg_end,
        },
        "open_rate_ratio": rate_ratio(Domain::Open),
        "auth_rate_ratio": rate_ratio(Domain::Auth),
        "p99_ratio_at_half_load": p99_ratio(Domain::Open),
        "auth_p99_ratio_at_half_load": p99_ratio(Domain::Auth),
        "sipp_p99_ratio_at_half_load": ratio(sipp_p99(Domain::Open, Server::Sipveil), sipp_p99(Domain::Open, Server::Kamailio)),
        "auth_sipp_p99_ratio_at_half_load": ratio(sipp_p99(Domain::Auth, Server::Sipveil), sipp_p99(Domain::Auth, Server::Kamailio)),
        "cpu_per_register_ratio": cpu_ratio(Domain::Open),
        "auth_cpu_per_register_ratio": cpu_ratio(Domain::Auth),
        "cpu_per_register_ratio_schedstat": cpu_sched_ratio(Domain::Open),
        "auth_cpu_per_register_ratio_schedstat": cpu_sched_ratio(Domain::Auth),
        "targets": {
            "open_rate_ge_2x": rate_ratio(Domain::Open).map(|r| r >= 2.0),
            "auth_rate_ge_2x": rate_ratio(Domain::Auth).map(|r| r >= 2.0),
            "open_p99_le_0.5x": p99_ratio(Domain::Open).map(|r| r <= 0.5),
            "auth_p99_le_0.5x": p99_ratio(Domain::Auth).map(|r| r <= 0.5),
            "open_cpu_le_0.5x": cpu_ratio(Domain::Open).map(|r| r <= 0.5),
            "auth_cpu_le_0.5x": cpu_ratio(Domain::Auth).map(|r| r <= 0.5),
        },
        "method": {
            "register_exchange": "open: REGISTER -> 200 OK; auth: REGISTER -> 401 -> REGISTER with MD5 digest (qop=auth) -> 200 OK, counted as one exchange",
            "failure": "failed SIPp calls + calls SIPp never started + every retransmission (a REGISTER unanswered after 500 ms); a trial also fails when SIPp needs more than slack x the planned time + 1 s",
            "servers": "restarted for every trial with an empty registrar (sipveil: a fresh redb file, durability on; Kamailio: usrloc db_mode 0)",
            "p99_ratio": "from the capture on a0 (µs precision) when both servers have one, else the native client's timing, else SIPp's rtd (4 ms steps)",
            "auth_client": "native: this harness's digest client (SIPp 3.6.1 answers only the first challenge, and sipveil offers SHA-256 before MD5); sipp: SIPp",
            "cpu": "utime+stime of every process in sv-edge (/proc/<pid>/stat) over the SIPp run / successful exchanges; schedstat figures as a cross-check",
        },
        "config": {
            "workers": bench.o.workers,
            "kamailio_auth": bench.o.kamailio_auth.name(),
            "step_secs": bench.o.step_secs,
            "search_start": bench.o.search_start,
            "search_max": bench.o.search_max,
            "search_steps": bench.o.search_steps,
            "resolution": bench.o.resolution,
            "max_failure": bench.o.max_failure,
            "slack": bench.o.slack,
            "sipp_max_rate": bench.o.sipp_max_rate,
            "sipp_transport": bench.o.sipp_transport,
            "auth_client": bench.o.auth_client,
            "client_ports": bench.o.client_ports,
            "sipveil_digest": bench.o.sipveil_digest,
            "latency_secs": bench.o.latency_secs,
            "cpu_rate": bench.o.cpu_rate,
            "cpu_secs": bench.o.cpu_secs,
            "users": bench.users.len(),
        },
        "bounds": bounds,
        "results": results.values().collect::<Vec<_>>(),
        "sync_floor": sync_floors,
        "sync_floor_method": "one 4 KiB pwrite into a preallocated file opened O_DIRECT|O_DSYNC (how sipveil's store writes a group), paced open-loop at the store's group rate for the domain's latency run (commit_interval 5 ms / commit_group 20), in the directory of sipveil's database, after that domain's latency runs with no server running; p99_target_us = 0.5 x Kamailio's p99 at that rate (capture, else client timing)",
    });
    let path = bench.o.out.join("summary.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    let series: Vec<(String, Histogram<u64>)> = results
        .values()
        .filter_map(|r| {
            let l = r.latency.as_ref()?;
            Some((
                format!("{} {} @ {:.0}/s", r.server, r.domain, l.rate),
                l.wire_histogram
                    .clone()
                    .or_else(|| l.client_histogram.clone())?,
            ))
        })
        .collect();
    if !series.is_empty() {
        plot_response_svg(
            &bench.o.out.join("latency.svg"),
            "REGISTER response time at half of Kamailio's highest rate (capture on a0)",
            &series,
        )?;
    }
    let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
    let pct = |p: Option<Percentiles>| {
        p.map_or("n/a".to_owned(), |p| {
            format!("{:.0}/{:.0}/{:.0}", p.p50_us, p.p99_us, p.p999_us)
        })
    };
    println!("registrar benchmark ({})", path.display());
    println!(
        "  {:<9} {:<5} {:>9} {:>9} {:>22} {:>22} {:>10}",
        "server",
        "dom",
        "max/s",
        "lat @/s",
        "wire p50/p99/p99.9 us",
        "sipp p50/p99/p99.9 us",
        "cpu us/reg"
    );
    for r in results.values() {
        println!(
            "  {:<9} {:<5} {:>9} {:>9} {:>22} {:>22} {:>10}{}",
            r.server,
            r.domain,
            r.max_rate.map_or("n/a".into(), |v| format!("{v:.0}")),
            r.latency
                .as_ref()
                .map_or("n/a".into(), |l| format!("{:.0}", l.rate)),
            pct(r.latency.as_ref().and_then(|l| l.wire)),
            pct(r.latency.as_ref().and_then(|l| l.sipp)),
            show(r.cpu.as_ref().and_then(|c| c.us_per_register)),
            if r.errors.is_empty() {
                String::new()
            } else {
                format!("  ERRORS: {}", r.errors.join("; "))
            }
        );
    }
    for r in results.values() {
        if let Some(c) = &r.cpu
            && c.trial.totals.successful > 0
        {
            let mut t: Vec<(&String, &f64)> = c.trial.server_threads_ns.iter().collect();
            t.sort_by(|a, b| b.1.total_cmp(a.1));
            let per = |ns: f64| ns / c.trial.totals.successful as f64 / 1e3;
            let list: Vec<String> = t
                .iter()
                .take(6)
                .map(|(name, ns)| format!("{name} {:.1}", per(**ns)))
                .collect();
            println!(
                "  {:<9} {:<5} cpu by thread (us/REGISTER, schedstat): {}",
                r.server,
                r.domain,
                list.join(", ")
            );
        }
    }
    println!(
        "  open_rate_ratio              {}",
        show(rate_ratio(Domain::Open))
    );
    println!(
        "  auth_rate_ratio              {}",
        show(rate_ratio(Domain::Auth))
    );
    println!(
        "  p99_ratio_at_half_load       {}",
        show(p99_ratio(Domain::Open))
    );
    println!(
        "  auth_p99_ratio_at_half_load  {}",
        show(p99_ratio(Domain::Auth))
    );
    println!(
        "  cpu_per_register_ratio       {}",
        show(cpu_ratio(Domain::Open))
    );
    println!(
        "  auth_cpu_per_register_ratio  {}",
        show(cpu_ratio(Domain::Auth))
    );
    println!(
        "  bounds from the floor (floor / Kamailio): rate open {} auth {}; p99 open {} auth {}; cpu open {} auth {}",
        show(bound(Domain::Open, &max_rate_of)),
        show(bound(Domain::Auth, &max_rate_of)),
        show(bound(Domain::Open, &p99_of)),
        show(bound(Domain::Auth, &p99_of)),
        show(bound(Domain::Open, &cpu_of_r)),
        show(bound(Domain::Auth, &cpu_of_r)),
    );
    for r in results.values() {
        if let Some(l) = &r.latency
            && l.trial.totals.successful > 0
        {
            let n = l.trial.totals.successful as f64;
            let list: Vec<String> = l
                .trial
                .server_threads_wait_ns
                .iter()
                .filter(|(_, ns)| **ns > 0.0)
                .map(|(name, ns)| format!("{name} {:.1}", ns / n / 1e3))
                .collect();
            println!(
                "  {:<9} {:<5} run-queue wait at {:.0}/s (us/REGISTER, schedstat): {}",
                r.server,
                r.domain,
                l.rate,
                list.join(", ")
            );
            println!(
                "  {:<9} {:<5} server's share of the exchange at {:.0}/s (capture, p50/p99/p99.9 us): {}; first leg {}; last leg (-> 200) {}",
                r.server,
                r.domain,
                l.rate,
                pct(l.wire_server),
                pct(l.wire_first_leg),
                pct(l.wire_last_leg)
            );
        }
    }
    for f in &sync_floors {
        println!(
            "  sync floor {:<5} {:>6.0} writes/s ({:.0} REGISTER/s): p50/p99/p99.9 {} us; p99 target (0.5 x Kamailio p99) {} us: {}",
            f.domain,
            f.group_rate,
            f.register_rate,
            pct(f.latency),
            f.p99_target_us
                .map_or("n/a".to_owned(), |t| format!("{t:.0}")),
            match f.floor_p99_within_target {
                Some(true) => "one sync's p99 fits within the target",
                Some(false) =>
                    "one sync's p99 alone exceeds the target (durable acks cannot meet it here)",
                None => "n/a",
            }
        );
    }
    drop(tmp);
    Ok(results.values().all(|r| r.errors.is_empty()))
}

/// UTC time of day as `YYYY-MM-DDTHH:MM:SSZ` (std only).
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sv-bench-register: {e:#}");
            ExitCode::from(2)
        }
    }
}
