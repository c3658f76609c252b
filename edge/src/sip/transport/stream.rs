//! One TCP or TLS connection: framing, TLS state and the write queue. No I/O here; the worker
//! feeds received bytes in and submits the queue's head.
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sipveil_sip::{ErrorAnswer, Limits, Message, PONG, StreamEvent, StreamFramer};

use super::FlowId;

/// Iovecs per `sendmsg` on a connection.
pub(super) const IOVS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Open,
    /// Write what is queued, then shut down the write side.
    Flushing,
    /// Write side shut down; reading (and discarding) until EOF or the instant, so the peer sees
    /// our last answer before any reset.
    Lingering(Instant),
    /// Shut down; waiting for in-flight operations before the slot is freed.
    Closing,
}

/// The `sendmsg` header and iovecs of the connection's in-flight send (boxed: they must not move
/// while the kernel holds them).
pub(super) struct SendVec {
    pub hdr: libc::msghdr,
    pub iovs: [libc::iovec; IOVS],
}

pub(super) struct Conn {
    pub fd: OwnedFd,
    pub flow: FlowId,
    tls: Option<Box<rustls::ServerConnection>>,
    framer: StreamFramer,
    /// A copy of the bytes the framer holds, so a message that frames but fails to parse can be
    /// answered from its header section (the framer consumes it).
    shadow: BytesMut,
    /// Queued output (TLS: records); the front may be partly written (`front_off`).
    pub wq: VecDeque<Bytes>,
    pub front_off: usize,
    /// Bytes in `wq` not yet written.
    pub wq_bytes: usize,
    pub send_vec: Box<SendVec>,
    pub send_inflight: bool,
    pub recv_armed: bool,
    pub state: State,
    pub last_active: Instant,
}

/// What the worker must do after feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum After {
    Continue,
    /// Write what is queued (an error answer, a TLS alert) and close.
    FlushAndClose,
    /// The queue went over its limit: close now.
    Overflow,
}

/// What came out of the bytes fed in.
pub(super) struct Fed {
    pub after: After,
    /// Framing/parse failures: `true` when answered.
    pub parse_errors: Vec<bool>,
}

impl Conn {
    pub(super) fn new(
        fd: OwnedFd,
        flow: FlowId,
        tls: Option<&Arc<rustls::ServerConfig>>,
        limits: Limits,
        now: Instant,
    ) -> Result<Conn, rustls::Error> {
        let tls = match tls {
            Some(cfg) => Some(Box::new(rustls::ServerConnection::new(Arc::clone(cfg))?)),
            None => None,
        };
        Ok(Conn {
            fd,
            flow,
            tls,
            framer: StreamFramer::new(limits),
            shadow: BytesMut::new(),
            wq: VecDeque::new(),
            front_off: 0,
            wq_bytes: 0,
            send_vec: Box::new(SendVec {
                // SAFETY: POD, all-zero is valid.
                hdr: unsafe { std::mem::zeroed() },
                iovs: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; IOVS],
            }),
            send_inflight: false,
            recv_armed: false,
            state: State::Open,
            last_active: now,
        })
    }

    /// Queues raw wire bytes. `false` when the queue would exceed `cap`.
    fn push_wire(&mut self, b: Bytes, cap: usize) -> bool {
        if b.is_empty() {
            return true;
        }
        if self.wq_bytes.saturating_add(b.len()) > cap {
            return false;
        }
        self.wq_bytes += b.len();
        self.wq.push_back(b);
        true
    }

    /// Moves what rustls wants to write into the queue.
    fn flush_tls(&mut self, cap: usize) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        let mut out = Vec::new();
        while tls.wants_write() {
            match tls.write_tls(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        self.push_wire(Bytes::from(out), cap)
    }

    /// Queues one message (or a pong) for the peer (encrypted on TLS). `false`: over the cap, or
    /// TLS refused the plaintext; the caller closes the connection.
    pub(super) fn queue(&mut self, payload: Bytes, cap: usize) -> bool {
        match self.tls.as_mut() {
            None => self.push_wire(payload, cap),
            Some(tls) => {
                if tls.writer().write_all(&payload).is_err() {
                    return false;
                }
                self.flush_tls(cap)
            }
        }
    }

    /// Starts a graceful close: TLS close_notify is queued; the worker flushes then shuts down.
    pub(super) fn begin_flush(&mut self, cap: usize) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
        }
        let _ = self.flush_tls(cap);
        self.state = State::Flushing;
    }

    /// Marks `n` bytes written; drops finished chunks.
    pub(super) fn advance(&mut self, mut n: usize) {
        self.wq_bytes = self.wq_bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.wq.front() else {
                break;
            };
            let left = front.len() - self.front_off;
            if n >= left {
                n -= left;
                self.wq.pop_front();
                self.front_off = 0;
            } else {
                self.front_off += n;
                n = 0;
            }
        }
    }

    /// Feeds received bytes: TLS records are decrypted, the plaintext framed; parsed messages go
    /// to `inbox`, pongs and error answers into the write queue.
    pub(super) fn feed(
        &mut self,
        data: &[u8],
        cap: usize,
        to_tag: &mut dyn FnMut() -> String,
        inbox: &mut Vec<(FlowId, Message)>,
    ) -> Fed {
        let mut fed = Fed {
            after: After::Continue,
            parse_errors: Vec::new(),
        };
        if self.tls.is_none() {
            self.framer.push(data);
            self.shadow.extend_from_slice(data);
            fed.after = self.frame(cap, to_tag, inbox, &mut fed.parse_errors);
            return fed;
        }
        let mut rd = data;
        let mut plain = [0u8; 16384];
        let mut after = After::Continue;
        'records: while !rd.is_empty() {
            let Some(tls) = self.tls.as_mut() else {
                break;
            };
            match tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    after = After::FlushAndClose;
                    break;
                }
            }
            if tls.process_new_packets().is_err() {
                // rustls has queued an alert; send it and close.
                after = After::FlushAndClose;
                break;
            }
            loop {
                match tls.reader().read(&mut plain) {
                    Ok(0) => {
                        // close_notify from the peer.
                        after = After::FlushAndClose;
                        break 'records;
                    }
                    Ok(n) => {
                        self.framer.push(&plain[..n]);
                        self.shadow.extend_from_slice(&plain[..n]);
                    }
                    Err(_) => break, // WouldBlock: no more plaintext for now
                }
            }
        }
        let framed = self.frame(cap, to_tag, inbox, &mut fed.parse_errors);
        if !self.flush_tls(cap) {
            fed.after = After::Overflow;
        } else if framed != After::Continue {
            fed.after = framed;
        } else {
            fed.after = after;
        }
        fed
    }

    fn frame(
        &mut self,
        cap: usize,
        to_tag: &mut dyn FnMut() -> String,
        inbox: &mut Vec<(FlowId, Message)>,
        errors: &mut Vec<bool>,
    ) -> After {
        loop {
            let Some(ev) = self.framer.poll() else {
                return After::Continue;
            };
            let consumed = self.shadow.len().saturating_sub(self.framer.buffered());
            let input = self.shadow.split_to(consumed.min(self.shadow.len()));
            match ev {
                Ok(StreamEvent::Message(m)) => inbox.push((self.flow, m)),
                Ok(StreamEvent::Ping) => {
                    if !self.queue(Bytes::from_static(PONG), cap) {
                        return After::Overflow;
                    }
                }
                Ok(StreamEvent::Pong) => {}
                Err(e) => {
                    let failed = self.framer.is_failed();
                    // After a framing failure the framer keeps the input: it is the shadow.
                    let input = if failed { &self.shadow[..] } else { &input[..] };
                    let answer = e.answer();
                    let mut answered = false;
                    if let ErrorAnswer::Respond { .. } = answer
                        && let Some(resp) =
                            sipveil_sip::error_response(input, answer, to_tag().as_bytes())
                    {
                        answered = true;
                        if !self.queue(Bytes::from(resp), cap) {
                            errors.push(answered);
                            return After::Overflow;
                        }
                    }
                    errors.push(answered);
                    if failed {
                        self.shadow.clear();
                        return After::FlushAndClose;
                    }
                }
            }
        }
    }
}
