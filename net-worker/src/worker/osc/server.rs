//! The socket side of the OSC bridge: [`OscServer`] owns the process's one UDP port (and OSC
//! over TCP on the same port number, SLIP or size-prefixed framing), feeds what arrives to its
//! [`OscCore`], and sends what the core asks for. Everything else in `osc` is sans-IO.
//!
//! Every socket is registered with the worker's readiness loop under one token
//! ([`OscServer::register`]); the worker calls [`OscServer::poll`] with `readable` set when
//! that token fired, so an idle OSC port costs no system call.

use crate::worker::runtime::{Backlog, read_budgeted, write_pending};
use std::io::ErrorKind;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::{MAX_PACKET, Nanos, OscCore, OscStatus, Output, TimedChange, TransportRequest};
use crate::params::HostParamChange;
use crate::proto::osc;

/// The socket side: one UDP port for the process.
#[derive(Debug)]
pub struct OscServer {
    socket: mio::net::UdpSocket,
    /// Where the sockets are registered (accepted TCP controllers join it).
    registration: Option<(Registry, Token)>,
    port: u16,
    /// OSC over TCP on the same port number (1.0 size-prefixed or 1.1 SLIP, told apart by the
    /// first byte a client sends), if it could be opened.
    tcp: Option<TcpListener>,
    streams: Vec<Stream>,
    /// The bridge.
    pub core: OscCore,
    errors: Vec<String>,
    buf: Vec<u8>,
    /// Transport requests from the last poll.
    pub transport: Vec<TransportRequest>,
    /// Input owed after a read budget ran out (read again after the rest).
    backlog: Backlog,
}

/// The receive buffer asked for on the OSC UDP socket.
pub const OSC_RECEIVE_BUFFER: usize = 4 << 20;
/// Most TCP controllers at once.
pub const MAX_STREAMS: usize = 16;
/// Most TCP controllers from one address.
pub const MAX_STREAMS_PER_ADDRESS: usize = 4;
/// A TCP controller that has sent no valid message this long after connecting is closed (it
/// could get no feedback anyway: feedback goes to senders and subscribers).
pub const SILENT_STREAM: Nanos = 10_000 * super::MS;
/// When every slot is taken, a controller that never sent a valid message, or has been quiet
/// for this long, gives its slot to a newcomer.
pub const STALE_STREAM: Nanos = 10_000 * super::MS;
/// Bytes read from one TCP controller per pass; more waits for the next pass.
pub const STREAM_READ_PER_PASS: usize = 64 * 1024;
/// Most bytes of feedback waiting for a TCP controller that does not read; frames that do not
/// fit are dropped whole (the stream stays intact) and counted.
pub const STREAM_OUT_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Slip,
    SizePrefixed,
}

/// One TCP controller.
#[derive(Debug)]
struct Stream {
    stream: TcpStream,
    peer: SocketAddr,
    framing: Option<Framing>,
    slip: osc::slip::Decoder,
    sized: osc::size_prefixed::Decoder,
    /// When it connected, and when it last sent a frame that decoded.
    since: Nanos,
    heard: Option<Nanos>,
    /// Framed replies and feedback not yet taken by the socket.
    out: Vec<u8>,
}

impl OscServer {
    /// Listen on `port`, or the next free one of the 16 after it (said in the status).
    pub fn open(port: u16) -> Result<Self, String> {
        let mut errors = Vec::new();
        let mut bound = None;
        for candidate in port..port.saturating_add(16) {
            match UdpSocket::bind(("0.0.0.0", candidate)) {
                Ok(s) => {
                    bound = Some((s, candidate));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
                Err(e) => return Err(format!("cannot open OSC port {candidate}: {e}")),
            }
        }
        let (socket, actual) =
            bound.ok_or_else(|| format!("OSC ports {port}..{} are all taken", port + 15))?;
        if actual != port {
            errors.push(format!(
                "OSC port {port} is taken (another program or instance); listening on {actual}"
            ));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("OSC socket: {e}"))?;
        // Room for bursts while the worker is busy elsewhere: ask for 4 MiB (the system caps
        // it: Linux at twice `net.core.rmem_max`, 416 KiB by default, about 3 ms of 100,000
        // small messages a second).
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(OSC_RECEIVE_BUFFER);
        let tcp = std::net::TcpListener::bind(("0.0.0.0", actual)).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(TcpListener::from_std(l))
        });
        let tcp = match tcp {
            Ok(l) => Some(l),
            Err(e) => {
                errors.push(format!("OSC over TCP on port {actual} is unavailable: {e}"));
                None
            }
        };
        Ok(Self {
            socket: mio::net::UdpSocket::from_std(socket),
            registration: None,
            port: actual,
            tcp,
            streams: Vec::new(),
            core: OscCore::new(),
            errors,
            buf: vec![0; MAX_PACKET + 1],
            transport: Vec::new(),
            backlog: Backlog::new(1_000_000),
        })
    }

    /// When input owed from a read that stopped at its budget is read (ns).
    pub fn next_read(&self) -> Option<Nanos> {
        self.backlog.due()
    }

    /// The port we listen on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Register the UDP socket and the TCP listener (and, later, every accepted controller)
    /// with the worker's readiness loop under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(&mut self.socket, token, Interest::READABLE)?;
        if let Some(listener) = &mut self.tcp {
            registry.register(listener, token, Interest::READABLE)?;
        }
        self.registration = Some((registry.try_clone()?, token));
        Ok(())
    }

    /// Receive everything waiting (if `readable`: the loop saw the token fire), run feedback,
    /// send what is due; return host changes (at once) and timed ones due within `lookahead`
    /// (with their due host time).
    pub fn poll(
        &mut self,
        now: Nanos,
        readable: bool,
        lookahead: Nanos,
    ) -> (Vec<(u64, HostParamChange)>, Vec<TimedChange>) {
        let mut out = Output::default();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_nanos() as f64);
        self.core
            .set_wall_offset(unix - crate::bridge::host_time_ns() as f64);
        let readable = self.backlog.take(now, readable);
        let mut more = false;
        if readable {
            let Self {
                socket, buf, core, ..
            } = self;
            let step = || {
                let (len, from) = socket.recv_from(buf)?;
                // A datagram that filled the whole buffer was longer than MAX_PACKET.
                let bytes = if len > MAX_PACKET {
                    &buf[..MAX_PACKET + 1]
                } else {
                    &buf[..len]
                };
                core.handle_datagram(now, from, bytes, &mut out);
                Ok(())
            };
            // ICMP errors from earlier sends to gone controllers are skipped.
            more = read_budgeted(step, || {});
        }
        more |= self.poll_streams(now, readable, &mut out);
        self.backlog.read(now, more);
        self.core.feedback(now, &mut out);
        for (to, bytes) in &out.datagrams {
            // Replies to a TCP controller go back on its connection, in its framing.
            match self.streams.iter_mut().find(|s| s.peer == *to) {
                Some(s) => {
                    let mut framed = Vec::with_capacity(bytes.len() + 8);
                    match s.framing {
                        Some(Framing::Slip) => osc::slip::encode(bytes, &mut framed),
                        _ => osc::size_prefixed::encode(bytes, &mut framed),
                    }
                    // Whole frames into a bounded buffer, written as the socket takes them: a
                    // controller that does not read loses feedback, never stalls the worker
                    // or gets a broken stream.
                    if s.out.len() + framed.len() <= STREAM_OUT_LIMIT {
                        s.out.extend_from_slice(&framed);
                    } else {
                        self.core.status.feedback_dropped += 1;
                    }
                }
                None => {
                    let _ = self.socket.send_to(bytes, *to);
                }
            }
        }
        let closed = &mut self.core.status.tcp_closed;
        self.streams.retain_mut(|s| {
            let ok = write_pending(&mut s.stream, &mut s.out);
            *closed += u64::from(!ok);
            ok
        });
        self.transport = out.transport;
        (out.changes, self.core.take_due(now, lookahead))
    }

    /// Accept TCP controllers (allowed sources only, a few per address, a stale controller's
    /// slot when all are taken) and take in their frames (within a byte budget per pass).
    /// True if a budget stopped it with input waiting.
    fn poll_streams(&mut self, now: Nanos, readable: bool, out: &mut Output) -> bool {
        let mut more = false;
        if let Some(listener) = self.tcp.as_ref().filter(|_| readable) {
            // More connections may wait if the loop ends at its count.
            more = true;
            for _ in 0..2 * MAX_STREAMS {
                let (mut stream, peer) = match listener.accept() {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        more = false;
                        break;
                    }
                };
                if !self.core.allowed(peer.ip()) {
                    self.core.status.refused_source += 1;
                    self.core.status.tcp_refused += 1;
                    continue;
                }
                let from_peer = self
                    .streams
                    .iter()
                    .filter(|s| s.peer.ip() == peer.ip())
                    .count();
                if from_peer >= MAX_STREAMS_PER_ADDRESS {
                    self.core.status.tcp_refused += 1;
                    continue;
                }
                if self.streams.len() >= MAX_STREAMS {
                    let stalest = self
                        .streams
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| {
                            s.heard
                                .is_none_or(|heard| now.saturating_sub(heard) > STALE_STREAM)
                        })
                        .map(|(i, s)| (i, s.heard.unwrap_or(0)))
                        .min_by_key(|(_, heard)| *heard)
                        .map(|(i, _)| i);
                    match stalest {
                        Some(i) => {
                            self.streams.swap_remove(i);
                            self.core.status.tcp_closed += 1;
                        }
                        None => {
                            self.core.status.tcp_refused += 1;
                            continue;
                        }
                    }
                }
                let registered = self.registration.as_ref().is_none_or(|(r, t)| {
                    r.register(&mut stream, *t, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                });
                if registered {
                    let _ = stream.set_nodelay(true);
                    self.streams.push(Stream {
                        stream,
                        peer,
                        framing: None,
                        slip: osc::slip::Decoder::new(MAX_PACKET),
                        sized: osc::size_prefixed::Decoder::new(MAX_PACKET),
                        since: now,
                        heard: None,
                        out: Vec::new(),
                    });
                }
            }
        }
        let core = &mut self.core;
        let buf = &mut self.buf;
        let unread = &mut more;
        self.streams.retain_mut(|s| {
            let keep = !readable || read_stream(s, now, core, buf, out, unread);
            // Connected, but never a valid message: nothing to serve, a slot held.
            let silent = s.heard.is_none() && now.saturating_sub(s.since) > SILENT_STREAM;
            if !keep || silent {
                core.status.tcp_closed += 1;
            }
            keep && !silent
        });
        more
    }

    /// Status.
    pub fn status(&self) -> OscStatus {
        let mut s = self.core.status();
        s.port = Some(self.port);
        s.errors.extend(self.errors.iter().cloned());
        s.tcp = self.tcp.is_some();
        s.tcp_clients = self.streams.len();
        s
    }
}

/// Read what one TCP controller sent (at most [`STREAM_READ_PER_PASS`] bytes) and hand its
/// frames to the core. False when the connection ends: closed by the peer, broken, or
/// misbehaving (a frame over the size limit cannot be skipped on a stream; a SLIP stream
/// without END never ends its frame).
fn read_stream(
    s: &mut Stream,
    now: Nanos,
    core: &mut OscCore,
    buf: &mut [u8],
    out: &mut Output,
    unread: &mut bool,
) -> bool {
    let mut taken = 0;
    loop {
        if taken >= STREAM_READ_PER_PASS {
            *unread = true;
            return true;
        }
        let room = buf.len().min(STREAM_READ_PER_PASS - taken);
        let n = match s.stream.read(&mut buf[..room]) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        taken += n;
        let bytes = &buf[..n];
        let framing = *s.framing.get_or_insert(if bytes[0] == 0xC0 {
            Framing::Slip
        } else {
            Framing::SizePrefixed
        });
        let peer = s.peer;
        let before = core.status.malformed;
        let mut frames = 0u64;
        let mut frame = |f: &[u8]| {
            frames += 1;
            core.handle_datagram(now, peer, f, out);
        };
        match framing {
            Framing::Slip => {
                s.slip.feed(bytes, &mut frame);
                if s.slip.overlong() {
                    core.status.too_large += 1;
                    return false;
                }
            }
            Framing::SizePrefixed => {
                if s.sized.feed(bytes, &mut frame).is_err() {
                    core.status.too_large += 1;
                    return false;
                }
            }
        }
        if frames > core.status.malformed - before {
            s.heard = Some(now);
        }
    }
}
