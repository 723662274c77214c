//! What the status shows of the remote session (`worker.remote`): the rendezvous, each remote
//! studio's path and clock, and every refusal, counted.

use serde::{Deserialize, Serialize};

/// The remote session as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteStatus {
    /// The public part of the session code (the room); the secret is never shown.
    pub room: String,
    /// Our peer id in this session (16 hex digits, new at every start).
    pub me: String,
    /// Where the clock the offsets are given in starts, on the machine's monotonic clock, ns
    /// (Linux only): lets two processes on one machine check each other's measured offset.
    pub clock_origin_ns: Option<u64>,
    /// Where the session stands: `deriving key`, `connecting to broker`, `waiting for peers`,
    /// `connected`, or `error`.
    pub state: String,
    /// The broker (`host:port`) and whether we are connected to it.
    pub broker: String,
    /// Connected to the broker and subscribed.
    pub broker_connected: bool,
    /// Times the broker connection was (re)established.
    pub broker_connects: u64,
    /// Our candidates: `host`, `srflx` (STUN told us our public address), `relay` (TURN).
    pub local_candidates: Vec<String>,
    /// The remote studios.
    pub peers: Vec<RemotePeerStatus>,
    /// Refusals and errors, counted.
    pub counters: RemoteCounters,
    /// The latest problems, newest last (at most a few), in words.
    pub errors: Vec<String>,
    /// The shared beat grid (once there is one).
    pub grid: Option<GridStatus>,
}

/// The session's shared beat grid, as this studio holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GridStatus {
    /// Tempo, BPM.
    pub tempo_bpm: f64,
    /// The grid's beat now.
    pub beat: f64,
    /// The beat within the quantum.
    pub phase: f64,
    /// Beats per quantum, as the grid's author set it.
    pub quantum: f64,
    /// Transport playing.
    pub playing: bool,
    /// The grid's version: raised by every change made in the session.
    pub generation: u64,
    /// The peer whose change this grid is (16 hex digits).
    pub author: String,
    /// The grid is ours (our change, or nobody else's yet).
    pub ours: bool,
    /// We keep the grid against drift: we are its author, or stand in for an author who
    /// left (the smallest id connected).
    pub keeper: bool,
    /// A local Link session follows the grid (Link Mode is Lead or Follow). Without one the
    /// grid is still exchanged, and taken when Link is switched on.
    pub linked: bool,
    /// The local session plays the grid this much later (the alignment setting), ms.
    pub align_ms: f64,
    /// What happened to grids, counted.
    pub counters: GridCounters,
}

/// Grid exchanges, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GridCounters {
    /// Changes made here (tempo, start/stop, beat jumps) that became the session's grid.
    pub authored: u64,
    /// Grids taken from peers (a newer change).
    pub adopted: u64,
    /// Times the local session was moved back onto the grid (drift, the author's re-anchors).
    pub realigned: u64,
    /// Times the local Link peer joined another LAN session while in the remote session, and
    /// the grid was put back into it.
    pub reasserted: u64,
    /// Older grids peers sent (a change that lost to a newer one): ignored.
    pub stale: u64,
    /// Timelines out of bounds (a time origin more than a day from now, a generation leap
    /// of more than 2^32): ignored.
    pub refused: u64,
    /// Timelines held until the sender's clock offset converged.
    pub held: u64,
    /// Timelines sent (to all connected peers at once).
    pub sent: u64,
}

/// One remote studio.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemotePeerStatus {
    /// Its peer id (16 hex digits).
    pub id: String,
    /// ICE: `gathering`, `checking`, `connected`, `failed`.
    pub ice: String,
    /// `direct` or `relayed` once connected, else empty.
    pub path: String,
    /// The selected pair's candidate types, ours then theirs (`host`, `srflx`, `prflx`,
    /// `relay`).
    pub pair: String,
    /// Round trip of the best recent probe (the one the offset comes from), ms.
    pub rtt_ms: Option<f64>,
    /// Smoothed round trip, ms.
    pub srtt_ms: Option<f64>,
    /// Half the best round trip: the one-way delay if the path is symmetric, ms.
    pub one_way_ms: Option<f64>,
    /// Its clock minus ours, ms (published once converged; slewed, never jumps).
    pub offset_ms: Option<f64>,
    /// How wrong `offset_ms` can be at most, from the round trip it came from (half of it):
    /// no clock sync can see how a path's delay splits between the two directions.
    pub offset_bound_ms: Option<f64>,
    /// Its clock's rate against ours, parts per million (0 until a minute of buckets).
    pub drift_ppm: f64,
    /// Enough probes for the offset to be published.
    pub converged: bool,
    /// Probes sent.
    pub pings: u64,
    /// Answers taken.
    pub pongs: u64,
    /// Probe samples the estimator refused.
    pub samples_rejected: u64,
    /// Sealed datagrams sent to it.
    pub datagrams_out: u64,
    /// Sealed datagrams opened from it.
    pub datagrams_in: u64,
    /// ICE restarts for this peer (a path failed or fell silent).
    pub restarts: u64,
    /// How long the current path has been up, ms (0 while not connected).
    pub connected_for_ms: u64,
}

/// Everything refused, by reason. None of these changes the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteCounters {
    /// Rendezvous messages accepted.
    pub rendezvous_accepted: u64,
    /// Rendezvous messages that failed authentication (another code, tampering, moved topic).
    pub rendezvous_forged: u64,
    /// Replayed or reordered rendezvous messages (sequence not above the last).
    pub rendezvous_stale: u64,
    /// Expired rendezvous messages, or from too far in the future.
    pub rendezvous_expired: u64,
    /// Authentic but malformed rendezvous messages, or not ours (other versions, garbage).
    pub rendezvous_malformed: u64,
    /// New peers refused because the session already has the most it takes.
    pub rendezvous_full: u64,
    /// Datagrams that failed authentication.
    pub datagrams_forged: u64,
    /// Datagrams replayed, or too old for the replay window.
    pub datagrams_replayed: u64,
    /// Datagrams that are not Lockstep frames or malformed (counted, dropped).
    pub datagrams_malformed: u64,
    /// ICE agents that failed to find any path.
    pub ice_failed: u64,
    /// Paths that came up but carried nothing back, restarted (see the session's
    /// `UNANSWERED_NS`).
    pub paths_unanswered: u64,
    /// Paths the controlled side took from the controlling side's frames because its own
    /// agent selected none (see the session's `adopt_path`).
    pub paths_adopted: u64,
    /// Agents whose TURN allocation gave no relayed candidate (refused, or the server did
    /// not answer).
    pub relay_failed: u64,
    /// Agents that went without a relay because no TURN socket was free.
    pub relay_unavailable: u64,
    /// Datagrams our sockets refused to send (buffer full, no route).
    pub send_errors: u64,
    /// Datagrams read from our sockets (host and TURN).
    pub datagrams_read: u64,
    /// Errors reading our sockets (ICMP reports of earlier sends).
    pub read_errors: u64,
    /// Broker messages dropped because more arrived at once than the client queues (64).
    pub broker_dropped: u64,
}
