//! Building blocks shared by the commands: running cargo, bundling both flavours.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// cd to the workspace root (where the top `Cargo.toml` is).
pub fn chdir_workspace_root() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    std::env::set_current_dir(root).context("cd to the workspace root")
}

/// The workspace target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

/// Run a command, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// `cargo` with the given arguments.
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    cmd
}

/// Bundle the release plugin(s) into `target/bundled/`.
pub fn bundle_release(packages: &[&str]) -> Result<()> {
    let mut args = vec!["bundle".to_owned()];
    for p in packages {
        args.extend(["-p".to_owned(), (*p).to_owned()]);
    }
    args.push("--release".into());
    nice_plug_xtask::main_with_args("cargo xtask", args)
}

/// Bundle the debug build with `assert_process_allocs` into `target/bundled-debug/`.
///
/// nice-plug-xtask always writes to `target/bundled/`, so this bundles the debug build first
/// and moves it aside; call [`bundle_release`] afterwards.
pub fn bundle_debug_alloc_checked() -> Result<()> {
    nice_plug_xtask::main_with_args(
        "cargo xtask",
        ["bundle", "lockstep", "--features", "assert_process_allocs"].map(String::from),
    )?;
    let bundled = target_dir().join("bundled");
    let debug = target_dir().join("bundled-debug");
    std::fs::create_dir_all(&debug)?;
    std::fs::copy(bundled.join("Lockstep.clap"), debug.join("Lockstep.clap"))
        .context("moving the debug CLAP bundle aside")?;
    copy_dir(&bundled.join("Lockstep.vst3"), &debug.join("Lockstep.vst3"))?;
    Ok(())
}

/// Recursively copy a directory (bundles are small).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying to {}", target.display()))?;
        }
    }
    Ok(())
}

/// The private network namespace's set-up, then the command given as arguments.
const NETNS_SCRIPT: &str = "set -e
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
exec \"$@\"";

/// True when running as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `args` wrapped to run in a new network namespace with only loopback (multicast routed to
/// it): nothing it sends can leave the machine.
pub fn in_netns(args: &[&str]) -> Command {
    let mut unshare = Command::new("unshare");
    unshare.arg("--net");
    if !is_root() {
        unshare.arg("--map-root-user");
    }
    unshare
        .args(["--", "sh", "-c", NETNS_SCRIPT, "netns"])
        .args(args);
    unshare
}
