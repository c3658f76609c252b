//! The flood generator's payload mix and a bounded multi-threaded UDP sender (`sv-flood`).
//!
//! The mix is garbage UDP, OPTIONS, REGISTERs for random users, INVITE spam and REGISTERs with
//! a wrong digest password. Every run is bounded both in packets and in seconds.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One kind of hostile packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Random bytes that are not SIP.
    Garbage,
    /// An OPTIONS ping.
    Options,
    /// A REGISTER for a random user, no credentials.
    Register,
    /// An INVITE to a random extension.
    Invite,
    /// A REGISTER with an Authorization header carrying a wrong response.
    WrongPassword,
}

impl Kind {
    /// The mix, in round-robin order.
    pub const MIX: [Kind; 5] = [
        Kind::Garbage,
        Kind::Options,
        Kind::Register,
        Kind::Invite,
        Kind::WrongPassword,
    ];
}

/// A small xorshift generator (deterministic per seed; no crypto needed for a flood).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is mapped to a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Writes one packet of `kind` toward `domain` into `out` (cleared first).
pub fn payload(kind: Kind, rng: &mut Rng, src: SocketAddr, domain: &str, out: &mut Vec<u8>) {
    use std::fmt::Write as _;
    out.clear();
    let n = rng.next_u64();
    let user = n % 1_000_000;
    let tag = n >> 20;
    let mut s = String::new();
    let head = |s: &mut String, method: &str, ruri: &str, to: &str| {
        let _ = write!(
            s,
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{tag:x}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:u{user}@{domain}>;tag={tag:x}\r\nTo: <{to}>\r\n\
             Call-ID: {n:x}@flood\r\nCSeq: 1 {method}\r\n"
        );
    };
    match kind {
        Kind::Garbage => {
            let len = 40 + (n % 200) as usize;
            while out.len() < len {
                out.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            out.truncate(len);
            return;
        }
        Kind::Options => {
            let ruri = format!("sip:{domain}");
            head(&mut s, "OPTIONS", &ruri, &ruri);
        }
        Kind::Register => {
            let aor = format!("sip:u{user}@{domain}");
            head(&mut s, "REGISTER", &format!("sip:{domain}"), &aor);
            let _ = write!(s, "Contact: <sip:u{user}@{src}>\r\nExpires: 3600\r\n");
        }
        Kind::Invite => {
            let ruri = format!("sip:{}@{domain}", 1000 + user % 9000);
            head(&mut s, "INVITE", &ruri, &ruri);
            let _ = write!(
                s,
                "Contact: <sip:u{user}@{src}>\r\nContent-Type: application/sdp\r\n"
            );
        }
        Kind::WrongPassword => {
            let aor = format!("sip:u{user}@{domain}");
            head(&mut s, "REGISTER", &format!("sip:{domain}"), &aor);
            let _ = write!(
                s,
                "Contact: <sip:u{user}@{src}>\r\nExpires: 3600\r\nAuthorization: Digest \
                 username=\"u{user}\", realm=\"{domain}\", nonce=\"{tag:x}\", \
                 uri=\"sip:{domain}\", response=\"{:032x}\", algorithm=MD5\r\n",
                u128::from(n) * 31
            );
        }
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    out.extend_from_slice(s.as_bytes());
}

/// The bounds and target of one flood.
#[derive(Debug, Clone)]
pub struct FloodSpec {
    /// Where the flood goes.
    pub target: SocketAddr,
    /// Local addresses to send from (one socket each, round robin across threads).
    pub sources: Vec<SocketAddr>,
    /// The SIP domain written into the requests.
    pub domain: String,
    /// Sending threads.
    pub threads: usize,
    /// Total packet bound.
    pub max_packets: u64,
    /// Time bound.
    pub max_duration: Duration,
    /// Packets per second across all threads (0 = flat out).
    pub rate_pps: u64,
}

/// What a flood achieved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloodReport {
    /// Packets handed to the kernel.
    pub sent: u64,
    /// Send errors (for example ENOBUFS).
    pub errors: u64,
    /// Wall time of the flood in seconds.
    pub seconds: f64,
    /// Achieved rate, sent ÷ seconds.
    pub pps: f64,
}

/// Runs a bounded flood and reports the rate achieved.
pub fn run(spec: &FloodSpec) -> std::io::Result<FloodReport> {
    if spec.sources.is_empty() || spec.threads == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "flood needs at least one source address and one thread",
        ));
    }
    let mut sockets = Vec::with_capacity(spec.sources.len());
    for src in &spec.sources {
        sockets.push(Arc::new(UdpSocket::bind(src)?));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + spec.max_duration;
    let per_thread_rate = spec.rate_pps.div_ceil(spec.threads as u64);
    let mut handles = Vec::new();
    for t in 0..spec.threads {
        let socks: Vec<Arc<UdpSocket>> = sockets
            .iter()
            .enumerate()
            .filter(|(i, _)| i % spec.threads == t || sockets.len() < spec.threads)
            .map(|(_, s)| Arc::clone(s))
            .collect();
        let (sent, errors, spec) = (Arc::clone(&sent), Arc::clone(&errors), spec.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng::new(0x5eed ^ (t as u64 + 1));
            let mut buf = Vec::with_capacity(1500);
            let mut mine: u64 = 0;
            let t0 = Instant::now();
            loop {
                if sent.fetch_add(1, Ordering::Relaxed) >= spec.max_packets {
                    sent.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                if mine.is_multiple_of(256) && Instant::now() >= deadline {
                    sent.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let sock = &socks[(mine as usize) % socks.len()];
                let src = sock.local_addr().unwrap_or(spec.target);
                let kind = Kind::MIX[(mine as usize) % Kind::MIX.len()];
                payload(kind, &mut rng, src, &spec.domain, &mut buf);
                if sock.send_to(&buf, spec.target).is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                mine += 1;
                if per_thread_rate > 0 {
                    let due = t0 + Duration::from_secs_f64(mine as f64 / per_thread_rate as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    Ok(FloodReport {
        sent,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        pps: if seconds > 0.0 {
            sent as f64 / seconds
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_kinds_are_well_formed_requests() {
        let mut rng = Rng::new(7);
        let src: SocketAddr = "198.18.3.2:5060".parse().expect("literal");
        let mut buf = Vec::new();
        for kind in [
            Kind::Options,
            Kind::Register,
            Kind::Invite,
            Kind::WrongPassword,
        ] {
            payload(kind, &mut rng, src, "lab.sipveil.test", &mut buf);
            let text = std::str::from_utf8(&buf).expect("SIP kinds are text");
            assert!(
                text.ends_with("Content-Length: 0\r\n\r\n"),
                "{kind:?}: {text}"
            );
            assert!(text.contains("CSeq: 1 "), "{kind:?}");
        }
        payload(Kind::WrongPassword, &mut rng, src, "d", &mut buf);
        assert!(
            std::str::from_utf8(&buf)
                .expect("text")
                .contains("Authorization: Digest")
        );
        payload(Kind::Garbage, &mut rng, src, "d", &mut buf);
        assert!((40..240).contains(&buf.len()));
    }

    #[test]
    fn flood_on_loopback_is_bounded_in_packets() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
        let spec = FloodSpec {
            target: rx.local_addr().expect("addr"),
            sources: vec!["127.0.0.1:0".parse().expect("literal")],
            domain: "d".into(),
            threads: 2,
            max_packets: 500,
            max_duration: Duration::from_secs(5),
            rate_pps: 0,
        };
        let report = run(&spec).expect("flood runs");
        assert_eq!(report.sent, 500);
        assert_eq!(report.errors, 0);
        assert!(report.pps > 0.0);
    }
}
