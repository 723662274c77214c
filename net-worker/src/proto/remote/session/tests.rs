//! Two or three sessions against an in-memory broker and network: real rendezvous sealing,
//! real ICE checks (rice-proto) and real sealed probes; only sockets and clocks are simulated.
//! Each peer has its own clock (a skew against the simulation's), each direction its own
//! delay, so the offset estimate and its bound can be checked against the truth.

use std::collections::BTreeMap;

use super::*;
use crate::proto::remote::keys::KdfParams;

const MS: u64 = 1_000_000;

/// A studio's local Link session: a beat line on its own clock.
#[derive(Debug, Clone, Copy)]
struct Line {
    tempo: f64,
    beat0: f64,
    t0: i64,
    playing: bool,
}

impl Line {
    fn beat(&self, ns: u64) -> f64 {
        self.beat0 + (ns as i64 - self.t0) as f64 * self.tempo / 60e9
    }
}

struct Node {
    session: Session,
    /// Its local Link session, if any.
    line: Option<Line>,
    /// This node's clock minus the simulation's at [`START`], ns…
    skew_ns: i64,
    /// …and how fast it runs against the simulation's, parts per million.
    ppm: f64,
    host: SocketAddr,
    due: u64,
}

/// A datagram in flight: (to node, from, to, bytes).
type InFlight = (usize, SocketAddr, SocketAddr, Vec<u8>);

/// Datagrams and broker messages in flight, by delivery time.
#[derive(Default)]
struct Net {
    /// (deliver at, seq) → (to node, from, to, bytes)
    udp: BTreeMap<(u64, u64), InFlight>,
    /// (deliver at, seq) → (to node, topic, payload)
    mqtt: BTreeMap<(u64, u64), (usize, String, Vec<u8>)>,
    seq: u64,
    /// Retained messages by topic.
    retained: BTreeMap<String, Vec<u8>>,
}

struct Sim {
    nodes: Vec<Node>,
    net: Net,
    now: u64,
    /// One-way delay from node i to node j, ns.
    delay: Box<dyn Fn(usize, usize) -> u64>,
    /// Drop every datagram (a dead path) while set.
    blackhole: bool,
    /// Drop this node's frames while it has not restarted: its first path carries nothing
    /// back (what rice-proto's lost nomination does behind a NAT, see `UNANSWERED_NS`).
    mute_first_path: Option<usize>,
    /// Datagrams delivered so far.
    delivered: u64,
}

fn code(text: &str) -> SessionCode {
    SessionCode::parse(text).expect("valid code")
}

const CODE: &str = "4817-7kq3-m2xp-9ftr-hw4d";
/// The simulation's time at the start, ns.
const START: u64 = 1_000 * MS;

impl Sim {
    fn new(codes: &[&str], skews: &[i64], delay: Box<dyn Fn(usize, usize) -> u64>) -> Self {
        let nodes = codes
            .iter()
            .zip(skews)
            .enumerate()
            .map(|(i, (c, skew))| {
                let host: SocketAddr = format!("198.51.100.{}:5000", 10 + i).parse().unwrap();
                let c = code(c);
                let root = RootKey::derive(&c, &KdfParams::TESTING).expect("kdf");
                let mut id = [0u8; 8];
                id[0] = i as u8 + 1;
                let config = SessionConfig {
                    me: PeerId(id),
                    host,
                    stun: None,
                    turn: None,
                };
                Node {
                    session: Session::new(config, c, root),
                    line: None,
                    skew_ns: *skew,
                    ppm: 0.0,
                    host,
                    due: 0,
                }
            })
            .collect();
        Self {
            nodes,
            net: Net::default(),
            now: START,
            delay,
            blackhole: false,
            mute_first_path: None,
            delivered: 0,
        }
    }

    fn clock(&self, i: usize) -> u64 {
        let node = &self.nodes[i];
        let run = (self.now - START) as f64 * node.ppm / 1e6;
        (self.now as i64 + node.skew_ns + run.round() as i64) as u64
    }

    /// The simulation's time at which node i's clock reads `local`.
    fn sim_time(&self, i: usize, local: u64) -> u64 {
        let node = &self.nodes[i];
        let since = local as f64 - node.skew_ns as f64 - START as f64;
        (START as f64 + since / (1.0 + node.ppm / 1e6)).max(0.0) as u64
    }

    fn wall_ms(&self) -> u64 {
        1_800_000_000_000 + self.now / MS
    }

    /// Route what node i wants to send.
    fn collect(&mut self, i: usize) {
        while let Some(p) = self.nodes[i].session.poll_publish() {
            if p.retain {
                self.net.retained.insert(p.topic.clone(), p.payload.clone());
            }
            for j in 0..self.nodes.len() {
                let subs = self.nodes[j].session.subscriptions();
                let matches = subs.iter().any(|f| match f.strip_suffix('+') {
                    Some(prefix) => p.topic.starts_with(prefix),
                    None => *f == p.topic,
                });
                if matches {
                    self.net.seq += 1;
                    let at = self.now + 5 * MS;
                    self.net
                        .mqtt
                        .insert((at, self.net.seq), (j, p.topic.clone(), p.payload.clone()));
                }
            }
        }
        while let Some(t) = self.nodes[i].session.poll_transmit() {
            let Some(j) = self.nodes.iter().position(|n| n.host == t.to) else {
                continue;
            };
            if self.blackhole {
                continue;
            }
            if self.mute_first_path == Some(i)
                && frame::is_frame(&t.data)
                && self.status(i).peers.iter().all(|p| p.restarts == 0)
            {
                continue;
            }
            self.net.seq += 1;
            let at = self.now + (self.delay)(i, j);
            self.net
                .udp
                .insert((at, self.net.seq), (j, t.from, t.to, t.data));
        }
    }

    fn connect_broker(&mut self) {
        for i in 0..self.nodes.len() {
            let now = self.clock(i);
            self.nodes[i].session.broker_ready(now);
            // Retained announces already there, as a broker delivers them on SUBSCRIBE.
            let retained: Vec<_> = self.net.retained.clone().into_iter().collect();
            let wall = self.wall_ms();
            for (topic, payload) in retained {
                self.nodes[i]
                    .session
                    .handle_message(&topic, &payload, now, wall);
            }
        }
    }

    /// Run until `until` (simulation ns).
    fn run(&mut self, until: u64) {
        while self.now < until {
            for i in 0..self.nodes.len() {
                let now = self.clock(i);
                let node = &mut self.nodes[i];
                // The worker's order: apply a grid to the Link session, then report it.
                if let Some(g) = node.session.take_grid() {
                    node.line = Some(Line {
                        tempo: g.tempo_bpm,
                        beat0: g.beat_origin,
                        t0: g.origin_ns,
                        playing: g.playing,
                    });
                }
                let view = node.line.map(|l| LocalView {
                    tempo_bpm: l.tempo,
                    beat: l.beat(now),
                    playing: l.playing,
                    quantum: 4.0,
                });
                node.session.observe_grid(now, view);
                if let Some(at) = node.session.grid_due() {
                    node.due = node.due.min(at);
                }
                if self.clock(i) >= self.nodes[i].due {
                    let (now, wall) = (self.clock(i), self.wall_ms());
                    let due = self.nodes[i].session.poll(now, wall);
                    self.nodes[i].due = due;
                }
                self.collect(i);
            }
            let next_udp = self.net.udp.keys().next().map(|k| k.0);
            let next_mqtt = self.net.mqtt.keys().next().map(|k| k.0);
            let next_due = (0..self.nodes.len())
                .map(|i| self.sim_time(i, self.nodes[i].due))
                .min();
            let next = [next_udp, next_mqtt, next_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until)
                .max(self.now)
                .min(until);
            self.now = next.max(self.now + 100_000);
            while let Some((&key, _)) = self.net.mqtt.iter().next().filter(|(k, _)| k.0 <= self.now)
            {
                let (j, topic, payload) = self.net.mqtt.remove(&key).unwrap();
                let (now, wall) = (self.clock(j), self.wall_ms());
                self.nodes[j]
                    .session
                    .handle_message(&topic, &payload, now, wall);
                self.nodes[j].due = 0;
            }
            while let Some((&key, _)) = self.net.udp.iter().next().filter(|(k, _)| k.0 <= self.now)
            {
                let (j, from, to, data) = self.net.udp.remove(&key).unwrap();
                let now = self.clock(j);
                self.delivered += 1;
                self.nodes[j].session.handle_datagram(to, from, &data, now);
                self.nodes[j].due = 0;
            }
        }
    }

    fn status(&self, i: usize) -> RemoteStatus {
        self.nodes[i].session.status(self.clock(i))
    }
}

fn symmetric(ms: u64) -> Box<dyn Fn(usize, usize) -> u64> {
    Box::new(move |_, _| ms * MS)
}

#[test]
fn two_studios_with_the_same_code_connect_directly_and_measure_their_clocks() {
    // B's clock runs 1.234 s ahead of A's; 40 ms each way.
    let mut sim = Sim::new(&[CODE, CODE], &[0, 1_234_000_000], symmetric(40));
    sim.connect_broker();
    sim.run(sim.now + 10_000 * MS);
    for i in 0..2 {
        let s = sim.status(i);
        assert_eq!(s.state, "connected", "node {i}: {s:?}");
        assert_eq!(s.peers.len(), 1);
        let p = &s.peers[0];
        assert_eq!(
            (p.ice.as_str(), p.path.as_str()),
            ("connected", "direct"),
            "{p:?}"
        );
        assert!(p.converged, "{p:?}");
        let rtt = p.rtt_ms.expect("rtt");
        assert!((80.0..81.0).contains(&rtt), "rtt {rtt}");
        // The truth: B − A = +1234 ms; A − B = −1234 ms. Symmetric path: error ≈ 0.
        let truth = if i == 0 { 1234.0 } else { -1234.0 };
        let offset = p.offset_ms.expect("offset");
        assert!(
            (offset - truth).abs() < 0.5,
            "node {i}: offset {offset}, truth {truth}"
        );
        assert_eq!(s.counters.rendezvous_forged, 0);
        assert_eq!(
            s.counters.datagrams_forged + s.counters.datagrams_malformed,
            0,
            "{s:?}"
        );
    }
}

#[test]
fn an_asymmetric_path_errs_by_half_the_difference_and_the_bound_contains_it() {
    // 30 ms from A to B, 50 ms back: round trips say θ is off by (30 − 50)/2 = −10 ms.
    let delay: Box<dyn Fn(usize, usize) -> u64> =
        Box::new(|from, _| if from == 0 { 30 * MS } else { 50 * MS });
    let mut sim = Sim::new(&[CODE, CODE], &[0, 500_000_000], delay);
    sim.connect_broker();
    sim.run(sim.now + 10_000 * MS);
    let p = &sim.status(0).peers[0];
    let offset = p.offset_ms.expect("offset");
    let error = offset - 500.0;
    assert!((error + 10.0).abs() < 0.5, "error {error} ms, expected −10");
    let bound = p.offset_bound_ms.expect("bound");
    assert!(
        error.abs() <= bound,
        "bound {bound} must contain error {error}"
    );
    assert!((40.0..40.5).contains(&bound), "bound {bound}");
}

#[test]
fn a_wrong_code_never_joins_and_its_messages_are_counted_as_forged() {
    let mut sim = Sim::new(&[CODE, "4817-8jq2-pw7r-3kxn-c5vd"], &[0, 0], symmetric(10));
    sim.connect_broker();
    sim.run(sim.now + 5_000 * MS);
    for i in 0..2 {
        let s = sim.status(i);
        assert!(s.peers.is_empty(), "node {i} met someone: {s:?}");
        assert!(s.counters.rendezvous_forged >= 1, "{s:?}");
        assert_eq!(s.state, "waiting for peers");
    }
}

#[test]
fn forged_tampered_and_replayed_datagrams_change_nothing_and_are_counted() {
    let mut sim = Sim::new(&[CODE, CODE], &[0, 0], symmetric(20));
    sim.connect_broker();
    sim.run(sim.now + 6_000 * MS);
    let before = sim.status(1).peers[0].clone();
    assert_eq!(before.ice, "connected");
    // Capture one real frame from A to B.
    let now_a = sim.clock(0);
    sim.nodes[0]
        .session
        .send_inner(0, &Inner::Ping { t1_ns: 1 }, now_a);
    let t = sim.nodes[0].session.poll_transmit().expect("a frame");
    let b = sim.nodes[1].host;
    let now = sim.clock(1);
    // The real one is accepted once, then refused as a replay 1,000 times.
    sim.nodes[1]
        .session
        .handle_datagram(b, t.from, &t.data, now);
    for _ in 0..1000 {
        sim.nodes[1]
            .session
            .handle_datagram(b, t.from, &t.data, now);
    }
    // Tampered copies of a frame not delivered yet (each byte after the header flipped).
    sim.nodes[0]
        .session
        .send_inner(0, &Inner::Ping { t1_ns: 2 }, now_a);
    let fresh = sim.nodes[0].session.poll_transmit().expect("a frame");
    for k in 10..fresh.data.len() {
        let mut bad = fresh.data.clone();
        bad[k] ^= 0x40;
        sim.nodes[1].session.handle_datagram(b, t.from, &bad, now);
    }
    // A stranger's frame from an unknown address, and garbage.
    let stranger: SocketAddr = "203.0.113.99:4000".parse().unwrap();
    sim.nodes[1]
        .session
        .handle_datagram(b, stranger, &t.data, now);
    sim.nodes[1]
        .session
        .handle_datagram(b, t.from, &[0x00, 0x01, 0x02], now);
    let s = sim.status(1);
    assert_eq!(s.counters.datagrams_replayed, 1000, "{s:?}");
    assert_eq!(
        s.counters.datagrams_forged,
        (fresh.data.len() - 10) as u64,
        "{s:?}"
    );
    assert_eq!(s.counters.datagrams_malformed, 2, "{s:?}");
    assert_eq!(s.peers[0].ice, "connected");
    sim.run(sim.now + 3_000 * MS);
    assert_eq!(sim.status(1).peers[0].ice, "connected");
}

#[test]
fn a_path_that_goes_dead_restarts_and_recovers_keeping_the_clock_estimate() {
    let mut sim = Sim::new(&[CODE, CODE], &[0, 250_000_000], symmetric(20));
    sim.connect_broker();
    sim.run(sim.now + 6_000 * MS);
    assert!(sim.status(0).peers[0].converged);
    sim.blackhole = true;
    sim.run(sim.now + 15_000 * MS);
    // Holdover: the estimate is still there while the path is down.
    let during = sim.status(0).peers[0].clone();
    assert!(during.offset_ms.is_some());
    sim.blackhole = false;
    sim.run(sim.now + 10_000 * MS);
    for i in 0..2 {
        let p = &sim.status(i).peers[0];
        assert_eq!(p.ice, "connected", "node {i}: {p:?}");
        assert!(p.restarts >= 1, "node {i}: {p:?}");
    }
    let offset = sim.status(0).peers[0].offset_ms.unwrap();
    assert!((offset - 250.0).abs() < 0.5, "{offset}");
}

/// The holdover target: a path that dies (an address change, a NAT that forgot our
/// binding, a relay gone) is back within 5 s. Silence for [`PEER_SILENCE_NS`] restarts it;
/// 1.5 s of total loss (six probes each way) does not.
#[test]
fn a_dead_path_is_back_within_five_seconds_and_a_short_loss_restarts_nothing() {
    let mut sim = Sim::new(&[CODE, CODE], &[0, 0], symmetric(40));
    sim.connect_broker();
    sim.run(sim.now + 6_000 * MS);
    assert_eq!(sim.status(0).peers[0].ice, "connected");
    let restarts = |sim: &Sim| sim.status(0).peers[0].restarts;
    let before = restarts(&sim);
    sim.blackhole = true;
    sim.run(sim.now + 1_500 * MS);
    sim.blackhole = false;
    sim.run(sim.now + 3_000 * MS);
    assert_eq!(restarts(&sim), before, "1.5 s of loss restarted the path");
    // Now the path dies for good (the old one never comes back: every datagram is lost
    // until the restart, as after an address change), and the new one works.
    let died = sim.now;
    sim.blackhole = true;
    while restarts(&sim) == before && sim.now < died + 3_000 * MS {
        sim.run(sim.now + 10 * MS);
    }
    let restarted = sim.now - died;
    assert!(
        (PEER_SILENCE_NS..PEER_SILENCE_NS + 100 * MS).contains(&restarted),
        "restarted {} ms after the path died",
        restarted / MS
    );
    sim.blackhole = false;
    while !(0..2).all(|i| {
        let p = &sim.status(i).peers[0];
        p.ice == "connected" && p.restarts > before
    }) && sim.now < died + 10_000 * MS
    {
        sim.run(sim.now + 10 * MS);
    }
    let back = sim.now - died;
    assert!(
        back <= 5_000 * MS,
        "back {} ms after the path died",
        back / MS
    );
    // Frames flow again on the new path.
    let heard = sim.status(0).peers[0].pongs;
    sim.run(sim.now + 1_000 * MS);
    assert!(sim.status(0).peers[0].pongs > heard);
}

#[test]
fn three_studios_form_a_mesh() {
    let mut sim = Sim::new(
        &[CODE, CODE, CODE],
        &[0, 7_000_000, -3_000_000],
        symmetric(15),
    );
    sim.connect_broker();
    sim.run(sim.now + 8_000 * MS);
    for i in 0..3 {
        let s = sim.status(i);
        assert_eq!(s.peers.len(), 2, "{s:?}");
        assert!(s.peers.iter().all(|p| p.ice == "connected"), "{s:?}");
    }
}

#[test]
fn stun_username_is_found_only_in_well_formed_stun() {
    // K2 from the digest: a check with USERNAME R9xq:L2fk.
    let k2 = [
        0x00, 0x01, 0x00, 0x48, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        0x00, 0x06, 0x00, 0x09, b'R', b'9', b'x', b'q', b':', b'L', b'2', b'f', b'k', 0, 0, 0,
        0x00, 0x24, 0x00, 0x04, 0x6E, 0xFF, 0xFF, 0xFF, 0x80, 0x2A, 0x00, 0x08, 0x01, 0x23, 0x45,
        0x67, 0x89, 0xAB, 0xCD, 0xEF, 0x00, 0x25, 0x00, 0x00, 0x00, 0x08, 0x00, 0x14, 0xF8, 0x72,
        0x7A, 0xA7, 0x47, 0x71, 0x46, 0x43, 0xFA, 0x59, 0xE3, 0xF7, 0xAC, 0x51, 0x57, 0x41, 0x9D,
        0xED, 0x5A, 0xC3, 0x80, 0x28, 0x00, 0x04, 0x93, 0x40, 0x90, 0x3A,
    ];
    assert_eq!(stun_info(&k2), Some(Some(&b"R9xq:L2fk"[..])));
    // K1: a keepalive indication, no USERNAME.
    let k1 = [
        0x00, 0x11, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        0x80, 0x28, 0x00, 0x04, 0x48, 0x62, 0xC2, 0xC6,
    ];
    assert_eq!(stun_info(&k1), Some(None));
    assert_eq!(stun_info(&k2[..40]), None, "length does not match");
    let mut rtp = k1;
    rtp[0] = 0x80;
    assert_eq!(stun_info(&rtp), None);
    // An attribute running past the end.
    let mut bad = k1;
    bad[22..24].copy_from_slice(&[0x00, 0x40]);
    assert_eq!(stun_info(&bad), None);
}

#[test]
fn a_path_that_never_answers_at_first_is_restarted_until_it_does() {
    let mut sim = Sim::new(&[CODE, CODE], &[0, 0], symmetric(10));
    sim.blackhole = true;
    sim.connect_broker();
    sim.run(sim.now + 8_000 * MS);
    assert_ne!(sim.status(0).peers[0].ice, "connected");
    sim.blackhole = false;
    sim.run(sim.now + 12_000 * MS);
    for i in 0..2 {
        let p = &sim.status(i).peers[0];
        assert_eq!(p.ice, "connected", "node {i}: {p:?}");
        assert!(p.restarts >= 1, "node {i}: {p:?}");
    }
}

/// The controlled side never answers on its first path (rice-proto's lost nomination behind a
/// NAT leaves it checking while the controlling side has selected a pair): the controlling
/// side restarts once nothing came back for `UNANSWERED_NS`, not after `PEER_SILENCE_NS`
/// (10 s, as before), and both sides measure their clocks within 3 s of meeting.
#[test]
fn a_path_that_carries_nothing_back_is_restarted_within_two_seconds() {
    let mut sim = Sim::new(&[CODE, CODE], &[0, 250_000_000], symmetric(20));
    sim.mute_first_path = Some(1);
    sim.connect_broker();
    sim.run(sim.now + 3_000 * MS);
    for i in 0..2 {
        let s = sim.status(i);
        let p = &s.peers[0];
        assert_eq!(p.ice, "connected", "node {i}: {p:?}");
        assert_eq!(p.restarts, 1, "node {i}: {p:?}");
        let offset = p.offset_ms.expect("measured");
        let truth = if i == 0 { 250.0 } else { -250.0 };
        assert!((offset - truth).abs() < 0.5, "node {i}: {offset} ms");
    }
    assert_eq!(sim.status(0).counters.paths_unanswered, 1);
    assert_eq!(sim.status(1).counters.paths_unanswered, 0);
}

/// The same failure as rice-proto has it: the controlled side's agent never selects a pair
/// while the controlling side's does. The controlled side takes the path the controlling
/// side's first authentic probe came by, answers it, and nothing restarts.
#[test]
fn the_controlled_side_takes_the_path_its_agent_never_selected() {
    let mut sim = Sim::new(&[CODE, CODE], &[0, 250_000_000], symmetric(20));
    sim.nodes[1].session.lose_nominations = true;
    sim.connect_broker();
    sim.run(sim.now + 2_000 * MS);
    for i in 0..2 {
        let s = sim.status(i);
        let p = &s.peers[0];
        assert_eq!(p.ice, "connected", "node {i}: {p:?}");
        assert_eq!(p.restarts, 0, "node {i}: {p:?}");
        assert!(p.offset_ms.is_some(), "node {i}: {p:?}");
    }
    assert_eq!(sim.status(1).counters.paths_adopted, 1);
    assert_eq!(sim.status(0).counters.paths_unanswered, 0);
}

/// Node `i`'s local beat at simulation time `t`, and how far (ms) it lies from node `j`'s.
fn apart_ms(sim: &Sim, i: usize, j: usize) -> f64 {
    let beat = |k: usize| {
        let line = sim.nodes[k].line.expect("a Link session");
        line.beat(sim.clock(k))
    };
    (beat(i) - beat(j)) * 60e3 / sim.nodes[j].line.expect("line").tempo
}

#[test]
fn the_grid_crosses_the_path_once_the_clocks_converged_and_changes_follow() {
    // B's clock is 1.234 s ahead; 40 ms each way. A plays at 120 BPM, B is stopped at 95.
    let mut sim = Sim::new(&[CODE, CODE], &[0, 1_234_000_000], symmetric(40));
    sim.nodes[0].line = Some(Line {
        tempo: 120.0,
        beat0: 0.0,
        t0: 0,
        playing: true,
    });
    sim.nodes[1].line = Some(Line {
        tempo: 95.0,
        beat0: 3.0,
        t0: 0,
        playing: false,
    });
    sim.connect_broker();
    let start = sim.now;
    let mut took = None;
    while sim.now < start + 10_000 * MS {
        sim.run(sim.now + 10 * MS);
        if took.is_none() && sim.nodes[1].line.is_some_and(|l| l.tempo == 120.0) {
            took = Some((sim.now - start) / MS);
        }
    }
    let took = took.expect("B never took A's grid");
    let b = sim.status(1);
    let grid = b.grid.as_ref().expect("grid");
    assert!(grid.playing && !grid.ours && grid.linked, "{grid:?}");
    assert_eq!(grid.counters.adopted, 1, "{grid:?}");
    // Probes converge in 16 samples; the grid is mapped through the offset only then.
    assert!(b.peers[0].converged);
    let apart = apart_ms(&sim, 1, 0);
    assert!(apart.abs() < 0.5, "B is {apart} ms from A");
    eprintln!("grid shared {took} ms after the broker; apart {apart:.4} ms");
    // B's DAW changes the tempo and A follows within one path delay (plus a poll).
    let b_now = sim.clock(1);
    let line = sim.nodes[1].line.as_mut().unwrap();
    *line = Line {
        tempo: 100.0,
        beat0: line.beat(b_now),
        t0: b_now as i64,
        playing: true,
    };
    let changed = sim.now;
    let mut followed = None;
    while sim.now < changed + 1_000 * MS {
        sim.run(sim.now + MS);
        if followed.is_none() && sim.nodes[0].line.is_some_and(|l| l.tempo == 100.0) {
            followed = Some((sim.now - changed) as f64 / 1e6);
        }
    }
    let followed = followed.expect("A never took B's tempo");
    assert!(followed <= 40.0 + 2.0, "A followed after {followed} ms");
    assert!(apart_ms(&sim, 0, 1).abs() < 0.5);
    let a = sim.status(0);
    assert_eq!(a.grid.as_ref().unwrap().generation, 1);
    assert_eq!(a.grid.as_ref().unwrap().author, b.me);
}

#[test]
fn over_an_asymmetric_path_the_grid_errs_by_the_offset_error_within_its_bound() {
    // 30 ms from A to B, 50 ms back: B maps A's grid 10 ms off, as its offset estimate is.
    let delay: Box<dyn Fn(usize, usize) -> u64> =
        Box::new(|from, _| if from == 0 { 30 * MS } else { 50 * MS });
    let mut sim = Sim::new(&[CODE, CODE], &[0, 500_000_000], delay);
    sim.nodes[0].line = Some(Line {
        tempo: 120.0,
        beat0: 0.0,
        t0: 0,
        playing: true,
    });
    sim.nodes[1].line = Some(Line {
        tempo: 120.0,
        beat0: 0.0,
        t0: 0,
        playing: false,
    });
    sim.connect_broker();
    sim.run(sim.now + 10_000 * MS);
    let apart = apart_ms(&sim, 1, 0);
    let bound = sim.status(1).peers[0].offset_bound_ms.expect("bound");
    assert!((apart.abs() - 10.0).abs() < 0.5, "apart {apart} ms");
    assert!(apart.abs() <= bound, "apart {apart} ms, bound {bound} ms");
}

#[test]
fn through_a_minute_without_the_path_the_grid_holds_over_at_the_measured_drift() {
    // B's clock runs 50 ppm fast: 3 ms a minute. A plays; B takes A's grid, learns the drift
    // from its probes, then hears nothing at all for 60 s.
    let mut sim = Sim::new(&[CODE, CODE], &[0, 2_345_000_000], symmetric(40));
    sim.nodes[1].ppm = 50.0;
    sim.nodes[0].line = Some(Line {
        tempo: 120.0,
        beat0: 0.0,
        t0: 0,
        playing: true,
    });
    sim.nodes[1].line = Some(Line {
        tempo: 90.0,
        beat0: 0.0,
        t0: 0,
        playing: false,
    });
    sim.connect_broker();
    let start = sim.now;
    sim.run(start + 120_000 * MS);
    let before = apart_ms(&sim, 1, 0);
    let drift = sim.status(1).peers[0].drift_ppm;
    assert!(before.abs() < 0.2, "apart {before} ms before the outage");
    sim.blackhole = true;
    let cut = sim.now;
    let mut worst: f64 = 0.0;
    while sim.now < cut + 60_000 * MS {
        sim.run(sim.now + 100 * MS);
        worst = worst.max(apart_ms(&sim, 1, 0).abs());
    }
    let b = sim.status(1);
    eprintln!(
        "holdover: B's drift estimate of A {drift:.2} ppm (truth about -50); apart before \
         {before:.4} ms, worst through 60 s without the path {worst:.4} ms; path {}",
        b.peers[0].ice
    );
    // The target: the grid drifts at most 2 ms through 60 s of total loss. Without
    // holdover B's session would run 3 ms off.
    assert!(worst <= 2.0, "worst {worst} ms");
    let grid = b.grid.as_ref().expect("grid");
    assert!(
        !grid.keeper && !grid.ours,
        "A still keeps the grid: {grid:?}"
    );
}

/// Each agent allocates its relay from a TURN socket of its own: a restart's fresh agent
/// takes another socket, the old one is retired for the caller to replace once its delete
/// has been answered, and an allocation that gave no relay is counted and said.
#[test]
fn each_agent_allocates_from_a_fresh_turn_socket_and_a_missing_relay_is_counted() {
    let mut sim = Sim::new(&[CODE, CODE], &[0, 0], symmetric(10));
    // A TURN server that never answers (its datagrams go nowhere in the simulation).
    let node = &mut sim.nodes[0].session;
    node.config.turn = Some(TurnServer {
        addr: "203.0.113.9:3478".parse().unwrap(),
        user: "u".into(),
        pass: "p".into(),
    });
    let sockets: [SocketAddr; 2] = [
        "198.51.100.10:6000".parse().unwrap(),
        "198.51.100.10:6001".parse().unwrap(),
    ];
    for s in sockets {
        node.add_turn_socket(s);
    }
    // No path either: the controlling side (node 0) restarts after CHECKING_TIMEOUT_NS.
    sim.blackhole = true;
    sim.connect_broker();
    sim.run(sim.now + 100 * MS);
    let first = sim.nodes[0].session.peers[0]
        .turn_local
        .expect("a TURN socket");
    sim.run(sim.now + CHECKING_TIMEOUT_NS + 500 * MS);
    let session = &mut sim.nodes[0].session;
    assert_eq!(session.peers[0].stats.restarts, 1);
    let second = session.peers[0].turn_local.expect("a TURN socket");
    assert_ne!(
        first, second,
        "the fresh agent reuses the old allocation's 5-tuple"
    );
    assert_eq!(
        session.poll_retired_turn(),
        None,
        "retired before its delete was answered"
    );
    assert!(session.counters.relay_failed >= 1, "{:?}", session.counters);
    assert!(
        session.errors.iter().any(|e| e.contains("gave no relay")),
        "{:?}",
        session.errors
    );
    sim.run(sim.now + TURN_RETIRE_NS);
    let session = &mut sim.nodes[0].session;
    assert_eq!(session.poll_retired_turn(), Some(first));
    assert_eq!(session.poll_retired_turn(), None);
    // The caller's fresh socket is free for the next agent.
    session.add_turn_socket("198.51.100.10:6002".parse().unwrap());
    assert_eq!(session.turn_free.len(), 1);
}
