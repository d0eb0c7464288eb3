//! The ingress rules of spec sections 2.4-2.7 that decide, per captured packet, which fake
//! client endpoint a connection gets and whether it is replayed at all: `-c` client-IP mapping,
//! `-r`/`-g` sampling, `-f` port shifting and `-n` replica ports.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The four bytes the IPv4 rules of the original compute on: an IPv4 address itself, an IPv6
/// address folded (its four 32-bit words XORed), so every bit of it counts.
pub fn fold4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let mut f = [0u8; 4];
            for (i, b) in o.iter().enumerate() {
                f[i % 4] ^= b;
            }
            f
        }
    }
}

/// The 16-bit key of spec 2.4: the two 16-bit halves of the address loaded little-endian and
/// added (kept bit-exact so a mixed fleet maps clients the same way as the original; an IPv6
/// address is [`fold4`]ed first).
pub fn ip_key16(ip: impl Into<IpAddr>) -> u16 {
    let [a, b, c, d] = fold4(ip.into());
    u16::from_le_bytes([a, b]).wrapping_add(u16::from_le_bytes([c, d]))
}

/// `-c`: sticky mapping of real client IPs to the fake ones, first-seen round robin.
pub struct ClientIpMap {
    ips: Vec<IpAddr>,
    /// Index+1 into `ips` per 16-bit key; 0 = unassigned.
    slots: Vec<u16>,
    next: usize,
}

impl ClientIpMap {
    pub fn new(ips: Vec<IpAddr>) -> ClientIpMap {
        let slots = if ips.is_empty() {
            Vec::new()
        } else {
            vec![0; 1 << 16]
        };
        ClientIpMap {
            ips,
            slots,
            next: 0,
        }
    }

    pub fn is_active(&self) -> bool {
        !self.ips.is_empty()
    }

    /// The fake IP for the packet whose key is `key`.
    pub fn map_key(&mut self, key: u16) -> Option<IpAddr> {
        if self.ips.is_empty() {
            return None;
        }
        let slot = &mut self.slots[usize::from(key)];
        if *slot == 0 {
            *slot = (self.next % self.ips.len()) as u16 + 1;
            self.next += 1;
        }
        Some(self.ips[usize::from(*slot) - 1])
    }

    pub fn map(&mut self, ip: impl Into<IpAddr>) -> Option<IpAddr> {
        self.map_key(ip_key16(ip.into()))
    }
}

/// Spec 2.7 bucket of a session, from the (rewritten) source address and the source port
/// before `-f` shifting; the same for every packet of a 4-tuple, so sampling is per session.
pub fn sample_bucket(src: impl Into<IpAddr>, src_port: u16) -> u8 {
    let [a, b] = match src.into() {
        IpAddr::V4(ip) => {
            let [a, b, _, _] = ip.octets();
            [a, b]
        }
        // The first bytes of an IPv6 address are the prefix all clients share.
        ip @ IpAddr::V6(_) => ip_key16(ip).to_le_bytes(),
    };
    let [p0, p1] = src_port.to_be_bytes();
    let s = u16::from_le_bytes([p0, p1]).wrapping_add(u16::from_le_bytes([a, b]));
    (((s >> 8) + (s & 0xff)) % 100) as u8
}

/// `-r` and `-g`.
pub struct Sampler {
    percent: u8,
    gradual: bool,
    start: Option<Instant>,
}

impl Sampler {
    pub fn new(percent: u8, gradual: bool) -> Sampler {
        Sampler {
            percent: if percent >= 100 { 0 } else { percent },
            gradual,
            start: None,
        }
    }

    /// Whether a packet of this session is replayed.
    pub fn admit(&mut self, now: Instant, src: impl Into<IpAddr>, src_port: u16) -> bool {
        let src = src.into();
        let percent = if self.gradual {
            let start = *self.start.get_or_insert(now);
            let secs = now.saturating_duration_since(start).as_secs() + 1;
            if secs >= 100 {
                return true;
            }
            secs as u8
        } else {
            self.percent
        };
        percent == 0 || sample_bucket(src, src_port) < percent
    }
}

/// Spec 2.6 `wrap(port, add)`.
pub fn wrap_port(port: u16, add: u32) -> u16 {
    let sum = u32::from(port) + add;
    if sum < 65536 {
        sum as u16
    } else {
        (1024 + add) as u16
    }
}

/// The `-f` shift: `wrap(P, F*2048 + R)` (written in network order, unlike the original).
pub fn shift_port(port: u16, factor: u16, r: u32) -> u16 {
    if factor == 0 {
        port
    } else {
        wrap_port(port, u32::from(factor) * 2048 + r)
    }
}

/// Source port of replica `i` (1-based) of a session whose port is `port`.
pub fn replica_port(port: u16, i: u16, r: u32) -> u16 {
    wrap_port(port, (2 * u32::from(i) - 1) * 32 + r)
}

/// The 16-bit `-c` key of replica `i` of a packet from `ip` (spec 2.6).
pub fn replica_ip_key(ip: impl Into<IpAddr>, i: u16, r: u32) -> u16 {
    // The original computes on the address loaded as a native (little-endian) integer.
    let native = u32::from_le_bytes(fold4(ip.into()));
    let v = (native << 1)
        .wrapping_add((2 * u32::from(i) - 1) * 32)
        .wrapping_add(r);
    let [a, b, c, d] = v.to_le_bytes();
    ip_key16(Ipv4Addr::new(a, b, c, d))
}

/// The random offset `R` in [0, 512) drawn once per run (from the seed).
pub fn port_offset(seed: u64) -> u32 {
    // splitmix64: a good mix of any seed, no extra dependency.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % 512) as u32
}

/// How long `-g` takes to admit everything.
pub const GRADUAL_RAMP: Duration = Duration::from_secs(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key16_matches_spec_formula() {
        // a.b.c.d -> (b*256 + a) + (d*256 + c)
        let ip = Ipv4Addr::new(1, 2, 3, 4);
        assert_eq!(ip_key16(ip), (2 * 256 + 1) + (4 * 256 + 3));
    }

    #[test]
    fn client_map_is_sticky_round_robin() {
        let fakes: Vec<IpAddr> = vec![
            Ipv4Addr::new(203, 0, 113, 1).into(),
            Ipv4Addr::new(203, 0, 113, 2).into(),
        ];
        let mut m = ClientIpMap::new(fakes.clone());
        let a = Ipv4Addr::new(198, 18, 0, 10);
        let b = Ipv4Addr::new(198, 18, 0, 11);
        let c = Ipv4Addr::new(198, 18, 0, 12);
        assert_eq!(m.map(a), Some(fakes[0]));
        assert_eq!(m.map(b), Some(fakes[1]));
        assert_eq!(m.map(c), Some(fakes[0]));
        assert_eq!(m.map(b), Some(fakes[1]));
        assert_eq!(m.map(a), Some(fakes[0]));
    }

    #[test]
    fn ipv6_clients_map_and_sample_by_the_whole_address() {
        let fakes: Vec<IpAddr> = vec![
            "2001:db8:ffff::1".parse().unwrap(),
            "2001:db8:ffff::2".parse().unwrap(),
        ];
        let mut m = ClientIpMap::new(fakes.clone());
        let a: IpAddr = "2001:db8::10".parse().unwrap();
        let b: IpAddr = "2001:db8::11".parse().unwrap();
        assert_eq!(m.map(a), Some(fakes[0]));
        assert_eq!(m.map(b), Some(fakes[1]));
        assert_eq!(m.map(a), Some(fakes[0]));
        // Addresses that differ only in their last bits fall in different buckets.
        let buckets: std::collections::HashSet<u8> = (1u16..200)
            .map(|i| sample_bucket(IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]), 40000))
            .collect();
        assert!(buckets.len() > 50, "{}", buckets.len());
    }

    #[test]
    fn sampling_is_per_session_and_about_right() {
        let mut s = Sampler::new(50, false);
        let now = Instant::now();
        let ip = Ipv4Addr::new(203, 0, 113, 5);
        let admitted = (10000u16..20000).filter(|p| s.admit(now, ip, *p)).count();
        assert!((4000..6000).contains(&admitted), "{admitted}");
        assert_eq!(s.admit(now, ip, 12345), s.admit(now, ip, 12345));
        let mut all = Sampler::new(100, false);
        assert!((0..1000u16).all(|p| all.admit(now, ip, p)));
    }

    #[test]
    fn port_math() {
        assert_eq!(wrap_port(1000, 100), 1100);
        assert_eq!(wrap_port(65500, 100), 1124);
        assert_eq!(replica_port(40000, 1, 7), 40000 + 32 + 7);
        assert_eq!(replica_port(40000, 2, 7), 40000 + 96 + 7);
        assert_eq!(shift_port(40000, 0, 7), 40000);
        assert_eq!(shift_port(40000, 1, 7), 40000 + 2048 + 7);
        assert!(port_offset(42) < 512);
    }
}
