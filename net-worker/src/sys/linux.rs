//! Linux: `SCHED_FIFO` for the clock threads, nice 0 for helpers, 1 µs timer slack, and
//! `CLOCK_MONOTONIC_RAW` for Link (what Ableton's library reads on Linux).

use thread_priority::{
    NormalThreadSchedulePolicy, RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue,
    ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
};

/// How datagram arrival times are taken here.
pub const RX_STAMPS: &str = "kernel receive time (SO_TIMESTAMPNS)";

/// thread-priority's cross-platform value that is nice 0 under `SCHED_OTHER` (its 0..99
/// scale maps onto nice 19..-20; a unit test reads the nice value back).
const NICE_ZERO: u8 = 48;

/// See [`super::realtime`].
pub fn realtime(priority: u8) -> String {
    let value = ThreadPriorityValue::try_from(priority).unwrap_or_default();
    match set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    ) {
        Ok(()) => format!("realtime (SCHED_FIFO, priority {priority})"),
        Err(e) => format!("normal (realtime refused: {e:?})"),
    }
}

/// Put the calling thread back to normal scheduling (`SCHED_OTHER`, nice 0). Threads inherit
/// their creator's policy, so helper threads started from a realtime thread (host-name
/// lookups, the mDNS daemon) call this first: a flood of work there must never compete with
/// the clock.
pub fn normal_priority() {
    let _ = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(NICE_ZERO.try_into().unwrap_or_default()),
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
    );
}

/// Timed sleeps of the calling thread as precise as the kernel allows (timer slack 1 µs
/// instead of 50 µs; realtime threads have none anyway).
pub fn precise_timers() {
    let _ = nix::sys::prctl::set_timerslack(1);
}

/// Link's clock, µs: `CLOCK_MONOTONIC_RAW`, so peers on one machine share one clock exactly
/// and no NTP slewing moves it.
pub fn link_clock_micros() -> i64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_RAW) {
        Ok(t) => t.tv_sec() * 1_000_000 + t.tv_nsec() / 1_000,
        Err(_) => (crate::bridge::host_time_ns() / 1_000) as i64,
    }
}

/// Where the host clock ([`crate::bridge::host_time_ns`]) starts on the machine's
/// `CLOCK_MONOTONIC` (std's `Instant` clock here), ns: two processes on one machine can compare
/// their clocks with it (the remote-session tests' ground truth).
pub fn host_clock_origin_ns() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let now = u64::try_from(t.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(t.tv_nsec()).ok()?;
    now.checked_sub(crate::bridge::host_time_ns())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper thread started from a realtime one ends up at plain normal priority: policy
    /// SCHED_OTHER (0) and nice 0, read back from /proc.
    #[test]
    fn normal_priority_is_sched_other_at_nice_zero() {
        let (policy, nice) = std::thread::spawn(|| {
            normal_priority();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
            let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
                .split_whitespace()
                .collect();
            // Fields after the command: state is 3, nice 19, policy 41 (man 5 proc).
            (fields[41 - 3].to_owned(), fields[19 - 3].to_owned())
        })
        .join()
        .expect("thread");
        assert_eq!((policy.as_str(), nice.as_str()), ("0", "0"));
    }
}
