//! The transaction user on each worker: every parsed message from the transport pool goes through
//! this worker's [`TransactionLayer`], and what reaches the TU is answered here — REGISTER by the
//! registrar (the 200 OK leaves only once the store has made the binding durable), OPTIONS for the
//! edge itself, everything else with the right refusal. Nothing is ever forwarded.
//!
//! Threads: one `Worker` per pool thread, all sharing one [`ServiceShared`]. The registrar sits
//! behind one mutex (a REGISTER holds it for a few microseconds); the store's group-commit thread
//! hands finished commits back to the worker that owns the transaction through a per-worker queue
//! and [`PoolHandle::wake`].
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use crossbeam::queue::SegQueue;
use sipveil_registrar::{FlowInfo, RegisterOutcome, Registrar, Report, StoreOp};
use sipveil_sip::transaction::{
    Config as TxConfig, Event, Incoming, Instant, Remote, TransactionId, TransactionLayer,
};
use sipveil_sip::validate::check_extensions;
use sipveil_sip::{
    ErrorAnswer, Header, HeaderName, Host, Limits, Message, Method, Request, Response, StatusCode,
};

use super::transport::{FlowId, Handler, Io, PoolHandle, Proto};
use crate::metrics::Metrics;
use crate::store::Committer;

/// How often worker 0 drops expired bindings (and deletes them from the store).
const EXPIRY_PERIOD: Duration = Duration::from_secs(1);
/// Retry-After (seconds) on a 503 when the store's queue or the transaction table is full.
const RETRY_AFTER_SECS: &str = "1";
/// Methods the edge answers itself (OPTIONS `Allow`).
const ALLOW: &str = "REGISTER, OPTIONS";
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
}

/// Work handed to a worker from outside its thread (the control socket).
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
    pending: HashMap<TransactionId, (Method, StdInstant)>,
    /// Client transactions of qualify probes.
    probes: HashMap<TransactionId, Probe>,
    next_expiry: StdInstant,
    call_ids: u64,
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
        Worker {
            index,
            shared,
            handle,
            layer,
            epoch: now,
            pending: HashMap::new(),
            probes: HashMap::new(),
            next_expiry: now + EXPIRY_PERIOD,
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
        if let Some((method, since)) = self.pending.get(&key) {
            let method_name = method_label(method);
            self.shared.metrics.response_out(method_name, code);
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
            RegisterOutcome::Respond { response, report } => {
                self.report(&report);
                let response = self.finish(response);
                self.respond(io, key, response);
            }
            RegisterOutcome::Commit {
                ops,
                response,
                report,
            } => {
                self.report(&report);
                let response = self.finish(response);
                let shared = self.shared.clone();
                let handle = self.handle.clone();
                let worker = self.index;
                // The 200 OK leaves only from `on_wake`, after the commit that holds these ops.
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
                    handle.wake(worker);
                });
                if self.shared.committer.submit(ops, done).is_err() {
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

    fn report(&self, report: &Report) {
        let (domain, policy, result, auth_failure) = super::report_labels(report);
        self.shared.metrics.registration(domain, policy, result);
        if let Some(reason) = auth_failure {
            self.shared.metrics.auth_failure(domain, reason);
        }
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
        while let Some(ev) = self.layer.poll_event() {
            match ev {
                Event::Terminated { key } => {
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
        } = command;
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
        let remote = Remote {
            peer: flow,
            reliable: flow.proto != Proto::Udp,
        };
        match self
            .layer
            .send_request(self.tx_now(io.now()), remote, request)
        {
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
            Incoming::Response { key, response } if response.status().is_final() => {
                let code = response.status().as_u16();
                self.finish_probe(io, key, Some(code), None);
            }
            // ACKs (the edge sends no 2xx to INVITE yet), provisionals, retransmissions, strays.
            _ => {}
        }
        self.drain(io);
    }

    fn on_wake(&mut self, io: &mut Io<'_>) {
        let shared = self.shared.clone();
        if let Some(commands) = shared.commands.get(self.index) {
            while let Some(c) = commands.pop() {
                self.start_probe(io, c);
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
        self.drain(io);
    }

    fn on_closed(&mut self, io: &mut Io<'_>, flow: FlowId) {
        tracing::trace!("flow closed: {flow:?}");
        self.drain(io);
    }
}
