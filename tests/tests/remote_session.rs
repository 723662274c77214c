//! Remote studios by session code, end to end on the emulated WAN: two `lockstep-headless`
//! runners (the release bundle) in two home LANs behind NAT routers meet through the real
//! mosquitto in `srv`, find their public addresses with the real coturn's STUN, reach each
//! other directly through two home NATs with ICE and measure their clocks over the path with
//! sealed probes. A third runner with the wrong code in the same room never joins and is
//! counted as forged. (The relayed path behind a symmetric NAT is not here yet: see the
//! README's Next steps.)
//!
//! Both studios run on this machine, so the true offset between their clocks is known (each
//! reports where its clock starts on the machine's monotonic clock): every measured offset's
//! error must lie within the bound the status shows (half the round trip).
//! Runs inside the suite's private network namespace; the lab nests its namespaces in it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

use anyhow::{Context, Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::wanlab::{LabConfig, Ns, SRV_IP, TURN_PORT, WanLab};
use lockstep_net::status::ExportedStatus;
use lockstep_net::status::remote::{RemotePeerStatus, RemoteStatus};
use serde::Deserialize;

const RUNNER: &str = env!("CARGO_BIN_EXE_lockstep-headless");
const CODE: &str = "4817-7KQ3-M2XP-9FTR-HW4D";
/// Same room, another secret.
const WRONG_CODE: &str = "4817-8JQ2-PW7R-3KXN-C5VD";
const SECRET: &str = "lockstep-lab-secret";

#[derive(Debug, Deserialize)]
struct Line {
    plugin: ExportedStatus,
}

/// A runner in a lab namespace, its status lines read on a thread.
struct Studio {
    child: Child,
    lines: Option<JoinHandle<Vec<String>>>,
}

impl Studio {
    fn start(lab: &WanLab, ns: Ns, code: &str, seconds: u32, extra: &[String]) -> Result<Self> {
        let plugin = Build::Release.clap_path();
        let srv = |port: u16| {
            format!(
                "{}.{}.{}.{}:{port}",
                SRV_IP[0], SRV_IP[1], SRV_IP[2], SRV_IP[3]
            )
        };
        let mut command = lab.command(ns, RUNNER);
        command
            .args(["--plugin", plugin.to_str().context("plugin path")?])
            .args(["--stopped", "--no-mdns", "--status-json"])
            .args(["--for", &seconds.to_string()])
            .args(["--remote", code, "--broker", &srv(1883)])
            .args(["--stun", &srv(TURN_PORT)])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().context("starting lockstep-headless")?;
        let stdout = child.stdout.take().context("runner stdout")?;
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        Ok(Self {
            child,
            lines: Some(lines),
        })
    }

    /// Wait for the run to end; the remote status of every line, in order.
    fn finish(mut self) -> Result<Vec<RemoteStatus>> {
        let status = self.child.wait()?;
        let lines = self
            .lines
            .take()
            .context("finished twice")?
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        ensure!(
            status.success(),
            "runner exit {status}; output:\n{}",
            lines.join("\n")
        );
        lines
            .iter()
            .map(|l| {
                let line: Line = serde_json::from_str(l).with_context(|| format!("line {l}"))?;
                line.plugin.worker.remote.context("no remote status")
            })
            .collect()
    }
}

impl Drop for Studio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn only_peer(status: &RemoteStatus) -> Result<&RemotePeerStatus> {
    ensure!(status.peers.len() == 1, "expected one peer: {status:#?}");
    Ok(&status.peers[0])
}

/// The true offset of `them` as `us` sees it (their clock minus ours), ms: each process's clock
/// starts at its own point of the machine's monotonic clock.
fn true_offset_ms(us: &RemoteStatus, them: &RemoteStatus) -> Result<f64> {
    let ours = us.clock_origin_ns.context("no clock origin")? as f64;
    let theirs = them.clock_origin_ns.context("no clock origin")? as f64;
    Ok((ours - theirs) / 1e6)
}

/// The measured offset's error (against the truth), which must lie within its bound; ms.
fn check_clock(p: &RemotePeerStatus, truth_ms: f64) -> Result<f64> {
    let offset = p
        .offset_ms
        .with_context(|| format!("no offset published: {p:#?}"))?;
    let bound = p.offset_bound_ms.context("no bound")?;
    ensure!(p.converged, "{p:#?}");
    let error = offset - truth_ms;
    ensure!(
        error.abs() <= bound,
        "offset {offset} ms, truth {truth_ms} ms: error outside its bound {bound} ms: {p:#?}"
    );
    Ok(error)
}

#[test]
fn two_studios_behind_home_nats_meet_by_code_and_connect_directly() -> Result<()> {
    // 20 ms on each access link: a host-to-host round trip of 80 ms.
    let lab = WanLab::build(LabConfig {
        delay_a_ms: 20,
        delay_b_ms: 20,
        ..LabConfig::default()
    })?;
    let _broker = lab.start_broker()?;
    let _turn = lab.start_turn(SECRET)?;
    // B stays 3 s longer, so A's last report still has B, and B's shows A saying goodbye. 20 s
    // leave room for one restart of a stalled first round of checks (6 s) and convergence.
    let a = Studio::start(&lab, Ns::HostA, CODE, 20, &[])?;
    let b = Studio::start(&lab, Ns::HostB, CODE, 23, &[])?;
    let stranger = Studio::start(&lab, Ns::HostA, WRONG_CODE, 20, &[])?;
    let (a, b, stranger) = (a.finish()?, b.finish()?, stranger.finish()?);
    let b_left = b.last().context("no status")?;
    ensure!(
        b_left.peers.is_empty() && b_left.errors.iter().any(|e| e.contains("left the session")),
        "B did not see A leave: {b_left:#?}"
    );
    // B's last report with A in it came at least 12 s into the run.
    let b_with_a = b
        .iter()
        .rposition(|s| !s.peers.is_empty())
        .context("B never met A")?;
    ensure!(
        b_with_a >= 18,
        "B lost A after {b_with_a} s: {:#?}",
        b.get(b_with_a + 1)
    );
    let (a_last, b_last) = (a.last().context("no status")?, &b[b_with_a]);
    for (name, last, other) in [("A", a_last, b_last), ("B", b_last, a_last)] {
        ensure!(last.state == "connected", "{name}: {last:#?}");
        ensure!(
            last.broker_connected && last.broker_connects == 1,
            "{name}: {last:#?}"
        );
        ensure!(
            last.local_candidates.iter().any(|c| c == "srflx"),
            "{name} learnt no public address: {last:#?}"
        );
        let p = only_peer(last)?;
        ensure!(p.ice == "connected" && p.path == "direct", "{name}: {p:#?}");
        // Neither host address is reachable from the other LAN: the remote end is reflexive.
        ensure!(!p.pair.ends_with("/host"), "{name}: {p:#?}");
        let rtt = p.rtt_ms.context("rtt")?;
        ensure!((80.0..90.0).contains(&rtt), "{name}: rtt {rtt} ms: {p:#?}");
        let error = check_clock(p, true_offset_ms(last, other)?)?;
        // Symmetric path: the estimate is far better than its bound.
        ensure!(error.abs() < 1.0, "{name}: error {error} ms: {p:#?}");
        eprintln!(
            "{name}: rtt {rtt:.3} ms, offset error {error:.3} ms, restarts {}",
            p.restarts
        );
        ensure!(p.pings >= 10 && p.pongs >= 10, "{name}: {p:#?}");
        let c = &last.counters;
        ensure!(
            c.datagrams_forged + c.datagrams_replayed == 0,
            "{name}: {last:#?}"
        );
        // The stranger's announce reached them and failed authentication.
        ensure!(
            c.rendezvous_forged >= 1,
            "{name} never saw the stranger: {last:#?}"
        );
    }
    let s = stranger.last().context("no status")?;
    ensure!(
        s.peers.is_empty() && s.state == "waiting for peers",
        "{s:#?}"
    );
    ensure!(s.counters.rendezvous_forged >= 2, "{s:#?}");
    Ok(())
}
