//! mDNS / DNS-SD against a real peer (python-zeroconf), on loopback inside the test network
//! namespace only: Lockstep advertises its AppleMIDI session as "Lockstep (host)" on its
//! control port, lists the AppleMIDI services it finds, and withdraws its own on deactivation.

use anyhow::{Context, Result, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{ScriptPeer, exclusive, wait_for};
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;
use lockstep_net::worker::discovery::host_name;
use serde_json::Value;

const RATE: f64 = 48_000.0;
const BLOCK: u32 = 512;

#[test]
fn lockstep_and_zeroconf_find_each_other_and_lockstep_says_goodbye() -> Result<()> {
    let _guard = exclusive();
    // python-zeroconf has twice been seen not to finish registering within 20 s right after
    // the attack suite on this VM (never reproduced alone): one more start before failing.
    let start = || -> Result<ScriptPeer> {
        let peer = ScriptPeer::spawn(
            "mdns_peer.py",
            &["Studio B".into(), "6104".into(), "60".into()],
        )?;
        peer.wait("zeroconf ready", |l| {
            l.iter().any(|v| v["event"] == "ready")
        })?;
        Ok(peer)
    };
    let peer = match start() {
        Ok(peer) => peer,
        Err(e) => {
            eprintln!("{e}: starting zeroconf once more");
            start()?
        }
    };

    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = bundle.instantiate()?;
    let mut settings = instance.net_settings()?;
    settings.rtp_midi_port = 5204;
    instance.set_net_settings(&settings)?;
    let mut p = instance.activate(RATE, BLOCK, Layout::Stereo)?;
    let t = HostTransport::new(120.0, (4, 4));
    p.process(BLOCK, Some(&t.event()), &[])?;

    let ours = format!("Lockstep ({})", host_name());
    // Lockstep lists the zeroconf peer.
    let status = wait_for(&probe, "Studio B in Lockstep's discovery list", |s| {
        s.worker
            .discovery
            .found
            .iter()
            .any(|f| f.name == "Studio B")
    })?;
    let found = status
        .worker
        .discovery
        .found
        .iter()
        .find(|f| f.name == "Studio B")
        .context("found")?;
    ensure!(
        found.port == 6104
            && found.addresses.contains(&"127.0.0.1".to_owned())
            && found.service == "_apple-midi._udp.local."
            && found.host == "mdns-peer.local.",
        "{found:?}"
    );
    ensure!(
        status.worker.discovery.error.is_none(),
        "{:?}",
        status.worker.discovery
    );
    // Our AppleMIDI session, and the process's OSC port (OSCQuery stays unadvertised while
    // it listens on loopback only, the default).
    let advertised = &status.worker.discovery.advertised;
    ensure!(
        advertised.len() == 2
            && advertised.contains(&format!("{ours}._apple-midi._udp.local."))
            && advertised.contains(&format!("{ours}._osc._udp.local.")),
        "{:?}",
        status.worker.discovery
    );
    ensure!(
        !status.worker.discovery.found.iter().any(|f| f.name == ours),
        "our own service is not listed as a peer: {:?}",
        status.worker.discovery.found
    );

    // zeroconf finds Lockstep with its real control port and a loopback address.
    let is_ours = |v: &Value| v["event"] == "found" && v["name"] == ours.as_str();
    let lines = peer.wait("zeroconf to resolve Lockstep", |l| l.iter().any(is_ours))?;
    let seen = lines.iter().find(|v| is_ours(v)).context("found")?;
    ensure!(seen["port"] == 5204, "{seen}");
    ensure!(
        seen["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "127.0.0.1")),
        "{seen}"
    );

    // Both our services asked for within one second, from port 5353 as real queriers do:
    // each answer carries the address of its own host record (mdns-sd multicasts a record at
    // most once a second, so a shared host name left the second answer without one).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let types = ["_apple-midi._udp.local.", "_osc._udp.local."];
    let asker = ScriptPeer::spawn("mdns_additionals.py", &types.map(String::from))?;
    let lines = asker.wait("the answers", |l| l.iter().any(|v| v["event"] == "done"))?;
    for ty in types {
        let answer = lines
            .iter()
            .find(|v| {
                v["event"] == "answer"
                    && v["type"] == ty
                    && v["name"].as_str().is_some_and(|n| n.starts_with(&ours))
            })
            .with_context(|| format!("no answer for {ty}: {lines:?}"))?;
        ensure!(
            answer["a"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "127.0.0.1")),
            "{ty} answered without its address: {answer}"
        );
    }

    ensure!(
        seen["server"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{}-", host_name())) && s.ends_with(".local.")),
        "{seen}"
    );

    // Deactivating withdraws the service: zeroconf sees it go.
    instance.deactivate(p);
    peer.wait("zeroconf to see Lockstep leave", |l| {
        l.iter()
            .any(|v| v["event"] == "removed" && v["name"] == ours.as_str())
    })?;
    Ok(())
}
