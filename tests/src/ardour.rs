//! Ardour 7 headless as a test host: `ardour7-lua` (Ardour's Lua session tool, "None (Dummy)"
//! backend) running `tests/peers/ardour_session.lua`, with a private home, plugin folder and
//! session folder. Used by the VST3 test and the Ardour CPU bench. Run it only inside the
//! private network namespace: the plugin opens sockets when Ardour activates it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};

use crate::bundle::target_dir;
use crate::harness::peer_script;

/// Ardour's Lua session tool (Debian `ardour`).
const ARDOUR_LUA: &str = "ardour7-lua";
/// Ardour's VST3 scanner, which writes the cache `ardour7-lua` reads.
const SCANNER: &str = "/usr/lib/ardour7/ardour-vst3-scanner";

/// A private home, plugin folder and session folder for Ardour, removed at the end.
pub struct Place {
    root: PathBuf,
}

impl Place {
    /// A fresh place under the target directory.
    pub fn new() -> Result<Self> {
        let root = target_dir().join(format!("ardour-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home"))?;
        std::fs::create_dir_all(root.join("vst3"))?;
        Ok(Self { root })
    }

    /// The environment Ardour runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        let home = self.root.join("home");
        let s = |p: &Path| p.display().to_string();
        vec![
            ("HOME".into(), s(&home)),
            ("XDG_CONFIG_HOME".into(), s(&home.join(".config"))),
            ("XDG_CACHE_HOME".into(), s(&home.join(".cache"))),
            ("XDG_DATA_HOME".into(), s(&home.join(".local/share"))),
            ("VST3_PATH".into(), s(&self.root.join("vst3"))),
            ("LOCKSTEP_SESSION_DIR".into(), s(&self.root.join("session"))),
        ]
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Put the bundle where Ardour looks and write the scanner's cache. The module is back-dated:
/// a cache no newer than the module counts as stale, and a copy scanned in the same second is.
pub fn install_and_scan(place: &Place, bundle: &Path) -> Result<()> {
    let installed = place.root.join("vst3/Lockstep.vst3");
    copy_dir(bundle, &installed).context("copying the VST3 bundle")?;
    let module = installed.join("Contents/x86_64-linux/Lockstep.so");
    std::fs::File::options()
        .write(true)
        .open(&module)?
        .set_modified(SystemTime::now() - Duration::from_secs(60))?;
    let status = Command::new(SCANNER)
        .args(["-f", "-q"])
        .arg(installed.canonicalize()?)
        .envs(place.env())
        .env("LD_LIBRARY_PATH", "/usr/lib/ardour7")
        .status()
        .context("running ardour-vst3-scanner (run `cargo xtask test` to install Ardour)")?;
    ensure!(status.success(), "ardour-vst3-scanner failed: {status}");
    Ok(())
}

/// One `ardour7-lua` process running the driver script.
pub struct Ardour {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Every line it printed so far.
    pub seen: Vec<String>,
}

impl Ardour {
    /// Start it on `place`'s session: `open` is `create` or `load`; returns after `READY`.
    pub fn start(place: &Place, open: &str) -> Result<Self> {
        let mut child = Command::new(ARDOUR_LUA)
            .arg(peer_script("ardour_session.lua"))
            .envs(place.env())
            .env("LOCKSTEP_OPEN", open)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ardour7-lua (run `cargo xtask test` to install Ardour)")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take().context("stdin")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ardour = Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        ardour.until(&["READY"], Duration::from_secs(60))?;
        Ok(ardour)
    }

    /// Lines until one starts with one of `keys` (Ardour's own noise is skipped); `ERR` and
    /// `FATAL` fail.
    pub fn until(&mut self, keys: &[&str], timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("Ardour did not answer {keys:?}; it printed {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "Ardour exited waiting for {keys:?}; it printed {:?}",
                        self.seen
                    )
                }
            };
            self.seen.push(line.clone());
            let key = line.split(' ').next().unwrap_or_default();
            if key == "ERR" || key == "FATAL" {
                bail!("Ardour: {line}");
            }
            if keys.contains(&key) {
                return Ok(line);
            }
        }
    }

    /// Send one command and wait for a line starting with one of `keys`.
    pub fn cmd(&mut self, command: &str, keys: &[&str]) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        self.until(keys, Duration::from_secs(30))
    }

    /// `(index, name)` of every parameter.
    pub fn params(&mut self) -> Result<Vec<(usize, String)>> {
        writeln!(self.stdin, "PARAMS")?;
        self.stdin.flush()?;
        let mut params = Vec::new();
        loop {
            let line = self.until(&["PARAM", "PARAMS_END"], Duration::from_secs(10))?;
            if line.starts_with("PARAMS_END") {
                return Ok(params);
            }
            // PARAM <index> <value> <lower> <upper> <name with spaces>
            let mut parts = line.splitn(6, ' ');
            let index = parts.nth(1).context("index")?.parse()?;
            let name = parts.nth(3).context("name")?.to_owned();
            params.push((index, name));
        }
    }

    /// The value Ardour's Lua API reads for parameter `index` (plain units).
    pub fn get(&mut self, index: usize) -> Result<f64> {
        let line = self.cmd(&format!("GET {index}"), &["VALUE"])?;
        Ok(line.rsplit(' ').next().context("value")?.parse()?)
    }

    /// Quit and wait for the process to end.
    pub fn quit(mut self) -> Result<()> {
        self.cmd("QUIT", &["BYE"])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "ardour7-lua exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("ardour7-lua did not exit after QUIT")
    }
}

impl Drop for Ardour {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ardour {
    /// The process id (the wrapper script execs, so this is Ardour's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
