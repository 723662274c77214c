//! Tests of the datagram framing: round trips, golden vectors cross-checked with an independent
//! implementation, tampering, replay, sizes, and a seeded mutation fuzz.

use super::*;

fn key(first: u8) -> DatagramKey {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = first.wrapping_add(i as u8);
    }
    DatagramKey::from_bytes(bytes)
}

fn pair(epoch: u8) -> (Sealer, Opener) {
    (Sealer::new(&key(0), epoch), Opener::new(&key(0), epoch))
}

fn seal(sealer: &mut Sealer, inner: &Inner<'_>) -> Vec<u8> {
    let mut out = [0u8; MAX_DATAGRAM];
    let len = sealer.seal(inner, &mut out).unwrap();
    out[..len].to_vec()
}

fn open(opener: &mut Opener, datagram: &[u8]) -> Result<u64, OpenError> {
    let mut plain = [0u8; MAX_DATAGRAM];
    opener.open(datagram, &mut plain).map(|opened| opened.seq)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const SAMPLE_TIMELINE: RemoteTimeline = RemoteTimeline {
    tempo_bpm: 120.0,
    beat_origin: 16.0,
    time_origin_ns: -1_500_000_000,
    playing: true,
    quantum: 4.0,
    generation: 7,
    author: PeerId([1, 2, 3, 4, 5, 6, 7, 8]),
};

#[test]
fn every_inner_type_round_trips() {
    let midi = [0x80, 0x61, 0x12, 0x34, 0x90, 0x3c, 0x64];
    let rs = [0xaa, 0xbb, 0xcc, 0xdd, 0x12, 0x34, 0, 0];
    let big = [0x5a; MAX_PAYLOAD];
    let messages = [
        Inner::RtpMidi(&midi),
        Inner::RtpMidi(&[]),
        Inner::RtpMidi(&big),
        Inner::Rs(&rs),
        Inner::Ping { t1_ns: u64::MAX },
        Inner::Pong {
            t1_ns: 1,
            t2_ns: 0x0102_0304_0506_0708,
            t3_ns: u64::MAX - 1,
        },
        Inner::Timeline(SAMPLE_TIMELINE),
        Inner::Timeline(RemoteTimeline {
            playing: false,
            tempo_bpm: TEMPO_RANGE.0,
            ..SAMPLE_TIMELINE
        }),
        Inner::Bye,
    ];
    let (mut sealer, mut opener) = pair(3);
    for (seq, inner) in messages.iter().enumerate() {
        let datagram = seal(&mut sealer, inner);
        assert!(datagram.len() <= MAX_DATAGRAM);
        assert_eq!(datagram[0], FRAME_V1);
        assert_eq!(datagram[1], 3);
        let mut plain = [0u8; MAX_DATAGRAM];
        let opened = opener.open(&datagram, &mut plain).unwrap();
        assert_eq!(opened.seq, seq as u64);
        assert_eq!(&opened.inner, inner);
    }
    assert_eq!(sealer.next_seq(), Some(messages.len() as u64));
}

/// Golden vectors, cross-checked with Python's `cryptography` 48 (OpenSSL's
/// ChaCha20-Poly1305, independent of the RustCrypto crates):
///
/// ```text
/// key = bytes(range(32)); hdr = bytes([0xD1, epoch]) + struct.pack(">Q", seq)
/// hdr + ChaCha20Poly1305(key).encrypt(b"\0" * 4 + struct.pack(">Q", seq), plaintext, hdr)
/// ping:     epoch 7, seq 0x0102030405060708, plaintext = 03 ‖ 1122334455667788
/// timeline: epoch 0, seq 42, plaintext = 05 ‖ struct.pack(">ddqBdQ", 120.0, 16.0,
///           -1_500_000_000, 1, 4.0, 7) ‖ bytes([1, 2, 3, 4, 5, 6, 7, 8])
/// ```
#[test]
fn golden_vectors() {
    let mut sealer = Sealer::at_seq(&key(0), 7, 0x0102_0304_0506_0708);
    let ping = seal(
        &mut sealer,
        &Inner::Ping {
            t1_ns: 0x1122_3344_5566_7788,
        },
    );
    assert_eq!(
        hex(&ping),
        "d1070102030405060708ecf787cbe1d9ceeb98eda5203b712e2287bd178d5f33599001"
    );
    let mut sealer = Sealer::at_seq(&key(0), 0, 42);
    let timeline = seal(&mut sealer, &Inner::Timeline(SAMPLE_TIMELINE));
    assert_eq!(
        hex(&timeline),
        concat!(
            "d100000000000000002afb11f58a7a324dfe2d204e6a0df1a8cf0bb9ed87e764641376e6",
            "74e792ec695540918ff08882280d576e5e23c05fdb834f458623242ee1487fb71dcf8787",
            "ec4e600b"
        )
    );
    let mut opener = Opener::new(&key(0), 0);
    let mut plain = [0u8; MAX_DATAGRAM];
    let opened = opener.open(&timeline, &mut plain).unwrap();
    assert_eq!(opened.inner, Inner::Timeline(SAMPLE_TIMELINE));
    assert_eq!(opened.seq, 42);
}

#[test]
fn every_flipped_bit_is_refused() {
    let (mut sealer, _) = pair(1);
    let datagram = seal(&mut sealer, &Inner::Ping { t1_ns: 12345 });
    for bit in 0..datagram.len() * 8 {
        let mut bad = datagram.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let mut opener = Opener::new(&key(0), 1);
        let expected = match bit / 8 {
            0 => OpenError::NotOurs,
            1 => OpenError::WrongEpoch(bad[1]),
            _ => OpenError::Forged,
        };
        assert_eq!(open(&mut opener, &bad), Err(expected), "bit {bit}");
        // The refusal changed nothing: the genuine datagram still opens.
        assert_eq!(open(&mut opener, &datagram), Ok(0), "bit {bit}");
    }
    // Cut anywhere: truncated or forged, never opened.
    for len in 0..datagram.len() {
        let mut opener = Opener::new(&key(0), 1);
        let result = open(&mut opener, &datagram[..len]);
        let expected = match len {
            0 => OpenError::NotOurs,
            1..OVERHEAD => OpenError::Truncated,
            _ => OpenError::Forged,
        };
        assert_eq!(result, Err(expected), "len {len}");
    }
}

#[test]
fn wrong_key_or_epoch_is_refused() {
    let (mut sealer, _) = pair(2);
    let datagram = seal(&mut sealer, &Inner::Bye);
    assert_eq!(
        open(&mut Opener::new(&key(1), 2), &datagram),
        Err(OpenError::Forged)
    );
    assert_eq!(
        open(&mut Opener::new(&key(0), 3), &datagram),
        Err(OpenError::WrongEpoch(2))
    );
    // Same key and sequence number, other epoch: the epoch is authenticated too.
    let mut other_epoch = seal(&mut Sealer::new(&key(0), 9), &Inner::Bye);
    other_epoch[1] = 2;
    assert_eq!(
        open(&mut Opener::new(&key(0), 2), &other_epoch),
        Err(OpenError::Forged)
    );
}

#[test]
fn replays_are_refused_and_reordering_within_the_window_is_not() {
    let (mut sealer, mut opener) = pair(0);
    let datagrams: Vec<_> = (0..=200)
        .map(|i| seal(&mut sealer, &Inner::Ping { t1_ns: i }))
        .collect();
    assert_eq!(open(&mut opener, &datagrams[0]), Ok(0));
    assert_eq!(open(&mut opener, &datagrams[0]), Err(OpenError::Replayed));
    // Out of order inside the window: each opens exactly once.
    for i in [5, 3, 9, 1, 2, 8, 4, 7, 6] {
        assert_eq!(open(&mut opener, &datagrams[i]), Ok(i as u64));
    }
    for datagram in &datagrams[..10] {
        assert_eq!(open(&mut opener, datagram), Err(OpenError::Replayed));
    }
    // Jump to 200: 0..=72 are now 128 or more behind.
    assert_eq!(open(&mut opener, &datagrams[200]), Ok(200));
    assert_eq!(open(&mut opener, &datagrams[10]), Err(OpenError::TooOld));
    assert_eq!(open(&mut opener, &datagrams[72]), Err(OpenError::TooOld));
    assert_eq!(open(&mut opener, &datagrams[73]), Ok(73));
    assert_eq!(open(&mut opener, &datagrams[199]), Ok(199));
    assert_eq!(open(&mut opener, &datagrams[199]), Err(OpenError::Replayed));
}

#[test]
fn a_forged_huge_seq_does_not_move_the_window() {
    let (mut sealer, mut opener) = pair(0);
    for i in 0..3 {
        let datagram = seal(&mut sealer, &Inner::Ping { t1_ns: i });
        assert_eq!(open(&mut opener, &datagram), Ok(i));
    }
    let genuine = seal(&mut sealer, &Inner::Ping { t1_ns: 3 });
    let mut forged = genuine.clone();
    forged[2..HEADER_LEN].copy_from_slice(&(u64::MAX - 5).to_be_bytes());
    assert_eq!(open(&mut opener, &forged), Err(OpenError::Forged));
    assert_eq!(opener.window().top(), Some(2));
    assert_eq!(open(&mut opener, &genuine), Ok(3));
}

#[test]
fn sizes_are_bounded() {
    let (mut sealer, mut opener) = pair(0);
    let big = [0u8; MAX_PAYLOAD + 1];
    let mut out = [0u8; 2 * MAX_DATAGRAM];
    assert_eq!(
        sealer.seal(&Inner::RtpMidi(&big), &mut out),
        Err(SealError::PayloadTooLarge {
            len: MAX_PAYLOAD + 1
        })
    );
    let len = sealer
        .seal(&Inner::RtpMidi(&big[..MAX_PAYLOAD]), &mut out)
        .unwrap();
    assert_eq!(len, MAX_DATAGRAM);
    assert_eq!(
        sealer.seal(&Inner::RtpMidi(&big[..100]), &mut out[..126]),
        Err(SealError::BufferTooSmall { needed: 127 })
    );
    // Refusals used no sequence number.
    assert_eq!(sealer.next_seq(), Some(1));
    let mut long = out[..MAX_DATAGRAM].to_vec();
    long.push(0);
    assert_eq!(open(&mut opener, &long), Err(OpenError::TooLarge));
}

#[test]
fn sealing_stops_before_the_sequence_number_wraps() {
    let mut sealer = Sealer::at_seq(&key(0), 0, u64::MAX - 1);
    let mut opener = Opener::new(&key(0), 0);
    for seq in [u64::MAX - 1, u64::MAX] {
        let datagram = seal(&mut sealer, &Inner::Bye);
        assert_eq!(open(&mut opener, &datagram), Ok(seq));
    }
    assert_eq!(sealer.next_seq(), None);
    let mut out = [0u8; MAX_DATAGRAM];
    assert_eq!(
        sealer.seal(&Inner::Bye, &mut out),
        Err(SealError::Exhausted)
    );
}

#[test]
fn malformed_inner_messages_are_refused() {
    let bad_timelines = [
        RemoteTimeline {
            tempo_bpm: f64::NAN,
            ..SAMPLE_TIMELINE
        },
        RemoteTimeline {
            tempo_bpm: 5000.0,
            ..SAMPLE_TIMELINE
        },
        RemoteTimeline {
            beat_origin: f64::INFINITY,
            ..SAMPLE_TIMELINE
        },
        RemoteTimeline {
            quantum: 0.0,
            ..SAMPLE_TIMELINE
        },
    ];
    let (mut sealer, mut opener) = pair(0);
    let mut out = [0u8; MAX_DATAGRAM];
    for timeline in bad_timelines {
        assert_eq!(
            sealer.seal(&Inner::Timeline(timeline), &mut out),
            Err(SealError::InvalidTimeline)
        );
    }
    // Authentic datagrams whose inner part is wrong: sealed by hand through RtpMidi's
    // opaque payload, with the type byte rewritten before encryption.
    let mut playing_2 = SAMPLE_TIMELINE.encode();
    playing_2[24] = 2;
    let cases: [(u8, &[u8]); 6] = [
        (0, &[]),
        (7, &[1, 2, 3]),
        (PING, &[0; 7]),
        (PONG, &[0; 25]),
        (TIMELINE, &playing_2),
        (BYE, &[0]),
    ];
    for (kind, payload) in cases {
        let seq = sealer.next_seq().unwrap();
        let mut plain = vec![kind];
        plain.extend_from_slice(payload);
        let datagram = seal_raw(&key(0), 0, seq, &plain);
        sealer.next_seq = Some(seq + 1);
        assert_eq!(open(&mut opener, &datagram), Err(OpenError::BadInner));
        // Authentic, so its number is spent.
        assert_eq!(open(&mut opener, &datagram), Err(OpenError::Replayed));
    }
}

/// Seals arbitrary plaintext, bypassing [`Inner`]'s checks.
fn seal_raw(key: &DatagramKey, epoch: u8, seq: u64, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![FRAME_V1, epoch];
    out.extend_from_slice(&seq.to_be_bytes());
    let mut text = plain.to_vec();
    let tag = cipher(key)
        .encrypt_inout_detached(&nonce(seq), &out.clone(), InOutBuf::from(&mut text[..]))
        .unwrap();
    out.extend_from_slice(&text);
    out.extend_from_slice(&tag);
    out
}

#[test]
fn first_byte_never_looks_like_stun_rtp_or_channel_data() {
    let (mut sealer, _) = pair(0);
    for inner in [
        Inner::Bye,
        Inner::Ping { t1_ns: 0 },
        Inner::RtpMidi(&[0x80]),
    ] {
        let first = seal(&mut sealer, &inner)[0];
        assert!(first >= 0xC0, "{first:#x}");
        assert!(!(0x00..=0x03).contains(&first), "STUN");
        assert!(!(0x40..=0x7F).contains(&first), "ChannelData");
        assert!(!(0x80..=0xBF).contains(&first), "RTP/RTCP");
    }
    assert!(is_frame(&[FRAME_V1]));
    assert!(!is_frame(&[]) && !is_frame(&[0x00, 0x01]) && !is_frame(&[0x80]));
}

#[test]
fn arbitrary_and_mutated_datagrams_never_panic() {
    let (mut sealer, mut opener) = pair(0);
    let genuine = seal(&mut sealer, &Inner::Timeline(SAMPLE_TIMELINE));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut plain = [0u8; MAX_DATAGRAM];
    for _ in 0..20_000 {
        let mut bytes = if next() % 2 == 0 {
            genuine.clone()
        } else {
            let len = (next() % 1300) as usize;
            let mut random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = random.first_mut() {
                *first = FRAME_V1;
            }
            random
        };
        for _ in 0..(next() % 4) {
            if !bytes.is_empty() {
                let at = (next() as usize) % bytes.len();
                bytes[at] ^= next() as u8;
            }
        }
        let _ = opener.open(&bytes, &mut plain);
    }
}
