//! Activate / deactivate / destroy cycles: one worker thread shared by all instances, started
//! by the first activation, joined after the last deactivation, never leaked.
//!
//! This binary holds a single test on purpose: it counts threads of the whole process.

use anyhow::{Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::wait_for;
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;

fn cycles(build: Build) -> Result<()> {
    let path = build.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let before = probe.read()?;
    ensure!(
        !before.worker.running && before.live_worker_threads == 0,
        "{before:?}"
    );
    let starts = before.worker.worker_starts;

    // Instantiating does not start anything: DAWs scan plugins by instantiating them.
    let mut a = bundle.instantiate()?;
    let mut b = bundle.instantiate()?;
    let idle = probe.read()?;
    ensure!(
        !idle.worker.running && idle.live_worker_threads == 0,
        "{idle:?}"
    );

    // Two active instances share one worker.
    let mut pa = a.activate(48_000.0, 256, Layout::Stereo)?;
    let one = probe.read()?;
    ensure!(
        one.worker.running && one.live_worker_threads == 1,
        "{one:?}"
    );
    ensure!(one.worker.worker_starts == starts + 1, "{one:?}");
    let mut pb = b.activate(96_000.0, 64, Layout::Stereo)?;
    let both = probe.read()?;
    ensure!(both.live_worker_threads == 1, "one shared worker: {both:?}");
    ensure!(both.worker.worker_starts == starts + 1, "{both:?}");
    ensure!(both.worker.instances.len() == 2, "{both:?}");

    let transport = HostTransport::new(120.0, (4, 4));
    pa.process(256, Some(&transport.event()), &[])?;
    pb.process(64, Some(&transport.event()), &[])?;
    wait_for(&probe, "both instances' snapshots", |s| {
        s.worker.instances.iter().all(|i| i.blocks == 1)
    })?;

    // The first one going keeps the worker for the second.
    a.deactivate(pa);
    let left = probe.read()?;
    ensure!(
        left.worker.running && left.worker.instances.len() == 1,
        "{left:?}"
    );
    // The last one going joins it.
    b.deactivate(pb);
    let gone = wait_for(&probe, "the worker thread to exit", |s| {
        s.live_worker_threads == 0
    })?;
    ensure!(
        !gone.worker.running && gone.worker.instances.is_empty(),
        "{gone:?}"
    );

    // Repeated cycles at different rates and layouts start a fresh worker each time.
    for (i, (rate, layout)) in [
        (44_100.0, Layout::Stereo),
        (48_000.0, Layout::Mono),
        (96_000.0, Layout::Stereo),
        (192_000.0, Layout::Mono),
    ]
    .into_iter()
    .enumerate()
    {
        a.select_layout(layout)?;
        let p = a.activate(rate, 512, layout)?;
        let up = probe.read()?;
        ensure!(up.live_worker_threads == 1, "cycle {i}: {up:?}");
        ensure!(
            up.worker.worker_starts == starts + 2 + i as u64,
            "cycle {i}: {up:?}"
        );
        a.deactivate(p);
        wait_for(&probe, "the worker thread to exit", |s| {
            s.live_worker_threads == 0
        })?;
    }

    drop(a);
    drop(b);
    let end = probe.read()?;
    ensure!(
        !end.worker.running && end.live_worker_threads == 0,
        "{end:?}"
    );
    Ok(())
}

#[test]
fn worker_is_shared_started_and_joined() -> Result<()> {
    for build in Build::ALL {
        cycles(build)?;
    }
    Ok(())
}
