//! XDP mode: load, pin, relay through the entry program, then drop the daemon state, start again,
//! adopt the pinned maps and links, and check the flows survived and media kept flowing while no
//! daemon ran. Needs root (namespaces, veth, native XDP on veth, bpffs).
mod common;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;

use common::{Netns, recv, require_root, rtp, spawn_in, udp, veth};
use serde_json::{Value, json};
use sipveil_edge::config::Config;
use sipveil_edge::control::handle_line;
use sipveil_edge::daemon::Edge;
use sipveil_edge::dataplane::{self, AttachMode, lab};

fn call(edge: &Edge, req: Value) -> Value {
    let answer = handle_line(&edge.state, &req.to_string());
    assert_eq!(answer["ok"], json!(true), "request {req} failed: {answer}");
    answer
}

fn link_ifindex(instance: &str, iface: &str) -> u32 {
    let path = dataplane::pin_dir(instance).join(format!("link-{iface}"));
    let fd = dataplane::loader::open_pinned(&path)
        .unwrap_or_else(|e| panic!("pinned link {} missing: {e}", path.display()));
    sipveil_edge::sys::xdp_link_target(fd.as_fd())
        .expect("link info")
        .0
}

/// Removes the instance's pins and the peers' lab pins even when the test fails.
struct Cleanup {
    instance: String,
    lab_pins: Vec<std::path::PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = dataplane::unload(&self.instance, &[]);
        for dir in &self.lab_pins {
            let _ = lab::detach(dir);
        }
    }
}

#[test]
fn xdp_flows_survive_a_daemon_restart() {
    require_root();
    let instance = format!("svt-xdp-{}", std::process::id());
    let mut cleanup = Cleanup {
        instance: instance.clone(),
        lab_pins: Vec::new(),
    };
    let e = Netns::new("xe");
    let a = Netns::new("xa");
    let b = Netns::new("xb");
    veth(&e, "ea0", "198.18.1.1/24", &a, "a0", "198.18.1.2/24");
    veth(&e, "eb0", "198.18.2.1/24", &b, "b0", "198.18.2.2/24");
    // bpf_fib_lookup answers "forwarding disabled" unless the ingress device forwards.
    common::ip(&[
        "netns",
        "exec",
        &e.name,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.forwarding=1",
    ]);
    // veth hands frames over with a partial (offloaded) UDP checksum; a real NIC delivers the full
    // one. The program updates checksums incrementally, so the peers must send complete ones.
    for (ns, iface) in [(&a, "a0"), (&b, "b0")] {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "ethtool", "-K", iface, "tx", "off",
            ])
            .output()
            .expect("ethtool (apt-get install ethtool)");
        assert!(
            out.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Frames pushed into a veth by XDP are only received when the peer runs an XDP program.
    for (ns, iface) in [(&a, "a0"), (&b, "b0")] {
        let d = lab::default_lab_pin(Some(&ns.name), iface);
        cleanup.lab_pins.push(d.clone());
        let iface = iface.to_owned();
        ns.run(move || {
            lab::attach(
                "sv_pass",
                &iface,
                &d,
                false,
                &[],
                &lab::LabSettings::default(),
            )
            .expect("sv_pass on the peer")
        });
    }
    let config = format!(
        r#"
[dataplane]
interfaces = ["ea0", "eb0"]
xdp = "driver"
instance = "{instance}"

[media]
port_min = 32000
port_max = 32099
addresses = {{ a = "198.18.1.1", b = "198.18.2.1" }}
"#
    );
    let cfg = Config::parse(Path::new("test"), &config).expect("config");
    let (an, bn) = (a.name.clone(), b.name.clone());
    // Everything that opens relay sockets runs inside the edge namespace.
    let inst = instance.clone();
    e.run(move || scenario(&cfg, &inst, &an, &bn));
}

fn scenario(cfg: &Config, instance: &str, a: &str, b: &str) {
    // First daemon: open a relay, pass traffic both ways (the first packets resolve neighbours).
    let edge = Edge::start(cfg, false).expect("XDP edge starts");
    assert_eq!(edge.mode, "xdp");
    let dp = edge.dataplane.as_ref().expect("dataplane");
    assert!(!dp.adopted_maps, "fresh start creates the maps");
    assert!(
        dp.interfaces.iter().all(|i| i.mode == AttachMode::Driver),
        "{:?}",
        dp.interfaces
    );
    let r = call(
        &edge,
        json!({"cmd":"relay-open","a_peer":"198.18.1.2:4000","b_peer":"198.18.2.2:5000","latch":true}),
    );
    let ea: SocketAddr = r["relays"][0]["a"]["edge"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("ea");
    let eb: SocketAddr = r["relays"][0]["b"]["edge"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("eb");
    exchange(instance, a, b, ea, eb, 0);
    // The receivers may see a packet before the worker has reaped its send completion (where
    // `relayed` is counted): wait (bounded) until the counters settle.
    let mut stats = call(&edge, json!({"cmd":"stats"}));
    for _ in 0..100 {
        if stats["userspace"]["rx"] == stats["userspace"]["relayed"] {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        stats = call(&edge, json!({"cmd":"stats"}));
    }
    assert!(
        stats["xdp"]["rx"].as_u64().unwrap_or(0) > 0,
        "the program saw packets: {stats}"
    );
    // Each of the 6 packets went through XDP or, when the program passed it up (no neighbour yet
    // on the fresh veth), through the userspace relay on the same ports.
    let by_xdp = stats["xdp"]["relayed_redirect"].as_u64().unwrap_or(0)
        + stats["xdp"]["relayed_tx"].as_u64().unwrap_or(0);
    let by_user = stats["userspace"]["relayed"].as_u64().unwrap_or(0);
    assert_eq!(by_xdp + by_user, 6, "{stats}");
    assert_eq!(
        stats["xdp"]["fib_fail_pass"], stats["userspace"]["relayed"],
        "what XDP passed up, userspace relayed: {stats}"
    );
    // Drop the daemon state: workers stop, sockets close, XDP stays.
    drop(edge);

    let pinned = dataplane::read_pinned_flow_count(instance).expect("read pins");
    assert_eq!(pinned, Some(4), "the flows stay in the pinned map");
    let ifindexes = (link_ifindex(instance, "ea0"), link_ifindex(instance, "eb0"));
    assert!(
        ifindexes.0 != 0 && ifindexes.1 != 0,
        "links still attached: {ifindexes:?}"
    );

    // No daemon: media keeps flowing through XDP alone.
    let before = relayed_by_xdp(instance);
    exchange(instance, a, b, ea, eb, 100);
    let after = relayed_by_xdp(instance);
    assert!(
        after >= before + 6,
        "XDP relayed the packets while no daemon ran ({before} -> {after})"
    );

    // Second daemon: adopts maps, links and flows.
    let edge = Edge::start(cfg, false).expect("restarted edge");
    let dp = edge.dataplane.as_ref().expect("dataplane");
    assert!(dp.adopted_maps, "restart adopts the pinned maps");
    assert!(
        dp.interfaces.iter().all(|i| i.mode == AttachMode::Adopted),
        "{:?}",
        dp.interfaces
    );
    assert_eq!(edge.adopted_flows, 4);
    let list = call(&edge, json!({"cmd":"relay-list"}));
    let relays = list["relays"].as_array().expect("relays");
    assert_eq!(relays.len(), 1, "{list}");
    assert_eq!(relays[0]["id"], json!(ea.to_string()));
    assert_eq!(relays[0]["latch"], json!(true));
    assert_eq!(relays[0]["a"]["peer"], json!("198.18.1.2:4000"));
    assert!(
        relays[0]["stats"]["a_rtp"]["packets"].as_u64().unwrap_or(0) >= 6,
        "{list}"
    );
    assert_eq!(
        relays[0]["stats"]["a_rtp"]["latched"],
        json!("198.18.1.2:4000")
    );
    exchange(instance, a, b, ea, eb, 200);
    // A new relay gets other ports than the adopted one.
    let r = call(
        &edge,
        json!({"cmd":"relay-open","a_peer":"198.18.1.2:4002","b_peer":"198.18.2.2:5002"}),
    );
    assert_ne!(r["relays"][0]["a"]["edge"], json!(ea.to_string()));
    assert_ne!(r["relays"][0]["b"]["edge"], json!(eb.to_string()));
    drop(edge);

    // unload detaches and removes the pins.
    let report = dataplane::unload(instance, &[]).expect("unload");
    assert_eq!(report.detached.len(), 2);
    assert!(report.removed_pins);
    assert!(!dataplane::pin_dir(instance).exists());
}

fn relayed_by_xdp(instance: &str) -> u64 {
    let counters = dataplane::read_pinned_counters(instance)
        .expect("counters")
        .expect("pinned counters");
    counters
        .iter()
        .filter(|(c, _)| {
            matches!(
                c,
                sipveil_abi::Counter::RelayedTx | sipveil_abi::Counter::RelayedRedirect
            )
        })
        .map(|(_, v)| *v)
        .sum()
}

/// Three packets A -> B and three B -> A, each checked at the receiver; on a miss the counters are
/// printed before the assertion fails.
fn exchange(instance: &str, a: &str, b: &str, ea: SocketAddr, eb: SocketAddr, seq0: u16) {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let recv_b = spawn_in(b, move || {
        let s = udp("198.18.2.2:5000");
        let _ = bound_tx.send(());
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(recv(&s));
        }
        for i in 0..3u16 {
            s.send_to(&rtp(seq0 + 50 + i), eb).expect("B sends");
        }
        got
    });
    let recv_a = spawn_in(a, move || {
        let s = udp("198.18.1.2:4000");
        bound_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("B bound its socket");
        for i in 0..3u16 {
            s.send_to(&rtp(seq0 + i), ea).expect("A sends");
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(recv(&s));
        }
        got
    })
    .join()
    .expect("A thread");
    let at_b = recv_b.join().expect("B thread");
    for (i, g) in at_b.iter().enumerate() {
        let (p, from) = g
            .clone()
            .unwrap_or_else(|| panic!("B missed packet {i} (seq0 {seq0})"));
        assert_eq!(p, rtp(seq0 + i as u16));
        assert_eq!(from, eb);
    }
    if recv_a.iter().any(Option::is_none) || at_b.iter().any(Option::is_none) {
        eprintln!(
            "XDP counters: {:?}",
            dataplane::read_pinned_counters(instance)
        );
        for ns in [a, b] {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "nstat",
                    "-az",
                    "UdpInCsumErrors",
                    "UdpInDatagrams",
                ])
                .output();
            if let Ok(out) = out {
                eprintln!("{ns}: {}", String::from_utf8_lossy(&out.stdout));
            }
        }
    }
    for (i, g) in recv_a.iter().enumerate() {
        let (p, from) = g
            .clone()
            .unwrap_or_else(|| panic!("A missed packet {i} (seq0 {seq0})"));
        assert_eq!(p, rtp(seq0 + 50 + i as u16));
        assert_eq!(from, ea);
    }
}

#[test]
fn abi_and_map_checks_refuse_foreign_pins() {
    use aya::maps::{Array, Map, MapData};
    use sipveil_edge::config::XdpSetting;
    use sipveil_edge::dataplane::{Dataplane, DataplaneError, DataplaneOptions};

    require_root();
    let instance = format!("svt-abi-{}", std::process::id());
    let _cleanup = Cleanup {
        instance: instance.clone(),
        lab_pins: Vec::new(),
    };
    let opts = DataplaneOptions {
        instance: instance.clone(),
        interfaces: Vec::new(),
        xdp: XdpSetting::Auto,
        port_min: 30000,
        port_max: 30099,
    };
    let dp = Dataplane::open(&opts).expect("fresh data plane");
    assert!(!dp.adopted_maps);
    drop(dp);
    let dp = Dataplane::open(&opts).expect("adopts its own pins");
    assert!(dp.adopted_maps);
    drop(dp);

    // A pinned config written by another ABI version: refused before anything is attached.
    let dir = dataplane::pin_dir(&instance);
    let data = MapData::from_pin(dir.join(sipveil_abi::maps::CONFIG)).expect("pinned config");
    let mut config: Array<MapData, sipveil_abi::Config> =
        Array::try_from(Map::Array(data)).expect("config map");
    let mut value = config.get(&0, 0).expect("config entry");
    assert_eq!(value.abi_version, sipveil_abi::ABI_VERSION);
    assert_eq!(value.flags, sipveil_abi::CONFIG_F_RELAY);
    assert_eq!(
        (value.relay_port_min, value.relay_port_max, value.ttl),
        (30000, 30099, 64)
    );
    value.abi_version = sipveil_abi::ABI_VERSION + 99;
    config.set(0, value, 0).expect("write config");
    match Dataplane::open(&opts) {
        Err(DataplaneError::AbiMismatch { found, .. }) => {
            assert_eq!(found, sipveil_abi::ABI_VERSION + 99)
        }
        Err(e) => panic!("expected an ABI mismatch, got {e}"),
        Ok(_) => panic!("expected an ABI mismatch, the pins were adopted"),
    }

    // Pins left by ABI 1 (before the flood shield): the relay's four maps only, config version
    // 1. The version is checked before completeness, so this is an ABI mismatch, not "partial".
    for name in &sipveil_abi::maps::REQUIRED[4..] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    value.abi_version = 1;
    config.set(0, value, 0).expect("write config");
    match Dataplane::open(&opts) {
        Err(DataplaneError::AbiMismatch { found, .. }) => assert_eq!(found, 1),
        Err(e) => panic!("expected an ABI mismatch for ABI 1 pins, got {e}"),
        Ok(_) => panic!("expected an ABI mismatch, the ABI 1 pins were adopted"),
    }

    // An incomplete set of pins of this version is refused too.
    value.abi_version = sipveil_abi::ABI_VERSION;
    config.set(0, value, 0).expect("write config");
    std::fs::remove_file(dir.join(sipveil_abi::maps::TX_PORTS)).expect("remove a pin");
    match Dataplane::open(&opts) {
        Err(DataplaneError::PartialPins { found, .. }) => assert_eq!(found.len(), 3),
        Err(e) => panic!("expected partial pins, got {e}"),
        Ok(_) => panic!("expected partial pins, the pins were adopted"),
    }
    let report = dataplane::unload(&instance, &[]).expect("unload");
    assert!(report.removed_pins);
}
