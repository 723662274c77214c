//! The socket side of a Link peer (digest §4.1): a receive socket on 224.76.78.75:20808
//! (address reuse, joined on one interface), a unicast socket bound to that interface's
//! address that sends ALIVE/BYEBYE to the group and RESPONSEs to peers and receives
//! RESPONSEs, and a measurement socket for PING/PONG, advertised in our `mep4`. Non-blocking,
//! polled; the protocol is [`LinkCore`].
//!
//! [`LinkService`] runs one peer for the process while any instance's Link Mode is not Off:
//! in *DAW leads*, the leading instance's tempo changes (and, with Link Start/Stop, its
//! start/stop) go into the session, and when the DAW starts or jumps its beat is forced into
//! the session at the host time the listener hears it (block time through the sample-clock
//! estimate, plus the assumed output latency); on joining a session nothing is published
//! until the DAW changes something (no hijack). *Follow*: the instance's MIDI clock and OSC
//! transport run from the session's timeline ([`crate::clock::link_clock`]); the DAW itself
//! cannot be driven by a plugin.

use super::runtime::{Backlog, read_budgeted};
pub use crate::status::link::{LinkMode, LinkStatus};

pub use service::LinkService;

mod service;
use std::io::ErrorKind;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::link::session::{Destination, LinkCore, Micros};
use crate::proto::link::{MULTICAST, NodeId};

/// Link's clock now, microseconds. On Linux this is `CLOCK_MONOTONIC_RAW`, the clock Ableton's
/// Link library uses there: peers on one machine then share one clock exactly (no rate
/// difference to drift through), and between machines the 30 s re-measurement takes care of
/// the crystals' drift. Elsewhere the worker's host clock.
pub fn now_micros() -> Micros {
    crate::sys::link_clock_micros()
}

/// Link's clock minus the worker's host clock ([`crate::bridge::host_time_ns`]), µs: read
/// both clocks back to back (the pair read fastest of three) so host times (the DAW's sample
/// clock maps to them) convert to Link times and back. The two clocks differ in rate by the
/// NTP correction (ppm), so this is read again whenever it is used.
pub fn link_minus_host() -> f64 {
    let mut best = (f64::INFINITY, 0.0);
    for _ in 0..3 {
        let h0 = crate::bridge::host_time_ns() as f64;
        let l = now_micros() as f64;
        let h1 = crate::bridge::host_time_ns() as f64;
        if h1 - h0 < best.0 {
            best = (h1 - h0, l - (h0 + h1) / 2e3);
        }
    }
    best.1
}

/// A random node id (time, process id and a counter mixed; uniqueness matters, secrecy not).
pub fn node_id() -> NodeId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut x = crate::bridge::host_time_ns()
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)).to_be_bytes()
}

/// One interface's sockets: a unicast socket bound to its address (sends ALIVE/BYEBYE to the
/// group and RESPONSEs, receives RESPONSEs) and a measurement socket (PING/PONG).
#[derive(Debug)]
struct Gateway {
    address: Ipv4Addr,
    /// Prefix length of the interface's network (which peers it reaches directly).
    prefix: u8,
    unicast: UdpSocket,
    measurement: UdpSocket,
    measurement_addr: SocketAddr,
}

/// A Link peer on one or more IPv4 interfaces: one session state, a gateway per interface
/// (Link's own design); ALIVEs go out on every interface, each naming that interface's
/// measurement endpoint.
#[derive(Debug)]
pub struct LinkDriver {
    core: LinkCore,
    group_rx: UdpSocket,
    gateways: Vec<Gateway>,
    group: SocketAddr,
    buf: Vec<u8>,
    /// Send errors (an interface that went away, a full buffer).
    pub send_errors: u64,
    /// The last read stopped at its budget with datagrams still waiting.
    /// Input owed after a read budget ran out (read again after the rest).
    backlog: Backlog,
}

fn udp(bind: SocketAddrV4, reuse: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse {
        crate::sys::share_port(&s)?;
    }
    s.bind(&bind.into())?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// True if `peer` is on the network `address`/`prefix`.
pub fn same_network(address: Ipv4Addr, prefix: u8, peer: Ipv4Addr) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(address) & mask == u32::from(peer) & mask
}

/// `bytes` (an encoded discovery message) with `endpoint` as its measurement endpoint;
/// unchanged if it does not decode or carries none (BYEBYE).
pub fn with_measurement_endpoint(bytes: &[u8], endpoint: SocketAddr) -> Vec<u8> {
    let Ok(mut m) = crate::proto::link::decode_discovery(bytes) else {
        return bytes.to_vec();
    };
    if m.state.measurement.is_none() {
        return bytes.to_vec();
    }
    m.state.measurement = Some(endpoint);
    let mut out = Vec::with_capacity(bytes.len());
    match crate::proto::link::encode_discovery(&m, &mut out) {
        Ok(()) => out,
        Err(_) => bytes.to_vec(),
    }
}

impl LinkDriver {
    /// Join Link on the interface with address `interface`, founding a session at `tempo`.
    pub fn open(interface: Ipv4Addr, tempo: f64) -> std::io::Result<Self> {
        Self::open_on(&[(interface, 32)], tempo)
    }

    /// Join Link on these interfaces (address, prefix length), founding a session at `tempo`.
    pub fn open_on(interfaces: &[(Ipv4Addr, u8)], tempo: f64) -> std::io::Result<Self> {
        let group_rx = udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MULTICAST.1), true)?;
        let mut gateways = Vec::new();
        for &(address, prefix) in interfaces {
            group_rx.join_multicast_v4(&MULTICAST.0, &address)?;
            let unicast = udp(SocketAddrV4::new(address, 0), false)?;
            unicast.set_multicast_if_v4(&address)?;
            // Other peers on this machine must hear us too.
            unicast.set_multicast_loop_v4(true)?;
            unicast.set_multicast_ttl_v4(1)?;
            let measurement = udp(SocketAddrV4::new(address, 0), false)?;
            // Kernel receive times: a PONG read a millisecond late must not count as a
            // millisecond-longer round trip (see `LinkCore::handle_measurement_at`).
            crate::sys::enable_rx_timestamps(&measurement);
            let measurement_addr = measurement
                .local_addr()?
                .as_socket()
                .ok_or(ErrorKind::AddrNotAvailable)?;
            gateways.push(Gateway {
                address,
                prefix,
                unicast: UdpSocket::from_std(unicast.into()),
                measurement: UdpSocket::from_std(measurement.into()),
                measurement_addr,
            });
        }
        let first = gateways.first().ok_or(ErrorKind::AddrNotAvailable)?;
        let core = LinkCore::new(now_micros(), node_id(), tempo, first.measurement_addr);
        Ok(Self {
            core,
            group_rx: UdpSocket::from_std(group_rx.into()),
            gateways,
            group: SocketAddr::from((MULTICAST.0, MULTICAST.1)),
            buf: vec![0; 2048],
            send_errors: 0,
            backlog: Backlog::new(1_000),
        })
    }

    /// The interface addresses Link runs on.
    pub fn interfaces(&self) -> Vec<Ipv4Addr> {
        self.gateways.iter().map(|g| g.address).collect()
    }

    /// The gateway that reaches `to` (its network, else the first).
    fn gateway_for(&self, to: SocketAddr) -> &Gateway {
        let v4 = match to.ip() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        };
        v4.and_then(|ip| {
            self.gateways
                .iter()
                .find(|g| same_network(g.address, g.prefix, ip))
        })
        .unwrap_or(&self.gateways[0])
    }

    /// The protocol state.
    pub fn core(&self) -> &LinkCore {
        &self.core
    }

    /// The protocol state, to change tempo or start/stop.
    pub fn core_mut(&mut self) -> &mut LinkCore {
        &mut self.core
    }

    /// Register every socket with the worker's readiness loop under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(&mut self.group_rx, token, Interest::READABLE)?;
        for g in &mut self.gateways {
            registry.register(&mut g.unicast, token, Interest::READABLE)?;
            registry.register(&mut g.measurement, token, Interest::READABLE)?;
        }
        Ok(())
    }

    /// Receive (if `readable`: the loop saw the token fire), run timers, send; returns the
    /// next deadline (Link µs).
    pub fn poll(&mut self, now: Micros, readable: bool) -> Option<Micros> {
        if self.backlog.take(now.max(0) as u64, readable) {
            self.receive(now);
        }
        self.core.handle_timeout(now);
        self.flush();
        let owed = self.backlog.due().map(|at| at as Micros);
        [owed, self.core.poll_timeout()].into_iter().flatten().min()
    }

    /// What waits on every socket, up to [`READ_BUDGET`](super::runtime::READ_BUDGET) datagrams per socket and pass (a
    /// flood of ALIVEs cannot hold the worker; the rest is read on the next pass, at once).
    fn receive(&mut self, now: Micros) {
        let Self {
            core,
            group_rx,
            gateways,
            buf,
            backlog,
            ..
        } = self;
        let mut more = false;
        for socket in std::iter::once(&*group_rx).chain(gateways.iter().map(|g| &g.unicast)) {
            let step = || {
                let (n, from) = socket.recv_from(buf)?;
                core.handle_discovery(now, from, &buf[..n]);
                Ok(())
            };
            more |= read_budgeted(step, || {});
        }
        for g in gateways.iter() {
            let step = || {
                let (n, from, age) = crate::sys::recv_stamped(&g.measurement, buf)?;
                // The kernel's receive time, moved to Link's clock by its age.
                let arrived = age.map_or(now, |age| now_micros() - (age / 1_000) as Micros);
                core.handle_measurement_at(now, arrived, from, &buf[..n]);
                Ok(())
            };
            more |= read_budgeted(step, || {});
        }
        backlog.read(now.max(0) as u64, more);
    }

    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            match t.to {
                // Every interface, each naming its own measurement endpoint.
                Destination::Multicast => {
                    for (i, g) in self.gateways.iter().enumerate() {
                        let bytes = if i == 0 {
                            t.bytes.clone()
                        } else {
                            with_measurement_endpoint(&t.bytes, g.measurement_addr)
                        };
                        if g.unicast.send_to(&bytes, self.group).is_err() {
                            self.send_errors += 1;
                        }
                    }
                }
                Destination::Unicast(to) => {
                    let g = self.gateway_for(to);
                    let bytes = if std::ptr::eq(g, &self.gateways[0]) {
                        t.bytes
                    } else {
                        with_measurement_endpoint(&t.bytes, g.measurement_addr)
                    };
                    if g.unicast.send_to(&bytes, to).is_err() {
                        self.send_errors += 1;
                    }
                }
                Destination::Measurement(to) => {
                    if self
                        .gateway_for(to)
                        .measurement
                        .send_to(&t.bytes, to)
                        .is_err()
                    {
                        self.send_errors += 1;
                    }
                }
            }
        }
    }

    /// Leave the session (BYEBYE).
    pub fn close(&mut self) {
        self.core.leave();
        self.flush();
    }
}

impl Drop for LinkDriver {
    fn drop(&mut self) {
        self.close();
    }
}

/// The interface address the kernel would use for Link's multicast group (no packet is sent:
/// a UDP connect only picks the route). Loopback if there is no route.
pub fn default_interface() -> Ipv4Addr {
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect((MULTICAST.0, MULTICAST.1))?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// The interfaces (address, prefix length) for the user's choice (`link_interface`):
/// empty = the interface the system routes Link's group through; `all` = every interface
/// that is up and multicast-capable (loopback only when there is nothing else); otherwise
/// names or IPv4 addresses separated by commas.
pub fn resolve_interfaces(choice: &str) -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let choice = choice.trim();
    let known = crate::sys::ipv4_interfaces().unwrap_or_default();
    let prefix_of = |a: Ipv4Addr| {
        known
            .iter()
            .find(|k| k.address == a)
            .map_or(32, |k| k.prefix)
    };
    if choice.is_empty() {
        let a = default_interface();
        return Ok(vec![(a, prefix_of(a))]);
    }
    if choice.eq_ignore_ascii_case("all") {
        let usable: Vec<&crate::sys::Interface> = known.iter().filter(|k| k.usable).collect();
        let outside: Vec<_> = usable
            .iter()
            .filter(|k| !k.loopback)
            .map(|k| (k.address, k.prefix))
            .collect();
        let all = if outside.is_empty() {
            usable.iter().map(|k| (k.address, k.prefix)).collect()
        } else {
            outside
        };
        if all.is_empty() {
            return Err("Link interface \"all\": no interface is up with IPv4 multicast".into());
        }
        return Ok(all);
    }
    let mut out = Vec::new();
    for part in choice.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(address) = part.parse::<Ipv4Addr>() {
            out.push((address, prefix_of(address)));
            continue;
        }
        match known.iter().find(|k| k.name == part) {
            Some(k) => out.push((k.address, k.prefix)),
            None => {
                let mut names: Vec<&str> = known.iter().map(|k| k.name.as_str()).collect();
                names.dedup();
                return Err(format!(
                    "Link interface {part:?}: no such interface with an IPv4 address (have: {})",
                    names.join(", ")
                ));
            }
        }
    }
    out.dedup();
    Ok(out)
}

/// The interface address for a single choice (see [`resolve_interfaces`]).
pub fn resolve_interface(choice: &str) -> Result<Ipv4Addr, String> {
    resolve_interfaces(choice)?
        .first()
        .map(|i| i.0)
        .ok_or_else(|| format!("Link interface {choice:?}: none given"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_choices_resolve_or_say_what_exists() {
        // No socket is opened: names and addresses are looked up only.
        assert_eq!(resolve_interface("lo"), Ok(Ipv4Addr::LOCALHOST));
        assert_eq!(
            resolve_interface(" 10.1.2.3 "),
            Ok(Ipv4Addr::new(10, 1, 2, 3))
        );
        let err = resolve_interface("nosuch0").expect_err("no such interface");
        assert!(err.contains("nosuch0") && err.contains("lo"), "{err}");
        // Several, and "all" (loopback at least: it is always up here).
        let two = resolve_interfaces("lo, 10.1.2.3").expect("two");
        assert_eq!(two[0], (Ipv4Addr::LOCALHOST, 8));
        assert_eq!(two[1].0, Ipv4Addr::new(10, 1, 2, 3));
        let all = resolve_interfaces("all").expect("all");
        assert!(!all.is_empty());
    }

    #[test]
    fn each_interface_reaches_its_own_network_and_names_its_own_endpoint() {
        let lan = Ipv4Addr::new(192, 168, 1, 20);
        assert!(same_network(lan, 24, Ipv4Addr::new(192, 168, 1, 7)));
        assert!(!same_network(lan, 24, Ipv4Addr::new(10, 0, 0, 7)));
        assert!(
            same_network(lan, 0, Ipv4Addr::new(10, 0, 0, 7)),
            "default route"
        );
        // An ALIVE re-addressed for a second interface carries that interface's mep4 and
        // nothing else changes.
        let core = LinkCore::new(
            0,
            [7; 8],
            120.0,
            SocketAddr::from(([192, 168, 1, 20], 40_000)),
        );
        let mut core = core;
        let alive = core.poll_transmit().expect("the founding ALIVE").bytes;
        let other = SocketAddr::from(([10, 0, 0, 5], 41_000));
        let moved = with_measurement_endpoint(&alive, other);
        let (a, b) = (
            crate::proto::link::decode_discovery(&alive).expect("decodes"),
            crate::proto::link::decode_discovery(&moved).expect("decodes"),
        );
        assert_eq!(b.state.measurement, Some(other));
        assert_eq!(
            (a.node, a.state.timeline, a.state.session),
            (b.node, b.state.timeline, b.state.session)
        );
        assert_eq!(with_measurement_endpoint(b"junk", other), b"junk");
    }
}
