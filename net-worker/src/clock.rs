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
//! The messages themselves ([`ClockKind`], [`ClockEvent`], [`ClockState`]) cross the audio
//! boundary, so they are defined in [`crate::bridge`] and re-exported here; this module depends
//! on the bridge, never the other way round. It also turns a [`ClockKind`] into an RTP-MIDI
//! [`MidiCommand`], so the protocol core in [`crate::proto`] needs nothing from here.
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

pub use crate::bridge::{ClockEvent, ClockKind, ClockState, MAX_SPP};
use crate::proto::rtpmidi::MidiCommand;

/// MIDI clock ticks per quarter note.
pub const TICKS_PER_BEAT: f64 = 24.0;
/// Beat positions closer than this are the same position (absorbs f64 rounding and CLAP's
/// 31-bit fixed-point beats).
pub const BEAT_EPSILON: f64 = 1e-7;

/// A clock message as an RTP-MIDI command. It lives here, not in [`crate::proto::rtpmidi`], so
/// the sans-IO protocol core knows nothing of the clock engine.
impl From<ClockKind> for MidiCommand {
    fn from(kind: ClockKind) -> Self {
        match kind {
            ClockKind::SongPosition(sixteenths) => MidiCommand::SongPosition(sixteenths),
            // The clock's real-time messages are single status bytes.
            other => MidiCommand::RealTime(other.midi_bytes().0[0]),
        }
    }
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
    fn spp_rounds_up_to_the_next_sixteenth() {
        assert_eq!(spp_at_or_after(0.0), (0, 0.0));
        assert_eq!(spp_at_or_after(1.0), (4, 1.0));
        assert_eq!(spp_at_or_after(1.01), (5, 1.25));
        assert_eq!(spp_at_or_after(1.0 + 1e-9), (4, 1.0));
        assert_eq!(spp_at_or_after(-2.0), (0, 0.0));
    }
}
