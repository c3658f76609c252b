//! A real softphone as the callee (issue 5 item 6): baresip (Debian package) in sv-b, with a
//! configuration written into a temporary directory, registers `bbare@open.lab` through the
//! edge (outbound proxy 198.18.1.1:5060, UDP) with auto-answer; this crate's UA in sv-a calls
//! it; baresip answers and sends audio (`ausine`, PCMU), the caller sends RTP; the XDP program
//! relays both ways; the caller hangs up. The daemon's leak detector must stay at 0. baresip runs
//! with its SIP trace (`-s`) into `baresip.log` in the test directory.
//!
//! Needs root (namespaces, XDP). Without baresip, or without one of the modules it needs
//! (g711, ausine, aufile, menu, account), it prints `SKIPPED:` with what is missing.

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use sip_support::call::{ALICE, Call, Dialog, Party, metric, xdp_relayed};
use sip_support::ua::{drain, rtp_packet};
use sip_support::{Edge, EdgeOptions, on_path};
use sipveil_loadtest::lab::{B_ADDR, NS_A, NS_B};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODULES_DIR: &str = "/usr/lib/baresip/modules";
const MODULES: [&str; 5] = ["g711", "ausine", "aufile", "menu", "account"];
const USER: &str = "bbare";

struct Baresip(Child);

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    let config = format!(
        "poll_method epoll\n\
         sip_listen {B_ADDR}:5090\n\
         sip_transports udp\n\
         audio_path /usr/share/baresip\n\
         audio_player aufile,{out}\n\
         audio_source ausine,440\n\
         ausrc_srate 48000\n\
         ausrc_channels 2\n\
         auplay_srate 48000\n\
         audio_alert aufile,/dev/null\n\
         rtp_ports 41000-41100\n\
         net_interface b0\n\
         module_path {MODULES_DIR}\n\
         module g711.so\n\
         module ausine.so\n\
         module aufile.so\n\
         module_app account.so\n\
         module_app menu.so\n",
        out = dir.join("heard.wav").display(),
    );
    std::fs::write(dir.join("config"), config).unwrap_or_else(|error| panic!("config: {error}"));
    let account = format!(
        "<sip:{USER}@open.lab;transport=udp>;outbound=\"sip:198.18.1.1:5060;transport=udp\";\
         regint=600;answermode=auto;audio_codecs=PCMU;medianat=;mediaenc=\n"
    );
    std::fs::write(dir.join("accounts"), account)
        .unwrap_or_else(|error| panic!("accounts: {error}"));
    std::fs::write(dir.join("contacts"), "").unwrap_or_else(|error| panic!("contacts: {error}"));
}

#[test]
fn baresip_callee_auto_answers_with_media_both_ways() {
    if on_path("baresip").is_none() {
        println!("SKIPPED: baresip is not installed (Debian package baresip-core)");
        return;
    }
    let missing: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|module| !Path::new(MODULES_DIR).join(format!("{module}.so")).exists())
        .collect();
    if !missing.is_empty() {
        println!("SKIPPED: baresip modules missing from {MODULES_DIR}: {missing:?}");
        return;
    }
    let edge = Edge::start_xdp("calls_baresip", &EdgeOptions::default());
    let conf = edge.dir.join("baresip");
    write_config(&conf);
    let log = std::fs::File::create(edge.dir.join("baresip.log"))
        .unwrap_or_else(|error| panic!("baresip log: {error}"));
    let child = Command::new("ip")
        .args(["netns", "exec", NS_B, "baresip", "-f"])
        .arg(&conf)
        .args(["-s", "-t", "30"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|error| panic!("{error}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start baresip: {error}"));
    let _baresip = Baresip(child);
    let log_text = || std::fs::read_to_string(edge.dir.join("baresip.log")).unwrap_or_default();

    // Its registration shows in the daemon.
    let aor = format!("{USER}@open.lab");
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.bindings_of(&aor).is_empty() {
        assert!(
            Instant::now() < deadline,
            "baresip did not register {aor} within 10 s; its log:\n{}\n--- daemon:\n{}",
            log_text(),
            edge.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut alice = Party::new(&ALICE, NS_A, 5070, 40_000);
    let call = Call::new("bare");
    let from = format!("{}@{}", ALICE.from_user, ALICE.host);
    alice.ua.send(&alice.invite(&aor, &from, &call, ""));
    let ok = alice.ua.expect("baresip's answer", |m| {
        m.method() == "INVITE" && m.status().is_some_and(|code| code >= 200)
    });
    assert_eq!(
        ok.status(),
        Some(200),
        "baresip did not answer: {}\n--- baresip:\n{}",
        ok.raw,
        log_text()
    );
    let edge_a = ok.media_addr().expect("the answer has SDP");
    let dialog = Dialog::caller(&ok);
    alice.ua.send(&alice.in_dialog(&dialog, "ACK", 1, None));

    // Media: the caller sends 1 s of RTP, baresip sends its tone.
    let xdp_before = xdp_relayed();
    let sent: u16 = 50;
    for seq in 0..sent {
        let _ = alice.rtp.send_to(&rtp_packet(seq, 0x0a11_ce01), edge_a);
        std::thread::sleep(Duration::from_millis(20));
    }
    let heard = drain(&alice.rtp, Duration::from_millis(300))
        .into_iter()
        .filter(|packet| packet.first().is_some_and(|b| b >> 6 == 2))
        .count();
    let xdp = xdp_relayed().saturating_sub(xdp_before);
    println!(
        "caller sent {sent} RTP packets, received {heard} from baresip; XDP relayed {xdp} in \
         that time"
    );

    alice.ua.send(&alice.in_dialog(&dialog, "BYE", 2, None));
    let bye_ok = alice.ua.expect("the answer to BYE", |m| {
        m.method() == "BYE" && m.status().is_some_and(|code| code >= 200)
    });
    let leaks = metric("sipveil_privacy_leaks_total");
    edge.assert_alive("the baresip call");
    let mut failures = Vec::new();
    if heard == 0 {
        failures.push("no RTP from baresip reached the caller".to_owned());
    }
    // Both directions went through XDP: more than what the caller heard.
    if xdp <= heard as u64 {
        failures.push(format!(
            "XDP relayed {xdp} packets, not more than the {heard} the caller received: the \
             caller's RTP did not cross"
        ));
    }
    if bye_ok.status() != Some(200) {
        failures.push(format!("BYE answered {}", bye_ok.start()));
    }
    if leaks != 0.0 {
        failures.push(format!(
            "sipveil_privacy_leaks_total is {leaks}; the daemon says:\n{}",
            edge.log_tail()
                .lines()
                .filter(|line| line.contains("leak"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n--- the answers the caller received:\n{}\n{}\n--- baresip:\n{}",
        failures.join("\n"),
        ok.raw,
        bye_ok.raw,
        log_text()
    );
}
