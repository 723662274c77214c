//! Under each attack of the attack suite ([`lockstep_host::attack`]), the real peer's clock
//! lateness (max, p99) and the well-behaved controller's reply time (p99), beside the same
//! figures with no attack, all in one run (run by `cargo xtask bench` inside a private network
//! namespace). Prints one JSON object per scenario: {"scenario", "late_max_us", "late_p99_us",
//! "floor_max_us", "reply_p99_us", "answered", "probes", "worker_cpu_pct", "rss_peak_kb",
//! "rss_before_kb"}.

use lockstep_host::attack::{self, Scenario};
use lockstep_host::bundle::Build;

fn main() {
    let reports = attack::run(
        std::path::Path::new(env!("CARGO_BIN_EXE_lockstep-headless")),
        &Build::Release.clap_path(),
        &Scenario::ALL,
    )
    .expect("the attack rig runs");
    for r in reports {
        println!(
            "{}",
            serde_json::json!({
                "scenario": r.scenario,
                "late_max_us": r.late_max_us,
                "late_p99_us": r.late_p99_us,
                "floor_max_us": r.floor_max_us,
                "reply_p99_us": r.reply_p99_us,
                "answered": r.answered,
                "probes": r.probes,
                "worker_cpu_pct": r.worker_cpu_pct,
                "rss_before_kb": r.rss_before_kb,
                "rss_peak_kb": r.rss_peak_kb,
            })
        );
    }
}
