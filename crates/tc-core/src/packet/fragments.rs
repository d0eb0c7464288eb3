//! IPv4 reassembly (RFC 791, with RFC 5722's caution about overlaps): the fragments of a
//! datagram captured by pcap or read from a file are put back together before UDP replay
//! reads its ports, so a datagram is replayed whole or not at all, never in part.
//!
//! Bounded: at most [`ReassemblyLimits::max_datagrams`] datagrams in progress holding at most
//! [`ReassemblyLimits::max_bytes`] bytes, each with at most
//! [`ReassemblyLimits::max_pieces`] fragments, and dropped [`ReassemblyLimits::timeout`]
//! after its first fragment (Linux's `ipfrag_time` default). Every fragment that does not
//! end in a datagram is counted under a [`FragDrop`] reason. Overlapping fragments drop the
//! whole datagram (a fragment repeated exactly is a harmless duplicate and ignored).
//!
//! No allocation per fragment once warm: buffers of finished datagrams are kept for reuse.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::checksum::checksum;
use super::udp::{Ipv4Info, IP_MF, IP_OFFSET_MASK, MAX_IPV4_LEN};

/// How much reassembly may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    pub max_datagrams: usize,
    pub max_bytes: usize,
    pub max_pieces: usize,
    pub timeout: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_datagrams: 1024,
            max_bytes: 16 << 20,
            max_pieces: 64,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why fragments were dropped (each counts the fragments it threw away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragDrop {
    /// Two fragments cover some bytes differently.
    Overlap,
    /// Too many datagrams, or too many bytes, in progress.
    TableFull,
    /// More fragments than a datagram may have.
    TooManyPieces,
    /// Beyond the largest IPv4 datagram.
    TooLong,
    /// Two different ends, data past the end, or a middle fragment not a multiple of 8.
    Inconsistent,
    /// Not complete within the timeout.
    Timeout,
}

impl FragDrop {
    pub const ALL: [FragDrop; 6] = [
        FragDrop::Overlap,
        FragDrop::TableFull,
        FragDrop::TooManyPieces,
        FragDrop::TooLong,
        FragDrop::Inconsistent,
        FragDrop::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FragDrop::Overlap => "overlap",
            FragDrop::TableFull => "reassembly full",
            FragDrop::TooManyPieces => "too many fragments",
            FragDrop::TooLong => "too long",
            FragDrop::Inconsistent => "inconsistent",
            FragDrop::Timeout => "timed out",
        }
    }
}

/// Counters of the reassembly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragStats {
    /// Fragments handed in.
    pub fragments: u64,
    /// Datagrams completed.
    pub reassembled: u64,
    /// Exact repeats of a fragment already held (ignored).
    pub duplicates: u64,
    /// Fragments dropped, by [`FragDrop`] (in the order of [`FragDrop::ALL`]).
    pub dropped: [u64; 6],
}

impl FragStats {
    pub fn dropped(&self, reason: FragDrop) -> u64 {
        self.dropped[reason as usize]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// What became of a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Held until the rest arrives.
    Pending,
    /// The datagram is complete: the whole of it (header first, MF and offset cleared,
    /// checksum valid), valid until the next call.
    Complete(&'a [u8]),
    /// Dropped (with the fragments held for the same datagram, all counted).
    Dropped(FragDrop),
}

/// Fragments belong together when these are equal (RFC 791).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    protocol: u8,
}

#[derive(Debug, Default)]
struct Entry {
    started: Option<Instant>,
    /// The first fragment's header (options included); empty until it arrives.
    header: Vec<u8>,
    /// Payload bytes, as long as the furthest end seen.
    data: Vec<u8>,
    /// Byte ranges received, sorted, not overlapping.
    pieces: Vec<(usize, usize)>,
    /// The payload length, once the last fragment arrived.
    total: Option<usize>,
    received: usize,
}

/// The reassembly table.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    entries: HashMap<FragKey, Entry>,
    /// Start times in order, for expiry (entries finished early leave stale records, skipped).
    order: VecDeque<(Instant, FragKey)>,
    spare: Vec<Entry>,
    bytes: usize,
    out: Vec<u8>,
    pub stats: FragStats,
}

/// Spare entries kept for reuse.
const SPARE: usize = 32;

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Reassembler {
        Reassembler {
            limits,
            entries: HashMap::new(),
            order: VecDeque::new(),
            spare: Vec::new(),
            bytes: 0,
            out: vec![0u8; MAX_IPV4_LEN],
            stats: FragStats::default(),
        }
    }

    /// Datagrams in progress.
    pub fn in_progress(&self) -> usize {
        self.entries.len()
    }

    /// Payload bytes held.
    pub fn bytes_held(&self) -> usize {
        self.bytes
    }

    /// When the oldest datagram in progress times out (possibly earlier: a finished one's
    /// record is only skipped then).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.front().map(|(t, _)| *t + self.limits.timeout)
    }

    /// Drops the datagrams whose first fragment came `timeout` or longer before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.order.front() {
            if now.saturating_duration_since(t) < self.limits.timeout {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&key).is_some_and(|e| e.started == Some(t)) {
                self.discard(key, FragDrop::Timeout);
            }
        }
    }

    /// Adds one fragment (`ip` starts at its IPv4 header, `info` read from it and
    /// [`Ipv4Info::is_fragment`]).
    pub fn add(&mut self, now: Instant, ip: &[u8], info: &Ipv4Info) -> Outcome<'_> {
        self.expire(now);
        self.stats.fragments += 1;
        let key = FragKey {
            src: info.src,
            dst: info.dst,
            id: info.id,
            protocol: info.protocol,
        };
        let payload = &ip[info.header_len..info.total_len];
        let start = info.frag_offset();
        let end = start + payload.len();
        let more = info.more_fragments();
        let reject = |me: &mut Self, reason: FragDrop| {
            if me.entries.contains_key(&key) {
                me.discard(key, reason);
            }
            me.stats.dropped[reason as usize] += 1;
            Outcome::Dropped(reason)
        };
        if end + info.header_len > MAX_IPV4_LEN {
            return reject(self, FragDrop::TooLong);
        }
        if more && (payload.is_empty() || payload.len() % 8 != 0) {
            return reject(self, FragDrop::Inconsistent);
        }
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= self.limits.max_datagrams
                || self.bytes + end > self.limits.max_bytes
            {
                self.stats.dropped[FragDrop::TableFull as usize] += 1;
                return Outcome::Dropped(FragDrop::TableFull);
            }
            let mut e = self.spare.pop().unwrap_or_default();
            e.started = Some(now);
            self.entries.insert(key, e);
            self.order.push_back((now, key));
            if self.order.len() > 4 * self.limits.max_datagrams.max(16) {
                let entries = &self.entries;
                self.order
                    .retain(|(t, k)| entries.get(k).is_some_and(|e| e.started == Some(*t)));
            }
        }
        let Some(e) = self.entries.get(&key) else {
            return Outcome::Pending;
        };
        // Checks before anything is changed.
        let furthest = e.pieces.last().map_or(0, |p| p.1);
        let inconsistent = if more {
            e.total.is_some_and(|t| end > t)
        } else {
            e.total.is_some_and(|t| t != end) || furthest > end
        };
        let verdict = if inconsistent {
            Some(FragDrop::Inconsistent)
        } else if e.pieces.iter().any(|&(s, t)| s == start && t == end) {
            // The same bytes again: a duplicate if they are equal, else an overlap.
            if e.data[start..end] == *payload && (start != 0 || e.header == ip[..info.header_len]) {
                self.stats.duplicates += 1;
                return Outcome::Pending;
            }
            Some(FragDrop::Overlap)
        } else if e.pieces.iter().any(|&(s, t)| start < t && s < end) {
            Some(FragDrop::Overlap)
        } else if e.pieces.len() >= self.limits.max_pieces {
            Some(FragDrop::TooManyPieces)
        } else if end > e.data.len() && self.bytes + end - e.data.len() > self.limits.max_bytes {
            Some(FragDrop::TableFull)
        } else {
            None
        };
        if let Some(reason) = verdict {
            return reject(self, reason);
        }
        let Some(e) = self.entries.get_mut(&key) else {
            return Outcome::Pending;
        };
        if end > e.data.len() {
            self.bytes += end - e.data.len();
            e.data.resize(end, 0);
        }
        e.data[start..end].copy_from_slice(payload);
        let at = e.pieces.partition_point(|p| p.0 < start);
        e.pieces.insert(at, (start, end));
        e.received += payload.len();
        if start == 0 {
            e.header.clear();
            e.header.extend_from_slice(&ip[..info.header_len]);
        }
        if !more {
            e.total = Some(end);
        }
        let complete = e.total == Some(e.received) && !e.header.is_empty();
        if !complete {
            return Outcome::Pending;
        }
        let Some(e) = self.entries.remove(&key) else {
            return Outcome::Pending;
        };
        let hl = e.header.len();
        let len = hl + e.received;
        self.out[..hl].copy_from_slice(&e.header);
        self.out[hl..len].copy_from_slice(&e.data[..e.received]);
        let h = &mut self.out[..hl];
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let word = u16::from_be_bytes([h[6], h[7]]) & !(IP_MF | IP_OFFSET_MASK);
        h[6..8].copy_from_slice(&word.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        self.recycle(e);
        self.stats.reassembled += 1;
        Outcome::Complete(&self.out[..len])
    }

    /// Drops the datagram `key` and counts its fragments under `reason`.
    fn discard(&mut self, key: FragKey, reason: FragDrop) {
        if let Some(e) = self.entries.remove(&key) {
            self.stats.dropped[reason as usize] += e.pieces.len() as u64;
            self.recycle(e);
        }
    }

    fn recycle(&mut self, mut e: Entry) {
        self.bytes -= e.data.len();
        if self.spare.len() < SPARE {
            e.started = None;
            e.header.clear();
            e.data.clear();
            e.pieces.clear();
            e.total = None;
            e.received = 0;
            self.spare.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::udp::{fragment, write_udp_datagram, UdpDatagram, UdpSpec};
    use proptest::prelude::*;

    fn datagram(len: usize, id: u16) -> Vec<u8> {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let mut out = vec![0u8; 70000];
        let n = write_udp_datagram(
            &mut out,
            &UdpSpec {
                src: Ipv4Addr::new(198, 18, 0, 10),
                dst: Ipv4Addr::new(198, 18, 0, 20),
                src_port: 33000,
                dst_port: 53,
                tos: 0,
                ttl: 64,
                id,
                dont_fragment: false,
                payload: &payload,
            },
        )
        .unwrap();
        out.truncate(n);
        out
    }

    fn pieces(d: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        fragment(d, mtu, &mut vec![0u8; mtu], &mut |p| v.push(p.to_vec())).unwrap();
        v
    }

    fn add<'a>(r: &'a mut Reassembler, now: Instant, p: &[u8]) -> Outcome<'a> {
        let info = Ipv4Info::parse(p).unwrap();
        assert!(info.is_fragment());
        r.add(now, p, &info)
    }

    #[test]
    fn out_of_order_with_a_duplicate() {
        let d = datagram(4000, 7);
        let mut ps = pieces(&d, 1500);
        ps.reverse();
        let dup = ps[1].clone();
        ps.insert(2, dup);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let now = Instant::now();
        let last = ps.len() - 1;
        for (i, p) in ps.iter().enumerate() {
            match add(&mut r, now, p) {
                Outcome::Pending => assert!(i < last),
                Outcome::Complete(whole) => {
                    assert_eq!(i, last);
                    assert_eq!(whole, &d[..]);
                    assert!(UdpDatagram::parse(whole).is_ok());
                }
                Outcome::Dropped(why) => panic!("{why:?}"),
            }
        }
        assert_eq!(r.stats.reassembled, 1);
        assert_eq!(r.stats.duplicates, 1);
        assert_eq!((r.in_progress(), r.bytes_held()), (0, 0));
    }

    #[test]
    fn a_missing_fragment_times_out_counted() {
        let d = datagram(3000, 9);
        let ps = pieces(&d, 1500);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let t0 = Instant::now();
        assert_eq!(add(&mut r, t0, &ps[0]), Outcome::Pending);
        assert_eq!(add(&mut r, t0, &ps[2]), Outcome::Pending);
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(30)));
        r.expire(t0 + Duration::from_secs(29));
        assert_eq!(r.in_progress(), 1);
        r.expire(t0 + Duration::from_secs(30));
        assert_eq!(r.in_progress(), 0);
        assert_eq!(r.stats.dropped(FragDrop::Timeout), 2);
        // The late middle piece starts a datagram of its own, which times out too.
        assert_eq!(
            add(&mut r, t0 + Duration::from_secs(31), &ps[1]),
            Outcome::Pending
        );
        assert_eq!(r.bytes_held(), 2960);
    }

    #[test]
    fn an_overlap_drops_the_whole_datagram() {
        let d = datagram(3000, 11);
        let ps = pieces(&d, 1500);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let now = Instant::now();
        assert_eq!(add(&mut r, now, &ps[0]), Outcome::Pending);
        // The second piece again, with other bytes: not a duplicate.
        let mut other = ps[1].clone();
        assert_eq!(add(&mut r, now, &ps[1]), Outcome::Pending);
        other[30] ^= 0xff;
        assert_eq!(
            add(&mut r, now, &other),
            Outcome::Dropped(FragDrop::Overlap)
        );
        assert_eq!(r.stats.dropped(FragDrop::Overlap), 3);
        assert_eq!(r.in_progress(), 0);
        // The last piece now starts a new datagram that never completes: no half datagram.
        assert_eq!(add(&mut r, now, &ps[2]), Outcome::Pending);
    }

    #[test]
    fn limits_hold() {
        let limits = ReassemblyLimits {
            max_datagrams: 2,
            max_bytes: 1 << 20,
            max_pieces: 3,
            timeout: Duration::from_secs(30),
        };
        let mut r = Reassembler::new(limits);
        let now = Instant::now();
        for id in 0..2 {
            let d = datagram(3000, id);
            assert_eq!(add(&mut r, now, &pieces(&d, 1500)[0]), Outcome::Pending);
        }
        let d = datagram(3000, 5);
        assert_eq!(
            add(&mut r, now, &pieces(&d, 1500)[0]),
            Outcome::Dropped(FragDrop::TableFull)
        );
        // Four pieces for a datagram allowed three.
        let mut r = Reassembler::new(limits);
        let d = datagram(1000, 0);
        let ps = pieces(&d, 300);
        assert_eq!(ps.len(), 4);
        let outcomes: Vec<_> = ps
            .iter()
            .map(|p| format!("{:?}", add(&mut r, now, p)))
            .collect();
        assert_eq!(
            outcomes,
            ["Pending", "Pending", "Pending", "Dropped(TooManyPieces)"]
        );
        assert_eq!(r.stats.dropped(FragDrop::TooManyPieces), 4);
        assert_eq!((r.in_progress(), r.bytes_held()), (0, 0));
    }

    proptest! {
        /// Any order, any duplicates, any fragment size: the datagram comes out whole and
        /// exactly once, or (pieces missing) not at all.
        #[test]
        fn reassembles_any_order(len in 0usize..9000, mtu in 68usize..2000,
                                 seed in any::<u64>(), drop_one in any::<bool>()) {
            let d = datagram(len, (seed & 0xffff) as u16);
            let mut ps = pieces(&d, mtu);
            if ps.len() < 2 {
                return Ok(());
            }
            let mut x = seed | 1;
            for i in (1..ps.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                ps.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let dup = ps[(x % ps.len() as u64) as usize].clone();
            ps.push(dup);
            if drop_one {
                ps.retain(|p| Ipv4Info::parse(p).unwrap().frag_offset() != 0);
            }
            let mut r = Reassembler::new(ReassemblyLimits { max_pieces: 1000, ..Default::default() });
            let now = Instant::now();
            let mut done = 0;
            for p in &ps {
                if let Outcome::Complete(whole) = add(&mut r, now, p) {
                    prop_assert_eq!(whole, &d[..]);
                    done += 1;
                }
            }
            prop_assert_eq!(done, usize::from(!drop_one));
        }
    }
}
