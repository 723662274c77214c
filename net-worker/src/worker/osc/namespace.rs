//! The bridge's address space as data, for OSCQuery (served by `worker::oscquery`): the
//! namespace as JSON (every parameter in real units and normalized, each instance's transport
//! feed and the bridge's own commands, with type, range, unit, access, description and current
//! value), and the current value at one address as the OSC message a controller would receive.

use super::OscCore;
use super::feedback::TransportFeed;
use crate::proto::osc::Message;

impl OscCore {
    /// The current value of `path` (a parameter in real units or normalized, or a transport
    /// field) as the OSC message a controller would receive.
    pub fn value_message(&self, path: &str) -> Option<Message> {
        for (&id, instance) in &self.instances {
            let prefix = self.prefix(id);
            for (index, spec) in instance.specs.iter().enumerate() {
                let real = format!("{prefix}/param/{}", spec.id);
                if path == real || path == format!("{real}/normalized") {
                    let [a, b] = self.value_messages(id, index);
                    return Some(if path == real { a } else { b });
                }
            }
            // An instance without a transport yet has no feed; the others still may.
            if let Some(m) = instance.transport.as_ref().and_then(|t| {
                TransportFeed::of(t)
                    .messages(&prefix, None)
                    .into_iter()
                    .find(|m| m.address == path)
            }) {
                return Some(m);
            }
        }
        None
    }

    /// Is `path` in the namespace (a parameter in either form, or a transport field, whether
    /// or not the field has a value yet)?
    pub fn has_path(&self, path: &str) -> bool {
        if self.value_message(path).is_some() {
            return true;
        }
        self.instances.keys().any(|&id| {
            let prefix = self.prefix(id);
            ["playing", "tempo", "beat", "bar", "timesig"]
                .iter()
                .any(|leaf| path == format!("{prefix}/transport/{leaf}"))
        })
    }

    /// The OSCQuery namespace: every parameter (real units and normalized) and the transport
    /// feed, with type, range, unit, access, description and current value.
    pub fn namespace(&self) -> serde_json::Value {
        use crate::params::ParamKind;
        use serde_json::{Map, Value, json};
        fn container(path: &str, contents: Map<String, Value>) -> Value {
            json!({ "FULL_PATH": path, "CONTENTS": contents })
        }
        let mut lockstep = Map::new();
        let several = self.instances.len() > 1;
        for (&id, instance) in &self.instances {
            let prefix = self.prefix(id);
            let mut params = Map::new();
            for (index, spec) in instance.specs.iter().enumerate() {
                let v = instance.values[index];
                let path = format!("{prefix}/param/{}", spec.id);
                let plain = spec.shown(v);
                let (ty, range, value, unit) = match &spec.kind {
                    ParamKind::Float { min, max, unit } => (
                        "f",
                        json!([{ "MIN": min, "MAX": max }]),
                        json!([plain]),
                        match unit.trim() {
                            "ms" => json!(["time.ms"]),
                            _ => Value::Null,
                        },
                    ),
                    ParamKind::Int { min, max } => (
                        "i",
                        json!([{ "MIN": min, "MAX": max }]),
                        json!([plain as i64]),
                        Value::Null,
                    ),
                    ParamKind::Bool => ("T", Value::Null, json!([plain >= 0.5]), Value::Null),
                    ParamKind::Enum { names } => (
                        "s",
                        json!([{ "VALS": names }]),
                        json!([names.get(plain as usize).cloned().unwrap_or_default()]),
                        Value::Null,
                    ),
                };
                // 3 = read and write; 1 = read only (remote control may not set it).
                let access = if instance.exposed[index] { 3 } else { 1 };
                let mut node = json!({
                    "FULL_PATH": path,
                    "TYPE": ty,
                    "ACCESS": access,
                    "VALUE": value,
                    "DESCRIPTION": spec.name,
                    "CONTENTS": {
                        "normalized": {
                            "FULL_PATH": format!("{path}/normalized"),
                            "TYPE": "f",
                            "ACCESS": access,
                            "RANGE": [{ "MIN": 0.0, "MAX": 1.0 }],
                            "VALUE": [v],
                            "DESCRIPTION": format!("{}, normalized 0..1", spec.name),
                        }
                    }
                });
                if !range.is_null() {
                    node["RANGE"] = range;
                }
                if !unit.is_null() {
                    node["UNIT"] = unit;
                }
                params.insert(spec.id.clone(), node);
            }
            let mut transport = Map::new();
            let feed = instance.transport.as_ref().map(TransportFeed::of);
            for (leaf, ty, value, description) in [
                (
                    "playing",
                    "i",
                    json!([feed.map(|f| i32::from(f.playing))]),
                    "1 while the DAW plays",
                ),
                ("tempo", "f", json!([feed.and_then(|f| f.tempo)]), "BPM"),
                (
                    "beat",
                    "f",
                    json!([feed.and_then(|f| f.beat)]),
                    "beat in the bar, from 1",
                ),
                ("bar", "i", json!([feed.and_then(|f| f.bar)]), "bar, from 1"),
                (
                    "timesig",
                    "ii",
                    json!(feed.and_then(|f| f.timesig).map_or(
                        vec![Value::Null, Value::Null],
                        |(n, d)| vec![json!(n), json!(d)]
                    )),
                    "time signature",
                ),
            ] {
                let path = format!("{prefix}/transport/{leaf}");
                transport.insert(
                    leaf.into(),
                    json!({
                        "FULL_PATH": path, "TYPE": ty, "ACCESS": 1, "VALUE": value,
                        "DESCRIPTION": description
                    }),
                );
            }
            let mut children = Map::new();
            children.insert(
                "param".into(),
                container(&format!("{prefix}/param"), params),
            );
            children.insert(
                "transport".into(),
                container(&format!("{prefix}/transport"), transport),
            );
            if several {
                lockstep.insert(instance.name.clone(), container(&prefix, children));
            } else {
                lockstep.extend(children);
            }
        }
        for (leaf, description) in [
            ("dump", "send every value to the sender"),
            ("subscribe", "feedback to the sender (or to the port given)"),
            ("unsubscribe", "no more feedback"),
        ] {
            lockstep.insert(
                leaf.into(),
                json!({
                    "FULL_PATH": format!("/lockstep/{leaf}"),
                    "ACCESS": 2,
                    "DESCRIPTION": description
                }),
            );
        }
        let mut root = Map::new();
        root.insert("lockstep".into(), container("/lockstep", lockstep));
        container("/", root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::osc::tests::specs;

    #[test]
    fn oscquery_serves_the_namespace_with_values_ranges_and_errors() {
        use crate::worker::oscquery::{HostInfo, respond};
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        core.set_current(1, 0, 0.75);
        let host = HostInfo {
            name: "Lockstep (test)".into(),
            osc_port: 8000,
        };
        let get = |target: &str| -> (String, serde_json::Value) {
            let raw = respond(
                format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                &core,
                &host,
            );
            let text = String::from_utf8(raw).expect("utf-8");
            let (head, body) = text.split_once("\r\n\r\n").expect("head");
            (
                head.lines().next().unwrap_or_default().to_owned(),
                serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
            )
        };
        let (status, root) = get("/");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let ofs = &root["CONTENTS"]["lockstep"]["CONTENTS"]["param"]["CONTENTS"]["clk_ofs"];
        assert_eq!(ofs["FULL_PATH"], "/lockstep/param/clk_ofs");
        assert_eq!(ofs["TYPE"], "f");
        assert_eq!(ofs["VALUE"][0], 125.0);
        assert_eq!(ofs["RANGE"][0]["MIN"], -250.0);
        assert_eq!(ofs["UNIT"][0], "time.ms");
        assert_eq!(ofs["CONTENTS"]["normalized"]["VALUE"][0], 0.75);
        let (_, mode) = get("/lockstep/param/lnk_md");
        assert_eq!(mode["RANGE"][0]["VALS"][2], "Follow");
        assert_eq!(mode["VALUE"][0], "Off");
        let (_, v) = get("/lockstep/param/clk_ofs?VALUE");
        assert_eq!(v, serde_json::json!({"VALUE": [125.0]}));
        let (_, info) = get("/anything?HOST_INFO");
        assert_eq!(info["OSC_PORT"], 8000);
        assert_eq!(info["EXTENSIONS"]["LISTEN"], true);
        assert_eq!(get("/lockstep/param/nope").0, "HTTP/1.1 404 Not Found");
        assert_eq!(get("/lockstep/param?VALUE").0, "HTTP/1.1 204 No Content");
        assert_eq!(get("/lockstep/param?BOGUS").0, "HTTP/1.1 400 Bad Request");
        assert_eq!(get("/lockstep/param/clk%5Fofs").0, "HTTP/1.1 200 OK");
        let raw = respond(b"POST / HTTP/1.1\r\n\r\n", &core, &host);
        assert!(raw.starts_with(b"HTTP/1.1 405"));
        let raw = respond(b"\xff\xfe\r\n\r\n", &core, &host);
        assert!(raw.starts_with(b"HTTP/1.1 400"));
    }
}
