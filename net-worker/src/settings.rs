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

/// Default [`NetSettings::rtp_midi_max_guests`].
pub const DEFAULT_MAX_GUESTS: usize = 32;

/// Default [`NetSettings::osc_rate_limit`]: messages a second per source.
pub const DEFAULT_OSC_RATE_LIMIT: f64 = 500.0;

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
    /// Most peers that may be in a session with us on their invitation at once (directory
    /// peers do not count). Over it, invitations are refused and counted; connected guests are
    /// never dropped for a newcomer.
    pub rtp_midi_max_guests: usize,
    /// Advertise our AppleMIDI session over mDNS (Bonjour) and list the peers found.
    pub mdns: bool,
    /// Send the recovery journal to peers that invite us (directory peers have their own
    /// switch).
    pub rtp_midi_journal: bool,
    /// User names of the macro parameters, index 0 = macro 1. Empty = default name.
    pub macro_names: Vec<String>,
    /// Controller addresses mapped onto parameters (`/1/fader1` → Macro 1).
    pub osc_mappings: Vec<OscMapping>,
    /// Serve OSCQuery to the LAN (and advertise it over mDNS); off = loopback only.
    pub oscquery_lan: bool,
    /// Who may send OSC: addresses or subnets (`192.168.1.0/24`, `10.0.0.7`, `::1`). Empty =
    /// loopback, private and link-local ranges.
    pub osc_allow: Vec<String>,
    /// Switches remote control may set besides the macros and musical settings (`clk_on`,
    /// `clk_tr`, `rtp_on`, `osc_fb`, `lnk_md`, `lnk_ss`). `osc_on` can never be set remotely.
    pub osc_expose: Vec<String>,
    /// Most OSC messages a second from one source address (bursts to twice that); more are
    /// refused and counted. Protective by default; a studio with a fast controller (or a
    /// benchmark) raises it.
    pub osc_rate_limit: f64,
    /// The network interfaces Link runs on: names (`eth0`, `en0`) or IPv4 addresses, comma
    /// separated, or `all` (every interface that is up with multicast); empty = the interface
    /// the system routes Link's multicast group through.
    pub link_interface: String,
    /// The remote session across the internet (off while its code is empty).
    pub remote: RemoteSettings,
}

/// A remote session with studios on other networks: who to meet (the session code) and the
/// standard servers that help (an MQTT broker for the rendezvous, STUN and TURN for the path).
/// Addresses are `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteSettings {
    /// The session code every studio types (`<room>-<secret>`); empty = no remote session.
    pub code: String,
    /// The MQTT broker the rendezvous goes through (`broker.example:1883`).
    pub broker: String,
    /// A STUN server that tells us our public address (`stun.example:3478`); empty = none.
    pub stun: String,
    /// A TURN server that relays when no direct path works; empty = none.
    pub turn: String,
    /// TURN long-term credentials (user and password) ...
    pub turn_user: String,
    /// ... and their password.
    pub turn_pass: String,
    /// ... or coturn's REST shared secret (`use-auth-secret`), from which short-lived
    /// credentials are made; used when set.
    pub turn_secret: String,
    /// Where this studio plays the shared beat grid, ms after it: 0 = at the same moment as
    /// every studio; N = "after my audio returns" (an audio link's latency, such as
    /// Jamulus's, so the local clock lines up with the remote audio heard here). At most
    /// [`MAX_ALIGN_MS`]. Changing it moves the local Link session, not the session.
    pub align_ms: u32,
}

/// Largest [`RemoteSettings::align_ms`].
pub const MAX_ALIGN_MS: u32 = 2_000;

impl RemoteSettings {
    /// What is wrong with these settings as typed, in words (no name lookups: a server that
    /// cannot be found is reported by the session when it starts). Empty code: nothing to
    /// check, the session is off.
    pub fn check(&self) -> Result<(), String> {
        if self.code.trim().is_empty() {
            return Ok(());
        }
        crate::proto::remote::code::SessionCode::parse(&self.code)
            .map_err(|e| format!("session code: {e}"))?;
        if self.broker.trim().is_empty() {
            return Err(
                "a remote session meets through an MQTT broker: set one (host:port)".into(),
            );
        }
        for (what, text) in [
            ("broker", &self.broker),
            ("STUN server", &self.stun),
            ("TURN server", &self.turn),
        ] {
            if !text.is_empty() && !is_host_port(text) {
                return Err(format!("{what} {text:?}: write it as host:port"));
            }
        }
        if !self.turn.is_empty()
            && self.turn_secret.is_empty()
            && (self.turn_user.is_empty() || self.turn_pass.is_empty())
        {
            return Err("the TURN server needs a user and password, or its shared secret".into());
        }
        if self.align_ms > MAX_ALIGN_MS {
            return Err(format!(
                "alignment {} ms: at most {MAX_ALIGN_MS} ms",
                self.align_ms
            ));
        }
        Ok(())
    }
}

/// `host:port` with a host and a port in 1–65535 (IPv6 hosts in brackets).
fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
    })
}

/// One controller address driving one parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OscMapping {
    /// The controller's address (an OSC pattern is allowed: `/1/fader*`).
    pub address: String,
    /// Which argument of the message carries the value (an XY pad sends two).
    pub arg: usize,
    /// Parameter id (`mac_1`).
    pub param: String,
    /// The controller's value range (TouchOSC: 0..1).
    pub input: [f64; 2],
    /// The part of the parameter's range it covers, normalized (reversed = inverted).
    pub output: [f64; 2],
    /// Response curve: the 0..1 position is raised to this power (1 = linear, 2 = finer
    /// control at the low end).
    pub curve: f64,
}

impl Default for OscMapping {
    fn default() -> Self {
        Self {
            address: String::new(),
            arg: 0,
            param: String::new(),
            input: [0.0, 1.0],
            output: [0.0, 1.0],
            curve: 1.0,
        }
    }
}

impl OscMapping {
    /// The parameter's normalized value for a controller value (clamped to the ranges).
    pub fn to_normalized(&self, value: f64) -> f64 {
        let [i0, i1] = self.input;
        let [o0, o1] = self.output;
        let x = if i1 == i0 {
            0.0
        } else {
            ((value - i0) / (i1 - i0)).clamp(0.0, 1.0)
        };
        let curve = if self.curve.is_finite() && self.curve > 0.0 {
            self.curve
        } else {
            1.0
        };
        (o0 + x.powf(curve) * (o1 - o0)).clamp(0.0, 1.0)
    }

    /// The controller value that shows a parameter's normalized value (for feedback, so the
    /// controller's fader follows).
    pub fn to_controller(&self, normalized: f64) -> f64 {
        let [i0, i1] = self.input;
        let [o0, o1] = self.output;
        let y = if o1 == o0 {
            0.0
        } else {
            ((normalized - o0) / (o1 - o0)).clamp(0.0, 1.0)
        };
        let curve = if self.curve.is_finite() && self.curve > 0.0 {
            self.curve
        } else {
            1.0
        };
        i0 + y.powf(1.0 / curve) * (i1 - i0)
    }
}

/// A set of mappings for a controller layout, as shipped in `presets/osc/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OscPreset {
    /// What it is for.
    pub name: String,
    /// What goes where, for people.
    #[serde(default)]
    pub description: String,
    /// The mappings.
    pub mappings: Vec<OscMapping>,
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
    /// Align to the measured latency: send this peer's clock earlier by its measured one-way
    /// delay (half the best recent CK round trip, at most [`MAX_PEER_ALIGN_MS`]), so it plays
    /// on the beat rather than one path delay late (a peer across the internet). `offset_ms`
    /// adds to it.
    pub align: bool,
}

/// The most an aligned peer is sent early for its latency, ms: a round trip of 500 ms is
/// already no musical connection, and a peer that delays its CK answers must not make us
/// predict the clock further ahead than this.
pub const MAX_PEER_ALIGN_MS: f64 = 250.0;

impl Default for NetSettings {
    fn default() -> Self {
        Self {
            session_name: "Lockstep".into(),
            rtp_midi_port: DEFAULT_RTP_MIDI_PORT,
            osc_port: DEFAULT_OSC_PORT,
            peers: Vec::new(),
            rtp_midi_access: AccessMode::Anyone,
            rtp_midi_journal: true,
            rtp_midi_max_guests: DEFAULT_MAX_GUESTS,
            mdns: true,
            osc_mappings: Vec::new(),
            oscquery_lan: false,
            osc_allow: Vec::new(),
            osc_expose: Vec::new(),
            osc_rate_limit: DEFAULT_OSC_RATE_LIMIT,
            link_interface: String::new(),
            remote: RemoteSettings::default(),
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
            align: false,
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
    fn shipped_osc_presets_parse_and_map_known_parameters() {
        let preset: OscPreset =
            serde_json::from_str(include_str!("../../presets/osc/touchosc-simple.json"))
                .expect("presets/osc/touchosc-simple.json is a valid OscPreset");
        assert!(preset.mappings.len() >= 16);
        let known = |p: &str| {
            [
                "clk_on", "clk_ofs", "clk_tr", "rtp_on", "osc_on", "osc_fb", "lnk_md", "lnk_q",
                "lnk_ss",
            ]
            .contains(&p)
                || p.strip_prefix("mac_")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| (1..=MACRO_COUNT).contains(&n))
        };
        for m in &preset.mappings {
            assert!(known(&m.param), "{m:?}");
            assert!(m.address.starts_with('/'), "{m:?}");
        }
        // The Open Stage Control session addresses Lockstep's own parameters.
        let session: serde_json::Value = serde_json::from_str(include_str!(
            "../../presets/osc/open-stage-control-lockstep.json"
        ))
        .expect("valid JSON");
        let widgets = session["content"]["widgets"][0]["widgets"]
            .as_array()
            .expect("widgets");
        for w in widgets {
            let address = w["address"].as_str().expect("address");
            let id = address.strip_prefix("/lockstep/param/").expect("ours");
            assert!(known(id), "{address}");
        }
        assert_eq!(widgets.len(), 8 + MACRO_COUNT);
    }

    #[test]
    fn mapping_ranges_and_curves_round_trip() {
        let m = OscMapping {
            input: [0.0, 127.0],
            output: [1.0, 0.5],
            curve: 2.0,
            ..OscMapping::default()
        };
        assert_eq!(m.to_normalized(0.0), 1.0);
        assert_eq!(m.to_normalized(127.0), 0.5);
        assert!((m.to_normalized(63.5) - 0.875).abs() < 1e-12);
        assert_eq!(m.to_normalized(500.0), 0.5, "clamped");
        for v in [0.0, 10.0, 63.5, 127.0] {
            assert!(
                (m.to_controller(m.to_normalized(v)) - v).abs() < 1e-9,
                "{v}"
            );
        }
    }

    #[test]
    fn old_state_without_new_fields_loads_with_defaults() {
        let loaded: NetSettings = serde_json::from_str(r#"{"osc_port": 7000}"#).expect("valid");
        assert_eq!(loaded.osc_port, 7000);
        assert_eq!(loaded.rtp_midi_port, DEFAULT_RTP_MIDI_PORT);
        assert_eq!(loaded.macro_names.len(), MACRO_COUNT);
    }

    #[test]
    fn remote_settings_say_what_is_wrong_before_they_are_applied() {
        let good = RemoteSettings {
            code: "4817-7KQ3-M2XP-9FTR-HW4D".into(),
            broker: "broker.example:1883".into(),
            stun: "stun.example:3478".into(),
            turn: "198.51.100.2:3478".into(),
            turn_secret: "s3cret".into(),
            ..RemoteSettings::default()
        };
        assert_eq!(good.check(), Ok(()));
        assert_eq!(
            RemoteSettings::default().check(),
            Ok(()),
            "off: nothing to check"
        );
        let with = |f: fn(&mut RemoteSettings)| {
            let mut s = good.clone();
            f(&mut s);
            s.check().expect_err("refused")
        };
        assert!(with(|s| s.code = "4817-hello".into()).starts_with("session code:"));
        assert!(with(|s| s.broker.clear()).contains("broker"));
        assert!(with(|s| s.broker = "broker.example".into()).contains("host:port"));
        assert!(with(|s| s.stun = "stun.example:0".into()).contains("STUN"));
        assert!(with(|s| s.turn = "fe80::1:3478".into()).contains("TURN server"));
        assert!(
            with(|s| {
                s.turn_secret.clear();
                s.turn_user = "studio".into();
            })
            .contains("user and password")
        );
        assert!(with(|s| s.align_ms = MAX_ALIGN_MS + 1).contains("at most"));
        let mut v6 = good.clone();
        v6.stun = "[2001:db8::1]:3478".into();
        assert_eq!(v6.check(), Ok(()));
    }
}
