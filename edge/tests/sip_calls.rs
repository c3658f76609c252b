//! Calls through the privacy B2BUA of the real daemon on loopback (`sipveil run --no-xdp`, no
//! root): a caller and callees on plain UDP sockets, media through the userspace relay.
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sipveil_b2bua::{Identifier, audit, identifiers_of};
use sipveil_sip::{Limits, Message, parse_datagram};

struct Daemon {
    child: Child,
    dir: PathBuf,
    sip: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Users file for `auth.test`: alice / secret (SHA-256 and MD5 HA1), refuse_anonymous for bob.
fn users_file(dir: &Path) -> PathBuf {
    let p = dir.join("auth.users");
    let line = sipveil_registrar::format_user_line("alice", "auth.test", "secret", true);
    let line_b =
        sipveil_registrar::format_user_line("bob", "auth.test", "pw", true) + " refuse-anonymous";
    std::fs::write(&p, format!("{line}\n{line_b}\n")).expect("users file");
    p
}

fn start(name: &str, sip_port: u16, media_base: u16, extra: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("sv-calls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let users = users_file(&dir);
    let config = dir.join("sipveil.toml");
    let text = format!(
        r#"[dataplane]
interfaces = ["lo"]
xdp = "off"
instance = "sipcalls{name}"

[media]
port_min = {media_base}
port_max = {media_max}
addresses = {{ a = "127.0.0.1", b = "127.0.0.1" }}

[control]
socket = "{dir}/ctl.sock"

[sip]
workers = 2
udp = ["127.0.0.1:{sip_port}"]
server = "sipveil-test"

[registrar]
database = "{dir}/registrar.redb"

[[domain]]
name = "open.test"
policy = "open"
anonymous_callers = true

[[domain]]
name = "closed.test"
policy = "open"
anonymous_callers = false

[[domain]]
name = "auth.test"
policy = "authenticated"
realm = "auth.test"
users = "{users}"
digest = ["MD5"]
anonymous_callers = true
{extra}
"#,
        dir = dir.display(),
        users = users.display(),
        media_max = media_base + 99,
    );
    std::fs::write(&config, text).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(["run", "--no-xdp", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sipveil");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(ready["ready"], true, "{line}");
    Daemon {
        child,
        dir,
        sip: SocketAddr::from(([127, 0, 0, 1], sip_port)),
    }
}

fn ctl(d: &Daemon, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(args)
        .arg("--socket")
        .arg(d.dir.join("ctl.sock"))
        .output()
        .expect("sipveil ctl command");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn metric(d: &Daemon, name: &str) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(["metrics", "--socket"])
        .arg(d.dir.join("ctl.sock"))
        .output()
        .expect("sipveil metrics");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A SIP party on a UDP socket.
struct Party {
    sock: UdpSocket,
    edge: SocketAddr,
}

impl Party {
    fn new(edge: SocketAddr) -> Party {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Party { sock, edge }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    fn send(&self, text: &str) {
        self.sock.send_to(text.as_bytes(), self.edge).expect("send");
    }

    /// The next message for which `want` holds (others are skipped), within 5 s.
    fn expect(&self, what: &str, want: impl Fn(&Message) -> bool) -> (Message, Bytes) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let raw = Bytes::copy_from_slice(&buf[..n]);
            if let Ok(m) = parse_datagram(raw.clone(), &Limits::default())
                && want(&m)
            {
                return (m, raw);
            }
        }
        panic!("{what}: nothing within 5 s");
    }

    fn expect_status(&self, code: u16) -> (Message, Bytes) {
        self.expect(
            &format!("status {code}"),
            |m| matches!(m, Message::Response(r) if r.status().as_u16() == code),
        )
    }

    fn expect_method(&self, method: &str) -> (Message, Bytes) {
        self.expect(
            &format!("a {method}"),
            |m| matches!(m, Message::Request(r) if r.method().as_bytes() == method.as_bytes()),
        )
    }

    /// Answers `req` with `code`, adding `to_tag` and optionally a body / Contact.
    fn answer(&self, req: &Message, code: u16, to_tag: &str, sdp: Option<&str>) {
        let Message::Request(r) = req else {
            panic!("not a request")
        };
        let mut out = format!("SIP/2.0 {code} Whatever\r\n");
        for h in r.headers() {
            let name = String::from_utf8_lossy(h.name().as_bytes()).into_owned();
            let value = String::from_utf8_lossy(h.value()).into_owned();
            match name.to_ascii_lowercase().as_str() {
                "via" | "from" | "call-id" | "cseq" => {
                    out.push_str(&format!("{name}: {value}\r\n"))
                }
                "to" if value.contains("tag=") => out.push_str(&format!("To: {value}\r\n")),
                "to" => out.push_str(&format!("To: {value};tag={to_tag}\r\n")),
                _ => {}
            }
        }
        out.push_str(&format!(
            "Contact: <sip:callee@{}>\r\nServer: BobPhone-secret-9.9\r\n",
            self.addr()
        ));
        match sdp {
            Some(s) => out.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{s}",
                s.len()
            )),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        self.send(&out);
    }

    fn register(&self, user: &str, domain: &str) {
        let me = self.addr();
        self.send(&format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKreg{user}{p}\r\n\
             From: <sip:{user}@{domain}>;tag=r{user}\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: reg-{user}-{p}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{me}>\r\n\
             Max-Forwards: 70\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n",
            p = me.port()
        ));
        self.expect_status(200);
    }
}

fn sdp(owner: &str, port: u16) -> String {
    format!(
        "v=0\r\no={owner} 1 1 IN IP4 127.0.0.1\r\ns={owner}-session\r\nc=IN IP4 127.0.0.1\r\n\
         t=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// The caller's INVITE: identifiers a leak detector would find (host name in Call-ID, a LAN
/// address in a custom header, the user agent).
fn invite(
    caller: &Party,
    to: &str,
    from: &str,
    call_id: &str,
    cseq: u32,
    body: &str,
    extra: &str,
) -> String {
    let me = caller.addr();
    format!(
        "INVITE sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}{cseq}\r\n\
         From: \"Alice Secret\" <sip:{from}>;tag=alicetag{call_id}\r\nTo: <sip:{to}>\r\n\
         Call-ID: {call_id}@alice-laptop.home\r\nCSeq: {cseq} INVITE\r\nMax-Forwards: 70\r\n\
         Contact: <sip:alice@{me}>\r\nUser-Agent: AlicePhone-7.7.7\r\nX-Home: 192.168.77.20\r\n\
         {extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn header(m: &Message, name: &str) -> String {
    let headers = match m {
        Message::Request(r) => r.headers(),
        Message::Response(r) => r.headers(),
    };
    headers
        .iter()
        .find(|h| h.name().as_bytes().eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| String::from_utf8_lossy(h.value()).into_owned())
        .unwrap_or_default()
}

fn body(m: &Message) -> String {
    let b = match m {
        Message::Request(r) => r.body(),
        Message::Response(r) => r.body(),
    };
    String::from_utf8_lossy(b).into_owned()
}

/// The `c=`/`m=audio` address of an SDP body.
fn media_addr(sdp: &str) -> SocketAddr {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("m= line");
    format!("{ip}:{port}").parse().expect("media address")
}

fn contact_uri(m: &Message) -> String {
    let c = header(m, "Contact");
    c.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Builds an in-dialog request from the caller (ACK/BYE/INVITE) after a 2xx `ok`.
fn in_dialog(
    caller: &Party,
    ok: &Message,
    method: &str,
    cseq: u32,
    call_id: &str,
    body: Option<&str>,
) -> String {
    let me = caller.addr();
    let to = header(ok, "To");
    let from = header(ok, "From");
    let target = contact_uri(ok);
    let (ct, b) = match body {
        Some(b) => ("Content-Type: application/sdp\r\n".to_owned(), b.to_owned()),
        None => (String::new(), String::new()),
    };
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{cseq}{call_id}\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}@alice-laptop.home\r\nCSeq: {cseq} {m}\r\n\
         Max-Forwards: 70\r\nContact: <sip:alice@{me}>\r\n{ct}Content-Length: {}\r\n\r\n{b}",
        b.len(),
        m = if method == "ACK" { "ACK" } else { method },
    )
}

fn alice_identifiers(raw: &[u8]) -> Vec<Identifier> {
    let Ok(m) = parse_datagram(Bytes::copy_from_slice(raw), &Limits::default()) else {
        panic!("caller's own INVITE does not parse");
    };
    let ids = identifiers_of(&m, &["127.0.0.1".parse().expect("ip")], &[]);
    assert!(
        !ids.is_empty(),
        "the caller's INVITE reveals identifiers to look for"
    );
    ids
}

/// Sends a few RTP-sized datagrams from `from` to `to` and expects them at `at`.
fn media_crosses(from: &UdpSocket, to: SocketAddr, at: &UdpSocket) -> bool {
    at.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    for i in 0..25u8 {
        let mut pkt = vec![0x80, 0x00, 0, i, 0, 0, 0, i, 0x11, 0x22, 0x33, 0x44];
        pkt.extend_from_slice(&[0xd5; 160]);
        from.send_to(&pkt, to).expect("rtp send");
        if let Ok((n, _)) = at.recv_from(&mut buf)
            && n == pkt.len()
        {
            return true;
        }
    }
    false
}

#[test]
fn basic_call_with_media_bye_from_caller_then_callee() {
    let d = start("basic", 25_260, 42_000, "");
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let alice_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let bob_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let a_port = alice_rtp.local_addr().expect("addr").port();
    let b_port = bob_rtp.local_addr().expect("addr").port();

    for (round, bye_from_caller) in [(1, true), (2, false)] {
        let call_id = format!("c{round}");
        let inv = invite(
            &alice,
            "bob@open.test",
            "alice@open.test",
            &call_id,
            1,
            &sdp("alice", a_port),
            "",
        );
        let alice_ids = alice_identifiers(inv.as_bytes());
        alice.send(&inv);
        let (far, far_raw) = bob.expect_method("INVITE");
        // Nothing of the caller crosses (loopback addresses are the edge's and the callee's own).
        let findings = audit(&far_raw, &alice_ids, &["127.0.0.1".parse().expect("ip")]);
        assert!(
            findings.is_empty(),
            "far leg leaks {findings:?}:\n{}",
            String::from_utf8_lossy(&far_raw)
        );
        let edge_b_media = media_addr(&body(&far));
        assert_ne!(
            edge_b_media.port(),
            a_port,
            "the offer was anchored on the relay"
        );
        bob.answer(&far, 180, "bobtag", None);
        alice.expect_status(180);
        bob.answer(&far, 200, "bobtag", Some(&sdp("bob", b_port)));
        let (ok, ok_raw) = alice.expect_status(200);
        let ok_text = String::from_utf8_lossy(&ok_raw).into_owned();
        assert!(
            !ok_text.contains("BobPhone"),
            "the callee's Server crossed: {ok_text}"
        );
        let edge_a_media = media_addr(&body(&ok));
        alice.send(&in_dialog(&alice, &ok, "ACK", 1, &call_id, None));
        bob.expect_method("ACK");

        // Media both ways through the userspace relay.
        assert!(
            media_crosses(&alice_rtp, edge_a_media, &bob_rtp),
            "RTP A→B did not cross the relay"
        );
        assert!(
            media_crosses(&bob_rtp, edge_b_media, &alice_rtp),
            "RTP B→A did not cross the relay"
        );

        let calls = ctl(&d, &["calls", "--json"]);
        assert_eq!(calls["calls"].as_array().map(Vec::len), Some(1), "{calls}");
        assert_eq!(calls["calls"][0]["state"], "answered", "{calls}");

        if bye_from_caller {
            alice.send(&in_dialog(&alice, &ok, "BYE", 2, &call_id, None));
            let (bye, _) = bob.expect_method("BYE");
            bob.answer(&bye, 200, "bobtag", None);
            alice.expect_status(200);
        } else {
            // The callee hangs up: BYE toward the edge's Contact on its leg.
            let Message::Request(far_req) = &far else {
                unreachable!()
            };
            let me = bob.addr();
            let bye = format!(
                "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbobbye{round}\r\n\
                 From: {to};tag=bobtag\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 7 BYE\r\n\
                 Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                target = contact_uri(&far),
                to = header(&far, "To"),
                from = header(&far, "From"),
                cid = String::from_utf8_lossy(&far_req.call_id().expect("call-id")),
            );
            bob.send(&bye);
            let (bye_a, _) = alice.expect_method("BYE");
            alice.answer(&bye_a, 200, "x", None);
            bob.expect_status(200);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let calls = ctl(&d, &["calls", "--json"]);
            if calls["calls"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            assert!(Instant::now() < deadline, "call still listed: {calls}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(metric(&d, "sipveil_privacy_leaks_total"), 0.0);
    assert_eq!(metric(&d, "sipveil_calls_total{result=\"answered\"}"), 2.0);
}
