//! The shared beat grid of a remote session, sans-IO: which tempo, beat phase and start/stop
//! state every studio's local Link session should be on, how changes travel, and which change
//! wins.
//!
//! # Time
//! A grid is a line through (`origin_ns`, `beat_origin`) at `tempo_bpm`, on *our* clock (the
//! session's `now_ns`). On the wire ([`RemoteTimeline`]) the time origin is on the *sender's*
//! clock; the receiver maps it through its converged offset estimate of the sender
//! (`ours = theirs − offset`). So no peer's clock is special, and the drift the estimator
//! tracks carries into the grid: the sender repeats its grid every [`RESEND_NS`], and each
//! repeat from the grid's keeper re-aligns the receiver when they differ by more than
//! [`ALIGN_NS`]. The keeper is the grid's author while it is in the session; when the author
//! has left, the studio with the smallest id still in it stands in, so clocks that drift apart
//! stay on one grid after the author is gone ([`GridSync::set_present`]).
//!
//! # Which change wins
//! Every grid carries a version: a generation and its author. A change made while in the
//! session (a tempo change, a start or stop, a beat jump of more than [`JUMP_NS`]) takes the
//! highest generation seen plus one, authored by us; a grid with a higher generation replaces
//! ours. Two changes with the same generation (made at once on two sides) are ordered the same
//! way everywhere: a playing grid first, then the smaller author id. Changes made before a
//! studio was ever connected keep generation 0, so joining a session that has changed adopts
//! it, and two fresh studios meeting take the playing one's grid (or the smaller id's).
//! Timelines from a peer whose offset has not converged yet are held until it has (the last
//! one per peer; see the session), never mapped through a guess.
//!
//! A generation counts changes, not recency: a studio that made several changes while it was
//! away from the session wins over one change made in the session meanwhile.
//!
//! # What the caller does
//! Every pass, in this order: [`GridSync::set_present`] with the peers in the session,
//! [`GridSync::observe`] with what its local Link session shows now, [`GridSync::poll_send`]
//! for the timeline to send to every connected peer, [`GridSync::handle`] for timelines that
//! arrived, and [`GridSync::take_pending`] to move its Link session onto an adopted or
//! re-aligned grid. When the local Link peer opens or joins a LAN session:
//! [`GridSync::link_opened`] / [`GridSync::link_joined`].

use super::frame::RemoteTimeline;
use super::keys::PeerId;
use crate::proto::link::Timeline as LinkTimeline;
use crate::status::remote::{GridCounters, GridStatus};

/// A local beat that moved more than this (ns of beat time) against the grid is a change.
pub const JUMP_NS: f64 = 1_000_000.0;
/// The local session and the grid differing by more than this (ns) is corrected: the
/// author's grid follows its local session, anyone else's local session follows the grid.
pub const ALIGN_NS: f64 = 100_000.0;
/// A local session is re-aligned at most this often (ns).
pub const ALIGN_GAP_NS: u64 = 1_000_000_000;
/// After a change, the grid goes out this many more times…
pub const BURST: u32 = 3;
/// …this far apart (ns), so one lost datagram costs 100 ms, not a second…
pub const BURST_GAP_NS: u64 = 100_000_000;
/// …and then once this often (ns): the drift reference for receivers, and repair of losses.
pub const RESEND_NS: u64 = 1_000_000_000;
/// A timeline whose time origin maps further than this from our now (ns) is refused: no
/// studio sends one, and mapping it would overflow or lose precision.
pub const MAX_ORIGIN_AGE_NS: i64 = 86_400_000_000_000;
/// A generation more than this ahead of ours is refused: one peer could otherwise take the
/// last generation and freeze the grid for everyone.
pub const MAX_GENERATION_STEP: u64 = 1 << 32;

/// A beat grid on our clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Tempo, BPM.
    pub tempo_bpm: f64,
    /// The beat at `origin_ns`.
    pub beat_origin: f64,
    /// Our clock, ns.
    pub origin_ns: i64,
    /// Transport playing.
    pub playing: bool,
    /// Beats per quantum, as the author set it.
    pub quantum: f64,
}

impl Grid {
    /// The beat at `ns` on our clock.
    pub fn beat_at(&self, ns: i64) -> f64 {
        self.beat_origin + ns.saturating_sub(self.origin_ns) as f64 * self.tempo_bpm / 60e9
    }

    /// The same line, anchored at `ns`.
    fn anchored(&self, ns: i64) -> Self {
        Self {
            beat_origin: self.beat_at(ns),
            origin_ns: ns,
            ..*self
        }
    }

    /// How far (ns of beat time) a beat of `beat` at `ns` lies from this grid.
    fn distance_ns(&self, beat: f64, ns: i64) -> f64 {
        (beat - self.beat_at(ns)) * 60e9 / self.tempo_bpm
    }
}

/// The same tempo as Link keeps it (µs per beat, rounded).
fn same_tempo(a: f64, b: f64) -> bool {
    LinkTimeline::micros_per_beat_for(a) == LinkTimeline::micros_per_beat_for(b)
}

/// What the local Link session shows at the time passed with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalView {
    /// Tempo, BPM.
    pub tempo_bpm: f64,
    /// The session's beat then.
    pub beat: f64,
    /// Start/stop state.
    pub playing: bool,
    /// Our quantum, beats.
    pub quantum: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    generation: u64,
    author: PeerId,
    playing: bool,
}

impl Version {
    /// Whether this version replaces `other` (the same answer on every peer).
    fn wins_over(&self, other: &Version) -> bool {
        (
            self.generation,
            self.playing,
            std::cmp::Reverse(self.author),
        ) > (
            other.generation,
            other.playing,
            std::cmp::Reverse(other.author),
        )
    }

    /// The version a timeline carries.
    fn of(timeline: &RemoteTimeline) -> Self {
        Self {
            generation: timeline.generation,
            author: timeline.author,
            playing: timeline.playing,
        }
    }

    fn same(&self, other: &Version) -> bool {
        self.generation == other.generation && self.author == other.author
    }
}

/// What [`GridSync::handle`] did with a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A newer grid: ours now, to be applied.
    Adopted,
    /// The grid we have, moved by its author (drift): to be applied.
    Realigned,
    /// The grid we have, nothing to do.
    Same,
    /// Older than ours: ignored (ours goes out at once so the sender learns it).
    Stale,
    /// Out of bounds (a time origin more than a day from now, a generation leap): ignored
    /// and counted.
    Refused,
}

/// The grid and its exchange.
#[derive(Debug)]
pub struct GridSync {
    me: PeerId,
    current: Option<(Grid, Version)>,
    /// Ever connected to a peer: changes from now on raise the generation.
    joined: bool,
    /// A grid for the local Link session to take.
    pending: Option<Grid>,
    next_send_ns: u64,
    burst_left: u32,
    next_align_ns: u64,
    /// Whether the local session has reported (a Link session exists).
    linked: bool,
    /// The local session should play the grid this much later, ns (the alignment setting)…
    shift_ns: i64,
    /// …and plays it this much later now (the shift last applied to it).
    applied_shift_ns: i64,
    /// Who keeps the grid against drift (see [`GridSync::set_present`]).
    keeper: PeerId,
    counters: GridCounters,
}

impl GridSync {
    /// No grid yet.
    pub fn new(me: PeerId) -> Self {
        Self {
            me,
            current: None,
            joined: false,
            pending: None,
            next_send_ns: 0,
            burst_left: 0,
            next_align_ns: 0,
            linked: false,
            shift_ns: 0,
            applied_shift_ns: 0,
            keeper: me,
            counters: GridCounters::default(),
        }
    }

    /// Play the grid `shift_ns` later in the local session (0: at the same moment as every
    /// studio). A change moves the local session at the next [`GridSync::observe`] (the grid
    /// goes to it again, after any change the session made meanwhile has become the grid),
    /// and is nobody's change of the grid.
    pub fn set_shift(&mut self, shift_ns: i64) {
        self.shift_ns = shift_ns;
    }

    /// The peers in the session now (the session passes those whose clock it knows, so a
    /// peer stays present through an outage). The grid's author keeps it against drift while
    /// it is here (its repeats re-align everyone, and its grid follows its own Link
    /// session); once it has left, the smallest id among us and `present` stands in, so
    /// every studio that sees the same peers picks the same keeper.
    pub fn set_present(&mut self, present: impl Iterator<Item = PeerId> + Clone) {
        let author = self.current.map(|(_, v)| v.author);
        self.keeper = match author {
            Some(a) if a == self.me || present.clone().any(|p| p == a) => a,
            _ => present.fold(self.me, Ord::min),
        };
    }

    fn now_i64(now_ns: u64) -> i64 {
        i64::try_from(now_ns).unwrap_or(i64::MAX)
    }

    fn send_soon(&mut self, now_ns: u64, burst: bool) {
        self.next_send_ns = now_ns;
        if burst {
            self.burst_left = BURST;
        }
    }

    /// What the local Link session shows at `now_ns` (None: no Link session; the grid is
    /// still kept and exchanged, and applied once one exists). `in_session`: some peer is
    /// connected now.
    pub fn observe(&mut self, now_ns: u64, view: Option<LocalView>, in_session: bool) {
        self.joined |= in_session;
        self.linked = view.is_some();
        let Some(view) = view else {
            return;
        };
        if self.current.is_none() {
            // The local session as it is now is the grid played at the wanted alignment.
            self.applied_shift_ns = self.shift_ns;
        }
        self.observe_view(now_ns, view);
        if self.shift_ns != self.applied_shift_ns
            && self.pending.is_none()
            && let Some((grid, _)) = self.current
        {
            self.pending = Some(grid.anchored(Self::now_i64(now_ns)));
        }
    }

    fn observe_view(&mut self, now_ns: u64, view: LocalView) {
        // The local session at `now` plays the grid's `now − shift`.
        let now = Self::now_i64(now_ns).saturating_sub(self.applied_shift_ns);
        let fresh = Grid {
            tempo_bpm: view.tempo_bpm,
            beat_origin: view.beat,
            origin_ns: now,
            playing: view.playing,
            quantum: view.quantum,
        };
        let Some((grid, version)) = self.current else {
            self.current = Some((
                fresh,
                Version {
                    generation: 0,
                    author: self.me,
                    playing: view.playing,
                },
            ));
            self.send_soon(now_ns, false);
            return;
        };
        if self.pending.is_some() {
            // The Link session has not taken the last grid yet: what it shows is old.
            return;
        }
        let distance = grid.distance_ns(view.beat, now);
        let changed = !same_tempo(view.tempo_bpm, grid.tempo_bpm)
            || view.playing != grid.playing
            || distance.abs() > JUMP_NS;
        if changed {
            let generation = if self.joined || version.generation > 0 {
                version.generation.saturating_add(1)
            } else {
                0
            };
            self.current = Some((
                fresh,
                Version {
                    generation,
                    author: self.me,
                    playing: view.playing,
                },
            ));
            self.counters.authored += 1;
            self.send_soon(now_ns, true);
        } else if distance.abs() > ALIGN_NS {
            if self.keeper == self.me {
                // The grid we keep follows our session (Link re-measured its clock).
                self.current = Some((fresh, version));
                self.send_soon(now_ns, false);
            } else if now_ns >= self.next_align_ns {
                self.next_align_ns = now_ns + ALIGN_GAP_NS;
                self.pending = Some(grid.anchored(now));
                self.counters.realigned += 1;
            }
        }
    }

    /// The local Link peer joined another Link session (one on its LAN) at `now_ns`, which
    /// shows `view`: joining takes that session's timeline, which is nobody's change, so it
    /// is weighed against the grid like two studios meeting. Once in a remote session, a
    /// playing grid goes back into the Link session when the LAN's session is stopped, or
    /// when the grid came from another studio (a studio joining a playing session takes it);
    /// otherwise the LAN's session is news (someone plays there) and the next
    /// [`GridSync::observe`] makes it the grid. Before any studio was met, the join simply
    /// becomes our grid.
    pub fn link_joined(&mut self, now_ns: u64, view: LocalView) {
        if !self.joined {
            return;
        }
        self.link_found(now_ns, view);
    }

    /// The local Link peer opened at `now_ns` (Link switched on or re-opened while the grid
    /// exists) and, after settling, shows `view`; `found`: it joined a session on its LAN
    /// meanwhile (weighed as [`GridSync::link_joined`]). Without one, what it shows is only
    /// its founding tempo, never a change: once in a remote session the grid goes into it,
    /// playing or stopped.
    pub fn link_opened(&mut self, now_ns: u64, view: LocalView, found: bool) {
        if !self.joined {
            return;
        }
        if found {
            self.link_found(now_ns, view);
        } else if let Some((grid, _)) = self.current {
            self.pending = Some(grid.anchored(Self::now_i64(now_ns)));
            self.counters.reasserted += 1;
        }
    }

    fn link_found(&mut self, now_ns: u64, view: LocalView) {
        if let Some((grid, version)) = self.current
            && grid.playing
            && (!view.playing || version.author != self.me)
        {
            self.pending = Some(grid.anchored(Self::now_i64(now_ns)));
            self.counters.reasserted += 1;
        } else {
            // The LAN's session wins: a grid adopted before the Link peer settled must not
            // be put over it.
            self.pending = None;
        }
    }

    /// A timeline from peer `from`, whose clock is `offset_ns` ahead of ours at `now_ns`.
    pub fn handle(
        &mut self,
        now_ns: u64,
        from: PeerId,
        timeline: &RemoteTimeline,
        offset_ns: i64,
    ) -> Handled {
        let now = Self::now_i64(now_ns);
        let origin_ns = timeline.time_origin_ns.saturating_sub(offset_ns);
        let ours = self.current.map_or(0, |(_, v)| v.generation);
        let leap = timeline.generation > ours.saturating_add(MAX_GENERATION_STEP);
        if !timeline.is_valid()
            || origin_ns.saturating_sub(now).saturating_abs() > MAX_ORIGIN_AGE_NS
            || leap
        {
            self.counters.refused += 1;
            return Handled::Refused;
        }
        let grid = Grid {
            tempo_bpm: timeline.tempo_bpm,
            beat_origin: timeline.beat_origin,
            origin_ns,
            playing: timeline.playing,
            quantum: timeline.quantum,
        }
        .anchored(now);
        let version = Version::of(timeline);
        let adopt = match &self.current {
            None => true,
            Some((_, ours)) if ours.same(&version) => false,
            Some((_, ours)) => version.wins_over(ours),
        };
        if adopt {
            self.current = Some((grid, version));
            self.pending = Some(grid);
            self.joined = true;
            self.counters.adopted += 1;
            // Peers that have not heard it yet (a mesh) learn it from us too.
            self.send_soon(now_ns, true);
            return Handled::Adopted;
        }
        let Some((ours, ours_version)) = self.current else {
            return Handled::Same;
        };
        if !ours_version.same(&version) {
            self.counters.stale += 1;
            self.send_soon(now_ns, false);
            return Handled::Stale;
        }
        // Our grid, as its author sees it now: follow the author's moves (drift, re-anchors).
        let moved = !same_tempo(grid.tempo_bpm, ours.tempo_bpm)
            || grid.playing != ours.playing
            || ours.distance_ns(grid.beat_at(now), now).abs() > ALIGN_NS;
        if from == self.keeper && moved && self.keeper != self.me {
            self.current = Some((grid, version));
            self.pending = Some(grid);
            self.counters.realigned += 1;
            return Handled::Realigned;
        }
        Handled::Same
    }

    /// The line the local Link session should take now (the grid adopted or re-aligned,
    /// moved later by the alignment), once. Taking it applies the alignment.
    pub fn take_pending(&mut self) -> Option<Grid> {
        let grid = self.pending.take()?;
        self.applied_shift_ns = self.shift_ns;
        Some(Grid {
            origin_ns: grid.origin_ns.saturating_add(self.shift_ns),
            ..grid
        })
    }

    /// When [`GridSync::poll_send`] has something next (ns), while connected.
    pub fn next_send_ns(&self) -> Option<u64> {
        self.current.map(|_| self.next_send_ns)
    }

    /// The timeline to send to every connected peer now, if one is due.
    pub fn poll_send(&mut self, now_ns: u64) -> Option<RemoteTimeline> {
        let (grid, version) = self.current?;
        if now_ns < self.next_send_ns {
            return None;
        }
        self.next_send_ns = if self.burst_left > 0 {
            self.burst_left -= 1;
            now_ns + BURST_GAP_NS
        } else {
            now_ns + RESEND_NS
        };
        let now = Self::now_i64(now_ns);
        let grid = grid.anchored(now);
        self.counters.sent += 1;
        Some(RemoteTimeline {
            tempo_bpm: grid.tempo_bpm,
            beat_origin: grid.beat_origin,
            time_origin_ns: now,
            playing: grid.playing,
            quantum: grid.quantum,
            generation: version.generation,
            author: version.author,
        })
    }

    /// Who keeps the grid against drift (see [`GridSync::set_present`]).
    pub fn keeper(&self) -> PeerId {
        self.keeper
    }

    /// Whether `timeline` is a version of the grid we hold (the same change).
    pub fn holds(&self, timeline: &RemoteTimeline) -> bool {
        self.current
            .is_some_and(|(_, v)| v.same(&Version::of(timeline)))
    }

    /// The grid now, on our clock.
    pub fn grid(&self) -> Option<Grid> {
        self.current.map(|(g, _)| g)
    }

    /// Count a timeline held because its sender's offset has not converged.
    pub fn held(&mut self) {
        self.counters.held += 1;
    }

    /// What the status shows.
    pub fn status(&self, now_ns: u64) -> Option<GridStatus> {
        let (grid, version) = self.current?;
        let beat = grid.beat_at(Self::now_i64(now_ns));
        Some(GridStatus {
            tempo_bpm: grid.tempo_bpm,
            beat,
            phase: beat.rem_euclid(grid.quantum),
            quantum: grid.quantum,
            playing: grid.playing,
            generation: version.generation,
            author: version.author.to_string(),
            ours: version.author == self.me,
            keeper: self.keeper == self.me,
            linked: self.linked,
            align_ms: self.shift_ns as f64 / 1e6,
            counters: self.counters,
        })
    }
}

#[cfg(test)]
mod tests;
