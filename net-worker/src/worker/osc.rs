//! OSC control for every instance in the process, on one UDP port: controllers set parameters
//! by id (real units or normalized), get errors back on `/lockstep/error`, ask for a `dump`,
//! `subscribe` to feedback, and see every change (change-only, rate-limited, never echoed to
//! the controller that is moving the parameter).
//!
//! [`OscCore`] is sans-IO (datagrams and time in, datagrams and host parameter changes out);
//! [`OscServer`] owns the socket. Address space, one instance: `/lockstep/param/<id>` (real
//! units) and `/lockstep/param/<id>/normalized`; several instances: the same under
//! `/lockstep/<name>/…` (the long form always works). `/lockstep/dump`,
//! `/lockstep/subscribe [port]`, `/lockstep/unsubscribe`.

use std::collections::{BTreeMap, VecDeque};
use std::io::ErrorKind;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};

use serde::{Deserialize, Serialize};

use crate::bridge::TransportSnapshot;
use crate::params::{HostParamChange, ParamSpec, ValueError};
use crate::proto::osc::{self, Arg, Message, Packet, pattern};
use crate::settings::OscMapping;

/// Nanoseconds on the worker's clock.
pub type Nanos = u64;

const MS: Nanos = 1_000_000;
/// Largest datagram we accept (bigger ones are refused and counted).
pub const MAX_PACKET: usize = 8192;
/// Messages per second one source may send (burst twice that).
pub const RATE_PER_SOURCE: f64 = 500.0;
/// Bundles timed further ahead than this are refused (the schedule is bounded in time).
pub const MAX_HORIZON: Nanos = 10_000 * MS;
/// At most this many timed changes wait at once (the schedule is bounded in size).
pub const MAX_SCHEDULED: usize = 1024;
/// A bundle this late or more is counted late (it still applies at once).
pub const LATE_AFTER: Nanos = MS;
/// Transport feedback (the moving beat position) goes out at most this often.
pub const TRANSPORT_INTERVAL: Nanos = 33 * MS;
/// Feedback for one parameter goes out at most this often.
pub const FEEDBACK_INTERVAL: Nanos = 20 * MS;
/// A controller that moved a parameter this recently gets no feedback for it (no echo).
pub const NO_ECHO: Nanos = 500 * MS;
/// Senders heard this recently get feedback without subscribing.
pub const RECENT_SENDER: Nanos = 30_000 * MS;
/// Most feedback destinations kept.
pub const MAX_SUBSCRIBERS: usize = 32;

/// Counters and recent activity for the status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OscStatus {
    /// The UDP port we listen on, when open.
    pub port: Option<u16>,
    /// Why the port is not what the settings asked for, or not open.
    pub errors: Vec<String>,
    /// Packets received (before any check).
    pub received: u64,
    /// Messages that set a parameter.
    pub applied: u64,
    /// Packets that did not decode.
    pub malformed: u64,
    /// Messages whose address matched nothing.
    pub unknown_address: u64,
    /// Messages with an argument of the wrong type.
    pub wrong_type: u64,
    /// Values outside a parameter's range.
    pub out_of_range: u64,
    /// Packets from addresses outside the allow-list.
    pub refused_source: u64,
    /// Packets over the per-source rate limit.
    pub rate_limited: u64,
    /// Datagrams over [`MAX_PACKET`].
    pub too_large: u64,
    /// Changes the plugin could not take (its inbox was full, or no CLAP shim under VST3).
    pub dropped_full: u64,
    /// Messages for an instance whose OSC Control parameter is off.
    pub disabled: u64,
    /// Mappings that could not be used (unknown parameter, bad address).
    pub mapping_errors: Vec<String>,
    /// Bundles whose time tag had passed (applied at once).
    pub late: u64,
    /// Bundles timed beyond the horizon, or changes refused because the schedule was full.
    pub schedule_refused: u64,
    /// Timed changes waiting now.
    pub scheduled: usize,
    /// The OSCQuery HTTP port, when serving.
    pub oscquery_port: Option<u16>,
    /// OSCQuery is reachable from the LAN (else loopback only).
    pub oscquery_lan: bool,
    /// OSCQuery requests answered / refused.
    pub oscquery_served: u64,
    /// OSCQuery requests refused (malformed, too large, timed out).
    pub oscquery_refused: u64,
    /// OSC over TCP is open on the same port number.
    pub tcp: bool,
    /// TCP controllers connected now.
    pub tcp_clients: usize,
    /// Feedback messages sent.
    pub feedback_sent: u64,
    /// Where feedback goes (subscribers and recent senders).
    pub subscribers: Vec<String>,
    /// The last few messages received, as text.
    pub last_messages: Vec<String>,
}

#[derive(Debug)]
struct Instance {
    name: String,
    specs: Vec<ParamSpec>,
    /// Current values (normalized) as the plugin last reported them.
    values: Vec<f64>,
    /// Values last sent as feedback, and when.
    fed_back: Vec<(f64, Nanos)>,
    /// Who moved each parameter last, and when (no echo).
    moved_by: Vec<Option<(SocketAddr, Nanos)>>,
    /// User mappings: the mapping, its compiled address, the parameter index, and whether
    /// feedback can go to its address (a literal address with one single-argument mapping).
    mappings: Vec<(OscMapping, pattern::Pattern, usize, bool)>,
    /// The host transport as last seen, and what was last sent of it (and when).
    transport: Option<TransportSnapshot>,
    transport_sent: Option<(TransportFeed, Nanos)>,
}

/// The transport as controllers see it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TransportFeed {
    playing: bool,
    tempo: Option<f32>,
    /// Beat within the bar (1-based, fractional), and bar (1-based).
    beat: Option<f32>,
    bar: Option<i32>,
    timesig: Option<(i32, i32)>,
}

impl TransportFeed {
    fn of(t: &TransportSnapshot) -> Self {
        let (beat, bar) = match (t.pos_beats, t.time_sig) {
            (Some(pos), Some(sig)) if sig.numerator > 0 && sig.denominator > 0 => {
                // Quarter notes → beats of the time signature's note value.
                let beats = pos * f64::from(sig.denominator) / 4.0;
                let per_bar = f64::from(sig.numerator);
                let bar = (beats / per_bar).floor();
                (
                    Some((beats - bar * per_bar + 1.0) as f32),
                    Some(bar as i32 + 1),
                )
            }
            (Some(pos), _) => (Some(pos as f32 + 1.0), None),
            _ => (None, None),
        };
        Self {
            playing: t.playing,
            tempo: t.tempo_bpm.map(|x| x as f32),
            beat,
            bar: t.bar_number.map(|b| b + 1).or(bar),
            timesig: t.time_sig.map(|s| (s.numerator, s.denominator)),
        }
    }

    /// The messages for the fields that differ from `old` (all of them without one).
    fn messages(&self, prefix: &str, old: Option<&Self>) -> Vec<Message> {
        let mut out = Vec::new();
        let address = |leaf: &str| format!("{prefix}/transport/{leaf}");
        if old.is_none_or(|o| o.playing != self.playing) {
            out.push(Message::new(
                address("playing"),
                vec![Arg::Int(i32::from(self.playing))],
            ));
        }
        if let Some(tempo) = self.tempo
            && old.is_none_or(|o| o.tempo != self.tempo)
        {
            out.push(Message::new(address("tempo"), vec![Arg::Float(tempo)]));
        }
        if let Some(beat) = self.beat
            && old.is_none_or(|o| o.beat != self.beat)
        {
            out.push(Message::new(address("beat"), vec![Arg::Float(beat)]));
        }
        if let Some(bar) = self.bar
            && old.is_none_or(|o| o.bar != self.bar)
        {
            out.push(Message::new(address("bar"), vec![Arg::Int(bar)]));
        }
        if let Some((n, d)) = self.timesig
            && old.is_none_or(|o| o.timesig != self.timesig)
        {
            out.push(Message::new(
                address("timesig"),
                vec![Arg::Int(n), Arg::Int(d)],
            ));
        }
        out
    }
}

/// The process's Link session as controllers see it (`/lockstep/link/...`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkFeed {
    /// Peers in our session.
    pub peers: i32,
    /// Session tempo, BPM.
    pub tempo: f32,
    /// Phase in the quantum (0..quantum), beats.
    pub phase: f32,
    /// Session playing.
    pub playing: bool,
    /// The DAW's beat minus the session's, ms (DAW leads, while playing).
    pub offset_ms: Option<f32>,
}

impl LinkFeed {
    /// The messages for the fields that differ from `old` (all of them without one).
    fn messages(&self, old: Option<&Self>) -> Vec<Message> {
        let mut out = Vec::new();
        let address = |leaf: &str| format!("/lockstep/link/{leaf}");
        if old.is_none_or(|o| o.peers != self.peers) {
            out.push(Message::new(address("peers"), vec![Arg::Int(self.peers)]));
        }
        if old.is_none_or(|o| o.tempo != self.tempo) {
            out.push(Message::new(address("tempo"), vec![Arg::Float(self.tempo)]));
        }
        if old.is_none_or(|o| o.phase != self.phase) {
            out.push(Message::new(address("phase"), vec![Arg::Float(self.phase)]));
        }
        if old.is_none_or(|o| o.playing != self.playing) {
            out.push(Message::new(
                address("playing"),
                vec![Arg::Int(i32::from(self.playing))],
            ));
        }
        if let Some(offset) = self.offset_ms
            && old.is_none_or(|o| o.offset_ms != self.offset_ms)
        {
            out.push(Message::new(address("offset"), vec![Arg::Float(offset)]));
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Nanos,
}

/// The sans-IO OSC bridge.
#[derive(Debug)]
pub struct OscCore {
    instances: BTreeMap<u64, Instance>,
    cache: pattern::Cache,
    /// Subscribers (explicit) with their feedback address.
    subscribers: Vec<SocketAddr>,
    /// Recent senders and when they were heard.
    recent: Vec<(SocketAddr, Nanos)>,
    buckets: BTreeMap<IpAddr, Bucket>,
    status: OscStatus,
    last_messages: VecDeque<String>,
    /// Unix time minus host time, ns (time tags are wall-clock NTP times).
    wall_offset_ns: f64,
    /// The user's allow-list (empty: [`allowed_by_default`]).
    allow: Vec<Subnet>,
    /// The due time of the bundle being handled (None = at once).
    due: Option<Nanos>,
    /// Link as last reported, and what was last sent of it (and when).
    link: Option<LinkFeed>,
    link_sent: Option<(LinkFeed, Nanos)>,
    /// The host application takes transport requests (Lockstep's headless runner does; no
    /// DAW can).
    transport_control: bool,
    /// Timed changes: (due host time, instance, change), kept sorted by due time.
    scheduled: VecDeque<(Nanos, u64, HostParamChange)>,
}

/// A request to move the host's transport (only a host that asked for them gets them: a
/// plugin cannot drive a DAW's transport).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportRequest {
    /// Start playing.
    Play,
    /// Stop.
    Stop,
    /// Set the tempo, BPM.
    Tempo(f64),
    /// Move the play position, quarter notes from the song start.
    Locate(f64),
}

/// A timed change: (due host time, instance, change).
pub type TimedChange = (Nanos, u64, HostParamChange);

/// What [`OscCore`] wants done.
#[derive(Debug, Default)]
pub struct Output {
    /// Datagrams to send.
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
    /// Parameter changes for instances' hosts.
    pub changes: Vec<(u64, HostParamChange)>,
    /// Transport requests for the host application.
    pub transport: Vec<TransportRequest>,
}

/// One allow-list entry: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub ip: IpAddr,
    /// Prefix length.
    pub bits: u8,
}

impl Subnet {
    /// Parse `10.0.0.0/8`, `192.168.1.7`, `::1`, `fe80::/10`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ip, bits) = match text.trim().split_once('/') {
            Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Self { ip, bits })
    }

    /// Does `ip` fall in this subnet? (IPv4-mapped IPv6 addresses count as IPv4.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, width) = match (self.ip, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (
                u128::from(u32::from(a)) << 96,
                u128::from(u32::from(b)) << 96,
                32,
            ),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let bits = u32::from(self.bits.min(width));
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - bits)
        };
        a & mask == b & mask
    }
}

/// Loopback, private, link-local and unique-local addresses: the default allow-list.
pub fn allowed_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local())
        }
    }
}

fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_owned();
    if s.is_empty() { "lockstep".into() } else { s }
}

impl Default for OscCore {
    fn default() -> Self {
        Self::new()
    }
}

impl OscCore {
    /// No instances yet.
    pub fn new() -> Self {
        Self {
            instances: BTreeMap::new(),
            cache: pattern::Cache::new(64),
            subscribers: Vec::new(),
            recent: Vec::new(),
            buckets: BTreeMap::new(),
            status: OscStatus::default(),
            last_messages: VecDeque::new(),
            wall_offset_ns: 0.0,
            allow: Vec::new(),
            due: None,
            link: None,
            link_sent: None,
            transport_control: false,
            scheduled: VecDeque::new(),
        }
    }

    /// Register instance `id` called `name` with its parameters (at their defaults until it
    /// reports values).
    pub fn add_instance(&mut self, id: u64, name: &str, specs: Vec<ParamSpec>) {
        let base = slug(name);
        let taken = |n: &str, me: &BTreeMap<u64, Instance>| {
            me.iter().any(|(other, i)| *other != id && i.name == n)
        };
        let name = (1..)
            .map(|k| {
                if k == 1 {
                    base.clone()
                } else {
                    format!("{base}-{k}")
                }
            })
            .find(|n| !taken(n, &self.instances))
            .unwrap_or(base);
        let n = specs.len();
        let values = specs.iter().map(|s| s.default).collect();
        self.instances.insert(
            id,
            Instance {
                name,
                specs,
                values,
                fed_back: vec![(f64::NAN, 0); n],
                moved_by: vec![None; n],
                mappings: Vec::new(),
                transport: None,
                transport_sent: None,
            },
        );
    }

    /// Forget instance `id`.
    pub fn remove_instance(&mut self, id: u64) {
        self.instances.remove(&id);
    }

    /// True if no instance is registered.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The plugin reports parameter `index` of instance `id` is now `normalized`.
    pub fn set_current(&mut self, id: u64, index: usize, normalized: f64) {
        if let Some(v) = self
            .instances
            .get_mut(&id)
            .and_then(|i| i.values.get_mut(index))
        {
            *v = normalized;
        }
    }

    /// The value of switch parameter `param` (e.g. `osc_on`) of instance `id`, on if unknown.
    fn switch_on(&self, id: u64, param: &str) -> bool {
        self.instances.get(&id).is_none_or(|i| {
            i.specs
                .iter()
                .position(|s| s.id == param)
                .is_none_or(|k| i.values[k] >= 0.5)
        })
    }

    /// Replace instance `id`'s user mappings.
    pub fn set_mappings(&mut self, id: u64, mappings: &[OscMapping]) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        self.status.mapping_errors.clear();
        instance.mappings.clear();
        for m in mappings {
            let Some(index) = instance.specs.iter().position(|s| s.id == m.param) else {
                self.status
                    .mapping_errors
                    .push(format!("{} → {}: no such parameter", m.address, m.param));
                continue;
            };
            match pattern::Pattern::compile(&m.address) {
                Ok(p) => {
                    let literal =
                        !m.address.contains(['*', '?', '[', '{']) && !m.address.contains("//");
                    let alone = mappings.iter().filter(|o| o.address == m.address).count() == 1;
                    instance
                        .mappings
                        .push((m.clone(), p, index, literal && alone && m.arg == 0));
                }
                Err(e) => self
                    .status
                    .mapping_errors
                    .push(format!("{} → {}: {e}", m.address, m.param)),
            }
        }
    }

    /// The host transport instance `id` saw at its latest block.
    pub fn set_transport(&mut self, id: u64, snapshot: TransportSnapshot) {
        if let Some(i) = self.instances.get_mut(&id) {
            i.transport = Some(snapshot);
        }
    }

    /// The address prefix of an instance: short form when it is the only one.
    fn prefix(&self, id: u64) -> String {
        match self.instances.get(&id) {
            Some(_) if self.instances.len() == 1 => "/lockstep".into(),
            Some(i) => format!("/lockstep/{}", i.name),
            None => String::new(),
        }
    }

    /// Set who may send OSC (entries that do not parse are listed in the status); empty =
    /// loopback and private ranges.
    pub fn set_allow_list(&mut self, entries: &[String]) {
        self.allow.clear();
        self.status
            .errors
            .retain(|e| !e.starts_with("OSC allow-list"));
        for e in entries {
            match Subnet::parse(e) {
                Some(s) => self.allow.push(s),
                None => self
                    .status
                    .errors
                    .push(format!("OSC allow-list: {e:?} is not an address or subnet")),
            }
        }
    }

    /// The process's Link session now (None: Link is off).
    pub fn set_link(&mut self, feed: Option<LinkFeed>) {
        self.link = feed;
        if feed.is_none() {
            self.link_sent = None;
        }
    }

    /// Whether the host application takes transport requests.
    pub fn set_transport_control(&mut self, on: bool) {
        self.transport_control = on;
    }

    /// The wall clock's offset from the host clock (Unix ns − host ns), for time tags.
    pub fn set_wall_offset(&mut self, unix_minus_host_ns: f64) {
        self.wall_offset_ns = unix_minus_host_ns;
    }

    /// Host time of an NTP time tag.
    fn host_time_of(&self, tag: u64) -> f64 {
        osc::timetag_to_unix(tag) * 1e9 - self.wall_offset_ns
    }

    /// A change for instance `id`: at once, or scheduled for the bundle being handled.
    fn emit(&mut self, id: u64, change: HostParamChange, out: &mut Output) {
        match self.due {
            None => out.changes.push((id, change)),
            Some(due) => {
                if self.scheduled.len() >= MAX_SCHEDULED {
                    self.status.schedule_refused += 1;
                    return;
                }
                let at = self.scheduled.partition_point(|(d, _, _)| *d <= due);
                self.scheduled.insert(at, (due, id, change));
            }
        }
    }

    /// Timed changes due within `lookahead` of `now`, with their due host time.
    pub fn take_due(&mut self, now: Nanos, lookahead: Nanos) -> Vec<TimedChange> {
        let n = self
            .scheduled
            .partition_point(|(d, _, _)| *d <= now + lookahead);
        self.scheduled.drain(..n).collect()
    }

    /// Status with counters.
    pub fn status(&self) -> OscStatus {
        let mut s = self.status.clone();
        s.scheduled = self.scheduled.len();
        s.subscribers = self
            .subscribers
            .iter()
            .map(ToString::to_string)
            .chain(
                self.recent
                    .iter()
                    .map(|(a, _)| format!("{a} (recent sender)")),
            )
            .collect();
        s.last_messages = self.last_messages.iter().cloned().collect();
        s
    }

    fn error(&mut self, to: SocketAddr, address: &str, why: &str, out: &mut Output) {
        let mut bytes = Vec::new();
        osc::encode_message(
            &Message::new(
                "/lockstep/error",
                vec![Arg::Str(address.to_owned()), Arg::Str(why.to_owned())],
            ),
            &mut bytes,
        );
        out.datagrams.push((to, bytes));
    }

    fn allow_rate(&mut self, now: Nanos, ip: IpAddr) -> bool {
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: 2.0 * RATE_PER_SOURCE,
            at: now,
        });
        let elapsed = now.saturating_sub(bucket.at) as f64 / 1e9;
        bucket.tokens = (bucket.tokens + elapsed * RATE_PER_SOURCE).min(2.0 * RATE_PER_SOURCE);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A datagram from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut Output,
    ) {
        self.status.received += 1;
        let allowed = if self.allow.is_empty() {
            allowed_by_default(from.ip())
        } else {
            self.allow.iter().any(|s| s.contains(from.ip()))
        };
        if !allowed {
            self.status.refused_source += 1;
            return;
        }
        if bytes.len() > MAX_PACKET {
            self.status.too_large += 1;
            return;
        }
        if !self.allow_rate(now, from.ip()) {
            self.status.rate_limited += 1;
            return;
        }
        match osc::decode(bytes) {
            Ok(packet) => {
                self.remember_sender(now, from);
                self.handle_packet(now, from, &packet, out);
            }
            Err(e) => {
                self.status.malformed += 1;
                self.error(from, "", &format!("malformed packet: {e}"), out);
            }
        }
    }

    fn remember_sender(&mut self, now: Nanos, from: SocketAddr) {
        self.recent
            .retain(|(a, t)| *a != from && now < t + RECENT_SENDER);
        if self.recent.len() < MAX_SUBSCRIBERS {
            self.recent.push((from, now));
        }
    }

    fn handle_packet(&mut self, now: Nanos, from: SocketAddr, packet: &Packet, out: &mut Output) {
        match packet {
            // A bundle's messages apply together and in order: at once ("immediately", or a
            // time that has passed: counted late), or at their time tag (a nested bundle
            // inherits "immediately" from its parent).
            Packet::Bundle { time, elements } => {
                let outer = self.due;
                if *time != osc::IMMEDIATELY {
                    let due = self.host_time_of(*time);
                    if due <= now as f64 {
                        if now as f64 - due > LATE_AFTER as f64 {
                            self.status.late += 1;
                        }
                        self.due = None;
                    } else if due - now as f64 > MAX_HORIZON as f64 {
                        self.status.schedule_refused += 1;
                        self.error(
                            from,
                            "#bundle",
                            "time tag more than 10 s ahead: refused",
                            out,
                        );
                        return;
                    } else {
                        self.due = Some(due as Nanos);
                    }
                }
                for e in elements {
                    self.handle_packet(now, from, e, out);
                }
                self.due = outer;
            }
            Packet::Message(m) => self.handle_message(now, from, m, out),
        }
    }

    fn handle_message(&mut self, now: Nanos, from: SocketAddr, m: &Message, out: &mut Output) {
        if self.last_messages.len() == 8 {
            self.last_messages.pop_front();
        }
        let args: Vec<String> = m.args.iter().map(|a| format!("{a:?}")).collect();
        self.last_messages
            .push_back(format!("{} {} from {from}", m.address, args.join(" ")));
        match m.address.as_str() {
            "/lockstep/dump" => return self.dump(from, out),
            "/lockstep/subscribe" => {
                let port = match m.args.first() {
                    Some(Arg::Int(p)) if (1..=65535).contains(p) => *p as u16,
                    _ => from.port(),
                };
                let to = SocketAddr::new(from.ip(), port);
                if !self.subscribers.contains(&to) && self.subscribers.len() < MAX_SUBSCRIBERS {
                    self.subscribers.push(to);
                }
                return self.dump(to, out);
            }
            "/lockstep/transport/play"
            | "/lockstep/transport/stop"
            | "/lockstep/transport/tempo"
            | "/lockstep/transport/locate" => {
                return self.transport_request(from, m, out);
            }
            "/lockstep/unsubscribe" => {
                self.subscribers.retain(|a| a.ip() != from.ip());
                self.recent.retain(|(a, _)| *a != from);
                return;
            }
            _ => {}
        }
        if self.handle_mapped(now, from, m, out) {
            return;
        }
        let pattern = match self.cache.get(&m.address) {
            Ok(p) => p.clone(),
            Err(e) => {
                self.status.unknown_address += 1;
                return self.error(from, &m.address, &format!("bad address pattern: {e}"), out);
            }
        };
        let mut targets = Vec::new();
        let ids: Vec<u64> = self.instances.keys().copied().collect();
        for id in ids {
            let prefixes = [
                self.prefix(id),
                format!("/lockstep/{}", self.instances[&id].name),
            ];
            for (index, spec) in self.instances[&id].specs.iter().enumerate() {
                for prefix in &prefixes {
                    let real = format!("{prefix}/param/{}", spec.id);
                    let normalized = format!("{real}/normalized");
                    if pattern.matches(&real) {
                        targets.push((id, index, false));
                        break;
                    }
                    if pattern.matches(&normalized) {
                        targets.push((id, index, true));
                        break;
                    }
                }
            }
        }
        if targets.is_empty() {
            self.status.unknown_address += 1;
            return self.error(from, &m.address, "no such address", out);
        }
        let Some(arg) = m.args.first() else {
            self.status.wrong_type += 1;
            return self.error(from, &m.address, "a value is needed", out);
        };
        for (id, index, normalized) in targets {
            if !self.switch_on(id, "osc_on") {
                self.status.disabled += 1;
                self.error(
                    from,
                    &m.address,
                    "OSC Control is switched off for this instance",
                    out,
                );
                continue;
            }
            let spec = &self.instances[&id].specs[index];
            let value = match (arg, normalized) {
                (Arg::Str(s) | Arg::Symbol(s), false) => spec.normalize_name(s),
                (a, true) => match a.as_f64() {
                    Some(v) if (0.0..=1.0).contains(&v) => Ok(v),
                    Some(v) => Err(ValueError::OutOfRange(format!("{v} is outside 0..1"))),
                    None => Err(ValueError::WrongType(format!(
                        "type '{}' is not a number",
                        a.tag()
                    ))),
                },
                (a, false) => match a.as_f64() {
                    Some(v) => spec.normalize(v),
                    None => Err(ValueError::WrongType(format!(
                        "type '{}' is not a number, bool or name",
                        a.tag()
                    ))),
                },
            };
            match value {
                Ok(v) => {
                    let change = HostParamChange {
                        clap_id: spec.clap_id,
                        value: spec.clap_value(v),
                        at_sample: None,
                    };
                    let instance = self.instances.get_mut(&id).expect("present");
                    instance.moved_by[index] = Some((from, now));
                    self.emit(id, change, out);
                    self.status.applied += 1;
                }
                Err(ValueError::OutOfRange(why)) => {
                    self.status.out_of_range += 1;
                    self.error(from, &m.address, &why, out);
                }
                Err(ValueError::WrongType(why)) => {
                    self.status.wrong_type += 1;
                    self.error(from, &m.address, &why, out);
                }
            }
        }
    }

    fn transport_request(&mut self, from: SocketAddr, m: &Message, out: &mut Output) {
        if !self.transport_control {
            self.status.disabled += 1;
            return self.error(
                from,
                &m.address,
                "a plugin cannot move the DAW's transport: use the DAW's own remote control",
                out,
            );
        }
        let number = m.args.first().and_then(Arg::as_f64);
        let request = match (m.address.rsplit('/').next().unwrap_or_default(), number) {
            ("play", _) => TransportRequest::Play,
            ("stop", _) => TransportRequest::Stop,
            ("tempo", Some(bpm)) if (20.0..=999.0).contains(&bpm) => TransportRequest::Tempo(bpm),
            ("locate", Some(beats)) if beats >= 0.0 && beats.is_finite() => {
                TransportRequest::Locate(beats)
            }
            ("tempo" | "locate", Some(v)) => {
                self.status.out_of_range += 1;
                return self.error(from, &m.address, &format!("{v} is out of range"), out);
            }
            _ => {
                self.status.wrong_type += 1;
                return self.error(from, &m.address, "a number is needed", out);
            }
        };
        self.status.applied += 1;
        out.transport.push(request);
    }

    /// Apply user mappings matching `m`'s address; true if any did.
    fn handle_mapped(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        m: &Message,
        out: &mut Output,
    ) -> bool {
        let mut hits = Vec::new();
        for (&id, instance) in &self.instances {
            for (mapping, pattern, index, _) in &instance.mappings {
                if pattern.matches(&m.address) {
                    hits.push((id, *index, mapping.clone()));
                }
            }
        }
        if hits.is_empty() {
            return false;
        }
        for (id, index, mapping) in hits {
            if !self.switch_on(id, "osc_on") {
                self.status.disabled += 1;
                self.error(
                    from,
                    &m.address,
                    "OSC Control is switched off for this instance",
                    out,
                );
                continue;
            }
            let Some(value) = m.args.get(mapping.arg).and_then(Arg::as_f64) else {
                self.status.wrong_type += 1;
                self.error(
                    from,
                    &m.address,
                    &format!(
                        "mapped to {}: argument {} is not a number",
                        mapping.param,
                        mapping.arg + 1
                    ),
                    out,
                );
                continue;
            };
            let normalized = mapping.to_normalized(value);
            let instance = self.instances.get_mut(&id).expect("present");
            let spec = &instance.specs[index];
            // Discrete parameters land on a step.
            let normalized = spec.normalize(spec.plain(normalized)).unwrap_or(normalized);
            let change = HostParamChange {
                clap_id: spec.clap_id,
                value: spec.clap_value(normalized),
                at_sample: None,
            };
            instance.moved_by[index] = Some((from, now));
            self.emit(id, change, out);
            self.status.applied += 1;
        }
        true
    }

    /// The plugin's inbox for instance `id` was full: count it.
    pub fn dropped(&mut self, n: u64) {
        self.status.dropped_full += n;
    }

    fn value_messages(&self, id: u64, index: usize) -> [Message; 2] {
        let instance = &self.instances[&id];
        let spec = &instance.specs[index];
        let v = instance.values[index];
        let real = format!("{}/param/{}", self.prefix(id), spec.id);
        [
            Message::new(real.clone(), vec![Arg::Float(spec.plain(v) as f32)]),
            Message::new(format!("{real}/normalized"), vec![Arg::Float(v as f32)]),
        ]
    }

    fn dump(&mut self, to: SocketAddr, out: &mut Output) {
        let mut elements = Vec::new();
        for (&id, instance) in &self.instances {
            for index in 0..instance.specs.len() {
                elements.extend(self.value_messages(id, index).map(Packet::Message));
            }
        }
        // One bundle per 32 messages keeps datagrams well under the usual MTU-safe size.
        for chunk in elements.chunks(32) {
            let mut bytes = Vec::new();
            osc::encode(
                &Packet::Bundle {
                    time: osc::IMMEDIATELY,
                    elements: chunk.to_vec(),
                },
                &mut bytes,
            );
            out.datagrams.push((to, bytes));
        }
    }

    /// Change-only feedback, at most every [`FEEDBACK_INTERVAL`] per parameter, to subscribers
    /// and recent senders, except the controller moving that parameter.
    pub fn feedback(&mut self, now: Nanos, out: &mut Output) {
        self.recent.retain(|(_, t)| now < t + RECENT_SENDER);
        let mut destinations: Vec<SocketAddr> = self.subscribers.clone();
        for (a, _) in &self.recent {
            if !destinations.contains(a) {
                destinations.push(*a);
            }
        }
        if destinations.is_empty() {
            return;
        }
        self.link_feedback(now, &destinations, out);
        let ids: Vec<u64> = self.instances.keys().copied().collect();
        for id in ids {
            if !self.switch_on(id, "osc_fb") {
                continue;
            }
            self.transport_feedback(now, id, &destinations, out);
            for index in 0..self.instances[&id].specs.len() {
                let instance = &self.instances[&id];
                let (last, at) = instance.fed_back[index];
                let v = instance.values[index];
                if last == v || now < at + FEEDBACK_INTERVAL {
                    continue;
                }
                let mover = instance.moved_by[index].filter(|(_, t)| now < t + NO_ECHO);
                let mut messages = self.value_messages(id, index).to_vec();
                for (mapping, _, mapped, feedback) in &instance.mappings {
                    if *mapped == index && *feedback {
                        messages.push(Message::new(
                            mapping.address.clone(),
                            vec![Arg::Float(mapping.to_controller(v) as f32)],
                        ));
                    }
                }
                let encoded: Vec<Vec<u8>> = messages
                    .iter()
                    .map(|m| {
                        let mut bytes = Vec::new();
                        osc::encode_message(m, &mut bytes);
                        bytes
                    })
                    .collect();
                for to in &destinations {
                    if mover.is_some_and(|(a, _)| a == *to) {
                        continue;
                    }
                    for bytes in &encoded {
                        out.datagrams.push((*to, bytes.clone()));
                        self.status.feedback_sent += 1;
                    }
                }
                if let Some(instance) = self.instances.get_mut(&id) {
                    instance.fed_back[index] = (v, now);
                }
            }
        }
    }
}

impl OscCore {
    /// `messages` as one immediate bundle, encoded once, to every destination.
    fn send_bundle(
        &mut self,
        messages: Vec<Message>,
        destinations: &[SocketAddr],
        out: &mut Output,
    ) {
        if messages.is_empty() {
            return;
        }
        let mut bytes = Vec::new();
        osc::encode(
            &Packet::Bundle {
                time: osc::IMMEDIATELY,
                elements: messages.into_iter().map(Packet::Message).collect(),
            },
            &mut bytes,
        );
        for to in destinations {
            out.datagrams.push((*to, bytes.clone()));
            self.status.feedback_sent += 1;
        }
    }

    /// Link's fields to everyone who takes feedback: change-only, at most every
    /// [`TRANSPORT_INTERVAL`] (the phase moves all the time).
    fn link_feedback(&mut self, now: Nanos, destinations: &[SocketAddr], out: &mut Output) {
        let Some(feed) = self.link else {
            return;
        };
        let old = self.link_sent;
        if old.is_some_and(|(o, at)| o == feed || now < at + TRANSPORT_INTERVAL) {
            return;
        }
        let messages = feed.messages(old.as_ref().map(|(o, _)| o));
        self.link_sent = Some((feed, now));
        self.send_bundle(messages, destinations, out);
    }

    fn transport_feedback(
        &mut self,
        now: Nanos,
        id: u64,
        destinations: &[SocketAddr],
        out: &mut Output,
    ) {
        let prefix = self.prefix(id);
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        let Some(snapshot) = instance.transport else {
            return;
        };
        let feed = TransportFeed::of(&snapshot);
        let old = instance.transport_sent;
        if old.is_some_and(|(o, at)| o == feed || now < at + TRANSPORT_INTERVAL) {
            return;
        }
        let messages = feed.messages(&prefix, old.as_ref().map(|(o, _)| o));
        instance.transport_sent = Some((feed, now));
        self.send_bundle(messages, destinations, out);
    }
}

impl OscCore {
    /// The current value of `path` (a parameter in real units or normalized, or a transport
    /// field) as the OSC message a controller would receive.
    pub fn value_message(&self, path: &str) -> Option<Message> {
        for (&id, instance) in &self.instances {
            let prefix = self.prefix(id);
            for (index, spec) in instance.specs.iter().enumerate() {
                let real = format!("{prefix}/param/{}", spec.id);
                if path == real || path == format!("{real}/normalized") {
                    let [a, b] = self.value_messages(id, index);
                    return Some(if path == real { a } else { b });
                }
            }
            let feed = instance.transport.as_ref().map(TransportFeed::of)?;
            if let Some(m) = feed
                .messages(&prefix, None)
                .into_iter()
                .find(|m| m.address == path)
            {
                return Some(m);
            }
        }
        None
    }

    /// The OSCQuery namespace: every parameter (real units and normalized) and the transport
    /// feed, with type, range, unit, access, description and current value.
    pub fn namespace(&self) -> serde_json::Value {
        use crate::params::ParamKind;
        use serde_json::{Map, Value, json};
        fn container(path: &str, contents: Map<String, Value>) -> Value {
            json!({ "FULL_PATH": path, "CONTENTS": contents })
        }
        let mut lockstep = Map::new();
        let several = self.instances.len() > 1;
        for (&id, instance) in &self.instances {
            let prefix = self.prefix(id);
            let mut params = Map::new();
            for (index, spec) in instance.specs.iter().enumerate() {
                let v = instance.values[index];
                let path = format!("{prefix}/param/{}", spec.id);
                let plain = spec.plain(v);
                let (ty, range, value, unit) = match &spec.kind {
                    ParamKind::Float { min, max, unit } => (
                        "f",
                        json!([{ "MIN": min, "MAX": max }]),
                        json!([plain]),
                        match unit.trim() {
                            "ms" => json!(["time.ms"]),
                            _ => Value::Null,
                        },
                    ),
                    ParamKind::Int { min, max } => (
                        "i",
                        json!([{ "MIN": min, "MAX": max }]),
                        json!([plain as i64]),
                        Value::Null,
                    ),
                    ParamKind::Bool => ("T", Value::Null, json!([plain >= 0.5]), Value::Null),
                    ParamKind::Enum { names } => (
                        "s",
                        json!([{ "VALS": names }]),
                        json!([names.get(plain as usize).cloned().unwrap_or_default()]),
                        Value::Null,
                    ),
                };
                let mut node = json!({
                    "FULL_PATH": path,
                    "TYPE": ty,
                    "ACCESS": 3,
                    "VALUE": value,
                    "DESCRIPTION": spec.name,
                    "CONTENTS": {
                        "normalized": {
                            "FULL_PATH": format!("{path}/normalized"),
                            "TYPE": "f",
                            "ACCESS": 3,
                            "RANGE": [{ "MIN": 0.0, "MAX": 1.0 }],
                            "VALUE": [v],
                            "DESCRIPTION": format!("{}, normalized 0..1", spec.name),
                        }
                    }
                });
                if !range.is_null() {
                    node["RANGE"] = range;
                }
                if !unit.is_null() {
                    node["UNIT"] = unit;
                }
                params.insert(spec.id.clone(), node);
            }
            let mut transport = Map::new();
            let feed = instance.transport.as_ref().map(TransportFeed::of);
            for (leaf, ty, value, description) in [
                (
                    "playing",
                    "i",
                    json!([feed.map(|f| i32::from(f.playing))]),
                    "1 while the DAW plays",
                ),
                ("tempo", "f", json!([feed.and_then(|f| f.tempo)]), "BPM"),
                (
                    "beat",
                    "f",
                    json!([feed.and_then(|f| f.beat)]),
                    "beat in the bar, from 1",
                ),
                ("bar", "i", json!([feed.and_then(|f| f.bar)]), "bar, from 1"),
                (
                    "timesig",
                    "ii",
                    json!(feed.and_then(|f| f.timesig).map_or(
                        vec![Value::Null, Value::Null],
                        |(n, d)| vec![json!(n), json!(d)]
                    )),
                    "time signature",
                ),
            ] {
                let path = format!("{prefix}/transport/{leaf}");
                transport.insert(
                    leaf.into(),
                    json!({
                        "FULL_PATH": path, "TYPE": ty, "ACCESS": 1, "VALUE": value,
                        "DESCRIPTION": description
                    }),
                );
            }
            let mut children = Map::new();
            children.insert(
                "param".into(),
                container(&format!("{prefix}/param"), params),
            );
            children.insert(
                "transport".into(),
                container(&format!("{prefix}/transport"), transport),
            );
            if several {
                lockstep.insert(instance.name.clone(), container(&prefix, children));
            } else {
                lockstep.extend(children);
            }
        }
        for (leaf, description) in [
            ("dump", "send every value to the sender"),
            ("subscribe", "feedback to the sender (or to the port given)"),
            ("unsubscribe", "no more feedback"),
        ] {
            lockstep.insert(
                leaf.into(),
                json!({
                    "FULL_PATH": format!("/lockstep/{leaf}"),
                    "ACCESS": 2,
                    "DESCRIPTION": description
                }),
            );
        }
        let mut root = Map::new();
        root.insert("lockstep".into(), container("/lockstep", lockstep));
        container("/", root)
    }
}

/// The socket side: one UDP port for the process.
#[derive(Debug)]
pub struct OscServer {
    socket: UdpSocket,
    port: u16,
    /// OSC over TCP on the same port number (1.0 size-prefixed or 1.1 SLIP, told apart by the
    /// first byte a client sends), if it could be opened.
    tcp: Option<TcpListener>,
    streams: Vec<Stream>,
    /// The bridge.
    pub core: OscCore,
    errors: Vec<String>,
    buf: Vec<u8>,
    /// Transport requests from the last poll.
    pub transport: Vec<TransportRequest>,
}

/// Most TCP controllers at once.
pub const MAX_STREAMS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Slip,
    SizePrefixed,
}

/// One TCP controller.
#[derive(Debug)]
struct Stream {
    stream: TcpStream,
    peer: SocketAddr,
    framing: Option<Framing>,
    slip: osc::slip::Decoder,
    sized: osc::size_prefixed::Decoder,
}

impl OscServer {
    /// Listen on `port`, or the next free one of the 16 after it (said in the status).
    pub fn open(port: u16) -> Result<Self, String> {
        let mut errors = Vec::new();
        let mut bound = None;
        for candidate in port..port.saturating_add(16) {
            match UdpSocket::bind(("0.0.0.0", candidate)) {
                Ok(s) => {
                    bound = Some((s, candidate));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
                Err(e) => return Err(format!("cannot open OSC port {candidate}: {e}")),
            }
        }
        let (socket, actual) =
            bound.ok_or_else(|| format!("OSC ports {port}..{} are all taken", port + 15))?;
        if actual != port {
            errors.push(format!(
                "OSC port {port} is taken (another program or instance); listening on {actual}"
            ));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("OSC socket: {e}"))?;
        let tcp = TcpListener::bind(("0.0.0.0", actual)).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        });
        let tcp = match tcp {
            Ok(l) => Some(l),
            Err(e) => {
                errors.push(format!("OSC over TCP on port {actual} is unavailable: {e}"));
                None
            }
        };
        Ok(Self {
            socket,
            port: actual,
            tcp,
            streams: Vec::new(),
            core: OscCore::new(),
            errors,
            buf: vec![0; MAX_PACKET + 1],
            transport: Vec::new(),
        })
    }

    /// The port we listen on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Receive everything waiting, run feedback, send what is due; return host changes (at
    /// once) and timed ones due within `lookahead` (with their due host time).
    pub fn poll(
        &mut self,
        now: Nanos,
        lookahead: Nanos,
    ) -> (Vec<(u64, HostParamChange)>, Vec<TimedChange>) {
        let mut out = Output::default();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_nanos() as f64);
        self.core
            .set_wall_offset(unix - crate::bridge::host_time_ns() as f64);
        loop {
            match self.socket.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    // A datagram that filled the whole buffer was longer than MAX_PACKET.
                    let bytes = if len > MAX_PACKET {
                        &self.buf[..MAX_PACKET + 1]
                    } else {
                        &self.buf[..len]
                    };
                    self.core.handle_datagram(now, from, bytes, &mut out);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends to gone controllers: ignore and go on.
                Err(_) => continue,
            }
        }
        self.poll_streams(now, &mut out);
        self.core.feedback(now, &mut out);
        for (to, bytes) in &out.datagrams {
            // Replies to a TCP controller go back on its connection, in its framing.
            match self.streams.iter_mut().find(|s| s.peer == *to) {
                Some(s) => {
                    let mut framed = Vec::with_capacity(bytes.len() + 8);
                    match s.framing {
                        Some(Framing::Slip) => osc::slip::encode(bytes, &mut framed),
                        _ => osc::size_prefixed::encode(bytes, &mut framed),
                    }
                    // Non-blocking: a controller that does not read loses feedback, never
                    // stalls the worker.
                    let _ = s.stream.write_all(&framed);
                }
                None => {
                    let _ = self.socket.send_to(bytes, to);
                }
            }
        }
        self.transport = out.transport;
        (out.changes, self.core.take_due(now, lookahead))
    }

    /// Accept TCP controllers and take in their frames.
    fn poll_streams(&mut self, now: Nanos, out: &mut Output) {
        if let Some(listener) = &self.tcp {
            while self.streams.len() < MAX_STREAMS {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if stream.set_nonblocking(true).is_ok() {
                            let _ = stream.set_nodelay(true);
                            self.streams.push(Stream {
                                stream,
                                peer,
                                framing: None,
                                slip: osc::slip::Decoder::new(MAX_PACKET),
                                sized: osc::size_prefixed::Decoder::new(MAX_PACKET),
                            });
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        let core = &mut self.core;
        let buf = &mut self.buf;
        self.streams.retain_mut(|s| {
            loop {
                let n = match s.stream.read(buf) {
                    Ok(0) => return false,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                };
                let bytes = &buf[..n];
                let framing = *s.framing.get_or_insert(if bytes[0] == 0xC0 {
                    Framing::Slip
                } else {
                    Framing::SizePrefixed
                });
                let peer = s.peer;
                let mut frame = |f: &[u8]| core.handle_datagram(now, peer, f, out);
                match framing {
                    Framing::Slip => s.slip.feed(bytes, &mut frame),
                    Framing::SizePrefixed => {
                        if s.sized.feed(bytes, &mut frame).is_err() {
                            // A frame over the limit cannot be skipped on a stream.
                            core.status.too_large += 1;
                            return false;
                        }
                    }
                }
            }
        });
    }

    /// Status.
    pub fn status(&self) -> OscStatus {
        let mut s = self.core.status();
        s.port = Some(self.port);
        s.errors.extend(self.errors.iter().cloned());
        s.tcp = self.tcp.is_some();
        s.tcp_clients = self.streams.len();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamKind;

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                id: "clk_ofs".into(),
                name: "Clock Offset".into(),
                kind: ParamKind::Float {
                    min: -250.0,
                    max: 250.0,
                    unit: " ms".into(),
                },
                clap_id: 11,
                default: 0.5,
            },
            ParamSpec {
                id: "lnk_md".into(),
                name: "Link Mode".into(),
                kind: ParamKind::Enum {
                    names: vec!["Off".into(), "Lead".into(), "Follow".into()],
                },
                clap_id: 12,
                default: 0.0,
            },
            ParamSpec {
                id: "mac_1".into(),
                name: "Macro 1".into(),
                kind: ParamKind::Float {
                    min: 0.0,
                    max: 1.0,
                    unit: String::new(),
                },
                clap_id: 13,
                default: 0.0,
            },
        ]
    }

    fn send(core: &mut OscCore, from: SocketAddr, m: Message) -> Output {
        let mut bytes = Vec::new();
        osc::encode_message(&m, &mut bytes);
        let mut out = Output::default();
        core.handle_datagram(1_000 * MS, from, &bytes, &mut out);
        out
    }

    fn errors(out: &Output) -> Vec<Message> {
        out.datagrams
            .iter()
            .filter_map(|(_, b)| match osc::decode(b) {
                Ok(Packet::Message(m)) if m.address == "/lockstep/error" => Some(m),
                _ => None,
            })
            .collect()
    }

    const PHONE: ([u8; 4], u16) = ([192, 168, 1, 20], 9000);

    #[test]
    fn sets_parameters_in_real_units_normalized_and_by_name() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/clk_ofs", vec![Arg::Float(-125.0)]),
        );
        assert_eq!(
            out.changes,
            vec![(
                1,
                HostParamChange {
                    clap_id: 11,
                    value: 0.25,
                    at_sample: None
                }
            )]
        );
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/mac_1/normalized", vec![Arg::Double(0.75)]),
        );
        assert_eq!(out.changes[0].1.value, 0.75);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/lnk_md", vec![Arg::Symbol("Follow".into())]),
        );
        assert_eq!(
            out.changes[0].1,
            HostParamChange {
                clap_id: 12,
                value: 2.0,
                at_sample: None
            }
        );
        // Patterns reach several parameters at once.
        let out = send(
            &mut core,
            phone,
            Message::new(
                "/lockstep/param/{mac_1,clk_ofs}/normalized",
                vec![Arg::Int(1)],
            ),
        );
        assert_eq!(out.changes.len(), 2);
        assert_eq!(core.status().applied, 5);
    }

    #[test]
    fn bad_input_is_answered_and_counted() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let out = send(&mut core, phone, Message::new("/nope", vec![Arg::Int(1)]));
        assert_eq!(errors(&out)[0].args[1], Arg::Str("no such address".into()));
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/clk_ofs", vec![Arg::Float(300.0)]),
        );
        assert!(out.changes.is_empty());
        assert!(matches!(&errors(&out)[0].args[1], Arg::Str(s) if s.contains("outside")));
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/clk_ofs", vec![Arg::Blob(vec![1])]),
        );
        assert!(matches!(&errors(&out)[0].args[1], Arg::Str(s) if s.contains("'b'")));
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/lnk_md", vec![Arg::Str("Chase".into())]),
        );
        assert_eq!(errors(&out).len(), 1);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/mac_1", vec![]),
        );
        assert_eq!(errors(&out).len(), 1);
        let mut out = Output::default();
        core.handle_datagram(0, phone, b"garbage!", &mut out);
        let s = core.status();
        assert_eq!(
            (s.unknown_address, s.out_of_range, s.wrong_type, s.malformed),
            (1, 2, 2, 1)
        );
        // A public address is refused silently (and counted).
        let mut out = Output::default();
        core.handle_datagram(
            0,
            SocketAddr::from(([203, 0, 113, 9], 9000)),
            b"/x\0\0",
            &mut out,
        );
        assert!(out.datagrams.is_empty());
        assert_eq!(core.status().refused_source, 1);
        // Oversized.
        core.handle_datagram(0, phone, &vec![b'/'; MAX_PACKET + 4], &mut out);
        assert_eq!(core.status().too_large, 1);
    }

    #[test]
    fn a_flood_is_rate_limited() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let mut bytes = Vec::new();
        osc::encode_message(
            &Message::new("/lockstep/param/mac_1/normalized", vec![Arg::Float(0.5)]),
            &mut bytes,
        );
        let mut out = Output::default();
        for _ in 0..5_000 {
            core.handle_datagram(0, phone, &bytes, &mut out);
        }
        let s = core.status();
        assert_eq!(s.applied, 1_000, "the burst");
        assert_eq!(s.rate_limited, 4_000);
        // Tokens come back with time.
        core.handle_datagram(SECOND_NS, phone, &bytes, &mut out);
        assert_eq!(core.status().applied, 1_001);
    }

    const SECOND_NS: Nanos = 1_000 * MS;

    #[test]
    fn feedback_is_change_only_and_never_echoed_to_the_mover() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let tablet = SocketAddr::from(([192, 168, 1, 30], 9001));
        send(
            &mut core,
            tablet,
            Message::new("/lockstep/subscribe", vec![]),
        );
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/mac_1/normalized", vec![Arg::Float(0.5)]),
        );
        assert_eq!(out.changes.len(), 1);
        // The plugin applies it and reports it back.
        core.set_current(1, 2, 0.5);
        let mut out = Output::default();
        core.feedback(1_010 * MS, &mut out);
        let to: Vec<SocketAddr> = out
            .datagrams
            .iter()
            .filter(|d| String::from_utf8_lossy(&d.1).contains("mac_1"))
            .map(|d| d.0)
            .collect();
        assert!(to.contains(&tablet), "the subscriber hears it");
        assert!(!to.contains(&phone), "the phone moving the fader does not");
        // Unchanged: nothing more.
        let mut out = Output::default();
        core.feedback(2_000 * MS, &mut out);
        assert!(
            out.datagrams
                .iter()
                .all(|(_, b)| !String::from_utf8_lossy(b).contains("mac_1")),
            "change-only"
        );
        // Two instances: each under its own name, the long form works.
        core.add_instance(2, "Lockstep", specs());
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/lockstep-2/param/mac_1", vec![Arg::Float(1.0)]),
        );
        assert_eq!(out.changes[0].0, 2);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/*/param/mac_1", vec![Arg::Float(1.0)]),
        );
        assert_eq!(out.changes.len(), 2);
    }

    #[test]
    fn the_osc_switches_are_honoured() {
        let mut specs = specs();
        for id in ["osc_on", "osc_fb"] {
            specs.push(ParamSpec {
                id: id.into(),
                name: id.into(),
                kind: ParamKind::Bool,
                clap_id: 20,
                default: 1.0,
            });
        }
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs);
        let phone = SocketAddr::from(PHONE);
        send(
            &mut core,
            phone,
            Message::new("/lockstep/subscribe", vec![]),
        );
        core.set_current(1, 4, 0.0); // feedback off
        core.set_current(1, 2, 0.3);
        let mut out = Output::default();
        core.feedback(2_000 * MS, &mut out);
        assert!(out.datagrams.is_empty(), "no feedback while osc_fb is off");
        core.set_current(1, 3, 0.0); // control off
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/mac_1", vec![Arg::Float(1.0)]),
        );
        assert!(out.changes.is_empty());
        assert_eq!(errors(&out).len(), 1);
        assert_eq!(core.status().disabled, 1);
    }

    #[test]
    fn transport_feedback_is_change_only() {
        use crate::bridge::TimeSignature;
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        send(
            &mut core,
            phone,
            Message::new("/lockstep/subscribe", vec![]),
        );
        let mut t = TransportSnapshot::unreported(0, 256, 48_000.0, 0);
        t.playing = true;
        t.tempo_bpm = Some(120.0);
        t.time_sig = Some(TimeSignature {
            numerator: 3,
            denominator: 4,
        });
        t.pos_beats = Some(4.5);
        core.set_transport(1, t);
        let transport = |out: &Output| -> Vec<Message> {
            out.datagrams
                .iter()
                .filter_map(|(_, b)| match osc::decode(b) {
                    Ok(Packet::Bundle { elements, .. }) => Some(elements),
                    _ => None,
                })
                .flatten()
                .filter_map(|p| match p {
                    Packet::Message(m) if m.address.contains("/transport/") => Some(m),
                    _ => None,
                })
                .collect()
        };
        let mut out = Output::default();
        core.feedback(2_000 * MS, &mut out);
        let first = transport(&out);
        // 4.5 quarter notes in 3/4: bar 2, beat 2.5.
        assert_eq!(
            first,
            vec![
                Message::new("/lockstep/transport/playing", vec![Arg::Int(1)]),
                Message::new("/lockstep/transport/tempo", vec![Arg::Float(120.0)]),
                Message::new("/lockstep/transport/beat", vec![Arg::Float(2.5)]),
                Message::new("/lockstep/transport/bar", vec![Arg::Int(2)]),
                Message::new(
                    "/lockstep/transport/timesig",
                    vec![Arg::Int(3), Arg::Int(4)]
                ),
            ]
        );
        t.pos_beats = Some(4.75);
        core.set_transport(1, t);
        let mut out = Output::default();
        core.feedback(2_010 * MS, &mut out);
        assert!(transport(&out).is_empty(), "rate-limited");
        let mut out = Output::default();
        core.feedback(2_100 * MS, &mut out);
        assert_eq!(
            transport(&out),
            vec![Message::new(
                "/lockstep/transport/beat",
                vec![Arg::Float(2.75)]
            )],
            "only what changed"
        );
    }

    #[test]
    fn link_feed_goes_to_subscribers_change_only() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        send(
            &mut core,
            SocketAddr::from(PHONE),
            Message::new("/lockstep/subscribe", vec![]),
        );
        let link = |out: &Output| -> Vec<Message> {
            out.datagrams
                .iter()
                .filter_map(|(_, b)| match osc::decode(b) {
                    Ok(Packet::Bundle { elements, .. }) => Some(elements),
                    _ => None,
                })
                .flatten()
                .filter_map(|p| match p {
                    Packet::Message(m) if m.address.starts_with("/lockstep/link/") => Some(m),
                    _ => None,
                })
                .collect()
        };
        let mut feed = LinkFeed {
            peers: 2,
            tempo: 128.0,
            phase: 1.5,
            playing: true,
            offset_ms: Some(0.25),
        };
        core.set_link(Some(feed));
        let mut out = Output::default();
        core.feedback(2_000 * MS, &mut out);
        assert_eq!(
            link(&out),
            vec![
                Message::new("/lockstep/link/peers", vec![Arg::Int(2)]),
                Message::new("/lockstep/link/tempo", vec![Arg::Float(128.0)]),
                Message::new("/lockstep/link/phase", vec![Arg::Float(1.5)]),
                Message::new("/lockstep/link/playing", vec![Arg::Int(1)]),
                Message::new("/lockstep/link/offset", vec![Arg::Float(0.25)]),
            ]
        );
        feed.phase = 2.0;
        core.set_link(Some(feed));
        let mut out = Output::default();
        core.feedback(2_010 * MS, &mut out);
        assert!(link(&out).is_empty(), "rate-limited");
        let mut out = Output::default();
        core.feedback(2_050 * MS, &mut out);
        assert_eq!(
            link(&out),
            vec![Message::new("/lockstep/link/phase", vec![Arg::Float(2.0)])]
        );
        core.set_link(None);
        let mut out = Output::default();
        core.feedback(3_000 * MS, &mut out);
        assert!(link(&out).is_empty(), "Link off: nothing");
    }

    #[test]
    fn user_mappings_drive_parameters_and_get_feedback() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        core.set_mappings(
            1,
            &[
                OscMapping {
                    address: "/1/fader1".into(),
                    param: "mac_1".into(),
                    ..OscMapping::default()
                },
                OscMapping {
                    address: "/3/xy".into(),
                    arg: 1,
                    param: "clk_ofs".into(),
                    output: [0.25, 0.75],
                    ..OscMapping::default()
                },
                OscMapping {
                    address: "/1/toggle1".into(),
                    param: "lnk_md".into(),
                    ..OscMapping::default()
                },
                OscMapping {
                    address: "/x".into(),
                    param: "nope".into(),
                    ..OscMapping::default()
                },
            ],
        );
        assert_eq!(core.status().mapping_errors.len(), 1);
        let phone = SocketAddr::from(PHONE);
        let out = send(
            &mut core,
            phone,
            Message::new("/1/fader1", vec![Arg::Float(0.5)]),
        );
        assert_eq!(
            out.changes[0].1,
            HostParamChange {
                clap_id: 13,
                value: 0.5,
                at_sample: None
            }
        );
        let out = send(
            &mut core,
            phone,
            Message::new("/3/xy", vec![Arg::Float(0.1), Arg::Float(0.5)]),
        );
        assert_eq!(
            out.changes[0].1,
            HostParamChange {
                clap_id: 11,
                value: 0.5,
                at_sample: None
            }
        );
        // A toggle on an enum lands on a step (0.6 of Off/Lead/Follow → Lead).
        let out = send(
            &mut core,
            phone,
            Message::new("/1/toggle1", vec![Arg::Float(0.6)]),
        );
        assert_eq!(
            out.changes[0].1,
            HostParamChange {
                clap_id: 12,
                value: 1.0,
                at_sample: None
            }
        );
        let out = send(
            &mut core,
            phone,
            Message::new("/1/fader1", vec![Arg::Str("x".into())]),
        );
        assert!(out.changes.is_empty());
        assert_eq!(errors(&out).len(), 1);
        // Feedback goes to the mapped address too (not to the mover).
        let tablet = SocketAddr::from(([192, 168, 1, 30], 9001));
        send(
            &mut core,
            tablet,
            Message::new("/lockstep/subscribe", vec![]),
        );
        core.set_current(1, 2, 0.5);
        let mut out = Output::default();
        core.feedback(1_100 * MS, &mut out);
        let fader: Vec<_> = out
            .datagrams
            .iter()
            .filter(|(_, b)| {
                matches!(osc::decode(b), Ok(Packet::Message(m)) if m.address == "/1/fader1" && m.args == [Arg::Float(0.5)])
            })
            .map(|(to, _)| *to)
            .collect();
        assert_eq!(fader, vec![tablet]);
    }

    #[test]
    fn timed_bundles_are_scheduled_bounded_and_late_ones_apply_at_once() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        // Host time 1000 s is Unix time 1_700_000_000 s.
        core.set_wall_offset(1_700_000_000e9 - 1_000e9);
        let phone = SocketAddr::from(PHONE);
        let at = |unix: f64, value: f32| {
            let mut bytes = Vec::new();
            osc::encode(
                &Packet::Bundle {
                    time: osc::timetag_from_unix(unix),
                    elements: vec![Packet::Message(Message::new(
                        "/lockstep/param/mac_1",
                        vec![Arg::Float(value)],
                    ))],
                },
                &mut bytes,
            );
            bytes
        };
        let now = 1_000 * SECOND_NS;
        let mut out = Output::default();
        core.handle_datagram(now, phone, &at(1_700_000_000.25, 0.5), &mut out);
        core.handle_datagram(now, phone, &at(1_700_000_000.125, 0.25), &mut out);
        assert!(out.changes.is_empty(), "nothing at once");
        assert_eq!(core.status().scheduled, 2);
        // Due in order, each at its time.
        assert!(core.take_due(now, 100 * MS).is_empty());
        let due = core.take_due(now + 100 * MS, 50 * MS);
        assert_eq!(due.len(), 1);
        assert!((due[0].0 as f64 - (now + 125 * MS) as f64).abs() < 1_000.0);
        assert_eq!(due[0].2.value, 0.25);
        assert_eq!(core.take_due(now + 250 * MS, 0)[0].2.value, 0.5);
        // Late: applied at once and counted.
        let mut out = Output::default();
        core.handle_datagram(now, phone, &at(1_699_999_999.0, 1.0), &mut out);
        assert_eq!(out.changes.len(), 1);
        assert_eq!(core.status().late, 1);
        // Too far ahead: refused with an error.
        let mut out = Output::default();
        core.handle_datagram(now, phone, &at(1_700_000_060.0, 1.0), &mut out);
        assert!(out.changes.is_empty());
        assert_eq!(errors(&out).len(), 1);
        // Bounded in size.
        let mut out = Output::default();
        for _ in 0..MAX_SCHEDULED + 10 {
            core.handle_datagram(now, phone, &at(1_700_000_001.0, 0.5), &mut out);
            core.buckets.clear();
        }
        let s = core.status();
        assert_eq!((s.scheduled, s.schedule_refused), (MAX_SCHEDULED, 11));
    }

    #[test]
    fn oscquery_serves_the_namespace_with_values_ranges_and_errors() {
        use super::super::oscquery::{HostInfo, respond};
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        core.set_current(1, 0, 0.75);
        let host = HostInfo {
            name: "Lockstep (test)".into(),
            osc_port: 8000,
        };
        let get = |target: &str| -> (String, serde_json::Value) {
            let raw = respond(
                format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                &core,
                &host,
            );
            let text = String::from_utf8(raw).expect("utf-8");
            let (head, body) = text.split_once("\r\n\r\n").expect("head");
            (
                head.lines().next().unwrap_or_default().to_owned(),
                serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
            )
        };
        let (status, root) = get("/");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let ofs = &root["CONTENTS"]["lockstep"]["CONTENTS"]["param"]["CONTENTS"]["clk_ofs"];
        assert_eq!(ofs["FULL_PATH"], "/lockstep/param/clk_ofs");
        assert_eq!(ofs["TYPE"], "f");
        assert_eq!(ofs["VALUE"][0], 125.0);
        assert_eq!(ofs["RANGE"][0]["MIN"], -250.0);
        assert_eq!(ofs["UNIT"][0], "time.ms");
        assert_eq!(ofs["CONTENTS"]["normalized"]["VALUE"][0], 0.75);
        let (_, mode) = get("/lockstep/param/lnk_md");
        assert_eq!(mode["RANGE"][0]["VALS"][2], "Follow");
        assert_eq!(mode["VALUE"][0], "Off");
        let (_, v) = get("/lockstep/param/clk_ofs?VALUE");
        assert_eq!(v, serde_json::json!({"VALUE": [125.0]}));
        let (_, info) = get("/anything?HOST_INFO");
        assert_eq!(info["OSC_PORT"], 8000);
        assert_eq!(info["EXTENSIONS"]["LISTEN"], true);
        assert_eq!(get("/lockstep/param/nope").0, "HTTP/1.1 404 Not Found");
        assert_eq!(get("/lockstep/param?VALUE").0, "HTTP/1.1 204 No Content");
        assert_eq!(get("/lockstep/param?BOGUS").0, "HTTP/1.1 400 Bad Request");
        assert_eq!(get("/lockstep/param/clk%5Fofs").0, "HTTP/1.1 200 OK");
        let raw = respond(b"POST / HTTP/1.1\r\n\r\n", &core, &host);
        assert!(raw.starts_with(b"HTTP/1.1 405"));
        let raw = respond(b"\xff\xfe\r\n\r\n", &core, &host);
        assert!(raw.starts_with(b"HTTP/1.1 400"));
    }

    #[test]
    fn transport_requests_only_when_the_host_takes_them() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/transport/play", vec![]),
        );
        assert!(out.transport.is_empty());
        assert_eq!(errors(&out).len(), 1, "a DAW's transport cannot be driven");
        core.set_transport_control(true);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/transport/tempo", vec![Arg::Float(140.0)]),
        );
        assert_eq!(out.transport, vec![TransportRequest::Tempo(140.0)]);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/transport/tempo", vec![Arg::Float(5.0)]),
        );
        assert!(out.transport.is_empty() && errors(&out).len() == 1);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/transport/locate", vec![Arg::Int(8)]),
        );
        assert_eq!(out.transport, vec![TransportRequest::Locate(8.0)]);
    }

    #[test]
    fn the_allow_list_takes_addresses_and_subnets() {
        let net = Subnet::parse("192.168.1.0/24").expect("subnet");
        assert!(net.contains(IpAddr::from([192, 168, 1, 77])));
        assert!(!net.contains(IpAddr::from([192, 168, 2, 1])));
        let v6 = Subnet::parse("fe80::/10").expect("subnet");
        assert!(v6.contains("fe80::1".parse().expect("ip")));
        assert!(
            Subnet::parse("10.0.0.7")
                .expect("host")
                .contains(IpAddr::from([10, 0, 0, 7]))
        );
        assert!(Subnet::parse("10.0.0.0/33").is_none());
        assert!(Subnet::parse("studio").is_none());
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        core.set_allow_list(&["203.0.113.0/24".into(), "bogus".into()]);
        assert_eq!(core.status().errors.len(), 1);
        let m = Message::new("/lockstep/param/mac_1", vec![Arg::Float(0.5)]);
        // A public controller allowed by the user; a private one now refused.
        let out = send(
            &mut core,
            SocketAddr::from(([203, 0, 113, 9], 9000)),
            m.clone(),
        );
        assert_eq!(out.changes.len(), 1);
        let out = send(&mut core, SocketAddr::from(PHONE), m);
        assert!(out.changes.is_empty());
        assert_eq!(core.status().refused_source, 1);
    }

    #[test]
    fn dump_lists_every_value() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let out = send(
            &mut core,
            SocketAddr::from(PHONE),
            Message::new("/lockstep/dump", vec![]),
        );
        let Ok(Packet::Bundle { elements, .. }) = osc::decode(&out.datagrams[0].1) else {
            panic!("a bundle");
        };
        assert_eq!(elements.len(), 6);
        assert_eq!(
            elements[0],
            Packet::Message(Message::new(
                "/lockstep/param/clk_ofs",
                vec![Arg::Float(0.0)]
            ))
        );
    }
}
