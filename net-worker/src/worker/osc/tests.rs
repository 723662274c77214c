//! Fixtures the bridge's unit tests share (each file's own `mod tests` holds its tests): three
//! parameters like the plugin's, a controller on the LAN, and helpers that send one message
//! and pick the `/lockstep/error` replies out of the output.

use std::net::SocketAddr;

use super::{MS, Nanos, OscCore, Output};
use crate::params::{ParamKind, ParamSpec, Remote};
use crate::proto::osc::{self, Message, Packet};

/// Three parameters like the plugin's: a float in ms, an enum, a plain 0..1 float.
pub(super) fn specs() -> Vec<ParamSpec> {
    vec![
        ParamSpec {
            id: "clk_ofs".into(),
            name: "Clock Offset".into(),
            kind: ParamKind::Float {
                min: -250.0,
                max: 250.0,
                unit: " ms".into(),
            },
            clap_id: 11,
            default: 0.5,
            remote: Remote::Open,
        },
        ParamSpec {
            id: "lnk_md".into(),
            name: "Link Mode".into(),
            kind: ParamKind::Enum {
                names: vec!["Off".into(), "Lead".into(), "Follow".into()],
            },
            clap_id: 12,
            default: 0.0,
            remote: Remote::Open,
        },
        ParamSpec {
            id: "mac_1".into(),
            name: "Macro 1".into(),
            kind: ParamKind::Float {
                min: 0.0,
                max: 1.0,
                unit: String::new(),
            },
            clap_id: 13,
            default: 0.0,
            remote: Remote::Open,
        },
    ]
}

/// Encode `m`, hand it to `core` from `from` at 1 s, and return what the core asked for.
pub(super) fn send(core: &mut OscCore, from: SocketAddr, m: Message) -> Output {
    let mut bytes = Vec::new();
    osc::encode_message(&m, &mut bytes);
    let mut out = Output::default();
    core.handle_datagram(1_000 * MS, from, &bytes, &mut out);
    out
}

/// The `/lockstep/error` replies in `out`.
pub(super) fn errors(out: &Output) -> Vec<Message> {
    out.datagrams
        .iter()
        .filter_map(|(_, b)| match osc::decode(b) {
            Ok(Packet::Message(m)) if m.address == "/lockstep/error" => Some(m),
            _ => None,
        })
        .collect()
}

/// A controller on the LAN (allowed by default).
pub(super) const PHONE: ([u8; 4], u16) = ([192, 168, 1, 20], 9000);

/// One second, ns.
pub(super) const SECOND_NS: Nanos = 1_000 * MS;
