//! `cargo xtask test`: everything CI runs, from a fresh machine.
//!
//! 1. Install what the tests need (unless `--no-install`): Debian `tshark`, `liblo-tools`,
//!    `iproute2`, `util-linux`, `xvfb`, `xauth`, `gcc-mingw-w64-x86-64` and `ardour` when
//!    missing (as root), and a Python virtualenv in
//!    `target/peers-venv` with the real peers (aalink, pymidi, python-osc, websockets, zeroconf).
//! 2. `cargo fmt --check` and `cargo clippy --all-targets -- -D warnings`; then the other
//!    platforms: clippy for `x86_64-pc-windows-gnu`, `aarch64-apple-darwin` and
//!    `x86_64-apple-darwin` (Rust targets added with rustup, mingw-w64 from Debian), and the
//!    Windows bundles built, linked and checked.
//! 3. Bundle the debug allocation-checked build (`target/bundled-debug/`), the release build and
//!    the bench baseline (`target/bundled/`), and install into `target/install-check/`.
//! 4. Build every test, then run `cargo test --workspace --offline` inside a private network
//!    namespace with only loopback (multicast routed to it), under a virtual X server
//!    (`xvfb-run`) for the editor test. Nothing reaches a real network.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::build::{
    bundle_debug_alloc_checked, bundle_release, cargo, in_netns, is_root, run, target_dir,
};

/// Debian packages the tests use, with a command that proves each is there.
const DEBIAN: &[(&str, &str)] = &[
    ("tshark", "tshark"),
    ("liblo-tools", "oscdump"),
    ("iproute2", "ip"),
    ("util-linux", "unshare"),
    // The WAN lab's NAT routers (tests/src/wanlab.rs).
    ("nftables", "nft"),
    // The editor test opens the real editor on a virtual X server.
    ("xvfb", "xvfb-run"),
    ("xauth", "xauth"),
    // Links the Windows bundles (cross-built and checked, see platforms.rs).
    ("gcc-mingw-w64-x86-64", "x86_64-w64-mingw32-gcc"),
    // A real DAW: the VST3 test runs Ardour headless (`ardour7-lua`, Dummy backend).
    ("ardour", "ardour7-lua"),
    // The WAN lab's rendezvous broker and TURN relay in its `srv` namespace
    // (tests/src/wanlab/servers.rs); `turnutils_uclient` ships with coturn.
    ("coturn", "turnserver"),
    ("mosquitto", "mosquitto"),
    ("mosquitto-clients", "mosquitto_pub"),
];

/// The PyPI peers, pinned so every machine tests against the same peers.
const PYPI: &[&str] = &[
    "aalink==0.2.3",
    "pymidi==0.5.0",
    "python-osc==1.10.2",
    "websockets==15.0.1",
    "zeroconf==0.154.0",
];

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn install_debian() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: install them with \
             `sudo apt-get install {}` and run again",
            missing.join(" ")
        );
    }
    println!("xtask test: installing {missing:?}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn install_python_peers() -> Result<()> {
    let venv = target_dir().join("peers-venv");
    let python = venv.join("bin/python");
    let pinned_ok = python.exists()
        && Command::new(&python)
            .args(["-m", "pip", "freeze"])
            .output()
            .is_ok_and(|o| {
                let frozen = String::from_utf8_lossy(&o.stdout).to_lowercase();
                PYPI.iter().all(|p| frozen.contains(&p.to_lowercase()))
            });
    if pinned_ok {
        return Ok(());
    }
    println!("xtask test: creating {} with {PYPI:?}", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PYPI))
}

/// Run `cmd`, echoing its output, and add up cargo's `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the test suite")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the suite failed ({status}): {passed} passed, {failed} failed");
    }
    Ok((passed, failed))
}

fn stage(name: &str, started: Instant, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    println!("xtask test: {name}");
    f().with_context(|| format!("xtask test: {name} failed"))?;
    println!(
        "xtask test: {name} done in {:.1} s (total {:.1} s)",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Entry point.
pub fn main(args: &[String]) -> Result<()> {
    let mut no_install = false;
    for arg in args {
        match arg.as_str() {
            "--no-install" => no_install = true,
            other => bail!("unknown option `{other}` (test takes --no-install)"),
        }
    }
    let started = Instant::now();
    let mut totals = (0, 0);
    if !no_install {
        stage("install test peers", started, || {
            install_debian()?;
            install_python_peers()?;
            crate::platforms::install_targets()
        })?;
    } else {
        let missing = crate::platforms::missing_targets();
        if !missing.is_empty() {
            bail!(
                "Rust targets {missing:?} are missing: run `cargo xtask test` once without \
                 --no-install, or `rustup target add {}`",
                missing.join(" ")
            );
        }
    }
    stage("format and lint", started, || {
        run(&mut cargo(&["fmt", "--all", "--check"]))?;
        run(&mut cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    stage(
        "other platforms: clippy for Windows and macOS, Windows bundles",
        started,
        || {
            crate::platforms::lint_targets()?;
            crate::platforms::windows_bundles()
        },
    )?;
    stage(
        "bundle debug (allocation-checked) and release",
        started,
        || {
            bundle_debug_alloc_checked()?;
            bundle_release(&["lockstep", "lockstep-bench-baseline"])?;
            crate::install::install_into(&target_dir().join("install-check"))
        },
    )?;
    stage("build tests", started, || {
        run(&mut cargo(&["test", "--workspace", "--no-run", "--quiet"]))
    })?;
    stage(
        "run the suite in a private network namespace",
        started,
        || {
            let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // Under a virtual X server (Xvfb, inside the namespace) for the editor test.
            let mut unshare = in_netns(&[
                "xvfb-run",
                "--auto-servernum",
                "--server-args=-screen 0 1280x1024x24 -nolisten tcp",
                cargo_bin.as_str(),
                "test",
                "--workspace",
                "--offline",
                "--no-fail-fast",
            ]);
            let (passed, failed) = run_counting(&mut unshare)?;
            totals = (passed, failed);
            if passed == 0 {
                bail!("the suite ran no test");
            }
            Ok(())
        },
    )?;
    println!(
        "xtask test: all passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // One closing line for the whole suite, last (cargo prints one per test binary, the last
    // of which may be an empty doc-test run).
    println!("suite: {} passed, {} failed", totals.0, totals.1);
    Ok(())
}
