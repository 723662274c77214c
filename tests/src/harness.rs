//! Helpers shared by the end-to-end tests in `tests/tests/`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use lockstep_net::status::ExportedStatus;

use crate::status::StatusProbe;

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Serialise tests inside one test binary. The network worker is process-global, so a test that
/// asserts on the status (instance list, thread count) must be the only one with live instances.
pub fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Poll the status until `done` holds, for at most 5 seconds.
pub fn wait_for(
    probe: &StatusProbe,
    what: &str,
    done: impl Fn(&ExportedStatus) -> bool,
) -> Result<ExportedStatus> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = probe.read()?;
        if done(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}; last status: {status:#?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Wait until the worker has drained everything the single live instance pushed.
pub fn wait_drained(probe: &StatusProbe) -> Result<ExportedStatus> {
    wait_for(probe, "the worker to drain the ring", |s| {
        s.worker.instances.len() == 1
            && s.worker.instances[0].events_drained == s.worker.instances[0].events_pushed
    })
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi - lo) + 1;
        lo + u32::try_from(self.next_u64() % span).unwrap_or(0)
    }

    /// An arbitrary f32 bit pattern: normals, subnormals, zeros, infinities and NaNs, so a
    /// pass-through that touches the samples at all cannot stay bit-exact.
    pub fn any_f32(&mut self) -> f32 {
        f32::from_bits((self.next_u64() >> 32) as u32)
    }
}

/// The Linux VST3 module inside `bundle` (`Lockstep.vst3`) loads and exports the three entry
/// points a VST3 host looks up.
pub fn check_vst3_module(bundle: &Path) -> Result<()> {
    let so = bundle.join("Contents/x86_64-linux/Lockstep.so");
    // SAFETY: our own plugin library; symbols are only looked up, never called.
    let library = unsafe { libloading::Library::new(&so) }
        .with_context(|| format!("dlopen {}", so.display()))?;
    for symbol in [
        &b"GetPluginFactory\0"[..],
        b"ModuleEntry\0",
        b"ModuleExit\0",
    ] {
        // SAFETY: looking a symbol up does not call it.
        let found = unsafe { library.get::<unsafe extern "C" fn()>(symbol) };
        ensure!(found.is_ok(), "{} missing", String::from_utf8_lossy(symbol));
    }
    Ok(())
}

/// The CLAP id of a parameter: nice-plug's hash of its string id (31 × h + byte, top bit
/// cleared for VST3). Written out here, independently of nice-plug, so a change of the mapping
/// upstream fails the frozen-parameter test instead of silently breaking automation.
pub fn clap_param_id(id: &str) -> u32 {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        & 0x7fff_ffff
}

/// The Python of the peers' virtualenv that `cargo xtask test` installs
/// (`LOCKSTEP_PEERS_VENV` overrides `target/peers-venv`).
pub fn peers_python() -> std::path::PathBuf {
    std::env::var_os("LOCKSTEP_PEERS_VENV")
        .map_or_else(
            || crate::bundle::target_dir().join("peers-venv"),
            std::path::PathBuf::from,
        )
        .join("bin/python")
}

/// A peer script in `tests/peers/`.
pub fn peer_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// A real peer: a Python script from `tests/peers/` run with the peers' virtualenv, printing
/// one JSON object per line; every line is kept. Killed when dropped.
pub struct ScriptPeer {
    child: std::process::Child,
    name: String,
    lines: std::sync::Arc<Mutex<Vec<serde_json::Value>>>,
}

impl ScriptPeer {
    /// Start `script` with `args`.
    pub fn spawn(script: &str, args: &[String]) -> Result<Self> {
        Self::spawn_with_env(script, args, &[])
    }

    /// [`ScriptPeer::spawn`] with extra environment variables.
    pub fn spawn_with_env(script: &str, args: &[String], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_from(
            std::process::Command::new(peers_python()),
            script,
            args,
            env,
        )
    }

    /// [`ScriptPeer::spawn_with_env`] inside the named network namespace (a WAN lab's).
    pub fn spawn_in_netns(
        netns: &str,
        script: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", netns]).arg(peers_python());
        Self::spawn_from(command, script, args, env)
    }

    /// Run `script` with `command` (the Python, or something that runs it).
    fn spawn_from(
        mut command: std::process::Command,
        script: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .arg(peer_script(script))
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("starting {script} (run `cargo xtask test` to install the peers)")
            })?;
        let stdout = child.stdout.take().context("stdout")?;
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Ok(mut lines) = sink.lock()
                {
                    lines.push(value);
                }
            }
        });
        Ok(Self {
            child,
            name: script.to_owned(),
            lines,
        })
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Wait up to 20 s until `done` holds for the lines printed so far; returns them (generous:
    /// a Python peer starting on a loaded 2-core machine has been seen to take over 10 s).
    pub fn wait(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.lines();
            if done(&lines) {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; {} printed {lines:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ScriptPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Now on `CLOCK_REALTIME` in ns: the clock the kernel's receive timestamps (`SO_TIMESTAMPNS`)
/// use.
pub fn realtime_ns() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_nanos() as f64)
}

/// The MIDI messages `pymidi_peer.py` printed: (status byte, arrival µs on
/// `CLOCK_MONOTONIC_RAW`), in order.
pub fn pymidi_arrivals(lines: &[serde_json::Value]) -> Vec<(u64, f64)> {
    lines
        .iter()
        .filter(|v| v["event"] == "midi")
        .filter_map(|v| Some((v["status"].as_u64()?, v["t"].as_f64()?)))
        .collect()
}

/// Wait until `deadline` the way Lockstep's send path does: park until
/// [`SPIN`](lockstep_net::worker::sender::SPIN) before it, spin the rest; returns when it woke.
pub fn wait_like_the_send_path(deadline: Instant) -> Instant {
    let spin = lockstep_net::worker::sender::SPIN;
    loop {
        let now = Instant::now();
        if deadline > now + spin {
            std::thread::park_timeout(deadline - now - spin);
        } else {
            break;
        }
    }
    let mut now = Instant::now();
    while now < deadline {
        std::hint::spin_loop();
        now = Instant::now();
    }
    now
}

/// Resident memory of process `pid`, KiB (0 if it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (ns on a CPU, from `schedstat`) and context switches (voluntary + involuntary,
/// from `status`) of the threads of process `pid` (a number or `self`) named one of `names`,
/// summed per name.
pub fn thread_cost(pid: &str, names: &[&str]) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.filter_map(Result::ok) {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let comm = comm.trim_end().to_owned();
        if !names.contains(&comm.as_str()) {
            continue;
        }
        let cpu_ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let switches: u64 = std::fs::read_to_string(path.join("status"))
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        let entry = out.entry(comm).or_insert((0, 0));
        entry.0 += cpu_ns;
        entry.1 += switches;
    }
    out
}
