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
//! until the DAW changes something (no hijack). *Follow*: the instance's MIDI clock and OSC
//! transport run from the session's timeline ([`crate::clock::link_clock`]); the DAW itself
//! cannot be driven by a plugin.

use std::io::ErrorKind;

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::link::session::{Destination, LinkCore, Micros};
use crate::proto::link::{MULTICAST, NodeId};

/// Link's clock now, microseconds. On Linux this is `CLOCK_MONOTONIC_RAW`, the clock Ableton's
/// Link library uses there: peers on one machine then share one clock exactly (no rate
/// difference to drift through), and between machines the 30 s re-measurement takes care of
/// the crystals' drift. Elsewhere the worker's host clock.
pub fn now_micros() -> Micros {
    #[cfg(target_os = "linux")]
    if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_RAW) {
        return t.tv_sec() * 1_000_000 + t.tv_nsec() / 1_000;
    }
    (crate::bridge::host_time_ns() / 1_000) as Micros
}

/// Link's clock minus the worker's host clock ([`crate::bridge::host_time_ns`]), µs: read
/// both clocks back to back (the pair read fastest of three) so host times (the DAW's sample
/// clock maps to them) convert to Link times and back. The two clocks differ in rate by the
/// NTP correction (ppm), so this is read again whenever it is used.
pub fn link_minus_host() -> f64 {
    let mut best = (f64::INFINITY, 0.0);
    for _ in 0..3 {
        let h0 = crate::bridge::host_time_ns() as f64;
        let l = now_micros() as f64;
        let h1 = crate::bridge::host_time_ns() as f64;
        if h1 - h0 < best.0 {
            best = (h1 - h0, l - (h0 + h1) / 2e3);
        }
    }
    best.1
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
        // Kernel receive times: a PONG read a millisecond late must not count as a
        // millisecond-longer round trip (see `LinkCore::handle_measurement_at`).
        #[cfg(target_os = "linux")]
        let _ = nix::sys::socket::setsockopt(
            &measurement,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        );
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
        for socket in [&self.group_rx, &self.unicast] {
            loop {
                match socket.recv_from(&mut self.buf) {
                    Ok((n, from)) => self.core.handle_discovery(now, from, &self.buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        while let Some((n, from, arrived)) = receive_stamped(&self.measurement, &mut self.buf, now)
        {
            self.core
                .handle_measurement_at(now, arrived, from, &self.buf[..n]);
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

/// One datagram from a non-blocking socket: (length, sender, arrival on Link's clock). The
/// arrival is the kernel's receive time where the kernel gives one (Linux), else `now`.
#[cfg(target_os = "linux")]
fn receive_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
    now: Micros,
) -> Option<(usize, SocketAddr, Micros)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use nix::sys::time::TimeSpec;
    use std::os::fd::AsRawFd;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let from = msg.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
    })?;
    let stamp = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
            _ => None,
        })
    });
    // The stamp is on the wall clock: its age, taken now, moves to Link's clock.
    let arrived = stamp
        .and_then(|ts| {
            let wall = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).ok()?;
            let age_ns =
                (wall.tv_sec() - ts.tv_sec()) * 1_000_000_000 + wall.tv_nsec() - ts.tv_nsec();
            // A stamp from the future or older than a second is not believed.
            (0..1_000_000_000)
                .contains(&age_ns)
                .then(|| now_micros() - age_ns / 1_000)
        })
        .unwrap_or(now);
    Some((msg.bytes, from, arrived))
}

#[cfg(not(target_os = "linux"))]
fn receive_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
    now: Micros,
) -> Option<(usize, SocketAddr, Micros)> {
    socket.recv_from(buf).ok().map(|(n, from)| (n, from, now))
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

/// The interface address for the user's choice (`link_interface`): an interface name, an IPv4
/// address, or empty for the interface the system routes Link's group through.
pub fn resolve_interface(choice: &str) -> Result<Ipv4Addr, String> {
    let choice = choice.trim();
    if choice.is_empty() {
        return Ok(default_interface());
    }
    if let Ok(address) = choice.parse::<Ipv4Addr>() {
        return Ok(address);
    }
    let mut names = Vec::new();
    let found = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list network interfaces: {e}"))?
        .find_map(|i| {
            let v4 = i
                .address
                .as_ref()
                .and_then(|a| a.as_sockaddr_in())
                .map(|a| a.ip());
            if v4.is_some() && !names.contains(&i.interface_name) {
                names.push(i.interface_name.clone());
            }
            (i.interface_name == choice).then_some(v4).flatten()
        });
    found.ok_or_else(|| {
        format!(
            "Link interface {choice:?}: no such interface with an IPv4 address (have: {})",
            names.join(", ")
        )
    })
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
    /// Link time (µs, [`now_micros`]'s clock) at which `beat` and `phase` were taken.
    pub at_micros: i64,
    /// The DAW's beat minus the session's at the same moment, ms (DAW leads, playing).
    pub offset_ms: Option<f64>,
    /// The session re-measured (30 s period), and its last correction, µs.
    pub remeasures: u64,
    /// The last re-measurement's correction of our clock offset, µs.
    pub last_correction_us: f64,
    /// In Follow: the Link-driven clock of the deciding instance.
    pub follow: Option<crate::clock::link_clock::LinkClockStats>,
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
    /// The user's interface choice the driver was opened for.
    choice: String,
    /// After a failed open, when to try again (host µs).
    retry_at: Micros,
    error: Option<String>,
    /// The DAW tempo and playing state last published (or seen when we joined).
    last_daw: Option<(f64, bool)>,
    /// The DAW's last (beat, host µs where it is heard) while playing, to notice a start or
    /// a jump.
    last_beat: Option<(f64, Micros)>,
    /// Beats forced into the session (DAW starts and jumps).
    forced: u64,
    /// The DAW's beat minus the session's, ms (Lead, playing).
    offset_ms: Option<f64>,
    joins_seen: u64,
    published: u64,
    /// When the status was last made (it is published every 50 ms).
    pub status_at: Micros,
    /// A status (not None) is published.
    pub status_shown: bool,
}

impl LinkService {
    /// Nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run for `mode` with the leading DAW's `tempo` and `playing` (the first instance whose
    /// mode is not Off), `start_stop` sync on or off. Opens or closes the peer as needed.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        now: Micros,
        mode: LinkMode,
        interface: &str,
        daw: Option<(f64, bool)>,
        start_stop: bool,
        daw_beat: Option<(f64, Micros)>,
    ) -> Option<Micros> {
        if mode == LinkMode::Off {
            self.driver = None;
            self.last_daw = None;
            self.last_beat = None;
            self.offset_ms = None;
            self.error = None;
            return None;
        }
        if interface != self.choice {
            // Another interface chosen: leave (BYEBYE) and join again there.
            self.driver = None;
            self.error = None;
            self.choice = interface.to_owned();
        }
        if self.driver.is_none() && (self.error.is_none() || now >= self.retry_at) {
            let tempo = daw.map_or(120.0, |d| d.0);
            let opened = resolve_interface(interface).and_then(|address| {
                LinkDriver::open(address, tempo)
                    .map(|d| (d, address))
                    .map_err(|e| format!("cannot join Link on {address}: {e}"))
            });
            match opened {
                Ok((d, address)) => {
                    self.driver = Some(d);
                    self.interface = Some(address);
                    self.error = None;
                    self.last_daw = daw;
                    self.joins_seen = 0;
                }
                Err(e) => {
                    // Shown, and tried again every 5 s (an interface that comes up later).
                    self.error = Some(e);
                    self.retry_at = now + 5_000_000;
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
                    let session = driver.core().beats_at(at);
                    self.offset_ms = Some((beat - session) * 60e3 / tempo.max(1.0));
                }
                _ => {
                    self.last_beat = None;
                    self.offset_ms = None;
                }
            }
        } else {
            self.offset_ms = None;
        }
        driver.poll(now)
    }

    /// The session's timeline now, for a Link-driven clock (None while not in Link).
    pub fn timeline(&self, now: Micros) -> Option<crate::clock::link_clock::Timeline> {
        let core = self.driver.as_ref()?.core();
        Some(crate::clock::link_clock::Timeline {
            tempo: core.tempo(),
            anchor_us: now as f64,
            anchor_beat: core.beats_at(now),
            playing: core.playing(),
            start_stop_us: core.start_stop_time(),
        })
    }

    /// What OSC controllers see of the session (None while not in Link).
    pub fn feed(&self, now: Micros, quantum: f64) -> Option<super::osc::LinkFeed> {
        let core = self.driver.as_ref()?.core();
        Some(super::osc::LinkFeed {
            peers: i32::try_from(core.session_peers()).unwrap_or(i32::MAX),
            tempo: core.tempo() as f32,
            phase: core.beats_at(now).rem_euclid(quantum.max(1.0)) as f32,
            playing: core.playing(),
            offset_ms: self.offset_ms.map(|o| o as f32),
        })
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
            at_micros: now,
            offset_ms: self.offset_ms,
            note: (mode == LinkMode::Follow).then(|| {
                "a plugin cannot drive the DAW's transport: in Follow, Lockstep's MIDI clock and \
                 OSC transport follow the session; the DAW plays on its own"
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
            s.remeasures = core.counters().remeasures;
            s.last_correction_us = core.last_correction();
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_choices_resolve_or_say_what_exists() {
        // No socket is opened: names and addresses are looked up only.
        assert_eq!(resolve_interface("lo"), Ok(Ipv4Addr::LOCALHOST));
        assert_eq!(
            resolve_interface(" 10.1.2.3 "),
            Ok(Ipv4Addr::new(10, 1, 2, 3))
        );
        let err = resolve_interface("nosuch0").expect_err("no such interface");
        assert!(err.contains("nosuch0") && err.contains("lo"), "{err}");
    }
}
