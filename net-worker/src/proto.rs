//! Sans-IO protocol cores: pure functions and state machines that take bytes and time and return
//! bytes, events and deadlines. Sockets and clocks live in the worker.
//!
//! - [`applemidi`]: AppleMIDI session commands (IN/OK/NO/BY/CK/RS/RL) on the control and data
//!   ports.
//! - [`rtpmidi`]: RTP-MIDI packets (RFC 6295): RTP header, MIDI command section with delta times,
//!   journal skipping and the system journal's Chapter Q.
//! - [`osc`]: OSC 1.0/1.1 messages, bundles, time tags, stream framings and pattern matching.
//! - [`link`]: Ableton Link's discovery and measurement messages.
//! - [`mqtt`]: an MQTT 3.1.1 client core for the remote session's rendezvous.
//! - [`remote`]: remote sessions over the internet: the session code, keys from it, the sealed
//!   peer datagram framing, and the WAN clock offset estimator with its probe pacer.

pub mod applemidi;
pub mod link;
pub mod mqtt;
pub mod osc;
pub mod remote;
pub mod rtpmidi;
