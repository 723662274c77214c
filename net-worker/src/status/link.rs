//! What the status shows of Ableton Link, and the Link Mode parameter's values.

use serde::{Deserialize, Serialize};

/// Link Mode as the plugin's parameter has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Not in Link.
    #[default]
    Off,
    /// The DAW leads.
    Lead,
    /// Follow the session.
    Follow,
}

impl LinkMode {
    /// From the parameter's normalized value (Off, Lead, Follow).
    pub fn from_normalized(v: f64) -> Self {
        match (v * 2.0).round() as i64 {
            i64::MIN..=0 => Self::Off,
            1 => Self::Lead,
            _ => Self::Follow,
        }
    }
}

/// What the status shows about Link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The mode of the instance that decides (the first one not Off).
    pub mode: LinkMode,
    /// The interfaces Link runs on (addresses, comma separated).
    pub interface: String,
    /// Session id (hex).
    pub session: String,
    /// Peers heard, and peers in our session.
    pub peers: usize,
    /// Peers in our session.
    pub session_peers: usize,
    /// Session tempo, BPM.
    pub tempo: f64,
    /// Session beat now.
    pub beat: f64,
    /// Phase in the quantum now (0..quantum).
    pub phase: f64,
    /// Quantum, beats.
    pub quantum: f64,
    /// Session playing.
    pub playing: bool,
    /// Sessions joined.
    pub joins: u64,
    /// Tempo changes this process published.
    pub published: u64,
    /// DAW beats forced into the session (starts and jumps).
    pub forced: u64,
    /// Times the session was put on a remote session's shared grid (adopted or re-aligned).
    pub remote_grids: u64,
    /// Malformed or foreign-group datagrams.
    pub malformed: u64,
    /// ALIVEs / RESPONSEs with an impossible timeline (tempo outside 20–999 BPM, absurd
    /// origins): dropped before they touch any state.
    #[serde(default)]
    pub implausible: u64,
    /// New peers not taken because 64 are known already.
    #[serde(default)]
    pub peers_refused: u64,
    /// Link time (µs, [`now_micros`]'s clock) at which `beat` and `phase` were taken.
    pub at_micros: i64,
    /// The DAW's beat minus the session's at the same moment, ms (DAW leads, playing).
    pub offset_ms: Option<f64>,
    /// The session re-measured (30 s period), and its last correction, µs.
    pub remeasures: u64,
    /// The last re-measurement's correction of our clock offset, µs.
    pub last_correction_us: f64,
    /// In Follow: the Link-driven clock of the deciding instance.
    pub follow: Option<crate::clock::link_clock::LinkClockStats>,
    /// Why Link is not running, if it is not.
    pub error: Option<String>,
    /// The DAW cannot be driven by a plugin: in Follow, only Lockstep's outputs follow.
    pub note: Option<String>,
}
