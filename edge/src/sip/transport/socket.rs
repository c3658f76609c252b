//! Binding the pool's sockets: one per worker and address, `SO_REUSEPORT`.
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Proto, TransportConfig};
use crate::uring_util::{parse_sockaddr, write_sockaddr};

/// One worker's sockets.
pub(super) struct WorkerSockets {
    /// UDP sockets with their bound addresses.
    pub udp: Vec<(SocketAddr, OwnedFd)>,
    /// TCP and TLS listeners.
    pub listeners: Vec<(Proto, SocketAddr, OwnedFd)>,
}

pub(super) struct Bound {
    pub per_worker: Vec<WorkerSockets>,
    pub addrs: Vec<(Proto, SocketAddr)>,
}

/// Requested UDP receive buffer.
const UDP_RCVBUF: libc::c_int = 4 << 20;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The address a socket is bound to.
pub(super) fn local_addr(fd: libc::c_int) -> io::Result<SocketAddr> {
    // SAFETY: POD, zero is valid.
    let mut ss: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `ss` has room for `len` bytes; the kernel writes at most that.
    cvt(unsafe { libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_in6).cast(), &mut len) })?;
    sockaddr_of(&ss, len)
}

/// The address of a connected socket's peer.
pub(super) fn peer_addr(fd: libc::c_int) -> io::Result<SocketAddr> {
    // SAFETY: POD, zero is valid.
    let mut ss: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `ss` has room for `len` bytes; the kernel writes at most that.
    cvt(unsafe { libc::getpeername(fd, (&mut ss as *mut libc::sockaddr_in6).cast(), &mut len) })?;
    sockaddr_of(&ss, len)
}

fn sockaddr_of(ss: &libc::sockaddr_in6, len: libc::socklen_t) -> io::Result<SocketAddr> {
    // SAFETY: viewing a POD struct as bytes, within its size.
    let raw = unsafe {
        std::slice::from_raw_parts(
            (ss as *const libc::sockaddr_in6).cast::<u8>(),
            size_of::<libc::sockaddr_in6>(),
        )
    };
    let len = (len as usize).min(raw.len());
    parse_sockaddr(&raw[..len])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))
}

fn bind_one(addr: SocketAddr, stream: bool) -> io::Result<(SocketAddr, OwnedFd)> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let ty = if stream {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    // SAFETY: plain syscall; on success we own the fd.
    let raw = cvt(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if addr.is_ipv6() {
        set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    if stream {
        // Accepted connections inherit it: SIP messages go out whole, without Nagle delays.
        set_int(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    } else {
        // Room for bursts between two loop iterations: beyond net.core.rmem_max when the daemon
        // may (CAP_NET_ADMIN: SO_RCVBUFFORCE), else capped by it (debug log: the size obtained).
        if set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, UDP_RCVBUF).is_err() {
            let _ = set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, UDP_RCVBUF);
            tracing::debug!(%addr, "SO_RCVBUFFORCE refused; SO_RCVBUF is capped by net.core.rmem_max");
        }
    }
    // SAFETY: POD, zero is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let len = write_sockaddr(addr, &mut sa);
    // SAFETY: `sa` holds a valid address of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            len,
        )
    })?;
    if stream {
        // SAFETY: plain syscall on our fd.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    }
    let bound = local_addr(fd.as_raw_fd())?;
    Ok((bound, fd))
}

/// Binds every configured address `n` times. Errors name the address.
pub(super) fn bind_all(cfg: &TransportConfig, n: usize) -> io::Result<Bound> {
    let mut per_worker: Vec<WorkerSockets> = (0..n)
        .map(|_| WorkerSockets {
            udp: Vec::new(),
            listeners: Vec::new(),
        })
        .collect();
    let mut addrs = Vec::new();
    let all = cfg
        .udp
        .iter()
        .map(|a| (Proto::Udp, *a))
        .chain(cfg.tcp.iter().map(|a| (Proto::Tcp, *a)))
        .chain(cfg.tls.iter().map(|a| (Proto::Tls, *a)));
    for (proto, want) in all {
        let stream = proto != Proto::Udp;
        let mut target = want;
        for ws in per_worker.iter_mut() {
            let (bound, fd) = bind_one(target, stream).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "binding SIP {} socket on {target}: {e}",
                        super::proto_label(proto)
                    ),
                )
            })?;
            // Port 0: the first socket picks the port, the others join it.
            target = bound;
            if stream {
                ws.listeners.push((proto, bound, fd));
            } else {
                ws.udp.push((bound, fd));
            }
        }
        addrs.push((proto, target));
    }
    Ok(Bound { per_worker, addrs })
}
