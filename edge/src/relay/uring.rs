//! One relay worker: an io_uring with a provided buffer ring, multishot `recvmsg` per socket and
//! batched `sendmsg`.
use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use io_uring::types::{Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use sipveil_abi::FlowKey;

use super::{Command, Shared, Wake};
use crate::media::counters::UserCounter;
use crate::media::datapath::{Verdict, decide};
use crate::uring_util::{BufRing, parse_sockaddr, write_sockaddr};

/// Buffers in the provided ring (power of two) and their size (an RTP packet plus the
/// `io_uring_recvmsg_out` header and the source address).
const BUFFERS: u16 = 1024;
const BUF_SIZE: usize = 2048;
const BGID: u16 = 0;
const SQ_ENTRIES: u32 = 2048;

const KIND_SHIFT: u32 = 56;
const K_WAKE: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_CANCEL: u64 = 4;

fn ud(kind: u64, idx: usize) -> u64 {
    (kind << KIND_SHIFT) | idx as u64
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum SockState {
    Armed,
    NeedsArm,
    Closing,
}

struct SockSlot {
    key: FlowKey,
    sock: Arc<UdpSocket>,
    state: SockState,
}

/// A pending send: its msghdr, iovec and destination must stay put until the completion.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in6,
    /// The receive buffer the payload is sent from; `None` when it is sent from `scratch`.
    bid: Option<u16>,
    /// The scrubbed RTCP of this send (capacity kept between uses).
    scratch: Vec<u8>,
    ip_len: u64,
    rtcp: bool,
    sock: Option<Arc<UdpSocket>>,
}

struct Worker {
    id: usize,
    shared: Arc<Shared>,
    // Field order matters: the ring is dropped before the buffers it points into.
    ring: IoUring,
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    socks: Vec<Option<SockSlot>>,
    by_key: HashMap<FlowKey, usize>,
    sends: Box<[SendSlot]>,
    free_sends: Vec<usize>,
    wake_fd: Arc<Wake>,
    wake_buf: Box<u64>,
    held: usize,
    stop: bool,
}

pub(crate) fn run(
    id: usize,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    wake_fd: Arc<Wake>,
    ready: Sender<io::Result<()>>,
) {
    let mut w = match Worker::new(id, shared, wake_fd) {
        Ok(w) => {
            let _ = ready.send(Ok(()));
            w
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if let Err(e) = w.event_loop(&rx) {
        tracing::error!(worker = id, "relay worker stopped: {e}");
    }
    w.drain();
}

impl Worker {
    fn new(id: usize, shared: Arc<Shared>, wake_fd: Arc<Wake>) -> io::Result<Worker> {
        let ring: IoUring = IoUring::builder().build(SQ_ENTRIES)?;
        let bufs = BufRing::new(BUFFERS, BUF_SIZE)?;
        bufs.register(&ring, BGID)?;
        // SAFETY: msghdr is POD; zero is valid (no name/control pointers: multishot recvmsg only
        // reads the lengths).
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let sends: Vec<SendSlot> = (0..usize::from(BUFFERS))
            .map(|_| SendSlot {
                // SAFETY: POD, all-zero is valid.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                // SAFETY: POD, all-zero is valid.
                addr: unsafe { std::mem::zeroed() },
                bid: None,
                scratch: Vec::new(),
                ip_len: 0,
                rtcp: false,
                sock: None,
            })
            .collect();
        let mut w = Worker {
            id,
            shared,
            ring,
            bufs,
            recv_hdr: hdr,
            socks: Vec::new(),
            by_key: HashMap::new(),
            sends: sends.into_boxed_slice(),
            free_sends: (0..usize::from(BUFFERS)).rev().collect(),
            wake_fd,
            wake_buf: Box::new(0),
            held: 0,
            stop: false,
        };
        w.arm_wake()?;
        Ok(w)
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry we push points to memory owned by `self` (msghdr, buffers, send
            // slots, wake buffer) that stays valid and unmoved until its completion is reaped.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let e = opcode::Read::new(
            Fd(self.wake_fd.fd.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(ud(K_WAKE, 0));
        self.push(e)
    }

    fn arm_recv(&mut self, idx: usize) -> io::Result<()> {
        let Some(slot) = self.socks.get_mut(idx).and_then(Option::as_mut) else {
            return Ok(());
        };
        slot.state = SockState::Armed;
        let fd = slot.sock.as_raw_fd();
        let e = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_hdr as *const libc::msghdr, BGID)
            .build()
            .user_data(ud(K_RECV, idx));
        self.push(e)
    }

    fn recycle(&mut self, bid: u16) {
        self.bufs.push(bid);
        self.held = self.held.saturating_sub(1);
    }

    fn event_loop(&mut self, rx: &Receiver<Command>) -> io::Result<()> {
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(usize::from(BUFFERS));
        while !self.stop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let now = crate::sys::monotonic_ns();
            for &(user_data, res, flags) in &cqes {
                let idx = (user_data & ((1 << KIND_SHIFT) - 1)) as usize;
                match user_data >> KIND_SHIFT {
                    K_WAKE => {
                        // Cleared before draining: a command queued from here on wakes again.
                        self.wake_fd.pending.store(false, Ordering::SeqCst);
                        self.commands(rx)?;
                        if !self.stop {
                            self.arm_wake()?;
                        }
                    }
                    K_RECV => self.on_recv(idx, res, flags, now)?,
                    K_SEND => self.on_send(idx, res),
                    _ => {}
                }
            }
            self.bufs.publish();
            if self.held < usize::from(BUFFERS) {
                let waiting: Vec<usize> = self
                    .socks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        s.as_ref()
                            .filter(|s| s.state == SockState::NeedsArm)
                            .map(|_| i)
                    })
                    .collect();
                for i in waiting {
                    self.arm_recv(i)?;
                }
            }
        }
        Ok(())
    }

    fn commands(&mut self, rx: &Receiver<Command>) -> io::Result<()> {
        loop {
            match rx.try_recv() {
                Ok(Command::Add(key, sock)) => {
                    if let Some(old) = self.by_key.get(&key).copied() {
                        self.close_slot(old)?;
                    }
                    let idx = match self.socks.iter().position(Option::is_none) {
                        Some(i) => i,
                        None => {
                            self.socks.push(None);
                            self.socks.len() - 1
                        }
                    };
                    self.socks[idx] = Some(SockSlot {
                        key,
                        sock,
                        state: SockState::NeedsArm,
                    });
                    self.by_key.insert(key, idx);
                    self.arm_recv(idx)?;
                }
                Ok(Command::Remove(key)) => {
                    if let Some(idx) = self.by_key.get(&key).copied() {
                        self.close_slot(idx)?;
                    }
                }
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    return Ok(());
                }
                Err(TryRecvError::Empty) => return Ok(()),
            }
        }
    }

    /// Stops receiving on a slot; the slot is freed when its multishot has ended.
    fn close_slot(&mut self, idx: usize) -> io::Result<()> {
        let Some(slot) = self.socks.get_mut(idx).and_then(Option::as_mut) else {
            return Ok(());
        };
        self.by_key.remove(&slot.key);
        match slot.state {
            SockState::Armed => {
                slot.state = SockState::Closing;
                let e = opcode::AsyncCancel::new(ud(K_RECV, idx))
                    .build()
                    .user_data(ud(K_CANCEL, idx));
                self.push(e)
            }
            SockState::NeedsArm => {
                self.socks[idx] = None;
                Ok(())
            }
            SockState::Closing => Ok(()),
        }
    }

    fn on_recv(&mut self, idx: usize, res: i32, flags: u32, now: u64) -> io::Result<()> {
        let more = cqueue::more(flags);
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.held += 1;
            let keep = if res > 0 {
                self.packet(idx, bid, res as usize, now)?
            } else {
                false
            };
            if !keep {
                self.recycle(bid);
            }
        } else if res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED {
            tracing::debug!(
                worker = self.id,
                "recvmsg: {}",
                io::Error::from_raw_os_error(-res)
            );
        }
        if !more {
            let Some(slot) = self.socks.get_mut(idx).and_then(Option::as_mut) else {
                return Ok(());
            };
            if slot.state == SockState::Closing {
                self.socks[idx] = None;
            } else {
                // Re-armed after this batch, once buffers are back in the ring.
                slot.state = SockState::NeedsArm;
            }
        }
        Ok(())
    }

    /// Handles one datagram in buffer `bid`. Returns true when a send now owns the buffer.
    fn packet(&mut self, idx: usize, bid: u16, len: usize, now: u64) -> io::Result<bool> {
        // Borrowed, not cloned: no reference-count traffic per packet.
        let counters = &*self.shared.counters;
        let Some(local) = self
            .socks
            .get(idx)
            .and_then(Option::as_ref)
            .filter(|s| s.state != SockState::Closing)
            .map(|s| s.key)
        else {
            return Ok(false);
        };
        let Some(buf) = self.bufs.buffer(bid, len) else {
            return Ok(false);
        };
        let Ok(out) = RecvMsgOut::parse(buf, &self.recv_hdr) else {
            counters.inc(UserCounter::TruncatedDrop);
            return Ok(false);
        };
        if out.is_payload_truncated() {
            counters.inc(UserCounter::Rx);
            counters.inc(UserCounter::TruncatedDrop);
            return Ok(false);
        }
        let Some(src) = parse_sockaddr(out.name_data()) else {
            counters.inc(UserCounter::Rx);
            counters.inc(UserCounter::NoFlowDrop);
            return Ok(false);
        };
        let payload = out.payload_data();
        let verdict = decide(&*self.shared.table, counters, &local, src, payload, now);
        let Verdict::Relay {
            from,
            dst,
            rtcp,
            ip_len,
        } = verdict
        else {
            return Ok(false);
        };
        let sock = self
            .shared
            .sockets
            .read()
            .ok()
            .and_then(|s| s.get(&from).cloned());
        let (Some(sock), Some(si)) = (sock, self.free_sends.pop()) else {
            counters.inc(UserCounter::SendError);
            return Ok(false);
        };
        let fd = sock.as_raw_fd();
        let slot = &mut self.sends[si];
        let (base, plen, ip_len, bid) = if rtcp {
            // Rewritten into the slot's own buffer: the receive buffer goes back at once. The
            // send's iovec points into `scratch`, which is neither touched nor reallocated until
            // `on_send` returns the slot to `free_sends`.
            let side = local;
            let out = &mut slot.scratch;
            out.reserve(crate::media::rtcp::max_output_len(payload.len()));
            match self.shared.scrubber.scrub(&side, payload, out) {
                Ok(r) => {
                    counters.inc(UserCounter::RtcpScrubbed);
                    counters.add(UserCounter::RtcpSdesItems, u64::from(r.sdes_items));
                    if r.stripped() {
                        counters.inc(UserCounter::RtcpStripped);
                    }
                }
                Err(e) => {
                    tracing::trace!("RTCP dropped: {e}");
                    counters.inc(UserCounter::RtcpDropped);
                    self.free_sends.push(si);
                    return Ok(false);
                }
            }
            let header = ip_len - payload.len() as u64;
            (out.as_ptr(), out.len(), header + out.len() as u64, None)
        } else {
            (payload.as_ptr(), payload.len(), ip_len, Some(bid))
        };
        slot.iov = libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: plen,
        };
        let namelen = write_sockaddr(dst, &mut slot.addr);
        // SAFETY: POD, all-zero is valid; the pointers set below point into this slot, which lives
        // in a boxed slice that never moves while the worker exists.
        slot.hdr = unsafe { std::mem::zeroed() };
        slot.hdr.msg_name = (&mut slot.addr as *mut libc::sockaddr_in6).cast();
        slot.hdr.msg_namelen = namelen;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.bid = bid;
        slot.ip_len = ip_len;
        slot.rtcp = rtcp;
        slot.sock = Some(sock);
        let hdr_ptr = &slot.hdr as *const libc::msghdr;
        let e = opcode::SendMsg::new(Fd(fd), hdr_ptr)
            .build()
            .user_data(ud(K_SEND, si));
        let owns_buffer = slot.bid.is_some();
        self.push(e)?;
        Ok(owns_buffer)
    }

    fn on_send(&mut self, si: usize, res: i32) {
        let Some(slot) = self.sends.get_mut(si) else {
            return;
        };
        let (bid, ip_len, rtcp) = (slot.bid, slot.ip_len, slot.rtcp);
        slot.sock = None;
        let c = &self.shared.counters;
        if res < 0 {
            c.inc(UserCounter::SendError);
            tracing::debug!("sendmsg: {}", io::Error::from_raw_os_error(-res));
        } else {
            c.inc(UserCounter::Relayed);
            c.add(UserCounter::RelayedBytes, ip_len);
            if rtcp {
                c.inc(UserCounter::RelayedRtcp);
            }
        }
        self.free_sends.push(si);
        if let Some(bid) = bid {
            self.recycle(bid);
        }
    }

    /// Cancels every receive and waits (bounded) for in-flight sends, so no request refers to the
    /// buffers when they are freed. If the kernel does not answer in time, the buffers are leaked
    /// rather than freed under it.
    fn drain(mut self) {
        let armed: Vec<usize> = (0..self.socks.len()).collect();
        for idx in armed {
            let _ = self.close_slot(idx);
        }
        let deadline = crate::sys::monotonic_ns().saturating_add(1_000_000_000);
        let ts = Timespec::new().nsec(100_000_000);
        loop {
            let busy =
                self.socks.iter().any(Option::is_some) || self.free_sends.len() < self.sends.len();
            if !busy {
                break;
            }
            if crate::sys::monotonic_ns() > deadline {
                tracing::warn!(
                    worker = self.id,
                    "relay worker did not drain; leaking its buffers"
                );
                std::mem::forget(self);
                return;
            }
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let cqes: Vec<(u64, i32, u32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags()))
                .collect();
            for (user_data, res, flags) in cqes {
                let idx = (user_data & ((1 << KIND_SHIFT) - 1)) as usize;
                match user_data >> KIND_SHIFT {
                    K_RECV => {
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            self.held += 1;
                            self.recycle(bid);
                        }
                        if !cqueue::more(flags)
                            && let Some(s) = self.socks.get_mut(idx)
                        {
                            *s = None;
                        }
                    }
                    K_SEND => self.on_send(idx, res),
                    _ => {}
                }
            }
        }
    }
}
