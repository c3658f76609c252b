//! End to end: the io_uring userspace relay (XDP off) over real sockets in a namespace, with
//! latching and strict-source drops. Needs root (creates a network namespace).
mod common;

use std::net::SocketAddr;

use common::{Netns, recv, require_root, rtp, udp};
use serde_json::{Value, json};
use sipveil_edge::config::Config;
use sipveil_edge::control::handle_line;
use sipveil_edge::daemon::Edge;

const CONFIG: &str = r#"
[dataplane]
xdp = "off"
instance = "svt-user"

[media]
port_min = 31000
port_max = 31099
idle_timeout_secs = 60
addresses = { a = "198.18.1.1", b = "198.18.2.1" }
workers = 2
"#;

fn call(edge: &Edge, req: Value) -> Value {
    let answer = handle_line(&edge.state, &req.to_string());
    assert_eq!(answer["ok"], json!(true), "request {req} failed: {answer}");
    answer
}

fn addr(v: &Value) -> SocketAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {v}"))
}

#[test]
fn userspace_relay_latches_and_drops_strict() {
    require_root();
    let ns = Netns::new("user");
    for a in [
        "198.18.1.1",
        "198.18.2.1",
        "198.18.1.2",
        "198.18.2.2",
        "198.18.1.3",
    ] {
        common::ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            "lo",
        ]);
    }
    ns.run(|| {
        let cfg = Config::parse(std::path::Path::new("test"), CONFIG).expect("config");
        let edge = Edge::start(&cfg, true).expect("edge starts without XDP");
        assert_eq!(edge.mode, "userspace");

        // Relay 1: latching. A announces 198.18.1.2:4000 but really sends from :4100 (NAT).
        let r = call(
            &edge,
            json!({"cmd":"relay-open","a_peer":"198.18.1.2:4000","b_peer":"198.18.2.2:5000","latch":true}),
        );
        let relay = &r["relays"][0];
        let (ea, eb) = (addr(&relay["a"]["edge"]), addr(&relay["b"]["edge"]));
        assert_eq!(ea.ip().to_string(), "198.18.1.1");
        assert_eq!(eb.ip().to_string(), "198.18.2.1");
        let a = udp("198.18.1.2:4100");
        let b = udp("198.18.2.2:5000");
        for seq in 0..3u16 {
            a.send_to(&rtp(seq), ea).expect("A sends");
            let (got, from) = recv(&b).expect("B receives A's packet through the relay");
            assert_eq!(got, rtp(seq));
            assert_eq!(from, eb, "B sees the edge, not A");
        }
        for seq in 10..13u16 {
            b.send_to(&rtp(seq), eb).expect("B sends");
            let (got, from) = recv(&a).expect("A (latched :4100) receives B's packet");
            assert_eq!(got, rtp(seq));
            assert_eq!(from, ea, "A sees the edge, not B");
        }
        // RTCP on port + 1, B -> A: B's RTCP port is 5001, A's latched RTCP source is learned
        // separately (latching is per flow), so send A's RTCP first.
        let a_rtcp = udp("198.18.1.2:4101");
        let b_rtcp = udp("198.18.2.2:5001");
        // A receiver report (RR, no report blocks): it carries no identity, so the scrubber
        // forwards it unchanged.
        let rtcp_pkt = [0x80u8, 201, 0, 1, 0, 0, 0, 1];
        a_rtcp
            .send_to(&rtcp_pkt, SocketAddr::new(ea.ip(), ea.port() + 1))
            .expect("A RTCP");
        let (got, _) = recv(&b_rtcp).expect("B receives RTCP");
        assert_eq!(got, rtcp_pkt);

        // Relay 2: strict. A hostile source (198.18.1.3) is dropped, the announced one relayed.
        let r = call(
            &edge,
            json!({"cmd":"relay-open","a_peer":"198.18.1.2:4002","b_peer":"198.18.2.2:5002","strict":true,"rtcp_mux":true}),
        );
        let relay2 = &r["relays"][0];
        let ea2 = addr(&relay2["a"]["edge"]);
        assert!(relay2["a"]["edge_rtcp"].is_null());
        let hostile = udp("198.18.1.3:4002");
        let a2 = udp("198.18.1.2:4002");
        let b2 = udp("198.18.2.2:5002");
        hostile.send_to(&rtp(1), ea2).expect("hostile sends");
        a2.send_to(&rtp(2), ea2).expect("A2 sends");
        let (got, _) = recv(&b2).expect("B2 receives the announced source's packet");
        assert_eq!(got, rtp(2), "the hostile packet was not relayed");

        // A receiver may see a packet before the worker reaps its send completion (where
        // `relayed` is counted): wait, bounded, until every received packet is accounted for.
        let mut stats = call(&edge, json!({"cmd":"stats"}));
        for _ in 0..100 {
            let u = &stats["userspace"];
            let done = u["relayed"].as_u64().unwrap_or(0)
                + u["strict_source_drop"].as_u64().unwrap_or(0);
            if Some(done) == u["rx"].as_u64() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            stats = call(&edge, json!({"cmd":"stats"}));
        }
        let u = &stats["userspace"];
        assert_eq!(stats["mode"], json!("userspace"));
        assert_eq!(u["strict_source_drop"], json!(1), "{stats}");
        assert_eq!(u["relayed"], json!(3 + 3 + 1 + 1), "{stats}");
        assert_eq!(u["relayed_rtcp"], json!(1), "{stats}");
        assert_eq!(u["latched"].as_u64(), Some(3), "A RTP, B RTP, A RTCP: {stats}");
        assert_eq!(stats["relays"], json!(2));
        assert_eq!(stats["flows"], json!(6));

        let list = call(&edge, json!({"cmd":"relay-list"}));
        let first = list["relays"]
            .as_array()
            .and_then(|l| l.iter().find(|r| addr(&r["id"]) == ea))
            .expect("relay 1 listed")
            .clone();
        assert_eq!(first["stats"]["a_rtp"]["packets"], json!(3));
        assert_eq!(first["stats"]["a_rtp"]["latched"], json!("198.18.1.2:4100"));
        assert_eq!(first["stats"]["b_rtp"]["dst"], json!("198.18.1.2:4100"));

        // Close: the ports stop relaying.
        call(&edge, json!({"cmd":"relay-close","id": ea.to_string()}));
        a.send_to(&rtp(99), ea).expect("A sends after close");
        assert!(recv(&b).is_none(), "nothing is relayed after relay-close");
        let closed = call(&edge, json!({"cmd":"relay-close","all":true}));
        assert_eq!(closed["closed"], json!(1));
        let bad = handle_line(&edge.state, r#"{"cmd":"relay-close","id":"198.18.1.1:1"}"#);
        assert_eq!(bad["kind"], json!("not_found"));
    });
}

#[test]
fn userspace_relay_survives_a_burst() {
    require_root();
    let ns = Netns::new("burst");
    for a in ["198.18.1.1", "198.18.2.1", "198.18.1.2", "198.18.2.2"] {
        common::ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            "lo",
        ]);
    }
    ns.run(|| {
        let cfg = Config::parse(std::path::Path::new("test"), CONFIG).expect("config");
        let edge = Edge::start(&cfg, true).expect("edge starts without XDP");
        let r = call(
            &edge,
            json!({"cmd":"relay-open","a_peer":"198.18.1.2:4000","b_peer":"198.18.2.2:5000"}),
        );
        let ea = addr(&r["relays"][0]["a"]["edge"]);
        let a = udp("198.18.1.2:4000");
        let b = udp("198.18.2.2:5000");
        // Room for the whole burst at the receiver (root may exceed rmem_max).
        nix::sys::socket::setsockopt(&b, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20))
            .expect("SO_RCVBUFFORCE");
        // More datagrams than the provided buffer ring holds (1024), as fast as we can send.
        const BURST: u16 = 3000;
        for seq in 0..BURST {
            a.send_to(&rtp(seq), ea).expect("A sends");
        }
        let mut got = 0u32;
        while recv(&b).is_some() {
            got += 1;
            if got == u32::from(BURST) {
                break;
            }
        }
        assert!(got > 0, "nothing of the burst arrived");
        // Whatever the kernel dropped on the way, the relay still relays afterwards.
        a.send_to(&rtp(60000), ea).expect("A sends after the burst");
        let (last, _) = recv(&b).expect("the relay still works after the burst");
        assert_eq!(last, rtp(60000));
        let mut stats = call(&edge, json!({"cmd":"stats"}));
        for _ in 0..100 {
            if stats["userspace"]["rx"] == stats["userspace"]["relayed"] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            stats = call(&edge, json!({"cmd":"stats"}));
        }
        let u = &stats["userspace"];
        assert_eq!(
            u["rx"], u["relayed"],
            "every received datagram was relayed: {stats}"
        );
        assert_eq!(u["send_error"], json!(0), "{stats}");
        assert!(
            u["relayed"].as_u64() >= Some(u64::from(got) + 1),
            "B cannot receive more than the relay sent ({got} + 1): {stats}"
        );
    });
}
