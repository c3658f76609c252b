//! The call benchmark (`sv-bench-calls`): the pure parts. SIPp UAC (sv-a) → server in sv-edge →
//! SIPp UAS (sv-b, registered as `bench@open.lab`), INVITE / 200 / ACK / RTP both ways
//! (SIPp's `rtp_stream`) / BYE, through sipveil (B2BUA, media in XDP) and through Kamailio 5.6
//! (`loadtest/kamailio/calls.cfg`: usrloc, topoh, rtpengine in userspace).
//!
//! - [`SippCalls`]: the SIPp command line of either side;
//! - [`sipveil_config`]: the daemon's configuration for the run;
//! - [`ulaw_silence`]: the audio SIPp streams;
//! - [`trial_ok`]: the "< 0.1 % failed calls" rule;
//! - [`ServerResult`] / [`Summary`]: `target/bench/calls/summary.json`.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::bench::ratio;
use crate::sipp::SippTotals;

/// The SIPp `rtd` name of the call setup time (INVITE sent → 200 received).
pub const SETUP_RTD: &str = "setup";
/// The user the UAS registers and the UAC calls.
pub const BENCH_USER: &str = "bench";
/// The open domain both servers serve.
pub const BENCH_DOMAIN: &str = "open.lab";
/// sipveil's `[calls] max_calls` in the bench: far above what the lab can offer, so the
/// daemon's admission limit (default 1000) is not what the search finds (Kamailio has none).
pub const MAX_CALLS: u32 = 20_000;
/// The file name the scenarios stream (in SIPp's working directory).
pub const AUDIO_FILE: &str = "silence.ulaw";

/// One SIPp process of the call benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct SippCalls {
    pub netns: String,
    pub scenario: PathBuf,
    /// Its own SIP address (`-i`, `-p`); media on the same IP.
    pub local: SocketAddrV4,
    /// UAC: the server (calls go to `sip:bench@open.lab` through it). UAS: None.
    pub target: Option<SocketAddrV4>,
    /// UAC: calls per second, calls in all, and how long each call's media lasts (ms, `-d`).
    pub rate: f64,
    pub calls: u64,
    pub media_ms: u64,
    /// Open calls at most (`-l`).
    pub max_open: u64,
    /// `-mp`: SIPp 3.6 takes its RTP stream ports from here upwards.
    pub rtp_port_min: u16,
    /// Global time limit (`-timeout`), seconds.
    pub timeout_s: u64,
    pub stat_file: PathBuf,
}

impl SippCalls {
    /// `ip netns exec NS sipp [TARGET] -sf SCENARIO ...`, run in `workdir` (where SIPp finds
    /// [`AUDIO_FILE`] and writes its `_rtt.csv`).
    #[must_use]
    pub fn command(&self, sipp: &Path, workdir: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(sipp);
        if let Some(target) = self.target {
            cmd.arg(target.to_string())
                .args(["-s", BENCH_USER])
                .args(["-r", &format!("{:.0}", self.rate.max(1.0))])
                .args(["-rp", "1000"])
                .args(["-m", &self.calls.to_string()])
                .args(["-d", &self.media_ms.to_string()])
                .arg("-trace_rtt")
                .args(["-rtt_freq", "1"])
                .args(["-timeout", &format!("{}s", self.timeout_s)])
                .arg("-timeout_error");
        }
        cmd.arg("-sf")
            .arg(&self.scenario)
            .args(["-i", &self.local.ip().to_string()])
            .args(["-p", &self.local.port().to_string()])
            .args(["-mi", &self.local.ip().to_string()])
            .args(["-t", "u1"])
            .args(["-l", &self.max_open.max(1).to_string()])
            .args(["-mp", &self.rtp_port_min.to_string()])
            .arg("-trace_stat")
            .arg("-stf")
            .arg(&self.stat_file)
            .args(["-fd", "1"])
            .args(["-max_retrans", "3"])
            .arg("-nostdin")
            .current_dir(workdir);
        cmd
    }
}

/// `seconds` of PCMU silence (8000 bytes per second), what SIPp's `rtp_stream` plays.
#[must_use]
pub fn ulaw_silence(seconds: f64) -> Vec<u8> {
    let bytes = (seconds.max(0.02) * 8000.0).round() as usize;
    vec![0xFF; bytes]
}

/// A trial passes when every call was started and completed and fewer than 0.1 % failed.
#[must_use]
pub fn trial_ok(totals: &SippTotals, expected: u64) -> bool {
    let failures = expected
        .saturating_sub(totals.successful)
        .max(totals.failed);
    expected > 0 && totals.created >= expected && failures * 1000 < expected
}

/// The sipveil configuration for the run: XDP on the lab's edge interfaces, UDP SIP on
/// `listen` (and on `listen_b` toward B), registrar database `database`, an open domain that
/// accepts anonymous callers, relay ports 30000–59999 (rtpengine gets the same range).
#[must_use]
pub fn sipveil_config(
    instance: &str,
    control: &Path,
    listen: SocketAddrV4,
    listen_b: Option<SocketAddrV4>,
    workers: u32,
    database: &Path,
) -> String {
    let mut udp = vec![format!("\"{listen}\"")];
    if let Some(b) = listen_b {
        udp.push(format!("\"{b}\""));
    }
    format!(
        "# sipveil configuration for sv-bench-calls (generated per run)\n\
         [dataplane]\n\
         interfaces = [\"ea0\", \"eb0\"]\n\
         xdp = \"auto\"\n\
         instance = \"{instance}\"\n\
         \n\
         [media]\n\
         port_min = 30000\n\
         port_max = 59999\n\
         idle_timeout_secs = 120\n\
         addresses = {{ a = \"198.18.1.1\", b = \"198.18.2.1\" }}\n\
         workers = 1\n\
         \n\
         [control]\n\
         socket = \"{control}\"\n\
         \n\
         [sip]\n\
         workers = {workers}\n\
         udp = [{udp}]\n\
         tcp = []\n\
         tls = []\n\
         edge_names = [\"edge.lab\"]\n\
         server = \"sipveil-bench\"\n\
         \n\
         [calls]\n\
         max_calls = {max_calls}\n\
         \n\
         [registrar]\n\
         database = \"{db}\"\n\
         min_expires = 60\n\
         max_expires = 3600\n\
         default_expires = 600\n\
         max_contacts = 8\n\
         \n\
         [[domain]]\n\
         name = \"{BENCH_DOMAIN}\"\n\
         policy = \"open\"\n\
         anonymous_callers = true\n",
        control = control.display(),
        udp = udp.join(", "),
        db = database.display(),
        max_calls = MAX_CALLS,
    )
}

/// One search trial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallTrial {
    pub rate: f64,
    pub calls: u64,
    pub totals: SippTotals,
    pub ok: bool,
}

/// What one server achieved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerResult {
    pub server: String,
    /// Highest offered CPS whose trial passed (< 0.1 % failed calls).
    pub max_cps: Option<f64>,
    pub trials: Vec<CallTrial>,
    /// The fixed-rate run: offered CPS, calls completed, setup time (ms) and whole-system CPU.
    pub fixed_rate: f64,
    pub fixed_calls_ok: u64,
    pub fixed_calls_failed: u64,
    pub setup_p50_ms: Option<f64>,
    pub setup_p90_ms: Option<f64>,
    pub setup_p99_ms: Option<f64>,
    pub setup_max_ms: Option<f64>,
    /// Whole-system CPU time (all processes: server, SIPp both sides, kernel) per completed
    /// call at `fixed_rate`, µs.
    pub cpu_us_per_call: Option<f64>,
    /// CPU time of the server's processes only (everything in sv-edge: sipveil, or Kamailio and
    /// rtpengine) per completed call, µs. Excludes softirq work (XDP), which runs in no process.
    pub server_cpu_us_per_call: Option<f64>,
    /// The same per thread name of the server's processes (`/proc/<pid>/task/*/comm`, e.g.
    /// `sip-worker-0`, `sv-relay-0`; threads that ended inside the window are missing), µs per
    /// completed call, largest first: where the server's CPU goes.
    #[serde(default)]
    pub server_threads_us_per_call: Vec<(String, f64)>,
    /// Where the setup times come from: `capture` (dumpcap at the caller) or `sipp-rtd`.
    pub setup_source: Option<String>,
    /// Busy CPUs during the fixed-rate window.
    pub busy_cpus: Option<f64>,
    /// The server's own media counters after the fixed-rate run (`sipveil stats --json` or
    /// `rtpengine-ctl list totals`), raw: evidence that the media went through it.
    pub media_account: Option<String>,
    pub error: Option<String>,
}

/// `target/bench/calls/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// sipveil's max CPS ÷ Kamailio + rtpengine's.
    pub cps_ratio: Option<f64>,
    /// sipveil's setup p99 ÷ the peer's (at the fixed rate).
    pub setup_p99_ratio: Option<f64>,
    /// sipveil's whole-system CPU per call ÷ the peer's (at the fixed rate).
    pub cpu_per_call_ratio: Option<f64>,
    /// The same from the server processes' own CPU time (see
    /// [`ServerResult::server_cpu_us_per_call`]).
    pub server_cpu_per_call_ratio: Option<f64>,
    pub sipveil: ServerResult,
    pub kamailio: ServerResult,
    pub quick: bool,
    pub media_ms: u64,
    pub note: String,
}

impl Summary {
    /// The ratios from the two results.
    #[must_use]
    pub fn new(sipveil: ServerResult, kamailio: ServerResult, quick: bool, media_ms: u64) -> Self {
        Summary {
            cps_ratio: ratio(sipveil.max_cps, kamailio.max_cps),
            setup_p99_ratio: ratio(sipveil.setup_p99_ms, kamailio.setup_p99_ms),
            cpu_per_call_ratio: ratio(sipveil.cpu_us_per_call, kamailio.cpu_us_per_call),
            server_cpu_per_call_ratio: ratio(
                sipveil.server_cpu_us_per_call,
                kamailio.server_cpu_us_per_call,
            ),
            sipveil,
            kamailio,
            quick,
            media_ms,
            note: "2-core machine shared with other builds: absolute figures are noisy; the \
                   ratios come from one run"
                .into(),
        }
    }
}

/// The value at quantile `q` (0..=1) of `sorted` (ascending), nearest rank.
#[must_use]
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(created: u64, successful: u64, failed: u64) -> SippTotals {
        SippTotals {
            created,
            successful,
            failed,
            ..SippTotals::default()
        }
    }

    #[test]
    fn the_failure_rule() {
        assert!(trial_ok(&totals(1000, 1000, 0), 1000));
        assert!(
            !trial_ok(&totals(1000, 999, 1), 1000),
            "0.1 % is not < 0.1 %"
        );
        assert!(trial_ok(&totals(2000, 1999, 1), 2000));
        assert!(!trial_ok(&totals(900, 900, 0), 1000), "calls never started");
        assert!(!trial_ok(&totals(0, 0, 0), 0));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn uac_and_uas_command_lines() {
        let uac = SippCalls {
            netns: "sv-a".into(),
            scenario: "uac.xml".into(),
            local: "198.18.1.2:5070".parse().unwrap_or_else(|e| panic!("{e}")),
            target: Some("198.18.1.1:5060".parse().unwrap_or_else(|e| panic!("{e}"))),
            rate: 25.0,
            calls: 100,
            media_ms: 2000,
            max_open: 500,
            rtp_port_min: 20000,
            timeout_s: 60,
            stat_file: "stat.csv".into(),
        };
        let line = |c: &SippCalls| {
            c.command(Path::new("sipp"), Path::new("/tmp"))
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let l = line(&uac);
        assert!(l.starts_with(
            "netns exec sv-a sipp 198.18.1.1:5060 -s bench -r 25 -rp 1000 -m 100 -d 2000"
        ));
        assert!(l.contains("-mp 20000"));
        let uas = SippCalls {
            target: None,
            ..uac
        };
        let l = line(&uas);
        assert!(l.starts_with("netns exec sv-a sipp -sf uac.xml"));
        assert!(!l.contains(" -m "));
    }

    #[test]
    fn config_lists_both_listeners_and_the_open_domain() {
        let text = sipveil_config(
            "bench-calls",
            Path::new("/run/x.sock"),
            "198.18.1.1:5060".parse().unwrap_or_else(|e| panic!("{e}")),
            Some("198.18.2.1:5060".parse().unwrap_or_else(|e| panic!("{e}"))),
            2,
            Path::new("/tmp/r.redb"),
        );
        assert!(text.contains("udp = [\"198.18.1.1:5060\", \"198.18.2.1:5060\"]"));
        assert!(text.contains("anonymous_callers = true"));
        assert!(text.contains("xdp = \"auto\""));
        assert!(text.contains("[calls]\nmax_calls = 20000\n"));
    }

    #[test]
    fn silence_has_8000_bytes_per_second() {
        assert_eq!(ulaw_silence(2.0).len(), 16_000);
        assert!(ulaw_silence(1.0).iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn ratios_are_sipveil_over_the_peer() {
        let s = ServerResult {
            max_cps: Some(300.0),
            setup_p99_ms: Some(2.0),
            cpu_us_per_call: Some(500.0),
            ..ServerResult::default()
        };
        let k = ServerResult {
            max_cps: Some(200.0),
            setup_p99_ms: Some(4.0),
            cpu_us_per_call: Some(1000.0),
            ..ServerResult::default()
        };
        let sum = Summary::new(s, k, false, 2000);
        assert_eq!(sum.cps_ratio, Some(1.5));
        assert_eq!(sum.setup_p99_ratio, Some(0.5));
        assert_eq!(sum.cpu_per_call_ratio, Some(0.5));
    }
}
