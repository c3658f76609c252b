//! `sv-ua`: a small SIP user agent over UDP for the demo and the call benchmark.
//!
//! Two roles, one call each:
//!
//! - **callee** ([`run_callee`]): REGISTERs an address of record (an open domain, no digest),
//!   waits for an INVITE, answers 200 with SDP, and after the ACK sends and receives RTP until
//!   a BYE arrives (answered 200).
//! - **caller** ([`run_caller`]): sends an INVITE with SDP through an outbound proxy (the edge),
//!   ACKs the 200, sends and receives RTP for a fixed time, then sends BYE.
//!
//! Media uses the `sv-rtp` packets ([`crate::rtp`]: a probe with a sequence number and a send
//! time in every payload) and the same receiver accounting ([`crate::receiver::Receiver`]): loss,
//! reordering and one-way latency (both ends share `CLOCK_MONOTONIC` in the lab).
//!
//! Every SIP datagram and up to [`MAX_CAPTURED_MEDIA`] media datagrams the agent receives are kept
//! in a [`Capture`]; together with the agent's own [`Party`] identifiers this is what a leak audit
//! of the other side needs.
//!
//! Every wait is bounded: the agent gives up with a typed error when the peer is silent.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::clock::monotonic_ns;
use crate::receiver::{Receiver, RecvConfig, RecvReport};
use crate::rtp::{self, PACKET_LEN, Packet, Probe, ProbeKind};

/// Media datagrams kept in a capture (the rest are only counted).
pub const MAX_CAPTURED_MEDIA: usize = 4096;
/// RTP packets per second each way (PCMU, 20 ms).
pub const PACKETS_PER_SECOND: u64 = 50;
/// End-of-stream packets sent when a stream stops (each carries the sent count).
const END_PACKETS: u32 = 3;
/// SIP timer T1.
const T1: Duration = Duration::from_millis(500);
/// SIP timer T2.
const T2: Duration = Duration::from_secs(4);
/// Largest SIP datagram accepted.
const SIP_BUF: usize = 65_535;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum UaError {
    #[error("socket {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer to {what} within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("{what} answered {code} {reason}")]
    Rejected {
        what: &'static str,
        code: u16,
        reason: String,
    },
    #[error("malformed SIP message: {0}")]
    Malformed(&'static str),
    #[error("the {0} has no usable SDP (need c=IN IP4 and m=audio)")]
    NoSdp(&'static str),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> UaError {
    move |source| UaError::Io { what, source }
}

/// A parsed SIP message: the start line, the headers in order (names as written) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMsg {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The long form of a compact header name (RFC 3261 §7.3.3), lower case.
fn long_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let long = match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        _ => return lower,
    };
    long.to_owned()
}

impl SipMsg {
    /// Parses one datagram (header lines may be folded; the body is what follows the blank line,
    /// cut to Content-Length when that is smaller).
    pub fn parse(bytes: &[u8]) -> Result<Self, UaError> {
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(UaError::Malformed("no end of headers"))?;
        let head = std::str::from_utf8(&bytes[..split])
            .map_err(|_| UaError::Malformed("headers are not UTF-8"))?;
        let mut body = bytes[split + 4..].to_vec();
        let mut lines: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                let last = lines
                    .last_mut()
                    .ok_or(UaError::Malformed("folded first line"))?;
                last.push(' ');
                last.push_str(line.trim());
            } else {
                lines.push(line.to_owned());
            }
        }
        let mut iter = lines.into_iter();
        let start = iter.next().ok_or(UaError::Malformed("empty message"))?;
        if start.is_empty() {
            return Err(UaError::Malformed("empty start line"));
        }
        let mut headers = Vec::new();
        for line in iter {
            let (name, value) = line
                .split_once(':')
                .ok_or(UaError::Malformed("header line without ':'"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let msg = SipMsg {
            start,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = msg
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            body.truncate(len);
        }
        Ok(SipMsg { body, ..msg })
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> &str {
        self.start.get(12..).unwrap_or("").trim()
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.start.starts_with("SIP/2.0 ") {
            return None;
        }
        self.start.split(' ').next()
    }

    /// The first value of a header (compact forms understood, case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    /// Every value of a header, in order (comma-joined values are not split).
    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let want = long_name(name);
        self.headers
            .iter()
            .filter(move |(n, _)| long_name(n) == want)
            .map(|(_, v)| v.as_str())
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let mut parts = self.header("cseq")?.split_whitespace();
        let n = parts.next()?.parse().ok()?;
        Some((n, parts.next()?))
    }
}

/// The `tag` parameter of a From/To value.
pub fn tag_of(value: &str) -> Option<&str> {
    let after = match value.rfind('>') {
        Some(i) => &value[i..],
        None => value,
    };
    after
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("tag="))
}

/// The URI of a name-addr (`"x" <sip:...>;p`) or addr-spec (`sip:...;p`).
pub fn uri_of(value: &str) -> &str {
    if let (Some(a), Some(b)) = (value.find('<'), value.find('>'))
        && a < b
    {
        return &value[a + 1..b];
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// The audio endpoint of an SDP body: the media-level `c=` if any, else the session's, and the
/// `m=audio` port.
pub fn sdp_audio(body: &[u8]) -> Option<SocketAddrV4> {
    let text = std::str::from_utf8(body).ok()?;
    let mut session_ip: Option<Ipv4Addr> = None;
    let mut media_ip: Option<Ipv4Addr> = None;
    let mut port: Option<u16> = None;
    let mut in_audio = false;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            in_audio = rest.starts_with("audio ");
            if in_audio && port.is_none() {
                port = rest.split_whitespace().nth(1)?.parse().ok();
            }
        } else if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            let ip = rest.split('/').next()?.trim().parse().ok();
            if port.is_none() && !in_audio {
                session_ip = ip;
            } else if in_audio {
                media_ip = ip;
            }
        }
    }
    Some(SocketAddrV4::new(media_ip.or(session_ip)?, port?))
}

/// The identity a party presents (and that must not reach the other side).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Party {
    /// Its address (SIP and RTP).
    pub ip: Ipv4Addr,
    /// A host name it puts in Call-ID and Via (`…@host`).
    pub host: String,
    /// Its User-Agent value.
    pub user_agent: String,
    /// Display name in From.
    pub display: String,
    /// User part of its Contact.
    pub contact_user: String,
    /// SDP `o=` user name.
    pub sdp_user: String,
    /// SDP `s=` session name.
    pub session_name: String,
    /// A private address it announces as an ICE host candidate and in an `X-` header.
    pub private_ip: Ipv4Addr,
}

impl Party {
    /// A distinctive identity for a role name (`alice`, `bob`...).
    pub fn distinctive(role: &str, ip: Ipv4Addr, private_ip: Ipv4Addr) -> Self {
        Party {
            ip,
            host: format!("{role}-laptop.home.example"),
            user_agent: format!("SvUa-{role}-Device/7.3"),
            display: format!("{role} Secretname"),
            contact_user: format!("{role}-contact-9f3"),
            sdp_user: format!("{role}-sdp-user"),
            session_name: format!("{role}-session-name"),
            private_ip,
        }
    }

    /// The identifiers an audit of the *other* side looks for (`sipveil_b2bua::leak::Identifier`
    /// pairs: label, value).
    pub fn identifiers(&self, role: &str) -> Vec<(String, String)> {
        vec![
            (format!("{role} IP"), self.ip.to_string()),
            (format!("{role} host name"), self.host.clone()),
            (format!("{role} User-Agent"), self.user_agent.clone()),
            (format!("{role} display name"), self.display.clone()),
            (format!("{role} contact user"), self.contact_user.clone()),
            (format!("{role} SDP user"), self.sdp_user.clone()),
            (
                format!("{role} SDP session name"),
                self.session_name.clone(),
            ),
            (
                format!("{role} private address"),
                self.private_ip.to_string(),
            ),
        ]
    }

    fn sdp(&self, rtp_port: u16, session: u64) -> String {
        format!(
            "v=0\r\no={user} {session} {session} IN IP4 {ip}\r\ns={name}\r\nc=IN IP4 {ip}\r\n\
             t=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n\
             a=sendrecv\r\na=rtcp:{rtcp}\r\n\
             a=candidate:1 1 UDP 2130706431 {private} {rtp_port} typ host\r\n\
             a=candidate:2 1 UDP 1694498815 {ip} {rtp_port} typ srflx raddr {private} rport {rtp_port}\r\n",
            user = self.sdp_user,
            ip = self.ip,
            name = self.session_name,
            rtcp = rtp_port.wrapping_add(1),
            private = self.private_ip,
        )
    }
}

/// One received SIP datagram.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapturedSip {
    pub from: String,
    pub text: String,
}

/// Everything the agent received: SIP datagrams as text, media datagrams base64.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capture {
    pub sip: Vec<CapturedSip>,
    pub media: Vec<String>,
    /// Media datagrams received beyond [`MAX_CAPTURED_MEDIA`].
    pub media_not_kept: u64,
}

impl Capture {
    /// Every captured datagram as bytes, labelled (`sip #3 from …`, `media #10`).
    pub fn datagrams(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .sip
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("sip #{i} from {}", s.from),
                    s.text.clone().into_bytes(),
                )
            })
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD;
        for (i, m) in self.media.iter().enumerate() {
            if let Ok(bytes) = b64.decode(m) {
                out.push((format!("media #{i}"), bytes));
            }
        }
        out
    }
}

/// Settings shared by both roles.
#[derive(Debug, Clone)]
pub struct UaConfig {
    pub party: Party,
    /// Local SIP port (on `party.ip`).
    pub sip_port: u16,
    /// Local RTP port (on `party.ip`).
    pub rtp_port: u16,
    /// Where requests go (the edge's SIP address).
    pub proxy: SocketAddrV4,
    /// The longest any single wait may last.
    pub wait: Duration,
    /// RTP run tag of this side's stream (the peer's stream is accepted with `peer_tag`).
    pub tag: u32,
    pub peer_tag: u32,
}

/// What one side of a call reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UaReport {
    pub role: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Caller: INVITE sent → 200 received, ms. Callee: REGISTER → 200, ms.
    pub setup_ms: Option<f64>,
    /// Register time (callee).
    pub register_ms: Option<f64>,
    /// Remote media address as the peer's SDP gave it (the edge's relay port).
    pub remote_media: Option<String>,
    pub rtp_sent: u64,
    pub media: Option<RecvReport>,
    pub sip_received: usize,
    /// Call-ID of this side's leg.
    pub call_id: String,
}

struct Sip {
    sock: UdpSocket,
    cfg: UaConfig,
    capture: Capture,
    buf: Vec<u8>,
    branch_seq: u64,
}

impl Sip {
    fn bind(cfg: &UaConfig) -> Result<Self, UaError> {
        let sock = UdpSocket::bind(SocketAddrV4::new(cfg.party.ip, cfg.sip_port))
            .map_err(io("bind SIP"))?;
        Ok(Sip {
            sock,
            cfg: cfg.clone(),
            capture: Capture::default(),
            buf: vec![0; SIP_BUF],
            branch_seq: 0,
        })
    }

    fn local(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.cfg.party.ip, self.cfg.sip_port)
    }

    fn branch(&mut self) -> String {
        self.branch_seq += 1;
        format!("z9hG4bK{:x}{:x}", monotonic_ns(), self.branch_seq)
    }

    fn send(&self, text: &str, to: SocketAddr) -> Result<(), UaError> {
        self.sock
            .send_to(text.as_bytes(), to)
            .map_err(io("send SIP"))?;
        Ok(())
    }

    /// Receives one message before `deadline` (None when it passed). Unparseable datagrams are
    /// captured and skipped.
    fn recv(&mut self, deadline: Instant) -> Result<Option<(SipMsg, SocketAddr)>, UaError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.sock
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .map_err(io("set SIP timeout"))?;
            match self.sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let bytes = &self.buf[..n];
                    self.capture.sip.push(CapturedSip {
                        from: from.to_string(),
                        text: String::from_utf8_lossy(bytes).into_owned(),
                    });
                    if let Ok(msg) = SipMsg::parse(bytes) {
                        return Ok(Some((msg, from)));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => {
                    return Err(UaError::Io {
                        what: "receive SIP",
                        source: e,
                    });
                }
            }
        }
    }

    /// A response to `req` (Via, From, To, Call-ID, CSeq copied; To gets `to_tag` if it has none).
    fn response(
        &self,
        req: &SipMsg,
        code: u16,
        reason: &str,
        to_tag: &str,
        sdp: Option<&str>,
    ) -> String {
        let mut out = format!("SIP/2.0 {code} {reason}\r\n");
        for via in req.all("via") {
            out.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["from", "call-id", "cseq"] {
            if let Some(v) = req.header(name) {
                out.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        if let Some(to) = req.header("to") {
            if tag_of(to).is_some() || code == 100 {
                out.push_str(&format!("To: {to}\r\n"));
            } else {
                out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
            }
        }
        let party = &self.cfg.party;
        out.push_str(&format!(
            "Contact: <sip:{}@{}>\r\nServer: {}\r\nX-Home-Address: {}\r\n",
            party.contact_user,
            self.local(),
            party.user_agent,
            party.private_ip
        ));
        match sdp {
            Some(sdp) => out.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out
    }

    /// Sends a request and waits for its final response, retransmitting per RFC 3261 timers A/E
    /// until a provisional arrives. Requests that arrive meanwhile are handed to `other`.
    fn transact(
        &mut self,
        what: &'static str,
        text: &str,
        branch: &str,
        mut other: impl FnMut(&mut Self, &SipMsg, SocketAddr) -> Result<(), UaError>,
    ) -> Result<SipMsg, UaError> {
        let to = SocketAddr::V4(self.cfg.proxy);
        let deadline = Instant::now() + self.cfg.wait;
        let mut interval = T1;
        let mut next = Instant::now() + interval;
        let mut provisional = false;
        self.send(text, to)?;
        loop {
            let until = if provisional {
                deadline
            } else {
                next.min(deadline)
            };
            match self.recv(until)? {
                Some((msg, from)) => {
                    if msg.method().is_some() {
                        other(self, &msg, from)?;
                        continue;
                    }
                    let ours = msg
                        .header("via")
                        .is_some_and(|v| v.contains(&format!("branch={branch}")));
                    if !ours {
                        continue;
                    }
                    match msg.status() {
                        Some(code) if code >= 200 => return Ok(msg),
                        Some(_) => provisional = true,
                        None => return Err(UaError::Malformed("bad status line")),
                    }
                }
                None => {
                    if Instant::now() >= deadline {
                        return Err(UaError::Timeout {
                            what: what.to_owned(),
                            secs: self.cfg.wait.as_secs(),
                        });
                    }
                    if !provisional {
                        self.send(text, to)?;
                        interval = (interval * 2).min(T2);
                        next = Instant::now() + interval;
                    }
                }
            }
        }
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/UDP {};rport;branch={branch}\r\n",
            self.local()
        )
    }
}

/// What a media run ends with: the receiver's report, the datagrams kept, how many were not.
type MediaResult = Result<(RecvReport, Vec<Vec<u8>>, u64), UaError>;

/// The media of one call: a paced sender and a receiver on one socket.
struct Media {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sender: Option<thread::JoinHandle<Result<(), UaError>>>,
    receiver: Option<thread::JoinHandle<MediaResult>>,
    recv_stop: Arc<AtomicBool>,
}

impl Media {
    fn start(
        sock: UdpSocket,
        peer: SocketAddrV4,
        tag: u32,
        peer_tag: u32,
        max: Duration,
    ) -> Result<Self, UaError> {
        let stop = Arc::new(AtomicBool::new(false));
        let recv_stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let send_sock = sock.try_clone().map_err(io("clone RTP"))?;
        let sender = {
            let stop = Arc::clone(&stop);
            let sent = Arc::clone(&sent);
            thread::spawn(move || send_stream(&send_sock, peer, tag, max, &stop, &sent))
        };
        let receiver = {
            let stop = Arc::clone(&recv_stop);
            thread::spawn(move || receive_stream(&sock, peer_tag, max, &stop))
        };
        Ok(Media {
            stop,
            sent,
            sender: Some(sender),
            receiver: Some(receiver),
            recv_stop,
        })
    }

    /// Stops sending (end packets go out).
    fn stop_sending(&mut self) -> Result<u64, UaError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sender.take() {
            h.join()
                .map_err(|_| UaError::Malformed("RTP sender thread panicked"))??;
        }
        Ok(self.sent.load(Ordering::Relaxed))
    }

    /// Stops receiving after `grace` and returns the report and what was kept.
    fn finish(mut self, grace: Duration) -> Result<(RecvReport, Vec<Vec<u8>>, u64), UaError> {
        thread::sleep(grace);
        self.recv_stop.store(true, Ordering::Relaxed);
        let h = self
            .receiver
            .take()
            .ok_or(UaError::Malformed("receiver already finished"))?;
        h.join()
            .map_err(|_| UaError::Malformed("RTP receiver thread panicked"))?
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.recv_stop.store(true, Ordering::Relaxed);
    }
}

fn send_stream(
    sock: &UdpSocket,
    peer: SocketAddrV4,
    tag: u32,
    max: Duration,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<(), UaError> {
    let start = Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / PACKETS_PER_SECOND);
    let mut buf = [0u8; PACKET_LEN];
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
        let due = start + period * u32::try_from(seq).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            thread::sleep((due - now).min(Duration::from_millis(20)));
            continue;
        }
        let packet = Packet {
            header: rtp::header_for(tag, 0, seq),
            probe: Probe {
                kind: ProbeKind::Media,
                tag,
                stream: 0,
                value: seq,
                send_ns: 0,
            },
        };
        rtp::encode(&packet, &mut buf);
        rtp::stamp_send_time(&mut buf, monotonic_ns());
        sock.send_to(&buf, peer).map_err(io("send RTP"))?;
        seq += 1;
        sent.store(seq, Ordering::Relaxed);
    }
    for i in 0..END_PACKETS {
        let packet = Packet {
            header: rtp::header_for(tag, 0, seq + u64::from(i)),
            probe: Probe {
                kind: ProbeKind::End,
                tag,
                stream: 0,
                value: seq,
                send_ns: monotonic_ns(),
            },
        };
        rtp::encode(&packet, &mut buf);
        sock.send_to(&buf, peer).map_err(io("send RTP end"))?;
    }
    Ok(())
}

fn receive_stream(
    sock: &UdpSocket,
    peer_tag: u32,
    max: Duration,
    stop: &AtomicBool,
) -> Result<(RecvReport, Vec<Vec<u8>>, u64), UaError> {
    let cfg = RecvConfig {
        tag: Some(peer_tag),
        expect_streams: 1,
        duration: max,
        max_packets: u64::MAX,
        grace: Duration::ZERO,
        idle_exit: None,
        hlog_interval: Duration::from_secs(1),
        seq_window: 1 << 20,
        batch: 1,
    };
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(io("set RTP timeout"))?;
    let start = monotonic_ns();
    let mut rx = Receiver::new(&cfg, start);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut not_kept = 0u64;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + max + Duration::from_secs(5);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let now = monotonic_ns();
                rx.on_datagram(&buf[..n], now);
                if kept.len() < MAX_CAPTURED_MEDIA {
                    kept.push(buf[..n].to_vec());
                } else {
                    not_kept += 1;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                return Err(UaError::Io {
                    what: "receive RTP",
                    source: e,
                });
            }
        }
    }
    let elapsed = monotonic_ns().saturating_sub(start) as f64 / 1e9;
    Ok((rx.report(None, elapsed, "stopped"), kept, not_kept))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn random_token() -> String {
    format!(
        "{:x}",
        monotonic_ns() ^ (u64::from(std::process::id()) << 40)
    )
}

/// The callee: REGISTER `aor` (open domain), answer one INVITE, media until BYE.
pub fn run_callee(cfg: &UaConfig, aor: &str, expires: u32) -> (UaReport, Capture) {
    let mut report = UaReport {
        role: "callee".into(),
        ok: false,
        error: None,
        setup_ms: None,
        register_ms: None,
        remote_media: None,
        rtp_sent: 0,
        media: None,
        sip_received: 0,
        call_id: String::new(),
    };
    let mut capture = Capture::default();
    match callee(cfg, aor, expires, &mut report, &mut capture) {
        Ok(()) => report.ok = true,
        Err(e) => report.error = Some(e.to_string()),
    }
    report.sip_received = capture.sip.len();
    (report, capture)
}

fn callee(
    cfg: &UaConfig,
    aor: &str,
    expires: u32,
    report: &mut UaReport,
    capture: &mut Capture,
) -> Result<(), UaError> {
    let mut sip = Sip::bind(cfg)?;
    let result = callee_inner(&mut sip, aor, expires, report);
    capture.sip = std::mem::take(&mut sip.capture.sip);
    let (media, kept, not_kept) = result?;
    let b64 = base64::engine::general_purpose::STANDARD;
    capture.media = kept.iter().map(|p| b64.encode(p)).collect();
    capture.media_not_kept = not_kept;
    report.media = Some(media);
    Ok(())
}

fn callee_inner(sip: &mut Sip, aor: &str, expires: u32, report: &mut UaReport) -> MediaResult {
    let took = do_register(sip, aor, expires, &mut report.call_id)?;
    report.register_ms = Some(ms(took));
    eprintln!("sv-ua callee: registered {aor} in {:.1} ms", ms(took));
    callee_answer(sip, report)
}

/// REGISTERs `aor` with this agent's SIP address as the contact; the time to the 200.
fn do_register(
    sip: &mut Sip,
    aor: &str,
    expires: u32,
    call_id_out: &mut String,
) -> Result<Duration, UaError> {
    let party = sip.cfg.party.clone();
    let domain = aor.split('@').nth(1).unwrap_or(aor).to_owned();
    let call_id = format!("{}@{}", random_token(), party.host);
    call_id_out.clone_from(&call_id);
    let branch = sip.branch();
    let register = format!(
        "REGISTER sip:{domain} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <{aor}>;tag={tag}\r\n\
         To: <{aor}>\r\nCall-ID: {call_id}\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{cuser}@{local}>\r\nExpires: {expires}\r\nUser-Agent: {ua}\r\n\
         Content-Length: 0\r\n\r\n",
        via = sip.via(&branch),
        display = party.display,
        tag = random_token(),
        cuser = party.contact_user,
        local = sip.local(),
        ua = party.user_agent,
    );
    let t0 = Instant::now();
    let answer = sip.transact("REGISTER", &register, &branch, |_, _, _| Ok(()))?;
    let code = answer.status().unwrap_or(0);
    if code != 200 {
        return Err(UaError::Rejected {
            what: "REGISTER",
            code,
            reason: answer.reason().to_owned(),
        });
    }
    Ok(t0.elapsed())
}

/// Only REGISTERs `aor` (contact: `cfg.party.ip:cfg.sip_port`) and returns the time to the 200;
/// the socket is closed after, so another program (SIPp's UAS) can take the port.
pub fn register_only(cfg: &UaConfig, aor: &str, expires: u32) -> Result<Duration, UaError> {
    let mut sip = Sip::bind(cfg)?;
    let mut call_id = String::new();
    do_register(&mut sip, aor, expires, &mut call_id)
}

fn callee_answer(sip: &mut Sip, report: &mut UaReport) -> MediaResult {
    let party = sip.cfg.party.clone();
    let wait = sip.cfg.wait;
    // Wait for an INVITE (answer OPTIONS with 200 meanwhile).
    let deadline = Instant::now() + wait;
    let (invite, from) = loop {
        let Some((msg, from)) = sip.recv(deadline)? else {
            return Err(UaError::Timeout {
                what: "an INVITE".into(),
                secs: wait.as_secs(),
            });
        };
        match msg.method() {
            Some("INVITE") => break (msg, from),
            Some("ACK") | None => {}
            Some(_) => {
                let ok = sip.response(&msg, 200, "OK", &random_token(), None);
                sip.send(&ok, from)?;
            }
        }
    };
    let t_invite = Instant::now();
    let remote = sdp_audio(&invite.body).ok_or(UaError::NoSdp("INVITE"))?;
    report.remote_media = Some(remote.to_string());
    let rtp = crate::net::bind(SocketAddrV4::new(party.ip, sip.cfg.rtp_port), 1 << 20)
        .map_err(io("bind RTP"))?;
    let to_tag = random_token();
    let sdp = party.sdp(sip.cfg.rtp_port, monotonic_ns() / 1000);
    let ok = sip.response(&invite, 200, "OK", &to_tag, Some(&sdp));
    let invite_cseq = invite.cseq().map(|(n, _)| n);
    sip.send(&ok, from)?;
    // Retransmit the 200 until the ACK (timer G), bounded by timer H (64·T1).
    let mut interval = T1;
    let mut next = Instant::now() + interval;
    let ack_deadline = Instant::now() + T1 * 64;
    loop {
        match sip.recv(next.min(ack_deadline))? {
            Some((msg, src)) => match msg.method() {
                Some("ACK") if msg.cseq().map(|(n, _)| n) == invite_cseq => break,
                Some("INVITE") => sip.send(&ok, src)?,
                Some("BYE") => {
                    let bye_ok = sip.response(&msg, 200, "OK", &to_tag, None);
                    sip.send(&bye_ok, src)?;
                    return Err(UaError::Rejected {
                        what: "call (BYE before ACK)",
                        code: 0,
                        reason: String::new(),
                    });
                }
                _ => {}
            },
            None => {
                if Instant::now() >= ack_deadline {
                    return Err(UaError::Timeout {
                        what: "the ACK".into(),
                        secs: (T1 * 64).as_secs(),
                    });
                }
                sip.send(&ok, from)?;
                interval = (interval * 2).min(T2);
                next = Instant::now() + interval;
            }
        }
    }
    report.setup_ms = Some(ms(t_invite.elapsed()));
    eprintln!("sv-ua callee: answered, media to {remote}");
    let mut media = Media::start(rtp, remote, sip.cfg.tag, sip.cfg.peer_tag, wait)?;
    // Media until BYE.
    let deadline = Instant::now() + wait;
    loop {
        let Some((msg, src)) = sip.recv(deadline)? else {
            report.rtp_sent = media.stop_sending()?;
            return Err(UaError::Timeout {
                what: "a BYE".into(),
                secs: wait.as_secs(),
            });
        };
        match msg.method() {
            Some("BYE") => {
                report.rtp_sent = media.stop_sending()?;
                let bye_ok = sip.response(&msg, 200, "OK", &to_tag, None);
                sip.send(&bye_ok, src)?;
                break;
            }
            Some("INVITE") if tag_of(msg.header("to").unwrap_or("")).is_none() => {
                sip.send(&ok, src)?;
            }
            Some("ACK") | None => {}
            Some(_) => {
                let other = sip.response(&msg, 200, "OK", &to_tag, None);
                sip.send(&other, src)?;
            }
        }
    }
    eprintln!("sv-ua callee: BYE received, call ended");
    media.finish(Duration::from_millis(300))
}

/// The caller: INVITE `target` through the proxy, media for `media_for`, BYE.
pub fn run_caller(
    cfg: &UaConfig,
    target: &str,
    from_aor: &str,
    anonymous: bool,
    media_for: Duration,
) -> (UaReport, Capture) {
    let mut report = UaReport {
        role: "caller".into(),
        ok: false,
        error: None,
        setup_ms: None,
        register_ms: None,
        remote_media: None,
        rtp_sent: 0,
        media: None,
        sip_received: 0,
        call_id: String::new(),
    };
    let mut capture = Capture::default();
    let mut sip = match Sip::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(e.to_string());
            return (report, capture);
        }
    };
    match caller(
        &mut sip,
        target,
        from_aor,
        anonymous,
        media_for,
        &mut report,
    ) {
        Ok((media, kept, not_kept)) => {
            report.media = Some(media);
            let b64 = base64::engine::general_purpose::STANDARD;
            capture.media = kept.iter().map(|p| b64.encode(p)).collect();
            capture.media_not_kept = not_kept;
            report.ok = true;
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    capture.sip = std::mem::take(&mut sip.capture.sip);
    report.sip_received = capture.sip.len();
    (report, capture)
}

fn caller(
    sip: &mut Sip,
    target: &str,
    from_aor: &str,
    anonymous: bool,
    media_for: Duration,
    report: &mut UaReport,
) -> MediaResult {
    let party = sip.cfg.party.clone();
    let call_id = format!("{}@{}", random_token(), party.host);
    report.call_id.clone_from(&call_id);
    let from_tag = random_token();
    let rtp = crate::net::bind(SocketAddrV4::new(party.ip, sip.cfg.rtp_port), 1 << 20)
        .map_err(io("bind RTP"))?;
    let sdp = party.sdp(sip.cfg.rtp_port, monotonic_ns() / 1000);
    let branch = sip.branch();
    let privacy = if anonymous { "Privacy: id\r\n" } else { "" };
    let local = sip.local();
    let headers = format!(
        "From: \"{display}\" <{from_aor}>;tag={from_tag}\r\nTo: <{target}>\r\nCall-ID: {call_id}\r\n",
        display = party.display,
    );
    let invite = format!(
        "INVITE {target} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{headers}CSeq: 1 INVITE\r\n\
         Contact: <sip:{cuser}@{local}>\r\nUser-Agent: {ua}\r\n{privacy}\
         Subject: call from {ip} ({host})\r\nWarning: 399 {host} \"at {private}\"\r\n\
         X-Home-Address: {private}\r\nContent-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{sdp}",
        via = sip.via(&branch),
        cuser = party.contact_user,
        ua = party.user_agent,
        ip = party.ip,
        host = party.host,
        private = party.private_ip,
        len = sdp.len(),
    );
    let t0 = Instant::now();
    let answer = sip.transact("INVITE", &invite, &branch, |_, _, _| Ok(()))?;
    let code = answer.status().unwrap_or(0);
    let to = answer.header("to").unwrap_or("").to_owned();
    if !(200..300).contains(&code) {
        // ACK a non-2xx final response in the INVITE transaction (same branch).
        let ack = format!(
            "ACK {target} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <{from_aor}>;tag={from_tag}\r\n\
             To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            via = sip.via(&branch),
            display = party.display,
        );
        sip.send(&ack, SocketAddr::V4(sip.cfg.proxy))?;
        return Err(UaError::Rejected {
            what: "INVITE",
            code,
            reason: answer.reason().to_owned(),
        });
    }
    report.setup_ms = Some(ms(t0.elapsed()));
    let remote = sdp_audio(&answer.body).ok_or(UaError::NoSdp("200 to the INVITE"))?;
    report.remote_media = Some(remote.to_string());
    let contact = answer
        .header("contact")
        .map(|c| uri_of(c).to_owned())
        .unwrap_or_else(|| target.to_owned());
    let ack_branch = sip.branch();
    let ack = format!(
        "ACK {contact} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <{from_aor}>;tag={from_tag}\r\n\
         To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n",
        via = sip.via(&ack_branch),
        display = party.display,
        ua = party.user_agent,
    );
    sip.send(&ack, SocketAddr::V4(sip.cfg.proxy))?;
    eprintln!(
        "sv-ua caller: answered in {:.1} ms, media to {remote}",
        ms(t0.elapsed())
    );
    let mut media = Media::start(
        rtp,
        remote,
        sip.cfg.tag,
        sip.cfg.peer_tag,
        media_for + sip.cfg.wait,
    )?;
    // Media for the call's length; re-ACK retransmitted 200s meanwhile.
    let end = Instant::now() + media_for;
    while let Some((msg, src)) = sip.recv(end)? {
        match msg.method() {
            None if msg.cseq().is_some_and(|(_, m)| m == "INVITE") => {
                sip.send(&ack, SocketAddr::V4(sip.cfg.proxy))?;
            }
            Some("BYE") => {
                report.rtp_sent = media.stop_sending()?;
                let ok = sip.response(&msg, 200, "OK", &from_tag, None);
                sip.send(&ok, src)?;
                return Err(UaError::Rejected {
                    what: "call (the callee hung up early)",
                    code: 0,
                    reason: String::new(),
                });
            }
            _ => {}
        }
    }
    report.rtp_sent = media.stop_sending()?;
    let bye_branch = sip.branch();
    let bye = format!(
        "BYE {contact} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: \"{display}\" <{from_aor}>;tag={from_tag}\r\n\
         To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n",
        via = sip.via(&bye_branch),
        display = party.display,
        ua = party.user_agent,
    );
    let bye_answer = sip.transact("BYE", &bye, &bye_branch, |s, msg, src| {
        if msg.method() == Some("BYE") {
            let ok = s.response(msg, 200, "OK", &from_tag, None);
            s.send(&ok, src)?;
        }
        Ok(())
    })?;
    let code = bye_answer.status().unwrap_or(0);
    if code != 200 {
        return Err(UaError::Rejected {
            what: "BYE",
            code,
            reason: bye_answer.reason().to_owned(),
        });
    }
    eprintln!("sv-ua caller: BYE answered 200, call ended");
    media.finish(Duration::from_millis(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_with_compact_headers_and_folding() {
        let text =
            b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nf: <sip:a@x>;tag=1\r\n\
            t: <sip:b@y>\r\n ;tag=2\r\ni: abc\r\nCSeq: 1 INVITE\r\nl: 4\r\n\r\nbodyEXTRA";
        let msg = SipMsg::parse(text).expect("parses");
        assert_eq!(msg.status(), Some(200));
        assert_eq!(msg.reason(), "OK");
        assert_eq!(msg.method(), None);
        assert_eq!(msg.header("Call-ID"), Some("abc"));
        assert_eq!(tag_of(msg.header("to").expect("to")), Some("2"));
        assert_eq!(msg.cseq(), Some((1, "INVITE")));
        assert_eq!(msg.body, b"body");
    }

    #[test]
    fn rejects_what_is_not_sip() {
        assert!(SipMsg::parse(b"hello").is_err());
        assert!(SipMsg::parse(b"INVITE x SIP/2.0\r\nnocolon\r\n\r\n").is_err());
    }

    #[test]
    fn uri_and_tag_helpers() {
        assert_eq!(uri_of("\"A\" <sip:a@b;lr>;tag=9"), "sip:a@b;lr");
        assert_eq!(uri_of("sip:a@b;tag=1"), "sip:a@b");
        assert_eq!(tag_of("<sip:a@b;tag=no>"), None);
        assert_eq!(tag_of("<sip:a@b;x=1>;foo;tag=yes"), Some("yes"));
    }

    #[test]
    fn sdp_media_level_connection_wins() {
        let sdp = b"v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
            m=video 5000 RTP/AVP 96\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 198.18.1.1\r\n";
        assert_eq!(
            sdp_audio(sdp),
            Some("198.18.1.1:4000".parse().expect("addr"))
        );
        let session_only = b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4002 RTP/AVP 0\r\n";
        assert_eq!(
            sdp_audio(session_only),
            Some("10.0.0.1:4002".parse().expect("addr"))
        );
        assert_eq!(sdp_audio(b"v=0\r\nm=audio 1 RTP/AVP 0\r\n"), None);
    }

    #[test]
    fn own_sdp_carries_the_identifiers_an_audit_looks_for() {
        let party = Party::distinctive(
            "alice",
            Ipv4Addr::new(198, 18, 1, 2),
            Ipv4Addr::new(192, 168, 7, 20),
        );
        let sdp = party.sdp(40000, 1);
        assert_eq!(
            sdp_audio(sdp.as_bytes()),
            Some("198.18.1.2:40000".parse().expect("addr"))
        );
        for (label, value) in party.identifiers("alice") {
            if label.contains("User-Agent")
                || label.contains("display")
                || label.contains("host")
                || label.contains("contact")
            {
                continue;
            }
            assert!(
                sdp.contains(&value),
                "{label} ({value}) missing from the SDP"
            );
        }
    }

    /// Both roles over loopback with a trivial in-process "edge" that forwards between them
    /// unchanged: the state machines complete a call and account the media both ways.
    #[test]
    fn caller_and_callee_complete_a_call_through_a_forwarder() {
        let lo = Ipv4Addr::LOCALHOST;
        let edge = UdpSocket::bind((lo, 0)).expect("bind edge");
        let edge_addr = match edge.local_addr().expect("addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound on IPv4"),
        };
        let free_port = || {
            UdpSocket::bind((lo, 0))
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
                .expect("free port")
        };
        let base = |tag, peer_tag| UaConfig {
            party: Party::distinctive("t", lo, Ipv4Addr::new(10, 1, 1, 1)),
            sip_port: free_port(),
            rtp_port: free_port(),
            proxy: edge_addr,
            wait: Duration::from_secs(10),
            tag,
            peer_tag,
        };
        let callee_cfg = base(2, 1);
        let caller_cfg = base(1, 2);
        let callee_sip = SocketAddr::V4(SocketAddrV4::new(lo, callee_cfg.sip_port));
        let caller_sip = SocketAddr::V4(SocketAddrV4::new(lo, caller_cfg.sip_port));
        // The forwarder: REGISTER answered 200; everything from the caller goes to the callee
        // and back.
        let stop = Arc::new(AtomicBool::new(false));
        let fwd_stop = Arc::clone(&stop);
        let fwd = thread::spawn(move || {
            edge.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut buf = vec![0u8; SIP_BUF];
            while !fwd_stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = edge.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(msg) = SipMsg::parse(&buf[..n]) else {
                    continue;
                };
                if msg.method() == Some("REGISTER") {
                    let mut ok = String::from("SIP/2.0 200 OK\r\n");
                    for name in ["via", "from", "to", "call-id", "cseq"] {
                        ok.push_str(&format!("{name}: {}\r\n", msg.header(name).unwrap_or("")));
                    }
                    ok.push_str("Content-Length: 0\r\n\r\n");
                    edge.send_to(ok.as_bytes(), from).expect("send");
                    continue;
                }
                let to = if from == caller_sip {
                    callee_sip
                } else {
                    caller_sip
                };
                edge.send_to(&buf[..n], to).expect("forward");
            }
        });
        let callee = thread::spawn(move || run_callee(&callee_cfg, "sip:nick@open.lab", 60));
        thread::sleep(Duration::from_millis(300));
        let (caller_report, caller_capture) = run_caller(
            &caller_cfg,
            "sip:nick@open.lab",
            "sip:anonymous@anonymous.invalid",
            true,
            Duration::from_millis(600),
        );
        let (callee_report, callee_capture) = callee.join().expect("callee thread");
        stop.store(true, Ordering::Relaxed);
        fwd.join().expect("forwarder");
        assert!(caller_report.ok, "caller: {:?}", caller_report.error);
        assert!(callee_report.ok, "callee: {:?}", callee_report.error);
        let a = caller_report.media.expect("caller media");
        let b = callee_report.media.expect("callee media");
        assert_eq!(b.totals.sent, caller_report.rtp_sent);
        assert_eq!(a.totals.sent, callee_report.rtp_sent);
        assert!(
            caller_report.rtp_sent >= 20,
            "sent {}",
            caller_report.rtp_sent
        );
        assert_eq!(a.totals.lost + b.totals.lost, 0);
        assert!(!callee_capture.sip.is_empty() && !caller_capture.media.is_empty());
        // Nothing hides anything here, so the callee saw the caller's identity.
        assert!(
            callee_capture
                .sip
                .iter()
                .any(|s| s.text.contains("SvUa-t-Device/7.3"))
        );
    }
}
