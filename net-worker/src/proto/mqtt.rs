//! A small MQTT 3.1.1 client core, sans-IO (digest 2, §8.1): what the remote session's
//! rendezvous needs and nothing more. The driver owns the TCP connection; this takes the bytes
//! it read and the time, and gives back bytes to write, events and the next deadline.
//!
//! - CONNECT with a clean session, a keep-alive and an optional will (our presence trick: a
//!   zero-length retained message on our announce topic, so a crash clears it).
//! - SUBSCRIBE to the configured filters at QoS 1, once, after CONNACK.
//! - PUBLISH at QoS 1 (retained or not); PUBACKs are matched and the in-flight table bounded.
//! - Incoming PUBLISH at QoS 0 or 1 (acknowledged); QoS 2 is refused (we never ask for it).
//! - PINGREQ when we have sent nothing for a keep-alive period; no answer for another period
//!   ends the connection ([`MqttError::Timeout`]).
//!
//! Packets are framed by `mqttbytes` (rumqtt's codec) with a size cap checked on the fixed
//! header, before the body is buffered: a hostile broker cannot make us hold more than
//! [`MAX_PACKET`] plus one read. Every error ends the connection; the driver reconnects.

use std::collections::VecDeque;

use bytes::BytesMut;
use mqttbytes::QoS;
use mqttbytes::v4::{self, Packet};
use thiserror::Error;

/// Largest packet taken from the broker, bytes (our sealed rendezvous messages are < 4 KiB).
pub const MAX_PACKET: usize = 16 * 1024;
/// Publishes waiting for their PUBACK, at most; more are refused ([`MqttError::Busy`]).
pub const MAX_IN_FLIGHT: usize = 32;
/// Messages waiting for the caller, at most (a broker flooding us loses the excess, counted).
pub const MAX_EVENTS: usize = 64;

/// Why the connection must end (or a publish was refused).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MqttError {
    /// The broker refused the connection (CONNACK return code).
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    /// The broker sent something that is not MQTT 3.1.1 as we speak it.
    #[error("broker protocol error: {0}")]
    Protocol(String),
    /// The broker sent a packet larger than [`MAX_PACKET`].
    #[error("broker packet of {0} bytes is over the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    /// No answer to a PINGREQ (or to CONNECT) within a keep-alive period.
    #[error("the broker stopped answering")]
    Timeout,
    /// Too many publishes waiting for the broker's acknowledgement.
    #[error("too many messages waiting for the broker")]
    Busy,
    /// Not connected yet (or no longer).
    #[error("not connected to the broker")]
    NotConnected,
}

/// What happened, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttEvent {
    /// CONNACK accepted and every subscription granted: ready to publish.
    Ready,
    /// A message on a subscribed topic.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload (empty for a cleared retained message).
        payload: Vec<u8>,
        /// Delivered because it was retained (sent when we subscribed).
        retained: bool,
    },
}

/// The will the broker publishes if we vanish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload (may be empty).
    pub payload: Vec<u8>,
    /// Retained.
    pub retain: bool,
}

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Client id: random per connection (a second connection with the same id kicks the
    /// first).
    pub client_id: String,
    /// Keep-alive, seconds (the broker drops us after 1.5 × this of silence).
    pub keep_alive_s: u16,
    /// The will.
    pub will: Option<Will>,
    /// Topic filters to subscribe to after connecting.
    pub subscriptions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    /// SUBSCRIBE sent, waiting for SUBACK.
    Subscribing,
    /// Ready.
    Ready,
}

/// Counters for the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttCounters {
    /// Messages received.
    pub received: u64,
    /// Messages published (acknowledged by the broker).
    pub acknowledged: u64,
    /// Messages dropped because the caller had not taken the earlier ones.
    pub dropped: u64,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct MqttClient {
    config: MqttConfig,
    state: State,
    rx: BytesMut,
    tx: Vec<u8>,
    next_pkid: u16,
    in_flight: Vec<u16>,
    subscribe_pkid: u16,
    events: VecDeque<MqttEvent>,
    last_sent_ns: u64,
    /// When a PINGREQ (or the CONNECT) went unanswered since.
    waiting_since_ns: Option<u64>,
    counters: MqttCounters,
}

impl MqttClient {
    /// A connection that starts with CONNECT (queued in [`output`](Self::output)).
    pub fn new(config: MqttConfig, now_ns: u64) -> Self {
        let mut connect = v4::Connect::new(config.client_id.clone());
        connect.keep_alive = config.keep_alive_s;
        connect.clean_session = true;
        if let Some(will) = &config.will {
            connect.last_will = Some(v4::LastWill::new(
                will.topic.clone(),
                will.payload.clone(),
                QoS::AtLeastOnce,
                will.retain,
            ));
        }
        let mut client = Self {
            config,
            state: State::Connecting,
            rx: BytesMut::new(),
            tx: Vec::new(),
            next_pkid: 1,
            in_flight: Vec::new(),
            subscribe_pkid: 0,
            events: VecDeque::new(),
            last_sent_ns: now_ns,
            waiting_since_ns: Some(now_ns),
            counters: MqttCounters::default(),
        };
        client.send(&Packet::Connect(connect), now_ns);
        client
    }

    /// Bytes to write to the broker; the driver drains what the socket takes.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.tx
    }

    /// Ready to publish.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Counters.
    pub fn counters(&self) -> MqttCounters {
        self.counters
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<MqttEvent> {
        self.events.pop_front()
    }

    /// Publish at QoS 1.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        now_ns: u64,
    ) -> Result<(), MqttError> {
        if self.state != State::Ready {
            return Err(MqttError::NotConnected);
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Err(MqttError::Busy);
        }
        let pkid = self.pkid();
        let mut publish = v4::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        publish.retain = retain;
        publish.pkid = pkid;
        self.in_flight.push(pkid);
        self.send(&Packet::Publish(publish), now_ns);
        Ok(())
    }

    /// A polite goodbye (the will is not published).
    pub fn disconnect(&mut self, now_ns: u64) {
        self.send(&Packet::Disconnect, now_ns);
    }

    /// Bytes read from the broker.
    pub fn handle_bytes(&mut self, bytes: &[u8], now_ns: u64) -> Result<(), MqttError> {
        self.rx.extend_from_slice(bytes);
        loop {
            let packet = match v4::read(&mut self.rx, MAX_PACKET) {
                Ok(packet) => packet,
                Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                    return Err(MqttError::TooLarge(n));
                }
                Err(e) => return Err(MqttError::Protocol(format!("{e:?}"))),
            };
            self.handle_packet(packet, now_ns)?;
        }
    }

    fn handle_packet(&mut self, packet: Packet, now_ns: u64) -> Result<(), MqttError> {
        match (self.state, packet) {
            (State::Connecting, Packet::ConnAck(ack)) => {
                if ack.code != v4::ConnectReturnCode::Success {
                    return Err(MqttError::Refused(format!("{:?}", ack.code)));
                }
                self.waiting_since_ns = None;
                if self.config.subscriptions.is_empty() {
                    self.state = State::Ready;
                    self.events.push_back(MqttEvent::Ready);
                } else {
                    self.subscribe_pkid = self.pkid();
                    let filters = self
                        .config
                        .subscriptions
                        .iter()
                        .map(|t| v4::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
                        .collect();
                    let subscribe = v4::Subscribe {
                        pkid: self.subscribe_pkid,
                        filters,
                    };
                    self.state = State::Subscribing;
                    self.send(&Packet::Subscribe(subscribe), now_ns);
                }
            }
            (State::Subscribing, Packet::SubAck(ack)) if ack.pkid == self.subscribe_pkid => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, v4::SubscribeReasonCode::Failure));
                if refused || ack.return_codes.len() != self.config.subscriptions.len() {
                    return Err(MqttError::Refused("subscription refused".into()));
                }
                self.state = State::Ready;
                self.events.push_back(MqttEvent::Ready);
            }
            (State::Subscribing | State::Ready, Packet::Publish(publish)) => {
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        self.send(&Packet::PubAck(v4::PubAck::new(publish.pkid)), now_ns);
                    }
                    QoS::ExactlyOnce => {
                        return Err(MqttError::Protocol("QoS 2 delivery we never asked".into()));
                    }
                }
                self.counters.received += 1;
                if self.events.len() >= MAX_EVENTS {
                    self.counters.dropped += 1;
                } else {
                    self.events.push_back(MqttEvent::Message {
                        topic: publish.topic,
                        payload: publish.payload.to_vec(),
                        retained: publish.retain,
                    });
                }
            }
            (State::Ready, Packet::PubAck(ack)) => {
                // An id we do not wait for (0, or twice) is ignored.
                if let Some(i) = self.in_flight.iter().position(|&p| p == ack.pkid) {
                    self.in_flight.swap_remove(i);
                    self.counters.acknowledged += 1;
                }
            }
            (_, Packet::PingResp) => self.waiting_since_ns = None,
            (state, packet) => {
                return Err(MqttError::Protocol(format!(
                    "unexpected {:?} while {state:?}",
                    packet_name(&packet)
                )));
            }
        }
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next (ns).
    pub fn deadline(&self) -> u64 {
        let period = u64::from(self.config.keep_alive_s.max(1)) * 1_000_000_000;
        match self.waiting_since_ns {
            Some(since) => since.saturating_add(period),
            None => self.last_sent_ns.saturating_add(period),
        }
    }

    /// Keep-alive: a PINGREQ after a period of silence; an error after a period with no
    /// answer (or no CONNACK).
    pub fn handle_timeout(&mut self, now_ns: u64) -> Result<(), MqttError> {
        if now_ns < self.deadline() {
            return Ok(());
        }
        if self.waiting_since_ns.is_some() {
            return Err(MqttError::Timeout);
        }
        self.send(&Packet::PingReq, now_ns);
        self.waiting_since_ns = Some(now_ns);
        Ok(())
    }

    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        id
    }

    fn send(&mut self, packet: &Packet, now_ns: u64) {
        let mut buf = BytesMut::new();
        let written = match packet {
            Packet::Connect(p) => p.write(&mut buf),
            Packet::Publish(p) => p.write(&mut buf),
            Packet::PubAck(p) => p.write(&mut buf),
            Packet::Subscribe(p) => p.write(&mut buf),
            Packet::PingReq => v4::PingReq.write(&mut buf),
            Packet::Disconnect => v4::Disconnect.write(&mut buf),
            _ => return,
        };
        if written.is_ok() {
            self.tx.extend_from_slice(&buf);
            self.last_sent_ns = now_ns;
        }
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests;
