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
//!
//! # Layout
//! One concern a file, under `osc/`; the public types are re-exported here, so every path
//! is `crate::worker::osc::…`.
//! - `core`: [`OscCore`]'s state, what it asks for ([`Output`], [`TransportRequest`],
//!   [`TimedChange`]), and the instance registry (names, prefixes, current values).
//! - `dispatch`: datagrams in: decode, the bridge's own commands, addresses to parameter
//!   changes, transport requests, `/lockstep/error` replies.
//! - `access`: the allow-list ([`Subnet`], [`allowed_by_default`]) and the per-source rate limit.
//! - `schedule`: time-tagged bundles, the bounded schedule of timed changes.
//! - `mappings`: user mappings of a controller's own addresses to parameters.
//! - `feedback`: values out: dump, change-only feedback, the transport, [`LinkFeed`] and
//!   [`RemoteFeed`] feeds.
//! - `namespace`: the OSCQuery namespace as JSON, and the current value at an address.
//! - `status`: [`OscStatus`], the counters.
//! - `server`: [`OscServer`], the sockets (UDP, and TCP with SLIP or size-prefixed framing).
//! - `tests` (tests only): fixtures the unit tests share; each file holds its own tests.

mod access;
mod core;
mod dispatch;
mod feedback;
mod mappings;
mod namespace;
mod schedule;
mod server;
mod status;
#[cfg(test)]
mod tests;

pub use self::access::{Subnet, allowed_by_default};
pub use self::core::{OscCore, Output, TimedChange, TransportRequest};
pub use self::feedback::{LinkFeed, REMOTE_FEED_STUDIOS, RemoteFeed, StudioFeed};
pub use self::server::{MAX_STREAMS, OscServer};
pub use self::status::OscStatus;

/// Nanoseconds on the worker's clock.
pub type Nanos = u64;

const MS: Nanos = 1_000_000;
/// Largest datagram we accept (bigger ones are refused and counted).
pub const MAX_PACKET: usize = 8192;
/// Messages per second one source may send (burst twice that).
pub const RATE_PER_SOURCE: f64 = crate::settings::DEFAULT_OSC_RATE_LIMIT;
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
/// Most feedback destinations kept (subscribers, and recent senders, each).
pub const MAX_SUBSCRIBERS: usize = 32;
/// Most of those from one host (address), of each kind.
pub const MAX_FEEDBACK_PER_HOST: usize = 4;
