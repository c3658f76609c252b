//! The io_uring SIP transport pool: UDP, TCP and TLS (issue 4).
//!
//! # Shape
//!
//! [`Pool::start`] runs `workers` threads; each owns one `IoUring`, one [`Handler`] (built on the
//! thread by the factory) and, for every configured address, its own `SO_REUSEPORT` UDP socket and
//! TCP/TLS listener, so the kernel spreads datagrams and connections over the workers. The pool is
//! the only part of the daemon that reads the clock or touches the SIP sockets: it reads
//! [`Io::now`] / [`Io::unix_ms`] once per loop iteration, frames and parses what arrives, answers
//! what does not parse (as [`sipveil_sip::ParseError::answer`] says) and hands every parsed message
//! to the handler, then carries out what the handler asks through [`Io`].
//!
//! # UDP
//!
//! Multishot `recvmsg` into a provided buffer ring. Each buffer holds `max_message_size + 1` bytes
//! of payload (plus the `io_uring_recvmsg_out` header and the source address), so a datagram that
//! does not fit is recognised as too large and answered with 513 from its header section. The
//! ring has as many such buffers as fit in about 4 MiB (32 with the default 64 KiB limit, up to
//! 1024 for small limits); a datagram's payload is copied into a `Bytes` and its buffer goes back
//! to the ring at once, so the ring only needs to cover one completion batch (when it runs dry
//! the kernel keeps datagrams in the socket buffer and the receive is re-armed after the batch).
//! Datagrams that are only CR/LF (keep-alives) are ignored. Sends are `sendmsg` SQEs queued while
//! the batch is handled and submitted together with the next wait (one `io_uring_enter` per loop
//! iteration). A reply to a UDP flow goes out of this worker's socket bound to `flow.local`.
//! Bind specific addresses: a socket bound to `0.0.0.0`/`::` reports that wildcard as
//! `flow.local`, and its replies leave with whatever source address the kernel routes with.
//!
//! # TCP and TLS
//!
//! Multishot `accept` per listener; the total ([`TransportConfig::max_connections`], shared by all
//! workers) and per-source-IP ([`TransportConfig::max_connections_per_ip`]) limits are checked at
//! accept, and a connection over either is closed at once. Reads are multishot `recv` into a
//! second provided buffer ring (16 KiB buffers, copied into the connection's
//! [`sipveil_sip::StreamFramer`] and returned at once, so memory per idle connection is only its
//! framer, queue and TLS state). TLS is `rustls::ServerConnection` driven sans-IO over those bytes.
//! Writes: a per-connection queue of `Bytes`, one `send` in flight at a time, partial writes
//! resumed; when the queued bytes would exceed [`TransportConfig::write_queue_bytes`] the
//! connection is closed (a slow reader gets closed, memory never grows without bound). A
//! connection with no bytes in either direction for [`TransportConfig::idle_timeout`] (the TLS
//! handshake included) is closed. RFC 5626 keep-alive pings (`CRLFCRLF`) are answered with a
//! `CRLF` pong. A framing error is answered (when it can be) and the connection is closed after
//! the answer is written.
//!
//! # Threads
//!
//! [`Io::send`] and [`PoolHandle::send`] accept any flow: a TCP/TLS flow owned by another worker
//! is handed to that worker through a bounded queue and an eventfd (read through its ring).
//! [`PoolHandle::wake`] makes a worker call [`Handler::on_wake`]; [`Io::set_deadline`] makes it
//! call [`Handler::on_timer`] (the wait for completions is bounded by the deadline plus
//! [`TIMER_SLACK`]).
mod socket;
mod stream;
mod tls;
mod worker;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::queue::ArrayQueue;

pub use tls::{TlsConfigError, load_tls_config};
pub use worker::TIMER_SLACK;

/// The SIP transport (the registrar crate's type, so flows convert without mapping).
pub use sipveil_registrar::Proto;

/// Lower-case name of a transport, as used in metrics labels.
pub fn proto_label(p: Proto) -> &'static str {
    match p {
        Proto::Udp => "udp",
        Proto::Tcp => "tcp",
        Proto::Tls => "tls",
    }
}

/// Where a message came from, and the way back to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId {
    pub proto: Proto,
    /// The edge's address the message arrived on (the socket's bound address).
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The worker that received it (for TCP/TLS: the worker that owns the connection).
    pub worker: u16,
    /// Unique non-zero id of a TCP/TLS connection (never reused while the process lives); 0 for UDP.
    pub conn: u64,
}

impl From<FlowId> for sipveil_registrar::FlowInfo {
    fn from(f: FlowId) -> Self {
        sipveil_registrar::FlowInfo {
            proto: f.proto,
            local: f.local,
            peer: f.peer,
            worker: f.worker,
            conn: f.conn,
        }
    }
}

impl From<sipveil_registrar::FlowInfo> for FlowId {
    fn from(f: sipveil_registrar::FlowInfo) -> Self {
        FlowId {
            proto: f.proto,
            local: f.local,
            peer: f.peer,
            worker: f.worker,
            conn: f.conn,
        }
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The TCP/TLS connection is gone (closed by the peer, by a limit, or never existed).
    #[error("the connection is closed")]
    FlowClosed,
    /// A bounded queue is full: the worker's hand-off queue, the UDP send slots, or the
    /// connection's write queue (in which case the connection has been closed).
    #[error("queue full")]
    QueueFull,
    /// No socket of this pool is bound to the flow's local address (or the worker does not exist).
    #[error("no socket for the flow's local address")]
    NoSocket,
}

/// The pool's settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// Required when `tls` is not empty (see [`load_tls_config`]).
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    /// Worker threads (at least one).
    pub workers: usize,
    /// TCP + TLS connections, all workers together.
    pub max_connections: usize,
    /// TCP + TLS connections from one source IP address.
    pub max_connections_per_ip: usize,
    /// A TCP/TLS connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes queued for one connection (TLS: encrypted); beyond it the connection is closed.
    pub write_queue_bytes: usize,
    /// Parser limits; `max_message_size` also sizes the UDP receive buffers.
    pub limits: sipveil_sip::Limits,
}

impl Default for TransportConfig {
    /// No listeners; the defaults of the daemon's config for the rest.
    fn default() -> Self {
        TransportConfig {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_config: None,
            workers: 1,
            max_connections: 10_000,
            max_connections_per_ip: 64,
            idle_timeout: Duration::from_secs(300),
            write_queue_bytes: 262_144,
            limits: sipveil_sip::Limits::default(),
        }
    }
}

/// What the pool reports to metrics. Implemented by [`crate::metrics::Metrics`]; tests may count
/// with their own.
pub trait TransportMetrics: Send + Sync + 'static {
    /// A message failed to parse; `answered`: an error response was sent.
    fn parse_error(&self, proto: &str, answered: bool);
    fn connection_opened(&self, proto: &str);
    fn connection_closed(&self, proto: &str);
    /// A connection refused at accept; `reason`: `"limit"` (max_connections) or `"per_ip_limit"`.
    fn connection_rejected(&self, proto: &str, reason: &str);
    /// One loop iteration of `worker` handled `messages` messages in `busy`.
    fn worker_loop(&self, worker: usize, messages: u64, busy: Duration);
}

impl TransportMetrics for crate::metrics::Metrics {
    fn parse_error(&self, proto: &str, answered: bool) {
        crate::metrics::Metrics::parse_error(self, proto, answered);
    }
    fn connection_opened(&self, proto: &str) {
        crate::metrics::Metrics::connection_opened(self, proto);
    }
    fn connection_closed(&self, proto: &str) {
        crate::metrics::Metrics::connection_closed(self, proto);
    }
    fn connection_rejected(&self, proto: &str, reason: &str) {
        crate::metrics::Metrics::connection_rejected(self, proto, reason);
    }
    fn worker_loop(&self, worker: usize, messages: u64, busy: Duration) {
        crate::metrics::Metrics::worker_loop(self, worker, messages, busy);
    }
}

/// The transaction user's side of a worker: one per worker thread, built by the factory given to
/// [`Pool::start`] on that thread. Every call happens on the worker thread.
pub trait Handler: Send + 'static {
    /// A message parsed from `from`.
    fn on_message(&mut self, io: &mut Io<'_>, from: FlowId, msg: sipveil_sip::Message);
    /// [`PoolHandle::wake`] was called for this worker (calls made before the worker got to it
    /// are merged into one).
    fn on_wake(&mut self, io: &mut Io<'_>);
    /// The deadline set with [`Io::set_deadline`] has passed (it is cleared before the call).
    fn on_timer(&mut self, io: &mut Io<'_>);
    /// A TCP/TLS connection owned by this worker is gone; sends to it fail with
    /// [`SendError::FlowClosed`] from now on.
    fn on_closed(&mut self, io: &mut Io<'_>, flow: FlowId);
}

/// What a handler can do during a callback.
pub struct Io<'a> {
    core: &'a mut worker::Core,
}

impl Io<'_> {
    /// The monotonic time read at the start of this loop iteration.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// Wall-clock milliseconds since the UNIX epoch, read at the start of this loop iteration.
    pub fn unix_ms(&self) -> u64 {
        self.core.unix_ms
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.core.id
    }

    /// Sends `payload` (one complete message, or a pong) on `flow`, which may belong to any
    /// worker. Queued now, submitted at the end of the loop iteration.
    pub fn send(&mut self, flow: &FlowId, payload: Bytes) -> Result<(), SendError> {
        self.core.send(flow, payload)
    }

    /// Calls [`Handler::on_timer`] once `at` has passed (`None`: no timer), at the first loop
    /// iteration at or after `at` and at most [`TIMER_SLACK`] late (so that timers falling due
    /// between two datagrams do not each cost a wake-up). Replaces the previous deadline.
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.core.deadline = at;
    }

    /// A handle usable from other threads.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            shared: Arc::clone(&self.core.shared),
        }
    }
}

/// Per-worker mailbox: hand-off queue for sends from other threads, and the wake flags.
struct Mailbox {
    queue: ArrayQueue<(FlowId, Bytes)>,
    eventfd: OwnedFd,
    /// An eventfd write is pending (the worker clears it before draining).
    notified: AtomicBool,
    /// `PoolHandle::wake` was called.
    wake: AtomicBool,
}

/// State shared by all workers and handles.
struct Shared {
    cfg: TransportConfig,
    metrics: Arc<dyn TransportMetrics>,
    mailboxes: Vec<Mailbox>,
    stop: AtomicBool,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    next_conn: AtomicU64,
}

/// Hand-off queue per worker for sends from other threads.
const MAILBOX_LEN: usize = 8192;

impl Shared {
    fn notify(&self, worker: usize) {
        if let Some(mb) = self.mailboxes.get(worker)
            && !mb.notified.swap(true, Ordering::AcqRel)
        {
            crate::uring_util::eventfd_signal(&mb.eventfd);
        }
    }

    fn hand_off(&self, flow: &FlowId, payload: Bytes) -> Result<(), SendError> {
        let w = usize::from(flow.worker);
        let mb = self.mailboxes.get(w).ok_or(SendError::NoSocket)?;
        mb.queue
            .push((*flow, payload))
            .map_err(|_| SendError::QueueFull)?;
        self.notify(w);
        Ok(())
    }
}

/// A cloneable handle to the pool, usable from any thread.
#[derive(Clone)]
pub struct PoolHandle {
    shared: Arc<Shared>,
}

impl PoolHandle {
    /// Makes `worker` call [`Handler::on_wake`] soon. Unknown workers are ignored.
    pub fn wake(&self, worker: usize) {
        if let Some(mb) = self.shared.mailboxes.get(worker) {
            mb.wake.store(true, Ordering::Release);
            self.shared.notify(worker);
        }
    }

    /// Sends `payload` on `flow` from any thread: handed to the worker `flow.worker` (which owns
    /// the connection, or has a UDP socket on `flow.local`). Errors only for a full hand-off
    /// queue or an unknown worker; a flow that turns out closed is dropped there.
    pub fn send(&self, flow: &FlowId, payload: Bytes) -> Result<(), SendError> {
        self.shared.hand_off(flow, payload)
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.mailboxes.len()
    }
}

/// The running pool.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    addrs: Vec<(Proto, SocketAddr)>,
}

impl Pool {
    /// Binds every configured address (one socket per worker and address, `SO_REUSEPORT`; port 0
    /// picks one port shared by all workers), then starts the workers. `factory(worker, handle)`
    /// builds each worker's handler on the worker thread. Fails when an address cannot be bound,
    /// TLS addresses are configured without `tls_config`, or io_uring (with provided buffer rings)
    /// is not available.
    pub fn start<H, M, F>(cfg: TransportConfig, metrics: Arc<M>, factory: F) -> io::Result<Pool>
    where
        H: Handler,
        M: TransportMetrics,
        F: Fn(usize, PoolHandle) -> H + Send + Sync + 'static,
    {
        if !cfg.tls.is_empty() && cfg.tls_config.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS listen addresses are configured but no certificate and key (tls_config)",
            ));
        }
        let n = cfg.workers.clamp(1, usize::from(u16::MAX));
        let sockets = socket::bind_all(&cfg, n)?;
        let addrs = sockets.addrs.clone();
        let mut mailboxes = Vec::with_capacity(n);
        for _ in 0..n {
            mailboxes.push(Mailbox {
                queue: ArrayQueue::new(MAILBOX_LEN),
                eventfd: crate::uring_util::eventfd()?,
                notified: AtomicBool::new(false),
                wake: AtomicBool::new(false),
            });
        }
        let metrics: Arc<dyn TransportMetrics> = metrics;
        let shared = Arc::new(Shared {
            cfg,
            metrics,
            mailboxes,
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        });
        let factory = Arc::new(factory);
        let mut pool = Pool {
            shared: Arc::clone(&shared),
            threads: Vec::with_capacity(n),
            addrs,
        };
        for (i, socks) in sockets.per_worker.into_iter().enumerate() {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let shared = Arc::clone(&shared);
            let factory = Arc::clone(&factory);
            let spawned = std::thread::Builder::new()
                .name(format!("sip-worker-{i}"))
                .spawn(move || {
                    let handle = PoolHandle {
                        shared: Arc::clone(&shared),
                    };
                    worker::run(i, shared, socks, ready_tx, move |h| factory(i, h), handle)
                });
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    pool.stop_and_join();
                    return Err(e);
                }
            };
            pool.threads.push(thread);
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    pool.stop_and_join();
                    return Err(e);
                }
                Err(_) => {
                    pool.stop_and_join();
                    return Err(io::Error::other(format!(
                        "SIP worker {i} died while starting"
                    )));
                }
            }
        }
        Ok(pool)
    }

    /// A handle for other threads.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The bound addresses (with the actual ports), one entry per configured address.
    pub fn local_addrs(&self) -> Vec<(Proto, SocketAddr)> {
        self.addrs.clone()
    }

    /// Stops the workers (connections are closed, queued sends dropped) and joins them.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for i in 0..self.shared.mailboxes.len() {
            self.shared.notify(i);
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a SIP worker thread panicked");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
