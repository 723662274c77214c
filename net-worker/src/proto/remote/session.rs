//! One remote session, sans-IO: the peers that typed the same code find each other through
//! sealed MQTT rendezvous messages, reach each other with ICE (rice-proto: host,
//! server-reflexive and relayed candidates), then exchange sealed datagrams (§8.5): clock
//! probes that feed an [`OffsetEstimator`] per peer.
//!
//! The caller (the worker's driver) owns the broker connection and the UDP sockets. It feeds
//! [`Session::handle_message`] with what the broker delivers and [`Session::handle_datagram`]
//! with what its sockets read, calls [`Session::poll`] by the deadline it returned, and sends
//! what [`Session::poll_publish`] and [`Session::poll_transmit`] give. Times: `now_ns` from
//! one monotonic clock, `wall_ms` Unix milliseconds (rendezvous expiry only).
//!
//! # Rendezvous (digest §8.3)
//! Each peer publishes a retained announce on `…/peer/<me>` (republished every
//! [`ANNOUNCE_PERIOD_NS`], expiring after [`ANNOUNCE_LIFETIME_MS`]) and listens on
//! `…/peer/+` and `…/to/<me>`. Seeing a peer (announce or directed message) creates one ICE
//! agent for the pair, controlling on the side with the smaller id; its credentials and
//! candidates go to `…/to/<peer>`, trickled as they are gathered.
//!
//! # Restarts (RFC 8445 §9, ours)
//! rice-proto has no restart: a restart is a fresh agent with fresh credentials. Only the
//! controlling side decides one (its path failed, or the peer went silent for
//! [`PEER_SILENCE_NS`]), at most every [`RESTART_INTERVAL_NS`]; the controlled side follows
//! when it sees credentials it has not seen from that peer. Keys, replay windows and the
//! clock estimate belong to the pair, not the path, so they survive a restart (holdover).
//!
//! # What a stranger can do
//! Nothing that changes the session: rendezvous messages and datagrams that fail
//! authentication are dropped and counted. Datagrams reach rice-proto only when they come
//! from an address a peer told us about (or learned by an authenticated check) or are ICE
//! checks naming one of our ufrags, so unsolicited traffic cannot grow its tables.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rice_proto::agent::{Agent, AgentPoll};
use rice_proto::candidate::{Candidate, CandidatePair, CandidateType, TransportType};
use rice_proto::component::ComponentConnectionState;
use rice_proto::stream::Credentials;
use rice_proto::turn::{TurnConfig, TurnCredentials};
use stun_proto::Instant;
use stun_proto::agent::Transmit as RiceTransmit;

use super::code::SessionCode;
use super::frame::{self, Inner, MAX_DATAGRAM, OpenError, Opener, RemoteTimeline, Sealer};
use super::grid::{Grid, GridSync, LocalView};
use super::keys::{MqttKey, PeerId, RootKey};
use super::offset::{ClockSample, OffsetEstimator};
use super::probe::ProbePacer;
use super::rendezvous::{self, MAX_CANDS, MAX_PEERS, Rendezvous, RendezvousBook, Topic};
use crate::status::remote::{RemoteCounters, RemotePeerStatus, RemoteStatus};

/// Announces are republished this often.
pub const ANNOUNCE_PERIOD_NS: u64 = 60_000_000_000;
/// An announce expires this long after it was sealed.
pub const ANNOUNCE_LIFETIME_MS: u64 = 120_000;
/// A directed message expires this long after it was sealed.
pub const DIRECTED_LIFETIME_MS: u64 = 60_000;
/// A connected peer silent this long has lost its path: the controlling side restarts ICE.
/// Probes go at least four a second each way ([`super::probe::SLOW_INTERVAL_NS`]) and are
/// answered, so 2 s of silence is sixteen frames lost in a row (at 2 % loss, about once in
/// 10^27 tries): a path that died, a relay that went away or a NAT that forgot our binding,
/// not loss. The target is a recovery within 5 s of such a change; a restart costs one
/// round of checks (about a second over the WAN).
pub const PEER_SILENCE_NS: u64 = 2_000_000_000;
/// How often the keeper's last timeline is re-mapped through the offset estimate (ns).
pub const HOLDOVER_NS: u64 = 250_000_000;
/// Restarts for one peer at most this often.
pub const RESTART_INTERVAL_NS: u64 = 5_000_000_000;
/// A pair still checking this long after its agent started is restarted by the controlling
/// side: rice-proto 0.4.3 can stall for good when a nomination goes unanswered (it neither
/// retries nor fails), and a fresh agent costs one more round of checks.
pub const CHECKING_TIMEOUT_NS: u64 = 6_000_000_000;
/// A path that came up on the controlling side but has not carried one authenticated frame
/// back this long is restarted: rice-proto 0.4.3 can leave the controlled side checking for
/// good behind a NAT (a nomination that crosses the controlled side's own check on a pair
/// whose mapped address differs from its host address is logged as unknown and dropped), so
/// it never selects a pair and never answers our probes. Probes go four a second: four
/// unanswered in a row on a fresh path, not loss.
pub const UNANSWERED_NS: u64 = 1_000_000_000;
/// A TURN socket whose agent was dropped is retired this long later (its allocation's
/// delete has been answered by then), and the caller replaces it with a fresh one: a new
/// client 5-tuple at the TURN server. Reusing one would meet the old allocation wherever its
/// delete was lost (coturn keeps it up to 10 minutes and answers every Allocate from that
/// 5-tuple with 437 Allocation Mismatch, so the new agent would never get a relay), and even
/// a delete that arrived takes coturn about a second to act on.
pub const TURN_RETIRE_NS: u64 = 2_000_000_000;
/// TURN sockets the caller should hold ready: one per possible peer, and spares for the
/// restarts whose old sockets are still being retired.
pub const TURN_SOCKETS: usize = MAX_PEERS + 2;
/// A peer we have heard nothing from (rendezvous or datagram) this long is forgotten.
pub const PEER_FORGET_NS: u64 = 180_000_000_000;
/// Addresses per peer that may reach rice-proto (its candidates and learned ones).
const MAX_KNOWN: usize = 16;
/// Pings per peer whose pong we still accept.
const PINGS_REMEMBERED: usize = 8;
/// Credentials (ufrags) per peer remembered as already seen.
const UFRAGS_REMEMBERED: usize = 8;
/// Errors kept for the status.
const MAX_ERRORS: usize = 4;
/// Agent poll steps per peer per call, at most.
const DRIVE_BUDGET: usize = 512;
/// STUN's magic cookie (RFC 8489 §5).
const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// A datagram to send: from our socket bound at `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Our local address (the host socket or the TURN socket).
    pub from: SocketAddr,
    /// Where to.
    pub to: SocketAddr,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A message for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// Sealed payload.
    pub payload: Vec<u8>,
    /// Retained (announces).
    pub retain: bool,
}

/// A TURN server and its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Long-term user name.
    pub user: String,
    /// Long-term password.
    pub pass: String,
}

/// What the session runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our id (random per start).
    pub me: PeerId,
    /// The host socket's address (a routable local address and its port).
    pub host: SocketAddr,
    /// A STUN server.
    pub stun: Option<SocketAddr>,
    /// A TURN server. Each agent allocates its relay from a socket of its own (see
    /// [`Session::add_turn_socket`]).
    pub turn: Option<TurnServer>,
}

/// ICE progress of one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ice {
    Checking,
    Connected,
    Failed,
}

/// One remote peer.
struct Peer {
    id: PeerId,
    controlling: bool,
    agent: Agent,
    stream: usize,
    component: usize,
    local: Credentials,
    remote_ufrag: Option<String>,
    seen_ufrags: VecDeque<String>,
    /// Every candidate gathered for this agent (resent after a broker reconnect).
    cands: Vec<String>,
    /// How many of `cands` went out.
    cands_sent: usize,
    gathered_all: bool,
    eoc_sent: bool,
    /// Our credentials went out (with the first batch).
    creds_sent: bool,
    ice: Ice,
    pair: Option<CandidatePair>,
    /// Addresses that may reach the agent.
    known: Vec<SocketAddr>,
    /// The TURN socket its agent allocates from (None: no TURN server, or none free).
    turn_local: Option<SocketAddr>,
    sealer: Sealer,
    opener: Opener,
    offset: OffsetEstimator,
    pacer: ProbePacer,
    pings: VecDeque<u64>,
    /// The last timeline it sent before its clock offset converged.
    held: Option<RemoteTimeline>,
    /// The last timeline of its that was mapped (re-mapped through the offset estimate while
    /// its grid is the one we keep to: holdover).
    last_timeline: Option<RemoteTimeline>,
    /// When the current path came up.
    connected_ns: Option<u64>,
    /// An authenticated frame arrived since the current path came up.
    answered: bool,
    /// The last authenticated frame, or when the current path came up (ns): the path's
    /// silence, which a broker message must not hide.
    frame_heard_ns: u64,
    /// The path was taken from the peer's frames, not selected by the agent
    /// ([`adopt_path`]): the agent's own state changes no longer move it.
    adopted: bool,
    last_heard_ns: u64,
    last_restart_ns: u64,
    stats: RemotePeerStatus,
}

impl Peer {
    /// When the controlling side restarts this pair's ICE (ns): a path still checking after
    /// [`CHECKING_TIMEOUT_NS`], a failed one, a connected one silent for [`PEER_SILENCE_NS`]
    /// (those at most every [`RESTART_INTERVAL_NS`]), or one that never carried a frame back
    /// ([`Peer::unanswered_at`]).
    fn restart_at(&self) -> u64 {
        let interval = self.last_restart_ns.saturating_add(RESTART_INTERVAL_NS);
        match self.ice {
            Ice::Checking => self
                .last_restart_ns
                .saturating_add(CHECKING_TIMEOUT_NS + 1)
                .max(interval),
            Ice::Failed => interval,
            Ice::Connected => {
                let silent = self
                    .frame_heard_ns
                    .saturating_add(PEER_SILENCE_NS + 1)
                    .max(interval);
                self.unanswered_at().map_or(silent, |at| at.min(silent))
            }
        }
    }

    /// When a connected path that has carried no authenticated frame back counts as
    /// unanswered ([`UNANSWERED_NS`]); None once one came. Its own wait bounds how often
    /// this restarts (a path must come up first).
    fn unanswered_at(&self) -> Option<u64> {
        if self.ice != Ice::Connected || self.answered {
            return None;
        }
        self.connected_ns
            .map(|at| at.saturating_add(UNANSWERED_NS + 1))
    }

    /// Use `pair` for this peer's datagrams (rice sends on it) and let its remote address
    /// reach the agent.
    fn select_pair(&mut self, pair: CandidatePair) -> bool {
        let Some(mut stream) = self.agent.mut_stream(self.stream) else {
            return false;
        };
        let Some(mut component) = stream.mut_component(self.component) else {
            return false;
        };
        if component.set_selected_pair(pair.clone()).is_err() {
            return false;
        }
        remember_addr(&mut self.known, pair.remote.address);
        self.pair = Some(pair);
        true
    }
}

/// The session.
pub struct Session {
    config: SessionConfig,
    key: MqttKey,
    root: RootKey,
    code: SessionCode,
    announce: Topic,
    inbox: Topic,
    book: RendezvousBook,
    seq: u64,
    peers: Vec<Peer>,
    transmits: VecDeque<Transmit>,
    publishes: VecDeque<Publish>,
    broker_ready: bool,
    next_announce_ns: u64,
    /// When the keeper's grid is next re-mapped ([`HOLDOVER_NS`]).
    next_holdover_ns: u64,
    counters: RemoteCounters,
    local_types: Vec<String>,
    errors: VecDeque<String>,
    grid: GridSync,
    /// TURN sockets no agent uses, and those retired at the time given (ns).
    turn_free: Vec<SocketAddr>,
    turn_retiring: VecDeque<(SocketAddr, u64)>,
    /// Retired TURN sockets for the caller to close and replace.
    turn_retired: VecDeque<SocketAddr>,
    /// Tests: the controlled side's agent never reports a selected pair (rice-proto's lost
    /// nomination, which needs a NAT to happen for real).
    #[cfg(test)]
    lose_nominations: bool,
}

impl Session {
    /// A session for `code` with its root key (derived by the caller, off this thread).
    pub fn new(config: SessionConfig, code: SessionCode, root: RootKey) -> Self {
        let announce = rendezvous::announce_topic(&code, config.me);
        let inbox = rendezvous::directed_topic(&code, config.me);
        Self {
            key: root.mqtt_key(),
            root,
            announce,
            inbox,
            code,
            book: RendezvousBook::new(),
            seq: 0,
            peers: Vec::new(),
            transmits: VecDeque::new(),
            publishes: VecDeque::new(),
            broker_ready: false,
            next_announce_ns: 0,
            next_holdover_ns: 0,
            counters: RemoteCounters::default(),
            local_types: Vec::new(),
            errors: VecDeque::new(),
            grid: GridSync::new(config.me),
            turn_free: Vec::new(),
            turn_retiring: VecDeque::new(),
            turn_retired: VecDeque::new(),
            #[cfg(test)]
            lose_nominations: false,
            config,
        }
    }

    /// The topic filters to subscribe to.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![
            format!("lockstep/v1/{}/peer/+", self.code.room_text()),
            self.inbox.as_str().to_owned(),
        ]
    }

    /// Our announce topic (the will clears it).
    pub fn announce_topic(&self) -> &str {
        self.announce.as_str()
    }

    /// The broker connection is up and subscribed: announce, and send every peer we are
    /// still looking for our credentials and candidates again (directed messages sent while
    /// disconnected were lost).
    pub fn broker_ready(&mut self, now_ns: u64) {
        self.broker_ready = true;
        self.next_announce_ns = now_ns;
        for peer in &mut self.peers {
            if peer.ice != Ice::Connected {
                peer.cands_sent = 0;
                peer.creds_sent = false;
                peer.eoc_sent = false;
            }
        }
    }

    /// The broker connection went away.
    pub fn broker_lost(&mut self) {
        self.broker_ready = false;
    }

    /// A problem, for the status (the latest few).
    pub fn error(&mut self, text: String) {
        if self.errors.back() == Some(&text) {
            return;
        }
        if self.errors.len() >= MAX_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(text);
    }

    fn rice_now(&self, now_ns: u64) -> Instant {
        Instant::from_nanos(i64::try_from(now_ns).unwrap_or(i64::MAX))
    }

    /// A message the broker delivered on one of our subscriptions.
    pub fn handle_message(&mut self, topic: &str, payload: &[u8], now_ns: u64, wall_ms: u64) {
        let Some(topic) = Topic::parse(topic) else {
            self.counters.rendezvous_malformed += 1;
            return;
        };
        if topic.kind() == rendezvous::TopicKind::Announce && topic.peer() == self.config.me {
            return; // our own announce, echoed
        }
        if payload.is_empty() {
            return; // a presence cleared (a will); the session itself does not depend on it
        }
        self.book.prune(wall_ms);
        let msg = match self.book.open(&self.key, &topic, payload, wall_ms) {
            Ok(msg) => msg,
            Err(e) => {
                use rendezvous::OpenError as E;
                let c = &mut self.counters;
                match e {
                    E::Forged => c.rendezvous_forged += 1,
                    E::Stale => c.rendezvous_stale += 1,
                    E::Expired | E::FromFuture => c.rendezvous_expired += 1,
                    E::Full => c.rendezvous_full += 1,
                    _ => c.rendezvous_malformed += 1,
                }
                return;
            }
        };
        if msg.peer == self.config.me {
            // Our own id on someone else's message: a member replaying us. Refuse.
            self.counters.rendezvous_malformed += 1;
            return;
        }
        self.counters.rendezvous_accepted += 1;
        let index = match self.peers.iter().position(|p| p.id == msg.peer) {
            Some(i) => i,
            None => {
                if self.peers.len() >= MAX_PEERS - 1 {
                    self.counters.rendezvous_full += 1;
                    return;
                }
                let peer = self.new_peer(msg.peer, now_ns);
                self.peers.push(peer);
                self.peers.len() - 1
            }
        };
        self.peers[index].last_heard_ns = self.peers[index].last_heard_ns.max(now_ns);
        if topic.kind() == rendezvous::TopicKind::Directed {
            self.apply_directed(index, &msg, now_ns);
        }
    }

    /// Credentials and candidates from a peer.
    fn apply_directed(&mut self, index: usize, msg: &Rendezvous, now_ns: u64) {
        let seen = self.peers[index].seen_ufrags.contains(&msg.ufrag);
        let current = self.peers[index].remote_ufrag.clone();
        match current {
            Some(ref ufrag) if *ufrag == msg.ufrag => {}
            _ if seen => return, // credentials of an agent we already replaced
            None => {}
            Some(_) => {
                if self.peers[index].controlling {
                    // The controlled side only follows our restarts; a change it made on its
                    // own is not acted on (our own restart timer covers a lost path).
                    return;
                }
                // The controlling side restarted: a fresh agent for its new credentials.
                self.restart(index, now_ns);
            }
        }
        let peer = &mut self.peers[index];
        if peer.remote_ufrag.is_none() {
            peer.remote_ufrag = Some(msg.ufrag.clone());
            remember(&mut peer.seen_ufrags, msg.ufrag.clone(), UFRAGS_REMEMBERED);
            if let Some(mut stream) = peer.agent.mut_stream(peer.stream) {
                stream.set_remote_credentials(Credentials::new(msg.ufrag.clone(), msg.pwd.clone()));
            }
        }
        for line in &msg.cands {
            let text = if line.starts_with("a=") {
                line.clone()
            } else {
                format!("a={line}")
            };
            let Ok(candidate) = text.parse::<Candidate>() else {
                self.counters.rendezvous_malformed += 1;
                continue;
            };
            if candidate.transport_type != TransportType::Udp {
                continue;
            }
            remember_addr(&mut peer.known, candidate.address);
            if let Some(mut stream) = peer.agent.mut_stream(peer.stream) {
                stream.add_remote_candidate(candidate);
            }
        }
        if msg.eoc
            && let Some(mut stream) = peer.agent.mut_stream(peer.stream)
        {
            stream.end_of_remote_candidates();
        }
    }

    /// A fresh agent for peer `index` (same keys, clock estimate and counters).
    fn restart(&mut self, index: usize, now_ns: u64) {
        let mut old = self.peers.swap_remove(index);
        self.close_agent(&mut old, now_ns);
        let mut fresh = self.new_peer(old.id, now_ns);
        fresh.seen_ufrags = old.seen_ufrags;
        fresh.last_heard_ns = old.last_heard_ns;
        fresh.last_restart_ns = now_ns;
        fresh.sealer = old.sealer;
        fresh.opener = old.opener;
        fresh.offset = old.offset;
        fresh.held = old.held;
        fresh.last_timeline = old.last_timeline;
        fresh.stats = old.stats;
        fresh.stats.restarts += 1;
        self.peers.push(fresh);
        let last = self.peers.len() - 1;
        self.peers.swap(index, last);
    }

    /// Close a dropped peer's agent: its TURN allocation is deleted (a Refresh with lifetime
    /// 0, so the relay frees it now rather than at its expiry) and its TURN socket retired.
    fn close_agent(&mut self, old: &mut Peer, now_ns: u64) {
        let rice_now = self.rice_now(now_ns);
        old.agent.close(rice_now);
        // Its transmits are paced (Ta): step the clock past the pacing so the delete leaves
        // now; the agent is dropped right after, so nothing else depends on that clock.
        let ta = old.agent.timing_advance();
        for step in 0..8u32 {
            let at = rice_now + ta * step;
            take_transmits(&mut old.agent, at, &mut self.transmits);
            if matches!(old.agent.poll(at), AgentPoll::Closed) {
                break;
            }
        }
        if let Some(local) = old.turn_local.take() {
            self.turn_retiring
                .push_back((local, now_ns.saturating_add(TURN_RETIRE_NS)));
        }
    }

    /// A TURN socket the caller opened for the session (address as the TURN server should
    /// see it before NAT: the same routable local address as the host socket). Give it
    /// [`TURN_SOCKETS`] at the start and a fresh one for each [`Session::poll_retired_turn`].
    pub fn add_turn_socket(&mut self, local: SocketAddr) {
        if !self.turn_free.contains(&local) {
            self.turn_free.push(local);
        }
    }

    /// A TURN socket the session no longer needs: close it (and open a fresh one).
    pub fn poll_retired_turn(&mut self) -> Option<SocketAddr> {
        self.turn_retired.pop_front()
    }

    fn new_peer(&mut self, id: PeerId, now_ns: u64) -> Peer {
        let controlling = self.config.me < id;
        // Checks and server requests: 6 transmissions, 250 ms doubling to 1 s, then 1 s for
        // the last answer (≈ 4.75 s); an unreachable STUN or TURN server gives up as fast.
        // Set on the builder: rice-proto 0.4.3 reads the builder's value when gathering.
        let mut agent = Agent::builder()
            .trickle_ice(true)
            .controlling(controlling)
            .set_request_retransmits(
                std::time::Duration::from_millis(250),
                std::time::Duration::from_millis(1000),
                6,
                std::time::Duration::from_millis(1000),
            )
            .build();
        let stream = agent.add_stream();
        let local = Credentials::new(rice_proto::random_string(8), rice_proto::random_string(24));
        let mut component = 1;
        let stun: Vec<(TransportType, SocketAddr)> = self
            .config
            .stun
            .iter()
            .map(|s| (TransportType::Udp, *s))
            .collect();
        // One TURN allocation per client 5-tuple (RFC 5766 §2.2): each agent allocates from
        // a socket of its own, never one an earlier agent used (see TURN_RETIRE_NS).
        let turn_local = match &self.config.turn {
            Some(_) => {
                let free = self.turn_free.pop();
                if free.is_none() {
                    self.counters.relay_unavailable += 1;
                    self.error(format!(
                        "no free TURN socket: peer {id} goes without a relay"
                    ));
                }
                free
            }
            None => None,
        };
        let turn: Vec<(SocketAddr, TurnConfig)> = match (&self.config.turn, turn_local) {
            (Some(server), Some(local_addr)) => vec![(
                local_addr,
                TurnConfig::new(
                    TransportType::Udp,
                    server.addr,
                    TurnCredentials::new(&server.user, &server.pass),
                ),
            )],
            _ => Vec::new(),
        };
        let mut errors = Vec::new();
        if let Some(mut s) = agent.mut_stream(stream) {
            match s.add_component() {
                Ok(id) => component = id,
                Err(e) => errors.push(format!("ICE: {e:?}")),
            }
            s.set_local_credentials(local.clone());
            if let Some(mut c) = s.mut_component(component) {
                let turn_refs: Vec<(SocketAddr, &TurnConfig)> =
                    turn.iter().map(|(a, c)| (*a, c)).collect();
                if let Err(e) = c.gather_candidates(
                    &[(TransportType::Udp, self.config.host)],
                    &stun,
                    &turn_refs,
                ) {
                    errors.push(format!("ICE gathering: {e:?}"));
                }
            }
        }
        for e in errors {
            self.error(e);
        }
        let mut known = Vec::new();
        if let Some(s) = self.config.stun {
            known.push(s);
        }
        if let Some(server) = &self.config.turn {
            known.push(server.addr);
        }
        Peer {
            id,
            controlling,
            agent,
            stream,
            component,
            local,
            remote_ufrag: None,
            seen_ufrags: VecDeque::new(),
            cands: Vec::new(),
            cands_sent: 0,
            gathered_all: false,
            eoc_sent: false,
            creds_sent: false,
            ice: Ice::Checking,
            pair: None,
            known,
            turn_local,
            sealer: Sealer::new(&self.root.datagram_key(self.config.me, id), 0),
            opener: Opener::new(&self.root.datagram_key(id, self.config.me), 0),
            offset: OffsetEstimator::new(),
            pacer: ProbePacer::new(),
            pings: VecDeque::new(),
            held: None,
            last_timeline: None,
            connected_ns: None,
            answered: false,
            frame_heard_ns: now_ns,
            adopted: false,
            last_heard_ns: now_ns,
            last_restart_ns: now_ns,
            stats: RemotePeerStatus {
                id: id.to_string(),
                ..RemotePeerStatus::default()
            },
        }
    }

    /// A datagram one of our sockets read (`local`: that socket's address).
    pub fn handle_datagram(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        now_ns: u64,
    ) {
        self.counters.datagrams_read += 1;
        let from_turn = self
            .config
            .turn
            .as_ref()
            .is_some_and(|server| server.addr == from);
        if from_turn
            && let Some(owner) = self.peers.iter().position(|p| p.turn_local == Some(local))
        {
            // The TURN server on an agent's own socket: allocations, permissions and relayed
            // data (ChannelData or Data indications), for that agent.
            self.offer_to_agents(vec![owner], local, from, data, false, now_ns);
            return;
        }
        if from_turn
            && (self.turn_free.contains(&local)
                || self.turn_retiring.iter().any(|(a, _)| *a == local))
        {
            // The server answering a dropped agent (its allocation's delete): nothing to do.
            return;
        }
        if frame::is_frame(data) {
            // Direct path: the peer whose selected pair ends at `from`, or (its first probe
            // can arrive before our side learns the nominated pair) one that knows `from`.
            let found = self
                .peers
                .iter()
                .position(|p| {
                    p.pair.as_ref().is_some_and(|pair| {
                        pair.remote.address == from
                            && pair.local.candidate_type != CandidateType::Relayed
                    })
                })
                .or_else(|| self.peers.iter().position(|p| p.known.contains(&from)));
            match found {
                Some(i) => self.open_frame(i, data, Some((local, from)), now_ns),
                None => self.counters.datagrams_malformed += 1,
            }
            return;
        }
        let Some(username) = stun_info(data) else {
            self.counters.datagrams_malformed += 1;
            return;
        };
        // Which agents may see it: a check naming one of our ufrags goes to that pair (and
        // teaches it the sender's address); anything else only from an address a pair knows.
        let ufrag = username.and_then(|u| u.split(|&b| b == b':').next());
        let target: Vec<usize> = match ufrag {
            Some(ufrag) => self
                .peers
                .iter()
                .position(|p| p.local.ufrag.as_bytes() == ufrag)
                .into_iter()
                .collect(),
            None => (0..self.peers.len())
                .filter(|&i| self.peers[i].known.contains(&from))
                .collect(),
        };
        self.offer_to_agents(target, local, from, data, username.is_some(), now_ns);
    }

    /// Offer a datagram to the agents of `target` until one takes it; frames it yields are
    /// opened. `learn`: an authenticated check teaches that pair the sender's address.
    fn offer_to_agents(
        &mut self,
        target: Vec<usize>,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        learn: bool,
        now_ns: u64,
    ) {
        if target.is_empty() {
            self.counters.datagrams_malformed += 1;
            return;
        }
        let rice_now = self.rice_now(now_ns);
        for i in target {
            let mut frames = Vec::new();
            let handled = {
                let peer = &mut self.peers[i];
                let Some(mut stream) = peer.agent.mut_stream(peer.stream) else {
                    continue;
                };
                let reply = stream.handle_incoming_data(
                    peer.component,
                    RiceTransmit::new(data, TransportType::Udp, from, local),
                    rice_now,
                );
                let handled = reply.handled;
                if let Some(d) = reply.data {
                    frames.push(d.as_ref().to_vec());
                }
                // Always drained: rice-proto panics on the next datagram otherwise.
                while let Some(r) = stream.poll_recv() {
                    frames.push(r.data);
                }
                if handled && learn {
                    remember_addr(&mut peer.known, from);
                }
                handled
            };
            for f in frames {
                if frame::is_frame(&f) {
                    self.open_frame(i, &f, None, now_ns);
                } else {
                    self.counters.datagrams_malformed += 1;
                }
            }
            if handled {
                break;
            }
        }
    }

    /// Open a frame from peer `index`; `direct`: (our socket, its address) when it came
    /// straight from the peer rather than through our TURN allocation.
    fn open_frame(
        &mut self,
        index: usize,
        data: &[u8],
        direct: Option<(SocketAddr, SocketAddr)>,
        now_ns: u64,
    ) {
        let mut plain = [0u8; MAX_DATAGRAM];
        let peer = &mut self.peers[index];
        let inner = match peer.opener.open(data, &mut plain) {
            Ok(opened) => opened.inner,
            Err(e) => {
                match e {
                    OpenError::Forged | OpenError::WrongEpoch(_) => {
                        self.counters.datagrams_forged += 1;
                    }
                    OpenError::Replayed | OpenError::TooOld => {
                        self.counters.datagrams_replayed += 1
                    }
                    _ => self.counters.datagrams_malformed += 1,
                }
                return;
            }
        };
        peer.last_heard_ns = now_ns;
        peer.frame_heard_ns = now_ns;
        peer.answered = true;
        peer.stats.datagrams_in += 1;
        if let Some((local, from)) = direct
            && !peer.controlling
            && peer.ice != Ice::Connected
            && adopt_path(peer, local, from, now_ns)
        {
            self.counters.paths_adopted += 1;
        }
        let peer = &mut self.peers[index];
        match inner {
            Inner::Ping { t1_ns } => {
                let pong = Inner::Pong {
                    t1_ns,
                    t2_ns: now_ns,
                    t3_ns: now_ns,
                };
                self.send_inner(index, &pong, now_ns);
            }
            Inner::Pong {
                t1_ns,
                t2_ns,
                t3_ns,
            } => {
                let Some(at) = peer.pings.iter().position(|&t| t == t1_ns) else {
                    peer.stats.samples_rejected += 1;
                    return;
                };
                peer.pings.remove(at);
                peer.stats.pongs += 1;
                let sample = ClockSample {
                    t1_ns,
                    t2_ns,
                    t3_ns,
                    t4_ns: now_ns,
                };
                if peer.offset.handle_sample(sample).is_err() {
                    peer.stats.samples_rejected += 1;
                }
                // A timeline that waited for this peer's clock: mapped now.
                if let (Some(offset), Some(timeline)) = (peer.offset.offset_at(now_ns), peer.held) {
                    peer.held = None;
                    peer.last_timeline = Some(timeline);
                    let id = peer.id;
                    self.grid.handle(now_ns, id, &timeline, offset);
                }
            }
            Inner::Timeline(timeline) => match peer.offset.offset_at(now_ns) {
                Some(offset) => {
                    peer.last_timeline = Some(timeline);
                    let id = peer.id;
                    self.grid.handle(now_ns, id, &timeline, offset);
                }
                None => {
                    peer.held = Some(timeline);
                    self.grid.held();
                }
            },
            Inner::Bye => {
                let id = peer.id;
                let mut old = self.peers.remove(index);
                self.close_agent(&mut old, now_ns);
                self.error(format!("peer {id} left the session"));
            }
            Inner::RtpMidi(_) | Inner::Rs(_) => {}
        }
    }

    /// Seal `inner` for peer `index` and queue it on its selected path.
    fn send_inner(&mut self, index: usize, inner: &Inner<'_>, now_ns: u64) {
        let rice_now = self.rice_now(now_ns);
        let peer = &mut self.peers[index];
        let mut buf = [0u8; MAX_DATAGRAM];
        let Ok(len) = peer.sealer.seal(inner, &mut buf) else {
            return;
        };
        let Some(mut stream) = peer.agent.mut_stream(peer.stream) else {
            return;
        };
        let Some(mut component) = stream.mut_component(peer.component) else {
            return;
        };
        if let Ok(t) = component.send(&buf[..len], rice_now) {
            peer.stats.datagrams_out += 1;
            self.transmits.push_back(Transmit {
                from: t.from,
                to: t.to,
                data: t.data.into_vec(),
            });
        }
    }

    /// Run everything due; returns when to call again (ns).
    pub fn poll(&mut self, now_ns: u64, wall_ms: u64) -> u64 {
        let mut due = now_ns.saturating_add(ANNOUNCE_PERIOD_NS);
        if self.broker_ready && now_ns >= self.next_announce_ns {
            self.next_announce_ns = now_ns + ANNOUNCE_PERIOD_NS;
            let creds = (rice_proto::random_string(8), rice_proto::random_string(24));
            self.publish(
                &self.announce.clone(),
                creds,
                Vec::new(),
                false,
                true,
                wall_ms,
                ANNOUNCE_LIFETIME_MS,
            );
        }
        if self.broker_ready {
            due = due.min(self.next_announce_ns);
        }
        while let Some(&(local, at)) = self.turn_retiring.front() {
            if now_ns < at {
                due = due.min(at);
                break;
            }
            self.turn_retiring.pop_front();
            self.turn_retired.push_back(local);
        }
        // Forget peers gone quiet; restart paths that failed or fell silent.
        let mut i = 0;
        while i < self.peers.len() {
            let p = &self.peers[i];
            if now_ns.saturating_sub(p.last_heard_ns) > PEER_FORGET_NS {
                let id = p.id;
                let mut old = self.peers.remove(i);
                self.close_agent(&mut old, now_ns);
                self.error(format!("peer {id} is gone (silent for 3 minutes)"));
                continue;
            }
            let unanswered = p.unanswered_at().is_some_and(|at| now_ns >= at);
            if p.controlling && now_ns >= p.restart_at() {
                if unanswered {
                    let id = p.id;
                    self.counters.paths_unanswered += 1;
                    self.error(format!(
                        "peer {id}: the path came up but nothing came back; restarting ICE"
                    ));
                }
                self.restart(i, now_ns);
            }
            // Due even when nothing else wakes the session (a dead path has no agent timers
            // left after ~5 s).
            if self.peers[i].controlling {
                due = due.min(self.peers[i].restart_at());
            }
            i += 1;
        }
        for i in 0..self.peers.len() {
            due = due.min(self.drive(i, now_ns));
            self.flush_candidates(i, wall_ms);
            due = due.min(self.probe(i, now_ns));
        }
        if self.peers.iter().any(|p| p.ice == Ice::Connected) {
            while let Some(timeline) = self.grid.poll_send(now_ns) {
                for i in 0..self.peers.len() {
                    if self.peers[i].ice == Ice::Connected {
                        self.send_inner(i, &Inner::Timeline(timeline), now_ns);
                    }
                }
            }
            if let Some(at) = self.grid.next_send_ns() {
                due = due.min(at);
            }
        }
        due.max(now_ns)
    }

    /// What the local Link session shows at `now_ns` (None: Link is off). Call every pass,
    /// after applying [`Session::take_grid`].
    pub fn observe_grid(&mut self, now_ns: u64, view: Option<LocalView>) {
        // A peer whose clock we know stays present through an outage (until it says bye or
        // is forgotten): its grid is held over through the offset estimate meanwhile.
        let present = self
            .peers
            .iter()
            .filter(|p| p.offset.converged())
            .map(|p| p.id);
        self.grid.set_present(present);
        if now_ns >= self.next_holdover_ns {
            self.next_holdover_ns = now_ns.saturating_add(HOLDOVER_NS);
            self.hold_over(now_ns);
        }
        let in_session = self.peers.iter().any(|p| p.ice == Ice::Connected);
        self.grid.observe(now_ns, view, in_session);
    }

    /// Map the keeper's last timeline through our estimate of its clock now: between its
    /// repeats, and through an outage, the grid follows the keeper's clock at the drift the
    /// estimator measured instead of freewheeling on ours.
    fn hold_over(&mut self, now_ns: u64) {
        let keeper = self.grid.keeper();
        let Some(peer) = self.peers.iter().find(|p| p.id == keeper) else {
            return;
        };
        if let (Some(timeline), Some(offset)) = (peer.last_timeline, peer.offset.offset_at(now_ns))
            && self.grid.holds(&timeline)
        {
            self.grid.handle(now_ns, keeper, &timeline, offset);
        }
    }

    /// Play the shared grid `align_ms` later here (see [`GridSync::set_shift`]).
    pub fn set_align(&mut self, align_ms: u32) {
        self.grid.set_shift(i64::from(align_ms) * 1_000_000);
    }

    /// The local Link peer joined another Link session (see [`GridSync::link_joined`]).
    pub fn link_joined(&mut self, now_ns: u64, view: LocalView) {
        self.grid.link_joined(now_ns, view);
    }

    /// The local Link peer opened and settled (see [`GridSync::link_opened`]).
    pub fn link_opened(&mut self, now_ns: u64, view: LocalView, found: bool) {
        self.grid.link_opened(now_ns, view, found);
    }

    /// A grid the local Link session should take now (adopted from a peer, or re-aligned).
    pub fn take_grid(&mut self) -> Option<Grid> {
        self.grid.take_pending()
    }

    /// When the grid next needs sending (ns), for the caller's deadline after a local change;
    /// None while no peer is connected.
    pub fn grid_due(&self) -> Option<u64> {
        self.peers
            .iter()
            .any(|p| p.ice == Ice::Connected)
            .then(|| self.grid.next_send_ns())
            .flatten()
    }

    /// Pings on a connected path; keepalive. Returns the next probe time.
    fn probe(&mut self, index: usize, now_ns: u64) -> u64 {
        let peer = &mut self.peers[index];
        if peer.ice != Ice::Connected || peer.pair.is_none() {
            return now_ns.saturating_add(RESTART_INTERVAL_NS);
        }
        let at = peer.pacer.next_probe(now_ns);
        if now_ns >= at {
            peer.pacer.on_sent(now_ns);
            remember(&mut peer.pings, now_ns, PINGS_REMEMBERED);
            peer.stats.pings += 1;
            self.send_inner(index, &Inner::Ping { t1_ns: now_ns }, now_ns);
            return self.peers[index].pacer.next_probe(now_ns);
        }
        // Probes go four times a second: they keep the NAT bindings open too (well inside
        // common 30 s UDP timers and ICE's 15 s keepalive).
        at
    }

    /// Drive peer `index`'s agent; returns its deadline.
    fn drive(&mut self, index: usize, now_ns: u64) -> u64 {
        let rice_now = self.rice_now(now_ns);
        let mut errors = Vec::new();
        let mut local_types = Vec::new();
        let peer = &mut self.peers[index];
        let mut due = u64::MAX;
        for _ in 0..DRIVE_BUDGET {
            let sent = take_transmits(&mut peer.agent, rice_now, &mut self.transmits);
            match peer.agent.poll(rice_now) {
                AgentPoll::WaitUntil(at) => {
                    if !sent {
                        let ns = (at - Instant::ZERO).as_nanos();
                        due = u64::try_from(ns).unwrap_or(u64::MAX);
                        break;
                    }
                }
                AgentPoll::Closed => break,
                AgentPoll::GatheredCandidate(g) => {
                    let c = &g.gathered.candidate;
                    local_types.push(c.candidate_type.to_string());
                    let sdp = c.to_sdp_string();
                    if let Some(mut s) = peer.agent.mut_stream(g.stream_id) {
                        s.add_local_gathered_candidate(g.gathered);
                    }
                    if peer.cands.len() < 4 * MAX_CANDS {
                        peer.cands.push(sdp);
                    }
                }
                AgentPoll::GatheringComplete(c) => {
                    if let Some(mut s) = peer.agent.mut_stream(c.stream_id) {
                        s.end_of_local_candidates();
                        // The TURN server refused or never answered the allocation: say so
                        // (rice-proto only logs it), the peer may still connect directly.
                        if peer.turn_local.is_some()
                            && !peer.gathered_all
                            && !s
                                .local_candidates()
                                .any(|c| c.candidate_type == CandidateType::Relayed)
                        {
                            self.counters.relay_failed += 1;
                            errors.push(format!(
                                "the TURN server gave no relay for peer {}",
                                peer.id
                            ));
                        }
                    }
                    peer.gathered_all = true;
                }
                // An adopted path stays until the controlling side restarts the pair.
                AgentPoll::ComponentStateChange(_) if peer.adopted => {}
                AgentPoll::SelectedPair(_) if peer.adopted => {}
                #[cfg(test)]
                AgentPoll::ComponentStateChange(_) | AgentPoll::SelectedPair(_)
                    if self.lose_nominations && !peer.controlling => {}
                AgentPoll::ComponentStateChange(c) => {
                    peer.ice = match c.state {
                        ComponentConnectionState::Connected => Ice::Connected,
                        ComponentConnectionState::Failed => {
                            self.counters.ice_failed += 1;
                            errors.push(format!("no path to peer {} (ICE failed)", peer.id));
                            Ice::Failed
                        }
                        _ => Ice::Checking,
                    };
                    if peer.ice == Ice::Connected {
                        peer.last_heard_ns = now_ns;
                        peer.frame_heard_ns = now_ns;
                        peer.pacer.restart();
                        peer.connected_ns = Some(now_ns);
                        peer.answered = false;
                    } else {
                        peer.connected_ns = None;
                    }
                }
                AgentPoll::SelectedPair(p) => {
                    peer.select_pair(p.selected.candidate_pair().clone());
                }
                AgentPoll::AllocateSocket(s) => {
                    // TCP only; we gather over UDP.
                    if let Some(mut st) = peer.agent.mut_stream(s.stream_id) {
                        st.allocated_socket(
                            s.component_id,
                            s.transport,
                            s.from,
                            s.to,
                            Err(stun_proto::agent::StunError::ResourceNotFound),
                            rice_now,
                        );
                    }
                }
                AgentPoll::RemoveSocket(_) => {}
            }
        }
        for t in local_types {
            if !self.local_types.contains(&t) {
                self.local_types.push(t);
            }
        }
        for e in errors {
            self.error(e);
        }
        due
    }

    /// Send peer `index` our credentials and the candidates it has not had.
    fn flush_candidates(&mut self, index: usize, wall_ms: u64) {
        if !self.broker_ready {
            return;
        }
        let peer = &self.peers[index];
        let pending = peer.cands.len() > peer.cands_sent;
        let eoc = peer.gathered_all && !peer.eoc_sent && !pending;
        if !pending && !eoc && peer.creds_sent {
            return;
        }
        let end = peer.cands.len().min(peer.cands_sent + MAX_CANDS);
        let batch = peer.cands[peer.cands_sent..end].to_vec();
        let last = end == peer.cands.len() && peer.gathered_all;
        let creds = (peer.local.ufrag.clone(), peer.local.passwd.clone());
        let topic = rendezvous::directed_topic(&self.code, peer.id);
        if self.publish(
            &topic,
            creds,
            batch,
            last,
            false,
            wall_ms,
            DIRECTED_LIFETIME_MS,
        ) {
            let peer = &mut self.peers[index];
            peer.cands_sent = end;
            peer.creds_sent = true;
            peer.eoc_sent |= last;
        }
    }

    /// Seal and queue one rendezvous message. False if it could not be sealed.
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        topic: &Topic,
        (ufrag, pwd): (String, String),
        cands: Vec<String>,
        eoc: bool,
        retain: bool,
        wall_ms: u64,
        lifetime_ms: u64,
    ) -> bool {
        self.seq += 1;
        let msg = Rendezvous {
            v: rendezvous::PAYLOAD_VERSION,
            peer: self.config.me,
            seq: self.seq,
            ts: wall_ms,
            exp: wall_ms + lifetime_ms,
            ufrag,
            pwd,
            cands,
            eoc,
        };
        match rendezvous::seal_random(&self.key, topic, &msg) {
            Ok(payload) => {
                self.publishes.push_back(Publish {
                    topic: topic.as_str().to_owned(),
                    payload,
                    retain,
                });
                true
            }
            Err(e) => {
                self.error(format!("cannot seal a rendezvous message: {e}"));
                false
            }
        }
    }

    /// Reading a socket failed (an ICMP report of an earlier send, usually): counted.
    pub fn read_failed(&mut self) {
        self.counters.read_errors += 1;
    }

    /// A datagram could not be sent (counted; the text joins the status's errors).
    pub fn send_failed(&mut self, why: String) {
        self.counters.send_errors += 1;
        self.error(why);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next message for the broker.
    pub fn poll_publish(&mut self) -> Option<Publish> {
        self.publishes.pop_front()
    }

    /// Say goodbye to every connected peer (sent with the next transmits).
    pub fn close(&mut self, now_ns: u64) {
        for i in 0..self.peers.len() {
            if self.peers[i].ice == Ice::Connected {
                self.send_inner(i, &Inner::Bye, now_ns);
            }
        }
    }

    /// What the status shows.
    pub fn status(&self, now_ns: u64) -> RemoteStatus {
        let ms = |ns: u64| ns as f64 / 1e6;
        RemoteStatus {
            room: self.code.room_text(),
            me: self.config.me.to_string(),
            state: if self.peers.iter().any(|p| p.ice == Ice::Connected) {
                "connected".into()
            } else if self.broker_ready {
                "waiting for peers".into()
            } else {
                "connecting to broker".into()
            },
            local_candidates: self.local_types.clone(),
            peers: self
                .peers
                .iter()
                .map(|p| {
                    let mut s = p.stats.clone();
                    s.ice = match p.ice {
                        Ice::Checking => "checking",
                        Ice::Connected => "connected",
                        Ice::Failed => "failed",
                    }
                    .into();
                    if let Some(pair) = &p.pair {
                        let relayed = pair.local.candidate_type == CandidateType::Relayed
                            || pair.remote.candidate_type == CandidateType::Relayed;
                        s.path = if relayed { "relayed" } else { "direct" }.into();
                        s.pair = format!(
                            "{}/{}",
                            pair.local.candidate_type, pair.remote.candidate_type
                        );
                    }
                    s.rtt_ms = p.offset.rtt_ns().map(ms);
                    s.srtt_ms = p.offset.srtt_ns().map(ms);
                    s.one_way_ms = p.offset.rtt_ns().map(|r| ms(r) / 2.0);
                    s.offset_bound_ms = s.one_way_ms;
                    s.offset_ms = p.offset.offset_at(now_ns).map(|o| o as f64 / 1e6);
                    s.drift_ppm = p.offset.drift_ppm();
                    s.converged = p.offset.converged();
                    s.samples_rejected += p.offset.rejected().total();
                    s.connected_for_ms = p
                        .connected_ns
                        .map_or(0, |since| now_ns.saturating_sub(since) / 1_000_000);
                    s
                })
                .collect(),
            counters: self.counters,
            errors: self.errors.iter().cloned().collect(),
            grid: self.grid.status(now_ns),
            ..RemoteStatus::default()
        }
    }

    /// Peer `id`'s clock estimate, once converged: its clock minus ours at `now_ns`.
    pub fn offset_ns(&self, id: PeerId, now_ns: u64) -> Option<i64> {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .and_then(|p| p.offset.offset_at(now_ns))
    }
}

/// Move every datagram `agent` has ready at `at` into `out`; true if there was any.
fn take_transmits(agent: &mut Agent, at: Instant, out: &mut VecDeque<Transmit>) -> bool {
    let mut any = false;
    while let Some(t) = agent.poll_transmit(at) {
        any = true;
        out.push_back(Transmit {
            from: t.transmit.from,
            to: t.transmit.to,
            data: t.transmit.data.into_vec(),
        });
    }
    any
}

/// Push to a bounded FIFO, dropping the oldest.
fn remember<T: PartialEq>(list: &mut VecDeque<T>, item: T, max: usize) {
    if list.contains(&item) {
        return;
    }
    if list.len() >= max {
        list.pop_front();
    }
    list.push_back(item);
}

/// The controlled side takes the path an authentic, fresh frame came by, from our host
/// socket `local` to one of the peer's own candidates `from`, when its agent has selected
/// none: rice-proto 0.4.3 behind a NAT can drop the nomination (see [`UNANSWERED_NS`]) and
/// leave the controlled side checking for good while the controlling side sends on the pair
/// it nominated. The frame proves the peer sends from `from` (only the pair's key seals it;
/// the replay window refuses a copy), and `from` must be a candidate the peer sent us, so a
/// third party cannot point the path anywhere else. Returns whether the path was taken.
fn adopt_path(peer: &mut Peer, local: SocketAddr, from: SocketAddr, now_ns: u64) -> bool {
    let Some(stream) = peer.agent.stream(peer.stream) else {
        return false;
    };
    let Some(remote) = stream
        .remote_candidates()
        .iter()
        .find(|c| c.address == from && c.transport_type == TransportType::Udp)
        .cloned()
    else {
        return false;
    };
    let Some(local) = stream
        .local_candidates()
        .find(|c| {
            c.candidate_type == CandidateType::Host
                && c.transport_type == TransportType::Udp
                && c.base_address == local
        })
        .cloned()
    else {
        return false;
    };
    if !peer.select_pair(CandidatePair::new(local, remote)) {
        return false;
    }
    peer.ice = Ice::Connected;
    peer.adopted = true;
    peer.connected_ns = Some(now_ns);
    peer.pacer.restart();
    true
}

fn remember_addr(list: &mut Vec<SocketAddr>, addr: SocketAddr) {
    if list.contains(&addr) {
        return;
    }
    if list.len() >= MAX_KNOWN {
        list.remove(0);
    }
    list.push(addr);
}

/// If `data` is a STUN message (RFC 8489 §5: top bits 00, the magic cookie, a length that
/// matches), its USERNAME attribute if it has one.
#[allow(clippy::option_option)]
fn stun_info(data: &[u8]) -> Option<Option<&[u8]>> {
    if data.len() < 20 || data[0] & 0xC0 != 0 || data[4..8] != STUN_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    if len + 20 != data.len() || len % 4 != 0 {
        return None;
    }
    let mut at = 20;
    while at + 4 <= data.len() {
        let kind = u16::from_be_bytes([data[at], data[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        let value = data.get(at + 4..at + 4 + alen)?;
        if kind == 0x0006 {
            return Some(Some(value));
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    Some(None)
}

#[cfg(test)]
mod tests;
