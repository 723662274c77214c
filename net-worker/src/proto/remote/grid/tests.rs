use super::*;

/// A local Link session as the grid sees it: a line on its studio's clock.
#[derive(Debug, Clone, Copy)]
struct Local {
    tempo: f64,
    beat_origin: f64,
    origin_ns: i64,
    playing: bool,
}

impl Local {
    fn beat(&self, ns: i64) -> f64 {
        self.beat_origin + (ns - self.origin_ns) as f64 * self.tempo / 60e9
    }

    fn view(&self, ns: i64) -> LocalView {
        LocalView {
            tempo_bpm: self.tempo,
            beat: self.beat(ns),
            playing: self.playing,
            quantum: 4.0,
        }
    }

    /// A tempo change keeping the beat continuous, as Link does.
    fn set_tempo(&mut self, ns: i64, tempo: f64) {
        self.beat_origin = self.beat(ns);
        self.origin_ns = ns;
        self.tempo = tempo;
    }

    fn take(&mut self, grid: Grid) {
        *self = Local {
            tempo: grid.tempo_bpm,
            beat_origin: grid.beat_origin,
            origin_ns: grid.origin_ns,
            playing: grid.playing,
        };
    }
}

/// A studio: its grid exchange, its Link session, and its clock (`offset_ns` ahead of the
/// shared simulation time, `ppm` fast).
struct Studio {
    sync: GridSync,
    local: Local,
    offset_ns: i64,
    ppm: f64,
}

impl Studio {
    fn new(id: u8, offset_ns: i64, tempo: f64, playing: bool) -> Self {
        Self {
            sync: GridSync::new(PeerId([id; 8])),
            local: Local {
                tempo,
                beat_origin: 0.0,
                origin_ns: 0,
                playing,
            },
            offset_ns,
            ppm: 0.0,
        }
    }

    fn clock(&self, t: i64) -> i64 {
        t + self.offset_ns + (t as f64 * self.ppm / 1e6) as i64
    }
}

/// Studios exchanging timelines over a path of `delay_ns` each way, each mapping the others'
/// clocks exactly (the estimator's error is tested on its own).
struct World {
    studios: Vec<Studio>,
    delay_ns: i64,
    /// (arrival time, to, from, timeline)
    flight: Vec<(i64, usize, usize, RemoteTimeline)>,
    t: i64,
    linked: bool,
    /// Studios still in the session (one that left neither sends nor receives).
    present: Vec<bool>,
}

impl World {
    fn new(studios: Vec<Studio>, delay_ns: i64) -> Self {
        let n = studios.len();
        Self {
            studios,
            delay_ns,
            flight: Vec::new(),
            t: 1_000_000_000,
            linked: true,
            present: vec![true; n],
        }
    }

    /// Run in 1 ms steps for `ms`.
    fn run(&mut self, ms: i64) {
        // Studios pushed since are in the session.
        self.present.resize(self.studios.len(), true);
        for _ in 0..ms {
            self.t += 1_000_000;
            let t = self.t;
            let n = self.studios.len();
            let mut arrived = Vec::new();
            self.flight.retain(|m| {
                if m.0 <= t {
                    arrived.push(*m);
                    false
                } else {
                    true
                }
            });
            for (_, to, from, timeline) in arrived {
                if !(self.present[to] && self.present[from]) {
                    continue;
                }
                let now = self.studios[to].clock(t);
                let offset = self.studios[from].clock(t) - now;
                let sender = self.studios[from].sync.me;
                self.studios[to]
                    .sync
                    .handle(now as u64, sender, &timeline, offset);
            }
            let ids: Vec<PeerId> = self.studios.iter().map(|s| s.sync.me).collect();
            for i in 0..n {
                let present = &self.present;
                let others = (0..n).filter(|&j| j != i && present[j]).map(|j| ids[j]);
                let s = &mut self.studios[i];
                let now = s.clock(t);
                if let Some(g) = s.sync.take_pending() {
                    s.local.take(g);
                }
                let view = self.linked.then(|| s.local.view(now));
                s.sync.set_present(others.clone());
                s.sync
                    .observe(now as u64, view, others.clone().next().is_some());
                while let Some(tl) = s.sync.poll_send(now as u64) {
                    for to in others.clone() {
                        let to = ids.iter().position(|&id| id == to).expect("a studio");
                        self.flight.push((t + self.delay_ns, to, i, tl));
                    }
                }
            }
        }
    }

    /// Studio `i`'s local beat at simulation time `t`.
    fn beat(&self, i: usize, t: i64) -> f64 {
        let s = &self.studios[i];
        s.local.beat(s.clock(t))
    }

    /// How far studio `i`'s local session lies from studio `j`'s now, ms of beat time.
    fn apart_ms(&self, i: usize, j: usize) -> f64 {
        (self.beat(i, self.t) - self.beat(j, self.t)) * 60e3 / self.studios[j].local.tempo
    }
}

fn generation(s: &Studio) -> u64 {
    s.sync.status(0).expect("a grid").generation
}

#[test]
fn two_fresh_studios_take_the_playing_ones_grid() {
    // A (smaller id) is stopped at 100 BPM; B plays at 128 BPM with a clock 3.2 s ahead.
    let a = Studio::new(1, 0, 100.0, false);
    let b = Studio::new(2, 3_200_000_000, 128.0, true);
    let mut w = World::new(vec![a, b], 40_000_000);
    w.run(500);
    for s in &w.studios {
        assert_eq!(s.local.tempo, 128.0);
        assert!(s.local.playing);
        assert_eq!(generation(s), 0);
    }
    // One line in absolute time: the beats agree to well under a microsecond.
    assert!(w.apart_ms(0, 1).abs() < 0.001, "{} ms", w.apart_ms(0, 1));
    let a = w.studios[0].sync.status(0).unwrap();
    let b = w.studios[1].sync.status(0).unwrap();
    assert_eq!((a.counters.adopted, a.ours), (1, false));
    assert_eq!((b.counters.adopted, b.ours), (0, true));
    // Both stopped: the smaller id's grid.
    let mut w = World::new(
        vec![
            Studio::new(9, 0, 90.0, false),
            Studio::new(3, -7_000_000, 140.0, false),
        ],
        40_000_000,
    );
    w.run(500);
    assert!(w.studios.iter().all(|s| s.local.tempo == 140.0));
}

#[test]
fn a_tempo_change_lands_on_the_same_beat_on_both_sides() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, true),
            Studio::new(2, 987_654_321, 120.0, true),
        ],
        40_000_000,
    );
    w.run(500);
    assert!(w.apart_ms(0, 1).abs() < 0.001);
    // B's DAW changes the tempo at beat `x`.
    let change_t = w.t;
    let b_now = w.studios[1].clock(change_t);
    let x = w.studios[1].local.beat(b_now);
    w.studios[1].local.set_tempo(b_now, 93.5);
    w.run(200);
    let a = &w.studios[0];
    assert_eq!(a.local.tempo, 93.5);
    // A's session passes beat x at the change's absolute time, at the new tempo.
    let at_change = a.local.beat(a.clock(change_t));
    assert!((at_change - x).abs() * 500.0 < 0.001, "{at_change} vs {x}");
    assert!(w.apart_ms(0, 1).abs() < 0.001);
    assert_eq!(generation(&w.studios[0]), 1);
    assert_eq!(generation(&w.studios[1]), 1);
    let a = w.studios[0].sync.status(0).unwrap();
    assert_eq!(a.author, PeerId([2; 8]).to_string());
    assert_eq!(a.counters.adopted, 1);
    // Stop on A: B stops, at the same beat.
    let a_now = w.studios[0].clock(w.t);
    w.studios[0].local.playing = false;
    w.studios[0].local.beat_origin = w.studios[0].local.beat(a_now);
    w.studios[0].local.origin_ns = a_now;
    w.run(100);
    assert!(!w.studios[1].local.playing);
    assert_eq!(generation(&w.studios[1]), 2);
    assert!(w.apart_ms(0, 1).abs() < 0.001);
}

#[test]
fn a_beat_jump_travels_and_small_wobbles_do_not() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, true),
            Studio::new(2, 5_000_000, 120.0, true),
        ],
        20_000_000,
    );
    w.run(300);
    // A's session is moved by 0.05 ms (Link re-measured): below the align threshold, nothing
    // goes out as a change.
    w.studios[0].local.origin_ns -= 50_000;
    w.run(300);
    assert_eq!(generation(&w.studios[1]), 0);
    // A jumps by a beat and a half (the DAW located): B follows.
    w.studios[0].local.beat_origin += 1.5;
    w.run(100);
    assert_eq!(generation(&w.studios[1]), 1);
    assert!(w.apart_ms(0, 1).abs() < 0.001, "{}", w.apart_ms(0, 1));
}

#[test]
fn changes_made_at_once_resolve_the_same_way_everywhere() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, true),
            Studio::new(2, 0, 120.0, true),
        ],
        40_000_000,
    );
    w.run(300);
    // Both change tempo within the path delay: same generation, the smaller id wins.
    let now = w.studios[0].clock(w.t);
    w.studios[0].local.set_tempo(now, 110.0);
    w.studios[1].local.set_tempo(now, 130.0);
    w.run(500);
    assert!(w.studios.iter().all(|s| s.local.tempo == 110.0));
    assert!(w.studios.iter().all(|s| generation(s) == 1));
    assert!(w.apart_ms(0, 1).abs() < 0.001);
    let b = w.studios[1].sync.status(0).unwrap();
    assert!(b.counters.adopted >= 1 && !b.ours);
    // Start and a tempo change at once: the playing grid wins over the smaller id.
    for s in &mut w.studios {
        s.local.playing = false;
    }
    w.run(300);
    let now = w.studios[0].clock(w.t);
    w.studios[0].local.set_tempo(now, 100.0);
    w.studios[1].local.playing = true;
    w.run(500);
    assert!(
        w.studios
            .iter()
            .all(|s| s.local.playing && s.local.tempo == 110.0)
    );
}

#[test]
fn a_late_joiner_adopts_the_changed_session_even_while_playing() {
    let mut w = World::new(
        vec![
            Studio::new(5, 0, 120.0, true),
            Studio::new(6, 11_000_000, 120.0, true),
        ],
        30_000_000,
    );
    w.run(300);
    let now = w.studios[1].clock(w.t);
    w.studios[1].local.set_tempo(now, 124.0);
    w.run(300);
    // A third studio, smaller id, playing its own 90 BPM, joins the changed session.
    w.studios.push(Studio::new(1, 3_000_000_000, 90.0, true));
    w.run(500);
    for s in &w.studios {
        assert_eq!(s.local.tempo, 124.0);
        assert_eq!(generation(s), 1);
    }
    assert!(w.apart_ms(2, 0).abs() < 0.001);
    assert!(w.apart_ms(2, 1).abs() < 0.001);
}

#[test]
fn drift_between_clocks_is_followed_within_the_align_threshold() {
    // B's clock runs 50 ppm fast: 3 ms a minute. The receiver maps through the exact offset
    // (as a converged estimator with drift does); A's resends re-align B.
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, true),
            Studio::new(2, 1_000_000, 120.0, true),
        ],
        40_000_000,
    );
    w.studios[1].ppm = 50.0;
    let mut worst: f64 = 0.0;
    for _ in 0..60 {
        w.run(1000);
        worst = worst.max(w.apart_ms(0, 1).abs());
    }
    let b = w.studios[1].sync.status(0).unwrap();
    // A studio's own session runs on its own clock, so it drifts off between re-alignments,
    // by at most the threshold plus one resend's worth of drift (50 µs).
    assert!(worst < 0.16, "worst {worst} ms");
    assert!(b.counters.realigned >= 10, "{b:?}");
    // Without the re-alignments B would be 3 ms off after the minute (50 ppm × 60 s).
}

#[test]
fn older_grids_are_counted_and_answered_with_ours() {
    let mut a = GridSync::new(PeerId([1; 8]));
    let view = LocalView {
        tempo_bpm: 120.0,
        beat: 0.0,
        playing: true,
        quantum: 4.0,
    };
    a.observe(1_000, Some(view), true);
    a.observe(
        2_000,
        Some(LocalView {
            tempo_bpm: 121.0,
            ..view
        }),
        true,
    );
    assert_eq!(a.status(0).unwrap().generation, 1);
    while a.poll_send(2_000).is_some() {}
    let old = RemoteTimeline {
        tempo_bpm: 90.0,
        beat_origin: 0.0,
        time_origin_ns: 0,
        playing: true,
        quantum: 4.0,
        generation: 0,
        author: PeerId([0; 8]),
    };
    assert_eq!(a.handle(3_000, PeerId([0; 8]), &old, 0), Handled::Stale);
    assert_eq!(a.status(0).unwrap().counters.stale, 1);
    assert_eq!(a.status(0).unwrap().tempo_bpm, 121.0);
    assert!(a.poll_send(3_000).is_some(), "ours goes out at once");
    assert!(a.take_pending().is_none());
}

#[test]
fn without_a_link_session_the_grid_waits_and_is_applied_later() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 128.0, true),
            Studio::new(2, 0, 100.0, false),
        ],
        10_000_000,
    );
    w.linked = false;
    w.run(300);
    // Nothing to send without a view; nothing applied.
    assert!(w.studios[1].sync.status(0).is_none());
    assert_eq!(w.studios[1].local.tempo, 100.0);
    w.linked = true;
    w.run(300);
    assert!(w.studios.iter().all(|s| s.local.tempo == 128.0));
    assert!(w.studios[1].sync.status(0).unwrap().linked);
}

#[test]
fn joining_a_lan_session_late_does_not_override_the_studios_grid() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 128.0, true),
            Studio::new(2, 2_000_000, 128.0, false),
        ],
        40_000_000,
    );
    w.run(500);
    assert!(w.studios[1].local.playing);
    // B's Link peer now joins an older session on its LAN (stopped at 90 BPM): the join
    // replaces its timeline, and the grid goes back into the session instead of out.
    let now = w.studios[1].clock(w.t);
    w.studios[1].local = Local {
        tempo: 90.0,
        beat_origin: 7.25,
        origin_ns: now,
        playing: false,
    };
    let view = w.studios[1].local.view(now);
    w.studios[1].sync.link_joined(now as u64, view);
    w.run(300);
    for s in &w.studios {
        assert_eq!((s.local.tempo, s.local.playing), (128.0, true));
        assert_eq!(generation(s), 0);
    }
    assert!(w.apart_ms(0, 1).abs() < 0.001);
    let b = w.studios[1].sync.status(0).unwrap();
    assert_eq!(
        (b.counters.reasserted, b.counters.authored),
        (1, 0),
        "{b:?}"
    );
    // Before any studio was met, a join is simply the local grid.
    let mut lone = GridSync::new(PeerId([3; 8]));
    let view = LocalView {
        tempo_bpm: 100.0,
        beat: 0.0,
        playing: false,
        quantum: 4.0,
    };
    lone.observe(1_000, Some(view), false);
    lone.link_joined(2_000, view);
    lone.observe(
        2_000,
        Some(LocalView {
            tempo_bpm: 90.0,
            ..view
        }),
        false,
    );
    assert!(lone.take_pending().is_none());
    assert_eq!(lone.status(2_000).unwrap().tempo_bpm, 90.0);
}

#[test]
fn a_lan_session_that_plays_wins_over_a_stopped_grid_at_join() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, false),
            Studio::new(2, 9_000_000, 120.0, false),
        ],
        40_000_000,
    );
    w.run(500);
    // A's Link peer joins a LAN session that plays at 130 BPM: that is news, and it becomes
    // the grid everywhere.
    let now = w.studios[0].clock(w.t);
    w.studios[0].local = Local {
        tempo: 130.0,
        beat_origin: 3.5,
        origin_ns: now,
        playing: true,
    };
    let view = w.studios[0].local.view(now);
    w.studios[0].sync.link_joined(now as u64, view);
    w.run(300);
    for s in &w.studios {
        assert_eq!((s.local.tempo, s.local.playing), (130.0, true));
        assert_eq!(generation(s), 1);
    }
    assert!(w.apart_ms(0, 1).abs() < 0.001);
    // B's Link peer then joins a LAN session that also plays, at 90: the studios' playing
    // grid came from A, so B's LAN session takes it.
    let now = w.studios[1].clock(w.t);
    w.studios[1].local = Local {
        tempo: 90.0,
        beat_origin: 0.0,
        origin_ns: now,
        playing: true,
    };
    let view = w.studios[1].local.view(now);
    w.studios[1].sync.link_joined(now as u64, view);
    w.run(300);
    assert!(w.studios.iter().all(|s| s.local.tempo == 130.0));
    assert_eq!(generation(&w.studios[1]), 1);
}

#[test]
fn an_aligned_studio_plays_the_grid_later_and_its_changes_stay_on_the_grid() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, true),
            Studio::new(2, 4_000_000, 120.0, false),
        ],
        40_000_000,
    );
    // B hears A through an audio link 25 ms late: its session plays the grid 25 ms later.
    w.studios[1].sync.set_shift(25_000_000);
    w.run(500);
    assert!(
        (w.apart_ms(0, 1) - 25.0).abs() < 0.001,
        "{}",
        w.apart_ms(0, 1)
    );
    let b = w.studios[1].sync.status(0).unwrap();
    assert_eq!(b.align_ms, 25.0);
    // B's own tempo change reaches A on the grid, not 25 ms off it.
    let b_now = w.studios[1].clock(w.t);
    w.studios[1].local.set_tempo(b_now, 100.0);
    w.run(300);
    assert_eq!(w.studios[0].local.tempo, 100.0);
    assert!(
        (w.apart_ms(0, 1) - 25.0).abs() < 0.001,
        "{}",
        w.apart_ms(0, 1)
    );
    // Back to "same time": B's session moves, nobody's grid changes.
    let generation_before = generation(&w.studios[0]);
    w.studios[1].sync.set_shift(0);
    w.run(300);
    assert!(w.apart_ms(0, 1).abs() < 0.001, "{}", w.apart_ms(0, 1));
    assert_eq!(generation(&w.studios[0]), generation_before);
    assert_eq!(generation(&w.studios[1]), generation_before);
}

#[test]
fn a_local_change_made_with_an_alignment_change_is_kept() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, true),
            Studio::new(2, 6_000_000, 120.0, true),
        ],
        40_000_000,
    );
    w.run(500);
    // In one pass B's DAW changes the tempo and B's alignment setting changes.
    let b_now = w.studios[1].clock(w.t);
    w.studios[1].local.set_tempo(b_now, 97.0);
    w.studios[1].sync.set_shift(20_000_000);
    w.run(300);
    assert!(w.studios.iter().all(|s| s.local.tempo == 97.0));
    assert_eq!(generation(&w.studios[0]), 1);
    assert!(
        (w.apart_ms(0, 1) - 20.0).abs() < 0.001,
        "{}",
        w.apart_ms(0, 1)
    );
}

#[test]
fn after_the_author_leaves_the_smallest_id_keeps_the_grid_against_drift() {
    // B runs 40 ppm fast, C 40 ppm slow: 4.8 ms apart after a minute unless someone keeps
    // the grid.
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, true),
            Studio::new(2, 5_000_000, 120.0, true),
            Studio::new(3, -8_000_000, 120.0, true),
        ],
        40_000_000,
    );
    w.studios[1].ppm = 40.0;
    w.studios[2].ppm = -40.0;
    w.run(500);
    let a_now = w.studios[0].clock(w.t);
    w.studios[0].local.set_tempo(a_now, 126.0);
    w.run(500);
    assert!(w.studios[0].sync.status(0).unwrap().keeper);
    // A leaves; B (the smaller id left) stands in.
    w.present[0] = false;
    let mut worst: f64 = 0.0;
    for _ in 0..60 {
        w.run(1000);
        worst = worst.max(w.apart_ms(1, 2).abs());
    }
    let b = w.studios[1].sync.status(0).unwrap();
    let c = w.studios[2].sync.status(0).unwrap();
    assert!(b.keeper && !b.ours, "{b:?}");
    assert!(!c.keeper, "{c:?}");
    assert!(c.counters.realigned >= 10, "{c:?}");
    assert!(worst < 0.16, "worst {worst} ms");
    assert!(w.studios.iter().all(|s| s.local.tempo == 126.0));
}

#[test]
fn a_link_session_opened_mid_session_takes_the_grid_even_stopped() {
    let mut w = World::new(
        vec![
            Studio::new(1, 0, 120.0, false),
            Studio::new(2, 3_000_000, 120.0, false),
        ],
        40_000_000,
    );
    w.run(500);
    // B's Link is switched off and on: the new peer founds its own session (100 BPM,
    // stopped), which is no change of the grid.
    let now = w.studios[1].clock(w.t);
    w.studios[1].local = Local {
        tempo: 100.0,
        beat_origin: 0.0,
        origin_ns: now,
        playing: false,
    };
    let view = w.studios[1].local.view(now);
    w.studios[1].sync.link_opened(now as u64, view, false);
    w.run(300);
    for s in &w.studios {
        assert_eq!((s.local.tempo, s.local.playing), (120.0, false));
        assert_eq!(generation(s), 0);
    }
    assert!(w.apart_ms(0, 1).abs() < 0.001);
    let b = w.studios[1].sync.status(0).unwrap();
    assert_eq!((b.counters.reasserted, b.counters.authored), (1, 0));
    // Opening onto a LAN session that plays is news, as a join is.
    let now = w.studios[0].clock(w.t);
    w.studios[0].local = Local {
        tempo: 133.0,
        beat_origin: 2.0,
        origin_ns: now,
        playing: true,
    };
    let view = w.studios[0].local.view(now);
    w.studios[0].sync.link_opened(now as u64, view, true);
    w.run(300);
    assert!(w.studios.iter().all(|s| s.local.tempo == 133.0));
    assert_eq!(generation(&w.studios[1]), 1);
}

#[test]
fn timelines_out_of_bounds_are_refused_and_counted() {
    let mut a = GridSync::new(PeerId([1; 8]));
    let view = LocalView {
        tempo_bpm: 120.0,
        beat: 0.0,
        playing: true,
        quantum: 4.0,
    };
    let now: u64 = 5_000_000_000;
    a.observe(now, Some(view), true);
    let honest = RemoteTimeline {
        tempo_bpm: 90.0,
        beat_origin: 1.0,
        time_origin_ns: 5_000_000_000,
        playing: true,
        quantum: 4.0,
        generation: 7,
        author: PeerId([2; 8]),
    };
    let from = PeerId([2; 8]);
    let bad = [
        // Mapped more than a day away, or at the ends of the clock.
        RemoteTimeline {
            time_origin_ns: 5_000_000_000 + MAX_ORIGIN_AGE_NS + 1,
            ..honest
        },
        RemoteTimeline {
            time_origin_ns: i64::MIN,
            ..honest
        },
        RemoteTimeline {
            time_origin_ns: i64::MAX,
            ..honest
        },
        // A generation leap that would freeze the grid.
        RemoteTimeline {
            generation: u64::MAX,
            ..honest
        },
        // A beat no honest peer reaches.
        RemoteTimeline {
            beat_origin: 1e300,
            ..honest
        },
    ];
    for timeline in &bad {
        assert_eq!(a.handle(now, from, timeline, 0), Handled::Refused);
    }
    // An offset at the end of the range maps nothing either.
    assert_eq!(a.handle(now, from, &honest, i64::MIN), Handled::Refused);
    let status = a.status(now).unwrap();
    assert_eq!(status.counters.refused, 6);
    assert_eq!((status.tempo_bpm, status.generation), (120.0, 0));
    assert!(a.take_pending().is_none());
    // The honest one is still taken.
    assert_eq!(a.handle(now, from, &honest, 0), Handled::Adopted);
    assert_eq!(a.status(now).unwrap().tempo_bpm, 90.0);
}
