//! The one network worker per process.
//!
//! Every plugin instance calls [`attach`] when it activates. The first attach starts the worker
//! thread ([`THREAD_NAME`]); dropping the last [`Lease`] stops and joins it. The worker drains
//! every instance's ring every [`DRAIN_PERIOD`] and publishes what it saw for [`status`].
//!
//! Thread-safe: [`attach`], [`Lease`]'s `Drop` and [`status`] may be called from any non-realtime
//! thread. None of them is ever called from the audio thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bridge::{self, AudioSide, BridgeEvent, RingCounters, TransportSnapshot, WorkerSide};
use crate::clock::estimator::HostTimeEstimator;
use crate::clock::follower::ClockFollower;
use crate::clock::link_clock::LinkClock;
use crate::clock::scheduler::{Scheduler, SchedulerConfig, SchedulerStats, Transmit};
use crate::clock::{ClockEvent, ClockKind, ClockState};
use crate::params::{HostParamChange, ParamSpec};
use crate::settings::{DEFAULT_OSC_PORT, NetSettings, SharedSettings};
use crate::status::{InstanceStatus, WorkerStatus};
use discovery::{Discovery, DiscoveryStatus};
use rtpmidi::{RtpMidi, RtpMidiStatus};

/// Name of the worker thread.
pub const THREAD_NAME: &str = "lockstep-net";

/// How often the worker drains the rings when nothing else wakes it.
pub const DRAIN_PERIOD: Duration = Duration::from_millis(1);

/// Why [`attach`] failed.
#[derive(Debug, Error)]
pub enum AttachError {
    /// The OS refused to create the worker thread.
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
            let _ = running.commands.send(Command::Configure {
                id: self.id,
                settings,
                rtp_midi,
            });
        }
    }
}

pub mod discovery;
pub mod link;
pub mod osc;
pub mod oscquery;
pub mod rtpmidi;

/// The worker's end of an instance's parameter-change queue (shared with the plugin, which
/// keeps it across re-activations; the lock is only ever taken off the audio thread).
pub type Inbox = Arc<Mutex<rtrb::Producer<HostParamChange>>>;

impl Lease {
    /// Describe the instance's parameters for remote control, with the producer end of the
    /// queue its host-facing layer (the CLAP shim) takes parameter changes from (`None` when
    /// there is no such layer: changes are then counted as dropped). Main thread.
    pub fn set_params(&self, specs: Vec<ParamSpec>, inbox: Option<Inbox>) {
        let registry = lock(&REGISTRY);
        if let Some(running) = registry.running.as_ref() {
            let _ = running.commands.send(Command::Params {
                id: self.id,
                specs,
                inbox,
            });
        }
    }
}

/// Commands from instances (main thread) to the worker.
enum Command {
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
    },
    Shutdown,
}

/// A running worker thread and the way to reach it.
struct Running {
    commands: Sender<Command>,
    thread: JoinHandle<()>,
    started: Instant,
}

/// Process-wide bookkeeping, behind [`REGISTRY`].
struct Registry {
    running: Option<Running>,
    leases: usize,
    next_id: u64,
    worker_starts: u64,
}

/// What the worker publishes about one instance.
struct Published {
    rtpmidi: Option<RtpMidiStatus>,
    counters: Arc<RingCounters>,
    blocks: u64,
    last_transport: Option<TransportSnapshot>,
    clock: ClockSummary,
}

/// Clock figures of one instance, as published.
#[derive(Debug, Clone, Copy)]
struct ClockSummary {
    state: ClockState,
    messages: u64,
    ticks: u64,
    gaps: u64,
    lost: u64,
    last: Option<ClockEvent>,
    schedule: SchedulerConfig,
    timing: SchedulerStats,
}

impl Default for ClockSummary {
    fn default() -> Self {
        Self {
            state: ClockState::default(),
            messages: 0,
            ticks: 0,
            gaps: 0,
            lost: 0,
            last: None,
            schedule: DEFAULT_SCHEDULE,
            timing: SchedulerStats::default(),
        }
    }
}

/// Until an instance reports its block size: 2 × 512 samples at 48 kHz.
const DEFAULT_SCHEDULE: SchedulerConfig = SchedulerConfig {
    latency_ns: 2.0 * 512.0 / 48_000.0 * 1e9,
    offset_ns: 0.0,
};

/// The worker's own per-instance state.
struct Attached {
    ring: WorkerSide,
    follower: ClockFollower,
    /// Timing of the monitor stream (what the clock recording shows); RTP-MIDI peers have
    /// their own.
    scheduler: Scheduler,
    clock: ClockSummary,
    /// Sockets and sessions, once configured.
    rtpmidi: Option<RtpMidi>,
    /// Why RTP-MIDI is not running, if it is not.
    rtpmidi_error: Option<String>,
    /// When the RTP-MIDI status was last published, ns.
    published_at: u64,
    /// Clock output switches (`clk_on`, `clk_tr`) as last reported.
    output: (bool, bool),
    /// The settings from the last configuration, to reopen RTP-MIDI when it is switched back on.
    settings: Option<NetSettings>,
    /// Where OSC-driven parameter changes go (the plugin's CLAP shim takes them out).
    inbox: Option<Inbox>,
    /// The instance's parameter ids (index = the `Param` event's index) and values.
    param_ids: Vec<String>,
    param_values: Vec<f64>,
    /// The latest transport snapshot (for Link's DAW-leads role).
    last_daw: Option<TransportSnapshot>,
    /// The instance's sample clock against host time (as its clock engine fits it), to put
    /// timed OSC changes on their sample.
    /// Boxed: its 4096-point window is 64 KiB, too big to move around on the stack.
    estimator: Box<HostTimeEstimator>,
    /// The plugin's settings, watched for changes, and the generation last applied.
    shared: Option<(Arc<SharedSettings>, u64)>,
    /// RTP-MIDI switched on (the `rtp_on` parameter).
    rtp_enabled: bool,
    /// Link Mode Follow: the clock comes from the Link session, not the DAW.
    link_clock: Option<LinkClock>,
}

/// One message the worker sent (recorded for diagnostics and the end-to-end tests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SentClock {
    /// Instance id.
    pub instance: u64,
    /// What left, and when it was due.
    pub transmit: Transmit,
    /// When the worker actually sent it, host ns.
    pub sent_at_ns: f64,
}

/// A bounded record of what the worker sent.
struct ClockLog {
    capacity: usize,
    entries: Vec<SentClock>,
    overflowed: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    running: None,
    leases: 0,
    next_id: 1,
    worker_starts: 0,
});

static BOARD: Mutex<BTreeMap<u64, Published>> = Mutex::new(BTreeMap::new());
/// How the worker thread is scheduled (see [`raise_priority`]).
static SCHEDULING: Mutex<String> = Mutex::new(String::new());
/// Transport control by the host application: (enabled, requests waiting).
static TRANSPORT_CONTROL: Mutex<(bool, std::collections::VecDeque<osc::TransportRequest>)> =
    Mutex::new((false, std::collections::VecDeque::new()));
/// Most transport requests kept for the host application.
const MAX_TRANSPORT_REQUESTS: usize = 64;

/// A host application (Lockstep's headless runner; never a DAW) says it takes transport
/// requests from OSC (`/lockstep/transport/{play,stop,tempo,locate}`).
pub fn set_transport_control(enabled: bool) {
    let mut control = lock(&TRANSPORT_CONTROL);
    control.0 = enabled;
    control.1.clear();
}

/// The transport requests waiting, oldest first, if `fits` accepts them (left waiting if not).
pub fn take_transport_requests(
    fits: impl FnOnce(&[osc::TransportRequest]) -> bool,
) -> Vec<osc::TransportRequest> {
    let mut control = lock(&TRANSPORT_CONTROL);
    let waiting: Vec<_> = control.1.iter().copied().collect();
    if fits(&waiting) {
        control.1.clear();
        waiting
    } else {
        Vec::new()
    }
}

/// The process's Link state as last published by the worker.
static LINK: Mutex<Option<link::LinkStatus>> = Mutex::new(None);
/// The process's OSC state as last published by the worker.
static OSC: Mutex<Option<osc::OscStatus>> = Mutex::new(None);
/// The process's mDNS state as last published by the worker.
static DISCOVERY: Mutex<Option<DiscoveryStatus>> = Mutex::new(None);

static CLOCK_LOG: Mutex<Option<ClockLog>> = Mutex::new(None);

/// The event log the editor shows (written by the worker only).
static EVENT_LOG: Mutex<crate::log::EventLog> = Mutex::new(crate::log::EventLog::new());

/// The event log if it changed since `generation`: (its generation, entries oldest first,
/// entries dropped for space). Thread-safe; never called from the audio thread.
pub fn event_log_since(generation: u64) -> Option<(u64, Vec<crate::log::LogEntry>, u64)> {
    let log = lock(&EVENT_LOG);
    (log.generation != generation).then(|| {
        (
            log.generation,
            log.entries().cloned().collect(),
            log.dropped,
        )
    })
}

/// Start (or restart, emptying it) recording the clock messages the worker passes on, up to
/// `capacity` of them; 0 stops recording. Thread-safe.
pub fn record_clock(capacity: usize) {
    *lock(&CLOCK_LOG) = (capacity > 0).then(|| ClockLog {
        capacity,
        entries: Vec::new(),
        overflowed: 0,
    });
}

/// The recorded messages, and how many did not fit.
pub fn recorded_clock() -> (Vec<SentClock>, u64) {
    lock(&CLOCK_LOG)
        .as_ref()
        .map_or((Vec::new(), 0), |log| (log.entries.clone(), log.overflowed))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
    lock(&BOARD).insert(
        id,
        Published {
            rtpmidi: None,
            counters: Arc::clone(ring.counters()),
            blocks: 0,
            last_transport: None,
            clock: ClockSummary::default(),
        },
    );
    let running = registry.running.as_ref().ok_or(AttachError::WorkerGone)?;
    if running.commands.send(Command::Attach { id, ring }).is_err() {
        lock(&BOARD).remove(&id);
        return Err(AttachError::WorkerGone);
    }
    registry.leases += 1;
    Ok((audio, Lease { id }))
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut registry = lock(&REGISTRY);
        registry.leases = registry.leases.saturating_sub(1);
        lock(&BOARD).remove(&self.id);
        let last = registry.leases == 0;
        if let Some(running) = registry.running.as_ref() {
            let _ = running.commands.send(Command::Detach { id: self.id });
        }
        if last && let Some(running) = registry.running.take() {
            let _ = running.commands.send(Command::Shutdown);
            // The worker never takes REGISTRY, so joining while holding it cannot deadlock, and
            // it keeps a concurrent attach from racing a half-stopped worker.
            let _ = running.thread.join();
        }
    }
}

fn spawn() -> Result<Running, AttachError> {
    let (commands, inbox) = crossbeam_channel::unbounded();
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            // The thread is named and running: let attach() return.
            let _ = ready_tx.send(());
            run(inbox);
        })
        .map_err(AttachError::Spawn)?;
    ready.recv().map_err(|_| AttachError::WorkerGone)?;
    Ok(Running {
        commands,
        thread,
        started: Instant::now(),
    })
}

/// The worker's loop: wait for a command or the drain period, then drain every ring.
fn run(inbox: Receiver<Command>) {
    *lock(&SCHEDULING) = raise_priority();
    let mut rings: BTreeMap<u64, Attached> = BTreeMap::new();
    let mut discovery = Discovery::new();
    let mut osc_server: Option<osc::OscServer> = None;
    let mut query: Option<(oscquery::QueryServer, oscquery::HostInfo)> = None;
    let mut link_service = link::LinkService::new();
    let mut osc_error: Option<String> = None;
    let mut discovery_published = Instant::now();
    let mut watcher = crate::log::Watcher::new();
    let started = Instant::now();
    let mut timeout = DRAIN_PERIOD;
    loop {
        match inbox.recv_timeout(timeout) {
            Ok(Command::Attach { id, ring }) => {
                let attached = Attached {
                    ring,
                    follower: ClockFollower::new(),
                    scheduler: Scheduler::new(DEFAULT_SCHEDULE),
                    clock: ClockSummary::default(),
                    rtpmidi: None,
                    rtpmidi_error: None,
                    published_at: 0,
                    output: (true, true),
                    settings: None,
                    shared: None,
                    inbox: None,
                    param_ids: Vec::new(),
                    param_values: Vec::new(),
                    last_daw: None,
                    estimator: Box::new(HostTimeEstimator::new(48_000.0)),
                    rtp_enabled: true,
                    link_clock: None,
                };
                rings.insert(id, attached);
            }
            Ok(Command::Configure {
                id,
                settings,
                rtp_midi,
            }) => {
                if let Some(attached) = rings.get_mut(&id) {
                    let generation = settings.generation();
                    let current = settings.get();
                    attached.shared = Some((settings, generation));
                    configure(id, attached, &current, rtp_midi, &mut discovery);
                }
            }
            Ok(Command::Params { id, specs, inbox }) => {
                if let Some(attached) = rings.get_mut(&id) {
                    attached.inbox = inbox;
                    attached.param_ids = specs.iter().map(|s| s.id.clone()).collect();
                    // Values reported before this command was handled (the ring and the
                    // command channel race) are kept; the rest start at their defaults.
                    let reported = std::mem::take(&mut attached.param_values);
                    attached.param_values = specs
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            reported
                                .get(i)
                                .copied()
                                .filter(|v| !v.is_nan())
                                .unwrap_or(s.default)
                        })
                        .collect();
                    let (port, name) = attached.settings.as_ref().map_or_else(
                        || (DEFAULT_OSC_PORT, "Lockstep".to_owned()),
                        |s| (s.osc_port, s.session_name.clone()),
                    );
                    if osc_server.is_none() {
                        match osc::OscServer::open(port) {
                            Ok(server) => {
                                let (lan, mdns) = attached
                                    .settings
                                    .as_ref()
                                    .map_or((false, true), |s| (s.oscquery_lan, s.mdns));
                                let osc_port = server.port();
                                query = oscquery::QueryServer::open(osc_port.wrapping_add(1), lan)
                                    .ok()
                                    .map(|q| {
                                        let host = oscquery::HostInfo {
                                            name: format!("Lockstep ({})", discovery::host_name()),
                                            osc_port,
                                        };
                                        (q, host)
                                    });
                                if mdns {
                                    discovery.advertise(
                                        OSC_KEY,
                                        "_osc._udp.local.",
                                        "Lockstep",
                                        osc_port,
                                    );
                                    if let Some((q, _)) = query.as_ref().filter(|(q, _)| q.lan()) {
                                        discovery.advertise(
                                            OSC_KEY,
                                            "_oscjson._tcp.local.",
                                            "Lockstep",
                                            q.port(),
                                        );
                                    }
                                }
                                osc_server = Some(server);
                                osc_error = None;
                            }
                            Err(why) => osc_error = Some(why),
                        }
                    }
                    if let Some(server) = &mut osc_server {
                        server.core.add_instance(id, &name, specs);
                        for (i, v) in attached.param_values.iter().enumerate() {
                            server.core.set_current(id, i, *v);
                        }
                        if let Some(settings) = &attached.settings {
                            server.core.set_mappings(id, &settings.osc_mappings);
                            server.core.set_allow_list(&settings.osc_allow);
                        }
                    }
                }
            }
            Ok(Command::Detach { id }) => {
                discovery.withdraw(id);
                if let Some(server) = &mut osc_server {
                    server.core.remove_instance(id);
                    if server.core.is_empty() {
                        osc_server = None;
                        query = None;
                        discovery.withdraw(OSC_KEY);
                        *lock(&OSC) = None;
                    }
                }
                if let Some(mut attached) = rings.remove(&id)
                    && let Some(rtpmidi) = &mut attached.rtpmidi
                {
                    rtpmidi.shutdown(bridge::host_time_ns());
                }
            }
            Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                for attached in rings.values_mut() {
                    if let Some(rtpmidi) = &mut attached.rtpmidi {
                        rtpmidi.shutdown(bridge::host_time_ns());
                    }
                }
                drop(query.take());
                link_service.update(0, link::LinkMode::Off, "", None, false, None);
                *lock(&LINK) = None;
                discovery.shutdown();
                *lock(&DISCOVERY) = None;
                *lock(&OSC) = None;
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        watch_settings(&mut rings, &mut discovery, osc_server.as_mut());
        let link_due = run_link(&mut rings, &mut link_service, osc_server.as_mut());
        drain(&mut rings, &mut discovery, osc_server.as_mut());
        if let Some(server) = &mut osc_server {
            let now = bridge::host_time_ns();
            server
                .core
                .set_transport_control(lock(&TRANSPORT_CONTROL).0);
            let (now_changes, timed) = server.poll(now, OSC_LOOKAHEAD);
            if !server.transport.is_empty() {
                let mut control = lock(&TRANSPORT_CONTROL);
                for request in server.transport.drain(..) {
                    if control.1.len() < MAX_TRANSPORT_REQUESTS {
                        control.1.push_back(request);
                    }
                }
            }
            let timed = timed.into_iter().map(|(due, id, mut change)| {
                // The sample the due time falls on, through the instance's sample clock
                // estimate (as the clock engine maps samples to host time).
                change.at_sample = rings
                    .get(&id)
                    .and_then(|a| a.estimator.samples_at(due as f64))
                    .map(|s| s.max(0.0).round() as u64);
                (id, change)
            });
            let timed: Vec<_> = timed.collect();
            for (id, change) in now_changes.into_iter().chain(timed) {
                let pushed = rings
                    .get_mut(&id)
                    .and_then(|a| a.inbox.as_ref())
                    .is_some_and(|inbox| lock(inbox).push(change).is_ok());
                if !pushed {
                    server.core.dropped(1);
                }
            }
            let mut status = server.status();
            if let Some((q, host)) = &mut query {
                q.poll(now, &server.core, host);
                status.oscquery_port = Some(q.port());
                status.oscquery_lan = q.lan();
                status.oscquery_served = q.served;
                status.oscquery_refused = q.refused;
            }
            *lock(&OSC) = Some(status);
        } else if let Some(why) = &osc_error {
            *lock(&OSC) = Some(osc::OscStatus {
                errors: vec![why.clone()],
                ..osc::OscStatus::default()
            });
        }
        if discovery_published.elapsed() >= DISCOVERY_PUBLISH {
            discovery_published = Instant::now();
            discovery.poll();
            *lock(&DISCOVERY) = Some(discovery.status());
            // The event log: what changed in the status since the last look (never through
            // `status()`: that takes REGISTRY, held by a `Lease::drop` joining this thread).
            let uptime_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let now_status = snapshot(true, 0, uptime_ms);
            watcher.observe(&now_status, &mut lock(&EVENT_LOG));
        }
        let due = transmit(&mut rings);
        timeout = wait_before(due);
        if let Some(link_due) = link_due {
            let wait = (link_due - bridge::host_time_ns() as f64).max(0.0);
            timeout = timeout.min(Duration::from_nanos(wait as u64));
        }
        // A CK answer's arrival time is the latency measurement: while one is due, look at
        // the sockets every 50 µs (sleeping, not spinning).
        let now = bridge::host_time_ns();
        if rings
            .values()
            .any(|a| a.rtpmidi.as_ref().is_some_and(|r| r.awaiting_ck(now)))
        {
            timeout = timeout.min(CK_POLL);
        }
    }
}

/// Publish the RTP-MIDI status at most every 20 ms.
fn publish_rtpmidi(id: u64, attached: &mut Attached, now: u64) {
    if attached.published_at != 0 && now < attached.published_at + 20_000_000 {
        return;
    }
    attached.published_at = now.max(1);
    let status = match (&attached.rtpmidi, &attached.rtpmidi_error) {
        (Some(rtpmidi), _) => Some(rtpmidi.status()),
        (None, Some(why)) => Some(RtpMidiStatus {
            errors: vec![why.clone()],
            ..RtpMidiStatus::default()
        }),
        (None, None) => None,
    };
    if let Some(published) = lock(&BOARD).get_mut(&id) {
        published.rtpmidi = status;
    }
}

/// A switch or enum parameter of an instance by id (normalized), if known.
fn param(attached: &Attached, id: &str) -> Option<f64> {
    attached
        .param_ids
        .iter()
        .position(|p| p == id)
        .and_then(|i| attached.param_values.get(i).copied())
}

/// A Link-driven clock's messages are worked out this far ahead (µs, plus any early user
/// offset); the scheduler then sends each at its time.
const FOLLOW_HORIZON_US: f64 = 5_000.0;

/// An instance's Link quantum (`lnk_q`: 1..16 beats).
fn quantum(attached: &Attached) -> f64 {
    param(attached, "lnk_q").map_or(4.0, |q| 1.0 + (q * 15.0).round())
}

/// Pass one clock message to an instance's destinations (monitor stream and RTP-MIDI).
fn pass_clock(attached: &mut Attached, now: f64, clock: ClockEvent) {
    let summary = &mut attached.clock;
    summary.messages += 1;
    summary.ticks += u64::from(clock.kind == ClockKind::Tick);
    summary.last = Some(clock);
    let scheduler = &mut attached.scheduler;
    attached
        .follower
        .handle(clock, &mut |out| scheduler.handle(now, out));
    if let Some(rtpmidi) = &mut attached.rtpmidi {
        rtpmidi.clock_event(now as u64, clock);
    }
}

/// The clock's source of an instance changes (DAW ↔ Link): running destinations get a Stop.
fn switch_clock_source(attached: &mut Attached, now: u64) {
    let scheduler = &mut attached.scheduler;
    attached
        .follower
        .switch_source(&mut |out| scheduler.handle(now as f64, out));
    if let Some(rtpmidi) = &mut attached.rtpmidi {
        rtpmidi.switch_source(now);
    }
}

/// Run the process's Link peer for the first instance whose Link Mode is not Off, and the
/// Link-driven clocks of instances in Follow. Returns when a Link-driven clock next has
/// messages to work out (host ns).
fn run_link(
    rings: &mut BTreeMap<u64, Attached>,
    service: &mut link::LinkService,
    mut osc: Option<&mut osc::OscServer>,
) -> Option<f64> {
    let now = link::now_micros();
    let leader = rings.values().find_map(|a| {
        let mode = link::LinkMode::from_normalized(param(a, "lnk_md")?);
        (mode != link::LinkMode::Off).then_some((a, mode))
    });
    // Only needed while some instance is in Link (a timeline exists only then): no clock
    // reads on every worker loop while Link is Off.
    let link_minus_host = if leader.is_some() {
        link::link_minus_host()
    } else {
        0.0
    };
    let interface = leader
        .and_then(|(a, _)| a.settings.as_ref())
        .map(|s| s.link_interface.clone())
        .unwrap_or_default();
    let (mode, daw, start_stop, quantum_, daw_beat) = match leader {
        Some((a, mode)) => {
            let daw = a
                .last_daw
                .and_then(|t| t.tempo_bpm.map(|bpm| (bpm, t.playing)));
            // The DAW's beat at its block start, heard at the block's smoothed host time
            // plus the assumed output latency (on Link's clock).
            let daw_beat = a.last_daw.and_then(|t| {
                let beat = t.pos_beats?;
                let host = a.estimator.host_ns_at(t.block_start_samples as f64)?;
                let heard = host + a.scheduler.config().latency_ns;
                Some((beat, (heard / 1e3 + link_minus_host).round() as i64))
            });
            let start_stop = param(a, "lnk_ss").is_none_or(|v| v >= 0.5);
            (mode, daw, start_stop, quantum(a), daw_beat)
        }
        None => (link::LinkMode::Off, None, false, 4.0, None),
    };
    service.update(now, mode, &interface, daw, start_stop, daw_beat);
    let timeline = service.timeline(now);
    let host_now = bridge::host_time_ns();
    let mut next: Option<f64> = None;
    let mut follow = None;
    for (id, a) in rings.iter_mut() {
        let follows = timeline.is_some()
            && param(a, "lnk_md").map(link::LinkMode::from_normalized)
                == Some(link::LinkMode::Follow);
        if follows != a.link_clock.is_some() {
            a.link_clock = follows.then(LinkClock::new);
            switch_clock_source(a, host_now);
            if !follows {
                let tempo = a.last_daw.and_then(|t| t.tempo_bpm);
                a.scheduler.handle_tempo(tempo);
                if let Some(rtpmidi) = &mut a.rtpmidi {
                    rtpmidi.set_tempo(tempo);
                }
            }
        }
        let q = quantum(a);
        let (Some(clock), Some(tl)) = (a.link_clock.as_mut(), timeline.as_ref()) else {
            continue;
        };
        let config = a.scheduler.config();
        let horizon = FOLLOW_HORIZON_US + (-config.offset_ns / 1e3).max(0.0);
        // Link times are when the listener hears a beat; the scheduler adds the output
        // latency to a stamp, so stamps are the Link time on the host clock minus it.
        let shift = -link_minus_host * 1e3 - config.latency_ns;
        let mut events = Vec::new();
        let due = clock.update(tl, q, now as f64, horizon, shift, &mut |e| events.push(e));
        let running = clock.running();
        let stats = clock.stats();
        a.scheduler.handle_tempo(Some(tl.tempo));
        if let Some(rtpmidi) = &mut a.rtpmidi {
            rtpmidi.set_tempo(Some(tl.tempo));
        }
        for event in events {
            pass_clock(a, host_now as f64, event);
        }
        a.clock.state = if running {
            ClockState::Running
        } else {
            ClockState::Stopped
        };
        if let Some(due) = due {
            let at = (due - link_minus_host) * 1e3;
            next = Some(next.map_or(at, |n: f64| n.min(at)));
        }
        if follow.is_none() {
            follow = Some(stats);
        }
        // The OSC transport feed follows the session too: its tempo, and the song position
        // since the quantized start.
        if let (Some(server), Some(mut t)) = (osc.as_deref_mut(), a.last_daw) {
            t.tempo_bpm = Some(tl.tempo);
            t.playing = running;
            t.pos_beats = running.then(|| tl.beat_at(now as f64) - stats.last_start_beat);
            t.bar_number = None;
            t.bar_start_beats = None;
            server.core.set_transport(*id, t);
        }
    }
    if let Some(server) = osc {
        server.core.set_link(service.feed(now, quantum_));
    }
    // Every 50 ms while in Link; while Off only once (the lock is not taken every loop).
    let off = mode == link::LinkMode::Off;
    if (!off && now >= service.status_at + 50_000) || (off && service.status_shown) {
        service.status_at = now;
        let mut status = service.status(now, mode, quantum_);
        if let Some(s) = &mut status {
            s.follow = follow;
        }
        service.status_shown = status.is_some();
        *lock(&LINK) = status;
    }
    next
}

/// Apply settings that changed since they were last applied (a state load into an active
/// instance): RTP-MIDI reopens only if something it uses changed.
fn watch_settings(
    rings: &mut BTreeMap<u64, Attached>,
    discovery: &mut Discovery,
    mut osc: Option<&mut osc::OscServer>,
) {
    for (id, attached) in rings.iter_mut() {
        let Some((shared, applied)) = &mut attached.shared else {
            continue;
        };
        let generation = shared.generation();
        if generation == *applied {
            continue;
        }
        *applied = generation;
        let new = shared.get();
        if let Some(server) = osc.as_deref_mut() {
            server.core.set_mappings(*id, &new.osc_mappings);
            server.core.set_allow_list(&new.osc_allow);
        }
        let differs = attached
            .settings
            .as_ref()
            .is_none_or(|old| old.rtp_midi_differs(&new));
        if differs {
            let enabled = attached.rtp_enabled;
            configure(*id, attached, &new, enabled, discovery);
        } else {
            attached.settings = Some(new);
        }
    }
}

/// (Re)open an instance's RTP-MIDI side from its settings.
fn configure(
    id: u64,
    attached: &mut Attached,
    settings: &NetSettings,
    enabled: bool,
    discovery: &mut Discovery,
) {
    discovery.withdraw(id);
    attached.settings = Some(settings.clone());
    attached.rtp_enabled = enabled;
    if let Some(old) = &mut attached.rtpmidi {
        old.shutdown(bridge::host_time_ns());
    }
    attached.rtpmidi = None;
    attached.published_at = 0;
    if !enabled {
        attached.rtpmidi_error = Some("RTP-MIDI is switched off".into());
        return;
    }
    let now = bridge::host_time_ns();
    let seed = now ^ (id << 32) ^ u64::from(std::process::id());
    match RtpMidi::open(now, settings, attached.scheduler.config(), seed) {
        Ok(mut rtpmidi) => {
            rtpmidi.set_output(now, attached.output.0, attached.output.1);
            if settings.mdns {
                discovery.advertise_rtp_midi(id, &settings.session_name, settings.rtp_midi_port);
            }
            attached.rtpmidi = Some(rtpmidi);
            attached.rtpmidi_error = None;
        }
        Err(why) => attached.rtpmidi_error = Some(why),
    }
    attached.published_at = 0;
}

/// Realtime priority asked for on Linux (SCHED_FIFO, on the 1..99 scale): above every normal
/// thread, so a busy machine does not delay clock packets, and well below the audio threads
/// DAWs and JACK run at (typically 70 and up).
const REALTIME_PRIORITY: u8 = 10;

/// Ask for realtime scheduling for the worker thread; returns what we got, for the status.
/// Refusal (no `CAP_SYS_NICE` or rtprio limit) is normal and harmless: timing is then only as
/// good as the normal scheduler allows. `LOCKSTEP_NO_REALTIME` in the environment skips it.
fn raise_priority() -> String {
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    if std::env::var_os("LOCKSTEP_NO_REALTIME").is_some() {
        return "normal (LOCKSTEP_NO_REALTIME is set)".to_owned();
    }
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            RealtimeThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let value = ThreadPriorityValue::try_from(REALTIME_PRIORITY).unwrap_or_default();
        match set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(value),
            ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
        ) {
            Ok(()) => format!("realtime (SCHED_FIFO, priority {REALTIME_PRIORITY})"),
            Err(e) => format!("normal (realtime refused: {e:?})"),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = ThreadPriorityValue::MAX;
        match thread_priority::set_current_thread_priority(ThreadPriority::Max) {
            Ok(()) => "highest normal priority".to_owned(),
            Err(e) => format!("normal (raising refused: {e:?})"),
        }
    }
}

/// The key the process-wide OSC services are advertised under in [`Discovery`].
const OSC_KEY: u64 = u64::MAX;

/// Timed OSC changes go to the plugin this long before they are due (covers a block of up
/// to 2048 samples at 48 kHz); the CLAP shim holds them until their block.
const OSC_LOOKAHEAD: u64 = 50_000_000;

/// How often the mDNS browse results are taken in and published.
const DISCOVERY_PUBLISH: Duration = Duration::from_millis(250);

/// Socket poll period while a CK answer is due.
const CK_POLL: Duration = Duration::from_micros(50);

/// The last this much before a send is spent spinning instead of sleeping: the kernel's timer
/// slack and wake-up latency are tens to hundreds of microseconds, a spin is a few.
pub const SPIN_BEFORE_SEND: Duration = Duration::from_micros(300);

/// How long to block on the command channel before the next due send (host ns), spinning the
/// last [`SPIN_BEFORE_SEND`] so packets leave on time.
fn wait_before(due: f64) -> Duration {
    let spin = SPIN_BEFORE_SEND.as_nanos() as f64;
    let now = bridge::host_time_ns() as f64;
    if due - now > spin {
        return Duration::from_nanos((due - now - spin) as u64).min(DRAIN_PERIOD);
    }
    while (bridge::host_time_ns() as f64) < due {
        std::hint::spin_loop();
    }
    Duration::ZERO
}

/// Send every clock message that is due and return when the next one is (host ns; at most
/// [`DRAIN_PERIOD`] from now).
fn transmit(rings: &mut BTreeMap<u64, Attached>) -> f64 {
    let now = bridge::host_time_ns() as f64;
    let mut sent = Vec::new();
    let mut next = now + DRAIN_PERIOD.as_nanos() as f64;
    for (id, attached) in rings.iter_mut() {
        if let Some(rtpmidi) = &mut attached.rtpmidi
            && let Some(due) = rtpmidi.poll(now as u64)
        {
            next = next.min(due as f64);
        }
        publish_rtpmidi(*id, attached, now as u64);
        while let Some(transmit) = attached.scheduler.poll_transmit(now) {
            // The destinations (RTP-MIDI) take the message here; until they exist it is only
            // recorded.
            sent.push(SentClock {
                instance: *id,
                transmit,
                sent_at_ns: now,
            });
        }
        if let Some(due) = attached.scheduler.poll_timeout() {
            next = next.min(due);
        }
        let timing = attached.scheduler.stats();
        if timing != attached.clock.timing {
            attached.clock.timing = timing;
            if let Some(published) = lock(&BOARD).get_mut(id) {
                published.clock.timing = timing;
            }
        }
    }
    if !sent.is_empty()
        && let Some(log) = lock(&CLOCK_LOG).as_mut()
    {
        for entry in sent {
            if log.entries.len() < log.capacity {
                log.entries.push(entry);
            } else {
                log.overflowed += 1;
            }
        }
    }
    next
}

fn drain(
    rings: &mut BTreeMap<u64, Attached>,
    discovery: &mut Discovery,
    mut osc: Option<&mut osc::OscServer>,
) {
    let now = bridge::host_time_ns() as f64;
    for (id, attached) in rings.iter_mut() {
        let mut latest = None;
        let mut blocks = 0;
        let mut popped = 0u64;
        while let Some(event) = attached.ring.pop() {
            popped += 1;
            match event {
                BridgeEvent::Transport(snapshot) => {
                    attached.last_daw = Some(snapshot);
                    attached.estimator.add(
                        snapshot.block_start_samples,
                        snapshot.host_time_ns,
                        f64::from(snapshot.sample_rate),
                    );
                    // While following Link, tempo and transport come from the session.
                    if attached.link_clock.is_none() {
                        if let Some(server) = osc.as_deref_mut() {
                            server.core.set_transport(*id, snapshot);
                        }
                        attached.scheduler.handle_tempo(snapshot.tempo_bpm);
                        if let Some(rtpmidi) = &mut attached.rtpmidi {
                            rtpmidi.set_tempo(snapshot.tempo_bpm);
                        }
                    }
                    latest = Some(snapshot);
                    blocks += 1;
                }
                BridgeEvent::Activated {
                    sample_rate,
                    max_block,
                } => {
                    let latency_ns =
                        2.0 * f64::from(max_block) / f64::from(sample_rate.max(1.0)) * 1e9;
                    let config = SchedulerConfig {
                        latency_ns,
                        ..attached.scheduler.config()
                    };
                    attached.scheduler.set_config(config);
                    attached.clock.schedule = config;
                    if let Some(rtpmidi) = &mut attached.rtpmidi {
                        rtpmidi.set_schedule(config);
                    }
                }
                BridgeEvent::RtpMidiEnabled(enabled) => {
                    if enabled != attached.rtp_enabled
                        && let Some(settings) = attached.settings.clone()
                    {
                        configure(*id, attached, &settings, enabled, discovery);
                    }
                }
                BridgeEvent::ClockOutput {
                    enabled,
                    send_transport,
                } => {
                    let scheduler = &mut attached.scheduler;
                    attached
                        .follower
                        .set_output(enabled, send_transport, &mut |out| {
                            scheduler.handle(now, out)
                        });
                    attached.output = (enabled, send_transport);
                    if let Some(rtpmidi) = &mut attached.rtpmidi {
                        rtpmidi.set_output(now as u64, enabled, send_transport);
                    }
                }
                BridgeEvent::ClockOffset(offset_ms) => {
                    let config = SchedulerConfig {
                        offset_ns: f64::from(offset_ms) * 1e6,
                        ..attached.scheduler.config()
                    };
                    attached.scheduler.set_config(config);
                    attached.clock.schedule = config;
                    if let Some(rtpmidi) = &mut attached.rtpmidi {
                        rtpmidi.set_schedule(config);
                    }
                }
                BridgeEvent::ClockState(state) => {
                    if attached.link_clock.is_none() {
                        attached.clock.state = state;
                    }
                }
                BridgeEvent::Param { index, normalized } => {
                    let i = usize::from(index);
                    if attached.param_values.len() <= i {
                        attached.param_values.resize(i + 1, f64::NAN);
                    }
                    attached.param_values[i] = f64::from(normalized);
                    if let Some(server) = osc.as_deref_mut() {
                        server
                            .core
                            .set_current(*id, usize::from(index), f64::from(normalized));
                    }
                }
                BridgeEvent::Clock(clock) => match &mut attached.link_clock {
                    // Following Link: the DAW's clock is not passed on.
                    Some(link_clock) => link_clock.supersede(),
                    None => pass_clock(attached, now, clock),
                },
            }
        }
        if popped == 0 {
            continue;
        }
        attached.clock.gaps = attached.follower.gaps();
        attached.clock.lost = attached.follower.lost();
        if let Some(published) = lock(&BOARD).get_mut(id) {
            if latest.is_some() {
                published.last_transport = latest;
            }
            published.blocks += blocks;
            published.clock = attached.clock;
        }
        // Only now, with the effects published, do these events count as drained.
        attached.ring.mark_drained(popped);
    }
}

/// A snapshot of the worker and every attached instance.
pub fn status() -> WorkerStatus {
    // The worker thread taking REGISTRY can deadlock with a `Lease::drop` joining it.
    debug_assert_ne!(
        std::thread::current().name(),
        Some(THREAD_NAME),
        "the worker thread must not call status()"
    );
    let registry = lock(&REGISTRY);
    let uptime_ms = registry.running.as_ref().map_or(0, |r| {
        u64::try_from(r.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    });
    snapshot(
        registry.running.is_some(),
        registry.worker_starts,
        uptime_ms,
    )
}

/// The status from everything but the registry: what the worker thread itself may read (it
/// must never take REGISTRY, which `Lease::drop` holds while joining it).
fn snapshot(running: bool, worker_starts: u64, uptime_ms: u64) -> WorkerStatus {
    let board = lock(&BOARD);
    let instances = board
        .iter()
        .map(|(id, published)| {
            let (pushed, dropped, drained) = published.counters.load();
            InstanceStatus {
                id: *id,
                events_pushed: pushed,
                events_dropped_full: dropped,
                events_drained: drained,
                blocks: published.blocks,
                last_transport: published.last_transport,
                clock_state: published.clock.state,
                clock_messages: published.clock.messages,
                clock_ticks: published.clock.ticks,
                clock_gaps: published.clock.gaps,
                clock_lost: published.clock.lost,
                last_clock: published.clock.last,
                clock_schedule: published.clock.schedule,
                clock_timing: published.clock.timing,
                rtpmidi: published.rtpmidi.clone(),
            }
        })
        .collect();
    WorkerStatus {
        running,
        thread_name: THREAD_NAME.to_owned(),
        worker_starts,
        uptime_ms,
        instances,
        discovery: lock(&DISCOVERY).clone().unwrap_or_default(),
        scheduling: lock(&SCHEDULING).clone(),
        osc: lock(&OSC).clone(),
        link: lock(&LINK).clone(),
    }
}

/// Number of live threads in this process named [`THREAD_NAME`] (Linux; 0 elsewhere).
/// Used by tests and the status output to prove the worker is joined, not leaked.
pub fn live_worker_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == THREAD_NAME)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker is process-global, so every scenario runs in this one test, in order.
    #[test]
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
