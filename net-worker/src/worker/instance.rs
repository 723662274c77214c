//! One attached plugin instance as the worker sees it: its ring's events, its clock follower
//! and monitor stream, its RTP-MIDI driver and settings, and what the status shows of it.
//!
//! Runs on the worker thread only.

use std::collections::BTreeMap;

use super::discovery::Discovery;
use super::osc;
use super::publish::{self, SentClock};
use super::resolver::Resolver;
use super::rtpmidi::{RtpMidi, RtpMidiStatus};
use super::sender::SendPath;
use super::{Inbox, runtime};
use crate::bridge::{self, BridgeEvent, TransportSnapshot, WorkerSide};
use crate::clock::estimator::HostTimeEstimator;
use crate::clock::follower::ClockFollower;
use crate::clock::link_clock::LinkClock;
use crate::clock::scheduler::{Scheduler, SchedulerConfig};
use crate::clock::{ClockEvent, ClockKind, ClockState};
use crate::params::LayerStats;
use crate::settings::{NetSettings, SharedSettings};
use crate::status::HostLayerStatus;
use crate::status::InstanceStatus;
use std::sync::Arc;

/// Clock figures of one instance, as published.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClockSummary {
    pub(super) state: ClockState,
    pub(super) messages: u64,
    pub(super) ticks: u64,
    pub(super) last: Option<ClockEvent>,
}

/// Until an instance reports its block size (see [`SchedulerConfig::DEFAULT`]).
pub const DEFAULT_SCHEDULE: SchedulerConfig = SchedulerConfig::DEFAULT;

/// The worker's own per-instance state.
pub struct Attached {
    pub(super) ring: WorkerSide,
    pub(super) follower: ClockFollower,
    /// Timing of the monitor stream (what the clock recording shows); RTP-MIDI peers have
    /// their own.
    pub(super) scheduler: Scheduler,
    pub(super) clock: ClockSummary,
    /// Sockets and sessions, once configured.
    pub(super) rtpmidi: Option<RtpMidi>,
    /// Why RTP-MIDI is not running, if it is not.
    pub(super) rtpmidi_error: Option<String>,
    /// Clock output switches (`clk_on`, `clk_tr`) as last reported.
    pub(super) output: (bool, bool),
    /// The settings from the last configuration, to reopen RTP-MIDI when it is switched back on.
    pub(super) settings: Option<NetSettings>,
    /// Where OSC-driven parameter changes go (the plugin's host-facing layer takes them out).
    pub(super) inbox: Option<Inbox>,
    /// Whether the host-facing layer attached, and its counters.
    pub(super) layer: Option<(bool, Arc<LayerStats>)>,
    /// The instance's parameter ids (index = the `Param` event's index) and values.
    pub(super) param_ids: Vec<String>,
    pub(super) param_values: Vec<f64>,
    /// The latest transport snapshot (for Link's DAW-leads role).
    pub(super) last_daw: Option<TransportSnapshot>,
    /// The instance's sample clock against host time (as its clock engine fits it), to put
    /// timed OSC changes on their sample.
    /// Boxed: its 4096-point window is 64 KiB, too big to move around on the stack.
    pub(super) estimator: Box<HostTimeEstimator>,
    /// The plugin's settings, watched for changes, and the generation last applied.
    pub(super) shared: Option<(Arc<SharedSettings>, u64)>,
    /// RTP-MIDI switched on (the `rtp_on` parameter).
    pub(super) rtp_enabled: bool,
    /// Link Mode Follow: the clock comes from the Link session, not the DAW.
    pub(super) link_clock: Option<LinkClock>,
    /// Transport snapshots (one per processed block) received.
    pub(super) blocks: u64,
}

impl Attached {
    /// A newly attached instance with its ring.
    pub fn new(ring: WorkerSide) -> Self {
        Self {
            ring,
            follower: ClockFollower::new(),
            scheduler: Scheduler::new(DEFAULT_SCHEDULE),
            clock: ClockSummary::default(),
            rtpmidi: None,
            rtpmidi_error: None,
            output: (true, true),
            settings: None,
            shared: None,
            inbox: None,
            layer: None,
            param_ids: Vec::new(),
            param_values: Vec::new(),
            last_daw: None,
            estimator: Box::new(HostTimeEstimator::new(48_000.0)),
            rtp_enabled: true,
            link_clock: None,
            blocks: 0,
        }
    }

    /// What the status shows of this instance (ring counters are filled in by the reader).
    pub fn status(&self, id: u64) -> InstanceStatus {
        let rtpmidi = match (&self.rtpmidi, &self.rtpmidi_error) {
            (Some(rtpmidi), _) => Some(rtpmidi.status()),
            (None, Some(why)) => Some(RtpMidiStatus {
                errors: vec![why.clone()],
                ..RtpMidiStatus::default()
            }),
            (None, None) => None,
        };
        let (pushed, dropped, drained) = self.ring.counters().load();
        InstanceStatus {
            id,
            events_pushed: pushed,
            events_dropped_full: dropped,
            events_drained: drained,
            blocks: self.blocks,
            last_transport: self.last_daw,
            clock_state: self.clock.state,
            clock_messages: self.clock.messages,
            clock_ticks: self.clock.ticks,
            clock_gaps: self.follower.gaps(),
            clock_lost: self.follower.lost(),
            last_clock: self.clock.last,
            clock_schedule: self.scheduler.config(),
            clock_timing: self.scheduler.stats(),
            rtpmidi,
            host_layer: self
                .layer
                .as_ref()
                .map(|(attached, stats)| HostLayerStatus {
                    attached: *attached,
                    counters: stats.load(),
                }),
        }
    }

    /// A clock destination is connected (its messages must be built in time).
    pub fn has_destinations(&self) -> bool {
        self.rtpmidi.as_ref().is_some_and(RtpMidi::has_destinations)
    }
}

/// Pass the monitor streams' due messages on (recorded while a recording is on). Returns when
/// the next is due, if a recording needs it on time (host ns).
pub fn transmit(rings: &mut BTreeMap<u64, Attached>, now: u64) -> Option<u64> {
    let now_f = now as f64;
    let mut sent = Vec::new();
    let mut next: Option<f64> = None;
    for (id, attached) in rings.iter_mut() {
        while let Some(transmit) = attached.scheduler.poll_transmit(now_f) {
            sent.push(SentClock {
                instance: *id,
                transmit,
                sent_at_ns: now_f,
            });
        }
        if let Some(due) = attached.scheduler.poll_timeout() {
            next = Some(next.map_or(due, |n| n.min(due)));
        }
    }
    publish::record(&sent);
    next.filter(|_| publish::recording())
        .map(|due| due.max(0.0) as u64)
}

/// Everything the worker needs to apply ring events and settings.
pub struct Services<'a> {
    /// mDNS.
    pub discovery: &'a mut Discovery,
    /// The OSC bridge, if open.
    pub osc: Option<&'a mut osc::OscServer>,
    /// Host-name lookups.
    pub resolver: &'a mut Resolver,
    /// The clock send path.
    pub send_path: Option<&'a mut SendPath>,
    /// The readiness loop, to register new sockets.
    pub registry: &'a mio::Registry,
}

/// Take every instance's ring events and apply them (clock messages reach the destinations'
/// schedulers here, before the RTP-MIDI drivers build what is due).
pub fn drain(rings: &mut BTreeMap<u64, Attached>, services: &mut Services<'_>) {
    let now = bridge::host_time_ns() as f64;
    for (id, attached) in rings.iter_mut() {
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
                        if let Some(server) = services.osc.as_deref_mut() {
                            server.core.set_transport(*id, snapshot);
                        }
                        attached.scheduler.handle_tempo(snapshot.tempo_bpm);
                        // The engine has produced every message before this block.
                        let progress = snapshot.host_time_ns as f64;
                        attached.scheduler.handle_progress(progress);
                        if let Some(rtpmidi) = &mut attached.rtpmidi {
                            rtpmidi.set_tempo(snapshot.tempo_bpm);
                            rtpmidi.set_progress(progress);
                        }
                    }
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
                    if let Some(rtpmidi) = &mut attached.rtpmidi {
                        rtpmidi.set_schedule(config);
                    }
                }
                BridgeEvent::RtpMidiEnabled(enabled) => {
                    if enabled != attached.rtp_enabled
                        && let Some(settings) = attached.settings.clone()
                    {
                        configure(*id, attached, &settings, enabled, services);
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
                    if let Some(server) = services.osc.as_deref_mut() {
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
        attached.blocks += blocks;
        // Counted as drained once handled: the status read after this shows their effects
        // (the next published snapshot carries them).
        attached.ring.mark_drained(popped);
    }
}

/// A switch or enum parameter of an instance by id (normalized), if known.
pub fn param(attached: &Attached, id: &str) -> Option<f64> {
    attached
        .param_ids
        .iter()
        .position(|p| p == id)
        .and_then(|i| attached.param_values.get(i).copied())
}

/// A Link-driven clock's messages are worked out this far ahead (µs, plus any early user
/// offset); the scheduler then sends each at its time.
pub const FOLLOW_HORIZON_US: f64 = 5_000.0;

/// An instance's Link quantum (`lnk_q`: 1..16 beats).
pub fn quantum(attached: &Attached) -> f64 {
    param(attached, "lnk_q").map_or(4.0, |q| 1.0 + (q * 15.0).round())
}

/// Pass one clock message to an instance's destinations (monitor stream and RTP-MIDI).
pub fn pass_clock(attached: &mut Attached, now: f64, clock: ClockEvent) {
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
pub fn switch_clock_source(attached: &mut Attached, now: u64) {
    let scheduler = &mut attached.scheduler;
    attached
        .follower
        .switch_source(&mut |out| scheduler.handle(now as f64, out));
    if let Some(rtpmidi) = &mut attached.rtpmidi {
        rtpmidi.switch_source(now);
    }
}

/// Apply settings that changed since they were last applied (a state load into an active
/// instance): RTP-MIDI reopens only if something it uses changed.
pub fn watch_settings(rings: &mut BTreeMap<u64, Attached>, services: &mut Services<'_>) {
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
        if let Some(server) = services.osc.as_deref_mut() {
            server.core.set_mappings(*id, &new.osc_mappings);
            server.core.set_exposed(*id, &new.osc_expose);
            server.core.set_allow_list(&new.osc_allow);
            server.core.set_rate_limit(new.osc_rate_limit);
        }
        let differs = attached
            .settings
            .as_ref()
            .is_none_or(|old| old.rtp_midi_differs(&new));
        if differs {
            let enabled = attached.rtp_enabled;
            configure(*id, attached, &new, enabled, services);
        } else {
            attached.settings = Some(new);
        }
    }
}

/// (Re)open an instance's RTP-MIDI side from its settings.
pub fn configure(
    id: u64,
    attached: &mut Attached,
    settings: &NetSettings,
    enabled: bool,
    services: &mut Services<'_>,
) {
    services.discovery.withdraw(id);
    attached.settings = Some(settings.clone());
    attached.rtp_enabled = enabled;
    if let Some(old) = &mut attached.rtpmidi {
        old.shutdown(bridge::host_time_ns(), services.send_path.as_deref_mut());
    }
    attached.rtpmidi = None;
    if !enabled {
        attached.rtpmidi_error = Some("RTP-MIDI is switched off".into());
        return;
    }
    let now = bridge::host_time_ns();
    let seed = now ^ (id << 32) ^ u64::from(std::process::id());
    let opened = RtpMidi::open(
        now,
        settings,
        attached.scheduler.config(),
        seed,
        services.resolver,
    )
    .and_then(|mut rtpmidi| {
        rtpmidi
            .register(services.registry, runtime::rtp_token(id))
            .map_err(|e| format!("cannot watch the RTP-MIDI sockets: {e}"))?;
        Ok(rtpmidi)
    });
    match opened {
        Ok(mut rtpmidi) => {
            rtpmidi.set_output(now, attached.output.0, attached.output.1);
            if settings.mdns {
                services.discovery.advertise_rtp_midi(
                    id,
                    &settings.session_name,
                    settings.rtp_midi_port,
                );
            }
            attached.rtpmidi = Some(rtpmidi);
            attached.rtpmidi_error = None;
        }
        Err(why) => attached.rtpmidi_error = Some(why),
    }
}
