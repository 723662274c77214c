//! Sealed rendezvous messages over MQTT (digest 2, §8.3), sans-IO: topics, the JSON payload,
//! sealing and opening, and the per-peer sequence book that refuses replays.
//!
//! ```text
//! announce topic : lockstep/v1/<room>/peer/<peer id hex>   (retained; payload peer = topic peer)
//! directed topic : lockstep/v1/<room>/to/<peer id hex>     (topic peer = recipient)
//! sealed         : 0x01 ‖ nonce (24) ‖ XChaCha20-Poly1305(key = mqtt key, nonce, AD = topic, JSON)
//! JSON           : {"v":1,"peer":"<hex>","seq":n,"ts":ms,"exp":ms,"ufrag":…,"pwd":…,
//!                   "cands":[…],"eoc":bool}
//! ```
//!
//! The topic is the AEAD's associated data, so a message moved to another topic (another room,
//! another peer) fails its tag. Times are the caller's wall clock in milliseconds (`now_ms`);
//! nothing here reads a clock, opens a socket or draws randomness on its own, except
//! [`seal_random`], a convenience over [`seal`] with the OS random source.
//!
//! A sender numbers *all* its rendezvous messages (announces and directed ones) from one
//! strictly increasing counter; a receiver keeps the last number it accepted per peer in a
//! [`RendezvousBook`]. MQTT does not order messages across topics, so a receiver may see an
//! announce refused as [`OpenError::Stale`] after a newer directed message: harmless, the
//! announce is republished within 60 s.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::code::SessionCode;
use super::keys::{MqttKey, PeerId};

/// Byte 0 of every sealed rendezvous message (format version 1).
pub const SEALED_V1: u8 = 0x01;
/// Bytes of the XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its JSON: version, nonce, tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Largest sealed message sent or accepted, in bytes.
pub const MAX_SEALED: usize = 4096;
/// Most candidates one message may carry.
pub const MAX_CANDS: usize = 16;
/// Longest candidate line, in bytes.
pub const MAX_CAND_LEN: usize = 256;
/// How far ahead of the receiver's clock a message's `ts` may be, in milliseconds.
pub const MAX_FUTURE_MS: u64 = 120_000;
/// Most peers a [`RendezvousBook`] tracks: a mesh is 2 to 8 peers.
pub const MAX_PEERS: usize = 8;
/// The payload version this module speaks.
pub const PAYLOAD_VERSION: u8 = 1;

/// ICE ufrag length bounds in characters (RFC 8445 §5.3: 4 to 256 ice-chars).
const UFRAG_LEN: (usize, usize) = (4, 256);
/// ICE password length bounds in characters (RFC 8445 §5.3: 22 to 256 ice-chars).
const PWD_LEN: (usize, usize) = (22, 256);

/// Which of the two topic kinds a [`Topic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// `…/peer/<id>`: a peer's own retained announce; the payload's peer must be `<id>`.
    Announce,
    /// `…/to/<id>`: a message addressed to peer `<id>` by whoever the payload names.
    Directed,
}

/// An MQTT topic of ours: its text (the AEAD's associated data), its kind and its peer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The topic string as published; its bytes are the associated data.
    text: String,
    /// Announce or directed.
    kind: TopicKind,
    /// The announcing peer (announce) or the recipient (directed).
    peer: PeerId,
}

/// `lockstep/v1/<room>/peer/<peer hex>`: where `peer` publishes its retained announce.
pub fn announce_topic(code: &SessionCode, peer: PeerId) -> Topic {
    Topic::build(&code.room_text(), TopicKind::Announce, peer)
}

/// `lockstep/v1/<room>/to/<peer hex>`: where messages addressed to `peer` go.
pub fn directed_topic(code: &SessionCode, peer: PeerId) -> Topic {
    Topic::build(&code.room_text(), TopicKind::Directed, peer)
}

impl Topic {
    fn build(room: &str, kind: TopicKind, peer: PeerId) -> Self {
        let level = match kind {
            TopicKind::Announce => "peer",
            TopicKind::Directed => "to",
        };
        Self {
            text: format!("lockstep/v1/{room}/{level}/{peer}"),
            kind,
            peer,
        }
    }

    /// Parses a topic a message arrived on. `None` if it is not exactly one of ours (four ASCII
    /// digits of room, `peer` or `to`, 16 lowercase hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let mut levels = text.split('/');
        let (Some("lockstep"), Some("v1"), Some(room), Some(level), Some(id), None) = (
            levels.next(),
            levels.next(),
            levels.next(),
            levels.next(),
            levels.next(),
            levels.next(),
        ) else {
            return None;
        };
        if room.len() != 4 || !room.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let kind = match level {
            "peer" => TopicKind::Announce,
            "to" => TopicKind::Directed,
            _ => return None,
        };
        Some(Self::build(room, kind, parse_peer_hex(id)?))
    }

    /// The topic string, as published and as authenticated.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Announce or directed.
    pub fn kind(&self) -> TopicKind {
        self.kind
    }

    /// The announcing peer (announce) or the recipient (directed).
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// 16 lowercase hex digits → a peer id (the form `PeerId`'s `Display` writes).
fn parse_peer_hex(text: &str) -> Option<PeerId> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut id = [0u8; 8];
    for (out, pair) in id.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(PeerId(id))
}

/// One rendezvous message's payload: who, when, and the ICE data to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendezvous {
    /// Payload version, [`PAYLOAD_VERSION`].
    pub v: u8,
    /// The sender, as 16 lowercase hex digits on the wire.
    #[serde(serialize_with = "peer_to_hex", deserialize_with = "peer_from_hex")]
    pub peer: PeerId,
    /// The sender's message counter: strictly increasing over all its rendezvous messages.
    pub seq: u64,
    /// Sender's wall clock when sealed, in ms since the Unix epoch.
    pub ts: u64,
    /// Wall-clock ms after which receivers refuse the message.
    pub exp: u64,
    /// ICE username fragment (RFC 8445 §5.3: 4 to 256 ice-chars).
    pub ufrag: String,
    /// ICE password (RFC 8445 §5.3: 22 to 256 ice-chars).
    pub pwd: String,
    /// Candidate lines (`candidate:…`), at most [`MAX_CANDS`] of at most [`MAX_CAND_LEN`] bytes.
    pub cands: Vec<String>,
    /// End of candidates: the sender will trickle no more for this ufrag.
    pub eoc: bool,
}

fn peer_to_hex<S: Serializer>(peer: &PeerId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(peer)
}

fn peer_from_hex<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PeerId, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    parse_peer_hex(&text).ok_or_else(|| serde::de::Error::custom("peer is not 16 hex digits"))
}

/// RFC 8445 §5.3's ice-char: ALPHA / DIGIT / "+" / "/".
fn is_ice_chars(text: &str, (min, max): (usize, usize)) -> bool {
    (min..=max).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl Rendezvous {
    /// Checks every field's bounds; `Err` names the first bad field. Does not look at times
    /// against a clock (opening does) beyond `exp ≥ ts`.
    pub fn check_fields(&self) -> Result<(), &'static str> {
        if self.v != PAYLOAD_VERSION {
            return Err("v");
        }
        if self.exp < self.ts {
            return Err("exp");
        }
        if !is_ice_chars(&self.ufrag, UFRAG_LEN) {
            return Err("ufrag");
        }
        if !is_ice_chars(&self.pwd, PWD_LEN) {
            return Err("pwd");
        }
        let line_ok = |c: &String| {
            !c.is_empty() && c.len() <= MAX_CAND_LEN && c.bytes().all(|b| (0x20..0x7f).contains(&b))
        };
        if self.cands.len() > MAX_CANDS || !self.cands.iter().all(line_ok) {
            return Err("cands");
        }
        Ok(())
    }
}

/// Why a message was not sealed. Nothing was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SealError {
    /// A field a receiver would refuse (named).
    #[error("bad field {0}")]
    BadField(&'static str),
    /// The sealed message would exceed [`MAX_SEALED`] bytes.
    #[error("sealed message of {len} bytes exceeds {MAX_SEALED}")]
    TooLarge {
        /// The sealed length it would have had.
        len: usize,
    },
    /// The OS random source failed ([`seal_random`] only).
    #[error("the operating system's random source failed: {0}")]
    Random(getrandom::Error),
}

/// Why a message was refused. The caller counts these; none changes the [`RendezvousBook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpenError {
    /// Empty, or byte 0 is not [`SEALED_V1`] (a presence-clearing empty publish, or another
    /// version).
    #[error("not a lockstep rendezvous message")]
    NotOurs,
    /// Longer than [`MAX_SEALED`].
    #[error("message longer than {MAX_SEALED} bytes")]
    TooLarge,
    /// Shorter than version, nonce and tag.
    #[error("truncated message")]
    Truncated,
    /// The tag does not verify: corrupted, sealed with another key, or moved to another topic.
    #[error("authentication failed")]
    Forged,
    /// Authentic, but not a JSON payload of the expected shape.
    #[error("malformed payload")]
    BadJson,
    /// Authentic, but a field is out of bounds (named).
    #[error("bad field {0}")]
    BadField(&'static str),
    /// An announce whose payload names another peer than its topic.
    #[error("announce payload names another peer than its topic")]
    WrongPeer,
    /// `exp` has passed.
    #[error("message expired")]
    Expired,
    /// `ts` is more than [`MAX_FUTURE_MS`] ahead of our clock.
    #[error("message from the future")]
    FromFuture,
    /// `seq` is not above the last accepted from this peer: a replay or a reordering.
    #[error("stale sequence number")]
    Stale,
    /// A new peer, and the book already tracks [`MAX_PEERS`].
    #[error("too many peers in this room")]
    Full,
}

/// Seals `msg` for `topic` with a caller-supplied random `nonce` (24 bytes from a CSPRNG; never
/// reuse one under the same key).
pub fn seal(
    key: &MqttKey,
    topic: &Topic,
    msg: &Rendezvous,
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, SealError> {
    msg.check_fields().map_err(SealError::BadField)?;
    let json =
        serde_json::to_vec(msg).expect("a struct of strings, integers and bools always serialises");
    let len = json.len() + OVERHEAD;
    if len > MAX_SEALED {
        return Err(SealError::TooLarge { len });
    }
    Ok(seal_bytes(key, topic, &json, nonce))
}

/// [`seal`] with a nonce from the OS random source.
pub fn seal_random(key: &MqttKey, topic: &Topic, msg: &Rendezvous) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(SealError::Random)?;
    seal(key, topic, msg, nonce)
}

/// The AEAD step alone, over any plaintext (tests use it to seal hostile JSON).
fn seal_bytes(key: &MqttKey, topic: &Topic, plain: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = topic.as_str().as_bytes();
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 seals any message under 256 GiB");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(SEALED_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Authenticates and parses `sealed` as it arrived on `topic`, then checks its fields and
/// times against `now_ms`. Does not check the sequence number: [`RendezvousBook::open`] does.
pub fn open(
    key: &MqttKey,
    topic: &Topic,
    sealed: &[u8],
    now_ms: u64,
) -> Result<Rendezvous, OpenError> {
    if sealed.first() != Some(&SEALED_V1) {
        return Err(OpenError::NotOurs);
    }
    if sealed.len() > MAX_SEALED {
        return Err(OpenError::TooLarge);
    }
    if sealed.len() < OVERHEAD {
        return Err(OpenError::Truncated);
    }
    let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Truncated)?;
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let aad = topic.as_str().as_bytes();
    let json = cipher
        .decrypt(&nonce, Payload { msg: body, aad })
        .map_err(|_| OpenError::Forged)?;
    let msg: Rendezvous = serde_json::from_slice(&json).map_err(|_| OpenError::BadJson)?;
    msg.check_fields().map_err(OpenError::BadField)?;
    if topic.kind() == TopicKind::Announce && msg.peer != topic.peer() {
        return Err(OpenError::WrongPeer);
    }
    if msg.exp < now_ms {
        return Err(OpenError::Expired);
    }
    if msg.ts > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(OpenError::FromFuture);
    }
    Ok(msg)
}

/// What the book remembers of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The peer.
    peer: PeerId,
    /// The highest sequence number accepted from it.
    seq: u64,
    /// The latest `exp` of any message accepted from it: after this every one has expired.
    exp_ms: u64,
}

/// The last sequence number accepted from each peer of one room, at most [`MAX_PEERS`] of them.
///
/// Updated only after a message fully validates, so forged, malformed or stale input never
/// moves it. An entry is kept until [`prune`](Self::prune) passes its latest `exp`: every
/// message accepted from that peer has expired by then, so forgetting its number lets no
/// replay through. The table never grows past [`MAX_PEERS`] entries.
#[derive(Debug, Clone)]
pub struct RendezvousBook {
    /// One entry per peer, in no particular order.
    seen: Vec<Seen>,
}

impl Default for RendezvousBook {
    fn default() -> Self {
        Self::new()
    }
}

impl RendezvousBook {
    /// An empty book.
    pub fn new() -> Self {
        Self {
            seen: Vec::with_capacity(MAX_PEERS),
        }
    }

    /// [`open`], then the sequence check; records the message's number only if all pass.
    pub fn open(
        &mut self,
        key: &MqttKey,
        topic: &Topic,
        sealed: &[u8],
        now_ms: u64,
    ) -> Result<Rendezvous, OpenError> {
        let msg = open(key, topic, sealed, now_ms)?;
        self.accept(&msg)?;
        Ok(msg)
    }

    /// Checks an already opened message's sequence number and records it.
    fn accept(&mut self, msg: &Rendezvous) -> Result<(), OpenError> {
        if let Some(seen) = self.seen.iter_mut().find(|s| s.peer == msg.peer) {
            if msg.seq <= seen.seq {
                return Err(OpenError::Stale);
            }
            seen.seq = msg.seq;
            seen.exp_ms = seen.exp_ms.max(msg.exp);
            return Ok(());
        }
        if self.seen.len() >= MAX_PEERS {
            return Err(OpenError::Full);
        }
        self.seen.push(Seen {
            peer: msg.peer,
            seq: msg.seq,
            exp_ms: msg.exp,
        });
        Ok(())
    }

    /// Forgets every peer whose messages have all expired (`exp < now_ms`).
    pub fn prune(&mut self, now_ms: u64) {
        self.seen.retain(|s| s.exp_ms >= now_ms);
    }

    /// The last sequence number accepted from `peer`, if it is tracked.
    pub fn last_seq(&self, peer: PeerId) -> Option<u64> {
        self.seen.iter().find(|s| s.peer == peer).map(|s| s.seq)
    }

    /// How many peers are tracked.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests;
