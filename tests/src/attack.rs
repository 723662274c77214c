//! Scripted attacks on a running Lockstep, for the attack suite (`tests/tests/attacks.rs`) and
//! its benchmark rows (`tests/benches/attacks.rs`). Run only inside the private network
//! namespace the test runner creates: every address used is loopback (127.0.0.0/8) or the
//! multicast groups routed to it.
//!
//! The built plugin runs in the headless runner (a separate process, as users run it) at 120 BPM
//! with a real AppleMIDI peer: [`crate::responder`], which answers invitations and CK and takes
//! the kernel receive time of every clock packet. A well-behaved OSC controller on its own
//! address asks for an answer every 20 ms. One scenario after another attacks for
//! [`ATTACK`], then the system gets [`RECOVERY`] to settle; for each scenario's window the
//! [`Report`] gives the clock's lateness against its grid, the controller's answers and reply
//! times, the runner's memory before, at its peak and after, and the runner's counters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lockstep_net::proto::applemidi::{self, Ck, Command as Apple, Exchange};
use lockstep_net::proto::link::{
    self, Discovery, DiscoveryKind, PeerState, Timeline, encode_discovery,
};
use lockstep_net::proto::osc::{self, Arg, Message, Packet};
use lockstep_net::status::ExportedStatus;

use crate::harness::{realtime_ns, rss_kb, wait_like_the_send_path};
use crate::responder::responder;

/// Our AppleMIDI control port (data = +1).
pub const RTP_PORT: u16 = 5404;
/// The real peer's control port.
pub const PEER_PORT: u16 = 6404;
/// Our OSC port (OSCQuery on +1).
pub const OSC_PORT: u16 = 8400;
/// How long each attack lasts.
pub const ATTACK: Duration = Duration::from_secs(3);
/// How long the system gets after each attack before the next.
pub const RECOVERY: Duration = Duration::from_secs(1);
/// The tempo the runner plays: a clock tick every 60 / (120 × 24) s.
pub const BPM: f64 = 120.0;
/// The real peer's SSRC (the responder answers with it).
const PEER_SSRC: u32 = 0x5151_5151;
/// The well-behaved controller's address.
const CONTROLLER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// One attack: a name and what it does for [`ATTACK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Nothing: the reference figures.
    None,
    /// 5,000 AppleMIDI invitations from 5,000 addresses, on both ports.
    InvitationFlood,
    /// BY and CK naming the real peer's session from another address, and a BY sweep of every
    /// 16-bit SSRC.
    ForgedControl,
    /// Bundles of 340 `/lockstep/dump` requests, as fast as one core sends them.
    DumpAmplification,
    /// OSC over TCP: SLIP without an END byte, then a stream of valid frames.
    SlipWithoutEnd,
    /// 40 silent TCP connections and 40 silent WebSockets from 8 addresses, then a new TCP
    /// controller and an OSCQuery GET that must be served.
    ConnectionHoarding,
    /// One valid OSC message from each of 5,000 source addresses.
    SourceSweep,
    /// Link ALIVEs from forged node ids (up to 200,000), some carrying our session with impossible
    /// tempos.
    LinkFlood,
    /// Junk datagrams to mDNS's group and port.
    MdnsJunk,
}

impl Scenario {
    /// Every scenario, the reference first.
    pub const ALL: [Scenario; 9] = [
        Scenario::None,
        Scenario::InvitationFlood,
        Scenario::ForgedControl,
        Scenario::DumpAmplification,
        Scenario::SlipWithoutEnd,
        Scenario::ConnectionHoarding,
        Scenario::SourceSweep,
        Scenario::LinkFlood,
        Scenario::MdnsJunk,
    ];

    /// Short name for reports and bench rows.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::InvitationFlood => "invitation_flood",
            Scenario::ForgedControl => "forged_by_ck",
            Scenario::DumpAmplification => "dump_amplification",
            Scenario::SlipWithoutEnd => "slip_without_end",
            Scenario::ConnectionHoarding => "connection_hoarding",
            Scenario::SourceSweep => "source_sweep",
            Scenario::LinkFlood => "link_alive_flood",
            Scenario::MdnsJunk => "mdns_junk",
        }
    }
}

/// Attackers send at most this many datagrams a second …
pub const MAX_DATAGRAMS_PER_SECOND: f64 = 50_000.0;
/// … and at most this many bytes a second: about what a machine on a gigabit LAN can push at
/// Lockstep (the suite runs on loopback, where one core could send ten times that and the
/// kernel itself then drops packets, the clock's included, before any program sees them).
pub const MAX_BYTES_PER_SECOND: f64 = 100e6;

/// Paces an attacker to [`MAX_DATAGRAMS_PER_SECOND`] and [`MAX_BYTES_PER_SECOND`].
struct Pace {
    start: Instant,
    datagrams: f64,
    bytes: f64,
}

impl Pace {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            datagrams: 0.0,
            bytes: 0.0,
        }
    }

    /// Account for `datagrams` datagrams of `bytes` bytes in all; sleep if ahead of the pace.
    fn sent(&mut self, datagrams: usize, bytes: usize) {
        self.datagrams += datagrams as f64;
        self.bytes += bytes as f64;
        let due =
            (self.datagrams / MAX_DATAGRAMS_PER_SECOND).max(self.bytes / MAX_BYTES_PER_SECOND);
        let at = self.start + Duration::from_secs_f64(due);
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// What one scenario did to the clock, the controller and memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// [`Scenario::name`].
    pub scenario: &'static str,
    /// The window's length (attack and recovery), s.
    pub window_s: f64,
    /// Clock packets the peer received in the window.
    pub ticks: usize,
    /// Lateness of those packets against the tick grid, µs: p99 and max.
    pub late_p99_us: f64,
    /// See `late_p99_us`.
    pub late_max_us: f64,
    /// How late a bare thread with the send path's scheduling got a datagram to its sink in
    /// the same window, at worst (µs, kernel receive times on the same grid rule): the
    /// machine's own floor, attack or not.
    pub floor_max_us: f64,
    /// Controller requests sent, and answered within 1 s.
    pub probes: usize,
    /// See `probes`.
    pub answered: usize,
    /// The controller's reply time, µs: p50, p99.
    pub reply_p50_us: f64,
    /// See `reply_p50_us`.
    pub reply_p99_us: f64,
    /// CPU time of the worker (`lockstep-net`) and the send path (`lockstep-send`) in the
    /// window, % of one core.
    pub worker_cpu_pct: f64,
    /// See `worker_cpu_pct`.
    pub sender_cpu_pct: f64,
    /// The runner's resident memory, KiB: before the attack, at its peak, at the window's end.
    pub rss_before_kb: u64,
    /// See `rss_before_kb`.
    pub rss_peak_kb: u64,
    /// See `rss_before_kb`.
    pub rss_after_kb: u64,
    /// What the attacker measured (bytes out and in, connections served, …).
    pub attacker: serde_json::Value,
    /// The runner's counters at the window's end (see [`counters`]).
    pub counters: serde_json::Value,
    /// The runner's status at the window's end.
    #[serde(skip)]
    pub status: Option<ExportedStatus>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The value at quantile `q` of `values` (sorted here).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// The headless runner with the attack rig's settings, its JSON status read as it comes.
struct Runner {
    child: Child,
    latest: Arc<Mutex<Option<ExportedStatus>>>,
}

impl Runner {
    fn start(runner: &Path, plugin: &Path) -> Result<Self> {
        let mut child = Command::new(runner)
            .args([
                "--plugin",
                plugin.to_str().context("plugin path")?,
                "--tempo",
                &BPM.to_string(),
                "--status-json",
                "--rtpmidi-port",
                &RTP_PORT.to_string(),
                "--peer",
                &format!("peer@127.0.0.1:{PEER_PORT}"),
                "--osc-port",
                &OSC_PORT.to_string(),
                "--osc-allow",
                "127.0.0.0/8",
                "--link",
                "lead",
                "--for",
                "600",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting lockstep-headless")?;
        let stdout = child.stdout.take().context("runner stdout")?;
        let latest = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&latest);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let status = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| {
                        serde_json::from_value::<ExportedStatus>(v["plugin"].clone()).ok()
                    });
                if let Some(s) = status {
                    *lock(&sink) = Some(s);
                }
            }
        });
        Ok(Self { child, latest })
    }

    fn status(&self) -> Option<ExportedStatus> {
        lock(&self.latest).clone()
    }

    /// The next status line (the runner prints one a second).
    fn fresh_status(&self) -> Option<ExportedStatus> {
        let old = self.status().map(|s| s.worker.uptime_ms);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let now = self.status();
            if now.as_ref().map(|s| s.worker.uptime_ms) != old {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.status()
    }

    /// CPU time (s) so far of the runner's thread named `name`.
    fn thread_cpu(&self, name: &str) -> f64 {
        let pid = self.child.id();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0.0;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            // Fields after the ")" closing the name: utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            return (ticks(11) + ticks(12)) / hz;
        }
        0.0
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.child.id())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One controller request: (realtime ns sent, reply time µs if answered).
type Probe = (f64, Option<f64>);

/// The well-behaved controller: every 20 ms it sends `/lockstep/probe/<n>` (an unknown address:
/// Lockstep answers on `/lockstep/error` naming it) and notes when each answer comes.
struct Controller {
    log: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    fn start() -> Result<Self> {
        let socket = UdpSocket::bind((CONTROLLER, 0)).context("controller socket")?;
        socket.set_read_timeout(Some(Duration::from_millis(2)))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, halt) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut sent: Vec<Instant> = Vec::new();
            let mut buf = [0u8; 2048];
            let mut next = Instant::now();
            while !halt.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next += Duration::from_millis(20);
                    let n = sent.len();
                    let mut bytes = Vec::new();
                    osc::encode_message(
                        &Message::new(format!("/lockstep/probe/{n}"), vec![]),
                        &mut bytes,
                    );
                    sent.push(Instant::now());
                    lock(&sink).push((realtime_ns(), None));
                    let _ = socket.send_to(&bytes, (Ipv4Addr::LOCALHOST, OSC_PORT));
                }
                let Ok((len, _)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let at = Instant::now();
                let Ok(Packet::Message(m)) = osc::decode(&buf[..len]) else {
                    continue;
                };
                let n = match m.args.first() {
                    Some(Arg::Str(address)) => address
                        .strip_prefix("/lockstep/probe/")
                        .and_then(|n| n.parse::<usize>().ok()),
                    _ => None,
                };
                if let Some(n) = n.filter(|n| *n < sent.len()) {
                    let rtt = (at - sent[n]).as_secs_f64() * 1e6;
                    if rtt < 1e6
                        && let Some(entry) = lock(&sink).get_mut(n)
                    {
                        entry.1.get_or_insert(rtt);
                    }
                }
            }
        });
        Ok(Self {
            log,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The machine's own floor while the attacks run: a bare thread with the send path's
/// scheduling that sleeps to a deadline every tick period (half a period off Lockstep's ticks,
/// so the two never spin at once) and sends a datagram to a sink that takes its kernel receive
/// time, exactly as the peer takes Lockstep's. No plugin: how late any clock sender on this
/// machine, through this kernel's loopback, would be at that moment.
struct Floor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    sink: Box<dyn FnOnce() -> Vec<f64>>,
}

/// The floor's sink port.
const FLOOR_PORT: u16 = PEER_PORT + 10;

impl Floor {
    fn start() -> Self {
        let sink = Box::new(crate::responder::stamp_sink(
            FLOOR_PORT,
            Arc::new(AtomicBool::new(false)),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            lockstep_net::sys::realtime(lockstep_net::worker::sender::PRIORITY);
            let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
                return;
            };
            let period = Duration::from_secs_f64(60.0 / BPM / 24.0);
            let mut deadline = Instant::now() + period / 2;
            while !halt.load(Ordering::Relaxed) {
                wait_like_the_send_path(deadline);
                let _ = socket.send_to(&[0xF8; 16], (Ipv4Addr::LOCALHOST, FLOOR_PORT));
                // A strict grid, as the clock's: a late wake-up shows as lateness, never
                // shifts the grid.
                deadline += period;
            }
        });
        Self {
            stop,
            thread: Some(thread),
            sink,
        }
    }

    /// Stop; the kernel receive times of every datagram.
    fn finish(mut self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.sink)()
    }
}

/// Clock packets' lateness (µs) in `[from, to)` (realtime ns) against the tick grid: each
/// arrival's global index fixes its slot, the earliest arrival in the window fixes the grid's
/// phase. A lost tick shifts every later slot by a whole tick, so losses count as lateness.
fn lateness(arrivals: &[f64], from: f64, to: f64) -> Vec<f64> {
    let interval = 60e9 / (BPM * 24.0);
    let window: Vec<(usize, f64)> = arrivals
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, t)| *t >= from && *t < to)
        .collect();
    let Some(phase) = window
        .iter()
        .map(|(i, t)| t - *i as f64 * interval)
        .min_by(f64::total_cmp)
    else {
        return Vec::new();
    };
    window
        .iter()
        .map(|(i, t)| (t - *i as f64 * interval - phase) / 1e3)
        .collect()
}

/// One scenario's window and what was measured around it.
struct Window {
    scenario: Scenario,
    from: f64,
    to: f64,
    rss_before: u64,
    rss_after: u64,
    worker_cpu: f64,
    sender_cpu: f64,
    attacker: serde_json::Value,
    status: Option<ExportedStatus>,
}

/// Run every scenario in `scenarios` against one runner, in order; a report for each.
pub fn run(runner: &Path, plugin: &Path, scenarios: &[Scenario]) -> Result<Vec<Report>> {
    let stop = Arc::new(AtomicBool::new(false));
    let finish = responder(PEER_PORT, Arc::clone(&stop));
    let lockstep = Runner::start(runner, plugin)?;
    // The session forms, the clock starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let connected = lockstep.status().is_some_and(|s| {
            s.worker.instances.first().is_some_and(|i| {
                i.rtpmidi
                    .as_ref()
                    .is_some_and(|r| r.peers.iter().any(|p| p.connected))
            }) && s
                .worker
                .link
                .as_ref()
                .is_some_and(|l| !l.session.is_empty())
        });
        if connected {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the runner never connected to the peer: {:?}",
            lockstep.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let controller = Controller::start()?;
    let floor = Floor::start();
    let rss = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let pid_rss = {
        let (rss, sampling) = (Arc::clone(&rss), Arc::clone(&sampling));
        let pid = lockstep.child.id();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                lock(&rss).push((realtime_ns(), rss_kb(pid)));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut windows = Vec::new();
    for &scenario in scenarios {
        let rss_before = lockstep.rss_kb();
        let from = realtime_ns();
        let cpu = (
            lockstep.thread_cpu("lockstep-net"),
            lockstep.thread_cpu("lockstep-send"),
        );
        let attacker = attack(scenario, &lockstep)?;
        std::thread::sleep(RECOVERY);
        let to = realtime_ns();
        let seconds = (to - from) / 1e9;
        windows.push(Window {
            scenario,
            from,
            to,
            rss_before,
            rss_after: lockstep.rss_kb(),
            worker_cpu: (lockstep.thread_cpu("lockstep-net") - cpu.0) / seconds * 100.0,
            sender_cpu: (lockstep.thread_cpu("lockstep-send") - cpu.1) / seconds * 100.0,
            attacker,
            status: lockstep.fresh_status(),
        });
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = pid_rss.join();
    let floor = floor.finish();
    let log = Arc::clone(&controller.log);
    drop(controller);
    let log = lock(&log).clone();
    drop(lockstep);
    let arrivals = finish();
    ensure!(!arrivals.is_empty(), "the peer received no clock");
    let rss = lock(&rss).clone();
    let mut reports = Vec::new();
    for w in windows {
        let Window {
            scenario,
            from,
            to,
            rss_before: before,
            rss_after: after,
            worker_cpu,
            sender_cpu,
            attacker,
            status,
        } = w;
        let mut late = lateness(&arrivals, from, to);
        let ticks = late.len();
        let late_max_us = late.iter().copied().fold(0.0, f64::max);
        let late_p99_us = quantile(&mut late, 0.99);
        let floor_max_us = lateness(&floor, from, to).into_iter().fold(0.0, f64::max);
        let in_window: Vec<&Probe> = log
            .iter()
            .filter(|(t, _)| *t >= from && *t < to - 0.2e9)
            .collect();
        let mut replies: Vec<f64> = in_window.iter().filter_map(|(_, r)| *r).collect();
        let rss_peak_kb = rss
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, kb)| *kb)
            .max()
            .unwrap_or(after);
        let counters = status.as_ref().map_or(serde_json::Value::Null, counters);
        reports.push(Report {
            scenario: scenario.name(),
            window_s: (to - from) / 1e9,
            ticks,
            late_p99_us,
            late_max_us,
            floor_max_us,
            probes: in_window.len(),
            answered: replies.len(),
            reply_p50_us: quantile(&mut replies, 0.5),
            reply_p99_us: quantile(&mut replies, 0.99),
            worker_cpu_pct: worker_cpu,
            sender_cpu_pct: sender_cpu,
            rss_before_kb: before,
            rss_peak_kb,
            rss_after_kb: after,
            attacker,
            counters,
            status,
        });
    }
    Ok(reports)
}

/// What the suite looks at in the runner's status.
pub fn counters(s: &ExportedStatus) -> serde_json::Value {
    let w = &s.worker;
    let instance = w.instances.first();
    let r = instance.and_then(|i| i.rtpmidi.as_ref());
    let peer = r.and_then(|r| r.peers.iter().find(|p| p.in_directory));
    serde_json::json!({
        "audio_events_dropped": instance.map(|i| i.events_dropped_full),
        "clock_gaps": instance.map(|i| i.clock_gaps),
        "clock_lost": instance.map(|i| i.clock_lost),
        "send_path": w.send_path.as_ref().map(|p| serde_json::json!({
            "sent": p.sent, "late_over_1ms": p.late_over_1ms, "worst_late_us": p.worst_late_us,
            "built_late": p.built_late, "worst_built_late_us": p.worst_built_late_us,
        })),
        "peer_connected": peer.map(|p| p.connected),
        "peer_connects": peer.map(|p| p.connects),
        "guests": r.map(|r| r.peers.iter().filter(|p| !p.in_directory).count()),
        "rtpmidi": r.map(|r| serde_json::json!({
            "refused": r.refused, "full": r.full, "evicted": r.evicted,
            "unanswered": r.unanswered, "wrong_source": r.wrong_source,
            "stale_bye": r.stale_bye, "malformed": r.malformed, "unknown": r.unknown,
        })),
        "osc": w.osc.as_ref().map(|o| serde_json::json!({
            "received": o.received, "applied": o.applied, "rate_limited": o.rate_limited,
            "replies_limited": o.replies_limited, "sources": o.sources,
            "sources_full": o.sources_full, "too_large": o.too_large,
            "tcp_clients": o.tcp_clients, "tcp_refused": o.tcp_refused,
            "tcp_closed": o.tcp_closed, "oscquery_connections": o.oscquery_connections,
            "oscquery_refused_connections": o.oscquery_refused_connections,
            "oscquery_closed": o.oscquery_closed, "oscquery_served": o.oscquery_served,
        })),
        "link": w.link.as_ref().map(|l| serde_json::json!({
            "peers": l.peers, "tempo": l.tempo, "implausible": l.implausible,
            "peers_refused": l.peers_refused, "malformed": l.malformed,
        })),
    })
}

/// A socket on `ip` (any port), or `None` if the address cannot be bound.
fn udp_on(ip: Ipv4Addr) -> Option<UdpSocket> {
    UdpSocket::bind((ip, 0)).ok()
}

/// The address of attacker `i` in 127.`a`.x.y (never 127.0.0.x, where the rig lives).
fn attacker_ip(a: u8, i: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, a, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn apple(command: &Apple) -> Vec<u8> {
    let mut bytes = Vec::new();
    applemidi::encode_into(command, &mut bytes);
    bytes
}

/// Run `scenario` for [`ATTACK`]; what the attacker measured.
fn attack(scenario: Scenario, lockstep: &Runner) -> Result<serde_json::Value> {
    let until = Instant::now() + ATTACK;
    let control = SocketAddr::from((Ipv4Addr::LOCALHOST, RTP_PORT));
    let data = SocketAddr::from((Ipv4Addr::LOCALHOST, RTP_PORT + 1));
    let osc_udp = SocketAddr::from((Ipv4Addr::LOCALHOST, OSC_PORT));
    let mut sent = 0u64;
    let mut pace = Pace::new();
    let result = match scenario {
        Scenario::None => {
            std::thread::sleep(ATTACK);
            serde_json::json!({})
        }
        Scenario::InvitationFlood => {
            for i in 0..5_000u32 {
                let Some(socket) = udp_on(attacker_ip(1, i)) else {
                    continue;
                };
                let invitation = apple(&Apple::Invitation(Exchange {
                    token: 0x1000_0000 + i,
                    ssrc: 0x2000_0000 + i,
                    name: Some("flood".into()),
                }));
                let _ = socket.send_to(&invitation, control);
                sent += 1;
                pace.sent(1, invitation.len());
                // Half of them complete their data-port invitation when that port is free.
                if i % 2 == 0
                    && let Ok(local) = socket.local_addr()
                    && let Ok(second) = UdpSocket::bind((local.ip(), local.port().wrapping_add(1)))
                {
                    let _ = second.send_to(&invitation, data);
                    sent += 1;
                    pace.sent(1, invitation.len());
                }
            }
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            serde_json::json!({ "datagrams": sent })
        }
        Scenario::ForgedControl => {
            let socket = udp_on(Ipv4Addr::new(127, 0, 0, 9)).context("attacker socket")?;
            let bye = |ssrc| {
                apple(&Apple::Bye(Exchange {
                    token: 0,
                    ssrc,
                    name: None,
                }))
            };
            let ck = apple(&Apple::Ck(Ck {
                ssrc: PEER_SSRC,
                count: 0,
                timestamps: [1, 0, 0],
            }));
            let mut ssrc = 0u32;
            while Instant::now() < until {
                for to in [control, data] {
                    let _ = socket.send_to(&bye(PEER_SSRC), to);
                    let _ = socket.send_to(&ck, to);
                }
                for _ in 0..64 {
                    let _ = socket.send_to(&bye(ssrc), control);
                    ssrc = (ssrc + 1) & 0xFFFF;
                }
                sent += 68;
                pace.sent(68, 68 * 16);
            }
            serde_json::json!({ "datagrams": sent })
        }
        Scenario::DumpAmplification => {
            let socket = udp_on(Ipv4Addr::new(127, 0, 0, 10)).context("attacker socket")?;
            socket.set_nonblocking(true)?;
            let mut bundle = Vec::new();
            osc::encode(
                &Packet::Bundle {
                    time: osc::IMMEDIATELY,
                    elements: vec![Packet::Message(Message::new("/lockstep/dump", vec![])); 340],
                },
                &mut bundle,
            );
            let (mut bytes_out, mut bytes_in) = (0u64, 0u64);
            let mut buf = [0u8; 65_536];
            while Instant::now() < until {
                if socket.send_to(&bundle, osc_udp).is_ok() {
                    bytes_out += bundle.len() as u64;
                }
                pace.sent(1, bundle.len());
                while let Ok((n, _)) = socket.recv_from(&mut buf) {
                    bytes_in += n as u64;
                }
            }
            let settle = Instant::now() + Duration::from_millis(300);
            while Instant::now() < settle {
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => bytes_in += n as u64,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            serde_json::json!({ "bytes_sent": bytes_out, "bytes_received": bytes_in })
        }
        Scenario::SlipWithoutEnd => {
            // Junk without END, reconnecting whenever Lockstep closes the connection; then
            // valid SLIP frames as fast as the socket takes them.
            let junk = vec![0x41u8; 16_384];
            let (mut closed_by_lockstep, mut junk_bytes) = (0u64, 0u64);
            let half = Instant::now() + ATTACK / 2;
            while Instant::now() < half {
                let Ok(mut tcp) = TcpStream::connect(osc_udp) else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                tcp.set_write_timeout(Some(Duration::from_millis(100)))?;
                let _ = tcp.write_all(&[0xC0]);
                while Instant::now() < half {
                    match tcp.write(&junk) {
                        Ok(n) => {
                            junk_bytes += n as u64;
                            pace.sent(0, n);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => {
                            closed_by_lockstep += 1;
                            break;
                        }
                    }
                }
            }
            let mut frame = Vec::new();
            let mut message = Vec::new();
            osc::encode_message(
                &Message::new("/lockstep/param/mac_2/normalized", vec![Arg::Float(0.5)]),
                &mut message,
            );
            for _ in 0..256 {
                osc::slip::encode(&message, &mut frame);
            }
            let mut frames = 0u64;
            if let Ok(mut tcp) = TcpStream::connect(osc_udp) {
                tcp.set_write_timeout(Some(Duration::from_millis(100)))?;
                while Instant::now() < until {
                    match tcp.write_all(&frame) {
                        Ok(()) => {
                            frames += 256;
                            pace.sent(0, frame.len());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
            }
            serde_json::json!({
                "junk_bytes": junk_bytes,
                "closed_by_lockstep": closed_by_lockstep,
                "valid_frames": frames
            })
        }
        Scenario::ConnectionHoarding => hoard(until)?,
        Scenario::SourceSweep => {
            let mut bytes = Vec::new();
            osc::encode_message(
                &Message::new("/lockstep/param/mac_3/normalized", vec![Arg::Float(0.25)]),
                &mut bytes,
            );
            for i in 0..5_000u32 {
                if let Some(socket) = udp_on(attacker_ip(2, i)) {
                    let _ = socket.send_to(&bytes, osc_udp);
                    sent += 1;
                    pace.sent(1, bytes.len());
                }
            }
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            serde_json::json!({ "sources": sent })
        }
        Scenario::LinkFlood => {
            let session = lockstep
                .status()
                .and_then(|s| s.worker.link)
                .map(|l| l.session)
                .unwrap_or_default();
            let ours: Option<link::NodeId> = (session.len() == 16)
                .then(|| {
                    let mut id = [0u8; 8];
                    for (k, b) in id.iter_mut().enumerate() {
                        *b = u8::from_str_radix(&session[2 * k..2 * k + 2], 16).ok()?;
                    }
                    Some(id)
                })
                .flatten();
            let socket = udp_on(Ipv4Addr::new(127, 0, 0, 12)).context("attacker socket")?;
            let group = SocketAddr::from(link::MULTICAST);
            let mut bytes = Vec::new();
            let mut k = 0u64;
            while Instant::now() < until && k < 200_000 {
                k += 1;
                let node = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes();
                // Every fourth claims our session with an impossible tempo.
                let (session, micros_per_beat) = match k % 4 {
                    0 => (
                        ours.unwrap_or(node),
                        [1, -5, i64::MAX][(k / 4 % 3) as usize],
                    ),
                    _ => (node, 500_000),
                };
                bytes.clear();
                let alive = Discovery {
                    kind: DiscoveryKind::Alive,
                    ttl: 255,
                    group: 0,
                    node,
                    state: PeerState {
                        timeline: Some(Timeline {
                            micros_per_beat,
                            beat_origin: 0,
                            time_origin: -4_600_000_000_000_000,
                        }),
                        session: Some(session),
                        start_stop: None,
                        measurement: None,
                    },
                };
                if encode_discovery(&alive, &mut bytes).is_ok()
                    && socket.send_to(&bytes, group).is_ok()
                {
                    sent += 1;
                }
                pace.sent(1, bytes.len());
            }
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            serde_json::json!({ "alives": sent, "our_session": ours.is_some() })
        }
        Scenario::MdnsJunk => {
            let socket = udp_on(Ipv4Addr::new(127, 0, 0, 13)).context("attacker socket")?;
            let group = SocketAddr::from((Ipv4Addr::new(224, 0, 0, 251), 5353));
            let mut junk = [0u8; 512];
            let mut x = 0x1234_5678u32;
            while Instant::now() < until {
                for b in &mut junk {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *b = x as u8;
                }
                // A plausible header (a response with answers) over junk records.
                junk[2] = 0x84;
                junk[7] = 4;
                if socket.send_to(&junk, group).is_ok() {
                    sent += 1;
                }
                pace.sent(1, junk.len());
            }
            serde_json::json!({ "datagrams": sent })
        }
    };
    Ok(result)
}

/// Silent TCP controllers and WebSockets from 8 addresses, 5 each (more than the per-address
/// and total limits); then a new TCP controller and an OSCQuery client must be served.
fn hoard(until: Instant) -> Result<serde_json::Value> {
    let osc = SocketAddr::from((Ipv4Addr::LOCALHOST, OSC_PORT));
    let query = SocketAddr::from((Ipv4Addr::LOCALHOST, OSC_PORT + 1));
    let mut held = Vec::new();
    let connect_from = |ip: Ipv4Addr, to: SocketAddr| -> Option<TcpStream> {
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .ok()?;
        let local = nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0));
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &local).ok()?;
        let stream = TcpStream::from(socket);
        let SocketAddr::V4(to) = to else {
            return None;
        };
        nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &nix::sys::socket::SockaddrIn::from(to),
        )
        .ok()?;
        Some(stream)
    };
    for a in 0..8u8 {
        let ip = Ipv4Addr::new(127, 0, 1, 10 + a);
        for _ in 0..5 {
            if let Some(s) = connect_from(ip, osc) {
                held.push(s);
            }
            if let Some(mut s) = connect_from(ip, query) {
                let _ = s.write_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                );
                held.push(s);
            }
        }
    }
    // Let the hoarders settle in (past the 5 s a WebSocket may be silent before a newcomer
    // may take its slot would be longer than the attack: they keep their slots meanwhile).
    std::thread::sleep(Duration::from_millis(500));
    // A new TCP controller: its message is answered on its connection.
    let mut tcp_answered = false;
    if let Some(mut tcp) = connect_from(Ipv4Addr::new(127, 0, 2, 1), osc) {
        let mut message = Vec::new();
        osc::encode_message(&Message::new("/lockstep/probe/tcp", vec![]), &mut message);
        let mut frame = Vec::new();
        osc::slip::encode(&message, &mut frame);
        tcp.set_read_timeout(Some(Duration::from_secs(1)))?;
        if tcp.write_all(&frame).is_ok() {
            let mut buf = [0u8; 512];
            tcp_answered = tcp.read(&mut buf).is_ok_and(|n| n > 0);
        }
    }
    // A new OSCQuery client: its GET is answered.
    let mut http_status = String::new();
    if let Some(mut http) = connect_from(Ipv4Addr::new(127, 0, 2, 2), query) {
        http.set_read_timeout(Some(Duration::from_secs(2)))?;
        if http
            .write_all(b"GET /?HOST_INFO HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_ok()
        {
            let mut buf = [0u8; 512];
            if let Ok(n) = http.read(&mut buf) {
                http_status = String::from_utf8_lossy(&buf[..n.min(12)]).into_owned();
            }
        }
    }
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let attempted = held.len();
    drop(held);
    Ok(serde_json::json!({
        "hoarders_connected": attempted,
        "new_tcp_controller_answered": tcp_answered,
        "new_oscquery_status": http_status,
    }))
}
