//! Windows: the highest thread priority, `QueryPerformanceCounter` (std's `Instant`) for
//! Link's clock as Ableton's library uses, `if-addrs` for the interface list, and no kernel
//! receive timestamps on UDP sockets: an arrival is taken when the worker reads it, late by
//! however long its wake-up took (the status says so).

use std::io;
use std::net::SocketAddr;

use thread_priority::ThreadPriority;

/// How datagram arrival times are taken here.
pub const RX_STAMPS: &str = "read time (Windows has no receive timestamps on UDP: late by the worker's wake-up, \
     typically under 1 ms)";

/// See [`super::realtime`].
pub fn realtime(_priority: u8) -> String {
    match thread_priority::set_current_thread_priority(ThreadPriority::Max) {
        Ok(()) => "highest priority (THREAD_PRIORITY_HIGHEST)".to_owned(),
        Err(e) => format!("normal (raising refused: {e:?})"),
    }
}

/// Threads do not inherit a raised priority on Windows: nothing to undo.
pub fn normal_priority() {}

/// Windows' timer resolution applies (see the README's platform notes).
pub fn precise_timers() {}

/// Link's clock, µs: std's `Instant` (`QueryPerformanceCounter`, Link's clock on Windows).
pub fn link_clock_micros() -> i64 {
    (crate::bridge::host_time_ns() / 1_000) as i64
}

/// Not offered here: no test compares two processes' clocks on this OS.
pub fn host_clock_origin_ns() -> Option<u64> {
    None
}

/// No receive timestamps on Windows.
pub fn enable_rx_timestamps<S>(_socket: &S) -> bool {
    false
}

/// The plain read; the age is unknown (the caller uses the read time).
pub fn recv_stamped(
    socket: &mio::net::UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<u64>)> {
    socket.recv_from(buf).map(|(n, from)| (n, from, None))
}

/// Every IPv4 interface address (Windows gives no multicast flag: an interface that is up
/// counts, as Ableton's library takes every address there).
pub fn ipv4_interfaces() -> Result<Vec<super::Interface>, String> {
    let list =
        if_addrs::get_if_addrs().map_err(|e| format!("cannot list network interfaces: {e}"))?;
    Ok(list
        .into_iter()
        .filter_map(|i| match &i.addr {
            if_addrs::IfAddr::V4(v4) => Some(super::Interface {
                name: i.name.clone(),
                address: v4.ip,
                prefix: v4.prefixlen,
                usable: i.is_oper_up(),
                loopback: i.is_loopback(),
            }),
            if_addrs::IfAddr::V6(_) => None,
        })
        .collect())
}

/// This computer's name.
pub fn host_name() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_default()
}
