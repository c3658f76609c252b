//! Throwaway network namespaces for the integration tests (198.18.0.0/15 only). Every namespace is
//! deleted on drop. Also: starting a daemon without XDP and running its control commands.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the helpers"
)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Fails the test with a clear message unless we are root.
pub fn require_root() {
    assert!(
        sipveil_edge::sys::is_root(),
        "this test needs root (network namespaces, XDP, bpffs): run it as root"
    );
}

/// Runs `ip ARGS`, failing the test with the command and its stderr.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace created by the test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("svt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `f` on a thread that entered this namespace (setns moves only the calling thread;
    /// threads it starts inherit the namespace).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        std::thread::spawn(move || {
            sipveil_edge::sys::enter_netns(&name).expect("entering the test namespace");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

/// Starts `f` on a thread inside namespace `name`.
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        sipveil_edge::sys::enter_netns(&name).expect("entering the test namespace");
        f()
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`) with addresses (CIDR), both up.
pub fn veth(ns_a: &Netns, a: &str, addr_a: &str, ns_b: &Netns, b: &str, addr_b: &str) {
    ip(&[
        "-n", &ns_a.name, "link", "add", a, "type", "veth", "peer", "name", b, "netns", &ns_b.name,
    ]);
    ip(&["-n", &ns_a.name, "addr", "add", addr_a, "dev", a]);
    ip(&["-n", &ns_b.name, "addr", "add", addr_b, "dev", b]);
    ip(&["-n", &ns_a.name, "link", "set", a, "up"]);
    ip(&["-n", &ns_b.name, "link", "set", b, "up"]);
}

/// A UDP socket bound to `addr` with a receive timeout.
pub fn udp(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    s
}

/// Receives one datagram or None on timeout.
pub fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

/// A minimal RTP packet with sequence number `seq`.
pub fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xab; 160]);
    p
}

/// `sipveil run --no-xdp --config CONFIG`, returned once it printed `{"ready": true, ...}`.
pub fn start_no_xdp(config: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(["run", "--no-xdp", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sipveil");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(ready["ready"], true, "{line}");
    child
}

/// `sipveil ARGS --socket SOCKET`: its JSON answer.
pub fn control(socket: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sipveil"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("sipveil command");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {text:?}"))
}
