//! End to end in the lab (docs/contracts.md): the `sipveil` daemon relays RTP between sv-a and
//! sv-b, generated and checked by `sv-rtp` (loadtest) run through `ip netns exec`.
//!
//! - XDP mode, both lab shapes: N streams both ways, zero loss, and the XDP counters show the
//!   packets were relayed in XDP (userspace only relays what the program passed up, i.e. the
//!   first packets before the neighbours resolve).
//! - 1000 streams keep flowing with zero loss while the daemon is killed (SIGKILL) and started
//!   again: the program stays attached and the new daemon adopts the pinned maps.
//! - `--no-xdp`: the userspace relay carries everything, zero loss.
//! - RTCP privacy: RTCP with a CNAME, NAME, EMAIL, ... sent from sv-a (port + 1 and rtcp-mux)
//!   arrives in sv-b scrubbed (one pseudonymous CNAME, nothing else identifying; broken RTCP not
//!   forwarded) while the RTP streams beside it are relayed in XDP.
//!
//! Needs root (namespaces, veth, XDP): fails with a clear message otherwise. Run one at a time
//! (`--test-threads=1`; `cargo xtask test` does); every test holds the lab lock and tears the lab
//! down when it ends, also on failure. The binaries come from `SIPVEIL_BIN_DIR` when set
//! (`cargo xtask test` builds them first), otherwise the test builds them with cargo (release).

use serde_json::Value;
use sipveil_loadtest::lab::{
    A_ADDR, B_ADDR, Control, Daemon, LAB_CONTROL_SOCKET, LAB_INSTANCE, Lab, LabSession, RtpRun,
    RtpSide, Shape,
};
use sipveil_loadtest::report::{DirectionCheck, RunReport, check_direction};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The port sv-rtp receives on in sv-a and sv-b (the relays' peer port); senders use + 2.
const PEER_PORT: u16 = 40000;

struct Binaries {
    sipveil: PathBuf,
    sv_rtp: PathBuf,
}

/// The release binaries of the daemon and of sv-rtp, built once per test process.
fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    let found = BINARIES.get_or_init(|| {
        let dir = match std::env::var_os("SIPVEIL_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => build_release()?,
        };
        let binaries = Binaries {
            sipveil: dir.join("sipveil"),
            sv_rtp: dir.join("sv-rtp"),
        };
        for path in [&binaries.sipveil, &binaries.sv_rtp] {
            if !path.exists() {
                return Err(format!("{} does not exist", path.display()));
            }
        }
        Ok(binaries)
    });
    match found {
        Ok(binaries) => binaries,
        Err(error) => panic!("lab tests cannot find their binaries: {error}"),
    }
}

/// `cargo build --release` of the daemon and sv-rtp; returns `target/release`.
fn build_release() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "-p",
            "sipveil-edge",
            "-p",
            "sipveil-loadtest",
            "--bins",
        ])
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err(format!("cargo build --release failed ({status})"));
    }
    let profile = sipveil_loadtest::lab::profile_dir_of_current_exe()
        .ok_or("cannot tell the target directory from the test executable")?;
    let target = profile
        .parent()
        .ok_or("the profile directory has no parent")?;
    Ok(target.join("release"))
}

fn require_root() {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|meta| meta.uid());
    assert!(
        matches!(uid, Ok(0)),
        "the lab tests need root (network namespaces, veth pairs, XDP): run them as root"
    );
}

/// A lab of `shape` for the duration of a test, and a directory for its files.
fn lab(shape: Shape, test: &str) -> (LabSession, PathBuf) {
    require_root();
    let session = Lab::session(shape, &binaries().sipveil)
        .unwrap_or_else(|error| panic!("lab up ({shape}): {error}"));
    let profile =
        sipveil_loadtest::lab::profile_dir_of_current_exe().unwrap_or_else(std::env::temp_dir);
    let dir = profile.join("lab-tests").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    (session, dir)
}

fn start_daemon(shape: Shape, dir: &Path, xdp: &str, extra: &[&str]) -> Daemon {
    let config = dir.join("sipveil.toml");
    std::fs::write(&config, shape.daemon_config(xdp))
        .unwrap_or_else(|error| panic!("{}: {error}", config.display()));
    let log = dir.join("sipveil.log");
    Daemon::start(
        &binaries().sipveil,
        &config,
        extra,
        Duration::from_secs(30),
        Some(&log),
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

fn ready_field(daemon: &Daemon, key: &str) -> Value {
    let ready: Value = serde_json::from_str(&daemon.ready)
        .unwrap_or_else(|error| panic!("ready line {:?}: {error}", daemon.ready));
    ready[key].clone()
}

/// Where A and B send for one relay.
#[derive(Clone, Copy, Debug)]
struct Relay {
    a_edge: SocketAddrV4,
    b_edge: SocketAddrV4,
}

/// Opens `count` relays, all between A:PEER_PORT and B:PEER_PORT (each side's sv-rtp receives
/// every stream on one socket; the relays differ by their edge ports).
fn open_relays(count: usize) -> Vec<Relay> {
    let mut control =
        Control::connect(Path::new(LAB_CONTROL_SOCKET)).unwrap_or_else(|error| panic!("{error}"));
    let request = format!(
        r#"{{"cmd":"relay-open","a_peer":"{}","b_peer":"{}","latch":false,"strict":false,"rtcp_mux":false,"count":1}}"#,
        SocketAddrV4::new(A_ADDR, PEER_PORT),
        SocketAddrV4::new(B_ADDR, PEER_PORT),
    );
    (0..count)
        .map(|_| {
            let answer = control
                .request(&request)
                .unwrap_or_else(|error| panic!("relay-open: {error}"));
            let parsed: Value = serde_json::from_str(&answer)
                .unwrap_or_else(|error| panic!("relay-open answered {answer:?}: {error}"));
            assert_eq!(parsed["ok"], Value::Bool(true), "relay-open: {answer}");
            let edge = |side: &str| -> SocketAddrV4 {
                parsed["relays"][0][side]["edge"]
                    .as_str()
                    .and_then(|text| text.parse().ok())
                    .unwrap_or_else(|| panic!("relay-open answer without {side}.edge: {answer}"))
            };
            Relay {
                a_edge: edge("a"),
                b_edge: edge("b"),
            }
        })
        .collect()
}

/// Runs sv-rtp both ways through `relays` for `seconds` at `pps` per stream (started now,
/// finished by [`finish`]).
fn start_rtp(relays: &[Relay], seconds: u32, pps: u32, dir: &Path) -> RtpRun {
    let a: Vec<SocketAddrV4> = relays.iter().map(|relay| relay.a_edge).collect();
    let b: Vec<SocketAddrV4> = relays.iter().map(|relay| relay.b_edge).collect();
    let sides = (RtpSide { dsts: &a, tag: 1 }, RtpSide { dsts: &b, tag: 2 });
    RtpRun::start(&binaries().sv_rtp, PEER_PORT, sides, seconds, pps, dir)
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Waits for the run and joins its reports: (A→B, B→A).
fn finish(mut run: RtpRun) -> (DirectionCheck, DirectionCheck) {
    run.wait().unwrap_or_else(|error| panic!("{error}"));
    let read = |name: &str| -> RunReport {
        let path = run.report(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    let direction = |from: &str, to: &str| {
        let (sent, received) = (read(from), read(to));
        check_direction(
            sent.sender.as_ref().expect("send report without sender"),
            received
                .receiver
                .as_ref()
                .expect("recv report without receiver"),
        )
    };
    (direction("a-send", "b-recv"), direction("b-send", "a-recv"))
}

/// `sipveil stats --instance lab --json`.
fn stats() -> Value {
    let out = Command::new(&binaries().sipveil)
        .args(["stats", "--instance", LAB_INSTANCE, "--json"])
        .output()
        .expect("running sipveil stats");
    assert!(
        out.status.success(),
        "sipveil stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|error| panic!("stats {text:?}: {error}"))
}

fn counter(stats: &Value, side: &str, name: &str) -> u64 {
    stats[side][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats without {side}.{name}: {stats}"))
}

fn assert_lossless(a_to_b: &DirectionCheck, b_to_a: &DirectionCheck, streams: usize) {
    for (name, check) in [("A->B", a_to_b), ("B->A", b_to_a)] {
        assert_eq!(check.streams, streams as u64, "{name}: {check:?}");
        assert!(check.sent > 0, "{name} sent nothing: {check:?}");
        assert!(check.is_lossless(), "{name} lost packets: {check:?}");
    }
}

/// N streams both ways in XDP mode: lossless, and relayed by the program.
fn xdp_relay(shape: Shape, test: &str) {
    const STREAMS: usize = 16;
    let (_lab, dir) = lab(shape, test);
    let daemon = start_daemon(shape, &dir, "driver", &[]);
    assert_eq!(ready_field(&daemon, "mode"), "xdp", "{}", daemon.ready);
    let relays = open_relays(STREAMS);
    let (a_to_b, b_to_a) = finish(start_rtp(&relays, 3, 50, &dir));
    assert_lossless(&a_to_b, &b_to_a, STREAMS);

    let stats = stats();
    let sent = a_to_b.sent + b_to_a.sent;
    let (in_xdp, other_way) = match shape {
        Shape::TwoArm => ("relayed_redirect", "relayed_tx"),
        Shape::OneArm => ("relayed_tx", "relayed_redirect"),
    };
    let xdp = counter(&stats, "xdp", in_xdp);
    let userspace = counter(&stats, "userspace", "relayed");
    println!(
        "{shape}: {sent} packets sent, relayed in XDP ({in_xdp}) {xdp}, in userspace {userspace}"
    );
    assert_eq!(counter(&stats, "xdp", other_way), 0, "{stats}");
    // Everything that arrived was relayed by someone (sv-rtp also sends end-of-stream packets).
    assert!(
        xdp + userspace >= sent,
        "sent {sent}, relayed {xdp} + {userspace}: {stats}"
    );
    // Userspace relays only what XDP passed up before the neighbours resolved: a few packets
    // per destination, never a share of the streams.
    assert!(
        userspace <= 4 * STREAMS as u64,
        "userspace relayed {userspace} of {sent}: {stats}"
    );
    assert!(
        xdp >= sent.saturating_sub(userspace),
        "XDP relayed {xdp} of {sent}: {stats}"
    );
    assert!(
        daemon.terminate(Duration::from_secs(10)),
        "daemon did not stop cleanly on SIGTERM"
    );
}

#[test]
fn lab_xdp_relay_two_arm_is_lossless_and_in_xdp() {
    xdp_relay(Shape::TwoArm, "xdp_two_arm");
}

#[test]
fn lab_xdp_relay_one_arm_is_lossless_and_in_xdp() {
    xdp_relay(Shape::OneArm, "xdp_one_arm");
}

/// 1000 streams keep flowing with zero loss while the daemon is killed and started again.
#[test]
fn lab_1000_streams_survive_a_daemon_restart() {
    const STREAMS: usize = 1000;
    let shape = Shape::TwoArm;
    let (_lab, dir) = lab(shape, "restart_1000");
    let first = start_daemon(shape, &dir, "driver", &[]);
    assert_eq!(ready_field(&first, "mode"), "xdp", "{}", first.ready);
    let relays = open_relays(STREAMS);
    let rtp = start_rtp(&relays, 10, 20, &dir);

    std::thread::sleep(Duration::from_secs(3));
    let before = stats();
    first.kill();
    std::thread::sleep(Duration::from_secs(1));
    let second = start_daemon(shape, &dir, "driver", &[]);
    let adopted = ready_field(&second, "adopted_flows").as_u64().unwrap_or(0);
    assert!(
        adopted >= 2 * STREAMS as u64,
        "the restarted daemon adopted {adopted} flows: {}",
        second.ready
    );

    let (a_to_b, b_to_a) = finish(rtp);
    assert_lossless(&a_to_b, &b_to_a, STREAMS);
    let after = stats();
    let relayed = |stats: &Value| counter(stats, "xdp", "relayed_redirect");
    // The program kept relaying across the restart: its counters (pinned) only grew.
    assert!(
        relayed(&after) > relayed(&before),
        "before {before}, after {after}"
    );
    // Userspace counters live in each daemon: the first one's are in `before`.
    let in_userspace =
        counter(&before, "userspace", "relayed") + counter(&after, "userspace", "relayed");
    let sent = a_to_b.sent + b_to_a.sent;
    println!(
        "{STREAMS} streams, {sent} packets sent, relayed in XDP {}, in userspace {in_userspace}",
        relayed(&after)
    );
    assert!(
        relayed(&after) + in_userspace >= sent,
        "before {before}, after {after}"
    );
    // Userspace carried only the packets before the neighbours resolved, not the streams.
    assert!(
        in_userspace <= STREAMS as u64,
        "userspace relayed {in_userspace} of {sent}: before {before}, after {after}"
    );
    assert!(
        second.terminate(Duration::from_secs(10)),
        "daemon did not stop cleanly"
    );
}

/// `--no-xdp`: the io_uring userspace relay alone, end to end.
#[test]
fn lab_no_xdp_fallback_is_lossless() {
    const STREAMS: usize = 8;
    let shape = Shape::TwoArm;
    let (_lab, dir) = lab(shape, "no_xdp");
    let daemon = start_daemon(shape, &dir, "auto", &["--no-xdp"]);
    assert_eq!(
        ready_field(&daemon, "mode"),
        "userspace",
        "{}",
        daemon.ready
    );
    let relays = open_relays(STREAMS);
    let (a_to_b, b_to_a) = finish(start_rtp(&relays, 3, 50, &dir));
    assert_lossless(&a_to_b, &b_to_a, STREAMS);

    let stats = stats();
    assert!(
        stats["xdp"].is_null(),
        "nothing should be pinned in --no-xdp mode: {stats}"
    );
    let relayed = counter(&stats, "userspace", "relayed");
    println!(
        "--no-xdp: {} packets sent, relayed in userspace {relayed}",
        a_to_b.sent + b_to_a.sent
    );
    assert!(
        relayed >= a_to_b.sent + b_to_a.sent,
        "userspace relayed {relayed} of {}: {stats}",
        a_to_b.sent + b_to_a.sent
    );
    assert!(
        daemon.terminate(Duration::from_secs(10)),
        "daemon did not stop cleanly"
    );
}

/// A UDP socket bound to `addr` inside the lab namespace `ns` (created on a helper thread that
/// enters the namespace; the socket stays in it), with a receive timeout.
fn udp_in(ns: &str, addr: SocketAddrV4) -> std::net::UdpSocket {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        // SAFETY: a valid namespace fd; setns changes only this helper thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let socket = std::net::UdpSocket::bind(addr)
            .unwrap_or_else(|error| panic!("bind {addr} in {}: {error}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        socket
    })
    .join()
    .expect("socket helper thread")
}

/// What a party's RTCP says about it: every SDES item type of RFC 3550 and a BYE reason.
const IDENTITY: [(u8, &[u8]); 8] = [
    (1, b"alice@198.18.1.2"),
    (2, b"Alice Lab"),
    (3, b"alice@example.lab"),
    (4, b"+1-555-0199"),
    (5, b"Desk 7, Lab Street"),
    (6, b"baresip 1.0 (alice-laptop)"),
    (7, b"in a meeting"),
    (8, b"\x04privsecret-alice"),
];
const BYE_REASON: &[u8] = b"alice leaves";

/// A compound RTCP packet: SR (one report block), SDES with every item, BYE with a reason.
fn identifying_rtcp(ssrc: u32) -> Vec<u8> {
    let mut out = Vec::new();
    // SR: V=2, RC=1, PT=200, length 12 words.
    out.extend_from_slice(&[0x81, 200, 0, 12]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend((0..20u8).map(|i| 0xa0 + i)); // sender info
    out.extend((0..24u8).map(|i| 0x10 + i)); // one report block
    // SDES: one chunk with every item, END, padding.
    let mut chunk = ssrc.to_be_bytes().to_vec();
    for (kind, text) in IDENTITY {
        chunk.push(kind);
        chunk.push(text.len() as u8);
        chunk.extend_from_slice(text);
    }
    chunk.push(0);
    while !chunk.len().is_multiple_of(4) {
        chunk.push(0);
    }
    out.extend_from_slice(&[0x81, 202]);
    out.extend_from_slice(&((chunk.len() / 4) as u16).to_be_bytes());
    out.extend_from_slice(&chunk);
    // BYE with a reason.
    let mut bye = ssrc.to_be_bytes().to_vec();
    bye.push(BYE_REASON.len() as u8);
    bye.extend_from_slice(BYE_REASON);
    while !bye.len().is_multiple_of(4) {
        bye.push(0);
    }
    out.extend_from_slice(&[0x81, 203]);
    out.extend_from_slice(&((bye.len() / 4) as u16).to_be_bytes());
    out.extend_from_slice(&bye);
    out
}

/// Checks what the other party received: well framed RTCP, the SR as sent, an SDES with exactly
/// one item, a 24-hex-digit CNAME, and none of the sender's identifiers anywhere. Returns the
/// CNAME.
fn assert_scrubbed(got: &[u8], sent: &[u8], ssrc: u32) -> Vec<u8> {
    for (_, text) in IDENTITY {
        assert!(
            !got.windows(text.len()).any(|w| w == text),
            "{:?} reached the other party: {got:?}",
            String::from_utf8_lossy(text)
        );
    }
    assert!(!got.windows(BYE_REASON.len()).any(|w| w == BYE_REASON));
    assert_eq!(&got[..52], &sent[..52], "the SR is forwarded as sent");
    let mut off = 0;
    let mut types = Vec::new();
    let mut cname = Vec::new();
    while off < got.len() {
        assert!(off + 4 <= got.len(), "truncated header: {got:?}");
        assert_eq!(got[off] >> 6, 2, "version 2: {got:?}");
        assert_eq!(got[off] & 0x20, 0, "no padding");
        let len = (usize::from(u16::from_be_bytes([got[off + 2], got[off + 3]])) + 1) * 4;
        assert!(
            off + len <= got.len(),
            "length beyond the datagram: {got:?}"
        );
        let pkt = &got[off..off + len];
        types.push(pkt[1]);
        if pkt[1] == 202 {
            assert_eq!(pkt[0] & 0x1f, 1, "one chunk");
            assert_eq!(&pkt[4..8], &ssrc.to_be_bytes());
            assert_eq!(pkt[8], 1, "the only item is a CNAME");
            let n = usize::from(pkt[9]);
            cname = pkt[10..10 + n].to_vec();
            assert_eq!(pkt[10 + n], 0, "END right after the CNAME");
        }
        if pkt[1] == 203 {
            assert_eq!(len, 8, "BYE keeps its SSRC only");
        }
        off += len;
    }
    assert_eq!(types, [200, 202, 203]);
    assert_eq!(cname.len(), 24, "pseudonymous CNAME: {cname:?}");
    assert!(cname.iter().all(u8::is_ascii_hexdigit), "{cname:?}");
    cname
}

fn plus_one(addr: SocketAddrV4) -> SocketAddrV4 {
    SocketAddrV4::new(*addr.ip(), addr.port() + 1)
}

/// RTCP privacy end to end: RTCP from sv-a with a CNAME, NAME, EMAIL, ... arrives in sv-b
/// scrubbed (separate RTCP port and rtcp-mux), while the RTP streams beside it stay in XDP.
#[test]
fn lab_rtcp_is_scrubbed_while_rtp_stays_in_xdp() {
    const STREAMS: usize = 4;
    const RTCP_PACKETS: u32 = 10;
    let shape = Shape::TwoArm;
    let (_lab, dir) = lab(shape, "rtcp_scrub");
    let daemon = start_daemon(shape, &dir, "driver", &[]);
    assert_eq!(ready_field(&daemon, "mode"), "xdp", "{}", daemon.ready);
    let relays = open_relays(STREAMS);
    let rtp = start_rtp(&relays, 3, 50, &dir);

    // Separate RTCP (port + 1) on the first relay, both ways.
    let a_rtcp = udp_in("sv-a", SocketAddrV4::new(A_ADDR, PEER_PORT + 1));
    let b_rtcp = udp_in("sv-b", SocketAddrV4::new(B_ADDR, PEER_PORT + 1));
    let relay = relays[0];
    let mut buf = [0u8; 2048];
    let mut cnames = Vec::new();
    for i in 0..RTCP_PACKETS {
        let ssrc = 0x5eed_0000 + i % 2;
        let sent = identifying_rtcp(ssrc);
        a_rtcp
            .send_to(&sent, plus_one(relay.a_edge))
            .expect("A sends RTCP");
        let (n, from) = b_rtcp
            .recv_from(&mut buf)
            .unwrap_or_else(|error| panic!("B receives RTCP #{i}: {error}"));
        assert_eq!(from, std::net::SocketAddr::V4(plus_one(relay.b_edge)));
        cnames.push(assert_scrubbed(&buf[..n], &sent, ssrc));
    }
    assert!(
        cnames.windows(2).all(|w| w[0] == w[1]),
        "one party keeps one pseudonym: {cnames:?}"
    );
    let sent = identifying_rtcp(0xb0b0_0001);
    b_rtcp
        .send_to(&sent, plus_one(relay.b_edge))
        .expect("B sends RTCP");
    let (n, from) = a_rtcp.recv_from(&mut buf).expect("A receives B's RTCP");
    assert_eq!(from, std::net::SocketAddr::V4(plus_one(relay.a_edge)));
    let b_cname = assert_scrubbed(&buf[..n], &sent, 0xb0b0_0001);
    assert_ne!(
        b_cname, cnames[0],
        "the two sides have different pseudonyms"
    );
    // Broken RTCP (length beyond the datagram) is not forwarded.
    let mut broken = identifying_rtcp(1);
    broken[3] = 200;
    a_rtcp
        .send_to(&broken, plus_one(relay.a_edge))
        .expect("A sends broken RTCP");

    // rtcp-mux: RTCP on the RTP port is scrubbed, RTP on it is relayed unchanged.
    let mux_port = PEER_PORT + 1000;
    let mut control =
        Control::connect(Path::new(LAB_CONTROL_SOCKET)).unwrap_or_else(|error| panic!("{error}"));
    let answer = control
        .request(&format!(
            r#"{{"cmd":"relay-open","a_peer":"{}","b_peer":"{}","rtcp_mux":true}}"#,
            SocketAddrV4::new(A_ADDR, mux_port),
            SocketAddrV4::new(B_ADDR, mux_port),
        ))
        .unwrap_or_else(|error| panic!("relay-open: {error}"));
    let parsed: Value = serde_json::from_str(&answer).expect("relay-open answer");
    let mux_a: SocketAddrV4 = parsed["relays"][0]["a"]["edge"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("relay-open: {answer}"));
    let a_mux = udp_in("sv-a", SocketAddrV4::new(A_ADDR, mux_port));
    let b_mux = udp_in("sv-b", SocketAddrV4::new(B_ADDR, mux_port));
    let mut rtp_packet = vec![0x80u8, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
    rtp_packet.extend_from_slice(&[0xd5; 160]);
    for _ in 0..3 {
        a_mux.send_to(&rtp_packet, mux_a).expect("A sends RTP");
        let (n, _) = b_mux.recv_from(&mut buf).expect("B receives RTP");
        assert_eq!(&buf[..n], &rtp_packet[..], "RTP is relayed unchanged");
        let sent = identifying_rtcp(9);
        a_mux.send_to(&sent, mux_a).expect("A sends muxed RTCP");
        let (n, _) = b_mux.recv_from(&mut buf).expect("B receives muxed RTCP");
        assert_scrubbed(&buf[..n], &sent, 9);
    }
    assert!(
        b_rtcp.recv_from(&mut buf).is_err(),
        "the broken RTCP was not forwarded"
    );

    let (a_to_b, b_to_a) = finish(rtp);
    assert_lossless(&a_to_b, &b_to_a, STREAMS);
    let stats = stats();
    let rtcp_sent = u64::from(RTCP_PACKETS) + 1 + 1 + 3;
    println!("RTCP: {rtcp_sent} datagrams sent; stats {stats}");
    assert_eq!(counter(&stats, "xdp", "rtcp_pass"), rtcp_sent, "{stats}");
    assert_eq!(counter(&stats, "xdp", "relayed_rtcp"), 0, "{stats}");
    assert_eq!(
        counter(&stats, "userspace", "rtcp_scrubbed"),
        rtcp_sent - 1,
        "{stats}"
    );
    assert_eq!(counter(&stats, "userspace", "rtcp_dropped"), 1, "{stats}");
    assert_eq!(counter(&stats, "userspace", "relayed_rtcp"), rtcp_sent - 1);
    assert!(
        counter(&stats, "userspace", "rtcp_sdes_items_removed") >= 8 * (rtcp_sent - 1),
        "{stats}"
    );
    // The RTP streams were relayed in XDP; userspace carried RTCP and only the first packets
    // before the neighbours resolved.
    let sent_rtp = a_to_b.sent + b_to_a.sent;
    let xdp = counter(&stats, "xdp", "relayed_redirect");
    let userspace = counter(&stats, "userspace", "relayed") - (rtcp_sent - 1);
    assert!(
        userspace <= 4 * STREAMS as u64 + 3,
        "userspace relayed {userspace} RTP packets of {sent_rtp}: {stats}"
    );
    assert!(
        xdp >= sent_rtp.saturating_sub(userspace),
        "XDP relayed {xdp} of {sent_rtp}: {stats}"
    );
    assert!(
        daemon.terminate(Duration::from_secs(10)),
        "daemon did not stop cleanly on SIGTERM"
    );
}
