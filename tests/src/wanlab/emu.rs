//! The WAN lab's userspace link emulator (spec `wan-and-receive.md` §6.4): one-way delay per
//! side, jitter and Bernoulli loss, without `sch_netem` (the kernel has none).
//!
//! Everything the `inet` namespace forwards between the routers' WAN sides and the server is
//! policy-routed into one TUN device (`IFF_TUN | IFF_NO_PI`). A thread owned by the lab reads
//! each IPv4 packet, drops it with probability `loss_ppm / 1e6` (seeded [`Rng`], so runs
//! reproduce), holds it in a min-heap until
//! `due = max(now + delay(src side) + delay(dst side) ± jitter, last due of that direction)`
//! (jitter drawn uniformly per packet, in µs; packets of one direction never overtake each
//! other, as on one real path) and writes it
//! back into the same TUN, where `inet`'s main table routes it to the veth owning the
//! destination. One TUN instead of one per side: the kernel's route lookup on re-injection *is*
//! "the TUN that owns the destination prefix", and the direction (hence the delay) follows from
//! the packet's addresses, so a second device would add routes and fds but no behaviour.
//!
//! It is also an on-path attacker for the tests: it keeps a copy of the first
//! [`CAPTURE_MAX`] Lockstep frames (first payload byte [`FRAME_V1`]) it saw cross from studio
//! A's router to studio B's past the loss ([`Emulator::captured`]), and writes packets it is handed
//! ([`Emulator::inject`]) onward at the pace asked, as if they had crossed the internet, so
//! replays and forgeries reach B through B's own NAT with A's real addresses and ports.
//!
//! The thread waits with `poll` on the TUN and a wake-up socket, the earliest due time as the
//! timeout (rounded *up* to whole milliseconds, so a packet is never early and at most ~1 ms
//! late). Dropping [`Emulator`] sets the stop flag, wakes the thread and joins it; closing the
//! TUN fd removes the device.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{WAN_A_IP, WAN_B_IP};
use crate::harness::Rng;

/// The TUN device's name inside `inet`.
pub const TUN_NAME: &str = "tun0";
/// The first byte of a Lockstep frame (the remote session's datagrams).
pub const FRAME_V1: u8 = 0xD1;
/// How many A → B Lockstep frames the tap keeps (the first ones; later ones are not kept).
pub const CAPTURE_MAX: usize = 4096;

/// What the emulator does to packets.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkConfig {
    /// One-way delay of studio A's access link, ms (0 = none).
    pub delay_a_ms: u32,
    /// One-way delay of studio B's access link, ms (0 = none).
    pub delay_b_ms: u32,
    /// Loss probability per packet crossing `inet`, parts per million.
    pub loss_ppm: u32,
    /// Each packet's delay varies uniformly by up to this much either way, ms.
    pub jitter_ms: u32,
    /// Seed of the loss and jitter draws.
    pub seed: u64,
}

/// Counters, read with [`Emulator::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmuStats {
    /// IPv4 packets written back (delivered onward).
    pub forwarded: u64,
    /// IPv4 packets dropped by the loss draw.
    pub dropped: u64,
    /// The most packets held at once.
    pub queued_max: u64,
    /// Packets handed to [`Emulator::inject`] and written onward.
    pub injected: u64,
}

/// Atomics the thread writes and the lab reads. Thread-safe.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    queued_max: AtomicU64,
    injected: AtomicU64,
}

/// What the tap shares with the lab: captured frames in, packets to inject out.
#[derive(Debug, Default)]
struct Tap {
    /// Whole IPv4 packets, A's router → B's router, carrying a Lockstep frame.
    captured: Mutex<Vec<Vec<u8>>>,
    /// Batches to write onward: (packets, gap between them).
    inject: Mutex<Vec<(Vec<Vec<u8>>, Duration)>>,
}

/// Where an address sits: which access link a packet to or from it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
    Server,
}

fn side_of(ip: [u8; 4]) -> Side {
    match ip {
        WAN_A_IP => Side::A,
        WAN_B_IP => Side::B,
        [203, 0, 113, x] if x < 64 => Side::A,
        [203, 0, 113, x] if (64..128).contains(&x) => Side::B,
        _ => Side::Server,
    }
}

/// A running emulator thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Emulator {
    /// Why the thread stops at its next wake-up.
    stop: Arc<AtomicBool>,
    /// Written on drop to wake the thread's `poll` at once.
    waker: UnixStream,
    counters: Arc<Counters>,
    tap: Arc<Tap>,
    /// The thread; `None` once joined.
    thread: Option<JoinHandle<Result<()>>>,
}

impl Emulator {
    /// Open the TUN on a new thread inside `inet` (`netns_path` = `/run/netns/<inet>`) and start
    /// forwarding. Returns once the device exists, so routes through it can be added.
    pub fn start(netns_path: &str, config: LinkConfig) -> Result<Self> {
        let netns = File::open(netns_path).with_context(|| format!("opening {netns_path}"))?;
        let (waker, wakee) = UnixStream::pair().context("wake-up socket pair")?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let tap = Arc::new(Tap::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (thread_stop, thread_counters, thread_tap) =
            (stop.clone(), counters.clone(), tap.clone());
        let thread = std::thread::Builder::new()
            .name("wanlab-emu".into())
            .spawn(move || {
                let opened = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns into inet")
                    .and_then(|()| open_tun(TUN_NAME));
                let tun = match opened {
                    Ok(tun) => {
                        let _ = ready_tx.send(Ok(()));
                        tun
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                let mut link = Link::new(config, thread_counters, thread_tap);
                link.run(tun, wakee, &thread_stop)
            })
            .context("spawning the emulator thread")?;
        let emulator = Self {
            stop,
            waker,
            counters,
            tap,
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("emulator thread did not report")??;
        Ok(emulator)
    }

    /// The counters so far. Thread-safe.
    pub fn stats(&self) -> EmuStats {
        EmuStats {
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            queued_max: self.counters.queued_max.load(Ordering::Relaxed),
            injected: self.counters.injected.load(Ordering::Relaxed),
        }
    }

    /// The Lockstep frames seen crossing from A's router to B's so far (whole IPv4 packets,
    /// at most [`CAPTURE_MAX`], the first ones). Thread-safe.
    pub fn captured(&self) -> Vec<Vec<u8>> {
        self.tap
            .captured
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Write `packets` (whole IPv4 packets) onward from now, `gap` apart, with no delay or
    /// loss of their own. Thread-safe.
    pub fn inject(&self, packets: Vec<Vec<u8>>, gap: Duration) -> Result<()> {
        self.tap
            .inject
            .lock()
            .map_err(|_| anyhow!("emulator tap poisoned"))?
            .push((packets, gap));
        (&self.waker).write_all(&[1]).context("waking the emulator")
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = (&self.waker).write_all(&[1]);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("wanlab emulator: {e:#}"),
                Err(_) => eprintln!("wanlab emulator: thread panicked"),
            }
        }
    }
}

nix::ioctl_readwrite_bad!(
    /// `TUNSETIFF`: encoded as `_IOW('T', 202, int)`, but the kernel reads *and writes back*
    /// the `ifreq` (the chosen name), hence the `*mut` wrapper.
    tun_set_iff,
    libc::TUNSETIFF,
    libc::ifreq
);

/// Open `/dev/net/tun` non-blocking and attach a new `IFF_TUN | IFF_NO_PI` device `name` in
/// the calling thread's network namespace.
fn open_tun(name: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: ifreq is plain old data (a name array and a union of integers/arrays); all zero
    // is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `file` is an open /dev/net/tun descriptor for the whole call, and `req` is an
    // initialised, exclusively borrowed ifreq the kernel may read and write.
    unsafe { tun_set_iff(file.as_raw_fd(), &mut req) }.context("TUNSETIFF")?;
    Ok(file)
}

/// A packet waiting for its due time; ordered by (due, arrival) so equal dues keep order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    due: Instant,
    seq: u64,
    bytes: Vec<u8>,
    /// Handed in by [`Emulator::inject`] (counted apart).
    injected: bool,
}

/// The emulator's state, owned by its thread.
struct Link {
    config: LinkConfig,
    rng: Rng,
    /// Min-heap of held packets.
    queue: BinaryHeap<Reverse<Held>>,
    /// Per direction (source side, destination side), the last due time handed out, so a
    /// direction never reorders.
    last_due: [[Option<Instant>; 3]; 3],
    seq: u64,
    counters: Arc<Counters>,
    tap: Arc<Tap>,
}

impl Link {
    fn new(config: LinkConfig, counters: Arc<Counters>, tap: Arc<Tap>) -> Self {
        Self {
            config,
            rng: Rng::new(config.seed),
            queue: BinaryHeap::new(),
            last_due: [[None; 3]; 3],
            seq: 0,
            counters,
            tap,
        }
    }

    fn run(&mut self, mut tun: File, mut wakee: UnixStream, stop: &AtomicBool) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.take_injections(Instant::now());
            self.release_due(&mut tun, Instant::now())?;
            let timeout = match self.queue.peek() {
                Some(Reverse(next)) => ceil_ms(next.due.saturating_duration_since(Instant::now())),
                None => PollTimeout::NONE,
            };
            let mut fds = [
                PollFd::new(tun.as_fd(), PollFlags::POLLIN),
                PollFd::new(wakee.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let woken = fds[1].any().unwrap_or(false);
            if woken {
                let _ = wakee.read(&mut [0u8; 16]);
                continue;
            }
            self.read_all(&mut tun, &mut buf)?;
        }
    }

    /// Read every packet waiting on the TUN and queue or drop each.
    fn read_all(&mut self, tun: &mut File, buf: &mut [u8]) -> Result<()> {
        loop {
            match tun.read(buf) {
                Ok(n) => self.accept(&buf[..n], Instant::now()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the TUN"),
            }
        }
    }

    /// Queue the batches handed to [`Emulator::inject`], from `now` on.
    fn take_injections(&mut self, now: Instant) {
        let batches = match self.tap.inject.lock() {
            Ok(mut batches) => std::mem::take(&mut *batches),
            Err(_) => return,
        };
        for (packets, gap) in batches {
            for (i, bytes) in packets.into_iter().enumerate() {
                self.seq += 1;
                self.queue.push(Reverse(Held {
                    due: now + gap * u32::try_from(i).unwrap_or(u32::MAX),
                    seq: self.seq,
                    bytes,
                    injected: true,
                }));
            }
        }
    }

    /// Keep a copy of an A → B Lockstep frame, while the tap has room.
    fn capture(&self, packet: &[u8]) {
        let header = usize::from(packet[0] & 0x0f) * 4;
        let is_frame = packet[9] == 17 // UDP
            && packet[12..16] == WAN_A_IP
            && packet[16..20] == WAN_B_IP
            && packet.get(header + 8) == Some(&FRAME_V1);
        if is_frame
            && let Ok(mut captured) = self.tap.captured.lock()
            && captured.len() < CAPTURE_MAX
        {
            captured.push(packet.to_vec());
        }
    }

    /// Loss draw, then queue with its due time. Non-IPv4 packets (none are routed here) are
    /// ignored and not counted.
    fn accept(&mut self, packet: &[u8], now: Instant) {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return;
        }
        if self.rng.next_u64() % 1_000_000 < u64::from(self.config.loss_ppm) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The attacker sits past the loss: a copy of a frame the path lost would reach B as
        // that frame's first (late but authentic) arrival, not as a replay.
        self.capture(packet);
        let src = side_of([packet[12], packet[13], packet[14], packet[15]]);
        let dst = side_of([packet[16], packet[17], packet[18], packet[19]]);
        let delay_us = i64::from(self.delay_ms(src) + self.delay_ms(dst)) * 1000;
        let jitter_us = i64::from(self.config.jitter_ms) * 1000;
        let wobble = if jitter_us > 0 {
            (self.rng.next_u64() % (2 * jitter_us as u64 + 1)) as i64 - jitter_us
        } else {
            0
        };
        let last = &mut self.last_due[src as usize][dst as usize];
        let mut due = now + Duration::from_micros((delay_us + wobble).max(0) as u64);
        if let Some(last) = *last {
            due = due.max(last);
        }
        *last = Some(due);
        self.seq += 1;
        self.queue.push(Reverse(Held {
            due,
            seq: self.seq,
            bytes: packet.to_vec(),
            injected: false,
        }));
        self.counters
            .queued_max
            .fetch_max(self.queue.len() as u64, Ordering::Relaxed);
    }

    fn delay_ms(&self, side: Side) -> u32 {
        match side {
            Side::A => self.config.delay_a_ms,
            Side::B => self.config.delay_b_ms,
            Side::Server => 0,
        }
    }

    /// Write back every packet whose due time has come.
    fn release_due(&mut self, tun: &mut File, now: Instant) -> Result<()> {
        while self.queue.peek().is_some_and(|Reverse(p)| p.due <= now) {
            let Some(Reverse(packet)) = self.queue.pop() else {
                break;
            };
            tun.write_all(&packet.bytes).context("writing to the TUN")?;
            let counter = if packet.injected {
                &self.counters.injected
            } else {
                &self.counters.forwarded
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `d` in whole milliseconds, rounded up, so `poll` never wakes before the due time.
fn ceil_ms(d: Duration) -> PollTimeout {
    let ms = d.as_nanos().div_ceil(1_000_000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_follow_the_lab_plan() {
        assert_eq!(side_of([203, 0, 113, 2]), Side::A);
        assert_eq!(side_of(WAN_A_IP), Side::A);
        assert_eq!(side_of([203, 0, 113, 66]), Side::B);
        assert_eq!(side_of(WAN_B_IP), Side::B);
        assert_eq!(side_of([198, 51, 100, 2]), Side::Server);
    }
}
