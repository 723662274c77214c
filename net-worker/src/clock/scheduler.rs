//! When each clock message leaves for a destination: output-latency alignment, the user's
//! offset, and prediction for early offsets.
//!
//! A message's stamp is the smoothed host time at which the host *processed* its sample. The
//! sample reaches the speakers one output latency later; plugins are not told that latency, so
//! the worker assumes [`SchedulerConfig::latency_ns`] (two blocks of the host's maximum block
//! size unless configured) and the user's offset trims the rest. The send time is
//!
//! ```text
//! send_at = stamp + latency + offset        (offset < 0 = earlier)
//! ```
//!
//! The engine emits a block's messages one block late (when the next block arrives), so a
//! message is known at about `stamp + 1 block`. Late offsets, and early ones down to
//! `−(latency − 1 block)`, are therefore exact: the message is queued until `send_at`. Earlier
//! than that the message is not known in time, so while the clock runs, ticks are *predicted*
//! from the last real tick and the current tempo, and sent at their predicted time. Every real
//! tick re-anchors the prediction and every tempo change reaches it with the next block's
//! snapshot. How far ahead it reaches is measured from the newest block the engine processed
//! ([`Scheduler::handle_progress`]), not from the newest tick, which can be a tick period older.
//!
//! # Error bound of predicted ticks
//! With `H` = how far ahead of the newest real tick a prediction reaches (at most the early part
//! of the offset beyond `latency − 1 block`, plus one block), a tempo change from `T` to `T′`
//! makes a predicted tick early or late by at most `H · |1 − T/T′|` (e.g. H = 20 ms, 120 → 126
//! BPM: ≤ 1 ms). Transport messages (Start, Stop, Continue, SPP) are never predicted: with such
//! an offset they leave as soon as they are known, up to `H` late. Ticks already predicted past
//! a Stop or a jump (at most `H × 24 × T/60` of them) cannot be taken back; they are counted in
//! [`SchedulerStats::overpredicted`] and the Stop / Song Position / Continue that follows puts
//! the destination right.
//!
//! Sans-IO: the caller passes `now` in host nanoseconds and asks what to send.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::follower::Outgoing;
use super::{BEAT_EPSILON, ClockKind, TICKS_PER_BEAT};

/// Most messages waiting at once (about 40 s of ticks at 999 BPM); beyond this the oldest
/// message is sent at once and counted, rather than growing without bound.
pub const MAX_QUEUED: usize = 16_384;

/// Margin for the worker's drain period in the prediction horizon, ns.
pub const PREDICTION_SLACK_NS: f64 = 2e6;

/// How one destination's messages are timed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Assumed host output latency, ns: stamp → the moment the sample is heard.
    pub latency_ns: f64,
    /// User offset, ns; negative sends earlier.
    pub offset_ns: f64,
}

impl SchedulerConfig {
    /// Until an instance reports its block size: 2 × 512 samples at 48 kHz, no offset.
    pub const DEFAULT: Self = Self {
        latency_ns: 2.0 * 512.0 / 48_000.0 * 1e9,
        offset_ns: 0.0,
    };
}

/// One message to send now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transmit {
    /// The message.
    pub message: Outgoing,
    /// When it should have left, host ns.
    pub send_at_ns: f64,
    /// True if predicted from tempo rather than received from the engine.
    pub predicted: bool,
}

/// Counters for the status.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SchedulerStats {
    /// Messages that became known only after their send time (sent at once).
    pub late: u64,
    /// Worst lateness of those, ns.
    pub worst_late_ns: f64,
    /// Ticks sent from prediction.
    pub predicted: u64,
    /// Worst |predicted − real| stamp of predicted ticks confirmed so far, ns.
    pub worst_prediction_error_ns: f64,
    /// Predicted ticks that turned out to lie past a Stop or jump.
    pub overpredicted: u64,
    /// Messages sent early because the queue was full.
    pub queue_overflow: u64,
}

/// Scheduling for one destination.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    queue: VecDeque<Transmit>,
    /// The clock is running at the destination (after Start/Continue, before Stop).
    running: bool,
    /// The newest real tick: (beat, stamp ns, sample position).
    anchor: Option<(f64, f64, f64)>,
    /// Current tempo from the host, BPM.
    tempo_bpm: Option<f64>,
    /// Predicted and sent, not yet confirmed: (beat, predicted stamp ns).
    predicted: VecDeque<(f64, f64)>,
    /// How far the engine has produced its messages (host ns): the newest block's start.
    progress_ns: Option<f64>,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler with `config`.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            queue: VecDeque::new(),
            running: false,
            anchor: None,
            tempo_bpm: None,
            predicted: VecDeque::new(),
            progress_ns: None,
            stats: SchedulerStats::default(),
        }
    }

    /// The engine has produced every message stamped before `ns` (host ns; the start of the
    /// newest block: a block's messages come with the next one). Prediction then reaches from
    /// there, not only from the newest real tick, which may lie up to a tick period further
    /// back: without this an early offset beyond `latency − 1 block` left ticks up to one tick
    /// late.
    pub fn handle_progress(&mut self, ns: f64) {
        if ns.is_finite() {
            self.progress_ns = Some(self.progress_ns.map_or(ns, |p| p.max(ns)));
        }
    }

    /// Change latency or offset; applies to messages that arrive from now on.
    pub fn set_config(&mut self, config: SchedulerConfig) {
        self.config = config;
    }

    /// The current configuration.
    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// The host's current tempo (from each block's snapshot).
    pub fn handle_tempo(&mut self, tempo_bpm: Option<f64>) {
        self.tempo_bpm = tempo_bpm.filter(|t| t.is_finite() && *t > 0.0);
    }

    fn send_at(&self, stamp_ns: f64) -> f64 {
        stamp_ns + self.config.latency_ns + self.config.offset_ns
    }

    /// A real message from the engine (through the follower), at host time `now_ns`.
    pub fn handle(&mut self, now_ns: f64, message: Outgoing) {
        match message.kind {
            ClockKind::Tick => {
                self.anchor = Some((message.beat, message.host_time_ns, message.sample_pos));
                // Already sent from prediction? Then only measure how good it was.
                while let Some(&(beat, predicted_ns)) = self.predicted.front() {
                    if beat < message.beat - BEAT_EPSILON {
                        self.predicted.pop_front();
                        continue;
                    }
                    if (beat - message.beat).abs() < BEAT_EPSILON {
                        self.predicted.pop_front();
                        let err = (predicted_ns - message.host_time_ns).abs();
                        self.stats.worst_prediction_error_ns =
                            self.stats.worst_prediction_error_ns.max(err);
                        return;
                    }
                    break;
                }
            }
            ClockKind::Start | ClockKind::Continue => {
                self.running = true;
                // The first tick comes with it, at the same beat.
                self.anchor = Some((
                    message.beat - 1.0 / TICKS_PER_BEAT,
                    message.host_time_ns,
                    message.sample_pos,
                ));
                self.predicted.clear();
            }
            ClockKind::Stop | ClockKind::SongPosition(_) => {
                if message.kind == ClockKind::Stop {
                    self.running = false;
                }
                self.stats.overpredicted += self.predicted.len() as u64;
                self.predicted.clear();
                self.anchor = None;
            }
        }
        let send_at_ns = self.send_at(message.host_time_ns);
        if send_at_ns < now_ns {
            self.stats.late += 1;
            self.stats.worst_late_ns = self.stats.worst_late_ns.max(now_ns - send_at_ns);
        }
        if self.queue.len() >= MAX_QUEUED {
            self.stats.queue_overflow += 1;
            // Keep order: the oldest goes first, early.
            if let Some(mut oldest) = self.queue.pop_front() {
                oldest.send_at_ns = now_ns;
                self.queue.push_front(oldest);
            }
        }
        self.queue.push_back(Transmit {
            message,
            send_at_ns,
            predicted: false,
        });
    }

    /// The next predicted tick (beat, stamp, anchor's sample position), if the clock runs and a
    /// tempo and an anchor are known.
    fn next_prediction(&self) -> Option<(f64, f64, f64)> {
        if !self.running || !self.queue.is_empty() {
            return None;
        }
        let (anchor_beat, anchor_ns, anchor_sample) = self.anchor?;
        let tempo = self.tempo_bpm?;
        let last = self.predicted.back().map_or(anchor_beat, |p| p.0);
        let beat = ((last * TICKS_PER_BEAT).round() + 1.0) / TICKS_PER_BEAT;
        let stamp = anchor_ns + (beat - anchor_beat) * 60.0 / tempo * 1e9;
        // Predict only as far ahead as the early offset needs (the engine's messages arrive
        // about half the assumed latency, one block, after their stamp, plus the worker's
        // drain period), so a host that stops calling process() does not get ticks invented
        // for it.
        let horizon =
            (-self.config.offset_ns - self.config.latency_ns / 2.0 + PREDICTION_SLACK_NS).max(0.0);
        let known = self.progress_ns.map_or(anchor_ns, |p| p.max(anchor_ns));
        (stamp <= known + horizon).then_some((beat, stamp, anchor_sample))
    }

    /// The next message due at `now_ns`, if any.
    pub fn poll_transmit(&mut self, now_ns: f64) -> Option<Transmit> {
        if let Some(front) = self.queue.front()
            && front.send_at_ns <= now_ns
        {
            return self.queue.pop_front();
        }
        let (beat, stamp, anchor_sample) = self.next_prediction()?;
        let send_at_ns = self.send_at(stamp);
        if send_at_ns > now_ns {
            return None;
        }
        self.predicted.push_back((beat, stamp));
        self.stats.predicted += 1;
        Some(Transmit {
            message: Outgoing {
                kind: ClockKind::Tick,
                beat,
                // Not known yet: the real tick it was predicted from (JSON has no NaN).
                sample_pos: anchor_sample,
                host_time_ns: stamp,
                repair: false,
            },
            send_at_ns,
            predicted: true,
        })
    }

    /// When [`Scheduler::poll_transmit`] will next have something, host ns.
    pub fn poll_timeout(&self) -> Option<f64> {
        if let Some(front) = self.queue.front() {
            return Some(front.send_at_ns);
        }
        self.next_prediction()
            .map(|(_, stamp, _)| self.send_at(stamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    /// 120 BPM: a tick every 20.833 ms.
    const TICK_NS: f64 = 60.0 / 120.0 / 24.0 * 1e9;

    fn msg(kind: ClockKind, beat: f64, stamp: f64) -> Outgoing {
        Outgoing {
            kind,
            beat,
            sample_pos: 0.0,
            host_time_ns: stamp,
            repair: false,
        }
    }

    fn drain(s: &mut Scheduler, now: f64) -> Vec<Transmit> {
        std::iter::from_fn(|| s.poll_transmit(now)).collect()
    }

    #[test]
    fn late_offset_delays_each_message_exactly() {
        let mut s = Scheduler::new(SchedulerConfig {
            latency_ns: 10.0 * MS,
            offset_ns: 5.0 * MS,
        });
        s.handle(1000.0 * MS, msg(ClockKind::Start, 0.0, 995.0 * MS));
        s.handle(1000.0 * MS, msg(ClockKind::Tick, 0.0, 995.0 * MS));
        assert_eq!(s.poll_timeout(), Some(1010.0 * MS));
        assert!(drain(&mut s, 1009.9 * MS).is_empty());
        let out = drain(&mut s, 1010.0 * MS);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|t| t.send_at_ns == 1010.0 * MS && !t.predicted)
        );
        assert_eq!(s.stats().late, 0);
    }

    #[test]
    fn messages_known_too_late_are_sent_at_once_and_counted() {
        let mut s = Scheduler::new(SchedulerConfig {
            latency_ns: 0.0,
            offset_ns: -2.0 * MS,
        });
        s.handle(
            1000.0 * MS,
            msg(ClockKind::SongPosition(4), 1.0, 999.0 * MS),
        );
        let out = drain(&mut s, 1000.0 * MS);
        assert_eq!(out.len(), 1);
        assert_eq!(s.stats().late, 1);
        assert_eq!(s.stats().worst_late_ns, 3.0 * MS);
    }

    #[test]
    fn early_offsets_predict_ticks_from_tempo_and_confirm_them() {
        // Offset 30 ms earlier than the stamps, with no latency to hide behind: ticks must
        // leave before the engine has produced them.
        let mut s = Scheduler::new(SchedulerConfig {
            latency_ns: 0.0,
            offset_ns: -30.0 * MS,
        });
        s.handle_tempo(Some(120.0));
        let t0 = 1000.0 * MS;
        s.handle(t0, msg(ClockKind::Start, 0.0, t0));
        s.handle(t0, msg(ClockKind::Tick, 0.0, t0));
        let out = drain(&mut s, t0);
        // Start and tick 0 are 30 ms late: sent at once. The tick at beat 1/24 (stamp
        // t0 + 20.8 ms) is due at t0 − 9.2 ms: predicted and sent too.
        assert_eq!(out.len(), 3);
        assert_eq!(s.stats().late, 2);
        assert!(!out[0].predicted && !out[1].predicted && out[2].predicted);
        assert_eq!(out[2].message.beat, 1.0 / 24.0);
        assert!((out[2].message.host_time_ns - (t0 + TICK_NS)).abs() < 1.0);
        // The horizon is 32 ms past the newest real tick (30 ms early + 2 ms slack): the tick
        // at 2/24 (41.7 ms) waits for more real data.
        assert_eq!(s.poll_timeout(), None);
        // The real tick arrives later: confirmed, not sent twice.
        s.handle(
            t0 + 25.0 * MS,
            msg(ClockKind::Tick, 1.0 / 24.0, t0 + TICK_NS + 100.0),
        );
        // At t0 + 25 ms the tick at 2/24 (due t0 + 11.7 ms) goes out, predicted; 3/24 is not due.
        let later = drain(&mut s, t0 + 25.0 * MS);
        assert_eq!(later.len(), 1);
        assert!(later[0].predicted && later[0].message.beat == 2.0 / 24.0);
        assert_eq!(s.stats().predicted, 2);
        assert!((s.stats().worst_prediction_error_ns - 100.0).abs() < 1.0);
    }

    #[test]
    fn tempo_changes_reach_the_prediction_and_stop_counts_overpredicted_ticks() {
        let mut s = Scheduler::new(SchedulerConfig {
            latency_ns: 0.0,
            offset_ns: -50.0 * MS,
        });
        s.handle_tempo(Some(120.0));
        let t0 = 1000.0 * MS;
        s.handle(t0, msg(ClockKind::Continue, 4.0, t0));
        s.handle(t0, msg(ClockKind::Tick, 4.0, t0));
        drain(&mut s, t0);
        // Predicted up to t0 + 50 ms: ticks at +20.8 and +41.7 ms.
        assert_eq!(s.stats().predicted, 2);
        s.handle_tempo(Some(240.0));
        let next = s.poll_timeout().expect("pending");
        // Beat 4 + 3/24 at 240 BPM is 3 × 10.4 ms after the anchor.
        assert!((next - (t0 + 3.0 * TICK_NS / 2.0 - 50.0 * MS)).abs() < 1.0);
        // The host stops before those ticks: they were sent, and are counted.
        s.handle(
            t0 + 5.0 * MS,
            msg(ClockKind::Stop, 4.0 + 1.0 / 48.0, t0 + 10.0 * MS),
        );
        assert_eq!(s.stats().overpredicted, 2);
        let out = drain(&mut s, t0 + 5.0 * MS);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message.kind, ClockKind::Stop);
        assert!(s.poll_timeout().is_none(), "no prediction while stopped");
    }

    /// The worst lateness of any tick from beat 1 on, for a far peer aligned 40.4 ms early at
    /// 130 BPM (2 × 256 samples at 48 kHz assumed latency): the engine delivers each block's
    /// ticks 1 ms after the next block starts; with `progress` the scheduler hears each
    /// block's start too.
    fn worst_late_aligned(progress: bool) -> f64 {
        let latency = 2.0 * 256.0 / 48_000.0 * 1e9;
        let mut s = Scheduler::new(SchedulerConfig {
            latency_ns: latency,
            offset_ns: -40.4 * MS,
        });
        s.handle_tempo(Some(130.0));
        let tick = 60.0 / 130.0 / 24.0 * 1e9;
        let block = 256.0 / 48_000.0 * 1e9;
        let t0 = 1000.0 * MS;
        let (mut worst, mut now, mut next_tick) = (0.0f64, t0, 0u32);
        for k in 0..400u32 {
            let start = t0 + f64::from(k) * block;
            while now < start + MS {
                for t in drain(&mut s, now) {
                    if t.message.beat >= 1.0 {
                        worst = worst.max(now - t.send_at_ns);
                    }
                }
                now += 0.1 * MS;
            }
            if progress {
                s.handle_progress(start);
            }
            while t0 + f64::from(next_tick) * tick < start {
                let stamp = t0 + f64::from(next_tick) * tick;
                if next_tick == 0 {
                    s.handle(now, msg(ClockKind::Start, 0.0, stamp));
                }
                s.handle(
                    now,
                    msg(ClockKind::Tick, f64::from(next_tick) / 24.0, stamp),
                );
                next_tick += 1;
            }
        }
        worst
    }

    #[test]
    fn block_progress_lets_a_far_early_offset_predict_every_tick_in_time() {
        let with = worst_late_aligned(true);
        let without = worst_late_aligned(false);
        // 0.1 ms is the test's polling step.
        assert!(
            with <= 0.1 * MS + 1.0,
            "{} ms late with block progress",
            with / MS
        );
        // Anchored only on the newest real tick, a tick could leave most of a tick late.
        assert!(without > 5.0 * MS, "{} ms late without", without / MS);
    }

    #[test]
    fn a_host_that_stops_calling_process_gets_no_invented_ticks() {
        let mut s = Scheduler::new(SchedulerConfig {
            latency_ns: 20.0 * MS,
            offset_ns: -15.0 * MS,
        });
        s.handle_tempo(Some(120.0));
        let t0 = 1000.0 * MS;
        s.handle(t0, msg(ClockKind::Start, 0.0, t0));
        s.handle(t0, msg(ClockKind::Tick, 0.0, t0));
        // Then nothing more from the engine, for a whole second.
        let out: Vec<Transmit> = (0..1000)
            .flat_map(|ms| drain(&mut s, t0 + f64::from(ms) * MS))
            .collect();
        // Horizon: 15 − 10 + 2 = 7 ms past the last real tick, less than one tick: nothing
        // is predicted.
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(s.stats().predicted, 0);
    }

    #[test]
    fn no_prediction_when_the_real_messages_arrive_in_time() {
        let mut s = Scheduler::new(SchedulerConfig {
            latency_ns: 20.0 * MS,
            offset_ns: -5.0 * MS,
        });
        s.handle_tempo(Some(120.0));
        let mut now = 1000.0 * MS;
        for k in 0..100 {
            let stamp = 1000.0 * MS + f64::from(k) * TICK_NS;
            now = now.max(stamp + 5.0 * MS);
            let kind = if k == 0 {
                ClockKind::Start
            } else {
                ClockKind::Tick
            };
            s.handle(now, msg(kind, f64::from(k.max(1) - 1) / 24.0, stamp));
            if k == 0 {
                s.handle(now, msg(ClockKind::Tick, 0.0, stamp));
            }
            for t in drain(&mut s, now) {
                assert!(!t.predicted);
            }
            now += 1.0 * MS;
        }
        assert_eq!(s.stats().predicted, 0);
        assert_eq!(s.stats().late, 0);
    }
}
