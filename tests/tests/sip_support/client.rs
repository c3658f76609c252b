//! A small SIP client for the end-to-end tests: UDP, TCP and TLS sockets made inside a lab
//! namespace (`setns` on a short-lived thread: a socket keeps the namespace it was created in),
//! REGISTER/OPTIONS built as text, answers read and split into status, headers and body.
//!
//! It is deliberately independent of the SIP core (`sipveil-sip`): what it sends and how it
//! reads answers is written here, so the tests check the daemon against RFC 3261 rather than
//! against its own parser.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The edge's SIP address toward A (two-arm lab).
pub const EDGE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// UDP and TCP.
pub const SIP_PORT: u16 = 5060;
/// TLS.
pub const TLS_PORT: u16 = 5061;
/// How long a client waits for an answer before it calls the silence a failure.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` on a thread that has entered the network namespace `ns` (`/run/netns/NS`). Sockets
/// made there stay in `ns` when used from other threads.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let file = File::open(&path)
                .map_err(|error| io::Error::new(error.kind(), format!("{path}: {error}")))?;
            // SAFETY: setns on a valid, open namespace file descriptor; it changes only this
            // thread's network namespace, and the thread ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let error = io::Error::last_os_error();
                return Err(io::Error::new(
                    error.kind(),
                    format!("setns({path}): {error}"),
                ));
            }
            f()
        });
        worker
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// A unique token for branches, tags and Call-IDs within this test process.
pub fn token(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{:x}{n:x}{nanos:x}", std::process::id())
}

/// The transports of the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// As in a Via header.
    pub fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The edge's address for this transport.
    pub fn edge(self) -> SocketAddr {
        let port = match self {
            Transport::Udp | Transport::Tcp => SIP_PORT,
            Transport::Tls => TLS_PORT,
        };
        SocketAddr::V4(SocketAddrV4::new(EDGE_ADDR, port))
    }

    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.via())
    }
}

/// A SIP response as read from the wire.
#[derive(Clone, Debug)]
pub struct Response {
    /// The whole message, as received.
    pub raw: Vec<u8>,
    pub status: u16,
    pub reason: String,
    /// (lower-case long-form name, value), in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of `name` (case-insensitive, compact forms understood).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = long_name(name);
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, split on top-level commas for headers that list values.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let name = long_name(name);
        let lists = matches!(name.as_str(), "contact" | "via");
        let mut values = Vec::new();
        for (_, value) in self.headers.iter().filter(|(n, _)| *n == name) {
            if lists {
                values.extend(split_top_level(value).into_iter().map(str::to_owned));
            } else {
                values.push(value.clone());
            }
        }
        values
    }

    /// The text form, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.text())
    }
}

/// The long form of a header name, lower case (RFC 3261 §7.3.3 compact forms).
pub fn long_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let long = match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        _ => return lower,
    };
    long.to_owned()
}

/// Splits a header value on commas outside quotes and angle brackets.
pub fn split_top_level(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let last = value[start..].trim();
    if !last.is_empty() {
        parts.push(last);
    }
    parts
}

/// Parses one complete response (`raw` holds exactly one message).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = find(raw, b"\r\n\r\n").ok_or("no end of the header section")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the header section is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty message")?;
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next());
    if version != Some("SIP/2.0") {
        return Err(format!("not a SIP/2.0 response: {status_line:?}"));
    }
    let status = code
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status code in {status_line:?}"))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = headers
                .last_mut()
                .ok_or_else(|| format!("continuation line first: {line:?}"))?;
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
        headers.push((long_name(name), value.trim().to_owned()));
    }
    Ok(Response {
        raw: raw.to_vec(),
        status,
        reason: reason.unwrap_or("").to_owned(),
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The Content-Length of a header section (0 when absent: the caller decides what that means).
fn content_length(head: &[u8]) -> Result<usize, String> {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && long_name(name) == "content-length"
        {
            return value
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"));
        }
    }
    Ok(0)
}

/// What one read brought.
#[derive(Debug)]
pub enum Received {
    Response(Response),
    /// Nothing within the timeout.
    Timeout,
    /// The peer closed the stream (EOF or reset).
    Closed,
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// A client in a lab namespace talking to the edge over one transport.
pub struct SipClient {
    pub transport: Transport,
    conn: Conn,
    local: SocketAddr,
    server: SocketAddr,
    /// Stream bytes read but not consumed yet.
    pending: Vec<u8>,
}

/// What a TLS client trusts and which name it expects.
#[derive(Clone)]
pub struct TlsTrust {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

impl TlsTrust {
    /// Trusts only the CA `ca_der`; expects the edge to present `server_name`.
    pub fn new(ca_der: &[u8], server_name: &str) -> Result<TlsTrust, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
            .map_err(|error| format!("the test CA is not a usable root: {error}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("rustls protocol versions: {error}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsTrust {
            config: Arc::new(config),
            server_name: server_name.to_owned(),
        })
    }
}

impl SipClient {
    /// A client in `ns` for `transport` to the edge (TCP/TLS: connected; TLS: handshake done).
    pub fn connect(
        ns: &str,
        transport: Transport,
        tls: Option<&TlsTrust>,
    ) -> io::Result<SipClient> {
        Self::connect_to(ns, transport, transport.edge(), tls)
    }

    /// As [`SipClient::connect`], to any server address.
    pub fn connect_to(
        ns: &str,
        transport: Transport,
        server: SocketAddr,
        tls: Option<&TlsTrust>,
    ) -> io::Result<SipClient> {
        let conn = in_netns(ns, || match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.connect(server)?;
                Ok(Conn::Udp(socket))
            }
            Transport::Tcp | Transport::Tls => Ok(Conn::Tcp(TcpStream::connect_timeout(
                &server,
                ANSWER_TIMEOUT,
            )?)),
        })?;
        let local = match &conn {
            Conn::Udp(socket) => socket.local_addr()?,
            Conn::Tcp(stream) => stream.local_addr()?,
            Conn::Tls(_) => unreachable_conn()?,
        };
        let conn = match (transport, conn) {
            (Transport::Tls, Conn::Tcp(stream)) => {
                let trust = tls.ok_or_else(|| io::Error::other("TLS needs a TlsTrust"))?;
                let name = rustls::pki_types::ServerName::try_from(trust.server_name.clone())
                    .map_err(|error| io::Error::other(format!("server name: {error}")))?;
                let connection = rustls::ClientConnection::new(trust.config.clone(), name)
                    .map_err(io::Error::other)?;
                stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
                stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
                let mut tls = rustls::StreamOwned::new(connection, stream);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Conn::Tls(Box::new(tls))
            }
            (_, conn) => conn,
        };
        Ok(SipClient {
            transport,
            conn,
            local,
            server,
            pending: Vec::new(),
        })
    }

    /// This client's address (as the edge sees it: the lab has no NAT).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// A Contact URI for `user` at this client.
    pub fn contact_uri(&self, user: &str) -> String {
        let transport = match self.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        format!("sip:{user}@{}{transport}", self.local)
    }

    /// A Via value for a new transaction of this client.
    pub fn via(&self) -> String {
        format!(
            "SIP/2.0/{} {};rport;branch=z9hG4bK{}",
            self.transport.via(),
            self.local,
            token("b")
        )
    }

    /// Sends bytes as they are (one datagram on UDP).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.conn {
            Conn::Udp(socket) => socket.send(bytes).map(drop),
            Conn::Tcp(stream) => stream.write_all(bytes),
            Conn::Tls(tls) => {
                tls.write_all(bytes)?;
                tls.flush()
            }
        }
    }

    /// Closes the sending direction (TCP FIN; TLS close_notify then FIN). No-op on UDP.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match &mut self.conn {
            Conn::Udp(_) => Ok(()),
            Conn::Tcp(stream) => stream.shutdown(Shutdown::Write),
            Conn::Tls(tls) => {
                tls.conn.send_close_notify();
                tls.flush()?;
                tls.sock.shutdown(Shutdown::Write)
            }
        }
    }

    /// Reads the next response, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Received> {
        let deadline = Instant::now() + timeout;
        if let Conn::Udp(socket) = &self.conn {
            let mut buf = vec![0u8; 65536];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Received::Timeout);
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let data = &buf[..n];
                        // Keep-alive CRLFs are not messages.
                        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                            continue;
                        }
                        return parse_response(data)
                            .map(Received::Response)
                            .map_err(|error| invalid(format!("{error} in {:?}", lossy(data))));
                    }
                    Err(error) if is_timeout(&error) => return Ok(Received::Timeout),
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        // ICMP port unreachable from an earlier datagram: the edge is not
                        // listening (yet); report it as silence.
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        loop {
            if let Some(message) = self.take_framed()? {
                return Ok(Received::Response(message));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Received::Timeout);
            }
            let mut buf = [0u8; 16384];
            let read = match &mut self.conn {
                Conn::Udp(_) => return Err(io::Error::other("UDP handled above")),
                Conn::Tcp(stream) => {
                    stream.set_read_timeout(Some(left))?;
                    stream.read(&mut buf)
                }
                Conn::Tls(tls) => {
                    tls.sock.set_read_timeout(Some(left))?;
                    tls.read(&mut buf)
                }
            };
            match read {
                Ok(0) => return Ok(Received::Closed),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(error) if is_timeout(&error) => return Ok(Received::Timeout),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Ok(Received::Closed);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One framed message from the stream buffer, if complete.
    fn take_framed(&mut self) -> io::Result<Option<Response>> {
        // CRLF keep-alives (RFC 5626 pongs) between messages.
        let skip = self
            .pending
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        self.pending.drain(..skip);
        let Some(end) = find(&self.pending, b"\r\n\r\n") else {
            return Ok(None);
        };
        let length = content_length(&self.pending[..end]).map_err(invalid)?;
        let total = end + 4 + length;
        if self.pending.len() < total {
            return Ok(None);
        }
        let raw: Vec<u8> = self.pending.drain(..total).collect();
        parse_response(&raw)
            .map(Some)
            .map_err(|error| invalid(format!("{error} in {:?}", lossy(&raw))))
    }

    /// Sends `request` and returns the first final response (provisional ones are skipped).
    /// Silence for [`ANSWER_TIMEOUT`] or a closed stream is an error naming the request.
    pub fn transact(&mut self, request: &str) -> Result<Response, String> {
        self.send_raw(request.as_bytes())
            .map_err(|error| format!("sending {request:?}: {error}"))?;
        loop {
            match self.recv(ANSWER_TIMEOUT) {
                Ok(Received::Response(response)) if response.status >= 200 => return Ok(response),
                Ok(Received::Response(_)) => continue,
                Ok(Received::Timeout) => {
                    return Err(format!(
                        "no answer over {} within {ANSWER_TIMEOUT:?} to:\n{request}",
                        self.transport
                    ));
                }
                Ok(Received::Closed) => {
                    return Err(format!(
                        "the edge closed the {} connection instead of answering:\n{request}",
                        self.transport
                    ));
                }
                Err(error) => return Err(format!("reading the answer to {request:?}: {error}")),
            }
        }
    }

    /// An OPTIONS request to `uri`.
    pub fn options(&self, uri: &str) -> String {
        let call_id = token("opt");
        format!(
            "OPTIONS {uri} SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:monitor@{local}>;tag={tag}\r\n\
             To: <{uri}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Accept: application/sdp\r\n\
             Content-Length: 0\r\n\r\n",
            via = self.via(),
            local = self.local.ip(),
            tag = token("t"),
        )
    }

    /// The text of `register` sent from this client.
    pub fn register(&self, register: &Register) -> String {
        let mut text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n",
            domain = register.domain,
            user = register.user,
            via = register.via.clone().unwrap_or_else(|| self.via()),
            tag = register.from_tag,
            call_id = register.call_id,
            cseq = register.cseq,
        );
        for contact in &register.contacts {
            text.push_str(&format!("Contact: {contact}\r\n"));
        }
        if let Some(expires) = register.expires {
            text.push_str(&format!("Expires: {expires}\r\n"));
        }
        if let Some(authorization) = &register.authorization {
            text.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        for (name, value) in &register.extra {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("User-Agent: sipveil-tests\r\nContent-Length: 0\r\n\r\n");
        text
    }
}

fn unreachable_conn<T>() -> io::Result<T> {
    Err(io::Error::other("a TLS connection before the handshake"))
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn lossy(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// One REGISTER request's variable parts.
#[derive(Clone, Debug)]
pub struct Register {
    pub user: String,
    pub domain: String,
    pub call_id: String,
    pub from_tag: String,
    pub cseq: u32,
    /// Contact header values (`<sip:...>;expires=..`, or `*`); none = a query of the bindings.
    pub contacts: Vec<String>,
    pub expires: Option<u32>,
    pub authorization: Option<String>,
    pub extra: Vec<(String, String)>,
    /// A Via to use instead of a fresh one (a replayed request).
    pub via: Option<String>,
}

impl Register {
    /// A REGISTER of `user@domain` with a fresh Call-ID, CSeq 1, no Contact yet.
    pub fn new(user: &str, domain: &str) -> Register {
        Register {
            user: user.to_owned(),
            domain: domain.to_owned(),
            call_id: token("reg"),
            from_tag: token("t"),
            cseq: 1,
            contacts: Vec::new(),
            expires: None,
            authorization: None,
            extra: Vec::new(),
            via: None,
        }
    }

    /// Adds `Contact: <uri>`.
    pub fn contact(mut self, uri: &str) -> Register {
        self.contacts.push(format!("<{uri}>"));
        self
    }

    pub fn expires(mut self, expires: u32) -> Register {
        self.expires = Some(expires);
        self
    }

    /// The same registration's next request (same Call-ID, CSeq + 1, no credentials).
    pub fn next(&self) -> Register {
        let mut next = self.clone();
        next.cseq += 1;
        next.authorization = None;
        next
    }
}

/// The URIs inside the Contact values of a response (without `<>` and parameters outside them).
pub fn contact_uris(response: &Response) -> Vec<String> {
    response
        .header_values("contact")
        .iter()
        .map(|value| {
            let value = value.trim();
            match (value.find('<'), value.find('>')) {
                (Some(start), Some(end)) if start < end => value[start + 1..end].to_owned(),
                _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
            }
        })
        .collect()
}

/// A parameter of a header value (`name=value`, quotes removed), case-insensitive name.
pub fn param(value: &str, name: &str) -> Option<String> {
    // Parameters after the URI's closing '>' (or after the first ';' when there is none).
    let tail = match value.rfind('>') {
        Some(end) => &value[end + 1..],
        None => value,
    };
    tail.split(';').skip(1).find_map(|part| {
        let (key, val) = part.split_once('=').unwrap_or((part, ""));
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| val.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_split_and_compact_names_expanded() {
        let raw = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 1.2.3.4:5;branch=z9hG4bKx\r\nm: <sip:a@1.2.3.4:5>;expires=60, <sip:b@x>;expires=30\r\nl: 0\r\n\r\n";
        let response = parse_response(raw).expect("parses");
        assert_eq!(response.status, 200);
        assert_eq!(response.reason, "OK");
        assert_eq!(
            contact_uris(&response),
            ["sip:a@1.2.3.4:5".to_owned(), "sip:b@x".to_owned()]
        );
        let contacts = response.header_values("Contact");
        assert_eq!(param(&contacts[0], "expires").as_deref(), Some("60"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
