//! OSC 1.0 / 1.1 codec (digest §3): messages and bundles with every type tag of the 1.0 spec
//! and its 1.1 additions (`i f s b T F N I t h d S c r m [ ]`), NTP time tags, and the two
//! stream framings (1.0 int32 size prefix, 1.1 SLIP). Sans-IO and total: any bytes give a
//! packet or a [`DecodeError`], never a panic; nesting depth and sizes are bounded.
//!
//! Our own codec rather than `rosc`: rosc rejects the whole packet on an `S` (symbol) tag and
//! has no OSC 1.1 `//` matching, both of which controllers in the wild use.

pub mod pattern;

use thiserror::Error;

/// Time tag meaning "immediately".
pub const IMMEDIATELY: u64 = 1;
/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Deepest bundle nesting we accept.
pub const MAX_DEPTH: usize = 8;
/// Most arguments (array items included) we accept in one message.
pub const MAX_ARGS: usize = 256;

/// One argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// `i`
    Int(i32),
    /// `f`
    Float(f32),
    /// `s`
    Str(String),
    /// `S` (alternate string, "symbol")
    Symbol(String),
    /// `b`
    Blob(Vec<u8>),
    /// `T`
    True,
    /// `F`
    False,
    /// `N`
    Nil,
    /// `I` (Infinitum in 1.0, Impulse in 1.1)
    Impulse,
    /// `t`
    Time(u64),
    /// `h`
    Long(i64),
    /// `d`
    Double(f64),
    /// `c` (the low byte… in practice an ASCII or Unicode scalar in an int32)
    Char(u32),
    /// `r` RGBA
    Color(u32),
    /// `m` port, status, data1, data2
    Midi([u8; 4]),
    /// `[ … ]`
    Array(Vec<Arg>),
}

impl Arg {
    /// The value as a number, if it is one (`i f d h`, and `T`/`F` as 1/0).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Arg::Int(v) => Some(f64::from(v)),
            Arg::Float(v) => Some(f64::from(v)),
            Arg::Double(v) => Some(v),
            Arg::Long(v) => Some(v as f64),
            Arg::True => Some(1.0),
            Arg::False => Some(0.0),
            _ => None,
        }
    }

    /// The type tag character.
    pub fn tag(&self) -> char {
        match self {
            Arg::Int(_) => 'i',
            Arg::Float(_) => 'f',
            Arg::Str(_) => 's',
            Arg::Symbol(_) => 'S',
            Arg::Blob(_) => 'b',
            Arg::True => 'T',
            Arg::False => 'F',
            Arg::Nil => 'N',
            Arg::Impulse => 'I',
            Arg::Time(_) => 't',
            Arg::Long(_) => 'h',
            Arg::Double(_) => 'd',
            Arg::Char(_) => 'c',
            Arg::Color(_) => 'r',
            Arg::Midi(_) => 'm',
            Arg::Array(_) => '[',
        }
    }
}

/// A message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Address (pattern).
    pub address: String,
    /// Arguments.
    pub args: Vec<Arg>,
}

impl Message {
    /// A message to `address` with `args`.
    pub fn new(address: impl Into<String>, args: Vec<Arg>) -> Self {
        Self {
            address: address.into(),
            args,
        }
    }
}

/// A packet: a message, or a bundle of packets with a time tag.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// A message.
    Message(Message),
    /// A bundle.
    Bundle {
        /// NTP time tag ([`IMMEDIATELY`] = now).
        time: u64,
        /// Contents, in order.
        elements: Vec<Packet>,
    },
}

/// Why bytes are not an OSC packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Empty or not a multiple of 4 bytes.
    #[error("length {0} is not a positive multiple of 4")]
    Length(usize),
    /// Neither `/` (message) nor `#bundle`.
    #[error("not a message or bundle")]
    Kind,
    /// A string without its NUL inside the packet, or not UTF-8.
    #[error("bad string")]
    String,
    /// Shorter than the type tags announce.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A type tag we do not know (1.0: discard the message).
    #[error("unknown type tag {0:?}")]
    UnknownTag(char),
    /// `[` / `]` do not pair up.
    #[error("unbalanced array")]
    Array,
    /// A bundle element size that is negative, unaligned or too large.
    #[error("bad bundle element size")]
    ElementSize,
    /// Bundles nested deeper than [`MAX_DEPTH`].
    #[error("bundles nested too deep")]
    Depth,
    /// More than [`MAX_ARGS`] arguments.
    #[error("too many arguments")]
    TooManyArgs,
    /// Bytes left after the arguments.
    #[error("trailing bytes")]
    Trailing,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated(what))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let rest = self.b.get(self.at..).ok_or(DecodeError::String)?;
        let nul = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(DecodeError::String)?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::String)?;
        let padded = (nul + 4) & !3;
        self.take(padded, "string padding")?;
        Ok(s)
    }

    fn blob(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32("blob size")? as usize;
        let data = self.take(n, "blob")?.to_vec();
        self.take((4 - n % 4) % 4, "blob padding")?;
        Ok(data)
    }
}

/// Decode one packet (a whole UDP datagram, or one frame of a stream).
pub fn decode(b: &[u8]) -> Result<Packet, DecodeError> {
    decode_at_depth(b, 0)
}

fn decode_at_depth(b: &[u8], depth: usize) -> Result<Packet, DecodeError> {
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return Err(DecodeError::Length(b.len()));
    }
    match b[0] {
        b'/' => decode_message(b).map(Packet::Message),
        b'#' => {
            if depth >= MAX_DEPTH {
                return Err(DecodeError::Depth);
            }
            let mut r = Reader { b, at: 0 };
            if r.string()? != "#bundle" {
                return Err(DecodeError::Kind);
            }
            let time = r.u64("time tag")?;
            let mut elements = Vec::new();
            while r.at < b.len() {
                let size = r.u32("element size")? as usize;
                if size == 0 || !size.is_multiple_of(4) || size > b.len() - r.at {
                    return Err(DecodeError::ElementSize);
                }
                let element = r.take(size, "element")?;
                elements.push(decode_at_depth(element, depth + 1)?);
            }
            Ok(Packet::Bundle { time, elements })
        }
        _ => Err(DecodeError::Kind),
    }
}

fn decode_message(b: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { b, at: 0 };
    let address = r.string()?.to_owned();
    if r.at == b.len() {
        // Very old senders omit the type tag string: a message without arguments.
        return Ok(Message {
            address,
            args: Vec::new(),
        });
    }
    let tags = r.string()?;
    let Some(tags) = tags.strip_prefix(',') else {
        return Err(DecodeError::UnknownTag(tags.chars().next().unwrap_or('?')));
    };
    if tags.len() > MAX_ARGS {
        return Err(DecodeError::TooManyArgs);
    }
    // Arrays nest: a stack of argument lists.
    let mut stack: Vec<Vec<Arg>> = vec![Vec::new()];
    for tag in tags.chars() {
        let arg = match tag {
            'i' => Arg::Int(r.u32("int32")? as i32),
            'f' => Arg::Float(f32::from_bits(r.u32("float32")?)),
            's' => Arg::Str(r.string()?.to_owned()),
            'S' => Arg::Symbol(r.string()?.to_owned()),
            'b' => Arg::Blob(r.blob()?),
            'T' => Arg::True,
            'F' => Arg::False,
            'N' => Arg::Nil,
            'I' => Arg::Impulse,
            't' => Arg::Time(r.u64("time tag")?),
            'h' => Arg::Long(r.u64("int64")? as i64),
            'd' => Arg::Double(f64::from_bits(r.u64("float64")?)),
            'c' => Arg::Char(r.u32("char")?),
            'r' => Arg::Color(r.u32("colour")?),
            'm' => {
                let s = r.take(4, "midi")?;
                Arg::Midi([s[0], s[1], s[2], s[3]])
            }
            '[' => {
                stack.push(Vec::new());
                continue;
            }
            ']' => {
                if stack.len() < 2 {
                    return Err(DecodeError::Array);
                }
                let items = stack.pop().unwrap_or_default();
                Arg::Array(items)
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        if let Some(top) = stack.last_mut() {
            top.push(arg);
        }
    }
    if stack.len() != 1 {
        return Err(DecodeError::Array);
    }
    if r.at != b.len() {
        return Err(DecodeError::Trailing);
    }
    Ok(Message {
        address,
        args: stack.pop().unwrap_or_default(),
    })
}

fn put_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(s.as_bytes());
    let pad = 4 - s.len() % 4;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn put_tags(args: &[Arg], tags: &mut String) {
    for a in args {
        tags.push(a.tag());
        if let Arg::Array(items) = a {
            put_tags(items, tags);
            tags.push(']');
        }
    }
}

fn put_args(args: &[Arg], out: &mut Vec<u8>) {
    for a in args {
        match a {
            Arg::Int(v) => out.extend_from_slice(&v.to_be_bytes()),
            Arg::Float(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
            Arg::Str(s) | Arg::Symbol(s) => put_string(s, out),
            Arg::Blob(b) => {
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
                out.extend(std::iter::repeat_n(0u8, (4 - b.len() % 4) % 4));
            }
            Arg::True | Arg::False | Arg::Nil | Arg::Impulse => {}
            Arg::Time(t) => out.extend_from_slice(&t.to_be_bytes()),
            Arg::Long(v) => out.extend_from_slice(&v.to_be_bytes()),
            Arg::Double(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
            Arg::Char(c) | Arg::Color(c) => out.extend_from_slice(&c.to_be_bytes()),
            Arg::Midi(m) => out.extend_from_slice(m),
            Arg::Array(items) => put_args(items, out),
        }
    }
}

/// Append the encoding of `message` to `out`.
pub fn encode_message(message: &Message, out: &mut Vec<u8>) {
    // Strings with an inner NUL would not round-trip: cut them there.
    let address = message.address.split('\0').next().unwrap_or_default();
    put_string(address, out);
    let mut tags = String::from(",");
    put_tags(&message.args, &mut tags);
    put_string(&tags, out);
    put_args(&message.args, out);
}

/// Append the encoding of `packet` to `out`.
pub fn encode(packet: &Packet, out: &mut Vec<u8>) {
    match packet {
        Packet::Message(m) => encode_message(m, out),
        Packet::Bundle { time, elements } => {
            put_string("#bundle", out);
            out.extend_from_slice(&time.to_be_bytes());
            for e in elements {
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                encode(e, out);
                let size = (out.len() - at - 4) as u32;
                out[at..at + 4].copy_from_slice(&size.to_be_bytes());
            }
        }
    }
}

/// NTP time tag for a Unix time in seconds.
pub fn timetag_from_unix(seconds: f64) -> u64 {
    let whole = seconds.floor();
    let frac = ((seconds - whole) * 4_294_967_296.0).round() as u64;
    ((whole as u64 + NTP_UNIX_OFFSET) << 32) + frac
}

/// Unix time in seconds for an NTP time tag.
pub fn timetag_to_unix(tag: u64) -> f64 {
    (tag >> 32) as f64 - NTP_UNIX_OFFSET as f64 + (tag & 0xffff_ffff) as f64 / 4_294_967_296.0
}

/// SLIP framing (RFC 1055, OSC 1.1 "double END").
pub mod slip {
    const END: u8 = 0xC0;
    const ESC: u8 = 0xDB;
    const ESC_END: u8 = 0xDC;
    const ESC_ESC: u8 = 0xDD;

    /// Append `packet` framed as `END escaped END`.
    pub fn encode(packet: &[u8], out: &mut Vec<u8>) {
        out.push(END);
        for &b in packet {
            match b {
                END => out.extend_from_slice(&[ESC, ESC_END]),
                ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
                b => out.push(b),
            }
        }
        out.push(END);
    }

    /// A streaming decoder: feed bytes as they arrive, take whole frames out. Frames longer
    /// than `max` are dropped and counted.
    #[derive(Debug, Default)]
    pub struct Decoder {
        frame: Vec<u8>,
        escaped: bool,
        overlong: bool,
        max: usize,
        /// Frames dropped for being too long or badly escaped.
        pub dropped: u64,
    }

    impl Decoder {
        /// A decoder for frames of at most `max` bytes.
        pub fn new(max: usize) -> Self {
            Self {
                max,
                ..Self::default()
            }
        }

        /// Feed `bytes`; every complete frame is passed to `frame`.
        pub fn feed(&mut self, bytes: &[u8], frame: &mut impl FnMut(&[u8])) {
            for &b in bytes {
                match (self.escaped, b) {
                    (false, END) => {
                        if !self.frame.is_empty() && !self.overlong {
                            frame(&self.frame);
                        } else if self.overlong {
                            self.dropped += 1;
                        }
                        self.frame.clear();
                        self.overlong = false;
                    }
                    (false, ESC) => self.escaped = true,
                    (true, ESC_END) => self.push(END),
                    (true, ESC_ESC) => self.push(ESC),
                    (true, _) => {
                        // A protocol violation: drop the frame.
                        self.escaped = false;
                        self.overlong = true;
                    }
                    (false, b) => self.push(b),
                }
                if b != ESC {
                    self.escaped = false;
                }
            }
        }

        /// The frame being read is already longer than the limit (or broken): a stream that
        /// does this is misbehaving.
        pub fn overlong(&self) -> bool {
            self.overlong
        }

        fn push(&mut self, b: u8) {
            self.escaped = false;
            if self.frame.len() >= self.max {
                self.overlong = true;
            } else {
                self.frame.push(b);
            }
        }
    }
}

/// OSC 1.0 stream framing: each packet preceded by its int32 size.
pub mod size_prefixed {
    /// Append `packet` with its size.
    pub fn encode(packet: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(packet.len() as u32).to_be_bytes());
        out.extend_from_slice(packet);
    }

    /// A streaming decoder. A size above `max` cannot be skipped safely on a stream: the
    /// decoder reports it and the connection should be closed.
    #[derive(Debug, Default)]
    pub struct Decoder {
        buf: Vec<u8>,
        max: usize,
    }

    /// The stream announced a frame larger than allowed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TooLarge(pub usize);

    impl Decoder {
        /// A decoder for frames of at most `max` bytes.
        pub fn new(max: usize) -> Self {
            Self {
                buf: Vec::new(),
                max,
            }
        }

        /// Feed `bytes`; every complete frame is passed to `frame`.
        pub fn feed(
            &mut self,
            bytes: &[u8],
            frame: &mut impl FnMut(&[u8]),
        ) -> Result<(), TooLarge> {
            self.buf.extend_from_slice(bytes);
            let mut at = 0;
            while let Some(head) = self.buf.get(at..at + 4) {
                let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                if size > self.max {
                    self.buf.clear();
                    return Err(TooLarge(size));
                }
                let Some(body) = self.buf.get(at + 4..at + 4 + size) else {
                    break;
                };
                frame(body);
                at += 4 + size;
            }
            self.buf.drain(..at);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::applemidi::tests::hex;

    fn round_trip(bytes: &[u8], expected: &Packet) {
        let decoded = decode(bytes).expect("decodes");
        assert_eq!(&decoded, expected);
        let mut out = Vec::new();
        encode(expected, &mut out);
        assert_eq!(out, bytes, "{expected:?}");
    }

    fn msg(address: &str, args: Vec<Arg>) -> Packet {
        Packet::Message(Message::new(address, args))
    }

    const O1: &str = "2F 66 69 6C 74 65 72 2F 63 75 74 6F 66 66 00 00 2C 66 00 00 45 12 90 00";

    #[test]
    fn digest_vectors() {
        round_trip(&hex(O1), &msg("/filter/cutoff", vec![Arg::Float(2345.0)]));
        round_trip(
            &hex(
                "2F 6F 73 63 69 6C 6C 61 74 6F 72 2F 34 2F 66 72 65 71 75 65 6E 63 79 00 2C 66 00 00 43 DC 00 00",
            ),
            &msg("/oscillator/4/frequency", vec![Arg::Float(440.0)]),
        );
        round_trip(
            &hex(
                "2F 66 6F 6F 00 00 00 00 2C 69 69 73 66 66 00 00 00 00 03 E8 FF FF FF FF 68 65 6C 6C 6F 00 00 00 3F 9D F3 B6 40 B5 B2 2D",
            ),
            &msg(
                "/foo",
                vec![
                    Arg::Int(1000),
                    Arg::Int(-1),
                    Arg::Str("hello".into()),
                    Arg::Float(1.234),
                    Arg::Float(5.678),
                ],
            ),
        );
        round_trip(
            &hex("2F 74 72 61 6E 73 70 6F 72 74 2F 70 6C 61 79 00 2C 54 00 00"),
            &msg("/transport/play", vec![Arg::True]),
        );
        round_trip(
            &hex("2F 74 00 00 2C 54 46 4E 49 00 00 00"),
            &msg("/t", vec![Arg::True, Arg::False, Arg::Nil, Arg::Impulse]),
        );
        round_trip(&hex("2F 78 00 00 2C 00 00 00"), &msg("/x", vec![]));
        round_trip(
            &hex("2F 62 00 00 2C 62 00 00 00 00 00 05 01 02 03 04 05 00 00 00"),
            &msg("/b", vec![Arg::Blob(vec![1, 2, 3, 4, 5])]),
        );
        round_trip(
            &hex("2F 68 00 00 2C 68 64 00 FF FF FF FF FF FF FF FE 3F E0 00 00 00 00 00 00"),
            &msg("/h", vec![Arg::Long(-2), Arg::Double(0.5)]),
        );
        round_trip(
            &hex("2F 73 00 00 2C 73 53 00 61 62 63 00 73 79 6D 00"),
            &msg(
                "/s",
                vec![Arg::Str("abc".into()), Arg::Symbol("sym".into())],
            ),
        );
        round_trip(
            &hex("2F 63 00 00 2C 63 72 6D 00 00 00 00 00 00 00 41 FF 00 00 FF 00 90 3C 7F"),
            &msg(
                "/c",
                vec![
                    Arg::Char(0x41),
                    Arg::Color(0xFF00_00FF),
                    Arg::Midi([0, 0x90, 0x3C, 0x7F]),
                ],
            ),
        );
        round_trip(
            &hex("2F 61 00 00 2C 69 5B 66 66 5D 00 00 00 00 00 01 3F 00 00 00 3E 80 00 00"),
            &msg(
                "/a",
                vec![
                    Arg::Int(1),
                    Arg::Array(vec![Arg::Float(0.5), Arg::Float(0.25)]),
                ],
            ),
        );
        assert_eq!(timetag_from_unix(1_700_000_000.5), 0xE8FE_6F80_8000_0000);
        assert!((timetag_to_unix(0xE8FE_6F80_8000_0000) - 1_700_000_000.5).abs() < 1e-6);
        round_trip(
            &hex("2F 74 00 00 2C 74 00 00 E8 FE 6F 80 80 00 00 00"),
            &msg("/t", vec![Arg::Time(0xE8FE_6F80_8000_0000)]),
        );
        let mut o15 = hex("23 62 75 6E 64 6C 65 00 00 00 00 00 00 00 00 01 00 00 00 18");
        o15.extend(hex(O1));
        round_trip(
            &o15,
            &Packet::Bundle {
                time: IMMEDIATELY,
                elements: vec![msg("/filter/cutoff", vec![Arg::Float(2345.0)])],
            },
        );
        let mut framed = Vec::new();
        slip::encode(&hex("2F 78 00 00 2C 00 00 00"), &mut framed);
        assert_eq!(framed, hex("C0 2F 78 00 00 2C 00 00 00 C0"));
    }

    #[test]
    fn bad_packets_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Length(0)));
        assert_eq!(decode(b"/ab"), Err(DecodeError::Length(3)));
        assert_eq!(decode(b"xyz\0"), Err(DecodeError::Kind));
        // Unknown tag 'Q': the message is discarded (1.0 rule).
        assert_eq!(
            decode(&hex("2F 78 00 00 2C 51 00 00")),
            Err(DecodeError::UnknownTag('Q'))
        );
        // Float announced, no bytes.
        assert_eq!(
            decode(&hex("2F 78 00 00 2C 66 00 00")),
            Err(DecodeError::Truncated("float32"))
        );
        assert_eq!(
            decode(&hex("2F 78 00 00 2C 5B 00 00")),
            Err(DecodeError::Array)
        );
        // Bundle element bigger than the bundle.
        let mut b = hex("23 62 75 6E 64 6C 65 00 00 00 00 00 00 00 00 01 00 00 01 00");
        b.extend(hex(O1));
        assert_eq!(decode(&b), Err(DecodeError::ElementSize));
        // Nested too deep.
        let mut inner = Vec::new();
        encode(&msg("/x", vec![]), &mut inner);
        let mut p = msg("/x", vec![]);
        for _ in 0..=MAX_DEPTH {
            p = Packet::Bundle {
                time: IMMEDIATELY,
                elements: vec![p],
            };
        }
        let mut deep = Vec::new();
        encode(&p, &mut deep);
        assert_eq!(decode(&deep), Err(DecodeError::Depth));
        // No type tag string at all (very old senders): accepted without arguments.
        assert_eq!(decode(b"/old"), Err(DecodeError::String));
        assert_eq!(decode(b"/ol\0"), Ok(msg("/ol", vec![])));
    }

    #[test]
    fn arbitrary_and_mutated_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = hex(O1);
        let mut bundle = Vec::new();
        encode(
            &Packet::Bundle {
                time: 5,
                elements: vec![
                    msg(
                        "/a",
                        vec![Arg::Array(vec![Arg::Int(1)]), Arg::Str("x".into())],
                    ),
                    msg("/b", vec![Arg::Blob(vec![9; 7])]),
                ],
            },
            &mut bundle,
        );
        for case in 0..200_000 {
            let base = if case % 2 == 0 {
                &mut valid
            } else {
                &mut bundle
            };
            let mut bytes = base.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            if case % 7 == 0 {
                bytes.truncate((next() as usize) % (bytes.len() + 1));
            }
            let _ = decode(&bytes);
            let random: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            let _ = decode(&random);
        }
    }

    #[test]
    fn stream_framings_split_anywhere() {
        let mut packets = Vec::new();
        encode(&msg("/a", vec![Arg::Int(0xC0DB)]), &mut packets);
        let first = packets.clone();
        let mut second = Vec::new();
        encode(
            &msg("/b", vec![Arg::Blob(vec![0xC0, 0xDB, 0xC0])]),
            &mut second,
        );
        for framing in 0..2 {
            let mut stream = Vec::new();
            for p in [&first, &second] {
                if framing == 0 {
                    slip::encode(p, &mut stream);
                } else {
                    size_prefixed::encode(p, &mut stream);
                }
            }
            for split in 0..stream.len() {
                let mut got = Vec::new();
                let mut push = |f: &[u8]| got.push(f.to_vec());
                if framing == 0 {
                    let mut d = slip::Decoder::new(1024);
                    d.feed(&stream[..split], &mut push);
                    d.feed(&stream[split..], &mut push);
                } else {
                    let mut d = size_prefixed::Decoder::new(1024);
                    d.feed(&stream[..split], &mut push).expect("fits");
                    d.feed(&stream[split..], &mut push).expect("fits");
                }
                assert_eq!(got, vec![first.clone(), second.clone()], "split {split}");
            }
        }
        let mut d = size_prefixed::Decoder::new(16);
        assert_eq!(
            d.feed(&[0, 0, 1, 0], &mut |_| {}),
            Err(size_prefixed::TooLarge(256))
        );
        let mut d = slip::Decoder::new(4);
        let mut n = 0;
        d.feed(&[0xC0, 1, 2, 3, 4, 5, 0xC0, 1, 0xC0], &mut |_| n += 1);
        assert_eq!((n, d.dropped), (1, 1));
    }
}
