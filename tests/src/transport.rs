//! The headless host's own transport: what a DAW's timeline would report to the plugin.
//!
//! Tempo, time signature, play/stop, locate, loop and pre-roll come from the command line, the
//! tests' scripts and (later) OSC. Each block the host reports the transport at the block's
//! first sample as a CLAP transport event, then advances it by the block length.

use clack_host::events::event_types::{TransportEvent, TransportFlags};
use clack_host::events::{EventFlags, EventHeader};
use clack_host::utils::{BeatTime, SecondsTime};

/// A DAW-like transport with a constant-tempo map (tempo changes apply from "now" on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostTransport {
    /// Tempo in quarter notes per minute.
    pub tempo_bpm: f64,
    /// Time signature (numerator, denominator).
    pub time_sig: (u16, u16),
    /// Playing.
    pub playing: bool,
    /// Recording.
    pub recording: bool,
    /// Inside pre-roll / count-in.
    pub pre_roll: bool,
    pos_beats: f64,
    pos_seconds: f64,
    loop_beats: Option<(f64, f64)>,
}

impl HostTransport {
    /// A stopped transport at the song start.
    pub fn new(tempo_bpm: f64, time_sig: (u16, u16)) -> Self {
        Self {
            tempo_bpm,
            time_sig,
            playing: false,
            recording: false,
            pre_roll: false,
            pos_beats: 0.0,
            pos_seconds: 0.0,
            loop_beats: None,
        }
    }

    /// Song position in quarter notes.
    pub fn pos_beats(&self) -> f64 {
        self.pos_beats
    }

    /// Song position in seconds.
    pub fn pos_seconds(&self) -> f64 {
        self.pos_seconds
    }

    /// Active loop range in quarter notes.
    pub fn loop_beats(&self) -> Option<(f64, f64)> {
        self.loop_beats
    }

    /// Move the playhead to `beats` (quarter notes).
    pub fn locate(&mut self, beats: f64) {
        self.pos_beats = beats.max(0.0);
        self.pos_seconds = self.pos_beats * 60.0 / self.tempo_bpm;
    }

    /// Set or clear the loop range (start < end, in quarter notes).
    pub fn set_loop(&mut self, range: Option<(f64, f64)>) {
        self.loop_beats = range.filter(|(start, end)| end > start);
    }

    /// Quarter notes per bar.
    pub fn beats_per_bar(&self) -> f64 {
        f64::from(self.time_sig.0) * 4.0 / f64::from(self.time_sig.1.max(1))
    }

    /// Advance by `frames` samples at `sample_rate` if playing, wrapping at the loop end.
    pub fn advance(&mut self, frames: u32, sample_rate: f64) {
        if !self.playing {
            return;
        }
        let seconds = f64::from(frames) / sample_rate;
        self.pos_seconds += seconds;
        self.pos_beats += seconds * self.tempo_bpm / 60.0;
        if let Some((start, end)) = self.loop_beats
            && self.pos_beats >= end
        {
            self.locate(start + (self.pos_beats - end) % (end - start));
        }
    }

    /// The CLAP transport event describing the current state (at sample 0 of the next block).
    pub fn event(&self) -> TransportEvent {
        let mut flags = TransportFlags::HAS_TEMPO
            | TransportFlags::HAS_BEATS_TIMELINE
            | TransportFlags::HAS_SECONDS_TIMELINE
            | TransportFlags::HAS_TIME_SIGNATURE;
        flags.set(TransportFlags::IS_PLAYING, self.playing);
        flags.set(TransportFlags::IS_RECORDING, self.recording);
        flags.set(TransportFlags::IS_WITHIN_PRE_ROLL, self.pre_roll);
        flags.set(TransportFlags::IS_LOOP_ACTIVE, self.loop_beats.is_some());
        let (loop_start, loop_end) = self.loop_beats.unwrap_or((0.0, 0.0));
        let to_seconds = |beats: f64| beats * 60.0 / self.tempo_bpm;
        let bar_len = self.beats_per_bar();
        let bar_number = (self.pos_beats / bar_len).floor();
        TransportEvent {
            header: EventHeader::new_core(0, EventFlags::empty()),
            flags,
            song_pos_beats: BeatTime::from_float(self.pos_beats),
            song_pos_seconds: SecondsTime::from_float(self.pos_seconds),
            tempo: self.tempo_bpm,
            tempo_inc: 0.0,
            loop_start_beats: BeatTime::from_float(loop_start),
            loop_end_beats: BeatTime::from_float(loop_end),
            loop_start_seconds: SecondsTime::from_float(to_seconds(loop_start)),
            loop_end_seconds: SecondsTime::from_float(to_seconds(loop_end)),
            bar_start: BeatTime::from_float(bar_number * bar_len),
            // Saturating float → int cast: a song never has 2^31 bars.
            bar_number: bar_number as i32,
            time_signature_numerator: self.time_sig.0,
            time_signature_denominator: self.time_sig.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_while_playing_and_wraps_loops() {
        let mut t = HostTransport::new(120.0, (4, 4));
        t.advance(48_000, 48_000.0);
        assert_eq!(t.pos_beats(), 0.0);
        t.playing = true;
        t.advance(48_000, 48_000.0);
        assert_eq!(t.pos_beats(), 2.0);
        assert_eq!(t.pos_seconds(), 1.0);
        t.set_loop(Some((0.0, 3.0)));
        t.advance(48_000, 48_000.0);
        assert_eq!(t.pos_beats(), 1.0);
        assert_eq!(t.pos_seconds(), 0.5);
    }

    #[test]
    fn event_reports_bar_and_flags() {
        let mut t = HostTransport::new(90.0, (3, 4));
        t.locate(7.5);
        t.playing = true;
        let e = t.event();
        assert!(e.flags.contains(TransportFlags::IS_PLAYING));
        assert_eq!(e.bar_number, 2);
        assert_eq!(e.bar_start.to_float(), 6.0);
        assert_eq!(e.song_pos_beats.to_float(), 7.5);
        assert_eq!(e.song_pos_seconds.to_float(), 5.0);
    }
}
