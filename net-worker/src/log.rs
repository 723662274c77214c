//! The event log the editor shows: connects, disconnects, refusals, resyncs, drops and errors,
//! bounded in memory, filterable by source, exportable as text. Never written from the audio
//! thread: the worker derives entries by comparing its status with the previous one
//! ([`Watcher`]), four times a second.

use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::health::Health;
use crate::status::WorkerStatus;

/// Most entries kept; older ones are dropped (counted).
pub const LOG_CAPACITY: usize = 1_000;

/// Where an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// RTP-MIDI sessions.
    RtpMidi,
    /// OSC control.
    Osc,
    /// Ableton Link.
    Link,
    /// The remote session (studios over the internet).
    Remote,
    /// The clock stream and the audio-thread bridge.
    Clock,
    /// The worker itself.
    Worker,
}

impl Source {
    /// Every source, for filter menus.
    pub const ALL: [Source; 6] = [
        Source::RtpMidi,
        Source::Osc,
        Source::Link,
        Source::Remote,
        Source::Clock,
        Source::Worker,
    ];

    /// Its name.
    pub fn label(self) -> &'static str {
        match self {
            Source::RtpMidi => "RTP-MIDI",
            Source::Osc => "OSC",
            Source::Link => "Link",
            Source::Remote => "Remote",
            Source::Clock => "Clock",
            Source::Worker => "Worker",
        }
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Worker uptime when it was noticed, ms.
    pub at_ms: u64,
    /// Source.
    pub source: Source,
    /// How bad.
    pub health: Health,
    /// What happened, in words.
    pub text: String,
}

/// The bounded log.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    entries: VecDeque<LogEntry>,
    /// Entries dropped for space.
    pub dropped: u64,
    /// Bumped on every change, so a reader copies only when something is new.
    pub generation: u64,
}

impl EventLog {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            dropped: 0,
            generation: 0,
        }
    }

    /// Add an entry (dropping the oldest when full).
    pub fn push(&mut self, entry: LogEntry) {
        if self.entries.len() >= LOG_CAPACITY {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(entry);
        self.generation += 1;
    }

    /// Entries oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The entries from the sources in `only` (all when empty).
pub fn filter<'a>(
    entries: &'a [LogEntry],
    only: &'a BTreeSet<Source>,
) -> impl Iterator<Item = &'a LogEntry> + 'a {
    entries
        .iter()
        .filter(move |e| only.is_empty() || only.contains(&e.source))
}

/// One line per entry: `12.345 s  RTP-MIDI  lost  Studio B disconnected: ...`.
pub fn format_line(e: &LogEntry) -> String {
    let state = match e.health {
        Health::Good => "ok",
        Health::Degraded => "warning",
        Health::Lost => "error",
        Health::Idle => "info",
    };
    format!(
        "{:>10.3} s  {:<8}  {:<7}  {}",
        e.at_ms as f64 / 1e3,
        e.source.label(),
        state,
        e.text
    )
}

/// Write the entries (filtered) as text.
pub fn export(
    entries: &[LogEntry],
    only: &BTreeSet<Source>,
    out: &mut impl std::io::Write,
) -> std::io::Result<usize> {
    let mut n = 0;
    writeln!(out, "# Lockstep event log (time = worker uptime)")?;
    for e in filter(entries, only) {
        writeln!(out, "{}", format_line(e))?;
        n += 1;
    }
    Ok(n)
}

/// What the watcher remembers of the last status.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Per instance and peer address: connected.
    peers: BTreeMap<(u64, String), bool>,
    /// Per instance: (refused, malformed, errors, gaps, dropped, send errors).
    counters: BTreeMap<u64, [u64; 5]>,
    errors: BTreeSet<String>,
    osc: [u64; 4],
    osc_errors: BTreeSet<String>,
    link: Option<(u64, usize, Option<String>)>,
    /// The remote session: broker connected, each peer's path (empty: not connected), the
    /// refusal counters, the errors.
    remote: Option<RemoteSeen>,
}

/// What the watcher remembers of the remote session.
#[derive(Debug, Clone, Default)]
struct RemoteSeen {
    broker: bool,
    peers: BTreeMap<String, String>,
    refused: [u64; 4],
    errors: BTreeSet<String>,
    /// The grid's version (generation, author) last logged.
    grid: Option<(u64, String)>,
}

/// Turns successive statuses into log entries.
#[derive(Debug, Default)]
pub struct Watcher {
    seen: Option<Seen>,
}

impl Watcher {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compare `status` with the last one and log what changed.
    pub fn observe(&mut self, status: &WorkerStatus, log: &mut EventLog) {
        let at_ms = status.uptime_ms;
        let mut add = |source, health, text: String| {
            log.push(LogEntry {
                at_ms,
                source,
                health,
                text,
            })
        };
        let first = self.seen.is_none();
        let old = self.seen.take().unwrap_or_default();
        let mut new = Seen::default();
        if first {
            add(
                Source::Worker,
                Health::Idle,
                format!("network worker running ({})", status.scheduling),
            );
        }
        for i in &status.instances {
            let dropped = i.events_dropped_full;
            let mut counters = [0, 0, i.clock_gaps, dropped, 0];
            if let Some(r) = &i.rtpmidi {
                counters[0] = r.refused + r.full;
                counters[1] = r.malformed;
                counters[4] = r.send_errors;
                for p in &r.peers {
                    let key = (i.id, p.address.clone());
                    let name = p.name.clone().unwrap_or_else(|| p.address.clone());
                    let was = old.peers.get(&key).copied();
                    match (was, p.connected) {
                        (Some(false) | None, true) => add(
                            Source::RtpMidi,
                            Health::Good,
                            format!("{name} ({}) connected", p.address),
                        ),
                        (Some(true), false) => add(
                            Source::RtpMidi,
                            Health::Lost,
                            format!(
                                "{name} ({}) disconnected: {}",
                                p.address,
                                p.last_close.as_deref().unwrap_or("no reason given")
                            ),
                        ),
                        (None, false) if p.in_directory => add(
                            Source::RtpMidi,
                            Health::Idle,
                            format!("inviting {name} ({})", p.address),
                        ),
                        _ => {}
                    }
                    new.peers.insert(key, p.connected);
                }
                for e in &r.errors {
                    if !old.errors.contains(e) {
                        add(Source::RtpMidi, Health::Lost, e.clone());
                    }
                    new.errors.insert(e.clone());
                }
            }
            let before = old.counters.get(&i.id).copied().unwrap_or_default();
            let grew = |k: usize| counters[k].saturating_sub(before[k]);
            if grew(0) > 0 {
                add(
                    Source::RtpMidi,
                    Health::Degraded,
                    format!(
                        "refused {} invitation(s) (access mode or every guest slot taken)",
                        grew(0)
                    ),
                );
            }
            if grew(1) > 0 {
                add(
                    Source::RtpMidi,
                    Health::Degraded,
                    format!("{} malformed datagram(s) ignored", grew(1)),
                );
            }
            if grew(2) > 0 {
                add(
                    Source::Clock,
                    Health::Degraded,
                    format!(
                        "clock stream resynchronised {} time(s) after lost messages",
                        grew(2)
                    ),
                );
            }
            if grew(3) > 0 {
                add(
                    Source::Clock,
                    Health::Degraded,
                    format!(
                        "{} event(s) from the audio thread dropped: ring full",
                        grew(3)
                    ),
                );
            }
            if grew(4) > 0 {
                add(
                    Source::RtpMidi,
                    Health::Degraded,
                    format!("{} packet(s) could not be sent", grew(4)),
                );
            }
            new.counters.insert(i.id, counters);
        }
        if let Some(o) = &status.osc {
            new.osc = [
                o.malformed + o.wrong_type + o.out_of_range + o.unknown_address,
                o.refused_source + o.rate_limited + o.too_large + o.disabled,
                o.dropped_full,
                o.late,
            ];
            let words = [
                "OSC message(s) malformed or unusable (answered on /lockstep/error)",
                "OSC message(s) refused (source, rate, size or OSC Control off)",
                "OSC change(s) dropped: the plugin's queue was full",
                "timed OSC bundle(s) arrived late and applied at once",
            ];
            for (k, words) in words.iter().enumerate() {
                let grew = new.osc[k].saturating_sub(old.osc[k]);
                if grew > 0 {
                    add(Source::Osc, Health::Degraded, format!("{grew} {words}"));
                }
            }
            for e in o.errors.iter().chain(&o.mapping_errors) {
                if !old.osc_errors.contains(e) {
                    add(Source::Osc, Health::Lost, e.clone());
                }
                new.osc_errors.insert(e.clone());
            }
        }
        if let Some(l) = &status.link {
            let (joins, peers, error) = (l.joins, l.session_peers, l.error.clone());
            let (old_joins, old_peers, old_error) = old.link.clone().unwrap_or((0, 0, None));
            if joins > old_joins {
                add(
                    Source::Link,
                    Health::Good,
                    format!(
                        "joined the Link session {} at {:.2} BPM",
                        l.session, l.tempo
                    ),
                );
            }
            if peers != old_peers {
                add(
                    Source::Link,
                    Health::Idle,
                    format!("Link session peers: {old_peers} → {peers}"),
                );
            }
            if error.is_some() && error != old_error {
                add(
                    Source::Link,
                    Health::Lost,
                    error.clone().unwrap_or_default(),
                );
            }
            new.link = Some((joins, peers, error));
        }
        if let Some(r) = &status.remote {
            let was = old.remote.clone().unwrap_or_default();
            let mut now = RemoteSeen {
                broker: r.broker_connected,
                ..RemoteSeen::default()
            };
            if now.broker && !was.broker {
                add(
                    Source::Remote,
                    Health::Idle,
                    format!("room {}: connected to the broker {}", r.room, r.broker),
                );
            } else if !now.broker && was.broker {
                add(
                    Source::Remote,
                    Health::Degraded,
                    format!("lost the broker {} (reconnecting)", r.broker),
                );
            }
            for p in &r.peers {
                let path = if p.ice == "connected" {
                    p.path.clone()
                } else {
                    String::new()
                };
                let rtt = p
                    .rtt_ms
                    .map(|r| format!(", round trip {r:.1} ms"))
                    .unwrap_or_default();
                match (was.peers.get(&p.id).map(String::as_str), path.as_str()) {
                    (None, "") => add(
                        Source::Remote,
                        Health::Idle,
                        format!("studio {} found, connecting", p.id),
                    ),
                    (before, now_path) if !now_path.is_empty() && before != Some(now_path) => {
                        add(
                            Source::Remote,
                            Health::Good,
                            format!("studio {} connected ({now_path}, {}{rtt})", p.id, p.pair),
                        );
                    }
                    (Some(before), "") if !before.is_empty() => add(
                        Source::Remote,
                        Health::Lost,
                        format!("studio {}: path lost, looking for another", p.id),
                    ),
                    _ => {}
                }
                now.peers.insert(p.id.clone(), path);
            }
            for id in was.peers.keys() {
                if !now.peers.contains_key(id) {
                    add(Source::Remote, Health::Lost, format!("studio {id} left"));
                }
            }
            let c = &r.counters;
            now.refused = [
                c.rendezvous_forged,
                c.datagrams_forged + c.datagrams_replayed,
                c.rendezvous_full,
                c.broker_dropped,
            ];
            let words = [
                "rendezvous message(s) failed authentication (another session code in this room, or tampering)",
                "datagram(s) refused (forged or replayed)",
                "studio(s) refused: the session is full",
                "broker message(s) dropped: more arrived at once than are queued",
            ];
            for (k, words) in words.iter().enumerate() {
                let grew = now.refused[k].saturating_sub(was.refused[k]);
                if grew > 0 {
                    add(Source::Remote, Health::Degraded, format!("{grew} {words}"));
                }
            }
            for e in &r.errors {
                if !was.errors.contains(e) {
                    add(Source::Remote, Health::Degraded, e.clone());
                }
                now.errors.insert(e.clone());
            }
            // A new version of the shared grid (once studios have met: before, it is only
            // this studio's own Link session; a studio whose own grid won at the meeting
            // logs it then).
            if let Some(g) = &r.grid {
                let version = (g.generation, g.author.clone());
                let met =
                    g.generation > 0 || !g.ours || r.peers.iter().any(|p| p.ice == "connected");
                if met && was.grid.as_ref() != Some(&version) {
                    add(
                        Source::Remote,
                        Health::Good,
                        format!(
                            "shared grid: {:.2} BPM, {}, {}",
                            g.tempo_bpm,
                            if g.playing { "playing" } else { "stopped" },
                            if g.ours {
                                "set here".to_owned()
                            } else {
                                format!("set by studio {}", g.author)
                            }
                        ),
                    );
                }
                if met {
                    now.grid = Some(version);
                }
            }
            new.remote = Some(now);
        }
        self.seen = Some(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::rtpmidi::{PeerReport, RtpMidiStatus};

    fn status(connected: bool, refused: u64) -> WorkerStatus {
        let mut s: WorkerStatus = serde_json::from_value(serde_json::json!({
            "running": true, "thread_name": "lockstep-net", "worker_starts": 1,
            "uptime_ms": 1500, "instances": [{
                "id": 1, "events_pushed": 0, "events_dropped_full": 0, "events_drained": 0,
                "blocks": 0, "last_transport": null, "clock_state": "Idle",
                "clock_messages": 0, "clock_ticks": 0, "clock_gaps": 0, "clock_lost": 0,
                "last_clock": null,
                "clock_schedule": {"latency_ns": 0.0, "offset_ns": 0.0},
                "clock_timing": crate::clock::scheduler::SchedulerStats::default(),
                "rtpmidi": null
            }]
        }))
        .expect("status");
        s.instances[0].rtpmidi = Some(RtpMidiStatus {
            control_port: Some(5004),
            errors: Vec::new(),
            peers: vec![PeerReport {
                address: "10.0.0.2:5004".into(),
                name: Some("Studio B".into()),
                in_directory: true,
                connected,
                rtt_us: None,
                jitter_us: None,
                last_close: (!connected).then(|| "no CK answer for 10 s".into()),
                connects: 1,
                journal: true,
                guard_packets: 0,
                rx_lost: 0,
                rx_repaired: 0,
                sent: 0,
                received: 0,
                align_ms: None,
                ck_exchanges: 0,
            }],
            resolving: Vec::new(),
            malformed: 0,
            refused,
            full: 0,
            evicted: 0,
            unanswered: 0,
            stale_bye: 0,
            unknown: 0,
            wrong_source: 0,
            rtp_sent: 0,
            rtp_received: 0,
            send_errors: 0,
            oversize: 0,
        });
        s
    }

    #[test]
    fn the_watcher_logs_changes_once_and_the_log_filters_and_exports() {
        let mut log = EventLog::new();
        let mut w = Watcher::new();
        w.observe(&status(true, 0), &mut log);
        w.observe(&status(true, 0), &mut log);
        w.observe(&status(false, 2), &mut log);
        let entries: Vec<LogEntry> = log.entries().cloned().collect();
        let texts: Vec<&str> = entries.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts[1..],
            [
                "Studio B (10.0.0.2:5004) connected",
                "Studio B (10.0.0.2:5004) disconnected: no CK answer for 10 s",
                "refused 2 invitation(s) (access mode or every guest slot taken)",
            ],
            "{texts:?}"
        );
        assert_eq!(entries[0].source, Source::Worker);
        let only: BTreeSet<Source> = [Source::RtpMidi].into();
        assert_eq!(filter(&entries, &only).count(), 3);
        let mut text = Vec::new();
        assert_eq!(export(&entries, &only, &mut text).expect("export"), 3);
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("RTP-MIDI  error    Studio B"), "{text}");
        assert!(text.starts_with("# Lockstep event log"));
    }

    #[test]
    fn the_log_is_bounded_and_counts_what_it_dropped() {
        let mut log = EventLog::new();
        for i in 0..(LOG_CAPACITY + 25) {
            log.push(LogEntry {
                at_ms: i as u64,
                source: Source::Osc,
                health: Health::Idle,
                text: format!("{i}"),
            });
        }
        assert_eq!(log.len(), LOG_CAPACITY);
        assert_eq!(log.dropped, 25);
        assert_eq!(log.entries().next().map(|e| e.at_ms), Some(25));
    }

    #[test]
    fn each_new_shared_grid_is_logged_once() {
        use crate::status::remote::{GridStatus, RemotePeerStatus, RemoteStatus};
        let with = |generation: u64, ours: bool, tempo: f64| {
            let mut s = WorkerStatus::empty();
            s.remote = Some(RemoteStatus {
                grid: Some(GridStatus {
                    tempo_bpm: tempo,
                    playing: true,
                    generation,
                    ours,
                    author: if ours { "aa" } else { "bb" }.repeat(8),
                    ..GridStatus::default()
                }),
                ..RemoteStatus::default()
            });
            s
        };
        let mut log = EventLog::new();
        let mut w = Watcher::new();
        // Alone: our own Link session, not logged. Then the other studio's grid, once; then
        // our own change in the session.
        for s in [
            with(0, true, 120.0),
            with(0, false, 130.0),
            with(0, false, 130.0),
            with(1, true, 140.0),
        ] {
            w.observe(&s, &mut log);
        }
        let lines: Vec<_> = log
            .entries()
            .filter(|e| e.source == Source::Remote)
            .map(|e| e.text.clone())
            .collect();
        assert_eq!(
            lines,
            [
                "shared grid: 130.00 BPM, playing, set by studio bbbbbbbbbbbbbbbb",
                "shared grid: 140.00 BPM, playing, set here",
            ]
        );
        // A studio whose own grid wins when it meets another logs it at the meeting.
        let mut log = EventLog::new();
        let mut w = Watcher::new();
        let mut met = with(0, true, 120.0);
        if let Some(r) = met.remote.as_mut() {
            r.peers.push(RemotePeerStatus {
                ice: "connected".to_owned(),
                ..RemotePeerStatus::default()
            });
        }
        for s in [with(0, true, 120.0), met.clone(), met] {
            w.observe(&s, &mut log);
        }
        let lines: Vec<_> = log
            .entries()
            .filter(|e| e.source == Source::Remote && e.text.starts_with("shared grid"))
            .map(|e| e.text.clone())
            .collect();
        assert_eq!(lines, ["shared grid: 120.00 BPM, playing, set here"]);
    }

    #[test]
    fn the_remote_session_is_logged_in_words() {
        use crate::status::remote::{RemotePeerStatus, RemoteStatus};
        let with = |broker: bool, peers: Vec<RemotePeerStatus>, forged: u64| {
            let mut s = WorkerStatus::empty();
            let mut r = RemoteStatus {
                room: "4817".into(),
                broker: "198.51.100.2:1883".into(),
                broker_connected: broker,
                peers,
                ..RemoteStatus::default()
            };
            r.counters.rendezvous_forged = forged;
            s.remote = Some(r);
            s
        };
        let peer = |ice: &str, path: &str| RemotePeerStatus {
            id: "0011223344556677".into(),
            ice: ice.into(),
            path: path.into(),
            pair: "host/srflx".into(),
            rtt_ms: Some(80.84),
            ..RemotePeerStatus::default()
        };
        let mut log = EventLog::new();
        let mut w = Watcher::new();
        let steps = [
            with(true, vec![peer("checking", "")], 0),
            with(true, vec![peer("connected", "direct")], 0),
            with(true, vec![peer("connected", "direct")], 2),
            with(true, vec![peer("checking", "")], 2),
            with(false, vec![], 2),
        ];
        for s in &steps {
            w.observe(s, &mut log);
        }
        let lines: Vec<_> = log
            .entries()
            .filter(|e| e.source == Source::Remote)
            .map(|e| (e.health, e.text.clone()))
            .collect();
        let expected = [
            (
                Health::Idle,
                "room 4817: connected to the broker 198.51.100.2:1883",
            ),
            (Health::Idle, "studio 0011223344556677 found, connecting"),
            (
                Health::Good,
                "studio 0011223344556677 connected (direct, host/srflx, round trip 80.8 ms)",
            ),
            (
                Health::Degraded,
                "2 rendezvous message(s) failed authentication (another session code in this room, or tampering)",
            ),
            (
                Health::Lost,
                "studio 0011223344556677: path lost, looking for another",
            ),
            (
                Health::Degraded,
                "lost the broker 198.51.100.2:1883 (reconnecting)",
            ),
            (Health::Lost, "studio 0011223344556677 left"),
        ];
        let got: Vec<_> = lines.iter().map(|(h, t)| (*h, t.as_str())).collect();
        assert_eq!(got, expected);
    }
}
