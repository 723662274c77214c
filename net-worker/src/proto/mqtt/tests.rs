use super::*;

const S: u64 = 1_000_000_000;

fn config() -> MqttConfig {
    MqttConfig {
        client_id: "ls-test".into(),
        keep_alive_s: 20,
        will: Some(Will {
            topic: "lockstep/v1/4817/peer/0011223344556677".into(),
            payload: Vec::new(),
            retain: true,
        }),
        subscriptions: vec!["a/+".into(), "b".into()],
    }
}

/// CONNACK accepted, then SUBACK for packet id 1 granting QoS 1 twice.
fn broker_hello() -> Vec<u8> {
    vec![0x20, 0x02, 0x00, 0x00, 0x90, 0x04, 0x00, 0x01, 0x01, 0x01]
}

fn ready() -> MqttClient {
    let mut c = MqttClient::new(config(), 0);
    c.output().clear();
    c.handle_bytes(&broker_hello(), 1).expect("hello");
    c.output().clear();
    assert_eq!(c.poll_event(), Some(MqttEvent::Ready));
    c
}

#[test]
fn connect_carries_clean_session_keep_alive_and_a_retained_will() {
    let mut c = MqttClient::new(config(), 0);
    let out = c.output().clone();
    // CONNECT, "MQTT", level 4, flags: will retain | will QoS 1 | will | clean session.
    assert_eq!(out[0], 0x10);
    assert_eq!(&out[2..10], &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x2e]);
    assert_eq!(&out[10..12], &[0, 20]);
    assert!(!c.is_ready());
}

#[test]
fn subscribes_after_connack_and_is_ready_after_suback_fed_byte_by_byte() {
    let mut c = MqttClient::new(config(), 0);
    c.output().clear();
    let hello = broker_hello();
    c.handle_bytes(&hello[..4], 1).expect("connack");
    let sub = c.output().clone();
    assert_eq!(sub[0], 0x82, "SUBSCRIBE with its reserved flags");
    assert!(sub.windows(3).any(|w| w == b"a/+"));
    for b in &hello[4..] {
        assert!(!c.is_ready());
        c.handle_bytes(std::slice::from_ref(b), 2).expect("suback");
    }
    assert!(c.is_ready());
    assert_eq!(c.poll_event(), Some(MqttEvent::Ready));
}

#[test]
fn a_refused_connection_or_subscription_is_an_error() {
    let mut c = MqttClient::new(config(), 0);
    assert!(matches!(
        c.handle_bytes(&[0x20, 0x02, 0x00, 0x05], 1),
        Err(MqttError::Refused(_))
    ));
    let mut c = MqttClient::new(config(), 0);
    c.handle_bytes(&[0x20, 0x02, 0x00, 0x00], 1)
        .expect("connack");
    assert!(matches!(
        c.handle_bytes(&[0x90, 0x04, 0x00, 0x01, 0x01, 0x80], 2),
        Err(MqttError::Refused(_))
    ));
}

#[test]
fn incoming_qos1_publish_is_acknowledged_and_delivered() {
    let mut c = ready();
    // PUBLISH QoS 1 retained, topic "a/x", pkid 7, payload 01 02.
    let publish = [
        0x33, 0x09, 0x00, 0x03, b'a', b'/', b'x', 0x00, 0x07, 0x01, 0x02,
    ];
    c.handle_bytes(&publish, 3).expect("publish");
    assert_eq!(c.output().as_slice(), &[0x40, 0x02, 0x00, 0x07]);
    assert_eq!(
        c.poll_event(),
        Some(MqttEvent::Message {
            topic: "a/x".into(),
            payload: vec![1, 2],
            retained: true
        })
    );
}

#[test]
fn publishes_are_tracked_until_acknowledged_and_bounded() {
    let mut c = ready();
    c.publish("a/me", b"hi", true, 5).expect("publish");
    let out = c.output().clone();
    assert_eq!(out[0], 0x33, "QoS 1 retained");
    c.output().clear();
    // A PUBACK for an id we never used changes nothing; ours counts.
    c.handle_bytes(&[0x40, 0x02, 0x00, 0x63], 6)
        .expect("stray puback");
    assert_eq!(c.counters().acknowledged, 0);
    c.handle_bytes(&[0x40, 0x02, 0x00, 0x02], 6)
        .expect("puback");
    assert_eq!(c.counters().acknowledged, 1);
    for _ in 0..MAX_IN_FLIGHT {
        c.publish("a/me", b"x", false, 7).expect("room");
    }
    assert_eq!(c.publish("a/me", b"x", false, 7), Err(MqttError::Busy));
}

#[test]
fn publishing_before_ready_is_refused() {
    let mut c = MqttClient::new(config(), 0);
    assert_eq!(c.publish("a", b"x", false, 0), Err(MqttError::NotConnected));
}

#[test]
fn an_oversized_packet_is_refused_from_its_header_alone() {
    let mut c = ready();
    // PUBLISH declaring 200 MiB: refused before any body arrives.
    let hostile = [0x30, 0x80, 0x80, 0x80, 0x64, 0x00, 0x01, b'a'];
    assert!(matches!(
        c.handle_bytes(&hostile, 3),
        Err(MqttError::TooLarge(n)) if n > 200_000_000
    ));
}

#[test]
fn keep_alive_pings_after_silence_and_times_out_without_answer() {
    let mut c = ready();
    // SUBSCRIBE left at 1 ns: silence is measured from it.
    assert_eq!(c.deadline(), 20 * S + 1);
    c.handle_timeout(20 * S).expect("not yet");
    assert!(c.output().is_empty());
    c.handle_timeout(20 * S + 1).expect("ping");
    assert_eq!(c.output().as_slice(), &[0xC0, 0x00]);
    c.output().clear();
    c.handle_bytes(&[0xD0, 0x00], 21 * S).expect("pong");
    c.handle_timeout(40 * S).expect("answered");
    assert!(c.output().is_empty());
    c.handle_timeout(40 * S + 1).expect("second ping");
    c.handle_timeout(60 * S).expect("still waiting");
    assert_eq!(c.handle_timeout(60 * S + 1), Err(MqttError::Timeout));
}

#[test]
fn no_connack_within_a_period_times_out() {
    let mut c = MqttClient::new(config(), 0);
    assert_eq!(c.handle_timeout(20 * S), Err(MqttError::Timeout));
}

#[test]
fn a_flood_of_messages_is_bounded_and_counted() {
    let mut c = ready();
    let publish = [0x30, 0x05, 0x00, 0x03, b'a', b'/', b'x'];
    for _ in 0..(MAX_EVENTS + 10) {
        c.handle_bytes(&publish, 3).expect("publish");
    }
    assert_eq!(c.counters().dropped, 10);
    assert_eq!(std::iter::from_fn(|| c.poll_event()).count(), MAX_EVENTS);
}

#[test]
fn garbage_from_the_broker_never_panics() {
    let mut rng = crate::rng::Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..20_000 {
        let mut c = ready();
        let len = rng.below(40) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = c.handle_bytes(&bytes, 3);
        assert!(c.rx.len() <= MAX_PACKET + bytes.len());
    }
}
