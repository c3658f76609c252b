//! SIP transactions (RFC 3261 §17, with the RFC 6026 fix for INVITE 2xx),
//! sans-IO.
//!
//! [`TransactionLayer`] owns every client and server transaction of one
//! endpoint. It reads no clock, owns no socket and draws no random numbers:
//! the driver passes `now`, hands in received messages and drains what the
//! layer wants sent, the TU events and the next deadline. The calls, and
//! when a driver makes them:
//!
//! | call | when |
//! |---|---|
//! | [`handle_incoming`](TransactionLayer::handle_incoming) | for every parsed message received; act on the returned [`Incoming`] |
//! | [`send_request`](TransactionLayer::send_request) | the TU starts a request (not ACK) |
//! | [`send_response`](TransactionLayer::send_response) | the TU answers a request it got as [`Incoming::Request`] |
//! | [`send_stateless`](TransactionLayer::send_stateless) | ACK for a 2xx, or anything the TU forwards without a transaction |
//! | [`handle_transport_error`](TransactionLayer::handle_transport_error) | a [`Transmit`] carrying a transaction id could not be sent |
//! | [`handle_timeout`](TransactionLayer::handle_timeout) | once `now` reaches [`poll_timeout`](TransactionLayer::poll_timeout) |
//! | [`poll_transmit`](TransactionLayer::poll_transmit) | after every `handle_*`/`send_*`, until `None` |
//! | [`poll_event`](TransactionLayer::poll_event) | after every `handle_*`/`send_*`, until `None` |
//! | [`poll_timeout`](TransactionLayer::poll_timeout) | after draining; (re)arm the driver's single timer with it |
//!
//! Retransmissions are absorbed here: a repeated request is answered from
//! the transaction with its last response, a repeated response is not shown
//! to the TU twice (except INVITE 2xx, which the TU must see to re-ACK), and
//! the ACK for a non-2xx final response is generated here.
//!
//! Matching follows §17.1.3 (client: branch + CSeq method) and §17.2.3
//! (server: branch with magic cookie + sent-by + method, ACK matching its
//! INVITE; otherwise the RFC 2543 rule on Request-URI, tags, Call-ID, CSeq
//! and top Via). A CANCEL gets its own server transaction, and
//! [`Incoming::Request::cancels`] names the INVITE transaction it matches
//! (§9.2).
//!
//! Responses of a server transaction go back to the peer the request came
//! from (the same connection on a reliable transport; RFC 3581 `rport`
//! behaviour on UDP). A driver that wants §18.2.2 `received`/sent-by routing
//! maps the peer itself.
//!
//! # Example: one OPTIONS exchange between two layers
//!
//! ```
//! use bytes::Bytes;
//! use sipveil_sip::transaction::{Config, Incoming, Instant, Remote, TransactionLayer, response_to};
//! use sipveil_sip::{Limits, Message, parse_datagram};
//!
//! let mut uac: TransactionLayer<&str> = TransactionLayer::new(Config::default(), 1).unwrap();
//! let mut uas: TransactionLayer<&str> = TransactionLayer::new(Config::default(), 2).unwrap();
//! let now = Instant::ZERO;
//! let branch = uac.new_branch();
//! let text = format!(
//!     "OPTIONS sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP a.example;branch={branch}\r\n\
//!      From: <sip:alice@a.example>;tag=1\r\nTo: <sip:bob@b.example>\r\nCall-ID: c1\r\n\
//!      CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
//! );
//! let Ok(Message::Request(options)) = parse_datagram(Bytes::from(text), &Limits::default()) else {
//!     unreachable!()
//! };
//! let client = uac.send_request(now, Remote::unreliable("uas"), options).unwrap();
//!
//! // Driver: drain transmits, deliver them (here directly), arm poll_timeout().
//! let t = uac.poll_transmit().unwrap();
//! let msg = parse_datagram(t.payload, &Limits::default()).unwrap();
//! let Incoming::Request { key, request, .. } = uas.handle_incoming(now, Remote::unreliable("uac"), msg)
//! else {
//!     unreachable!()
//! };
//! uas.send_response(now, key, response_to(&request, 200, Some("b1")).unwrap()).unwrap();
//! let t = uas.poll_transmit().unwrap();
//! let msg = parse_datagram(t.payload, &Limits::default()).unwrap();
//! match uac.handle_incoming(now, Remote::unreliable("uas"), msg) {
//!     Incoming::Response { key, response } => {
//!         assert_eq!(key, client);
//!         assert_eq!(response.status().as_u16(), 200);
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! // Timer K (client) and J (server) keep absorbing retransmissions, then end.
//! assert!(uac.poll_timeout().is_some() && uas.poll_timeout().is_some());
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;

use bytes::Bytes;

mod fsm;
mod key;
mod keymap;
use keymap::KeyMap;
pub mod time;
mod wire;

pub use fsm::{Kind, State, Timer};
pub use key::{BranchGenerator, MAGIC_COOKIE};
pub use time::{Config, ConfigError, Instant};
pub use wire::{FactsError, build_ack, build_cancel, build_trying, response_to};

use fsm::{Action, Class, Fsm, Input, Refused};
use key::{ClientKey, ServerKey};

use crate::{Message, Request, Response};

/// Names one transaction for as long as it lives; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransactionId(u64);

/// Hashes [`TransactionId`]s for maps keyed by them (the layer's own table, and a TU's
/// bookkeeping per transaction): the ids are a counter this layer assigns, never data a peer
/// chooses, so a keyed SipHash buys nothing there. One multiply (Fibonacci hashing) spreads the
/// counter over the high bits hashbrown uses for its control bytes; the low bits stay distinct
/// for consecutive ids.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `TransactionId` (it hashes as one u64); a correct fallback for other keys.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// [`std::hash::BuildHasher`] of [`IdHasher`]: `HashMap<TransactionId, V, IdHash>`.
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

/// A map keyed by [`TransactionId`] with the cheap [`IdHasher`].
pub type IdMap<V> = HashMap<TransactionId, V, IdHash>;

impl TransactionId {
    /// The number behind the id (for logs).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx{}", self.0)
    }
}

/// Where a message came from or goes to: the driver's peer/transport id and
/// whether that transport is reliable (TCP, TLS, SCTP: no retransmissions,
/// zero wait timers) or not (UDP).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Remote<P> {
    /// The driver's name for the peer (address, connection id).
    pub peer: P,
    /// Whether the transport is reliable (stream) rather than datagram.
    pub reliable: bool,
}

impl<P> Remote<P> {
    /// An unreliable (datagram) peer.
    pub fn unreliable(peer: P) -> Self {
        Remote {
            peer,
            reliable: false,
        }
    }

    /// A reliable (stream) peer.
    pub fn reliable(peer: P) -> Self {
        Remote {
            peer,
            reliable: true,
        }
    }
}

/// Bytes the driver must send to `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<P> {
    /// Where to send it (the `peer` of the transaction's [`Remote`]).
    pub peer: P,
    /// One complete SIP message.
    pub payload: Bytes,
    /// The transaction that sent it; report a send failure with
    /// [`TransactionLayer::handle_transport_error`]. `None` for stateless sends.
    pub transaction: Option<TransactionId>,
}

/// What a received message means for the TU.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A new request created server transaction `key`. The TU answers it with
    /// [`TransactionLayer::send_response`]. For a CANCEL, `cancels` is the
    /// INVITE server transaction it matches (§9.2); `None` means the TU
    /// should answer 481. The TU answers a matched CANCEL 200 and, if
    /// [`TransactionLayer::state`] of the INVITE is still `Proceeding`, the
    /// INVITE 487.
    Request {
        /// The new server transaction.
        key: TransactionId,
        /// The request.
        request: Request,
        /// For CANCEL: the INVITE server transaction it cancels.
        cancels: Option<TransactionId>,
    },
    /// An ACK the TU must see: the ACK for a 2xx (`transaction` is the INVITE
    /// server transaction that sent the 2xx while it is in Accepted; the ACK
    /// stopped its 2xx retransmissions), or one that matches nothing
    /// (`None`). ACKs for non-2xx finals are absorbed instead.
    Ack {
        /// The ACK.
        request: Request,
        /// The INVITE server transaction it acknowledges, if still alive.
        transaction: Option<TransactionId>,
    },
    /// A response for client transaction `key` (provisional, final, or a 2xx
    /// retransmission of an INVITE, which the TU answers with a new ACK).
    Response {
        /// The client transaction.
        key: TransactionId,
        /// The response.
        response: Response,
    },
    /// A new request arrived while `Config::max_transactions` are alive; no
    /// transaction was created. The TU answers 503 (with Retry-After)
    /// statelessly or drops it.
    Overloaded {
        /// The request, for a stateless answer.
        request: Request,
    },
    /// A retransmission handled by transaction `key` (answered, or dropped).
    Absorbed {
        /// The transaction that absorbed it.
        key: TransactionId,
    },
    /// A response that matches no client transaction. A UA discards it
    /// (§8.1.3.1); a stateless proxy may forward it.
    StrayResponse {
        /// The response.
        response: Response,
    },
    /// The message lacks what matching needs (top Via, CSeq, Call-ID…).
    /// RFC 3261 §16.3/§18.1.2: a response is discarded; a request that has a
    /// top Via can be answered 400 statelessly by the TU.
    Invalid {
        /// The message.
        message: Message,
        /// What is missing or malformed.
        error: FactsError,
    },
}

/// Something the TU learns without having asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Timer B or F (client: no final response in time) or Timer H (server
    /// INVITE: the ACK for our non-2xx never came), or Timer L with no ACK
    /// for our 2xx (the TU should end the session with BYE, §13.3.1.4). The
    /// TU treats a client timeout as a 408.
    Timeout {
        /// The transaction.
        key: TransactionId,
    },
    /// The driver reported that sending for this transaction failed; treat
    /// like a 503 (client) or give up (server).
    TransportError {
        /// The transaction.
        key: TransactionId,
    },
    /// The transaction is gone; its id will never appear again.
    Terminated {
        /// The transaction.
        key: TransactionId,
    },
}

/// Why a `send_*` call was refused. Nothing was sent and no state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No live transaction has this id (it may have terminated).
    UnknownTransaction(TransactionId),
    /// `send_response` on a client transaction.
    NotAServerTransaction(TransactionId),
    /// `cancel` on something other than a client INVITE transaction.
    NotAClientInvite(TransactionId),
    /// ACK is never a transaction; use [`TransactionLayer::send_stateless`].
    AckIsNotATransaction,
    /// The request has no usable top Via / CSeq / Call-ID.
    Facts(FactsError),
    /// The top Via branch lacks the `z9hG4bK` magic cookie (§8.1.1.7).
    BranchWithoutMagicCookie,
    /// Another client transaction already uses this branch and method.
    DuplicateBranch,
    /// The status code is outside 100–699.
    InvalidStatus(u16),
    /// `Config::max_transactions` are alive.
    Overloaded,
    /// The response's top Via or CSeq differs from the request's (it
    /// answers another request).
    ResponseMismatch,
    /// The transaction's state forbids this response (e.g. a second final).
    ResponseNotAllowed(State),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownTransaction(id) => write!(f, "no live transaction {id}"),
            SendError::NotAServerTransaction(id) => write!(f, "{id} is a client transaction"),
            SendError::NotAClientInvite(id) => write!(f, "{id} is not a client INVITE transaction"),
            SendError::AckIsNotATransaction => {
                f.write_str("ACK is sent statelessly, not as a transaction")
            }
            SendError::Facts(e) => write!(f, "request cannot be matched: {e}"),
            SendError::BranchWithoutMagicCookie => {
                f.write_str("top Via branch lacks the z9hG4bK magic cookie")
            }
            SendError::DuplicateBranch => {
                f.write_str("a client transaction already uses this branch")
            }
            SendError::InvalidStatus(s) => write!(f, "status code {s} is outside 100-699"),
            SendError::Overloaded => f.write_str("transaction table full"),
            SendError::ResponseMismatch => {
                f.write_str("response's top Via or CSeq differs from the request's")
            }
            SendError::ResponseNotAllowed(s) => write!(f, "response not allowed in state {s:?}"),
        }
    }
}

impl std::error::Error for SendError {}

struct Tx<P> {
    fsm: Fsm,
    peer: P,
    /// Client: the request we sent. Server: the request that created it — dropped once a
    /// non-INVITE server transaction has sent its final response (nothing needs it any more:
    /// request copies are matched by key and answered with `last_response`), so the 32 s of
    /// Timer J do not keep the parsed request alive. Boxed: a parsed request is about 1 KiB
    /// inline (its header index), and inline even `None` would keep that room for the 32 s.
    request: Option<Box<Request>>,
    /// Client: the encoded request, retransmitted as is.
    request_bytes: Bytes,
    /// Client INVITE: the ACK for the non-2xx final, resent for copies of it.
    ack: Option<Bytes>,
    /// Server: the last response sent.
    last_response: Option<Bytes>,
    client_key: Option<ClientKey>,
    server_keys: Vec<ServerKey>,
    armed: Vec<(Timer, Instant)>,
}

/// What the actions of one step meant for the message that caused it.
#[derive(Default)]
struct Outcome {
    to_tu: bool,
}

/// All transactions of one SIP endpoint. `P` identifies a peer/transport to
/// the driver (an address, a connection id); the layer only copies it.
pub struct TransactionLayer<P> {
    config: Config,
    branches: BranchGenerator,
    next_id: u64,
    /// Boxed: a `Tx` is a few hundred bytes; growing the table then moves pointers, not
    /// transactions (a REGISTER load of new clients grows it for 32 s).
    txs: IdMap<Box<Tx<P>>>,
    /// Keyed by data peers choose: hashed once per key (see [`keymap`]).
    clients: KeyMap<ClientKey, TransactionId>,
    servers: KeyMap<ServerKey, TransactionId>,
    timers: BTreeSet<(Instant, TransactionId, Timer)>,
    transmits: VecDeque<Transmit<P>>,
    events: VecDeque<Event>,
    scratch: Vec<Action>,
}

impl<P: Clone> TransactionLayer<P> {
    /// A layer with `config` timers; `branch_seed` seeds
    /// [`new_branch`](Self::new_branch) (take it from the OS RNG in the
    /// driver, a constant in tests).
    pub fn new(config: Config, branch_seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(TransactionLayer {
            config,
            branches: BranchGenerator::new(branch_seed),
            next_id: 0,
            txs: IdMap::default(),
            clients: KeyMap::default(),
            servers: KeyMap::default(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
        })
    }

    /// The timer configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A fresh RFC 3261 branch (`z9hG4bK…`) for the top Via of a request the
    /// TU is about to send.
    pub fn new_branch(&mut self) -> String {
        self.branches.next_branch()
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether no transaction is alive.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Kind and state of a live transaction.
    pub fn state(&self, key: TransactionId) -> Option<(Kind, State)> {
        self.txs.get(&key).map(|t| (t.fsm.kind(), t.fsm.state()))
    }

    /// The request of a live transaction (client: as sent; server: as received).
    pub fn request(&self, key: TransactionId) -> Option<&Request> {
        self.txs.get(&key).and_then(|t| t.request.as_deref())
    }

    /// Starts a client transaction for `request` (any method but ACK) towards
    /// `remote` and queues its first transmission. The top Via must carry an
    /// RFC 3261 branch, e.g. from [`new_branch`](Self::new_branch).
    pub fn send_request(
        &mut self,
        now: Instant,
        remote: Remote<P>,
        request: Request,
    ) -> Result<TransactionId, SendError> {
        let facts = wire::request_facts(&request, wire::Depth::Match).map_err(SendError::Facts)?;
        if facts.method.as_ref() == b"ACK" {
            return Err(SendError::AckIsNotATransaction);
        }
        let branch = facts.branch.ok_or(SendError::BranchWithoutMagicCookie)?;
        if !key::is_rfc3261_branch(&branch) {
            return Err(SendError::BranchWithoutMagicCookie);
        }
        let ckey = ClientKey::for_request(branch, facts.method.clone());
        if self.clients.contains_key(&ckey) {
            return Err(SendError::DuplicateBranch);
        }
        if self.txs.len() >= self.config.max_transactions {
            return Err(SendError::Overloaded);
        }
        let kind = if facts.method.as_ref() == b"INVITE" {
            Kind::ClientInvite
        } else {
            Kind::ClientNonInvite
        };
        let id = self.allocate_id();
        let request_bytes = wire::encode_request(&request);
        self.clients.insert(ckey.clone(), id);
        self.txs.insert(
            id,
            Box::new(Tx {
                fsm: Fsm::new(kind, remote.reliable),
                peer: remote.peer,
                request: Some(Box::new(request)),
                request_bytes,
                ack: None,
                last_response: None,
                client_key: Some(ckey),
                server_keys: Vec::new(),
                armed: Vec::new(),
            }),
        );
        self.step(now, id, Input::Start, None);
        Ok(id)
    }

    /// Sends `response` through server transaction `key` (which retransmits
    /// it as the transport requires and answers request copies with it).
    pub fn send_response(
        &mut self,
        now: Instant,
        key: TransactionId,
        response: Response,
    ) -> Result<(), SendError> {
        let tx = self
            .txs
            .get_mut(&key)
            .ok_or(SendError::UnknownTransaction(key))?;
        if tx.fsm.kind().is_client() {
            return Err(SendError::NotAServerTransaction(key));
        }
        let status = wire::status_code(&response);
        let class = Class::of(status).ok_or(SendError::InvalidStatus(status))?;
        // Without the request (a non-INVITE transaction that already answered finally) the
        // state machine refuses any further response below.
        if let Some(request) = &tx.request
            && !wire::response_answers(request, &response)
        {
            return Err(SendError::ResponseMismatch);
        }
        let mut actions = std::mem::take(&mut self.scratch);
        actions.clear();
        let result = tx
            .fsm
            .step(Input::TuResponse(class), &self.config, &mut actions);
        if let Err(refused) = result {
            self.scratch = actions;
            return Err(match refused {
                Refused::ResponseNotAllowed(s) => SendError::ResponseNotAllowed(s),
                Refused::WrongKind(_) => SendError::NotAServerTransaction(key),
            });
        }
        tx.last_response = Some(wire::encode_response(&response));
        if class != Class::Provisional && tx.fsm.kind() == Kind::ServerNonInvite {
            tx.request = None;
        }
        // Only INVITE transactions gain keys with their final response (their ACK's); the To
        // tag is not parsed for the others.
        if class != Class::Provisional && tx.fsm.kind() == Kind::ServerInvite {
            let to_tag = wire::to_tag(&response);
            // RFC 2543 peers ACK with the To tag of our final response.
            let mut new_keys: Vec<ServerKey> = tx
                .server_keys
                .iter()
                .filter_map(|k| k.ack_key(to_tag.clone()))
                .collect();
            // The ACK for a 2xx has a new branch: match it on dialog fields.
            if class == Class::Success
                && let Some(request) = &tx.request
                && let Ok(facts) = wire::request_facts(request, wire::Depth::Dialog)
            {
                new_keys.push(ServerKey::dialog_ack(&facts, to_tag));
            }
            for k in new_keys {
                if !tx.server_keys.contains(&k) {
                    self.servers.insert(k.clone(), key);
                    tx.server_keys.push(k);
                }
            }
        }
        self.apply(now, key, &mut actions, None);
        self.scratch = actions;
        Ok(())
    }

    /// Sends the final `response` of non-INVITE server transaction `key` once and ends the
    /// transaction at once, keeping nothing for Timer J: a stateless answer (RFC 3261 §8.2.7).
    /// A retransmission of the request then arrives as a new request ([`Incoming::Request`]) and
    /// is answered again, so use it only for answers that are safe to repeat and cheap to
    /// recompute — e.g. a REGISTER's digest challenge, which §26.3.2.4 asks servers to send
    /// statelessly so that unauthenticated requests cannot fill the server with transactions.
    /// Queues [`Event::Terminated`]. Refused (nothing sent, nothing changed) for client and INVITE
    /// transactions, provisional or invalid statuses, a response that answers another request,
    /// and a transaction that already sent its final response.
    pub fn respond_and_forget(
        &mut self,
        key: TransactionId,
        response: Response,
    ) -> Result<(), SendError> {
        let tx = self
            .txs
            .get(&key)
            .ok_or(SendError::UnknownTransaction(key))?;
        if tx.fsm.kind() != Kind::ServerNonInvite {
            return Err(SendError::NotAServerTransaction(key));
        }
        let status = wire::status_code(&response);
        match Class::of(status) {
            None => return Err(SendError::InvalidStatus(status)),
            Some(Class::Provisional) => {
                return Err(SendError::ResponseNotAllowed(tx.fsm.state()));
            }
            Some(_) => {}
        }
        // A non-INVITE server transaction drops its request with its final response.
        let Some(request) = &tx.request else {
            return Err(SendError::ResponseNotAllowed(tx.fsm.state()));
        };
        if !wire::response_answers(request, &response) {
            return Err(SendError::ResponseMismatch);
        }
        self.transmits.push_back(Transmit {
            peer: tx.peer.clone(),
            payload: wire::encode_response(&response),
            transaction: None,
        });
        self.remove(key);
        Ok(())
    }

    /// Queues `message` for `peer` outside any transaction: the ACK for a
    /// 2xx (§13.2.2.4), a stateless reply or a stateless forward.
    pub fn send_stateless(&mut self, peer: P, message: &Message) {
        self.transmits.push_back(Transmit {
            peer,
            payload: wire::encode(message),
            transaction: None,
        });
    }

    /// Builds the CANCEL for client INVITE transaction `key` (§9.1). Send it
    /// with [`send_request`](Self::send_request); RFC 3261 asks to wait for
    /// a provisional response first.
    pub fn cancel(&self, key: TransactionId) -> Result<Request, SendError> {
        let tx = self
            .txs
            .get(&key)
            .ok_or(SendError::UnknownTransaction(key))?;
        if tx.fsm.kind() != Kind::ClientInvite {
            return Err(SendError::NotAClientInvite(key));
        }
        // A client transaction keeps its request for its whole life.
        let request = tx
            .request
            .as_ref()
            .ok_or(SendError::UnknownTransaction(key))?;
        build_cancel(request).map_err(SendError::Facts)
    }

    /// Ends transaction `key` now without further transmissions (e.g. the TU
    /// gives up on an INVITE 64·T1 after its CANCEL, §9.1). Queues
    /// [`Event::Terminated`]; returns whether it existed.
    pub fn terminate(&mut self, key: TransactionId) -> bool {
        if self.txs.contains_key(&key) {
            self.remove(key);
            true
        } else {
            false
        }
    }

    /// Matches a received message against the transactions; see [`Incoming`].
    pub fn handle_incoming(
        &mut self,
        now: Instant,
        remote: Remote<P>,
        message: Message,
    ) -> Incoming {
        match message {
            Message::Request(request) => self.handle_request(now, remote, request),
            Message::Response(response) => self.handle_response(now, response),
        }
    }

    fn handle_response(&mut self, now: Instant, response: Response) -> Incoming {
        let facts = match wire::response_facts(&response) {
            Ok(f) => f,
            Err(error) => {
                return Incoming::Invalid {
                    message: Message::Response(response),
                    error,
                };
            }
        };
        let Some(class) = Class::of(facts.status) else {
            return Incoming::Invalid {
                message: Message::Response(response),
                error: FactsError::InvalidStatus,
            };
        };
        let Some(id) = ClientKey::for_response(&facts).and_then(|k| self.clients.get(&k).copied())
        else {
            return Incoming::StrayResponse { response };
        };
        let outcome = self.step(now, id, Input::Response(class), Some(&response));
        if outcome.to_tu {
            Incoming::Response { key: id, response }
        } else {
            Incoming::Absorbed { key: id }
        }
    }

    fn handle_request(&mut self, now: Instant, remote: Remote<P>, request: Request) -> Incoming {
        let facts = match wire::request_facts(&request, wire::Depth::Match) {
            Ok(f) => f,
            Err(error) => {
                return Incoming::Invalid {
                    message: Message::Request(request),
                    error,
                };
            }
        };
        let is_ack = facts.method.as_ref() == b"ACK";
        let lookup = ServerKey::lookup(&facts);
        let matched = self.servers.get(&lookup.key).copied().or_else(|| {
            is_ack
                .then(|| ServerKey::dialog_ack(&facts, facts.to_tag.clone()))
                .and_then(|k| self.servers.get(&k).copied())
        });
        if let Some(id) = matched {
            let input = if is_ack {
                Input::Ack
            } else {
                Input::RequestRetransmit
            };
            let outcome = self.step(now, id, input, None);
            return if outcome.to_tu {
                Incoming::Ack {
                    request,
                    transaction: Some(id),
                }
            } else {
                Incoming::Absorbed { key: id }
            };
        }
        if is_ack {
            return Incoming::Ack {
                request,
                transaction: None,
            };
        }
        if self.txs.len() >= self.config.max_transactions {
            return Incoming::Overloaded { request };
        }
        let cancels = lookup
            .cancels
            .and_then(|k| self.servers.get(&k).copied())
            .filter(|id| {
                self.txs
                    .get(id)
                    .is_some_and(|t| t.fsm.kind() == Kind::ServerInvite)
            });
        let kind = if facts.method.as_ref() == b"INVITE" {
            Kind::ServerInvite
        } else {
            Kind::ServerNonInvite
        };
        let id = self.allocate_id();
        let server_key = lookup.key.detached();
        self.servers.insert(server_key.clone(), id);
        self.txs.insert(
            id,
            Box::new(Tx {
                fsm: Fsm::new(kind, remote.reliable),
                peer: remote.peer,
                request: Some(Box::new(request.clone())),
                request_bytes: Bytes::new(),
                ack: None,
                last_response: None,
                client_key: None,
                server_keys: vec![server_key],
                armed: Vec::new(),
            }),
        );
        self.step(now, id, Input::Start, None);
        Incoming::Request {
            key: id,
            request,
            cancels,
        }
    }

    /// The driver could not send a [`Transmit`] of transaction `key`
    /// (ICMP unreachable, connection refused/reset). Queues
    /// [`Event::TransportError`] and ends the transaction (§17.1.4, §17.2.4).
    pub fn handle_transport_error(&mut self, now: Instant, key: TransactionId) {
        if self.txs.contains_key(&key) {
            self.step(now, key, Input::TransportError, None);
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has work; `None` when no timer is armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _, _)| at)
    }

    /// Fires every timer due at or before `now` (retransmissions, timeouts,
    /// wait-state ends). Re-armed retransmit timers count from `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(tx) = self.txs.get_mut(&id) {
                tx.armed.retain(|&(t, _)| t != timer);
                self.step(now, id, Input::Timer(timer), None);
            }
        }
    }

    /// The next message to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit<P>> {
        self.transmits.pop_front()
    }

    /// The next event for the TU, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn allocate_id(&mut self) -> TransactionId {
        self.next_id += 1;
        TransactionId(self.next_id)
    }

    fn step(
        &mut self,
        now: Instant,
        id: TransactionId,
        input: Input,
        response: Option<&Response>,
    ) -> Outcome {
        let mut actions = std::mem::take(&mut self.scratch);
        actions.clear();
        let accepted = match self.txs.get_mut(&id) {
            Some(tx) => tx.fsm.step(input, &self.config, &mut actions).is_ok(),
            None => false,
        };
        let outcome = if accepted {
            self.apply(now, id, &mut actions, response)
        } else {
            Outcome::default()
        };
        self.scratch = actions;
        outcome
    }

    fn apply(
        &mut self,
        now: Instant,
        id: TransactionId,
        actions: &mut Vec<Action>,
        response: Option<&Response>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        for action in actions.drain(..) {
            let Some(tx) = self.txs.get_mut(&id) else {
                break;
            };
            match action {
                Action::SendRequest => self.transmits.push_back(Transmit {
                    peer: tx.peer.clone(),
                    payload: tx.request_bytes.clone(),
                    transaction: Some(id),
                }),
                Action::SendAck => {
                    if tx.ack.is_none() {
                        tx.ack = response
                            .zip(tx.request.as_deref())
                            .and_then(|(r, request)| build_ack(request, r).ok())
                            .map(|m| wire::encode_request(&m));
                    }
                    if let Some(ack) = &tx.ack {
                        self.transmits.push_back(Transmit {
                            peer: tx.peer.clone(),
                            payload: ack.clone(),
                            transaction: Some(id),
                        });
                    }
                }
                Action::SendTrying => {
                    if let Some(request) = &tx.request
                        && let Ok(trying) = build_trying(request)
                    {
                        tx.last_response = Some(wire::encode_response(&trying));
                    }
                    if let Some(resp) = &tx.last_response {
                        self.transmits.push_back(Transmit {
                            peer: tx.peer.clone(),
                            payload: resp.clone(),
                            transaction: Some(id),
                        });
                    }
                }
                Action::SendResponse | Action::ResendResponse => {
                    if let Some(resp) = &tx.last_response {
                        self.transmits.push_back(Transmit {
                            peer: tx.peer.clone(),
                            payload: resp.clone(),
                            transaction: Some(id),
                        });
                    }
                }
                Action::ToTu => outcome.to_tu = true,
                Action::Absorb => {}
                Action::Arm(timer, after) => {
                    if let Some(pos) = tx.armed.iter().position(|&(t, _)| t == timer) {
                        let (_, at) = tx.armed.swap_remove(pos);
                        self.timers.remove(&(at, id, timer));
                    }
                    let at = now + after;
                    tx.armed.push((timer, at));
                    self.timers.insert((at, id, timer));
                }
                Action::Disarm(timer) => {
                    if let Some(pos) = tx.armed.iter().position(|&(t, _)| t == timer) {
                        let (_, at) = tx.armed.swap_remove(pos);
                        self.timers.remove(&(at, id, timer));
                    }
                }
                Action::ReportTimeout => self.events.push_back(Event::Timeout { key: id }),
                Action::ReportTransportError => {
                    self.events.push_back(Event::TransportError { key: id })
                }
                Action::Terminate => {
                    self.remove(id);
                    break;
                }
            }
        }
        outcome
    }

    fn remove(&mut self, id: TransactionId) {
        let Some(tx) = self.txs.remove(&id) else {
            return;
        };
        for (timer, at) in tx.armed {
            self.timers.remove(&(at, id, timer));
        }
        if let Some(k) = tx.client_key {
            self.clients.remove(&k);
        }
        for k in tx.server_keys {
            if self.servers.get(&k) == Some(&id) {
                self.servers.remove(&k);
            }
        }
        self.events.push_back(Event::Terminated { key: id });
    }
}

impl<P> fmt::Debug for TransactionLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionLayer")
            .field("transactions", &self.txs.len())
            .field("timers", &self.timers.len())
            .field("queued_transmits", &self.transmits.len())
            .field("queued_events", &self.events.len())
            .finish()
    }
}

#[cfg(test)]
mod id_hash_tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn consecutive_ids_hash_apart_and_spread_the_control_bits() {
        let build = IdHash::default();
        let hashes: Vec<u64> = (0..4096u64)
            .map(|n| build.hash_one(TransactionId(n)))
            .collect();
        let distinct: std::collections::HashSet<u64> = hashes.iter().copied().collect();
        assert_eq!(distinct.len(), hashes.len());
        // hashbrown takes its 7-bit control byte from the top bits: all 128 values occur.
        let top7: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(top7.len(), 128);
    }

    #[test]
    fn a_transaction_in_its_timer_j_wait_is_small() {
        // Every UDP non-INVITE transaction stays 32 s after its answer: at 2 000 REGISTER/s
        // that is 64 000 of them. The parsed request (about 1 KiB inline) must not be part of
        // each; it is boxed and dropped with the final response.
        let request = std::mem::size_of::<Request>();
        let tx = std::mem::size_of::<Tx<std::net::SocketAddr>>();
        assert!(
            request > 512,
            "Request is {request} bytes: revisit this bound"
        );
        assert!(tx < 320, "Tx is {tx} bytes");
    }

    #[test]
    fn id_map_finds_what_it_holds() {
        let mut m: IdMap<u64> = IdMap::default();
        for n in 0..10_000u64 {
            m.insert(TransactionId(n * 7), n);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&TransactionId(7 * 1234)), Some(&1234));
        assert_eq!(m.get(&TransactionId(5)), None);
    }
}

#[cfg(test)]
mod stateless_answer_tests {
    use bytes::Bytes;

    use super::*;
    use crate::{Limits, parse_datagram};

    const REGISTER: &[u8] = b"REGISTER sip:open.lab SIP/2.0\r\n\
        Via: SIP/2.0/UDP 198.18.1.2:5060;branch=z9hG4bKst1\r\n\
        From: <sip:neo@open.lab>;tag=a1\r\n\
        To: <sip:neo@open.lab>\r\n\
        Call-ID: st1@198.18.1.2\r\n\
        CSeq: 1 REGISTER\r\n\
        Content-Length: 0\r\n\r\n";

    fn incoming(layer: &mut TransactionLayer<u8>, at: Instant) -> Incoming {
        let msg = parse_datagram(Bytes::from_static(REGISTER), &Limits::default())
            .expect("the REGISTER parses");
        layer.handle_incoming(at, Remote::unreliable(1), msg)
    }

    fn layer() -> TransactionLayer<u8> {
        TransactionLayer::new(Config::default(), 1).expect("default config")
    }

    #[test]
    fn a_stateless_answer_keeps_nothing_and_a_retransmission_is_a_new_request() {
        let mut layer = layer();
        let Incoming::Request { key, request, .. } = incoming(&mut layer, Instant::ZERO) else {
            panic!("a new request");
        };
        let challenge = response_to(&request, 401, Some("t1")).expect("builds");
        layer
            .respond_and_forget(key, challenge)
            .expect("a non-INVITE server transaction answers statelessly");
        let sent = layer.poll_transmit().expect("the 401 is queued");
        assert!(sent.payload.starts_with(b"SIP/2.0 401 "));
        assert_eq!(sent.peer, 1);
        assert!(sent.transaction.is_none());
        assert!(layer.poll_transmit().is_none());
        assert_eq!(layer.len(), 0, "no transaction kept for Timer J");
        assert!(layer.poll_timeout().is_none(), "no timer armed");
        assert!(matches!(
            layer.poll_event(),
            Some(Event::Terminated { key: k }) if k == key
        ));
        // The retransmission is not absorbed: the TU sees it again (and challenges it again).
        let later = Instant::ZERO + std::time::Duration::from_millis(500);
        let Incoming::Request { key: again, .. } = incoming(&mut layer, later) else {
            panic!("a retransmission after a stateless answer reaches the TU again");
        };
        assert_ne!(again, key);
        assert_eq!(
            layer.respond_and_forget(key, response_to(&request, 401, None).expect("builds")),
            Err(SendError::UnknownTransaction(key))
        );
    }

    #[test]
    fn a_stateless_answer_is_refused_where_it_would_break_the_state_machine() {
        let mut layer = layer();
        let Incoming::Request { key, request, .. } = incoming(&mut layer, Instant::ZERO) else {
            panic!("a new request");
        };
        let trying = response_to(&request, 100, None).expect("builds");
        assert!(matches!(
            layer.respond_and_forget(key, trying),
            Err(SendError::ResponseNotAllowed(_))
        ));
        assert_eq!(layer.len(), 1, "a refusal changes nothing");
        assert!(layer.poll_transmit().is_none());
        // After a stateful final answer the request is gone: no second (stateless) final.
        layer
            .send_response(
                Instant::ZERO,
                key,
                response_to(&request, 200, Some("t")).expect("builds"),
            )
            .expect("answers");
        assert!(layer.poll_transmit().is_some());
        assert!(matches!(
            layer.respond_and_forget(key, response_to(&request, 401, None).expect("builds")),
            Err(SendError::ResponseNotAllowed(_))
        ));
        assert_eq!(layer.len(), 1, "the 200's transaction stays for Timer J");
    }
}
