//! `sv-ua`: one SIP call over UDP (see `sipveil_loadtest::ua`), and the leak audit of what one
//! side received.
//!
//! ```text
//! sv-ua callee --ip 198.18.2.2 --proxy 198.18.1.1:5060 --aor sip:nick@open.lab --out DIR
//! sv-ua caller --ip 198.18.1.2 --proxy 198.18.1.1:5060 --target sip:nick@open.lab --anonymous --out DIR
//! sv-ua audit --capture DIR/callee-capture.json --identifiers DIR/caller-identity.json --own 198.18.2.2
//! ```
//!
//! Each role prints its report (JSON) on stdout and writes `ROLE.json`, `ROLE-capture.json` (every
//! SIP datagram and the media it received) and `ROLE-identity.json` (its identifiers) into DIR.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use sipveil_b2bua::leak::{FindingKind, Identifier, audit};
use sipveil_loadtest::ua::{
    Capture, Party, UaConfig, UaReport, register_only, run_callee, run_caller,
};

#[derive(Parser)]
#[command(
    name = "sv-ua",
    about = "A small SIP user agent for the demo and the call bench"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// REGISTER AOR, answer one call, RTP both ways until BYE.
    Callee {
        #[command(flatten)]
        common: Common,
        /// Address of record to register (open domain, no digest).
        #[arg(long)]
        aor: String,
        #[arg(long, default_value_t = 300)]
        expires: u32,
    },
    /// Call TARGET through the proxy, RTP both ways for SECONDS, BYE.
    Caller {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        target: String,
        /// From address of record.
        #[arg(long, default_value = "sip:alice@caller.example")]
        from: String,
        /// Ask for privacy (`Privacy: id`).
        #[arg(long)]
        anonymous: bool,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Only REGISTER AOR with IP:SIP_PORT as the contact, then exit (for SIPp's UAS, which
    /// takes the port afterwards).
    Register {
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long, default_value_t = 5080)]
        sip_port: u16,
        #[arg(long)]
        proxy: SocketAddrV4,
        #[arg(long)]
        aor: String,
        #[arg(long, default_value_t = 3600)]
        expires: u32,
    },
    /// Check a capture for another party's identifiers and for foreign private addresses.
    Audit {
        #[arg(long)]
        capture: PathBuf,
        /// The other party's `ROLE-identity.json`.
        #[arg(long)]
        identifiers: PathBuf,
        /// The receiving party's own addresses (not findings when they come back to it).
        #[arg(long)]
        own: Vec<IpAddr>,
    },
}

#[derive(Args)]
struct Common {
    /// This party's address (SIP and RTP).
    #[arg(long)]
    ip: Ipv4Addr,
    #[arg(long, default_value_t = 5070)]
    sip_port: u16,
    #[arg(long, default_value_t = 40000)]
    rtp_port: u16,
    /// Where requests go (the edge).
    #[arg(long)]
    proxy: SocketAddrV4,
    /// Name used in this party's distinctive identifiers (host name, User-Agent, ...).
    #[arg(long)]
    name: Option<String>,
    /// Private address this party announces (ICE host candidate, X- header, Warning).
    #[arg(long, default_value = "192.168.77.10")]
    private_ip: Ipv4Addr,
    /// Longest single wait, seconds (for the INVITE, the ACK, the BYE...).
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Directory for the report, capture and identity files.
    #[arg(long)]
    out: PathBuf,
}

impl Common {
    fn config(&self, role: &str, tag: u32, peer_tag: u32) -> UaConfig {
        let name = self.name.clone().unwrap_or_else(|| role.to_owned());
        UaConfig {
            party: Party::distinctive(&name, self.ip, self.private_ip),
            sip_port: self.sip_port,
            rtp_port: self.rtp_port,
            proxy: self.proxy,
            wait: Duration::from_secs(self.wait),
            tag,
            peer_tag,
        }
    }
}

/// `ROLE-identity.json`.
#[derive(Serialize, Deserialize)]
struct Identity {
    role: String,
    identifiers: Vec<(String, String)>,
}

/// What `audit` prints.
#[derive(Serialize)]
struct AuditReport {
    datagrams: usize,
    identifiers: usize,
    findings: Vec<AuditFinding>,
}

#[derive(Serialize)]
struct AuditFinding {
    datagram: String,
    what: String,
    offset: usize,
    context: String,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sv-ua: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    match Cli::parse().cmd {
        Cmd::Callee {
            common,
            aor,
            expires,
        } => {
            let cfg = common.config("callee", 2, 1);
            let mut ids = cfg.party.identifiers("callee");
            let (report, capture) = run_callee(&cfg, &aor, expires);
            ids.push(("callee Call-ID".into(), report.call_id.clone()));
            finish("callee", &common.out, &report, &capture, ids)
        }
        Cmd::Caller {
            common,
            target,
            from,
            anonymous,
            seconds,
        } => {
            let cfg = common.config("caller", 1, 2);
            let mut ids = cfg.party.identifiers("caller");
            let (report, capture) = run_caller(
                &cfg,
                &target,
                &from,
                anonymous,
                Duration::from_secs(seconds),
            );
            ids.push(("caller Call-ID".into(), report.call_id.clone()));
            if anonymous {
                let aor = from.strip_prefix("sip:").unwrap_or(&from).to_owned();
                ids.push(("caller address of record".into(), aor));
            }
            finish("caller", &common.out, &report, &capture, ids)
        }
        Cmd::Register {
            ip,
            sip_port,
            proxy,
            aor,
            expires,
        } => {
            let cfg = UaConfig {
                party: Party::distinctive("registrant", ip, Ipv4Addr::new(192, 168, 77, 99)),
                sip_port,
                rtp_port: 0,
                proxy,
                wait: Duration::from_secs(10),
                tag: 0,
                peer_tag: 0,
            };
            let took = register_only(&cfg, &aor, expires)?;
            println!(
                "{}",
                serde_json::json!({"registered": aor, "contact": format!("{ip}:{sip_port}"), "ms": took.as_secs_f64() * 1000.0})
            );
            Ok(true)
        }
        Cmd::Audit {
            capture,
            identifiers,
            own,
        } => {
            let capture: Capture = read_json(&capture)?;
            let identity: Identity = read_json(&identifiers)?;
            let ids: Vec<Identifier> = identity
                .identifiers
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(label, value)| Identifier::new(label.as_str(), value.as_bytes()))
                .collect();
            let datagrams = capture.datagrams();
            let mut findings = Vec::new();
            for (name, bytes) in &datagrams {
                for f in audit(bytes, &ids, &own) {
                    let what = match f.kind {
                        FindingKind::Identifier(label) => label,
                        FindingKind::PrivateAddress(ip) => format!("private address {ip}"),
                    };
                    let from = f.offset.saturating_sub(40);
                    let to = (f.offset + 60).min(bytes.len());
                    findings.push(AuditFinding {
                        datagram: name.clone(),
                        what,
                        offset: f.offset,
                        context: String::from_utf8_lossy(bytes.get(from..to).unwrap_or(&[]))
                            .into_owned(),
                    });
                }
            }
            let clean = findings.is_empty() && !datagrams.is_empty();
            let report = AuditReport {
                datagrams: datagrams.len(),
                identifiers: ids.len(),
                findings,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            if datagrams.is_empty() {
                eprintln!("sv-ua audit: the capture is empty (nothing to audit)");
            }
            Ok(clean)
        }
    }
}

fn finish(
    role: &str,
    out: &Path,
    report: &UaReport,
    capture: &Capture,
    identifiers: Vec<(String, String)>,
) -> Result<bool> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: String, json: String| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
    };
    let text = serde_json::to_string_pretty(report)?;
    write(format!("{role}.json"), text.clone())?;
    write(
        format!("{role}-capture.json"),
        serde_json::to_string(capture)?,
    )?;
    let identity = Identity {
        role: role.to_owned(),
        identifiers,
    };
    write(
        format!("{role}-identity.json"),
        serde_json::to_string_pretty(&identity)?,
    )?;
    println!("{text}");
    if let Some(e) = &report.error {
        eprintln!("sv-ua {role}: {e}");
    }
    Ok(report.ok)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
