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
//! | `bypass` | Bypass | on/off | off |
//!
//! `bypass` is the host's bypass switch (flagged as such to CLAP and VST3 hosts). Lockstep's
//! audio is an untouched pass-through either way, and bypass does not stop the clock or sync:
//! hosts bypass plugins for many reasons (a click, CPU saving, a freeze) and a studio's clock
//! must not stop mid-song because of one. Clock Out switches the clock off. Remote control
//! cannot reach it.
//!
//! Ports, session name, peers and the users' macro names are persistent state
//! ([`lockstep_net::settings::NetSettings`]), not parameters: they describe the studio, not the song.

use std::sync::Arc;

use lockstep_net::params::{ParamKind, ParamSpec, Remote};
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
    /// The host's bypass switch: audio passes untouched either way; the clock keeps going.
    #[id = "bypass"]
    pub bypass: BoolParam,
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
            bypass: BoolParam::new("Bypass", false).make_bypass(),
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

/// Parameters remote control can reach: the nine fixed ones, then the macros.
pub const PARAM_COUNT: usize = 9 + MACRO_COUNT;

/// nice-plug's CLAP id for a parameter id (31 × h + byte, top bit cleared).
pub fn clap_id(id: &str) -> u32 {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        & 0x7fff_ffff
}

impl LockstepParams {
    /// Every parameter as remote control sees it, in the order of [`LockstepParams::normalized`].
    pub fn specs(&self) -> Vec<ParamSpec> {
        let float = |id: &str, p: &FloatParam, min: f64, max: f64, unit: &str| ParamSpec {
            id: id.into(),
            name: p.name().into(),
            kind: ParamKind::Float {
                min,
                max,
                unit: unit.into(),
            },
            clap_id: clap_id(id),
            default: f64::from(p.default_normalized_value()),
            remote: Remote::Open,
        };
        let boolean = |id: &str, p: &BoolParam, remote: Remote| ParamSpec {
            id: id.into(),
            name: p.name().into(),
            kind: ParamKind::Bool,
            clap_id: clap_id(id),
            default: f64::from(p.default_normalized_value()),
            remote,
        };
        let mut specs = vec![
            boolean("clk_on", &self.clock_enabled, Remote::OptIn),
            float(
                "clk_ofs",
                &self.clock_offset_ms,
                f64::from(CLOCK_OFFSET_RANGE_MS.0),
                f64::from(CLOCK_OFFSET_RANGE_MS.1),
                "ms",
            ),
            boolean("clk_tr", &self.clock_send_transport, Remote::OptIn),
            boolean("rtp_on", &self.rtp_midi_enabled, Remote::OptIn),
            boolean("osc_on", &self.osc_enabled, Remote::Never),
            boolean("osc_fb", &self.osc_feedback, Remote::OptIn),
            ParamSpec {
                id: "lnk_md".into(),
                name: self.link_mode.name().into(),
                kind: ParamKind::Enum {
                    names: LinkMode::variants().iter().map(|v| (*v).into()).collect(),
                },
                clap_id: clap_id("lnk_md"),
                default: f64::from(self.link_mode.default_normalized_value()),
                remote: Remote::OptIn,
            },
            ParamSpec {
                id: "lnk_q".into(),
                name: self.link_quantum.name().into(),
                kind: ParamKind::Int { min: 1, max: 16 },
                clap_id: clap_id("lnk_q"),
                default: f64::from(self.link_quantum.default_normalized_value()),
                remote: Remote::Open,
            },
            boolean("lnk_ss", &self.link_start_stop, Remote::OptIn),
        ];
        for (id, p) in self.macros.ids.iter().zip(&self.macros.values) {
            specs.push(float(id, p, 0.0, 1.0, ""));
        }
        specs
    }

    /// Current normalized values, in the order of [`LockstepParams::specs`]. Allocation-free
    /// (audio thread).
    pub fn normalized(&self, out: &mut [f32; PARAM_COUNT]) {
        out[0] = self.clock_enabled.modulated_normalized_value();
        out[1] = self.clock_offset_ms.modulated_normalized_value();
        out[2] = self.clock_send_transport.modulated_normalized_value();
        out[3] = self.rtp_midi_enabled.modulated_normalized_value();
        out[4] = self.osc_enabled.modulated_normalized_value();
        out[5] = self.osc_feedback.modulated_normalized_value();
        out[6] = self.link_mode.modulated_normalized_value();
        out[7] = self.link_quantum.modulated_normalized_value();
        out[8] = self.link_start_stop.modulated_normalized_value();
        for (slot, p) in out[9..].iter_mut().zip(&self.macros.values) {
            *slot = p.modulated_normalized_value();
        }
    }

    /// A copy of the persistent network settings.
    pub fn net_settings(&self) -> NetSettings {
        self.net.0.get()
    }
}
