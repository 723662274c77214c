//! OSC control end to end, with real clients on loopback in the private namespace: python-osc
//! moves parameters of the built plugin in a real CLAP host, the plugin takes the values and
//! the host receives gesture begin / value / gesture end (what a DAW records as automation),
//! bad input comes back on `/lockstep/error`, and liblo's `oscdump`, subscribed as a second
//! controller, gets change-only feedback that is not echoed to the controller moving the fader.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{ScriptPeer, clap_param_id, exclusive, wait_for};
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::processor::OutParamEvent;
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;
use serde_json::Value;

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 256;
const OSC_PORT: u16 = 8200;
const CLIENT_PORT: u16 = 9300;
const DUMP_PORT: u16 = 9301;

/// liblo's `oscdump`, line-buffered, with its output collected.
struct OscDump {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl OscDump {
    fn start(port: u16) -> Result<Self> {
        let mut child = Command::new("oscdump")
            .args(["-L", &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting oscdump (run `cargo xtask test` to install liblo-tools)")?;
        let stdout = child.stdout.take().context("stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for OscDump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built plugin in a real CLAP host: OSC on [`OSC_PORT`] plus `tweak` in its saved
/// settings, activated, one block processed, its OSC port open.
struct Rig {
    _bundle: Bundle,
    probe: StatusProbe,
    instance: lockstep_host::host::Instance,
    p: lockstep_host::processor::Processor,
    t: HostTransport,
}

fn rig(tweak: impl FnOnce(&mut lockstep_net::settings::NetSettings)) -> Result<Rig> {
    rig_of(Build::Release, tweak)
}

fn rig_of(
    build: Build,
    tweak: impl FnOnce(&mut lockstep_net::settings::NetSettings),
) -> Result<Rig> {
    let path = build.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = bundle.instantiate()?;
    let mut settings = instance.net_settings()?;
    settings.osc_port = OSC_PORT;
    tweak(&mut settings);
    instance.set_net_settings(&settings)?;
    let mut p = instance.activate(RATE, BLOCK, Layout::Stereo)?;
    let t = HostTransport::new(120.0, (4, 4));
    p.process(BLOCK, Some(&t.event()), &[])?;
    wait_for(&probe, "the OSC port", |s| {
        s.worker
            .osc
            .as_ref()
            .is_some_and(|o| o.port == Some(OSC_PORT))
    })?;
    Ok(Rig {
        _bundle: bundle,
        probe,
        instance,
        p,
        t,
    })
}

#[test]
fn osc_controllers_move_parameters_and_the_host_sees_every_move() -> Result<()> {
    let _guard = exclusive();
    let Rig {
        _bundle,
        probe,
        mut instance,
        mut p,
        t,
    } = rig(|s| s.osc_expose = vec!["lnk_md".into()])?;
    let capture = lockstep_host::pcap::Capture::start(
        "osc-control.pcap",
        &format!("udp port {OSC_PORT} or udp port {CLIENT_PORT} or udp port {DUMP_PORT}"),
    )?;
    let dump = OscDump::start(DUMP_PORT)?;
    std::thread::sleep(Duration::from_millis(200));

    let client = ScriptPeer::spawn(
        "osc_client.py",
        &[
            OSC_PORT.to_string(),
            CLIENT_PORT.to_string(),
            "3".into(),
            format!(r#"["/lockstep/subscribe", "i", {DUMP_PORT}]"#),
            r#"["/lockstep/param/mac_1", "f", 0.75]"#.into(),
            r#"["/lockstep/param/clk_ofs", "f", 999.0]"#.into(),
            r#"["/lockstep/param/lnk_md", "s", "Follow"]"#.into(),
            r#"["/lockstep/param/nothing", "i", 1]"#.into(),
            // Never settable remotely: a controller cannot lock its user out.
            r#"["/lockstep/param/osc_on", "F", 0]"#.into(),
        ],
    )?;
    client.wait("the client to send", |l| {
        l.iter().any(|v| v["event"] == "sent")
    })?;

    // Play blocks (paced) until the host has seen the macro's whole gesture.
    let (mac_1, lnk_md) = (clap_param_id("mac_1"), clap_param_id("lnk_md"));
    let mut events = Vec::new();
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !events.contains(&OutParamEvent::End(mac_1)) {
        ensure!(
            Instant::now() < deadline,
            "the host never saw the gesture end: {events:?}"
        );
        p.process(BLOCK, Some(&t.event()), &[])?;
        events.extend(p.out_param_events());
        std::thread::sleep(period);
    }
    let of = |id: u32| -> Vec<OutParamEvent> {
        events
            .iter()
            .copied()
            .filter(|e| match *e {
                OutParamEvent::Begin(x) | OutParamEvent::End(x) | OutParamEvent::Value(x, _) => {
                    x == id
                }
            })
            .collect()
    };
    ensure!(
        of(mac_1)
            == [
                OutParamEvent::Begin(mac_1),
                OutParamEvent::Value(mac_1, 0.75),
                OutParamEvent::End(mac_1)
            ],
        "{events:?}"
    );
    // The enum by name: "Follow" is step 2 of Off/Lead/Follow.
    ensure!(
        of(lnk_md).contains(&OutParamEvent::Value(lnk_md, 2.0)),
        "{events:?}"
    );
    ensure!(
        !events
            .iter()
            .any(|e| matches!(e, OutParamEvent::Value(id, _) if *id == clap_param_id("clk_ofs"))),
        "an out-of-range value changes nothing: {events:?}"
    );
    // The plugin itself took the values (the host reads them back from it).
    instance.pump_main_thread();
    ensure!((instance.param_value(mac_1)? - 0.75).abs() < 1e-6);

    // Errors come back to the sender.
    let lines = client.wait("the error replies", |l| {
        l.iter()
            .filter(|v| v["address"] == "/lockstep/error")
            .count()
            >= 3
    })?;
    let errors: Vec<&Value> = lines
        .iter()
        .filter(|v| v["address"] == "/lockstep/error")
        .collect();
    ensure!(
        errors
            .iter()
            .any(|e| e["args"][0] == "/lockstep/param/clk_ofs"
                && e["args"][1].as_str().is_some_and(|s| s.contains("outside"))),
        "{errors:?}"
    );
    ensure!(
        errors
            .iter()
            .any(|e| e["args"][0] == "/lockstep/param/nothing"
                && e["args"][1] == "no such address"),
        "{errors:?}"
    );
    ensure!(
        errors
            .iter()
            .any(|e| e["args"][0] == "/lockstep/param/osc_on"
                && e["args"][1]
                    .as_str()
                    .is_some_and(|s| s.contains("cannot be set remotely"))),
        "{errors:?}"
    );
    instance.pump_main_thread();
    ensure!(
        instance.param_value(clap_param_id("osc_on"))? == 1.0,
        "OSC Control stays on"
    );

    // Feedback: oscdump (subscribed) hears the macro at 0.75; the client moving it does not.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        p.process(BLOCK, Some(&t.event()), &[])?;
        let heard = dump
            .lines()
            .iter()
            .any(|l| l.contains("/lockstep/param/mac_1/normalized") && l.contains("0.75"));
        if heard {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "oscdump never got the feedback: {:?}",
            dump.lines()
        );
        std::thread::sleep(period);
    }
    std::thread::sleep(Duration::from_millis(300));
    let echoed = client.lines().into_iter().any(|v| {
        v["address"] == "/lockstep/param/mac_1/normalized"
            && v["args"][0]
                .as_f64()
                .is_some_and(|x| (x - 0.75).abs() < 1e-6)
    });
    ensure!(
        !echoed,
        "feedback echoed to the mover: {:?}",
        client.lines()
    );

    let status = probe.read()?;
    let osc = status.worker.osc.context("osc status")?;
    ensure!(
        osc.applied == 2
            && osc.out_of_range == 1
            && osc.unknown_address == 1
            && osc.not_exposed == 1,
        "{osc:?}"
    );
    ensure!(osc.feedback_sent > 0 && osc.dropped_full == 0, "{osc:?}");
    instance.deactivate(p);
    // The live capture of this exchange (python-osc, Lockstep, oscdump) as tshark's OSC
    // dissector reads it: every packet OSC, none malformed, no expert warning.
    let rows = lockstep_host::pcap::tshark_fields_with(
        &capture.finish()?,
        // Port 8200 is another protocol's registered port: try OSC's heuristic first.
        &[
            "--enable-heuristic",
            "osc_udp",
            "-o",
            "udp.try_heuristic_first:TRUE",
        ],
        &[
            "frame.protocols",
            "_ws.expert.severity",
            "_ws.malformed",
            "osc.message.header.path",
        ],
    )?;
    ensure!(rows.len() >= 8, "captured {} packets", rows.len());
    for (i, row) in rows.iter().enumerate() {
        ensure!(row[0].ends_with(":osc"), "frame {} is {}", i + 1, row[0]);
        ensure!(
            row[1].is_empty() && row[2].is_empty(),
            "frame {}: {row:?}",
            i + 1
        );
    }
    ensure!(
        rows.iter().any(|r| r[3].contains("/lockstep/error"))
            && rows
                .iter()
                .any(|r| r[3].contains("/lockstep/param/mac_1/normalized")),
        "{rows:?}"
    );
    Ok(())
}

/// A shipped controller preset in the plugin's saved settings: liblo's `oscsend`, playing
/// TouchOSC's "Simple" layout, moves fader 1 and the XY pad; Macro 1, 6 and 7 follow and the
/// host gets the values.
#[test]
fn the_touchosc_preset_maps_controller_addresses_onto_macros() -> Result<()> {
    let _guard = exclusive();
    let preset: lockstep_net::settings::OscPreset =
        serde_json::from_str(&std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../presets/osc/touchosc-simple.json"
        ))?)?;
    let Rig {
        _bundle,
        probe,
        mut instance,
        mut p,
        t,
    } = rig(|s| {
        s.osc_mappings = preset.mappings;
    })?;
    let target = format!("osc.udp://127.0.0.1:{OSC_PORT}");
    for args in [
        vec!["/1/fader1", "f", "0.25"],
        vec!["/3/xy", "ff", "0.5", "1.0"],
    ] {
        let status = Command::new("oscsend")
            .arg(&target)
            .args(&args)
            .status()
            .context("oscsend (liblo-tools)")?;
        ensure!(status.success(), "oscsend {args:?}");
    }
    let want = [
        (clap_param_id("mac_1"), 0.25),
        (clap_param_id("mac_6"), 0.5),
        (clap_param_id("mac_7"), 1.0),
    ];
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    while !want
        .iter()
        .all(|(id, v)| events.contains(&OutParamEvent::Value(*id, *v)))
    {
        ensure!(Instant::now() < deadline, "{events:?}");
        p.process(BLOCK, Some(&t.event()), &[])?;
        events.extend(p.out_param_events());
        std::thread::sleep(period);
    }
    instance.pump_main_thread();
    for (id, v) in want {
        ensure!((instance.param_value(id)? - v).abs() < 1e-6, "param {id}");
    }
    // The status is a snapshot published at most ~30 times a second: wait for it.
    let status = wait_for(&probe, "three applied", |s| {
        s.worker.osc.as_ref().is_some_and(|o| o.applied >= 3)
    })?;
    let osc = status.worker.osc.context("osc status")?;
    ensure!(
        osc.applied == 3 && osc.mapping_errors.is_empty() && osc.unknown_address == 0,
        "{osc:?}"
    );
    instance.deactivate(p);
    Ok(())
}

/// An OSC bundle with a future time tag (python-osc) reaches the host on the sample its time
/// falls on, not at a block boundary; a past one applies at once and is counted late; one
/// more than 10 s ahead is refused with an error.
#[test]
fn timed_bundles_land_on_their_sample() -> Result<()> {
    let _guard = exclusive();
    let Rig {
        _bundle,
        probe,
        mut instance,
        mut p,
        t,
    } = rig(|_| {})?;
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    // (block start sample, Unix time ns at its process call) for every block.
    let mut blocks: Vec<(u64, f64)> = Vec::new();
    let unix_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_nanos() as f64)
    };
    let mut deadline = Instant::now();
    let mut step = |p: &mut lockstep_host::processor::Processor,
                    blocks: &mut Vec<(u64, f64)>|
     -> Result<Vec<OutParamEvent>> {
        blocks.push((p.steady_time(), unix_ns()));
        p.process(BLOCK, Some(&t.event()), &[])?;
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Ok(p.out_param_events())
    };
    // Two seconds of blocks first: the sample clock estimate settles.
    for _ in 0..(2.0 * RATE / f64::from(BLOCK)) as usize {
        step(&mut p, &mut blocks)?;
    }
    wait_for(&probe, "the OSC port", |s| {
        s.worker
            .osc
            .as_ref()
            .is_some_and(|o| o.port == Some(OSC_PORT))
    })?;
    let client = ScriptPeer::spawn(
        "osc_client.py",
        &[
            OSC_PORT.to_string(),
            CLIENT_PORT.to_string(),
            "3".into(),
            r#"{"in": 0.4, "messages": [["/lockstep/param/mac_2", "f", 0.6]]}"#.into(),
            r#"{"in": -1.0, "messages": [["/lockstep/param/mac_3", "f", 0.3]]}"#.into(),
            r#"{"in": 30.0, "messages": [["/lockstep/param/mac_4", "f", 0.9]]}"#.into(),
        ],
    )?;
    let mac_2 = clap_param_id("mac_2");
    let mut found = None;
    let mut all = Vec::new();
    let stop = Instant::now() + Duration::from_secs(5);
    while found.is_none() {
        ensure!(
            Instant::now() < stop,
            "mac_2 never reached the host: {all:?}"
        );
        let start = p.steady_time();
        let events = step(&mut p, &mut blocks)?;
        for e in &events {
            if let OutParamEvent::Value(id, v) = *e
                && id == mac_2
            {
                ensure!((v - 0.6).abs() < 1e-6, "{e:?}");
                found = Some(start);
            }
        }
        all.extend(events);
        if found.is_some() {
            // The sample offset inside the block is in the raw event; read it back.
            break;
        }
    }
    let block_start = found.context("found")?;
    let offset = p.out_param_value_times(mac_2);
    ensure!(offset.len() == 1, "{offset:?}");
    let actual = block_start as f64 + f64::from(offset[0]);
    let lines = client.wait("the bundle's time", |l| {
        l.iter().any(|v| v["event"] == "bundle")
    })?;
    let target_unix_ns = lines
        .iter()
        .find(|v| v["event"] == "bundle")
        .and_then(|v| v["at"].as_f64())
        .context("at")?
        * 1e9;
    // Where the test's own clock puts that time: a least-squares line through the blocks.
    let n = blocks.len() as f64;
    let (mx, my) = blocks
        .iter()
        .fold((0.0, 0.0), |a, b| (a.0 + b.1 / n, a.1 + b.0 as f64 / n));
    let (sxy, sxx) = blocks.iter().fold((0.0, 0.0), |a, b| {
        (
            a.0 + (b.1 - mx) * (b.0 as f64 - my),
            a.1 + (b.1 - mx) * (b.1 - mx),
        )
    });
    let expected = my + sxy / sxx * (target_unix_ns - mx);
    let error = actual - expected;
    println!(
        "timed bundle: sample {actual} (offset {} in its block), expected {expected:.1}: error {error:+.1} samples",
        offset[0]
    );
    // The README claims within 2 samples of where this host's own clock puts the time tag
    // (measured −1.8…+0.6: the reference is a line through the wall-clock times at which this
    // debug-built host calls process(), a few tens of µs before the plugin reads its clock);
    // the margin to 2.5 is for that reference on a busy machine. Three samples off fails.
    ensure!(
        error.abs() < 2.5,
        "landed {error:+.1} samples from its time (block {BLOCK})"
    );
    let osc = probe.read()?.worker.osc.context("osc")?;
    ensure!(
        osc.late == 1 && osc.schedule_refused == 1 && osc.applied == 2,
        "{osc:?}"
    );
    ensure!(
        all.iter()
            .any(|e| matches!(e, OutParamEvent::Value(id, _) if *id == clap_param_id("mac_3"))),
        "the late bundle applied at once: {all:?}"
    );
    instance.deactivate(p);
    Ok(())
}

/// OSCQuery with real clients: python-zeroconf finds `_oscjson._tcp` and `_osc._udp`, urllib
/// reads HOST_INFO and the namespace, a value set over OSC shows up in it, and the
/// `websockets` client LISTENs to a parameter and receives its changes as OSC frames.
#[test]
fn oscquery_is_discovered_and_describes_every_parameter() -> Result<()> {
    let _guard = exclusive();
    let Rig {
        _bundle,
        probe,
        mut instance,
        mut p,
        t,
    } = rig(|s| {
        s.oscquery_lan = true;
    })?;
    p.process(BLOCK, Some(&t.event()), &[])?;
    let status = wait_for(&probe, "OSCQuery", |s| {
        s.worker
            .osc
            .as_ref()
            .is_some_and(|o| o.oscquery_port.is_some())
    })?;
    let osc = status.worker.osc.context("osc")?;
    ensure!(
        osc.oscquery_port == Some(OSC_PORT + 1) && osc.oscquery_lan,
        "{osc:?}"
    );
    let client = ScriptPeer::spawn("oscquery_client.py", &["0.5".into(), "15".into()])?;
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.process(BLOCK, Some(&t.event()), &[])?;
        let lines = client.lines();
        if lines
            .iter()
            .any(|v| v["event"] == "missing" || v["event"] == "not-found")
        {
            break;
        }
        ensure!(Instant::now() < deadline, "{lines:?}");
        std::thread::sleep(period);
    }
    let lines = client.lines();
    let event = |name: &str| lines.iter().find(|v| v["event"] == name).cloned();
    ensure!(event("not-found").is_none(), "{lines:?}");
    let info = event("host_info").context("HOST_INFO")?;
    ensure!(
        info["status"] == 200 && info["body"]["OSC_PORT"] == OSC_PORT,
        "{info}"
    );
    let root = event("root").context("root")?;
    let params = root["params"].as_array().context("params")?;
    ensure!(params.len() == 25, "every parameter: {root}");
    let value = event("value").context("the value set over OSC never showed")?;
    ensure!(value["body"]["VALUE"][0] == 0.5, "{value}");
    ensure!(
        event("missing").is_some_and(|m| m["status"] == 404),
        "{lines:?}"
    );
    let update = event("ws-update").context("no value over the WebSocket")?;
    ensure!(update["args"][0] == 0.25, "{update}");
    let closed = event("ws-closed").context("no close")?;
    ensure!(
        closed["code"] == 1000,
        "the close reply carries the code: {closed}"
    );
    let preflight = event("preflight").context("no preflight answer")?;
    ensure!(
        preflight["status"] == 204
            && preflight["allow_origin"] == "*"
            && preflight["allow_methods"] == "GET, OPTIONS",
        "{preflight}"
    );
    ensure!(
        lines.iter().any(|v| v["event"] == "found"
            && v["type"] == "_osc._udp.local."
            && v["port"] == OSC_PORT),
        "{lines:?}"
    );
    instance.deactivate(p);
    Ok(())
}

/// OSC over TCP on the same port number: a python-osc controller with OSC 1.1 SLIP framing
/// (its dump request answered over the same connection, SLIP-framed) and liblo's `oscsend`
/// with OSC 1.0 size-prefixed framing both reach the host.
#[test]
fn osc_over_tcp_with_both_framings() -> Result<()> {
    let _guard = exclusive();
    let Rig {
        _bundle,
        probe,
        mut instance,
        mut p,
        t,
    } = rig(|_| {})?;
    p.process(BLOCK, Some(&t.event()), &[])?;
    wait_for(&probe, "OSC over TCP", |s| {
        s.worker.osc.as_ref().is_some_and(|o| o.tcp)
    })?;
    let slip = ScriptPeer::spawn(
        "osc_tcp_client.py",
        &[
            OSC_PORT.to_string(),
            "2".into(),
            r#"["/lockstep/param/mac_5", "f", 0.2]"#.into(),
            r#"["/lockstep/dump"]"#.into(),
        ],
    )?;
    slip.wait("the SLIP client to send", |l| {
        l.iter().any(|v| v["event"] == "sent")
    })?;
    let status = Command::new("oscsend")
        .args([
            &format!("osc.tcp://127.0.0.1:{OSC_PORT}"),
            "/lockstep/param/mac_6",
            "f",
            "0.4",
        ])
        .status()
        .context("oscsend")?;
    ensure!(status.success());
    let want = [(clap_param_id("mac_5"), 0.2), (clap_param_id("mac_6"), 0.4)];
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    while !want.iter().all(|(id, v)| {
        events
            .iter()
            .any(|e| matches!(e, OutParamEvent::Value(i, x) if i == id && (x - v).abs() < 1e-6))
    }) {
        ensure!(Instant::now() < deadline, "{events:?}");
        p.process(BLOCK, Some(&t.event()), &[])?;
        events.extend(p.out_param_events());
        std::thread::sleep(period);
    }
    // The dump came back over the SLIP connection.
    let lines = slip.wait("the dump over TCP", |l| {
        l.iter()
            .any(|v| v["address"] == "/lockstep/param/clk_ofs/normalized")
    })?;
    ensure!(
        lines.iter().filter(|v| v["address"].is_string()).count() >= 50,
        "{lines:?}"
    );
    instance.deactivate(p);
    Ok(())
}

/// The allocation-checked build takes immediate and timed OSC changes: the host-facing layer's
/// planning, holding, merging and reporting run under the allocation checker, so an
/// allocation inside `process()` aborts this test. (Sample placement is measured on the
/// release build above; the debug build's slower `process()` blurs the clock estimate.)
#[test]
fn the_allocation_checked_build_takes_immediate_and_timed_changes() -> Result<()> {
    let _guard = exclusive();
    let Rig {
        _bundle,
        probe: _probe,
        instance: _instance,
        mut p,
        t,
    } = rig_of(Build::DebugAllocChecked, |_| {})?;
    let period = Duration::from_secs_f64(f64::from(BLOCK) / RATE);
    let _client = ScriptPeer::spawn(
        "osc_client.py",
        &[
            OSC_PORT.to_string(),
            CLIENT_PORT.to_string(),
            "2".into(),
            r#"["/lockstep/param/mac_5", "f", 0.5]"#.into(),
            r#"{"in": 0.3, "messages": [["/lockstep/param/mac_6", "f", 0.7]]}"#.into(),
        ],
    )?;
    let (mac_5, mac_6) = (clap_param_id("mac_5"), clap_param_id("mac_6"));
    let (mut got_5, mut got_6) = (false, false);
    let stop = Instant::now() + Duration::from_secs(10);
    let mut deadline = Instant::now();
    while !(got_5 && got_6) {
        ensure!(Instant::now() < stop, "mac_5 {got_5}, mac_6 {got_6}");
        p.process(BLOCK, Some(&t.event()), &[])?;
        for e in p.out_param_events() {
            match e {
                OutParamEvent::Value(id, v) if id == mac_5 => got_5 = (v - 0.5).abs() < 1e-6,
                OutParamEvent::Value(id, v) if id == mac_6 => got_6 = (v - 0.7).abs() < 1e-6,
                _ => {}
            }
        }
        deadline += period;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}
