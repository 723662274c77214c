//! What Linux and macOS share: kernel receive timestamps on UDP sockets, the interface list
//! (`getifaddrs`) and the host name.

use std::io;
use std::net::SocketAddr;

/// Ask the kernel to stamp every datagram `socket` receives with its arrival time. Returns
/// false where the OS cannot (Windows: [`recv_stamped`] then reports no age).
pub fn enable_rx_timestamps(socket: &impl std::os::fd::AsFd) -> bool {
    #[cfg(target_os = "linux")]
    let option = nix::sys::socket::sockopt::ReceiveTimestampns;
    #[cfg(not(target_os = "linux"))]
    let option = nix::sys::socket::sockopt::ReceiveTimestamp;
    nix::sys::socket::setsockopt(socket, option, &true).is_ok()
}

/// One datagram from a non-blocking socket: (length, sender, how long ago the kernel received
/// it in ns, if it says). `WouldBlock` when nothing is waiting. An age over a second or from
/// the future is not believed (a wall-clock step): `None`.
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

/// Every IPv4 interface address; usable = up and multicast-capable.
pub fn ipv4_interfaces() -> Result<Vec<super::Interface>, String> {
    use nix::net::if_::InterfaceFlags;
    let list =
        nix::ifaddrs::getifaddrs().map_err(|e| format!("cannot list network interfaces: {e}"))?;
    Ok(list
        .filter_map(|i| {
            let address = i.address.as_ref()?.as_sockaddr_in()?.ip();
            let prefix = i
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
            let usable = i.flags.contains(InterfaceFlags::IFF_UP)
                && i.flags.contains(InterfaceFlags::IFF_MULTICAST);
            let loopback = i.flags.contains(InterfaceFlags::IFF_LOOPBACK);
            Some(super::Interface {
                name: i.interface_name,
                address,
                prefix,
                usable,
                loopback,
            })
        })
        .collect())
}

/// This computer's name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No socket leaves the process: one datagram to ourselves on loopback (the suite runs in a
    /// private network namespace).
    #[test]
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
        // The kernel switches receive timestamps on lazily (a deferred static key): a datagram
        // that arrives before that is stamped when read. Let it settle first.
        tx.send_to(b"warm", rx.local_addr().expect("addr"))
            .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(100));
        while recv_stamped(&rx, &mut buf).is_ok() {}
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
