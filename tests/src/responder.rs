//! A minimal AppleMIDI responder for the benchmarks: accepts any invitation, answers CK0,
//! and stamps the arrival of every clock (F8) packet the moment the kernel hands it over
//! (blocking receives on one thread per port, woken at the end by a datagram to itself).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lockstep_net::proto::applemidi::{self, Ck, Command, Exchange};
use lockstep_net::proto::rtpmidi::{self, MidiCommand};

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

/// Serve control port `port` and data port `port + 1` on 127.0.0.1 until the returned closure
/// is called; it returns the data port's clock arrivals.
pub fn responder(port: u16, stop: Arc<AtomicBool>) -> impl FnOnce() -> Vec<Instant> {
    let control = UdpSocket::bind(("127.0.0.1", port)).expect("bind control");
    let data = UdpSocket::bind(("127.0.0.1", port + 1)).expect("bind data");
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
            let _ = waker.send_to(&[0], ("127.0.0.1", port + i as u16));
            results.push(thread.join().expect("responder thread"));
        }
        results.pop().unwrap_or_default()
    }
}
