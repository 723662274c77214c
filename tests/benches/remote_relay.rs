//! The relayed path: studio A behind a symmetric NAT, B behind a home NAT, coturn on the
//! emulated WAN (20 ms on each access link), [`ATTEMPTS`] times with a fresh lab each time,
//! each run 12 s (`remote_lab::relay_attempt`). Prints one JSON line:
//! `{"kind": "relay", "attempts", "connected", "path_after_s_max", "offset_error_ms_max",
//! "within_bound"}`: how many attempts ended with both studios on the relayed path, the
//! slowest of those to bring the path up (whole seconds, from the runners' one-a-second
//! status), the largest clock offset error against the truth, and whether every error lay
//! within its shown bound. Every attempt's account goes to stderr.
//!
//! Runs inside the private namespace `cargo xtask bench` makes; the lab nests its own.

use std::path::Path;

use lockstep_host::remote_lab::relay_attempt;
use serde_json::json;

const RUNNER: &str = env!("CARGO_BIN_EXE_lockstep-headless");
/// Fresh labs, one attempt each.
const ATTEMPTS: usize = 8;

fn main() {
    if let Err(e) = run() {
        eprintln!("remote relay bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let (mut connected, mut within_bound) = (0, true);
    let (mut path_after_max, mut error_max) = (0.0f64, 0.0f64);
    for attempt in 0..ATTEMPTS {
        let r = relay_attempt(Path::new(RUNNER), 12, None)?;
        eprintln!(
            "remote relay bench: attempt {}: connected {}, path after {:?} s, offset error \
             {:?} ms; {}",
            attempt + 1,
            r.connected,
            r.path_after_s,
            r.offset_error_ms,
            r.account
        );
        if r.connected {
            connected += 1;
            within_bound &= r.within_bound;
            path_after_max = path_after_max.max(r.path_after_s.unwrap_or(f64::NAN));
            error_max = error_max.max(r.offset_error_ms.unwrap_or(f64::NAN));
        }
    }
    println!(
        "{}",
        json!({
            "kind": "relay",
            "attempts": ATTEMPTS,
            "connected": connected,
            "path_after_s_max": path_after_max,
            "offset_error_ms_max": error_max,
            "within_bound": within_bound,
        })
    );
    Ok(())
}
