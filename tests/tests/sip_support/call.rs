//! What the call tests (`tests/calls_*.rs`) share: two parties with distinctive identifiers
//! (the caller in sv-a, the callee in sv-b), their SIP UA and media sockets, call set-up
//! through the edge, RTP/RTCP both ways, the daemon's metrics and XDP counters.

use super::client::{EDGE_ADDR, in_netns, token};
use super::sipveil;
use super::ua::{Msg, Ua, drain, rtcp_sr_sdes, rtp_crosses};
use sipveil_b2bua::Identifier;
use sipveil_loadtest::lab::{A_ADDR, B_ADDR, LAB_CONTROL_SOCKET, LAB_INSTANCE};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

/// A party's distinctive identifiers.
pub struct Identity {
    /// `alice` / `bob`, for labels.
    pub name: &'static str,
    pub lab: Ipv4Addr,
    /// A private LAN address (SDP origin, ICE host candidate, X- header, Warning, Subject).
    pub private: Ipv4Addr,
    /// A public-looking server-reflexive address (ICE srflx candidate).
    pub srflx: Ipv4Addr,
    pub host: &'static str,
    pub agent: &'static str,
    pub display: &'static str,
    pub contact_user: &'static str,
    pub from_user: &'static str,
    pub origin: &'static str,
    pub session: &'static str,
    pub cname: &'static str,
    pub ice_ufrag: &'static str,
}

pub const ALICE: Identity = Identity {
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

pub const BOB: Identity = Identity {
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
pub const NICK: &str = "bobnick";

impl Identity {
    pub fn identifiers(&self) -> Vec<Identifier> {
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
    pub fn headers(&self) -> String {
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

    pub fn sdp(&self, rtp_port: u16, version: u32) -> String {
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
pub struct Party {
    pub id: &'static Identity,
    pub ua: Ua,
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
}

impl Party {
    pub fn new(id: &'static Identity, ns: &str, sip_port: u16, rtp_port: u16) -> Party {
        let edge = SocketAddr::from((EDGE_ADDR, 5060));
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

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.ua.addr()
    }

    pub fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/UDP {}:{};branch=z9hG4bK{branch};rport\r\n",
            self.id.host,
            self.sip_addr().port()
        )
    }

    pub fn contact(&self) -> String {
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
    pub fn register(&mut self, user: &str, domain: &str, call_id: &str, cseq: u32) {
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
    pub fn invite(&self, to: &str, from: &str, call: &Call, extra: &str) -> String {
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
    pub fn answer_headers(&self) -> String {
        format!(
            "{}Server: {}\r\n{}",
            self.contact(),
            self.id.agent,
            self.id.headers()
        )
    }

    /// An in-dialog request following `dialog` (the message that set up the dialog as this
    /// party saw it: the 2xx for the caller, the INVITE for the callee).
    pub fn in_dialog(
        &self,
        dialog: &Dialog,
        method: &str,
        cseq: u32,
        body: Option<&str>,
    ) -> String {
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
    pub fn send_rtcp(&self, to: SocketAddr, count: usize) {
        let packet = rtcp_sr_sdes(0x0a11_ce00, self.id.cname, &self.id.private.to_string());
        for _ in 0..count {
            let _ = self.rtcp.send_to(&packet, to);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A call's caller-side ids.
pub struct Call {
    pub id: String,
    pub tag: String,
    pub branch: String,
}

impl Call {
    pub fn new(prefix: &str) -> Call {
        Call {
            id: token(prefix),
            tag: token("t"),
            branch: token("b"),
        }
    }
}

/// A dialog as one party sees it.
pub struct Dialog {
    pub target: String,
    pub local: String,
    pub remote: String,
    pub call_id: String,
}

impl Dialog {
    /// The caller's view, from the 2xx it received.
    pub fn caller(ok: &Msg) -> Dialog {
        Dialog {
            target: ok.contact_uri().expect("the 2xx has a Contact"),
            local: ok.header("From").expect("From"),
            remote: ok.header("To").expect("To"),
            call_id: ok.header("Call-ID").expect("Call-ID"),
        }
    }

    /// The callee's view, from the INVITE it received and the tag it answered with.
    pub fn callee(invite: &Msg, tag: &str) -> Dialog {
        Dialog {
            target: invite.contact_uri().expect("the INVITE has a Contact"),
            local: format!("{};tag={tag}", invite.header("To").expect("To")),
            remote: invite.header("From").expect("From"),
            call_id: invite.header("Call-ID").expect("Call-ID"),
        }
    }
}

/// The RTCP address next to an RTP address.
pub fn rtcp_of(rtp: SocketAddr) -> SocketAddr {
    SocketAddr::new(rtp.ip(), rtp.port() + 1)
}

/// What the media of one call did (datagrams that arrived).
#[derive(Debug, Default)]
pub struct MediaCounts {
    pub rtp_a_to_b: usize,
    pub rtp_b_to_a: usize,
    pub rtcp_a_to_b: usize,
    pub rtcp_b_to_a: usize,
}

/// RTP and RTCP both ways between the parties, through the edge's media addresses.
pub fn media(a: &Party, edge_a: SocketAddr, b: &Party, edge_b: SocketAddr) -> MediaCounts {
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
pub fn establish(
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

pub fn metric(name: &str) -> f64 {
    let out = Command::new(sipveil())
        .args(["metrics", "--socket", LAB_CONTROL_SOCKET])
        .output()
        .unwrap_or_else(|error| panic!("sipveil metrics: {error}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sipveil metrics failed: {text}");
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty float sum is -0.0: print a metric that is absent as 0.
        + 0.0
}

pub fn xdp_relayed() -> u64 {
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
