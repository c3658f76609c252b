//! SIPp calls through the daemon in the lab (issue 5 item 6): a SIPp UAS (`-sn uas`, with
//! `-rtp_echo`) in sv-b answers for a nickname on open.lab, a SIPp UAC in sv-a
//! (`tests/sipp/call_uac_pcap.xml`) calls it and replays RTP from a pcap after the answer
//! (the UAS echoes it back: media both ways), then hangs up. Over UDP and TCP from the caller;
//! every call must succeed, and XDP must have relayed the media.
//!
//! The nickname is registered by this crate's UA from the SIPp UAS's address and port, which
//! it then hands to SIPp (SIPp's UAS mode cannot register and then answer in one scenario);
//! the edge reaches the UAS over UDP. Not here: TLS (Debian's SIPp has no TLS).
//!
//! Needs root (namespaces, XDP); without SIPp it prints `SKIPPED:`.

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use sip_support::call::{metric, xdp_relayed};
use sip_support::client::{EDGE_ADDR, SIP_PORT, token};
use sip_support::sipp::read_stats;
use sip_support::ua::Ua;
use sip_support::{Edge, EdgeOptions, on_path};
use sipveil_loadtest::lab::{A_ADDR, B_ADDR, NS_A, NS_B};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Calls per transport.
const CALLS: u32 = 10;
const UAS_PORT: u16 = 5080;
const NICK: &str = "sippbob";

/// The SIPp UAS in sv-b; killed on drop.
struct Uas(Child);

impl Drop for Uas {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp/call_uac_pcap.xml")
}

fn start_uas(sipp: &Path, dir: &Path) -> Uas {
    let log = std::fs::File::create(dir.join("uas-screen.log"))
        .unwrap_or_else(|error| panic!("uas log: {error}"));
    let child = Command::new("ip")
        .args(["netns", "exec", NS_B])
        .arg(sipp)
        .args(["-sn", "uas", "-rtp_echo", "-t", "u1", "-nostdin"])
        .args(["-i", &B_ADDR.to_string(), "-p", &UAS_PORT.to_string()])
        .args(["-mi", &B_ADDR.to_string()])
        .args(["-timeout", "120", "-trace_err", "-error_file"])
        .arg(dir.join("uas-errors.log"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|error| panic!("{error}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start the SIPp UAS: {error}"));
    std::thread::sleep(Duration::from_millis(500));
    Uas(child)
}

/// Runs the UAC over `transport` (`u1`/`t1`); returns (successful, failed) or why it failed.
fn run_uac(sipp: &Path, dir: &Path, transport: &str) -> Result<(u64, u64), String> {
    let stat = dir.join(format!("uac-{transport}-stat.csv"));
    let screen = dir.join(format!("uac-{transport}-screen.log"));
    let out = std::fs::File::create(&screen).map_err(|error| error.to_string())?;
    let status = Command::new("ip")
        .args(["netns", "exec", NS_A])
        .arg(sipp)
        .arg(format!("{EDGE_ADDR}:{SIP_PORT}"))
        .arg("-sf")
        .arg(scenario())
        .args(["-s", NICK, "-t", transport])
        .args(["-i", &A_ADDR.to_string(), "-mi", &A_ADDR.to_string()])
        .args(["-m", &CALLS.to_string(), "-r", "5", "-l", "5", "-nostdin"])
        .args(["-timeout", "60", "-timeout_error", "-recv_timeout", "10000"])
        .args(["-trace_stat", "-stf"])
        .arg(&stat)
        .args(["-trace_err", "-error_file"])
        .arg(dir.join(format!("uac-{transport}-errors.log")))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|error| error.to_string())?)
        .stderr(out)
        .status()
        .map_err(|error| format!("cannot run SIPp: {error}"))?;
    let counts = read_stats(&stat).map_err(|error| format!("{error}; exit {status}"))?;
    if !status.success() {
        return Err(format!(
            "SIPp UAC over {transport} exited with {status}: {counts:?}; see {}",
            screen.display()
        ));
    }
    Ok((counts.successful, counts.failed))
}

#[test]
fn sipp_calls_with_rtp_over_udp_and_tcp() {
    let Some(sipp) = on_path("sipp") else {
        println!("SKIPPED: sipp is not installed (Debian package sip-tester)");
        return;
    };
    let edge = Edge::start_xdp("calls_sipp", &EdgeOptions::default());
    // Register the nickname from the UAS's own address and port (the edge sends calls to the
    // flow a binding was registered from), then hand the port to SIPp.
    let mut reg = Ua::new(
        NS_B,
        SocketAddr::from((B_ADDR, UAS_PORT)),
        SocketAddr::from((EDGE_ADDR, SIP_PORT)),
    )
    .unwrap_or_else(|error| panic!("registering UA: {error}"));
    let call_id = token("sippreg");
    reg.send(&format!(
        "REGISTER sip:open.lab SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{NICK}@open.lab>;tag={call_id}\r\n\
         To: <sip:{NICK}@open.lab>\r\nCall-ID: {call_id}\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{NICK}@{B_ADDR}:{UAS_PORT}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
        me = reg.addr(),
    ));
    reg.expect_status("REGISTER", 200);
    drop(reg);
    let _uas = start_uas(&sipp, &edge.dir);
    let xdp_before = xdp_relayed();
    let mut failures = Vec::new();
    for transport in ["u1", "t1"] {
        match run_uac(&sipp, &edge.dir, transport) {
            Ok((successful, failed)) => {
                println!("SIPp calls over {transport}: {successful} successful, {failed} failed");
                if successful != u64::from(CALLS) || failed != 0 {
                    failures.push(format!(
                        "over {transport}: {successful} successful, {failed} failed, expected \
                         {CALLS} and 0"
                    ));
                }
            }
            Err(error) => failures.push(error),
        }
    }
    let xdp = xdp_relayed().saturating_sub(xdp_before);
    let answered = metric("sipveil_calls_total{result=\"answered\"}");
    let leaks = metric("sipveil_privacy_leaks_total");
    println!("XDP relayed {xdp} packets; calls answered {answered}; leaks {leaks}");
    if xdp == 0 {
        failures.push("XDP relayed no media packet".to_owned());
    }
    if leaks != 0.0 {
        failures.push(format!("sipveil_privacy_leaks_total is {leaks}"));
    }
    edge.assert_alive("the SIPp calls");
    assert!(
        failures.is_empty(),
        "{}\n--- daemon log:\n{}",
        failures.join("\n"),
        edge.log_tail()
    );
}
