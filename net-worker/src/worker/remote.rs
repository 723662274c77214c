//! The remote session's driver: the broker connection (TCP, MQTT), the UDP sockets ICE runs on
//! (one host socket, one reserved for TURN), and the key derivation, around the sans-IO
//! [`Session`]. One per process, configured by the first instance whose settings carry a
//! session code.
//!
//! The memory-hard key derivation (Argon2id, hundreds of milliseconds) and the server name
//! lookups run on a short-lived helper thread, never on the worker; the worker checks on it
//! every [`DERIVE_POLL`]. The broker connection is re-established with a growing back-off
//! ([`RECONNECT`]); the ICE paths do not depend on it once they are up.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket as StdUdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use super::osc::{REMOTE_FEED_STUDIOS, RemoteFeed, StudioFeed};
use super::runtime::{READ_REST, read_budgeted, write_pending};
use crate::proto::mqtt::{MqttClient, MqttConfig, MqttEvent, Will};
use crate::proto::remote::code::SessionCode;
use crate::proto::remote::keys::{KdfParams, PeerId, RootKey};
use crate::proto::remote::session::{Session, SessionConfig, TURN_SOCKETS, TurnServer};
use crate::proto::remote::turn_rest::turn_rest_credentials;
use crate::settings::{MAX_ALIGN_MS, RemoteSettings};
use crate::status::remote::RemoteStatus;

/// The host socket's token.
pub const UDP: Token = Token(4);
/// The TURN socket's token.
pub const TURN: Token = Token(5);
/// The broker connection's token.
pub const BROKER: Token = Token(6);

/// How often the worker looks whether the key is derived.
pub const DERIVE_POLL: Duration = Duration::from_millis(50);
/// Broker reconnect back-off: first and longest wait.
pub const RECONNECT: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// MQTT keep-alive, seconds.
const KEEP_ALIVE_S: u16 = 15;
/// TURN REST credentials are asked for this long.
const TURN_REST_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// What the helper thread hands back.
struct Prepared {
    root: RootKey,
    broker: SocketAddr,
    stun: Option<SocketAddr>,
    turn: Option<SocketAddr>,
}

enum State {
    Off,
    Preparing {
        rx: Receiver<Result<Prepared, String>>,
    },
    Running(Box<Running>),
    Failed(String),
}

struct Broker {
    stream: TcpStream,
    client: MqttClient,
    ready: bool,
}

struct Running {
    session: Session,
    udp: UdpSocket,
    host: SocketAddr,
    /// The TURN sockets (all on the [`TURN`] token), each with the address the session knows
    /// it by; empty without a TURN server.
    turn: Vec<(UdpSocket, SocketAddr)>,
    broker_addr: SocketAddr,
    broker: Option<Broker>,
    next_connect_ns: u64,
    backoff: Duration,
    connects: u64,
    /// Host and TURN sockets whose last read stopped at its budget.
    owed: (bool, bool),
    /// Broker messages dropped by connections that have ended.
    broker_dropped: u64,
}

/// The process's remote session.
pub struct RemoteService {
    settings: Option<RemoteSettings>,
    /// The code's room (public), parsed once when the settings change.
    room: String,
    state: State,
    me: PeerId,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn resolve(what: &str, text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("cannot find the {what} {text}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("the {what} {text} has no IPv4 address"))
}

/// The code, the key and the servers' addresses: on a helper thread.
fn prepare(code: &SessionCode, settings: &RemoteSettings) -> Result<Prepared, String> {
    let broker = resolve("broker", &settings.broker)?;
    let stun = (!settings.stun.is_empty())
        .then(|| resolve("STUN server", &settings.stun))
        .transpose()?;
    let turn = (!settings.turn.is_empty())
        .then(|| resolve("TURN server", &settings.turn))
        .transpose()?;
    let root = RootKey::derive(code, &KdfParams::DEFAULT)
        .map_err(|e| format!("cannot derive the session key: {e}"))?;
    Ok(Prepared {
        root,
        broker,
        stun,
        turn,
    })
}

impl Default for RemoteService {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoteService {
    /// Off.
    pub fn new() -> Self {
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        Self {
            settings: None,
            room: String::new(),
            state: State::Off,
            me: PeerId(id),
        }
    }

    /// Apply the wanted settings (None: no instance asks for a remote session).
    pub fn configure(&mut self, wanted: Option<&RemoteSettings>, registry: &Registry, now_ns: u64) {
        if self.settings.as_ref() == wanted {
            return;
        }
        // Only the alignment changed: the local session moves, the session stays.
        let without_align = |s: &RemoteSettings| RemoteSettings {
            align_ms: 0,
            ..s.clone()
        };
        if let (Some(have), Some(want)) = (&self.settings, wanted)
            && without_align(have) == without_align(want)
        {
            self.settings = Some(want.clone());
            if let State::Running(running) = &mut self.state {
                running.session.set_align(want.align_ms.min(MAX_ALIGN_MS));
            }
            return;
        }
        self.stop(registry, now_ns);
        self.settings = wanted.cloned();
        let Some(settings) = wanted else {
            return;
        };
        match SessionCode::parse(&settings.code) {
            Ok(code) => self.room = code.room_text(),
            Err(e) => {
                self.room.clear();
                self.state = State::Failed(format!("session code: {e}"));
                return;
            }
        }
        if settings.broker.is_empty() {
            self.state = State::Failed("no broker set: a remote session meets through one".into());
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let thread_settings = settings.clone();
        let spawned = std::thread::Builder::new()
            .name("lockstep-kdf".into())
            .spawn(move || {
                let prepared = SessionCode::parse(&thread_settings.code)
                    .map_err(|e| format!("session code: {e}"))
                    .and_then(|code| prepare(&code, &thread_settings));
                let _ = tx.send(prepared);
            });
        self.state = match spawned {
            Ok(_) => State::Preparing { rx },
            Err(e) => State::Failed(format!("cannot start the key derivation: {e}")),
        };
    }

    /// Leave the session (a goodbye to every peer, presence cleared).
    pub fn stop(&mut self, registry: &Registry, now_ns: u64) {
        if let State::Running(running) = &mut self.state {
            running.session.close(now_ns);
            running.send_datagrams();
            if let Some(broker) = &mut running.broker {
                if broker.ready {
                    let _ =
                        broker
                            .client
                            .publish(running.session.announce_topic(), &[], true, now_ns);
                }
                broker.client.disconnect(now_ns);
                let _ = write_pending(&mut broker.stream, broker.client.output());
                let _ = registry.deregister(&mut broker.stream);
            }
            let _ = registry.deregister(&mut running.udp);
            for (sock, _) in &mut running.turn {
                let _ = registry.deregister(sock);
            }
        }
        self.state = State::Off;
    }

    /// One pass: sockets that fired (`udp`, `turn`, `broker`), timers. Returns the deadline.
    pub fn poll(
        &mut self,
        registry: &Registry,
        now_ns: u64,
        (udp, turn, broker): (bool, bool, bool),
    ) -> Option<u64> {
        if let State::Preparing { rx } = &self.state {
            match rx.try_recv() {
                Ok(Ok(prepared)) => {
                    let settings = self.settings.clone().unwrap_or_default();
                    self.state = match SessionCode::parse(&settings.code)
                        .map_err(|e| format!("session code: {e}"))
                        .and_then(|code| {
                            Running::start(registry, self.me, code, &settings, prepared)
                        }) {
                        Ok(running) => State::Running(Box::new(running)),
                        Err(e) => State::Failed(e),
                    };
                }
                Ok(Err(e)) => self.state = State::Failed(e),
                Err(TryRecvError::Empty) => {
                    return Some(now_ns + DERIVE_POLL.as_nanos() as u64);
                }
                Err(TryRecvError::Disconnected) => {
                    self.state = State::Failed("the key derivation stopped".into());
                }
            }
        }
        let State::Running(running) = &mut self.state else {
            return None;
        };
        Some(running.poll(registry, now_ns, udp, turn, broker))
    }

    /// What OSC controllers see of the session (`/lockstep/remote/…`; None while off).
    pub fn feed(&self, now_ns: u64) -> Option<RemoteFeed> {
        let status = self.status(now_ns)?;
        let tenth = |ms: Option<f64>| ms.map_or(0.0, |v| ((v * 10.0).round() / 10.0) as f32);
        let c = &status.counters;
        let refused = c.datagrams_forged
            + c.datagrams_replayed
            + c.datagrams_malformed
            + c.rendezvous_forged
            + c.rendezvous_stale
            + c.rendezvous_malformed;
        Some(RemoteFeed {
            peers: status.peers.iter().filter(|p| p.ice == "connected").count() as i32,
            grid: status
                .grid
                .as_ref()
                .map(|g| (g.tempo_bpm as f32, g.phase as f32, g.playing)),
            align_ms: self
                .settings
                .as_ref()
                .map_or(0, |s| s.align_ms.min(MAX_ALIGN_MS)) as f32,
            refused: i32::try_from(refused).unwrap_or(i32::MAX),
            studios: status
                .peers
                .iter()
                .take(REMOTE_FEED_STUDIOS)
                .map(|p| StudioFeed {
                    path: p.path.clone(),
                    rtt_ms: tenth(p.rtt_ms),
                    one_way_ms: tenth(p.one_way_ms),
                    bound_ms: tenth(p.offset_bound_ms),
                })
                .collect(),
            state: status.state,
        })
    }

    /// The running session (None while off, deriving or failed).
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.state {
            State::Running(running) => Some(&mut running.session),
            _ => None,
        }
    }

    /// What the status shows (None while off).
    pub fn status(&self, now_ns: u64) -> Option<RemoteStatus> {
        let settings = self.settings.as_ref()?;
        let base = RemoteStatus {
            room: self.room.clone(),
            me: self.me.to_string(),
            broker: settings.broker.clone(),
            ..RemoteStatus::default()
        };
        Some(match &self.state {
            State::Off => base,
            State::Preparing { .. } => RemoteStatus {
                state: "deriving key".into(),
                ..base
            },
            State::Failed(why) => RemoteStatus {
                state: "error".into(),
                errors: vec![why.clone()],
                ..base
            },
            State::Running(running) => {
                let mut status = running.session.status(now_ns);
                status.clock_origin_ns = crate::sys::host_clock_origin_ns();
                status.broker = base.broker;
                status.broker_connected = running.broker.as_ref().is_some_and(|b| b.ready);
                status.broker_connects = running.connects;
                status.counters.broker_dropped = running.broker_dropped
                    + running
                        .broker
                        .as_ref()
                        .map_or(0, |b| b.client.counters().dropped);
                status
            }
        })
    }
}

/// A routable local address for reaching `toward` (no packet is sent: a UDP connect only
/// asks the routing table).
fn local_ip_toward(toward: SocketAddr) -> std::io::Result<std::net::IpAddr> {
    let probe = StdUdpSocket::bind("0.0.0.0:0")?;
    probe.connect(toward)?;
    Ok(probe.local_addr()?.ip())
}

/// A TURN socket on the [`TURN`] token, with its address as the session knows it (`ip`,
/// the host socket's routable address, and its port).
fn open_turn_socket(
    registry: &Registry,
    ip: std::net::IpAddr,
) -> Result<(UdpSocket, SocketAddr), String> {
    let (sock, port) = bind_udp(registry, TURN)?;
    Ok((sock, SocketAddr::new(ip, port)))
}

fn bind_udp(registry: &Registry, token: Token) -> Result<(UdpSocket, u16), String> {
    let mut sock = UdpSocket::bind("0.0.0.0:0".parse().expect("literal address"))
        .map_err(|e| format!("cannot open a UDP socket for the remote session: {e}"))?;
    let port = sock
        .local_addr()
        .map_err(|e| format!("UDP socket: {e}"))?
        .port();
    registry
        .register(&mut sock, token, Interest::READABLE)
        .map_err(|e| format!("cannot watch the remote session's socket: {e}"))?;
    Ok((sock, port))
}

impl Running {
    fn start(
        registry: &Registry,
        me: PeerId,
        code: SessionCode,
        settings: &RemoteSettings,
        prepared: Prepared,
    ) -> Result<Self, String> {
        let toward = prepared.stun.or(prepared.turn).unwrap_or(prepared.broker);
        let ip = local_ip_toward(toward)
            .map_err(|e| format!("no route toward {toward} for the remote session: {e}"))?;
        let (udp, port) = bind_udp(registry, UDP)?;
        let host = SocketAddr::new(ip, port);
        let turn = match prepared.turn {
            Some(server) => {
                let (user, pass) = if settings.turn_secret.is_empty() {
                    (settings.turn_user.clone(), settings.turn_pass.clone())
                } else {
                    let expiry = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        + TURN_REST_VALIDITY;
                    turn_rest_credentials(&settings.turn_secret, &me.to_string(), expiry.as_secs())
                };
                Some(TurnServer {
                    addr: server,
                    user,
                    pass,
                })
            }
            None => None,
        };
        let mut sockets = Vec::new();
        if turn.is_some() {
            for _ in 0..TURN_SOCKETS {
                sockets.push(open_turn_socket(registry, ip)?);
            }
        }
        let config = SessionConfig {
            me,
            host,
            stun: prepared.stun,
            turn,
        };
        let mut session = Session::new(config, code, prepared.root);
        session.set_align(settings.align_ms.min(MAX_ALIGN_MS));
        for (_, local) in &sockets {
            session.add_turn_socket(*local);
        }
        Ok(Self {
            session,
            udp,
            host,
            turn: sockets,
            broker_addr: prepared.broker,
            broker: None,
            next_connect_ns: 0,
            backoff: RECONNECT.0,
            connects: 0,
            owed: (false, false),
            broker_dropped: 0,
        })
    }

    fn poll(
        &mut self,
        registry: &Registry,
        now_ns: u64,
        udp: bool,
        turn: bool,
        broker: bool,
    ) -> u64 {
        let mut buf = [0u8; 2048];
        let mut read_errors = 0;
        // A read that stopped at its budget comes back after READ_REST (edge-triggered
        // readiness does not say so again).
        let (udp, turn) = (udp || self.owed.0, turn || self.owed.1);
        self.owed = (false, false);
        if udp {
            let (sock, host, session) = (&self.udp, self.host, &mut self.session);
            self.owed.0 = read_budgeted(
                || {
                    let (n, from) = sock.recv_from(&mut buf)?;
                    session.handle_datagram(host, from, &buf[..n], now_ns);
                    Ok(())
                },
                || read_errors += 1,
            );
        }
        if turn {
            // One token for all of them: read each (edge-triggered; they are few).
            let session = &mut self.session;
            for (sock, local) in &self.turn {
                self.owed.1 |= read_budgeted(
                    || {
                        let (n, from) = sock.recv_from(&mut buf)?;
                        session.handle_datagram(*local, from, &buf[..n], now_ns);
                        Ok(())
                    },
                    || read_errors += 1,
                );
            }
        }
        for _ in 0..read_errors {
            self.session.read_failed();
        }
        let mut due = self.poll_broker(registry, now_ns, broker);
        if self.owed != (false, false) {
            due = due.min(now_ns + READ_REST);
        }
        due = due.min(self.session.poll(now_ns, wall_ms()));
        self.send_datagrams();
        self.replace_retired_turn(registry);
        self.send_publishes(now_ns);
        due
    }

    /// Close the TURN sockets the session retired and give it fresh ones (new ports: new
    /// client 5-tuples at the TURN server).
    fn replace_retired_turn(&mut self, registry: &Registry) {
        while let Some(local) = self.session.poll_retired_turn() {
            if let Some(at) = self.turn.iter().position(|(_, l)| *l == local) {
                let (mut sock, _) = self.turn.swap_remove(at);
                let _ = registry.deregister(&mut sock);
            }
            match open_turn_socket(registry, self.host.ip()) {
                Ok((sock, fresh)) => {
                    self.turn.push((sock, fresh));
                    self.session.add_turn_socket(fresh);
                }
                Err(e) => self.session.error(e),
            }
        }
    }

    /// Connect, read, keep alive; returns the broker's deadline.
    fn poll_broker(&mut self, registry: &Registry, now_ns: u64, readable: bool) -> u64 {
        if self.broker.is_none() {
            if now_ns < self.next_connect_ns {
                return self.next_connect_ns;
            }
            match TcpStream::connect(self.broker_addr) {
                Ok(mut stream) => {
                    let registered = registry.register(
                        &mut stream,
                        BROKER,
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if let Err(e) = registered {
                        self.session
                            .error(format!("cannot watch the broker connection: {e}"));
                        return self.backoff(now_ns);
                    }
                    let mut id = [0u8; 8];
                    let _ = getrandom::fill(&mut id);
                    let config = MqttConfig {
                        client_id: format!("lockstep-{}", PeerId(id)),
                        keep_alive_s: KEEP_ALIVE_S,
                        will: Some(Will {
                            topic: self.session.announce_topic().to_owned(),
                            payload: Vec::new(),
                            retain: true,
                        }),
                        subscriptions: self.session.subscriptions(),
                    };
                    self.broker = Some(Broker {
                        stream,
                        client: MqttClient::new(config, now_ns),
                        ready: false,
                    });
                }
                Err(e) => {
                    self.session
                        .error(format!("cannot reach the broker {}: {e}", self.broker_addr));
                    return self.backoff(now_ns);
                }
            }
        }
        let Some(broker) = &mut self.broker else {
            return self.next_connect_ns;
        };
        let mut failure: Option<String> = None;
        if readable || !broker.ready {
            let mut buf = [0u8; 4096];
            loop {
                match broker.stream.read(&mut buf) {
                    Ok(0) => {
                        failure = Some("the broker closed the connection".into());
                        break;
                    }
                    Ok(n) => {
                        if let Err(e) = broker.client.handle_bytes(&buf[..n], now_ns) {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::NotConnected => break,
                    Err(e) => {
                        failure = Some(format!("broker connection: {e}"));
                        break;
                    }
                }
            }
        }
        if failure.is_none()
            && let Err(e) = broker.client.handle_timeout(now_ns)
        {
            failure = Some(e.to_string());
        }
        while let Some(event) = broker.client.poll_event() {
            match event {
                MqttEvent::Ready => {
                    broker.ready = true;
                    self.connects += 1;
                    self.backoff = RECONNECT.0;
                    self.session.broker_ready(now_ns);
                }
                MqttEvent::Message { topic, payload, .. } => {
                    self.session
                        .handle_message(&topic, &payload, now_ns, wall_ms());
                }
            }
        }
        if failure.is_none() && !write_pending(&mut broker.stream, broker.client.output()) {
            failure = Some("cannot write to the broker".into());
        }
        if let Some(why) = failure {
            let mut broker = self.broker.take().expect("checked above");
            self.broker_dropped += broker.client.counters().dropped;
            let _ = registry.deregister(&mut broker.stream);
            self.session.broker_lost();
            self.session.error(why);
            return self.backoff(now_ns);
        }
        broker.client.deadline()
    }

    fn backoff(&mut self, now_ns: u64) -> u64 {
        self.next_connect_ns = now_ns + self.backoff.as_nanos() as u64;
        self.backoff = (self.backoff * 2).min(RECONNECT.1);
        self.next_connect_ns
    }

    fn send_datagrams(&mut self) {
        while let Some(t) = self.session.poll_transmit() {
            let sock = self
                .turn
                .iter()
                .find(|(_, local)| *local == t.from)
                .map_or(&self.udp, |(sock, _)| sock);
            // A full socket buffer or an unreachable address loses this datagram (counted);
            // ICE retransmits and the probes come again.
            if let Err(e) = sock.send_to(&t.data, t.to) {
                self.session
                    .send_failed(format!("cannot send to {} from {}: {e}", t.to, t.from));
            }
        }
    }

    fn send_publishes(&mut self, now_ns: u64) {
        let Some(broker) = self.broker.as_mut().filter(|b| b.ready) else {
            return;
        };
        while let Some(p) = self.session.poll_publish() {
            if let Err(e) = broker
                .client
                .publish(&p.topic, &p.payload, p.retain, now_ns)
            {
                self.session.error(format!("broker: {e}"));
            }
        }
        let _ = write_pending(&mut broker.stream, broker.client.output());
    }
}
