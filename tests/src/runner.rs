//! Real-time paced processing with live status: the engine of `cargo xtask run`.
//!
//! The plugin instance is created, activated and torn down on the calling (main) thread; an
//! audio thread named `lockstep-audio` calls `process()` once per block and sleeps until the
//! block's real-time deadline, like a sound card would pace it. The main thread prints one
//! status line (or JSON object) per second until the duration ends or `stop` is set (Ctrl+C).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use lockstep_net::settings::{AccessMode, PeerSettings};
use lockstep_net::status::ExportedStatus;
use serde::Serialize;

use crate::host::{Bundle, Layout};
use crate::processor::Processor;
use crate::status::StatusProbe;
use crate::transport::HostTransport;
use lockstep_net::worker::osc::TransportRequest;

/// Everything the headless runner can be told on its command line.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// The `.clap` file to load.
    pub plugin: PathBuf,
    /// Tempo, 20..=999 BPM.
    pub tempo_bpm: f64,
    /// Time signature.
    pub time_sig: (u16, u16),
    /// Start playing (false = `--stopped`).
    pub playing: bool,
    /// Sample rate in Hz.
    pub sample_rate: f64,
    /// Block size in samples.
    pub block: u32,
    /// Stop after this long (`--for`), or run until Ctrl+C.
    pub duration: Option<Duration>,
    /// Print one JSON object per second instead of a status line.
    pub status_json: bool,
    /// AppleMIDI peers to add to the plugin's settings (`--peer`).
    pub peers: Vec<PeerSettings>,
    /// Our AppleMIDI control port (`--rtpmidi-port`).
    pub rtpmidi_port: Option<u16>,
    /// Who may invite us (`--rtpmidi-access`).
    pub rtpmidi_access: Option<AccessMode>,
    /// Send the recovery journal (`--no-journal` clears it).
    pub journal: bool,
    /// Advertise and browse over mDNS (`--no-mdns` clears it).
    pub mdns: bool,
    /// Our OSC port (`--osc-port`).
    pub osc_port: Option<u16>,
    /// Link Mode as the parameter's step: 0 Off, 1 Lead, 2 Follow (`--link`).
    pub link: Option<u8>,
    /// Link Quantum, beats (`--quantum`).
    pub quantum: Option<u8>,
    /// The interface Link runs on (`--link-interface`).
    pub link_interface: Option<String>,
    /// Controller mappings (`--osc-preset`).
    pub osc_mappings: Vec<lockstep_net::settings::OscMapping>,
    /// Who may send OSC (`--osc-allow`).
    pub osc_allow: Option<Vec<String>>,
    /// Switches OSC may set (`--osc-expose`).
    pub osc_expose: Vec<String>,
    /// OSC messages a second per source (`--osc-rate`).
    pub osc_rate: Option<f64>,
    /// Serve OSCQuery to the LAN (`--oscquery-lan`).
    pub oscquery_lan: bool,
    /// Most AppleMIDI guests (`--max-guests`).
    pub max_guests: Option<usize>,
    /// The remote session (`--remote`, `--broker`, `--stun`, `--turn*`).
    pub remote: lockstep_net::settings::RemoteSettings,
}

/// What the audio thread reports to the main thread.
#[derive(Debug, Default)]
struct AudioStats {
    blocks: AtomicU64,
    /// Blocks whose processing finished after their real-time deadline.
    late_blocks: AtomicU64,
    /// `process()` calls that returned an error.
    process_errors: AtomicU64,
    /// Host transport position in quarter notes, as f64 bits.
    pos_beats_bits: AtomicU64,
    /// Host tempo, as f64 bits.
    tempo_bits: AtomicU64,
    /// Host transport playing.
    playing: AtomicBool,
}

/// One status report (the `--status-json` object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seconds since processing started.
    pub elapsed_s: f64,
    /// What the host's transport says.
    pub host: HostReport,
    /// What the plugin reports through its status symbol.
    pub plugin: ExportedStatus,
}

/// The host side of a [`Report`].
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Playing.
    pub playing: bool,
    /// Tempo in BPM.
    pub tempo_bpm: f64,
    /// Time signature as "N/D".
    pub time_sig: String,
    /// Song position in quarter notes.
    pub pos_beats: f64,
    /// Sample rate in Hz.
    pub sample_rate: f64,
    /// Block size.
    pub block: u32,
    /// Blocks processed.
    pub blocks: u64,
    /// Blocks that missed their real-time deadline.
    pub late_blocks: u64,
    /// Failed `process()` calls.
    pub process_errors: u64,
}

/// Totals after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Blocks processed.
    pub blocks: u64,
    /// Blocks that missed their deadline.
    pub late_blocks: u64,
    /// Worker threads alive after the instance was destroyed (must be 0).
    pub worker_threads_after: usize,
}

/// Run the plugin in real time until `config.duration` passes or `stop` becomes true.
pub fn run(config: &RunConfig, stop: &AtomicBool, out: &mut dyn Write) -> Result<RunSummary> {
    let bundle = Bundle::load(&config.plugin)?;
    let probe = StatusProbe::open(&config.plugin)?;
    let mut instance = bundle.instantiate()?;
    if !config.peers.is_empty()
        || config.rtpmidi_port.is_some()
        || config.rtpmidi_access.is_some()
        || !config.journal
        || !config.mdns
        || config.osc_port.is_some()
        || config.link_interface.is_some()
        || !config.osc_mappings.is_empty()
        || config.osc_allow.is_some()
        || !config.osc_expose.is_empty()
        || config.osc_rate.is_some()
        || config.oscquery_lan
        || config.max_guests.is_some()
        || !config.remote.code.is_empty()
    {
        let mut settings = instance.net_settings()?;
        settings
            .peers
            .extend(config.peers.iter().cloned().map(|mut p| {
                p.journal = config.journal;
                p
            }));
        settings.rtp_midi_journal = config.journal;
        settings.mdns = config.mdns;
        if let Some(port) = config.osc_port {
            settings.osc_port = port;
        }
        if let Some(interface) = &config.link_interface {
            settings.link_interface.clone_from(interface);
        }
        settings
            .osc_mappings
            .extend(config.osc_mappings.iter().cloned());
        if let Some(port) = config.rtpmidi_port {
            settings.rtp_midi_port = port;
        }
        if let Some(access) = config.rtpmidi_access {
            settings.rtp_midi_access = access;
        }
        if let Some(allow) = &config.osc_allow {
            settings.osc_allow.clone_from(allow);
        }
        settings
            .osc_expose
            .extend(config.osc_expose.iter().cloned());
        if let Some(rate) = config.osc_rate {
            settings.osc_rate_limit = rate;
        }
        settings.oscquery_lan |= config.oscquery_lan;
        if let Some(max) = config.max_guests {
            settings.rtp_midi_max_guests = max;
        }
        if !config.remote.code.is_empty() {
            settings.remote.clone_from(&config.remote);
        }
        instance.set_net_settings(&settings)?;
    }
    let processor = instance.activate(config.sample_rate, config.block, Layout::Stereo)?;

    let mut transport = HostTransport::new(config.tempo_bpm, config.time_sig);
    transport.playing = config.playing;
    let stats = Arc::new(AudioStats::default());
    stats
        .tempo_bits
        .store(transport.tempo_bpm.to_bits(), Ordering::Relaxed);
    stats.playing.store(transport.playing, Ordering::Relaxed);
    // OSC `/lockstep/transport/{play,stop,tempo,locate}` drive this host's transport.
    probe.set_transport_control(true);
    let (requests_tx, requests) = std::sync::mpsc::channel::<TransportRequest>();
    // Parameters the command line sets, as a host would at the first block.
    let mut initial = Vec::new();
    if let Some(step) = config.link {
        initial.push(crate::processor::ParamChange {
            offset: 0,
            id: crate::harness::clap_param_id("lnk_md"),
            value: f64::from(step),
        });
    }
    if let Some(q) = config.quantum {
        initial.push(crate::processor::ParamChange {
            offset: 0,
            id: crate::harness::clap_param_id("lnk_q"),
            value: f64::from(q.saturating_sub(1)),
        });
    }
    let audio_stop = Arc::new(AtomicBool::new(false));
    let audio = {
        let stats = Arc::clone(&stats);
        let audio_stop = Arc::clone(&audio_stop);
        let (rate, block) = (config.sample_rate, config.block);
        std::thread::Builder::new()
            .name("lockstep-audio".into())
            .spawn(move || {
                // As a DAW's audio thread (JACK's default realtime priority), above the
                // plugin's own realtime threads; without the right, it runs normally.
                let _ = lockstep_net::sys::realtime(70);
                audio_loop(
                    processor,
                    transport,
                    (rate, block),
                    &stats,
                    &audio_stop,
                    &requests,
                    initial,
                )
            })
            .context("spawning the audio thread")?
    };

    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(1);
    // Errors in the loop must still stop the audio thread and deactivate: no `?` inside.
    let result: Result<()> = loop {
        let now = Instant::now();
        let done = stop.load(Ordering::SeqCst)
            || config.duration.is_some_and(|d| now >= started + d)
            || audio.is_finished();
        if now >= next_report || done {
            next_report += Duration::from_secs(1);
            let printed = probe.read().and_then(|plugin| {
                let report = Report {
                    elapsed_s: started.elapsed().as_secs_f64(),
                    host: host_report(config, &transport, &stats),
                    plugin,
                };
                print_report(out, &report, config.status_json)
            });
            if printed.is_err() {
                break printed;
            }
        }
        if done {
            break Ok(());
        }
        instance.pump_main_thread();
        for request in probe.take_transport_requests().unwrap_or_default() {
            let _ = requests_tx.send(request);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    probe.set_transport_control(false);

    audio_stop.store(true, Ordering::SeqCst);
    let processor = audio
        .join()
        .map_err(|_| anyhow!("the audio thread panicked"))?;
    instance.deactivate(processor);
    drop(instance);
    drop(bundle);
    result?;
    // A joined thread can still be listed under /proc for a moment: the kernel wakes the
    // joiner before it has released the task. A thread that really stays is still there 1 s on.
    let mut after = probe.read()?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while after.live_worker_threads > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        after = probe.read()?;
    }
    let summary = RunSummary {
        blocks: stats.blocks.load(Ordering::Relaxed),
        late_blocks: stats.late_blocks.load(Ordering::Relaxed),
        worker_threads_after: after.live_worker_threads,
    };
    if !config.status_json {
        writeln!(
            out,
            "stopped: {} blocks, {} late, worker threads left: {}",
            summary.blocks, summary.late_blocks, summary.worker_threads_after
        )?;
    }
    Ok(summary)
}

fn audio_loop(
    mut processor: Processor,
    mut transport: HostTransport,
    (sample_rate, block): (f64, u32),
    stats: &AudioStats,
    stop: &AtomicBool,
    requests: &std::sync::mpsc::Receiver<TransportRequest>,
    mut initial: Vec<crate::processor::ParamChange>,
) -> Processor {
    let block_period = Duration::from_secs_f64(f64::from(block) / sample_rate);
    let mut deadline = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        while let Ok(request) = requests.try_recv() {
            match request {
                TransportRequest::Play => transport.playing = true,
                TransportRequest::Stop => transport.playing = false,
                TransportRequest::Tempo(bpm) => transport.tempo_bpm = bpm,
                TransportRequest::Locate(beats) => transport.locate(beats),
            }
            stats
                .tempo_bits
                .store(transport.tempo_bpm.to_bits(), Ordering::Relaxed);
            stats.playing.store(transport.playing, Ordering::Relaxed);
        }
        let event = transport.event();
        let changes = std::mem::take(&mut initial);
        if processor.process(block, Some(&event), &changes).is_err() {
            stats.process_errors.fetch_add(1, Ordering::Relaxed);
        }
        transport.advance(block, sample_rate);
        stats.blocks.fetch_add(1, Ordering::Relaxed);
        stats
            .pos_beats_bits
            .store(transport.pos_beats().to_bits(), Ordering::Relaxed);
        deadline += block_period;
        let now = Instant::now();
        if now > deadline {
            stats.late_blocks.fetch_add(1, Ordering::Relaxed);
            // Like a sound card after an xrun: carry on from now, don't try to catch up.
            deadline = now;
        } else {
            std::thread::sleep(deadline - now);
        }
    }
    processor
}

fn host_report(config: &RunConfig, transport: &HostTransport, stats: &AudioStats) -> HostReport {
    HostReport {
        playing: stats.playing.load(Ordering::Relaxed),
        tempo_bpm: f64::from_bits(stats.tempo_bits.load(Ordering::Relaxed)),
        time_sig: format!("{}/{}", transport.time_sig.0, transport.time_sig.1),
        pos_beats: f64::from_bits(stats.pos_beats_bits.load(Ordering::Relaxed)),
        sample_rate: config.sample_rate,
        block: config.block,
        blocks: stats.blocks.load(Ordering::Relaxed),
        late_blocks: stats.late_blocks.load(Ordering::Relaxed),
        process_errors: stats.process_errors.load(Ordering::Relaxed),
    }
}

fn print_report(out: &mut dyn Write, report: &Report, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
    } else {
        let host = &report.host;
        let plugin = &report.plugin;
        let (pushed, dropped) = plugin.worker.instances.iter().fold((0, 0), |acc, i| {
            (acc.0 + i.events_pushed, acc.1 + i.events_dropped_full)
        });
        let rtp = plugin
            .worker
            .instances
            .first()
            .and_then(|i| i.rtpmidi.as_ref())
            .map_or_else(
                || "rtp-midi off".to_owned(),
                |r| match (r.control_port, r.errors.first()) {
                    (_, Some(error)) => format!("rtp-midi: {error}"),
                    (Some(port), None) => {
                        let up = r.peers.iter().filter(|p| p.connected).count();
                        let rtt = r
                            .peers
                            .iter()
                            .filter_map(|p| p.rtt_us)
                            .map(|us| format!(" {:.2} ms", us / 1000.0))
                            .collect::<String>();
                        format!("rtp-midi :{port} peers {up}/{}{rtt}", r.peers.len())
                    }
                    (None, None) => "rtp-midi idle".to_owned(),
                },
            );
        let link = plugin.worker.link.as_ref().map_or_else(
            || "link off".to_owned(),
            |l| match &l.error {
                Some(e) => format!("link: {e}"),
                None => format!(
                    "link {:?} {:.2} BPM peers {} phase {:.2}/{}",
                    l.mode, l.tempo, l.session_peers, l.phase, l.quantum
                ),
            },
        );
        let osc = plugin.worker.osc.as_ref().map_or_else(
            || "osc off".to_owned(),
            |o| match (o.port, o.errors.first()) {
                (Some(port), _) => format!(
                    "osc :{port} {} applied {} refused",
                    o.applied,
                    o.malformed
                        + o.unknown_address
                        + o.wrong_type
                        + o.out_of_range
                        + o.refused_source
                        + o.rate_limited
                        + o.too_large
                        + o.disabled
                ),
                (None, Some(e)) => format!("osc: {e}"),
                (None, None) => "osc idle".to_owned(),
            },
        );
        let clock = plugin.worker.instances.first().map_or_else(
            || "clock idle".to_owned(),
            |i| {
                format!(
                    "clock {:?} ({} ticks, {} gaps, {} late, offset {:+.1} ms)",
                    i.clock_state,
                    i.clock_ticks,
                    i.clock_gaps,
                    i.clock_timing.late,
                    i.clock_schedule.offset_ns / 1e6
                )
            },
        );
        let seen = plugin
            .worker
            .instances
            .first()
            .and_then(|i| i.last_transport)
            .map_or_else(
                || "no transport yet".to_owned(),
                |t| {
                    format!(
                        "plugin sees {} {:.2} BPM beat {:.2}",
                        if t.playing { "playing" } else { "stopped" },
                        t.tempo_bpm.unwrap_or(0.0),
                        t.pos_beats.unwrap_or(0.0)
                    )
                },
            );
        writeln!(
            out,
            "[{:6.1}s] host {} {:.2} BPM {} beat {:.2} | {} | {} | {} | {} | {} | worker {} ({} instance{}) | events {} dropped {} | late blocks {}",
            report.elapsed_s,
            if host.playing { "playing" } else { "stopped" },
            host.tempo_bpm,
            host.time_sig,
            host.pos_beats,
            seen,
            clock,
            rtp,
            osc,
            link,
            if plugin.worker.running {
                "running"
            } else {
                "stopped"
            },
            plugin.worker.instances.len(),
            if plugin.worker.instances.len() == 1 {
                ""
            } else {
                "s"
            },
            pushed,
            dropped,
            host.late_blocks,
        )?;
    }
    out.flush()?;
    Ok(())
}
