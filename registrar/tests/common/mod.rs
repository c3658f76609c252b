//! Shared fixtures: configuration, REGISTER builder, digest client, virtual clock.
#![expect(dead_code, reason = "each test binary uses a different subset")]

use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};
use sipveil_registrar::{
    DomainConfig, ExpiresLimits, FlowInfo, Policy, Proto, RegisterOutcome, RegistrarConfig,
    ReportResult, StoreOp, UserEntry, ha1_md5, ha1_sha256,
};
use sipveil_sip::{Auth, HeaderName, Limits, Message, Request, Response, parse_datagram};

/// Virtual clock start: 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;
pub const SECRET: [u8; 32] = [0x5a; 32];

pub fn limits() -> ExpiresLimits {
    ExpiresLimits {
        min: 60,
        max: 3600,
        default: 600,
    }
}

pub fn domain(name: &str, policy: Policy) -> DomainConfig {
    DomainConfig {
        name: name.into(),
        policy,
        realm: name.into(),
        users: Vec::new(),
        anonymous_callers: true,
        refuse_anonymous: false,
        expires: limits(),
        max_contacts: 4,
        digest_algorithms: Vec::new(),
    }
}

pub fn config() -> RegistrarConfig {
    let mut auth = domain("auth.lab", Policy::Authenticated);
    auth.refuse_anonymous = true;
    auth.users = vec![
        UserEntry {
            name: "alice".into(),
            ha1_sha256: ha1_sha256("alice", "auth.lab", "wonderland"),
            ha1_md5: Some(ha1_md5("alice", "auth.lab", "wonderland")),
            refuse_anonymous: Some(false),
        },
        UserEntry {
            name: "bob".into(),
            ha1_sha256: ha1_sha256("bob", "auth.lab", "builder"),
            ha1_md5: None,
            refuse_anonymous: None,
        },
    ];
    RegistrarConfig {
        domains: vec![
            domain("open.lab", Policy::Open),
            auth,
            domain("closed.lab", Policy::Closed),
        ],
        nonce_ttl_secs: 300,
        max_bindings: 1000,
    }
}

pub fn flow() -> FlowInfo {
    FlowInfo {
        proto: Proto::Udp,
        local: "198.18.1.1:5060".parse().expect("addr"),
        peer: "198.18.1.2:5060".parse().expect("addr"),
        worker: 0,
        conn: 0,
    }
}

pub fn tcp_flow(conn: u64) -> FlowInfo {
    FlowInfo {
        proto: Proto::Tcp,
        local: "198.18.1.1:5060".parse().expect("addr"),
        peer: format!("198.18.1.2:{}", 40000 + conn)
            .parse()
            .expect("addr"),
        worker: 1,
        conn,
    }
}

/// A REGISTER under construction.
#[derive(Clone, Debug)]
pub struct Reg {
    pub ruri_host: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub contacts: Vec<String>,
    pub expires: Option<String>,
    pub extra: Vec<String>,
}

impl Reg {
    pub fn new(user: &str, host: &str, call_id: &str, cseq: u32) -> Reg {
        Reg {
            ruri_host: host.into(),
            to: format!("<sip:{user}@{host}>"),
            call_id: call_id.into(),
            cseq,
            contacts: vec![format!("<sip:{user}@198.18.1.2:5060>")],
            expires: None,
            extra: Vec::new(),
        }
    }
    pub fn contacts(mut self, c: &[&str]) -> Reg {
        self.contacts = c.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn expires(mut self, e: &str) -> Reg {
        self.expires = Some(e.into());
        self
    }
    pub fn header(mut self, h: &str) -> Reg {
        self.extra.push(h.into());
        self
    }
    pub fn cseq(mut self, n: u32) -> Reg {
        self.cseq = n;
        self
    }
    pub fn text(&self) -> String {
        let mut s = format!(
            "REGISTER sip:{} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bK{}x{};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {};tag=ft{}\r\n\
             To: {}\r\n\
             Call-ID: {}\r\n\
             CSeq: {} REGISTER\r\n",
            self.ruri_host,
            self.cseq,
            self.call_id.len(),
            self.to,
            self.call_id.len(),
            self.to,
            self.call_id,
            self.cseq
        );
        for c in &self.contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = &self.expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        for h in &self.extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s
    }
    pub fn build(&self) -> Request {
        parse(&self.text())
    }
}

pub fn parse(text: &str) -> Request {
    match parse_datagram(Bytes::from(text.to_owned()), &Limits::default()) {
        Ok(Message::Request(r)) => r,
        other => panic!("fixture does not parse as a request: {other:?}\n{text}"),
    }
}

pub fn response(o: &RegisterOutcome) -> &Response {
    match o {
        RegisterOutcome::Respond { response, .. } | RegisterOutcome::Commit { response, .. } => {
            response
        }
        RegisterOutcome::Drop { report } => panic!("dropped: {report:?}"),
    }
}

pub fn status(o: &RegisterOutcome) -> u16 {
    response(o).status().as_u16()
}

pub fn reason(o: &RegisterOutcome) -> String {
    String::from_utf8_lossy(response(o).reason()).into_owned()
}

pub fn result(o: &RegisterOutcome) -> ReportResult {
    match o {
        RegisterOutcome::Respond { report, .. }
        | RegisterOutcome::Commit { report, .. }
        | RegisterOutcome::Drop { report } => report.result,
    }
}

pub fn ops(o: &RegisterOutcome) -> &[StoreOp] {
    match o {
        RegisterOutcome::Commit { ops, .. } => ops,
        _ => &[],
    }
}

pub fn header_values(r: &Response, name: HeaderName) -> Vec<String> {
    r.headers()
        .get_all(&name)
        .map(|h| String::from_utf8_lossy(h.value()).into_owned())
        .collect()
}

/// Contact values of a response.
pub fn contacts(o: &RegisterOutcome) -> Vec<String> {
    header_values(response(o), HeaderName::Contact)
}

/// The challenge (nonce, opaque, stale) for `algorithm` in a 401.
pub fn challenge(o: &RegisterOutcome, algorithm: &str) -> (String, String, bool) {
    for v in response(o).headers().get_all(&HeaderName::WwwAuthenticate) {
        let a = Auth::parse(v.value()).expect("challenge parses");
        let alg = a.param("algorithm").expect("algorithm");
        if alg[..] == *algorithm.as_bytes() {
            let s = |n: &str| String::from_utf8_lossy(&a.param(n).expect(n)).into_owned();
            return (
                s("nonce"),
                s("opaque"),
                a.param("stale").is_some_and(|v| v[..] == b"true"[..]),
            );
        }
    }
    panic!("no {algorithm} challenge");
}

/// Client side of RFC 7616: the Authorization value (written independently
/// of the registrar's own digest code).
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the digest fields one to one"
)]
pub fn authorization(
    user: &str,
    realm: &str,
    password: &str,
    algorithm: &str,
    nonce: &str,
    opaque: &str,
    nc: u32,
    uri: &str,
) -> String {
    let cnonce = "0a4f113b";
    let nc = format!("{nc:08x}");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let h = |s: String| -> String {
        if algorithm == "MD5" {
            hex(&Md5::digest(s.as_bytes()))
        } else {
            hex(&Sha256::digest(s.as_bytes()))
        }
    };
    let ha1 = h(format!("{user}:{realm}:{password}"));
    let ha2 = h(format!("REGISTER:{uri}"));
    let response = h(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={algorithm}, cnonce=\"{cnonce}\", opaque=\"{opaque}\", qop=auth, nc={nc}"
    )
}
