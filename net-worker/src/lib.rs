//! Lockstep's network side: everything that runs off the audio thread.
//!
//! # Layout
//! - [`bridge`]: every `Copy` type that crosses the audio-thread boundary (the per-block
//!   [`bridge::TransportSnapshot`], [`bridge::BridgeEvent`], the clock messages
//!   [`bridge::ClockEvent`]), the host monotonic clock, and the ring-buffer pair constructor
//!   whose audio end never allocates, locks or blocks.
//! - [`clock`]: the clock engine (transport → MIDI clock, Start/Stop/Continue, SPP, stamped
//!   with sample position and smoothed host time), its estimator and its reference model.
//! - [`proto`]: sans-IO protocol cores (AppleMIDI, RTP-MIDI, OSC, Link, and the remote-session
//!   pieces: session code, keys, sealed peer datagrams, WAN clock offset).
//! - [`params`]: the plugin's parameters as remote control sees them (ids, ranges, host values).
//! - [`worker`]: the one network worker per process: an event-driven thread (`lockstep-net`)
//!   started by the first plugin instance that activates and joined when the last one goes,
//!   plus its clock send path (`lockstep-send`); see its own `# Layout`.
//! - [`settings`]: the persistent (saved-with-the-project) network settings.
//! - [`status`]: the serialisable status snapshot (one submodule per protocol) that the worker
//!   publishes and the headless runner, the tests and the editor read.
//! - [`sys`]: the few OS-specific calls (thread priority, timer precision, kernel receive
//!   timestamps), one body per OS.
//! - [`health`]: the green / amber / red / grey judgement that log entries and editor rows carry.
//! - [`log`]: the bounded event log the worker derives from successive status snapshots.
//! - [`view`]: the editor's view model, pure functions of the status.
//!
//! Types flow down, never up: [`bridge`], [`proto`], [`params`], [`settings`], [`health`] and
//! [`sys`] import nothing from the rest of this crate; [`clock`] builds on [`bridge`] (and
//! turns its messages into [`proto`]'s RTP-MIDI commands); [`status`] holds plain data built
//! from [`bridge`] and [`clock`] types; [`log`] reads [`status`] and [`health`]; [`view`] reads
//! [`status`], [`health`] and [`clock`], and nothing in this crate imports it; [`worker`] uses
//! all of them and nothing imports it.
//!
//! This crate never depends on nice-plug: the plugin converts the host's transport into bridge
//! types, and everything here can be tested without a plugin host.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bridge;
pub mod clock;
pub mod health;
pub mod log;
pub mod params;
pub mod proto;
mod rng;
pub mod settings;
pub mod status;
pub mod sys;
pub mod view;
pub mod worker;
