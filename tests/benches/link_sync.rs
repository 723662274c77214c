//! Lockstep's Link peer against the real Link library (aalink), on loopback inside the private
//! network namespace `cargo xtask bench` creates (Link multicasts must never leave it).
//!
//! aalink founds a session at 120 BPM and changes its tempo at its 15th, 30th, 45th and 60th
//! second; Lockstep's peer (the worker's driver, polled every millisecond as the worker does)
//! joins 2 s after it and changes the tempo itself at its 20th and 50th second. aalink reads
//! its beat every 5 ms on Link's clock; our beat at the same instants comes from a record of
//! what our peer believed at each moment (one machine, one clock).
//!
//! A second aalink peer, the baseline, joins the same session 1 s after the first (more than
//! Link's 500 ms, so the first one's session is the older and wins) and makes no change of its
//! own. It reads its beat every millisecond, as often as our peer's record is taken, and stands
//! in for our peer in the same comparison: the same readings of the first aalink, the same
//! window, the same quantiles. The real library against itself on this machine, in this run,
//! is what Lockstep's figure is read against. One difference, Link's own: a library peer
//! keeps its own beat count and shares only the phase in its quantum (aalink's is 1 beat), so
//! the two aalink beats differ by whole beats (2 in a trial run) and the baseline measures the
//! distance to the nearest whole beat. Ours is held to more: the session's beat itself.
//! Prints four JSON lines:
//! - `{"kind": "phase", "p50_us", "p99_us", "max_us", "max_steady_us", "readings",
//!   "window_s"}`: |beat difference| in time over 60 s from one second after joining, tempo
//!   changes included; `max_steady_us` leaves out the 100 ms after each tempo change (until
//!   the other peer has heard of a change, it plays on at the old tempo: Link peers broadcast
//!   a change at most every 50 ms, so that window is the protocol's, not a clock error);
//! - `{"kind": "phase_baseline", ...}`: the same fields, the second aalink in place of ours
//!   (modulo aalink's 1-beat quantum);
//! - `{"kind": "join", "join_ms"}`: from opening our peer to being in aalink's session;
//! - `{"kind": "tempo", "to_aalink_ms", "from_aalink_ms", "changes", "resolution_ms"}`: the
//!   slowest tempo change to converge on the other peer, each way (aalink's side is seen
//!   through its 5 ms readings: that is the resolution).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lockstep_host::harness::ScriptPeer;
use lockstep_host::link::{BeatSample, History, beat_samples, phase_errors_us, quantile};
use lockstep_net::worker::link::{LinkDriver, now_micros};
use serde_json::json;

fn main() {
    if let Err(e) = run() {
        eprintln!("link bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let changes = [(15, 128.0), (30, 96.0), (45, 140.0), (60, 120.0)];
    let mut args: Vec<String> = vec!["120".into(), "1".into(), "74".into()];
    for (at, tempo) in changes {
        args.push(at.to_string());
        args.push(tempo.to_string());
    }
    let peer = ScriptPeer::spawn_with_env("aalink_peer.py", &args, &[("AALINK_SAMPLE_MS", "5")])?;
    peer.wait("aalink", |l| l.iter().any(|v| v["event"] == "ready"))?;
    std::thread::sleep(Duration::from_secs(1));
    // The baseline peer: founds its own session at 90 BPM (as ours does), so the first reading
    // at 120 BPM is the moment it joined the first aalink's.
    let baseline = ScriptPeer::spawn_with_env(
        "aalink_peer.py",
        &["90".into(), "1".into(), "74".into()],
        &[("AALINK_SAMPLE_MS", "1")],
    )?;
    baseline.wait("the baseline aalink", |l| {
        l.iter().any(|v| v["event"] == "ready")
    })?;
    std::thread::sleep(Duration::from_secs(1));

    let opened = Instant::now();
    let mut ours = LinkDriver::open(Ipv4Addr::LOCALHOST, 90.0)?;
    let mut history = History::new();
    let mut joined: Option<(f64, Instant)> = None;
    // Our own changes: (seconds after opening, tempo, Link time it was made).
    let mut own = [(20.0, 110.0, None), (50.0, 133.0, None)];
    // aalink's changes as we saw them: (tempo, Link time our peer had it).
    let mut seen: Vec<(f64, f64)> = Vec::new();
    let mut last_tempo = 0.0;
    let end = opened + Duration::from_secs(66);
    while Instant::now() < end {
        let now = now_micros();
        let elapsed = opened.elapsed().as_secs_f64();
        for change in &mut own {
            if change.2.is_none() && elapsed >= change.0 {
                ours.core_mut().set_tempo(now, change.1);
                change.2 = Some(now as f64);
            }
        }
        ours.poll(now, true);
        let core = ours.core();
        if joined.is_none() && core.counters().joins > 0 {
            joined = Some((now as f64, Instant::now()));
        }
        if (core.tempo() - last_tempo).abs() > 1e-6 {
            last_tempo = core.tempo();
            seen.push((last_tempo, now as f64));
        }
        history.record(now as f64, core.beats_at(now), core.tempo());
        std::thread::sleep(Duration::from_millis(1));
    }
    let (joined_at, joined_instant) = joined.ok_or_else(|| anyhow::anyhow!("never joined"))?;
    let lines = peer.lines();
    let samples = beat_samples(&lines);
    let baseline_samples = beat_samples(&baseline.lines());
    drop(baseline);

    let from = joined_at + 1e6;
    // Every tempo change, ours and aalink's (Link µs).
    let change_times: Vec<f64> = own
        .iter()
        .filter_map(|c| c.2)
        .chain(
            lines
                .iter()
                .filter(|v| v["event"] == "changed")
                .filter_map(|v| v["t"].as_f64()),
        )
        .collect();
    let (errors, steady) = phase_window(&history, &samples, from, &change_times, None);
    anyhow::ensure!(errors.len() > 1000, "{} readings", errors.len());
    // The baseline must be in the session for the whole window, as ours is.
    let baseline_joined = baseline_samples
        .iter()
        .find(|s| (s.tempo - 120.0).abs() < 0.01)
        .ok_or_else(|| anyhow::anyhow!("the baseline aalink never joined"))?;
    anyhow::ensure!(
        baseline_joined.t < from,
        "the baseline aalink joined {:.0} ms after the window opened",
        (baseline_joined.t - from) / 1e3
    );
    let mut baseline_history = History::new();
    for s in &baseline_samples {
        baseline_history.record(s.t, s.beat, s.tempo);
    }
    let (baseline_errors, baseline_steady) =
        phase_window(&baseline_history, &samples, from, &change_times, Some(1.0));
    anyhow::ensure!(
        baseline_errors.len() > 1000,
        "{} baseline readings",
        baseline_errors.len()
    );

    // Our changes reaching aalink: its first reading at the new tempo.
    let mut to_aalink: f64 = 0.0;
    for (_, tempo, made) in own {
        let made = made.ok_or_else(|| anyhow::anyhow!("change not made"))?;
        let there = samples
            .iter()
            .find(|s| s.t >= made && (s.tempo - tempo).abs() < 0.01)
            .ok_or_else(|| anyhow::anyhow!("aalink never took {tempo} BPM"))?;
        to_aalink = to_aalink.max((there.t - made) / 1e3);
    }
    // aalink's changes reaching us.
    let mut from_aalink: f64 = 0.0;
    for v in lines.iter().filter(|v| v["event"] == "changed") {
        let (Some(tempo), Some(made)) = (v["tempo"].as_f64(), v["t"].as_f64()) else {
            continue;
        };
        let here = seen
            .iter()
            .find(|(t, at)| *at >= made - 1e3 && (t - tempo).abs() < 0.01)
            .ok_or_else(|| anyhow::anyhow!("we never took aalink's {tempo} BPM"))?;
        from_aalink = from_aalink.max((here.1 - made).max(0.0) / 1e3);
    }

    println!("{}", phase_line("phase", &errors, &steady));
    println!(
        "{}",
        phase_line("phase_baseline", &baseline_errors, &baseline_steady)
    );
    println!(
        "{}",
        json!({
            "kind": "join",
            "join_ms": joined_instant.duration_since(opened).as_secs_f64() * 1e3,
        })
    );
    println!(
        "{}",
        json!({
            "kind": "tempo",
            "to_aalink_ms": to_aalink,
            "from_aalink_ms": from_aalink,
            "changes": own.len() + changes.len(),
            "resolution_ms": 5,
        })
    );
    Ok(())
}

/// The phase errors (µs) of `ours` at `theirs`' readings over the 60 s from `from`, all of them
/// and those outside the 100 ms after each tempo change in `change_times` (Link µs). A reading
/// that `ours` has no record within 5 ms before is left out (each reading is paired with its
/// own error, so such a gap cannot shift the later ones onto other readings' times). With a
/// `quantum` (beats), whole quanta of difference do not count: Link's agreement between two
/// library peers is in phase only.
fn phase_window(
    ours: &History,
    theirs: &[BeatSample],
    from: f64,
    change_times: &[f64],
    quantum: Option<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let in_window: Vec<(f64, f64)> = theirs
        .iter()
        .filter(|s| s.t >= from && s.t <= from + 60e6)
        .filter_map(|s| {
            let e = *phase_errors_us(ours, std::slice::from_ref(s), from).first()?;
            let e = match quantum {
                Some(q) => {
                    let quanta = e * s.tempo / 60e6 / q;
                    (quanta - quanta.round()).abs() * q * 60e6 / s.tempo
                }
                None => e,
            };
            Some((e, s.t))
        })
        .collect();
    let errors = in_window.iter().map(|(e, _)| *e).collect();
    let steady = in_window
        .iter()
        .filter(|(_, t)| !change_times.iter().any(|c| *t >= *c && *t < c + 100e3))
        .map(|(e, _)| *e)
        .collect();
    (errors, steady)
}

/// One phase line of the output.
fn phase_line(kind: &str, errors: &[f64], steady: &[f64]) -> serde_json::Value {
    json!({
        "kind": kind,
        "p50_us": quantile(errors, 0.5),
        "p99_us": quantile(errors, 0.99),
        "max_us": quantile(errors, 1.0),
        "max_steady_us": quantile(steady, 1.0),
        "readings": errors.len(),
        "window_s": 60,
    })
}
