//! Test harness: two parties with distinctive identifiers, the dialog map
//! between them, and inboxes of exactly the bytes each party receives.

use bytes::Bytes;
use sipveil_b2bua::{
    Action, CallRef, CallSetup, CallerIdentity, CountingAnchor, DialogMap, EdgeAddress,
    EdgeTransport, FarTarget, Identifier, LegRef, Outcome, PrivacyPolicy, SeededIds, audit,
};
use sipveil_sip::{
    HeaderName, Limits, Message, Request, Response, StatusCode, Uri, parse_datagram,
};

pub type Flow = &'static str;
pub type Tx = u32;
pub type Map = DialogMap<Flow, Tx>;

/// The caller's identifiers: nothing here may reach a callee (except the
/// AOR when the caller is identified).
pub const A_LAN: &str = "192.168.77.10";
pub const A_PUBLIC: &str = "203.0.113.77";
pub const A_HOST: &str = "alicebox.home.arpa";
pub const A_UA: &str = "AliceSoft/9.9.9";
pub const A_DISPLAY: &str = "Alice Wonderland";
pub const A_CONTACT_USER: &str = "alice-contact-7788";
pub const A_TAG: &str = "alicetag123";
pub const A_CALL_ID: &str = "alicecallid4711@alicebox.home.arpa";
pub const A_SDP_USER: &str = "aliceorigin";
pub const A_SDP_SESSION: &str = "8877665544";
pub const A_SDP_NAME: &str = "AliceSession";
pub const A_CNAME: &str = "alice@alicebox";
pub const A_SUBJECT: &str = "AliceSubject";
pub const A_WARNING: &str = "AliceWarning";
pub const A_BRANCH: &str = "z9hG4bKalicebranch";
pub const A_AOR: &str = "sip:alice@auth.lab";

/// The callee's identifiers (per device: `n` = 1 or 2).
pub const B1_LAN: &str = "10.20.30.41";
pub const B2_LAN: &str = "10.20.30.42";
pub fn b_lan(n: u8) -> String {
    format!("10.20.30.4{n}")
}
pub fn b_public(n: u8) -> String {
    format!("198.51.100.9{n}")
}
pub fn b_host(n: u8) -> String {
    format!("bobphone{n}.corp.example")
}
pub fn b_ua(n: u8) -> String {
    format!("BobPhone{n}/3.1")
}
pub const B_DISPLAY: &str = "Bob Builder";
pub fn b_contact_user(n: u8) -> String {
    format!("bob-contact-424{n}")
}
pub fn b_tag(n: u8) -> String {
    format!("bobtag45{n}")
}
pub const B_SDP_USER: &str = "boborigin";
pub const B_SDP_SESSION: &str = "5566778899";
pub const B_SDP_NAME: &str = "BobSession";
pub const B_SUBJECT: &str = "BobSubject";
pub const B_WARNING: &str = "BobWarning";
pub const B_AOR: &str = "sip:bob@open.lab";

pub const EDGE_A: &str = "198.18.1.1";
pub const EDGE_B: &str = "198.18.2.1";

pub fn caller_identifiers() -> Vec<Identifier> {
    [
        ("caller LAN address", A_LAN),
        ("caller public address", A_PUBLIC),
        ("caller host name", A_HOST),
        ("caller User-Agent", A_UA),
        ("caller display name", A_DISPLAY),
        ("caller contact user", A_CONTACT_USER),
        ("caller tag", A_TAG),
        ("caller Call-ID", "alicecallid4711"),
        ("caller SDP user", A_SDP_USER),
        ("caller SDP session id", A_SDP_SESSION),
        ("caller SDP name", A_SDP_NAME),
        ("caller CNAME", A_CNAME),
        ("caller Subject", A_SUBJECT),
        ("caller Warning", A_WARNING),
        ("caller branch", A_BRANCH),
        ("caller ICE ufrag", "aliceufrag"),
        ("caller X- header", "X-Alice"),
    ]
    .into_iter()
    .map(|(l, v)| Identifier::new(l, v))
    .collect()
}

pub fn caller_identifiers_with_aor() -> Vec<Identifier> {
    let mut v = caller_identifiers();
    v.push(Identifier::new("caller AOR", A_AOR));
    v.push(Identifier::new("caller user", "alice"));
    v
}

pub fn callee_identifiers(n: u8) -> Vec<Identifier> {
    [
        ("callee LAN address", b_lan(n)),
        ("callee public address", b_public(n)),
        ("callee host name", b_host(n)),
        ("callee User-Agent", b_ua(n)),
        ("callee display name", B_DISPLAY.to_owned()),
        ("callee contact user", b_contact_user(n)),
        ("callee tag", b_tag(n)),
        ("callee SDP user", B_SDP_USER.to_owned()),
        ("callee SDP session id", B_SDP_SESSION.to_owned()),
        ("callee SDP name", B_SDP_NAME.to_owned()),
        ("callee Subject", B_SUBJECT.to_owned()),
        ("callee Warning", B_WARNING.to_owned()),
        ("callee ICE ufrag", "bobufrag".to_owned()),
        ("callee X- header", "X-Bob".to_owned()),
        ("callee Server", "BobServer".to_owned()),
    ]
    .into_iter()
    .map(|(l, v)| Identifier::new(l, v))
    .collect()
}

pub fn parse(text: &str) -> Message {
    match parse_datagram(
        Bytes::from(text.replace('\n', "\r\n").replace("\r\r\n", "\r\n")),
        &Limits::default(),
    ) {
        Ok(m) => m,
        Err(e) => panic!("test message does not parse: {e:?}\n{text}"),
    }
}

pub fn req(text: &str) -> Request {
    match parse(text) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

/// Re-parse bytes exactly as the receiving party would, and validate.
pub fn received(bytes: &Bytes) -> Message {
    let m = parse_datagram(bytes.clone(), &Limits::default()).expect("edge output parses");
    m.validate(&Limits::default())
        .expect("edge output validates");
    m
}

pub fn caller_sdp(version: u32, port: u16, extra: &str) -> String {
    format!(
        "v=0\r\no={A_SDP_USER} {A_SDP_SESSION} {version} IN IP4 {A_LAN}\r\ns={A_SDP_NAME}\r\n\
         i=Alice calling from {A_HOST}\r\nc=IN IP4 {A_LAN}\r\nt=0 0\r\n\
         a=tool:{A_UA}\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=rtcp:{} IN IP4 {A_LAN}\r\n\
         a=ice-ufrag:aliceufrag\r\na=ice-pwd:alicepwdalicepwdalicepwd\r\n\
         a=candidate:1 1 UDP 2130706431 {A_LAN} {port} typ host\r\n\
         a=candidate:2 1 UDP 1694498815 {A_PUBLIC} 41000 typ srflx raddr {A_LAN} rport {port}\r\n\
         a=ssrc:1234 cname:{A_CNAME}\r\n{extra}a=sendrecv\r\n",
        port + 1
    )
}

pub fn callee_sdp(n: u8, version: u32, port: u16) -> String {
    format!(
        "v=0\r\no={B_SDP_USER} {B_SDP_SESSION} {version} IN IP4 {lan}\r\ns={B_SDP_NAME}\r\n\
         c=IN IP4 {lan}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
         a=ice-ufrag:bobufrag\r\na=ice-pwd:bobpwdbobpwdbobpwdbobpwd\r\n\
         a=candidate:1 1 UDP 2130706431 {lan} {port} typ host\r\n\
         a=candidate:2 1 UDP 1694498815 {public} 42000 typ srflx raddr {lan} rport {port}\r\n\
         a=sendrecv\r\n",
        lan = b_lan(n),
        public = b_public(n)
    )
}

/// The caller's INVITE with every identifier in it.
pub fn caller_invite(privacy: Option<&str>) -> Request {
    caller_invite_with(privacy, "", Some(caller_sdp(1, 16000, "")))
}

/// The caller's INVITE with extra header lines (each ending in CRLF) and
/// an optional SDP offer.
pub fn caller_invite_with(privacy: Option<&str>, extra: &str, sdp: Option<String>) -> Request {
    let (ct, sdp) = match sdp {
        Some(s) => ("Content-Type: application/sdp\r\n", s),
        None => ("", String::new()),
    };
    let privacy = privacy
        .map(|p| format!("Privacy: {p}\r\n"))
        .unwrap_or_default();
    req(&format!(
        "INVITE {B_AOR} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {A_HOST}:5060;branch={A_BRANCH};rport\r\n\
         Via: SIP/2.0/UDP {A_LAN}:5070;branch=z9hG4bKinner\r\n\
         Record-Route: <sip:{A_LAN}:5080;lr>\r\n\
         Max-Forwards: 70\r\n\
         From: \"{A_DISPLAY}\" <{A_AOR}>;tag={A_TAG}\r\n\
         To: <{B_AOR}>\r\n\
         Call-ID: {A_CALL_ID}\r\n\
         CSeq: 31337 INVITE\r\n\
         Contact: \"{A_DISPLAY}\" <sip:{A_CONTACT_USER}@{A_LAN}:5060;ob>;+sip.instance=\"<urn:uuid:0000-alice>\"\r\n\
         User-Agent: {A_UA}\r\n\
         Subject: {A_SUBJECT} from {A_LAN}\r\n\
         Warning: 399 {A_HOST} \"{A_WARNING}\"\r\n\
         X-Alice-Addr: {A_LAN}\r\n\
         Organization: {A_HOST}\r\n\
         P-Preferred-Identity: <sip:{A_CONTACT_USER}@{A_HOST}>\r\n\
         P-Asserted-Identity: <sip:{A_CONTACT_USER}@{A_HOST}>\r\n\
         Call-Info: <http://{A_HOST}/photo.png>;purpose=icon\r\n\
         Date: Sat, 21 Nov 2026 15:00:00 GMT\r\n\
         Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, SUBSCRIBE, NOTIFY, INFO, UPDATE, MESSAGE\r\n\
         Supported: replaces, timer, 100rel, gruu, outbound\r\n\
         Session-Expires: 1800\r\n\
         {privacy}{extra}{ct}\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

pub fn edge_a() -> EdgeAddress {
    EdgeAddress {
        host: EDGE_A.to_owned(),
        port: Some(5060),
        transport: EdgeTransport::Udp,
        media_ip: EDGE_A.parse().expect("ip"),
    }
}

pub fn edge_b() -> EdgeAddress {
    EdgeAddress {
        host: EDGE_B.to_owned(),
        port: Some(5060),
        transport: EdgeTransport::Udp,
        media_ip: EDGE_B.parse().expect("ip"),
    }
}

pub fn target(n: u8, flow: Flow) -> FarTarget<Flow> {
    FarTarget {
        uri: Uri::parse_str(&format!(
            "sip:{}@{}:5062;transport=udp",
            b_contact_user(n),
            b_lan(n)
        ))
        .expect("uri"),
        route: Vec::new(),
        trusted: false,
        flow,
    }
}

/// What each party received, as bytes.
#[derive(Default, Debug)]
pub struct Inboxes {
    /// Everything the caller received (responses to its requests and the
    /// edge's requests on its leg).
    pub a: Vec<Bytes>,
    /// Everything the callee devices received, per fork.
    pub b: Vec<(u16, Bytes)>,
}

pub struct World {
    pub map: Map,
    pub ids: SeededIds,
    pub anchor: CountingAnchor,
    pub inbox: Inboxes,
    /// Requests the edge sent on each leg, parsed (latest last).
    pub sent_a: Vec<Request>,
    pub sent_b: Vec<(u16, Request)>,
    /// Responses the caller got, with the tx they answer.
    pub responses_a: Vec<(Tx, Response)>,
    pub acks_b: Vec<(u16, Request)>,
    pub acks_a: Vec<Request>,
    pub responses_b: Vec<(Tx, Response)>,
    pub ended: Vec<CallRef>,
    pub next_tx: Tx,
    /// Which party each server transaction belongs to (None = caller).
    pub tx_owner: std::collections::HashMap<Tx, Option<u16>>,
}

impl World {
    pub fn new(policy: PrivacyPolicy) -> Self {
        World {
            map: DialogMap::new(policy),
            ids: SeededIds::new(0x5eed),
            anchor: CountingAnchor::new(
                EDGE_A.parse().expect("ip"),
                EDGE_B.parse().expect("ip"),
                40000,
            ),
            inbox: Inboxes::default(),
            sent_a: Vec::new(),
            sent_b: Vec::new(),
            responses_a: Vec::new(),
            acks_b: Vec::new(),
            acks_a: Vec::new(),
            responses_b: Vec::new(),
            ended: Vec::new(),
            next_tx: 1,
            tx_owner: std::collections::HashMap::new(),
        }
    }

    fn deliver(&mut self, actions: Vec<Action<Flow, Tx>>) {
        for a in actions {
            match a {
                Action::Respond { tx, response } => {
                    let bytes = response.to_bytes();
                    let _ = received(&bytes);
                    match self.tx_owner.get(&tx).copied().flatten() {
                        None => {
                            self.inbox.a.push(bytes);
                            self.responses_a.push((tx, response));
                        }
                        Some(fork) => {
                            self.inbox.b.push((fork, bytes));
                            self.responses_b.push((tx, response));
                        }
                    }
                }
                Action::Send { leg, request, .. } | Action::SendAck { leg, request, .. } => {
                    let bytes = request.to_bytes();
                    let Message::Request(parsed) = received(&bytes) else {
                        panic!("request")
                    };
                    let is_ack = *parsed.method() == sipveil_sip::Method::Ack;
                    match leg {
                        LegRef::A => {
                            self.inbox.a.push(bytes);
                            if is_ack {
                                self.acks_a.push(parsed);
                            } else {
                                self.sent_a.push(parsed);
                            }
                        }
                        LegRef::B(f) => {
                            self.inbox.b.push((f, bytes));
                            if is_ack {
                                self.acks_b.push((f, parsed));
                            } else {
                                self.sent_b.push((f, parsed));
                            }
                        }
                    }
                }
                Action::CallEnded { call } => self.ended.push(call),
            }
        }
    }

    /// Start a call from the caller (even tx = caller side).
    pub fn start(
        &mut self,
        invite: Request,
        identity: CallerIdentity,
        targets: Vec<FarTarget<Flow>>,
    ) -> (Option<CallRef>, Tx) {
        let tx = self.a_tx();
        let setup = CallSetup {
            identity,
            callee: Uri::parse_str(B_AOR).expect("uri"),
            targets,
            a_flow: "a",
            edge_a: edge_a(),
            edge_b: edge_b(),
        };
        let (call, actions) =
            self.map
                .start_call(&mut self.ids, &mut self.anchor, tx, invite, setup);
        self.deliver(actions);
        (call, tx)
    }

    /// A fresh caller-side transaction handle.
    pub fn a_tx(&mut self) -> Tx {
        self.next_tx += 1;
        self.tx_owner.insert(self.next_tx, None);
        self.next_tx
    }

    /// A fresh transaction handle of callee device (fork) `fork`.
    pub fn b_tx(&mut self, fork: u16) -> Tx {
        self.next_tx += 1;
        self.tx_owner.insert(self.next_tx, Some(fork));
        self.next_tx
    }

    /// The caller sends an in-dialog request or CANCEL (an ACK goes
    /// through `handle_ack`, as the transaction layer reports it).
    pub fn caller_sends(&mut self, r: Request) -> Tx {
        let tx = self.a_tx();
        if *r.method() == sipveil_sip::Method::Ack {
            let actions = self
                .map
                .handle_ack(&mut self.ids, &mut self.anchor, "a", &r);
            self.deliver(actions);
            return tx;
        }
        match self
            .map
            .handle_request(&mut self.ids, &mut self.anchor, "a", tx, r)
        {
            Outcome::Handled(actions) => self.deliver(actions),
            Outcome::NotInDialog { .. } => panic!("not in dialog"),
        }
        tx
    }

    /// Callee device `fork` sends a request.
    pub fn callee_sends(&mut self, fork: u16, r: Request) -> Tx {
        let tx = self.b_tx(fork);
        let flow = if fork == 0 { "b1" } else { "b2" };
        if *r.method() == sipveil_sip::Method::Ack {
            let actions = self
                .map
                .handle_ack(&mut self.ids, &mut self.anchor, flow, &r);
            self.deliver(actions);
            return tx;
        }
        match self
            .map
            .handle_request(&mut self.ids, &mut self.anchor, flow, tx, r)
        {
            Outcome::Handled(actions) => self.deliver(actions),
            Outcome::NotInDialog { .. } => panic!("not in dialog"),
        }
        tx
    }

    /// Callee device answers a request it received.
    pub fn b_responds(&mut self, fork: u16, resp: Response) {
        let flow = if fork == 0 { "b1" } else { "b2" };
        let actions = self
            .map
            .handle_response(&mut self.ids, &mut self.anchor, flow, resp);
        self.deliver(actions);
    }

    /// The caller answers a request the edge sent it.
    pub fn a_responds(&mut self, resp: Response) {
        let actions = self
            .map
            .handle_response(&mut self.ids, &mut self.anchor, "a", resp);
        self.deliver(actions);
    }

    /// The latest request the edge sent to fork `f` with this method.
    pub fn last_to_b(&self, fork: u16, method: &str) -> Request {
        self.sent_b
            .iter()
            .rev()
            .find(|(f, r)| *f == fork && r.method().as_bytes() == method.as_bytes())
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no {method} sent to fork {fork}"))
    }

    pub fn last_to_a(&self, method: &str) -> Request {
        self.sent_a
            .iter()
            .rev()
            .find(|r| r.method().as_bytes() == method.as_bytes())
            .cloned()
            .unwrap_or_else(|| panic!("no {method} sent to the caller"))
    }

    pub fn last_response_a(&self) -> Response {
        self.responses_a
            .last()
            .map(|(_, r)| r.clone())
            .expect("a response to the caller")
    }
}

/// The callee device's response to a request it received, with its identifiers.
pub fn callee_response(n: u8, to: &Request, status: u16, sdp: Option<String>) -> Response {
    let code = StatusCode::new(status).expect("status");
    let mut b = to
        .response(code)
        .reason(format!("Status from {} at {}", b_host(n), b_lan(n)))
        .to_tag(b_tag(n))
        .header(
            HeaderName::Contact,
            format!(
                "\"{B_DISPLAY}\" <sip:{}@{}:5062>",
                b_contact_user(n),
                b_lan(n)
            ),
        )
        .header(
            HeaderName::RecordRoute,
            format!("<sip:{}:5099;lr>", b_lan(n)),
        )
        .header(HeaderName::Server, format!("{} BobServer", b_ua(n)))
        .header(
            HeaderName::Warning,
            format!("399 {} \"{B_WARNING}\"", b_host(n)),
        )
        .header(HeaderName::Subject, format!("{B_SUBJECT} {}", b_public(n)))
        .header(HeaderName::from_static("X-Bob-Addr"), b_lan(n))
        .header(HeaderName::Allow, "INVITE, ACK, BYE, CANCEL, REFER")
        .header(HeaderName::Supported, "timer, 100rel, replaces");
    if let Some(s) = sdp {
        b = b.body("application/sdp", Bytes::from(s));
    }
    b.build().expect("callee response")
}

/// The caller's response to a request the edge sent it.
pub fn caller_response(to: &Request, status: u16, sdp: Option<String>) -> Response {
    let code = StatusCode::new(status).expect("status");
    let mut b = to
        .response(code)
        .reason(format!("OK from {A_HOST}"))
        .header(
            HeaderName::Contact,
            format!("<sip:{A_CONTACT_USER}@{A_LAN}:5060>"),
        )
        .header(HeaderName::UserAgent, A_UA)
        .header(HeaderName::Server, A_UA)
        .header(HeaderName::from_static("X-Alice-Addr"), A_LAN);
    if let Some(s) = sdp {
        b = b.body("application/sdp", Bytes::from(s));
    }
    b.build().expect("caller response")
}

/// A request on the caller's side of an established dialog.
pub fn caller_in_dialog(method: &str, edge_tag: &str, cseq: u32, sdp: Option<String>) -> Request {
    let body = sdp.unwrap_or_default();
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_owned()
    };
    req(&format!(
        "{method} sip:{EDGE_A}:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {A_HOST}:5060;branch=z9hG4bK{method}{cseq}alice;rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"{A_DISPLAY}\" <{A_AOR}>;tag={A_TAG}\r\n\
         To: <{B_AOR}>;tag={edge_tag}\r\n\
         Call-ID: {A_CALL_ID}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:{A_CONTACT_USER}@{A_LAN}:5060>\r\n\
         User-Agent: {A_UA}\r\n\
         X-Alice-Addr: {A_LAN}\r\n\
         Subject: {A_SUBJECT}\r\n\
         {ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// A request from callee device `n` inside its dialog with the edge.
pub fn callee_in_dialog(n: u8, method: &str, edge_from: &str, call_id: &str, cseq: u32) -> Request {
    req(&format!(
        "{method} sip:{EDGE_B}:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {}:5062;branch=z9hG4bK{method}{cseq}bob;rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"{B_DISPLAY}\" <{B_AOR}>;tag={}\r\n\
         To: {edge_from}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:{}@{}:5062>\r\n\
         User-Agent: {}\r\n\
         Warning: 399 {} \"{B_WARNING}\"\r\n\
         X-Bob-Addr: {}\r\n\
         Content-Length: 0\r\n\r\n",
        b_host(n),
        b_tag(n),
        b_contact_user(n),
        b_lan(n),
        b_ua(n),
        b_host(n),
        b_lan(n)
    ))
}

/// Assert none of `ids`, and no private address but the receiver's own
/// (`own`), is in any of `msgs`.
pub fn assert_clean<'a>(
    what: &str,
    msgs: impl IntoIterator<Item = &'a Bytes>,
    ids: &[Identifier],
    own: &[&str],
) {
    let own: Vec<std::net::IpAddr> = own.iter().map(|s| s.parse().expect("ip")).collect();
    let mut n = 0;
    for m in msgs {
        n += 1;
        let findings = audit(m, ids, &own);
        assert!(
            findings.is_empty(),
            "{what}: leak {findings:?} in\n{}",
            String::from_utf8_lossy(m)
        );
    }
    assert!(
        n > 0,
        "{what}: nothing was received, the audit would be vacuous"
    );
}
