//! The sender's side of the recovery journal's Chapter Q (RFC 6295 App. B.3): the sequencer
//! state a destination has been told, so every packet can carry it and a receiver that lost a
//! Start, Stop, Continue, SPP or clocks recovers without a resend.
//!
//! Not on the wire yet (see the README's next steps): this is the state machine and its
//! encoding, checked against the RFC's rules and the digest's examples.

use super::{ChapterQ, MidiCommand};

/// MIDI clocks per Song Position Pointer unit (a 16th note).
const CLOCKS_PER_SIXTEENTH: u32 = 6;
/// Chapter Q positions are 19 bits.
const POSITION_MASK: u32 = 0x7_ffff;

/// What a receiver should believe after everything sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SequencerState {
    /// The latest of Start / Stop / Continue was Start or Continue.
    running: bool,
    /// Song position in MIDI clocks.
    position: u32,
    /// The position has already been played (the next clock advances first).
    played: bool,
    /// Start is more recent than Continue (a position of 0 then means "song start", C = 0).
    from_start: bool,
    /// Any Start, Continue or SPP has been sent (otherwise the chapter says song start).
    known: bool,
}

impl SequencerState {
    /// Nothing sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Account for a command that was sent.
    pub fn apply(&mut self, command: &MidiCommand) {
        match *command {
            MidiCommand::RealTime(0xFA) => {
                *self = Self {
                    running: true,
                    position: 0,
                    played: false,
                    from_start: true,
                    known: true,
                };
            }
            MidiCommand::RealTime(0xFB) => {
                self.running = true;
                self.from_start = false;
                self.known = true;
            }
            MidiCommand::RealTime(0xFC) => self.running = false,
            MidiCommand::RealTime(0xF8) if self.running => {
                if self.played {
                    self.position = (self.position + 1) & POSITION_MASK;
                }
                self.played = true;
            }
            MidiCommand::SongPosition(sixteenths) => {
                self.position = (u32::from(sixteenths) * CLOCKS_PER_SIXTEENTH) & POSITION_MASK;
                self.played = false;
                self.from_start = false;
                self.known = true;
            }
            _ => {}
        }
    }

    /// Chapter Q for this state; `s` is the chapter's S bit (0 when the state changed in the
    /// previous packet, as it does with nearly every clock packet).
    pub fn chapter_q(&self, s: bool) -> ChapterQ {
        let song_start = !self.known || (self.from_start && self.position == 0 && !self.played);
        ChapterQ {
            s,
            running: self.running,
            downbeat: self.played,
            position: (!song_start).then_some(self.position),
            timetools: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::encode_chapter_q;
    use super::*;
    use crate::proto::applemidi::tests::hex;

    const START: MidiCommand = MidiCommand::RealTime(0xFA);
    const CONTINUE: MidiCommand = MidiCommand::RealTime(0xFB);
    const STOP: MidiCommand = MidiCommand::RealTime(0xFC);
    const CLOCK: MidiCommand = MidiCommand::RealTime(0xF8);

    fn bytes(state: &SequencerState) -> Vec<u8> {
        let mut out = Vec::new();
        encode_chapter_q(&state.chapter_q(true), &mut out);
        out
    }

    fn after(commands: &[MidiCommand]) -> SequencerState {
        let mut state = SequencerState::new();
        for c in commands {
            state.apply(c);
        }
        state
    }

    #[test]
    fn digest_examples() {
        // After Start only: C0 (S N, song start).
        assert_eq!(bytes(&after(&[START])), hex("C0"));
        // Start then Stop: 80.
        assert_eq!(bytes(&after(&[START, STOP])), hex("80"));
        // Stopped at SPP 16: 90 00 60 (C, position 96 clocks).
        assert_eq!(
            bytes(&after(&[START, STOP, MidiCommand::SongPosition(16)])),
            hex("90 00 60")
        );
        // Continue at song start (Continue most recent): D0 00 00.
        assert_eq!(
            bytes(&after(&[MidiCommand::SongPosition(0), CONTINUE])),
            hex("D0 00 00")
        );
    }

    #[test]
    fn clocks_after_start_count_from_the_downbeat() {
        // Start + k clocks → N=1, D=1, C=1, CLOCK=k−1 (R7q: k = 24 → 0x17).
        let mut commands = vec![START];
        commands.extend(std::iter::repeat_n(CLOCK, 24));
        let q = after(&commands).chapter_q(false);
        assert_eq!((q.running, q.downbeat, q.position), (true, true, Some(23)));
        let mut out = Vec::new();
        encode_chapter_q(&q, &mut out);
        assert_eq!(out, hex("70 00 17"));
    }

    #[test]
    fn continue_from_a_position_then_clocks_and_stop() {
        // SPP 33 (198 clocks), Continue, 5 clocks (198..=202 played), Stop.
        let mut commands = vec![MidiCommand::SongPosition(33), CONTINUE];
        commands.extend(std::iter::repeat_n(CLOCK, 5));
        commands.push(STOP);
        let q = after(&commands).chapter_q(true);
        assert_eq!(
            (q.running, q.downbeat, q.position),
            (false, true, Some(202))
        );
        // Clocks while stopped do not move the position.
        let mut state = after(&commands);
        state.apply(&CLOCK);
        assert_eq!(state.chapter_q(true).position, Some(202));
    }
}
