//! Lockstep's VST3 in a real DAW: Ardour 7 headless (`ardour7-lua`, the "None (Dummy)" backend)
//! inside the private namespace, driven by `tests/peers/ardour_session.lua`.
//!
//! Ardour scans the allocation-checked `Lockstep.vst3` (its scanner writes the cache
//! `ardour7-lua` reads), puts it on the master bus of a new session and rolls for over 10 s.
//! A python-osc controller moves parameters: Ardour's own Lua API reads the new values back
//! (VST3 output parameter changes reached the host), bad input comes back on
//! `/lockstep/error`, and a value set in Ardour reaches the plugin's OSCQuery tree. The session
//! is saved, Ardour quits (the network services let go of their ports) and a fresh Ardour loads
//! it: the values survived and the services bind again. Any allocation inside `process()` —
//! nice-plug's or our layer's — aborts Ardour and fails the test.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lockstep_host::ardour::{Ardour, Place, install_and_scan};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{ScriptPeer, exclusive};

/// Lockstep's default ports (a fresh instance in a new session).
const OSC_PORT: u16 = 8000;
const OSCQUERY_PORT: u16 = 8001;
const CLIENT_PORT: u16 = 9310;

fn index_of(params: &[(usize, String)], name: &str) -> Result<usize> {
    params
        .iter()
        .find(|(_, n)| n == name)
        .map(|(i, _)| *i)
        .with_context(|| format!("no parameter {name:?} in {params:?}"))
}

/// The value the plugin's own OSCQuery tree shows at `path`, or an error when nothing
/// answers on its port.
fn oscquery_value(path: &str) -> Result<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", OSCQUERY_PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no HTTP body")?;
    let node: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("OSCQuery answered {response:?}"))?;
    node["VALUE"][0]
        .as_f64()
        .with_context(|| format!("no value in {node}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

#[test]
fn ardour_loads_the_vst3_takes_osc_control_and_keeps_it_across_a_reload() -> Result<()> {
    let _guard = exclusive();
    let place = Place::new()?;
    install_and_scan(&place, &Build::DebugAllocChecked.vst3_path())?;

    let mut ardour = Ardour::start(&place, "create")?;
    let plugin = ardour
        .seen
        .iter()
        .find(|l| l.starts_with("PLUGIN "))
        .cloned()
        .context("no PLUGIN line")?;
    ensure!(plugin == "PLUGIN 26 Lockstep", "{plugin}");
    let params = ardour.params()?;
    let macro_1 = index_of(&params, "Macro 1")?;
    let macro_2 = index_of(&params, "Macro 2")?;
    let offset = index_of(&params, "Clock Offset")?;
    ensure!(ardour.get(macro_1)? == 0.0 && ardour.get(offset)? == 0.0);

    // The network services came up inside Ardour.
    wait_until("the plugin's OSCQuery server", || {
        oscquery_value("/lockstep/param/mac_1").is_ok()
    })?;
    let rolling = ardour.cmd("ROLL", &["ROLLING"])?;
    ensure!(rolling.starts_with("ROLLING"), "{rolling}");

    // A python-osc controller moves two parameters and sends three bad messages.
    let client = ScriptPeer::spawn(
        "osc_client.py",
        &[
            OSC_PORT.to_string(),
            CLIENT_PORT.to_string(),
            "2".into(),
            r#"["/lockstep/param/mac_1", "f", 0.25]"#.into(),
            r#"["/lockstep/param/clk_ofs", "f", 10.0]"#.into(),
            r#"["/lockstep/param/clk_ofs", "f", 999.0]"#.into(),
            r#"["/lockstep/param/nothing", "i", 1]"#.into(),
            r#"["/lockstep/param/mac_2", "s", "loud"]"#.into(),
        ],
    )?;
    let replies = client.wait("three error replies", |lines| {
        lines
            .iter()
            .filter(|l| l["address"] == "/lockstep/error")
            .count()
            >= 3
    })?;
    let errors: Vec<String> = replies
        .iter()
        .filter(|l| l["address"] == "/lockstep/error")
        .map(|l| l["args"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    for address in [
        "/lockstep/param/clk_ofs",
        "/lockstep/param/nothing",
        "/lockstep/param/mac_2",
    ] {
        ensure!(
            errors.iter().any(|e| e == address),
            "no error for {address}: {errors:?}"
        );
    }

    // Ardour's own view of the plugin moved (VST3 output parameter changes), in plain units.
    wait_until("Ardour to read Macro 1 = 0.25", || {
        ardour.get(macro_1).is_ok_and(|v| (v - 0.25).abs() < 1e-6)
    })?;
    let ms = ardour.get(offset)?;
    ensure!((ms - 10.0).abs() < 0.05, "Clock Offset in Ardour: {ms}");
    // And the plugin applied them (its own OSCQuery tree reads its parameters).
    let applied = oscquery_value("/lockstep/param/mac_1")?;
    ensure!((applied - 0.25).abs() < 1e-6, "plugin's Macro 1: {applied}");
    ensure!(
        ardour.get(macro_2)? == 0.0,
        "a refused value changed Macro 2"
    );

    // The other way: a value set in Ardour reaches the plugin and its controllers.
    ardour.cmd(&format!("SET {macro_2} 0.5"), &["VALUE"])?;
    wait_until("the plugin to see Macro 2 = 0.5 from Ardour", || {
        oscquery_value("/lockstep/param/mac_2").is_ok_and(|v| (v - 0.5).abs() < 1e-6)
    })?;

    // Keep rolling past 10 s in all.
    let mut sample = 0u64;
    while sample < 10 * 48_000 {
        let waited = ardour.cmd("WAIT 2", &["WAITED"])?;
        let parts: Vec<&str> = waited.split(' ').collect();
        ensure!(parts.get(2) == Some(&"1"), "stopped rolling: {waited}");
        sample = parts.get(3).context("sample")?.parse()?;
    }
    ardour.cmd("STOP", &["STOPPED"])?;
    ardour.cmd("SAVE", &["SAVED"])?;
    ardour.quit()?;
    // The services let go of their ports with the plugin.
    ensure!(
        oscquery_value("/lockstep/param/mac_1").is_err(),
        "OSCQuery still answers after Ardour quit"
    );
    std::net::UdpSocket::bind(("127.0.0.1", OSC_PORT))
        .context("the OSC port is still taken after Ardour quit")?;

    // A fresh Ardour loads the saved session: values survived, services bind again.
    let mut ardour = Ardour::start(&place, "load")?;
    let (m1, m2, ms) = (
        ardour.get(macro_1)?,
        ardour.get(macro_2)?,
        ardour.get(offset)?,
    );
    ensure!(
        (m1 - 0.25).abs() < 1e-6 && (m2 - 0.5).abs() < 1e-6 && (ms - 10.0).abs() < 0.05,
        "after reload: Macro 1 {m1}, Macro 2 {m2}, Clock Offset {ms}"
    );
    wait_until("OSCQuery after the reload", || {
        oscquery_value("/lockstep/param/mac_1").is_ok_and(|v| (v - 0.25).abs() < 1e-6)
    })?;
    ardour.quit()?;
    Ok(())
}
