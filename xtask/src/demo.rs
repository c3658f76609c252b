//! `cargo xtask demo`: the appliance relaying RTP in the two-arm lab, end to end.
//!
//! lab up (two-arm) → release build → `sipveil run --config edge/lab.toml --netns sv-edge` →
//! relays opened with `sipveil ctl relay-open` → `sv-rtp recv` and `sv-rtp send` in sv-a and sv-b,
//! RTP both ways → summary (packets relayed in XDP and in userspace from `sipveil stats`, loss and latency
//! from sv-rtp's reports) → daemon stopped, program unloaded, lab torn down.

use crate::cmd::{output, run};
use crate::lab::{
    A_ADDR, B_ADDR, Daemon, LAB_INSTANCE, Lab, NS_A, NS_B, NS_EDGE, RtpRun, RtpSide, Shape,
};
use crate::workspace::{release_binaries, root, target_dir};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The port sv-rtp receives on in sv-a and sv-b (the relays' peers); the senders use + 2.
const PEER_PORT: u16 = 40000;

/// Options of `cargo xtask demo`.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Relays (calls) to open; each carries one RTP stream each way.
    pub streams: u32,
    /// How long sv-rtp sends.
    pub seconds: u32,
    /// Leave the lab up at the end.
    pub keep_lab: bool,
}

/// One relay as `relay-open` answers it: where A and B send.
struct Relay {
    a_edge: SocketAddrV4,
    b_edge: SocketAddrV4,
}

pub fn run_demo(options: Options) -> Result<()> {
    let binaries = release_binaries()?;
    let work = target_dir()?.join("demo");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let config = lab_config(&work)?;

    println!("demo: bringing up the two-arm lab");
    let session = Lab::session(Shape::TwoArm, &binaries.sipveil)?;
    print!("{}", Lab::status()?);

    println!("demo: starting sipveil in {NS_EDGE} ({})", config.display());
    let daemon = Daemon::start(
        &binaries.sipveil,
        &config,
        &[],
        Duration::from_secs(30),
        None,
    )?;
    println!("demo: daemon ready: {}", daemon.ready);

    let ctl = |args: &[&str]| -> Result<Value> {
        let text = output(
            Command::new(&binaries.sipveil)
                .args(["ctl", "--instance", LAB_INSTANCE])
                .args(args),
        )?;
        serde_json::from_str(text.trim()).with_context(|| format!("sipveil ctl answered {text}"))
    };
    let a_peer = SocketAddrV4::new(A_ADDR, PEER_PORT).to_string();
    let b_peer = SocketAddrV4::new(B_ADDR, PEER_PORT).to_string();
    let mut relays = Vec::new();
    for _ in 0..options.streams {
        // One relay per stream, all with the same peers: each side receives on one socket.
        let answer = ctl(&["relay-open", "--a-peer", &a_peer, "--b-peer", &b_peer])?;
        let relay = parse_relay(&answer)?;
        println!(
            "demo: relay A {a_peer} -> edge {} | edge {} <- B {b_peer}",
            relay.a_edge, relay.b_edge
        );
        relays.push(relay);
    }

    println!(
        "demo: sv-rtp in {NS_A} and {NS_B}: {} stream(s) each way at 50 packets/s for {} s",
        options.streams, options.seconds
    );
    let a_dsts: Vec<SocketAddrV4> = relays.iter().map(|relay| relay.a_edge).collect();
    let b_dsts: Vec<SocketAddrV4> = relays.iter().map(|relay| relay.b_edge).collect();
    let sides = (
        RtpSide {
            dsts: &a_dsts,
            tag: 1,
        },
        RtpSide {
            dsts: &b_dsts,
            tag: 2,
        },
    );
    let mut rtp = RtpRun::start(
        &binaries.sv_rtp,
        PEER_PORT,
        sides,
        options.seconds,
        50,
        &work,
    )?;
    rtp.wait()?;

    let stats_text = output(Command::new(&binaries.sipveil).args([
        "stats",
        "--instance",
        LAB_INSTANCE,
        "--json",
    ]))?;
    let stats: Value = serde_json::from_str(stats_text.trim())
        .with_context(|| format!("sipveil stats printed {stats_text}"))?;
    let mut lossless = true;
    for (send, recv) in [("a-send", "b-recv"), ("b-send", "a-recv")] {
        let check = Command::new(&binaries.sv_rtp)
            .args(["check", "--send"])
            .arg(rtp.report(send))
            .arg("--recv")
            .arg(rtp.report(recv))
            .output()
            .context("running sv-rtp check")?;
        lossless &= check.status.success();
    }

    let stopped = daemon.terminate(Duration::from_secs(10));
    run(Command::new(&binaries.sipveil).args([
        "unload",
        "--instance",
        LAB_INSTANCE,
        "--netns",
        NS_EDGE,
    ]))?;

    let read = |name: &str| read_json(&rtp.report(name));
    println!("\n=== demo summary");
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
    print_direction("A -> B", &read("a-send")?, &read("b-recv")?);
    print_direction("B -> A", &read("b-send")?, &read("a-recv")?);
    println!(
        "daemon stopped cleanly: {stopped}; loss check: {}",
        if lossless { "lossless" } else { "LOSS" }
    );
    println!(
        "reports and logs: {}/{{a,b}}-{{send,recv}}.{{json,log}}",
        work.display()
    );

    if options.keep_lab {
        std::mem::forget(session);
        println!("demo: the lab is left up (`cargo xtask lab down` removes it)");
    } else {
        drop(session);
        println!("demo: the lab is down again");
    }
    if !lossless {
        bail!("the demo lost packets");
    }
    Ok(())
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

fn parse_relay(answer: &Value) -> Result<Relay> {
    let relay = &answer["relays"][0];
    let addr = |side: &str| -> Result<SocketAddrV4> {
        relay[side]["edge"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .with_context(|| format!("relay-open answer without {side}.edge: {answer}"))
    };
    Ok(Relay {
        a_edge: addr("a")?,
        b_edge: addr("b")?,
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Prints one direction: what `from` sent and what `to` received, with latency percentiles.
fn print_direction(name: &str, from: &Value, to: &Value) {
    let sent = from["sender"]["sent"].as_u64().unwrap_or(0);
    let totals = &to["receiver"]["totals"];
    let field = |key: &str| totals[key].as_u64().unwrap_or(0);
    let latency = &totals["latency"];
    let micros = |key: &str| latency[key].as_u64().unwrap_or(0) as f64 / 1000.0;
    println!(
        "{name}: sent {sent}, received {}, lost {}, duplicated {}, reordered {}; one-way latency \
         p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        field("received"),
        field("lost"),
        field("duplicated"),
        field("reordered"),
        micros("p50_ns"),
        micros("p90_ns"),
        micros("p99_ns"),
        micros("p999_ns"),
        micros("max_ns"),
    );
}
