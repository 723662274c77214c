//! The process's Link peer and the role the instances give it: [`LinkService`] opens the
//! peer ([`super::LinkDriver`]) while some instance's Link Mode is not Off, publishes the
//! leading DAW's tempo, start/stop and beat (Lead), and gives the session's timeline to the
//! Link-driven clocks (Follow) and OSC.

use std::net::Ipv4Addr;

use mio::{Registry, Token};

use super::{LinkDriver, LinkMode, LinkStatus, resolve_interfaces};
use crate::proto::link::session::Micros;
use crate::proto::remote::grid::{Grid, LocalView};

/// How long a new Link peer waits before its session counts for the remote grid, µs: ALIVEs
/// go every 250 ms and a LAN measurement takes well under 100 ms, so a session on the LAN
/// has been found and joined by then.
pub const LINK_SETTLE: Micros = 1_500_000;

/// The process's Link peer and the role the instances give it.
#[derive(Debug, Default)]
pub struct LinkService {
    driver: Option<LinkDriver>,
    /// The worker's readiness loop and our token in it (a new driver registers there).
    registration: Option<(Registry, Token)>,
    interfaces: Vec<Ipv4Addr>,
    /// The user's interface choice the driver was opened for.
    choice: String,
    /// After a failed open, when to try again (host µs).
    retry_at: Micros,
    error: Option<String>,
    /// The DAW tempo and playing state last published (or seen when we joined).
    last_daw: Option<(f64, bool)>,
    /// The DAW's last (beat, host µs where it is heard) while playing, to notice a start or
    /// a jump.
    last_beat: Option<(f64, Micros)>,
    /// Beats forced into the session (DAW starts and jumps).
    forced: u64,
    /// The DAW's beat minus the session's, ms (Lead, playing).
    offset_ms: Option<f64>,
    joins_seen: u64,
    published: u64,
    /// Remote grids the session was put on.
    remote_grids: u64,
    /// When the peer was opened (Link µs).
    opened_at: Micros,
    /// When the status was last made (it is published every 50 ms).
    pub status_at: Micros,
    /// A status (not None) is published.
    pub status_shown: bool,
    /// The status as last made, for the worker's published snapshot.
    pub published_status: Option<LinkStatus>,
    /// The leading instance's quantum (beats), for the remote grid.
    pub quantum: f64,
}

impl LinkService {
    /// Nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// A Link peer is open (some instance's Link Mode is not Off).
    pub fn is_open(&self) -> bool {
        self.driver.is_some()
    }

    /// Register every peer this opens with the worker's readiness loop under `token`.
    pub fn set_registry(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        self.registration = Some((registry.try_clone()?, token));
        Ok(())
    }

    /// Run for `mode` with the leading DAW's `tempo` and `playing` (the first instance whose
    /// mode is not Off), `start_stop` sync on or off. Opens or closes the peer as needed.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        now: Micros,
        mode: LinkMode,
        interface: &str,
        daw: Option<(f64, bool)>,
        start_stop: bool,
        daw_beat: Option<(f64, Micros)>,
        readable: bool,
    ) -> Option<Micros> {
        if mode == LinkMode::Off {
            self.driver = None;
            self.last_daw = None;
            self.last_beat = None;
            self.offset_ms = None;
            self.error = None;
            return None;
        }
        if interface != self.choice {
            // Another interface chosen: leave (BYEBYE) and join again there.
            self.driver = None;
            self.error = None;
            self.choice = interface.to_owned();
        }
        if self.driver.is_none() && (self.error.is_none() || now >= self.retry_at) {
            let tempo = daw.map_or(120.0, |d| d.0);
            let registration = self.registration.as_ref();
            let opened = resolve_interfaces(interface).and_then(|list| {
                LinkDriver::open_on(&list, tempo)
                    .and_then(|mut d| {
                        if let Some((registry, token)) = registration {
                            d.register(registry, *token)?;
                        }
                        Ok(d)
                    })
                    .map_err(|e| {
                        let names: Vec<String> = list.iter().map(|i| i.0.to_string()).collect();
                        format!("cannot join Link on {}: {e}", names.join(", "))
                    })
            });
            match opened {
                Ok(d) => {
                    self.opened_at = now;
                    self.interfaces = d.interfaces();
                    self.driver = Some(d);
                    self.error = None;
                    self.last_daw = daw;
                    self.joins_seen = 0;
                }
                Err(e) => {
                    // Shown, and tried again every 5 s (an interface that comes up later).
                    self.error = Some(e);
                    self.retry_at = now + 5_000_000;
                    return None;
                }
            }
        }
        let driver = self.driver.as_mut()?;
        let joins = driver.core().counters().joins;
        if joins != self.joins_seen {
            // Joined a session: adopt it; publish only what the DAW changes from now on.
            self.joins_seen = joins;
            self.last_daw = daw;
        }
        if mode == LinkMode::Lead
            && let Some((tempo, playing)) = daw
        {
            let (last_tempo, last_playing) = self.last_daw.unwrap_or((tempo, playing));
            if (tempo - last_tempo).abs() > 1e-6 {
                driver.core_mut().set_tempo(now, tempo);
                self.published += 1;
            }
            if start_stop && playing != last_playing {
                driver.core_mut().set_playing(now, playing);
            }
            self.last_daw = Some((tempo, playing));
            // The DAW's beat phase: forced into the session when the DAW starts or jumps
            // (not on joining, not for drift), so the beat Link peers play is the one heard.
            match (playing, daw_beat) {
                (true, Some((beat, at))) => {
                    let expected = self
                        .last_beat
                        .map(|(b, t)| b + (at - t) as f64 / 1e6 * tempo / 60.0);
                    let jumped = expected.is_none_or(|e| (e - beat).abs() > 0.01);
                    if jumped {
                        driver.core_mut().force_beat(now, beat, at);
                        self.forced += 1;
                    }
                    self.last_beat = Some((beat, at));
                    let session = driver.core().beats_at(at);
                    self.offset_ms = Some((beat - session) * 60e3 / tempo.max(1.0));
                }
                _ => {
                    self.last_beat = None;
                    self.offset_ms = None;
                }
            }
        } else {
            self.offset_ms = None;
        }
        driver.poll(now, readable)
    }

    /// The session's timeline now, for a Link-driven clock (None while not in Link).
    pub fn timeline(&self, now: Micros) -> Option<crate::clock::link_clock::Timeline> {
        let core = self.driver.as_ref()?.core();
        Some(crate::clock::link_clock::Timeline {
            tempo: core.tempo(),
            anchor_us: now as f64,
            anchor_beat: core.beats_at(now),
            playing: core.playing(),
            start_stop_us: core.start_stop_time(),
        })
    }

    /// Sessions the peer has joined since it opened (None while not in Link): a change tells
    /// the remote grid that the Link session's timeline came from a join, not a change.
    pub fn joins(&self) -> Option<u64> {
        Some(self.driver.as_ref()?.core().counters().joins)
    }

    /// Whether the peer has been open long enough to have found a session on its LAN, if
    /// there is one ([`LINK_SETTLE`]): until then its timeline is only its own founding
    /// tempo, which must neither go to remote studios nor be overwritten by them.
    pub fn settled(&self, now: Micros) -> bool {
        self.driver.is_some() && now >= self.opened_at + LINK_SETTLE
    }

    /// The session as the remote grid sees it at `host_ns` (the worker's host clock; None
    /// while not in Link or not [`LinkService::settled`]).
    pub fn grid_view(&self, host_ns: u64) -> Option<LocalView> {
        if !self.settled(super::now_micros()) {
            return None;
        }
        let core = self.driver.as_ref()?.core();
        let at = (host_ns as f64 / 1e3 + super::link_minus_host()).round() as Micros;
        Some(LocalView {
            tempo_bpm: core.tempo(),
            beat: core.beats_at(at),
            playing: core.playing(),
            quantum: if self.quantum > 0.0 {
                self.quantum
            } else {
                4.0
            },
        })
    }

    /// Put the session on `grid` (adopted from a remote studio, or re-aligned to it) at
    /// `host_ns`: its tempo, its beat at this moment, its start/stop state. Local Link peers
    /// take it as any peer's change (the beat origin moves forward, so it wins). False while
    /// not in Link.
    pub fn take_grid(&mut self, grid: &Grid, host_ns: u64) -> bool {
        let Some(driver) = self.driver.as_mut() else {
            return false;
        };
        let at = (host_ns as f64 / 1e3 + super::link_minus_host()).round() as Micros;
        driver.core_mut().take_timeline(
            at,
            grid.tempo_bpm,
            grid.beat_at(host_ns as i64),
            at,
            grid.playing,
        );
        self.remote_grids += 1;
        true
    }

    /// What OSC controllers see of the session (None while not in Link).
    pub fn feed(&self, now: Micros, quantum: f64) -> Option<crate::worker::osc::LinkFeed> {
        let core = self.driver.as_ref()?.core();
        Some(crate::worker::osc::LinkFeed {
            peers: i32::try_from(core.session_peers()).unwrap_or(i32::MAX),
            tempo: core.tempo() as f32,
            phase: core.beats_at(now).rem_euclid(quantum.max(1.0)) as f32,
            playing: core.playing(),
            offset_ms: self.offset_ms.map(|o| o as f32),
        })
    }

    /// The status now.
    pub fn status(&self, now: Micros, mode: LinkMode, quantum: f64) -> Option<LinkStatus> {
        if mode == LinkMode::Off && self.error.is_none() {
            return None;
        }
        let mut s = LinkStatus {
            mode,
            interface: self
                .interfaces
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            quantum,
            error: self.error.clone(),
            published: self.published,
            forced: self.forced,
            remote_grids: self.remote_grids,
            at_micros: now,
            offset_ms: self.offset_ms,
            note: (mode == LinkMode::Follow).then(|| {
                "a plugin cannot drive the DAW's transport: in Follow, Lockstep's MIDI clock and \
                 OSC transport follow the session; the DAW plays on its own"
                    .to_owned()
            }),
            ..LinkStatus::default()
        };
        if let Some(d) = &self.driver {
            let core = d.core();
            s.session = core.session().iter().map(|b| format!("{b:02x}")).collect();
            s.peers = core.peers();
            s.session_peers = core.session_peers();
            s.tempo = core.tempo();
            s.beat = core.beats_at(now);
            s.phase = if quantum > 0.0 {
                s.beat.rem_euclid(quantum)
            } else {
                0.0
            };
            s.playing = core.playing();
            s.joins = core.counters().joins;
            s.malformed = core.counters().malformed + core.counters().foreign_group;
            s.implausible = core.counters().implausible;
            s.peers_refused = core.counters().peers_refused;
            s.remeasures = core.counters().remeasures;
            s.last_correction_us = core.last_correction();
        }
        Some(s)
    }
}
