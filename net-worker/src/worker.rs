//! The one network worker per process.
//!
//! Every plugin instance calls [`attach`] when it activates. The first attach starts the worker
//! thread ([`THREAD_NAME`]) and its send path ([`sender`]); dropping the last [`Lease`] stops
//! and joins both. The worker is event-driven ([`runtime`]): it sleeps in one readiness wait on
//! all its sockets and a waker, until a socket is readable, an instance sends a command, or the
//! earliest deadline of the protocol cores is due, so an idle Lockstep costs next to nothing.
//! It publishes what it saw through a lock-free latest-value cell ([`publish`]) that
//! [`status`] reads without ever blocking it.
//!
//! Thread-safe: [`attach`], [`Lease`]'s `Drop` and [`status`] may be called from any non-realtime
//! thread. None of them is ever called from the audio thread.
//!
//! # Layout
//! - this file: the process-wide registry, [`attach`] / [`Lease`], [`status`].
//! - [`runtime`]: the readiness loop: tokens, deadlines, how often the rings are drained.
//! - [`instance`]: one attached instance: its ring's events, clock destinations, settings.
//! - [`follow`]: the process's Link peer and Link-driven clocks.
//! - [`publish`]: the status cell, the event log, the clock recording, transport requests.
//! - [`sender`]: the clock send path; [`resolver`]: host-name lookups.
//! - [`remote`]: the remote session (broker, ICE sockets, key derivation).
//! - [`rtpmidi`], [`osc`], [`oscquery`], [`link`], [`discovery`]: one driver per protocol
//!   (sockets around the sans-IO cores in [`crate::proto`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;
use thiserror::Error;

use crate::bridge::{self, AudioSide, RingCounters, WorkerSide};
use crate::params::{HostParamChange, LayerStats, ParamSpec};
use crate::settings::SharedSettings;
use crate::status::{InstanceStatus, WorkerStatus};

pub use publish::{
    SentClock, event_log_since, record_clock, recorded_clock, set_transport_control,
    take_transport_requests,
};

pub mod discovery;
mod follow;
pub(crate) mod instance;
pub mod link;
pub mod osc;
pub mod oscquery;
mod publish;
pub mod remote;
mod resolver;
pub mod rtpmidi;
mod runtime;
pub mod sender;

/// Name of the worker thread.
pub const THREAD_NAME: &str = "lockstep-net";

/// Why [`attach`] failed.
#[derive(Debug, Error)]
pub enum AttachError {
    /// The OS refused to create the worker thread or its readiness loop.
    #[error("could not start the network worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The worker thread exists but no longer takes commands (it panicked).
    #[error("the network worker thread has stopped unexpectedly")]
    WorkerGone,
}

/// An instance's registration with the worker. Dropping it detaches the instance and, if it was
/// the last one, stops and joins the worker thread.
#[derive(Debug)]
pub struct Lease {
    id: u64,
}

/// The worker's end of an instance's parameter-change queue (shared with the plugin, which
/// keeps it across re-activations; the lock is only ever taken off the audio thread).
pub type Inbox = Arc<Mutex<rtrb::Producer<HostParamChange>>>;

/// Commands from instances (main thread) to the worker.
pub(crate) enum Command {
    Attach {
        id: u64,
        ring: WorkerSide,
    },
    Configure {
        id: u64,
        settings: Arc<SharedSettings>,
        rtp_midi: bool,
    },
    Detach {
        id: u64,
    },
    Params {
        id: u64,
        specs: Vec<ParamSpec>,
        inbox: Option<Inbox>,
        layer: Arc<LayerStats>,
    },
    Shutdown,
}

/// A running worker thread and the way to reach it.
struct Running {
    commands: Sender<Command>,
    /// Wakes the worker's readiness wait after a command.
    waker: Arc<mio::Waker>,
    thread: JoinHandle<()>,
    started: Instant,
}

impl Running {
    /// Hand the worker a command and wake it. False if it is gone.
    fn send(&self, command: Command) -> bool {
        let sent = self.commands.send(command).is_ok();
        let _ = self.waker.wake();
        sent
    }
}

/// Process-wide bookkeeping, behind [`REGISTRY`] (never taken by the worker thread).
struct Registry {
    running: Option<Running>,
    leases: usize,
    next_id: u64,
    worker_starts: u64,
    /// Attached instances in attach order, with their ring counters (read live by [`status`]).
    instances: BTreeMap<u64, Arc<RingCounters>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    running: None,
    leases: 0,
    next_id: 1,
    worker_starts: 0,
    instances: BTreeMap::new(),
});

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lease {
    /// The process-unique instance number (also [`InstanceStatus::id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Apply the instance's network settings (ports, peers): reopens its RTP-MIDI sockets and
    /// invites its peers, or closes them if `rtp_midi` is false (the `rtp_on` parameter). From
    /// then on the worker watches `settings` and applies every later change while the instance
    /// is attached. Thread-safe; never call it from the audio thread (it allocates).
    pub fn configure(&self, settings: Arc<SharedSettings>, rtp_midi: bool) {
        let registry = lock(&REGISTRY);
        if let Some(running) = registry.running.as_ref() {
            running.send(Command::Configure {
                id: self.id,
                settings,
                rtp_midi,
            });
        }
    }

    /// Describe the instance's parameters for remote control, with the producer end of the
    /// queue its host-facing layer takes parameter changes from (`None` when no layer
    /// attached: remote changes are then refused with an error) and the layer's counters.
    /// Main thread.
    pub fn set_params(&self, specs: Vec<ParamSpec>, inbox: Option<Inbox>, layer: Arc<LayerStats>) {
        let registry = lock(&REGISTRY);
        if let Some(running) = registry.running.as_ref() {
            running.send(Command::Params {
                id: self.id,
                specs,
                inbox,
                layer,
            });
        }
    }
}

/// Register a new instance: create its ring of `ring_capacity` events, start the worker if this
/// is the first lease, and hand the worker its end of the ring.
pub fn attach(ring_capacity: usize) -> Result<(AudioSide, Lease), AttachError> {
    let mut registry = lock(&REGISTRY);
    if registry.running.is_none() {
        registry.running = Some(spawn()?);
        registry.worker_starts += 1;
    }
    let id = registry.next_id;
    registry.next_id += 1;
    let (audio, ring) = bridge::ring(ring_capacity);
    let counters = Arc::clone(ring.counters());
    let running = registry.running.as_ref().ok_or(AttachError::WorkerGone)?;
    if !running.send(Command::Attach { id, ring }) {
        return Err(AttachError::WorkerGone);
    }
    registry.instances.insert(id, counters);
    registry.leases += 1;
    Ok((audio, Lease { id }))
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut registry = lock(&REGISTRY);
        registry.leases = registry.leases.saturating_sub(1);
        registry.instances.remove(&self.id);
        let last = registry.leases == 0;
        if let Some(running) = registry.running.as_ref() {
            running.send(Command::Detach { id: self.id });
        }
        if last && let Some(running) = registry.running.take() {
            running.send(Command::Shutdown);
            // The worker never takes REGISTRY, so joining while holding it cannot deadlock, and
            // it keeps a concurrent attach from racing a half-stopped worker.
            let _ = running.thread.join();
            publish::clear();
        }
    }
}

fn spawn() -> Result<Running, AttachError> {
    let poll = mio::Poll::new().map_err(AttachError::Spawn)?;
    let waker =
        Arc::new(mio::Waker::new(poll.registry(), runtime::WAKER).map_err(AttachError::Spawn)?);
    let (commands, inbox) = crossbeam_channel::unbounded();
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        // attach() returns once the worker runs with its send path started and named.
        .spawn(move || runtime::run(poll, inbox, ready_tx))
        .map_err(AttachError::Spawn)?;
    ready.recv().map_err(|_| AttachError::WorkerGone)?;
    Ok(Running {
        commands,
        waker,
        thread,
        started: Instant::now(),
    })
}

/// A snapshot of the worker and every attached instance: what the worker last published (at
/// most ~30 times a second, and on change), with the registry's live view of which instances
/// exist and their ring counters. Never blocks the worker.
pub fn status() -> WorkerStatus {
    let registry = lock(&REGISTRY);
    let uptime_ms = registry.running.as_ref().map_or(0, |r| {
        u64::try_from(r.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    });
    let published = publish::latest();
    let mut status = published
        .as_deref()
        .cloned()
        .unwrap_or_else(WorkerStatus::empty);
    let mut by_id: BTreeMap<u64, InstanceStatus> = std::mem::take(&mut status.instances)
        .into_iter()
        .map(|i| (i.id, i))
        .collect();
    status.instances = registry
        .instances
        .iter()
        .map(|(id, counters)| {
            let mut instance = by_id.remove(id).unwrap_or_else(|| InstanceStatus::new(*id));
            // Pushed and dropped live; drained as of the snapshot, so "every event drained"
            // means the snapshot shows their effects.
            let (pushed, dropped, _) = counters.load();
            instance.events_pushed = pushed;
            instance.events_dropped_full = dropped;
            instance
        })
        .collect();
    status.running = registry.running.is_some();
    status.worker_starts = registry.worker_starts;
    status.uptime_ms = uptime_ms;
    status.thread_name = THREAD_NAME.to_owned();
    status
}

/// Number of live threads in this process named [`THREAD_NAME`] (Linux; 0 elsewhere).
/// Used by tests and the status output to prove the worker is joined, not leaked.
pub fn live_worker_threads() -> usize {
    live_threads_named(THREAD_NAME)
}

/// Number of live threads in this process named `name` (Linux; 0 elsewhere).
pub fn live_threads_named(name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::{BridgeEvent, TransportSnapshot};
    use std::time::Duration;

    /// The worker is process-global, so every scenario runs in this one test, in order.
    /// (Threads are counted through /proc: Linux only.)
    #[test]
    #[cfg_attr(not(target_os = "linux"), ignore = "counts threads through /proc")]
    fn worker_lifecycle_is_shared_and_joined() {
        assert!(!status().running);
        assert_eq!(live_worker_threads(), 0);

        let (mut audio_a, lease_a) = attach(8).expect("first attach");
        let (_audio_b, lease_b) = attach(8).expect("second attach");
        assert_eq!(
            live_worker_threads(),
            1,
            "one worker shared by both instances"
        );
        assert_ne!(lease_a.id(), lease_b.id());

        let snapshot = TransportSnapshot {
            playing: true,
            tempo_bpm: Some(133.0),
            pos_samples: Some(128),
            ..TransportSnapshot::unreported(128, 64, 48_000.0, bridge::host_time_ns())
        };
        audio_a
            .push(BridgeEvent::Transport(snapshot))
            .expect("ring has room");
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = loop {
            let st = status();
            let a = st.instances.iter().find(|i| i.id == lease_a.id()).cloned();
            if let Some(a) = a
                && a.events_drained == 1
            {
                break a;
            }
            assert!(Instant::now() < deadline, "worker never drained the ring");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(seen.last_transport, Some(snapshot));
        assert_eq!(seen.events_pushed, 1);
        assert_eq!(seen.events_dropped_full, 0);

        drop(lease_a);
        assert!(status().running, "one lease left keeps the worker");
        assert_eq!(status().instances.len(), 1);
        drop(lease_b);
        assert!(!status().running);
        wait_for_no_worker_thread();
        assert_eq!(
            live_threads_named(sender::THREAD_NAME),
            0,
            "send path joined"
        );

        // A new first activation starts a fresh worker.
        let starts = status().worker_starts;
        let (_audio_c, lease_c) = attach(8).expect("re-attach");
        assert_eq!(status().worker_starts, starts + 1);
        assert_eq!(live_worker_threads(), 1);
        drop(lease_c);
        wait_for_no_worker_thread();
    }

    /// After `join()` returns, the kernel may need a moment to remove the task from /proc.
    fn wait_for_no_worker_thread() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while live_worker_threads() != 0 {
            assert!(Instant::now() < deadline, "worker thread leaked");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
