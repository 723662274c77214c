//! Who may talk to the OSC bridge: the allow-list ([`Subnet`] entries, or
//! [`allowed_by_default`]: loopback, private, link-local and unique-local addresses when the
//! user gives none) and the per-source rate limit (a token bucket per IP address, refilled at
//! [`RATE_PER_SOURCE`] messages a second, bursting to twice that; at most [`MAX_SOURCES`]
//! buckets). Both checks run on every datagram before it is decoded (see
//! [`OscCore::handle_datagram`]); after decoding, every further message of a bundle costs a
//! token, and so does every reply (a dump costs the messages it sends).

use std::net::IpAddr;

use super::{MS, Nanos, OscCore, RATE_PER_SOURCE};

/// Most sources rate-limited at once: a sweep of spoofed source addresses cannot grow the
/// table without bound (a studio has a handful of controllers).
pub const MAX_SOURCES: usize = 1024;
/// When the table is full, refilled buckets are swept out at most this often.
const SWEEP_INTERVAL: Nanos = 10 * MS;

/// One allow-list entry: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub ip: IpAddr,
    /// Prefix length.
    pub bits: u8,
}

impl Subnet {
    /// Parse `10.0.0.0/8`, `192.168.1.7`, `::1`, `fe80::/10`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ip, bits) = match text.trim().split_once('/') {
            Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Self { ip, bits })
    }

    /// Does `ip` fall in this subnet? (IPv4-mapped IPv6 addresses count as IPv4.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, width) = match (self.ip, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (
                u128::from(u32::from(a)) << 96,
                u128::from(u32::from(b)) << 96,
                32,
            ),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let bits = u32::from(self.bits.min(width));
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - bits)
        };
        a & mask == b & mask
    }
}

/// Loopback, private, link-local and unique-local addresses: the default allow-list.
pub fn allowed_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local())
        }
    }
}

/// One source's rate-limit token bucket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Nanos,
}

impl OscCore {
    /// Set who may send OSC (entries that do not parse are listed in the status); empty =
    /// loopback and private ranges.
    pub fn set_allow_list(&mut self, entries: &[String]) {
        self.allow.clear();
        self.status
            .errors
            .retain(|e| !e.starts_with("OSC allow-list"));
        for e in entries {
            match Subnet::parse(e) {
                Some(s) => self.allow.push(s),
                None => self
                    .status
                    .errors
                    .push(format!("OSC allow-list: {e:?} is not an address or subnet")),
            }
        }
    }

    /// May `ip` send at all (the user's allow-list, or [`allowed_by_default`] without one)?
    pub fn allowed(&self, ip: IpAddr) -> bool {
        if self.allow.is_empty() {
            allowed_by_default(ip)
        } else {
            self.allow.iter().any(|s| s.contains(ip))
        }
    }

    /// Messages a second allowed per source (bursting to twice that); non-finite or below 1
    /// falls back to [`RATE_PER_SOURCE`].
    pub fn set_rate_limit(&mut self, per_second: f64) {
        self.rate = if per_second.is_finite() && per_second >= 1.0 {
            per_second
        } else {
            RATE_PER_SOURCE
        };
    }

    /// Take `cost` tokens from `ip`'s bucket (a message costs 1, a reply what it sends): true
    /// if they were there. A new source gets a full bucket if the table has room (sources whose
    /// bucket refilled are forgotten to make it); otherwise it is refused and counted.
    pub(super) fn charge(&mut self, now: Nanos, ip: IpAddr, cost: f64) -> bool {
        let rate = self.rate;
        let full = 2.0 * rate;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_SOURCES {
            // Forget every source whose bucket has refilled (it would behave the same as a new
            // one), at most once per sweep interval so a spoofed-source sweep cannot make every
            // packet scan the table.
            if now.saturating_sub(self.buckets_swept) >= SWEEP_INTERVAL {
                self.buckets_swept = now;
                self.buckets
                    .retain(|_, b| b.tokens + now.saturating_sub(b.at) as f64 / 1e9 * rate < full);
            }
            if self.buckets.len() >= MAX_SOURCES {
                self.status.sources_full += 1;
                return false;
            }
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        let elapsed = now.saturating_sub(bucket.at) as f64 / 1e9;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(full);
        bucket.at = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::proto::osc::{self, Arg, Message, Packet};
    use crate::worker::osc::Output;
    use crate::worker::osc::tests::{PHONE, SECOND_NS, send, specs};

    #[test]
    fn the_allow_list_takes_addresses_and_subnets() {
        let net = Subnet::parse("192.168.1.0/24").expect("subnet");
        assert!(net.contains(IpAddr::from([192, 168, 1, 77])));
        assert!(!net.contains(IpAddr::from([192, 168, 2, 1])));
        let v6 = Subnet::parse("fe80::/10").expect("subnet");
        assert!(v6.contains("fe80::1".parse().expect("ip")));
        assert!(
            Subnet::parse("10.0.0.7")
                .expect("host")
                .contains(IpAddr::from([10, 0, 0, 7]))
        );
        assert!(Subnet::parse("10.0.0.0/33").is_none());
        assert!(Subnet::parse("studio").is_none());
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        core.set_allow_list(&["203.0.113.0/24".into(), "bogus".into()]);
        assert_eq!(core.status().errors.len(), 1);
        let m = Message::new("/lockstep/param/mac_1", vec![Arg::Float(0.5)]);
        // A public controller allowed by the user; a private one now refused.
        let out = send(
            &mut core,
            SocketAddr::from(([203, 0, 113, 9], 9000)),
            m.clone(),
        );
        assert_eq!(out.changes.len(), 1);
        let out = send(&mut core, SocketAddr::from(PHONE), m);
        assert!(out.changes.is_empty());
        assert_eq!(core.status().refused_source, 1);
    }

    /// The amplification attack: bundles of 340 `/lockstep/dump` requests. A dump
    /// costs what it sends, every message of a bundle counts, so over a second Lockstep sends
    /// no more messages than the limit allows, whatever it is asked.
    #[test]
    fn bundled_dumps_cost_what_they_send() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let dump = Packet::Message(Message::new("/lockstep/dump", vec![]));
        let mut bytes = Vec::new();
        osc::encode(
            &Packet::Bundle {
                time: osc::IMMEDIATELY,
                elements: vec![dump; 340],
            },
            &mut bytes,
        );
        let mut out = Output::default();
        let (mut sent_in, mut sent_out) = (0usize, 0usize);
        for i in 0..1_000u64 {
            core.handle_datagram(i * SECOND_NS / 1_000, phone, &bytes, &mut out);
            sent_in += bytes.len();
        }
        let replies: usize = out
            .datagrams
            .iter()
            .map(|(_, b)| {
                sent_out += b.len();
                match osc::decode(b).expect("ours") {
                    Packet::Bundle { elements, .. } => elements.len(),
                    Packet::Message(_) => 1,
                }
            })
            .sum();
        // Burst (2 × 500) plus a second of refill, shared between requests and replies.
        assert!(replies <= 1_500, "{replies} reply messages");
        assert!(
            sent_out < sent_in / 10,
            "{sent_out} bytes out for {sent_in} in"
        );
        // Refused before decoding (1 each) or after (340 each), and dumps not sent.
        let s = core.status();
        assert!(s.rate_limited >= 990 && s.replies_limited > 0, "{s:?}");
    }

    /// A sweep of a million spoofed (allowed) source addresses: the table stays bounded, and a
    /// controller that was already talking keeps its bucket and is still served.
    #[test]
    fn a_spoofed_source_sweep_keeps_the_table_bounded() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let mut bytes = Vec::new();
        osc::encode_message(
            &Message::new("/lockstep/param/mac_1/normalized", vec![Arg::Float(0.5)]),
            &mut bytes,
        );
        let mut out = Output::default();
        for _ in 0..900 {
            core.handle_datagram(0, phone, &bytes, &mut out);
        }
        for i in 0..1_000_000u32 {
            let ip = IpAddr::from((0x0A00_0000 | i).to_be_bytes());
            let at = u64::from(i) * 1_000; // 1 µs apart: one second of flood
            core.handle_datagram(at, SocketAddr::new(ip, 9000), &bytes, &mut out);
            assert!(core.buckets.len() <= MAX_SOURCES);
        }
        let before = core.status().applied;
        core.handle_datagram(SECOND_NS, phone, &bytes, &mut out);
        assert_eq!(
            core.status().applied,
            before + 1,
            "the phone is still served"
        );
        assert!(core.status().sources_full > 0);
    }

    #[test]
    fn a_flood_is_rate_limited() {
        let mut core = OscCore::new();
        core.add_instance(1, "Lockstep", specs());
        let phone = SocketAddr::from(PHONE);
        let mut bytes = Vec::new();
        osc::encode_message(
            &Message::new("/lockstep/param/mac_1/normalized", vec![Arg::Float(0.5)]),
            &mut bytes,
        );
        let mut out = Output::default();
        for _ in 0..5_000 {
            core.handle_datagram(0, phone, &bytes, &mut out);
        }
        let s = core.status();
        assert_eq!(s.applied, 1_000, "the burst");
        assert_eq!(s.rate_limited, 4_000);
        // Tokens come back with time.
        core.handle_datagram(SECOND_NS, phone, &bytes, &mut out);
        assert_eq!(core.status().applied, 1_001);
    }
}
