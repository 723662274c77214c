//! Tests of the offset estimator on a virtual WAN path: seeded queueing jitter, asymmetric
//! routes, a skewed peer clock, and nonsense samples. The path is simulated here, paced by the
//! real [`ProbePacer`]; nothing reads a clock.

use super::*;
use crate::proto::remote::probe::ProbePacer;

const MS: f64 = 1e6;
/// Our clock at the start of every run (not zero, to catch code that assumes it).
const T0: u64 = 1_000_000_000_000;
/// The peer's hold time between ping and pong.
const HOLD_NS: u64 = 50_000;

/// xorshift64*: a deterministic stand-in for queueing noise.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential queueing delay with this mean, cut at `max`, in ns.
    fn queue(&mut self, mean_ms: f64, max_ms: f64) -> f64 {
        if mean_ms == 0.0 {
            return 0.0;
        }
        (-mean_ms * self.unit().ln()).min(max_ms) * MS
    }
}

/// A one-peer WAN path and the peer's clock.
#[derive(Clone, Copy)]
struct Path {
    /// Peer clock minus ours at `T0`, ns.
    offset_ns: f64,
    /// Peer clock rate error, ppm (positive: the peer's clock runs fast).
    skew_ppm: f64,
    /// Fixed one-way delays, ms.
    forward_ms: f64,
    backward_ms: f64,
    /// Mean queueing delay added each way (exponential, cut at 30 ms), ms.
    jitter_mean_ms: f64,
}

impl Path {
    const WAN: Path = Path {
        offset_ns: 30.0 * MS,
        skew_ppm: 0.0,
        forward_ms: 40.0,
        backward_ms: 40.0,
        jitter_mean_ms: 5.0,
    };

    /// The true θ at our time `t`.
    fn true_offset(&self, t: u64) -> f64 {
        self.offset_ns + self.skew_ppm * 1e-6 * (t - T0) as f64
    }

    fn peer_clock(&self, t: f64) -> u64 {
        (t + self.offset_ns + self.skew_ppm * 1e-6 * (t - T0 as f64)).round() as u64
    }
}

/// Probes `path` for `seconds` as the pacer says, feeding every exchange to a fresh
/// estimator; `each` sees the estimator after every sample. Returns it and the last `t4`.
fn run(
    path: Path,
    seconds: u64,
    seed: u64,
    mut each: impl FnMut(&OffsetEstimator, u64),
) -> (OffsetEstimator, u64) {
    let mut rng = Rng(seed);
    let mut pacer = ProbePacer::new();
    let mut estimator = OffsetEstimator::new();
    let end = T0 + seconds * 1_000_000_000;
    let (mut now, mut last_t4) = (T0, T0);
    loop {
        let t1 = pacer.next_probe(now).max(now);
        if t1 > end {
            return (estimator, last_t4);
        }
        pacer.on_sent(t1);
        let arrive = t1 as f64 + path.forward_ms * MS + rng.queue(path.jitter_mean_ms, 30.0);
        let leave = arrive + HOLD_NS as f64;
        let back = leave + path.backward_ms * MS + rng.queue(path.jitter_mean_ms, 30.0);
        let sample = ClockSample {
            t1_ns: t1,
            t2_ns: path.peer_clock(arrive),
            t3_ns: path.peer_clock(leave),
            t4_ns: back.round() as u64,
        };
        estimator.handle_sample(sample).unwrap();
        last_t4 = sample.t4_ns;
        each(&estimator, last_t4);
        now = t1 + 1;
    }
}

fn error_ms(value: Option<i64>, truth: f64) -> f64 {
    (value.expect("an estimate") as f64 - truth).abs() / MS
}

/// Seeds of the statistical tests: every run is deterministic, and 200 of them show the
/// spread rather than one lucky draw.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=200;

/// 30 ms offset, 40 ms each way plus exponential queueing (mean 5 ms, cut at 30 ms) each way.
///
/// The published mapping is within 1 ms after 30 s on every seed. The raw estimate (θ of
/// the smallest-δ sample among 128) errs by half the difference of that sample's two queueing
/// delays, which no estimator can see; with this queueing its best sample can still queue a
/// few ms on an unlucky seed, so it is held to that physical bound on every seed and to 1 ms
/// on at least 95 % of them (193 of 200 with 32 samples to choose from; 200 of 200 with 128).
#[test]
fn converges_within_1_ms_through_jittery_queues() {
    let mut raw_within_1_ms = 0;
    for seed in SEEDS {
        let mut converged_at = None;
        let (est, now) = run(Path::WAN, 30, seed, |est, now| {
            if est.converged() && converged_at.is_none() {
                converged_at = Some(now - T0);
            }
        });
        let truth = Path::WAN.true_offset(now);
        assert!(error_ms(est.offset_at(now), truth) < 1.0, "seed {seed}");
        let rtt = est.rtt_ns().unwrap();
        let bound_ms = (rtt - 80_000_000) as f64 / 2.0 / MS + 1e-6;
        let raw_ms = error_ms(est.estimate_at(now), truth);
        assert!(
            raw_ms <= bound_ms,
            "seed {seed}: {raw_ms} ms > {bound_ms} ms"
        );
        raw_within_1_ms += u32::from(raw_ms < 1.0);
        // 16 samples at 20 a second, plus one round trip.
        assert!(converged_at.unwrap() < 900_000_000, "seed {seed}");
        assert!(est.srtt_ns().unwrap() > rtt);
        assert!(est.jitter_ns() > 0);
        // 40 in the fast phase (0–1.95 s), then 2 s to 30 s four times a second.
        assert_eq!(est.samples(), 40 + 113);
        assert_eq!(est.rejected().total(), 0);
    }
    eprintln!("raw estimate within 1 ms on {raw_within_1_ms} of 200 seeds");
    assert!(raw_within_1_ms >= 190, "{raw_within_1_ms} of 200");
}

#[test]
fn the_mapping_steps_once_then_only_slews() {
    let mut previous: Option<(u64, i64)> = None;
    run(Path::WAN, 60, 7, |est, now| {
        let Some(offset) = est.offset_at(now) else {
            assert!(est.samples() < CONVERGE_SAMPLES);
            return;
        };
        if let Some((then, before)) = previous {
            // Drift and slew together move it at most 400 ppm (plus rounding).
            let limit = (MAX_DRIFT_PPM + MAX_SLEW_PPM) * 1e-6 * (now - then) as f64 + 1.0;
            let moved = (offset - before).abs() as f64;
            assert!(moved <= limit, "moved {moved} ns in {} ns", now - then);
        }
        previous = Some((now, offset));
    });
    assert!(previous.is_some());
}

/// The error that remains on an asymmetric path is `(d_f − d_b) / 2`: a physical limit, since
/// no round-trip measurement can tell a slower outward route from a clock offset.
#[test]
fn asymmetric_path_errs_by_exactly_half_the_difference() {
    let path = Path {
        forward_ms: 80.0,
        backward_ms: 60.0,
        jitter_mean_ms: 0.0,
        ..Path::WAN
    };
    let (est, now) = run(path, 30, 1, |_, _| {});
    assert_eq!(est.estimate_at(now), Some(40_000_000));
    assert_eq!(est.offset_at(now), Some(40_000_000));
    assert_eq!(path.true_offset(now), 30_000_000.0);
    assert_eq!(est.rtt_ns(), Some(140_000_000));
    assert_eq!(est.drift_ppm(), 0.0);
    assert_eq!(est.jitter_ns(), 0);
}

/// The peer's clock runs 50 ppm fast (3 ms a minute), on the jittery path above. After 3
/// minutes the drift is within 5 ppm and the published mapping within 1 ms on at least 98 %
/// of the seeds (when written: 198 and 199 of 200; the worst drift error was 6.7 ppm); the
/// mapping also stays within 1.5 ms throughout the third minute on every seed.
#[test]
fn tracks_a_skewed_clock() {
    let path = Path {
        skew_ppm: 50.0,
        ..Path::WAN
    };
    let (mut drift_within_5, mut mapping_within_1) = (0, 0);
    for seed in SEEDS {
        let mut worst_ms: f64 = 0.0;
        let (est, now) = run(path, 180, seed, |est, now| {
            if now - T0 > 120_000_000_000 {
                worst_ms = worst_ms.max(error_ms(est.offset_at(now), path.true_offset(now)));
            }
        });
        let drift_error = (est.drift_ppm() - 50.0).abs();
        assert!(
            drift_error < 10.0,
            "seed {seed}: drift off by {drift_error} ppm"
        );
        assert!(worst_ms < 1.5, "seed {seed}: off by {worst_ms} ms");
        drift_within_5 += u32::from(drift_error < 5.0);
        mapping_within_1 += u32::from(error_ms(est.offset_at(now), path.true_offset(now)) < 1.0);
    }
    assert!(drift_within_5 >= 196, "{drift_within_5} of 200");
    assert!(mapping_within_1 >= 196, "{mapping_within_1} of 200");
}

#[test]
fn drift_is_clamped() {
    let path = Path {
        skew_ppm: 1000.0,
        jitter_mean_ms: 0.0,
        ..Path::WAN
    };
    let (est, _) = run(path, 90, 1, |_, _| {});
    assert!((est.drift_ppm() - MAX_DRIFT_PPM).abs() < 1e-9);
}

#[test]
fn nonsense_samples_are_refused_and_counted() {
    let mut est = OffsetEstimator::new();
    let sample = |t1_ns, t2_ns, t3_ns, t4_ns| ClockSample {
        t1_ns,
        t2_ns,
        t3_ns,
        t4_ns,
    };
    let cases = [
        (sample(100, 5, 6, 99), SampleError::ReceivedBeforeSent),
        (sample(100, 6, 5, 200), SampleError::AnsweredBeforeReceived),
        (sample(100, 0, 101, 200), SampleError::NegativeDelay),
        (sample(0, 5, 5, 10_000_000_001), SampleError::DelayTooLong),
        (
            sample(0, u64::MAX, u64::MAX, 1),
            SampleError::OffsetOutOfRange,
        ),
    ];
    for (sample, error) in cases {
        assert_eq!(est.handle_sample(sample), Err(error));
    }
    assert_eq!(
        est.rejected(),
        RejectCounts {
            received_before_sent: 1,
            answered_before_received: 1,
            negative_delay: 1,
            delay_too_long: 1,
            offset_out_of_range: 1,
        }
    );
    assert_eq!(est.rejected().total(), 5);
    assert_eq!(est.samples(), 0);
    assert_eq!(est.estimate_at(0), None);
    // Edge cases that are fine: zero hold, zero delay, exactly the longest delay.
    assert_eq!(est.handle_sample(sample(100, 130, 130, 100)), Ok(30));
    assert_eq!(
        est.handle_sample(sample(0, 5, 5, MAX_DELAY_NS)),
        Ok(5 - 5_000_000_000)
    );
    assert_eq!(est.samples(), 2);
    assert_eq!(est.rejected().total(), 5);
}

#[test]
fn arbitrary_samples_never_panic() {
    let mut rng = Rng(0x0bad_5eed);
    let mut est = OffsetEstimator::new();
    for i in 0..5_000u64 {
        let pick = |rng: &mut Rng| match rng.next() % 4 {
            0 => rng.next(),
            1 => u64::MAX - rng.next() % 1000,
            2 => rng.next() % 1000,
            _ => T0 + i * 1_000_000_000 + rng.next() % 100_000_000,
        };
        let sample = ClockSample {
            t1_ns: pick(&mut rng),
            t2_ns: pick(&mut rng),
            t3_ns: pick(&mut rng),
            t4_ns: pick(&mut rng),
        };
        let _ = est.handle_sample(sample);
        let now = pick(&mut rng);
        let _ = (est.estimate_at(now), est.offset_at(now), est.jitter_ns());
        assert!(est.drift_ppm().abs() <= MAX_DRIFT_PPM);
    }
    assert!(est.samples() + est.rejected().total() == 5_000);
}

#[test]
fn a_late_pong_improves_its_bucket() {
    let mut est = OffsetEstimator::new();
    let at = |t1: u64, delay: u64| ClockSample {
        t1_ns: t1,
        t2_ns: t1 + delay / 2 + 1_000,
        t3_ns: t1 + delay / 2 + 1_000,
        t4_ns: t1 + delay,
    };
    est.handle_sample(at(T0, 90_000_000)).unwrap();
    est.handle_sample(at(T0 + 6_000_000_000, 90_000_000))
        .unwrap();
    // A pong of an exchange in the first bucket, arriving after the second one.
    est.handle_sample(at(T0 + 1_000_000_000, 80_000_000))
        .unwrap();
    let first = est
        .buckets
        .as_slice()
        .iter()
        .find(|b| b.index == T0 / BUCKET_NS)
        .unwrap();
    assert_eq!(first.best.delay_ns, 80_000_000);
    assert_eq!(est.rtt_ns(), Some(80_000_000));
}

/// 40 ± 5 ms each way, uniform and independent (the WAN lab's jitter model, where queueing
/// is as likely to be long as short): each leg's minimum finds its floor, so the estimate
/// lands within 0.25 ms of the truth on at least 95 % of seeds, where the single least-δ
/// sample's θ (the estimate before the legs were split, worked out here beside it) needs a
/// quiet moment both ways at once and manages it on far fewer.
#[test]
fn split_leg_minima_beat_the_least_delay_sample_under_symmetric_jitter() {
    let offset = 30.0 * MS;
    let (mut split_ok, mut paired_ok) = (0, 0);
    for seed in SEEDS {
        let mut rng = Rng(seed);
        let mut pacer = ProbePacer::new();
        let mut est = OffsetEstimator::new();
        let mut best: Option<(u64, i64)> = None;
        let (mut now, end) = (T0, T0 + 30_000_000_000);
        loop {
            let t1 = pacer.next_probe(now).max(now);
            if t1 > end {
                break;
            }
            pacer.on_sent(t1);
            let arrive = t1 as f64 + (35.0 + 10.0 * rng.unit()) * MS;
            let leave = arrive + HOLD_NS as f64;
            let back = leave + (35.0 + 10.0 * rng.unit()) * MS;
            let sample = ClockSample {
                t1_ns: t1,
                t2_ns: (arrive + offset).round() as u64,
                t3_ns: (leave + offset).round() as u64,
                t4_ns: back.round() as u64,
            };
            let theta = est.handle_sample(sample).unwrap();
            let delta = (sample.t4_ns - sample.t1_ns) - (sample.t3_ns - sample.t2_ns);
            if best.is_none_or(|(d, _)| delta < d) {
                best = Some((delta, theta));
            }
            now = sample.t4_ns;
        }
        let split = (est.estimate_at(now).unwrap() as f64 - offset).abs() / MS;
        let paired = (best.unwrap().1 as f64 - offset).abs() / MS;
        split_ok += u32::from(split < 0.25);
        paired_ok += u32::from(paired < 0.25);
    }
    eprintln!("within 0.25 ms: split legs {split_ok} of 200, least-δ sample {paired_ok} of 200");
    assert!(split_ok >= 190, "{split_ok} of 200");
    assert!(
        paired_ok < 150,
        "{paired_ok} of 200: the comparison shows nothing"
    );
}
