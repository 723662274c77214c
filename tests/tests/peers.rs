//! The real peers later tests talk to are installed and usable: `cargo xtask test` installs
//! them (Debian: tshark, liblo-tools; PyPI into target/peers-venv: aalink, pymidi, python-osc,
//! zeroconf). A missing peer fails here, loudly, instead of a later interop test being skipped.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use lockstep_host::harness::peers_python;

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("{program} is not installed (run `cargo xtask test`)"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn python_peers_import_and_report_versions() -> Result<()> {
    let python = peers_python();
    let script = "\
import importlib.metadata as m
import aalink, pymidi, pythonosc, zeroconf
from aalink import Link
from pymidi import server
from pythonosc import udp_client, dispatcher
for name in ('aalink', 'pymidi', 'python-osc', 'zeroconf'):
    print(name, m.version(name))
";
    let text = output(python.to_str().context("path")?, &["-c", script])?;
    for name in ["aalink", "pymidi", "python-osc", "zeroconf"] {
        ensure!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}: {text}"
        );
    }
    Ok(())
}

#[test]
fn tshark_knows_applemidi_rtp_midi_and_osc() -> Result<()> {
    let protocols = output("tshark", &["-G", "protocols"])?;
    for filter in ["applemidi", "rtpmidi", "osc"] {
        ensure!(
            protocols
                .lines()
                .any(|l| l.split('\t').nth(2) == Some(filter)),
            "tshark has no `{filter}` dissector"
        );
    }
    Ok(())
}

#[test]
fn liblo_tools_are_installed() -> Result<()> {
    // oscsend with no arguments prints usage and exits non-zero; existing is what matters.
    for tool in ["oscsend", "oscdump"] {
        let found = Command::new(tool).output();
        ensure!(
            found.is_ok(),
            "{tool} is not installed (run `cargo xtask test`)"
        );
    }
    Ok(())
}
