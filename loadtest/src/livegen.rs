//! A packet generator on BPF_PROG_TEST_RUN with live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`): the
//! kernel runs an XDP program (`sv_gen`, which returns XDP_TX) on copies of one frame and transmits
//! each result out of the context's ingress interface. One core reaches a few Mpps here, far more
//! than a userspace sender.
//!
//! The program is loaded and kept alive by `sipveil lab-xdp attach --program sv_gen` (attached to a
//! dummy interface in the sender's namespace, link pinned); this module finds the program through
//! the pinned link and drives it with raw `bpf(2)` calls, so it needs neither aya nor the embedded
//! object. The calling thread must be in the namespace of the egress interface (setns).

use std::ffi::CString;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::rtp::{self, PACKET_LEN, Packet, Probe, ProbeKind};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Frames per BPF_PROG_TEST_RUN call by default, and the kernel batch size: one batch per call
/// (see [`send_paced`]).
pub const LIVE_CHUNK: u64 = 64;

/// Frame length of one generated packet: Ethernet + IPv4 + UDP + the sv-rtp packet.
pub const FRAME_LEN: usize = 14 + 20 + 8 + PACKET_LEN;

/// `union bpf_attr` is 120+ bytes in recent kernels; a zeroed buffer of this size with the
/// fields of one command filled in is what `bpf(2)` expects.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, zero-padded bpf_attr buffer for the whole call and its
    // size is passed; the kernel reads/writes only within it (and through pointers we set to
    // buffers that outlive the call).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The program behind a pinned BPF link (e.g. `/sys/fs/bpf/sipveil-lab/sv-a-svgen0/link`).
pub fn prog_fd_from_pinned_link(path: &str) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let cpath = CString::new(path).map_err(|_| io::Error::other("NUL in path"))?;
    let mut a = Attr::new();
    a.put_u64(0, cpath.as_ptr() as u64); // pathname
    let link = owned(bpf(BPF_OBJ_GET, &mut a)?)?;
    let mut info = [0u8; 256];
    let mut a = Attr::new();
    a.put_u32(0, u32::try_from(link.as_raw_fd()).unwrap_or(0)); // bpf_fd
    a.put_u32(4, info.len() as u32); // info_len
    a.put_u64(8, info.as_mut_ptr() as u64); // info
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; ... }
    let prog_id = u32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
    if prog_id == 0 {
        return Err(io::Error::other(format!("{path}: link has no program")));
    }
    let mut a = Attr::new();
    a.put_u32(0, prog_id);
    owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut a)?)
}

/// Runs `prog` on `frame` `repeat` times as live frames leaving `ifindex` (in the calling thread's
/// network namespace), `batch` frames per kernel batch.
pub fn run_live(
    prog: &OwnedFd,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    batch: u32,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u32; 6];
    ctx[1] = u32::try_from(frame.len()).map_err(|_| io::Error::other("frame too long"))?;
    ctx[3] = ifindex;
    let mut a = Attr::new();
    a.put_u32(0, u32::try_from(prog.as_raw_fd()).unwrap_or(0)); // prog_fd
    a.put_u32(8, ctx[1]); // data_size_in
    a.put_u64(16, frame.as_ptr() as u64); // data_in
    a.put_u32(32, repeat.max(1)); // repeat
    a.put_u32(40, std::mem::size_of_val(&ctx) as u32); // ctx_size_in
    a.put_u64(48, ctx.as_ptr() as u64); // ctx_in
    a.put_u32(64, BPF_F_TEST_XDP_LIVE_FRAMES); // flags
    a.put_u32(72, batch); // batch_size
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    let _ = a.get_u32(4); // retval: not meaningful for live frames
    Ok(())
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn csum_add(bytes: &[u8], mut sum: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Builds the Ethernet/IPv4/UDP frame of one sv-rtp media packet from `src` to `dst`.
#[must_use]
pub fn build_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    tag: u32,
    stream: u32,
) -> Vec<u8> {
    let mut payload = [0u8; PACKET_LEN];
    rtp::encode(
        &Packet {
            header: rtp::header_for(tag, stream, 0),
            probe: Probe {
                kind: ProbeKind::Media,
                tag,
                stream,
                value: 0,
                send_ns: 0,
            },
        },
        &mut payload,
    );
    build_udp_frame(src_mac, dst_mac, src, dst, &payload)
}

/// Builds an Ethernet/IPv4/UDP frame carrying `payload` from `src` to `dst` (checksums filled
/// in; e.g. one SIP request for a flood with live frames).
#[must_use]
pub fn build_udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 20 + 8 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = csum_fold(csum_add(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    // pseudo header + header + payload
    let mut sum = csum_add(&src.ip().octets(), 0);
    sum = csum_add(&dst.ip().octets(), sum);
    sum += 17 + u32::from(udp_len);
    sum = csum_add(&udp, sum);
    sum = csum_add(payload, sum);
    let mut c = csum_fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f.extend_from_slice(payload);
    f
}

/// Sends `total` frames at `rate` pps (None: flat out) for at most `limit`, at most `chunk` frames
/// per BPF_PROG_TEST_RUN call ([`LIVE_CHUNK`] is right; larger values exist to reproduce the
/// page-reuse loss described below). Returns the frames handed to the kernel.
pub fn send_paced(
    prog: &OwnedFd,
    frame: &[u8],
    ifindex: u32,
    total: u64,
    rate: Option<f64>,
    limit: Duration,
    chunk: u64,
) -> io::Result<u64> {
    send_paced_frames(prog, &[frame], ifindex, total, rate, limit, chunk)
}

/// [`send_paced`] with several frames: each BPF_PROG_TEST_RUN call sends copies of the next
/// frame of `frames` in turn (e.g. REGISTERs for different users), so the flood is as varied as
/// `frames` at no cost per packet. Fails when `frames` is empty.
pub fn send_paced_frames<F: AsRef<[u8]>>(
    prog: &OwnedFd,
    frames: &[F],
    ifindex: u32,
    total: u64,
    rate: Option<f64>,
    limit: Duration,
    chunk: u64,
) -> io::Result<u64> {
    send_paced_frames_ticked(
        prog,
        frames,
        ifindex,
        total,
        rate,
        limit,
        chunk,
        DEFAULT_PACING_TICK,
    )
    .map(|s| s.sent)
}

/// How long [`send_paced_frames`] sleeps when it is ahead of its rate.
pub const DEFAULT_PACING_TICK: Duration = Duration::from_micros(200);

/// What [`send_paced_frames_ticked`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacedSent {
    /// Frames sent.
    pub sent: u64,
    /// BPF_PROG_TEST_RUN calls that sent them: each call's frames reach the receiver as one
    /// back-to-back burst (the receiver's softirq runs when the call re-enables bottom halves),
    /// so `calls` per second is the flood's burst rate.
    pub calls: u64,
}

/// [`send_paced_frames`] sleeping `tick` (instead of 200 µs) whenever it is ahead of its rate —
/// the pacing granularity: at a given rate a longer tick sends fewer, larger bursts — and
/// counting its calls.
#[expect(
    clippy::too_many_arguments,
    reason = "the paced sender's parameters plus the tick; a struct would only rename them"
)]
pub fn send_paced_frames_ticked<F: AsRef<[u8]>>(
    prog: &OwnedFd,
    frames: &[F],
    ifindex: u32,
    total: u64,
    rate: Option<f64>,
    limit: Duration,
    chunk: u64,
    tick: Duration,
) -> io::Result<PacedSent> {
    if frames.is_empty() {
        return Err(io::Error::other("no frame to send"));
    }
    /// Consecutive ENOSPC/ENOMEM answers tolerated (5 ms apart) before giving up.
    const MAX_REFUSED: u32 = 200;
    let mut next = frames.iter().cycle();
    let mut refused = 0u32;
    let max_chunk = chunk.max(1);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut calls: u64 = 0;
    while sent < total && start.elapsed() < limit {
        let due = match rate {
            Some(r) => ((start.elapsed().as_secs_f64() * r) as u64 + 1).min(total),
            None => total,
        };
        if due <= sent {
            std::thread::sleep(tick);
            continue;
        }
        // One kernel batch per call: the kernel gives every call its own page pool and, when a
        // frame's page comes back to that pool (after a receiver dropped it), reuses it for a
        // later batch of the same call with only the pointers reset, not the data. A relay that
        // rewrote the frame in place (addresses, ports, MACs) would then get its own output back
        // as input, match no flow and drop it.
        let n = (due - sent).min(max_chunk) as u32;
        let frame = next
            .next()
            .ok_or_else(|| io::Error::other("no frame to send"))?;
        match run_live(prog, frame.as_ref(), ifindex, n, LIVE_CHUNK as u32) {
            Ok(()) => {
                sent += u64::from(n);
                calls += 1;
                refused = 0;
            }
            // Every call registers a page pool (an id from a 16-bit space, released only when
            // the pool's last page comes back from a receiver): under a long flood the kernel
            // can run out for a moment. Wait for pools to drain rather than end the flood.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::ENOMEM))
                    && refused < MAX_REFUSED =>
            {
                refused += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("BPF_PROG_TEST_RUN (live frames, after {sent} frames): {e}"),
                ));
            }
        }
    }
    Ok(PacedSent { sent, calls })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn frame_has_valid_checksums() {
        let f = build_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 30_000),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 20_000),
            7,
            1,
        );
        assert_eq!(f.len(), FRAME_LEN);
        // IPv4 header sums to 0xffff
        assert_eq!(csum_fold(csum_add(&f[14..34], 0)), 0);
        // UDP: pseudo header + segment sums to 0xffff
        let mut sum = csum_add(&f[26..34], 0); // src + dst addresses
        sum += 17 + (f.len() - 34) as u32;
        sum = csum_add(&f[34..], sum);
        assert_eq!(csum_fold(sum), 0);
        let pkt = rtp::decode(&f[42..]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((pkt.probe.tag, pkt.probe.stream), (7, 1));
    }

    #[test]
    fn udp_frame_of_odd_length_payload_has_valid_checksums() {
        let payload = b"OPTIONS sip:x SIP/2.0\r\n\r\n!";
        let f = build_udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 2), 5099),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 5060),
            payload,
        );
        assert_eq!(f.len(), 42 + payload.len());
        assert_eq!(csum_fold(csum_add(&f[14..34], 0)), 0);
        let mut sum = csum_add(&f[26..34], 0);
        sum += 17 + (f.len() - 34) as u32;
        sum = csum_add(&f[34..], sum);
        assert_eq!(csum_fold(sum), 0);
        assert_eq!(&f[42..], payload);
    }
}
