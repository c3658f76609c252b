//! `sv-bench-calls`: calls per second with media anchored, sipveil vs Kamailio 5.6 + topoh +
//! rtpengine, in one run in the two-arm lab (see `sipveil_loadtest::calls`).
//!
//! For each server: start it in sv-edge, register `bench@open.lab` → SIPp UAS in sv-b, then
//! (1) one run at a fixed rate for the setup-time percentiles and the whole-system CPU per
//! completed call (/proc/stat), on a server that has not been overloaded yet, (2) a bounded rate
//! search (doubling from a low rate, then bisection) for the highest offered CPS with < 0.1 %
//! failed calls. Writes `OUT/summary.json` and `OUT/setup.svg`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use sipveil_loadtest::bench::{
    CpuTimes, PercentileAxes, RateSearch, parse_pid_cpu_ticks, plot_percentiles_svg,
};
use sipveil_loadtest::calls::{
    AUDIO_FILE, BENCH_DOMAIN, BENCH_USER, CallTrial, SETUP_RTD, ServerResult, SippCalls, Summary,
    quantile, sipveil_config, trial_ok, ulaw_silence,
};
use sipveil_loadtest::lab::{self, Daemon, Lab, Shape};
use sipveil_loadtest::procs::ChildGuard;
use sipveil_loadtest::register_pcap::request_latency;
use sipveil_loadtest::rtpengine::NgClient;
use sipveil_loadtest::sipp::{parse_rtt_csv, parse_stat_csv};

const EDGE_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5060);
const EDGE_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 1), 5060);
const UAC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 5070);
const UAS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 2), 5080);
const INSTANCE: &str = "bench-calls";
const CONTROL_SOCKET: &str = "/run/sipveil/bench-calls.sock";
const NG_PORT: u16 = 2223;

#[derive(Parser, Debug)]
#[command(
    name = "sv-bench-calls",
    about = "Call benchmark: sipveil vs Kamailio 5.6 + topoh + rtpengine, SIPp calls with RTP"
)]
struct Opts {
    /// `calls` (so that `cargo xtask bench calls` can pass its arguments through).
    #[arg(value_parser = ["calls"])]
    which: Option<String>,
    /// A smoke run: few, short trials.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    sipveil: Option<PathBuf>,
    #[arg(long, default_value = "kamailio")]
    kamailio: PathBuf,
    #[arg(long, default_value = "rtpengine")]
    rtpengine: PathBuf,
    #[arg(long, default_value = "sipp")]
    sipp: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/kamailio/calls.cfg"))]
    kamailio_cfg: PathBuf,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/sipp"))]
    sipp_dir: PathBuf,
    #[arg(long, default_value = "target/bench/calls")]
    out: PathBuf,
    /// Servers to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "kamailio,sipveil")]
    servers: Vec<String>,
    /// sipveil's `[sip] workers`, Kamailio's UDP children, rtpengine's threads.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Media per call, ms.
    #[arg(long, default_value_t = 3000)]
    media_ms: u64,
    /// Seconds of new calls per search trial.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 10.0)]
    search_start: f64,
    #[arg(long, default_value_t = 2.0)]
    search_min: f64,
    #[arg(long, default_value_t = 640.0)]
    search_max: f64,
    #[arg(long, default_value_t = 8)]
    search_steps: u32,
    /// The fixed rate of the setup-time and CPU run (the same for both servers).
    #[arg(long, default_value_t = 20.0)]
    fixed_rate: f64,
    #[arg(long, default_value_t = 10.0)]
    fixed_secs: f64,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on an open netns fd with CLONE_NEWNET changes only this thread's network
        // namespace; the sockets `f` creates live there.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

/// The server's own account of the media it relayed (raw text for the summary): `sipveil stats`
/// or `rtpengine-ctl list totals`.
fn media_account(s: Server, sipveil: &Path) -> String {
    let out = match s {
        Server::Sipveil => Command::new(sipveil)
            .args(["stats", "--instance", INSTANCE, "--json"])
            .output(),
        Server::Kamailio => Command::new("ip")
            .args(["netns", "exec", lab::NS_EDGE, "rtpengine-ctl"])
            .args(["-ip", "127.0.0.1", "-port", "9900", "list", "totals"])
            .output(),
    };
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            match s {
                Server::Sipveil => text.trim().to_owned(),
                Server::Kamailio => text
                    .lines()
                    .filter(|l| l.contains("relayed packets") || l.contains("Owned sessions"))
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        }
        Err(e) => format!("unavailable: {e}"),
    }
}

/// Processes in a namespace (`ip netns pids`).
fn lab_pids(ns: &str) -> Vec<u32> {
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

/// utime + stime of `pids` (ticks; processes gone since count 0).
fn pids_cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|t| parse_pid_cpu_ticks(&t).ok())
        .sum()
}

/// utime + stime of every thread of `pids`, by (pid, tid) with the thread's name.
fn threads_cpu_ticks(pids: &[u32]) -> std::collections::BTreeMap<(u32, u32), (String, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for pid in pids {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let base = entry.path();
            let (Ok(comm), Ok(stat)) = (
                fs::read_to_string(base.join("comm")),
                fs::read_to_string(base.join("stat")),
            ) else {
                continue;
            };
            if let Ok(ticks) = parse_pid_cpu_ticks(&stat) {
                out.insert((*pid, tid), (comm.trim().to_owned(), ticks));
            }
        }
    }
    out
}

/// Per thread name: ticks used between `before` and `after` (threads present in both).
fn thread_deltas(
    before: &std::collections::BTreeMap<(u32, u32), (String, u64)>,
    after: &std::collections::BTreeMap<(u32, u32), (String, u64)>,
) -> Vec<(String, u64)> {
    let mut by_name: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (key, (name, ticks)) in after {
        let start = before.get(key).map_or(0, |(_, t)| *t);
        *by_name.entry(name.clone()).or_default() += ticks.saturating_sub(start);
    }
    let mut v: Vec<(String, u64)> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Kamailio,
    Sipveil,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Kamailio => "kamailio",
            Server::Sipveil => "sipveil",
        }
    }
}

/// The running server and what it needs stopped.
enum Running {
    Kamailio {
        kamailio: ChildGuard,
        rtpengine: ChildGuard,
    },
    Sipveil(Daemon),
}

struct Bench {
    o: Opts,
    sipveil: PathBuf,
    sv_ua: PathBuf,
    tmp: PathBuf,
    trial_no: u32,
}

impl Bench {
    fn log(&self, name: &str) -> Result<fs::File> {
        let path = self.tmp.join(name);
        fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    fn start(&self, s: Server) -> Result<Running> {
        match s {
            Server::Kamailio => {
                let mut rtpengine_cmd = Command::new("ip");
                rtpengine_cmd
                    .args(["netns", "exec", lab::NS_EDGE])
                    .arg(&self.o.rtpengine)
                    .args([
                        "--interface=a/198.18.1.1".to_owned(),
                        "--interface=b/198.18.2.1".to_owned(),
                        format!("--listen-ng=127.0.0.1:{NG_PORT}"),
                        "--table=-1".into(),
                        "--foreground".into(),
                        "--log-stderr".into(),
                        "--port-min=30000".into(),
                        "--port-max=59999".into(),
                        "--timeout=60".into(),
                        "--listen-cli=127.0.0.1:9900".into(),
                        format!("--num-threads={}", self.o.workers),
                        "-L".into(),
                        "4".into(),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(self.log("rtpengine.log")?);
                let rtpengine = ChildGuard::spawn("rtpengine", &mut rtpengine_cmd)?;
                // Kamailio disables an rtpengine that does not answer its first ping: wait for it.
                in_netns(lab::NS_EDGE, || {
                    let mut ng = NgClient::new(SocketAddr::from((Ipv4Addr::LOCALHOST, NG_PORT)))?;
                    let start = Instant::now();
                    while ng.ping().is_err() {
                        if start.elapsed() > Duration::from_secs(15) {
                            bail!("rtpengine does not answer ng ping");
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Ok(())
                })?;
                let mut kamailio_cmd = Command::new("ip");
                kamailio_cmd
                    .args(["netns", "exec", lab::NS_EDGE])
                    .arg(&self.o.kamailio)
                    .args(["-DD", "-E", "-f"])
                    .arg(&self.o.kamailio_cfg)
                    .args(["-n", &self.o.workers.to_string()])
                    .args(["-l", &format!("udp:{EDGE_A}")])
                    .args(["-m", "512", "-M", "32"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(self.log("kamailio.log")?);
                let kamailio = ChildGuard::spawn("kamailio", &mut kamailio_cmd)?;
                Ok(Running::Kamailio {
                    kamailio,
                    rtpengine,
                })
            }
            Server::Sipveil => {
                let db = self.tmp.join("registrar.redb");
                let _ = fs::remove_file(&db);
                let config = self.tmp.join("sipveil.toml");
                fs::write(
                    &config,
                    sipveil_config(
                        INSTANCE,
                        Path::new(CONTROL_SOCKET),
                        EDGE_A,
                        Some(EDGE_B),
                        self.o.workers,
                        &db,
                    ),
                )?;
                let log = self.tmp.join("sipveil.log");
                let d = Daemon::start(
                    &self.sipveil,
                    &config,
                    &[],
                    Duration::from_secs(60),
                    Some(&log),
                )
                .map_err(|e| anyhow!("{e}; log: {}", log.display()))?;
                Ok(Running::Sipveil(d))
            }
        }
    }

    fn stop(&self, running: Running) {
        match running {
            Running::Kamailio {
                mut kamailio,
                mut rtpengine,
            } => {
                kamailio.stop();
                rtpengine.stop();
            }
            Running::Sipveil(d) => {
                let _ = d.terminate(Duration::from_secs(10));
                let _ = Command::new(&self.sipveil)
                    .args(["unload", "--instance", INSTANCE, "--netns", lab::NS_EDGE])
                    .stdout(Stdio::null())
                    .status();
            }
        }
    }

    /// `sv-ua register` from the UAS's address until the server answers 200 (≤ 20 s): the
    /// server is ready and routes `bench@open.lab` to SIPp's UAS (started after, on that port).
    fn register(&self, proxy: SocketAddrV4) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", lab::NS_B])
                .arg(&self.sv_ua)
                .args(["register", "--ip", &UAS.ip().to_string()])
                .args(["--sip-port", &UAS.port().to_string()])
                .args(["--proxy", &proxy.to_string()])
                .args(["--aor", &format!("sip:{BENCH_USER}@{BENCH_DOMAIN}")])
                .output()
                .context("running sv-ua register")?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the server did not accept the REGISTER: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn workdir(&mut self, what: &str) -> Result<PathBuf> {
        self.trial_no += 1;
        let dir = self.tmp.join(format!("{:03}-{what}", self.trial_no));
        fs::create_dir_all(&dir)?;
        let secs = self.o.media_ms as f64 / 1000.0;
        fs::write(dir.join(AUDIO_FILE), ulaw_silence(secs))?;
        Ok(dir)
    }

    fn start_uas(&mut self) -> Result<ChildGuard> {
        let dir = self.workdir("uas")?;
        let uas = SippCalls {
            netns: lab::NS_B.into(),
            scenario: self.o.sipp_dir.join("bench_call_uas.xml"),
            local: UAS,
            target: None,
            rate: 0.0,
            calls: 0,
            media_ms: 0,
            max_open: 60_000,
            rtp_port_min: 20000,
            timeout_s: 0,
            stat_file: dir.join("uas-stat.csv"),
        };
        let log = fs::File::create(dir.join("uas.log"))?;
        let mut cmd = uas.command(&self.o.sipp, &dir);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let guard = ChildGuard::spawn("sipp-uas", &mut cmd)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(guard)
    }

    /// `calls` calls at `rate` CPS; SIPp's totals, setup times (ms), wall time of the run.
    fn offer(
        &mut self,
        target: SocketAddrV4,
        rate: f64,
        calls: u64,
    ) -> Result<(sipveil_loadtest::sipp::SippTotals, Vec<f64>)> {
        let dir = self.workdir(&format!("uac-{rate:.0}cps"))?;
        let media_s = self.o.media_ms as f64 / 1000.0;
        let duration = calls as f64 / rate.max(0.1);
        let timeout = (duration + media_s + 30.0).ceil() as u64;
        let uac = SippCalls {
            netns: lab::NS_A.into(),
            scenario: self.o.sipp_dir.join("bench_call_uac.xml"),
            local: UAC,
            target: Some(target),
            rate,
            calls,
            media_ms: self.o.media_ms,
            max_open: ((rate * (media_s + 10.0)).ceil() as u64).max(50),
            rtp_port_min: 20000,
            timeout_s: timeout,
            stat_file: dir.join("uac-stat.csv"),
        };
        let log = fs::File::create(dir.join("uac.log"))?;
        let mut cmd = uac.command(&self.o.sipp, &dir);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut guard = ChildGuard::spawn("sipp-uac", &mut cmd)?;
        let _ = guard.wait_bounded(Duration::from_secs(timeout + 10))?;
        let stat = fs::read_to_string(&uac.stat_file)
            .with_context(|| format!("SIPp wrote no {}", uac.stat_file.display()))?;
        let totals = parse_stat_csv(&stat)?;
        let mut setup = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with("_rtt.csv") {
                setup.extend(parse_rtt_csv(&fs::read_to_string(&path)?, SETUP_RTD)?);
            }
        }
        Ok((totals, setup))
    }

    /// dumpcap on a0 in sv-a (SIP port only) for the fixed-rate run.
    fn start_capture(&self, dir: &Path) -> Result<(ChildGuard, PathBuf)> {
        let pcap = dir.join("a0.pcap");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lab::NS_A, "dumpcap"])
            .args(["-i", "a0", "-P", "-q", "-s", "600", "-B", "32"])
            .args(["-f", "udp port 5060"])
            .args([
                "-a",
                &format!(
                    "duration:{}",
                    (self.o.fixed_secs + self.o.media_ms as f64 / 1000.0) as u64 + 60
                ),
            ])
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

    fn measure(&mut self, s: Server) -> Result<ServerResult> {
        let mut result = ServerResult {
            server: s.name().into(),
            fixed_rate: self.o.fixed_rate,
            ..ServerResult::default()
        };
        eprintln!("== {}: starting", s.name());
        let running = self.start(s)?;
        let outcome = self.measure_running(s, &mut result);
        self.stop(running);
        if let Err(e) = outcome {
            eprintln!("== {}: {e:#}", s.name());
            result.error = Some(format!("{e:#}"));
        }
        Ok(result)
    }

    fn measure_running(&mut self, s: Server, result: &mut ServerResult) -> Result<()> {
        // sipveil listens toward B too; Kamailio's registrar is reached on its one address.
        let register_via = match s {
            Server::Sipveil => EDGE_B,
            Server::Kamailio => EDGE_A,
        };
        self.register(register_via)
            .or_else(|_| self.register(EDGE_A))?;
        let mut uas = self.start_uas()?;
        // The fixed-rate run comes first, on a server that has seen no overload: after a failed
        // trial of the search a B2BUA still retransmits 200s to callers that gave up (Timer G/H,
        // 32 s) and ends their calls by timer, which would be counted as CPU per call here.
        self.fixed_run(s, result)?;
        std::thread::sleep(Duration::from_millis(self.o.media_ms + 1500));
        let mut search = RateSearch::new(
            self.o.search_start,
            self.o.search_min,
            self.o.search_max,
            0.1,
            self.o.search_steps,
        );
        while let Some(rate) = search.next_rate() {
            let calls = (rate * self.o.step_secs).ceil() as u64;
            let (totals, _) = self.offer(EDGE_A, rate, calls)?;
            let ok = trial_ok(&totals, calls);
            eprintln!(
                "   {}: {rate:.0} CPS x {calls}: {} ok, {} failed {:?} -> {}",
                s.name(),
                totals.successful,
                totals.failed,
                totals.failed_by,
                if ok { "pass" } else { "FAIL" }
            );
            search.record(rate, ok);
            result.trials.push(CallTrial {
                rate,
                calls,
                totals,
                ok,
            });
            // Let the last calls' media and the UAS's timewait drain before the next trial.
            std::thread::sleep(Duration::from_millis(self.o.media_ms + 1500));
        }
        result.max_cps = search.best_ok;

        result.media_account = Some(media_account(s, &self.sipveil));
        uas.stop();
        Ok(())
    }

    /// Calls at the fixed rate: setup time from a capture at the caller, CPU per call of the
    /// whole system and of the server's processes (and threads).
    fn fixed_run(&mut self, s: Server, result: &mut ServerResult) -> Result<()> {
        let calls = (self.o.fixed_rate * self.o.fixed_secs).ceil() as u64;
        let cap_dir = self.workdir("capture")?;
        let (mut dumpcap, pcap) = self.start_capture(&cap_dir)?;
        let server_pids = lab_pids(lab::NS_EDGE);
        let server_before = pids_cpu_ticks(&server_pids);
        let threads_before = threads_cpu_ticks(&server_pids);
        let before = proc_stat()?;
        let t0 = Instant::now();
        let (totals, mut setup) = self.offer(EDGE_A, self.o.fixed_rate, calls)?;
        let wall = t0.elapsed();
        let after = proc_stat()?;
        let server_after = pids_cpu_ticks(&server_pids);
        let threads_after = threads_cpu_ticks(&server_pids);
        std::thread::sleep(Duration::from_millis(500));
        dumpcap.stop();
        let busy_ns = after.delta(&before).busy() as f64 * tick_ns();
        if totals.successful > 0 {
            result.server_cpu_us_per_call = Some(
                server_after.saturating_sub(server_before) as f64 * tick_ns()
                    / 1000.0
                    / totals.successful as f64,
            );
        }
        if totals.successful > 0 {
            let per_call =
                |ticks: u64| ticks as f64 * tick_ns() / 1000.0 / totals.successful as f64;
            result.server_threads_us_per_call = thread_deltas(&threads_before, &threads_after)
                .into_iter()
                .map(|(name, ticks)| (name, per_call(ticks)))
                .collect();
            let line: Vec<String> = result
                .server_threads_us_per_call
                .iter()
                .map(|(n, us)| format!("{n} {us:.0}"))
                .collect();
            eprintln!(
                "   {}: server µs/call by thread: {}",
                s.name(),
                line.join(", ")
            );
        }
        // Setup times from the capture at the caller's interface (SIPp's own tick in 4 ms
        // steps); SIPp's as a fallback.
        let mut setup_source = "sipp-rtd";
        if let Ok(bytes) = fs::read(&pcap)
            && let Ok(lat) = request_latency(&bytes, "INVITE")
            && !lat.histogram.is_empty()
        {
            setup = lat
                .histogram
                .iter_recorded()
                .flat_map(|v| {
                    std::iter::repeat_n(
                        v.value_iterated_to() as f64 / 1e6,
                        v.count_at_value() as usize,
                    )
                })
                .collect();
            setup_source = "capture";
        }
        result.setup_source = Some(setup_source.into());
        result.fixed_calls_ok = totals.successful;
        result.fixed_calls_failed = totals.failed;
        result.busy_cpus = Some(busy_ns / 1e9 / wall.as_secs_f64());
        if totals.successful > 0 {
            result.cpu_us_per_call = Some(busy_ns / 1000.0 / totals.successful as f64);
        }
        setup.sort_by(f64::total_cmp);
        result.setup_p50_ms = quantile(&setup, 0.5);
        result.setup_p90_ms = quantile(&setup, 0.9);
        result.setup_p99_ms = quantile(&setup, 0.99);
        result.setup_max_ms = setup.last().copied();
        eprintln!(
            "   {}: fixed {} CPS: {} ok, {} failed; setup p50 {:?} ms p99 {:?} ms; CPU {:?} µs/call",
            s.name(),
            self.o.fixed_rate,
            totals.successful,
            totals.failed,
            result.setup_p50_ms,
            result.setup_p99_ms,
            result.cpu_us_per_call
        );
        let hist_path = self.o.out.join(format!("setup-{}.json", s.name()));
        fs::write(&hist_path, serde_json::to_string(&setup)?)?;
        Ok(())
    }
}

fn histogram_of(ms: &[f64]) -> Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for v in ms {
        h.saturating_record((v * 1e6).max(1.0) as u64);
    }
    Ok(h)
}

fn run() -> Result<bool> {
    let mut o = Opts::parse();
    if o.quick {
        o.step_secs = o.step_secs.min(2.0);
        o.search_steps = o.search_steps.min(3);
        o.fixed_secs = o.fixed_secs.min(3.0);
        o.fixed_rate = o.fixed_rate.min(10.0);
        o.media_ms = o.media_ms.min(1000);
    }
    let sipveil = o.sipveil.clone().unwrap_or_else(|| sibling("sipveil"));
    let sv_ua = sibling("sv-ua");
    let mut servers = Vec::new();
    for name in &o.servers {
        servers.push(match name.as_str() {
            "kamailio" => Server::Kamailio,
            "sipveil" => Server::Sipveil,
            other => bail!("--servers: unknown {other} (kamailio, sipveil)"),
        });
    }
    fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let tmp = std::env::temp_dir().join(format!("sv-bench-calls-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    eprintln!(
        "sv-bench-calls: work files in {} (kept), results in {}",
        tmp.display(),
        o.out.display()
    );
    let _session = Lab::session(Shape::TwoArm, &sipveil)?;
    let mut bench = Bench {
        o,
        sipveil,
        sv_ua,
        tmp,
        trial_no: 0,
    };
    let mut sipveil_result = ServerResult {
        server: "sipveil".into(),
        error: Some("not measured".into()),
        ..ServerResult::default()
    };
    let mut kamailio_result = ServerResult {
        server: "kamailio".into(),
        error: Some("not measured".into()),
        ..ServerResult::default()
    };
    for s in servers {
        let r = bench.measure(s)?;
        match s {
            Server::Sipveil => sipveil_result = r,
            Server::Kamailio => kamailio_result = r,
        }
    }
    let summary = Summary::new(
        sipveil_result,
        kamailio_result,
        bench.o.quick,
        bench.o.media_ms,
    );
    let path = bench.o.out.join("summary.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    let mut series = Vec::new();
    for r in [&summary.sipveil, &summary.kamailio] {
        let file = bench.o.out.join(format!("setup-{}.json", r.server));
        if let Ok(text) = fs::read_to_string(&file) {
            let ms: Vec<f64> = serde_json::from_str(&text)?;
            let label = if r.server == "kamailio" {
                "Kamailio 5.6 + topoh + rtpengine".to_owned()
            } else {
                "sipveil".to_owned()
            };
            series.push((label, histogram_of(&ms)?));
        }
    }
    let plot = bench.o.out.join("setup.svg");
    if series.iter().all(|(_, h)| h.is_empty()) {
        eprintln!("sv-bench-calls: no setup times to plot");
    } else {
        plot_percentiles_svg(
            &plot,
            &format!(
                "call setup time (INVITE → 200) at {} CPS",
                bench.o.fixed_rate
            ),
            &PercentileAxes {
                y_desc: "setup time (µs)",
                decades: 3.0,
                floor_us: 1.0,
            },
            &series,
        )?;
    }
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    println!("\n=== calls with media anchored (noisy shared 2-core machine)");
    println!(
        "{:<10} {:>10} {:>12} {:>12} {:>14} {:>16} {:>10}",
        "server",
        "max CPS",
        "setup p50 ms",
        "setup p99 ms",
        "CPU µs/call",
        "server µs/call",
        "busy CPUs"
    );
    for r in [&summary.sipveil, &summary.kamailio] {
        println!(
            "{:<10} {:>10} {:>12} {:>12} {:>14} {:>16} {:>10}{}",
            r.server,
            f(r.max_cps),
            f(r.setup_p50_ms),
            f(r.setup_p99_ms),
            f(r.cpu_us_per_call),
            f(r.server_cpu_us_per_call),
            f(r.busy_cpus),
            r.error
                .as_ref()
                .map(|e| format!("  ERROR: {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "ratios (sipveil ÷ Kamailio+rtpengine): cps_ratio {}, setup_p99_ratio {}, cpu_per_call_ratio {}",
        f(summary.cps_ratio),
        f(summary.setup_p99_ratio),
        f(summary.cpu_per_call_ratio)
    );
    println!(
        "server processes only (no softirq/XDP time; less noisy): server_cpu_per_call_ratio {}",
        f(summary.server_cpu_per_call_ratio)
    );
    println!("wrote {} and {}", path.display(), plot.display());
    Ok(summary.sipveil.error.is_none() && summary.kamailio.error.is_none())
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sv-bench-calls: {e:#}");
            ExitCode::from(2)
        }
    }
}
