//! The `sipveil` binary as xtask and the load tests use it: `run --netns` (ready line, SIGTERM,
//! kill -9, restart with adoption), `ctl`, `stats --json`, `unload`, generic-mode fallback, and
//! `lab-xdp attach/read-sink/detach`. Needs root.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{Netns, require_root, rtp, spawn_in, udp};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sipveil");

fn sipveil(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running sipveil {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

/// Starts the daemon and waits for its ready line.
fn start(args: &[&str]) -> (Child, Value) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sipveil run");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let ready: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("daemon did not print a ready line ({e}): {line:?}"));
    assert_eq!(ready["ready"], Value::Bool(true), "{ready}");
    (child, ready)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill");
}

struct Unload(String);
impl Drop for Unload {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["unload", "--instance", &self.0])
            .output();
    }
}

#[test]
fn daemon_cli_restart_adopts_and_unload_detaches() {
    require_root();
    let instance = format!("svt-cli-{}", std::process::id());
    let _unload = Unload(instance.clone());
    let e = Netns::new("ce");
    let a = Netns::new("ca");
    common::veth(&e, "ea0", "198.18.1.1/24", &a, "a0", "198.18.1.2/24");
    // A device without native XDP (a bridge): auto mode falls back to generic.
    common::ip(&["-n", &e.name, "link", "add", "dm0", "type", "bridge"]);
    common::ip(&["-n", &e.name, "addr", "add", "198.18.2.1/24", "dev", "dm0"]);
    common::ip(&["-n", &e.name, "link", "set", "dm0", "up"]);
    let dir = std::env::temp_dir().join(format!("svt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = dir.join("edge.toml");
    let socket = dir.join("ctl.sock");
    std::fs::write(
        &config,
        format!(
            r#"
[dataplane]
interfaces = ["ea0", "dm0"]
xdp = "auto"
instance = "{instance}"

[media]
port_min = 34000
port_max = 34099
addresses = {{ a = "198.18.1.1", b = "198.18.2.1" }}

[control]
socket = "{}"
"#,
            socket.display()
        ),
    )
    .expect("write config");
    let cfg = config.to_string_lossy().into_owned();
    let sock = socket.to_string_lossy().into_owned();
    let run = ["run", "--netns", e.name.as_str(), "--config", cfg.as_str()];

    let (child, ready) = start(&run);
    assert_eq!(ready["mode"], "xdp");
    let ifaces = ready["interfaces"].as_array().expect("interfaces");
    let mode_of = |name: &str| {
        ifaces
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["mode"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(mode_of("ea0"), "driver");
    assert_eq!(
        mode_of("dm0"),
        "generic",
        "a bridge has no native XDP: {ready}"
    );

    let (ok, open, err) = sipveil(&[
        "ctl",
        "--socket",
        &sock,
        "relay-open",
        "--a-peer",
        "198.18.1.2:4000",
        "--b-peer",
        "198.18.2.2:5000",
        "--count",
        "3",
        "--rtcp-mux",
    ]);
    assert!(ok, "relay-open: {open} {err}");
    let relays = open["relays"].as_array().expect("relays");
    assert_eq!(relays.len(), 3);
    assert_eq!(
        relays[2]["a"]["peer"], "198.18.1.2:4004",
        "peer ports step by 2"
    );
    let ea: std::net::SocketAddr = relays[0]["a"]["edge"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("edge");

    // A packet from A reaches the edge program (counted by the pinned counters).
    spawn_in(&a.name, move || {
        udp("198.18.1.2:4000").send_to(&rtp(1), ea).expect("send");
    })
    .join()
    .expect("A");
    // The program runs in the receive path of the veth peer: poll (bounded) until it counted.
    let mut stats = Value::Null;
    for _ in 0..50 {
        let (ok, s, err) = sipveil(&[
            "stats",
            "--instance",
            &instance,
            "--json",
            "--socket",
            &sock,
        ]);
        assert!(ok, "stats: {err}");
        stats = s;
        if stats["xdp"]["rx"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(stats["xdp"]["rx"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert_eq!(stats["flows"], 6, "{stats}");
    assert_eq!(stats["mode"], "xdp", "{stats}");
    assert!(stats["userspace"].is_object(), "{stats}");

    // SIGTERM: clean exit, links stay.
    signal(&child, libc::SIGTERM);
    let mut child = child;
    let status = child.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let (ok, stats, _) = sipveil(&[
        "stats",
        "--instance",
        &instance,
        "--json",
        "--socket",
        &sock,
    ]);
    assert!(ok);
    assert!(stats["userspace"].is_null(), "no daemon: {stats}");
    assert_eq!(
        stats["flows"], 6,
        "flows stay pinned without the daemon: {stats}"
    );

    // Restart, then kill -9, then restart: every start adopts.
    let (child, ready) = start(&run);
    assert_eq!(ready["adopted_flows"], 6, "{ready}");
    signal(&child, libc::SIGKILL);
    let mut child = child;
    let _ = child.wait();
    let (child, ready) = start(&run);
    assert_eq!(ready["adopted_flows"], 6, "{ready}");
    assert!(
        ready["interfaces"]
            .as_array()
            .is_some_and(|l| l.iter().all(|i| i["mode"] == "adopted")),
        "{ready}"
    );
    let (ok, list, _) = sipveil(&["ctl", "--socket", &sock, "relay-list"]);
    assert!(ok);
    assert_eq!(list["relays"].as_array().map(Vec::len), Some(3), "{list}");
    let (ok, bad, _) = sipveil(&["ctl", "--socket", &sock, "raw", r#"{"cmd":"relay-close"}"#]);
    assert!(!ok, "relay-close without id fails: {bad}");
    assert_eq!(bad["kind"], "bad_request");
    signal(&child, libc::SIGINT);
    let mut child = child;
    assert!(
        child.wait().expect("wait").success(),
        "clean exit on SIGINT"
    );

    // unload: detaches and removes the pins.
    let (ok, report, err) = sipveil(&["unload", "--instance", &instance, "--netns", &e.name]);
    assert!(ok, "unload: {err}");
    assert_eq!(report["removed_pins"], true, "{report}");
    assert_eq!(
        report["detached"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    let out = Command::new("ip")
        .args(["-n", &e.name, "link", "show", "ea0"])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("xdp"),
        "ea0 has no XDP program any more"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("svt-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "[media]\nport_min = 30000\nport_max = 29000\naddresses = [\"198.18.0.1\"]\n",
    )
    .expect("write");
    let (ok, _, err) = sipveil(&["run", "--no-xdp", "--config", &config.to_string_lossy()]);
    assert!(!ok);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("media.port_max"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lab_xdp_sink_counts_and_detaches() {
    require_root();
    let s = Netns::new("ls");
    let r = Netns::new("lr");
    common::veth(&s, "s0", "198.18.5.1/24", &r, "r0", "198.18.5.2/24");
    let (ok, out, err) = sipveil(&[
        "lab-xdp",
        "attach",
        "--netns",
        &r.name,
        "--iface",
        "r0",
        "--program",
        "sv_sink",
        "--sink-ports",
        "9000-9001",
    ]);
    assert!(ok, "attach sv_sink: {out} {err}");
    let pin_dir = out["pin"].as_str().expect("pin").to_owned();
    spawn_in(&s.name, || {
        let sock = udp("198.18.5.1:7000");
        for i in 0..5u16 {
            sock.send_to(&rtp(i), "198.18.5.2:9000").expect("send");
        }
    })
    .join()
    .expect("sender");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (ok, sink, err) = sipveil(&[
        "lab-xdp",
        "read-sink",
        "--netns",
        &r.name,
        "--iface",
        "r0",
        "--json",
    ]);
    assert!(ok, "read-sink: {err}");
    assert_eq!(
        sink["maps"]["SVL_SINK"][0], 5,
        "5 packets counted and dropped: {sink}"
    );
    let (ok, _, err) = sipveil(&["lab-xdp", "detach", "--netns", &r.name, "--iface", "r0"]);
    assert!(ok, "detach: {err}");
    assert!(!std::path::Path::new(&pin_dir).exists());
}

/// Runs sipveil with `stdin` as its standard input: (exit code, stdout, stderr).
fn sipveil_with_input(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running sipveil {args:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct TmpDir(std::path::PathBuf);
impl TmpDir {
    fn new(tag: &str) -> TmpDir {
        let dir = std::env::temp_dir().join(format!("svt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tmp dir");
        TmpDir(dir)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SIP_CONFIG: &str = r#"[media]
port_min = 30000
port_max = 30099
addresses = ["198.18.0.1"]

[sip]
workers = 2
udp = ["198.18.0.1:5060"]
tls = ["198.18.0.1:5061"]
tls_cert = "edge.pem"
tls_key = "edge.key"

[registrar]
database = "registrar.redb"

[[domain]]
name = "open.lab"
policy = "open"

[[domain]]
name = "auth.lab"
policy = "authenticated"
users = "auth.users"

[metrics]
listen = "127.0.0.1:9090"
"#;

#[test]
fn check_config_summarises_or_exits_2() {
    let dir = TmpDir::new("checkcfg");
    let config = dir.0.join("edge.toml");
    std::fs::write(&config, SIP_CONFIG).expect("write");
    std::fs::write(
        dir.0.join("auth.users"),
        format!("{}\n", ha1_vector("alice", "auth.lab", "pw", true)),
    )
    .expect("users");
    std::fs::write(
        dir.0.join("edge.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",
    )
    .expect("pem");
    let cfg = config.to_string_lossy().into_owned();
    // The key file is missing: exit 2, the message names the file and the key.
    let (code, _, err) = sipveil_with_input(&["check-config", &cfg], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("edge.key") && err.contains("sip.tls_key"),
        "{err}"
    );
    std::fs::write(
        dir.0.join("edge.key"),
        "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n",
    )
    .expect("key");
    let (code, out, err) = sipveil_with_input(&["check-config", &cfg], "");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("OK"), "{out}");
    assert!(out.contains("udp 198.18.0.1:5060"), "listeners: {out}");
    assert!(out.contains("tls 198.18.0.1:5061"), "listeners: {out}");
    assert!(out.contains("open.lab open"), "domains: {out}");
    assert!(
        out.contains("auth.lab authenticated") && out.contains("1 user(s)"),
        "{out}"
    );
    assert!(
        out.contains(&dir.0.join("registrar.redb").display().to_string()),
        "database: {out}"
    );
    assert!(out.contains("127.0.0.1:9090"), "metrics: {out}");
    assert!(out.lines().count() <= 24, "one screen: {out}");

    // A bad value: exit 2 with file, line and key.
    let bad = SIP_CONFIG.replace("policy = \"open\"", "policy = \"opne\"");
    let policy_line = bad
        .lines()
        .position(|l| l.contains("opne"))
        .map_or(0, |i| i + 1);
    std::fs::write(&config, &bad).expect("write");
    let (code, _, err) = sipveil_with_input(&["check-config", &cfg], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("edge.toml")
            && err.contains(&format!("line {policy_line}"))
            && err.contains("domain.policy"),
        "{err}"
    );
    // An issue-2 config (no SIP side) is fine.
    std::fs::write(
        &config,
        "[media]\nport_min = 30000\nport_max = 30099\naddresses = [\"198.18.0.1\"]\n",
    )
    .expect("write");
    let (code, out, err) = sipveil_with_input(&["check-config", &cfg], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("sip           off"), "{out}");
    // No such file.
    let (code, _, err) = sipveil_with_input(&["check-config", "/nonexistent/x.toml"], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
}

/// The users-file line for NAME, computed with sha2 / md-5 directly.
fn ha1_vector(name: &str, realm: &str, password: &str, md5: bool) -> String {
    use sha2::Digest as _;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let a1 = format!("{name}:{realm}:{password}");
    let mut line = format!(
        "{name} sha256:{}",
        hex(&sha2::Sha256::digest(a1.as_bytes()))
    );
    if md5 {
        line.push_str(&format!(" md5:{}", hex(&md5::Md5::digest(a1.as_bytes()))));
    }
    line
}

#[test]
fn ha1_prints_a_users_file_line() {
    // Known vector: alice / auth.lab / alice-secret (as in edge/lab/auth.lab.users, computed
    // with Python's hashlib) and the same computed here with sha2.
    let (code, out, err) =
        sipveil_with_input(&["ha1", "--realm", "auth.lab", "alice"], "alice-secret\n");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim_end(),
        ha1_vector("alice", "auth.lab", "alice-secret", false)
    );
    assert_eq!(
        out.trim_end(),
        "alice sha256:7c2c0edd11bbd3c91969610e3ac0465e6ab2751c8625d3c57c524bc75b1203c9"
    );
    // User names are case-folded: the line is for the lower-case name, with a note.
    let (code, out, err) =
        sipveil_with_input(&["ha1", "--realm", "auth.lab", "Alice"], "alice-secret");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim_end(),
        ha1_vector("alice", "auth.lab", "alice-secret", false)
    );
    assert!(err.contains("lower case"), "{err}");
    // A name the users file cannot hold.
    let (code, _, err) = sipveil_with_input(&["ha1", "--realm", "auth.lab", "a@b"], "pw");
    assert_ne!(code, Some(0), "bad name refused");
    assert!(err.contains("a@b"), "{err}");
    let (code, out, err) = sipveil_with_input(
        &[
            "ha1",
            "--realm",
            "auth.lab",
            "--md5",
            "--refuse-anonymous",
            "bob",
        ],
        "bob-secret",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim_end(),
        format!(
            "{} refuse-anonymous",
            ha1_vector("bob", "auth.lab", "bob-secret", true)
        )
    );
    // Windows line end and no trailing newline give the same password.
    let (_, crlf, _) = sipveil_with_input(&["ha1", "--realm", "r", "u"], "pw\r\n");
    let (_, bare, _) = sipveil_with_input(&["ha1", "--realm", "r", "u"], "pw");
    assert_eq!(crlf, bare);
    let (code, _, err) = sipveil_with_input(&["ha1", "--realm", "r", "u"], "\n");
    assert_ne!(code, Some(0), "empty password refused");
    assert!(err.contains("password"), "{err}");
}

/// A stand-in daemon on a unix socket: answers `n` requests (one per connection) with `answer`
/// for the request's `cmd`, and returns the requests it got.
fn fake_daemon(
    path: &std::path::Path,
    n: usize,
    answer: fn(&Value) -> Value,
) -> std::thread::JoinHandle<Vec<Value>> {
    use std::io::Write as _;
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind fake control socket");
    std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..n {
            let (stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            let mut line = String::new();
            BufReader::new(&stream)
                .read_line(&mut line)
                .expect("read request");
            let request: Value = serde_json::from_str(&line).expect("request is JSON");
            let mut reply = answer(&request).to_string();
            reply.push('\n');
            (&stream).write_all(reply.as_bytes()).expect("answer");
            got.push(request);
        }
        got
    })
}

#[test]
fn control_clients_send_the_contract_requests() {
    let dir = TmpDir::new("ctlclients");
    let sock = dir.0.join("ctl.sock");
    let s = sock.to_string_lossy().into_owned();
    let server = fake_daemon(&sock, 7, |req| match req["cmd"].as_str() {
        Some("metrics") => {
            serde_json::json!({"ok": true, "text": "# TYPE sipveil_up gauge\nsipveil_up 1\n"})
        }
        Some("registrations") => serde_json::json!({"ok": true, "bindings": [
            {"aor": "alice@auth.lab", "contact": "<sip:alice@198.18.1.2:5060>", "expires": 600}]}),
        Some("hlog-stop") => serde_json::json!({"ok": false, "error": "no log running"}),
        _ => serde_json::json!({"ok": true}),
    });
    let run = |args: &[&str]| sipveil_with_input(args, "");
    let (code, out, err) = run(&["reload", "--socket", &s]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), r#"{"ok":true}"#);
    let (code, out, err) = run(&["registrations", "--socket", &s]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("aor=alice@auth.lab") && out.contains("expires=600"),
        "{out}"
    );
    assert!(out.contains("1 binding(s)"), "{out}");
    let (code, out, _) = run(&[
        "registrations",
        "--aor",
        "alice@auth.lab",
        "--json",
        "--socket",
        &s,
    ]);
    assert_eq!(code, Some(0));
    let answer: Value = serde_json::from_str(out.trim()).expect("--json prints the answer");
    assert_eq!(answer["bindings"][0]["aor"], "alice@auth.lab");
    let (code, _, err) = run(&[
        "hlog",
        "start",
        "rel.hlog",
        "--interval-ms",
        "250",
        "--socket",
        &s,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = run(&["hlog", "stop", "--socket", &s]);
    assert_eq!(code, Some(1), "ok:false answer exits 1: {out}");
    let (code, out, err) = run(&["metrics", "--socket", &s]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "# TYPE sipveil_up gauge\nsipveil_up 1\n");
    let (code, _, err) = run(&["reload", "--socket", &s]);
    assert_eq!(code, Some(0), "{err}");
    let got = server.join().expect("fake daemon");
    assert_eq!(got[0], serde_json::json!({"cmd": "reload"}));
    assert_eq!(got[1], serde_json::json!({"cmd": "registrations"}));
    assert_eq!(
        got[2],
        serde_json::json!({"cmd": "registrations", "aor": "alice@auth.lab"})
    );
    assert_eq!(got[3]["cmd"], "hlog-start");
    assert_eq!(got[3]["interval_ms"], 250);
    let path = got[3]["path"].as_str().expect("path");
    assert!(
        std::path::Path::new(path).is_absolute() && path.ends_with("rel.hlog"),
        "the client sends an absolute path: {path}"
    );
    assert_eq!(got[4], serde_json::json!({"cmd": "hlog-stop"}));
    assert_eq!(got[5], serde_json::json!({"cmd": "metrics"}));
    // No daemon: exit 1 naming the socket.
    drop(got);
    let (code, _, err) = run(&["reload", "--socket", "/nonexistent/ctl.sock"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/ctl.sock"), "{err}");
}
