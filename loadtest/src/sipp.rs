//! SIPp (sip-tester 3.6) as a REGISTER load generator: the injection file of a run, the command
//! line, and the parsers of its outputs (`-trace_stat` statistics CSV, `-trace_rtt` response
//! times).
//!
//! Two facts about the Debian SIPp 3.6.1 that the benchmark relies on (checked on this machine):
//! the `_rtt.csv` rows are `time since start (ms);response time (ms);rtd name`, and SIPp's clock is
//! the coarse monotonic clock, so response times come in steps of one kernel tick (4 ms at
//! HZ=250). [`crate::register_pcap`] measures the same exchanges from a capture at µs precision.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SippError {
    #[error("SIPp statistics file has no header line")]
    NoHeader,
    #[error("SIPp statistics file has no data line")]
    NoData,
    #[error("SIPp statistics file lacks column {0:?}")]
    MissingColumn(&'static str),
    #[error("SIPp statistics column {column:?} holds {text:?}, not a count")]
    BadNumber { column: String, text: String },
    #[error("SIPp response-time file: line {line}: {message}")]
    Rtt { line: usize, message: String },
}

/// One user of the injection file. `domain` is the host part of its address of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvUser<'a> {
    pub name: &'a str,
    pub domain: &'a str,
    pub password: &'a str,
}

/// The injection file (`-inf`) for `users`: `SEQUENTIAL`, then per user
/// `name;domain;password;[authentication username=NAME password=PASSWORD]` (field3 is what the
/// auth scenario sends; SIPp 3.6 does not expand `[fieldN]` inside `[authentication ...]`).
/// Names and passwords must not hold `;`, `]` or spaces (the generated ones do not).
#[must_use]
pub fn injection_csv<'a>(users: impl IntoIterator<Item = CsvUser<'a>>) -> String {
    let mut out = String::from("SEQUENTIAL\n");
    for u in users {
        let _ = writeln!(
            out,
            "{};{};{};[authentication username={} password={}]",
            u.name, u.domain, u.password, u.name, u.password
        );
    }
    out
}

/// SIPp's `-max_socket`: below the usual open-files limit (20 000 here); `max_open` is capped
/// to it.
pub const MAX_SOCKETS: u64 = 16_000;

/// What one SIPp process is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SippJob {
    /// Network namespace it runs in.
    pub netns: String,
    /// Its own address (`-i`) and port (`-p`).
    pub local: SocketAddrV4,
    /// The server under test.
    pub target: SocketAddrV4,
    pub scenario: std::path::PathBuf,
    pub injection: std::path::PathBuf,
    /// Calls (REGISTER exchanges) per second.
    pub rate: f64,
    /// Calls in all (`-m`).
    pub calls: u64,
    /// Open calls at most (`-l`).
    pub max_open: u64,
    /// Global time limit (`-timeout`), seconds.
    pub timeout_s: u64,
    /// The statistics file (`-stf`).
    pub stat_file: std::path::PathBuf,
    /// Write response times (`-trace_rtt`).
    pub trace_rtt: bool,
    /// Write unexpected messages to `<scenario>_<pid>_errors.log` (`-trace_err`, capped).
    pub trace_err: bool,
    /// SIPp's UDP transport mode: `u1` (one socket, one source port for every call) or `un` (a
    /// socket per call: every user registers from its own port, as distinct clients would; a
    /// server with SO_REUSEPORT sockets spreads them over its workers by the source address).
    pub transport: String,
}

impl SippJob {
    /// The command: `ip netns exec NS sipp ...`, run in `workdir` (SIPp writes its `_rtt.csv` and
    /// `_errors.log` files into its working directory).
    #[must_use]
    pub fn command(&self, sipp: &Path, workdir: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(sipp)
            .arg(self.target.to_string())
            .arg("-sf")
            .arg(&self.scenario)
            .arg("-inf")
            .arg(&self.injection)
            .args(["-r", &format!("{:.0}", self.rate.max(1.0))])
            .args(["-rp", "1000"])
            .args(["-m", &self.calls.to_string()])
            .args(["-l", &self.max_open.clamp(1, MAX_SOCKETS - 100).to_string()])
            .args(["-i", &self.local.ip().to_string()])
            .args(["-p", &self.local.port().to_string()])
            .args(["-t", &self.transport])
            // `un` opens a socket per open call; SIPp refuses to start when its default maximum
            // (50 000) exceeds the open-files limit.
            .args(["-max_socket", &MAX_SOCKETS.to_string()])
            .arg("-trace_stat")
            .arg("-stf")
            .arg(&self.stat_file)
            .args(["-fd", "1"])
            .args(["-timeout", &format!("{}s", self.timeout_s)])
            .arg("-timeout_error")
            .args(["-max_retrans", "3"])
            .arg("-nostdin")
            .current_dir(workdir);
        if self.trace_rtt {
            cmd.arg("-trace_rtt").args(["-rtt_freq", "1000"]);
        }
        if self.trace_err {
            cmd.arg("-trace_err").args(["-max_log_size", "2000000"]);
        }
        cmd
    }
}

/// The final counters of one SIPp run (the last row of its `-trace_stat` file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SippTotals {
    /// Calls SIPp started.
    pub created: u64,
    pub successful: u64,
    pub failed: u64,
    /// Retransmitted requests (every retransmission counts once).
    pub retransmissions: u64,
    /// Messages that matched no call.
    pub out_of_call: u64,
    /// Non-zero `Failed...(C)` counters by reason.
    pub failed_by: BTreeMap<String, u64>,
}

impl SippTotals {
    /// Sums two runs (several SIPp processes of one trial).
    pub fn add(&mut self, other: &SippTotals) {
        self.created += other.created;
        self.successful += other.successful;
        self.failed += other.failed;
        self.retransmissions += other.retransmissions;
        self.out_of_call += other.out_of_call;
        for (k, v) in &other.failed_by {
            *self.failed_by.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Exchanges that count as failed for the rate search: failed calls, calls SIPp never
    /// started out of `expected`, and every retransmission (a REGISTER not answered within
    /// 500 ms; an upper bound on the calls that needed one), at most `expected`.
    #[must_use]
    pub fn failures(&self, expected: u64) -> u64 {
        (self.failed + expected.saturating_sub(self.created) + self.retransmissions).min(expected)
    }
}

/// Parses a `-trace_stat` file: `;`-separated, a header row, one row per `-fd` period, the last
/// one written at exit. Cumulative `(C)` columns of the last row are returned.
pub fn parse_stat_csv(text: &str) -> Result<SippTotals, SippError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or(SippError::NoHeader)?
        .split(';')
        .collect();
    let last = lines.next_back().ok_or(SippError::NoData)?;
    let row: Vec<&str> = last.split(';').collect();
    let col = |name: &'static str| -> Result<u64, SippError> {
        let i = header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or(SippError::MissingColumn(name))?;
        let text = row.get(i).map_or("", |t| t.trim());
        text.parse().map_err(|_| SippError::BadNumber {
            column: name.to_owned(),
            text: text.to_owned(),
        })
    };
    let mut totals = SippTotals {
        created: col("TotalCallCreated")?,
        successful: col("SuccessfulCall(C)")?,
        failed: col("FailedCall(C)")?,
        retransmissions: col("Retransmissions(C)")?,
        out_of_call: col("OutOfCallMsgs(C)")?,
        failed_by: BTreeMap::new(),
    };
    for (i, h) in header.iter().enumerate() {
        let h = h.trim();
        if h.starts_with("Failed")
            && h != "FailedCall(C)"
            && let Some(name) = h.strip_suffix("(C)")
            && let Some(v) = row.get(i).and_then(|t| t.trim().parse::<u64>().ok())
            && v > 0
        {
            totals.failed_by.insert(name.to_owned(), v);
        }
    }
    Ok(totals)
}

/// Response times (ms) of the rtd named `rtd` from a `-trace_rtt` file
/// (`Date_ms;response_time_ms;rtd_no`).
pub fn parse_rtt_csv(text: &str, rtd: &str) -> Result<Vec<f64>, SippError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.starts_with("Date_ms")) {
            continue;
        }
        let mut f = line.split(';');
        let (Some(_), Some(rt), Some(name)) = (f.next(), f.next(), f.next()) else {
            return Err(SippError::Rtt {
                line: n + 1,
                message: format!("expected 3 fields in {line:?}"),
            });
        };
        if name.trim() != rtd {
            continue;
        }
        let v: f64 = rt.trim().parse().map_err(|_| SippError::Rtt {
            line: n + 1,
            message: format!("response time {rt:?} is not a number"),
        })?;
        if !v.is_finite() || v < 0.0 {
            return Err(SippError::Rtt {
                line: n + 1,
                message: format!("response time {v} out of range"),
            });
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "StartTime;TotalCallCreated;SuccessfulCall(C);FailedCall(C);FailedMaxUDPRetrans(C);FailedUnexpectedMessage(C);OutOfCallMsgs(C);Retransmissions(C);ResponseTime1(C);\n\
        2026-11-21\t15:26:12.787696\t1795274772.787696;100;90;0;0;0;0;0;00:00:00:000000;\n\
        2026-11-21\t15:26:13.787696\t1795274773.787696;5000;4990;7;2;5;1;12;00:00:00:001000;\n";

    #[test]
    fn stat_file_last_row_counts() {
        let t = parse_stat_csv(STAT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.created, t.successful, t.failed), (5000, 4990, 7));
        assert_eq!((t.retransmissions, t.out_of_call), (12, 1));
        assert_eq!(t.failed_by.get("FailedMaxUDPRetrans"), Some(&2));
        assert_eq!(t.failed_by.get("FailedUnexpectedMessage"), Some(&5));
        assert_eq!(t.failures(5000), 7 + 12);
        assert_eq!(t.failures(5010), 7 + 10 + 12);
        assert_eq!(t.failures(10), 10);
        let mut sum = t.clone();
        sum.add(&t);
        assert_eq!(sum.successful, 9980);
        assert_eq!(sum.failed_by.get("FailedMaxUDPRetrans"), Some(&4));
    }

    #[test]
    fn stat_file_errors_are_typed() {
        assert_eq!(parse_stat_csv(""), Err(SippError::NoHeader));
        assert_eq!(parse_stat_csv("A;B\n"), Err(SippError::NoData));
        assert_eq!(
            parse_stat_csv("TotalCallCreated\n1\n"),
            Err(SippError::MissingColumn("SuccessfulCall(C)"))
        );
        let bad = STAT.replace(";4990;", ";x;");
        assert!(matches!(
            parse_stat_csv(&bad),
            Err(SippError::BadNumber { .. })
        ));
    }

    #[test]
    fn rtt_file_parses_one_rtd() {
        let text = "Date_ms;response_time_ms;rtd_no\n4.001;0;1\n1004;4;1\n1004;8;2\n";
        assert_eq!(parse_rtt_csv(text, "1"), Ok(vec![0.0, 4.0]));
        assert_eq!(parse_rtt_csv(text, "2"), Ok(vec![8.0]));
        assert!(parse_rtt_csv("Date_ms;x;y\n1;2\n", "1").is_err());
        assert!(parse_rtt_csv("Date_ms;x;y\n1;-2;1\n", "1").is_err());
        assert!(parse_rtt_csv("Date_ms;x;y\n1;abc;1\n", "1").is_err());
    }

    #[test]
    fn injection_file_format() {
        let csv = injection_csv([CsvUser {
            name: "u1",
            domain: "auth.lab",
            password: "pw",
        }]);
        assert_eq!(
            csv,
            "SEQUENTIAL\nu1;auth.lab;pw;[authentication username=u1 password=pw]\n"
        );
    }

    #[test]
    fn command_line_is_bounded() {
        let job = SippJob {
            netns: "sv-a".into(),
            local: "198.18.1.2:5070".parse().unwrap_or_else(|e| panic!("{e}")),
            target: "198.18.1.1:5060".parse().unwrap_or_else(|e| panic!("{e}")),
            scenario: "s.xml".into(),
            injection: "u.csv".into(),
            rate: 1234.4,
            calls: 5000,
            max_open: 2000,
            timeout_s: 20,
            stat_file: "stat.csv".into(),
            trace_rtt: true,
            trace_err: false,
            transport: "un".into(),
        };
        let cmd = job.command(Path::new("sipp"), Path::new("/tmp"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-r 1234",
            "-m 5000",
            "-l 2000",
            "-timeout 20s",
            "-trace_rtt",
        ] {
            assert!(joined.contains(want), "{joined}");
        }
        assert!(!joined.contains("-trace_err"));
    }
}
