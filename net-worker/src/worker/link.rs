//! The socket side of a Link peer (digest §4.1): a receive socket on 224.76.78.75:20808
//! (address reuse, joined on one interface), a unicast socket bound to that interface's
//! address that sends ALIVE/BYEBYE to the group and RESPONSEs to peers and receives
//! RESPONSEs, and a measurement socket for PING/PONG, advertised in our `mep4`. Non-blocking,
//! polled; the protocol is [`LinkCore`].
//!
//! Not yet wired into the worker loop or the plugin's roles (next step of the Link issue);
//! used by the interop test against the real Link library.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::link::session::{Destination, LinkCore, Micros};
use crate::proto::link::{MULTICAST, NodeId};

/// Host time in microseconds (the worker's monotonic clock).
pub fn now_micros() -> Micros {
    (crate::bridge::host_time_ns() / 1_000) as Micros
}

/// A random node id (time, process id and a counter mixed; uniqueness matters, secrecy not).
pub fn node_id() -> NodeId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut x = crate::bridge::host_time_ns()
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)).to_be_bytes()
}

/// A Link peer on one IPv4 interface.
#[derive(Debug)]
pub struct LinkDriver {
    core: LinkCore,
    group_rx: UdpSocket,
    unicast: UdpSocket,
    measurement: UdpSocket,
    group: SocketAddr,
    buf: Vec<u8>,
    /// Send errors (an interface that went away, a full buffer).
    pub send_errors: u64,
}

fn udp(bind: SocketAddrV4, reuse: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse {
        s.set_reuse_address(true)?;
        #[cfg(unix)]
        s.set_reuse_port(true)?;
    }
    s.bind(&bind.into())?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl LinkDriver {
    /// Join Link on the interface with address `interface`, founding a session at `tempo`.
    pub fn open(interface: Ipv4Addr, tempo: f64) -> std::io::Result<Self> {
        let group_rx = udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MULTICAST.1), true)?;
        group_rx.join_multicast_v4(&MULTICAST.0, &interface)?;
        let unicast = udp(SocketAddrV4::new(interface, 0), false)?;
        unicast.set_multicast_if_v4(&interface)?;
        // Other peers on this machine must hear us too.
        unicast.set_multicast_loop_v4(true)?;
        unicast.set_multicast_ttl_v4(1)?;
        let measurement = udp(SocketAddrV4::new(interface, 0), false)?;
        let measurement_addr = measurement
            .local_addr()?
            .as_socket()
            .ok_or(ErrorKind::AddrNotAvailable)?;
        let core = LinkCore::new(now_micros(), node_id(), tempo, measurement_addr);
        Ok(Self {
            core,
            group_rx: group_rx.into(),
            unicast: unicast.into(),
            measurement: measurement.into(),
            group: SocketAddr::from((MULTICAST.0, MULTICAST.1)),
            buf: vec![0; 2048],
            send_errors: 0,
        })
    }

    /// The protocol state.
    pub fn core(&self) -> &LinkCore {
        &self.core
    }

    /// The protocol state, to change tempo or start/stop.
    pub fn core_mut(&mut self) -> &mut LinkCore {
        &mut self.core
    }

    /// Receive, run timers, send; returns the next deadline (host µs).
    pub fn poll(&mut self, now: Micros) -> Option<Micros> {
        for (socket, measurement) in [
            (&self.group_rx, false),
            (&self.unicast, false),
            (&self.measurement, true),
        ] {
            loop {
                match socket.recv_from(&mut self.buf) {
                    Ok((n, from)) => {
                        if measurement {
                            self.core.handle_measurement(now, from, &self.buf[..n]);
                        } else {
                            self.core.handle_discovery(now, from, &self.buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        self.core.handle_timeout(now);
        self.flush();
        self.core.poll_timeout()
    }

    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            let sent = match t.to {
                Destination::Multicast => self.unicast.send_to(&t.bytes, self.group),
                Destination::Unicast(to) => self.unicast.send_to(&t.bytes, to),
                Destination::Measurement(to) => self.measurement.send_to(&t.bytes, to),
            };
            if sent.is_err() {
                self.send_errors += 1;
            }
        }
    }

    /// Leave the session (BYEBYE).
    pub fn close(&mut self) {
        self.core.leave();
        self.flush();
    }
}

impl Drop for LinkDriver {
    fn drop(&mut self) {
        self.close();
    }
}
