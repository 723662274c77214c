//! Remote sessions on the WAN lab ([`crate::wanlab`]), shared by the tests and the benchmark:
//! `lockstep-headless` runners as studios in the lab's LANs, and the one-beat-grid scenario
//! with a real Link peer (aalink) on each LAN.
//!
//! [`grid_run`] measures; the callers decide what passes. Both studios run on this machine,
//! so one clock (`CLOCK_MONOTONIC_RAW`, Link's own on Linux) times both aalink peers, and the
//! phase error is the real one, not an estimate.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lockstep_net::status::ExportedStatus;
use lockstep_net::status::remote::RemoteStatus;
use serde::Deserialize;

use crate::bundle::Build;
use crate::harness::{Rng, ScriptPeer};
use crate::link::{BeatSample, History, beat_samples, quantile};
use crate::wanlab::{LabConfig, Nat, Ns, SRV_IP, TURN_PORT, WanLab};

/// The session code the lab's studios type.
pub const CODE: &str = "4817-7KQ3-M2XP-9FTR-HW4D";
/// Same room, another secret.
pub const WRONG_CODE: &str = "4817-8JQ2-PW7R-3KXN-C5VD";
/// coturn's `static-auth-secret` in the lab.
pub const SECRET: &str = "lockstep-lab-secret";

#[derive(Debug, Deserialize)]
struct Line {
    plugin: ExportedStatus,
}

/// The runner flags for the lab's coturn as TURN server, with REST credentials from
/// [`SECRET`].
pub fn turn_args() -> Vec<String> {
    vec![
        "--turn".to_owned(),
        format!(
            "{}.{}.{}.{}:{TURN_PORT}",
            SRV_IP[0], SRV_IP[1], SRV_IP[2], SRV_IP[3]
        ),
        "--turn-secret".to_owned(),
        SECRET.to_owned(),
    ]
}

/// A runner in a lab namespace, its status lines read on a thread.
pub struct Studio {
    child: Child,
    lines: Option<JoinHandle<Vec<String>>>,
}

impl Studio {
    /// Start `runner` (the `lockstep-headless` binary) in `ns` with the release bundle, joined
    /// to `code` through the lab's broker and STUN, for `seconds`, with `extra` flags.
    pub fn start(
        lab: &WanLab,
        ns: Ns,
        runner: &Path,
        code: &str,
        seconds: u32,
        extra: &[String],
    ) -> Result<Self> {
        let srv = |port: u16| {
            format!(
                "{}.{}.{}.{}:{port}",
                SRV_IP[0], SRV_IP[1], SRV_IP[2], SRV_IP[3]
            )
        };
        let mut flags: Vec<String> = ["--remote", code, "--broker", &srv(1883)]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        flags.extend(["--stun".to_owned(), srv(TURN_PORT)]);
        flags.extend_from_slice(extra);
        Self::start_plain(lab, ns, runner, seconds, &flags)
    }

    /// Start `runner` in `ns` with the release bundle, stopped, without mDNS, for `seconds`,
    /// with only `extra` flags (no remote session unless they ask for one).
    pub fn start_plain(
        lab: &WanLab,
        ns: Ns,
        runner: &Path,
        seconds: u32,
        extra: &[String],
    ) -> Result<Self> {
        let plugin = Build::Release.clap_path();
        let mut command = lab.command(ns, runner.to_str().context("runner path")?);
        command
            .args(["--plugin", plugin.to_str().context("plugin path")?])
            .args(["--stopped", "--no-mdns", "--status-json"])
            .args(["--for", &seconds.to_string()])
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
    pub fn finish(self) -> Result<Vec<RemoteStatus>> {
        self.finish_all()?
            .into_iter()
            .map(|s| s.worker.remote.context("no remote status"))
            .collect()
    }

    /// Wait for the run to end; every status line, in order.
    pub fn finish_all(mut self) -> Result<Vec<ExportedStatus>> {
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
                Ok(line.plugin)
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

/// The machine's `CLOCK_MONOTONIC_RAW` in µs (Link's clock, the peers' sample times).
pub fn raw_us() -> f64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_RAW)
        .expect("CLOCK_MONOTONIC_RAW");
    ts.tv_sec() as f64 * 1e6 + ts.tv_nsec() as f64 / 1e3
}

/// Phase differences of `theirs` against the `ours` history `late_us` earlier, µs, wrapped
/// to half a beat (Link shares the phase, not the beat count, between peers).
pub fn phase_errors(ours: &History, theirs: &[BeatSample], late_us: f64) -> Vec<f64> {
    theirs
        .iter()
        .filter_map(|s| {
            let b = ours.beat_at(s.t - late_us, 30_000.0)?;
            let d = s.beat - b;
            Some((d - d.round()) * 60e6 / s.tempo)
        })
        .collect()
}

/// An on-path attacker between the studios during a grid run: it copies the Lockstep frames
/// it sees cross from A's router to B's and, from `at_s` after B's Link peer took A's grid
/// (so B's studio knows A's path: earlier, a frame from A's address is no peer's yet), sends B
/// `count` datagrams `gap` apart through B's own NAT with A's real addresses and ports, in
/// four kinds made from those frames: exact replays; replays with a flipped byte in the
/// sealed part; frames claiming a sequence number far ahead; and those with a flipped byte
/// too. None may change B's grid, and B must count each one as refused: the first two by its
/// replay window (their sequence numbers are used), the last two by authentication.
#[derive(Debug, Clone, Copy)]
pub struct Attack {
    /// Datagrams to send.
    pub count: usize,
    /// When to start, s after B's Link peer took A's tempo.
    pub at_s: f64,
    /// Between two datagrams.
    pub gap: Duration,
}

/// What the attacker sent, and what B's kernel dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttackSent {
    /// Frames the attacker had captured to work from.
    pub captured: usize,
    /// Datagrams with a used sequence number (exact or tampered replays): B's replay window
    /// refuses them before any decryption.
    pub replayed: usize,
    /// Datagrams with a fresh sequence number (far ahead, tampered or not): only
    /// authentication can refuse them.
    pub forged: usize,
    /// B's kernel's count of UDP datagrams dropped for a full receive buffer over the run
    /// (`/proc/net/snmp` `RcvbufErrors`, B's namespace), honest ones included.
    pub rcvbuf_errors: u64,
}

/// Bytes of a Lockstep frame's header (marker, epoch, sequence number).
const FRAME_HEADER: usize = 10;

/// `count` datagrams made from `captured` (whole IPv4 packets carrying a Lockstep frame):
/// the four kinds of [`Attack`] in turn. Changed ones carry a zero UDP checksum (none, valid
/// in IPv4) so the kernel delivers them. Returns (packets, with a used sequence number, with
/// a fresh one).
pub fn replays_and_forgeries(
    captured: &[Vec<u8>],
    count: usize,
    seed: u64,
) -> (Vec<Vec<u8>>, usize, usize) {
    let mut rng = Rng::new(seed);
    let (mut replayed, mut forged) = (0, 0);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let mut packet = captured[i % captured.len()].clone();
        let udp = usize::from(packet[0] & 0x0f) * 4;
        let payload = udp + 8;
        let kind = i % 4;
        if kind == 1 || kind == 3 {
            // A byte of the ciphertext or tag.
            let span = packet.len() - payload - FRAME_HEADER;
            let at = payload + FRAME_HEADER + rng.next_u64() as usize % span;
            packet[at] ^= 1 << (rng.next_u64() % 8);
        }
        if kind >= 2 {
            // A sequence number far ahead: must not move the replay window.
            let seq = (1u64 << 40) + rng.next_u64() % (1 << 40);
            packet[payload + 2..payload + FRAME_HEADER].copy_from_slice(&seq.to_be_bytes());
            forged += 1;
        } else {
            replayed += 1;
        }
        if kind > 0 {
            packet[udp + 6..udp + 8].fill(0);
        }
        out.push(packet);
    }
    (out, replayed, forged)
}

/// UDP `RcvbufErrors` in `ns` (`/proc/net/snmp`).
fn rcvbuf_errors(lab: &WanLab, ns: Ns) -> Result<u64> {
    let snmp = lab.exec(ns, "cat", &["/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (names, values) = names
        .zip(values)
        .context("no Udp lines in /proc/net/snmp")?;
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .context("no RcvbufErrors")?
        .1
        .parse()
        .context("RcvbufErrors")
}

/// What one grid run measured.
#[derive(Debug)]
pub struct GridRun {
    /// From starting both runners (the code entered) to B's Link peer playing A's tempo, s.
    pub time_to_grid_s: f64,
    /// From A's peer changing the tempo to B's peer reading it, ms (10 ms sampling).
    pub follow_ms: f64,
    /// |phase error| of B's peer against A's at every comparable reading from 1 s after the
    /// grid was shared, leaving out the second after the tempo change, µs.
    pub phase_us: Vec<f64>,
    /// When the largest phase error was seen, s after the grid was shared.
    pub worst_at_s: f64,
    /// Readings left out because their clock reads lay more than [`MAX_READ_ERR_US`] apart.
    pub skipped: usize,
    /// B's peer's tempo at every reading from 1 s after it followed the change.
    pub tempo_after: Vec<f64>,
    /// B's peer was playing at its last state report.
    pub b_playing: bool,
    /// The `/lockstep/remote/…` messages an OSC controller subscribed to B's runner got
    /// (`{"address", "args"}`), in order.
    pub osc_b: Vec<serde_json::Value>,
    /// What an [`Attack`] sent, if one ran.
    pub attack: Option<AttackSent>,
    /// Each runner's remote status, one a second.
    pub a: Vec<RemoteStatus>,
    /// B's.
    pub b: Vec<RemoteStatus>,
}

impl GridRun {
    /// p50, p99 and max of the phase errors, µs.
    pub fn quantiles(&self) -> (f64, f64, f64) {
        (
            quantile(&self.phase_us, 0.5),
            quantile(&self.phase_us, 0.99),
            quantile(&self.phase_us, 1.0),
        )
    }
}

/// Largest half-window of an aalink reading's two clock reads that still dates its beat, µs.
pub const MAX_READ_ERR_US: f64 = 100.0;

fn peer_args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// The one-grid scenario on `lab` (broker and TURN already started): a real Link peer on each
/// LAN, A's starting to play at 130 BPM after 1 s and changing to 140 BPM at `change_at` s,
/// B's stopped at 90 BPM; a runner on each LAN in Link Follow, both with the lab's code, for
/// `seconds` (the peers run 2 s longer), both with `extra` flags (e.g. [`turn_args`]), B's
/// with `--remote-align align_b_ms` (its phase is then measured against A's that much
/// earlier), and `attack` on B if given. Each peer prints its beat every 10 ms.
#[allow(clippy::too_many_arguments)]
pub fn grid_run(
    lab: &WanLab,
    runner: &Path,
    extra: &[String],
    seconds: u32,
    change_at: u32,
    align_b_ms: u32,
    attack: Option<Attack>,
) -> Result<GridRun> {
    let env = [("AALINK_SAMPLE_MS", "10")];
    let peer_seconds = (seconds + 2).to_string();
    let change = change_at.to_string();
    let peer_a = ScriptPeer::spawn_in_netns(
        &lab.name(Ns::HostA),
        "aalink_peer.py",
        &peer_args(&["130", "0", &peer_seconds, "1", "play", &change, "140"]),
        &env,
    )?;
    let peer_b = ScriptPeer::spawn_in_netns(
        &lab.name(Ns::HostB),
        "aalink_peer.py",
        &peer_args(&["90", "0", &peer_seconds]),
        &env,
    )?;
    for peer in [&peer_a, &peer_b] {
        peer.wait("aalink ready", |l| l.iter().any(|v| v["event"] == "ready"))?;
    }
    // Link's election: a session founded less than 500 ms before another does not win by
    // age but by the smaller id, so a runner started at once could found the session A's
    // peer joins (its 120 BPM instead of A's 130). Musicians' apps run before they start a
    // session; so do these.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut link = peer_args(&["--link", "follow", "--link-interface", "eth0"]);
    link.extend_from_slice(extra);
    let entered = raw_us();
    let a = Studio::start(lab, Ns::HostA, runner, CODE, seconds, &link)?;
    let mut link_b = link.clone();
    link_b.extend(peer_args(&["--remote-align", &align_b_ms.to_string()]));
    let b = Studio::start(lab, Ns::HostB, runner, CODE, seconds, &link_b)?;
    // An OSC controller on B's machine subscribes once B's runner is up (its port 8000).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let listen = (seconds.saturating_sub(3)).to_string();
    let controller = ScriptPeer::spawn_in_netns(
        &lab.name(Ns::HostB),
        "osc_client.py",
        &peer_args(&["8000", "9100", &listen, r#"["/lockstep/subscribe"]"#]),
        &[],
    )?;
    // Link keeps tempo as µs per beat: 130 BPM reads back as 130.00013.
    let near = |a: f64, b: f64| (a - b).abs() < 0.01;
    let attack = match attack {
        Some(attack) => {
            // A loaded machine can take several seconds more to connect: the attack waits
            // for B to play A's grid, so every frame it sends is one B must refuse as A's.
            peer_b.wait("B's Link peer taking A's tempo", |l| {
                beat_samples(l).iter().any(|s| near(s.tempo, 130.0))
            })?;
            std::thread::sleep(Duration::from_secs_f64(attack.at_s));
            let captured = lab.captured_a_to_b();
            ensure!(
                !captured.is_empty(),
                "the tap saw no frame from A to B in {:.1} s",
                (raw_us() - entered) / 1e6
            );
            let (packets, replayed, forged) =
                replays_and_forgeries(&captured, attack.count, 0xa77a_c4e5);
            lab.inject(packets, attack.gap)?;
            Some(AttackSent {
                captured: captured.len(),
                replayed,
                forged,
                rcvbuf_errors: 0,
            })
        }
        None => None,
    };
    let (a, b) = (a.finish()?, b.finish()?);
    let attack = match attack {
        Some(sent) => Some(AttackSent {
            rcvbuf_errors: rcvbuf_errors(lab, Ns::HostB)?,
            ..sent
        }),
        None => None,
    };
    let osc_b = controller
        .lines()
        .into_iter()
        .filter(|v| {
            v["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("/lockstep/remote/"))
        })
        .collect();
    let lines_a = peer_a.wait("A's tempo change", |l| {
        l.iter().any(|v| v["event"] == "changed")
    })?;
    let lines_b = peer_b.lines();
    let (samples_a, samples_b) = (beat_samples(&lines_a), beat_samples(&lines_b));
    // A reading whose two clock reads lay far apart (the Python thread was preempted between
    // them) does not say when its beat was true: left out, and counted.
    let clean = |s: &&BeatSample| s.err <= MAX_READ_ERR_US;
    let skipped = samples_a
        .iter()
        .chain(&samples_b)
        .filter(|s| !clean(s))
        .count();
    let mut history = History::new();
    for s in samples_a.iter().filter(clean) {
        history.record(s.t, s.beat, s.tempo);
    }
    let grid = |st: &[RemoteStatus]| format!("{:#?}", st.last().map(|s| (&s.peers, &s.grid)));
    let states = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|v| v["event"] == "state")
            .map(|v| format!("{}/{}", v["tempo"], v["playing"]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let joined = samples_b
        .iter()
        .find(|s| near(s.tempo, 130.0))
        .with_context(|| {
            format!(
                "B's Link peer never took 130 BPM; its states: {}\nA: {}\nB: {}",
                states(&lines_b),
                grid(&a),
                grid(&b)
            )
        })?
        .t;
    let changed = lines_a
        .iter()
        .find(|v| v["event"] == "changed")
        .and_then(|v| v["t"].as_f64())
        .context("no change time")?;
    let followed = samples_b
        .iter()
        .find(|s| s.t > changed && near(s.tempo, 140.0))
        .with_context(|| format!("B's Link peer never took 140 BPM; B: {}", grid(&b)))?
        .t;
    let settled: Vec<BeatSample> = samples_b
        .iter()
        .filter(clean)
        .filter(|s| s.t > joined + 1e6 && !(changed..followed + 1e6).contains(&s.t))
        .copied()
        .collect();
    let phase_us: Vec<f64> = phase_errors(&history, &settled, f64::from(align_b_ms) * 1e3)
        .into_iter()
        .map(f64::abs)
        .collect();
    let worst_at_s = phase_us
        .iter()
        .zip(&settled)
        .max_by(|a, b| a.0.total_cmp(b.0))
        .map_or(0.0, |(_, s)| (s.t - joined) / 1e6);
    let tempo_after = samples_b
        .iter()
        .filter(|s| s.t > followed + 1e6)
        .map(|s| s.tempo)
        .collect();
    let b_playing = lines_b
        .iter()
        .rfind(|v| v["event"] == "state")
        .is_some_and(|v| v["playing"] == true);
    Ok(GridRun {
        time_to_grid_s: (joined - entered) / 1e6,
        follow_ms: (followed - changed) / 1e3,
        phase_us,
        worst_at_s,
        skipped,
        tempo_after,
        b_playing,
        osc_b,
        attack,
        a,
        b,
    })
}

/// The relay going away: coturn is stopped `from_s` after the runners started and a fresh
/// coturn (every allocation lost, as after a server restart) starts at `to_s`.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// Seconds after the runners started.
    pub from_s: u32,
    /// Seconds after the runners started.
    pub to_s: u32,
}

/// What one attempt of the relayed scenario ([`relay_attempt`]) saw.
#[derive(Debug)]
pub struct RelayAttempt {
    /// For each status line (one a second from each runner, the first 1 s after the start):
    /// both studios showed each other connected through the relay.
    pub up: Vec<bool>,
    /// ICE restarts of the pair at the end (A's count plus B's).
    pub restarts: u64,
    /// Both studios ended connected to each other through the relay.
    pub connected: bool,
    /// Seconds from starting the runners to the first status line in which both showed the
    /// path up (None: never).
    pub path_after_s: Option<f64>,
    /// The larger of the two offset errors against the truth, ms (when connected).
    pub offset_error_ms: Option<f64>,
    /// Each offset error lay within the bound its studio showed.
    pub within_bound: bool,
    /// A one-line account of each studio's last status (path, reads, restarts, counters).
    pub account: String,
}

/// Studio A behind a symmetric NAT (a new public port per destination), B behind a home NAT,
/// both with the lab's coturn as STUN and TURN (REST credentials from [`SECRET`]), 20 ms on
/// each access link, for `seconds`: no hole can be punched to A, so the pair must go through
/// the relay. Builds its own lab (broker and TURN started); `outage` takes the relay away
/// for a while.
pub fn relay_attempt(runner: &Path, seconds: u32, outage: Option<Outage>) -> Result<RelayAttempt> {
    let lab = WanLab::build(LabConfig {
        nat_a: Nat::Symmetric,
        delay_a_ms: 20,
        delay_b_ms: 20,
        ..LabConfig::default()
    })?;
    let _broker = lab.start_broker()?;
    let mut relay = Some(lab.start_turn(SECRET)?);
    let lab = &lab;
    let turn = turn_args();
    let started = std::time::Instant::now();
    let a = Studio::start(lab, Ns::HostA, runner, CODE, seconds, &turn)?;
    // B stays 3 s longer: A's last report still has B.
    let b = Studio::start(lab, Ns::HostB, runner, CODE, seconds + 3, &turn)?;
    if let Some(outage) = outage {
        let at = |s: u32| started + Duration::from_secs(s.into());
        std::thread::sleep(at(outage.from_s).saturating_duration_since(std::time::Instant::now()));
        drop(relay.take());
        std::thread::sleep(at(outage.to_s).saturating_duration_since(std::time::Instant::now()));
        relay = Some(lab.start_turn(SECRET)?);
    }
    let (a, b) = (a.finish()?, b.finish()?);
    drop(relay);
    let up = |s: &RemoteStatus| {
        s.peers.len() == 1 && s.peers[0].ice == "connected" && s.peers[0].path == "relayed"
    };
    // Status lines come once a second from each runner, started together.
    let both_up: Vec<bool> = a.iter().zip(&b).map(|(a, b)| up(a) && up(b)).collect();
    let path_after_s = both_up.iter().position(|&u| u).map(|i| i as f64 + 1.0);
    let a_last = a.last().context("no status from A")?;
    let b_last = b
        .iter()
        .rfind(|s| !s.peers.is_empty())
        .or(b.last())
        .context("no status from B")?;
    let account = [("A", a_last), ("B", b_last)]
        .iter()
        .map(|(name, s)| {
            let c = &s.counters;
            format!(
                "{name}: {:?}, read {}, restarts {:?}, relays failed {}, unanswered {}, \
                 adopted {}",
                s.peers
                    .iter()
                    .map(|p| format!("{} via {} ({})", p.ice, p.path, p.pair))
                    .collect::<Vec<_>>(),
                c.datagrams_read,
                s.peers.iter().map(|p| p.restarts).collect::<Vec<_>>(),
                c.relay_failed,
                c.paths_unanswered,
                c.paths_adopted
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let connected = up(a_last) && up(b_last);
    let mut offset_error_ms = None;
    let mut within_bound = connected;
    if connected {
        for (us, them) in [(a_last, b_last), (b_last, a_last)] {
            let p = &us.peers[0];
            let truth = (us.clock_origin_ns.context("no clock origin")? as f64
                - them.clock_origin_ns.context("no clock origin")? as f64)
                / 1e6;
            let (Some(offset), Some(bound)) = (p.offset_ms, p.offset_bound_ms) else {
                within_bound = false;
                continue;
            };
            let error = (offset - truth).abs();
            within_bound &= error <= bound;
            offset_error_ms = Some(offset_error_ms.map_or(error, |e: f64| e.max(error)));
        }
    }
    let restarts = [a_last, b_last]
        .iter()
        .flat_map(|s| s.peers.iter().map(|p| p.restarts))
        .sum();
    Ok(RelayAttempt {
        up: both_up,
        restarts,
        connected,
        path_after_s,
        offset_error_ms,
        within_bound,
        account,
    })
}
