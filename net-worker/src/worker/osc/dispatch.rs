//! Messages in: what [`OscCore`] does with a datagram. It checks the source, size and rate
//! (those refusals are only counted), decodes, answers `/lockstep/dump`, `/lockstep/subscribe`
//! and `/lockstep/unsubscribe`, passes transport requests to a host that takes them, tries the
//! user's mappings, and otherwise matches the address (a pattern may reach several parameters
//! of several instances) and turns the first argument into a host parameter change (real
//! units, normalized, or an enum's name). Every other mistake is counted and answered on
//! `/lockstep/error`.

use std::net::SocketAddr;

use super::core::{MAX_RESOLVED, Resolved};
use super::{
    MAX_FEEDBACK_PER_HOST, MAX_PACKET, MAX_SUBSCRIBERS, Nanos, OscCore, Output, RECENT_SENDER,
    TransportRequest,
};
use crate::params::{HostParamChange, ValueError};
use crate::proto::osc::{self, Arg, Message};

/// Messages in a packet, nested bundles included.
fn message_count(packet: &osc::Packet) -> usize {
    match packet {
        osc::Packet::Message(_) => 1,
        osc::Packet::Bundle { elements, .. } => elements.iter().map(message_count).sum(),
    }
}

impl OscCore {
    /// Whether the host application takes transport requests.
    pub fn set_transport_control(&mut self, on: bool) {
        self.transport_control = on;
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
        self.now = now;
        if !self.allowed(from.ip()) {
            self.status.refused_source += 1;
            return;
        }
        if bytes.len() > MAX_PACKET {
            self.status.too_large += 1;
            return;
        }
        if !self.charge(now, from.ip(), 1.0) {
            self.status.rate_limited += 1;
            return;
        }
        match osc::decode(bytes) {
            Ok(packet) => {
                // Every message of a bundle counts; a bundle applies whole or not at all.
                let messages = message_count(&packet);
                if messages > 1 && !self.charge(now, from.ip(), (messages - 1) as f64) {
                    self.status.rate_limited += messages as u64;
                    return;
                }
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
        let from_host = self
            .recent
            .iter()
            .filter(|(a, _)| a.ip() == from.ip())
            .count();
        if self.recent.len() < MAX_SUBSCRIBERS && from_host < MAX_FEEDBACK_PER_HOST {
            self.recent.push((from, now));
        }
    }

    pub(super) fn handle_message(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        m: &Message,
        out: &mut Output,
    ) {
        if self.last_messages.len() == 8 {
            self.last_messages.pop_front();
        }
        self.last_messages.push_back((m.clone(), from));
        match m.address.as_str() {
            "/lockstep/dump" => return self.dump(from, out),
            "/lockstep/subscribe" => {
                let port = match m.args.first() {
                    Some(Arg::Int(p)) if (1..=65535).contains(p) => *p as u16,
                    _ => from.port(),
                };
                let to = SocketAddr::new(from.ip(), port);
                let from_host = self
                    .subscribers
                    .iter()
                    .filter(|a| a.ip() == to.ip())
                    .count();
                // One host cannot take every feedback slot (32) by subscribing many ports.
                if !self.subscribers.contains(&to)
                    && self.subscribers.len() < MAX_SUBSCRIBERS
                    && from_host < MAX_FEEDBACK_PER_HOST
                {
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
        let (targets, closed) = match self.resolve(&m.address) {
            Ok(resolved) => resolved,
            Err(e) => {
                self.status.unknown_address += 1;
                return self.error(from, &m.address, &format!("bad address pattern: {e}"), out);
            }
        };
        if targets.is_empty() && !closed.is_empty() {
            self.status.not_exposed += 1;
            return self.error(
                from,
                &m.address,
                &format!(
                    "{} cannot be set remotely (open it in Lockstep's OSC settings)",
                    closed.join(", ")
                ),
                out,
            );
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
            if self.refuse_unsettable(id, from, &m.address, out) {
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

    /// What `address` reaches (remembered: a controller sends the same few addresses over and
    /// over, and matching one against every parameter's two forms costs dozens of strings).
    fn resolve(&mut self, address: &str) -> Result<Resolved, String> {
        if let Some(hit) = self.resolved.get(address) {
            return Ok(hit.clone());
        }
        let pattern = self.cache.get(address).map_err(|e| e.to_string())?.clone();
        let mut targets = Vec::new();
        let mut closed = Vec::new();
        for (&id, instance) in &self.instances {
            let prefixes = [self.prefix(id), format!("/lockstep/{}", instance.name)];
            for (index, spec) in instance.specs.iter().enumerate() {
                for prefix in &prefixes {
                    let real = format!("{prefix}/param/{}", spec.id);
                    let normalized = format!("{real}/normalized");
                    let hit = if pattern.matches(&real) {
                        Some(false)
                    } else if pattern.matches(&normalized) {
                        Some(true)
                    } else {
                        None
                    };
                    if let Some(normalized) = hit {
                        // A pattern reaches only what remote control may set.
                        if instance.exposed[index] {
                            targets.push((id, index, normalized));
                        } else {
                            closed.push(spec.id.clone());
                        }
                        break;
                    }
                }
            }
        }
        if self.resolved.len() >= MAX_RESOLVED {
            self.resolved.clear();
        }
        self.resolved
            .insert(address.to_owned(), (targets.clone(), closed.clone()));
        Ok((targets, closed))
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

    /// Answer `to` on `/lockstep/error` (a reply costs a token of its rate limit, so errors
    /// are never a way to make Lockstep send more than it receives).
    pub(super) fn error(&mut self, to: SocketAddr, address: &str, why: &str, out: &mut Output) {
        if !self.charge(self.now, to.ip(), 1.0) {
            self.status.replies_limited += 1;
            return;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ParamKind, ParamSpec, Remote};
    use crate::worker::osc::MS;
    use crate::worker::osc::tests::{PHONE, errors, send, specs};

    #[test]
    fn an_instance_without_a_host_layer_refuses_changes_with_an_error() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        core.set_settable(1, false);
        let phone = SocketAddr::from(PHONE);
        let out = send(
            &mut core,
            phone,
            Message::new("/lockstep/param/mac_1", vec![Arg::Float(0.5)]),
        );
        assert!(out.changes.is_empty(), "nothing may be queued for it");
        let errors = errors(&out);
        assert_eq!(errors.len(), 1, "the sender hears why");
        assert!(
            matches!(&errors[0].args[..], [Arg::Str(a), Arg::Str(why)]
                if a == "/lockstep/param/mac_1" && why.contains("no way in")),
            "{errors:?}"
        );
        assert_eq!(core.status().no_host_layer, 1);
        assert_eq!(core.status().applied, 0);
    }

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
    fn the_osc_switches_are_honoured() {
        let mut specs = specs();
        for (id, remote) in [("osc_on", Remote::Never), ("osc_fb", Remote::OptIn)] {
            specs.push(ParamSpec {
                id: id.into(),
                name: id.into(),
                kind: ParamKind::Bool,
                clap_id: 20,
                default: 1.0,
                remote,
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

    /// The lock-out: the 8-byte datagram `//` with `F` switched every output and OSC
    /// Control itself off. Now a pattern reaches only what remote control may set; switches
    /// open only when the user opens them; OSC Control never.
    #[test]
    fn remote_control_sets_only_what_the_user_exposed() {
        let mut specs = specs();
        for (id, remote) in [("osc_on", Remote::Never), ("clk_on", Remote::OptIn)] {
            specs.push(ParamSpec {
                id: id.into(),
                name: id.into(),
                kind: ParamKind::Bool,
                clap_id: if id == "osc_on" { 20 } else { 21 },
                default: 1.0,
                remote,
            });
        }
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs);
        let phone = SocketAddr::from(PHONE);
        let out = send(&mut core, phone, Message::new("//", vec![Arg::False]));
        let ids: Vec<u32> = out.changes.iter().map(|(_, c)| c.clap_id).collect();
        assert!(!ids.contains(&20) && !ids.contains(&21), "{ids:?}");
        assert!(ids.contains(&13), "the macro is open: {ids:?}");
        for id in ["osc_on", "clk_on"] {
            let out = send(
                &mut core,
                phone,
                Message::new(format!("/lockstep/param/{id}"), vec![Arg::False]),
            );
            assert!(out.changes.is_empty(), "{id}");
            assert_eq!(errors(&out).len(), 1, "{id} is refused with a reason");
        }
        assert_eq!(core.status().not_exposed, 2);
        let access = |core: &OscCore, id: &str| {
            core.namespace()["CONTENTS"]["lockstep"]["CONTENTS"]["param"]["CONTENTS"][id]["ACCESS"]
                .clone()
        };
        assert_eq!(access(&core, "clk_on"), 1, "read only in OSCQuery");
        assert_eq!(access(&core, "mac_1"), 3);
        // The user opens Clock Out; OSC Control stays closed whatever the settings say.
        core.set_exposed(1, &["clk_on".into(), "osc_on".into()]);
        assert_eq!(core.status().errors.len(), 1, "{:?}", core.status().errors);
        assert_eq!(access(&core, "clk_on"), 3);
        let out = send(&mut core, phone, Message::new("//", vec![Arg::False]));
        let ids: Vec<u32> = out.changes.iter().map(|(_, c)| c.clap_id).collect();
        assert!(ids.contains(&21) && !ids.contains(&20), "{ids:?}");
        // Nor can a mapping reach it.
        core.set_mappings(
            1,
            &[crate::settings::OscMapping {
                address: "/1/toggle1".into(),
                param: "osc_on".into(),
                ..Default::default()
            }],
        );
        assert_eq!(core.status().mapping_errors.len(), 1);
        let out = send(
            &mut core,
            phone,
            Message::new("/1/toggle1", vec![Arg::Float(0.0)]),
        );
        assert!(out.changes.is_empty());
    }

    /// One host subscribing from 32 ports, or sending from 32 ports, holds at most 4 feedback
    /// destinations of each kind: a second controller still gets feedback.
    #[test]
    fn one_host_cannot_take_every_feedback_slot() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        for port in 0..32u16 {
            let from = SocketAddr::from(([192, 168, 1, 66], 20_000 + port));
            send(
                &mut core,
                from,
                Message::new(
                    "/lockstep/subscribe",
                    vec![Arg::Int(i32::from(30_000 + port))],
                ),
            );
        }
        assert_eq!(core.subscribers.len(), MAX_FEEDBACK_PER_HOST);
        assert_eq!(core.recent.len(), MAX_FEEDBACK_PER_HOST);
        let phone = SocketAddr::from(PHONE);
        send(
            &mut core,
            phone,
            Message::new("/lockstep/subscribe", vec![]),
        );
        assert!(core.subscribers.contains(&phone));
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
}
