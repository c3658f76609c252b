//! What RTCP privacy costs, and what the call side pays per call for the media relay's control
//! API. Prints figures; asserts nothing about speed (house rule 9).
//!
//! 1. `scrub`: the RTCP scrubber alone on typical compound packets (thread CPU clock, interleaved
//!    batches, median), against a plain copy of the same bytes.
//! 2. `relay`: the io_uring userspace relay on loopback (one worker, `--no-xdp` style table):
//!    worker-thread CPU per datagram (from `/proc/self/task/*/schedstat`) for RTP (relayed as is)
//!    and for RTCP (scrubbed), same sizes of run. In XDP mode RTP never gets here (the XDP
//!    relay costs ~80 ns per packet, see BENCHMARKS.md "XDP program cost"); RTCP does.
//! 3. `control`: `MediaRelay::open` / `update` / `activity` / `close` per call, on the
//!    userspace table and on a real `SV_FLOWS` BPF map (XDP mode; needs root, else SKIPPED).
//!
//! Run: `cargo bench -p sipveil-benches --bench rtcp_cost` (about 30 s).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipveil_abi::{FlowKey, maps};
use sipveil_edge::config::MediaConfig;
use sipveil_edge::media::counters::{UserCounter, UserCounters};
use sipveil_edge::media::flows::RelayOptions;
use sipveil_edge::media::rtcp::RtcpScrubber;
use sipveil_edge::media::table::{BpfFlowTable, FlowTable, UserFlowTable};
use sipveil_edge::media::{HoldSockets, MediaRelay};
use sipveil_edge::relay::RelayWorkers;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// SR (1 report block) + SDES (CNAME, NAME, TOOL) as a softphone sends it (~120 bytes).
fn typical_compound() -> Vec<u8> {
    let mut out = vec![0x81, 200, 0, 12];
    out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    out.extend_from_slice(&[0x11; 44]);
    let mut chunk = 0x1234_5678u32.to_be_bytes().to_vec();
    for (t, text) in [
        (1u8, &b"alice@192.168.1.23"[..]),
        (2, b"Alice Example"),
        (6, b"baresip v1.0.0 (x86_64/linux)"),
    ] {
        chunk.push(t);
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
    out
}

fn rr_only() -> Vec<u8> {
    let mut out = vec![0x81, 201, 0, 7];
    out.extend_from_slice(&[0x22; 28]);
    out
}

fn bench_scrub() {
    println!("\n== scrub: RtcpScrubber::scrub, thread CPU, median of 25 interleaved batches ==");
    let s = RtcpScrubber::with_secret([3; 32]);
    let side = FlowKey::v4([198, 18, 1, 1], 30_000);
    let inputs = [
        ("SR+SDES(3 items)", typical_compound()),
        ("RR only", rr_only()),
    ];
    const BATCH: usize = 20_000;
    let mut out = Vec::with_capacity(4096);
    for (name, input) in &inputs {
        let (mut scrub_ns, mut copy_ns) = (Vec::new(), Vec::new());
        for _ in 0..25 {
            let t = thread_cpu_ns();
            for _ in 0..BATCH {
                let r = s.scrub(&side, std::hint::black_box(input), &mut out);
                std::hint::black_box((&r, &out));
            }
            scrub_ns.push((thread_cpu_ns() - t) as f64 / BATCH as f64);
            let t = thread_cpu_ns();
            for _ in 0..BATCH {
                out.clear();
                out.extend_from_slice(std::hint::black_box(input));
                std::hint::black_box(&out);
            }
            copy_ns.push((thread_cpu_ns() - t) as f64 / BATCH as f64);
        }
        println!(
            "{name:>18} ({} B): scrub {:7.1} ns/packet, plain copy {:5.1} ns/packet",
            input.len(),
            median(scrub_ns),
            median(copy_ns)
        );
    }
}

/// Sum of on-CPU ns (schedstat) of this process's threads whose name starts with `prefix`.
fn threads_cpu_ns(prefix: &str) -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for task in dir.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn media_cfg(port_min: u16) -> MediaConfig {
    MediaConfig {
        port_min,
        port_max: port_min + 1999,
        idle_timeout_secs: 60,
        addr_a: IpAddr::V4(Ipv4Addr::LOCALHOST),
        addr_b: IpAddr::V4(Ipv4Addr::LOCALHOST),
        workers: 1,
    }
}

/// Sends `n` copies of `payload` to `to` in bursts of 32, waiting (bounded) for the relay to
/// receive each burst so the socket buffers never overflow; drains `sink` meanwhile. Returns
/// (datagrams the relay received, worker CPU ns).
fn pump(
    tx: &UdpSocket,
    to: SocketAddr,
    sink: &UdpSocket,
    payload: &[u8],
    n: u64,
    counters: &UserCounters,
) -> (u64, u64) {
    let rx0 = counters.get(UserCounter::Rx);
    let cpu0 = threads_cpu_ns("sv-relay");
    let mut buf = [0u8; 2048];
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < n && Instant::now() < deadline {
        for _ in 0..32 {
            let _ = tx.send_to(payload, to);
            sent += 1;
        }
        while counters.get(UserCounter::Rx) - rx0 + 8 < sent && Instant::now() < deadline {
            while sink.recv_from(&mut buf).is_ok() {}
            std::thread::yield_now();
        }
        while sink.recv_from(&mut buf).is_ok() {}
    }
    let settle = Instant::now() + Duration::from_secs(2);
    while counters.get(UserCounter::Rx) - rx0 < sent && Instant::now() < settle {
        while sink.recv_from(&mut buf).is_ok() {}
        std::thread::sleep(Duration::from_millis(1));
    }
    (
        counters.get(UserCounter::Rx) - rx0,
        threads_cpu_ns("sv-relay") - cpu0,
    )
}

fn bench_relay(name: &str, table: Arc<dyn FlowTable>, port_min: u16) {
    println!(
        "\n== relay ({name}): io_uring userspace relay on loopback, worker CPU per datagram =="
    );
    let counters = Arc::new(UserCounters::default());
    let workers = match RelayWorkers::start(1, table.clone(), counters.clone()) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            println!("SKIPPED: relay: io_uring relay workers do not start here: {e}");
            return;
        }
    };
    let mut relay = MediaRelay::new(
        media_cfg(port_min),
        table,
        workers.clone(),
        counters.clone(),
    )
    .expect("media relay");
    let a = UdpSocket::bind("127.0.0.1:0").expect("a rtp");
    let a_port = a.local_addr().expect("addr").port();
    // Peers: A at a_port (sends), B RTP and RTCP sinks.
    let b = UdpSocket::bind("127.0.0.1:0").expect("b rtp");
    let b_addr = b.local_addr().expect("addr");
    let b_rtcp = UdpSocket::bind(SocketAddr::new(b_addr.ip(), b_addr.port() + 1));
    let Ok(b_rtcp) = b_rtcp else {
        println!("SKIPPED: relay: port {} taken", b_addr.port() + 1);
        return;
    };
    for s in [&b, &b_rtcp] {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let info = relay
        .open(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a_port),
            b_addr,
            RelayOptions::default(),
        )
        .expect("open");
    let rtcp_edge = info.a.edge_rtcp.expect("rtcp port");
    let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
    rtp.extend_from_slice(&[0xd5; 160]);
    let compound = typical_compound();
    const N: u64 = 100_000;
    std::thread::sleep(Duration::from_millis(50));
    let mut rows = Vec::new();
    for round in 0..3 {
        let (n1, c1) = pump(&a, info.a.edge, &b, &rtp, N, &counters);
        let (n2, c2) = pump(&a, rtcp_edge, &b_rtcp, &compound, N, &counters);
        rows.push((c1 as f64 / n1.max(1) as f64, c2 as f64 / n2.max(1) as f64));
        println!(
            "round {round}: RTP {n1} datagrams {:.2} us each; RTCP {n2} datagrams {:.2} us each",
            c1 as f64 / n1.max(1) as f64 / 1e3,
            c2 as f64 / n2.max(1) as f64 / 1e3
        );
    }
    let rtp_ns = median(rows.iter().map(|r| r.0).collect());
    let rtcp_ns = median(rows.iter().map(|r| r.1).collect());
    println!(
        "median: RTP through userspace {:.2} us, RTCP scrubbed through userspace {:.2} us \
         (ratio {:.2}); scrubbed {}, dropped {}",
        rtp_ns / 1e3,
        rtcp_ns / 1e3,
        rtcp_ns / rtp_ns,
        counters.get(UserCounter::RtcpScrubbed),
        counters.get(UserCounter::RtcpDropped)
    );
    println!(
        "per call (2 directions x 1 RTCP/s, RFC 3550 allows 1 per 5 s): {:.1} us of relay-worker \
         CPU per call-second = {:.4} % of a core",
        2.0 * rtcp_ns / 1e3,
        2.0 * rtcp_ns / 1e9 * 100.0
    );
    relay.close_all().expect("close");
}

fn control_round(relay: &mut MediaRelay, calls: usize) -> [f64; 4] {
    let peer = |p: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), p);
    let mut ids = Vec::with_capacity(calls);
    let t = Instant::now();
    for i in 0..calls {
        let info = relay
            .open(
                peer(20_000 + 2 * i as u16),
                peer(40_000 + 2 * i as u16),
                RelayOptions::default(),
            )
            .expect("open");
        ids.push(info.id);
    }
    let open = t.elapsed().as_nanos() as f64 / calls as f64;
    let t = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        relay
            .update(
                *id,
                peer(21_000 + 2 * i as u16),
                peer(41_000 + 2 * i as u16),
                RelayOptions::default(),
                false,
            )
            .expect("update");
    }
    let update = t.elapsed().as_nanos() as f64 / calls as f64;
    let t = Instant::now();
    for id in &ids {
        std::hint::black_box(relay.last_activity(*id).expect("activity"));
    }
    let activity = t.elapsed().as_nanos() as f64 / calls as f64;
    let t = Instant::now();
    for id in &ids {
        relay.close(*id).expect("close");
    }
    let close = t.elapsed().as_nanos() as f64 / calls as f64;
    [open, update, activity, close]
}

fn bench_control() {
    println!("\n== control: MediaRelay per call (wall clock, median of 5 rounds of 200 calls) ==");
    const CALLS: usize = 200;
    let run = |name: &str, table: Arc<dyn FlowTable>| {
        let mut relay = MediaRelay::new(
            media_cfg(54_000),
            table,
            Arc::new(HoldSockets::default()),
            Arc::new(UserCounters::default()),
        )
        .expect("media relay");
        let rounds: Vec<[f64; 4]> = (0..5).map(|_| control_round(&mut relay, CALLS)).collect();
        let m = |i: usize| median(rounds.iter().map(|r| r[i]).collect()) / 1e3;
        println!(
            "{name:>16}: open {:6.1} us, update {:6.1} us, last_activity {:6.1} us, close {:6.1} us",
            m(0),
            m(1),
            m(2),
            m(3)
        );
    };
    run("userspace table", Arc::new(UserFlowTable::new()));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: control on SV_FLOWS: needs root to load the entry program's maps");
        return;
    }
    let mut entry = sipveil_tests::xdp::Entry::load();
    let map = entry.ebpf.take_map(maps::FLOWS).expect("SV_FLOWS");
    let map = aya::maps::HashMap::try_from(map).expect("SV_FLOWS is a hash map");
    run("SV_FLOWS (XDP)", Arc::new(BpfFlowTable::new(map)));
}

fn main() {
    // `cargo bench` passes --bench; nothing else is parsed.
    bench_scrub();
    bench_relay("userspace table", Arc::new(UserFlowTable::new()), 52_000);
    // In XDP mode the relay looks each datagram's flow up in SV_FLOWS (a bpf syscall).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut entry = sipveil_tests::xdp::Entry::load();
        let map = entry.ebpf.take_map(maps::FLOWS).expect("SV_FLOWS");
        let map = aya::maps::HashMap::try_from(map).expect("SV_FLOWS is a hash map");
        bench_relay("SV_FLOWS table", Arc::new(BpfFlowTable::new(map)), 56_000);
    } else {
        println!("SKIPPED: relay on SV_FLOWS: needs root to load the entry program's maps");
    }
    bench_control();
}
