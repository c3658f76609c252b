//! The userspace relay: io_uring workers that receive on the relay sockets and send what
//! `media::datapath::decide` says. Used for everything when XDP is off, and in XDP mode for the
//! packets the program passes up (no neighbour yet, fragments, IP options).
//!
//! One socket per relay port, bound to the edge address. Each socket belongs to one worker (chosen
//! by port), which keeps a multishot `recvmsg` armed on it with buffers from a provided buffer ring.
//! Sends go out from the socket of the flow's source edge address (any worker may send on any
//! socket) and are submitted in batches, one `submit` per completion batch.
//!
//! RTCP always comes through here: the XDP program passes it up (`rtcp_pass`) so that it can be
//! scrubbed (`media::rtcp`) before it reaches the other party. RTP stays in XDP.
mod uring;

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use sipveil_abi::FlowKey;

use crate::media::SocketHost;
use crate::media::counters::UserCounters;
use crate::media::rtcp::RtcpScrubber;
use crate::media::table::FlowTable;

pub(crate) enum Command {
    Add(FlowKey, Arc<UdpSocket>),
    Remove(FlowKey),
    Stop,
}

pub(crate) struct Shared {
    pub table: Arc<dyn FlowTable>,
    pub counters: Arc<UserCounters>,
    /// Every relay socket by its edge address: the send side looks the source socket up here.
    pub sockets: RwLock<HashMap<FlowKey, Arc<UdpSocket>>>,
    /// Every RTCP datagram is rewritten by it before it is sent on (RTCP privacy, always on).
    pub scrubber: RtcpScrubber,
}

/// A relay worker's wake-up: an eventfd its ring reads, and whether a wake-up is already on its
/// way (then a command only needs queueing: the worker drains its whole queue per wake-up).
pub(crate) struct Wake {
    pub fd: OwnedFd,
    /// Set by the first sender since the worker's last drain; cleared by the worker before it
    /// drains (so a command queued after the clear wakes it again).
    pub pending: AtomicBool,
}

impl Wake {
    /// Wakes the worker unless a wake-up is already pending.
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            wake(&self.fd);
        }
    }
}

struct Worker {
    tx: Sender<Command>,
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
}

/// The relay worker threads. Implements `SocketHost` for `MediaRelay`.
pub struct RelayWorkers {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned fd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn wake(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl RelayWorkers {
    /// Starts `n` worker threads (at least one). Fails when io_uring or provided buffer rings are
    /// not available, or no random secret for the RTCP pseudonyms can be had.
    pub fn start(
        n: usize,
        table: Arc<dyn FlowTable>,
        counters: Arc<UserCounters>,
    ) -> io::Result<RelayWorkers> {
        let shared = Arc::new(Shared {
            table,
            counters,
            sockets: RwLock::new(HashMap::new()),
            scrubber: RtcpScrubber::random()
                .map_err(|e| io::Error::other(format!("random secret for RTCP CNAMEs: {e}")))?,
        });
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let (tx, rx) = channel();
            let wake_fd = Arc::new(Wake {
                fd: eventfd()?,
                pending: AtomicBool::new(false),
            });
            let (ready_tx, ready_rx) = channel();
            let thread = std::thread::Builder::new()
                .name(format!("sv-relay-{i}"))
                .spawn({
                    let shared = shared.clone();
                    let wake_fd = wake_fd.clone();
                    move || uring::run(i, shared, rx, wake_fd, ready_tx)
                })?;
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = thread.join();
                    return Err(e);
                }
                Err(_) => {
                    let _ = thread.join();
                    return Err(io::Error::other("relay worker died during start"));
                }
            }
            workers.push(Worker {
                tx,
                wake: wake_fd,
                thread: Some(thread),
            });
        }
        Ok(RelayWorkers { shared, workers })
    }

    fn worker_of(&self, key: &FlowKey) -> Option<&Worker> {
        let n = self.workers.len();
        if n == 0 {
            return None;
        }
        self.workers
            .get(usize::from(u16::from_be(key.port)) / 2 % n)
    }

    fn send(&self, key: &FlowKey, cmd: Command) {
        if let Some(w) = self.worker_of(key)
            && w.tx.send(cmd).is_ok()
        {
            w.wake.wake();
        }
    }

    /// Stops the workers and waits for them. Sockets are closed; nothing in the data plane changes.
    pub fn stop(&mut self) {
        for w in &self.workers {
            if w.tx.send(Command::Stop).is_ok() {
                w.wake.wake();
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take()
                && t.join().is_err()
            {
                tracing::error!("a relay worker panicked");
            }
        }
        self.workers.clear();
    }
}

impl Drop for RelayWorkers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SocketHost for RelayWorkers {
    fn add(&self, key: FlowKey, socket: UdpSocket) {
        let socket = Arc::new(socket);
        if let Ok(mut s) = self.shared.sockets.write() {
            s.insert(key, socket.clone());
        }
        self.send(&key, Command::Add(key, socket));
    }

    fn remove(&self, key: &FlowKey) {
        if let Ok(mut s) = self.shared.sockets.write() {
            s.remove(key);
        }
        self.send(key, Command::Remove(*key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eventfd's counter (how many writes since the last read), or 0 when none.
    fn drain(fd: &OwnedFd) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from an eventfd we own (non-blocking below).
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 { v } else { 0 }
    }

    #[test]
    fn wake_ups_coalesce_until_the_worker_clears_pending() {
        // SAFETY: plain syscall; on success we own the returned fd.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(raw >= 0, "eventfd: {}", io::Error::last_os_error());
        let w = Wake {
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            pending: AtomicBool::new(false),
        };
        for _ in 0..4 {
            w.wake();
        }
        assert_eq!(drain(&w.fd), 1, "four commands, one wake-up");
        w.wake();
        assert_eq!(drain(&w.fd), 0, "still pending: no new write");
        // The worker clears the flag before draining its queue: the next command wakes it again.
        w.pending.store(false, Ordering::SeqCst);
        w.wake();
        assert_eq!(drain(&w.fd), 1);
    }
}
