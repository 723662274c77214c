//! The README's run command, as users run it: the `lockstep-headless` binary with the real
//! bundle, paced in real time, printing JSON status once per second and exiting cleanly.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_net::status::ExportedStatus;
use serde::Deserialize;

const RUNNER: &str = env!("CARGO_BIN_EXE_lockstep-headless");

/// One `--status-json` line (the runner's `Report`, read back).
#[derive(Debug, Deserialize)]
struct Line {
    elapsed_s: f64,
    host: HostLine,
    plugin: ExportedStatus,
}

#[derive(Debug, Deserialize)]
struct HostLine {
    playing: bool,
    tempo_bpm: f64,
    time_sig: String,
    pos_beats: f64,
    blocks: u64,
    process_errors: u64,
}

fn run(args: &[&str]) -> Result<(std::process::ExitStatus, String, String)> {
    let out = Command::new(RUNNER)
        .args(args)
        .output()
        .context("running lockstep-headless")?;
    Ok((
        out.status,
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn runs_in_real_time_and_reports_json_status() -> Result<()> {
    for build in Build::ALL {
        let plugin = build.clap_path();
        let (status, stdout, stderr) = run(&[
            "--plugin",
            plugin.to_str().context("path")?,
            "--tempo",
            "140",
            "--timesig",
            "3/4",
            "--sample-rate",
            "48000",
            "--block",
            "128",
            "--for",
            "2.5",
            "--status-json",
        ])?;
        ensure!(
            status.success(),
            "{build:?}: exit {status}, stderr: {stderr}"
        );
        let lines: Vec<Line> = stdout
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("status lines: {stdout}"))?;
        // One per second plus the final one.
        ensure!(
            lines.len() == 3,
            "{build:?}: {} lines: {stdout}",
            lines.len()
        );
        let last = &lines[2];
        ensure!(last.elapsed_s >= 2.5, "{last:?}");
        ensure!(
            last.host.playing && last.host.tempo_bpm == 140.0,
            "{last:?}"
        );
        ensure!(last.host.time_sig == "3/4", "{last:?}");
        ensure!(last.host.process_errors == 0, "{last:?}");
        // Real-time pacing: 2.5 s at 48 kHz is 937.5 blocks of 128. Other tests run beside this
        // one on two cores, and a late block is not caught up (like a sound card after an
        // xrun), so allow 15 % fewer; more than real time would mean no pacing at all.
        ensure!((800..=960).contains(&last.host.blocks), "paced: {last:?}");
        // The position is exactly a whole number of blocks at 140 BPM: the ones counted (or one
        // fewer, if the audio thread finished a block between the two readings).
        let per_block = 128.0 / 48_000.0 * 140.0 / 60.0;
        let played = last.host.pos_beats / per_block;
        ensure!((played - played.round()).abs() < 1e-6, "position: {last:?}");
        let behind = last.host.blocks as i64 - played.round() as i64;
        ensure!((0..=1).contains(&behind), "position: {last:?}");
        // The plugin saw the transport and its worker drained every block's snapshot.
        let me = &last.plugin.worker.instances[0];
        let seen = me.last_transport.context("plugin saw no transport")?;
        ensure!(seen.tempo_bpm == Some(140.0) && seen.playing, "{seen:?}");
        ensure!(me.events_dropped_full == 0, "{me:?}");
        // One snapshot per block plus the clock: 24 ticks per beat played.
        ensure!(me.events_pushed >= last.host.blocks - 2, "{me:?}");
        let ticks_due = last.host.pos_beats * 24.0;
        ensure!(
            (me.clock_ticks as f64) <= ticks_due + 1.0
                && (me.clock_ticks as f64) >= ticks_due - 30.0,
            "{} ticks for {:.3} beats",
            me.clock_ticks,
            last.host.pos_beats
        );
        ensure!(last.plugin.live_worker_threads == 1, "{last:?}");
    }
    Ok(())
}

#[test]
fn status_lines_for_people_and_a_clean_exit() -> Result<()> {
    let plugin = Build::Release.clap_path();
    let (status, stdout, stderr) = run(&[
        "--plugin",
        plugin.to_str().context("path")?,
        "--stopped",
        "--for",
        "1.2",
    ])?;
    ensure!(status.success(), "exit {status}: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.len() == 3, "{stdout}");
    ensure!(lines[0].contains("host stopped 120.00 BPM 4/4"), "{stdout}");
    ensure!(lines[0].contains("worker running (1 instance)"), "{stdout}");
    ensure!(
        lines[2].starts_with("stopped: ") && lines[2].ends_with("worker threads left: 0"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn ctrl_c_stops_cleanly() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let plugin = Build::Release.clap_path();
    let mut child = Command::new(RUNNER)
        .args(["--plugin", plugin.to_str().context("path")?])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting lockstep-headless")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    // Runs with no --for until interrupted: wait for its first status line, then Ctrl+C.
    let first = lines.next().context("no status line")??;
    ensure!(first.contains("worker running (1 instance)"), "{first}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    ensure!(kill.success(), "kill -INT failed");
    let rest: Vec<String> = lines.collect::<Result<_, _>>()?;
    let status = child.wait()?;
    ensure!(status.success(), "exit {status} after Ctrl+C: {rest:?}");
    let last = rest.last().context("no final line")?;
    ensure!(last.ends_with("worker threads left: 0"), "{rest:?}");
    Ok(())
}

#[test]
fn bad_arguments_exit_2_with_a_reason() -> Result<()> {
    for (args, needle) in [
        (&["--tempo", "5"][..], "tempo is 20..999 BPM"),
        (&["--timesig", "4/5"][..], "expected N/D"),
        (&["--bogus"][..], "unknown option `--bogus`"),
        (
            &["--plugin", "/nonexistent/Lockstep.clap", "--for", "1"][..],
            "does not exist",
        ),
    ] {
        let (status, _, stderr) = run(args)?;
        ensure!(!status.success(), "{args:?} succeeded");
        ensure!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (status, _, _) = run(&["--tempo", "5"])?;
    ensure!(status.code() == Some(2), "usage errors exit 2");
    Ok(())
}

/// In the headless runner, OSC drives its transport: python-osc sends play, a tempo and a
/// locate; the runner's status shows them and the plugin sees them.
#[test]
fn osc_drives_the_runners_transport() -> Result<()> {
    let child = Command::new(RUNNER)
        .args([
            "--stopped",
            "--for",
            "4",
            "--status-json",
            "--osc-port",
            "8400",
            "--no-mdns",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running lockstep-headless")?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let client = lockstep_host::harness::ScriptPeer::spawn(
        "osc_client.py",
        &[
            "8400".into(),
            "9400".into(),
            "1".into(),
            r#"["/lockstep/transport/tempo", "f", 150.0]"#.into(),
            r#"["/lockstep/transport/locate", "f", 16.0]"#.into(),
            r#"["/lockstep/transport/play"]"#.into(),
        ],
    )?;
    client.wait("the client to send", |l| {
        l.iter().any(|v| v["event"] == "sent")
    })?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{out:?}");
    let lines: Vec<Line> = String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let first = lines.first().context("no status")?;
    ensure!(
        !first.host.playing && first.host.tempo_bpm == 120.0,
        "{first:?}"
    );
    let last = lines.last().context("no status")?;
    ensure!(
        last.host.playing && last.host.tempo_bpm == 150.0 && last.host.pos_beats > 16.0,
        "{last:?}"
    );
    let seen = last.plugin.worker.instances[0]
        .last_transport
        .context("the plugin saw the transport")?;
    ensure!(
        seen.playing && seen.tempo_bpm == Some(150.0) && seen.pos_beats.is_some_and(|b| b > 16.0),
        "{seen:?}"
    );
    let osc = last.plugin.worker.osc.as_ref().context("osc")?;
    ensure!(osc.applied == 3 && osc.disabled == 0, "{osc:?}");
    Ok(())
}
