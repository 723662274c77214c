//! Departure jitter of RTP-MIDI clock packets on loopback (run by `cargo xtask bench` inside a
//! private network namespace). The built plugin plays 60 s in real time through the headless
//! host at 120 and then 300 BPM; a minimal AppleMIDI responder in this process accepts the
//! session, answers CK and takes every clock packet's kernel receive timestamp (SO_TIMESTAMPNS,
//! so the responder thread's own wake-up delays are not counted). With the tempo constant,
//! every tick interval should be exactly 60 / (BPM × 24) s: the deviation of each arrival
//! interval from that is the departure jitter (loopback adds microseconds at most).
//!
//! Each tempo is played `LOCKSTEP_DEPARTURE_RUNS` times (default 3) and the worst run's
//! figures are reported, first on a quiet machine, then with two busy normal-priority threads
//! loading both cores. The thread that calls `process()` asks for realtime priority, as a DAW's
//! audio thread has.
//!
//! Before each load's runs, the machine's floor: a bare thread with the send path's scheduling
//! sleeping to the same deadlines (no plugin, no network) — how late any sender wakes here.
//!
//! Prints one JSON object per load for the floor: {"kind": "floor", "load", "p50_us",
//! "p99_us", "max_us"}, and one per tempo and load: {"bpm", "load", "runs", "ticks",
//! "p50_us", "p99_us", "max_us"} (each the worst of the runs).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lockstep_host::bundle::Build;
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::responder::responder;
use lockstep_host::transport::HostTransport;
use lockstep_net::settings::PeerSettings;

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 256;
const PEER: u16 = 6104;

/// One run's (ticks, p50, p99, max) in µs.
fn run(bpm: f64, seconds: f64) -> (usize, f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let finish = responder(PEER, Arc::clone(&stop));
    let bundle = Bundle::load(&Build::Release.clap_path()).expect("bundle built");
    let probe =
        lockstep_host::status::StatusProbe::open(&Build::Release.clap_path()).expect("status");
    let mut instance = bundle.instantiate().expect("instance");
    let mut settings = instance.net_settings().expect("settings");
    settings.rtp_midi_port = 5104;
    settings.peers = vec![PeerSettings {
        name: "bench".into(),
        host: "127.0.0.1".into(),
        port: PEER,
        ..PeerSettings::default()
    }];
    instance.set_net_settings(&settings).expect("settings");
    let mut p = instance
        .activate(RATE, BLOCK, Layout::Stereo)
        .expect("activate");
    let mut t = HostTransport::new(bpm, (4, 4));
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let mut deadline = Instant::now();
    let blocks = (seconds * RATE / f64::from(BLOCK)) as u64;
    // One second idle for the session to come up, then play.
    let idle = (RATE / f64::from(BLOCK)) as u64;
    for b in 0..idle + blocks {
        t.playing = b >= idle;
        p.process(BLOCK, Some(&t.event()), &[]).expect("process");
        t.advance(BLOCK, RATE);
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(status) = probe.read() {
        let w = &status.worker;
        let timing = w.instances.first().map(|i| i.clock_timing);
        eprintln!(
            "departure {bpm} BPM: send path {:?} ({}), worker {} passes ({}), clock timing {timing:?}",
            w.send_path, w.send_scheduling, w.passes, w.scheduling
        );
    }
    instance.deactivate(p);
    let arrivals = finish();
    let ideal = 60.0 / bpm / 24.0 * 1e6;
    // Skip the first second of ticks (the estimator is still settling).
    let skip = (bpm / 60.0 * 24.0) as usize;
    let mut dev: Vec<f64> = arrivals
        .windows(2)
        .skip(skip)
        .map(|w| ((w[1] - w[0]) / 1e3 - ideal).abs())
        .collect();
    dev.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        dev.get(((dev.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (
        arrivals.len(),
        pct(0.5),
        pct(0.99),
        dev.last().copied().unwrap_or(f64::NAN),
    )
}

/// The machine's own floor: a bare thread with the send path's scheduling that sleeps to a
/// deadline every tick period at `bpm` (parking until 150 µs before, then spinning, as the
/// send path does) for `seconds`; how late it wakes, p50 / p99 / max in µs. No network, no
/// plugin: what any clock sender on this machine would see.
fn floor(bpm: f64, seconds: f64) -> (f64, f64, f64) {
    std::thread::spawn(move || {
        lockstep_net::sys::realtime(lockstep_net::worker::sender::PRIORITY);
        let period = Duration::from_secs_f64(60.0 / bpm / 24.0);
        let n = (seconds / period.as_secs_f64()) as usize;
        let mut late = Vec::with_capacity(n);
        let mut deadline = Instant::now() + period;
        for _ in 0..n {
            let now = lockstep_host::harness::wait_like_the_send_path(deadline);
            late.push((now - deadline).as_secs_f64() * 1e6);
            deadline += period;
        }
        late.sort_by(f64::total_cmp);
        let pct = |q: f64| late[((late.len() as f64 - 1.0) * q) as usize];
        (pct(0.5), pct(0.99), pct(1.0))
    })
    .join()
    .expect("floor thread")
}

/// Two threads at normal priority that keep both cores busy until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    // Threads inherit the realtime priority the process() thread asked for:
                    // the load is normal-priority work, as a DAW's other threads are.
                    lockstep_net::sys::normal_priority();
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn main() {
    let seconds: f64 = std::env::var("LOCKSTEP_DEPARTURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    let runs: usize = std::env::var("LOCKSTEP_DEPARTURE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // As a DAW's audio thread.
    eprintln!(
        "departure: process() thread {}",
        lockstep_net::sys::realtime(70)
    );
    for load in ["idle", "busy"] {
        let _load = (load == "busy").then(Load::start);
        let (p50, p99, max) = floor(120.0, seconds);
        eprintln!("machine floor {load}: p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.1} µs");
        println!(
            "{{\"kind\": \"floor\", \"load\": \"{load}\", \"p50_us\": {p50:.3}, \"p99_us\": {p99:.3}, \"max_us\": {max:.3}}}"
        );
        for bpm in [120.0, 300.0] {
            let mut worst = (0usize, 0.0f64, 0.0f64, 0.0f64);
            for i in 0..runs {
                let (ticks, p50, p99, max) = run(bpm, seconds);
                eprintln!(
                    "departure {bpm} BPM {load} run {i}: ticks {ticks}, p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.1} µs"
                );
                worst = (
                    if i == 0 { ticks } else { worst.0.min(ticks) },
                    worst.1.max(p50),
                    worst.2.max(p99),
                    worst.3.max(max),
                );
            }
            println!(
                "{{\"bpm\": {bpm}, \"load\": \"{load}\", \"runs\": {runs}, \"ticks\": {}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"max_us\": {:.3}}}",
                worst.0, worst.1, worst.2, worst.3
            );
        }
    }
}
