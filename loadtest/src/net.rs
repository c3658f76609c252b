//! Batched UDP I/O (`sendmmsg`/`recvmmsg`) on a std socket. IPv4 only: the lab is IPv4.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::rtp::PACKET_LEN;

/// Receive buffer size: larger than any datagram the lab carries.
pub const RECV_BUF_LEN: usize = 2048;

/// Binds a UDP socket and enlarges its buffers (forced when we are root, so bursts at high rates
/// are not dropped by the generator's own socket).
pub fn bind(addr: SocketAddrV4, buf_bytes: usize) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::V4(addr))?;
    set_buffer(&sock, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, buf_bytes);
    set_buffer(&sock, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, buf_bytes);
    Ok(sock)
}

fn set_buffer(sock: &UdpSocket, forced: libc::c_int, plain: libc::c_int, bytes: usize) {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for opt in [forced, plain] {
        // SAFETY: fd is an open socket owned by `sock`; the option value is a c_int that lives
        // across the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const val).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Sets how long a receive call blocks before returning `WouldBlock`.
pub fn set_recv_timeout(sock: &UdpSocket, t: Duration) -> io::Result<()> {
    sock.set_read_timeout(Some(t.max(Duration::from_micros(1))))
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Reusable `sendmmsg` state for batches of generator packets.
pub struct SendBatch {
    pub packets: Vec<[u8; PACKET_LEN]>,
    pub dsts: Vec<SocketAddrV4>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        Self {
            packets: Vec::with_capacity(n),
            dsts: Vec::with_capacity(n),
            addrs: Vec::with_capacity(n),
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
        }
    }

    pub fn clear(&mut self) {
        self.packets.clear();
        self.dsts.clear();
    }

    /// Sends `packets[i]` to `dsts[i]`; returns how many left (a prefix of the batch).
    pub fn send(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.packets.len().min(self.dsts.len());
        if n == 0 {
            return Ok(0);
        }
        self.addrs.clear();
        self.addrs
            .extend(self.dsts[..n].iter().map(|d| sockaddr_in(*d)));
        self.iovs.clear();
        for p in &mut self.packets[..n] {
            self.iovs.push(libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: PACKET_LEN,
            });
        }
        fill_mmsghdrs(&mut self.hdrs, &mut self.addrs[..n], &mut self.iovs[..n]);
        let vlen = libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX);
        // SAFETY: hdrs[..n] point into addrs/iovs/packets, which are not touched until the call
        // returns; every pointer/length pair describes memory owned by `self`.
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), self.hdrs.as_mut_ptr(), vlen, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(rc).unwrap_or(0))
    }
}

/// One received datagram's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
}

/// Reusable `recvmmsg` state.
pub struct RecvBatch {
    pub bufs: Vec<[u8; RECV_BUF_LEN]>,
    pub meta: Vec<Received>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        let n = n.max(1);
        Self {
            bufs: vec![[0u8; RECV_BUF_LEN]; n],
            meta: Vec::with_capacity(n),
            addrs: Vec::with_capacity(n),
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
        }
    }

    /// Blocks (up to the socket's receive timeout) for at least one datagram, then takes what is
    /// queued up to the batch size. Returns the count; `Ok(0)` on timeout.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.bufs.len();
        // SAFETY: an all-zero sockaddr_in is a valid value.
        self.addrs.resize(n, unsafe { std::mem::zeroed() });
        self.iovs.clear();
        for b in &mut self.bufs {
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: RECV_BUF_LEN,
            });
        }
        fill_mmsghdrs(&mut self.hdrs, &mut self.addrs[..n], &mut self.iovs[..n]);
        let vlen = libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX);
        // SAFETY: every header points at buffers/addresses owned by `self` that outlive the call;
        // MSG_WAITFORONE returns as soon as one datagram is there (after blocking for the first
        // within SO_RCVTIMEO).
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                vlen,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        self.meta.clear();
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = usize::try_from(rc).unwrap_or(0).min(n);
        for i in 0..got {
            let a = self.addrs[i];
            self.meta.push(Received {
                len: (self.hdrs[i].msg_len as usize).min(RECV_BUF_LEN),
                from: SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ),
            });
        }
        Ok(got)
    }
}

/// Rebuilds `hdrs` with one header per (address, iovec) pair: the shared shape of the send and
/// receive batches. The headers point into `addrs` and `iovs`, which must not move or be resized
/// until the syscall that uses them has returned.
fn fill_mmsghdrs(
    hdrs: &mut Vec<libc::mmsghdr>,
    addrs: &mut [libc::sockaddr_in],
    iovs: &mut [libc::iovec],
) {
    hdrs.clear();
    for (addr, iov) in addrs.iter_mut().zip(iovs.iter_mut()) {
        // SAFETY: an all-zero msghdr is valid (null pointers with zero lengths).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (addr as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        hdrs.push(libc::mmsghdr {
            msg_hdr: msg,
            msg_len: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let rx = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20)
            .unwrap_or_else(|e| panic!("bind: {e}"));
        set_recv_timeout(&rx, Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
        let dst = match rx.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            other => panic!("unexpected local addr {other:?}"),
        };
        let tx = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20)
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let mut sb = SendBatch::with_capacity(8);
        for i in 0..8u8 {
            let mut p = [0u8; PACKET_LEN];
            p[0] = i;
            sb.packets.push(p);
            sb.dsts.push(dst);
        }
        assert_eq!(sb.send(&tx).unwrap_or_else(|e| panic!("{e}")), 8);
        let mut rb = RecvBatch::with_capacity(16);
        let mut got = Vec::new();
        while got.len() < 8 {
            let n = rb.recv(&rx).unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "timed out after {} datagrams", got.len());
            for i in 0..n {
                assert_eq!(rb.meta[i].len, PACKET_LEN);
                got.push(rb.bufs[i][0]);
            }
        }
        assert_eq!(got, (0..8).collect::<Vec<u8>>());
    }
}
