//! RTP-MIDI against a real peer: `pymidi`'s AppleMIDI server (tests/peers/pymidi_peer.py) on
//! loopback. Lockstep invites it from the settings saved in its state, as a DAW project would;
//! a transport scripted through the CLAP harness in real time (play, stop, locate, play, stop)
//! must reach pymidi completely and in order: every Start, Stop, Continue, Song Position and
//! clock, with the exact number of ticks for the beats played. tshark captures the run on `lo`
//! and must decode every datagram as AppleMIDI or RTP-MIDI, none malformed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{ScriptPeer, clap_param_id, exclusive, wait_for};
use lockstep_host::host::{Bundle, Instance, Layout};
use lockstep_host::pcap::Capture;
use lockstep_host::processor::{ParamChange, Processor};
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;
use lockstep_net::proto::rtpmidi::MidiCommand;
use lockstep_net::proto::rtpmidi::journal::SequencerState;
use lockstep_net::settings::{AccessMode, PeerSettings};
use serde_json::Value;

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 512;
const PEER_PORT: u16 = 6004;

/// The pymidi process and the lines it printed so far.
struct Peer(ScriptPeer);

impl std::ops::Deref for Peer {
    type Target = ScriptPeer;
    fn deref(&self) -> &ScriptPeer {
        &self.0
    }
}

impl Peer {
    fn start(seconds: u32) -> Result<Self> {
        let peer = Self::spawn(
            "pymidi_peer.py",
            &[PEER_PORT.to_string(), seconds.to_string()],
        )?;
        peer.wait("pymidi ready", |l| l.iter().any(|v| v["event"] == "ready"))?;
        Ok(peer)
    }

    fn spawn(script: &str, args: &[String]) -> Result<Self> {
        Ok(Self(ScriptPeer::spawn(script, args)?))
    }

    /// The MIDI messages received so far: (status, data bytes).
    fn midi(lines: &[Value]) -> Vec<(u64, Vec<u64>)> {
        lines
            .iter()
            .filter(|v| v["event"] == "midi")
            .map(|v| {
                let data = v["data"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                (v["status"].as_u64().unwrap_or(0), data)
            })
            .collect()
    }
}

/// (protocols, expert severity, malformed) of every frame in `pcap`, plus tshark's reading of Chapter Q as (N, D, C, CLOCK) when the frame has one.
#[allow(clippy::type_complexity)]
fn decoded_with_journal(
    pcap: &std::path::Path,
) -> Result<Vec<(String, String, String, Option<(bool, bool, bool, u32)>)>> {
    let rows = lockstep_host::pcap::tshark_fields(
        pcap,
        &[
            "frame.protocols",
            "_ws.expert.severity",
            "_ws.malformed",
            "rtpmidi.sj_chapter_q_nflag",
            "rtpmidi.sj_chapter_q_dflag",
            "rtpmidi.sj_chapter_q_cflag",
            "rtpmidi.sj_chapter_q_top",
            "rtpmidi.sj_chapter_q_clock",
        ],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let field = |i: usize| r.get(i).cloned().unwrap_or_default();
            let flag = |i: usize| matches!(field(i).as_str(), "1" | "True" | "true");
            let number = |i: usize| field(i).parse::<u32>().unwrap_or(0);
            let q = (!field(3).is_empty())
                .then(|| (flag(3), flag(4), flag(5), (number(6) << 16) | number(7)));
            (field(0), field(1), field(2), q)
        })
        .collect())
}

/// The pymidi responder as a peer in Lockstep's settings.
fn pymidi() -> PeerSettings {
    PeerSettings {
        name: "pymidi".into(),
        host: "127.0.0.1".into(),
        port: PEER_PORT,
        ..PeerSettings::default()
    }
}

/// A Lockstep instance on RTP-MIDI port 5004 with `peers` and `access` in its saved settings,
/// restored the way a DAW restores a project.
fn lockstep(bundle: &Bundle, peers: Vec<PeerSettings>, access: AccessMode) -> Result<Instance> {
    let mut instance = bundle.instantiate()?;
    let mut settings = instance.net_settings()?;
    settings.rtp_midi_port = 5004;
    settings.peers = peers;
    settings.rtp_midi_access = access;
    instance.set_net_settings(&settings)?;
    Ok(instance)
}

/// Process `blocks` blocks paced in real time.
fn play(p: &mut Processor, t: &mut HostTransport, blocks: u32) -> Result<()> {
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let mut deadline = Instant::now();
    for _ in 0..blocks {
        p.process(BLOCK, Some(&t.event()), &[])?;
        t.advance(BLOCK, RATE);
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// Ticks on the grid k/24 in [from, to).
fn ticks_between(from: f64, to: f64) -> usize {
    let first = (from * 24.0 - 1e-6).ceil() as i64;
    let end = (to * 24.0 - 1e-6).ceil() as i64;
    usize::try_from(end - first).unwrap_or(0)
}

#[test]
fn pymidi_receives_every_clock_and_transport_message_in_order() -> Result<()> {
    let _guard = exclusive();
    let capture = Capture::start(
        "rtpmidi-interop.pcap",
        "udp portrange 5004-5005 or udp portrange 6004-6005",
    )?;
    let peer = Peer::start(60)?;
    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = lockstep(&bundle, vec![pymidi()], AccessMode::Anyone)?;
    let mut p = instance.activate(RATE, BLOCK, Layout::Stereo)?;
    let mut t = HostTransport::new(120.0, (4, 4));
    // Idle blocks until the session is up (invitations on both ports).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        play(&mut p, &mut t, 10)?;
        let status = probe.read()?;
        let rtp = status.worker.instances[0]
            .rtpmidi
            .clone()
            .context("no rtp-midi status")?;
        ensure!(rtp.errors.is_empty(), "{rtp:?}");
        if rtp.peers.iter().any(|p| p.connected) {
            break;
        }
        ensure!(Instant::now() < deadline, "pymidi never connected: {rtp:?}");
    }
    peer.wait("pymidi's connected event", |l| {
        l.iter().any(|v| v["event"] == "connected")
    })?;

    // The script: play 188 blocks from 0, stop, locate to 8.25, play 141 blocks, stop.
    t.playing = true;
    play(&mut p, &mut t, 188)?;
    let first_stop = t.pos_beats();
    t.playing = false;
    play(&mut p, &mut t, 40)?;
    t.locate(8.25);
    play(&mut p, &mut t, 20)?;
    t.playing = true;
    play(&mut p, &mut t, 141)?;
    let second_stop = t.pos_beats();
    t.playing = false;
    play(&mut p, &mut t, 40)?;

    let n1 = ticks_between(0.0, first_stop);
    let n2 = ticks_between(8.25, second_stop);
    let mut expected: Vec<(u64, Vec<u64>)> = vec![(0xFA, vec![])];
    expected.extend(std::iter::repeat_n((0xF8, vec![]), n1));
    expected.push((0xFC, vec![]));
    // Locate while stopped (SPP 33 = 8.25 quarter notes), then play from there: SPP, Continue.
    expected.push((0xF2, vec![33, 0]));
    expected.push((0xF2, vec![33, 0]));
    expected.push((0xFB, vec![]));
    expected.extend(std::iter::repeat_n((0xF8, vec![]), n2));
    expected.push((0xFC, vec![]));

    let status = wait_for(&probe, "every RTP-MIDI packet to leave", |s| {
        s.worker.instances[0].rtpmidi.as_ref().is_some_and(|r| {
            let guards = r.peers.first().map_or(0, |p| p.guard_packets);
            r.rtp_sent >= expected.len() as u64 + guards
        })
    })?;
    let rtp = status.worker.instances[0]
        .rtpmidi
        .clone()
        .context("status")?;
    let lines = peer.wait("every message at pymidi", |l| {
        l.iter().filter(|v| v["event"] == "midi").count() >= expected.len()
    })?;
    let got = Peer::midi(&lines);
    ensure!(
        got == expected,
        "pymidi got {} messages, expected {} (n1 {n1}, n2 {n2}):\n{:?}",
        got.len(),
        expected.len(),
        &got[..got.len().min(12)]
    );
    let me = &rtp.peers[0];
    // One packet per message, plus the journal's guard packets after the last changes.
    ensure!(
        rtp.rtp_sent == expected.len() as u64 + me.guard_packets,
        "sent {} packets: {rtp:?}",
        rtp.rtp_sent
    );
    ensure!(
        me.journal && me.guard_packets > 0,
        "journal on by default: {me:?}"
    );
    ensure!(rtp.malformed == 0 && rtp.send_errors == 0, "{rtp:?}");
    ensure!(me.connected && me.connects == 1, "{me:?}");
    ensure!(
        me.rtt_us.is_some_and(|r| r < 5_000.0),
        "CK on loopback: {me:?}"
    );

    // Deactivating leaves the session: pymidi sees the BY.
    instance.deactivate(p);
    peer.wait("pymidi to see the BY", |l| {
        l.iter().any(|v| v["event"] == "disconnected")
    })?;

    let frames = decoded_with_journal(&capture.finish()?)?;
    ensure!(!frames.is_empty(), "nothing captured");
    // The journal as tshark reads it: every RTP-MIDI packet after the first carries Chapter
    // Q with the state after the packets before it; in order, the distinct states are those
    // the expected messages pass through.
    let mut want = Vec::new();
    let mut state = SequencerState::new();
    for (status, data) in &expected {
        let command = match status {
            0xF2 => MidiCommand::SongPosition((data[0] | data[1] << 7) as u16),
            s => MidiCommand::RealTime(*s as u8),
        };
        state.apply(&command);
        let q = state.chapter_q(false);
        let seen = (
            q.running,
            q.downbeat,
            q.position.is_some(),
            q.position.unwrap_or(0),
        );
        if want.last() != Some(&seen) {
            want.push(seen);
        }
    }
    let mut seen = Vec::new();
    for (_, _, _, q) in frames.iter().filter(|f| f.0.ends_with("rtpmidi")).skip(1) {
        let q = q.context("an RTP-MIDI packet without Chapter Q")?;
        if seen.last() != Some(&q) {
            seen.push(q);
        }
    }
    ensure!(
        seen == want,
        "tshark's Chapter Q sequence differs:\n{:?}\n{:?}",
        &seen[..seen.len().min(8)],
        &want[..want.len().min(8)]
    );
    for (i, (protocols, expert, malformed, _)) in frames.iter().enumerate() {
        ensure!(
            protocols.ends_with("applemidi") || protocols.ends_with("rtp:rtpmidi"),
            "frame {} is {protocols}",
            i + 1
        );
        ensure!(
            expert.is_empty() && malformed.is_empty(),
            "frame {}: {expert} {malformed}",
            i + 1
        );
    }
    let rtp_frames = frames.iter().filter(|f| f.0.ends_with("rtpmidi")).count();
    // Guard packets go on until the session ends, after the status was read.
    ensure!(
        rtp_frames as u64 >= rtp.rtp_sent,
        "{rtp_frames} RTP-MIDI frames captured, {} sent",
        rtp.rtp_sent
    );
    Ok(())
}

/// The other direction: an initiator built on pymidi's packet definitions invites Lockstep
/// (which accepts anyone by default), receives the clock, measures CK, and leaves with BY.
/// With access set to "nobody" the same invitation gets NO and is counted.
#[test]
fn a_pymidi_initiator_invites_lockstep_and_receives_the_clock() -> Result<()> {
    let _guard = exclusive();
    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    for access in [AccessMode::Anyone, AccessMode::Nobody] {
        let mut instance = lockstep(&bundle, Vec::new(), access)?;
        let mut p = instance.activate(RATE, BLOCK, Layout::Stereo)?;
        let mut t = HostTransport::new(150.0, (4, 4));
        play(&mut p, &mut t, 10)?;
        let peer = Peer::spawn(
            "pymidi_initiator.py",
            &["7004".into(), "5004".into(), "4".into()],
        )?;
        if access == AccessMode::Nobody {
            peer.wait("the refusal", |l| {
                l.iter().any(|v| v["event"] == "rejected")
            })?;
            let status = wait_for(&probe, "the refusal to be counted", |s| {
                s.worker.instances[0]
                    .rtpmidi
                    .as_ref()
                    .is_some_and(|r| r.refused >= 1)
            })?;
            ensure!(
                status.worker.instances[0]
                    .rtpmidi
                    .as_ref()
                    .is_some_and(|r| r.peers.is_empty())
            );
            instance.deactivate(p);
            continue;
        }
        peer.wait("the session", |l| {
            l.iter().any(|v| v["event"] == "connected")
        })?;
        // Play 1.6 s at 150 BPM from the start, then stop.
        t.playing = true;
        play(&mut p, &mut t, 150)?;
        let stop = t.pos_beats();
        t.playing = false;
        play(&mut p, &mut t, 30)?;
        let mut expected: Vec<(u64, Vec<u64>)> = vec![(0xFA, vec![])];
        expected.extend(std::iter::repeat_n(
            (0xF8, vec![]),
            ticks_between(0.0, stop),
        ));
        expected.push((0xFC, vec![]));
        let lines = peer.wait("the clock at the initiator", |l| {
            Peer::midi(l).len() >= expected.len()
        })?;
        ensure!(
            Peer::midi(&lines) == expected,
            "got {:?}",
            Peer::midi(&lines)
        );
        ensure!(
            lines.iter().any(|v| v["event"] == "latency"),
            "no CK reply: {lines:?}"
        );
        let status = probe.read()?;
        let rtp = status.worker.instances[0]
            .rtpmidi
            .clone()
            .context("status")?;
        let guest = rtp.peers.first().context("no guest peer")?;
        ensure!(guest.connected && !guest.in_directory, "{guest:?}");
        // The initiator leaves after its 4 s: the guest disappears from the list.
        wait_for(&probe, "the BY to end the session", |s| {
            s.worker.instances[0]
                .rtpmidi
                .as_ref()
                .is_some_and(|r| r.peers.is_empty())
        })?;
        instance.deactivate(p);
    }
    Ok(())
}

/// The RTP-MIDI parameter works live: switched off while connected, Lockstep leaves the session
/// (pymidi sees BY) and closes its ports; switched back on, it invites again.
#[test]
fn switching_rtp_midi_off_and_on_while_active() -> Result<()> {
    let _guard = exclusive();
    let peer = Peer::start(60)?;
    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = lockstep(&bundle, vec![pymidi()], AccessMode::Anyone)?;
    let mut p = instance.activate(RATE, BLOCK, Layout::Stereo)?;
    let mut t = HostTransport::new(120.0, (4, 4));
    let connected = |s: &lockstep_net::status::ExportedStatus| {
        s.worker.instances[0]
            .rtpmidi
            .as_ref()
            .is_some_and(|r| r.peers.iter().any(|p| p.connected))
    };
    play(&mut p, &mut t, 5)?;
    wait_for(&probe, "the session", connected)?;
    let rtp_on = clap_param_id("rtp_on");
    let off = [ParamChange {
        offset: 0,
        id: rtp_on,
        value: 0.0,
    }];
    p.process(BLOCK, Some(&t.event()), &off)?;
    peer.wait("pymidi to see the BY", |l| {
        l.iter().any(|v| v["event"] == "disconnected")
    })?;
    let status = wait_for(&probe, "RTP-MIDI to close", |s| {
        s.worker.instances[0]
            .rtpmidi
            .as_ref()
            .is_some_and(|r| r.control_port.is_none())
    })?;
    let rtp = status.worker.instances[0]
        .rtpmidi
        .clone()
        .context("status")?;
    ensure!(
        rtp.errors.iter().any(|e| e.contains("switched off")),
        "{rtp:?}"
    );
    let on = [ParamChange {
        offset: 0,
        id: rtp_on,
        value: 1.0,
    }];
    p.process(BLOCK, Some(&t.event()), &on)?;
    play(&mut p, &mut t, 5)?;
    wait_for(&probe, "the session to come back", connected)?;
    let lines = peer.wait("pymidi's second connection", |l| {
        l.iter().filter(|v| v["event"] == "connected").count() >= 2
    })?;
    ensure!(
        lines
            .iter()
            .filter(|v| v["event"] == "disconnected")
            .count()
            == 1
    );
    instance.deactivate(p);
    Ok(())
}

/// Peers can be given by host name (looked up off the worker thread; a name that does not
/// resolve is reported and retried) and the peer list can change while the plugin is active,
/// as when a DAW loads a project or preset into a running instance.
#[test]
fn peers_by_host_name_and_changed_while_active() -> Result<()> {
    let _guard = exclusive();
    let peer = Peer::start(60)?;
    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = lockstep(&bundle, Vec::new(), AccessMode::Anyone)?;
    let mut p = instance.activate(RATE, BLOCK, Layout::Stereo)?;
    let mut t = HostTransport::new(120.0, (4, 4));
    play(&mut p, &mut t, 5)?;
    let status = wait_for(&probe, "RTP-MIDI to open", |s| {
        s.worker.instances[0]
            .rtpmidi
            .as_ref()
            .is_some_and(|r| r.control_port == Some(5004))
    })?;
    ensure!(
        status.worker.instances[0]
            .rtpmidi
            .as_ref()
            .is_some_and(|r| r.peers.is_empty()),
        "no peers yet: {status:?}"
    );

    // New settings while active: pymidi by name, and a name that cannot resolve.
    let mut settings = instance.net_settings()?;
    settings.peers = vec![
        PeerSettings {
            host: "localhost".into(),
            ..pymidi()
        },
        PeerSettings {
            name: "nowhere".into(),
            host: "no-such-studio.invalid".into(),
            port: 5004,
            ..PeerSettings::default()
        },
    ];
    instance.set_net_settings(&settings)?;
    play(&mut p, &mut t, 5)?;
    let status = wait_for(&probe, "the session with pymidi found by name", |s| {
        s.worker.instances[0].rtpmidi.as_ref().is_some_and(|r| {
            r.peers
                .iter()
                .any(|p| p.connected && p.address == format!("127.0.0.1:{PEER_PORT}"))
        })
    })?;
    peer.wait("pymidi's connected event", |l| {
        l.iter().any(|v| v["event"] == "connected")
    })?;
    let status = if status.worker.instances[0]
        .rtpmidi
        .as_ref()
        .is_some_and(|r| r.errors.is_empty())
    {
        wait_for(&probe, "the failed lookup to be reported", |s| {
            s.worker.instances[0]
                .rtpmidi
                .as_ref()
                .is_some_and(|r| !r.errors.is_empty())
        })?
    } else {
        status
    };
    let rtp = status.worker.instances[0]
        .rtpmidi
        .clone()
        .context("status")?;
    ensure!(
        rtp.errors
            .iter()
            .any(|e| e.contains("cannot find host no-such-studio.invalid")),
        "{rtp:?}"
    );
    ensure!(
        rtp.resolving == ["no-such-studio.invalid"],
        "still trying: {rtp:?}"
    );
    ensure!(rtp.peers.len() == 1, "{rtp:?}");
    instance.deactivate(p);
    Ok(())
}
