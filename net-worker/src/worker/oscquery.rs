//! OSCQuery (Vidvox proposal, digest §3.7): an HTTP/1.1 server that describes the OSC address
//! space as JSON, so controllers (and OSCQuery browsers) discover every parameter with its type,
//! range, unit, description and current value by themselves.
//!
//! [`respond`] is sans-IO (request bytes in, response bytes out); [`QueryServer`] owns the
//! non-blocking listener and connections and is polled by the worker. It binds to loopback
//! unless the user enables LAN access. WebSocket streaming (LISTEN/IGNORE) is not served yet:
//! HOST_INFO says so (`LISTEN: false`).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

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
                    "CLIPMODE": false, "LISTEN": false, "PATH_CHANGED": false
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
    since: Nanos,
}

/// The socket side.
#[derive(Debug)]
pub struct QueryServer {
    listener: TcpListener,
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
        let listener = TcpListener::bind((ip, port))
            .or_else(|_| TcpListener::bind((ip, 0)))
            .map_err(|e| format!("cannot open the OSCQuery port: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("OSCQuery socket: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("OSCQuery socket: {e}"))?
            .port();
        Ok(Self {
            listener,
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

    /// Accept, read and answer whatever is ready; never blocks.
    pub fn poll(&mut self, now: Nanos, core: &OscCore, host: &HostInfo) {
        while self.connections.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _peer)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.connections.push(Connection {
                            stream,
                            buf: Vec::new(),
                            since: now,
                        });
                    }
                }
                Err(_) => break,
            }
        }
        let mut chunk = [0u8; 2048];
        self.connections.retain_mut(|c| {
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => return false,
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
                if c.buf.len() > MAX_REQUEST {
                    break;
                }
            }
            let complete = c.buf.windows(4).any(|w| w == b"\r\n\r\n");
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
                    // Small replies fit the socket buffer; a client that does not read is
                    // dropped rather than waited for.
                    let _ = c.stream.set_nonblocking(false);
                    let _ = c
                        .stream
                        .set_write_timeout(Some(std::time::Duration::from_millis(50)));
                    let _ = c.stream.write_all(&bytes);
                    false
                }
                None => true,
            }
        });
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
