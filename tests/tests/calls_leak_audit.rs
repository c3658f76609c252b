//! The leak audit of issue 5 (item 7): calls through the real daemon in the lab, media relayed
//! in XDP, and everything each party actually received, captured with `dumpcap` on its own
//! interface, searched for the other party's identifiers.
//!
//! The caller runs in sv-a (198.18.1.2), the callee in sv-b (198.18.2.2); the edge is the
//! daemon in sv-edge (`xdp = "auto"`, SIP on 198.18.1.1:5060). Each party is this crate's own
//! small UA (`sip_support::ua`), so every header is under the test's control, and gives itself
//! distinctive identifiers: its lab address, a private LAN address and a public-looking
//! server-reflexive address (SDP origin, ICE host/srflx candidates, an `X-` header, `Warning`,
//! `Subject`), a host name (Call-ID and Via), a User-Agent / Server, a display name, a contact
//! user part, an SDP origin username and session name, and an RTCP CNAME (SR + SDES sent on
//! the RTCP port next to its RTP port).
//!
//! Calls over UDP: an anonymous caller → an open-domain user (ringing, answer, media and RTCP
//! both ways, a re-INVITE, BYE from the callee); a CANCEL; forking to two contacts of the
//! callee (one answers, the other is cancelled); an authenticated caller (407, digest) → user.
//! Then the audit: every frame addressed to a party (the capture holds both directions; the
//! frames are split by IPv4 destination) must show none of the other party's identifiers and
//! no private address but its own, SIP and RTP/RTCP payloads alike. The negative control runs
//! the same check over each party's own egress from the same capture and requires that every
//! one of its identifiers is found there: the identifiers were on the wire and the search finds
//! them. The daemon's leak detector (`sipveil_privacy_leaks_total`) must stay 0.
//!
//! Not covered here yet: TLS (the capture would need the client's key log), TCP.
//!
//! Needs root (namespaces, XDP) and dumpcap: fails with a clear message otherwise.

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use sip_support::capture::{Capture, Frame};
use sip_support::client::{in_netns, parse_response, token};
use sip_support::digest::{authorization, challenges};
use sip_support::ua::{Msg, Ua, drain, rtcp_sr_sdes, rtp_crosses};
use sip_support::{AUTH_USERS, Edge, EdgeOptions, on_path, sipveil};
use sipveil_b2bua::{FindingKind, Identifier, audit};
use sipveil_loadtest::lab::{A_ADDR, B_ADDR, LAB_CONTROL_SOCKET, LAB_INSTANCE, NS_A, NS_B};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

/// A party's distinctive identifiers.
struct Identity {
    /// `alice` / `bob`, for labels.
    name: &'static str,
    lab: Ipv4Addr,
    /// A private LAN address (SDP origin, ICE host candidate, X- header, Warning, Subject).
    private: Ipv4Addr,
    /// A public-looking server-reflexive address (ICE srflx candidate).
    srflx: Ipv4Addr,
    host: &'static str,
    agent: &'static str,
    display: &'static str,
    contact_user: &'static str,
    from_user: &'static str,
    origin: &'static str,
    session: &'static str,
    cname: &'static str,
    ice_ufrag: &'static str,
}

const ALICE: Identity = Identity {
    name: "caller",
    lab: A_ADDR,
    private: Ipv4Addr::new(192, 168, 77, 20),
    srflx: Ipv4Addr::new(203, 0, 113, 77),
    host: "alice-laptop.home",
    agent: "AlicePhone-7.7.7",
    display: "Alice Secretname",
    contact_user: "alicecontact77",
    from_user: "alicefrom77",
    origin: "aliceorigin77",
    session: "alice-session-77",
    cname: "alicecname77@alice-laptop.home",
    ice_ufrag: "aliceufrag77",
};

const BOB: Identity = Identity {
    name: "callee",
    lab: B_ADDR,
    private: Ipv4Addr::new(10, 88, 0, 30),
    srflx: Ipv4Addr::new(203, 0, 113, 88),
    host: "bob-desk.office",
    agent: "BobPhone-8.8.8",
    display: "Bob Hiddenname",
    contact_user: "bobcontact88",
    // The callee never sends a From of its own (its requests are in-dialog).
    from_user: "",
    origin: "boborigin88",
    session: "bob-session-88",
    cname: "bobcname88@bob-desk.office",
    ice_ufrag: "bobufrag88",
};

/// The callee's nickname on the open domain (the caller dials it: shown on purpose).
const NICK: &str = "bobnick";

impl Identity {
    fn identifiers(&self) -> Vec<Identifier> {
        let n = self.name;
        vec![
            Identifier::new(format!("{n} lab address"), self.lab.to_string()),
            Identifier::new(format!("{n} private address"), self.private.to_string()),
            Identifier::new(format!("{n} srflx address"), self.srflx.to_string()),
            Identifier::new(format!("{n} host name"), self.host),
            Identifier::new(format!("{n} user agent"), self.agent),
            Identifier::new(format!("{n} display name"), self.display),
            Identifier::new(format!("{n} contact user"), self.contact_user),
            Identifier::new(format!("{n} from user"), self.from_user),
            Identifier::new(format!("{n} SDP origin"), self.origin),
            Identifier::new(format!("{n} SDP session"), self.session),
            Identifier::new(format!("{n} RTCP CNAME"), self.cname),
            Identifier::new(format!("{n} ICE ufrag"), self.ice_ufrag),
        ]
        .into_iter()
        .filter(|identifier| !identifier.value.is_empty())
        .collect()
    }

    /// Headers every message of this party carries (each line ends in CRLF).
    fn headers(&self) -> String {
        format!(
            "X-{n}-Home: {private}\r\nWarning: 399 {host} \"at {private} {lab}\"\r\n\
             Subject: from {display} at {private}\r\n",
            n = self.name,
            private = self.private,
            host = self.host,
            lab = self.lab,
            display = self.display,
        )
    }

    fn sdp(&self, rtp_port: u16, version: u32) -> String {
        format!(
            "v=0\r\no={origin} 4242 {version} IN IP4 {private}\r\ns={session}\r\n\
             c=IN IP4 {lab}\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
             a=ice-ufrag:{ufrag}\r\na=ice-pwd:{ufrag}pwdpwdpwdpwdpwd\r\n\
             a=candidate:1 1 UDP 2130706431 {private} {rtp_port} typ host\r\n\
             a=candidate:2 1 UDP 1694498815 {srflx} {rtp_port} typ srflx raddr {private} rport {rtp_port}\r\n\
             a=sendrecv\r\n",
            origin = self.origin,
            private = self.private,
            session = self.session,
            lab = self.lab,
            ufrag = self.ice_ufrag,
            srflx = self.srflx,
        )
    }
}

/// A party: its SIP UA and its RTP/RTCP sockets.
struct Party {
    id: &'static Identity,
    ua: Ua,
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Party {
    fn new(id: &'static Identity, ns: &str, sip_port: u16, rtp_port: u16) -> Party {
        let edge = SocketAddr::from((sip_support::client::EDGE_ADDR, 5060));
        let ua = Ua::new(ns, SocketAddr::from((id.lab, sip_port)), edge)
            .unwrap_or_else(|error| panic!("{} UA in {ns}: {error}", id.name));
        let bind = |port: u16| {
            in_netns(ns, || UdpSocket::bind(SocketAddr::from((id.lab, port))))
                .unwrap_or_else(|error| panic!("{} media socket {port} in {ns}: {error}", id.name))
        };
        Party {
            id,
            ua,
            rtp: bind(rtp_port),
            rtcp: bind(rtp_port + 1),
        }
    }

    fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn sip_addr(&self) -> SocketAddr {
        self.ua.addr()
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/UDP {}:{};branch=z9hG4bK{branch};rport\r\n",
            self.id.host,
            self.sip_addr().port()
        )
    }

    fn contact(&self) -> String {
        format!(
            "Contact: \"{}\" <sip:{}@{}>\r\n",
            self.id.display,
            self.id.contact_user,
            self.sip_addr()
        )
    }

    /// Registers `user@domain` with this party's contact, as REGISTER `cseq` of the
    /// registration `call_id` (an open nickname is owned by its Call-ID: a second contact of
    /// the same nickname comes with the same Call-ID).
    fn register(&mut self, user: &str, domain: &str, call_id: &str, cseq: u32) {
        let tag = token("r");
        self.ua.send(&format!(
            "REGISTER sip:{domain} SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}@{host}\r\nCSeq: {cseq} REGISTER\r\n{contact}Expires: 600\r\n\
             User-Agent: {agent}\r\nContent-Length: 0\r\n\r\n",
            via = self.via(&tag),
            host = self.id.host,
            contact = self.contact(),
            agent = self.id.agent,
        ));
        self.ua.expect_status("REGISTER", 200);
    }

    /// An INVITE from this party (the caller) to `to`, from `from` (its From URI).
    fn invite(&self, to: &str, from: &str, call: &Call, extra: &str) -> String {
        let body = self.id.sdp(self.rtp_port(), 1);
        format!(
            "INVITE sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: \"{display}\" <sip:{from}>;tag={tag}\r\nTo: <sip:{to}>\r\n\
             Call-ID: {cid}@{host}\r\nCSeq: 1 INVITE\r\n{contact}User-Agent: {agent}\r\n\
             {headers}{extra}Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            via = self.via(&call.branch),
            display = self.id.display,
            tag = call.tag,
            cid = call.id,
            host = self.id.host,
            contact = self.contact(),
            agent = self.id.agent,
            headers = self.id.headers(),
            len = body.len(),
        )
    }

    /// The callee's answer headers (Contact, Server and the identifying ones).
    fn answer_headers(&self) -> String {
        format!(
            "{}Server: {}\r\n{}",
            self.contact(),
            self.id.agent,
            self.id.headers()
        )
    }

    /// An in-dialog request following `dialog` (the message that set up the dialog as this
    /// party saw it: the 2xx for the caller, the INVITE for the callee).
    fn in_dialog(&self, dialog: &Dialog, method: &str, cseq: u32, body: Option<&str>) -> String {
        let (content_type, body) = match body {
            Some(body) => ("Content-Type: application/sdp\r\n", body),
            None => ("", ""),
        };
        format!(
            "{method} {target} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: {local}\r\n\
             To: {remote}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{contact}\
             User-Agent: {agent}\r\n{headers}{content_type}Content-Length: {len}\r\n\r\n{body}",
            target = dialog.target,
            via = self.via(&token(method)),
            local = dialog.local,
            remote = dialog.remote,
            cid = dialog.call_id,
            contact = self.contact(),
            agent = self.id.agent,
            headers = self.id.headers(),
            len = body.len(),
        )
    }

    /// Sends `count` RTCP compound packets (SR + SDES with this party's CNAME) to `to`.
    fn send_rtcp(&self, to: SocketAddr, count: usize) {
        let packet = rtcp_sr_sdes(0x0a11_ce00, self.id.cname, &self.id.private.to_string());
        for _ in 0..count {
            let _ = self.rtcp.send_to(&packet, to);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A call's caller-side ids.
struct Call {
    id: String,
    tag: String,
    branch: String,
}

impl Call {
    fn new(prefix: &str) -> Call {
        Call {
            id: token(prefix),
            tag: token("t"),
            branch: token("b"),
        }
    }
}

/// A dialog as one party sees it.
struct Dialog {
    target: String,
    local: String,
    remote: String,
    call_id: String,
}

impl Dialog {
    /// The caller's view, from the 2xx it received.
    fn caller(ok: &Msg) -> Dialog {
        Dialog {
            target: ok.contact_uri().expect("the 2xx has a Contact"),
            local: ok.header("From").expect("From"),
            remote: ok.header("To").expect("To"),
            call_id: ok.header("Call-ID").expect("Call-ID"),
        }
    }

    /// The callee's view, from the INVITE it received and the tag it answered with.
    fn callee(invite: &Msg, tag: &str) -> Dialog {
        Dialog {
            target: invite.contact_uri().expect("the INVITE has a Contact"),
            local: format!("{};tag={tag}", invite.header("To").expect("To")),
            remote: invite.header("From").expect("From"),
            call_id: invite.header("Call-ID").expect("Call-ID"),
        }
    }
}

/// The RTCP address next to an RTP address.
fn rtcp_of(rtp: SocketAddr) -> SocketAddr {
    SocketAddr::new(rtp.ip(), rtp.port() + 1)
}

/// What the media of one call did (datagrams that arrived).
#[derive(Debug, Default)]
struct MediaCounts {
    rtp_a_to_b: usize,
    rtp_b_to_a: usize,
    rtcp_a_to_b: usize,
    rtcp_b_to_a: usize,
}

/// RTP and RTCP both ways between the parties, through the edge's media addresses.
fn media(a: &Party, edge_a: SocketAddr, b: &Party, edge_b: SocketAddr) -> MediaCounts {
    let mut counts = MediaCounts {
        rtp_a_to_b: rtp_crosses(&a.rtp, edge_a, &b.rtp, 50),
        rtp_b_to_a: rtp_crosses(&b.rtp, edge_b, &a.rtp, 50),
        ..MediaCounts::default()
    };
    a.send_rtcp(rtcp_of(edge_a), 5);
    counts.rtcp_a_to_b = drain(&b.rtcp, Duration::from_millis(300)).len();
    b.send_rtcp(rtcp_of(edge_b), 5);
    counts.rtcp_b_to_a = drain(&a.rtcp, Duration::from_millis(300)).len();
    counts
}

/// Caller `a` sends `invite` (CSeq `cseq`), callee `b` answers: ringing, answer, ACK; returns the
/// dialogs (caller's, callee's) and the edge's media addresses (toward a, toward b).
fn establish(
    a: &mut Party,
    b: &mut Party,
    invite: &str,
    cseq: u32,
    b_tag: &str,
) -> (Dialog, Dialog, SocketAddr, SocketAddr) {
    a.ua.send(invite);
    let far = b.ua.expect_request("INVITE");
    let edge_b = far.media_addr().expect("the far INVITE has an SDP offer");
    b.ua.answer(&far, 180, b_tag, &b.answer_headers(), None);
    a.ua.expect_status("INVITE", 180);
    let answer = b.id.sdp(b.rtp_port(), 1);
    b.ua.answer(&far, 200, b_tag, &b.answer_headers(), Some(&answer));
    let ok = a.ua.expect_status("INVITE", 200);
    let edge_a = ok.media_addr().expect("the 2xx has an SDP answer");
    let a_dialog = Dialog::caller(&ok);
    a.ua.send(&a.in_dialog(&a_dialog, "ACK", cseq, None));
    b.ua.expect_request("ACK");
    (a_dialog, Dialog::callee(&far, b_tag), edge_a, edge_b)
}

fn metric(name: &str) -> f64 {
    let out = Command::new(sipveil())
        .args(["metrics", "--socket", LAB_CONTROL_SOCKET])
        .output()
        .unwrap_or_else(|error| panic!("sipveil metrics: {error}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sipveil metrics failed: {text}");
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn xdp_relayed() -> u64 {
    let out = Command::new(sipveil())
        .args(["stats", "--instance", LAB_INSTANCE, "--json"])
        .output()
        .unwrap_or_else(|error| panic!("sipveil stats: {error}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let stats: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|error| panic!("sipveil stats {text:?}: {error}"));
    ["relayed_redirect", "relayed_tx"]
        .iter()
        .filter_map(|key| stats["xdp"][key].as_u64())
        .sum()
}

/// The findings of the audit of `frames` (what `to` received) against `identifiers`, as
/// readable lines; `own` are the receiver's own addresses (not a leak when they appear).
fn audit_frames(
    frames: &[Frame],
    to: Ipv4Addr,
    identifiers: &[Identifier],
    own: &[IpAddr],
) -> (usize, Vec<String>) {
    let mut received = 0;
    let mut out = Vec::new();
    for frame in frames.iter().filter(|frame| frame.dst == to) {
        received += 1;
        for finding in audit(&frame.bytes, identifiers, own) {
            let what = match &finding.kind {
                FindingKind::Identifier(label) => label.clone(),
                FindingKind::PrivateAddress(ip) => format!("private address {ip}"),
            };
            let start = finding.offset.saturating_sub(60);
            let end = (finding.offset + 60).min(frame.bytes.len());
            out.push(format!(
                "{what} in a frame {} -> {}: ...{}...",
                frame.src,
                frame.dst,
                String::from_utf8_lossy(&frame.bytes[start..end])
            ));
        }
    }
    (received, out)
}

/// The labels of `identifiers` not found in the frames `from` sent.
fn missing_in_egress(frames: &[Frame], from: Ipv4Addr, identifiers: &[Identifier]) -> Vec<String> {
    let egress: Vec<&Frame> = frames.iter().filter(|frame| frame.src == from).collect();
    identifiers
        .iter()
        .filter(|identifier| {
            !egress.iter().any(|frame| {
                audit(&frame.bytes, std::slice::from_ref(identifier), &[])
                    .iter()
                    .any(|finding| matches!(finding.kind, FindingKind::Identifier(_)))
            })
        })
        .map(|identifier| identifier.label.clone())
        .collect()
}

#[test]
fn leak_audit_udp_calls_anonymous_authenticated_fork_reinvite_cancel() {
    let Some(_) = on_path("dumpcap") else {
        panic!(
            "dumpcap is not installed: the leak audit captures what each party receives with it \
             (Debian package wireshark-common, pulled in by tshark)"
        );
    };
    let edge = Edge::start_xdp("calls_leak_audit", &EdgeOptions::default());
    let mut alice = Party::new(&ALICE, NS_A, 5070, 40_000);
    let mut bob = Party::new(&BOB, NS_B, 5070, 40_100);
    let mut bob2 = Party::new(&BOB, NS_B, 5072, 40_200);
    let cap_a = Capture::start(NS_A, "a0", &edge.dir.join("caller.pcap"))
        .unwrap_or_else(|error| panic!("{error}"));
    let cap_b = Capture::start(NS_B, "b0", &edge.dir.join("callee.pcap"))
        .unwrap_or_else(|error| panic!("{error}"));
    let xdp_before = xdp_relayed();
    let mut failures = Vec::new();

    let registration = token("reg");
    bob.register(NICK, "open.lab", &registration, 1);
    let to = format!("{NICK}@open.lab");

    // 1. Anonymous caller → open-domain user: media and RTCP, re-INVITE, BYE from the callee.
    let call = Call::new("anon");
    let from = format!("{}@{}", ALICE.from_user, ALICE.host);
    let invite = alice.invite(&to, &from, &call, "");
    let (a_dialog, b_dialog, edge_a, edge_b) = establish(&mut alice, &mut bob, &invite, 1, "bt1");
    let counts = media(&alice, edge_a, &bob, edge_b);
    println!("anonymous call media: {counts:?}");
    if counts.rtp_a_to_b == 0 || counts.rtp_b_to_a == 0 {
        failures.push(format!(
            "anonymous call: RTP did not cross both ways: {counts:?}"
        ));
    }
    if counts.rtcp_a_to_b == 0 || counts.rtcp_b_to_a == 0 {
        failures.push(format!(
            "anonymous call: RTCP did not cross both ways: {counts:?}"
        ));
    }
    // Re-INVITE from the caller (new SDP version).
    let offer = ALICE.sdp(alice.rtp_port(), 2);
    alice
        .ua
        .send(&alice.in_dialog(&a_dialog, "INVITE", 2, Some(&offer)));
    let re = bob.ua.expect_request("INVITE");
    let answer = BOB.sdp(bob.rtp_port(), 2);
    bob.ua
        .answer(&re, 200, "bt1", &bob.answer_headers(), Some(&answer));
    let re_ok = alice.ua.expect_status("INVITE", 200);
    alice.ua.send(&alice.in_dialog(&a_dialog, "ACK", 2, None));
    bob.ua.expect_request("ACK");
    let edge_a2 = re_ok.media_addr().unwrap_or(edge_a);
    let edge_b2 = re.media_addr().unwrap_or(edge_b);
    let counts = media(&alice, edge_a2, &bob, edge_b2);
    println!("after the re-INVITE: {counts:?}");
    if counts.rtp_a_to_b == 0 || counts.rtp_b_to_a == 0 {
        failures.push(format!(
            "after the re-INVITE: RTP did not cross both ways: {counts:?}"
        ));
    }
    // BYE from the callee.
    bob.ua.send(&bob.in_dialog(&b_dialog, "BYE", 7, None));
    let bye = alice.ua.expect_request("BYE");
    alice.ua.answer(&bye, 200, "x", &alice.id.headers(), None);
    bob.ua.expect_status("BYE", 200);

    // 2. CANCEL before the answer.
    let call = Call::new("cancel");
    let invite = alice.invite(&to, &from, &call, "");
    alice.ua.send(&invite);
    let far = bob.ua.expect_request("INVITE");
    bob.ua.answer(&far, 180, "bt2", &bob.answer_headers(), None);
    alice.ua.expect_status("INVITE", 180);
    alice.ua.send(&format!(
        "CANCEL sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <sip:{from}>;tag={tag}\r\n\
         To: <sip:{to}>\r\nCall-ID: {cid}@{host}\r\nCSeq: 1 CANCEL\r\nUser-Agent: {agent}\r\n\
         {headers}Content-Length: 0\r\n\r\n",
        via = alice.via(&call.branch),
        display = ALICE.display,
        tag = call.tag,
        cid = call.id,
        host = ALICE.host,
        agent = ALICE.agent,
        headers = ALICE.headers(),
    ));
    alice.ua.expect_status("CANCEL", 200);
    let cancel = bob.ua.expect_request("CANCEL");
    bob.ua
        .answer(&cancel, 200, "bt2", &bob.answer_headers(), None);
    bob.ua.answer(&far, 487, "bt2", &bob.answer_headers(), None);
    let terminated = alice.ua.expect_status("INVITE", 487);
    alice.ua.send(&format!(
        "ACK sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <sip:{from}>;tag={tag}\r\n\
         To: {to_h}\r\nCall-ID: {cid}@{host}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        via = alice.via(&call.branch),
        display = ALICE.display,
        tag = call.tag,
        to_h = terminated.header("To").unwrap_or_default(),
        cid = call.id,
        host = ALICE.host,
    ));

    // 3. Forking: a second contact of the callee; the first answers, the second is cancelled.
    bob2.register(NICK, "open.lab", &registration, 2);
    let call = Call::new("fork");
    let invite = alice.invite(&to, &from, &call, "");
    alice.ua.send(&invite);
    let far1 = bob.ua.expect_request("INVITE");
    let far2 = bob2.ua.expect_request("INVITE");
    bob2.ua
        .answer(&far2, 180, "bt3b", &bob2.answer_headers(), None);
    bob.ua
        .answer(&far1, 180, "bt3a", &bob.answer_headers(), None);
    let answer = BOB.sdp(bob.rtp_port(), 1);
    bob.ua
        .answer(&far1, 200, "bt3a", &bob.answer_headers(), Some(&answer));
    let ok = alice.ua.expect_status("INVITE", 200);
    let a_dialog = Dialog::caller(&ok);
    alice.ua.send(&alice.in_dialog(&a_dialog, "ACK", 1, None));
    bob.ua.expect_request("ACK");
    let cancel2 = bob2.ua.expect_request("CANCEL");
    bob2.ua
        .answer(&cancel2, 200, "bt3b", &bob2.answer_headers(), None);
    bob2.ua
        .answer(&far2, 487, "bt3b", &bob2.answer_headers(), None);
    if let (Some(edge_a), Some(edge_b)) = (ok.media_addr(), far1.media_addr()) {
        let counts = media(&alice, edge_a, &bob, edge_b);
        println!("forked call media: {counts:?}");
        if counts.rtp_a_to_b == 0 || counts.rtp_b_to_a == 0 {
            failures.push(format!(
                "forked call: RTP did not cross both ways: {counts:?}"
            ));
        }
    }
    alice.ua.send(&alice.in_dialog(&a_dialog, "BYE", 2, None));
    let bye = bob.ua.expect_request("BYE");
    bob.ua
        .answer(&bye, 200, "bt3a", &bob.answer_headers(), None);
    alice.ua.expect_status("BYE", 200);

    // 4. Authenticated caller (auth.lab, digest after a 407) → the user.
    let (user, password) = AUTH_USERS[0];
    let auth_from = format!("{user}@auth.lab");
    let call = Call::new("auth");
    alice.ua.send(&alice.invite(&to, &auth_from, &call, ""));
    let challenge = alice.ua.expect_status("INVITE", 407);
    alice.ua.send(&format!(
        "ACK sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <sip:{auth_from}>;tag={tag}\r\n\
         To: {to_h}\r\nCall-ID: {cid}@{host}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        via = alice.via(&call.branch),
        display = ALICE.display,
        tag = call.tag,
        to_h = challenge.header("To").unwrap_or_default(),
        cid = call.id,
        host = ALICE.host,
    ));
    let as_401 = challenge
        .raw
        .replace("Proxy-Authenticate:", "WWW-Authenticate:");
    let parsed = parse_response(as_401.as_bytes()).unwrap_or_else(|error| panic!("{error}"));
    let offered = challenges(&parsed).unwrap_or_else(|error| panic!("{error}"));
    let chosen = offered.first().expect("at least one challenge");
    let credentials = authorization(
        chosen,
        user,
        password,
        "INVITE",
        &format!("sip:{to}"),
        1,
        "c0ffee",
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let call2 = Call {
        id: call.id.clone(),
        tag: call.tag.clone(),
        branch: token("b"),
    };
    let invite = alice
        .invite(
            &to,
            &auth_from,
            &call2,
            &format!("Proxy-Authorization: {credentials}\r\n"),
        )
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
    let (a_dialog, _, edge_a, edge_b) = establish(&mut alice, &mut bob, &invite, 2, "bt4");
    let counts = media(&alice, edge_a, &bob, edge_b);
    println!("authenticated call media: {counts:?}");
    alice.ua.send(&alice.in_dialog(&a_dialog, "BYE", 3, None));
    let bye = bob.ua.expect_request("BYE");
    bob.ua.answer(&bye, 200, "bt4", &bob.answer_headers(), None);
    alice.ua.expect_status("BYE", 200);

    // The audit.
    let frames_a = cap_a.finish().unwrap_or_else(|error| panic!("{error}"));
    let frames_b = cap_b.finish().unwrap_or_else(|error| panic!("{error}"));
    let own_a = [IpAddr::V4(ALICE.private)];
    let own_b = [IpAddr::V4(BOB.private)];
    let (to_a, leaks_to_a) = audit_frames(&frames_a, A_ADDR, &BOB.identifiers(), &own_a);
    let (to_b, leaks_to_b) = audit_frames(&frames_b, B_ADDR, &ALICE.identifiers(), &own_b);
    println!(
        "captured: caller received {to_a} frames, callee received {to_b}; findings {} / {}",
        leaks_to_a.len(),
        leaks_to_b.len()
    );
    failures.extend(leaks_to_a.iter().map(|l| format!("caller received {l}")));
    failures.extend(leaks_to_b.iter().map(|l| format!("callee received {l}")));
    // Negative control: the same search over each party's own egress finds all of its
    // identifiers.
    let missing_a = missing_in_egress(&frames_a, A_ADDR, &ALICE.identifiers());
    let missing_b = missing_in_egress(&frames_b, B_ADDR, &BOB.identifiers());
    if !missing_a.is_empty() || !missing_b.is_empty() {
        failures.push(format!(
            "negative control: identifiers not found in the parties' own egress (the audit \
             could not have seen them): caller {missing_a:?}, callee {missing_b:?}"
        ));
    }
    let leaks = metric("sipveil_privacy_leaks_total");
    if leaks != 0.0 {
        failures.push(format!("sipveil_privacy_leaks_total is {leaks}"));
    }
    let xdp = xdp_relayed().saturating_sub(xdp_before);
    println!("XDP relayed {xdp} packets during the calls");
    if xdp == 0 {
        failures.push("XDP relayed no packet of the calls".to_owned());
    }
    edge.assert_alive("the calls");
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n--- daemon log:\n{}",
        failures.len(),
        failures.join("\n"),
        edge.log_tail()
    );
}
