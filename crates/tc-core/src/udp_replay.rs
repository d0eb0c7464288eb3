//! UDP replay (`tcpcopy --udp`, the original's "udpcopy" build, spec 8): every captured
//! datagram to a `-x` source is rewritten for the transfer's target and queued for sending.
//! Stateless: the target's answers are not tracked and no intercept is involved.
//!
//! Per captured IPv4 packet:
//! 1. the IPv4 header is checked; a fragment goes to the [`Reassembler`] and the datagram
//!    continues only once it is whole (so a datagram is replayed whole or not at all; the raw
//!    socket capture hands over datagrams the kernel already reassembled);
//! 2. the UDP header is checked and the destination matched against the transfers;
//! 3. as for TCP sessions (spec 2.4-2.7): `-H` replaces a loopback source, `-c` maps the
//!    client address, `-r`/`-g` sample by (client address, port) so a flow is kept or left
//!    out as a whole, `-f` shifts the source port and `-n` adds copies with their own ports
//!    (and client addresses with `-c`);
//! 4. each copy is written with a fresh 20-byte IPv4 header (IP options are not replayed) and
//!    a UDP checksum computed in full; a copy longer than `-M` is cut into IPv4 fragments
//!    (offsets in 8-byte units, MF on all but the last, DF cleared) under an IP id of its own,
//!    so copies that share a source address never mix their fragments at the target.
//!
//! IPv6 (transfers of [`Transfer6`], a run is of one family): extension headers are skipped,
//! fragments are reassembled as IPv4's (same table and limits), `-c` takes a prefix
//! ([`ClientPrefix6`]), the checksum covers the IPv6 pseudo-header, and a copy longer than
//! `-M` (at least 1280) leaves in IPv6 fragments (a Fragment header, an id of its own).
//!
//! The queue of datagrams waiting for the send backend is bounded
//! ([`UdpConfig::max_queued_bytes`]); past it new datagrams are dropped and counted. Nothing
//! here does I/O or reads a clock: time comes in as arguments.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use crate::packet::fragments::{FragStats, Outcome, Reassembler, ReassemblyLimits};
use crate::packet::ipv6::{fragment6, write_udp6_datagram, Frag6, Udp6Datagram, Udp6Spec, V6Error};
use crate::packet::udp::{
    fragment, write_udp_datagram, HeaderError, Ipv4Info, UdpDatagram, UdpSpec, IPPROTO_UDP,
    IPV4_HEADER_LEN, MAX_IPV4_LEN, UDP_HEADER_LEN,
};
use crate::session::ingress::{self, ClientIpMap, Sampler};
use crate::session::{ReplayConfig, Transfer};

/// What UDP replay needs from the command line.
#[derive(Debug, Clone)]
pub struct UdpConfig {
    pub transfers: Vec<Transfer>,
    /// `-c`, expanded, targets left out; empty = keep client addresses.
    pub client_ips: Vec<Ipv4Addr>,
    pub localhost_replacement: Option<Ipv4Addr>,
    pub replicas: u16,
    pub port_shift: u16,
    pub sample_percent: u8,
    pub gradual: bool,
    /// `-M`: longer datagrams leave as fragments of at most this many bytes.
    pub mtu: u16,
    /// Seed of the random port offset `R` of `-n`/`-f`.
    pub seed: u64,
    pub reassembly: ReassemblyLimits,
    /// Most bytes waiting for the send backend.
    pub max_queued_bytes: usize,
    /// IPv6 transfers (`-x [v6]:port-[v6]:port`); queued packets of these carry their index.
    pub transfers6: Vec<Transfer6>,
    /// `-c` with an IPv6 prefix.
    pub client_prefix6: Option<ClientPrefix6>,
}

/// One IPv6 `-x` transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer6 {
    /// Online address to match; `None` = any local address.
    pub src_ip: Option<Ipv6Addr>,
    pub src_port: u16,
    pub dst_ip: Ipv6Addr,
    pub dst_port: u16,
    /// Datalink send (`--send pcap`): MAC of the sending interface and of the next hop.
    pub src_mac: Option<[u8; 6]>,
    pub dst_mac: Option<[u8; 6]>,
}

/// `-c PREFIX/LEN` for IPv6: fake clients PREFIX+1 .. PREFIX+count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPrefix6 {
    pub prefix: Ipv6Addr,
    pub len: u8,
}

impl ClientPrefix6 {
    /// Most fake clients taken from a prefix.
    pub const MAX_CLIENTS: u32 = 4096;

    /// How many fake clients the prefix gives (its host part, without the all-zero address
    /// and the last one; at most [`Self::MAX_CLIENTS`]).
    pub fn count(&self) -> u32 {
        let host_bits = 128 - u32::from(self.len.min(128));
        if host_bits >= 13 {
            Self::MAX_CLIENTS
        } else {
            ((1u32 << host_bits).saturating_sub(2)).min(Self::MAX_CLIENTS)
        }
    }

    /// Fake client `i` (0-based, below [`Self::count`]).
    pub fn client(&self, i: u32) -> Ipv6Addr {
        let host_bits = 128 - u32::from(self.len.min(128));
        let mask = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        Ipv6Addr::from((u128::from(self.prefix) & !mask) | (u128::from(i) + 1))
    }
}

/// The IPv4 address in `ip`, if it is one (IPv4 transfers carry only IPv4 addresses).
fn v4(ip: std::net::IpAddr) -> Option<Ipv4Addr> {
    match ip {
        std::net::IpAddr::V4(a) => Some(a),
        std::net::IpAddr::V6(_) => None,
    }
}

/// The 16-bit key of an IPv6 client address (its eight 16-bit words added), the IPv6
/// counterpart of `session::ingress::ip_key16`.
pub fn ip6_key16(ip: Ipv6Addr) -> u16 {
    ip.segments().iter().fold(0u16, |a, w| a.wrapping_add(*w))
}

/// The address `-r` sampling looks at for an IPv6 client: its four 32-bit words xor-ed.
fn sample_addr6(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    Ipv4Addr::from(w(0) ^ w(4) ^ w(8) ^ w(12))
}

impl UdpConfig {
    /// The UDP part of the TCP replay's configuration.
    pub fn from_replay(cfg: &ReplayConfig) -> UdpConfig {
        UdpConfig {
            transfers: cfg.transfers.clone(),
            client_ips: cfg.client_ips.iter().filter_map(|ip| v4(*ip)).collect(),
            localhost_replacement: cfg.localhost_replacement.and_then(v4),
            replicas: cfg.replicas,
            port_shift: cfg.port_shift,
            sample_percent: cfg.sample_percent,
            gradual: cfg.gradual,
            mtu: cfg.mtu,
            seed: cfg.seed,
            reassembly: ReassemblyLimits::default(),
            max_queued_bytes: 8 << 20,
            transfers6: Vec::new(),
            client_prefix6: None,
        }
    }
}

/// Why a captured packet was not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpDrop {
    Truncated,
    BadIpHeader,
    NotUdp,
    BadUdpHeader,
    /// Not addressed to a `-x` source.
    NoTransfer,
    /// Left out by `-r`/`-g`.
    Sampled,
    /// The send queue is full (the backend cannot keep up).
    QueueFull,
    /// Rewritten, longer than an IPv4 datagram may be.
    TooLong,
    /// An IPv6 fragment that cannot be reassembled (a second Fragment header).
    Ipv6Fragment,
    /// IPv6 whose upper layer cannot be read (ESP, no next header, a long extension chain).
    Ipv6Unreadable,
    /// An IPv6 copy that cannot be cut into fragments of `-M` bytes.
    Ipv6TooBig,
}

impl UdpDrop {
    pub const ALL: [UdpDrop; 11] = [
        UdpDrop::Truncated,
        UdpDrop::BadIpHeader,
        UdpDrop::NotUdp,
        UdpDrop::BadUdpHeader,
        UdpDrop::NoTransfer,
        UdpDrop::Sampled,
        UdpDrop::QueueFull,
        UdpDrop::TooLong,
        UdpDrop::Ipv6Fragment,
        UdpDrop::Ipv6Unreadable,
        UdpDrop::Ipv6TooBig,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UdpDrop::Truncated => "truncated",
            UdpDrop::BadIpHeader => "bad ip header",
            UdpDrop::NotUdp => "not udp",
            UdpDrop::BadUdpHeader => "bad udp header",
            UdpDrop::NoTransfer => "no transfer",
            UdpDrop::Sampled => "sampled out",
            UdpDrop::QueueFull => "send queue full",
            UdpDrop::TooLong => "too long",
            UdpDrop::Ipv6Fragment => "ipv6 fragment",
            UdpDrop::Ipv6Unreadable => "ipv6 unreadable",
            UdpDrop::Ipv6TooBig => "ipv6 over mtu",
        }
    }
}

impl From<V6Error> for UdpDrop {
    fn from(e: V6Error) -> Self {
        match e {
            V6Error::Truncated => UdpDrop::Truncated,
            V6Error::BadHeader => UdpDrop::BadIpHeader,
            V6Error::Fragment => UdpDrop::Ipv6Fragment,
            V6Error::Unreadable => UdpDrop::Ipv6Unreadable,
            V6Error::NotUdp => UdpDrop::NotUdp,
            V6Error::BadUdpHeader => UdpDrop::BadUdpHeader,
        }
    }
}

impl From<HeaderError> for UdpDrop {
    fn from(e: HeaderError) -> Self {
        match e {
            HeaderError::Truncated => UdpDrop::Truncated,
            HeaderError::BadIpHeader => UdpDrop::BadIpHeader,
            HeaderError::NotUdp => UdpDrop::NotUdp,
            HeaderError::BadUdpHeader => UdpDrop::BadUdpHeader,
        }
    }
}

/// Counters of UDP replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// IPv4 packets handed in (fragments each count).
    pub packets: u64,
    /// Whole datagrams to a `-x` source (after reassembly): the original's "udp packets
    /// captured".
    pub captured: u64,
    /// Datagrams queued for the target (copies of `-n` included).
    pub queued: u64,
    /// Of those, datagrams cut into fragments, and the fragments queued for them.
    pub fragmented: u64,
    pub fragments_queued: u64,
    /// Packets (whole datagrams and fragments) queued.
    pub packets_queued: u64,
    /// Dropped, by [`UdpDrop`] (in the order of [`UdpDrop::ALL`]).
    pub dropped: [u64; 11],
}

impl UdpStats {
    pub fn dropped(&self, reason: UdpDrop) -> u64 {
        self.dropped[reason as usize]
    }

    fn count(&mut self, reason: UdpDrop) {
        self.dropped[reason as usize] += 1;
    }
}

/// One packet waiting for the send backend.
#[derive(Debug, Clone, Copy)]
struct Queued {
    start: usize,
    end: usize,
    transfer: usize,
}

/// The UDP replay machine. See the module docs.
pub struct UdpReplayer {
    cfg: UdpConfig,
    client_ips: ClientIpMap,
    sampler: Sampler,
    port_offset: u32,
    reassembly: Reassembler,
    /// Copy of a reassembled datagram while it is replayed.
    whole: Vec<u8>,
    /// One rewritten copy before it is queued (whole or in fragments).
    copy: Vec<u8>,
    piece: Vec<u8>,
    queue_bytes: Vec<u8>,
    queue: Vec<Queued>,
    /// Packets of `queue` already sent.
    head: usize,
    next_id: u16,
    /// `-c` prefix for IPv6: slot+1 per 16-bit client key, 0 = unassigned.
    slots6: Vec<u16>,
    next6: u32,
    stats: UdpStats,
}

impl UdpReplayer {
    pub fn new(cfg: UdpConfig) -> UdpReplayer {
        let mtu = usize::from(cfg.mtu.max(68));
        UdpReplayer {
            client_ips: ClientIpMap::new(cfg.client_ips.iter().map(|&ip| ip.into()).collect()),
            sampler: Sampler::new(cfg.sample_percent, cfg.gradual),
            port_offset: ingress::port_offset(cfg.seed),
            reassembly: Reassembler::new(cfg.reassembly),
            whole: vec![0u8; MAX_IPV4_LEN],
            copy: vec![0u8; MAX_IPV4_LEN],
            piece: vec![0u8; mtu],
            queue_bytes: Vec::with_capacity(1 << 16),
            queue: Vec::with_capacity(256),
            head: 0,
            next_id: (cfg.seed >> 16) as u16,
            slots6: if cfg.client_prefix6.is_some() {
                vec![0; 1 << 16]
            } else {
                Vec::new()
            },
            next6: 0,
            stats: UdpStats::default(),
            cfg,
        }
    }

    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    pub fn fragment_stats(&self) -> FragStats {
        self.reassembly.stats
    }

    /// Datagrams being reassembled.
    pub fn reassembling(&self) -> usize {
        self.reassembly.in_progress()
    }

    /// When [`UdpReplayer::on_timer`] has work (incomplete datagrams to time out).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.reassembly.next_deadline()
    }

    /// Times out incomplete datagrams.
    pub fn on_timer(&mut self, now: Instant) {
        self.reassembly.expire(now);
    }

    /// A captured IPv4 packet (starting at its header; link padding after it allowed).
    pub fn on_packet(&mut self, now: Instant, ip: &[u8]) {
        self.stats.packets += 1;
        if ip.first().is_some_and(|v| v >> 4 == 6) {
            return self.on_packet6(now, ip);
        }
        let info = match Ipv4Info::parse(ip) {
            Ok(i) => i,
            Err(e) => return self.stats.count(e.into()),
        };
        if info.protocol != IPPROTO_UDP {
            return self.stats.count(UdpDrop::NotUdp);
        }
        if !info.is_fragment() {
            return self.on_datagram(now, ip);
        }
        // Fragments for an address no transfer captures are not worth holding.
        if !self
            .cfg
            .transfers
            .iter()
            .any(|t| t.src_ip.is_none_or(|a| a == info.dst))
        {
            return self.stats.count(UdpDrop::NoTransfer);
        }
        let len = match self.reassembly.add(now, ip, &info) {
            Outcome::Complete(whole) => {
                self.whole[..whole.len()].copy_from_slice(whole);
                whole.len()
            }
            Outcome::Pending | Outcome::Dropped(_) => return,
        };
        let whole = std::mem::take(&mut self.whole);
        self.on_datagram(now, &whole[..len]);
        self.whole = whole;
    }

    /// A whole datagram: steps 2 to 4 of the module docs.
    fn on_datagram(&mut self, now: Instant, ip: &[u8]) {
        let d = match UdpDatagram::parse(ip) {
            Ok(d) => d,
            Err(e) => return self.stats.count(e.into()),
        };
        let Some(transfer) = self
            .cfg
            .transfers
            .iter()
            .position(|t| t.src_port == d.dst_port && t.src_ip.is_none_or(|a| a == d.ip.dst))
        else {
            return self.stats.count(UdpDrop::NoTransfer);
        };
        self.stats.captured += 1;
        let t = self.cfg.transfers[transfer];
        let mut src = d.ip.src;
        if src.is_loopback() {
            if let Some(h) = self.cfg.localhost_replacement {
                src = h;
            }
        }
        if let Some(fake) = self.client_ips.map(src).and_then(v4) {
            src = fake;
        }
        let Some(dst) = v4(t.dst_ip) else {
            return self.stats.count(UdpDrop::NoTransfer);
        };
        if !self.sampler.admit(now, src, d.src_port) {
            return self.stats.count(UdpDrop::Sampled);
        }
        let port = ingress::shift_port(d.src_port, self.cfg.port_shift, self.port_offset);
        let mut spec = UdpSpec {
            src,
            dst,
            src_port: port,
            dst_port: t.dst_port,
            tos: d.ip.tos,
            ttl: d.ip.ttl,
            id: d.ip.id,
            dont_fragment: d.ip.dont_fragment(),
            payload: d.payload,
        };
        self.queue_copy(&spec, transfer);
        for i in 1..self.cfg.replicas.max(1) {
            let p = ingress::replica_port(port, i, self.port_offset);
            spec.src_port = ingress::shift_port(p, self.cfg.port_shift, self.port_offset);
            if self.client_ips.is_active() {
                let key = ingress::replica_ip_key(d.ip.src, i, self.port_offset);
                if let Some(fake) = self.client_ips.map_key(key).and_then(v4) {
                    spec.src = fake;
                }
            }
            self.queue_copy(&spec, transfer);
        }
    }

    /// An IPv6 packet: steps 2 to 4 of the module docs for IPv6.
    fn on_packet6(&mut self, now: Instant, ip: &[u8]) {
        let d = match Udp6Datagram::parse(ip) {
            Ok(d) => d,
            Err(V6Error::Fragment) => return self.on_fragment6(now, ip),
            Err(e) => return self.stats.count(e.into()),
        };
        let Some(transfer) = self
            .cfg
            .transfers6
            .iter()
            .position(|t| t.src_port == d.dst_port && t.src_ip.is_none_or(|a| a == d.ip.dst))
        else {
            return self.stats.count(UdpDrop::NoTransfer);
        };
        self.stats.captured += 1;
        let t = self.cfg.transfers6[transfer];
        let src = self.fake6(ip6_key16(d.ip.src)).unwrap_or(d.ip.src);
        if !self.sampler.admit(now, sample_addr6(src), d.src_port) {
            return self.stats.count(UdpDrop::Sampled);
        }
        let port = ingress::shift_port(d.src_port, self.cfg.port_shift, self.port_offset);
        let mut spec = Udp6Spec {
            src,
            dst: t.dst_ip,
            src_port: port,
            dst_port: t.dst_port,
            traffic_class: d.ip.traffic_class,
            flow_label: d.ip.flow_label,
            hop_limit: d.ip.hop_limit,
            payload: d.payload,
        };
        self.queue_copy6(&spec, transfer);
        for i in 1..self.cfg.replicas.max(1) {
            let p = ingress::replica_port(port, i, self.port_offset);
            spec.src_port = ingress::shift_port(p, self.cfg.port_shift, self.port_offset);
            let key = ip6_key16(d.ip.src)
                .wrapping_add(((2 * u32::from(i) - 1) * 32 + self.port_offset) as u16);
            if let Some(fake) = self.fake6(key) {
                spec.src = fake;
            }
            self.queue_copy6(&spec, transfer);
        }
    }

    /// An IPv6 fragment: reassembled (bounded, as IPv4's), then replayed whole.
    fn on_fragment6(&mut self, now: Instant, ip: &[u8]) {
        let f = match Frag6::parse(ip) {
            Ok(Some(f)) => f,
            Ok(None) => return self.stats.count(UdpDrop::Ipv6Fragment),
            Err(e) => return self.stats.count(e.into()),
        };
        if !self
            .cfg
            .transfers6
            .iter()
            .any(|t| t.src_ip.is_none_or(|a| a == f.dst))
        {
            return self.stats.count(UdpDrop::NoTransfer);
        }
        let len = match self.reassembly.add6(now, ip, &f) {
            Outcome::Complete(whole) => {
                self.whole[..whole.len()].copy_from_slice(whole);
                whole.len()
            }
            Outcome::Pending | Outcome::Dropped(_) => return,
        };
        let whole = std::mem::take(&mut self.whole);
        // Once whole it has no Fragment header left (a second one is counted, not walked).
        match Udp6Datagram::parse(&whole[..len]) {
            Err(V6Error::Fragment) => self.stats.count(UdpDrop::Ipv6Fragment),
            _ => self.on_packet6(now, &whole[..len]),
        }
        self.whole = whole;
    }

    /// The `-c` prefix's fake client for the client key `key` (sticky, first-seen round
    /// robin); `None` without a prefix.
    fn fake6(&mut self, key: u16) -> Option<Ipv6Addr> {
        let prefix = self.cfg.client_prefix6?;
        let count = prefix.count().max(1);
        let slot = &mut self.slots6[usize::from(key)];
        if *slot == 0 {
            *slot = (self.next6 % count) as u16 + 1;
            self.next6 = self.next6.wrapping_add(1);
        }
        Some(prefix.client(u32::from(*slot) - 1))
    }

    /// Writes one IPv6 copy and queues it, whole or (longer than `-M`) in fragments.
    fn queue_copy6(&mut self, spec: &Udp6Spec<'_>, transfer: usize) {
        let total = crate::packet::ipv6::IPV6_HEADER_LEN + UDP_HEADER_LEN + spec.payload.len();
        // Each fragment repeats the 40-byte header and adds 8 bytes.
        if self.queued_bytes() + total + 48 * (total / 1024 + 1) > self.cfg.max_queued_bytes {
            return self.stats.count(UdpDrop::QueueFull);
        }
        let Some(n) = write_udp6_datagram(&mut self.copy, spec) else {
            return self.stats.count(UdpDrop::TooLong);
        };
        // IPv6 links carry at least 1280 bytes.
        let mtu = usize::from(self.cfg.mtu.max(1280));
        let id = u32::from(self.next_id) << 16 | u32::from(self.next_id);
        if n > mtu {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let Self {
            copy,
            piece,
            queue_bytes,
            queue,
            ..
        } = self;
        if piece.len() < mtu {
            piece.resize(mtu, 0);
        }
        let mut pieces = 0u64;
        let sent = fragment6(&copy[..n], mtu, id, piece, &mut |p| {
            let start = queue_bytes.len();
            queue_bytes.extend_from_slice(p);
            queue.push(Queued {
                start,
                end: queue_bytes.len(),
                transfer,
            });
            pieces += 1;
        });
        if sent.is_none() {
            return self.stats.count(UdpDrop::Ipv6TooBig);
        }
        self.stats.queued += 1;
        self.stats.packets_queued += pieces;
        if pieces > 1 {
            self.stats.fragmented += 1;
            self.stats.fragments_queued += pieces;
        }
    }

    /// Writes one copy and queues it, whole or in fragments.
    fn queue_copy(&mut self, spec: &UdpSpec<'_>, transfer: usize) {
        let total = IPV4_HEADER_LEN + UDP_HEADER_LEN + spec.payload.len();
        if total > MAX_IPV4_LEN {
            return self.stats.count(UdpDrop::TooLong);
        }
        if self.queued_bytes() + total + IPV4_HEADER_LEN * (total / 8) > self.cfg.max_queued_bytes {
            return self.stats.count(UdpDrop::QueueFull);
        }
        let mtu = usize::from(self.cfg.mtu.max(68));
        let mut spec = *spec;
        if total > mtu {
            // Fragments of copies that share addresses must not share an id.
            spec.id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            spec.dont_fragment = false;
        }
        let n = match write_udp_datagram(&mut self.copy, &spec) {
            Ok(n) => n,
            Err(_) => return self.stats.count(UdpDrop::TooLong),
        };
        let Self {
            copy,
            piece,
            queue_bytes,
            queue,
            ..
        } = self;
        let mut pieces = 0u64;
        let result = fragment(&copy[..n], mtu, piece, &mut |p| {
            let start = queue_bytes.len();
            queue_bytes.extend_from_slice(p);
            queue.push(Queued {
                start,
                end: queue_bytes.len(),
                transfer,
            });
            pieces += 1;
        });
        if result.is_err() {
            return self.stats.count(UdpDrop::TooLong);
        }
        self.stats.queued += 1;
        self.stats.packets_queued += pieces;
        if pieces > 1 {
            self.stats.fragmented += 1;
            self.stats.fragments_queued += pieces;
        }
    }

    /// Bytes waiting for the send backend.
    pub fn queued_bytes(&self) -> usize {
        match self.queue.get(self.head) {
            Some(q) => self.queue_bytes.len() - q.start,
            None => 0,
        }
    }

    /// Packets waiting for the send backend.
    pub fn queued_packets(&self) -> usize {
        self.queue.len() - self.head
    }

    /// The packets waiting, oldest first: (bytes, transfer index).
    pub fn queued(&self) -> impl Iterator<Item = (&[u8], usize)> + '_ {
        self.queue[self.head..]
            .iter()
            .map(|q| (&self.queue_bytes[q.start..q.end], q.transfer))
    }

    /// The first `n` waiting packets were sent (or given up on).
    pub fn consume(&mut self, n: usize) {
        self.head = (self.head + n).min(self.queue.len());
        if self.head == self.queue.len() {
            self.queue.clear();
            self.queue_bytes.clear();
            self.head = 0;
        } else if self.head >= 1024 && self.head * 2 >= self.queue.len() {
            // A backend that keeps up only partly: move the rest to the front.
            let base = self.queue[self.head].start;
            self.queue_bytes.drain(..base);
            self.queue.drain(..self.head);
            for q in &mut self.queue {
                q.start -= base;
                q.end -= base;
            }
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum::checksum;
    use crate::packet::udp::IP_DF;
    use std::time::Duration;

    const ONLINE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
    const TARGET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

    fn config() -> UdpConfig {
        let mut cfg = UdpConfig::from_replay(&ReplayConfig::default());
        cfg.transfers = vec![Transfer {
            src_ip: None,
            src_port: 53,
            dst_ip: TARGET.into(),
            dst_port: 5353,
            src_mac: None,
            dst_mac: None,
        }];
        cfg.seed = 42;
        cfg
    }

    fn captured(src: Ipv4Addr, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; MAX_IPV4_LEN];
        let n = write_udp_datagram(
            &mut out,
            &UdpSpec {
                src,
                dst: ONLINE,
                src_port,
                dst_port,
                tos: 0x10,
                ttl: 63,
                id: 777,
                dont_fragment: true,
                payload,
            },
        )
        .unwrap();
        out.truncate(n);
        out
    }

    fn sent(r: &mut UdpReplayer) -> Vec<Vec<u8>> {
        let v: Vec<Vec<u8>> = r
            .queued()
            .map(|(b, t)| {
                assert_eq!(t, 0);
                b.to_vec()
            })
            .collect();
        r.consume(v.len());
        v
    }

    #[test]
    fn a_datagram_goes_to_the_target_with_valid_checksums() {
        let mut r = UdpReplayer::new(config());
        let now = Instant::now();
        r.on_packet(now, &captured(CLIENT, 40000, 53, b"query"));
        r.on_packet(now, &captured(CLIENT, 40000, 54, b"other port"));
        let out = sent(&mut r);
        assert_eq!(out.len(), 1);
        let d = UdpDatagram::parse(&out[0]).unwrap();
        assert_eq!((d.ip.src, d.ip.dst), (CLIENT, TARGET));
        assert_eq!(
            (d.src_port, d.dst_port, d.payload),
            (40000, 5353, &b"query"[..])
        );
        assert_eq!((d.ip.tos, d.ip.ttl, d.ip.frag_word), (0x10, 63, IP_DF));
        assert_eq!(checksum(&out[0][..20]), 0);
        let s = r.stats();
        assert_eq!((s.packets, s.captured, s.queued), (2, 1, 1));
        assert_eq!(s.dropped(UdpDrop::NoTransfer), 1);
        assert_eq!(r.queued_packets(), 0);
    }

    #[test]
    fn replicas_fake_clients_and_shift() {
        let mut cfg = config();
        cfg.replicas = 3;
        cfg.port_shift = 1;
        cfg.client_ips = vec![Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];
        let mut r = UdpReplayer::new(cfg);
        r.on_packet(Instant::now(), &captured(CLIENT, 40000, 53, b"q"));
        let out: Vec<UdpDatagram> = Vec::new();
        drop(out);
        let out = sent(&mut r);
        assert_eq!(out.len(), 3);
        let mut ports = Vec::new();
        for b in &out {
            let d = UdpDatagram::parse(b).unwrap();
            assert_eq!(d.ip.src.octets()[..3], [203, 0, 113]);
            assert_eq!(d.dst_port, 5353);
            ports.push(d.src_port);
        }
        let offset = ingress::port_offset(42);
        assert_eq!(ports[0], ingress::shift_port(40000, 1, offset));
        ports.dedup();
        assert_eq!(ports.len(), 3, "each copy has its own port: {ports:?}");
    }

    #[test]
    fn sampling_keeps_or_drops_a_flow_whole() {
        let mut cfg = config();
        cfg.sample_percent = 50;
        let mut r = UdpReplayer::new(cfg);
        let now = Instant::now();
        for port in 20000..20200u16 {
            for _ in 0..3 {
                r.on_packet(now, &captured(CLIENT, port, 53, b"q"));
            }
        }
        let s = r.stats();
        assert_eq!(s.queued % 3, 0);
        assert_eq!(s.dropped(UdpDrop::Sampled) % 3, 0);
        assert!((150..450).contains(&s.queued), "{}", s.queued);
    }

    #[test]
    fn fragments_in_whole_out_fragmented_again() {
        let mut cfg = config();
        cfg.replicas = 2;
        let mut r = UdpReplayer::new(cfg);
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut d = captured(CLIENT, 40000, 53, &payload);
        d[6..8].copy_from_slice(&0u16.to_be_bytes());
        let mut pieces = Vec::new();
        fragment(&d, 1000, &mut [0u8; 1000], &mut |p| pieces.push(p.to_vec())).unwrap();
        let now = Instant::now();
        // Half of them: nothing goes out.
        for p in &pieces[..2] {
            r.on_packet(now, p);
        }
        assert_eq!(r.queued_packets(), 0);
        for p in &pieces[2..] {
            r.on_packet(now, p);
        }
        let out = sent(&mut r);
        // Two copies of 3028 bytes, three 1500-byte fragments each, each copy its own id.
        assert_eq!(out.len(), 6);
        let mut reasm = Reassembler::new(ReassemblyLimits::default());
        let mut whole = Vec::new();
        for p in &out {
            assert!(p.len() <= 1500);
            let info = Ipv4Info::parse(p).unwrap();
            assert_eq!(info.dst, TARGET);
            if let Outcome::Complete(w) = reasm.add(now, p, &info) {
                whole.push(w.to_vec());
            }
        }
        assert_eq!(whole.len(), 2);
        for w in &whole {
            let d = UdpDatagram::parse(w).unwrap();
            assert_eq!(d.payload, &payload[..]);
            let mut z = w[20..].to_vec();
            z[6..8].copy_from_slice(&[0, 0]);
            assert_eq!(
                crate::packet::udp::udp_checksum(d.ip.src, d.ip.dst, &z),
                u16::from_be_bytes([w[26], w[27]])
            );
        }
        let s = r.stats();
        assert_eq!(
            (s.captured, s.queued, s.fragmented, s.fragments_queued),
            (1, 2, 2, 6)
        );
        assert_eq!(r.fragment_stats().reassembled, 1);
        // An incomplete one times out, counted, and nothing of it is sent.
        r.on_packet(now, &pieces[0]);
        r.on_timer(now + Duration::from_secs(31));
        assert_eq!(
            r.fragment_stats()
                .dropped(crate::packet::fragments::FragDrop::Timeout),
            1
        );
        assert_eq!(r.queued_packets(), 0);
    }

    #[test]
    fn the_queue_is_bounded_and_drains_in_order() {
        let mut cfg = config();
        cfg.max_queued_bytes = 10_000;
        let mut r = UdpReplayer::new(cfg);
        let now = Instant::now();
        for i in 0..200u16 {
            r.on_packet(now, &captured(CLIENT, 30000 + i, 53, &[0u8; 100]));
        }
        let s = r.stats();
        assert!(s.dropped(UdpDrop::QueueFull) > 0);
        assert!(r.queued_bytes() <= 10_000);
        let first: Vec<u16> = r
            .queued()
            .take(3)
            .map(|(b, _)| UdpDatagram::parse(b).unwrap().src_port)
            .collect();
        assert_eq!(first, [30000, 30001, 30002]);
        r.consume(2);
        assert_eq!(
            UdpDatagram::parse(r.queued().next().unwrap().0)
                .unwrap()
                .src_port,
            30002
        );
        let n = r.queued_packets();
        r.consume(n);
        assert_eq!((r.queued_packets(), r.queued_bytes()), (0, 0));
    }

    #[test]
    fn garbage_is_counted_not_sent() {
        let mut r = UdpReplayer::new(config());
        let now = Instant::now();
        r.on_packet(now, &[]);
        r.on_packet(now, &[0x70; 40]);
        // IPv6 claiming more payload than captured.
        r.on_packet(now, &[0x60; 40]);
        let mut tcp = captured(CLIENT, 1, 53, b"x");
        tcp[9] = 6;
        r.on_packet(now, &tcp);
        let s = r.stats();
        assert_eq!(s.dropped(UdpDrop::Truncated), 2);
        assert_eq!(s.dropped(UdpDrop::BadIpHeader), 1);
        assert_eq!(s.dropped(UdpDrop::NotUdp), 1);
        assert_eq!(r.queued_packets(), 0);
    }

    fn config6() -> UdpConfig {
        let mut cfg = UdpConfig::from_replay(&ReplayConfig::default());
        cfg.transfers6 = vec![Transfer6 {
            src_ip: None,
            src_port: 53,
            dst_ip: "2001:db8::30".parse().unwrap(),
            dst_port: 5353,
            src_mac: None,
            dst_mac: None,
        }];
        cfg.seed = 7;
        cfg
    }

    fn captured6(src: &str, src_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; MAX_IPV4_LEN];
        let n = write_udp6_datagram(
            &mut out,
            &Udp6Spec {
                src: src.parse().unwrap(),
                dst: "2001:db8::20".parse().unwrap(),
                src_port,
                dst_port: 53,
                traffic_class: 0,
                flow_label: 9,
                hop_limit: 64,
                payload,
            },
        )
        .unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn ipv6_datagrams_to_the_target_from_the_prefix() {
        let mut cfg = config6();
        cfg.client_prefix6 = Some(ClientPrefix6 {
            prefix: "2001:db8:ffff::".parse().unwrap(),
            len: 64,
        });
        cfg.replicas = 2;
        let mut r = UdpReplayer::new(cfg);
        let now = Instant::now();
        r.on_packet(now, &captured6("2001:db8::10", 40000, b"query"));
        r.on_packet(now, &captured6("2001:db8::11", 40000, b"query 2"));
        let out = sent(&mut r);
        assert_eq!(out.len(), 4);
        let mut srcs = Vec::new();
        for b in &out {
            let d = Udp6Datagram::parse(b).unwrap();
            assert_eq!(d.ip.dst, "2001:db8::30".parse::<Ipv6Addr>().unwrap());
            assert_eq!(d.dst_port, 5353);
            assert_eq!(d.ip.src.segments()[..4], [0x2001, 0xdb8, 0xffff, 0]);
            let mut z = b[40..].to_vec();
            z[6..8].copy_from_slice(&[0, 0]);
            assert_eq!(
                crate::packet::ipv6::udp6_checksum(d.ip.src, d.ip.dst, &z),
                u16::from_be_bytes([b[46], b[47]])
            );
            srcs.push((d.ip.src, d.src_port));
        }
        srcs.sort();
        srcs.dedup();
        assert_eq!(srcs.len(), 4, "copies and clients apart: {srcs:?}");
        // Sticky: the first client again gets the same fake address.
        r.on_packet(now, &captured6("2001:db8::10", 40001, b"q"));
        let again = sent(&mut r);
        let first = Udp6Datagram::parse(&out[0]).unwrap().ip.src;
        assert_eq!(Udp6Datagram::parse(&again[0]).unwrap().ip.src, first);
    }

    #[test]
    fn ipv6_fragments_in_are_held_long_copies_leave_in_fragments() {
        let mut r = UdpReplayer::new(config6());
        let now = Instant::now();
        let mut frag = captured6("2001:db8::10", 40000, b"abcdefgh");
        // Turn it into a fragment: next header 44, an 8-byte fragment header before UDP.
        let udp = frag.split_off(40);
        frag[6] = crate::packet::ipv6::NH_FRAGMENT;
        frag.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 5]);
        frag.extend_from_slice(&udp);
        let plen = (frag.len() - 40) as u16;
        frag[4..6].copy_from_slice(&plen.to_be_bytes());
        r.on_packet(now, &frag);
        // An IPv4 datagram in an IPv6 run matches no transfer.
        r.on_packet(now, &captured(CLIENT, 40000, 53, b"v4"));
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        r.on_packet(now, &captured6("2001:db8::10", 40000, &payload));
        let s = r.stats();
        // The first fragment of a datagram whose rest never comes: held, then timed out.
        assert_eq!(r.fragment_stats().fragments, 1);
        assert_eq!(r.reassembling(), 1);
        assert_eq!(s.dropped(UdpDrop::NoTransfer), 1);
        assert_eq!((s.queued, s.fragmented, s.fragments_queued), (1, 1, 3));
        let out = sent(&mut r);
        let mut data = Vec::new();
        for p in &out {
            assert!(p.len() <= 1500);
            assert_eq!(p[6], crate::packet::ipv6::NH_FRAGMENT);
            data.extend_from_slice(&p[48..]);
        }
        let mut whole = out[0][..40].to_vec();
        whole[6] = 17;
        whole[4..6].copy_from_slice(&(data.len() as u16).to_be_bytes());
        whole.extend_from_slice(&data);
        let d = Udp6Datagram::parse(&whole).unwrap();
        assert_eq!(d.payload, &payload[..]);
    }

    #[test]
    fn prefix_sizes() {
        let p = |text: &str, len| ClientPrefix6 {
            prefix: text.parse().unwrap(),
            len,
        };
        assert_eq!(p("2001:db8::", 64).count(), ClientPrefix6::MAX_CLIENTS);
        assert_eq!(p("2001:db8::", 126).count(), 2);
        assert_eq!(p("2001:db8::", 128).count(), 0);
        assert_eq!(
            p("2001:db8::ff00", 120).client(0),
            "2001:db8::ff01".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn ipv6_fragments_in_whole_datagram_out() {
        let mut r = UdpReplayer::new(config6());
        let now = Instant::now();
        let payload: Vec<u8> = (0..2000u32).map(|i| (i * 3) as u8).collect();
        let d = captured6("2001:db8::10", 40000, &payload);
        let mut pieces = Vec::new();
        fragment6(&d, 1280, 99, &mut [0u8; 1280], &mut |p| {
            pieces.push(p.to_vec())
        })
        .unwrap();
        assert_eq!(pieces.len(), 2);
        r.on_packet(now, &pieces[1]);
        assert_eq!(r.queued_packets(), 0, "no half datagram");
        r.on_packet(now, &pieces[0]);
        assert_eq!(r.fragment_stats().reassembled, 1);
        // The copy (2048 bytes) is longer than -M 1500: it leaves in two fragments.
        let out = sent(&mut r);
        assert_eq!(out.len(), 2);
        let mut data = Vec::new();
        for p in &out {
            let f = Frag6::parse(p).unwrap().expect("a fragment");
            assert_eq!(f.dst, "2001:db8::30".parse::<Ipv6Addr>().unwrap());
            data.extend_from_slice(&p[f.data_start..f.data_end]);
        }
        assert_eq!(&data[8..], &payload[..]);
        assert_eq!(u16::from_be_bytes([data[2], data[3]]), 5353);
    }
}
