//! Calls through the privacy B2BUA of the real daemon on loopback (`sipveil run --no-xdp`, no
//! root): a caller and callees on plain UDP sockets, media through the userspace relay.
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};
use serde_json::Value;
use sipveil_b2bua::{Identifier, audit, identifiers_of};
use sipveil_sip::{Limits, Message, parse_datagram};

struct Daemon {
    child: Child,
    dir: PathBuf,
    sip: SocketAddr,
    config: PathBuf,
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
name = "private.test"
policy = "open"
anonymous_callers = true
refuse_anonymous = true

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
    let child = common::start_no_xdp(&config);
    Daemon {
        child,
        dir,
        sip: SocketAddr::from(([127, 0, 0, 1], sip_port)),
        config,
    }
}

fn ctl(d: &Daemon, args: &[&str]) -> Value {
    common::control(&d.dir.join("ctl.sock"), args)
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

    /// Answers `req` with `code`, adding `to_tag` and optionally a body / Contact; returns
    /// what was sent.
    fn answer(&self, req: &Message, code: u16, to_tag: &str, sdp: Option<&str>) -> String {
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
        out
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
        let bob_ok = bob.answer(&far, 200, "bobtag", Some(&sdp("bob", b_port)));
        let (ok, ok_raw) = alice.expect_status(200);
        let ok_text = String::from_utf8_lossy(&ok_raw).into_owned();
        assert!(
            !ok_text.contains("BobPhone"),
            "the callee's Server crossed: {ok_text}"
        );
        // Nothing of the callee crosses back either (its AOR is what the caller dialled).
        let bob_msg = parse_datagram(Bytes::from(bob_ok), &Limits::default()).expect("own 200");
        let bob_ids = identifiers_of(
            &bob_msg,
            &["127.0.0.1".parse().expect("ip")],
            &[b"bob@open.test"],
        );
        assert!(!bob_ids.is_empty());
        let findings = audit(&ok_raw, &bob_ids, &["127.0.0.1".parse().expect("ip")]);
        assert!(
            findings.is_empty(),
            "caller leg leaks {findings:?}:\n{ok_text}"
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
        let table = Command::new(env!("CARGO_BIN_EXE_sipveil"))
            .args(["calls", "--socket"])
            .arg(d.dir.join("ctl.sock"))
            .output()
            .expect("sipveil calls");
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(
            table.contains("answered") && table.contains("1 call(s)"),
            "{table}"
        );
        assert!(
            !table.contains(&alice.addr().port().to_string()),
            "no party address: {table}"
        );

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

fn status(m: &Message) -> u16 {
    match m {
        Message::Response(r) => r.status().as_u16(),
        Message::Request(_) => 0,
    }
}

/// A final answer to the caller (provisionals skipped).
fn final_status(p: &Party) -> (Message, Bytes) {
    p.expect("a final response", |m| status(m) >= 200)
}

/// A final answer of call `call_id` (retransmissions of earlier calls' answers skipped).
fn final_of(p: &Party, call_id: &str) -> Message {
    let want = format!("{call_id}@");
    p.expect("a final response of the call", |m| {
        status(m) >= 200 && header(m, "Call-ID").starts_with(&want)
    })
    .0
}

/// An established call: caller → callee at `to`; returns the callee's view of the far INVITE,
/// the caller's 200 and both edge media addresses.
struct Established {
    far: Message,
    ok: Message,
    edge_a_media: SocketAddr,
    edge_b_media: SocketAddr,
}

fn establish(
    alice: &Party,
    bob: &Party,
    to: &str,
    call_id: &str,
    a_port: u16,
    b_port: u16,
) -> Established {
    alice.send(&invite(
        alice,
        to,
        "alice@open.test",
        call_id,
        1,
        &sdp("alice", a_port),
        "",
    ));
    let (far, _) = bob.expect_method("INVITE");
    let edge_b_media = media_addr(&body(&far));
    bob.answer(&far, 200, "bobtag", Some(&sdp("bob", b_port)));
    let (ok, _) = alice.expect_status(200);
    let edge_a_media = media_addr(&body(&ok));
    alice.send(&in_dialog(alice, &ok, "ACK", 1, call_id, None));
    bob.expect_method("ACK");
    Established {
        far,
        ok,
        edge_a_media,
        edge_b_media,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn md5_hex(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

fn param(h: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    let start = h
        .find(&key)
        .map(|i| i + key.len())
        .expect("challenge parameter");
    h[start..].split('"').next().unwrap_or_default().to_owned()
}

/// INVITE from alice@auth.test to `to`, challenged with 407 and sent again with credentials
/// (RFC 7616, MD5, qop=auth). Returns the final answer to the second INVITE's far leg party.
fn authenticated_invite(alice: &Party, to: &str, call_id: &str, password: &str, a_port: u16) {
    alice.send(&invite(
        alice,
        to,
        "alice@auth.test",
        call_id,
        1,
        &sdp("alice", a_port),
        "",
    ));
    let (challenge, _) = alice.expect_status(407);
    let ch = header(&challenge, "Proxy-Authenticate");
    assert!(ch.starts_with("Digest "), "{ch}");
    // ACK for the 407 (same transaction).
    let me = alice.addr();
    alice.send(&format!(
        "ACK sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}1\r\n\
         From: \"Alice Secret\" <sip:alice@auth.test>;tag=alicetag{call_id}\r\nTo: {to_h}\r\n\
         Call-ID: {call_id}@alice-laptop.home\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        to_h = header(&challenge, "To")
    ));
    let (realm, nonce, opaque) = (
        param(&ch, "realm"),
        param(&ch, "nonce"),
        param(&ch, "opaque"),
    );
    let uri = format!("sip:{to}");
    let ha1 = md5_hex(&format!("alice:{realm}:{password}"));
    let ha2 = md5_hex(&format!("INVITE:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let creds = format!(
        "Proxy-Authorization: Digest username=\"alice\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", algorithm=MD5, cnonce=\"c0ffee\", \
         opaque=\"{opaque}\", qop=auth, nc=00000001\r\n"
    );
    alice.send(&invite(
        alice,
        to,
        "alice@auth.test",
        call_id,
        2,
        &sdp("alice", a_port),
        &creds,
    ));
}

#[test]
fn refusals_404_480_403_433_and_481() {
    let d = start("refuse", 25_261, 42_200, "");
    let bob = Party::new(d.sip);
    bob.register("bob", "private.test");
    let carol = Party::new(d.sip);
    carol.register("carol", "closed.test");
    let alice = Party::new(d.sip);
    let offer = sdp("alice", 4000);
    let cases = [
        ("nobody@open.test", 404, "unknown nickname"),
        ("bob@auth.test", 480, "listed user without a binding"),
        ("carol@closed.test", 403, "domain refuses anonymous callers"),
        ("bob@private.test", 433, "callee refuses anonymous calls"),
        (
            "someone@elsewhere.test",
            403,
            "domain not served, no peer: never an open relay",
        ),
    ];
    for (i, (to, code, why)) in cases.iter().enumerate() {
        alice.send(&invite(
            &alice,
            to,
            "alice@open.test",
            &format!("r{i}"),
            1,
            &offer,
            "",
        ));
        let (m, _) = final_status(&alice);
        assert_eq!(status(&m), *code, "{to}: {why}");
    }
    // The callees never saw an INVITE.
    carol
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    assert!(
        carol.sock.recv_from(&mut buf).is_err(),
        "a refused call reached the callee"
    );
    // An in-dialog request for a dialog the edge does not know: 481.
    let me = alice.addr();
    alice.send(&format!(
        "BYE sip:edge@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKnodialog\r\n\
         From: <sip:alice@open.test>;tag=a1\r\nTo: <sip:bob@open.test>;tag=unknown\r\n\
         Call-ID: nodialog@x\r\nCSeq: 5 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        edge = d.sip
    ));
    let (m, _) = final_status(&alice);
    assert_eq!(status(&m), 481);
    assert_eq!(metric(&d, "sipveil_calls_total{result=\"refused\"}"), 5.0);
}

#[test]
fn cancel_before_answer() {
    let d = start("cancel", 25_262, 42_400, "");
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let inv = invite(
        &alice,
        "bob@open.test",
        "alice@open.test",
        "k1",
        1,
        &sdp("alice", 4000),
        "",
    );
    alice.send(&inv);
    let (far, _) = bob.expect_method("INVITE");
    bob.answer(&far, 180, "bobtag", None);
    alice.expect_status(180);
    let me = alice.addr();
    alice.send(&format!(
        "CANCEL sip:bob@open.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKk11\r\n\
         From: \"Alice Secret\" <sip:alice@open.test>;tag=alicetagk1\r\nTo: <sip:bob@open.test>\r\n\
         Call-ID: k1@alice-laptop.home\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ));
    let (cancel, _) = bob.expect_method("CANCEL");
    bob.answer(&cancel, 200, "bobtag", None);
    bob.answer(&far, 487, "bobtag", None);
    alice.expect_status(487);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !ctl(&d, &["calls", "--json"])["calls"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(Instant::now() < deadline, "cancelled call still listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&d, "sipveil_calls_total{result=\"unanswered\"}"),
        1.0
    );
}

#[test]
fn forking_first_answer_wins_other_fork_cancelled() {
    let d = start("fork", 25_263, 42_600, "");
    let bob1 = Party::new(d.sip);
    let bob2 = Party::new(d.sip);
    // Two devices of one nickname: the second registers in the first's registration dialog.
    for (i, b) in [&bob1, &bob2].iter().enumerate() {
        let me = b.addr();
        b.send(&format!(
            "REGISTER sip:open.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfork{i}\r\n\
             From: <sip:bob@open.test>;tag=rb\r\nTo: <sip:bob@open.test>\r\n\
             Call-ID: reg-bob-fork\r\nCSeq: {c} REGISTER\r\nContact: <sip:bob@{me}>\r\n\
             Max-Forwards: 70\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n",
            c = i + 1
        ));
        b.expect_status(200);
    }
    let alice = Party::new(d.sip);
    alice.send(&invite(
        &alice,
        "bob@open.test",
        "alice@open.test",
        "f1",
        1,
        &sdp("alice", 4000),
        "",
    ));
    let (far1, _) = bob1.expect_method("INVITE");
    let (far2, _) = bob2.expect_method("INVITE");
    bob2.answer(&far2, 180, "bob2tag", None);
    bob1.answer(&far1, 200, "bob1tag", Some(&sdp("bob", 5000)));
    let (ok, _) = alice.expect_status(200);
    alice.send(&in_dialog(&alice, &ok, "ACK", 1, "f1", None));
    bob1.expect_method("ACK");
    let (cancel, raw) = bob2.expect_method("CANCEL");
    assert!(
        String::from_utf8_lossy(&raw).contains("cause=200"),
        "the losing fork hears why"
    );
    bob2.answer(&cancel, 200, "bob2tag", None);
    bob2.answer(&far2, 487, "bob2tag", None);
    alice.send(&in_dialog(&alice, &ok, "BYE", 2, "f1", None));
    let (bye, _) = bob1.expect_method("BYE");
    bob1.answer(&bye, 200, "bob1tag", None);
    alice.expect_status(200);
    assert_eq!(metric(&d, "sipveil_privacy_leaks_total"), 0.0);
}

#[test]
fn reinvite_keeps_relay_ports_and_media_follows() {
    let d = start("reinvite", 25_264, 42_800, "");
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let alice_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let alice_rtp2 = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let bob_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
    let e = establish(
        &alice,
        &bob,
        "bob@open.test",
        "ri1",
        port(&alice_rtp),
        port(&bob_rtp),
    );
    let before = ctl(&d, &["calls", "--json"]);
    // The caller moves its media to a new port.
    alice.send(&in_dialog(
        &alice,
        &e.ok,
        "INVITE",
        2,
        "ri1",
        Some(&sdp("alice", port(&alice_rtp2))),
    ));
    let (re, _) = bob.expect_method("INVITE");
    assert_eq!(
        media_addr(&body(&re)),
        e.edge_b_media,
        "the callee keeps sending to the same relay port"
    );
    bob.answer(&re, 200, "bobtag", Some(&sdp("bob", port(&bob_rtp))));
    let (ok2, _) = alice.expect_status(200);
    assert_eq!(
        media_addr(&body(&ok2)),
        e.edge_a_media,
        "the caller keeps sending to the same relay port"
    );
    alice.send(&in_dialog(&alice, &ok2, "ACK", 2, "ri1", None));
    bob.expect_method("ACK");
    let after = ctl(&d, &["calls", "--json"]);
    assert_eq!(
        before["calls"][0]["relay_ports"], after["calls"][0]["relay_ports"],
        "no new relay"
    );
    assert!(
        media_crosses(&bob_rtp, e.edge_b_media, &alice_rtp2),
        "media goes to the caller's new port"
    );
    // UPDATE with a new offer (back to the first port): still the same relay.
    alice.send(&in_dialog(
        &alice,
        &e.ok,
        "UPDATE",
        3,
        "ri1",
        Some(&sdp("alice", port(&alice_rtp))),
    ));
    let (up, _) = bob.expect_method("UPDATE");
    assert_eq!(media_addr(&body(&up)), e.edge_b_media);
    bob.answer(&up, 200, "bobtag", Some(&sdp("bob", port(&bob_rtp))));
    let up_ok = final_of(&alice, "ri1");
    assert_eq!(status(&up_ok), 200);
    assert_eq!(media_addr(&body(&up_ok)), e.edge_a_media);
    assert!(
        media_crosses(&bob_rtp, e.edge_b_media, &alice_rtp),
        "media follows the UPDATE"
    );
    let last = ctl(&d, &["calls", "--json"]);
    assert_eq!(
        before["calls"][0]["relay_ports"],
        last["calls"][0]["relay_ports"]
    );
    let _ = e.far;
}

#[test]
fn authenticated_caller_407_then_call_and_static_peer() {
    let mut peer = Party::new("127.0.0.1:9".parse().expect("addr"));
    let extra = format!(
        "\n[[peer]]\ndomain = \"peer.test\"\naddress = \"{}\"\n",
        peer.addr()
    );
    let d = start("auth", 25_265, 43_000, &extra);
    peer.edge = d.sip;
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    // A wrong password is challenged again; the callee never sees it.
    authenticated_invite(&alice, "bob@open.test", "au0", "wrong", 4000);
    let m = final_of(&alice, "au0");
    assert_eq!(status(&m), 407, "a wrong password gets a new challenge");
    authenticated_invite(&alice, "bob@open.test", "au1", "secret", 4000);
    let (far, raw) = bob.expect_method("INVITE");
    let far_text = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        far_text.contains("sip:alice@auth.test"),
        "the authenticated identity is shown: {far_text}"
    );
    assert!(
        !far_text.contains("Alice Secret"),
        "the display name is not: {far_text}"
    );
    assert!(
        !far_text.contains("Proxy-Authorization"),
        "credentials never cross"
    );
    bob.answer(&far, 200, "bobtag", Some(&sdp("bob", 5000)));
    let ok = final_of(&alice, "au1");
    assert_eq!(status(&ok), 200);
    alice.send(&in_dialog(&alice, &ok, "ACK", 2, "au1", None));
    bob.expect_method("ACK");
    alice.send(&in_dialog(&alice, &ok, "BYE", 3, "au1", None));
    let (bye, _) = bob.expect_method("BYE");
    bob.answer(&bye, 200, "bobtag", None);
    assert_eq!(status(&final_of(&alice, "au1")), 200);
    assert_eq!(metric(&d, "sipveil_calls_total{result=\"answered\"}"), 1.0);
    // Anonymous callers cannot use a static peer route.
    alice.send(&invite(
        &alice,
        "x@peer.test",
        "alice@open.test",
        "p0",
        1,
        &sdp("alice", 4000),
        "",
    ));
    let m = final_of(&alice, "p0");
    assert_eq!(status(&m), 403);
    // An authenticated caller reaches the peer over UDP from the edge's socket.
    authenticated_invite(&alice, "someone@peer.test", "p1", "secret", 4000);
    let (pinv, praw) = peer.expect_method("INVITE");
    assert!(String::from_utf8_lossy(&praw).starts_with("INVITE sip:someone@peer.test SIP/2.0"));
    peer.answer(&pinv, 603, "peertag", None);
    let m = final_of(&alice, "p1");
    assert_eq!(status(&m), 603);
    assert_eq!(metric(&d, "sipveil_privacy_leaks_total"), 0.0);
}

#[test]
fn media_timeout_ends_call_and_max_calls_gives_503() {
    let d = start(
        "limits",
        25_266,
        43_200,
        "\n[calls]\nmedia_timeout_secs = 1\nmax_calls = 1\n",
    );
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let e = establish(&alice, &bob, "bob@open.test", "mt1", 4000, 5000);
    // A second call while one is up: 503 with Retry-After.
    alice.send(&invite(
        &alice,
        "bob@open.test",
        "alice@open.test",
        "mt2",
        1,
        &sdp("alice", 4002),
        "",
    ));
    let (m, _) = final_status(&alice);
    assert_eq!(status(&m), 503);
    assert!(!header(&m, "Retry-After").is_empty());
    // No media at all: after ~1 s the edge ends the call with BYE on both legs.
    let (bye_b, _) = bob.expect_method("BYE");
    bob.answer(&bye_b, 200, "bobtag", None);
    let (bye_a, _) = alice.expect_method("BYE");
    alice.answer(&bye_a, 200, "x", None);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !ctl(&d, &["calls", "--json"])["calls"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(Instant::now() < deadline, "timed-out call still listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = (e.far, e.ok, e.edge_a_media, e.edge_b_media);
}

#[test]
fn after_a_restart_in_dialog_requests_get_481() {
    let d = start("restart", 25_267, 43_400, "");
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let e = establish(&alice, &bob, "bob@open.test", "rs1", 4000, 5000);
    drop(d);
    // The same listeners again: the new daemon knows no dialog (relays it did not open are left
    // to idle expiry; with XDP their pinned flows keep forwarding).
    let d2 = start("restart2", 25_267, 43_400, "");
    alice.send(&in_dialog(&alice, &e.ok, "BYE", 2, "rs1", None));
    let m = final_of(&alice, "rs1");
    assert_eq!(status(&m), 481);
    assert!(
        ctl(&d2, &["calls", "--json"])["calls"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    let _ = e.far;
}

#[test]
fn media_keeps_a_call_up_past_the_media_timeout() {
    let d = start(
        "mediaup",
        25_268,
        43_600,
        "\n[calls]\nmedia_timeout_secs = 1\n",
    );
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let alice_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let bob_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let port = |s: &UdpSocket| s.local_addr().expect("addr").port();
    let e = establish(
        &alice,
        &bob,
        "bob@open.test",
        "mu1",
        port(&alice_rtp),
        port(&bob_rtp),
    );
    // 2.5 s of media one way (bounded: 50 packets): the call stays up.
    for _ in 0..50 {
        alice_rtp
            .send_to(
                &[0x80, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4, 0xd5, 0xd5],
                e.edge_a_media,
            )
            .expect("rtp");
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls = ctl(&d, &["calls", "--json"]);
    assert_eq!(
        calls["calls"].as_array().map(Vec::len),
        Some(1),
        "ended despite media: {calls}"
    );
    // Silence: the edge ends it.
    let (bye, _) = bob.expect_method("BYE");
    bob.answer(&bye, 200, "bobtag", None);
    let _ = e.far;
}

#[test]
fn reload_applies_call_limits() {
    let d = start("reload", 25_269, 43_800, "");
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let e = establish(&alice, &bob, "bob@open.test", "rl1", 4000, 5000);
    let mut text = std::fs::read_to_string(&d.config).expect("config");
    text.push_str("\n[calls]\nmax_calls = 1\n");
    std::fs::write(&d.config, text).expect("config");
    assert_eq!(ctl(&d, &["reload"])["ok"], true);
    alice.send(&invite(
        &alice,
        "bob@open.test",
        "alice@open.test",
        "rl2",
        1,
        &sdp("alice", 4002),
        "",
    ));
    assert_eq!(
        status(&final_of(&alice, "rl2")),
        503,
        "the reloaded max_calls applies"
    );
    let _ = e.far;
}

#[test]
fn in_dialog_info_and_options_cross_and_max_duration_ends_the_call() {
    let d = start(
        "indialog",
        25_270,
        44_000,
        "\n[calls]\nmax_duration_secs = 2\nmedia_timeout_secs = 0\n",
    );
    let bob = Party::new(d.sip);
    bob.register("bob", "open.test");
    let alice = Party::new(d.sip);
    let e = establish(&alice, &bob, "bob@open.test", "id1", 4000, 5000);
    // INFO with a DTMF body crosses (the body type is on the allowlist).
    let dtmf = "Signal=5\r\nDuration=160\r\n";
    let info = in_dialog(&alice, &e.ok, "INFO", 2, "id1", None).replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/dtmf-relay\r\nContent-Length: {}\r\n\r\n{dtmf}",
            dtmf.len()
        ),
    );
    alice.send(&info);
    let (got, _) = bob.expect_method("INFO");
    assert_eq!(body(&got), dtmf);
    bob.answer(&got, 200, "bobtag", None);
    assert_eq!(status(&final_of(&alice, "id1")), 200);
    alice.send(&in_dialog(&alice, &e.ok, "OPTIONS", 3, "id1", None));
    let (opt, _) = bob.expect_method("OPTIONS");
    bob.answer(&opt, 200, "bobtag", None);
    assert_eq!(status(&final_of(&alice, "id1")), 200);
    // max_duration_secs = 2: the edge hangs up both legs.
    let (bye_b, _) = bob.expect_method("BYE");
    bob.answer(&bye_b, 200, "bobtag", None);
    let (bye_a, _) = alice.expect_method("BYE");
    alice.answer(&bye_a, 200, "x", None);
    assert_eq!(metric(&d, "sipveil_privacy_leaks_total"), 0.0);
}

#[test]
fn calls_from_many_sockets_cross_both_workers() {
    // SO_REUSEPORT spreads these 16 sockets' datagrams over both SIP workers; every call must
    // still complete (the other worker hands call messages to the call worker).
    let d = start("workers", 25_271, 44_200, "");
    for i in 0..8 {
        let callee = Party::new(d.sip);
        let nick = format!("callee{i}");
        callee.register(&nick, "open.test");
        let caller = Party::new(d.sip);
        let call_id = format!("w{i}");
        let e = establish(
            &caller,
            &callee,
            &format!("{nick}@open.test"),
            &call_id,
            4000,
            5000,
        );
        caller.send(&in_dialog(&caller, &e.ok, "BYE", 2, &call_id, None));
        let (bye, _) = callee.expect_method("BYE");
        callee.answer(&bye, 200, "bobtag", None);
        assert_eq!(status(&final_of(&caller, &call_id)), 200);
    }
    assert_eq!(metric(&d, "sipveil_calls_total{result=\"answered\"}"), 8.0);
    assert_eq!(metric(&d, "sipveil_privacy_leaks_total"), 0.0);
    // Both workers received datagrams (so the hand-over path ran).
    for w in 0..2 {
        let n = metric(
            &d,
            &format!("sipveil_worker_messages_total{{worker=\"{w}\"}}"),
        );
        assert!(n > 0.0, "worker {w} received nothing");
    }
}
