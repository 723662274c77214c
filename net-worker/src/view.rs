//! What the editor shows, derived from the worker's status: pure functions, no I/O, so the
//! wording and the green / amber / red judgement are unit-tested without a window.
//!
//! Every row carries a [`Health`] *and* words: colour is never the only signal.

use serde::{Deserialize, Serialize};

use crate::clock::ClockState;
pub use crate::health::Health;
use crate::status::link::{LinkMode, LinkStatus};
use crate::status::osc::OscStatus;
use crate::status::remote::RemoteStatus;
use crate::status::rtpmidi::PeerReport;
use crate::status::{InstanceStatus, WorkerStatus};

/// Round trips above this are "degraded" (ms): a clock a musician can feel.
pub const SLOW_RTT_MS: f64 = 20.0;
/// Round-trip spread above this is "degraded" (ms).
pub const JITTERY_MS: f64 = 5.0;

/// The transport line at the top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransportLine {
    /// "Playing", "Stopped", "Pre-roll", "No tempo from the host", "Waiting for the host".
    pub state: String,
    /// Tempo, BPM.
    pub tempo: Option<f64>,
    /// "bar.beat" (1-based; beat with one decimal), when the host reports a position.
    pub position: Option<String>,
    /// "4/4".
    pub time_signature: Option<String>,
    /// Where the clock comes from: "DAW" or "Link session".
    pub clock_source: String,
    /// The clock's health.
    pub health: Health,
}

/// One destination row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Name (announced, or the address).
    pub name: String,
    /// Control address.
    pub address: String,
    /// "RTP-MIDI".
    pub protocol: String,
    /// "connected", "inviting", "lost", "refused", "guest left".
    pub state: String,
    /// Judgement.
    pub health: Health,
    /// Round trip, ms.
    pub rtt_ms: Option<f64>,
    /// Round-trip spread, ms.
    pub jitter_ms: Option<f64>,
    /// Aligned to its measured latency: its clock is sent this much earlier, ms.
    #[serde(default)]
    pub align_ms: Option<f64>,
    /// RTP-MIDI packets sent to it.
    pub sent: u64,
    /// RTP-MIDI packets received from it.
    pub received: u64,
    /// Packets the peer sent us that were lost (and how many of those were repaired).
    pub lost: u64,
    /// Repaired from the journal.
    pub repaired: u64,
    /// Sessions so far.
    pub connects: u64,
    /// Why the last session ended.
    pub last_error: Option<String>,
}

/// The Link row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRow {
    /// "Lead", "Follow".
    pub mode: String,
    /// Session tempo.
    pub tempo: f64,
    /// Peers in our session.
    pub peers: usize,
    /// Phase in the quantum, and the quantum.
    pub phase: f64,
    /// Quantum.
    pub quantum: f64,
    /// The DAW's offset to the session, ms.
    pub offset_ms: Option<f64>,
    /// Words.
    pub state: String,
    /// Judgement.
    pub health: Health,
}

/// The OSC row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OscRow {
    /// "UDP+TCP 8000".
    pub listen: String,
    /// Controllers that get feedback.
    pub controllers: Vec<String>,
    /// Refused (source, rate, size, switched off) and malformed (incl. wrong type, unknown
    /// address, out of range) counts.
    pub refused: u64,
    /// Malformed or unusable messages.
    pub malformed: u64,
    /// Messages received so far (the editor turns two readings into a rate).
    pub received: u64,
    /// Recent messages.
    pub last_messages: Vec<String>,
    /// Words.
    pub state: String,
    /// Judgement.
    pub health: Health,
}

/// The remote session's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteRow {
    /// The room (the public part of the code).
    pub room: String,
    /// Words.
    pub state: String,
    /// One line per remote studio.
    pub studios: Vec<StudioRow>,
    /// The shared beat grid, in words (None before there is one).
    #[serde(default)]
    pub grid: Option<String>,
    /// Judgement.
    pub health: Health,
}

/// One remote studio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudioRow {
    /// Its peer id.
    pub id: String,
    /// "direct", "relayed", or what ICE is doing.
    pub path: String,
    /// Round trip, ms.
    pub rtt_ms: Option<f64>,
    /// Its clock against ours, ms, and how wrong that can be at most.
    pub offset_ms: Option<(f64, f64)>,
    /// Judgement.
    pub health: Health,
}

/// Everything on the status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// Transport and clock source.
    pub transport: TransportLine,
    /// RTP-MIDI destinations.
    pub peers: Vec<PeerRow>,
    /// Link, when not Off.
    pub link: Option<LinkRow>,
    /// OSC, when running.
    pub osc: Option<OscRow>,
    /// The remote session, when one is set.
    #[serde(default)]
    pub remote: Option<RemoteRow>,
    /// Problems that belong to no row (ring overflows, socket errors), worded for a musician.
    pub alerts: Vec<String>,
    /// The worst health on the page.
    pub overall: Health,
}

/// The status page for instance `id` (the first instance when None or not found).
pub fn overview(status: &WorkerStatus, id: Option<u64>) -> Overview {
    let instance = id
        .and_then(|id| status.instances.iter().find(|i| i.id == id))
        .or_else(|| status.instances.first());
    let following = status
        .link
        .as_ref()
        .is_some_and(|l| l.mode == LinkMode::Follow && l.error.is_none());
    let transport = transport_line(instance, following, status.link.as_ref());
    let mut alerts = Vec::new();
    let mut peers = Vec::new();
    if let Some(i) = instance {
        if i.events_dropped_full > 0 {
            alerts.push(format!(
                "{} events from the audio thread were dropped (the network worker fell behind)",
                i.events_dropped_full
            ));
        }
        if i.clock_gaps > 0 {
            alerts.push(format!(
                "the clock stream was repaired {} times ({} messages lost)",
                i.clock_gaps, i.clock_lost
            ));
        }
        if let Some(r) = &i.rtpmidi {
            alerts.extend(r.errors.iter().map(|e| format!("RTP-MIDI: {e}")));
            if r.send_errors > 0 {
                alerts.push(format!(
                    "RTP-MIDI: {} packets could not be sent",
                    r.send_errors
                ));
            }
            peers = r.peers.iter().map(peer_row).collect();
        }
    }
    let link = status.link.as_ref().map(link_row);
    let osc = status.osc.as_ref().map(osc_row);
    let remote = status.remote.as_ref().map(remote_row);
    let overall = peers
        .iter()
        .map(|p| p.health)
        .chain(link.iter().map(|l| l.health))
        .chain(osc.iter().map(|o| o.health))
        .chain(remote.iter().map(|r| r.health))
        .fold(transport.health, Health::worst);
    let overall = if alerts.is_empty() {
        overall
    } else {
        overall.worst(Health::Degraded)
    };
    Overview {
        transport,
        peers,
        link,
        osc,
        remote,
        alerts,
        overall,
    }
}

/// The remote session's row: a studio is good once its clock is measured, idle while ICE looks
/// for a path, lost when ICE failed; the session is lost when it cannot even start.
pub fn remote_row(r: &RemoteStatus) -> RemoteRow {
    let studios: Vec<StudioRow> = r
        .peers
        .iter()
        .map(|p| {
            let (path, health) = match p.ice.as_str() {
                "connected" if p.converged => (p.path.clone(), Health::Good),
                "connected" => (format!("{}, measuring", p.path), Health::Idle),
                "failed" => ("no path (retrying)".to_owned(), Health::Lost),
                other => (other.to_owned(), Health::Idle),
            };
            StudioRow {
                id: p.id.clone(),
                path,
                rtt_ms: p.rtt_ms,
                offset_ms: p.offset_ms.zip(p.offset_bound_ms),
                health,
            }
        })
        .collect();
    let (state, health) = match r.state.as_str() {
        "error" => (
            r.errors
                .last()
                .cloned()
                .unwrap_or_else(|| "cannot start".to_owned()),
            Health::Lost,
        ),
        "connected" => {
            let n = r.peers.iter().filter(|p| p.ice == "connected").count();
            (
                format!("{n} studio{} connected", if n == 1 { "" } else { "s" }),
                Health::Good,
            )
        }
        other => (other.to_owned(), Health::Idle),
    };
    let health = studios.iter().map(|s| s.health).fold(health, Health::worst);
    let grid = r.grid.as_ref().map(|g| {
        let mut line = format!(
            "shared grid {:.2} BPM, {}, phase {:.2} / {}, {}",
            g.tempo_bpm,
            if g.playing { "playing" } else { "stopped" },
            g.phase,
            g.quantum,
            if g.ours {
                "set here".to_owned()
            } else if g.keeper {
                format!("set by studio {} (gone; kept here)", g.author)
            } else {
                format!("set by studio {}", g.author)
            }
        );
        if g.align_ms != 0.0 {
            line.push_str(&format!(", played {:.0} ms later here", g.align_ms));
        }
        if !g.linked {
            line.push_str(" — Link Mode is Off: the grid waits for a Link session");
        }
        line
    });
    RemoteRow {
        room: r.room.clone(),
        state,
        studios,
        grid,
        health,
    }
}

fn transport_line(
    instance: Option<&InstanceStatus>,
    following: bool,
    link: Option<&LinkStatus>,
) -> TransportLine {
    let clock_source = if following { "Link session" } else { "DAW" }.to_owned();
    let Some(i) = instance else {
        return TransportLine {
            state: "Waiting for the host to play a block".into(),
            tempo: None,
            position: None,
            time_signature: None,
            clock_source,
            health: Health::Idle,
        };
    };
    let t = i.last_transport;
    let (state, health) = match i.clock_state {
        _ if following => (
            if link.is_some_and(|l| l.playing) {
                "Playing (Link session)"
            } else {
                "Stopped (Link session)"
            },
            Health::Good,
        ),
        ClockState::Running => ("Playing", Health::Good),
        ClockState::Stopped => ("Stopped", Health::Good),
        ClockState::PreRoll => ("Pre-roll", Health::Good),
        ClockState::NoTempo => ("No tempo from the host: no clock", Health::Degraded),
        ClockState::Idle => ("Waiting for the host to play a block", Health::Idle),
    };
    let tempo = if following {
        link.map(|l| l.tempo)
    } else {
        t.and_then(|t| t.tempo_bpm)
    };
    let position = t.and_then(|t| {
        let pos = t.pos_beats?;
        let sig = t.time_sig?;
        if sig.numerator <= 0 || sig.denominator <= 0 {
            return None;
        }
        let beats = pos * f64::from(sig.denominator) / 4.0;
        let per_bar = f64::from(sig.numerator);
        let bar = (beats / per_bar).floor();
        let beat = beats - bar * per_bar + 1.0;
        Some(format!("{}.{:.1}", bar as i64 + 1, beat))
    });
    TransportLine {
        state: state.to_owned(),
        tempo,
        position,
        time_signature: t
            .and_then(|t| t.time_sig)
            .map(|s| format!("{}/{}", s.numerator, s.denominator)),
        clock_source,
        health,
    }
}

/// One RTP-MIDI peer's row.
pub fn peer_row(p: &PeerReport) -> PeerRow {
    let refused = p
        .last_close
        .as_deref()
        .is_some_and(|c| c.contains("refused") || c.contains("NO"));
    let (state, health) = if p.connected {
        let rtt = p.rtt_us.map(|r| r / 1e3);
        let jitter = p.jitter_us.map(|j| j / 1e3);
        let slow = rtt.is_some_and(|r| r > SLOW_RTT_MS) || jitter.is_some_and(|j| j > JITTERY_MS);
        if slow {
            ("connected, slow link".to_owned(), Health::Degraded)
        } else if p.rx_lost > p.rx_repaired {
            ("connected, losing packets".to_owned(), Health::Degraded)
        } else {
            ("connected".to_owned(), Health::Good)
        }
    } else if refused {
        ("refused".to_owned(), Health::Lost)
    } else if p.connects == 0 && p.last_close.is_some() && p.in_directory {
        ("not answering".to_owned(), Health::Lost)
    } else if !p.in_directory {
        ("guest left".to_owned(), Health::Idle)
    } else if p.connects == 0 {
        ("inviting".to_owned(), Health::Degraded)
    } else {
        ("lost".to_owned(), Health::Lost)
    };
    PeerRow {
        name: p.name.clone().unwrap_or_else(|| p.address.clone()),
        address: p.address.clone(),
        protocol: "RTP-MIDI".to_owned(),
        state,
        health,
        rtt_ms: p.rtt_us.map(|r| r / 1e3),
        jitter_ms: p.jitter_us.map(|j| j / 1e3),
        align_ms: p.align_ms,
        sent: p.sent,
        received: p.received,
        lost: p.rx_lost,
        repaired: p.rx_repaired,
        connects: p.connects,
        last_error: p.last_close.clone(),
    }
}

/// The Link row.
pub fn link_row(l: &LinkStatus) -> LinkRow {
    let (state, health) = match (&l.error, l.session_peers) {
        (Some(e), _) => (e.clone(), Health::Lost),
        (None, 0) => ("alone in its own session".to_owned(), Health::Idle),
        (None, n) => (
            format!(
                "in a session with {n} peer{}",
                if n == 1 { "" } else { "s" }
            ),
            Health::Good,
        ),
    };
    let health = if l.malformed > 0 && health == Health::Good {
        Health::Good
    } else {
        health
    };
    LinkRow {
        mode: match l.mode {
            LinkMode::Off => "Off",
            LinkMode::Lead => "Lead",
            LinkMode::Follow => "Follow",
        }
        .to_owned(),
        tempo: l.tempo,
        peers: l.session_peers,
        phase: l.phase,
        quantum: l.quantum,
        offset_ms: l.offset_ms,
        state,
        health,
    }
}

/// The OSC row.
pub fn osc_row(o: &OscStatus) -> OscRow {
    let refused = o.refused_source + o.rate_limited + o.too_large + o.disabled;
    let malformed = o.malformed + o.unknown_address + o.wrong_type + o.out_of_range;
    let (state, health) = match (o.port, o.errors.first()) {
        (None, Some(e)) => (e.clone(), Health::Lost),
        (None, None) => ("not listening".to_owned(), Health::Idle),
        (Some(_), Some(e)) => (e.clone(), Health::Degraded),
        (Some(_), None) => ("listening".to_owned(), Health::Good),
    };
    OscRow {
        listen: o.port.map_or_else(
            || "—".to_owned(),
            |p| format!("UDP{} {p}", if o.tcp { "+TCP" } else { "" }),
        ),
        controllers: o.subscribers.clone(),
        refused,
        malformed,
        received: o.received,
        last_messages: o.last_messages.clone(),
        state,
        health,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(connected: bool, connects: u64, close: Option<&str>) -> PeerReport {
        PeerReport {
            address: "10.0.0.2:5004".into(),
            name: Some("Studio B".into()),
            in_directory: true,
            connected,
            rtt_us: connected.then_some(1_200.0),
            jitter_us: connected.then_some(300.0),
            last_close: close.map(str::to_owned),
            connects,
            journal: true,
            guard_packets: 0,
            rx_lost: 0,
            rx_repaired: 0,
            sent: 40,
            received: 3,
            align_ms: None,
            ck_exchanges: 5,
        }
    }

    #[test]
    fn peer_rows_say_what_happened_in_words_and_health() {
        let row = peer_row(&peer(true, 1, None));
        assert_eq!(
            (row.state.as_str(), row.health),
            ("connected", Health::Good)
        );
        assert_eq!(row.rtt_ms, Some(1.2));
        let row = peer_row(&peer(false, 0, None));
        assert_eq!(
            (row.state.as_str(), row.health),
            ("inviting", Health::Degraded)
        );
        let row = peer_row(&peer(false, 3, Some("no CK answer for 10 s")));
        assert_eq!((row.state.as_str(), row.health), ("lost", Health::Lost));
        assert_eq!(row.last_error.as_deref(), Some("no CK answer for 10 s"));
        let row = peer_row(&peer(false, 0, Some("no answer to 12 invitations")));
        assert_eq!(
            (row.state.as_str(), row.health),
            ("not answering", Health::Lost)
        );
        let row = peer_row(&peer(false, 0, Some("invitation refused (NO)")));
        assert_eq!((row.state.as_str(), row.health), ("refused", Health::Lost));
        let mut slow = peer(true, 1, None);
        slow.rtt_us = Some(45_000.0);
        assert_eq!(peer_row(&slow).health, Health::Degraded);
        let mut lossy = peer(true, 1, None);
        lossy.rx_lost = 5;
        lossy.rx_repaired = 2;
        assert_eq!(peer_row(&lossy).state, "connected, losing packets");
        for h in [Health::Good, Health::Degraded, Health::Lost, Health::Idle] {
            assert!(!h.symbol().is_empty(), "never colour alone");
        }
    }

    #[test]
    fn the_overview_takes_the_worst_row_and_words_alerts() {
        let mut status: WorkerStatus = serde_json::from_value(serde_json::json!({
            "running": true, "thread_name": "lockstep-net", "worker_starts": 1,
            "uptime_ms": 5, "instances": []
        }))
        .expect("status");
        let o = overview(&status, None);
        assert_eq!(o.overall, Health::Idle);
        assert_eq!(o.transport.clock_source, "DAW");
        status.link = Some(LinkStatus {
            mode: LinkMode::Follow,
            session_peers: 2,
            tempo: 128.0,
            playing: true,
            ..LinkStatus::default()
        });
        let o = overview(&status, None);
        assert_eq!(o.transport.clock_source, "Link session");
        let link = o.link.expect("link row");
        assert_eq!(
            (link.state.as_str(), link.health),
            ("in a session with 2 peers", Health::Good)
        );
        status.link.as_mut().expect("link").error = Some("cannot join Link".into());
        assert_eq!(overview(&status, None).overall, Health::Lost);
    }

    #[test]
    fn remote_rows_say_where_each_studio_stands() {
        use crate::status::remote::{RemotePeerStatus, RemoteStatus};
        let studio = |ice: &str, converged: bool| RemotePeerStatus {
            id: "0011223344556677".into(),
            ice: ice.into(),
            path: if ice == "connected" { "direct" } else { "" }.into(),
            converged,
            rtt_ms: Some(80.8),
            offset_ms: converged.then_some(0.03),
            offset_bound_ms: Some(40.4),
            ..RemotePeerStatus::default()
        };
        let mut r = RemoteStatus {
            room: "4817".into(),
            state: "connected".into(),
            peers: vec![studio("connected", true), studio("checking", false)],
            ..RemoteStatus::default()
        };
        let row = remote_row(&r);
        assert_eq!(row.state, "1 studio connected");
        assert_eq!(row.grid, None);
        r.grid = Some(crate::status::remote::GridStatus {
            tempo_bpm: 130.00013,
            playing: true,
            phase: 1.25,
            quantum: 4.0,
            author: "8b99402e7bd061ab".into(),
            align_ms: 30.0,
            linked: false,
            ..Default::default()
        });
        assert_eq!(
            remote_row(&r).grid.as_deref(),
            Some(
                "shared grid 130.00 BPM, playing, phase 1.25 / 4, set by studio 8b99402e7bd061ab, \
                 played 30 ms later here — Link Mode is Off: the grid waits for a Link session"
            )
        );
        r.grid = None;
        assert_eq!(row.studios[0].offset_ms, Some((0.03, 40.4)));
        assert_eq!(
            (row.studios[0].path.as_str(), row.studios[0].health),
            ("direct", Health::Good)
        );
        assert_eq!(
            (row.studios[1].path.as_str(), row.studios[1].health),
            ("checking", Health::Idle)
        );
        assert_eq!(row.health, Health::Good);
        r.peers[1].ice = "failed".into();
        assert_eq!(remote_row(&r).health, Health::Lost);
        r.state = "error".into();
        r.errors = vec!["session code: no secret after the room".into()];
        let row = remote_row(&r);
        assert_eq!(
            (row.state.as_str(), row.health),
            ("session code: no secret after the room", Health::Lost)
        );
    }
}
