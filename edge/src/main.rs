//! `sipveil`: the SIP/RTP privacy edge daemon and its tools. See edge/README.md for the contract.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use sipveil_abi::lab::{CeilingFlow, SinkPorts};
use sipveil_edge::config::{Config, valid_instance_name};
use sipveil_edge::control;
use sipveil_edge::dataplane::{self, lab};
use sipveil_edge::{daemon, sys};

/// The daemon's allocator: mimalloc instead of glibc malloc.
///
/// Every REGISTER allocates and frees a few dozen small blocks on the SIP worker and store
/// threads, and each transaction and binding lives for seconds to hours, so the threads' heaps
/// grow all the time under a load of new clients. glibc grows a thread arena one `mprotect` per
/// page and takes its arena lock on every call; mimalloc keeps thread-local free lists and
/// reserves address space in large segments. Measured in BENCHMARKS.md ("regcpu").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process.
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`): every first touch of a 2 MiB
/// region then makes the kernel zero all of it. The daemon's heap grows in small steps (a
/// binding, a transaction), so at 2 000 REGISTER/s that zeroing was ~17 % of the SIP workers'
/// CPU and doubled the checkpoint thread's (BENCHMARKS.md, "regcpu"). The flag applies to the
/// whole address space, present mappings included.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map; no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        eprintln!(
            "sipveil: could not turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[derive(Parser)]
#[command(
    name = "sipveil",
    version,
    about = "SIP/RTP privacy edge: XDP media relay, io_uring daemon",
    after_help = "Examples:
  sipveil check-config /etc/sipveil/sipveil.toml
  sipveil run --config /etc/sipveil/sipveil.toml
  sipveil reload --instance default
  sipveil registrations --aor alice@auth.lab
  echo -n 'secret' | sipveil ha1 --realm auth.lab --md5 alice >> users/auth.lab.users"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (prints one JSON "ready" line on stdout when serving).
    ///
    /// SIGTERM/SIGINT exit cleanly and leave the XDP program attached: media keeps flowing.
    Run {
        /// TOML config file ([dataplane], [media], [control]).
        #[arg(long)]
        config: PathBuf,
        /// Enter /var/run/netns/NS (setns) before anything else.
        #[arg(long)]
        netns: Option<String>,
        /// Do not load XDP: relay all media in userspace (io_uring).
        #[arg(long)]
        no_xdp: bool,
        /// Instance name (pins under /sys/fs/bpf/sipveil/<NAME>/); overrides [dataplane] instance.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Detach the XDP links of an instance and remove its pins.
    Unload {
        #[arg(long, default_value = "default")]
        instance: String,
        /// Namespace of the interfaces (needed with --iface).
        #[arg(long)]
        netns: Option<String>,
        /// Only detach these interfaces (the maps stay).
        #[arg(long = "iface")]
        ifaces: Vec<String>,
    },
    /// Print the XDP counters (pinned map, no daemon needed) and the daemon's userspace counters.
    Stats {
        #[arg(long, default_value = "default")]
        instance: String,
        /// One JSON line instead of a table.
        #[arg(long)]
        json: bool,
        /// Control socket (default /run/sipveil/<instance>.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Talk to a running daemon over its control socket; prints the JSON answer.
    Ctl(CtlArgs),
    /// Validate a config file and print what would run (exit 0), or the error (exit 2).
    ///
    /// Checks everything the daemon checks at start: syntax, unknown keys, values, the users files
    /// of authenticated domains, and that the TLS certificate and key are readable PEM files.
    #[command(after_help = "Examples:\n  sipveil check-config edge/lab.toml\n  \
        sipveil check-config /etc/sipveil/sipveil.toml && systemctl reload sipveil")]
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Make the running daemon re-read its config: domains, users and limits (like SIGHUP).
    ///
    /// Registrations and calls stay. Prints the daemon's JSON answer; exit 1 when it refused
    /// (the answer names the error; the old config stays in force).
    #[command(
        after_help = "Examples:\n  sipveil reload\n  sipveil reload --instance lab\n  \
        sipveil reload --socket /run/sipveil/lab.sock"
    )]
    Reload(SocketArgs),
    /// List the active calls of the privacy B2BUA: id, state, age and relay ports (A side / B
    /// side); no party addresses.
    #[command(after_help = "Examples:\n  sipveil calls --instance lab\n  sipveil calls --json")]
    Calls {
        /// Print the daemon's JSON answer (one line) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// List the registrar's live bindings (optionally of one address of record).
    #[command(after_help = "Examples:\n  sipveil registrations --instance lab\n  \
        sipveil registrations --instance lab --aor alice@auth.lab --json")]
    Registrations {
        /// Only this address of record (user@domain).
        #[arg(long)]
        aor: Option<String>,
        /// Print the daemon's JSON answer (one line) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Probe the bindings of an address of record: OPTIONS down the flow each registered on
    /// (the same UDP source, TCP or TLS connection), with the answer and round trip of each.
    #[command(
        after_help = "Examples:\n  sipveil qualify --instance lab alice@auth.lab\n  \
        sipveil qualify --instance lab --json --wait-ms 2000 nick@open.lab"
    )]
    Qualify {
        /// The address of record (user@domain).
        aor: String,
        /// How long to wait for the answers, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        wait_ms: u64,
        /// Print the daemon's JSON answer (one line) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Start or stop HdrHistogram interval logs of transaction latency.
    #[command(subcommand)]
    Hlog(HlogCmd),
    /// The flood shield: blocked and allowlisted sources, manual blocks, drops by reason.
    #[command(subcommand)]
    Shield(ShieldCmd),
    /// Print the daemon's metrics (Prometheus text format).
    #[command(
        after_help = "Examples:\n  sipveil metrics --instance lab | grep sipveil_registrations"
    )]
    Metrics(SocketArgs),
    /// Print a users-file line: HA1 hashes of NAME in REALM; the password is read from stdin.
    ///
    /// HA1 = SHA-256(NAME ":" REALM ":" PASSWORD) (and MD5 with --md5, for clients without
    /// SHA-256 digest). The first line of stdin is the password (without its line end); on a
    /// terminal it is asked for without echo.
    #[command(after_help = "Examples:\n  \
        echo -n 'alice-secret' | sipveil ha1 --realm auth.lab --md5 alice >> lab/auth.lab.users\n  \
        sipveil ha1 --realm example.net --refuse-anonymous bob")]
    Ha1 {
        /// The digest realm of the domain (its `realm`, default its name).
        #[arg(long)]
        realm: String,
        /// Also write the MD5 HA1 (needed by clients that only do MD5 digest).
        #[arg(long)]
        md5: bool,
        /// Mark the user as refusing anonymous calls (overrides the domain default).
        #[arg(long, conflicts_with = "accept_anonymous")]
        refuse_anonymous: bool,
        /// Mark the user as accepting anonymous calls (overrides the domain default).
        #[arg(long)]
        accept_anonymous: bool,
        /// The user name.
        name: String,
    },
    /// Lab and benchmark XDP helpers (programs of the lab object).
    #[command(subcommand)]
    LabXdp(LabCmd),
}

/// Which daemon to talk to.
#[derive(Args)]
struct SocketArgs {
    /// Instance name: the socket is /run/sipveil/<instance>.sock.
    #[arg(long, default_value = "default")]
    instance: String,
    /// Control socket path (instead of --instance).
    #[arg(long, conflicts_with = "instance")]
    socket: Option<PathBuf>,
}

impl SocketArgs {
    fn path(self) -> anyhow::Result<PathBuf> {
        if self.socket.is_none() {
            check_instance(&self.instance)?;
        }
        Ok(control::socket_path(self.socket, &self.instance))
    }
}

#[derive(Subcommand)]
enum HlogCmd {
    /// Write an HdrHistogram interval log of transaction latency to FILE (overwritten).
    #[command(
        after_help = "Examples:\n  sipveil hlog start /tmp/register.hlog --interval-ms 1000\n  \
        sipveil hlog stop"
    )]
    Start {
        /// The log file (made absolute here: the daemon has its own working directory).
        file: PathBuf,
        /// One histogram per interval of this many milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        interval_ms: u64,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Stop the interval log (flushes and closes the file).
    Stop(SocketArgs),
}

#[derive(Subcommand)]
enum ShieldCmd {
    /// Blocked sources (source, reason, since, until) and allowlisted ones.
    #[command(after_help = "Examples:\n  sipveil shield list --instance lab\n  \
        sipveil shield list --json")]
    List {
        /// Print the daemon's JSON answer (one line) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Block a source (an IPv4 address, or an IPv6 address for its /64).
    #[command(
        after_help = "Examples:\n  sipveil shield block 198.18.0.66 --for 10m\n  \
        sipveil shield block 2001:db8:1:2::1 --for 1d"
    )]
    Block {
        addr: std::net::IpAddr,
        /// How long: seconds, or with a unit s/m/h/d (90s, 10m, 2h, 1d).
        #[arg(long = "for", default_value = "1h", value_parser = parse_duration_secs)]
        duration: u64,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Lift the block of a source.
    #[command(after_help = "Examples:\n  sipveil shield unblock 198.18.0.66")]
    Unblock {
        addr: std::net::IpAddr,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Drops by reason, from XDP (the shield counters) and from the userspace limiter.
    #[command(after_help = "Examples:\n  sipveil shield stats --instance lab")]
    Stats {
        /// Print the daemon's JSON answer (one line) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

/// `90`, `90s`, `10m`, `2h`, `1d` → seconds (at least 1).
fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected seconds or a number with s/m/h/d"))?;
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!(
            "{s:?}: must be between 1 second and {} seconds",
            u64::MAX
        )),
    }
}

/// A shield command: its request, socket, JSON output, table printer.
type ShieldCall = (Value, SocketArgs, bool, Option<fn(&Value)>);

fn print_shield_list(answer: &Value) {
    let empty = Vec::new();
    let blocked = answer["blocked"].as_array().unwrap_or(&empty);
    println!(
        "{:<28} {:<14} {:>10} {:>10}",
        "SOURCE", "REASON", "SINCE", "UNTIL"
    );
    for b in blocked {
        println!(
            "{:<28} {:<14} {:>9}s {:>9}s",
            b["source"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("?"),
            b["since_secs_ago"].as_u64().unwrap_or(0),
            b["until_secs"].as_u64().unwrap_or(0),
        );
    }
    let allowed = answer["allowed"].as_array().unwrap_or(&empty);
    for a in allowed {
        println!(
            "{:<28} {:<14} {:>9}s {:>9}s",
            a["source"].as_str().unwrap_or("?"),
            "allowlisted",
            a["since_secs_ago"].as_u64().unwrap_or(0),
            a["until_secs"].as_u64().unwrap_or(0),
        );
    }
    println!("(since: seconds ago; until: seconds from now)");
}

fn print_shield_stats(answer: &Value) {
    println!(
        "shield {} (enforcement: {}), blocked sources: {}",
        if answer["enabled"].as_bool().unwrap_or(false) {
            "on"
        } else {
            "off"
        },
        answer["enforcement"].as_str().unwrap_or("?"),
        answer["blocked_sources"].as_u64().unwrap_or(0)
    );
    for (title, key) in [("xdp", "xdp"), ("userspace", "userspace_drops")] {
        if let Some(map) = answer[key].as_object() {
            for (k, v) in map {
                println!("{title:<10} {k:<32} {}", v.as_u64().unwrap_or(0));
            }
        }
    }
}

#[derive(Args)]
struct CtlArgs {
    /// Control socket path (default /run/sipveil/<instance>.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[arg(long, default_value = "default", global = true)]
    instance: String,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Open relays between A and B; prints the edge addresses per relay.
    RelayOpen {
        #[arg(long)]
        a_peer: SocketAddr,
        #[arg(long)]
        b_peer: SocketAddr,
        /// Learn each peer's source from its first packet.
        #[arg(long)]
        latch: bool,
        /// Drop packets from other sources than the announced peer.
        #[arg(long)]
        strict: bool,
        /// RTP and RTCP on one port.
        #[arg(long)]
        rtcp_mux: bool,
        /// Open N relays; relay i uses peer ports +2i.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Close a relay (by id = its A-side edge address) or all.
    RelayClose {
        #[arg(long, required_unless_present = "all")]
        id: Option<SocketAddr>,
        #[arg(long)]
        all: bool,
    },
    /// List relays with their counters.
    RelayList,
    /// XDP and userspace counters.
    Stats,
    /// Send a raw JSON request.
    Raw { json: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum LabProgram {
    #[value(name = "sv_pass")]
    Pass,
    #[value(name = "sv_sink")]
    Sink,
    #[value(name = "sv_ceiling")]
    Ceiling,
    #[value(name = "sv_gen")]
    Gen,
}

impl LabProgram {
    fn name(self) -> &'static str {
        match self {
            LabProgram::Pass => "sv_pass",
            LabProgram::Sink => "sv_sink",
            LabProgram::Ceiling => "sv_ceiling",
            LabProgram::Gen => "sv_gen",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LabMode {
    Driver,
    Generic,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Attach a lab program; link and maps are pinned in --pin DIR.
    Attach {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum)]
        program: LabProgram,
        /// Pin directory (default /sys/fs/bpf/sipveil-lab/<NS>-<IF>).
        #[arg(long)]
        pin: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "driver")]
        mode: LabMode,
        /// NAME=TYPE:VALUE with TYPE ip|port|mac|ifindex|u8|u16|u32|u64 (repeatable).
        #[arg(long = "global")]
        globals: Vec<String>,
        /// sv_sink: UDP destination ports to count and drop, MIN-MAX.
        #[arg(long, value_parser = parse_range)]
        sink_ports: Option<(u16, u16)>,
        /// sv_ceiling: the flow it forwards, packets to IP:PORT.
        #[arg(long = "match")]
        match_dst: Option<std::net::SocketAddrV4>,
        /// sv_ceiling: rewritten source IP:PORT.
        #[arg(long)]
        new_src: Option<std::net::SocketAddrV4>,
        /// sv_ceiling: rewritten destination IP:PORT.
        #[arg(long)]
        new_dst: Option<std::net::SocketAddrV4>,
        /// sv_ceiling: source MAC of the rewritten frame.
        #[arg(long, value_parser = parse_mac)]
        src_mac: Option<[u8; 6]>,
        /// sv_ceiling: destination MAC of the rewritten frame.
        #[arg(long, value_parser = parse_mac)]
        dst_mac: Option<[u8; 6]>,
        /// sv_ceiling: egress interface (XDP_REDIRECT via SVL_TX); omitted = XDP_TX.
        #[arg(long)]
        egress: Option<String>,
        /// sv_ceiling: TTL of the rewritten packet.
        #[arg(long, default_value_t = 64)]
        ttl: u8,
        /// sv_gen: stamp the frame count into the RTP sequence number (GEN_F_RTP_SEQ).
        #[arg(long)]
        rtp_seq: bool,
        /// sv_gen: rotate the IPv4 source address through COUNT addresses from BASE upwards
        /// (GEN_F_SRC_ROTATE), BASE/COUNT, e.g. 198.19.0.1/4096.
        #[arg(long, value_parser = parse_gen_sources)]
        rotate_sources: Option<(std::net::Ipv4Addr, u32)>,
    },
    /// Detach the program pinned in --pin DIR and remove DIR.
    Detach {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        pin: Option<PathBuf>,
    },
    /// Print the u64 arrays pinned in --pin DIR (summed over CPUs) as JSON.
    ReadSink {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        pin: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// The error chain, without the repetitions of errors whose message already contains their
/// source's.
fn report(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if parts.last().is_some_and(|prev| prev.contains(&msg)) {
            continue;
        }
        parts.push(msg);
    }
    parts.join(": ")
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected MIN-MAX")?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{e}"))?;
    if a > b {
        return Err("MIN must not exceed MAX".to_owned());
    }
    Ok((a, b))
}

/// `BASE/COUNT` of `--rotate-sources`: COUNT (1..) addresses from BASE, not past 255.255.255.255.
fn parse_gen_sources(s: &str) -> Result<(std::net::Ipv4Addr, u32), String> {
    let (base, count) = s.split_once('/').ok_or("expected BASE/COUNT")?;
    let base: std::net::Ipv4Addr = base.trim().parse().map_err(|e| format!("{e}"))?;
    let count: u32 = count.trim().parse().map_err(|e| format!("{e}"))?;
    if count == 0 {
        return Err("COUNT must be at least 1".to_owned());
    }
    if u32::from(base).checked_add(count - 1).is_none() {
        return Err("BASE + COUNT runs past 255.255.255.255".to_owned());
    }
    Ok((base, count))
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err("expected a MAC like 02:00:00:00:00:01".to_owned());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|e| format!("{e}"))?;
    }
    Ok(mac)
}

fn enter(netns: Option<&str>) -> anyhow::Result<()> {
    if let Some(ns) = netns {
        sys::enter_netns(ns)?;
    }
    Ok(())
}

fn need_root() -> anyhow::Result<()> {
    if !sys::is_root() {
        anyhow::bail!("this command needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)");
    }
    Ok(())
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    // Enter the namespace first thing, before the tracing subscriber or anything else could start
    // a thread: setns only moves the calling thread.
    let netns = match &cli.cmd {
        Cmd::Run { netns, .. } | Cmd::Unload { netns, .. } => netns.clone(),
        Cmd::LabXdp(
            LabCmd::Attach { netns, .. }
            | LabCmd::Detach { netns, .. }
            | LabCmd::ReadSink { netns, .. },
        ) => netns.clone(),
        Cmd::Stats { .. }
        | Cmd::Ctl(_)
        | Cmd::CheckConfig { .. }
        | Cmd::Reload(_)
        | Cmd::Registrations { .. }
        | Cmd::Calls { .. }
        | Cmd::Qualify { .. }
        | Cmd::Hlog(_)
        | Cmd::Metrics(_)
        | Cmd::Shield(_)
        | Cmd::Ha1 { .. } => None,
    };
    if let Err(e) = enter(netns.as_deref()) {
        eprintln!("sipveil: {}", report(&e));
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        // Printing commands end quietly when their reader goes away (`sipveil registrations |
        // head`) instead of panicking on EPIPE; the daemon keeps SIGPIPE ignored.
        // SAFETY: setting a signal disposition to its default has no memory-safety preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match dispatch(cli.cmd, netns) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sipveil: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd, netns: Option<String>) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Run {
            config,
            no_xdp,
            instance,
            ..
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(i) = instance {
                if !valid_instance_name(&i) {
                    anyhow::bail!("bad instance name {i:?} (1-64 of [A-Za-z0-9_-])");
                }
                if cfg.control_socket == sipveil_edge::config::default_control_socket(&cfg.instance)
                {
                    cfg.control_socket = sipveil_edge::config::default_control_socket(&i);
                }
                cfg.instance = i;
            }
            if !no_xdp && cfg.xdp != sipveil_edge::config::XdpSetting::Off {
                need_root()?;
            }
            daemon::run(&cfg, &config, no_xdp)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unload {
            instance, ifaces, ..
        } => {
            need_root()?;
            check_instance(&instance)?;
            let report = dataplane::unload(&instance, &ifaces)?;
            if report.detached.is_empty() && !report.removed_pins {
                eprintln!("sipveil: nothing pinned for instance {instance}");
            }
            println!(
                "{}",
                json!({"ok": true, "instance": instance, "detached": report.detached,
                       "removed_pins": report.removed_pins})
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats {
            instance,
            json: as_json,
            socket,
        } => {
            check_instance(&instance)?;
            stats(&instance, as_json, socket)
        }
        Cmd::Ctl(args) => ctl(args),
        Cmd::CheckConfig { file } => Ok(check_config(&file)),
        Cmd::Reload(socket) => {
            let answer = daemon_request(socket, &json!({"cmd": "reload"}))?;
            println!("{answer}");
            Ok(answer_code(&answer))
        }
        Cmd::Calls {
            json: as_json,
            socket,
        } => {
            let answer = daemon_request(socket, &json!({"cmd": "calls"}))?;
            if as_json || !is_ok(&answer) {
                println!("{answer}");
            } else {
                print_calls(&answer);
            }
            Ok(answer_code(&answer))
        }
        Cmd::Registrations {
            aor,
            json: as_json,
            socket,
        } => {
            let request = match &aor {
                Some(aor) => json!({"cmd": "registrations", "aor": aor}),
                None => json!({"cmd": "registrations"}),
            };
            let answer = daemon_request(socket, &request)?;
            if as_json || !is_ok(&answer) {
                println!("{answer}");
            } else {
                print_registrations(&answer);
            }
            Ok(answer_code(&answer))
        }
        Cmd::Hlog(HlogCmd::Start {
            file,
            interval_ms,
            socket,
        }) => {
            let file = std::path::absolute(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let request = json!({"cmd": "hlog-start", "path": file, "interval_ms": interval_ms});
            let answer = daemon_request(socket, &request)?;
            println!("{answer}");
            Ok(answer_code(&answer))
        }
        Cmd::Shield(cmd) => {
            let (request, socket, as_json, table): ShieldCall = match cmd {
                ShieldCmd::List { json: j, socket } => (
                    json!({"cmd": "shield-list"}),
                    socket,
                    j,
                    Some(print_shield_list),
                ),
                ShieldCmd::Block {
                    addr,
                    duration,
                    socket,
                } => (
                    json!({"cmd": "shield-block", "addr": addr, "for_secs": duration}),
                    socket,
                    true,
                    None,
                ),
                ShieldCmd::Unblock { addr, socket } => (
                    json!({"cmd": "shield-unblock", "addr": addr}),
                    socket,
                    true,
                    None,
                ),
                ShieldCmd::Stats { json: j, socket } => (
                    json!({"cmd": "shield-stats"}),
                    socket,
                    j,
                    Some(print_shield_stats),
                ),
            };
            let answer = daemon_request(socket, &request)?;
            match table {
                Some(print) if !as_json && is_ok(&answer) => print(&answer),
                _ => println!("{answer}"),
            }
            Ok(answer_code(&answer))
        }
        Cmd::Hlog(HlogCmd::Stop(socket)) => {
            let answer = daemon_request(socket, &json!({"cmd": "hlog-stop"}))?;
            println!("{answer}");
            Ok(answer_code(&answer))
        }
        Cmd::Qualify {
            aor,
            wait_ms,
            json: as_json,
            socket,
        } => {
            let request = json!({"cmd": "qualify", "aor": aor, "wait_ms": wait_ms});
            let answer = daemon_request(socket, &request)?;
            let probes = answer.get("probes").and_then(Value::as_array);
            match probes {
                Some(list) if !as_json && is_ok(&answer) => {
                    for p in list {
                        let status = p["status"]
                            .as_u64()
                            .map_or_else(|| "-".to_owned(), |s| s.to_string());
                        let rtt = p["rtt_us"]
                            .as_u64()
                            .map_or_else(|| "-".to_owned(), |us| format!("{us} us"));
                        let error = p["error"].as_str().unwrap_or("");
                        println!(
                            "{} {} via {} {}: {status} {rtt} {error}",
                            p["aor"].as_str().unwrap_or("?"),
                            p["contact"].as_str().unwrap_or("?"),
                            p["proto"].as_str().unwrap_or("?"),
                            p["peer"].as_str().unwrap_or("?"),
                        );
                    }
                    println!("{} probe(s)", list.len());
                }
                _ => println!("{answer}"),
            }
            Ok(answer_code(&answer))
        }
        Cmd::Metrics(socket) => {
            let answer = daemon_request(socket, &json!({"cmd": "metrics"}))?;
            match answer.get("text").and_then(Value::as_str) {
                Some(text) if is_ok(&answer) => print!("{text}"),
                _ => println!("{answer}"),
            }
            Ok(answer_code(&answer))
        }
        Cmd::Ha1 {
            realm,
            md5,
            refuse_anonymous,
            accept_anonymous,
            name,
        } => {
            let password = read_password(&name, &realm)?;
            let line = ha1_line(
                &name,
                &realm,
                &password,
                md5,
                refuse_anonymous,
                accept_anonymous,
            )?;
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LabXdp(cmd) => {
            need_root()?;
            lab_xdp(cmd, netns)
        }
    }
}

fn check_instance(instance: &str) -> anyhow::Result<()> {
    if !valid_instance_name(instance) {
        anyhow::bail!("bad instance name {instance:?} (1-64 of [A-Za-z0-9_-])");
    }
    Ok(())
}

fn stats(instance: &str, as_json: bool, socket: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let xdp = dataplane::read_pinned_counters(instance)?;
    let flows = dataplane::read_pinned_flow_count(instance)?;
    let path = control::socket_path(socket, instance);
    let daemon = control::request(&path, &json!({"cmd": "stats"}), Duration::from_secs(2)).ok();
    let userspace = daemon.as_ref().and_then(|d| d.get("userspace").cloned());
    let xdp_json = xdp.as_ref().map(|list| {
        Value::Object(
            list.iter()
                .map(|(c, v)| (c.name().to_owned(), json!(v)))
                .collect(),
        )
    });
    if as_json {
        println!(
            "{}",
            json!({"instance": instance, "xdp": xdp_json, "userspace": userspace,
                   "flows": flows, "mode": daemon.as_ref().and_then(|d| d.get("mode").cloned())})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("instance {instance}");
    match &xdp {
        Some(list) => {
            println!("xdp counters (pinned, summed over CPUs):");
            for (c, v) in list {
                println!("  {:<22} {v}", c.name());
            }
            println!("  {:<22} {}", "flows", flows.unwrap_or(0));
        }
        None => println!(
            "xdp: nothing pinned under {}",
            dataplane::pin_dir(instance).display()
        ),
    }
    match userspace.as_ref().and_then(Value::as_object) {
        Some(obj) => {
            println!("userspace relay counters (daemon at {}):", path.display());
            for (k, v) in obj {
                println!("  {k:<22} {v}");
            }
        }
        None => println!("userspace: no daemon answering at {}", path.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `check-config`: 0 and a summary, or 2 and the error.
fn check_config(file: &std::path::Path) -> ExitCode {
    let checked = Config::load(file).and_then(|cfg| cfg.check_files().map(|n| (cfg, n)));
    match checked {
        Ok((cfg, certs)) => {
            println!("{}: OK", file.display());
            print!("{}", cfg.summary());
            if certs > 0 {
                println!("tls files     readable PEM, {certs} certificate(s) in the chain");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sipveil: {e}");
            ExitCode::from(2)
        }
    }
}

fn daemon_request(socket: SocketArgs, request: &Value) -> anyhow::Result<Value> {
    let path = socket.path()?;
    control::request(&path, request, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))
}

fn is_ok(answer: &Value) -> bool {
    answer.get("ok").and_then(Value::as_bool).unwrap_or(false)
}

fn answer_code(answer: &Value) -> ExitCode {
    if is_ok(answer) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One line per binding: its fields as `key=value` (the daemon decides which fields exist).
fn print_calls(answer: &Value) {
    let calls = answer["calls"].as_array().cloned().unwrap_or_default();
    println!(
        "{:>6}  {:<9} {:>8}  relay ports (A/B)",
        "id", "state", "age_s"
    );
    for c in &calls {
        let ports: Vec<String> = c["relay_ports"]
            .as_array()
            .map(|l| l.iter().map(|p| format!("{}/{}", p[0], p[1])).collect())
            .unwrap_or_default();
        println!(
            "{:>6}  {:<9} {:>8}  {}",
            c["id"],
            c["state"].as_str().unwrap_or("?"),
            c["age_secs"],
            ports.join(" ")
        );
    }
    println!("{} call(s)", calls.len());
}

fn print_registrations(answer: &Value) {
    let list = answer
        .get("registrations")
        .or_else(|| answer.get("bindings"))
        .and_then(Value::as_array);
    let Some(list) = list else {
        println!("{answer}");
        return;
    };
    for entry in list {
        match entry.as_object() {
            Some(obj) => {
                let fields: Vec<String> = obj
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s}"),
                        other => format!("{k}={other}"),
                    })
                    .collect();
                println!("{}", fields.join(" "));
            }
            None => println!("{entry}"),
        }
    }
    println!("{} binding(s)", list.len());
}

/// Turns terminal echo off while it lives (restores the old settings on drop).
struct NoEcho(Option<libc::termios>);

impl NoEcho {
    fn new() -> NoEcho {
        // SAFETY: termios is plain old data; tcgetattr fills it or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return NoEcho(None);
        }
        let old = t;
        t.c_lflag &= !libc::ECHO;
        // SAFETY: fd 0 and a valid termios copied from tcgetattr.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
            return NoEcho(None);
        }
        NoEcho(Some(old))
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the settings tcgetattr returned for fd 0.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, old) };
        }
    }
}

/// The first line of stdin, without its line end; asked for without echo on a terminal.
fn read_password(name: &str, realm: &str) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("password for {name} in realm {realm}: ");
        let _echo = NoEcho::new();
        stdin.lock().read_line(&mut line)?;
        eprintln!();
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        anyhow::bail!("empty password (give it on stdin, e.g. `echo -n SECRET | sipveil ha1 ...`)");
    }
    Ok(password.to_owned())
}

/// A users-file line, checked by parsing it back as the daemon will.
fn ha1_line(
    name: &str,
    realm: &str,
    password: &str,
    md5: bool,
    refuse_anonymous: bool,
    accept_anonymous: bool,
) -> anyhow::Result<String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("bad user name {name:?}: no spaces or control characters");
    }
    if realm.is_empty()
        || realm
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        anyhow::bail!("bad realm {realm:?}: no quotes, backslashes or control characters");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        eprintln!(
            "sipveil: note: user names are case-folded; the line is for {:?} (lower case)",
            name.to_ascii_lowercase()
        );
    }
    let mut line = sipveil_registrar::format_user_line(name, realm, password, md5);
    if refuse_anonymous {
        line.push_str(" refuse-anonymous");
    } else if accept_anonymous {
        line.push_str(" accept-anonymous");
    }
    match sipveil_registrar::parse_users(&line) {
        Ok(users) if users.len() == 1 => Ok(line),
        Ok(users) => anyhow::bail!("internal: the line parses as {} users: {line}", users.len()),
        Err(e) => anyhow::bail!("{name:?} cannot be a user in a users file: {}", e.message),
    }
}

fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let path = control::socket_path(args.socket, &args.instance);
    let request = match args.cmd {
        CtlCmd::RelayOpen {
            a_peer,
            b_peer,
            latch,
            strict,
            rtcp_mux,
            count,
        } => json!({"cmd": "relay-open", "a_peer": a_peer, "b_peer": b_peer, "latch": latch,
                    "strict": strict, "rtcp_mux": rtcp_mux, "count": count}),
        CtlCmd::RelayClose { id, all } => json!({"cmd": "relay-close", "id": id, "all": all}),
        CtlCmd::RelayList => json!({"cmd": "relay-list"}),
        CtlCmd::Stats => json!({"cmd": "stats"}),
        CtlCmd::Raw { json } => serde_json::from_str(&json)
            .map_err(|e| anyhow::anyhow!("the raw request is not JSON: {e}"))?,
    };
    let answer = control::request(&path, &request, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    println!("{answer}");
    let ok = answer.get("ok").and_then(Value::as_bool).unwrap_or(false);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn lab_xdp(cmd: LabCmd, netns: Option<String>) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCmd::Attach {
            iface,
            program,
            pin,
            mode,
            globals,
            sink_ports,
            match_dst,
            new_src,
            new_dst,
            src_mac,
            dst_mac,
            egress,
            ttl,
            rtp_seq,
            rotate_sources,
            ..
        } => {
            let dir = pin.unwrap_or_else(|| lab::default_lab_pin(netns.as_deref(), &iface));
            let globals = globals
                .iter()
                .map(|g| lab::parse_global(g))
                .collect::<Result<Vec<_>, _>>()?;
            let mut settings = lab::LabSettings {
                sink_ports: sink_ports.map(|(min, max)| SinkPorts { min, max }),
                gen_flags: (rtp_seq || rotate_sources.is_some()).then(|| {
                    let mut f = 0;
                    if rtp_seq {
                        f |= sipveil_abi::lab::GEN_F_RTP_SEQ;
                    }
                    if rotate_sources.is_some() {
                        f |= sipveil_abi::lab::GEN_F_SRC_ROTATE;
                    }
                    f
                }),
                gen_sources: rotate_sources.map(|(base, count)| sipveil_abi::lab::GenSources {
                    base: u32::from(base),
                    count,
                }),
                ..Default::default()
            };
            if matches!(program, LabProgram::Ceiling) {
                let (Some(m), Some(s), Some(d)) = (match_dst, new_src, new_dst) else {
                    anyhow::bail!("sv_ceiling needs --match, --new-src and --new-dst");
                };
                let egress_ifindex = match &egress {
                    Some(name) => sys::ifindex(name)?,
                    None => 0,
                };
                if egress_ifindex != 0 {
                    settings.tx_ifindexes.push(egress_ifindex);
                }
                settings.ceiling = Some(CeilingFlow {
                    match_addr: sipveil_abi::ip4(m.ip().octets()),
                    src_addr: sipveil_abi::ip4(s.ip().octets()),
                    dst_addr: sipveil_abi::ip4(d.ip().octets()),
                    egress_ifindex,
                    match_port: sipveil_abi::port(m.port()),
                    src_port: sipveil_abi::port(s.port()),
                    dst_port: sipveil_abi::port(d.port()),
                    src_mac: src_mac.unwrap_or_default(),
                    dst_mac: dst_mac.unwrap_or_default(),
                    ttl,
                    _pad0: 0,
                });
            }
            lab::attach(
                program.name(),
                &iface,
                &dir,
                matches!(mode, LabMode::Generic),
                &globals,
                &settings,
            )?;
            println!(
                "{}",
                json!({"ok": true, "program": program.name(), "iface": iface, "pin": dir})
            );
        }
        LabCmd::Detach { iface, pin, .. } => {
            let dir = pin.unwrap_or_else(|| lab::default_lab_pin(netns.as_deref(), &iface));
            lab::detach(&dir)?;
            println!("{}", json!({"ok": true, "iface": iface, "pin": dir}));
        }
        LabCmd::ReadSink {
            iface,
            pin,
            json: as_json,
            ..
        } => {
            let dir = pin.unwrap_or_else(|| lab::default_lab_pin(netns.as_deref(), &iface));
            let maps = lab::read_sink(&dir)?;
            if as_json {
                let obj: serde_json::Map<String, Value> =
                    maps.into_iter().map(|(k, v)| (k, json!(v))).collect();
                println!("{}", json!({"maps": obj}));
            } else {
                for (name, values) in maps {
                    println!("{name}: {values:?}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_gen_sources;
    use std::net::Ipv4Addr;

    #[test]
    fn gen_sources_parse_and_refuse_empty_or_overflowing_ranges() {
        assert_eq!(
            parse_gen_sources("198.19.0.1/4096"),
            Ok((Ipv4Addr::new(198, 19, 0, 1), 4096))
        );
        assert!(parse_gen_sources("198.19.0.1/0").is_err());
        assert!(parse_gen_sources("198.19.0.1").is_err());
        assert!(parse_gen_sources("255.255.255.0/257").is_err());
        assert!(parse_gen_sources("255.255.255.0/256").is_ok());
    }
}
