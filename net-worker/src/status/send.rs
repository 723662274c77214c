//! What the status shows of the clock send path.

use serde::{Deserialize, Serialize};

/// What the send path did, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SenderStats {
    /// How the sender thread is scheduled.
    #[serde(skip)]
    pub realtime: bool,
    /// Datagrams sent.
    pub sent: u64,
    /// Socket errors on send.
    pub send_errors: u64,
    /// Sent more than 1 ms after their due time.
    pub late_over_1ms: u64,
    /// Worst lateness (send time − due time), µs.
    pub worst_late_us: f64,
    /// Of all sent, handed to the send path only after their due time (built late: the
    /// worker or the audio side was late, not the sender).
    #[serde(default)]
    pub built_late: u64,
    /// Worst of those (hand-over time − due time), µs.
    #[serde(default)]
    pub worst_built_late_us: f64,
    /// Datagrams the ring had no room for (the worker sent them itself, at once).
    pub full: u64,
}
