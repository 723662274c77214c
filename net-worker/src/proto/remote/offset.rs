//! Clock offset and drift over a WAN path (digest 2, §9), NTP style (RFC 5905 §8, §10).
//!
//! The caller stamps a ping when it leaves (`t1`, our clock), the peer stamps its arrival
//! (`t2`) and the pong's departure (`t3`) on its clock, and the caller stamps the pong's
//! arrival (`t4`, our clock), all in nanoseconds, then feeds the four times here:
//!
//! ```text
//! θ = ((t2 − t1) + (t3 − t4)) / 2     offset, peer clock minus ours
//! δ = (t4 − t1) − (t3 − t2)           round-trip delay without the peer's hold time
//! ```
//!
//! With one-way delays `d_f` (to the peer) and `d_b` (back), θ errs by `(d_f − d_b) / 2`. That
//! is a physical limit, not a flaw of the estimator: round trips cannot tell a slow uplink from
//! a clock offset, so an asymmetric route (80 ms out, 60 ms back) leaves a constant 10 ms error
//! however long we measure. Queueing adds a varying asymmetry; taking the sample with the
//! smallest δ removes most of that, because a sample that queued little in both directions is
//! also one whose directions differ little; taking each direction's least-queued leg on its
//! own removes more (below).
//!
//! What [`OffsetEstimator`] keeps and computes:
//! - the last [`WINDOW_SAMPLES`] samples; the estimate takes each direction's smallest leg
//!   over them (`t2 − t1` out, `t4 − t3` back, carried forward to now by the drift) and
//!   halves their difference. Picking one sample with the smallest δ needs a sample that
//!   queued little both ways at once; the legs' minima only need one quiet moment each way,
//!   so with independent queues each way they come much closer to the path's floors. Either
//!   way the error stays within half the smallest δ (the bound the status shows);
//! - drift: the smallest-δ sample of every [`BUCKET_NS`] bucket, and the least-squares slope
//!   of their θ over the last [`DRIFT_BUCKETS`] buckets (4 minutes), weighted by how little
//!   each bucket's best sample queued, from a one-minute baseline on, clamped to
//!   ±[`MAX_DRIFT_PPM`];
//! - the published mapping [`OffsetEstimator::offset_at`]: absent until [`CONVERGE_SAMPLES`]
//!   samples, then stepped once to the estimate, and afterwards only slewed toward new
//!   estimates at up to [`MAX_SLEW_PPM`] on top of the drift, so peer time as we map it never
//!   jumps and never runs backwards;
//! - round-trip time (δ of the best sample, and a smoothed δ), jitter, counts of accepted
//!   and rejected samples.
//!
//! No allocation: fixed arrays. Nonsense samples are refused with a counted [`SampleError`].

use thiserror::Error;

/// Samples the estimate chooses from (≈ 30 s at four probes a second).
pub const WINDOW_SAMPLES: usize = 128;
/// Width of a drift bucket, ns.
pub const BUCKET_NS: u64 = 5_000_000_000;
/// Buckets the drift fit spans (4 minutes).
pub const DRIFT_BUCKETS: usize = 48;
/// Buckets needed before drift is estimated.
pub const MIN_DRIFT_BUCKETS: usize = 6;
/// Time the buckets must span before drift is estimated, ns: a slope over a shorter
/// baseline is mostly queueing noise, and carrying θ forward by a wrong slope costs more
/// than ignoring a true drift for a minute (50 ppm × 32 s of window = 1.6 ms at worst).
pub const MIN_DRIFT_SPAN_NS: u64 = 60_000_000_000;
/// Smallest error bound a bucket gets in the drift fit, ns (clock reading and interrupt
/// noise that δ does not show).
pub const DRIFT_ERROR_FLOOR_NS: u64 = 200_000;
/// Largest drift believed, parts per million.
pub const MAX_DRIFT_PPM: f64 = 200.0;
/// Fastest slew of the published mapping toward a new estimate, parts per million.
pub const MAX_SLEW_PPM: f64 = 200.0;
/// Time constant of the slew: a change `e` of the estimate is absorbed at `e / 10 s`, capped
/// at [`MAX_SLEW_PPM`] (so changes above 2 ms take longer). The mapping is re-anchored at
/// every sample, so it approaches the estimate exponentially and smooths its jumps.
pub const SLEW_TIME_NS: u64 = 10_000_000_000;
/// Samples before the offset counts as converged and the mapping is published.
pub const CONVERGE_SAMPLES: u64 = 16;
/// Longest believable round trip, ns.
pub const MAX_DELAY_NS: u64 = 10_000_000_000;

/// Smoothing of the round-trip time, as TCP's SRTT (RFC 6298): `srtt += (δ − srtt) / 8`.
const SRTT_GAIN: f64 = 1.0 / 8.0;

/// Four timestamps of one ping/pong exchange, in ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// Ping sent, our clock.
    pub t1_ns: u64,
    /// Ping received, peer clock.
    pub t2_ns: u64,
    /// Pong sent, peer clock.
    pub t3_ns: u64,
    /// Pong received, our clock.
    pub t4_ns: u64,
}

/// Why a sample was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SampleError {
    /// `t4 < t1`: the pong arrived before the ping left.
    #[error("pong received before the ping was sent")]
    ReceivedBeforeSent,
    /// `t3 < t2`: the peer answered before it was asked.
    #[error("peer answered before receiving the ping")]
    AnsweredBeforeReceived,
    /// `δ < 0`: the peer held the ping longer than our whole round trip.
    #[error("negative round-trip delay")]
    NegativeDelay,
    /// `δ` above [`MAX_DELAY_NS`].
    #[error("round-trip delay above {MAX_DELAY_NS} ns")]
    DelayTooLong,
    /// The clocks are so far apart that θ does not fit an `i64` of ns (292 years).
    #[error("offset out of range")]
    OffsetOutOfRange,
}

/// How many samples were refused, per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounts {
    /// [`SampleError::ReceivedBeforeSent`].
    pub received_before_sent: u64,
    /// [`SampleError::AnsweredBeforeReceived`].
    pub answered_before_received: u64,
    /// [`SampleError::NegativeDelay`].
    pub negative_delay: u64,
    /// [`SampleError::DelayTooLong`].
    pub delay_too_long: u64,
    /// [`SampleError::OffsetOutOfRange`].
    pub offset_out_of_range: u64,
}

impl RejectCounts {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.received_before_sent
            + self.answered_before_received
            + self.negative_delay
            + self.delay_too_long
            + self.offset_out_of_range
    }

    fn count(&mut self, error: SampleError) {
        let counter = match error {
            SampleError::ReceivedBeforeSent => &mut self.received_before_sent,
            SampleError::AnsweredBeforeReceived => &mut self.answered_before_received,
            SampleError::NegativeDelay => &mut self.negative_delay,
            SampleError::DelayTooLong => &mut self.delay_too_long,
            SampleError::OffsetOutOfRange => &mut self.offset_out_of_range,
        };
        *counter += 1;
    }
}

/// One accepted measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Point {
    /// Middle of the exchange on our clock (θ is measured around then), ns.
    mid_ns: u64,
    /// θ, ns.
    offset_ns: i64,
    /// δ, ns.
    delay_ns: u64,
}

impl ClockSample {
    /// θ and δ, or why the sample is nonsense.
    fn point(&self) -> Result<Point, SampleError> {
        let out_and_back = self
            .t4_ns
            .checked_sub(self.t1_ns)
            .ok_or(SampleError::ReceivedBeforeSent)?;
        let hold = self
            .t3_ns
            .checked_sub(self.t2_ns)
            .ok_or(SampleError::AnsweredBeforeReceived)?;
        let delay_ns = out_and_back
            .checked_sub(hold)
            .ok_or(SampleError::NegativeDelay)?;
        if delay_ns > MAX_DELAY_NS {
            return Err(SampleError::DelayTooLong);
        }
        let (t1, t2, t3, t4) = (
            i128::from(self.t1_ns),
            i128::from(self.t2_ns),
            i128::from(self.t3_ns),
            i128::from(self.t4_ns),
        );
        let offset_ns = i64::try_from(((t2 - t1) + (t3 - t4)) / 2)
            .map_err(|_| SampleError::OffsetOutOfRange)?;
        Ok(Point {
            mid_ns: self.t1_ns + out_and_back / 2,
            offset_ns,
            delay_ns,
        })
    }
}

/// The last `N` values pushed, in a fixed array (oldest overwritten; order within the slice
/// is by slot, not by age).
#[derive(Debug, Clone, Copy)]
struct Recent<T, const N: usize> {
    slots: [T; N],
    /// Valid slots (from 0).
    len: usize,
    /// Where the next value goes (the newest is just before it).
    next: usize,
}

impl<T: Copy + Default, const N: usize> Recent<T, N> {
    fn new() -> Self {
        Self {
            slots: [T::default(); N],
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, value: T) {
        self.slots[self.next] = value;
        self.next = (self.next + 1) % N;
        self.len = (self.len + 1).min(N);
    }

    fn newest(&self) -> Option<T> {
        (self.len > 0).then(|| self.slots[(self.next + N - 1) % N])
    }

    fn as_slice(&self) -> &[T] {
        &self.slots[..self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.slots[..self.len]
    }
}

/// The smallest-δ sample of one bucket of our clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// `mid_ns / BUCKET_NS`.
    index: u64,
    /// Its best sample.
    best: Point,
}

/// The published peer-time mapping: `offset(t) = offset_ns + drift·(t − anchor) + slew·s`,
/// where `s` is `t − anchor` clamped to `[0, slew_for_ns]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mapping {
    /// Our time of the last update, ns.
    anchor_ns: u64,
    /// The mapping's offset at `anchor_ns`, ns.
    offset_ns: f64,
    /// Drift (ns per ns) since `anchor_ns`.
    drift: f64,
    /// Extra rate (ns per ns) absorbing the last estimate change.
    slew: f64,
    /// How long after `anchor_ns` the slew lasts, ns.
    slew_for_ns: f64,
}

impl Mapping {
    fn at(&self, now_ns: u64) -> f64 {
        let dt = signed_diff(now_ns, self.anchor_ns);
        self.offset_ns + self.drift * dt + self.slew * dt.clamp(0.0, self.slew_for_ns)
    }
}

/// `a − b` in ns as `f64`, without overflow.
fn signed_diff(a: u64, b: u64) -> f64 {
    (i128::from(a) - i128::from(b)) as f64
}

/// The NTP-style offset and drift estimator for one peer. See the module docs.
#[derive(Debug, Clone)]
pub struct OffsetEstimator {
    /// The last [`WINDOW_SAMPLES`] accepted samples.
    window: Recent<Point, WINDOW_SAMPLES>,
    /// The best sample of the last [`DRIFT_BUCKETS`] buckets.
    buckets: Recent<Bucket, DRIFT_BUCKETS>,
    /// Drift estimate (ns per ns; 1e-6 = 1 ppm), 0 until [`MIN_DRIFT_SPAN_NS`].
    drift: f64,
    /// Smoothed δ, ns.
    srtt_ns: Option<f64>,
    /// Samples accepted.
    accepted: u64,
    /// Samples refused, per reason.
    rejected: RejectCounts,
    /// The published mapping, once converged.
    mapping: Option<Mapping>,
}

impl Default for OffsetEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl OffsetEstimator {
    /// An estimator with no samples.
    pub fn new() -> Self {
        Self {
            window: Recent::new(),
            buckets: Recent::new(),
            drift: 0.0,
            srtt_ns: None,
            accepted: 0,
            rejected: RejectCounts::default(),
            mapping: None,
        }
    }

    /// Feeds one exchange, received at `sample.t4_ns` (our "now"). Returns the sample's θ or
    /// why it was refused (and counted).
    pub fn handle_sample(&mut self, sample: ClockSample) -> Result<i64, SampleError> {
        let point = sample.point().inspect_err(|&e| self.rejected.count(e))?;
        self.accepted += 1;
        self.window.push(point);
        let delay = point.delay_ns as f64;
        self.srtt_ns = Some(self.srtt_ns.map_or(delay, |s| s + (delay - s) * SRTT_GAIN));
        self.add_to_bucket(point);
        self.drift = self.fit_drift();
        self.update_mapping(sample.t4_ns);
        Ok(point.offset_ns)
    }

    /// Our estimate of peer clock minus ours at `now_ns`, unslewed: half the difference of
    /// the window's smallest forward leg and smallest backward leg, each sample carried
    /// forward to now by the drift. `None` before the first sample. Use
    /// [`OffsetEstimator::offset_at`] to map time; this one may jump.
    pub fn estimate_at(&self, now_ns: u64) -> Option<i64> {
        let samples = self.window.as_slice();
        if samples.is_empty() {
            return None;
        }
        // Each exchange's legs on the two clocks: out = t2 − t1 = δ/2 + θ, back = t4 − t3 =
        // δ/2 − θ (θ carried to now). Each leg's minimum is its path's floor plus the least
        // queueing any sample saw that way, so (min out − min back)/2 errs only by half the
        // floors' asymmetry and the two smallest queueings' difference.
        let (mut out, mut back) = (f64::INFINITY, f64::INFINITY);
        for p in samples {
            let theta = p.offset_ns as f64 + self.drift * signed_diff(now_ns, p.mid_ns);
            let half = p.delay_ns as f64 / 2.0;
            out = out.min(half + theta);
            back = back.min(half - theta);
        }
        Some(((out - back) / 2.0).round() as i64)
    }

    /// The published mapping at `now_ns`: peer time ≈ `now_ns + offset_at(now_ns)`. `None`
    /// until [`OffsetEstimator::converged`]; stepped once then, only slewed afterwards.
    pub fn offset_at(&self, now_ns: u64) -> Option<i64> {
        self.mapping.map(|m| m.at(now_ns).round() as i64)
    }

    /// Whether [`CONVERGE_SAMPLES`] samples have been accepted and the mapping is published.
    pub fn converged(&self) -> bool {
        self.mapping.is_some()
    }

    /// The drift estimate in parts per million (peer clock faster: positive).
    pub fn drift_ppm(&self) -> f64 {
        self.drift * 1e6
    }

    /// The smallest round trip (δ) among the recent samples, ns: half of it bounds the
    /// offset error a path's asymmetry can cause.
    pub fn rtt_ns(&self) -> Option<u64> {
        self.best().map(|p| p.delay_ns)
    }

    /// The smoothed round trip (for timeouts), ns.
    pub fn srtt_ns(&self) -> Option<u64> {
        self.srtt_ns.map(|s| s.round() as u64)
    }

    /// Spread of the recent samples' θ around the estimate (root mean square, after carrying
    /// each forward by the drift), ns. Mostly queueing asymmetry; 0 before two samples.
    pub fn jitter_ns(&self) -> u64 {
        let Some(best) = self.best() else {
            return 0;
        };
        let samples = self.window.as_slice();
        let sum_sq: f64 = samples
            .iter()
            .map(|p| {
                let carried = p.offset_ns as f64 + self.drift * signed_diff(best.mid_ns, p.mid_ns);
                (carried - best.offset_ns as f64).powi(2)
            })
            .sum();
        (sum_sq / samples.len() as f64).sqrt().round() as u64
    }

    /// Samples accepted so far.
    pub fn samples(&self) -> u64 {
        self.accepted
    }

    /// Samples refused so far, per reason.
    pub fn rejected(&self) -> RejectCounts {
        self.rejected
    }

    /// The smallest-δ sample of the window (the newest on ties).
    fn best(&self) -> Option<Point> {
        let samples = self.window.as_slice();
        samples
            .iter()
            .copied()
            .min_by_key(|p| (p.delay_ns, u64::MAX - p.mid_ns))
    }

    fn add_to_bucket(&mut self, point: Point) {
        let index = point.mid_ns / BUCKET_NS;
        if self
            .newest_bucket()
            .is_none_or(|newest| index > newest.index)
        {
            self.buckets.push(Bucket { index, best: point });
            return;
        }
        // A pong of an earlier exchange arriving late: its bucket, if we still have it.
        if let Some(bucket) = self
            .buckets
            .as_mut_slice()
            .iter_mut()
            .find(|b| b.index == index)
            && point.delay_ns < bucket.best.delay_ns
        {
            bucket.best = point;
        }
    }

    fn newest_bucket(&self) -> Option<Bucket> {
        self.buckets.newest()
    }

    /// Weighted least-squares slope of the buckets' θ against their time, clamped; 0 until
    /// the buckets span [`MIN_DRIFT_SPAN_NS`].
    ///
    /// A sample's θ errs by at most half its δ's excess over the path's bare round trip
    /// (queueing on one side only), so each bucket weighs 1 / bound², where bound is half its
    /// δ's excess over the smallest δ of all buckets plus [`DRIFT_ERROR_FLOOR_NS`]: buckets
    /// that caught nearly empty queues steer the fit, unlucky ones barely count.
    fn fit_drift(&self) -> f64 {
        let buckets = self.buckets.as_slice();
        let (Some(first), Some(last)) = (
            buckets.iter().map(|b| b.best.mid_ns).min(),
            buckets.iter().map(|b| b.best.mid_ns).max(),
        ) else {
            return 0.0;
        };
        let min_delay = buckets.iter().map(|b| b.best.delay_ns).min().unwrap_or(0);
        if buckets.len() < MIN_DRIFT_BUCKETS || last - first < MIN_DRIFT_SPAN_NS {
            return 0.0;
        }
        let reference = buckets[0].best;
        let points = buckets.iter().map(|b| {
            let bound = (b.best.delay_ns - min_delay) as f64 / 2.0 + DRIFT_ERROR_FLOOR_NS as f64;
            let x = signed_diff(b.best.mid_ns, reference.mid_ns);
            let y = b.best.offset_ns as f64 - reference.offset_ns as f64;
            (bound.powi(-2), x, y)
        });
        let (sum_w, sum_wx, sum_wy) = points
            .clone()
            .fold((0.0, 0.0, 0.0), |(w, wx, wy), (wi, x, y)| {
                (w + wi, wx + wi * x, wy + wi * y)
            });
        let (mean_x, mean_y) = (sum_wx / sum_w, sum_wy / sum_w);
        let (sxx, sxy) = points.fold((0.0, 0.0), |(sxx, sxy), (w, x, y)| {
            (
                sxx + w * (x - mean_x).powi(2),
                sxy + w * (x - mean_x) * (y - mean_y),
            )
        });
        let slope = sxy / sxx;
        if sxx <= 0.0 || !slope.is_finite() {
            return 0.0;
        }
        let limit = MAX_DRIFT_PPM * 1e-6;
        slope.clamp(-limit, limit)
    }

    /// Steps the mapping at convergence; afterwards re-anchors it where it is and slews it
    /// toward the estimate.
    fn update_mapping(&mut self, now_ns: u64) {
        let Some(target) = self.estimate_at(now_ns) else {
            return;
        };
        let target = target as f64;
        let Some(mapping) = self.mapping else {
            if self.accepted >= CONVERGE_SAMPLES {
                self.mapping = Some(Mapping {
                    anchor_ns: now_ns,
                    offset_ns: target,
                    drift: self.drift,
                    slew: 0.0,
                    slew_for_ns: 0.0,
                });
            }
            return;
        };
        let current = mapping.at(now_ns);
        let error = target - current;
        let limit = MAX_SLEW_PPM * 1e-6;
        let slew = (error / SLEW_TIME_NS as f64).clamp(-limit, limit);
        self.mapping = Some(Mapping {
            anchor_ns: now_ns,
            offset_ns: current,
            drift: self.drift,
            slew,
            slew_for_ns: if slew == 0.0 { 0.0 } else { error / slew },
        });
    }
}

#[cfg(test)]
mod tests;
