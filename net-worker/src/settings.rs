//! Persistent network settings: what a user configures per project that is not a parameter.
//!
//! Ports, session names and the list of remote peers belong to the studio setup, not to
//! automation, so they live in the plugin's saved state (nice-plug `#[persist]`) instead of the
//! parameter list. Field names are the saved-state format: add fields with `#[serde(default)]`,
//! never rename them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};

/// Conventional AppleMIDI control port; the data port is this + 1.
pub const DEFAULT_RTP_MIDI_PORT: u16 = 5004;
/// Lockstep's default OSC receive port: 8000, where TouchOSC sends by default.
pub const DEFAULT_OSC_PORT: u16 = 8000;
/// Number of user macro parameters.
pub const MACRO_COUNT: usize = 16;

/// All persistent network settings of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetSettings {
    /// Name this instance announces as an AppleMIDI session.
    pub session_name: String,
    /// AppleMIDI control port (data port = control + 1).
    pub rtp_midi_port: u16,
    /// OSC receive port.
    pub osc_port: u16,
    /// Remote AppleMIDI peers to invite, with their own settings.
    pub peers: Vec<PeerSettings>,
    /// Who may invite us into an AppleMIDI session.
    pub rtp_midi_access: AccessMode,
    /// Advertise our AppleMIDI session over mDNS (Bonjour) and list the peers found.
    pub mdns: bool,
    /// Send the recovery journal to peers that invite us (directory peers have their own
    /// switch).
    pub rtp_midi_journal: bool,
    /// User names of the macro parameters, index 0 = macro 1. Empty = default name.
    pub macro_names: Vec<String>,
}

/// Who may invite Lockstep into an AppleMIDI session (Apple's Network MIDI choices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Anyone on the network.
    #[default]
    Anyone,
    /// Only the peers in the directory.
    Directory,
    /// Nobody: Lockstep only invites.
    Nobody,
}

/// One remote AppleMIDI destination the user added by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerSettings {
    /// Display name.
    pub name: String,
    /// Host name or IP address.
    pub host: String,
    /// Control port of the peer.
    pub port: u16,
    /// Per-destination clock offset in milliseconds (negative = earlier).
    pub offset_ms: f32,
    /// Whether Lockstep sends to this peer.
    pub enabled: bool,
    /// Send the recovery journal (Chapter Q: a receiver that lost a Start, Stop, SPP or
    /// clocks recovers from the next packet). On by default; off for a peer that chokes on it.
    pub journal: bool,
}

impl Default for NetSettings {
    fn default() -> Self {
        Self {
            session_name: "Lockstep".into(),
            rtp_midi_port: DEFAULT_RTP_MIDI_PORT,
            osc_port: DEFAULT_OSC_PORT,
            peers: Vec::new(),
            rtp_midi_access: AccessMode::Anyone,
            rtp_midi_journal: true,
            mdns: true,
            macro_names: vec![String::new(); MACRO_COUNT],
        }
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            host: String::new(),
            port: DEFAULT_RTP_MIDI_PORT,
            offset_ms: 0.0,
            enabled: true,
            journal: true,
        }
    }
}

/// An instance's settings shared between the plugin (state load, later the editor) and the
/// worker, which applies every new version while the plugin is active. Never touched by the
/// audio thread.
#[derive(Debug, Default)]
pub struct SharedSettings {
    settings: RwLock<NetSettings>,
    generation: AtomicU64,
}

impl SharedSettings {
    /// Shared settings starting as `settings`.
    pub fn new(settings: NetSettings) -> Self {
        Self {
            settings: RwLock::new(settings),
            generation: AtomicU64::new(0),
        }
    }

    /// A copy of the current settings.
    pub fn get(&self) -> NetSettings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Apply `f` to the current settings without copying them.
    pub fn with<R>(&self, f: impl FnOnce(&NetSettings) -> R) -> R {
        f(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replace the settings (a state load, an edit); the worker picks the change up.
    pub fn replace(&self, settings: NetSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = settings;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Bumped by every [`SharedSettings::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl NetSettings {
    /// True if `other` differs in anything the RTP-MIDI side uses (a change of macro names
    /// alone must not drop sessions).
    pub fn rtp_midi_differs(&self, other: &NetSettings) -> bool {
        self.session_name != other.session_name
            || self.rtp_midi_port != other.rtp_midi_port
            || self.peers != other.peers
            || self.rtp_midi_access != other.rtp_midi_access
            || self.rtp_midi_journal != other.rtp_midi_journal
            || self.mdns != other.mdns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_settings_in_presets_parse() {
        let example: NetSettings =
            serde_json::from_str(include_str!("../../presets/settings/two-studios.json"))
                .expect("presets/settings/two-studios.json is valid NetSettings");
        assert_eq!(example.peers.len(), 2);
        assert_eq!(example.peers[0].offset_ms, -3.5);
        assert!(!example.peers[1].enabled);
        assert_eq!(example.macro_names.len(), MACRO_COUNT);
    }

    #[test]
    fn old_state_without_new_fields_loads_with_defaults() {
        let loaded: NetSettings = serde_json::from_str(r#"{"osc_port": 7000}"#).expect("valid");
        assert_eq!(loaded.osc_port, 7000);
        assert_eq!(loaded.rtp_midi_port, DEFAULT_RTP_MIDI_PORT);
        assert_eq!(loaded.macro_names.len(), MACRO_COUNT);
    }
}
