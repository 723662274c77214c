//! Lockstep's headless CLAP host: the code behind `cargo xtask run` and the end-to-end tests.
//!
//! It loads the *built* `Lockstep.clap` the way a DAW does (dlopen, CLAP entry, factory,
//! instance, activate, process), so what the tests exercise is exactly what users run.
//!
//! # Layout
//! - [`host`]: the clack-host handlers, loading, instantiating, parameters and state.
//! - [`transport`]: the internal host transport (tempo, time signature, play/stop, locate,
//!   loop, pre-roll) turned into a CLAP transport event per block.
//! - [`processor`]: an activated instance and its preallocated audio and event buffers.
//! - [`responder`]: a minimal AppleMIDI responder for the benchmarks.
//! - [`runner`]: real-time paced processing on an audio thread with live status, for the
//!   headless runner binary (`src/bin/lockstep-headless.rs`).
//! - [`status`]: reading the plugin's `lockstep_status_json` symbol.
//! - [`attack`]: scripted attacks on a running Lockstep (attack suite and its bench rows).
//! - [`bundle`]: where the built bundles live.
//! - [`cli`]: the runner's command line.
//! - [`harness`]: helpers for the end-to-end tests.
//! - [`pcap`]: writes datagrams to a pcap file for tshark's dissectors.
//! - [`link`]: comparing Lockstep's Link beat with a real Link peer's (tests and bench).
//! - [`wanlab`]: an emulated WAN of namespaces: two home LANs behind NAT routers and a server.
//! - [`remote_lab`]: remote sessions on that WAN: runners as studios, the one-grid scenario.

#![warn(missing_docs)]

pub mod ardour;
pub mod attack;
pub mod bundle;
pub mod cli;
pub mod harness;
pub mod host;
pub mod link;
pub mod pcap;
pub mod processor;
pub mod remote_lab;
pub mod responder;
pub mod runner;
pub mod status;
pub mod transport;
pub mod wanlab;
