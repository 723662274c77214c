//! An emulated WAN for the "remote studios through home routers" tests: two home LANs behind
//! NAT routers, a shared "internet" bridge and a server, each in its own named network
//! namespace (spec `wan-and-receive.md` §6.2–6.3).
//!
//! ```text
//! hostA 203.0.113.2  ─ lan0|natA|wan0 198.51.100.11 ─ vA ┐
//!                                                  inet ─ tun0 (emulator thread)
//! hostB 203.0.113.66 ─ lan0|natB|wan0 198.51.100.12 ─ vB ┤
//!                                 srv 198.51.100.2 ─ vS ┘
//! ```
//!
//! `inet` routes instead of bridging: proxy ARP on `vA`/`vB`/`vS` answers for the other
//! 198.51.100.0/24 addresses, a policy rule sends everything arriving on them into `tun0`, and
//! the emulator ([`emu`]) writes each packet back after its delay (or drops it), so `inet`'s
//! main table delivers it. One-way delay is per access link: a packet between hostA and srv
//! takes `delay_a_ms`, between the hosts `delay_a_ms + delay_b_ms` (spec §6.4).
//!
//! Network safety: only documentation ranges (198.51.100.0/24, 203.0.113.0/24) are used, and
//! every namespace is created *inside* the private namespace the suite runs in, so nothing the
//! lab sends can leave it. `ip netns add` leaves a mount under `/run/netns`, so [`WanLab`]
//! stops the emulator and deletes every namespace it made when dropped (also while a test
//! panics) and checks that none is left. Names carry the process id and a counter so parallel
//! labs never collide.
//!
//! NAT behaviour (RFC 4787 terms): [`Nat::Home`] is Linux `masquerade` (keeps the source port
//! when free, so endpoint-independent mapping) behind a stateful forward chain (address- and
//! port-dependent filtering), with short UDP timers (30 s, answered or not, as many home
//! routers keep). [`Nat::Symmetric`] adds `fully-random`, a new port per destination.
//! [`LabConfig::forward_b`] forwards a UDP port range on B's router to hostB, as a studio
//! does for its AppleMIDI ports. Both routers drop unsolicited WAN traffic addressed to
//! themselves, as home routers do: otherwise the first hole-punching packet would create a
//! conntrack entry on the peer's router that steals the very port its host is about to use.
//!
//! Real servers in `srv` (`wanlab/servers.rs`): [`WanLab::start_broker`] (mosquitto) and
//! [`WanLab::start_turn`] (coturn) return guards that borrow the lab, so they are dropped (the
//! server killed and reaped) before the lab deletes the namespace.

mod emu;
mod servers;

pub use emu::EmuStats;
pub use servers::{
    BROKER_PORT, Broker, START_TIMEOUT, TURN_PORT, TURN_REALM, Turn, turn_rest_credentials,
};

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail, ensure};
use nix::sched::{CloneFlags, setns};

/// How a home router translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// `masquerade`: endpoint-independent mapping, address- and port-dependent filtering.
    Home,
    /// `masquerade fully-random`: a new mapped port per destination (symmetric NAT).
    Symmetric,
    /// Plain routing, no translation and no filtering: the baseline.
    None,
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct LabConfig {
    /// The router in front of hostA.
    pub nat_a: Nat,
    /// The router in front of hostB.
    pub nat_b: Nat,
    /// One-way delay of studio A's access link (router A ↔ inet), ms; 0 = none.
    pub delay_a_ms: u32,
    /// One-way delay of studio B's access link, ms; 0 = none.
    pub delay_b_ms: u32,
    /// Probability that a packet crossing inet is lost, parts per million.
    pub loss_ppm: u32,
    /// Each packet's delay across inet varies uniformly by up to this much either way, ms.
    pub jitter_ms: u32,
    /// Seed of the loss draws ([`crate::harness::Rng`]), so a run reproduces.
    pub seed: u64,
    /// UDP ports (first, last) B's router forwards from its WAN address to hostB (the same
    /// ports), as a studio forwards its AppleMIDI ports; None: nothing forwarded.
    pub forward_b: Option<(u16, u16)>,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            nat_a: Nat::Home,
            nat_b: Nat::Home,
            delay_a_ms: 0,
            delay_b_ms: 0,
            loss_ppm: 0,
            jitter_ms: 0,
            seed: 1,
            forward_b: None,
        }
    }
}

/// One of the lab's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// Studio A's computer, 203.0.113.2.
    HostA,
    /// Studio A's router: LAN 203.0.113.1, WAN 198.51.100.11.
    NatA,
    /// Studio B's computer, 203.0.113.66.
    HostB,
    /// Studio B's router: LAN 203.0.113.65, WAN 198.51.100.12.
    NatB,
    /// The "internet": routes between the routers and the server through the emulator.
    Inet,
    /// The public server (STUN/TURN/broker), 198.51.100.2.
    Srv,
}

impl Ns {
    /// Every namespace, in creation order.
    pub const ALL: [Ns; 6] = [Ns::HostA, Ns::NatA, Ns::HostB, Ns::NatB, Ns::Inet, Ns::Srv];

    fn suffix(self) -> &'static str {
        match self {
            Ns::HostA => "hostA",
            Ns::NatA => "natA",
            Ns::HostB => "hostB",
            Ns::NatB => "natB",
            Ns::Inet => "inet",
            Ns::Srv => "srv",
        }
    }
}

/// The server's address.
pub const SRV_IP: [u8; 4] = [198, 51, 100, 2];
/// hostA's LAN address.
pub const HOST_A_IP: [u8; 4] = [203, 0, 113, 2];
/// hostB's LAN address.
pub const HOST_B_IP: [u8; 4] = [203, 0, 113, 66];
/// Router A's WAN (public) address.
pub const WAN_A_IP: [u8; 4] = [198, 51, 100, 11];
/// Router B's WAN (public) address.
pub const WAN_B_IP: [u8; 4] = [198, 51, 100, 12];

/// The prefix every lab namespace name starts with.
pub const NAME_PREFIX: &str = "lswan";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A built lab. Thread-safe: `&WanLab` methods only run commands, open namespace files and
/// read the emulator's counters. Dropping it stops the emulator and deletes every namespace it
/// created.
#[derive(Debug)]
pub struct WanLab {
    /// `lswan<pid>-<counter>-`: unique per lab across parallel tests and test binaries.
    prefix: String,
    /// Namespaces created so far, so a half-built lab is cleaned up too.
    created: Vec<String>,
    /// The delay/loss thread; `None` until started and after Drop stopped it.
    emulator: Option<emu::Emulator>,
}

impl WanLab {
    /// Create the namespaces, links, addresses, routes and NAT rules.
    pub fn build(config: LabConfig) -> Result<Self> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let mut lab = Self {
            prefix: format!("{NAME_PREFIX}{}-{n}-", std::process::id()),
            created: Vec::new(),
            emulator: None,
        };
        for ns in Ns::ALL {
            let name = lab.name(ns);
            run(Command::new("ip").args(["netns", "add", &name]))?;
            lab.created.push(name);
        }
        lab.wire()?;
        lab.address()?;
        lab.route_inet(config)?;
        lab.load_nat(Ns::NatA, config.nat_a, None)?;
        lab.load_nat(Ns::NatB, config.nat_b, config.forward_b)?;
        Ok(lab)
    }

    /// The emulator's counters so far (zero before it started).
    pub fn emulator_stats(&self) -> EmuStats {
        self.emulator
            .as_ref()
            .map(emu::Emulator::stats)
            .unwrap_or_default()
    }

    /// The Lockstep frames the emulator saw cross from A's router to B's so far (whole IPv4
    /// packets; see [`emu`]).
    pub fn captured_a_to_b(&self) -> Vec<Vec<u8>> {
        self.emulator
            .as_ref()
            .map(emu::Emulator::captured)
            .unwrap_or_default()
    }

    /// Have the emulator write `packets` (whole IPv4 packets) onward from now, `gap` apart:
    /// an on-path attacker's replays and forgeries.
    pub fn inject(&self, packets: Vec<Vec<u8>>, gap: std::time::Duration) -> Result<()> {
        self.emulator
            .as_ref()
            .context("the emulator is not running")?
            .inject(packets, gap)
    }

    /// The namespace's name, for `ip netns exec` and `/run/netns/<name>`.
    pub fn name(&self, ns: Ns) -> String {
        format!("{}{}", self.prefix, ns.suffix())
    }

    /// The prefix of all of this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A command that runs `program` inside `ns` (`ip netns exec <name> program`).
    pub fn command(&self, ns: Ns, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name(ns), program]);
        command
    }

    /// Run `program args` inside `ns`; fails with the command and its stderr on a non-zero
    /// exit. Returns stdout.
    pub fn exec(&self, ns: Ns, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(ns, program).args(args))
    }

    /// Run `f` on a new thread named `wanlab-<ns>` whose network namespace is `ns`; sockets it
    /// creates stay in `ns` when handed back to other threads.
    pub fn spawn_in<T, F>(&self, ns: Ns, f: F) -> Result<JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name(ns));
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::Builder::new()
            .name(format!("wanlab-{}", ns.suffix()))
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
                f()
            })
            .context("spawning a lab thread")
    }

    /// A UDP socket bound to `addr` inside `ns`.
    pub fn udp_socket(&self, ns: Ns, addr: SocketAddr) -> Result<UdpSocket> {
        self.spawn_in(ns, move || {
            UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("lab thread for {ns:?} panicked"))?
    }

    fn wire(&self) -> Result<()> {
        let [host_a, nat_a, host_b, nat_b, inet, srv] = Ns::ALL.map(|ns| self.name(ns));
        for (host, nat, side) in [(&host_a, &nat_a, "vA"), (&host_b, &nat_b, "vB")] {
            // Created inside the router's namespace, so parallel labs never share a name.
            ip(
                nat,
                &[
                    "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", host,
                ],
            )?;
            ip(
                nat,
                &[
                    "link", "add", "wan0", "type", "veth", "peer", "name", side, "netns", &inet,
                ],
            )?;
            ip(&inet, &["link", "set", side, "up"])?;
            ip(nat, &["link", "set", "lan0", "up"])?;
            ip(nat, &["link", "set", "wan0", "up"])?;
            run(Command::new("ip").args([
                "netns",
                "exec",
                nat,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]))?;
        }
        ip(
            &srv,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "vS", "netns", &inet,
            ],
        )?;
        ip(&inet, &["link", "set", "vS", "up"])?;
        for name in [&host_a, &host_b, &srv] {
            ip(name, &["link", "set", "eth0", "up"])?;
        }
        for name in Ns::ALL.map(|ns| self.name(ns)) {
            ip(&name, &["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn address(&self) -> Result<()> {
        for (ns, dev, cidr) in [
            (Ns::HostA, "eth0", "203.0.113.2/26"),
            (Ns::NatA, "lan0", "203.0.113.1/26"),
            (Ns::NatA, "wan0", "198.51.100.11/24"),
            (Ns::HostB, "eth0", "203.0.113.66/26"),
            (Ns::NatB, "lan0", "203.0.113.65/26"),
            (Ns::NatB, "wan0", "198.51.100.12/24"),
            (Ns::Srv, "eth0", "198.51.100.2/24"),
        ] {
            ip(&self.name(ns), &["addr", "add", cidr, "dev", dev])?;
        }
        ip(
            &self.name(Ns::HostA),
            &["route", "add", "default", "via", "203.0.113.1"],
        )?;
        ip(
            &self.name(Ns::HostB),
            &["route", "add", "default", "via", "203.0.113.65"],
        )?;
        // A real server has a default route. Without one, coturn's relay sending an ICE check
        // to a peer's private host address failed at once (no route) and the allocation
        // stopped relaying: one relayed attempt in four never connected, here only.
        ip(
            &self.name(Ns::Srv),
            &["route", "add", "default", "dev", "eth0"],
        )?;
        Ok(())
    }

    /// Make `inet` a router whose forwarding path runs through the emulator's TUN.
    fn route_inet(&mut self, config: LabConfig) -> Result<()> {
        let inet = self.name(Ns::Inet);
        let mut sysctls = vec![
            "net.ipv4.ip_forward=1".to_owned(),
            // Packets re-enter from tun0 with sources routed via the veths.
            "net.ipv4.conf.all.rp_filter=0".to_owned(),
            "net.ipv4.conf.default.rp_filter=0".to_owned(),
            // No IPv6 on tun0 (router solicitations would only be noise for the emulator).
            "net.ipv6.conf.default.disable_ipv6=1".to_owned(),
        ];
        for side in ["vA", "vB", "vS"] {
            sysctls.push(format!("net.ipv4.conf.{side}.proxy_arp=1"));
            // Broadcast ARP requests are otherwise answered after a random delay ≤ 0.8 s.
            sysctls.push(format!("net.ipv4.neigh.{side}.proxy_delay=0"));
        }
        for sysctl in &sysctls {
            self.exec(Ns::Inet, "sysctl", &["-qw", sysctl])?;
        }
        // inet's own address: the source of its ARP requests on the veths.
        ip(&inet, &["addr", "add", "198.51.100.1/32", "dev", "lo"])?;
        for route in [
            "198.51.100.11/32 dev vA",
            "198.51.100.12/32 dev vB",
            "198.51.100.2/32 dev vS",
            "203.0.113.0/26 via 198.51.100.11 dev vA",
            "203.0.113.64/26 via 198.51.100.12 dev vB",
        ] {
            let mut args = vec!["route", "add"];
            args.extend(route.split(' '));
            ip(&inet, &args)?;
        }
        let link = emu::LinkConfig {
            delay_a_ms: config.delay_a_ms,
            delay_b_ms: config.delay_b_ms,
            loss_ppm: config.loss_ppm,
            jitter_ms: config.jitter_ms,
            seed: config.seed,
        };
        self.emulator = Some(emu::Emulator::start(&format!("/run/netns/{inet}"), link)?);
        let tun = emu::TUN_NAME;
        self.exec(
            Ns::Inet,
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{tun}.rp_filter=0")],
        )?;
        ip(&inet, &["link", "set", tun, "up"])?;
        ip(
            &inet,
            &["route", "add", "default", "dev", tun, "table", "100"],
        )?;
        for side in ["vA", "vB", "vS"] {
            ip(&inet, &["rule", "add", "iif", side, "lookup", "100"])?;
        }
        Ok(())
    }

    fn load_nat(&self, ns: Ns, nat: Nat, forward: Option<(u16, u16)>) -> Result<()> {
        let [a, b, c, d] = HOST_B_IP;
        let host_b = format!("{a}.{b}.{c}.{d}");
        let forward = forward.map(|ports| (ports, host_b.as_str()));
        let Some(ruleset) = nat_ruleset(nat, forward) else {
            return Ok(());
        };
        let mut command = self.command(ns, "nft");
        command.args(["-f", "-"]);
        run_with_stdin(&mut command, &ruleset)
    }

    /// Namespaces whose names start with `prefix` (see [`WanLab::prefix`]) that are still
    /// listed by `ip netns list` or present in `/run/netns`.
    pub fn leftovers(prefix: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        let listed = run(Command::new("ip").args(["netns", "list"]))?;
        for line in listed.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(prefix) {
                found.push(format!("ip netns list: {name}"));
            }
        }
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix) {
                    found.push(format!("/run/netns/{name}"));
                }
            }
        }
        Ok(found)
    }
}

impl Drop for WanLab {
    fn drop(&mut self) {
        // Joins the thread and closes the TUN before its namespace goes.
        self.emulator = None;
        for name in self.created.drain(..).rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", &name])) {
                eprintln!("wanlab: {e:#}");
            }
        }
        match Self::leftovers(&self.prefix) {
            Ok(left) if left.is_empty() => {}
            Ok(left) => eprintln!("wanlab: namespaces left behind: {left:?}"),
            Err(e) => eprintln!("wanlab: checking for leftovers: {e:#}"),
        }
    }
}

/// The nftables ruleset for a router, or `None` for plain routing; `forward` = ((first, last)
/// UDP port, LAN host): those ports on the WAN address go to that host. Checked with `nft -c`
/// (nftables 1.0.6): `nft list` omits `unreplied : 30` because it equals the kernel default.
pub fn nat_ruleset(nat: Nat, forward: Option<((u16, u16), &str)>) -> Option<String> {
    let masquerade = match nat {
        Nat::Home => "masquerade",
        Nat::Symmetric => "masquerade fully-random",
        Nat::None => return None,
    };
    let (dnat, forwarded) = match forward {
        Some(((first, last), host)) => (
            format!(
                r#"
    chain dstnat {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan0" udp dport {first}-{last} dnat ip to {host}
    }}"#
            ),
            "
        ct status dnat accept",
        ),
        None => (String::new(), ""),
    };
    Some(format!(
        r#"table inet lockstep_nat {{
    ct timeout udp_home {{
        protocol udp
        l3proto ip
        policy = {{ unreplied : 30, replied : 30 }}
    }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        meta l4proto udp ct timeout set "udp_home"
    }}{dnat}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept{forwarded}
        iifname "lan0" oifname "wan0" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan0" ct state established,related accept
        iifname "wan0" drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" {masquerade}
    }}
}}
"#
    ))
}

fn ip(ns_name: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["-n", ns_name]).args(args))
}

/// Run a command to completion; a non-zero exit is an error naming the command and its stderr.
fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_with_stdin(command: &mut Command, input: &str) -> Result<()> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {command:?}"))?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
