//! User mappings: a controller's own addresses (a TouchOSC fader's `/1/fader1`, an XY pad's
//! second argument) bound to a parameter, with input and output ranges and a curve.
//! [`OscCore`] compiles each mapping's address once, applies every mapping whose address a
//! message matches (a discrete parameter lands on a step), and marks which mappings can take
//! feedback: a literal address used by one mapping of a single argument (the feedback itself
//! goes out with the rest, in `feedback`).

use std::net::SocketAddr;

use super::{Nanos, OscCore, Output};
use crate::params::{HostParamChange, Remote};
use crate::proto::osc::{Arg, Message, pattern};
use crate::settings::OscMapping;

impl OscCore {
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
            if instance.specs[index].remote == Remote::Never {
                self.status.mapping_errors.push(format!(
                    "{} → {}: remote control can never switch itself off",
                    m.address, m.param
                ));
                continue;
            }
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

    /// Apply user mappings matching `m`'s address; true if any did.
    pub(super) fn handle_mapped(
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
            if self.refuse_unsettable(id, from, &m.address, out) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::osc::{self, Packet};
    use crate::worker::osc::MS;
    use crate::worker::osc::tests::{PHONE, errors, send, specs};

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
}
