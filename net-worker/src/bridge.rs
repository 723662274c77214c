//! The audio-thread boundary: `Copy` event types, the host clock and the ring pair.
//!
//! This is the bottom layer of the crate: it imports nothing from it. The clock engine's
//! messages ([`ClockKind`], [`ClockEvent`], [`ClockState`]) are defined here because they cross
//! the boundary inside [`BridgeEvent`]; the `clock` module re-exports them and holds the rules
//! that produce them.
//!
//! Realtime-safe: [`AudioSide::push`] and [`host_time_ns`] never allocate, lock or block. All
//! allocation happens in [`ring`], which runs on the main thread during activation.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Default ring capacity in events. At 1 event per block, a 1-sample block size at 192 kHz
/// fills this in ~21 ms, which is still many worker drain periods (1 ms).
pub const DEFAULT_RING_CAPACITY: usize = 4096;

/// The process-wide origin of [`host_time_ns`]. Set on the first call, which the plugin makes
/// from `activate()` (main thread) so the audio thread only ever reads it.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Monotonic host time in nanoseconds since the process-wide epoch.
///
/// Realtime-safe once the epoch exists (an atomic load plus `clock_gettime` through the vDSO).
/// Call it once from a non-realtime thread first; [`ring`] does that.
pub fn host_time_ns() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    // u64 nanoseconds cover 584 years of uptime; saturate rather than wrap.
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A time signature as the host reports it (numerator / denominator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSignature {
    /// Beats per bar.
    pub numerator: i32,
    /// Note value of one beat (4 = quarter note).
    pub denominator: i32,
}

/// Everything the host told the plugin about its transport for one block, plus where that
/// block sits on the plugin's own sample clock and the monotonic time it was processed.
///
/// Fields the host did not report, and that cannot be computed exactly from fields it did
/// report, are `None`; nothing is integrated or predicted here (that is the clock engine's job).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    /// Running sample counter of this instance since activation: the block's first sample.
    pub block_start_samples: u64,
    /// Number of samples in the block.
    pub block_len: u32,
    /// Sample rate in Hz.
    pub sample_rate: f32,
    /// [`host_time_ns`] taken once at the start of `process()`.
    pub host_time_ns: u64,
    /// Transport running.
    pub playing: bool,
    /// Recording armed and running.
    pub recording: bool,
    /// Pre-roll / count-in active, if the host reports it.
    pub preroll_active: Option<bool>,
    /// Tempo in quarter notes per minute.
    pub tempo_bpm: Option<f64>,
    /// Time signature.
    pub time_sig: Option<TimeSignature>,
    /// Song position of the block's first sample, in samples.
    pub pos_samples: Option<i64>,
    /// Song position in seconds.
    pub pos_seconds: Option<f64>,
    /// Song position in quarter notes.
    pub pos_beats: Option<f64>,
    /// Start of the current bar in quarter notes.
    pub bar_start_beats: Option<f64>,
    /// Number of the current bar, 0 for the first bar.
    pub bar_number: Option<i32>,
    /// Active loop range in samples (end exclusive).
    pub loop_range_samples: Option<(i64, i64)>,
    /// Active loop range in quarter notes (end exclusive).
    pub loop_range_beats: Option<(f64, f64)>,
}

impl TransportSnapshot {
    /// A block at `block_start_samples` of `block_len` samples about which the host reported
    /// nothing: stopped, every optional field `None`. Fill in what is known with struct update
    /// syntax.
    pub fn unreported(
        block_start_samples: u64,
        block_len: u32,
        sample_rate: f32,
        host_time_ns: u64,
    ) -> Self {
        Self {
            block_start_samples,
            block_len,
            sample_rate,
            host_time_ns,
            playing: false,
            recording: false,
            preroll_active: None,
            tempo_bpm: None,
            time_sig: None,
            pos_samples: None,
            pos_seconds: None,
            pos_beats: None,
            bar_start_beats: None,
            bar_number: None,
            loop_range_samples: None,
            loop_range_beats: None,
        }
    }
}

/// Largest Song Position Pointer value (14 bits), in 16th notes.
pub const MAX_SPP: u16 = 0x3fff;

/// A MIDI real-time or system-common message the engine emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockKind {
    /// 0xF8 timing clock.
    Tick,
    /// 0xFA start (from the song start).
    Start,
    /// 0xFB continue (from the last Song Position Pointer).
    Continue,
    /// 0xFC stop.
    Stop,
    /// 0xF2 song position pointer, in 16th notes.
    SongPosition(u16),
}

impl ClockKind {
    /// The MIDI bytes of this message.
    pub fn midi_bytes(self) -> ([u8; 3], usize) {
        match self {
            ClockKind::Tick => ([0xF8, 0, 0], 1),
            ClockKind::Start => ([0xFA, 0, 0], 1),
            ClockKind::Continue => ([0xFB, 0, 0], 1),
            ClockKind::Stop => ([0xFC, 0, 0], 1),
            ClockKind::SongPosition(sixteenths) => {
                let v = sixteenths.min(MAX_SPP);
                ([0xF2, (v & 0x7f) as u8, (v >> 7) as u8], 3)
            }
        }
    }
}

/// One stamped message.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockEvent {
    /// What to send.
    pub kind: ClockKind,
    /// Song position in quarter notes the message belongs to (the tick's beat; for Stop the
    /// position where playing ended; for SPP and Continue the SPP position).
    pub beat: f64,
    /// Position on the instance's sample clock, fractional samples kept.
    pub sample_pos: f64,
    /// Smoothed host time at that sample, nanoseconds on [`host_time_ns`]'s clock.
    pub host_time_ns: f64,
    /// Per-instance sequence number of clock events, so a receiver notices a dropped one.
    pub seq: u64,
}

/// Why the engine is or is not sending clock, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ClockState {
    /// No block seen yet.
    #[default]
    Idle,
    /// Transport stopped; positions are sent as SPP.
    Stopped,
    /// Transport running; ticks are sent.
    Running,
    /// Pre-roll / count-in: waiting for the song start.
    PreRoll,
    /// The host reports no tempo: no clock can be derived.
    NoTempo,
}

/// One item on an instance's audio → worker ring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BridgeEvent {
    /// The transport as seen at the start of a block.
    Transport(TransportSnapshot),
    /// A stamped clock message from the clock engine.
    Clock(ClockEvent),
    /// The clock engine's state changed (why it is or is not sending).
    ClockState(ClockState),
    /// The instance was activated with this configuration (pushed from `activate()`).
    Activated {
        /// Sample rate in Hz.
        sample_rate: f32,
        /// Largest block the host will send.
        max_block: u32,
    },
    /// The user's clock offset changed, milliseconds (negative = earlier).
    ClockOffset(f32),
    /// The `rtp_on` parameter changed: open or close the instance's RTP-MIDI side.
    RtpMidiEnabled(bool),
    /// Parameter `index` (in the order the instance described them) is now `normalized`.
    Param {
        /// Index into the instance's parameter list.
        index: u16,
        /// New value, 0..1.
        normalized: f32,
    },
    /// Clock output switched on/off, or transport messages switched on/off.
    ClockOutput {
        /// `clk_on`: send clock at all.
        enabled: bool,
        /// `clk_tr`: send Start/Stop/Continue/SPP too.
        send_transport: bool,
    },
}

/// Counters shared by both ends of one instance's ring.
///
/// Thread-safe: plain relaxed atomics; they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct RingCounters {
    /// Events the audio thread pushed successfully.
    pub pushed: AtomicU64,
    /// Events dropped because the ring was full (the newest is dropped).
    pub dropped_full: AtomicU64,
    /// Events the worker took off the ring and has finished handling (published in the
    /// status), so a reader that sees `drained == pushed` also sees their effects.
    pub drained: AtomicU64,
}

impl RingCounters {
    /// Read all three counters (pushed, dropped, drained).
    pub fn load(&self) -> (u64, u64, u64) {
        (
            self.pushed.load(Ordering::Relaxed),
            self.dropped_full.load(Ordering::Relaxed),
            self.drained.load(Ordering::Acquire),
        )
    }
}

/// The audio thread's end of a ring.
#[derive(Debug)]
pub struct AudioSide {
    producer: rtrb::Producer<BridgeEvent>,
    counters: Arc<RingCounters>,
}

/// The worker's end of a ring.
#[derive(Debug)]
pub struct WorkerSide {
    consumer: rtrb::Consumer<BridgeEvent>,
    counters: Arc<RingCounters>,
}

/// A [`AudioSide::push`] that did not enqueue: the ring was full, the event is handed back and
/// has been counted in [`RingCounters::dropped_full`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Full(pub BridgeEvent);

/// Create one ring of `capacity` events and the counters both ends share.
///
/// Allocates; call on the main thread (activation). Also pins the [`host_time_ns`] epoch.
pub fn ring(capacity: usize) -> (AudioSide, WorkerSide) {
    let _ = host_time_ns();
    let (producer, consumer) = rtrb::RingBuffer::new(capacity.max(1));
    let counters = Arc::new(RingCounters::default());
    (
        AudioSide {
            producer,
            counters: Arc::clone(&counters),
        },
        WorkerSide { consumer, counters },
    )
}

impl AudioSide {
    /// Enqueue an event; on a full ring drop it (the newest) and count it.
    ///
    /// Realtime-safe: wait-free, no allocation.
    #[allow(
        clippy::result_large_err,
        reason = "handing the event back by value is the point; boxing it would allocate on the audio thread"
    )]
    pub fn push(&mut self, event: BridgeEvent) -> Result<(), Full> {
        match self.producer.push(event) {
            Ok(()) => {
                self.counters.pushed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(rtrb::PushError::Full(event)) => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                Err(Full(event))
            }
        }
    }

    /// The counters shared with the worker.
    pub fn counters(&self) -> &Arc<RingCounters> {
        &self.counters
    }
}

impl WorkerSide {
    /// Take the oldest event, if any. Count it with [`WorkerSide::mark_drained`] once its
    /// effects are visible.
    pub fn pop(&mut self) -> Option<BridgeEvent> {
        self.consumer.pop().ok()
    }

    /// Count `n` popped events as drained (after their effects were published).
    pub fn mark_drained(&self, n: u64) {
        self.counters.drained.fetch_add(n, Ordering::Release);
    }

    /// The counters shared with the audio side.
    pub fn counters(&self) -> &Arc<RingCounters> {
        &self.counters
    }

    /// True when the audio side has been dropped (the instance deactivated).
    pub fn is_abandoned(&self) -> bool {
        self.consumer.is_abandoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(n: u64) -> BridgeEvent {
        BridgeEvent::Transport(TransportSnapshot {
            playing: true,
            tempo_bpm: Some(120.0),
            ..TransportSnapshot::unreported(n, 64, 48_000.0, n)
        })
    }

    #[test]
    fn full_ring_drops_newest_and_counts_it() {
        let (mut audio, mut worker) = ring(2);
        assert!(audio.push(snapshot(1)).is_ok());
        assert!(audio.push(snapshot(2)).is_ok());
        assert_eq!(audio.push(snapshot(3)), Err(Full(snapshot(3))));
        assert_eq!(audio.counters().load(), (2, 1, 0));
        // The two oldest survive, in order; the newest was the one dropped.
        assert_eq!(worker.pop(), Some(snapshot(1)));
        assert_eq!(worker.pop(), Some(snapshot(2)));
        assert_eq!(worker.pop(), None);
        worker.mark_drained(2);
        assert_eq!(worker.counters().load(), (2, 1, 2));
    }

    #[test]
    fn worker_sees_abandoned_ring() {
        let (audio, worker) = ring(4);
        assert!(!worker.is_abandoned());
        drop(audio);
        assert!(worker.is_abandoned());
    }

    #[test]
    fn midi_bytes() {
        assert_eq!(ClockKind::Tick.midi_bytes(), ([0xF8, 0, 0], 1));
        assert_eq!(ClockKind::Stop.midi_bytes(), ([0xFC, 0, 0], 1));
        // SPP 0x1234 = LSB 0x34, MSB 0x24 (7 bits each).
        assert_eq!(
            ClockKind::SongPosition(0x1234).midi_bytes(),
            ([0xF2, 0x34, 0x24], 3)
        );
        assert_eq!(
            ClockKind::SongPosition(u16::MAX).midi_bytes(),
            ([0xF2, 0x7f, 0x7f], 3)
        );
    }

    #[test]
    fn host_time_is_monotonic() {
        let a = host_time_ns();
        let b = host_time_ns();
        assert!(b >= a);
    }
}
