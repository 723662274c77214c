//! A Link-compatible peer as a sans-IO state machine (digest §4.2–4.6): peer table with TTL
//! expiry, ALIVE every 250 ms and on change (at most every 50 ms), RESPONSE to ALIVE, BYEBYE;
//! PING answered with PONG; measurement of a foreign session (up to 100 samples, median);
//! election (join a session whose ghost clock is more than 500 ms older, or as old with a
//! smaller id); the timeline conflict rule (larger beat origin wins) and start/stop by
//! timestamp. Time is host microseconds in, datagrams out.
//!
//! First cut of the Link issue's session core: the worker driver, interface selection, the
//! 30 s re-measurement of the current session and the DAW roles are the next steps.

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
}

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
        self.changed(now);
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
        self.changed(now);
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
            if let Some(t) = m.state.timeline
                && t.beat_origin > self.timeline.beat_origin
            {
                self.timeline = t;
            }
            if let Some(s) = m.state.start_stop
                && s.timestamp > self.start_stop.timestamp
            {
                self.start_stop = s;
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

    /// A datagram on the measurement socket from `from`.
    pub fn handle_measurement(&mut self, now: Micros, from: SocketAddr, bytes: &[u8]) {
        if !self.enabled {
            return;
        }
        match decode_measurement(bytes) {
            Ok(Measurement::Ping {
                host_time,
                prev_ghost,
            }) => {
                let mut out = Vec::new();
                encode_measurement(
                    &Measurement::Pong {
                        session: self.session,
                        ghost_time: self.ghost(now).round() as i64,
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
            }) => self.handle_pong(now, session, ghost_time, host_time, prev_ghost),
            Err(_) => self.counters.malformed += 1,
        }
    }

    fn handle_pong(
        &mut self,
        now: Micros,
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
        let (a, b) = offset_samples(h1, ghost, now, prev_ghost);
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
    }

    fn disc(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 30_000 + i as u16))
    }

    fn meas(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 31_000 + i as u16))
    }

    impl Net {
        fn add(&mut self, tempo: f64, id: u8) {
            let i = self.cores.len();
            self.cores
                .push(LinkCore::new(self.now, [id; 8], tempo, meas(i)));
            self.down.push(false);
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
                let next_timer = self.cores.iter().filter_map(LinkCore::poll_timeout).min();
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
                    if measurement {
                        self.cores[to].handle_measurement(self.now, meas(from), &bytes);
                    } else {
                        self.cores[to].handle_discovery(self.now, disc(from), &bytes);
                    }
                }
                for c in &mut self.cores {
                    c.handle_timeout(self.now);
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
        }
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
