//! Values out: what controllers hear. A `dump` sends every value at once; after that,
//! [`OscCore::feedback`] sends what changed, to subscribers and recent senders, at most every
//! [`FEEDBACK_INTERVAL`] per parameter, never back to the controller that is moving it, and
//! also to the user mappings' addresses that take feedback. Each instance's host transport
//! ([`TransportFeed`], under `…/transport/…`) and the process's Link session ([`LinkFeed`],
//! under `/lockstep/link/…`) go out change-only too, at most every [`TRANSPORT_INTERVAL`].

use std::net::SocketAddr;

use super::{
    FEEDBACK_INTERVAL, NO_ECHO, Nanos, OscCore, Output, RECENT_SENDER, TRANSPORT_INTERVAL,
};
use crate::bridge::TransportSnapshot;
use crate::proto::osc::{self, Arg, Message, Packet};

/// The transport as controllers see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TransportFeed {
    pub(super) playing: bool,
    pub(super) tempo: Option<f32>,
    /// Beat within the bar (1-based, fractional), and bar (1-based).
    pub(super) beat: Option<f32>,
    pub(super) bar: Option<i32>,
    pub(super) timesig: Option<(i32, i32)>,
}

impl TransportFeed {
    pub(super) fn of(t: &TransportSnapshot) -> Self {
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
    pub(super) fn messages(&self, prefix: &str, old: Option<&Self>) -> Vec<Message> {
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

/// Studios the remote feed reports one by one (`/lockstep/remote/studio/1..8/…`).
pub const REMOTE_FEED_STUDIOS: usize = 8;

/// One remote studio as controllers see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StudioFeed {
    /// `direct`, `relayed`, or empty while not connected.
    pub path: String,
    /// Best round trip, ms (0.1 ms steps).
    pub rtt_ms: f32,
    /// Half of it: the one-way delay if the path is symmetric, ms.
    pub one_way_ms: f32,
    /// How wrong the clock offset can be at most, ms.
    pub bound_ms: f32,
}

/// The remote session as controllers see it (`/lockstep/remote/...`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteFeed {
    /// `connected`, `waiting for peers`, `connecting to broker`, `deriving key`, `error`.
    pub state: String,
    /// Studios with a path up.
    pub peers: i32,
    /// The shared grid's tempo (BPM), phase in its quantum (beats) and start/stop state.
    pub grid: Option<(f32, f32, bool)>,
    /// This studio's alignment, ms.
    pub align_ms: f32,
    /// Datagrams and rendezvous messages refused (forged, replayed, malformed), in all.
    pub refused: i32,
    /// The first [`REMOTE_FEED_STUDIOS`] studios.
    pub studios: Vec<StudioFeed>,
}

impl RemoteFeed {
    /// The messages for the fields that differ from `old` (all of them without one).
    fn messages(&self, old: Option<&Self>) -> Vec<Message> {
        let mut out = Vec::new();
        let address = |leaf: &str| format!("/lockstep/remote/{leaf}");
        if old.is_none_or(|o| o.state != self.state) {
            out.push(Message::new(
                address("state"),
                vec![Arg::Str(self.state.clone())],
            ));
        }
        if old.is_none_or(|o| o.peers != self.peers) {
            out.push(Message::new(address("peers"), vec![Arg::Int(self.peers)]));
        }
        if let Some((tempo, phase, playing)) = self.grid {
            let was = old.and_then(|o| o.grid);
            if was.is_none_or(|w| w.0 != tempo) {
                out.push(Message::new(address("tempo"), vec![Arg::Float(tempo)]));
            }
            if was.is_none_or(|w| w.1 != phase) {
                out.push(Message::new(address("phase"), vec![Arg::Float(phase)]));
            }
            if was.is_none_or(|w| w.2 != playing) {
                out.push(Message::new(
                    address("playing"),
                    vec![Arg::Int(i32::from(playing))],
                ));
            }
        }
        if old.is_none_or(|o| o.align_ms != self.align_ms) {
            out.push(Message::new(
                address("align"),
                vec![Arg::Float(self.align_ms)],
            ));
        }
        if old.is_none_or(|o| o.refused != self.refused) {
            out.push(Message::new(
                address("refused"),
                vec![Arg::Int(self.refused)],
            ));
        }
        for (i, studio) in self.studios.iter().enumerate() {
            let was = old.and_then(|o| o.studios.get(i));
            let leaf = |name: &str| address(&format!("studio/{}/{name}", i + 1));
            if was.is_none_or(|w| w.path != studio.path) {
                out.push(Message::new(
                    leaf("path"),
                    vec![Arg::Str(studio.path.clone())],
                ));
            }
            if was.is_none_or(|w| w.rtt_ms != studio.rtt_ms) {
                out.push(Message::new(leaf("rtt"), vec![Arg::Float(studio.rtt_ms)]));
            }
            if was.is_none_or(|w| w.one_way_ms != studio.one_way_ms) {
                out.push(Message::new(
                    leaf("one_way"),
                    vec![Arg::Float(studio.one_way_ms)],
                ));
            }
            if was.is_none_or(|w| w.bound_ms != studio.bound_ms) {
                out.push(Message::new(
                    leaf("bound"),
                    vec![Arg::Float(studio.bound_ms)],
                ));
            }
        }
        out
    }
}

impl OscCore {
    /// The remote session now (None: no remote session).
    pub fn set_remote(&mut self, feed: Option<RemoteFeed>) {
        if feed.is_none() {
            self.remote_sent = None;
        }
        self.remote = feed;
    }

    /// The host transport instance `id` saw at its latest block.
    pub fn set_transport(&mut self, id: u64, snapshot: TransportSnapshot) {
        if let Some(i) = self.instances.get_mut(&id) {
            i.transport = Some(snapshot);
        }
    }

    /// The process's Link session now (None: Link is off).
    pub fn set_link(&mut self, feed: Option<LinkFeed>) {
        self.link = feed;
        if feed.is_none() {
            self.link_sent = None;
        }
    }

    pub(super) fn value_messages(&self, id: u64, index: usize) -> [Message; 2] {
        let instance = &self.instances[&id];
        let spec = &instance.specs[index];
        let v = instance.values[index];
        let real = format!("{}/param/{}", self.prefix(id), spec.id);
        [
            Message::new(real.clone(), vec![spec.osc_value(v)]),
            Message::new(format!("{real}/normalized"), vec![Arg::Float(v as f32)]),
        ]
    }

    /// Every value to `to`, in bundles. A dump costs its source's rate limit what it sends
    /// (one token a message): asking for dumps cannot make Lockstep send more than the limit.
    pub(super) fn dump(&mut self, to: SocketAddr, out: &mut Output) {
        let count: usize = self.instances.values().map(|i| 2 * i.specs.len()).sum();
        // Never more than a full bucket, or a low limit would refuse every dump.
        let cost = (count as f64).min(2.0 * self.rate);
        if !self.charge(self.now, to.ip(), cost) {
            self.status.replies_limited += 1;
            return;
        }
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

    /// Someone gets feedback: a subscriber, or a controller heard in the last
    /// [`super::RECENT_SENDER`] (the worker then looks at changes at the feed rate).
    pub fn has_listeners(&self) -> bool {
        !self.subscribers.is_empty() || !self.recent.is_empty()
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
        self.remote_feedback(now, &destinations, out);
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

    /// The remote session's fields to everyone who takes feedback: change-only, at most
    /// every [`TRANSPORT_INTERVAL`].
    fn remote_feedback(&mut self, now: Nanos, destinations: &[SocketAddr], out: &mut Output) {
        let Some(feed) = &self.remote else {
            return;
        };
        let old = self.remote_sent.take();
        if let Some((o, at)) = &old
            && (o == feed || now < at + TRANSPORT_INTERVAL)
        {
            self.remote_sent = old;
            return;
        }
        let messages = feed.messages(old.as_ref().map(|(o, _)| o));
        self.remote_sent = Some((feed.clone(), now));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::osc::MS;
    use crate::worker::osc::tests::{PHONE, send, specs};

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
    fn remote_feed_goes_to_subscribers_change_only() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        send(
            &mut core,
            SocketAddr::from(PHONE),
            Message::new("/lockstep/subscribe", vec![]),
        );
        let remote = |out: &Output| -> Vec<Message> {
            out.datagrams
                .iter()
                .filter_map(|(_, b)| match osc::decode(b) {
                    Ok(Packet::Bundle { elements, .. }) => Some(elements),
                    _ => None,
                })
                .flatten()
                .filter_map(|p| match p {
                    Packet::Message(m) if m.address.starts_with("/lockstep/remote/") => Some(m),
                    _ => None,
                })
                .collect()
        };
        let mut feed = RemoteFeed {
            state: "connected".into(),
            peers: 1,
            grid: Some((130.0, 2.5, true)),
            align_ms: 30.0,
            refused: 3,
            studios: vec![StudioFeed {
                path: "direct".into(),
                rtt_ms: 80.6,
                one_way_ms: 40.3,
                bound_ms: 40.3,
            }],
        };
        core.set_remote(Some(feed.clone()));
        let mut out = Output::default();
        core.feedback(2_000 * MS, &mut out);
        let s = |a: &str, v: Arg| Message::new(format!("/lockstep/remote/{a}"), vec![v]);
        assert_eq!(
            remote(&out),
            vec![
                s("state", Arg::Str("connected".into())),
                s("peers", Arg::Int(1)),
                s("tempo", Arg::Float(130.0)),
                s("phase", Arg::Float(2.5)),
                s("playing", Arg::Int(1)),
                s("align", Arg::Float(30.0)),
                s("refused", Arg::Int(3)),
                s("studio/1/path", Arg::Str("direct".into())),
                s("studio/1/rtt", Arg::Float(80.6)),
                s("studio/1/one_way", Arg::Float(40.3)),
                s("studio/1/bound", Arg::Float(40.3)),
            ]
        );
        feed.studios[0].rtt_ms = 81.0;
        feed.refused = 4;
        core.set_remote(Some(feed.clone()));
        let mut out = Output::default();
        core.feedback(2_010 * MS, &mut out);
        assert!(remote(&out).is_empty(), "rate-limited");
        let mut out = Output::default();
        core.feedback(2_050 * MS, &mut out);
        assert_eq!(
            remote(&out),
            vec![
                s("refused", Arg::Int(4)),
                s("studio/1/rtt", Arg::Float(81.0))
            ]
        );
        core.set_remote(None);
        let mut out = Output::default();
        core.feedback(3_000 * MS, &mut out);
        assert!(remote(&out).is_empty(), "no remote session: nothing");
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
