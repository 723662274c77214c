//! Audio passes through bit-exact with zero latency, at every sample rate and block size the
//! harness can throw at it, in stereo and mono, in the release and the allocation-checked debug
//! bundle, while the transport plays, changes tempo, locates and loops.

use anyhow::{Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{Rng, exclusive, wait_drained};
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;

/// Block-size schedules; `Varying` draws 1..=4096 from a seeded PRNG.
#[derive(Debug, Clone, Copy)]
enum Blocks {
    Fixed(u32),
    Varying,
}

const MAX_BLOCK: u32 = 4096;

fn passthrough(build: Build, sample_rate: f64, layout: Layout, blocks: Blocks) -> Result<()> {
    let path = build.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = bundle.instantiate()?;
    instance.select_layout(layout)?;
    let mut processor = instance.activate(sample_rate, MAX_BLOCK, layout)?;
    let mut transport = HostTransport::new(120.0, (4, 4));
    transport.playing = true;

    // A quarter of a second of audio per configuration, or 400 blocks of one sample.
    let total = match blocks {
        Blocks::Fixed(1) => 400,
        _ => (sample_rate / 4.0) as u64,
    };
    let mut rng = Rng::new(sample_rate as u64 ^ layout.channels() as u64);
    let mut done = 0u64;
    let mut count = 0u64;
    while done < total {
        let len = match blocks {
            Blocks::Fixed(n) => n,
            Blocks::Varying => rng.range(1, MAX_BLOCK),
        };
        for ch in 0..layout.channels() {
            for sample in &mut processor.input_mut(ch)[..len as usize] {
                *sample = rng.any_f32();
            }
        }
        // Script the transport: tempo change, locate and a loop along the way.
        match count {
            3 => transport.tempo_bpm = 97.5,
            5 => transport.locate(17.25),
            7 => transport.set_loop(Some((16.0, 18.0))),
            _ => {}
        }
        processor.process(len, Some(&transport.event()), &[])?;
        for ch in 0..layout.channels() {
            let input = &processor.input_mut(ch)[..len as usize].to_vec();
            let output = &processor.output(ch)[..len as usize];
            for (i, (a, b)) in input.iter().zip(output).enumerate() {
                ensure!(
                    a.to_bits() == b.to_bits(),
                    "{build:?} {sample_rate} Hz {layout:?} {blocks:?}: block {count} ch {ch} \
                     sample {i}: in {:#010x} out {:#010x}",
                    a.to_bits(),
                    b.to_bits()
                );
            }
        }
        transport.advance(len, sample_rate);
        done += u64::from(len);
        count += 1;
    }

    // Every block's snapshot was either delivered or counted as dropped.
    let status = wait_drained(&probe)?;
    let me = &status.worker.instances[0];
    // One snapshot per block, the clock messages, and clock-state changes.
    let clock = me.clock_messages + me.clock_lost;
    ensure!(
        me.events_pushed + me.events_dropped_full >= count + clock,
        "{count} blocks and {clock} clock messages but {} pushed + {} dropped",
        me.events_pushed,
        me.events_dropped_full
    );
    ensure!(
        me.clock_ticks > 0,
        "the transport played but no tick arrived: {me:?}"
    );
    instance.deactivate(processor);
    ensure!(
        instance.problems().is_empty(),
        "plugin logged {:?}",
        instance.problems()
    );
    Ok(())
}

fn matrix(build: Build) -> Result<()> {
    let _guard = exclusive();
    for sample_rate in [44_100.0, 48_000.0, 96_000.0] {
        for layout in [Layout::Stereo, Layout::Mono] {
            for blocks in [
                Blocks::Fixed(1),
                Blocks::Fixed(64),
                Blocks::Fixed(512),
                Blocks::Fixed(4096),
                Blocks::Varying,
            ] {
                passthrough(build, sample_rate, layout, blocks)?;
            }
        }
    }
    Ok(())
}

#[test]
fn bit_exact_passthrough_release() -> Result<()> {
    matrix(Build::Release)
}

#[test]
fn bit_exact_passthrough_debug_alloc_checked() -> Result<()> {
    matrix(Build::DebugAllocChecked)
}
