//! Cost of one `process()` call: 64 stereo samples at 48 kHz with a playing transport, through
//! the headless CLAP host, for Lockstep (at 120 and 999 BPM) and for a do-nothing nice-plug
//! baseline in the same run.
//! `cargo xtask bench` turns the results into the bench table.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use lockstep_host::bundle::target_dir;
use lockstep_host::harness::Rng;
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::transport::HostTransport;

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 64;

fn bench_plugin(c: &mut Criterion, name: &str, file: &str, id: &std::ffi::CStr, tempo: f64) {
    let bundle = Bundle::load(&target_dir().join("bundled").join(file)).expect("bundle built");
    let mut instance = bundle.instantiate_id(id).expect("instance");
    let mut processor = instance
        .activate(RATE, BLOCK, Layout::Stereo)
        .expect("activate");
    let mut rng = Rng::new(7);
    for ch in 0..2 {
        for s in processor.input_mut(ch) {
            *s = (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0;
        }
    }
    let mut transport = HostTransport::new(tempo, (4, 4));
    transport.playing = true;
    c.bench_function(&format!("process_64_48k/{name}"), |b| {
        b.iter(|| {
            let event = transport.event();
            black_box(
                processor
                    .process(BLOCK, Some(&event), &[])
                    .expect("process"),
            );
            transport.advance(BLOCK, RATE);
        });
    });
    instance.deactivate(processor);
}

fn process_cost(c: &mut Criterion) {
    let lockstep = lockstep_host::host::LOCKSTEP_CLAP_ID;
    let baseline = c"dev.lockstep.bench-baseline";
    bench_plugin(c, "baseline", "LockstepBaseline.clap", baseline, 120.0);
    bench_plugin(c, "lockstep", "Lockstep.clap", lockstep, 120.0);
    // 999 BPM: a tick every 2.5 ms, so many 64-sample blocks carry clock work.
    bench_plugin(c, "lockstep_999bpm", "Lockstep.clap", lockstep, 999.0);
}

criterion_group!(benches, process_cost);
criterion_main!(benches);
