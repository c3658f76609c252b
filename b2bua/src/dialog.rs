//! The dialog map: one call = the caller's leg (A, the edge is its UAS) and
//! one or more far legs (B forks, the edge is their UAC), each with its own
//! Call-ID, tags, CSeq space, Via and SDP origin. Every in-dialog request
//! and response is rebuilt on the other leg; nothing is forwarded as is.
//!
//! The map sits above the transaction layer (`sipveil_sip::transaction`):
//! the driver hands it what the layer reports to the TU (requests with the
//! server transaction's handle `K`, responses of client transactions) and
//! carries out the returned [`Action`]s. Retransmissions are absorbed below
//! it; `100 Trying` is hop by hop and never crosses.
//!
//! | call | when |
//! |---|---|
//! | [`DialogMap::start_call`] | a new INVITE (no To tag) that the TU decided to bridge |
//! | [`DialogMap::handle_request`] | any other request; [`Outcome::NotInDialog`] hands back what the map does not own |
//! | [`DialogMap::handle_response`] | every response of a client transaction the map started; a timed-out transaction as a synthesised 408 |
//! | [`DialogMap::handle_ack`] | an ACK for a 2xx (`Incoming::Ack`); it has no transaction to answer |
//! | [`DialogMap::end_call`] | the TU ends a call (media timeout, maximum duration, Timer L: no ACK for the edge's 2xx) |
//!
//! # Driving it with `sipveil_sip::transaction::TransactionLayer`
//!
//! - `Incoming::Request { key, request, .. }` without To tag, INVITE, and
//!   the TU decides to bridge → [`DialogMap::start_call`] with `key`;
//!   anything else → [`DialogMap::handle_request`] with `key` (CANCEL
//!   included: the map answers it 200 and the INVITE 487 itself).
//! - `Incoming::Ack { request, .. }` → [`DialogMap::handle_ack`].
//! - `Incoming::Response { response, .. }` → [`DialogMap::handle_response`]
//!   (INVITE 2xx retransmissions too: the map re-sends its ACK).
//! - `Event::Timeout` of a client transaction the map started → build
//!   `layer.request(key)?.response(408)` and feed it to `handle_response`, so
//!   forks and in-dialog requests that never get an answer are settled.
//! - [`Action::Respond`] → `send_response(now, tx, response)`;
//!   [`Action::Send`] → `send_request(now, Remote::…(flow), request)` (the
//!   top Via already carries an RFC 3261 branch from the [`IdSource`]);
//!   [`Action::SendAck`] → `send_stateless(flow, &Message::Request(ack))`;
//!   [`Action::CallEnded`] → metrics (media was already released).

use std::collections::HashMap;

use bytes::Bytes;
use sipveil_sip::{
    Header, HeaderName, Headers, Method, Request, RequestBuilder, Response, ResponseBuilder,
    StatusCode, Uri,
};

use crate::ids::IdSource;
use crate::leg::{CallerIdentity, EdgeAddress, FarTarget, build_far_invite, check_invite};
use crate::media::{CallRef, MediaAnchor, MediaContext, MediaError, SdpOrigin, Side, rewrite_sdp};
use crate::policy::{PrivacyPolicy, Refusal};

/// One leg of a call: the caller's, or fork `n` of the far side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LegRef {
    /// The caller's leg.
    A,
    /// Far-leg fork `n` (0-based, in the order of [`CallSetup::targets`]).
    B(u16),
}

impl LegRef {
    /// The side.
    pub fn side(self) -> Side {
        match self {
            LegRef::A => Side::A,
            LegRef::B(_) => Side::B,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug)]
pub enum Action<F, K> {
    /// Answer the request received as server transaction `tx`.
    Respond {
        /// The server transaction.
        tx: K,
        /// The response (built for that request).
        response: Response,
    },
    /// Start a client transaction with `request` toward `flow`.
    Send {
        /// The call.
        call: CallRef,
        /// The leg it goes out on.
        leg: LegRef,
        /// Where.
        flow: F,
        /// The request (top Via with a fresh branch).
        request: Request,
    },
    /// Send an ACK for a 2xx (no transaction, RFC 3261 §13.2.2.4).
    SendAck {
        /// The call.
        call: CallRef,
        /// The leg.
        leg: LegRef,
        /// Where.
        flow: F,
        /// The ACK.
        request: Request,
    },
    /// The call is over for media purposes (its streams were released
    /// through [`MediaAnchor::release`]); for metrics and timers.
    CallEnded {
        /// The call.
        call: CallRef,
    },
}

/// Result of [`DialogMap::handle_request`].
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the request is handed back by value once per out-of-dialog request; boxing would allocate"
)]
pub enum Outcome<F, K> {
    /// The map owned the request; do these.
    Handled(Vec<Action<F, K>>),
    /// A request outside any dialog (no To tag, not a CANCEL): the TU's
    /// (a new INVITE goes to [`DialogMap::start_call`]).
    NotInDialog {
        /// The server transaction.
        tx: K,
        /// The request.
        request: Request,
    },
}

/// What the TU decided for a new call.
#[derive(Clone, Debug)]
pub struct CallSetup<F> {
    /// The caller as authenticated.
    pub identity: CallerIdentity,
    /// The callee's address of record (the far leg's To).
    pub callee: Uri,
    /// One fork per target, tried in parallel; the first 2xx wins.
    pub targets: Vec<FarTarget<F>>,
    /// The flow the INVITE came on.
    pub a_flow: F,
    /// The edge toward the caller.
    pub edge_a: EdgeAddress,
    /// The edge toward the callee.
    pub edge_b: EdgeAddress,
}

#[derive(Clone, Debug)]
struct Remote {
    /// The peer's tag (None: a far-leg response without To tag).
    tag: Option<Bytes>,
    /// The peer's header value as the edge writes it in To (with tag).
    value: Bytes,
    target: Uri,
    route: Vec<Bytes>,
    cseq: Option<u32>,
}

#[derive(Clone, Debug)]
struct Leg<F> {
    call_id: Bytes,
    local_tag: Bytes,
    /// The edge's header value (with tag) as written in From of its requests.
    local_value: Bytes,
    next_cseq: u32,
    edge: EdgeAddress,
    flow: F,
    sdp: SdpOrigin,
    remotes: Vec<Remote>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForkState {
    /// No response yet (a CANCEL must wait, §9.1).
    Calling,
    /// A provisional response (100 included) arrived.
    Early,
    Answered,
    Done,
}

#[derive(Clone, Debug)]
struct Fork<F> {
    leg: Leg<F>,
    invite: Request,
    invite_cseq: u32,
    to_base: Bytes,
    state: ForkState,
    cancel_pending: bool,
}

#[derive(Clone, Debug)]
struct Incoming<K> {
    tx: K,
    request: Request,
    leg: LegRef,
    remote: usize,
}

#[derive(Clone, Debug)]
struct Pending<K> {
    out: LegRef,
    remote: usize,
    cseq: u32,
    method: Method,
    initial: bool,
    incoming: Option<Incoming<K>>,
}

#[derive(Clone, Debug)]
struct AckLink {
    in_leg: LegRef,
    in_cseq: u32,
    out: LegRef,
    out_remote: usize,
    out_cseq: u32,
    sent: Option<Request>,
}

#[derive(Clone, Debug)]
struct Call<F, K> {
    a: Leg<F>,
    a_invite: Option<(K, Request)>,
    a_invite_cseq: u32,
    forks: Vec<Fork<F>>,
    winner: Option<(u16, usize)>,
    last_early: Option<(u16, usize)>,
    best: Option<Response>,
    pending: Vec<Pending<K>>,
    acks: Vec<AckLink>,
    ending: bool,
    ended: bool,
}

impl<F, K> Call<F, K> {
    fn leg(&self, l: LegRef) -> Option<&Leg<F>> {
        match l {
            LegRef::A => Some(&self.a),
            LegRef::B(i) => self.forks.get(usize::from(i)).map(|f| &f.leg),
        }
    }

    fn leg_mut(&mut self, l: LegRef) -> Option<&mut Leg<F>> {
        match l {
            LegRef::A => Some(&mut self.a),
            LegRef::B(i) => self.forks.get_mut(usize::from(i)).map(|f| &mut f.leg),
        }
    }

    fn finished(&self) -> bool {
        self.a_invite.is_none()
            && self.pending.is_empty()
            && self
                .forks
                .iter()
                .all(|f| !matches!(f.state, ForkState::Calling | ForkState::Early))
            && (self.ending || self.winner.is_none())
    }
}

/// Statistics for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Calls in the map.
    pub calls: usize,
    /// In-dialog requests answered 481 since creation.
    pub unknown_dialog: u64,
}

/// The dialog map (see the module docs). `F` is the driver's flow handle
/// (where to send), `K` its server-transaction handle (what to answer).
#[derive(Debug)]
pub struct DialogMap<F, K> {
    policy: PrivacyPolicy,
    calls: HashMap<CallRef, Call<F, K>>,
    by_call_id: HashMap<Bytes, Vec<(CallRef, LegRef)>>,
    next_call: u64,
    unknown_dialog: u64,
}

type Actions<F, K> = Vec<Action<F, K>>;

/// A body as it will be written on the other leg.
enum Body {
    None,
    Typed(Bytes, Bytes),
}

fn respond<F, K>(
    tx: K,
    req: &Request,
    status: u16,
    reason: &str,
    tag: Option<&Bytes>,
) -> Option<Action<F, K>> {
    let code = StatusCode::new(status)?;
    let mut b = req
        .response(code)
        .reason(Bytes::copy_from_slice(reason.as_bytes()));
    if let Some(t) = tag {
        b = b.to_tag(t.clone());
    }
    b.build()
        .ok()
        .map(|response| Action::Respond { tx, response })
}

/// Far-leg final statuses the near leg may not see as they are.
/// 3xx: a redirect's Contact names the callee's other addresses and the edge
/// does not recurse, so the caller gets 480. 401/407: the callee challenged
/// the edge, which has no credentials to give; the caller gets 403.
fn map_status(code: u16) -> u16 {
    match code {
        300..=399 => 480,
        401 | 407 => 403,
        c => c,
    }
}

fn first_contact(headers_owner: &Headers) -> Option<Uri> {
    headers_owner
        .values(&HeaderName::Contact)
        .next()
        .and_then(|v| sipveil_sip::Contact::parse(&v).ok())
        .and_then(|c| c.address().map(|a| a.uri().clone()))
}

fn with_tag(base: &Bytes, tag: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(base.len() + 5 + tag.len());
    v.extend_from_slice(base);
    v.extend_from_slice(b";tag=");
    v.extend_from_slice(tag);
    Bytes::from(v)
}

fn is_sdp(headers: &Headers) -> bool {
    headers
        .get_value(&HeaderName::ContentType)
        .and_then(|v| sipveil_sip::MediaType::parse(&v).ok())
        .is_some_and(|m| m.is("application", "sdp"))
}

impl<F: Clone, K: Clone> DialogMap<F, K> {
    /// An empty map applying `policy`.
    pub fn new(policy: PrivacyPolicy) -> Self {
        DialogMap {
            policy,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            next_call: 1,
            unknown_dialog: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &PrivacyPolicy {
        &self.policy
    }

    /// Replaces the policy (a configuration reload); calls in progress use it
    /// for every message from now on.
    pub fn set_policy(&mut self, policy: PrivacyPolicy) {
        self.policy = policy;
    }

    /// The calls in the map.
    pub fn calls(&self) -> impl Iterator<Item = CallRef> + '_ {
        self.calls.keys().copied()
    }

    /// Counters.
    pub fn stats(&self) -> MapStats {
        MapStats {
            calls: self.calls.len(),
            unknown_dialog: self.unknown_dialog,
        }
    }

    /// Whether `call` is still in the map.
    pub fn contains(&self, call: CallRef) -> bool {
        self.calls.contains_key(&call)
    }

    /// Whether `call` has been answered (a fork won).
    pub fn is_confirmed(&self, call: CallRef) -> bool {
        self.calls.get(&call).is_some_and(|c| c.winner.is_some())
    }

    /// Translate a body from `from` to `to` (`to`'s SDP origin).
    fn body(
        &mut self,
        call: CallRef,
        from: LegRef,
        to: LegRef,
        headers: &Headers,
        body: &Bytes,
        anchor: &mut dyn MediaAnchor,
    ) -> Result<Body, MediaError> {
        if body.is_empty() {
            return Ok(Body::None);
        }
        if is_sdp(headers) {
            let policy = self.policy.sdp.clone();
            let Some(c) = self.calls.get_mut(&call) else {
                return Ok(Body::None);
            };
            let fork = match (from, to) {
                (LegRef::B(i), _) | (_, LegRef::B(i)) => i,
                _ => 0,
            };
            let Some(leg) = c.leg_mut(to) else {
                return Ok(Body::None);
            };
            let ctx = MediaContext {
                call,
                fork,
                from: from.side(),
                edge_ip: leg.edge.media_ip,
            };
            let out = rewrite_sdp(body.clone(), &policy, &mut leg.sdp, anchor, ctx)?;
            return Ok(Body::Typed(Bytes::from_static(b"application/sdp"), out));
        }
        match headers.get_value(&HeaderName::ContentType) {
            Some(ct) if self.policy.body_passes(&ct) => Ok(Body::Typed(ct, body.clone())),
            _ => Ok(Body::None),
        }
    }

    /// Start bridging a new INVITE: check it ([`check_invite`]), build one
    /// far-leg INVITE per target ([`build_far_invite`]) with the offer
    /// anchored per fork. On refusal the call is not created and the only
    /// action answers the INVITE.
    pub fn start_call(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        tx: K,
        invite: Request,
        setup: CallSetup<F>,
    ) -> (Option<CallRef>, Actions<F, K>) {
        let a_tag = Bytes::from(ids.tag());
        let refuse = |r: &Refusal, tx: K, invite: &Request, a_tag: &Bytes| -> Actions<F, K> {
            let mut out = Vec::new();
            let Some(code) = StatusCode::new(r.status) else {
                return out;
            };
            let mut b = invite
                .response(code)
                .reason(Bytes::from_static(r.reason.as_bytes()))
                .to_tag(a_tag.clone());
            if let crate::RefusalCause::BadExtension(tags) = &r.cause {
                let v: Vec<String> = tags
                    .iter()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .collect();
                b = b.header(HeaderName::Unsupported, v.join(", "));
            }
            if let Ok(response) = b.build() {
                out.push(Action::Respond { tx, response });
            }
            out
        };
        let privacy = match check_invite(&self.policy, &invite) {
            Ok(p) => p,
            Err(r) => return (None, refuse(&r, tx, &invite, &a_tag)),
        };
        if setup.targets.is_empty() {
            let r = Refusal {
                status: 480,
                reason: "Temporarily Unavailable",
                cause: crate::RefusalCause::Malformed("no target"),
            };
            return (None, refuse(&r, tx, &invite, &a_tag));
        }
        let (
            Ok(a_call_id),
            Ok(cseq),
            Some(from_tag),
            Some(from_value),
            Some(to_value),
            Some(contact),
        ) = (
            invite.call_id(),
            invite.cseq(),
            invite.from_tag(),
            invite.headers().get_value(&HeaderName::From),
            invite.headers().get_value(&HeaderName::To),
            first_contact(invite.headers()),
        )
        else {
            return (
                None,
                refuse(&Refusal::malformed("INVITE"), tx, &invite, &a_tag),
            );
        };
        let call = CallRef(self.next_call);
        self.next_call += 1;
        let a = Leg {
            call_id: a_call_id.clone(),
            local_tag: a_tag.clone(),
            local_value: with_tag(&to_value, &a_tag),
            next_cseq: ids.cseq_start(),
            edge: setup.edge_a.clone(),
            flow: setup.a_flow.clone(),
            sdp: SdpOrigin::new(ids.sdp_session_id()),
            remotes: vec![Remote {
                tag: Some(from_tag),
                value: from_value,
                target: contact,
                // UAS: the route set is the Record-Route list in order (§12.1.1).
                route: invite.headers().values(&HeaderName::RecordRoute).collect(),
                cseq: Some(cseq.seq),
            }],
        };
        self.calls.insert(
            call,
            Call {
                a,
                a_invite: Some((tx.clone(), invite.clone())),
                a_invite_cseq: cseq.seq,
                forks: Vec::new(),
                winner: None,
                last_early: None,
                best: None,
                pending: Vec::new(),
                acks: Vec::new(),
                ending: false,
                ended: false,
            },
        );
        self.by_call_id
            .entry(a_call_id)
            .or_default()
            .push((call, LegRef::A));

        let mut actions = Vec::new();
        let mut failure: Option<Refusal> = None;
        for (i, target) in setup.targets.iter().enumerate() {
            let Ok(fork) = u16::try_from(i) else { break };
            let session_id = ids.sdp_session_id();
            // Anchor the offer for this fork: a placeholder leg holds the SDP origin.
            let body = if invite.body().is_empty() {
                None
            } else if is_sdp(invite.headers()) {
                let mut origin = SdpOrigin::new(session_id);
                let ctx = MediaContext {
                    call,
                    fork,
                    from: Side::A,
                    edge_ip: setup.edge_b.media_ip,
                };
                match rewrite_sdp(
                    invite.body().clone(),
                    &self.policy.sdp,
                    &mut origin,
                    anchor,
                    ctx,
                ) {
                    Ok(b) => Some((Bytes::from_static(b"application/sdp"), b, origin)),
                    Err(e) => {
                        failure = Some(Refusal::media(e));
                        break;
                    }
                }
            } else {
                invite
                    .headers()
                    .get_value(&HeaderName::ContentType)
                    .filter(|ct| self.policy.body_passes(ct))
                    .map(|ct| (ct, invite.body().clone(), SdpOrigin::new(session_id)))
            };
            let (body, origin) = match body {
                Some((ct, b, o)) => (Some((ct, b)), o),
                None => (None, SdpOrigin::new(session_id)),
            };
            let far = match build_far_invite(
                &self.policy,
                ids,
                &invite,
                &privacy,
                &setup.identity,
                &setup.callee,
                target,
                &setup.edge_b,
                body,
            ) {
                Ok(f) => f,
                Err(r) => {
                    failure = Some(r);
                    break;
                }
            };
            let leg = Leg {
                call_id: far.call_id.clone(),
                local_tag: far.local_tag.clone(),
                local_value: far.from_value.clone(),
                next_cseq: far.cseq.wrapping_add(1),
                edge: setup.edge_b.clone(),
                flow: target.flow.clone(),
                sdp: origin,
                remotes: Vec::new(),
            };
            if let Some(c) = self.calls.get_mut(&call) {
                c.forks.push(Fork {
                    leg,
                    invite: far.request.clone(),
                    invite_cseq: far.cseq,
                    to_base: far.to_value.clone(),
                    state: ForkState::Calling,
                    cancel_pending: false,
                });
                c.pending.push(Pending {
                    out: LegRef::B(fork),
                    remote: 0,
                    cseq: far.cseq,
                    method: Method::Invite,
                    initial: true,
                    incoming: None,
                });
            }
            self.by_call_id
                .entry(far.call_id.clone())
                .or_default()
                .push((call, LegRef::B(fork)));
            actions.push(Action::Send {
                call,
                leg: LegRef::B(fork),
                flow: target.flow.clone(),
                request: far.request,
            });
        }
        if let Some(r) = failure {
            anchor.release(call, None);
            self.remove(call);
            return (None, refuse(&r, tx, &invite, &a_tag));
        }
        (Some(call), actions)
    }

    fn remove(&mut self, call: CallRef) {
        if let Some(c) = self.calls.remove(&call) {
            let ids = std::iter::once(c.a.call_id.clone())
                .chain(c.forks.iter().map(|f| f.leg.call_id.clone()));
            for id in ids {
                if let Some(v) = self.by_call_id.get_mut(&id) {
                    v.retain(|(r, _)| *r != call);
                    if v.is_empty() {
                        self.by_call_id.remove(&id);
                    }
                }
            }
        }
    }

    /// Find the leg and remote dialog a request belongs to.
    fn find(
        &self,
        call_id: &Bytes,
        from_tag: Option<&Bytes>,
        to_tag: &Bytes,
    ) -> Option<(CallRef, LegRef, usize)> {
        let entries = self.by_call_id.get(call_id)?;
        for (call, leg) in entries {
            let Some(c) = self.calls.get(call) else {
                continue;
            };
            let Some(l) = c.leg(*leg) else { continue };
            if l.local_tag != *to_tag {
                continue;
            }
            if let Some(r) = l.remotes.iter().position(|r| r.tag.as_ref() == from_tag) {
                return Some((*call, *leg, r));
            }
        }
        None
    }

    /// Handle a request that is not a new INVITE (see [`Outcome`]).
    /// In-dialog requests for unknown dialogs are answered 481 (an ACK is
    /// dropped: it has no answer).
    pub fn handle_request(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        from: F,
        tx: K,
        req: Request,
    ) -> Outcome<F, K> {
        if *req.method() == Method::Cancel {
            return Outcome::Handled(self.on_cancel(ids, anchor, tx, &req));
        }
        let Some(to_tag) = req.to_tag() else {
            return Outcome::NotInDialog { tx, request: req };
        };
        let (Ok(call_id), Ok(cseq)) = (req.call_id(), req.cseq()) else {
            return Outcome::Handled(
                respond(tx, &req, 400, "Bad Request", None)
                    .into_iter()
                    .collect(),
            );
        };
        let from_tag = req.from_tag();
        let Some((call, leg, remote)) = self.find(&call_id, from_tag.as_ref(), &to_tag) else {
            if *req.method() == Method::Ack {
                return Outcome::Handled(Vec::new());
            }
            self.unknown_dialog += 1;
            return Outcome::Handled(
                respond(tx, &req, 481, "Call/Transaction Does Not Exist", None)
                    .into_iter()
                    .collect(),
            );
        };
        let method = req.method().clone();
        // Update the flow and the CSeq order (§12.2.2: lower → 500).
        if let Some(c) = self.calls.get_mut(&call)
            && let Some(l) = c.leg_mut(leg)
        {
            l.flow = from.clone();
            if method != Method::Ack
                && let Some(r) = l.remotes.get_mut(remote)
            {
                if r.cseq.is_some_and(|last| cseq.seq < last) {
                    return Outcome::Handled(
                        respond(tx, &req, 500, "Server Internal Error", None)
                            .into_iter()
                            .collect(),
                    );
                }
                r.cseq = Some(cseq.seq);
            }
        }
        let actions = match method {
            Method::Ack => self.on_ack(ids, anchor, call, leg, cseq.seq, &req),
            Method::Bye => self.on_bye(ids, anchor, call, leg, remote, tx, req),
            Method::Invite | Method::Update | Method::Info | Method::Options | Method::Notify => {
                self.forward(ids, anchor, call, leg, remote, tx, req)
            }
            _ => {
                let mut out: Actions<F, K> = Vec::new();
                if let Some(code) = StatusCode::new(501)
                    && let Ok(response) = req
                        .response(code)
                        .header(HeaderName::Allow, PrivacyPolicy::allow_value())
                        .build()
                {
                    out.push(Action::Respond { tx, response });
                }
                out
            }
        };
        Outcome::Handled(self.collect(call, anchor, actions))
    }

    /// Handle an ACK for a 2xx (the transaction layer's `Incoming::Ack`): it
    /// crosses as the far leg's ACK, with a late-offer answer if it carries
    /// one. An ACK for no known dialog is dropped.
    pub fn handle_ack(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        from: F,
        ack: &Request,
    ) -> Actions<F, K> {
        let (Some(to_tag), Ok(call_id), Ok(cseq)) = (ack.to_tag(), ack.call_id(), ack.cseq())
        else {
            return Vec::new();
        };
        if *ack.method() != Method::Ack {
            return Vec::new();
        }
        let Some((call, leg, _)) = self.find(&call_id, ack.from_tag().as_ref(), &to_tag) else {
            return Vec::new();
        };
        if let Some(l) = self.calls.get_mut(&call).and_then(|c| c.leg_mut(leg)) {
            l.flow = from;
        }
        let out = self.on_ack(ids, anchor, call, leg, cseq.seq, ack);
        self.collect(call, anchor, out)
    }

    /// GC after an event: a finished call is removed (and its media released).
    fn collect(
        &mut self,
        call: CallRef,
        anchor: &mut dyn MediaAnchor,
        mut actions: Actions<F, K>,
    ) -> Actions<F, K> {
        let Some(c) = self.calls.get_mut(&call) else {
            return actions;
        };
        if c.finished() {
            if !c.ended {
                c.ended = true;
                anchor.release(call, None);
                actions.push(Action::CallEnded { call });
            }
            self.remove(call);
        }
        actions
    }

    fn mark_ended(
        &mut self,
        call: CallRef,
        anchor: &mut dyn MediaAnchor,
        actions: &mut Actions<F, K>,
    ) {
        if let Some(c) = self.calls.get_mut(&call)
            && !c.ended
        {
            c.ended = true;
            anchor.release(call, None);
            actions.push(Action::CallEnded { call });
        }
    }

    /// The leg and remote dialog a request from `leg` goes to.
    fn peer_of(&self, call: CallRef, leg: LegRef, remote: usize) -> Option<(LegRef, usize)> {
        let c = self.calls.get(&call)?;
        match leg {
            LegRef::A => c.winner.or(c.last_early).map(|(f, r)| (LegRef::B(f), r)),
            LegRef::B(f) => match c.winner {
                Some(w) if w != (f, remote) => None,
                _ => Some((LegRef::A, 0)),
            },
        }
    }

    /// Build a request on `out` (remote dialog `remote`).
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of an in-dialog request"
    )]
    fn build_request(
        &self,
        ids: &mut dyn IdSource,
        call: CallRef,
        out: LegRef,
        remote: usize,
        method: Method,
        cseq: u32,
        src: Option<&Headers>,
        body: Body,
    ) -> Option<Request> {
        let c = self.calls.get(&call)?;
        let leg = c.leg(out)?;
        let r = leg.remotes.get(remote)?;
        let mut b = RequestBuilder::new(method.clone(), r.target.clone())
            .via(
                leg.edge.transport.as_str(),
                &leg.edge.sent_by(),
                &ids.branch(),
            )
            .max_forwards(self.policy.max_forwards);
        for route in &r.route {
            b = b.header(HeaderName::Route, route.clone());
        }
        b = b
            .header(HeaderName::From, leg.local_value.clone())
            .header(HeaderName::To, r.value.clone())
            .header(HeaderName::CallId, leg.call_id.clone())
            .cseq(cseq);
        if matches!(method, Method::Invite | Method::Update | Method::Notify) {
            b = b.header(HeaderName::Contact, leg.edge.contact());
        }
        if let Some(h) = src {
            for (n, v) in self.policy.crossing_headers(h) {
                b = b.header(n, v);
            }
        }
        if let Some(s) = &self.policy.server {
            b = b.header(HeaderName::UserAgent, s.clone());
        }
        if let Body::Typed(ct, body) = body {
            b = b.body(ct, body);
        }
        b.build().ok()
    }

    /// Build the response on `in_leg` to `req` for a response `src` (or a
    /// status the edge decided) from the other leg.
    fn build_response(
        &self,
        call: CallRef,
        in_leg: LegRef,
        req: &Request,
        status: u16,
        src: Option<&Headers>,
        body: Body,
    ) -> Option<Response> {
        let c = self.calls.get(&call)?;
        let leg = c.leg(in_leg)?;
        let code = StatusCode::new(status)?;
        // The reason phrase is the standard one: a peer's phrase is free text.
        let mut b = ResponseBuilder::for_request(req, code).to_tag(leg.local_tag.clone());
        let dialog_ok = (101..300).contains(&status);
        if dialog_ok && matches!(req.method(), Method::Invite | Method::Update) {
            b = b.header(HeaderName::Contact, leg.edge.contact());
        }
        if let Some(h) = src {
            for (n, v) in self.policy.crossing_headers(h) {
                b = b.header(n, v);
            }
        }
        if matches!(status, 405 | 501) {
            b = b.header(HeaderName::Allow, PrivacyPolicy::allow_value());
        }
        if let Some(s) = &self.policy.server {
            b = b.header(HeaderName::Server, s.clone());
        }
        if let Body::Typed(ct, body) = body {
            b = b.body(ct, body);
        }
        b.build().ok()
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of an in-dialog request"
    )]
    fn forward(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        call: CallRef,
        leg: LegRef,
        remote: usize,
        tx: K,
        req: Request,
    ) -> Actions<F, K> {
        let mut out = Vec::new();
        let internal = |tx: K, req: &Request| -> Actions<F, K> {
            respond(tx, req, 500, "Server Internal Error", None)
                .into_iter()
                .collect()
        };
        let Some((to, to_remote)) = self.peer_of(call, leg, remote) else {
            self.unknown_dialog += 1;
            return respond(tx, &req, 481, "Call/Transaction Does Not Exist", None)
                .into_iter()
                .collect();
        };
        let method = req.method().clone();
        if method == Method::Invite
            && let Some(c) = self.calls.get(&call)
            && (c.a_invite.is_some() || c.pending.iter().any(|p| p.method == Method::Invite))
        {
            // §14.2: a re-INVITE while another INVITE is pending.
            return respond(tx, &req, 491, "Request Pending", None)
                .into_iter()
                .collect();
        }
        let body = match self.body(call, leg, to, req.headers(), req.body(), anchor) {
            Ok(b) => b,
            Err(e) => {
                let r = Refusal::media(e);
                return respond(tx, &req, r.status, r.reason, None)
                    .into_iter()
                    .collect();
            }
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return internal(tx, &req);
        };
        let Some(l) = c.leg_mut(to) else {
            return internal(tx, &req);
        };
        let cseq = l.next_cseq;
        l.next_cseq = l.next_cseq.wrapping_add(1);
        let flow = l.flow.clone();
        let Some(request) = self.build_request(
            ids,
            call,
            to,
            to_remote,
            method.clone(),
            cseq,
            Some(req.headers()),
            body,
        ) else {
            return internal(tx, &req);
        };
        if let Some(c) = self.calls.get_mut(&call) {
            c.pending.push(Pending {
                out: to,
                remote: to_remote,
                cseq,
                method,
                initial: false,
                incoming: Some(Incoming {
                    tx,
                    request: req,
                    leg,
                    remote,
                }),
            });
        }
        out.push(Action::Send {
            call,
            leg: to,
            flow,
            request,
        });
        out
    }

    fn on_ack(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        call: CallRef,
        leg: LegRef,
        seq: u32,
        req: &Request,
    ) -> Actions<F, K> {
        let Some(c) = self.calls.get(&call) else {
            return Vec::new();
        };
        let Some(i) = c
            .acks
            .iter()
            .position(|a| a.in_leg == leg && a.in_cseq == seq)
        else {
            return Vec::new();
        };
        let (out, out_remote, out_cseq) = (c.acks[i].out, c.acks[i].out_remote, c.acks[i].out_cseq);
        // An ACK may carry the answer to an offer made in a 2xx (late offer).
        // One that cannot be anchored leaves the session without media: the
        // ACK still completes the far side's handshake, then the call ends.
        let (body, failed) = match self.body(call, leg, out, req.headers(), req.body(), anchor) {
            Ok(b) => (b, false),
            Err(_) => (Body::None, true),
        };
        let Some(ack) = self.build_request(
            ids,
            call,
            out,
            out_remote,
            Method::Ack,
            out_cseq,
            Some(req.headers()),
            body,
        ) else {
            return Vec::new();
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return Vec::new();
        };
        if let Some(link) = c.acks.get_mut(i) {
            link.sent = Some(ack.clone());
        }
        let Some(flow) = c.leg(out).map(|l| l.flow.clone()) else {
            return Vec::new();
        };
        let mut actions = vec![Action::SendAck {
            call,
            leg: out,
            flow,
            request: ack,
        }];
        if failed {
            actions.extend(self.end_call(ids, anchor, call));
        }
        actions
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of an in-dialog request"
    )]
    fn on_bye(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        call: CallRef,
        leg: LegRef,
        remote: usize,
        tx: K,
        req: Request,
    ) -> Actions<F, K> {
        let Some(c) = self.calls.get(&call) else {
            return Vec::new();
        };
        if leg == LegRef::A && c.winner.is_none() {
            // The caller ends an early dialog (§15): like a CANCEL.
            let mut out: Actions<F, K> = respond(tx, &req, 200, "OK", None).into_iter().collect();
            out.extend(self.abandon(ids, call));
            self.mark_ended(call, anchor, &mut out);
            return out;
        }
        let mut out = self.forward(ids, anchor, call, leg, remote, tx, req);
        if out.iter().any(|a| matches!(a, Action::Send { .. })) {
            if let Some(c) = self.calls.get_mut(&call) {
                c.ending = true;
            }
            self.mark_ended(call, anchor, &mut out);
        }
        out
    }

    /// The caller gave up before an answer: 487 to its INVITE, CANCEL the forks.
    fn abandon(&mut self, ids: &mut dyn IdSource, call: CallRef) -> Actions<F, K> {
        let mut out = Vec::new();
        let Some(c) = self.calls.get_mut(&call) else {
            return out;
        };
        if let Some((tx, invite)) = c.a_invite.take() {
            let tag = c.a.local_tag.clone();
            out.extend(respond(tx, &invite, 487, "Request Terminated", Some(&tag)));
        }
        out.extend(self.cancel_forks(ids, call, None, false));
        out
    }

    /// CANCEL every fork still ringing (except `keep`); a fork that has not
    /// answered at all is cancelled when its first provisional arrives
    /// (§9.1).
    fn cancel_forks(
        &mut self,
        ids: &mut dyn IdSource,
        call: CallRef,
        keep: Option<u16>,
        elsewhere: bool,
    ) -> Actions<F, K> {
        let _ = ids;
        let mut out = Vec::new();
        let Some(c) = self.calls.get_mut(&call) else {
            return out;
        };
        for (i, f) in c.forks.iter_mut().enumerate() {
            let Ok(fork) = u16::try_from(i) else { break };
            if Some(fork) == keep {
                continue;
            }
            match f.state {
                ForkState::Calling => f.cancel_pending = true,
                ForkState::Early => {
                    if let Some(req) = cancel_of(&f.invite, elsewhere) {
                        c.pending.push(Pending {
                            out: LegRef::B(fork),
                            remote: 0,
                            cseq: f.invite_cseq,
                            method: Method::Cancel,
                            initial: false,
                            incoming: None,
                        });
                        out.push(Action::Send {
                            call,
                            leg: LegRef::B(fork),
                            flow: f.leg.flow.clone(),
                            request: req,
                        });
                    }
                }
                ForkState::Answered | ForkState::Done => {}
            }
        }
        out
    }

    fn on_cancel(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        tx: K,
        cancel: &Request,
    ) -> Actions<F, K> {
        let (Ok(call_id), Ok(cseq)) = (cancel.call_id(), cancel.cseq()) else {
            return respond(tx, cancel, 400, "Bad Request", None)
                .into_iter()
                .collect();
        };
        let from_tag = cancel.from_tag();
        let found = self.by_call_id.get(&call_id).and_then(|v| {
            v.iter().find_map(|(call, leg)| {
                let c = self.calls.get(call)?;
                (*leg == LegRef::A
                    && c.a.remotes.first().is_some_and(|r| r.tag == from_tag)
                    && c.a_invite_cseq == cseq.seq)
                    .then_some(*call)
            })
        });
        let Some(call) = found else {
            self.unknown_dialog += 1;
            return respond(tx, cancel, 481, "Call/Transaction Does Not Exist", None)
                .into_iter()
                .collect();
        };
        let tag = self.calls.get(&call).map(|c| c.a.local_tag.clone());
        let mut out: Actions<F, K> = respond(tx, cancel, 200, "OK", tag.as_ref())
            .into_iter()
            .collect();
        let pending_invite = self.calls.get(&call).is_some_and(|c| c.a_invite.is_some());
        if pending_invite {
            out.extend(self.abandon(ids, call));
            self.mark_ended(call, anchor, &mut out);
        }
        self.collect(call, anchor, out)
    }

    /// Find the pending client transaction a response answers.
    fn find_pending(&self, resp: &Response) -> Option<(CallRef, usize)> {
        let call_id = resp.call_id().ok()?;
        let cseq = resp.cseq().ok()?;
        for (call, leg) in self.by_call_id.get(&call_id)? {
            let c = self.calls.get(call)?;
            if let Some(i) = c
                .pending
                .iter()
                .position(|p| p.out == *leg && p.cseq == cseq.seq && p.method == cseq.method)
            {
                return Some((*call, i));
            }
        }
        None
    }

    /// Handle a response of a client transaction the map started. Stray
    /// responses are dropped.
    pub fn handle_response(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        from: F,
        resp: Response,
    ) -> Actions<F, K> {
        let status = resp.status().as_u16();
        let Some((call, idx)) = self.find_pending(&resp) else {
            // A 2xx retransmission for a winning INVITE whose pending entry is gone.
            return self.unmatched_2xx(ids, &resp);
        };
        let Some(p) = self
            .calls
            .get(&call)
            .and_then(|c| c.pending.get(idx))
            .cloned()
        else {
            return Vec::new();
        };
        if let Some(l) = self.calls.get_mut(&call).and_then(|c| c.leg_mut(p.out)) {
            l.flow = from;
        }
        // `100 Trying` is hop by hop: it never crosses, but it is a
        // provisional response, so a fork waiting to be cancelled (§9.1) may
        // now be.
        if status == 100 && !p.initial {
            return Vec::new();
        }
        let final_ = status >= 200;
        if p.initial
            && let LegRef::B(fork) = p.out
        {
            let out = self.on_fork_response(ids, anchor, call, fork, idx, resp);
            return self.collect(call, anchor, out);
        }
        if final_ && let Some(c) = self.calls.get_mut(&call) {
            c.pending.remove(idx);
        }
        let mut out = Vec::new();
        if let Some(inc) = p.incoming {
            let in_cseq = inc.request.cseq().map(|c| c.seq).unwrap_or(0);
            // Target refresh (§12.2): a 2xx to a re-INVITE/UPDATE moves both
            // remote targets to the Contacts the two parties just sent.
            if (200..300).contains(&status) && matches!(p.method, Method::Invite | Method::Update) {
                if let Some(t) = first_contact(resp.headers())
                    && let Some(r) = self
                        .calls
                        .get_mut(&call)
                        .and_then(|c| c.leg_mut(p.out))
                        .and_then(|l| l.remotes.get_mut(p.remote))
                {
                    r.target = t;
                }
                if let Some(t) = first_contact(inc.request.headers())
                    && let Some(r) = self
                        .calls
                        .get_mut(&call)
                        .and_then(|c| c.leg_mut(inc.leg))
                        .and_then(|l| l.remotes.get_mut(inc.remote))
                {
                    r.target = t;
                }
            }
            let body = self
                .body(call, p.out, inc.leg, resp.headers(), resp.body(), anchor)
                .ok();
            let failed = body.is_none();
            let (status_out, body) = match body {
                Some(b) => (map_status(status), b),
                None => (500, Body::None),
            };
            if (200..300).contains(&status)
                && p.method == Method::Invite
                && let Some(c) = self.calls.get_mut(&call)
            {
                c.acks.retain(|a| a.in_leg != inc.leg);
                c.acks.push(AckLink {
                    in_leg: inc.leg,
                    in_cseq,
                    out: p.out,
                    out_remote: p.remote,
                    out_cseq: p.cseq,
                    sent: None,
                });
            }
            if let Some(response) = self.build_response(
                call,
                inc.leg,
                &inc.request,
                status_out,
                Some(resp.headers()),
                body,
            ) {
                out.push(Action::Respond {
                    tx: inc.tx,
                    response,
                });
            }
            if failed && (200..300).contains(&status) && p.method == Method::Invite {
                // The far side accepted a session the edge cannot anchor:
                // complete its handshake, then end the call on both legs.
                if let Some(ack) = self.build_request(
                    ids,
                    call,
                    p.out,
                    p.remote,
                    Method::Ack,
                    p.cseq,
                    None,
                    Body::None,
                ) && let Some(flow) = self
                    .calls
                    .get(&call)
                    .and_then(|c| c.leg(p.out))
                    .map(|l| l.flow.clone())
                {
                    out.push(Action::SendAck {
                        call,
                        leg: p.out,
                        flow,
                        request: ack,
                    });
                }
                if let Some(c) = self.calls.get_mut(&call) {
                    c.acks.retain(|a| a.in_leg != inc.leg);
                }
                out.extend(self.end_call(ids, anchor, call));
            }
        }
        self.collect(call, anchor, out)
    }

    /// A 2xx to an INVITE whose transaction the map no longer tracks: a
    /// retransmission (the ACK is sent again, RFC 3261 §13.2.2.4), or a
    /// further dialog created by the same far-leg INVITE (a forking proxy
    /// behind the target), which is ACKed and ended with BYE.
    fn unmatched_2xx(&mut self, ids: &mut dyn IdSource, resp: &Response) -> Actions<F, K> {
        if !(200..300).contains(&resp.status().as_u16()) {
            return Vec::new();
        }
        let (Ok(call_id), Ok(cseq)) = (resp.call_id(), resp.cseq()) else {
            return Vec::new();
        };
        if cseq.method != Method::Invite {
            return Vec::new();
        }
        let Some(entries) = self.by_call_id.get(&call_id).cloned() else {
            return Vec::new();
        };
        let tag = resp.to_tag();
        for (call, leg) in entries {
            let Some(c) = self.calls.get(&call) else {
                continue;
            };
            let Some(l) = c.leg(leg) else { continue };
            let known = l.remotes.iter().position(|r| r.tag == tag);
            if let Some(r) = known {
                if let Some(a) = c
                    .acks
                    .iter()
                    .find(|a| a.out == leg && a.out_remote == r && a.out_cseq == cseq.seq)
                {
                    return match &a.sent {
                        Some(ack) => vec![Action::SendAck {
                            call,
                            leg,
                            flow: l.flow.clone(),
                            request: ack.clone(),
                        }],
                        None => Vec::new(),
                    };
                }
                // The winner's dialog (its ACK link replaced by a later
                // re-INVITE's): nothing to do.
                if let LegRef::B(f) = leg
                    && c.winner == Some((f, r))
                {
                    return Vec::new();
                }
            }
            if let LegRef::B(fork) = leg
                && c.forks
                    .get(usize::from(fork))
                    .is_some_and(|f| f.invite_cseq == cseq.seq)
            {
                let Some(r) = self.remote_for(call, fork, resp) else {
                    return Vec::new();
                };
                return self.ack_and_bye(ids, call, fork, r);
            }
        }
        Vec::new()
    }

    /// Record (or find) the early/confirmed dialog a far-leg response names.
    fn remote_for(&mut self, call: CallRef, fork: u16, resp: &Response) -> Option<usize> {
        let c = self.calls.get_mut(&call)?;
        let f = c.forks.get_mut(usize::from(fork))?;
        let tag = resp.to_tag();
        // UAC: the route set is the Record-Route list reversed (§12.1.2).
        let mut route: Vec<Bytes> = resp.headers().values(&HeaderName::RecordRoute).collect();
        route.reverse();
        let target = first_contact(resp.headers());
        if let Some(i) = f.leg.remotes.iter().position(|r| r.tag == tag) {
            let r = f.leg.remotes.get_mut(i)?;
            if let Some(t) = target {
                r.target = t;
            }
            if resp.status().is_success() {
                r.route = route;
            }
            return Some(i);
        }
        let value = match &tag {
            Some(t) => with_tag(&f.to_base, t),
            None => f.to_base.clone(),
        };
        f.leg.remotes.push(Remote {
            tag,
            value,
            target: target.unwrap_or_else(|| f.invite.uri().clone()),
            route,
            cseq: None,
        });
        Some(f.leg.remotes.len() - 1)
    }

    fn on_fork_response(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        call: CallRef,
        fork: u16,
        idx: usize,
        resp: Response,
    ) -> Actions<F, K> {
        let mut out = Vec::new();
        let status = resp.status().as_u16();
        let fi = usize::from(fork);
        if status < 200 {
            let remote = if status > 100 && resp.to_tag().is_some() {
                self.remote_for(call, fork, &resp)
            } else {
                None
            };
            let Some(c) = self.calls.get_mut(&call) else {
                return out;
            };
            let Some(f) = c.forks.get_mut(fi) else {
                return out;
            };
            if f.state == ForkState::Calling {
                f.state = ForkState::Early;
            }
            if f.cancel_pending {
                f.cancel_pending = false;
                if let Some(req) = cancel_of(&f.invite, c.winner.is_some()) {
                    let flow = f.leg.flow.clone();
                    let cseq = f.invite_cseq;
                    c.pending.push(Pending {
                        out: LegRef::B(fork),
                        remote: 0,
                        cseq,
                        method: Method::Cancel,
                        initial: false,
                        incoming: None,
                    });
                    out.push(Action::Send {
                        call,
                        leg: LegRef::B(fork),
                        flow,
                        request: req,
                    });
                }
                return out;
            }
            if c.winner.is_some() || status == 100 {
                return out;
            }
            let Some((tx, invite)) = c.a_invite.clone() else {
                return out;
            };
            if let Some(r) = remote {
                c.last_early = Some((fork, r));
            }
            let body = self.body(
                call,
                LegRef::B(fork),
                LegRef::A,
                resp.headers(),
                resp.body(),
                anchor,
            );
            let Ok(body) = body else {
                // An early answer that cannot be anchored is not relayed.
                return out;
            };
            if let Some(response) =
                self.build_response(call, LegRef::A, &invite, status, Some(resp.headers()), body)
            {
                out.push(Action::Respond { tx, response });
            }
            return out;
        }
        if (200..300).contains(&status) {
            let Some(remote) = self.remote_for(call, fork, &resp) else {
                return out;
            };
            let Some(c) = self.calls.get_mut(&call) else {
                return out;
            };
            c.pending.remove(idx);
            let Some(f) = c.forks.get_mut(fi) else {
                return out;
            };
            f.state = ForkState::Answered;
            let invite_cseq = f.invite_cseq;
            if c.winner.is_none()
                && let Some((tx, invite)) = c.a_invite.clone()
            {
                let body = self.body(
                    call,
                    LegRef::B(fork),
                    LegRef::A,
                    resp.headers(),
                    resp.body(),
                    anchor,
                );
                let Some(c) = self.calls.get_mut(&call) else {
                    return out;
                };
                match body {
                    Ok(body) => {
                        c.winner = Some((fork, remote));
                        c.a_invite = None;
                        c.acks.push(AckLink {
                            in_leg: LegRef::A,
                            in_cseq: c.a_invite_cseq,
                            out: LegRef::B(fork),
                            out_remote: remote,
                            out_cseq: invite_cseq,
                            sent: None,
                        });
                        if let Some(response) = self.build_response(
                            call,
                            LegRef::A,
                            &invite,
                            status,
                            Some(resp.headers()),
                            body,
                        ) {
                            out.push(Action::Respond { tx, response });
                        }
                        out.extend(self.cancel_forks(ids, call, Some(fork), true));
                        if let Some(c) = self.calls.get(&call) {
                            for j in 0..c.forks.len() {
                                if let Ok(j) = u16::try_from(j)
                                    && j != fork
                                {
                                    anchor.release(call, Some(j));
                                }
                            }
                        }
                    }
                    Err(_) => {
                        // The answer cannot be anchored: fail the caller, end the callee's dialog.
                        c.a_invite = None;
                        out.extend(respond(
                            tx,
                            &invite,
                            500,
                            "Server Internal Error",
                            Some(&c.a.local_tag),
                        ));
                        out.extend(self.ack_and_bye(ids, call, fork, remote));
                        out.extend(self.cancel_forks(ids, call, Some(fork), false));
                        self.mark_ended(call, anchor, &mut out);
                    }
                }
                return out;
            }
            // A second answer (another fork or another early dialog), or the caller is gone.
            out.extend(self.ack_and_bye(ids, call, fork, remote));
            return out;
        }
        // Final non-2xx from this fork.
        let Some(c) = self.calls.get_mut(&call) else {
            return out;
        };
        c.pending.remove(idx);
        if let Some(f) = c.forks.get_mut(fi) {
            f.state = ForkState::Done;
            f.cancel_pending = false;
        }
        anchor.release(call, Some(fork));
        if c.winner.is_some() || c.a_invite.is_none() {
            return out;
        }
        let mapped = map_status(status);
        let better = match &c.best {
            None => true,
            Some(b) => {
                let (old, new) = (map_status(b.status().as_u16()), mapped);
                // Prefer 6xx, then 4xx over 5xx (RFC 3261 §16.7 step 6, simplified).
                let rank = |s: u16| match s / 100 {
                    6 => 0,
                    4 => 1,
                    _ => 2,
                };
                rank(new) < rank(old)
            }
        };
        if better {
            c.best = Some(resp);
        }
        let global = mapped >= 600;
        let all_done = c
            .forks
            .iter()
            .all(|f| matches!(f.state, ForkState::Done | ForkState::Answered));
        if global || all_done {
            let Some((tx, invite)) = c.a_invite.take() else {
                return out;
            };
            let Some(best) = c.best.take() else {
                return out;
            };
            let code = map_status(best.status().as_u16());
            if let Some(response) = self.build_response(
                call,
                LegRef::A,
                &invite,
                code,
                Some(best.headers()),
                Body::None,
            ) {
                out.push(Action::Respond { tx, response });
            }
            out.extend(self.cancel_forks(ids, call, None, false));
            self.mark_ended(call, anchor, &mut out);
        }
        out
    }

    /// ACK a 2xx the call does not want and end that dialog with BYE.
    fn ack_and_bye(
        &mut self,
        ids: &mut dyn IdSource,
        call: CallRef,
        fork: u16,
        remote: usize,
    ) -> Actions<F, K> {
        let mut out = Vec::new();
        let leg = LegRef::B(fork);
        let Some(c) = self.calls.get(&call) else {
            return out;
        };
        let Some(f) = c.forks.get(usize::from(fork)) else {
            return out;
        };
        let (invite_cseq, flow) = (f.invite_cseq, f.leg.flow.clone());
        if let Some(ack) = self.build_request(
            ids,
            call,
            leg,
            remote,
            Method::Ack,
            invite_cseq,
            None,
            Body::None,
        ) {
            // Kept so a retransmitted 2xx is ACKed again (no request on the
            // B leg ever matches this link: the callee does not ACK).
            if let Some(c) = self.calls.get_mut(&call) {
                c.acks.push(AckLink {
                    in_leg: leg,
                    in_cseq: invite_cseq,
                    out: leg,
                    out_remote: remote,
                    out_cseq: invite_cseq,
                    sent: Some(ack.clone()),
                });
            }
            out.push(Action::SendAck {
                call,
                leg,
                flow: flow.clone(),
                request: ack,
            });
        }
        let Some(l) = self.calls.get_mut(&call).and_then(|c| c.leg_mut(leg)) else {
            return out;
        };
        let cseq = l.next_cseq;
        l.next_cseq = l.next_cseq.wrapping_add(1);
        if let Some(bye) =
            self.build_request(ids, call, leg, remote, Method::Bye, cseq, None, Body::None)
        {
            if let Some(c) = self.calls.get_mut(&call) {
                c.pending.push(Pending {
                    out: leg,
                    remote,
                    cseq,
                    method: Method::Bye,
                    initial: false,
                    incoming: None,
                });
            }
            out.push(Action::Send {
                call,
                leg,
                flow,
                request: bye,
            });
        }
        out
    }

    /// End `call` from the edge (media timeout, maximum duration): a
    /// ringing call gets 480 on the caller's leg and CANCEL on the forks; an
    /// answered one BYE on both legs.
    pub fn end_call(
        &mut self,
        ids: &mut dyn IdSource,
        anchor: &mut dyn MediaAnchor,
        call: CallRef,
    ) -> Actions<F, K> {
        let mut out = Vec::new();
        let Some(c) = self.calls.get_mut(&call) else {
            return out;
        };
        if let Some((tx, invite)) = c.a_invite.take() {
            let tag = c.a.local_tag.clone();
            out.extend(respond(
                tx,
                &invite,
                480,
                "Temporarily Unavailable",
                Some(&tag),
            ));
            out.extend(self.cancel_forks(ids, call, None, false));
        } else if let Some((fork, remote)) = c.winner
            && !c.ending
        {
            c.ending = true;
            for (leg, r) in [(LegRef::A, 0), (LegRef::B(fork), remote)] {
                let Some(l) = self.calls.get_mut(&call).and_then(|c| c.leg_mut(leg)) else {
                    continue;
                };
                let cseq = l.next_cseq;
                l.next_cseq = l.next_cseq.wrapping_add(1);
                let flow = l.flow.clone();
                if let Some(bye) =
                    self.build_request(ids, call, leg, r, Method::Bye, cseq, None, Body::None)
                {
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.pending.push(Pending {
                            out: leg,
                            remote: r,
                            cseq,
                            method: Method::Bye,
                            initial: false,
                            incoming: None,
                        });
                    }
                    out.push(Action::Send {
                        call,
                        leg,
                        flow,
                        request: bye,
                    });
                }
            }
        }
        self.mark_ended(call, anchor, &mut out);
        self.collect(call, anchor, out)
    }
}

/// The CANCEL for a far-leg INVITE (§9.1), with `Reason` saying the call
/// was answered elsewhere when a fork lost (RFC 3326), so the callee's
/// devices do not log a missed call.
fn cancel_of(invite: &Request, elsewhere: bool) -> Option<Request> {
    let mut c = invite.cancel().ok()?;
    if elsewhere {
        let h = Header::new(
            HeaderName::Reason,
            b"SIP;cause=200;text=\"Call completed elsewhere\"",
        )
        .ok()?;
        c.headers_mut().push(h);
    }
    Some(c)
}
