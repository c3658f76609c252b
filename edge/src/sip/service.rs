//! The transaction user on each worker: every parsed message from the transport pool goes through
//! this worker's [`TransactionLayer`], and what reaches the TU is answered here — REGISTER by the
//! registrar (the 200 OK leaves only once the store has made the binding durable), OPTIONS for the
//! edge itself, everything else with the right refusal. Nothing is ever forwarded.
//!
//! INVITEs and everything of a call go to the privacy B2BUA ([`super::calls`]), which runs on
//! the call worker (worker 0); the other workers hand such messages over to it.
//!
//! Threads: one `Worker` per pool thread, all sharing one [`ServiceShared`]. The registrar sits
//! behind one mutex (a REGISTER holds it for a few microseconds); the store's group-commit thread
//! hands finished commits back to the worker that owns the transaction through a per-worker queue
//! and [`PoolHandle::wake`].
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use crossbeam::queue::SegQueue;
use sipveil_b2bua::CallRef;
use sipveil_registrar::{FlowInfo, RegisterOutcome, Registrar, Report, StoreOp};
use sipveil_sip::transaction::{
    Config as TxConfig, Event, IdMap, Incoming, Instant, Remote, TransactionId, TransactionLayer,
};
use sipveil_sip::validate::check_extensions;
use sipveil_sip::{
    ErrorAnswer, Header, HeaderName, Host, Limits, Message, Method, Request, Response, StatusCode,
};

use super::calls::{CALL_WORKER, CallHub, CallMeta, CallView};
use super::transport::{FlowId, Handler, Io, PoolHandle, Proto};
use crate::config::CallSettings;
use crate::media::MediaRelay;
use crate::metrics::Metrics;
use crate::store::Committer;

/// How often worker 0 drops expired bindings (and deletes them from the store).
const EXPIRY_PERIOD: Duration = Duration::from_secs(1);
/// Retry-After (seconds) on a 503 when the store's queue or the transaction table is full.
const RETRY_AFTER_SECS: &str = "1";
/// Methods the edge answers itself (OPTIONS `Allow`).
const ALLOW: &str = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, UPDATE, INFO, NOTIFY";
/// Extensions a `Require` may name (RFC 5626 outbound).
const SUPPORTED: &[&str] = &["outbound"];

/// Settings a reload may change.
#[derive(Clone, Debug, Default)]
pub struct ServiceSettings {
    /// `Server` header value on every answer; `None` = no header.
    pub server: Option<Bytes>,
    /// Host names that mean the edge itself (lowercase).
    pub edge_names: Vec<String>,
    /// The edge's own listen addresses (a Request-URI with one of these as host is the edge).
    pub edge_addrs: Vec<IpAddr>,
}

/// A finished store commit on its way back to the worker that owns the transaction.
struct Completion {
    key: TransactionId,
    response: Response,
    durable: bool,
}

/// What all workers share.
pub struct ServiceShared {
    /// The registrar (bindings, policies, digest state).
    pub registrar: Mutex<Registrar>,
    /// The store's group-commit thread.
    pub committer: Committer,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Reloadable settings.
    pub settings: RwLock<Arc<ServiceSettings>>,
    /// SIP parse/validation limits (those of the transport).
    pub limits: Limits,
    completions: Vec<SegQueue<Completion>>,
    commands: Vec<SegQueue<Command>>,
    tag_key: std::collections::hash_map::RandomState,
    /// The call side: relay, settings, listing.
    pub calls: CallsShared,
}

/// What the call worker needs from outside, and what it publishes.
pub struct CallsShared {
    /// The media relay the calls anchor on (`None`: calls are refused with 503).
    pub relay: Option<Arc<Mutex<MediaRelay>>>,
    /// The relay's A and B addresses (`[media] addresses`).
    pub media: (IpAddr, IpAddr),
    /// `[privacy]`, `[calls]`, `[[peer]]` (replaced on reload).
    pub settings: RwLock<Arc<CallSettings>>,
    /// The UDP listen addresses (peer routes are sent from the first of the right family).
    pub udp_local: RwLock<Vec<std::net::SocketAddr>>,
    /// Active calls for `sipveil calls`.
    pub view: Mutex<Vec<CallView>>,
}

impl CallsShared {
    /// Call settings in force.
    pub fn settings(&self) -> Arc<CallSettings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Work handed to a worker from outside its thread (the control socket, other workers).
#[expect(
    clippy::large_enum_variant,
    reason = "a call message crosses once per hand-over; boxing it would allocate on every one"
)]
pub enum Command {
    /// Send OPTIONS to `contact` down `flow` (the flow the binding registered on) and report.
    Qualify {
        /// The binding's address of record.
        aor: String,
        /// The binding's Contact URI.
        contact: String,
        /// The flow it registered on.
        flow: FlowId,
        /// Where the outcome goes.
        reply: crossbeam::channel::Sender<QualifyResult>,
    },
    /// A message of a call, received by another worker, for the call worker.
    Call {
        /// The flow it arrived on.
        from: FlowId,
        /// The message as parsed.
        msg: Message,
    },
}

/// The outcome of one qualify probe.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QualifyResult {
    /// The binding's address of record.
    pub aor: String,
    /// The binding's Contact URI.
    pub contact: String,
    /// `udp`, `tcp` or `tls`.
    pub proto: &'static str,
    /// Where the probe went.
    pub peer: std::net::SocketAddr,
    /// The final status code, if one came back.
    pub status: Option<u16>,
    /// Round trip in microseconds, if answered.
    pub rtt_us: Option<u64>,
    /// Why there is no answer (timeout, flow closed, bad contact...).
    pub error: Option<String>,
}

impl ServiceShared {
    /// Shared state for `workers` workers.
    pub fn new(
        registrar: Registrar,
        committer: Committer,
        metrics: Arc<Metrics>,
        settings: ServiceSettings,
        limits: Limits,
        workers: usize,
        calls: CallsShared,
    ) -> Arc<ServiceShared> {
        Arc::new(ServiceShared {
            registrar: Mutex::new(registrar),
            committer,
            metrics,
            settings: RwLock::new(Arc::new(settings)),
            limits,
            completions: (0..workers).map(|_| SegQueue::new()).collect(),
            commands: (0..workers).map(|_| SegQueue::new()).collect(),
            tag_key: std::collections::hash_map::RandomState::new(),
            calls,
        })
    }

    /// Queues `command` for worker `worker`; the caller wakes it. `false` if no such worker.
    pub fn push_command(&self, worker: usize, command: Command) -> bool {
        match self.commands.get(worker) {
            Some(q) => {
                q.push(command);
                true
            }
            None => false,
        }
    }

    /// Replaces the reloadable settings.
    pub fn set_settings(&self, settings: ServiceSettings) {
        if let Ok(mut s) = self.settings.write() {
            *s = Arc::new(settings);
        }
    }

    fn settings(&self) -> Arc<ServiceSettings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A To-tag for answers the edge gives itself: the same for retransmissions of one request.
    fn local_tag(&self, req: &Request) -> String {
        let mut h = self.tag_key.build_hasher();
        if let Ok(c) = req.call_id() {
            h.write(&c);
        }
        if let Some(t) = req.from_tag() {
            h.write(&t);
        }
        if let Ok(cs) = req.cseq() {
            h.write_u32(cs.seq);
        }
        format!("{:016x}", h.finish())
    }
}

/// A method's name for metric labels without allocating (the metrics bound unknown names).
fn method_label(method: &Method) -> &str {
    std::str::from_utf8(method.as_bytes()).unwrap_or("other")
}

/// Where a Request-URI points, from the edge's point of view.
enum Target {
    /// The edge itself (one of its names or addresses).
    Edge,
    /// A domain this edge serves.
    Served,
    /// Anything else: refused, never forwarded.
    Elsewhere,
}

/// The TU of one pool worker.
pub struct Worker {
    index: usize,
    shared: Arc<ServiceShared>,
    handle: PoolHandle,
    layer: TransactionLayer<FlowId>,
    epoch: StdInstant,
    /// Server transactions the TU is answering: method and when the request arrived (latency).
    pending: IdMap<(Method, StdInstant)>,
    /// Client transactions of qualify probes.
    probes: IdMap<Probe>,
    next_expiry: StdInstant,
    next_call_check: StdInstant,
    /// Where each call server transaction's request came from (the leak detector's recipient).
    call_tx_peer: IdMap<IpAddr>,
    call_ids: u64,
    /// The B2BUA (the call worker only).
    hub: Option<CallHub>,
    /// Wakes this worker once per store commit that finished some of its REGISTERs.
    store_flush: crate::store::Flush,
    /// This worker's handles on its per-request metric series.
    counters: crate::metrics::WorkerCounters,
}

struct Probe {
    result: QualifyResult,
    sent: StdInstant,
    reply: crossbeam::channel::Sender<QualifyResult>,
}

impl Worker {
    /// The TU for worker `index`.
    pub fn new(index: usize, shared: Arc<ServiceShared>, handle: PoolHandle) -> Worker {
        let now = StdInstant::now();
        // Branches only need to be unique; the seed falls back to the clock if the kernel's
        // random source fails.
        let mut seed = [0u8; 8];
        if getrandom::getrandom(&mut seed).is_err() {
            seed = (now.elapsed().as_nanos() as u64 ^ std::process::id() as u64).to_le_bytes();
        }
        let layer =
            TransactionLayer::new(TxConfig::default(), u64::from_le_bytes(seed) ^ index as u64)
                .expect("default transaction config");
        let hub = (index == CALL_WORKER)
            .then(|| {
                let relay = shared.calls.relay.clone()?;
                let (a, b) = shared.calls.media;
                Some(CallHub::new(
                    relay,
                    a,
                    b,
                    shared.calls.settings(),
                    shared.settings().edge_addrs.clone(),
                ))
            })
            .flatten();
        let waker = handle.clone();
        let store_flush: crate::store::Flush = Arc::new(move || waker.wake(index));
        Worker {
            hub,
            store_flush,
            counters: crate::metrics::WorkerCounters::default(),
            index,
            shared,
            handle,
            layer,
            epoch: now,
            pending: IdMap::default(),
            probes: IdMap::default(),
            next_expiry: now + EXPIRY_PERIOD,
            next_call_check: now + EXPIRY_PERIOD,
            call_tx_peer: IdMap::default(),
            call_ids: 0,
        }
    }

    fn tx_now(&self, now: StdInstant) -> Instant {
        Instant::from_duration(now.saturating_duration_since(self.epoch))
    }

    fn std_at(&self, at: Instant) -> StdInstant {
        self.epoch + at.as_duration()
    }

    fn target(&self, req: &Request) -> Target {
        let settings = self.shared.settings();
        match req.uri().host() {
            Some(Host::Ipv4(a)) if settings.edge_addrs.contains(&IpAddr::V4(*a)) => Target::Edge,
            Some(Host::Ipv6(a)) if settings.edge_addrs.contains(&IpAddr::V6(*a)) => Target::Edge,
            Some(Host::Domain(name)) => {
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                let served = self
                    .shared
                    .registrar
                    .lock()
                    .map(|r| r.domain(&name).is_some())
                    .unwrap_or(false);
                if served {
                    Target::Served
                } else if settings.edge_names.contains(&name) {
                    Target::Edge
                } else {
                    Target::Elsewhere
                }
            }
            _ => Target::Elsewhere,
        }
    }

    /// Adds the configured `Server` header.
    fn finish(&self, mut response: Response) -> Response {
        if let Some(server) = &self.shared.settings().server
            && let Ok(h) = Header::new(HeaderName::Server, server)
        {
            response.headers_mut().push(h);
        }
        response
    }

    /// An answer built by the edge itself (status, optional reason, extra headers).
    fn local_answer(
        &self,
        req: &Request,
        status: StatusCode,
        reason: Option<&'static str>,
        extra: &[(HeaderName, &str)],
    ) -> Option<Response> {
        let mut b = req.response(status);
        if req.to_tag().is_none() {
            b = b.to_tag(self.shared.local_tag(req));
        }
        if let Some(r) = reason {
            b = b.reason(r);
        }
        for (name, value) in extra {
            b = b.header(name.clone(), value.to_string());
        }
        match b.build() {
            Ok(r) => Some(self.finish(r)),
            Err(e) => {
                tracing::debug!("cannot build a {} answer: {e}", status.as_u16());
                None
            }
        }
    }

    /// Sends a final (or provisional) answer on server transaction `key` and records it.
    fn respond(&mut self, io: &mut Io<'_>, key: TransactionId, response: Response) {
        let code = response.status().as_u16();
        let is_final = response.status().is_final();
        if let Err(e) = self
            .layer
            .send_response(self.tx_now(io.now()), key, response)
        {
            tracing::debug!("answer on {key} refused: {e}");
            return;
        }
        self.answered(io, key, code, is_final);
    }

    /// Counts an answer sent on `key`; a final one also records the transaction's latency and
    /// forgets the pending request.
    fn answered(&mut self, io: &Io<'_>, key: TransactionId, code: u16, is_final: bool) {
        if let Some((method, since)) = self.pending.get(&key) {
            let method_name = method_label(method);
            self.shared
                .metrics
                .response_out_cached(&mut self.counters, method_name, code);
            if is_final {
                self.shared.metrics.transaction_latency(
                    self.index,
                    method_name,
                    io.now().saturating_duration_since(*since),
                );
                self.pending.remove(&key);
            }
        }
    }

    /// A stateless answer (no transaction: validation failures, overload).
    fn respond_stateless(&mut self, io: &mut Io<'_>, from: &FlowId, response: Response) {
        let method = response
            .cseq()
            .map(|c| String::from_utf8_lossy(c.method.as_bytes()).into_owned())
            .unwrap_or_else(|_| "other".to_owned());
        self.shared
            .metrics
            .response_out(&method, response.status().as_u16());
        if let Err(e) = io.send(from, response.to_bytes()) {
            tracing::debug!("stateless answer to {from:?} not sent: {e:?}");
        }
    }

    fn on_request(
        &mut self,
        io: &mut Io<'_>,
        from: FlowId,
        key: TransactionId,
        req: Request,
        cancels: Option<TransactionId>,
    ) {
        // The flood shield: a scanner's request is reported and dropped without an answer.
        if crate::shield::feed::scanner_request(from.peer.ip(), &req) {
            self.layer.terminate(key);
            return;
        }
        self.pending.insert(key, (req.method().clone(), io.now()));
        if self.hub.is_some() && is_call_request(&req) {
            return self.on_call_request(io, from, key, req);
        }
        self.on_local_request(io, from, key, req, cancels);
    }

    fn on_local_request(
        &mut self,
        io: &mut Io<'_>,
        from: FlowId,
        key: TransactionId,
        req: Request,
        cancels: Option<TransactionId>,
    ) {
        // §8.2.2.3: a Require naming an extension the edge does not support gets 420.
        if let Err(bad) = check_extensions(&req, SUPPORTED, false) {
            let unsupported = String::from_utf8_lossy(&bad.unsupported_header()).into_owned();
            if let Some(a) = self.local_answer(
                &req,
                StatusCode::BAD_EXTENSION,
                None,
                &[(HeaderName::Unsupported, unsupported.as_str())],
            ) {
                self.respond(io, key, a);
            }
            return;
        }
        let answer = match req.method() {
            Method::Register => return self.on_register(io, from, key, req),
            Method::Options => match self.target(&req) {
                Target::Edge | Target::Served => self.local_answer(
                    &req,
                    StatusCode::OK,
                    None,
                    &[
                        (HeaderName::Allow, ALLOW),
                        (HeaderName::Accept, "application/sdp"),
                        (HeaderName::Supported, "outbound"),
                    ],
                ),
                Target::Elsewhere => self.refuse_elsewhere(&req),
            },
            // A CANCEL the transaction layer could not match (§9.2: 481).
            Method::Cancel if cancels.is_none() => self.local_answer(
                &req,
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                None,
                &[],
            ),
            _ => match self.target(&req) {
                Target::Elsewhere => self.refuse_elsewhere(&req),
                // In-dialog requests: the edge has no dialogs yet (calls come with the B2BUA).
                _ if req.to_tag().is_some() => self.local_answer(
                    &req,
                    StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST,
                    None,
                    &[],
                ),
                _ => self.local_answer(
                    &req,
                    StatusCode::NOT_IMPLEMENTED,
                    None,
                    &[(HeaderName::Allow, ALLOW)],
                ),
            },
        };
        if let Some(answer) = answer {
            self.respond(io, key, answer);
        }
    }

    /// The refusal for a request to a domain the edge does not serve: never forwarded.
    fn refuse_elsewhere(&self, req: &Request) -> Option<Response> {
        self.local_answer(req, StatusCode::FORBIDDEN, Some("Domain Not Served"), &[])
    }

    fn on_register(&mut self, io: &mut Io<'_>, from: FlowId, key: TransactionId, req: Request) {
        let flow = FlowInfo::from(from);
        let outcome = self
            .shared
            .registrar
            .lock()
            .map(|mut r| r.register(io.unix_ms(), &req, &flow))
            .map_err(|_| ());
        let outcome = match outcome {
            Ok(o) => o,
            Err(_) => {
                tracing::error!("registrar lock poisoned");
                if let Some(a) =
                    self.local_answer(&req, StatusCode::SERVER_INTERNAL_ERROR, None, &[])
                {
                    self.respond(io, key, a);
                }
                return;
            }
        };
        // The flood shield counts auth failures, unknown users and verified registrations.
        let (RegisterOutcome::Drop { report }
        | RegisterOutcome::Respond { report, .. }
        | RegisterOutcome::Commit { report, .. }) = &outcome;
        crate::shield::feed::register_report(from.peer.ip(), report);
        match outcome {
            RegisterOutcome::Drop { report } => {
                // Nothing can be answered: forget the transaction rather than keep it forever.
                self.report(&report);
                self.pending.remove(&key);
                self.layer.terminate(key);
            }
            // The registrar writes the `Server` header itself (`Registrar::set_server`): its
            // answers leave as built, without a second serialisation.
            RegisterOutcome::Respond { response, report } => {
                self.report(&report);
                if response.status() == StatusCode::UNAUTHORIZED {
                    self.challenge_statelessly(io, key, response);
                } else {
                    self.respond(io, key, response);
                }
            }
            RegisterOutcome::Commit {
                ops,
                response,
                report,
            } => {
                self.report(&report);
                let shared = self.shared.clone();
                let worker = self.index;
                // The 200 OK leaves only from `on_wake`, after the commit that holds these ops;
                // the store wakes this worker once per commit (`store_flush`), after queueing
                // every completion of the commit.
                let done = Box::new(move |result: Result<(), crate::store::StoreError>| {
                    if let Err(e) = &result {
                        tracing::error!("registrar store commit failed: {e}");
                    }
                    if let Some(q) = shared.completions.get(worker) {
                        q.push(Completion {
                            key,
                            response,
                            durable: result.is_ok(),
                        });
                    }
                });
                let flush = Some(self.store_flush.clone());
                if self
                    .shared
                    .committer
                    .submit_with_flush(ops, done, flush)
                    .is_err()
                {
                    tracing::warn!("registrar store queue full: 503");
                    if let Some(a) = self.local_answer(
                        &req,
                        StatusCode::SERVICE_UNAVAILABLE,
                        None,
                        &[(HeaderName::RetryAfter, RETRY_AFTER_SECS)],
                    ) {
                        self.respond(io, key, a);
                    }
                }
            }
        }
    }

    /// A REGISTER's 401 leaves without a transaction kept for it (RFC 3261 §26.3.2.4: challenge
    /// statelessly, so unauthenticated requests cannot fill the edge with transactions; over UDP
    /// each would otherwise live 32 s for Timer J). A retransmitted REGISTER is challenged again
    /// — the registrar keeps no state for a challenge (nonces are stateless; a replayed nonce
    /// count is refused by its table either way).
    fn challenge_statelessly(&mut self, io: &mut Io<'_>, key: TransactionId, response: Response) {
        let code = response.status().as_u16();
        if let Err(e) = self.layer.respond_and_forget(key, response) {
            tracing::debug!("stateless challenge on {key} refused: {e}");
            return;
        }
        self.answered(io, key, code, true);
    }

    fn report(&mut self, report: &Report) {
        let (domain, policy, result, auth_failure) = super::report_labels(report);
        self.shared
            .metrics
            .registration_cached(&mut self.counters, domain, policy, result);
        if let Some(reason) = auth_failure {
            self.shared.metrics.auth_failure(domain, reason);
        }
    }

    /// Starts a client transaction sending `request` down `flow` (reliable on TCP/TLS).
    fn send_client_request(
        &mut self,
        io: &Io<'_>,
        flow: FlowId,
        request: Request,
    ) -> Result<TransactionId, sipveil_sip::transaction::SendError> {
        let remote = Remote {
            peer: flow,
            reliable: flow.proto != Proto::Udp,
        };
        self.layer
            .send_request(self.tx_now(io.now()), remote, request)
    }

    /// Sends what the transaction layer queued, turns its events into bookkeeping and re-arms the
    /// worker's deadline.
    fn drain(&mut self, io: &mut Io<'_>) {
        while let Some(t) = self.layer.poll_transmit() {
            if let Err(e) = io.send(&t.peer, t.payload) {
                tracing::debug!("send to {:?} failed: {e:?}", t.peer);
                if let Some(tx) = t.transaction {
                    self.layer.handle_transport_error(self.tx_now(io.now()), tx);
                }
            }
        }
        let mut call_timeouts = Vec::new();
        let mut unacked = Vec::new();
        while let Some(ev) = self.layer.poll_event() {
            match ev {
                Event::Timeout { key } | Event::TransportError { key }
                    if self
                        .hub
                        .as_ref()
                        .is_some_and(|h| h.client.contains_key(&key)) =>
                {
                    call_timeouts.push(key);
                }
                // Timer L: the caller never ACKed the edge's 2xx (§13.3.1.4): end the call.
                Event::Timeout { key } if self.call_tx_peer.contains_key(&key) => {
                    if let Some(req) = self.layer.request(key)
                        && *req.method() == Method::Invite
                    {
                        unacked.push(Message::Request(req.clone()));
                    }
                }
                Event::Terminated { key } => {
                    if let Some(h) = self.hub.as_mut() {
                        h.client.remove(&key);
                    }
                    self.call_tx_peer.remove(&key);
                    self.pending.remove(&key);
                    self.finish_probe(io, key, None, Some("transaction ended without an answer"));
                }
                Event::Timeout { key } => self.finish_probe(io, key, None, Some("timeout")),
                Event::TransportError { key } => {
                    self.finish_probe(io, key, None, Some("flow closed or send failed"))
                }
                _ => {}
            }
        }
        if !call_timeouts.is_empty() || !unacked.is_empty() {
            for key in call_timeouts {
                self.on_call_timeout(io, key);
            }
            for invite in unacked {
                self.end_unacked(io, &invite);
            }
            // What the map sent in answer goes out now.
            return self.drain(io);
        }
        let tx_deadline = self.layer.poll_timeout().map(|at| self.std_at(at));
        let housekeeping = (self.index == 0).then_some(self.next_expiry);
        let deadline = match (tx_deadline, housekeeping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        io.set_deadline(deadline);
    }

    /// Sends an OPTIONS probe down a binding's flow (RFC 5626: requests toward a client go down
    /// the flow it registered on, so clients behind NAT or on TCP/TLS are reachable).
    fn start_probe(&mut self, io: &mut Io<'_>, command: Command) {
        let Command::Qualify {
            aor,
            contact,
            flow,
            reply,
        } = command
        else {
            return;
        };
        let mut result = QualifyResult {
            aor,
            contact,
            proto: super::transport::proto_label(flow.proto),
            peer: flow.peer,
            status: None,
            rtt_us: None,
            error: None,
        };
        let request = match self.probe_request(&result, &flow) {
            Ok(r) => r,
            Err(e) => {
                result.error = Some(e);
                let _ = reply.try_send(result);
                return;
            }
        };
        match self.send_client_request(io, flow, request) {
            Ok(key) => {
                self.probes.insert(
                    key,
                    Probe {
                        result,
                        sent: io.now(),
                        reply,
                    },
                );
            }
            Err(e) => {
                result.error = Some(format!("not sent: {e}"));
                let _ = reply.try_send(result);
            }
        }
    }

    fn probe_request(&mut self, probe: &QualifyResult, flow: &FlowId) -> Result<Request, String> {
        let uri = sipveil_sip::Uri::parse_str(&probe.contact)
            .map_err(|e| format!("contact is not a URI: {e}"))?;
        let transport = match flow.proto {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Tls => "TLS",
        };
        let branch = self.layer.new_branch();
        self.call_ids += 1;
        let tag = format!("{:x}", self.call_ids);
        let host = match flow.local.ip() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let mut b = sipveil_sip::RequestBuilder::new(Method::Options, uri)
            .via(transport, &flow.local.to_string(), &branch)
            .max_forwards(70)
            .header(HeaderName::From, format!("<sip:edge@{host}>;tag=q{tag}"))
            .header(HeaderName::To, format!("<sip:{}>", probe.aor))
            .header(
                HeaderName::CallId,
                format!("q{}-{}-{tag}@{host}", self.index, branch),
            )
            .cseq(1);
        if let Some(server) = &self.shared.settings().server {
            b = b.header(HeaderName::UserAgent, server.clone());
        }
        b.build().map_err(|e| format!("cannot build OPTIONS: {e}"))
    }

    fn finish_probe(
        &mut self,
        io: &Io<'_>,
        key: TransactionId,
        status: Option<u16>,
        error: Option<&str>,
    ) {
        if let Some(mut p) = self.probes.remove(&key) {
            p.result.status = status;
            p.result.error = error.map(str::to_owned);
            if status.is_some() {
                p.result.rtt_us = Some(
                    u64::try_from(io.now().saturating_duration_since(p.sent).as_micros())
                        .unwrap_or(u64::MAX),
                );
            }
            let _ = p.reply.try_send(p.result);
        }
    }

    /// Worker 0: drops expired bindings from memory and the store.
    fn expire_bindings(&mut self, io: &mut Io<'_>) {
        if self.index != 0 || io.now() < self.next_expiry {
            return;
        }
        self.next_expiry = io.now() + EXPIRY_PERIOD;
        let ops: Vec<StoreOp> = match self.shared.registrar.lock() {
            Ok(mut r) => r.expire(io.unix_ms()),
            Err(_) => return,
        };
        if ops.is_empty() {
            return;
        }
        // Expired bindings are gone from memory already; deleting them from the store can wait
        // for the next round if the queue is full (a restart drops expired records on load).
        let n = ops.len();
        if self.shared.committer.submit(ops, Box::new(|_| {})).is_err() {
            tracing::debug!("store busy: {n} expired bindings stay on disk until restart");
        }
    }
}

impl Handler for Worker {
    fn on_message(&mut self, io: &mut Io<'_>, from: FlowId, msg: Message) {
        if self.index != CALL_WORKER
            && let Message::Request(req) = &msg
            && is_call_request(req)
        {
            self.hand_to_call_worker(from, msg);
            return;
        }
        let now = self.tx_now(io.now());
        let reliable = from.proto != Proto::Udp;
        let msg = match msg {
            Message::Request(mut req) => {
                self.shared.metrics.request_in(method_label(req.method()));
                if let Err(e) = req.validate(&self.shared.limits) {
                    if let ErrorAnswer::Respond { status, reason } = e.answer()
                        && *req.method() != Method::Ack
                        && let Some(code) = StatusCode::new(status)
                        && let Some(a) = self.local_answer(&req, code, Some(reason), &[])
                    {
                        self.respond_stateless(io, &from, a);
                    }
                    return;
                }
                // RFC 3581 / §18.2.1: the answer carries where the request really came from.
                if let Err(e) = req.apply_received(from.peer) {
                    tracing::debug!("received/rport not applied: {e}");
                }
                Message::Request(req)
            }
            response => response,
        };
        match self.layer.handle_incoming(
            now,
            Remote {
                peer: from,
                reliable,
            },
            msg,
        ) {
            Incoming::Request {
                key,
                request,
                cancels,
            } => self.on_request(io, from, key, request, cancels),
            Incoming::Overloaded { request } => {
                if let Some(a) = self.local_answer(
                    &request,
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    &[(HeaderName::RetryAfter, RETRY_AFTER_SECS)],
                ) {
                    self.respond_stateless(io, &from, a);
                }
            }
            Incoming::Invalid { message, error } => {
                if let Message::Request(req) = message
                    && *req.method() != Method::Ack
                    && let Some(a) = self.local_answer(&req, StatusCode::BAD_REQUEST, None, &[])
                {
                    tracing::debug!("invalid request from {:?}: {error}", from.peer);
                    self.respond_stateless(io, &from, a);
                }
            }
            Incoming::Response { key, response }
                if self
                    .hub
                    .as_ref()
                    .is_some_and(|h| h.client.contains_key(&key)) =>
            {
                self.on_call_response(io, from, response);
            }
            Incoming::Response { key, response } if response.status().is_final() => {
                let code = response.status().as_u16();
                self.finish_probe(io, key, Some(code), None);
            }
            Incoming::StrayResponse { response } => {
                if self.index != CALL_WORKER {
                    self.hand_to_call_worker(from, Message::Response(response));
                } else if self.hub.is_some() {
                    // A 2xx retransmission of a far leg whose transaction is gone.
                    self.on_call_response(io, from, response);
                }
            }
            Incoming::Ack { request, .. } if self.hub.is_some() => {
                self.on_call_ack(io, from, request);
            }
            // Provisionals of probes, retransmissions, strays.
            _ => {}
        }
        self.drain(io);
    }

    fn on_wake(&mut self, io: &mut Io<'_>) {
        let shared = self.shared.clone();
        if let Some(commands) = shared.commands.get(self.index) {
            while let Some(c) = commands.pop() {
                match c {
                    Command::Call { from, msg } => self.on_message(io, from, msg),
                    probe @ Command::Qualify { .. } => self.start_probe(io, probe),
                }
            }
        }
        let Some(queue) = shared.completions.get(self.index) else {
            return;
        };
        while let Some(c) = queue.pop() {
            let response = if c.durable {
                c.response
            } else {
                // Not durable: the binding is not acknowledged (the client retries).
                match self.layer.request(c.key).and_then(|req| {
                    self.local_answer(req, StatusCode::SERVER_INTERNAL_ERROR, None, &[])
                }) {
                    Some(r) => r,
                    None => continue,
                }
            };
            self.respond(io, c.key, response);
        }
        self.drain(io);
    }

    fn on_timer(&mut self, io: &mut Io<'_>) {
        self.layer.handle_timeout(self.tx_now(io.now()));
        self.expire_bindings(io);
        self.call_housekeeping(io);
        self.drain(io);
    }

    fn on_closed(&mut self, io: &mut Io<'_>, flow: FlowId) {
        tracing::trace!("flow closed: {flow:?}");
        self.drain(io);
    }
}

/// Whether a request belongs to the B2BUA (everything but REGISTER and out-of-dialog OPTIONS,
/// which any worker answers itself).
fn is_call_request(req: &Request) -> bool {
    match req.method() {
        Method::Register => false,
        Method::Options => req.to_tag().is_some(),
        _ => true,
    }
}

fn edge_transport(p: Proto) -> sipveil_b2bua::EdgeTransport {
    match p {
        Proto::Udp => sipveil_b2bua::EdgeTransport::Udp,
        Proto::Tcp => sipveil_b2bua::EdgeTransport::Tcp,
        Proto::Tls => sipveil_b2bua::EdgeTransport::Tls,
    }
}

/// How the edge appears on a leg whose flow is `flow`, with media on `media_ip`.
fn edge_address(flow: &FlowId, media_ip: IpAddr) -> sipveil_b2bua::EdgeAddress {
    let default_port = if flow.proto == Proto::Tls { 5061 } else { 5060 };
    sipveil_b2bua::EdgeAddress {
        host: flow.local.ip().to_string(),
        port: (flow.local.port() != default_port).then_some(flow.local.port()),
        transport: edge_transport(flow.proto),
        media_ip,
    }
}

/// How an INVITE is routed (decided before the dialog map sees it).
enum Route {
    Targets(Vec<sipveil_b2bua::FarTarget<FlowId>>, String),
    Refuse(StatusCode, &'static str),
}

impl Worker {
    /// Hands `msg` to the call worker (module docs of [`super::calls`]).
    fn hand_to_call_worker(&self, from: FlowId, msg: Message) {
        if self
            .shared
            .push_command(CALL_WORKER, Command::Call { from, msg })
        {
            self.handle.wake(CALL_WORKER);
        }
    }

    /// Runs `f` with the hub taken out of `self` (so `f` may use the rest of the worker).
    fn with_hub(
        &mut self,
        io: &mut Io<'_>,
        f: impl FnOnce(&mut Worker, &mut Io<'_>, &mut CallHub),
    ) {
        let Some(mut hub) = self.hub.take() else {
            return;
        };
        hub.reconfigure(self.shared.calls.settings());
        f(self, io, &mut hub);
        hub.publish(&self.shared.metrics, &self.shared.calls.view);
        self.hub = Some(hub);
    }

    /// Call worker: a request that is not REGISTER or out-of-dialog OPTIONS.
    fn on_call_request(&mut self, io: &mut Io<'_>, from: FlowId, key: TransactionId, req: Request) {
        self.call_tx_peer.insert(key, from.peer.ip());
        self.with_hub(io, |w, io, hub| {
            let msg = Message::Request(req);
            hub.observe(&msg);
            let Message::Request(req) = msg else {
                return;
            };
            let outcome = {
                let CallHub {
                    map, ids, anchor, ..
                } = hub;
                map.handle_request(ids, anchor, from, key, req)
            };
            match outcome {
                sipveil_b2bua::Outcome::Handled(actions) => w.run_call_actions(io, hub, actions),
                sipveil_b2bua::Outcome::NotInDialog { tx, request } => {
                    if *request.method() == Method::Invite {
                        w.start_call(io, hub, from, tx, request);
                    } else {
                        w.on_local_request(io, from, tx, request, None);
                    }
                }
            }
        });
    }

    /// Call worker: a response of a client transaction the dialog map started (or a stray 2xx).
    fn on_call_response(&mut self, io: &mut Io<'_>, from: FlowId, response: Response) {
        self.with_hub(io, |w, io, hub| {
            let msg = Message::Response(response);
            hub.observe(&msg);
            let Message::Response(response) = msg else {
                return;
            };
            let answered_call = (response.status().is_success()
                && response.cseq().is_ok_and(|c| c.method == Method::Invite))
            .then(|| hub.call_of(&Message::Response(response.clone())))
            .flatten();
            let actions = {
                let CallHub {
                    map, ids, anchor, ..
                } = hub;
                map.handle_response(ids, anchor, from, response)
            };
            if let Some(call) = answered_call
                && let Some(m) = hub.calls.get_mut(&call)
                && m.answered.is_none()
            {
                m.answered = Some(io.now());
            }
            w.run_call_actions(io, hub, actions);
        });
    }

    /// Call worker: an ACK for a 2xx.
    fn on_call_ack(&mut self, io: &mut Io<'_>, from: FlowId, ack: Request) {
        self.with_hub(io, |w, io, hub| {
            let actions = {
                let CallHub {
                    map, ids, anchor, ..
                } = hub;
                map.handle_ack(ids, anchor, from, &ack)
            };
            w.run_call_actions(io, hub, actions);
        });
    }

    /// Call worker: a client transaction of a call got no answer (or could not be sent): the
    /// map sees a 408.
    fn on_call_timeout(&mut self, io: &mut Io<'_>, key: TransactionId) {
        let Some(request) = self.layer.request(key).cloned() else {
            return;
        };
        let Some((_, flow)) = self.hub.as_mut().and_then(|h| h.client.remove(&key)) else {
            return;
        };
        let Ok(response) = request.response(StatusCode::REQUEST_TIMEOUT).build() else {
            return;
        };
        self.with_hub(io, |w, io, hub| {
            let actions = {
                let CallHub {
                    map, ids, anchor, ..
                } = hub;
                map.handle_response(ids, anchor, flow, response)
            };
            w.run_call_actions(io, hub, actions);
        });
    }

    /// Call worker: the caller never ACKed the edge's 2xx to `invite`: BYE on both legs.
    fn end_unacked(&mut self, io: &mut Io<'_>, invite: &Message) {
        self.with_hub(io, |w, io, hub| {
            let Some(call) = hub.call_of(invite) else {
                return;
            };
            if !hub.map.is_confirmed(call) {
                return;
            }
            tracing::info!(call = call.0, "ending call: no ACK for the 2xx");
            let actions = {
                let CallHub {
                    map, ids, anchor, ..
                } = hub;
                map.end_call(ids, anchor, call)
            };
            w.run_call_actions(io, hub, actions);
        });
    }

    /// Call worker, about once a second: maximum duration and media timeout.
    fn call_housekeeping(&mut self, io: &mut Io<'_>) {
        if self.hub.is_none() || io.now() < self.next_call_check {
            return;
        }
        self.next_call_check = io.now() + EXPIRY_PERIOD;
        self.with_hub(io, |w, io, hub| {
            for (call, why) in hub.due(io.now()) {
                tracing::info!(call = call.0, "ending call: {why}");
                if let Some(m) = hub.calls.get_mut(&call) {
                    m.ending = true;
                }
                let actions = {
                    let CallHub {
                        map, ids, anchor, ..
                    } = hub;
                    map.end_call(ids, anchor, call)
                };
                w.run_call_actions(io, hub, actions);
            }
        });
    }

    /// Routing of a new INVITE (issue 5 item 1): served domain → the callee's bindings; a
    /// static peer's domain → that peer; anything else 403 (never an open relay).
    fn route_invite(
        &self,
        now_ms: u64,
        req: &Request,
        identity: &sipveil_b2bua::CallerIdentity,
        settings: &CallSettings,
    ) -> Route {
        let uri = req.uri();
        let user = uri
            .user()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default();
        let host = match uri.host() {
            Some(Host::Domain(d)) => String::from_utf8_lossy(d).to_ascii_lowercase(),
            _ => return Route::Refuse(StatusCode::NOT_FOUND, "Not Found"),
        };
        let anonymous = matches!(identity, sipveil_b2bua::CallerIdentity::Anonymous);
        let Ok(registrar) = self.shared.registrar.lock() else {
            return Route::Refuse(StatusCode::SERVER_INTERNAL_ERROR, "Server Internal Error");
        };
        if let Some(domain) = registrar.domain(&host) {
            if anonymous && !domain.anonymous_callers {
                return Route::Refuse(StatusCode::FORBIDDEN, "Anonymous Callers Not Accepted");
            }
            let bindings = registrar.lookup(&user, &host, now_ms);
            if bindings.is_empty() {
                return if registrar.user_exists(&user, &host) {
                    Route::Refuse(
                        StatusCode::TEMPORARILY_UNAVAILABLE,
                        "Temporarily Unavailable",
                    )
                } else {
                    Route::Refuse(StatusCode::NOT_FOUND, "Not Found")
                };
            }
            if anonymous && registrar.refuses_anonymous(&user, &host) {
                return Route::Refuse(
                    StatusCode::new(433).unwrap_or(StatusCode::FORBIDDEN),
                    "Anonymity Disallowed",
                );
            }
            let targets: Vec<_> = bindings
                .iter()
                .filter_map(|b| {
                    let uri = sipveil_sip::Uri::parse_str(&b.contact).ok()?;
                    Some(sipveil_b2bua::FarTarget {
                        uri,
                        route: Vec::new(),
                        trusted: false,
                        flow: FlowId::from(b.flow),
                    })
                })
                .collect();
            if targets.is_empty() {
                return Route::Refuse(
                    StatusCode::TEMPORARILY_UNAVAILABLE,
                    "Temporarily Unavailable",
                );
            }
            return Route::Targets(targets, format!("{}@{host}", user.to_ascii_lowercase()));
        }
        drop(registrar);
        if let Some(peer) = settings.peers.iter().find(|p| p.domain == host) {
            // A static peer is reachable for callers this edge authenticated only.
            if anonymous {
                return Route::Refuse(StatusCode::FORBIDDEN, "Anonymous Callers Not Accepted");
            }
            let local = self.shared.calls.udp_local.read().ok().and_then(|l| {
                l.iter()
                    .find(|a| a.is_ipv4() == peer.address.is_ipv4())
                    .copied()
            });
            let Some(local) = local else {
                return Route::Refuse(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
            };
            return Route::Targets(
                vec![sipveil_b2bua::FarTarget {
                    uri: uri.clone(),
                    route: Vec::new(),
                    trusted: peer.trusted,
                    flow: FlowId {
                        proto: Proto::Udp,
                        local,
                        peer: peer.address,
                        worker: u16::try_from(CALL_WORKER).unwrap_or(0),
                        conn: 0,
                    },
                }],
                format!("{}@{host}", user.to_ascii_lowercase()),
            );
        }
        Route::Refuse(StatusCode::FORBIDDEN, "Domain Not Served")
    }

    /// Call worker: a new INVITE. Identity (digest for authenticated domains), routing, then
    /// the dialog map.
    fn start_call(
        &mut self,
        io: &mut Io<'_>,
        hub: &mut CallHub,
        from: FlowId,
        key: TransactionId,
        req: Request,
    ) {
        let refuse = |w: &mut Worker, io: &mut Io<'_>, code: StatusCode, reason: &'static str| {
            let extra: &[(HeaderName, &str)] = if code == StatusCode::SERVICE_UNAVAILABLE {
                &[(HeaderName::RetryAfter, RETRY_AFTER_SECS)]
            } else {
                &[]
            };
            if let Some(a) = w.local_answer(&req, code, Some(reason), extra) {
                w.respond(io, key, a);
            }
            w.shared.metrics.call_ended("refused");
        };
        let settings = hub.settings.clone();
        if hub.calls.len() >= settings.max_calls {
            tracing::warn!("max_calls ({}) reached: 503", settings.max_calls);
            return refuse(
                self,
                io,
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
            );
        }
        if matches!(self.target(&req), Target::Edge) {
            return refuse(self, io, StatusCode::NOT_FOUND, "Not Found");
        }
        // Caller identity: digest when the From domain is an authenticated one served here.
        let auth = match self.shared.registrar.lock() {
            Ok(mut r) => r.authenticate_request(io.unix_ms(), &req),
            Err(_) => sipveil_registrar::RequestAuth::Unanswerable,
        };
        let mut identity = match auth {
            sipveil_registrar::RequestAuth::NotRequired => sipveil_b2bua::CallerIdentity::Anonymous,
            sipveil_registrar::RequestAuth::Authenticated { aor } => {
                match sipveil_sip::Uri::parse_str(&format!("sip:{aor}")) {
                    Ok(aor) => sipveil_b2bua::CallerIdentity::Authenticated { aor },
                    Err(_) => sipveil_b2bua::CallerIdentity::Anonymous,
                }
            }
            sipveil_registrar::RequestAuth::Refused { response, failure } => {
                if let Some(f) = failure {
                    self.shared.metrics.auth_failure("other", f.as_str());
                }
                crate::shield::feed::call_refused(from.peer.ip(), failure, false);
                let response = self.finish(response);
                self.respond(io, key, response);
                self.shared.metrics.call_ended("refused");
                return;
            }
            sipveil_registrar::RequestAuth::Unanswerable => {
                self.pending.remove(&key);
                self.layer.terminate(key);
                return;
            }
        };
        let (targets, callee) = match self.route_invite(io.unix_ms(), &req, &identity, &settings) {
            Route::Targets(t, callee) => (t, callee),
            Route::Refuse(code, reason) => {
                if code == StatusCode::NOT_FOUND {
                    crate::shield::feed::call_refused(from.peer.ip(), None, true);
                }
                return refuse(self, io, code, reason);
            }
        };
        // A domain that forces anonymity (caller's or callee's): anonymous From on the far leg.
        let from_domain = req
            .from()
            .ok()
            .map(|f| String::from_utf8_lossy(f.uri().host_raw()).to_ascii_lowercase());
        let callee_domain = callee.rsplit('@').next().unwrap_or_default().to_owned();
        if settings
            .force_anonymous
            .iter()
            .any(|d| Some(d) == from_domain.as_ref() || *d == callee_domain)
        {
            identity = sipveil_b2bua::CallerIdentity::Anonymous;
        }
        let Ok(callee_uri) = sipveil_sip::Uri::parse_str(&format!("sip:{callee}")) else {
            return refuse(self, io, StatusCode::NOT_FOUND, "Not Found");
        };
        let Some(first) = targets.first().map(|t| t.flow) else {
            return refuse(
                self,
                io,
                StatusCode::TEMPORARILY_UNAVAILABLE,
                "Temporarily Unavailable",
            );
        };
        let a_call_id = req.call_id().unwrap_or_default();
        let setup = sipveil_b2bua::CallSetup {
            identity,
            callee: callee_uri,
            targets,
            a_flow: from,
            edge_a: edge_address(&from, hub.media_a),
            edge_b: edge_address(&first, hub.media_b),
        };
        let a_shown = match &setup.identity {
            sipveil_b2bua::CallerIdentity::Authenticated { aor } => {
                Some(Bytes::from(aor.to_string()))
            }
            sipveil_b2bua::CallerIdentity::Anonymous => None,
        };
        let b_shown = Bytes::from(callee.clone());
        let invite_msg = Message::Request(req);
        let shown: Vec<&[u8]> = a_shown.iter().map(|b| &b[..]).collect();
        let a_ids = sipveil_b2bua::identifiers_of(&invite_msg, &hub.edge_ips, &shown);
        let a_own = sipveil_b2bua::private_addresses(&invite_msg.to_bytes())
            .into_iter()
            .map(|(_, ip)| ip)
            .collect();
        let Message::Request(req) = invite_msg else {
            return;
        };
        let (call, actions) = {
            let CallHub {
                map, ids, anchor, ..
            } = hub;
            map.start_call(ids, anchor, key, req, setup)
        };
        match call {
            Some(call) => {
                hub.call_ids.insert(a_call_id.clone(), call);
                hub.calls.insert(
                    call,
                    CallMeta {
                        started: io.now(),
                        answered: None,
                        a_call_id,
                        a_ids,
                        b_ids: Vec::new(),
                        a_own,
                        b_own: Vec::new(),
                        a_shown,
                        b_shown,
                        ending: false,
                        media_check: None,
                    },
                );
                // One INFO line per call, when it ends (with its duration): a log line is a
                // synchronous write, ~20 µs of the call worker's time each.
                tracing::debug!(call = call.0, "call started");
            }
            None => self.shared.metrics.call_ended("refused"),
        }
        self.run_call_actions(io, hub, actions);
    }

    /// Leak detector on one egress message of `call`.
    fn audit_call_message(&self, hub: &CallHub, call: Option<CallRef>, msg: &Message, to: IpAddr) {
        let Some(call) = call else {
            return;
        };
        for (kind, header, what) in hub.audit_egress(call, msg, to) {
            tracing::warn!(call = call.0, kind, header = %header, what = %what, "privacy leak on egress");
            self.shared.metrics.privacy_leak(kind);
        }
    }

    /// Carries out what the dialog map decided.
    fn run_call_actions(
        &mut self,
        io: &mut Io<'_>,
        hub: &mut CallHub,
        actions: Vec<sipveil_b2bua::Action<FlowId, TransactionId>>,
    ) {
        use sipveil_b2bua::Action;
        for action in actions {
            match action {
                Action::Respond { tx, response } => {
                    let msg = Message::Response(response);
                    let call = hub.call_of(&msg);
                    let to = self
                        .call_tx_peer
                        .get(&tx)
                        .copied()
                        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                    self.audit_call_message(hub, call, &msg, to);
                    if let Message::Response(response) = msg {
                        self.respond(io, tx, response);
                    }
                }
                Action::Send {
                    call,
                    leg,
                    flow,
                    request,
                } => {
                    if let (sipveil_b2bua::LegRef::B(_), Ok(id)) = (leg, request.call_id()) {
                        hub.call_ids.insert(id, call);
                    }
                    let msg = Message::Request(request);
                    self.audit_call_message(hub, Some(call), &msg, flow.peer.ip());
                    let Message::Request(request) = msg else {
                        continue;
                    };
                    match self.send_client_request(io, flow, request) {
                        Ok(key) => {
                            hub.client.insert(key, (call, flow));
                        }
                        Err(e) => tracing::warn!(call = call.0, "call request not sent: {e}"),
                    }
                }
                Action::SendAck {
                    call,
                    flow,
                    request,
                    ..
                } => {
                    let msg = Message::Request(request);
                    self.audit_call_message(hub, Some(call), &msg, flow.peer.ip());
                    self.layer.send_stateless(flow, &msg);
                }
                Action::CallEnded { call } => {
                    if let Some(m) = hub.calls.remove(&call) {
                        hub.call_ids.retain(|_, c| *c != call);
                        let result = if m.answered.is_some() {
                            "answered"
                        } else {
                            "unanswered"
                        };
                        self.shared.metrics.call_ended(result);
                        let secs = io.now().saturating_duration_since(m.started).as_secs_f64();
                        tracing::info!(call = call.0, result, secs, "call ended");
                    }
                }
            }
        }
    }
}
