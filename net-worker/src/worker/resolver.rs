//! Host-name lookups for peers given by name, on one helper thread (`lockstep-resolve`) that
//! the worker owns and joins: the system resolver blocks for as long as it likes, so the
//! worker never calls it itself, and no detached thread can outlive the plugin's code (a DAW
//! unloading the plugin while a detached lookup runs would crash).
//!
//! The thread starts on the first lookup and runs at normal priority. Dropping the
//! [`Resolver`] closes its queue and joins the thread; a lookup in progress then finishes
//! first (the system resolver's own timeout bounds it, typically 5–10 s, and only when a name
//! server does not answer).

use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Lookups waiting at once; more are refused with an error (a directory is a few peers).
pub const MAX_WAITING: usize = 64;

/// The outcome of one lookup: an address (IPv4 preferred) or why not.
pub type Lookup = Result<SocketAddr, String>;

type Request = (String, u16, Sender<Lookup>);

/// The worker's resolver.
#[derive(Default)]
pub struct Resolver {
    requests: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("started", &self.thread.is_some())
            .finish()
    }
}

impl Resolver {
    /// Not started until the first lookup.
    pub fn new() -> Self {
        Self::default()
    }

    /// Look `host:port` up; the answer arrives on the returned channel.
    pub fn lookup(&mut self, host: &str, port: u16) -> Receiver<Lookup> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let requests = match &self.requests {
            Some(requests) => requests,
            None => match self.start() {
                Ok(requests) => requests,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start a lookup: {e}")));
                    return rx;
                }
            },
        };
        match requests.try_send((host.to_owned(), port, tx)) {
            Ok(()) => {}
            Err(TrySendError::Full((_, _, tx)) | TrySendError::Disconnected((_, _, tx))) => {
                let _ = tx.send(Err("too many host-name lookups at once".to_owned()));
            }
        }
        rx
    }

    fn start(&mut self) -> std::io::Result<&Sender<Request>> {
        let (tx, rx) = crossbeam_channel::bounded::<Request>(MAX_WAITING);
        let (named_tx, named) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("lockstep-resolve".into())
            .spawn(move || {
                let _ = named_tx.send(());
                crate::sys::normal_priority();
                for (host, port, answer) in rx {
                    let _ = answer.send(resolve(&host, port));
                }
            })?;
        // Until it has set its own name it carries the worker's: wait for that.
        let _ = named.recv();
        self.thread = Some(thread);
        Ok(self.requests.insert(tx))
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The blocking lookup (our sockets are IPv4: prefer an IPv4 address).
fn resolve(host: &str, port: u16) -> Lookup {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| "no address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `localhost` needs no name server (it is in /etc/hosts or built in); the thread is
    /// joined when the resolver goes.
    #[test]
    fn lookups_answer_and_the_thread_is_joined() {
        let mut resolver = Resolver::new();
        let answer = resolver
            .lookup("localhost", 5004)
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("answered");
        assert_eq!(answer.map(|a| a.port()), Ok(5004));
        let bad = resolver
            .lookup("no such host.invalid", 1)
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("answered");
        assert!(bad.is_err());
        let thread = resolver.thread.as_ref().map(|t| t.thread().id());
        assert!(thread.is_some());
        drop(resolver);
    }
}
