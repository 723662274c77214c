//! macOS (and other Unix that is not Linux): the highest thread priority thread-priority can
//! set without root, and std's `Instant` for Link's clock — on macOS that is
//! `mach_absolute_time`'s clock (`CLOCK_UPTIME_RAW`), which is what Ableton's library reads.

use thread_priority::ThreadPriority;

/// How datagram arrival times are taken here.
pub const RX_STAMPS: &str = "kernel receive time (SO_TIMESTAMP, µs)";

/// See [`super::realtime`].
pub fn realtime(_priority: u8) -> String {
    match thread_priority::set_current_thread_priority(ThreadPriority::Max) {
        Ok(()) => "highest priority".to_owned(),
        Err(e) => format!("normal (raising refused: {e:?})"),
    }
}

/// Threads here do not inherit a raised priority: nothing to undo.
pub fn normal_priority() {}

/// Nothing to tune.
pub fn precise_timers() {}

/// Link's clock, µs: the host clock (std's `Instant`, `mach_absolute_time`'s clock). Only its
/// rate matters to Link: each peer's own times come back to it in the measurement.
pub fn link_clock_micros() -> i64 {
    (crate::bridge::host_time_ns() / 1_000) as i64
}

/// Not offered here: no test compares two processes' clocks on this OS.
pub fn host_clock_origin_ns() -> Option<u64> {
    None
}
