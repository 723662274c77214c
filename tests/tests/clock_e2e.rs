//! The clock engine end to end: the built plugin in the CLAP harness, a scripted minute of
//! transport (play, two tempo changes, stop, locate, a loop that wraps inside blocks), and the
//! clock messages the network worker passes on must match the reference model.

use anyhow::{Context, Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{clap_param_id, exclusive, wait_drained};
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::processor::{ParamChange, Processor};
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;
use lockstep_net::clock::reference::{Segment, Timeline, compare};
use lockstep_net::clock::{ClockEvent, ClockKind, ClockState};

const RATE: f64 = 48_000.0;
/// Block sizes the host cycles through (their sum, 1966, divides nothing in the script, so
/// loop wraps fall inside blocks).
const BLOCKS: [u32; 4] = [512, 333, 1024, 97];

/// Drives the host transport block by block and writes down the exact timeline it plays.
struct Script<'a> {
    processor: &'a mut Processor,
    probe: &'a StatusProbe,
    transport: HostTransport,
    sample: u64,
    blocks: usize,
    segments: Vec<Segment>,
    /// Parameter changes to deliver with the next block.
    params: Vec<ParamChange>,
}

impl Script<'_> {
    /// Start a new model segment at the current sample if the state changed.
    fn mark(&mut self, start: u64, playing: bool, beat: f64, tempo: f64) {
        if let Some(last) = self.segments.last_mut() {
            last.len = start - last.start;
            let continuous = last.playing == playing
                && last.tempo_bpm == tempo
                && (last.end_beat(RATE) - beat).abs() < 1e-9;
            if continuous {
                return;
            }
            if last.len == 0 {
                self.segments.pop();
            }
        }
        self.segments.push(Segment {
            start,
            len: 0,
            playing,
            start_beat: beat,
            tempo_bpm: tempo,
        });
    }

    fn run(&mut self, blocks: usize) -> Result<()> {
        for _ in 0..blocks {
            let len = BLOCKS[self.blocks % BLOCKS.len()];
            let t = self.transport;
            self.mark(self.sample, t.playing, t.pos_beats(), t.tempo_bpm);
            self.processor
                .process(len, Some(&t.event()), &self.params)?;
            self.params.clear();
            // A loop wrap inside this block: where exactly, in samples.
            let bps = t.tempo_bpm / 60.0 / RATE;
            if let Some((start, end)) = t.loop_beats()
                && t.playing
                && t.pos_beats() + f64::from(len) * bps >= end
            {
                let at = self.sample as f64 + (end - t.pos_beats()) / bps;
                ensure!(
                    (at - at.round()).abs() < 1e-6,
                    "wrap at fractional sample {at}"
                );
                self.mark(at.round() as u64, true, start, t.tempo_bpm);
            }
            self.transport.advance(len, RATE);
            self.sample += u64::from(len);
            self.blocks += 1;
            // Keep the ring shallow: this loop runs far faster than real time.
            if self.blocks.is_multiple_of(64) {
                wait_drained(self.probe)?;
            }
        }
        Ok(())
    }

    fn timeline(&mut self) -> Timeline {
        if let Some(last) = self.segments.last_mut() {
            last.len = self.sample - last.start;
        }
        Timeline {
            sample_rate: RATE,
            segments: self.segments.clone(),
        }
    }
}

fn scripted_minute(build: Build) -> Result<()> {
    let path = build.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    probe.record_clock(1_000_000);
    let mut instance = bundle.instantiate()?;
    let mut processor = instance.activate(RATE, 1024, Layout::Stereo)?;
    let mut s = Script {
        processor: &mut processor,
        probe: &probe,
        transport: HostTransport::new(120.0, (4, 4)),
        sample: 0,
        blocks: 0,
        segments: Vec::new(),
        // Clock Offset −12.5 ms (normalised over −250..250 ms).
        params: vec![ParamChange {
            offset: 0,
            id: clap_param_id("clk_ofs"),
            value: 0.475,
        }],
    };
    s.run(50)?; // stopped at the start
    s.transport.playing = true;
    s.run(1800)?; // play from 0 at 120 BPM
    s.transport.tempo_bpm = 150.0;
    s.run(1000)?; // first tempo change
    s.transport.playing = false;
    s.run(100)?; // stop
    s.transport.locate(8.0);
    s.transport.set_loop(Some((8.0, 12.0)));
    s.transport.playing = true;
    s.run(1800)?; // loop 8..12 at 150 BPM: wraps every 76,800 samples, inside blocks
    // 75 BPM = 38,400 samples per beat, a multiple of 150 BPM's 19,200, so loop wraps stay on
    // whole samples and the model's segments are exact.
    s.transport.tempo_bpm = 75.0;
    s.run(1100)?; // second tempo change, still looping
    s.transport.set_loop(None);
    s.transport.playing = false;
    s.run(50)?;
    let seconds = s.sample as f64 / RATE;
    let until = (s.sample - u64::from(BLOCKS[(s.blocks - 1) % BLOCKS.len()])) as f64;
    let timeline = s.timeline();
    ensure!(seconds >= 60.0, "script is {seconds} s");

    let status = wait_drained(&probe)?;
    let me = &status.worker.instances[0];
    ensure!(me.events_dropped_full == 0 && me.clock_gaps == 0, "{me:?}");
    ensure!(me.clock_state == ClockState::Stopped, "{me:?}");
    // The worker holds each message until its send time (stamp + latency + offset, ~30 ms
    // after the stamp here); wait until all of them have left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let recording = loop {
        let recording = probe.recorded_clock()?;
        if recording.messages.len() as u64 >= me.clock_messages {
            break recording;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{} of {} messages sent",
            recording.messages.len(),
            me.clock_messages
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    ensure!(recording.overflowed == 0, "recording overflowed");
    let engine: Vec<ClockEvent> = recording
        .messages
        .iter()
        .map(|r| ClockEvent {
            kind: r.transmit.message.kind,
            beat: r.transmit.message.beat,
            sample_pos: r.transmit.message.sample_pos,
            host_time_ns: r.transmit.message.host_time_ns,
            seq: 0,
        })
        .collect();
    ensure!(
        recording
            .messages
            .iter()
            .all(|r| !r.transmit.message.repair && !r.transmit.predicted),
        "repairs without loss"
    );
    // Every message is scheduled at stamp + assumed output latency (2 × 1024 samples) + offset.
    let schedule = me.clock_schedule;
    ensure!((schedule.offset_ns + 12.5e6).abs() < 1e3, "{schedule:?}");
    ensure!(
        (schedule.latency_ns - 2048.0 / RATE * 1e9).abs() < 1.0,
        "{schedule:?}"
    );
    for r in &recording.messages {
        let lead = r.transmit.send_at_ns - r.transmit.message.host_time_ns;
        ensure!(
            (lead - (schedule.latency_ns + schedule.offset_ns)).abs() < 1e-3 * 1e6,
            "{r:?}"
        );
        ensure!(r.sent_at_ns >= r.transmit.send_at_ns, "sent early: {r:?}");
    }
    let ideal = timeline.ideal();
    let agreement = compare(&engine, &ideal, until, 1.0, None).map_err(anyhow::Error::msg)?;
    let wraps = engine.iter().filter(|e| e.kind == ClockKind::Stop).count();
    ensure!(wraps >= 10, "{wraps} stops: the loop did not wrap");
    // About 58 s of playing at 75-150 BPM: close to 3,000 messages.
    ensure!(agreement.events > 2500, "{agreement:?}");
    eprintln!(
        "{build:?}: {seconds:.1} s, {} messages match the model, worst {:.2e} samples",
        agreement.events, agreement.worst_sample_error
    );
    instance.deactivate(processor);
    probe.record_clock(0);
    Ok(())
}

#[test]
fn a_scripted_minute_matches_the_model_release() -> Result<()> {
    let _guard = exclusive();
    scripted_minute(Build::Release)
}

#[test]
fn a_scripted_minute_matches_the_model_debug_alloc_checked() -> Result<()> {
    let _guard = exclusive();
    scripted_minute(Build::DebugAllocChecked)
}

/// 999 BPM in blocks of one sample, through the allocation-checked debug build: any
/// allocation in `process()` aborts the test, and every tick of one second arrives.
#[test]
fn allocation_free_at_999_bpm_and_block_size_1() -> Result<()> {
    let _guard = exclusive();
    let path = Build::DebugAllocChecked.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = bundle.instantiate()?;
    let mut processor = instance.activate(RATE, 1, Layout::Stereo)?;
    let mut transport = HostTransport::new(999.0, (4, 4));
    transport.playing = true;
    let blocks = 48_000u32;
    for i in 0..blocks {
        processor.process(1, Some(&transport.event()), &[])?;
        transport.advance(1, RATE);
        if i % 1000 == 999 {
            wait_drained(&probe)?;
        }
    }
    let status = wait_drained(&probe)?;
    let me = &status.worker.instances[0];
    ensure!(me.events_dropped_full == 0, "{me:?}");
    // Messages for all but the last block: beats 0 .. 47,999 samples at 999 BPM.
    let beats = f64::from(blocks - 1) * 999.0 / 60.0 / RATE;
    let expected_ticks = (beats * 24.0).ceil() as u64;
    ensure!(
        me.clock_ticks == expected_ticks,
        "{} ticks, expected {expected_ticks}",
        me.clock_ticks
    );
    let last = me.last_clock.context("no clock message")?;
    ensure!(last.kind == ClockKind::Tick, "{last:?}");
    instance.deactivate(processor);
    Ok(())
}
