//! io_uring helpers shared by the media relay and the SIP transport pool: the provided buffer
//! ring, socket address conversion for `recvmsg`/`sendmsg`, eventfds.
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// How a ring built by [`single_thread_ring`] runs the kernel's task work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskRun {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1+): completion work
    /// (a multishot receive copying a datagram, a send finishing) waits until the owning
    /// thread asks for completions, instead of interrupting it with an IPI whenever a packet
    /// arrives while it runs.
    Deferred,
    /// `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG` (5.19+): no IPI either, the
    /// work runs at the thread's next kernel entry.
    Cooperative,
    /// The kernel's default (interrupts the thread to run completion work).
    Default,
}

/// An `IoUring` used only by the calling thread (every submission and every wait happens on
/// it): the cheapest task-work mode the kernel accepts, falling back to older modes on older
/// kernels (which answer unknown setup flags with `EINVAL`).
///
/// With [`TaskRun::Deferred`] only the creating thread may submit, and completions appear only
/// after a wait or `submit` with `GETEVENTS` (the `io-uring` crate's `submit_and_wait` and
/// `submit_with_args` with `want > 0`).
pub(crate) fn single_thread_ring(
    sq_entries: u32,
    cq_entries: u32,
) -> io::Result<(IoUring, TaskRun)> {
    let deferred = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq_entries);
    match deferred {
        Ok(ring) => return Ok((ring, TaskRun::Deferred)),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
        Err(_) => {}
    }
    let coop = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(sq_entries);
    match coop {
        Ok(ring) => return Ok((ring, TaskRun::Cooperative)),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
        Err(_) => {}
    }
    let ring = IoUring::builder()
        .setup_cqsize(cq_entries)
        .build(sq_entries)?;
    Ok((ring, TaskRun::Default))
}

/// A provided buffer ring: the ring of `io_uring_buf` entries (page-aligned, mmap'd) and the
/// buffers themselves, `count` buffers of `size` bytes each.
///
/// The owner must drop (or unregister from) the `IoUring` it was registered with before the
/// `BufRing` itself: put the ring before the `BufRing` in struct field order.
pub(crate) struct BufRing {
    ring: *mut BufRingEntry,
    ring_len: usize,
    bufs: Vec<u8>,
    count: u16,
    size: usize,
    tail: u16,
}

// SAFETY: the raw pointer is an exclusively owned anonymous mapping; moving it to another thread
// moves the ownership with it (nothing else holds it but the kernel, which is thread-agnostic).
unsafe impl Send for BufRing {}

impl BufRing {
    /// Maps a ring of `count` entries (a power of two, at most 32768) over buffers of `size` bytes
    /// and queues every buffer. Register it with [`BufRing::register`].
    pub(crate) fn new(count: u16, size: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer ring: {count} buffers of {size} bytes is not a valid shape"),
            ));
        }
        let ring_len = usize::from(count) * size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = BufRing {
            ring: ptr.cast(),
            ring_len,
            bufs: vec![0u8; usize::from(count) * size],
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            r.push(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Registers the ring with `ring` as buffer group `bgid`.
    pub(crate) fn register(&self, ring: &IoUring, bgid: u16) -> io::Result<()> {
        // SAFETY: the ring memory is valid for `count` entries and outlives the registration (the
        // owner drops the IoUring before this BufRing, see the type's docs).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(self.ring as u64, self.count, bgid, 0)
        }
        .map_err(|e| io::Error::new(e.kind(), format!("registering a provided buffer ring: {e}")))
    }

    /// Queues buffer `bid` for the kernel again (visible after `publish`). Out-of-range ids
    /// (which the kernel never hands out) are ignored.
    pub(crate) fn push(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let idx = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * self.size as u64;
        // SAFETY: idx < count, so the entry lies inside the mapping of `ring_len` bytes; the
        // kernel only reads entries between its head and our published tail, and this one is past
        // the published tail.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed buffers visible to the kernel.
    pub(crate) fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's `resv`, inside the mapping; the kernel
        // reads it with acquire semantics, we store with release after writing the entries.
        let tail = unsafe { BufRingEntry::tail(self.ring) } as *const AtomicU16;
        // SAFETY: as above; the pointer is valid and suitably aligned for a u16.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }

    /// The first `len` bytes of buffer `bid` (as the kernel filled it).
    pub(crate) fn buffer(&self, bid: u16, len: usize) -> Option<&[u8]> {
        let start = usize::from(bid) * self.size;
        self.bufs.get(start..start + len.min(self.size))
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the IoUring was dropped before (field
        // order of the owner), so the kernel no longer uses it.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

/// The address in a `sockaddr_in`/`sockaddr_in6` as the kernel wrote it.
pub(crate) fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let o: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        libc::AF_INET6 => {
            let o: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            let ip = Ipv6Addr::from(o);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip, port, 0, scope,
            )))
        }
        _ => None,
    }
}

/// Writes `dst` into `storage`; returns the address length.
pub(crate) fn write_sockaddr(dst: SocketAddr, storage: &mut libc::sockaddr_in6) -> libc::socklen_t {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    *storage = unsafe { std::mem::zeroed() };
    match dst {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in (16 bytes) fits in sockaddr_in6 (28 bytes); both are POD and
            // the destination is valid and writable.
            unsafe {
                std::ptr::write_unaligned(
                    (storage as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            storage.sin6_port = v6.port().to_be();
            storage.sin6_addr.s6_addr = v6.ip().octets();
            storage.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// A non-blocking-free eventfd (reads through the ring, writes with `eventfd_signal`).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned fd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd (wakes whoever has a read queued on it).
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use io_uring::{cqueue, opcode};

    use super::*;

    /// The ring of a SIP worker completes operations submitted on its own thread, whichever
    /// task-work mode the kernel granted (the pool's tests exercise it with real sockets).
    #[test]
    fn single_thread_ring_completes_a_nop() {
        let (mut ring, mode) = match single_thread_ring(8, 16) {
            Ok(r) => r,
            Err(e) => {
                println!("SKIPPED: io_uring is not available here: {e}");
                return;
            }
        };
        println!("task-work mode granted: {mode:?}");
        let nop = opcode::Nop::new().build().user_data(42);
        // SAFETY: a NOP refers to no memory.
        unsafe { ring.submission().push(&nop) }.expect("an empty SQ has room");
        ring.submit_and_wait(1).expect("io_uring_enter");
        let done: Vec<cqueue::Entry> = ring.completion().collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].user_data(), 42);
        assert_eq!(done[0].result(), 0);
    }
}
