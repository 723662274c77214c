//! What the worker reports about itself and every attached instance.
//!
//! Serialised as JSON by the plugin's status export, printed by the headless runner, asserted on
//! by the end-to-end tests and (later) drawn by the editor. Field names are part of the
//! `--status-json` contract: add fields, never rename them.

use serde::{Deserialize, Serialize};

use crate::bridge::TransportSnapshot;
use crate::clock::scheduler::{SchedulerConfig, SchedulerStats};
use crate::clock::{ClockEvent, ClockState};

pub mod discovery;
pub mod link;
pub mod osc;
pub mod remote;
pub mod rtpmidi;
pub mod send;

use discovery::DiscoveryStatus;
use rtpmidi::RtpMidiStatus;

/// The whole worker, one snapshot in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker thread exists and has not been asked to stop.
    pub running: bool,
    /// The worker thread's name, as `ps -L`/`top -H` shows it.
    pub thread_name: String,
    /// How many times a worker thread was started in this process (one per first activation
    /// after the last instance went away).
    pub worker_starts: u64,
    /// Milliseconds since the current worker started, 0 when not running.
    pub uptime_ms: u64,
    /// One entry per activated instance, in attach order.
    pub instances: Vec<InstanceStatus>,
    /// mDNS: what we advertise and the AppleMIDI peers found on the network.
    #[serde(default)]
    pub discovery: DiscoveryStatus,
    /// How the worker thread is scheduled ("realtime (SCHED_FIFO, priority 10)", or why not).
    #[serde(default)]
    pub scheduling: String,
    /// OSC control: port, counters, subscribers, recent messages (None before the first
    /// instance describes its parameters).
    #[serde(default)]
    pub osc: Option<osc::OscStatus>,
    /// Ableton Link (None while every instance's Link Mode is Off).
    #[serde(default)]
    pub link: Option<link::LinkStatus>,
    /// The clock send path: datagrams sent, late, errors (None until the worker started it).
    #[serde(default)]
    pub send_path: Option<send::SenderStats>,
    /// How the send path's thread is scheduled.
    #[serde(default)]
    pub send_scheduling: String,
    /// How datagram arrival times are taken on this OS (kernel receive time, or read time on
    /// Windows), which the CK latency and Link's measurement depend on.
    #[serde(default)]
    pub receive_times: String,
    /// Passes of the worker's loop so far (each one a wake-up: a socket, a command or a
    /// deadline), for the idle-cost checks.
    #[serde(default)]
    pub passes: u64,
    /// The remote session, while one is configured.
    #[serde(default)]
    pub remote: Option<remote::RemoteStatus>,
}

impl WorkerStatus {
    /// Nothing published yet.
    pub fn empty() -> Self {
        Self {
            running: false,
            thread_name: String::new(),
            worker_starts: 0,
            uptime_ms: 0,
            instances: Vec::new(),
            discovery: DiscoveryStatus::default(),
            scheduling: String::new(),
            osc: None,
            link: None,
            send_path: None,
            send_scheduling: String::new(),
            receive_times: String::new(),
            passes: 0,
            remote: None,
        }
    }
}

impl InstanceStatus {
    /// An instance the worker has not reported on yet.
    pub fn new(id: u64) -> Self {
        Self {
            id,
            events_pushed: 0,
            events_dropped_full: 0,
            events_drained: 0,
            blocks: 0,
            last_transport: None,
            clock_state: ClockState::default(),
            clock_messages: 0,
            clock_ticks: 0,
            clock_gaps: 0,
            clock_lost: 0,
            last_clock: None,
            clock_schedule: SchedulerConfig::DEFAULT,
            clock_timing: SchedulerStats::default(),
            rtpmidi: None,
            host_layer: None,
        }
    }
}

/// One activated plugin instance, as the worker sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Process-unique instance number, in activation order starting at 1.
    pub id: u64,
    /// Events the audio thread pushed onto this instance's ring.
    pub events_pushed: u64,
    /// Events the audio thread dropped because the ring was full (newest dropped).
    pub events_dropped_full: u64,
    /// Events the worker took off the ring.
    pub events_drained: u64,
    /// Transport snapshots (one per processed block) the worker received.
    pub blocks: u64,
    /// The most recent transport snapshot the worker received.
    pub last_transport: Option<TransportSnapshot>,
    /// Why the clock engine is or is not sending clock.
    pub clock_state: ClockState,
    /// Clock messages received from the engine.
    pub clock_messages: u64,
    /// Of those, ticks.
    pub clock_ticks: u64,
    /// Gaps in the clock stream (messages lost on a full ring); each one resynchronised the
    /// destinations with Stop / Song Position / Continue.
    pub clock_gaps: u64,
    /// Clock messages known lost in those gaps.
    pub clock_lost: u64,
    /// The most recent clock message.
    pub last_clock: Option<ClockEvent>,
    /// How clock messages are timed (assumed output latency and the user's offset).
    pub clock_schedule: SchedulerConfig,
    /// Late, predicted and over-predicted messages.
    pub clock_timing: SchedulerStats,
    /// RTP-MIDI: ports, peers, counters; `None` until the instance is configured.
    pub rtpmidi: Option<RtpMidiStatus>,
    /// The plugin's host-facing layer (how remote changes reach the host); `None` until the
    /// instance described its parameters.
    #[serde(default)]
    pub host_layer: Option<HostLayerStatus>,
}

/// The host-facing layer of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLayerStatus {
    /// Whether the layer attached (remote changes can reach the host).
    pub attached: bool,
    /// What it did.
    #[serde(flatten)]
    pub counters: crate::params::LayerCounters,
}

/// What the plugin's `lockstep_status_json` symbol returns: the worker's view plus a live count
/// of threads named like the worker, so a leaked or missing thread shows up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedStatus {
    /// The worker's own view.
    #[serde(flatten)]
    pub worker: WorkerStatus,
    /// Threads named like the worker (`lockstep-net`) that exist right now (0 or 1 when healthy).
    pub live_worker_threads: usize,
}
