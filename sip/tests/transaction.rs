//! Transaction layer tests on a virtual clock: two in-memory endpoints over a
//! simulated link that drops, duplicates and reorders datagrams (seeded
//! PRNG in this file). No sleeps; every test asserts specific outcomes.

use std::time::Duration;

use bytes::Bytes;
use sipveil_sip::transaction::{
    Config, Event, Incoming, Instant, Kind, Remote, SendError, State, TransactionLayer, response_to,
};
use sipveil_sip::{Message, Request, Response};

use sim::{
    Impairment, Side, Sim, Tu, absorbed, events_of, requests, responses, sent_lines, start_line,
};

// ---- message helpers (the only place that knows the message API) ----

fn parse(payload: Bytes) -> Message {
    sipveil_sip::parse_datagram(payload, &sipveil_sip::Limits::default())
        .expect("test messages parse")
}

fn method_of(request: &Request) -> String {
    request.method().to_string()
}

fn status_of(response: &Response) -> u16 {
    response.status().as_u16()
}

fn as_request(payload: Bytes) -> Request {
    match parse(payload) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("expected a request"),
    }
}

/// A request from A (a.example) to B, as text.
fn request_text(
    method: &str,
    branch: Option<&str>,
    cseq: u32,
    call_id: &str,
    to_tag: Option<&str>,
) -> Bytes {
    let branch = branch.map(|b| format!(";branch={b}")).unwrap_or_default();
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    Bytes::from(format!(
        "{method} sip:bob@b.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP a.example:5060{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@a.example>;tag=fa1\r\n\
         To: <sip:bob@b.example>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

/// A new client request on `side` with a branch minted by its layer.
fn new_request(sim: &mut Sim, side: Side, method: &str, call_id: &str) -> Request {
    let branch = sim.node(side).layer.new_branch();
    as_request(request_text(method, Some(&branch), 1, call_id, None))
}

/// The UAS answer to `request` with `status` (To tag `tb1` except on 100).
fn respond(request: &Request, status: u16) -> Response {
    let tag = (status != 100).then_some("tb1");
    response_to(request, status, tag).expect("response can be built")
}

/// A TU that answers every new request (not CANCEL) with `codes`, in order.
fn answer_with(codes: &'static [u16]) -> Tu {
    Box::new(move |now, layer, incoming| {
        if let Incoming::Request { key, request, .. } = incoming {
            for &code in codes {
                layer
                    .send_response(now, *key, respond(request, code))
                    .expect("response accepted");
            }
        }
    })
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn header_line<'a>(payload: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(payload).ok()?;
    text.split("\r\n").find(|l| {
        l.len() > name.len()
            && l[..name.len()].eq_ignore_ascii_case(name)
            && l.as_bytes()[name.len()] == b':'
    })
}

mod sim {
    use super::parse;
    // Test harness: two transaction layers joined by a simulated link on a
    // virtual clock. The link drops, duplicates and delays (hence reorders)
    // datagrams from a seeded SplitMix64 PRNG, so every run is deterministic.
    // Nothing sleeps; time jumps to the next delivery or timer.

    use std::collections::VecDeque;
    use std::time::Duration;

    use bytes::Bytes;
    use sipveil_sip::transaction::{
        Config, Event, Incoming, Instant, Remote, TransactionId, TransactionLayer,
    };
    use sipveil_sip::{Request, Response};

    /// SplitMix64: tiny, seedable, good enough to pick drops.
    #[derive(Clone, Debug)]
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// True with probability `percent`/100.
        pub fn chance(&mut self, percent: u64) -> bool {
            self.next_u64() % 100 < percent
        }

        /// Uniform in `[lo, hi]` milliseconds.
        pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
            Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
        }
    }

    /// Which endpoint.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Side {
        A,
        B,
    }

    impl Side {
        pub fn other(self) -> Side {
            match self {
                Side::A => Side::B,
                Side::B => Side::A,
            }
        }
    }

    /// Impairments of the link, per datagram.
    #[derive(Clone, Debug)]
    pub struct Impairment {
        pub drop_percent: u64,
        pub duplicate_percent: u64,
        /// One-way delay range; a wide range reorders datagrams.
        pub delay_ms: (u64, u64),
    }

    impl Impairment {
        pub const PERFECT: Impairment = Impairment {
            drop_percent: 0,
            duplicate_percent: 0,
            delay_ms: (10, 10),
        };
    }

    /// Decides to drop one datagram regardless of the random impairment:
    /// `(to, payload) -> drop?`.
    pub type DropRule = Box<dyn FnMut(Side, &[u8]) -> bool>;

    /// What a node's TU does with each incoming message (after it is logged).
    pub type Tu = Box<dyn FnMut(Instant, &mut TransactionLayer<Side>, &Incoming)>;

    pub struct Node {
        pub layer: TransactionLayer<Side>,
        /// Everything `handle_incoming` returned, with the time.
        pub incoming: Vec<(Instant, Incoming)>,
        /// Everything `poll_event` returned, with the time.
        pub events: Vec<(Instant, Event)>,
        /// Everything the layer transmitted, with the time (before the link).
        pub sent: Vec<(Instant, Bytes, Option<TransactionId>)>,
        pub tu: Option<Tu>,
    }

    struct InFlight {
        at: Instant,
        seq: u64,
        to: Side,
        payload: Bytes,
    }

    pub struct Sim {
        pub now: Instant,
        pub a: Node,
        pub b: Node,
        pub reliable: bool,
        pub impairment: Impairment,
        pub drop_rule: Option<DropRule>,
        /// Datagrams the link dropped (random or by rule).
        pub dropped: Vec<(Instant, Side, Bytes)>,
        rng: Rng,
        seq: u64,
        in_flight: Vec<InFlight>,
    }

    impl Sim {
        pub fn new(config: Config, reliable: bool, impairment: Impairment, seed: u64) -> Sim {
            let node = |branch_seed| Node {
                layer: TransactionLayer::new(config, branch_seed).expect("valid config"),
                incoming: Vec::new(),
                events: Vec::new(),
                sent: Vec::new(),
                tu: None,
            };
            Sim {
                now: Instant::ZERO,
                a: node(seed ^ 0xA),
                b: node(seed ^ 0xB),
                reliable,
                impairment,
                drop_rule: None,
                dropped: Vec::new(),
                rng: Rng::new(seed),
                seq: 0,
                in_flight: Vec::new(),
            }
        }

        pub fn node(&mut self, side: Side) -> &mut Node {
            match side {
                Side::A => &mut self.a,
                Side::B => &mut self.b,
            }
        }

        pub fn remote(&self, side: Side) -> Remote<Side> {
            Remote {
                peer: side,
                reliable: self.reliable,
            }
        }

        /// Starts a client transaction on `from` towards the other side.
        pub fn send_request(&mut self, from: Side, request: Request) -> TransactionId {
            let now = self.now;
            let remote = self.remote(from.other());
            let key = self
                .node(from)
                .layer
                .send_request(now, remote, request)
                .expect("request accepted");
            self.flush(from);
            key
        }

        /// Sends a response through server transaction `key` of `from`.
        pub fn send_response(&mut self, from: Side, key: TransactionId, response: Response) {
            let now = self.now;
            self.node(from)
                .layer
                .send_response(now, key, response)
                .expect("response accepted");
            self.flush(from);
        }

        /// Moves queued transmits and events of `side` onto the link and logs.
        pub fn flush(&mut self, side: Side) {
            let now = self.now;
            loop {
                let node = self.node(side);
                let Some(t) = node.layer.poll_transmit() else {
                    break;
                };
                assert_eq!(t.peer, side.other(), "a layer only talks to its peer");
                node.sent.push((now, t.payload.clone(), t.transaction));
                self.put_on_link(side.other(), t.payload);
            }
            let node = self.node(side);
            while let Some(e) = node.layer.poll_event() {
                node.events.push((now, e));
            }
        }

        fn put_on_link(&mut self, to: Side, payload: Bytes) {
            if let Some(rule) = self.drop_rule.as_mut()
                && rule(to, &payload)
            {
                self.dropped.push((self.now, to, payload));
                return;
            }
            if self.reliable {
                // A stream: in order, exactly once, fixed latency.
                let at = self.now + Duration::from_millis(self.impairment.delay_ms.0);
                self.enqueue(at, to, payload);
                return;
            }
            if self.rng.chance(self.impairment.drop_percent) {
                self.dropped.push((self.now, to, payload));
                return;
            }
            let copies = if self.rng.chance(self.impairment.duplicate_percent) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let (lo, hi) = self.impairment.delay_ms;
                let at = self.now + self.rng.millis(lo, hi);
                self.enqueue(at, to, payload.clone());
            }
        }

        fn enqueue(&mut self, at: Instant, to: Side, payload: Bytes) {
            self.seq += 1;
            self.in_flight.push(InFlight {
                at,
                seq: self.seq,
                to,
                payload,
            });
        }

        /// Hands `payload` to `to` as if it arrived now (bypasses the link).
        pub fn deliver(&mut self, to: Side, payload: Bytes) -> Incoming {
            let message = parse(payload);
            let now = self.now;
            let remote = self.remote(to.other());
            let incoming = self.node(to).layer.handle_incoming(now, remote, message);
            let node = self.node(to);
            if let Some(mut tu) = node.tu.take() {
                tu(now, &mut node.layer, &incoming);
                node.tu = Some(tu);
            }
            node.incoming.push((now, incoming.clone()));
            self.flush(to);
            incoming
        }

        /// The next instant something happens, if anything will.
        pub fn next_instant(&self) -> Option<Instant> {
            let link = self.in_flight.iter().map(|f| f.at).min();
            [
                link,
                self.a.layer.poll_timeout(),
                self.b.layer.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
        }

        /// Advances to the next happening at or before `until`; false when none.
        pub fn step(&mut self, until: Instant) -> bool {
            let Some(next) = self.next_instant() else {
                return false;
            };
            if next > until {
                return false;
            }
            assert!(next >= self.now, "time never goes backwards");
            self.now = next;
            // Deliveries due now, in (time, send order) order.
            let mut due: Vec<InFlight> = Vec::new();
            let mut rest = Vec::new();
            for f in self.in_flight.drain(..) {
                if f.at <= next {
                    due.push(f)
                } else {
                    rest.push(f)
                }
            }
            self.in_flight = rest;
            due.sort_by_key(|f| (f.at, f.seq));
            for f in due {
                self.deliver(f.to, f.payload);
            }
            for side in [Side::A, Side::B] {
                if self
                    .node(side)
                    .layer
                    .poll_timeout()
                    .is_some_and(|t| t <= next)
                {
                    self.node(side).layer.handle_timeout(next);
                    self.flush(side);
                }
            }
            true
        }

        /// Runs until nothing is left to happen or `until` is reached; bounded.
        pub fn run_until(&mut self, until: Instant) {
            for _ in 0..100_000 {
                if !self.step(until) {
                    return;
                }
            }
            panic!("simulation did not settle within 100000 steps");
        }

        /// Runs until idle (no datagram in flight, no timer armed), at most 10 min.
        pub fn run_to_idle(&mut self) {
            let limit = self.now + Duration::from_secs(600);
            self.run_until(limit);
            assert!(
                self.next_instant().is_none(),
                "still busy after 10 virtual minutes"
            );
        }
    }

    /// Pending messages of a node as a queue, for tests that script the TU.
    pub fn requests(node: &Node) -> VecDeque<(TransactionId, Request)> {
        node.incoming
            .iter()
            .filter_map(|(_, i)| match i {
                Incoming::Request { key, request, .. } => Some((*key, request.clone())),
                _ => None,
            })
            .collect()
    }

    /// The responses the TU of `node` saw for client transaction `key`.
    pub fn responses(node: &Node, key: TransactionId) -> Vec<Response> {
        node.incoming
            .iter()
            .filter_map(|(_, i)| match i {
                Incoming::Response { key: k, response } if *k == key => Some(response.clone()),
                _ => None,
            })
            .collect()
    }

    /// Count of `Absorbed` results for `key`.
    pub fn absorbed(node: &Node, key: TransactionId) -> usize {
        node.incoming
            .iter()
            .filter(|(_, i)| matches!(i, Incoming::Absorbed { key: k } if *k == key))
            .count()
    }

    /// The events of `node` for `key`, without times.
    pub fn events_of(node: &Node, key: TransactionId) -> Vec<Event> {
        node.events
            .iter()
            .filter(|(_, e)| match e {
                Event::Timeout { key: k }
                | Event::TransportError { key: k }
                | Event::Terminated { key: k } => *k == key,
                _ => false,
            })
            .map(|(_, e)| *e)
            .collect()
    }

    /// Start lines of what `node` sent, with times.
    pub fn sent_lines(node: &Node) -> Vec<(Instant, String)> {
        node.sent
            .iter()
            .map(|(t, b, _)| (*t, start_line(b)))
            .collect()
    }

    /// The first line of a message.
    pub fn start_line(payload: &[u8]) -> String {
        let end = payload
            .iter()
            .position(|&c| c == b'\r')
            .unwrap_or(payload.len());
        String::from_utf8_lossy(&payload[..end]).into_owned()
    }
}

// ---- tests ----

const T1: u64 = 500;

/// Non-INVITE over a link losing 30 %, duplicating 20 % and reordering
/// (5–300 ms jitter): for every seed the TU on each side sees the exchange
/// exactly once and both transactions end without a timeout.
#[test]
fn non_invite_over_lossy_link_completes() {
    let lossy = Impairment {
        drop_percent: 30,
        duplicate_percent: 20,
        delay_ms: (5, 300),
    };
    let mut total_dropped = 0;
    let mut total_request_sends = 0;
    let mut total_absorbed_at_b = 0;
    for seed in 1..=24u64 {
        let mut sim = Sim::new(Config::default(), false, lossy.clone(), seed);
        sim.b.tu = Some(answer_with(&[200]));
        let request = new_request(&mut sim, Side::A, "OPTIONS", &format!("lossy-{seed}"));
        let key = sim.send_request(Side::A, request);
        sim.run_to_idle();

        let got = responses(&sim.a, key);
        assert_eq!(
            got.len(),
            1,
            "seed {seed}: the TU sees the final response once"
        );
        assert_eq!(status_of(&got[0]), 200, "seed {seed}");
        assert_eq!(
            events_of(&sim.a, key),
            [Event::Terminated { key }],
            "seed {seed}: no timeout"
        );
        let server_requests = requests(&sim.b);
        assert_eq!(
            server_requests.len(),
            1,
            "seed {seed}: B's TU sees one request"
        );
        let (bkey, _) = server_requests[0].clone();
        assert_eq!(
            events_of(&sim.b, bkey),
            [Event::Terminated { key: bkey }],
            "seed {seed}"
        );
        // Everything else B received was absorbed by that transaction.
        let others = sim.b.incoming.len() - 1;
        assert_eq!(absorbed(&sim.b, bkey), others, "seed {seed}");
        assert!(
            sim.a.layer.is_empty() && sim.b.layer.is_empty(),
            "seed {seed}"
        );

        total_dropped += sim.dropped.len();
        total_request_sends += sent_lines(&sim.a).len();
        total_absorbed_at_b += others;
    }
    // The link really was hostile, and retransmission really was exercised.
    assert!(total_dropped > 10, "dropped {total_dropped}");
    assert!(
        total_request_sends > 24 + 10,
        "request sends {total_request_sends}"
    );
    assert!(total_absorbed_at_b > 10, "absorbed {total_absorbed_at_b}");
}

/// INVITE answered 180 then 200: the client TU sees both; a 2xx copy the
/// server TU resends reaches the client TU again (RFC 6026) so it can re-ACK;
/// the ACK for the 2xx goes to the server TU; INVITE copies after the 2xx are
/// absorbed; both sides stay in Accepted for 64·T1.
#[test]
fn invite_2xx_reaches_tu_and_accepted_state_lasts_64_t1() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 7);
    sim.b.tu = Some(answer_with(&[180, 200]));
    let invite = new_request(&mut sim, Side::A, "INVITE", "inv-2xx");
    let key = sim.send_request(Side::A, invite);
    sim.run_until(ms(100));

    let got: Vec<u16> = responses(&sim.a, key).iter().map(status_of).collect();
    assert_eq!(got, [180, 200]);
    assert_eq!(
        sim.a.layer.state(key),
        Some((Kind::ClientInvite, State::Accepted))
    );
    let (bkey, _) = requests(&sim.b)[0].clone();
    assert_eq!(
        sim.b.layer.state(bkey),
        Some((Kind::ServerInvite, State::Accepted))
    );
    // No ACK is generated by the transaction layer for a 2xx.
    assert!(
        sent_lines(&sim.a)
            .iter()
            .all(|(_, l)| !l.starts_with("ACK"))
    );

    // The server TU retransmits its 2xx through the transaction.
    let two_hundred = respond(&sim.b.layer.request(bkey).expect("live").clone(), 200);
    sim.send_response(Side::B, bkey, two_hundred);
    sim.run_until(ms(200));
    let got: Vec<u16> = responses(&sim.a, key).iter().map(status_of).collect();
    assert_eq!(got, [180, 200, 200], "2xx copies reach the TU in Accepted");

    // An INVITE copy arriving at B now is absorbed without an answer.
    let sent_before = sim.b.sent.len();
    let copy = sim.a.sent[0].1.clone();
    assert!(matches!(sim.deliver(Side::B, copy), Incoming::Absorbed { key: k } if k == bkey));
    assert_eq!(sim.b.sent.len(), sent_before);

    // The ACK for the 2xx is the TU's, sent statelessly with its own branch.
    let branch = sim.a.layer.new_branch();
    let ack = parse(request_text(
        "ACK",
        Some(&branch),
        1,
        "inv-2xx",
        Some("tb1"),
    ));
    sim.a.layer.send_stateless(Side::B, &ack);
    sim.flush(Side::A);
    sim.run_until(ms(300));
    assert!(
        matches!(
            sim.b.incoming.last(),
            Some((_, Incoming::Ack { transaction: Some(t), .. })) if *t == bkey
        ),
        "the ACK for a 2xx goes to the TU, matched on dialog fields"
    );
    // B sent its 200 at 10 ms and again at 20 ms (the TU, when the clock
    // stood there); the ACK stopped the layer's own 2xx retransmission due
    // at 510 ms.
    assert_eq!(
        sent_lines(&sim.b),
        [
            (ms(10), "SIP/2.0 180 Ringing".to_string()),
            (ms(10), "SIP/2.0 200 OK".to_string()),
            (ms(20), "SIP/2.0 200 OK".to_string()),
        ]
    );

    sim.run_to_idle();
    let a_end = sim
        .a
        .events
        .iter()
        .find(|(_, e)| *e == Event::Terminated { key })
        .map(|(t, _)| *t);
    let b_end = sim
        .b
        .events
        .iter()
        .find(|(_, e)| *e == Event::Terminated { key: bkey })
        .map(|(t, _)| *t);
    // Timer M from the first 200 at A (20 ms), Timer L from B's first 200 (10 ms).
    assert_eq!(a_end, Some(ms(20 + 64 * T1)));
    assert_eq!(b_end, Some(ms(10 + 64 * T1)));
    assert_eq!(events_of(&sim.a, key), [Event::Terminated { key }]);
}

/// INVITE rejected with 486: the transaction layer ACKs it (same branch,
/// CSeq n ACK, To tag of the response). The first ACK is lost, so Timer G
/// retransmits the 486; the client absorbs it (TU sees it once) and ACKs
/// again; the server then confirms and ends after T4 (Timer I).
#[test]
fn invite_4xx_ack_generated_and_retransmitted_final_absorbed() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 11);
    sim.b.tu = Some(answer_with(&[486]));
    let mut acks_dropped = 0;
    sim.drop_rule = Some(Box::new(move |to, payload| {
        if to == Side::B && payload.starts_with(b"ACK") && acks_dropped == 0 {
            acks_dropped += 1;
            return true;
        }
        false
    }));
    let invite = new_request(&mut sim, Side::A, "INVITE", "inv-486");
    let key = sim.send_request(Side::A, invite);
    sim.run_to_idle();

    let got: Vec<u16> = responses(&sim.a, key).iter().map(status_of).collect();
    assert_eq!(got, [486], "the TU sees the final response once");
    assert_eq!(
        absorbed(&sim.a, key),
        1,
        "the retransmitted 486 was absorbed"
    );

    let a_lines: Vec<String> = sent_lines(&sim.a).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        a_lines,
        [
            "INVITE sip:bob@b.example SIP/2.0",
            "ACK sip:bob@b.example SIP/2.0",
            "ACK sip:bob@b.example SIP/2.0"
        ]
    );
    let invite_bytes = &sim.a.sent[0].1;
    let ack_bytes = &sim.a.sent[1].1;
    assert_eq!(ack_bytes, &sim.a.sent[2].1, "the same ACK is resent");
    assert_eq!(
        header_line(ack_bytes, "Via"),
        header_line(invite_bytes, "Via"),
        "ACK reuses the INVITE's top Via"
    );
    assert_eq!(header_line(ack_bytes, "CSeq"), Some("CSeq: 1 ACK"));
    let to = header_line(ack_bytes, "To").expect("ACK has To");
    assert!(
        to.contains("tag=tb1"),
        "ACK carries the response's To tag: {to}"
    );
    assert_eq!(header_line(ack_bytes, "Call-ID"), Some("Call-ID: inv-486"));

    // B: 486 at 10 ms, retransmitted by Timer G at 510 ms; the second ACK
    // confirms at 530 ms and Timer I (T4 = 5 s) ends the transaction.
    let b_sent = sent_lines(&sim.b);
    assert_eq!(
        b_sent,
        [
            (ms(10), "SIP/2.0 486 Busy Here".to_string()),
            (ms(10 + T1), "SIP/2.0 486 Busy Here".to_string())
        ]
    );
    let (bkey, _) = requests(&sim.b)[0].clone();
    assert_eq!(
        events_of(&sim.b, bkey),
        [Event::Terminated { key: bkey }],
        "no Timer H"
    );
    let b_end = sim
        .b
        .events
        .iter()
        .find(|(_, e)| *e == Event::Terminated { key: bkey })
        .map(|(t, _)| *t);
    assert_eq!(b_end, Some(ms(10 + T1 + 20 + 5000)));
    // A: Timer D = 32 s after the first 486 arrived (20 ms).
    let a_end = sim
        .a
        .events
        .iter()
        .find(|(_, e)| *e == Event::Terminated { key })
        .map(|(t, _)| *t);
    assert_eq!(a_end, Some(ms(20 + 32_000)));
}

/// Timer B: an INVITE into a black hole is sent at 0, 0.5, 1.5, 3.5, 7.5,
/// 15.5 and 31.5 s and times out at 64·T1 = 32 s.
#[test]
fn timer_b_times_out_invite() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 3);
    sim.drop_rule = Some(Box::new(|_, _| true));
    let invite = new_request(&mut sim, Side::A, "INVITE", "timer-b");
    let key = sim.send_request(Side::A, invite);
    sim.run_to_idle();
    let times: Vec<u64> = sent_lines(&sim.a)
        .iter()
        .map(|(t, _)| t.as_nanos() / 1_000_000)
        .collect();
    assert_eq!(times, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(
        sim.a.events,
        [
            (ms(32_000), Event::Timeout { key }),
            (ms(32_000), Event::Terminated { key })
        ]
    );
    assert!(sim.a.layer.is_empty());
}

/// Timer F with configured timers (T1 = 100 ms, T2 = 400 ms): Timer E
/// doubles to T2 and Timer F fires at 64·T1 = 6.4 s.
#[test]
fn timer_f_times_out_non_invite_with_configured_t1_t2() {
    let config = Config::with_timers(
        Duration::from_millis(100),
        Duration::from_millis(400),
        Duration::from_secs(5),
    );
    let mut sim = Sim::new(config, false, Impairment::PERFECT, 4);
    sim.drop_rule = Some(Box::new(|_, _| true));
    let request = new_request(&mut sim, Side::A, "REGISTER", "timer-f");
    let key = sim.send_request(Side::A, request);
    sim.run_to_idle();
    let times: Vec<u64> = sent_lines(&sim.a)
        .iter()
        .map(|(t, _)| t.as_nanos() / 1_000_000)
        .collect();
    let mut expected = vec![0, 100, 300, 700];
    while let Some(&last) = expected.last() {
        if last + 400 >= 6400 {
            break;
        }
        expected.push(last + 400);
    }
    assert_eq!(times, expected);
    assert_eq!(
        sim.a.events,
        [
            (ms(6400), Event::Timeout { key }),
            (ms(6400), Event::Terminated { key })
        ]
    );
}

/// Timer H: every ACK is lost. B retransmits the 486 on Timer G (T1
/// doubling, capped at T2) until Timer H (32 s) reports a timeout to its TU.
/// A answers every copy with its ACK and shows the 486 to its TU once.
#[test]
fn timer_h_fires_when_ack_is_lost() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 5);
    sim.b.tu = Some(answer_with(&[486]));
    sim.drop_rule = Some(Box::new(|to, payload| {
        to == Side::B && payload.starts_with(b"ACK")
    }));
    let invite = new_request(&mut sim, Side::A, "INVITE", "timer-h");
    let key = sim.send_request(Side::A, invite);
    sim.run_to_idle();

    let (bkey, _) = requests(&sim.b)[0].clone();
    let b_times: Vec<u64> = sent_lines(&sim.b)
        .iter()
        .map(|(t, _)| t.as_nanos() / 1_000_000)
        .collect();
    assert_eq!(
        b_times,
        [
            10, 510, 1510, 3510, 7510, 11510, 15510, 19510, 23510, 27510, 31510
        ]
    );
    assert_eq!(
        sim.b.events,
        [
            (ms(32_010), Event::Timeout { key: bkey }),
            (ms(32_010), Event::Terminated { key: bkey })
        ]
    );
    assert_eq!(responses(&sim.a, key).len(), 1);
    assert_eq!(absorbed(&sim.a, key), 10);
    let acks = sent_lines(&sim.a)
        .iter()
        .filter(|(_, l)| l.starts_with("ACK"))
        .count();
    assert_eq!(acks, 11, "one ACK per 486 received");
}

/// CANCEL: B's layer reports the INVITE server transaction a CANCEL matches;
/// B's TU answers 200 to the CANCEL and 487 to the INVITE, which A's layer
/// ACKs. A CANCEL for no INVITE reports `cancels: None`.
#[test]
fn cancel_is_matched_to_its_invite() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 9);
    sim.b.tu = Some(Box::new(|now, layer, incoming| {
        if let Incoming::Request {
            key,
            request,
            cancels,
        } = incoming
        {
            match (method_of(request).as_str(), cancels) {
                ("INVITE", _) => layer
                    .send_response(now, *key, respond(request, 180))
                    .expect("180"),
                ("CANCEL", Some(invite)) => {
                    layer
                        .send_response(now, *key, respond(request, 200))
                        .expect("200 to CANCEL");
                    let invite_request = layer.request(*invite).expect("INVITE alive").clone();
                    layer
                        .send_response(now, *invite, respond(&invite_request, 487))
                        .expect("487");
                }
                ("CANCEL", None) => layer
                    .send_response(now, *key, respond(request, 481))
                    .expect("481"),
                _ => {}
            }
        }
    }));
    let invite = new_request(&mut sim, Side::A, "INVITE", "cancel-me");
    let inv = sim.send_request(Side::A, invite);
    sim.run_until(ms(50));
    assert_eq!(
        responses(&sim.a, inv)
            .iter()
            .map(status_of)
            .collect::<Vec<_>>(),
        [180]
    );

    let cancel = sim.a.layer.cancel(inv).expect("CANCEL can be built");
    assert_eq!(method_of(&cancel), "CANCEL");
    let cancel_key = sim.send_request(Side::A, cancel);
    let cancel_bytes = sim.a.sent.last().expect("CANCEL sent").1.clone();
    assert_eq!(
        header_line(&cancel_bytes, "Via"),
        header_line(&sim.a.sent[0].1, "Via"),
        "same branch as the INVITE"
    );
    assert_eq!(header_line(&cancel_bytes, "CSeq"), Some("CSeq: 1 CANCEL"));
    sim.run_to_idle();

    let b_requests = requests(&sim.b);
    assert_eq!(b_requests.len(), 2);
    let b_invite = b_requests[0].0;
    let cancel_seen = sim.b.incoming.iter().find_map(|(_, i)| match i {
        Incoming::Request {
            cancels, request, ..
        } if method_of(request) == "CANCEL" => Some(*cancels),
        _ => None,
    });
    assert_eq!(cancel_seen, Some(Some(b_invite)));
    assert_eq!(
        responses(&sim.a, cancel_key)
            .iter()
            .map(status_of)
            .collect::<Vec<_>>(),
        [200]
    );
    assert_eq!(
        responses(&sim.a, inv)
            .iter()
            .map(status_of)
            .collect::<Vec<_>>(),
        [180, 487]
    );
    assert!(
        sent_lines(&sim.a).iter().any(|(_, l)| l.starts_with("ACK")),
        "487 is ACKed"
    );
    assert_eq!(
        events_of(&sim.b, b_invite),
        [Event::Terminated { key: b_invite }],
        "ACK arrived, no Timer H"
    );

    // A CANCEL whose INVITE B never saw.
    let stray = new_request(&mut sim, Side::A, "CANCEL", "no-such-invite");
    let stray_key = sim.send_request(Side::A, stray);
    sim.run_to_idle();
    let last_cancel = sim.b.incoming.iter().rev().find_map(|(_, i)| match i {
        Incoming::Request {
            cancels, request, ..
        } if method_of(request) == "CANCEL" => Some(*cancels),
        _ => None,
    });
    assert_eq!(last_cancel, Some(None));
    assert_eq!(
        responses(&sim.a, stray_key)
            .iter()
            .map(status_of)
            .collect::<Vec<_>>(),
        [481]
    );
}

/// A retransmitted request is absorbed by the server transaction: before the
/// TU answers it is dropped; afterwards the last response goes out again,
/// byte-identical; the TU sees the request once.
#[test]
fn retransmitted_request_absorbed_by_server() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 13);
    let bytes = request_text("MESSAGE", Some("z9hG4bKretrans1"), 5, "rt-1", None);
    let Incoming::Request { key, request, .. } = sim.deliver(Side::B, bytes.clone()) else {
        panic!("first copy starts a transaction")
    };
    assert!(
        matches!(sim.deliver(Side::B, bytes.clone()), Incoming::Absorbed { key: k } if k == key)
    );
    assert!(
        sim.b.sent.is_empty(),
        "nothing to resend before the TU answered"
    );

    assert!(sim.node(Side::B).layer.request(key).is_some());
    sim.send_response(Side::B, key, respond(&request, 202));
    // A non-INVITE server transaction drops its request once it answered finally; copies
    // are still matched and answered with the same response.
    assert!(sim.node(Side::B).layer.request(key).is_none());
    assert!(
        matches!(sim.deliver(Side::B, bytes.clone()), Incoming::Absorbed { key: k } if k == key)
    );
    assert_eq!(sim.b.sent.len(), 2);
    assert_eq!(
        sim.b.sent[0].1, sim.b.sent[1].1,
        "the same response, byte for byte"
    );
    assert_eq!(start_line(&sim.b.sent[1].1), "SIP/2.0 202 Accepted");
    assert_eq!(requests(&sim.b).len(), 1);

    // INVITE in Proceeding: a copy gets the last provisional response.
    let inv = request_text("INVITE", Some("z9hG4bKretrans2"), 1, "rt-2", None);
    let Incoming::Request {
        key: ikey,
        request: ireq,
        ..
    } = sim.deliver(Side::B, inv.clone())
    else {
        panic!("INVITE starts a transaction")
    };
    sim.send_response(Side::B, ikey, respond(&ireq, 183));
    assert!(
        sim.node(Side::B).layer.request(ikey).is_some(),
        "INVITE keeps it"
    );
    assert!(
        matches!(sim.deliver(Side::B, inv.clone()), Incoming::Absorbed { key: k } if k == ikey)
    );
    let last_two: Vec<String> = sim.b.sent[2..]
        .iter()
        .map(|(_, b, _)| start_line(b))
        .collect();
    assert_eq!(
        last_two,
        [
            "SIP/2.0 183 Session Progress",
            "SIP/2.0 183 Session Progress"
        ]
    );

    // Same branch, different sent-by: another client, another transaction.
    let other = Bytes::from(String::from_utf8_lossy(&inv).replace(
        "Via: SIP/2.0/UDP a.example:5060",
        "Via: SIP/2.0/UDP c.example:5060",
    ));
    assert!(matches!(sim.deliver(Side::B, other), Incoming::Request { key: k, .. } if k != ikey));
}

/// RFC 2543 peers (no magic cookie): requests match on Request-URI, tags,
/// Call-ID, CSeq and top Via; the ACK matches with the To tag of our final
/// response; CANCEL matches its INVITE.
#[test]
fn rfc2543_fallback_matching() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 17);
    let invite = request_text("INVITE", None, 1, "old-1", None);
    let Incoming::Request { key, request, .. } = sim.deliver(Side::B, invite.clone()) else {
        panic!("INVITE starts a transaction")
    };
    assert!(
        matches!(sim.deliver(Side::B, invite.clone()), Incoming::Absorbed { key: k } if k == key)
    );
    // An old-style branch without cookie is part of the top Via: same text, same transaction.
    let with_old_branch = request_text("INVITE", Some("1234"), 1, "old-1", None);
    assert!(
        matches!(sim.deliver(Side::B, with_old_branch), Incoming::Request { key: k, .. } if k != key),
        "a different top Via is a different transaction"
    );
    // Different CSeq or Call-ID: new transactions.
    let next_cseq = request_text("INVITE", None, 2, "old-1", None);
    assert!(
        matches!(sim.deliver(Side::B, next_cseq), Incoming::Request { key: k, .. } if k != key)
    );
    let other_call = request_text("INVITE", None, 1, "old-2", None);
    let Incoming::Request { key: other_key, .. } = sim.deliver(Side::B, other_call) else {
        panic!("another call starts a transaction")
    };

    // CANCEL of the other call matches its INVITE.
    let cancel = request_text("CANCEL", None, 1, "old-2", None);
    assert!(matches!(
        sim.deliver(Side::B, cancel),
        Incoming::Request { cancels: Some(c), .. } if c == other_key
    ));

    sim.send_response(Side::B, key, respond(&request, 603));
    assert_eq!(
        sim.b.layer.state(key),
        Some((Kind::ServerInvite, State::Completed))
    );
    // An ACK with some other To tag belongs to no transaction.
    let wrong_ack = request_text("ACK", None, 1, "old-1", Some("zzz"));
    assert!(matches!(
        sim.deliver(Side::B, wrong_ack),
        Incoming::Ack {
            transaction: None,
            ..
        }
    ));
    assert_eq!(
        sim.b.layer.state(key),
        Some((Kind::ServerInvite, State::Completed))
    );
    // The ACK with our response's To tag confirms.
    let ack = request_text("ACK", None, 1, "old-1", Some("tb1"));
    assert!(matches!(sim.deliver(Side::B, ack), Incoming::Absorbed { key: k } if k == key));
    assert_eq!(
        sim.b.layer.state(key),
        Some((Kind::ServerInvite, State::Confirmed))
    );
}

/// Reliable transport: no retransmissions (A, E, G off) and zero wait
/// timers (D, I, J, K): transactions end as soon as their exchange is done.
#[test]
fn reliable_transport_timer_behaviour() {
    // Timer B still fires, but the INVITE is sent once.
    let mut sim = Sim::new(Config::default(), true, Impairment::PERFECT, 19);
    sim.drop_rule = Some(Box::new(|_, _| true));
    let invite = new_request(&mut sim, Side::A, "INVITE", "rel-b");
    let key = sim.send_request(Side::A, invite);
    sim.run_to_idle();
    assert_eq!(sent_lines(&sim.a).len(), 1);
    assert_eq!(
        sim.a.events,
        [
            (ms(32_000), Event::Timeout { key }),
            (ms(32_000), Event::Terminated { key })
        ]
    );

    // Non-INVITE: K = 0 at the client, J = 0 at the server.
    let mut sim = Sim::new(Config::default(), true, Impairment::PERFECT, 20);
    sim.b.tu = Some(answer_with(&[200]));
    let options = new_request(&mut sim, Side::A, "OPTIONS", "rel-ni");
    let key = sim.send_request(Side::A, options);
    sim.run_to_idle();
    let (bkey, _) = requests(&sim.b)[0].clone();
    assert_eq!(sim.b.events, [(ms(10), Event::Terminated { key: bkey })]);
    assert_eq!(sim.a.events, [(ms(20), Event::Terminated { key })]);
    assert_eq!(sent_lines(&sim.a).len(), 1);

    // INVITE 486: no Timer G, D = 0 at the client, I = 0 at the server.
    let mut sim = Sim::new(Config::default(), true, Impairment::PERFECT, 21);
    sim.b.tu = Some(answer_with(&[486]));
    let invite = new_request(&mut sim, Side::A, "INVITE", "rel-486");
    let key = sim.send_request(Side::A, invite);
    sim.run_to_idle();
    let (bkey, _) = requests(&sim.b)[0].clone();
    assert_eq!(
        sent_lines(&sim.b),
        [(ms(10), "SIP/2.0 486 Busy Here".to_string())]
    );
    let a_lines: Vec<String> = sent_lines(&sim.a).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        a_lines,
        [
            "INVITE sip:bob@b.example SIP/2.0",
            "ACK sip:bob@b.example SIP/2.0"
        ]
    );
    assert_eq!(sim.a.events, [(ms(20), Event::Terminated { key })]);
    assert_eq!(sim.b.events, [(ms(30), Event::Terminated { key: bkey })]);
}

/// A response matching no transaction is stray; a transport error ends a
/// client transaction with an event; a second final response is refused.
#[test]
fn stray_response_transport_error_and_refused_response() {
    let mut layer: TransactionLayer<Side> =
        TransactionLayer::new(Config::default(), 1).expect("config");
    let stray = request_text("OPTIONS", Some("z9hG4bKnobody"), 1, "stray", None);
    let response = respond(&as_request(stray), 200);
    let msg = Message::Response(response);
    assert!(matches!(
        layer.handle_incoming(Instant::ZERO, Remote::unreliable(Side::B), msg),
        Incoming::StrayResponse { .. }
    ));

    let branch = layer.new_branch();
    let req = as_request(request_text("OPTIONS", Some(&branch), 1, "te", None));
    let key = layer
        .send_request(Instant::ZERO, Remote::unreliable(Side::B), req)
        .expect("sent");
    assert!(
        layer
            .poll_transmit()
            .is_some_and(|t| t.transaction == Some(key))
    );
    layer.handle_transport_error(ms(3), key);
    assert_eq!(layer.poll_event(), Some(Event::TransportError { key }));
    assert_eq!(layer.poll_event(), Some(Event::Terminated { key }));
    assert_eq!(
        layer.poll_timeout(),
        None,
        "no timer outlives its transaction"
    );

    // ACK is not a transaction; a branch without cookie is refused for new
    // requests; a branch is used once.
    let ack = as_request(request_text(
        "ACK",
        Some(&layer.new_branch()),
        1,
        "x",
        Some("t"),
    ));
    let to_b = || Remote::unreliable(Side::B);
    assert_eq!(
        layer.send_request(Instant::ZERO, to_b(), ack),
        Err(SendError::AckIsNotATransaction)
    );
    let old = as_request(request_text("OPTIONS", Some("nocookie"), 1, "x", None));
    assert_eq!(
        layer.send_request(Instant::ZERO, to_b(), old),
        Err(SendError::BranchWithoutMagicCookie)
    );
    let dup = as_request(request_text("OPTIONS", Some("z9hG4bKdup"), 1, "d", None));
    let dup_key = layer
        .send_request(Instant::ZERO, to_b(), dup.clone())
        .expect("first use");
    assert_eq!(
        layer.send_request(Instant::ZERO, to_b(), dup.clone()),
        Err(SendError::DuplicateBranch)
    );
    assert_eq!(
        layer.send_response(Instant::ZERO, dup_key, respond(&dup, 200)),
        Err(SendError::NotAServerTransaction(dup_key))
    );
    assert_eq!(
        layer.send_response(Instant::ZERO, key, respond(&dup, 200)),
        Err(SendError::UnknownTransaction(key)),
        "terminated transactions are gone"
    );

    // Server side: the response must answer the transaction's request, and
    // only one final response is allowed.
    let incoming = layer.handle_incoming(
        Instant::ZERO,
        to_b(),
        parse(request_text("OPTIONS", Some("z9hG4bKsrv"), 1, "srv", None)),
    );
    let Incoming::Request {
        key: skey, request, ..
    } = incoming
    else {
        panic!("new request")
    };
    assert_eq!(
        layer.send_response(Instant::ZERO, skey, respond(&dup, 200)),
        Err(SendError::ResponseMismatch)
    );
    layer
        .send_response(Instant::ZERO, skey, respond(&request, 200))
        .expect("first final");
    assert_eq!(
        layer.send_response(Instant::ZERO, skey, respond(&request, 500)),
        Err(SendError::ResponseNotAllowed(State::Completed))
    );
}

/// Unreliable non-INVITE wait states: Timer K = T4 at the client after the
/// final response, Timer J = 64·T1 at the server after sending it.
#[test]
fn non_invite_wait_timers_k_and_j_on_unreliable_transport() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 23);
    sim.b.tu = Some(answer_with(&[100, 200]));
    let request = new_request(&mut sim, Side::A, "OPTIONS", "kj");
    let key = sim.send_request(Side::A, request);
    sim.run_to_idle();
    let (bkey, _) = requests(&sim.b)[0].clone();
    assert_eq!(
        responses(&sim.a, key)
            .iter()
            .map(status_of)
            .collect::<Vec<_>>(),
        [100, 200]
    );
    assert_eq!(sim.a.events, [(ms(20 + 5000), Event::Terminated { key })]);
    assert_eq!(
        sim.b.events,
        [(ms(10 + 64 * T1), Event::Terminated { key: bkey })]
    );
    assert_eq!(sent_lines(&sim.a).len(), 1, "answered before Timer E");
}

/// A TU that is silent on an INVITE: the server transaction sends
/// `100 Trying` (no To tag) after 200 ms, which moves the client to
/// Proceeding and stops its INVITE retransmissions; a retransmitted INVITE
/// gets the 100 again. Nothing else happens until the TU answers.
#[test]
fn server_invite_sends_100_trying_when_tu_is_slow() {
    let mut sim = Sim::new(Config::default(), false, Impairment::PERFECT, 29);
    let invite = new_request(&mut sim, Side::A, "INVITE", "slow-tu");
    let key = sim.send_request(Side::A, invite);
    sim.run_until(ms(5000));
    let (bkey, request) = requests(&sim.b)[0].clone();
    assert_eq!(
        sent_lines(&sim.b),
        [(ms(210), "SIP/2.0 100 Trying".to_string())]
    );
    let trying = &sim.b.sent[0].1;
    let to = header_line(trying, "To").expect("To copied");
    assert!(!to.contains("tag="), "100 Trying has no To tag: {to}");
    assert_eq!(header_line(trying, "CSeq"), Some("CSeq: 1 INVITE"));
    assert_eq!(
        sent_lines(&sim.a),
        [(ms(0), "INVITE sip:bob@b.example SIP/2.0".to_string())],
        "the 100 at 220 ms stopped Timer A (500 ms)"
    );
    assert_eq!(
        sim.a.layer.state(key),
        Some((Kind::ClientInvite, State::Proceeding))
    );
    assert_eq!(
        responses(&sim.a, key)
            .iter()
            .map(status_of)
            .collect::<Vec<_>>(),
        [100]
    );
    // A copy of the INVITE is answered with the 100 again.
    let copy = sim.a.sent[0].1.clone();
    assert!(matches!(sim.deliver(Side::B, copy), Incoming::Absorbed { key: k } if k == bkey));
    assert_eq!(sim.b.sent.len(), 2);
    assert_eq!(sim.b.sent[0].1, sim.b.sent[1].1);
    // Proceeding has no timeout of its own (Timer B stopped): the call rings
    // until the TU decides.
    assert_eq!(sim.a.layer.poll_timeout(), None);
    let answered_at = sim.now;
    sim.send_response(Side::B, bkey, respond(&request, 200));
    sim.run_until(ms(6000));
    // The 100 copy reaches the TU (Proceeding passes every 1xx up); the
    // 2xx is then retransmitted by B's layer (no ACK in this test) and each
    // copy reaches A's TU, which would re-ACK.
    let statuses: Vec<u16> = responses(&sim.a, key).iter().map(status_of).collect();
    assert_eq!(&statuses[..3], [100, 100, 200]);
    assert!(statuses[3..].iter().all(|&s| s == 200) && statuses.len() > 3);
    sim.run_to_idle();
    assert!(
        sim.b.events.contains(&(
            answered_at + Duration::from_millis(64 * T1),
            Event::Timeout { key: bkey }
        )),
        "Timer L without ACK reports a timeout: {:?}",
        sim.b.events
    );
}

/// Many concurrent transactions of every kind over a lossy, duplicating,
/// reordering link: every client TU sees exactly one final response per
/// transaction (plus the 2xx copies RFC 6026 hands up), every server TU sees
/// each request once, nothing times out, and both layers end empty with no
/// timer left.
#[test]
fn many_concurrent_transactions_over_lossy_link_leave_no_state() {
    let lossy = Impairment {
        drop_percent: 20,
        duplicate_percent: 15,
        delay_ms: (1, 400),
    };
    for seed in [101u64, 202, 303] {
        let mut sim = Sim::new(Config::default(), false, lossy.clone(), seed);
        // B answers INVITE 180+486 (odd CSeq) or 200 (even), others 200.
        sim.b.tu = Some(Box::new(|now, layer, incoming| {
            if let Incoming::Request { key, request, .. } = incoming {
                let codes: &[u16] = match method_of(request).as_str() {
                    "INVITE" if request.cseq().map(|c| c.seq % 2 == 1).unwrap_or(false) => {
                        &[180, 486]
                    }
                    _ => &[200],
                };
                for &code in codes {
                    layer
                        .send_response(now, *key, respond(request, code))
                        .expect("response accepted");
                }
            }
        }));
        // A's TU ACKs every 2xx to INVITE (§13.2.2.4), each time it sees one.
        sim.a.tu = Some(Box::new(|_now, layer, incoming| {
            if let Incoming::Response { response, .. } = incoming
                && status_of(response) == 200
                && response
                    .cseq()
                    .map(|c| c.method.as_bytes() == b"INVITE")
                    .unwrap_or(false)
            {
                let call_id = response.call_id().expect("Call-ID");
                let seq = response.cseq().expect("CSeq").seq;
                let branch = layer.new_branch();
                let ack = parse(request_text(
                    "ACK",
                    Some(&branch),
                    seq,
                    std::str::from_utf8(&call_id).expect("ascii Call-ID"),
                    Some("tb1"),
                ));
                layer.send_stateless(Side::B, &ack);
            }
        }));
        let mut keys = Vec::new();
        for i in 0..40u32 {
            let method = if i % 3 == 0 { "MESSAGE" } else { "INVITE" };
            let branch = sim.a.layer.new_branch();
            let request = as_request(request_text(
                method,
                Some(&branch),
                i + 1,
                &format!("many-{seed}-{i}"),
                None,
            ));
            keys.push((method, i + 1, sim.send_request(Side::A, request)));
        }
        sim.run_to_idle();
        for &(method, cseq, key) in &keys {
            let finals: Vec<u16> = responses(&sim.a, key)
                .iter()
                .map(status_of)
                .filter(|s| *s >= 200)
                .collect();
            let expected = match (method, cseq % 2) {
                ("INVITE", 1) => 486,
                _ => 200,
            };
            assert!(!finals.is_empty(), "seed {seed} {method} {cseq}: no final");
            assert!(
                finals.iter().all(|&s| s == expected),
                "seed {seed} {method} {cseq}: {finals:?}"
            );
            if method != "INVITE" || expected != 200 {
                assert_eq!(
                    finals.len(),
                    1,
                    "seed {seed} {method} {cseq}: final shown once"
                );
            }
            assert_eq!(events_of(&sim.a, key), [Event::Terminated { key }]);
        }
        assert_eq!(
            requests(&sim.b).len(),
            40,
            "seed {seed}: each request seen once by B's TU"
        );
        assert!(
            sim.b
                .events
                .iter()
                .all(|(_, e)| matches!(e, Event::Terminated { .. })),
            "seed {seed}: no Timer H (ACKs got through): {:?}",
            sim.b.events
        );
        assert!(sim.a.layer.is_empty() && sim.b.layer.is_empty());
        assert_eq!(sim.a.layer.poll_timeout(), None);
        assert_eq!(sim.b.layer.poll_timeout(), None);
        assert!(
            sim.dropped.len() > 20,
            "seed {seed}: the link dropped {}",
            sim.dropped.len()
        );
    }
}

/// With `max_transactions` alive, a new request starts no transaction (the
/// TU gets `Overloaded` to answer 503 statelessly) while retransmissions of
/// live ones are still absorbed; capacity returns when transactions end.
#[test]
fn transaction_table_is_bounded() {
    let mut config = Config::default();
    config.max_transactions = 2;
    let mut layer: TransactionLayer<Side> = TransactionLayer::new(config, 5).expect("config");
    let from_a = || Remote::unreliable(Side::A);
    let first = request_text("MESSAGE", Some("z9hG4bKcap1"), 1, "cap", None);
    let Incoming::Request {
        key: k1, request, ..
    } = layer.handle_incoming(Instant::ZERO, from_a(), parse(first.clone()))
    else {
        panic!("first request")
    };
    let second = request_text("MESSAGE", Some("z9hG4bKcap2"), 2, "cap", None);
    assert!(matches!(
        layer.handle_incoming(Instant::ZERO, from_a(), parse(second)),
        Incoming::Request { .. }
    ));
    let third = request_text("MESSAGE", Some("z9hG4bKcap3"), 3, "cap", None);
    assert!(matches!(
        layer.handle_incoming(Instant::ZERO, from_a(), parse(third.clone())),
        Incoming::Overloaded { .. }
    ));
    assert_eq!(layer.len(), 2);
    assert!(matches!(
        layer.handle_incoming(Instant::ZERO, from_a(), parse(first)),
        Incoming::Absorbed { key } if key == k1
    ));
    let branch = layer.new_branch();
    let out = as_request(request_text("OPTIONS", Some(&branch), 1, "cap-out", None));
    assert_eq!(
        layer.send_request(Instant::ZERO, Remote::unreliable(Side::B), out),
        Err(SendError::Overloaded)
    );
    // Answer the first; Timer J (32 s) ends it and frees a slot.
    layer
        .send_response(Instant::ZERO, k1, respond(&request, 200))
        .expect("answer");
    layer.handle_timeout(ms(64 * T1));
    assert_eq!(layer.len(), 1);
    assert!(matches!(
        layer.handle_incoming(ms(64 * T1), from_a(), parse(third)),
        Incoming::Request { .. }
    ));
}

/// Randomised traffic over a hostile link, checking invariants rather than a
/// script: a TU that answers late (0–3 s), sometimes with a provisional
/// first; CANCELs racing their INVITE; 2xx ACKed by the caller's TU. For
/// every transaction on either side: exactly one `Terminated`, nothing after
/// it; every client transaction ends with either a final response or a
/// timeout, never both; the server TU sees each request once; at the end
/// both layers are empty with no timer armed.
#[test]
fn randomised_traffic_keeps_transaction_invariants() {
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};
    use std::rc::Rc;

    use sipveil_sip::transaction::TransactionId;

    type Pending = Rc<RefCell<Vec<(TransactionId, Request)>>>;

    let hostile = Impairment {
        drop_percent: 25,
        duplicate_percent: 10,
        delay_ms: (1, 300),
    };
    for seed in 1..=10u64 {
        let mut rng = sim::Rng::new(seed * 7919);
        let mut sim = Sim::new(Config::default(), false, hostile.clone(), seed);
        let pending: Pending = Rc::new(RefCell::new(Vec::new()));
        let inbox = pending.clone();
        sim.b.tu = Some(Box::new(move |now, layer, incoming| {
            if let Incoming::Request {
                key,
                request,
                cancels,
            } = incoming
            {
                if method_of(request) == "CANCEL" {
                    let code = if cancels.is_some() { 200 } else { 481 };
                    layer
                        .send_response(now, *key, respond(request, code))
                        .expect("answer CANCEL");
                    if let Some(invite) = cancels
                        && matches!(layer.state(*invite), Some((_, State::Proceeding)))
                    {
                        let req = layer.request(*invite).expect("alive").clone();
                        layer
                            .send_response(now, *invite, respond(&req, 487))
                            .expect("487");
                    }
                } else {
                    inbox.borrow_mut().push((*key, request.clone()));
                }
            }
        }));
        sim.a.tu = Some(Box::new(|_now, layer, incoming| {
            if let Incoming::Response { response, .. } = incoming
                && (200..300).contains(&status_of(response))
                && response
                    .cseq()
                    .is_ok_and(|c| c.method.as_bytes() == b"INVITE")
            {
                let call_id = response.call_id().expect("Call-ID");
                let seq = response.cseq().expect("CSeq").seq;
                let branch = layer.new_branch();
                let ack = parse(request_text(
                    "ACK",
                    Some(&branch),
                    seq,
                    std::str::from_utf8(&call_id).expect("ascii"),
                    Some("tb1"),
                ));
                layer.send_stateless(Side::B, &ack);
            }
        }));

        // The script: new requests over the first 10 s, some CANCELs, and the
        // B TU's delayed answers.
        enum Action {
            Send(u32),
            Cancel(TransactionId),
            Answer(TransactionId, Box<Request>, u16),
        }
        let mut schedule: Vec<(Instant, u64, Action)> = Vec::new();
        let mut order = 0u64;
        for i in 0..30u32 {
            let at = Instant::ZERO + rng.millis(0, 10_000);
            order += 1;
            schedule.push((at, order, Action::Send(i)));
        }
        let mut client_keys: Vec<(TransactionId, &'static str)> = Vec::new();
        let limit = ms(600_000);
        for _ in 0..200_000 {
            // Move B's fresh requests into the schedule with a random delay.
            for (key, request) in pending.borrow_mut().drain(..) {
                let invite = method_of(&request) == "INVITE";
                let delay = rng.millis(0, 3000);
                if invite && rng.chance(50) {
                    order += 1;
                    schedule.push((
                        sim.now,
                        order,
                        Action::Answer(key, Box::new(request.clone()), 180),
                    ));
                }
                let finals: &[u16] = if invite {
                    &[200, 486, 603]
                } else {
                    &[200, 404]
                };
                let code = finals[(rng.next_u64() % finals.len() as u64) as usize];
                order += 1;
                schedule.push((
                    sim.now + delay,
                    order,
                    Action::Answer(key, Box::new(request), code),
                ));
            }
            schedule.sort_by_key(|(at, o, _)| (*at, *o));
            let next_script = schedule.first().map(|(at, _, _)| *at);
            let next_sim = sim.next_instant();
            let script_first = match (next_script, next_sim) {
                (Some(s), Some(n)) => s <= n,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if script_first {
                let (at, _, action) = schedule.remove(0);
                sim.now = sim.now.max(at);
                match action {
                    Action::Send(i) => {
                        let method = if i % 3 == 0 { "OPTIONS" } else { "INVITE" };
                        let request =
                            new_request(&mut sim, Side::A, method, &format!("chaos-{seed}-{i}"));
                        let key = sim.send_request(Side::A, request);
                        client_keys.push((key, method));
                        if method == "INVITE" && rng.chance(30) {
                            order += 1;
                            schedule.push((
                                sim.now + rng.millis(50, 2500),
                                order,
                                Action::Cancel(key),
                            ));
                        }
                    }
                    Action::Cancel(key) => {
                        if let Ok(cancel) = sim.a.layer.cancel(key) {
                            let ckey = sim.send_request(Side::A, cancel);
                            client_keys.push((ckey, "CANCEL"));
                        }
                    }
                    Action::Answer(key, request, code) => {
                        // The CANCEL path may have answered it already.
                        let now = sim.now;
                        let _refused = sim.b.layer.send_response(now, key, respond(&request, code));
                        sim.flush(Side::B);
                    }
                }
            } else if !sim.step(limit) {
                break;
            }
        }
        assert!(
            schedule.is_empty() && sim.next_instant().is_none(),
            "seed {seed}: settled"
        );

        for node in [&sim.a, &sim.b] {
            let mut ended = HashSet::new();
            for (_, e) in &node.events {
                let key = match e {
                    Event::Timeout { key } | Event::TransportError { key } => {
                        assert!(
                            !ended.contains(key),
                            "seed {seed}: event after Terminated: {e:?}"
                        );
                        continue;
                    }
                    Event::Terminated { key } => *key,
                    _ => continue,
                };
                assert!(ended.insert(key), "seed {seed}: {key} terminated twice");
            }
            assert!(node.layer.is_empty(), "seed {seed}: layer not empty");
            assert_eq!(node.layer.poll_timeout(), None);
        }
        let mut finals_seen = 0;
        for &(key, method) in &client_keys {
            let finals = responses(&sim.a, key)
                .iter()
                .filter(|r| status_of(r) >= 200)
                .count();
            let timed_out = events_of(&sim.a, key)
                .iter()
                .any(|e| matches!(e, Event::Timeout { .. }));
            assert!(
                (finals > 0) != timed_out,
                "seed {seed}: {method} {key}: finals {finals}, timeout {timed_out}"
            );
            // Only an INVITE 2xx may reach the TU more than once (RFC 6026).
            let repeatable = responses(&sim.a, key)
                .iter()
                .filter(|r| method == "INVITE" && (200..300).contains(&status_of(r)))
                .count();
            assert!(
                finals - repeatable.saturating_sub(1) <= 1,
                "seed {seed}: {method} {key}: final shown {finals} times"
            );
            assert_eq!(
                events_of(&sim.a, key).last(),
                Some(&Event::Terminated { key }),
                "seed {seed}"
            );
            finals_seen += usize::from(finals > 0);
        }
        assert!(
            finals_seen * 10 >= client_keys.len() * 9,
            "seed {seed}: most exchanges complete"
        );
        // B's TU saw each request once (by Call-ID and CSeq method).
        let mut seen = HashMap::new();
        for (_, request) in requests(&sim.b) {
            let id = (request.call_id().expect("Call-ID"), method_of(&request));
            *seen.entry(id).or_insert(0) += 1;
        }
        assert!(seen.values().all(|&n| n == 1), "seed {seed}: {seen:?}");
    }
}
