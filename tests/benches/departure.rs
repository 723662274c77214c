//! Departure jitter of RTP-MIDI clock packets on loopback (run by `cargo xtask bench` inside a
//! private network namespace). The built plugin plays 60 s in real time through the headless
//! host at 120 and then 300 BPM; a minimal AppleMIDI responder in this process accepts the
//! session, answers CK and timestamps every clock packet on arrival. With the tempo constant,
//! every tick interval should be exactly 60 / (BPM × 24) s: the deviation of each arrival
//! interval from that is the departure jitter (loopback adds microseconds at most).
//!
//! Prints one JSON object per tempo: {"bpm", "ticks", "p50_us", "p99_us", "max_us"}.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockstep_host::bundle::Build;
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::transport::HostTransport;
use lockstep_net::proto::applemidi::{self, Ck, Command, Exchange};
use lockstep_net::proto::rtpmidi::{self, MidiCommand};
use lockstep_net::settings::PeerSettings;

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 256;
const PEER: u16 = 6104;

/// Answer IN and CK0 like a responder on one socket until `stop`; record the arrival time of
/// every clock (F8) packet. Blocking receives (woken at the end by a datagram to ourselves), so
/// an arrival is stamped the moment the kernel hands it over.
fn serve(socket: UdpSocket, stop: Arc<AtomicBool>) -> Vec<Instant> {
    let epoch = Instant::now();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 1500];
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let now = Instant::now();
        let bytes = &buf[..len];
        if applemidi::is_command(bytes) {
            let reply = match applemidi::decode(bytes) {
                Ok(Command::Invitation(e)) => Some(Command::Accepted(Exchange {
                    token: e.token,
                    ssrc: 0x5151_5151,
                    name: Some("bench peer".into()),
                })),
                Ok(Command::Ck(ck)) if ck.count == 0 => Some(Command::Ck(Ck {
                    ssrc: 0x5151_5151,
                    count: 1,
                    timestamps: [ck.timestamps[0], (now - epoch).as_micros() as u64 / 100, 0],
                })),
                _ => None,
            };
            if let Some(reply) = reply {
                applemidi::encode_into(&reply, &mut out);
                let _ = socket.send_to(&out, from);
            }
        } else if let Ok(packet) = rtpmidi::decode(bytes)
            && packet
                .commands
                .iter()
                .any(|c| c.command == MidiCommand::RealTime(0xF8))
        {
            arrivals.push(now);
        }
    }
    arrivals
}

/// The responder's two ports; returns the data port's arrivals when stopped.
fn responder(stop: Arc<AtomicBool>) -> impl FnOnce() -> Vec<Instant> {
    let control = UdpSocket::bind(("127.0.0.1", PEER)).expect("bind control");
    let data = UdpSocket::bind(("127.0.0.1", PEER + 1)).expect("bind data");
    let threads: Vec<_> = [control, data]
        .into_iter()
        .map(|socket| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(socket, stop))
        })
        .collect();
    move || {
        stop.store(true, Ordering::Relaxed);
        let waker = UdpSocket::bind(("127.0.0.1", 0)).expect("bind waker");
        let mut results = Vec::new();
        for (i, thread) in threads.into_iter().enumerate() {
            let _ = waker.send_to(&[0], ("127.0.0.1", PEER + i as u16));
            results.push(thread.join().expect("responder thread"));
        }
        results.pop().unwrap_or_default()
    }
}

fn run(bpm: f64, seconds: f64) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let finish = responder(Arc::clone(&stop));
    let bundle = Bundle::load(&Build::Release.clap_path()).expect("bundle built");
    let mut instance = bundle.instantiate().expect("instance");
    let mut settings = instance.net_settings().expect("settings");
    settings.rtp_midi_port = 5104;
    settings.peers = vec![PeerSettings {
        name: "bench".into(),
        host: "127.0.0.1".into(),
        port: PEER,
        ..PeerSettings::default()
    }];
    instance.set_net_settings(&settings).expect("settings");
    let mut p = instance
        .activate(RATE, BLOCK, Layout::Stereo)
        .expect("activate");
    let mut t = HostTransport::new(bpm, (4, 4));
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let mut deadline = Instant::now();
    let blocks = (seconds * RATE / f64::from(BLOCK)) as u64;
    // One second idle for the session to come up, then play.
    let idle = (RATE / f64::from(BLOCK)) as u64;
    for b in 0..idle + blocks {
        t.playing = b >= idle;
        p.process(BLOCK, Some(&t.event()), &[]).expect("process");
        t.advance(BLOCK, RATE);
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    instance.deactivate(p);
    let arrivals = finish();
    let ideal = 60.0 / bpm / 24.0 * 1e6;
    // Skip the first second of ticks (the estimator is still settling).
    let skip = (bpm / 60.0 * 24.0) as usize;
    let mut dev: Vec<f64> = arrivals
        .windows(2)
        .skip(skip)
        .map(|w| ((w[1] - w[0]).as_secs_f64() * 1e6 - ideal).abs())
        .collect();
    dev.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        dev.get(((dev.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!(
        "{{\"bpm\": {bpm}, \"ticks\": {}, \"p50_us\": {:.3}, \"p99_us\": {:.3}, \"max_us\": {:.3}}}",
        arrivals.len(),
        pct(0.5),
        pct(0.99),
        dev.last().copied().unwrap_or(f64::NAN)
    )
}

fn main() {
    let seconds: f64 = std::env::var("LOCKSTEP_DEPARTURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    for bpm in [120.0, 300.0] {
        println!("{}", run(bpm, seconds));
    }
}
