//! A minimal AppleMIDI responder for the benchmarks: accepts any invitation, answers CK0,
//! and records the arrival of every clock (F8) packet as the kernel's receive timestamp
//! (`SO_TIMESTAMPNS`), so the responder's own scheduling delays stay out of the measurement:
//! what is measured is when each packet left Lockstep (plus loopback's constant microseconds).
//! Blocking receives on one thread per port, woken at the end by a datagram to itself.

use std::io::IoSliceMut;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

use lockstep_net::proto::applemidi::{self, Ck, Command, Exchange};
use lockstep_net::proto::rtpmidi::{self, MidiCommand};

/// Receive one datagram: (length, sender, kernel receive time in ns of CLOCK_REALTIME).
pub fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> Option<(usize, std::net::SocketAddr, Option<f64>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg =
        recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
            .ok()?;
    let stamp = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
            _ => None,
        })
    });
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| std::net::SocketAddr::from((v4.ip(), v4.port())))
    })?;
    let ns = |ts: TimeSpec| ts.tv_sec() as f64 * 1e9 + ts.tv_nsec() as f64;
    Some((msg.bytes, from, stamp.map(ns)))
}

/// Answer IN and CK0 like a responder on one socket until `stop`; record the kernel's receive
/// time (ns) of every clock (F8) packet.
fn serve(socket: UdpSocket, stop: Arc<AtomicBool>) -> Vec<f64> {
    let epoch = Instant::now();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 1500];
    let mut out = Vec::new();
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    let stamped = setsockopt(&socket, sockopt::ReceiveTimestampns, &true).is_ok();
    assert!(
        stamped,
        "SO_TIMESTAMPNS is needed for the departure measurement"
    );
    while !stop.load(Ordering::Relaxed) {
        let Some((len, from, stamp)) = receive(&socket, &mut buf, &mut cmsg) else {
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
            arrivals.extend(stamp);
        }
    }
    arrivals
}

/// Serve control port `port` and data port `port + 1` on 127.0.0.1 until the returned closure
/// is called; it returns the data port's clock arrivals (kernel receive times, ns).
pub fn responder(port: u16, stop: Arc<AtomicBool>) -> impl FnOnce() -> Vec<f64> {
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

/// A sink on 127.0.0.1:`port` that takes the kernel receive time (ns, `CLOCK_REALTIME`) of
/// every datagram until the returned closure is called, which returns them.
pub fn stamp_sink(port: u16, stop: Arc<AtomicBool>) -> impl FnOnce() -> Vec<f64> {
    let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind sink");
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut stamps = Vec::new();
            let mut buf = [0u8; 64];
            let mut cmsg = nix::cmsg_space!(TimeSpec);
            let stamped = setsockopt(&socket, sockopt::ReceiveTimestampns, &true).is_ok();
            assert!(
                stamped,
                "SO_TIMESTAMPNS is needed for the floor measurement"
            );
            while !stop.load(Ordering::Relaxed) {
                if let Some((_, _, Some(stamp))) = receive(&socket, &mut buf, &mut cmsg) {
                    stamps.push(stamp);
                }
            }
            stamps
        })
    };
    move || {
        stop.store(true, Ordering::Relaxed);
        let waker = UdpSocket::bind(("127.0.0.1", 0)).expect("bind waker");
        let _ = waker.send_to(&[0], ("127.0.0.1", port));
        let mut stamps = thread.join().expect("sink thread");
        // The waker's datagram.
        stamps.pop();
        stamps
    }
}
