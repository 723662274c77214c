//! How well Lockstep's CK clock sync measures latency: the built plugin talks to an AppleMIDI
//! responder through a UDP impairment proxy that delays every datagram by a known amount each
//! way (run by `cargo xtask bench` inside a private network namespace). The one-way latency
//! estimate (best CK round trip / 2) is compared with the injected delay.
//!
//! Prints one JSON object per delay: {"delay_ms", "rtt_us", "error_us", "samples"}; the error
//! includes loopback and processing time and the CK clock's 100 µs resolution.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use lockstep_host::bundle::Build;
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::responder::{receive, responder};
use lockstep_host::status::StatusProbe;
use lockstep_net::settings::PeerSettings;

const LOCKSTEP: u16 = 5204;
const PROXY: u16 = 6204;
const PEER: u16 = 6304;

/// Forward datagrams between Lockstep's port and the peer's, each delayed by `delay`.
fn proxy_port(
    offset: u16,
    delay: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let socket = UdpSocket::bind(("127.0.0.1", PROXY + offset)).expect("bind proxy");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    )
    .expect("SO_TIMESTAMPNS");
    let sender = socket.try_clone().expect("clone");
    let (tx, rx) = mpsc::channel::<(f64, Vec<u8>, u16)>();
    let receive = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
            while !stop.load(Ordering::Relaxed) {
                // The delay counts from the kernel's receive time, not from when this thread
                // woke up to read the datagram.
                let Some((len, from, Some(arrived))) = receive(&socket, &mut buf, &mut cmsg) else {
                    continue;
                };
                let to = if from.port() == LOCKSTEP + offset {
                    PEER + offset
                } else {
                    LOCKSTEP + offset
                };
                let due = arrived + delay.as_nanos() as f64;
                let _ = tx.send((due, buf[..len].to_vec(), to));
            }
        })
    };
    let send = std::thread::spawn(move || {
        let realtime = lockstep_host::harness::realtime_ns;
        while let Ok((due, bytes, to)) = rx.recv() {
            // Sleep most of the way, spin the rest: the delay should be exact.
            let wait = due - realtime() - 300_000.0;
            if wait > 0.0 {
                std::thread::sleep(Duration::from_nanos(wait as u64));
            }
            while realtime() < due {
                std::hint::spin_loop();
            }
            let _ = sender.send_to(&bytes, ("127.0.0.1", to));
        }
    });
    vec![receive, send]
}

fn measure(delay_ms: f64) -> String {
    let delay = Duration::from_secs_f64(delay_ms / 1000.0);
    let stop = Arc::new(AtomicBool::new(false));
    let finish = responder(PEER, Arc::clone(&stop));
    let proxy_stop = Arc::new(AtomicBool::new(false));
    let proxies: Vec<_> = (0..2)
        .flat_map(|o| proxy_port(o, delay, Arc::clone(&proxy_stop)))
        .collect();
    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path).expect("bundle built");
    let probe = StatusProbe::open(&path).expect("probe");
    let mut instance = bundle.instantiate().expect("instance");
    let mut settings = instance.net_settings().expect("settings");
    settings.rtp_midi_port = LOCKSTEP;
    settings.peers = vec![PeerSettings {
        name: "behind the proxy".into(),
        host: "127.0.0.1".into(),
        port: PROXY,
        ..PeerSettings::default()
    }];
    instance.set_net_settings(&settings).expect("settings");
    let p = instance
        .activate(48_000.0, 256, Layout::Stereo)
        .expect("activate");
    // The first exchanges are 2 s apart: 13 s gives six or seven of them.
    std::thread::sleep(Duration::from_secs(13));
    let status = probe.read().expect("status");
    let rtp = status.worker.instances[0]
        .rtpmidi
        .clone()
        .expect("rtp-midi status");
    instance.deactivate(p);
    let _ = finish();
    proxy_stop.store(true, Ordering::Relaxed);
    for thread in proxies {
        let _ = thread.join();
    }
    let peer = rtp.peers.first().expect("peer");
    let rtt = peer.rtt_us.unwrap_or(f64::NAN);
    format!(
        "{{\"delay_ms\": {delay_ms}, \"rtt_us\": {rtt:.1}, \"error_us\": {:.1}, \"connected\": {}}}",
        rtt / 2.0 - delay_ms * 1000.0,
        peer.connected
    )
}

fn main() {
    for delay_ms in [5.0, 20.0] {
        println!("{}", measure(delay_ms));
    }
}
