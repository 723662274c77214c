//! `cargo xtask run`: build what is missing, then run the headless Lockstep.

use std::process::Command;

use anyhow::{Context, Result};

use crate::build::{bundle_release, cargo, run as run_cmd, target_dir};

/// Build the release bundle and the runner (both incremental), then run it with `args`.
pub fn main(args: &[String]) -> Result<()> {
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    bundle_release(&["lockstep"])?;
    run_cmd(&mut cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "lockstep-tests",
        "--bin",
        "lockstep-headless",
    ]))?;
    // Ctrl+C reaches the runner too (same process group); it shuts down cleanly, and we only
    // wait for it instead of dying first and leaving it behind.
    ctrlc::set_handler(|| {}).context("installing the Ctrl+C handler")?;
    let status = Command::new(target_dir().join("release/lockstep-headless"))
        .args(args)
        .status()
        .context("starting lockstep-headless")?;
    std::process::exit(status.code().unwrap_or(1));
}
