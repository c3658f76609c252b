//! `cargo xtask demo`: a private call through the appliance in the two-arm lab, end to end.
//!
//! lab up (two-arm) → release build → `sipveil run --config edge/lab.toml --netns sv-edge` (XDP)
//! → `sv-ua callee` in sv-b registers a nickname in the open domain → `sv-ua caller` in sv-a calls
//! it anonymously through the edge (`Privacy: id`) → RTP both ways for ~10 s → the caller hangs up
//! → summary: call setup time, media relayed in XDP and in userspace (`sipveil stats`), loss and
//! one-way latency per direction, and the leak audit: everything each side received (SIP and
//! media) is checked with `sipveil_b2bua::leak::audit` (`sv-ua audit`) for the other side's
//! identifiers (addresses, host name, User-Agent, display name, contact user, SDP origin and
//! session name, Call-ID, a private ICE candidate address) and for foreign private addresses.
//!
//! Exits non-zero when the call fails, either direction loses more than [`MAX_LOSS`] of its
//! packets, or the audit finds anything.

use crate::cmd::{output, run, show};
use crate::lab::{A_ADDR, B_ADDR, Daemon, LAB_INSTANCE, Lab, NS_A, NS_B, NS_EDGE, Shape};
use crate::workspace::{release_binaries, root, target_dir};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Largest share of a direction's RTP packets that may be lost for the demo to pass.
pub const MAX_LOSS: f64 = 0.01;
/// The edge's SIP address toward A (edge/lab.toml); B uses the one toward B when the config
/// listens there, else this one (routed through the edge's namespace).
const EDGE_SIP_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5060);
const EDGE_SIP_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 1), 5060);
/// Private addresses the two parties announce (ICE host candidates, an `X-` header): the audit
/// checks none of them crosses.
const CALLER_PRIVATE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 10);
const CALLEE_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);

/// Options of `cargo xtask demo`.
#[derive(Clone, Debug)]
pub struct Options {
    /// The nickname the callee registers in `open.lab`.
    pub nickname: String,
    /// Seconds of RTP.
    pub seconds: u32,
    /// Leave the lab up at the end.
    pub keep_lab: bool,
}

/// A child process with a bounded wait; killed when dropped.
struct Bounded {
    name: &'static str,
    child: Child,
}

impl Bounded {
    fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self> {
        println!("+ {}", show(cmd));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", show(cmd)))?;
        Ok(Bounded { name, child })
    }

    /// Waits up to `limit`; true when it exited successfully.
    fn wait(&mut self, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                println!(
                    "demo: {} did not finish within {limit:?}: killed",
                    self.name
                );
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the demo found.
struct Verdict {
    call_ok: bool,
    loss_ok: bool,
    audit_ok: bool,
}

pub fn run_demo(options: Options) -> Result<()> {
    let binaries = release_binaries()?;
    let sv_ua = binaries.sv_rtp.with_file_name("sv-ua");
    if !sv_ua.exists() {
        bail!("{} was not built", sv_ua.display());
    }
    let work = target_dir()?.join("demo");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    for stale in ["caller", "callee"] {
        for suffix in [".json", "-capture.json", "-identity.json"] {
            let _ = std::fs::remove_file(work.join(format!("{stale}{suffix}")));
        }
    }
    let config = lab_config(&work)?;
    let config_text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let callee_proxy = if config_text.contains(&format!("\"{EDGE_SIP_B}\"")) {
        EDGE_SIP_B
    } else {
        EDGE_SIP_A
    };

    // A fresh registrar for every run: a nickname claimed by the previous run's callee stays
    // its owner's until the binding expires (the open domain's ownership rule), so a second demo
    // within the expiry would be refused 403 Nickname In Use.
    if let Some(db) = configured_database(&config, &config_text) {
        for path in crate::lab::remove_registrar_files(&db)? {
            println!("demo: removed the previous run's {}", path.display());
        }
    }

    println!("demo: bringing up the two-arm lab");
    let session = Lab::session(Shape::TwoArm, &binaries.sipveil)?;
    print!("{}", Lab::status()?);

    let log = work.join("sipveil.log");
    println!(
        "demo: starting sipveil in {NS_EDGE} ({}), log {}",
        config.display(),
        log.display()
    );
    let daemon = Daemon::start(
        &binaries.sipveil,
        &config,
        &[],
        Duration::from_secs(30),
        Some(&log),
    )?;
    println!("demo: daemon ready: {}", daemon.ready);

    let aor = format!("sip:{}@open.lab", options.nickname);
    let wait = (u64::from(options.seconds) + 30).to_string();
    let common = |cmd: &mut Command,
                  ns: &str,
                  ip: Ipv4Addr,
                  proxy: SocketAddrV4,
                  name: &str,
                  private: Ipv4Addr| {
        cmd.args(["netns", "exec", ns])
            .arg(&sv_ua)
            .args(["--ip", &ip.to_string(), "--proxy", &proxy.to_string()])
            .args(["--name", name, "--private-ip", &private.to_string()])
            .args(["--wait", &wait])
            .arg("--out")
            .arg(&work)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
    };
    let mut callee_cmd = Command::new("ip");
    common(
        &mut callee_cmd,
        NS_B,
        B_ADDR,
        callee_proxy,
        "bob",
        CALLEE_PRIVATE,
    );
    // clap wants the subcommand first: rebuild with it in place.
    let mut callee_cmd = insert_subcommand(&callee_cmd, "callee", &["--aor", &aor]);
    println!("demo: the callee in {NS_B} registers {aor} and waits for a call");
    let mut callee = Bounded::spawn("the callee", &mut callee_cmd)?;
    let registered = wait_for_line(&mut callee, "registered", Duration::from_secs(15))?;

    let mut verdict = Verdict {
        call_ok: false,
        loss_ok: false,
        audit_ok: false,
    };
    if registered {
        let mut caller_cmd = Command::new("ip");
        common(
            &mut caller_cmd,
            NS_A,
            A_ADDR,
            EDGE_SIP_A,
            "alice",
            CALLER_PRIVATE,
        );
        let seconds = options.seconds.to_string();
        let mut caller_cmd = insert_subcommand(
            &caller_cmd,
            "caller",
            &["--target", &aor, "--anonymous", "--seconds", &seconds],
        );
        caller_cmd.stderr(Stdio::inherit());
        println!("demo: an anonymous caller in {NS_A} calls {aor} through the edge");
        let mut caller = Bounded::spawn("the caller", &mut caller_cmd)?;
        let limit = Duration::from_secs(u64::from(options.seconds) + 60);
        let caller_ok = caller.wait(limit)?;
        // A caller that failed leaves the callee waiting for an INVITE or a BYE: do not wait
        // long for it then.
        let callee_limit = Duration::from_secs(if caller_ok { 30 } else { 3 });
        let callee_ok = callee.wait(callee_limit)?;
        verdict.call_ok = caller_ok && callee_ok;
    } else {
        println!("demo: the callee did not register (see its output above)");
    }

    let stats = output(Command::new(&binaries.sipveil).args([
        "stats",
        "--instance",
        LAB_INSTANCE,
        "--json",
    ]))
    .ok()
    .and_then(|text| serde_json::from_str::<Value>(text.trim()).ok())
    .unwrap_or(Value::Null);

    let stopped = daemon.terminate(Duration::from_secs(10));
    run(Command::new(&binaries.sipveil).args([
        "unload",
        "--instance",
        LAB_INSTANCE,
        "--netns",
        NS_EDGE,
    ]))?;

    println!("\n=== demo summary: an anonymous call to {aor} through sipveil");
    let caller = read_json(&work.join("caller.json")).unwrap_or(Value::Null);
    let callee_report = read_json(&work.join("callee.json")).unwrap_or(Value::Null);
    for (who, report) in [("caller", &caller), ("callee", &callee_report)] {
        if let Some(error) = report["error"].as_str() {
            println!("{who}: FAILED: {error}");
        }
    }
    match caller["setup_ms"].as_f64() {
        Some(ms) => println!(
            "call setup (INVITE sent -> 200 OK received, caller side): {ms:.1} ms; the callee registered in {:.1} ms",
            callee_report["register_ms"].as_f64().unwrap_or(f64::NAN)
        ),
        None => println!("call setup: the call was not answered"),
    }
    println!(
        "media addresses each side was given: caller -> {}, callee -> {} (the edge's relay ports)",
        caller["remote_media"].as_str().unwrap_or("-"),
        callee_report["remote_media"].as_str().unwrap_or("-"),
    );
    let counter = |side: &str, name: &str| stats[side][name].as_u64().unwrap_or(0);
    println!(
        "relayed in XDP:       {} packets ({} XDP_REDIRECT, {} XDP_TX), {} seen by the program",
        counter("xdp", "relayed_redirect") + counter("xdp", "relayed_tx"),
        counter("xdp", "relayed_redirect"),
        counter("xdp", "relayed_tx"),
        counter("xdp", "rx"),
    );
    println!(
        "relayed in userspace: {} packets (passed up by XDP: {} without neighbour/route)",
        counter("userspace", "relayed"),
        counter("xdp", "fib_fail_pass"),
    );
    let a_to_b = print_direction("A -> B", &caller, &callee_report);
    let b_to_a = print_direction("B -> A", &callee_report, &caller);
    verdict.loss_ok = verdict.call_ok && a_to_b && b_to_a;

    println!("leak audit (each side's received SIP and media vs the other side's identifiers):");
    let mut audits_clean = verdict.call_ok;
    for (receiver, other, own) in [("callee", "caller", B_ADDR), ("caller", "callee", A_ADDR)] {
        let capture = work.join(format!("{receiver}-capture.json"));
        let identity = work.join(format!("{other}-identity.json"));
        if !capture.exists() || !identity.exists() {
            println!("  {receiver}: not audited (no capture)");
            audits_clean = false;
            continue;
        }
        let out = Command::new(&sv_ua)
            .arg("audit")
            .arg("--capture")
            .arg(&capture)
            .arg("--identifiers")
            .arg(&identity)
            .args(["--own", &own.to_string()])
            .output()
            .context("running sv-ua audit")?;
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let findings = report["findings"].as_array().cloned().unwrap_or_default();
        println!(
            "  what the {receiver} received: {} datagrams checked for {} identifiers of the {other}: {}",
            report["datagrams"].as_u64().unwrap_or(0),
            report["identifiers"].as_u64().unwrap_or(0),
            if out.status.success() {
                "clean".to_owned()
            } else {
                format!("{} FINDING(S)", findings.len())
            }
        );
        for finding in findings.iter().take(10) {
            println!(
                "    {} in {} at {}: {:?}",
                finding["what"].as_str().unwrap_or("?"),
                finding["datagram"].as_str().unwrap_or("?"),
                finding["offset"],
                finding["context"].as_str().unwrap_or(""),
            );
        }
        audits_clean &= out.status.success();
    }
    verdict.audit_ok = audits_clean;
    println!("daemon stopped cleanly: {stopped}");
    println!(
        "reports: {}/{{caller,callee}}.json, captures {{caller,callee}}-capture.json, daemon log sipveil.log",
        work.display()
    );

    if options.keep_lab {
        std::mem::forget(session);
        println!("demo: the lab is left up (`cargo xtask lab down` removes it)");
    } else {
        drop(session);
        println!("demo: the lab is down again");
    }
    let mut failures = Vec::new();
    if !verdict.call_ok {
        failures.push("the call failed");
    }
    if verdict.call_ok && !verdict.loss_ok {
        failures.push("media was lost beyond 1 %");
    }
    if !verdict.audit_ok {
        failures.push("the leak audit did not pass");
    }
    if !failures.is_empty() {
        bail!("demo: {}", failures.join("; "));
    }
    println!("demo: PASS: private call completed, media within the loss bound, audit clean");
    Ok(())
}

/// `ip netns exec NS sv-ua SUBCOMMAND ARGS... COMMON...` from a command built with the common
/// arguments only.
fn insert_subcommand(cmd: &Command, sub: &str, extra: &[&str]) -> Command {
    let args: Vec<_> = cmd.get_args().map(|a| a.to_os_string()).collect();
    // args: netns exec NS SV_UA common...
    let mut out = Command::new(cmd.get_program());
    let split = 4.min(args.len());
    out.args(&args[..split])
        .arg(sub)
        .args(extra)
        .args(&args[split..]);
    out.stdout(Stdio::null()).stderr(Stdio::piped());
    out
}

/// Echoes the child's stderr and waits for a line containing `needle` (false on timeout or
/// exit). The rest of its stderr keeps being echoed by a thread.
fn wait_for_line(child: &mut Bounded, needle: &str, limit: Duration) -> Result<bool> {
    let Some(stderr) = child.child.stderr.take() else {
        bail!("{}: no stderr pipe", child.name);
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("  | {line}");
            if !sent && line.contains(&needle) {
                sent = tx.send(()).is_ok();
            }
        }
    });
    Ok(rx.recv_timeout(limit).is_ok())
}

/// `edge/lab.toml`, or (while the edge has none) the lab module's two-arm configuration.
fn lab_config(work: &Path) -> Result<PathBuf> {
    let shipped = root().join("edge/lab.toml");
    if shipped.exists() {
        // Its TLS listener needs the lab certificates (kept in /run, so gone after a reboot).
        let dir = Path::new(crate::certs::DEFAULT_CERT_DIR);
        if !dir.join("edge.pem").exists() || !dir.join("edge.key").exists() {
            let bundle = crate::certs::generate(&crate::certs::EDGE_SANS)
                .context("generating the lab certificates")?;
            crate::certs::write(&bundle, dir)
                .with_context(|| format!("writing the lab certificates into {}", dir.display()))?;
            println!("demo: lab certificates written to {}", dir.display());
        }
        return Ok(shipped);
    }
    let written = work.join("lab.toml");
    std::fs::write(&written, Shape::TwoArm.daemon_config("auto"))
        .with_context(|| format!("writing {}", written.display()))?;
    println!(
        "demo: edge/lab.toml is missing; using {}",
        written.display()
    );
    Ok(written)
}

/// The `[registrar] database` path of the config text (relative to the config file), if set.
fn configured_database(config: &Path, text: &str) -> Option<PathBuf> {
    let value = text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "database").then(|| value.trim().trim_matches('"').to_owned())
    })?;
    let path = PathBuf::from(value);
    Some(if path.is_absolute() {
        path
    } else {
        config.parent().unwrap_or(Path::new(".")).join(path)
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Prints one direction (what `from` sent, what `to` received); true when within [`MAX_LOSS`].
fn print_direction(name: &str, from: &Value, to: &Value) -> bool {
    let sent = from["rtp_sent"].as_u64().unwrap_or(0);
    let totals = &to["media"]["totals"];
    let field = |key: &str| totals[key].as_u64().unwrap_or(0);
    let latency = &totals["latency"];
    let micros = |key: &str| latency[key].as_u64().unwrap_or(0) as f64 / 1000.0;
    let lost = field("lost");
    if sent == 0 {
        println!("{name}: no media was sent");
        return false;
    }
    let loss = if sent == 0 {
        1.0
    } else {
        lost as f64 / sent as f64
    };
    println!(
        "{name}: sent {sent}, received {}, lost {lost} ({:.2} %), duplicated {}, reordered {}; \
         one-way latency p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        field("received"),
        loss * 100.0,
        field("duplicated"),
        field("reordered"),
        micros("p50_ns"),
        micros("p90_ns"),
        micros("p99_ns"),
        micros("max_ns"),
    );
    loss <= MAX_LOSS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_finds_the_configured_database() {
        let config = Path::new("/repo/edge/lab.toml");
        let text =
            "[sip]\nworkers = 2\n\n[registrar]\ndatabase = \"/run/sipveil-lab/registrar.redb\"\n";
        assert_eq!(
            configured_database(config, text),
            Some(PathBuf::from("/run/sipveil-lab/registrar.redb"))
        );
        assert_eq!(
            configured_database(config, "database = \"lab/r.redb\"\n"),
            Some(PathBuf::from("/repo/edge/lab/r.redb"))
        );
        assert_eq!(configured_database(config, "[registrar]\n"), None);
    }
}
