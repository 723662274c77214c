//! One beat grid across the emulated WAN (issue 16's benchmarks), inside the private network
//! namespace `cargo xtask bench` creates; the lab nests its own namespaces in it.
//!
//! Two studios behind home NATs, 40 ± 5 ms one way between them (20 ms on each access link,
//! ±5 ms jitter) and 2 % loss on every crossing: a real Link peer (aalink) on each LAN, a
//! `lockstep-headless` runner in Link Follow beside each, meeting by code through the lab's
//! mosquitto and coturn (STUN). A's peer starts playing at 130 BPM, changes to 140 BPM at its
//! 40th second; B's is stopped at 90 BPM. The run lasts 66 s, so the phase is compared over
//! about 60 s. Both peers read their beat every 10 ms on the machine's one clock.
//!
//! Then the same once more over the relayed path: A behind a symmetric NAT, both given the
//! lab's coturn as TURN server, no attack.
//!
//! Prints six JSON lines:
//! - `{"kind": "phase", "path": "direct"|"relayed", "p50_us", "p99_us", "max_us",
//!   "readings"}`: |phase difference| of B's peer against A's, from 1 s after the grid was
//!   shared, leaving out the second after the tempo change (the far side hears of it one path
//!   delay later);
//! - `{"kind": "time_to_grid", "path", "s"}`: from starting both runners (the code entered)
//!   to B's peer playing A's tempo;
//! - `{"kind": "tempo", "ms", "one_way_ms"}`: from A's peer changing tempo to B's peer
//!   reading it (10 ms readings), direct path;
//! - `{"kind": "attack", "sent", "replayed", "forged", "written", "counted_replayed",
//!   "counted_forged", "rcvbuf_errors", "unchanged"}`: for 25 s from 2 s after B's peer
//!   took A's grid, an attacker on the path sends B 100,000 replays and forgeries of A's
//!   frames (4,000 a second) through B's NAT; what B counted, what its kernel dropped for a full buffer, and whether B ended on
//!   A's grid version and tempo, playing (the phase rows above are measured through it).

use std::path::Path;

use anyhow::Context;
use lockstep_host::remote_lab::{Attack, GridRun, SECRET, grid_run, turn_args};
use lockstep_host::wanlab::{LabConfig, Nat, WanLab};
use serde_json::json;

const RUNNER: &str = env!("CARGO_BIN_EXE_lockstep-headless");

fn main() {
    if let Err(e) = run() {
        eprintln!("remote grid bench: {e:#}");
        std::process::exit(1);
    }
}

/// One 66 s grid run on a fresh lab with A behind `nat_a`, the runners given `extra` flags;
/// with the datagrams the lab's emulator injected for the attack.
fn lab_run(
    nat_a: Nat,
    extra: &[String],
    seed: u64,
    attack: Option<Attack>,
) -> anyhow::Result<(GridRun, u64)> {
    let lab = WanLab::build(LabConfig {
        nat_a,
        delay_a_ms: 20,
        delay_b_ms: 20,
        jitter_ms: 5,
        loss_ppm: 20_000,
        seed,
        ..LabConfig::default()
    })?;
    let _broker = lab.start_broker()?;
    let _turn = lab.start_turn(SECRET)?;
    let run = grid_run(&lab, Path::new(RUNNER), extra, 66, 40, 0, attack)?;
    let stats = lab.emulator_stats();
    eprintln!("remote grid bench: emulator {stats:?}");
    Ok((run, stats.injected))
}

/// The phase and time-to-grid lines of one run over `path`.
fn print_phase(run: &GridRun, path: &str) {
    let (p50, p99, max) = run.quantiles();
    eprintln!(
        "remote grid bench: {path}: worst phase error {:.3} ms at {:.1} s, {} readings left out",
        max / 1e3,
        run.worst_at_s,
        run.skipped
    );
    println!(
        "{}",
        json!({"kind": "phase", "path": path, "p50_us": p50, "p99_us": p99,
               "max_us": max, "readings": run.phase_us.len()})
    );
    println!(
        "{}",
        json!({"kind": "time_to_grid", "path": path, "s": run.time_to_grid_s})
    );
}

fn run() -> anyhow::Result<()> {
    let attack = Attack {
        count: 100_000,
        at_s: 2.0,
        gap: std::time::Duration::from_micros(250),
    };
    let (run, written) = lab_run(Nat::Home, &[], 0x6121_d000, Some(attack))?;
    print_phase(&run, "direct");
    println!(
        "{}",
        json!({"kind": "tempo", "ms": run.follow_ms, "one_way_ms": 40})
    );
    let sent = run.attack.context("no attack report")?;
    let b = run.b.last().context("no status from B")?;
    let grid = b.grid.as_ref().context("B has no grid")?;
    let a_grid = run
        .a
        .last()
        .and_then(|s| s.grid.as_ref())
        .context("A has no grid")?;
    // Nothing moved: B ends on A's grid version, at A's tempo, playing.
    let unchanged = grid.generation == a_grid.generation
        && grid.author == a_grid.author
        && run.b_playing
        && !run.tempo_after.is_empty()
        && run.tempo_after.iter().all(|t| (t - 140.0).abs() < 0.01)
        && grid.counters.refused == 0;
    println!(
        "{}",
        json!({"kind": "attack", "sent": sent.replayed + sent.forged,
               "replayed": sent.replayed, "forged": sent.forged,
               "written": written,
               "counted_replayed": b.counters.datagrams_replayed,
               "counted_forged": b.counters.datagrams_forged,
               "rcvbuf_errors": sent.rcvbuf_errors, "unchanged": unchanged})
    );
    let (relayed, _) = lab_run(Nat::Symmetric, &turn_args(), 0x6121_d001, None)?;
    let paths: Vec<&str> = relayed
        .b
        .iter()
        .rfind(|s| !s.peers.is_empty())
        .map(|s| s.peers.iter().map(|p| p.path.as_str()).collect())
        .unwrap_or_default();
    // A run that did not end on the relay is printed under another name, so its rows read
    // as missing rather than as the relayed path's.
    if paths != ["relayed"] {
        eprintln!("remote grid bench: the symmetric-NAT run ended on {paths:?}, not the relay");
    }
    print_phase(
        &relayed,
        if paths == ["relayed"] {
            "relayed"
        } else {
            "not relayed"
        },
    );
    Ok(())
}
