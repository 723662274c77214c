//! The reference model: the ideal clock message list computed offline from a transport
//! timeline, and the per-block transport a host would report for that timeline.
//!
//! The model works on whole timeline segments with closed-form positions (sample of beat k/24 =
//! segment start + (k/24 − start beat) / beats per sample); the engine only sees per-block
//! snapshots and must infer continuity, jumps and loop wraps from them. Tests, the end-to-end
//! harness and the bench compare the two.

use crate::bridge::TransportSnapshot;
use crate::rng::Rng;

use super::{BEAT_EPSILON, ClockKind, TICKS_PER_BEAT, spp_at_or_after};

/// A stretch of the timeline with one state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// First sample.
    pub start: u64,
    /// Length in samples.
    pub len: u64,
    /// Playing (out of pre-roll).
    pub playing: bool,
    /// Song position at `start`, quarter notes.
    pub start_beat: f64,
    /// Tempo, quarter notes per minute.
    pub tempo_bpm: f64,
}

impl Segment {
    /// Quarter notes per sample.
    pub fn beats_per_sample(&self, sample_rate: f64) -> f64 {
        self.tempo_bpm / 60.0 / sample_rate
    }

    /// Song position at absolute sample `s` (inside the segment).
    pub fn beat_at(&self, s: f64, sample_rate: f64) -> f64 {
        if self.playing {
            self.start_beat + (s - self.start as f64) * self.beats_per_sample(sample_rate)
        } else {
            self.start_beat
        }
    }

    /// Song position at the segment's end.
    pub fn end_beat(&self, sample_rate: f64) -> f64 {
        self.beat_at((self.start + self.len) as f64, sample_rate)
    }
}

/// A whole transport timeline: contiguous segments from sample 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// Sample rate in Hz.
    pub sample_rate: f64,
    /// Contiguous segments.
    pub segments: Vec<Segment>,
}

/// One ideal message: kind, beat, exact sample position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ideal {
    /// Message.
    pub kind: ClockKind,
    /// Beat it belongs to (as in [`super::ClockEvent::beat`]).
    pub beat: f64,
    /// Exact sample position.
    pub sample_pos: f64,
}

/// What the remote has been told.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Remote {
    Stopped,
    Running,
    Waiting { at: f64, start: bool },
}

impl Timeline {
    /// The ideal message list.
    pub fn ideal(&self) -> Vec<Ideal> {
        let rate = self.sample_rate;
        let mut out = Vec::new();
        let mut remote = Remote::Stopped;
        let mut previous: Option<&Segment> = None;
        for seg in &self.segments {
            let at = seg.start as f64;
            let push = |out: &mut Vec<Ideal>, kind, beat, sample_pos| {
                out.push(Ideal {
                    kind,
                    beat,
                    sample_pos,
                })
            };
            let play_from = |out: &mut Vec<Ideal>, beat: f64, jumped: bool| {
                if !jumped && beat <= BEAT_EPSILON {
                    return Remote::Waiting {
                        at: 0.0,
                        start: true,
                    };
                }
                let (spp, resume) = spp_at_or_after(beat);
                push(out, ClockKind::SongPosition(spp), resume, at);
                Remote::Waiting {
                    at: resume,
                    start: false,
                }
            };
            match previous {
                None => {
                    if seg.playing {
                        remote = play_from(&mut out, seg.start_beat, false);
                    } else if seg.start_beat.abs() > BEAT_EPSILON {
                        let (spp, beat) = spp_at_or_after(seg.start_beat);
                        push(&mut out, ClockKind::SongPosition(spp), beat, at);
                    }
                }
                Some(prev) => {
                    let prev_end = prev.end_beat(rate);
                    let moved = (seg.start_beat - prev_end).abs() > 1e-6;
                    match (prev.playing, seg.playing) {
                        (true, true) if !moved => {}
                        (true, true) => {
                            push(&mut out, ClockKind::Stop, prev_end, at);
                            remote = play_from(&mut out, seg.start_beat, true);
                        }
                        (true, false) => {
                            push(&mut out, ClockKind::Stop, prev_end, at);
                            remote = Remote::Stopped;
                            if moved {
                                let (spp, beat) = spp_at_or_after(seg.start_beat);
                                push(&mut out, ClockKind::SongPosition(spp), beat, at);
                            }
                        }
                        (false, true) => remote = play_from(&mut out, seg.start_beat, false),
                        (false, false) => {
                            if moved {
                                let (spp, beat) = spp_at_or_after(seg.start_beat);
                                push(&mut out, ClockKind::SongPosition(spp), beat, at);
                            }
                        }
                    }
                }
            }
            if seg.playing {
                remote = ticks(seg, rate, remote, &mut out);
            }
            previous = Some(seg);
        }
        out
    }

    /// The per-block snapshots a host reports for this timeline, with block lengths from
    /// `blocks` (cycled), host time exactly on the sample clock from `base_ns`, and the loop
    /// range `loop_beats` reported on every block.
    pub fn host_blocks(
        &self,
        blocks: &[u32],
        base_ns: u64,
        loop_beats: Option<(f64, f64)>,
    ) -> Vec<TransportSnapshot> {
        let total: u64 = self.segments.iter().map(|s| s.len).sum();
        let mut out = Vec::new();
        let mut s = 0u64;
        let mut i = 0usize;
        while s < total && !blocks.is_empty() {
            let len = u64::from(blocks[i % blocks.len()]).min(total - s);
            let seg = self
                .segments
                .iter()
                .find(|g| g.start <= s && s < g.start + g.len)
                .copied()
                .unwrap_or(self.segments[0]);
            out.push(TransportSnapshot {
                playing: seg.playing,
                tempo_bpm: Some(seg.tempo_bpm),
                pos_beats: Some(seg.beat_at(s as f64, self.sample_rate)),
                loop_range_beats: loop_beats,
                ..TransportSnapshot::unreported(
                    s,
                    len as u32,
                    self.sample_rate as f32,
                    base_ns + (s as f64 * 1e9 / self.sample_rate) as u64,
                )
            });
            s += len;
            i += 1;
        }
        out
    }
}

/// Ticks (and a pending Start/Continue) inside one playing segment.
fn ticks(seg: &Segment, rate: f64, mut remote: Remote, out: &mut Vec<Ideal>) -> Remote {
    let bps = seg.beats_per_sample(rate);
    let b0 = seg.start_beat;
    let b1 = seg.end_beat(rate);
    let sample_of = |beat: f64| seg.start as f64 + (beat - b0) / bps;
    // Grid points k with b0 <= k/24 < b1 (with the same tolerance the engine uses).
    let eps = BEAT_EPSILON * TICKS_PER_BEAT;
    let mut k = (b0 * TICKS_PER_BEAT - eps).ceil() as i64;
    let end = b1 * TICKS_PER_BEAT - eps;
    while (k as f64) < end {
        let beat = k as f64 / TICKS_PER_BEAT;
        match remote {
            Remote::Stopped => return remote,
            Remote::Waiting { at, start } => {
                if (beat - at).abs() < BEAT_EPSILON {
                    let kind = if start {
                        ClockKind::Start
                    } else {
                        ClockKind::Continue
                    };
                    out.push(Ideal {
                        kind,
                        beat: at,
                        sample_pos: sample_of(at),
                    });
                    remote = Remote::Running;
                } else {
                    k += 1;
                    continue;
                }
            }
            Remote::Running => {}
        }
        out.push(Ideal {
            kind: ClockKind::Tick,
            beat,
            sample_pos: sample_of(beat),
        });
        k += 1;
    }
    remote
}

/// A generated test case: a timeline, the host's block sizes and loop reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The transport timeline.
    pub timeline: Timeline,
    /// Block sizes, used in order.
    pub blocks: Vec<u32>,
}

/// Sample rates the corpus draws from.
pub const RATES: [f64; 6] = [44_100.0, 48_000.0, 88_200.0, 96_000.0, 176_400.0, 192_000.0];

/// A random transport timeline with segment changes (start, stop, locate, jump, tempo change)
/// on block boundaries, tempo 20–999 BPM, rates 44.1–192 kHz and block sizes 1–8192, fixed or
/// varying. The same seed always gives the same case.
pub fn random_case(seed: u64) -> Case {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let rate = RATES[rng.below(RATES.len() as u64) as usize];
    let blocks: Vec<u32> = if rng.chance(0.5) {
        let fixed = [1, 7, 64, 128, 256, 512, 1024, 4096, 8192];
        let n = if rng.chance(0.8) {
            fixed[rng.below(fixed.len() as u64) as usize]
        } else {
            1 + rng.below(8192) as u32
        };
        vec![n]
    } else {
        let small = rng.chance(0.3);
        (0..64)
            .map(|_| 1 + rng.below(if small { 32 } else { 8192 }) as u32)
            .collect()
    };
    // Up to ~3 s of audio and at most 12,000 blocks.
    let mean_block = blocks.iter().map(|&b| u64::from(b)).sum::<u64>() / blocks.len() as u64;
    let max_blocks = (3.0 * rate / mean_block.max(1) as f64).clamp(16.0, 12_000.0) as u64;
    let block_count = max_blocks / 2 + rng.below(max_blocks / 2);
    // Block starts, then segments on some of them.
    let mut starts = Vec::with_capacity(block_count as usize);
    let mut s = 0u64;
    for i in 0..block_count as usize {
        starts.push(s);
        s += u64::from(blocks[i % blocks.len()]);
    }
    let total = s;
    let cuts = 1 + rng.below(8) as usize;
    let mut bounds: Vec<u64> = (0..cuts)
        .map(|_| starts[rng.below(starts.len() as u64) as usize])
        .collect();
    bounds.push(0);
    bounds.sort_unstable();
    bounds.dedup();
    let log_tempo = |rng: &mut Rng| (20f64.ln() + rng.unit() * (999f64.ln() - 20f64.ln())).exp();
    let mut segments: Vec<Segment> = Vec::new();
    for (i, &start) in bounds.iter().enumerate() {
        let end = bounds.get(i + 1).copied().unwrap_or(total);
        let playing = rng.chance(0.7);
        let tempo = if i > 0 && rng.chance(0.3) {
            segments[i - 1].tempo_bpm
        } else {
            log_tempo(&mut rng)
        };
        let start_beat = match segments.last() {
            None => {
                if rng.chance(0.5) {
                    0.0
                } else {
                    rng.unit() * 64.0
                }
            }
            Some(prev) => {
                let prev_end = prev.end_beat(rate);
                if rng.chance(0.45) {
                    prev_end
                } else {
                    // A jump far enough away that no tempo change can explain it.
                    let mut target;
                    loop {
                        target = if rng.chance(0.2) {
                            0.0
                        } else if rng.chance(0.5) {
                            rng.below(1024) as f64 / 4.0
                        } else {
                            rng.unit() * 256.0
                        };
                        if (target - prev_end).abs() > 8.0 {
                            break;
                        }
                    }
                    target
                }
            }
        };
        segments.push(Segment {
            start,
            len: end - start,
            playing,
            start_beat,
            tempo_bpm: tempo,
        });
    }
    Case {
        timeline: Timeline {
            sample_rate: rate,
            segments,
        },
        blocks,
    }
}

/// How closely an engine's output matched the model.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Agreement {
    /// Messages compared.
    pub events: usize,
    /// Largest |engine − ideal| sample position.
    pub worst_sample_error: f64,
    /// Largest |engine − ideal| host time in nanoseconds, when stamps are compared.
    pub worst_time_error_ns: f64,
}

/// Compare engine events with the ideal list, both cut to messages before sample `until`
/// (the engine emits a block's messages when the next block arrives). Kinds and beats must be
/// identical; sample positions within `max_sample_error`; if `line` is given as (base ns,
/// sample rate), host times must be within one sample of that exact line.
pub fn compare(
    engine: &[super::ClockEvent],
    ideal: &[Ideal],
    until: f64,
    max_sample_error: f64,
    line: Option<(f64, f64)>,
) -> Result<Agreement, String> {
    let engine: Vec<_> = engine
        .iter()
        .filter(|e| e.sample_pos < until - 1e-6)
        .collect();
    let ideal: Vec<_> = ideal
        .iter()
        .filter(|e| e.sample_pos < until - 1e-6)
        .collect();
    let mut agreement = Agreement::default();
    for (i, (got, want)) in engine.iter().zip(&ideal).enumerate() {
        let context = || {
            let lo = i.saturating_sub(3);
            format!(
                "at message {i}: engine {:?}\n ideal {:?}",
                &engine[lo..(i + 3).min(engine.len())],
                &ideal[lo..(i + 3).min(ideal.len())]
            )
        };
        if got.kind != want.kind || (got.beat - want.beat).abs() > 1e-9 {
            return Err(format!("kind/beat differ {}", context()));
        }
        let err = (got.sample_pos - want.sample_pos).abs();
        agreement.worst_sample_error = agreement.worst_sample_error.max(err);
        if err > max_sample_error {
            return Err(format!("sample error {err} {}", context()));
        }
        if let Some((base_ns, rate)) = line {
            let ideal_ns = base_ns + want.sample_pos * 1e9 / rate;
            let err_ns = (got.host_time_ns - ideal_ns).abs();
            agreement.worst_time_error_ns = agreement.worst_time_error_ns.max(err_ns);
            if err_ns > 1e9 / rate {
                return Err(format!("host time off by {err_ns} ns {}", context()));
            }
        }
        agreement.events += 1;
    }
    if engine.len() != ideal.len() {
        let n = engine.len().min(ideal.len());
        return Err(format!(
            "{} engine messages, {} ideal; first extra: engine {:?} ideal {:?}",
            engine.len(),
            ideal.len(),
            engine.get(n),
            ideal.get(n)
        ));
    }
    Ok(agreement)
}

/// Run a fresh engine over `case` (host time exactly on the sample clock from 1 s) and compare
/// it with the model. Returns the agreement, or a description of the first difference.
pub fn check_case(case: &Case) -> Result<Agreement, String> {
    let base_ns = 1_000_000_000u64;
    let rate = case.timeline.sample_rate;
    let snapshots = case.timeline.host_blocks(&case.blocks, base_ns, None);
    let mut engine = super::engine::ClockEngine::new(rate);
    let mut events = Vec::new();
    for snap in &snapshots {
        engine.process(snap, &mut |e| events.push(e));
    }
    let until = snapshots
        .last()
        .map_or(0.0, |s| s.block_start_samples as f64);
    compare(
        &events,
        &case.timeline.ideal(),
        until,
        1.0,
        Some((base_ns as f64, rate)),
    )
}

/// Run the corpus `random_case(0..seeds)` and return the overall agreement: the worst stamp
/// error in samples and in seconds (each case at its own sample rate), and messages compared.
/// Errors out on the first case that does not match.
pub fn corpus_agreement(seeds: u64) -> Result<(Agreement, f64), String> {
    let mut total = Agreement::default();
    let mut worst_seconds = 0.0f64;
    for seed in 0..seeds {
        let case = random_case(seed);
        let a = check_case(&case).map_err(|e| format!("seed {seed}: {e}"))?;
        total.events += a.events;
        total.worst_sample_error = total.worst_sample_error.max(a.worst_sample_error);
        total.worst_time_error_ns = total.worst_time_error_ns.max(a.worst_time_error_ns);
        worst_seconds = worst_seconds.max(a.worst_sample_error / case.timeline.sample_rate);
    }
    Ok((total, worst_seconds))
}

/// Result of [`jitter_study`], nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    /// 99th percentile of |tick interval − ideal interval|: what a receiver hears as jitter.
    pub interval_p99_ns: f64,
    /// Largest |tick interval − ideal interval|.
    pub interval_max_ns: f64,
    /// 99th percentile of |stamp − true time| (a constant offset is part of this; receivers
    /// absorb it in their latency setting).
    pub absolute_p99_ns: f64,
    /// Ticks measured.
    pub ticks: usize,
}

/// Play `seconds` at 120 BPM through a fresh engine whose host calls back with timestamps
/// jittered uniformly by ±1 block (deterministic), and measure the stamps' jitter after the
/// estimator. The first estimator window is excluded (the estimator is still filling).
pub fn jitter_study(rate: f64, block: u32, seconds: f64) -> Jitter {
    let mut engine = super::engine::ClockEngine::new(rate);
    let block_ns = f64::from(block) * 1e9 / rate;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let tempo = 120.0;
    let mut ticks = Vec::new();
    let blocks = (seconds * rate / f64::from(block)) as u64;
    for b in 0..blocks {
        let s = b * u64::from(block);
        let truth = 1e9 + s as f64 * 1e9 / rate;
        let jitter = (rng.unit() * 2.0 - 1.0) * block_ns;
        let snap = TransportSnapshot {
            playing: true,
            tempo_bpm: Some(tempo),
            pos_beats: Some(s as f64 * tempo / 60.0 / rate),
            ..TransportSnapshot::unreported(
                s,
                block,
                rate as f32,
                (truth + block_ns + jitter) as u64,
            )
        };
        let warm = b > super::estimator::WINDOW as u64;
        engine.process(&snap, &mut |e| {
            if warm && e.kind == ClockKind::Tick {
                ticks.push(e);
            }
        });
    }
    let interval = 60.0 / tempo / TICKS_PER_BEAT * 1e9;
    let mut intervals: Vec<f64> = ticks
        .windows(2)
        .map(|w| (w[1].host_time_ns - w[0].host_time_ns - interval).abs())
        .collect();
    let mut absolute: Vec<f64> = ticks
        .iter()
        .map(|t| (t.host_time_ns - (1e9 + block_ns + t.sample_pos * 1e9 / rate)).abs())
        .collect();
    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get((v.len() as f64 * 0.99) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Jitter {
        interval_p99_ns: p99(&mut intervals),
        interval_max_ns: intervals.iter().copied().fold(0.0, f64::max),
        absolute_p99_ns: p99(&mut absolute),
        ticks: ticks.len(),
    }
}
