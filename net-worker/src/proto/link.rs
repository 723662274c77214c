//! Ableton Link's wire format (digest §4), written from the protocol description and a real
//! peer's behaviour, not from Link's (GPL) source: discovery messages (ALIVE / RESPONSE /
//! BYEBYE on 224.76.78.75:20808) with their payload entries (`tmln`, `sess`, `stst`, `mep4`,
//! `mep6`), and the measurement messages (PING / PONG with `__ht`, `__gt`, `_pgt`).
//!
//! Sans-IO and total: any bytes give a message or a [`LinkError`], never a panic. The session
//! logic (election, measurement, timeline and start/stop rules) is in [`session`].

pub mod session;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// Discovery messages start with this.
pub const DISCOVERY_HEADER: [u8; 8] = *b"_asdp_v\x01";
/// Measurement messages start with this.
pub const LINK_HEADER: [u8; 8] = *b"_link_v\x01";
/// Messages are smaller than this.
pub const MAX_MESSAGE: usize = 512;
/// Discovery multicast group and port.
pub const MULTICAST: (Ipv4Addr, u16) = (Ipv4Addr::new(224, 76, 78, 75), 20808);
/// Seconds a peer's state stays valid.
pub const TTL: u8 = 5;
/// Tempo range Link allows.
pub const TEMPO_RANGE: (f64, f64) = (20.0, 999.0);

/// Largest plausible timeline origin: 10^15 µs (31 years of ghost time) or micro-beats.
pub const MAX_ORIGIN: u64 = 1_000_000_000_000_000;

/// A node or session id.
pub type NodeId = [u8; 8];

const TMLN: u32 = u32::from_be_bytes(*b"tmln");
const SESS: u32 = u32::from_be_bytes(*b"sess");
const STST: u32 = u32::from_be_bytes(*b"stst");
const MEP4: u32 = u32::from_be_bytes(*b"mep4");
const MEP6: u32 = u32::from_be_bytes(*b"mep6");
const HOST_TIME: u32 = u32::from_be_bytes(*b"__ht");
const GHOST_TIME: u32 = u32::from_be_bytes(*b"__gt");
const PREV_GHOST_TIME: u32 = u32::from_be_bytes(*b"_pgt");

/// Why bytes are not a Link message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LinkError {
    /// Not one of the two protocol headers.
    #[error("not a Link message")]
    Header,
    /// Too short for its header, or an entry runs past the end.
    #[error("truncated")]
    Truncated,
    /// A known entry whose size is not its value's size.
    #[error("entry {0:?} has the wrong size")]
    EntrySize([u8; 4]),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    Kind(u8),
    /// Would be 512 bytes or more.
    #[error("message too large")]
    TooLarge,
}

/// A session timeline: tempo, and which beat falls on which ghost time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// Tempo as microseconds per beat.
    pub micros_per_beat: i64,
    /// Beat at `time_origin`, in micro-beats.
    pub beat_origin: i64,
    /// Ghost time (µs) of `beat_origin`.
    pub time_origin: i64,
}

impl Timeline {
    /// Microseconds per beat for a tempo (clamped to Link's range, rounded as Link does).
    pub fn micros_per_beat_for(bpm: f64) -> i64 {
        (60e6 / bpm.clamp(TEMPO_RANGE.0, TEMPO_RANGE.1)).round() as i64
    }

    /// The tempo in BPM (clamped: the µs/beat round trip can step just outside the range).
    pub fn bpm(&self) -> f64 {
        if self.micros_per_beat <= 0 {
            return TEMPO_RANGE.0;
        }
        (60e6 / self.micros_per_beat as f64).clamp(TEMPO_RANGE.0, TEMPO_RANGE.1)
    }

    /// A timeline a real peer could send: a tempo inside Link's range (µs per beat rounded
    /// either way) and origins within [`MAX_ORIGIN`] (about 31 years of µs, a billion beats).
    /// Anything else is forged or broken and must not move a session.
    pub fn is_plausible(&self) -> bool {
        let slowest = (60e6 / TEMPO_RANGE.0).ceil() as i64 + 1;
        let fastest = (60e6 / TEMPO_RANGE.1).floor() as i64 - 1;
        (fastest..=slowest).contains(&self.micros_per_beat)
            && self.beat_origin.unsigned_abs() <= MAX_ORIGIN
            && self.time_origin.unsigned_abs() <= MAX_ORIGIN
    }

    /// Beats (fractional) at ghost time `ghost_us`.
    pub fn beats_at(&self, ghost_us: f64) -> f64 {
        self.beat_origin as f64 / 1e6
            + (ghost_us - self.time_origin as f64) / self.micros_per_beat.max(1) as f64
    }

    /// Ghost time (µs) at which `beats` falls.
    pub fn ghost_at(&self, beats: f64) -> f64 {
        self.time_origin as f64
            + (beats - self.beat_origin as f64 / 1e6) * self.micros_per_beat.max(1) as f64
    }
}

/// Start/stop state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartStop {
    /// Playing.
    pub playing: bool,
    /// Beat (micro-beats) at which the state applies.
    pub beats: i64,
    /// Ghost time (µs) of the change.
    pub timestamp: i64,
}

/// What a peer announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerState {
    /// `tmln`.
    pub timeline: Option<Timeline>,
    /// `sess`.
    pub session: Option<NodeId>,
    /// `stst`.
    pub start_stop: Option<StartStop>,
    /// `mep4` / `mep6`: where to send measurement pings.
    pub measurement: Option<SocketAddr>,
}

/// Discovery message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryKind {
    /// Periodic multicast announcement.
    Alive,
    /// Unicast answer to an ALIVE.
    Response,
    /// Leaving.
    ByeBye,
}

/// A discovery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovery {
    /// ALIVE, RESPONSE or BYEBYE.
    pub kind: DiscoveryKind,
    /// Seconds the state is valid (0 in BYEBYE).
    pub ttl: u8,
    /// Session group: always 0; other groups are to be ignored.
    pub group: u16,
    /// The sender's node id.
    pub node: NodeId,
    /// Its state (empty in BYEBYE).
    pub state: PeerState,
}

/// A measurement message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measurement {
    /// PING: our host time, and the ghost time of the previous PONG after the first round.
    Ping {
        /// `__ht`.
        host_time: i64,
        /// `_pgt`.
        prev_ghost: Option<i64>,
    },
    /// PONG: the responder's session and ghost time, and the ping's entries echoed.
    Pong {
        /// `sess`.
        session: NodeId,
        /// `__gt`.
        ghost_time: i64,
        /// Echoed `__ht`.
        host_time: Option<i64>,
        /// Echoed `_pgt`.
        prev_ghost: Option<i64>,
    },
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LinkError> {
        let s = self
            .b
            .get(self.at..self.at.checked_add(n).ok_or(LinkError::Truncated)?)
            .ok_or(LinkError::Truncated)?;
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, LinkError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
}

fn i64_at(v: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&v[..8]);
    i64::from_be_bytes(a)
}

/// Walk payload entries, calling `f(key, value)`; known keys are checked by `f`.
fn entries(
    b: &[u8],
    mut f: impl FnMut(u32, &[u8]) -> Result<(), LinkError>,
) -> Result<(), LinkError> {
    let mut r = Reader { b, at: 0 };
    while r.at < b.len() {
        let key = r.u32()?;
        let size = r.u32()? as usize;
        let value = r.take(size)?;
        f(key, value)?;
    }
    Ok(())
}

fn exact(key: u32, value: &[u8], size: usize) -> Result<(), LinkError> {
    if value.len() == size {
        Ok(())
    } else {
        Err(LinkError::EntrySize(key.to_be_bytes()))
    }
}

fn decode_state(b: &[u8]) -> Result<PeerState, LinkError> {
    let mut state = PeerState::default();
    entries(b, |key, v| {
        match key {
            TMLN => {
                exact(key, v, 24)?;
                state.timeline = Some(Timeline {
                    micros_per_beat: i64_at(&v[0..]),
                    beat_origin: i64_at(&v[8..]),
                    time_origin: i64_at(&v[16..]),
                });
            }
            SESS => {
                exact(key, v, 8)?;
                let mut id = [0u8; 8];
                id.copy_from_slice(v);
                state.session = Some(id);
            }
            STST => {
                exact(key, v, 17)?;
                state.start_stop = Some(StartStop {
                    playing: v[0] != 0,
                    beats: i64_at(&v[1..]),
                    timestamp: i64_at(&v[9..]),
                });
            }
            MEP4 => {
                exact(key, v, 6)?;
                let ip = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
                state.measurement = Some(SocketAddr::new(
                    IpAddr::V4(ip),
                    u16::from_be_bytes([v[4], v[5]]),
                ));
            }
            MEP6 => {
                exact(key, v, 18)?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&v[..16]);
                state.measurement = Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(ip)),
                    u16::from_be_bytes([v[16], v[17]]),
                ));
            }
            // Unknown keys (Link Audio's aep4/aep6, future ones) are skipped by size.
            _ => {}
        }
        Ok(())
    })?;
    Ok(state)
}

/// Decode a discovery message.
pub fn decode_discovery(b: &[u8]) -> Result<Discovery, LinkError> {
    if b.len() >= MAX_MESSAGE {
        return Err(LinkError::TooLarge);
    }
    if b.get(..8) != Some(&DISCOVERY_HEADER[..]) {
        return Err(LinkError::Header);
    }
    let h = b.get(8..20).ok_or(LinkError::Truncated)?;
    let kind = match h[0] {
        1 => DiscoveryKind::Alive,
        2 => DiscoveryKind::Response,
        3 => DiscoveryKind::ByeBye,
        k => return Err(LinkError::Kind(k)),
    };
    let mut node = [0u8; 8];
    node.copy_from_slice(&h[4..12]);
    Ok(Discovery {
        kind,
        ttl: h[1],
        group: u16::from_be_bytes([h[2], h[3]]),
        node,
        state: decode_state(&b[20..])?,
    })
}

fn put(out: &mut Vec<u8>, key: u32, value: &[u8]) {
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// Encode a discovery message into `out` (cleared first). BYEBYE carries no payload.
pub fn encode_discovery(m: &Discovery, out: &mut Vec<u8>) -> Result<(), LinkError> {
    out.clear();
    out.extend_from_slice(&DISCOVERY_HEADER);
    out.push(match m.kind {
        DiscoveryKind::Alive => 1,
        DiscoveryKind::Response => 2,
        DiscoveryKind::ByeBye => 3,
    });
    out.push(m.ttl);
    out.extend_from_slice(&m.group.to_be_bytes());
    out.extend_from_slice(&m.node);
    if m.kind != DiscoveryKind::ByeBye {
        let s = &m.state;
        if let Some(t) = s.timeline {
            let mut v = Vec::with_capacity(24);
            for x in [t.micros_per_beat, t.beat_origin, t.time_origin] {
                v.extend_from_slice(&x.to_be_bytes());
            }
            put(out, TMLN, &v);
        }
        if let Some(id) = s.session {
            put(out, SESS, &id);
        }
        if let Some(st) = s.start_stop {
            let mut v = vec![u8::from(st.playing)];
            v.extend_from_slice(&st.beats.to_be_bytes());
            v.extend_from_slice(&st.timestamp.to_be_bytes());
            put(out, STST, &v);
        }
        match s.measurement {
            Some(SocketAddr::V4(a)) => {
                let mut v = a.ip().octets().to_vec();
                v.extend_from_slice(&a.port().to_be_bytes());
                put(out, MEP4, &v);
            }
            Some(SocketAddr::V6(a)) => {
                let mut v = a.ip().octets().to_vec();
                v.extend_from_slice(&a.port().to_be_bytes());
                put(out, MEP6, &v);
            }
            None => {}
        }
    }
    if out.len() >= MAX_MESSAGE {
        return Err(LinkError::TooLarge);
    }
    Ok(())
}

/// Decode a measurement message.
pub fn decode_measurement(b: &[u8]) -> Result<Measurement, LinkError> {
    if b.len() >= MAX_MESSAGE {
        return Err(LinkError::TooLarge);
    }
    if b.get(..8) != Some(&LINK_HEADER[..]) {
        return Err(LinkError::Header);
    }
    let kind = *b.get(8).ok_or(LinkError::Truncated)?;
    let (mut host, mut ghost, mut prev, mut session) = (None, None, None, None);
    entries(&b[9..], |key, v| {
        match key {
            HOST_TIME => {
                exact(key, v, 8)?;
                host = Some(i64_at(v));
            }
            GHOST_TIME => {
                exact(key, v, 8)?;
                ghost = Some(i64_at(v));
            }
            PREV_GHOST_TIME => {
                exact(key, v, 8)?;
                prev = Some(i64_at(v));
            }
            SESS => {
                exact(key, v, 8)?;
                let mut id = [0u8; 8];
                id.copy_from_slice(v);
                session = Some(id);
            }
            _ => {}
        }
        Ok(())
    })?;
    match kind {
        1 => Ok(Measurement::Ping {
            host_time: host.ok_or(LinkError::Truncated)?,
            prev_ghost: prev,
        }),
        2 => Ok(Measurement::Pong {
            session: session.ok_or(LinkError::Truncated)?,
            ghost_time: ghost.ok_or(LinkError::Truncated)?,
            host_time: host,
            prev_ghost: prev,
        }),
        k => Err(LinkError::Kind(k)),
    }
}

/// Encode a measurement message into `out` (cleared first).
pub fn encode_measurement(m: &Measurement, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&LINK_HEADER);
    match *m {
        Measurement::Ping {
            host_time,
            prev_ghost,
        } => {
            out.push(1);
            put(out, HOST_TIME, &host_time.to_be_bytes());
            if let Some(p) = prev_ghost {
                put(out, PREV_GHOST_TIME, &p.to_be_bytes());
            }
        }
        Measurement::Pong {
            session,
            ghost_time,
            host_time,
            prev_ghost,
        } => {
            out.push(2);
            put(out, SESS, &session);
            put(out, GHOST_TIME, &ghost_time.to_be_bytes());
            // The ping's entries, echoed in the ping's order.
            if let Some(h) = host_time {
                put(out, HOST_TIME, &h.to_be_bytes());
            }
            if let Some(p) = prev_ghost {
                put(out, PREV_GHOST_TIME, &p.to_be_bytes());
            }
        }
    }
}

/// An offset sample `ghost − host` (µs) from a PONG that echoed our `__ht` = `h1`, carried
/// ghost time `g`, and arrived at host time `h2`; and the second sample when the ping carried
/// the previous ghost time `gp`. That one is centred on the middle of the previous PONG's
/// arrival (`gp_arrived`) and this PING's departure `h1`: Link takes `h1` alone, which is
/// right only when the PING leaves the moment the PONG arrives (a peer that reads its socket
/// a millisecond late would be half a millisecond off).
pub fn offset_samples(
    h1: i64,
    g: i64,
    h2: i64,
    gp: Option<i64>,
    gp_arrived: Option<i64>,
) -> (f64, Option<f64>) {
    let first = g as f64 - (h1 as f64 + h2 as f64) / 2.0;
    let second = gp.filter(|&p| p != 0).map(|p| {
        let host = gp_arrived.map_or(h1 as f64, |a| (a.min(h1) as f64 + h1 as f64) / 2.0);
        (g as f64 + p as f64) / 2.0 - host
    });
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::applemidi::tests::hex;

    const ID: NodeId = [1, 2, 3, 4, 5, 6, 7, 8];

    #[test]
    fn digest_vectors_round_trip() {
        let l1 = hex(concat!(
            "5F 61 73 64 70 5F 76 01 01 05 00 00 01 02 03 04 05 06 07 08 ",
            "74 6D 6C 6E 00 00 00 18 00 00 00 00 00 07 A1 20 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ",
            "73 65 73 73 00 00 00 08 01 02 03 04 05 06 07 08 ",
            "73 74 73 74 00 00 00 11 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ",
            "6D 65 70 34 00 00 00 06 C0 A8 01 0A C3 50"
        ));
        assert_eq!(l1.len(), 107);
        let alive = Discovery {
            kind: DiscoveryKind::Alive,
            ttl: TTL,
            group: 0,
            node: ID,
            state: PeerState {
                timeline: Some(Timeline {
                    micros_per_beat: Timeline::micros_per_beat_for(120.0),
                    beat_origin: 0,
                    time_origin: 0,
                }),
                session: Some(ID),
                start_stop: Some(StartStop {
                    playing: false,
                    beats: 0,
                    timestamp: 0,
                }),
                measurement: Some("192.168.1.10:50000".parse().expect("addr")),
            },
        };
        assert_eq!(decode_discovery(&l1), Ok(alive));
        let mut out = Vec::new();
        encode_discovery(&alive, &mut out).expect("fits");
        assert_eq!(out, l1);

        let l2 = hex("5F 61 73 64 70 5F 76 01 03 00 00 00 01 02 03 04 05 06 07 08");
        let bye = decode_discovery(&l2).expect("byebye");
        assert_eq!(
            (bye.kind, bye.ttl, bye.state),
            (DiscoveryKind::ByeBye, 0, PeerState::default())
        );
        encode_discovery(&bye, &mut out).expect("fits");
        assert_eq!(out, l2);

        // L3, L4, L5 as the payload of a RESPONSE.
        let mut response = hex("5F 61 73 64 70 5F 76 01 02 05 00 00 01 02 03 04 05 06 07 08");
        response.extend(hex("74 6D 6C 6E 00 00 00 18 00 00 00 00 00 07 27 0E 00 00 00 00 00 FB C5 20 00 00 00 00 00 BC 61 4E"));
        response.extend(hex(
            "73 74 73 74 00 00 00 11 01 00 00 00 00 00 3D 09 00 00 00 00 00 00 BC 61 4E",
        ));
        response.extend(hex(
            "6D 65 70 36 00 00 00 12 FE 80 00 00 00 00 00 00 00 00 00 00 00 00 00 01 C3 50",
        ));
        let r = decode_discovery(&response).expect("response");
        let t = r.state.timeline.expect("tmln");
        assert_eq!(t.micros_per_beat, Timeline::micros_per_beat_for(128.0));
        assert!((t.bpm() - 128.0).abs() < 1e-9);
        assert_eq!((t.beat_origin, t.time_origin), (16_500_000, 12_345_678));
        assert_eq!(
            r.state.start_stop,
            Some(StartStop {
                playing: true,
                beats: 4_000_000,
                timestamp: 12_345_678
            })
        );
        assert_eq!(
            r.state.measurement,
            Some("[fe80::1]:50000".parse().expect("addr"))
        );
        encode_discovery(&r, &mut out).expect("fits");
        assert_eq!(out, response);

        let l6 = hex("5F 6C 69 6E 6B 5F 76 01 01 5F 5F 68 74 00 00 00 08 00 00 00 00 00 0F 42 40");
        let ping = Measurement::Ping {
            host_time: 1_000_000,
            prev_ghost: None,
        };
        assert_eq!(decode_measurement(&l6), Ok(ping));
        encode_measurement(&ping, &mut out);
        assert_eq!(out, l6);
        let l7 = hex(concat!(
            "5F 6C 69 6E 6B 5F 76 01 02 73 65 73 73 00 00 00 08 01 02 03 04 05 06 07 08 ",
            "5F 5F 67 74 00 00 00 08 00 00 00 00 07 5B CD 15 ",
            "5F 5F 68 74 00 00 00 08 00 00 00 00 00 0F 42 40"
        ));
        let pong = Measurement::Pong {
            session: ID,
            ghost_time: 123_456_789,
            host_time: Some(1_000_000),
            prev_ghost: None,
        };
        assert_eq!(decode_measurement(&l7), Ok(pong));
        encode_measurement(&pong, &mut out);
        assert_eq!(out, l7);
        let l8 = hex(concat!(
            "5F 6C 69 6E 6B 5F 76 01 01 5F 5F 68 74 00 00 00 08 00 00 00 00 00 0F 44 34 ",
            "5F 70 67 74 00 00 00 08 00 00 00 00 07 5B CD 15"
        ));
        let next = Measurement::Ping {
            host_time: 1_000_500,
            prev_ghost: Some(123_456_789),
        };
        assert_eq!(decode_measurement(&l8), Ok(next));
        encode_measurement(&next, &mut out);
        assert_eq!(out, l8);
        // The digest's worked sample.
        assert_eq!(
            offset_samples(1_000_000, 123_456_789, 1_000_400, None, None).0,
            122_456_589.0
        );
        // The second sample: responder ghost = host + 100 (no network delay). The previous
        // PONG (ghost 1_100) arrived at host 1_000; this PING left 800 µs later, at 1_800,
        // and was answered at ghost 1_900. Centred on the arrival and the departure it is
        // exact; on the departure alone (Link's way) it is 400 µs off.
        let (_, second) = offset_samples(1_800, 1_900, 1_800, Some(1_100), Some(1_000));
        assert_eq!(second, Some(100.0));
        let (_, link_way) = offset_samples(1_800, 1_900, 1_800, Some(1_100), None);
        assert_eq!(link_way, Some(-300.0));
    }

    #[test]
    fn tempo_table_and_timeline_maths() {
        for (bpm, us) in [
            (20.0, 3_000_000),
            (120.0, 500_000),
            (128.0, 468_750),
            (174.0, 344_828),
            (999.0, 60_060),
        ] {
            assert_eq!(Timeline::micros_per_beat_for(bpm), us, "{bpm}");
        }
        assert_eq!(Timeline::micros_per_beat_for(5000.0), 60_060, "clamped");
        let t = Timeline {
            micros_per_beat: 500_000,
            beat_origin: 16_000_000,
            time_origin: 1_000_000,
        };
        assert_eq!(t.beats_at(2_000_000.0), 18.0);
        assert_eq!(t.ghost_at(18.0), 2_000_000.0);
        assert!(
            Timeline {
                micros_per_beat: 60_060,
                ..t
            }
            .bpm()
                <= 999.0
        );
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let mut ok = Vec::new();
        encode_discovery(
            &Discovery {
                kind: DiscoveryKind::Alive,
                ttl: TTL,
                group: 0,
                node: ID,
                state: PeerState {
                    session: Some(ID),
                    ..PeerState::default()
                },
            },
            &mut ok,
        )
        .expect("fits");
        let mut wrong_size = ok.clone();
        wrong_size[27] = 7; // `sess` size 8 → 7
        wrong_size.pop();
        assert_eq!(
            decode_discovery(&wrong_size),
            Err(LinkError::EntrySize(*b"sess"))
        );
        let mut past_end = ok.clone();
        past_end[27] = 9;
        assert_eq!(decode_discovery(&past_end), Err(LinkError::Truncated));
        assert_eq!(decode_discovery(b"_asdp_v\x01"), Err(LinkError::Truncated));
        assert_eq!(
            decode_discovery(b"hello world, not link"),
            Err(LinkError::Header)
        );
        let mut kind = ok.clone();
        kind[8] = 9;
        assert_eq!(decode_discovery(&kind), Err(LinkError::Kind(9)));
        assert_eq!(decode_discovery(&vec![0; 600]), Err(LinkError::TooLarge));
        // An unknown entry is skipped by its size.
        let mut unknown = ok.clone();
        unknown.extend_from_slice(b"aep4\x00\x00\x00\x06\x7f\x00\x00\x01\x12\x34");
        assert_eq!(
            decode_discovery(&unknown).expect("ok").state.session,
            Some(ID)
        );
        let mut seed = 7u64;
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = ok.clone();
            let i = (seed as usize) % b.len();
            b[i] = (seed >> 8) as u8;
            b.truncate(((seed >> 16) as usize) % (b.len() + 1));
            let _ = decode_discovery(&b);
            let _ = decode_measurement(&b);
            let mut m = LINK_HEADER.to_vec();
            m.extend((0..(seed % 40)).map(|k| (seed >> (k % 56)) as u8));
            let _ = decode_measurement(&m);
        }
    }
}
