//! The few OS-specific calls the network side needs, each behind one function whose body is
//! chosen per OS: thread scheduling (realtime for the send path, normal for helper threads),
//! timer precision, and kernel receive timestamps on UDP sockets. Everything else in the
//! crate is portable (std, `mio`, `socket2`).
//!
//! | call | Linux | macOS | Windows |
//! |---|---|---|---|
//! | [`realtime`] | `SCHED_FIFO` at the given priority | highest normal priority | highest normal priority |
//! | [`precise_timers`] | timer slack 1 µs (`PR_SET_TIMERSLACK`) | nothing needed | nothing |
//! | [`enable_rx_timestamps`] / [`recv_stamped`] | `SO_TIMESTAMPNS` | `SO_TIMESTAMP` (µs) | none: the read time (bias: how late the worker reads) |

use std::io;
use std::net::SocketAddr;

/// Ask for realtime scheduling for the calling thread at `priority` (1..99 on Linux's
/// `SCHED_FIFO` scale); returns what was granted, in words, for the status. Refusal (no
/// `CAP_SYS_NICE`, an rtprio limit) is normal and harmless. `LOCKSTEP_NO_REALTIME` in the
/// environment skips it.
pub fn realtime(priority: u8) -> String {
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    if std::env::var_os("LOCKSTEP_NO_REALTIME").is_some() {
        return "normal (LOCKSTEP_NO_REALTIME is set)".to_owned();
    }
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            RealtimeThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let value = ThreadPriorityValue::try_from(priority).unwrap_or_default();
        match set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(value),
            ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
        ) {
            Ok(()) => format!("realtime (SCHED_FIFO, priority {priority})"),
            Err(e) => format!("normal (realtime refused: {e:?})"),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (priority, ThreadPriorityValue::MAX);
        match thread_priority::set_current_thread_priority(ThreadPriority::Max) {
            Ok(()) => "highest normal priority".to_owned(),
            Err(e) => format!("normal (raising refused: {e:?})"),
        }
    }
}

/// Put the calling thread back to normal scheduling. Threads inherit their creator's policy,
/// so helper threads started from a realtime thread (host-name lookups, the mDNS daemon) call
/// this first: a flood of work there must never compete with the clock.
pub fn normal_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        // thread-priority maps its 0..99 scale onto nice 19..-20 for SCHED_OTHER: 48 is nice 0
        // (the unit test below reads the nice value back, so a change there fails loudly).
        let _ = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(NICE_ZERO.try_into().unwrap_or_default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
        );
    }
}

/// thread-priority's cross-platform value that is nice 0 under `SCHED_OTHER`.
#[cfg(target_os = "linux")]
const NICE_ZERO: u8 = 48;

/// Make the calling thread's timed sleeps as precise as the OS allows (Linux: timer slack of
/// 1 µs instead of 50 µs; realtime threads have none anyway).
pub fn precise_timers() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_timerslack(1);
}

/// Ask the kernel to stamp every datagram `socket` receives with its arrival time. Returns
/// false where the OS cannot (Windows: [`recv_stamped`] then reports no age).
#[cfg(unix)]
pub fn enable_rx_timestamps(socket: &impl std::os::fd::AsFd) -> bool {
    #[cfg(target_os = "linux")]
    let option = nix::sys::socket::sockopt::ReceiveTimestampns;
    #[cfg(not(target_os = "linux"))]
    let option = nix::sys::socket::sockopt::ReceiveTimestamp;
    nix::sys::socket::setsockopt(socket, option, &true).is_ok()
}

/// Windows has no per-datagram receive time on UDP sockets.
#[cfg(not(unix))]
pub fn enable_rx_timestamps<S>(_socket: &S) -> bool {
    false
}

/// One datagram from a non-blocking socket: (length, sender, how long ago the kernel received
/// it in ns, if it says). `WouldBlock` when nothing is waiting. An age over a second or from
/// the future is not believed (a wall-clock step): `None`.
#[cfg(unix)]
pub fn recv_stamped(
    socket: &impl std::os::fd::AsRawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<u64>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                })
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no sender address"))?;
    let stamp_ns = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            #[cfg(target_os = "linux")]
            ControlMessageOwned::ScmTimestampns(ts) => {
                Some(ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128)
            }
            #[cfg(not(target_os = "linux"))]
            ControlMessageOwned::ScmTimestamp(tv) => {
                Some(tv.tv_sec() as i128 * 1_000_000_000 + tv.tv_usec() as i128 * 1_000)
            }
            _ => None,
        })
    });
    // The stamp is on the wall clock: its age, taken now, moves to any monotonic clock.
    let age = stamp_ns.and_then(|stamp| {
        let wall = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).ok()?;
        let wall = wall.tv_sec() as i128 * 1_000_000_000 + wall.tv_nsec() as i128;
        u64::try_from(wall - stamp)
            .ok()
            .filter(|age| *age < 1_000_000_000)
    });
    Ok((msg.bytes, from, age))
}

/// Windows: the plain read; the age is unknown (the caller uses the read time).
#[cfg(not(unix))]
pub fn recv_stamped(
    socket: &mio::net::UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<u64>)> {
    socket.recv_from(buf).map(|(n, from)| (n, from, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper thread started from a realtime one ends up at plain normal priority: policy
    /// SCHED_OTHER (0) and nice 0, read back from /proc.
    #[test]
    #[cfg(target_os = "linux")]
    fn normal_priority_is_sched_other_at_nice_zero() {
        let (policy, nice) = std::thread::spawn(|| {
            normal_priority();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
            let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
                .split_whitespace()
                .collect();
            // Fields after the command: state is 3, nice 19, policy 41 (man 5 proc).
            (fields[41 - 3].to_owned(), fields[19 - 3].to_owned())
        })
        .join()
        .expect("thread");
        assert_eq!((policy.as_str(), nice.as_str()), ("0", "0"));
    }

    /// No socket leaves the process: one datagram to ourselves on loopback (the suite runs in a
    /// private network namespace).
    #[test]
    #[cfg(unix)]
    fn a_datagram_carries_its_kernel_receive_age() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        assert!(enable_rx_timestamps(&rx));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut buf = [0u8; 64];
        assert_eq!(
            recv_stamped(&rx, &mut buf).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock)
        );
        tx.send_to(b"ping", rx.local_addr().expect("addr"))
            .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (n, from, age) = recv_stamped(&rx, &mut buf).expect("received");
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, tx.local_addr().expect("addr"));
        // Read 20 ms after it arrived: the age says so (not 0, as a read-time stamp would).
        let age = age.expect("kernel stamp");
        assert!((19_000_000..500_000_000).contains(&age), "{age} ns");
    }
}
