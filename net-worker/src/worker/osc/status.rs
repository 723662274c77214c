//! What the OSC bridge reports about itself: [`OscStatus`], the counters (received, applied,
//! refused and why), the feedback destinations and the last few messages, as the worker
//! publishes them to the editor, the headless runner and the tests. [`OscCore`] keeps the
//! counters as it goes; [`OscCore::status`] adds what is derived (the subscribers, the
//! schedule's length, the recent messages) when a snapshot is asked for, and the server adds
//! its port, socket errors and TCP clients on top.

pub use crate::status::osc::OscStatus;

use super::OscCore;

impl OscCore {
    /// Status with counters.
    pub fn status(&self) -> OscStatus {
        let mut s = self.status.clone();
        s.scheduled = self.scheduled.len();
        s.sources = self.buckets.len();
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
        s.last_messages = self
            .last_messages
            .iter()
            .map(|(m, from)| {
                let args: Vec<String> = m.args.iter().map(|a| format!("{a:?}")).collect();
                format!("{} {} from {from}", m.address, args.join(" "))
            })
            .collect();
        s
    }

    /// `n` changes were superseded by a newer one of the same parameter in the same pass.
    pub fn merged(&mut self, n: u64) {
        self.status.merged += n;
    }

    /// The plugin's inbox for instance `id` was full: count it.
    pub fn dropped(&mut self, n: u64) {
        self.status.dropped_full += n;
    }
}
