//! The audio-thread → worker spine: every block's transport snapshot reaches the network
//! worker with what the host reported (play state, tempo, time signature, positions, bar, loop,
//! recording, pre-roll), the instance's sample clock and a monotonic host timestamp.

use anyhow::{Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{exclusive, wait_drained};
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::processor::Processor;
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;
use lockstep_net::bridge::{TimeSignature, TransportSnapshot};

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 512;
/// CLAP carries beats as 31-bit fixed point and seconds likewise.
const FIXED_POINT_EPS: f64 = 1.0 / (1u64 << 31) as f64 * 2.0;

/// Process `blocks` blocks, returning the transport as reported for the last one.
fn play(p: &mut Processor, t: &mut HostTransport, blocks: u32) -> Result<HostTransport> {
    let mut last = *t;
    for _ in 0..blocks {
        last = *t;
        p.process(BLOCK, Some(&t.event()), &[])?;
        t.advance(BLOCK, RATE);
    }
    Ok(last)
}

fn last_snapshot(probe: &StatusProbe) -> Result<(TransportSnapshot, u64)> {
    let status = wait_drained(probe)?;
    let me = &status.worker.instances[0];
    ensure!(
        me.events_dropped_full == 0,
        "dropped {}",
        me.events_dropped_full
    );
    let snapshot = me
        .last_transport
        .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
    Ok((snapshot, me.blocks))
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= FIXED_POINT_EPS * b.abs().max(1.0))
}

fn check(snapshot: &TransportSnapshot, sent: &HostTransport, blocks_so_far: u64) -> Result<()> {
    ensure!(
        snapshot.playing == sent.playing,
        "playing: {snapshot:?} vs {sent:?}"
    );
    ensure!(
        snapshot.recording == sent.recording,
        "recording: {snapshot:?}"
    );
    ensure!(
        snapshot.preroll_active == Some(sent.pre_roll),
        "pre-roll: {snapshot:?}"
    );
    ensure!(
        snapshot.tempo_bpm == Some(sent.tempo_bpm),
        "tempo: {snapshot:?}"
    );
    ensure!(
        snapshot.time_sig
            == Some(TimeSignature {
                numerator: i32::from(sent.time_sig.0),
                denominator: i32::from(sent.time_sig.1),
            }),
        "time signature: {snapshot:?}"
    );
    ensure!(
        close(snapshot.pos_beats, sent.pos_beats()),
        "beats: {snapshot:?} vs {sent:?}"
    );
    ensure!(
        close(snapshot.pos_seconds, sent.pos_seconds()),
        "seconds: {snapshot:?}"
    );
    let expected_samples = (sent.pos_seconds() * RATE).round() as i64;
    ensure!(
        snapshot
            .pos_samples
            .is_some_and(|s| (s - expected_samples).abs() <= 1),
        "samples: {snapshot:?}, expected {expected_samples}"
    );
    let bar_len = sent.beats_per_bar();
    let bar = (sent.pos_beats() / bar_len).floor();
    ensure!(snapshot.bar_number == Some(bar as i32), "bar: {snapshot:?}");
    ensure!(
        close(snapshot.bar_start_beats, bar * bar_len),
        "bar start: {snapshot:?}"
    );
    match sent.loop_beats() {
        Some((start, end)) => {
            let (s, e) = snapshot.loop_range_beats.unwrap_or((f64::NAN, f64::NAN));
            ensure!(
                close(Some(s), start) && close(Some(e), end),
                "loop: {snapshot:?}"
            );
        }
        None => ensure!(snapshot.loop_range_beats.is_none(), "loop: {snapshot:?}"),
    }
    ensure!(snapshot.sample_rate == RATE as f32, "rate: {snapshot:?}");
    ensure!(snapshot.block_len == BLOCK, "block: {snapshot:?}");
    ensure!(
        snapshot.block_start_samples == (blocks_so_far - 1) * u64::from(BLOCK),
        "sample clock: {snapshot:?} after {blocks_so_far} blocks"
    );
    Ok(())
}

fn scripted(build: Build) -> Result<()> {
    let path = build.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = bundle.instantiate()?;
    let mut p = instance.activate(RATE, BLOCK, Layout::Stereo)?;
    let mut t = HostTransport::new(120.0, (4, 4));
    let mut blocks = 0u64;
    let mut previous_time = 0u64;
    let mut step = |p: &mut Processor, t: &mut HostTransport, n: u32| -> Result<()> {
        let sent = play(p, t, n)?;
        blocks += u64::from(n);
        let (snapshot, pushed) = last_snapshot(&probe)?;
        ensure!(pushed == blocks, "worker saw {pushed} of {blocks} blocks");
        check(&snapshot, &sent, blocks)?;
        ensure!(
            snapshot.host_time_ns > previous_time,
            "host time must increase"
        );
        previous_time = snapshot.host_time_ns;
        Ok(())
    };

    // Stopped at the start.
    step(&mut p, &mut t, 10)?;
    // Play.
    t.playing = true;
    step(&mut p, &mut t, 100)?;
    // Tempo and metre change while playing.
    t.tempo_bpm = 174.0;
    t.time_sig = (7, 8);
    step(&mut p, &mut t, 50)?;
    // Stop and locate while stopped.
    t.playing = false;
    t.locate(33.0);
    step(&mut p, &mut t, 5)?;
    // Loop 8..12 while playing: 4 beats at 174 BPM is ~1.38 s, 200 blocks is ~2.1 s.
    t.locate(8.0);
    t.set_loop(Some((8.0, 12.0)));
    t.playing = true;
    step(&mut p, &mut t, 200)?;
    ensure!(t.pos_beats() < 12.0, "the loop wrapped");
    // Recording in pre-roll, at an extreme tempo.
    t.set_loop(None);
    t.recording = true;
    t.pre_roll = true;
    t.tempo_bpm = 999.0;
    step(&mut p, &mut t, 20)?;

    instance.deactivate(p);
    Ok(())
}

#[test]
fn transport_reaches_worker_release() -> Result<()> {
    let _guard = exclusive();
    scripted(Build::Release)
}

#[test]
fn transport_reaches_worker_debug_alloc_checked() -> Result<()> {
    let _guard = exclusive();
    scripted(Build::DebugAllocChecked)
}
