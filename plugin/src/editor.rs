//! The editor (nice-plug-egui): one glance tells who is in sync, how tightly, and what went
//! wrong; the network settings; the event log.
//!
//! Data: the worker's status snapshot (`lockstep_net::worker::status`, the worker's own
//! mutexes, never the audio thread's) and its event log, taken at most ten times a second and
//! only while the window is open; nothing is computed for a closed editor. The pages are drawn
//! by [`draw`] from a [`Model`] (what to show) and a [`Panel`] (what the user is editing):
//! pure egui code, so the frame-cost bench and the tests draw it without a window. What the
//! user changes comes back as [`Action`]s that [`EditorApp`] applies (parameters through the
//! host's gesture API, settings into the instance's watched settings, which the worker applies
//! at once and the project saves).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use egui::{Color32, RichText};
use lockstep_net::log::{LogEntry, Source, format_line};
use lockstep_net::proto::remote::code::SessionCode;
use lockstep_net::settings::{AccessMode, MAX_ALIGN_MS, NetSettings, OscMapping, PeerSettings};
use lockstep_net::view::{Health, Overview};
use nice_plug::context::gui::GuiContext;
use nice_plug::editor::dpi::LogicalSize;
use nice_plug::prelude::*;
use nice_plug_egui::{EguiEditorState, EguiNiceSettings, NiceEguiApp};

use crate::params::{LinkMode, LockstepParams};

/// The editor's default size, logical pixels.
pub const DEFAULT_SIZE: (f32, f32) = (760.0, 560.0);
/// How often the status is taken while the editor is open.
pub const REFRESH: Duration = Duration::from_millis(100);

/// Which page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tab {
    /// Status at a glance.
    #[default]
    Status,
    /// Network settings.
    Settings,
    /// Event log.
    Log,
}

/// What the pages show.
#[derive(Debug, Clone)]
pub struct Model {
    /// The status page.
    pub overview: Overview,
    /// The event log, oldest first.
    pub log: Vec<LogEntry>,
    /// Log entries dropped for space.
    pub log_dropped: u64,
    /// AppleMIDI sessions found over mDNS: (name, host or address, port).
    pub found: Vec<(String, String, u16)>,
    /// Link Mode (0 Off, 1 Lead, 2 Follow) and quantum, as the parameters have them.
    pub link_mode: u8,
    /// Link quantum, beats.
    pub quantum: i32,
    /// OSC messages per second, over the last refresh.
    pub osc_rate: f64,
    /// The parameters OSC learn can bind (id, name).
    pub params: Vec<(String, String)>,
    /// The switches remote control may set only when the user opens them (id, name).
    pub switches: Vec<(String, String)>,
    /// The instance's settings as they are now.
    pub settings: NetSettings,
}

/// What the user is editing.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// The page shown.
    pub tab: Tab,
    /// Settings being edited (None: not started; taken from the model).
    pub draft: Option<NetSettings>,
    /// Peer to add: `[name@]host:port`.
    pub new_peer: String,
    /// Why the last add failed.
    pub new_peer_error: Option<String>,
    /// Allow-list as text (comma separated).
    pub allow_text: Option<String>,
    /// OSC learn: the parameter id waiting for an address, and the last message seen when it
    /// started (the next different one binds).
    pub learn: Option<(String, Option<String>)>,
    /// The parameter OSC learn binds.
    pub learn_param: String,
    /// Log sources shown (empty = all).
    pub filter: BTreeSet<Source>,
    /// What the last export said.
    pub export_note: Option<String>,
    /// Show the session code and TURN secrets as typed (hidden by default: a screen share
    /// must not give the session away).
    pub show_secrets: bool,
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set Link Mode (0 Off, 1 Lead, 2 Follow).
    LinkMode(u8),
    /// Set the Link quantum.
    Quantum(i32),
    /// Use these settings now.
    Apply(Box<NetSettings>),
    /// Write the log (these sources) to a file.
    ExportLog(BTreeSet<Source>),
}

fn colour(h: Health) -> Color32 {
    match h {
        Health::Good => Color32::from_rgb(60, 180, 90),
        Health::Degraded => Color32::from_rgb(230, 160, 30),
        Health::Lost => Color32::from_rgb(220, 60, 60),
        Health::Idle => Color32::from_gray(150),
    }
}

/// A health mark: coloured symbol plus the words, never colour alone.
fn mark(ui: &mut egui::Ui, h: Health, words: &str) {
    ui.label(RichText::new(format!("{} {words}", h.symbol())).color(colour(h)));
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2} ms"))
}

/// Draw the editor; returns what the user asked for.
pub fn draw(ui: &mut egui::Ui, panel: &mut Panel, model: &Model) -> Vec<Action> {
    let mut actions = Vec::new();
    ui.horizontal(|ui| {
        ui.heading("Lockstep");
        mark(
            ui,
            model.overview.overall,
            match model.overview.overall {
                Health::Good => "all in sync",
                Health::Degraded => "something needs attention",
                Health::Lost => "something is lost",
                Health::Idle => "idle",
            },
        );
    });
    ui.horizontal(|ui| {
        ui.selectable_value(&mut panel.tab, Tab::Status, "Status");
        ui.selectable_value(&mut panel.tab, Tab::Settings, "Settings");
        let log = format!("Log ({})", model.log.len());
        ui.selectable_value(&mut panel.tab, Tab::Log, log);
    });
    ui.separator();
    match panel.tab {
        Tab::Status => status_page(ui, model),
        Tab::Settings => settings_page(ui, panel, model, &mut actions),
        Tab::Log => log_page(ui, panel, model, &mut actions),
    }
    actions
}

fn status_page(ui: &mut egui::Ui, model: &Model) {
    let o = &model.overview;
    let t = &o.transport;
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.horizontal(|ui| {
            mark(ui, t.health, &t.state);
            ui.separator();
            ui.label(
                t.tempo
                    .map_or("— BPM".to_owned(), |b| format!("{b:.2} BPM")),
            );
            ui.separator();
            ui.label(t.position.as_deref().unwrap_or("—"));
            ui.separator();
            ui.label(t.time_signature.as_deref().unwrap_or("—"));
            ui.separator();
            ui.label(format!("clock from: {}", t.clock_source));
        });
        for alert in &o.alerts {
            mark(ui, Health::Degraded, alert);
        }
        ui.add_space(6.0);
        ui.strong("Destinations");
        if o.peers.is_empty() {
            ui.label("No RTP-MIDI peers: add one under Settings, or invite Lockstep from a peer.");
        } else {
            egui::Grid::new("peers").striped(true).show(ui, |ui| {
                for h in [
                    "state",
                    "name",
                    "address",
                    "protocol",
                    "round trip",
                    "jitter",
                    "lost",
                    "repaired",
                    "sessions",
                    "last error",
                ] {
                    ui.strong(h);
                }
                ui.end_row();
                for p in &o.peers {
                    mark(ui, p.health, &p.state);
                    ui.label(&p.name);
                    ui.label(&p.address);
                    ui.label(&p.protocol);
                    match p.align_ms {
                        Some(early) => ui.label(format!("{}, sent {early:.1} ms early", ms(p.rtt_ms)))
                            .on_hover_text("aligned to the measured latency: its clock is sent half the round trip early, so it plays on the beat"),
                        None => ui.label(ms(p.rtt_ms)),
                    };
                    ui.label(ms(p.jitter_ms));
                    ui.label(p.sent.to_string());
                    ui.label(p.received.to_string());
                    ui.label(p.lost.to_string());
                    ui.label(p.repaired.to_string());
                    ui.label(p.connects.to_string());
                    ui.label(p.last_error.as_deref().unwrap_or(""));
                    ui.end_row();
                }
            });
        }
        ui.add_space(6.0);
        ui.strong("Ableton Link");
        match &o.link {
            None => {
                ui.label("Link Mode is Off.");
            }
            Some(l) => {
                ui.horizontal(|ui| {
                    mark(ui, l.health, &l.state);
                    ui.separator();
                    ui.label(format!("mode {}", l.mode));
                    ui.separator();
                    ui.label(format!("{:.2} BPM", l.tempo));
                    ui.separator();
                    ui.label(format!("phase {:.2} / {}", l.phase, l.quantum));
                    ui.separator();
                    ui.label(format!("our offset {}", ms(l.offset_ms)));
                });
            }
        }
        ui.add_space(6.0);
        ui.strong("Remote session");
        match &o.remote {
            None => {
                ui.label("No remote session (run the headless runner with --remote, or set a session code in the saved settings).");
            }
            Some(r) => {
                ui.horizontal(|ui| {
                    mark(ui, r.health, &r.state);
                    ui.separator();
                    ui.label(format!("room {}", r.room));
                });
                if let Some(grid) = &r.grid {
                    ui.label(grid);
                }
                if !r.studios.is_empty() {
                    egui::Grid::new("studios").striped(true).show(ui, |ui| {
                        for h in ["studio", "path", "round trip", "clock offset (± at most)"] {
                            ui.strong(h);
                        }
                        ui.end_row();
                        for s in &r.studios {
                            mark(ui, s.health, &s.id);
                            ui.label(&s.path);
                            ui.label(ms(s.rtt_ms));
                            ui.label(s.offset_ms.map_or_else(
                                || "—".to_owned(),
                                |(o, b)| format!("{o:+.2} ms ± {b:.2} ms"),
                            ));
                            ui.end_row();
                        }
                    });
                }
            }
        }
        ui.add_space(6.0);
        ui.strong("OSC");
        match &o.osc {
            None => {
                ui.label("OSC is not running.");
            }
            Some(s) => {
                ui.horizontal(|ui| {
                    mark(ui, s.health, &s.state);
                    ui.separator();
                    ui.label(format!("listening on {}", s.listen));
                    ui.separator();
                    ui.label(format!("{:.0} messages/s", model.osc_rate));
                    ui.separator();
                    ui.label(format!("refused {}", s.refused));
                    ui.separator();
                    ui.label(format!("malformed {}", s.malformed));
                });
                if !s.controllers.is_empty() {
                    ui.label(format!("controllers: {}", s.controllers.join(", ")));
                }
                for m in s.last_messages.iter().rev().take(4) {
                    ui.monospace(m);
                }
            }
        }
    });
}

/// `[name@]host:port` → a peer.
pub fn parse_peer(text: &str) -> Result<PeerSettings, String> {
    let text = text.trim();
    let (name, rest) = text.split_once('@').unwrap_or(("", text));
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port (1..65535)"))?;
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    Ok(PeerSettings {
        name: if name.is_empty() { host } else { name }.to_owned(),
        host: host.to_owned(),
        port,
        ..PeerSettings::default()
    })
}

fn settings_page(ui: &mut egui::Ui, panel: &mut Panel, model: &Model, actions: &mut Vec<Action>) {
    let mut draft = panel.draft.take().unwrap_or_else(|| model.settings.clone());
    let draft = &mut draft;
    let mut revert = false;
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.strong("Ableton Link");
        ui.horizontal(|ui| {
            let mut mode = model.link_mode;
            for (i, name) in ["Off", "Lead (the DAW leads)", "Follow"].iter().enumerate() {
                ui.radio_value(&mut mode, i as u8, *name);
            }
            if mode != model.link_mode {
                actions.push(Action::LinkMode(mode));
            }
            let mut q = model.quantum;
            ui.add(
                egui::DragValue::new(&mut q)
                    .range(1..=16)
                    .prefix("quantum "),
            );
            if q != model.quantum {
                actions.push(Action::Quantum(q));
            }
            ui.label("interface");
            ui.add(egui::TextEdit::singleline(&mut draft.link_interface).desired_width(90.0))
                .on_hover_text(
                    "names (eth0) or IPv4 addresses, comma separated, or all; empty = the \
                     system's route",
                );
        });
        ui.add_space(6.0);
        ui.strong("RTP-MIDI peers");
        let mut remove = None;
        egui::Grid::new("peer_settings")
            .striped(true)
            .show(ui, |ui| {
                for h in [
                    "on",
                    "name",
                    "host",
                    "port",
                    "offset ms",
                    "journal",
                    "align",
                    "",
                ] {
                    ui.strong(h);
                }
                ui.end_row();
                for (i, p) in draft.peers.iter_mut().enumerate() {
                    ui.checkbox(&mut p.enabled, "");
                    ui.add(egui::TextEdit::singleline(&mut p.name).desired_width(110.0));
                    ui.add(egui::TextEdit::singleline(&mut p.host).desired_width(130.0));
                    ui.add(egui::DragValue::new(&mut p.port).range(1..=65535));
                    ui.add(egui::DragValue::new(&mut p.offset_ms).range(-250.0..=250.0));
                    ui.checkbox(&mut p.journal, "");
                    ui.checkbox(&mut p.align, "").on_hover_text(
                        "align to the measured latency: send this peer's clock half the \
                         measured round trip early (a peer across the internet plays on the \
                         beat, not one path delay late); the offset adds to it",
                    );
                    if ui.button("remove").clicked() {
                        remove = Some(i);
                    }
                    ui.end_row();
                }
            });
        if let Some(i) = remove {
            draft.peers.remove(i);
        }
        ui.horizontal(|ui| {
            ui.label("add");
            ui.add(
                egui::TextEdit::singleline(&mut panel.new_peer)
                    .hint_text("name@host:5004")
                    .desired_width(200.0),
            );
            if ui.button("add peer").clicked() {
                match parse_peer(&panel.new_peer) {
                    Ok(p) => {
                        draft.peers.push(p);
                        panel.new_peer.clear();
                        panel.new_peer_error = None;
                    }
                    Err(e) => panel.new_peer_error = Some(e),
                }
            }
        });
        if let Some(e) = &panel.new_peer_error {
            mark(ui, Health::Lost, e);
        }
        if !model.found.is_empty() {
            ui.label("found on the network (mDNS):");
            for (name, host, port) in &model.found {
                ui.horizontal(|ui| {
                    ui.label(format!("{name} — {host}:{port}"));
                    let known = draft
                        .peers
                        .iter()
                        .any(|p| p.host == *host && p.port == *port);
                    if !known && ui.button("add").clicked() {
                        draft.peers.push(PeerSettings {
                            name: name.clone(),
                            host: host.clone(),
                            port: *port,
                            ..PeerSettings::default()
                        });
                    }
                });
            }
        }
        ui.horizontal(|ui| {
            ui.label("who may invite Lockstep");
            ui.radio_value(&mut draft.rtp_midi_access, AccessMode::Anyone, "anyone");
            ui.radio_value(
                &mut draft.rtp_midi_access,
                AccessMode::Directory,
                "peers listed above",
            );
            ui.radio_value(&mut draft.rtp_midi_access, AccessMode::Nobody, "nobody");
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut draft.rtp_midi_journal, "recovery journal to guests");
            ui.checkbox(&mut draft.mdns, "advertise and browse over mDNS");
            ui.label("port");
            ui.add(egui::DragValue::new(&mut draft.rtp_midi_port).range(1..=65534));
        });
        ui.add_space(6.0);
        ui.strong("OSC");
        ui.horizontal(|ui| {
            ui.label("port");
            ui.add(egui::DragValue::new(&mut draft.osc_port).range(1..=65535));
            ui.checkbox(&mut draft.oscquery_lan, "OSCQuery on the LAN");
        });
        let allow = panel
            .allow_text
            .get_or_insert_with(|| draft.osc_allow.join(", "));
        ui.horizontal(|ui| {
            ui.label("allowed senders");
            ui.add(
                egui::TextEdit::singleline(allow)
                    .hint_text("empty = loopback and private networks; 192.168.1.0/24, 10.0.0.7")
                    .desired_width(360.0),
            );
        });
        draft.osc_allow = allow
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        // Remote control sets macros and musical settings; switches only when opened here;
        // OSC Control itself never.
        ui.horizontal_wrapped(|ui| {
            ui.label("OSC may also switch");
            for (id, name) in &model.switches {
                let mut open = draft.osc_expose.contains(id);
                if ui.checkbox(&mut open, name).changed() {
                    draft.osc_expose.retain(|x| x != id);
                    if open {
                        draft.osc_expose.push(id.clone());
                    }
                }
            }
            ui.label("(OSC Control: never)");
        });
        ui.label("mappings (controller address → parameter):");
        let mut remove = None;
        for (i, m) in draft.osc_mappings.iter_mut().enumerate() {
            ui.horizontal(|ui| {
                ui.add(egui::TextEdit::singleline(&mut m.address).desired_width(160.0));
                ui.label("→");
                ui.add(egui::TextEdit::singleline(&mut m.param).desired_width(80.0));
                if ui.button("remove").clicked() {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            draft.osc_mappings.remove(i);
        }
        // OSC learn: the next address that arrives binds to the chosen parameter.
        let latest = model
            .overview
            .osc
            .as_ref()
            .and_then(|o| o.last_messages.last().cloned());
        ui.horizontal(|ui| {
            egui::ComboBox::from_id_salt("learn_param")
                .selected_text(if panel.learn_param.is_empty() {
                    "parameter…"
                } else {
                    panel.learn_param.as_str()
                })
                .show_ui(ui, |ui| {
                    for (id, name) in &model.params {
                        ui.selectable_value(&mut panel.learn_param, id.clone(), name);
                    }
                });
            match &panel.learn {
                None => {
                    let can = !panel.learn_param.is_empty();
                    if ui
                        .add_enabled(can, egui::Button::new("OSC learn"))
                        .clicked()
                    {
                        panel.learn = Some((panel.learn_param.clone(), latest.clone()));
                    }
                }
                Some((param, _)) => {
                    ui.label(format!("move a control on your controller for {param}…"));
                    if ui.button("cancel").clicked() {
                        panel.learn = None;
                    }
                }
            }
        });
        if let Some((param, before)) = panel.learn.clone()
            && let Some(address) = learned_address(before.as_deref(), latest.as_deref())
        {
            draft.osc_mappings.push(OscMapping {
                address,
                param,
                ..OscMapping::default()
            });
            panel.learn = None;
        }
        ui.add_space(6.0);
        remote_settings(ui, panel, draft);
        let problem = draft.remote.check().err();
        if let Some(problem) = &problem {
            mark(ui, Health::Lost, problem);
        }
        ui.add_space(8.0);
        ui.horizontal(|ui| {
            let changed = *draft != model.settings;
            if ui
                .add_enabled(
                    changed && problem.is_none(),
                    egui::Button::new("apply (saved with the project)"),
                )
                .clicked()
            {
                actions.push(Action::Apply(Box::new(draft.clone())));
            }
            if ui
                .add_enabled(changed, egui::Button::new("revert"))
                .clicked()
            {
                revert = true;
            }
        });
    });
    if revert {
        panel.draft = None;
        panel.allow_text = None;
    } else {
        panel.draft = Some(draft.clone());
    }
}

/// The remote session's settings: the code every studio types, the servers, the alignment.
fn remote_settings(ui: &mut egui::Ui, panel: &mut Panel, draft: &mut NetSettings) {
    let r = &mut draft.remote;
    let hidden = !panel.show_secrets;
    ui.strong("Remote studios");
    ui.horizontal(|ui| {
        ui.label("session code");
        ui.add(
            egui::TextEdit::singleline(&mut r.code)
                .password(hidden)
                .hint_text("the same at every studio; empty = off")
                .desired_width(230.0),
        );
        if ui
            .button("new code")
            .on_hover_text("a fresh random code to read to the other studios")
            .clicked()
            && let Ok(code) = SessionCode::generate()
        {
            r.code = code.to_string();
            panel.show_secrets = true;
        }
        ui.checkbox(&mut panel.show_secrets, "show");
    });
    egui::Grid::new("remote_servers").show(ui, |ui| {
        for (label, text, hint) in [
            ("MQTT broker", &mut r.broker, "host:1883"),
            ("STUN", &mut r.stun, "host:3478 (optional)"),
            ("TURN", &mut r.turn, "host:3478 (optional)"),
        ] {
            ui.label(label);
            ui.add(
                egui::TextEdit::singleline(text)
                    .hint_text(hint)
                    .desired_width(200.0),
            );
            ui.end_row();
        }
        ui.label("TURN user / password");
        ui.horizontal(|ui| {
            ui.add(egui::TextEdit::singleline(&mut r.turn_user).desired_width(95.0));
            ui.add(
                egui::TextEdit::singleline(&mut r.turn_pass)
                    .password(hidden)
                    .desired_width(95.0),
            );
        });
        ui.end_row();
        ui.label("or TURN shared secret");
        ui.add(
            egui::TextEdit::singleline(&mut r.turn_secret)
                .password(hidden)
                .desired_width(200.0),
        );
        ui.end_row();
    });
    ui.horizontal(|ui| {
        ui.label("play the grid later here by");
        ui.add(
            egui::DragValue::new(&mut r.align_ms)
                .range(0..=MAX_ALIGN_MS)
                .suffix(" ms"),
        )
        .on_hover_text(
            "0 = beat N at the same moment in every studio; your audio link's latency \
             (Jamulus, …) = the local clock lines up with the remote music you hear",
        );
    });
}

/// The address OSC learn binds: the newest received message if it differs from the one seen
/// when learning started and is not Lockstep's own address space.
pub fn learned_address(before: Option<&str>, latest: Option<&str>) -> Option<String> {
    let latest = latest?;
    if Some(latest) == before {
        return None;
    }
    let address = latest.split_whitespace().next()?;
    (address.starts_with('/') && !address.starts_with("/lockstep/")).then(|| address.to_owned())
}

fn log_page(ui: &mut egui::Ui, panel: &mut Panel, model: &Model, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        ui.label("show");
        for s in Source::ALL {
            let mut on = panel.filter.is_empty() || panel.filter.contains(&s);
            if ui.checkbox(&mut on, s.label()).changed() {
                if panel.filter.is_empty() {
                    panel.filter = Source::ALL.into_iter().collect();
                }
                if on {
                    panel.filter.insert(s);
                } else {
                    panel.filter.remove(&s);
                }
                if panel.filter.len() == Source::ALL.len() {
                    panel.filter.clear();
                }
            }
        }
        if ui.button("export…").clicked() {
            actions.push(Action::ExportLog(panel.filter.clone()));
        }
    });
    if let Some(note) = &panel.export_note {
        ui.label(note);
    }
    if model.log_dropped > 0 {
        ui.label(format!("({} older entries dropped)", model.log_dropped));
    }
    let shown: Vec<&LogEntry> = lockstep_net::log::filter(&model.log, &panel.filter).collect();
    let row = ui.text_style_height(&egui::TextStyle::Monospace);
    // Only the visible rows are laid out: 1,000 entries cost what a screenful does.
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .show_rows(ui, row, shown.len(), |ui, range| {
            for e in &shown[range] {
                ui.label(
                    RichText::new(format_line(e))
                        .monospace()
                        .color(colour(e.health)),
                );
            }
        });
}

/// The editor's window state and data, shared with nice-plug-egui.
pub struct EditorApp {
    params: Arc<LockstepParams>,
    /// The worker's id of this instance (0 while not active).
    instance: Arc<AtomicU64>,
    gui: Option<GuiContext>,
    panel: Panel,
    model: Option<Model>,
    fetched: Option<Instant>,
    log_generation: u64,
    log: (Vec<LogEntry>, u64),
    osc_seen: Option<(Instant, u64)>,
}

impl EditorApp {
    /// An editor for the instance with these parameters; `instance` holds its worker id.
    pub fn new(params: Arc<LockstepParams>, instance: Arc<AtomicU64>) -> Self {
        Self {
            params,
            instance,
            gui: None,
            panel: Panel::default(),
            model: None,
            fetched: None,
            log_generation: 0,
            log: (Vec::new(), 0),
            osc_seen: None,
        }
    }

    /// Take a fresh status (at most every [`REFRESH`]).
    fn refresh(&mut self) {
        if self.fetched.is_some_and(|t| t.elapsed() < REFRESH) && self.model.is_some() {
            return;
        }
        let now = Instant::now();
        self.fetched = Some(now);
        let status = lockstep_net::worker::status();
        let id = self.instance.load(Ordering::Relaxed);
        let overview = lockstep_net::view::overview(&status, (id != 0).then_some(id));
        if let Some((generation, entries, dropped)) =
            lockstep_net::worker::event_log_since(self.log_generation)
        {
            self.log_generation = generation;
            self.log = (entries, dropped);
        }
        let received = status.osc.as_ref().map_or(0, |o| o.received);
        let osc_rate = match self.osc_seen {
            Some((at, n)) => {
                let dt = now.duration_since(at).as_secs_f64();
                if dt > 0.0 {
                    received.saturating_sub(n) as f64 / dt
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.osc_seen = Some((now, received));
        let found = status
            .discovery
            .found
            .iter()
            .map(|f| {
                let host = f
                    .addresses
                    .first()
                    .cloned()
                    .unwrap_or_else(|| f.host.clone());
                (f.name.clone(), host, f.port)
            })
            .collect();
        self.model = Some(Model {
            overview,
            log: self.log.0.clone(),
            log_dropped: self.log.1,
            found,
            link_mode: match self.params.link_mode.value() {
                LinkMode::Off => 0,
                LinkMode::Lead => 1,
                LinkMode::Follow => 2,
            },
            quantum: self.params.link_quantum.value(),
            osc_rate,
            params: self
                .params
                .specs()
                .into_iter()
                .map(|s| (s.id.clone(), s.name.clone()))
                .collect(),
            switches: self
                .params
                .specs()
                .into_iter()
                .filter(|s| s.remote == lockstep_net::params::Remote::OptIn)
                .map(|s| (s.id, s.name))
                .collect(),
            settings: self.params.net.0.get(),
        });
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::LinkMode(m) => {
                if let Some(gui) = &self.gui {
                    let setter = gui.param_setter();
                    let mode = match m {
                        0 => LinkMode::Off,
                        1 => LinkMode::Lead,
                        _ => LinkMode::Follow,
                    };
                    setter.begin_set_parameter(&self.params.link_mode);
                    setter.set_parameter(&self.params.link_mode, mode);
                    setter.end_set_parameter(&self.params.link_mode);
                }
            }
            Action::Quantum(q) => {
                if let Some(gui) = &self.gui {
                    let setter = gui.param_setter();
                    setter.begin_set_parameter(&self.params.link_quantum);
                    setter.set_parameter(&self.params.link_quantum, q);
                    setter.end_set_parameter(&self.params.link_quantum);
                }
            }
            Action::Apply(settings) => {
                self.params.net.0.replace(*settings);
                self.panel.draft = None;
                self.panel.allow_text = None;
                self.fetched = None;
            }
            Action::ExportLog(filter) => {
                self.panel.export_note = Some(export_log(&self.log.0, &filter));
            }
        }
    }
}

/// Write the log to `lockstep-log-<unix seconds>.txt` in the home folder (the temporary
/// folder without one); says where, or why not.
fn export_log(entries: &[LogEntry], filter: &BTreeSet<Source>) -> String {
    // HOME on Linux and macOS, USERPROFILE on Windows.
    let dir = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!("lockstep-log-{stamp}.txt"));
    let written = std::fs::File::create(&path)
        .and_then(|mut f| lockstep_net::log::export(entries, filter, &mut f));
    match written {
        Ok(n) => format!("{n} entries written to {}", path.display()),
        Err(e) => format!("could not write {}: {e}", path.display()),
    }
}

impl NiceEguiApp for EditorApp {
    fn build(
        &mut self,
        _egui_ctx: egui::Context,
        nice_gui_ctx: GuiContext,
        _frame: &mut nice_plug_egui::Frame,
    ) -> Result<(), nice_plug_egui::baseview::HandlerError> {
        self.gui = Some(nice_gui_ctx);
        self.fetched = None;
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut nice_plug_egui::Frame) {
        self.refresh();
        let Some(model) = &self.model else {
            return;
        };
        let actions = draw(ui, &mut self.panel, model);
        for action in actions {
            self.apply(action);
        }
        ui.ctx().request_repaint_after(REFRESH);
    }

    fn editor_closed(&mut self) {
        // Nothing is kept alive for a closed editor: no status is taken until it opens again.
        self.gui = None;
        self.model = None;
        self.log = (Vec::new(), 0);
        self.log_generation = 0;
        self.osc_seen = None;
    }
}

/// The editor state (size, scale) for a new instance.
pub fn default_state() -> Arc<EguiEditorState> {
    EguiEditorState::from_size(
        LogicalSize {
            width: DEFAULT_SIZE.0,
            height: DEFAULT_SIZE.1,
        },
        1.0,
    )
}

/// nice-plug-egui's settings for the editor: resizable, with a minimum size.
pub fn settings() -> EguiNiceSettings {
    EguiNiceSettings {
        title: "Lockstep".to_owned(),
        resize_hint: ResizeHint::RESIZABLE.with_min_logical_size(LogicalSize {
            width: 520.0,
            height: 360.0,
        }),
        ..EguiNiceSettings::default()
    }
}

/// A scripted page for the frame-cost bench and tests: `peers` RTP-MIDI destinations (every
/// third one lost, every fifth one slow), Link with one peer, OSC traffic, and `log_lines`
/// log entries.
pub fn demo_model(peers: usize, log_lines: usize) -> Model {
    use lockstep_net::view::{LinkRow, OscRow, PeerRow, RemoteRow, StudioRow, TransportLine};
    let peers = (0..peers)
        .map(|i| {
            let lost = i % 3 == 2;
            let slow = i % 5 == 4;
            PeerRow {
                name: format!("Studio {}", i + 1),
                address: format!("10.0.0.{}:5004", i + 2),
                protocol: "RTP-MIDI".to_owned(),
                state: if lost {
                    "lost"
                } else if slow {
                    "connected, slow link"
                } else {
                    "connected"
                }
                .to_owned(),
                health: if lost {
                    Health::Lost
                } else if slow {
                    Health::Degraded
                } else {
                    Health::Good
                },
                rtt_ms: (!lost).then_some(if slow { 31.5 } else { 1.2 + i as f64 * 0.1 }),
                // The slow ones are across the internet, aligned to their latency.
                align_ms: (slow && !lost).then_some(15.75),
                sent: if lost { 0 } else { 4_800 + i as u64 },
                received: if lost { 0 } else { 12 },
                jitter_ms: (!lost).then_some(0.3),
                lost: i as u64,
                repaired: i as u64 / 2,
                connects: 1 + i as u64 % 3,
                last_error: lost.then(|| "no CK answer for 10 s".to_owned()),
            }
        })
        .collect::<Vec<_>>();
    let log = (0..log_lines)
        .map(|i| LogEntry {
            at_ms: i as u64 * 250,
            source: Source::ALL[i % Source::ALL.len()],
            health: [Health::Good, Health::Idle, Health::Degraded, Health::Lost][i % 4],
            text: format!("event {i}: Studio {} changed state", i % 16 + 1),
        })
        .collect();
    let overall = peers
        .iter()
        .map(|p| p.health)
        .fold(Health::Good, Health::worst);
    Model {
        overview: Overview {
            transport: TransportLine {
                state: "Playing".into(),
                tempo: Some(124.0),
                position: Some("17.2.5".into()),
                time_signature: Some("4/4".into()),
                clock_source: "DAW".into(),
                health: Health::Good,
            },
            peers,
            link: Some(LinkRow {
                mode: "Lead".into(),
                tempo: 124.0,
                peers: 1,
                phase: 2.25,
                quantum: 4.0,
                offset_ms: Some(0.02),
                state: "in a session with 1 peer".into(),
                health: Health::Good,
            }),
            osc: Some(OscRow {
                listen: "UDP+TCP 8000".into(),
                controllers: vec!["192.168.1.20:9000".into()],
                refused: 2,
                malformed: 1,
                received: 1234,
                last_messages: (0..8)
                    .map(|i| format!("/1/fader{} Float(0.{i}) from 192.168.1.20:9000", i % 4 + 1))
                    .collect(),
                state: "listening".into(),
                health: Health::Good,
            }),
            remote: Some(RemoteRow {
                room: "4817".into(),
                state: "1 studio connected".into(),
                studios: vec![StudioRow {
                    id: "5edeaacce5236569".into(),
                    path: "direct".into(),
                    rtt_ms: Some(80.84),
                    offset_ms: Some((27.66, 40.42)),
                    health: Health::Good,
                }],
                grid: Some(
                    "shared grid 130.00 BPM, playing, phase 2.50 / 4, set by studio \
                     5edeaacce5236569"
                        .into(),
                ),
                health: Health::Good,
            }),
            alerts: Vec::new(),
            overall,
        },
        log,
        log_dropped: 0,
        found: vec![("Studio 17".into(), "10.0.0.40".into(), 5004)],
        link_mode: 1,
        quantum: 4,
        osc_rate: 42.0,
        params: vec![("mac_1".into(), "Macro 1".into())],
        switches: vec![("clk_on".into(), "Clock Out".into())],
        settings: NetSettings::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_draws_the_demo_and_the_log_filter_hides_rows() {
        let model = demo_model(16, 1_000);
        let ctx = egui::Context::default();
        for tab in [Tab::Status, Tab::Settings, Tab::Log] {
            let mut panel = Panel {
                tab,
                ..Panel::default()
            };
            let mut out = ctx.run_ui(egui::RawInput::default(), |ui| {
                let actions = draw(ui, &mut panel, &model);
                assert!(actions.is_empty(), "{actions:?}");
            });
            out.textures_delta.clear();
            assert!(!out.shapes.is_empty(), "{tab:?} drew nothing");
        }
        let only: BTreeSet<Source> = [Source::Link].into();
        // The demo log cycles through the sources.
        let links = (0..1_000)
            .filter(|i| Source::ALL[i % Source::ALL.len()] == Source::Link)
            .count();
        assert_eq!(lockstep_net::log::filter(&model.log, &only).count(), links);
    }

    #[test]
    fn peers_parse_from_text_or_say_why_not() {
        let p = parse_peer("Studio B@10.0.0.2:5004").expect("valid");
        assert_eq!(
            (p.name.as_str(), p.host.as_str(), p.port),
            ("Studio B", "10.0.0.2", 5004)
        );
        let p = parse_peer("studio.local:5006").expect("valid");
        assert_eq!((p.name.as_str(), p.port), ("studio.local", 5006));
        assert!(parse_peer("10.0.0.2").unwrap_err().contains("host:port"));
        assert!(parse_peer("x:0").unwrap_err().contains("not a port"));
    }

    #[test]
    fn osc_learn_binds_the_next_foreign_address() {
        let before = Some("/1/fader1 Float(0.5) from 10.0.0.9:9000");
        assert_eq!(learned_address(before, before), None, "nothing new yet");
        assert_eq!(
            learned_address(before, Some("/2/rotary3 Float(0.1) from 10.0.0.9:9000")),
            Some("/2/rotary3".to_owned())
        );
        assert_eq!(
            learned_address(None, Some("/lockstep/dump  from 10.0.0.9:9000")),
            None,
            "our own address space is not a control"
        );
    }
}
