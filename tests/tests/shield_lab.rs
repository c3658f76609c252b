//! The flood shield's closed loop with XDP in the lab (two-arm, root): the daemon configures the
//! shield's maps from `[shield]`; `sipveil shield block` of sv-x's address makes the XDP counter
//! `shield_drop_blocked` rise for sv-x's OPTIONS (which go unanswered), and `shield unblock`
//! makes them answered again; and the closed loop: repeated XDP rate limiting (events in
//! `SV_SHIELD_EVT`) makes the daemon block the source (reason `rate`). The daemon runs with XDP
//! on (`xdp = "auto"`).
#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sip_support::client::in_netns;
use sip_support::{require_root, sipveil, test_dir};
use sipveil_loadtest::lab::{Daemon, LAB_CONTROL_SOCKET, LAB_INSTANCE, Lab, NS_X, Shape};

const X_ADDR: &str = "198.18.3.2";
const EDGE_SIP: &str = "198.18.1.1:5060";

fn config_text() -> String {
    config_with("options = { rate = 1000, burst = 1000 }\n")
}

fn config_with(shield: &str) -> String {
    format!(
        "{lab}\n\
         [sip]\n\
         workers = 1\n\
         udp = [\"{EDGE_SIP}\"]\n\
         server = \"sipveil\"\n\
         \n\
         [registrar]\n\
         database = \"registrar.redb\"\n\
         \n\
         [[domain]]\n\
         name = \"open.lab\"\n\
         policy = \"open\"\n\
         \n\
         [shield]\n\
         enabled = true\n\
         {shield}",
        lab = Shape::TwoArm.daemon_config("auto"),
    )
}

fn sipveil_json(args: &[&str]) -> Value {
    let out = Command::new(sipveil())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("sipveil {args:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "sipveil {args:?}: {e}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The XDP counter `name` of the lab instance (pinned map).
fn xdp_counter(name: &str) -> u64 {
    let stats = sipveil_json(&["stats", "--instance", LAB_INSTANCE, "--json"]);
    stats["xdp"][name]
        .as_u64()
        .or_else(|| stats[name].as_u64())
        .unwrap_or_else(|| panic!("no XDP counter {name} in {stats}"))
}

/// OPTIONS from sv-x; true when answered within 700 ms.
fn options_answered(sock: &UdpSocket, n: u32) -> bool {
    let local = sock.local_addr().expect("local");
    let text = format!(
        "OPTIONS sip:open.lab SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bKshl{n}\r\n\
         From: <sip:x@open.lab>;tag=x{n}\r\n\
         To: <sip:open.lab>\r\n\
         Call-ID: shield-lab-{n}\r\n\
         CSeq: {n} OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(text.as_bytes(), EDGE_SIP).expect("send");
    let mut buf = [0u8; 4096];
    sock.recv_from(&mut buf).is_ok()
}

#[test]
fn cli_block_drops_sv_x_in_xdp_and_unblock_lets_it_back() {
    require_root();
    let lab =
        Lab::session(Shape::TwoArm, sipveil()).unwrap_or_else(|e| panic!("lab up (two-arm): {e}"));
    let dir = test_dir("shield_lab");
    let config = dir.join("sipveil.toml");
    std::fs::write(&config, config_text()).expect("config");
    let log = dir.join("sipveil.log");
    let daemon = Daemon::start(sipveil(), &config, &[], Duration::from_secs(30), Some(&log))
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    println!("daemon ready: {}", daemon.ready);
    let socket = ["--socket", LAB_CONTROL_SOCKET];

    let sock = in_netns(NS_X, || {
        let s = UdpSocket::bind(format!("{X_ADDR}:0"))?;
        s.set_read_timeout(Some(Duration::from_millis(700)))?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("socket in {NS_X}: {e}"));
    assert!(
        options_answered(&sock, 1),
        "sv-x not answered before the block"
    );
    let stats = sipveil_json(&["shield", "stats", "--json", socket[0], socket[1]]);
    assert_eq!(stats["enforcement"], "xdp", "{stats}");
    let passed_before = xdp_counter("shield_pass");
    assert!(
        passed_before >= 1,
        "the XDP shield did not see sv-x's OPTIONS"
    );

    let answer = sipveil_json(&[
        "shield", "block", X_ADDR, "--for", "10m", socket[0], socket[1],
    ]);
    assert_eq!(answer["ok"], true, "{answer}");
    let dropped_before = xdp_counter("shield_drop_blocked");
    for n in 2..5 {
        assert!(!options_answered(&sock, n), "a blocked source was answered");
    }
    let dropped = xdp_counter("shield_drop_blocked") - dropped_before;
    assert!(
        dropped >= 3,
        "shield_drop_blocked rose by {dropped}, expected >= 3"
    );
    let list = sipveil_json(&["shield", "list", "--json", socket[0], socket[1]]);
    assert_eq!(list["blocked"][0]["source"], X_ADDR, "{list}");
    assert_eq!(list["blocked"][0]["reason"], "manual", "{list}");

    let answer = sipveil_json(&["shield", "unblock", X_ADDR, socket[0], socket[1]]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        options_answered(&sock, 10),
        "sv-x not answered after unblock"
    );
    drop(daemon);
    drop(lab);
}

/// The closed loop: sv-x floods OPTIONS over its XDP rate limit; the program drops the excess
/// and writes events to `SV_SHIELD_EVT`; the daemon reads them, and the repeated limiting blocks
/// sv-x (reason `rate`) in `SV_BLOCK`, after which XDP drops it as blocked.
#[test]
fn repeated_xdp_rate_limiting_blocks_the_source() {
    require_root();
    let lab =
        Lab::session(Shape::TwoArm, sipveil()).unwrap_or_else(|e| panic!("lab up (two-arm): {e}"));
    let dir = test_dir("shield_lab_rate");
    let config = dir.join("sipveil.toml");
    std::fs::write(
        &config,
        config_with(
            "options = { rate = 5, burst = 5 }\n\
             rate_events = { count = 2, window_secs = 60 }\n\
             event_interval_ms = 100\n",
        ),
    )
    .expect("config");
    let log = dir.join("sipveil.log");
    let daemon = Daemon::start(sipveil(), &config, &[], Duration::from_secs(30), Some(&log))
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    let socket = ["--socket", LAB_CONTROL_SOCKET];
    let sock = in_netns(NS_X, || {
        let s = UdpSocket::bind(format!("{X_ADDR}:0"))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("socket in {NS_X}: {e}"));
    let rate_before = xdp_counter("shield_drop_rate_options");
    let events_before = xdp_counter("shield_events");
    // Bounded: at most 60 rounds of 20 OPTIONS (about 3 s of waiting), until sv-x is blocked.
    let mut blocked = None;
    for round in 0..60u32 {
        for i in 0..20 {
            let _ = options_answered(&sock, round * 100 + i + 1);
        }
        let list = sipveil_json(&["shield", "list", "--json", socket[0], socket[1]]);
        if let Some(entry) = list["blocked"]
            .as_array()
            .and_then(|b| b.iter().find(|e| e["source"] == X_ADDR))
        {
            blocked = Some(entry.clone());
            break;
        }
    }
    let entry = blocked.unwrap_or_else(|| {
        panic!(
            "sv-x was never blocked; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(entry["reason"], "rate", "{entry}");
    assert!(xdp_counter("shield_drop_rate_options") > rate_before);
    assert!(xdp_counter("shield_events") >= events_before + 2);
    let dropped_before = xdp_counter("shield_drop_blocked");
    assert!(
        !options_answered(&sock, 99_999),
        "a blocked source was answered"
    );
    assert!(xdp_counter("shield_drop_blocked") > dropped_before);
    drop(daemon);
    drop(lab);
}
