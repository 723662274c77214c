//! What the worker hands to other threads, none of which can ever block it:
//!
//! - the status: the worker builds a [`WorkerStatus`] at most every [`PUBLISH_PERIOD`] (and at
//!   once after a command) and swaps it into a lock-free latest-value cell (`arc-swap`); the
//!   editor, the headless runner and the tests read the newest one through
//!   [`super::status`];
//! - the event log, published the same way whenever it changes ([`event_log_since`]);
//! - the clock recording for tests and diagnostics ([`record_clock`]): a mutex the worker
//!   takes only while a recording is on;
//! - transport requests for a host application ([`take_transport_requests`]): a flag read
//!   without a lock, and a small queue the worker locks only when it has requests to add.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use super::lock;
use super::osc::TransportRequest;
use crate::clock::scheduler::Transmit;
use crate::log::LogEntry;
use crate::status::WorkerStatus;

/// Status snapshots are built at most this often (about 30 a second).
pub const PUBLISH_PERIOD: Duration = Duration::from_millis(33);

/// Most transport requests kept for the host application.
const MAX_TRANSPORT_REQUESTS: usize = 64;

/// The newest status the worker published.
static STATUS: ArcSwapOption<WorkerStatus> = ArcSwapOption::const_empty();

/// The event log as last published: (generation, entries oldest first, dropped for space).
type LogSnapshot = (u64, Vec<LogEntry>, u64);
static EVENT_LOG: ArcSwapOption<LogSnapshot> = ArcSwapOption::const_empty();

/// Transport control by the host application is on.
static TRANSPORT_CONTROL: AtomicBool = AtomicBool::new(false);
/// Transport requests waiting for the host application.
static TRANSPORT_REQUESTS: Mutex<VecDeque<TransportRequest>> = Mutex::new(VecDeque::new());

/// A clock recording is on (the worker then locks [`CLOCK_LOG`] when it passes messages on).
static RECORDING: AtomicBool = AtomicBool::new(false);
static CLOCK_LOG: Mutex<Option<ClockLog>> = Mutex::new(None);

/// One message the worker passed on (recorded for diagnostics and the end-to-end tests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SentClock {
    /// Instance id.
    pub instance: u64,
    /// What left, and when it was due.
    pub transmit: Transmit,
    /// When the worker actually passed it on, host ns.
    pub sent_at_ns: f64,
}

/// A bounded record of what the worker sent.
struct ClockLog {
    capacity: usize,
    entries: Vec<SentClock>,
    overflowed: u64,
}

/// Swap in a new status (worker thread).
pub(super) fn status(status: Arc<WorkerStatus>) {
    STATUS.store(Some(status));
}

/// The newest published status, if any.
pub(super) fn latest() -> Option<Arc<WorkerStatus>> {
    STATUS.load_full()
}

/// Forget everything published (the worker stopped).
pub(super) fn clear() {
    STATUS.store(None);
}

/// Publish the event log (worker thread, when its generation changed).
pub(super) fn event_log(log: &crate::log::EventLog) {
    EVENT_LOG.store(Some(Arc::new((
        log.generation,
        log.entries().cloned().collect(),
        log.dropped,
    ))));
}

/// The event log if it changed since `generation`: (its generation, entries oldest first,
/// entries dropped for space). Thread-safe; never called from the audio thread.
pub fn event_log_since(generation: u64) -> Option<(u64, Vec<LogEntry>, u64)> {
    let log = EVENT_LOG.load_full()?;
    (log.0 != generation).then(|| (log.0, log.1.clone(), log.2))
}

/// Start (or restart, emptying it) recording the clock messages the worker passes on, up to
/// `capacity` of them; 0 stops recording. Thread-safe.
pub fn record_clock(capacity: usize) {
    *lock(&CLOCK_LOG) = (capacity > 0).then(|| ClockLog {
        capacity,
        entries: Vec::new(),
        overflowed: 0,
    });
    RECORDING.store(capacity > 0, Ordering::Release);
}

/// The recorded messages, and how many did not fit.
pub fn recorded_clock() -> (Vec<SentClock>, u64) {
    lock(&CLOCK_LOG)
        .as_ref()
        .map_or((Vec::new(), 0), |log| (log.entries.clone(), log.overflowed))
}

/// A recording is on: the monitor stream is then passed on at its due times.
pub(super) fn recording() -> bool {
    RECORDING.load(Ordering::Acquire)
}

/// Add passed-on messages to the recording, if one is on (worker thread).
pub(super) fn record(sent: &[SentClock]) {
    if sent.is_empty() || !recording() {
        return;
    }
    if let Some(log) = lock(&CLOCK_LOG).as_mut() {
        for entry in sent {
            if log.entries.len() < log.capacity {
                log.entries.push(*entry);
            } else {
                log.overflowed += 1;
            }
        }
    }
}

/// A host application (Lockstep's headless runner; never a DAW) says it takes transport
/// requests from OSC (`/lockstep/transport/{play,stop,tempo,locate}`).
pub fn set_transport_control(enabled: bool) {
    TRANSPORT_CONTROL.store(enabled, Ordering::Release);
    lock(&TRANSPORT_REQUESTS).clear();
}

/// Transport control is on (worker thread, every OSC poll: no lock).
pub(super) fn transport_control() -> bool {
    TRANSPORT_CONTROL.load(Ordering::Acquire)
}

/// Queue requests for the host application (worker thread, only when there are some).
pub(super) fn transport_requests(requests: impl Iterator<Item = TransportRequest>) {
    let mut waiting = lock(&TRANSPORT_REQUESTS);
    for request in requests {
        if waiting.len() < MAX_TRANSPORT_REQUESTS {
            waiting.push_back(request);
        }
    }
}

/// The transport requests waiting, oldest first, if `fits` accepts them (left waiting if not).
pub fn take_transport_requests(
    fits: impl FnOnce(&[TransportRequest]) -> bool,
) -> Vec<TransportRequest> {
    let mut waiting = lock(&TRANSPORT_REQUESTS);
    let all: Vec<_> = waiting.iter().copied().collect();
    if fits(&all) {
        waiting.clear();
        all
    } else {
        Vec::new()
    }
}
