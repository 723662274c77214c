//! The socket side of a Link peer (digest §4.1): a receive socket on 224.76.78.75:20808
//! (address reuse, joined on one interface), a unicast socket bound to that interface's
//! address that sends ALIVE/BYEBYE to the group and RESPONSEs to peers and receives
//! RESPONSEs, and a measurement socket for PING/PONG, advertised in our `mep4`. Non-blocking,
//! polled; the protocol is [`LinkCore`].
//!
//! [`LinkService`] runs one peer for the process while any instance's Link Mode is not Off:
//! in *DAW leads*, the leading instance's tempo changes (and, with Link Start/Stop, its
//! start/stop) go into the session, and when the DAW starts or jumps its beat is forced into
//! the session at the host time the listener hears it (block time through the sample-clock
//! estimate, plus the assumed output latency); on joining a session nothing is published
//! until the DAW changes something (no hijack). *Follow* joins and reports the session (driving the MIDI
//! clock from it is the next step).

use std::io::ErrorKind;

use serde::{Deserialize, Serialize};
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

/// The interface address the kernel would use for Link's multicast group (no packet is sent:
/// a UDP connect only picks the route). Loopback if there is no route.
pub fn default_interface() -> Ipv4Addr {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect((MULTICAST.0, MULTICAST.1))?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// Link Mode as the plugin's parameter has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Not in Link.
    #[default]
    Off,
    /// The DAW leads.
    Lead,
    /// Follow the session.
    Follow,
}

impl LinkMode {
    /// From the parameter's normalized value (Off, Lead, Follow).
    pub fn from_normalized(v: f64) -> Self {
        match (v * 2.0).round() as i64 {
            i64::MIN..=0 => Self::Off,
            1 => Self::Lead,
            _ => Self::Follow,
        }
    }
}

/// What the status shows about Link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The mode of the instance that decides (the first one not Off).
    pub mode: LinkMode,
    /// The interface Link runs on.
    pub interface: String,
    /// Session id (hex).
    pub session: String,
    /// Peers heard, and peers in our session.
    pub peers: usize,
    /// Peers in our session.
    pub session_peers: usize,
    /// Session tempo, BPM.
    pub tempo: f64,
    /// Session beat now.
    pub beat: f64,
    /// Phase in the quantum now (0..quantum).
    pub phase: f64,
    /// Quantum, beats.
    pub quantum: f64,
    /// Session playing.
    pub playing: bool,
    /// Sessions joined.
    pub joins: u64,
    /// Tempo changes this process published.
    pub published: u64,
    /// DAW beats forced into the session (starts and jumps).
    pub forced: u64,
    /// Malformed or foreign-group datagrams.
    pub malformed: u64,
    /// Why Link is not running, if it is not.
    pub error: Option<String>,
    /// The DAW cannot be driven by a plugin: in Follow, only Lockstep's outputs follow.
    pub note: Option<String>,
}

/// The process's Link peer and the role the instances give it.
#[derive(Debug, Default)]
pub struct LinkService {
    driver: Option<LinkDriver>,
    interface: Option<Ipv4Addr>,
    error: Option<String>,
    /// The DAW tempo and playing state last published (or seen when we joined).
    last_daw: Option<(f64, bool)>,
    /// The DAW's last (beat, host µs where it is heard) while playing, to notice a start or
    /// a jump.
    last_beat: Option<(f64, Micros)>,
    /// Beats forced into the session (DAW starts and jumps).
    forced: u64,
    joins_seen: u64,
    published: u64,
    /// When the status was last made (it is published every 50 ms).
    pub status_at: Micros,
}

impl LinkService {
    /// Nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run for `mode` with the leading DAW's `tempo` and `playing` (the first instance whose
    /// mode is not Off), `start_stop` sync on or off. Opens or closes the peer as needed.
    pub fn update(
        &mut self,
        now: Micros,
        mode: LinkMode,
        daw: Option<(f64, bool)>,
        start_stop: bool,
        daw_beat: Option<(f64, Micros)>,
    ) -> Option<Micros> {
        if mode == LinkMode::Off {
            self.driver = None;
            self.last_daw = None;
            self.last_beat = None;
            self.error = None;
            return None;
        }
        if self.driver.is_none() {
            let interface = default_interface();
            let tempo = daw.map_or(120.0, |d| d.0);
            match LinkDriver::open(interface, tempo) {
                Ok(d) => {
                    self.driver = Some(d);
                    self.interface = Some(interface);
                    self.error = None;
                    self.last_daw = daw;
                    self.joins_seen = 0;
                }
                Err(e) => {
                    self.error = Some(format!("cannot join Link on {interface}: {e}"));
                    return None;
                }
            }
        }
        let driver = self.driver.as_mut()?;
        let joins = driver.core().counters().joins;
        if joins != self.joins_seen {
            // Joined a session: adopt it; publish only what the DAW changes from now on.
            self.joins_seen = joins;
            self.last_daw = daw;
        }
        if mode == LinkMode::Lead
            && let Some((tempo, playing)) = daw
        {
            let (last_tempo, last_playing) = self.last_daw.unwrap_or((tempo, playing));
            if (tempo - last_tempo).abs() > 1e-6 {
                driver.core_mut().set_tempo(now, tempo);
                self.published += 1;
            }
            if start_stop && playing != last_playing {
                driver.core_mut().set_playing(now, playing);
            }
            self.last_daw = Some((tempo, playing));
            // The DAW's beat phase: forced into the session when the DAW starts or jumps
            // (not on joining, not for drift), so the beat Link peers play is the one heard.
            match (playing, daw_beat) {
                (true, Some((beat, at))) => {
                    let expected = self
                        .last_beat
                        .map(|(b, t)| b + (at - t) as f64 / 1e6 * tempo / 60.0);
                    let jumped = expected.is_none_or(|e| (e - beat).abs() > 0.01);
                    if jumped {
                        driver.core_mut().force_beat(now, beat, at);
                        self.forced += 1;
                    }
                    self.last_beat = Some((beat, at));
                }
                _ => self.last_beat = None,
            }
        }
        driver.poll(now)
    }

    /// The status now.
    pub fn status(&self, now: Micros, mode: LinkMode, quantum: f64) -> Option<LinkStatus> {
        if mode == LinkMode::Off && self.error.is_none() {
            return None;
        }
        let mut s = LinkStatus {
            mode,
            interface: self.interface.map(|i| i.to_string()).unwrap_or_default(),
            quantum,
            error: self.error.clone(),
            published: self.published,
            forced: self.forced,
            note: (mode == LinkMode::Follow).then(|| {
                "a plugin cannot drive the DAW's transport: in Follow, Lockstep reports the session"
                    .to_owned()
            }),
            ..LinkStatus::default()
        };
        if let Some(d) = &self.driver {
            let core = d.core();
            s.session = core.session().iter().map(|b| format!("{b:02x}")).collect();
            s.peers = core.peers();
            s.session_peers = core.session_peers();
            s.tempo = core.tempo();
            s.beat = core.beats_at(now);
            s.phase = if quantum > 0.0 {
                s.beat.rem_euclid(quantum)
            } else {
                0.0
            };
            s.playing = core.playing();
            s.joins = core.counters().joins;
            s.malformed = core.counters().malformed + core.counters().foreign_group;
        }
        Some(s)
    }
}
