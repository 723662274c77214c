//! When to send the next clock probe and how long to wait for its answer (digest 2, §9):
//! twenty pings a second for the first two seconds, so the offset converges (16 samples)
//! within a second of the path coming up and the beat grid can be shared, then four a second
//! (the estimator picks the least-queued of the last 128: the more it can choose from, the
//! smaller the asymmetry its best sample carries; 4 × 76 bytes a second each way); a pong later than `max(300 ms, 3 · srtt)` counts as lost.
//!
//! Sans-IO like the rest of [`super`]: the caller asks [`ProbePacer::next_probe`] for a
//! deadline, waits for it with its other timers, sends a ping stamped with its clock, and
//! reports it with [`ProbePacer::on_sent`].

/// Interval between probes in the fast phase, ns (20 a second: about 1.5 kB/s each way).
pub const FAST_INTERVAL_NS: u64 = 50_000_000;
/// Length of the fast phase from the first probe, ns.
pub const FAST_PHASE_NS: u64 = 2_000_000_000;
/// Interval between probes afterwards, ns (4 a second).
pub const SLOW_INTERVAL_NS: u64 = 250_000_000;
/// Shortest probe timeout, ns: far above any sane round trip on a WAN path.
pub const MIN_TIMEOUT_NS: u64 = 300_000_000;
/// The probe timeout in smoothed round trips.
pub const TIMEOUT_SRTTS: u64 = 3;

/// Paces ping probes for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbePacer {
    /// When the current fast phase began (the first probe after creation or a restart), ns.
    phase_start_ns: Option<u64>,
    /// When the last probe was sent, ns.
    last_sent_ns: Option<u64>,
}

impl ProbePacer {
    /// A pacer that will probe at once, then in the fast phase.
    pub fn new() -> Self {
        Self::default()
    }

    /// When the next ping is due, ns of our clock: `now_ns` if none has been sent since
    /// creation or the last [`ProbePacer::restart`]. A deadline at or before now means "send
    /// now"; it is never before the last probe.
    pub fn next_probe(&self, now_ns: u64) -> u64 {
        let (Some(start), Some(last)) = (self.phase_start_ns, self.last_sent_ns) else {
            return now_ns;
        };
        let interval = if last.saturating_sub(start) < FAST_PHASE_NS {
            FAST_INTERVAL_NS
        } else {
            SLOW_INTERVAL_NS
        };
        last.saturating_add(interval)
    }

    /// Records that a ping left at `now_ns`.
    pub fn on_sent(&mut self, now_ns: u64) {
        self.phase_start_ns.get_or_insert(now_ns);
        self.last_sent_ns = Some(now_ns);
    }

    /// Starts a new fast phase (the path changed, or the peer restarted): probe now, then
    /// twenty a second for two seconds.
    pub fn restart(&mut self) {
        *self = Self::default();
    }

    /// How long to wait for a pong before counting its ping lost, ns: `max(300 ms, 3 · srtt)`
    /// (the srtt from [`super::offset::OffsetEstimator::srtt_ns`]; `None` before any sample).
    pub fn timeout_ns(srtt_ns: Option<u64>) -> u64 {
        srtt_ns
            .map_or(0, |s| s.saturating_mul(TIMEOUT_SRTTS))
            .max(MIN_TIMEOUT_NS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_phase_then_four_a_second() {
        let start = 7_000_000_000u64;
        let mut pacer = ProbePacer::new();
        assert_eq!(pacer.next_probe(start), start);
        let mut sent = Vec::new();
        let mut now = start;
        while now < start + 10_000_000_000 {
            let due = pacer.next_probe(now);
            now = now.max(due);
            pacer.on_sent(now);
            sent.push(now - start);
            now += 1; // the caller's next wake-up
        }
        let in_fast_phase = sent.iter().filter(|&&t| t < FAST_PHASE_NS).count();
        assert_eq!(in_fast_phase, 40, "{sent:?}");
        let gaps: Vec<u64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
        // The probe at 1.95 s is still in the fast phase, so the next follows 50 ms later.
        assert!(
            gaps[..40].iter().all(|&g| g == FAST_INTERVAL_NS),
            "{gaps:?}"
        );
        assert!(
            gaps[40..].iter().all(|&g| g == SLOW_INTERVAL_NS),
            "{gaps:?}"
        );
        // Late wake-ups do not pile up probes: the deadline follows the last one sent.
        let last = *sent.last().unwrap() + start;
        assert_eq!(
            pacer.next_probe(last + 5_000_000_000),
            last + SLOW_INTERVAL_NS
        );
        pacer.restart();
        assert_eq!(pacer.next_probe(99), 99);
    }

    #[test]
    fn timeout_is_at_least_300_ms_and_three_srtt() {
        assert_eq!(ProbePacer::timeout_ns(None), 300_000_000);
        assert_eq!(ProbePacer::timeout_ns(Some(40_000_000)), 300_000_000);
        assert_eq!(ProbePacer::timeout_ns(Some(150_000_000)), 450_000_000);
        assert_eq!(ProbePacer::timeout_ns(Some(u64::MAX)), u64::MAX);
    }
}
