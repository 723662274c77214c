//! The peer datagram framing (digest 2, §8.5): every datagram between remote peers, sealed
//! with ChaCha20-Poly1305 under a per-direction key from [`super::keys`].
//!
//! ```text
//! 0     : 0xD1                 Lockstep frame v1
//! 1     : key epoch
//! 2..10 : seq, u64 big-endian, per direction and epoch, from 0, never reused
//! 10..  : ChaCha20-Poly1305(inner type u8 ‖ payload) ‖ tag (16)
//! nonce = 00 00 00 00 ‖ seq (big-endian);  AD = bytes 0..10
//! ```
//!
//! Inner messages ([`Inner`]; integers and floats big-endian):
//!
//! | type | name | payload |
//! |---|---|---|
//! | 1 | RTP-MIDI | an RTP-MIDI packet, opaque here |
//! | 2 | RS | a receiver-feedback body, opaque here |
//! | 3 | ping | `t1` u64: sender's send time, ns |
//! | 4 | pong | `t1` u64 (echoed), `t2` u64 (ping received), `t3` u64 (pong sent), ns |
//! | 5 | timeline | 49 bytes, see below |
//! | 6 | bye | empty |
//!
//! Timeline: tempo f64 (BPM, Link's range) ‖ beat origin f64 (beats) ‖ time origin i64 (ns on
//! the *sender's* clock, at which the beat origin falls; the receiver maps it through its
//! offset estimate of the sender) ‖ playing u8 (0 or 1) ‖ quantum f64 (beats, in (0, 1024]) ‖
//! generation u64 ‖ author (8-byte peer id) — like Link's `tmln` plus start/stop and quantum,
//! with the version the session orders changes by (see [`super::grid`]).
//!
//! Fixed-size payloads must have exactly their size; anything else is [`OpenError::BadInner`].
//! 27 bytes of overhead; every datagram is at most [`MAX_DATAGRAM`] (1200) bytes so TURN and
//! IPv6 paths never fragment it. Byte 0 is ≥ 0xC0, so a datagram never looks like STUN
//! (0x00–0x03), ChannelData (0x40–0x7F) or RTP/RTCP (0x80–0xBF) on a shared socket (§5.7).
//!
//! A [`Sealer`] per direction numbers datagrams from 0 and refuses to wrap; an [`Opener`] per
//! peer checks the epoch, then a 128-bit sliding [`ReplayWindow`] ([`super::replay`]), then the
//! tag, and only then records the sequence number, so a forged datagram can never move the
//! window. Neither
//! allocates: callers pass the output buffers.

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use thiserror::Error;

use super::keys::{DatagramKey, PeerId};
use super::replay::{ReplayError, ReplayWindow};
use crate::proto::link::TEMPO_RANGE;

/// Byte 0 of every Lockstep datagram (frame version 1).
pub const FRAME_V1: u8 = 0xD1;
/// Bytes before the ciphertext: marker, epoch, sequence number.
pub const HEADER_LEN: usize = 10;
/// Poly1305 tag bytes.
pub const TAG_LEN: usize = 16;
/// Bytes a datagram adds to its payload: header, inner type, tag.
pub const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 1200;
/// Largest payload an inner message may carry.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD;
/// Bytes of a timeline payload.
pub const TIMELINE_LEN: usize = 49;

const RTP_MIDI: u8 = 1;
const RS: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
const TIMELINE: u8 = 5;
const BYE: u8 = 6;

/// Largest quantum a timeline may carry, in beats.
const MAX_QUANTUM: f64 = 1024.0;
/// The largest beat a timeline may carry: a year at 999 BPM is 5.3e8 beats, and an f64 still
/// resolves a microsecond of beat time at this magnitude.
pub const MAX_BEAT: f64 = 1e10;

/// Why a message was not sealed. Nothing was sent and no sequence number was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SealError {
    /// The payload is longer than [`MAX_PAYLOAD`].
    #[error("payload of {len} bytes exceeds {MAX_PAYLOAD}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
    },
    /// The output buffer is shorter than the datagram.
    #[error("output buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// The datagram's length.
        needed: usize,
    },
    /// A timeline the receiver would refuse (see [`RemoteTimeline::is_valid`]).
    #[error("timeline out of range")]
    InvalidTimeline,
    /// Every sequence number of this epoch is used: rekey with a new epoch.
    #[error("sequence numbers exhausted for this epoch")]
    Exhausted,
}

/// Why a datagram was refused. The caller counts these; none changes the [`Opener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpenError {
    /// Empty, or byte 0 is not [`FRAME_V1`]: another protocol's datagram (or a newer frame).
    #[error("not a lockstep frame")]
    NotOurs,
    /// Longer than [`MAX_DATAGRAM`]; we never send such datagrams.
    #[error("datagram longer than {MAX_DATAGRAM} bytes")]
    TooLarge,
    /// Shorter than header, inner type and tag.
    #[error("truncated frame")]
    Truncated,
    /// Sealed under another key epoch (the value): the peer rekeyed, or it is stale.
    #[error("key epoch {0} is not the current one")]
    WrongEpoch(u8),
    /// The tag does not verify: corrupted, forged, or sealed with another key.
    #[error("authentication failed")]
    Forged,
    /// This sequence number was already opened.
    #[error("replayed frame")]
    Replayed,
    /// The sequence number is [`super::replay::REPLAY_WINDOW`] or more behind the highest one
    /// opened.
    #[error("frame too old for the replay window")]
    TooOld,
    /// Authentic, but the inner type is unknown or its payload malformed.
    #[error("malformed inner message")]
    BadInner,
}

impl From<ReplayError> for OpenError {
    fn from(error: ReplayError) -> Self {
        match error {
            ReplayError::Replayed => OpenError::Replayed,
            ReplayError::TooOld => OpenError::TooOld,
        }
    }
}

/// The shared timeline, as peers exchange it (inner type 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemoteTimeline {
    /// Tempo in beats per minute, within Link's range.
    pub tempo_bpm: f64,
    /// The beat that falls at `time_origin_ns`.
    pub beat_origin: f64,
    /// Nanoseconds on the sender's clock at which `beat_origin` falls (the receiver maps it
    /// through its estimate of the sender's clock offset).
    pub time_origin_ns: i64,
    /// Transport playing.
    pub playing: bool,
    /// Beats per quantum (phase alignment unit), positive.
    pub quantum: f64,
    /// The timeline's version: raised by every change made while in the session.
    pub generation: u64,
    /// The peer whose change this timeline is.
    pub author: PeerId,
}

impl RemoteTimeline {
    /// Finite values, a tempo within Link's range, a beat within ±[`MAX_BEAT`] and a quantum
    /// in (0, 1024] beats: what an
    /// honest peer sends. [`Sealer::seal`] refuses anything else and [`Opener::open`] reports
    /// it as [`OpenError::BadInner`].
    pub fn is_valid(&self) -> bool {
        (TEMPO_RANGE.0..=TEMPO_RANGE.1).contains(&self.tempo_bpm)
            && self.beat_origin.is_finite()
            && self.beat_origin.abs() <= MAX_BEAT
            && self.quantum > 0.0
            && self.quantum <= MAX_QUANTUM
    }

    fn encode(&self) -> [u8; TIMELINE_LEN] {
        let mut out = [0u8; TIMELINE_LEN];
        out[0..8].copy_from_slice(&self.tempo_bpm.to_be_bytes());
        out[8..16].copy_from_slice(&self.beat_origin.to_be_bytes());
        out[16..24].copy_from_slice(&self.time_origin_ns.to_be_bytes());
        out[24] = u8::from(self.playing);
        out[25..33].copy_from_slice(&self.quantum.to_be_bytes());
        out[33..41].copy_from_slice(&self.generation.to_be_bytes());
        out[41..49].copy_from_slice(&self.author.0);
        out
    }

    fn decode(bytes: &[u8; TIMELINE_LEN]) -> Option<Self> {
        let f64_at = |i: usize| f64::from_be_bytes(be8(&bytes[i..i + 8]));
        let timeline = Self {
            tempo_bpm: f64_at(0),
            beat_origin: f64_at(8),
            time_origin_ns: i64::from_be_bytes(be8(&bytes[16..24])),
            playing: match bytes[24] {
                0 => false,
                1 => true,
                _ => return None,
            },
            quantum: f64_at(25),
            generation: u64::from_be_bytes(be8(&bytes[33..41])),
            author: PeerId(be8(&bytes[41..49])),
        };
        timeline.is_valid().then_some(timeline)
    }
}

/// An inner message: what a datagram carries once opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Inner<'a> {
    /// An RTP-MIDI packet.
    RtpMidi(&'a [u8]),
    /// A receiver-feedback (RS) body.
    Rs(&'a [u8]),
    /// A clock probe.
    Ping {
        /// Sender's clock when sending, ns.
        t1_ns: u64,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's `t1_ns`, echoed.
        t1_ns: u64,
        /// Answerer's clock when the ping arrived, ns.
        t2_ns: u64,
        /// Answerer's clock when sending this pong, ns.
        t3_ns: u64,
    },
    /// The sender's view of the shared timeline.
    Timeline(RemoteTimeline),
    /// The sender leaves the session.
    Bye,
}

impl<'a> Inner<'a> {
    /// The inner type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Inner::RtpMidi(_) => RTP_MIDI,
            Inner::Rs(_) => RS,
            Inner::Ping { .. } => PING,
            Inner::Pong { .. } => PONG,
            Inner::Timeline(_) => TIMELINE,
            Inner::Bye => BYE,
        }
    }

    /// Writes type ‖ payload into `out` (which holds at least `1 + MAX_PAYLOAD` bytes) and
    /// returns the length.
    fn encode(&self, out: &mut [u8]) -> Result<usize, SealError> {
        let mut fixed = [0u8; TIMELINE_LEN];
        let payload: &[u8] = match *self {
            Inner::RtpMidi(bytes) | Inner::Rs(bytes) => bytes,
            Inner::Ping { t1_ns } => {
                fixed[..8].copy_from_slice(&t1_ns.to_be_bytes());
                &fixed[..8]
            }
            Inner::Pong {
                t1_ns,
                t2_ns,
                t3_ns,
            } => {
                for (i, t) in [t1_ns, t2_ns, t3_ns].into_iter().enumerate() {
                    fixed[i * 8..i * 8 + 8].copy_from_slice(&t.to_be_bytes());
                }
                &fixed[..24]
            }
            Inner::Timeline(timeline) => {
                if !timeline.is_valid() {
                    return Err(SealError::InvalidTimeline);
                }
                fixed = timeline.encode();
                &fixed
            }
            Inner::Bye => &[],
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(SealError::PayloadTooLarge { len: payload.len() });
        }
        out[0] = self.type_byte();
        out[1..=payload.len()].copy_from_slice(payload);
        Ok(1 + payload.len())
    }

    /// Reads type ‖ payload.
    fn decode(plain: &'a [u8]) -> Result<Self, OpenError> {
        let (&kind, payload) = plain.split_first().ok_or(OpenError::BadInner)?;
        let u64_at = |i: usize| u64::from_be_bytes(be8(&payload[i..i + 8]));
        Ok(match (kind, payload.len()) {
            (RTP_MIDI, _) => Inner::RtpMidi(payload),
            (RS, _) => Inner::Rs(payload),
            (PING, 8) => Inner::Ping { t1_ns: u64_at(0) },
            (PONG, 24) => Inner::Pong {
                t1_ns: u64_at(0),
                t2_ns: u64_at(8),
                t3_ns: u64_at(16),
            },
            (TIMELINE, TIMELINE_LEN) => {
                let bytes = payload.try_into().map_err(|_| OpenError::BadInner)?;
                Inner::Timeline(RemoteTimeline::decode(bytes).ok_or(OpenError::BadInner)?)
            }
            (BYE, 0) => Inner::Bye,
            _ => return Err(OpenError::BadInner),
        })
    }
}

/// An 8-byte slice as an array; callers slice exactly 8 bytes.
fn be8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(bytes);
    out
}

fn nonce(seq: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::from(nonce)
}

fn cipher(key: &DatagramKey) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&Key::from(*key.as_bytes()))
}

/// Is this datagram a Lockstep frame (byte 0)? For demultiplexing a shared socket.
pub fn is_frame(datagram: &[u8]) -> bool {
    datagram.first() == Some(&FRAME_V1)
}

/// Seals one direction's datagrams: key, epoch, next sequence number.
pub struct Sealer {
    /// ChaCha20-Poly1305 keyed with this direction's key (wiped on drop by the crate).
    cipher: ChaCha20Poly1305,
    /// Key epoch written into byte 1.
    epoch: u8,
    /// The next sequence number; `None` once `u64::MAX` has been used.
    next_seq: Option<u64>,
}

impl Sealer {
    /// A sealer for `key` at `epoch`, numbering from 0.
    pub fn new(key: &DatagramKey, epoch: u8) -> Self {
        Self {
            cipher: cipher(key),
            epoch,
            next_seq: Some(0),
        }
    }

    /// The key epoch.
    pub fn epoch(&self) -> u8 {
        self.epoch
    }

    /// The sequence number the next datagram will carry (`None`: exhausted).
    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// Seals `inner` into `out` and returns the datagram's length. On error nothing is
    /// written that matters and the sequence number is not used.
    pub fn seal(&mut self, inner: &Inner<'_>, out: &mut [u8]) -> Result<usize, SealError> {
        let mut plain = [0u8; 1 + MAX_PAYLOAD];
        let plain_len = inner.encode(&mut plain)?;
        let len = HEADER_LEN + plain_len + TAG_LEN;
        if out.len() < len {
            return Err(SealError::BufferTooSmall { needed: len });
        }
        let seq = self.next_seq.ok_or(SealError::Exhausted)?;
        let (header, body) = out.split_at_mut(HEADER_LEN);
        header[0] = FRAME_V1;
        header[1] = self.epoch;
        header[2..].copy_from_slice(&seq.to_be_bytes());
        let (text, rest) = body.split_at_mut(plain_len);
        text.copy_from_slice(&plain[..plain_len]);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(seq), header, InOutBuf::from(text))
            .expect("ChaCha20-Poly1305 seals up to 256 GiB; a datagram is at most 1200 bytes");
        rest[..TAG_LEN].copy_from_slice(&tag);
        self.next_seq = seq.checked_add(1);
        Ok(len)
    }

    /// A sealer resuming at `next_seq`, to test exhaustion.
    #[cfg(test)]
    fn at_seq(key: &DatagramKey, epoch: u8, next_seq: u64) -> Self {
        Self {
            next_seq: Some(next_seq),
            ..Self::new(key, epoch)
        }
    }
}

/// A datagram that opened: its sequence number and message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Opened<'p> {
    /// The datagram's sequence number (for loss and reordering statistics).
    pub seq: u64,
    /// The message; byte payloads borrow the caller's plaintext buffer.
    pub inner: Inner<'p>,
}

/// Opens one peer's datagrams: key, epoch, replay window.
pub struct Opener {
    /// ChaCha20-Poly1305 keyed with the peer's sending key (wiped on drop by the crate).
    cipher: ChaCha20Poly1305,
    /// The only key epoch accepted.
    epoch: u8,
    /// Sequence numbers already opened.
    window: ReplayWindow,
}

impl Opener {
    /// An opener for `key` at `epoch` with an empty replay window.
    pub fn new(key: &DatagramKey, epoch: u8) -> Self {
        Self {
            cipher: cipher(key),
            epoch,
            window: ReplayWindow::default(),
        }
    }

    /// The key epoch.
    pub fn epoch(&self) -> u8 {
        self.epoch
    }

    /// The replay window (read-only, for statistics).
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Authenticates and decrypts `datagram` into `plain`. Checks run cheapest first (marker,
    /// length, epoch, replay window, tag, inner message); the window records the sequence
    /// number only once the tag has verified, so no refusal but [`OpenError::BadInner`]
    /// changes the opener, and that one only for an authentic datagram.
    pub fn open<'p>(
        &mut self,
        datagram: &[u8],
        plain: &'p mut [u8; MAX_DATAGRAM],
    ) -> Result<Opened<'p>, OpenError> {
        if !is_frame(datagram) {
            return Err(OpenError::NotOurs);
        }
        if datagram.len() > MAX_DATAGRAM {
            return Err(OpenError::TooLarge);
        }
        if datagram.len() < OVERHEAD {
            return Err(OpenError::Truncated);
        }
        if datagram[1] != self.epoch {
            return Err(OpenError::WrongEpoch(datagram[1]));
        }
        let seq = u64::from_be_bytes(be8(&datagram[2..HEADER_LEN]));
        self.window.check(seq)?;
        let (header, body) = datagram.split_at(HEADER_LEN);
        let (text, tag) = body.split_at(body.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| OpenError::Truncated)?;
        let out = &mut plain[..text.len()];
        let buf = InOutBuf::new(text, out).map_err(|_| OpenError::Truncated)?;
        self.cipher
            .decrypt_inout_detached(&nonce(seq), header, buf, &tag)
            .map_err(|_| OpenError::Forged)?;
        self.window.accept(seq);
        let inner = Inner::decode(&plain[..text.len()])?;
        Ok(Opened { seq, inner })
    }
}

#[cfg(test)]
mod tests;
