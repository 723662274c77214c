//! The host-facing layer: how remote control (OSC) changes a parameter the way a host-side
//! controller would, under CLAP and VST3 alike.
//!
//! nice-plug 0.4 lets a plugin report a parameter change to the host only through the
//! `GuiContext` an open editor receives, and has no public way to set a parameter from inside
//! the plugin. So a thin layer of ours sits between the host and nice-plug's wrapper of each
//! format, in the host's `process()` call:
//!
//! - changes the worker queued for this instance (lock-free `rtrb`, never allocating) join the
//!   host's own parameter events, so nice-plug applies them exactly as it applies host
//!   automation: at once, or, for OSC bundles with a future time tag, on the sample the worker
//!   computed (held here until their block);
//! - the same changes go back to the host as the plugin's output, so the DAW's view of the
//!   parameter moves and it can record automation, editor open or not: CLAP gets gesture
//!   begin / value / gesture end (a gesture stays open while changes keep coming and ends
//!   250 ms after the last), VST3 gets output parameter changes with sample offsets.
//!
//! # Contract
//! - [`Planner`] is the format-neutral part: which changes belong to this block, on which
//!   sample, and what to report. Plain safe Rust with unit tests; never allocates.
//! - [`clap`] and [`vst3`] adapt it to each format's event lists. The host may read the
//!   objects it was given (the `clap_plugin` struct, COM vtables) from any thread at any time,
//!   so nothing the host can see is ever written after creation and no `&mut` to it is ever
//!   formed: the per-instance state the audio thread changes lives in an [`AudioCell`], which
//!   a second concurrent entry cannot borrow (it skips this block's remote changes and counts
//!   it instead of racing).
//! - The layer and the plugin instance meet through [`offer`] / [`claim`]: nice-plug constructs
//!   the plugin (`Lockstep::default()`) synchronously inside its wrapper's constructor, on the
//!   thread that asked for the instance. That is the one nice-plug behaviour this relies on; the
//!   `layer_attaches_*` tests fail loudly if an upgrade changes it, and at run time an instance
//!   whose layer never attached says so in the status and refuses remote parameter changes
//!   with an error instead of queueing them.
//! - The plugin publishes its sample clock (the first sample of the next block, reset with the
//!   plugin) through [`Shared::clock`]; the layer reads it to place timed changes, so it never
//!   depends on when nice-plug resets the plugin.
//! - Nothing is dropped silently: changes beyond a block's capacity wait in the queue for the
//!   next block (`deferred`), timed changes beyond the hold capacity are applied
//!   at once (`early`), a block whose host events are too many to interleave gets
//!   ours first at its start (`unmerged`); counters in
//!   [`LayerStats`], shown in the status under `host_layer`; every host event is always passed on.

pub mod clap;
pub mod vst3;

use std::cell::{RefCell, UnsafeCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lockstep_net::params::{HostParamChange, LayerStats};

/// Most remote changes taken into one block (the rest wait for the next one).
pub const MAX_PER_BLOCK: usize = 64;
/// Timed changes held for a later block.
pub const MAX_PENDING: usize = 64;
/// Parameters with an open gesture at once (more are sent as begin/value/end at once).
pub const MAX_GESTURES: usize = 16;
/// A gesture ends this long after the parameter's last remote change.
pub const GESTURE_HOLD_SECONDS: f64 = 0.25;
/// Queue capacity between the worker and one instance's layer.
pub const INBOX_CAPACITY: usize = 1024;

/// What the plugin instance and its layer share.
#[derive(Debug, Default)]
pub struct Shared {
    /// The plugin's sample clock: the first sample of the next block (samples since the
    /// plugin was last reset). Written by the plugin, read by the layer; both on the audio
    /// thread, atomics only so either may run anywhere.
    pub clock: AtomicU64,
    /// Set when a format layer claimed this instance's queue.
    pub attached: AtomicBool,
    /// The layer's counters (the worker shows them in the status).
    pub stats: Arc<LayerStats>,
}

/// What the plugin offers the layer that is constructing it.
pub struct Offer {
    /// The consumer end of the worker → instance queue.
    pub inbox: rtrb::Consumer<HostParamChange>,
    /// Shared with the plugin instance.
    pub shared: Arc<Shared>,
}

thread_local! {
    /// The offer made by the latest `Lockstep::default()` on this thread, for the layer that
    /// is constructing that very instance (same thread, synchronously).
    static OFFER: RefCell<Option<Offer>> = const { RefCell::new(None) };
}

/// Called by `Lockstep::default()`: make the queue's consumer end available to the layer that
/// is constructing this instance. Returns the producer end.
pub fn offer(shared: &Arc<Shared>) -> rtrb::Producer<HostParamChange> {
    let (producer, inbox) = rtrb::RingBuffer::new(INBOX_CAPACITY);
    OFFER.with(|slot| {
        *slot.borrow_mut() = Some(Offer {
            inbox,
            shared: Arc::clone(shared),
        })
    });
    producer
}

/// Called by a format layer right after nice-plug's wrapper constructor returned: take the
/// offer of the instance just built on this thread and mark it attached.
pub fn claim() -> Option<Offer> {
    let offer = OFFER.with(|slot| slot.borrow_mut().take())?;
    offer.shared.attached.store(true, Ordering::Release);
    Some(offer)
}

/// Run the layer's part of a process call: under the allocation checker in debug bundles
/// (feature `assert_process_allocs`: an allocation aborts, as inside nice-plug's own
/// `process()`), plainly otherwise.
pub fn checked<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "assert_process_allocs")]
    {
        nice_assert_no_alloc::assert_no_alloc(f)
    }
    #[cfg(not(feature = "assert_process_allocs"))]
    {
        f()
    }
}

/// State owned by the audio thread inside an object the host can see. `try_with` gives
/// exclusive access or, if another call is inside (a host breaking the threading rules),
/// nothing: never two `&mut` at once.
pub struct AudioCell<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `busy` (acquire on entry, release on exit).
unsafe impl<T: Send> Sync for AudioCell<T> {}

impl<T> AudioCell<T> {
    /// Wrap `value`.
    pub fn new(value: T) -> Self {
        Self {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Run `f` with exclusive access, or return `None` if another call holds it.
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&self.busy);
        // SAFETY: `busy` was false and is now ours until `_release` drops.
        Some(f(unsafe { &mut *self.value.get() }))
    }
}

/// One change for this block: the parameter (CLAP id = VST3 id), its sample offset inside the
/// block, and the value in the host's terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injected {
    /// Sample offset inside the block.
    pub time: u32,
    /// Parameter id (nice-plug uses the same hash for CLAP and VST3).
    pub id: u32,
    /// Value as the host sees it (plain for CLAP, normalised for VST3).
    pub value: f64,
}

/// What to tell the host after the block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Report {
    /// A remote "touch" of the parameter begins at this offset.
    Begin(u32, u32),
    /// The parameter took this value at this offset.
    Value(Injected),
    /// The touch ends at this offset.
    End(u32, u32),
}

/// The format-neutral planner: which remote changes go into this block, on which sample, and
/// what the host hears about them.
pub struct Planner {
    inbox: Option<rtrb::Consumer<HostParamChange>>,
    shared: Arc<Shared>,
    sample_rate: f64,
    /// Open gestures: (id, samples left until it ends).
    gestures: [(u32, i64); MAX_GESTURES],
    open: usize,
    /// This block's changes, sorted by time.
    block: [Injected; MAX_PER_BLOCK],
    block_len: usize,
    /// Timed changes for later blocks: (sample clock position, change).
    pending: [(u64, HostParamChange); MAX_PENDING],
    pending_len: usize,
}

impl Planner {
    /// A planner taking changes from `offer`'s queue.
    pub fn new(offer: Offer) -> Self {
        Self::with_parts(Some(offer.inbox), offer.shared)
    }

    /// A planner with no queue (the plugin was constructed without our offer): passes the
    /// host's events through unchanged.
    pub fn detached() -> Self {
        Self::with_parts(None, Arc::new(Shared::default()))
    }

    fn with_parts(inbox: Option<rtrb::Consumer<HostParamChange>>, shared: Arc<Shared>) -> Self {
        Self {
            inbox,
            shared,
            sample_rate: 48_000.0,
            gestures: [(0, 0); MAX_GESTURES],
            open: 0,
            block: [Injected {
                time: 0,
                id: 0,
                value: 0.0,
            }; MAX_PER_BLOCK],
            block_len: 0,
            pending: [(
                0,
                HostParamChange {
                    clap_id: 0,
                    value: 0.0,
                    at_sample: None,
                },
            ); MAX_PENDING],
            pending_len: 0,
        }
    }

    /// Whether this planner has an instance's queue.
    pub fn is_attached(&self) -> bool {
        self.inbox.is_some()
    }

    /// The counters (shared with the plugin instance and the worker).
    pub fn stats(&self) -> &Arc<LayerStats> {
        &self.shared.stats
    }

    /// Activation with a new sample rate: gestures close (the host restarts its view).
    pub fn activate(&mut self, sample_rate: f64) {
        self.sample_rate = sample_rate;
        self.open = 0;
    }

    /// Take this block's changes (held ones whose time came, then the queue), each on its
    /// sample, sorted by time. `frames` is the block length; the block starts at the plugin's
    /// published clock.
    pub fn plan(&mut self, frames: u32) -> &[Injected] {
        let start = self.shared.clock.load(Ordering::Acquire);
        let end = start + u64::from(frames);
        let last = frames.saturating_sub(1);
        self.block_len = 0;
        // Held changes whose time came. A plugin reset that moved the clock back leaves them
        // in the future; they still land when the new clock reaches them.
        let mut i = 0;
        while i < self.pending_len {
            let (at, change) = self.pending[i];
            if at < end && self.block_len < MAX_PER_BLOCK {
                self.push(change, start, last);
                self.pending_len -= 1;
                self.pending[i] = self.pending[self.pending_len];
            } else {
                i += 1;
            }
        }
        if let Some(inbox) = self.inbox.as_mut() {
            while self.block_len < MAX_PER_BLOCK {
                let Ok(change) = inbox.pop() else { break };
                match change.at_sample {
                    Some(at) if at >= end => {
                        if self.pending_len < MAX_PENDING {
                            self.pending[self.pending_len] = (at, change);
                            self.pending_len += 1;
                        } else {
                            self.shared.stats.early.fetch_add(1, Ordering::Relaxed);
                            Self::push_into(
                                &mut self.block,
                                &mut self.block_len,
                                change,
                                start,
                                last,
                            );
                        }
                    }
                    _ => Self::push_into(&mut self.block, &mut self.block_len, change, start, last),
                }
            }
            if self.block_len == MAX_PER_BLOCK && !inbox.is_empty() {
                self.shared.stats.deferred.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Insertion sort by time (a handful of events); stable, so equal times keep their
        // queue order.
        for i in 1..self.block_len {
            let mut j = i;
            while j > 0 && self.block[j - 1].time > self.block[j].time {
                self.block.swap(j - 1, j);
                j -= 1;
            }
        }
        self.shared
            .stats
            .applied
            .fetch_add(self.block_len as u64, Ordering::Relaxed);
        &self.block[..self.block_len]
    }

    fn push(&mut self, change: HostParamChange, start: u64, last: u32) {
        Self::push_into(&mut self.block, &mut self.block_len, change, start, last);
    }

    fn push_into(
        block: &mut [Injected; MAX_PER_BLOCK],
        len: &mut usize,
        change: HostParamChange,
        start: u64,
        last: u32,
    ) {
        let time = change
            .at_sample
            .map_or(0, |at| at.saturating_sub(start).min(u64::from(last)) as u32);
        block[*len] = Injected {
            time,
            id: change.clap_id,
            value: change.value,
        };
        *len += 1;
    }

    /// This block's changes (after [`plan`](Self::plan)).
    pub fn block(&self) -> &[Injected] {
        &self.block[..self.block_len]
    }

    /// Mutable access for a format that must move its changes (CLAP: to time 0 when they
    /// cannot be interleaved with the host's).
    pub fn block_mut(&mut self) -> &mut [Injected] {
        &mut self.block[..self.block_len]
    }

    /// After the block: what the host hears about this block's changes (gestures opened,
    /// values, gestures that went quiet closed), in order.
    pub fn report(&mut self, frames: u32, out: &mut impl FnMut(Report)) {
        let hold = (GESTURE_HOLD_SECONDS * self.sample_rate) as i64;
        for i in 0..self.block_len {
            let event = self.block[i];
            let id = event.id;
            match self.gestures[..self.open].iter().position(|g| g.0 == id) {
                Some(g) => {
                    self.gestures[g].1 = hold;
                    out(Report::Value(event));
                }
                None if self.open < MAX_GESTURES => {
                    out(Report::Begin(id, event.time));
                    out(Report::Value(event));
                    self.gestures[self.open] = (id, hold);
                    self.open += 1;
                }
                None => {
                    out(Report::Begin(id, event.time));
                    out(Report::Value(event));
                    out(Report::End(id, event.time));
                }
            }
        }
        let last = frames.saturating_sub(1);
        let mut g = 0;
        while g < self.open {
            self.gestures[g].1 -= i64::from(frames);
            if self.gestures[g].1 <= 0 {
                out(Report::End(self.gestures[g].0, last));
                self.open -= 1;
                self.gestures[g] = self.gestures[self.open];
            } else {
                g += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
