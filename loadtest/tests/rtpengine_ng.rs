//! Drives a real rtpengine (userspace forwarding, no kernel table) over the ng protocol on
//! loopback and relays sv-rtp streams through it. Needs the `rtpengine` binary (Debian package
//! rtpengine-daemon); says SKIPPED loudly without it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sipveil_loadtest::clock::monotonic_ns;
use sipveil_loadtest::net;
use sipveil_loadtest::procs::ChildGuard;
use sipveil_loadtest::receiver::{RecvConfig, run_receiver};
use sipveil_loadtest::report::check_direction;
use sipveil_loadtest::rtpengine::{NgClient, audio_sdp, media_endpoint};
use sipveil_loadtest::sender::{Pacing, SendConfig, run_sender};

fn rtpengine_present() -> bool {
    Command::new("rtpengine")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn offer_answer_and_relay_through_rtpengine() {
    if !rtpengine_present() {
        eprintln!("SKIPPED: rtpengine not installed (apt-get install rtpengine-daemon)");
        return;
    }
    let ng_port = 22_231;
    let _rte = ChildGuard::spawn(
        "rtpengine",
        Command::new("rtpengine")
            .args([
                "--interface=127.0.0.1",
                &format!("--listen-ng=127.0.0.1:{ng_port}"),
                "--table=-1",
                "--foreground",
                "--log-stderr",
                "--port-min=41200",
                "--port-max=41299",
                "-L",
                "3",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut ng = NgClient::new(SocketAddr::from((Ipv4Addr::LOCALHOST, ng_port)))
        .unwrap_or_else(|e| panic!("{e}"));
    // rtpengine needs a moment to open its control socket; the client retries.
    let mut up = false;
    for _ in 0..10 {
        if ng.ping().is_ok() {
            up = true;
            break;
        }
    }
    assert!(up, "rtpengine did not answer ping");

    let a = net::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20)
        .unwrap_or_else(|e| panic!("{e}"));
    let b = net::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20)
        .unwrap_or_else(|e| panic!("{e}"));
    let port = |s: &std::net::UdpSocket| match s.local_addr() {
        Ok(SocketAddr::V4(v)) => v.port(),
        other => panic!("local addr {other:?}"),
    };
    let streams = 3u32;
    let mut a_dsts = Vec::new();
    for i in 0..streams {
        let call = format!("sv-test-{i}");
        let to_b = ng
            .offer(
                &call,
                "ft",
                &audio_sdp(Ipv4Addr::LOCALHOST, port(&a), 1),
                None,
            )
            .unwrap_or_else(|e| panic!("offer: {e}"));
        let b_sees = media_endpoint(&to_b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*b_sees.ip(), Ipv4Addr::LOCALHOST);
        let to_a = ng
            .answer(
                &call,
                "ft",
                "tt",
                &audio_sdp(Ipv4Addr::LOCALHOST, port(&b), 2),
            )
            .unwrap_or_else(|e| panic!("answer: {e}"));
        let a_sees = media_endpoint(&to_a).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a_sees.port(), b_sees.port(), "two distinct relay ports");
        a_dsts.push(a_sees);
    }

    let stop = AtomicBool::new(false);
    let rcfg = RecvConfig {
        tag: Some(77),
        expect_streams: streams,
        duration: Duration::from_secs(2),
        max_packets: 10_000,
        grace: Duration::from_millis(300),
        idle_exit: None,
        hlog_interval: Duration::from_secs(1),
        seq_window: 1 << 12,
        batch: 16,
    };
    let scfg = SendConfig {
        dsts: a_dsts,
        pacing: Pacing::PerStream(50.0),
        threads: 1,
        duration: Duration::from_secs(1),
        max_packets: 150,
        batch: 8,
        tag: 77,
        end_packets: 3,
        ramp: Duration::ZERO,
    };
    let t0 = monotonic_ns();
    let (sent, received) = std::thread::scope(|s| {
        let rx = s.spawn(|| run_receiver(&b, &rcfg, None, &stop, None));
        let sent = run_sender(&a, &scfg, &stop).unwrap_or_else(|e| panic!("send: {e}"));
        let received = rx
            .join()
            .unwrap_or_else(|_| panic!("receiver panicked"))
            .unwrap_or_else(|e| panic!("recv: {e}"));
        (sent, received)
    });
    assert!(monotonic_ns() > t0);
    let (report, _log) = received;
    let check = check_direction(&sent, &report);
    assert_eq!(sent.sent, 150);
    assert!(check.is_lossless(), "{check:?} {:?}", report.totals);
    assert_eq!(report.totals.streams_seen, u64::from(streams));
    for i in 0..streams {
        let _ = ng.delete(&format!("sv-test-{i}"), "ft");
    }
}
