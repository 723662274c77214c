//! Lockstep's VST3 in a real DAW: Ardour 7 headless (`ardour7-lua`, the "None (Dummy)" backend)
//! inside the private namespace, driven by `tests/peers/ardour_session.lua`.
//!
//! Ardour scans the allocation-checked `Lockstep.vst3` (its scanner writes the cache
//! `ardour7-lua` reads), puts it on the master bus of a new session and rolls for over 10 s.
//! A python-osc controller moves parameters: Ardour's own Lua API reads the new values back
//! (VST3 output parameter changes reached the host), bad input comes back on
//! `/lockstep/error`, and a value set in Ardour reaches the plugin's OSCQuery tree. The session
//! is saved, Ardour quits (the network services let go of their ports) and a fresh Ardour loads
//! it: the values survived and the services bind again. Any allocation inside `process()` —
//! nice-plug's or our layer's — aborts Ardour and fails the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use lockstep_host::bundle::{Build, target_dir};
use lockstep_host::harness::{ScriptPeer, exclusive, peer_script};

const ARDOUR_LUA: &str = "ardour7-lua";
const SCANNER: &str = "/usr/lib/ardour7/ardour-vst3-scanner";
/// Lockstep's default ports (a fresh instance in a new session).
const OSC_PORT: u16 = 8000;
const OSCQUERY_PORT: u16 = 8001;
const CLIENT_PORT: u16 = 9310;

/// A private home, plugin folder and session folder for Ardour, removed at the end.
struct Place {
    root: PathBuf,
}

impl Place {
    fn new() -> Result<Self> {
        let root = target_dir().join(format!("ardour-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home"))?;
        std::fs::create_dir_all(root.join("vst3"))?;
        Ok(Self { root })
    }

    fn env(&self) -> Vec<(String, String)> {
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
fn install_and_scan(place: &Place, bundle: &Path) -> Result<()> {
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
struct Ardour {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Ardour {
    fn start(place: &Place, open: &str) -> Result<Self> {
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
    fn until(&mut self, keys: &[&str], timeout: Duration) -> Result<String> {
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

    fn cmd(&mut self, command: &str, keys: &[&str]) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        self.until(keys, Duration::from_secs(30))
    }

    /// `(index, name)` of every parameter.
    fn params(&mut self) -> Result<Vec<(usize, String)>> {
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
    fn get(&mut self, index: usize) -> Result<f64> {
        let line = self.cmd(&format!("GET {index}"), &["VALUE"])?;
        Ok(line.rsplit(' ').next().context("value")?.parse()?)
    }

    /// Quit and wait for the process to end.
    fn quit(mut self) -> Result<()> {
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

fn index_of(params: &[(usize, String)], name: &str) -> Result<usize> {
    params
        .iter()
        .find(|(_, n)| n == name)
        .map(|(i, _)| *i)
        .with_context(|| format!("no parameter {name:?} in {params:?}"))
}

/// The value the plugin's own OSCQuery tree shows at `path`, or an error when nothing
/// answers on its port.
fn oscquery_value(path: &str) -> Result<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", OSCQUERY_PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no HTTP body")?;
    let node: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("OSCQuery answered {response:?}"))?;
    node["VALUE"][0]
        .as_f64()
        .with_context(|| format!("no value in {node}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

#[test]
fn ardour_loads_the_vst3_takes_osc_control_and_keeps_it_across_a_reload() -> Result<()> {
    let _guard = exclusive();
    let place = Place::new()?;
    install_and_scan(&place, &Build::DebugAllocChecked.vst3_path())?;

    let mut ardour = Ardour::start(&place, "create")?;
    let plugin = ardour
        .seen
        .iter()
        .find(|l| l.starts_with("PLUGIN "))
        .cloned()
        .context("no PLUGIN line")?;
    ensure!(plugin == "PLUGIN 26 Lockstep", "{plugin}");
    let params = ardour.params()?;
    let macro_1 = index_of(&params, "Macro 1")?;
    let macro_2 = index_of(&params, "Macro 2")?;
    let offset = index_of(&params, "Clock Offset")?;
    ensure!(ardour.get(macro_1)? == 0.0 && ardour.get(offset)? == 0.0);

    // The network services came up inside Ardour.
    wait_until("the plugin's OSCQuery server", || {
        oscquery_value("/lockstep/param/mac_1").is_ok()
    })?;
    let rolling = ardour.cmd("ROLL", &["ROLLING"])?;
    ensure!(rolling.starts_with("ROLLING"), "{rolling}");

    // A python-osc controller moves two parameters and sends three bad messages.
    let client = ScriptPeer::spawn(
        "osc_client.py",
        &[
            OSC_PORT.to_string(),
            CLIENT_PORT.to_string(),
            "2".into(),
            r#"["/lockstep/param/mac_1", "f", 0.25]"#.into(),
            r#"["/lockstep/param/clk_ofs", "f", 10.0]"#.into(),
            r#"["/lockstep/param/clk_ofs", "f", 999.0]"#.into(),
            r#"["/lockstep/param/nothing", "i", 1]"#.into(),
            r#"["/lockstep/param/mac_2", "s", "loud"]"#.into(),
        ],
    )?;
    let replies = client.wait("three error replies", |lines| {
        lines
            .iter()
            .filter(|l| l["address"] == "/lockstep/error")
            .count()
            >= 3
    })?;
    let errors: Vec<String> = replies
        .iter()
        .filter(|l| l["address"] == "/lockstep/error")
        .map(|l| l["args"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    for address in [
        "/lockstep/param/clk_ofs",
        "/lockstep/param/nothing",
        "/lockstep/param/mac_2",
    ] {
        ensure!(
            errors.iter().any(|e| e == address),
            "no error for {address}: {errors:?}"
        );
    }

    // Ardour's own view of the plugin moved (VST3 output parameter changes), in plain units.
    wait_until("Ardour to read Macro 1 = 0.25", || {
        ardour.get(macro_1).is_ok_and(|v| (v - 0.25).abs() < 1e-6)
    })?;
    let ms = ardour.get(offset)?;
    ensure!((ms - 10.0).abs() < 0.05, "Clock Offset in Ardour: {ms}");
    // And the plugin applied them (its own OSCQuery tree reads its parameters).
    let applied = oscquery_value("/lockstep/param/mac_1")?;
    ensure!((applied - 0.25).abs() < 1e-6, "plugin's Macro 1: {applied}");
    ensure!(
        ardour.get(macro_2)? == 0.0,
        "a refused value changed Macro 2"
    );

    // The other way: a value set in Ardour reaches the plugin and its controllers.
    ardour.cmd(&format!("SET {macro_2} 0.5"), &["VALUE"])?;
    wait_until("the plugin to see Macro 2 = 0.5 from Ardour", || {
        oscquery_value("/lockstep/param/mac_2").is_ok_and(|v| (v - 0.5).abs() < 1e-6)
    })?;

    // Keep rolling past 10 s in all.
    let mut sample = 0u64;
    while sample < 10 * 48_000 {
        let waited = ardour.cmd("WAIT 2", &["WAITED"])?;
        let parts: Vec<&str> = waited.split(' ').collect();
        ensure!(parts.get(2) == Some(&"1"), "stopped rolling: {waited}");
        sample = parts.get(3).context("sample")?.parse()?;
    }
    ardour.cmd("STOP", &["STOPPED"])?;
    ardour.cmd("SAVE", &["SAVED"])?;
    ardour.quit()?;
    // The services let go of their ports with the plugin.
    ensure!(
        oscquery_value("/lockstep/param/mac_1").is_err(),
        "OSCQuery still answers after Ardour quit"
    );
    std::net::UdpSocket::bind(("127.0.0.1", OSC_PORT))
        .context("the OSC port is still taken after Ardour quit")?;

    // A fresh Ardour loads the saved session: values survived, services bind again.
    let mut ardour = Ardour::start(&place, "load")?;
    let (m1, m2, ms) = (
        ardour.get(macro_1)?,
        ardour.get(macro_2)?,
        ardour.get(offset)?,
    );
    ensure!(
        (m1 - 0.25).abs() < 1e-6 && (m2 - 0.5).abs() < 1e-6 && (ms - 10.0).abs() < 0.05,
        "after reload: Macro 1 {m1}, Macro 2 {m2}, Clock Offset {ms}"
    );
    wait_until("OSCQuery after the reload", || {
        oscquery_value("/lockstep/param/mac_1").is_ok_and(|v| (v - 0.25).abs() < 1e-6)
    })?;
    ardour.quit()?;
    Ok(())
}
