//! Timed changes: OSC bundles carry an NTP time tag, and their messages apply together at that
//! time. [`OscCore`] turns the tag into host time (through the wall clock's offset, which the
//! driver keeps up to date), applies bundles that are already due at once (counting those more
//! than [`LATE_AFTER`] late), refuses those more than [`MAX_HORIZON`] ahead, and keeps the rest
//! in a schedule sorted by due time and bounded to [`MAX_SCHEDULED`] changes. The driver takes
//! what falls due with [`OscCore::take_due`] and stamps it on the right sample.

use std::net::SocketAddr;

use super::{LATE_AFTER, MAX_HORIZON, MAX_SCHEDULED, Nanos, OscCore, Output, TimedChange};
use crate::params::HostParamChange;
use crate::proto::osc::{self, Packet};

impl OscCore {
    /// The wall clock's offset from the host clock (Unix ns − host ns), for time tags.
    pub fn set_wall_offset(&mut self, unix_minus_host_ns: f64) {
        self.wall_offset_ns = unix_minus_host_ns;
    }

    /// Host time of an NTP time tag.
    fn host_time_of(&self, tag: u64) -> f64 {
        osc::timetag_to_unix(tag) * 1e9 - self.wall_offset_ns
    }

    /// A change for instance `id`: at once, or scheduled for the bundle being handled.
    pub(super) fn emit(&mut self, id: u64, change: HostParamChange, out: &mut Output) {
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

    /// When the earliest timed change is due (host ns), if any is waiting.
    pub fn next_due(&self) -> Option<Nanos> {
        self.scheduled.front().map(|(d, _, _)| *d)
    }

    /// Timed changes due within `lookahead` of `now`, with their due host time.
    pub fn take_due(&mut self, now: Nanos, lookahead: Nanos) -> Vec<TimedChange> {
        let n = self
            .scheduled
            .partition_point(|(d, _, _)| *d <= now + lookahead);
        self.scheduled.drain(..n).collect()
    }

    pub(super) fn handle_packet(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        packet: &Packet,
        out: &mut Output,
    ) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::osc::{Arg, Message};
    use crate::worker::osc::MS;
    use crate::worker::osc::tests::{PHONE, SECOND_NS, errors, specs};

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
}
