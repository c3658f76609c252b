//! A small SIP user agent for the call tests (`tests/calls_*.rs`): a UDP socket made in a lab
//! namespace, full control over every header it sends, text-level access to what it receives.
//! Its media side sends RTP and RTCP (SR + SDES CNAME) from sockets in the same namespace.

use super::client::in_netns;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long a party waits for a message it expects.
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A received SIP message, kept as text.
#[derive(Clone, Debug)]
pub struct Msg {
    pub raw: String,
}

impl Msg {
    /// The start line.
    pub fn start(&self) -> &str {
        self.raw.lines().next().unwrap_or_default()
    }

    /// The status code of a response, None for a request.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start().strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// The method of a request (the CSeq method of a response).
    pub fn method(&self) -> String {
        if self.status().is_some() {
            return self
                .header("CSeq")
                .and_then(|cseq| cseq.split_whitespace().nth(1).map(str::to_owned))
                .unwrap_or_default();
        }
        self.start()
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn head(&self) -> &str {
        self.raw
            .split_once("\r\n\r\n")
            .map_or(self.raw.as_str(), |(head, _)| head)
    }

    /// The body (after the blank line).
    pub fn body(&self) -> &str {
        self.raw.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    /// Every value of header `name` (long or compact form), in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        let compact = match name.to_ascii_lowercase().as_str() {
            "via" => Some("v"),
            "from" => Some("f"),
            "to" => Some("t"),
            "call-id" => Some("i"),
            "contact" => Some("m"),
            "content-type" => Some("c"),
            "content-length" => Some("l"),
            _ => None,
        };
        self.head()
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                let key = key.trim();
                (key.eq_ignore_ascii_case(name)
                    || compact.is_some_and(|c| key.eq_ignore_ascii_case(c)))
                .then(|| value.trim().to_owned())
            })
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// The URI of the (first) Contact.
    pub fn contact_uri(&self) -> Option<String> {
        let contact = self.header("Contact")?;
        let start = contact.find('<')? + 1;
        let end = contact[start..].find('>')? + start;
        Some(contact[start..end].to_owned())
    }

    /// The `c=` address and `m=audio` port of the SDP body.
    pub fn media_addr(&self) -> Option<SocketAddr> {
        let body = self.body();
        let ip = body
            .lines()
            .find_map(|line| line.strip_prefix("c=IN IP4 "))?
            .trim();
        let port = body
            .lines()
            .find_map(|line| line.strip_prefix("m=audio "))?
            .split(' ')
            .next()?;
        format!("{ip}:{port}").parse().ok()
    }
}

/// A SIP party: one UDP socket in a lab namespace, talking to the edge.
pub struct Ua {
    pub sock: UdpSocket,
    pub edge: SocketAddr,
    /// Everything this socket received, in order (the audit also runs on the capture).
    pub received: Vec<Msg>,
}

impl Ua {
    /// A socket bound to `local` inside `ns`.
    pub fn new(ns: &str, local: SocketAddr, edge: SocketAddr) -> io::Result<Ua> {
        let sock = in_netns(ns, || UdpSocket::bind(local))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Ua {
            sock,
            edge,
            received: Vec::new(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock
            .local_addr()
            .unwrap_or_else(|error| panic!("local address: {error}"))
    }

    pub fn send(&self, text: &str) {
        self.sock
            .send_to(text.as_bytes(), self.edge)
            .unwrap_or_else(|error| panic!("send to {}: {error}", self.edge));
    }

    /// The next message for which `want` holds (others are kept in `received` and skipped),
    /// within [`EXPECT_TIMEOUT`]; panics naming `what` otherwise.
    pub fn expect(&mut self, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        match self.try_expect(want, EXPECT_TIMEOUT) {
            Some(msg) => msg,
            None => {
                let seen: Vec<&str> = self.received.iter().rev().take(8).map(Msg::start).collect();
                panic!(
                    "{what}: nothing at {} within 5 s (last received, newest first: {seen:?})",
                    self.addr()
                )
            }
        }
    }

    /// As [`Ua::expect`], None after `timeout`.
    pub fn try_expect(&mut self, want: impl Fn(&Msg) -> bool, timeout: Duration) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let msg = Msg {
                raw: String::from_utf8_lossy(&buf[..n]).into_owned(),
            };
            self.received.push(msg.clone());
            if want(&msg) {
                return Some(msg);
            }
        }
        None
    }

    /// The next response with `code` to a `method` request.
    pub fn expect_status(&mut self, method: &str, code: u16) -> Msg {
        self.expect(&format!("{code} to {method}"), |m| {
            m.status() == Some(code) && m.method() == method
        })
    }

    /// The next `method` request.
    pub fn expect_request(&mut self, method: &str) -> Msg {
        self.expect(&format!("a {method}"), |m| {
            m.status().is_none() && m.method() == method
        })
    }

    /// Answers `req` with `code`, echoing Via/From/Call-ID/CSeq, adding `to_tag` to To when it
    /// has none, then `extra` header lines (each ending in CRLF) and an optional SDP body.
    pub fn answer(&self, req: &Msg, code: u16, to_tag: &str, extra: &str, sdp: Option<&str>) {
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
        if to.contains("tag=") || code == 100 {
            out.push_str(&format!("To: {to}\r\n"));
        } else {
            out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
        }
        out.push_str(extra);
        match sdp {
            Some(sdp) => out.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            )),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        self.send(&out);
    }
}

/// An RTP packet (PCMU, 160 bytes of payload) with sequence `seq` and SSRC `ssrc`.
pub fn rtp_packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut packet = vec![0x80, 0x00];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(&[0xd5; 160]);
    packet
}

/// A compound RTCP packet: a sender report (no report blocks) and an SDES chunk with `cname`
/// (and a NOTE item carrying `note`).
pub fn rtcp_sr_sdes(ssrc: u32, cname: &str, note: &str) -> Vec<u8> {
    let mut packet = Vec::new();
    // SR: V=2, RC=0, PT=200, length 6 (28 bytes).
    packet.extend_from_slice(&[0x80, 200, 0, 6]);
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(&[0u8; 20]);
    // SDES: one chunk: SSRC, CNAME, NOTE, END, padded to 32 bits.
    let mut chunk = Vec::new();
    chunk.extend_from_slice(&ssrc.to_be_bytes());
    for (item, text) in [(1u8, cname), (7u8, note)] {
        let bytes = &text.as_bytes()[..text.len().min(255)];
        chunk.push(item);
        chunk.push(bytes.len() as u8);
        chunk.extend_from_slice(bytes);
    }
    chunk.push(0);
    while chunk.len() % 4 != 0 {
        chunk.push(0);
    }
    let words = (4 + chunk.len()) / 4 - 1;
    packet.extend_from_slice(&[0x81, 202]);
    packet.extend_from_slice(&(words as u16).to_be_bytes());
    packet.extend_from_slice(&chunk);
    packet
}

/// Sends `count` RTP packets from `from` to `to` (1 ms apart) and counts those `at` receives
/// with the RTP shape (version 2) within a short wait after the last.
pub fn rtp_crosses(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, count: u16) -> usize {
    let ssrc = 0x5e1f_0000 | u32::from(from.local_addr().map(|a| a.port()).unwrap_or(0));
    for seq in 0..count {
        let _ = from.send_to(&rtp_packet(seq, ssrc), to);
        std::thread::sleep(Duration::from_millis(1));
    }
    drain(at, Duration::from_millis(300))
        .into_iter()
        .filter(|packet| packet.first().is_some_and(|b| b >> 6 == 2))
        .count()
}

/// Everything `sock` receives until `quiet` passes without a datagram (bounded by 5 s).
pub fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    let _ = sock.set_read_timeout(Some(quiet));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => out.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    out
}
