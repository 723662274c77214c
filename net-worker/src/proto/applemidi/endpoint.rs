//! All AppleMIDI sessions of one instance: the peer directory, invitations both ways, access
//! control, demultiplexing of incoming datagrams, re-invitation with backoff, and counters for
//! every datagram that is refused or malformed. Sans-IO, like [`super::session`].
//!
//! Demultiplexing follows what real peers do (digest §1.3): IN/OK/NO by initiator token, BY by
//! the SSRC at offset 12, CK/RS/RL by the SSRC at offset 4, RTP by the RTP SSRC.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::session::{CloseReason, Event, Latency, Nanos, Port, Session, Transmit};
use super::{Ck, Command, Exchange};
use crate::proto::rtpmidi::journal::ReceiverStats;
use crate::proto::rtpmidi::{self, TimedCommand};

const SECOND: Nanos = 1_000_000_000;
/// First re-invitation delay after a session drops.
pub const BACKOFF_MIN: Nanos = SECOND;
/// Longest re-invitation delay.
pub const BACKOFF_MAX: Nanos = 30 * SECOND;
/// Default most guests (peers that invited us) at once; see [`Endpoint::set_max_guests`].
pub const DEFAULT_MAX_GUESTS: usize = 32;
/// Most guests half way in (control port accepted, data port not yet) at once. A real
/// initiator completes within a round trip; an invitation flood only churns these slots and
/// never touches a connected session.
pub const MAX_HALF_OPEN: usize = 8;
/// Most guests from one address: one host cannot take every guest slot.
pub const MAX_GUESTS_PER_ADDRESS: usize = 4;
/// Most new guest sessions started a second: a flood of invitations is not answered (OK)
/// one for one; over it, invitations are dropped unanswered and counted.
pub const MAX_NEW_GUESTS_PER_SECOND: u32 = 20;
/// Most refusals (NO) sent a second: a flood of refused invitations is not reflected
/// one-for-one at whatever source address it claims.
pub const MAX_REFUSALS_PER_SECOND: u32 = 20;

/// Who may invite us (Apple's Network MIDI choices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Anyone on the network.
    #[default]
    Anyone,
    /// Only peers in the directory.
    Directory,
    /// Nobody: we only invite.
    Nobody,
}

/// Counters for the status: everything that was not a normal session datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Datagrams that did not decode (AppleMIDI or RTP-MIDI).
    pub malformed: u64,
    /// Invitations refused by the access mode.
    pub refused: u64,
    /// Invitations refused because every guest slot holds a connected session.
    pub full: u64,
    /// Half-open guest sessions dropped to make room for a newer invitation.
    pub evicted: u64,
    /// Refusals not answered with a NO (over [`MAX_REFUSALS_PER_SECOND`]).
    pub unanswered: u64,
    /// BY for a session that is not (or no longer) ours.
    pub stale_bye: u64,
    /// CK/RS/RL/OK/NO for no known session.
    pub unknown_session: u64,
    /// RTP packets from an SSRC we have no session with.
    pub unknown_ssrc: u64,
    /// Session control (OK, NO, BY, CK, RS, RL) or RTP-MIDI naming one of our sessions but
    /// coming from an address that is not that session's peer: forged or misrouted, never
    /// acted on.
    pub wrong_source: u64,
    /// RTP-MIDI packets received from connected peers.
    pub rtp_received: u64,
    /// RTP-MIDI packets sent.
    pub rtp_sent: u64,
}

/// What the status shows about one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// The peer's control address.
    pub address: SocketAddr,
    /// In the directory (we invite it) or a guest (it invited us).
    pub in_directory: bool,
    /// Peer's name.
    pub name: Option<String>,
    /// Connected now.
    pub connected: bool,
    /// Latest CK figures.
    pub latency: Option<Latency>,
    /// How the last session ended.
    pub last_close: Option<CloseReason>,
    /// Connections made so far.
    pub connects: u64,
    /// When the next invitation goes out, if one is scheduled.
    pub retry_at: Option<Nanos>,
    /// Our packets to this peer carry the recovery journal.
    pub journal: bool,
    /// Guard packets sent in the current session.
    pub guards: u64,
    /// The peer's RTP-MIDI stream to us in the current session (loss, repairs).
    pub received: ReceiverStats,
    /// RTP-MIDI packets sent to it (all sessions).
    pub sent: u64,
}

/// Events for the owner.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointEvent {
    /// A peer connected (resynchronise its clock stream).
    Connected(SocketAddr),
    /// A peer's session ended.
    Disconnected(SocketAddr, CloseReason),
    /// An invitation was refused (access mode).
    Refused(SocketAddr),
}

#[derive(Debug)]
struct Slot {
    status: PeerStatus,
    session: Option<Session>,
    backoff: Nanos,
    /// When the slot's current session began (eviction picks the oldest half-open guest).
    since: Nanos,
}

impl Slot {
    fn is_guest(&self) -> bool {
        !self.status.in_directory
    }

    fn is_half_open_guest(&self) -> bool {
        self.is_guest() && self.session.as_ref().is_some_and(Session::is_half_open)
    }
}

/// Queue a session's datagram, counting the RTP-MIDI ones (clock and guard packets alike).
fn forward(transmits: &mut VecDeque<Transmit>, counters: &mut Counters, t: Transmit) -> bool {
    let rtp = t.from == Port::Data && !super::is_command(&t.bytes);
    if rtp {
        counters.rtp_sent += 1;
    }
    transmits.push_back(t);
    rtp
}

/// Why a session control message found no session.
enum Miss {
    Unknown,
    StaleBye,
}

/// The endpoint.
#[derive(Debug)]
pub struct Endpoint {
    name: String,
    access: Access,
    /// Journal setting for peers that invite us (and directory peers by default).
    journal_default: bool,
    slots: Vec<Slot>,
    max_guests: usize,
    /// Refusals answered in the current second: (second, count).
    refusals: (Nanos, u32),
    /// New guest sessions started in the current second: (second, count).
    new_guests: (Nanos, u32),
    rng: u64,
    counters: Counters,
    transmits: VecDeque<Transmit>,
    events: VecDeque<EndpointEvent>,
}

impl Endpoint {
    /// An endpoint announcing itself as `name`; `seed` seeds tokens and SSRCs.
    pub fn new(name: &str, access: Access, seed: u64) -> Self {
        Self {
            name: name.to_owned(),
            access,
            journal_default: true,
            slots: Vec::new(),
            max_guests: DEFAULT_MAX_GUESTS,
            refusals: (0, 0),
            new_guests: (0, 0),
            rng: seed | 1,
            counters: Counters::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn random(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 16) as u32
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Change who may invite us.
    pub fn set_access(&mut self, access: Access) {
        self.access = access;
    }

    /// Most guests (peers that invited us) at once, at least 1. Connected guests are never
    /// dropped to make room: a newcomer over the limit is refused (NO) and counted.
    pub fn set_max_guests(&mut self, max: usize) {
        self.max_guests = max.max(1);
    }

    /// Whether new peers get the recovery journal (guests, and directory peers added later
    /// without their own setting).
    pub fn set_journal_default(&mut self, enabled: bool) {
        self.journal_default = enabled;
    }

    /// Switch the journal for one peer (now, and for its later sessions).
    pub fn set_peer_journal(&mut self, peer: SocketAddr, enabled: bool) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.status.address == peer) {
            slot.status.journal = enabled;
            if let Some(session) = &mut slot.session {
                session.set_journal(enabled);
            }
        }
    }

    /// The latest clock-sync figures of the peer whose control address is `peer`.
    pub fn latency(&self, peer: SocketAddr) -> Option<Latency> {
        self.slot(peer).and_then(|s| s.status.latency)
    }

    /// The current session with the peer whose control address is `peer`.
    pub fn session(&self, peer: SocketAddr) -> Option<&Session> {
        self.slot(peer).and_then(|s| s.session.as_ref())
    }

    fn slot(&self, peer: SocketAddr) -> Option<&Slot> {
        self.slots.iter().find(|s| s.status.address == peer)
    }

    /// Every known peer.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.slots.iter().map(|s| s.status.clone()).collect()
    }

    /// Add a peer to the directory and invite it now.
    pub fn add_peer(&mut self, now: Nanos, control: SocketAddr) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.status.address == control) {
            slot.status.in_directory = true;
            return;
        }
        self.slots.push(Slot {
            status: PeerStatus {
                address: control,
                in_directory: true,
                name: None,
                connected: false,
                latency: None,
                last_close: None,
                connects: 0,
                retry_at: Some(now),
                journal: self.journal_default,
                guards: 0,
                received: ReceiverStats::default(),
                sent: 0,
            },
            session: None,
            backoff: BACKOFF_MIN,
            since: now,
        });
        self.handle_timeout(now);
    }

    /// Leave every session (BY) and forget the peers.
    pub fn shutdown(&mut self) {
        for slot in &mut self.slots {
            if let Some(session) = &mut slot.session {
                session.leave();
                while let Some(t) = session.poll_transmit() {
                    self.transmits.push_back(t);
                }
            }
        }
        self.slots.clear();
    }

    /// A datagram arrived on our `on` socket from `from`. Datagrams that are only counted
    /// (forged, stale, unknown, malformed) cost no more than their lookup: a flood of them
    /// never walks every session.
    pub fn handle_datagram(&mut self, now: Nanos, on: Port, from: SocketAddr, bytes: &[u8]) {
        let acted = if super::is_command(bytes) {
            match super::decode(bytes) {
                Ok(command) => self.handle_command(now, on, from, &command),
                Err(_) => {
                    self.counters.malformed += 1;
                    false
                }
            }
        } else if on == Port::Data {
            match rtpmidi::decode(bytes) {
                Ok(packet) => {
                    let ssrc = packet.header.ssrc;
                    match self.find(|x| x.is_connected() && x.is_peer_ssrc(ssrc)) {
                        Some(session) if session.is_from_peer(from) => {
                            session.handle_rtp(now, &packet);
                            self.counters.rtp_received += 1;
                            true
                        }
                        Some(_) => {
                            self.counters.wrong_source += 1;
                            false
                        }
                        None => {
                            self.counters.unknown_ssrc += 1;
                            false
                        }
                    }
                }
                Err(_) => {
                    self.counters.malformed += 1;
                    false
                }
            }
        } else {
            self.counters.malformed += 1;
            false
        };
        // A refusal (NO) is queued here directly; anything a session did is collected.
        if acted {
            self.collect(now);
        }
    }

    fn find(&mut self, pred: impl Fn(&Session) -> bool) -> Option<&mut Session> {
        let i = self.position(pred)?;
        self.slots[i].session.as_mut()
    }

    /// True if a session acted on it.
    fn handle_command(
        &mut self,
        now: Nanos,
        on: Port,
        from: SocketAddr,
        command: &Command,
    ) -> bool {
        let (index, miss) = match command {
            Command::Invitation(e) => return self.handle_invitation(now, on, from, e),
            Command::Accepted(e) | Command::Rejected(e) => {
                (self.position(|s| s.token() == e.token), Miss::Unknown)
            }
            Command::Bye(e) => (
                self.position(|s| s.is_peer_ssrc(e.ssrc) && s.closed().is_none()),
                Miss::StaleBye,
            ),
            Command::Ck(Ck { ssrc, .. })
            | Command::ReceiverFeedback { ssrc, .. }
            | Command::BitrateLimit { ssrc, .. } => {
                (self.position(|s| s.is_peer_ssrc(*ssrc)), Miss::Unknown)
            }
        };
        let Some(session) = index.and_then(|i| self.slots[i].session.as_mut()) else {
            match miss {
                Miss::Unknown => self.counters.unknown_session += 1,
                Miss::StaleBye => self.counters.stale_bye += 1,
            }
            return false;
        };
        // Only the session's own peer (its address pair) may answer, end or measure it.
        if !session.is_from_peer(from) {
            self.counters.wrong_source += 1;
            return false;
        }
        session.handle_command(now, on, command);
        true
    }

    /// The slot whose session matches `pred`.
    fn position(&self, pred: impl Fn(&Session) -> bool) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.session.as_ref().is_some_and(&pred))
    }

    /// True if a session was made or acted (a refusal is queued directly).
    fn handle_invitation(&mut self, now: Nanos, on: Port, from: SocketAddr, e: &Exchange) -> bool {
        if let Some(session) = self.find(|s| s.token() == e.token && s.closed().is_none()) {
            if session.is_from_peer(from) {
                session.handle_command(now, on, &Command::Invitation(e.clone()));
                return true;
            }
            self.counters.wrong_source += 1;
            return false;
        }
        // An initiator may use a fresh token for its data-port invitation: the half-open
        // session with that peer takes it (and answers with the same SSRC as on control).
        if on == Port::Data
            && let Some(session) =
                self.find(|s| s.is_half_open() && s.peer_data() == from && s.closed().is_none())
        {
            session.handle_command(now, on, &Command::Invitation(e.clone()));
            return true;
        }
        let control = match on {
            Port::Control => from,
            Port::Data => SocketAddr::new(from.ip(), from.port().wrapping_sub(1)),
        };
        let listed = self
            .slots
            .iter()
            .any(|s| s.status.in_directory && s.status.address == control);
        let allowed = match self.access {
            Access::Anyone => true,
            Access::Directory => listed,
            Access::Nobody => false,
        };
        if !allowed {
            self.counters.refused += 1;
            self.refuse(now, on, from, e.token);
            return false;
        }
        let known = self.slots.iter().any(|s| s.status.address == control);
        if !known && !listed {
            let from_host = self
                .slots
                .iter()
                .filter(|s| s.is_guest() && s.status.address.ip() == control.ip())
                .count();
            if from_host >= MAX_GUESTS_PER_ADDRESS {
                self.counters.full += 1;
                self.refuse(now, on, from, e.token);
                return false;
            }
            let second = now / SECOND;
            if self.new_guests.0 != second {
                self.new_guests = (second, 0);
            }
            if self.new_guests.1 >= MAX_NEW_GUESTS_PER_SECOND {
                self.counters.full += 1;
                self.counters.unanswered += 1;
                return false;
            }
            self.new_guests.1 += 1;
        }
        if !known && !self.make_room_for_guest() {
            self.counters.full += 1;
            self.refuse(now, on, from, e.token);
            return false;
        }
        let (ssrc, seq) = (self.random(), self.random() as u16);
        let mut session = Session::accept(now, &self.name, ssrc, seq, on, from, e);
        let journal = self
            .slots
            .iter()
            .find(|s| s.status.address == control)
            .map_or(self.journal_default, |s| s.status.journal);
        session.set_journal(journal);
        let status = PeerStatus {
            address: control,
            in_directory: listed,
            name: e.name.clone(),
            connected: false,
            latency: None,
            last_close: None,
            connects: 0,
            retry_at: None,
            journal,
            guards: 0,
            received: ReceiverStats::default(),
            sent: 0,
        };
        match self.slots.iter_mut().find(|s| s.status.address == control) {
            Some(slot) => {
                // They invited us while we were inviting them (or after a restart): theirs wins.
                if let Some(old) = &mut slot.session {
                    old.leave();
                }
                slot.session = Some(session);
                slot.status.retry_at = None;
                slot.since = now;
            }
            None => self.slots.push(Slot {
                status,
                session: Some(session),
                backoff: BACKOFF_MIN,
                since: now,
            }),
        }
        true
    }

    /// Room for one more guest: true if there is, or if the oldest half-open guest was
    /// dropped for it (over [`MAX_HALF_OPEN`] half-open, or every slot taken); false when
    /// every guest slot holds a connected session.
    fn make_room_for_guest(&mut self) -> bool {
        let guests = self.slots.iter().filter(|s| s.is_guest()).count();
        let half_open = self.slots.iter().filter(|s| s.is_half_open_guest()).count();
        if guests < self.max_guests && half_open < MAX_HALF_OPEN {
            return true;
        }
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_half_open_guest())
            .min_by_key(|(_, s)| s.since)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.slots.swap_remove(i);
                self.counters.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// Answer a refused invitation with NO, at most [`MAX_REFUSALS_PER_SECOND`] a second.
    fn refuse(&mut self, now: Nanos, on: Port, to: SocketAddr, token: u32) {
        let second = now / SECOND;
        if self.refusals.0 != second {
            self.refusals = (second, 0);
        }
        if self.refusals.1 >= MAX_REFUSALS_PER_SECOND {
            self.counters.unanswered += 1;
            return;
        }
        self.refusals.1 += 1;
        let ssrc = self.random();
        let mut bytes = Vec::new();
        super::encode_into(
            &Command::Rejected(Exchange {
                token,
                ssrc,
                name: None,
            }),
            &mut bytes,
        );
        self.transmits.push_back(Transmit {
            from: on,
            to,
            bytes,
            due: None,
        });
        self.events.push_back(EndpointEvent::Refused(to));
    }

    /// Timers: invitations, CK, liveness, re-invitations.
    pub fn handle_timeout(&mut self, now: Nanos) {
        for i in 0..self.slots.len() {
            if let Some(session) = &mut self.slots[i].session {
                session.handle_timeout(now);
            }
            let due = self.slots[i].status.retry_at.is_some_and(|t| now >= t);
            let idle = self.slots[i]
                .session
                .as_ref()
                .is_none_or(|s| s.closed().is_some());
            if due && idle && self.slots[i].status.in_directory {
                let (token, ssrc, seq) = (self.random(), self.random(), self.random() as u16);
                let slot = &mut self.slots[i];
                slot.status.retry_at = None;
                let mut session =
                    Session::invite(now, &self.name, token, ssrc, seq, slot.status.address);
                session.set_journal(slot.status.journal);
                slot.session = Some(session);
            }
        }
        self.collect(now);
    }

    /// Move the sessions' datagrams and events out, update the status, schedule re-invites.
    fn collect(&mut self, now: Nanos) {
        for slot in &mut self.slots {
            let Some(session) = &mut slot.session else {
                continue;
            };
            while let Some(t) = session.poll_transmit() {
                if forward(&mut self.transmits, &mut self.counters, t) {
                    slot.status.sent += 1;
                }
            }
            slot.status.guards = session.journal().guards();
            slot.status.received = session.received();
            while let Some(event) = session.poll_event() {
                match event {
                    Event::Connected { name, .. } => {
                        slot.status.connected = true;
                        slot.status.connects += 1;
                        if name.is_some() {
                            slot.status.name = name;
                        }
                        slot.backoff = BACKOFF_MIN;
                        self.events
                            .push_back(EndpointEvent::Connected(slot.status.address));
                    }
                    Event::Latency(latency) => slot.status.latency = Some(latency),
                    Event::Closed(reason) => {
                        slot.status.connected = false;
                        slot.status.last_close = Some(reason);
                        if slot.status.in_directory && reason != CloseReason::Local {
                            slot.status.retry_at = Some(now + slot.backoff);
                            slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
                        }
                        self.events
                            .push_back(EndpointEvent::Disconnected(slot.status.address, reason));
                    }
                }
            }
        }
        // Guests whose session ended are forgotten.
        self.slots.retain(|s| {
            s.status.in_directory || s.session.as_ref().is_some_and(|x| x.closed().is_none())
        });
    }

    /// Send `commands` to every connected peer, the first at host time `at` (ns, our clock).
    pub fn send_midi(&mut self, at: Nanos, commands: &[TimedCommand]) {
        self.send_midi_where(at, commands, |_| true);
    }

    /// Send `commands` to the connected peer whose control address is `peer`.
    pub fn send_midi_to(&mut self, peer: SocketAddr, at: Nanos, commands: &[TimedCommand]) {
        self.send_midi_where(at, commands, |address| address == peer);
    }

    fn send_midi_where(
        &mut self,
        at: Nanos,
        commands: &[TimedCommand],
        to: impl Fn(SocketAddr) -> bool,
    ) {
        for slot in &mut self.slots {
            if !to(slot.status.address) {
                continue;
            }
            if let Some(session) = &mut slot.session
                && session.is_connected()
            {
                let ts = session.session_ticks(at);
                session.send_midi(at, ts, commands);
                while let Some(t) = session.poll_transmit() {
                    if forward(&mut self.transmits, &mut self.counters, t) {
                        slot.status.sent += 1;
                    }
                }
            }
        }
    }

    /// True while some session waits for a CK answer (see [`Session::awaiting_ck`]).
    pub fn awaiting_ck(&self, now: Nanos) -> bool {
        self.slots
            .iter()
            .any(|s| s.session.as_ref().is_some_and(|x| x.awaiting_ck(now)))
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    s.session.as_ref().and_then(Session::poll_timeout),
                    s.status.retry_at,
                ]
            })
            .flatten()
            .min()
    }
}
