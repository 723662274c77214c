//! Sample position → host time, smoothed over block timestamps.
//!
//! Audio callbacks run late or early by up to a block or more; the sample clock itself is
//! steady. A running least-squares line through the last [`WINDOW`] (sample position, host time)
//! pairs, as Ableton Link's `HostTimeFilter` does, gives stamps that follow the sample clock
//! (and its drift against the host clock) while callback jitter averages out.
//!
//! Once the window is full, the line's slope is low-pass filtered (time constant one window)
//! before use: the slope is the sample clock's rate against the host clock, which only drifts
//! slowly, while its block-to-block noise, multiplied by the distance from the window's centre,
//! is what would otherwise move the newest stamps by tens of microseconds per block.
//!
//! Realtime-safe: fixed-size storage, O(1) per block (running sums, re-centred every
//! [`WINDOW`] points so the sums stay small and exact enough for hours of audio).

/// Number of blocks in the regression window.
pub const WINDOW: usize = 4096;

/// A gap in host time this much longer than the block predicts resets the estimator (the host
/// stopped calling `process()`, e.g. the DAW's audio engine was suspended).
pub const RESET_GAP_NS: f64 = 250_000_000.0;

/// The running regression.
#[derive(Debug, Clone)]
pub struct HostTimeEstimator {
    /// Ring of (sample position, host time ns), relative to `base_*`.
    points: [(f64, f64); WINDOW],
    /// Index of the next write.
    next: usize,
    /// Points held, up to [`WINDOW`].
    len: usize,
    /// Inserts since the last re-centring.
    since_rebase: usize,
    base_samples: u64,
    base_ns: u64,
    sum_x: f64,
    sum_y: f64,
    sum_xx: f64,
    sum_xy: f64,
    sample_rate: f64,
    /// The last raw point, for gap detection.
    last: Option<(u64, u64)>,
    /// Low-passed regression slope (ns per sample), once the window has filled.
    smoothed_slope: Option<f64>,
}

impl HostTimeEstimator {
    /// An empty estimator for `sample_rate` Hz.
    pub fn new(sample_rate: f64) -> Self {
        Self {
            points: [(0.0, 0.0); WINDOW],
            next: 0,
            len: 0,
            since_rebase: 0,
            base_samples: 0,
            base_ns: 0,
            sum_x: 0.0,
            sum_y: 0.0,
            sum_xx: 0.0,
            sum_xy: 0.0,
            sample_rate,
            last: None,
            smoothed_slope: None,
        }
    }

    /// Forget everything (activation, sample-rate change, long gap). In place: the point
    /// storage is only read below `len`, so it is not cleared (no 64 KiB temporary on an audio
    /// thread's stack).
    pub fn reset(&mut self, sample_rate: f64) {
        self.next = 0;
        self.len = 0;
        self.since_rebase = 0;
        self.base_samples = 0;
        self.base_ns = 0;
        (self.sum_x, self.sum_y, self.sum_xx, self.sum_xy) = (0.0, 0.0, 0.0, 0.0);
        self.sample_rate = sample_rate;
        self.last = None;
        self.smoothed_slope = None;
    }

    /// Add the timestamp of the block starting at `samples`, taken at `host_ns`. Resets first
    /// if the sample rate changed, the sample clock went backwards, or host time jumped by more
    /// than [`RESET_GAP_NS`] beyond what the sample clock explains.
    pub fn add(&mut self, samples: u64, host_ns: u64, sample_rate: f64) {
        if sample_rate != self.sample_rate {
            self.reset(sample_rate);
        }
        if let Some((last_samples, last_ns)) = self.last {
            let expected_ns = (samples as f64 - last_samples as f64) * 1e9 / self.sample_rate;
            let actual_ns = host_ns as f64 - last_ns as f64;
            if samples < last_samples || (actual_ns - expected_ns).abs() > RESET_GAP_NS {
                self.reset(sample_rate);
            }
        }
        self.last = Some((samples, host_ns));
        if self.len == 0 {
            self.base_samples = samples;
            self.base_ns = host_ns;
        }
        if self.since_rebase >= WINDOW {
            self.rebase();
        }
        let point = (
            samples as f64 - self.base_samples as f64,
            host_ns as f64 - self.base_ns as f64,
        );
        if self.len == WINDOW {
            let (x, y) = self.points[self.next];
            self.remove_sums(x, y);
        } else {
            self.len += 1;
        }
        self.points[self.next] = point;
        self.add_sums(point.0, point.1);
        self.next = (self.next + 1) % WINDOW;
        self.since_rebase += 1;
        if self.len == WINDOW
            && let Some(slope) = self.regression_slope()
        {
            self.smoothed_slope = Some(match self.smoothed_slope {
                None => slope,
                Some(previous) => previous + (slope - previous) / WINDOW as f64,
            });
        }
    }

    /// The least-squares slope in ns per sample, once the points span some time.
    fn regression_slope(&self) -> Option<f64> {
        let n = self.len as f64;
        let var = self.sum_xx - self.sum_x * self.sum_x / n;
        (self.len >= 8 && var > 1.0).then(|| (self.sum_xy - self.sum_x * self.sum_y / n) / var)
    }

    fn add_sums(&mut self, x: f64, y: f64) {
        self.sum_x += x;
        self.sum_y += y;
        self.sum_xx += x * x;
        self.sum_xy += x * y;
    }

    fn remove_sums(&mut self, x: f64, y: f64) {
        self.sum_x -= x;
        self.sum_y -= y;
        self.sum_xx -= x * x;
        self.sum_xy -= x * y;
    }

    /// Move the origin to the oldest point and recompute the sums exactly.
    fn rebase(&mut self) {
        let oldest = if self.len == WINDOW { self.next } else { 0 };
        let (dx, dy) = self.points[oldest];
        // Whole samples/nanoseconds move into the integer base; points keep any fraction.
        let (dx, dy) = (dx.floor(), dy.floor());
        self.base_samples = self.base_samples.wrapping_add_signed(dx as i64);
        self.base_ns = self.base_ns.wrapping_add_signed(dy as i64);
        (self.sum_x, self.sum_y, self.sum_xx, self.sum_xy) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..self.len {
            let (x, y) = self.points[i];
            self.points[i] = (x - dx, y - dy);
            let (x, y) = self.points[i];
            self.add_sums(x, y);
        }
        self.since_rebase = 0;
    }

    /// Host time in nanoseconds at which the (fractional) sample position `samples` is
    /// processed on the smoothed timeline, or `None` before the first block.
    pub fn host_ns_at(&self, samples: f64) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let n = self.len as f64;
        let x = samples - self.base_samples as f64;
        // Until the points span some time, use the nominal rate through their mean.
        let slope = self
            .smoothed_slope
            .or_else(|| self.regression_slope())
            .unwrap_or(1e9 / self.sample_rate);
        let (mean_x, mean_y) = (self.sum_x / n, self.sum_y / n);
        Some(self.base_ns as f64 + mean_y + slope * (x - mean_x))
    }

    /// The (fractional) sample position processed at host time `host_ns` on the smoothed
    /// timeline: the inverse of [`HostTimeEstimator::host_ns_at`]. `None` before the first
    /// block.
    pub fn samples_at(&self, host_ns: f64) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let n = self.len as f64;
        let slope = self
            .smoothed_slope
            .or_else(|| self.regression_slope())
            .unwrap_or(1e9 / self.sample_rate);
        if slope <= 0.0 || !slope.is_finite() {
            return None;
        }
        let (mean_x, mean_y) = (self.sum_x / n, self.sum_y / n);
        let y = host_ns - self.base_ns as f64;
        Some(self.base_samples as f64 + mean_x + (y - mean_y) / slope)
    }

    /// Points in the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_line_is_reproduced_across_rebases() {
        let mut e = HostTimeEstimator::new(48_000.0);
        // 1 ms per 48 samples plus 50 ppm drift, 3 windows' worth of blocks.
        let ns_per_sample = 1e9 / 48_000.0 * (1.0 + 50e-6);
        for block in 0..(3 * WINDOW as u64) {
            let s = block * 256;
            e.add(
                s,
                5_000_000_000 + (s as f64 * ns_per_sample) as u64,
                48_000.0,
            );
        }
        let s = 3.0 * WINDOW as f64 * 256.0 + 17.5;
        let want = 5e9 + s * ns_per_sample;
        let got = e.host_ns_at(s).expect("has points");
        assert!((got - want).abs() < 2.0, "off by {} ns", got - want);
    }

    #[test]
    fn resets_on_gap_rate_change_and_backwards_clock() {
        let mut e = HostTimeEstimator::new(48_000.0);
        for b in 0..10u64 {
            e.add(b * 64, b * 1_333_333, 48_000.0);
        }
        assert_eq!(e.len(), 10);
        e.add(10 * 64, 10 * 1_333_333 + 1_000_000_000, 48_000.0);
        assert_eq!(e.len(), 1, "a one-second stall resets");
        e.add(11 * 64, 10 * 1_333_333 + 1_001_333_333, 96_000.0);
        assert_eq!(e.len(), 1, "a rate change resets");
        e.add(0, 10 * 1_333_333 + 1_002_000_000, 96_000.0);
        assert_eq!(e.len(), 1, "a sample clock going backwards resets");
    }

    /// Callbacks jitter uniformly by ±1 block; the true sample clock is exact. Returns the
    /// p99 of how far the estimate of "now" moves from one block to the next beyond the
    /// block period (what a receiver hears as jitter), and the p99 absolute error.
    pub(crate) fn simulate_jitter(rate: f64, block: u64, blocks: u64) -> (f64, f64) {
        let mut e = HostTimeEstimator::new(rate);
        let block_ns = block as f64 * 1e9 / rate;
        let mut seed = 12345u64;
        let (mut steps, mut errors) = (Vec::new(), Vec::new());
        let mut last: Option<f64> = None;
        for b in 0..blocks {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let jitter = ((seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * block_ns;
            let s = b * block;
            let truth = 1e9 + s as f64 * 1e9 / rate;
            e.add(s, (truth + block_ns + jitter) as u64, rate);
            let now = e.host_ns_at(s as f64).expect("points");
            if b > WINDOW as u64 {
                if let Some(last) = last {
                    steps.push((now - last - block_ns).abs());
                }
                errors.push((now - truth - block_ns).abs());
            }
            last = Some(now);
        }
        let p99 = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[(v.len() as f64 * 0.99) as usize]
        };
        (p99(&mut steps), p99(&mut errors))
    }

    #[test]
    fn callback_jitter_is_smoothed() {
        // ±10.7 ms of callback jitter (512 samples at 48 kHz) becomes sub-20 µs steps.
        let (step_p99, abs_p99) = simulate_jitter(48_000.0, 512, 3 * WINDOW as u64);
        assert!(step_p99 < 20_000.0, "p99 step {step_p99} ns");
        assert!(abs_p99 < 1_500_000.0, "p99 absolute error {abs_p99} ns");
    }

    #[test]
    fn samples_at_inverts_host_ns_at() {
        let mut e = HostTimeEstimator::new(48_000.0);
        for b in 0..2000u64 {
            let jitter = (b * 7919 % 13) * 20_000;
            e.add(b * 256, 5_000_000_000 + b * 5_333_333 + jitter, 48_000.0);
        }
        for s in [0.0, 1234.5, 256.0 * 1999.0, 600_000.0] {
            let t = e.host_ns_at(s).expect("fitted");
            let back = e.samples_at(t).expect("fitted");
            assert!((back - s).abs() < 1e-3, "{s} -> {t} -> {back}");
        }
    }
}
