//! A Link-compatible peer as a sans-IO state machine (digest §4.2–4.6): peer table with TTL
//! expiry, ALIVE every 250 ms and on change (at most every 50 ms), RESPONSE to ALIVE, BYEBYE;
//! PING answered with PONG; measurement of a foreign session (up to 100 samples, median);
//! election (join a session whose ghost clock is more than 500 ms older, or as old with a
//! smaller id); the timeline conflict rule (larger beat origin wins) and start/stop by
//! timestamp; the current session re-measured every 30 s (clocks of different machines
//! drift apart by tens of ppm: 30 µs a second); local changes preferred over the network's for
//! 1 s (a DAW's tempo ramp is not undone by an echo of an older state). Time is host
//! microseconds in, datagrams out.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::{
    Discovery, DiscoveryKind, Measurement, NodeId, PeerState, StartStop, TTL, Timeline,
    decode_discovery, decode_measurement, encode_discovery, encode_measurement, offset_samples,
};

/// Host time, microseconds.
pub type Micros = i64;

/// ALIVE period (TTL · 1000 / 20 ms).
pub const ALIVE_PERIOD: Micros = 250_000;
/// Changes are broadcast at once, but not more often than this.
pub const MIN_BROADCAST_GAP: Micros = 50_000;
/// A measurement ping is resent after this long without an answer…
pub const PING_TIMEOUT: Micros = 50_000;
/// …at most this many times over a measurement.
pub const PING_RESENDS: u32 = 5;
/// Samples that make a measurement.
pub const SAMPLES: usize = 100;
/// A session this much older (ghost time) wins the election.
pub const ELECTION_MARGIN: f64 = 500_000.0;
/// The session we are in is measured again this often (and a failed one retried as often).
pub const REMEASURE_PERIOD: Micros = 30_000_000;
/// After a local change, the network's timeline and start/stop state are not taken for this
/// long (Link's local-modification grace period).
pub const LOCAL_GRACE: Micros = 1_000_000;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The discovery multicast group (from the discovery socket).
    Multicast,
    /// One peer's discovery socket (a RESPONSE).
    Unicast(SocketAddr),
    /// From our measurement socket to this address (PING, PONG).
    Measurement(SocketAddr),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub to: Destination,
    /// What.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Peer {
    node: NodeId,
    state: PeerState,
    expires: Micros,
}

#[derive(Debug, Clone)]
struct Measuring {
    session: NodeId,
    endpoint: SocketAddr,
    timeline: Option<Timeline>,
    resends: u32,
    deadline: Micros,
    samples: Vec<f64>,
    /// When the last PONG arrived (the next PING's `_pgt` came from it).
    last_arrival: Option<Micros>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Messages for another session group.
    pub foreign_group: u64,
    /// Sessions joined.
    pub joins: u64,
    /// Measurements that failed (no answer, or the peer changed session).
    pub failed_measurements: u64,
    /// Re-measurements of the session we are in.
    pub remeasures: u64,
    /// Network timelines or start/stop states not taken in the grace period after a local
    /// change.
    pub held_by_grace: u64,
    /// ALIVEs / RESPONSEs with an impossible timeline (tempo outside 20–999 BPM, absurd
    /// origins): forged or broken, dropped before they touch any state.
    pub implausible: u64,
    /// New peers not taken because [`MAX_PEERS`] are known already.
    pub peers_refused: u64,
}

/// Most peers kept at once (a studio has a handful; a flood of forged node ids cannot grow
/// the table or the work per message past this).
pub const MAX_PEERS: usize = 64;

/// The peer.
#[derive(Debug)]
pub struct LinkCore {
    node: NodeId,
    session: NodeId,
    /// ghost = host + intercept.
    intercept: f64,
    timeline: Timeline,
    start_stop: StartStop,
    measurement_endpoint: SocketAddr,
    peers: Vec<Peer>,
    measuring: Option<Measuring>,
    next_alive: Micros,
    last_broadcast: Micros,
    pending_change: bool,
    transmits: VecDeque<Transmit>,
    counters: Counters,
    enabled: bool,
    /// When the session we are in is measured next (once joined).
    next_remeasure: Option<Micros>,
    /// When the timeline and the start/stop state were last changed locally.
    local_change: (Option<Micros>, Option<Micros>),
    /// The last re-measurement's correction of the ghost offset, µs.
    last_correction: f64,
}

impl LinkCore {
    /// A peer founding its own session at `now` with `tempo`, beat 0 now; measurement pings
    /// reach it at `measurement_endpoint`.
    pub fn new(now: Micros, node: NodeId, tempo: f64, measurement_endpoint: SocketAddr) -> Self {
        let mut core = Self {
            node,
            session: node,
            intercept: -(now as f64),
            timeline: Timeline {
                micros_per_beat: Timeline::micros_per_beat_for(tempo),
                beat_origin: 0,
                time_origin: 0,
            },
            start_stop: StartStop {
                playing: false,
                beats: 0,
                timestamp: 0,
            },
            measurement_endpoint,
            peers: Vec::new(),
            measuring: None,
            next_alive: now,
            last_broadcast: Micros::MIN / 2,
            pending_change: false,
            transmits: VecDeque::new(),
            counters: Counters::default(),
            enabled: true,
            next_remeasure: None,
            local_change: (None, None),
            last_correction: 0.0,
        };
        core.broadcast(now);
        core
    }

    /// Ghost time at host time `host`.
    pub fn ghost(&self, host: Micros) -> f64 {
        host as f64 + self.intercept
    }

    /// The session's beat at host time `host`.
    pub fn beats_at(&self, host: Micros) -> f64 {
        self.timeline.beats_at(self.ghost(host))
    }

    /// Session tempo.
    pub fn tempo(&self) -> f64 {
        self.timeline.bpm()
    }

    /// Session id.
    pub fn session(&self) -> NodeId {
        self.session
    }

    /// Start/stop state of the session.
    pub fn playing(&self) -> bool {
        self.start_stop.playing
    }

    /// Host time (µs) of the session's last start or stop.
    pub fn start_stop_time(&self) -> f64 {
        self.start_stop.timestamp as f64 - self.intercept
    }

    /// Host time (µs) at which the session's timeline reaches `beats`.
    pub fn host_at_beats(&self, beats: f64) -> f64 {
        self.timeline.ghost_at(beats) - self.intercept
    }

    /// How much the last re-measurement moved our ghost clock, µs (the drift between our
    /// clock and the session's over one period).
    pub fn last_correction(&self) -> f64 {
        self.last_correction
    }

    /// Peers heard and not expired (in any session).
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Peers in our session.
    pub fn session_peers(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| p.state.session == Some(self.session))
            .count()
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Change the tempo at `now`, keeping the beat continuous (the new timeline starts at the
    /// current beat, and its beat origin moves forward so it wins over older ones).
    pub fn set_tempo(&mut self, now: Micros, bpm: f64) {
        let ghost = self.ghost(now);
        let beat_now = (self.timeline.beats_at(ghost) * 1e6).round() as i64;
        self.timeline = Timeline {
            micros_per_beat: Timeline::micros_per_beat_for(bpm),
            beat_origin: beat_now.max(self.timeline.beat_origin + 1),
            time_origin: ghost.round() as i64,
        };
        self.changed_locally(now, true);
    }

    /// Make `beats` fall on host time `at` (the DAW leads: its beat, where the listener hears
    /// it), keeping the tempo. The new timeline's beat origin moves forward so peers take it
    /// (larger origin wins); the line still passes through (`at`, `beats`).
    pub fn force_beat(&mut self, now: Micros, beats: f64, at: Micros) {
        let mpb = self.timeline.micros_per_beat.max(1) as f64;
        let origin = ((self.beats_at(now) * 1e6).round() as i64).max(self.timeline.beat_origin + 1);
        let time_origin = self.ghost(at) - (beats - origin as f64 / 1e6) * mpb;
        self.timeline = Timeline {
            micros_per_beat: self.timeline.micros_per_beat,
            beat_origin: origin,
            time_origin: time_origin.round() as i64,
        };
        self.changed_locally(now, true);
    }

    /// Take a whole timeline at `now` as one change (one broadcast): `bpm`, with `beats`
    /// falling on host time `at`, and the start/stop state if it differs. A remote studio's
    /// grid arrives this way; separate calls would send the tempo without its phase first
    /// and the phase a broadcast gap (50 ms) later.
    pub fn take_timeline(&mut self, now: Micros, bpm: f64, beats: f64, at: Micros, playing: bool) {
        let mpb = Timeline::micros_per_beat_for(bpm);
        let origin = ((self.beats_at(now) * 1e6).round() as i64).max(self.timeline.beat_origin + 1);
        let time_origin = self.ghost(at) - (beats - origin as f64 / 1e6) * mpb as f64;
        self.timeline = Timeline {
            micros_per_beat: mpb,
            beat_origin: origin,
            time_origin: time_origin.round() as i64,
        };
        self.local_change.0 = Some(now);
        if playing != self.start_stop.playing {
            let ghost = self.ghost(now).round() as i64;
            self.start_stop = StartStop {
                playing,
                beats: (self.beats_at(now) * 1e6).round() as i64,
                timestamp: ghost.max(self.start_stop.timestamp + 1),
            };
            self.local_change.1 = Some(now);
        }
        self.changed(now);
    }

    /// Start or stop the session at `now`.
    pub fn set_playing(&mut self, now: Micros, playing: bool) {
        let ghost = self.ghost(now).round() as i64;
        self.start_stop = StartStop {
            playing,
            beats: (self.beats_at(now) * 1e6).round() as i64,
            timestamp: ghost.max(self.start_stop.timestamp + 1),
        };
        self.changed_locally(now, false);
    }

    /// Leave: BYEBYE, and nothing more until dropped.
    pub fn leave(&mut self) {
        if !self.enabled {
            return;
        }
        self.enabled = false;
        let mut bytes = Vec::new();
        let bye = Discovery {
            kind: DiscoveryKind::ByeBye,
            ttl: 0,
            group: 0,
            node: self.node,
            state: PeerState::default(),
        };
        if encode_discovery(&bye, &mut bytes).is_ok() {
            self.transmits.push_back(Transmit {
                to: Destination::Multicast,
                bytes,
            });
        }
    }

    fn state(&self) -> PeerState {
        PeerState {
            timeline: Some(self.timeline),
            session: Some(self.session),
            start_stop: Some(self.start_stop),
            measurement: Some(self.measurement_endpoint),
        }
    }

    fn message(&self, kind: DiscoveryKind) -> Vec<u8> {
        let mut bytes = Vec::new();
        let _ = encode_discovery(
            &Discovery {
                kind,
                ttl: TTL,
                group: 0,
                node: self.node,
                state: self.state(),
            },
            &mut bytes,
        );
        bytes
    }

    fn broadcast(&mut self, now: Micros) {
        let bytes = self.message(DiscoveryKind::Alive);
        self.transmits.push_back(Transmit {
            to: Destination::Multicast,
            bytes,
        });
        self.last_broadcast = now;
        self.next_alive = now + ALIVE_PERIOD;
        self.pending_change = false;
    }

    /// A local change of the timeline (`timeline`) or the start/stop state.
    fn changed_locally(&mut self, now: Micros, timeline: bool) {
        if timeline {
            self.local_change.0 = Some(now);
        } else {
            self.local_change.1 = Some(now);
        }
        self.changed(now);
    }

    fn changed(&mut self, now: Micros) {
        if now >= self.last_broadcast + MIN_BROADCAST_GAP {
            self.broadcast(now);
        } else {
            self.pending_change = true;
        }
    }

    /// A datagram on the discovery socket from `from`.
    pub fn handle_discovery(&mut self, now: Micros, from: SocketAddr, bytes: &[u8]) {
        if !self.enabled {
            return;
        }
        let message = match decode_discovery(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        if message.node == self.node {
            return;
        }
        if message.group != 0 {
            self.counters.foreign_group += 1;
            return;
        }
        match message.kind {
            DiscoveryKind::ByeBye => {
                self.peers.retain(|p| p.node != message.node);
            }
            DiscoveryKind::Alive | DiscoveryKind::Response => {
                if message.state.timeline.is_some_and(|t| !t.is_plausible()) {
                    self.counters.implausible += 1;
                    return;
                }
                let known = self.peers.iter().any(|p| p.node == message.node);
                if !known && self.peers.len() >= MAX_PEERS {
                    // Known peers keep their place; a new one waits until one leaves.
                    self.counters.peers_refused += 1;
                    return;
                }
                if message.kind == DiscoveryKind::Alive {
                    let bytes = self.message(DiscoveryKind::Response);
                    self.transmits.push_back(Transmit {
                        to: Destination::Unicast(from),
                        bytes,
                    });
                }
                let expires = now + i64::from(message.ttl) * 1_000_000 + 1_000_000;
                match self.peers.iter_mut().find(|p| p.node == message.node) {
                    Some(p) => {
                        p.state = message.state;
                        p.expires = expires;
                    }
                    None => self.peers.push(Peer {
                        node: message.node,
                        state: message.state,
                        expires,
                    }),
                }
                self.absorb(now, &message);
            }
        }
    }

    /// A peer's state: timeline and start/stop of our session, or a session to measure.
    fn absorb(&mut self, now: Micros, m: &Discovery) {
        let Some(session) = m.state.session else {
            return;
        };
        if session == self.session {
            let newer_timeline = m
                .state
                .timeline
                .filter(|t| t.beat_origin > self.timeline.beat_origin);
            let newer_start_stop = m
                .state
                .start_stop
                .filter(|s| s.timestamp > self.start_stop.timestamp);
            // Ours was changed a moment ago: keep it (and keep saying it); the network's
            // state is looked at again with the peer's next message.
            let grace = |t: Option<Micros>| t.is_some_and(|t| now < t + LOCAL_GRACE);
            if let Some(t) = newer_timeline {
                if grace(self.local_change.0) {
                    self.counters.held_by_grace += 1;
                } else {
                    self.timeline = t;
                }
            }
            if let Some(s) = newer_start_stop {
                if grace(self.local_change.1) {
                    self.counters.held_by_grace += 1;
                } else {
                    self.start_stop = s;
                }
            }
            return;
        }
        if self.measuring.is_some() {
            return;
        }
        // Prefer measuring the founder of that session (its node id is the session id).
        let founder = self
            .peers
            .iter()
            .find(|p| p.node == session && p.state.session == Some(session))
            .and_then(|p| p.state.measurement);
        let Some(endpoint) = founder.or(m.state.measurement) else {
            return;
        };
        self.measuring = Some(Measuring {
            session,
            endpoint,
            timeline: m.state.timeline,
            resends: 0,
            deadline: now + PING_TIMEOUT,
            samples: Vec::new(),
            last_arrival: None,
        });
        self.ping(now, None);
    }

    fn ping(&mut self, now: Micros, prev_ghost: Option<i64>) {
        let Some(measuring) = &self.measuring else {
            return;
        };
        let mut bytes = Vec::new();
        encode_measurement(
            &Measurement::Ping {
                host_time: now,
                prev_ghost,
            },
            &mut bytes,
        );
        self.transmits.push_back(Transmit {
            to: Destination::Measurement(measuring.endpoint),
            bytes,
        });
    }

    /// A datagram on the measurement socket from `from`, handled as it arrives.
    pub fn handle_measurement(&mut self, now: Micros, from: SocketAddr, bytes: &[u8]) {
        self.handle_measurement_at(now, now, from, bytes);
    }

    /// A datagram on the measurement socket from `from` that arrived at `arrived` (the
    /// kernel's receive time) and is handled at `now`. The measurement is unbiased by the
    /// wait: a PONG's arrival time is the round trip's end, and our PONG to a PING carries
    /// our ghost time at the middle of the wait (the measurer takes the middle of its round
    /// trip, which the wait lengthens by the same amount).
    pub fn handle_measurement_at(
        &mut self,
        now: Micros,
        arrived: Micros,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let arrived = arrived.min(now);
        if !self.enabled {
            return;
        }
        match decode_measurement(bytes) {
            Ok(Measurement::Ping {
                host_time,
                prev_ghost,
            }) => {
                let mut out = Vec::new();
                let middle = arrived + (now - arrived) / 2;
                encode_measurement(
                    &Measurement::Pong {
                        session: self.session,
                        ghost_time: self.ghost(middle).round() as i64,
                        host_time: Some(host_time),
                        prev_ghost,
                    },
                    &mut out,
                );
                self.transmits.push_back(Transmit {
                    to: Destination::Measurement(from),
                    bytes: out,
                });
            }
            Ok(Measurement::Pong {
                session,
                ghost_time,
                host_time,
                prev_ghost,
            }) => self.handle_pong(now, arrived, session, ghost_time, host_time, prev_ghost),
            Err(_) => self.counters.malformed += 1,
        }
    }

    fn handle_pong(
        &mut self,
        now: Micros,
        arrived: Micros,
        session: NodeId,
        ghost: i64,
        host_time: Option<i64>,
        prev_ghost: Option<i64>,
    ) {
        let Some(measuring) = &mut self.measuring else {
            return;
        };
        if session != measuring.session {
            self.counters.failed_measurements += 1;
            self.measuring = None;
            return;
        }
        let Some(h1) = host_time else {
            return;
        };
        let (a, b) = offset_samples(h1, ghost, arrived, prev_ghost, measuring.last_arrival);
        measuring.last_arrival = Some(arrived);
        measuring.samples.push(a);
        measuring.samples.extend(b);
        measuring.deadline = now + PING_TIMEOUT;
        if measuring.samples.len() > SAMPLES {
            let mut samples = std::mem::take(&mut measuring.samples);
            samples.sort_by(f64::total_cmp);
            let median = samples[samples.len() / 2];
            let done = self.measuring.take().expect("measuring");
            self.elect(now, &done, median);
        } else {
            self.ping(now, Some(ghost));
        }
    }

    /// A measurement of `m.session` says its ghost time is host + `intercept`: join it if it
    /// is older than ours, or as old and with a smaller id.
    fn elect(&mut self, now: Micros, m: &Measuring, intercept: f64) {
        if m.session == self.session {
            // A re-measurement of our own session: follow its clock, nothing else changes.
            if self.session != self.node {
                self.last_correction = intercept - self.intercept;
                self.intercept = intercept;
                self.counters.remeasures += 1;
            }
            return;
        }
        let theirs = now as f64 + intercept;
        let ours = self.ghost(now);
        let join = theirs - ours > ELECTION_MARGIN
            || ((theirs - ours).abs() < ELECTION_MARGIN && m.session < self.session);
        if !join {
            return;
        }
        let timeline = self
            .peers
            .iter()
            .filter(|p| p.state.session == Some(m.session))
            .filter_map(|p| p.state.timeline)
            .max_by_key(|t| t.beat_origin)
            .or(m.timeline);
        self.session = m.session;
        self.intercept = intercept;
        if let Some(t) = timeline {
            self.timeline = t;
        }
        self.start_stop = StartStop {
            playing: false,
            beats: 0,
            timestamp: 0,
        };
        // The session's own start/stop state, if its peers told it.
        if let Some(s) = self
            .peers
            .iter()
            .filter(|p| p.state.session == Some(m.session))
            .filter_map(|p| p.state.start_stop)
            .max_by_key(|s| s.timestamp)
        {
            self.start_stop = s;
        }
        self.counters.joins += 1;
        self.next_remeasure = Some(now + REMEASURE_PERIOD);
        self.changed(now);
    }

    /// Timers: ALIVE, a pending change, ping resends, peer expiry.
    pub fn handle_timeout(&mut self, now: Micros) {
        if !self.enabled {
            return;
        }
        self.peers.retain(|p| now < p.expires);
        if now >= self.next_alive
            || (self.pending_change && now >= self.last_broadcast + MIN_BROADCAST_GAP)
        {
            self.broadcast(now);
        }
        let resend = match &mut self.measuring {
            Some(m) if now >= m.deadline => {
                if m.resends >= PING_RESENDS {
                    self.measuring = None;
                    self.counters.failed_measurements += 1;
                    false
                } else {
                    m.resends += 1;
                    m.deadline = now + PING_TIMEOUT;
                    true
                }
            }
            _ => false,
        };
        if resend {
            self.ping(now, None);
        }
        if self.measuring.is_none() && self.next_remeasure.is_some_and(|t| now >= t) {
            self.remeasure(now);
        }
    }

    /// Measure the session we are in again (its founder if present, else any member).
    fn remeasure(&mut self, now: Micros) {
        self.next_remeasure = Some(now + REMEASURE_PERIOD);
        let session = self.session;
        let members = || {
            self.peers
                .iter()
                .filter(move |p| p.state.session == Some(session))
        };
        let endpoint = members()
            .find(|p| p.node == session)
            .or_else(|| members().next())
            .and_then(|p| p.state.measurement);
        let Some(endpoint) = endpoint else {
            return;
        };
        self.measuring = Some(Measuring {
            session,
            endpoint,
            timeline: None,
            resends: 0,
            deadline: now + PING_TIMEOUT,
            samples: Vec::new(),
            last_arrival: None,
        });
        self.ping(now, None);
    }

    /// When [`LinkCore::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Micros> {
        if !self.enabled {
            return None;
        }
        let mut t = self.next_alive;
        if self.pending_change {
            t = t.min(self.last_broadcast + MIN_BROADCAST_GAP);
        }
        if let Some(m) = &self.measuring {
            t = t.min(m.deadline);
        } else if let Some(r) = self.next_remeasure {
            t = t.min(r);
        }
        if let Some(e) = self.peers.iter().map(|p| p.expires).min() {
            t = t.min(e);
        }
        Some(t)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Micros = 1_000;
    const S: Micros = 1_000_000;

    /// Two or more cores on one host clock, a network with a fixed delay and some loss.
    struct Net {
        now: Micros,
        cores: Vec<LinkCore>,
        /// (deliver at, to core, measurement socket?, from core, bytes)
        flights: Vec<(Micros, usize, bool, usize, Vec<u8>)>,
        delay: Micros,
        loss_every: usize,
        sent: usize,
        down: Vec<bool>,
        /// Each core's clock rate error, parts per million (its host clock runs that much
        /// fast against the network's).
        ppm: Vec<f64>,
        /// How long a measurement datagram waits in the socket before the core reads it
        /// (a worker that polls every millisecond) at core `lagging`; the core is told when
        /// it arrived.
        lag: Micros,
        lagging: usize,
    }

    /// Where the cores' clocks agree.
    const BASE: Micros = 1_000 * S;

    fn disc(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 30_000 + i as u16))
    }

    fn meas(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 31_000 + i as u16))
    }

    impl Net {
        fn add(&mut self, tempo: f64, id: u8) {
            let i = self.cores.len();
            self.ppm.push(0.0);
            let now = self.local(i);
            self.cores.push(LinkCore::new(now, [id; 8], tempo, meas(i)));
            self.down.push(false);
        }

        /// Core `i`'s host time now.
        fn local(&self, i: usize) -> Micros {
            self.now + ((self.now - BASE) as f64 * self.ppm[i] / 1e6).round() as Micros
        }

        /// The network's time when core `i`'s clock reads `t`.
        fn global(&self, i: usize, t: Micros) -> Micros {
            BASE + ((t - BASE) as f64 / (1.0 + self.ppm[i] / 1e6)).round() as Micros
        }

        fn pump(&mut self) {
            for i in 0..self.cores.len() {
                while let Some(t) = self.cores[i].poll_transmit() {
                    self.sent += 1;
                    if self.down[i]
                        || (self.loss_every > 0 && self.sent.is_multiple_of(self.loss_every))
                    {
                        continue;
                    }
                    let at = self.now + self.delay;
                    match t.to {
                        Destination::Multicast => {
                            for j in 0..self.cores.len() {
                                if j != i {
                                    self.flights.push((at, j, false, i, t.bytes.clone()));
                                }
                            }
                        }
                        Destination::Unicast(a) => {
                            let j = (a.port() - 30_000) as usize;
                            self.flights.push((at, j, false, i, t.bytes));
                        }
                        Destination::Measurement(a) => {
                            // Pings go to a measurement socket; pongs back to the pinger's.
                            let j = (a.port() - 31_000) as usize;
                            self.flights.push((at, j, true, i, t.bytes));
                        }
                    }
                }
            }
        }

        fn run(&mut self, until: Micros) {
            while self.now < until {
                self.pump();
                let next_flight = self.flights.iter().map(|f| f.0).min();
                let next_timer = (0..self.cores.len())
                    .filter_map(|i| Some(self.global(i, self.cores[i].poll_timeout()?)))
                    .min();
                let next = [next_flight, next_timer, Some(until)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(until);
                self.now = next.max(self.now);
                let due: Vec<_> = {
                    let (due, rest): (Vec<_>, Vec<_>) =
                        self.flights.drain(..).partition(|f| f.0 <= self.now);
                    self.flights = rest;
                    due
                };
                for (_, to, measurement, from, bytes) in due {
                    if self.down[to] {
                        continue;
                    }
                    let now = self.local(to);
                    if measurement && self.lag > 0 && to == self.lagging {
                        let core = &mut self.cores[to];
                        core.handle_measurement_at(now + self.lag, now, meas(from), &bytes);
                        // What it answers leaves after the wait.
                        while let Some(t) = self.cores[to].poll_transmit() {
                            if let Destination::Measurement(a) = t.to {
                                let j = (a.port() - 31_000) as usize;
                                let at = self.now + self.lag + self.delay;
                                self.flights.push((at, j, true, to, t.bytes));
                            }
                        }
                    } else if measurement {
                        self.cores[to].handle_measurement(now, meas(from), &bytes);
                    } else {
                        self.cores[to].handle_discovery(now, disc(from), &bytes);
                    }
                }
                for i in 0..self.cores.len() {
                    let now = self.local(i);
                    self.cores[i].handle_timeout(now);
                }
            }
            self.pump();
        }
    }

    fn net(delay: Micros, loss_every: usize) -> Net {
        Net {
            now: 1_000 * S,
            cores: Vec::new(),
            flights: Vec::new(),
            delay,
            loss_every,
            sent: 0,
            down: Vec::new(),
            ppm: Vec::new(),
            lag: 0,
            lagging: 0,
        }
    }

    /// Forged ALIVEs: our own session id with an impossible tempo or origin never move the
    /// session; a flood of new node ids stops at MAX_PEERS (known peers keep their place).
    #[test]
    fn impossible_timelines_are_dropped_and_peers_are_capped() {
        let now = BASE;
        let mut core = LinkCore::new(now, [1; 8], 120.0, meas(0));
        let session = core.session();
        let forged = |node: u8, micros_per_beat: i64, origin: i64| {
            let m = Discovery {
                kind: DiscoveryKind::Alive,
                ttl: 5,
                group: 0,
                node: [node, 0, 0, 0, 0, 0, 0, 9],
                state: PeerState {
                    timeline: Some(Timeline {
                        micros_per_beat,
                        beat_origin: origin,
                        time_origin: 0,
                    }),
                    session: Some(session),
                    start_stop: None,
                    measurement: Some(meas(1)),
                },
            };
            let mut bytes = Vec::new();
            crate::proto::link::encode_discovery(&m, &mut bytes).expect("encodes");
            bytes
        };
        for (i, (mpb, origin)) in [
            (1, 1 << 40),
            (-5, 1 << 40),
            (i64::MAX, 1 << 40),
            (500_000, -4_600_000_000_000_000_000),
        ]
        .into_iter()
        .enumerate()
        {
            core.handle_discovery(now, disc(1), &forged(i as u8, mpb, origin));
        }
        assert_eq!(core.counters().implausible, 4);
        assert!((core.tempo() - 120.0).abs() < 1e-9, "{}", core.tempo());
        assert_eq!(core.session_peers(), 0);
        // 200 new node ids with a sane timeline: 64 kept, the rest refused and counted.
        for i in 0..200u16 {
            let mut bytes = forged(0, 500_000, 1 << 40);
            // A distinct node id per message (bytes 8..16 of the header hold it).
            let id = 1_000 + u32::from(i);
            let m = crate::proto::link::decode_discovery(&bytes).expect("decodes");
            let m = Discovery {
                node: [
                    0,
                    0,
                    0,
                    0,
                    (id >> 24) as u8,
                    (id >> 16) as u8,
                    (id >> 8) as u8,
                    id as u8,
                ],
                ..m
            };
            bytes.clear();
            crate::proto::link::encode_discovery(&m, &mut bytes).expect("encodes");
            core.handle_discovery(now, disc(2), &bytes);
        }
        assert_eq!(core.counters().peers_refused, 200 - MAX_PEERS as u64);
        assert!(core.session_peers() <= MAX_PEERS);
    }

    #[test]
    fn a_newcomer_joins_the_older_session_and_its_beat_grid() {
        // 2 % loss: a measurement tolerates 5 lost pings (as Link does); a failed one is retried
        // when the peer is heard again.
        for loss_every in [0, 50] {
            let mut n = net(2 * MS, loss_every);
            n.add(120.0, 9);
            n.run(n.now + 10 * S);
            n.cores[0].set_playing(n.now, true);
            n.add(90.0, 1); // a smaller id, but a much younger session
            n.run(n.now + 2 * S);
            let (a, b) = (&n.cores[0], &n.cores[1]);
            assert_eq!(b.session(), a.session(), "loss 1/{loss_every}");
            assert_eq!(b.counters().joins, 1);
            assert!((b.tempo() - 120.0).abs() < 1e-9);
            assert!(b.playing(), "the session's start/stop state came along");
            // Same beat at the same host time: the measured offset is exact here up to the
            // symmetric delay.
            let (ba, bb) = (a.beats_at(n.now), b.beats_at(n.now));
            assert!((ba - bb).abs() < 0.001, "{ba} vs {bb}");
            assert_eq!(a.session_peers(), 1);
        }
    }

    #[test]
    fn tempo_changes_and_start_stop_propagate_inside_the_session() {
        let mut n = net(2 * MS, 0);
        n.add(120.0, 5);
        n.run(n.now + 3 * S);
        n.add(100.0, 6);
        n.run(n.now + 2 * S);
        assert_eq!(n.cores[1].session(), n.cores[0].session());
        let now = n.now;
        n.cores[1].set_tempo(now, 140.0);
        n.run(now + 300 * MS);
        assert!((n.cores[0].tempo() - 140.0).abs() < 1e-3);
        let (a, b) = (n.cores[0].beats_at(n.now), n.cores[1].beats_at(n.now));
        assert!((a - b).abs() < 0.001, "{a} vs {b}");
        let now = n.now;
        n.cores[0].set_playing(now, true);
        n.run(now + 300 * MS);
        assert!(n.cores[1].playing());
    }

    #[test]
    fn equal_age_sessions_elect_the_smaller_id_and_peers_expire() {
        let mut n = net(MS, 0);
        n.add(120.0, 7);
        n.add(130.0, 3);
        n.run(n.now + 3 * S);
        assert_eq!(n.cores[0].session(), [3; 8]);
        assert_eq!(n.cores[1].session(), [3; 8]);
        // 130 BPM is 461538 µs per beat on the wire: 130.00003 BPM.
        assert!((n.cores[0].tempo() - 130.0).abs() < 1e-3);
        // One goes silent (no BYEBYE): gone after TTL + 1 s.
        n.down[1] = true;
        n.run(n.now + 7 * S);
        assert_eq!(n.cores[0].peers(), 0);
        // BYEBYE drops a peer at once.
        n.down[1] = false;
        n.run(n.now + S);
        assert_eq!(n.cores[0].peers(), 1);
        n.cores[1].leave();
        n.run(n.now + 10 * MS);
        assert_eq!(n.cores[0].peers(), 0);
    }

    #[test]
    fn a_whole_timeline_goes_out_in_one_broadcast_and_reaches_the_session() {
        let mut n = net(2 * MS, 0);
        n.add(120.0, 5);
        n.add(120.0, 6);
        n.run(n.now + 3 * S);
        assert_eq!(n.cores[0].session(), n.cores[1].session());
        while n.cores[1].poll_transmit().is_some() {}
        // Past the broadcast gap, well before the next periodic ALIVE.
        let now = n.cores[1].last_broadcast + MIN_BROADCAST_GAP;
        let at = now + 10 * MS;
        n.cores[1].take_timeline(now, 97.5, 41.75, at, true);
        assert!((n.cores[1].beats_at(at) - 41.75).abs() < 1e-5);
        assert!(n.cores[1].playing());
        // Tempo, phase and start in one datagram, not one per part (at once, or when the
        // broadcast gap after the last ALIVE has passed).
        n.cores[1].handle_timeout(now + MIN_BROADCAST_GAP);
        let mut alives = 0;
        while let Some(t) = n.cores[1].poll_transmit() {
            assert_eq!(t.to, Destination::Multicast);
            alives += 1;
        }
        assert_eq!(alives, 1);
        assert!(!n.cores[1].pending_change);
        n.run(n.now + 300 * MS);
        assert!((n.cores[0].tempo() - 97.5).abs() < 0.001);
        assert!((n.cores[0].beats_at(at) - 41.75).abs() < 0.001);
        assert!(n.cores[0].playing());
    }

    #[test]
    fn a_forced_beat_lands_where_asked_and_reaches_the_session() {
        let mut n = net(2 * MS, 0);
        n.add(120.0, 5);
        n.add(120.0, 6);
        n.run(n.now + 3 * S);
        assert_eq!(n.cores[0].session(), n.cores[1].session());
        let now = n.now;
        let at = now + 40 * MS;
        n.cores[1].force_beat(now, 33.25, at);
        assert!((n.cores[1].beats_at(at) - 33.25).abs() < 1e-6);
        n.run(now + 300 * MS);
        // The other peer took the new grid: the same beat at the same host time.
        assert!((n.cores[0].beats_at(at) - 33.25).abs() < 0.001);
        assert!((n.cores[0].tempo() - 120.0).abs() < 1e-9);
    }

    #[test]
    fn the_session_is_remeasured_so_drifting_clocks_stay_in_phase() {
        // The newcomer's clock runs 40 ppm fast: 40 µs a second apart. Without a new
        // measurement the two would be 4.8 ms apart after two minutes; measured every 30 s,
        // never more than 30 s of drift (1.2 ms) plus the measurement's own error.
        let mut n = net(2 * MS, 0);
        n.add(120.0, 5);
        n.run(n.now + 3 * S);
        n.add(120.0, 6);
        n.ppm[1] = 40.0;
        n.run(n.now + 2 * S);
        assert_eq!(n.cores[1].session(), n.cores[0].session());
        let mut worst: f64 = 0.0;
        for _ in 0..120 {
            n.run(n.now + S);
            let (a, b) = (n.local(0), n.local(1));
            let gap = (n.cores[0].beats_at(a) - n.cores[1].beats_at(b)).abs() * 500.0;
            worst = worst.max(gap);
        }
        let c = n.cores[1].counters();
        assert!(c.remeasures >= 3, "{c:?}");
        assert!(worst < 1.4, "worst phase gap {worst} ms");
        // The last correction undid about 30 s of 40 ppm drift.
        let correction = n.cores[1].last_correction();
        assert!((correction + 1_200.0).abs() < 100.0, "{correction}");
        // The founder has nobody to measure: it keeps its clock.
        assert_eq!(n.cores[0].counters().remeasures, 0);
    }

    #[test]
    fn reading_the_measurement_socket_late_does_not_bias_the_offset() {
        // Every pong sits 900 µs in the joiner's socket before it is read (the founder
        // answers at once, as Link does): the measurement uses the arrival time, so the
        // joiner's beat still matches the founder's (using the read time would put it about
        // half the wait, 450 µs, off). The founder measuring a lagging peer is the mirror
        // case: the lagging peer's pong carries the middle of its wait.
        let mut n = net(2 * MS, 0);
        n.lag = 900;
        n.lagging = 1;
        n.add(120.0, 5);
        n.run(n.now + 3 * S);
        n.add(120.0, 6);
        n.run(n.now + 2 * S);
        assert_eq!(n.cores[1].session(), n.cores[0].session());
        let now = n.now;
        let gap_us = (n.cores[0].beats_at(now) - n.cores[1].beats_at(now)).abs() * 5e5;
        assert!(gap_us < 20.0, "{gap_us} µs apart");
        // Mirror: the lagging peer is the founder, measured by a newcomer.
        let mut n = net(2 * MS, 0);
        n.lag = 900;
        n.lagging = 0;
        n.add(120.0, 5);
        n.run(n.now + 3 * S);
        n.add(120.0, 6);
        n.run(n.now + 2 * S);
        assert_eq!(n.cores[1].session(), n.cores[0].session());
        let now = n.now;
        let gap_us = (n.cores[0].beats_at(now) - n.cores[1].beats_at(now)).abs() * 5e5;
        assert!(gap_us < 20.0, "mirror: {gap_us} µs apart");
    }

    #[test]
    fn a_local_change_is_kept_for_the_grace_period() {
        let mut n = net(2 * MS, 0);
        n.add(120.0, 5);
        n.add(120.0, 6);
        n.run(n.now + 3 * S);
        // Both change the tempo at once; core 0's change has the larger beat origin (it was
        // made a moment later), so the session settles on it, but core 1 holds its own for
        // the grace period first.
        let now = n.now;
        n.cores[1].set_tempo(now, 100.0);
        let later = now + 10;
        n.cores[0].set_tempo(later, 140.0);
        n.run(now + 500 * MS);
        assert!((n.cores[1].tempo() - 100.0).abs() < 1e-3, "held");
        assert!(n.cores[1].counters().held_by_grace > 0);
        n.run(now + 2 * S);
        assert!((n.cores[0].tempo() - n.cores[1].tempo()).abs() < 1e-3);
    }

    #[test]
    fn garbage_and_foreign_groups_are_counted() {
        let mut core = LinkCore::new(0, [1; 8], 120.0, meas(0));
        core.handle_discovery(0, disc(1), b"nonsense");
        let mut other = Vec::new();
        encode_discovery(
            &Discovery {
                kind: DiscoveryKind::Alive,
                ttl: TTL,
                group: 7,
                node: [2; 8],
                state: PeerState::default(),
            },
            &mut other,
        )
        .expect("fits");
        core.handle_discovery(0, disc(1), &other);
        core.handle_measurement(0, meas(1), b"_link_v\x01\x09");
        let c = core.counters();
        assert_eq!((c.malformed, c.foreign_group), (2, 1));
        assert_eq!(core.peers(), 0);
    }
}
