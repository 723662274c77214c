//! Real rendezvous and relay servers in the lab's `srv` namespace (198.51.100.2): a mosquitto
//! MQTT broker (spec `wan-and-receive.md` §8.2) and a coturn TURN relay with REST-style
//! credentials (§5.3, §7), for the remote-session integration tests.
//!
//! Each server runs in the foreground under `ip netns exec <srv>` (which execs it, so the child
//! *is* the server), with its config, pid file, database and log in a private temporary
//! directory. Starting waits until the server listens inside `srv`, up to [`START_TIMEOUT`];
//! the guard ([`Broker`], [`Turn`]) kills and reaps the server and removes the directory when
//! dropped. Guards borrow the [`WanLab`], so the compiler makes them go before the lab (and its
//! namespaces) does.

use std::fs::{self, File};
use std::marker::PhantomData;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
pub use lockstep_net::proto::remote::turn_rest::turn_rest_credentials;

use super::{Ns, WanLab};

/// How long a server may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// The broker's MQTT port (TCP) on 198.51.100.2.
pub const BROKER_PORT: u16 = 1883;
/// The relay's STUN/TURN port (UDP and TCP) on 198.51.100.2.
pub const TURN_PORT: u16 = 3478;
/// The relay's realm.
pub const TURN_REALM: &str = "lockstep.test";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A running mosquitto broker listening on 198.51.100.2:1883 (anonymous, no persistence).
/// Dropping it kills the broker.
#[derive(Debug)]
pub struct Broker<'lab> {
    server: Server<'lab>,
}

impl Broker<'_> {
    /// Everything the broker logged so far (`log_type all`, connection messages).
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// A running coturn relay on 198.51.100.2:3478 (UDP + TCP), realm [`TURN_REALM`], relay ports
/// 49152–49200, verbose log. Dropping it kills the relay.
#[derive(Debug)]
pub struct Turn<'lab> {
    server: Server<'lab>,
    /// The `static-auth-secret`, for [`Turn::credentials`].
    secret: String,
}

impl Turn<'_> {
    /// Everything the relay logged so far (`verbose`: one line per request and its outcome).
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// REST credentials for `user`, valid for `valid_for` from now.
    pub fn credentials(&self, user: &str, valid_for: Duration) -> (String, String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        turn_rest_credentials(&self.secret, user, (now + valid_for).as_secs())
    }
}

impl WanLab {
    /// Start mosquitto in `srv` (spec §8.2) and wait until it listens on 198.51.100.2:1883.
    pub fn start_broker(&self) -> Result<Broker<'_>> {
        let mut server = Server::create(self, "mosquitto")?;
        // mosquitto buffers a redirected stdout until exit, but flushes its log file per line.
        // Started as root it drops to the `mosquitto` user before opening the log, so the file
        // is made beforehand and writable by it (the directory itself stays root's).
        let log = server.log_path();
        File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        fs::set_permissions(&log, fs::Permissions::from_mode(0o666))?;
        let config = format!(
            "\
listener {BROKER_PORT} 198.51.100.2
allow_anonymous true
persistence false
log_dest file {}
log_type all
connection_messages true
",
            log.display()
        );
        server.spawn(self, &config)?;
        server.wait_listening(self, "-lnt", BROKER_PORT)?;
        Ok(Broker { server })
    }

    /// Start coturn in `srv` (spec §7) with `static-auth-secret = secret` and wait until it
    /// listens on 198.51.100.2:3478 (UDP).
    pub fn start_turn(&self, secret: &str) -> Result<Turn<'_>> {
        if secret.is_empty() || secret.contains(['\n', '\r']) {
            bail!("a TURN secret must be one non-empty line");
        }
        let mut server = Server::create(self, "turnserver")?;
        // Pid file and user database in the private directory, not /var.
        let dir = server.dir.display();
        let config = format!(
            "\
listening-ip=198.51.100.2
relay-ip=198.51.100.2
listening-port={TURN_PORT}
realm={TURN_REALM}
use-auth-secret
static-auth-secret={secret}
fingerprint
no-tls
no-dtls
min-port=49152
max-port=49200
no-cli
log-file=stdout
simple-log
verbose
pidfile={dir}/turnserver.pid
userdb={dir}/turndb
"
        );
        server.spawn(self, &config)?;
        server.wait_listening(self, "-lnu", TURN_PORT)?;
        Ok(Turn {
            server,
            secret: secret.to_owned(),
        })
    }
}

/// One server process in `srv` and its directory.
#[derive(Debug)]
struct Server<'lab> {
    /// `mosquitto` or `turnserver`: the program, and the stem of its file names.
    program: &'static str,
    /// The server itself (`ip netns exec` execs it); `None` before spawning and once reaped.
    child: Option<Child>,
    /// Config, log, pid file and database; removed on drop.
    dir: PathBuf,
    /// The guard must not outlive the lab whose namespace the server runs in.
    _lab: PhantomData<&'lab WanLab>,
}

impl<'lab> Server<'lab> {
    /// Make the private directory; nothing runs yet.
    fn create(lab: &'lab WanLab, program: &'static str) -> Result<Self> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{}{program}-{n}", lab.prefix()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            program,
            child: None,
            dir,
            _lab: PhantomData,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join(format!("{}.conf", self.program))
    }

    /// mosquitto's log file (`log_dest file`).
    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.program))
    }

    /// The child's stdout and stderr (coturn's `log-file=stdout`).
    fn output_path(&self) -> PathBuf {
        self.dir.join(format!("{}.out", self.program))
    }

    /// Write `config` and run `<program> -c <config>` in `srv`, stdout and stderr to a file.
    fn spawn(&mut self, lab: &WanLab, config: &str) -> Result<()> {
        let (config_path, log_path) = (self.config_path(), self.output_path());
        fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = lab.command(Ns::Srv, self.program);
        command
            .arg("-c")
            .arg(&config_path)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// The log file followed by the child's output (either may be absent).
    fn log(&self) -> String {
        let mut log = fs::read_to_string(self.log_path()).unwrap_or_default();
        log.push_str(&fs::read_to_string(self.output_path()).unwrap_or_default());
        log
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Poll `ss <flags>` in `srv` until 198.51.100.2:`port` is listed, the server exits, or
    /// [`START_TIMEOUT`] passes.
    fn wait_listening(&mut self, lab: &WanLab, flags: &str, port: u16) -> Result<()> {
        let want = format!("198.51.100.2:{port} ");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if lab.exec(Ns::Srv, "ss", &[flags])?.contains(&want) {
                return Ok(());
            }
            let child = self.child.as_mut().context("server not spawned")?;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening on {}; log tail:\n{}",
                    self.program,
                    want.trim_end(),
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not listening on {} after {START_TIMEOUT:?}; log tail:\n{}",
                    self.program,
                    want.trim_end(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way reap it so nothing is left running.
            let _ = child.kill();
            if let Err(e) = child.wait() {
                eprintln!("wanlab: reaping {}: {e}", self.program);
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("wanlab: removing {}: {e}", self.dir.display());
        }
    }
}
