//! Tests of the rendezvous messages: round trips, a golden vector cross-checked with an
//! independent implementation, tampering, re-homing, replay, times, bounds, the book's limits,
//! and a seeded mutation fuzz.

use super::*;
use crate::proto::remote::keys::RootKey;
use crate::rng::Rng;

const A: PeerId = PeerId([1, 2, 3, 4, 5, 6, 7, 8]);
const B: PeerId = PeerId([0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8]);
const NOW: u64 = 1_700_000_000_000;

fn key(first: u8) -> MqttKey {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = first.wrapping_add(i as u8);
    }
    RootKey::from_bytes(bytes).mqtt_key()
}

fn code() -> SessionCode {
    SessionCode::parse("4821-k7qm-x2vd-9hfa-3nwp").unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn msg(peer: PeerId, seq: u64) -> Rendezvous {
    Rendezvous {
        v: 1,
        peer,
        seq,
        ts: NOW,
        exp: NOW + 120_000,
        ufrag: "Fz3q".into(),
        pwd: "asd88fgpdd777uzjYhagZg".into(),
        cands: vec!["candidate:1 1 udp 2130706431 192.0.2.10 5000 typ host".into()],
        eoc: true,
    }
}

fn nonce(first: u8) -> [u8; NONCE_LEN] {
    std::array::from_fn(|i| first.wrapping_add(i as u8))
}

fn sealed(peer: PeerId, seq: u64) -> Vec<u8> {
    seal(
        &key(0x40),
        &announce_topic(&code(), peer),
        &msg(peer, seq),
        nonce(0xa0),
    )
    .unwrap()
}

#[test]
fn topics_have_the_spec_shape_and_parse_back() {
    let announce = announce_topic(&code(), A);
    let directed = directed_topic(&code(), B);
    assert_eq!(announce.as_str(), "lockstep/v1/4821/peer/0102030405060708");
    assert_eq!(directed.to_string(), "lockstep/v1/4821/to/a1a2a3a4a5a6a7a8");
    assert_eq!(Topic::parse(announce.as_str()), Some(announce.clone()));
    assert_eq!(
        Topic::parse(directed.as_str()).unwrap().kind(),
        TopicKind::Directed
    );
    for bad in [
        "lockstep/v1/4821/peer/01020304050607",
        "lockstep/v1/4821/peer/0102030405060708/x",
        "lockstep/v1/482/peer/0102030405060708",
        "lockstep/v1/4821/from/0102030405060708",
        "lockstep/v1/4821/peer/0102030405O60708",
        "lockstep/v1/4821/peer/01020304050607A8",
        "lockstep/v2/4821/peer/0102030405060708",
        "",
    ] {
        assert_eq!(Topic::parse(bad), None, "{bad}");
    }
}

#[test]
fn round_trip_through_the_book() {
    let mut book = RendezvousBook::new();
    let topic = announce_topic(&code(), A);
    let opened = book.open(&key(0x40), &topic, &sealed(A, 7), NOW).unwrap();
    assert_eq!(opened, msg(A, 7));
    assert_eq!(book.last_seq(A), Some(7));
    let directed = directed_topic(&code(), B);
    let from_a = seal_random(&key(0x40), &directed, &msg(A, 8)).unwrap();
    assert_eq!(
        book.open(&key(0x40), &directed, &from_a, NOW),
        Ok(msg(A, 8))
    );
}

/// Cross-checked with Python: HChaCha20 written out in Python (checked against
/// draft-irtf-cfrg-xchacha-03 §2.2.1's vector), then `cryptography` 48's ChaCha20Poly1305
/// (OpenSSL) under the subkey with nonce `00000000 ‖ nonce[16..24]`; the MQTT key by
/// `HKDFExpand(SHA256(), 32, b"mqtt")` over root bytes 0x40..0x60.
#[test]
fn golden_vector_matches_an_independent_implementation() {
    assert_eq!(
        hex(key(0x40).as_bytes()),
        "96fc22c4262a61d55905f5636b3bf44d8bf33afe891fbd53bfb031eb16f76d86"
    );
    assert_eq!(
        serde_json::to_string(&msg(A, 7)).unwrap(),
        concat!(
            r#"{"v":1,"peer":"0102030405060708","seq":7,"ts":1700000000000,"#,
            r#""exp":1700000120000,"ufrag":"Fz3q","pwd":"asd88fgpdd777uzjYhagZg","#,
            r#""cands":["candidate:1 1 udp 2130706431 192.0.2.10 5000 typ host"],"eoc":true}"#
        )
    );
    assert_eq!(
        hex(&sealed(A, 7)),
        concat!(
            "01a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7a1f2780ffaf3851d07b2e6b9ec6d3b841a",
            "db99aa4d4e8c486a0cf2f168305ee599d97658d9b7ee40939b8904070ddc4aaa1337c805023f1515b3",
            "e2743d1e4aa8476b98b1334918b5eb2edad5d9eed9613daeaeb8181bfc7ebed306d1bf54ea77b52a18",
            "69ff6f9e9b3ee590886401bf2db8ff274db7497364a8eb975080803f146e11fba737e4fcd23dce3434",
            "de2913e566a90741d8ee1672c8bf476c95aa8990664d2e040d9dca0b5b39f7a6146981573e6af6b12e",
            "ce130b56c174efc1aa4ffcc846c580b8e45315f41c0ca347bb4313ea136a0a1c009d258c2c51"
        )
    );
}

#[test]
fn a_message_moved_to_another_topic_is_forged() {
    let bytes = sealed(A, 7);
    let other_room = SessionCode::parse("4822-k7qm-x2vd-9hfa-3nwp").unwrap();
    for topic in [
        directed_topic(&code(), A),
        announce_topic(&code(), B),
        announce_topic(&other_room, A),
    ] {
        assert_eq!(
            open(&key(0x40), &topic, &bytes, NOW),
            Err(OpenError::Forged)
        );
    }
}

#[test]
fn any_flipped_byte_is_refused_and_leaves_the_book_alone() {
    let bytes = sealed(A, 7);
    let topic = announce_topic(&code(), A);
    let mut book = RendezvousBook::new();
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= bit;
            let expected = if i == 0 {
                OpenError::NotOurs
            } else {
                OpenError::Forged
            };
            assert_eq!(book.open(&key(0x40), &topic, &bad, NOW), Err(expected));
        }
    }
    assert!(book.is_empty());
}

#[test]
fn a_wrong_key_is_forged() {
    let topic = announce_topic(&code(), A);
    assert_eq!(
        open(&key(0x41), &topic, &sealed(A, 7), NOW),
        Err(OpenError::Forged)
    );
}

#[test]
fn replays_and_older_numbers_are_stale() {
    let topic = announce_topic(&code(), A);
    let mut book = RendezvousBook::new();
    let k = key(0x40);
    assert!(book.open(&k, &topic, &sealed(A, 7), NOW).is_ok());
    assert_eq!(
        book.open(&k, &topic, &sealed(A, 7), NOW),
        Err(OpenError::Stale)
    );
    assert_eq!(
        book.open(&k, &topic, &sealed(A, 6), NOW),
        Err(OpenError::Stale)
    );
    assert!(book.open(&k, &topic, &sealed(A, 9), NOW).is_ok());
    assert_eq!(
        book.open(&k, &topic, &sealed(A, 8), NOW),
        Err(OpenError::Stale)
    );
    assert_eq!(book.last_seq(A), Some(9));
}

#[test]
fn times_are_checked_against_the_callers_clock() {
    let topic = announce_topic(&code(), A);
    let bytes = sealed(A, 7);
    let k = key(0x40);
    assert!(open(&k, &topic, &bytes, NOW + 120_000).is_ok());
    assert_eq!(
        open(&k, &topic, &bytes, NOW + 120_001),
        Err(OpenError::Expired)
    );
    assert!(open(&k, &topic, &bytes, NOW - MAX_FUTURE_MS).is_ok());
    assert_eq!(
        open(&k, &topic, &bytes, NOW - MAX_FUTURE_MS - 1),
        Err(OpenError::FromFuture)
    );
    // A refused message does not count as seen: it opens later, once in range.
    let mut book = RendezvousBook::new();
    assert_eq!(book.open(&k, &topic, &bytes, 0), Err(OpenError::FromFuture));
    assert!(book.open(&k, &topic, &bytes, NOW).is_ok());
}

#[test]
fn an_announce_must_name_its_topics_peer() {
    let topic = announce_topic(&code(), A);
    let bytes = seal(&key(0x40), &topic, &msg(B, 7), nonce(0)).unwrap();
    assert_eq!(
        open(&key(0x40), &topic, &bytes, NOW),
        Err(OpenError::WrongPeer)
    );
    // On a directed topic the topic names the recipient, the payload the sender.
    let directed = directed_topic(&code(), A);
    let bytes = seal(&key(0x40), &directed, &msg(B, 7), nonce(0)).unwrap();
    assert!(open(&key(0x40), &directed, &bytes, NOW).is_ok());
}

/// One change that makes a message invalid.
type Edit = fn(&mut Rendezvous);

#[test]
fn bounds_are_refused_on_both_sides() {
    let topic = announce_topic(&code(), A);
    let k = key(0x40);
    let cases: [(&str, Edit); 8] = [
        ("cands", |m| {
            m.cands = vec!["candidate:1".into(); MAX_CANDS + 1]
        }),
        ("cands", |m| m.cands = vec!["c".repeat(MAX_CAND_LEN + 1)]),
        ("cands", |m| m.cands = vec!["candidate:1\n".into()]),
        ("ufrag", |m| m.ufrag = "abc".into()),
        ("ufrag", |m| m.ufrag = "ab-cd".into()),
        ("pwd", |m| m.pwd = "a".repeat(21)),
        ("v", |m| m.v = 2),
        ("exp", |m| m.exp = m.ts - 1),
    ];
    for (field, edit) in cases {
        let mut bad = msg(A, 7);
        edit(&mut bad);
        assert_eq!(
            seal(&k, &topic, &bad, nonce(0)),
            Err(SealError::BadField(field))
        );
        let json = serde_json::to_vec(&bad).unwrap();
        let bytes = seal_bytes(&k, &topic, &json, nonce(0));
        assert_eq!(
            open(&k, &topic, &bytes, NOW),
            Err(OpenError::BadField(field))
        );
    }
    let mut at_limit = msg(A, 7);
    at_limit.cands = vec!["c".repeat(MAX_CAND_LEN); MAX_CANDS];
    assert!(matches!(
        seal(&k, &topic, &at_limit, nonce(0)),
        Err(SealError::TooLarge { .. })
    ));
    at_limit.cands.truncate(MAX_CANDS / 2);
    let bytes = seal(&k, &topic, &at_limit, nonce(0)).unwrap();
    assert!(open(&k, &topic, &bytes, NOW).is_ok());

    let mut oversize = sealed(A, 7);
    oversize.resize(MAX_SEALED + 1, 0);
    assert_eq!(open(&k, &topic, &oversize, NOW), Err(OpenError::TooLarge));
    assert_eq!(
        open(&k, &topic, &oversize[..OVERHEAD - 1], NOW),
        Err(OpenError::Truncated)
    );
    assert_eq!(open(&k, &topic, &[], NOW), Err(OpenError::NotOurs));
    let garbage = seal_bytes(&k, &topic, b"{\"v\":1", nonce(0));
    assert_eq!(open(&k, &topic, &garbage, NOW), Err(OpenError::BadJson));
}

#[test]
fn the_book_holds_eight_peers_and_frees_them_after_expiry() {
    let k = key(0x40);
    let mut book = RendezvousBook::new();
    let peer = |i: u8| PeerId([i; 8]);
    for i in 0..MAX_PEERS as u8 {
        assert!(
            book.open(
                &k,
                &announce_topic(&code(), peer(i)),
                &sealed(peer(i), 1),
                NOW
            )
            .is_ok()
        );
    }
    let ninth = announce_topic(&code(), peer(8));
    assert_eq!(
        book.open(&k, &ninth, &sealed(peer(8), 1), NOW),
        Err(OpenError::Full)
    );
    // Known peers still get through when the book is full.
    assert!(
        book.open(
            &k,
            &announce_topic(&code(), peer(0)),
            &sealed(peer(0), 2),
            NOW
        )
        .is_ok()
    );
    book.prune(NOW + 120_000);
    assert_eq!(book.len(), MAX_PEERS);
    book.prune(NOW + 120_001);
    assert!(book.is_empty());
    // A fresh message from the ninth peer now fits; the old ones stay refused as expired.
    let mut fresh = msg(peer(8), 2);
    fresh.ts = NOW + 120_001;
    fresh.exp = fresh.ts + 120_000;
    let bytes = seal(&k, &ninth, &fresh, nonce(3)).unwrap();
    assert!(book.open(&k, &ninth, &bytes, NOW + 120_001).is_ok());
    let old = announce_topic(&code(), peer(1));
    assert_eq!(
        book.open(&k, &old, &sealed(peer(1), 1), NOW + 120_001),
        Err(OpenError::Expired)
    );
}

/// Bytes that keep mutated JSON close to valid, to reach the parser's deeper paths.
const JSON_BYTES: &[u8] = b"{}[]\",:0123456789-eE.truefalsnul \\";

/// 5,000 hostile inputs: random bytes, mutated sealed messages, and authentic seals of mutated
/// JSON. None panics; a mutated sealed message never opens.
#[test]
fn random_and_mutated_inputs_never_panic() {
    let k = key(0x40);
    let topic = announce_topic(&code(), A);
    let good = sealed(A, 7);
    let json = serde_json::to_vec(&msg(A, 7)).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut book = RendezvousBook::new();
    for round in 0..5_000 {
        match round % 3 {
            0 => {
                let mut bytes = vec![0u8; rng.below((MAX_SEALED + 64) as u64) as usize];
                bytes.iter_mut().for_each(|b| *b = rng.next() as u8);
                if rng.below(2) == 0 && !bytes.is_empty() {
                    bytes[0] = SEALED_V1;
                }
                assert!(book.open(&k, &topic, &bytes, NOW).is_err());
            }
            1 => {
                let mut bytes = good.clone();
                for _ in 0..1 + rng.below(4) as usize {
                    match rng.below(3) {
                        0 if !bytes.is_empty() => {
                            let i = rng.below(bytes.len() as u64) as usize;
                            bytes[i] ^= 1 + rng.below(255) as u8;
                        }
                        1 => bytes.truncate(rng.below((bytes.len() + 1) as u64) as usize),
                        _ => bytes.push(rng.next() as u8),
                    }
                }
                if bytes != good {
                    assert!(book.open(&k, &topic, &bytes, NOW).is_err());
                }
            }
            _ => {
                let mut plain = json.clone();
                for _ in 0..1 + rng.below(4) as usize {
                    let i = rng.below(plain.len() as u64) as usize;
                    plain[i] = JSON_BYTES[rng.below(JSON_BYTES.len() as u64) as usize];
                }
                let bytes = seal_bytes(&k, &topic, &plain, nonce(round as u8));
                let _ = book.open(&k, &topic, &bytes, NOW);
            }
        }
    }
    assert!(book.len() <= MAX_PEERS);
}
