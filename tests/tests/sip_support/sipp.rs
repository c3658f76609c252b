//! SIPp REGISTER runs from sv-a (`ip netns exec sv-a sipp ...`) with the scenarios under
//! `loadtest/sipp/test_*.xml`, users injected from a CSV file (`-inf`), and the final counts read
//! from SIPp's statistics file (`-trace_stat -stf`).
//!
//! TLS: Debian's SIPp 3.6.1 is built without OpenSSL (`-t l1` answers "To use a TLS transport
//! you must compile SIPp with OpenSSL"). A TLS build (`cmake -DUSE_SSL=1`) would also load
//! `-tls_cert`/`-tls_key` (default `cacert.pem`/`cakey.pem`) into its client context and fail
//! without them, and verifies the server only when given a CA. So the TLS run is SIPp over TCP
//! (`-t t1`) into a `socat` bridge in sv-a that speaks TLS to the edge and verifies the edge's
//! certificate (name edge.lab) against the test CA: the edge sees, and records, TLS flows.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::CLIENT_NS;
use super::client::{EDGE_ADDR, TLS_PORT};

/// sv-a's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// Where the socat bridge listens in sv-a.
pub const BRIDGE_PORT: u16 = 15061;

/// The scenario `loadtest/sipp/NAME`.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../loadtest/sipp")
        .join(name)
}

/// What one SIPp run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SippCounts {
    pub successful: u64,
    pub failed: u64,
}

/// One SIPp run.
pub struct SippRun<'a> {
    pub sipp: &'a Path,
    pub scenario: PathBuf,
    /// Written as is to `DIR/NAME.csv` and passed with `-inf`.
    pub csv: String,
    /// `u1` or `t1`.
    pub transport: &'a str,
    pub target: SocketAddrV4,
    pub calls: u32,
    pub rate: u32,
    pub dir: &'a Path,
    /// Names the run's files.
    pub name: &'a str,
    /// More SIPp options (e.g. `-auth_uri auth.lab`).
    pub extra: Vec<String>,
}

impl SippRun<'_> {
    /// Runs SIPp to the end (bounded: `-timeout`), returns its counts or why it failed.
    pub fn run(&self) -> Result<SippCounts, String> {
        let csv = self.dir.join(format!("{}.csv", self.name));
        std::fs::write(&csv, &self.csv).map_err(|error| format!("{}: {error}", csv.display()))?;
        let stat = self.dir.join(format!("{}-stat.csv", self.name));
        let errors = self.dir.join(format!("{}-errors.log", self.name));
        let screen = self.dir.join(format!("{}-screen.log", self.name));
        let messages = self.dir.join(format!("{}-messages.log", self.name));
        let _ = std::fs::remove_file(&stat);
        let out = std::fs::File::create(&screen)
            .map_err(|error| format!("{}: {error}", screen.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", CLIENT_NS])
            .arg(self.sipp)
            .arg(self.target.to_string())
            .arg("-sf")
            .arg(&self.scenario)
            .arg("-inf")
            .arg(&csv)
            .args(["-t", self.transport])
            .args(["-i", &CLIENT_ADDR.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args(["-r", &self.rate.to_string()])
            .args(["-l", "200"])
            .arg("-nostdin")
            .args(&self.extra)
            .args(["-timeout", "60", "-timeout_error"])
            .args(["-recv_timeout", "10000"])
            .arg("-trace_stat")
            .arg("-stf")
            .arg(&stat)
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&errors)
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&messages)
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|error| error.to_string())?)
            .stderr(out);
        let command = format!("{cmd:?}");
        let status = cmd
            .status()
            .map_err(|error| format!("cannot run {command}: {error}"))?;
        let counts = read_stats(&stat);
        match counts {
            Ok(counts) if status.success() => Ok(counts),
            Ok(counts) => {
                let events = std::fs::read_to_string(&errors).unwrap_or_default();
                let first: String = events.chars().take(700).collect();
                Err(format!(
                    "SIPp {} exited with {status}: {counts:?}; see {} and {}; its first errors: \
                     {first}",
                    self.name,
                    errors.display(),
                    messages.display()
                ))
            }
            Err(error) => Err(format!(
                "SIPp {} exited with {status} and no statistics ({error}): {command}; see {}",
                self.name,
                screen.display()
            )),
        }
    }
}

/// The final SuccessfulCall(C) and FailedCall(C) of a SIPp statistics file.
pub fn read_stats(path: &Path) -> Result<SippCounts, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty statistics file")?
        .split(';')
        .collect();
    let last: Vec<&str> = lines
        .next_back()
        .ok_or("no statistics row")?
        .split(';')
        .collect();
    let column = |name: &str| -> Result<u64, String> {
        let index = header
            .iter()
            .position(|column| *column == name)
            .ok_or_else(|| format!("no column {name}"))?;
        last.get(index)
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| format!("no value for {name}"))
    };
    Ok(SippCounts {
        successful: column("SuccessfulCall(C)")?,
        failed: column("FailedCall(C)")?,
    })
}

/// A `socat` TCP→TLS bridge in sv-a: TCP on 198.18.1.2:[`BRIDGE_PORT`], TLS to the edge, the
/// edge's certificate verified against `ca`. Killed on drop.
pub struct TlsBridge {
    child: Child,
}

impl TlsBridge {
    pub fn start(socat: &Path, ca: &Path, log: &Path) -> Result<TlsBridge, String> {
        let file =
            std::fs::File::create(log).map_err(|error| format!("{}: {error}", log.display()))?;
        let listen = format!("TCP-LISTEN:{BRIDGE_PORT},bind={CLIENT_ADDR},reuseaddr,fork");
        let connect = format!(
            "OPENSSL:{EDGE_ADDR}:{TLS_PORT},cafile={},verify=1,commonname=edge.lab",
            ca.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", CLIENT_NS])
            .arg(socat)
            .args(["-d", "-d", &listen, &connect])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|error| format!("cannot start socat: {error}"))?;
        let bridge = TlsBridge { child };
        let filter = format!("sport = :{BRIDGE_PORT}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = Command::new("ip")
                .args(["netns", "exec", CLIENT_NS, "ss", "-Hntl", &filter])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            if listed.contains(&format!("{CLIENT_ADDR}:{BRIDGE_PORT}")) {
                return Ok(bridge);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "socat did not listen on {CLIENT_ADDR}:{BRIDGE_PORT}; see {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(CLIENT_ADDR, BRIDGE_PORT)
    }
}

impl Drop for TlsBridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
