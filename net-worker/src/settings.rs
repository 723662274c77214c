//! Persistent network settings: what a user configures per project that is not a parameter.
//!
//! Ports, session names and the list of remote peers belong to the studio setup, not to
//! automation, so they live in the plugin's saved state (nice-plug `#[persist]`) instead of the
//! parameter list. Field names are the saved-state format: add fields with `#[serde(default)]`,
//! never rename them.

use serde::{Deserialize, Serialize};

/// Conventional AppleMIDI control port; the data port is this + 1.
pub const DEFAULT_RTP_MIDI_PORT: u16 = 5004;
/// Lockstep's default OSC receive port (clear of TouchOSC's 8000/9000 defaults so both can run
/// on one machine).
pub const DEFAULT_OSC_PORT: u16 = 9020;
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
}

impl Default for NetSettings {
    fn default() -> Self {
        Self {
            session_name: "Lockstep".into(),
            rtp_midi_port: DEFAULT_RTP_MIDI_PORT,
            osc_port: DEFAULT_OSC_PORT,
            peers: Vec::new(),
            rtp_midi_access: AccessMode::Anyone,
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
        }
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
