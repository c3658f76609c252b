//! The leak audit of issue 5 (item 6) over TLS: a call through the real daemon in the lab whose
//! caller speaks SIP over TLS, and everything each party actually received searched for the
//! other party's identifiers.
//!
//! The caller runs in sv-a (198.18.1.2) and is anonymous: a [`SipClient`] over TLS to the
//! edge's 198.18.1.1:5061 (rustls, trusting the test CA, expecting `edge.lab`). The callee is
//! registered on open.lab from sv-b (198.18.2.2), in two variants (one test each):
//! - over TLS (`TlsCallee`, defined here: `SipClient` reads responses only): it REGISTERs over
//!   its own TLS connection and the INVITE, ACK and BYE arrive down that same connection;
//! - over UDP, with the UA of `sip_support::call`.
//!
//! Both parties carry the distinctive identifiers of `sip_support::call` (host name in Call-ID
//! and Via, User-Agent / Server, display name, contact user, SDP origin and session name,
//! private and srflx addresses in SDP/ICE candidates, an `X-` header, `Subject`, `Warning`, an
//! RTCP CNAME). The call: INVITE, 180, 200 (SDP), ACK, 50 RTP packets and 5 RTCP SR+SDES each
//! way (relayed by XDP), BYE from the caller.
//!
//! What a TLS party received: its signalling is encrypted on the wire, so a capture shows only
//! ciphertext. The test records every message the TLS client read after decryption (the
//! caller: `Response::raw` of each [`SipClient::recv`]; the TLS callee: each framed message its
//! rustls stream yielded): that is exactly the plaintext the party received. Its media
//! (RTP/RTCP, plain UDP) and everything else addressed to it come from a `dumpcap` capture of
//! its own interface (the TLS records there are ciphertext and match nothing). The UDP callee's
//! received frames come from the capture of its interface. Both directions are
//! audited with `sipveil_b2bua::audit`: no identifier of the other party and no private address
//! but the receiver's own. Negative control: the same search over each party's own sent bytes
//! (the plaintext a TLS party wrote into its stream plus its captured egress; the UDP callee's
//! captured egress) finds every one of its identifiers, and each TLS party must have read the
//! messages of the call (the caller at least 180, 200, 200 to BYE; the TLS callee at least the
//! 200 to REGISTER, INVITE, ACK, BYE), so an empty record cannot pass. The daemon's leak detector
//! (`sipveil_privacy_leaks_total`) must stay 0.
//!
//! Needs root (namespaces, XDP) and dumpcap: fails with a clear message otherwise.

#[expect(
    dead_code,
    reason = "the support module is shared by the SIP test binaries; each uses part of it"
)]
mod sip_support;

use sip_support::call::{ALICE, BOB, Call, Dialog, NICK, Party, metric, rtcp_of, xdp_relayed};
use sip_support::capture::{Capture, Frame};
use sip_support::client::{Received, SipClient, TlsTrust, Transport, in_netns, token};
use sip_support::ua::{Msg, drain, rtcp_sr_sdes, rtp_crosses};
use sip_support::{Edge, EdgeOptions, on_path};
use sipveil_b2bua::{FindingKind, Identifier, audit};
use sipveil_loadtest::lab::{A_ADDR, B_ADDR, NS_A, NS_B};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// How long the caller waits for one expected response.
const WAIT: Duration = Duration::from_secs(5);

/// The anonymous caller over TLS: its client, media sockets and every byte it read and wrote.
struct TlsCaller {
    client: SipClient,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// Every message the client read (decrypted plaintext), in order.
    received: Vec<Vec<u8>>,
    /// Every message the caller wrote into the TLS stream (plaintext).
    sent: Vec<Vec<u8>>,
}

impl TlsCaller {
    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/TLS {}:{};branch=z9hG4bK{branch};rport\r\n",
            ALICE.host,
            self.client.local().port()
        )
    }

    fn contact(&self) -> String {
        format!(
            "Contact: \"{}\" <sip:{}@{};transport=tls>\r\n",
            ALICE.display,
            ALICE.contact_user,
            self.client.local()
        )
    }

    fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn send(&mut self, text: &str) {
        self.client
            .send_raw(text.as_bytes())
            .unwrap_or_else(|error| panic!("caller: sending over TLS: {error}\n{text}"));
        self.sent.push(text.as_bytes().to_vec());
    }

    /// Reads (and records) messages until the response `code` to `method`; fails on silence.
    fn expect_status(&mut self, method: &str, code: u16) -> Msg {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "caller: no {code} to {method} over TLS within {WAIT:?}"
            );
            match self.client.recv(left) {
                Ok(Received::Response(response)) => {
                    self.received.push(response.raw.clone());
                    let cseq = response.header("CSeq").unwrap_or_default().to_owned();
                    if response.status == code && cseq.ends_with(method) {
                        return Msg {
                            raw: String::from_utf8_lossy(&response.raw).into_owned(),
                        };
                    }
                    assert!(
                        response.status < 200 || !cseq.ends_with(method),
                        "caller: expected {code} to {method}, got:\n{}",
                        response.text()
                    );
                }
                Ok(Received::Timeout) => {
                    panic!("caller: no {code} to {method} over TLS within {WAIT:?}")
                }
                Ok(Received::Closed) => {
                    panic!("caller: the edge closed the TLS connection waiting for {code} {method}")
                }
                Err(error) => panic!("caller: reading over TLS: {error}"),
            }
        }
    }

    fn invite(&self, to: &str, call: &Call) -> String {
        let body = ALICE.sdp(self.rtp_port(), 1);
        format!(
            "INVITE sip:{to} SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: \"{display}\" <sip:{user}@{host}>;tag={tag}\r\nTo: <sip:{to}>\r\n\
             Call-ID: {cid}@{host}\r\nCSeq: 1 INVITE\r\n{contact}User-Agent: {agent}\r\n\
             {headers}Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            via = self.via(&call.branch),
            display = ALICE.display,
            user = ALICE.from_user,
            host = ALICE.host,
            tag = call.tag,
            cid = call.id,
            contact = self.contact(),
            agent = ALICE.agent,
            headers = ALICE.headers(),
            len = body.len(),
        )
    }

    fn in_dialog(&self, dialog: &Dialog, method: &str, cseq: u32) -> String {
        format!(
            "{method} {target} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: {local}\r\n\
             To: {remote}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{contact}\
             User-Agent: {agent}\r\n{headers}Content-Length: 0\r\n\r\n",
            target = dialog.target,
            via = self.via(&token(method)),
            local = dialog.local,
            remote = dialog.remote,
            cid = dialog.call_id,
            contact = self.contact(),
            agent = ALICE.agent,
            headers = ALICE.headers(),
        )
    }
}

/// The callee over TLS: it registers over its own TLS connection to the edge (in sv-b), and the
/// INVITE comes down that same connection. Records every message it read (decrypted) and wrote.
struct TlsCallee {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    local: SocketAddr,
    pending: Vec<u8>,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    received: Vec<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

impl TlsCallee {
    fn connect(trust: &TlsTrust, rtp: UdpSocket, rtcp: UdpSocket) -> TlsCallee {
        let server = Transport::Tls.edge();
        let stream = in_netns(NS_B, || TcpStream::connect_timeout(&server, WAIT))
            .unwrap_or_else(|error| panic!("callee: TCP to {server} from {NS_B}: {error}"));
        let local = stream
            .local_addr()
            .unwrap_or_else(|error| panic!("callee: local address: {error}"));
        let name = rustls::pki_types::ServerName::try_from(trust.server_name.clone())
            .unwrap_or_else(|error| panic!("callee: server name: {error}"));
        let connection = rustls::ClientConnection::new(trust.config.clone(), name)
            .unwrap_or_else(|error| panic!("callee: TLS client: {error}"));
        stream
            .set_read_timeout(Some(WAIT))
            .unwrap_or_else(|error| panic!("callee: read timeout: {error}"));
        let mut tls = rustls::StreamOwned::new(connection, stream);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .unwrap_or_else(|error| panic!("callee: TLS handshake with {server}: {error}"));
        }
        TlsCallee {
            tls,
            local,
            pending: Vec::new(),
            rtp,
            rtcp,
            received: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/TLS {}:{};branch=z9hG4bK{branch};rport\r\n",
            BOB.host,
            self.local.port()
        )
    }

    fn contact(&self) -> String {
        format!(
            "Contact: \"{}\" <sip:{}@{};transport=tls>\r\n",
            BOB.display, BOB.contact_user, self.local
        )
    }

    fn send(&mut self, text: &str) {
        self.tls
            .write_all(text.as_bytes())
            .and_then(|()| self.tls.flush())
            .unwrap_or_else(|error| panic!("callee: sending over TLS: {error}\n{text}"));
        self.sent.push(text.as_bytes().to_vec());
    }

    /// The next complete message read from the TLS stream (recorded), within [`WAIT`].
    fn next(&mut self, waiting_for: &str) -> Msg {
        let deadline = Instant::now() + WAIT;
        loop {
            let skip = self
                .pending
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.pending.drain(..skip);
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                let length = head
                    .split("\r\n")
                    .skip(1)
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        let name = name.trim().to_ascii_lowercase();
                        (name == "content-length" || name == "l").then(|| value.trim().to_owned())
                    })
                    .map(|value| {
                        value.parse::<usize>().unwrap_or_else(|_| {
                            panic!("callee: bad Content-Length {value:?} in:\n{head}")
                        })
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                if self.pending.len() >= total {
                    let raw: Vec<u8> = self.pending.drain(..total).collect();
                    self.received.push(raw.clone());
                    return Msg {
                        raw: String::from_utf8_lossy(&raw).into_owned(),
                    };
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "callee: nothing complete over TLS within {WAIT:?} waiting for {waiting_for}"
            );
            self.tls
                .sock
                .set_read_timeout(Some(left))
                .unwrap_or_else(|error| panic!("callee: read timeout: {error}"));
            let mut buf = [0u8; 16384];
            match self.tls.read(&mut buf) {
                Ok(0) => panic!("callee: the edge closed the TLS connection ({waiting_for})"),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(error) => panic!("callee: reading over TLS ({waiting_for}): {error}"),
            }
        }
    }

    fn expect(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        loop {
            let msg = self.next(what);
            if want(&msg) {
                return msg;
            }
        }
    }

    /// Answers `req` as `sip_support::ua::Ua::answer` does, over the TLS connection.
    fn answer(&mut self, req: &Msg, code: u16, to_tag: &str, sdp: Option<&str>) {
        let mut out = format!("SIP/2.0 {code} Reason\r\n");
        for via in req.headers("Via") {
            out.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["From", "Call-ID", "CSeq"] {
            if let Some(value) = req.header(name) {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        let to = req.header("To").unwrap_or_default();
        if to.contains("tag=") {
            out.push_str(&format!("To: {to}\r\n"));
        } else {
            out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
        }
        out.push_str(&format!(
            "{}Server: {}\r\n{}",
            self.contact(),
            BOB.agent,
            BOB.headers()
        ));
        match sdp {
            Some(sdp) => out.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        self.send(&out);
    }

    fn register(&mut self, user: &str, domain: &str, call_id: &str) {
        let tag = token("r");
        let register = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}@{host}\r\nCSeq: 1 REGISTER\r\n{contact}Expires: 600\r\n\
             User-Agent: {agent}\r\nContent-Length: 0\r\n\r\n",
            via = self.via(&tag),
            host = BOB.host,
            contact = self.contact(),
            agent = BOB.agent,
        );
        self.send(&register);
        let answer = self.expect("the final answer to REGISTER", |msg| {
            msg.status().is_some_and(|status| status >= 200)
        });
        assert_eq!(
            answer.status(),
            Some(200),
            "callee: REGISTER over TLS refused:\n{}",
            answer.raw
        );
    }
}

/// The callee: the UDP UA of `sip_support::call`, or its own TLS connection.
enum Callee {
    Udp(Party),
    Tls(Box<TlsCallee>),
}

impl Callee {
    fn register(&mut self, user: &str, domain: &str, call_id: &str) {
        match self {
            Callee::Udp(party) => party.register(user, domain, call_id, 1),
            Callee::Tls(tls) => tls.register(user, domain, call_id),
        }
    }

    fn expect_request(&mut self, method: &str) -> Msg {
        match self {
            Callee::Udp(party) => party.ua.expect_request(method),
            Callee::Tls(tls) => tls.expect(method, |msg| {
                msg.status().is_none() && msg.method() == method
            }),
        }
    }

    fn answer(&mut self, req: &Msg, code: u16, to_tag: &str, sdp: Option<&str>) {
        match self {
            Callee::Udp(party) => party
                .ua
                .answer(req, code, to_tag, &party.answer_headers(), sdp),
            Callee::Tls(tls) => tls.answer(req, code, to_tag, sdp),
        }
    }

    fn rtp(&self) -> &UdpSocket {
        match self {
            Callee::Udp(party) => &party.rtp,
            Callee::Tls(tls) => &tls.rtp,
        }
    }

    fn rtcp(&self) -> &UdpSocket {
        match self {
            Callee::Udp(party) => &party.rtcp,
            Callee::Tls(tls) => &tls.rtcp,
        }
    }

    /// The decrypted SIP it read and wrote (none for UDP: the capture holds its signalling).
    fn plaintext(&self) -> (&[Vec<u8>], &[Vec<u8>]) {
        match self {
            Callee::Udp(_) => (&[], &[]),
            Callee::Tls(tls) => (&tls.received, &tls.sent),
        }
    }
}

/// The findings of `audit` over each of `messages` (what a party received) as readable lines.
fn findings(
    messages: &[(String, &[u8])],
    identifiers: &[Identifier],
    own: &[IpAddr],
) -> Vec<String> {
    let mut out = Vec::new();
    for (what, bytes) in messages {
        for finding in audit(bytes, identifiers, own) {
            let kind = match &finding.kind {
                FindingKind::Identifier(label) => label.clone(),
                FindingKind::PrivateAddress(ip) => format!("private address {ip}"),
            };
            let start = finding.offset.saturating_sub(60);
            let end = (finding.offset + 60).min(bytes.len());
            out.push(format!(
                "{kind} in {what}: ...{}...",
                String::from_utf8_lossy(bytes.get(start..end).unwrap_or_default())
            ));
        }
    }
    out
}

/// `list` as (description, bytes) pairs borrowing the bytes.
fn refs(list: &[(String, Vec<u8>)]) -> Vec<(String, &[u8])> {
    list.iter()
        .map(|(what, bytes)| (what.clone(), bytes.as_slice()))
        .collect()
}

/// The labels of `identifiers` found in none of `messages`.
fn missing(messages: &[(String, &[u8])], identifiers: &[Identifier]) -> Vec<String> {
    identifiers
        .iter()
        .filter(|identifier| {
            !messages.iter().any(|(_, bytes)| {
                audit(bytes, std::slice::from_ref(identifier), &[])
                    .iter()
                    .any(|finding| matches!(finding.kind, FindingKind::Identifier(_)))
            })
        })
        .map(|identifier| identifier.label.clone())
        .collect()
}

#[test]
fn leak_audit_tls_caller_to_udp_callee() {
    call_and_audit(false);
}

#[test]
fn leak_audit_tls_caller_to_tls_callee() {
    call_and_audit(true);
}

/// One call (TLS caller → the open.lab callee over UDP or TLS), then the audit.
fn call_and_audit(callee_tls: bool) {
    let Some(_) = on_path("dumpcap") else {
        panic!(
            "dumpcap is not installed: the leak audit captures what each party receives with it \
             (Debian package wireshark-common, pulled in by tshark)"
        );
    };
    let edge = Edge::start_xdp("calls_leak_audit_tls", &EdgeOptions::default());
    // From here on (the lab lock may have made the test wait for another session).
    let started = Instant::now();
    let bind = |port: u16| {
        in_netns(NS_A, || UdpSocket::bind(SocketAddr::from((A_ADDR, port))))
            .unwrap_or_else(|error| panic!("caller media socket {port} in {NS_A}: {error}"))
    };
    let bind_b = |port: u16| {
        in_netns(NS_B, || UdpSocket::bind(SocketAddr::from((B_ADDR, port))))
            .unwrap_or_else(|error| panic!("callee media socket {port} in {NS_B}: {error}"))
    };
    let cap_a = Capture::start(NS_A, "a0", &edge.dir.join("caller.pcap"))
        .unwrap_or_else(|error| panic!("{error}"));
    let cap_b = Capture::start(NS_B, "b0", &edge.dir.join("callee.pcap"))
        .unwrap_or_else(|error| panic!("{error}"));
    let client = SipClient::connect(NS_A, Transport::Tls, Some(&edge.tls))
        .unwrap_or_else(|error| panic!("caller: TLS connection to the edge: {error}"));
    let mut alice = TlsCaller {
        client,
        rtp: bind(40_000),
        rtcp: bind(40_001),
        received: Vec::new(),
        sent: Vec::new(),
    };
    let mut bob = if callee_tls {
        Callee::Tls(Box::new(TlsCallee::connect(
            &edge.tls,
            bind_b(40_100),
            bind_b(40_101),
        )))
    } else {
        Callee::Udp(Party::new(&BOB, NS_B, 5070, 40_100))
    };
    let xdp_before = xdp_relayed();
    let mut failures = Vec::new();

    bob.register(NICK, "open.lab", &token("reg"));
    let to = format!("{NICK}@open.lab");

    // INVITE over TLS → ringing, answer, ACK.
    let call = Call::new("tlsanon");
    let invite = alice.invite(&to, &call);
    alice.send(&invite);
    let far = bob.expect_request("INVITE");
    let edge_b = far
        .media_addr()
        .unwrap_or_else(|| panic!("the far INVITE has no SDP offer:\n{}", far.raw));
    bob.answer(&far, 180, "tlsb1", None);
    alice.expect_status("INVITE", 180);
    let bob_port = bob.rtp().local_addr().map(|a| a.port()).unwrap_or(0);
    let answer = BOB.sdp(bob_port, 1);
    bob.answer(&far, 200, "tlsb1", Some(&answer));
    let ok = alice.expect_status("INVITE", 200);
    let edge_a = ok
        .media_addr()
        .unwrap_or_else(|| panic!("the 2xx over TLS has no SDP answer:\n{}", ok.raw));
    let dialog = Dialog::caller(&ok);
    let ack = alice.in_dialog(&dialog, "ACK", 1);
    alice.send(&ack);
    bob.expect_request("ACK");

    // A little media both ways: RTP, then RTCP (SR + SDES with each party's CNAME).
    let rtp_a_to_b = rtp_crosses(&alice.rtp, edge_a, bob.rtp(), 50);
    let rtp_b_to_a = rtp_crosses(bob.rtp(), edge_b, &alice.rtp, 50);
    let sr = rtcp_sr_sdes(0x0a11_ce00, ALICE.cname, &ALICE.private.to_string());
    for _ in 0..5 {
        let _ = alice.rtcp.send_to(&sr, rtcp_of(edge_a));
    }
    let rtcp_a_to_b = drain(bob.rtcp(), Duration::from_millis(300)).len();
    let sr_b = rtcp_sr_sdes(0x0b0b_0000, BOB.cname, &BOB.private.to_string());
    for _ in 0..5 {
        let _ = bob.rtcp().send_to(&sr_b, rtcp_of(edge_b));
    }
    let rtcp_b_to_a = drain(&alice.rtcp, Duration::from_millis(300)).len();
    println!(
        "media: RTP a->b {rtp_a_to_b}, b->a {rtp_b_to_a}; RTCP a->b {rtcp_a_to_b}, b->a {rtcp_b_to_a}"
    );
    if rtp_a_to_b == 0 || rtp_b_to_a == 0 {
        failures.push(format!(
            "RTP did not cross both ways: a->b {rtp_a_to_b}, b->a {rtp_b_to_a}"
        ));
    }
    if rtcp_a_to_b == 0 || rtcp_b_to_a == 0 {
        failures.push(format!(
            "RTCP did not cross both ways: a->b {rtcp_a_to_b}, b->a {rtcp_b_to_a}"
        ));
    }

    // BYE from the TLS caller.
    let bye = alice.in_dialog(&dialog, "BYE", 2);
    alice.send(&bye);
    let far_bye = bob.expect_request("BYE");
    bob.answer(&far_bye, 200, "tlsb1", None);
    alice.expect_status("BYE", 200);

    // The audit.
    let frames_a = cap_a.finish().unwrap_or_else(|error| panic!("{error}"));
    let frames_b = cap_b.finish().unwrap_or_else(|error| panic!("{error}"));
    let frame_list = |frames: &[Frame], keep: &dyn Fn(&Frame) -> bool| {
        frames
            .iter()
            .filter(|frame| keep(frame))
            .map(|frame| {
                (
                    format!("a frame {} -> {}", frame.src, frame.dst),
                    frame.bytes.clone(),
                )
            })
            .collect::<Vec<(String, Vec<u8>)>>()
    };
    // What the caller received: the decrypted SIP its TLS client read, and the frames
    // addressed to it (media in clear; its TLS records are ciphertext and match nothing).
    let mut to_a: Vec<(String, Vec<u8>)> = alice
        .received
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            (
                format!("TLS plaintext message {i} read by the caller"),
                bytes.clone(),
            )
        })
        .collect();
    let tls_messages = to_a.len();
    to_a.extend(frame_list(&frames_a, &|frame| frame.dst == A_ADDR));
    let from_a: Vec<(String, Vec<u8>)> = alice
        .sent
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            (
                format!("TLS plaintext message {i} the caller wrote"),
                bytes.clone(),
            )
        })
        .chain(frame_list(&frames_a, &|frame| frame.src == A_ADDR))
        .collect();
    let (b_read, b_wrote) = bob.plaintext();
    let mut to_b: Vec<(String, Vec<u8>)> = b_read
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            (
                format!("TLS plaintext message {i} read by the callee"),
                bytes.clone(),
            )
        })
        .collect();
    let tls_messages_b = to_b.len();
    to_b.extend(frame_list(&frames_b, &|frame| frame.dst == B_ADDR));
    let from_b: Vec<(String, Vec<u8>)> = b_wrote
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            (
                format!("TLS plaintext message {i} the callee wrote"),
                bytes.clone(),
            )
        })
        .chain(frame_list(&frames_b, &|frame| frame.src == B_ADDR))
        .collect();
    if callee_tls && tls_messages_b < 4 {
        failures.push(format!(
            "the callee read only {tls_messages_b} messages over TLS (200 REGISTER, INVITE, ACK, \
             BYE expected)"
        ));
    }
    let own_a = [IpAddr::V4(ALICE.private)];
    let own_b = [IpAddr::V4(BOB.private)];
    let leaks_to_a = findings(&refs(&to_a), &BOB.identifiers(), &own_a);
    let leaks_to_b = findings(&refs(&to_b), &ALICE.identifiers(), &own_b);
    println!(
        "callee over TLS: {callee_tls}; caller received {tls_messages} TLS plaintext messages and \
         {} frames; callee received {tls_messages_b} TLS plaintext messages and {} frames; \
         findings {} / {}",
        to_a.len() - tls_messages,
        to_b.len() - tls_messages_b,
        leaks_to_a.len(),
        leaks_to_b.len()
    );
    if tls_messages < 3 {
        failures.push(format!(
            "the caller read only {tls_messages} messages over TLS (180, 200 INVITE, 200 BYE \
             expected)"
        ));
    }
    failures.extend(leaks_to_a.iter().map(|l| format!("caller received {l}")));
    failures.extend(leaks_to_b.iter().map(|l| format!("callee received {l}")));
    let missing_a = missing(&refs(&from_a), &ALICE.identifiers());
    let missing_b = missing(&refs(&from_b), &BOB.identifiers());
    if !missing_a.is_empty() || !missing_b.is_empty() {
        failures.push(format!(
            "negative control: identifiers not found in the parties' own sent bytes (the audit \
             could not have seen them): caller {missing_a:?}, callee {missing_b:?}"
        ));
    }
    let leaks = metric("sipveil_privacy_leaks_total");
    if leaks != 0.0 {
        failures.push(format!("sipveil_privacy_leaks_total is {leaks}"));
    }
    let xdp = xdp_relayed().saturating_sub(xdp_before);
    println!("XDP relayed {xdp} packets during the call");
    if xdp == 0 {
        failures.push("XDP relayed no packet of the call".to_owned());
    }
    edge.assert_alive("the TLS call");
    println!(
        "call and audit took {:?} after the daemon started",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n--- daemon log:\n{}",
        failures.len(),
        failures.join("\n"),
        edge.log_tail()
    );
}
