//! A minimal client for rtpengine's ng control protocol: `<cookie> <bencoded dict>` datagrams over
//! UDP, answered with `<cookie> <bencoded dict>` (`result` = `ok` | `error`, `error-reason`).
//! Enough for the relay benchmark: `ping`, `offer`, `answer`, `delete`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use thiserror::Error;

use crate::bencode::{BencodeError, Value};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NgError {
    #[error("ng socket: {0}")]
    Io(#[from] io::Error),
    #[error("no answer from rtpengine after {0} attempts")]
    NoAnswer(u32),
    #[error("answer is not `<cookie> <bencode>`")]
    Framing,
    #[error("answer does not decode: {0}")]
    Bencode(#[from] BencodeError),
    #[error("rtpengine refused {command}: {reason}")]
    Refused { command: String, reason: String },
    #[error("answer to {0} has no SDP")]
    NoSdp(String),
    #[error("SDP has no usable c=/m=audio line: {0:?}")]
    NoMediaEndpoint(String),
}

/// A blocking ng client.
pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
    cookie: u64,
    timeout: Duration,
    attempts: u32,
}

impl NgClient {
    /// Talks to `server` (e.g. 127.0.0.1:2223) from an ephemeral loopback port.
    pub fn new(server: SocketAddr) -> Result<Self, NgError> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        Ok(Self {
            sock,
            server,
            cookie: u64::from(std::process::id()) << 20,
            timeout: Duration::from_millis(500),
            attempts: 4,
        })
    }

    /// Sends one request and waits for the answer with the same cookie (retrying on silence).
    pub fn request(&mut self, dict: &Value) -> Result<Value, NgError> {
        self.cookie += 1;
        let cookie = format!("{:x}", self.cookie);
        let mut msg = cookie.clone().into_bytes();
        msg.push(b' ');
        dict.encode_into(&mut msg);
        self.sock.set_read_timeout(Some(self.timeout))?;
        let mut buf = vec![0u8; 65_536];
        for _ in 0..self.attempts {
            self.sock.send_to(&msg, self.server)?;
            loop {
                let n = match self.sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                let reply = &buf[..n];
                let space = reply
                    .iter()
                    .position(|&b| b == b' ')
                    .ok_or(NgError::Framing)?;
                if &reply[..space] != cookie.as_bytes() {
                    continue; // a late answer to an earlier attempt
                }
                let value = Value::decode(&reply[space + 1..])?;
                if value.get("result").and_then(Value::as_str) != Some("ok")
                    && value.get("result").and_then(Value::as_str) != Some("pong")
                {
                    let command = dict
                        .get("command")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned();
                    let reason = value
                        .get("error-reason")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_owned();
                    return Err(NgError::Refused { command, reason });
                }
                return Ok(value);
            }
        }
        Err(NgError::NoAnswer(self.attempts))
    }

    /// `ping` → `pong`.
    pub fn ping(&mut self) -> Result<(), NgError> {
        self.request(&Value::dict([("command", Value::str("ping"))]))
            .map(|_| ())
    }

    /// `offer`: A's SDP in, the SDP B should see out. `direction` names rtpengine's interfaces
    /// (offerer side first), e.g. `["a", "b"]`.
    pub fn offer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        sdp: &str,
        direction: Option<[&str; 2]>,
    ) -> Result<String, NgError> {
        let mut pairs = vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(from_tag)),
            ("sdp", Value::str(sdp)),
            ("ICE", Value::str("remove")),
        ];
        if let Some([x, y]) = direction {
            pairs.push(("direction", Value::List(vec![Value::str(x), Value::str(y)])));
        }
        self.sdp_of("offer", &Value::dict(pairs))
    }

    /// `answer`: B's SDP in, the SDP A should see out.
    pub fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &str,
    ) -> Result<String, NgError> {
        self.sdp_of(
            "answer",
            &Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str(call_id)),
                ("from-tag", Value::str(from_tag)),
                ("to-tag", Value::str(to_tag)),
                ("sdp", Value::str(sdp)),
                ("ICE", Value::str("remove")),
            ]),
        )
    }

    /// `delete` the call.
    pub fn delete(&mut self, call_id: &str, from_tag: &str) -> Result<(), NgError> {
        self.request(&Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(from_tag)),
        ]))
        .map(|_| ())
    }

    fn sdp_of(&mut self, command: &str, dict: &Value) -> Result<String, NgError> {
        let v = self.request(dict)?;
        v.get("sdp")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| NgError::NoSdp(command.to_owned()))
    }
}

/// A one-stream PCMU audio SDP for `addr:port`.
#[must_use]
pub fn audio_sdp(addr: Ipv4Addr, port: u16, session_id: u64) -> String {
    format!(
        "v=0\r\no=- {session_id} 1 IN IP4 {addr}\r\ns=sv-bench\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// Where an SDP wants its audio: the media-level `c=` (or the session-level one) and the
/// `m=audio` port.
pub fn media_endpoint(sdp: &str) -> Result<SocketAddrV4, NgError> {
    let bad = || NgError::NoMediaEndpoint(sdp.chars().take(200).collect());
    let mut session_addr = None;
    let mut media_addr = None;
    let mut port = None;
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            in_audio = rest.starts_with("audio ");
            if in_audio && port.is_none() {
                port = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u16>().ok());
            }
        } else if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            let addr = rest
                .split(['/', ' '])
                .next()
                .and_then(|a| a.parse::<Ipv4Addr>().ok());
            if in_audio {
                media_addr = media_addr.or(addr);
            } else if port.is_none() {
                session_addr = session_addr.or(addr);
            }
        }
    }
    let addr = media_addr.or(session_addr).ok_or_else(bad)?;
    Ok(SocketAddrV4::new(addr, port.ok_or_else(bad)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_round_trip_through_endpoint_parser() {
        let sdp = audio_sdp(Ipv4Addr::new(198, 18, 1, 2), 30_000, 7);
        assert_eq!(
            media_endpoint(&sdp).ok(),
            Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 30_000))
        );
    }

    #[test]
    fn media_level_connection_wins() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 4000 RTP/AVP 96\r\nc=IN IP4 10.0.0.3\r\nm=audio 5000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\n";
        assert_eq!(
            media_endpoint(sdp).ok(),
            Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000))
        );
        let no_audio = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 4000 RTP/AVP 96\r\n";
        assert!(matches!(
            media_endpoint(no_audio),
            Err(NgError::NoMediaEndpoint(_))
        ));
    }
}
