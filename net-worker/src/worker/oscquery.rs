//! OSCQuery (Vidvox proposal, digest §3.7): an HTTP/1.1 server that describes the OSC address
//! space as JSON, so controllers (and OSCQuery browsers) discover every parameter with its type,
//! range, unit, description and current value by themselves.
//!
//! [`respond`] is sans-IO (request bytes in, response bytes out); [`QueryServer`] owns the
//! non-blocking listener and connections and is polled by the worker. It binds to loopback
//! unless the user enables LAN access. A client may upgrade its connection to a WebSocket
//! (RFC 6455) and send `{"COMMAND": "LISTEN", "DATA": path}` / `IGNORE`: every change of a
//! listened path's value then arrives as a binary frame holding the OSC message.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use serde_json::{Value, json};

use super::osc::OscCore;

/// Nanoseconds on the worker's clock.
pub type Nanos = u64;

/// Largest request we read.
pub const MAX_REQUEST: usize = 8192;
/// Most connections open at once (more wait in the kernel's backlog).
pub const MAX_CONNECTIONS: usize = 16;
/// A request not complete after this long gets 408.
pub const REQUEST_TIMEOUT: Nanos = 2_000_000_000;

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
        _ => "500 Internal Server Error",
    }
}

/// An HTTP response with an optional JSON body.
pub fn response(code: u16, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n\r\n",
        status_line(code),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
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

/// The whole request is in `request` (ends with a blank line): the response.
pub fn respond(request: &[u8], core: &OscCore, host: &HostInfo) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(request) else {
        return response(400, None);
    };
    let mut words = text.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next());
    let Some(target) = target else {
        return response(400, None);
    };
    if method != "GET" {
        return response(405, None);
    }
    let target = target.split('#').next().unwrap_or_default();
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

struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes still to write (a reply, WebSocket frames): written as the socket takes them,
    /// never by blocking the worker.
    out: Vec<u8>,
    /// Close once `out` is written (an HTTP reply).
    closing: bool,
    since: Nanos,
    /// Upgraded to a WebSocket: the paths it listens to, with the value last sent.
    socket: Option<Vec<(String, Option<Vec<u8>>)>>,
}

/// SHA-1 (FIPS 180-4), for the WebSocket handshake only.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Sec-WebSocket-Accept` value for a client's key (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&input))
}

/// A client frame: (opcode, unmasked payload, bytes it took).
pub type ClientFrame = (u8, Vec<u8>, usize);

/// One unmasked server frame.
pub fn websocket_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A client frame at the start of `b`: (opcode, unmasked payload, bytes used), or `None` if
/// incomplete. Errors (unmasked client frame, too large) as `Err`.
pub fn parse_client_frame(b: &[u8]) -> Result<Option<ClientFrame>, &'static str> {
    if b.len() < 2 {
        return Ok(None);
    }
    let opcode = b[0] & 0x0F;
    if b[1] & 0x80 == 0 {
        return Err("client frames must be masked");
    }
    let (len, mut at) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (
                usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                10,
            )
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if len > MAX_REQUEST {
        return Err("frame too large");
    }
    let Some(mask) = b.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    let Some(data) = b.get(at..at + len) else {
        return Ok(None);
    };
    let payload = data
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i % 4])
        .collect();
    Ok(Some((opcode, payload, at + len)))
}

/// The `Sec-WebSocket-Key` of a GET that asks to upgrade to a WebSocket.
fn upgrade_key(request: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(request).ok()?;
    let mut upgrade = false;
    let mut key = None;
    for line in text.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.trim().eq_ignore_ascii_case("websocket"),
            "sec-websocket-key" => key = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    (text.starts_with("GET ") && upgrade)
        .then_some(key)
        .flatten()
}

/// Read the client's frames (LISTEN / IGNORE, ping, close) and send changed values of the
/// listened paths as binary OSC frames. False when the connection is done.
fn serve_websocket(
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    listens: &mut Vec<(String, Option<Vec<u8>>)>,
    core: &OscCore,
) -> bool {
    loop {
        match parse_client_frame(buf) {
            Ok(Some((opcode, payload, used))) => {
                buf.drain(..used);
                match opcode {
                    0x1 => {
                        let command: Value = serde_json::from_slice(&payload).unwrap_or_default();
                        let path = command["DATA"].as_str().unwrap_or_default().to_owned();
                        match command["COMMAND"].as_str() {
                            Some("LISTEN")
                                if !listens.iter().any(|(p, _)| *p == path)
                                    && listens.len() < 256 =>
                            {
                                listens.push((path, None));
                            }
                            Some("IGNORE") => listens.retain(|(p, _)| *p != path),
                            _ => {}
                        }
                    }
                    0x8 => {
                        out.extend_from_slice(&websocket_frame(0x8, &[]));
                        return false;
                    }
                    0x9 => out.extend_from_slice(&websocket_frame(0xA, &payload)),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(_) => return false,
        }
    }
    for (path, last) in listens.iter_mut() {
        let Some(message) = core.value_message(path) else {
            continue;
        };
        let mut bytes = Vec::new();
        crate::proto::osc::encode_message(&message, &mut bytes);
        // A client that does not read gets no more frames once a few are waiting (it sees the
        // newest value when it reads again); whole frames only, so the stream stays intact.
        if last.as_ref() != Some(&bytes) && out.len() < MAX_REQUEST {
            out.extend_from_slice(&websocket_frame(0x2, &bytes));
            *last = Some(bytes);
        }
    }
    true
}

/// Write what `c.out` holds as far as the socket takes it. False when the connection broke.
fn flush(c: &mut Connection) -> bool {
    while !c.out.is_empty() {
        match c.stream.write(&c.out) {
            Ok(0) => return false,
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
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
    /// Requests answered.
    pub served: u64,
    /// Requests refused (malformed, too large, timed out).
    pub refused: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
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
            served: 0,
            refused: 0,
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

    /// Register the listener (and, later, every accepted connection) with the worker's
    /// readiness loop under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)?;
        self.registration = Some((registry.try_clone()?, token));
        Ok(())
    }

    /// Accept, read and answer whatever is ready; never blocks. Replies a client does not
    /// read at once wait in its connection's output buffer until the socket takes them (or
    /// the request timeout ends the connection).
    pub fn poll(&mut self, now: Nanos, core: &OscCore, host: &HostInfo) {
        while self.connections.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((mut stream, _peer)) => {
                    let registered = self.registration.as_ref().is_none_or(|(r, t)| {
                        r.register(&mut stream, *t, Interest::READABLE | Interest::WRITABLE)
                            .is_ok()
                    });
                    if registered {
                        self.connections.push(Connection {
                            stream,
                            buf: Vec::new(),
                            out: Vec::new(),
                            closing: false,
                            since: now,
                            socket: None,
                        });
                    }
                }
                Err(_) => break,
            }
        }
        let mut chunk = [0u8; 2048];
        self.connections.retain_mut(|c| {
            if !flush(c) {
                return false;
            }
            if c.closing {
                // Waiting for the client to take the reply, not forever.
                return !c.out.is_empty() && now <= c.since + REQUEST_TIMEOUT;
            }
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => return false,
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
                if c.buf.len() > MAX_REQUEST {
                    break;
                }
            }
            if let Some(listens) = &mut c.socket {
                let open = serve_websocket(&mut c.out, &mut c.buf, listens, core);
                return flush(c) && open;
            }
            let complete = c.buf.windows(4).any(|w| w == b"\r\n\r\n");
            if complete && let Some(key) = upgrade_key(&c.buf) {
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    websocket_accept(&key)
                );
                self.served += 1;
                c.buf.clear();
                c.socket = Some(Vec::new());
                c.out.extend_from_slice(reply.as_bytes());
                return flush(c);
            }
            let reply = if c.buf.len() > MAX_REQUEST {
                self.refused += 1;
                Some(response(400, None))
            } else if complete {
                self.served += 1;
                Some(respond(&c.buf, core, host))
            } else if now > c.since + REQUEST_TIMEOUT {
                self.refused += 1;
                Some(response(408, None))
            } else {
                None
            };
            match reply {
                Some(bytes) => {
                    c.out = bytes;
                    c.closing = true;
                    c.since = now;
                    flush(c) && !c.out.is_empty()
                }
                None => true,
            }
        });
    }

    /// WebSocket clients connected now.
    pub fn websockets(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| c.socket.is_some())
            .count()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_base64_and_the_rfc_6455_handshake_example() {
        assert_eq!(
            sha1(b"abc"),
            [
                0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
                0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
            ]
        );
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        // RFC 6455 §1.3.
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn client_frames_unmask_and_bad_ones_are_refused() {
        // RFC 6455 §5.7: a masked "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            parse_client_frame(&frame),
            Ok(Some((1, b"Hello".to_vec(), frame.len())))
        );
        assert_eq!(parse_client_frame(&frame[..5]), Ok(None));
        assert!(parse_client_frame(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']).is_err());
        assert_eq!(websocket_frame(0x2, &[1, 2]), vec![0x82, 2, 1, 2]);
    }
}
