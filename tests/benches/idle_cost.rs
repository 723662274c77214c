//! What Lockstep's own threads cost while little happens (run by `cargo xtask bench` inside a
//! private network namespace). The built plugin runs in the headless host in this process,
//! `process()` paced in real time (256-sample blocks at 48 kHz), in three scenarios:
//! (a) transport stopped, no peers; (b) playing at 120 BPM, no peers; (c) playing at 120 BPM
//! with 16 AppleMIDI peers (minimal responders in this process) receiving clock.
//!
//! After a settling time, each scenario is measured over `LOCKSTEP_IDLE_SECONDS` (default 30)
//! from `/proc/self/task/<tid>/{schedstat,status}` of the threads named `lockstep-net` (the
//! worker) and `lockstep-send` (the clock send path): CPU time (schedstat's nanoseconds on a
//! CPU) as % of one core, and wake-ups per second (context switches: voluntary ones are the
//! thread going to sleep, so each is followed by a wake-up; involuntary ones are preemptions).
//!
//! Prints one JSON object per scenario: {"scenario", "cpu_pct", "wakeups_per_s",
//! "worker_cpu_pct", "worker_wakeups_per_s", "send_cpu_pct", "send_wakeups_per_s"}.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockstep_host::bundle::Build;
use lockstep_host::harness::thread_cost;
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::responder::responder;
use lockstep_host::transport::HostTransport;
use lockstep_net::settings::PeerSettings;

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 256;
const THREADS: [&str; 2] = ["lockstep-net", "lockstep-send"];

fn sample() -> BTreeMap<String, (u64, u64)> {
    thread_cost("self", &THREADS)
}

fn run(scenario: &str, playing: bool, peers: u16, seconds: f64) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let finishes: Vec<_> = (0..peers)
        .map(|i| responder(6300 + 2 * i, Arc::clone(&stop)))
        .collect();
    let bundle = Bundle::load(&Build::Release.clap_path()).expect("bundle built");
    let mut instance = bundle.instantiate().expect("instance");
    let mut settings = instance.net_settings().expect("settings");
    settings.rtp_midi_port = 5204;
    settings.peers = (0..peers)
        .map(|i| PeerSettings {
            name: format!("peer {i}"),
            host: "127.0.0.1".into(),
            port: 6300 + 2 * i,
            ..PeerSettings::default()
        })
        .collect();
    instance.set_net_settings(&settings).expect("settings");
    let mut p = instance
        .activate(RATE, BLOCK, Layout::Stereo)
        .expect("activate");
    let mut t = HostTransport::new(120.0, (4, 4));
    t.playing = playing;
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    // Sessions come up and settle (CK exchanges are fast for the first ten seconds).
    let settle = Duration::from_secs(12);
    let started = Instant::now();
    let mut deadline = started;
    let mut before = None;
    let mut measured_from = started;
    loop {
        p.process(BLOCK, Some(&t.event()), &[]).expect("process");
        t.advance(BLOCK, RATE);
        deadline += period;
        let now = Instant::now();
        if before.is_none() && now >= started + settle {
            before = Some(sample());
            measured_from = now;
        }
        if before.is_some() && now >= measured_from + Duration::from_secs_f64(seconds) {
            break;
        }
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let after = sample();
    let elapsed = measured_from.elapsed().as_secs_f64();
    let before = before.unwrap_or_default();
    instance.deactivate(p);
    stop.store(true, Ordering::Relaxed);
    let received: usize = finishes.into_iter().map(|f| f().len()).sum();
    let per = |name: &str| {
        let (c0, s0) = before.get(name).copied().unwrap_or((0, 0));
        let (c1, s1) = after.get(name).copied().unwrap_or((0, 0));
        (
            (c1.saturating_sub(c0)) as f64 / 1e9 / elapsed * 100.0,
            (s1.saturating_sub(s0)) as f64 / elapsed,
        )
    };
    let worker = per("lockstep-net");
    let send = per("lockstep-send");
    eprintln!(
        "idle_cost {scenario}: worker {:.3} % {:.1}/s, send path {:.3} % {:.1}/s, {received} clock packets at the peers",
        worker.0, worker.1, send.0, send.1
    );
    if peers > 0 {
        assert!(received > 0, "the peers received no clock");
    }
    format!(
        "{{\"scenario\": \"{scenario}\", \"cpu_pct\": {:.4}, \"wakeups_per_s\": {:.2}, \"worker_cpu_pct\": {:.4}, \"worker_wakeups_per_s\": {:.2}, \"send_cpu_pct\": {:.4}, \"send_wakeups_per_s\": {:.2}}}",
        worker.0 + send.0,
        worker.1 + send.1,
        worker.0,
        worker.1,
        send.0,
        send.1
    )
}

fn main() {
    let seconds: f64 = std::env::var("LOCKSTEP_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    println!("{}", run("stopped", false, 0, seconds));
    println!("{}", run("playing", true, 0, seconds));
    println!("{}", run("playing_16_peers", true, 16, seconds));
}
