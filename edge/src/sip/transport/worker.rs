//! One worker thread: its io_uring, sockets, connections and handler.
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use io_uring::types::{CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use sipveil_sip::{ErrorAnswer, Message};

use super::socket::{WorkerSockets, local_addr, peer_addr};
use super::stream::{After, Conn, IOVS, State};
use super::{FlowId, Handler, Io, PoolHandle, Proto, SendError, Shared};
use crate::uring_util::{BufRing, parse_sockaddr, single_thread_ring, write_sockaddr};

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
/// Buffer groups: datagrams, stream reads.
const BGID_UDP: u16 = 0;
const BGID_STREAM: u16 = 1;
/// Room before the payload in a recvmsg buffer: `io_uring_recvmsg_out` and the source address.
const RECVMSG_HEAD: usize = 16 + 32;
/// Memory for the UDP buffer ring per worker (see the module docs).
const UDP_RING_BYTES: usize = 4 << 20;
const STREAM_BUF: usize = 16 * 1024;
const STREAM_BUFS: u16 = 64;
/// Concurrent UDP sends per worker.
const UDP_SENDS: usize = 4096;
/// How late [`Handler::on_timer`] may run: the worker sleeps until the deadline plus this, and
/// runs the timer at the first loop iteration at or after the deadline.
///
/// Under load a worker wakes for datagrams every millisecond or so anyway; without slack, every
/// transaction timer (one Timer J per REGISTER, 32 s after its answer) cost a wake-up of its own
/// between two datagrams. With it, due timers ride along with the next datagram's wake-up, and
/// an idle worker still runs them at most this late. SIP's timers are multiples of T1 (500 ms),
/// so a few milliseconds late changes nothing on the wire.
pub const TIMER_SLACK: Duration = Duration::from_millis(4);
/// After an answer that ends a connection: how long to wait for the peer's EOF.
const LINGER: Duration = Duration::from_secs(2);

const KIND_SHIFT: u32 = 56;
const K_WAKE: u64 = 1;
const K_UDP_RECV: u64 = 2;
const K_UDP_SEND: u64 = 3;
const K_ACCEPT: u64 = 4;
const K_RECV: u64 = 5;
const K_SEND: u64 = 6;
const K_CANCEL: u64 = 7;

fn ud(kind: u64, v: u64) -> u64 {
    (kind << KIND_SHIFT) | (v & ((1 << KIND_SHIFT) - 1))
}

struct UdpSock {
    addr: SocketAddr,
    fd: OwnedFd,
    armed: bool,
}

struct Listener {
    proto: Proto,
    fd: OwnedFd,
    armed: bool,
    /// After an accept error (EMFILE...): not re-armed before this instant, so a persistent
    /// error does not spin the loop.
    retry_at: Option<Instant>,
}

/// Pause before re-arming an accept that failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A pending UDP send: header, iovec, destination and payload stay put until the completion.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in6,
    payload: Option<Bytes>,
}

/// Everything of a worker but its handler (so the handler can get `&mut Core` through `Io`).
pub(super) struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub now: Instant,
    pub unix_ms: u64,
    pub deadline: Option<Instant>,
    // Field order matters: the ring is dropped before the buffers and slots it points into.
    ring: IoUring,
    udp_bufs: BufRing,
    stream_bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    udp: Vec<UdpSock>,
    listeners: Vec<Listener>,
    conns: HashMap<u64, Conn>,
    sends: Box<[SendSlot]>,
    free_sends: Vec<usize>,
    wake_buf: Box<u64>,
    /// Submitted operations whose last completion has not arrived yet.
    inflight: usize,
    inbox: Vec<(FlowId, Message)>,
    closed: Vec<FlowId>,
    rearm: Vec<u64>,
    wake_pending: bool,
    stopping: bool,
    tag_seed: u64,
    tag_counter: u64,
    messages: u64,
}

pub(super) fn run<H: Handler>(
    id: usize,
    shared: Arc<Shared>,
    socks: WorkerSockets,
    ready: Sender<io::Result<()>>,
    factory: impl FnOnce(PoolHandle) -> H,
    handle: PoolHandle,
) {
    let mut core = match Core::new(id, shared, socks) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    reserve_thread_heap(THREAD_HEAP_RESERVE);
    let mut handler = factory(handle);
    let _ = ready.send(Ok(()));
    // A panicking handler must not unwind past the ring while the kernel still refers to our
    // buffers: catch it, drain, then report.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        core.event_loop(&mut handler)
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(worker = id, "SIP worker stopped: {e}"),
        Err(_) => tracing::error!(worker = id, "SIP worker stopped: its handler panicked"),
    }
    core.drain();
}

/// Address space this worker's malloc arena is grown by at start (see [`reserve_thread_heap`]).
const THREAD_HEAP_RESERVE: usize = 16 << 20;

/// Grows the calling thread's malloc arena by `bytes` once, so that the heap growth of a
/// registration burst does not cost a syscall per page.
///
/// glibc serves each worker thread from its own arena, and extends a non-main arena exactly as
/// far as the allocation that ran out needs — one `mprotect` per new page (`M_TOP_PAD` applies
/// only to the main arena). A worker keeps each transaction for 32 s (Timer J) and the registrar
/// keeps every new binding, so under a load of new clients the arena grows all the time: a
/// profile at 2 000 new REGISTER/s showed ~4 % of the workers' time in those `mprotect`s.
/// Allocating and freeing `bytes` in chunks below the mmap threshold moves the arena's
/// high-water mark up front; the freed space stays in the arena (the daemon sets
/// `M_TRIM_THRESHOLD` above it, see `keep_heaps`). The chunks are never written, so the kernel
/// backs only the pages malloc's own headers touch (about one per chunk) until they are used.
fn reserve_thread_heap(bytes: usize) {
    const CHUNK: usize = 64 << 10;
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(bytes / CHUNK);
    for _ in 0..bytes / CHUNK {
        // `black_box`: the compiler may otherwise drop an allocation that is never used.
        chunks.push(std::hint::black_box(Vec::with_capacity(CHUNK)));
    }
    drop(std::hint::black_box(chunks));
}

/// Until when a worker may sleep: the handler's deadline plus [`TIMER_SLACK`], the next idle
/// sweep (when connections exist), the earliest accept retry; `None`: until a completion.
fn wake_at(
    deadline: Option<Instant>,
    sweep: Option<Instant>,
    retries: impl Iterator<Item = Instant>,
) -> Option<Instant> {
    let timer = deadline.map(|d| d + TIMER_SLACK);
    [timer, sweep].into_iter().flatten().chain(retries).min()
}

/// Whether [`Handler::on_timer`] runs in this loop iteration: the deadline itself has passed
/// (the slack only bounds how long the worker sleeps; a wake-up for anything else at or after
/// the deadline runs the timer).
fn timer_due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Core {
    fn new(id: usize, shared: Arc<Shared>, socks: WorkerSockets) -> io::Result<Core> {
        // Built on the worker thread, which alone submits to and waits on it.
        let (ring, taskrun) = single_thread_ring(SQ_ENTRIES, CQ_ENTRIES)?;
        tracing::debug!(worker = id, ?taskrun, "SIP worker ring");
        let max_msg = shared.cfg.limits.max_message_size.min(65_535);
        // Payload room for max+1 bytes: a datagram that does not fit is known to be too large.
        let udp_buf = (RECVMSG_HEAD + max_msg + 1).next_multiple_of(64);
        let count = (UDP_RING_BYTES / udp_buf).clamp(16, 1024);
        let count = 1u16 << (usize::BITS - 1 - count.leading_zeros()); // power of two, rounded down
        let udp_bufs = BufRing::new(count, udp_buf)?;
        udp_bufs.register(&ring, BGID_UDP)?;
        let stream_bufs = BufRing::new(STREAM_BUFS, STREAM_BUF)?;
        stream_bufs.register(&ring, BGID_STREAM)?;
        // SAFETY: msghdr is POD; zero is valid (multishot recvmsg only reads the lengths).
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        hdr.msg_namelen = 32;
        let sends: Vec<SendSlot> = (0..UDP_SENDS)
            .map(|_| SendSlot {
                // SAFETY: POD, all-zero is valid.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                // SAFETY: POD, all-zero is valid.
                addr: unsafe { std::mem::zeroed() },
                payload: None,
            })
            .collect();
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        let mut core = Core {
            id,
            shared,
            now: Instant::now(),
            unix_ms: unix_ms(),
            deadline: None,
            ring,
            udp_bufs,
            stream_bufs,
            recv_hdr: hdr,
            udp: socks
                .udp
                .into_iter()
                .map(|(addr, fd)| UdpSock {
                    addr,
                    fd,
                    armed: false,
                })
                .collect(),
            listeners: socks
                .listeners
                .into_iter()
                .map(|(proto, _, fd)| Listener {
                    proto,
                    fd,
                    armed: false,
                    retry_at: None,
                })
                .collect(),
            conns: HashMap::new(),
            sends: sends.into_boxed_slice(),
            free_sends: (0..UDP_SENDS).rev().collect(),
            wake_buf: Box::new(0),
            inflight: 0,
            inbox: Vec::new(),
            closed: Vec::new(),
            rearm: Vec::new(),
            wake_pending: false,
            stopping: false,
            tag_seed: u64::from_ne_bytes(seed),
            tag_counter: 0,
            messages: 0,
        };
        core.arm_wake()?;
        for i in 0..core.udp.len() {
            core.arm_udp(i)?;
        }
        for i in 0..core.listeners.len() {
            core.arm_accept(i)?;
        }
        core.ring.submit()?;
        Ok(core)
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry we push points to memory owned by `self` (msghdrs, send slots,
            // connection send vectors, queued `Bytes`, the wake buffer) that stays valid and
            // unmoved until its last completion is reaped; `drain` waits for those before the
            // memory is freed (or leaks it).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.inflight += 1;
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let fd = self
            .shared
            .mailboxes
            .get(self.id)
            .map(|m| m.eventfd.as_raw_fd())
            .ok_or_else(|| io::Error::other("no mailbox for this worker"))?;
        let e = opcode::Read::new(Fd(fd), (&mut *self.wake_buf as *mut u64).cast(), 8)
            .build()
            .user_data(ud(K_WAKE, 0));
        self.push(e)
    }

    fn arm_udp(&mut self, i: usize) -> io::Result<()> {
        let Some(s) = self.udp.get_mut(i) else {
            return Ok(());
        };
        s.armed = true;
        let fd = s.fd.as_raw_fd();
        let e = opcode::RecvMsgMulti::new(Fd(fd), &*self.recv_hdr as *const libc::msghdr, BGID_UDP)
            .build()
            .user_data(ud(K_UDP_RECV, i as u64));
        self.push(e)
    }

    fn arm_accept(&mut self, i: usize) -> io::Result<()> {
        let Some(l) = self.listeners.get_mut(i) else {
            return Ok(());
        };
        l.armed = true;
        let e = opcode::AcceptMulti::new(Fd(l.fd.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(K_ACCEPT, i as u64));
        self.push(e)
    }

    fn arm_recv(&mut self, id: u64) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if c.recv_armed || c.state == State::Closing {
            return Ok(());
        }
        c.recv_armed = true;
        let e = opcode::RecvMulti::new(Fd(c.fd.as_raw_fd()), BGID_STREAM)
            .build()
            .user_data(ud(K_RECV, id));
        self.push(e)
    }

    fn to_tag(seed: u64, counter: &mut u64) -> String {
        *counter += 1;
        format!("sv{:x}", seed ^ counter.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn event_loop<H: Handler>(&mut self, handler: &mut H) -> io::Result<()> {
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(CQ_ENTRIES as usize);
        let idle = self.shared.cfg.idle_timeout;
        let tick = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut next_sweep = self.now + tick;
        loop {
            // Wait for completions, at most until the handler's deadline (plus the slack) or the
            // next sweep.
            let sweep = (!self.conns.is_empty()).then_some(next_sweep);
            let retries = self.listeners.iter().filter_map(|l| l.retry_at);
            let wake_at = wake_at(self.deadline, sweep, retries);
            let res = match wake_at {
                Some(at) => {
                    let d = at.saturating_duration_since(Instant::now());
                    let ts = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                    let args = SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
                None => self.ring.submit_and_wait(1),
            };
            match res {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::ETIME)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            self.unix_ms = unix_ms();
            self.messages = 0;
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(user_data, res, flags) in &cqes {
                if !cqueue::more(flags) {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                let v = user_data & ((1 << KIND_SHIFT) - 1);
                match user_data >> KIND_SHIFT {
                    K_WAKE => self.on_wake_fd()?,
                    K_UDP_RECV => self.on_udp_recv(v as usize, res, flags)?,
                    K_UDP_SEND => self.on_udp_send(v as usize, res),
                    K_ACCEPT => self.on_accept(v as usize, res, flags)?,
                    K_RECV => self.on_recv(v, res, flags)?,
                    K_SEND => self.on_send(v, res)?,
                    _ => {}
                }
            }
            if self.stopping {
                return Ok(());
            }
            if self.now >= next_sweep {
                next_sweep = self.now + tick;
                self.sweep(idle)?;
            }
            self.call_handler(handler)?;
            self.udp_bufs.publish();
            self.stream_bufs.publish();
            for i in 0..self.udp.len() {
                if !self.udp[i].armed {
                    self.arm_udp(i)?;
                }
            }
            for i in 0..self.listeners.len() {
                let l = &mut self.listeners[i];
                if !l.armed && l.retry_at.is_none_or(|at| at <= self.now) {
                    l.retry_at = None;
                    self.arm_accept(i)?;
                }
            }
            let rearm = std::mem::take(&mut self.rearm);
            for id in &rearm {
                self.arm_recv(*id)?;
            }
            self.rearm = rearm;
            self.rearm.clear();
            if !cqes.is_empty() || self.messages > 0 {
                self.shared
                    .metrics
                    .worker_loop(self.id, self.messages, self.now.elapsed());
            }
        }
    }

    fn call_handler<H: Handler>(&mut self, handler: &mut H) -> io::Result<()> {
        let mut inbox = std::mem::take(&mut self.inbox);
        self.messages = inbox.len() as u64;
        for (flow, msg) in inbox.drain(..) {
            handler.on_message(&mut Io { core: self }, flow, msg);
        }
        self.inbox = inbox;
        if self.wake_pending {
            self.wake_pending = false;
            handler.on_wake(&mut Io { core: self });
        }
        if timer_due(self.deadline, self.now) {
            self.deadline = None;
            handler.on_timer(&mut Io { core: self });
        }
        // Connections closed by the calls above are reported too.
        loop {
            let closed = std::mem::take(&mut self.closed);
            if closed.is_empty() {
                return Ok(());
            }
            for flow in closed {
                handler.on_closed(&mut Io { core: self }, flow);
            }
        }
    }

    fn on_wake_fd(&mut self) -> io::Result<()> {
        if self.shared.stop.load(Ordering::Acquire) {
            self.stopping = true;
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        if let Some(mb) = shared.mailboxes.get(self.id) {
            mb.notified.store(false, Ordering::SeqCst);
            while let Some((flow, payload)) = mb.queue.pop() {
                // The sender was told Ok; a flow that closed meanwhile is dropped here.
                let _ = self.send_here(&flow, payload);
            }
            if mb.wake.swap(false, Ordering::AcqRel) {
                self.wake_pending = true;
            }
        }
        self.arm_wake()
    }

    /// `Io::send`.
    pub(super) fn send(&mut self, flow: &FlowId, payload: Bytes) -> Result<(), SendError> {
        match flow.proto {
            Proto::Udp => self.send_here(flow, payload),
            Proto::Tcp | Proto::Tls if usize::from(flow.worker) == self.id => {
                self.send_here(flow, payload)
            }
            Proto::Tcp | Proto::Tls => self.shared.hand_off(flow, payload),
        }
    }

    /// Sends on this worker: UDP from its socket on `flow.local`, TCP/TLS on its connection.
    fn send_here(&mut self, flow: &FlowId, payload: Bytes) -> Result<(), SendError> {
        match flow.proto {
            Proto::Udp => self.udp_send(flow.local, flow.peer, payload),
            Proto::Tcp | Proto::Tls => self.stream_send(flow.conn, payload),
        }
    }

    fn udp_send(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let fd = self
            .udp
            .iter()
            .find(|s| s.addr == local)
            .map(|s| s.fd.as_raw_fd())
            .ok_or(SendError::NoSocket)?;
        let si = self.free_sends.pop().ok_or(SendError::QueueFull)?;
        let slot = &mut self.sends[si];
        slot.iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let namelen = write_sockaddr(peer, &mut slot.addr);
        // SAFETY: POD, all-zero is valid; the pointers set below point into this slot, which lives
        // in a boxed slice that never moves while the worker exists.
        slot.hdr = unsafe { std::mem::zeroed() };
        slot.hdr.msg_name = (&mut slot.addr as *mut libc::sockaddr_in6).cast();
        slot.hdr.msg_namelen = namelen;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.payload = Some(payload);
        let e = opcode::SendMsg::new(Fd(fd), &slot.hdr as *const libc::msghdr)
            .build()
            .user_data(ud(K_UDP_SEND, si as u64));
        if self.push(e).is_err() {
            self.sends[si].payload = None;
            self.free_sends.push(si);
            return Err(SendError::QueueFull);
        }
        Ok(())
    }

    fn on_udp_send(&mut self, si: usize, res: i32) {
        let Some(slot) = self.sends.get_mut(si) else {
            return;
        };
        slot.payload = None;
        self.free_sends.push(si);
        if res < 0 {
            tracing::debug!(
                worker = self.id,
                "SIP UDP sendmsg: {}",
                io::Error::from_raw_os_error(-res)
            );
        }
    }

    fn on_udp_recv(&mut self, idx: usize, res: i32, flags: u32) -> io::Result<()> {
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res > 0 {
                self.datagram(idx, bid, res as usize);
            }
            self.udp_bufs.push(bid);
        } else if res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED {
            tracing::debug!(
                worker = self.id,
                "SIP UDP recvmsg: {}",
                io::Error::from_raw_os_error(-res)
            );
        }
        if !cqueue::more(flags)
            && let Some(s) = self.udp.get_mut(idx)
        {
            // Re-armed after this batch, once buffers are back in the ring.
            s.armed = false;
        }
        Ok(())
    }

    fn datagram(&mut self, idx: usize, bid: u16, len: usize) {
        let Some(local) = self.udp.get(idx).map(|s| s.addr) else {
            return;
        };
        let Some(buf) = self.udp_bufs.buffer(bid, len) else {
            return;
        };
        let Ok(out) = RecvMsgOut::parse(buf, &self.recv_hdr) else {
            return;
        };
        let Some(peer) = parse_sockaddr(out.name_data()) else {
            return;
        };
        let payload = out.payload_data();
        // The flood shield's userspace enforcement (XDP off), before any parsing.
        if crate::shield::feed::installed().is_some_and(|s| !s.check_datagram(peer.ip(), payload)) {
            return;
        }
        if payload.iter().all(|&b| b == b'\r' || b == b'\n') {
            return; // keep-alive
        }
        // The copy lets the buffer go back to the ring at once; a message is small next to it.
        let bytes = Bytes::copy_from_slice(payload);
        let flow = FlowId {
            proto: Proto::Udp,
            local,
            peer,
            worker: self.id as u16,
            conn: 0,
        };
        match sipveil_sip::parse_datagram(bytes.clone(), &self.shared.cfg.limits) {
            Ok(m) => self.inbox.push((flow, m)),
            Err(e) => {
                let answer = e.answer();
                let mut answered = false;
                if let ErrorAnswer::Respond { .. } = answer {
                    let tag = Self::to_tag(self.tag_seed, &mut self.tag_counter);
                    if let Some(resp) = sipveil_sip::error_response(&bytes, answer, tag.as_bytes())
                    {
                        answered = self.udp_send(local, peer, Bytes::from(resp)).is_ok();
                    }
                }
                self.shared.metrics.parse_error("udp", answered);
            }
        }
    }

    fn on_accept(&mut self, idx: usize, res: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags)
            && let Some(l) = self.listeners.get_mut(idx)
        {
            l.armed = false;
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                tracing::warn!(
                    worker = self.id,
                    "SIP accept: {}",
                    io::Error::from_raw_os_error(-res)
                );
                if let Some(l) = self.listeners.get_mut(idx)
                    && !l.armed
                {
                    l.retry_at = Some(self.now + ACCEPT_RETRY);
                }
            }
            return Ok(());
        }
        // SAFETY: a completed accept hands us a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let Some(proto) = self.listeners.get(idx).map(|l| l.proto) else {
            return Ok(());
        };
        let (Ok(local), Ok(peer)) = (local_addr(fd.as_raw_fd()), peer_addr(fd.as_raw_fd())) else {
            return Ok(()); // already gone
        };
        // The flood shield's userspace enforcement (XDP off): the connection is closed at once.
        if crate::shield::feed::installed().is_some_and(|s| !s.check_accept(peer.ip())) {
            return Ok(());
        }
        let cfg = &self.shared.cfg;
        let metrics = &self.shared.metrics;
        if self.shared.connections.fetch_add(1, Ordering::AcqRel) >= cfg.max_connections {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            metrics.connection_rejected(super::proto_label(proto), "limit");
            return Ok(());
        }
        {
            let mut per_ip = match self.shared.per_ip.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let n = per_ip.entry(peer.ip()).or_insert(0);
            if *n >= cfg.max_connections_per_ip {
                drop(per_ip);
                self.shared.connections.fetch_sub(1, Ordering::AcqRel);
                metrics.connection_rejected(super::proto_label(proto), "per_ip_limit");
                return Ok(());
            }
            *n += 1;
        }
        let id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let flow = FlowId {
            proto,
            local,
            peer,
            worker: self.id as u16,
            conn: id,
        };
        let tls = if proto == Proto::Tls {
            cfg.tls_config.as_ref()
        } else {
            None
        };
        match Conn::new(fd, flow, tls, cfg.limits, self.now) {
            Ok(c) => {
                metrics.connection_opened(super::proto_label(proto));
                self.conns.insert(id, c);
                self.arm_recv(id)
            }
            Err(e) => {
                tracing::warn!(worker = self.id, "TLS connection setup: {e}");
                self.release(&flow);
                Ok(())
            }
        }
    }

    /// Gives back the connection's place in the limits.
    fn release(&self, flow: &FlowId) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = match self.shared.per_ip.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = per_ip.get_mut(&flow.peer.ip()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&flow.peer.ip());
            }
        }
    }

    fn on_recv(&mut self, id: u64, res: i32, flags: u32) -> io::Result<()> {
        let more = cqueue::more(flags);
        let cap = self.shared.cfg.write_queue_bytes;
        let mut eof = false;
        let mut error = false;
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res > 0
                && let Some(c) = self.conns.get_mut(&id)
                && let Some(data) = self.stream_bufs.buffer(bid, res as usize)
            {
                c.last_active = self.now;
                match c.state {
                    State::Open => {
                        let (seed, counter) = (self.tag_seed, &mut self.tag_counter);
                        let mut tag = || Self::to_tag(seed, counter);
                        let fed = c.feed(data, cap, &mut tag, &mut self.inbox);
                        let proto = super::proto_label(c.flow.proto);
                        for answered in fed.parse_errors {
                            self.shared.metrics.parse_error(proto, answered);
                        }
                        match fed.after {
                            After::Continue => self.submit_send(id)?,
                            After::FlushAndClose => self.flush_and_close(id)?,
                            After::Overflow => self.close(id)?,
                        }
                    }
                    // Closing down: what still arrives is discarded.
                    State::Flushing | State::Lingering(_) | State::Closing => {}
                }
            }
            self.stream_bufs.push(bid);
        }
        if res == 0 {
            eof = true;
        } else if res < 0 && res != -libc::ENOBUFS {
            error = true;
        }
        if !more {
            let Some(c) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            c.recv_armed = false;
            if !eof && !error && c.state != State::Closing {
                self.rearm.push(id);
            }
        }
        if eof || error {
            let flushing = self
                .conns
                .get(&id)
                .is_some_and(|c| c.state == State::Open && c.wq_bytes > 0);
            if flushing {
                self.flush_and_close(id)?;
            } else {
                self.close(id)?;
            }
        }
        self.finalize_if_done(id);
        Ok(())
    }

    fn stream_send(&mut self, id: u64, payload: Bytes) -> Result<(), SendError> {
        let cap = self.shared.cfg.write_queue_bytes;
        let Some(c) = self.conns.get_mut(&id) else {
            return Err(SendError::FlowClosed);
        };
        if c.state != State::Open {
            return Err(SendError::FlowClosed);
        }
        if !c.queue(payload, cap) {
            tracing::debug!(
                worker = self.id,
                conn = id,
                "write queue over {cap} bytes: closing the connection (slow reader)"
            );
            let _ = self.close(id);
            return Err(SendError::QueueFull);
        }
        self.submit_send(id).map_err(|_| SendError::QueueFull)
    }

    /// Submits the head of the connection's queue (up to `IOVS` chunks) if nothing is in flight.
    fn submit_send(&mut self, id: u64) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if c.send_inflight || c.wq.is_empty() || c.state == State::Closing {
            return Ok(());
        }
        let sv = &mut *c.send_vec;
        let mut n = 0;
        for (i, chunk) in c.wq.iter().take(IOVS).enumerate() {
            let off = if i == 0 { c.front_off } else { 0 };
            let part = chunk.get(off..).unwrap_or_default();
            sv.iovs[n] = libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            };
            n += 1;
        }
        // SAFETY: POD, all-zero is valid; the iovecs point into `Bytes` held in `c.wq`, whose
        // heap data does not move and which are only dropped after this send completes
        // (`advance` runs on the completion).
        sv.hdr = unsafe { std::mem::zeroed() };
        sv.hdr.msg_iov = sv.iovs.as_mut_ptr();
        sv.hdr.msg_iovlen = n;
        c.send_inflight = true;
        let e = opcode::SendMsg::new(Fd(c.fd.as_raw_fd()), &sv.hdr as *const libc::msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud(K_SEND, id));
        self.push(e)
    }

    fn on_send(&mut self, id: u64, res: i32) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        c.send_inflight = false;
        if res < 0 {
            tracing::debug!(
                worker = self.id,
                conn = id,
                "SIP send: {}",
                io::Error::from_raw_os_error(-res)
            );
            self.close(id)?;
            self.finalize_if_done(id);
            return Ok(());
        }
        c.advance(res as usize);
        if res > 0 {
            c.last_active = self.now;
        }
        match c.state {
            State::Closing => self.finalize_if_done(id),
            State::Flushing if c.wq.is_empty() => self.linger(id),
            _ => self.submit_send(id)?,
        }
        Ok(())
    }

    /// Answer written (or being written): shut down the write side once the queue is empty.
    fn flush_and_close(&mut self, id: u64) -> io::Result<()> {
        let cap = self.shared.cfg.write_queue_bytes;
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if c.state != State::Open {
            return Ok(());
        }
        c.begin_flush(cap);
        if c.wq.is_empty() && !c.send_inflight {
            self.linger(id);
            Ok(())
        } else {
            self.submit_send(id)
        }
    }

    fn linger(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_WR) };
        c.state = State::Lingering(self.now + LINGER);
        if !c.recv_armed {
            // Nothing would ever tell us about the peer's EOF: close now.
            let _ = self.close(id);
            self.finalize_if_done(id);
        }
    }

    /// Closes at once: shuts the socket down and cancels its receive; the connection is freed
    /// when no operation refers to it any more.
    fn close(&mut self, id: u64) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if c.state == State::Closing {
            return Ok(());
        }
        c.state = State::Closing;
        // SAFETY: plain syscall on a descriptor we own.
        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        let armed = c.recv_armed;
        if armed {
            let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud(K_RECV, id)))
                .build()
                .user_data(ud(K_CANCEL, id));
            self.push(e)?;
        }
        self.finalize_if_done(id);
        Ok(())
    }

    fn finalize_if_done(&mut self, id: u64) {
        let done = self
            .conns
            .get(&id)
            .is_some_and(|c| c.state == State::Closing && !c.recv_armed && !c.send_inflight);
        if !done {
            return;
        }
        if let Some(c) = self.conns.remove(&id) {
            self.release(&c.flow);
            self.shared
                .metrics
                .connection_closed(super::proto_label(c.flow.proto));
            self.closed.push(c.flow);
            // Dropping `c` closes the descriptor.
        }
    }

    /// Closes idle connections and ends lingering ones.
    fn sweep(&mut self, idle: Duration) -> io::Result<()> {
        let now = self.now;
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| match c.state {
                State::Open | State::Flushing => now.duration_since(c.last_active) >= idle,
                State::Lingering(until) => now >= until,
                State::Closing => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.close(id)?;
        }
        Ok(())
    }

    /// Cancels everything and waits (bounded) until the kernel no longer refers to our memory.
    /// If it does not answer in time, the memory is leaked rather than freed under it.
    fn drain(mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.state = State::Closing;
                // SAFETY: plain syscall on a descriptor we own.
                unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(ud(K_CANCEL, 0));
        let _ = self.push(cancel);
        let deadline = Instant::now() + Duration::from_secs(1);
        let ts = Timespec::new().nsec(50_000_000);
        while self.inflight > 0 {
            if Instant::now() > deadline {
                tracing::warn!(
                    worker = self.id,
                    "SIP worker did not drain; leaking its buffers"
                );
                std::mem::forget(self);
                return;
            }
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut again = false;
            let cqes: Vec<(u64, u32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.flags()))
                .collect();
            for (user_data, flags) in cqes {
                if !cqueue::more(flags) {
                    self.inflight = self.inflight.saturating_sub(1);
                    if user_data >> KIND_SHIFT == K_CANCEL {
                        again = true;
                    }
                }
            }
            // Multishots armed after the first cancel (none should be) get another one.
            if again && self.inflight > 0 {
                let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
                    .build()
                    .user_data(ud(K_CANCEL, 0));
                let _ = self.push(cancel);
            }
        }
        for (_, c) in self.conns.drain() {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            self.shared
                .metrics
                .connection_closed(super::proto_label(c.flow.proto));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_bounds_the_sleep_with_slack_and_runs_from_its_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Alone: the deadline plus the slack.
        assert_eq!(
            wake_at(Some(t0 + ms(10)), None, std::iter::empty()),
            Some(t0 + ms(10) + TIMER_SLACK)
        );
        // An earlier sweep or accept retry wins; a later one does not.
        assert_eq!(
            wake_at(Some(t0 + ms(10)), Some(t0 + ms(5)), std::iter::empty()),
            Some(t0 + ms(5))
        );
        assert_eq!(
            wake_at(
                Some(t0 + ms(10)),
                Some(t0 + ms(500)),
                [t0 + ms(7)].into_iter()
            ),
            Some(t0 + ms(7))
        );
        assert_eq!(
            wake_at(None, Some(t0 + ms(500)), std::iter::empty()),
            Some(t0 + ms(500))
        );
        assert_eq!(wake_at(None, None, std::iter::empty()), None);
        // The timer runs at or after its deadline only, slack or not.
        assert!(!timer_due(Some(t0 + ms(10)), t0 + ms(9)));
        assert!(timer_due(Some(t0 + ms(10)), t0 + ms(10)));
        assert!(timer_due(Some(t0 + ms(10)), t0 + ms(11)));
        assert!(!timer_due(None, t0 + ms(11)));
    }
}
