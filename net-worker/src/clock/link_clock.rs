//! Link → MIDI clock: in Link Mode *Follow*, an instance's clock messages come from the Link
//! session's timeline instead of the DAW's transport.
//!
//! # Rules
//! - Ticks fall on the session's grid: beats k/24 of the session timeline, at the Link time the
//!   timeline puts them (the time a listener hears them; Link times are output times).
//! - Start is quantized, as Link apps start: when the session starts (or when following begins
//!   while it plays), Start and the first tick go out on the first quantum boundary (session
//!   beat multiple of the quantum) at or after the start time, so beat 1 of a remote sequencer
//!   is beat 0 of the session's phase. A boundary that passed at most [`START_GRACE_US`] ago
//!   still counts (the start message arrived a moment after it).
//! - Song position counts the ticks sent since Start (24 per beat).
//! - Tempo changes and beat jumps of the session move the grid; the next tick is the next grid
//!   point after the last one sent, so no tick is doubled and the remote stays in phase.
//! - A stall (worker preempted past [`STALL_US`]) skips the ticks that are already history
//!   rather than bursting them; counted in [`LinkClockStats::skipped`].
//! - Stop when the session stops (at the session's stop time, or at once if that passed).
//!
//! Sans-IO: the caller passes the timeline and the Link time now; messages come out stamped in
//! Link µs scaled to ns plus the caller's shift (to put them on the worker's host clock).

use serde::{Deserialize, Serialize};

use super::{ClockEvent, ClockKind, TICKS_PER_BEAT};

/// A start boundary that passed less than this long ago is still taken (µs).
pub const START_GRACE_US: f64 = 10_000.0;
/// Ticks this far in the past (µs) are skipped, not sent in a burst.
pub const STALL_US: f64 = 20_000.0;

/// The session's timeline as the Link peer has it now (Link µs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeline {
    /// Tempo, BPM.
    pub tempo: f64,
    /// A Link time and the session beat at it.
    pub anchor_us: f64,
    /// The session beat at `anchor_us`.
    pub anchor_beat: f64,
    /// Session playing.
    pub playing: bool,
    /// Link time of the session's last start/stop.
    pub start_stop_us: f64,
}

impl Timeline {
    /// The session beat at Link time `t`.
    pub fn beat_at(&self, t: f64) -> f64 {
        self.anchor_beat + (t - self.anchor_us) * self.tempo / 60e6
    }

    /// The Link time of session beat `beat`.
    pub fn time_at(&self, beat: f64) -> f64 {
        self.anchor_us + (beat - self.anchor_beat) * 60e6 / self.tempo.max(1e-3)
    }
}

/// Counters for the status.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LinkClockStats {
    /// Starts sent (each on a quantum boundary).
    pub starts: u64,
    /// Stops sent.
    pub stops: u64,
    /// Ticks sent.
    pub ticks: u64,
    /// Ticks skipped after a stall.
    pub skipped: u64,
    /// The DAW's own clock messages not passed on while following Link.
    pub superseded: u64,
    /// Session beat of the last Start (a multiple of the quantum).
    pub last_start_beat: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Stopped,
    /// Start goes out at this session beat.
    Waiting {
        start_beat: f64,
    },
    /// The last tick went out at this Link time; `ticks` since Start.
    Running {
        last_us: f64,
        ticks: u64,
    },
}

/// One instance's Link-driven clock stream.
#[derive(Debug, Clone)]
pub struct LinkClock {
    state: State,
    seq: u64,
    stats: LinkClockStats,
    /// The start/stop time already acted on (a new one is a new start or stop).
    seen_start_stop: Option<f64>,
}

impl Default for LinkClock {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkClock {
    /// Stopped, nothing sent.
    pub fn new() -> Self {
        Self {
            state: State::Stopped,
            seq: 0,
            stats: LinkClockStats::default(),
            seen_start_stop: None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> LinkClockStats {
        self.stats
    }

    /// Count a DAW clock message that was not passed on.
    pub fn supersede(&mut self) {
        self.stats.superseded += 1;
    }

    /// Running (Start sent, ticks going out).
    pub fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn emit(
        &mut self,
        kind: ClockKind,
        beat: f64,
        at_us: f64,
        shift_ns: f64,
        out: &mut impl FnMut(ClockEvent),
    ) {
        out(ClockEvent {
            kind,
            beat,
            sample_pos: 0.0,
            host_time_ns: at_us * 1e3 + shift_ns,
            seq: self.seq,
        });
        self.seq += 1;
    }

    /// Emit every message due up to `now_us + horizon_us` (Link µs) for timeline `tl` with
    /// `quantum` beats per phase; stamps are Link ns + `shift_ns`. Returns the Link time at
    /// which to call again (the next message's time minus the horizon).
    pub fn update(
        &mut self,
        tl: &Timeline,
        quantum: f64,
        now_us: f64,
        horizon_us: f64,
        shift_ns: f64,
        out: &mut impl FnMut(ClockEvent),
    ) -> Option<f64> {
        let quantum = if quantum.is_finite() && quantum > 0.0 {
            quantum
        } else {
            4.0
        };
        let new_start_stop = self
            .seen_start_stop
            .is_none_or(|t| (t - tl.start_stop_us).abs() > 0.5);
        self.seen_start_stop = Some(tl.start_stop_us);
        if !tl.playing {
            if let State::Running { last_us, ticks } = self.state {
                let at = tl.start_stop_us.max(last_us + 1.0);
                self.emit(
                    ClockKind::Stop,
                    ticks as f64 / TICKS_PER_BEAT,
                    at,
                    shift_ns,
                    out,
                );
                self.stats.stops += 1;
            }
            self.state = State::Stopped;
            return None;
        }
        if self.state == State::Stopped || (new_start_stop && !self.running()) {
            // Start on the first quantum boundary at or after the start (or now, if the
            // session has been playing for a while); a boundary just passed still counts.
            let from = tl.start_stop_us.max(now_us - START_GRACE_US);
            let beat = tl.beat_at(from);
            let start_beat = (beat / quantum - 1e-9).ceil() * quantum;
            self.state = State::Waiting { start_beat };
        }
        let horizon = now_us + horizon_us;
        if let State::Waiting { start_beat } = self.state {
            let at = tl.time_at(start_beat);
            if at > horizon {
                return Some(at - horizon_us);
            }
            self.emit(ClockKind::Start, 0.0, at, shift_ns, out);
            self.emit(ClockKind::Tick, 0.0, at, shift_ns, out);
            self.stats.starts += 1;
            self.stats.ticks += 1;
            self.stats.last_start_beat = start_beat;
            self.state = State::Running {
                last_us: at,
                ticks: 1,
            };
        }
        let State::Running {
            mut last_us,
            mut ticks,
        } = self.state
        else {
            return None;
        };
        let next = loop {
            // The grid point after the last tick, on the timeline as it is now.
            let index = (tl.beat_at(last_us) * TICKS_PER_BEAT + 0.5).floor() + 1.0;
            let mut at = tl.time_at(index / TICKS_PER_BEAT);
            if at < now_us - STALL_US {
                // History: resume on the first grid point from now on.
                let resume = (tl.beat_at(now_us) * TICKS_PER_BEAT).ceil();
                self.stats.skipped += (resume - index).max(0.0) as u64;
                at = tl.time_at(resume / TICKS_PER_BEAT);
            }
            if at > horizon {
                break at;
            }
            self.emit(
                ClockKind::Tick,
                ticks as f64 / TICKS_PER_BEAT,
                at,
                shift_ns,
                out,
            );
            ticks += 1;
            self.stats.ticks += 1;
            last_us = at;
        };
        self.state = State::Running { last_us, ticks };
        Some(next - horizon_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(tempo: f64, playing: bool) -> Timeline {
        Timeline {
            tempo,
            anchor_us: 0.0,
            anchor_beat: 0.0,
            playing,
            start_stop_us: 0.0,
        }
    }

    /// Run from `from` to `to` (µs) polling every `step`, collecting (kind, song beat, µs).
    fn run(
        clock: &mut LinkClock,
        tl: &Timeline,
        from: f64,
        to: f64,
        step: f64,
    ) -> Vec<(ClockKind, f64, f64)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            clock.update(tl, 4.0, t, 2_000.0, 0.0, &mut |e| {
                out.push((e.kind, e.beat, e.host_time_ns / 1e3))
            });
            t += step;
        }
        out
    }

    #[test]
    fn starts_on_the_next_bar_and_ticks_on_the_session_grid() {
        // The session plays since long ago at 120 BPM; following begins at beat 9.3: Start
        // on beat 12 (the next multiple of 4), ticks every 1/48 s on the grid.
        let tl = timeline(120.0, true);
        let mut c = LinkClock::new();
        let begin = tl.time_at(9.3);
        let out = run(&mut c, &tl, begin, tl.time_at(14.0), 700.0);
        assert_eq!(out[0].0, ClockKind::Start);
        assert!((out[0].2 - tl.time_at(12.0)).abs() < 1e-6, "{:?}", out[0]);
        let end = tl.time_at(14.0) - 1.0;
        let ticks: Vec<_> = out
            .iter()
            .filter(|o| o.0 == ClockKind::Tick && o.2 < end)
            .collect();
        assert_eq!(ticks.len(), 48, "two beats of ticks (12.0 ..< 14.0)");
        for (k, tick) in ticks.iter().enumerate() {
            assert!((tick.1 - k as f64 / 24.0).abs() < 1e-9, "song position");
            let grid = tl.time_at(12.0 + k as f64 / 24.0);
            assert!(
                (tick.2 - grid).abs() < 1e-6,
                "tick {k} at {} not {grid}",
                tick.2
            );
        }
        assert_eq!(c.stats().last_start_beat, 12.0);
    }

    #[test]
    fn a_session_start_just_past_a_boundary_starts_at_once() {
        // The session started on beat 8, the message arrived 4 ms later.
        let mut tl = timeline(120.0, true);
        tl.start_stop_us = tl.time_at(8.0);
        let mut c = LinkClock::new();
        let out = run(
            &mut c,
            &tl,
            tl.time_at(8.0) + 4_000.0,
            tl.time_at(8.5),
            1_000.0,
        );
        assert_eq!(out[0].0, ClockKind::Start);
        assert!((out[0].2 - tl.time_at(8.0)).abs() < 1e-6);
    }

    #[test]
    fn tempo_changes_keep_ticks_on_the_grid_and_a_jump_doubles_nothing() {
        let mut tl = timeline(120.0, true);
        let mut c = LinkClock::new();
        let mut out = run(&mut c, &tl, 0.0, tl.time_at(2.0), 500.0);
        // Tempo change at beat 2 (the timeline re-anchored there, beat continuous).
        let t2 = tl.time_at(2.0);
        tl = Timeline {
            tempo: 150.0,
            anchor_us: t2,
            anchor_beat: 2.0,
            ..tl
        };
        out.extend(run(&mut c, &tl, t2, tl.time_at(4.0), 500.0));
        // A peer forces the beat back by a quarter of a beat at beat 4.
        let t4 = tl.time_at(4.0);
        tl.anchor_us = t4;
        tl.anchor_beat = 3.75;
        out.extend(run(&mut c, &tl, t4, tl.time_at(5.0), 500.0));
        let ticks: Vec<_> = out.iter().filter(|o| o.0 == ClockKind::Tick).collect();
        for w in ticks.windows(2) {
            assert!(w[1].2 > w[0].2, "strictly later: {w:?}");
            assert!(
                (w[1].1 - w[0].1 - 1.0 / 24.0).abs() < 1e-9,
                "song position +1 tick"
            );
        }
        // After the change every tick is on the 150 BPM grid (10 ms apart, ± the horizon's
        // worth of ticks computed before the change was known).
        let late: Vec<_> = ticks.iter().filter(|t| t.2 > t2 + 5_000.0).collect();
        for w in late.windows(2) {
            let gap = w[1].2 - w[0].2;
            assert!((gap - 1e4 / 0.6).abs() < 1.0 || gap > 1e4 / 0.6, "{gap}");
        }
        // Every tick after the jump lies on the new grid.
        for t in ticks.iter().filter(|t| t.2 > t4 + 2_500.0) {
            let b = tl.beat_at(t.2) * 24.0;
            assert!((b - b.round()).abs() < 1e-6, "{t:?} off the grid");
        }
    }

    #[test]
    fn stop_and_restart_on_the_next_boundary() {
        let mut tl = timeline(120.0, true);
        let mut c = LinkClock::new();
        run(&mut c, &tl, 0.0, tl.time_at(1.0), 1_000.0);
        tl.playing = false;
        tl.start_stop_us = tl.time_at(1.02);
        let out = run(&mut c, &tl, tl.time_at(1.05), tl.time_at(2.0), 1_000.0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, ClockKind::Stop);
        assert!((out[0].2 - tl.time_at(1.02)).abs() < 1e-6);
        // Restart at beat 5.5: Start on beat 8.
        tl.playing = true;
        tl.start_stop_us = tl.time_at(5.5);
        let out = run(&mut c, &tl, tl.time_at(5.5), tl.time_at(8.1), 1_000.0);
        assert_eq!(out[0].0, ClockKind::Start);
        assert!((out[0].2 - tl.time_at(8.0)).abs() < 1e-6);
        assert_eq!(c.stats().starts, 2);
        assert_eq!(c.stats().stops, 1);
    }

    #[test]
    fn a_stall_skips_history_instead_of_bursting() {
        let tl = timeline(120.0, true);
        let mut c = LinkClock::new();
        run(&mut c, &tl, 0.0, tl.time_at(1.0), 1_000.0);
        // 200 ms without a call (9.6 ticks at 120 BPM).
        let resume = tl.time_at(1.0) + 200_000.0;
        let out = run(&mut c, &tl, resume, resume + 1.0, 1.0);
        assert!(out.iter().all(|o| o.2 >= resume - STALL_US), "{out:?}");
        assert!(c.stats().skipped >= 8, "{:?}", c.stats());
    }
}
