//! Comparing Lockstep's Link beat with a real Link peer's: both run on one machine, so one
//! clock (`CLOCK_MONOTONIC_RAW`, Link's clock on Linux) times both. The peer (aalink) prints
//! its session beat at its clock's times; Lockstep's beat at the same times comes from a
//! recorded history of its timeline, so each comparison uses what each peer believed at that
//! moment.

use serde_json::Value;

/// One beat reading of the real peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeatSample {
    /// Link time, µs.
    pub t: f64,
    /// Session beat at `t`.
    pub beat: f64,
    /// Session tempo, BPM.
    pub tempo: f64,
    /// Half the window the reading was taken in, µs.
    pub err: f64,
}

/// The `{"event": "beat", ...}` lines `aalink_peer.py` printed.
pub fn beat_samples(lines: &[Value]) -> Vec<BeatSample> {
    lines
        .iter()
        .filter(|v| v["event"] == "beat")
        .filter_map(|v| {
            Some(BeatSample {
                t: v["t"].as_f64()?,
                beat: v["beat"].as_f64()?,
                tempo: v["tempo"].as_f64()?,
                err: v["err"].as_f64().unwrap_or(0.0),
            })
        })
        .collect()
}

/// A peer's timeline as it believed it over time: (Link time µs, beat then, tempo then),
/// recorded in time order every time it is looked at.
#[derive(Debug, Default, Clone)]
pub struct History(Vec<(f64, f64, f64)>);

impl History {
    /// Nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// At Link time `t` the peer's beat was `beat` at `tempo`.
    pub fn record(&mut self, t: f64, beat: f64, tempo: f64) {
        self.0.push((t, beat, tempo));
    }

    /// The beat at `t` from the latest record at or before it (extrapolated at its tempo);
    /// None before the first record or more than `max_gap_us` after the one found.
    pub fn beat_at(&self, t: f64, max_gap_us: f64) -> Option<f64> {
        let i = self.0.partition_point(|r| r.0 <= t).checked_sub(1)?;
        let (at, beat, tempo) = self.0[i];
        (t - at <= max_gap_us).then(|| beat + (t - at) * tempo / 60e6)
    }
}

/// |ours − theirs| in µs of time (beats × 60e6 / tempo) for every sample at or after `from`
/// that the history covers.
pub fn phase_errors_us(ours: &History, theirs: &[BeatSample], from: f64) -> Vec<f64> {
    theirs
        .iter()
        .filter(|s| s.t >= from)
        .filter_map(|s| {
            let b = ours.beat_at(s.t, 5_000.0)?;
            Some((b - s.beat).abs() * 60e6 / s.tempo)
        })
        .collect()
}

/// The `p`-quantile (0..=1) of `values` (nearest rank), or NaN when empty.
pub fn quantile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_extrapolates_from_the_last_record_and_errors_are_in_time() {
        let mut h = History::new();
        h.record(0.0, 0.0, 120.0);
        h.record(1e6, 2.0, 60.0);
        assert_eq!(h.beat_at(-1.0, 1e9), None);
        assert!((h.beat_at(0.5e6, 1e9).unwrap() - 1.0).abs() < 1e-12);
        assert!((h.beat_at(2e6, 1e9).unwrap() - 3.0).abs() < 1e-12);
        assert_eq!(h.beat_at(2e6, 1.0), None, "too far from a record");
        // The peer is 1/120 beat behind: at 60 BPM, 8.33 ms.
        h.record(1.499e6, 2.499, 60.0);
        let theirs = [BeatSample {
            t: 1.5e6,
            beat: 2.5 - 1.0 / 120.0,
            tempo: 60.0,
            err: 0.0,
        }];
        let e = phase_errors_us(&h, &theirs, 0.0);
        assert!((e[0] - 1e6 / 120.0).abs() < 1e-6, "{e:?}");
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.99), 4.0);
    }
}
