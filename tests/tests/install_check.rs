//! `cargo xtask install --dest target/install-check` (run by `cargo xtask test` before the
//! suite) produces bundles a host can use: the CLAP file loads, instantiates and processes, and
//! the VST3 bundle has the standard Linux layout and module exports.

use anyhow::{Result, ensure};
use lockstep_host::bundle::target_dir;
use lockstep_host::harness::{check_vst3_module, exclusive};
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::transport::HostTransport;

#[test]
fn installed_clap_loads_and_processes() -> Result<()> {
    let _guard = exclusive();
    let clap = target_dir().join("install-check/Lockstep.clap");
    let bundle = Bundle::load(&clap)?;
    let mut instance = bundle.instantiate()?;
    let mut processor = instance.activate(48_000.0, 128, Layout::Stereo)?;
    processor.input_mut(0)[..128].fill(0.25);
    processor.input_mut(1)[..128].fill(-0.5);
    processor.process(128, Some(&HostTransport::new(120.0, (4, 4)).event()), &[])?;
    ensure!(
        processor.output(0)[..128].iter().all(|&s| s == 0.25),
        "left changed"
    );
    ensure!(
        processor.output(1)[..128].iter().all(|&s| s == -0.5),
        "right changed"
    );
    instance.deactivate(processor);
    Ok(())
}

#[test]
fn installed_vst3_has_layout_and_exports() -> Result<()> {
    check_vst3_module(&target_dir().join("install-check/Lockstep.vst3"))
}
