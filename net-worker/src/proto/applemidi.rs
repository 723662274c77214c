//! AppleMIDI session commands: the `0xFFFF`-prefixed packets on the control and data ports.
//!
//! Layouts (big-endian throughout), from `shared/specs/protocols.md` §1.2:
//!
//! | command | bytes |
//! |---|---|
//! | IN / OK / NO / BY | `FFFF` cmd(2) version=2 (u32) token (u32) ssrc (u32) [name, NUL-terminated] |
//! | CK | `FFFF 'CK'` ssrc (u32) count (u8) padding (3) ts1 ts2 ts3 (u64 each, 100 µs units) |
//! | RS | `FFFF 'RS'` ssrc (u32) seq (u16) zero (u16) |
//! | RL | `FFFF 'RL'` ssrc (u32) bitrate (u32) |
//!
//! Decoding never panics: every malformed input is a typed [`DecodeError`] for the caller to
//! count. Real peers' quirks are accepted: CK padding and unused timestamps are ignored (macOS
//! fills them), RS is read from bytes 8–9 with a fallback for rtpmidid's shifted layout, names of
//! any length, a missing NUL.

use thiserror::Error;

pub mod endpoint;
pub mod session;
mod sim;

/// The AppleMIDI signature that starts every command packet.
pub const SIGNATURE: u16 = 0xFFFF;
/// The only protocol version in use.
pub const PROTOCOL_VERSION: u32 = 2;
/// Longest session name we send (bytes, without NUL); longer names are cut on a char boundary.
pub const MAX_NAME_LEN: usize = 64;

/// An exchange packet (IN, OK, NO, BY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Initiator token.
    pub token: u32,
    /// Sender SSRC.
    pub ssrc: u32,
    /// Session name, if present.
    pub name: Option<String>,
}

/// A clock synchronisation packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ck {
    /// Sender SSRC.
    pub ssrc: u32,
    /// 0, 1 or 2: how many timestamps are valid.
    pub count: u8,
    /// Timestamps in 100 µs units; only the first `count + 1` are meaningful (the others are 0
    /// after decoding, whatever the peer sent).
    pub timestamps: [u64; 3],
}

/// A session command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Invitation.
    Invitation(Exchange),
    /// Invitation accepted.
    Accepted(Exchange),
    /// Invitation rejected.
    Rejected(Exchange),
    /// End of session.
    Bye(Exchange),
    /// Clock synchronisation.
    Ck(Ck),
    /// Receiver feedback: the highest RTP sequence number received.
    ReceiverFeedback {
        /// SSRC of the party sending the feedback.
        ssrc: u32,
        /// Highest sequence number received.
        seq: u16,
    },
    /// Receive bit-rate limit.
    BitrateLimit {
        /// Sender SSRC.
        ssrc: u32,
        /// Bits per second.
        bits_per_second: u32,
    },
}

/// Why bytes are not an AppleMIDI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Does not start with `FF FF` (it may be RTP-MIDI, see [`is_command`]).
    #[error("not an AppleMIDI command (no FFFF signature)")]
    NoSignature,
    /// Shorter than the command's fixed part.
    #[error("{command} packet truncated: {len} bytes, need {need}")]
    Truncated {
        /// Command name.
        command: &'static str,
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A command code we don't know.
    #[error("unknown AppleMIDI command {0:#06x}")]
    UnknownCommand(u16),
    /// A protocol version other than 2.
    #[error("unsupported AppleMIDI protocol version {0}")]
    Version(u32),
    /// CK count above 2.
    #[error("CK count {0} out of range")]
    CkCount(u8),
}

/// True if `packet` is an AppleMIDI command rather than RTP (RTP starts with 0b10xxxxxx).
pub fn is_command(packet: &[u8]) -> bool {
    packet.len() >= 2 && packet[0] == 0xFF && packet[1] == 0xFF
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

fn need(command: &'static str, b: &[u8], need: usize) -> Result<(), DecodeError> {
    if b.len() < need {
        return Err(DecodeError::Truncated {
            command,
            len: b.len(),
            need,
        });
    }
    Ok(())
}

/// Decode one command packet.
pub fn decode(b: &[u8]) -> Result<Command, DecodeError> {
    if !is_command(b) {
        return Err(DecodeError::NoSignature);
    }
    need("command", b, 4)?;
    let code = u16_at(b, 2);
    let exchange = |name: &'static str| -> Result<Exchange, DecodeError> {
        need(name, b, 16)?;
        let version = u32_at(b, 4);
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version));
        }
        let raw = &b[16..];
        let raw = &raw[..raw.iter().position(|&c| c == 0).unwrap_or(raw.len())];
        Ok(Exchange {
            token: u32_at(b, 8),
            ssrc: u32_at(b, 12),
            name: (!raw.is_empty()).then(|| String::from_utf8_lossy(raw).into_owned()),
        })
    };
    match &code.to_be_bytes() {
        b"IN" => Ok(Command::Invitation(exchange("IN")?)),
        b"OK" => Ok(Command::Accepted(exchange("OK")?)),
        b"NO" => Ok(Command::Rejected(exchange("NO")?)),
        b"BY" => Ok(Command::Bye(exchange("BY")?)),
        b"CK" => {
            need("CK", b, 36)?;
            let count = b[8];
            if count > 2 {
                return Err(DecodeError::CkCount(count));
            }
            let mut timestamps = [0u64; 3];
            for (i, ts) in timestamps
                .iter_mut()
                .enumerate()
                .take(usize::from(count) + 1)
            {
                *ts = u64_at(b, 12 + 8 * i);
            }
            Ok(Command::Ck(Ck {
                ssrc: u32_at(b, 4),
                count,
                timestamps,
            }))
        }
        b"RS" => {
            need("RS", b, 12)?;
            let (apple, shifted) = (u16_at(b, 8), u16_at(b, 10));
            // rtpmidid writes the sequence number into bytes 10-11.
            let seq = if apple == 0 && shifted != 0 {
                shifted
            } else {
                apple
            };
            Ok(Command::ReceiverFeedback {
                ssrc: u32_at(b, 4),
                seq,
            })
        }
        b"RL" => {
            need("RL", b, 12)?;
            Ok(Command::BitrateLimit {
                ssrc: u32_at(b, 4),
                bits_per_second: u32_at(b, 8),
            })
        }
        _ => Err(DecodeError::UnknownCommand(code)),
    }
}

/// Encode `command` into `out` (cleared first). Names are cut to [`MAX_NAME_LEN`] bytes.
pub fn encode_into(command: &Command, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&SIGNATURE.to_be_bytes());
    let exchange = |code: &[u8; 2], e: &Exchange, out: &mut Vec<u8>| {
        out.extend_from_slice(code);
        out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        out.extend_from_slice(&e.token.to_be_bytes());
        out.extend_from_slice(&e.ssrc.to_be_bytes());
        if let Some(name) = &e.name {
            let mut end = name.len().min(MAX_NAME_LEN);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            // A NUL inside the name would end it early on the wire: stop there.
            let name = &name.as_bytes()[..end];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            out.extend_from_slice(name);
            out.push(0);
        }
    };
    match command {
        Command::Invitation(e) => exchange(b"IN", e, out),
        Command::Accepted(e) => exchange(b"OK", e, out),
        Command::Rejected(e) => exchange(b"NO", e, out),
        Command::Bye(e) => exchange(b"BY", e, out),
        Command::Ck(ck) => {
            out.extend_from_slice(b"CK");
            out.extend_from_slice(&ck.ssrc.to_be_bytes());
            out.extend_from_slice(&[ck.count, 0, 0, 0]);
            for (i, ts) in ck.timestamps.iter().enumerate() {
                let ts = if i <= usize::from(ck.count) { *ts } else { 0 };
                out.extend_from_slice(&ts.to_be_bytes());
            }
        }
        Command::ReceiverFeedback { ssrc, seq } => {
            out.extend_from_slice(b"RS");
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        Command::BitrateLimit {
            ssrc,
            bits_per_second,
        } => {
            out.extend_from_slice(b"RL");
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&bits_per_second.to_be_bytes());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect()
    }

    fn exchange(token: u32, ssrc: u32, name: Option<&str>) -> Exchange {
        Exchange {
            token,
            ssrc,
            name: name.map(str::to_owned),
        }
    }

    /// The digest's vectors (§5.1): (name, command, bytes, round-trips exactly).
    pub(crate) fn vectors() -> Vec<(&'static str, Command, Vec<u8>, bool)> {
        vec![
            (
                "A1",
                Command::Invitation(exchange(0x1234_5678, 0xAABB_CCDD, Some("DAW"))),
                hex("FF FF 49 4E 00 00 00 02 12 34 56 78 AA BB CC DD 44 41 57 00"),
                true,
            ),
            (
                "A1r",
                Command::Invitation(exchange(0x46E8_7CCD, 0x9316_668E, Some("otf"))),
                hex("FF FF 49 4E 00 00 00 02 46 E8 7C CD 93 16 66 8E 6F 74 66 00"),
                true,
            ),
            (
                "A3",
                Command::Accepted(exchange(0x1234_5678, 0x1122_3344, Some("Peer"))),
                hex("FF FF 4F 4B 00 00 00 02 12 34 56 78 11 22 33 44 50 65 65 72 00"),
                true,
            ),
            (
                "A4",
                Command::Rejected(exchange(0x1234_5678, 0x1122_3344, None)),
                hex("FF FF 4E 4F 00 00 00 02 12 34 56 78 11 22 33 44"),
                true,
            ),
            (
                "A5",
                Command::Bye(exchange(0x1234_5678, 0xAABB_CCDD, None)),
                hex("FF FF 42 59 00 00 00 02 12 34 56 78 AA BB CC DD"),
                true,
            ),
            (
                "A6",
                Command::Ck(Ck {
                    ssrc: 0xAABB_CCDD,
                    count: 0,
                    timestamps: [10_000, 0, 0],
                }),
                hex(
                    "FF FF 43 4B AA BB CC DD 00 00 00 00 00 00 00 00 00 00 27 10 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
                ),
                true,
            ),
            (
                "A7",
                Command::Ck(Ck {
                    ssrc: 0x1122_3344,
                    count: 1,
                    timestamps: [10_000, 5_000_020, 0],
                }),
                hex(
                    "FF FF 43 4B 11 22 33 44 01 00 00 00 00 00 00 00 00 00 27 10 00 00 00 00 00 4C 4B 54 00 00 00 00 00 00 00 00",
                ),
                true,
            ),
            (
                "A8",
                Command::Ck(Ck {
                    ssrc: 0xAABB_CCDD,
                    count: 2,
                    timestamps: [10_000, 5_000_020, 10_040],
                }),
                hex(
                    "FF FF 43 4B AA BB CC DD 02 00 00 00 00 00 00 00 00 00 27 10 00 00 00 00 00 4C 4B 54 00 00 00 00 00 00 27 38",
                ),
                true,
            ),
            // macOS: padding FF FF FF and garbage in ts2/ts3 are ignored (so no exact re-encode).
            (
                "A2",
                Command::Ck(Ck {
                    ssrc: 0x0E8C_9303,
                    count: 0,
                    timestamps: [0x0178_B4EB, 0, 0],
                }),
                hex(
                    "FF FF 43 4B 0E 8C 93 03 00 FF FF FF 00 00 00 00 01 78 B4 EB A2 A7 03 00 00 AE D0 50 FF 7F 00 00 75 91 0D 95",
                ),
                false,
            ),
            (
                "A9",
                Command::ReceiverFeedback {
                    ssrc: 0xAABB_CCDD,
                    seq: 0x1234,
                },
                hex("FF FF 52 53 AA BB CC DD 12 34 00 00"),
                true,
            ),
            (
                "A10",
                Command::BitrateLimit {
                    ssrc: 0xAABB_CCDD,
                    bits_per_second: 31_250,
                },
                hex("FF FF 52 4C AA BB CC DD 00 00 7A 12"),
                true,
            ),
        ]
    }

    #[test]
    fn golden_vectors_decode_and_encode() {
        let mut out = Vec::new();
        for (name, command, bytes, exact) in vectors() {
            assert_eq!(decode(&bytes), Ok(command.clone()), "{name} decode");
            encode_into(&command, &mut out);
            if exact {
                assert_eq!(out, bytes, "{name} encode");
            }
            assert_eq!(decode(&out), Ok(command), "{name} round trip");
        }
    }

    #[test]
    fn quirks_of_real_peers_are_accepted() {
        // rtpmidid's RS puts the sequence number in bytes 10-11.
        let rs = hex("FF FF 52 53 AA BB CC DD 00 00 12 34");
        assert_eq!(
            decode(&rs),
            Ok(Command::ReceiverFeedback {
                ssrc: 0xAABB_CCDD,
                seq: 0x1234
            })
        );
        // A name without its NUL, and a long non-ASCII one.
        let mut no_nul = hex("FF FF 49 4E 00 00 00 02 00 00 00 01 00 00 00 02");
        no_nul.extend_from_slice("Studio Ω".as_bytes());
        let Ok(Command::Invitation(e)) = decode(&no_nul) else {
            panic!("not decoded")
        };
        assert_eq!(e.name.as_deref(), Some("Studio Ω"));
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        assert_eq!(decode(&hex("80 61 00 01")), Err(DecodeError::NoSignature));
        assert_eq!(
            decode(&hex("FF FF 49")),
            Err(DecodeError::Truncated {
                command: "command",
                len: 3,
                need: 4
            })
        );
        assert_eq!(
            decode(&hex("FF FF 49 4E 00 00 00 02 12 34")),
            Err(DecodeError::Truncated {
                command: "IN",
                len: 10,
                need: 16
            })
        );
        assert_eq!(
            decode(&hex("FF FF 49 4E 00 00 00 03 12 34 56 78 AA BB CC DD")),
            Err(DecodeError::Version(3))
        );
        assert_eq!(
            decode(&hex("FF FF 58 58 00 00")),
            Err(DecodeError::UnknownCommand(0x5858))
        );
        let mut ck = hex("FF FF 43 4B AA BB CC DD 03");
        ck.resize(36, 0);
        assert_eq!(decode(&ck), Err(DecodeError::CkCount(3)));
        assert!(matches!(
            decode(&ck[..35]),
            Err(DecodeError::Truncated { command: "CK", .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every prefix and many single-byte mutations of every vector, plus random buffers.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (_, _, bytes, _) in vectors() {
            for len in 0..=bytes.len() {
                let _ = decode(&bytes[..len]);
            }
            for _ in 0..2000 {
                let mut m = bytes.clone();
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
                let _ = decode(&m);
            }
        }
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 2 && next() % 2 == 0 {
                b[0] = 0xFF;
                b[1] = 0xFF;
            }
            let _ = decode(&b);
        }
    }
}
