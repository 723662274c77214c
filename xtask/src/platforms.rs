//! The platforms Lockstep ships for besides the one it is built on: cross-target bundles
//! (`cargo xtask bundle lockstep --release --target <triple>`) and the checks `cargo xtask
//! test` runs so a Windows or macOS break fails CI here.
//!
//! - Windows (`x86_64-pc-windows-gnu`): built and linked with Debian's mingw-w64 into
//!   `target/bundled-x86_64-pc-windows-gnu/` (`Lockstep.clap`, and `Lockstep.vst3` with the
//!   `Contents/x86_64-win/` layout); the DLLs' exports (`clap_entry`, `GetPluginFactory`) and
//!   imports (no MinGW runtime DLL a user would not have) are checked. Not run: Debian's Wine 8
//!   cannot run current Rust Windows binaries.
//! - macOS (`aarch64-apple-darwin`, `x86_64-apple-darwin`): linted with clippy (no linking is
//!   possible without Apple's SDK); bundles are made on a Mac with the same command.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::build::{cargo, run, target_dir};

/// The Windows target the bundles are cross-built for.
pub const WINDOWS: &str = "x86_64-pc-windows-gnu";
/// Every target `cargo xtask test` checks besides the host.
pub const TARGETS: [&str; 3] = [WINDOWS, "aarch64-apple-darwin", "x86_64-apple-darwin"];

/// MinGW runtime DLLs a Windows user would not have: a bundle must not import them.
const FOREIGN_DLLS: [&str; 3] = [
    "libgcc_s_seh-1.dll",
    "libwinpthread-1.dll",
    "libstdc++-6.dll",
];

/// Install the Rust standard libraries of [`TARGETS`] that are missing (rustup).
pub fn install_targets() -> Result<()> {
    let missing = missing_targets();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask test: adding Rust targets {missing:?}");
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&missing))
}

/// Targets of [`TARGETS`] not installed, for a clear error with `--no-install`.
pub fn missing_targets() -> Vec<&'static str> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    TARGETS
        .into_iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect()
}

/// `cargo clippy -D warnings` of the shipped crates for every target in [`TARGETS`] (the
/// test host and its tests are Linux-only and stay out).
pub fn lint_targets() -> Result<()> {
    for target in TARGETS {
        println!("xtask test: clippy for {target}");
        run(&mut cargo(&[
            "clippy",
            "--target",
            target,
            "-p",
            "lockstep-net",
            "-p",
            "lockstep",
            "-p",
            "lockstep-bench-baseline",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    Ok(())
}

/// Bundle `package` in release for `triple` into `target/bundled-<triple>/`. nice-plug-xtask
/// always writes to `target/bundled/`, so the host's bundles there are set aside and put back.
pub fn bundle_cross(package: &str, triple: &str) -> Result<PathBuf> {
    let bundled = target_dir().join("bundled");
    let stash = target_dir().join("bundled-stash");
    let out = target_dir().join(format!("bundled-{triple}"));
    let names = ["Lockstep.clap", "Lockstep.vst3"];
    let _ = std::fs::remove_dir_all(&stash);
    std::fs::create_dir_all(&stash)?;
    for name in names {
        let from = bundled.join(name);
        if from.exists() {
            std::fs::rename(&from, stash.join(name))
                .with_context(|| format!("setting {} aside", from.display()))?;
        }
    }
    let built = nice_plug_xtask::main_with_args(
        "cargo xtask",
        ["bundle", package, "--release", "--target", triple].map(String::from),
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    for name in names {
        let from = bundled.join(name);
        if from.exists() {
            std::fs::rename(&from, out.join(name))?;
        }
        let kept = stash.join(name);
        if kept.exists() {
            std::fs::rename(&kept, bundled.join(name))?;
        }
    }
    let _ = std::fs::remove_dir_all(&stash);
    built?;
    println!("bundles for {triple} in {}", out.display());
    Ok(out)
}

/// Check the Windows bundles in `dir`: PE DLLs with the entry points hosts look for, and no
/// import of a MinGW runtime DLL.
pub fn check_windows_bundles(dir: &Path) -> Result<()> {
    let clap = dir.join("Lockstep.clap");
    let vst3 = dir.join("Lockstep.vst3/Contents/x86_64-win/Lockstep.vst3");
    for (path, export) in [(&clap, "clap_entry"), (&vst3, "GetPluginFactory")] {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let pe = goblin::pe::PE::parse(&bytes)
            .with_context(|| format!("{} is not a Windows DLL", path.display()))?;
        ensure!(pe.is_lib, "{} is not a DLL", path.display());
        ensure!(
            pe.exports.iter().any(|e| e.name == Some(export)),
            "{} does not export {export}",
            path.display()
        );
        for dll in &pe.libraries {
            if FOREIGN_DLLS.iter().any(|f| f.eq_ignore_ascii_case(dll)) {
                bail!(
                    "{} imports {dll}, which Windows users do not have",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Build, link and check the Windows bundles (`cargo xtask test`).
pub fn windows_bundles() -> Result<()> {
    let dir = bundle_cross("lockstep", WINDOWS)?;
    check_windows_bundles(&dir)?;
    println!("xtask test: Windows bundles link and export clap_entry / GetPluginFactory");
    Ok(())
}

/// `cargo xtask bundle …` with `--target`: into `target/bundled-<triple>/`, checked.
pub fn bundle_command(args: &[String]) -> Result<()> {
    let triple = args
        .iter()
        .position(|a| a == "--target")
        .and_then(|i| args.get(i + 1))
        .context("--target needs a target triple")?;
    let package = args
        .iter()
        .find(|a| !a.starts_with('-') && *a != triple)
        .context("which package? (cargo xtask bundle lockstep --release --target …)")?;
    let dir = bundle_cross(package, triple)?;
    if triple.contains("windows") && package == "lockstep" {
        check_windows_bundles(&dir)?;
    }
    Ok(())
}
