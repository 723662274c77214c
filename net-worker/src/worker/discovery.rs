//! mDNS / DNS-SD for the whole process (one responder shared by every instance, like the
//! worker): each instance's RTP-MIDI session is advertised as `_apple-midi._udp` under
//! "Lockstep (host)" (the session name and this computer's name), and AppleMIDI peers on the
//! network are browsed and listed in the status, so users can pick a studio instead of typing
//! an address.
//!
//! `mdns-sd` runs its own daemon thread (its API is channels and non-blocking sends); the
//! worker only sends it commands and drains its events, never waits on it. The daemon starts
//! with the first advertisement and stops with the worker.

pub use crate::status::discovery::{DiscoveryStatus, FoundService};
use std::collections::BTreeMap;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

/// AppleMIDI's DNS-SD service type.
pub const APPLE_MIDI: &str = "_apple-midi._udp.local.";

/// The process's mDNS responder and browser.
#[derive(Default)]
pub struct Discovery {
    daemon: Option<ServiceDaemon>,
    error: Option<String>,
    browsing: Option<mdns_sd::Receiver<ServiceEvent>>,
    found: BTreeMap<String, FoundService>,
    /// Our advertisements: instance id → full names.
    ours: BTreeMap<u64, Vec<String>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("running", &self.daemon.is_some())
            .field("ours", &self.ours)
            .finish_non_exhaustive()
    }
}

/// This computer's name, for "Lockstep (host)" and `host.local.`.
pub fn host_name() -> String {
    let raw = crate::sys::host_name();
    let name: String = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if name.is_empty() {
        "lockstep".to_owned()
    } else {
        name
    }
}

/// The host name one registration's SRV record points at: this computer's name and a stable
/// hash of the service's full name (`studio-1a2b3c4d.local.`). mdns-sd multicasts a record at
/// most once a second per interface, additional records included, keyed by name, type and
/// data: services sharing one host name share one A record, so every answer but the first in
/// a second went out without an address (a querier could not reach that service without asking
/// again), and withdrawing one service sent a goodbye for the address the others still use.
pub fn service_host(host: &str, full_name: &str) -> String {
    let hash = full_name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    // A DNS label is at most 63 bytes: the name, a dash and 8 hex digits.
    let host: String = host.chars().take(54).collect();
    format!("{host}-{hash:08x}.local.")
}

impl Discovery {
    /// Not started; nothing is sent until the first advertisement.
    pub fn new() -> Self {
        Self::default()
    }

    fn daemon(&mut self) -> Option<&ServiceDaemon> {
        if self.daemon.is_none() {
            // The daemon's thread inherits its creator's scheduling: start it from a helper at
            // normal priority, so a flood of mDNS traffic never competes with the clock.
            let started = std::thread::scope(|scope| {
                std::thread::Builder::new()
                    .name("lockstep-mdns-start".into())
                    .spawn_scoped(scope, || {
                        crate::sys::normal_priority();
                        ServiceDaemon::new()
                    })
                    .map_err(|e| mdns_sd::Error::Msg(e.to_string()))?
                    .join()
                    .unwrap_or_else(|_| Err(mdns_sd::Error::Msg("start panicked".into())))
            });
            match started {
                Ok(daemon) => {
                    match daemon.browse(APPLE_MIDI) {
                        Ok(rx) => self.browsing = Some(rx),
                        Err(e) => self.error = Some(format!("mDNS browse failed: {e}")),
                    }
                    self.daemon = Some(daemon);
                }
                Err(e) => self.error = Some(format!("mDNS is unavailable: {e}")),
            }
        }
        self.daemon.as_ref()
    }

    /// Advertise instance `id`'s AppleMIDI session `session` on control port `port` as
    /// "`session` (host)" (with " 2", " 3", … if another instance here has that name).
    pub fn advertise_rtp_midi(&mut self, id: u64, session: &str, port: u16) {
        self.withdraw(id);
        let host = host_name();
        let base = format!("{session} ({host})");
        let taken = |name: &str| {
            let full = format!("{name}.{APPLE_MIDI}");
            self.ours.values().flatten().any(|n| *n == full)
        };
        let name = (1..)
            .map(|i| {
                if i == 1 {
                    base.clone()
                } else {
                    format!("{base} {i}")
                }
            })
            .find(|n| !taken(n))
            .unwrap_or(base);
        self.register(id, APPLE_MIDI, &name, port);
    }

    /// Register instance name `name` of service type `ty` on `port` under `key`.
    fn register(&mut self, key: u64, ty: &str, name: &str, port: u16) {
        let host = service_host(&host_name(), &format!("{name}.{ty}"));
        let info = match ServiceInfo::new(
            ty,
            name,
            &host,
            "",
            port,
            None::<std::collections::HashMap<String, String>>,
        ) {
            Ok(info) => info.enable_addr_auto(),
            Err(e) => {
                self.error = Some(format!("cannot advertise {name:?}: {e}"));
                return;
            }
        };
        let full = info.get_fullname().to_owned();
        let Some(daemon) = self.daemon() else { return };
        match daemon.register(info) {
            Ok(()) => self.ours.entry(key).or_default().push(full),
            Err(e) => self.error = Some(format!("cannot advertise {name:?}: {e}")),
        }
    }

    /// Advertise service type `ty` (e.g. `_osc._udp.local.`) under `key` as "`what` (host)".
    pub fn advertise(&mut self, key: u64, ty: &str, what: &str, port: u16) {
        let name = format!("{what} ({})", host_name());
        self.register(key, ty, &name, port);
    }

    /// Stop advertising instance `id`.
    pub fn withdraw(&mut self, id: u64) {
        let Some(names) = self.ours.remove(&id) else {
            return;
        };
        if let Some(daemon) = &self.daemon {
            for name in names {
                // The goodbye packets go out from the daemon thread; no need to wait.
                let _ = daemon.unregister(&name);
            }
        }
    }

    /// Take in what the browser found (never blocks). True if the list changed.
    pub fn poll(&mut self) -> bool {
        let Some(rx) = &self.browsing else {
            return false;
        };
        let mut changed = false;
        while let Ok(event) = rx.try_recv() {
            changed = true;
            match event {
                ServiceEvent::ServiceResolved(service) => {
                    let mut addresses: Vec<String> = service
                        .get_addresses()
                        .iter()
                        .map(|a| a.to_ip_addr().to_string())
                        .collect();
                    addresses.sort();
                    let name = service
                        .fullname
                        .strip_suffix(&format!(".{}", service.ty_domain))
                        .unwrap_or(&service.fullname)
                        .replace("\\", "");
                    self.found.insert(
                        service.fullname.clone(),
                        FoundService {
                            name,
                            service: service.ty_domain.clone(),
                            host: service.host.clone(),
                            port: service.port,
                            addresses,
                        },
                    );
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    self.found.remove(&fullname);
                }
                _ => {}
            }
        }
        changed
    }

    /// The status.
    pub fn status(&self) -> DiscoveryStatus {
        let ours: Vec<String> = self.ours.values().flatten().cloned().collect();
        DiscoveryStatus {
            found: self
                .found
                .iter()
                .filter(|(full, _)| !ours.contains(full))
                .map(|(_, s)| s.clone())
                .collect(),
            advertised: ours,
            error: self.error.clone(),
        }
    }

    /// Withdraw everything and stop the daemon (goodbyes are sent).
    pub fn shutdown(&mut self) {
        let ids: Vec<u64> = self.ours.keys().copied().collect();
        for id in ids {
            self.withdraw(id);
        }
        if let Some(daemon) = self.daemon.take()
            && let Ok(done) = daemon.shutdown()
        {
            // Bounded: the daemon answers within milliseconds; never hang the worker's exit.
            let _ = done.recv_timeout(std::time::Duration::from_secs(1));
        }
        self.browsing = None;
        self.found.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_is_a_dns_label() {
        let name = host_name();
        assert!(!name.is_empty());
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{name}"
        );
    }

    #[test]
    fn every_service_gets_its_own_stable_host_label() {
        let a = service_host("studio", "Lockstep (studio)._apple-midi._udp.local.");
        let b = service_host("studio", "Lockstep (studio)._osc._udp.local.");
        assert_ne!(a, b);
        assert_eq!(
            a,
            service_host("studio", "Lockstep (studio)._apple-midi._udp.local.")
        );
        assert!(a.starts_with("studio-") && a.ends_with(".local."), "{a}");
        let long = service_host(&"x".repeat(80), "n._osc._udp.local.");
        let label = long.trim_end_matches(".local.");
        assert!(label.len() <= 63, "{label}");
    }
}
