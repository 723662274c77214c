//! A simulated network for the AppleMIDI cores: two endpoints on a virtual clock, with
//! configurable delay, jitter (which reorders), loss, duplication and partitions. Test-only.

#![cfg(test)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use super::endpoint::{
    Access, DEFAULT_MAX_GUESTS, Endpoint, EndpointEvent, MAX_GUESTS_PER_ADDRESS, MAX_HALF_OPEN,
    MAX_NEW_GUESTS_PER_SECOND, MAX_REFUSALS_PER_SECOND,
};
use super::session::{CloseReason, Nanos, Port, Transmit};

pub(crate) const MS: Nanos = 1_000_000;
pub(crate) const SECOND: Nanos = 1_000_000_000;

/// Network conditions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conditions {
    pub delay: Nanos,
    pub jitter: Nanos,
    pub loss: f64,
    pub duplicate: f64,
}

pub(crate) const CLEAN: Conditions = Conditions {
    delay: 5 * MS,
    jitter: 0,
    loss: 0.0,
    duplicate: 0.0,
};

/// In flight: (deliver at, sequence for stable order, to endpoint, port, from, bytes).
type Flight = Reverse<(Nanos, u64, usize, bool, SocketAddr, Vec<u8>)>;

pub(crate) struct Net {
    pub now: Nanos,
    pub endpoints: Vec<Endpoint>,
    pub addrs: Vec<SocketAddr>,
    pub conditions: Conditions,
    /// Drop everything while now is in this range.
    pub partition: Option<(Nanos, Nanos)>,
    pub events: Vec<Vec<EndpointEvent>>,
    /// Extra one-way delay for traffic to or from an endpoint (a slow peer).
    pub extra_delay: Vec<Nanos>,
    /// Endpoints whose traffic is all dropped (a dead peer).
    pub dead: Vec<bool>,
    flights: BinaryHeap<Flight>,
    seq: u64,
    rng: u64,
    pub delivered: u64,
}

impl Net {
    /// A (port 5004) invites B (port 6004); B accepts anyone.
    pub fn new(conditions: Conditions, seed: u64) -> Self {
        Self::with_peers(conditions, seed, 1)
    }

    /// Endpoint 0 ("Lockstep A", port 5004) and `peers` responders on ports 6004, 6006, ….
    pub fn with_peers(conditions: Conditions, seed: u64, peers: usize) -> Self {
        let mut endpoints = vec![Endpoint::new("Lockstep A", Access::Anyone, seed ^ 0xA)];
        let mut addrs: Vec<SocketAddr> = vec![SocketAddr::from(([127, 0, 0, 1], 5004))];
        for i in 0..peers {
            let name = if i == 0 {
                "Peer B".to_owned()
            } else {
                format!("Peer {i}")
            };
            endpoints.push(Endpoint::new(
                &name,
                Access::Anyone,
                seed ^ (0xB + i as u64),
            ));
            addrs.push(SocketAddr::from(([127, 0, 0, 1], 6004 + 2 * i as u16)));
        }
        let n = endpoints.len();
        Self {
            now: 1_000 * SECOND,
            endpoints,
            addrs,
            conditions,
            partition: None,
            events: vec![Vec::new(); n],
            extra_delay: vec![0; n],
            dead: vec![false; n],
            flights: BinaryHeap::new(),
            seq: 0,
            rng: seed | 1,
            delivered: 0,
        }
    }

    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn port_addr(&self, i: usize, port: Port) -> SocketAddr {
        let a = self.addrs[i];
        match port {
            Port::Control => a,
            Port::Data => SocketAddr::new(a.ip(), a.port() + 1),
        }
    }

    /// Move everything the endpoints want to send into the network.
    fn pump(&mut self) {
        for i in 0..self.endpoints.len() {
            while let Some(t) = self.endpoints[i].poll_transmit() {
                let to = (0..self.addrs.len()).find(|&j| {
                    t.to.port() == self.addrs[j].port() || t.to.port() == self.addrs[j].port() + 1
                });
                let Some(to) = to else { continue };
                let data = t.to.port() == self.addrs[to].port() + 1;
                let from = self.port_addr(i, t.from);
                let partitioned = self
                    .partition
                    .is_some_and(|(s, e)| self.now >= s && self.now < e);
                if partitioned
                    || self.dead[i]
                    || self.dead[to]
                    || self.unit() < self.conditions.loss
                {
                    continue;
                }
                let extra = self.extra_delay[i] + self.extra_delay[to];
                let copies = if self.unit() < self.conditions.duplicate {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let jitter = (self.unit() * self.conditions.jitter as f64) as Nanos;
                    self.seq += 1;
                    self.flights.push(Reverse((
                        self.now + self.conditions.delay + extra + jitter,
                        self.seq,
                        to,
                        data,
                        from,
                        t.bytes.clone(),
                    )));
                }
            }
            while let Some(e) = self.endpoints[i].poll_event() {
                self.events[i].push(e);
            }
        }
    }

    /// Run the virtual clock until `until`, delivering datagrams and firing timers in order.
    pub fn run_until(&mut self, until: Nanos) {
        loop {
            self.pump();
            let next_flight = self.flights.peek().map(|Reverse(f)| f.0);
            let next_timer = self
                .endpoints
                .iter()
                .filter_map(Endpoint::poll_timeout)
                .min();
            let next = [next_flight, next_timer].into_iter().flatten().min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    if next_flight == Some(t) {
                        let Some(Reverse((_, _, to, data, from, bytes))) = self.flights.pop()
                        else {
                            break;
                        };
                        let port = if data { Port::Data } else { Port::Control };
                        self.endpoints[to].handle_datagram(self.now, port, from, &bytes);
                        self.delivered += 1;
                    } else {
                        for e in &mut self.endpoints {
                            e.handle_timeout(self.now);
                        }
                    }
                }
                _ => {
                    self.now = until;
                    for e in &mut self.endpoints {
                        e.handle_timeout(self.now);
                    }
                    self.pump();
                    break;
                }
            }
        }
    }

    pub fn connected(&self, i: usize) -> bool {
        self.endpoints[i].peers().iter().any(|p| p.connected)
    }

    pub fn disconnects(&self, i: usize) -> usize {
        self.events[i]
            .iter()
            .filter(|e| matches!(e, EndpointEvent::Disconnected(_, r) if *r != CloseReason::Local))
            .count()
    }
}

mod tests {
    use super::*;
    use crate::proto::applemidi::session::CK_DEAD;
    use crate::proto::rtpmidi::{MidiCommand, TimedCommand};

    /// One MIDI clock at the packet's timestamp.
    const CLOCK: TimedCommand = TimedCommand {
        offset: 0,
        command: MidiCommand::RealTime(0xF8),
    };

    fn start(conditions: Conditions, seed: u64) -> Net {
        let mut net = Net::new(conditions, seed);
        let b = net.addrs[1];
        let now = net.now;
        net.endpoints[0].add_peer(now, b);
        net
    }

    /// The initiator times its own CK0 and the answer to the nanosecond: a delay that is not
    /// a whole number of the CK clock's 100 µs steps is measured exactly.
    #[test]
    fn the_initiator_measures_the_round_trip_to_the_microsecond() {
        let odd = Conditions {
            delay: 5_037_000,
            ..CLEAN
        };
        let mut net = start(odd, 3);
        net.run_until(net.now + 10 * SECOND);
        let latency = net.endpoints[0].peers()[0].latency.expect("CK measured");
        assert!((latency.rtt_us - 10_074.0).abs() < 1.0, "{latency:?}");
    }

    #[test]
    fn clean_network_connects_and_measures_latency() {
        let mut net = start(CLEAN, 1);
        net.run_until(net.now + 100 * MS);
        assert!(net.connected(0) && net.connected(1));
        net.run_until(net.now + 30 * SECOND);
        let peer = &net.endpoints[0].peers()[0];
        let latency = peer.latency.expect("CK measured");
        // 5 ms each way; the 10 kHz session clock quantises to 100 µs.
        assert!((latency.rtt_us - 10_000.0).abs() <= 200.0, "{latency:?}");
        assert!(latency.samples >= 6, "{latency:?}");
        assert_eq!(peer.name.as_deref(), Some("Peer B"));
        assert_eq!(
            net.endpoints[1].peers()[0].name.as_deref(),
            Some("Lockstep A")
        );
        assert_eq!(net.disconnects(0) + net.disconnects(1), 0);
        // Clock packets flow and are recognised by SSRC on the other side.
        let at = net.now;
        net.endpoints[0].send_midi(at, &[CLOCK]);
        net.run_until(net.now + 50 * MS);
        assert_eq!(net.endpoints[1].counters().rtp_received, 1);
        assert_eq!(net.endpoints[1].counters().unknown_ssrc, 0);
        // Per peer too (the editor's sent / received columns): every RTP-MIDI packet A sent
        // went to its one peer, and B applied the one clock packet.
        let sent = net.endpoints[0].peers()[0].sent;
        assert!(sent >= 1, "{sent}");
        assert_eq!(sent, net.endpoints[0].counters().rtp_sent);
        assert_eq!(net.endpoints[1].peers()[0].received.packets, 1);
    }

    /// The overload case a second AppleMIDI stack saw: clock packets built ahead of their due
    /// time (for the send path) or late (a starved worker), guard packets and a Stop built
    /// between them at whatever `now` the worker had. On the wire, in sequence order, the RTP
    /// timestamps and due times never go backwards, and clock packets keep their own time
    /// whenever the stream allows it.
    #[test]
    fn a_late_or_early_building_worker_never_sends_timestamps_backwards() {
        let mut net = start(CLEAN, 11);
        net.run_until(net.now + 100 * MS);
        assert!(net.connected(0));
        // Drain what the handshake left.
        while net.endpoints[0].poll_transmit().is_some() {}
        const STOP: TimedCommand = TimedCommand {
            offset: 0,
            command: MidiCommand::RealTime(0xFC),
        };
        const START: TimedCommand = TimedCommand {
            offset: 0,
            command: MidiCommand::RealTime(0xFA),
        };
        let tick = 8_333_333; // 300 BPM
        let mut rng = 0x5eed_u64;
        let rand = |rng: &mut u64| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng >> 11
        };
        let mut now = net.now;
        let mut next_tick = now;
        let mut wire = Vec::new();
        let mut clock_exact = 0;
        // Under 30 s of virtual time: nobody answers CK here, and CK_DEAD would end the session.
        for step in 0..2_000 {
            // The worker wakes every few ms, and now and then stalls for up to 150 ms (overload):
            // a stall past the guard delay builds a guard between clock packets.
            now += if rand(&mut rng) % 10 == 0 {
                rand(&mut rng) % (150 * MS)
            } else {
                rand(&mut rng) % (10 * MS)
            } + 1;
            // Clock packets up to 6 ms ahead of now, some already in the past.
            let ahead = now + 6 * MS;
            // Either order: timestamps stay monotonic whichever the driver uses.
            let guards_first = rand(&mut rng) % 2 == 0;
            if guards_first {
                net.endpoints[0].handle_timeout(now);
            }
            while next_tick <= ahead {
                net.endpoints[0].send_midi(next_tick, &[CLOCK]);
                next_tick += tick;
            }
            if !guards_first {
                net.endpoints[0].handle_timeout(now);
            }
            if step % 500 == 499 {
                // A Stop now, a quiet spell the guards fill, and a Start.
                net.endpoints[0].send_midi(now, &[STOP]);
                for _ in 0..3 {
                    now += 300 * MS;
                    net.endpoints[0].handle_timeout(now);
                }
                net.endpoints[0].send_midi(now, &[START]);
                next_tick = next_tick.max(now);
            }
            while let Some(t) = net.endpoints[0].poll_transmit() {
                if let Some(due) = t.due {
                    let p = crate::proto::rtpmidi::decode(&t.bytes).expect("our own packet");
                    wire.push((
                        p.header.seq,
                        p.header.timestamp,
                        due,
                        !p.commands.is_empty(),
                        guards_first,
                    ));
                }
            }
        }
        // The driver builds due clock packets before it runs timers (guards): there, every
        // clock packet keeps its own time.
        let clocks = wire.iter().filter(|w| w.3 && !w.4).count();
        assert!(clocks > 1_200, "{clocks}");
        let mut guards = 0;
        for pair in wire.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(b.0, a.0.wrapping_add(1), "sequence order");
            assert!(b.1 >= a.1, "timestamp went backwards: {a:?} then {b:?}");
            assert!(b.2 >= a.2, "due time went backwards: {a:?} then {b:?}");
            guards += usize::from(!b.3);
            clock_exact += usize::from(b.3 && !b.4 && b.1 > a.1);
        }
        assert!(guards > 10, "guard packets were interleaved: {guards}");
        assert!(
            clock_exact * 100 >= clocks * 99,
            "clock packets kept their times: {clock_exact} of {clocks} ({guards} guards)"
        );
    }

    #[test]
    fn sessions_survive_heavy_loss_duplication_and_reordering() {
        for seed in 1..=20 {
            let lossy = Conditions {
                delay: 20 * MS,
                jitter: 40 * MS,
                loss: 0.3,
                duplicate: 0.1,
            };
            let mut net = start(lossy, seed);
            net.run_until(net.now + 60 * SECOND);
            assert!(net.connected(0), "seed {seed}: not connected after 60 s");
            let connects = net.endpoints[0].peers()[0].connects;
            net.run_until(net.now + 600 * SECOND);
            assert!(net.connected(0) && net.connected(1), "seed {seed}");
            assert_eq!(
                net.endpoints[0].peers()[0].connects,
                connects,
                "seed {seed}: the session dropped"
            );
            let counters = net.endpoints[0].counters();
            assert_eq!(counters.malformed, 0, "seed {seed}");
        }
    }

    #[test]
    fn a_partition_ends_the_session_and_it_comes_back_after() {
        let mut net = start(CLEAN, 7);
        net.run_until(net.now + SECOND);
        assert!(net.connected(0));
        let cut = net.now;
        net.partition = Some((cut, cut + 120 * SECOND));
        net.run_until(cut + CK_DEAD + 15 * SECOND);
        assert!(!net.connected(0), "the initiator noticed the dead peer");
        net.run_until(cut + 120 * SECOND);
        // Invitations back off: 1, 2, 4, 8, 16, 30 s...
        net.run_until(cut + 120 * SECOND + 31 * SECOND);
        assert!(
            net.connected(0) && net.connected(1),
            "reconnected within the longest backoff"
        );
        assert_eq!(net.endpoints[0].peers()[0].connects, 2);
        assert!(
            net.events[0]
                .iter()
                .any(|e| matches!(e, EndpointEvent::Connected(_)))
        );
    }

    #[test]
    fn sixteen_peers_at_once_and_a_dead_or_slow_one_delays_no_other() {
        let mut net = Net::with_peers(CLEAN, 11, 16);
        // Exact packet counts below: no guard packets (the journal has its own tests).
        net.endpoints[0].set_journal_default(false);
        net.dead[16] = true; // never answers
        net.extra_delay[15] = 400 * MS; // slow
        let now = net.now;
        for i in 1..=16 {
            let address = net.addrs[i];
            net.endpoints[0].add_peer(now, address);
        }
        net.run_until(now + 100 * MS);
        // The fourteen healthy peers connect in one round trip each; the slow and the dead one
        // hold nobody up.
        let peers = net.endpoints[0].peers();
        assert_eq!(
            peers.iter().filter(|p| p.connected).count(),
            14,
            "{peers:?}"
        );
        net.run_until(now + 2 * SECOND);
        assert_eq!(
            net.endpoints[0]
                .peers()
                .iter()
                .filter(|p| p.connected)
                .count(),
            15
        );
        let at = net.now;
        net.endpoints[0].send_midi(at, &[CLOCK]);
        net.run_until(at + 20 * MS);
        for i in 1..=14 {
            assert_eq!(
                net.endpoints[i].counters().rtp_received,
                1,
                "peer {i} got the clock within 20 ms"
            );
        }
        net.run_until(at + SECOND);
        assert_eq!(
            net.endpoints[15].counters().rtp_received,
            1,
            "the slow peer gets it too"
        );
        // The dead one gives up after twelve invitations (and is retried with backoff, as the
        // partition test shows).
        net.run_until(now + 14 * SECOND);
        let dead = &net.endpoints[0].peers()[15];
        assert!(!dead.connected, "{dead:?}");
        assert_eq!(dead.last_close, Some(CloseReason::NoAnswer), "{dead:?}");
        assert_eq!(
            net.endpoints[0]
                .peers()
                .iter()
                .filter(|p| p.connected)
                .count(),
            15
        );
    }

    #[test]
    fn a_stale_bye_never_kills_the_new_session() {
        let mut net = start(CLEAN, 3);
        net.run_until(net.now + SECOND);
        let a = net.addrs[0];
        let now = net.now;
        // A BY from an SSRC that is not our peer's (an old session of B's).
        let mut bye = Vec::new();
        super::super::encode_into(
            &super::super::Command::Bye(super::super::Exchange {
                token: 1,
                ssrc: 0xDEAD_BEEF,
                name: None,
            }),
            &mut bye,
        );
        net.endpoints[1].handle_datagram(now, Port::Control, a, &bye);
        net.run_until(net.now + 5 * SECOND);
        assert!(net.connected(0) && net.connected(1));
        assert_eq!(net.endpoints[1].counters().stale_bye, 1);
    }

    /// A third party that knows (or sweeps) the peer's SSRC cannot end the session with a
    /// forged BY, keep it alive with CK, or inject RTP-MIDI: all counted, none acted on.
    #[test]
    fn forged_control_from_another_address_is_counted_and_ignored() {
        let mut net = start(CLEAN, 4);
        net.run_until(net.now + SECOND);
        assert!(net.connected(0) && net.connected(1));
        let peer_ssrc = net.endpoints[1]
            .session(net.addrs[0])
            .and_then(|s| s.peer_ssrc())
            .expect("B knows A's SSRC");
        let attacker = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let now = net.now;
        let mut bye = Vec::new();
        super::super::encode_into(
            &super::super::Command::Bye(super::super::Exchange {
                token: 1,
                ssrc: peer_ssrc,
                name: None,
            }),
            &mut bye,
        );
        net.endpoints[1].handle_datagram(now, Port::Control, attacker, &bye);
        net.endpoints[1].handle_datagram(now, Port::Data, attacker, &bye);
        let mut ck = Vec::new();
        super::super::encode_into(
            &super::super::Command::Ck(super::super::Ck {
                ssrc: peer_ssrc,
                count: 0,
                timestamps: [1, 0, 0],
            }),
            &mut ck,
        );
        net.endpoints[1].handle_datagram(now, Port::Data, attacker, &ck);
        net.run_until(net.now + 5 * SECOND);
        assert!(
            net.connected(0) && net.connected(1),
            "the forged BY ended nothing"
        );
        let c = net.endpoints[1].counters();
        assert_eq!((c.wrong_source, c.stale_bye), (3, 0), "{c:?}");
        // The real peer's BY still ends it.
        let a = net.addrs[0];
        net.endpoints[1].handle_datagram(net.now, Port::Control, a, &bye);
        assert!(!net.connected(1));
    }

    #[test]
    fn access_modes_refuse_with_no_and_count() {
        let mut net = Net::new(CLEAN, 5);
        net.endpoints[1].set_access(Access::Nobody);
        let (b, now) = (net.addrs[1], net.now);
        net.endpoints[0].add_peer(now, b);
        net.run_until(net.now + 2 * SECOND);
        assert!(!net.connected(0));
        assert!(net.endpoints[1].counters().refused >= 1);
        assert!(
            net.events[1]
                .iter()
                .any(|e| matches!(e, EndpointEvent::Refused(_)))
        );
        assert!(
            net.events[0]
                .iter()
                .any(|e| matches!(e, EndpointEvent::Disconnected(_, CloseReason::Rejected)))
        );
        // Directory mode: an unlisted peer is refused, a listed one accepted.
        net.endpoints[1].set_access(Access::Directory);
        let a = net.addrs[0];
        net.endpoints[1].add_peer(net.now, a);
        net.run_until(net.now + 60 * SECOND);
        assert!(net.connected(0) && net.connected(1));
    }

    #[test]
    fn garbage_on_both_ports_is_counted_and_harmless() {
        let mut net = start(CLEAN, 9);
        net.run_until(net.now + SECOND);
        let (a, now) = (net.addrs[0], net.now);
        let junk: [&[u8]; 5] = [
            &[],
            &[0xFF, 0xFF, 0x43, 0x4B, 1, 2], // truncated CK
            &[0xFF, 0xFF, 0x49, 0x4E, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 2], // wrong version
            &[0x80, 0x61, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 1, 0xF8], // RTP from an unknown SSRC
            &[0x13, 0x37],
        ];
        for bytes in junk {
            for port in [Port::Control, Port::Data] {
                net.endpoints[1].handle_datagram(now, port, a, bytes);
            }
        }
        let c = net.endpoints[1].counters();
        // 5 × 2 datagrams: the RTP one is malformed on the control port (no RTP there) and an
        // unknown SSRC on the data port.
        assert_eq!(c.malformed, 9, "{c:?}");
        assert_eq!(c.unknown_ssrc, 1, "{c:?}");
        net.run_until(net.now + 30 * SECOND);
        assert!(net.connected(0) && net.connected(1));
    }

    fn invitation(token: u32, ssrc: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        super::super::encode_into(
            &super::super::Command::Invitation(super::super::Exchange {
                token,
                ssrc,
                name: Some("flood".into()),
            }),
            &mut bytes,
        );
        bytes
    }

    /// The invitation flood: 5,000 invitations from as many ports (10,000 datagrams,
    /// both ports) while a real peer is connected. The guest table stays bounded, the real
    /// session is never touched, refusals are not reflected one-for-one, and everything is
    /// counted.
    #[test]
    fn an_invitation_flood_is_bounded_and_never_drops_a_connected_peer() {
        let mut net = start(CLEAN, 21);
        net.run_until(net.now + SECOND);
        assert!(net.connected(0) && net.connected(1));
        let b = 1;
        let now = net.now;
        for i in 0..5_000u32 {
            // 5,000 hosts (one host may hold at most MAX_GUESTS_PER_ADDRESS slots).
            let from = SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250) as u8 + 1], 10_000));
            let bytes = invitation(0x5000_0000 + i, 0x7000_0000 + i);
            net.endpoints[b].handle_datagram(
                now + u64::from(i) * 100_000,
                Port::Control,
                from,
                &bytes,
            );
            let data = SocketAddr::new(from.ip(), from.port() + 1);
            // Half the flood completes its data-port invitation: those become connected
            // guests until the guest slots are full.
            if i % 2 == 0 {
                net.endpoints[b].handle_datagram(
                    now + u64::from(i) * 100_000,
                    Port::Data,
                    data,
                    &bytes,
                );
            }
        }
        let peers = net.endpoints[b].peers();
        let guests = peers.iter().filter(|p| !p.in_directory).count();
        assert!(
            guests <= DEFAULT_MAX_GUESTS,
            "{guests} guests kept (limit {DEFAULT_MAX_GUESTS})"
        );
        let half_open = peers.iter().filter(|p| !p.connected).count();
        assert!(half_open <= MAX_HALF_OPEN, "{half_open} half-open");
        let c = net.endpoints[b].counters();
        assert!(c.full > 2_000 && c.evicted > 0, "{c:?}");
        // New guests: at most MAX_NEW_GUESTS_PER_SECOND started in the flood's half second.
        assert!(
            guests <= MAX_NEW_GUESTS_PER_SECOND as usize,
            "{guests} guests started"
        );
        // NO replies: at most 20 a second over the flood's 0.5 s.
        let mut nos = 0;
        while let Some(t) = net.endpoints[b].poll_transmit() {
            nos += usize::from(t.bytes.get(2..4) == Some(b"NO"));
        }
        assert!(nos <= 2 * MAX_REFUSALS_PER_SECOND as usize, "{nos} NO sent");
        assert_eq!(c.unanswered + nos as u64, c.full, "{c:?}");
        // The directory peer (A, which invited B) was never a guest slot and stays connected.
        net.run_until(net.now + 5 * SECOND);
        assert!(
            net.connected(0) && net.connected(1),
            "the real session survived"
        );
    }

    /// Connected guests are never dropped for a newcomer: with every slot connected, the next
    /// invitation is refused with NO; after a guest leaves, a newcomer gets in.
    #[test]
    fn a_full_guest_list_refuses_newcomers_and_keeps_its_guests() {
        let mut e = Endpoint::new("B", Access::Anyone, 3);
        e.set_max_guests(2);
        let guest = |i: u16| SocketAddr::from(([127, 0, 0, 3], 20_000 + 2 * i));
        for i in 0..2u16 {
            let bytes = invitation(u32::from(i) + 1, u32::from(i) + 100);
            e.handle_datagram(SECOND, Port::Control, guest(i), &bytes);
            let data = SocketAddr::new(guest(i).ip(), guest(i).port() + 1);
            e.handle_datagram(SECOND, Port::Data, data, &bytes);
        }
        assert_eq!(e.peers().iter().filter(|p| p.connected).count(), 2);
        while e.poll_transmit().is_some() {}
        e.handle_datagram(SECOND, Port::Control, guest(2), &invitation(9, 109));
        let t = e.poll_transmit().expect("a NO");
        assert_eq!((&t.bytes[2..4], t.to), (&b"NO"[..], guest(2)));
        assert_eq!(e.counters().full, 1);
        assert_eq!(e.peers().iter().filter(|p| p.connected).count(), 2);
        // Guest 0 leaves (BY from its own address): the newcomer now gets in.
        let mut bye = Vec::new();
        super::super::encode_into(
            &super::super::Command::Bye(super::super::Exchange {
                token: 1,
                ssrc: 100,
                name: None,
            }),
            &mut bye,
        );
        e.handle_datagram(SECOND, Port::Control, guest(0), &bye);
        e.handle_datagram(SECOND, Port::Control, guest(2), &invitation(9, 109));
        let t = e.poll_transmit().expect("an OK");
        assert_eq!(&t.bytes[2..4], b"OK");
    }

    /// One host cannot take every guest slot: its fifth session is refused.
    #[test]
    fn one_host_holds_at_most_four_guest_slots() {
        let mut e = Endpoint::new("B", Access::Anyone, 7);
        for i in 0..5u16 {
            let control = SocketAddr::from(([127, 0, 0, 5], 40_000 + 2 * i));
            let data = SocketAddr::new(control.ip(), control.port() + 1);
            let bytes = invitation(u32::from(i) + 1, u32::from(i) + 500);
            e.handle_datagram(SECOND, Port::Control, control, &bytes);
            e.handle_datagram(SECOND, Port::Data, data, &bytes);
        }
        let connected = e.peers().iter().filter(|p| p.connected).count();
        assert_eq!(connected, MAX_GUESTS_PER_ADDRESS);
        assert_eq!(
            e.counters().full,
            2,
            "the fifth host session, on both ports"
        );
    }

    /// Interop: an initiator that uses a fresh token for its data-port invitation gets an OK
    /// echoing that token and carrying the same SSRC as the control port's OK, and the
    /// session forms.
    #[test]
    fn a_fresh_token_on_the_data_port_gets_the_same_ssrc() {
        let mut e = Endpoint::new("B", Access::Anyone, 5);
        let peer = SocketAddr::from(([127, 0, 0, 4], 30_000));
        let data = SocketAddr::new(peer.ip(), peer.port() + 1);
        e.handle_datagram(SECOND, Port::Control, peer, &invitation(0x1111, 0xAB));
        e.handle_datagram(SECOND, Port::Data, data, &invitation(0x2222, 0xAB));
        let oks: Vec<Transmit> = std::iter::from_fn(|| e.poll_transmit()).collect();
        assert_eq!(oks.len(), 2, "{oks:?}");
        let field = |t: &Transmit, at: usize| {
            u32::from_be_bytes(t.bytes[at..at + 4].try_into().expect("4 bytes"))
        };
        assert_eq!(
            (field(&oks[0], 8), field(&oks[1], 8)),
            (0x1111, 0x2222),
            "tokens echoed"
        );
        assert_eq!(
            field(&oks[0], 12),
            field(&oks[1], 12),
            "one SSRC on both ports"
        );
        assert!(e.peers()[0].connected);
        assert_eq!(e.peers().len(), 1);
    }
}

/// The convergence requirement: a receiver's transport state (playing or stopped,
/// song position) converges within 1 s of the loss ending, with and without the journal.
mod convergence {
    use super::*;
    use crate::proto::rtpmidi::journal::SequencerState;
    use crate::proto::rtpmidi::{MidiCommand, TimedCommand};

    /// 120 BPM, 24 ppq.
    const TICK: Nanos = 20_833_333;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Action {
        Start,
        Stop,
        /// SPP while stopped.
        Locate(u16),
        Continue,
    }

    struct Run {
        /// (sent at, sender state after it) for every packet A sent to B.
        sent: Vec<(Nanos, SequencerState)>,
        receiver: SequencerState,
        loss_end: Nanos,
        /// The transport commands sent before the loss ended, last one first.
        last_action: Option<Action>,
        stats: crate::proto::rtpmidi::journal::ReceiverStats,
        guards: u64,
    }

    fn rand(rng: &mut u64) -> u64 {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng >> 11
    }

    /// A (sender) plays a random transport script to B through `loss` during a random window,
    /// with 20 ms delay, 30 ms jitter (reordering) and 5 % duplication throughout.
    fn run(seed: u64, loss: f64, journal: bool, end_playing: bool) -> Run {
        let clean = Conditions {
            delay: 20 * MS,
            jitter: 30 * MS,
            loss: 0.0,
            duplicate: 0.05,
        };
        let mut net = Net::new(clean, seed);
        let (b, now) = (net.addrs[1], net.now);
        net.endpoints[0].add_peer(now, b);
        net.endpoints[0].set_peer_journal(b, journal);
        net.run_until(now + 2 * SECOND);
        assert!(net.connected(0), "seed {seed}: connected");
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let t0 = net.now;
        let loss_start = t0 + SECOND + rand(&mut rng) % (2 * SECOND);
        let loss_end = loss_start + SECOND + rand(&mut rng) % (6 * SECOND);
        // Transport actions every 0.3–2 s, some inside the loss, the last one just before it
        // ends decides whether the song plays on after it.
        let mut actions = vec![(t0 + 200 * MS, Action::Start)];
        let mut playing = true;
        let mut at = t0 + 200 * MS;
        loop {
            at += 300 * MS + rand(&mut rng) % (1700 * MS);
            if at >= loss_end - 100 * MS {
                break;
            }
            let action = if playing {
                Action::Stop
            } else {
                match rand(&mut rng) % 3 {
                    0 => Action::Locate((rand(&mut rng) % 512) as u16),
                    1 => Action::Continue,
                    _ => Action::Start,
                }
            };
            playing = matches!(action, Action::Start | Action::Continue);
            actions.push((at, action));
        }
        if playing != end_playing {
            let action = if playing {
                Action::Stop
            } else {
                Action::Continue
            };
            actions.push((loss_end - 50 * MS, action));
        }
        if !end_playing && rand(&mut rng).is_multiple_of(2) {
            actions.push((loss_end - 30 * MS, Action::Locate(64)));
        }
        let last_action = actions.last().map(|a| a.1);
        let end = loss_end + SECOND;
        let mut sent = Vec::new();
        let mut next = actions.into_iter().peekable();
        let mut running = false;
        let mut t = t0;
        while t <= end {
            net.conditions.loss = if (loss_start..loss_end).contains(&t) {
                loss
            } else {
                0.0
            };
            net.run_until(t);
            let mut commands = Vec::new();
            while let Some(&(when, action)) = next.peek()
                && when <= t
            {
                next.next();
                let command = match action {
                    Action::Start => MidiCommand::RealTime(0xFA),
                    Action::Stop => MidiCommand::RealTime(0xFC),
                    Action::Continue => MidiCommand::RealTime(0xFB),
                    Action::Locate(p) => MidiCommand::SongPosition(p),
                };
                running = match action {
                    Action::Start | Action::Continue => true,
                    Action::Stop => false,
                    Action::Locate(_) => running,
                };
                commands.push(TimedCommand { offset: 0, command });
            }
            if running {
                commands.push(TimedCommand {
                    offset: 0,
                    command: MidiCommand::RealTime(0xF8),
                });
            }
            if !commands.is_empty() {
                net.endpoints[0].send_midi_to(b, t, &commands);
                let session = net.endpoints[0].session(b).expect("session");
                sent.push((t, *session.journal().state()));
            }
            t += TICK;
        }
        net.run_until(end);
        let a = net.addrs[0];
        let session_b = net.endpoints[1].session(a).expect("B's session with A");
        let session_a = net.endpoints[0].session(b).expect("A's session with B");
        assert!(
            session_a.is_connected() && session_b.is_connected(),
            "seed {seed}: the session survived"
        );
        Run {
            sent,
            receiver: *session_b.receiver().state(),
            loss_end,
            last_action,
            stats: session_b.received(),
            guards: session_a.journal().guards(),
        }
    }

    /// True if the receiver holds a state the sender had in the last 100 ms (what is still in
    /// flight: 20 ms delay + up to 30 ms jitter).
    fn converged(run: &Run) -> bool {
        let now = run.loss_end + SECOND;
        let got = run.receiver.transport();
        run.sent
            .iter()
            .rev()
            .take_while(|(t, _)| *t + 100 * MS >= now)
            .any(|(_, s)| s.transport() == got)
            || run
                .sent
                .last()
                .is_some_and(|(t, s)| *t + 100 * MS < now && s.transport() == got)
    }

    #[test]
    fn with_the_journal_the_receiver_converges_within_a_second_of_the_loss_ending() {
        let mut repairs = 0;
        for loss in [0.0, 0.1, 0.2, 0.3] {
            for seed in 1..=12 {
                for end_playing in [false, true] {
                    let run = run(seed, loss, true, end_playing);
                    assert!(
                        converged(&run),
                        "loss {loss} seed {seed} playing {end_playing}: receiver {:?}, sender {:?}, {:?}",
                        run.receiver,
                        run.sent.last(),
                        run.stats
                    );
                    // Reordering alone opens gaps too (a packet overtaken is "lost" until it
                    // shows up late); every gap found a journal to repair from.
                    assert_eq!(run.stats.unrepaired, 0, "{:?}", run.stats);
                    repairs += run.stats.repairs;
                }
            }
        }
        assert!(repairs > 50, "the journal did the repairing: {repairs}");
    }

    #[test]
    fn without_the_journal_a_stopped_receiver_still_converges() {
        for loss in [0.1, 0.3] {
            for seed in 1..=12 {
                let run = run(seed, loss, false, false);
                // Stop (and an SPP after it) are restated by guard packets: running state
                // always converges, the position when the last command located it.
                let (running, position, _) = run.receiver.transport();
                let sender = run.sent.last().expect("sent").1;
                assert!(!running, "loss {loss} seed {seed}: still running");
                if matches!(run.last_action, Some(Action::Locate(_))) {
                    assert_eq!(position, sender.position(), "loss {loss} seed {seed}");
                }
                assert!(run.guards > 0);
                assert_eq!(run.stats.repairs, 0, "no journal, nothing to repair from");
            }
        }
    }

    #[test]
    fn without_the_journal_lost_clocks_stay_lost_while_playing() {
        // Why the journal is on by default: a journal-less receiver that lost clocks keeps a
        // wrong song position until the next transport change.
        let diverged = (1..=12)
            .filter(|&seed| !converged(&run(seed, 0.3, false, true)))
            .count();
        assert!(diverged > 6, "{diverged} of 12 runs diverged");
    }
}

mod pymidi_quirk {
    use super::super::session::{Event, Port, Session};
    use super::super::{Ck, Command, Exchange};

    /// pymidi answers with one SSRC on its control port and another on its data port, and
    /// stamps CK with its wall clock.
    #[test]
    fn a_peer_with_one_ssrc_per_port_is_still_measured() {
        let peer = "127.0.0.1:6004".parse().expect("addr");
        let mut s = Session::invite(0, "Lockstep", 7, 0xAAAA, 1, peer);
        let ok = |ssrc| Exchange {
            token: 7,
            ssrc,
            name: Some("pymidi".into()),
        };
        s.handle_command(1_000_000, Port::Control, &Command::Accepted(ok(0x1111)));
        s.handle_command(2_000_000, Port::Data, &Command::Accepted(ok(0x2222)));
        assert!(s.is_connected());
        assert!(s.is_peer_ssrc(0x2222));
        while s.poll_transmit().is_some() {}
        // Our CK0 left at 2 ms (t1 = 20 ticks); the CK1 arrives at 3 ms: 1 ms round trip.
        let ck1 = Ck {
            ssrc: 0x2222,
            count: 1,
            timestamps: [20, 0x1054_0b03_2aba, 0],
        };
        s.handle_command(3_000_000, Port::Data, &Command::Ck(ck1));
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Latency(l) if (l.rtt_us - 1000.0).abs() < 1.0)),
            "{events:?}"
        );
    }
}
