//! Lockstep's parameters and persistent settings.
//!
//! # Frozen ids
//! Parameter ids (the `#[id]` strings and `mac_1`..`mac_16`) are frozen from the first release:
//! hosts store automation and presets by them. Never rename or reuse one; add new ones, and put
//! migrations in `Plugin::filter_state`.
//!
//! | id | name | range | default |
//! |---|---|---|---|
//! | `clk_on` | Clock Out | on/off | on |
//! | `clk_ofs` | Clock Offset | -250..250 ms | 0 |
//! | `clk_tr` | Send Transport | on/off | on |
//! | `rtp_on` | RTP-MIDI | on/off | on |
//! | `osc_on` | OSC Control | on/off | on |
//! | `osc_fb` | OSC Feedback | on/off | on |
//! | `lnk_md` | Link Mode | Off / Lead / Follow | Off |
//! | `lnk_q` | Link Quantum | 1..16 beats | 4 |
//! | `lnk_ss` | Link Start/Stop | on/off | on |
//! | `mac_1`..`mac_16` | Macro 1..16 | 0..1 | 0 |
//!
//! Ports, session name, peers and the users' macro names are persistent state
//! ([`lockstep_net::settings::NetSettings`]), not parameters: they describe the studio, not the song.

use std::sync::Arc;

use lockstep_net::settings::{MACRO_COUNT, NetSettings, SharedSettings};
use nice_plug::params::persist::PersistentField;
use nice_plug::prelude::*;

/// Clock offset range in milliseconds (negative = earlier).
pub const CLOCK_OFFSET_RANGE_MS: (f32, f32) = (-250.0, 250.0);

/// What Lockstep does with Ableton Link.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Not joining any Link session.
    #[id = "off"]
    Off,
    /// The DAW leads: Link peers follow its tempo and phase.
    #[id = "lead"]
    Lead,
    /// Lockstep follows the Link session and reports it.
    #[id = "follow"]
    Follow,
}

/// All parameters and persistent fields.
#[derive(Params)]
pub struct LockstepParams {
    /// Send MIDI clock ticks.
    #[id = "clk_on"]
    pub clock_enabled: BoolParam,
    /// Global clock offset, milliseconds; negative sends earlier.
    #[id = "clk_ofs"]
    pub clock_offset_ms: FloatParam,
    /// Send Start/Stop/Continue and Song Position Pointer.
    #[id = "clk_tr"]
    pub clock_send_transport: BoolParam,
    /// Send to AppleMIDI peers.
    #[id = "rtp_on"]
    pub rtp_midi_enabled: BoolParam,
    /// Accept OSC control.
    #[id = "osc_on"]
    pub osc_enabled: BoolParam,
    /// Send OSC feedback (parameter values, status) to controllers.
    #[id = "osc_fb"]
    pub osc_feedback: BoolParam,
    /// Ableton Link role.
    #[id = "lnk_md"]
    pub link_mode: EnumParam<LinkMode>,
    /// Link quantum in beats.
    #[id = "lnk_q"]
    pub link_quantum: IntParam,
    /// Share start/stop with Link peers.
    #[id = "lnk_ss"]
    pub link_start_stop: BoolParam,
    /// The 16 OSC-driven macros the DAW maps onto other devices.
    #[nested(group = "Macros")]
    pub macros: MacroBank,
    /// Ports, peers, session and macro names.
    #[persist = "net"]
    pub net: NetSettingsField,
}

/// The `net` persistent field: [`SharedSettings`] that the worker watches, so settings loaded
/// into an active instance (a DAW loading a project or preset) take effect at once.
pub struct NetSettingsField(pub Arc<SharedSettings>);

impl<'a> PersistentField<'a, NetSettings> for NetSettingsField {
    fn set(&self, new_value: NetSettings) {
        self.0.replace(new_value);
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&NetSettings) -> R,
    {
        self.0.with(|s| f(s))
    }
}

/// The 16 macro parameters, ids `mac_1`..`mac_16`, all in one "Macros" group.
pub struct MacroBank {
    /// Macro values, 0..1.
    pub values: [FloatParam; MACRO_COUNT],
    /// The frozen ids, built once.
    ids: [String; MACRO_COUNT],
}

impl Default for LockstepParams {
    fn default() -> Self {
        let on_off = |name: &str, default: bool| BoolParam::new(name, default);
        Self {
            clock_enabled: on_off("Clock Out", true),
            clock_offset_ms: FloatParam::new(
                "Clock Offset",
                0.0,
                FloatRange::Linear {
                    min: CLOCK_OFFSET_RANGE_MS.0,
                    max: CLOCK_OFFSET_RANGE_MS.1,
                },
            )
            .with_unit(" ms")
            .with_step_size(0.1),
            clock_send_transport: on_off("Send Transport", true),
            rtp_midi_enabled: on_off("RTP-MIDI", true),
            osc_enabled: on_off("OSC Control", true),
            osc_feedback: on_off("OSC Feedback", true),
            link_mode: EnumParam::new("Link Mode", LinkMode::Off),
            link_quantum: IntParam::new("Link Quantum", 4, IntRange::Linear { min: 1, max: 16 })
                .with_unit(" beats"),
            link_start_stop: on_off("Link Start/Stop", true),
            macros: MacroBank::default(),
            net: NetSettingsField(Arc::new(SharedSettings::default())),
        }
    }
}

impl Default for MacroBank {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|i| {
                FloatParam::new(
                    format!("Macro {}", i + 1),
                    0.0,
                    FloatRange::Linear { min: 0.0, max: 1.0 },
                )
                .with_value_to_string(formatters::v2s_f32_percentage(1))
                .with_string_to_value(formatters::s2v_f32_percentage())
                .with_unit("%")
            }),
            ids: std::array::from_fn(|i| format!("mac_{}", i + 1)),
        }
    }
}

// SAFETY: every `ParamPtr` points into `self.values`, which lives as long as the `Arc` the
// wrapper holds on the outer params object (the contract of `Params`).
unsafe impl Params for MacroBank {
    fn param_map(&self) -> Vec<(String, ParamPtr, String)> {
        self.ids
            .iter()
            .zip(&self.values)
            .map(|(id, param)| (id.clone(), param.as_ptr(), String::new()))
            .collect()
    }
}

impl LockstepParams {
    /// A copy of the persistent network settings.
    pub fn net_settings(&self) -> NetSettings {
        self.net.0.get()
    }
}
