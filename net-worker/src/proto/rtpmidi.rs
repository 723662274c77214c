//! RTP-MIDI packets (RFC 6295) as AppleMIDI peers exchange them on the data port.
//!
//! ```text
//! RTP header (12 bytes): V=2 P X CC | M PT | seq (u16) | timestamp (u32, 100 µs) | SSRC (u32)
//! MIDI command section:  |B|J|Z|P| LEN (4 or 12 bits) | [Δ0] cmd0 Δ1 cmd1 … (LEN bytes)
//! journal (if J):        |S|Y|A|H|TOTCHAN(4)| checkpoint (u16) | [system journal] [channel journals]
//! system journal (if Y): |S|D|V|Q|F|X| LENGTH(10) | chapters D V Q F X, in that order
//! ```
//!
//! Interop rules from `shared/specs/protocols.md` §2: we send PT byte `0x61` (M = 0, which
//! Apple and Windows peers require) and accept any M; delta times are cumulative from the RTP
//! timestamp; running status is reset per packet; journals are skipped by their LENGTH fields
//! unless we understand them (the system journal's Chapter Q, which we also send).
//!
//! Decoding never panics; every malformed input is a typed [`DecodeError`].

use thiserror::Error;

pub mod journal;

/// RTP version 2, no padding, no extension, no CSRC.
const RTP_V2: u8 = 0x80;
/// AppleMIDI's dynamic payload type.
pub const PAYLOAD_TYPE: u8 = 0x61;
/// Largest delta time (28 bits).
pub const MAX_DELTA: u32 = (1 << 28) - 1;
/// Largest MIDI list (12-bit LEN).
pub const MAX_LIST: usize = 4095;

/// The RTP header fields AppleMIDI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (ignored on receive; we always send 0).
    pub marker: bool,
    /// Payload type (0x61 from Apple peers).
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp, low 32 bits of the 10 kHz session clock.
    pub timestamp: u32,
    /// Sender SSRC.
    pub ssrc: u32,
}

/// One MIDI command from a command section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidiCommand {
    /// A system real-time byte (F8 clock, FA start, FB continue, FC stop, FE, FF).
    RealTime(u8),
    /// F2: Song Position Pointer in 16th notes (14 bits).
    SongPosition(u16),
    /// Another system common message (F1 MTC quarter frame, F3 song select, F6 tune request).
    SystemCommon {
        /// Status byte.
        status: u8,
        /// Data byte (F1, F3), 0 for F6.
        data: u8,
    },
    /// A channel message; `data[1]` is 0 for two-byte messages (Cx, Dx).
    Channel {
        /// Status byte (with the channel).
        status: u8,
        /// Data bytes.
        data: [u8; 2],
        /// True if the status byte was omitted in the packet (running status).
        running: bool,
    },
    /// A SysEx segment (F0 … F7/F0/F4/F5), `len` bytes including its framing.
    SysEx {
        /// Length in bytes.
        len: u16,
    },
}

/// A command with its time: `offset` RTP units after the packet's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedCommand {
    /// Cumulative delta from the RTP timestamp.
    pub offset: u32,
    /// The command.
    pub command: MidiCommand,
}

/// Chapter Q of the system journal: the sequencer state (RFC 6295 App. B.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChapterQ {
    /// S bit (1 unless the chapter describes a command of the previous packet).
    pub s: bool,
    /// N: running (the latest of Start/Stop/Continue was Start or Continue).
    pub running: bool,
    /// D: the position has already been played.
    pub downbeat: bool,
    /// C + TOP + CLOCK: song position in MIDI clocks (19 bits), `None` = song start.
    pub position: Option<u32>,
    /// T + TIMETOOLS (absent unless a peer sends it), 24 bits.
    pub timetools: Option<u32>,
}

/// The parts of a recovery journal we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Journal {
    /// Journal header S bit.
    pub s: bool,
    /// Oldest packet the journal covers.
    pub checkpoint: u16,
    /// Chapter Q from the system journal, if present.
    pub chapter_q: Option<ChapterQ>,
    /// TOC bits of the system journal (D V Q F X as bits 4..0), 0 without one.
    pub system_chapters: u8,
    /// Number of channel journals skipped.
    pub channel_journals: u8,
}

/// A decoded RTP-MIDI packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// RTP header.
    pub header: RtpHeader,
    /// Commands in the order of the list.
    pub commands: Vec<TimedCommand>,
    /// The journal, if the J flag was set.
    pub journal: Option<Journal>,
}

/// Why bytes are not a valid RTP-MIDI packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Shorter than what the headers announce.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Not RTP version 2.
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    /// Padding, extension or CSRCs, which AppleMIDI never uses.
    #[error("RTP header with padding, extension or CSRC list (first byte {0:#04x})")]
    UnsupportedHeader(u8),
    /// A delta time longer than four bytes.
    #[error("delta time longer than 4 bytes")]
    DeltaTooLong,
    /// A data byte where a status byte was needed and no running status exists.
    #[error("data byte {0:#04x} without a status")]
    NoStatus(u8),
    /// An undefined status (F4, F5 outside SysEx, F9, FD).
    #[error("undefined status byte {0:#04x}")]
    Undefined(u8),
    /// A data byte ≥ 0x80 inside a message.
    #[error("status byte {0:#04x} inside a message")]
    BadData(u8),
    /// A SysEx segment without its end.
    #[error("unterminated SysEx")]
    UnterminatedSysEx,
    /// A journal element whose LENGTH is impossible.
    #[error("journal {0} has an invalid length")]
    JournalLength(&'static str),
}

fn take<'a>(b: &'a [u8], at: usize, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
    b.get(at..at + n).ok_or(DecodeError::Truncated {
        what,
        need: at + n,
        have: b.len(),
    })
}

/// Encode a delta time (shortest form) into `out`.
pub fn encode_delta(value: u32, out: &mut Vec<u8>) {
    let value = value.min(MAX_DELTA);
    let mut started = false;
    for shift in [21u32, 14, 7] {
        let group = ((value >> shift) & 0x7f) as u8;
        if group != 0 || started {
            out.push(group | 0x80);
            started = true;
        }
    }
    out.push((value & 0x7f) as u8);
}

/// Decode a delta time at the start of `b`: (value, bytes used).
pub fn decode_delta(b: &[u8]) -> Result<(u32, usize), DecodeError> {
    let mut value = 0u32;
    for i in 0..4 {
        let byte = *b.get(i).ok_or(DecodeError::Truncated {
            what: "delta time",
            need: i + 1,
            have: b.len(),
        })?;
        value = (value << 7) | u32::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(DecodeError::DeltaTooLong)
}

/// Bytes of a command with status `status` (including the status), `None` for SysEx.
fn command_len(status: u8) -> Result<Option<usize>, DecodeError> {
    Ok(Some(match status {
        0x80..=0xBF | 0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        0xF0 | 0xF7 => return Ok(None),
        0xF1 | 0xF3 => 2,
        0xF2 => 3,
        0xF6 | 0xF8 | 0xFA | 0xFB | 0xFC | 0xFE | 0xFF => 1,
        other => return Err(DecodeError::Undefined(other)),
    }))
}

/// Parse one command at `list[at..]`; returns it and its length.
fn parse_command(
    list: &[u8],
    at: usize,
    running_status: &mut Option<u8>,
) -> Result<(MidiCommand, usize), DecodeError> {
    let first = list[at];
    let (status, running, body_at) = if first & 0x80 != 0 {
        (first, false, at + 1)
    } else {
        let status = running_status.ok_or(DecodeError::NoStatus(first))?;
        (status, true, at)
    };
    let Some(len) = command_len(status)? else {
        // SysEx segment: until F7, F0 (segment), F4 (cancel) or F5 (dropped F7).
        let end = list[at + 1..]
            .iter()
            .position(|&c| matches!(c, 0xF7 | 0xF0 | 0xF4 | 0xF5))
            .ok_or(DecodeError::UnterminatedSysEx)?;
        *running_status = None;
        let len = end + 2;
        return Ok((
            MidiCommand::SysEx {
                len: u16::try_from(len).unwrap_or(u16::MAX),
            },
            len,
        ));
    };
    let data_len = len - 1;
    let data = take(list, body_at, data_len, "MIDI command")?;
    if let Some(&bad) = data.iter().find(|&&d| d & 0x80 != 0) {
        return Err(DecodeError::BadData(bad));
    }
    let used = body_at - at + data_len;
    let command = match status {
        0x80..=0xEF => {
            *running_status = Some(status);
            MidiCommand::Channel {
                status,
                data: [data[0], data.get(1).copied().unwrap_or(0)],
                running,
            }
        }
        0xF2 => {
            *running_status = None;
            MidiCommand::SongPosition(u16::from(data[0]) | (u16::from(data[1]) << 7))
        }
        0xF1 | 0xF3 | 0xF6 => {
            *running_status = None;
            MidiCommand::SystemCommon {
                status,
                data: data.first().copied().unwrap_or(0),
            }
        }
        // Real-time bytes leave running status alone.
        _ => MidiCommand::RealTime(status),
    };
    Ok((command, used))
}

/// Decode a whole packet from the data port.
pub fn decode(b: &[u8]) -> Result<Packet, DecodeError> {
    let h = take(b, 0, 12, "RTP header")?;
    if h[0] >> 6 != 2 {
        return Err(DecodeError::Version(h[0] >> 6));
    }
    if h[0] & 0x3f != 0 {
        return Err(DecodeError::UnsupportedHeader(h[0]));
    }
    let header = RtpHeader {
        marker: h[1] & 0x80 != 0,
        payload_type: h[1] & 0x7f,
        seq: u16::from_be_bytes([h[2], h[3]]),
        timestamp: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ssrc: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
    };
    let flags = take(b, 12, 1, "command section header")?[0];
    let (long, journal_flag, z) = (flags & 0x80 != 0, flags & 0x40 != 0, flags & 0x20 != 0);
    let (len, list_at) = if long {
        let lo = take(b, 13, 1, "command section header")?[0];
        ((usize::from(flags & 0x0f) << 8) | usize::from(lo), 14)
    } else {
        (usize::from(flags & 0x0f), 13)
    };
    let list = take(b, list_at, len, "MIDI list")?;
    let mut commands = Vec::new();
    let mut at = 0;
    let mut offset = 0u32;
    let mut running_status = None;
    let mut first = true;
    while at < list.len() {
        if !first || z {
            let (delta, used) = decode_delta(&list[at..])?;
            offset = offset.wrapping_add(delta);
            at += used;
            if at == list.len() {
                break; // a trailing delta pads time, no command
            }
        }
        first = false;
        let (command, used) = parse_command(list, at, &mut running_status)?;
        commands.push(TimedCommand { offset, command });
        at += used;
    }
    let journal = journal_flag
        .then(|| decode_journal(b.get(list_at + len..).unwrap_or_default()))
        .transpose()?;
    Ok(Packet {
        header,
        commands,
        journal,
    })
}

fn decode_journal(b: &[u8]) -> Result<Journal, DecodeError> {
    let h = take(b, 0, 3, "journal header")?;
    let (s, y, a) = (h[0] & 0x80 != 0, h[0] & 0x40 != 0, h[0] & 0x20 != 0);
    let mut journal = Journal {
        s,
        checkpoint: u16::from_be_bytes([h[1], h[2]]),
        chapter_q: None,
        system_chapters: 0,
        channel_journals: 0,
    };
    let mut at = 3;
    if y {
        let sh = take(b, at, 2, "system journal header")?;
        let length = (usize::from(sh[0] & 0x03) << 8) | usize::from(sh[1]);
        if length < 2 {
            return Err(DecodeError::JournalLength("system journal"));
        }
        let body = take(b, at, length, "system journal")?;
        journal.system_chapters = (sh[0] >> 2) & 0x1f;
        // Chapters come in D V Q F X order; we read Q, which needs D and V skipped first.
        let toc = sh[0];
        let rest = |c: usize| {
            body.get(c..)
                .ok_or(DecodeError::JournalLength("system journal"))
        };
        let mut c = 2;
        if toc & 0x40 != 0 {
            c += chapter_d_len(rest(c)?)?;
        }
        if toc & 0x20 != 0 {
            take(body, c, 1, "chapter V")?;
            c += 1;
        }
        if toc & 0x10 != 0 {
            journal.chapter_q = Some(decode_chapter_q(rest(c)?)?.0);
        }
        at += length;
    }
    if a {
        let count = (h[0] & 0x0f) + 1;
        for _ in 0..count {
            let ch = take(b, at, 3, "channel journal header")?;
            let length = (usize::from(ch[1] & 0x03) << 8) | usize::from(ch[2]);
            if length < 3 {
                return Err(DecodeError::JournalLength("channel journal"));
            }
            take(b, at, length, "channel journal")?;
            at += length;
            journal.channel_journals += 1;
        }
    }
    Ok(journal)
}

/// Length of a Chapter D (B.1): a flag byte then the logs it announces.
fn chapter_d_len(b: &[u8]) -> Result<usize, DecodeError> {
    let flags = take(b, 0, 1, "chapter D")?[0];
    let mut len = 1;
    // B (Reset), G (Tune Request), H (Song Select): one byte each.
    len += [0x40u8, 0x20, 0x10]
        .iter()
        .filter(|&&f| flags & f != 0)
        .count();
    // J, K (undefined common F4/F5), Y, Z (undefined real-time F9/FD): variable logs with a
    // LENGTH in their first two bytes (B.1.4 / B.1.5): skip by it.
    for f in [0x08u8, 0x04, 0x02, 0x01] {
        if flags & f != 0 {
            let log = take(b, len, 2, "chapter D log")?;
            let log_len = if f >= 0x04 {
                (usize::from(log[0] & 0x03) << 8) | usize::from(log[1])
            } else {
                usize::from(log[0] & 0x0f)
            };
            if log_len == 0 {
                return Err(DecodeError::JournalLength("chapter D log"));
            }
            take(b, len, log_len, "chapter D log")?;
            len += log_len;
        }
    }
    Ok(len)
}

/// Decode Chapter Q at the start of `b`: (chapter, bytes used).
pub fn decode_chapter_q(b: &[u8]) -> Result<(ChapterQ, usize), DecodeError> {
    let h = take(b, 0, 1, "chapter Q")?[0];
    let (c, t) = (h & 0x10 != 0, h & 0x08 != 0);
    let top = u32::from(h & 0x07);
    let mut used = 1;
    let position = if c {
        let clock = take(b, used, 2, "chapter Q clock")?;
        used += 2;
        Some((top << 16) | u32::from(u16::from_be_bytes([clock[0], clock[1]])))
    } else {
        None
    };
    let timetools = if t {
        let tt = take(b, used, 3, "chapter Q timetools")?;
        used += 3;
        Some(u32::from_be_bytes([0, tt[0], tt[1], tt[2]]))
    } else {
        None
    };
    Ok((
        ChapterQ {
            s: h & 0x80 != 0,
            running: h & 0x40 != 0,
            downbeat: h & 0x20 != 0,
            position,
            timetools,
        },
        used,
    ))
}

/// Encode Chapter Q into `out`.
pub fn encode_chapter_q(q: &ChapterQ, out: &mut Vec<u8>) {
    let position = q.position.map(|p| p & 0x7_ffff);
    let mut h = 0u8;
    h |= u8::from(q.s) << 7;
    h |= u8::from(q.running) << 6;
    h |= u8::from(q.downbeat) << 5;
    h |= u8::from(position.is_some()) << 4;
    h |= u8::from(q.timetools.is_some()) << 3;
    h |= position.map_or(0, |p| (p >> 16) as u8 & 0x07);
    out.push(h);
    if let Some(p) = position {
        out.extend_from_slice(&((p & 0xffff) as u16).to_be_bytes());
    }
    if let Some(tt) = q.timetools {
        out.extend_from_slice(&tt.to_be_bytes()[1..]);
    }
}

/// The bytes of one command we send.
fn command_bytes(command: &MidiCommand, out: &mut Vec<u8>) {
    match *command {
        MidiCommand::RealTime(status) => out.push(status),
        MidiCommand::SongPosition(v) => {
            out.extend_from_slice(&[0xF2, (v & 0x7f) as u8, ((v >> 7) & 0x7f) as u8])
        }
        MidiCommand::SystemCommon { status, data } => {
            out.push(status);
            if status != 0xF6 {
                out.push(data & 0x7f);
            }
        }
        MidiCommand::Channel { status, data, .. } => {
            out.push(status);
            out.push(data[0] & 0x7f);
            if !(0xC0..=0xDF).contains(&status) {
                out.push(data[1] & 0x7f);
            }
        }
        // We never send SysEx through this path.
        MidiCommand::SysEx { .. } => {}
    }
}

/// Encode a packet into `out` (cleared first): PT byte 0x61 (M = 0), Z = 0 (the first command
/// happens at the RTP timestamp; its `offset` is ignored), a delta before every later command
/// (offsets must not decrease), no running status, and a system-journal-only journal with
/// Chapter Q if `journal` is given as (S bit, checkpoint, chapter Q).
pub fn encode(
    header: &RtpHeader,
    commands: &[TimedCommand],
    journal: Option<(bool, u16, ChapterQ)>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(RTP_V2);
    out.push(PAYLOAD_TYPE);
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    let mut list = Vec::with_capacity(commands.len() * 3);
    let mut previous = commands.first().map_or(0, |c| c.offset);
    for (i, c) in commands.iter().enumerate() {
        if i > 0 {
            encode_delta(c.offset.saturating_sub(previous), &mut list);
            previous = c.offset.max(previous);
        }
        command_bytes(&c.command, &mut list);
    }
    list.truncate(MAX_LIST);
    let j = if journal.is_some() { 0x40 } else { 0 };
    if list.len() > 15 {
        out.push(0x80 | j | (list.len() >> 8) as u8);
        out.push((list.len() & 0xff) as u8);
    } else {
        out.push(j | list.len() as u8);
    }
    out.extend_from_slice(&list);
    if let Some((s, checkpoint, q)) = journal {
        // Journal header: S, Y=1, A=0, H=0, TOTCHAN=0.
        out.push(u8::from(s) << 7 | 0x40);
        out.extend_from_slice(&checkpoint.to_be_bytes());
        let mut chapter = Vec::with_capacity(6);
        encode_chapter_q(&q, &mut chapter);
        let length = chapter.len() + 2;
        // System journal header: S, Q=1, LENGTH.
        out.push(u8::from(s) << 7 | 0x10 | ((length >> 8) as u8 & 0x03));
        out.push((length & 0xff) as u8);
        out.extend_from_slice(&chapter);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::applemidi::tests::hex;

    fn header(seq: u16, timestamp: u32) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: PAYLOAD_TYPE,
            seq,
            timestamp,
            ssrc: 0xAABB_CCDD,
        }
    }

    fn at(offset: u32, command: MidiCommand) -> TimedCommand {
        TimedCommand { offset, command }
    }

    const CLOCK: MidiCommand = MidiCommand::RealTime(0xF8);

    /// The digest's vectors (§5.2): (name, header, commands, journal, bytes).
    #[allow(clippy::type_complexity)]
    pub(crate) fn vectors() -> Vec<(
        &'static str,
        RtpHeader,
        Vec<TimedCommand>,
        Option<(bool, u16, ChapterQ)>,
        Vec<u8>,
    )> {
        vec![
            (
                "R1",
                header(0x1234, 0x0001_0000),
                vec![at(0, CLOCK)],
                None,
                hex("80 61 12 34 00 01 00 00 AA BB CC DD 01 F8"),
            ),
            (
                "R2",
                header(0x1235, 0x0001_0010),
                vec![at(0, MidiCommand::RealTime(0xFA)), at(0, CLOCK)],
                None,
                hex("80 61 12 35 00 01 00 10 AA BB CC DD 03 FA 00 F8"),
            ),
            (
                "R3",
                header(0x1236, 0x0001_0020),
                vec![
                    at(0, MidiCommand::SongPosition(16)),
                    at(0, MidiCommand::RealTime(0xFB)),
                ],
                None,
                hex("80 61 12 36 00 01 00 20 AA BB CC DD 05 F2 10 00 00 FB"),
            ),
            (
                "R4",
                header(0x1237, 0x0001_0030),
                vec![at(0, MidiCommand::RealTime(0xFC))],
                None,
                hex("80 61 12 37 00 01 00 30 AA BB CC DD 01 FC"),
            ),
            (
                "R5",
                header(0x1238, 0x0001_0040),
                vec![at(0, CLOCK), at(208, CLOCK), at(417, CLOCK), at(625, CLOCK)],
                None,
                hex("80 61 12 38 00 01 00 40 AA BB CC DD 0A F8 81 50 F8 81 51 F8 81 50 F8"),
            ),
            (
                "R6",
                header(0x1239, 0x0001_0050),
                vec![],
                None,
                hex("80 61 12 39 00 01 00 50 AA BB CC DD 00"),
            ),
            (
                "R7q",
                header(0x123A, 0x0001_0060),
                vec![at(0, CLOCK)],
                Some((
                    false,
                    0x1236,
                    ChapterQ {
                        s: false,
                        running: true,
                        downbeat: true,
                        position: Some(23),
                        timetools: None,
                    },
                )),
                hex("80 61 12 3A 00 01 00 60 AA BB CC DD 41 F8 40 12 36 10 05 70 00 17"),
            ),
        ]
    }

    #[test]
    fn golden_vectors_encode_and_decode() {
        let mut out = Vec::new();
        for (name, header, commands, journal, bytes) in vectors() {
            encode(&header, &commands, journal, &mut out);
            assert_eq!(out, bytes, "{name} encode");
            let packet = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(packet.header, header, "{name} header");
            assert_eq!(packet.commands, commands, "{name} commands");
            assert_eq!(
                packet.journal.and_then(|j| j.chapter_q),
                journal.map(|j| j.2),
                "{name} journal"
            );
        }
    }

    #[test]
    fn macos_capture_with_mtc_and_chapter_f_journal_decodes() {
        // R8 [capture]: B=1, J=1, LEN=23, eight MTC quarter frames 10 ms apart, system journal
        // with Chapter F only.
        let r8 = hex(
            "80 61 05 87 01 77 FE F9 0E 8C 93 03 C0 17 F1 0A 64 F1 10 64 F1 27 64 F1 32 64 F1 40 64 F1 50 64 F1 60 64 F1 72 40 04 58 08 07 47 20 00 27 08",
        );
        let p = decode(&r8).expect("decodes");
        assert_eq!(p.header.seq, 0x0587);
        assert_eq!(p.header.ssrc, 0x0E8C_9303);
        assert_eq!(p.commands.len(), 8);
        assert_eq!(p.commands[7].offset, 700);
        assert_eq!(
            p.commands[0].command,
            MidiCommand::SystemCommon {
                status: 0xF1,
                data: 0x0A
            }
        );
        let j = p.journal.expect("journal");
        assert_eq!(j.checkpoint, 0x0458);
        assert_eq!(j.system_chapters, 0x02, "F only");
        assert_eq!(j.chapter_q, None);
    }

    #[test]
    fn marker_bit_is_ignored_on_receive() {
        let r1m = hex("80 E1 12 34 00 01 00 00 AA BB CC DD 01 F8");
        let p = decode(&r1m).expect("decodes");
        assert!(p.header.marker);
        assert_eq!(p.header.payload_type, PAYLOAD_TYPE);
        assert_eq!(p.commands, vec![at(0, CLOCK)]);
    }

    #[test]
    fn delta_time_vectors() {
        for (value, bytes) in [
            (0, "00"),
            (1, "01"),
            (127, "7F"),
            (128, "81 00"),
            (300, "82 2C"),
            (16_383, "FF 7F"),
            (16_384, "81 80 00"),
            (2_097_151, "FF FF 7F"),
            (2_097_152, "81 80 80 00"),
            (268_435_455, "FF FF FF 7F"),
        ] {
            let mut out = Vec::new();
            encode_delta(value, &mut out);
            assert_eq!(out, hex(bytes), "{value}");
            assert_eq!(decode_delta(&out), Ok((value, out.len())));
        }
        // Non-shortest forms decode too.
        assert_eq!(decode_delta(&hex("80 80 80 00")), Ok((0, 4)));
        assert_eq!(
            decode_delta(&hex("80 80 80 80 00")),
            Err(DecodeError::DeltaTooLong)
        );
    }

    #[test]
    fn chapter_q_examples() {
        let cases = [
            (
                "C0",
                ChapterQ {
                    s: true,
                    running: true,
                    downbeat: false,
                    position: None,
                    timetools: None,
                },
            ),
            (
                "80",
                ChapterQ {
                    s: true,
                    running: false,
                    downbeat: false,
                    position: None,
                    timetools: None,
                },
            ),
            (
                "90 00 60",
                ChapterQ {
                    s: true,
                    running: false,
                    downbeat: false,
                    position: Some(96),
                    timetools: None,
                },
            ),
            (
                "D0 00 00",
                ChapterQ {
                    s: true,
                    running: true,
                    downbeat: false,
                    position: Some(0),
                    timetools: None,
                },
            ),
        ];
        for (bytes, q) in cases {
            let mut out = Vec::new();
            encode_chapter_q(&q, &mut out);
            assert_eq!(out, hex(bytes));
            assert_eq!(decode_chapter_q(&out), Ok((q, out.len())));
        }
    }

    #[test]
    fn running_status_and_sysex_in_incoming_packets() {
        // Note on, running-status note on, a clock between them (real-time keeps running
        // status), SysEx, then a data byte without status (error).
        let mut p = hex("80 61 00 01 00 00 00 00 00 00 00 01");
        let list = hex("90 3C 64 00 F8 00 40 64 00 F0 01 02 F7");
        p.push(list.len() as u8);
        p.extend_from_slice(&list);
        let packet = decode(&p).expect("decodes");
        assert_eq!(packet.commands.len(), 4);
        assert_eq!(
            packet.commands[2].command,
            MidiCommand::Channel {
                status: 0x90,
                data: [0x40, 0x64],
                running: true
            }
        );
        assert_eq!(packet.commands[3].command, MidiCommand::SysEx { len: 4 });
        let mut bad = hex("80 61 00 01 00 00 00 00 00 00 00 01 02 40 64");
        assert_eq!(decode(&bad), Err(DecodeError::NoStatus(0x40)));
        bad[12] = 0x01;
        assert_eq!(
            decode(&bad[..13]),
            Err(DecodeError::Truncated {
                what: "MIDI list",
                need: 14,
                have: 13
            })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x0f0f_1234_5678_9abcu64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut corpus: Vec<Vec<u8>> = vectors().into_iter().map(|v| v.4).collect();
        corpus.push(hex("80 61 05 87 01 77 FE F9 0E 8C 93 03 C0 17 F1 0A 64 F1 10 64 F1 27 64 F1 32 64 F1 40 64 F1 50 64 F1 60 64 F1 72 40 04 58 08 07 47 20 00 27 08"));
        for bytes in &corpus {
            for len in 0..=bytes.len() {
                let _ = decode(&bytes[..len]);
            }
            for _ in 0..5000 {
                let mut m = bytes.clone();
                for _ in 0..1 + next() % 3 {
                    let i = (next() as usize) % m.len();
                    m[i] = next() as u8;
                }
                let _ = decode(&m);
            }
        }
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len > 1 {
                b[0] = 0x80;
            }
            let _ = decode(&b);
        }
    }
}
