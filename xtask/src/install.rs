//! `cargo xtask install`: build the release bundles and copy them where DAWs look.
//!
//! Default folders (per user, no admin rights needed):
//! - Linux: `~/.clap`, `~/.vst3`
//! - macOS: `~/Library/Audio/Plug-Ins/CLAP`, `~/Library/Audio/Plug-Ins/VST3`
//! - Windows: `%LOCALAPPDATA%\Programs\Common\CLAP`, `%LOCALAPPDATA%\Programs\Common\VST3`
//!
//! `--dest DIR` puts both bundles in DIR instead. A bundle that a running program (a DAW) has
//! loaded is not replaced: the command names the program and stops, unless `--force`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::build::{bundle_release, copy_dir, target_dir};

struct Options {
    dest: Option<PathBuf>,
    force: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        dest: None,
        force: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dest" => {
                options.dest = Some(PathBuf::from(args.next().context("--dest needs a folder")?));
            }
            "--force" => options.force = true,
            other => bail!("unknown option `{other}` (install takes --dest DIR and --force)"),
        }
    }
    Ok(options)
}

/// The platform's per-user CLAP and VST3 folders.
fn default_folders() -> Result<(PathBuf, PathBuf)> {
    let home = || -> Result<PathBuf> {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("$HOME is not set; pass --dest DIR")
    };
    if cfg!(target_os = "macos") {
        let base = home()?.join("Library/Audio/Plug-Ins");
        Ok((base.join("CLAP"), base.join("VST3")))
    } else if cfg!(target_os = "windows") {
        let base = std::env::var_os("LOCALAPPDATA")
            .map(PathBuf::from)
            .context("%LOCALAPPDATA% is not set; pass --dest DIR")?
            .join("Programs")
            .join("Common");
        Ok((base.join("CLAP"), base.join("VST3")))
    } else {
        let home = home()?;
        Ok((home.join(".clap"), home.join(".vst3")))
    }
}

/// Processes that have a file under `path` mapped (Linux: /proc/PID/maps). Empty elsewhere;
/// there the copy itself fails on a locked file and the error says so.
fn users_of(path: &Path) -> Vec<String> {
    let Ok(canonical) = path.canonicalize() else {
        return Vec::new();
    };
    let needle = canonical.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id().to_string();
    let mut users = Vec::new();
    for entry in procs.filter_map(Result::ok) {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        if maps.lines().any(|l| l.contains(&needle)) {
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            users.push(format!("PID {pid} ({})", name.trim()));
        }
    }
    users
}

fn install_one(from: &Path, to_dir: &Path, force: bool) -> Result<PathBuf> {
    let name = from.file_name().context("bundle without a name")?;
    let to = to_dir.join(name);
    let users = users_of(&to);
    if !users.is_empty() && !force {
        bail!(
            "{} is loaded by {}: close the DAW (or remove Lockstep from its project) and run \
             `cargo xtask install` again, or pass --force to replace it anyway",
            to.display(),
            users.join(", ")
        );
    }
    std::fs::create_dir_all(to_dir).with_context(|| format!("creating {}", to_dir.display()))?;
    // Copy next to the target, then swap it in, so a failed copy never leaves half a bundle.
    let staging = to_dir.join(format!(".{}.installing", name.to_string_lossy()));
    remove(&staging)?;
    if from.is_dir() {
        copy_dir(from, &staging)?;
    } else {
        std::fs::copy(from, &staging).with_context(|| format!("copying {}", from.display()))?;
    }
    remove(&to).map_err(|e| locked(&to, e))?;
    std::fs::rename(&staging, &to).map_err(|e| locked(&to, e.into()))?;
    Ok(to)
}

fn locked(path: &Path, err: anyhow::Error) -> anyhow::Error {
    err.context(format!(
        "could not replace {}: if a DAW has it open, close the DAW and run again",
        path.display()
    ))
}

fn remove(path: &Path) -> Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)?;
    } else if path.exists() {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Copy the already built release bundles from `target/bundled/` into the two folders.
fn copy_bundles(clap_dir: &Path, vst3_dir: &Path, force: bool) -> Result<()> {
    let bundled = target_dir().join("bundled");
    let clap = install_one(&bundled.join("Lockstep.clap"), clap_dir, force)?;
    println!("installed CLAP: {}", clap.display());
    let vst3 = install_one(&bundled.join("Lockstep.vst3"), vst3_dir, force)?;
    println!("installed VST3: {}", vst3.display());
    Ok(())
}

/// Install the already built release bundles into `dest` (used by `xtask test`).
pub fn install_into(dest: &Path) -> Result<()> {
    copy_bundles(dest, dest, false)
}

/// Entry point.
pub fn main(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    bundle_release(&["lockstep"])?;
    let (clap_dir, vst3_dir) = match &options.dest {
        Some(dest) => (dest.clone(), dest.clone()),
        None => default_folders()?,
    };
    copy_bundles(&clap_dir, &vst3_dir, options.force)?;
    println!("rescan plug-ins in your DAW, then put Lockstep on the master track");
    Ok(())
}
