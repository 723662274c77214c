//! The clock engine: host transport → MIDI clock, Start/Stop/Continue and Song Position, each
//! message stamped with its exact (fractional) sample position and smoothed host time.
//!
//! - [`engine`]: the realtime engine that runs inside `process()`.
//! - [`estimator`]: sample position → host time regression.
//! - [`follower`]: the worker-side view of the stream, repairing it after lost messages.
//! - [`link_clock`]: Link → MIDI clock, for instances that follow a Link session.
//! - [`scheduler`]: per-destination send times: latency, offset, prediction for early offsets.
//! - [`reference`]: the offline model that computes the ideal event list from a transport
//!   timeline; the property tests, the end-to-end test and the bench compare the engine to it.
//!
//! # Rules (what a good hardware sequencer sends)
//! - 24 ticks per quarter note at beats k/24; the stream advances exactly 24 ticks per quarter
//!   note played, whatever the block sizes.
//! - Play from 0 (or from a count-in before 0): Start, first tick at beat 0.
//! - Play from elsewhere: Song Position Pointer for the next 16th at or after the position, then
//!   Continue and the first tick exactly when the song reaches that 16th (ticks before it are not
//!   sent: the remote starts counting at the SPP).
//! - Stop: Stop at the first sample after the last played one. Locate while stopped: SPP.
//! - A jump while playing (loop wrap, click on the timeline): Stop at the jump, SPP, then Continue
//!   on the grid as above. No tick is duplicated or lost around it.
//! - Pre-roll (host flag): nothing until the flag clears, then as "play from elsewhere".
//!
//! # Where ticks land inside a block
//! The engine emits a block's messages when the *next* block arrives, so it knows the beat
//! position at both ends and interpolates linearly between them. With tempo constant inside the
//! block (hosts change tempo at block boundaries, or report it per block) the positions are exact.
//! A tempo change *inside* a block cannot be seen by a plugin; the count stays exact, positions in
//! that one block are off by at most (ΔBPM/BPM) × block length / 4 samples. The messages still
//! reach the worker before their samples play, since hosts buffer at least one block of output.

pub mod engine;
pub mod estimator;
pub mod follower;
pub mod link_clock;
pub mod reference;
pub mod scheduler;

use serde::{Deserialize, Serialize};

/// MIDI clock ticks per quarter note.
pub const TICKS_PER_BEAT: f64 = 24.0;
/// Largest Song Position Pointer value (14 bits), in 16th notes.
pub const MAX_SPP: u16 = 0x3fff;
/// Beat positions closer than this are the same position (absorbs f64 rounding and CLAP's
/// 31-bit fixed-point beats).
pub const BEAT_EPSILON: f64 = 1e-7;

/// A MIDI real-time or system-common message the engine emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockKind {
    /// 0xF8 timing clock.
    Tick,
    /// 0xFA start (from the song start).
    Start,
    /// 0xFB continue (from the last Song Position Pointer).
    Continue,
    /// 0xFC stop.
    Stop,
    /// 0xF2 song position pointer, in 16th notes.
    SongPosition(u16),
}

impl ClockKind {
    /// The MIDI bytes of this message.
    pub fn midi_bytes(self) -> ([u8; 3], usize) {
        match self {
            ClockKind::Tick => ([0xF8, 0, 0], 1),
            ClockKind::Start => ([0xFA, 0, 0], 1),
            ClockKind::Continue => ([0xFB, 0, 0], 1),
            ClockKind::Stop => ([0xFC, 0, 0], 1),
            ClockKind::SongPosition(sixteenths) => {
                let v = sixteenths.min(MAX_SPP);
                ([0xF2, (v & 0x7f) as u8, (v >> 7) as u8], 3)
            }
        }
    }
}

/// One stamped message.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockEvent {
    /// What to send.
    pub kind: ClockKind,
    /// Song position in quarter notes the message belongs to (the tick's beat; for Stop the
    /// position where playing ended; for SPP and Continue the SPP position).
    pub beat: f64,
    /// Position on the instance's sample clock, fractional samples kept.
    pub sample_pos: f64,
    /// Smoothed host time at that sample, nanoseconds on [`crate::bridge::host_time_ns`]'s clock.
    pub host_time_ns: f64,
    /// Per-instance sequence number of clock events, so a receiver notices a dropped one.
    pub seq: u64,
}

/// Why the engine is or is not sending clock, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ClockState {
    /// No block seen yet.
    #[default]
    Idle,
    /// Transport stopped; positions are sent as SPP.
    Stopped,
    /// Transport running; ticks are sent.
    Running,
    /// Pre-roll / count-in: waiting for the song start.
    PreRoll,
    /// The host reports no tempo: no clock can be derived.
    NoTempo,
}

/// Song Position Pointer (16ths) for the first 16th at or after `beat`, and that 16th's beat.
pub fn spp_at_or_after(beat: f64) -> (u16, f64) {
    let sixteenths = (beat * 4.0 - BEAT_EPSILON * 4.0).ceil().max(0.0);
    let clamped = sixteenths.min(f64::from(MAX_SPP));
    (clamped as u16, sixteenths / 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midi_bytes() {
        assert_eq!(ClockKind::Tick.midi_bytes(), ([0xF8, 0, 0], 1));
        assert_eq!(ClockKind::Stop.midi_bytes(), ([0xFC, 0, 0], 1));
        // SPP 0x1234 = LSB 0x34, MSB 0x24 (7 bits each).
        assert_eq!(
            ClockKind::SongPosition(0x1234).midi_bytes(),
            ([0xF2, 0x34, 0x24], 3)
        );
        assert_eq!(
            ClockKind::SongPosition(u16::MAX).midi_bytes(),
            ([0xF2, 0x7f, 0x7f], 3)
        );
    }

    #[test]
    fn spp_rounds_up_to_the_next_sixteenth() {
        assert_eq!(spp_at_or_after(0.0), (0, 0.0));
        assert_eq!(spp_at_or_after(1.0), (4, 1.0));
        assert_eq!(spp_at_or_after(1.01), (5, 1.25));
        assert_eq!(spp_at_or_after(1.0 + 1e-9), (4, 1.0));
        assert_eq!(spp_at_or_after(-2.0), (0, 0.0));
    }
}
