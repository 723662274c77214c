//! What the status shows of mDNS / DNS-SD: what we advertise and what we found.

use serde::{Deserialize, Serialize};

/// One service found on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundService {
    /// Instance name as advertised ("Studio B").
    pub name: String,
    /// Service type (`_apple-midi._udp.local.`).
    pub service: String,
    /// Host name it gave (`studio-b.local.`).
    pub host: String,
    /// Its port (the AppleMIDI control port).
    pub port: u16,
    /// Its addresses.
    pub addresses: Vec<String>,
}

/// What the status shows about discovery.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// The names we advertise, as full DNS-SD names.
    pub advertised: Vec<String>,
    /// Services found on the network (our own excluded).
    pub found: Vec<FoundService>,
    /// Why discovery is not working, if it is not.
    pub error: Option<String>,
}
