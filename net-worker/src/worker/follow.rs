//! The process's Link peer and the Link-driven clocks: the first instance whose Link Mode is
//! not Off gives the peer its role (Lead publishes the DAW's tempo, start/stop and beat;
//! Follow takes the session's), and every instance in Follow gets its MIDI clock and OSC
//! transport feed from the session's timeline.
//!
//! Runs on the worker thread only.

use std::collections::BTreeMap;

use super::instance::{
    Attached, FOLLOW_HORIZON_US, param, pass_clock, quantum, switch_clock_source,
};
use super::{link, osc};
use crate::bridge;
use crate::clock::ClockState;
use crate::clock::link_clock::LinkClock;

/// Run the process's Link peer for the first instance whose Link Mode is not Off, and the
/// Link-driven clocks of instances in Follow. Returns when a Link-driven clock next has
/// messages to work out (host ns).
pub fn run_link(
    rings: &mut BTreeMap<u64, Attached>,
    service: &mut link::LinkService,
    mut osc: Option<&mut osc::OscServer>,
    readable: bool,
) -> Option<f64> {
    let now = link::now_micros();
    let leader = rings.values().find_map(|a| {
        let mode = link::LinkMode::from_normalized(param(a, "lnk_md")?);
        (mode != link::LinkMode::Off).then_some((a, mode))
    });
    // Only needed while some instance is in Link (a timeline exists only then): no clock
    // reads on every worker loop while Link is Off.
    let link_minus_host = if leader.is_some() {
        link::link_minus_host()
    } else {
        0.0
    };
    let interface = leader
        .and_then(|(a, _)| a.settings.as_ref())
        .map(|s| s.link_interface.clone())
        .unwrap_or_default();
    let (mode, daw, start_stop, quantum_, daw_beat) = match leader {
        Some((a, mode)) => {
            let daw = a
                .last_daw
                .and_then(|t| t.tempo_bpm.map(|bpm| (bpm, t.playing)));
            // The DAW's beat at its block start, heard at the block's smoothed host time
            // plus the assumed output latency (on Link's clock).
            let daw_beat = a.last_daw.and_then(|t| {
                let beat = t.pos_beats?;
                let host = a.estimator.host_ns_at(t.block_start_samples as f64)?;
                let heard = host + a.scheduler.config().latency_ns;
                Some((beat, (heard / 1e3 + link_minus_host).round() as i64))
            });
            let start_stop = param(a, "lnk_ss").is_none_or(|v| v >= 0.5);
            (mode, daw, start_stop, quantum(a), daw_beat)
        }
        None => (link::LinkMode::Off, None, false, 4.0, None),
    };
    service.quantum = quantum_;
    let link_due = service.update(now, mode, &interface, daw, start_stop, daw_beat, readable);
    let timeline = service.timeline(now);
    let host_now = bridge::host_time_ns();
    // The peer's own timers (ALIVE, measurement), on the host clock.
    let mut next: Option<f64> = link_due.map(|due| (due as f64 - link_minus_host) * 1e3);
    let mut follow = None;
    for (id, a) in rings.iter_mut() {
        let follows = timeline.is_some()
            && param(a, "lnk_md").map(link::LinkMode::from_normalized)
                == Some(link::LinkMode::Follow);
        if follows != a.link_clock.is_some() {
            a.link_clock = follows.then(LinkClock::new);
            switch_clock_source(a, host_now);
            if !follows {
                let tempo = a.last_daw.and_then(|t| t.tempo_bpm);
                a.scheduler.handle_tempo(tempo);
                if let Some(rtpmidi) = &mut a.rtpmidi {
                    rtpmidi.set_tempo(tempo);
                }
            }
        }
        let q = quantum(a);
        let (Some(clock), Some(tl)) = (a.link_clock.as_mut(), timeline.as_ref()) else {
            continue;
        };
        let config = a.scheduler.config();
        // Worked out as early as the earliest destination sends: the instance's own offset,
        // or a peer's (its offset, or its alignment to a far peer's latency).
        let early_ns = a
            .rtpmidi
            .as_ref()
            .map_or(0.0, |r| r.max_early_ns())
            .max(-config.offset_ns);
        let horizon = FOLLOW_HORIZON_US + early_ns.max(0.0) / 1e3;
        // Link times are when the listener hears a beat; the scheduler adds the output
        // latency to a stamp, so stamps are the Link time on the host clock minus it.
        let shift = -link_minus_host * 1e3 - config.latency_ns;
        let mut events = Vec::new();
        let due = clock.update(tl, q, now as f64, horizon, shift, &mut |e| events.push(e));
        let running = clock.running();
        let stats = clock.stats();
        a.scheduler.handle_tempo(Some(tl.tempo));
        if let Some(rtpmidi) = &mut a.rtpmidi {
            rtpmidi.set_tempo(Some(tl.tempo));
        }
        for event in events {
            pass_clock(a, host_now as f64, event);
        }
        a.clock.state = if running {
            ClockState::Running
        } else {
            ClockState::Stopped
        };
        if let Some(due) = due {
            let at = (due - link_minus_host) * 1e3;
            next = Some(next.map_or(at, |n: f64| n.min(at)));
        }
        if follow.is_none() {
            follow = Some(stats);
        }
        // The OSC transport feed follows the session too: its tempo, and the song position
        // since the quantized start.
        if let (Some(server), Some(mut t)) = (osc.as_deref_mut(), a.last_daw) {
            t.tempo_bpm = Some(tl.tempo);
            t.playing = running;
            t.pos_beats = running.then(|| tl.beat_at(now as f64) - stats.last_start_beat);
            t.bar_number = None;
            t.bar_start_beats = None;
            server.core.set_transport(*id, t);
        }
    }
    if let Some(server) = osc {
        server.core.set_link(service.feed(now, quantum_));
    }
    // Every 50 ms while in Link; while Off only once (the lock is not taken every loop).
    let off = mode == link::LinkMode::Off;
    if (!off && now >= service.status_at + 50_000) || (off && service.status_shown) {
        service.status_at = now;
        let mut status = service.status(now, mode, quantum_);
        if let Some(s) = &mut status {
            s.follow = follow;
        }
        service.status_shown = status.is_some();
        service.published_status = status;
    }
    next
}
