//! IP reassembly (IPv4: RFC 791; IPv6: RFC 8200 section 4.5; both with RFC 5722's caution
//! about overlaps): the fragments of a datagram captured by pcap or read from a file are put
//! back together before UDP replay reads its ports, so a datagram is replayed whole or not at
//! all, never in part. One table holds both families.
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
use std::time::{Duration, Instant};

use super::checksum::checksum;
use super::ipv6::{Frag6, IPV6_HEADER_LEN};
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

/// Fragments belong together when these are equal (RFC 791; RFC 8200 4.5 for IPv6, whose
/// key has no protocol). IPv4 addresses are kept IPv4-mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    protocol: u8,
    v6: bool,
}

/// One fragment of either family, as the table needs it.
struct Piece<'a> {
    key: FragKey,
    /// The headers a reassembled datagram starts with (IPv4 header; IPv6 unfragmentable part).
    header: &'a [u8],
    payload: &'a [u8],
    start: usize,
    more: bool,
    /// IPv6: the byte of `header` that names the Fragment header, and what it names once the
    /// datagram is whole.
    next: Option<(usize, u8)>,
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
    /// IPv6: see [`Piece::next`] (from the first fragment).
    next: Option<(usize, u8)>,
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

/// Start-time records kept before the stale ones (datagrams finished early) are swept.
fn order_cap(limits: &ReassemblyLimits) -> usize {
    4 * limits.max_datagrams.clamp(16, 1 << 16)
}

/// Spare entries kept for reuse.
const SPARE: usize = 32;

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Reassembler {
        // Sized for the limits up front: no allocation per fragment once running.
        Reassembler {
            limits,
            entries: HashMap::with_capacity(limits.max_datagrams.min(1 << 16)),
            order: VecDeque::with_capacity(order_cap(&limits) + 1),
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
        let piece = Piece {
            key: FragKey {
                src: info.src.to_ipv6_mapped().octets(),
                dst: info.dst.to_ipv6_mapped().octets(),
                id: u32::from(info.id),
                protocol: info.protocol,
                v6: false,
            },
            header: &ip[..info.header_len],
            payload: &ip[info.header_len..info.total_len],
            start: info.frag_offset(),
            more: info.more_fragments(),
            next: None,
        };
        self.add_piece(now, piece)
    }

    /// Adds one IPv6 fragment (`ip` starts at its IPv6 header, `frag` read from it).
    pub fn add6(&mut self, now: Instant, ip: &[u8], frag: &Frag6) -> Outcome<'_> {
        let piece = Piece {
            key: FragKey {
                src: frag.src.octets(),
                dst: frag.dst.octets(),
                id: frag.id,
                protocol: 0,
                v6: true,
            },
            header: &ip[..frag.unfragmentable],
            payload: &ip[frag.data_start..frag.data_end],
            start: frag.offset,
            more: frag.more,
            next: Some((frag.next_at, frag.next_header)),
        };
        self.add_piece(now, piece)
    }

    fn add_piece(&mut self, now: Instant, piece: Piece<'_>) -> Outcome<'_> {
        self.expire(now);
        self.stats.fragments += 1;
        let Piece {
            key,
            header,
            payload,
            start,
            more,
            next,
        } = piece;
        let end = start + payload.len();
        let reject = |me: &mut Self, reason: FragDrop| {
            if me.entries.contains_key(&key) {
                me.discard(key, reason);
            }
            me.stats.dropped[reason as usize] += 1;
            Outcome::Dropped(reason)
        };
        // The whole datagram's length field: IPv4 counts the header, IPv6 only what follows
        // its fixed header.
        let counted = if key.v6 {
            header.len() - IPV6_HEADER_LEN
        } else {
            header.len()
        };
        if end + counted > MAX_IPV4_LEN {
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
            if self.order.len() > order_cap(&self.limits) {
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
            if e.data[start..end] == *payload && (start != 0 || e.header == header) {
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
            e.header.extend_from_slice(header);
            e.next = next;
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
        if let Some((at, next)) = e.next {
            h[at] = next;
            h[4..6].copy_from_slice(&((len - IPV6_HEADER_LEN) as u16).to_be_bytes());
            self.recycle(e);
            self.stats.reassembled += 1;
            return Outcome::Complete(&self.out[..len]);
        }
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
            e.next = None;
            self.spare.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ipv6::{fragment6, write_udp6_datagram, Udp6Datagram, Udp6Spec};
    use crate::packet::udp::{fragment, write_udp_datagram, UdpDatagram, UdpSpec};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

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

    fn datagram6(len: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..len).map(|i| (i * 17 + 3) as u8).collect();
        let mut out = vec![0u8; 70000];
        let n = write_udp6_datagram(
            &mut out,
            &Udp6Spec {
                src: "2001:db8::10".parse().unwrap(),
                dst: "2001:db8::20".parse().unwrap(),
                src_port: 33000,
                dst_port: 53,
                traffic_class: 0,
                flow_label: 1,
                hop_limit: 64,
                payload: &payload,
            },
        )
        .unwrap();
        out.truncate(n);
        out
    }

    fn pieces6(d: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        fragment6(d, mtu, id, &mut vec![0u8; mtu], &mut |p| v.push(p.to_vec())).unwrap();
        v
    }

    fn add6<'a>(r: &'a mut Reassembler, now: Instant, p: &[u8]) -> Outcome<'a> {
        let f = Frag6::parse(p).unwrap().expect("a fragment");
        r.add6(now, p, &f)
    }

    #[test]
    fn ipv6_fragments_reassemble_to_the_datagram() {
        let d = datagram6(4000);
        let mut ps = pieces6(&d, 1280, 77);
        assert_eq!(ps.len(), 4);
        ps.swap(0, 3);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let now = Instant::now();
        // Another datagram's fragments (another id) do not mix in.
        let other = pieces6(&datagram6(2000), 1280, 78);
        assert_eq!(add6(&mut r, now, &other[1]), Outcome::Pending);
        let mut whole = None;
        for p in &ps {
            if let Outcome::Complete(w) = add6(&mut r, now, p) {
                whole = Some(w.to_vec());
            }
        }
        let whole = whole.expect("complete");
        assert_eq!(whole, d);
        assert!(Udp6Datagram::parse(&whole).is_ok());
        assert_eq!(r.in_progress(), 1);
        // With an extension header before the Fragment header, it stays in front.
        let mut with_dst = Vec::new();
        for p in pieces6(&d, 1280, 79) {
            let mut q = p[..40].to_vec();
            q[6] = crate::packet::ipv6::NH_DEST_OPTS;
            q.extend_from_slice(&[crate::packet::ipv6::NH_FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
            q.extend_from_slice(&p[40..]);
            let plen = (q.len() - 40) as u16;
            q[4..6].copy_from_slice(&plen.to_be_bytes());
            with_dst.push(q);
        }
        let mut whole = None;
        for p in &with_dst {
            if let Outcome::Complete(w) = add6(&mut r, now, p) {
                whole = Some(w.to_vec());
            }
        }
        let whole = whole.expect("complete");
        let u = Udp6Datagram::parse(&whole).unwrap();
        assert_eq!(u.ip.extensions, 1);
        assert_eq!(&whole[48..], &d[40..]);
    }

    proptest! {
        /// IPv6 as IPv4: any order, a duplicate, any fragment size: whole once, or not at all.
        #[test]
        fn reassembles_any_order6(len in 0usize..9000, mtu in 1280usize..3000,
                                  seed in any::<u64>(), drop_one in any::<bool>()) {
            let d = datagram6(len);
            let mut ps = pieces6(&d, mtu, seed as u32);
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
                ps.retain(|p| Frag6::parse(p).unwrap().unwrap().offset != 0);
            }
            let mut r = Reassembler::new(ReassemblyLimits::default());
            let now = Instant::now();
            let mut done = 0;
            for p in &ps {
                if let Outcome::Complete(whole) = add6(&mut r, now, p) {
                    prop_assert_eq!(whole, &d[..]);
                    done += 1;
                }
            }
            prop_assert_eq!(done, usize::from(!drop_one));
        }
    }
}
