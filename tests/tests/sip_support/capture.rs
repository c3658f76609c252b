//! Packet capture in a lab namespace for the leak audit: `dumpcap` (Wireshark's capture
//! engine, Debian package tshark/wireshark-common) on a peer's interface, written as classic
//! pcap, read back here into IPv4 frames split by direction.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One captured IPv4 packet.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol (17 UDP, 6 TCP).
    pub proto: u8,
    /// The whole frame as captured (Ethernet header included).
    pub bytes: Vec<u8>,
}

/// A running `dumpcap` in `ns` on `iface`; stopped (SIGTERM) by [`Capture::finish`] or on drop.
pub struct Capture {
    child: Option<Child>,
    pub file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts dumpcap and waits (up to 5 s) until it reports that it is capturing.
    pub fn start(ns: &str, iface: &str, file: &Path) -> Result<Capture, String> {
        let log = file.with_extension("dumpcap.log");
        let _ = std::fs::remove_file(file);
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "dumpcap", "-q", "-P", "-i", iface, "-w",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run dumpcap in {ns}: {e}"))?;
        let capture = Capture {
            child: Some(child),
            file: file.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&capture.log).unwrap_or_default();
            if text.contains("Capturing on") {
                // dumpcap says so just before its first read; give the socket a moment.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(capture);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dumpcap in {ns} on {iface} did not start within 5 s: {text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops dumpcap (SIGTERM, it flushes) and reads the frames it wrote.
    pub fn finish(mut self) -> Result<Vec<Frame>, String> {
        std::thread::sleep(Duration::from_millis(300));
        self.stop();
        let bytes =
            std::fs::read(&self.file).map_err(|e| format!("{}: {e}", self.file.display()))?;
        parse_pcap(&bytes)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the pid of our own child (`ip netns exec` execs dumpcap in
                // place, so this is dumpcap), which has not been reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

fn u32_at(bytes: &[u8], at: usize, big: bool) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(word)
    } else {
        u32::from_le_bytes(word)
    })
}

/// The IPv4 frames of a classic pcap file with Ethernet link type.
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    let magic = u32_at(bytes, 0, false).ok_or("pcap file shorter than its header")?;
    let big = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => false,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => true,
        other => return Err(format!("not a classic pcap file (magic {other:#x})")),
    };
    let link = u32_at(bytes, 20, big).ok_or("short pcap header")?;
    if link != 1 {
        return Err(format!("pcap link type {link}, expected Ethernet (1)"));
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32_at(bytes, at + 8, big).ok_or("short record header")? as usize;
        let start = at + 16;
        let data = bytes
            .get(start..start + caplen)
            .ok_or("truncated pcap record")?;
        at = start + caplen;
        // Ethernet II, IPv4 only.
        if data.len() < 34 || data[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &data[14..];
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        frames.push(Frame {
            src,
            dst,
            proto: ip[9],
            bytes: data.to_vec(),
        });
    }
    Ok(frames)
}
