//! OSC under load (run by `cargo xtask bench` inside a private network namespace):
//!
//! 1. **Throughput with zero loss**: the built plugin in the headless host (256-sample blocks
//!    at 48 kHz, `process()` paced in real time), its per-source rate limit raised by the
//!    `osc_rate_limit` setting (the default stays protective); 8 sender threads send
//!    `/lockstep/param/mac_N` at a paced aggregate rate for `LOCKSTEP_OSC_SECONDS` (default 5).
//!    The row is the rate sent, and it counts only if every message was received, applied and
//!    reached the audio thread (the status's `received`, `applied`, `dropped_full`; a value
//!    superseded by a newer one of the same parameter in the same drain pass is `merged`, the
//!    newer one reaching the audio thread in its place).
//! 2. **Receive → audio thread latency**: one message every 20 ms for 10 s (64-sample blocks,
//!    1.33 ms) flips Macro 1; for each, the time from just before `send_to` to the start of the
//!    `process()` call whose output carries the new value (the CLAP shim reports it to the host
//!    there), p50 and p99. At most one block of that is waiting for the next `process()`.
//! 3. **Matcher cost**: the sans-IO OSC core with 1,000 controller mappings, one mapped message
//!    handled (decode, allow-list, rate limit, match, map, emit), ns per message.
//!
//! Prints one JSON object per part: {"kind": "throughput", "rate", "sent", "received",
//! "applied", "dropped"}, {"kind": "latency", "samples", "p50_us", "p99_us", "block_us"},
//! {"kind": "matcher", "mappings", "ns_per_message"}.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockstep_host::bundle::Build;
use lockstep_host::harness::clap_param_id;
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::processor::OutParamEvent;
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;
use lockstep_net::proto::osc::{Arg, Message, encode_message};

const RATE: f64 = 48_000.0;
const OSC_PORT: u16 = 8400;

fn message(address: &str, value: f32) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_message(
        &Message {
            address: address.into(),
            args: vec![Arg::Float(value)],
        },
        &mut bytes,
    );
    bytes
}

fn osc_status(probe: &StatusProbe) -> lockstep_net::worker::osc::OscStatus {
    probe
        .read()
        .ok()
        .and_then(|s| s.worker.osc)
        .unwrap_or_default()
}

/// The built plugin in the headless host on [`OSC_PORT`], activated with `block`-sample blocks,
/// its per-source OSC rate limit raised to `rate_limit` if given.
fn rig(
    block: u32,
    rate_limit: Option<f64>,
) -> (
    Bundle,
    StatusProbe,
    lockstep_host::host::Instance,
    lockstep_host::processor::Processor,
) {
    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path).expect("bundle built");
    let probe = StatusProbe::open(&path).expect("status");
    let mut instance = bundle.instantiate().expect("instance");
    let mut settings = instance.net_settings().expect("settings");
    settings.osc_port = OSC_PORT;
    if let Some(rate) = rate_limit {
        settings.osc_rate_limit = rate;
    }
    instance.set_net_settings(&settings).expect("settings");
    let p = instance
        .activate(RATE, block, Layout::Stereo)
        .expect("activate");
    (bundle, probe, instance, p)
}

/// Part 1: 8 senders at `rate` messages a second in all, for `seconds`.
fn throughput(rate: f64, seconds: f64) -> String {
    const BLOCK: u32 = 256;
    let (_bundle, probe, mut instance, mut p) = rig(BLOCK, Some(rate));
    let t = HostTransport::new(120.0, (4, 4));
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let mut deadline = Instant::now();
    let mut step = |p: &mut lockstep_host::processor::Processor| {
        p.process(BLOCK, Some(&t.event()), &[]).expect("process");
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    };
    while osc_status(&probe).port != Some(OSC_PORT) {
        step(&mut p);
    }
    let before = osc_status(&probe);
    let stop = Arc::new(AtomicBool::new(false));
    let to = SocketAddr::from(([127, 0, 0, 1], OSC_PORT));
    let senders: Vec<_> = (0..8u16)
        .map(|k| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // Each sender its own source address (127.0.0.1 .. .8 are all loopback).
                let socket = UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, k as u8 + 1), 0))
                    .expect("bind");
                let per_sender = rate / 8.0;
                // Paced in 1 ms slices.
                let per_slice = (per_sender / 1000.0).round() as u64;
                let bytes = message(&format!("/lockstep/param/mac_{}", k + 1), 0.5);
                let started = Instant::now();
                let mut sent = 0u64;
                let mut slice = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..per_slice {
                        if socket.send_to(&bytes, to).is_ok() {
                            sent += 1;
                        }
                    }
                    slice += 1;
                    let next = started + Duration::from_millis(u64::from(slice));
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                (sent, started.elapsed().as_secs_f64())
            })
        })
        .collect();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        step(&mut p);
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(u64, f64)> = senders
        .into_iter()
        .map(|s| s.join().expect("sender"))
        .collect();
    // Let the worker and the shim take the last ones.
    for _ in 0..100 {
        step(&mut p);
    }
    let after = osc_status(&probe);
    instance.deactivate(p);
    let sent: u64 = results.iter().map(|r| r.0).sum();
    let elapsed = results.iter().map(|r| r.1).fold(0.0, f64::max);
    let received = after.received - before.received;
    let applied = after.applied - before.applied;
    let dropped = after.dropped_full - before.dropped_full;
    let merged = after.merged - before.merged;
    eprintln!(
        "osc throughput: sent {sent} in {elapsed:.2} s, received {received}, applied {applied}, merged {merged}, dropped {dropped}, rate-limited {}",
        after.rate_limited - before.rate_limited
    );
    format!(
        "{{\"kind\": \"throughput\", \"rate\": {:.0}, \"sent\": {sent}, \"received\": {received}, \"applied\": {applied}, \"merged\": {merged}, \"dropped\": {dropped}}}",
        sent as f64 / elapsed
    )
}

/// Part 2: receive → the audio thread, one message every 20 ms.
fn latency() -> String {
    const BLOCK: u32 = 64;
    let (_bundle, probe, mut instance, mut p) = rig(BLOCK, None);
    let t = HostTransport::new(120.0, (4, 4));
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let mac_1 = clap_param_id("mac_1");
    let socket = UdpSocket::bind(("127.0.0.1", 0)).expect("bind");
    let to = SocketAddr::from(([127, 0, 0, 1], OSC_PORT));
    let mut deadline = Instant::now();
    let mut ready = false;
    let mut sent: Option<(Instant, f64)> = None;
    let mut latencies = Vec::new();
    let mut next_send = Instant::now();
    let end = Instant::now() + Duration::from_secs(20);
    let mut value = 0.25f32;
    while Instant::now() < end && latencies.len() < 500 {
        let block_start = Instant::now();
        p.process(BLOCK, Some(&t.event()), &[]).expect("process");
        for e in p.out_param_events() {
            if let OutParamEvent::Value(id, v) = e
                && id == mac_1
                && let Some((at, want)) = sent
                && (v - want).abs() < 1e-6
            {
                latencies.push(block_start.duration_since(at).as_secs_f64() * 1e6);
                sent = None;
            }
        }
        if !ready {
            ready = osc_status(&probe).port == Some(OSC_PORT);
            next_send = Instant::now() + Duration::from_millis(500);
        } else if sent.is_none() && Instant::now() >= next_send {
            value = if value == 0.25 { 0.75 } else { 0.25 };
            let bytes = message("/lockstep/param/mac_1", value);
            let at = Instant::now();
            socket.send_to(&bytes, to).expect("send");
            sent = Some((at, f64::from(value)));
            next_send = at + Duration::from_millis(20);
        }
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    instance.deactivate(p);
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!(
        "{{\"kind\": \"latency\", \"samples\": {}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"block_us\": {:.1}}}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        period.as_secs_f64() * 1e6
    )
}

/// Part 3: the core alone with 1,000 mappings.
fn matcher() -> String {
    use lockstep_net::params::{ParamKind, ParamSpec, Remote};
    use lockstep_net::settings::OscMapping;
    use lockstep_net::worker::osc::{OscCore, Output};
    let specs: Vec<ParamSpec> = (1..=16)
        .map(|i| ParamSpec {
            id: format!("mac_{i}"),
            name: format!("Macro {i}"),
            kind: ParamKind::Float {
                min: 0.0,
                max: 1.0,
                unit: String::new(),
            },
            clap_id: clap_param_id(&format!("mac_{i}")),
            default: 0.0,
            remote: Remote::Open,
        })
        .collect();
    let mut core = OscCore::new();
    core.add_instance(1, "Lockstep", specs);
    core.set_rate_limit(1e12);
    let mappings: Vec<OscMapping> = (0..1000)
        .map(|i| OscMapping {
            address: format!("/surface/{i}/fader"),
            param: format!("mac_{}", i % 16 + 1),
            ..OscMapping::default()
        })
        .collect();
    core.set_mappings(1, &mappings);
    let from = SocketAddr::from(([127, 0, 0, 1], 9999));
    let bytes = message("/surface/999/fader", 0.5);
    let mut out = Output::default();
    let n = 200_000u64;
    let started = Instant::now();
    for i in 0..n {
        core.handle_datagram(i * 10_000, from, &bytes, &mut out);
        out.changes.clear();
        out.datagrams.clear();
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    let applied = core.status().applied;
    assert!(applied >= n, "every message applied: {applied}");
    format!("{{\"kind\": \"matcher\", \"mappings\": 1000, \"ns_per_message\": {ns:.1}}}")
}

fn main() {
    let seconds: f64 = std::env::var("LOCKSTEP_OSC_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    println!("{}", throughput(100_000.0, seconds));
    println!("{}", latency());
    println!("{}", matcher());
}
