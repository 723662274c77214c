//! The socket side of the OSC bridge: [`OscServer`] owns the process's one UDP port (and OSC
//! over TCP on the same port number, SLIP or size-prefixed framing), feeds what arrives to its
//! [`OscCore`], and sends what the core asks for. Everything else in `osc` is sans-IO.
//!
//! Every socket is registered with the worker's readiness loop under one token
//! ([`OscServer::register`]); the worker calls [`OscServer::poll`] with `readable` set when
//! that token fired, so an idle OSC port costs no system call.

use crate::worker::runtime::{READ_BUDGET, read_budgeted};
use std::io::ErrorKind;
use std::io::{Read, Write};
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
    /// The last poll stopped at its read budget with input still waiting: read again on the
    /// next pass (edge-triggered readiness will not say so again).
    unread: bool,
}

/// Most TCP controllers at once.
pub const MAX_STREAMS: usize = 16;

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
            unread: false,
        })
    }

    /// Input is still waiting from the last poll (it stopped at its budget).
    pub fn unread(&self) -> bool {
        self.unread
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
        let readable = readable || self.unread;
        self.unread = false;
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
            self.unread = read_budgeted(step, || {});
        }
        if readable {
            self.poll_streams(now, &mut out);
        }
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
                    // Non-blocking: a controller that does not read loses feedback, never
                    // stalls the worker.
                    let _ = s.stream.write_all(&framed);
                }
                None => {
                    let _ = self.socket.send_to(bytes, *to);
                }
            }
        }
        self.transport = out.transport;
        (out.changes, self.core.take_due(now, lookahead))
    }

    /// Accept TCP controllers and take in their frames.
    fn poll_streams(&mut self, now: Nanos, out: &mut Output) {
        if let Some(listener) = &self.tcp {
            while self.streams.len() < MAX_STREAMS {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let registered = self.registration.as_ref().is_none_or(|(r, t)| {
                            r.register(&mut stream, *t, Interest::READABLE).is_ok()
                        });
                        if registered {
                            let _ = stream.set_nodelay(true);
                            self.streams.push(Stream {
                                stream,
                                peer,
                                framing: None,
                                slip: osc::slip::Decoder::new(MAX_PACKET),
                                sized: osc::size_prefixed::Decoder::new(MAX_PACKET),
                            });
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        let core = &mut self.core;
        let buf = &mut self.buf;
        let unread = &mut self.unread;
        self.streams.retain_mut(|s| {
            let mut budget = READ_BUDGET;
            loop {
                if budget == 0 {
                    *unread = true;
                    return true;
                }
                budget -= 1;
                let n = match s.stream.read(buf) {
                    Ok(0) => return false,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                };
                let bytes = &buf[..n];
                let framing = *s.framing.get_or_insert(if bytes[0] == 0xC0 {
                    Framing::Slip
                } else {
                    Framing::SizePrefixed
                });
                let peer = s.peer;
                let mut frame = |f: &[u8]| core.handle_datagram(now, peer, f, out);
                match framing {
                    Framing::Slip => s.slip.feed(bytes, &mut frame),
                    Framing::SizePrefixed => {
                        if s.sized.feed(bytes, &mut frame).is_err() {
                            // A frame over the limit cannot be skipped on a stream.
                            core.status.too_large += 1;
                            return false;
                        }
                    }
                }
            }
        });
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
