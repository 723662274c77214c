//! The few OS-specific calls the network side needs, behind one portable set of functions
//! whose bodies live in one small module per OS. Everything else in the crate is portable
//! (std, `mio`, `socket2`).
//!
//! | call | Linux | macOS | Windows |
//! |---|---|---|---|
//! | [`realtime`] | `SCHED_FIFO` at the given priority | highest priority (thread-priority) | highest priority (thread-priority) |
//! | [`normal_priority`] | `SCHED_OTHER`, nice 0 | nothing (threads do not inherit) | nothing |
//! | [`precise_timers`] | timer slack 1 µs (`PR_SET_TIMERSLACK`) | nothing needed | nothing (Windows' timer resolution applies) |
//! | [`link_clock_micros`] | `CLOCK_MONOTONIC_RAW` (Link's own) | std's `Instant`: `mach_absolute_time`'s clock (Link's own) | std's `Instant`: `QueryPerformanceCounter` (Link's own) |
//! | [`enable_rx_timestamps`] / [`recv_stamped`] | `SO_TIMESTAMPNS` | `SO_TIMESTAMP` (µs) | none: the read time (see [`RX_STAMPS`]) |
//! | [`ipv4_interfaces`] | `getifaddrs` | `getifaddrs` | `if-addrs` (GetAdaptersAddresses) |
//! | [`share_port`] | `SO_REUSEADDR` + `SO_REUSEPORT` | `SO_REUSEADDR` + `SO_REUSEPORT` (as Link's asio does) | `SO_REUSEADDR` |
//! | [`host_name`] | `gethostname` | `gethostname` | `COMPUTERNAME` |
//! | [`host_clock_origin_ns`] | the host clock's zero on `CLOCK_MONOTONIC` | none | none |

use std::net::Ipv4Addr;

#[cfg(all(unix, not(target_os = "linux")))]
mod apple;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(all(unix, not(target_os = "linux")))]
use apple as os;
#[cfg(target_os = "linux")]
use linux as os;
#[cfg(windows)]
use windows as os;

#[cfg(unix)]
pub use unix::{enable_rx_timestamps, host_name, ipv4_interfaces, recv_stamped};
#[cfg(windows)]
pub use windows::{enable_rx_timestamps, host_name, ipv4_interfaces, recv_stamped};

pub use os::{RX_STAMPS, host_clock_origin_ns, link_clock_micros, normal_priority, precise_timers};

/// One IPv4 address of a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The OS's name for it (`eth0`, `en0`, `Wi-Fi`).
    pub name: String,
    /// The address.
    pub address: Ipv4Addr,
    /// Prefix length of its network.
    pub prefix: u8,
    /// Up (and, where the OS says, multicast-capable).
    pub usable: bool,
    /// The loopback interface.
    pub loopback: bool,
}

/// Ask for realtime scheduling for the calling thread at `priority` (1..99 on Linux's
/// `SCHED_FIFO` scale); returns what was granted, in words, for the status. Refusal (no
/// `CAP_SYS_NICE`, an rtprio limit) is normal and harmless. `LOCKSTEP_NO_REALTIME` in the
/// environment skips it.
pub fn realtime(priority: u8) -> String {
    if std::env::var_os("LOCKSTEP_NO_REALTIME").is_some() {
        return "normal (LOCKSTEP_NO_REALTIME is set)".to_owned();
    }
    os::realtime(priority)
}

/// Let another program (Ableton Live, another Link app) bind the same UDP port: Link's
/// discovery port 20808 is shared by every Link peer on a machine.
pub fn share_port(socket: &socket2::Socket) -> std::io::Result<()> {
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    Ok(())
}
