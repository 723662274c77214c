//! One AppleMIDI session with one peer: invitation on both ports, CK clock sync, liveness,
//! RTP-MIDI sending, and the end of the session. Sans-IO: time in, datagrams and events out.
//!
//! The session speaks from our two ports (control `N`, data `N + 1`) to the peer's control port
//! `P` and data port `P + 1` (real peers assume the pairing, see the digest §1.1).

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::{Ck, Command, Exchange};
use crate::proto::rtpmidi::journal::{JournalSender, ReceiverStats, SequencerReceiver};
use crate::proto::rtpmidi::{self, Packet, RtpHeader, TimedCommand};

/// Nanoseconds on the worker's monotonic clock.
pub type Nanos = u64;

const SECOND: Nanos = 1_000_000_000;
/// Invitations are resent every second, twelve times (Apple's driver).
pub const INVITE_INTERVAL: Nanos = SECOND;
/// Invitations sent before giving up.
pub const INVITE_ATTEMPTS: u32 = 12;
/// After connecting, CK0 every 2 s for the first exchanges, then every 10 s.
pub const CK_FAST: Nanos = 2 * SECOND;
/// Steady CK period (also how often the latency shown in the status refreshes).
pub const CK_SLOW: Nanos = 10 * SECOND;
/// Fast CK exchanges after connecting.
pub const CK_FAST_COUNT: u32 = 5;
/// The initiator declares the peer dead when a CK0 has stayed unanswered for this long (it
/// resends CK0 every [`CK_FAST`] meanwhile): 15 tries ride out 30 % loss, a real outage ends
/// the session.
pub const CK_DEAD: Nanos = 30 * SECOND;
/// A responder that hears no CK for this long ends the session (Apple: 60 s).
pub const RESPONDER_SILENCE: Nanos = 61 * SECOND;
/// A responder waits this long for the data-port invitation after the control one.
pub const HALF_OPEN_TIMEOUT: Nanos = 5 * SECOND;
/// How long after a CK0 the driver polls quickly for the answer.
pub const CK_REPLY_WINDOW: Nanos = 100_000_000;
/// CK samples kept for the latency estimate.
pub const CK_HISTORY: usize = 8;
/// RS feedback goes out this long after RTP-MIDI arrives (at most one per period; lathoub's
/// threshold).
pub const RS_DELAY: Nanos = SECOND;

/// Which of our two sockets a datagram uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Control port `N`.
    Control,
    /// Data port `N + 1`.
    Data,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Our socket to send from.
    pub from: Port,
    /// Destination.
    pub to: SocketAddr,
    /// Bytes.
    pub bytes: Vec<u8>,
    /// For RTP-MIDI packets: when the packet is due to leave (host ns), so a send path can hold
    /// it until then; `None` for AppleMIDI control datagrams, which leave at once.
    pub due: Option<Nanos>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer answered NO.
    Rejected,
    /// No answer to the invitations.
    NoAnswer,
    /// The peer sent BY.
    PeerLeft,
    /// The peer stopped answering CK (initiator) or sending CK (responder).
    Timeout,
    /// We ended it.
    Local,
}

/// The latest clock-sync figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Round trip of the best recent exchange, µs.
    pub rtt_us: f64,
    /// Peer clock minus our clock, in 100 µs units (initiator's view; see digest §1.4).
    pub offset_ticks: f64,
    /// Spread (max − min) of the recent round trips, µs.
    pub jitter_us: f64,
    /// Exchanges measured so far.
    pub samples: u64,
}

/// Something the owner of the session should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Both ports are connected.
    Connected {
        /// Peer's SSRC.
        peer_ssrc: u32,
        /// Peer's name, if it sent one.
        name: Option<String>,
    },
    /// New latency figures from a CK exchange.
    Latency(Latency),
    /// The session ended.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InvitingControl { attempt: u32, next: Nanos },
    InvitingData { attempt: u32, next: Nanos },
    HalfOpen { deadline: Nanos },
    Connected,
    Closed(CloseReason),
}

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    name: String,
    token: u32,
    local_ssrc: u32,
    peer_ssrc: Option<u32>,
    /// The SSRC the peer used on its data port, if different (pymidi picks one per port).
    peer_data_ssrc: Option<u32>,
    peer_name: Option<String>,
    peer_control: SocketAddr,
    initiator: bool,
    state: State,
    /// Session clock origin (10 kHz counter = 0 here).
    epoch: Nanos,
    // CK (initiator side).
    ck_next: Nanos,
    ck_sent: u32,
    /// Since when CK0s have gone unanswered.
    ck_pending_since: Option<Nanos>,
    /// When the last CK0 left.
    ck_sent_at: Nanos,
    // Liveness (responder side): last CK heard.
    last_heard: Nanos,
    rtts: VecDeque<(f64, f64)>,
    samples: u64,
    rtp_seq: u16,
    /// The newest RTP-MIDI packet's (due time, session timestamp): every later packet leaves no
    /// earlier and carries no smaller timestamp, whatever built it (clock, guard, Stop).
    last_rtp: Option<(Nanos, u64)>,
    /// What our packets' journals say, and guard packets.
    journal: JournalSender,
    /// What the peer's packets did to its sequencer state (and loss counters).
    receiver: SequencerReceiver,
    /// When the next RS feedback goes out.
    rs_at: Option<Nanos>,
    /// Scratch for guard packets.
    guard_commands: Vec<TimedCommand>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

/// The 10 kHz session clock at `now`.
fn ticks(epoch: Nanos, now: Nanos) -> u64 {
    now.saturating_sub(epoch) / 100_000
}

impl Session {
    /// Invite the peer whose control port is `peer_control`.
    pub fn invite(
        now: Nanos,
        name: &str,
        token: u32,
        local_ssrc: u32,
        rtp_seq: u16,
        peer_control: SocketAddr,
    ) -> Self {
        let mut s = Self::new(now, name, token, local_ssrc, rtp_seq, peer_control, true);
        s.state = State::InvitingControl {
            attempt: 1,
            next: now + INVITE_INTERVAL,
        };
        s.send_exchange(Port::Control, Command::Invitation, true);
        s
    }

    /// Accept an invitation that arrived on our control port (or, out of order, on the data
    /// port) from `from`.
    pub fn accept(
        now: Nanos,
        name: &str,
        local_ssrc: u32,
        rtp_seq: u16,
        on: Port,
        from: SocketAddr,
        invitation: &Exchange,
    ) -> Self {
        let peer_control = match on {
            Port::Control => from,
            Port::Data => SocketAddr::new(from.ip(), from.port().wrapping_sub(1)),
        };
        let mut s = Self::new(
            now,
            name,
            invitation.token,
            local_ssrc,
            rtp_seq,
            peer_control,
            false,
        );
        s.peer_ssrc = Some(invitation.ssrc);
        s.peer_name.clone_from(&invitation.name);
        s.reply_ok(on, invitation.token);
        match on {
            Port::Control => {
                s.state = State::HalfOpen {
                    deadline: now + HALF_OPEN_TIMEOUT,
                }
            }
            Port::Data => s.connect(now),
        }
        s
    }

    fn new(
        now: Nanos,
        name: &str,
        token: u32,
        local_ssrc: u32,
        rtp_seq: u16,
        peer_control: SocketAddr,
        initiator: bool,
    ) -> Self {
        Self {
            name: name.to_owned(),
            token,
            local_ssrc,
            peer_ssrc: None,
            peer_data_ssrc: None,
            peer_name: None,
            peer_control,
            initiator,
            state: State::Closed(CloseReason::Local),
            epoch: now,
            ck_next: now,
            ck_sent: 0,
            ck_pending_since: None,
            ck_sent_at: 0,
            last_heard: now,
            rtts: VecDeque::new(),
            samples: 0,
            rtp_seq,
            journal: JournalSender::new(false),
            receiver: SequencerReceiver::new(),
            rs_at: None,
            guard_commands: Vec::new(),
            last_rtp: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// True while we accepted the peer's control-port invitation and wait for its data-port
    /// one.
    pub fn is_half_open(&self) -> bool {
        matches!(self.state, State::HalfOpen { .. })
    }

    /// The peer's control address.
    pub fn peer_control(&self) -> SocketAddr {
        self.peer_control
    }

    /// True if `from` is one of the peer's two ports: only the session's owner may change it
    /// (a BY, CK, RS or RTP-MIDI from anyone else is not acted on).
    pub fn is_from_peer(&self, from: SocketAddr) -> bool {
        from == self.peer_control || from == self.peer_data()
    }

    /// The peer's data address (control port + 1).
    pub fn peer_data(&self) -> SocketAddr {
        SocketAddr::new(
            self.peer_control.ip(),
            self.peer_control.port().wrapping_add(1),
        )
    }

    /// Our initiator token for this session.
    pub fn token(&self) -> u32 {
        self.token
    }

    /// The peer's SSRC, once known.
    pub fn peer_ssrc(&self) -> Option<u32> {
        self.peer_ssrc
    }

    /// True if `ssrc` is the peer's (on either of its ports).
    pub fn is_peer_ssrc(&self, ssrc: u32) -> bool {
        self.peer_ssrc == Some(ssrc) || self.peer_data_ssrc == Some(ssrc)
    }

    /// True while a CK1 answer may arrive any moment (within [`CK_REPLY_WINDOW`] of a CK0):
    /// the driver then polls its sockets more often, since the arrival time is the measurement.
    pub fn awaiting_ck(&self, now: Nanos) -> bool {
        self.ck_pending_since.is_some() && now < self.ck_sent_at + CK_REPLY_WINDOW
    }

    /// Send the recovery journal (Chapter Q) in our packets, or not.
    pub fn set_journal(&mut self, enabled: bool) {
        self.journal.set_enabled(enabled);
    }

    /// Our outgoing stream's journal state.
    pub fn journal(&self) -> &JournalSender {
        &self.journal
    }

    /// The peer's incoming stream as we received it.
    pub fn receiver(&self) -> &SequencerReceiver {
        &self.receiver
    }

    /// Counters of the incoming stream.
    pub fn received(&self) -> ReceiverStats {
        self.receiver.stats()
    }

    /// Our SSRC.
    pub fn local_ssrc(&self) -> u32 {
        self.local_ssrc
    }

    /// True once both ports are connected and until the session ends.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Why the session ended, if it has.
    pub fn closed(&self) -> Option<CloseReason> {
        match self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// The session clock (10 kHz) at `now`, as used for RTP timestamps.
    pub fn session_ticks(&self, now: Nanos) -> u64 {
        ticks(self.epoch, now)
    }

    fn exchange(&self, with_name: bool) -> Exchange {
        Exchange {
            token: self.token,
            ssrc: self.local_ssrc,
            name: with_name.then(|| self.name.clone()),
        }
    }

    fn push(&mut self, from: Port, command: &Command) {
        let to = match from {
            Port::Control => self.peer_control,
            Port::Data => self.peer_data(),
        };
        let mut bytes = Vec::with_capacity(36);
        super::encode_into(command, &mut bytes);
        self.transmits.push_back(Transmit {
            from,
            to,
            bytes,
            due: None,
        });
    }

    fn send_exchange(&mut self, from: Port, make: impl Fn(Exchange) -> Command, with_name: bool) {
        let command = make(self.exchange(with_name));
        self.push(from, &command);
    }

    /// Accept an invitation: the OK echoes the invitation's own token (an initiator may use a
    /// fresh token for its data-port invitation) and always carries our one SSRC.
    fn reply_ok(&mut self, on: Port, token: u32) {
        let mut exchange = self.exchange(true);
        exchange.token = token;
        self.push(on, &Command::Accepted(exchange));
    }

    fn connect(&mut self, now: Nanos) {
        self.state = State::Connected;
        self.last_heard = now;
        self.ck_pending_since = None;
        self.ck_next = now;
        self.events.push_back(Event::Connected {
            peer_ssrc: self.peer_ssrc.unwrap_or(0),
            name: self.peer_name.clone(),
        });
        if self.initiator {
            self.handle_timeout(now);
        }
    }

    fn close(&mut self, reason: CloseReason, send_bye: bool) {
        if self.closed().is_some() {
            return;
        }
        if send_bye {
            self.send_exchange(Port::Control, Command::Bye, false);
        }
        self.state = State::Closed(reason);
        self.events.push_back(Event::Closed(reason));
    }

    /// End the session (sends BY).
    pub fn leave(&mut self) {
        self.close(CloseReason::Local, true);
    }

    /// A command for this session arrived on `on`. The caller has matched it to this session
    /// (by token for IN/OK/NO, by SSRC for BY/CK/RS).
    pub fn handle_command(&mut self, now: Nanos, on: Port, command: &Command) {
        match (self.state, command) {
            (State::InvitingControl { .. }, Command::Accepted(e)) if on == Port::Control => {
                self.peer_ssrc = Some(e.ssrc);
                self.peer_name.clone_from(&e.name);
                self.state = State::InvitingData {
                    attempt: 1,
                    next: now + INVITE_INTERVAL,
                };
                self.send_exchange(Port::Data, Command::Invitation, true);
            }
            (State::InvitingData { .. }, Command::Accepted(e)) if on == Port::Data => {
                // pymidi answers from a second SSRC on its data port; remember it too.
                if Some(e.ssrc) != self.peer_ssrc {
                    self.peer_data_ssrc = Some(e.ssrc);
                }
                self.connect(now);
            }
            (State::InvitingControl { .. } | State::InvitingData { .. }, Command::Rejected(_)) => {
                let bye = matches!(self.state, State::InvitingData { .. });
                self.close(CloseReason::Rejected, bye);
            }
            (State::HalfOpen { .. }, Command::Invitation(e)) if on == Port::Data => {
                if Some(e.ssrc) != self.peer_ssrc {
                    self.peer_data_ssrc = Some(e.ssrc);
                }
                self.reply_ok(Port::Data, e.token);
                self.connect(now);
            }
            // A repeated invitation (our OK was lost): answer again, idempotently.
            (State::HalfOpen { .. } | State::Connected, Command::Invitation(e))
                if !self.initiator =>
            {
                self.reply_ok(on, e.token);
            }
            (_, Command::Bye(e)) if Some(e.ssrc) == self.peer_ssrc => {
                self.close(CloseReason::PeerLeft, false)
            }
            (State::Connected, Command::Ck(ck)) => self.handle_ck(now, ck),
            (State::Connected, Command::ReceiverFeedback { seq, .. }) => {
                self.journal.acknowledge(*seq)
            }
            _ => {}
        }
    }

    fn handle_ck(&mut self, now: Nanos, ck: &Ck) {
        self.last_heard = now;
        let local = ticks(self.epoch, now);
        match ck.count {
            0 => {
                let reply = Ck {
                    ssrc: self.local_ssrc,
                    count: 1,
                    timestamps: [ck.timestamps[0], local, 0],
                };
                self.push(Port::Data, &Command::Ck(reply));
            }
            1 if self.initiator => {
                let [t1, t2, _] = ck.timestamps;
                let t3 = local;
                let reply = Ck {
                    ssrc: self.local_ssrc,
                    count: 2,
                    timestamps: [t1, t2, t3],
                };
                self.push(Port::Data, &Command::Ck(reply));
                self.ck_pending_since = None;
                // The answer to our latest CK0: its round trip to the nanosecond (when it left,
                // when the kernel received the answer), not in the CK clock's 100 µs steps.
                let rtt = if t1 == ticks(self.epoch, self.ck_sent_at) && now >= self.ck_sent_at {
                    (now - self.ck_sent_at) as f64 / 100_000.0
                } else {
                    t3.wrapping_sub(t1) as i64 as f64
                };
                let offset = (t1 as f64 + t3 as f64) / 2.0 - t2 as f64;
                self.record(rtt, -offset);
            }
            2 if !self.initiator => {
                let [t1, t2, t3] = ck.timestamps;
                let rtt = local.wrapping_sub(t2) as i64 as f64;
                let offset = (t1 as f64 + t3 as f64) / 2.0 - t2 as f64;
                self.record(rtt, offset);
            }
            _ => {}
        }
    }

    fn record(&mut self, rtt_ticks: f64, offset_ticks: f64) {
        if !(0.0..1e7).contains(&rtt_ticks) {
            return; // clock nonsense from the peer: ignore the sample
        }
        self.rtts.push_back((rtt_ticks, offset_ticks));
        if self.rtts.len() > CK_HISTORY {
            self.rtts.pop_front();
        }
        self.samples += 1;
        let best = self
            .rtts
            .iter()
            .copied()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((rtt_ticks, offset_ticks));
        let max = self.rtts.iter().map(|r| r.0).fold(f64::MIN, f64::max);
        self.events.push_back(Event::Latency(Latency {
            rtt_us: best.0 * 100.0,
            offset_ticks: best.1,
            jitter_us: (max - best.0) * 100.0,
            samples: self.samples,
        }));
    }

    /// Advance timers: resend invitations, send CK, detect a dead peer, guard packets, RS.
    pub fn handle_timeout(&mut self, now: Nanos) {
        if self.state == State::Connected {
            let mut commands = std::mem::take(&mut self.guard_commands);
            if self.journal.guard_due(now, &mut commands) {
                // Clock packets may already be built ahead of `now` (a send path holds them
                // until due): the guard follows the newest, so timestamps never go backwards.
                let at = self.last_rtp.map_or(now, |(due, _)| due.max(now));
                self.send_midi(at, ticks(self.epoch, at), &commands);
            }
            self.guard_commands = commands;
            if self.rs_at.is_some_and(|t| now >= t) {
                self.rs_at = None;
                if let Some(seq) = self.receiver.highest() {
                    let rs = Command::ReceiverFeedback {
                        ssrc: self.local_ssrc,
                        seq,
                    };
                    self.push(Port::Control, &rs);
                }
            }
        }
        match self.state {
            State::InvitingControl { attempt, next } | State::InvitingData { attempt, next }
                if now >= next =>
            {
                let data = matches!(self.state, State::InvitingData { .. });
                if attempt >= INVITE_ATTEMPTS {
                    self.close(CloseReason::NoAnswer, data);
                    return;
                }
                let next = now + INVITE_INTERVAL;
                let attempt = attempt + 1;
                self.state = if data {
                    State::InvitingData { attempt, next }
                } else {
                    State::InvitingControl { attempt, next }
                };
                let port = if data { Port::Data } else { Port::Control };
                self.send_exchange(port, Command::Invitation, true);
            }
            State::HalfOpen { deadline } if now >= deadline => {
                self.close(CloseReason::NoAnswer, true)
            }
            State::Connected
                if self.initiator && self.ck_pending_since.is_some_and(|t| now >= t + CK_DEAD) =>
            {
                self.close(CloseReason::Timeout, true);
            }
            State::Connected if self.initiator && now >= self.ck_next => {
                let ck = Ck {
                    ssrc: self.local_ssrc,
                    count: 0,
                    timestamps: [ticks(self.epoch, now), 0, 0],
                };
                self.push(Port::Data, &Command::Ck(ck));
                self.ck_sent_at = now;
                self.ck_sent += 1;
                // Unanswered exchanges are retried quickly; answered ones settle to CK_SLOW.
                let fast = self.ck_pending_since.is_some() || self.ck_sent < CK_FAST_COUNT;
                self.ck_pending_since.get_or_insert(now);
                self.ck_next = now + if fast { CK_FAST } else { CK_SLOW };
            }
            State::Connected if !self.initiator && now >= self.last_heard + RESPONDER_SILENCE => {
                self.close(CloseReason::Timeout, true);
            }
            _ => {}
        }
    }

    /// When [`Session::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        let session = self.session_timeout();
        if self.state != State::Connected {
            return session;
        }
        [session, self.journal.poll_timeout(), self.rs_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn session_timeout(&self) -> Option<Nanos> {
        match self.state {
            State::InvitingControl { next, .. } | State::InvitingData { next, .. } => Some(next),
            State::HalfOpen { deadline } => Some(deadline),
            State::Connected if self.initiator => Some(
                self.ck_pending_since
                    .map_or(self.ck_next, |t| self.ck_next.min(t + CK_DEAD)),
            ),
            State::Connected => Some(self.last_heard + RESPONDER_SILENCE),
            State::Closed(_) => None,
        }
    }

    /// An RTP-MIDI packet from the peer (the caller matched its SSRC).
    pub fn handle_rtp(&mut self, now: Nanos, packet: &Packet) {
        if self.state != State::Connected {
            return;
        }
        self.receiver.receive(packet);
        self.rs_at.get_or_insert(now + RS_DELAY);
    }

    /// Queue an RTP-MIDI packet with `commands`, the first at session time `timestamp`
    /// (10 kHz ticks; later commands' `offset`s are relative to it), due to leave at `now`; it
    /// carries the journal if that is on. Ignored unless connected. Packets are monotonic in
    /// the order they are queued: due time and timestamp are raised to the previous packet's
    /// if they are earlier (a late-built packet never overtakes or predates an earlier one).
    pub fn send_midi(&mut self, now: Nanos, timestamp: u64, commands: &[TimedCommand]) {
        if self.state != State::Connected {
            return;
        }
        let (now, timestamp) = match self.last_rtp {
            Some((due, ts)) => (now.max(due), timestamp.max(ts)),
            None => (now, timestamp),
        };
        self.last_rtp = Some((now, timestamp));
        let header = RtpHeader {
            marker: false,
            payload_type: rtpmidi::PAYLOAD_TYPE,
            seq: self.rtp_seq,
            timestamp: timestamp as u32,
            ssrc: self.local_ssrc,
        };
        self.rtp_seq = self.rtp_seq.wrapping_add(1);
        let mut bytes = Vec::with_capacity(16 + commands.len() * 4);
        rtpmidi::encode(&header, commands, self.journal.journal(), &mut bytes);
        self.journal.sent(now, header.seq, commands);
        let to = self.peer_data();
        self.transmits.push_back(Transmit {
            from: Port::Data,
            to,
            bytes,
            due: Some(now),
        });
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
