//! The worker's view of one instance's clock stream, and its repair after lost messages.
//!
//! The audio thread drops messages when its ring is full (counted there). A destination that
//! missed a Start, a Continue or some ticks would drift or sit stopped, so the follower checks
//! every message's sequence number and, after a gap, resynchronises the destination the way a
//! sequencer would: Stop, Song Position Pointer for the next 16th, and Continue on that 16th.
//!
//! Sans-IO: messages in, messages out; no clock, no sockets.

use serde::{Deserialize, Serialize};

use super::{BEAT_EPSILON, ClockEvent, ClockKind, spp_at_or_after};

/// A message for the destinations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// What to send.
    pub kind: ClockKind,
    /// Song position it belongs to.
    pub beat: f64,
    /// Sample position on the instance's clock (for a predicted tick: that of the real tick it
    /// was predicted from).
    pub sample_pos: f64,
    /// When it should play, host nanoseconds.
    pub host_time_ns: f64,
    /// True if the follower inserted it to repair a gap.
    pub repair: bool,
}

impl Default for Outgoing {
    fn default() -> Self {
        Self {
            kind: ClockKind::Tick,
            beat: 0.0,
            sample_pos: 0.0,
            host_time_ns: 0.0,
            repair: false,
        }
    }
}

/// The at most four messages one engine message turns into (Stop, SPP, Continue, Tick).
#[derive(Debug, Default)]
struct Batch {
    items: [Outgoing; 4],
    len: usize,
}

impl Batch {
    fn push(&mut self, message: Outgoing) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = message;
            self.len += 1;
        }
    }
}

/// What the destination is doing, as far as the follower has told it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Remote {
    Stopped,
    Running,
    /// Told an SPP after a gap; ticks are held back until the song reaches `at`.
    Resync {
        at: f64,
    },
}

/// Follows one instance's stream.
#[derive(Debug, Clone)]
pub struct ClockFollower {
    expected_seq: Option<u64>,
    remote: Remote,
    gaps: u64,
    lost: u64,
    /// Clock output on (the `clk_on` parameter).
    enabled: bool,
    /// Send Start/Stop/Continue/SPP, not only ticks (the `clk_tr` parameter).
    send_transport: bool,
    /// Output was switched back on: the next message resynchronises like after a gap.
    resync_pending: bool,
    /// The newest message from the engine (for a Stop when output is switched off).
    last: Option<Outgoing>,
}

impl Default for ClockFollower {
    fn default() -> Self {
        Self::new()
    }
}

impl ClockFollower {
    /// A follower that has seen nothing yet.
    pub fn new() -> Self {
        Self {
            expected_seq: None,
            remote: Remote::Stopped,
            gaps: 0,
            lost: 0,
            enabled: true,
            send_transport: true,
            resync_pending: false,
            last: None,
        }
    }

    /// Switch output on or off (`clk_on`) and choose whether transport messages are sent
    /// (`clk_tr`). Switching off while the destination runs sends it a Stop; switching on
    /// resynchronises it with the next message (SPP and Continue on the grid if playing).
    pub fn set_output(
        &mut self,
        enabled: bool,
        send_transport: bool,
        out: &mut impl FnMut(Outgoing),
    ) {
        self.send_transport = send_transport;
        if enabled == self.enabled {
            return;
        }
        if enabled {
            self.enabled = true;
            self.resync_pending = true;
        } else {
            self.stop_destination(out);
            self.enabled = false;
        }
    }

    /// A running destination gets a Stop (a repair, after the last message it had).
    fn stop_destination(&mut self, out: &mut impl FnMut(Outgoing)) {
        if self.enabled
            && self.remote != Remote::Stopped
            && let Some(last) = self.last
        {
            self.pass(
                Outgoing {
                    kind: ClockKind::Stop,
                    repair: true,
                    ..last
                },
                out,
            );
        }
        self.remote = Remote::Stopped;
    }

    /// Pass a message on, unless transport messages are switched off.
    fn pass(&self, message: Outgoing, out: &mut impl FnMut(Outgoing)) {
        if self.send_transport || message.kind == ClockKind::Tick {
            out(message);
        }
    }

    /// A follower for a destination that joins a running stream (a peer that just connected):
    /// its first message resynchronises it (SPP, and Continue on the grid if playing).
    pub fn joining() -> Self {
        Self {
            resync_pending: true,
            ..Self::new()
        }
    }

    /// The stream's source changes (the DAW's transport ↔ a Link session): a running
    /// destination gets a Stop, and the new source's messages start a fresh sequence (its
    /// Start or Song Position puts the destination right).
    pub fn switch_source(&mut self, out: &mut impl FnMut(Outgoing)) {
        self.stop_destination(out);
        self.expected_seq = None;
        self.resync_pending = false;
    }

    /// Gaps seen (each triggered a resynchronisation where needed).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// Messages known to be lost (sum of the gaps' sizes).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Take one message from the engine; pass on what the destination should get.
    pub fn handle(&mut self, event: ClockEvent, out: &mut impl FnMut(Outgoing)) {
        let gap = match self.expected_seq {
            Some(expected) if event.seq > expected => event.seq - expected,
            _ => 0,
        };
        self.expected_seq = Some(event.seq + 1);
        self.last = Some(Outgoing {
            kind: event.kind,
            beat: event.beat,
            sample_pos: event.sample_pos,
            host_time_ns: event.host_time_ns,
            repair: false,
        });
        if !self.enabled {
            return;
        }
        let mut emitted = Batch::default();
        let send = |kind, beat, repair, out: &mut Batch| {
            out.push(Outgoing {
                kind,
                beat,
                sample_pos: event.sample_pos,
                host_time_ns: event.host_time_ns,
                repair,
            })
        };
        let out_final = out;
        let out = &mut emitted;
        if gap > 0 {
            self.gaps += 1;
            self.lost += gap;
        }
        if gap > 0 || std::mem::take(&mut self.resync_pending) {
            match event.kind {
                ClockKind::Tick => {
                    // Whatever was lost, tell the destination where we are and resume on the
                    // grid. A running destination is stopped first so it doesn't run on.
                    if self.remote != Remote::Stopped {
                        send(ClockKind::Stop, event.beat, true, out);
                    }
                    let (spp, at) = spp_at_or_after(event.beat);
                    send(ClockKind::SongPosition(spp), at, true, out);
                    self.remote = Remote::Resync { at };
                }
                ClockKind::Continue => {
                    // The SPP before it may have been lost: repeat it.
                    let (spp, at) = spp_at_or_after(event.beat);
                    send(ClockKind::SongPosition(spp), at, true, out);
                }
                ClockKind::Start | ClockKind::Stop | ClockKind::SongPosition(_) => {}
            }
        }
        match event.kind {
            ClockKind::Tick => match self.remote {
                Remote::Running => send(ClockKind::Tick, event.beat, false, out),
                Remote::Resync { at } if (event.beat - at).abs() < BEAT_EPSILON => {
                    send(ClockKind::Continue, at, true, out);
                    send(ClockKind::Tick, event.beat, false, out);
                    self.remote = Remote::Running;
                }
                // Before the resume point, or stopped: the destination must not count it.
                Remote::Resync { .. } | Remote::Stopped => {}
            },
            ClockKind::Start | ClockKind::Continue => {
                send(event.kind, event.beat, false, out);
                self.remote = Remote::Running;
            }
            ClockKind::Stop => {
                send(event.kind, event.beat, false, out);
                self.remote = Remote::Stopped;
            }
            ClockKind::SongPosition(_) => send(event.kind, event.beat, false, out),
        }
        for message in &emitted.items[..emitted.len] {
            self.pass(*message, out_final);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_source_stops_a_running_destination_and_counts_no_gap() {
        let mut f = ClockFollower::new();
        let mut out = Vec::new();
        f.handle(ev(40, ClockKind::Start, 0.0), &mut |o| out.push(o.kind));
        f.handle(ev(41, ClockKind::Tick, 0.0), &mut |o| out.push(o.kind));
        f.switch_source(&mut |o| out.push(o.kind));
        assert_eq!(out.last(), Some(&ClockKind::Stop));
        // The new source numbers from 0 and starts with Start.
        f.handle(ev(0, ClockKind::Start, 0.0), &mut |o| out.push(o.kind));
        f.handle(ev(1, ClockKind::Tick, 0.0), &mut |o| out.push(o.kind));
        assert_eq!(
            out,
            [
                ClockKind::Start,
                ClockKind::Tick,
                ClockKind::Stop,
                ClockKind::Start,
                ClockKind::Tick
            ]
        );
        assert_eq!(f.gaps(), 0);
        // Stopped already: nothing to send.
        let mut f = ClockFollower::new();
        let mut out = Vec::new();
        f.switch_source(&mut |o| out.push(o.kind));
        assert!(out.is_empty());
    }

    #[test]
    fn switching_output_off_stops_and_on_resyncs_on_the_grid() {
        let mut f = ClockFollower::new();
        let mut out = Vec::new();
        f.handle(ev(0, ClockKind::Start, 0.0), &mut |o| out.push(o.kind));
        f.handle(ev(1, ClockKind::Tick, 0.0), &mut |o| out.push(o.kind));
        f.set_output(false, true, &mut |o| out.push(o.kind));
        assert_eq!(out.last(), Some(&ClockKind::Stop));
        for k in 1..5 {
            f.handle(ev(1 + k, ClockKind::Tick, k as f64 / 24.0), &mut |o| {
                out.push(o.kind)
            });
        }
        assert_eq!(out.len(), 3, "nothing while off");
        f.set_output(true, true, &mut |o| out.push(o.kind));
        for k in 5..8 {
            f.handle(ev(1 + k, ClockKind::Tick, k as f64 / 24.0), &mut |o| {
                out.push(o.kind)
            });
        }
        // Back on at tick 5: SPP 1 (beat 0.25 = tick 6), then Continue + tick 6, tick 7.
        assert_eq!(
            out[3..],
            [
                ClockKind::SongPosition(1),
                ClockKind::Continue,
                ClockKind::Tick,
                ClockKind::Tick
            ]
        );
        assert_eq!(f.gaps(), 0, "switching is not a loss");
    }

    #[test]
    fn transport_messages_can_be_switched_off() {
        let mut f = ClockFollower::new();
        f.set_output(true, false, &mut |_| {});
        let mut out = Vec::new();
        for (seq, kind, beat) in [
            (0, ClockKind::Start, 0.0),
            (1, ClockKind::Tick, 0.0),
            (2, ClockKind::Tick, 1.0 / 24.0),
            (3, ClockKind::Stop, 2.0 / 24.0),
            (4, ClockKind::SongPosition(8), 2.0),
        ] {
            f.handle(ev(seq, kind, beat), &mut |o| out.push(o.kind));
        }
        assert_eq!(out, [ClockKind::Tick, ClockKind::Tick]);
    }

    fn ev(seq: u64, kind: ClockKind, beat: f64) -> ClockEvent {
        ClockEvent {
            kind,
            beat,
            sample_pos: beat * 1000.0,
            host_time_ns: beat * 1e6,
            seq,
        }
    }

    fn run(events: &[ClockEvent]) -> (Vec<(ClockKind, f64, bool)>, ClockFollower) {
        let mut f = ClockFollower::new();
        let mut out = Vec::new();
        for e in events {
            f.handle(*e, &mut |o| out.push((o.kind, o.beat, o.repair)));
        }
        (out, f)
    }

    #[test]
    fn passes_an_unbroken_stream_through() {
        let events = [
            ev(0, ClockKind::Start, 0.0),
            ev(1, ClockKind::Tick, 0.0),
            ev(2, ClockKind::Tick, 1.0 / 24.0),
            ev(3, ClockKind::Stop, 2.0 / 24.0),
        ];
        let (out, f) = run(&events);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|o| !o.2));
        assert_eq!(f.gaps(), 0);
    }

    #[test]
    fn lost_ticks_while_running_resync_on_the_next_sixteenth() {
        // Ticks 2..=9 lost; the next one is beat 10/24. Stop, SPP 2 (beat 0.5), and
        // Continue + tick exactly at beat 12/24.
        let mut events = vec![ev(0, ClockKind::Start, 0.0)];
        events.extend((0..2).map(|k| ev(1 + k, ClockKind::Tick, k as f64 / 24.0)));
        events.extend((10..14).map(|k| ev(1 + k, ClockKind::Tick, k as f64 / 24.0)));
        let (out, f) = run(&events);
        assert_eq!(f.gaps(), 1);
        assert_eq!(f.lost(), 8);
        let kinds: Vec<ClockKind> = out.iter().map(|o| o.0).collect();
        assert_eq!(
            kinds,
            [
                ClockKind::Start,
                ClockKind::Tick,
                ClockKind::Tick,
                ClockKind::Stop,
                ClockKind::SongPosition(2),
                ClockKind::Continue,
                ClockKind::Tick,
                ClockKind::Tick,
            ]
        );
        assert_eq!(out[5].1, 0.5);
        assert_eq!(out[6].1, 0.5);
    }

    #[test]
    fn a_lost_spp_is_repeated_before_continue() {
        let events = [
            ev(0, ClockKind::Stop, 4.0),
            // seq 1 (the SPP) lost
            ev(2, ClockKind::Continue, 8.25),
            ev(3, ClockKind::Tick, 8.25),
        ];
        let (out, _) = run(&events);
        assert_eq!(out[1], (ClockKind::SongPosition(33), 8.25, true));
        assert_eq!(out[2].0, ClockKind::Continue);
        assert_eq!(out[3].0, ClockKind::Tick);
    }

    #[test]
    fn a_lost_start_does_not_leave_the_destination_stopped() {
        // Start (seq 0) lost: the first message seen is a tick at beat 0 after a "gap" from the
        // previous stream position.
        let mut f = ClockFollower::new();
        let mut out = Vec::new();
        f.handle(ev(0, ClockKind::SongPosition(0), 0.0), &mut |o| {
            out.push(o.kind)
        });
        f.handle(ev(2, ClockKind::Tick, 0.0), &mut |o| out.push(o.kind));
        assert_eq!(
            out,
            [
                ClockKind::SongPosition(0),
                ClockKind::SongPosition(0),
                ClockKind::Continue,
                ClockKind::Tick
            ]
        );
    }
}
