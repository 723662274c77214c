//! The recovery journal's Chapter Q (RFC 6295 App. B.3) on both sides of a stream.
//!
//! * [`SequencerState`]: the sequencer state a receiver should hold after a run of commands
//!   (Start, Stop, Continue, SPP, clocks), and its Chapter Q.
//! * [`JournalSender`]: per destination, what every outgoing packet's journal says (closed-loop
//!   checkpoint, moved on by the peer's RS feedback) and when a guard packet is due, so the
//!   *last* change before a quiet spell is protected too (RFC 4696 §4.2). With the journal off
//!   for a peer, the guard instead restates the idempotent part of the transport (Stop, and
//!   the SPP that followed it): a journal-less receiver still ends up stopped at the right
//!   place.
//! * [`SequencerReceiver`]: a receiver that applies commands, detects sequence gaps and, at
//!   the end of a loss, adopts the journal's Chapter Q (our receive side, and the model the
//!   simulated-network tests check convergence with).

use super::{ChapterQ, MidiCommand, Packet, TimedCommand};

/// Nanoseconds on the driver's monotonic clock.
pub type Nanos = u64;

/// First guard packet after a change.
pub const GUARD_FIRST: Nanos = 50_000_000;
/// Guard packets double their spacing up to this (below the 1 s convergence target).
pub const GUARD_MAX: Nanos = 400_000_000;

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

impl SequencerState {
    /// The state a receiver adopts from a journal's Chapter Q.
    pub fn from_chapter_q(q: &ChapterQ) -> Self {
        Self {
            running: q.running,
            position: q.position.unwrap_or(0) & POSITION_MASK,
            played: q.downbeat,
            from_start: q.position.is_none(),
            known: true,
        }
    }

    /// Running (after Start or Continue, before Stop).
    pub fn running(&self) -> bool {
        self.running
    }

    /// Song position in MIDI clocks.
    pub fn position(&self) -> u32 {
        self.position
    }

    /// What a listening device acts on: (running, position in clocks, position played).
    pub fn transport(&self) -> (bool, u32, bool) {
        (self.running, self.position, self.played)
    }

    /// The transport commands that restate this state without changing it, if there are any:
    /// while stopped, Stop plus (when the position sits unplayed on a 16th) its SPP. Repeating
    /// them is a no-op for a receiver that already has them.
    fn restatement(&self, out: &mut Vec<TimedCommand>) {
        out.clear();
        if self.running || !self.known {
            return;
        }
        let command = |command| TimedCommand { offset: 0, command };
        out.push(command(MidiCommand::RealTime(0xFC)));
        if !self.played && self.position.is_multiple_of(CLOCKS_PER_SIXTEENTH) {
            let sixteenths = self.position / CLOCKS_PER_SIXTEENTH;
            if let Ok(sixteenths) = u16::try_from(sixteenths)
                && sixteenths < 0x4000
            {
                out.push(command(MidiCommand::SongPosition(sixteenths)));
            }
        }
    }
}

/// True for the commands Chapter Q protects.
fn touches_sequencer(command: &MidiCommand) -> bool {
    matches!(
        command,
        MidiCommand::RealTime(0xF8 | 0xFA | 0xFB | 0xFC) | MidiCommand::SongPosition(_)
    )
}

/// The sending side of one stream.
#[derive(Debug, Clone, Default)]
pub struct JournalSender {
    enabled: bool,
    state: SequencerState,
    /// Oldest packet the peer has not acknowledged (None before the first packet).
    checkpoint: Option<u16>,
    /// The last packet sent.
    last_seq: Option<u16>,
    /// The next guard packet and the spacing after it.
    guard: Option<(Nanos, Nanos)>,
    /// The guard after the one being sent now.
    backed_off: Option<(Nanos, Nanos)>,
    /// Guard packets sent.
    guards: u64,
    /// RS acknowledgements that moved the checkpoint.
    acks: u64,
}

impl JournalSender {
    /// A stream with the journal on or off.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// Whether packets carry the journal.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Switch the journal on or off (takes effect with the next packet).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// The sequencer state sent so far.
    pub fn state(&self) -> &SequencerState {
        &self.state
    }

    /// Guard packets sent so far.
    pub fn guards(&self) -> u64 {
        self.guards
    }

    /// RS acknowledgements that moved the checkpoint.
    pub fn acks(&self) -> u64 {
        self.acks
    }

    /// The journal for the packet about to be sent as (S, checkpoint, Chapter Q), or `None`
    /// (journal off, or nothing sent yet: the first packet has no history to protect).
    ///
    /// S is always 0: the chapter states the whole sequencer state, so a receiver that lost
    /// only the previous packet must read it too. (S = 1 would merely let it skip; tshark's
    /// dissector also misreads S = 1 in Chapter Q, see `tests/tests/tshark_conformance.rs`.)
    pub fn journal(&self) -> Option<(bool, u16, ChapterQ)> {
        if !self.enabled {
            return None;
        }
        let checkpoint = self.checkpoint?;
        Some((false, checkpoint, self.state.chapter_q(false)))
    }

    /// Account for packet `seq` with `commands`, sent at `now`.
    pub fn sent(&mut self, now: Nanos, seq: u16, commands: &[TimedCommand]) {
        self.checkpoint.get_or_insert(seq);
        self.last_seq = Some(seq);
        let mut changed = false;
        for c in commands {
            changed |= touches_sequencer(&c.command);
            self.state.apply(&c.command);
        }
        if let Some(next) = self.backed_off.take() {
            self.guard = Some(next);
        } else if changed {
            self.guard = Some((now + GUARD_FIRST, GUARD_FIRST));
        }
    }

    /// The peer's RS says it has everything up to `seq`: the journal no longer needs to cover
    /// it, and once the latest packet is covered no guard packet is needed. Feedback outside
    /// the packets in flight (stale, or from a different stream) is ignored.
    pub fn acknowledge(&mut self, seq: u16) {
        let (Some(checkpoint), Some(last)) = (self.checkpoint, self.last_seq) else {
            return;
        };
        let in_flight = last.wrapping_sub(checkpoint);
        if seq.wrapping_sub(checkpoint) > in_flight {
            return;
        }
        self.acks += 1;
        self.checkpoint = Some(seq.wrapping_add(1));
        if seq == last {
            self.guard = None;
        }
    }

    /// When a guard packet is due.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.guard.map(|(at, _)| at)
    }

    /// If a guard packet is due at `now`, fill `commands` with what it carries (nothing with
    /// the journal on, the restatement without) and return true; the caller sends it and
    /// reports it with [`JournalSender::sent`] as usual.
    pub fn guard_due(&mut self, now: Nanos, commands: &mut Vec<TimedCommand>) -> bool {
        let Some((at, spacing)) = self.guard else {
            return false;
        };
        if now < at {
            return false;
        }
        let spacing = (spacing * 2).min(GUARD_MAX);
        commands.clear();
        if !self.enabled {
            self.state.restatement(commands);
            if commands.is_empty() {
                // Playing without a journal: nothing can be restated safely.
                self.guard = None;
                return false;
            }
        }
        self.guards += 1;
        // The packet's own `sent` must not pull the next guard back to GUARD_FIRST.
        self.guard = None;
        self.backed_off = Some((now + spacing, spacing));
        true
    }
}

/// What a receiver did with the packets of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiverStats {
    /// Packets applied.
    pub packets: u64,
    /// Packets missing from the sequence (counted when the gap is seen).
    pub lost: u64,
    /// Packets that arrived after a later one (or twice): not applied.
    pub late: u64,
    /// Losses repaired from a journal's Chapter Q.
    pub repairs: u64,
    /// Losses with no Chapter Q to repair from.
    pub unrepaired: u64,
}

/// The receiving side of one stream: the sequencer state the sender's commands put us in.
#[derive(Debug, Clone, Default)]
pub struct SequencerReceiver {
    state: SequencerState,
    expected: Option<u16>,
    stats: ReceiverStats,
}

impl SequencerReceiver {
    /// Nothing received yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> &SequencerState {
        &self.state
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// The highest sequence number received (what RS feedback reports).
    pub fn highest(&self) -> Option<u16> {
        self.expected.map(|e| e.wrapping_sub(1))
    }

    /// Take a packet in. Returns false if it was late or duplicated (not applied).
    pub fn receive(&mut self, packet: &Packet) -> bool {
        let seq = packet.header.seq;
        let gap = match self.expected {
            // The first packet of a stream ends a loss event (RFC 6295 §4).
            None => true,
            Some(expected) => {
                let ahead = seq.wrapping_sub(expected);
                if ahead >= 0x8000 {
                    self.stats.late += 1;
                    return false;
                }
                self.stats.lost += u64::from(ahead);
                ahead > 0
            }
        };
        if gap {
            match packet.journal.and_then(|j| j.chapter_q) {
                Some(q) => {
                    self.state = SequencerState::from_chapter_q(&q);
                    if self.expected.is_some() {
                        self.stats.repairs += 1;
                    }
                }
                None if self.expected.is_some() => self.stats.unrepaired += 1,
                None => {}
            }
        }
        self.expected = Some(seq.wrapping_add(1));
        self.stats.packets += 1;
        for c in &packet.commands {
            self.state.apply(&c.command);
        }
        true
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

    fn timed(command: MidiCommand) -> TimedCommand {
        TimedCommand { offset: 0, command }
    }

    const MS: Nanos = 1_000_000;

    #[test]
    fn sender_checkpoints_on_rs_and_guards_back_off_until_acknowledged() {
        let mut tx = JournalSender::new(true);
        assert_eq!(tx.journal(), None, "the first packet has no history");
        tx.sent(0, 0x1234, &[timed(START)]);
        let (s, checkpoint, q) = tx.journal().expect("journal");
        assert!(!s);
        assert_eq!(checkpoint, 0x1234);
        assert_eq!((q.running, q.position), (true, None));
        tx.sent(20 * MS, 0x1235, &[timed(CLOCK)]);
        tx.sent(40 * MS, 0x1236, &[timed(STOP)]);
        // Guards at +50, +100, +200, +400, +400 ms after the Stop.
        let mut commands = vec![timed(CLOCK)];
        let mut at = Vec::new();
        let mut seq = 0x1237;
        for now in (40 * MS..2_000 * MS).step_by(MS as usize) {
            if tx.guard_due(now, &mut commands) {
                assert!(commands.is_empty(), "journal guards carry no commands");
                tx.sent(now, seq, &commands);
                seq += 1;
                at.push((now - 40 * MS) / MS);
            }
        }
        assert_eq!(at[..5], [50, 150, 350, 750, 1150]);
        // Stale or foreign feedback changes nothing.
        tx.acknowledge(0x1000);
        assert_eq!(tx.journal().expect("journal").1, 0x1234);
        assert_eq!(tx.acks(), 0);
        // RS for an older packet trims the history; for the last one it also ends the guards.
        tx.acknowledge(0x1235);
        assert_eq!(tx.journal().expect("journal").1, 0x1236);
        assert!(tx.poll_timeout().is_some());
        tx.acknowledge(seq - 1);
        assert_eq!(tx.poll_timeout(), None);
        // State is still the full sequencer state: stopped after one played clock.
        let q = tx.journal().expect("journal").2;
        assert_eq!((q.running, q.downbeat, q.position), (false, true, Some(0)));
    }

    #[test]
    fn without_the_journal_guards_restate_stop_and_its_spp_only() {
        let mut tx = JournalSender::new(false);
        tx.sent(0, 1, &[timed(START), timed(CLOCK)]);
        let mut commands = Vec::new();
        assert!(
            !tx.guard_due(60 * MS, &mut commands),
            "playing: nothing to restate"
        );
        assert_eq!(tx.poll_timeout(), None);
        tx.sent(
            100 * MS,
            2,
            &[timed(STOP), timed(MidiCommand::SongPosition(8))],
        );
        assert_eq!(tx.journal(), None);
        assert!(tx.guard_due(150 * MS, &mut commands));
        assert_eq!(commands, [timed(STOP), timed(MidiCommand::SongPosition(8))]);
        let before = *tx.state();
        tx.sent(150 * MS, 3, &commands);
        assert_eq!(tx.state().transport(), before.transport(), "idempotent");
        assert_eq!(
            tx.poll_timeout(),
            Some(250 * MS),
            "backed off, not restarted"
        );
        // Stopped mid-16th after clocks: only Stop can be restated.
        tx.sent(
            300 * MS,
            4,
            &[timed(CONTINUE), timed(CLOCK), timed(CLOCK), timed(STOP)],
        );
        assert!(tx.guard_due(350 * MS, &mut commands));
        assert_eq!(commands, [timed(STOP)]);
    }

    fn packet(seq: u16, commands: &[MidiCommand], q: Option<ChapterQ>) -> Packet {
        use super::super::{Journal, PAYLOAD_TYPE, RtpHeader};
        Packet {
            header: RtpHeader {
                marker: false,
                payload_type: PAYLOAD_TYPE,
                seq,
                timestamp: 0,
                ssrc: 1,
            },
            commands: commands.iter().copied().map(timed).collect(),
            journal: q.map(|q| Journal {
                s: false,
                checkpoint: 0,
                chapter_q: Some(q),
                system_chapters: 0x04,
                channel_journals: 0,
            }),
        }
    }

    #[test]
    fn receiver_repairs_a_lost_stop_from_chapter_q_and_ignores_late_packets() {
        let mut rx = SequencerReceiver::new();
        assert!(rx.receive(&packet(10, &[START], None)));
        assert!(rx.receive(&packet(
            11,
            &[CLOCK],
            Some(after(&[START]).chapter_q(false))
        )));
        // 12 (clock) and 13 (Stop) are lost; 14 carries the state after 13.
        let sender = after(&[START, CLOCK, CLOCK, STOP]);
        assert!(rx.receive(&packet(14, &[], Some(sender.chapter_q(false)))));
        assert_eq!(rx.state().transport(), sender.transport());
        assert_eq!(rx.stats().lost, 2);
        assert_eq!(rx.stats().repairs, 1);
        // 13 shows up late: not applied, counted.
        assert!(!rx.receive(&packet(13, &[STOP], None)));
        assert_eq!(rx.stats().late, 1);
        // A gap without a journal is counted as unrepaired.
        assert!(rx.receive(&packet(20, &[CONTINUE], None)));
        assert_eq!(rx.stats().unrepaired, 1);
        assert!(rx.state().running());
        // Sequence numbers wrap.
        let mut rx = SequencerReceiver::new();
        rx.receive(&packet(0xFFFF, &[START], None));
        assert!(rx.receive(&packet(0, &[CLOCK], None)));
        assert_eq!(rx.stats().lost, 0);
        assert_eq!(rx.highest(), Some(0));
    }

    #[test]
    fn chapter_q_round_trips_through_the_receiver_state() {
        for commands in [
            vec![START],
            vec![START, STOP],
            vec![START, CLOCK, CLOCK, CLOCK],
            vec![MidiCommand::SongPosition(33), CONTINUE, CLOCK, STOP],
            vec![MidiCommand::SongPosition(0), CONTINUE],
        ] {
            let state = after(&commands);
            let back = SequencerState::from_chapter_q(&state.chapter_q(false));
            assert_eq!(back.transport(), state.transport(), "{commands:?}");
            assert_eq!(
                back.chapter_q(false),
                state.chapter_q(false),
                "{commands:?}"
            );
        }
    }
}
