//! OSCQuery (Vidvox proposal, digest §3.7): an HTTP/1.1 server that describes the OSC address
//! space as JSON, so controllers (and OSCQuery browsers) discover every parameter with its type,
//! range, unit, description and current value by themselves.
//!
//! [`respond`] is sans-IO (request bytes in, response bytes out; requests are parsed by
//! `httparse`); [`QueryServer`] owns the non-blocking listener and connections and is polled by
//! the worker. It binds to loopback unless the user enables LAN access. A client may upgrade its
//! connection to a WebSocket (RFC 6455, spoken by `tungstenite`: fragmentation, control frames,
//! close codes) and send `{"COMMAND": "LISTEN", "DATA": path}` / `IGNORE`: every change of a
//! listened path's value then arrives as a binary frame holding the OSC message. Browsers'
//! CORS preflights (`OPTIONS`) are answered.
//!
//! Nothing a client does can hold the worker or the service: a connection slot is granted only
//! after the allow-list check, at most [`MAX_PER_ADDRESS`] per address and [`MAX_CONNECTIONS`]
//! in all (a newcomer takes the slot of a stale connection when they are full); each
//! connection reads at most [`READ_PER_PASS`] bytes a pass; a request must be complete within
//! [`REQUEST_TIMEOUT`]; a WebSocket is pinged every [`PING_INTERVAL`] and closed (with a status
//! code) when it has said nothing for [`WEBSOCKET_IDLE`]; replies wait in bounded per-connection
//! buffers, written as the socket takes them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use serde_json::{Value, json};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};

use super::osc::OscCore;
use super::runtime::{Backlog, write_pending};

/// Nanoseconds on the worker's clock.
pub type Nanos = u64;

const SECOND: Nanos = 1_000_000_000;
/// Largest request (and WebSocket message) we read.
pub const MAX_REQUEST: usize = 8192;
/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Most connections from one address at once.
pub const MAX_PER_ADDRESS: usize = 4;
/// A request not complete after this long gets 408 (a slowloris holds nothing).
pub const REQUEST_TIMEOUT: Nanos = 2 * SECOND;
/// A WebSocket is pinged this often.
pub const PING_INTERVAL: Nanos = 15 * SECOND;
/// A WebSocket that has sent nothing (not even a pong) for this long is closed.
pub const WEBSOCKET_IDLE: Nanos = 40 * SECOND;
/// When every slot is taken, a WebSocket silent this long gives its slot to a newcomer (it is
/// pinged every [`PING_INTERVAL`], so a live client answers well within it).
pub const STALE_WEBSOCKET: Nanos = PING_INTERVAL + 5 * SECOND;
/// When every slot looks live, a newcomer waits this long for a WebSocket to fail a ping.
pub const CHALLENGE_WAIT: Nanos = SECOND;
/// Bytes one connection may have read per pass; more waits for the next pass.
pub const READ_PER_PASS: usize = 16 * 1024;
/// Most paths one WebSocket listens to.
pub const MAX_LISTENS: usize = 256;
/// Most bytes waiting for a WebSocket client that does not read; newer values wait until it
/// does (it then gets the newest).
const WRITE_LIMIT: usize = 64 * 1024;
/// Most header lines in a request.
const MAX_HEADERS: usize = 32;

/// What HOST_INFO reports.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// Service name.
    pub name: String,
    /// Our OSC UDP port.
    pub osc_port: u16,
}

fn status_line(code: u16) -> &'static str {
    match code {
        200 => "200 OK",
        204 => "204 No Content",
        400 => "400 Bad Request",
        404 => "404 Not Found",
        405 => "405 Method Not Allowed",
        408 => "408 Request Timeout",
        426 => "426 Upgrade Required",
        431 => "431 Request Header Fields Too Large",
        _ => "500 Internal Server Error",
    }
}

/// An HTTP response with an optional JSON body and extra header lines (each ending in CRLF).
fn response_with(code: u16, body: Option<&Value>, extra: &str) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n{extra}\r\n",
        status_line(code),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// An HTTP response with an optional JSON body.
pub fn response(code: u16, body: Option<&Value>) -> Vec<u8> {
    response_with(code, body, "")
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A complete request, as far as we use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `OPTIONS`, …
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// `Sec-WebSocket-Key` of a GET asking to upgrade to a WebSocket.
    pub websocket_key: Option<String>,
    /// `Sec-WebSocket-Version` of that upgrade.
    pub websocket_version: Option<String>,
    /// `Access-Control-Request-Headers` of a CORS preflight.
    pub cors_headers: Option<String>,
}

/// Parse the request at the start of `buf` (`httparse`): the request and the bytes it took,
/// `Ok(None)` if incomplete, `Err` if it is not HTTP/1.x.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(used)) => used,
        Err(e) => return Err(e.to_string()),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| v.trim().to_owned())
    };
    let method = req.method.unwrap_or_default().to_owned();
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let websocket = upgrade && method == "GET";
    Ok(Some((
        Request {
            target: req.path.unwrap_or_default().to_owned(),
            websocket_key: websocket.then(|| header("sec-websocket-key")).flatten(),
            websocket_version: websocket.then(|| header("sec-websocket-version")).flatten(),
            cors_headers: header("access-control-request-headers"),
            method,
        },
        used,
    )))
}

/// The whole request is in `request`: the response.
pub fn respond(request: &[u8], core: &OscCore, host: &HostInfo) -> Vec<u8> {
    match parse_request(request) {
        Ok(Some((req, _))) => answer(&req, core, host),
        Ok(None) | Err(_) => response(400, None),
    }
}

/// The response to a parsed request (not a WebSocket upgrade).
pub fn answer(req: &Request, core: &OscCore, host: &HostInfo) -> Vec<u8> {
    match req.method.as_str() {
        "GET" => {}
        // A browser's CORS preflight: any origin may read the namespace (it is served to the
        // LAN only when the user says so), with the headers it asks for if they are plain.
        "OPTIONS" => {
            let asked = req
                .cors_headers
                .as_deref()
                .filter(|h| {
                    h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
                })
                .unwrap_or("Content-Type");
            return response_with(
                204,
                None,
                &format!(
                    "Access-Control-Allow-Methods: GET, OPTIONS\r\nAccess-Control-Allow-Headers: {asked}\r\nAccess-Control-Max-Age: 86400\r\n"
                ),
            );
        }
        _ => return response_with(405, None, "Allow: GET, OPTIONS\r\n"),
    }
    let target = req.target.split('#').next().unwrap_or_default();
    let (path, attribute) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Some(path) = percent_decode(path) else {
        return response(400, None);
    };
    if attribute == Some("HOST_INFO") {
        return response(
            200,
            Some(&json!({
                "NAME": host.name,
                "OSC_PORT": host.osc_port,
                "OSC_TRANSPORT": "UDP",
                "EXTENSIONS": {
                    "ACCESS": true, "VALUE": true, "RANGE": true, "DESCRIPTION": true,
                    "UNIT": true, "TAGS": false, "EXTENDED_TYPE": false, "CRITICAL": false,
                    "CLIPMODE": false, "LISTEN": true, "PATH_CHANGED": false
                }
            })),
        );
    }
    let tree = core.namespace();
    let mut node = &tree;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match node.get("CONTENTS").and_then(|c| c.get(part)) {
            Some(child) => node = child,
            None => return response(404, None),
        }
    }
    match attribute {
        None | Some("") => response(200, Some(node)),
        Some(attr) => {
            const KNOWN: [&str; 12] = [
                "FULL_PATH",
                "CONTENTS",
                "TYPE",
                "ACCESS",
                "VALUE",
                "RANGE",
                "DESCRIPTION",
                "TAGS",
                "EXTENDED_TYPE",
                "UNIT",
                "CRITICAL",
                "CLIPMODE",
            ];
            match node.get(attr) {
                Some(v) => response(200, Some(&json!({ attr: v }))),
                None if KNOWN.contains(&attr) => response(204, None),
                None => response(400, None),
            }
        }
    }
}

/// An HTTP connection: the request as read so far, and the reply being written.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The reply, written as the socket takes it.
    out: Vec<u8>,
    /// Close once `out` is written.
    closing: bool,
    /// Became a WebSocket once `out` (the 101) is written; the bytes after the request.
    upgrade: Option<Vec<u8>>,
}

impl Http {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            closing: false,
            upgrade: None,
        }
    }
}

/// What a connection is doing.
enum State {
    /// Reading a request, or writing the reply (then closing).
    Http(Http),
    /// A WebSocket: the paths it listens to, with the value last sent.
    Ws {
        ws: Box<WebSocket<Budgeted>>,
        listens: Vec<(String, Option<Vec<u8>>)>,
        ping_at: Nanos,
        /// We sent a close frame: drop the connection once it is written or after a second.
        closing: Option<Nanos>,
    },
    /// Finished; dropped at the end of the pass.
    Done,
}

struct Connection {
    peer: SocketAddr,
    /// When it was accepted (or its reply began).
    since: Nanos,
    /// When the client last sent anything.
    heard: Nanos,
    state: State,
}

impl Connection {
    fn is_websocket(&self) -> bool {
        matches!(self.state, State::Ws { .. })
    }

    /// May be dropped for a newcomer when every slot is taken: a request still incomplete, or a
    /// WebSocket that has said nothing for [`STALE_WEBSOCKET`] or did not answer the ping of
    /// the `challenge` (when every slot looked live) within [`CHALLENGE_WAIT`].
    fn stale(&self, now: Nanos, challenge: Option<Nanos>) -> bool {
        match self.state {
            State::Http(_) => true,
            State::Ws { .. } => {
                now.saturating_sub(self.heard) > STALE_WEBSOCKET
                    || challenge.is_some_and(|c| self.heard < c && now >= c + CHALLENGE_WAIT)
            }
            State::Done => true,
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("websocket", &self.is_websocket())
            .finish_non_exhaustive()
    }
}

/// A WebSocket's stream as tungstenite sees it: reads stop (`WouldBlock`) once the pass's
/// byte budget is spent, so a client streaming frames that never complete a message cannot
/// hold the worker inside one `read()`.
#[derive(Debug)]
struct Budgeted {
    stream: TcpStream,
    left: usize,
    spent: bool,
}

impl Read for Budgeted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            self.spent = true;
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.left);
        let got = self.stream.read(&mut buf[..n])?;
        self.left -= got;
        Ok(got)
    }
}

impl Write for Budgeted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// What the server counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryCounters {
    /// Requests answered (and WebSocket upgrades).
    pub served: u64,
    /// Requests refused: malformed, too large, timed out, a wrong WebSocket version.
    pub refused: u64,
    /// Connections refused: source not allowed, too many from its address, or every slot
    /// held by a live connection.
    pub refused_connections: u64,
    /// Connections we closed: idle WebSockets, broken frames, dropped for a newcomer.
    pub closed: u64,
    /// Value frames not sent because the client was not reading (it gets the newest later).
    pub frames_held: u64,
}

/// The socket side.
#[derive(Debug)]
pub struct QueryServer {
    listener: TcpListener,
    /// Where the sockets are registered (accepted connections join it).
    registration: Option<(Registry, Token)>,
    port: u16,
    lan: bool,
    connections: Vec<Connection>,
    /// What happened so far.
    pub counters: QueryCounters,
    /// Input owed after a budget ran out (read again after the rest).
    backlog: Backlog,
    /// When every slot looked live and a newcomer came: every WebSocket was pinged then.
    challenge: Option<Nanos>,
    /// That newcomer (accepted by the kernel, admitted by the allow-list), since when.
    waiting: Option<(TcpStream, SocketAddr, Nanos)>,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(WRITE_LIMIT)
        .max_message_size(Some(MAX_REQUEST))
        .max_frame_size(Some(MAX_REQUEST))
}

impl QueryServer {
    /// Listen on `port` (or any free one if it is taken), on loopback only unless `lan`.
    pub fn open(port: u16, lan: bool) -> Result<Self, String> {
        let ip = if lan {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::LOCALHOST
        };
        let listener = std::net::TcpListener::bind((ip, port))
            .or_else(|_| std::net::TcpListener::bind((ip, 0)))
            .map_err(|e| format!("cannot open the OSCQuery port: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("OSCQuery socket: {e}"))?;
        let listener = TcpListener::from_std(listener);
        let port = listener
            .local_addr()
            .map_err(|e| format!("OSCQuery socket: {e}"))?
            .port();
        Ok(Self {
            listener,
            registration: None,
            port,
            lan,
            connections: Vec::new(),
            counters: QueryCounters::default(),
            backlog: Backlog::new(1_000_000),
            challenge: None,
            waiting: None,
        })
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Reachable from the LAN (else loopback only).
    pub fn lan(&self) -> bool {
        self.lan
    }

    /// When input owed from a pass that stopped at a budget is read (ns).
    pub fn next_read(&self) -> Option<Nanos> {
        self.backlog.due()
    }

    /// Register the listener (and, later, every accepted connection) with the worker's
    /// readiness loop under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)?;
        self.registration = Some((registry.try_clone()?, token));
        Ok(())
    }

    /// Accept, read and answer whatever is ready; never blocks.
    pub fn poll(&mut self, now: Nanos, core: &OscCore, host: &HostInfo) {
        if !self.backlog.take(now, true) {
            return;
        }
        let mut more = self.accept(now, core);
        let counters = &mut self.counters;
        let unread = &mut more;
        for c in &mut self.connections {
            let state = std::mem::replace(&mut c.state, State::Done);
            c.state = match state {
                State::Http(http) => serve_http(c, now, http, core, host, counters, unread),
                ws @ State::Ws { .. } => serve_websocket(c, now, ws, core, counters, unread),
                State::Done => State::Done,
            };
        }
        self.connections.retain(|c| !matches!(c.state, State::Done));
        self.backlog.read(now, more);
    }

    /// Take new connections: allowed sources only, a few per address, a stale connection's
    /// slot when every slot is taken.
    /// True if it stopped at its budget with connections waiting.
    fn accept(&mut self, now: Nanos, core: &OscCore) -> bool {
        if self.connections.len() < MAX_CONNECTIONS {
            self.challenge = None;
        }
        for _ in 0..2 * MAX_CONNECTIONS {
            let (mut stream, peer, since) = match self.waiting.take() {
                Some(waiting) => waiting,
                None => match self.listener.accept() {
                    Ok((stream, peer)) => (stream, peer, now),
                    Err(_) => return false,
                },
            };
            if !(peer.ip().is_loopback() || core.allowed(peer.ip())) {
                self.counters.refused_connections += 1;
                continue;
            }
            let from_peer = self
                .connections
                .iter()
                .filter(|c| c.peer.ip() == peer.ip())
                .count();
            // Loopback is exempt: every local client (a browser's parallel requests, several
            // apps) shares 127.0.0.1; the total still bounds them.
            if from_peer >= MAX_PER_ADDRESS && !peer.ip().is_loopback() {
                self.counters.refused_connections += 1;
                continue;
            }
            if self.connections.len() >= MAX_CONNECTIONS {
                let challenge = self.challenge;
                let stalest = self
                    .connections
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.stale(now, challenge))
                    .min_by_key(|(_, c)| c.heard)
                    .map(|(i, _)| i);
                if let Some(i) = stalest {
                    self.connections.swap_remove(i);
                    self.counters.closed += 1;
                } else if now > since + REQUEST_TIMEOUT {
                    // Every slot stayed live: this newcomer is refused.
                    self.counters.refused_connections += 1;
                    continue;
                } else {
                    // Every slot is live as far as we know: ask every WebSocket to prove it
                    // (a ping now), and keep the newcomer waiting (the rest wait in the
                    // kernel's backlog) until one fails to answer.
                    if self.challenge.is_none() {
                        self.challenge = Some(now);
                        for c in &mut self.connections {
                            if let State::Ws { ping_at, .. } = &mut c.state {
                                *ping_at = now;
                            }
                        }
                    }
                    self.waiting = Some((stream, peer, since));
                    return false;
                }
            }
            let registered = self.registration.as_ref().is_none_or(|(r, t)| {
                r.register(&mut stream, *t, Interest::READABLE | Interest::WRITABLE)
                    .is_ok()
            });
            if registered {
                self.connections.push(Connection {
                    peer,
                    since: now,
                    heard: now,
                    state: State::Http(Http::new(stream)),
                });
            }
        }
        // More may be waiting: edge-triggered readiness will not say so again.
        true
    }

    /// WebSocket clients connected now.
    pub fn websockets(&self) -> usize {
        self.connections.iter().filter(|c| c.is_websocket()).count()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((
            if self.lan {
                Ipv4Addr::UNSPECIFIED
            } else {
                Ipv4Addr::LOCALHOST
            },
            self.port,
        ))
    }
}

/// One pass of an HTTP connection: write what waits, read (within the budget), answer a
/// complete request, upgrade to a WebSocket once the 101 is out.
fn serve_http(
    c: &mut Connection,
    now: Nanos,
    mut h: Http,
    core: &OscCore,
    host: &HostInfo,
    counters: &mut QueryCounters,
    unread: &mut bool,
) -> State {
    if !write_pending(&mut h.stream, &mut h.out) {
        return State::Done;
    }
    if h.upgrade.is_some() {
        if !h.out.is_empty() {
            return State::Http(h);
        }
        let rest = h.upgrade.take().unwrap_or_default();
        let stream = Budgeted {
            stream: h.stream,
            left: READ_PER_PASS,
            spent: false,
        };
        let ws = WebSocket::from_partially_read(stream, rest, Role::Server, Some(ws_config()));
        let state = State::Ws {
            ws: Box::new(ws),
            listens: Vec::new(),
            ping_at: now + PING_INTERVAL,
            closing: None,
        };
        return serve_websocket(c, now, state, core, counters, unread);
    }
    if h.closing {
        // Waiting for the client to take the reply, not forever.
        return if !h.out.is_empty() && now <= c.since + REQUEST_TIMEOUT {
            State::Http(h)
        } else {
            State::Done
        };
    }
    let mut chunk = [0u8; 2048];
    let mut taken = 0;
    loop {
        if taken >= READ_PER_PASS || h.buf.len() > MAX_REQUEST {
            *unread = true;
            break;
        }
        match h.stream.read(&mut chunk) {
            Ok(0) => return State::Done,
            Ok(n) => {
                h.buf.extend_from_slice(&chunk[..n]);
                taken += n;
                c.heard = now;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return State::Done,
        }
    }
    let reply = match parse_request(&h.buf) {
        Ok(Some((req, used))) if req.websocket_key.is_some() => {
            if req.websocket_version.as_deref() != Some("13") {
                counters.refused += 1;
                Some(response_with(426, None, "Sec-WebSocket-Version: 13\r\n"))
            } else {
                let key = req.websocket_key.unwrap_or_default();
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                counters.served += 1;
                h.out.extend_from_slice(
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                h.upgrade = Some(h.buf.split_off(used));
                h.buf = Vec::new();
                return serve_http(c, now, h, core, host, counters, unread);
            }
        }
        Ok(Some((req, _))) => {
            counters.served += 1;
            Some(answer(&req, core, host))
        }
        Err(_) => {
            counters.refused += 1;
            Some(response(400, None))
        }
        Ok(None) if h.buf.len() > MAX_REQUEST => {
            counters.refused += 1;
            Some(response(431, None))
        }
        Ok(None) if now > c.since + REQUEST_TIMEOUT => {
            counters.refused += 1;
            Some(response(408, None))
        }
        Ok(None) => None,
    };
    if let Some(bytes) = reply {
        h.out = bytes;
        h.closing = true;
        c.since = now;
        if !write_pending(&mut h.stream, &mut h.out) || h.out.is_empty() {
            return State::Done;
        }
    }
    State::Http(h)
}

/// Most WebSocket messages taken from one client per pass.
const MESSAGES_PER_PASS: usize = 64;

/// One pass of a WebSocket: read the client's messages (LISTEN / IGNORE; tungstenite answers
/// pings and closes), ping it, close it when idle or broken, and send changed values of the
/// listened paths as binary OSC frames.
fn serve_websocket(
    c: &mut Connection,
    now: Nanos,
    state: State,
    core: &OscCore,
    counters: &mut QueryCounters,
    unread: &mut bool,
) -> State {
    use tungstenite::{Error, Message};
    let State::Ws {
        mut ws,
        mut listens,
        mut ping_at,
        mut closing,
    } = state
    else {
        return state;
    };
    let mut close_with: Option<(CloseCode, &str)> = None;
    ws.get_mut().left = READ_PER_PASS;
    ws.get_mut().spent = false;
    // A connection being closed is not read any more.
    let reads = if closing.is_some() {
        0
    } else {
        MESSAGES_PER_PASS + 1
    };
    for k in 0..reads {
        if k == MESSAGES_PER_PASS {
            *unread = true;
            break;
        }
        match ws.read() {
            Ok(message) => {
                c.heard = now;
                if let Message::Text(text) = message {
                    let command: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    let path = command["DATA"].as_str().unwrap_or_default().to_owned();
                    match command["COMMAND"].as_str() {
                        // Only paths that exist: a made-up one would cost a lookup every pass.
                        Some("LISTEN")
                            if !listens.iter().any(|(p, _)| *p == path)
                                && listens.len() < MAX_LISTENS
                                && core.has_path(&path) =>
                        {
                            listens.push((path, None));
                        }
                        Some("IGNORE") => listens.retain(|(p, _)| *p != path),
                        _ => {}
                    }
                }
            }
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
            Err(Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(Error::Capacity(_)) => {
                close_with = Some((CloseCode::Size, "message too large"));
                break;
            }
            Err(Error::Protocol(_)) => {
                close_with = Some((CloseCode::Protocol, "protocol error"));
                break;
            }
            Err(Error::Utf8(_)) => {
                close_with = Some((CloseCode::Invalid, "text is not UTF-8"));
                break;
            }
            // Closed (by the client's close, answered by tungstenite) or broken.
            Err(_) => return State::Done,
        }
    }
    if ws.get_ref().spent {
        *unread = true;
    }
    if closing.is_none() && close_with.is_none() && now > c.heard + WEBSOCKET_IDLE {
        close_with = Some((CloseCode::Away, "idle"));
    }
    if closing.is_none()
        && let Some((code, reason)) = close_with
    {
        counters.closed += 1;
        let _ = ws.close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        closing = Some(now);
    }
    if let Some(since) = closing {
        // Written, or given a second: then the connection goes.
        return match ws.flush() {
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock && now < since + SECOND => {
                State::Ws {
                    ws,
                    listens,
                    ping_at,
                    closing,
                }
            }
            _ => State::Done,
        };
    }
    if now >= ping_at {
        ping_at = now + PING_INTERVAL;
        let _ = ws.write(Message::Ping(Vec::new().into()));
    }
    for (path, last) in &mut listens {
        let Some(message) = core.value_message(path) else {
            continue;
        };
        let mut bytes = Vec::new();
        crate::proto::osc::encode_message(&message, &mut bytes);
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        match ws.write(Message::Binary(bytes.clone().into())) {
            Ok(()) => *last = Some(bytes),
            // A client that does not read: the newest value goes when it reads again.
            Err(Error::WriteBufferFull(_)) => {
                counters.frames_held += 1;
                break;
            }
            Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => *last = Some(bytes),
            Err(_) => return State::Done,
        }
    }
    match ws.flush() {
        Ok(()) => {}
        Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
        Err(_) => return State::Done,
    }
    State::Ws {
        ws,
        listens,
        ping_at,
        closing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_httparse_and_upgrades_are_recognised() {
        let raw = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nrest";
        let (req, used) = parse_request(raw).expect("http").expect("complete");
        assert_eq!(used, raw.len() - 4);
        assert_eq!(
            req.websocket_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(req.websocket_version.as_deref(), Some("13"));
        // RFC 6455 §1.3's example key.
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(parse_request(&raw[..20]), Ok(None), "incomplete");
        assert!(parse_request(b"\x16\x03\x01 TLS hello\r\n\r\n").is_err());
    }

    #[test]
    fn a_browser_preflight_is_answered_and_other_methods_refused() {
        let core = OscCore::new();
        let host = HostInfo {
            name: "t".into(),
            osc_port: 8000,
        };
        let raw = respond(
            b"OPTIONS / HTTP/1.1\r\nOrigin: http://x\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
            &core,
            &host,
        );
        let text = String::from_utf8(raw).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 204"), "{text}");
        assert!(text.contains("Access-Control-Allow-Origin: *"), "{text}");
        assert!(
            text.contains("Access-Control-Allow-Methods: GET, OPTIONS"),
            "{text}"
        );
        assert!(
            text.contains("Access-Control-Allow-Headers: content-type"),
            "{text}"
        );
        let raw = respond(b"DELETE / HTTP/1.1\r\n\r\n", &core, &host);
        let text = String::from_utf8(raw).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 405") && text.contains("Allow: GET, OPTIONS"));
    }
}
