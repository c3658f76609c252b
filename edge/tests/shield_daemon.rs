//! The flood shield's closed loop through the real daemon on loopback, without XDP (the userspace
//! enforcement): a wrong-password REGISTER storm blocks its source (reason auth-failures) until
//! `sipveil shield unblock`; a manual `shield block --for` drops a source and expires; a verified
//! registration allowlists its source with raised limits; a scanner User-Agent is blocked; TCP
//! connections beyond a source's SYN limit are closed at once, other sources unaffected.
//! Sources are distinct loopback addresses (127.0.0.x), so each case has its own source.
mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use md5::{Digest, Md5};
use serde_json::Value;

struct Daemon {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PASSWORD: &str = "alice-secret";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

fn config_text(dir: &Path, name: &str, port: u16, shield: &str) -> String {
    format!(
        r#"[dataplane]
interfaces = ["lo"]
xdp = "off"
instance = "shieldtest-{name}"

[media]
port_min = 42000
port_max = 42099
addresses = {{ a = "127.0.0.1", b = "127.0.0.1" }}

[control]
socket = "{dir}/ctl.sock"

[sip]
workers = 1
udp = ["0.0.0.0:{port}"]
tcp = ["0.0.0.0:{port}"]
server = "sipveil-test"

[registrar]
database = "{dir}/registrar.redb"

[[domain]]
name = "auth.test"
policy = "authenticated"
realm = "auth.test"
users = "{dir}/auth.test.users"

[[domain]]
name = "open.test"
policy = "open"

{shield}
"#,
        dir = dir.display()
    )
}

fn start(name: &str, port: u16, shield: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("sv-shield-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sha = sipveil_registrar::ha1_sha256("alice", "auth.test", PASSWORD);
    let md5 = sipveil_registrar::ha1_md5("alice", "auth.test", PASSWORD);
    std::fs::write(
        dir.join("auth.test.users"),
        format!("alice sha256:{} md5:{}\n", hex(&sha), hex(&md5)),
    )
    .expect("users file");
    let config = dir.join("sipveil.toml");
    std::fs::write(&config, config_text(&dir, name, port, shield)).expect("config");
    let child = common::start_no_xdp(&config);
    Daemon { child, dir, port }
}

/// `sipveil <args> --socket <daemon's>`, the JSON answer.
fn cli(d: &Daemon, args: &[&str]) -> Value {
    common::control(&d.dir.join("ctl.sock"), args)
}

/// A UDP client on its own loopback source address.
struct Client {
    sock: UdpSocket,
    edge: String,
    local: String,
    seq: u32,
}

impl Client {
    fn new(d: &Daemon, source: &str) -> Client {
        let sock = UdpSocket::bind(format!("{source}:0")).expect("bind a loopback source");
        sock.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        let local = sock.local_addr().expect("local").to_string();
        Client {
            sock,
            edge: format!("127.0.0.1:{}", d.port),
            local,
            seq: 0,
        }
    }

    /// Sends `text`; the answer, or None when nothing came within the timeout.
    fn send(&mut self, text: &str) -> Option<String> {
        self.sock
            .send_to(text.as_bytes(), &self.edge)
            .expect("send");
        let mut buf = [0u8; 4096];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// The next datagram from the edge, or None within the timeout.
    fn send_nothing_and_wait(&mut self) -> Option<String> {
        let mut buf = [0u8; 4096];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    fn register(&mut self, user: &str, domain: &str, extra: &str) -> Option<String> {
        self.seq += 1;
        let text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bKsh{seq}x{user}\r\n\
             From: <sip:{user}@{domain}>;tag=f{seq}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: shield-{user}-{local}\r\n\
             CSeq: {seq} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             Max-Forwards: 70\r\n\
             Expires: 300\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            local = self.local,
            seq = self.seq,
        );
        self.send(&text)
    }

    /// `n` REGISTERs for `user` on open.test sent back to back; the number of answers.
    fn burst_register(&mut self, user: &str, n: u32) -> usize {
        let mut sent = Vec::new();
        for _ in 0..n {
            self.seq += 1;
            sent.push(format!(
                "REGISTER sip:open.test SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bKb{seq}x{user}\r\n\
                 From: <sip:{user}@open.test>;tag=b{seq}\r\n\
                 To: <sip:{user}@open.test>\r\n\
                 Call-ID: shield-burst-{user}-{local}\r\n\
                 CSeq: {seq} REGISTER\r\n\
                 Contact: <sip:{user}@{local}>\r\n\
                 Max-Forwards: 70\r\n\
                 Expires: 300\r\n\
                 Content-Length: 0\r\n\r\n",
                local = self.local,
                seq = self.seq,
            ));
        }
        for text in &sent {
            self.sock
                .send_to(text.as_bytes(), &self.edge)
                .expect("send");
        }
        let mut answers = 0;
        let mut buf = [0u8; 4096];
        while self.sock.recv_from(&mut buf).is_ok() {
            answers += 1;
        }
        answers
    }

    fn options(&mut self, user_agent: &str) -> Option<String> {
        self.seq += 1;
        let text = format!(
            "OPTIONS sip:open.test SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bKop{seq}\r\n\
             From: <sip:probe@open.test>;tag=o{seq}\r\n\
             To: <sip:open.test>\r\n\
             Call-ID: shield-options-{local}-{seq}\r\n\
             CSeq: {seq} OPTIONS\r\n\
             Max-Forwards: 70\r\n\
             User-Agent: {user_agent}\r\n\
             Content-Length: 0\r\n\r\n",
            local = self.local,
            seq = self.seq,
        );
        self.send(&text)
    }

    /// REGISTER for alice: the challenge, then the MD5 digest with `password`.
    fn register_alice(&mut self, password: &str) -> Option<String> {
        let challenge = self.register("alice", "auth.test", "")?;
        assert_eq!(status_of(&challenge), 401, "{challenge}");
        let www = challenge
            .split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
            .find(|l| l.contains("algorithm=MD5"))
            .unwrap_or_else(|| panic!("no MD5 challenge in {challenge}"));
        let nonce = param(www, "nonce").expect("nonce");
        let opaque = param(www, "opaque");
        let uri = "sip:auth.test";
        let ha1 = md5_hex(&format!("alice:auth.test:{password}"));
        let ha2 = md5_hex(&format!("REGISTER:{uri}"));
        let cnonce = "0a4f113b";
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        let mut auth = format!(
            "Authorization: Digest username=\"alice\", realm=\"auth.test\", nonce=\"{nonce}\", \
             uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, \
             cnonce=\"{cnonce}\""
        );
        if let Some(o) = opaque {
            auth.push_str(&format!(", opaque=\"{o}\""));
        }
        auth.push_str("\r\n");
        self.register("alice", "auth.test", &auth)
    }
}

fn param(header: &str, name: &str) -> Option<String> {
    let start = header.find(&format!("{name}="))? + name.len() + 1;
    let rest = &header[start..];
    let v = if let Some(r) = rest.strip_prefix('"') {
        &r[..r.find('"')?]
    } else {
        rest.split([',', ' ', '\r']).next()?
    };
    Some(v.to_owned())
}

fn status_of(msg: &str) -> u16 {
    msg.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {msg:?}"))
}

fn blocked_entry(list: &Value, source: &str) -> Option<Value> {
    list["blocked"]
        .as_array()?
        .iter()
        .find(|b| b["source"] == source)
        .cloned()
}

/// The closed loop's tests send requests back to back over loopback (well under a millisecond
/// apart): their sources start with the full bursts (`new_source_burst = burst`), so the
/// policy, not the new-source burst, is what they exercise.
const SHIELD: &str = r#"[shield]
enabled = true
register = { rate = 1000, burst = 1000, new_source_burst = 1000 }
options = { rate = 1000, burst = 1000, new_source_burst = 1000 }
invite = { rate = 20, burst = 40, new_source_burst = 40 }
auth_failures = { count = 5, window_secs = 60 }
block_secs = 600
"#;

#[test]
fn wrong_password_storm_blocks_until_unblocked() {
    let d = start("storm", 25_171, SHIELD);
    let mut c = Client::new(&d, "127.0.0.11");
    // Wrong passwords: each counted as an auth failure; the fifth blocks the source.
    for i in 0..5 {
        let answer = c
            .register_alice("wrong")
            .unwrap_or_else(|| panic!("attempt {i} got no answer"));
        assert!(matches!(status_of(&answer), 401 | 403), "{answer}");
    }
    assert_eq!(
        c.options("pjsip"),
        None,
        "a blocked source must get no answer"
    );
    let list = cli(&d, &["shield", "list", "--json"]);
    let entry = blocked_entry(&list, "127.0.0.11").unwrap_or_else(|| panic!("{list}"));
    assert_eq!(entry["reason"], "auth-failures", "{list}");
    assert!(entry["until_secs"].as_u64().unwrap_or(0) > 500, "{list}");
    let stats = cli(&d, &["shield", "stats", "--json"]);
    assert_eq!(stats["enforcement"], "userspace", "{stats}");
    assert!(
        stats["userspace_drops"]["blocked"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
    assert_eq!(stats["blocked_sources"], 1, "{stats}");
    let metrics = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(["metrics", "--socket"])
        .arg(d.dir.join("ctl.sock"))
        .output()
        .expect("sipveil metrics");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("\nsipveil_shield_blocked_sources 1\n"),
        "{metrics}"
    );
    let blocked_drops = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"sipveil_shield_drops_total{reason="blocked",path="userspace"} "#)
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(blocked_drops >= 1, "{metrics}");
    // Another source is not affected.
    let mut other = Client::new(&d, "127.0.0.12");
    assert!(other.options("pjsip").is_some());

    let answer = cli(&d, &["shield", "unblock", "127.0.0.11"]);
    assert_eq!(answer["ok"], true, "{answer}");
    let again = c.options("pjsip").expect("answered after unblock");
    assert_eq!(status_of(&again), 200, "{again}");
    assert!(blocked_entry(&cli(&d, &["shield", "list", "--json"]), "127.0.0.11").is_none());
    let answer = cli(&d, &["shield", "unblock", "127.0.0.11"]);
    assert_eq!(answer["ok"], false, "unblocking twice: {answer}");
}

#[test]
fn manual_block_for_a_duration_drops_then_expires() {
    let d = start("manual", 25_172, SHIELD);
    let mut c = Client::new(&d, "127.0.0.21");
    assert!(c.options("pjsip").is_some());
    let answer = cli(&d, &["shield", "block", "127.0.0.21", "--for", "2s"]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(c.options("pjsip"), None);
    let list = cli(&d, &["shield", "list", "--json"]);
    let entry = blocked_entry(&list, "127.0.0.21").unwrap_or_else(|| panic!("{list}"));
    assert_eq!(entry["reason"], "manual", "{list}");
    // Bounded wait for the expiry (2 s, then the daemon's once-a-second tick).
    let mut answered = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        if c.options("pjsip").is_some() {
            answered = true;
            break;
        }
    }
    assert!(answered, "the block did not expire");
    assert!(blocked_entry(&cli(&d, &["shield", "list", "--json"]), "127.0.0.21").is_none());
}

#[test]
fn a_verified_registration_allowlists_with_raised_limits() {
    let shield = r#"[shield]
enabled = true
register = { rate = 1, burst = 4 }
allow_multiplier = 10
"#;
    let d = start("allow", 25_173, shield);
    let mut stranger = Client::new(&d, "127.0.0.31");
    let mut alice = Client::new(&d, "127.0.0.32");
    let ok = alice
        .register_alice(PASSWORD)
        .expect("answer to the digest");
    assert_eq!(status_of(&ok), 200, "{ok}");
    let list = cli(&d, &["shield", "list", "--json"]);
    let allowed = list["allowed"].as_array().expect("allowed");
    assert!(
        allowed.iter().any(|a| a["source"] == "127.0.0.32"),
        "{list}"
    );
    assert!(
        !allowed.iter().any(|a| a["source"] == "127.0.0.31"),
        "{list}"
    );

    // Let both buckets fill (burst 4 for the stranger, 40 for alice: 4 s at 10/s), then 20
    // REGISTERs back to back from each: the stranger gets about its burst, alice all 20.
    std::thread::sleep(Duration::from_secs(5));
    let stranger_answers = stranger.burst_register("nick31", 20);
    let alice_answers = alice.burst_register("nick32", 20);
    assert!(
        (4..=6).contains(&stranger_answers),
        "{stranger_answers} of 20 answered without allowlisting"
    );
    assert_eq!(alice_answers, 20, "allowlisted source was limited");
    let stats = cli(&d, &["shield", "stats", "--json"]);
    assert!(
        stats["userspace_drops"]["rate_register"]
            .as_u64()
            .unwrap_or(0)
            >= 14,
        "{stats}"
    );
}

/// The userspace limiter's new-source burst end to end (XDP off): a fresh source gets its
/// `new_source_burst` of a back-to-back burst, a configured peer its full (multiplied) burst.
#[test]
fn a_new_source_gets_only_its_new_source_burst() {
    let shield = r#"[shield]
enabled = true
register = { rate = 1, burst = 10, new_source_burst = 3 }
peers = [{ address = "127.0.0.62", multiplier = 2 }]
"#;
    let d = start("newsrc", 25_176, shield);
    let mut fresh = Client::new(&d, "127.0.0.61");
    let mut peer = Client::new(&d, "127.0.0.62");
    let fresh_answers = fresh.burst_register("nick61", 10);
    let peer_answers = peer.burst_register("nick62", 10);
    // 3, plus at most one token of refill (1/s) while the burst is answered.
    assert!(
        (3..=4).contains(&fresh_answers),
        "{fresh_answers} of 10 answered for a new source"
    );
    assert_eq!(
        peer_answers, 10,
        "a configured peer starts with its full burst"
    );
    let stats = cli(&d, &["shield", "stats", "--json"]);
    assert!(
        stats["userspace_drops"]["rate_register"]
            .as_u64()
            .unwrap_or(0)
            >= 6,
        "{stats}"
    );
}

#[test]
fn a_scanner_user_agent_is_blocked() {
    let d = start("scanner", 25_174, SHIELD);
    let mut c = Client::new(&d, "127.0.0.41");
    assert_eq!(c.options("friendly-scanner"), None);
    assert_eq!(
        c.options("pjsip"),
        None,
        "the scanner's source stays blocked"
    );
    let list = cli(&d, &["shield", "list", "--json"]);
    let entry = blocked_entry(&list, "127.0.0.41").unwrap_or_else(|| panic!("{list}"));
    assert_eq!(entry["reason"], "scanner", "{list}");
}

#[test]
fn reload_applies_new_limits() {
    let d = start("reload", 25_175, "[shield]\nenabled = false\n");
    let mut c = Client::new(&d, "127.0.0.51");
    assert_eq!(
        c.burst_register("nick51", 10),
        10,
        "shield off: all answered"
    );
    let config = d.dir.join("sipveil.toml");
    let shield = "[shield]\nenabled = true\nregister = { rate = 1, burst = 3 }\n";
    std::fs::write(&config, config_text(&d.dir, "reload", d.port, shield)).expect("config");
    let answer = cli(&d, &["reload"]);
    assert_eq!(answer["ok"], true, "{answer}");
    let answered = c.burst_register("nick51", 10);
    assert!(
        (3..=4).contains(&answered),
        "{answered} of 10 answered after reload"
    );
    let stats = cli(&d, &["shield", "stats", "--json"]);
    assert_eq!(stats["enabled"], true, "{stats}");
}

#[test]
fn invites_for_unknown_users_block_the_source() {
    let d = start("unknown", 25_175, SHIELD);
    let mut c = Client::new(&d, "127.0.0.51");
    // The default threshold: 10 requests for users the edge does not have within 60 s.
    for i in 0..10 {
        c.seq += 1;
        let text = format!(
            "INVITE sip:nobody{i}@open.test SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bKinv{seq}\r\n\
             From: <sip:scan@open.test>;tag=i{seq}\r\n\
             To: <sip:nobody{i}@open.test>\r\n\
             Call-ID: shield-invite-{local}-{seq}\r\n\
             CSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\n\
             Contact: <sip:scan@{local}>\r\n\
             Content-Length: 0\r\n\r\n",
            local = c.local,
            seq = c.seq,
        );
        let mut answer = c
            .send(&text)
            .unwrap_or_else(|| panic!("INVITE {i} got no answer"));
        // Skip provisional answers to the final one.
        while (100..200).contains(&status_of(&answer)) {
            answer = c
                .send_nothing_and_wait()
                .unwrap_or_else(|| panic!("INVITE {i}: no final answer"));
        }
        assert_eq!(status_of(&answer), 404, "{answer}");
    }
    // The edge keeps retransmitting its 404s (never ACKed here); what matters is that the
    // OPTIONS from the now blocked source gets no answer.
    let mut answer = c.options("pjsip");
    while let Some(a) = answer {
        assert!(
            !a.contains(" OPTIONS\r\n"),
            "a source that probed unknown users must be blocked: {a}"
        );
        answer = c.send_nothing_and_wait();
    }
    let list = cli(&d, &["shield", "list", "--json"]);
    let entry = blocked_entry(&list, "127.0.0.51").unwrap_or_else(|| panic!("{list}"));
    assert_eq!(entry["reason"], "unknown-users", "{list}");
}

/// A TCP connection from `source` to the daemon's SIP port; an OPTIONS on it; the answer's status,
/// or None when the daemon closed the connection without answering.
fn tcp_options(d: &Daemon, source: &str, n: u32) -> Option<u16> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let src: Ipv4Addr = source.parse().expect("source address");
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0))).expect("bind the source");
    connect(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, d.port)),
    )
    .expect("connect (the kernel completes the handshake before the daemon accepts)");
    let mut stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = stream.local_addr().expect("local").to_string();
    let text = format!(
        "OPTIONS sip:open.test SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bKtcp{n}\r\n\
         From: <sip:probe@open.test>;tag=t{n}\r\n\
         To: <sip:open.test>\r\n\
         Call-ID: shield-tcp-{local}-{n}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    );
    // A connection the daemon already closed may refuse the write (EPIPE/ECONNRESET): no answer.
    if stream.write_all(text.as_bytes()).is_err() {
        return None;
    }
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => None,
        Ok(n) => Some(status_of(&String::from_utf8_lossy(&buf[..n]))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            None
        }
        Err(e) => panic!("reading the answer on {local}: {e}"),
    }
}

#[test]
fn tcp_connections_beyond_the_syn_limit_are_closed_at_once() {
    let shield = r#"[shield]
enabled = true
syn = { rate = 1, burst = 3, new_source_burst = 3 }
"#;
    let d = start("syn", 25_177, shield);
    // Six connections back to back from one source: its first three are served (a token comes
    // back per second, so at most one more), the rest closed before anything is read.
    let answers: Vec<Option<u16>> = (0..6).map(|n| tcp_options(&d, "127.0.0.71", n)).collect();
    let served = answers.iter().filter(|a| a.is_some()).count();
    assert!(
        (3..=4).contains(&served),
        "{served} of 6 connections served: {answers:?}"
    );
    assert!(
        answers.iter().flatten().all(|s| *s == 200),
        "served connections get 200 to OPTIONS: {answers:?}"
    );
    assert!(
        answers[answers.len() - 1].is_none(),
        "the last connection of the burst is closed: {answers:?}"
    );
    // Another source is not affected by the first one's limit.
    assert_eq!(tcp_options(&d, "127.0.0.72", 100), Some(200));
    let stats = cli(&d, &["shield", "stats", "--json"]);
    assert!(
        stats["userspace_drops"]["syn_rate"].as_u64().unwrap_or(0) >= 2,
        "{stats}"
    );
}
