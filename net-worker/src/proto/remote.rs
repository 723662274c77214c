//! Remote sessions over the internet (digest 2, §8–9): the sans-IO building blocks that do not
//! depend on how peers find each other. Nothing here opens a socket, starts a thread or reads a
//! clock: callers pass bytes and times (`u64` nanoseconds of their monotonic clock) in and get
//! bytes, keys and estimates out. Remote input never panics; every refusal is a small typed
//! error the caller can count.
//!
//! # Layout
//! - [`code`]: the human session code `<room>-<secret>` (§8.3): parsing with normalisation
//!   (case, separators, look-alike characters), a conservative strength check, and fresh codes
//!   from the OS random source.
//! - [`keys`]: keys from a code (§8.4): Argon2id to a 32-byte root key, then HKDF-SHA256 per
//!   purpose (the rendezvous sealing key, one datagram key per direction). Keys are wiped on
//!   drop.
//! - [`frame`]: the peer datagram framing (§8.5): a ChaCha20-Poly1305 [`frame::Sealer`] per
//!   direction and an [`frame::Opener`] per peer, and the inner messages (RTP-MIDI, RS, ping,
//!   pong, timeline, bye).
//! - [`replay`]: the 128-bit sliding replay window an opener keeps per (peer, epoch).
//! - [`rendezvous`]: the sealed MQTT rendezvous messages (§8.3): topics, the JSON payload,
//!   XChaCha20-Poly1305 sealing with the topic as associated data, and the per-peer sequence
//!   book that refuses replays; times are the caller's wall-clock milliseconds.
//! - [`offset`]: the NTP-style clock offset and drift estimator over a WAN path (§9), with a
//!   slewed peer-time mapping.
//! - [`probe`]: when to send the next ping and how long to wait for its pong (§9).
//! - [`grid`]: the shared beat grid: which change wins, how it maps through the clock offsets,
//!   when it goes out.
//! - [`session`]: one remote session: rendezvous, ICE (rice-proto), clock probes and the grid
//!   per peer.
//! - [`turn_rest`]: short-lived TURN credentials from coturn's shared secret.
//!
//! Types flow down: [`frame`] uses [`keys`] and [`replay`], [`rendezvous`] uses [`keys`] and
//! [`code`], [`keys`] uses [`code`]; [`offset`] and [`probe`] stand alone (the caller carries
//! ping/pong times from [`frame`] to [`offset`]).

pub mod code;
pub mod frame;
pub mod grid;
pub mod keys;
pub mod offset;
pub mod probe;
pub mod rendezvous;
pub mod replay;
pub mod session;
pub mod turn_rest;
