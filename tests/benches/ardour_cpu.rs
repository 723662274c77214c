//! What Lockstep's threads cost inside a real DAW: the release VST3 on the master bus of
//! Ardour 7 headless (`ardour7-lua`, Dummy backend, 48 kHz, 1024-sample blocks), no peers, no
//! controllers, run by `cargo xtask bench` inside a private network namespace. Ardour is
//! driven by `tests/peers/ardour_session.lua`; after settling, the worker (`lockstep-net`) and
//! the send path (`lockstep-send`) threads of Ardour's process are measured over
//! `LOCKSTEP_IDLE_SECONDS` (default 30) from `/proc/<pid>/task/<tid>/{schedstat,status}`,
//! transport stopped, then rolling.
//!
//! Prints one JSON object per scenario: {"scenario", "cpu_pct", "wakeups_per_s"}.

use std::time::{Duration, Instant};

use lockstep_host::ardour::{Ardour, Place, install_and_scan};
use lockstep_host::bundle::Build;
use lockstep_host::harness::thread_cost;

const THREADS: [&str; 2] = ["lockstep-net", "lockstep-send"];

fn measure(ardour: &Ardour, scenario: &str, seconds: f64) -> String {
    let pid = ardour.pid().to_string();
    let total = || {
        thread_cost(&pid, &THREADS)
            .values()
            .fold((0u64, 0u64), |(c, s), (c1, s1)| (c + c1, s + s1))
    };
    let before = total();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let after = total();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = after.0.saturating_sub(before.0) as f64 / 1e9 / elapsed * 100.0;
    let wakeups = after.1.saturating_sub(before.1) as f64 / elapsed;
    eprintln!("ardour_cpu {scenario}: {cpu:.3} % of a core, {wakeups:.1} wake-ups/s");
    format!(
        "{{\"scenario\": \"{scenario}\", \"cpu_pct\": {cpu:.4}, \"wakeups_per_s\": {wakeups:.2}}}"
    )
}

fn main() {
    let seconds: f64 = std::env::var("LOCKSTEP_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    let place = Place::new().expect("a private place for Ardour");
    install_and_scan(&place, &Build::Release.vst3_path()).expect("scanned");
    let mut ardour = Ardour::start(&place, "create").expect("Ardour ready");
    assert!(
        !thread_cost(&ardour.pid().to_string(), &THREADS).is_empty(),
        "no Lockstep threads in Ardour's process"
    );
    std::thread::sleep(Duration::from_secs(5));
    println!("{}", measure(&ardour, "stopped", seconds));
    ardour.cmd("ROLL", &["ROLLING"]).expect("rolling");
    std::thread::sleep(Duration::from_secs(3));
    println!("{}", measure(&ardour, "playing", seconds));
    ardour.cmd("STOP", &["STOPPED"]).expect("stopped");
    ardour.quit().expect("Ardour quit");
}
