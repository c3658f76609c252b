//! The four RFC 3261 §17 state machines, with the RFC 6026 "Accepted"
//! state for INVITE 2xx, independent of message representation.
//!
//! A machine takes an [`Input`] and appends [`Action`]s for the layer to
//! carry out in order (send, arm a timer, tell the TU, terminate). It knows
//! nothing about bytes or peers, so every transition is unit-tested here.

use core::time::Duration;

use super::time::Config;

/// Which of the four machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// §17.1.1, figure 5.
    ClientInvite,
    /// §17.1.2, figure 6.
    ClientNonInvite,
    /// §17.2.1, figure 7 (with the RFC 6026 Accepted state).
    ServerInvite,
    /// §17.2.2, figure 8.
    ServerNonInvite,
}

impl Kind {
    /// A client transaction (we sent the request).
    pub fn is_client(self) -> bool {
        matches!(self, Kind::ClientInvite | Kind::ClientNonInvite)
    }
}

/// A transaction state. `Terminated` is never observed through the layer:
/// a terminated transaction is removed and its key reported once in
/// `Event::Terminated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Client INVITE before any response.
    Calling,
    /// Non-INVITE (client or server) before any provisional response.
    Trying,
    /// A provisional response was received (client) or sent (server).
    Proceeding,
    /// A final response (non-2xx for INVITE) was received or sent; absorbing
    /// retransmissions.
    Completed,
    /// Server INVITE: the ACK for the non-2xx arrived; absorbing ACK copies.
    Confirmed,
    /// RFC 6026: an INVITE 2xx was received or sent; 2xx retransmissions go
    /// to the TU (client) or out through the transaction (server).
    Accepted,
    /// Finished.
    Terminated,
}

/// The timers of RFC 3261 §17 and RFC 6026 §8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Client INVITE request retransmit (unreliable only).
    A,
    /// Client INVITE timeout in Calling.
    B,
    /// Client INVITE: wait time for response retransmits in Completed.
    D,
    /// Client non-INVITE request retransmit (unreliable only).
    E,
    /// Client non-INVITE timeout.
    F,
    /// Server INVITE final response retransmit (unreliable only): the
    /// non-2xx in Completed, and the 2xx in Accepted until its ACK when
    /// `Config::retransmit_2xx` is on (§13.3.1.4).
    G,
    /// Server INVITE: wait time for the ACK.
    H,
    /// Server INVITE: wait time for ACK retransmits in Confirmed.
    I,
    /// Server non-INVITE: wait time for request retransmits in Completed.
    J,
    /// Client non-INVITE: wait time for response retransmits in Completed.
    K,
    /// RFC 6026 server INVITE: time in Accepted.
    L,
    /// RFC 6026 client INVITE: time in Accepted.
    M,
    /// Server INVITE: send `100 Trying` if the TU has not answered yet.
    Trying,
}

/// Response class as far as the state machines care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 1xx.
    Provisional,
    /// 2xx.
    Success,
    /// 3xx–6xx.
    Failure,
}

impl Class {
    /// Class of a status code; `None` outside 100–699.
    pub fn of(code: u16) -> Option<Class> {
        match code {
            100..=199 => Some(Class::Provisional),
            200..=299 => Some(Class::Success),
            300..=699 => Some(Class::Failure),
            _ => None,
        }
    }
}

/// What happened to a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The transaction was just created (client: request handed over; server:
    /// request received).
    Start,
    /// Client: a response matched this transaction.
    Response(Class),
    /// Server: a copy of the request that created it arrived.
    RequestRetransmit,
    /// Server INVITE: an ACK matched this transaction.
    Ack,
    /// Server: the TU wants to send a response.
    TuResponse(Class),
    /// A timer fired.
    Timer(Timer),
    /// The transport could not deliver what the transaction sent.
    TransportError,
}

/// What the layer must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Client: (re)transmit the stored request.
    SendRequest,
    /// Client INVITE: send (and keep) the ACK for the non-2xx final response.
    SendAck,
    /// Server: transmit the TU's response and remember it as the last one.
    SendResponse,
    /// Server: retransmit the last response sent, if any.
    ResendResponse,
    /// Server INVITE: generate and send `100 Trying`.
    SendTrying,
    /// Hand the received message (response, or ACK in Accepted) to the TU.
    ToTu,
    /// The received message was a retransmission handled here.
    Absorb,
    /// (Re)arm a timer to fire after the duration.
    Arm(Timer, Duration),
    /// Cancel a timer.
    Disarm(Timer),
    /// Tell the TU the transaction timed out (B, F or H).
    ReportTimeout,
    /// Tell the TU the transport failed.
    ReportTransportError,
    /// Remove the transaction.
    Terminate,
}

/// Why an input was refused (the transaction is left unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The TU sent a response the state does not allow (e.g. after a final
    /// response, or a non-2xx after a 2xx).
    ResponseNotAllowed(State),
    /// The input does not apply to this kind of transaction.
    WrongKind(Kind),
}

/// One transaction's state machine.
#[derive(Clone, Debug)]
pub struct Fsm {
    kind: Kind,
    state: State,
    reliable: bool,
    /// Current interval of the retransmit timer (A, E or G).
    interval: Duration,
    /// Server: whether any response was sent (so `100 Trying` is not needed).
    responded: bool,
    /// Server INVITE in Accepted: whether an ACK for the 2xx arrived.
    acked: bool,
}

impl Fsm {
    /// A machine in its initial state; feed it [`Input::Start`] next.
    pub fn new(kind: Kind, reliable: bool) -> Self {
        let state = match kind {
            Kind::ClientInvite => State::Calling,
            Kind::ClientNonInvite | Kind::ServerNonInvite => State::Trying,
            Kind::ServerInvite => State::Proceeding,
        };
        Fsm {
            kind,
            state,
            reliable,
            interval: Duration::ZERO,
            responded: false,
            acked: false,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Applies `input`; on success appends the actions to `out`.
    pub fn step(
        &mut self,
        input: Input,
        cfg: &Config,
        out: &mut Vec<Action>,
    ) -> Result<(), Refused> {
        if self.state == State::Terminated {
            // Nothing reaches a removed transaction; absorbing is the safe answer.
            out.push(Action::Absorb);
            return Ok(());
        }
        if let Input::TransportError = input {
            out.push(Action::ReportTransportError);
            self.terminate(out);
            return Ok(());
        }
        match self.kind {
            Kind::ClientInvite => self.client_invite(input, cfg, out),
            Kind::ClientNonInvite => self.client_non_invite(input, cfg, out),
            Kind::ServerInvite => self.server_invite(input, cfg, out),
            Kind::ServerNonInvite => self.server_non_invite(input, cfg, out),
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = State::Terminated;
        out.push(Action::Terminate);
    }

    /// Enter a wait state of `wait`; on a reliable transport the wait is zero
    /// (§17: D, I, J, K), so terminate right away.
    fn wait_or_terminate(
        &mut self,
        state: State,
        timer: Timer,
        wait: Duration,
        out: &mut Vec<Action>,
    ) {
        if self.reliable || wait.is_zero() {
            self.terminate(out);
        } else {
            self.state = state;
            out.push(Action::Arm(timer, wait));
        }
    }

    fn client_invite(
        &mut self,
        input: Input,
        cfg: &Config,
        out: &mut Vec<Action>,
    ) -> Result<(), Refused> {
        use State::*;
        match (self.state, input) {
            (Calling, Input::Start) => {
                out.push(Action::SendRequest);
                if !self.reliable {
                    self.interval = cfg.t1;
                    out.push(Action::Arm(Timer::A, cfg.t1));
                }
                out.push(Action::Arm(Timer::B, cfg.t1_x64()));
            }
            (Calling, Input::Timer(Timer::A)) => {
                // §17.1.1.2: A doubles without the T2 cap.
                out.push(Action::SendRequest);
                self.interval = self.interval.saturating_mul(2);
                out.push(Action::Arm(Timer::A, self.interval));
            }
            (Calling, Input::Timer(Timer::B)) => {
                out.push(Action::ReportTimeout);
                self.terminate(out);
            }
            (Calling | Proceeding, Input::Response(class)) => {
                out.push(Action::Disarm(Timer::A));
                out.push(Action::Disarm(Timer::B));
                match class {
                    Class::Provisional => {
                        self.state = Proceeding;
                        out.push(Action::ToTu);
                    }
                    Class::Success => {
                        out.push(Action::ToTu);
                        self.state = Accepted;
                        out.push(Action::Arm(Timer::M, cfg.t1_x64()));
                    }
                    Class::Failure => {
                        out.push(Action::SendAck);
                        out.push(Action::ToTu);
                        self.wait_or_terminate(Completed, Timer::D, cfg.timer_d, out);
                    }
                }
            }
            (Completed, Input::Response(Class::Failure)) => {
                // A retransmitted final: our ACK was lost, send it again.
                out.push(Action::SendAck);
                out.push(Action::Absorb);
            }
            (Completed, Input::Response(_)) => out.push(Action::Absorb),
            (Accepted, Input::Response(Class::Success)) => out.push(Action::ToTu),
            (Accepted, Input::Response(_)) => out.push(Action::Absorb),
            (Completed, Input::Timer(Timer::D)) | (Accepted, Input::Timer(Timer::M)) => {
                self.terminate(out)
            }
            (_, Input::Timer(_)) => {} // a stale timer for a state already left
            (_, Input::Start | Input::Response(_)) => out.push(Action::Absorb),
            (
                _,
                Input::RequestRetransmit
                | Input::Ack
                | Input::TuResponse(_)
                | Input::TransportError,
            ) => {
                return Err(Refused::WrongKind(self.kind));
            }
        }
        Ok(())
    }

    fn client_non_invite(
        &mut self,
        input: Input,
        cfg: &Config,
        out: &mut Vec<Action>,
    ) -> Result<(), Refused> {
        use State::*;
        match (self.state, input) {
            (Trying, Input::Start) => {
                out.push(Action::SendRequest);
                if !self.reliable {
                    self.interval = cfg.t1;
                    out.push(Action::Arm(Timer::E, cfg.t1));
                }
                out.push(Action::Arm(Timer::F, cfg.t1_x64()));
            }
            (Trying, Input::Timer(Timer::E)) => {
                out.push(Action::SendRequest);
                self.interval = self.interval.saturating_mul(2).min(cfg.t2);
                out.push(Action::Arm(Timer::E, self.interval));
            }
            (Proceeding, Input::Timer(Timer::E)) => {
                // §17.1.2.2: in Proceeding, retransmit every T2.
                out.push(Action::SendRequest);
                self.interval = cfg.t2;
                out.push(Action::Arm(Timer::E, cfg.t2));
            }
            (Trying | Proceeding, Input::Timer(Timer::F)) => {
                out.push(Action::ReportTimeout);
                self.terminate(out);
            }
            (Trying | Proceeding, Input::Response(Class::Provisional)) => {
                self.state = Proceeding;
                out.push(Action::ToTu);
            }
            (Trying | Proceeding, Input::Response(Class::Success | Class::Failure)) => {
                out.push(Action::Disarm(Timer::E));
                out.push(Action::Disarm(Timer::F));
                out.push(Action::ToTu);
                self.wait_or_terminate(Completed, Timer::K, cfg.t4, out);
            }
            (Completed, Input::Response(_)) => out.push(Action::Absorb),
            (Completed, Input::Timer(Timer::K)) => self.terminate(out),
            (_, Input::Timer(_)) => {}
            (_, Input::Start | Input::Response(_)) => out.push(Action::Absorb),
            (
                _,
                Input::RequestRetransmit
                | Input::Ack
                | Input::TuResponse(_)
                | Input::TransportError,
            ) => {
                return Err(Refused::WrongKind(self.kind));
            }
        }
        Ok(())
    }

    fn server_invite(
        &mut self,
        input: Input,
        cfg: &Config,
        out: &mut Vec<Action>,
    ) -> Result<(), Refused> {
        use State::*;
        match (self.state, input) {
            (Proceeding, Input::Start) => match cfg.auto_trying {
                Some(d) if d.is_zero() => {
                    self.responded = true;
                    out.push(Action::SendTrying);
                }
                Some(d) => out.push(Action::Arm(Timer::Trying, d)),
                None => {}
            },
            (Proceeding, Input::Timer(Timer::Trying)) => {
                if !self.responded {
                    self.responded = true;
                    out.push(Action::SendTrying);
                }
            }
            (Proceeding, Input::RequestRetransmit) => {
                if self.responded {
                    out.push(Action::ResendResponse);
                }
                out.push(Action::Absorb);
            }
            (Completed, Input::RequestRetransmit) => {
                out.push(Action::ResendResponse);
                out.push(Action::Absorb);
            }
            (Confirmed | Accepted, Input::RequestRetransmit) => out.push(Action::Absorb),
            (Proceeding, Input::TuResponse(class)) => {
                self.responded = true;
                out.push(Action::Disarm(Timer::Trying));
                out.push(Action::SendResponse);
                match class {
                    Class::Provisional => {}
                    Class::Success => {
                        self.state = Accepted;
                        if !self.reliable && cfg.retransmit_2xx {
                            self.interval = cfg.t1;
                            out.push(Action::Arm(Timer::G, cfg.t1));
                        }
                        out.push(Action::Arm(Timer::L, cfg.t1_x64()));
                    }
                    Class::Failure => {
                        self.state = Completed;
                        if !self.reliable {
                            self.interval = cfg.t1;
                            out.push(Action::Arm(Timer::G, cfg.t1));
                        }
                        out.push(Action::Arm(Timer::H, cfg.t1_x64()));
                    }
                }
            }
            // RFC 6026 §8.5: the TU retransmits its 2xx through the transaction.
            (Accepted, Input::TuResponse(Class::Success)) => out.push(Action::SendResponse),
            (state, Input::TuResponse(_)) => return Err(Refused::ResponseNotAllowed(state)),
            (Completed | Accepted, Input::Timer(Timer::G)) => {
                out.push(Action::ResendResponse);
                self.interval = self.interval.saturating_mul(2).min(cfg.t2);
                out.push(Action::Arm(Timer::G, self.interval));
            }
            (Completed, Input::Timer(Timer::H)) => {
                out.push(Action::ReportTimeout);
                self.terminate(out);
            }
            (Completed, Input::Ack) => {
                out.push(Action::Disarm(Timer::G));
                out.push(Action::Disarm(Timer::H));
                out.push(Action::Absorb);
                self.wait_or_terminate(Confirmed, Timer::I, cfg.t4, out);
            }
            (Accepted, Input::Ack) => {
                if !self.acked {
                    self.acked = true;
                    out.push(Action::Disarm(Timer::G));
                }
                out.push(Action::ToTu);
            }
            (_, Input::Ack) => out.push(Action::Absorb),
            (Accepted, Input::Timer(Timer::L)) => {
                // §13.3.1.4: no ACK for the 2xx in 64·T1; the TU should end
                // the session.
                if !self.acked {
                    out.push(Action::ReportTimeout);
                }
                self.terminate(out);
            }
            (Confirmed, Input::Timer(Timer::I)) => self.terminate(out),
            (_, Input::Timer(_)) => {}
            (_, Input::Start | Input::RequestRetransmit) => out.push(Action::Absorb),
            (_, Input::Response(_) | Input::TransportError) => {
                return Err(Refused::WrongKind(self.kind));
            }
        }
        Ok(())
    }

    fn server_non_invite(
        &mut self,
        input: Input,
        cfg: &Config,
        out: &mut Vec<Action>,
    ) -> Result<(), Refused> {
        use State::*;
        match (self.state, input) {
            (Trying, Input::Start) => {}
            (Trying, Input::RequestRetransmit) => out.push(Action::Absorb),
            (Proceeding | Completed, Input::RequestRetransmit) => {
                out.push(Action::ResendResponse);
                out.push(Action::Absorb);
            }
            (Trying | Proceeding, Input::TuResponse(Class::Provisional)) => {
                self.responded = true;
                self.state = Proceeding;
                out.push(Action::SendResponse);
            }
            (Trying | Proceeding, Input::TuResponse(Class::Success | Class::Failure)) => {
                self.responded = true;
                out.push(Action::SendResponse);
                self.wait_or_terminate(Completed, Timer::J, cfg.t1_x64(), out);
            }
            (state, Input::TuResponse(_)) => return Err(Refused::ResponseNotAllowed(state)),
            (Completed, Input::Timer(Timer::J)) => self.terminate(out),
            (_, Input::Timer(_)) => {}
            (_, Input::Start | Input::RequestRetransmit) => out.push(Action::Absorb),
            (_, Input::Ack | Input::Response(_) | Input::TransportError) => {
                return Err(Refused::WrongKind(self.kind));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: Duration = Duration::from_millis(500);

    fn cfg() -> Config {
        Config::default()
    }

    fn run(fsm: &mut Fsm, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        fsm.step(input, &cfg(), &mut out).expect("input accepted");
        out
    }

    #[test]
    fn client_invite_unreliable_retransmits_with_doubling_without_t2_cap() {
        let mut f = Fsm::new(Kind::ClientInvite, false);
        assert_eq!(
            run(&mut f, Input::Start),
            [
                Action::SendRequest,
                Action::Arm(Timer::A, T1),
                Action::Arm(Timer::B, T1 * 64)
            ]
        );
        let mut intervals = Vec::new();
        for _ in 0..5 {
            let out = run(&mut f, Input::Timer(Timer::A));
            assert_eq!(out[0], Action::SendRequest);
            match out[1] {
                Action::Arm(Timer::A, d) => intervals.push(d.as_millis()),
                other => panic!("unexpected {other:?}"),
            }
        }
        // 1 s, 2 s, 4 s, 8 s, 16 s: past T2 = 4 s, as §17.1.1.2 prescribes for INVITE.
        assert_eq!(intervals, [1000, 2000, 4000, 8000, 16000]);
        assert_eq!(
            run(&mut f, Input::Timer(Timer::B)),
            [Action::ReportTimeout, Action::Terminate]
        );
        assert_eq!(f.state(), State::Terminated);
    }

    #[test]
    fn client_invite_reliable_arms_only_b_and_terminates_on_failure() {
        let mut f = Fsm::new(Kind::ClientInvite, true);
        assert_eq!(
            run(&mut f, Input::Start),
            [Action::SendRequest, Action::Arm(Timer::B, T1 * 64)]
        );
        let out = run(&mut f, Input::Response(Class::Failure));
        assert_eq!(
            out,
            [
                Action::Disarm(Timer::A),
                Action::Disarm(Timer::B),
                Action::SendAck,
                Action::ToTu,
                Action::Terminate
            ]
        );
    }

    #[test]
    fn client_invite_failure_then_retransmitted_final_resends_ack() {
        let mut f = Fsm::new(Kind::ClientInvite, false);
        run(&mut f, Input::Start);
        assert_eq!(
            run(&mut f, Input::Response(Class::Provisional)).last(),
            Some(&Action::ToTu)
        );
        assert_eq!(f.state(), State::Proceeding);
        // A stale Timer A fire after Proceeding does nothing.
        assert_eq!(run(&mut f, Input::Timer(Timer::A)), []);
        let out = run(&mut f, Input::Response(Class::Failure));
        assert_eq!(
            &out[2..],
            [
                Action::SendAck,
                Action::ToTu,
                Action::Arm(Timer::D, Duration::from_secs(32))
            ]
        );
        assert_eq!(f.state(), State::Completed);
        assert_eq!(
            run(&mut f, Input::Response(Class::Failure)),
            [Action::SendAck, Action::Absorb]
        );
        assert_eq!(
            run(&mut f, Input::Response(Class::Provisional)),
            [Action::Absorb]
        );
        assert_eq!(run(&mut f, Input::Timer(Timer::D)), [Action::Terminate]);
    }

    #[test]
    fn client_invite_success_enters_accepted_and_forwards_2xx_copies() {
        let mut f = Fsm::new(Kind::ClientInvite, false);
        run(&mut f, Input::Start);
        let out = run(&mut f, Input::Response(Class::Success));
        assert_eq!(&out[2..], [Action::ToTu, Action::Arm(Timer::M, T1 * 64)]);
        assert_eq!(f.state(), State::Accepted);
        assert_eq!(run(&mut f, Input::Response(Class::Success)), [Action::ToTu]);
        assert_eq!(
            run(&mut f, Input::Response(Class::Failure)),
            [Action::Absorb]
        );
        assert_eq!(run(&mut f, Input::Timer(Timer::M)), [Action::Terminate]);
    }

    #[test]
    fn client_non_invite_timer_e_caps_at_t2_and_uses_t2_in_proceeding() {
        let mut f = Fsm::new(Kind::ClientNonInvite, false);
        assert_eq!(
            run(&mut f, Input::Start),
            [
                Action::SendRequest,
                Action::Arm(Timer::E, T1),
                Action::Arm(Timer::F, T1 * 64)
            ]
        );
        let mut intervals = Vec::new();
        for _ in 0..5 {
            if let [Action::SendRequest, Action::Arm(Timer::E, d)] =
                run(&mut f, Input::Timer(Timer::E))[..]
            {
                intervals.push(d.as_millis());
            } else {
                panic!("timer E must retransmit and re-arm");
            }
        }
        assert_eq!(intervals, [1000, 2000, 4000, 4000, 4000]);
        assert_eq!(
            run(&mut f, Input::Response(Class::Provisional)),
            [Action::ToTu]
        );
        assert_eq!(
            run(&mut f, Input::Timer(Timer::E)),
            [
                Action::SendRequest,
                Action::Arm(Timer::E, Duration::from_secs(4))
            ]
        );
        let out = run(&mut f, Input::Response(Class::Success));
        assert_eq!(
            out,
            [
                Action::Disarm(Timer::E),
                Action::Disarm(Timer::F),
                Action::ToTu,
                Action::Arm(Timer::K, Duration::from_secs(5))
            ]
        );
        assert_eq!(
            run(&mut f, Input::Response(Class::Success)),
            [Action::Absorb]
        );
        assert_eq!(run(&mut f, Input::Timer(Timer::K)), [Action::Terminate]);
    }

    #[test]
    fn client_non_invite_timer_f_times_out() {
        let mut f = Fsm::new(Kind::ClientNonInvite, true);
        assert_eq!(
            run(&mut f, Input::Start),
            [Action::SendRequest, Action::Arm(Timer::F, T1 * 64)]
        );
        assert_eq!(
            run(&mut f, Input::Timer(Timer::F)),
            [Action::ReportTimeout, Action::Terminate]
        );
    }

    #[test]
    fn server_invite_failure_g_doubles_to_t2_and_h_times_out() {
        let mut f = Fsm::new(Kind::ServerInvite, false);
        assert_eq!(
            run(&mut f, Input::Start),
            [Action::Arm(Timer::Trying, Duration::from_millis(200))]
        );
        // No response yet: a retransmitted INVITE is absorbed silently.
        assert_eq!(run(&mut f, Input::RequestRetransmit), [Action::Absorb]);
        assert_eq!(
            run(&mut f, Input::Timer(Timer::Trying)),
            [Action::SendTrying]
        );
        assert_eq!(
            run(&mut f, Input::RequestRetransmit),
            [Action::ResendResponse, Action::Absorb]
        );
        let out = run(&mut f, Input::TuResponse(Class::Failure));
        assert_eq!(
            out,
            [
                Action::Disarm(Timer::Trying),
                Action::SendResponse,
                Action::Arm(Timer::G, T1),
                Action::Arm(Timer::H, T1 * 64)
            ]
        );
        let mut intervals = Vec::new();
        for _ in 0..5 {
            if let [Action::ResendResponse, Action::Arm(Timer::G, d)] =
                run(&mut f, Input::Timer(Timer::G))[..]
            {
                intervals.push(d.as_millis());
            } else {
                panic!("timer G must resend and re-arm");
            }
        }
        assert_eq!(intervals, [1000, 2000, 4000, 4000, 4000]);
        assert_eq!(
            f.step(Input::TuResponse(Class::Failure), &cfg(), &mut Vec::new()),
            Err(Refused::ResponseNotAllowed(State::Completed))
        );
        assert_eq!(
            run(&mut f, Input::Timer(Timer::H)),
            [Action::ReportTimeout, Action::Terminate]
        );
    }

    #[test]
    fn server_invite_ack_confirms_then_timer_i() {
        let mut f = Fsm::new(Kind::ServerInvite, false);
        run(&mut f, Input::Start);
        run(&mut f, Input::TuResponse(Class::Provisional));
        // The TU answered before 200 ms: the Trying timer does nothing.
        assert_eq!(run(&mut f, Input::Timer(Timer::Trying)), []);
        run(&mut f, Input::TuResponse(Class::Failure));
        assert_eq!(
            run(&mut f, Input::Ack),
            [
                Action::Disarm(Timer::G),
                Action::Disarm(Timer::H),
                Action::Absorb,
                Action::Arm(Timer::I, Duration::from_secs(5))
            ]
        );
        assert_eq!(f.state(), State::Confirmed);
        assert_eq!(run(&mut f, Input::Ack), [Action::Absorb]);
        assert_eq!(run(&mut f, Input::RequestRetransmit), [Action::Absorb]);
        assert_eq!(run(&mut f, Input::Timer(Timer::I)), [Action::Terminate]);
    }

    #[test]
    fn server_invite_reliable_no_g_and_ack_terminates() {
        let mut f = Fsm::new(Kind::ServerInvite, true);
        run(&mut f, Input::Start);
        assert_eq!(
            run(&mut f, Input::TuResponse(Class::Failure)),
            [
                Action::Disarm(Timer::Trying),
                Action::SendResponse,
                Action::Arm(Timer::H, T1 * 64)
            ]
        );
        assert_eq!(
            run(&mut f, Input::Ack),
            [
                Action::Disarm(Timer::G),
                Action::Disarm(Timer::H),
                Action::Absorb,
                Action::Terminate
            ]
        );
    }

    #[test]
    fn server_invite_success_accepted_absorbs_invite_and_passes_ack() {
        let mut f = Fsm::new(Kind::ServerInvite, false);
        run(&mut f, Input::Start);
        assert_eq!(
            run(&mut f, Input::TuResponse(Class::Success)),
            [
                Action::Disarm(Timer::Trying),
                Action::SendResponse,
                Action::Arm(Timer::G, T1),
                Action::Arm(Timer::L, T1 * 64)
            ]
        );
        // §13.3.1.4: the 2xx is retransmitted at T1, 2·T1, … capped at T2.
        assert_eq!(
            run(&mut f, Input::Timer(Timer::G)),
            [Action::ResendResponse, Action::Arm(Timer::G, T1 * 2)]
        );
        assert_eq!(run(&mut f, Input::RequestRetransmit), [Action::Absorb]);
        assert_eq!(
            run(&mut f, Input::TuResponse(Class::Success)),
            [Action::SendResponse]
        );
        assert_eq!(
            f.step(Input::TuResponse(Class::Failure), &cfg(), &mut Vec::new()),
            Err(Refused::ResponseNotAllowed(State::Accepted))
        );
        assert_eq!(
            run(&mut f, Input::Ack),
            [Action::Disarm(Timer::G), Action::ToTu]
        );
        assert_eq!(run(&mut f, Input::Ack), [Action::ToTu]);
        assert_eq!(run(&mut f, Input::Timer(Timer::L)), [Action::Terminate]);
    }

    #[test]
    fn server_invite_2xx_without_ack_reports_timeout_at_l() {
        let mut f = Fsm::new(Kind::ServerInvite, true);
        run(&mut f, Input::Start);
        assert_eq!(
            run(&mut f, Input::TuResponse(Class::Success)),
            [
                Action::Disarm(Timer::Trying),
                Action::SendResponse,
                Action::Arm(Timer::L, T1 * 64)
            ],
            "no 2xx retransmission on a reliable transport"
        );
        assert_eq!(
            run(&mut f, Input::Timer(Timer::L)),
            [Action::ReportTimeout, Action::Terminate]
        );
    }

    #[test]
    fn server_non_invite_flow_and_reliable_j_zero() {
        let mut f = Fsm::new(Kind::ServerNonInvite, false);
        assert_eq!(run(&mut f, Input::Start), []);
        assert_eq!(run(&mut f, Input::RequestRetransmit), [Action::Absorb]);
        assert_eq!(
            run(&mut f, Input::TuResponse(Class::Provisional)),
            [Action::SendResponse]
        );
        assert_eq!(
            run(&mut f, Input::RequestRetransmit),
            [Action::ResendResponse, Action::Absorb]
        );
        assert_eq!(
            run(&mut f, Input::TuResponse(Class::Success)),
            [Action::SendResponse, Action::Arm(Timer::J, T1 * 64)]
        );
        assert_eq!(
            run(&mut f, Input::RequestRetransmit),
            [Action::ResendResponse, Action::Absorb]
        );
        assert_eq!(
            f.step(Input::TuResponse(Class::Success), &cfg(), &mut Vec::new()),
            Err(Refused::ResponseNotAllowed(State::Completed))
        );
        assert_eq!(run(&mut f, Input::Timer(Timer::J)), [Action::Terminate]);

        let mut r = Fsm::new(Kind::ServerNonInvite, true);
        run(&mut r, Input::Start);
        assert_eq!(
            run(&mut r, Input::TuResponse(Class::Failure)),
            [Action::SendResponse, Action::Terminate]
        );
    }

    #[test]
    fn transport_error_reports_and_terminates() {
        for kind in [
            Kind::ClientInvite,
            Kind::ClientNonInvite,
            Kind::ServerInvite,
            Kind::ServerNonInvite,
        ] {
            let mut f = Fsm::new(kind, false);
            run(&mut f, Input::Start);
            assert_eq!(
                run(&mut f, Input::TransportError),
                [Action::ReportTransportError, Action::Terminate],
                "{kind:?}"
            );
        }
    }

    #[test]
    fn inputs_of_the_other_side_are_refused() {
        let mut c = Fsm::new(Kind::ClientNonInvite, false);
        assert_eq!(
            c.step(Input::TuResponse(Class::Success), &cfg(), &mut Vec::new()),
            Err(Refused::WrongKind(Kind::ClientNonInvite))
        );
        let mut s = Fsm::new(Kind::ServerNonInvite, false);
        assert_eq!(
            s.step(Input::Response(Class::Success), &cfg(), &mut Vec::new()),
            Err(Refused::WrongKind(Kind::ServerNonInvite))
        );
    }

    #[test]
    fn class_of_status_codes() {
        assert_eq!(Class::of(99), None);
        assert_eq!(Class::of(100), Some(Class::Provisional));
        assert_eq!(Class::of(299), Some(Class::Success));
        assert_eq!(Class::of(487), Some(Class::Failure));
        assert_eq!(Class::of(700), None);
    }
}
