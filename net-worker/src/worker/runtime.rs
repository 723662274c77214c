//! The worker's loop: one readiness wait (`mio`: epoll, kqueue or IOCP) on every socket and a
//! waker for instance commands, with the earliest deadline of the protocol cores as its
//! timeout. Nothing is polled on a fixed period: a pass runs when a socket is readable, a
//! command arrives, or something is due, and a socket is read only when its token fired.
//!
//! The audio thread never wakes the worker (it must not make system calls), so the rings are
//! drained on a deadline too, as often as what depends on them needs ([`Runtime::drain_period`]):
//! every quarter of the assumed output latency while a clock destination is connected (a
//! message must be built before it is due), at the OSC feed rate while a controller listens,
//! and [`IDLE_PERIOD`] otherwise. Housekeeping (mDNS results, the event log, OSCQuery timeouts)
//! and status snapshots ride on passes that happen anyway.
//!
//! Clock departures do not leave from here: RTP-MIDI packets are built up to a drain period
//! plus [`BUILD_MARGIN`] before they are due and handed to the send path ([`super::sender`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Poll, Registry, Token};

use super::discovery::{self, Discovery};
use super::instance::{self, Attached, Services};
use super::resolver::Resolver;
use super::sender::SendPath;
use super::{Command, follow, link, osc, oscquery, publish, remote};
use crate::bridge::host_time_ns;
use crate::log::{EventLog, Watcher};
use crate::settings::DEFAULT_OSC_PORT;
use crate::status::WorkerStatus;

/// The waker's token (commands from instances).
pub const WAKER: Token = Token(0);
/// The OSC port (UDP, the TCP listener and every TCP controller).
const OSC: Token = Token(1);
/// OSCQuery (listener and connections).
const QUERY: Token = Token(2);
/// The Link peer's sockets.
const LINK: Token = Token(3);
/// An instance's RTP-MIDI sockets: this plus its id.
const RTP_BASE: usize = 1 << 16;

/// The token of instance `id`'s RTP-MIDI sockets.
pub fn rtp_token(id: u64) -> Token {
    Token(RTP_BASE + usize::try_from(id).unwrap_or(usize::MAX - RTP_BASE))
}

/// Longest sleep when nothing needs the worker sooner (no destination, no controller).
pub const IDLE_PERIOD: Duration = Duration::from_millis(100);
/// While an OSC controller or OSCQuery client listens: the transport feed's rate.
pub const FEED_PERIOD: Duration = Duration::from_millis(33);
/// While Link is on (the DAW's tempo and start/stop reach the session this fast).
pub const LINK_PERIOD: Duration = Duration::from_millis(10);
/// Shortest and longest ring-drain period while a clock destination is connected.
pub const ACTIVE_PERIOD: (Duration, Duration) =
    (Duration::from_micros(500), Duration::from_millis(5));
/// Clock packets are built this much more than a drain period before they are due.
pub const BUILD_MARGIN: Duration = Duration::from_millis(2);
/// OSC values waiting for room in an inbox are offered again this much later (ns): an audio
/// thread that stopped taking them (a host that stopped calling `process()`) costs 100
/// wake-ups a second, not 1,000.
const PENDING_RETRY: u64 = 10_000_000;
/// mDNS results, the event log and OSCQuery request timeouts are looked at this often.
pub const HOUSEKEEPING: Duration = Duration::from_millis(250);

/// Realtime priority asked for on Linux (`SCHED_FIFO`, 1..99): above every normal thread, so
/// a busy machine does not delay the building of clock packets, below the send path (12) and
/// well below the audio threads DAWs and JACK run at (typically 70 and up).
pub const REALTIME_PRIORITY: u8 = 10;

/// Datagrams a driver takes from one socket in one pass, at most: a flood cannot hold the
/// worker; the driver reads the rest after [`READ_REST`] (edge-triggered readiness will not
/// say so again, so it comes back by itself).
pub const READ_BUDGET: u32 = 256;
/// After a read stopped at its budget, that driver reads again only this much later (ns),
/// whatever its socket says meanwhile: a flood costs the worker a bounded share of a core
/// (its threads are realtime; nothing else at normal priority on that core would run
/// otherwise), and 256 datagrams a rest still take in over 100,000 a second.
pub const READ_REST: u64 = 1_000_000;

thread_local! {
    /// Host time (ns) until which the worker rests because a read budget ran out (0: not
    /// resting). Set by [`Backlog::read`], taken by [`run`] after each pass.
    static RESTING_UNTIL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A driver's read bookkeeping under [`READ_BUDGET`] and [`READ_REST`]: whether input is still
/// owed, and until when the driver rests. Times in the driver's own unit (`rest` is
/// [`READ_REST`] in it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Backlog {
    owed: bool,
    rest_until: u64,
    rest: u64,
}

impl Backlog {
    /// Bookkeeping for a driver whose clock counts `per_ms` units a millisecond.
    pub fn new(per_ms: u64) -> Self {
        Self {
            owed: false,
            rest_until: 0,
            rest: READ_REST / 1_000_000 * per_ms,
        }
    }

    /// Read now? (`ready`: the driver's token fired.) While resting, the read is owed.
    pub fn take(&mut self, now: u64, ready: bool) -> bool {
        let wanted = ready || self.owed;
        let go = wanted && now >= self.rest_until;
        self.owed = wanted && !go;
        go
    }

    /// A read pass ended; `more`: it stopped at its budget with input waiting.
    pub fn read(&mut self, now: u64, more: bool) {
        if more {
            self.owed = true;
            self.rest_until = now.saturating_add(self.rest);
            // The whole worker rests with it: woken by every datagram of a flood, it would
            // spend the rest in passes that read nothing.
            let until = host_time_ns().saturating_add(READ_REST);
            RESTING_UNTIL.with(|r| r.set(r.get().max(until)));
        }
    }

    /// When the driver must come back for owed input.
    pub fn due(&self) -> Option<u64> {
        self.owed.then_some(self.rest_until)
    }
}
/// Read errors (ICMP reports of earlier sends) taken from one socket in one pass, at most: a
/// socket that keeps failing is left until it is readable again.
pub const MAX_READ_ERRORS: u32 = 8;

/// Run one socket's read loop within the budget: `step` reads one datagram and handles it.
/// Stops when the socket would block, after [`READ_BUDGET`] datagrams (returns true: more may
/// be waiting, so the driver comes back after [`READ_REST`] — edge-triggered readiness will
/// not report them again), or after [`MAX_READ_ERRORS`] errors (ICMP reports of earlier
/// sends, `ConnectionReset` on Windows; each passed to `on_error`).
pub fn read_budgeted(
    mut step: impl FnMut() -> std::io::Result<()>,
    mut on_error: impl FnMut(),
) -> bool {
    let mut errors = 0;
    for _ in 0..READ_BUDGET {
        match step() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                on_error();
                errors += 1;
                if errors >= MAX_READ_ERRORS {
                    return false;
                }
            }
        }
    }
    true
}

/// Write what `out` holds to a non-blocking stream as far as it takes it (what it does not
/// take waits for the next pass, so a reply is never cut or the worker held). False when the
/// connection broke.
pub fn write_pending(stream: &mut impl std::io::Write, out: &mut Vec<u8>) -> bool {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return false,
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Timed OSC changes go to the plugin this long before they are due (covers a block of up
/// to 2048 samples at 48 kHz); the CLAP shim holds them until their block.
const OSC_LOOKAHEAD: u64 = 50_000_000;

/// The key the process-wide OSC services are advertised under in [`Discovery`].
const OSC_KEY: u64 = u64::MAX;

/// Which tokens fired in this wait.
#[derive(Debug, Default)]
struct Ready {
    osc: bool,
    query: bool,
    link: bool,
    /// The remote session's host socket, TURN socket, broker connection.
    remote: (bool, bool, bool),
    rtp: Vec<u64>,
}

/// Everything the worker owns.
struct Runtime {
    registry: Registry,
    rings: BTreeMap<u64, Attached>,
    discovery: Discovery,
    osc: Option<osc::OscServer>,
    query: Option<(oscquery::QueryServer, oscquery::HostInfo)>,
    osc_error: Option<String>,
    link: link::LinkService,
    remote: remote::RemoteService,
    /// The Link peer's join count the remote grid last saw (None: no settled Link peer).
    grid_link_joins: Option<u64>,
    send_path: Option<SendPath>,
    send_path_error: Option<String>,
    resolver: Resolver,
    watcher: Watcher,
    log: EventLog,
    scheduling: String,
    started: Instant,
    passes: u64,
    next_housekeeping: u64,
    /// When the remote session's OSC feed is next worked out (host ns).
    next_remote_feed: u64,
    next_publish: u64,
    /// A socket or a command changed something since the last snapshot: publish within one
    /// period, not only with the next pass that happens anyway.
    urgent: bool,
    /// The last snapshot stored, and when (to store only what changed).
    published: Option<(std::sync::Arc<WorkerStatus>, u64)>,
    /// OSC parameter changes waiting for room in their instance's inbox: the newest value per
    /// (instance, CLAP parameter id). Bounded by the parameters there are.
    osc_pending: BTreeMap<(u64, u32), crate::params::HostParamChange>,
}

/// The worker thread's body.
/// `ready` is signalled once the worker's own threads (the send path) exist under their
/// names, so `attach` returns with the thread set complete.
pub(crate) fn run(mut poll: Poll, commands: Receiver<Command>, ready: Sender<()>) {
    let Ok(registry) = poll.registry().try_clone() else {
        return;
    };
    let mut rt = Runtime::new(registry);
    let _ = ready.send(());
    let mut events = Events::with_capacity(256);
    let mut timeout = Some(Duration::ZERO);
    loop {
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            // Should never happen; do not spin on it.
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut ready = Ready::default();
        for event in &events {
            match event.token() {
                WAKER => {}
                OSC => ready.osc = true,
                QUERY => ready.query = true,
                LINK => ready.link = true,
                remote::UDP => ready.remote.0 = true,
                remote::TURN => ready.remote.1 = true,
                remote::BROKER => ready.remote.2 = true,
                Token(t) if t >= RTP_BASE => ready.rtp.push((t - RTP_BASE) as u64),
                Token(_) => {}
            }
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                    rt.shutdown();
                    return;
                }
                Ok(command) => {
                    rt.command(command);
                    // A command changes what the status shows: publish with this pass.
                    rt.next_publish = 0;
                    rt.urgent = true;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let due = rt.pass(&ready);
        let now = host_time_ns();
        let resting = RESTING_UNTIL.with(|r| r.replace(0));
        if resting > now {
            // A flood filled a read budget: sleep through the rest instead of waking for each
            // of its datagrams (what arrives meanwhile, a command included, waits at most
            // READ_REST; clock packets are built further ahead than that).
            std::thread::sleep(Duration::from_nanos(resting.min(due).saturating_sub(now)));
            timeout = Some(Duration::ZERO);
        } else {
            timeout = Some(Duration::from_nanos(due.saturating_sub(now)));
        }
    }
}

impl Runtime {
    fn new(registry: Registry) -> Self {
        let scheduling = crate::sys::realtime(REALTIME_PRIORITY);
        let (send_path, send_path_error) = match SendPath::start() {
            Ok(path) => (Some(path), None),
            Err(e) => (
                None,
                Some(format!(
                    "cannot start the clock send path: {e} (sending from the worker)"
                )),
            ),
        };
        let mut link = link::LinkService::new();
        let _ = link.set_registry(&registry, LINK);
        Self {
            registry,
            rings: BTreeMap::new(),
            discovery: Discovery::new(),
            osc: None,
            query: None,
            osc_error: None,
            link,
            remote: remote::RemoteService::new(),
            grid_link_joins: None,
            send_path,
            send_path_error,
            resolver: Resolver::new(),
            watcher: Watcher::new(),
            log: EventLog::new(),
            scheduling,
            started: Instant::now(),
            passes: 0,
            next_housekeeping: 0,
            next_remote_feed: 0,
            next_publish: 0,
            urgent: true,
            published: None,
            osc_pending: BTreeMap::new(),
        }
    }

    fn services(&mut self) -> (&mut BTreeMap<u64, Attached>, Services<'_>) {
        (
            &mut self.rings,
            Services {
                discovery: &mut self.discovery,
                osc: self.osc.as_mut(),
                resolver: &mut self.resolver,
                send_path: self.send_path.as_mut(),
                registry: &self.registry,
            },
        )
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Attach { id, ring } => {
                self.rings.insert(id, Attached::new(ring));
            }
            Command::Configure {
                id,
                settings,
                rtp_midi,
            } => {
                let (rings, mut services) = self.services();
                if let Some(attached) = rings.get_mut(&id) {
                    let generation = settings.generation();
                    let current = settings.get();
                    attached.shared = Some((settings, generation));
                    instance::configure(id, attached, &current, rtp_midi, &mut services);
                }
            }
            Command::Params {
                id,
                specs,
                inbox,
                layer,
            } => self.params(id, specs, inbox, layer),
            Command::Detach { id } => {
                self.discovery.withdraw(id);
                if let Some(server) = &mut self.osc {
                    server.core.remove_instance(id);
                    if server.core.is_empty() {
                        self.osc = None;
                        self.query = None;
                        self.discovery.withdraw(OSC_KEY);
                    }
                }
                if let Some(mut attached) = self.rings.remove(&id)
                    && let Some(rtpmidi) = &mut attached.rtpmidi
                {
                    rtpmidi.shutdown(host_time_ns(), self.send_path.as_mut());
                }
            }
            Command::Shutdown => {}
        }
    }

    /// An instance describes its parameters: open the OSC port (first instance) and add it.
    fn params(
        &mut self,
        id: u64,
        specs: Vec<crate::params::ParamSpec>,
        inbox: Option<super::Inbox>,
        layer: std::sync::Arc<crate::params::LayerStats>,
    ) {
        let Some(attached) = self.rings.get_mut(&id) else {
            return;
        };
        attached.layer = Some((inbox.is_some(), layer));
        attached.inbox = inbox;
        attached.param_ids = specs.iter().map(|s| s.id.clone()).collect();
        // Values reported before this command was handled (the ring and the command channel
        // race) are kept; the rest start at their defaults.
        let reported = std::mem::take(&mut attached.param_values);
        attached.param_values = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                reported
                    .get(i)
                    .copied()
                    .filter(|v| !v.is_nan())
                    .unwrap_or(s.default)
            })
            .collect();
        let (port, name) = attached.settings.as_ref().map_or_else(
            || (DEFAULT_OSC_PORT, "Lockstep".to_owned()),
            |s| (s.osc_port, s.session_name.clone()),
        );
        let (lan, mdns) = attached
            .settings
            .as_ref()
            .map_or((false, true), |s| (s.oscquery_lan, s.mdns));
        if self.osc.is_none() {
            match osc::OscServer::open(port).and_then(|mut server| {
                server
                    .register(&self.registry, OSC)
                    .map_err(|e| format!("cannot watch the OSC port: {e}"))?;
                Ok(server)
            }) {
                Ok(server) => {
                    let osc_port = server.port();
                    self.query = oscquery::QueryServer::open(osc_port.wrapping_add(1), lan)
                        .ok()
                        .and_then(|mut q| q.register(&self.registry, QUERY).ok().map(|()| q))
                        .map(|q| {
                            let host = oscquery::HostInfo {
                                name: format!("Lockstep ({})", discovery::host_name()),
                                osc_port,
                            };
                            (q, host)
                        });
                    if mdns {
                        self.discovery
                            .advertise(OSC_KEY, "_osc._udp.local.", "Lockstep", osc_port);
                        if let Some((q, _)) = self.query.as_ref().filter(|(q, _)| q.lan()) {
                            self.discovery.advertise(
                                OSC_KEY,
                                "_oscjson._tcp.local.",
                                "Lockstep",
                                q.port(),
                            );
                        }
                    }
                    self.osc = Some(server);
                    self.osc_error = None;
                }
                Err(why) => self.osc_error = Some(why),
            }
        }
        let Some(attached) = self.rings.get(&id) else {
            return;
        };
        if let Some(server) = &mut self.osc {
            server.core.add_instance(id, &name, specs);
            server.core.set_settable(id, attached.inbox.is_some());
            for (i, v) in attached.param_values.iter().enumerate() {
                server.core.set_current(id, i, *v);
            }
            if let Some(settings) = &attached.settings {
                server.core.set_mappings(id, &settings.osc_mappings);
                server.core.set_exposed(id, &settings.osc_expose);
                server.core.set_allow_list(&settings.osc_allow);
                server.core.set_rate_limit(settings.osc_rate_limit);
            }
        }
    }

    /// One pass: everything that is ready or due. Returns when the next pass is due (host ns).
    fn pass(&mut self, ready: &Ready) -> u64 {
        self.passes += 1;
        let now = host_time_ns();
        let period = self.drain_period();
        let mut due = now.saturating_add(period.as_nanos() as u64);
        let mut at = |t: Option<u64>| {
            if let Some(t) = t {
                due = due.min(t);
            }
        };
        {
            let (rings, mut services) = self.services();
            instance::watch_settings(rings, &mut services);
        }
        let link_due = follow::run_link(
            &mut self.rings,
            &mut self.link,
            self.osc.as_mut(),
            ready.link,
        );
        at(link_due.map(|t| t.max(0.0) as u64));
        {
            let (rings, mut services) = self.services();
            instance::drain(rings, &mut services);
        }
        // Ring events alone publish with the next pass that happens anyway (at rest the DAW's
        // transport snapshots keep coming); a socket or a command gets a pass of its own
        // within a publish period.
        self.urgent |= ready.osc || ready.query || ready.link || !ready.rtp.is_empty();
        at(self.poll_osc(now, ready));
        // Clock packets are built a drain period plus a margin for the worker's own wake-up
        // ahead of their due time, so the next pass is never too late to build one.
        let ahead = (period + BUILD_MARGIN).as_nanos() as u64;
        for (id, attached) in &mut self.rings {
            if let Some(rtpmidi) = &mut attached.rtpmidi {
                let readable = ready.rtp.contains(id);
                at(rtpmidi.poll(
                    now,
                    readable,
                    ahead,
                    self.send_path.as_mut(),
                    &mut self.resolver,
                ));
            }
        }
        at(instance::transmit(&mut self.rings, now));
        // The remote session: configured by the first instance with a session code.
        let wanted = self
            .rings
            .values()
            .filter_map(|a| a.settings.as_ref())
            .map(|s| &s.remote)
            .find(|r| !r.code.is_empty());
        self.remote.configure(wanted, &self.registry, now);
        // The shared grid: a local Link change goes out with this poll; a grid a peer sent
        // is applied after it (and reported by the next pass).
        if let Some(session) = self.remote.session_mut() {
            let view = self.link.grid_view(now);
            let joins = view.and(self.link.joins());
            match (self.grid_link_joins, joins, view) {
                // Link just opened (or re-opened) and settled: a LAN session it found is
                // weighed like a join; its own founding timeline is no change.
                (None, Some(joins), Some(view)) => session.link_opened(now, view, joins > 0),
                (Some(seen), Some(joins), Some(view)) if joins > seen => {
                    session.link_joined(now, view);
                }
                _ => {}
            }
            self.grid_link_joins = joins;
            session.observe_grid(now, view);
        }
        at(self.remote.poll(&self.registry, now, ready.remote));
        if let Some(session) = self.remote.session_mut() {
            // Without a Link session (Link Mode Off, or just opened) the grid waits.
            if self.link.settled(link::now_micros())
                && let Some(grid) = session.take_grid()
            {
                self.link.take_grid(&grid, host_time_ns());
                self.urgent = true;
                // The Link peer's broadcast of it leaves with the next pass, at once (this
                // pass polled the peer already).
                at(Some(now));
            }
            at(session.grid_due());
        }
        self.urgent |= ready.remote != (false, false, false);
        // The remote session's OSC feed: worked out at the feed's own rate, and only while
        // someone takes feedback.
        if now >= self.next_remote_feed {
            self.next_remote_feed = now + osc::TRANSPORT_INTERVAL;
            if let Some(server) = &mut self.osc {
                let feed = if server.core.has_listeners() {
                    self.remote.feed(now)
                } else {
                    None
                };
                server.core.set_remote(feed);
            }
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING.as_nanos() as u64;
            self.discovery.poll();
            if let (Some((q, host)), Some(server)) = (&mut self.query, &self.osc) {
                q.poll(now, &server.core, host);
            }
        }
        // At most every PUBLISH_PERIOD, stored only when something changed (timers, rings,
        // mDNS results change it as well as sockets do).
        if now >= self.next_publish {
            self.next_publish = now + publish::PUBLISH_PERIOD.as_nanos() as u64;
            self.urgent = false;
            self.publish(now);
        } else if self.urgent {
            at(Some(self.next_publish));
        }
        due
    }

    /// Receive OSC (if its token fired), run feedback, hand changes to the instances, serve
    /// OSCQuery. Returns when OSC next needs a pass, if sooner than the drain period.
    fn poll_osc(&mut self, now: u64, ready: &Ready) -> Option<u64> {
        let server = self.osc.as_mut()?;
        server
            .core
            .set_transport_control(publish::transport_control());
        let (now_changes, timed) = server.poll(now, ready.osc, OSC_LOOKAHEAD);
        if !server.transport.is_empty() {
            publish::transport_requests(server.transport.drain(..));
        }
        let rings = &mut self.rings;
        let timed: Vec<_> = timed
            .into_iter()
            .map(|(due, id, mut change)| {
                // The sample the due time falls on, through the instance's sample clock
                // estimate (as the clock engine maps samples to host time).
                change.at_sample = rings
                    .get(&id)
                    .and_then(|a| a.estimator.samples_at(due as f64))
                    .map(|s| s.max(0.0).round() as u64);
                (id, change)
            })
            .collect();
        // The newest value of each parameter waits here until its instance's inbox has room: a
        // value superseded before the audio thread took it is merged (counted), never lost, and
        // the newest always arrives.
        for (id, change) in now_changes {
            if self
                .osc_pending
                .insert((id, change.clap_id), change)
                .is_some()
            {
                server.core.merged(1);
            }
        }
        let mut dropped = 0;
        self.osc_pending.retain(|(id, _), change| {
            match rings.get_mut(id).and_then(|a| a.inbox.as_ref()) {
                Some(inbox) => super::lock(inbox).push(*change).is_err(),
                // No inbox (the instance went): nothing can take it.
                None => {
                    dropped += 1;
                    false
                }
            }
        });
        for (id, change) in timed {
            // A timed value goes after any older one still waiting, which it supersedes.
            if self.osc_pending.remove(&(id, change.clap_id)).is_some() {
                server.core.merged(1);
            }
            let pushed = rings
                .get_mut(&id)
                .and_then(|a| a.inbox.as_ref())
                .is_some_and(|inbox| super::lock(inbox).push(change).is_ok());
            dropped += u64::from(!pushed);
        }
        server.core.dropped(dropped);
        if let Some((q, host)) = &mut self.query
            && (ready.query || q.next_read().is_some() || q.websockets() > 0)
        {
            q.poll(now, &server.core, host);
        }
        let owed = [
            server.next_read(),
            self.query.as_ref().and_then(|(q, _)| q.next_read()),
        ];
        if let Some(at) = owed.into_iter().flatten().min() {
            // Stopped at a read budget: come back after the rest for what waits.
            return Some(at);
        }
        // Values waiting for room in an inbox: try again shortly.
        let pending = (!self.osc_pending.is_empty()).then_some(now + PENDING_RETRY);
        [
            pending,
            server
                .core
                .next_due()
                .map(|t| t.saturating_sub(OSC_LOOKAHEAD)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// How long the rings may wait before they are drained.
    fn drain_period(&self) -> Duration {
        let mut period = IDLE_PERIOD;
        for a in self.rings.values() {
            if a.has_destinations() || a.link_clock.is_some() {
                let quarter = Duration::from_nanos((a.scheduler.config().latency_ns / 4.0) as u64);
                period = period.min(quarter.clamp(ACTIVE_PERIOD.0, ACTIVE_PERIOD.1));
            }
        }
        if self.link.is_open() {
            period = period.min(LINK_PERIOD);
        }
        let listening = self.osc.as_ref().is_some_and(|s| s.core.has_listeners())
            || self.query.as_ref().is_some_and(|(q, _)| q.websockets() > 0);
        if listening {
            period = period.min(FEED_PERIOD);
        }
        period
    }

    /// Build a status snapshot; if it differs from the last one stored (or that is a second
    /// old: uptime and passes move on), derive the event log from it and swap it in.
    fn publish(&mut self, now: u64) {
        let uptime_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let osc = match (&self.osc, &self.osc_error) {
            (Some(server), _) => {
                let mut status = server.status();
                if let Some((q, _)) = &self.query {
                    status.oscquery_port = Some(q.port());
                    status.oscquery_lan = q.lan();
                    status.oscquery_served = q.counters.served;
                    status.oscquery_refused = q.counters.refused;
                    status.oscquery_refused_connections = q.counters.refused_connections;
                    status.oscquery_closed = q.counters.closed;
                    status.oscquery_connections = q.connections();
                }
                Some(status)
            }
            (None, Some(why)) => Some(osc::OscStatus {
                errors: vec![why.clone()],
                ..osc::OscStatus::default()
            }),
            (None, None) => None,
        };
        let mut send_path = self.send_path.as_ref().map(SendPath::stats);
        let mut send_scheduling = self
            .send_path
            .as_ref()
            .map(SendPath::scheduling)
            .unwrap_or_default();
        if let Some(why) = &self.send_path_error {
            send_scheduling = why.clone();
            send_path = None;
        }
        let status = WorkerStatus {
            running: true,
            uptime_ms,
            instances: self.rings.iter().map(|(id, a)| a.status(*id)).collect(),
            discovery: self.discovery.status(),
            scheduling: self.scheduling.clone(),
            osc,
            link: self.link.published_status.clone(),
            send_path,
            send_scheduling,
            receive_times: crate::sys::RX_STAMPS.to_owned(),
            passes: self.passes,
            remote: self.remote.status(now),
            ..WorkerStatus::empty()
        };
        let mut status = status;
        let fresh = self.published.as_ref().is_some_and(|(old, at)| {
            // Uptime and passes always move on: compare the rest.
            let (uptime_ms, passes) = (status.uptime_ms, status.passes);
            status.uptime_ms = old.uptime_ms;
            status.passes = old.passes;
            let same = status == **old;
            status.uptime_ms = uptime_ms;
            status.passes = passes;
            now < at + 1_000_000_000 && same
        });
        if fresh {
            return;
        }
        let generation = self.log.generation;
        self.watcher.observe(&status, &mut self.log);
        if self.log.generation != generation {
            publish::event_log(&self.log);
        }
        let status = std::sync::Arc::new(status);
        publish::status(std::sync::Arc::clone(&status));
        self.published = Some((status, now));
    }

    /// Stop every destination, leave every session and the Link session, withdraw every mDNS
    /// service; the send path sends what it still holds and is joined.
    fn shutdown(&mut self) {
        for attached in self.rings.values_mut() {
            if let Some(rtpmidi) = &mut attached.rtpmidi {
                rtpmidi.shutdown(host_time_ns(), self.send_path.as_mut());
            }
        }
        self.remote.stop(&self.registry, host_time_ns());
        self.rings.clear();
        self.query = None;
        self.osc = None;
        self.link
            .update(0, link::LinkMode::Off, "", None, false, None, false);
        self.discovery.shutdown();
        self.send_path = None;
    }
}
