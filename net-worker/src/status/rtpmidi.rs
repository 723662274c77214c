//! What the status shows of an instance's RTP-MIDI side: ports, peers, counters.

use serde::{Deserialize, Serialize};

/// What the status shows about the RTP-MIDI side of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RtpMidiStatus {
    /// Our control port (data port = control + 1), when bound.
    pub control_port: Option<u16>,
    /// Why the sockets could not be opened, or a peer could not be used.
    pub errors: Vec<String>,
    /// Every known peer.
    pub peers: Vec<PeerReport>,
    /// Directory peers' host names still being looked up (or failing: see `errors`).
    #[serde(default)]
    pub resolving: Vec<String>,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Invitations refused by the access mode.
    pub refused: u64,
    /// Invitations refused because every guest slot holds a connected session.
    #[serde(default)]
    pub full: u64,
    /// Half-open guest sessions dropped for a newer invitation (an invitation flood).
    #[serde(default)]
    pub evicted: u64,
    /// Refusals not answered with a NO (over 20 a second).
    #[serde(default)]
    pub unanswered: u64,
    /// BY datagrams for sessions that are not ours.
    pub stale_bye: u64,
    /// Datagrams for no known session or SSRC.
    pub unknown: u64,
    /// Session control or RTP-MIDI for one of our sessions from an address that is not its
    /// peer (forged or misrouted): counted, never acted on.
    #[serde(default)]
    pub wrong_source: u64,
    /// RTP-MIDI packets sent.
    pub rtp_sent: u64,
    /// RTP-MIDI packets received.
    pub rtp_received: u64,
    /// Socket send errors.
    pub send_errors: u64,
    /// RTP-MIDI packets too long for the send path (sent by the worker at once).
    #[serde(default)]
    pub oversize: u64,
}

/// One peer in the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Control address.
    pub address: String,
    /// Name it announced.
    pub name: Option<String>,
    /// In the directory (we invite it) or a guest.
    pub in_directory: bool,
    /// Connected now.
    pub connected: bool,
    /// Round trip of the best recent CK exchange, µs.
    pub rtt_us: Option<f64>,
    /// Spread of recent round trips, µs.
    pub jitter_us: Option<f64>,
    /// How the last session ended.
    pub last_close: Option<String>,
    /// Connections so far.
    pub connects: u64,
    /// Our packets to it carry the recovery journal.
    pub journal: bool,
    /// Guard packets sent in this session (journal protection of the last change).
    pub guard_packets: u64,
    /// Packets the peer sent us that were lost or reordered (sequence gaps).
    pub rx_lost: u64,
    /// Of those gaps, repaired from the peer's journal.
    pub rx_repaired: u64,
    /// RTP-MIDI packets sent to it (all sessions).
    #[serde(default)]
    pub sent: u64,
    /// RTP-MIDI packets received from it and applied (current session).
    #[serde(default)]
    pub received: u64,
    /// Aligned to its measured latency: how much earlier its clock is sent for it now, ms
    /// (None: not aligned, or no round trip measured yet).
    #[serde(default)]
    pub align_ms: Option<f64>,
    /// Clock-sync (CK) exchanges measured with it so far.
    #[serde(default)]
    pub ck_exchanges: u64,
}
