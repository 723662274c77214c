//! The emulated WAN lab works: NAT is applied, unsolicited traffic is filtered, hole punching
//! succeeds between two home NATs and fails against a symmetric one (also with delay), the
//! userspace emulator delays and drops as configured, nothing is left behind, and the real
//! broker (mosquitto) and relay (coturn) in `srv` serve hosts behind the home NATs.
//! Runs inside the suite's private network namespace; the lab nests its namespaces in it.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lockstep_host::wanlab::{
    HOST_A_IP, HOST_B_IP, LabConfig, Nat, Ns, SRV_IP, WAN_A_IP, WAN_B_IP, WanLab,
};

const RECV_TIMEOUT: Duration = Duration::from_millis(1500);
/// The server's "STUN" port: it tells each client the source address it saw.
const SRV_PORT: u16 = 3478;

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn bind(lab: &WanLab, ns: Ns, at: SocketAddr) -> Result<UdpSocket> {
    let socket = lab.udp_socket(ns, at)?;
    socket.set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(socket)
}

/// Receive one datagram, or `None` after the timeout.
fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

/// What the server sees as `client`'s source (its mapped address), like a STUN binding.
fn mapped(client: &UdpSocket, srv: &UdpSocket) -> Result<SocketAddr> {
    client.send_to(b"binding", addr(SRV_IP, SRV_PORT))?;
    let (_, seen) = recv(srv).context("srv got no binding request")?;
    Ok(seen)
}

#[test]
fn home_nat_maps_the_source_and_lets_replies_back() -> Result<()> {
    let lab = WanLab::build(LabConfig::default())?;
    let srv = bind(&lab, Ns::Srv, addr(SRV_IP, SRV_PORT))?;
    let host_a = bind(&lab, Ns::HostA, addr(HOST_A_IP, 40000))?;
    let seen = mapped(&host_a, &srv)?;
    ensure!(
        seen.ip() == SocketAddr::from((WAN_A_IP, 0)).ip(),
        "srv saw {seen}, not router A's WAN address"
    );
    srv.send_to(b"reply", seen)?;
    let (bytes, from) = recv(&host_a).context("srv's reply did not reach hostA")?;
    ensure!(
        bytes == b"reply" && from == addr(SRV_IP, SRV_PORT),
        "{bytes:?} from {from}"
    );
    Ok(())
}

#[test]
fn unsolicited_traffic_is_filtered() -> Result<()> {
    let lab = WanLab::build(LabConfig::default())?;
    let srv = bind(&lab, Ns::Srv, addr(SRV_IP, SRV_PORT))?;
    let srv_other = bind(&lab, Ns::Srv, addr(SRV_IP, SRV_PORT + 1))?;
    let host_b = bind(&lab, Ns::HostB, addr(HOST_B_IP, 40001))?;
    // A port hostB never used: nothing arrives.
    srv.send_to(b"unsolicited", addr(WAN_B_IP, 40001))?;
    ensure!(
        recv(&host_b).is_none(),
        "unsolicited datagram reached hostB"
    );
    // After hostB contacts srv:3478, only srv:3478 gets through (port-dependent filtering).
    let seen = mapped(&host_b, &srv)?;
    srv_other.send_to(b"other port", seen)?;
    ensure!(
        recv(&host_b).is_none(),
        "datagram from another port reached hostB"
    );
    srv.send_to(b"reply", seen)?;
    let (bytes, _) = recv(&host_b).context("reply from the contacted port did not arrive")?;
    ensure!(bytes == b"reply", "{bytes:?}");
    Ok(())
}

/// A forwarded port range on B's router reaches hostB from anywhere (hostA behind its own
/// NAT here), replies go back through both NATs, and a port outside the range stays closed.
#[test]
fn a_forwarded_port_reaches_the_host_behind_the_router() -> Result<()> {
    let lab = WanLab::build(LabConfig {
        forward_b: Some((5004, 5005)),
        ..LabConfig::default()
    })?;
    let host_a = bind(&lab, Ns::HostA, addr(HOST_A_IP, 5004))?;
    let data_b = bind(&lab, Ns::HostB, addr(HOST_B_IP, 5005))?;
    let closed_b = bind(&lab, Ns::HostB, addr(HOST_B_IP, 5006))?;
    host_a.send_to(b"invite", addr(WAN_B_IP, 5005))?;
    let (bytes, from) = recv(&data_b).context("the forwarded port did not reach hostB")?;
    // hostB sees A's router (A's own NAT), not hostA.
    ensure!(
        bytes == b"invite" && from.ip() == std::net::IpAddr::from(WAN_A_IP),
        "{bytes:?} from {from}"
    );
    data_b.send_to(b"ok", from)?;
    let (bytes, from) = recv(&host_a).context("the reply did not come back")?;
    ensure!(
        bytes == b"ok" && from == addr(WAN_B_IP, 5005),
        "{bytes:?} from {from}"
    );
    host_a.send_to(b"not forwarded", addr(WAN_B_IP, 5006))?;
    ensure!(
        recv(&closed_b).is_none(),
        "a port outside the range reached hostB"
    );
    Ok(())
}

/// Both hosts learn their mapped addresses from srv, then send to each other's; returns whether
/// hostA and hostB each received the other's datagram.
fn punch(config: LabConfig) -> Result<(bool, bool)> {
    let lab = WanLab::build(config)?;
    let srv = bind(&lab, Ns::Srv, addr(SRV_IP, SRV_PORT))?;
    let host_a = bind(&lab, Ns::HostA, addr(HOST_A_IP, 40000))?;
    let host_b = bind(&lab, Ns::HostB, addr(HOST_B_IP, 40001))?;
    let mapped_a = mapped(&host_a, &srv)?;
    let mapped_b = mapped(&host_b, &srv)?;
    // A's first datagram opens A's router for B and is dropped by B's; B's then passes A's.
    host_a.send_to(b"punch a", mapped_b)?;
    host_b.send_to(b"punch b", mapped_a)?;
    host_a.send_to(b"punch a", mapped_b)?;
    let a_got = recv(&host_a).is_some_and(|(b, from)| b == b"punch b" && from == mapped_b);
    let b_got = recv(&host_b).is_some_and(|(b, from)| b == b"punch a" && from == mapped_a);
    Ok((a_got, b_got))
}

#[test]
fn hole_punching_works_between_home_nats_only() -> Result<()> {
    let home = punch(LabConfig::default())?;
    ensure!(
        home == (true, true),
        "home↔home punch (A got, B got) = {home:?}"
    );
    let symmetric = punch(LabConfig {
        nat_a: Nat::Home,
        nat_b: Nat::Symmetric,
        ..LabConfig::default()
    })?;
    ensure!(
        symmetric == (false, false),
        "home↔symmetric punch should fail, (A got, B got) = {symmetric:?}"
    );
    Ok(())
}

#[test]
fn no_nat_is_plain_routing() -> Result<()> {
    let lab = WanLab::build(LabConfig {
        nat_a: Nat::None,
        nat_b: Nat::None,
        ..LabConfig::default()
    })?;
    let srv = bind(&lab, Ns::Srv, addr(SRV_IP, SRV_PORT))?;
    let host_a = bind(&lab, Ns::HostA, addr(HOST_A_IP, 40000))?;
    // Without NAT the server sees the LAN address, and needs a route back to it.
    lab.exec(
        Ns::Srv,
        "ip",
        &["route", "add", "203.0.113.0/26", "via", "198.51.100.11"],
    )?;
    let seen = mapped(&host_a, &srv)?;
    ensure!(seen == addr(HOST_A_IP, 40000), "srv saw {seen}");
    Ok(())
}

#[test]
fn dropping_the_lab_leaves_no_namespace() -> Result<()> {
    let lab = WanLab::build(LabConfig::default())?;
    let prefix = lab.prefix().to_owned();
    ensure!(
        WanLab::leftovers(&prefix)?.len() == 12,
        "{:?}",
        WanLab::leftovers(&prefix)?
    );
    drop(lab);
    let left = WanLab::leftovers(&prefix)?;
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn hole_punching_works_with_delay() -> Result<()> {
    let home = punch(LabConfig {
        delay_a_ms: 30,
        delay_b_ms: 20,
        ..LabConfig::default()
    })?;
    ensure!(
        home == (true, true),
        "home↔home punch with delay (A got, B got) = {home:?}"
    );
    Ok(())
}

/// 40 ms one-way on A's link, none on the server's: no echo takes less than 80 ms (the
/// emulator never releases a packet early, so that bound is exact), the median at most 82 ms
/// (the emulator rounds each `poll` timeout up to whole milliseconds: ≤ 1 ms per crossing),
/// and none over 120 ms. Single echoes above 82 ms are the shared 2-core machine scheduling
/// the emulator's thread late (seen up to 91 ms while the rest of the suite ran), not delay.
#[test]
fn delay_is_one_way_per_side() -> Result<()> {
    let lab = WanLab::build(LabConfig {
        delay_a_ms: 40,
        ..LabConfig::default()
    })?;
    let srv = bind(&lab, Ns::Srv, addr(SRV_IP, SRV_PORT))?;
    let host_a = bind(&lab, Ns::HostA, addr(HOST_A_IP, 40000))?;
    let (low, median_high, high) = (
        Duration::from_millis(80),
        Duration::from_millis(82),
        Duration::from_millis(120),
    );
    let mut rtts = Vec::new();
    for i in 0u8..20 {
        let sent = Instant::now();
        host_a.send_to(&[i], addr(SRV_IP, SRV_PORT))?;
        let (bytes, from) = recv(&srv).context("echo request lost")?;
        srv.send_to(&bytes, from)?;
        let (bytes, _) = recv(&host_a).context("echo reply lost")?;
        let rtt = sent.elapsed();
        ensure!(bytes == [i], "reply {bytes:?} to echo {i}");
        rtts.push(rtt);
    }
    eprintln!("delay: rtts {rtts:?}");
    ensure!(
        rtts.iter().all(|rtt| (low..=high).contains(rtt)),
        "rtts outside [{low:?}, {high:?}]: {rtts:?}"
    );
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    ensure!(
        median <= median_high,
        "median {median:?} over {median_high:?}: {rtts:?}"
    );
    let stats = lab.emulator_stats();
    ensure!(
        stats.forwarded == 40 && stats.dropped == 0,
        "emulator {stats:?}"
    );
    Ok(())
}

/// 40 ± 5 ms one way (delay on A's link, jitter across inet): one-way times spread over the
/// ±5 ms band and stay inside it (a packet is never early and at most a poll millisecond plus
/// the FIFO hold late), measured on one clock with datagrams that are not answered.
#[test]
fn jitter_spreads_the_delay_within_its_band() -> Result<()> {
    let lab = WanLab::build(LabConfig {
        delay_a_ms: 40,
        jitter_ms: 5,
        seed: 0xA11CE,
        ..LabConfig::default()
    })?;
    let srv = bind(&lab, Ns::Srv, addr(SRV_IP, SRV_PORT))?;
    let host_a = bind(&lab, Ns::HostA, addr(HOST_A_IP, 40000))?;
    let mut one_way = Vec::new();
    for i in 0u8..40 {
        let sent = Instant::now();
        host_a.send_to(&[i], addr(SRV_IP, SRV_PORT))?;
        let (bytes, _) = recv(&srv).context("datagram lost")?;
        one_way.push(sent.elapsed().as_secs_f64() * 1e3);
        ensure!(bytes == [i], "datagram {bytes:?} for {i}");
    }
    let min = one_way.iter().copied().fold(f64::INFINITY, f64::min);
    let max = one_way.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "jitter: one-way {min:.2}..{max:.2} ms over {}",
        one_way.len()
    );
    ensure!(min >= 35.0 && max <= 47.0, "outside 35..47 ms: {one_way:?}");
    // 40 uniform draws over ±5 ms: a spread under 6 ms is a one-in-millions event.
    ensure!(max - min >= 6.0, "no jitter: {one_way:?}");
    Ok(())
}

/// 20 % loss, fixed seed: 1,000 datagrams arrive 800 ± 60 (binomial σ ≈ 12.6, so ± 60 is
/// about 4.7 σ and does not depend on the seed), and every missing one is counted as dropped.
#[test]
fn loss_drops_the_configured_share() -> Result<()> {
    const SENT: u32 = 1000;
    let lab = WanLab::build(LabConfig {
        loss_ppm: 200_000,
        seed: 0x5eed,
        ..LabConfig::default()
    })?;
    let srv = lab.udp_socket(Ns::Srv, addr(SRV_IP, SRV_PORT))?;
    srv.set_read_timeout(Some(Duration::from_millis(300)))?;
    let host_a = bind(&lab, Ns::HostA, addr(HOST_A_IP, 40000))?;
    let counter = std::thread::Builder::new()
        .name("loss-sink".into())
        .spawn(move || {
            let mut got = 0u32;
            while recv(&srv).is_some() {
                got += 1;
            }
            got
        })?;
    for i in 0..SENT {
        host_a.send_to(&i.to_be_bytes(), addr(SRV_IP, SRV_PORT))?;
        // Paced, so neither the TUN's queue nor srv's socket buffer can overflow unseen.
        std::thread::sleep(Duration::from_micros(200));
    }
    let got = counter
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))?;
    let stats = lab.emulator_stats();
    eprintln!("loss: {got}/{SENT} arrived, emulator {stats:?}");
    ensure!((740..=860).contains(&got), "{got} of {SENT} arrived");
    ensure!(
        u64::from(SENT - got) == stats.dropped && u64::from(got) == stats.forwarded,
        "{} missing but emulator {stats:?}",
        SENT - got
    );
    Ok(())
}

/// Run `command` to completion, killing it after `timeout`; stdout and stderr are drained by
/// threads so a chatty child cannot block on a full pipe.
fn output_within(command: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().context("stdout")?));
    let stderr = drain(Box::new(child.stderr.take().context("stderr")?));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let join = |h: std::thread::JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    let (stdout, stderr) = (join(stdout), join(stderr));
    let Some(status) = status else {
        bail!(
            "{command:?} still running after {timeout:?}, killed; stdout: {} stderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Poll `log` until it contains `needle`, up to 5 s.
fn wait_for_log(log: impl Fn() -> String, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log().contains(needle) {
        ensure!(
            Instant::now() < deadline,
            "{needle:?} not logged within 5 s; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// hostB subscribes and hostA publishes on the real broker in `srv`, both behind home NATs:
/// the broker sees them as their routers' WAN addresses and B gets A's payload unchanged.
#[test]
fn broker_relays_between_hosts_behind_home_nats() -> Result<()> {
    const PAYLOAD: &str = r#"{"announce":"peerA","note":"through two NATs"}"#;
    let lab = WanLab::build(LabConfig::default())?;
    let broker = lab.start_broker()?;
    let mut sub = lab.command(Ns::HostB, "mosquitto_sub");
    sub.args([
        "-h",
        "198.51.100.2",
        "-i",
        "lockstep-b",
        "-t",
        "lockstep/v1/0042/#",
        "-C",
        "1",
        "-W",
        "5",
    ]);
    let subscriber = std::thread::Builder::new()
        .name("mosquitto-sub".into())
        .spawn(move || output_within(&mut sub, Duration::from_secs(8)))?;
    // Publish only once B's subscription is in place (QoS 0, no retain: earlier is lost).
    let subscribed = wait_for_log(|| broker.log(), "Received SUBSCRIBE from lockstep-b");
    let published = subscribed.and_then(|()| {
        let mut publish = lab.command(Ns::HostA, "mosquitto_pub");
        publish.args([
            "-h",
            "198.51.100.2",
            "-i",
            "lockstep-a",
            "-t",
            "lockstep/v1/0042/announce",
            "-m",
            PAYLOAD,
        ]);
        let out = output_within(&mut publish, Duration::from_secs(5))?;
        ensure!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    });
    // Always join the subscriber (it exits by itself within -W 5 or is killed at 8 s).
    let got = subscriber
        .join()
        .map_err(|_| anyhow::anyhow!("subscriber thread panicked"))??;
    published?;
    ensure!(
        got.status.success(),
        "mosquitto_sub {}: {}",
        got.status,
        String::from_utf8_lossy(&got.stderr)
    );
    let got = String::from_utf8_lossy(&got.stdout);
    ensure!(got == format!("{PAYLOAD}\n"), "B received {got:?}");
    let log = broker.log();
    for wan in ["198.51.100.11", "198.51.100.12"] {
        ensure!(
            log.contains(&format!("New connection from {wan}:")),
            "broker never saw router {wan}; log:\n{log}"
        );
    }
    Ok(())
}

/// `turnutils_uclient -y` in hostA (behind a home NAT) allocates two relays on the real coturn
/// in `srv` with REST credentials and sends messages from one client to the other through
/// them: every message must come back, none lost.
#[test]
fn turn_relays_for_a_host_behind_a_home_nat() -> Result<()> {
    const SECRET: &str = "lockstep-lab-secret";
    let lab = WanLab::build(LabConfig::default())?;
    let turn = lab.start_turn(SECRET)?;
    let (user, pass) = turn.credentials("peerA", Duration::from_secs(600));
    let mut uclient = lab.command(Ns::HostA, "turnutils_uclient");
    // -y client-to-client through the relays, -c no RTCP pair, 10 messages of 100 bytes.
    uclient.args([
        "-y",
        "-c",
        "-n",
        "10",
        "-l",
        "100",
        "-u",
        &user,
        "-w",
        &pass,
        "198.51.100.2",
    ]);
    let out = output_within(&mut uclient, Duration::from_secs(20))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "turnutils_uclient {}: {text}",
        out.status
    );
    let totals = text
        .lines()
        .rev()
        .find_map(|line| line.split_once("start_mclient: tot_send_msgs="))
        .map(|(_, rest)| rest.to_owned())
        .with_context(|| format!("no totals in: {text}"))?;
    let (sent, received) = totals
        .split_once(", tot_recv_msgs=")
        .with_context(|| format!("totals {totals:?}"))?;
    let (sent, received): (u32, u32) = (sent.trim().parse()?, received.trim().parse()?);
    eprintln!("turn: sent {sent}, received {received}");
    ensure!(
        sent >= 10 && received == sent,
        "sent {sent}, received {received}: {text}"
    );
    ensure!(
        text.contains("Total lost packets 0 (0.000000%)"),
        "losses reported: {text}"
    );
    let log = turn.log();
    ensure!(
        log.contains("error 401: Unauthorized")
            && log.contains(&format!(
                "user <{user}>: incoming packet ALLOCATE processed, success"
            )),
        "no 401 challenge then authenticated ALLOCATE in coturn's log:\n{log}"
    );
    Ok(())
}

/// A wrong secret gives no allocation: credentials are really checked.
#[test]
fn turn_rejects_credentials_from_another_secret() -> Result<()> {
    let lab = WanLab::build(LabConfig::default())?;
    let turn = lab.start_turn("lockstep-lab-secret")?;
    let (user, pass) = lockstep_host::wanlab::turn_rest_credentials(
        "not-the-secret",
        "peerA",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 600,
    );
    let mut uclient = lab.command(Ns::HostA, "turnutils_uclient");
    uclient.args([
        "-y",
        "-c",
        "-n",
        "2",
        "-u",
        &user,
        "-w",
        &pass,
        "198.51.100.2",
    ]);
    let out = output_within(&mut uclient, Duration::from_secs(20))?;
    let log = turn.log();
    ensure!(
        !out.status.success() && !log.contains("ALLOCATE processed, success"),
        "allocation with a wrong secret: {}\n{log}",
        out.status
    );
    Ok(())
}
