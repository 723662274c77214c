//! The RTP-MIDI side of one instance: its two UDP sockets (control `N`, data `N + 1`), the
//! AppleMIDI [`Endpoint`], and one clock destination (follower + scheduler) per connected peer,
//! so a peer that joins mid-song is resynchronised on its own and each peer has its own offset.
//!
//! Runs on the worker thread only. The sockets are non-blocking and registered with the
//! worker's readiness loop; they are read only when it says they are readable, with the
//! kernel's receive time (so a CK answer read late does not lengthen the measured round trip).
//! RTP-MIDI packets are built a little ahead of their due time and handed to the send path
//! ([`super::sender`]), which sends them exactly then; AppleMIDI control (invitations, CK, BY,
//! RS) leaves at once from here.

use super::runtime::{Backlog, read_budgeted};
pub use crate::status::rtpmidi::{PeerReport, RtpMidiStatus};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use crossbeam_channel::{Receiver, TryRecvError};
use mio::{Interest, Registry, Token};

use super::resolver::{Lookup, Resolver};
use super::sender::{Departure, SendPath};
use crate::bridge::host_time_ns;

use crate::clock::follower::ClockFollower;
use crate::clock::scheduler::{Scheduler, SchedulerConfig};
use crate::clock::{ClockEvent, ClockKind};
use crate::proto::applemidi::endpoint::{Access, Endpoint, EndpointEvent};
use crate::proto::applemidi::session::{Nanos, Port};
use crate::proto::rtpmidi::TimedCommand;
use crate::settings::{AccessMode, MAX_PEER_ALIGN_MS, NetSettings, PeerSettings};

/// One connected peer's clock stream.
struct Destination {
    follower: ClockFollower,
    scheduler: Scheduler,
}

/// Smallest change of an aligned peer's measured one-way delay that moves its clock, ns
/// (CK timestamps count in 100 µs; a round trip's jitter moves the best of eight less).
const ALIGN_STEP_NS: f64 = 1e6;

/// How much earlier (ns) an aligned peer's clock should go for a best round trip of
/// `rtt_us`, if that differs from `applied` by [`ALIGN_STEP_NS`] or more: half the round trip,
/// at most [`MAX_PEER_ALIGN_MS`]. None: leave it.
fn next_alignment(applied: Option<f64>, rtt_us: f64) -> Option<f64> {
    if !rtt_us.is_finite() {
        return None;
    }
    let one_way = (rtt_us * 1e3 / 2.0).clamp(0.0, MAX_PEER_ALIGN_MS * 1e6);
    match applied {
        Some(a) if (a - one_way).abs() < ALIGN_STEP_NS => None,
        _ => Some(one_way),
    }
}

/// `peer`'s schedule: the instance's, with the peer's own offset and, if aligned, sent `early`
/// ns earlier.
fn peer_schedule(
    base: SchedulerConfig,
    offsets: &BTreeMap<SocketAddr, f64>,
    peer: SocketAddr,
    early: Option<f64>,
) -> SchedulerConfig {
    SchedulerConfig {
        offset_ns: base.offset_ns + offsets.get(&peer).copied().unwrap_or(0.0)
            - early.unwrap_or(0.0),
        ..base
    }
}

/// How long after a failed lookup a host name is tried again.
const RESOLVE_RETRY: Nanos = 30_000_000_000;

/// A directory peer given by host name, waiting for its address.
struct Pending {
    peer: PeerSettings,
    /// The lookup under way, or when to start the next one.
    lookup: Result<Receiver<Lookup>, Nanos>,
}

/// The driver.
pub struct RtpMidi {
    control: mio::net::UdpSocket,
    data: mio::net::UdpSocket,
    /// The data socket again (same socket, another handle) for the send path's thread.
    data_out: Arc<UdpSocket>,
    /// Where the sockets are registered, to take them off again when this goes.
    registry: Option<Registry>,
    port: u16,
    endpoint: Endpoint,
    destinations: BTreeMap<SocketAddr, Destination>,
    /// Per-peer offsets from the settings, ns.
    offsets: BTreeMap<SocketAddr, f64>,
    /// Peers aligned to their measured latency, and how much earlier (ns) their clock is
    /// sent now (absent until a round trip was measured).
    aligned: BTreeMap<SocketAddr, Option<f64>>,
    /// The instance's schedule (latency + global offset).
    base: SchedulerConfig,
    output: (bool, bool),
    tempo: Option<f64>,
    status: RtpMidiStatus,
    /// Directory peers given by host name, until their lookup succeeds.
    pending: Vec<Pending>,
    /// The last read stopped at its budget with datagrams still waiting: read again on the
    /// next pass (edge-triggered readiness will not say so again).
    /// Input owed after a read budget ran out (read again after the rest).
    backlog: Backlog,
    /// The latest lookup failure per host.
    resolve_errors: BTreeMap<String, String>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for RtpMidi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpMidi")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Bind control port `port` and data port `port + 1` on all interfaces, non-blocking, with
/// kernel receive timestamps where the OS has them.
fn bind_pair(port: u16) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let control = UdpSocket::bind(("0.0.0.0", port))?;
    let data = UdpSocket::bind((
        "0.0.0.0",
        port.checked_add(1).ok_or(ErrorKind::InvalidInput)?,
    ))?;
    control.set_nonblocking(true)?;
    data.set_nonblocking(true)?;
    crate::sys::enable_rx_timestamps(&control);
    crate::sys::enable_rx_timestamps(&data);
    Ok((control, data))
}

/// The first free (even-aligned) pair at or after `from`, for the error message.
fn next_free_pair(from: u16) -> Option<u16> {
    (from..u16::MAX - 1)
        .step_by(2)
        .take(64)
        .find(|&p| bind_pair(p).is_ok())
}

impl RtpMidi {
    /// Open the sockets from `settings` and invite its peers. Errors say what to do.
    pub fn open(
        now: Nanos,
        settings: &NetSettings,
        base: SchedulerConfig,
        seed: u64,
        resolver: &mut Resolver,
    ) -> Result<Self, String> {
        let port = settings.rtp_midi_port;
        let (control, data) = bind_pair(port).map_err(|e| match e.kind() {
            ErrorKind::AddrInUse => match next_free_pair(port.saturating_add(2)) {
                Some(free) => format!(
                    "RTP-MIDI ports {port}/{} are taken (another program or instance); ports {free}/{} are free",
                    port.saturating_add(1),
                    free + 1
                ),
                None => format!("RTP-MIDI ports {port}/{} are taken", port.saturating_add(1)),
            },
            _ => format!("cannot open RTP-MIDI ports {port}/{}: {e}", port.saturating_add(1)),
        })?;
        let data_out = data
            .try_clone()
            .map(Arc::new)
            .map_err(|e| format!("cannot share the RTP-MIDI data socket: {e}"))?;
        let mut driver = Self {
            control: mio::net::UdpSocket::from_std(control),
            data: mio::net::UdpSocket::from_std(data),
            data_out,
            registry: None,
            port,
            endpoint: Endpoint::new(
                &settings.session_name,
                match settings.rtp_midi_access {
                    AccessMode::Anyone => Access::Anyone,
                    AccessMode::Directory => Access::Directory,
                    AccessMode::Nobody => Access::Nobody,
                },
                seed,
            ),
            destinations: BTreeMap::new(),
            offsets: BTreeMap::new(),
            aligned: BTreeMap::new(),
            base,
            output: (true, true),
            tempo: None,
            status: RtpMidiStatus {
                control_port: Some(port),
                ..RtpMidiStatus::default()
            },
            pending: Vec::new(),
            resolve_errors: BTreeMap::new(),
            buf: vec![0; 2048],
            backlog: Backlog::new(1_000_000),
        };
        driver
            .endpoint
            .set_journal_default(settings.rtp_midi_journal);
        driver.endpoint.set_max_guests(settings.rtp_midi_max_guests);
        for peer in settings.peers.iter().filter(|p| p.enabled) {
            let ip = peer
                .host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>();
            match ip {
                Ok(ip) => driver.add_peer(now, peer, SocketAddr::new(ip, peer.port)),
                Err(_) => driver.pending.push(Pending {
                    peer: peer.clone(),
                    lookup: Ok(resolver.lookup(&peer.host, peer.port)),
                }),
            }
        }
        driver.flush(None);
        Ok(driver)
    }

    /// Register both sockets with the worker's readiness loop under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(&mut self.control, token, Interest::READABLE)?;
        registry.register(&mut self.data, token, Interest::READABLE)?;
        self.registry = Some(registry.try_clone()?);
        Ok(())
    }

    fn add_peer(&mut self, now: Nanos, peer: &PeerSettings, address: SocketAddr) {
        self.offsets
            .insert(address, f64::from(peer.offset_ms) * 1e6);
        if peer.align {
            self.aligned.insert(address, None);
        }
        self.endpoint.add_peer(now, address);
        self.endpoint.set_peer_journal(address, peer.journal);
    }

    /// Collect finished host-name lookups; retry failed ones.
    fn poll_lookups(&mut self, now: Nanos, resolver: &mut Resolver) {
        let mut i = 0;
        while i < self.pending.len() {
            let host = self.pending[i].peer.host.clone();
            let port = self.pending[i].peer.port;
            let outcome = match &self.pending[i].lookup {
                Ok(rx) => match rx.try_recv() {
                    Ok(result) => Some(result),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Err("lookup failed".to_owned())),
                },
                Err(retry_at) => {
                    if now >= *retry_at {
                        self.pending[i].lookup = Ok(resolver.lookup(&host, port));
                    }
                    None
                }
            };
            match outcome {
                Some(Ok(address)) => {
                    let pending = self.pending.swap_remove(i);
                    self.resolve_errors.remove(&host);
                    self.add_peer(now, &pending.peer, address);
                    continue;
                }
                Some(Err(why)) => {
                    self.resolve_errors.insert(
                        host.clone(),
                        format!(
                            "peer {:?}: cannot find host {host}: {why} (retrying every 30 s)",
                            self.pending[i].peer.name
                        ),
                    );
                    self.pending[i].lookup = Err(now + RESOLVE_RETRY);
                }
                None => {}
            }
            i += 1;
        }
    }

    fn schedule_for(&self, peer: SocketAddr) -> SchedulerConfig {
        peer_schedule(
            self.base,
            &self.offsets,
            peer,
            self.aligned.get(&peer).copied().flatten(),
        )
    }

    /// How far before its stamps the earliest connected destination sends (ns, 0 if none
    /// sends early): a clock worked out ahead (Link Follow) must be known that early.
    pub fn max_early_ns(&self) -> f64 {
        self.destinations
            .keys()
            .map(|&peer| -self.schedule_for(peer).offset_ns)
            .fold(0.0, f64::max)
    }

    /// Aligned peers follow their measured one-way delay (half the best recent CK round
    /// trip, at most [`MAX_PEER_ALIGN_MS`]). A change under [`ALIGN_STEP_NS`] is left alone, so
    /// the round trip's own jitter does not move the clock; a larger one moves it at once.
    fn update_alignment(&mut self) {
        let Self {
            aligned,
            endpoint,
            destinations,
            offsets,
            base,
            ..
        } = self;
        for (&peer, applied) in aligned.iter_mut() {
            let Some(latency) = endpoint.latency(peer) else {
                continue;
            };
            let Some(one_way) = next_alignment(*applied, latency.rtt_us) else {
                continue;
            };
            *applied = Some(one_way);
            if let Some(d) = destinations.get_mut(&peer) {
                d.scheduler
                    .set_config(peer_schedule(*base, offsets, peer, Some(one_way)));
            }
        }
    }

    /// The instance's latency or global offset changed.
    pub fn set_schedule(&mut self, base: SchedulerConfig) {
        self.base = base;
        let peers: Vec<SocketAddr> = self.destinations.keys().copied().collect();
        for peer in peers {
            let config = self.schedule_for(peer);
            if let Some(d) = self.destinations.get_mut(&peer) {
                d.scheduler.set_config(config);
            }
        }
    }

    /// Clock output switches (`clk_on`, `clk_tr`).
    pub fn set_output(&mut self, now: Nanos, enabled: bool, send_transport: bool) {
        self.output = (enabled, send_transport);
        for d in self.destinations.values_mut() {
            let scheduler = &mut d.scheduler;
            d.follower.set_output(enabled, send_transport, &mut |out| {
                scheduler.handle(now as f64, out)
            });
        }
    }

    /// The host tempo, for prediction.
    pub fn set_tempo(&mut self, tempo: Option<f64>) {
        self.tempo = tempo;
        for d in self.destinations.values_mut() {
            d.scheduler.handle_tempo(tempo);
        }
    }

    /// The engine has produced every clock message stamped before `ns` (host time).
    pub fn set_progress(&mut self, ns: f64) {
        for d in self.destinations.values_mut() {
            d.scheduler.handle_progress(ns);
        }
    }

    /// A clock message from the engine.
    pub fn clock_event(&mut self, now: Nanos, event: ClockEvent) {
        for d in self.destinations.values_mut() {
            let scheduler = &mut d.scheduler;
            d.follower
                .handle(event, &mut |out| scheduler.handle(now as f64, out));
        }
    }

    /// The clock's source changes (DAW ↔ Link): see [`ClockFollower::switch_source`].
    pub fn switch_source(&mut self, now: Nanos) {
        for d in self.destinations.values_mut() {
            let scheduler = &mut d.scheduler;
            d.follower
                .switch_source(&mut |out| scheduler.handle(now as f64, out));
        }
    }

    /// Receive (if the loop said the sockets are `readable`), build the clock packets due
    /// within `ahead` ns for the send path, run timers, send the rest. Returns when this next
    /// has work (ns): a timer, or a clock packet's due time minus `ahead`.
    pub fn poll(
        &mut self,
        now: Nanos,
        readable: bool,
        ahead: Nanos,
        send_path: Option<&mut SendPath>,
        resolver: &mut Resolver,
    ) -> Option<Nanos> {
        if !self.pending.is_empty() {
            self.poll_lookups(now, resolver);
        }
        if self.backlog.take(now, readable) {
            self.receive(now);
        }
        self.handle_events();
        if !self.aligned.is_empty() {
            self.update_alignment();
        }
        // Clock packets first, then timers: a guard packet built now follows every clock packet
        // already due (and so never carries a later timestamp than the next one).
        let horizon = now.saturating_add(ahead) as f64;
        for (peer, d) in &mut self.destinations {
            while let Some(t) = d.scheduler.poll_transmit(horizon) {
                let command = TimedCommand {
                    offset: 0,
                    command: t.message.kind.into(),
                };
                let at = t.send_at_ns.max(0.0) as Nanos;
                self.endpoint.send_midi_to(*peer, at, &[command]);
            }
        }
        self.endpoint.handle_timeout(now);
        self.handle_events();
        let mut next = self.endpoint.poll_timeout();
        for d in self.destinations.values() {
            let build_at = d
                .scheduler
                .poll_timeout()
                .map(|t| (t.max(0.0) as Nanos).saturating_sub(ahead));
            next = [next, build_at].into_iter().flatten().min();
        }
        self.flush(send_path);
        [next, self.backlog.due()].into_iter().flatten().min()
    }

    /// What waits on both sockets, each datagram at its kernel receive time, up to
    /// [`READ_BUDGET`](super::runtime::READ_BUDGET) per socket and pass (a flood cannot hold the worker here; the rest is
    /// read on the next pass, which comes at once).
    fn receive(&mut self, now: Nanos) {
        let Self {
            control,
            data,
            endpoint,
            status,
            buf,
            backlog,
            ..
        } = self;
        let mut more = false;
        for (port, socket) in [(Port::Control, &*control), (Port::Data, &*data)] {
            let step = || {
                let (len, from, age) = crate::sys::recv_stamped(socket, buf)?;
                let arrived = age.map_or(now, |age| host_time_ns().saturating_sub(age));
                endpoint.handle_datagram(arrived, port, from, &buf[..len]);
                Ok(())
            };
            // ICMP port-unreachable from a dead peer shows up as a read error (Linux, and as
            // ConnectionReset on Windows): counted.
            more |= read_budgeted(step, || status.send_errors += 1);
        }
        backlog.read(now, more);
    }

    /// A peer is connected: its clock messages must be built in time.
    pub fn has_destinations(&self) -> bool {
        !self.destinations.is_empty()
    }

    fn handle_events(&mut self) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                EndpointEvent::Connected(peer) => {
                    let mut scheduler = Scheduler::new(self.schedule_for(peer));
                    scheduler.handle_tempo(self.tempo);
                    let mut follower = ClockFollower::joining();
                    follower.set_output(self.output.0, self.output.1, &mut |_| {});
                    self.destinations.insert(
                        peer,
                        Destination {
                            follower,
                            scheduler,
                        },
                    );
                }
                EndpointEvent::Disconnected(peer, _) => {
                    self.destinations.remove(&peer);
                }
                EndpointEvent::Refused(_) => {}
            }
        }
    }

    /// Send everything the endpoint queued: RTP-MIDI packets through the send path (at their
    /// due time), the rest at once.
    fn flush(&mut self, mut send_path: Option<&mut SendPath>) {
        let mut queued = false;
        while let Some(t) = self.endpoint.poll_transmit() {
            if let (Some(due), Port::Data, Some(path)) = (t.due, t.from, send_path.as_deref_mut()) {
                let departure = Departure::new(due, Arc::clone(&self.data_out), t.to, &t.bytes);
                match departure.map(|d| path.push(d)) {
                    Some(Ok(())) => {
                        queued = true;
                        continue;
                    }
                    // Full ring or an oversize packet: it leaves now, from here (counted).
                    Some(Err(_)) => {}
                    None => self.status.oversize += 1,
                }
            }
            let socket = match t.from {
                Port::Control => &self.control,
                Port::Data => &self.data,
            };
            if socket.send_to(&t.bytes, t.to).is_err() {
                self.status.send_errors += 1;
            }
        }
        if queued && let Some(path) = send_path {
            path.wake();
        }
    }

    /// Stop every running destination (a Stop now, not at its scheduled time) and leave every
    /// session (BY), e.g. when the instance goes away.
    pub fn shutdown(&mut self, now: Nanos, send_path: Option<&mut SendPath>) {
        for (peer, d) in &mut self.destinations {
            let mut stop = false;
            d.follower
                .set_output(false, true, &mut |out| stop |= out.kind == ClockKind::Stop);
            if stop {
                let command = TimedCommand {
                    offset: 0,
                    command: ClockKind::Stop.into(),
                };
                self.endpoint.send_midi_to(*peer, now, &[command]);
            }
        }
        self.destinations.clear();
        self.endpoint.shutdown();
        self.flush(send_path);
    }

    /// The status.
    pub fn status(&self) -> RtpMidiStatus {
        let c = self.endpoint.counters();
        RtpMidiStatus {
            control_port: Some(self.port),
            errors: self
                .status
                .errors
                .iter()
                .chain(self.resolve_errors.values())
                .cloned()
                .collect(),
            resolving: self.pending.iter().map(|p| p.peer.host.clone()).collect(),
            peers: self
                .endpoint
                .peers()
                .into_iter()
                .map(|p| PeerReport {
                    address: p.address.to_string(),
                    name: p.name,
                    in_directory: p.in_directory,
                    connected: p.connected,
                    rtt_us: p.latency.map(|l| l.rtt_us),
                    jitter_us: p.latency.map(|l| l.jitter_us),
                    last_close: p.last_close.map(|r| format!("{r:?}")),
                    connects: p.connects,
                    journal: p.journal,
                    guard_packets: p.guards,
                    rx_lost: p.received.lost,
                    rx_repaired: p.received.repairs,
                    sent: p.sent,
                    received: p.received.packets,
                    align_ms: self
                        .aligned
                        .get(&p.address)
                        .copied()
                        .flatten()
                        .map(|ns| ns / 1e6),
                    ck_exchanges: p.latency.map_or(0, |l| l.samples),
                })
                .collect(),
            malformed: c.malformed,
            refused: c.refused,
            full: c.full,
            evicted: c.evicted,
            unanswered: c.unanswered,
            stale_bye: c.stale_bye,
            unknown: c.unknown_session + c.unknown_ssrc,
            wrong_source: c.wrong_source,
            rtp_sent: c.rtp_sent,
            rtp_received: c.rtp_received,
            send_errors: self.status.send_errors,
            oversize: self.status.oversize,
        }
    }
}

impl Drop for RtpMidi {
    fn drop(&mut self) {
        // The send path may still hold a handle on the data socket: take both off the loop
        // explicitly (epoll forgets a socket only when its last handle closes).
        if let Some(registry) = self.registry.take() {
            let _ = registry.deregister(&mut self.control);
            let _ = registry.deregister(&mut self.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aligned_peer_goes_half_its_round_trip_early_moving_only_for_a_real_change() {
        // 80.4 ms round trip: 40.2 ms early.
        assert_eq!(next_alignment(None, 80_400.0), Some(40.2e6));
        // The round trip's jitter (under 2 ms) leaves it alone; a real change moves it.
        assert_eq!(next_alignment(Some(40.2e6), 81_900.0), None);
        assert_eq!(next_alignment(Some(40.2e6), 78_600.0), None);
        assert_eq!(next_alignment(Some(40.2e6), 82_400.0), Some(41.2e6));
        // A peer that delays its answers moves us at most MAX_PEER_ALIGN_MS early.
        assert_eq!(
            next_alignment(None, 9_000_000.0),
            Some(MAX_PEER_ALIGN_MS * 1e6)
        );
        assert_eq!(next_alignment(None, f64::NAN), None);
        assert_eq!(next_alignment(None, -5.0), Some(0.0));
    }
}
