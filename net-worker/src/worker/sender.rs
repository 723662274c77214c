//! The clock send path: a small thread (`lockstep-send`) that does nothing but send
//! pre-built datagrams at their due times, so no other work (OSC, OSCQuery, mDNS, Link,
//! status, a flood of any of them) can sit in front of a clock tick.
//!
//! The worker builds each RTP-MIDI packet a little ahead of its due time (sequence number,
//! timestamp and journal are fixed then) and pushes it into a bounded SPSC ring
//! ([`SendPath::push`]). The sender moves what arrives into a fixed-capacity queue ordered by
//! (due time, push order) — so a packet for a peer with a later offset never holds up one for
//! another peer — sleeps until the earliest is due minus [`SPIN`], spins the rest, and sends.
//! It runs at realtime priority where the OS allows (above the worker), and never allocates
//! after start: datagrams are copied into fixed arrays and the queue's capacity is reserved.
//!
//! Thread-safe: the [`SendPath`] handle lives on the worker thread; dropping it sends what is
//! still queued at once (a Stop at shutdown must not be lost) and joins the thread.

pub use crate::status::send::SenderStats;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bridge::host_time_ns;

/// Name of the sender thread.
pub const THREAD_NAME: &str = "lockstep-send";

/// The last this much before a due time is spun instead of slept: wake-up latency is tens of
/// microseconds on a loaded machine, a spin is exact.
pub const SPIN: Duration = Duration::from_micros(150);

/// Largest datagram the send path carries (an RTP-MIDI clock packet with its journal is under
/// 64 bytes); a larger one is sent by the worker itself, counted as `oversize`.
pub const MAX_DATAGRAM: usize = 256;

/// Datagrams waiting at once (ring plus queue): about 3 s of ticks to 16 peers at 300 BPM.
pub const CAPACITY: usize = 1024;

/// Realtime priority of the sender on Linux (`SCHED_FIFO`): above the worker (10), well below
/// DAW audio threads (70 and up).
pub const PRIORITY: u8 = 12;

/// One datagram to send at a time.
pub struct Departure {
    /// When it is due, host ns ([`host_time_ns`]).
    pub due_ns: u64,
    /// Our socket to send from (a clone of the instance's data socket).
    pub socket: Arc<UdpSocket>,
    /// Destination.
    pub to: SocketAddr,
    len: u16,
    bytes: [u8; MAX_DATAGRAM],
    /// Push order, for a stable order among equal due times.
    order: u64,
    /// When it was handed over, host ns (to tell a late build from a late send).
    pushed_ns: u64,
}

impl Departure {
    /// A departure of `bytes` at `due_ns`; `None` if it is longer than [`MAX_DATAGRAM`].
    pub fn new(due_ns: u64, socket: Arc<UdpSocket>, to: SocketAddr, bytes: &[u8]) -> Option<Self> {
        let len = u16::try_from(bytes.len())
            .ok()
            .filter(|l| usize::from(*l) <= MAX_DATAGRAM)?;
        let mut buf = [0; MAX_DATAGRAM];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            due_ns,
            socket,
            to,
            len,
            bytes: buf,
            order: 0,
            pushed_ns: 0,
        })
    }

    fn payload(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl PartialEq for Departure {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ns, self.order) == (other.due_ns, other.order)
    }
}
impl Eq for Departure {}
impl PartialOrd for Departure {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Departure {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest must come out first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due_ns, other.order).cmp(&(self.due_ns, self.order))
    }
}

/// [`SendPath::push`] found the ring full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the clock send path is full")]
pub struct Full;

/// Counters shared with the thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    realtime: AtomicBool,
    sent: AtomicU64,
    send_errors: AtomicU64,
    late_over_1ms: AtomicU64,
    worst_late_ns: AtomicU64,
    built_late: AtomicU64,
    worst_built_late_ns: AtomicU64,
}

/// The worker's handle on the send path.
pub struct SendPath {
    ring: rtrb::Producer<Departure>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next_order: u64,
    full: u64,
    /// How the thread's scheduling request ended, in words.
    scheduling: Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for SendPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendPath").finish_non_exhaustive()
    }
}

impl SendPath {
    /// Start the sender thread.
    pub fn start() -> std::io::Result<Self> {
        let (ring, consumer) = rtrb::RingBuffer::new(CAPACITY);
        let shared = Arc::new(Shared::default());
        let scheduling = Arc::new(std::sync::Mutex::new(String::new()));
        let (named_tx, named) = crossbeam_channel::bounded(1);
        let thread = {
            let shared = Arc::clone(&shared);
            let scheduling = Arc::clone(&scheduling);
            std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || {
                    let _ = named_tx.send(());
                    run(consumer, &shared, &scheduling);
                })?
        };
        // A new thread carries its creator's name until it has set its own: return only
        // once it has (thread counts by name, in tests and the status, then stay exact).
        let _ = named.recv();
        Ok(Self {
            ring,
            shared,
            thread: Some(thread),
            next_order: 0,
            full: 0,
            scheduling,
        })
    }

    /// Queue `departure`; when the ring is full it is dropped and counted as `full` (the
    /// caller still has the bytes: send them at once). Call [`SendPath::wake`] after a batch.
    pub fn push(&mut self, mut departure: Departure) -> Result<(), Full> {
        departure.order = self.next_order;
        departure.pushed_ns = host_time_ns();
        self.next_order += 1;
        self.ring.push(departure).map_err(|_| {
            self.full += 1;
            Full
        })
    }

    /// Tell the sender that new datagrams are waiting (cheap; at most one futex wake).
    pub fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// What it did so far.
    pub fn stats(&self) -> SenderStats {
        let s = &self.shared;
        SenderStats {
            realtime: s.realtime.load(Ordering::Relaxed),
            sent: s.sent.load(Ordering::Relaxed),
            send_errors: s.send_errors.load(Ordering::Relaxed),
            late_over_1ms: s.late_over_1ms.load(Ordering::Relaxed),
            worst_late_us: s.worst_late_ns.load(Ordering::Relaxed) as f64 / 1e3,
            built_late: s.built_late.load(Ordering::Relaxed),
            worst_built_late_us: s.worst_built_late_ns.load(Ordering::Relaxed) as f64 / 1e3,
            full: self.full,
        }
    }

    /// How the sender thread is scheduled, in words (empty until it has started).
    pub fn scheduling(&self) -> String {
        self.scheduling
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

impl Drop for SendPath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn send(departure: &Departure, shared: &Shared) {
    match departure.socket.send_to(departure.payload(), departure.to) {
        Ok(_) => shared.sent.fetch_add(1, Ordering::Relaxed),
        Err(_) => shared.send_errors.fetch_add(1, Ordering::Relaxed),
    };
}

/// The sender thread.
fn run(
    mut ring: rtrb::Consumer<Departure>,
    shared: &Shared,
    scheduling: &std::sync::Mutex<String>,
) {
    let granted = crate::sys::realtime(PRIORITY);
    shared
        .realtime
        .store(granted.starts_with("realtime"), Ordering::Relaxed);
    if let Ok(mut s) = scheduling.lock() {
        *s = granted;
    }
    crate::sys::precise_timers();
    let mut queue: BinaryHeap<Departure> = BinaryHeap::with_capacity(CAPACITY);
    let spin = SPIN.as_nanos() as u64;
    loop {
        while queue.len() < CAPACITY {
            match ring.pop() {
                Ok(d) => queue.push(d),
                Err(_) => break,
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            // Shutting down: what is left (a Stop, the last ticks) leaves now, in order.
            while let Some(d) = queue.pop() {
                send(&d, shared);
            }
            return;
        }
        let Some(due) = queue.peek().map(|d| d.due_ns) else {
            std::thread::park();
            continue;
        };
        let now = host_time_ns();
        if due > now + spin {
            // Woken early by a push (or spuriously): look again.
            std::thread::park_timeout(Duration::from_nanos(due - now - spin));
            continue;
        }
        let mut now = now;
        while now < due {
            std::hint::spin_loop();
            now = host_time_ns();
        }
        if let Some(d) = queue.pop() {
            send(&d, shared);
            let late = now.saturating_sub(d.due_ns);
            if late > 1_000_000 {
                shared.late_over_1ms.fetch_add(1, Ordering::Relaxed);
            }
            shared.worst_late_ns.fetch_max(late, Ordering::Relaxed);
            // Handed over after its due time: the build was late, not the send.
            if d.pushed_ns > d.due_ns {
                shared.built_late.fetch_add(1, Ordering::Relaxed);
                shared
                    .worst_built_late_ns
                    .fetch_max(d.pushed_ns - d.due_ns, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Departures pushed out of order (two peers, different offsets) leave in due order, on
    /// time, and what is queued at shutdown still leaves. Loopback only.
    #[test]
    fn departures_leave_in_due_order_at_their_time() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let tx = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
        let to = rx.local_addr().expect("addr");
        let mut path = SendPath::start().expect("sender");
        let t0 = host_time_ns() + 30_000_000;
        for (i, offset_ms) in [20u64, 0, 10, 5, 15].into_iter().enumerate() {
            let d = Departure::new(t0 + offset_ms * 1_000_000, Arc::clone(&tx), to, &[i as u8])
                .expect("fits");
            assert!(path.push(d).is_ok());
        }
        path.wake();
        let mut order = Vec::new();
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            let (n, _) = rx.recv_from(&mut buf).expect("datagram");
            assert_eq!(n, 1);
            order.push(buf[0]);
            // Read after the fact: it cannot have left before its due time.
            assert!(host_time_ns() >= t0);
        }
        assert_eq!(order, vec![1, 3, 2, 4, 0]);
        let stats = path.stats();
        assert_eq!(stats.sent, 5);
        assert_eq!(stats.send_errors, 0);
        // Far in the future at shutdown: sent at once rather than lost.
        let d = Departure::new(host_time_ns() + 60_000_000_000, tx, to, &[9]).expect("fits");
        assert!(path.push(d).is_ok());
        drop(path);
        let (_, _) = rx.recv_from(&mut buf).expect("flushed at shutdown");
        assert_eq!(buf[0], 9);
        assert!(Departure::new(0, Arc::new(rx), to, &[0; MAX_DATAGRAM + 1]).is_none());
    }
}
