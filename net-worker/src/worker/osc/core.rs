//! The sans-IO OSC bridge's state and its surface: [`OscCore`] (what it knows: the instances
//! and their parameters, the subscribers and recent senders, the rate-limit buckets, the
//! schedule, the counters), what it asks the driver to do ([`Output`], [`TransportRequest`],
//! [`TimedChange`]), and the instance registry (names, address prefixes, current values).
//!
//! What it does with that state lives next door, one job a file: `dispatch` (datagrams in),
//! `schedule` (timed bundles), `mappings` (user addresses), `feedback` (values out), `access`
//! (allow-list, rate limit), `namespace` (OSCQuery) and `status`.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::access::{Bucket, Subnet};
use super::feedback::{LinkFeed, RemoteFeed, TransportFeed};
use super::{Nanos, OscStatus};
use crate::bridge::TransportSnapshot;
use crate::params::{HostParamChange, ParamSpec, Remote};
use crate::proto::osc::{Message, pattern};
use crate::settings::OscMapping;

/// What an address reaches: targets (instance, parameter index, normalized form) and the ids of
/// matched parameters remote control may not set.
pub(super) type Resolved = (Vec<(u64, usize, bool)>, Vec<String>);

/// Most addresses whose targets are remembered.
pub(super) const MAX_RESOLVED: usize = 256;

/// One plugin instance as the bridge sees it.
#[derive(Debug)]
pub(super) struct Instance {
    pub(super) name: String,
    pub(super) specs: Vec<ParamSpec>,
    /// Current values (normalized) as the plugin last reported them.
    pub(super) values: Vec<f64>,
    /// Values last sent as feedback, and when.
    pub(super) fed_back: Vec<(f64, Nanos)>,
    /// Who moved each parameter last, and when (no echo).
    pub(super) moved_by: Vec<Option<(SocketAddr, Nanos)>>,
    /// Which parameters remote control may set (see [`OscCore::set_exposed`]).
    pub(super) exposed: Vec<bool>,
    /// User mappings: the mapping, its compiled address, the parameter index, and whether
    /// feedback can go to its address (a literal address with one single-argument mapping).
    pub(super) mappings: Vec<(OscMapping, pattern::Pattern, usize, bool)>,
    /// The host transport as last seen, and what was last sent of it (and when).
    pub(super) transport: Option<TransportSnapshot>,
    pub(super) transport_sent: Option<(TransportFeed, Nanos)>,
    /// Whether the plugin's host-facing layer takes parameter changes (see
    /// [`OscCore::set_settable`]).
    pub(super) settable: bool,
}

/// The sans-IO OSC bridge.
#[derive(Debug)]
pub struct OscCore {
    pub(super) instances: BTreeMap<u64, Instance>,
    pub(super) cache: pattern::Cache,
    /// Subscribers (explicit) with their feedback address.
    pub(super) subscribers: Vec<SocketAddr>,
    /// Recent senders and when they were heard.
    pub(super) recent: Vec<(SocketAddr, Nanos)>,
    pub(super) buckets: BTreeMap<IpAddr, Bucket>,
    /// The time of the datagram being handled (replies charge their source's bucket then).
    pub(super) now: Nanos,
    /// When refilled buckets were last swept out of a full table.
    pub(super) buckets_swept: Nanos,
    pub(super) status: OscStatus,
    /// The last few messages and their senders (formatted only when a status is built).
    pub(super) last_messages: VecDeque<(Message, SocketAddr)>,
    /// What an address (literal or pattern) reaches: (instance, parameter, normalized form)
    /// targets, and the parameters it matched that remote control may not set. Bounded; cleared
    /// when the instances or what they expose change.
    pub(super) resolved: std::collections::HashMap<String, Resolved>,
    /// Unix time minus host time, ns (time tags are wall-clock NTP times).
    pub(super) wall_offset_ns: f64,
    /// The user's allow-list (empty: [`allowed_by_default`](super::allowed_by_default)).
    pub(super) allow: Vec<Subnet>,
    /// Messages a second per source ([`super::RATE_PER_SOURCE`] unless set).
    pub(super) rate: f64,
    /// The due time of the bundle being handled (None = at once).
    pub(super) due: Option<Nanos>,
    /// Link as last reported, and what was last sent of it (and when).
    pub(super) link: Option<LinkFeed>,
    pub(super) link_sent: Option<(LinkFeed, Nanos)>,
    pub(super) remote: Option<RemoteFeed>,
    pub(super) remote_sent: Option<(RemoteFeed, Nanos)>,
    /// The host application takes transport requests (Lockstep's headless runner does; no
    /// DAW can).
    pub(super) transport_control: bool,
    /// Timed changes: (due host time, instance, change), kept sorted by due time.
    pub(super) scheduled: VecDeque<(Nanos, u64, HostParamChange)>,
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
            buckets_swept: 0,
            now: 0,
            status: OscStatus::default(),
            last_messages: VecDeque::new(),
            resolved: std::collections::HashMap::new(),
            wall_offset_ns: 0.0,
            allow: Vec::new(),
            rate: super::RATE_PER_SOURCE,
            due: None,
            link: None,
            link_sent: None,
            remote: None,
            remote_sent: None,
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
        self.resolved.clear();
        let n = specs.len();
        let values = specs.iter().map(|s| s.default).collect();
        let exposed = specs.iter().map(|s| s.remote == Remote::Open).collect();
        self.instances.insert(
            id,
            Instance {
                name,
                specs,
                values,
                fed_back: vec![(f64::NAN, 0); n],
                moved_by: vec![None; n],
                exposed,
                mappings: Vec::new(),
                transport: None,
                transport_sent: None,
                settable: true,
            },
        );
    }

    /// Which of instance `id`'s parameters remote control may set: every [`Remote::Open`] one,
    /// the [`Remote::OptIn`] ones listed in `opened` (the user's `osc_expose` setting), never a
    /// [`Remote::Never`] one. Ids that name nothing, or a parameter that can never be opened,
    /// are listed in the status.
    pub fn set_exposed(&mut self, id: u64, opened: &[String]) {
        let Some(instance) = self.instances.get_mut(&id) else {
            return;
        };
        self.resolved.clear();
        self.status
            .errors
            .retain(|e| !e.starts_with("OSC exposure"));
        for (k, spec) in instance.specs.iter().enumerate() {
            instance.exposed[k] = match spec.remote {
                Remote::Open => true,
                Remote::OptIn => opened.contains(&spec.id),
                Remote::Never => false,
            };
        }
        for want in opened {
            match instance.specs.iter().find(|s| &s.id == want) {
                None => self
                    .status
                    .errors
                    .push(format!("OSC exposure: {want:?} is not a parameter")),
                Some(s) if s.remote == Remote::Never => self.status.errors.push(format!(
                    "OSC exposure: {want} can never be set remotely (it switches remote control \
                     itself)"
                )),
                Some(_) => {}
            }
        }
    }

    /// Forget instance `id`.
    pub fn remove_instance(&mut self, id: u64) {
        self.resolved.clear();
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
    /// Whether instance `id` can take parameter changes: its host-facing layer attached. An
    /// instance without one (a host or format the layer does not cover) refuses every remote
    /// change with an error instead of dropping it.
    pub fn set_settable(&mut self, id: u64, settable: bool) {
        if let Some(instance) = self.instances.get_mut(&id) {
            instance.settable = settable;
        }
    }

    /// Refuse a change for instance `id` when it cannot take one: counted, and the sender
    /// hears why. Returns whether it was refused.
    pub(super) fn refuse_unsettable(
        &mut self,
        id: u64,
        from: SocketAddr,
        address: &str,
        out: &mut Output,
    ) -> bool {
        if self.instances.get(&id).is_none_or(|i| i.settable) {
            return false;
        }
        self.status.no_host_layer += 1;
        self.error(
            from,
            address,
            "this instance cannot take remote changes: its host gave Lockstep's layer no way in",
            out,
        );
        true
    }

    pub(super) fn switch_on(&self, id: u64, param: &str) -> bool {
        self.instances.get(&id).is_none_or(|i| {
            i.specs
                .iter()
                .position(|s| s.id == param)
                .is_none_or(|k| i.values[k] >= 0.5)
        })
    }

    /// The address prefix of an instance: short form when it is the only one.
    pub(super) fn prefix(&self, id: u64) -> String {
        match self.instances.get(&id) {
            Some(_) if self.instances.len() == 1 => "/lockstep".into(),
            Some(i) => format!("/lockstep/{}", i.name),
            None => String::new(),
        }
    }
}
