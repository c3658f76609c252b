//! The daemon's SIP side through the real binary on loopback (no root, no XDP): requests toward a
//! registered client go down the flow it registered on (`sipveil qualify`), and a reload (control
//! socket and SIGHUP) changes domains without dropping bindings, while a bad file changes nothing.
mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

const SIP_PORT: u16 = 25_160;

struct Daemon {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_text(dir: &Path, domains: &[&str]) -> String {
    let mut text = format!(
        r#"[dataplane]
interfaces = ["lo"]
xdp = "off"
instance = "sipdaemontest"

[media]
port_min = 41000
port_max = 41099
addresses = {{ a = "127.0.0.1", b = "127.0.0.1" }}

[control]
socket = "{dir}/ctl.sock"

[sip]
workers = 2
udp = ["127.0.0.1:{SIP_PORT}"]
tcp = ["127.0.0.1:{SIP_PORT}"]
server = "sipveil-test"

[registrar]
database = "{dir}/registrar.redb"
"#,
        dir = dir.display()
    );
    for d in domains {
        text.push_str(&format!(
            "\n[[domain]]\nname = \"{d}\"\npolicy = \"open\"\n"
        ));
    }
    text
}

fn start(name: &str, domains: &[&str]) -> Daemon {
    start_with(name, domains, "")
}

/// Starts the daemon with `extra` appended to the configuration.
fn start_with(name: &str, domains: &[&str], extra: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("sv-sipdaemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("sipveil.toml");
    std::fs::write(&config, config_text(&dir, domains) + extra).expect("config");
    let child = common::start_no_xdp(&config);
    Daemon { child, dir, config }
}

fn ctl(d: &Daemon, args: &[&str]) -> Value {
    common::control(&d.dir.join("ctl.sock"), args)
}

fn register(transport: &str, local: &str, nick: &str, domain: &str, call_id: &str) -> String {
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id}{nick}\r\n\
         From: <sip:{nick}@{domain}>;tag=f{nick}\r\n\
         To: <sip:{nick}@{domain}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{nick}@{local};transport={t}>\r\n\
         Max-Forwards: 70\r\n\
         Expires: 300\r\n\
         Content-Length: 0\r\n\r\n",
        t = transport.to_ascii_lowercase()
    )
}

fn status_of(msg: &str) -> u16 {
    msg.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {msg:?}"))
}

/// One message from a stream (headers only: the edge's OPTIONS and answers carry no body).
fn read_stream_message(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("read from the edge");
        buf.push(byte[0]);
    }
    String::from_utf8(buf).expect("utf-8")
}

/// The 200 for a request: its Via, From, To (with a tag), Call-ID and CSeq.
fn ok_for(request: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in request.split("\r\n") {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out.push_str(&format!("{line}\r\n")),
            "to" => out.push_str(&format!("{line};tag=callee\r\n")),
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn qualify_in_background(d: &Daemon, aor: &str) -> std::thread::JoinHandle<Value> {
    let socket = d.dir.join("ctl.sock");
    let aor = aor.to_owned();
    std::thread::spawn(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_sipveil"))
            .args(["qualify", "--json", "--wait-ms", "5000", &aor, "--socket"])
            .arg(&socket)
            .output()
            .expect("sipveil qualify");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    })
}

#[test]
fn requests_toward_a_client_go_down_the_flow_it_registered_on() {
    let d = start("flows", &["open.lab"]);
    let edge = format!("127.0.0.1:{SIP_PORT}");

    // TCP: the client registers on a connection and is then probed on that same connection.
    let mut tcp = TcpStream::connect(&edge).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let local = tcp.local_addr().expect("local").to_string();
    tcp.write_all(register("TCP", &local, "tcpnick", "open.lab", "cid-tcp-1").as_bytes())
        .expect("send");
    let answer = read_stream_message(&mut tcp);
    assert_eq!(status_of(&answer), 200, "{answer}");
    let probe = qualify_in_background(&d, "tcpnick@open.lab");
    let options = read_stream_message(&mut tcp);
    assert!(options.starts_with("OPTIONS sip:tcpnick@"), "{options}");
    assert!(options.contains("SIP/2.0/TCP 127.0.0.1:"), "{options}");
    assert!(options.contains("User-Agent: sipveil-test"), "{options}");
    tcp.write_all(ok_for(&options).as_bytes()).expect("answer");
    let result = probe.join().expect("qualify thread");
    assert_eq!(result["ok"], true, "{result}");
    let probes = result["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 1, "{result}");
    assert_eq!(probes[0]["status"], 200, "{result}");
    assert_eq!(probes[0]["proto"], "tcp", "{result}");
    assert_eq!(probes[0]["peer"], local, "{result}");

    // UDP: the probe goes to the source address the REGISTER came from (rport), not to a
    // Contact the client may have got wrong behind NAT.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let source = udp.local_addr().expect("local").to_string();
    // The Contact names an unreachable private address; only the flow reaches the client.
    let text = register(
        "UDP",
        "10.99.99.99:5060",
        "udpnick",
        "open.lab",
        "cid-udp-1",
    );
    udp.send_to(text.as_bytes(), &edge).expect("send");
    let mut buf = [0u8; 4096];
    let n = udp.recv(&mut buf).expect("answer");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status_of(&answer), 200, "{answer}");
    let probe = qualify_in_background(&d, "udpnick@open.lab");
    let n = udp.recv(&mut buf).expect("OPTIONS on the registered flow");
    let options = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        options.starts_with("OPTIONS sip:udpnick@10.99.99.99"),
        "{options}"
    );
    udp.send_to(ok_for(&options).as_bytes(), &edge)
        .expect("answer");
    let result = probe.join().expect("qualify thread");
    let probes = result["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 1, "{result}");
    assert_eq!(probes[0]["status"], 200, "{result}");
    assert_eq!(probes[0]["peer"], source, "{result}");

    // A closed connection: the probe reports the flow is gone instead of hanging.
    drop(tcp);
    std::thread::sleep(Duration::from_millis(300));
    let result = qualify_in_background(&d, "tcpnick@open.lab")
        .join()
        .expect("qualify thread");
    let probes = result["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 1, "{result}");
    assert!(probes[0]["status"].is_null(), "{result}");
    assert!(probes[0]["error"].is_string(), "{result}");
}

fn udp_register(sock: &UdpSocket, edge: &str, nick: &str, domain: &str, call_id: &str) -> u16 {
    let local = sock.local_addr().expect("local").to_string();
    sock.send_to(
        register("UDP", &local, nick, domain, call_id).as_bytes(),
        edge,
    )
    .expect("send");
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("answer");
    status_of(&String::from_utf8_lossy(&buf[..n]))
}

#[test]
fn reload_changes_domains_and_keeps_bindings() {
    let d = start("reload", &["open.lab"]);
    let edge = format!("127.0.0.1:{SIP_PORT}");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(udp_register(&sock, &edge, "keeper", "open.lab", "r-1"), 200);
    assert_eq!(udp_register(&sock, &edge, "newbie", "new.lab", "r-2"), 403);

    // A broken file is refused and changes nothing.
    std::fs::write(&d.config, "[sip]\nworkers = \"two\"\n").expect("write");
    let answer = ctl(&d, &["reload"]);
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or("")
            .contains("sipveil.toml"),
        "{answer}"
    );
    assert_eq!(udp_register(&sock, &edge, "newbie", "new.lab", "r-3"), 403);

    // Through the control socket.
    std::fs::write(&d.config, config_text(&d.dir, &["open.lab", "new.lab"])).expect("write");
    let answer = ctl(&d, &["reload"]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(udp_register(&sock, &edge, "newbie", "new.lab", "r-4"), 200);

    // Through SIGHUP: new.lab goes away again; open.lab's binding survived both reloads.
    std::fs::write(&d.config, config_text(&d.dir, &["open.lab"])).expect("write");
    let pid = i32::try_from(d.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let mut refused = false;
    for i in 0..50 {
        if udp_register(&sock, &edge, "late", "new.lab", &format!("r-5-{i}")) == 403 {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused, "SIGHUP did not reload the configuration");
    let list = ctl(&d, &["registrations", "--json", "--aor", "keeper@open.lab"]);
    let bindings = list["bindings"].as_array().expect("bindings");
    assert_eq!(bindings.len(), 1, "{list}");
    assert!(
        !list.to_string().contains("r-1"),
        "the Call-ID (the nickname's claim secret) must never be shown: {list}"
    );
}

/// `[metrics] listen` serves the registrations; `sipveil hlog start/stop` writes an interval log
/// holding the REGISTERs' latencies; `sipveil metrics` prints the same text as the endpoint.
#[test]
fn metrics_endpoint_and_interval_log() {
    let d = start_with(
        "metrics",
        &["open.lab"],
        "\n[metrics]\nlisten = \"127.0.0.1:25190\"\n",
    );
    let hlog = d.dir.join("tx.hlog");
    let out = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(["hlog", "start", "--interval-ms", "100"])
        .arg(&hlog)
        .arg("--socket")
        .arg(d.dir.join("ctl.sock"))
        .output()
        .expect("hlog start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let edge = format!("127.0.0.1:{SIP_PORT}");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for i in 0..20 {
        let status = udp_register(
            &sock,
            &edge,
            &format!("m{i}"),
            "open.lab",
            &format!("mc-{i}"),
        );
        assert_eq!(status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(["hlog", "stop", "--socket"])
        .arg(d.dir.join("ctl.sock"))
        .output()
        .expect("hlog stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = std::fs::read_to_string(&hlog).expect("the interval log exists");
    assert!(
        log.contains("#[StartTime:"),
        "an HdrHistogram log header: {log}"
    );
    let intervals = log
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("\"StartTimestamp\"") && !l.is_empty())
        .count();
    assert!(intervals >= 1, "at least one interval: {log}");

    // The HTTP endpoint.
    let mut http = TcpStream::connect("127.0.0.1:25190").expect("metrics endpoint");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    http.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(
            "sipveil_registrations_total{domain=\"open.lab\",policy=\"open\",result=\"registered\"} 20"
        ),
        "{text}"
    );
    assert!(
        text.contains("sipveil_sip_responses_total{method=\"REGISTER\",code=\"200\"} 20"),
        "{text}"
    );
    assert!(text.contains("sipveil_registrar_bindings"), "{text}");
    // The same through the control socket.
    let out = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(["metrics", "--socket"])
        .arg(d.dir.join("ctl.sock"))
        .output()
        .expect("sipveil metrics");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("sipveil_sip_responses_total{method=\"REGISTER\",code=\"200\"} 20"),
        "{printed}"
    );
}
