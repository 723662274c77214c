//! What the status shows of OSC control: port, counters, subscribers, recent messages.

use serde::{Deserialize, Serialize};

/// Counters and recent activity for the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OscStatus {
    /// The UDP port we listen on, when open.
    pub port: Option<u16>,
    /// Why the port is not what the settings asked for, or not open.
    pub errors: Vec<String>,
    /// Packets received (before any check).
    pub received: u64,
    /// Messages that set a parameter.
    pub applied: u64,
    /// Packets that did not decode.
    pub malformed: u64,
    /// Messages whose address matched nothing.
    pub unknown_address: u64,
    /// Messages with an argument of the wrong type.
    pub wrong_type: u64,
    /// Values outside a parameter's range.
    pub out_of_range: u64,
    /// Packets from addresses outside the allow-list.
    pub refused_source: u64,
    /// Messages over the per-source rate limit (every message of a bundle counts).
    pub rate_limited: u64,
    /// Replies (dumps, error messages) not sent because they would exceed the source's rate
    /// limit: a reply costs what it sends.
    #[serde(default)]
    pub replies_limited: u64,
    /// Sources being rate-limited now (the table is bounded).
    #[serde(default)]
    pub sources: usize,
    /// Packets refused because the rate-limit table was full of active sources.
    #[serde(default)]
    pub sources_full: u64,
    /// Messages for a parameter remote control may not set (see the README's remote-control
    /// policy).
    #[serde(default)]
    pub not_exposed: u64,
    /// Datagrams over the OSC size limit (8 KiB).
    pub too_large: u64,
    /// Changes superseded by a newer value of the same parameter before the instance took
    /// them (one drain pass): merged, not lost.
    #[serde(default)]
    pub merged: u64,
    /// Changes the plugin could not take (its instance went away while they waited).
    pub dropped_full: u64,
    /// Changes refused because the instance's host-facing layer did not attach (each got an
    /// error reply).
    pub no_host_layer: u64,
    /// Messages for an instance whose OSC Control parameter is off.
    pub disabled: u64,
    /// Mappings that could not be used (unknown parameter, bad address).
    pub mapping_errors: Vec<String>,
    /// Bundles whose time tag had passed (applied at once).
    pub late: u64,
    /// Bundles timed beyond the horizon, or changes refused because the schedule was full.
    pub schedule_refused: u64,
    /// Timed changes waiting now.
    pub scheduled: usize,
    /// The OSCQuery HTTP port, when serving.
    pub oscquery_port: Option<u16>,
    /// OSCQuery is reachable from the LAN (else loopback only).
    pub oscquery_lan: bool,
    /// OSCQuery requests answered / refused.
    pub oscquery_served: u64,
    /// OSCQuery requests refused (malformed, too large, timed out).
    pub oscquery_refused: u64,
    /// OSCQuery connections refused: source not allowed, more than 4 from one address, or
    /// every slot held by a live connection.
    #[serde(default)]
    pub oscquery_refused_connections: u64,
    /// OSCQuery connections closed by us (idle WebSockets, broken frames, stale ones dropped
    /// for a newcomer).
    #[serde(default)]
    pub oscquery_closed: u64,
    /// OSCQuery connections open now.
    #[serde(default)]
    pub oscquery_connections: usize,
    /// OSC over TCP is open on the same port number.
    pub tcp: bool,
    /// TCP controllers connected now.
    pub tcp_clients: usize,
    /// TCP connections refused (source not allowed, or too many from one address).
    #[serde(default)]
    pub tcp_refused: u64,
    /// TCP connections closed by us: idle too long, a broken frame, feedback they would not
    /// read, or dropped for a newcomer when every slot was taken.
    #[serde(default)]
    pub tcp_closed: u64,
    /// Feedback messages sent.
    pub feedback_sent: u64,
    /// Feedback frames dropped for a TCP controller that was not reading.
    #[serde(default)]
    pub feedback_dropped: u64,
    /// Where feedback goes (subscribers and recent senders).
    pub subscribers: Vec<String>,
    /// The last few messages received, as text.
    pub last_messages: Vec<String>,
}
