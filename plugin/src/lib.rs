//! Lockstep: in-DAW network sync and control, as a CLAP and VST3 plugin.
//!
//! # Layout
//! - this file: the nice-plug `Plugin` implementation and the CLAP/VST3 exports, kept thin.
//! - [`params`]: the frozen parameter set and persistent settings.
//! - [`audio`]: host transport → [`lockstep_net::bridge::TransportSnapshot`], on the audio thread.
//! - [`status_export`]: the `lockstep_status_json` C symbol the headless runner and tests read.
//! - [`host_layer`]: the CLAP and VST3 entry points: nice-plug's wrappers inside a thin layer
//!   that lets remote control change parameters the way a host-side controller would.
//! - `lockstep_net` (crate `net-worker/`): the bridge ring, the one network worker, protocols.
//!
//! Audio passes through untouched (nice-plug copies input to output before `process()` when the
//! host does not process in place), with zero latency.

#![warn(missing_docs)]

pub mod audio;
pub mod editor;
pub mod host_layer;
pub mod params;
pub mod status_export;

use std::sync::{Arc, Mutex};

use lockstep_net::bridge::{AudioSide, BridgeEvent, DEFAULT_RING_CAPACITY, host_time_ns};
use lockstep_net::clock::ClockState;
use lockstep_net::clock::engine::ClockEngine;
use lockstep_net::worker::{self, Lease};
use nice_plug::prelude::*;

use crate::params::{LockstepParams, PARAM_COUNT};
use lockstep_net::params::HostParamChange;

/// Stable CLAP plugin id. Frozen: hosts store projects by it.
pub const CLAP_ID: &str = "dev.lockstep.lockstep";
/// Stable VST3 class id. Frozen: hosts store projects by it.
pub const VST3_CLASS_ID: [u8; 16] = *b"LockstepNetSync1";

/// One plugin instance.
pub struct Lockstep {
    /// Parameters and persistent settings, shared with the wrapper (and later the editor).
    params: Arc<LockstepParams>,
    /// The ring to the worker and this instance's registration; `None` while deactivated or if
    /// the worker thread could not be started (then the status says so).
    spine: Option<Spine>,
    /// This instance's running sample clock: the next block's first sample since activation.
    sample_clock: u64,
    /// Sample rate from the last activation.
    sample_rate: f32,
    /// Host transport → stamped MIDI clock messages.
    clock: ClockEngine,
    /// The clock state the worker was last told about.
    reported_clock_state: Option<ClockState>,
    /// The clock parameters the worker was last told about.
    reported_clock_params: Option<ClockParams>,
    /// Parameter values (normalized) the worker was last told about, for OSC feedback.
    reported_params: [f32; PARAM_COUNT],
    /// Producer end of the queue from the worker (remote control) to this instance's
    /// host-facing layer; shared with the worker while attached. Never touched by the audio
    /// thread.
    param_inbox: Arc<Mutex<rtrb::Producer<HostParamChange>>>,
    /// What this instance shares with its host-facing layer (the sample clock, whether the
    /// layer attached, its counters).
    layer: Arc<host_layer::Shared>,
    /// The worker's id of this instance while active (0 otherwise), for the editor.
    instance_id: Arc<std::sync::atomic::AtomicU64>,
    /// The editor's size and scale.
    editor_state: Arc<nice_plug_egui::EguiEditorState>,
}

/// The clock parameters the worker needs, compared each block to notice changes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ClockParams {
    enabled: bool,
    send_transport: bool,
    offset_ms: f32,
    rtp_midi: bool,
}

/// What an active instance holds of the network side.
struct Spine {
    /// Audio end of this instance's ring.
    ring: AudioSide,
    /// Keeps the shared worker alive while this instance is active; carries its settings.
    lease: Lease,
}

impl Default for Lockstep {
    fn default() -> Self {
        // The host-facing layer that is constructing this instance (CLAP or VST3) takes the
        // consumer end right after this returns, on this thread.
        let layer = Arc::new(host_layer::Shared::default());
        let producer = host_layer::offer(&layer);
        Self {
            params: Arc::new(LockstepParams::default()),
            spine: None,
            sample_clock: 0,
            sample_rate: 48_000.0,
            clock: ClockEngine::new(48_000.0),
            reported_clock_state: None,
            reported_clock_params: None,
            reported_params: [f32::NAN; PARAM_COUNT],
            param_inbox: Arc::new(Mutex::new(producer)),
            layer,
            instance_id: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            editor_state: editor::default_state(),
        }
    }
}

impl Plugin for Lockstep {
    const NAME: &'static str = "Lockstep";
    const VENDOR: &'static str = "Lockstep";
    const URL: &'static str = env!("CARGO_PKG_REPOSITORY");
    const EMAIL: &'static str = "";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(2),
            main_output_channels: NonZeroU32::new(2),
            ..AudioIOLayout::const_default()
        },
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(1),
            main_output_channels: NonZeroU32::new(1),
            ..AudioIOLayout::const_default()
        },
    ];

    type Editor = nice_plug_egui::EguiEditor<editor::EditorApp>;
    type SysExMessage = ();
    type BackgroundTask = ();

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        nice_plug_egui::create_egui_editor(
            Arc::clone(&self.editor_state),
            nice_plug_egui::RepaintNotifier::new(),
            editor::settings(),
            editor::EditorApp::new(Arc::clone(&self.params), Arc::clone(&self.instance_id)),
        )
    }

    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        self.sample_rate = buffer_config.sample_rate;
        // activate() may run several times without deactivate(): keep an existing spine.
        let fresh = self.spine.is_none();
        if fresh {
            match worker::attach(DEFAULT_RING_CAPACITY) {
                Ok((ring, lease)) => {
                    self.instance_id
                        .store(lease.id(), std::sync::atomic::Ordering::Relaxed);
                    self.spine = Some(Spine { ring, lease });
                }
                // Audio must pass through whatever the network side does; the status export
                // shows no instance and `worker_starts`/`running` explain why.
                Err(err) => nice_error!("lockstep: {err}"),
            }
        }
        if let Some(spine) = &mut self.spine {
            // Ports and peers as saved with the project (RTP-MIDI sockets open in the worker).
            spine.lease.configure(
                Arc::clone(&self.params.net.0),
                self.params.rtp_midi_enabled.value(),
            );
            if fresh {
                // After the settings (the OSC port comes from them). Remote control reaches
                // the plugin through its host-facing layer (CLAP and VST3 alike); without one
                // the worker refuses remote changes with an error.
                let inbox = self
                    .layer
                    .attached
                    .load(std::sync::atomic::Ordering::Acquire)
                    .then(|| Arc::clone(&self.param_inbox));
                spine
                    .lease
                    .set_params(self.params.specs(), inbox, Arc::clone(&self.layer.stats));
                self.reported_params = [f32::NAN; PARAM_COUNT];
            }
            // Main thread, before processing starts. If the ring is somehow full the worker
            // keeps its default latency assumption (2 × 512 samples at 48 kHz).
            let _ = spine.ring.push(BridgeEvent::Activated {
                sample_rate: buffer_config.sample_rate,
                max_block: buffer_config.max_buffer_size,
            });
        }
        // Tell the worker the clock parameters again with the first block.
        self.reported_clock_params = None;
        true
    }

    fn reset(&mut self) {
        // Realtime-safe: the engine resets in place.
        self.sample_clock = 0;
        self.layer
            .clock
            .store(0, std::sync::atomic::Ordering::Release);
        self.clock.reset(f64::from(self.sample_rate));
        self.reported_clock_state = None;
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        let now_ns = host_time_ns();
        let block_len = u32::try_from(buffer.samples()).unwrap_or(u32::MAX);
        let snapshot = audio::snapshot(context.transport(), self.sample_clock, block_len, now_ns);
        self.sample_clock += u64::from(block_len);
        // The layer places the next block's timed remote changes on this clock.
        self.layer
            .clock
            .store(self.sample_clock, std::sync::atomic::Ordering::Release);
        if let Some(spine) = &mut self.spine {
            // A full ring drops the newest item and counts it; the status shows the count, and
            // the worker repairs a clock stream with holes in it.
            let ring = &mut spine.ring;
            let _ = ring.push(BridgeEvent::Transport(snapshot));
            self.clock.process(&snapshot, &mut |event| {
                let _ = ring.push(BridgeEvent::Clock(event));
            });
            let params = ClockParams {
                enabled: self.params.clock_enabled.value(),
                send_transport: self.params.clock_send_transport.value(),
                offset_ms: self.params.clock_offset_ms.value(),
                rtp_midi: self.params.rtp_midi_enabled.value(),
            };
            if self.reported_clock_params != Some(params) {
                let output = ring.push(BridgeEvent::ClockOutput {
                    enabled: params.enabled,
                    send_transport: params.send_transport,
                });
                let offset = ring.push(BridgeEvent::ClockOffset(params.offset_ms));
                let rtp = ring.push(BridgeEvent::RtpMidiEnabled(params.rtp_midi));
                if output.is_ok() && offset.is_ok() && rtp.is_ok() {
                    self.reported_clock_params = Some(params);
                }
            }
            let mut now = [0.0f32; PARAM_COUNT];
            self.params.normalized(&mut now);
            for (index, (value, reported)) in
                now.iter().zip(self.reported_params.iter_mut()).enumerate()
            {
                if value != reported
                    && ring
                        .push(BridgeEvent::Param {
                            index: index as u16,
                            normalized: *value,
                        })
                        .is_ok()
                {
                    *reported = *value;
                }
            }
            let state = self.clock.state();
            if self.reported_clock_state != Some(state)
                && ring.push(BridgeEvent::ClockState(state)).is_ok()
            {
                self.reported_clock_state = Some(state);
            }
        }
        // Clock and sync must keep running through silence: never let the host sleep us.
        ProcessStatus::KeepAlive
    }

    fn deactivate(&mut self) {
        // Drops the lease on the main thread; the last one joins the worker.
        self.spine = None;
        self.instance_id
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ClapPlugin for Lockstep {
    const CLAP_ID: &'static str = CLAP_ID;
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Network sync and control: MIDI clock over RTP-MIDI, Ableton Link, OSC");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::AudioEffect,
        ClapFeature::Utility,
        ClapFeature::Stereo,
        ClapFeature::Mono,
    ];
}

impl Vst3Plugin for Lockstep {
    const VST3_CLASS_ID: [u8; 16] = VST3_CLASS_ID;
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Fx, Vst3SubCategory::Tools];
}

// The CLAP and VST3 entry points are in `host_layer::clap` and `host_layer::vst3`
// (nice-plug's wrappers inside our host-facing layer).
